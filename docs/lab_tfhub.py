#!/usr/bin/env python3
"""Section 7's TF Hub part of docs/lab.md: a SavedModel feature vector through ``--tfhub_module``.

docs/make_lab.py calls :func:`run_tfhub` after its other sections and renders
:func:`tfhub_section`.  Run alone, this file measures just this part and rewrites
docs/lab.md from docs/lab/numbers.json with it (the other sections' numbers are
kept as they were measured):

    python docs/lab_tfhub.py [--workdir /tmp/headstart-lab] [--per_class 300]

The module is EfficientNet-Lite0 with the ImageNet weights of the default backbone,
rebuilt in Keras and saved as a TF Hub image feature vector by
``tests/tf_fixtures.py``'s ``build_efficientnet_lite0`` (the same builder the tests
use): float32 [N, 224, 224, 3] in [0, 1] in, 1,280 numbers out.  Both retrains
start from empty caches in the same run, so their times compare.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parent
REPO = DOCS.parent
ONLINE = "https://tfhub.dev/google/imagenet/mobilenet_v2_100_224/feature_vector/5"
MODULE = "lite0_feature_vector"

Run = Callable[[list[str], list[dict[str, Any]]], tuple[str, float]]


def _brief(result: dict[str, Any]) -> dict[str, Any]:
    """What the section shows of a retrain's JSON."""
    test = {k: result["test"][k] for k in ("accuracy", "n", "macro_precision", "macro_recall")}
    return {"timing": result["timing"], "bottlenecks": result["bottlenecks"], "test": test}


def _manifest(run_dir: Path) -> dict[str, Any]:
    data = json.loads((run_dir / "headstart.json").read_text())
    return {"backbone": data["backbone"], "preprocessing": data["preprocessing"]}


