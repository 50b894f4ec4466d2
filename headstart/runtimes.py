"""Run a backbone on batches of images: PyTorch (CPU or CUDA), ONNX Runtime, OpenVINO.

Every runner has one contract: ``runner(images)`` takes uint8 RGB
``[N, H, W, 3]`` and returns float32 ``[N, D]``.  Normalisation is inside the
graph, so runners differ only in speed and numerics.  Converted models (ONNX)
are built once per backbone fingerprint and kept in the cache directory.

``auto`` picks, in this order: CUDA fp16 when an NVIDIA GPU is usable, OpenVINO
(bf16 where the CPU has native bf16, else fp32), ONNX Runtime fp32, PyTorch fp32.
Reduced precisions are only offered where the tests show they agree with
PyTorch fp32 (cosine >= 0.99 per image, same test accuracy within 0.5 points).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .backbones import Backbone
from .errors import UsageError

if TYPE_CHECKING:  # pragma: no cover
    import torch

log = logging.getLogger("headstart")

RUNTIMES = ("torch", "cuda", "onnxruntime", "openvino")
# Images per network call.  OpenVINO bf16 ran 5-10 % faster in batches of 16 than
# of 32 on a 2-core CPU, end to end about 6 % (docs/PERFORMANCE.md); a GPU waits
# for decoding whatever the batch; the vectors do not depend on it.
DEFAULT_BATCH_SIZE = 16
PRECISIONS = ("fp32", "fp16", "bf16")
_SUPPORTED = {
    "torch": ("fp32",),
    "cuda": ("fp16", "fp32"),
    "onnxruntime": ("fp32",),
    "openvino": ("fp32", "bf16"),
}
_PIP = {"onnxruntime": "onnxruntime", "openvino": "openvino", "torch": "torch", "cuda": "torch (a CUDA build)"}


@dataclass(frozen=True)
class RuntimeChoice:
    """A runtime and the numeric precision it computes in."""

    runtime: str
    precision: str

    @property
    def key(self) -> str:
        return f"{self.runtime}-{self.precision}"


@lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """AVX-512 BF16 or AMX: where OpenVINO's bf16 is both fast and accurate enough."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as handle:
            flags = handle.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@lru_cache(maxsize=1)
