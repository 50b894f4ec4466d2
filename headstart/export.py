"""A run directory -> one self-contained model: ONNX, OpenVINO IR, TensorRT engine, TFLite or SavedModel.

The exported graph is the whole classifier: uint8 RGB ``images [N, H, W, 3]`` (dynamic batch) ->
normalisation -> backbone -> trained last layer -> softmax probabilities.  What a graph cannot hold
(labels, resize and crop geometry, provenance) is written into the ONNX or TFLite metadata
(:mod:`headstart.tf_export`) and into the ``<model>.json`` sidecar, which :mod:`headstart.deployed` reads.

Every export checks itself before anything is written: the exported model and
PyTorch (eager, fp32) label the run's test images, and the agreement and both
accuracies go into the sidecar.  Reduced precisions (fp16, int8 calibrated on
the run's own training images) must not lose more than ``max_accuracy_drop``
points of test accuracy, or the export fails with the numbers and writes
nothing, unless ``force``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .bundle import HEAD_NAME, Bundle, load_bundle
from .data import ImageRecord, Preprocessing, index_image_dir
from .errors import DataError, ModelError, UsageError
from .runtimes import Runner, RuntimeChoice
from .sidecar import OOD_OUTPUT_NAME, ExportDescription, sidecar_path, write_sidecar
from .tf_export import TF_CHECK_RUNTIME, TF_PRECISIONS, TF_SUFFIX, export_sha256, replace_export, write_tf_export

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .backbones import Backbone

log = logging.getLogger("headstart")

FORMATS = ("onnx", "openvino", "tensorrt", *TF_PRECISIONS)
PRECISIONS = {"onnx": ("fp32", "int8"), "openvino": ("fp32", "fp16", "int8"), "tensorrt": ("fp32", "fp16", "int8"),
              **TF_PRECISIONS}
SUFFIX = {"onnx": ".onnx", "openvino": ".xml", "tensorrt": ".engine", **TF_SUFFIX}
DEFAULT_MAX_ACCURACY_DROP = 1.0  # points of test accuracy
DEFAULT_CALIBRATION_IMAGES = 300
MAX_CHECK_IMAGES = 1000
FP32_AGREEMENT_TARGET = 0.995


# ---------------------------------------------------------------- results


@dataclass(frozen=True)
class SelfCheck:
    """How an exported model compares with PyTorch fp32 on labelled images it was not trained on."""

    image_dir: str | None
    source: str  # "run test split" | "--image_dir" | "none"
    n: int
    agreement: float | None  # share of images where the top-1 label equals PyTorch's
    accuracy: float | None
    reference_accuracy: float | None  # PyTorch fp32 on the same images
    accuracy_drop: float | None  # points
    max_abs_diff: float | None  # largest probability difference
    runtime: str
    passed: bool
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ExportResult:
    path: Path
    sidecar: Path
    model_format: str
    precision: str
    check: SelfCheck
    files: tuple[Path, ...]
    seconds: float


@dataclass(frozen=True)
class CheckImages:
    """Decoded labelled images for the self-check and calibration (``None`` when the images are gone)."""

    image_dir: Path | None
    source: str
    test: tuple[ImageRecord, ...]
    training: tuple[ImageRecord, ...]
    note: str | None = None


# ---------------------------------------------------------------- the graph


def fold_head(tensors: dict[str, np.ndarray], temperature: float = 1.0) -> list[tuple[np.ndarray, np.ndarray]]:
    """The head as ``(weight [in, out], bias)`` layers, standardisation and temperature folded in.

    ``((x - m) / s) @ W + b == x @ (W / s[:, None]) + (b - (m / s) @ W)``, and the
    calibration temperature divides the last layer, computed in float64, so the
    graph needs no extra ops and matches ``SoftmaxHead.predict_proba``.  A ReLU
    sits between two layers (``hidden_units > 0``).
    """
    t = {k: np.asarray(v, dtype=np.float64) for k, v in tensors.items()}
    layers = [(t["hidden.weight"], t["hidden.bias"])] if "hidden.weight" in t else []
    layers.append((t["final.weight"], t["final.bias"]))
    if "standardize.mean" in t:
        w, b = layers[0]
        mean, std = t["standardize.mean"], t["standardize.std"]
        layers[0] = (w / std[:, None], b - (mean / std) @ w)
    w, b = layers[-1]
    layers[-1] = (w / temperature, b / temperature)
    return [(w.astype(np.float32), b.astype(np.float32)) for w, b in layers]


def create_classifier(bundle: Bundle, backbone: "Backbone") -> "torch.nn.Module":
    """uint8 images -> probabilities (and ``ood_score`` when the run has one), in eval mode.

    InputAdapter(backbone) -> trained head with its temperature -> softmax; the
    novelty score is computed in the graph from the same bottleneck, so every
    export says "unknown" exactly when the run directory does.
    """
    from .graph import create_classifier_module
    from .run_model import load_head, load_novelty

    head = load_head(bundle)
    return create_classifier_module(backbone, fold_head(head.to_state()[0], head.temperature_),
                                    load_novelty(bundle))


def head_sha256(run_dir: Path) -> str:
    return hashlib.sha256((Path(run_dir) / HEAD_NAME).read_bytes()).hexdigest()


def describe_export(bundle: Bundle, backbone: "Backbone", model_format: str, precision: str,
                    path: Path | None = None) -> ExportDescription:
    """The sidecar without the self-check: also stored, as JSON, in the ONNX metadata."""
    from . import __version__
    from .run_model import load_novelty

    novelty = load_novelty(bundle)
    unknown = None if novelty is None else {
        "output": OOD_OUTPUT_NAME, "threshold": novelty.threshold, "accept": novelty.accept,
        "method": "msp+nearest-class-cosine",
        "meaning": "novelty score; above threshold the answer is 'unknown' (threshold null: switched off)"}
    provenance = {
        "backbone": bundle.backbone.name,
        "timm_name": bundle.backbone.timm_name,
        "weights_fingerprint": bundle.backbone.weights_fingerprint,
        "run_dir": str(Path(bundle.path).resolve()),
        "head_sha256": head_sha256(bundle.path),
        "trained": bundle.created,
        "headstart_version": __version__,
    }
    return ExportDescription(path=path or Path(), source="export", model_format=model_format, precision=precision,
                             labels=bundle.labels, preprocessing=bundle.preprocessing, provenance=provenance,
                             unknown=unknown)


# ---------------------------------------------------------------- images for the check


def find_check_images(bundle: Bundle, image_dir: str | Path | None = None) -> CheckImages:
    """Test images: the run's own test split, or every image of an explicit labelled folder.

    Training images (int8 calibration) always come from the run's own folder, when it still exists.
    """
    data = bundle.data
    run = None
    note = "the run does not record its image folder"
    if data is not None and Path(data.image_dir).is_dir():
        run = index_image_dir(data.image_dir, data.validation_percentage, data.testing_percentage,
                              labels=bundle.labels)
    elif data is not None:
        note = f"the run's images at {data.image_dir} are gone"
    training = run.split("training") if run else ()
    if image_dir is not None:
        index = index_image_dir(image_dir, 0, 100, labels=bundle.labels, require_training=False)
        return CheckImages(index.root, "--image_dir", index.split("testing"), training)
    if run is None:
        return CheckImages(None, "none", (), (), note)
    return CheckImages(run.root, "run test split", run.split("testing"), training)


def _spread(records: Sequence[ImageRecord], limit: int, seed: int = 0) -> list[ImageRecord]:
    """At most ``limit`` records, a fixed random sample (sorted back into folder order)."""
    if len(records) <= limit:
        return list(records)
    chosen = np.random.default_rng(seed).choice(len(records), size=limit, replace=False)
    return [records[i] for i in sorted(chosen)]


def decode_images(records: Sequence[ImageRecord], prep: Preprocessing, *, progress: bool = False,
                  desc: str = "Decoding") -> tuple[np.ndarray, list[ImageRecord]]:
    """uint8 ``[N, S, S, 3]`` for the readable records, and those records."""
    from .features import decode_ahead, default_workers
    from .progress import Progress

    kept, images = [], []
    paths = [r.path for r in records]
    with Progress(len(paths), desc, unit="img", enabled=progress) as bar:
        for position, image, error in decode_ahead(paths, prep, 32, default_workers()):
            bar.update(1)
            if image is None:
                log.warning("skipped %s: %s", paths[position], error)
                continue
            kept.append(records[position])
            images.append(image)
    if not images:
        return np.zeros((0, prep.input_size, prep.input_size, 3), np.uint8), []
    return np.stack(images), kept


def predict(runner: Runner, images: np.ndarray, batch_size: int = 32, *, progress: bool = False,
            desc: str = "Checking") -> np.ndarray:
    from .progress import Progress

    out = []
    with Progress(len(images), desc, unit="img", enabled=progress) as bar:
        for i in range(0, len(images), batch_size):
            out.append(runner(images[i:i + batch_size]))
            bar.update(len(out[-1]))
    return np.concatenate(out)


def torch_runner(module: "torch.nn.Module") -> Runner:
    return _torch_runner(module, RuntimeChoice("torch", "fp32"))


def _torch_runner(module: "torch.nn.Module", choice: RuntimeChoice, compile: bool = False) -> Runner:
    from .runtimes import create_torch_runner

    return create_torch_runner(module, choice, compile=compile)


def compare(proba: np.ndarray, reference: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Top-1 agreement with the reference, both accuracies, the drop in points, the largest difference."""
    acc, ref_acc = float(np.mean(proba.argmax(1) == y)), float(np.mean(reference.argmax(1) == y))
    return {"agreement": float(np.mean(proba.argmax(1) == reference.argmax(1))), "accuracy": acc,
            "reference_accuracy": ref_acc, "accuracy_drop": round(100 * (ref_acc - acc), 4),
            "max_abs_diff": float(np.max(np.abs(proba - reference)))}


