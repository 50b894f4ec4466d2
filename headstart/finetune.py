"""Training the top stages of the backbone and a new classifier, in PyTorch.

``--fine_tune_blocks N`` trains the top N stages, the head conv and a new
classifier from cached cut-point maps (:mod:`headstart.map_cache`): the frozen
part never runs again, so an epoch costs only the top stages' forward and
backward passes.  ``--fine_tune_blocks all`` trains every layer from decoded
images with on-the-fly distortions (the path for GPUs; on a CPU it works,
slowly, and the bar says how slowly).

The recipe: AdamW with a linear warm-up and a cosine decay; discriminative
learning rates (the pretrained layers at a tenth of the classifier's rate);
label smoothing; BatchNorm statistics kept as pretrained (small folders make
noisy batch statistics, and the frozen statistics keep training and inference
identical); the classifier starting from a head trained on the pooled
bottlenecks; early stopping on the validation loss after temperature scaling
(so an epoch is not judged by how confident label smoothing made it), keeping
the best epoch's weights; seeded, with a fixed data order, so a run repeats exactly.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from .data import Distortion, ImageRecord, Preprocessing
from .progress import Progress

log = logging.getLogger("headstart")

BLOCK_LR_RATIO = 0.1  # pretrained layers learn at this fraction of the classifier's rate
WARMUP_FRACTION = 0.05  # of all steps, at least one
PATIENCE = 2  # epochs without a better validation loss before stopping
WEIGHT_DECAY = 0.01  # AdamW's decoupled decay, on weights only (not biases or norms)
BATCH_SIZE = 32
EVAL_BATCH_SIZE = 128


@dataclass(frozen=True)
class FineTuneParams:
    """How to fine-tune (see :data:`headstart.settings.SETTINGS`, group ``fine_tune``)."""

    epochs: int = 4
    learning_rate: float = 1e-3
    label_smoothing: float = 0.1
    batch_size: int = BATCH_SIZE
    weight_decay: float = WEIGHT_DECAY
    block_lr_ratio: float = BLOCK_LR_RATIO
    patience: int = PATIENCE
    flip: bool = False  # mirror half the training maps, drawn anew each epoch (images: see ImageSource)
    seed: int = 0
    mixed_precision: str = "auto"  # auto | bf16 | off


@dataclass(frozen=True)
class EpochResult:
    """One row of fine-tuning history (epoch 0: the starting point, before any update)."""

    epoch: int
    train_loss: float | None
    train_accuracy: float | None
    validation_loss: float | None  # cross entropy after temperature scaling: what early stopping compares
    validation_accuracy: float | None
    seconds: float
    images_per_second: float | None


@dataclass(frozen=True)
class FineTuneOutcome:
    history: tuple[EpochResult, ...]
    best_epoch: int
    seconds: float
    mixed_precision: str
    stopped_early: bool


class Source(Protocol):
    """Training inputs for the top part: batches of float tensors and their labels."""

    def __len__(self) -> int: ...

    def batches(
        self, order: np.ndarray, batch_size: int, epoch: int | None
    ) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
        """``(x, positions)`` for ``order`` in batches; ``epoch`` None: evaluation (no augmentation)."""
        ...


# ---------------------------------------------------------------- sources


class MapSource:
    """Cached maps of some records, read from the map store a batch at a time (float16 on disk)."""

    def __init__(
        self, cache: Any, maps: Any, records: Sequence[ImageRecord], *, flip: bool = False, seed: int = 0
    ) -> None:
        self.cache, self.maps, self.records = cache, maps, tuple(records)
        self.flip, self.seed = flip, seed

    def __len__(self) -> int:
        return len(self.records)

    def batches(
        self, order: np.ndarray, batch_size: int, epoch: int | None
    ) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
        from .map_cache import flip_maps, read_maps

        rng = np.random.default_rng([self.seed, epoch]) if epoch is not None and self.flip else None
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            x = read_maps(self.cache, self.maps, [self.records[i] for i in idx])
            if rng is not None:
                x = flip_maps(x, rng.random(len(idx)) < 0.5)
            yield torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), idx


class ImageSource:
    """Images decoded ahead in threads, distorted afresh every epoch (``--fine_tune_blocks all``)."""

    def __init__(
        self,
        records: Sequence[ImageRecord],
        prep: Preprocessing,
        distortion: Distortion | None,
        workers: int | None = None,
    ) -> None:
        from .networks import InputAdapter

        self.records, self.prep, self.distortion = tuple(records), prep, distortion
        self.workers = workers
        self.adapter = InputAdapter(torch.nn.Identity(), prep).eval()

    def __len__(self) -> int:
        return len(self.records)

    def batches(
        self, order: np.ndarray, batch_size: int, epoch: int | None
    ) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
        from dataclasses import replace

        from .features import decode_ahead, default_workers

        distortion = None
        if epoch is not None and self.distortion is not None and self.distortion.active:
            distortion = replace(self.distortion, copy=epoch)  # a new draw per image and epoch, repeatable
        records = [self.records[i] for i in order]
        items = decode_ahead(
            [r.path for r in records],
            self.prep,
            batch_size,
            self.workers or default_workers(),
            distortion=distortion,
            seeds=[r.sha256 for r in records],
        )
        images: list[np.ndarray] = []
        positions: list[int] = []
        for position, image, error in items:
            if image is None:  # already reported when the bottlenecks were made
                log.debug("skipping %s: %s", records[position].path, error)
                continue
            images.append(image)
            positions.append(int(order[position]))
            if len(images) == batch_size:
                yield self._tensor(images), np.array(positions)
                images, positions = [], []
        if images:
            yield self._tensor(images), np.array(positions)

    def _tensor(self, images: list[np.ndarray]) -> torch.Tensor:
        with torch.no_grad():
            return self.adapter(torch.from_numpy(np.stack(images)))


# ---------------------------------------------------------------- the model


def create_classifier(layers: Sequence[tuple[np.ndarray, np.ndarray]]) -> torch.nn.Sequential:
    """A torch classifier from a head's ``(weight [in, out], bias)`` layers (ReLU between two)."""
    modules: list[torch.nn.Module] = []
    for i, (w, b) in enumerate(layers):
        if i:
            modules.append(torch.nn.ReLU())
        linear = torch.nn.Linear(w.shape[0], w.shape[1])
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(np.ascontiguousarray(w.T, dtype=np.float32)))
            linear.bias.copy_(torch.from_numpy(np.asarray(b, dtype=np.float32)))
        modules.append(linear)
    return torch.nn.Sequential(*modules)


