"""The CPU decoder's geometry as torch operations, on any device.

:func:`headstart.data.load_image` turns a file into the network's input in four
steps: libjpeg's DCT scaling (PIL's draft mode: 1/2, 1/4 or 1/8 while both sides
stay >= the resize target), the EXIF orientation, a resize of the shorter side
and a centre crop (:func:`headstart.data.resize_center_crop`).  This module
does the same to full-size decoded pixels held in a tensor, so that images
decoded on a GPU (nvJPEG, :mod:`headstart.gpu_decode`) are resized there, and
so that tests can hold each step against the CPU decoder on CPU tensors:

* **DCT scaling** by 1/k is emulated by a k x k block mean: the scaled IDCT's
  1/8 output *is* the DC coefficient, the block mean; 1/2 and 1/4 keep a few
  more frequencies, so the emulation is close there, not exact.
* **Enlarging** (and nearest neighbour, and the crop-only resample of
  extreme aspect ratios) follows Pillow: its filter coefficients, quantised to
  its 22-bit fixed point, horizontal pass first and rounded to 8 bits between
  the passes.  In float64 (CPU tensors) this is Pillow bit for bit.
* **Shrinking** follows :mod:`headstart.data.resize`: cubic (or linear) to
  twice the target size, then a 2x2 mean; beyond a 2x reduction OpenCV's area
  average, as a matrix of exact overlaps.  OpenCV's fixed-point cubic differs
  from torch's float cubic by a fraction of a grey level.

Everything is separable, so each resample is two small matrix products (or one
``interpolate``) per group of same-sized images: a few kernel launches per
group, not per image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from headstart.data import Preprocessing

if TYPE_CHECKING:  # pragma: no cover
    import torch

# headstart.data.decode resamples only the crop beyond this long/short ratio (its _MAX_ASPECT).
MAX_ASPECT = 16
_PILLOW_SUPPORT = {"bicubic": 2.0, "bilinear": 1.0}
_PILLOW_PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed point for 8-bit images (Resample.c)
_TORCH_MODE = {"bicubic": "bicubic", "bilinear": "bilinear"}  # what OpenCV supersamples with


@dataclass(frozen=True)
class Geometry:
    """What happens to one stored image on its way to the network input.

    ``source`` is the stored (decoded, not yet rotated) size as (width, height);
    ``draft`` the DCT scaling the CPU decoder would use; ``upright`` the size
    after it and after the EXIF ``orientation``; ``resized`` the size the
    shorter side is resized to, ``crop`` the (left, top) of the centre crop.
    ``method`` is ``crop`` (no resample), ``pillow``, ``pillow_box`` (only the
    crop box resampled), ``area`` or ``supersample``.
    """

    source: tuple[int, int]
    draft: int
    orientation: int
    upright: tuple[int, int]
    resized: tuple[int, int]
    crop: tuple[int, int]
    method: str
    box: tuple[float, float, float, float] | None
    size: int
    interpolation: str


def draft_factor(width: int, height: int, target: int) -> int:
    """PIL's JPEG draft rule: the largest of 8, 4, 2 that the smaller ratio of
    each side to ``target`` reaches, else 1."""
    scale = min(width // target, height // target)
    return next((s for s in (8, 4, 2) if scale >= s), 1)


def plan_geometry(
    width: int, height: int, prep: Preprocessing, *, orientation: int = 1, jpeg: bool = False
) -> Geometry:
    """The steps :func:`headstart.data.load_image` takes for a stored image of
    ``width`` x ``height`` (``jpeg``: one libjpeg may decode at a reduced scale)."""
    draft = draft_factor(width, height, prep.resize_size) if jpeg else 1
    w, h = -(-width // draft), -(-height // draft)
    if orientation in (5, 6, 7, 8):
        w, h = h, w
    size, scale = prep.input_size, prep.resize_size
    new_w, new_h = (scale, int(scale * h / w)) if w <= h else (int(scale * w / h), scale)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    box = None
    if new_w * new_h > MAX_ASPECT * scale * scale:
        sx, sy = w / new_w, h / new_h
        method, box = "pillow_box", (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
    elif (new_w, new_h) == (w, h):
        method = "crop"
    elif prep.interpolation not in _TORCH_MODE or new_w >= w or new_h >= h:
        method = "pillow"
    elif w >= 2 * new_w and h >= 2 * new_h:
        method = "area"
    else:
        method = "supersample"
    return Geometry(
        (width, height), draft, orientation, (w, h), (new_w, new_h), (left, top), method, box, size, prep.interpolation
    )


# ----------------------------------------------------------------------------- resampling matrices


def _pillow_filter(x: np.ndarray, interpolation: str) -> np.ndarray:
    x = np.abs(x)
    if interpolation == "bilinear":
        return np.where(x < 1.0, 1.0 - x, 0.0)
    a = -0.5  # Pillow's bicubic (timm's eval transform), not OpenCV's -0.75
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


@lru_cache(maxsize=512)
def _pillow_matrix(in_size: int, in0: float, in1: float, out_size: int, interpolation: str) -> np.ndarray:
    """Pillow's ``precompute_coeffs`` + ``normalize_coeffs_8bpc`` as an [out, in] matrix."""
    scale = (in1 - in0) / out_size
    filterscale = max(scale, 1.0)
    support = _PILLOW_SUPPORT[interpolation] * filterscale
    one = float(1 << _PILLOW_PRECISION_BITS)
    matrix = np.zeros((out_size, in_size), dtype=np.float64)
    for xx in range(out_size):
        center = in0 + (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)  # int(): C's truncation toward zero
        xmax = min(int(center + support + 0.5), in_size)
        if xmax <= xmin:
            continue
        weights = _pillow_filter((np.arange(xmin, xmax) - center + 0.5) / filterscale, interpolation)
        total = weights.sum()
        if total != 0.0:
            weights = weights / total
        fixed = np.where(weights < 0, np.trunc(-0.5 + weights * one), np.trunc(0.5 + weights * one))
        matrix[xx, xmin:xmax] = fixed / one
    return matrix


