"""Bottlenecks on a Ray cluster: Ray Data decodes, an actor pool runs the backbone, the driver commits.

The plan stays headstart's: the image list, the split and the content hashes
come from :func:`headstart.data.index_image_dir` on the driver, and every
vector already in the store (under any runtime that may answer, see
:func:`candidate_choices`) is read there and never sent to the cluster.  Only
the misses become a Ray dataset of ``(position, path, hash)`` rows:

1. ``map_batches(decode_batch)`` -- Ray *tasks* read and decode the files with
   the local pipeline's own :func:`headstart.features.decode_one` (so a bad
   file is a skipped image with the same reason, and a distorted copy the same
   pixels);
2. ``map_batches(Extractor, compute=ActorPoolStrategy)`` -- the backbone, built
   once per actor on the fastest runtime of its node (``auto`` is resolved
   there: CUDA where the actor holds a GPU, OpenVINO or ONNX Runtime on CPUs);
3. the driver iterates the results as they stream out and commits each batch
   with one ``put_many`` under the fingerprint of the runtime that computed it.

Why the driver commits (design (a)) rather than workers writing Parquet shards
(b): measured in docs/SCALE.md, the driver's commit path sustains far more
vectors per second than a cluster of CPU nodes computes, needs no shared
filesystem for the store, and keeps one content-keyed store that the local
pipeline reads unchanged.  Ray Data supplies the scheduling, back-pressure and
retries (restarted actors, retried tasks); a killed driver loses only the
batches not yet committed, and the next run finds the rest in the store.

Reaching the cluster (``--ray`` settings, connection, actor pool size) is
:mod:`headstart.ray_cluster`; this module is the extraction that runs on it.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .backbones import Backbone
from .cache import BottleneckCache, models_dir
from .data import Distortion, ImageRecord, Preprocessing, SkippedImage
from .errors import HeadstartError, UsageError
from .features import Bottlenecks, decode_one, extractor_fingerprint
from .progress import Progress
from .ray_cluster import RaySettings, _quiet_ray_data, connect, plan_pool
from .runtimes import BACKBONE_RUNTIMES, DEFAULT_BATCH_SIZE, RUNTIMES, RuntimeChoice, best_precision

log = logging.getLogger("headstart")

LOOKUP_CHUNK = 10_000  # hashes per cache look-up while planning: bounds the driver's memory
ROWS_PER_BLOCK_BATCHES = 4  # extraction batches per Ray block: small blocks retry cheaply


@dataclass(frozen=True)
class RayFill:
    """What a run on the cluster did: the misses it computed, those it skipped, the runtimes it used."""

    choices: tuple[RuntimeChoice, ...]  # the runtimes whose vectors may be read back, preferred first
    computed: int
    cached: int
    skipped: tuple[SkippedImage, ...]
    seconds: float
    nodes: int


def candidate_choices(runtime: str | RuntimeChoice, precision: str) -> tuple[RuntimeChoice, ...]:
    """The runtimes whose cached vectors a cluster run may use, preferred first.

    A concrete runtime names one (or its precisions, with ``precision=auto``,
    since each node resolves that itself); ``auto`` names every backbone
    runtime in ``auto`` order, each with its best precision first.  Which one
    computed a vector is in its fingerprint, so runtimes are never confused,
    and a result that mixes them says so (:func:`read_bottlenecks`).
    """
    if isinstance(runtime, RuntimeChoice):
        return (runtime,)
    names = sorted(BACKBONE_RUNTIMES, key=lambda n: RUNTIMES[n].auto_rank or 0) if runtime == "auto" else [runtime]
    out: list[RuntimeChoice] = []
    for name in names:
        if name not in RUNTIMES:
            raise UsageError(f"unknown runtime {name!r}", hint=f"use one of auto, {', '.join(BACKBONE_RUNTIMES)}")
        spec = RUNTIMES[name]
        if precision != "auto":
            if precision in spec.precisions:
                out.append(RuntimeChoice(name, precision))
            continue
        best = best_precision(name)
        out.extend(RuntimeChoice(name, p) for p in (best, *[p for p in spec.precisions if p != best]))
    if not out:
        raise UsageError(f"no runtime computes in {precision}", hint="use --precision auto")
    return tuple(out)


def describe_extractor(backbone: Backbone, choice: RuntimeChoice, distortion: Distortion | None) -> dict[str, Any]:
    """The registration that :func:`headstart.features.compute_bottlenecks` writes, for ``cache stats``."""
    described = {
        **backbone.describe(),
        "runtime": choice.runtime,
        "precision": choice.precision,
        "preprocessing": backbone.preprocessing.to_dict(),
    }
    if distortion is not None and distortion.active:
        described["distortion"] = asdict(distortion)
    return described


def cached_hashes(
    records: Sequence[ImageRecord],
    backbone: Backbone,
    cache: BottleneckCache,
    choices: Sequence[RuntimeChoice],
    distortion: Distortion | None,
) -> set[str]:
    """The records' hashes present in the store under any of ``choices`` (looked up in bounded chunks)."""
    remaining = list(dict.fromkeys(r.sha256 for r in records))
    found: set[str] = set()
    for choice in choices:
        fingerprint = extractor_fingerprint(backbone, choice, distortion)
        left: list[str] = []
        for start in range(0, len(remaining), LOOKUP_CHUNK):
            chunk = remaining[start : start + LOOKUP_CHUNK]
            hit = cache.get_many(fingerprint, chunk)
            found.update(hit)
            left.extend(s for s in chunk if s not in hit)
        remaining = left
        if not remaining:
            break
    return found


