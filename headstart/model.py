"""A trained classifier, ready to use: one object for a run directory or an exported model.

:func:`load_model` opens either a run directory (the backbone on the fastest
runtime here, plus the trained head) or a file written by ``headstart export``
(one graph from pixels to probabilities, run without torch).  The object holds
its runner open, so labelling a thousand images loads the network once, and it
reads or writes the bottleneck cache only when asked (``use_cache=True``).
``label``, ``evaluate``, the export's self-check and the HTTP service all go
through it, so an image gets the same answer whichever way it is asked.

Nothing here imports torch at module level: an exported model runs with
ONNX Runtime or OpenVINO alone.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .data import DEFAULT_MAX_PIXELS, ImageRecord, Preprocessing, SkippedImage, load_image, sha256_file
from .errors import UsageError
from .runtimes import DEFAULT_BATCH_SIZE

NOVELTY_PREFIX = "novelty."  # head.safetensors tensors that belong to the novelty score, not the head

log = logging.getLogger("headstart")

Top = tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class Prediction:
    """One image's answer: the top labels with their probabilities, best first."""

    path: str | Path
    top: Top
    unknown: bool = False  # the out-of-distribution score is past the model's threshold
    ood_score: float | None = None

    @property
    def label(self) -> str:
        return self.top[0][0]

    def to_dict(self) -> dict[str, Any]:
        """``path`` and ``top``; ``unknown`` and ``ood_score`` too when the model scores novelty."""
        row: dict[str, Any] = {
            "path": str(self.path),
            "top": [{"label": lab, "score": round(float(s), 6)} for lab, s in self.top],
        }
        if self.ood_score is not None:
            row.update(unknown=bool(self.unknown), ood_score=round(float(self.ood_score), 6))
        return row


def top_k(proba: np.ndarray, labels: Sequence[str], k: int) -> list[Top]:
    """The ``k`` most probable ``(label, probability)`` pairs of each row; ties keep label order."""
    k = max(1, min(k, proba.shape[1]))
    order = np.argsort(-proba, axis=1, kind="stable")[:, :k]
    return [tuple((labels[j], float(row[j])) for j in idx) for row, idx in zip(proba, order)]


def as_network_input(image: np.ndarray, prep: Preprocessing) -> np.ndarray:
    """An RGB (or grey, or RGBA) uint8 array of any size -> the network's ``[S, S, 3]``, resized as files are."""
    from .data import resize_center_crop

    pixels = np.asarray(image)
    if pixels.dtype != np.uint8:
        raise UsageError(f"images must be uint8 arrays, got {pixels.dtype}", hint="convert with array.astype(np.uint8)")
    if pixels.ndim == 2:
        pixels = np.stack([pixels] * 3, axis=-1)
    if pixels.ndim != 3 or pixels.shape[2] not in (3, 4):
        raise UsageError(
            f"images must be [H, W, 3] RGB arrays, got shape {tuple(pixels.shape)}",
            hint="pass RGB pixels, or the encoded file's bytes",
        )
    pixels = np.ascontiguousarray(pixels[:, :, :3])
    if pixels.shape[:2] == (prep.input_size, prep.input_size):
        return pixels
    return resize_center_crop(pixels, prep)


def _version(*parts: object) -> str:
    return hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- the object


