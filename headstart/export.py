"""A run directory -> one self-contained model file: ONNX, OpenVINO IR or a TensorRT engine.

The exported graph is the whole classifier: uint8 RGB ``images [N, H, W, 3]``
(dynamic batch) -> normalisation -> backbone -> trained last layer -> softmax
probabilities.  What a graph cannot hold (labels, resize and crop geometry,
provenance) is written into the ONNX metadata and into the ``<model>.json``
sidecar, which :mod:`headstart.deployed` reads without torch.

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
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .bundle import HEAD_NAME, Bundle, load_bundle
from .data import ImageRecord, Preprocessing, index_image_dir
from .deployed import METADATA_KEY, SIDECAR_FORMAT, SIDECAR_VERSION, sidecar_path
from .errors import DataError, HeadstartError, ModelError, UsageError
from .runtimes import Runner, RuntimeChoice, create_session_runner

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .backbones import Backbone

log = logging.getLogger("headstart")

FORMATS = ("onnx", "openvino", "tensorrt")
PRECISIONS = {"onnx": ("fp32", "int8"), "openvino": ("fp32", "fp16", "int8"), "tensorrt": ("fp32", "fp16", "int8")}
SUFFIX = {"onnx": ".onnx", "openvino": ".xml", "tensorrt": ".engine"}
OUTPUT_NAME = "probabilities"
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


def fold_head(tensors: dict[str, np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """The head as ``(weight [in, out], bias)`` layers, feature standardisation folded into the first.

    ``((x - m) / s) @ W + b == x @ (W / s[:, None]) + (b - (m / s) @ W)``, computed
    in float64, so the graph needs no extra ops and matches ``SoftmaxHead.logits``.
    A ReLU sits between two layers (``hidden_units > 0``).
    """
    t = {k: np.asarray(v, dtype=np.float64) for k, v in tensors.items()}
    layers = [(t["hidden.weight"], t["hidden.bias"])] if "hidden.weight" in t else []
    layers.append((t["final.weight"], t["final.bias"]))
    if "standardize.mean" in t:
        w, b = layers[0]
        mean, std = t["standardize.mean"], t["standardize.std"]
        layers[0] = (w / std[:, None], b - (mean / std) @ w)
    return [(w.astype(np.float32), b.astype(np.float32)) for w, b in layers]


def create_classifier(bundle: Bundle, backbone: "Backbone") -> "torch.nn.Module":
    """uint8 images -> probabilities: InputAdapter(backbone) -> trained head -> softmax, in eval mode."""
    import torch

    from .networks import create_feature_extractor

    layers: list[torch.nn.Module] = [create_feature_extractor(backbone)]
    for i, (w, b) in enumerate(fold_head(bundle.head_tensors)):
        if i:
            layers.append(torch.nn.ReLU())
        linear = torch.nn.Linear(w.shape[0], w.shape[1])
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(np.ascontiguousarray(w.T)))
            linear.bias.copy_(torch.from_numpy(b))
        layers.append(linear)
    layers.append(torch.nn.Softmax(dim=-1))
    return torch.nn.Sequential(*layers).eval().requires_grad_(False)


def head_sha256(run_dir: Path) -> str:
    return hashlib.sha256((Path(run_dir) / HEAD_NAME).read_bytes()).hexdigest()


def describe_export(bundle: Bundle, backbone: "Backbone", model_format: str, precision: str) -> dict[str, Any]:
    """The sidecar without the self-check: also stored, as JSON, in the ONNX metadata."""
    from . import __version__

    prep = Preprocessing.from_dict(bundle.preprocessing)
    return {
        "format": SIDECAR_FORMAT,
        "format_version": SIDECAR_VERSION,
        "model_format": model_format,
        "precision": precision,
        "input": {"name": "images", "dtype": "uint8", "layout": "NHWC", "color": "RGB",
                  "shape": ["batch", prep.input_size, prep.input_size, 3]},
        "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": ["batch", len(bundle.labels)],
                   "meaning": "softmax probabilities, columns follow labels"},
        "labels": list(bundle.labels),
        "preprocessing": {
            **prep.to_dict(),
            "resize_size": prep.resize_size,
            "steps": ["decode to RGB (EXIF orientation applied, alpha over white)",
                      f"resize the shorter side to {prep.resize_size} px ({prep.interpolation})",
                      f"centre-crop {prep.input_size}x{prep.input_size}",
                      "uint8 NHWC into the graph"],
            "normalization": "in_graph",  # mean/std are applied inside the model, not by the caller
        },
        "provenance": {
            "backbone": bundle.backbone.get("name"),
            "timm_name": bundle.backbone.get("timm_name"),
            "weights_fingerprint": bundle.backbone.get("weights_fingerprint"),
            "run_dir": str(Path(bundle.path).resolve()),
            "head_sha256": head_sha256(bundle.path),
            "trained": bundle.created,
            "headstart_version": __version__,
        },
    }


# ---------------------------------------------------------------- images for the check


def find_check_images(bundle: Bundle, image_dir: str | Path | None = None) -> CheckImages:
    """Test images: the run's own test split, or every image of an explicit labelled folder.

    Training images (int8 calibration) always come from the run's own folder, when it still exists.
    """
    data = (bundle.metrics or {}).get("data") or {}
    stored = data.get("image_dir")
    run = None
    note = "the run does not record its image folder"
    if stored and Path(stored).is_dir():
        run = index_image_dir(stored, float(data.get("validation_percentage", 10.0)),
                              float(data.get("testing_percentage", 10.0)), labels=bundle.labels)
    elif stored:
        note = f"the run's images at {stored} are gone"
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


def decode_images(records: Sequence[ImageRecord], prep: Preprocessing) -> tuple[np.ndarray, list[ImageRecord]]:
    """uint8 ``[N, S, S, 3]`` for the readable records, and those records."""
    from .features import decode_ahead, default_workers

    kept, images = [], []
    paths = [r.path for r in records]
    for position, image, error in decode_ahead(paths, prep, 32, default_workers()):
        if image is None:
            log.warning("skipping %s: %s", paths[position], error)
            continue
        kept.append(records[position])
        images.append(image)
    if not images:
        return np.zeros((0, prep.input_size, prep.input_size, 3), np.uint8), []
    return np.stack(images), kept


def predict(runner: Runner, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    return np.concatenate([runner(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])


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


def _write_onnx(module: "torch.nn.Module", path: Path, input_size: int, description: dict[str, Any]) -> Path:
    from .runtimes import export_onnx

    return export_onnx(module, path, input_size, output_name=OUTPUT_NAME,
                       metadata=_onnx_metadata(description))


def _onnx_metadata(description: dict[str, Any]) -> dict[str, str]:
    return {METADATA_KEY: json.dumps(description, sort_keys=True), "labels": json.dumps(description["labels"]),
            "preprocessing": json.dumps(description["preprocessing"], sort_keys=True)}


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
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, \
        quantize_static

    if len(calibration) == 0:
        raise DataError("int8 needs calibration images and none could be read",
                        hint="export from a run whose training images still exist")

    class Reader(CalibrationDataReader):
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
        quantize_static(str(fp32_onnx), str(Path(tmp) / "int8.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=tail,
                        extra_options={"ActivationSymmetric": True})
        shutil.move(str(Path(tmp) / "int8.onnx"), out)
    return out


def _write_openvino(onnx_path: Path, xml_path: Path, precision: str, description: dict[str, Any]) -> Path:
    import openvino as ov

    model = ov.convert_model(str(onnx_path))
    for key in ("labels", "precision"):
        model.set_rt_info(json.dumps(description[key]), ["headstart", key])
    ov.save_model(model, str(xml_path), compress_to_fp16=(precision == "fp16"))
    return xml_path


def _candidate_runner(path: Path, model_format: str) -> tuple[Runner, str]:
    if model_format == "onnx":
        return create_session_runner(path, RuntimeChoice("onnxruntime", "fp32")), "onnxruntime-fp32"
    if model_format == "openvino":
        return create_session_runner(path, RuntimeChoice("openvino", "fp32")), "openvino-fp32"
    from .tensorrt import create_engine_runner

    return create_engine_runner(path), "tensorrt"


# ---------------------------------------------------------------- export


def default_output(run_dir: Path, model_format: str, precision: str) -> Path:
    return Path(run_dir) / "export" / f"model-{precision}{SUFFIX[model_format]}"


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
    :class:`~headstart.tensorrt.TensorRTUnavailable` whose hint is the
    equivalent ``trtexec`` command.
    """
    start = time.perf_counter()
    if model_format not in FORMATS:
        raise UsageError(f"unknown export format {model_format!r}", hint=f"use one of {', '.join(FORMATS)}")
    if precision not in PRECISIONS[model_format]:
        raise UsageError(f"{model_format} exports support {', '.join(PRECISIONS[model_format])}, not {precision}",
                         hint="fp16 targets GPUs: use --format openvino or tensorrt" if precision == "fp16" else None)
    if max_accuracy_drop < 0:
        raise UsageError("--max_accuracy_drop must be 0 or more (points of test accuracy)")
    from .workflow import resolve_model_backbone

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
    x_test, test_records = decode_images(test_records, prep)
    y_test = np.array([bundle.labels.index(r.label) for r in test_records], dtype=np.int64)

    description = describe_export(bundle, backbone, model_format, precision)
    module = create_classifier(bundle, backbone)
    staging = out.parent / f".{out.name}.partial-{secrets.token_hex(4)}"
    staging.mkdir(parents=True)
    try:
        staged = staging / out.name
        onnx_fp32 = _write_onnx(module, staging / "fp32.onnx", prep.input_size, description)
        source_onnx = onnx_fp32
        if model_format == "tensorrt":
            description["tensorrt"] = _build_tensorrt(onnx_fp32, staged, precision, prep.input_size, images.training,
                                                      calibration_images, prep, cache_dir)
        elif precision == "int8":
            calibration = _spread(images.training, calibration_images, seed=1)
            x_cal, _ = decode_images(calibration, prep)
            source_onnx = quantize_int8(onnx_fp32, staging / "int8.onnx", x_cal)
            _set_onnx_metadata(source_onnx, _onnx_metadata(description))
            description["calibration"] = {"images": len(x_cal), "source": "run training split",
                                          "method": "onnxruntime static, QDQ, per-channel, MinMax"}
        if model_format == "onnx":
            os.replace(source_onnx, staged)
        elif model_format == "openvino":
            _write_openvino(source_onnx, staged, precision, description)
        files = [p for p in staging.iterdir() if p.stem == out.stem]

        check = _self_check(module, staged, model_format, x_test, y_test, images, precision, max_accuracy_drop,
                            force)
        description["check"] = check.to_dict()
        description["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        description["model_sha256"] = hashlib.sha256(staged.read_bytes()).hexdigest()
        side = staging / sidecar_path(out).name
        side.write_text(json.dumps(description, indent=2) + "\n", encoding="utf-8")
        final = []
        for path in [*files, side]:  # the model's own files first, the sidecar (its "commit") last
            os.replace(path, out.parent / path.name)
            final.append(out.parent / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ExportResult(out, sidecar_path(out), model_format, precision, check, tuple(final),
                        time.perf_counter() - start)


def _self_check(module: "torch.nn.Module", path: Path, model_format: str, x: np.ndarray, y: np.ndarray,
                images: CheckImages, precision: str, max_accuracy_drop: float, force: bool) -> SelfCheck:
    where = str(images.image_dir) if images.image_dir else None
    if len(x) == 0:
        log.warning("the export was not checked: %s", images.note or "no readable test images")
        return SelfCheck(where, "none", 0, None, None, None, None, None, model_format, False,
                         images.note or "no readable test images")
    runner, runtime = _candidate_runner(path, model_format)
    log.info("checking the export against PyTorch on %d test images", len(x))
    reference = predict(torch_runner(module), x)
    numbers = compare(predict(runner, x), reference, y)
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
    from .tensorrt import TensorRTUnavailable, require_tensorrt

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
    from .cache import default_cache_dir
    from .tensorrt import BatchProfile, build_engine, tensorrt_version

    profile = BatchProfile()
    batches, calibration_id, info = None, None, {}
    if precision == "int8":
        x_cal, kept = decode_images(_spread(training, calibration_images, seed=1), prep)
        usable = len(x_cal) - len(x_cal) % 16 or len(x_cal)
        batches = [x_cal[i:i + 16] for i in range(0, usable, 16)]
        calibration_id = hashlib.sha256("".join(r.sha256 for r in kept).encode()).hexdigest()[:16]
        info = {"images": len(x_cal), "source": "run training split", "method": "TensorRT entropy calibrator 2"}
    models = (Path(cache_dir) if cache_dir else default_cache_dir()) / "models"
    build_engine(onnx_fp32, staged, input_size=input_size, precision=precision, profile=profile,
                 calibration=batches, calibration_id=calibration_id, cache_dir=models)
    return {"tensorrt": tensorrt_version(), "profile": asdict(profile), **({"calibration": info} if info else {})}


# ---------------------------------------------------------------- bench


BENCH_RUNTIMES = ("torch", "cuda", "onnxruntime", "openvino", "tensorrt")
LATENCY_REPEATS = 30
THROUGHPUT_BATCHES = 3
THROUGHPUT_BATCH = 32


@dataclass(frozen=True)
class _Candidate:
    runtime: str
    precision: str
    model: str
    create: Callable[[], Runner]


def _percentile_ms(seconds: Sequence[float], q: float) -> float:
    return round(1000 * float(np.percentile(np.asarray(seconds), q)), 3)


def _measure(runner: Runner, x: np.ndarray, repeats: int = LATENCY_REPEATS) -> dict[str, float]:
    """Batch-1 latency p50/p90 (ms) over distinct images, and batch-32 throughput (images/s)."""
    runner(x[:1])  # warm up: lazy allocations, kernel selection
    latencies = []
    for i in range(repeats):
        one = x[i % len(x):i % len(x) + 1]
        t0 = time.perf_counter()
        runner(one)
        latencies.append(time.perf_counter() - t0)
    batch = np.resize(x, (THROUGHPUT_BATCH, *x.shape[1:])) if len(x) < THROUGHPUT_BATCH else x[:THROUGHPUT_BATCH]
    runner(batch)
    t0 = time.perf_counter()
    for _ in range(THROUGHPUT_BATCHES):
        runner(batch)
    elapsed = time.perf_counter() - t0
    return {"latency_p50_ms": _percentile_ms(latencies, 50), "latency_p90_ms": _percentile_ms(latencies, 90),
            "throughput_ips": round(THROUGHPUT_BATCHES * THROUGHPUT_BATCH / elapsed, 1)}


def _torch_importable() -> bool:
    try:
        import torch  # noqa: F401
        import timm  # noqa: F401
    except ImportError:
        return False
    return True


def _bench_candidates(bundle: Bundle | None, exported: Path | None, exported_format: str | None,
                      training: Sequence[ImageRecord], prep: Preprocessing, workdir: Path,
                      wanted: Sequence[str]) -> list[_Candidate]:
    from .runtimes import cpu_has_native_bf16, cuda_available

    found: list[_Candidate] = []
    module_box: dict[str, Any] = {}
    have_torch = bundle is not None and _torch_importable()

    def module() -> "torch.nn.Module":
        if "m" not in module_box:
            from .workflow import resolve_model_backbone

            module_box["m"] = create_classifier(bundle, resolve_model_backbone(bundle))
        return module_box["m"]

    def torch_factory(choice: RuntimeChoice, compiled: bool = False) -> Callable[[], Runner]:
        def create() -> Runner:
            import copy

            return _torch_runner(copy.deepcopy(module()), choice, compile=compiled)
        return create

    if have_torch and "torch" in wanted:
        found.append(_Candidate("torch", "fp32", "PyTorch eager", torch_factory(RuntimeChoice("torch", "fp32"))))
    gpu = have_torch and cuda_available()
    if gpu and "cuda" in wanted:
        found.append(_Candidate("cuda", "fp32", "PyTorch", torch_factory(RuntimeChoice("cuda", "fp32"))))
        found.append(_Candidate("cuda", "fp16", "PyTorch channels-last", torch_factory(RuntimeChoice("cuda", "fp16"))))
        found.append(_Candidate("cuda", "fp16", "PyTorch channels-last + torch.compile",
                                torch_factory(RuntimeChoice("cuda", "fp16"), compiled=True)))

    # ONNX files: the given export, or fp32 and int8 built from the run for this benchmark.
    files: list[tuple[Path, str, str]] = []  # (path, format, precision)
    if exported is not None:
        from .deployed import read_model_info

        files.append((exported, exported_format or "onnx", read_model_info(exported).precision))
    elif bundle is not None and have_torch:
        from .workflow import resolve_model_backbone

        backbone = resolve_model_backbone(bundle)
        description = describe_export(bundle, backbone, "onnx", "fp32")
        fp32 = _write_onnx(module(), workdir / "model-fp32.onnx", prep.input_size, description)
        files.append((fp32, "onnx", "fp32"))
        if training:
            x_cal, _ = decode_images(_spread(training, DEFAULT_CALIBRATION_IMAGES, seed=1), prep)
            files.append((quantize_int8(fp32, workdir / "model-int8.onnx", x_cal), "onnx", "int8"))

    import importlib.util

    for path, fmt, precision in files:
        label = path.name
        if fmt == "onnx" and "onnxruntime" in wanted and importlib.util.find_spec("onnxruntime"):
            found.append(_Candidate("onnxruntime", precision, label, lambda p=path: create_session_runner(
                p, RuntimeChoice("onnxruntime", "fp32"))))
        if fmt in ("onnx", "openvino") and "openvino" in wanted and importlib.util.find_spec("openvino"):
            found.append(_Candidate("openvino", precision, label, lambda p=path: create_session_runner(
                p, RuntimeChoice("openvino", "fp32"))))
            if precision == "fp32" and cpu_has_native_bf16():
                found.append(_Candidate("openvino", "bf16", label, lambda p=path: create_session_runner(
                    p, RuntimeChoice("openvino", "bf16"))))
        if fmt == "tensorrt" and "tensorrt" in wanted:
            from .tensorrt import create_engine_runner

            found.append(_Candidate("tensorrt", precision, label, lambda p=path: create_engine_runner(p)))
    onnx_fp32 = next((p for p, f, q in files if f == "onnx" and q == "fp32"), None)
    if onnx_fp32 is not None and gpu and "tensorrt" in wanted and importlib.util.find_spec("tensorrt"):
        from .tensorrt import build_engine, create_engine_runner

        def trt_fp16() -> Runner:
            engine = build_engine(onnx_fp32, workdir / "model-fp16.engine", input_size=prep.input_size,
                                  precision="fp16")
            return create_engine_runner(engine)

        found.append(_Candidate("tensorrt", "fp16", "engine from model-fp32.onnx", trt_fp16))
    return found


def bench_model(model: Path, *, image_dir: Path | None = None, runtimes: Sequence[str] | None = None,
                progress: bool = True) -> list[dict]:
    """Each available runtime and precision side by side: batch-1 latency, batch-32 throughput, test accuracy.

    ``model`` is a run directory (PyTorch eager fp32 is the reference; fp32 and
    int8 ONNX are built for the comparison) or an exported model file.  Test
    images are the run's test split, or ``image_dir`` (one folder per label).
    One row per runtime; a runtime that fails gets a row with its error.
    """
    from .deployed import is_exported_model, read_model_info

    model = Path(model)
    wanted = list(runtimes) if runtimes else list(BENCH_RUNTIMES)
    unknown = [r for r in wanted if r not in BENCH_RUNTIMES]
    if unknown:
        raise UsageError(f"unknown runtime {unknown[0]!r}", hint=f"use some of {', '.join(BENCH_RUNTIMES)}")
    exported, exported_format, bundle = None, None, None
    if is_exported_model(model):
        info = read_model_info(model)
        exported, exported_format, labels, prep = info.path, info.model_format, info.labels, info.preprocessing
        run_dir = Path(info.provenance.get("run_dir", ""))
        if (run_dir / "headstart.json").is_file():
            try:
                bundle = load_bundle(run_dir)
            except HeadstartError as exc:
                log.warning("not comparing with PyTorch: %s", exc)
    else:
        bundle = load_bundle(model)
        labels, prep = bundle.labels, Preprocessing.from_dict(bundle.preprocessing)
    if bundle is not None:
        images = find_check_images(bundle, image_dir)
    elif image_dir is not None:
        index = index_image_dir(image_dir, 0, 100, labels=labels, require_training=False)
        images = CheckImages(index.root, "--image_dir", index.split("testing"), ())
    else:
        images = CheckImages(None, "none", (), (), "no run directory to find test images in")
    test = _spread(images.test, MAX_CHECK_IMAGES)
    if not test:
        raise DataError(f"no test images to benchmark on: {images.note or 'none found'}",
                        hint="pass --image_dir with labelled images (one folder per label)")
    x, test = decode_images(test, prep)
    y = np.array([labels.index(r.label) for r in test], dtype=np.int64)
    rows: list[dict] = []
    reference: np.ndarray | None = None
    with tempfile.TemporaryDirectory(prefix="headstart-bench-") as tmp:
        candidates = _bench_candidates(bundle, exported, exported_format, images.training, prep, Path(tmp), wanted)
        for number, cand in enumerate(candidates, 1):
            if progress:
                log.info("[%d/%d] %s %s (%s)", number, len(candidates), cand.runtime, cand.precision, cand.model)
            row: dict[str, Any] = {"runtime": cand.runtime, "precision": cand.precision, "model": cand.model,
                                   "n": int(len(x))}
            try:
                t0 = time.perf_counter()
                runner = cand.create()
                runner(x[:1])
                row["setup_s"] = round(time.perf_counter() - t0, 2)
                row.update(_measure(runner, x))
                proba = predict(runner, x)
                row["accuracy"] = round(float(np.mean(proba.argmax(1) == y)), 4)
                if cand.runtime == "torch" and reference is None:
                    reference = proba
                if reference is not None:
                    row["agreement"] = round(float(np.mean(proba.argmax(1) == reference.argmax(1))), 4)
                del runner
            except Exception as exc:  # noqa: BLE001 - one broken runtime must not hide the others
                log.warning("%s %s failed: %s", cand.runtime, cand.precision, exc)
                row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            rows.append(row)
    eager = next((r for r in rows if r["runtime"] == "torch" and "latency_p50_ms" in r), None)
    for row in rows:
        if eager and "latency_p50_ms" in row:
            row["latency_speedup"] = round(eager["latency_p50_ms"] / row["latency_p50_ms"], 2)
    return rows


def format_bench_rows(rows: Sequence[dict]) -> str:
    """The benchmark as a plain-text table, one row per runtime and precision."""
    columns = [("runtime", "runtime", "l"), ("precision", "precision", "l"), ("model", "model", "l"),
               ("latency_p50_ms", "b1 p50 ms", "r"), ("latency_p90_ms", "b1 p90 ms", "r"),
               ("latency_speedup", "vs eager", "r"), ("throughput_ips", "b32 img/s", "r"),
               ("accuracy", "accuracy %", "r"), ("agreement", "agrees %", "r")]

    def cell(row: dict, key: str) -> str:
        value = row.get(key)
        if value is None:
            return "-"
        if key in ("accuracy", "agreement"):
            return f"{100 * value:.1f}"
        if key == "latency_speedup":
            return f"{value:.2f}x"
        if isinstance(value, float):
            return f"{value:.1f}" if value >= 10 else f"{value:.2f}"
        return str(value)

    table = [[cell(r, key) for key, _, _ in columns] for r in rows]
    widths = [max([len(title)] + [len(t[i]) for t in table]) for i, (_, title, _) in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if a == "r" else v.ljust(w)
                         for v, w, (_, _, a) in zip(values, widths, columns)).rstrip()

    lines = [line([title for _, title, _ in columns]), line(["-" * w for w in widths]), *map(line, table)]
    errors = [f"{r['runtime']} {r['precision']}: {r['error']}" for r in rows if r.get("error")]
    n = next((r["n"] for r in rows if r.get("n")), 0)
    lines.append(f"\nbatch-1 latency over {LATENCY_REPEATS} images, batch-{THROUGHPUT_BATCH} throughput, "
                 f"accuracy on {n} test images; 'agrees' = same top-1 label as PyTorch eager fp32.")
    lines += [f"failed: {e}" for e in errors]
    return "\n".join(lines)
