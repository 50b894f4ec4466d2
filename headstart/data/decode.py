"""Decode one image file for a network: the contract (:class:`Preprocessing`) and :func:`load_image`.

:func:`load_image` decodes with timm's evaluation geometry (resize the shorter
side, centre crop; see :mod:`headstart.data.resize` for how the resampling
stays fast), tolerating the photos people actually have: EXIF-rotated,
transparent, 16-bit, CMYK, animated, truncated, or not images at all.  JPEGs
take libjpeg-turbo's reduced-size decoding (simplejpeg), everything else Pillow.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from headstart.checks import is_int, is_real
from headstart.data.resize import PIL_RESAMPLE, resize
from headstart.errors import ImageError

if TYPE_CHECKING:
    from headstart.data.distort import Distortion

DEFAULT_MAX_PIXELS = 100_000_000

# Bump whenever load_image() can return different pixels for the same file and
# Preprocessing (new draft rule, alpha handling ...): it is part of
# Preprocessing.fingerprint(), so cached bottlenecks are recomputed.
DECODER_VERSION = "2"  # 2: downscaling by 2x supersampling (headstart.data.resize)

# Formats whose extensions we accept.  Naming them stops PIL from trying every
# plugin it has (EPS would even run Ghostscript) on a file that only claims to
# be a photo.  PIL's JPEG opener also returns MPO (many camera JPEGs).
_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "DIB", "TIFF")
_JPEG_FORMATS = frozenset({"JPEG", "MPO"})
_UPRIGHT = {  # EXIF orientation -> what shows the [row, column, channel] array upright (as ImageOps.exif_transpose)
    2: lambda a: a[:, ::-1],  # flip left-right
    3: lambda a: a[::-1, ::-1],  # rotate 180
    4: lambda a: a[::-1],  # flip top-bottom
    5: lambda a: a.transpose(1, 0, 2),  # transpose
    6: lambda a: np.rot90(a, -1),  # rotate 90 clockwise
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),  # transverse
    8: lambda a: np.rot90(a, 1),  # rotate 90 counter-clockwise
}
_EXIF_ORIENTATION = 0x0112
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_16BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})  # "I": older Pillow's 16-bit PNG
_MAX_ASPECT = 16  # beyond this long/short ratio, resample only the crop (see resize_center_crop)
_HINT_BAD_IMAGE = "open it in an image viewer; re-save it as JPEG or PNG, or delete it"


# --------------------------------------------------------------------------- preprocessing


@dataclass(frozen=True)
class Preprocessing:
    """How an image file becomes the network input.

    It travels with cached bottlenecks and saved models so inference decodes
    exactly as training did.  Geometry follows timm: resize the shorter side to
    ``floor(input_size / crop_pct)``, then centre-crop ``input_size``.
    ``mean``/``std`` are not applied here (they belong in the exported graph)
    but are part of the contract, hence of the fingerprint.
    """

    input_size: int
    crop_pct: float
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __post_init__(self) -> None:
        if not is_int(self.input_size) or self.input_size < 1:
            raise ValueError(f"Preprocessing.input_size must be a positive int, got {self.input_size!r}")
        object.__setattr__(self, "input_size", int(self.input_size))  # a numpy int would not go into JSON
        if not is_real(self.crop_pct) or not 0 < self.crop_pct <= 1:
            raise ValueError(f"Preprocessing.crop_pct must be a number in (0, 1], got {self.crop_pct!r}")
        if not isinstance(self.interpolation, str) or self.interpolation not in PIL_RESAMPLE:
            raise ValueError(
                f"Preprocessing.interpolation must be one of {', '.join(PIL_RESAMPLE)}, got {self.interpolation!r}"
            )
        object.__setattr__(self, "crop_pct", float(self.crop_pct))
        for field in ("mean", "std"):
            value = getattr(self, field)
            if not isinstance(value, (tuple, list)) or len(value) != 3 or not all(map(is_real, value)):
                raise ValueError(f"Preprocessing.{field} must be three numbers, got {value!r}")
            object.__setattr__(self, field, tuple(float(v) for v in value))
        if min(self.std) <= 0:
            raise ValueError(f"Preprocessing.std must be positive, got {self.std!r}")

    @property
    def resize_size(self) -> int:
        """The shorter side before the centre crop (timm's ``scale_size``)."""
        return math.floor(self.input_size / self.crop_pct)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (tuples become lists)."""
        return {
            "input_size": self.input_size,
            "crop_pct": self.crop_pct,
            "interpolation": self.interpolation,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Preprocessing:
        """Inverse of :meth:`to_dict`; unknown or missing fields are refused,
        since preprocessing we do not fully understand would silently give
        wrong predictions."""
        if not isinstance(d, Mapping):
            raise ValueError(f"Preprocessing must be a mapping, got {type(d).__name__}")
        names = ("input_size", "crop_pct", "interpolation", "mean", "std")
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise ValueError(f"Preprocessing has unknown field {unknown[0]!r}")
        missing = [n for n in names if n not in d]
        if missing:
            raise ValueError(f"Preprocessing is missing field {missing[0]!r}")
        return cls(**{n: d[n] for n in names})

    def fingerprint(self) -> str:
        """Short stable id of these settings plus the decoder version; part of
        every bottleneck cache key."""
        payload = {"decoder_version": DECODER_VERSION, **self.to_dict()}
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


# --------------------------------------------------------------------------- decode


class _Unusable(Exception):
    """Internal: why an image cannot be used (reason, hint)."""


_OPEN_LOCK = threading.Lock()


def _open_unchecked(fp: io.BytesIO) -> Image.Image:
    """``Image.open`` with PIL's own bomb check off: it would warn or raise at
    its own fixed limit, while we compare against ``max_pixels`` ourselves
    before decoding.  ``MAX_IMAGE_PIXELS`` is a module global, so it is only
    lifted under a lock, for the header read, which is cheap."""
    with _OPEN_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            return Image.open(fp, formats=_FORMATS)
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _open(source: Path | bytes) -> tuple[Image.Image, bytes]:
    """Open lazily (header only), and the file's bytes.  A path is read into
    memory first so no file I/O happens under the open lock, and a file is read
    exactly once."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        payload = source
    else:
        try:
            payload = Path(source).read_bytes()
        except FileNotFoundError:
            raise _Unusable("file not found", "check the path; was the file moved or deleted?") from None
        except PermissionError:
            raise _Unusable("permission denied", "make the file readable (chmod +r) or remove it") from None
        except IsADirectoryError:
            raise _Unusable("is a folder, not an image", "pass an image file") from None
        except OSError as err:
            raise _Unusable(f"unreadable ({err.strerror or err})", "check the disk or network share") from None
    if len(payload) == 0:
        raise _Unusable("empty file (0 bytes)", _HINT_BAD_IMAGE)
    try:
        return _open_unchecked(io.BytesIO(payload)), bytes(payload)
    except UnidentifiedImageError:
        raise _Unusable("not an image (unrecognised format)", _HINT_BAD_IMAGE) from None


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB the way a person would see it: transparency
    over white, 16-bit scaled (not clipped) to 8 bits, CMYK/palette/grey
    converted."""
    if img.mode == "RGB" and "transparency" not in img.info:
        return img
    if img.mode in _16BIT_MODES:
        # PIL's own I;16 -> L clips at 255, turning most 16-bit photos white.
        wide = np.clip(np.asarray(img), 0, 65535).astype(np.uint32)
        return Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8)).convert("RGB")
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGB", rgba.size, (255, 255, 255))
        white.paste(rgba, mask=rgba.getchannel("A"))
        return white
    return img.convert("RGB")


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation tag (1 = upright).  Unreadable EXIF counts as
    upright, not as a broken image."""
    try:
        orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # corrupt EXIF: PIL raises assorted errors
        return 1
    return orientation if isinstance(orientation, int) else 1


def _upright(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Apply the EXIF orientation (what every photo viewer does) so the
    network sees the photo upright."""
    turn = _UPRIGHT.get(orientation)
    return pixels if turn is None else np.ascontiguousarray(turn(pixels))


@lru_cache(maxsize=1)
def _simplejpeg() -> Any:
    import simplejpeg

    return simplejpeg


def _decode_jpeg(payload: bytes, size: tuple[int, int]) -> np.ndarray | None:
    """libjpeg-turbo straight into a numpy array of ``size`` (width, height): the
    size PIL's draft mode chose, so the same pixels as PIL's decoder (the same
    library, the same settings) without PIL's copy into numpy.  ``None`` when
    libjpeg reports anything at all: PIL then decodes the file and decides."""
    try:
        # The largest reduction that keeps both sides >= ``size`` is the draft's 1/2, 1/4 or 1/8.
        return _simplejpeg().decode_jpeg(payload, "RGB", strict=True, min_width=size[0], min_height=size[1])
    except ValueError:
        return None


def resize_center_crop(pixels: np.ndarray, prep: Preprocessing) -> np.ndarray:
    """timm's eval geometry: torchvision ``Resize(shorter side)`` then
    ``CenterCrop``.

    For extreme aspect ratios (a 1x10000 strip would need a 256x2560000
    intermediate) only the cropped box is resampled: nearly the same pixels,
    without the gigabytes.
    """
    size, scale = prep.input_size, prep.resize_size
    h, w = pixels.shape[:2]
    if w <= h:
        new_w, new_h = scale, int(scale * h / w)
    else:
        new_w, new_h = int(scale * w / h), scale
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    if new_w * new_h > _MAX_ASPECT * scale * scale:
        sx, sy = w / new_w, h / new_h
        box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
        crop = Image.fromarray(pixels).resize((size, size), PIL_RESAMPLE[prep.interpolation], box=box)
        return np.array(crop, dtype=np.uint8)
    resized = resize(pixels, (new_w, new_h), prep.interpolation)
    # Crop in numpy: Image.crop() would apply PIL's global bomb check to the result.
    return np.array(resized[top : top + size, left : left + size])


def _decode(
    source: Path | bytes, prep: Preprocessing, max_pixels: int, distortion: Distortion | None = None, seed: str = ""
) -> np.ndarray:
    img, payload = _open(source)
    with img:
        fmt = img.format or "image"
        w, h = img.size
        if w * h > max_pixels:
            raise _Unusable(
                f"{w * h} pixels is over the limit of {max_pixels} ({w}x{h}; a decompression bomb?)",
                "if the image is genuine, shrink it or raise max_pixels",
            )
        try:
            pixels = None
            if fmt in _JPEG_FORMATS:
                # Let libjpeg decode at 1/2, 1/4 or 1/8 scale while both sides
                # stay >= the resize target: several times faster on photos.
                target = prep.resize_size
                if distortion is not None and distortion.active:
                    target = int(target * (1 + distortion.random_crop / 100) * (1 + distortion.random_scale / 100))
                drafted = img.draft("RGB", (target, target))
                if drafted is not None and img.mode == "RGB":  # CMYK and grey JPEGs: PIL converts
                    pixels = _decode_jpeg(payload, img.size)
            if pixels is None:
                img.load()
                pixels = np.asarray(_to_rgb(img), dtype=np.uint8)
            pixels = _upright(pixels, _orientation(img))
            if distortion is not None and distortion.active:
                out = distortion.apply(pixels, prep, seed)
            else:
                out = resize_center_crop(pixels, prep)
        except MemoryError:
            raise
        except Image.DecompressionBombError as err:
            raise _Unusable(f"over PIL's size limit ({_one_line(err)})", "shrink the image") from err
        except Exception as err:  # PIL signals corrupt data with many exception types
            text = _one_line(err)
            if "truncated" in text.lower() or "broken data stream" in text.lower():
                # PIL's own words ("image file is truncated (48 bytes not processed)") repeat "truncated"
                # and count bytes of its buffer, not of the file: say what it means, once.
                hint = "re-download or re-export the image, or delete it"
                raise _Unusable(f"truncated {fmt}: the file ends before the image does", hint) from err
            raise _Unusable(f"corrupt or unsupported {fmt} ({text})", _HINT_BAD_IMAGE) from err
    return out


def load_image(
    source: Path | bytes,
    prep: Preprocessing,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    name: str | None = None,
    distortion: Distortion | None = None,
    seed: str = "",
) -> np.ndarray:
    """Decode one image to a ``uint8`` RGB array ``[input_size, input_size, 3]``.

    ``source`` is a path or the file's bytes (a caller that hashed the bytes
    need not read the file twice).  The size is checked against
    ``max_pixels`` before anything is decoded.  Any failure is an
    :class:`ImageError` whose message is ``"<name or path>: <reason>"``; the
    bare reason is also in its ``reason`` attribute, ready for a
    :class:`SkippedImage`.  Safe to call from many threads.  With an active
    ``distortion``, the image is distorted as drawn for ``seed`` (the image's
    content hash) instead of centre-cropped.
    """
    where = name if name is not None else (str(source) if isinstance(source, (str, os.PathLike)) else "<image bytes>")
    try:
        return _decode(source, prep, max_pixels, distortion, seed)
    except _Unusable as err:
        reason, hint = err.args
    except MemoryError:
        raise
    except Exception as err:  # a malformed header: PIL raises many types
        reason, hint = f"corrupt or unsupported image ({_one_line(err)})", _HINT_BAD_IMAGE
    error = ImageError(f"{where}: {reason}", hint=hint)
    error.reason = reason  # type: ignore[attr-defined]
    raise error


__all__ = ["DECODER_VERSION", "DEFAULT_MAX_PIXELS", "Preprocessing", "load_image", "resize_center_crop"]