# ------------------------------------------------------------------ cluster side


def decode_batch(
    batch: dict[str, np.ndarray], prep: Preprocessing, distortion: Distortion | None
) -> dict[str, np.ndarray]:
    """Ray task: read and decode one batch of files; an unusable one keeps its row, with a reason and no pixels."""
    size = prep.input_size
    images = np.zeros((len(batch["path"]), size, size, 3), dtype=np.uint8)
    errors: list[str] = []
    for i, (path, seed) in enumerate(zip(batch["path"], batch["seed"])):
        image, error = decode_one(Path(str(path)), prep, distortion, str(seed))
        if image is not None:
            images[i] = image
        errors.append("" if image is not None else (error or "unreadable"))
    return {
        "position": np.asarray(batch["position"], dtype=np.int64),
        "image": images,
        "error": np.array(errors, dtype=object),
    }


class Extractor:
    """Ray actor: the backbone on this node's runtime, built once, applied to decoded batches."""

    def __init__(
        self, backbone: Backbone, runtime: str | RuntimeChoice, precision: str, onnx: tuple[Any] | None, threads: int
    ) -> None:
        import ray

        from .runtimes import create_file_runner, create_runner, resolve_runtime

        choice = runtime if isinstance(runtime, RuntimeChoice) else resolve_runtime(runtime, precision)
        self.key = choice.key
        self.dim = backbone.num_features or 1  # the width of a batch in which every image failed
        self.node = ray.get_runtime_context().get_node_id()
        self._dir = tempfile.TemporaryDirectory(prefix="headstart-actor-")
        if choice.spec.source == "file":
            if onnx is None:
                raise HeadstartError(
                    f"runtime {choice.key} on node {self.node} needs the backbone as ONNX",
                    hint="use --runtime auto, openvino or onnxruntime",
                )
            path = Path(self._dir.name) / "backbone.onnx"
            path.write_bytes(ray.get(onnx[0]))
            self.runner = create_file_runner(path, choice, threads)
        else:
            self.runner = create_runner(backbone, choice, Path(self._dir.name))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ok = np.array([not e for e in batch["error"]], dtype=bool)
        computed = np.asarray(self.runner(batch["image"][ok]), dtype=np.float32) if ok.any() else None
        if computed is not None:
            self.dim = computed.shape[1]
        vectors = np.zeros((len(ok), self.dim), dtype=np.float32)
        if computed is not None:
            vectors[ok] = computed
        n = len(ok)
        return {
            "position": batch["position"],
            "vector": vectors,
            "error": batch["error"],
            "runtime": np.array([self.key] * n, dtype=object),
            "node": np.array([self.node] * n, dtype=object),
        }


# ------------------------------------------------------------------ driver side


def _model_bytes(backbone: Backbone, runtime: str | RuntimeChoice, cache: BottleneckCache) -> bytes | None:
    """The backbone's ONNX file (converted once, on the driver) unless every node runs it from torch."""
    name = runtime.runtime if isinstance(runtime, RuntimeChoice) else runtime
    if name != "auto" and RUNTIMES[name].source != "file":
        return None
    from .runtimes.onnx_files import ensure_backbone_onnx

    return ensure_backbone_onnx(backbone, models_dir(cache.directory)).read_bytes()


