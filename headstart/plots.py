"""The plots of headstart's reports, as PNG bytes (matplotlib's Agg backend, imported when drawn).

Each ``plot_*`` function returns the PNG, or None when there is nothing to
draw, so the HTML reports and the lab guide use the very same figures.
Matplotlib's own warnings (about an empty axis, a log scale) are about the
figure, not the user's data, so they never reach the terminal.
"""

from __future__ import annotations

import functools
import io
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

_DPI = 100
LOSS_FLOOR = 1e-6  # a loss of 0 (a perfect fit) has no logarithm: drawn at this floor instead
F = TypeVar("F", bound=Callable[..., Any])


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    plt = _pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def _floored(value: Any) -> float | None:
    """A loss ready for a log axis: None stays a gap, NaN (divergence) a gap, 0 the floor."""
    if value is None:
        return None
    value = float(value)
    return value if math.isnan(value) or value > LOSS_FLOOR else LOSS_FLOOR


def _quiet(draw: F) -> F:
    """Run a plot function with Python warnings silenced (matplotlib's are about the figure)."""

    @functools.wraps(draw)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return draw(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


# ---------------------------------------------------------------- plots


@_quiet
def plot_training_curves(history: Sequence[Mapping[str, Any]]) -> bytes | None:
    """Cross entropy, and training and validation accuracy, against the training step."""
    rows = [h for h in history if h.get("cross_entropy") is not None]
    if not rows:
        return None
    plt = _pyplot()
    steps = [h["step"] for h in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.4))
    train_loss = [_floored(h["cross_entropy"]) for h in rows]
    val_loss = [_floored(h.get("validation_cross_entropy")) for h in rows]
    left.plot(steps, train_loss, label="training batch")
    if any(v is not None for v in val_loss):
        left.plot(steps, val_loss, label="validation")
    if any(v == LOSS_FLOOR for v in train_loss + val_loss):
        left.axhline(LOSS_FLOOR, color="grey", linestyle=":", linewidth=0.8, label=f"0, drawn at {LOSS_FLOOR:g}")
    left.set(xlabel="step", ylabel="cross entropy", title="Loss")
    left.set_yscale("log")
    left.legend()
    right.plot(steps, [h["train_accuracy"] for h in rows], label="training batch")
    if any(h.get("validation_accuracy") is not None for h in rows):
        right.plot(steps, [h.get("validation_accuracy") for h in rows], label="validation")
    right.set(xlabel="step", ylabel="accuracy", title="Accuracy", ylim=(0, 1.02))
    right.legend(loc="lower right")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    return _png(fig)


@_quiet
def plot_confusion_matrix(matrix: Sequence[Sequence[int]], labels: Sequence[str]) -> bytes | None:
    """Heat map of the confusion matrix, rows true classes, normalised per row, with counts written in."""
    cm = np.asarray(matrix, dtype=np.float64)
    if cm.size == 0:
        return None
    plt = _pyplot()
    totals = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, totals, out=np.zeros_like(cm), where=totals > 0)
    n = len(labels)
    side = max(3.5, 0.42 * n + 1.8)
    fig, ax = plt.subplots(figsize=(side + 1, side))
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), labels=labels, rotation=45, ha="right")
    ax.set_yticks(range(n), labels=labels)
    ax.set(xlabel="predicted class", ylabel="true class", title="Confusion matrix (test set)")
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(
                        j,
                        i,
                        str(int(cm[i, j])),
                        ha="center",
                        va="center",
                        fontsize=8,
                        color="white" if share[i, j] > 0.5 else "black",
                    )
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    return _png(fig)


@_quiet
def plot_reliability(
    before: Sequence[Mapping[str, float]], after: Sequence[Mapping[str, float]], ece: tuple[float, float] | None = None
) -> bytes | None:
    """Reliability diagram: accuracy against confidence per bin, before and after temperature scaling."""
    if not before and not after:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    ax.plot([0, 1], [0, 1], color="#999", lw=1, ls="--", label="perfectly calibrated")
    for rows, name, colour in ((before, "before", "#d62728"), (after, "after (temperature)", "#1f77b4")):
        if rows:
            ax.plot(
                [r["confidence"] for r in rows], [r["accuracy"] for r in rows], "o-", color=colour, ms=4, label=name
            )
    ax.set(
        xlim=(0, 1.02),
        ylim=(0, 1.02),
        xlabel="confidence (top probability)",
        ylabel="accuracy",
        title="Reliability (test set)" + (f": ECE {ece[0]:.3f} -> {ece[1]:.3f}" if ece else ""),
    )
    ax.legend(loc="lower right", fontsize=8)
    return _png(fig)


def _axis_values(rows: Sequence[Mapping[str, Any]], key: str) -> tuple[list[Any], bool]:
    values = sorted({r[key] for r in rows}, key=lambda v: (isinstance(v, str), v))
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    return values, numeric


