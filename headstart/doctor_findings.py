"""Turning the doctor's measurements into findings (:mod:`headstart.doctor` runs these in order).

Each function takes the folder's records (in bottleneck order) and the arrays
measured on them and returns findings sorted most certain first.  Paths are
relative to the image folder, as in ``doctor.json``.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from .data import ImageIndex, ImageRecord, SkippedImage, sha256_file, which_split
from .doctor_checks import ImageStats, Neighbours, group_pairs
from .doctor_results import (
    CLEANLAB_HINT,
    FOLD_HEAD_PARAMS,
    MAX_IMBALANCE,
    MIN_TRAINING_IMAGES,
    OUTLIER_K,
    OUTLIER_Z,
    ClassBalance,
    ExactDuplicate,
    ImageIssue,
    LabelIssue,
    Leak,
    NearDuplicateGroup,
    NearDuplicatePair,
    Outlier,
)
from .errors import HeadstartError
from .near_duplicates import Candidates, Pair, near_duplicate_pairs

log = logging.getLogger("headstart")

TINY_PX = 32
MAX_ASPECT = 4.0  # long side over short side
BLANK_STD = 3.0  # grey-level standard deviation below which an image shows nothing
DARK_P99 = 50.0  # 99 % of the pixels darker than this grey level
BRIGHT_P01 = 225.0  # 99 % of the pixels brighter than this
BLUR_FRACTION = 0.14  # sharpness under this fraction of the folder's median (docs/DOCTOR.md)
_SPLIT_ORDER = {"training": 0, "validation": 1, "testing": 2}


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _r4(value: float) -> float:
    return round(float(value), 4)


# --------------------------------------------------------------------------- duplicates


Copies = list[tuple[str, str]]  # (relpath, class) of each copy of one content


def exact_duplicate_groups(index: ImageIndex, root: Path) -> tuple[list[tuple[str, Copies]], set[str]]:
    """``(sha256, [(relpath, class)...])`` for every content stored more than once, and the paths involved."""
    empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"  # empty files are image issues
    by_sha: dict[str, list[tuple[str, str]]] = {}
    for r in index.records:
        by_sha.setdefault(r.sha256, []).append((r.relpath, r.label))
    for s in index.skipped:
        try:
            digest = sha256_file(s.path)
        except OSError:
            continue
        if digest != empty:
            rel = _relative(s.path, root)
            by_sha.setdefault(digest, []).append((rel, PurePosixPath(rel).parts[0]))
    groups = [
        (sha, sorted(copies, key=lambda c: (len(c[0]), c[0]))) for sha, copies in by_sha.items() if len(copies) > 1
    ]
    return sorted(groups, key=lambda g: g[1][0]), {rel for _, copies in groups for rel, _ in copies}


def exact_duplicate_findings(
    groups: Sequence[tuple[str, list[tuple[str, str]]]], labels: Sequence[str], head: Any, conflict_vectors: Any
) -> list[ExactDuplicate]:
    suggested: dict[str, str] = {}
    if head is not None and conflict_vectors is not None:
        for record, p in zip(conflict_vectors.records, head.predict_proba(conflict_vectors.vectors)):
            suggested[record.sha256] = labels[int(np.argmax(p))]
    out = []
    for sha, copies in groups:
        paths = tuple(rel for rel, _ in copies)
        classes = tuple(label for _, label in copies)
        conflict = len(set(classes)) > 1
        if conflict:
            reason = (
                f"the same bytes in classes {', '.join(sorted(set(classes)))}: a label conflict, "
                "retrain uses none of the copies"
            )
        else:
            reason = f"{len(paths)} copies of the same bytes in '{classes[0]}'; retrain already counts them once"
        out.append(ExactDuplicate(paths[0], reason, 1.0, paths, classes, conflict, suggested.get(sha)))
    return sorted(out, key=lambda f: (not f.conflict, f.path))


def near_duplicate_groups(
    records: Sequence[ImageRecord],
    thumbs: Sequence[np.ndarray],
    nbrs: Neighbours,
    threshold: float,
    extra: Candidates | None = None,
) -> tuple[list[NearDuplicateGroup], list[Pair]]:
    """Near-duplicate pairs (:func:`near_duplicate_pairs`) grouped into connected groups, one copy kept each."""
    pairs = near_duplicate_pairs(thumbs, nbrs, threshold, extra=extra)
    if not pairs:
        return [], []
    keys = np.array([(a, b) for a, b, _, _ in pairs], dtype=np.int64)
    by_member: dict[int, list[Pair]] = {}
    for p in pairs:
        by_member.setdefault(p[0], []).append(p)
    groups = []
    for members in group_pairs(len(records), keys):
        member_set = set(members)
        group_pairs_ = [p for i in members for p in by_member.get(i, []) if p[1] in member_set]
        classes = [records[i].label for i in members]
        majority = max(set(classes), key=classes.count)
        keep = min(
            members,
            key=lambda i: (
                _SPLIT_ORDER.get(records[i].split, 3),
                records[i].label != majority,
                len(records[i].relpath),
                records[i].relpath,
            ),
        )
        ordered = [keep] + [i for i in members if i != keep]
        conflict = len(set(classes)) > 1
        best = max(max(p[2], p[3]) for p in group_pairs_)  # the surer of the two scores
        where = f" in different classes ({', '.join(sorted(set(classes)))})" if conflict else f" in '{classes[0]}'"
        reason = f"{len(members)} near-identical images{where}; keep {records[keep].relpath}"
        groups.append(
            NearDuplicateGroup(
                records[keep].relpath,
                reason,
                _r4(best),
                tuple(records[i].relpath for i in ordered),
                tuple(records[i].label for i in ordered),
                tuple(records[i].split for i in ordered),
                tuple(
                    NearDuplicatePair(records[a].relpath, records[b].relpath, _r4(s), _r4(c))
                    for a, b, s, c in sorted(group_pairs_, key=lambda p: -max(p[2], p[3]))
                ),
                conflict,
                float(threshold),
            )
        )
    return sorted(groups, key=lambda g: (not g.conflict, -g.score, g.path)), pairs


def _held_out(split_a: str, split_b: str) -> int | None:
    """Which side of a cross-split pair is the leaked one (0 or 1), or None in the same split."""
    if split_a == split_b:
        return None
    return 1 if _SPLIT_ORDER.get(split_a, 3) < _SPLIT_ORDER.get(split_b, 3) else 0


def leak_findings(
    records: Sequence[ImageRecord],
    pairs: Sequence[Pair],
    exact_groups: Sequence[tuple[str, list[tuple[str, str]]]],
    root: Path,
    validation_percentage: float,
    testing_percentage: float,
) -> list[Leak]:
    leaked: dict[str, dict[str, Any]] = {}

    def add(path: str, label: str, split: str, match: str, match_split: str, score: float, exact: bool) -> None:
        entry = leaked.setdefault(path, {"label": label, "split": split, "matches": {}, "score": 0.0, "exact": exact})
        entry["matches"][match] = match_split
        entry["score"] = max(entry["score"], score)
        entry["exact"] = entry["exact"] and exact

    for i, j, cosine, pixels in pairs:
        a, b = records[i], records[j]
        side = _held_out(a.split, b.split)
        if side is not None:
            held, other = (a, b) if side == 0 else (b, a)
            add(held.relpath, held.label, held.split, other.relpath, other.split, max(cosine, pixels), False)
    for _, copies in exact_groups:
        # Copies the index skipped still have the split their name hashes to.
        splits = [which_split(rel, validation_percentage, testing_percentage) for rel, _ in copies]
        for (rel_a, lab_a), split_a in zip(copies, splits):
            for (rel_b, _), split_b in zip(copies, splits):
                if rel_a != rel_b and _held_out(split_a, split_b) == 0:
                    add(rel_a, lab_a, split_a, rel_b, split_b, 1.0, True)
    out = []
    for path, e in leaked.items():
        matches = sorted(e["matches"], key=lambda m: (_SPLIT_ORDER.get(e["matches"][m], 3), m))
        first = matches[0]
        if e["exact"]:
            reason = (
                f"same bytes as {first} ({e['matches'][first]}); retrain uses one copy only, "
                "so it does not inflate the test accuracy, but remove it"
            )
        else:
            reason = f"{e['split']} image nearly identical to {first} ({e['matches'][first]})"
        out.append(
            Leak(
                path,
                reason,
                _r4(e["score"]),
                e["label"],
                e["split"],
                tuple(matches),
                tuple(e["matches"][m] for m in matches),
                bool(e["exact"]),
                None,
                None,
            )
        )
    return sorted(out, key=lambda f: (-f.score, f.path))


def leak_accuracy(
    records: Sequence[ImageRecord], x: np.ndarray, y: np.ndarray, head: Any, leaked_test: set[str]
) -> tuple[float | None, float | None]:
    """Test accuracy of a head trained as retrain trains it, on all test images and without the leaked ones."""
    test = np.flatnonzero([r.split == "testing" for r in records])
    if head is None or not len(test):
        return None, None
    correct = head.predict(x[test]) == y[test]
    clean = np.array([records[i].relpath not in leaked_test for i in test.tolist()])
    return float(correct.mean()), (float(correct[clean].mean()) if clean.any() else None)


# --------------------------------------------------------------------------- labels


def label_issue_findings(
    records: Sequence[ImageRecord],
    x: np.ndarray,
    y: np.ndarray,
    labels: Sequence[str],
    *,
    folds: int,
    seed: int,
    oof: Callable[..., np.ndarray],
) -> tuple[list[LabelIssue], list[str]]:
    """Confident learning on K-fold probabilities, in two rounds.

    Round one finds cleanlab's suspects; round two retrains every fold without
    them (they would pull the head towards their wrong labels) and ranks every
    image by cleanlab's label quality.  Measured in docs/DOCTOR.md: the second
    round raises the precision of the top-ranked issues by a few points.
    """
    try:
        import cleanlab.filter
        import cleanlab.rank
    except ImportError:
        raise HeadstartError(
            "label checks need the cleanlab package, which is not installed", hint=CLEANLAB_HINT
        ) from None
    notes: list[str] = []
    present = np.unique(y)
    if len(present) < 2:
        return [], ["label checks skipped: the usable images are all in one class"]
    small = [labels[c] for c in present if np.sum(y == c) < folds]
    if small:
        notes.append(f"classes with fewer than {folds} images ({', '.join(small)}): their label checks are unreliable")
    remap = np.full(len(labels), -1, dtype=np.int64)
    remap[present] = np.arange(len(present))
    yy = remap[y]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cleanlab warns about tiny classes; the note above says it once
        first = oof(x, yy, len(present), folds=folds, seed=seed, head_params=dict(FOLD_HEAD_PARAMS))
        suspects = cleanlab.filter.find_label_issues(yy, first, n_jobs=1)
        proba = oof(x, yy, len(present), folds=folds, seed=seed, head_params=dict(FOLD_HEAD_PARAMS), exclude=suspects)
        flagged = cleanlab.filter.find_label_issues(yy, proba, n_jobs=1)
        quality = cleanlab.rank.get_label_quality_scores(yy, proba, method="self_confidence")
    # Listed: cleanlab's confident issues and every image the out-of-sample head puts in another class,
    # all ranked by cleanlab's score (a longer ranked list finds more of them within the top few; docs/DOCTOR.md).
    listed = flagged | (proba.argmax(axis=1) != yy)
    out = []
    for i in np.flatnonzero(listed).tolist():
        p = proba[i].copy()
        given_p = float(p[yy[i]])
        p[yy[i]] = -1.0
        best = int(np.argmax(p))
        given, suggested = labels[present[yy[i]]], labels[present[best]]
        r = records[i]
        reason = (
            f"labelled '{given}' ({100 * given_p:.0f} % out of sample), "
            f"looks like '{suggested}' ({100 * float(proba[i, best]):.0f} %)"
            + ("" if flagged[i] else "; not flagged by confident learning")
        )
        out.append(
            LabelIssue(
                r.relpath,
                reason,
                _r4(1.0 - quality[i]),
                given,
                suggested,
                _r4(given_p),
                _r4(proba[i, best]),
                r.split,
                bool(flagged[i]),
            )
        )
    return sorted(out, key=lambda f: (-f.score, f.path)), notes


# --------------------------------------------------------------------------- outliers, pixels, balance


def outlier_findings(records: Sequence[ImageRecord], nbrs: Neighbours) -> list[Outlier]:
    """Images whose nearest neighbours are far, by a robust z-score (median and MAD) over the folder."""
    k = min(OUTLIER_K, nbrs.similarity.shape[1])
    if k < 1 or len(records) < 10:
        return []
    score = 1.0 - nbrs.similarity[:, :k].astype(np.float64).mean(axis=1)
    median = float(np.median(score))
    mad = float(np.median(np.abs(score - median))) * 1.4826
    z = (score - median) / max(mad, 1e-6)
    out = []
    for i in np.flatnonzero(z > OUTLIER_Z).tolist():
        r = records[i]
        near = records[int(nbrs.index[i, 0])]
        out.append(
            Outlier(
                r.relpath,
                f"far from every other image (z = {z[i]:.1f}; nearest {near.relpath})",
                _r4(score[i]),
                r.label,
                r.split,
                near.relpath,
                _r4(nbrs.similarity[i, 0]),
                round(float(z[i]), 2),
            )
        )
    return sorted(out, key=lambda f: (-f.score, f.path))


def _class_of(rel: str) -> str:
    return PurePosixPath(rel).parts[0]


def image_issue_findings(
    records: Sequence[ImageRecord],
    stats: Sequence[ImageStats],
    index_skipped: Sequence[SkippedImage],
    extract_skipped: Sequence[SkippedImage],
    duplicate_paths: set[str],
    root: Path,
) -> list[ImageIssue]:
    out: list[ImageIssue] = []
    for skipped in (*index_skipped, *extract_skipped):
        rel = _relative(skipped.path, root)
        if rel not in duplicate_paths:  # those are exact duplicates, reported there
            out.append(ImageIssue(rel, f"unusable: {skipped.reason}", 1.0, "unreadable", _class_of(rel)))
    good = [(r, s) for r, s in zip(records, stats) if s.error is None]
    if not good:
        return out
    shorter = np.array([min(s.width, s.height) for _, s in good], dtype=np.float64)
    median_short = float(np.median(shorter))
    sharp = np.array([s.sharpness for _, s in good], dtype=np.float64)
    usable = np.isfinite(sharp) & (sharp > 0)
    median_sharp = float(np.median(sharp[usable])) if usable.sum() >= 10 else None
    for (r, s), short in zip(good, shorter):

        def add(kind: str, reason: str, score: float, r: ImageRecord = r) -> None:
            out.append(ImageIssue(r.relpath, reason, _r4(min(1.0, max(0.0, score))), kind, r.label))

        if short < TINY_PX and (median_short >= TINY_PX or short <= median_short / 2):
            add("tiny", f"tiny: {s.width}x{s.height} pixels (under {TINY_PX})", 1 - short / TINY_PX)
        ratio = max(s.width, s.height) / max(1, short)
        if ratio > MAX_ASPECT:
            add("aspect_ratio", f"extreme aspect ratio {ratio:.1f}:1 ({s.width}x{s.height})", 1 - MAX_ASPECT / ratio)
        if s.std < BLANK_STD:
            add(
                "near_blank",
                f"near-blank: one flat grey level ({s.mean:.0f}, spread {s.std:.1f})",
                1 - s.std / BLANK_STD,
            )
            continue  # a blank image is also dark or bright and unsharp: one finding says it
        if s.p99 < DARK_P99:
            add("dark", f"very dark: 99 % of pixels below grey level {s.p99:.0f}", 1 - s.p99 / DARK_P99)
        if s.p01 > BRIGHT_P01:
            add(
                "bright",
                f"very bright: 99 % of pixels above grey level {s.p01:.0f}",
                (s.p01 - BRIGHT_P01) / (255 - BRIGHT_P01),
            )
        if median_sharp is not None and np.isfinite(s.sharpness) and s.sharpness < BLUR_FRACTION * median_sharp:
            add(
                "blurred",
                f"heavily blurred: {s.sharpness / median_sharp:.2f} of the folder's median sharpness",
                1 - s.sharpness / (BLUR_FRACTION * median_sharp),
            )
    return sorted(out, key=lambda f: (f.kind != "unreadable", -f.score, f.path))


def class_balance_findings(records: Sequence[ImageRecord], labels: Sequence[str]) -> list[ClassBalance]:
    counts = {label: dict.fromkeys(("training", "validation", "testing"), 0) for label in labels}
    for r in records:
        counts[r.label][r.split] += 1
    largest = max((c["training"] for c in counts.values()), default=0)
    out = []
    for label in labels:
        c = counts[label]
        n = c["training"]
        problems = []
        if n < MIN_TRAINING_IMAGES:
            problems.append(f"only {n} training image{'s' if n != 1 else ''} (fewer than {MIN_TRAINING_IMAGES})")
        if len(labels) > 1 and largest and n * MAX_IMBALANCE < largest:
            problems.append(f"{largest / max(n, 1):.1f}x fewer training images than the largest class ({largest})")
        reason = "; ".join(problems) or f"{n} training, {c['validation']} validation, {c['testing']} test images"
        out.append(
            ClassBalance(
                label,
                reason,
                _r4(n / largest if largest else 0.0),
                label,
                n,
                c["validation"],
                c["testing"],
                bool(problems),
            )
        )
    return sorted(out, key=lambda f: (not f.flagged, f.score, f.label))
