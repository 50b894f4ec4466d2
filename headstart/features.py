"""Images -> bottleneck vectors, through the cache and a runtime.

The pipeline: look every image up in the cache by content hash; decode the
misses in a pool of threads (libjpeg-turbo, Pillow and OpenCV release the GIL
while they decode and resize) a bounded number of batches ahead of the network;
run the network on full batches; commit each batch to the cache as soon as it is computed, so
an interrupted run loses at most one batch.  Memory is bounded by the
look-ahead, not by the size of the folder.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .backbones import Backbone
from .cache import BottleneckCache, models_dir
from .data import Distortion, ImageRecord, Preprocessing, SkippedImage, load_image
from .errors import HeadstartError, ImageError, UsageError
from .progress import Progress
from .runtimes import DECODE_MODES, DEFAULT_BATCH_SIZE, Runner, RuntimeChoice, create_runner, resolve_runtime

log = logging.getLogger("headstart")

MAX_SKIP_WARNINGS = 10  # how many skips a caller names before pointing to a list (skipped.csv)


@dataclass(frozen=True)
class Bottlenecks:
    """Vectors for the records that could be used, in the order given."""

    records: tuple[ImageRecord, ...]
    vectors: np.ndarray  # float32 [len(records), D]
    skipped: tuple[SkippedImage, ...]
    computed: int
    cached: int
    seconds: float
    extractor: str
    runtime: RuntimeChoice | None

    def select(self, split: str) -> tuple[tuple[ImageRecord, ...], np.ndarray]:
        rows = [i for i, r in enumerate(self.records) if r.split == split]
        return tuple(self.records[i] for i in rows), self.vectors[rows]


def extractor_fingerprint(
    backbone: Backbone, choice: RuntimeChoice, distortion: Distortion | None = None, decoder: str | None = None
) -> str:
    """Cache key part that says which numbers a vector came from (which distorted copy, which decoder).

    ``decoder`` names a decoder whose pixels differ from the CPU decoder's (nvJPEG on
    the GPU), so its vectors are never mixed with the CPU's; the CPU keys are unchanged.
    """
    text = f"{backbone.fingerprint}|{choice.key}"
    if distortion is not None and distortion.active:
        text += f"|distortion:{distortion.fingerprint()}"
    if decoder is not None:
        text += f"|decoder:{decoder}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def default_workers() -> int:
    """One decoder per core: decoding and the network then share the cores
    (measured in docs/PERFORMANCE.md; fewer starves the network, more only adds
    switching)."""
    return max(1, min(8, os.cpu_count() or 1))


def resolve_decode_mode(mode: str, choice: RuntimeChoice) -> str:
    """``auto``: worker processes to feed a GPU, threads on CPU runtimes.

    Measured (docs/PERFORMANCE.md): on a 2-core CPU threads beat processes
    (no pickling, no start-up); next to a CUDA runner in the same process,
    16 decoding threads fall to a fifth of the rate of 16 processes.
    """
    if mode not in DECODE_MODES:
        raise UsageError(f"unknown decode mode {mode!r}", hint=f"use one of {', '.join(DECODE_MODES)}")
    if mode == "auto":
        # gpu decoding stays opt-in until benchmarks/gpu_check.sh has measured it faster on a GPU.
        return "processes" if choice.runtime == "cuda" else "threads"
    if mode == "gpu":
        from .gpu_decode import require_gpu_decode

        require_gpu_decode(choice.runtime)
    return mode


def decode_one(
    path: Path, prep: Preprocessing, distortion: Distortion | None = None, seed: str = ""
) -> tuple[np.ndarray | None, str | None]:
    """``(image, None)`` or ``(None, reason)``: never raises for a bad file, so
    it can run in a thread or a worker process alike (results are plain data)."""
    try:
        return load_image(path, prep, distortion=distortion, seed=seed), None
    except ImageError as exc:
        return None, getattr(exc, "reason", None) or str(exc).removeprefix(f"{path}: ")
    except OSError as exc:  # unreadable file or vanished since indexing
        return None, f"cannot read file ({exc.strerror or exc})"


def _init_decoder() -> None:
    from PIL import Image

    Image.init()  # register every format plugin before threads race to do it lazily


def _create_pool(workers: int, mode: str) -> Executor:
    if mode == "threads":
        _init_decoder()
        return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="headstart-decode")
    if mode == "processes":
        import multiprocessing

        # forkserver/spawn, never fork: the parent already runs the network's threads.
        method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
        return ProcessPoolExecutor(
            max_workers=workers, mp_context=multiprocessing.get_context(method), initializer=_init_decoder
        )
    raise UsageError(f"unknown decode mode {mode!r}", hint=f"use one of {', '.join(DECODE_MODES)}")


def decode_ahead(
    paths: Sequence[Path],
    prep: Preprocessing,
    batch_size: int,
    workers: int,
    lookahead_batches: int = 3,
    mode: str = "threads",
    distortion: Distortion | None = None,
    seeds: Sequence[str] | None = None,
) -> Iterator[tuple[int, np.ndarray | None, str | None]]:
    """Yield ``(position, image, error)`` in order, decoding a bounded distance ahead.

    ``mode="threads"``: the decoders (libjpeg-turbo, Pillow, OpenCV) release
    the GIL while they decode and resize, so threads overlap with each other and
    with the network and cost nothing to start.  ``mode="processes"``: no GIL at all, for machines where the
    Python part of decoding becomes the limit (many cores, a GPU to feed).
    At most ``lookahead_batches`` batches are in flight, which bounds memory
    whatever the size of the folder.  ``distortion`` (with one ``seeds`` entry,
    the content hash, per path) decodes distorted training copies instead.
    """
    window = max(batch_size * lookahead_batches, workers * 2)
    with _create_pool(workers, mode) as pool:
        pending: deque[Future[tuple[np.ndarray | None, str | None]]] = deque()
        submitted = 0
        try:
            for position in range(len(paths)):
                while submitted < len(paths) and len(pending) < window:
                    seed = seeds[submitted] if seeds is not None else ""
                    pending.append(pool.submit(decode_one, paths[submitted], prep, distortion, seed))
                    submitted += 1
                image, error = pending.popleft().result()
                yield position, image, error
        finally:
            for future in pending:  # an interrupted run must not decode the rest of the folder
                future.cancel()


def run_batches(
    runner: Runner,
    items: Iterator[tuple[int, np.ndarray | None, str | None]],
    batch_size: int,
    on_batch: Callable[[list[int], np.ndarray], None],
    on_skip: Callable[[int, str], None],
) -> None:
    """Group decoded images into full batches and run the network on each."""
    positions: list[int] = []
    images: list[np.ndarray] = []
    for position, image, error in items:
        if image is None:
            on_skip(position, error or "unreadable")
            continue
        positions.append(position)
        images.append(image)
        if len(images) == batch_size:
            on_batch(positions, runner(np.stack(images)))
            positions, images = [], []
    if images:
        on_batch(positions, runner(np.stack(images)))


def compute_bottlenecks(
    records: Sequence[ImageRecord],
    backbone: Backbone,
    cache: BottleneckCache,
    *,
    runtime: str | RuntimeChoice = "auto",
    precision: str = "auto",
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int | None = None,
    progress: bool = True,
    runner: Runner | None = None,
    decode: str = "auto",
    distortion: Distortion | None = None,
    ray: Any = None,
) -> Bottlenecks:
    """Bottleneck vectors for ``records``: cached ones read, the rest computed and cached.

    The network is only built when at least one image misses the cache.
    Unusable images are skipped and returned in ``skipped`` with a reason.
    ``decode`` is ``"threads"``, ``"processes"`` (see :func:`decode_ahead`) or
    ``"auto"`` (:func:`resolve_decode_mode`).  With an active ``distortion``
    the vectors are those of each image's distorted copy, cached under their own key.
    """
    if ray is not None:  # a headstart.ray_cluster.RaySettings: the misses are computed on a Ray cluster
        from .distributed import compute_bottlenecks_on_ray

        return compute_bottlenecks_on_ray(
            records,
            backbone,
            cache,
            ray,
            runtime=runtime,
            precision=precision,
            batch_size=batch_size,
            progress=progress,
            distortion=distortion,
        )
    start = time.perf_counter()
    choice = runtime if isinstance(runtime, RuntimeChoice) else resolve_runtime(runtime, precision)
    decode = resolve_decode_mode(decode, choice)
    if decode == "gpu" and distortion is not None and distortion.active:
        decode = "processes"  # the device path has no distortions; their copies decode on the CPU
    decoder = None
    if decode == "gpu":
        from .gpu_decode import decoder_id

        decoder = decoder_id()
    extractor = extractor_fingerprint(backbone, choice, distortion, decoder)
    described = {
        **backbone.describe(),
        "runtime": choice.runtime,
        "precision": choice.precision,
        "preprocessing": backbone.preprocessing.to_dict(),
    }
    if distortion is not None and distortion.active:
        described["distortion"] = asdict(distortion)
    if decoder is not None:
        described["decoder"] = decoder
    cache.register_extractor(extractor, described)
    found = cache.get_many(extractor, [r.sha256 for r in records])
    vectors: dict[str, np.ndarray] = dict(found)
    misses: list[ImageRecord] = []
    seen: set[str] = set()
    for record in records:
        if record.sha256 not in vectors and record.sha256 not in seen:
            seen.add(record.sha256)
            misses.append(record)
    cached = len(records) - len(misses)
    skipped: list[SkippedImage] = []
    if misses:
        what = f"distorted copy {distortion.copy + 1} of " if distortion is not None and distortion.active else ""
        log.info(
            "%d of %d %s cached; computing %d with %s (%s)",
            cached,
            len(records),
            f"{what}bottleneck" if len(records) == 1 else f"{what}bottlenecks",
            len(misses),
            backbone.name,
            choice.key,
        )
        if runner is None and decode != "gpu":
            runner = create_runner(backbone, choice, models_dir(cache.directory))
        with Progress(len(misses), "Distorted" if what else "Bottlenecks", unit="img", enabled=progress) as bar:

            def store(positions: list[int], batch: np.ndarray) -> None:
                items = [(misses[p].sha256, batch[i]) for i, p in enumerate(positions)]
                cache.put_many(extractor, items)
                vectors.update(items)
                bar.update(len(positions))

            def skip(position: int, reason: str) -> None:
                record = misses[position]
                skipped.append(SkippedImage(record.path, reason))
                # Debug only: the caller says each skip once, with the run's other skips (retrain, evaluate).
                log.debug("skipping %s: %s", record.path, reason)
                bar.update(1, skipped=len(skipped))

            paths = [r.path for r in misses]
            if decode == "gpu":  # decode, resize and run on the device; the numpy runner is not used
                from .gpu_decode import prepare_cuda_module, run_gpu_pipeline
                from .networks import create_feature_extractor

                module = prepare_cuda_module(create_feature_extractor(backbone), choice.precision)
                run_gpu_pipeline(paths, backbone.preprocessing, module, batch_size, store, skip, readers=workers)
            else:
                assert runner is not None  # built above for every mode but gpu
                run_batches(
                    runner,
                    decode_ahead(
                        paths,
                        backbone.preprocessing,
                        batch_size,
                        workers or default_workers(),
                        mode=decode,
                        distortion=distortion,
                        seeds=[r.sha256 for r in misses],
                    ),
                    batch_size,
                    store,
                    skip,
                )
    else:
        log.info(
            "%s cached (%s, %s): the network is not run",
            "the 1 bottleneck is" if len(records) == 1 else f"all {len(records)} bottlenecks",
            backbone.name,
            choice.key,
        )
    kept = tuple(r for r in records if r.sha256 in vectors)
    if not kept:
        raise HeadstartError("no image could be turned into a bottleneck", hint="check the skipped images listed above")
    matrix = np.stack([vectors[r.sha256] for r in kept]).astype(np.float32, copy=False)
    return Bottlenecks(
        kept, matrix, tuple(skipped), len(misses) - len(skipped), cached, time.perf_counter() - start, extractor, choice
    )
