"""Honest evaluation of a classifier, in pure numpy.

retrain.py reported one accuracy number.  Here every evaluation also carries
per-class precision/recall/F1, the confusion matrix, top-5 accuracy and the
cross-entropy, so a model that ignores a rare class cannot hide behind a good
average.  Numbers follow scikit-learn's definitions (``zero_division=0``) so
they can be checked against it, but this module needs numpy only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from .data import ImageRecord

_EPS = 1e-12


@dataclass(frozen=True)
class Misclassified:
    """A labelled image whose most probable label is another class's."""

    path: Path
    relpath: str
    true_label: str
    predicted_label: str
    score: float


def find_misclassified(
    records: Sequence[ImageRecord], proba: np.ndarray, labels: Sequence[str]
) -> tuple[Misclassified, ...]:
    """The records whose most probable label is not their folder's, with that label and its score."""
    predicted = proba.argmax(axis=1)
    return tuple(
        Misclassified(r.path, r.relpath, r.label, labels[p], float(proba[i, p]))
        for i, (r, p) in enumerate(zip(records, predicted))
        if labels[p] != r.label
    )


@dataclass(frozen=True)
class ClassMetrics:
    """Precision, recall and F1 of one class, and how many test images it has."""

    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True, eq=False)  # eq by value via to_dict(): ndarray fields break the generated __eq__
class Evaluation:
    """Everything measured on one labelled set; ``proba`` columns followed ``labels``."""

    labels: tuple[str, ...]
    n: int
    accuracy: float
    top5_accuracy: float | None
    macro_precision: float
    macro_recall: float
    macro_f1: float
    per_class: dict[str, ClassMetrics]
    confusion_matrix: np.ndarray
    cross_entropy: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (plain floats, ints and lists) for manifests and reports."""
        return {
            "accuracy": float(self.accuracy),
            "n": int(self.n),
            "top5_accuracy": None if self.top5_accuracy is None else float(self.top5_accuracy),
            "macro_precision": float(self.macro_precision),
            "macro_recall": float(self.macro_recall),
            "macro_f1": float(self.macro_f1),
            "cross_entropy": float(self.cross_entropy),
            "per_class": {
                label: {
                    "precision": float(m.precision),
                    "recall": float(m.recall),
                    "f1": float(m.f1),
                    "support": int(m.support),
                }
                for label, m in self.per_class.items()
            },
            "confusion_matrix": np.asarray(self.confusion_matrix, dtype=np.int64).tolist(),
            "labels": list(self.labels),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Evaluation:
        """Inverse of :meth:`to_dict`."""
        top5 = d.get("top5_accuracy")
        return cls(
            labels=tuple(str(x) for x in d["labels"]),
            n=int(d["n"]),
            accuracy=float(d["accuracy"]),
            top5_accuracy=None if top5 is None else float(top5),
            macro_precision=float(d["macro_precision"]),
            macro_recall=float(d["macro_recall"]),
            macro_f1=float(d["macro_f1"]),
            per_class={
                str(label): ClassMetrics(
                    precision=float(m["precision"]),
                    recall=float(m["recall"]),
                    f1=float(m["f1"]),
                    support=int(m["support"]),
                )
                for label, m in d["per_class"].items()
            },
            confusion_matrix=np.asarray(d["confusion_matrix"], dtype=np.int64).reshape(
                len(d["labels"]), len(d["labels"])
            ),
            cross_entropy=float(d["cross_entropy"]),
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Evaluation):
            return NotImplemented
        return self.to_dict() == other.to_dict()


def _as_indices(y: Any, n_classes: int, name: str) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.floating) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise ValueError(f"{name} must hold integer class indices, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if arr.size and (arr.min() < 0 or arr.max() >= n_classes):
        raise ValueError(f"{name} holds class indices outside 0..{n_classes - 1}")
    return arr


def _as_proba(proba: Any, n: int, n_classes: int | None = None) -> np.ndarray:
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != n:
        raise ValueError(f"proba must have shape (n_samples={n}, n_classes), got {p.shape}")
    if n_classes is not None and p.shape[1] != n_classes:
        raise ValueError(f"proba has {p.shape[1]} columns but there are {n_classes} labels")
    if not np.all(np.isfinite(p)):
        raise ValueError("proba contains NaN or infinity")
    return p


def confusion_matrix(y_true: Any, y_pred: Any, n_classes: int) -> np.ndarray:
    """int64 ``[C, C]`` counts; rows are true classes, columns predicted ones."""
    t = _as_indices(y_true, n_classes, "y_true")
    p = _as_indices(y_pred, n_classes, "y_pred")
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in length ({t.size} vs {p.size})")
    counts = np.bincount(t * n_classes + p, minlength=n_classes * n_classes)
    return counts.reshape(n_classes, n_classes).astype(np.int64)


def top_k_accuracy(y_true: Any, proba: Any, k: int) -> float:
    """Share of samples whose true class is among the ``k`` highest scores.

    Ties rank the lower class index first, the same rule as ``argmax``, so
    ``top_k_accuracy(y, p, 1)`` always equals the plain accuracy.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    t = np.asarray(y_true)
    if t.ndim != 1 or t.size == 0:
        raise ValueError(f"y_true must be a non-empty 1-D array, got shape {t.shape}")
    p = _as_proba(proba, t.size)
    t = _as_indices(t, p.shape[1], "y_true")
    true_score = p[np.arange(t.size), t][:, None]
    cols = np.arange(p.shape[1])[None, :]
    rank = np.sum((p > true_score) | ((p == true_score) & (cols < t[:, None])), axis=1)
    return float(np.mean(rank < k))


