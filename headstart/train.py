"""``retrain``: TensorFlow's retrain.py, modernised.

Index and split the folder, turn every image into a bottleneck once (cached by
content), train a new last layer from memory, evaluate on images it never saw,
and write the run directory atomically.  Every setting is checked first
(:func:`headstart.config.check_config`), so a bad value costs no computation.
"""

from __future__ import annotations

import csv
import io
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .backbones import Backbone, resolve_backbone
from .bundle import BackboneRecord, DataRecord, default_run_dir, save_bundle
from .cache import BottleneckCache
from .calibrate import calibrate_head, calibration_report
from .config import RetrainConfig, check_config
from .data import ImageIndex, ImageRecord, SkippedImage, index_image_dir
from .errors import DataError, UsageError
from .features import Bottlenecks, compute_bottlenecks
from .head import SoftmaxHead, TrainStep
from .metrics import Evaluation, Misclassified, find_misclassified, learning_rate_warning
from .metrics import evaluate as evaluate_predictions
from .runtimes import RuntimeChoice
from .settings import RETRAIN_PY_RECIPE
from .stream_head import StreamingHead, calibrate_streaming, extract_to_stores, needs_streaming

log = logging.getLogger("headstart")


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


# ---------------------------------------------------------------- helpers


def open_cache(bottleneck_dir: str | Path | None) -> BottleneckCache:
    return BottleneckCache(bottleneck_dir)


def build_head(config: RetrainConfig, n_classes: int, n_train: int | None = None) -> SoftmaxHead:
    return SoftmaxHead(n_classes=n_classes, **config.head_params(n_train))


def skipped_csv(skipped: Sequence[SkippedImage]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["path", "reason"])
    for item in skipped:
        writer.writerow([str(item.path), item.reason])
    return out.getvalue()


def _relative(path: Path, root: Path) -> str:
    """``path`` relative to the image folder when it is inside it (as misclassified paths are)."""
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)


def index_training_folder(config: RetrainConfig) -> ImageIndex:
    """retrain's index and split of ``image_dir``, less the images ``--exclude_from`` names."""
    index = index_image_dir(config.image_dir, config.validation_percentage, config.testing_percentage)
    if not config.exclude_from:
        return index
    from .doctor_results import load_exclusions

    where, _, kinds = config.exclude_from.partition(":")
    excluded = load_exclusions(where, [k for k in kinds.split(",") if k] or None)
    kept = tuple(r for r in index.records if r.relpath not in excluded)
    log.info("excluding %d of %d images flagged in %s", len(index.records) - len(kept), len(index.records), where)
    return replace(index, records=kept)


def run_doctor(config: RetrainConfig) -> tuple[str, dict[str, Any]]:
    """``--doctor``: the data doctor on the same folder, split and cache; doctor.json and its summary."""
    import json

    from .doctor import doctor
    from .doctor_results import summary_line

    report = doctor(
        config.image_dir,
        bottleneck_dir=config.bottleneck_dir,
        backbone=config.backbone,
        weights=config.weights,
        crop_pct=config.crop_pct,
        runtime=config.runtime,
        precision=config.precision,
        validation_percentage=config.validation_percentage,
        testing_percentage=config.testing_percentage,
        workers=config.workers,
        seed=config.seed,
    )
    summary = {"summary": summary_line(report), **report.summary()}
    return json.dumps(report.to_dict(), indent=2, default=str) + "\n", summary


IMBALANCE_WARNING_RATIO = 5.0


def warn_if_imbalanced(labels: Sequence[str], y_train: np.ndarray, class_weights: str) -> None:
    """One warning when the largest class has more than 5x the training images of the smallest."""
    counts = np.bincount(y_train, minlength=len(labels))
    big, small = int(counts.argmax()), int(counts.argmin())
    if counts[small] and counts[big] / counts[small] > IMBALANCE_WARNING_RATIO:
        how = (
            "each class is drawn equally often per batch (--class_weights balanced)"
            if class_weights == "balanced"
            else "images are drawn uniformly (--class_weights none), so the big class dominates"
        )
        log.warning(
            "classes are imbalanced: %s has %d training images, %s only %d; %s",
            labels[big],
            counts[big],
            labels[small],
            counts[small],
            how,
        )


def _sample_test(n: int, test_batch_size: int, seed: int) -> np.ndarray:
    """retrain.py's --test_batch_size: -1 is the whole test set, else a random sample of that size."""
    if test_batch_size is None or test_batch_size < 0 or test_batch_size >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed + 1)
    return np.sort(rng.choice(n, size=test_batch_size, replace=False))


