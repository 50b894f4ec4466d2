"""The saved form of a fitted :class:`~headstart.head.SoftmaxHead`: its format tag and the checks on loading.

A head comes back from a bundle as float32 tensors and a JSON config
(:meth:`~headstart.head.SoftmaxHead.to_state` writes them).  Before any of it
becomes a head, every tensor is checked against the config (names, shapes,
finite values), so a damaged or mismatched bundle fails loudly, naming what is
wrong, instead of predicting garbage.  Kept apart from :mod:`headstart.head`
(training and inference) because these checks are all this module does and
need nothing of the estimator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .checks import is_int as _is_int
from .errors import ModelError

__all__ = ["STATE_FORMAT", "STATE_VERSION", "CheckedHeadState", "HeadStateError", "check_head_state"]

STATE_FORMAT = "headstart.softmax_head"
STATE_VERSION = 1


class HeadStateError(ModelError, ValueError):
    """Saved head tensors or config do not fit together.

    A :class:`~headstart.errors.ModelError` so the CLI reports it in one line, and a
    ``ValueError`` for library callers.
    """


@dataclass(frozen=True)
class CheckedHeadState:
    """A saved head's architecture and tensors (float32 copies), each checked against the others."""

    n_features: int
    n_classes: int
    hidden_units: int
    weights: dict[str, np.ndarray]  # hidden.* (with hidden_units > 0) and final.*
    feature_mean: np.ndarray | None  # standardize.mean, None unless the config says standardize
    feature_std: np.ndarray | None


def check_head_state(tensors: dict[str, np.ndarray], config: dict[str, Any]) -> CheckedHeadState:
    """Check :meth:`~headstart.head.SoftmaxHead.to_state` output; :class:`HeadStateError` names what does not fit."""
    if config.get("format", STATE_FORMAT) != STATE_FORMAT:
        raise HeadStateError(f"config format is {config.get('format')!r}, expected {STATE_FORMAT!r}")
    if config.get("format_version", STATE_VERSION) > STATE_VERSION:
        raise HeadStateError(
            f"config format_version {config['format_version']} is newer than "
            f"this headstart understands ({STATE_VERSION})",
            hint="upgrade headstart",
        )
    for key in ("n_features", "n_classes", "hidden_units", "standardize"):
        if key not in config:
            raise HeadStateError(f"head config lacks {key!r}")
    n_features, n_classes, hidden = config["n_features"], config["n_classes"], config["hidden_units"]
    if not (_is_int(n_features) and n_features >= 1):
        raise HeadStateError(f"config n_features must be an integer >= 1, got {n_features!r}")
    if not (_is_int(n_classes) and n_classes >= 2):
        raise HeadStateError(f"config n_classes must be an integer >= 2, got {n_classes!r}")
    if not (_is_int(hidden) and hidden >= 0):
        raise HeadStateError(f"config hidden_units must be an integer >= 0, got {hidden!r}")
    activation = config.get("activation", "relu" if hidden else None)
    if activation != ("relu" if hidden else None):
        raise HeadStateError(f"config activation {activation!r} is not supported with hidden_units={hidden}")
    layout = config.get("weight_layout", "in_out")
    if layout != "in_out":
        raise HeadStateError(f"config weight_layout {layout!r} is not supported (expected 'in_out')")

    expected: dict[str, tuple[int, ...]] = {}
    if hidden:
        expected["hidden.weight"] = (n_features, hidden)
        expected["hidden.bias"] = (hidden,)
    expected["final.weight"] = (hidden or n_features, n_classes)
    expected["final.bias"] = (n_classes,)
    if config["standardize"]:
        expected["standardize.mean"] = (n_features,)
        expected["standardize.std"] = (n_features,)
    for name in tensors:
        if name not in expected:
            raise HeadStateError(f"unexpected tensor {name!r} for this head config (expected {', '.join(expected)})")
    loaded: dict[str, np.ndarray] = {}
    for name, shape in expected.items():
        if name not in tensors:
            raise HeadStateError(f"missing tensor {name!r}")
        value = np.array(tensors[name], dtype=np.float32, copy=True)
        if value.shape != shape:
            raise HeadStateError(
                f"tensor {name!r} has shape {value.shape}, expected {shape} "
                f"(n_features={n_features}, n_classes={n_classes}, "
                f"hidden_units={hidden})"
            )
        if not np.isfinite(value).all():
            raise HeadStateError(f"tensor {name!r} contains NaN or infinity")
        loaded[name] = value
    if config["standardize"] and not (loaded["standardize.std"] > 0).all():
        raise HeadStateError("tensor 'standardize.std' has values <= 0")
    mean = loaded.pop("standardize.mean", None)
    std = loaded.pop("standardize.std", None)
    return CheckedHeadState(n_features, n_classes, hidden, loaded, mean, std)
