"""Honest confidence: temperature scaling, calibration error, and an out-of-distribution score.

A softmax head says 0.99 for images it has never seen anything like.  Two
things fix that, both fitted on the validation split (never on test images):

* **Temperature scaling** (Guo et al., 2017): one number ``T`` divides the
  logits so that the validation negative log-likelihood is lowest.  It changes
  no prediction, only how sure they sound; ``T`` is folded into the exported graph.
* **A novelty score** for the "unknown" answer.  Measured on Fashion-MNIST
  (docs/PERFORMANCE.md, "The unknown answer"), the sum of two standardised
  parts beat either alone and the energy score: one minus the calibrated top
  probability (low for images the head is unsure about) plus the cosine
  distance of the bottleneck to the nearest class mean (high for images unlike
  every class, however confident the head is).  The threshold is the
  ``accept`` quantile of the validation scores, so that share of in-distribution
  images is accepted.

Pure numpy: it runs wherever the head runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

DEFAULT_UNKNOWN_ACCEPT = 0.95
ECE_BINS = 15
# The temperatures fit_temperature searches.  A saved head whose temperature lies outside is refused on load
# (head.from_state): a float32 logit divided by 1e-300 is infinite, and its probabilities NaN.
TEMPERATURE_RANGE = (0.05, 20.0)
_LOG_T_RANGE = (math.log(TEMPERATURE_RANGE[0]), math.log(TEMPERATURE_RANGE[1]))


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _nll(logits: np.ndarray, y: np.ndarray, temperature: float) -> float:
    z = logits.astype(np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return -float(logp[np.arange(len(y)), y].mean())


def fit_temperature(logits: np.ndarray, y: np.ndarray, iterations: int = 60) -> float:
    """The ``T`` minimising the negative log-likelihood of ``softmax(logits / T)``: golden-section on log T.

    The NLL is convex in ``1/T``, so a bracketing search finds its minimum; with
    no labelled images there is nothing to fit and ``T`` stays 1.
    """
    if len(y) == 0:
        return 1.0
    lo, hi = _LOG_T_RANGE
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = _nll(logits, y, math.exp(a)), _nll(logits, y, math.exp(b))
    for _ in range(iterations):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = _nll(logits, y, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = _nll(logits, y, math.exp(b))
    return float(math.exp((lo + hi) / 2))


def reliability(proba: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> list[dict[str, float]]:
    """Per confidence bin: its range, mean confidence, accuracy and share of images (empty bins left out)."""
    confidence = proba.max(axis=1)
    correct = proba.argmax(axis=1) == y
    edges = np.linspace(0.0, 1.0, bins + 1)
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (confidence > lo) & (confidence <= hi) if lo > 0 else (confidence <= hi)
        if inside.any():
            rows.append(
                {
                    "lo": float(lo),
                    "hi": float(hi),
                    "confidence": float(confidence[inside].mean()),
                    "accuracy": float(correct[inside].mean()),
                    "share": float(inside.mean()),
                    "n": int(inside.sum()),
                }
            )
    return rows


def expected_calibration_error(proba: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE: the share-weighted gap between confidence and accuracy over equal-width confidence bins."""
    if len(y) == 0:
        return float("nan")
    return float(sum(r["share"] * abs(r["accuracy"] - r["confidence"]) for r in reliability(proba, y, bins)))


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@dataclass(frozen=True, eq=False)
class NoveltyScore:
    """How unlike the training classes an image is; past ``threshold`` the answer is "unknown"."""

    class_means: np.ndarray  # [classes, D] unit vectors: the mean unit bottleneck of each class
    msp_mean: float
    msp_std: float
    cos_mean: float
    cos_std: float
    threshold: float | None  # None: the unknown answer is off
    accept: float  # share of validation images accepted at the threshold

    def score(self, features: np.ndarray, proba: np.ndarray) -> np.ndarray:
        """Higher = more novel: standardised (1 - top probability) + standardised distance to the nearest class."""
        msp = 1.0 - proba.max(axis=1)
        cos = 1.0 - (_unit(features) @ self.class_means.T).max(axis=1)
        return ((msp - self.msp_mean) / self.msp_std + (cos - self.cos_mean) / self.cos_std).astype(np.float32)

    def is_unknown(self, scores: np.ndarray) -> np.ndarray:
        if self.threshold is None:
            return np.zeros(len(scores), dtype=bool)
        return scores > self.threshold

    def to_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        config = {
            "method": "msp+nearest-class-cosine",
            "msp_mean": self.msp_mean,
            "msp_std": self.msp_std,
            "cos_mean": self.cos_mean,
            "cos_std": self.cos_std,
            "threshold": self.threshold,
            "accept": self.accept,
        }
        return {"novelty.class_means": np.ascontiguousarray(self.class_means, dtype=np.float32)}, config

    @classmethod
    def from_state(cls, tensors: dict[str, np.ndarray], config: dict[str, Any]) -> NoveltyScore:
        means = tensors.get("novelty.class_means")
        if means is None or means.ndim != 2:
            raise ValueError("novelty.class_means is missing or not a matrix")
        numbers = {}
        for key in ("msp_mean", "msp_std", "cos_mean", "cos_std", "accept"):
            value = config.get(key)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise ValueError(f"novelty.{key} must be a number, got {value!r}")
            numbers[key] = float(value)
        if numbers["msp_std"] <= 0 or numbers["cos_std"] <= 0:
            raise ValueError("novelty standard deviations must be positive")
        threshold = config.get("threshold")
        if threshold is not None and (not isinstance(threshold, (int, float)) or not math.isfinite(threshold)):
            raise ValueError(f"novelty.threshold must be a number or null, got {threshold!r}")
        return cls(
            np.asarray(means, dtype=np.float32),
            numbers["msp_mean"],
            numbers["msp_std"],
            numbers["cos_mean"],
            numbers["cos_std"],
            None if threshold is None else float(threshold),
            numbers["accept"],
        )