def evaluate(y_true: np.ndarray, proba: np.ndarray, labels: Sequence[str]) -> Evaluation:
    """Score predicted probabilities against true class indices.

    Macro averages run over the classes that occur in ``y_true`` or in the
    predictions (scikit-learn's default): a class that is neither present nor
    predicted carries no evidence, and counting it as 0.0 would punish a small
    test split rather than the model.
    """
    labels = tuple(str(x) for x in labels)
    n_classes = len(labels)
    if n_classes < 1:
        raise ValueError("labels is empty")
    if len(set(labels)) != n_classes:
        raise ValueError("labels contains duplicates")
    t = np.asarray(y_true)
    if t.ndim != 1 or t.size == 0:
        raise ValueError(f"cannot evaluate on {t.size} samples: y_true must be a non-empty 1-D array")
    p = _as_proba(proba, t.size, n_classes)
    t = _as_indices(t, n_classes, "y_true")
    n = int(t.size)

    pred = np.argmax(p, axis=1)
    cm = confusion_matrix(t, pred, n_classes)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    precision = np.divide(tp, predicted, out=np.zeros(n_classes), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(n_classes), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(n_classes), where=denom > 0)

    seen = (support > 0) | (predicted > 0)
    true_p = np.clip(p[np.arange(n), t], _EPS, 1.0)
    return Evaluation(
        labels=labels,
        n=n,
        accuracy=float(tp.sum() / n),
        top5_accuracy=top_k_accuracy(t, p, 5) if n_classes > 5 else None,
        macro_precision=float(precision[seen].mean()),
        macro_recall=float(recall[seen].mean()),
        macro_f1=float(f1[seen].mean()),
        per_class={
            label: ClassMetrics(float(precision[i]), float(recall[i]), float(f1[i]), int(support[i]))
            for i, label in enumerate(labels)
        },
        confusion_matrix=cm,
        cross_entropy=float(np.mean(-np.log(true_p))) + 0.0,  # + 0.0: -log(1) is -0.0
    )


def _fit(text: str, width: int) -> str:
    """Cut ``text`` to ``width`` characters, marking the cut with '~'."""
    return text if len(text) <= width else text[: max(width - 1, 1)] + "~"


def format_evaluation(ev: Evaluation, title: str = "Test", *, details: bool = True) -> str:
    """Plain-text report: accuracy with N, per-class table, confusion matrix.

    ``details=False`` keeps the accuracy lines only (``-q``).  A class with no
    test image shows ``n/a`` where its numbers are undefined, with a footnote.
    """
    lines = [f"{title} accuracy = {ev.accuracy:.1%} (N={ev.n})"]
    if ev.top5_accuracy is not None:
        lines.append(f"{title} top-5 accuracy = {ev.top5_accuracy:.1%}")
    if not details:
        return "\n".join(lines)
    lines.append(f"{title} cross-entropy = {ev.cross_entropy:.4f}")
    lines.append("")

    cm = np.asarray(ev.confusion_matrix)
    predicted = cm.sum(axis=0) if cm.size else np.zeros(len(ev.labels), dtype=np.int64)
    name_w = max(len("macro avg"), min(24, max(len(x) for x in ev.labels)))
    header = f"{'class':<{name_w}}  {'precision':>9}  {'recall':>6}  {'f1':>6}  {'support':>7}"
    lines += [header, "-" * len(header)]
    for i, label in enumerate(ev.labels):
        m = ev.per_class[label]
        undefined = m.support == 0
        precision = NOT_APPLICABLE if undefined and predicted[i] == 0 else f"{m.precision:.3f}"
        recall, f1 = (NOT_APPLICABLE, NOT_APPLICABLE) if undefined else (f"{m.recall:.3f}", f"{m.f1:.3f}")
        lines.append(f"{_fit(label, name_w):<{name_w}}  {precision:>9}  {recall:>6}  {f1:>6}  {m.support:>7d}")
    lines.append("-" * len(header))
    lines.append(
        f"{'macro avg':<{name_w}}  {ev.macro_precision:>9.3f}  {ev.macro_recall:>6.3f}  {ev.macro_f1:>6.3f}  {ev.n:>7d}"
    )
    note = empty_classes_note(ev)
    if note:
        lines.append(note)
    lines.append("")

    cell_w = max(3, len(str(int(cm.max()) if cm.size else 0)), min(6, max(len(x) for x in ev.labels)))
    row_w = min(24, max(len(x) for x in ev.labels))
    lines.append("Confusion matrix (rows = true class, columns = predicted class):")
    lines.append(" " * row_w + "".join(f"  {_fit(x, cell_w):>{cell_w}}" for x in ev.labels))
    for label, row in zip(ev.labels, cm):
        lines.append(f"{_fit(label, row_w):<{row_w}}" + "".join(f"  {int(v):>{cell_w}d}" for v in row))
    return "\n".join(lines)


