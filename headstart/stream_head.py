"""Training the head on more bottlenecks than fit in memory.

A million 1,280-float vectors are 5 GB, and the in-memory path holds them
twice at its peak (the cache's rows and the stacked matrix).  Past
``--max_memory`` (default: half of this machine's RAM) :func:`extract_to_stores`
writes each split's vectors, a bounded chunk at a time, to a :class:`VectorStore`:
one raw file of rows (float16 by default: it halves the disk and I/O and cost
no accuracy where measured, docs/SCALE.md) beside a JSON description.

:class:`StreamingHead` is :class:`~headstart.head.SoftmaxHead` with one
difference: its training rows may be such a store.  The sampler, the random
stream and the update are the head's own, so for the same seed it draws the
same mini-batches and reaches the same weights as in memory; each step reads
only the rows it drew, with positioned reads (no memory map, so resident
memory stays at a batch, not at the pages touched).  Validation rows are held
in memory (a tenth of the data by default); predictions over a store run in
chunks.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .cache import BottleneckCache, models_dir
from .data import ImageRecord, SkippedImage
from .errors import HeadstartError
from .features import Bottlenecks, compute_bottlenecks
from .head import SoftmaxHead

if TYPE_CHECKING:  # pragma: no cover
    from .backbones import Backbone
    from .config import RetrainConfig

log = logging.getLogger("headstart")

STORE_DTYPE = "float16"
STORE_FORMAT = "headstart.vector_store"
CHUNK_ROWS = 8192  # rows per read when a whole store is passed over (predictions, class means)
MIN_EXTRACT_CHUNK = 1024  # images per extraction chunk at the least, however small --max_memory is
_FP16_MAX = float(np.finfo(np.float16).max)


def default_max_memory() -> int:
    """Half of this machine's physical memory, in bytes."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")) // 2
    except (ValueError, OSError, AttributeError):  # not a POSIX system: assume 8 GB
        return 4 * 2**30


def needs_streaming(rows: int, dim: int | None, max_memory: int | None) -> bool:
    """Whether ``rows`` bottlenecks of ``dim`` floats would pass ``max_memory`` held in memory (twice, at the peak)."""
    return 2 * rows * (dim or 2048) * 4 > (max_memory or default_max_memory())


