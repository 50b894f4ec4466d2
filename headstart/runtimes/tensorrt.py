"""A small TensorRT engine builder and runner, written against TensorRT's documented Python API.

The exported ONNX graph (uint8 ``images [N, H, W, 3]`` in, probabilities out)
is parsed with ``trt.OnnxParser``, given one optimisation profile for the
dynamic batch, built in fp32, fp16 or int8 (calibrated on the run's own
training images with an entropy calibrator) and serialised.  Engines are
specific to a TensorRT version and a GPU, so the cache key holds the model's
hash, TensorRT's version, the GPU's name, the precision and the profile: a
retrained model, an upgraded TensorRT or another card never reuses a stale
engine.

Status: the code that needs TensorRT (``build_engine``, ``create_engine_runner``)
has not run yet, because TensorRT is not installed where headstart is tested.
Everything around it (cache keys, profiles, the ``trtexec`` command line, the
error without TensorRT) is tested.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shlex
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from ..errors import ModelError, UsageError
from ..files import sha256_file

log = logging.getLogger("headstart")

INPUT_NAME = "images"
PRECISIONS = ("fp32", "fp16", "int8")
WORKSPACE_BYTES = 2 << 30


@dataclass(frozen=True)
class BatchProfile:
    """The batch sizes an engine accepts (min, max) and is tuned for (opt)."""

    min: int = 1
    opt: int = 32
    max: int = 64

    def __post_init__(self) -> None:
        if not (1 <= self.min <= self.opt <= self.max):
            raise UsageError(f"batch profile needs 1 <= min <= opt <= max, got {self.min}/{self.opt}/{self.max}")

    def shapes(self, input_size: int) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """(min, opt, max) shapes of the NHWC ``images`` input."""
        return tuple((n, input_size, input_size, 3) for n in (self.min, self.opt, self.max))  # type: ignore[return-value]


class TensorRTUnavailable(ModelError):
    """TensorRT (or a CUDA GPU) is missing; the hint carries the equivalent trtexec command."""


def tensorrt_version() -> str | None:
    """TensorRT's version from package metadata, without importing it (None when not installed)."""
    for dist in ("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt_cu12", "tensorrt-libs"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    try:
        if importlib.util.find_spec("tensorrt") is not None:
            import tensorrt as trt

            return str(trt.__version__)
    except ImportError:
        pass
    return None


def trtexec_command(
    onnx_path: str | Path,
    engine_path: str | Path,
    *,
    input_size: int,
    precision: str = "fp16",
    profile: BatchProfile = BatchProfile(),
) -> str:
    """The ``trtexec`` line that builds the same engine as :func:`build_engine` (int8 without calibration)."""
    if precision not in PRECISIONS:
        raise UsageError(f"TensorRT precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    lo, opt, hi = (f"{INPUT_NAME}:" + "x".join(map(str, s)) for s in profile.shapes(input_size))
    parts = ["trtexec", f"--onnx={onnx_path}", f"--saveEngine={engine_path}"]
    if precision == "fp16":
        parts.append("--fp16")
    elif precision == "int8":
        parts += ["--int8", "--fp16"]
    parts += [f"--minShapes={lo}", f"--optShapes={opt}", f"--maxShapes={hi}"]
    return " ".join(shlex.quote(p) for p in parts)


def engine_cache_key(
    model_sha256: str,
    *,
    trt_version: str,
    gpu_name: str,
    precision: str,
    profile: BatchProfile = BatchProfile(),
    calibration: str | None = None,
) -> str:
    """Stable id of one engine build: anything that changes the engine changes the key."""
    if precision not in PRECISIONS:
        raise UsageError(f"TensorRT precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    payload = {
        "model": model_sha256,
        "tensorrt": trt_version,
        "gpu": gpu_name,
        "precision": precision,
        "profile": [profile.min, profile.opt, profile.max],
        "calibration": calibration if precision == "int8" else None,
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def engine_cache_path(cache_dir: str | Path, key: str, precision: str) -> Path:
    return Path(cache_dir) / "tensorrt" / f"{key}-{precision}.engine"


def require_tensorrt(
    onnx_path: str | Path,
    engine_path: str | Path,
    *,
    input_size: int,
    precision: str,
    profile: BatchProfile = BatchProfile(),
) -> ModuleType:
    """Import TensorRT and check for a GPU, or raise :class:`TensorRTUnavailable` with the trtexec line."""
    command = trtexec_command(onnx_path, engine_path, input_size=input_size, precision=precision, profile=profile)
    try:
        import tensorrt as trt
    except ImportError:
        raise TensorRTUnavailable(
            "TensorRT is not installed, so no engine was built",
            hint=f"install TensorRT (pip install tensorrt) on the GPU machine, or build it there with: {command}",
        ) from None
    from . import cuda_available

    if not cuda_available():
        raise TensorRTUnavailable(
            "TensorRT needs an NVIDIA GPU and none is usable here", hint=f"on the GPU machine run: {command}"
        )
    return trt


def gpu_name() -> str:
    import torch

    return str(torch.cuda.get_device_name(torch.cuda.current_device()))


def _logger(trt: Any) -> Any:  # trt: the tensorrt module; Any, as its classes are subclassed here
    class _Log(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: Any, msg: str) -> None:
            level = (
                logging.ERROR
                if severity <= trt.ILogger.ERROR
                else (logging.WARNING if severity == trt.ILogger.WARNING else logging.DEBUG)
            )
            log.log(level, "TensorRT: %s", msg)

    return _Log()


def _calibrator(trt: Any, batches: list[np.ndarray], cache_file: Path) -> Any:
    """An entropy calibrator over uint8 NHWC batches, staged on the GPU with torch."""
    import torch

    class _Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self._batches = iter(batches)
            self._device = torch.empty(batches[0].shape, dtype=torch.uint8, device="cuda")

        def get_batch_size(self) -> int:
            return int(batches[0].shape[0])

        def get_batch(self, names: list[str], p_str: Any = None) -> list[int] | None:
            batch = next(self._batches, None)
            if batch is None:
                return None
            self._device.copy_(torch.from_numpy(np.ascontiguousarray(batch)))
            torch.cuda.synchronize()
            return [int(self._device.data_ptr())]

        def read_calibration_cache(self) -> bytes | None:
            return cache_file.read_bytes() if cache_file.is_file() else None

        def write_calibration_cache(self, cache: Any) -> None:
            cache_file.write_bytes(bytes(cache))

    return _Calibrator()


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path,
    *,
    input_size: int,
    precision: str = "fp16",
    profile: BatchProfile = BatchProfile(),
    calibration: Iterable[np.ndarray] | None = None,
    calibration_id: str | None = None,
    cache_dir: str | Path | None = None,
) -> Path:
    """Build (or take from the cache) a serialised engine for ``onnx_path`` and copy it to ``engine_path``.

    ``calibration`` yields uint8 batches of one size (int8 only); ``calibration_id``
    names them in the cache key so a new calibration set builds a new engine.
    """
    engine_path = Path(engine_path)
    trt = require_tensorrt(onnx_path, engine_path, input_size=input_size, precision=precision, profile=profile)
    key = engine_cache_key(
        sha256_file(onnx_path),
        trt_version=str(trt.__version__),
        gpu_name=gpu_name(),
        precision=precision,
        profile=profile,
        calibration=calibration_id,
    )
    cached = engine_cache_path(cache_dir, key, precision) if cache_dir else None
    if cached is not None and cached.is_file():
        log.info("TensorRT engine found in the cache: %s", cached)
        data = cached.read_bytes()
    else:
        data = _build(trt, Path(onnx_path), input_size, precision, profile, calibration)
        if cached is not None:
            _write_atomic(cached, data)
    _write_atomic(engine_path, data)
    return engine_path


def _build(
    trt: ModuleType,
    onnx_path: Path,
    input_size: int,
    precision: str,
    profile: BatchProfile,
    calibration: Iterable[np.ndarray] | None,
) -> bytes:
    logger = _logger(trt)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):  # TensorRT < 10 needs it, 10 ignores it
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelError(f"TensorRT cannot parse {onnx_path}: {errors}", hint="report it with the ONNX file")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    opt_profile = builder.create_optimization_profile()
    lo, opt, hi = profile.shapes(input_size)
    opt_profile.set_shape(INPUT_NAME, lo, opt, hi)
    config.add_optimization_profile(opt_profile)
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    with tempfile.TemporaryDirectory(prefix="headstart-trt-") as tmp:
        if precision == "int8":
            batches = [b for b in (calibration or []) if len(b)]
            if not batches:
                raise UsageError("int8 needs calibration images", hint="export from a run whose images still exist")
            config.set_flag(trt.BuilderFlag.INT8)
            config.int8_calibrator = _calibrator(trt, batches, Path(tmp) / "calibration.cache")
            config.set_calibration_profile(opt_profile)
        log.info("building a TensorRT %s engine (minutes) from %s", precision, onnx_path)
        serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ModelError(
            f"TensorRT could not build an engine from {onnx_path}", hint="run again with -v for TensorRT's log"
        )
    return bytes(serialized)


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def create_engine_runner(engine_path: str | Path) -> Callable[[np.ndarray], np.ndarray]:
    """``runner(uint8 [N, H, W, 3]) -> float32 [N, classes]`` over a serialised engine (buffers via torch)."""
    import torch

    try:
        import tensorrt as trt
    except ImportError:
        raise TensorRTUnavailable(
            "TensorRT is not installed, so a .engine file cannot run here",
            hint="run the .onnx or OpenVINO export instead",
        ) from None
    runtime = trt.Runtime(_logger(trt))
    engine = runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
    if engine is None:
        raise ModelError(
            f"{engine_path} was built for another TensorRT version or GPU", hint="export it again on this machine"
        )
    context = engine.create_execution_context()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    output = next(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
    stream = torch.cuda.Stream()

    def run(images: np.ndarray) -> np.ndarray:
        batch = torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8)).cuda()
        context.set_input_shape(INPUT_NAME, tuple(batch.shape))
        out = torch.empty(tuple(context.get_tensor_shape(output)), dtype=torch.float32, device="cuda")
        context.set_tensor_address(INPUT_NAME, int(batch.data_ptr()))
        context.set_tensor_address(output, int(out.data_ptr()))
        torch.cuda.current_stream().synchronize()
        if not context.execute_async_v3(stream.cuda_stream):
            raise ModelError("TensorRT failed to run the engine", hint="run again with -v for TensorRT's log")
        stream.synchronize()
        return out.cpu().numpy()

    return run


__all__ = [
    "BatchProfile",
    "TensorRTUnavailable",
    "build_engine",
    "create_engine_runner",
    "engine_cache_key",
    "engine_cache_path",
    "require_tensorrt",
    "tensorrt_version",
    "trtexec_command",
]