def extract_bottlenecks(
    records: Sequence[ImageRecord], backbone: Backbone, cache: BottleneckCache, config: RetrainConfig, **overrides: Any
) -> Bottlenecks:
    return compute_bottlenecks(records, backbone, cache, **{**config.extraction_params(), **overrides})


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
        raise DataError(
            f"class {missing[0]!r} has no usable training image",
            hint="add images to it, or lower --testing_percentage/--validation_percentage",
        )
    if len(splits["testing"][2]) == 0:
        raise DataError(
            "no usable test image: the test split is empty", hint="raise --testing_percentage or add images"
        )
    return splits


def add_distorted_copies(
    config: RetrainConfig,
    records: Sequence[ImageRecord],
    x_train: np.ndarray,
    y_train: np.ndarray,
    backbone: Backbone,
    runtime: RuntimeChoice | None,
    label_ids: dict[str, int],
) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """The training set plus ``distorted_copies`` distorted copies of every training image.

    Each copy's bottlenecks are cached like undistorted ones, so a second run
    with the same flags runs no network; validation and test images are never
    distorted.
    """
    xs, ys = [x_train], [y_train]
    counts = {"copies": config.distorted_copies, "computed": 0, "cached": 0}
    with open_cache(config.bottleneck_dir) as cache:
        for copy in range(config.distorted_copies):
            result = extract_bottlenecks(
                records, backbone, cache, config, runtime=runtime or config.runtime, distortion=config.distortion(copy)
            )
            xs.append(result.vectors)
            ys.append(np.array([label_ids[r.label] for r in result.records], dtype=np.int64))
            counts["computed"] += result.computed
            counts["cached"] += result.cached
    return np.concatenate(xs), np.concatenate(ys), counts


def retrain(config: RetrainConfig, on_step: Callable[[TrainStep], None] | None = None) -> RetrainResult:
    """Train a new last layer on ``config.image_dir`` and save the run directory."""
    start = time.perf_counter()
    check_config(config)
    if config.fine_tune_blocks:  # the top stages train too: a pipeline of its own (headstart.finetune_run)
        from .finetune_run import fine_tune_retrain

        return fine_tune_retrain(config, on_step)
    index = index_training_folder(config)
    backbone = resolve_backbone(config.backbone, config.weights, crop_pct=config.crop_pct)
    # Past --max_memory the vectors go to stores on disk and the head reads a batch at a time (stream_head).
    streaming = needs_streaming(len(index.records), backbone.num_features, config.max_memory)
    if streaming and config.distortion().active:
        raise UsageError(
            "distortions need the training vectors in memory, and these exceed --max_memory",
            hint="raise --max_memory, or drop the distortion flags",
        )
    with open_cache(config.bottleneck_dir) as cache:
        bottlenecks = (
            extract_to_stores(index.records, backbone, cache, config)
            if streaming
            else extract_bottlenecks(index.records, backbone, cache, config)
        )
    skipped = tuple(index.skipped) + bottlenecks.skipped
    if skipped and config.strict:
        # Name every one, so one run finds them all.
        for item in skipped:
            log.warning("cannot use %s: %s", item.path, item.reason)
        first = skipped[0]
        raise DataError(
            f"--strict: {len(skipped)} image(s) could not be used, e.g. {first.path}: {first.reason}",
            hint="fix or remove the files listed above, or drop --strict to skip them",
        )
    bottleneck_s = time.perf_counter() - start

    label_ids = {label: i for i, label in enumerate(index.labels)}
    splits = split_bottlenecks(index.labels, bottlenecks)
    train_records, x_train, y_train = splits["training"]
    _, x_val, y_val = splits["validation"]

    distorted: dict[str, int] | None = None
    if config.distortion().active:
        x_train, y_train, distorted = add_distorted_copies(
            config, train_records, x_train, y_train, backbone, bottlenecks.runtime, label_ids
        )
        bottleneck_s = time.perf_counter() - start

    warn_if_imbalanced(index.labels, y_train, config.class_weights)
    train_start = time.perf_counter()
    steps = config.training_steps(len(y_train))
    if steps > config.how_many_training_steps:
        log.info(
            "Training for %d steps: %d passes over %d images (--min_epochs)", steps, config.min_epochs, len(y_train)
        )
    head = (
        StreamingHead(n_classes=len(index.labels), **config.head_params(len(y_train)))
        if streaming
        else build_head(config, len(index.labels), len(y_train))
    )
    head.fit(x_train, y_train, x_val if len(y_val) else None, y_val if len(y_val) else None, callback=on_step)
    train_s = time.perf_counter() - train_start
    # Divergence is the head's one warning line; a rate that is too high but stays finite is ours.
    lr_warning = (
        None
        if head.diverged_
        else learning_rate_warning([asdict(step) for step in head.history_], len(index.labels), config.learning_rate)
    )
    if lr_warning:
        log.warning("%s", lr_warning)

    novelty = (calibrate_streaming if streaming else calibrate_head)(
        head, x_train, y_train, x_val, y_val, config.unknown_accept
    )

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
        "training": {
            "n": int(len(y_train)),
            "final": asdict(head.history_[-1]) if head.history_ else None,
            "diverged": bool(head.diverged_),
            "steps_run": int(head.n_steps_run_),
            "streamed": streaming,
            **({"warning": lr_warning} if lr_warning else {}),
        },
        "timing": timing,
        "bottlenecks": {"computed": bottlenecks.computed, "cached": bottlenecks.cached, "skipped": len(skipped)},
        "skipped": [{"path": _relative(item.path, index.root), "reason": item.reason} for item in skipped],
        **({"distorted_bottlenecks": distorted} if distorted else {}),
        "misclassified": [
            {"path": m.relpath, "label": m.true_label, "predicted": m.predicted_label, "score": round(m.score, 6)}
            for m in misclassified
        ],
        **calibration_report(head, novelty, x_test[chosen], y_test[chosen]),
        "history": [asdict(step) for step in head.history_],
        "splits": {s: int(len(splits[s][2])) for s in splits},
    }
    record = BackboneRecord.from_dict(
        {
            **backbone.describe(),
            "runtime": choice.runtime if choice else None,
            "precision": choice.precision if choice else None,
        }
    )
    return save_run(
        config,
        index,
        record,
        backbone.preprocessing,
        head,
        novelty,
        metrics,
        {},
        skipped,
        timing,
        start,
        test=test,
        validation=(val_acc, int(len(y_val))),
        misclassified=misclassified,
    )


