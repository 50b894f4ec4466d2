"""The ``headstart`` command: the only place that prints and picks exit codes.

Each sub-command lives in a module of this package with a ``register``
function; this module maps known exceptions to one line plus a hint
(exit 2 for usage errors, 1 otherwise) and shows tracebacks only with
``HEADSTART_DEBUG=1``.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from typing import Any

from .. import __version__
from ..errors import HeadstartError, UsageError
from .common import HeadstartArgumentParser

# Failures of the machine rather than of headstart (a full disk while converting a
# model, a read-only folder): one line and what to do, wherever they surface.
_DISK_HINTS = {
    errno.ENOSPC: "free disk space, or pass --bottleneck_dir / --output_dir on a disk with room",
    errno.EDQUOT: "free space within your disk quota, or pass --bottleneck_dir / --output_dir elsewhere",
    errno.EROFS: "that file system is read-only: pass --bottleneck_dir / --output_dir on a writable one",
    errno.EACCES: "fix that path's permissions, or pass --bottleneck_dir / --output_dir you can write to",
    errno.EPERM: "fix that path's permissions, or pass --bottleneck_dir / --output_dir you can write to",
}

# Sub-command modules, in the order they appear in --help.
COMMAND_MODULES = ("core", "predict", "data", "doctor", "lab", "deploy", "bench", "serve", "studio")

log = logging.getLogger("headstart")


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.levelno >= logging.WARNING:
            return f"{record.levelname.lower()}: {message}"
        return message


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a line is logged, not when the handler was made: a server
    thread that logs after a caller swapped the stream (a test's capture, a redirect) never writes to a
    closed one."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def configure_logging(verbosity: int) -> None:
    handler = _StderrHandler()
    handler.setFormatter(_Formatter())
    root = logging.getLogger("headstart")
    root.handlers[:] = [handler]
    root.propagate = False
    root.setLevel(logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO)
    # Python warnings come from libraries (matplotlib, torch, onnx) about their own internals: a user
    # can do nothing with them, so they are shown only with -v, like headstart's debug lines.
    logging.captureWarnings(True)
    py_warnings = logging.getLogger("py.warnings")
    py_warnings.handlers[:] = [handler] if verbosity > 0 else [logging.NullHandler()]
    py_warnings.propagate = False
    # Libraries that log through the root logger (onnxruntime's quantiser: "WARNING:root:Please consider
    # pre-processing ...") would otherwise call basicConfig and print to the terminal.
    if not logging.root.handlers:
        logging.root.addHandler(logging.NullHandler())


def build_parser() -> argparse.ArgumentParser:
    parser = HeadstartArgumentParser(
        prog="headstart",
        description="Retrain an image classifier on your own photos by transfer learning: cached bottlenecks, "
        "a new last layer in seconds, honest evaluation, fast deployment.",
        epilog="example:\n  headstart datasets fashion-mnist --out demo --per_class 300\n"
        "  headstart retrain --image_dir demo --output_dir runs/demo\n"
        "  headstart label --model runs/demo demo/Sandal\n\n"
        "Run 'headstart COMMAND --help' for a command's flags and an example.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"headstart {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(f".{name}", __name__).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    debug = os.environ.get("HEADSTART_DEBUG", "") not in ("", "0")
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(-1 if getattr(args, "quiet", False) else getattr(args, "verbose", 0))
    try:
        if getattr(args, "image_size", None) is not None:  # --image_size goes into a TF Hub backbone's name
            from ..tfhub import apply_image_size

            args.backbone = apply_image_size(args.backbone, args.image_size)
        return int(args.handler(args) or 0)
    except HeadstartError as exc:
        if debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        print(f"hint: {exc.hint or _default_hint(exc, args)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted: completed batches are kept in the cache; run the same command to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except OSError as exc:
        if exc.errno not in _DISK_HINTS:
            return _unexpected(exc, debug)
        if debug:
            traceback.print_exc()
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
        print(f"hint: {_DISK_HINTS[exc.errno]}", file=sys.stderr)
        return 1
    except Exception as exc:
        return _unexpected(exc, debug)


def _default_hint(exc: HeadstartError, args: argparse.Namespace) -> str:
    """Every error gets a hint, even one raised without."""
    if isinstance(exc, UsageError):
        return f"run 'headstart {getattr(args, 'command', '') or ''} --help' for the flags and an example"
    return "run again with -v for more detail"


def _unexpected(exc: Exception, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    print(f"error: unexpected {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", file=sys.stderr)
    print("hint: run again with HEADSTART_DEBUG=1 for the traceback, and report it", file=sys.stderr)
    return 1
