"""backbones, cache and datasets: what is here, what is cached, and demo data."""

from __future__ import annotations

import argparse
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .common import add_command, add_format, flag, format_table, print_json, require_path
from .core import add_cache_flag

log = logging.getLogger("headstart")


def register(sub: Any) -> None:
    _register_backbones(sub)
    _register_cache(sub)
    _register_datasets(sub)


# ------------------------------------------------------------------ backbones


def _register_backbones(sub: Any) -> None:
    p = add_command(
        sub,
        "backbones",
        "list the pretrained feature extractors",
        "headstart backbones\nheadstart backbones --format json",
    )
    add_format(p)
    p.set_defaults(handler=run_backbones)


def run_backbones(args: argparse.Namespace) -> int:
    from ..backbones import DEFAULT_BACKBONE, list_backbones

    rows = list_backbones()
    if args.format == "json":
        print_json([asdict(r) for r in rows])
        return 0
    # One number format per column: "73" next to "75.1" reads as a different precision.
    table = [
        [
            r.name + (" *" if r.name == DEFAULT_BACKBONE else ""),
            r.timm_name,
            _decimals(r.params_m, 2),
            r.input_size,
            r.bottleneck_size,
            _decimals(r.top1, 1),
            "yes" if r.offline else "download",
        ]
        for r in rows
    ]
    print(
        format_table(
            ["name", "timm model", "params (M)", "input", "bottleneck", "ImageNet top-1 %", "weights offline"],
            table,
            align="llrrrrl",
        )
    )
    print("\n* default. Any other timm model name works too when online; --weights PATH loads a local checkpoint.")
    return 0


def _decimals(value: Any, places: int) -> str:
    return "-" if value is None else f"{float(value):.{places}f}"


# ------------------------------------------------------------------ cache


def _register_cache(sub: Any) -> None:
    p = add_command(
        sub,
        "cache",
        "inspect or clear the bottleneck cache",
        "headstart cache stats\nheadstart cache clear --bottleneck_dir /tmp/bottlenecks",
    )
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
        rows = [
            [
                e.fingerprint,
                e.description.get("name", "?"),
                e.description.get("runtime", "?"),
                e.description.get("precision", "?"),
                e.dim,
                e.entries,
            ]
            for e in stats.extractors
        ]
        print(format_table(["extractor", "backbone", "runtime", "precision", "dim", "entries"], rows, align="llllrr"))
    return 0


# ------------------------------------------------------------------ datasets


def _register_datasets(sub: Any) -> None:
    p = add_command(
        sub,
        "datasets",
        "write demo image folders (Fashion-MNIST offline, flowers online)",
        "headstart datasets fashion-mnist --out demo --per_class 300\n"
        "headstart datasets fashion-mnist --out holdout --split test --per_class 100\n"
        "headstart datasets flowers --out data",
    )
    p.add_argument("name", nargs="?", choices=["fashion-mnist", "flowers"], help="dataset to write (omit to list)")
    flag(p, "--out", type=Path, help="folder to write into")
    flag(p, "--per_class", type=int, default=None, help="images per class (default: all)")
    flag(p, "--split", choices=["train", "test"], default="train", help="Fashion-MNIST's train or test images")
    flag(p, "--offset", type=int, default=0, help="skip this many images of each class first")
    flag(
        p,
        "--source",
        default=None,
        help="folder or URL holding the dataset files (default: Debian package, else the official download)",
    )
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
        info = datasets.write_fashion_mnist(
            args.out,
            per_class=args.per_class,
            split=args.split,
            offset=args.offset,
            source=args.source,
            progress=not args.quiet,
        )
    else:
        info = datasets.download_flowers(
            args.out, **({"url": args.source} if args.source else {}), progress=not args.quiet
        )
    print(f"Wrote {info.n_images} images in {len(info.labels)} classes to {info.path} (from {info.source})")
    if args.name == "fashion-mnist" and args.split == "test":
        print(f"Next: headstart evaluate --model RUN_DIR --image_dir {info.path}")
    else:
        print(f"Next: headstart retrain --image_dir {info.path}")
    return 0
