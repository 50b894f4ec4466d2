"""Does one image reproduce another pixel for pixel, once a crop or a resize is undone?  Numpy and Pillow only.

A bottleneck cosine cannot tell a resized or lightly cropped copy of a small
image from a look-alike: on 28-pixel Fashion-MNIST a 5 % crop moves the
bottleneck as far as the gap between two plain trousers.  Pixels can: a copy
lines up with its original once the crop and scale are undone, and two
look-alikes never do.  So every candidate pair (an image and its nearest
bottleneck neighbours) is compared on small grey thumbnails (long side at most
``MATCH_PX``), at the lower resolution of the two and lightly blurred so that
resampling and JPEG noise do not count, in both directions ("this one is a
crop of that one"):

* at scale 1, the smaller thumbnail slid over every whole-pixel offset of the
  larger: an integer crop without a resize matches exactly;
* for each crop fraction in ``CROPS``, the region of that size resampled to the
  other's size, over every whole-pixel offset: resizes (fraction 1) and
  crops that were resized afterwards.

The score is the best normalized cross-correlation.  Pairs are grouped by the
shapes they compare at, and each group is a batch of matrix products (every
offset window of an image against all the images it is compared with).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence

import numpy as np

MATCH_PX = 32  # long side of the thumbnails compared (a 28-pixel image is compared at its own size)
MATCH_BLUR = 0.8  # Gaussian sigma in compared pixels: resampling and JPEG noise fall below it
CROPS = (1.0, 0.97, 0.94, 0.91)  # fractions of the larger image a copy may show, resized or not
_MIN_AREA = 0.7  # a native crop must keep this share of the larger image
_ROWS = 256  # images per batched product
DESCRIPTOR_PX = 8  # side of the pixel descriptors searched for candidates (a JPEG copy is its image's nearest)


def match_thumbnail(grey: np.ndarray) -> np.ndarray:
    """``uint8 [h, w]`` grey thumbnail of ``grey`` with its long side at most ``MATCH_PX`` (area-averaged)."""
    from PIL import Image

    img = Image.fromarray(np.asarray(grey).astype(np.uint8))
    if max(img.size) > MATCH_PX:
        img = img.copy()
        img.thumbnail((MATCH_PX, MATCH_PX), Image.Resampling.BOX)
    return np.asarray(img, dtype=np.uint8)


@functools.lru_cache(maxsize=256)
def _resample(n_in: int, n_out: int) -> np.ndarray:
    """``[n_out, n_in]``: Pillow's bicubic resize along one axis, then the Gaussian blur, as one matrix.

    Resizing is separable and linear, so the matrix is the resize of the identity; applied to a stack of
    thumbnails it resamples and blurs all of them in two batched products instead of one call each."""
    from PIL import Image

    eye = Image.fromarray(np.eye(n_in, dtype=np.float32))
    resize = np.asarray(eye.resize((n_in, n_out), Image.Resampling.BICUBIC), np.float64) if n_in != n_out else None
    d = np.arange(n_out)[:, None] - np.arange(n_out)[None, :]
    blur = np.exp(-0.5 * (d / MATCH_BLUR) ** 2)
    blur /= blur.sum(axis=1, keepdims=True)  # renormalised at the borders: no dark frame
    return (blur if resize is None else blur @ resize).astype(np.float32)


def _prepared(thumbs: Sequence[np.ndarray], idx: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``[len(idx), *size]`` float32: the thumbnails ``idx`` (all of one shape) resized to ``size`` and blurred."""
    stack = np.stack([thumbs[int(n)] for n in idx]).astype(np.float32)
    rows, cols = _resample(stack.shape[1], size[0]), _resample(stack.shape[2], size[1])
    return np.matmul(np.matmul(rows, stack), cols.T)


def _unit(v: np.ndarray) -> np.ndarray:
    v = v - v.mean(axis=-1, keepdims=True)
    norm = np.linalg.norm(v, axis=-1, keepdims=True)
    return np.where(norm > 1e-3, v / np.maximum(norm, 1e-3), 0.0).astype(np.float32)  # flat matches nothing