def _plan_dataset(ray: Any, misses: Sequence[ImageRecord], batch_size: int, actors: int) -> Any:
    """The misses as a Ray dataset of ``(position, path, seed)`` in Arrow blocks (a million rows in ~100 MB).

    Small blocks retry cheaply; at least two per actor, so that a short run still uses them all.
    """
    import pyarrow as pa

    n = len(misses)
    blocks = max(math.ceil(n / (batch_size * ROWS_PER_BLOCK_BATCHES)), min(math.ceil(n / batch_size), 2 * actors))
    table = pa.table(
        {
            "position": pa.array(np.arange(n, dtype=np.int64)),
            "path": pa.array([str(r.path) for r in misses]),
            "seed": pa.array([r.sha256 for r in misses]),
        }
    )
    per = math.ceil(n / max(1, blocks))
    return ray.data.from_arrow([table.slice(lo, per) for lo in range(0, n, per)])


def fill_cache_on_ray(
    records: Sequence[ImageRecord],
    backbone: Backbone,
    cache: BottleneckCache,
    settings: RaySettings,
    *,
    runtime: str | RuntimeChoice = "auto",
    precision: str = "auto",
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = True,
    distortion: Distortion | None = None,
) -> RayFill:
    """Compute on the cluster every vector of ``records`` that the store lacks, committing batch by batch."""
    start = time.perf_counter()
    choices = candidate_choices(runtime, precision)
    have = cached_hashes(records, backbone, cache, choices, distortion)
    misses: list[ImageRecord] = []
    seen: set[str] = set()
    for record in records:
        if record.sha256 not in have and record.sha256 not in seen:
            seen.add(record.sha256)
            misses.append(record)
    cached = len(records) - len(misses)
    if not misses:
        log.info("all %d bottlenecks cached (%s): nothing is sent to the cluster", len(records), backbone.name)
        return RayFill(choices, 0, cached, (), time.perf_counter() - start, 0)
    skipped: list[SkippedImage] = []
    used: Counter[str] = Counter()
    with connect(settings.address) as ray:
        _quiet_ray_data(ray)
        pool = plan_pool(ray.nodes(), settings)
        wanted, nodes = pool.wanted, pool.nodes
        cpus = float(ray.cluster_resources().get("CPU", 1))
        log.info(
            "%d of %d bottlenecks cached; computing %d with %s on a Ray cluster of %d node(s), %d actor(s)",
            cached,
            len(records),
            len(misses),
            backbone.name,
            nodes,
            wanted,
        )
        model = _model_bytes(backbone, runtime, cache)
        # Put once and passed by reference inside a tuple: restarted actors fetch it again from the
        # object store while this driver holds the reference (Ray keeps top-level large arguments otherwise).
        onnx = (ray.put(model),) if model is not None else None
        dataset = _plan_dataset(ray, misses, batch_size, wanted)
        # Decoding shares the cores with the network, as the local pipeline's threads do:
        # the tasks reserve no CPU (so they never wait behind the actors), one in flight per core.
        decoded = dataset.map_batches(
            decode_batch,
            batch_size=batch_size,
            batch_format="numpy",
            num_cpus=0,
            compute=ray.data.TaskPoolStrategy(size=max(1, int(cpus))),
            fn_kwargs={"prep": backbone.preprocessing, "distortion": distortion},
        )
        threads = max(1, int(pool.cpus_per_actor))
        vectors = decoded.map_batches(
            Extractor,
            batch_size=batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(min_size=max(1, pool.now), max_size=wanted),
            num_cpus=pool.cpus_per_actor,
            num_gpus=settings.gpus_per_actor or None,
            fn_constructor_kwargs={
                "backbone": backbone,
                "runtime": runtime,
                "precision": precision,
                "onnx": onnx,
                "threads": threads,
            },
        )
        fingerprints: dict[str, str] = {}
        answered: set[str] = set()
        with (
            Progress(
                len(misses),
                f"Bottlenecks on Ray ({nodes} node{'' if nodes == 1 else 's'})",
                unit="img",
                enabled=progress,
            ) as bar,
            warnings.catch_warnings(),
        ):
            # Ray Data's advice that a short run cannot use every actor is not the user's to act on.
            warnings.filterwarnings("ignore", message=".*number of concurrent", category=UserWarning)
            try:
                for batch in vectors.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2):
                    _commit(batch, misses, backbone, cache, distortion, fingerprints, used, skipped)
                    answered.update(str(n) for n in batch["node"])
                    bar.update(len(batch["position"]), nodes=len(answered), skipped=len(skipped))
            except (ray.exceptions.RayError, ray.data.exceptions.SystemException) as exc:  # after Ray's own retries
                lines = [line for line in str(exc).splitlines() if line.strip()]
                raise HeadstartError(
                    f"the Ray cluster failed: {lines[-1] if lines else type(exc).__name__}",
                    hint="the vectors committed so far are kept; see the workers' logs "
                    "(/tmp/ray/session_latest/logs on the nodes) and run again",
                ) from exc
    mixed = ", ".join(f"{key} ({n})" for key, n in used.most_common())
    if len(used) > 1:
        log.warning(
            "the cluster's nodes ran different runtimes: %s; their vectors agree within the runtimes' "
            "tolerance (cosine >= 0.99), not bit for bit",
            mixed,
        )
    ran = tuple(RuntimeChoice(*key.split("-", 1)) for key, _ in used.most_common())
    order = tuple(dict.fromkeys((*ran, *choices)))
    return RayFill(order, len(misses) - len(skipped), cached, tuple(skipped), time.perf_counter() - start, nodes)


