"""The trained last layer: a softmax classifier on bottleneck vectors, in pure numpy.

Why numpy and not torch: retraining from cached bottlenecks must start in well
under a second, and a trained head must run (evaluate, export) where torch is
absent.  A softmax layer on 1280 features is a few small matrix products per
step, so hand-written float32 forward/backward passes are as fast as anything.

The defaults reproduce TensorFlow's ``retrain.py`` exactly (recipe, not random
stream): one dense softmax layer, weights from a truncated normal (stddev
0.001), zero bias, mean softmax cross-entropy, plain gradient descent at 0.01,
4000 steps of 100 bottlenecks drawn at random *with replacement* the way
``get_random_cached_bottlenecks`` draws them (a uniformly random class, then a
uniformly random example of that class), an evaluation every 10 steps and at
the last one, on the training batch just used and on 100 random validation
examples (``-1`` = all of them).

Weights are stored ``[in, out]`` (``X @ W + b``), float32, under the names
``hidden.weight``, ``hidden.bias`` (only with ``hidden_units > 0``),
``final.weight``, ``final.bias`` and ``standardize.mean``, ``standardize.std``
(only with ``standardize=True``).  The inference graph is::

    x = (x - mean) / std            # standardize=True
    x = relu(x @ W_h + b_h)         # hidden_units > 0 (dropout only in training)
    p = softmax(x @ W + b)

This module is the estimator (training, inference, ``to_state`` / ``from_state``);
:mod:`headstart.head_state` holds the saved form's format tag and the checks a
saved head passes before it is rebuilt, and :mod:`headstart.head_math` the numerics.
"""

from __future__ import annotations

import inspect
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from headstart.calibrate import TEMPERATURE_RANGE
from headstart.head_math import (
    Weights,
    _accuracy_and_cross_entropy,
    _as_features,
    _as_labels,
    _check_label_range,
    _ClassBalancedSampler,
    _init_weights,
    _jsonable,
    _log_softmax,
    _logits,
    _loss_and_grads,
    _Optimizer,
    _single_blas_thread,
    _UniformSampler,
    head_param_problems,
)
from headstart.head_state import STATE_FORMAT, STATE_VERSION, HeadStateError, check_head_state

log = logging.getLogger(__name__)

__all__ = ["NotFittedError", "SoftmaxHead", "TrainStep"]

EARLY_STOPPING_EVERY = 10  # steps between measurements of the whole validation loss
_PREDICT_CHUNK = 8192  # rows per forward pass at inference: bounds memory with a hidden layer


class NotFittedError(RuntimeError):
    """The head was used before ``fit`` (or ``from_state``) gave it weights."""


@dataclass(frozen=True)
class TrainStep:
    """One row of training history (retrain.py's periodic log lines).

    ``step`` is the 0-based index of the training step just taken, as retrain.py
    prints it: rows come at steps 0, ``eval_step_interval``, 2·interval, … and at
    the last step (``how_many_training_steps - 1``).  Accuracies are fractions in
    [0, 1] measured *after* that step's update, on that step's training batch and
    on the validation batch.  Validation fields are ``None`` without a validation
    set.  A row whose ``cross_entropy`` is NaN marks divergence (see
    :attr:`SoftmaxHead.diverged_`); its accuracies are those of the kept weights.
    """

    step: int
    train_accuracy: float
    cross_entropy: float
    validation_accuracy: float | None
    validation_cross_entropy: float | None
    steps: int = 0  # how many steps this training runs in all (for a progress bar's total)