def cuda_available() -> bool:
    """Look for an NVIDIA driver first, so CPU-only machines never import torch for this."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    import shutil

    markers = ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/nvidia0")
    if not (any(Path(m).exists() for m in markers) or shutil.which("nvidia-smi")):
        return False
    import torch

    return bool(torch.cuda.is_available())


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def available_runtimes() -> list[str]:
    found = [name for name, module in (("torch", "torch"), ("onnxruntime", "onnxruntime"),
                                       ("openvino", "openvino")) if _installed(module)]
    if "torch" in found and cuda_available():
        found.insert(1, "cuda")
    return found


def _best_precision(runtime: str) -> str:
    if runtime == "cuda":
        return "fp16"
    if runtime == "openvino" and cpu_has_native_bf16():
        return "bf16"
    return "fp32"


def resolve_runtime(runtime: str = "auto", precision: str = "auto") -> RuntimeChoice:
    """Resolve ``auto`` names to a concrete runtime and precision without loading any model."""
    available = available_runtimes()
    if runtime == "auto":
        order = ("cuda", "openvino", "onnxruntime", "torch")
        candidates = [r for r in order if r in available and (precision == "auto" or precision in _SUPPORTED[r])]
        if not candidates:
            raise UsageError(f"no installed runtime computes in {precision}",
                             hint="pip install openvino, or use --precision fp32")
        runtime = candidates[0]
    elif runtime not in RUNTIMES:
        raise UsageError(f"unknown runtime {runtime!r}", hint=f"use one of auto, {', '.join(RUNTIMES)}")
    elif runtime not in available:
        what = "no usable CUDA GPU was found" if runtime == "cuda" else f"{runtime} is not installed"
        raise UsageError(f"runtime {runtime} is not available: {what}",
                         hint=f"pip install {_PIP[runtime]}, or use --runtime auto")
    if precision == "auto":
        precision = _best_precision(runtime)
    if precision not in _SUPPORTED[runtime]:
        raise UsageError(f"runtime {runtime} does not support precision {precision}",
                         hint=f"use --precision {' or '.join(_SUPPORTED[runtime])}")
    return RuntimeChoice(runtime, precision)


# ------------------------------------------------------------------ ONNX files


def export_onnx(module: "torch.nn.Module", path: Path, input_size: int, *, output_name: str = "output",
                metadata: dict[str, str] | None = None) -> Path:
    """Export a uint8-NHWC module to ONNX with a dynamic batch, atomically."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros((2, input_size, input_size, 3), dtype=torch.uint8)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".onnx", dir=path.parent)
    os.close(fd)
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (example,), tmp, input_names=["images"], output_names=[output_name],
                              dynamic_axes={"images": {0: "batch"}, output_name: {0: "batch"}},
                              opset_version=17, dynamo=False)
        if metadata:
            import onnx

            model = onnx.load(tmp)
            for key, value in metadata.items():
                entry = model.metadata_props.add()
                entry.key, entry.value = key, value
            onnx.save(model, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def ensure_backbone_onnx(backbone: Backbone, model_dir: Path, *, imagenet: bool = False) -> Path:
    """The backbone as ONNX (uint8 images in, bottlenecks or ImageNet probabilities out), built once."""
    kind = "imagenet" if imagenet else "features"
    path = Path(model_dir) / f"{backbone.name}-{backbone.fingerprint}-{kind}.onnx"
    if path.is_file():
        return path
    from .networks import create_feature_extractor, create_imagenet_classifier

    log.info("converting %s to ONNX (once per backbone) -> %s", backbone.name, path)
    module = create_imagenet_classifier(backbone) if imagenet else create_feature_extractor(backbone)
    return export_onnx(module, path, backbone.preprocessing.input_size)


# --------------------------------------------------------------------- runners


Runner = Callable[[np.ndarray], np.ndarray]


def create_session_runner(onnx_path: Path, choice: RuntimeChoice, threads: int | None = None) -> Runner:
    """A runner over an ONNX file with ONNX Runtime or OpenVINO (no torch needed)."""
    if choice.runtime == "onnxruntime":
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])

        def run_ort(images: np.ndarray) -> np.ndarray:
            return session.run(None, {"images": np.ascontiguousarray(images, dtype=np.uint8)})[0].astype(
                np.float32, copy=False)

        return run_ort
    if choice.runtime == "openvino":
        import openvino as ov

        core = ov.Core()
        # One request in LATENCY mode uses every core for one batch; on small
        # machines that beats THROUGHPUT mode's streams (measured: 656 vs 340 img/s).
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY",
                                  "INFERENCE_PRECISION_HINT": "bf16" if choice.precision == "bf16" else "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        compiled = core.compile_model(core.read_model(str(onnx_path)), "CPU", config)
        request = compiled.create_infer_request()

        def run_ov(images: np.ndarray) -> np.ndarray:
            result = request.infer({0: np.ascontiguousarray(images, dtype=np.uint8)})
            return np.array(result[0], dtype=np.float32)

        return run_ov
    raise UsageError(f"runtime {choice.runtime} cannot run ONNX files", hint="use onnxruntime or openvino")


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
            return module(to_device(images))[: len(images)].float().cpu().numpy()

    return run_torch


def create_runner(backbone: Backbone, choice: RuntimeChoice, model_dir: Path, *, imagenet: bool = False,
                  threads: int | None = None, compile: bool = False) -> Runner:
    """Build the runner for ``choice``: converted once, cached under ``model_dir``."""
    if choice.runtime in ("onnxruntime", "openvino"):
        return create_session_runner(ensure_backbone_onnx(backbone, model_dir, imagenet=imagenet), choice, threads)
    from .networks import create_feature_extractor, create_imagenet_classifier

    module = create_imagenet_classifier(backbone) if imagenet else create_feature_extractor(backbone)
    return create_torch_runner(module, choice, compile=compile)