@lru_cache(maxsize=256)
def _area_matrix(in_size: int, out_size: int) -> np.ndarray:
    """OpenCV's INTER_AREA weights (``computeResizeAreaTab``): exact overlaps of
    each output cell with the input pixels, over the cell's width."""
    scale = in_size / out_size
    matrix = np.zeros((out_size, in_size), dtype=np.float64)
    for dx in range(out_size):
        f1 = dx * scale
        f2 = f1 + scale
        cell = min(scale, in_size - f1)
        first, last = int(math.floor(f1)), min(int(math.ceil(f2)), in_size)
        for sx in range(first, last):
            overlap = min(sx + 1.0, f2) - max(float(sx), f1)
            if overlap > 1e-3:  # OpenCV drops slivers under a thousandth of a pixel
                matrix[dx, sx] = overlap / cell
    return matrix


_DEVICE_MATRICES: dict[tuple, "torch.Tensor"] = {}


def _on(matrix: np.ndarray, key: tuple, like: "torch.Tensor") -> "torch.Tensor":
    import torch

    full = (*key, str(like.device), like.dtype)
    found = _DEVICE_MATRICES.get(full)
    if found is None:
        if len(_DEVICE_MATRICES) > 2048:  # many sizes seen: start over rather than grow without bound
            _DEVICE_MATRICES.clear()
        found = _DEVICE_MATRICES[full] = torch.from_numpy(matrix).to(device=like.device, dtype=like.dtype)
    return found


def _round_half_up(x: "torch.Tensor") -> "torch.Tensor":
    return (x + 0.5).floor_().clamp_(0.0, 255.0)


def _pillow(
    x: "torch.Tensor", size: tuple[int, int], box: tuple[float, float, float, float] | None, interpolation: str
) -> "torch.Tensor":
    """Pillow's ``Image.resize(size, filter, box)`` on [k, 3, H, W] float pixels."""
    in_h, in_w = x.shape[-2:]
    out_w, out_h = size
    box = box if box is not None else (0.0, 0.0, float(in_w), float(in_h))
    if interpolation == "nearest":
        return _nearest(x, size, box)
    if (out_w, box[0], box[2]) != (in_w, 0.0, in_w):
        key = ("pillow", in_w, box[0], box[2], out_w, interpolation)
        x = _round_half_up(x @ _on(_pillow_matrix(in_w, box[0], box[2], out_w, interpolation), key, x).T)
    if (out_h, box[1], box[3]) != (in_h, 0.0, in_h):
        key = ("pillow", in_h, box[1], box[3], out_h, interpolation)
        x = _round_half_up(_on(_pillow_matrix(in_h, box[1], box[3], out_h, interpolation), key, x) @ x)
    return x


