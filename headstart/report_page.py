"""The self-contained HTML page every headstart report is built from, and its parts.

A report must open anywhere, years later, offline and from an e-mail
attachment: so every plot is a PNG and every thumbnail a JPEG/PNG embedded as a
``data:`` URI, the style sheet is inline, and there are no scripts, web fonts
or links to fetch.  This module holds that page and the parts it is made of
(escaping, number formats, cards, tables, figures, thumbnails); the run report
(:mod:`headstart.report`) and the lab pages (:mod:`headstart.lab_report`) fill
it, so it depends on neither.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import math
import re
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

log = logging.getLogger("headstart")

THUMBNAIL_PX = 128

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:2em auto;
max-width:1100px;padding:0 1em;color:#1b1b1b;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.25em;border-bottom:1px solid #ddd;padding-bottom:.2em;
margin-top:1.8em}
.sub{color:#555;margin-top:0}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th{background:#f4f4f4}td.l,th.l{text-align:left}
tr.bad td{background:#fdecea}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(9.5em,1fr));gap:.8em}
.card{border:1px solid #ddd;border-radius:6px;padding:.5em .9em;min-width:0}
.card b{display:block;font-size:1.45em;white-space:nowrap}
.card span,.card small{color:#555;font-size:.85em}
figure{margin:1em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{color:#555;font-size:.9em}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:.6em}
.shot{font-size:.8em;border:1px solid #ddd;border-radius:4px;padding:4px;min-width:0}
.shot img,.missing{width:100%;aspect-ratio:1;object-fit:contain;background:#f7f7f7;display:block}
.shot img{image-rendering:pixelated}
.missing{background:#eee;color:#888;display:flex;align-items:center;justify-content:center}
.name span{display:block;overflow:hidden;text-overflow:ellipsis;white-space:nowrap;color:#555}
.warn{color:#a00;font-weight:bold}
.note{color:#8a5300}
code{white-space:nowrap;font-size:.95em}
pre{background:#f7f7f7;padding:.6em;overflow-x:auto;font-size:.85em}
"""


# ---------------------------------------------------------------- small helpers


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _pct(value: float | None) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}%"


def _num(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.3e}"
    return str(value)


def _page(title: str, subtitle: str, sections: Sequence[str]) -> str:
    stamp = datetime.now().astimezone().isoformat(timespec="seconds")
    from . import __version__

    return (
        "<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width,initial-scale=1'>"
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{_e(title)}</h1><p class='sub'>{subtitle}</p>"
        + "".join(sections)
        + f"<hr><p class='sub'>Written by headstart {_e(__version__)} on {_e(stamp)}. "
        "Self-contained: opens offline.</p></body></html>\n"
    )


def _flags(text: str) -> str:
    """Escaped text with each ``--flag`` kept on one line (browsers break after a hyphen)."""
    return re.sub(r"(--[A-Za-z0-9_]+)", r"<code>\1</code>", _e(text))


def _seconds(value: Any, places: int) -> str:
    return "–" if not isinstance(value, (int, float)) else f"{value:.{places}f}"


def _section(title: str, body: str) -> str:
    return f"<section><h2>{_e(title)}</h2>{body}</section>"


def _cards(items: Sequence[tuple[str, ...]]) -> str:
    """Summary cards: a label, a big value and, optionally, a small note under it (such as N)."""
    cards = []
    for label, value, *note in items:
        small = f"<small>{_e(note[0])}</small>" if note and note[0] else ""
        cards.append(f"<div class='card'><span>{_e(label)}</span><b>{_e(value)}</b>{small}</div>")
    return "<div class='cards'>" + "".join(cards) + "</div>"


def _table(
    headers: Sequence[str], rows: Sequence[Sequence[Any]], left: int = 1, bad: Sequence[bool] | None = None
) -> str:
    head = "".join(f"<th class='l'>{_e(h)}</th>" if i < left else f"<th>{_e(h)}</th>" for i, h in enumerate(headers))
    body = []
    for n, row in enumerate(rows):
        cls = " class='bad'" if bad is not None and bad[n] else ""
        cells = "".join(
            f"<td class='l'>{_e(_num(v))}</td>" if i < left else f"<td>{_e(_num(v))}</td>" for i, v in enumerate(row)
        )
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _figure(png: bytes | None, caption: str, alt: str) -> str:
    if not png:
        return f"<p class='sub'>({_e(alt)}: nothing to plot)</p>"
    return (
        f"<figure><img alt='{_e(alt)}' src='{data_uri(png, 'image/png')}'>"
        f"<figcaption>{_e(caption)}</figcaption></figure>"
    )


def data_uri(data: bytes, mime: str) -> str:
    """Embed bytes in the page, so the report needs no other file."""
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def thumbnail(path: Path, size: int = THUMBNAIL_PX) -> str | None:
    """A data URI of a small copy of the image at ``path``, or None if it cannot be read."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as opened:
            img = ImageOps.exif_transpose(opened)
            img.thumbnail((size, size))
            rgb = img.convert("RGB") if img.mode not in ("RGB", "L") else img
            buf = io.BytesIO()
            small = max(rgb.size) <= 64  # tiny images (Fashion-MNIST) stay sharp as PNG
            rgb.save(buf, "PNG" if small else "JPEG", **({} if small else {"quality": 85}))
    except Exception as exc:  # moved, deleted or damaged files: show a placeholder
        log.debug("no thumbnail for %s: %s", path, exc)
        return None
    return data_uri(buf.getvalue(), "image/png" if small else "image/jpeg")


__all__ = ["data_uri", "thumbnail"]
