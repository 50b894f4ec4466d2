"""LiteRT (ai-edge-litert's interpreter, XNNPACK on the CPU) over a .tflite: uint8 NHWC in, float32 out.

It needs ai-edge-litert and numpy only: no torch, no TensorFlow.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from . import Runner, RuntimeChoice, join_outputs


def _dequantize(values: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    scale, zero = detail.get("quantization", (0.0, 0))
    if values.dtype == np.float32 or not scale:
        return values
    return (values.astype(np.float32) - zero) * scale


def create_litert_runner(model_path: Path, choice: RuntimeChoice, threads: int | None = None) -> Runner:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(model_path), num_threads=threads or os.cpu_count() or 1)
    (image,) = interpreter.get_input_details()
    outputs = interpreter.get_output_details()  # in the file's order: probabilities, then ood_score
    state: dict[str, tuple[int, ...] | None] = {"shape": None}

    def run(images: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(images, dtype=np.uint8)
        if state["shape"] != batch.shape:  # a new batch size: resize once, not per call
            interpreter.resize_tensor_input(image["index"], list(batch.shape))
            interpreter.allocate_tensors()
            state["shape"] = batch.shape
        interpreter.set_tensor(image["index"], batch)
        interpreter.invoke()
        return join_outputs([_dequantize(interpreter.get_tensor(o["index"]), o) for o in outputs])

    return run
