"""``retrain --fine_tune_blocks N``: the run from a folder of images to a run directory with a tuned backbone.

Flow: check the cut point (before any image is read) -> index and split ->
the frozen part's maps, once per image, cached (``all``: the bottlenecks) ->
a head trained on the pooled bottlenecks as the starting classifier -> the
top stages and the classifier trained together (:mod:`headstart.finetune`) ->
every split's bottlenecks recomputed with the tuned top -> calibration and
the unknown answer, evaluation, and a run directory whose
``backbone.safetensors`` is the whole tuned network under timm's names.
Everything downstream (label, evaluate, export, load_model) reads that run
like any other: its manifest names the tuned weights' sha256 as the
backbone's fingerprint, so their bottlenecks never mix with the base ones.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import asdict
from typing import Any

import numpy as np

from .backbones import Backbone, resolve_backbone
from .bundle import BACKBONE_NAME, BackboneRecord
from .config import RetrainConfig
from .data import Distortion, ImageIndex, ImageRecord, SkippedImage, index_image_dir
from .errors import DataError, UsageError
from .features import Bottlenecks
from .head import SoftmaxHead, TrainStep
from .map_cache import MapCache

log = logging.getLogger("headstart")

ALL = "all"
# --fine_tune_blocks all without distortion flags: whole-network training on a small
# folder overfits without some augmentation; these are the mildest of retrain.py's.
DEFAULT_ALL_DISTORTION = Distortion(flip_left_right=True, random_crop=10.0)


def check_fine_tune(config: RetrainConfig, backbone: Backbone) -> int | str:
    """The cut point, checked against the backbone's depth before any work; a one-line usage error otherwise."""
    from .networks import count_stages

    blocks = config.fine_tune_blocks
    if blocks == ALL:
        return ALL
    stages = count_stages(backbone)
    if stages is None:
        raise UsageError(
            f"--fine_tune_blocks {blocks}: the blocks of backbone {backbone.name} cannot be cut",
            hint="use --fine_tune_blocks 0 (head only) or all (the whole network), or an "
            "EfficientNet/MobileNet backbone such as efficientnet_lite0",
        )
    if not 1 <= int(blocks) <= stages:
        raise UsageError(
            f"--fine_tune_blocks {blocks} is beyond the depth of {backbone.name}, which has {stages} stages",
            hint=f"use 0 (head only), 1-{stages}, or all",
        )
    for name in ("random_crop", "random_scale", "random_brightness"):
        if getattr(config, name):
            raise UsageError(
                f"--{name} needs the images, but --fine_tune_blocks {blocks} trains from cached maps",
                hint="drop it (--flip_left_right works on the maps), or use --fine_tune_blocks all",
            )
    return int(blocks)


def _params(config: RetrainConfig) -> Any:
    from .finetune import FineTuneParams

    return FineTuneParams(
        epochs=config.fine_tune_epochs,
        learning_rate=config.fine_tune_learning_rate,
        label_smoothing=config.fine_tune_label_smoothing,
        flip=config.flip_left_right,
        seed=config.seed,
    )


def _ids(records: Sequence[ImageRecord], label_ids: dict[str, int]) -> np.ndarray:
    return np.array([label_ids[r.label] for r in records], dtype=np.int64)


def _check_splits(labels: Sequence[str], records: Sequence[ImageRecord]) -> dict[str, tuple[ImageRecord, ...]]:
    """The records of each split, with retrain's checks (every class trains, the test split is not empty)."""
    from .train import split_bottlenecks

    empty = Bottlenecks(tuple(records), np.zeros((len(records), 0), np.float32), (), 0, 0, 0.0, "", None)
    return {split: value[0] for split, value in split_bottlenecks(labels, empty).items()}


def _strict(config: RetrainConfig, skipped: Sequence[SkippedImage]) -> None:
    if skipped and config.strict:
        for item in skipped:
            log.warning("cannot use %s: %s", item.path, item.reason)
        first = skipped[0]
        raise DataError(
            f"--strict: {len(skipped)} image(s) could not be used, e.g. {first.path}: {first.reason}",
            hint="fix or remove the files listed above, or drop --strict to skip them",
        )


