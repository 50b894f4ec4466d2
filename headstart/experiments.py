"""Experiments that answer "what does this knob do?": sweeps and learning curves, and their shared steps.

They all rest on one fact: once a folder's bottlenecks are cached, training a
new last layer takes a fraction of a second.  So every experiment indexes and
splits the folder once, reads (or computes, once) the bottlenecks, and then
trains as many heads as it needs from memory, always scoring them on the same
test split that ``retrain`` uses.  Results are plain rows (one ``dict`` per cell,
point or backbone, keys named after the command-line flags) held in frozen
dataclasses, so the CLI can print them as tables, JSON or CSV and the report
module can plot them.  Backbone comparison, which also builds and times
networks, is :mod:`headstart.backbone_comparison`; it uses the shared steps here.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .backbones import Backbone, resolve_backbone
from .cache import BottleneckCache
from .config import RetrainConfig, check_config
from .data import ImageRecord
from .errors import UsageError
from .features import compute_bottlenecks
from .head import SoftmaxHead
from .metrics import Evaluation, evaluate
from .runtimes import RuntimeChoice
from .settings import EXPERIMENT_EVAL_STEP_INTERVAL, SETTINGS, SWEEPABLE
from .train import build_head, split_bottlenecks

log = logging.getLogger("headstart")

# A sweep's knobs, and each one's type, come from headstart.config (SWEEPABLE, SETTINGS).


@dataclass(frozen=True)
class FeatureSet:
    """A folder's bottlenecks, split as ``retrain`` splits it, ready to train heads on."""

    image_dir: Path
    labels: tuple[str, ...]
    backbone: Backbone
    runtime: RuntimeChoice | None
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    test_records: tuple[ImageRecord, ...]
    computed: int
    cached: int
    skipped: int
    bottleneck_s: float

    @property
    def n_features(self) -> int:
        return int(self.x_train.shape[1])


@dataclass(frozen=True)
class SweepResult:
    """One row per grid cell (averaged over repeats); ``swept`` names the flags that varied."""

    rows: tuple[dict[str, Any], ...]
    swept: tuple[str, ...]
    repeats: int
    features: dict[str, Any]
    seconds: float


@dataclass(frozen=True)
class CurveResult:
    """One row per training-set size: accuracy on the fixed test split, mean and spread over repeats."""

    rows: tuple[dict[str, Any], ...]
    repeats: int
    features: dict[str, Any]
    seconds: float


# ---------------------------------------------------------------- shared steps


def training_config(image_dir: str | Path, **overrides: Any) -> RetrainConfig:
    """A RetrainConfig for experiments: ``retrain``'s defaults, except that validation
    accuracy is measured on the whole validation set (so "the step where it stopped
    improving" is not sampling noise)."""
    overrides.setdefault("validation_batch_size", -1)
    overrides.setdefault("eval_step_interval", EXPERIMENT_EVAL_STEP_INTERVAL)
    known = set(RetrainConfig.__dataclass_fields__)
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise UsageError(f"unknown training setting(s): {', '.join(unknown)}")
    return RetrainConfig(image_dir=Path(image_dir), **overrides)


def load_features(config: RetrainConfig) -> FeatureSet:
    """Index, split and turn ``config.image_dir`` into bottlenecks (cached ones are only read)."""
    from .data import index_image_dir

    start = time.perf_counter()
    index = index_image_dir(config.image_dir, config.validation_percentage, config.testing_percentage)
    backbone = resolve_backbone(config.backbone, config.weights, crop_pct=config.crop_pct)
    with BottleneckCache(config.bottleneck_dir) as cache:
        bottlenecks = compute_bottlenecks(
            index.records,
            backbone,
            cache,
            runtime=config.runtime,
            precision=config.precision,
            batch_size=config.extraction_batch_size,
            workers=config.workers,
            progress=config.progress,
        )
    parts = split_bottlenecks(index.labels, bottlenecks)
    return FeatureSet(
        image_dir=index.root,
        labels=index.labels,
        backbone=backbone,
        runtime=bottlenecks.runtime,
        x_train=parts["training"][1],
        y_train=parts["training"][2],
        x_val=parts["validation"][1],
        y_val=parts["validation"][2],
        x_test=parts["testing"][1],
        y_test=parts["testing"][2],
        test_records=parts["testing"][0],
        computed=bottlenecks.computed,
        cached=bottlenecks.cached,
        skipped=len(index.skipped) + len(bottlenecks.skipped),
        bottleneck_s=time.perf_counter() - start,
    )


def describe_features(features: FeatureSet) -> dict[str, Any]:
    """Provenance of a feature set, for JSON output and reports."""
    choice = features.runtime
    return {
        "image_dir": str(features.image_dir),
        "backbone": features.backbone.name,
        "runtime": choice.key if choice else None,
        "labels": list(features.labels),
        "n_features": features.n_features,
        "training": int(len(features.y_train)),
        "validation": int(len(features.y_val)),
        "testing": int(len(features.y_test)),
        "bottlenecks_computed": features.computed,
        "bottlenecks_cached": features.cached,
        "skipped": features.skipped,
        "bottleneck_s": round(features.bottleneck_s, 3),
    }


