"""PyTorch on the CPU (eager fp32) or on CUDA (fp16, channels-last, optionally compiled)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from . import Runner, RuntimeChoice, join_outputs

if TYPE_CHECKING:  # pragma: no cover
    import torch


def create_torch_runner(module: "torch.nn.Module", choice: RuntimeChoice, *, compile: bool = False) -> Runner:
    """Eager PyTorch on the CPU, or CUDA with fp16 and channels-last.

    On CUDA the uint8 batch goes through one reused page-locked buffer (a
    copy of 150 KB per image, not a new pinned allocation per batch); the
    conversion to float and the normalisation run on the GPU inside the graph,
    and permuting NHWC to NCHW gives a channels-last tensor for free.
    ``compile=True`` runs ``torch.compile`` (worth it for long runs: the first
    batches pay for compiling, once per process).
    """
    import torch

    pinned: dict[str, torch.Tensor] = {}
    if choice.runtime == "cuda":
        device = torch.device("cuda")
        dtype = torch.float16 if choice.precision == "fp16" else torch.float32
        module = module.to(device=device, dtype=dtype).to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True  # one input shape all run long: pick the fastest kernels once
    else:
        device = torch.device("cpu")
    if compile:
        module = torch.compile(module, dynamic=False)  # type: ignore[assignment]

    def to_device(images: np.ndarray) -> "torch.Tensor":
        batch = torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8))
        if device.type != "cuda":
            return batch
        buffer = pinned.get("in")
        if buffer is None or buffer.shape[0] < batch.shape[0] or buffer.shape[1:] != batch.shape[1:]:
            buffer = pinned["in"] = torch.empty(batch.shape, dtype=torch.uint8).pin_memory()
        # The whole buffer goes to the GPU, a short last batch padded with what the
        # buffer held: a new batch shape would cost seconds of cuDNN autotuning (and a
        # recompile under torch.compile) to save microseconds; images never interact.
        buffer[: batch.shape[0]].copy_(batch)
        return buffer.to(device, non_blocking=True)

    def run_torch(images: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = module(to_device(images))
            outputs = out if isinstance(out, (tuple, list)) else (out,)
            return join_outputs([o[: len(images)].float().cpu().numpy() for o in outputs])

    return run_torch
