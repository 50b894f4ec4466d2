"""The measurements behind :func:`headstart.doctor`: numpy and Pillow only, no torch.

* :func:`scan_images` decodes every image once, small (JPEG draft mode, then a
  thumbnail), for cheap pixel statistics (brightness, contrast, sharpness, size)
  and the grey thumbnail :mod:`headstart.pixel_match` lines near-duplicates up on.
* :func:`similarity_search` finds every image's nearest neighbours and every pair
  above a cosine threshold with blocked matrix products over unit vectors: one
  block of rows against all vectors at a time, so memory grows with the number
  of images, never with its square.  Large folders search in a projection on
  their main directions (128 of 1280) first and re-check the candidates at full dimension.
* :func:`out_of_sample_probabilities` is K-fold cross-validation of the
  softmax head on the bottlenecks.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("headstart")

STATS_PX = 128  # longest side of the thumbnail the pixel statistics are measured on
_BLOCK_FLOATS = 1 << 24  # similarity block: 16 M float32 = 64 MB, whatever the folder's size
PCA_ABOVE = 20_000  # images; above this the neighbour search runs in a PCA projection first
PCA_DIM = 128  # on 3,000 Fashion-MNIST bottlenecks: every pair above 0.9 kept, 98.7 % of the 20 neighbours
PCA_MARGIN = 0.01  # cosine a projected candidate may lose and still be re-checked exactly (docs/DOCTOR.md)
_MAX_PIXELS = 100_000_000  # as headstart.data: larger files are not decoded


# --------------------------------------------------------------------------- pixels


@dataclass(frozen=True)
class ImageStats:
    """What one image looks like, measured on a thumbnail (``None`` fields when unreadable)."""

    width: int
    height: int
    mean: float  # grey level, 0-255
    std: float
    p01: float  # 1st and 99th percentile grey level
    p99: float
    sharpness: float  # variance of the Laplacian over the mean squared gradient: falls as edges widen
    error: str | None = None


def _grey_thumbnail(path: Path) -> tuple[int, int, np.ndarray]:
    from PIL import Image

    with Image.open(path) as opened:
        width, height = opened.size
        if width * height > _MAX_PIXELS:
            raise ValueError(f"{width}x{height} pixels is over the limit of {_MAX_PIXELS}")
        opened.draft("L", (STATS_PX, STATS_PX))  # JPEG: libjpeg decodes at 1/2 .. 1/8 scale, far cheaper
        img: Image.Image = opened
        if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
            wide = np.asarray(img, dtype=np.float64)
            top = 65535.0 if wide.max(initial=0) > 255 else 255.0
            img = Image.fromarray(np.clip(wide * 255.0 / top, 0, 255).astype(np.uint8))
        elif img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
            rgba = img.convert("RGBA")
            img = Image.new("RGB", rgba.size, (255, 255, 255))
            img.paste(rgba, mask=rgba.getchannel("A"))  # transparency over white, as the decoder does
        img = img.convert("L")
        img.thumbnail((STATS_PX, STATS_PX))
        return width, height, np.asarray(img, dtype=np.float32)


def _decode(path: Path) -> tuple[int, int, np.ndarray] | str:
    """(width, height, grey thumbnail) of one file, or why it cannot be read; never raises."""
    try:
        return _grey_thumbnail(path)
    except Exception as exc:
        return " ".join(str(exc).split()) or type(exc).__name__


def _stats_of(stack: np.ndarray) -> tuple[np.ndarray, ...]:
    """Grey mean, spread, 1st/99th percentiles and sharpness of every thumbnail in ``[m, h, w]``, at once."""
    m = len(stack)
    flat = stack.reshape(m, -1)
    p01, p99 = np.percentile(flat, [1, 99], axis=1)
    if min(stack.shape[1:]) < 3:
        return flat.mean(axis=1), flat.std(axis=1), p01, p99, np.full(m, math.nan)
    g = stack
    # Second over first derivatives: a blurred edge is wide, so its curvature is small for its slope.
    # Unlike the Laplacian over the grey-level variance, a smooth photo with crisp edges still scores high.
    lap = 4 * g[:, 1:-1, 1:-1] - g[:, :-2, 1:-1] - g[:, 2:, 1:-1] - g[:, 1:-1, :-2] - g[:, 1:-1, 2:]
    gx, gy = np.diff(g, axis=2)[:, 1:-1, :-1], np.diff(g, axis=1)[:, :-1, 1:-1]
    slope = (gx * gx + gy * gy).mean(axis=(1, 2))
    var = lap.reshape(m, -1).var(axis=1)
    sharpness = np.where(slope > 1e-6, var / np.maximum(slope, 1e-6), 0.0)
    return flat.mean(axis=1), flat.std(axis=1), p01, p99, sharpness


def scan_images(paths: Sequence[Path], workers: int = 4) -> tuple[list[ImageStats], list[np.ndarray]]:
    """Pixel statistics and the thumbnail :mod:`headstart.pixel_match` compares, of each image.

    Pillow decodes and shrinks with the GIL released, so a few threads overlap;
    the statistics are computed for all thumbnails of one shape at once (per
    image, numpy's call overhead would cost more than the arithmetic).  An
    unreadable file gets ``error`` set and an empty thumbnail; it never raises.
    """
    from PIL import Image

    from .pixel_match import match_thumbnail, shape_batches

    Image.init()  # register the format plugins before the threads race to
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        decoded = list(pool.map(_decode, paths, chunksize=64))
    stats: list[ImageStats | None] = [None] * len(decoded)
    sizes: dict[int, tuple[int, int]] = {}
    greys = [np.zeros((0, 0), np.float32)] * len(decoded)
    for n, d in enumerate(decoded):
        if isinstance(d, str):
            stats[n] = ImageStats(0, 0, 0.0, 0.0, 0.0, 0.0, 0.0, error=d)
        else:
            sizes[n], greys[n] = (d[0], d[1]), d[2]
    thumbs = [match_thumbnail(g) if g.size else np.zeros((0, 0), np.uint8) for g in greys]
    for idx in shape_batches(greys):
        values = _stats_of(np.stack([greys[n] for n in idx]))
        for k, n in enumerate(idx.tolist()):
            mean, std, p01, p99, sharp = (float(v[k]) for v in values)
            stats[n] = ImageStats(*sizes[n], mean, std, p01, p99, sharp)
    return [s for s in stats if s is not None], thumbs


# --------------------------------------------------------------------------- similarity


@dataclass(frozen=True)
class Neighbours:
    """Each image's ``k`` nearest others (cosine, best first) and every pair at or above ``threshold``."""

    index: np.ndarray  # int64 [n, k]
    similarity: np.ndarray  # float32 [n, k]
    pairs: np.ndarray  # int64 [m, 2], i < j
    pair_similarity: np.ndarray  # float32 [m]
    threshold: float
    projected: bool  # searched in a PCA projection first


def unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def row_dots(a: np.ndarray, b: np.ndarray, i: np.ndarray, j: np.ndarray, chunk: int = 16384) -> np.ndarray:
    """``a[i[n]] . b[j[n]]`` for every n, gathered a chunk at a time (never ``len(i)`` full rows at once)."""
    out = np.empty(len(i), dtype=np.float32)
    for s in range(0, len(i), chunk):
        out[s : s + chunk] = np.einsum("nd,nd->n", a[i[s : s + chunk]], b[j[s : s + chunk]])
    return out


def _project(unit: np.ndarray, dim: int, seed: int) -> np.ndarray:
    """Unit vectors in the ``dim`` directions that hold most of their energy (fitted on a sample), renormalised.

    Not centred: bottlenecks share a large mean direction, and it is part of the cosine being approximated.
    An eigen-decomposition of the [D, D] second moments, not an SVD of the sample: seconds, not a minute.
    """
    rng = np.random.default_rng(seed)
    sample = unit[rng.choice(len(unit), size=min(len(unit), 10_000), replace=False)].astype(np.float64)
    _, vectors = np.linalg.eigh(sample.T @ sample)
    basis = vectors[:, ::-1][:, :dim].astype(np.float32)  # eigh sorts ascending
    return unit_rows(unit @ basis)


def _torch_topk() -> Any:
    try:
        import torch
    except ImportError:  # numpy's argpartition does the same, slower
        return None

    def topk(sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        values, index = torch.topk(torch.from_numpy(sims), k, dim=1, sorted=False)
        return values.numpy(), index.numpy()

    return topk


def similarity_search(
    vectors: np.ndarray, *, k: int, threshold: float, project_above: int = PCA_ABOVE, seed: int = 0
) -> Neighbours:
    """Nearest neighbours and above-threshold pairs, in row blocks (memory linear in the number of images).

    Above ``project_above`` images the search runs on a projection onto the
    ``PCA_DIM`` main directions (a tenth of the arithmetic); candidate pairs
    found there, with ``PCA_MARGIN`` of slack, and 8 extra neighbours per image
    are re-scored with the exact cosine, and the neighbours re-ranked.
    """
    unit = unit_rows(vectors)
    n = len(unit)
    k = max(0, min(k, n - 1))
    projected = n > project_above and unit.shape[1] > PCA_DIM
    search = _project(unit, PCA_DIM, seed) if projected else unit
    cut = threshold - PCA_MARGIN if projected else threshold
    width = min(k + (8 if projected else 0), n - 1)  # extra approximate neighbours, re-ranked exactly below
    block = max(1, min(n, _BLOCK_FLOATS // max(n, 1)))
    nn = np.zeros((n, width), dtype=np.int64)
    nn_sim = np.zeros((n, width), dtype=np.float32)
    found: list[tuple[np.ndarray, np.ndarray]] = []
    topk = _torch_topk() if n > project_above else None  # ten times numpy's argpartition; worth its import when large
    for start in range(0, n, block):
        stop = min(n, start + block)
        sims = search[start:stop] @ search.T
        rows = np.arange(stop - start)
        sims[rows, rows + start] = -np.inf  # not its own neighbour
        if width and topk is not None:
            values, top = topk(sims, width)
            nn[start:stop], nn_sim[start:stop] = top, values
        elif width:
            top = np.argpartition(-sims, width - 1, axis=1)[:, :width]
            nn[start:stop] = top
            nn_sim[start:stop] = np.take_along_axis(sims, top, axis=1)
        # Pairs above the cut: from the neighbour lists, and from the whole row only where a list is full of
        # them (it may have left some out).  Scanning every row would cost more than the product itself.
        li, lk = np.nonzero(nn_sim[start:stop] >= cut)
        found.append((li + start, nn[start:stop][li, lk]))
        crowded = np.flatnonzero(nn_sim[start:stop].min(axis=1, initial=np.inf) >= cut)
        if width >= n - 1:  # every other image is in the list already
            crowded = crowded[:0]
        if len(crowded):
            bi, bj = np.nonzero(sims[crowded] >= cut)
            found.append((crowded[bi] + start, bj))
    none = [np.zeros(0, np.int64)]
    a = np.concatenate([f[0] for f in found] or none).astype(np.int64)
    b = np.concatenate([f[1] for f in found] or none).astype(np.int64)
    key = np.unique(np.minimum(a, b) * max(n, 1) + np.maximum(a, b))  # each pair once, i < j
    pi, pj = key // max(n, 1), key % max(n, 1)
    ps = row_dots(unit, unit, pi, pj)  # the exact cosine, whether or not the search ran on a projection
    if projected:  # re-rank the neighbours the projection found by the exact cosine
        nn_sim = row_dots(unit, unit, np.repeat(np.arange(n), width), nn.ravel()).reshape(n, width)
    ok = ps >= threshold
    order = np.argsort(-nn_sim, axis=1, kind="stable")[:, :k]
    return Neighbours(
        np.take_along_axis(nn, order, axis=1),
        np.take_along_axis(nn_sim, order, axis=1),
        np.stack([pi[ok], pj[ok]], axis=1),
        ps[ok],
        float(threshold),
        projected,
    )


def group_pairs(n: int, pairs: np.ndarray) -> list[list[int]]:
    """Connected groups (union-find) of the images joined by ``pairs``, each sorted, largest first."""
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in pairs.tolist():
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = {}
    for i in {int(x) for x in pairs.ravel().tolist()}:
        groups.setdefault(find(i), []).append(i)
    return sorted((sorted(g) for g in groups.values()), key=lambda g: (-len(g), g[0]))


# --------------------------------------------------------------------------- labels


def stratified_folds(y: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Fold number of every row: each class dealt round-robin over the folds after a seeded shuffle."""
    rng = np.random.default_rng(seed)
    out = np.zeros(len(y), dtype=np.int64)
    offset = 0
    for label in np.unique(y):
        rows = np.flatnonzero(y == label)
        rng.shuffle(rows)
        out[rows] = (np.arange(len(rows)) + offset) % folds
        offset += len(rows)  # small classes do not all start in fold 0
    return out


def out_of_sample_probabilities(
    x: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    *,
    folds: int,
    seed: int,
    head_params: dict[str, Any],
    exclude: np.ndarray | None = None,
) -> np.ndarray:
    """``[n, n_classes]`` probabilities, each row from a head that never saw that row.

    ``exclude`` (bool per row) keeps rows out of every fold's *training* set while
    they still get probabilities: confident learning's second round trains
    without the first round's suspects, so they cannot pull the head their way.
    """
    from .head import SoftmaxHead

    fold = stratified_folds(y, folds, seed)
    proba = np.zeros((len(y), n_classes), dtype=np.float64)
    for f in range(folds):
        test = fold == f
        train = ~test if exclude is None else ~test & ~exclude
        if not test.any():
            continue
        head = SoftmaxHead(n_classes=n_classes, seed=seed + f, **head_params)
        head.fit(x[train], y[train])
        proba[test] = head.predict_proba(x[test])
    return proba