class VectorStore:
    """Rows of one width in ``<path>`` (raw little-endian float16/float32) described by ``<path>.json``.

    Indexing returns float32 in memory: ``store[idx]`` for an index array (any
    order, repeats allowed) reads only those rows; ``store[a:b]`` one range.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            meta = json.loads(Path(f"{self.path}.json").read_text())
        except (OSError, ValueError) as exc:
            raise HeadstartError(
                f"{self.path} is not a vector store ({exc})", hint="write it with StoreWriter"
            ) from exc
        if meta.get("format") != STORE_FORMAT or meta.get("dtype") not in ("float16", "float32"):
            raise HeadstartError(f"{self.path} is not a vector store", hint="write it with StoreWriter")
        self.dtype = np.dtype(meta["dtype"]).newbyteorder("<")
        self.rows, self.dim = int(meta["rows"]), int(meta["dim"])
        self._row_bytes = self.dim * self.dtype.itemsize
        self._fd = os.open(self.path, os.O_RDONLY)
        self._closer = weakref.finalize(self, os.close, self._fd)
        if os.fstat(self._fd).st_size != self.rows * self._row_bytes:
            self.close()
            raise HeadstartError(f"{self.path} does not hold {self.rows} rows of {self.dim}", hint="write it again")

    @property
    def shape(self) -> tuple[int, int]:
        return self.rows, self.dim

    @property
    def nbytes(self) -> int:
        return self.rows * self._row_bytes

    def __len__(self) -> int:
        return self.rows

    def _read(self, start: int, count: int) -> np.ndarray:
        buf = os.pread(self._fd, count * self._row_bytes, start * self._row_bytes)
        return np.frombuffer(buf, dtype=self.dtype).reshape(count, self.dim)

    def __getitem__(self, index: Any) -> np.ndarray:
        if isinstance(index, slice):
            start, stop, step = index.indices(self.rows)
            if step != 1:
                raise IndexError("a VectorStore slice must have step 1")
            return self._read(start, max(0, stop - start)).astype(np.float32)
        idx = np.asarray(index)
        if idx.dtype == np.bool_ or not np.issubdtype(idx.dtype, np.integer):
            raise IndexError("index a VectorStore with integers or a slice")
        flat = idx.reshape(-1).astype(np.int64)
        if len(flat) and (flat.min() < -self.rows or flat.max() >= self.rows):
            raise IndexError(f"row index out of range for a store of {self.rows} rows")
        flat = np.where(flat < 0, flat + self.rows, flat)
        unique, inverse = np.unique(flat, return_inverse=True)
        rows = np.empty((len(unique), self.dim), dtype=np.float32)
        runs = np.split(np.arange(len(unique)), np.flatnonzero(np.diff(unique) != 1) + 1) if len(unique) else []
        for run in runs:  # one read per run of consecutive rows
            rows[run[0] : run[-1] + 1] = self._read(int(unique[run[0]]), len(run))
        out = rows[inverse]
        return out.reshape(*idx.shape, self.dim) if idx.ndim != 1 else out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        """The whole store as a float32 matrix (for the small splits: validation, tests)."""
        whole = self[0 : self.rows]
        return whole if dtype is None else whole.astype(dtype)

    def iter_chunks(self, rows: int = CHUNK_ROWS) -> Iterator[tuple[int, np.ndarray]]:
        for start in range(0, self.rows, rows):
            yield start, self[start : min(self.rows, start + rows)]

    def close(self) -> None:
        self._closer()

    def __repr__(self) -> str:
        return f"VectorStore({str(self.path)!r}, rows={self.rows}, dim={self.dim}, dtype={self.dtype.name})"


class StoreWriter:
    """Appends rows to a new store; :meth:`close` writes its description and opens it for reading."""

    def __init__(self, path: str | Path, dim: int, dtype: str = STORE_DTYPE) -> None:
        if dtype not in ("float16", "float32"):
            raise ValueError(f"dtype must be float16 or float32, got {dtype!r}")
        self.path, self.dim, self.dtype, self.rows = Path(path), int(dim), np.dtype(dtype).newbyteorder("<"), 0
        self._file = open(self.path, "wb")  # noqa: SIM115 - open for appends until close()

    def append(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows)
        if rows.ndim != 2 or rows.shape[1] != self.dim:
            raise ValueError(f"rows must be [n, {self.dim}], got shape {rows.shape}")
        if not np.isfinite(rows).all():
            raise HeadstartError(f"a bottleneck for {self.path.name} holds NaN or infinity", hint="check the backbone")
        if self.dtype.itemsize == 2 and len(rows) and float(np.abs(rows).max()) > _FP16_MAX:
            raise HeadstartError("bottleneck values exceed float16's range", hint="store them as float32")
        self._file.write(np.ascontiguousarray(rows, dtype=self.dtype).tobytes())
        self.rows += len(rows)

    def close(self) -> VectorStore:
        self._file.close()
        meta = {"format": STORE_FORMAT, "dtype": self.dtype.name, "rows": self.rows, "dim": self.dim}
        Path(f"{self.path}.json").write_text(json.dumps(meta))
        return VectorStore(self.path)


def write_store(
    path: str | Path, chunks: Iterator[np.ndarray] | Sequence[np.ndarray], dim: int, dtype: str = STORE_DTYPE
) -> VectorStore:
    """A store holding ``chunks`` one after the other."""
    writer = StoreWriter(path, dim, dtype)
    for chunk in chunks:
        writer.append(chunk)
    return writer.close()


class StreamingHead(SoftmaxHead):
    """:class:`~headstart.head.SoftmaxHead` whose training rows and prediction inputs may be a :class:`VectorStore`."""

    def _training_features(self, X: Any) -> Any:
        if not isinstance(X, VectorStore):
            return super()._training_features(X)
        if self.standardize:
            raise ValueError("standardize=True needs the training vectors in memory")
        if self.train_batch_size == -1:
            raise ValueError("train_batch_size=-1 uses every vector at every step: give a batch size to stream")
        return X

    def logits(self, X: Any) -> np.ndarray:
        if not isinstance(X, VectorStore):
            return super().logits(X)
        self._check_fitted()
        if X.dim != self.n_features_in_:
            raise ValueError(f"X has {X.dim} features, the head expects {self.n_features_in_}")
        out = np.empty((len(X), len(self.classes_)), dtype=np.float32)
        for start, chunk in X.iter_chunks():
            out[start : start + len(chunk)] = super().logits(chunk)
        return out


def calibrate_streaming(
    head: SoftmaxHead, x_train: Any, y_train: np.ndarray, x_val: Any, y_val: np.ndarray, accept: float
) -> Any:
    """:func:`headstart.calibrate.calibrate_head` with the training rows read a chunk at a time."""
    from .calibrate import fit_novelty, fit_temperature

    n_classes = len(head.classes_)
    sums = np.zeros((n_classes, x_train.shape[1]), dtype=np.float64)
    for start, chunk in x_train.iter_chunks() if isinstance(x_train, VectorStore) else [(0, x_train)]:
        unit = chunk / np.maximum(np.linalg.norm(chunk, axis=1, keepdims=True), 1e-12)
        np.add.at(sums, y_train[start : start + len(chunk)], unit)
    counts = np.bincount(y_train, minlength=n_classes)[:, None]
    means = (sums / np.maximum(counts, 1)).astype(np.float32)  # a class without images keeps a zero mean
    if len(y_val):
        ref = np.asarray(x_val, dtype=np.float32)
        head.temperature_ = fit_temperature(head.logits(ref), y_val)
    else:  # no validation split: a sample of training rows stands in, as calibrate_head's training rows do
        pick = np.sort(np.random.default_rng(0).choice(len(y_train), min(len(y_train), 10_000), replace=False))
        ref = x_train[pick]
        head.temperature_ = 1.0
    return fit_novelty(means, np.arange(n_classes), n_classes, ref, head.predict_proba(ref), accept)


@dataclass(frozen=True)
class StreamedBottlenecks(Bottlenecks):
    """:class:`~headstart.features.Bottlenecks` whose vectors are one :class:`VectorStore` per split.

    ``vectors`` is empty; :meth:`select` gives a split's records and its store.
    The stores live in a temporary folder beside the bottleneck cache, removed
    when this object is.
    """

    stores: dict[str, VectorStore] = field(default_factory=dict, compare=False)
    workdir: Any = field(default=None, compare=False, repr=False)

    def select(self, split: str) -> tuple[tuple[ImageRecord, ...], Any]:  # type: ignore[override]
        return tuple(r for r in self.records if r.split == split), self.stores[split]


def extract_to_stores(
    records: Sequence[ImageRecord],
    backbone: Backbone,
    cache: BottleneckCache,
    config: RetrainConfig,
    dtype: str | None = None,
) -> StreamedBottlenecks:
    """Every record's bottleneck, computed (locally or on Ray) and written split by split to stores on disk.

    Memory stays bounded by the chunk: ``--max_memory`` over four copies of a
    chunk's vectors (the cache's rows, the stacked matrix, the conversion, the write).
    """
    import time

    from .distributed import fill_cache_on_ray, read_bottlenecks
    from .runtimes import create_runner, resolve_runtime

    start = time.perf_counter()
    dtype = dtype or STORE_DTYPE
    dim = backbone.num_features or 2048
    chunk = max(MIN_EXTRACT_CHUNK, (config.max_memory or default_max_memory()) // (dim * 4 * 4))
    workdir = tempfile.TemporaryDirectory(prefix="headstart-stream-", dir=cache.directory)
    writers: dict[str, StoreWriter] = {}
    kept: list[ImageRecord] = []
    extractor, ran = "", None
    skipped: list[SkippedImage] = []
    computed = cached = 0
    params = config.extraction_params()
    settings = params.pop("ray")
    fill = None
    if settings is not None:  # the cluster fills the store once; the chunks below only read it
        fill = fill_cache_on_ray(
            records,
            backbone,
            cache,
            settings,
            runtime=config.runtime,
            precision=config.precision,
            batch_size=config.extraction_batch_size,
            progress=config.progress,
        )
        computed, cached, skipped = fill.computed, fill.cached, list(fill.skipped)
        failed = {s.path for s in fill.skipped}
        records = [r for r in records if r.path not in failed]
        choice = fill.choices[0]
    else:
        choice = resolve_runtime(config.runtime, config.precision)
    runner: dict[str, Any] = {}

    def lazy(images: np.ndarray) -> np.ndarray:  # built once, only if some image misses the cache
        if "run" not in runner:
            runner["run"] = create_runner(backbone, choice, models_dir(cache.directory))
        return runner["run"](images)

    log.info("%d bottlenecks exceed --max_memory: the head trains from %s stores on disk", len(records), dtype)
    for begin in range(0, len(records), chunk):
        part = records[begin : begin + chunk]
        if fill is not None:
            got = read_bottlenecks(part, backbone, cache, fill.choices)
        else:
            got = compute_bottlenecks(part, backbone, cache, **{**params, "runtime": choice, "runner": lazy})
            computed, cached, skipped = computed + got.computed, cached + got.cached, skipped + list(got.skipped)
        for split in ("training", "validation", "testing"):
            rows = [i for i, r in enumerate(got.records) if r.split == split]
            if split not in writers:
                writers[split] = StoreWriter(Path(workdir.name) / f"{split}.f{dtype[-2:]}", got.vectors.shape[1], dtype)
            writers[split].append(got.vectors[rows])
        kept.extend(got.records)
        extractor, ran = got.extractor, got.runtime
    if not kept:
        raise HeadstartError("no image could be turned into a bottleneck", hint="check the skipped images listed above")
    stores = {split: writer.close() for split, writer in writers.items()}
    by_split = {s: [r for r in kept if r.split == s] for s in stores}
    ordered = tuple(r for s in ("training", "validation", "testing") for r in by_split[s])
    return StreamedBottlenecks(
        ordered,
        np.zeros((0, stores["training"].dim), np.float32),
        tuple(skipped),
        computed,
        cached,
        time.perf_counter() - start,
        extractor,
        ran,
        stores=stores,
        workdir=workdir,
    )


__all__ = [
    "STORE_DTYPE",
    "StoreWriter",
    "StreamedBottlenecks",
    "StreamingHead",
    "VectorStore",
    "calibrate_streaming",
    "default_max_memory",
    "extract_to_stores",
    "needs_streaming",
    "write_store",
]
