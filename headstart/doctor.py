"""The data doctor: mislabelled, duplicated, leaked and odd images in a folder, from the cached bottlenecks.

:func:`doctor` indexes and splits the folder exactly as ``retrain`` does and
reads (or computes once) the same cached bottlenecks, then runs cheap checks on
them: exact and near-duplicates, leaks across splits, likely label errors
(K-fold out-of-sample probabilities of the softmax head, ranked by cleanlab's
confident learning), outliers, image problems and class balance.  It never
moves or deletes a file: :func:`headstart.doctor_report.render_fix_script` writes
the ``mv`` commands for a person to review.  How each threshold was chosen, with
the measurements, is in docs/DOCTOR.md.

This module runs the checks and writes the files; what they find (the finding
dataclasses, :class:`DoctorReport`, the thresholds and :func:`load_exclusions`)
is in :mod:`headstart.doctor_results`, which the checks and the renderers
import without this module.  The documented names are re-exported here.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
import types
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from .data import ImageIndex, ImageRecord, index_image_dir, which_split
from .doctor_results import (
    DEFAULT_FOLDS,
    DEFAULT_SIMILARITY,
    HEAD_PARAMS,
    NEIGHBOURS,
    PIXEL_FLOOR,
    PIXEL_MATCH,
    PIXEL_MIN_COSINE,
    PIXEL_RATIO,
    ClassBalance,
    DoctorReport,
    ExactDuplicate,
    ImageIssue,
    LabelIssue,
    Leak,
    NearDuplicateGroup,
    Outlier,
    load_exclusions,
    summary_line,
)
from .errors import UsageError

log = logging.getLogger("headstart")


# --------------------------------------------------------------------------- the checks


def _index(
    root: Path, validation_percentage: float, testing_percentage: float, workers: int
) -> tuple[ImageIndex, list[str]]:
    """retrain's index and split; a folder of one class is indexed too (labels checks are then skipped)."""
    notes: list[str] = []
    with os.scandir(root) as it:
        classes = sorted(e.name for e in it if not e.name.startswith(".") and e.is_dir())
    labels = tuple(classes) if len(classes) == 1 else None
    if labels:
        notes.append(
            f"one class folder ('{classes[0]}'): label and leak-accuracy checks skipped, "
            "a classifier needs at least two classes"
        )
    index = index_image_dir(
        root, validation_percentage, testing_percentage, labels=labels, require_training=False, workers=workers
    )
    return index, notes


def _train_head(x: np.ndarray, y: np.ndarray, n_classes: int, seed: int) -> Any:
    from .head import SoftmaxHead

    return SoftmaxHead(n_classes=n_classes, seed=seed, **HEAD_PARAMS).fit(x, y)


def _import_cleanlab() -> None:
    try:
        import cleanlab.filter
        import cleanlab.rank  # noqa: F401
    except ImportError:
        pass  # the label check says so, with the hint


def _check_folder(image_dir: str | Path) -> Path:
    root = Path(image_dir).expanduser()
    hint = "pass --image_dir, a folder with one sub-folder of images per class"
    if not root.exists():
        raise UsageError(f"image folder not found: {root}", hint=hint)
    if not root.is_dir():
        raise UsageError(f"not a folder: {root}", hint=hint)
    return root.resolve()


