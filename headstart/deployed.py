"""Run an exported model without PyTorch or timm: ONNX Runtime or OpenVINO, numpy and Pillow only.

An exported model (``headstart export``) is one graph from uint8 RGB pixels to
class probabilities; what the graph cannot hold travels next to it: the labels
and the decoding geometry (resize, centre crop, interpolation), in the ONNX
metadata and in the ``<model>.json`` sidecar.  Images are decoded here with the
same :func:`headstart.data.load_image` that training used, so an image gets
the label it would have got from the run directory.

Nothing in this module may import torch, timm or :mod:`headstart.networks`:
the tests run it with both blocked.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .data import Preprocessing, SkippedImage
from .errors import ModelError, UsageError

log = logging.getLogger("headstart")

SIDECAR_FORMAT = "headstart-export"
SIDECAR_VERSION = 1
METADATA_KEY = "headstart"  # ONNX metadata_props key holding the sidecar's JSON (without the check)
MODEL_SUFFIXES = (".onnx", ".xml", ".engine")
_PREP_FIELDS = ("input_size", "crop_pct", "interpolation", "mean", "std")


@dataclass(frozen=True)
class ModelInfo:
    """What an exported model says about itself (sidecar, else ONNX metadata)."""

    path: Path
    model_format: str  # onnx | openvino | tensorrt
    precision: str  # fp32 | fp16 | int8
    labels: tuple[str, ...]
    preprocessing: Preprocessing
    provenance: dict
    check: dict | None
    source: str  # "sidecar" | "onnx metadata"
    unknown: dict | None = None  # {"threshold", "accept", "method"} when the graph has an ood_score output

    @property
    def input_size(self) -> int:
        return self.preprocessing.input_size


def is_exported_model(path: str | Path) -> bool:
    """True for a model file written by ``headstart export`` (by suffix; run directories are folders)."""
    p = Path(path)
    return p.suffix.lower() in MODEL_SUFFIXES and not p.is_dir()


def sidecar_path(model: str | Path) -> Path:
    return Path(model).with_suffix(".json")


def _info_from_dict(path: Path, data: Any, source: str) -> ModelInfo:
    where = f"{path} ({source})"
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
        raise ModelError(f"{where} is not a headstart export description",
                         hint="export the model again with 'headstart export'")
    if int(data.get("format_version", 0)) > SIDECAR_VERSION:
        raise ModelError(f"{where} was written by a newer headstart", hint="upgrade headstart")
    labels = data.get("labels")
    if not isinstance(labels, list) or len(labels) < 2 or not all(isinstance(x, str) for x in labels):
        raise ModelError(f"{where}: labels are missing or malformed", hint="export the model again")
    prep = data.get("preprocessing")
    try:
        preprocessing = Preprocessing.from_dict({k: prep[k] for k in _PREP_FIELDS})
    except (TypeError, KeyError, ValueError) as exc:
        raise ModelError(f"{where}: preprocessing is missing or malformed ({exc})",
                         hint="export the model again") from None
    return ModelInfo(path=path, model_format=str(data.get("model_format", "onnx")),
                     precision=str(data.get("precision", "fp32")), labels=tuple(labels),
                     preprocessing=preprocessing, provenance=dict(data.get("provenance") or {}),
                     check=data.get("check"), source=source, unknown=_unknown_section(data, where))


def _unknown_section(data: dict, where: str) -> dict | None:
    section = data.get("unknown")
    if section is None:
        return None
    threshold = section.get("threshold") if isinstance(section, dict) else "missing"
    if threshold is not None and (not isinstance(threshold, (int, float)) or isinstance(threshold, bool)):
        raise ModelError(f"{where}: unknown.threshold is malformed", hint="export the model again")
    return dict(section)


def _onnx_metadata(path: Path) -> dict[str, str]:
    """The ONNX file's metadata_props, read with the onnx package or, failing that, ONNX Runtime."""
    if importlib.util.find_spec("onnx") is not None:
        import onnx

        model = onnx.load(str(path), load_external_data=False)
        return {p.key: p.value for p in model.metadata_props}
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(session.get_modelmeta().custom_metadata_map)