@dataclass(frozen=True)
class _Fit:
    """What one trained head scored."""

    test: Evaluation
    validation_accuracy: float | None
    cross_entropy: float | None
    best_step: int | None
    train_s: float
    diverged: bool
    steps_run: int


def _fit_and_score(
    config: RetrainConfig, features: FeatureSet, x_train: np.ndarray, y_train: np.ndarray, with_validation: bool = True
) -> _Fit:
    head: SoftmaxHead = build_head(config, len(features.labels))
    use_val = with_validation and len(features.y_val) > 0
    start = time.perf_counter()
    head.fit(x_train, y_train, features.x_val if use_val else None, features.y_val if use_val else None)
    train_s = time.perf_counter() - start
    test = evaluate(features.y_test, head.predict_proba(features.x_test), features.labels)
    val_acc = float(np.mean(head.predict(features.x_val) == features.y_val)) if len(features.y_val) else None
    final = head.history_[-1] if head.history_ else None
    cross_entropy = final.cross_entropy if final is not None and math.isfinite(final.cross_entropy) else None
    return _Fit(
        test,
        val_acc,
        cross_entropy,
        best_validation_step(head.history_),
        train_s,
        bool(head.diverged_),
        int(head.n_steps_run_),
    )


def best_validation_step(history: Sequence[Any]) -> int | None:
    """The step at which validation accuracy stopped improving: the first step that reached its best value."""
    best_step, best = None, -1.0
    for row in history:
        acc = row.validation_accuracy
        if acc is not None and math.isfinite(row.cross_entropy) and acc > best:
            best_step, best = row.step, acc
    return best_step


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(kept)) if kept else None


def _std(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.std(kept)) if kept else None