def doctor(
    image_dir: str | Path,
    *,
    output_dir: str | Path | None = None,
    bottleneck_dir: str | Path | None = None,
    backbone: str = "efficientnet_lite0",
    weights: str | Path | None = None,
    crop_pct: float = 1.0,
    runtime: str = "auto",
    precision: str = "auto",
    validation_percentage: float = 10.0,
    testing_percentage: float = 10.0,
    similarity: float | None = None,
    folds: int = DEFAULT_FOLDS,
    workers: int | None = None,
    progress: bool = False,
    seed: int = 0,
    ray: Any = None,
) -> DoctorReport:
    """Check ``image_dir`` (one sub-folder per class) and return a :class:`DoctorReport`.

    Uses retrain's index, split, backbone defaults and bottleneck cache, so on a
    folder retrain has seen no network runs.  With ``output_dir`` it also writes
    ``doctor.json`` and ``doctor.html`` there.  ``similarity`` overrides the
    measured near-duplicate threshold.  Nothing in the folder is changed.
    """
    from .backbones import resolve_backbone
    from .cache import BottleneckCache
    from .doctor_checks import PCA_DIM, out_of_sample_probabilities, scan_images, similarity_search
    from .features import compute_bottlenecks
    from .near_duplicates import pixel_candidates

    start = time.perf_counter()
    timing: dict[str, float] = {}
    if similarity is not None and not (isinstance(similarity, (int, float)) and 0 < similarity <= 1):
        raise UsageError(
            f"--similarity must be a cosine in (0, 1], got {similarity!r}",
            hint=f"the measured default is {DEFAULT_SIMILARITY}",
        )
    if not isinstance(folds, int) or folds < 2:
        raise UsageError(f"--folds must be an integer of at least 2, got {folds!r}", hint="e.g. --folds 5")
    root = _check_folder(image_dir)
    # cleanlab brings scikit-learn, scipy and pandas: seconds of imports, overlapped with the index and cache reads.
    importer = threading.Thread(target=_import_cleanlab, daemon=True)
    importer.start()
    if output_dir is not None and _inside(Path(output_dir), root):
        raise UsageError(
            f"--output_dir {output_dir} is inside the image folder (it would become a class)",
            hint="write the report next to the images, e.g. --output_dir doctor",
        )
    threads = workers or max(1, min(8, os.cpu_count() or 1))
    index, notes = _index(root, validation_percentage, testing_percentage, threads)
    net = resolve_backbone(backbone, weights, crop_pct=crop_pct)
    from . import doctor_findings as find

    dup_groups, dup_paths = find.exact_duplicate_groups(index, root)
    conflict_records = [
        ImageRecord(
            root / copies[0][0],
            copies[0][0],
            copies[0][1],
            which_split(copies[0][0], validation_percentage, testing_percentage),
            sha,
        )
        for sha, copies in dup_groups
        if len({c for _, c in copies}) > 1
    ]
    with BottleneckCache(bottleneck_dir) as cache:
        bottlenecks = compute_bottlenecks(
            index.records, net, cache, runtime=runtime, precision=precision, workers=workers, progress=progress, ray=ray
        )
        conflict_vectors = (
            compute_bottlenecks(
                conflict_records,
                net,
                cache,
                runtime=bottlenecks.runtime or runtime,
                precision=precision,
                workers=workers,
                progress=False,
                ray=ray,
            )
            if conflict_records
            else None
        )
    timing["bottlenecks_s"] = time.perf_counter() - start
    records, x = bottlenecks.records, bottlenecks.vectors
    labels = index.labels
    y = index.label_ids(records)

    t = time.perf_counter()
    stats, thumbs = scan_images([r.path for r in records], threads)
    timing["pixels_s"] = time.perf_counter() - t

    t = time.perf_counter()
    threshold = DEFAULT_SIMILARITY if similarity is None else float(similarity)
    nbrs = similarity_search(x, k=NEIGHBOURS, threshold=min(threshold, 0.999999), seed=seed)
    timing["neighbours_s"] = time.perf_counter() - t

    # A head on the training split: retrain's own test accuracy, with and without leaked test images,
    # and the suggested class of a conflicting exact duplicate.
    train_rows = np.flatnonzero([r.split == "training" for r in records])
    head = None
    if len(labels) > 1 and len(np.unique(y[train_rows])) > 1:
        head = _train_head(x[train_rows], y[train_rows], len(labels), seed)

    t = time.perf_counter()
    exact = find.exact_duplicate_findings(dup_groups, labels, head, conflict_vectors)
    extra = pixel_candidates(thumbs, x, seed)
    groups, pair_list = find.near_duplicate_groups(records, thumbs, nbrs, threshold, extra)
    leaks_found = find.leak_findings(records, pair_list, dup_groups, root, validation_percentage, testing_percentage)
    acc, acc_clean = find.leak_accuracy(
        records, x, y, head, {f.path for f in leaks_found if f.split == "testing" and not f.exact}
    )
    leaks_found = [replace(f, test_accuracy=acc, test_accuracy_without_leaks=acc_clean) for f in leaks_found]
    timing["duplicates_s"] = time.perf_counter() - t

    t = time.perf_counter()
    importer.join()
    issues: list[LabelIssue] = []
    if len(labels) > 1:
        issues, label_notes = find.label_issue_findings(
            records, x, y, labels, folds=folds, seed=seed, oof=out_of_sample_probabilities
        )
        notes.extend(label_notes)
    timing["labels_s"] = time.perf_counter() - t

    outliers = find.outlier_findings(records, nbrs)
    image_issues = find.image_issue_findings(records, stats, index.skipped, bottlenecks.skipped, dup_paths, root)
    balance = find.class_balance_findings(records, labels)
    notes.append(
        f"near-duplicates: bottleneck cosine >= {threshold:g}"
        + (" (--similarity)" if similarity is not None else " (measured default; --similarity overrides)")
        + f", or, with cosine >= {PIXEL_MIN_COSINE}, aligned pixel correlation >= {PIXEL_MATCH} "
        + f"(or >= {PIXEL_FLOOR} and {PIXEL_RATIO:g}x closer than either image's next best match)"
    )
    notes.append("exact duplicates within a class are already used once by retrain; across classes none is used")
    if nbrs.projected:
        notes.append(
            f"neighbour search ran on the vectors' {PCA_DIM} main directions first, "
            "candidates re-checked at full dimension"
        )
    timing["total_s"] = time.perf_counter() - start
    report = DoctorReport(
        root,
        labels,
        len(records),
        tuple(exact),
        tuple(groups),
        tuple(leaks_found),
        tuple(issues),
        tuple(outliers),
        tuple(image_issues),
        tuple(balance),
        threshold,
        "--similarity" if similarity is not None else "measured default",
        acc,
        acc_clean,
        tuple(notes),
        tuple(index.skipped) + tuple(bottlenecks.skipped),
        net.name,
        {k: round(v, 3) for k, v in timing.items()},
    )
    if output_dir is not None:
        write_report(report, output_dir)
    log.info("doctor: %s", summary_line(report))
    return report


