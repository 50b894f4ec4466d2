"""The extraction benchmark (``headstart bench extract``): how fast are bottlenecks here, and how
close is headstart to the machine's limit?

Three numbers, measured in one run because a shared machine's speed drifts
from minute to minute:

* the **model-only ceiling** of each runtime: images/s of the backbone alone on
  batches already decoded and in memory (what no pipeline can beat);
* headstart's **end-to-end rate**: images/s of :func:`~headstart.features.compute_bottlenecks`
  from the files on disk into an empty (cold) bottleneck cache, decoding included;
* their **ratio** to the best ceiling.

The ceiling of the runtime used end to end is measured before *and* after the
end-to-end run and the higher one is kept, so a quiet moment during the
ceiling can only make the ratio look worse, never better.
"""

from __future__ import annotations

import logging
import os
import platform
import resource
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data import IMAGE_EXTENSIONS, ImageRecord, list_image_files, load_image, sha256_file
from ..errors import DataError, UsageError
from ..runtimes import DEFAULT_BATCH_SIZE, Runner, RuntimeChoice
from .timing import time_calls

log = logging.getLogger("headstart")

DEFAULT_SECONDS = 4.0


@dataclass(frozen=True)
class Machine:
    """Where the figures were measured (they mean little without it)."""

    cpu: str
    cores: int
    python: str
    platform: str
    gpu: str | None


@dataclass(frozen=True)
class Ceiling:
    """A runtime's speed on decoded images already in memory."""

    runtime: str
    precision: str
    batch_size: int
    images_per_s: float
    batches: int
    seconds: float

    @property
    def key(self) -> str:
        return f"{self.runtime}-{self.precision}"


@dataclass(frozen=True)
class EndToEnd:
    """headstart's bottleneck rate from image files, cold cache."""

    runtime: str
    precision: str
    images: int
    skipped: int
    seconds: float
    images_per_s: float
    index_seconds: float
    model_seconds: float
    batch_size: int
    workers: int
    decode: str
    peak_rss_mb: float
    peak_rss_children_mb: float


@dataclass(frozen=True)
class ExtractBench:
    """The result of :func:`bench_extract`."""

    image_dir: Path
    backbone: str
    input_size: int
    machine: Machine
    ceilings: tuple[Ceiling, ...]
    end_to_end: EndToEnd
    best: Ceiling
    ratio: float  # end_to_end.images_per_s / best.images_per_s

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["image_dir"] = str(self.image_dir)
        out["best"] = self.best.key
        return out


