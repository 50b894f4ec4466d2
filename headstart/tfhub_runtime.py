"""Running a SavedModel backbone: converted once to ONNX (tf2onnx) for OpenVINO / ONNX Runtime, else TensorFlow.

Every runner keeps the runtimes' contract (uint8 ``[N, S, S, 3]`` in, float32
``[N, D]`` out): the graph divides by 255, so the module sees TF Hub's [0, 1]
floats, and calls the module's signature.  The ONNX file is written to the
converted-models folder under the backbone's fingerprint, once, after checking
it against TensorFlow on a probe batch; a module tf2onnx cannot convert (or
converts wrongly) runs in TensorFlow itself, with a warning, and that outcome
is remembered (per tf2onnx version) so later runs do not try again.
``docs/PERFORMANCE.md`` ("TF Hub / SavedModel backbones") has both speeds.

ImageNet classification modules (``label --imagenet``) get a softmax when they
return logits, and lose their first column when they have 1001 classes
(TF-slim's background class comes first).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .backbones import Backbone
from .errors import ModelError, UsageError
from .runtimes import Runner, RuntimeChoice
from .savedmodel_info import CALL, read_signature
from .tfhub import EXTRA_HINT, require_extra

log = logging.getLogger("headstart")

ONNX_RUNTIMES = ("onnxruntime", "openvino")
OPSET = 17  # the opset torch's exports use, so the backbone composes with a head graph (headstart.tfhub_export)
IMAGENET_CLASSES = (1000, 1001)
INPUT_NAME, OUTPUT_NAME = "images", "features"


@contextlib.contextmanager
def quiet_native_logs() -> Iterator[None]:
    """Hide what TensorFlow's C++ side writes straight to file descriptor 2 (oneDNN, CUDA probing, absl).

    Those lines bypass Python and TF_CPP_MIN_LOG_LEVEL alike; failures still surface as
    Python exceptions.  With ``-v`` (debug logging) nothing is hidden.
    """
    if log.isEnabledFor(logging.DEBUG):
        yield
        return
    try:
        saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    except OSError:
        yield
        return
    sys.stderr.flush()
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def import_tensorflow() -> Any:
    """TensorFlow, quietly; a one-line usage error naming the extra when it is missing."""
    require_extra()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # its C++ start-up chatter is not the user's business
    if "tensorflow" not in sys.modules:
        # Importing triton (torch's compiler, which torchvision and timm pull in) after TensorFlow
        # crashes the process with a segmentation fault; imported first, both work.
        with contextlib.suppress(Exception):
            if importlib.util.find_spec("triton") is not None:
                import triton  # noqa: F401
    try:
        with quiet_native_logs():
            import tensorflow as tf
    except ImportError as exc:
        raise UsageError(
            f"a TF Hub backbone needs TensorFlow, which cannot be imported ({exc})", hint=EXTRA_HINT
        ) from exc
    return tf


@dataclass(frozen=True)
class LoadedModule:
    """A SavedModel wrapped as uint8 images -> vectors, in TensorFlow."""

    function: Any  # tf.function: images uint8 [N, S, S, 3] -> {"features": float32 [N, D]}
    module: Any  # the loaded SavedModel (kept alive: the function captures its variables)
    probabilities: bool | None  # ImageNet wrappers: whether the module already returned probabilities


def _call_module(tf: Any, loaded: Any, folder: Path) -> Callable[[Any], Any]:
    """``x [N, S, S, 3] float32 in [0, 1] -> [N, D]`` through the signature headstart reads."""
    signature = read_signature(folder)
    if signature.key == CALL:

        def call(x: Any) -> Any:
            try:
                out = loaded(x, training=False)
            except (TypeError, ValueError):  # a module traced without a training argument
                out = loaded(x)
            return _pick(out)

        return call
    function = loaded.signatures[signature.key]
    output = signature.output.name if signature.output is not None else None

    def call_signature(x: Any) -> Any:
        out = function(**{signature.input.name: x})
        return out[output] if output in out else _pick(out)

    return call_signature


def _pick(out: Any) -> Any:
    if isinstance(out, dict):
        for key in ("feature_vector", "default", "logits", "probabilities", "output_0"):
            if key in out:
                return out[key]
        return next(iter(out.values()))
    if isinstance(out, (list, tuple)):
        return out[0]
    return out


def load_module(backbone: Backbone, *, imagenet: bool = False) -> LoadedModule:
    """The SavedModel in TensorFlow behind the runners' contract (ImageNet probabilities with ``imagenet``)."""
    tf = import_tensorflow()
    folder = Path(backbone.weights_path or "")
    size = backbone.preprocessing.input_size
    try:
        with quiet_native_logs():  # the first use of a device logs CUDA probing
            loaded = tf.saved_model.load(str(folder))
    except Exception as exc:  # TensorFlow raises many types for a broken or foreign folder
        raise ModelError(
            f"TensorFlow cannot load {folder}: {type(exc).__name__}: {str(exc).splitlines()[0]}",
            hint="check that it is a TF2 SavedModel",
        ) from exc
    call = _call_module(tf, loaded, folder)
    probabilities, classes = None, None
    if imagenet:
        probe = np.random.default_rng(0).random((2, size, size, 3), dtype=np.float32)
        out = np.asarray(call(tf.constant(probe)))
        if out.ndim != 2 or out.shape[1] not in IMAGENET_CLASSES:
            raise ModelError(
                f"{backbone.name} returns {out.shape[-1]} values per image, not ImageNet's 1000 (or 1001) classes",
                hint="use a TF Hub classification module with --imagenet, or train a head on this feature vector",
            )
        probabilities = bool(out.min() >= -1e-6 and np.allclose(out.sum(axis=1), 1.0, atol=1e-3))
        classes = out.shape[1]

    @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8, name=INPUT_NAME)])
    def wrapped(images: Any) -> Any:
        out = call(tf.cast(images, tf.float32) / 255.0)
        if imagenet:
            out = out if probabilities else tf.nn.softmax(out, axis=-1)
            if classes == 1001:
                out = out[:, 1:]  # TF-slim: class 0 is "background"
        return {OUTPUT_NAME: tf.cast(out, tf.float32)}

    return LoadedModule(wrapped, loaded, probabilities)


