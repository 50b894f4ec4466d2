"""TFLite (LiteRT) and TensorFlow SavedModel exports, converted from the export's own ONNX graph.

The ONNX graph (normalisation, backbone, head, softmax, novelty score) is simplified
with onnxsim (the "same" padding of EfficientNet-Lite is computed from shapes at run
time in the traced graph; folded, it becomes plain convolution padding) and turned into
a Keras graph by onnx2tf; TensorFlow's converter writes the ``.tflite`` from it, and the
SavedModel wraps it with a bytes-decoding signature (:mod:`headstart.saved_model_export`).
docs/DEPLOY.md records why: against litert-torch (PyTorch -> LiteRT) this path has the
same parity (top-1 agreement 100 %), a dynamic batch, a SavedModel from the same graph,
and installs next to headstart's other dependencies without downgrading any.

int8 is TensorFlow's post-training quantisation, calibrated on the run's training
images: int8 weights (per channel) and activations, with everything up to the first
convolution and after the last one (pooling, head, softmax, novelty score) kept in
float, as the ONNX int8 export keeps its tail.  The normalised pixels ``pixel - 127.5``
(EfficientNet-Lite) fall between int8 steps, so quantised they are all half a grey level
off.  On the Fashion-MNIST run of docs/DEPLOY.md, all-int8 and tail-float both lost 1.6
points on the 307 test images; with the start float too, 1.0 (and gained 0.7 on 1,000
held-out images, where the others lost 0.3): ``benchmarks/tflite_int8_variants.py``.

Nothing here imports TensorFlow at module level.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import ModelError, UsageError
from .sidecar import ExportDescription

if TYPE_CHECKING:  # pragma: no cover
    from .export_check import CheckImages

log = logging.getLogger("headstart")

TF_PRECISIONS = {"tflite": ("fp32", "fp16", "int8"), "saved_model": ("fp32",)}
TF_SUFFIX = {"tflite": ".tflite", "saved_model": ""}  # a SavedModel is a directory
TF_CHECK_RUNTIME = {"tflite": "litert", "saved_model": "tensorflow"}
INSTALL_HINT = "pip install 'headstart[tensorflow]'"
_NEEDED = ("tensorflow", "tf_keras", "onnx2tf", "onnxsim", "onnx_graphsurgeon", "sng4onnx", "ai_edge_litert")
_OUTPUT_DESCRIPTIONS = {
    "probabilities": "Calibrated softmax probabilities of the labels in labels.txt, in that order.",
    "ood_score": "Novelty score of the image: above the threshold in headstart.json ('unknown.threshold') "
    "the answer is 'unknown'.",
}


def require_tf_export() -> None:
    """One line naming the extra when a converter is missing."""
    from .runtimes import installed

    missing = [m for m in _NEEDED if not installed(m)]
    if missing:
        raise UsageError(
            f"TFLite and SavedModel exports need {', '.join(missing)}, which are not installed", hint=INSTALL_HINT
        )


# ---------------------------------------------------------------- ONNX -> Keras


def onnx_to_keras(onnx_path: Path, work: Path) -> Any:
    """The export's ONNX graph as a tf_keras model (uint8 NHWC ``images`` in, the same outputs)."""
    import onnx
    import onnxsim

    from .tfhub_runtime import import_tensorflow, quiet_native_logs

    import_tensorflow()  # before onnx2tf imports it: quietly, and after triton (see there)
    simplified, ok = onnxsim.simplify(onnx.load(str(onnx_path)))
    if not ok:
        raise ModelError(
            "onnxsim could not simplify the exported ONNX graph for conversion",
            hint="export to onnx or openvino instead, and report this",
        )
    path = work / "simplified.onnx"
    onnx.save(simplified, str(path))
    import onnx2tf

    chatter = io.StringIO()  # onnx2tf prints its progress; a library logs instead
    try:
        with contextlib.redirect_stdout(chatter), quiet_native_logs():
            # The input is NHWC already: onnx2tf must not transpose it as it does NCHW inputs.
            model = onnx2tf.convert(
                input_onnx_file_path=str(path),
                output_folder_path=str(work / "onnx2tf"),
                keep_shape_absolutely_input_names=["images"],
                not_use_onnxsim=True,
                non_verbose=True,
                disable_model_save=True,
            )
    except (Exception, SystemExit) as exc:  # onnx2tf exits on some failures
        tail = " ".join(chatter.getvalue().split()[-30:])
        raise ModelError(
            f"onnx2tf could not convert the graph to TensorFlow: {exc or tail}",
            hint="export to onnx or openvino instead; run with -v for the converter's log",
        ) from None
    log.debug("onnx2tf: %s", chatter.getvalue())
    return model


