"""Reading files for the GPU decoder, and choosing which decoder gets each one.

Reader threads (:mod:`headstart.gpu_decode`) read each file of a batch into one
page-locked buffer, then look at its first bytes: a JPEG that nvJPEG decodes
the way the CPU decoder would stays as bytes for the GPU; a plain 8-bit grey
or RGB PNG is decoded here at full size and resized on the device; anything
else is decoded by :func:`headstart.data.load_image` right here, or skipped
with its reason.  Nothing here imports torch at module level.
"""

from __future__ import annotations

import io
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from headstart.data import DEFAULT_MAX_PIXELS, Preprocessing

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_SOF_GPU = frozenset({0xC0, 0xC1, 0xC2})  # baseline, extended sequential, progressive Huffman
_SOF_ALL = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_EOI_TAIL = 4096  # a JPEG whose end marker is not within this many bytes of its end goes to the CPU
LANE_MAX_PIXELS = 16_000_000  # PNGs decoded by the readers and resized on the device, up to this size


@dataclass(frozen=True)
class JpegHeader:
    """What the markers before the first scan say.  ``orientation`` is ``None``
    when it cannot be read the way Pillow reads it (several EXIF blocks, XMP
    only, malformed EXIF): such files go to the CPU decoder."""

    width: int
    height: int
    components: int
    precision: int
    sof: int
    adobe: bool
    orientation: int | None
    complete: bool


def _exif_orientation(tiff: bytes) -> int | None:
    """Tag 0x0112 of IFD0 (0 when absent), ``None`` for anything unusual."""
    order: Literal["little", "big"] | None = {b"II": "little", b"MM": "big"}.get(tiff[:2])  # type: ignore[assignment]
    if order is None or len(tiff) < 8 or int.from_bytes(tiff[2:4], order) != 42:
        return None
    ifd = int.from_bytes(tiff[4:8], order)
    if ifd + 2 > len(tiff):
        return None
    for i in range(int.from_bytes(tiff[ifd : ifd + 2], order)):
        entry = tiff[ifd + 2 + 12 * i : ifd + 14 + 12 * i]
        if len(entry) < 12:
            return None
        if int.from_bytes(entry[0:2], order) == 0x0112:
            kind, count = int.from_bytes(entry[2:4], order), int.from_bytes(entry[4:8], order)
            return int.from_bytes(entry[8:10], order) if (kind, count) == (3, 1) else None
    return 0