def fit_novelty(
    x_train: np.ndarray,
    y_train: np.ndarray,
    n_classes: int,
    x_val: np.ndarray,
    proba_val: np.ndarray,
    accept: float = DEFAULT_UNKNOWN_ACCEPT,
    proba_train: np.ndarray | None = None,
) -> NoveltyScore:
    """Class means from the training bottlenecks; scale and threshold from the validation split.

    ``accept`` is the share of in-distribution (validation) images to accept; 0
    turns the unknown answer off (the score is still reported).  Without
    validation images the training images stand in (``proba_train``), which
    accepts a little more than asked, since the head has seen them.
    """
    unit = _unit(x_train)
    means = np.stack(
        [unit[y_train == c].mean(axis=0) if np.any(y_train == c) else np.zeros(unit.shape[1]) for c in range(n_classes)]
    )
    means = _unit(means)
    ref_x, ref_p = (x_val, proba_val) if len(x_val) else (x_train, proba_train)
    if ref_p is None or len(ref_x) == 0:
        raise ValueError("fit_novelty needs validation (or training) probabilities")
    msp = 1.0 - ref_p.max(axis=1)
    cos = 1.0 - (_unit(ref_x) @ means.T).max(axis=1)
    base = NoveltyScore(
        means,
        float(msp.mean()),
        float(max(msp.std(), 1e-6)),
        float(cos.mean()),
        float(max(cos.std(), 1e-6)),
        None,
        float(accept),
    )
    if accept <= 0:
        return base
    scores = base.score(ref_x, ref_p)
    threshold = float(np.quantile(scores, min(float(accept), 1.0)))
    return NoveltyScore(
        base.class_means, base.msp_mean, base.msp_std, base.cos_mean, base.cos_std, threshold, float(accept)
    )


__all__ = [
    "DEFAULT_UNKNOWN_ACCEPT",
    "TEMPERATURE_RANGE",
    "NoveltyScore",
    "expected_calibration_error",
    "fit_novelty",
    "fit_temperature",
    "reliability",
    "softmax",
]


def calibrate_head(
    head: Any,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    accept: float = DEFAULT_UNKNOWN_ACCEPT,
) -> NoveltyScore:
    """Fit ``head.temperature_`` on the validation split, then the novelty score on the calibrated head."""
    head.temperature_ = fit_temperature(head.logits(x_val), y_val) if len(y_val) else 1.0
    n_classes = len(head.classes_)
    proba_train = head.predict_proba(x_train) if not len(y_val) else None
    return fit_novelty(
        x_train,
        y_train,
        n_classes,
        x_val,
        head.predict_proba(x_val) if len(y_val) else np.zeros((0, n_classes), np.float32),
        accept,
        proba_train=proba_train,
    )


def calibration_report(head: Any, novelty: NoveltyScore, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """``metrics.json``'s ``calibration`` and ``unknown`` sections, measured on labelled images ``x``."""
    raw = softmax(head.logits(x).astype(np.float64))
    calibrated = head.predict_proba(x)
    scores = novelty.score(x, calibrated)
    unknown = novelty.is_unknown(scores)
    return {
        "calibration": {
            "ece_before": expected_calibration_error(raw, y),
            "ece_after": expected_calibration_error(calibrated, y),
            "temperature": float(head.temperature_),
            "bins": ECE_BINS,
            "reliability_before": reliability(raw, y),
            "reliability_after": reliability(calibrated, y),
        },
        "unknown": {
            "accept": novelty.accept,
            "threshold": novelty.threshold,
            "n": int(len(y)),
            "accepted": float(1.0 - unknown.mean()) if len(y) else None,
            "method": "msp+nearest-class-cosine",
        },
    }
