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

import logging
from pathlib import Path

import numpy as np

from .errors import UsageError
from .sidecar import ExportDescription, read_description, sidecar_path

log = logging.getLogger("headstart")

MODEL_SUFFIXES = (".onnx", ".xml", ".engine", ".tflite")
ModelInfo = ExportDescription  # what an exported model says about itself
read_model_info = read_description


def is_exported_model(path: str | Path) -> bool:
    """True for a model file written by ``headstart export`` (by suffix; run directories are folders)."""
    p = Path(path)
    return (p.suffix.lower() in MODEL_SUFFIXES and not p.is_dir()) or (p / "saved_model.pb").is_file()


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

    def __init__(
        self, path: str | Path, *, runtime: str = "auto", precision: str = "auto", threads: int | None = None
    ) -> None:
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
            raise UsageError(
                f"expected uint8 images of shape [N, {size}, {size}, 3], got {images.dtype} {tuple(images.shape)}",
                hint="decode with headstart.data.load_image and the model's preprocessing",
            )
        return np.asarray(self._run(images), dtype=np.float32)

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        return self.predict_scores(images)[:, : len(self.labels)]


def load_model(
    path: str | Path, *, runtime: str = "auto", precision: str = "auto", threads: int | None = None
) -> DeployedModel:
    """Open an exported model (.onnx, OpenVINO .xml, or TensorRT .engine): the bare graph."""
    return DeployedModel(path, runtime=runtime, precision=precision, threads=threads)


__all__ = [
    "DeployedModel",
    "ModelInfo",
    "is_exported_model",
    "load_model",
    "read_model_info",
    "resolve_deployed_runtime",
    "sidecar_path",
]
