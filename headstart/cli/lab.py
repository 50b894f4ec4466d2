"""sweep, curve, compare, report: the commands that answer "what does this knob do?"."""

from __future__ import annotations

import argparse
import csv
import io
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..settings import EXPERIMENT_EVAL_STEP_INTERVAL
from .common import add_command, add_format, comma_list, flag, format_table, print_json, require_path
from .core import (
    TRAINING_FLAGS,
    add_backbone_flags,
    add_cache_flag,
    add_runtime_flags,
    add_split_flags,
    add_training_flags,
    setting_flag,
)


def register(sub: Any) -> None:
    _register_sweep(sub)
    _register_curve(sub)
    _register_compare(sub)
    _register_report(sub)


# ------------------------------------------------------------------ shared


def _add_common(p: argparse.ArgumentParser, *, backbone: bool = True) -> None:
    add_split_flags(p)
    add_cache_flag(p)
    if backbone:
        add_backbone_flags(p)
    setting_flag(p, "crop_pct")
    add_runtime_flags(p)
    setting_flag(p, "seed", help="first random seed; repeat r uses seed + r (default: %(default)s)")
    # Experiments look for the step where validation stopped improving, so they measure more often.
    setting_flag(
        p,
        "eval_step_interval",
        default=EXPERIMENT_EVAL_STEP_INTERVAL,
        help="measure validation accuracy every N steps (default: %(default)s)",
    )
    add_format(p, ("table", "json", "csv"))
    flag(
        p,
        "--output_dir",
        type=Path,
        default=None,
        help="also write JSON, CSV, a PNG plot and a self-contained HTML page here",
    )


def _settings(args: argparse.Namespace, *, backbone: bool = True) -> dict[str, Any]:
    require_path(args.image_dir, "--image_dir", "folder")
    if backbone:
        require_path(args.weights, "--weights", "file")
    settings: dict[str, Any] = {
        "bottleneck_dir": args.bottleneck_dir,
        "crop_pct": args.crop_pct,
        "runtime": args.runtime,
        "precision": args.precision,
        "seed": args.seed,
        "eval_step_interval": args.eval_step_interval,
        "testing_percentage": args.testing_percentage,
        "validation_percentage": args.validation_percentage,
        "progress": not args.quiet,
    }
    if backbone:
        settings.update(backbone=args.backbone, weights=args.weights)
    return settings


def _csv_text(rows: Sequence[Mapping[str, Any]]) -> str:
    keys: list[str] = []
    for row in rows:
        keys.extend(k for k in row if k not in keys)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in keys})
    return out.getvalue()