def tuned_weights(net: Any, backbone: Backbone, blocks: int | str) -> bytes:
    """The whole tuned network's state dict (timm's names, ImageNet classifier included) as safetensors bytes."""
    from safetensors.torch import save

    state = {k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
    # One metadata key: safetensors writes several in a random order, and the file's sha256 is the fingerprint.
    about = {
        "format": "headstart-backbone",
        "timm_name": backbone.timm_name,
        "fine_tune_blocks": blocks,
        "base_weights_fingerprint": backbone.weights_fingerprint,
    }
    return save(state, metadata={"headstart": json.dumps(about, sort_keys=True)})


def fine_tune_retrain(config: RetrainConfig, on_step: Callable[[TrainStep], None] | None = None) -> Any:
    """:func:`headstart.train.retrain` with ``--fine_tune_blocks`` N >= 1 or ``all`` (settings already checked)."""
    import torch

    from .export import fold_head
    from .finetune import create_classifier, pooled_features, torch_threads, train
    from .train import build_head, warn_if_imbalanced

    start = time.perf_counter()
    backbone = resolve_backbone(config.backbone, config.weights, crop_pct=config.crop_pct)
    blocks = check_fine_tune(config, backbone)
    index = index_image_dir(config.image_dir, config.validation_percentage, config.testing_percentage)
    label_ids = {label: i for i, label in enumerate(index.labels)}
    params = _params(config)
    device = torch.device("cuda") if _cuda() else torch.device("cpu")  # the frozen part runs where auto says

    with torch_threads(), ExitStack() as stack:
        if blocks == ALL:
            sources, counts, choice, initial, skipped, top, extra = _whole_network(config, backbone, index, device)
        else:
            cache = stack.enter_context(MapCache(config.bottleneck_dir))
            sources, counts, choice, initial, skipped, top, extra = _from_maps(
                config, backbone, index, blocks, cache, device
            )
        _strict(config, skipped)
        splits = _check_splits(index.labels, [r for s in sources.values() for r in s.records])
        y = {split: _ids(splits[split], label_ids) for split in splits}
        maps_s = time.perf_counter() - start
        warn_if_imbalanced(index.labels, y["training"], config.class_weights)

        train_start = time.perf_counter()
        x_train0, x_val0 = initial("training"), initial("validation")
        head0 = build_head(config, len(index.labels), len(y["training"]))
        head0.fit(
            x_train0,
            y["training"],
            x_val0 if len(y["validation"]) else None,
            y["validation"] if len(y["validation"]) else None,
            callback=on_step,
        )
        head_s = time.perf_counter() - train_start
        start_tensors, head_config = head0.to_state()
        classifier = create_classifier(fold_head(start_tensors))
        outcome = train(
            top,
            classifier,
            sources["training"],
            y["training"],
            sources["validation"],
            y["validation"],
            params,
            device=device,
            progress=config.progress,
        )
        features = {
            split: pooled_features(top, sources[split], device, progress=config.progress, desc=f"Tuned {split}")
            for split in splits
        }
    train_s = time.perf_counter() - train_start

    from .finetune import classifier_tensors

    head = SoftmaxHead.from_state(
        classifier_tensors(classifier.cpu()),
        {**head_config, "standardize": False, "n_steps_run": int(head0.n_steps_run_)},
    )
    weights = tuned_weights(top.net, backbone, blocks)
    record = BackboneRecord.from_dict(
        {
            **backbone.describe(),
            "weights": BACKBONE_NAME,
            "weights_fingerprint": hashlib.sha256(weights).hexdigest(),
            "runtime": choice.runtime if choice else None,
            "precision": choice.precision if choice else None,
            "fine_tune_blocks": blocks,
            "base_weights_fingerprint": backbone.weights_fingerprint,
        }
    )
    fine_tune = {
        "blocks": blocks,
        "epochs": params.epochs,
        "epochs_run": len(outcome.history) - 1
        if outcome.history and outcome.history[0].epoch == 0
        else len(outcome.history),
        "best_epoch": outcome.best_epoch,
        "stopped_early": outcome.stopped_early,
        "mixed_precision": outcome.mixed_precision,
        "seconds": round(outcome.seconds, 3),
        "learning_rate": params.learning_rate,
        "block_learning_rate": params.learning_rate * params.block_lr_ratio,
        "label_smoothing": params.label_smoothing,
        "flip": params.flip,
        "history": [asdict(row) for row in outcome.history],
        # Plain cross entropy on the training images, of the starting head and of the tuned model.
        "training_loss_start": _cross_entropy(head0.logits(x_train0), y["training"]),
        "training_loss_end": _cross_entropy(head.logits(features["training"]), y["training"]),
        **extra,
    }
    return finish_run(
        config,
        index,
        backbone,
        record,
        head,
        head0,
        splits,
        y,
        features,
        skipped,
        counts,
        {
            "bottlenecks_s": round(maps_s, 3),
            "head_s": round(head_s, 3),
            "train_s": round(train_s, 3),
            "fine_tune_s": round(outcome.seconds, 3),
        },
        start,
        fine_tune,
        {BACKBONE_NAME: weights},
    )


def _cross_entropy(logits: np.ndarray, y: np.ndarray) -> float | None:
    keep = np.isfinite(logits).all(axis=1)
    if not keep.any():
        return None
    z = logits[keep].astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return round(float(-log_p[np.arange(len(z)), y[keep]].mean()), 6)


def _cuda() -> bool:
    from .runtimes import cuda_available

    return cuda_available()


def _from_maps(
    config: RetrainConfig, backbone: Backbone, index: ImageIndex, blocks: int, cache: MapCache, device: Any
) -> tuple:
    """The cached maps at the cut, their sources per split, and the pretrained top's bottlenecks for the first head."""
    from .finetune import MapSource, pooled_features
    from .map_cache import compute_maps
    from .networks import split_backbone

    maps = compute_maps(
        index.records,
        backbone,
        blocks,
        cache,
        runtime=config.runtime,
        precision=config.precision,
        batch_size=config.extraction_batch_size,
        workers=config.workers,
        progress=config.progress,
    )
    sources = {
        split: MapSource(
            cache, maps, maps.select(split), flip=(split == "training" and config.flip_left_right), seed=config.seed
        )
        for split in ("training", "validation", "testing")
    }
    _, top = split_backbone(backbone, blocks)
    top.to(device)

    def initial(split: str) -> np.ndarray:
        # The pretrained top on the cached maps: the bottlenecks the starting head learns from.
        return pooled_features(top, sources[split], device, progress=config.progress, desc=f"Pooled {split}")

    extra = {
        "map_shape": list(maps.shape),
        "bytes_per_image": maps.bytes_per_image,
        "maps": {"computed": maps.computed, "cached": maps.cached, "runtime": maps.runtime.key},
    }
    counts = {"computed": maps.computed, "cached": maps.cached}
    return sources, counts, maps.runtime, initial, tuple(index.skipped) + maps.skipped, top, extra


def _whole_network(config: RetrainConfig, backbone: Backbone, index: ImageIndex, device: Any) -> tuple:
    """``all``: images decoded every epoch; the cached bottlenecks train the first head and name the bad images."""
    from .cache import BottleneckCache
    from .features import compute_bottlenecks
    from .finetune import ImageSource
    from .networks import create_trainable_network

    with BottleneckCache(config.bottleneck_dir) as cache:
        bottlenecks = compute_bottlenecks(index.records, backbone, cache, **config.extraction_params())
    distortion = config.distortion() if config.distortion().active else DEFAULT_ALL_DISTORTION
    sources = {
        split: ImageSource(
            bottlenecks.select(split)[0],
            backbone.preprocessing,
            distortion if split == "training" else None,
            config.workers,
        )
        for split in ("training", "validation", "testing")
    }
    _, top = create_trainable_network(backbone)

    def initial(split: str) -> np.ndarray:
        return bottlenecks.select(split)[1]

    extra = {"distortion": asdict(distortion), "device": str(device)}
    counts = {"computed": bottlenecks.computed, "cached": bottlenecks.cached}
    return sources, counts, bottlenecks.runtime, initial, tuple(index.skipped) + bottlenecks.skipped, top, extra


def finish_run(
    config: RetrainConfig,
    index: ImageIndex,
    backbone: Backbone,
    record: BackboneRecord,
    head: SoftmaxHead,
    head0: SoftmaxHead,
    splits: dict[str, tuple[ImageRecord, ...]],
    y: dict[str, np.ndarray],
    features: dict[str, np.ndarray],
    skipped: Sequence[SkippedImage],
    counts: dict[str, int],
    timing: dict[str, float],
    start: float,
    fine_tune: dict[str, Any],
    extra_files: dict[str, bytes],
) -> Any:
    """Calibrate, evaluate and save, as :func:`headstart.train.retrain` does for a head-only run."""
    from .calibrate import calibrate_head, calibration_report
    from .metrics import evaluate as evaluate_predictions
    from .metrics import find_misclassified
    from .train import _relative, _sample_test, save_run

    # Images that failed to decode in a later pass (``all`` re-reads files) have NaN rows: leave them out.
    keep = {s: np.isfinite(features[s]).all(axis=1) if len(features[s]) else np.zeros(0, bool) for s in splits}
    x = {s: features[s][keep[s]] for s in splits}
    yk = {s: y[s][keep[s]] for s in splits}
    rec = {s: tuple(r for r, k in zip(splits[s], keep[s]) if k) for s in splits}
    novelty = calibrate_head(
        head, x["training"], yk["training"], x["validation"], yk["validation"], config.unknown_accept
    )
    chosen = _sample_test(len(yk["testing"]), config.test_batch_size, config.seed)
    test_records = tuple(rec["testing"][i] for i in chosen)
    proba = head.predict_proba(x["testing"][chosen])
    test = evaluate_predictions(yk["testing"][chosen], proba, index.labels)
    misclassified = find_misclassified(test_records, proba, index.labels)
    val_acc = float(np.mean(head.predict(x["validation"]) == yk["validation"])) if len(yk["validation"]) else None
    metrics: dict[str, Any] = {
        "test": test.to_dict(),
        "validation": {"accuracy": val_acc, "n": int(len(yk["validation"]))},
        "training": {
            "n": int(len(yk["training"])),
            "final": asdict(head0.history_[-1]) if head0.history_ else None,
            "diverged": bool(head0.diverged_),
            "steps_run": int(head0.n_steps_run_),
        },
        "timing": timing,
        "bottlenecks": {**counts, "skipped": len(skipped)},
        "skipped": [{"path": _relative(item.path, index.root), "reason": item.reason} for item in skipped],
        "fine_tune": fine_tune,
        "misclassified": [
            {"path": m.relpath, "label": m.true_label, "predicted": m.predicted_label, "score": round(m.score, 6)}
            for m in misclassified
        ],
        **calibration_report(head, novelty, x["testing"][chosen], yk["testing"][chosen]),
        "history": [asdict(step) for step in head0.history_],
        "splits": {s: int(len(yk[s])) for s in splits},
    }
    return save_run(
        config,
        index,
        record,
        backbone.preprocessing,
        head,
        novelty,
        metrics,
        dict(extra_files),
        skipped,
        timing,
        start,
        test=test,
        validation=(val_acc, int(len(yk["validation"]))),
        misclassified=misclassified,
        history_head=head0,
    )


__all__ = ["check_fine_tune", "fine_tune_retrain", "finish_run", "tuned_weights"]
