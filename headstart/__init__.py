"""headstart: retrain an image classifier on your own photos by transfer learning.

The public API is imported lazily so that ``import headstart`` stays fast:
torch, timm and the inference runtimes load only when a function needs them.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    # jobs
    "retrain": "train",
    "RetrainResult": "train",
    "RetrainConfig": "config",
    "RETRAIN_PY_RECIPE": "settings",
    "SETTINGS": "settings",
    "label": "inference",
    "label_imagenet": "inference",
    "evaluate": "inference",
    "LabelResult": "inference",
    "doctor": "doctor",
    "DoctorReport": "doctor",
    # a trained model
    "load_model": "model",
    "Classifier": "model",
    "Prediction": "model",
    # building blocks
    "index_image_dir": "data",
    "load_image": "data",
    "ImageIndex": "data",
    "Preprocessing": "data",
    "resolve_backbone": "backbones",
    "list_backbones": "backbones",
    "Backbone": "backbones",
    "resolve_runtime": "runtimes",
    "available_runtimes": "runtimes",
    "BottleneckCache": "cache",
    "compute_bottlenecks": "features",
    "Bottlenecks": "features",
    "SoftmaxHead": "head",
    "Evaluation": "metrics",
    "load_bundle": "bundle",
    "Bundle": "bundle",
    "write_fashion_mnist": "datasets",
    "download_flowers": "datasets",
    "HeadstartError": "errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'headstart' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