def describe_machine() -> Machine:
    """CPU model and core count from the OS; the GPU only if CUDA is already usable."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    gpu = None
    from ..runtimes import cuda_available

    if cuda_available():
        import torch

        gpu = torch.cuda.get_device_name(0)
    return Machine(
        cpu=cpu,
        cores=os.cpu_count() or 1,
        python=platform.python_version(),
        platform=platform.platform(terse=True),
        gpu=gpu,
    )


def list_image_records(image_dir: Path, *, limit: int | None = None, workers: int = 4) -> list[ImageRecord]:
    """Every image file under ``image_dir`` (any depth, class folders optional), hashed.

    The benchmark needs content hashes (the cache key) but no labels or
    splits, so any folder of images will do.
    """
    root = Path(image_dir).expanduser()
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}", hint="pass --image_dir, a folder of images")
    paths = list_image_files(root)
    if limit is not None:
        paths = paths[:limit]
    if not paths:
        raise DataError(f"no images in {root}", hint=f"add images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    with ThreadPoolExecutor(max_workers=workers) as pool:
        digests = list(pool.map(sha256_file, paths))
    return [
        ImageRecord(p, p.relative_to(root).as_posix(), p.parent.name, "training", d) for p, d in zip(paths, digests)
    ]


def sample_batch(records: Sequence[ImageRecord], prep: Any, batch_size: int) -> np.ndarray:
    """A batch of real decoded images from the folder (repeated if it has fewer)."""
    images: list[np.ndarray] = []
    for record in records:
        try:
            images.append(load_image(record.path, prep))
        except Exception:  # a bad image is simply not sampled
            continue
        if len(images) == batch_size:
            break
    if not images:
        raise DataError("no image in the folder could be decoded", hint="check the folder's images")
    while len(images) < batch_size:
        images.extend(images[: batch_size - len(images)])
    return np.stack(images)


def measure_ceiling(
    runner: Runner, batch: np.ndarray, *, seconds: float = DEFAULT_SECONDS, warmup: int = 2
) -> tuple[float, int, float]:
    """``(images/s, batches, seconds)`` of ``runner`` on one preloaded batch, repeated."""
    timing = time_calls(lambda: runner(batch), seconds=seconds, repeats=2, warmup=warmup)
    return timing.calls_per_s * len(batch), timing.calls, timing.total_s


def ceiling_choices(available: Sequence[str] | None = None) -> list[RuntimeChoice]:
    """Each installed runtime at fp32 plus its best reduced precision where
    the hardware has it (what ``--runtime auto`` may pick)."""
    from ..runtimes import _best_precision, available_runtimes

    choices: list[RuntimeChoice] = []
    for runtime in available if available is not None else available_runtimes():
        for precision in dict.fromkeys(["fp32", _best_precision(runtime)]):
            choices.append(RuntimeChoice(runtime, precision))
    return choices


def _peak_rss_mb(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024.0  # kilobytes on Linux


def bench_extract(
    image_dir: str | Path,
    *,
    backbone: str = "efficientnet_lite0",
    weights: Path | None = None,
    crop_pct: float | None = 1.0,
    runtime: str = "auto",
    precision: str = "auto",
    ceilings: Sequence[str] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int | None = None,
    decode: str = "auto",
    limit: int | None = None,
    seconds: float = DEFAULT_SECONDS,
    model_dir: Path | None = None,
    compile: bool = False,
    progress: bool = False,
) -> ExtractBench:
    """Measure the model-only ceilings, the end-to-end rate and their ratio, in one run.

    ``ceilings`` lists ``runtime`` or ``runtime-precision`` names to measure
    (default: every installed runtime, see :func:`ceiling_choices`).  The
    converted models come from ``model_dir`` (default: the cache's models
    folder) so conversion, done once per backbone, is not timed; the
    bottleneck cache is a fresh temporary one, so every image is computed.
    ``crop_pct`` defaults to retrain's 1.0.
    """
    from ..backbones import resolve_backbone
    from ..cache import BottleneckCache, models_dir
    from ..features import compute_bottlenecks, default_workers, resolve_decode_mode
    from ..runtimes import create_runner, resolve_runtime

    if batch_size < 1:
        raise UsageError(
            f"batch size must be positive, got {batch_size}", hint=f"e.g. --batch_size {DEFAULT_BATCH_SIZE}"
        )
    resolved = resolve_backbone(backbone, weights=weights, crop_pct=crop_pct)
    prep = resolved.preprocessing
    model_dir = Path(model_dir) if model_dir is not None else models_dir()
    choice = resolve_runtime(runtime, precision)
    workers = workers or default_workers()
    decode = resolve_decode_mode(decode, choice)

    start = time.perf_counter()
    records = list_image_records(Path(image_dir), limit=limit)
    index_seconds = time.perf_counter() - start
    batch = sample_batch(records, prep, batch_size)

    wanted = ceiling_choices() if ceilings is None else [_parse_choice(c) for c in ceilings]
    if choice not in wanted:
        wanted.append(choice)
    results: dict[RuntimeChoice, Ceiling] = {}

    def measure(c: RuntimeChoice, runner: Runner) -> None:
        rate, count, elapsed = measure_ceiling(runner, batch, seconds=seconds)
        log.info("ceiling %s: %.1f images/s (%d batches of %d)", c.key, rate, count, batch_size)
        old = results.get(c)
        if old is None or rate > old.images_per_s:
            results[c] = Ceiling(c.runtime, c.precision, batch_size, rate, count, elapsed)

    # The runtime under test first: its ceiling, then the end-to-end run, then the
    # other runtimes, then its ceiling again (the higher one is kept).  Running
    # other runtimes before the end-to-end run cost it a few percent (their
    # threads and memory stay behind), which is not what a user's run sees.
    def build(c: RuntimeChoice) -> Runner:
        return create_runner(resolved, c, model_dir, compile=compile and c.runtime in ("torch", "cuda"))

    t0 = time.perf_counter()
    main_runner = build(choice)
    model_seconds = time.perf_counter() - t0
    measure(choice, main_runner)

    with tempfile.TemporaryDirectory(prefix="headstart-bench-") as tmp, BottleneckCache(tmp) as cache:
        t0 = time.perf_counter()
        result = compute_bottlenecks(
            records,
            resolved,
            cache,
            runtime=choice,
            batch_size=batch_size,
            workers=workers,
            progress=progress,
            runner=main_runner,
            decode=decode,
        )
        seconds_e2e = time.perf_counter() - t0

    for c in wanted:
        if c != choice:
            runner = build(c)
            measure(c, runner)
            del runner
    measure(choice, main_runner)

    n = result.computed + len(result.skipped)
    end_to_end = EndToEnd(
        choice.runtime,
        choice.precision,
        result.computed,
        len(result.skipped),
        seconds_e2e,
        n / seconds_e2e,
        index_seconds,
        model_seconds,
        batch_size,
        workers,
        decode,
        _peak_rss_mb(resource.RUSAGE_SELF),
        _peak_rss_mb(resource.RUSAGE_CHILDREN),
    )
    ordered = tuple(results[c] for c in wanted)
    best = max(ordered, key=lambda c: c.images_per_s)
    return ExtractBench(
        Path(image_dir),
        resolved.name,
        prep.input_size,
        describe_machine(),
        ordered,
        end_to_end,
        best,
        end_to_end.images_per_s / best.images_per_s,
    )


def _parse_choice(text: str) -> RuntimeChoice:
    from ..runtimes import resolve_runtime

    runtime, _, precision = text.partition("-")
    return resolve_runtime(runtime, precision or "auto")


def format_extract_bench(result: ExtractBench) -> str:
    """The plain-text report of ``headstart bench extract``."""
    m = result.machine
    e = result.end_to_end
    lines = [
        f"Machine: {m.cpu}, {m.cores} cores" + (f", {m.gpu}" if m.gpu else ""),
        f"Backbone: {result.backbone} ({result.input_size} px), batch {e.batch_size}",
        "",
        "Model-only ceiling (decoded images in memory):",
    ]
    width = max(len(c.key) for c in result.ceilings)
    for c in result.ceilings:
        mark = "  <- best" if c is result.best else ""
        lines.append(f"  {c.key.ljust(width)}  {c.images_per_s:8.1f} images/s{mark}")
    lines += [
        "",
        f"End to end from files, cold cache ({e.runtime}-{e.precision}, {e.workers} decode {e.decode}):",
        f"  {e.images} images in {e.seconds:.1f}s = {e.images_per_s:.1f} images/s"
        + (f" ({e.skipped} skipped)" if e.skipped else ""),
        f"  (indexing and hashing {e.index_seconds:.2f}s, loading the model {e.model_seconds:.2f}s, not included)",
        f"  peak memory: {e.peak_rss_mb:.0f} MB"
        + (f" (+ decoders {e.peak_rss_children_mb:.0f} MB)" if e.peak_rss_children_mb else ""),
        "",
        f"Ratio end-to-end / best ceiling: {result.ratio:.2f}",
    ]
    return "\n".join(lines)
