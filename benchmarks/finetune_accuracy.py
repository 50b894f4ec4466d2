"""Bottleneck vs freezing: head-only retraining against fine-tuning the top 1, 2, 3 stages.

    python benchmarks/finetune_accuracy.py --workdir /tmp/ftbench [--blocks 0,1,2,3] [--per_class 300]

On ``--per_class`` Fashion-MNIST training images per class (3,000 by default),
for each ``--fine_tune_blocks`` value it runs ``retrain`` twice, first with an
empty cache (bottlenecks or cut-point maps computed) and again with them
cached, and evaluates the run on ``--test_per_class`` images per class of
Fashion-MNIST's test split (1,000 by default: images no run has seen), through
``headstart.evaluate`` (the run directory's own backbone, on the fastest
runtime).  It reports unseen-image accuracy, the wall time of each run and the
bytes cached per image, one JSON line per setting in ``<workdir>/results.jsonl``
as it goes, and a markdown table at the end.  Any other ``retrain`` setting can
be passed as ``--set name=value`` (e.g. ``--set fine_tune_epochs=4``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any


def _value(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def run_setting(blocks: int, train_dir: Path, test_dir: Path, workdir: Path, extra: dict[str, Any],
                rerun: bool = True) -> dict[str, Any]:
    from headstart.config import RetrainConfig
    from headstart.inference import evaluate
    from headstart.train import retrain

    cache = workdir / f"cache-{blocks}"
    shutil.rmtree(cache, ignore_errors=True)  # the first run starts from an empty cache
    row: dict[str, Any] = {"fine_tune_blocks": blocks, **extra}
    for attempt in ("first", "cached") if rerun else ("first",):
        out = workdir / f"run-{blocks}-{attempt}"
        shutil.rmtree(out, ignore_errors=True)
        config = RetrainConfig(image_dir=train_dir, output_dir=out, bottleneck_dir=cache, fine_tune_blocks=blocks,
                               progress=False, write_report=False, **extra)
        start = time.perf_counter()
        result = retrain(config)
        row[f"{attempt}_s"] = round(time.perf_counter() - start, 1)
        row[f"{attempt}_own_test_accuracy"] = round(result.test.accuracy, 4)
        row[f"{attempt}_computed"] = result.bottlenecks["computed"]
        if attempt == "first":
            unseen = evaluate(out, test_dir, bottleneck_dir=workdir / "eval-cache", progress=False)
            row["unseen_accuracy"] = round(unseen.evaluation.accuracy, 4)
            row["unseen_n"] = unseen.evaluation.n
            tuned = result.metrics.get("fine_tune", {})
            row["bytes_per_image"] = tuned.get("bytes_per_image", 1280 * 4)
            row["timing"] = result.timing
            if tuned:
                row["best_epoch"] = tuned["best_epoch"]
                row["epochs_run"] = tuned["epochs_run"]
                row["mixed_precision"] = tuned["mixed_precision"]
                row["history"] = [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in h.items()}
                                  for h in tuned["history"]]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--blocks", default="0,1,2,3", help="comma-separated --fine_tune_blocks values")
    parser.add_argument("--per_class", type=int, default=300)
    parser.add_argument("--test_per_class", type=int, default=100)
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="another retrain setting for every run")
    parser.add_argument("--json", type=Path, default=None, help="also write every row (and the command) here")
    parser.add_argument("--no_rerun", action="store_true", help="skip the second, cached run of each setting")
    args = parser.parse_args()

    from headstart.datasets import write_fashion_mnist

    args.workdir.mkdir(parents=True, exist_ok=True)
    train_dir, test_dir = args.workdir / "train", args.workdir / "unseen"
    write_fashion_mnist(train_dir, per_class=args.per_class)
    write_fashion_mnist(test_dir, per_class=args.test_per_class, split="test")
    extra = {k: _value(v) for k, v in (item.split("=", 1) for item in args.set)}
    rows = []
    with open(args.workdir / "results.jsonl", "a", encoding="utf-8") as log:
        for blocks in (int(b) if b.isdigit() else b for b in args.blocks.split(",")):
            row = run_setting(blocks, train_dir, test_dir, args.workdir, extra, rerun=not args.no_rerun)
            rows.append(row)
            log.write(json.dumps(row) + "\n")
            log.flush()
            print(json.dumps({k: v for k, v in row.items() if k != "history"}), flush=True)
    if args.json is not None:
        import sys

        command = "python benchmarks/finetune_accuracy.py " + " ".join(sys.argv[1:])
        args.json.write_text(json.dumps({"command": command, "per_class": args.per_class,
                                         "test_per_class": args.test_per_class, "rows": rows}, indent=2) + "\n")
    print("\n| --fine_tune_blocks | unseen accuracy | first run | cached rerun | cached per image |")
    print("| --- | --- | --- | --- | --- |")
    for row in rows:
        rerun = f"{row['cached_s']:.0f} s" if "cached_s" in row else "-"
        print(f"| {row['fine_tune_blocks']} | {row['unseen_accuracy']:.3f} | {row['first_s']:.0f} s | "
              f"{rerun} | {row['bytes_per_image'] / 1024:.1f} KiB |")


if __name__ == "__main__":
    main()
