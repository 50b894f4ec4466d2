"""retrain, label, evaluate, backbones, cache, datasets."""

from __future__ import annotations

import argparse
import csv
import logging
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .common import add_command, add_format, flag, format_table, plural, print_json, require_path

log = logging.getLogger("headstart")


def setting_flag(parser: Any, name: str, *aliases: str, list_type: Any = None, **overrides: Any) -> None:
    """``--name`` with the type, default, choices and help of :data:`headstart.settings.SETTINGS`."""
    from ..settings import SETTINGS

    setting = SETTINGS[name]
    kwargs: dict[str, Any] = {"default": setting.default, "help": setting.help}
    if setting.kind is bool:
        kwargs["action"] = "store_true"
        if setting.default:  # a switch that is on by default is turned off with --no_NAME
            flag(parser, f"--no_{name}", dest=name, action="store_false", help=f"turn --{name} off")
            kwargs["help"] += " (default: on)"
    else:
        kwargs["type"] = list_type(setting.kind, name) if list_type else setting.kind
        if setting.choices and not list_type:
            kwargs["choices"] = list(setting.choices)
        if setting.default is not None:
            kwargs["help"] += " (default: %(default)s)"
    kwargs.update(overrides)
    flag(parser, f"--{name}", *aliases, **kwargs)


def add_backbone_flags(parser: argparse.ArgumentParser) -> None:
    setting_flag(parser, "backbone", "--tfhub_module")
    setting_flag(parser, "weights")


def add_runtime_flags(parser: argparse.ArgumentParser, *, exported: bool = False) -> None:
    """``--runtime``/``--precision``; ``exported`` also offers the runtimes that only run exported files."""
    from ..runtimes import RUNTIME_NAMES

    if exported:
        setting_flag(parser, "runtime", choices=["auto", *RUNTIME_NAMES],
                     help="where the model runs; auto picks the fastest accurate one here (default: %(default)s)")
    else:
        setting_flag(parser, "runtime")
    setting_flag(parser, "precision")


def add_cache_flag(parser: argparse.ArgumentParser) -> None:
    setting_flag(parser, "bottleneck_dir")


RAY_FLAGS = ("ray", "ray_actors", "ray_gpus_per_actor", "ray_cpus_per_actor")


def add_ray_flags(parser: argparse.ArgumentParser, *, max_memory: bool = False) -> None:
    """``--ray ADDRESS`` and the actor pool's shape (docs/SCALE.md); retrain adds ``--max_memory``."""
    group = parser.add_argument_group("scale out (docs/SCALE.md)")
    metavars = {"ray": "ADDRESS", "ray_actors": "N", "ray_gpus_per_actor": "G", "ray_cpus_per_actor": "C",
                "max_memory": "SIZE"}
    for name in RAY_FLAGS + (("max_memory",) if max_memory else ()):
        setting_flag(group, name, metavar=metavars[name])


def ray_settings(args: argparse.Namespace) -> Any:
    """The parsed Ray flags, checked, as :class:`headstart.ray_cluster.RaySettings` (None without ``--ray``)."""
    from ..settings import check_value

    for name in RAY_FLAGS:
        check_value(name, getattr(args, name))
    if args.ray is None:
        return None
    from ..ray_cluster import RaySettings

    return RaySettings(args.ray, args.ray_actors, float(args.ray_gpus_per_actor), args.ray_cpus_per_actor)


def register(sub: Any) -> None:
    _register_retrain(sub)
    _register_label(sub)
    _register_evaluate(sub)
    _register_backbones(sub)
    _register_cache(sub)
    _register_datasets(sub)


# ------------------------------------------------------------------ retrain


TRAINING_FLAGS = ("how_many_training_steps", "learning_rate", "optimizer", "train_batch_size", "hidden_units",
                  "dropout", "weight_decay")


def add_training_flags(parser: argparse.ArgumentParser, list_type: Any = None) -> None:
    """Flags of the last layer; ``list_type`` makes them comma-separated lists (sweep)."""
    for name in TRAINING_FLAGS:
        setting_flag(parser, name, list_type=list_type)


def add_split_flags(parser: argparse.ArgumentParser) -> None:
    setting_flag(parser, "image_dir", required=True)
    setting_flag(parser, "testing_percentage")
    setting_flag(parser, "validation_percentage")