# ---------------------------------------------------------------- TFLite


def _float_nodes(float_model: bytes) -> list[str]:
    """Output tensors of the ops int8 leaves in float: all up to the first convolution, all after the last."""
    from ai_edge_litert import schema_py_generated as schema

    tree = schema.Model.GetRootAs(float_model, 0)
    graph = tree.Subgraphs(0)
    conv = {schema.BuiltinOperator.CONV_2D, schema.BuiltinOperator.DEPTHWISE_CONV_2D}

    def code(op: Any) -> int:
        c = tree.OperatorCodes(op.OpcodeIndex())
        return max(c.BuiltinCode(), c.DeprecatedBuiltinCode())

    ops = [graph.Operators(i) for i in range(graph.OperatorsLength())]
    convs = [i for i, op in enumerate(ops) if code(op) in conv]
    if not convs:
        return []
    keep = [*ops[: convs[0] + 1], *ops[convs[-1] + 1 :]]
    return [graph.Tensors(op.Outputs(j)).Name().decode() for op in keep for j in range(op.OutputsLength())]


def convert_tflite(keras_model: Any, precision: str, calibration: np.ndarray | None = None) -> bytes:
    """fp32, fp16 (weights stored in fp16) or int8 (calibrated on ``calibration``, uint8 [N, S, S, 3])."""
    from .tfhub_runtime import import_tensorflow, quiet_native_logs

    tf = import_tensorflow()

    def converter() -> Any:
        conv = tf.lite.TFLiteConverter.from_keras_model(keras_model)
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # no Flex ops: MediaPipe cannot run them
        return conv

    if precision == "fp32":
        with quiet_native_logs():  # the MLIR converter's progress lines go straight to stderr
            return bytes(converter().convert())
    conv = converter()
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    if precision == "fp16":
        conv.target_spec.supported_types = [tf.float16]
        with quiet_native_logs():
            return bytes(conv.convert())
    if calibration is None or len(calibration) == 0:
        raise ModelError(
            "int8 needs calibration images and none could be read",
            hint="export from a run whose training images still exist",
        )

    def representative() -> Any:
        for image in calibration:
            yield [image[None]]

    conv.representative_dataset = representative
    with quiet_native_logs():
        denylist = _float_nodes(bytes(converter().convert()))
        options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=denylist)
        # The debugger is TensorFlow's way to quantise all but named ops (its "selective quantisation").
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=conv, debug_dataset=representative, debug_options=options
        )
        return bytes(debugger.get_nondebug_quantized_model())


def classifier_metadata(description: ExportDescription) -> Any:
    """The TFLite metadata of an export: Model Maker's layout, the normalisation the graph applies itself."""
    from .tflite_metadata import ClassifierMetadata

    prep = description.preprocessing
    provenance = description.provenance
    labels = description.labels
    shown = ", ".join(labels[:8]) + (", ..." if len(labels) > 8 else "")
    outputs = [(name, _OUTPUT_DESCRIPTIONS.get(name, name)) for name in description.output_names]
    return ClassifierMetadata(
        name=f"headstart image classifier ({provenance.get('backbone', 'backbone')})",
        description=f"Classifies an image into {len(labels)} labels ({shown}): {provenance.get('backbone')} "
        f"features and a retrained last layer, {description.precision}.",
        version=str(provenance.get("head_sha256", ""))[:12],
        labels=labels,
        mean=[255.0 * m for m in prep.mean],
        std=[255.0 * s for s in prep.std],
        input_description=(
            f"uint8 RGB pixels [1, {prep.input_size}, {prep.input_size}, 3]: the shorter side resized to "
            f"{prep.resize_size} px ({prep.interpolation}), centre-cropped. The model normalises them itself, "
            "(pixel - mean) / std with the NormalizationOptions below: feed raw pixels."
        ),
        output_descriptions=outputs,
        export_description={
            k: v for k, v in description.to_dict().items() if k not in ("check", "created", "model_sha256")
        },
    )


