"""The run directory's manifest: file names, format version, and the checks that both save and load apply.

One set of checks serves both directions: :func:`headstart.bundle.save_bundle`
refuses to write what :func:`headstart.bundle.load_bundle` would refuse to read,
and every failure names the file and the problem in one line.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from .checks import is_int as _is_int
from .data import Preprocessing
from .errors import ModelError

MANIFEST_NAME = "headstart.json"
HEAD_NAME = "head.safetensors"
LABELS_NAME = "labels.txt"
METRICS_NAME = "metrics.json"
BACKBONE_NAME = "backbone.safetensors"  # a fine-tuned backbone's full state dict (checksummed like the head)
FORMAT_VERSION = 1
FORMAT_NAME = "headstart-bundle"

_HINT_RESTORE = "retrain, or restore the file from a backup"


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _fail(file: str, problem: str, hint: str = _HINT_RESTORE) -> ModelError:
    return ModelError(f"{file}: {problem}", hint=hint)


def _check_labels(labels: Any, where: str) -> tuple[str, ...]:
    if not isinstance(labels, (list, tuple)) or not labels:
        raise _fail(where, "labels must be a non-empty list of strings")
    seen: set[str] = set()
    for label in labels:
        if not isinstance(label, str) or not label.strip():
            raise _fail(where, f"label {_short(label)} is not a non-empty string")
        if "\n" in label or "\r" in label:
            raise _fail(where, f"label {label!r} contains a line break")
        if label in seen:
            raise _fail(where, f"label {label!r} appears twice")
        seen.add(label)
    return tuple(labels)


def _check_head_config(config: Any, n_labels: int, where: str) -> None:
    if not isinstance(config, dict):
        raise _fail(where, "head_config must be an object")
    for key in ("n_classes", "n_features"):
        if not _is_int(config.get(key)) or config[key] < 1:
            raise _fail(where, f"head_config.{key} must be a positive integer, got {_short(config.get(key))}")
    if config["n_classes"] != n_labels:
        raise _fail(where, f"head_config.n_classes is {config['n_classes']} but there are {n_labels} labels")
    # Optional fields a head reads back: wrong JSON types must fail here, with the
    # file named, not deep inside the head as a TypeError.
    optional: dict[str, tuple[type, ...]] = {
        "format_version": (int,),
        "hidden_units": (int,),
        "n_steps_run": (int,),
        "standardize": (bool,),
        "diverged": (bool,),
        "params": (dict,),
    }
    for key, kinds in optional.items():
        value = config.get(key)
        if key in config and (not isinstance(value, kinds) or (kinds == (int,) and (not _is_int(value) or value < 0))):
            raise _fail(where, f"head_config.{key} has the wrong type or value: {_short(value)}")


def _check_tensors(tensors: Mapping[str, np.ndarray], config: dict, where: str) -> None:
    """Generic shape checks that hold for any head: every tensor float32 and finite, and
    some tensor has a dimension of n_classes (the output layer) and one of n_features
    (the input layer), so a head trained for other labels or another backbone is caught."""
    if not tensors:
        raise _fail(where, "holds no tensors")
    n_classes, n_features = config["n_classes"], config["n_features"]
    for name, t in tensors.items():
        if not isinstance(t, np.ndarray) or t.dtype != np.float32:
            dtype = getattr(t, "dtype", type(t).__name__)
            raise _fail(where, f"tensor {name!r} is {dtype}, expected float32")
        if not np.isfinite(t).all():
            raise _fail(where, f"tensor {name!r} holds NaN or infinite values")
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if not any(n_classes in s for s in shapes.values()):
        raise _fail(
            where,
            f"no tensor has a dimension of n_classes={n_classes} "
            f"(shapes: {shapes}); the head does not match the labels",
        )
    if not any(n_features in s for s in shapes.values()):
        raise _fail(
            where,
            f"no tensor has a dimension of n_features={n_features} "
            f"(shapes: {shapes}); the head does not match the backbone",
        )


def _check_manifest(m: Any) -> None:
    """Hand-written schema check of a parsed manifest (types first, then meaning)."""
    where = MANIFEST_NAME
    if not isinstance(m, dict):
        raise _fail(where, f"expected a JSON object, found {type(m).__name__}")
    if m.get("format") != FORMAT_NAME:
        raise _fail(where, f"'format' is {_short(m.get('format'))}, expected {FORMAT_NAME!r}")
    version = m.get("format_version")
    if not _is_int(version):
        raise _fail(where, f"'format_version' must be an integer, got {_short(version)}")
    if version > FORMAT_VERSION or version < 1:
        raise _fail(
            where,
            f"format_version {version} is not supported (this headstart reads {FORMAT_VERSION})",
            hint="upgrade headstart, or retrain with this version",
        )
    required: dict[str, type] = {
        "created": str,
        "labels": list,
        "backbone": dict,
        "preprocessing": dict,
        "head_config": dict,
        "hyperparameters": dict,
        "versions": dict,
        "files": dict,
    }
    for key, kind in required.items():
        if key not in m:
            raise _fail(where, f"required key {key!r} is missing")
        if not isinstance(m[key], kind):
            raise _fail(
                where,
                f"{key!r} must be a JSON {'array' if kind is list else kind.__name__}, got {type(m[key]).__name__}",
            )
    labels = _check_labels(m["labels"], where)
    name = m["backbone"].get("name")
    if not isinstance(name, str) or not name:
        raise _fail(where, f"backbone.name must be a non-empty string, got {_short(name)}")
    _check_head_config(m["head_config"], len(labels), where)
    try:
        Preprocessing.from_dict(m["preprocessing"])
    except (TypeError, ValueError) as err:
        raise _fail(where, f"preprocessing: {err}") from None
    for file in (HEAD_NAME, LABELS_NAME):
        entry = m["files"].get(file)
        digest = entry.get("sha256") if isinstance(entry, dict) else None
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise _fail(where, f"files.{file}.sha256 is missing or not a sha256 hex digest")