def read_jpeg_header(data: bytes | memoryview | np.ndarray) -> JpegHeader | None:
    """Parse a JPEG's markers up to its frame header; ``None`` if it is not a
    JPEG or its markers are broken (the CPU decoder then decides)."""
    mv = memoryview(data).cast("B") if not isinstance(data, memoryview) else data  # type: ignore[arg-type]  # ndarray
    n = len(mv)
    if n < 4 or mv[0] != 0xFF or mv[1] != 0xD8:
        return None
    i, exif, xmp, adobe = 2, [], False, False
    while i + 4 <= n:
        if mv[i] != 0xFF:
            return None
        marker = mv[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:
            i += 2
            continue
        length = (mv[i + 2] << 8) | mv[i + 3]
        if length < 2 or i + 2 + length > n:
            return None
        body = mv[i + 4 : i + 2 + length]
        if marker == 0xE1 and bytes(body[:6]) == b"Exif\0\0":
            exif.append(bytes(body[6:]))
        elif marker == 0xE1 and bytes(body[:29]) == b"http://ns.adobe.com/xap/1.0/\x00":
            xmp = True
        elif marker == 0xEE and bytes(body[:5]) == b"Adobe":
            adobe = True
        elif marker in _SOF_ALL:
            if length < 8:
                return None
            # Pillow joins several EXIF blocks and, without an EXIF orientation, reads XMP's: leave those to it.
            found = None if len(exif) > 1 else _exif_orientation(exif[0]) if exif else 0
            orientation = None if found is None or (found == 0 and xmp) else found or 1
            tail = bytes(mv[max(0, n - _EOI_TAIL) :])
            return JpegHeader(
                width=(body[3] << 8) | body[4],
                height=(body[1] << 8) | body[2],
                components=body[5],
                precision=body[0],
                sof=marker,
                adobe=adobe,
                orientation=orientation,
                complete=b"\xff\xd9" in tail,
            )
        elif marker == 0xDA:  # a scan before any frame header
            return None
        i += 2 + length
    return None


def nvjpeg_can_decode(header: JpegHeader, max_pixels: int = DEFAULT_MAX_PIXELS) -> bool:
    """Whether a JPEG goes to nvJPEG (else: the CPU decoder, which knows what to do with it)."""
    return (
        header.sof in _SOF_GPU
        and header.precision == 8
        and header.components == 3
        and not header.adobe
        and header.orientation is not None
        and header.complete
        and 0 < header.width * header.height <= max_pixels
    )


# ----------------------------------------------------------------------------- reading


class Arena:
    """One page-locked buffer the files of a batch are read into (pinning is slow,
    so it is reused; it grows when a batch did not fit)."""

    def __init__(self, pin: bool) -> None:
        self.pin = pin
        self.lock = threading.Lock()
        self.tensor: Any = None
        self.array: np.ndarray = np.empty(0, dtype=np.uint8)
        self.used = 0
        self.missed = 0

    def reset(self) -> None:
        import torch

        if self.tensor is None or self.missed:
            size = max(1 << 22, int((self.used + self.missed) * 1.25))
            self.tensor = torch.empty(size, dtype=torch.uint8, pin_memory=self.pin)
            self.array = self.tensor.numpy()
        self.used = self.missed = 0

    def take(self, size: int) -> tuple[Any, np.ndarray] | None:
        with self.lock:
            start = self.used
            if start + size > len(self.array):
                self.missed += size
                return None
            self.used = (start + size + 63) & ~63
        return self.tensor[start : start + size], self.array[start : start + size]


class Item:
    """One file of a batch on its way: ``route`` is ``nvjpeg`` (``payload``, a
    uint8 CPU tensor of the file, ``area`` its pixel count), ``pixels``
    (full-size RGB in ``pixels`` for the device's geometry), ``done`` (the CPU
    decoder's final image in ``pixels``) or ``skip`` (``reason``)."""

    __slots__ = ("area", "name", "orientation", "payload", "pixels", "position", "reason", "route")

    def __init__(self, position: int, route: str, name: str) -> None:
        self.position, self.route, self.name = position, route, name
        self.payload: Any = None
        self.area = 0
        self.pixels: np.ndarray | None = None
        self.orientation = 1
        self.reason = ""


def cpu_decode(item: Item, source: Path | bytes, prep: Preprocessing, max_pixels: int) -> Item:
    """The CPU decoder's answer for ``item``: its final image, or why it is skipped."""
    from headstart.data import load_image
    from headstart.errors import ImageError

    try:
        item.pixels, item.route = load_image(source, prep, max_pixels=max_pixels, name=item.name), "done"
    except ImageError as exc:
        item.route, item.reason = "skip", getattr(exc, "reason", None) or str(exc)
    except OSError as exc:
        item.route, item.reason = "skip", f"cannot read file ({exc.strerror or exc})"
    return item


def _png_pixels(payload: np.ndarray, max_pixels: int) -> tuple[np.ndarray, int] | None:
    """A plain 8-bit grey or RGB PNG, decoded at full size with its EXIF
    orientation, exactly as the CPU decoder decodes it; ``None`` for any other."""
    from PIL import Image

    if len(payload) < 33 or payload[:8].tobytes() != _PNG_MAGIC or payload[12:16].tobytes() != b"IHDR":
        return None
    w, h = int.from_bytes(payload[16:20].tobytes(), "big"), int.from_bytes(payload[20:24].tobytes(), "big")
    if not 0 < w * h <= min(max_pixels, LANE_MAX_PIXELS):
        return None
    try:
        with Image.open(io.BytesIO(payload.tobytes()), formats=("PNG",)) as img:
            if img.mode not in ("L", "RGB") or "transparency" in img.info:
                return None
            img.load()
            try:
                orientation = img.getexif().get(0x0112, 1)
            except Exception:  # unreadable EXIF counts as upright, as on the CPU
                orientation = 1
            rgb = img.convert("RGB") if img.mode == "L" else img
            return np.asarray(rgb, dtype=np.uint8), orientation if isinstance(orientation, int) else 1
    except Exception:  # anything odd: the CPU decoder decides and says why
        return None


def _read_file(path: Path, arena: Arena | None) -> tuple[Any, np.ndarray] | None:
    """The whole file, in ``arena`` when it fits: (uint8 tensor or None, the same bytes as numpy);
    ``None`` when it cannot be read whole (the CPU decoder then says why)."""
    with open(path, "rb", buffering=0) as handle:
        size = os.fstat(handle.fileno()).st_size
        slot = arena.take(size) if arena is not None and size > 0 else None
        tensor, array = slot if slot is not None else (None, np.frombuffer(bytearray(size), dtype=np.uint8))
        view, got = memoryview(array), 0  # type: ignore[arg-type]  # numpy stubs: ndarray is a buffer
        while got < size:
            count = handle.readinto(view[got:])
            if not count:
                return None  # shorter than it was a moment ago
            got += count
    return tensor, array


def read_item(path: Path, position: int, prep: Preprocessing, max_pixels: int, arena: Arena | None) -> Item:
    """Read one file and route it (see the module's docstring); never raises for a bad file."""
    item = Item(position, "nvjpeg", str(path))
    try:
        read = _read_file(path, arena)
    except OSError:
        read = None
    if read is None or len(read[1]) == 0:
        return cpu_decode(item, Path(path), prep, max_pixels)  # it says why, in the CPU path's words
    tensor, array = read
    header = read_jpeg_header(array)
    if header is not None and nvjpeg_can_decode(header, max_pixels):
        if tensor is None:
            import torch

            tensor = torch.from_numpy(array)
        item.payload, item.area, item.orientation = tensor, header.width * header.height, header.orientation or 1
        return item
    if header is None:
        lane = _png_pixels(array, max_pixels)
        if lane is not None:
            item.route, (item.pixels, item.orientation) = "pixels", lane
            return item
    return cpu_decode(item, array.tobytes(), prep, max_pixels)