def write_tflite(
    keras_model: Any, path: Path, precision: str, description: ExportDescription, calibration: np.ndarray | None
) -> bytes:
    from .tflite_metadata import populate

    log.info("converting to TFLite (%s)", precision)
    model = convert_tflite(keras_model, precision, calibration)
    data = populate(model, classifier_metadata(description), description.output_names)
    path.write_bytes(data)
    return data


# ---------------------------------------------------------------- the export.py hook


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("tensorflow", "onnx2tf", "onnxsim", "ai-edge-litert"):
        with contextlib.suppress(PackageNotFoundError):
            found[name] = version(name)
    return found


def write_tf_export(
    onnx_fp32: Path, staged: Path, description: ExportDescription, images: CheckImages, calibration_images: int
) -> ExportDescription:
    """Write ``staged`` (a .tflite, or a SavedModel directory) in the description's format and precision from
    the fp32 ONNX; the description gains what the conversion did (``tensorflow``; ``calibration`` for int8)."""
    require_tf_export()
    from .export_check import MAX_CHECK_IMAGES, decode_images, spread_records

    model_format, precision = description.model_format, description.precision

    info: dict[str, Any] = {
        "converter": "onnxsim + onnx2tf -> TensorFlow "
        + ("TFLiteConverter (builtin ops only)" if model_format == "tflite" else "SavedModel"),
        "versions": _versions(),
    }
    with tempfile.TemporaryDirectory(prefix="tf-", dir=staged.parent) as tmp:
        log.info("converting the ONNX graph to TensorFlow (onnx2tf)")
        keras_model = onnx_to_keras(onnx_fp32, Path(tmp))
        if model_format == "saved_model":
            from .saved_model_export import check_serving_bytes, write_saved_model

            info.update(write_saved_model(keras_model, staged, description))
            info["serving_default_check"] = check_serving_bytes(
                staged, description, spread_records(images.test, MAX_CHECK_IMAGES)
            )
            return description.with_(tensorflow=info)
        calibration = None
        if precision == "int8":
            x_cal, _ = decode_images(
                spread_records(images.training, calibration_images, seed=1), description.preprocessing
            )
            calibration = x_cal
            description = description.with_(
                calibration={
                    "images": len(x_cal),
                    "source": "run training split",
                    "method": "TensorFlow Lite post-training int8, per-channel weights, MinMax; everything up to the "
                    "first convolution and after the last one stays float",
                }
            )
        info["metadata"] = {
            "labels": "labels.txt (TENSOR_AXIS_LABELS on probabilities)",
            "description": "headstart.json",
            "normalization": "NormalizationOptions, pixel units",
        }
        description = description.with_(tensorflow=info)
        write_tflite(keras_model, staged, precision, description, calibration)
    return description


def export_sha256(path: Path) -> str:
    """sha256 of a model file, or of a SavedModel directory's files (relative names and contents, sorted)."""
    if not path.is_dir():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    digest = hashlib.sha256()
    for item in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(item.relative_to(path)).encode() + b"\0" + hashlib.sha256(item.read_bytes()).digest())
    return digest.hexdigest()


def replace_export(source: Path, target: Path) -> None:
    """``os.replace`` that also replaces a directory (a SavedModel written again over an older one)."""
    if source.is_dir() and target.is_dir():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
        os.replace(source, target)
        shutil.rmtree(old, ignore_errors=True)
        return
    os.replace(source, target)


def is_saved_model(path: str | Path) -> bool:
    return (Path(path) / "saved_model.pb").is_file()


__all__ = [
    "INSTALL_HINT",
    "TF_CHECK_RUNTIME",
    "TF_PRECISIONS",
    "TF_SUFFIX",
    "convert_tflite",
    "export_sha256",
    "is_saved_model",
    "onnx_to_keras",
    "replace_export",
    "require_tf_export",
    "write_tf_export",
    "write_tflite",
]
