"""``label`` and ``evaluate``: a trained model applied to images, through one :class:`~headstart.model.Classifier`.

Both accept a run directory or an exported model file.  ``label`` never
writes the bottleneck cache (labelling is not training data) unless asked;
``evaluate`` caches, like ``retrain``, because the same labelled folder is
usually evaluated again.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .backbones import DEFAULT_BACKBONE
from .config import check_existing_dir
from .data import ImageRecord, SkippedImage, find_images, index_image_dir
from .errors import ModelError, UsageError
from .metrics import Evaluation, Misclassified, find_misclassified
from .metrics import evaluate as evaluate_predictions
from .model import Classifier, Prediction, load_model
from .model import top_k as top_labels


@dataclass(frozen=True)
class LabelResult:
    predictions: tuple[Prediction, ...]
    skipped: tuple[SkippedImage, ...]


def label(
    model: str | Path,
    inputs: Sequence[str | Path],
    *,
    top_k: int = 5,
    bottleneck_dir: str | Path | None = None,
    runtime: str = "auto",
    precision: str = "auto",
    weights: str | Path | None = None,
    use_cache: bool = False,
    progress: bool = True,
) -> LabelResult:
    """Top-k labels for each image with a retrained model (a run directory or an exported .onnx/.xml file)."""
    paths = find_images(inputs)
    with load_model(
        model, runtime=runtime, precision=precision, weights=weights, bottleneck_dir=bottleneck_dir, use_cache=use_cache
    ) as classifier:
        predictions, skipped = classifier.predict_files(paths, top_k=top_k, progress=progress)
    return LabelResult(tuple(predictions), tuple(skipped))


def label_imagenet(
    inputs: Sequence[str | Path],
    *,
    backbone: str = DEFAULT_BACKBONE,
    top_k: int = 5,
    weights: str | Path | None = None,
    runtime: str = "auto",
    precision: str = "auto",
    bottleneck_dir: str | Path | None = None,
    progress: bool = True,
) -> LabelResult:
    """Top-k ImageNet classes from the backbone's own classifier (the TF Hub tutorial's first step)."""
    from .backbones import resolve_backbone
    from .cache import models_dir
    from .features import decode_ahead, default_workers, run_batches
    from .networks import imagenet_labels
    from .runtimes import DEFAULT_BATCH_SIZE, create_runner, resolve_runtime

    resolved = resolve_backbone(backbone, weights)
    choice = resolve_runtime(runtime, precision)
    paths = find_images(inputs)
    runner = create_runner(resolved, choice, models_dir(bottleneck_dir), imagenet=True)
    names = imagenet_labels()
    found: dict[int, Prediction] = {}
    skipped: list[SkippedImage] = []

    def on_batch(positions: list[int], proba: np.ndarray) -> None:
        for position, top in zip(positions, top_labels(proba, names, top_k)):
            found[position] = Prediction(paths[position], top)

    def on_skip(position: int, reason: str) -> None:
        skipped.append(SkippedImage(paths[position], reason))

    items = decode_ahead(paths, resolved.preprocessing, DEFAULT_BATCH_SIZE, default_workers())
    run_batches(runner, items, DEFAULT_BATCH_SIZE, on_batch, on_skip)
    return LabelResult(tuple(found[p] for p in sorted(found)), tuple(skipped))


@dataclass(frozen=True)
class UnknownShare:
    """How often the model answered "unknown": on labelled images (should be rare) or on novel ones."""

    n: int
    unknown: int
    threshold: float | None

    @property
    def rejected(self) -> float:
        return self.unknown / self.n if self.n else 0.0

    @property
    def accepted(self) -> float:
        return 1.0 - self.rejected

    def to_dict(self) -> dict[str, float | int | None]:
        return {
            "n": self.n,
            "unknown": self.unknown,
            "accepted": round(self.accepted, 6),
            "rejected": round(self.rejected, 6),
            "threshold": self.threshold,
        }


@dataclass(frozen=True)
class EvaluateResult:
    """``evaluate``'s answer; unpacks as ``(evaluation, misclassified, skipped)`` as it always has."""

    evaluation: Evaluation
    misclassified: tuple[Misclassified, ...]
    skipped: tuple[SkippedImage, ...]
    unknown: UnknownShare | None  # the share of these labelled images answered "unknown"

    def __iter__(self) -> Iterator[Any]:  # tuple-style unpacking
        return iter((self.evaluation, self.misclassified, self.skipped))


