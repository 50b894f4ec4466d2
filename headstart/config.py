"""One retrain run's configuration, checked as a whole before any work.

:class:`RetrainConfig` takes its defaults from :data:`headstart.settings.SETTINGS`
(every setting once: default, check, help), and :func:`check_config`
validates a whole configuration before any image is read, so a bad value
fails in a second with a one-line usage error (exit 2) instead of after every
bottleneck was computed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .data import Distortion
from .errors import UsageError
from .settings import HYPERPARAMETERS, SETTINGS, check_value


def _field(name: str) -> Any:
    return field(default=SETTINGS[name].default)


@dataclass(frozen=True)
class RetrainConfig:
    """Every knob of a retrain run (see :data:`SETTINGS` for what each does)."""

    image_dir: Path
    exclude_from: str | None = _field("exclude_from")
    doctor: bool = _field("doctor")
    output_dir: Path | None = _field("output_dir")
    output_labels: Path | None = _field("output_labels")
    bottleneck_dir: Path | None = _field("bottleneck_dir")
    backbone: str = _field("backbone")
    weights: Path | None = _field("weights")
    crop_pct: float = _field("crop_pct")
    runtime: str = _field("runtime")
    precision: str = _field("precision")
    how_many_training_steps: int = _field("how_many_training_steps")
    min_epochs: int = _field("min_epochs")
    learning_rate: float = _field("learning_rate")
    optimizer: str = _field("optimizer")
    train_batch_size: int = _field("train_batch_size")
    validation_batch_size: int = _field("validation_batch_size")
    test_batch_size: int = _field("test_batch_size")
    eval_step_interval: int = _field("eval_step_interval")
    testing_percentage: float = _field("testing_percentage")
    validation_percentage: float = _field("validation_percentage")
    hidden_units: int = _field("hidden_units")
    dropout: float = _field("dropout")
    weight_decay: float = _field("weight_decay")
    print_misclassified_test_images: bool = _field("print_misclassified_test_images")
    flip_left_right: bool = _field("flip_left_right")
    random_crop: float = _field("random_crop")
    random_scale: float = _field("random_scale")
    random_brightness: float = _field("random_brightness")
    distorted_copies: int = _field("distorted_copies")
    seed: int = _field("seed")
    fine_tune_blocks: int | str = _field("fine_tune_blocks")
    fine_tune_epochs: int = _field("fine_tune_epochs")
    fine_tune_learning_rate: float = _field("fine_tune_learning_rate")
    fine_tune_label_smoothing: float = _field("fine_tune_label_smoothing")
    early_stopping: bool = _field("early_stopping")
    label_smoothing: float = _field("label_smoothing")
    class_weights: str = _field("class_weights")
    unknown_accept: float = _field("unknown_accept")
    extraction_batch_size: int = _field("extraction_batch_size")
    decode: str = _field("decode")
    workers: int | None = _field("workers")
    ray: str | None = _field("ray")
    ray_actors: int | None = _field("ray_actors")
    ray_gpus_per_actor: float = _field("ray_gpus_per_actor")
    ray_cpus_per_actor: float | None = _field("ray_cpus_per_actor")
    max_memory: int | None = _field("max_memory")
    strict: bool = _field("strict")
    progress: bool = _field("progress")
    write_report: bool = _field("write_report")

    def hyperparameters(self) -> dict[str, Any]:
        params = {k: getattr(self, k) for k in HYPERPARAMETERS}
        if self.distortion().active:
            params.update({s.name: getattr(self, s.name) for s in SETTINGS.values() if s.group == "distortion"})
        if self.fine_tune_blocks:
            params.update({s.name: getattr(self, s.name) for s in SETTINGS.values() if s.group == "fine_tune"})
        return params

    def distortion(self, copy: int = 0) -> Distortion:
        return Distortion(self.flip_left_right, self.random_crop, self.random_scale, self.random_brightness, copy)

    def training_steps(self, n_train: int | None) -> int:
        """``how_many_training_steps``, or more when that many would not make ``min_epochs`` passes."""
        steps = self.how_many_training_steps
        if not self.min_epochs or not n_train:
            return steps
        per_epoch = 1 if self.train_batch_size == -1 else math.ceil(n_train / self.train_batch_size)
        return max(steps, self.min_epochs * per_epoch)

    def head_params(self, n_train: int | None = None) -> dict[str, Any]:
        """Keyword arguments of :class:`~headstart.head.SoftmaxHead` (its names, our values) for ``n_train`` images."""
        return {
            "hidden_units": self.hidden_units,
            "dropout": self.dropout,
            "optimizer": self.optimizer,
            "learning_rate": self.learning_rate,
            "train_batch_size": self.train_batch_size,
            "how_many_training_steps": self.training_steps(n_train),
            "weight_decay": self.weight_decay,
            "eval_step_interval": self.eval_step_interval,
            "validation_batch_size": self.validation_batch_size,
            "seed": self.seed,
            "early_stopping": self.early_stopping,
            "label_smoothing": self.label_smoothing,
            "sampling": "class" if self.class_weights == "balanced" else "image",
        }

    def extraction_params(self) -> dict[str, Any]:
        """Keyword arguments of :func:`~headstart.features.compute_bottlenecks` that this run sets."""
        return {
            "runtime": self.runtime,
            "precision": self.precision,
            "batch_size": self.extraction_batch_size,
            "workers": self.workers,
            "progress": self.progress,
            "decode": self.decode,
            "ray": self.ray_settings(),
        }

    def ray_settings(self) -> Any:
        """A :class:`headstart.ray_cluster.RaySettings` with ``--ray``, else None (extraction stays local)."""
        if self.ray is None:
            return None
        from .ray_cluster import RaySettings

        return RaySettings(self.ray, self.ray_actors, float(self.ray_gpus_per_actor), self.ray_cpus_per_actor)


CONFIG_FIELDS = tuple(f.name for f in fields(RetrainConfig))
assert set(CONFIG_FIELDS) == set(SETTINGS), "every RetrainConfig field needs a Setting"  # a programming error


def check_config(config: RetrainConfig, *, need_image_dir: bool = True) -> None:
    """Every setting of ``config``, checked before any work (one-line usage errors, exit 2)."""
    for name in CONFIG_FIELDS:
        if name != "image_dir":
            check_value(name, getattr(config, name))
    if config.validation_percentage + config.testing_percentage > 100:
        raise UsageError(
            f"--validation_percentage {config.validation_percentage} plus --testing_percentage "
            f"{config.testing_percentage} is over 100",
            hint="leave some images for training, e.g. 10 and 10",
        )
    if config.decode == "gpu":  # needs CUDA: say so before any image is read
        from .gpu_decode import require_gpu_decode
        from .runtimes import resolve_runtime

        require_gpu_decode(resolve_runtime(config.runtime, config.precision).runtime)
    if config.fine_tune_blocks and config.backbone.startswith("tfhub:"):  # before any image is read
        raise UsageError(
            "--fine_tune_blocks needs a PyTorch backbone; a TF Hub / SavedModel backbone trains the last layer only",
            hint="use --fine_tune_blocks 0, or a timm backbone (efficientnet_lite0)",
        )
    if config.ray is not None:  # a missing [ray] extra is said before any image is read
        from .ray_cluster import import_ray

        import_ray()
    if need_image_dir:
        check_existing_dir(config.image_dir, "--image_dir")
    if config.weights is not None and not Path(config.weights).expanduser().is_file():
        raise UsageError(
            f"weights file not found: {config.weights}", hint="pass the path of a .safetensors or .pth file"
        )


def check_existing_dir(path: Path | str | None, flag: str) -> None:
    """A folder the user typed must exist: a usage error (exit 2) everywhere, not a data error."""
    if path is None:
        raise UsageError(f"{flag} is required", hint=f"pass {flag} FOLDER")
    folder = Path(path).expanduser()
    if not folder.exists():
        raise UsageError(f"{flag}: no such folder: {folder}", hint="check the path")
    if not folder.is_dir():
        raise UsageError(
            f"{flag}: {folder} is not a folder", hint="pass the folder that holds one sub-folder per class"
        )


__all__ = ["CONFIG_FIELDS", "RetrainConfig", "check_config", "check_existing_dir"]
