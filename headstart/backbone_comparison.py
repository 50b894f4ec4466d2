"""Backbone comparison: what each pretrained network costs (size, speed) and what it buys on the user's data.

Kept apart from :mod:`headstart.experiments` (sweeps and learning curves, which
train many heads on one feature set) because this is the one experiment that
builds and times networks (torch, the runtimes) and computes a feature set per
backbone.  It reuses the experiments' shared steps, so every backbone gets the
same split, head settings and scoring as a sweep cell does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .backbones import Backbone, resolve_backbone
from .cache import models_dir
from .config import check_config
from .errors import UsageError
from .experiments import _fit_and_score, _r, load_features, training_config
from .runtimes import RuntimeChoice, resolve_runtime
from .settings import SWEEPABLE

log = logging.getLogger("headstart")


@dataclass(frozen=True)
class CompareResult:
    """One row per backbone: its cost (size, speed) and what it buys on the user's data."""

    rows: tuple[dict[str, Any], ...]
    training: dict[str, Any]
    seconds: float


@dataclass(frozen=True)
class ModelCost:
    """What running a backbone costs, measured on the model alone."""

    params: int
    macs: int
    input_size: int
    bottleneck_size: int
    images_per_s: float
    latency_ms: float
    runtime: str


def _fastest(call: Any, seconds: float, at_least: int = 5) -> float:
    """Seconds of the fastest of repeated calls (after one warm-up), timed for about ``seconds``."""
    from .bench.timing import time_calls

    return time_calls(call, seconds=seconds, repeats=at_least, warmup=1).best_s


def measure_backbone(
    backbone: Backbone,
    runtime: str | RuntimeChoice = "auto",
    precision: str = "auto",
    *,
    model_dir: Path | None = None,
    batch_size: int = 32,
    seconds: float = 1.0,
) -> ModelCost:
    """Parameters and multiply-adds of the torch model, and speed on the chosen runtime.

    Speed is timed on the network alone (random pixels, no decoding), so it
    compares networks and not disks: images/s on batches of ``batch_size`` and
    batch-1 latency, each the fastest call in about ``seconds`` of calls.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from .networks import create_model
    from .runtimes import create_runner

    choice = runtime if isinstance(runtime, RuntimeChoice) else resolve_runtime(runtime, precision)
    size = backbone.preprocessing.input_size
    if backbone.name.startswith("tfhub:"):  # no torch form: counted on its converted ONNX graph (tfhub_runtime)
        from .tfhub_runtime import count_backbone_cost

        params, macs, dim = count_backbone_cost(backbone, choice, model_dir or _model_dir(None))
    else:
        model = create_model(backbone)
        params = int(sum(p.numel() for p in model.parameters()))
        with torch.inference_mode():
            counter = FlopCounterMode(display=False)
            with counter:
                out = model(torch.zeros(1, 3, size, size))
        macs = int(counter.get_total_flops() // 2)  # the counter reports 2 FLOPs per multiply-add
        dim = int(out.shape[-1])
        del model
    runner = create_runner(backbone, choice, model_dir or _model_dir(None))
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8)
    # The fastest of several timed calls: on a shared machine other work only ever adds time.
    batch_s = _fastest(lambda: runner(batch), seconds)
    latency_s = _fastest(lambda: runner(batch[:1]), seconds)
    images_per_s, latency = batch_size / batch_s, latency_s
    return ModelCost(params, macs, size, dim, images_per_s, 1000 * latency, choice.key)


def _model_dir(bottleneck_dir: str | Path | None) -> Path:
    """Where converted models live: beside the bottleneck cache, as extraction keeps them."""

    return models_dir(bottleneck_dir)


def compare(
    image_dir: str | Path,
    backbones: Sequence[str],
    *,
    measure_speed: bool = True,
    timing_seconds: float = 1.0,
    **settings: Any,
) -> CompareResult:
    """Each backbone's size and speed, and the test accuracy a head trained on its bottlenecks reaches.

    Every backbone gets the same split, the same head settings and the same seed.
    Bottlenecks come from the cache when they are there; a backbone seen for the
    first time is run over the whole folder once (``extraction_s``).
    """
    start = time.perf_counter()
    names = [b.strip() for b in backbones if b.strip()]
    if not names:
        raise UsageError("--backbones: give at least one backbone", hint="e.g. efficientnet_lite0,efficientnet_lite1")
    if len(set(names)) != len(names):
        raise UsageError("--backbones: a backbone is named twice")
    base = training_config(image_dir, **settings)
    check_config(base)
    rows = []
    for name in names:
        config = replace(base, backbone=name)
        resolve_backbone(name, config.weights, crop_pct=config.crop_pct)  # fail early on a bad name
        features = load_features(config)
        fit = _fit_and_score(config, features, features.x_train, features.y_train)
        row: dict[str, Any] = {
            "backbone": name,
            "timm_name": features.backbone.timm_name,
            "input_size": features.backbone.preprocessing.input_size,
            "bottleneck_size": features.n_features,
            "test_accuracy": _r(fit.test.accuracy),
            "macro_precision": _r(fit.test.macro_precision),
            "macro_recall": _r(fit.test.macro_recall),
            "validation_accuracy": _r(fit.validation_accuracy),
            "train_s": _r(fit.train_s),
            "n_test": int(fit.test.n),
            "bottlenecks_computed": features.computed,
            "extraction_s": _r(features.bottleneck_s, 3) if features.computed else None,
            "extraction_images_per_s": _r(features.computed / features.bottleneck_s, 1)
            if features.computed and features.bottleneck_s > 0
            else None,
            "runtime": features.runtime.key if features.runtime else None,
        }
        if measure_speed:
            cost = measure_backbone(
                features.backbone,
                features.runtime or config.runtime,
                config.precision,
                model_dir=_model_dir(config.bottleneck_dir),
                seconds=timing_seconds,
            )
            row.update(
                {
                    "params": cost.params,
                    "params_m": round(cost.params / 1e6, 2),
                    "macs": cost.macs,
                    "gmacs": round(cost.macs / 1e9, 3),
                    "images_per_s": round(cost.images_per_s, 1),
                    "latency_ms": round(cost.latency_ms, 2),
                }
            )
        rows.append(row)
        log.info("%s: test accuracy %.3f", name, fit.test.accuracy)
    training = {k: getattr(base, k) for k in SWEEPABLE}
    return CompareResult(tuple(rows), training, time.perf_counter() - start)


__all__ = ["CompareResult", "ModelCost", "compare", "measure_backbone"]
