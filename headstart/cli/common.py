"""Shared pieces of the command line: flag spelling, output formats, tables."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import UsageError


class HeadstartArgumentParser(argparse.ArgumentParser):
    """argparse with one-line usage errors (exit 2) and a hint."""

    def error(self, message: str) -> None:  # type: ignore[override]
        # No usage dump: it runs to 25 lines for retrain and buries the one that matters.
        print(f"error: {message}", file=sys.stderr)
        print(f"hint: run '{self.prog} --help' for the flags and an example", file=sys.stderr)
        raise SystemExit(2)


def flag(parser: argparse.ArgumentParser | Any, name: str, *aliases: str, **kwargs: Any) -> argparse.Action:
    """Add ``--some_flag`` with its ``--some-flag`` spelling too (retrain.py used underscores)."""
    names = [name, *aliases]
    for spelled in list(names):
        if spelled.startswith("--") and "_" in spelled:
            dashed = spelled.replace("_", "-")
            if dashed not in names:
                names.append(dashed)
    kwargs.setdefault("dest", name.lstrip("-").replace("-", "_"))
    return parser.add_argument(*names, **kwargs)


def add_command(
    sub: Any, name: str, help: str, example: str, description: str | None = None
) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        name,
        help=help,
        description=description or help,
        epilog="example:\n" + "\n".join("  " + line for line in example.strip().splitlines()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and results")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more detail (debug logs)")
    return parser


def add_format(parser: argparse.ArgumentParser, choices: Sequence[str] = ("table", "json")) -> None:
    flag(parser, "--format", choices=list(choices), default=choices[0], help="output format (default: %(default)s)")


def comma_list(kind: type, name: str) -> Callable[[str], list[Any]]:
    """argparse type for comma-separated lists such as ``--learning_rate 0.001,0.01``."""

    def parse(text: str) -> list[Any]:
        try:
            values = [kind(part) for part in text.split(",") if part.strip()]
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{name}: {exc}") from exc
        if not values:
            raise argparse.ArgumentTypeError(f"{name}: give at least one value")
        return values

    return parse


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> str:
    """A plain-text table; ``align`` has one 'l' or 'r' per column (numbers right by default)."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    if align is None:
        align = "".join("r" if rows and isinstance(rows[0][i], (int, float)) else "l" for i in range(len(headers)))

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if a == "r" else v.ljust(w) for v, w, a in zip(values, widths, align)).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in cells)])


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def require(condition: bool, message: str, hint: str | None = None) -> None:
    if not condition:
        raise UsageError(message, hint=hint)


def require_path(path: Any, flag: str, kind: str = "file or folder") -> None:
    """A path the user typed must exist: a usage error (exit 2), before any work starts.

    ``kind`` is "file", "folder" or "file or folder"; ``None`` (flag not given) passes.
    """
    if path is None:
        return
    where = Path(path).expanduser()
    if not where.exists():
        broken = " (a broken symbolic link)" if where.is_symlink() else ""
        raise UsageError(f"{flag}: no such {kind}: {where}{broken}", hint="check the path")
    if kind == "folder" and not where.is_dir():
        raise UsageError(f"{flag}: {where} is not a folder", hint="pass a folder")
    if kind == "file" and where.is_dir():
        raise UsageError(f"{flag}: {where} is a folder, not a file", hint="pass a file")


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 image``, ``2 images``."""
    return f"{n} {word if n == 1 else many or word + 's'}"