# ---------------------------------------------------------------- how much a small test set can say

NOT_APPLICABLE = "n/a"
MIN_TEST_IMAGES = 30  # below this an accuracy's 95 % interval is wider than about +-15 points
MIN_CLASS_TEST_IMAGES = 5


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of a proportion (``successes`` of ``n``), e.g. an accuracy.

    Unlike the normal approximation it stays inside [0, 1] and is honest at 0 %
    and 100 %, which small test sets often hit.
    """
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in 0..{n}, got {successes}")
    z = _normal_quantile(0.5 + confidence / 2)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # At 0 % and 100 % the bound is exact; rounding would leave 3e-17 or 0.99999...
    return (0.0 if successes == 0 else centre - half), (1.0 if successes == n else centre + half)


def _normal_quantile(q: float) -> float:
    """Inverse of the standard normal CDF (bisection on erf: exact enough, no scipy)."""
    lo, hi = -10.0, 10.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < q:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def small_sample_warnings(ev: Evaluation, what: str = "test") -> list[str]:
    """One line each: the set is too small for its accuracy to mean much, or some classes are.

    The first carries the accuracy's 95 % Wilson interval, so the reader sees how
    wide "79 %" really is.
    """
    return small_sample_notes(ev.n, ev.accuracy, {label: m.support for label, m in ev.per_class.items()}, what)


def small_sample_notes(n: int, accuracy: float, supports: Mapping[str, int], what: str = "test") -> list[str]:
    """:func:`small_sample_warnings` from plain numbers (a report reads them from metrics.json)."""
    notes = []
    if 0 < n < MIN_TEST_IMAGES:
        low, high = wilson_interval(int(round(accuracy * n)), n)
        notes.append(
            f"only {n} {what} images: an accuracy of {accuracy:.1%} is not meaningful "
            f"(95% confidence interval {low:.1%} to {high:.1%}); {MIN_TEST_IMAGES} or more are needed"
        )
    few = [(label, k) for label, k in supports.items() if 0 < k < MIN_CLASS_TEST_IMAGES]
    if few:
        cut = len(few) if len(few) <= 10 else 8
        shown = ", ".join(f"{label} ({k})" for label, k in few[:cut]) + (
            f" and {len(few) - cut} more" if len(few) > cut else ""
        )
        notes.append(
            f"{len(few)} of {len(supports)} classes have under {MIN_CLASS_TEST_IMAGES} {what} images, "
            f"so their precision, recall and F1 are not meaningful: {shown}"
        )
    return notes


def empty_classes_note(ev: Evaluation) -> str | None:
    """The footnote for ``n/a`` rows: which classes had no test image, and why their numbers are undefined."""
    return empty_classes_text([label for label, m in ev.per_class.items() if m.support == 0])


def empty_classes_text(empty: Sequence[str]) -> str | None:
    if not empty:
        return None
    names = ", ".join(empty[:8]) + (f" and {len(empty) - 8} more" if len(empty) > 8 else "")
    return (
        f"n/a: no test image of {names}, so recall and F1 are undefined (precision too, when no "
        "image was predicted as it)"
    )


# ---------------------------------------------------------------- is the learning rate sane?


def learning_rate_warning(history: Sequence[Mapping[str, Any]], n_classes: int, learning_rate: float) -> str | None:
    """One line when the training log says ``learning_rate`` is too high, else None.

    Signs, measured on Fashion-MNIST bottlenecks (sane rates show none of them):
    the first step lifts the training loss far above chance, ``ln(n_classes)``,
    the loss a uniform guess gets; the validation loss never gets near chance;
    or it ends far above its best.  Divergence (NaN) is reported elsewhere.
    """
    rows = [h for h in history if _finite(h.get("cross_entropy"))]
    if not rows or n_classes < 2:
        return None
    chance = math.log(n_classes)
    try_rate = f"try --learning_rate {learning_rate / 10:g} or lower"
    first = rows[0]["cross_entropy"]
    if first > 2 * chance + 1:
        return (
            f"--learning_rate {learning_rate:g} looks too high: the first step took the training loss to "
            f"{first:.2f}, far above the {chance:.2f} of a uniform guess; {try_rate}"
        )
    val = [(h["step"], h["validation_cross_entropy"]) for h in rows if _finite(h.get("validation_cross_entropy"))]
    if len(val) < 3:
        return None
    best_step, best = min(val, key=lambda sv: sv[1])
    final = val[-1][1]
    if best > 1.5 * chance:
        return (
            f"--learning_rate {learning_rate:g} looks too high: the validation loss never fell below {best:.2f}, "
            f"worse than the {chance:.2f} of a uniform guess; {try_rate}"
        )
    if final > max(2 * best, best + 1.0):
        return (
            f"--learning_rate {learning_rate:g} looks too high: the validation loss ended at {final:.2f}, "
            f"far above its best of {best:.2f} (step {best_step}); {try_rate}"
        )
    return None


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
