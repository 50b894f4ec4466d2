"""The conversions behind ``headstart export``: torch -> ONNX, int8 calibration, ONNX -> OpenVINO IR and TensorRT.

Each takes the checked torch module or the fp32 ONNX file and writes one file;
:mod:`headstart.export` chooses, checks and moves them into place.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .data import ImageRecord, Preprocessing
from .errors import DataError
from .export_check import decode_images, spread_records
from .sidecar import ExportDescription

if TYPE_CHECKING:  # pragma: no cover
    import torch

log = logging.getLogger("headstart")


def write_onnx(module: "torch.nn.Module", path: Path, input_size: int, description: ExportDescription) -> Path:
    writer = getattr(module, "write_onnx", None)  # a SavedModel backbone: its ONNX joined to the head's (tfhub_export)
    if writer is not None:
        return writer(path, description)
    from .runtimes import export_onnx

    return export_onnx(module, path, input_size, output_name=description.output_names, metadata=description.metadata())


def set_onnx_metadata(path: Path, metadata: dict[str, str]) -> None:
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))


def quantize_int8(fp32_onnx: Path, out: Path, calibration: np.ndarray, *, batch_size: int = 16) -> Path:
    """ONNX Runtime static int8 quantisation (QDQ, per-channel weights), calibrated on ``calibration`` images.

    Activations are signed and symmetric (s8s8): measured on a Fashion-MNIST run,
    ONNX Runtime lost 0.3 points of test accuracy this way against 2.0 with
    asymmetric uint8 activations (docs/DEPLOY.md).

    QDQ keeps the graph readable by ONNX Runtime, OpenVINO and TensorRT alike.
    The head and the softmax stay in float: they are tiny, and quantising the
    probabilities would only cost accuracy.
    """
    import onnx
    import onnxruntime
    from onnxruntime import quantization as ortq

    if len(calibration) == 0:
        raise DataError(
            "int8 needs calibration images and none could be read",
            hint="export from a run whose training images still exist",
        )

    class Reader(ortq.CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter([calibration[i : i + batch_size] for i in range(0, len(calibration), batch_size)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            return None if batch is None else {"images": batch}

    onnxruntime.set_default_logger_severity(3)  # calibration sessions warn about every unused initializer
    graph = onnx.load(str(fp32_onnx), load_external_data=False).graph
    # Everything after the last convolution (pooling, head, softmax) stays float.
    last_conv = max(i for i, node in enumerate(graph.node) if node.op_type == "Conv")
    tail = [node.name for node in graph.node[last_conv + 1 :] if node.name]
    with tempfile.TemporaryDirectory(prefix="headstart-quant-") as tmp:
        log.info("calibrating int8 on %d training images", len(calibration))
        ortq.quantize_static(
            str(fp32_onnx),
            str(Path(tmp) / "int8.onnx"),
            Reader(),
            quant_format=ortq.QuantFormat.QDQ,
            per_channel=True,
            activation_type=ortq.QuantType.QInt8,
            weight_type=ortq.QuantType.QInt8,
            calibrate_method=ortq.CalibrationMethod.MinMax,
            nodes_to_exclude=tail,
            extra_options={"ActivationSymmetric": True},
        )
        shutil.move(str(Path(tmp) / "int8.onnx"), out)
    return out


def write_openvino(onnx_path: Path, xml_path: Path, precision: str, description: ExportDescription) -> Path:
    import openvino as ov

    model = ov.convert_model(str(onnx_path))
    for key in ("labels", "precision"):
        model.set_rt_info(json.dumps(description.to_dict()[key]), ["headstart", key])
    ov.save_model(model, str(xml_path), compress_to_fp16=(precision == "fp16"))
    return xml_path


def build_tensorrt(
    onnx_fp32: Path,
    staged: Path,
    precision: str,
    input_size: int,
    training: Sequence[ImageRecord],
    calibration_images: int,
    prep: Preprocessing,
    cache_dir: str | Path | None,
) -> dict[str, Any]:
    from .cache import models_dir
    from .runtimes.tensorrt import BatchProfile, build_engine, tensorrt_version

    profile = BatchProfile()
    batches, calibration_id, info = None, None, {}
    if precision == "int8":
        x_cal, kept = decode_images(spread_records(training, calibration_images, seed=1), prep)
        usable = len(x_cal) - len(x_cal) % 16 or len(x_cal)
        batches = [x_cal[i : i + 16] for i in range(0, usable, 16)]
        calibration_id = hashlib.sha256("".join(r.sha256 for r in kept).encode()).hexdigest()[:16]
        info = {"images": len(x_cal), "source": "run training split", "method": "TensorRT entropy calibrator 2"}
    models = models_dir(cache_dir)
    build_engine(
        onnx_fp32,
        staged,
        input_size=input_size,
        precision=precision,
        profile=profile,
        calibration=batches,
        calibration_id=calibration_id,
        cache_dir=models,
    )
    return {"tensorrt": tensorrt_version(), "profile": asdict(profile), **({"calibration": info} if info else {})}
