"""Small JPEG thumbnails, made once per image and kept on disk.

A page showing thousands of images loads only these (a few KB each), never the
originals.  The cache key is the file's name, size and modification time,
which a move between classes keeps, so moving an image never re-renders it.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("headstart")

THUMB_SIZE = 160  # pixels on the long side: sharp at 80 CSS px on a 2x screen
THUMB_QUALITY = 80


@dataclass(frozen=True)
class Probe:
    format: str | None
    width: int = 0
    height: int = 0
    error: str | None = None


def probe_image(data: bytes, max_pixels: int) -> Probe:
    """What Pillow makes of some bytes: the format and size after a full decode, or why not."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt, (w, h) = img.format, img.size
            if w * h > max_pixels:
                return Probe(fmt, w, h, f"{w}x{h} pixels is more than the {max_pixels:,} allowed")
            img.draft("RGB", (THUMB_SIZE, THUMB_SIZE))  # JPEG: decode at 1/8 scale, enough to prove it decodes
            img.load()
    except UnidentifiedImageError:
        return Probe(None, error="not an image (Pillow cannot identify it); use JPEG, PNG, WebP, BMP, GIF or TIFF")
    except Image.DecompressionBombError as exc:
        return Probe(None, error=f"too many pixels ({exc})")
    except (OSError, SyntaxError, ValueError) as exc:
        return Probe(None, error=f"corrupt or truncated image ({str(exc).splitlines()[0] if str(exc) else exc})")
    return Probe(fmt, w, h)


def thumb_key(path: Path) -> str:
    st = path.stat()
    return hashlib.sha1(f"{path.name}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:24]


def render_thumbnail(path: Path) -> bytes:
    """A JPEG of at most THUMB_SIZE pixels a side; a grey tile for a file that does not decode."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as img:
            img.draft("RGB", (THUMB_SIZE * 2, THUMB_SIZE * 2))
            img = ImageOps.exif_transpose(img)  # type: ignore[assignment]
            if img.mode not in ("RGB", "L"):
                img = img.convert("RGBA")  # type: ignore[assignment]
                background = Image.new("RGB", img.size, (255, 255, 255))
                background.paste(img, mask=img.getchannel("A"))
                img = background  # type: ignore[assignment]
            img.thumbnail((THUMB_SIZE, THUMB_SIZE), Image.Resampling.LANCZOS)
            out = io.BytesIO()
            img.convert("RGB").save(out, "JPEG", quality=THUMB_QUALITY, optimize=True)
            return out.getvalue()
    except Exception as exc:  # any undecodable file gets the same grey tile
        log.debug("no thumbnail for %s: %s", path, exc)
        out = io.BytesIO()
        Image.new("RGB", (THUMB_SIZE, THUMB_SIZE), (200, 200, 200)).save(out, "JPEG", quality=60)
        return out.getvalue()


def cached_thumbnail(path: Path, cache_dir: Path) -> bytes:
    """The thumbnail of ``path``, from ``cache_dir`` when made before (written atomically)."""
    key = thumb_key(path)
    where = cache_dir / key[:2] / f"{key}.jpg"
    try:
        return where.read_bytes()
    except FileNotFoundError:
        pass
    data = render_thumbnail(path)
    where.parent.mkdir(parents=True, exist_ok=True)
    tmp = where.with_name(f".{key}.{secrets.token_hex(4)}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, where)
    except OSError as exc:  # a full or read-only disk costs the cache, not the answer
        log.debug("cannot cache thumbnail %s: %s", where, exc)
        tmp.unlink(missing_ok=True)
    return data