@_quiet
def plot_sweep(rows: Sequence[Mapping[str, Any]], swept: Sequence[str]) -> bytes | None:
    """Test accuracy and training time against each swept flag (one panel pair per flag).

    With two or more swept flags, the first swept flag is on the x axis and each
    value of the second draws its own line, so interactions stay visible.
    """
    if not rows:
        return None
    plt = _pyplot()
    flags = list(swept) or ["learning_rate"]
    fig, axes = plt.subplots(len(flags), 2, figsize=(10, 3.3 * len(flags)), squeeze=False)
    for k, x_key in enumerate(flags):
        others = [f for f in flags if f != x_key]
        group_key = others[0] if others else None
        groups = _axis_values(rows, group_key)[0] if group_key else [None]
        xs, numeric = _axis_values(rows, x_key)
        for metric, ax, label in (
            ("test_accuracy", axes[k][0], "test accuracy"),
            ("train_s", axes[k][1], "training time (s)"),
        ):
            for g in groups:
                mean: dict[Any, list[float]] = {}
                err: dict[Any, list[float]] = {}
                crossed: list[Any] = []
                for r in rows:
                    if group_key and r[group_key] != g:
                        continue
                    if r.get(metric) is None:
                        continue
                    mean.setdefault(r[x_key], []).append(r[metric])
                    if metric == "test_accuracy":
                        err.setdefault(r[x_key], []).append(r.get("test_accuracy_std") or 0.0)
                    if r.get("diverged"):
                        crossed.append(r[x_key])
                pts = [x for x in xs if x in mean]
                if not pts:
                    continue
                pos = pts if numeric else [xs.index(x) for x in pts]
                ys = [float(np.mean(mean[x])) for x in pts]
                name = f"{group_key}={g}" if group_key else None
                if metric == "test_accuracy":
                    ax.errorbar(pos, ys, yerr=[float(np.mean(err[x])) for x in pts], marker="o", capsize=3, label=name)
                    for x in crossed:
                        ax.plot(
                            x if numeric else xs.index(x),
                            float(np.mean(mean[x])),
                            "rx",
                            markersize=12,
                            label="diverged" if x == crossed[0] and g == groups[0] else None,
                        )
                else:
                    ax.plot(pos, ys, marker="o", label=name)
            if numeric and len(xs) > 1 and min(xs) > 0 and max(xs) / min(xs) >= 20:
                ax.set_xscale("log")
            if not numeric:
                ax.set_xticks(range(len(xs)), labels=[str(x) for x in xs])
            ax.set(xlabel=x_key, ylabel=label)
            ax.grid(alpha=0.3)
            if group_key or (metric == "test_accuracy" and any(r.get("diverged") for r in rows)):
                ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


@_quiet
def plot_curve(rows: Sequence[Mapping[str, Any]]) -> bytes | None:
    """Test accuracy (mean and spread over repeats) against training images per class."""
    if not rows:
        return None
    plt = _pyplot()
    xs = [float(r["train_images_per_class"]) for r in rows]
    ys = [r["accuracy_mean"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.errorbar(xs, ys, yerr=[r["accuracy_std"] for r in rows], marker="o", capsize=4)
    lows, highs = (
        [r.get("accuracy_min", y) for r, y in zip(rows, ys)],
        [r.get("accuracy_max", y) for r, y in zip(rows, ys)],
    )
    ax.fill_between(xs, lows, highs, alpha=0.15, label="min–max over repeats")
    for r, x, y in zip(rows, xs, ys):
        if r["images_per_class"] == "all":
            ax.annotate("all", (x, y), textcoords="offset points", xytext=(0, 8), ha="center")
    ax.set_xscale("log")
    ax.set(
        xlabel="training images per class",
        ylabel=f"test accuracy (N={rows[0]['n_test']})",
        title="Learning curve",
        ylim=(0, 1.02),
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower right")
    return _png(fig)


@_quiet
def plot_compare(rows: Sequence[Mapping[str, Any]]) -> bytes | None:
    """Test accuracy against batch-1 latency, one point per backbone (up and left is better)."""
    points = [r for r in rows if r.get("latency_ms") is not None and r.get("test_accuracy") is not None]
    if not points:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in points:
        ax.scatter(r["latency_ms"], r["test_accuracy"], s=40 + 8 * float(r.get("gmacs") or 0) * 10)
        ax.annotate(
            f"{r['backbone']}\n{r.get('params_m', '?')}M params, {r.get('gmacs', '?')} GMACs",
            (r["latency_ms"], r["test_accuracy"]),
            textcoords="offset points",
            xytext=(6, 4),
            fontsize=8,
        )
    ax.set(
        xlabel=f"batch-1 latency (ms, {points[0].get('runtime')})",
        ylabel="test accuracy",
        title="Accuracy against latency",
    )
    ax.margins(x=0.35, y=0.25)
    ax.grid(alpha=0.3)
    return _png(fig)


__all__ = [
    "LOSS_FLOOR",
    "plot_compare",
    "plot_confusion_matrix",
    "plot_curve",
    "plot_reliability",
    "plot_sweep",
    "plot_training_curves",
]