def _r(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(float(value), digits)


# ---------------------------------------------------------------- sweep


def check_grid(grid: Mapping[str, Sequence[Any]]) -> dict[str, list[Any]]:
    """Validate a grid: known flag names, non-empty value lists, values of the flag's type."""
    out: dict[str, list[Any]] = {}
    for name, values in grid.items():
        if name not in SWEEPABLE:
            raise UsageError(f"cannot sweep {name!r}", hint=f"sweepable: {', '.join(SWEEPABLE)}")
        values = list(values) if isinstance(values, (list, tuple)) else [values]
        if not values:
            raise UsageError(f"--{name}: give at least one value")
        try:
            out[name] = [SETTINGS[name].kind(v) for v in values]
        except (TypeError, ValueError) as exc:
            raise UsageError(f"--{name}: {exc}") from exc
    return out


def sweep(
    image_dir: str | Path,
    grid: Mapping[str, Sequence[Any]],
    *,
    repeats: int = 1,
    features: FeatureSet | None = None,
    **settings: Any,
) -> SweepResult:
    """Train one head per cell of ``grid`` (flag name -> values) and ``repeats`` seeds, on cached bottlenecks.

    ``settings`` are other :class:`~headstart.config.RetrainConfig` fields
    (backbone, bottleneck_dir, runtime, seed ...).  Bottlenecks are computed once
    and shared by every cell.  A cell whose training diverged is kept, marked
    ``diverged``: its scores are those of the last finite weights.
    """
    start = time.perf_counter()
    if repeats < 1:
        raise UsageError("--repeats must be at least 1")
    grid = check_grid(grid)
    base = training_config(image_dir, **settings)
    for name, values in grid.items():  # fail on a bad value before any network runs
        for value in values:
            _check_value(base, name, value)
    features = features or load_features(base)
    swept = tuple(name for name, values in grid.items() if len(values) > 1)
    names = list(grid)
    cells = list(itertools.product(*(grid[n] for n in names)))
    log.info("sweep: %d cells x %d repeats on %d training bottlenecks", len(cells), repeats, len(features.y_train))
    rows = []
    for number, cell_values in enumerate(cells, 1):
        cell = dict(zip(names, cell_values))
        fits = [
            _fit_and_score(replace(base, **cell, seed=base.seed + r), features, features.x_train, features.y_train)
            for r in range(repeats)
        ]
        row: dict[str, Any] = {k: getattr(base, k) for k in SWEEPABLE}
        row.update(cell)
        row.update(_summarise(fits))
        rows.append(row)
        log.info(
            "cell %d/%d %s: test accuracy %.3f%s",
            number,
            len(cells),
            ", ".join(f"{k}={v}" for k, v in cell.items()),
            row["test_accuracy"],
            " (diverged)" if row["diverged"] else "",
        )
    return SweepResult(tuple(rows), swept, repeats, describe_features(features), time.perf_counter() - start)


def _check_value(base: RetrainConfig, name: str, value: Any) -> None:
    check_config(replace(base, **{name: value}))


def _summarise(fits: Sequence[_Fit]) -> dict[str, Any]:
    steps = [f.best_step for f in fits if f.best_step is not None]
    return {
        "test_accuracy": _r(_mean([f.test.accuracy for f in fits])),
        "test_accuracy_std": _r(_std([f.test.accuracy for f in fits])),
        "validation_accuracy": _r(_mean([f.validation_accuracy for f in fits])),
        "macro_precision": _r(_mean([f.test.macro_precision for f in fits])),
        "macro_recall": _r(_mean([f.test.macro_recall for f in fits])),
        "macro_f1": _r(_mean([f.test.macro_f1 for f in fits])),
        "cross_entropy": _r(_mean([f.cross_entropy for f in fits])),
        "test_cross_entropy": _r(_mean([f.test.cross_entropy for f in fits])),
        "train_s": _r(_mean([f.train_s for f in fits])),
        "best_step": int(round(float(np.median(steps)))) if steps else None,
        "diverged": sum(f.diverged for f in fits) > 0,
        "diverged_repeats": int(sum(f.diverged for f in fits)),
        "repeats": len(fits),
        "n_test": int(fits[0].test.n),
    }


# ---------------------------------------------------------------- learning curve


def parse_sizes(values: Sequence[int | str]) -> list[int | str]:
    """Images per class: positive integers or ``"all"`` (the whole training split)."""
    out: list[int | str] = []
    for value in values:
        text = str(value).strip().lower()
        if text == "all":
            out.append("all")
            continue
        try:
            n = int(text)
        except ValueError:
            raise UsageError(f"--images_per_class: {value!r} is not a whole number or 'all'") from None
        if n < 1:
            raise UsageError(f"--images_per_class: {n} is below 1")
        out.append(n)
    if not out:
        raise UsageError("--images_per_class: give at least one value", hint="e.g. 1,2,5,10,20,50,100,all")
    return out


def sample_per_class(y: np.ndarray, n: int | str, seed: int) -> np.ndarray:
    """Row indices of ``n`` random training images per class (all of a class if it has fewer)."""
    if n == "all":
        return np.arange(len(y))
    rng = np.random.default_rng(seed)
    picked = [rng.permutation(np.flatnonzero(y == c))[: int(n)] for c in np.unique(y)]
    return np.sort(np.concatenate(picked))


def curve(
    image_dir: str | Path,
    images_per_class: Sequence[int | str],
    *,
    repeats: int = 5,
    features: FeatureSet | None = None,
    **settings: Any,
) -> CurveResult:
    """Test accuracy against training images per class, with the spread over ``repeats`` random samples.

    The test split stays fixed (retrain's hash split), so the points differ only in
    how much the head was shown.  The validation split is not used for training.
    """
    start = time.perf_counter()
    if repeats < 1:
        raise UsageError("--repeats must be at least 1")
    sizes = parse_sizes(images_per_class)
    base = training_config(image_dir, **settings)
    check_config(base)
    features = features or load_features(base)
    per_class_max = int(np.bincount(features.y_train).max())
    rows = []
    for n in sizes:
        accs, precisions, counts = [], [], []
        for r in range(repeats):
            seed = base.seed + r
            rows_idx = sample_per_class(features.y_train, n, seed=10_000 + seed)
            fit = _fit_and_score(
                replace(base, seed=seed),
                features,
                features.x_train[rows_idx],
                features.y_train[rows_idx],
                with_validation=False,
            )
            accs.append(fit.test.accuracy)
            precisions.append(fit.test.macro_precision)
            counts.append(len(rows_idx))
        n_classes = len(features.labels)
        rows.append(
            {
                "images_per_class": n,
                "accuracy_mean": _r(float(np.mean(accs))),
                "accuracy_std": _r(float(np.std(accs))),
                "accuracy_min": _r(float(np.min(accs))),
                "accuracy_max": _r(float(np.max(accs))),
                "macro_precision_mean": _r(float(np.mean(precisions))),
                "n_train": int(round(float(np.mean(counts)))),
                "train_images_per_class": round(float(np.mean(counts)) / n_classes, 1),
                "n_test": int(len(features.y_test)),
                "repeats": repeats,
            }
        )
        log.info("%s images per class: accuracy %.3f ± %.3f", n, rows[-1]["accuracy_mean"], rows[-1]["accuracy_std"])
        if n != "all" and int(n) > per_class_max:
            log.warning("asked for %d images per class; the largest class has %d training images", n, per_class_max)
    return CurveResult(tuple(rows), repeats, describe_features(features), time.perf_counter() - start)


__all__ = [
    "SWEEPABLE",
    "CurveResult",
    "FeatureSet",
    "SweepResult",
    "best_validation_step",
    "check_grid",
    "curve",
    "describe_features",
    "load_features",
    "parse_sizes",
    "sample_per_class",
    "sweep",
    "training_config",
]