def _register_retrain(sub: Any) -> None:
    p = add_command(sub, "retrain", "train a new last layer on your photos (retrain.py's workflow)",
                    "headstart retrain --image_dir flower_photos --output_dir runs/flowers\n"
                    "headstart retrain --image_dir flower_photos --optimizer sgd --learning_rate 0.01 "
                    "--how_many_training_steps 4000   # retrain.py's recipe")
    add_split_flags(p)
    for name in ("output_dir", "output_labels"):
        setting_flag(p, name)
    add_cache_flag(p)
    add_backbone_flags(p)
    setting_flag(p, "crop_pct")
    add_runtime_flags(p)
    add_training_flags(p)
    for name in ("min_epochs", "eval_step_interval", "validation_batch_size", "test_batch_size",
                 "print_misclassified_test_images"):
        setting_flag(p, name)
    distort = p.add_argument_group("distortions (retrain.py's flags; each distorted copy is computed once and cached)")
    for name in ("flip_left_right", "random_crop", "random_scale", "random_brightness", "distorted_copies"):
        setting_flag(distort, name)
    tune = p.add_argument_group("fine-tuning (the top stages train from their cached input maps)")
    for name in ("fine_tune_blocks", "fine_tune_epochs", "fine_tune_learning_rate", "fine_tune_label_smoothing"):
        setting_flag(tune, name, metavar="N|all" if name == "fine_tune_blocks" else None)
    for name in ("early_stopping", "label_smoothing", "class_weights", "unknown_accept", "seed", "strict",
                 "workers", "decode", "exclude_from", "doctor"):
        setting_flag(p, name)
    add_ray_flags(p, max_memory=True)
    flag(p, "--no_report", action="store_true", help="do not write report.html")
    flag(p, "--format", choices=["table", "json"], default="table", help="print the summary as a table or as JSON")
    p.set_defaults(handler=run_retrain)


def run_retrain(args: argparse.Namespace) -> int:
    from ..config import CONFIG_FIELDS, RetrainConfig
    from ..metrics import format_evaluation
    from ..train import retrain

    require_path(args.weights, "--weights", "file")
    given = {name: getattr(args, name) for name in CONFIG_FIELDS if hasattr(args, name)}
    config = RetrainConfig(**{**given, "progress": not args.quiet, "write_report": not args.no_report})

    from ..progress import Progress

    # Created at the first step so it never competes with the bottleneck bar.
    bars: list[Progress] = []
    done = [0]

    def on_step(step: Any) -> None:
        if not bars:
            bars.append(Progress(step.steps or args.how_many_training_steps, "Training", unit="step",
                                 enabled=not args.quiet))
        bar = bars[0]
        bar.update(step.step + 1 - done[0])
        done[0] = step.step + 1
        if args.quiet:
            return
        text = (f"Step {step.step}: Train accuracy = {100 * step.train_accuracy:.1f}%, "
                f"Cross entropy = {step.cross_entropy:.4f}")
        if step.validation_accuracy is not None:
            text += f", Validation accuracy = {100 * step.validation_accuracy:.1f}%"
        bar.write(text)

    try:
        result = retrain(config, on_step=on_step)
    finally:
        for bar in bars:
            bar.close()
    skipped_csv = result.run_dir / "skipped.csv"
    warn_skipped(result.skipped, skipped_csv)
    if args.format == "json":
        print_json({"run_dir": str(result.run_dir), **result.metrics})
        warn_small_sample(result.test)
        return 0
    if args.quiet:  # the result and the warnings, nothing else
        print(format_evaluation(result.test, title="Final test", details=False))
        warn_small_sample(result.test)
        return 0
    b = result.bottlenecks
    print(f"Bottlenecks: {b['computed']} computed, {b['cached']} cached, {b['skipped']} skipped "
          f"in {result.timing['bottlenecks_s']:.1f}s")
    if "distorted_bottlenecks" in result.metrics:
        d = result.metrics["distorted_bottlenecks"]
        print(f"Distorted training copies: {d['copies']} per image, {d['computed']} computed, {d['cached']} cached")
    print(f"Training: {result.metrics['training']['steps_run']} steps in {result.timing['train_s']:.2f}s"
          + ("  (DIVERGED: lower --learning_rate)" if result.diverged else ""))
    if "fine_tune" in result.metrics:
        t = result.metrics["fine_tune"]
        what = "the whole network" if t["blocks"] == "all" else f"the top {t['blocks']} stage(s)"
        print(f"Fine-tuned {what}: {t['epochs_run']} epoch(s) in {t['seconds']:.0f}s, "
              f"kept epoch {t['best_epoch']}" + (" (stopped early)" if t["stopped_early"] else ""))
    if result.validation_accuracy is not None:
        print(f"Validation accuracy = {100 * result.validation_accuracy:.1f}% (N={result.validation_n})")
    print()
    print(format_evaluation(result.test, title="Final test"))
    warn_small_sample(result.test)
    if args.print_misclassified_test_images:
        print()
        print("=== MISCLASSIFIED TEST IMAGES ===")
        for m in result.misclassified:
            print(f"{m.relpath:>40}  {m.predicted_label}  ({m.score:.3f})")
    print()
    print(f"Total time {result.timing['total_s']:.1f}s. Model written to {result.run_dir}")
    if result.skipped:
        print(f"{plural(len(result.skipped), 'image')} skipped, listed with reasons in {skipped_csv}")
    print(f"Label images with: headstart label --model {result.run_dir} IMAGE...")
    return 0


