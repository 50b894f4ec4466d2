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
import logging
import os
import secrets
import shutil
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .bundle import HEAD_NAME, Bundle, load_bundle
from .errors import DataError, ModelError, UsageError
from .export_check import (
    MAX_CHECK_IMAGES,
    CheckImages,
    compare,
    decode_images,
    find_check_images,
    predict,
    spread_records,
    torch_runner,
)
from .export_convert import build_tensorrt, quantize_int8, set_onnx_metadata, write_onnx, write_openvino
from .sidecar import OOD_OUTPUT_NAME, ExportDescription, sidecar_path, write_sidecar
from .tf_export import TF_CHECK_RUNTIME, TF_PRECISIONS, TF_SUFFIX, export_sha256, replace_export, write_tf_export

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .backbones import Backbone

log = logging.getLogger("headstart")

FORMATS = ("onnx", "openvino", "tensorrt", *TF_PRECISIONS)
PRECISIONS = {
    "onnx": ("fp32", "int8"),
    "openvino": ("fp32", "fp16", "int8"),
    "tensorrt": ("fp32", "fp16", "int8"),
    **TF_PRECISIONS,
}
SUFFIX = {"onnx": ".onnx", "openvino": ".xml", "tensorrt": ".engine", **TF_SUFFIX}
DEFAULT_MAX_ACCURACY_DROP = 1.0  # points of test accuracy
DEFAULT_CALIBRATION_IMAGES = 300
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
    return create_classifier_module(backbone, fold_head(head.to_state()[0], head.temperature_), load_novelty(bundle))


def head_sha256(run_dir: Path) -> str:
    return hashlib.sha256((Path(run_dir) / HEAD_NAME).read_bytes()).hexdigest()


def describe_export(
    bundle: Bundle, backbone: "Backbone", model_format: str, precision: str, path: Path | None = None
) -> ExportDescription:
    """The sidecar without the self-check: also stored, as JSON, in the ONNX metadata."""
    from . import __version__
    from .run_model import load_novelty

    novelty = load_novelty(bundle)
    unknown = (
        None
        if novelty is None
        else {
            "output": OOD_OUTPUT_NAME,
            "threshold": novelty.threshold,
            "accept": novelty.accept,
            "method": "msp+nearest-class-cosine",
            "meaning": "novelty score; above threshold the answer is 'unknown' (threshold null: switched off)",
        }
    )
    provenance = {
        "backbone": bundle.backbone.name,
        "timm_name": bundle.backbone.timm_name,
        "weights_fingerprint": bundle.backbone.weights_fingerprint,
        "run_dir": str(Path(bundle.path).resolve()),
        "head_sha256": head_sha256(bundle.path),
        "trained": bundle.created,
        "headstart_version": __version__,
    }
    return ExportDescription(
        path=path or Path(),
        source="export",
        model_format=model_format,
        precision=precision,
        labels=bundle.labels,
        preprocessing=bundle.preprocessing,
        provenance=provenance,
        unknown=unknown,
    )


_CHECK_RUNTIME = {"onnx": "onnxruntime", "openvino": "openvino", "tensorrt": "tensorrt", **TF_CHECK_RUNTIME}


# ---------------------------------------------------------------- export


def default_output(run_dir: Path, model_format: str, precision: str) -> Path:
    """``RUN/export/model-P.onnx``; OpenVINO and TensorRT in folders of their own, so no two exports share
    a sidecar (``model-fp32.json`` belongs to one model file only)."""
    folder = Path(run_dir) / "export"
    if model_format != "onnx":
        folder = folder / model_format
    return folder / f"model-{precision}{SUFFIX[model_format]}"


