"""The head's numerics: initialisation, loss and gradients, optimizers, batch sampling, input checks.

Kept apart from :mod:`headstart.head` (the estimator and its persistence) so each
stays readable; everything here is pure numpy and float32 unless the inputs are
float64 (the gradient tests use that).
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import numpy as np

from .checks import is_int as _is_int

Weights = dict[str, np.ndarray]

OPTIMIZERS = ("sgd", "momentum", "adam")
SAMPLING = ("class", "image")
_MOMENTUM = 0.9
_ADAM_BETA1, _ADAM_BETA2, _ADAM_EPS = 0.9, 0.999, 1e-8


# ---------------------------------------------------------------------- the math
def _single_blas_thread() -> contextlib.AbstractContextManager[Any]:
    """Limit BLAS to one thread while training, when threadpoolctl is installed.

    A training step multiplies matrices of ~100 x 1280 x 10: too small to split.
    Two BLAS threads spinning on a busy 2-core machine made 4000 steps up to 5x
    slower than one thread; even large hidden layers ran faster on one thread there.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: only speed depends on it
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _truncated_normal(rng: np.random.Generator, shape: tuple[int, ...], stddev: float) -> np.ndarray:
    """tf.truncated_normal: normal draws beyond 2 standard deviations are re-drawn."""
    out = rng.standard_normal(shape, dtype=np.float32)
    bad = np.abs(out) > 2.0
    while bad.any():
        out[bad] = rng.standard_normal(int(bad.sum()), dtype=np.float32)
        bad = np.abs(out) > 2.0
    return out * np.float32(stddev)


def _init_weights(rng: np.random.Generator, n_features: int, hidden: int, n_classes: int) -> Weights:
    """He-normal ReLU layer (if any), then retrain.py's final layer: N(0, 0.001) truncated, zero bias."""
    weights: Weights = {}
    fan_in = n_features
    if hidden:
        scale = np.float32(math.sqrt(2.0 / n_features))
        weights["hidden.weight"] = rng.standard_normal((n_features, hidden), dtype=np.float32) * scale
        weights["hidden.bias"] = np.zeros(hidden, dtype=np.float32)
        fan_in = hidden
    weights["final.weight"] = _truncated_normal(rng, (fan_in, n_classes), 0.001)
    weights["final.bias"] = np.zeros(n_classes, dtype=np.float32)
    return weights


