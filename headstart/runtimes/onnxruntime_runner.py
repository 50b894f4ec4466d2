"""ONNX Runtime (CPU) over an ONNX file: uint8 NHWC in, float32 out."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import Runner, RuntimeChoice, join_outputs


def create_onnxruntime_runner(onnx_path: Path, choice: RuntimeChoice, threads: int | None = None) -> Runner:
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(images: np.ndarray) -> np.ndarray:
        outputs = session.run(None, {name: np.ascontiguousarray(images, dtype=np.uint8)})
        return join_outputs(outputs)

    return run