MAX_SKIP_LINES = 20  # beyond this skipped.csv (retrain) carries the list


def warn_skipped(skipped: Sequence[Any], listed_in: Path | None = None) -> None:
    """One warning line per skipped image, once (the library only logs them at debug level)."""
    limit = MAX_SKIP_LINES if listed_in is not None else len(skipped)
    for item in skipped[:limit]:
        log.warning("skipped %s: %s", item.path, item.reason)
    if len(skipped) > limit:
        log.warning("... and %d more skipped images, listed with reasons in %s", len(skipped) - limit, listed_in)


def warn_small_sample(evaluation: Any) -> None:
    """Say when the test set is too small for its numbers to mean much (with the 95 % interval)."""
    from ..metrics import small_sample_warnings

    for line in small_sample_warnings(evaluation):
        log.warning("%s", line)


# ------------------------------------------------------------------ label


def _register_label(sub: Any) -> None:
    p = add_command(sub, "label", "print the top labels of images with a retrained model (or ImageNet's)",
                    "headstart label --model runs/flowers photo.jpg more_photos/\n"
                    "headstart label --imagenet cat.jpg   # the backbone's own 1000 ImageNet classes")
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE_OR_FOLDER")
    group = p.add_mutually_exclusive_group(required=True)
    flag(group, "--model", "--graph", type=Path,
         help="run directory written by 'headstart retrain', or a model file from 'headstart export' "
              "(.onnx, .xml: runs without PyTorch)")
    flag(group, "--imagenet", action="store_true", help="use the backbone's ImageNet classifier")
    flag(p, "--top_k", type=int, default=5, help="labels to show per image (default: %(default)s)")
    add_format(p, ("table", "json", "csv"))
    add_backbone_flags(p)
    add_runtime_flags(p, exported=True)
    add_cache_flag(p)
    p.set_defaults(handler=run_label)


def run_label(args: argparse.Namespace) -> int:
    from ..inference import label, label_imagenet

    require_path(args.model, "--model")
    require_path(args.weights, "--weights", "file")
    if args.imagenet:
        result = label_imagenet(args.images, backbone=args.backbone, top_k=args.top_k, weights=args.weights,
                                runtime=args.runtime, precision=args.precision, bottleneck_dir=args.bottleneck_dir,
                                progress=not args.quiet)
    else:
        result = label(args.model, args.images, top_k=args.top_k, bottleneck_dir=args.bottleneck_dir,
                       runtime=args.runtime, precision=args.precision, weights=args.weights,
                       progress=not args.quiet)
    print_predictions(result, args.format)
    return 1 if not result.predictions else 0


def print_predictions(result: Any, fmt: str) -> None:
    warn_skipped(result.skipped)
    if fmt == "json":
        print_json([p.to_dict() for p in result.predictions])
    elif fmt == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(["path", "rank", "label", "score", "unknown", "ood_score"])
        for p in result.predictions:
            ood = "" if p.ood_score is None else f"{p.ood_score:.6f}"
            for rank, (lab, score) in enumerate(p.top, 1):
                writer.writerow([str(p.path), rank, lab, f"{score:.6f}", str(p.unknown).lower(), ood])
    else:
        for p in result.predictions:
            # The classes' scores stay visible under "unknown": they say what it looked most like.
            print(f"{p.path}  -> unknown (novelty {p.ood_score:.2f})" if p.unknown else p.path)
            width = max(len(lab) for lab, _ in p.top)
            for lab, score in p.top:
                print(f"  {lab.ljust(width)}  {score:.4f}")