# ---------------------------------------------------------------- conversions


def _write_onnx(module: "torch.nn.Module", path: Path, input_size: int, description: ExportDescription) -> Path:
    writer = getattr(module, "write_onnx", None)  # a SavedModel backbone: its ONNX joined to the head's (tfhub_export)
    if writer is not None:
        return writer(path, description)
    from .runtimes import export_onnx

    return export_onnx(module, path, input_size, output_name=description.output_names,
                       metadata=description.metadata())


def _set_onnx_metadata(path: Path, metadata: dict[str, str]) -> None:
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
        raise DataError("int8 needs calibration images and none could be read",
                        hint="export from a run whose training images still exist")

    class Reader(ortq.CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter([calibration[i:i + batch_size] for i in range(0, len(calibration), batch_size)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            return None if batch is None else {"images": batch}

    onnxruntime.set_default_logger_severity(3)  # calibration sessions warn about every unused initializer
    graph = onnx.load(str(fp32_onnx), load_external_data=False).graph
    # Everything after the last convolution (pooling, head, softmax) stays float.
    last_conv = max(i for i, node in enumerate(graph.node) if node.op_type == "Conv")
    tail = [node.name for node in graph.node[last_conv + 1:] if node.name]
    with tempfile.TemporaryDirectory(prefix="headstart-quant-") as tmp:
        log.info("calibrating int8 on %d training images", len(calibration))
        ortq.quantize_static(str(fp32_onnx), str(Path(tmp) / "int8.onnx"), Reader(),
                             quant_format=ortq.QuantFormat.QDQ, per_channel=True,
                             activation_type=ortq.QuantType.QInt8, weight_type=ortq.QuantType.QInt8,
                             calibrate_method=ortq.CalibrationMethod.MinMax, nodes_to_exclude=tail,
                             extra_options={"ActivationSymmetric": True})
        shutil.move(str(Path(tmp) / "int8.onnx"), out)
    return out


def _write_openvino(onnx_path: Path, xml_path: Path, precision: str, description: ExportDescription) -> Path:
    import openvino as ov

    model = ov.convert_model(str(onnx_path))
    for key in ("labels", "precision"):
        model.set_rt_info(json.dumps(description.to_dict()[key]), ["headstart", key])
    ov.save_model(model, str(xml_path), compress_to_fp16=(precision == "fp16"))
    return xml_path


_CHECK_RUNTIME = {"onnx": "onnxruntime", "openvino": "openvino", "tensorrt": "tensorrt", **TF_CHECK_RUNTIME}


# ---------------------------------------------------------------- export


def default_output(run_dir: Path, model_format: str, precision: str) -> Path:
    """``RUN/export/model-P.onnx``; OpenVINO and TensorRT in folders of their own, so no two exports share
    a sidecar (``model-fp32.json`` belongs to one model file only)."""
    folder = Path(run_dir) / "export"
    if model_format != "onnx":
        folder = folder / model_format
    return folder / f"model-{precision}{SUFFIX[model_format]}"


def export_model(model: str | Path, *, model_format: str = "onnx", precision: str = "fp32",
                 output: str | Path | None = None, image_dir: str | Path | None = None,
                 max_accuracy_drop: float = DEFAULT_MAX_ACCURACY_DROP, force: bool = False,
                 calibration_images: int = DEFAULT_CALIBRATION_IMAGES, weights: str | Path | None = None,
                 cache_dir: str | Path | None = None, progress: bool = True) -> ExportResult:
    """Export a run directory, check the result against PyTorch, and write it with its sidecar.

    Raises :class:`ModelError` with the numbers when the exported model loses
    more than ``max_accuracy_drop`` points of test accuracy (unless ``force``);
    nothing is written then.  Without TensorRT, ``model_format="tensorrt"``
    writes the fp32 ONNX it would have built from and raises
    :class:`~headstart.runtimes.tensorrt.TensorRTUnavailable` whose hint is the
    equivalent ``trtexec`` command.
    """
    start = time.perf_counter()
    if model_format not in FORMATS:
        raise UsageError(f"unknown export format {model_format!r}", hint=f"use one of {', '.join(FORMATS)}")
    if precision not in PRECISIONS[model_format]:
        raise UsageError(f"{model_format} exports support {', '.join(PRECISIONS[model_format])}, not {precision}",
                         hint="for fp16 use --format openvino, tensorrt or tflite" if precision == "fp16" else None)
    if max_accuracy_drop < 0:
        raise UsageError("--max_accuracy_drop must be 0 or more (points of test accuracy)")
    from .run_model import resolve_model_backbone

    bundle = load_bundle(model)
    backbone = resolve_model_backbone(bundle, weights)
    prep = backbone.preprocessing
    out = Path(output) if output else default_output(bundle.path, model_format, precision)
    if out.suffix.lower() != SUFFIX[model_format]:
        raise UsageError(f"a {model_format} export must end in {SUFFIX[model_format]}, got {out.name}")
    if model_format == "tensorrt":
        _check_tensorrt(bundle, out, precision, prep.input_size, image_dir=image_dir, force=force, weights=weights,
                        progress=progress)

    images = find_check_images(bundle, image_dir)
    test_records = _spread(images.test, MAX_CHECK_IMAGES)
    if not test_records and not force:
        raise DataError(f"cannot check the export: {images.note or 'no test images'}",
                        hint="pass --image_dir with labelled images (one folder per label), or --force "
                             "to export unchecked")
    x_test, test_records = decode_images(test_records, prep, progress=progress, desc="Test images")
    y_test = np.array([bundle.labels.index(r.label) for r in test_records], dtype=np.int64)

    description = describe_export(bundle, backbone, model_format, precision)
    module = create_classifier(bundle, backbone)
    staging = out.parent / f".{out.name}.partial-{secrets.token_hex(4)}"
    staging.mkdir(parents=True)
    try:
        staged = staging / out.name
        log.info("writing the ONNX graph: normalisation, backbone, head and softmax in one file")
        onnx_fp32 = _write_onnx(module, staging / "fp32.onnx", prep.input_size, description)
        source_onnx = onnx_fp32
        if model_format == "tensorrt":
            description = description.with_(tensorrt=_build_tensorrt(
                onnx_fp32, staged, precision, prep.input_size, images.training, calibration_images, prep, cache_dir))
        elif model_format in TF_PRECISIONS:  # TFLite / SavedModel, converted from the ONNX graph (tf_export)
            description = write_tf_export(onnx_fp32, staged, description, images, calibration_images)
        elif precision == "int8":
            calibration = _spread(images.training, calibration_images, seed=1)
            x_cal, _ = decode_images(calibration, prep, progress=progress, desc="Calibration images")
            source_onnx = quantize_int8(onnx_fp32, staging / "int8.onnx", x_cal)
            description = description.with_(calibration={"images": len(x_cal), "source": "run training split",
                                                         "method": "onnxruntime static, QDQ, per-channel, MinMax"})
            _set_onnx_metadata(source_onnx, description.metadata())
        if model_format == "onnx":
            os.replace(source_onnx, staged)
        elif model_format == "openvino":
            log.info("converting to OpenVINO IR")
            _write_openvino(source_onnx, staged, precision, description)
        files = [p for p in staging.iterdir() if p.stem == out.stem]

        side = write_sidecar(staging / sidecar_path(out).name, description)  # so the check can load the model
        check = _self_check(module, staged, model_format, x_test, y_test, images, precision, max_accuracy_drop,
                            force, progress)
        description = description.with_(check=check.to_dict(), model_sha256=export_sha256(staged),
                                        created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        write_sidecar(side, description)
        final = []
        for path in [*files, side]:  # the model's own files first, the sidecar (its "commit") last
            replace_export(path, out.parent / path.name)
            final.append(out.parent / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ExportResult(out, sidecar_path(out), model_format, precision, check, tuple(final),
                        time.perf_counter() - start)


def _self_check(module: "torch.nn.Module", path: Path, model_format: str, x: np.ndarray, y: np.ndarray,
                images: CheckImages, precision: str, max_accuracy_drop: float, force: bool,
                progress: bool = False) -> SelfCheck:
    where = str(images.image_dir) if images.image_dir else None
    if len(x) == 0:
        log.warning("the export was not checked: %s", images.note or "no readable test images")
        return SelfCheck(where, "none", 0, None, None, None, None, None, model_format, False,
                         images.note or "no readable test images")
    from .model import load_model

    # The exported file is checked the way it will be used: through a Classifier, in fp32.
    exported = load_model(path, runtime=_CHECK_RUNTIME[model_format],
                          precision="engine" if model_format == "tensorrt" else "fp32")
    runtime = exported.runtime
    log.info("checking the export against PyTorch on %d test images", len(x))
    n = len(exported.labels)  # the reference module may also return the novelty score, after the probabilities
    reference = predict(torch_runner(module), x, progress=progress, desc="PyTorch fp32")[:, :n]
    numbers = compare(predict(exported.predict_batch, x, progress=progress, desc=f"{runtime} export"), reference, y)
    passed = numbers["accuracy_drop"] <= max_accuracy_drop
    note = None
    if precision == "fp32" and numbers["agreement"] < FP32_AGREEMENT_TARGET:
        note = f"fp32 agreement {100 * numbers['agreement']:.1f}% is below {100 * FP32_AGREEMENT_TARGET:.1f}%"
        log.warning("%s", note)
    check = SelfCheck(where, images.source, len(x), runtime=runtime, passed=passed, note=note, **numbers)
    if not passed:
        message = (f"the {precision} {model_format} export loses {numbers['accuracy_drop']:.1f} points of test "
                   f"accuracy ({100 * numbers['accuracy']:.1f}% vs PyTorch's {100 * numbers['reference_accuracy']:.1f}%"
                   f" on {len(x)} images; top-1 agreement {100 * numbers['agreement']:.1f}%), more than "
                   f"--max_accuracy_drop {max_accuracy_drop:g}")
        if not force:
            raise ModelError(message, hint="use fp32, raise --max_accuracy_drop, or pass --force to write it anyway")
        log.warning("%s; written anyway (--force)", message)
    return check


def _check_tensorrt(bundle: Bundle, out: Path, precision: str, input_size: int, *, image_dir: Any, force: bool,
                    weights: Any, progress: bool) -> None:
    """Without TensorRT: write the fp32 ONNX an engine is built from, then fail with the trtexec line."""
    from .runtimes.tensorrt import TensorRTUnavailable, require_tensorrt

    onnx_out = out.with_name(f"{out.stem}.onnx")
    if out.stem.endswith(f"-{precision}"):
        onnx_out = out.with_name(out.stem[: -len(precision)] + "fp32.onnx")
    try:
        require_tensorrt(onnx_out, out, input_size=input_size, precision=precision)
    except TensorRTUnavailable as exc:
        if not onnx_out.is_file():
            export_model(bundle.path, model_format="onnx", output=onnx_out, image_dir=image_dir, force=force,
                         weights=weights, progress=progress)
        raise TensorRTUnavailable(f"{exc.message}; wrote {onnx_out} to build it from", hint=exc.hint) from None


def _build_tensorrt(onnx_fp32: Path, staged: Path, precision: str, input_size: int, training: Sequence[ImageRecord],
                    calibration_images: int, prep: Preprocessing, cache_dir: str | Path | None) -> dict[str, Any]:
    from .cache import models_dir
    from .runtimes.tensorrt import BatchProfile, build_engine, tensorrt_version

    profile = BatchProfile()
    batches, calibration_id, info = None, None, {}
    if precision == "int8":
        x_cal, kept = decode_images(_spread(training, calibration_images, seed=1), prep)
        usable = len(x_cal) - len(x_cal) % 16 or len(x_cal)
        batches = [x_cal[i:i + 16] for i in range(0, usable, 16)]
        calibration_id = hashlib.sha256("".join(r.sha256 for r in kept).encode()).hexdigest()[:16]
        info = {"images": len(x_cal), "source": "run training split", "method": "TensorRT entropy calibrator 2"}
    models = models_dir(cache_dir)
    build_engine(onnx_fp32, staged, input_size=input_size, precision=precision, profile=profile,
                 calibration=batches, calibration_id=calibration_id, cache_dir=models)
    return {"tensorrt": tensorrt_version(), "profile": asdict(profile), **({"calibration": info} if info else {})}
