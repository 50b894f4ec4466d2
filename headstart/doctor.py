"""The data doctor: mislabelled, duplicated, leaked and odd images in a folder, from the cached bottlenecks.

:func:`doctor` indexes and splits the folder exactly as ``retrain`` does and
reads (or computes once) the same cached bottlenecks, then runs cheap checks on
them: exact and near-duplicates, leaks across splits, likely label errors
(K-fold out-of-sample probabilities of the softmax head, ranked by cleanlab's
confident learning), outliers, image problems and class balance.  It never
moves or deletes a file: :func:`headstart.doctor_report.render_fix_script` writes
the ``mv`` commands for a person to review.  How each threshold was chosen, with
the measurements, is in docs/DOCTOR.md.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
import types
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from .data import ImageIndex, ImageRecord, SkippedImage, index_image_dir, which_split
from .errors import UsageError

log = logging.getLogger("headstart")

FINDING_KINDS = ("exact_duplicates", "near_duplicates", "leaks", "label_issues", "outliers", "image_issues",
                 "class_balance")
EXCLUDABLE_KINDS = FINDING_KINDS[:-1]  # class_balance names classes, not images

# Bottleneck cosine at or above which two images are near-duplicates, and the
# fingerprint correlation that, with a cosine of at least FINGERPRINT_MIN_COSINE,
# also makes a pair (re-encodes and brightness shifts move the bottleneck more
# than the pixels).  Chosen on planted copies (docs/DOCTOR.md, bench_doctor.py).
DEFAULT_SIMILARITY = 0.95
FINGERPRINT_MATCH = 0.99
FINGERPRINT_MIN_COSINE = 0.7
NEIGHBOURS = 20  # nearest neighbours searched per image (candidates for the fingerprint check)
OUTLIER_K = 5  # an outlier's score is its mean cosine distance to its OUTLIER_K nearest images
OUTLIER_Z = 3.5  # robust z-score (median, MAD) above which an image is listed as an outlier
OUTLIER_CERTAIN_Z = 6.0  # ... and above which the fix script quarantines it without asking
MIN_TRAINING_IMAGES = 20
MAX_IMBALANCE = 5.0
DEFAULT_FOLDS = 5
# The head of the K-fold: retrain's defaults (adam, 0.001, 1000 steps of 100).
# Measured against scikit-learn's LogisticRegression in docs/DOCTOR.md: better
# label-issue ranking and ten times faster.
HEAD_PARAMS: Mapping[str, Any] = {"optimizer": "adam", "learning_rate": 0.001, "how_many_training_steps": 1000,
                                  "train_batch_size": 100, "eval_step_interval": 1000}
# The K-fold heads stop at 500 steps: the same label-issue ranking (docs/DOCTOR.md), in half the time.
FOLD_HEAD_PARAMS: Mapping[str, Any] = {**HEAD_PARAMS, "how_many_training_steps": 500}
CLEANLAB_HINT = "pip install cleanlab (or: pip install 'headstart[doctor]')"


# --------------------------------------------------------------------------- findings


@dataclass(frozen=True)
class ExactDuplicate:
    """The same bytes stored more than once; ``path`` is the copy retrain uses (or the first copy)."""

    path: str
    reason: str
    score: float
    paths: tuple[str, ...]
    classes: tuple[str, ...]
    conflict: bool  # copies in different classes: retrain uses none of them
    suggested: str | None = None  # for a conflict: the class the head predicts


@dataclass(frozen=True)
class NearDuplicatePair:
    a: str
    b: str
    similarity: float  # bottleneck cosine
    fingerprint: float  # correlation of the 16x16 grey thumbnails


@dataclass(frozen=True)
class NearDuplicateGroup:
    """Images joined by near-duplicate pairs; ``path`` is the one to keep (the fix script quarantines the rest)."""

    path: str
    reason: str
    score: float  # the group's highest pair similarity
    paths: tuple[str, ...]
    classes: tuple[str, ...]
    splits: tuple[str, ...]
    pairs: tuple[NearDuplicatePair, ...]
    conflict: bool  # members in different classes
    threshold: float


@dataclass(frozen=True)
class Leak:
    """A validation or test image with a near- or exact duplicate in another split."""

    path: str
    reason: str
    score: float
    label: str
    split: str
    matches: tuple[str, ...]
    match_splits: tuple[str, ...]
    exact: bool  # byte-identical copies: retrain uses one, so the test accuracy is not inflated
    test_accuracy: float | None
    test_accuracy_without_leaks: float | None


@dataclass(frozen=True)
class LabelIssue:
    path: str
    reason: str
    score: float  # 1 - cleanlab's label quality: higher is more likely wrong
    given: str
    suggested: str
    given_probability: float
    suggested_probability: float
    split: str
    confident: bool  # flagged by cleanlab's confident learning, not only misclassified out of sample


@dataclass(frozen=True)
class Outlier:
    path: str
    reason: str
    score: float  # mean cosine distance to the nearest images
    label: str
    split: str
    nearest: str
    nearest_similarity: float
    z: float  # robust z-score of ``score`` over the folder


@dataclass(frozen=True)
class ImageIssue:
    path: str
    reason: str
    score: float
    kind: str  # unreadable, near_blank, dark, bright, blurred, tiny, aspect_ratio
    label: str


@dataclass(frozen=True)
class ClassBalance:
    path: str  # the class folder
    reason: str
    score: float  # training images over the largest class's
    label: str
    training: int
    validation: int
    testing: int
    flagged: bool


@dataclass(frozen=True)
class DoctorReport:
    """Everything the doctor found in one folder.  :meth:`to_dict` is ``doctor.json``."""

    image_dir: Path
    labels: tuple[str, ...]
    n_images: int
    exact_duplicates: tuple[ExactDuplicate, ...]
    near_duplicates: tuple[NearDuplicateGroup, ...]
    leaks: tuple[Leak, ...]
    label_issues: tuple[LabelIssue, ...]
    outliers: tuple[Outlier, ...]
    image_issues: tuple[ImageIssue, ...]
    class_balance: tuple[ClassBalance, ...]
    similarity: float
    similarity_source: str
    test_accuracy: float | None
    test_accuracy_without_leaks: float | None
    notes: tuple[str, ...]
    skipped: tuple[SkippedImage, ...]
    backbone: str
    timing: Mapping[str, float] = field(default_factory=dict, compare=False)

    @property
    def near_duplicate_pairs(self) -> int:
        return sum(len(g.pairs) for g in self.near_duplicates)

    def to_dict(self) -> dict[str, list[dict[str, Any]]]:
        """The seven lists of findings, JSON-ready (what ``doctor.json`` holds)."""
        return {kind: [asdict(f) for f in getattr(self, kind)] for kind in FINDING_KINDS}

    def summary(self) -> dict[str, Any]:
        """Counts, settings and accuracies: what the command prints."""
        return {
            "image_dir": str(self.image_dir), "images": self.n_images, "classes": len(self.labels),
            **{kind: len(getattr(self, kind)) for kind in FINDING_KINDS},
            "near_duplicate_pairs": self.near_duplicate_pairs,
            "class_balance_flagged": sum(c.flagged for c in self.class_balance),
            "similarity": self.similarity, "similarity_source": self.similarity_source,
            "test_accuracy": self.test_accuracy, "test_accuracy_without_leaks": self.test_accuracy_without_leaks,
            "skipped": len(self.skipped), "notes": list(self.notes), "backbone": self.backbone,
            "timing": dict(self.timing), "summary": summary_line(self),
        }


def summary_line(report: DoctorReport) -> str:
    """One sentence for a run report: "3 likely label errors, 12 near-duplicate pairs, 4 leaks (...)"."""

    def count(n: int, one: str, many: str) -> str:
        return f"{n} {one if n == 1 else many}"

    leaks = count(len(report.leaks), "leak", "leaks")
    if report.test_accuracy is not None and report.test_accuracy_without_leaks is not None and report.leaks:
        leaks += (f" (test accuracy {100 * report.test_accuracy:.1f} % -> "
                  f"{100 * report.test_accuracy_without_leaks:.1f} % without them)")
    likely = sum(issue.confident for issue in report.label_issues)
    return ", ".join([count(likely, "likely label error", "likely label errors"),
                      count(report.near_duplicate_pairs, "near-duplicate pair", "near-duplicate pairs"), leaks])


# --------------------------------------------------------------------------- exclusions


def _exclusion_paths(kind: str, item: Mapping[str, Any]) -> list[Any]:
    """The images a finding asks to leave out of training: never the copy a group keeps."""
    if kind == "exact_duplicates":
        return list(item.get("paths", [])) if item.get("conflict") else list(item.get("paths", []))[1:]
    if kind == "near_duplicates":
        return [p for p in item.get("paths", []) if p != item.get("path")]
    return [item.get("path")]


def load_exclusions(doctor_json: str | Path, kinds: Sequence[str] | None = None) -> set[str]:
    """Relative paths (POSIX, as in ``doctor.json``) that the chosen kinds of findings flag.

    ``kinds=None`` means every kind that names images (all but ``class_balance``).
    A missing or malformed file, an unknown kind or a path that leaves the
    image folder is a one-line :class:`UsageError`.
    """
    path = Path(doctor_json)
    hint = "pass the doctor.json written by 'headstart doctor' (optionally :kind,kind)"
    chosen = tuple(EXCLUDABLE_KINDS if kinds is None else kinds)
    unknown = [k for k in chosen if k not in EXCLUDABLE_KINDS]
    if unknown or not chosen:
        raise UsageError(f"unknown doctor finding kind {unknown[0]!r}" if unknown else "no doctor finding kind given",
                         hint=f"use some of {', '.join(EXCLUDABLE_KINDS)}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"doctor file not found: {path}", hint=hint) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"cannot read {path} as JSON ({' '.join(str(exc).split())})", hint=hint) from None
    if not isinstance(data, dict) or any(not isinstance(data.get(k), list) for k in chosen):
        missing = next(k for k in chosen if not isinstance(data, dict) or not isinstance(data.get(k), list))
        raise UsageError(f"{path} is not a doctor report: no list of {missing!r}", hint=hint)
    out: set[str] = set()
    for kind in chosen:
        for n, item in enumerate(data[kind]):
            if not isinstance(item, dict):
                raise UsageError(f"{path}: {kind}[{n}] is not an object", hint=hint)
            for rel in _exclusion_paths(kind, item):
                if not isinstance(rel, str) or not rel or rel.startswith("/") or "\\" in rel \
                        or ".." in PurePosixPath(rel).parts or len(PurePosixPath(rel).parts) < 2:
                    raise UsageError(f"{path}: {kind}[{n}] has a bad path {rel!r} (must be class/file, relative)",
                                     hint=hint)
                out.add(rel)
    return out


# --------------------------------------------------------------------------- the checks


def _index(root: Path, validation_percentage: float, testing_percentage: float,
           workers: int) -> tuple[ImageIndex, list[str]]:
    """retrain's index and split; a folder of one class is indexed too (labels checks are then skipped)."""
    notes: list[str] = []
    with os.scandir(root) as it:
        classes = sorted(e.name for e in it if not e.name.startswith(".") and e.is_dir())
    labels = tuple(classes) if len(classes) == 1 else None
    if labels:
        notes.append(f"one class folder ('{classes[0]}'): label and leak-accuracy checks skipped, "
                     "a classifier needs at least two classes")
    index = index_image_dir(root, validation_percentage, testing_percentage, labels=labels,
                            require_training=False, workers=workers)
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


