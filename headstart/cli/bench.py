"""bench: how fast bottleneck extraction (``bench extract``) or an exported model (``bench --model``) runs here."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..runtimes import DECODE_MODES
from .common import add_command, add_format, flag, print_json, require_path


def register(sub: Any) -> None:
    p = add_command(
        sub,
        "bench",
        "measure speed: bottleneck extraction, or an exported model per runtime",
        "headstart bench extract --image_dir flower_photos\n"
        "headstart bench extract --image_dir flower_photos --runtime cuda --batch_size 128 --format json\n"
        "headstart bench --model runs/flowers --image_dir flower_photos",
    )
    p.add_argument(
        "what",
        nargs="?",
        choices=["extract"],
        help="'extract': model-only ceiling per runtime, end-to-end rate from files and their ratio",
    )
    flag(p, "--model", type=Path, default=None, help="run directory or export to measure per runtime")
    flag(p, "--image_dir", type=Path, default=None, help="folder of images to measure on")
    flag(p, "--backbone", default="efficientnet_lite0", help="backbone for 'bench extract' (default: %(default)s)")
    flag(p, "--weights", type=Path, default=None, help="local weights file for the backbone")
    flag(p, "--crop_pct", type=float, default=1.0, help="centre crop as in retrain (default: %(default)s)")
    flag(
        p,
        "--runtime",
        default="auto",
        help="runtime of the end-to-end run; with --model, a comma-separated "
        "list of runtimes to measure (default: auto)",
    )
    flag(
        p,
        "--precision",
        default="auto",
        choices=["auto", "fp32", "fp16", "bf16"],
        help="precision of the end-to-end run (default: the runtime's best accurate one)",
    )
    flag(
        p,
        "--ceilings",
        default=None,
        help="comma-separated runtimes to measure model-only, e.g. openvino-bf16,onnxruntime (default: all)",
    )
    from ..runtimes import DEFAULT_BATCH_SIZE

    flag(p, "--batch_size", type=int, default=DEFAULT_BATCH_SIZE, help="images per network call (default: %(default)s)")
    flag(p, "--workers", type=int, default=None, help="image decoders (default: one per core)")
    flag(
        p,
        "--decode",
        choices=list(DECODE_MODES),
        default="auto",
        help="decode in threads or worker processes (default: processes for cuda, else threads)",
    )
    flag(p, "--limit", type=int, default=None, help="use at most this many images")
    flag(p, "--seconds", type=float, default=4.0, help="time per ceiling measurement (default: %(default)s)")
    flag(p, "--compile", action="store_true", help="torch.compile the network (torch and cuda runtimes)")
    add_format(p)
    p.set_defaults(handler=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    from ..errors import UsageError

    if args.what == "extract" and args.model is not None:  # the wrong flag first, then whether its path exists
        raise UsageError(
            "'bench extract' measures a backbone, not --model",
            hint="headstart bench --model RUN_DIR, or headstart bench extract --image_dir DIR",
        )
    require_path(args.model, "--model")
    require_path(args.image_dir, "--image_dir", "folder")
    require_path(args.weights, "--weights", "file")
    if args.what == "extract":
        if args.image_dir is None:
            raise UsageError("'bench extract' needs --image_dir", hint="headstart bench extract --image_dir photos")
        return _run_extract(args)
    if args.model is None:
        raise UsageError(
            "say what to measure", hint="headstart bench extract --image_dir DIR, or headstart bench --model RUN_DIR"
        )
    return _run_model(args)


def _run_extract(args: argparse.Namespace) -> int:
    from ..bench import bench_extract, format_extract_bench

    result = bench_extract(
        args.image_dir,
        backbone=args.backbone,
        weights=args.weights,
        crop_pct=args.crop_pct,
        runtime=args.runtime,
        precision=args.precision,
        ceilings=args.ceilings.split(",") if args.ceilings else None,
        batch_size=args.batch_size,
        workers=args.workers,
        decode=args.decode,
        limit=args.limit,
        seconds=args.seconds,
        compile=args.compile,
        progress=not args.quiet,
    )
    if args.format == "json":
        print_json(result.to_dict())
    else:
        print(format_extract_bench(result))
    return 0


def _run_model(args: argparse.Namespace) -> int:
    from ..bench import bench_model, format_bench_rows

    runtimes = None if args.runtime in (None, "auto") else [r for r in args.runtime.split(",") if r]
    rows = bench_model(args.model, image_dir=args.image_dir, runtimes=runtimes, progress=not args.quiet)
    if args.format == "json":
        print_json(rows)
    else:
        print(format_bench_rows(rows))
    return 0