class SoftmaxHead:
    """A softmax layer (optionally behind one ReLU layer) trained on bottleneck vectors.

    Follows the scikit-learn estimator contract: ``__init__`` only stores
    parameters, :meth:`fit` returns ``self``, fitted state ends in ``_``,
    ``predict_proba`` columns follow ``classes_`` (``np.arange(n_classes)``).

    Parameters
    ----------
    n_classes: number of output classes; ``None`` = ``y.max() + 1``.
    hidden_units: ``0`` = retrain.py's single softmax layer; ``>0`` adds a ReLU
        layer (He-normal init) before it.
    dropout: inverted dropout, in training only, on the softmax layer's input: the
        hidden activations, or without a hidden layer the bottleneck itself (as
        make_image_classifier does).  ``0`` = retrain.py.
    optimizer: ``"sgd"``, ``"momentum"`` (0.9) or ``"adam"`` (0.9/0.999, eps 1e-8,
        TensorFlow's formulation with the bias correction folded into the step).
    learning_rate, train_batch_size (``-1`` = the whole training set every step),
    how_many_training_steps, eval_step_interval, validation_batch_size (``-1`` =
    the whole validation set): retrain.py's flags, same meaning.
    weight_decay: L2 penalty ``weight_decay / 2 * ||W||²`` on weight matrices (not
        biases), so each step's gradient gains ``weight_decay * W``.  Not included
        in the reported cross entropy (retrain.py's number).
    standardize: learn per-feature mean/std on the training set and apply them
        inside the head, so the exported model carries them.
    seed: seeds initialisation, batch sampling and dropout (``np.random.default_rng``);
        validation sampling uses an independent stream, so watching a validation
        set never changes the trained weights.
    early_stopping: with a validation set, measure its whole cross-entropy every
        ``EARLY_STOPPING_EVERY`` steps, keep the weights where it was lowest, stop once it has
        not improved for a fifth of the steps (at least 100).  ``False`` = retrain.py.
    label_smoothing: train towards ``(1 - s) * onehot + s / n_classes`` (0 = retrain.py).
    sampling: ``"class"`` draws a class uniformly, then one of its images
        (retrain.py; rare classes are seen as often as common ones); ``"image"``
        draws images uniformly, so classes are seen as often as the folder holds them.

    Fitted attributes: ``classes_``, ``n_features_in_``, ``weights_`` (name ->
    float32 array), ``feature_mean_`` / ``feature_std_`` (``None`` unless
    ``standardize``), ``history_`` (list of :class:`TrainStep`), ``diverged_``,
    ``n_steps_run_`` (steps run, the one that diverged included), ``fit_seconds_``,
    ``best_step_`` (the step whose weights were kept), ``temperature_`` (1.0 until
    :func:`headstart.calibrate.fit_temperature` sets it; ``predict_proba`` divides
    the logits by it).
    """

    def __init__(
        self,
        n_classes: int | None = None,
        hidden_units: int = 0,
        dropout: float = 0.0,
        optimizer: str = "sgd",
        learning_rate: float = 0.01,
        train_batch_size: int = 100,
        how_many_training_steps: int = 4000,
        weight_decay: float = 0.0,
        eval_step_interval: int = 10,
        validation_batch_size: int = 100,
        standardize: bool = False,
        seed: int = 0,
        early_stopping: bool = False,
        label_smoothing: float = 0.0,
        sampling: str = "class",
    ) -> None:
        self.n_classes = n_classes
        self.hidden_units = hidden_units
        self.dropout = dropout
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.train_batch_size = train_batch_size
        self.how_many_training_steps = how_many_training_steps
        self.weight_decay = weight_decay
        self.eval_step_interval = eval_step_interval
        self.validation_batch_size = validation_batch_size
        self.standardize = standardize
        self.seed = seed
        self.early_stopping = early_stopping
        self.label_smoothing = label_smoothing
        self.sampling = sampling

    # ------------------------------------------------------------------ sklearn API
    @classmethod
    def _param_names(cls) -> list[str]:
        return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Constructor parameters (lets ``sklearn.base.clone`` and grid searches work)."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> "SoftmaxHead":
        valid = set(self._param_names())
        for name, value in params.items():
            if name not in valid:
                raise ValueError(f"invalid parameter {name!r} for SoftmaxHead; valid: {sorted(valid)}")
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        defaults = SoftmaxHead().get_params()
        changed = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items() if v != defaults[k])
        return f"SoftmaxHead({changed})"

    # ------------------------------------------------------------------ training
    def fit(
        self, X: Any, y: Any, X_val: Any = None, y_val: Any = None, callback: Callable[[TrainStep], None] | None = None
    ) -> "SoftmaxHead":
        """Train on bottlenecks ``X`` [N, F] with integer labels ``y`` [N].

        ``callback`` gets each :class:`TrainStep` as it is logged (every
        ``eval_step_interval`` steps and at the last step).  If the loss or the
        weights stop being finite, training stops without raising: ``diverged_``
        is set, a NaN-cross-entropy row ends ``history_``, and the head keeps the
        last weights that gave a finite training loss, so it stays usable.
        """
        start = time.perf_counter()
        self._check_params()
        X = self._training_features(X)
        y = _as_labels(y, "y", len(X))
        if len(X) == 0:
            raise ValueError("X has no rows: need training examples")
        n_classes = int(y.max()) + 1 if self.n_classes is None else int(self.n_classes)
        if n_classes < 2 or len(np.unique(y)) < 2:
            raise ValueError(
                f"need at least 2 classes to train a classifier, y has {len(np.unique(y))} distinct label(s)"
            )
        _check_label_range(y, "y", n_classes)
        has_val = X_val is not None or y_val is not None
        if has_val:
            if X_val is None or y_val is None:
                raise ValueError("give both X_val and y_val, or neither")
            X_val = _as_features(X_val, "X_val", X.shape[1])
            y_val = _as_labels(y_val, "y_val", len(X_val))
            _check_label_range(y_val, "y_val", n_classes)
            if len(X_val) == 0:
                has_val = False

        mean = std = None
        if self.standardize:
            mean = X.mean(axis=0, dtype=np.float64).astype(np.float32)
            std64 = X.std(axis=0, dtype=np.float64)
            std = np.where(std64 > 1e-6, std64, 1.0).astype(np.float32)  # constant feature: leave as is
            X = (X - mean) / std
            if has_val:
                X_val = (X_val - mean) / std

        # Overflow is expected while a run diverges; it is detected and reported, not warned about.
        with _single_blas_thread(), np.errstate(over="ignore", invalid="ignore"):
            weights, history, diverged, steps_run, best_step = self._train(
                X, y, X_val if has_val else None, y_val if has_val else None, n_classes, callback
            )

        self.classes_ = np.arange(n_classes)
        self.n_features_in_ = int(X.shape[1])
        self.weights_ = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in weights.items()}
        self.feature_mean_ = mean
        self.feature_std_ = std
        self.history_ = history
        self.diverged_ = diverged
        self.n_steps_run_ = steps_run
        self.best_step_ = best_step
        self.temperature_ = 1.0
        self.fit_seconds_ = time.perf_counter() - start
        log.debug("SoftmaxHead.fit: %d steps in %.3fs", self.n_steps_run_, self.fit_seconds_)
        return self

    def _training_features(self, X: Any) -> np.ndarray:
        """Checked float32 rows; headstart.stream_head.StreamingHead also takes rows on disk, read per batch."""
        return _as_features(X, "X")

    def _train(
        self,
        X: np.ndarray,
        y: np.ndarray,
        X_val: np.ndarray | None,
        y_val: np.ndarray | None,
        n_classes: int,
        callback: Callable[[TrainStep], None] | None,
    ) -> tuple[Weights, list[TrainStep], bool, int, int]:
        """The retrain.py loop: sample, step, and every ``eval_step_interval`` steps evaluate.

        Returns the kept weights, the history, whether training diverged, how many
        steps ran and the step whose weights were kept.  "Diverged" means a
        non-finite training loss or weight; the kept weights are then the last
        ones that gave a finite training loss.
        """
        rng = np.random.default_rng(self.seed)
        val_rng = np.random.default_rng(np.random.SeedSequence(self.seed).spawn(1)[0])
        hidden = int(self.hidden_units)
        weights = _init_weights(rng, X.shape[1], hidden, n_classes)
        optimizer = _Optimizer(self.optimizer, float(self.learning_rate), weights)
        train_sampler = _ClassBalancedSampler(y) if self.sampling == "class" else _UniformSampler(len(y))
        val_sampler = _ClassBalancedSampler(y_val) if y_val is not None else None
        batch = int(self.train_batch_size)
        dropout = float(self.dropout)
        wd = float(self.weight_decay)
        steps = int(self.how_many_training_steps)
        interval = int(self.eval_step_interval)
        smoothing = float(self.label_smoothing)
        watch = bool(self.early_stopping) and X_val is not None and y_val is not None
        patience = max(100, steps // 5)
        best: tuple[float, int, Weights] = (math.inf, 0, weights)

        def evaluate(w: Weights, Xb: np.ndarray, yb: np.ndarray, step: int) -> TrainStep:
            train_acc, train_ce = _accuracy_and_cross_entropy(w, Xb, yb)
            val_acc = val_ce = None
            if val_sampler is not None:
                assert X_val is not None and y_val is not None
                Xv, yv = X_val, y_val
                if self.validation_batch_size != -1:
                    idx = val_sampler.sample(val_rng, int(self.validation_batch_size))
                    Xv, yv = X_val[idx], y_val[idx]
                val_acc, val_ce = _accuracy_and_cross_entropy(w, Xv, yv)
            return TrainStep(step, train_acc, train_ce, val_acc, val_ce, steps)

        history: list[TrainStep] = []
        good = weights  # the last weights that gave a finite training loss
        Xb, yb = X, y
        for step in range(steps):
            if batch != -1:
                idx = train_sampler.sample(rng, batch)
                Xb, yb = X[idx], y[idx]
            keep = None
            if dropout > 0:
                mask = rng.random((len(Xb), hidden or X.shape[1]), dtype=np.float32) >= dropout
                keep = mask.astype(np.float32) / np.float32(1.0 - dropout)
            loss, grads = _loss_and_grads(weights, Xb, yb, wd, keep, smoothing)
            if not math.isfinite(loss):
                break
            good = weights
            weights = optimizer.update(weights, grads)
            if not all(np.isfinite(w).all() for w in weights.values()):
                break
            if watch and (step % EARLY_STOPPING_EVERY == 0 or step == steps - 1):
                assert X_val is not None and y_val is not None
                _, val_ce = _accuracy_and_cross_entropy(weights, X_val, y_val)
                if val_ce < best[0] - 1e-6:
                    best = (val_ce, step, weights)
                elif step - best[1] >= patience:
                    row = evaluate(best[2], Xb, yb, step)
                    history.append(row)
                    if callback is not None:
                        callback(row)
                    log.debug("early stop at step %d: validation loss best at step %d", step, best[1])
                    return best[2], history, False, step + 1, best[1]
            if step % interval == 0 or step == steps - 1:
                row = evaluate(weights, Xb, yb, step)
                if not math.isfinite(row.cross_entropy):
                    break
                good = weights
                history.append(row)
                if callback is not None:
                    callback(row)
        else:
            if watch:
                return best[2], history, False, steps, best[1]
            return weights, history, False, steps, steps - 1

        row = evaluate(good, Xb, yb, step)
        row = TrainStep(
            step, row.train_accuracy, math.nan, row.validation_accuracy, row.validation_cross_entropy, steps
        )
        history.append(row)
        if callback is not None:
            callback(row)
        log.warning(
            "Training diverged at step %d (loss or weights not finite); kept the last "
            "weights with a finite loss. Try a lower learning_rate.",
            step,
        )
        return good, history, True, step + 1, step

    def _check_params(self) -> None:
        """Validate hyperparameters at fit time (scikit-learn style: never in __init__)."""
        problems = head_param_problems(self.get_params())
        if problems:
            raise ValueError("; ".join(problems))

    # ------------------------------------------------------------------ inference
    def logits(self, X: Any) -> np.ndarray:
        """Pre-softmax scores, float32 [N, n_classes]."""
        self._check_fitted()
        X = _as_features(X, "X", self.n_features_in_)
        out = np.empty((len(X), len(self.classes_)), dtype=np.float32)
        for lo in range(0, len(X), _PREDICT_CHUNK):
            chunk = X[lo : lo + _PREDICT_CHUNK]
            if self.feature_mean_ is not None:
                chunk = (chunk - self.feature_mean_) / self.feature_std_
            out[lo : lo + _PREDICT_CHUNK] = _logits(self.weights_, chunk)
        return out

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, float32 [N, n_classes], calibrated by ``temperature_``; columns follow ``classes_``."""
        scores = self.logits(X) / np.float32(getattr(self, "temperature_", 1.0))
        with np.errstate(over="ignore"):  # z - max may round to -inf: probability 0, as it should
            return np.exp(_log_softmax(scores))

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class of each row (ties: the lowest class index)."""
        scores = self.logits(X)
        return self.classes_[np.argmax(scores, axis=1)]

    def _check_fitted(self) -> None:
        if not hasattr(self, "weights_"):
            raise NotFittedError(
                "this SoftmaxHead is not fitted yet: call fit(X, y) first, or load one with SoftmaxHead.from_state()"
            )

    # ------------------------------------------------------------------ persistence
    def to_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Float32 tensors and a JSON-able config: everything ``from_state`` needs.

        The config also records the training hyperparameters and outcome, for the
        bundle's manifest; ``history_`` is not saved.
        """
        self._check_fitted()
        tensors = {k: v.copy() for k, v in self.weights_.items()}
        if self.feature_mean_ is not None and self.feature_std_ is not None:
            tensors["standardize.mean"] = self.feature_mean_.copy()
            tensors["standardize.std"] = self.feature_std_.copy()
        hidden = int(self.weights_["hidden.bias"].shape[0]) if "hidden.bias" in self.weights_ else 0
        config: dict[str, Any] = {
            "format": STATE_FORMAT,
            "format_version": STATE_VERSION,
            "n_features": int(self.n_features_in_),
            "n_classes": int(len(self.classes_)),
            "hidden_units": hidden,
            "activation": "relu" if hidden else None,
            "standardize": self.feature_mean_ is not None,
            "weight_layout": "in_out",
            "diverged": bool(self.diverged_),
            "n_steps_run": int(self.n_steps_run_),
            "temperature": float(getattr(self, "temperature_", 1.0)),
            "params": _jsonable(self.get_params()),
        }
        return tensors, config

    @classmethod
    def from_state(cls, tensors: dict[str, np.ndarray], config: dict[str, Any]) -> "SoftmaxHead":
        """Rebuild a fitted head from :meth:`to_state` output, checking every tensor.

        Raises :class:`HeadStateError` (a ``ValueError``) naming the tensor or config
        key that does not match, so a damaged or mismatched bundle fails loudly
        instead of predicting garbage.
        """
        state = check_head_state(tensors, config)
        known = set(cls._param_names())
        params = {k: v for k, v in config.get("params", {}).items() if k in known}
        # The tensors decide the architecture; the rest of params is provenance.
        head = cls(**{**params, "hidden_units": state.hidden_units, "standardize": bool(config["standardize"])})
        head.classes_ = np.arange(state.n_classes)
        head.n_features_in_ = state.n_features
        head.feature_mean_ = state.feature_mean
        head.feature_std_ = state.feature_std
        head.weights_ = state.weights
        head.history_ = []
        head.diverged_ = bool(config.get("diverged", False))
        head.n_steps_run_ = int(config.get("n_steps_run", 0))
        head.best_step_ = max(0, head.n_steps_run_ - 1)
        temperature = config.get("temperature", 1.0)
        if (
            not isinstance(temperature, (int, float))
            or isinstance(temperature, bool)
            or not (TEMPERATURE_RANGE[0] <= temperature <= TEMPERATURE_RANGE[1])
        ):
            low, high = TEMPERATURE_RANGE
            raise HeadStateError(f"config temperature must be a number from {low} to {high}, got {temperature!r}")
        head.temperature_ = float(temperature)
        head.fit_seconds_ = 0.0
        return head