def _nearest(x: "torch.Tensor", size: tuple[int, int], box: tuple[float, float, float, float]) -> "torch.Tensor":
    """Pillow's nearest neighbour (``ImagingScaleAffine``): the source position
    starts at box0 + scale / 2 and is advanced by adding the scale, in float64,
    as Pillow does (a product instead would round differently at some pixels)."""
    import torch

    def positions(start: float, stop: float, count: int, limit: int) -> "torch.Tensor":
        step = (stop - start) / count
        steps = np.full(count, step)
        steps[0] = start + step * 0.5
        return torch.from_numpy(np.clip(np.floor(np.cumsum(steps)), 0, limit - 1).astype(np.int64)).to(x.device)

    in_h, in_w = x.shape[-2:]
    out_w, out_h = size
    cols = positions(box[0], box[2], out_w, in_w)
    return x.index_select(-1, cols).index_select(-2, positions(box[1], box[3], out_h, in_h))


def _area(x: "torch.Tensor", size: tuple[int, int]) -> "torch.Tensor":
    """OpenCV's INTER_AREA for reductions of 2x or more."""
    import torch

    in_h, in_w = x.shape[-2:]
    out_w, out_h = size
    if (in_w, in_h) == (2 * out_w, 2 * out_h):  # OpenCV's 2x2 fast path rounds half up
        return _round_half_up(torch.nn.functional.avg_pool2d(x, 2))
    y = _on(_area_matrix(in_h, out_h), ("area", in_h, out_h), x) @ x
    y = y @ _on(_area_matrix(in_w, out_w), ("area", in_w, out_w), x).T
    return y.round_().clamp_(0.0, 255.0)  # elsewhere cvRound: half to even


def _supersample(x: "torch.Tensor", size: tuple[int, int], interpolation: str) -> "torch.Tensor":
    """:func:`headstart.data.resize` below 2x: the kernel to twice the size, then a 2x2 mean."""
    import torch

    out_w, out_h = size
    doubled = torch.nn.functional.interpolate(
        x, size=(2 * out_h, 2 * out_w), mode=_TORCH_MODE[interpolation], align_corners=False
    )
    return _round_half_up(torch.nn.functional.avg_pool2d(_round_half_up(doubled), 2))


def emulate_draft(x: "torch.Tensor", factor: int) -> "torch.Tensor":
    """libjpeg's 1/``factor`` DCT scaling as a block mean of the full-size pixels
    (edge blocks padded by repeating the last row and column, as JPEG encoders pad)."""
    import torch

    if factor == 1:
        return x
    h, w = x.shape[-2:]
    pad_h, pad_w = (-h) % factor, (-w) % factor
    if pad_h or pad_w:
        x = torch.nn.functional.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
    return _round_half_up(torch.nn.functional.avg_pool2d(x, factor))


def orient(x: "torch.Tensor", orientation: int) -> "torch.Tensor":
    """The EXIF orientation on [..., rows, columns] (as ``headstart.data``'s ``_UPRIGHT``)."""
    import torch

    if orientation == 2:
        return x.flip(-1)
    if orientation == 3:
        return x.flip(-2, -1)
    if orientation == 4:
        return x.flip(-2)
    if orientation == 5:
        return x.transpose(-2, -1)
    if orientation == 6:
        return torch.rot90(x, -1, dims=(-2, -1))
    if orientation == 7:
        return x.flip(-2, -1).transpose(-2, -1)
    if orientation == 8:
        return torch.rot90(x, 1, dims=(-2, -1))
    return x


def apply_geometry(images: "torch.Tensor", geometry: Geometry, *, exact: bool | None = None) -> "torch.Tensor":
    """uint8 [k, 3, H, W] stored pixels (all of ``geometry.source``) -> uint8
    [k, 3, size, size], on the tensor's device.

    ``exact`` computes in float64 (bit for bit Pillow where Pillow resamples);
    the default is float64 on the CPU and float32 elsewhere (GPUs are slow at
    float64, and a float32 sum is off by far less than a rounding step).
    """
    import torch

    g = geometry
    if tuple(images.shape[-2:]) != (g.source[1], g.source[0]):
        raise ValueError(f"images are {tuple(images.shape[-2:])[::-1]} (w, h), the plan is for {g.source}")
    if g.method == "crop" and g.draft == 1:
        x = orient(images, g.orientation)
    else:
        exact = images.device.type == "cpu" if exact is None else exact
        x = images.to(torch.float64 if exact else torch.float32)
        x = orient(emulate_draft(x, g.draft), g.orientation)
        if g.method == "pillow_box":
            return _pillow(x, (g.size, g.size), g.box, g.interpolation).to(torch.uint8)
        if g.method == "pillow":
            x = _pillow(x, g.resized, None, g.interpolation)
        elif g.method == "area":
            x = _area(x, g.resized)
        elif g.method == "supersample":
            x = _supersample(x, g.resized, g.interpolation)
    left, top = g.crop
    return x[..., top : top + g.size, left : left + g.size].to(torch.uint8)