def read_model_info(path: str | Path) -> ModelInfo:
    """Labels, preprocessing and provenance of an exported model: the sidecar first, then ONNX metadata."""
    model = Path(path).expanduser()
    if not model.is_file():
        raise ModelError(f"exported model {model} does not exist",
                         hint="pass the file written by 'headstart export' (.onnx, .xml or .engine)")
    side = sidecar_path(model)
    if side.is_file():
        try:
            data = json.loads(side.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise ModelError(f"cannot read {side}: {exc}", hint="export the model again") from None
        return _info_from_dict(model, data, "sidecar")
    if model.suffix.lower() == ".onnx":
        meta = _onnx_metadata(model)
        if METADATA_KEY in meta:
            try:
                data = json.loads(meta[METADATA_KEY])
            except ValueError:
                raise ModelError(f"{model}: its headstart metadata is not valid JSON",
                                 hint="export the model again") from None
            return _info_from_dict(model, data, "onnx metadata")
        raise ModelError(f"{model} has no headstart metadata and no {side.name} next to it",
                         hint="export it with 'headstart export', or put its .json sidecar next to it")
    raise ModelError(f"{model} has no {side.name} next to it (it holds the labels and preprocessing)",
                     hint="copy the .json file written by 'headstart export' next to the model")


def resolve_deployed_runtime(model_format: str, runtime: str = "auto", precision: str = "auto") -> tuple[str, str]:
    """(runtime, compute precision) for an exported file: see :func:`headstart.runtimes.resolve_file_runtime`."""
    from .runtimes import resolve_file_runtime

    choice = resolve_file_runtime(model_format, runtime, precision)
    return choice.runtime, choice.precision


class DeployedModel:
    """An exported model, ready to run: uint8 ``[N, H, W, 3]`` in, probabilities (and novelty scores) out.

    Most callers want :func:`headstart.load_model`, whose Classifier decodes and
    batches images for this; this class is the bare graph and its description.
    """

    def __init__(self, path: str | Path, *, runtime: str = "auto", precision: str = "auto",
                 threads: int | None = None) -> None:
        self.info = read_model_info(path)
        self.path = self.info.path
        self.runtime, self.precision = resolve_deployed_runtime(self.info.model_format, runtime, precision)
        from .runtimes import RuntimeChoice, create_file_runner

        self._run = create_file_runner(self.path, RuntimeChoice(self.runtime, self.precision), threads)

    @property
    def labels(self) -> tuple[str, ...]:
        return self.info.labels

    @property
    def has_novelty(self) -> bool:
        return self.info.unknown is not None

    @property
    def threshold(self) -> float | None:
        return None if self.info.unknown is None else self.info.unknown.get("threshold")

    def predict_scores(self, images: np.ndarray) -> np.ndarray:
        """``[N, classes]`` probabilities, plus the graph's ``ood_score`` as a last column when it has one."""
        size = self.info.input_size
        if images.ndim != 4 or images.shape[1:] != (size, size, 3) or images.dtype != np.uint8:
            raise UsageError(f"expected uint8 images of shape [N, {size}, {size}, 3], "
                             f"got {images.dtype} {tuple(images.shape)}",
                             hint="decode with headstart.data.load_image and the model's preprocessing")
        return np.asarray(self._run(images), dtype=np.float32)

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        return self.predict_scores(images)[:, :len(self.labels)]


def load_model(path: str | Path, *, runtime: str = "auto", precision: str = "auto",
               threads: int | None = None) -> DeployedModel:
    """Open an exported model (.onnx, OpenVINO .xml, or TensorRT .engine): the bare graph."""
    return DeployedModel(path, runtime=runtime, precision=precision, threads=threads)


__all__ = ["ModelInfo", "DeployedModel", "load_model", "read_model_info", "is_exported_model",
           "resolve_deployed_runtime", "sidecar_path"]
