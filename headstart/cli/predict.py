"""label and evaluate: a trained model applied to images."""

from __future__ import annotations

import argparse
import csv
import logging
import sys
from pathlib import Path
from typing import Any

from .common import add_command, add_format, flag, print_json, require_path
from .core import (
    add_backbone_flags,
    add_cache_flag,
    add_ray_flags,
    add_runtime_flags,
    ray_settings,
    setting_flag,
    warn_skipped,
    warn_small_sample,
)

log = logging.getLogger("headstart")


def register(sub: Any) -> None:
    _register_label(sub)
    _register_evaluate(sub)


# ------------------------------------------------------------------ label


def _register_label(sub: Any) -> None:
    p = add_command(
        sub,
        "label",
        "print the top labels of images with a retrained model (or ImageNet's)",
        "headstart label --model runs/flowers photo.jpg more_photos/\n"
        "headstart label --imagenet cat.jpg   # the backbone's own 1000 ImageNet classes",
    )
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE_OR_FOLDER")
    group = p.add_mutually_exclusive_group(required=True)
    flag(
        group,
        "--model",
        "--graph",
        type=Path,
        help="run directory written by 'headstart retrain', or a model file from 'headstart export' "
        "(.onnx, .xml, .tflite: runs without PyTorch)",
    )
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
        result = label_imagenet(
            args.images,
            backbone=args.backbone,
            top_k=args.top_k,
            weights=args.weights,
            runtime=args.runtime,
            precision=args.precision,
            bottleneck_dir=args.bottleneck_dir,
            progress=not args.quiet,
        )
    else:
        result = label(
            args.model,
            args.images,
            top_k=args.top_k,
            bottleneck_dir=args.bottleneck_dir,
            runtime=args.runtime,
            precision=args.precision,
            weights=args.weights,
            progress=not args.quiet,
        )
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
    p = add_command(
        sub,
        "evaluate",
        "measure a retrained model on another labelled folder",
        "headstart evaluate --model runs/flowers --image_dir holdout_photos\n"
        "headstart evaluate --model runs/flowers --unknown_dir photos_of_cars   # how many are rejected",
    )
    flag(
        p,
        "--model",
        type=Path,
        required=True,
        help="run directory written by 'headstart retrain', or a model file from 'headstart export'",
    )
    flag(p, "--image_dir", type=Path, default=None, help="folder with one sub-folder per label of the model")
    flag(
        p,
        "--unknown_dir",
        type=Path,
        default=None,
        help="folder of images of none of the model's classes: reports how many it answers 'unknown'",
    )
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
        raise UsageError(
            "give --image_dir (labelled images), --unknown_dir (images of none of the classes), or both",
            hint="headstart evaluate --model RUN_DIR --image_dir holdout_photos",
        )
    common = dict(
        bottleneck_dir=args.bottleneck_dir,
        runtime=args.runtime,
        precision=args.precision,
        weights=args.weights,
        progress=not args.quiet,
        ray=ray_settings(args),
    )
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
        print_json(
            {
                **(found.evaluation.to_dict() if found else {}),
                **({"unknown": found.unknown.to_dict()} if found and found.unknown else {}),
                **({"unknown_dir": {"path": str(args.unknown_dir), **novel.to_dict()}} if novel else {}),
            }
        )
        if found:
            warn_small_sample(found.evaluation)
        return 0
    if novel is not None:
        print(
            f"Unknown images rejected = {100 * novel.rejected:.1f}% ({novel.unknown} of {novel.n} in "
            f"{args.unknown_dir})"
        )
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