def _log_softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise log softmax, stable for any finite logits (the max is subtracted first)."""
    s = z - z.max(axis=1, keepdims=True)
    return s - np.log(np.exp(s).sum(axis=1, keepdims=True))


def _logits(w: Weights, X: np.ndarray) -> np.ndarray:
    """Inference forward pass (no dropout)."""
    if "hidden.weight" in w:
        X = np.maximum(X @ w["hidden.weight"] + w["hidden.bias"], 0)
    return X @ w["final.weight"] + w["final.bias"]


def _accuracy_and_cross_entropy(w: Weights, X: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    z = _logits(w, X)
    logp = _log_softmax(z)
    accuracy = float(np.mean(np.argmax(z, axis=1) == y))
    cross_entropy = -float(logp[np.arange(len(y)), y].mean(dtype=np.float64))
    # Rounding can leave -0.0 or -1e-17 for a perfect fit; NaN (divergence) must stay NaN.
    return accuracy, 0.0 if cross_entropy <= 0 else cross_entropy


def _loss_and_grads(
    w: Weights,
    X: np.ndarray,
    y: np.ndarray,
    weight_decay: float = 0.0,
    keep: np.ndarray | None = None,
    label_smoothing: float = 0.0,
) -> tuple[float, Weights]:
    """Mean softmax cross-entropy of a batch and the gradients of the training objective.

    The objective is ``cross_entropy + weight_decay / 2 * sum(||W||²)`` over weight
    matrices; the returned loss is the cross entropy alone (what retrain.py logs).
    ``keep`` is the dropout mask already scaled by ``1 / (1 - dropout)`` (inverted
    dropout) for the softmax layer's input (hidden activations or X), or ``None``.  Works in the dtype of its
    inputs, which lets the tests check it against finite differences in float64.
    """
    n = len(y)
    rows = np.arange(n)
    hidden = "hidden.weight" in w
    if hidden:
        pre = X @ w["hidden.weight"] + w["hidden.bias"]
        h = np.maximum(pre, 0)
        if keep is not None:
            h *= keep
    else:
        h = X if keep is None else X * keep
    z = h @ w["final.weight"] + w["final.bias"]
    logp = _log_softmax(z)
    loss = -float(logp[rows, y].mean(dtype=np.float64))

    dz = np.exp(logp)  # d(mean CE)/dz = (softmax - target) / n
    if label_smoothing:  # target = (1 - s) * onehot + s / classes; the logged loss stays retrain.py's
        dz -= label_smoothing / z.shape[1]
        dz[rows, y] -= 1 - label_smoothing
    else:
        dz[rows, y] -= 1
    dz /= n
    grads: Weights = {"final.weight": h.T @ dz, "final.bias": dz.sum(axis=0)}
    if hidden:
        dh = dz @ w["final.weight"].T
        if keep is not None:
            dh *= keep
        dh *= pre > 0
        grads["hidden.weight"] = X.T @ dh
        grads["hidden.bias"] = dh.sum(axis=0)
    if weight_decay:
        for name in grads:
            if name.endswith(".weight"):
                grads[name] += weight_decay * w[name]
    return loss, grads


class _Optimizer:
    """SGD, momentum or Adam, as TensorFlow 1's optimizers define them.

    ``update`` returns *new* arrays instead of changing the old ones in place, so
    the caller can keep the previous weights when a step diverges.
    """

    def __init__(self, kind: str, learning_rate: float, weights: Weights) -> None:
        self.kind = kind
        self.lr = learning_rate
        self.t = 0
        self.m = {k: np.zeros_like(v) for k, v in weights.items()} if kind != "sgd" else {}
        self.v = {k: np.zeros_like(v) for k, v in weights.items()} if kind == "adam" else {}

    def update(self, weights: Weights, grads: Weights) -> Weights:
        self.t += 1
        lr = self.lr
        if self.kind == "sgd":
            return {k: w - lr * grads[k] for k, w in weights.items()}
        if self.kind == "momentum":  # accum = 0.9 * accum + g; w -= lr * accum
            new = {}
            for k, w in weights.items():
                m = self.m[k]
                m *= _MOMENTUM
                m += grads[k]
                new[k] = w - lr * m
            return new
        # Adam, TF form: lr_t = lr * sqrt(1 - b2^t) / (1 - b1^t); w -= lr_t * m / (sqrt(v) + eps)
        lr_t = lr * math.sqrt(1.0 - _ADAM_BETA2**self.t) / (1.0 - _ADAM_BETA1**self.t)
        new = {}
        for k, w in weights.items():
            g, m, v = grads[k], self.m[k], self.v[k]
            m *= _ADAM_BETA1
            m += (1.0 - _ADAM_BETA1) * g
            v *= _ADAM_BETA2
            v += (1.0 - _ADAM_BETA2) * (g * g)
            new[k] = w - lr_t * m / (np.sqrt(v) + _ADAM_EPS)
        return new


class _ClassBalancedSampler:
    """retrain.py's ``get_random_cached_bottlenecks``: each draw picks a class uniformly
    (among the classes present), then an example of that class uniformly, with
    replacement.  Rare classes are therefore seen as often as common ones."""

    def __init__(self, y: np.ndarray) -> None:
        self.order = np.argsort(y, kind="stable")
        _, self.starts, self.counts = np.unique(y[self.order], return_index=True, return_counts=True)

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        cls = rng.integers(0, len(self.counts), size=n)
        offsets = rng.integers(0, self.counts[cls])
        return self.order[self.starts[cls] + offsets]


class _UniformSampler:
    """Images drawn uniformly with replacement: classes seen as often as the folder holds them."""

    def __init__(self, n: int) -> None:
        self.n = n

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.integers(0, self.n, size=n)


# ---------------------------------------------------------------------- input checks
def head_param_problems(p: dict[str, Any]) -> list[str]:
    """What is wrong with a SoftmaxHead's parameters (empty when nothing is)."""
    problems = []
    if p["n_classes"] is not None and not (_is_int(p["n_classes"]) and p["n_classes"] >= 2):
        problems.append(f"n_classes must be None or an integer >= 2, got {p['n_classes']!r}")
    if not (_is_int(p["hidden_units"]) and p["hidden_units"] >= 0):
        problems.append(f"hidden_units must be an integer >= 0, got {p['hidden_units']!r}")
    if not (0.0 <= p["dropout"] < 1.0):
        problems.append(f"dropout must be in [0, 1), got {p['dropout']!r}")
    if p["optimizer"] not in OPTIMIZERS:
        problems.append(f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {p['optimizer']!r}")
    if not (p["learning_rate"] > 0 and math.isfinite(p["learning_rate"])):
        problems.append(f"learning_rate must be > 0, got {p['learning_rate']!r}")
    for name in ("train_batch_size", "validation_batch_size"):
        value = p[name]
        if not (_is_int(value) and (value == -1 or value >= 1)):
            problems.append(f"{name} must be -1 (all) or an integer >= 1, got {value!r}")
    for name in ("how_many_training_steps", "eval_step_interval"):
        value = p[name]
        if not (_is_int(value) and value >= 1):
            problems.append(f"{name} must be an integer >= 1, got {value!r}")
    if not (p["weight_decay"] >= 0 and math.isfinite(p["weight_decay"])):
        problems.append(f"weight_decay must be >= 0, got {p['weight_decay']!r}")
    if not _is_int(p["seed"]):
        problems.append(f"seed must be an integer, got {p['seed']!r}")
    if not (0.0 <= p["label_smoothing"] < 1.0):
        problems.append(f"label_smoothing must be in [0, 1), got {p['label_smoothing']!r}")
    if p["sampling"] not in SAMPLING:
        problems.append(f"sampling must be one of {', '.join(SAMPLING)}, got {p['sampling']!r}")
    return problems


def _as_features(X: Any, name: str, n_features: int | None = None) -> np.ndarray:
    """A C-contiguous float32 [N, F] array of finite values, or a ValueError saying what is wrong."""
    arr = np.asarray(X)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array [n_samples, n_features], got shape {arr.shape}")
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    if n_features is not None and arr.shape[1] != n_features:
        raise ValueError(f"{name} has {arr.shape[1]} features, the head expects {n_features}")
    if arr.shape[1] == 0:
        raise ValueError(f"{name} has no features")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinity (or values too large for float32)")
    return arr


def _as_labels(y: Any, name: str, n_rows: int) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of class indices, got shape {arr.shape}")
    if arr.dtype == np.bool_ or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name} must hold integer class indices, got dtype {arr.dtype}")
    if len(arr) != n_rows:
        raise ValueError(f"{name} has {len(arr)} labels but there are {n_rows} feature rows")
    return arr.astype(np.intp)


def _check_label_range(y: np.ndarray, name: str, n_classes: int) -> None:
    if len(y) and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"{name} holds labels outside [0, {n_classes}): min {y.min()}, max {y.max()}")


def _jsonable(params: dict[str, Any]) -> dict[str, Any]:
    """Plain Python scalars, so json.dumps never meets a numpy type."""
    out: dict[str, Any] = {}
    for k, v in params.items():
        if isinstance(v, (bool, np.bool_)):
            out[k] = bool(v)
        elif isinstance(v, (int, np.integer)):
            out[k] = int(v)
        elif isinstance(v, (float, np.floating)):
            out[k] = float(v)
        else:
            out[k] = v
    return out
