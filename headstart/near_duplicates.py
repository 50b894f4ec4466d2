"""Which candidate pairs are near-duplicates: the doctor's rule, from bottleneck cosines and aligned pixels.

The candidates are each image's nearest bottleneck neighbours (from
:func:`headstart.doctor_checks.similarity_search`), the pairs above the cosine
threshold, and each image's nearest few by pixels (:func:`pixel_candidates`);
:mod:`headstart.pixel_match` lines each pair's thumbnails up.  A pair is a
near-duplicate when its cosine reaches the threshold, or when its pixels
line up closely enough, or clearly better than anything else either image
lines up with (:func:`near_duplicate_pairs`).  The constants and how they were
measured: :mod:`headstart.doctor_results` and docs/DOCTOR.md.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .doctor_checks import Neighbours, row_dots, similarity_search
from .doctor_results import (
    PIXEL_FLOOR,
    PIXEL_MATCH,
    PIXEL_MIN_COSINE,
    PIXEL_NEIGHBOURS,
    PIXEL_RATIO,
    SEARCH_MIN_COSINE,
    SEARCH_MIN_PIXELS,
    SEARCH_NEIGHBOURS,
)
from .pixel_match import descriptors, match_scores

Pair = tuple[int, int, float, float]  # (i, j, bottleneck cosine, aligned pixel correlation)
Candidates = tuple[np.ndarray, np.ndarray, np.ndarray]  # (i, j, bottleneck cosine)


def near_duplicate_pairs(
    thumbs: Sequence[np.ndarray],
    nbrs: Neighbours,
    threshold: float,
    *,
    extra: Candidates | None = None,
    pixel_match: float = PIXEL_MATCH,
    pixel_ratio: float = PIXEL_RATIO,
    pixel_floor: float = PIXEL_FLOOR,
) -> list[Pair]:
    """Pairs at or above the bottleneck cosine ``threshold``, or whose thumbnails line up pixel for pixel
    (:mod:`headstart.pixel_match`), among each image's nearest neighbours and the ``extra`` candidate pairs
    (``i``, ``j``, cosine: the nearest by pixels); each with both scores.

    A pixel correlation of ``pixel_match`` makes a pair on its own.  Below it, down
    to ``pixel_floor``, a pair counts when it lines up ``pixel_ratio`` times better
    (in ``1 - correlation``) than either image does with anything else it was
    compared with: Lowe's ratio test.  Look-alikes come in crowds (plain trousers
    all line up well with each other); a copy stands out from its original's crowd.
    """
    n, k = nbrs.index.shape
    rows = np.repeat(np.arange(n), k)
    cols = nbrs.index.ravel()
    sims = nbrs.similarity.ravel()
    close = np.tile(np.arange(k) < SEARCH_NEIGHBOURS, n)
    near = close & (sims >= SEARCH_MIN_COSINE)
    ei, ej, ecos = extra if extra is not None else (np.zeros(0, np.int64),) * 2 + (np.zeros(0, np.float32),)
    i = np.concatenate([np.minimum(rows, cols), nbrs.pairs[:, 0], np.minimum(ei, ej)]).astype(np.int64)
    j = np.concatenate([np.maximum(rows, cols), nbrs.pairs[:, 1], np.maximum(ei, ej)]).astype(np.int64)
    cos = np.concatenate([sims, nbrs.pair_similarity, ecos]).astype(np.float32)
    others = np.zeros(len(nbrs.pairs) + len(ei), bool)
    search = np.concatenate([near, others])
    closest = np.concatenate([close, others])
    keep = (i != j) & (cos >= min(PIXEL_MIN_COSINE, threshold))
    i, j, cos, search, closest = i[keep], j[keep], cos[keep], search[keep], closest[keep]
    # per pair, the row asking for the crop search first
    key = i * max(n, 1) + j
    order = np.lexsort((~closest, ~search, key))
    key = key[order]
    first = order[np.r_[True, key[1:] != key[:-1]]] if len(key) else order
    i, j, cos, search, closest = i[first], j[first], cos[first], search[first], closest[first]
    match = match_scores(thumbs, i, j, search)
    # A lightly cropped copy of a smooth picture can sit at a low cosine; its plain correlation gives it away.
    late = np.flatnonzero(closest & ~search & (match >= SEARCH_MIN_PIXELS))
    if len(late):
        match[late] = np.maximum(match[late], match_scores(thumbs, i[late], j[late], plain=False))
    rival = _rival_scores(n, i, j, match)
    stands_out = (match >= pixel_floor) & (1 - rival >= pixel_ratio * np.maximum(1 - match, 1e-6))
    hit = (cos >= threshold) | (((match >= pixel_match) | stands_out) & (cos >= PIXEL_MIN_COSINE))
    return [
        (a, b, c, m) for a, b, c, m in zip(i[hit].tolist(), j[hit].tolist(), cos[hit].tolist(), match[hit].tolist())
    ]


def _rival_scores(n: int, i: np.ndarray, j: np.ndarray, score: np.ndarray) -> np.ndarray:
    """For each pair, the best ``score`` either of its images has in any other pair (-1 if none)."""
    node = np.concatenate([i, j])
    edge = np.concatenate([np.arange(len(i)), np.arange(len(i))])
    value = np.concatenate([score, score])
    order = np.lexsort((-value, node))  # by image, best first
    node, edge, value = node[order], edge[order], value[order]
    head = np.r_[True, node[1:] != node[:-1]] if len(node) else np.zeros(0, bool)
    starts = np.flatnonzero(head)
    lengths = np.diff(np.r_[starts, len(node)])
    best_edge = np.full(n, -1, np.int64)
    best = np.full(n, -1.0, np.float32)
    second = np.full(n, -1.0, np.float32)
    best_edge[node[starts]] = edge[starts]
    best[node[starts]] = value[starts]
    two = starts[lengths > 1]
    second[node[two]] = value[two + 1]
    pairs = np.arange(len(i))
    other_i = np.where(best_edge[i] == pairs, second[i], best[i])
    other_j = np.where(best_edge[j] == pairs, second[j], best[j])
    return np.maximum(other_i, other_j)


def pixel_candidates(thumbs: Sequence[np.ndarray], x: np.ndarray, seed: int = 0) -> Candidates:
    """Each image and its ``PIXEL_NEIGHBOURS`` nearest by :func:`headstart.pixel_match.descriptors`, with the
    pair's bottleneck cosine: ``(i, j, cosine)``."""
    nbrs = similarity_search(descriptors(thumbs), k=PIXEL_NEIGHBOURS, threshold=1.0, seed=seed)
    n, k = nbrs.index.shape
    i, j = np.repeat(np.arange(n), k), nbrs.index.ravel()
    norms = np.maximum(np.linalg.norm(x, axis=1), 1e-12)
    return i, j, row_dots(x, x, i, j) / (norms[i] * norms[j])