def _transforms(src: tuple[int, int], tmpl: tuple[int, int]) -> dict[tuple[tuple[int, int], tuple[int, int]], bool]:
    """(source size, template size) to compare at, for "the template shows part of the source", each with
    whether only a crop fraction under 1 asks for it (the costly part of the search)."""
    (hs, ws), (ht, wt) = src, tmpl
    out: dict[tuple[tuple[int, int], tuple[int, int]], bool] = {}
    if ht <= hs and wt <= ws and ht * wt >= _MIN_AREA * hs * ws:
        out[(src, tmpl)] = False  # an integer crop, no resize
    for c in CROPS:
        if ht * wt <= c * c * hs * ws:  # the template is the smaller: bring the source's region to its scale
            key = ((max(ht, round(ht / c)), max(wt, round(wt / c))), tmpl)
        else:
            key = (src, (max(1, min(hs, round(c * hs))), max(1, min(ws, round(c * ws)))))
        out[key] = out.get(key, True) and c < 1
    return out


def _window_norms(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``[n, positions]``: the root of the centred sum of squares of every ``size`` window of each image,
    from integral images (the windows themselves are never normalised)."""
    h, w = size
    n = len(a)

    def box(v: np.ndarray) -> np.ndarray:
        c = np.zeros((n, v.shape[1] + 1, v.shape[2] + 1), np.float64)
        c[:, 1:, 1:] = v.cumsum(axis=1).cumsum(axis=2)
        return c[:, h:, w:] - c[:, :-h, w:] - c[:, h:, :-w] + c[:, :-h, :-w]

    total, squares = box(a), box(a.astype(np.float64) ** 2)
    var = squares - total * total / (h * w)
    return np.sqrt(np.maximum(var, 0.0)).reshape(n, -1)


def descriptors(thumbs: Sequence[np.ndarray]) -> np.ndarray:
    """``[n, DESCRIPTOR_PX**2]`` unit vectors of the thumbnails shrunk to ``DESCRIPTOR_PX`` square (a flat one
    is zero): nearest neighbours in this space are the pixel comparison's other candidates, the copies a
    re-encode moved far in bottleneck space (a JPEG of a 28-pixel image: cosine as low as 0.57)."""
    out = np.zeros((len(thumbs), DESCRIPTOR_PX * DESCRIPTOR_PX), np.float32)
    for idx in shape_batches(thumbs):
        out[idx] = _unit(_prepared(thumbs, idx, (DESCRIPTOR_PX, DESCRIPTOR_PX)).reshape(len(idx), -1))
    return out


def shape_batches(arrays: Sequence[np.ndarray], size: int = 4096) -> Iterator[np.ndarray]:
    """Indices of the non-empty ``arrays`` in batches of at most ``size`` that share one shape: each batch
    stacks into one array for batched arithmetic, in bounded memory whatever the folder."""
    shapes: dict[tuple[int, ...], list[int]] = {}
    for n, a in enumerate(arrays):
        if a.size:
            shapes.setdefault(a.shape, []).append(n)
    for rows in shapes.values():
        for k in range(0, len(rows), size):
            yield np.asarray(rows[k : k + size], np.int64)


def match_scores(
    thumbs: Sequence[np.ndarray], i: np.ndarray, j: np.ndarray, search: np.ndarray | None = None, *, plain: bool = True
) -> np.ndarray:
    """Best aligned correlation of each pair ``(i[n], j[n])`` of ``thumbs`` (from :func:`match_thumbnail`),
    over both directions and every offset; 0 for a flat image.  Resizes and integer crops are tried unless
    ``plain`` is false (pairs already scored without the search); the crop fractions under 1 in ``CROPS``
    only where ``search`` (bool per pair, default all)."""
    i, j = np.asarray(i, np.int64), np.asarray(j, np.int64)
    wide = np.ones(len(i), bool) if search is None else np.asarray(search, bool)
    best = np.full(len(i), -1.0, np.float32)
    readable = np.array([t.size > 0 for t in thumbs], bool)
    if len(i):  # a file the thumbnail decoder could not read matches nothing
        keep = readable[i] & readable[j]
        i, j, wide, pairs = i[keep], j[keep], wide[keep], np.flatnonzero(keep)
    if not len(i):
        return best
    shapes, shape_id = np.unique(
        np.array([t.shape for t in thumbs], np.int64).reshape(-1, 2), axis=0, return_inverse=True
    )
    shape_id = shape_id.ravel()
    # directed comparisons: (source, template, pair number), both ways round, grouped by their two shapes
    src = np.concatenate([i, j])
    tmpl = np.concatenate([j, i])
    pair = np.concatenate([pairs, pairs])
    wide = np.concatenate([wide, wide])
    group_of = shape_id[src] * len(shapes) + shape_id[tmpl]
    order = np.argsort(group_of, kind="stable")
    keys, starts = np.unique(group_of[order], return_index=True)
    for key, rows in zip(keys.tolist(), np.split(order, starts[1:])):
        s_shape = (int(shapes[key // len(shapes)][0]), int(shapes[key // len(shapes)][1]))
        t_shape = (int(shapes[key % len(shapes)][0]), int(shapes[key % len(shapes)][1]))
        for (s_size, t_size), costly in _transforms(s_shape, t_shape).items():
            if not (costly or plain):
                continue
            take = rows[wide[rows]] if costly else rows
            if len(take):
                _score_group(thumbs, src[take], tmpl[take], pair[take], s_size, t_size, best)
    return best


def _score_group(
    thumbs: Sequence[np.ndarray],
    src: np.ndarray,
    tmpl: np.ndarray,
    pair: np.ndarray,
    s_size: tuple[int, int],
    t_size: tuple[int, int],
    best: np.ndarray,
) -> None:
    """Raise ``best[pair]`` to each template's best correlation over the windows of its source
    (all sources of one shape, all templates of another)."""
    templates, t_row = np.unique(tmpl, return_inverse=True)
    t_unit = _unit(_prepared(thumbs, templates, t_size).reshape(len(templates), -1))
    if s_size == t_size:  # one position: a plain correlation per pair, no windows
        sources, s_row = np.unique(src, return_inverse=True)
        s_unit = _unit(_prepared(thumbs, sources, s_size).reshape(len(sources), -1))
        for k in range(0, len(src), 1 << 16):
            part = slice(k, k + (1 << 16))
            scores = np.einsum("nd,nd->n", s_unit[s_row[part]], t_unit[t_row[part]])
            np.maximum.at(best, pair[part], scores)
        return
    from numpy.lib.stride_tricks import sliding_window_view

    order = np.argsort(src, kind="stable")
    src, t_row, pair = src[order], t_row[order], pair[order]
    sources, starts, counts = np.unique(src, return_index=True, return_counts=True)
    by_count = np.argsort(counts, kind="stable")  # blocks of sources with as many comparisons: little padding
    sources, starts, counts = sources[by_count], starts[by_count], counts[by_count]
    for b in range(0, len(sources), _ROWS):
        block, block_counts = sources[b : b + _ROWS], counts[b : b + _ROWS]
        a = _prepared(thumbs, block, s_size)
        windows = sliding_window_view(a, t_size, axis=(1, 2)).reshape(len(block), -1, t_size[0] * t_size[1])
        norms = _window_norms(a, t_size)  # [B, P]
        offsets = np.arange(int(block_counts.max()))
        valid = offsets[None, :] < block_counts[:, None]  # each source's comparisons, padded to the block's most
        slots = np.where(valid, starts[b : b + _ROWS, None] + offsets[None, :], 0)
        # the templates are centred, so a window's own mean drops out of the product
        products = np.matmul(windows, t_unit[t_row[slots]].transpose(0, 2, 1))  # [B, P, width]
        scores = np.where(norms[:, :, None] > 1e-3, products / np.maximum(norms[:, :, None], 1e-3), 0.0).max(axis=1)
        np.maximum.at(best, pair[slots[valid]], scores[valid])
