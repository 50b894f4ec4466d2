"""retrain, and the flags every command that runs a network shares (built from the settings table)."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .common import add_command, flag, plural, print_json, require_path

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
    from ..tfhub import tfhub_name

    setting_flag(parser, "backbone")
    flag(
        parser,
        "--tfhub_module",
        dest="backbone",
        type=tfhub_name,
        default=argparse.SUPPRESS,
        metavar="HANDLE_OR_PATH",
        help="a TF Hub image feature vector: a SavedModel folder, a tfhub.dev or "
        "Kaggle URL, or a Kaggle handle (the same as --backbone tfhub:HANDLE_OR_PATH)",
    )
    flag(parser, "--image_size", type=int, default=None, help="input size of a TF Hub module with a dynamic signature")
    setting_flag(parser, "weights")


def add_runtime_flags(parser: argparse.ArgumentParser, *, exported: bool = False) -> None:
    """``--runtime``/``--precision``; ``exported`` also offers the runtimes that only run exported files."""
    from ..runtimes import RUNTIME_NAMES

    if exported:
        setting_flag(
            parser,
            "runtime",
            choices=["auto", *RUNTIME_NAMES],
            help="where the model runs; auto picks the fastest accurate one here (default: %(default)s)",
        )
    else:
        setting_flag(parser, "runtime")
    setting_flag(parser, "precision")


def add_cache_flag(parser: argparse.ArgumentParser) -> None:
    setting_flag(parser, "bottleneck_dir")


RAY_FLAGS = ("ray", "ray_actors", "ray_gpus_per_actor", "ray_cpus_per_actor")


def add_ray_flags(parser: argparse.ArgumentParser, *, max_memory: bool = False) -> None:
    """``--ray ADDRESS`` and the actor pool's shape (docs/SCALE.md); retrain adds ``--max_memory``."""
    group = parser.add_argument_group("scale out (docs/SCALE.md)")
    metavars = {
        "ray": "ADDRESS",
        "ray_actors": "N",
        "ray_gpus_per_actor": "G",
        "ray_cpus_per_actor": "C",
        "max_memory": "SIZE",
    }
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


# ------------------------------------------------------------------ retrain


TRAINING_FLAGS = (
    "how_many_training_steps",
    "learning_rate",
    "optimizer",
    "train_batch_size",
    "hidden_units",
    "dropout",
    "weight_decay",
)


def add_training_flags(parser: argparse.ArgumentParser, list_type: Any = None) -> None:
    """Flags of the last layer; ``list_type`` makes them comma-separated lists (sweep)."""
    for name in TRAINING_FLAGS:
        setting_flag(parser, name, list_type=list_type)


def add_split_flags(parser: argparse.ArgumentParser) -> None:
    setting_flag(parser, "image_dir", required=True)
    setting_flag(parser, "testing_percentage")
    setting_flag(parser, "validation_percentage")


def _register_retrain(sub: Any) -> None:
    p = add_command(
        sub,
        "retrain",
        "train a new last layer on your photos (retrain.py's workflow)",
        "headstart retrain --image_dir flower_photos --output_dir runs/flowers\n"
        "headstart retrain --image_dir flower_photos --optimizer sgd --learning_rate 0.01 "
        "--how_many_training_steps 4000   # retrain.py's recipe",
    )
    add_split_flags(p)
    for name in ("output_dir", "output_labels"):
        setting_flag(p, name)
    add_cache_flag(p)
    add_backbone_flags(p)
    setting_flag(p, "crop_pct")
    add_runtime_flags(p)
    add_training_flags(p)
    for name in (
        "min_epochs",
        "eval_step_interval",
        "validation_batch_size",
        "test_batch_size",
        "print_misclassified_test_images",
    ):
        setting_flag(p, name)
    distort = p.add_argument_group("distortions (retrain.py's flags; each distorted copy is computed once and cached)")
    for name in ("flip_left_right", "random_crop", "random_scale", "random_brightness", "distorted_copies"):
        setting_flag(distort, name)
    tune = p.add_argument_group("fine-tuning (the top stages train from their cached input maps)")
    for name in ("fine_tune_blocks", "fine_tune_epochs", "fine_tune_learning_rate", "fine_tune_label_smoothing"):
        setting_flag(tune, name, metavar="N|all" if name == "fine_tune_blocks" else None)
    for name in (
        "early_stopping",
        "label_smoothing",
        "class_weights",
        "unknown_accept",
        "seed",
        "strict",
        "workers",
        "decode",
        "exclude_from",
        "doctor",
    ):
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
            bars.append(Progress(step.steps, "Training", unit="step", enabled=not args.quiet))
        bar = bars[0]
        bar.update(step.step + 1 - done[0])
        done[0] = step.step + 1
        if args.quiet:
            return
        text = (
            f"Step {step.step}: Train accuracy = {100 * step.train_accuracy:.1f}%, "
            f"Cross entropy = {step.cross_entropy:.4f}"
        )
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
    print(
        f"Bottlenecks: {b['computed']} computed, {b['cached']} cached, {b['skipped']} skipped "
        f"in {result.timing['bottlenecks_s']:.1f}s"
    )
    if "distorted_bottlenecks" in result.metrics:
        d = result.metrics["distorted_bottlenecks"]
        print(f"Distorted training copies: {d['copies']} per image, {d['computed']} computed, {d['cached']} cached")
    print(
        f"Training: {result.metrics['training']['steps_run']} steps in {result.timing['train_s']:.2f}s"
        + ("  (DIVERGED: lower --learning_rate)" if result.diverged else "")
    )
    if "fine_tune" in result.metrics:
        t = result.metrics["fine_tune"]
        what = "the whole network" if t["blocks"] == "all" else f"the top {t['blocks']} stage(s)"
        print(
            f"Fine-tuned {what}: {t['epochs_run']} epoch(s) in {t['seconds']:.0f}s, "
            f"kept epoch {t['best_epoch']}" + (" (stopped early)" if t["stopped_early"] else "")
        )
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
