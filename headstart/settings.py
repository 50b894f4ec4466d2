"""Every retrain setting once: its default, its check and its help text.

The command line builds its flags from :data:`SETTINGS`,
:class:`~headstart.config.RetrainConfig` takes its defaults from it, and
:func:`check_value` says what is wrong with one value in the words of its flag.
Names follow retrain.py's flags.  The table is apart from the configuration
object so that what reads only the table (the command line's flags, the
studio's form) needs nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .backbones import DEFAULT_BACKBONE
from .checks import is_int as _is_int
from .checks import is_real as _is_real
from .errors import UsageError
from .head_math import OPTIMIZERS
from .runtimes import BACKBONE_RUNTIMES, DECODE_MODES, DEFAULT_BATCH_SIZE, PRECISIONS

Check = Callable[[Any], "str | None"]  # None when the value is fine, else what is wrong with it


def _at_least(low: int) -> Check:
    return lambda v: None if _is_int(v) and v >= low else f"must be an integer of at least {low}"


def _positive_or_all(v: Any) -> str | None:
    return None if _is_int(v) and (v > 0 or v == -1) else "must be positive, or -1 for all"


def _positive_real(v: Any) -> str | None:
    return None if _is_real(v) and v > 0 else "must be a positive number"


def _non_negative_real(v: Any) -> str | None:
    return None if _is_real(v) and v >= 0 else "must be 0 or more"


def _percentage(v: Any) -> str | None:
    return None if _is_real(v) and 0 <= v <= 100 else "must be between 0 and 100"


def blocks_value(text: Any) -> Any:
    """``--fine_tune_blocks``: a whole number of stages or ``all`` (anything else is left for the check to name)."""
    if isinstance(text, str) and text.strip().isdigit():
        return int(text)
    return text.strip().lower() if isinstance(text, str) else text


def _blocks(v: Any) -> str | None:
    return None if (_is_int(v) and v >= 0) or v == "all" else "must be 0 (head only), a number of stages, or all"


_UNITS = {
    "": 1,
    "b": 1,
    "k": 1e3,
    "kb": 1e3,
    "kib": 2**10,
    "m": 1e6,
    "mb": 1e6,
    "mib": 2**20,
    "g": 1e9,
    "gb": 1e9,
    "gib": 2**30,
    "t": 1e12,
    "tb": 1e12,
    "tib": 2**40,
}


def memory_value(text: Any) -> Any:
    """``--max_memory``: bytes, or a number and a unit (``512MB``, ``8GiB``, ``2g``); else left for the check."""
    if not isinstance(text, str):
        return text
    import re

    found = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    if not found or found.group(2).lower() not in _UNITS:
        return text
    return int(float(found.group(1)) * _UNITS[found.group(2).lower()])


def _memory(v: Any) -> str | None:
    return None if _is_int(v) and v >= 2**20 else "must be a size of at least 1MiB, e.g. 512MB or 8GB"


def _ray_address(v: Any) -> str | None:
    from .ray_cluster import check_address

    return check_address(v)


def _fraction(low: float, high: float) -> Check:
    return lambda v: None if _is_real(v) and low <= v < high else f"must be in [{low:g}, {high:g})"


@dataclass(frozen=True)
class Setting:
    """One knob: the flag ``--name``, its type and default, what it does, and how to check it."""

    name: str
    kind: Callable[[Any], Any]  # a type, or a parser such as blocks_value
    default: Any
    help: str
    group: str  # data | output | backbone | head | distortion | fine_tune | run | scale
    check: Check | None = None
    choices: tuple[str, ...] | None = None
    hint: str | None = None

    def problem(self, value: Any) -> str | None:
        if value is None and (self.default is None or self.kind is Path):
            return None
        if self.choices is not None and value not in self.choices:
            return f"must be one of {', '.join(self.choices)}, got {value!r}"
        return self.check(value) if self.check else None


def _settings(*items: Setting) -> dict[str, Setting]:
    return {s.name: s for s in items}


# Head defaults were chosen by measurement (docs/PERFORMANCE.md, "Choosing the head's
# defaults"): they beat the retrain.py recipe's test accuracy in a quarter of the steps.
SETTINGS: dict[str, Setting] = _settings(
    Setting("image_dir", Path, None, "folder with one sub-folder of images per class", "data"),
    Setting("testing_percentage", float, 10.0, "percentage of images used as the test set", "data", _percentage),
    Setting(
        "validation_percentage", float, 10.0, "percentage of images used as the validation set", "data", _percentage
    ),
    Setting(
        "exclude_from",
        str,
        None,
        "train without the images a doctor.json flags: doctor.json, or "
        "doctor.json:kind,kind (label_issues, exact_duplicates, near_duplicates, leaks, outliers, image_issues)",
        "data",
        hint="write one with: headstart doctor --image_dir DIR --output_dir D",
    ),
    Setting(
        "doctor", bool, False, "also run the data doctor and put its summary in report.html and metrics.json", "run"
    ),
    Setting("output_dir", Path, None, "run directory to write (default: runs/<timestamp>)", "output"),
    Setting("output_labels", Path, None, "also write the labels file here (as retrain.py did)", "output"),
    Setting(
        "bottleneck_dir",
        Path,
        None,
        "where bottleneck vectors are cached (default: $HEADSTART_CACHE_DIR or ~/.cache/headstart)",
        "output",
    ),
    Setting(
        "backbone",
        str,
        DEFAULT_BACKBONE,
        "feature extractor: a name from 'headstart backbones' or any timm model",
        "backbone",
    ),
    Setting("weights", Path, None, "local weights file (.safetensors or .pth state dict) for the backbone", "backbone"),
    # The whole image, as retrain.py and make_image_classifier saw it: the pretrained
    # configs' centre crop (0.875) cuts off the edges of objects that fill the frame and
    # cost 1.4 points of test accuracy on Fashion-MNIST.
    Setting(
        "crop_pct",
        float,
        1.0,
        "centre crop before resizing; 1.0 keeps the whole image as retrain.py did, "
        "0.875 is timm's ImageNet evaluation crop",
        "backbone",
        lambda v: None if _is_real(v) and 0.1 <= v <= 1.0 else "must be between 0.1 and 1.0",
    ),
    Setting(
        "runtime",
        str,
        "auto",
        "where the backbone runs; auto picks the fastest accurate one here",
        "backbone",
        choices=("auto", *BACKBONE_RUNTIMES),
    ),
    Setting(
        "precision",
        str,
        "auto",
        "numeric precision of the backbone (auto: the runtime's best accurate one)",
        "backbone",
        choices=("auto", *PRECISIONS),
    ),
    Setting("how_many_training_steps", int, 1000, "training steps (retrain.py used 4000)", "head", _at_least(1)),
    # 1,000 steps of 100 are 40 passes over 3,000 images but 2 over 60,000, where the head
    # is far from done: 89.3 % on Fashion-MNIST's test split after 1,000 steps, 90.3 % after
    # 8,000 (docs/PERFORMANCE.md, "All 60,000 training images").
    Setting(
        "min_epochs",
        int,
        16,
        "train for at least this many passes over the training images, more steps "
        "than --how_many_training_steps on a big folder (0: exactly that many steps)",
        "head",
        _at_least(0),
    ),
    Setting(
        "learning_rate",
        float,
        0.001,
        "learning rate (retrain.py used 0.01 with sgd)",
        "head",
        _positive_real,
        hint="the default is 0.001 (adam); retrain.py used 0.01 with sgd",
    ),
    Setting("optimizer", str, "adam", "sgd (retrain.py), momentum or adam", "head", choices=OPTIMIZERS),
    Setting("train_batch_size", int, 100, "images per training step, -1 for all", "head", _positive_or_all),
    Setting(
        "validation_batch_size", int, 100, "validation images per evaluation, -1 for all", "head", _positive_or_all
    ),
    Setting("test_batch_size", int, -1, "test images for the final evaluation, -1 for all", "head", _positive_or_all),
    Setting("eval_step_interval", int, 100, "measure and log progress every N steps", "head", _at_least(1)),
    Setting(
        "hidden_units",
        int,
        0,
        "add one hidden ReLU layer of this size before the softmax (0: none)",
        "head",
        _at_least(0),
    ),
    Setting("dropout", float, 0.0, "dropout rate on the hidden layer's output", "head", _fraction(0.0, 1.0)),
    Setting("weight_decay", float, 0.0, "L2 penalty on the weights", "head", _non_negative_real),
    Setting("seed", int, 0, "random seed", "head", lambda v: None if _is_int(v) and v >= 0 else "must be 0 or more"),
    # Measured on the demo data (docs/PERFORMANCE.md, "Choosing the head's defaults"): validation
    # loss bottoms out at about 400 of the 1,000 steps, and keeping those weights scores higher.
    Setting(
        "early_stopping",
        bool,
        True,
        "keep the weights where the validation loss was lowest and stop when it "
        "stops improving (--no_early_stopping: retrain.py's last weights)",
        "head",
    ),
    Setting(
        "label_smoothing",
        float,
        0.1,
        "train towards (1 - s) * one-hot + s / classes (0: retrain.py)",
        "head",
        _fraction(0.0, 1.0),
    ),
    Setting(
        "class_weights",
        str,
        "balanced",
        "balanced: every class drawn equally often per batch, as retrain.py "
        "drew them; none: images drawn uniformly, so classes weigh as much as the folder holds them",
        "head",
        choices=("balanced", "none"),
    ),
    Setting(
        "unknown_accept",
        float,
        0.95,
        "share of in-distribution (validation) images the 'unknown' threshold "
        "accepts; 0 switches the unknown answer off",
        "head",
        _fraction(0.0, 1.0 + 1e-9),
    ),
    Setting("flip_left_right", bool, False, "randomly mirror training images horizontally", "distortion"),
    Setting("random_crop", float, 0.0, "percent margin to crop training images at random", "distortion", _percentage),
    Setting("random_scale", float, 0.0, "percent to randomly enlarge training images by", "distortion", _percentage),
    Setting(
        "random_brightness",
        float,
        0.0,
        "percent to randomly brighten or darken training images by",
        "distortion",
        _percentage,
    ),
    Setting(
        "distorted_copies",
        int,
        4,
        "distorted copies of each training image when a distortion is on (each computed once and cached)",
        "distortion",
        _at_least(1),
    ),
    # Fine-tuning (headstart.finetune): defaults measured in docs/PERFORMANCE.md, "Fine-tuning the top stages".
    Setting(
        "fine_tune_blocks",
        blocks_value,
        0,
        "also train the top N stages of the backbone from their cached input "
        "maps (0: the last layer only; all: the whole network, from images)",
        "fine_tune",
        _blocks,
    ),
    Setting(
        "fine_tune_epochs",
        int,
        4,
        "passes over the training images when fine-tuning (early stopping on validation loss keeps the best)",
        "fine_tune",
        _at_least(1),
    ),
    Setting(
        "fine_tune_learning_rate",
        float,
        0.001,
        "peak AdamW learning rate of the classifier when fine-tuning; the pretrained stages learn at a tenth of it",
        "fine_tune",
        _positive_real,
    ),
    Setting(
        "fine_tune_label_smoothing", float, 0.1, "label smoothing when fine-tuning", "fine_tune", _fraction(0.0, 1.0)
    ),
    Setting("print_misclassified_test_images", bool, False, "list the test images the model gets wrong", "run"),
    Setting("extraction_batch_size", int, DEFAULT_BATCH_SIZE, "images per network call", "run", _at_least(1)),
    Setting(
        "decode",
        str,
        "auto",
        "how images are decoded: threads, worker processes, or on the GPU with nvJPEG "
        "(auto: threads on CPUs, processes next to a GPU)",
        "run",
        choices=DECODE_MODES,
    ),
    Setting("workers", int, None, "image decoding threads (default: one per core)", "run", _at_least(1)),
    # Scale-out (headstart.distributed, headstart.stream_head; docs/SCALE.md).
    Setting(
        "ray",
        str,
        None,
        "compute bottlenecks on a Ray cluster: auto (the running one), local (start one here) or ray://HOST:10001",
        "scale",
        _ray_address,
        hint="e.g. --ray auto; see docs/SCALE.md",
    ),
    Setting(
        "ray_actors",
        int,
        None,
        "backbone actors in the Ray pool (default: as many as the cluster holds: "
        "one per node, or per --ray_cpus_per_actor cores, or per --ray_gpus_per_actor GPUs)",
        "scale",
        _at_least(1),
    ),
    Setting(
        "ray_gpus_per_actor",
        float,
        0.0,
        "GPUs each Ray actor holds (0: CPU actors on OpenVINO or ONNX Runtime; 1: one GPU each, CUDA)",
        "scale",
        _non_negative_real,
    ),
    Setting(
        "ray_cpus_per_actor",
        float,
        None,
        "CPU cores each Ray actor holds and runs the network on (default: "
        "a whole node per CPU actor, one core per GPU actor)",
        "scale",
        _positive_real,
    ),
    Setting(
        "max_memory",
        memory_value,
        None,
        "train the head by streaming vectors from disk when they would "
        "need more memory than this (default: half of this machine's RAM)",
        "scale",
        _memory,
    ),
    Setting("strict", bool, False, "fail instead of skipping unusable images", "run"),
    Setting("progress", bool, True, "show progress bars", "run"),
    Setting("write_report", bool, True, "write report.html", "run"),
)

# Settings recorded in the manifest as the model's hyper-parameters.
HYPERPARAMETERS = tuple(s.name for s in SETTINGS.values() if s.group == "head") + (
    "testing_percentage",
    "validation_percentage",
)
# What a sweep may vary: the head's knobs that change what is learned.
SWEEPABLE = (
    "learning_rate",
    "train_batch_size",
    "how_many_training_steps",
    "optimizer",
    "hidden_units",
    "dropout",
    "weight_decay",
)
# Experiments (sweep, curve, compare) look for the step where validation accuracy
# stopped improving, so they measure it more often than retrain logs it.
EXPERIMENT_EVAL_STEP_INTERVAL = 10
RETRAIN_PY_RECIPE = {
    "optimizer": "sgd",
    "learning_rate": 0.01,
    "train_batch_size": 100,
    "how_many_training_steps": 4000,
    "min_epochs": 0,
    "early_stopping": False,
    "label_smoothing": 0.0,
}


def default(name: str) -> Any:
    return SETTINGS[name].default


def check_value(name: str, value: Any) -> None:
    """Raise a usage error naming the flag when ``value`` is not valid for setting ``name``."""
    setting = SETTINGS.get(name)
    if setting is None:
        raise UsageError(f"unknown setting {name!r}", hint=f"use one of {', '.join(SETTINGS)}")
    problem = setting.problem(value)
    if problem:
        shown = "" if "got" in problem else f", got {value!r}"
        raise UsageError(
            f"--{name} {problem}{shown}",
            hint=setting.hint or f"the default is {setting.default!r}: --{name} {setting.default}",
        )


__all__ = [
    "EXPERIMENT_EVAL_STEP_INTERVAL",
    "HYPERPARAMETERS",
    "RETRAIN_PY_RECIPE",
    "SETTINGS",
    "SWEEPABLE",
    "Setting",
    "blocks_value",
    "check_value",
    "default",
    "memory_value",
]
