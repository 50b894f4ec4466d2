"""studio: a local web app for the whole loop: collect, train, inspect, fix, try, export."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .common import add_command, flag


def register(sub: Any) -> None:
    p = add_command(
        sub,
        "studio",
        "a local web app: collect images (files, folders, webcam), train, inspect and fix "
        "mistakes, try the model live, export it",
        "headstart studio --data_dir ~/studio --open\n"
        "headstart studio --data_dir datasets --port 8090   # each sub-folder of datasets/ is a project",
    )
    flag(
        p,
        "--data_dir",
        type=Path,
        default=Path("studio"),
        help="folder of projects, each one a folder of class folders (default: ./studio, created if missing)",
    )
    flag(p, "--port", type=int, default=8080, help="port on 127.0.0.1 (default: %(default)s; 0 picks a free one)")
    flag(p, "--open", action="store_true", help="open the studio in the default web browser")
    flag(
        p,
        "--bottleneck_dir",
        type=Path,
        default=None,
        help="bottleneck cache (default: $HEADSTART_CACHE_DIR or ~/.cache/headstart, shared with retrain)",
    )
    flag(p, "--max_upload_mb", type=float, default=50.0, help="largest file an upload may hold (default: %(default)s)")
    p.set_defaults(handler=run_studio)


def run_studio(args: argparse.Namespace) -> int:
    from ..errors import UsageError

    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be between 0 and 65535, got {args.port}", hint="e.g. --port 8080")
    if args.max_upload_mb <= 0:
        raise UsageError(f"--max_upload_mb must be positive, got {args.max_upload_mb}", hint="e.g. --max_upload_mb 50")
    data_dir = args.data_dir.expanduser()
    if data_dir.exists() and not data_dir.is_dir():
        raise UsageError(f"--data_dir {data_dir} is a file, not a folder", hint="pass a folder of projects")
    from ..studio.server import run_studio_server

    def on_listen(url: str) -> None:
        print(f"headstart studio at {url}  (projects in {data_dir.resolve()}; Ctrl-C stops)", flush=True)
        if args.open:
            import webbrowser

            webbrowser.open(url)

    run_studio_server(
        data_dir, port=args.port, cache_dir=args.bottleneck_dir, max_upload_mb=args.max_upload_mb, on_listen=on_listen
    )
    print("stopped", file=sys.stderr)
    return 0