def export_model(
    model: str | Path,
    *,
    model_format: str = "onnx",
    precision: str = "fp32",
    output: str | Path | None = None,
    image_dir: str | Path | None = None,
    max_accuracy_drop: float = DEFAULT_MAX_ACCURACY_DROP,
    force: bool = False,
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES,
    weights: str | Path | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> ExportResult:
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
        raise UsageError(
            f"{model_format} exports support {', '.join(PRECISIONS[model_format])}, not {precision}",
            hint="for fp16 use --format openvino, tensorrt or tflite" if precision == "fp16" else None,
        )
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
        _check_tensorrt(
            bundle,
            out,
            precision,
            prep.input_size,
            image_dir=image_dir,
            force=force,
            weights=weights,
            progress=progress,
        )

    images = find_check_images(bundle, image_dir)
    test_records = spread_records(images.test, MAX_CHECK_IMAGES)
    if not test_records and not force:
        raise DataError(
            f"cannot check the export: {images.note or 'no test images'}",
            hint="pass --image_dir with labelled images (one folder per label), or --force to export unchecked",
        )
    x_test, test_records = decode_images(test_records, prep, progress=progress, desc="Test images")
    y_test = np.array([bundle.labels.index(r.label) for r in test_records], dtype=np.int64)

    description = describe_export(bundle, backbone, model_format, precision)
    module = create_classifier(bundle, backbone)
    staging = out.parent / f".{out.name}.partial-{secrets.token_hex(4)}"
    staging.mkdir(parents=True)
    try:
        staged = staging / out.name
        log.info("writing the ONNX graph: normalisation, backbone, head and softmax in one file")
        onnx_fp32 = write_onnx(module, staging / "fp32.onnx", prep.input_size, description)
        source_onnx = onnx_fp32
        if model_format == "tensorrt":
            description = description.with_(
                tensorrt=build_tensorrt(
                    onnx_fp32, staged, precision, prep.input_size, images.training, calibration_images, prep, cache_dir
                )
            )
        elif model_format in TF_PRECISIONS:  # TFLite / SavedModel, converted from the ONNX graph (tf_export)
            description = write_tf_export(onnx_fp32, staged, description, images, calibration_images)
        elif precision == "int8":
            calibration = spread_records(images.training, calibration_images, seed=1)
            x_cal, _ = decode_images(calibration, prep, progress=progress, desc="Calibration images")
            source_onnx = quantize_int8(onnx_fp32, staging / "int8.onnx", x_cal)
            description = description.with_(
                calibration={
                    "images": len(x_cal),
                    "source": "run training split",
                    "method": "onnxruntime static, QDQ, per-channel, MinMax",
                }
            )
            set_onnx_metadata(source_onnx, description.metadata())
        if model_format == "onnx":
            os.replace(source_onnx, staged)
        elif model_format == "openvino":
            log.info("converting to OpenVINO IR")
            write_openvino(source_onnx, staged, precision, description)
        files = [p for p in staging.iterdir() if p.stem == out.stem]

        side = write_sidecar(staging / sidecar_path(out).name, description)  # so the check can load the model
        check = _self_check(
            module, staged, model_format, x_test, y_test, images, precision, max_accuracy_drop, force, progress
        )
        description = description.with_(
            check=check.to_dict(),
            model_sha256=export_sha256(staged),
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        write_sidecar(side, description)
        final = []
        for path in [*files, side]:  # the model's own files first, the sidecar (its "commit") last
            replace_export(path, out.parent / path.name)
            final.append(out.parent / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ExportResult(
        out, sidecar_path(out), model_format, precision, check, tuple(final), time.perf_counter() - start
    )


def _self_check(
    module: "torch.nn.Module",
    path: Path,
    model_format: str,
    x: np.ndarray,
    y: np.ndarray,
    images: CheckImages,
    precision: str,
    max_accuracy_drop: float,
    force: bool,
    progress: bool = False,
) -> SelfCheck:
    where = str(images.image_dir) if images.image_dir else None
    if len(x) == 0:
        log.warning("the export was not checked: %s", images.note or "no readable test images")
        return SelfCheck(
            where,
            "none",
            0,
            None,
            None,
            None,
            None,
            None,
            model_format,
            False,
            images.note or "no readable test images",
        )
    from .model import load_model

    # The exported file is checked the way it will be used: through a Classifier, in fp32.
    exported = load_model(
        path, runtime=_CHECK_RUNTIME[model_format], precision="engine" if model_format == "tensorrt" else "fp32"
    )
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
        message = (
            f"the {precision} {model_format} export loses {numbers['accuracy_drop']:.1f} points of test "
            f"accuracy ({100 * numbers['accuracy']:.1f}% vs PyTorch's {100 * numbers['reference_accuracy']:.1f}%"
            f" on {len(x)} images; top-1 agreement {100 * numbers['agreement']:.1f}%), more than "
            f"--max_accuracy_drop {max_accuracy_drop:g}"
        )
        if not force:
            raise ModelError(message, hint="use fp32, raise --max_accuracy_drop, or pass --force to write it anyway")
        log.warning("%s; written anyway (--force)", message)
    return check


def _check_tensorrt(
    bundle: Bundle,
    out: Path,
    precision: str,
    input_size: int,
    *,
    image_dir: Any,
    force: bool,
    weights: Any,
    progress: bool,
) -> None:
    """Without TensorRT: write the fp32 ONNX an engine is built from, then fail with the trtexec line."""
    from .runtimes.tensorrt import TensorRTUnavailable, require_tensorrt

    onnx_out = out.with_name(f"{out.stem}.onnx")
    if out.stem.endswith(f"-{precision}"):
        onnx_out = out.with_name(out.stem[: -len(precision)] + "fp32.onnx")
    try:
        require_tensorrt(onnx_out, out, input_size=input_size, precision=precision)
    except TensorRTUnavailable as exc:
        if not onnx_out.is_file():
            export_model(
                bundle.path,
                model_format="onnx",
                output=onnx_out,
                image_dir=image_dir,
                force=force,
                weights=weights,
                progress=progress,
            )
        raise TensorRTUnavailable(f"{exc.message}; wrote {onnx_out} to build it from", hint=exc.hint) from None
