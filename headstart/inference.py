"""``label`` and ``evaluate``: a trained model applied to images, through one :class:`~headstart.model.Classifier`.

Both accept a run directory or an exported model file.  ``label`` never
writes the bottleneck cache (labelling is not training data) unless asked;
``evaluate`` caches, like ``retrain``, because the same labelled folder is
usually evaluated again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .backbones import DEFAULT_BACKBONE
from .config import check_existing_dir
from .data import ImageRecord, SkippedImage, find_images, index_image_dir
from .metrics import Evaluation, Misclassified, find_misclassified
from .metrics import evaluate as evaluate_predictions
from .model import Prediction, load_model
from .model import top_k as top_labels


@dataclass(frozen=True)
class LabelResult:
    predictions: tuple[Prediction, ...]
    skipped: tuple[SkippedImage, ...]


def label(model: str | Path, inputs: Sequence[str | Path], *, top_k: int = 5, bottleneck_dir: str | Path | None = None,
          runtime: str = "auto", precision: str = "auto", weights: str | Path | None = None,
          use_cache: bool = False, progress: bool = True) -> LabelResult:
    """Top-k labels for each image with a retrained model (a run directory or an exported .onnx/.xml file)."""
    paths = find_images(inputs)
    with load_model(model, runtime=runtime, precision=precision, weights=weights, bottleneck_dir=bottleneck_dir,
                    use_cache=use_cache) as classifier:
        predictions, skipped = classifier.predict_files(paths, top_k=top_k, progress=progress)
    return LabelResult(tuple(predictions), tuple(skipped))


def label_imagenet(inputs: Sequence[str | Path], *, backbone: str = DEFAULT_BACKBONE, top_k: int = 5,
                   weights: str | Path | None = None, runtime: str = "auto", precision: str = "auto",
                   bottleneck_dir: str | Path | None = None, progress: bool = True) -> LabelResult:
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



def evaluate(model: str | Path, image_dir: str | Path, *, bottleneck_dir: str | Path | None = None,
             runtime: str = "auto", precision: str = "auto", weights: str | Path | None = None,
             progress: bool = True) -> tuple[Evaluation, tuple[Misclassified, ...], tuple[SkippedImage, ...]]:
    """The test metrics of a saved model on another labelled folder (folders matched to labels by name)."""
    check_existing_dir(image_dir, "--image_dir")
    with load_model(model, runtime=runtime, precision=precision, weights=weights, bottleneck_dir=bottleneck_dir,
                    use_cache=True) as classifier:
        labels = classifier.labels
        index = index_image_dir(image_dir, 0, 100, labels=labels, require_training=False)
        records, proba, failed = classifier.proba_for_records(index.records, progress=progress)
    y = np.array([labels.index(r.label) for r in records], dtype=np.int64)
    result = evaluate_predictions(y, proba, labels)
    wrong = find_misclassified(records, proba, labels)
    return result, wrong, tuple(index.skipped) + tuple(failed)


__all__ = ["LabelResult", "Misclassified", "label", "label_imagenet", "evaluate", "find_misclassified"]