def _commit(
    batch: dict[str, np.ndarray],
    misses: Sequence[ImageRecord],
    backbone: Backbone,
    cache: BottleneckCache,
    distortion: Distortion | None,
    fingerprints: dict[str, str],
    used: Counter[str],
    skipped: list[SkippedImage],
) -> None:
    """One transaction per runtime present in the batch, so a killed driver loses only what it had not committed."""
    groups: dict[str, list[tuple[str, np.ndarray]]] = {}
    for position, vector, error, key in zip(batch["position"], batch["vector"], batch["error"], batch["runtime"]):
        record = misses[int(position)]
        if error:
            skipped.append(SkippedImage(record.path, str(error)))
            log.debug("skipping %s: %s", record.path, error)
            continue
        groups.setdefault(str(key), []).append((record.sha256, vector))
    for key, items in groups.items():
        if key not in fingerprints:
            choice = RuntimeChoice(*key.split("-", 1))
            fingerprints[key] = extractor_fingerprint(backbone, choice, distortion)
            cache.register_extractor(fingerprints[key], describe_extractor(backbone, choice, distortion))
        cache.put_many(fingerprints[key], items)
        used[key] += len(items)


def read_bottlenecks(
    records: Sequence[ImageRecord],
    backbone: Backbone,
    cache: BottleneckCache,
    choices: Sequence[RuntimeChoice],
    distortion: Distortion | None = None,
    skipped: Sequence[SkippedImage] = (),
    computed: int = 0,
    cached: int = 0,
    seconds: float = 0.0,
) -> Bottlenecks:
    """The records' vectors from the store, each under the first of ``choices`` that holds it."""
    vectors: dict[str, np.ndarray] = {}
    source: Counter[RuntimeChoice] = Counter()
    remaining = list(dict.fromkeys(r.sha256 for r in records))
    for choice in choices:
        got = cache.get_many(extractor_fingerprint(backbone, choice, distortion), remaining)
        vectors.update(got)
        source[choice] += len(got)
        remaining = [s for s in remaining if s not in got]
        if not remaining:
            break
    kept = tuple(r for r in records if r.sha256 in vectors)
    if not kept:
        raise HeadstartError(
            "no image could be turned into a bottleneck",
            hint="check the skipped images listed above: every Ray node must read the images "
            "at the same path (a shared filesystem)",
        )
    present = [c for c, n in source.most_common() if n]
    if len(present) > 1:
        log.warning(
            "bottlenecks come from %d runtimes: %s", len(present), ", ".join(f"{c.key} ({source[c]})" for c in present)
        )
    main = present[0]
    matrix = np.stack([vectors[r.sha256] for r in kept]).astype(np.float32, copy=False)
    return Bottlenecks(
        kept, matrix, tuple(skipped), computed, cached, seconds, extractor_fingerprint(backbone, main, distortion), main
    )


def compute_bottlenecks_on_ray(
    records: Sequence[ImageRecord],
    backbone: Backbone,
    cache: BottleneckCache,
    settings: RaySettings,
    *,
    runtime: str | RuntimeChoice = "auto",
    precision: str = "auto",
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = True,
    distortion: Distortion | None = None,
) -> Bottlenecks:
    """:func:`headstart.features.compute_bottlenecks` with the misses computed on a Ray cluster."""
    start = time.perf_counter()
    fill = fill_cache_on_ray(
        records,
        backbone,
        cache,
        settings,
        runtime=runtime,
        precision=precision,
        batch_size=batch_size,
        progress=progress,
        distortion=distortion,
    )
    failed = {s.path for s in fill.skipped}
    usable = [r for r in records if r.path not in failed]
    result = read_bottlenecks(
        usable, backbone, cache, fill.choices, distortion, fill.skipped, fill.computed, fill.cached
    )
    return replace(result, seconds=time.perf_counter() - start)


__all__ = ["RayFill", "candidate_choices", "compute_bottlenecks_on_ray", "fill_cache_on_ray", "read_bottlenecks"]