class Classifier:
    """A trained model held open: images in, calibrated class probabilities out.

    Build one with :func:`load_model`.  ``predict_batch`` is the primitive
    (uint8 ``[N, S, S, 3]`` -> float32 ``[N, classes]``, columns in ``labels``
    order); the other ``predict_*`` methods decode and batch for it.  It is
    safe to call from several threads: runs of the network are serialised.
    """

    kind = "model"

    def __init__(
        self,
        *,
        path: Path,
        labels: Sequence[str],
        preprocessing: Preprocessing,
        runtime: str,
        version: str,
        platform: str,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        self.path = Path(path)
        self.name = self.path.stem if self.path.suffix else self.path.name
        self.labels = tuple(labels)
        self.preprocessing = preprocessing
        self.runtime = runtime
        self.version = version
        self.platform = platform
        self.batch_size = batch_size
        self._lock = threading.Lock()

    # -- what subclasses provide
    threshold: float | None = None  # novelty score past which the answer is "unknown" (None: off)
    has_novelty = False  # whether _scores appends a novelty column after the probabilities

    def _scores(self, images: np.ndarray) -> np.ndarray:
        """``[N, classes]`` probabilities, plus a last column of novelty scores when ``has_novelty``."""
        raise NotImplementedError

    def _scores_for_records(
        self, records: Sequence[ImageRecord], progress: bool
    ) -> tuple[list[ImageRecord], np.ndarray, list[SkippedImage]]:
        """Scores of the readable records (decoded ahead in threads, run in batches)."""
        from .features import decode_ahead, default_workers, run_batches
        from .progress import Progress

        rows: dict[int, np.ndarray] = {}
        skipped: list[SkippedImage] = []
        paths = [r.path for r in records]
        with Progress(len(paths), "Labelling", unit="img", enabled=progress) as bar:

            def on_batch(positions: list[int], proba: np.ndarray) -> None:
                rows.update(zip(positions, proba))
                bar.update(len(positions))

            def on_skip(position: int, reason: str) -> None:
                skipped.append(SkippedImage(paths[position], reason))
                bar.update(1)

            items = decode_ahead(paths, self.preprocessing, self.batch_size, default_workers())
            run_batches(self._checked_scores, items, self.batch_size, on_batch, on_skip)
        kept = sorted(rows)
        width = len(self.labels) + int(self.has_novelty)
        scores = np.stack([rows[i] for i in kept]) if kept else np.zeros((0, width), np.float32)
        return [records[i] for i in kept], scores, skipped

    def _split(self, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        n = len(self.labels)
        return scores[:, :n], (scores[:, n] if self.has_novelty else None)

    # -- the public contract
    @property
    def input_size(self) -> int:
        return self.preprocessing.input_size

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "path": str(self.path),
            "labels": list(self.labels),
            "version": self.version,
            "runtime": self.runtime,
            "platform": self.platform,
            "preprocessing": self.preprocessing.to_dict(),
        }

    def decode(
        self, source: Path | bytes, *, name: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
    ) -> np.ndarray:
        """One encoded image (a path or its bytes) -> uint8 ``[S, S, 3]``; raises ImageError with a reason."""
        return load_image(source, self.preprocessing, max_pixels=max_pixels, name=name)

    def _checked_scores(self, images: np.ndarray) -> np.ndarray:
        size = self.input_size
        if images.ndim != 4 or images.shape[1:] != (size, size, 3) or images.dtype != np.uint8:
            raise UsageError(
                f"expected uint8 images of shape [N, {size}, {size}, 3], got {images.dtype} {tuple(images.shape)}",
                hint="decode them with Classifier.decode, or use predict_images",
            )
        if len(images) == 0:
            return np.zeros((0, len(self.labels) + int(self.has_novelty)), np.float32)
        with self._lock:
            return np.asarray(self._scores(np.ascontiguousarray(images)), dtype=np.float32)

    def score_batch(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """uint8 ``[N, S, S, 3]`` -> (calibrated probabilities ``[N, classes]``, novelty scores ``[N]`` or None)."""
        return self._split(self._checked_scores(images))

    def predict_batch(self, images: np.ndarray) -> np.ndarray:
        """uint8 ``[N, S, S, 3]`` -> calibrated probabilities ``[N, classes]`` in ``labels`` order."""
        return self.score_batch(images)[0]

    def is_unknown(self, ood: np.ndarray | None) -> np.ndarray | None:
        if ood is None:
            return None
        return ood > self.threshold if self.threshold is not None else np.zeros(len(ood), dtype=bool)

    def predictions(
        self, proba: np.ndarray, names: Sequence[str | Path], top: int = 5, ood: np.ndarray | None = None
    ) -> list[Prediction]:
        """Typed answers; with novelty scores, each also says whether it is "unknown"."""
        tops = top_k(proba, self.labels, top)
        unknown = self.is_unknown(ood)
        if ood is None or unknown is None:
            return [Prediction(name, t) for name, t in zip(names, tops)]
        return [Prediction(name, t, bool(u), float(o)) for name, t, u, o in zip(names, tops, unknown, ood)]

    def _inputs(self, images: Sequence[bytes | np.ndarray]) -> np.ndarray:
        arrays = [
            self.decode(bytes(item), name=f"image {i}")
            if isinstance(item, (bytes, bytearray, memoryview))
            else as_network_input(item, self.preprocessing)
            for i, item in enumerate(images)
        ]
        if not arrays:
            return np.zeros((0, self.input_size, self.input_size, 3), np.uint8)
        return np.stack(arrays)

    def _scores_of(self, images: Sequence[bytes | np.ndarray]) -> np.ndarray:
        x = self._inputs(images)
        return np.concatenate(
            [self._checked_scores(x[i : i + self.batch_size]) for i in range(0, max(1, len(x)), self.batch_size)]
        )

    def predict_proba(self, images: Sequence[bytes | np.ndarray]) -> np.ndarray:
        """Probabilities for encoded images (bytes) or RGB arrays of any size, in ``labels`` order."""
        return self._split(self._scores_of(images))[0]

    def predict_images(
        self, images: Sequence[bytes | np.ndarray], top_k: int = 5, names: Sequence[str] | None = None
    ) -> list[Prediction]:
        names = list(names) if names is not None else [str(i) for i in range(len(images))]
        proba, ood = self._split(self._scores_of(images))
        return self.predictions(proba, names, top_k, ood)

    def predict_files(
        self, paths: Sequence[str | Path], top_k: int = 5, progress: bool = False
    ) -> tuple[list[Prediction], list[SkippedImage]]:
        """Top-k for each readable file, in the order given; unreadable ones come back as skipped."""
        records, skipped = _records_for([Path(p) for p in paths], hashed=self._needs_hashes)
        if not records:
            return [], skipped
        kept, scores, failed = self._scores_for_records(records, progress)
        proba, ood = self._split(scores)
        return self.predictions(proba, [r.path for r in kept], top_k, ood), skipped + failed

    def score_records(
        self, records: Sequence[ImageRecord], progress: bool = False
    ) -> tuple[list[ImageRecord], np.ndarray, np.ndarray | None, list[SkippedImage]]:
        """For labelled records (``evaluate``): the readable ones, their probabilities, novelty scores, the skipped."""
        kept, scores, skipped = self._scores_for_records(records, progress)
        proba, ood = self._split(scores)
        return kept, proba, ood, skipped

    _needs_hashes = False

    def close(self) -> None:
        pass

    def __enter__(self) -> Classifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {len(self.labels)} classes on {self.runtime}>"


def _records_for(paths: Sequence[Path], hashed: bool) -> tuple[list[ImageRecord], list[SkippedImage]]:
    """Records for files given by the user; the path stays as typed (it is what they look for in the output)."""
    records, skipped = [], []
    for path in paths:
        try:
            digest = sha256_file(path) if hashed else ""
        except OSError as exc:
            skipped.append(SkippedImage(path, f"cannot read file ({exc.strerror or exc})"))
            continue
        records.append(ImageRecord(path=path, relpath=path.name, label="", split="testing", sha256=digest))
    return records, skipped


class ExportedClassifier(Classifier):
    """A file from ``headstart export``: one graph, ONNX Runtime / OpenVINO / TensorRT, no torch."""

    kind = "export"

    def __init__(
        self, path: str | Path, *, runtime: str = "auto", precision: str = "auto", threads: int | None = None
    ) -> None:
        from .deployed import DeployedModel

        self.deployed = DeployedModel(path, runtime=runtime, precision=precision, threads=threads)
        info = self.deployed.info
        fmt = info.model_format
        platform = {
            "onnx": f"{self.deployed.runtime}_onnx",
            "openvino": "openvino_ir",
            "tensorrt": "tensorrt_plan",
            "saved_model": "tensorflow_savedmodel",
        }.get(fmt, fmt)
        super().__init__(
            path=info.path,
            labels=info.labels,
            preprocessing=info.preprocessing,
            runtime=f"{self.deployed.runtime}-{self.deployed.precision}",
            version=_version(
                info.provenance.get("weights_fingerprint"), info.provenance.get("head_sha256"), fmt, info.precision
            ),
            platform=platform,
        )
        self.has_novelty = self.deployed.has_novelty
        self.threshold = self.deployed.threshold

    def _scores(self, images: np.ndarray) -> np.ndarray:
        return self.deployed.predict_scores(images)


def load_model(
    path: str | Path,
    *,
    runtime: str = "auto",
    precision: str = "auto",
    weights: str | Path | None = None,
    bottleneck_dir: str | Path | None = None,
    use_cache: bool = False,
    threads: int | None = None,
) -> Classifier:
    """Open a trained model: a run directory from ``headstart retrain`` or a file from ``headstart export``.

    ``runtime``/``precision`` choose where the network runs (``auto``: the
    fastest accurate one here, the training numerics for a run directory).
    ``use_cache`` reads and writes bottlenecks in ``bottleneck_dir`` (run
    directories only; useful when the same images are labelled again).
    """
    from .deployed import is_exported_model

    if is_exported_model(path):
        return ExportedClassifier(path, runtime=runtime, precision=precision, threads=threads)
    from .bundle import load_bundle
    from .run_model import RunClassifier  # here: an exported model needs none of a run directory's machinery

    return RunClassifier(
        load_bundle(path),
        runtime=runtime,
        precision=precision,
        weights=weights,
        bottleneck_dir=bottleneck_dir,
        use_cache=use_cache,
    )


__all__ = ["Classifier", "ExportedClassifier", "Prediction", "as_network_input", "load_model", "top_k"]