def save_run(
    config: RetrainConfig,
    index: ImageIndex,
    record: BackboneRecord,
    preprocessing: Any,
    head: SoftmaxHead,
    novelty: Any,
    metrics: dict[str, Any],
    extra_files: dict[str, bytes | str],
    skipped: Sequence[SkippedImage],
    timing: dict[str, float],
    start: float,
    *,
    test: Evaluation,
    validation: tuple[float | None, int],
    misclassified: tuple[Misclassified, ...],
    history_head: SoftmaxHead | None = None,
) -> RetrainResult:
    """What every retrain ends with, head-only or fine-tuned: the doctor's report when asked for, the run
    report, the bundle (written whole or not at all) and the result.  ``history_head`` is the head whose
    training history and divergence the result reports (a fine-tuned run's first head)."""
    data = DataRecord(str(index.root), config.testing_percentage, config.validation_percentage)
    metrics["data"] = data.to_dict()
    tensors, head_config = head.to_state()
    novelty_tensors, head_config["novelty"] = novelty.to_state()
    tensors.update(novelty_tensors)
    run_dir = Path(config.output_dir) if config.output_dir else default_run_dir()
    extra = dict(extra_files)
    if skipped:
        extra["skipped.csv"] = skipped_csv(skipped)
    # One measurement for metrics.json, the report and the command's "Total time" (writing them is not in it).
    timing["total_s"] = round(time.perf_counter() - start, 3)
    if config.doctor:
        doctor_json, metrics["doctor"] = run_doctor(config)
        extra["doctor.json"] = doctor_json
    if config.write_report:
        from .report import render_run_report

        extra["report.html"] = render_run_report(
            metrics=metrics,
            labels=index.labels,
            image_root=index.root,
            backbone=record.to_dict(),
            hyperparameters=config.hyperparameters(),
        )
    save_bundle(
        run_dir,
        labels=index.labels,
        backbone=record,
        preprocessing=preprocessing,
        head_tensors=tensors,
        head_config=head_config,
        hyperparameters=config.hyperparameters(),
        metrics=metrics,
        extra_files=extra,
        data=data,
        output_labels=config.output_labels,
    )
    trained = history_head or head
    return RetrainResult(
        run_dir,
        index.labels,
        test,
        validation[0],
        validation[1],
        timing,
        metrics["bottlenecks"],
        misclassified,
        tuple(trained.history_),
        tuple(skipped),
        bool(trained.diverged_),
        metrics,
    )


__all__ = [
    "RETRAIN_PY_RECIPE",
    "Misclassified",
    "RetrainConfig",
    "RetrainResult",
    "build_head",
    "find_misclassified",
    "retrain",
    "save_run",
    "split_bottlenecks",
]