def doctor(image_dir: str | Path, *, output_dir: str | Path | None = None, bottleneck_dir: str | Path | None = None,
           backbone: str = "efficientnet_lite0", weights: str | Path | None = None, crop_pct: float = 1.0,
           runtime: str = "auto", precision: str = "auto", validation_percentage: float = 10.0,
           testing_percentage: float = 10.0, similarity: float | None = None, folds: int = DEFAULT_FOLDS,
           workers: int | None = None, progress: bool = False, seed: int = 0, ray: Any = None) -> DoctorReport:
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

    start = time.perf_counter()
    timing: dict[str, float] = {}
    if similarity is not None and not (isinstance(similarity, (int, float)) and 0 < similarity <= 1):
        raise UsageError(f"--similarity must be a cosine in (0, 1], got {similarity!r}",
                         hint=f"the measured default is {DEFAULT_SIMILARITY}")
    if not isinstance(folds, int) or folds < 2:
        raise UsageError(f"--folds must be an integer of at least 2, got {folds!r}", hint="e.g. --folds 5")
    root = _check_folder(image_dir)
    # cleanlab brings scikit-learn, scipy and pandas: seconds of imports, overlapped with the index and cache reads.
    importer = threading.Thread(target=_import_cleanlab, daemon=True)
    importer.start()
    if output_dir is not None and _inside(Path(output_dir), root):
        raise UsageError(f"--output_dir {output_dir} is inside the image folder (it would become a class)",
                         hint="write the report next to the images, e.g. --output_dir doctor")
    threads = workers or max(1, min(8, os.cpu_count() or 1))
    index, notes = _index(root, validation_percentage, testing_percentage, threads)
    net = resolve_backbone(backbone, weights, crop_pct=crop_pct)
    from . import doctor_findings as find

    dup_groups, dup_paths = find.exact_duplicate_groups(index, root)
    conflict_records = [ImageRecord(root / copies[0][0], copies[0][0], copies[0][1],
                                    which_split(copies[0][0], validation_percentage, testing_percentage), sha)
                        for sha, copies in dup_groups if len({c for _, c in copies}) > 1]
    with BottleneckCache(bottleneck_dir) as cache:
        bottlenecks = compute_bottlenecks(index.records, net, cache, runtime=runtime, precision=precision,
                                          workers=workers, progress=progress, ray=ray)
        conflict_vectors = (compute_bottlenecks(conflict_records, net, cache, runtime=bottlenecks.runtime or runtime,
                                                precision=precision, workers=workers, progress=False, ray=ray)
                            if conflict_records else None)
    timing["bottlenecks_s"] = time.perf_counter() - start
    records, x = bottlenecks.records, bottlenecks.vectors
    labels = index.labels
    y = index.label_ids(records)

    t = time.perf_counter()
    stats, prints = scan_images([r.path for r in records], threads)
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
    groups, pair_list = find.near_duplicate_groups(records, y, x, prints, nbrs, threshold)
    leaks_found = find.leak_findings(records, pair_list, dup_groups, root, validation_percentage,
                                     testing_percentage)
    acc, acc_clean = find.leak_accuracy(records, x, y, head,
                                        {f.path for f in leaks_found if f.split == "testing" and not f.exact})
    leaks_found = [replace(f, test_accuracy=acc, test_accuracy_without_leaks=acc_clean) for f in leaks_found]
    timing["duplicates_s"] = time.perf_counter() - t

    t = time.perf_counter()
    importer.join()
    issues: list[LabelIssue] = []
    if len(labels) > 1:
        issues, label_notes = find.label_issue_findings(records, x, y, labels, folds=folds, seed=seed,
                                                        oof=out_of_sample_probabilities)
        notes.extend(label_notes)
    timing["labels_s"] = time.perf_counter() - t

    outliers = find.outlier_findings(records, nbrs)
    image_issues = find.image_issue_findings(records, stats, index.skipped, bottlenecks.skipped, dup_paths, root)
    balance = find.class_balance_findings(records, labels)
    notes.append(f"near-duplicates: bottleneck cosine >= {threshold:g}"
                 + (" (--similarity)" if similarity is not None else " (measured default; --similarity overrides)")
                 + f", or fingerprint correlation >= {FINGERPRINT_MATCH} with cosine >= {FINGERPRINT_MIN_COSINE}")
    notes.append("exact duplicates within a class are already used once by retrain; across classes none is used")
    if nbrs.projected:
        notes.append(f"neighbour search ran on the vectors' {PCA_DIM} main directions first, "
                     "candidates re-checked at full dimension")
    timing["total_s"] = time.perf_counter() - start
    report = DoctorReport(root, labels, len(records), tuple(exact), tuple(groups), tuple(leaks_found), tuple(issues),
                          tuple(outliers), tuple(image_issues), tuple(balance), threshold,
                          "--similarity" if similarity is not None else "measured default", acc, acc_clean,
                          tuple(notes), tuple(index.skipped) + tuple(bottlenecks.skipped), net.name,
                          {k: round(v, 3) for k, v in timing.items()})
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
        raise UsageError(f"{out} is inside the image folder (it would become a class)",
                         hint="write the report next to the images instead")
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

__all__ = [
    "FINDING_KINDS",
    "ClassBalance",
    "DoctorReport",
    "ExactDuplicate",
    "ImageIssue",
    "LabelIssue",
    "Leak",
    "NearDuplicateGroup",
    "NearDuplicatePair",
    "Outlier",
    "doctor",
    "load_exclusions",
    "summary_line",
    "write_fix_script",
    "write_report",
]
