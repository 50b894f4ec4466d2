"""What the doctor reports: its thresholds, one frozen dataclass per kind of finding, and ``doctor.json``.

:class:`DoctorReport` holds every finding of one folder and :meth:`DoctorReport.to_dict`
is ``doctor.json``; :func:`load_exclusions` reads that file back for
``retrain --exclude_from``, so the format's writer and its reader sit together.  The
thresholds are here because the checks (:mod:`headstart.doctor_findings`), the
fix script (:mod:`headstart.doctor_report`) and the run itself
(:mod:`headstart.doctor`) all read them.  Nothing here reads an image or runs
a network.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from .data import SkippedImage
from .errors import UsageError

FINDING_KINDS = (
    "exact_duplicates",
    "near_duplicates",
    "leaks",
    "label_issues",
    "outliers",
    "image_issues",
    "class_balance",
)
EXCLUDABLE_KINDS = FINDING_KINDS[:-1]  # class_balance names classes, not images

# Bottleneck cosine at or above which two images are near-duplicates, and the
# aligned pixel correlation (headstart.pixel_match) that, with a cosine of at
# least PIXEL_MIN_COSINE, also makes a pair: re-encodes, resizes and crops of
# small images move the bottleneck as far as a look-alike, but not the pixels.
# Chosen on planted copies (docs/DOCTOR.md, bench_doctor.py).
DEFAULT_SIMILARITY = 0.97
PIXEL_MATCH = 0.995
PIXEL_MIN_COSINE = 0.5
# Below PIXEL_MATCH, down to PIXEL_FLOOR, a pair whose pixels line up PIXEL_RATIO times better (in 1 - correlation)
# than either image's next best match also counts (headstart.near_duplicates.near_duplicate_pairs).
PIXEL_FLOOR = 0.98
PIXEL_RATIO = 3.0
NEIGHBOURS = 20  # nearest neighbours searched per image (the candidates the pixels are compared for)
# Crops resized afterwards are searched for among the nearest few only (the costly part of the comparison),
# when their cosine or their plain pixel correlation is high.
SEARCH_NEIGHBOURS = 5
SEARCH_MIN_COSINE = 0.85
SEARCH_MIN_PIXELS = 0.9
PIXEL_NEIGHBOURS = 3  # nearest by pixels (8x8 thumbnails), compared too: re-encodes far in bottleneck space
OUTLIER_K = 5  # an outlier's score is its mean cosine distance to its OUTLIER_K nearest images
OUTLIER_Z = 3.5  # robust z-score (median, MAD) above which an image is listed as an outlier
OUTLIER_CERTAIN_Z = 6.0  # ... and above which the fix script quarantines it without asking
MIN_TRAINING_IMAGES = 20
MAX_IMBALANCE = 5.0
DEFAULT_FOLDS = 5
# The head of the K-fold: retrain's defaults (adam, 0.001, 1000 steps of 100).
# Measured against scikit-learn's LogisticRegression in docs/DOCTOR.md: better
# label-issue ranking and ten times faster.
HEAD_PARAMS: Mapping[str, Any] = {
    "optimizer": "adam",
    "learning_rate": 0.001,
    "how_many_training_steps": 1000,
    "train_batch_size": 100,
    "eval_step_interval": 1000,
}
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
    pixel_match: float  # best aligned correlation of the grey thumbnails (headstart.pixel_match)


@dataclass(frozen=True)
class NearDuplicateGroup:
    """Images joined by near-duplicate pairs; ``path`` is the one to keep (the fix script quarantines the rest)."""

    path: str
    reason: str
    score: float  # the surest pair: its bottleneck cosine or pixel correlation, whichever is higher
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
            "image_dir": str(self.image_dir),
            "images": self.n_images,
            "classes": len(self.labels),
            **{kind: len(getattr(self, kind)) for kind in FINDING_KINDS},
            "near_duplicate_pairs": self.near_duplicate_pairs,
            "class_balance_flagged": sum(c.flagged for c in self.class_balance),
            "similarity": self.similarity,
            "similarity_source": self.similarity_source,
            "test_accuracy": self.test_accuracy,
            "test_accuracy_without_leaks": self.test_accuracy_without_leaks,
            "skipped": len(self.skipped),
            "notes": list(self.notes),
            "backbone": self.backbone,
            "timing": dict(self.timing),
            "summary": summary_line(self),
        }


def summary_line(report: DoctorReport) -> str:
    """One sentence for a run report: "3 likely label errors, 12 near-duplicate pairs, 4 leaks (...)"."""

    def count(n: int, one: str, many: str) -> str:
        return f"{n} {one if n == 1 else many}"

    leaks = count(len(report.leaks), "leak", "leaks")
    if report.test_accuracy is not None and report.test_accuracy_without_leaks is not None and report.leaks:
        leaks += (
            f" (test accuracy {100 * report.test_accuracy:.1f} % -> "
            f"{100 * report.test_accuracy_without_leaks:.1f} % without them)"
        )
    likely = sum(issue.confident for issue in report.label_issues)
    return ", ".join(
        [
            count(likely, "likely label error", "likely label errors"),
            count(report.near_duplicate_pairs, "near-duplicate pair", "near-duplicate pairs"),
            leaks,
        ]
    )


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
        raise UsageError(
            f"unknown doctor finding kind {unknown[0]!r}" if unknown else "no doctor finding kind given",
            hint=f"use some of {', '.join(EXCLUDABLE_KINDS)}",
        )
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
                if (
                    not isinstance(rel, str)
                    or not rel
                    or rel.startswith("/")
                    or "\\" in rel
                    or ".." in PurePosixPath(rel).parts
                    or len(PurePosixPath(rel).parts) < 2
                ):
                    raise UsageError(
                        f"{path}: {kind}[{n}] has a bad path {rel!r} (must be class/file, relative)", hint=hint
                    )
                out.add(rel)
    return out


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
    "load_exclusions",
    "summary_line",
]
