"""serve: an HTTP inference service for one or more models (REST, Open Inference Protocol, a page)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from .common import add_command, flag


def register(sub: Any) -> None:
    from ..serve.settings import (
        DEFAULT_MAX_BATCH_DELAY_MS,
        DEFAULT_MAX_BODY_MB,
        DEFAULT_MAX_QUEUE,
        DEFAULT_TIMEOUT_S,
        DEFAULT_TOP_K,
    )

    p = add_command(
        sub,
        "serve",
        "serve models over HTTP: REST, the Open Inference Protocol (KServe v2), a page",
        "headstart serve --model runs/flowers\n"
        "headstart serve --model flowers=runs/flowers --model birds=exports/birds.onnx --port 8080\n"
        "curl -F file=@rose.jpg http://127.0.0.1:8000/v1/models/flowers/predict",
    )
    flag(
        p,
        "--model",
        action="append",
        required=True,
        metavar="[NAME=]PATH",
        help="a run directory or an exported .onnx / .xml; repeat for several models, named NAME=PATH "
        "(default name: the folder or file name; the first is the default model)",
    )
    flag(
        p,
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: %(default)s, this machine only; 0.0.0.0 for every interface)",
    )
    flag(p, "--port", type=int, default=8000, help="port (default: %(default)s; 0 picks a free one)")
    flag(
        p,
        "--api_key",
        default=None,
        help="require 'Authorization: Bearer KEY' on every route but health (default: $HEADSTART_API_KEY, or none)",
    )
    flag(
        p,
        "--max_batch_size",
        type=int,
        default=None,
        help="images per network run at most (default: the runtime's best batch)",
    )
    flag(
        p,
        "--max_batch_delay_ms",
        type=float,
        default=DEFAULT_MAX_BATCH_DELAY_MS,
        help="how long a batch waits to fill up, at most (default: %(default)s)",
    )
    flag(
        p,
        "--max_queue",
        type=int,
        default=DEFAULT_MAX_QUEUE,
        help="images admitted per model at once; beyond it requests get 503 (default: %(default)s)",
    )
    flag(
        p,
        "--timeout_s",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help="answer 504 when a request is not done in this time (default: %(default)s)",
    )
    flag(
        p,
        "--max_body_mb",
        type=float,
        default=DEFAULT_MAX_BODY_MB,
        help="largest request body, decompressed; beyond it 413 (default: %(default)s)",
    )
    flag(
        p,
        "--top_k",
        type=int,
        default=DEFAULT_TOP_K,
        help="labels per image when ?top_k= is not given (default: %(default)s)",
    )
    flag(p, "--decode_workers", type=int, default=None, help="image decoding threads (default: one per core, up to 8)")
    flag(
        p,
        "--runtime",
        default="auto",
        choices=["auto", "torch", "cuda", "onnxruntime", "openvino", "tensorrt"],
        help="where the models run; auto picks the fastest accurate one here (default: %(default)s)",
    )
    flag(
        p,
        "--precision",
        default="auto",
        choices=["auto", "fp32", "fp16", "bf16"],
        help="numeric precision (default: the runtime's best accurate one)",
    )
    p.set_defaults(handler=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    from ..serve.server import is_loopback, load_models, run_server
    from ..serve.settings import ServeSettings

    api_key = args.api_key if args.api_key is not None else (os.environ.get("HEADSTART_API_KEY") or None)
    settings = ServeSettings(
        max_batch_size=args.max_batch_size,
        max_batch_delay_ms=args.max_batch_delay_ms,
        max_queue=args.max_queue,
        timeout_s=args.timeout_s,
        max_body_mb=args.max_body_mb,
        api_key=api_key,
        top_k=args.top_k,
        decode_workers=args.decode_workers,
    ).check()
    if not 0 <= args.port <= 65535:
        from ..errors import UsageError

        raise UsageError(f"--port must be between 0 and 65535, got {args.port}", hint="e.g. --port 8000")
    if not is_loopback(args.host) and not api_key:
        print(
            f"warning: listening on {args.host} without --api_key: anyone who can reach this machine "
            "can use the models",
            file=sys.stderr,
        )
    models = load_models(args.model, runtime=args.runtime, precision=args.precision)
    try:

        def on_listen(url: str) -> None:
            names = ", ".join(models)
            print(
                f"Serving {names} at {url}  (page {url}/, API docs {url}/docs, metrics {url}/metrics); "
                "Ctrl-C or SIGTERM stops",
                file=sys.stderr,
                flush=True,
            )

        run_server(models, settings, host=args.host, port=args.port, on_listen=on_listen)
    finally:
        for clf in models.values():
            clf.close()
    print("stopped", file=sys.stderr)
    return 0