# ------------------------------------------------------------------ evaluate


def _register_evaluate(sub: Any) -> None:
    p = add_command(sub, "evaluate", "measure a retrained model on another labelled folder",
                    "headstart evaluate --model runs/flowers --image_dir holdout_photos\n"
                    "headstart evaluate --model runs/flowers --unknown_dir photos_of_cars   # how many are rejected")
    flag(p, "--model", type=Path, required=True,
         help="run directory written by 'headstart retrain', or a model file from 'headstart export'")
    flag(p, "--image_dir", type=Path, default=None, help="folder with one sub-folder per label of the model")
    flag(p, "--unknown_dir", type=Path, default=None,
         help="folder of images of none of the model's classes: reports how many it answers 'unknown'")
    flag(p, "--print_misclassified_test_images", action="store_true", help="list the images the model gets wrong")
    add_format(p)
    add_runtime_flags(p, exported=True)
    add_cache_flag(p)
    setting_flag(p, "weights", help="the backbone's weights file, if it was trained with one")
    add_ray_flags(p)
    p.set_defaults(handler=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    from ..errors import UsageError
    from ..inference import evaluate, evaluate_unknown
    from ..metrics import format_evaluation

    require_path(args.model, "--model")
    require_path(args.weights, "--weights", "file")
    if args.image_dir is None and args.unknown_dir is None:
        raise UsageError("give --image_dir (labelled images), --unknown_dir (images of none of the classes), or both",
                         hint="headstart evaluate --model RUN_DIR --image_dir holdout_photos")
    common = dict(bottleneck_dir=args.bottleneck_dir, runtime=args.runtime, precision=args.precision,
                  weights=args.weights, progress=not args.quiet, ray=ray_settings(args))
    found, novel = None, None
    if args.image_dir is not None:
        require_path(args.image_dir, "--image_dir", "folder")
        found = evaluate(args.model, args.image_dir, **common)
        warn_skipped(found.skipped)
    if args.unknown_dir is not None:
        require_path(args.unknown_dir, "--unknown_dir", "folder")
        novel, novel_skipped = evaluate_unknown(args.model, args.unknown_dir, **common)
        warn_skipped(novel_skipped)
    if args.format == "json":
        print_json({**(found.evaluation.to_dict() if found else {}),
                    **({"unknown": found.unknown.to_dict()} if found and found.unknown else {}),
                    **({"unknown_dir": {"path": str(args.unknown_dir), **novel.to_dict()}} if novel else {})})
        if found:
            warn_small_sample(found.evaluation)
        return 0
    if novel is not None:
        print(f"Unknown images rejected = {100 * novel.rejected:.1f}% ({novel.unknown} of {novel.n} in "
              f"{args.unknown_dir})")
    if found is None:
        return 0
    result, wrong = found.evaluation, found.misclassified
    print(format_evaluation(result, title="Test", details=not args.quiet))
    if found.unknown is not None:
        print(f"Accepted (not 'unknown') = {100 * found.unknown.accepted:.1f}% of {found.unknown.n}")
    warn_small_sample(result)
    if args.quiet:
        return 0
    if args.print_misclassified_test_images:
        print()
        print("=== MISCLASSIFIED IMAGES ===")
        for m in wrong:
            print(f"{m.relpath:>40}  {m.predicted_label}  ({m.score:.3f})")
    return 0


# ------------------------------------------------------------------ backbones


def _register_backbones(sub: Any) -> None:
    p = add_command(sub, "backbones", "list the pretrained feature extractors",
                    "headstart backbones\nheadstart backbones --format json")
    add_format(p)
    p.set_defaults(handler=run_backbones)


def run_backbones(args: argparse.Namespace) -> int:
    from ..backbones import DEFAULT_BACKBONE, list_backbones

    rows = list_backbones()
    if args.format == "json":
        print_json([asdict(r) for r in rows])
        return 0
    # One number format per column: "73" next to "75.1" reads as a different precision.
    table = [[r.name + (" *" if r.name == DEFAULT_BACKBONE else ""), r.timm_name, _decimals(r.params_m, 2),
              r.input_size, r.bottleneck_size, _decimals(r.top1, 1), "yes" if r.offline else "download"]
             for r in rows]
    print(format_table(["name", "timm model", "params (M)", "input", "bottleneck", "ImageNet top-1 %",
                        "weights offline"], table, align="llrrrrl"))
    print("\n* default. Any other timm model name works too when online; --weights PATH loads a local checkpoint.")
    return 0


def _decimals(value: Any, places: int) -> str:
    return "-" if value is None else f"{float(value):.{places}f}"


# ------------------------------------------------------------------ cache


def _register_cache(sub: Any) -> None:
    p = add_command(sub, "cache", "inspect or clear the bottleneck cache",
                    "headstart cache stats\nheadstart cache clear --bottleneck_dir /tmp/bottlenecks")
    p.add_argument("action", choices=["stats", "clear"])
    add_cache_flag(p)
    add_format(p)
    p.set_defaults(handler=run_cache)


def run_cache(args: argparse.Namespace) -> int:
    from ..cache import BottleneckCache

    with BottleneckCache(args.bottleneck_dir) as cache:
        if args.action == "clear":
            removed = cache.clear()
            print(f"Removed {removed} bottlenecks from {cache.path}")
            return 0
        stats = cache.stats()
    if args.format == "json":
        print_json(asdict(stats))
        return 0
    print(f"Cache: {stats.path}")
    print(f"Size: {stats.size_bytes / 1e6:.1f} MB, {stats.entries} bottlenecks")
    if stats.extractors:
        rows = [[e.fingerprint, e.description.get("name", "?"), e.description.get("runtime", "?"),
                 e.description.get("precision", "?"), e.dim, e.entries] for e in stats.extractors]
        print(format_table(["extractor", "backbone", "runtime", "precision", "dim", "entries"], rows,
                           align="llllrr"))
    return 0


# ------------------------------------------------------------------ datasets


def _register_datasets(sub: Any) -> None:
    p = add_command(sub, "datasets", "write demo image folders (Fashion-MNIST offline, flowers online)",
                    "headstart datasets fashion-mnist --out demo --per_class 300\n"
                    "headstart datasets fashion-mnist --out holdout --split test --per_class 100\n"
                    "headstart datasets flowers --out data")
    p.add_argument("name", nargs="?", choices=["fashion-mnist", "flowers"], help="dataset to write (omit to list)")
    flag(p, "--out", type=Path, help="folder to write into")
    flag(p, "--per_class", type=int, default=None, help="images per class (default: all)")
    flag(p, "--split", choices=["train", "test"], default="train", help="Fashion-MNIST's train or test images")
    flag(p, "--offset", type=int, default=0, help="skip this many images of each class first")
    flag(p, "--source", default=None, help="folder or URL holding the dataset files (default: Debian package, "
                                           "else the official download)")
    p.set_defaults(handler=run_datasets)


def run_datasets(args: argparse.Namespace) -> int:
    from ..data import datasets
    from ..errors import UsageError

    if args.name is None:
        rows = datasets.list_datasets()
        keys = list(rows[0]) if rows else []
        print(format_table(keys, [[r[k] for k in keys] for r in rows], align="l" * len(keys)))
        return 0
    if args.out is None:
        raise UsageError("--out is required", hint=f"headstart datasets {args.name} --out DIR")
    if args.source is not None and "://" not in args.source:
        require_path(args.source, "--source", "folder" if args.name == "fashion-mnist" else "file or folder")
    if args.name == "fashion-mnist":
        info = datasets.write_fashion_mnist(args.out, per_class=args.per_class, split=args.split, offset=args.offset,
                                            source=args.source, progress=not args.quiet)
    else:
        info = datasets.download_flowers(args.out, **({"url": args.source} if args.source else {}),
                                         progress=not args.quiet)
    print(f"Wrote {info.n_images} images in {len(info.labels)} classes to {info.path} (from {info.source})")
    if args.name == "fashion-mnist" and args.split == "test":
        print(f"Next: headstart evaluate --model RUN_DIR --image_dir {info.path}")
    else:
        print(f"Next: headstart retrain --image_dir {info.path}")
    return 0
