"""The runtimes headstart can run a network on, in one table, and how ``auto`` picks among them.

Every runner has one contract: ``runner(images)`` takes uint8 RGB
``[N, H, W, 3]`` and returns float32 ``[N, D]``.  Normalisation is inside the
graph, so runners differ only in speed and numerics.  A runtime is one row of
:data:`RUNTIMES` (its precisions, how to install it, its runner factory and its
place in ``auto``) and one runner module next to this file; adding a runtime
touches nothing else.

``auto`` picks, in ``auto_rank`` order: CUDA fp16 when an NVIDIA GPU is usable,
OpenVINO (bf16 where the CPU has native bf16, else fp32), ONNX Runtime fp32,
PyTorch fp32.  Reduced precisions are only offered where the tests show they
agree with PyTorch fp32 (cosine >= 0.99 per image, same test accuracy within
0.5 points).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import UsageError

if TYPE_CHECKING:  # pragma: no cover
    from ..backbones import Backbone

Runner = Callable[[np.ndarray], np.ndarray]

# Images per network call.  OpenVINO bf16 ran 5-10 % faster in batches of 16 than
# of 32 on a 2-core CPU, end to end about 6 % (docs/PERFORMANCE.md); a GPU waits
# for decoding whatever the batch; the vectors do not depend on it.
DEFAULT_BATCH_SIZE = 16
PRECISIONS = ("fp32", "fp16", "bf16")
# How images become pixels ahead of the network: threads, worker processes, or nvJPEG on the GPU.
DECODE_MODES = ("auto", "threads", "processes", "gpu")


@dataclass(frozen=True)
class RuntimeSpec:
    """One runtime: what it computes in, how to get it, how to build its runner, where ``auto`` puts it."""

    name: str
    precisions: tuple[str, ...]  # for a backbone; the first is the default unless best_precision says otherwise
    install: str  # what to pip install
    module: str  # importable when installed
    factory: str  # "module:function" in this package, building a runner
    source: str  # what the factory takes: "module" (a torch module) or "file" (ONNX / IR / engine)
    auto_rank: int | None  # order in "auto" (lower first); None: never picked by auto for a backbone
    file_formats: tuple[str, ...] = ()  # exported model formats it runs
    file_precisions: tuple[str, ...] = ("fp32",)  # compute precisions for an exported file
    device: str = "cpu"

    def create(self, *args: Any, **kwargs: Any) -> Runner:
        module, function = self.factory.split(":")
        return getattr(importlib.import_module(f".{module}", __name__), function)(*args, **kwargs)


RUNTIMES: dict[str, RuntimeSpec] = {
    spec.name: spec
    for spec in (
        RuntimeSpec("torch", ("fp32",), "torch", "torch", "torch_runner:create_torch_runner", "module", 3),
        RuntimeSpec(
            "cuda",
            ("fp16", "fp32"),
            "torch (a CUDA build)",
            "torch",
            "torch_runner:create_torch_runner",
            "module",
            0,
            device="cuda",
        ),
        RuntimeSpec(
            "onnxruntime",
            ("fp32",),
            "onnxruntime",
            "onnxruntime",
            "onnxruntime_runner:create_onnxruntime_runner",
            "file",
            2,
            file_formats=("onnx",),
        ),
        RuntimeSpec(
            "openvino",
            ("fp32", "bf16"),
            "openvino",
            "openvino",
            "openvino_runner:create_openvino_runner",
            "file",
            1,
            file_formats=("onnx", "openvino"),
            file_precisions=("fp32", "bf16"),
        ),
        RuntimeSpec(
            "tensorrt",
            ("fp16", "fp32"),
            "tensorrt (on an NVIDIA GPU)",
            "tensorrt",
            "tensorrt:create_engine_runner",
            "file",
            None,
            file_formats=("tensorrt",),
            file_precisions=("engine",),
            device="cuda",
        ),
        RuntimeSpec(
            "litert",
            ("fp32",),
            "ai-edge-litert",
            "ai_edge_litert",
            "litert_runner:create_litert_runner",
            "file",
            None,
            file_formats=("tflite",),
        ),
        RuntimeSpec(
            "tensorflow",
            ("fp32",),
            "'headstart[tensorflow]'",
            "tensorflow",
            "tensorflow_runner:create_saved_model_runner",
            "file",
            None,
            file_formats=("saved_model",),
        ),
    )
}
RUNTIME_NAMES = tuple(RUNTIMES)
BACKBONE_RUNTIMES = tuple(name for name, spec in RUNTIMES.items() if spec.auto_rank is not None)


@dataclass(frozen=True)
class RuntimeChoice:
    """A runtime and the numeric precision it computes in."""

    runtime: str
    precision: str

    @property
    def key(self) -> str:
        return f"{self.runtime}-{self.precision}"

    @property
    def spec(self) -> RuntimeSpec:
        return RUNTIMES[self.runtime]


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


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def runtime_available(name: str) -> bool:
    spec = RUNTIMES[name]
    return installed(spec.module) and (spec.device != "cuda" or cuda_available())


def available_runtimes() -> list[str]:
    """Runtimes that can run a backbone here, in ``auto`` order."""
    ranked = sorted(BACKBONE_RUNTIMES, key=lambda n: RUNTIMES[n].auto_rank or 0)
    # Check cheap CPU runtimes first so a CPU-only machine never imports torch to look for CUDA.
    return [n for n in ranked if installed(RUNTIMES[n].module) and (RUNTIMES[n].device != "cuda" or cuda_available())]


def best_precision(runtime: str) -> str:
    if runtime == "cuda":
        return "fp16"
    if runtime == "openvino" and cpu_has_native_bf16():
        return "bf16"
    return "fp32"


_best_precision = best_precision  # the name benchmarks used


def _unavailable(spec: RuntimeSpec) -> UsageError:
    what = (
        "no usable CUDA GPU was found"
        if spec.device == "cuda" and installed(spec.module)
        else f"{spec.name} is not installed"
    )
    return UsageError(
        f"runtime {spec.name} is not available: {what}", hint=f"pip install {spec.install}, or use --runtime auto"
    )


def resolve_runtime(runtime: str = "auto", precision: str = "auto") -> RuntimeChoice:
    """Resolve ``auto`` names to a concrete runtime and precision for a backbone, without loading any model."""
    available = available_runtimes()
    if runtime == "auto":
        candidates = [r for r in available if precision == "auto" or precision in RUNTIMES[r].precisions]
        if not candidates:
            raise UsageError(
                f"no installed runtime computes in {precision}", hint="pip install openvino, or use --precision fp32"
            )
        runtime = candidates[0]
    elif runtime not in BACKBONE_RUNTIMES:
        choices = ", ".join(BACKBONE_RUNTIMES)
        if runtime in RUNTIMES:
            raise UsageError(
                f"runtime {runtime} runs exported models only, not a backbone", hint=f"use one of auto, {choices}"
            )
        raise UsageError(f"unknown runtime {runtime!r}", hint=f"use one of auto, {choices}")
    elif runtime not in available:
        raise _unavailable(RUNTIMES[runtime])
    if precision == "auto":
        precision = best_precision(runtime)
    if precision not in RUNTIMES[runtime].precisions:
        raise UsageError(
            f"runtime {runtime} does not support precision {precision}",
            hint=f"use --precision {' or '.join(RUNTIMES[runtime].precisions)}",
        )
    return RuntimeChoice(runtime, precision)


def resolve_file_runtime(model_format: str, runtime: str = "auto", precision: str = "auto") -> RuntimeChoice:
    """The runtime and compute precision for an exported file; ``auto`` goes in ``auto_rank`` order.

    The file fixes the weights' precision (an int8 graph stays int8); ``precision``
    only picks how the remaining float maths is done, fp32 unless bf16 is asked for.
    """
    order = sorted(
        (s for s in RUNTIMES.values() if model_format in s.file_formats),
        key=lambda s: 99 if s.auto_rank is None else s.auto_rank,
    )
    names = [s.name for s in order]
    if not order:
        raise UsageError(f"no runtime runs {model_format} models", hint="export to onnx or openvino")
    if runtime == "auto":
        found = [s for s in order if installed(s.module)]
        if not found:
            raise UsageError(
                f"no runtime for {model_format} models is installed",
                hint=" or ".join(f"pip install {s.install}" for s in order),
            )
        spec = found[0]
    elif runtime not in names:
        raise UsageError(
            f"runtime {runtime} cannot run an exported {model_format} model", hint=f"use --runtime {' or '.join(names)}"
        )
    else:
        spec = RUNTIMES[runtime]
        if not installed(spec.module):
            raise UsageError(f"runtime {runtime} is not installed", hint=f"pip install {spec.install}")
    chosen = spec.file_precisions[0] if precision == "auto" else precision
    if chosen not in spec.file_precisions:
        raise UsageError(
            f"runtime {spec.name} cannot compute an exported model in {precision}",
            hint=f"use --precision {' or '.join(spec.file_precisions)}",
        )
    return RuntimeChoice(spec.name, chosen)


# --------------------------------------------------------------------- runners


def join_outputs(outputs: list[Any]) -> np.ndarray:
    """A graph's outputs side by side, float32 ``[N, ...]``: a classifier's probabilities, then its ood_score.

    Runners keep one contract (one array per batch); a graph with one output is returned as it is.
    """
    arrays = [np.asarray(o, dtype=np.float32) for o in outputs]
    if len(arrays) == 1:
        return arrays[0]
    return np.concatenate([a.reshape(len(a), -1) for a in arrays], axis=1)


def create_file_runner(path: Path, choice: RuntimeChoice, threads: int | None = None) -> Runner:
    """A runner over a model file (ONNX, OpenVINO IR, TensorRT engine): no torch for the CPU runtimes."""
    spec = RUNTIMES[choice.runtime]
    if spec.source != "file":
        raise UsageError(
            f"runtime {choice.runtime} cannot run model files",
            hint=f"use one of {', '.join(n for n, s in RUNTIMES.items() if s.source == 'file')}",
        )
    if spec.name == "tensorrt":
        return spec.create(path)
    return spec.create(path, choice, threads)


create_session_runner = create_file_runner  # the name export and bench have used


def create_runner(
    backbone: Backbone,
    choice: RuntimeChoice,
    model_dir: Path,
    *,
    imagenet: bool = False,
    threads: int | None = None,
    compile: bool = False,
) -> Runner:
    """Build the backbone's runner for ``choice``: converted once, cached under ``model_dir``."""
    if backbone.name.startswith("tfhub:"):  # a SavedModel: tf2onnx once, else TensorFlow (headstart.tfhub_runtime)
        from ..tfhub_runtime import create_tfhub_runner

        return create_tfhub_runner(backbone, choice, model_dir, imagenet=imagenet, threads=threads)
    spec = RUNTIMES[choice.runtime]
    if spec.source == "file":
        from .onnx_files import ensure_backbone_onnx

        return create_file_runner(ensure_backbone_onnx(backbone, model_dir, imagenet=imagenet), choice, threads)
    from ..networks import create_feature_extractor, create_imagenet_classifier

    module = create_imagenet_classifier(backbone) if imagenet else create_feature_extractor(backbone)
    return spec.create(module, choice, compile=compile)


_LAZY = {"export_onnx": "onnx_files", "ensure_backbone_onnx": "onnx_files", "create_torch_runner": "torch_runner"}


def __getattr__(name: str) -> Any:
    # Reachable from here without importing torch or onnx until they are used.
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BACKBONE_RUNTIMES",
    "DEFAULT_BATCH_SIZE",
    "PRECISIONS",
    "RUNTIMES",
    "RUNTIME_NAMES",
    "Runner",
    "RuntimeChoice",
    "RuntimeSpec",
    "available_runtimes",
    "best_precision",
    "cpu_has_native_bf16",
    "create_file_runner",
    "create_runner",
    "create_session_runner",
    "cuda_available",
    "installed",
    "resolve_file_runtime",
    "resolve_runtime",
    "runtime_available",
]