def create_tensorflow_runner(
    backbone: Backbone, *, imagenet: bool = False, module: LoadedModule | None = None
) -> Runner:
    """The module in TensorFlow itself (the fallback when it cannot be converted, and the export's reference)."""
    import_tensorflow()
    loaded = module or load_module(backbone, imagenet=imagenet)

    def run(images: np.ndarray) -> np.ndarray:
        out = loaded.function(np.ascontiguousarray(images, dtype=np.uint8))[OUTPUT_NAME]
        return np.asarray(out, dtype=np.float32)

    return run


# ------------------------------------------------------------------ ONNX, once per fingerprint


def onnx_path(backbone: Backbone, model_dir: Path, *, imagenet: bool = False) -> Path:
    return Path(model_dir) / f"tfhub-{backbone.fingerprint}-{'imagenet' if imagenet else 'features'}.onnx"


def _tf2onnx_version() -> str:
    try:
        import importlib.metadata

        return importlib.metadata.version("tf2onnx")
    except Exception:  # not installed: the conversion will say so
        return "missing"


def _failure_path(path: Path) -> Path:
    return path.with_suffix(".failed.json")


def ensure_tfhub_onnx(backbone: Backbone, model_dir: Path, *, imagenet: bool = False) -> Path | None:
    """The module as ONNX (uint8 images in), converted and checked once; None when tf2onnx cannot do it."""
    path = onnx_path(backbone, model_dir, imagenet=imagenet)
    if path.is_file():
        return path
    failed = _failure_path(path)
    version = _tf2onnx_version()
    if failed.is_file():
        try:
            record = json.loads(failed.read_text())
        except (OSError, ValueError):
            record = {}
        if record.get("tf2onnx") == version:
            log.warning(
                "%s could not be converted to ONNX earlier (%s): running it in TensorFlow",
                backbone.name,
                record.get("reason", "unknown reason"),
            )
            return None
    module = load_module(backbone, imagenet=imagenet)
    log.info("converting %s to ONNX with tf2onnx (once per module) -> %s", backbone.name, path)
    try:
        convert_to_onnx(module, path)
    except Exception as exc:  # tf2onnx fails in many ways on graphs it does not know
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        log.warning(
            "tf2onnx could not convert %s (%s): running it in TensorFlow, which is slower", backbone.name, reason
        )
        failed.parent.mkdir(parents=True, exist_ok=True)
        failed.write_text(json.dumps({"tf2onnx": version, "reason": reason}) + "\n")
        return None
    return path