def _emit(args: argparse.Namespace, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
    if args.format == "json":
        print_json(list(rows))
    elif args.format == "csv":
        sys.stdout.write(_csv_text(rows))
    else:
        print(format_table(list(columns), [[_show(r.get(c)) for c in columns] for r in rows]))


def _show(value: Any) -> Any:
    return "DIVERGED" if value is True else "" if value is False else value


def _write_outputs(
    out_dir: Path | None, name: str, payload: Any, rows: Sequence[Mapping[str, Any]], png: bytes | None, page: str
) -> None:
    if out_dir is None:
        return
    import json

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    (out_dir / f"{name}.csv").write_text(_csv_text(rows), encoding="utf-8")
    if png:
        (out_dir / f"{name}.png").write_bytes(png)
    (out_dir / f"{name}.html").write_text(page, encoding="utf-8")
    print(f"Wrote {name}.json, {name}.csv, {name}.png and {name}.html to {out_dir}", file=sys.stderr)


def _command_line() -> str:
    return "headstart " + " ".join(shlex.quote(a) for a in sys.argv[1:])


# ------------------------------------------------------------------ sweep


def _register_sweep(sub: Any) -> None:
    p = add_command(
        sub,
        "sweep",
        "train a grid of heads on cached bottlenecks and compare them",
        "headstart sweep --image_dir demo --learning_rate 0.001,0.01,0.1,1.0 --train_batch_size 4,32,100\n"
        "headstart sweep --image_dir demo --optimizer sgd,adam --repeats 3 --format csv > sweep.csv\n"
        "headstart sweep --image_dir demo --hidden_units 0,256 --dropout 0,0.3 --output_dir lab/sweep",
    )
    _add_common(p)
    add_training_flags(p, list_type=comma_list)
    flag(p, "--repeats", type=int, default=1, help="seeds per cell, averaged (default: %(default)s)")
    flag(
        p,
        "--validation_batch_size",
        type=int,
        default=-1,
        help="validation images per evaluation, -1 for all (default: %(default)s)",
    )
    p.set_defaults(handler=run_sweep)


def run_sweep(args: argparse.Namespace) -> int:
    from ..experiments import SWEEPABLE, sweep
    from ..lab_report import render_sweep_report
    from ..plots import plot_sweep

    grid = {name: getattr(args, name) for name in SWEEPABLE}
    result = sweep(
        args.image_dir, grid, repeats=args.repeats, validation_batch_size=args.validation_batch_size, **_settings(args)
    )
    swept = list(result.swept)
    fixed = [k for k in SWEEPABLE if k not in swept]
    columns = swept + [
        "test_accuracy",
        "validation_accuracy",
        "macro_precision",
        "macro_recall",
        "cross_entropy",
        "train_s",
        "best_step",
        "diverged",
    ]
    _emit(args, result.rows, columns)
    if args.format == "table":
        first = result.rows[0]
        print(
            f"\n{len(result.rows)} cells x {result.repeats} repeats in {result.seconds:.1f}s "
            f"(bottlenecks: {result.features['bottlenecks_cached']} cached, "
            f"{result.features['bottlenecks_computed']} computed); fixed: "
            + ", ".join(f"{k}={first[k]}" for k in fixed)
        )
        if any(r["diverged"] for r in result.rows):
            print("DIVERGED: the loss became NaN or infinite; the scores are those of the last finite weights.")
    payload = {
        "rows": list(result.rows),
        "swept": swept,
        "repeats": result.repeats,
        "features": result.features,
        "seconds": round(result.seconds, 3),
        "command": _command_line(),
    }
    if args.output_dir is not None:
        _write_outputs(
            args.output_dir,
            "sweep",
            payload,
            result.rows,
            plot_sweep(result.rows, swept),
            render_sweep_report(
                result.rows,
                swept,
                features=result.features,
                repeats=result.repeats,
                seconds=result.seconds,
                command=_command_line(),
            ),
        )
    return 0


# ------------------------------------------------------------------ curve


def _sizes(text: str) -> list[Any]:
    from ..errors import UsageError
    from ..experiments import parse_sizes

    try:
        return parse_sizes([part for part in text.split(",") if part.strip()])
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _register_curve(sub: Any) -> None:
    p = add_command(
        sub,
        "curve",
        "test accuracy against the number of training images per class",
        "headstart curve --image_dir demo --images_per_class 1,2,5,10,20,50,100,all --repeats 5\n"
        "headstart curve --image_dir demo --format json --output_dir lab/curve",
    )
    _add_common(p)
    add_training_flags(p)
    flag(
        p,
        "--images_per_class",
        type=_sizes,
        default=_sizes("1,2,5,10,20,50,100,all"),
        help="training images per class to try, comma-separated; 'all' is the whole training split "
        "(default: 1,2,5,10,20,50,100,all)",
    )
    flag(p, "--repeats", type=int, default=5, help="random samples per point (default: %(default)s)")
    p.set_defaults(handler=run_curve)


def run_curve(args: argparse.Namespace) -> int:
    from ..experiments import curve
    from ..lab_report import render_curve_report
    from ..plots import plot_curve

    training = {k: getattr(args, k) for k in TRAINING_FLAGS}
    result = curve(args.image_dir, args.images_per_class, repeats=args.repeats, **training, **_settings(args))
    _emit(
        args,
        result.rows,
        ["images_per_class", "n_train", "accuracy_mean", "accuracy_std", "accuracy_min", "accuracy_max", "n_test"],
    )
    if args.format == "table":
        print(
            f"\n{result.repeats} repeats per point in {result.seconds:.1f}s; the test split is fixed "
            f"({result.rows[0]['n_test']} images)."
        )
    payload = {
        "rows": list(result.rows),
        "repeats": result.repeats,
        "features": result.features,
        "training": training,
        "seconds": round(result.seconds, 3),
        "command": _command_line(),
    }
    if args.output_dir is not None:
        _write_outputs(
            args.output_dir,
            "curve",
            payload,
            result.rows,
            plot_curve(result.rows),
            render_curve_report(
                result.rows,
                features=result.features,
                repeats=result.repeats,
                seconds=result.seconds,
                command=_command_line(),
            ),
        )
    return 0


# ------------------------------------------------------------------ compare


def _register_compare(sub: Any) -> None:
    p = add_command(
        sub,
        "compare",
        "compare backbones: size, speed and accuracy on your images",
        "headstart compare --image_dir demo --backbones efficientnet_lite0,efficientnet_lite1,"
        "efficientnet_lite2\n"
        "headstart compare --image_dir flower_photos --backbones mobilenet_v3_large,inception_v3  "
        "# needs the download once",
    )
    _add_common(p, backbone=False)
    add_training_flags(p)
    flag(
        p,
        "--backbones",
        type=comma_list(str, "backbones"),
        required=True,
        help="comma-separated backbone names ('headstart backbones' lists them; any timm model works online)",
    )
    flag(
        p,
        "--timing_seconds",
        type=float,
        default=1.0,
        help="seconds spent timing each network's speed (default: %(default)s)",
    )
    flag(p, "--no_timing", action="store_true", help="skip the speed, parameter and multiply-add measurements")
    p.set_defaults(handler=run_compare)


def run_compare(args: argparse.Namespace) -> int:
    from ..backbone_comparison import compare
    from ..lab_report import render_compare_report
    from ..plots import plot_compare

    training = {k: getattr(args, k) for k in TRAINING_FLAGS}
    result = compare(
        args.image_dir,
        args.backbones,
        measure_speed=not args.no_timing,
        timing_seconds=args.timing_seconds,
        **training,
        **_settings(args, backbone=False),
    )
    _emit(
        args,
        result.rows,
        [
            "backbone",
            "params_m",
            "gmacs",
            "bottleneck_size",
            "images_per_s",
            "latency_ms",
            "test_accuracy",
            "macro_precision",
            "runtime",
        ],
    )
    payload = {
        "rows": list(result.rows),
        "training": result.training,
        "seconds": round(result.seconds, 3),
        "command": _command_line(),
    }
    if args.output_dir is not None:
        _write_outputs(
            args.output_dir,
            "compare",
            payload,
            result.rows,
            plot_compare(result.rows),
            render_compare_report(
                result.rows, training=result.training, seconds=result.seconds, command=_command_line()
            ),
        )
    return 0


# ------------------------------------------------------------------ report


def _register_report(sub: Any) -> None:
    p = add_command(
        sub,
        "report",
        "rebuild report.html in a run directory",
        "headstart report runs/flowers\n"
        "headstart report runs/flowers --image_dir moved/flower_photos   # images moved since training",
    )
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="run directory written by 'headstart retrain'")
    flag(
        p,
        "--image_dir",
        type=Path,
        default=None,
        help="where the training images are now (default: the folder recorded at training time)",
    )
    p.set_defaults(handler=run_report)


def run_report(args: argparse.Namespace) -> int:
    from ..report import rebuild_run_report

    require_path(args.run_dir, "RUN_DIR", "folder")
    require_path(args.image_dir, "--image_dir", "folder")
    path = rebuild_run_report(args.run_dir, image_root=args.image_dir)
    print(f"Wrote {path}")
    return 0
