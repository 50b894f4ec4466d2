"""The images an export checks itself on, and the reference it is compared with.

:func:`find_check_images` finds the run's labelled test images (and training
images for int8 calibration) where the manifest says they were, or in a folder
given instead; :func:`predict` runs any runner over them in batches, and
:func:`compare` turns two sets of probabilities into agreement and accuracies.
Apart from :mod:`headstart.export` because the benchmarks and the TensorFlow
exports use them too.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .bundle import Bundle
from .data import ImageRecord, Preprocessing, index_image_dir
from .runtimes import Runner, RuntimeChoice

if TYPE_CHECKING:  # pragma: no cover
    import torch

log = logging.getLogger("headstart")

MAX_CHECK_IMAGES = 1000


@dataclass(frozen=True)
class CheckImages:
    """Decoded labelled images for the self-check and calibration (``None`` when the images are gone)."""

    image_dir: Path | None
    source: str
    test: tuple[ImageRecord, ...]
    training: tuple[ImageRecord, ...]
    note: str | None = None


def find_check_images(bundle: Bundle, image_dir: str | Path | None = None) -> CheckImages:
    """Test images: the run's own test split, or every image of an explicit labelled folder.

    Training images (int8 calibration) always come from the run's own folder, when it still exists.
    """
    data = bundle.data
    run = None
    note = "the run does not record its image folder"
    if data is not None and Path(data.image_dir).is_dir():
        run = index_image_dir(data.image_dir, data.validation_percentage, data.testing_percentage, labels=bundle.labels)
    elif data is not None:
        note = f"the run's images at {data.image_dir} are gone"
    training = run.split("training") if run else ()
    if image_dir is not None:
        index = index_image_dir(image_dir, 0, 100, labels=bundle.labels, require_training=False)
        return CheckImages(index.root, "--image_dir", index.split("testing"), training)
    if run is None:
        return CheckImages(None, "none", (), (), note)
    return CheckImages(run.root, "run test split", run.split("testing"), training)


def spread_records(records: Sequence[ImageRecord], limit: int, seed: int = 0) -> list[ImageRecord]:
    """At most ``limit`` records, a fixed random sample (sorted back into folder order)."""
    if len(records) <= limit:
        return list(records)
    chosen = np.random.default_rng(seed).choice(len(records), size=limit, replace=False)
    return [records[i] for i in sorted(chosen)]


def decode_images(
    records: Sequence[ImageRecord], prep: Preprocessing, *, progress: bool = False, desc: str = "Decoding"
) -> tuple[np.ndarray, list[ImageRecord]]:
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


def predict(
    runner: Runner, images: np.ndarray, batch_size: int = 32, *, progress: bool = False, desc: str = "Checking"
) -> np.ndarray:
    from .progress import Progress

    out = []
    with Progress(len(images), desc, unit="img", enabled=progress) as bar:
        for i in range(0, len(images), batch_size):
            out.append(runner(images[i : i + batch_size]))
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
    return {
        "agreement": float(np.mean(proba.argmax(1) == reference.argmax(1))),
        "accuracy": acc,
        "reference_accuracy": ref_acc,
        "accuracy_drop": round(100 * (ref_acc - acc), 4),
        "max_abs_diff": float(np.max(np.abs(proba - reference))),
    }