def _share(classifier: Classifier, ood: np.ndarray | None) -> UnknownShare | None:
    flags = classifier.is_unknown(ood)
    if flags is None:
        return None
    return UnknownShare(int(len(flags)), int(flags.sum()), classifier.threshold)


def fill_on_ray(
    classifier: Classifier, records: Sequence[ImageRecord], bottleneck_dir: str | Path | None, ray: Any, progress: bool
) -> None:
    """Compute the missing bottlenecks on a Ray cluster first (``--ray``); the model then finds them cached."""
    from .run_model import RunClassifier

    if not isinstance(classifier, RunClassifier):
        raise UsageError(
            "--ray needs a run directory: an exported model file runs on this machine only",
            hint="pass the run directory written by 'headstart retrain' as --model",
        )
    from .cache import BottleneckCache
    from .distributed import fill_cache_on_ray

    with BottleneckCache(bottleneck_dir) as cache:
        fill_cache_on_ray(records, classifier.backbone, cache, ray, runtime=classifier.choice, progress=progress)


def _hashed_records(paths: Sequence[Path]) -> list[ImageRecord]:
    """Records for loose files; an unreadable one is left to the local pass, which says why it is skipped."""
    from .data import sha256_file

    records = []
    for path in paths:
        try:
            records.append(ImageRecord(path, path.name, "", "testing", sha256_file(path)))
        except OSError:
            continue
    return records


def evaluate(
    model: str | Path,
    image_dir: str | Path,
    *,
    bottleneck_dir: str | Path | None = None,
    runtime: str = "auto",
    precision: str = "auto",
    weights: str | Path | None = None,
    progress: bool = True,
    ray: Any = None,
) -> EvaluateResult:
    """The test metrics of a saved model on another labelled folder (folders matched to labels by name).

    ``ray`` (a :class:`headstart.ray_cluster.RaySettings`) computes the bottlenecks on a Ray cluster.
    """
    check_existing_dir(image_dir, "--image_dir")
    with load_model(
        model, runtime=runtime, precision=precision, weights=weights, bottleneck_dir=bottleneck_dir, use_cache=True
    ) as classifier:
        labels = classifier.labels
        index = index_image_dir(image_dir, 0, 100, labels=labels, require_training=False)
        if ray is not None:
            fill_on_ray(classifier, index.records, bottleneck_dir, ray, progress)
        records, proba, ood, failed = classifier.score_records(index.records, progress=progress)
        unknown = _share(classifier, ood)
    y = np.array([labels.index(r.label) for r in records], dtype=np.int64)
    result = evaluate_predictions(y, proba, labels)
    wrong = find_misclassified(records, proba, labels)
    return EvaluateResult(result, wrong, tuple(index.skipped) + tuple(failed), unknown)


def evaluate_unknown(
    model: str | Path,
    unknown_dir: str | Path,
    *,
    bottleneck_dir: str | Path | None = None,
    runtime: str = "auto",
    precision: str = "auto",
    weights: str | Path | None = None,
    progress: bool = True,
    ray: Any = None,
) -> tuple[UnknownShare, tuple[SkippedImage, ...]]:
    """How many images of none of the model's classes (any folder of images) it rejects as "unknown"."""
    check_existing_dir(unknown_dir, "--unknown_dir")
    paths = find_images([unknown_dir])
    with load_model(
        model, runtime=runtime, precision=precision, weights=weights, bottleneck_dir=bottleneck_dir, use_cache=True
    ) as classifier:
        if ray is not None:
            fill_on_ray(classifier, _hashed_records(paths), bottleneck_dir, ray, progress)
        predictions, skipped = classifier.predict_files(paths, top_k=1, progress=progress)
        if not classifier.has_novelty:
            raise ModelError(
                f"{model} has no novelty score, so it never answers 'unknown'",
                hint="retrain it with this version of headstart",
            )
        share = UnknownShare(len(predictions), sum(p.unknown for p in predictions), classifier.threshold)
    return share, tuple(skipped)


__all__ = [
    "EvaluateResult",
    "LabelResult",
    "Misclassified",
    "UnknownShare",
    "evaluate",
    "evaluate_unknown",
    "find_misclassified",
    "label",
    "label_imagenet",
]