def _inside(path: Path, root: Path) -> bool:
    resolved = path.expanduser().resolve()
    return resolved == root or root in resolved.parents


def write_report(report: DoctorReport, output_dir: str | Path) -> tuple[Path, Path]:
    """Write ``doctor.json`` and the self-contained ``doctor.html`` into ``output_dir``."""
    from .doctor_report import render_html

    out = Path(output_dir)
    if _inside(out, report.image_dir):
        raise UsageError(
            f"{out} is inside the image folder (it would become a class)",
            hint="write the report next to the images instead",
        )
    out.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out / "doctor.json", out / "doctor.html"
    _atomic_write(json_path, json.dumps(report.to_dict(), indent=1) + "\n")
    _atomic_write(html_path, render_html(report))
    return json_path, html_path


def write_fix_script(report: DoctorReport, path: str | Path) -> Path:
    """Write the reviewable shell script of ``mv`` commands (nothing is run)."""
    from .doctor_report import render_fix_script

    target = Path(path)
    if target.parent and not target.parent.exists():
        raise UsageError(f"folder not found for the fix script: {target.parent}", hint="create it first")
    _atomic_write(target, render_fix_script(report))
    target.chmod(0o755)
    return target


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class _CallableModule(types.ModuleType):
    """Importing ``headstart.doctor`` binds the module, not the function, to that name on the package
    (the import system does so after the module runs); calling the module runs :func:`doctor`, so
    ``headstart.doctor(image_dir)`` works however the name was reached."""

    def __call__(self, *args: Any, **kwargs: Any) -> DoctorReport:
        return doctor(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
# The finding types and load_exclusions are documented under headstart.doctor (docs/DOCTOR.md).
__all__ = [
    "ClassBalance",
    "DoctorReport",
    "ExactDuplicate",
    "ImageIssue",
    "LabelIssue",
    "Leak",
    "NearDuplicateGroup",
    "Outlier",
    "doctor",
    "load_exclusions",
    "summary_line",
    "write_fix_script",
    "write_report",
]