def run_tfhub(work: Path, common: list[str], default_cold: dict[str, Any], run: Run,
              log: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Build the module, retrain through it (empty cache, then cached), and compare with the default run.

    None (the section then says how to add it) where the [tensorflow] extra is not installed.
    """
    import importlib.util

    if importlib.util.find_spec("tensorflow") is None:
        print("skipping the TF Hub part: pip install 'headstart[tensorflow]'", file=sys.stderr)
        return None
    sys.path[:0] = [str(REPO / "tests"), str(REPO)]
    from tf_fixtures import build_efficientnet_lite0

    folder = work / MODULE
    start = time.perf_counter()
    build_efficientnet_lite0(folder)
    build_s = time.perf_counter() - start
    flags = [*common, "--tfhub_module", str(folder)]
    cold = json.loads(run(["retrain", *flags, "--output_dir", str(work / "run-tfhub"), "--format", "json"],
                          log)[0])
    cached = json.loads(run(["retrain", *flags, "--output_dir", str(work / "run-tfhub-cached"), "--format",
                             "json"], log)[0])
    return {"module": str(folder), "build_s": round(build_s, 1), "online": ONLINE,
            "cold": _brief(cold), "cached": _brief(cached), "default": _brief(default_cold),
            "manifest": {"default": _manifest(work / "run"), "tfhub": _manifest(work / "run-tfhub")}}


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _rows(rows: list[list[str]]) -> str:
    head = "| " + " | ".join(rows[0]) + " |\n|" + "|".join(" --- " for _ in rows[0]) + "|\n"
    return head + "\n".join("| " + " | ".join(r) + " |" for r in rows[1:])


def tfhub_section(t: dict[str, Any] | None, page_accuracy: float | None = None) -> str:
    """The sub-section; ``page_accuracy`` is section 3's test accuracy, to say so when this part ran apart."""
    if not t:
        return "(`python docs/lab_tfhub.py` adds the TF Hub way to this section.)"
    d, h = t["manifest"]["default"], t["manifest"]["tfhub"]
    db, hb, dp, hp = d["backbone"], h["backbone"], d["preprocessing"], h["preprocessing"]
    manifest = _rows([
        ["`headstart.json`", "default backbone", "TF Hub module"],
        ["`backbone.name`", f"`{db['name']}`", f"`tfhub:…/{MODULE}`"],
        ["`backbone.timm_name`", f"`{db['timm_name']}`", f"`{hb['timm_name']}`"],
        ["`backbone.weights_fingerprint`", f"`{db['weights_fingerprint'][:12]}…` (the .pth file)",
         f"`{hb['weights_fingerprint'][:12]}…` (the SavedModel's variables, signature and graph)"],
        ["`backbone.num_features`", str(db["num_features"]), str(hb["num_features"])],
        ["`preprocessing.input_size`", str(dp["input_size"]), f"{hp['input_size']} (from the module's signature)"],
        ["`preprocessing.interpolation`", dp["interpolation"], f"{hp['interpolation']} (TF Hub's convention)"],
        ["`preprocessing.mean` / `std`", f"{dp['mean'][0]:g} / {dp['std'][0]:g}",
         f"{hp['mean'][0]:g} / {hp['std'][0]:g}: pixels in [0, 1], the module scales them itself"],
        ["`backbone.runtime`, `precision`", f"{db['runtime']} {db['precision']}", f"{hb['runtime']} {hb['precision']}"],
    ])
    dc, hc, hw = t["default"], t["cold"], t["cached"]
    numbers = _rows([
        ["", "default backbone", "TF Hub module"],
        ["first run, empty cache: bottlenecks", f"{dc['timing']['bottlenecks_s']:.1f} s "
         f"({dc['bottlenecks']['computed']:,} computed)", f"{hc['timing']['bottlenecks_s']:.1f} s "
         f"({hc['bottlenecks']['computed']:,} computed)"],
        ["second run: bottlenecks", "–", f"{hw['timing']['bottlenecks_s']:.2f} s "
         f"({hw['bottlenecks']['cached']:,} read, {hw['bottlenecks']['computed']} computed)"],
        ["test accuracy", f"{_pct(dc['test']['accuracy'])} (N={dc['test']['n']})",
         f"{_pct(hc['test']['accuracy'])} (N={hc['test']['n']})"],
        ["macro precision", _pct(dc["test"]["macro_precision"]), _pct(hc["test"]["macro_precision"])],
    ])
    apart = ""
    if t.get("measured_apart") and page_accuracy is not None:
        apart = ("\nThese two runs were made by `python docs/lab_tfhub.py`, apart from the rest\n"
                 f"of the page; the same default command scored {_pct(dc['test']['accuracy'])} here and "
                 f"{_pct(page_accuracy)} in\nsection 3's earlier run.")
    return f"""### The TF Hub way

The lab this guide follows says "find another image feature vector on tfhub.dev
and rerun", and retrain.py took it as `--tfhub_module URL`. So does headstart:

```
headstart retrain --image_dir fashion --tfhub_module {t['online']}
```

With internet access the module is downloaded once into TF Hub's own cache
(`$TFHUB_CACHE_DIR`); tfhub.dev now forwards to Kaggle Models, and a Kaggle
Models URL or handle (`owner/model/tensorFlow2/variation/version`) works the same
way. Without it, the command says at once that the handle cannot be fetched. Any
SavedModel folder that follows TF Hub's image feature-vector convention (float32
`[N, H, W, 3]` in [0, 1] in, `[N, D]` out) works offline. This page's stand-in:
`docs/make_lab.py` rebuilds EfficientNet-Lite0 in Keras with the same ImageNet
weights as the default backbone and saves it as such a module ({t['build_s']:.0f} s), then runs

```
headstart retrain --image_dir fashion --tfhub_module {MODULE} --output_dir runs/fashion-tfhub
```

What changed in the run's manifest:

{manifest}

And in the numbers, both runs starting from an empty cache, one after the other.{apart}

{numbers}

The module's first run includes importing TensorFlow and converting the module
to ONNX once with tf2onnx (kept under the cache's `models/`, keyed by the
module's fingerprint); after that it runs on OpenVINO like any other backbone,
and the cached rerun neither imports TensorFlow nor runs a network. The accuracy
differs a little from the default backbone's only because the pixels do: TF Hub's
convention resizes bilinearly where timm's EfficientNet-Lite0 config resizes
bicubically; the weights and the arithmetic are the same. How fast SavedModel
backbones run against the same network built in timm is measured in
[PERFORMANCE.md](PERFORMANCE.md#tf-hub--savedmodel-backbones)."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/headstart-lab"))
    parser.add_argument("--per_class", type=int, default=300)
    args = parser.parse_args()
    sys.path.insert(0, str(DOCS))
    import make_lab

    work = args.workdir
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    log: list[dict[str, Any]] = []
    data, cache = work / "fashion", work / "cache"
    common = ["--image_dir", str(data), "--bottleneck_dir", str(cache), "-q"]
    make_lab.run(["datasets", "fashion-mnist", "--out", str(data), "--per_class", str(args.per_class)], [])
    default_cold = json.loads(make_lab.run(["retrain", *common, "--output_dir", str(work / "run"), "--format",
                                            "json"], [])[0])
    tfhub = run_tfhub(work, common, default_cold, make_lab.run, log)
    numbers_path = make_lab.OUT / "numbers.json"
    numbers = json.loads(numbers_path.read_text())
    numbers["tfhub"] = {**tfhub, "measured_apart": True}
    numbers["commands"] = [c for c in numbers["commands"] if "--tfhub_module" not in c["command"]] + log
    numbers_path.write_text(json.dumps(numbers, indent=2, default=str) + "\n")
    fine_tune = make_lab.OUT / "finetune.json"
    numbers["finetune"] = json.loads(fine_tune.read_text()) if fine_tune.exists() else None
    (DOCS / "lab.md").write_text(make_lab.write_guide(numbers, 0.0, args.per_class))
    print(f"wrote {DOCS / 'lab.md'} and {numbers_path}", file=sys.stderr)


if __name__ == "__main__":
    main()