def classifier_tensors(classifier: torch.nn.Sequential) -> dict[str, np.ndarray]:
    """The classifier in the head's state format: ``final.weight [in, out]``, ``final.bias`` (+ ``hidden.*``)."""
    linears = [m for m in classifier if isinstance(m, torch.nn.Linear)]
    names = ["hidden", "final"] if len(linears) == 2 else ["final"]
    out: dict[str, np.ndarray] = {}
    for name, linear in zip(names, linears):
        out[f"{name}.weight"] = linear.weight.detach().float().numpy().T.copy()
        out[f"{name}.bias"] = linear.bias.detach().float().numpy().copy()
    return out


def _freeze_norms(module: torch.nn.Module) -> None:
    """Keep BatchNorm running statistics as pretrained (their scale and shift still train)."""
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()


def resolve_mixed_precision(choice: str, device: torch.device) -> str:
    """``auto``: bf16 autocast on CUDA and on CPUs with native bf16 (AVX-512 BF16 / AMX), else fp32."""
    if choice != "auto":
        return choice
    if device.type == "cuda":
        return "bf16"
    from .runtimes import cpu_has_native_bf16

    return "bf16" if cpu_has_native_bf16() else "off"


@contextmanager
def torch_threads(n: int | None = None) -> Iterator[None]:
    """All cores for the training maths (torch may start with fewer), restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, n or os.cpu_count() or 1))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _param_groups(top: Any, classifier: torch.nn.Module, params: FineTuneParams) -> list[dict[str, Any]]:
    """Discriminative rates: the classifier at the full rate, every pretrained layer at ``block_lr_ratio`` of it.

    Weight decay only on weight matrices and kernels, never on biases or norm parameters.
    """
    groups: dict[tuple[float, float], list[torch.nn.Parameter]] = {}

    def add(p: torch.nn.Parameter, lr: float) -> None:
        p.requires_grad_(True)
        decay = params.weight_decay if p.ndim > 1 else 0.0
        groups.setdefault((lr, decay), []).append(p)

    for _, p in top.trainable_parameters():
        add(p, params.learning_rate * params.block_lr_ratio)
    for p in classifier.parameters():
        add(p, params.learning_rate)
    return [{"params": ps, "lr": lr, "initial_lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()]


def _schedule(total_steps: int) -> Callable[[int], float]:
    """Linear warm-up over the first 5 % of steps, then a cosine decay to zero."""
    warmup = max(1, round(WARMUP_FRACTION * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


# ---------------------------------------------------------------- evaluation


def pooled_features(
    top: torch.nn.Module, source: Source, device: torch.device, *, progress: bool = False, desc: str = "Features"
) -> np.ndarray:
    """float32 ``[len(source), D]``: the top part's pooled output for every input, in order, fp32, eval mode.

    Rows of inputs that could not be read stay NaN (only images can fail: maps were checked when cached).
    """
    top.eval()
    out: np.ndarray | None = None
    order = np.arange(len(source))
    with torch.inference_mode(), Progress(len(source), desc, unit="img", enabled=progress) as bar:
        for x, idx in source.batches(order, EVAL_BATCH_SIZE, None):
            y = top(x.to(device)).float().cpu().numpy()
            if out is None:
                out = np.full((len(source), y.shape[1]), np.nan, dtype=np.float32)
            out[idx] = y
            bar.update(len(idx))
    return out if out is not None else np.zeros((0, 0), np.float32)


def _evaluate(
    top: torch.nn.Module,
    classifier: torch.nn.Module,
    source: Source,
    y: np.ndarray,
    device: torch.device,
    autocast: str,
) -> tuple[float, float]:
    """Validation ``(cross entropy after temperature scaling, accuracy)``."""
    from .calibrate import fit_temperature

    top.eval()
    classifier.eval()
    logits = np.zeros((len(source), _n_classes(classifier)), np.float64)
    seen = np.zeros(len(source), bool)
    with torch.inference_mode(), _autocast(device, autocast):
        for x, idx in source.batches(np.arange(len(source)), EVAL_BATCH_SIZE, None):
            logits[idx] = classifier(top(x.to(device))).float().cpu().numpy()
            seen[idx] = True
    logits, labels = logits[seen], y[seen]
    scaled = logits / fit_temperature(logits, labels)
    log_p = scaled - scaled.max(1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
    return float(-log_p[np.arange(len(labels)), labels].mean()), float(np.mean(logits.argmax(1) == labels))


def _n_classes(classifier: torch.nn.Sequential) -> int:
    return [m for m in classifier if isinstance(m, torch.nn.Linear)][-1].out_features


@contextmanager
def _autocast(device: torch.device, mode: str) -> Iterator[None]:
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=mode == "bf16"):
        yield


# ---------------------------------------------------------------- training


def train(
    top: Any,
    classifier: torch.nn.Sequential,
    train_source: Source,
    y_train: np.ndarray,
    val_source: Source | None,
    y_val: np.ndarray,
    params: FineTuneParams,
    *,
    device: torch.device | None = None,
    progress: bool = True,
    on_epoch: Callable[[EpochResult], None] | None = None,
) -> FineTuneOutcome:
    """Fine-tune ``top`` (its ``trainable_parameters``) and ``classifier`` in place; the best epoch's weights are kept.

    Early stopping watches the validation loss (after temperature scaling);
    without validation images every epoch is run and the last one kept.
    """
    start = time.perf_counter()
    device = device or torch.device("cpu")
    autocast = resolve_mixed_precision(params.mixed_precision, device)
    torch.manual_seed(params.seed)
    rng = np.random.default_rng(params.seed)
    top.to(device)
    classifier.to(device)
    optimizer = torch.optim.AdamW(_param_groups(top, classifier, params))
    steps_per_epoch = math.ceil(len(train_source) / params.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(params.epochs * steps_per_epoch))
    labels = torch.from_numpy(np.asarray(y_train, dtype=np.int64))
    has_val = val_source is not None and len(val_source) > 0

    def snapshot() -> dict[str, Any]:
        return {"top": copy.deepcopy(top.state_dict()), "classifier": copy.deepcopy(classifier.state_dict())}

    history: list[EpochResult] = []
    # The starting point is measured but is no candidate: label smoothing and the new
    # features can cost validation loss that temperature scaling does not take back
    # while unseen-image accuracy rises (docs/PERFORMANCE.md, "Fine-tuning the top
    # stages"). It is kept only if the first epoch diverges.
    best_loss, best_epoch, best_state = math.inf, 0, snapshot()
    if has_val:
        val_loss, val_acc = _evaluate(top, classifier, val_source, y_val, device, autocast)  # type: ignore[arg-type]
        history.append(EpochResult(0, None, None, val_loss, val_acc, 0.0, None))
        log.info("fine-tuning starts at validation accuracy %.3f (loss %.4f)", val_acc, val_loss)
    stale = 0
    stopped_early = False
    total = params.epochs * len(train_source)
    with Progress(total, "Fine-tuning", unit="img", enabled=progress) as bar:
        for epoch in range(1, params.epochs + 1):
            epoch_start = time.perf_counter()
            top.train()
            _freeze_norms(top)
            classifier.train()
            loss_sum, correct, seen = 0.0, 0, 0
            order = rng.permutation(len(train_source))
            for x, idx in train_source.batches(order, params.batch_size, epoch):
                target = labels[idx].to(device)
                with _autocast(device, autocast):
                    logits = classifier(top(x.to(device)))
                    loss = torch.nn.functional.cross_entropy(
                        logits.float(), target, label_smoothing=params.label_smoothing
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                loss_sum += float(loss.detach()) * len(idx)
                correct += int((logits.argmax(1) == target).sum())
                seen += len(idx)
                last = history[-1] if history else None
                bar.update(
                    len(idx),
                    epoch=f"{epoch}/{params.epochs}",
                    loss=f"{loss_sum / seen:.3f}",
                    val_acc="-"
                    if last is None or last.validation_accuracy is None
                    else f"{last.validation_accuracy:.3f}",
                )
            train_s = time.perf_counter() - epoch_start
            val_loss = val_acc = None
            if has_val:
                val_loss, val_acc = _evaluate(top, classifier, val_source, y_val, device, autocast)  # type: ignore[arg-type]
            row = EpochResult(
                epoch,
                loss_sum / max(seen, 1),
                correct / max(seen, 1),
                val_loss,
                val_acc,
                time.perf_counter() - epoch_start,
                seen / train_s if train_s > 0 else None,
            )
            history.append(row)
            bar.write(
                f"Epoch {epoch}/{params.epochs}: loss {row.train_loss:.4f}, train accuracy "
                f"{100 * row.train_accuracy:.1f}%"
                + ("" if val_acc is None else f", validation accuracy {100 * val_acc:.1f}% (loss {val_loss:.4f})")
                + (f", {row.images_per_second:.0f} img/s" if row.images_per_second else "")
            )
            if on_epoch is not None:
                on_epoch(row)
            if not math.isfinite(row.train_loss or 0.0):
                log.warning(
                    "fine-tuning diverged at epoch %d; keeping epoch %d (lower --fine_tune_learning_rate)",
                    epoch,
                    best_epoch,
                )
                break
            if val_loss is None or val_loss < best_loss:
                best_loss, best_epoch, best_state, stale = (
                    val_loss if val_loss is not None else math.inf,
                    epoch,
                    snapshot(),
                    0,
                )
            else:
                stale += 1
                if stale >= params.patience and epoch < params.epochs:
                    stopped_early = True
                    log.info(
                        "validation loss has not improved for %d epochs: stopping after epoch %d, keeping %d",
                        stale,
                        epoch,
                        best_epoch,
                    )
                    break
    top.load_state_dict(best_state["top"])
    classifier.load_state_dict(best_state["classifier"])
    top.eval()
    classifier.eval()
    for p in list(top.parameters()) + list(classifier.parameters()):
        p.requires_grad_(False)
    return FineTuneOutcome(tuple(history), best_epoch, time.perf_counter() - start, autocast, stopped_early)


__all__ = [
    "EpochResult",
    "FineTuneOutcome",
    "FineTuneParams",
    "ImageSource",
    "MapSource",
    "classifier_tensors",
    "create_classifier",
    "pooled_features",
    "resolve_mixed_precision",
    "torch_threads",
    "train",
]