def convert_to_onnx(module: LoadedModule, path: Path, *, probe_images: np.ndarray | None = None) -> Path:
    """tf2onnx on the wrapped function, checked against TensorFlow, written atomically."""
    import logging as _logging

    import onnxruntime as ort
    import tf2onnx

    for name in ("tf2onnx", "tensorflow"):
        _logging.getLogger(name).setLevel(_logging.ERROR)  # its per-op progress lines are noise here
    spec = module.function.input_signature[0]
    size = int(spec.shape[1])
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".onnx", dir=path.parent)
    os.close(fd)
    try:
        with quiet_native_logs():  # grappler's session start-up lines
            tf2onnx.convert.from_function(module.function, input_signature=[spec], opset=OPSET, output_path=tmp)
        images = (
            probe_images
            if probe_images is not None
            else np.random.default_rng(0).integers(0, 256, (2, size, size, 3), dtype=np.uint8)
        )
        expected = np.asarray(module.function(images)[OUTPUT_NAME], dtype=np.float32)
        session = ort.InferenceSession(tmp, providers=["CPUExecutionProvider"])
        got = session.run(None, {session.get_inputs()[0].name: images})[0]
        scale = max(1.0, float(np.abs(expected).max()))
        if got.shape != expected.shape or not np.allclose(got, expected, rtol=1e-3, atol=1e-4 * scale):
            worst = float(np.abs(got - expected).max()) if got.shape == expected.shape else float("nan")
            raise ModelError(f"the ONNX graph disagrees with TensorFlow (largest difference {worst:.3g})")
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def create_tfhub_runner(
    backbone: Backbone, choice: RuntimeChoice, model_dir: Path, *, imagenet: bool = False, threads: int | None = None
) -> Runner:
    """The runner :func:`headstart.runtimes.create_runner` returns for a SavedModel backbone."""
    if choice.runtime in ONNX_RUNTIMES:
        path = ensure_tfhub_onnx(backbone, model_dir, imagenet=imagenet)
        if path is not None:
            from .runtimes import create_file_runner

            return create_file_runner(path, choice, threads)
    else:
        log.info(
            "%s is a TensorFlow SavedModel, with no PyTorch form: --runtime %s runs it in TensorFlow",
            backbone.name,
            choice.runtime,
        )
    return create_tensorflow_runner(backbone, imagenet=imagenet)


__all__ = [
    "LoadedModule",
    "convert_to_onnx",
    "create_tensorflow_runner",
    "create_tfhub_runner",
    "ensure_tfhub_onnx",
    "import_tensorflow",
    "load_module",
    "onnx_path",
]


def count_backbone_cost(backbone: Backbone, choice: RuntimeChoice, model_dir: Path) -> tuple[int, int, int]:
    """``(parameters, multiply-adds per image, vector size)`` of a SavedModel backbone, for ``compare``.

    Counted on its ONNX graph (converted here once, as extraction would): weights are the
    float initializers (batch norms are folded into the convolutions by then); multiply-adds
    those of the Conv, Gemm and MatMul nodes at the backbone's input size.
    """
    import onnx

    path = ensure_tfhub_onnx(backbone, model_dir)
    if path is None:
        raise ModelError(
            f"cannot count the cost of {backbone.name}: tf2onnx could not convert it",
            hint="compare measures converted backbones; train with it directly instead",
        )
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    shapes = {
        v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in [*model.graph.value_info, *model.graph.output, *model.graph.input]
    }
    weights = {i.name: list(i.dims) for i in model.graph.initializer}
    params = sum(
        int(np.prod(d))
        for i, d in zip(model.graph.initializer, weights.values())
        if i.data_type == onnx.TensorProto.FLOAT and d
    )
    macs = 0
    for node in model.graph.node:
        out = shapes.get(node.output[0], [])[1:]  # without the batch dimension
        if not out or 0 in out:
            continue
        if node.op_type == "Conv" and node.input[1] in weights:
            _, per_group, *kernel = weights[node.input[1]]
            macs += int(np.prod(out)) * per_group * int(np.prod(kernel))
        elif node.op_type in ("Gemm", "MatMul") and node.input[1] in weights:
            transposed = any(a.name == "transB" and a.i for a in node.attribute)
            macs += int(np.prod(out)) * weights[node.input[1]][1 if transposed else 0]
    dim = shapes.get(OUTPUT_NAME, [0, backbone.num_features or 0])[-1]
    return params, macs, int(dim)
