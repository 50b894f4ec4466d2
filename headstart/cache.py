"""The bottleneck store: one SQLite file of float32 vectors keyed by content.

Why SQLite: retrain.py kept one text file per image, re-read at every step;
one indexed file is a thousand times faster to query, survives crashes (WAL,
a transaction per batch) and can be shared by two processes.

Key: ``(extractor fingerprint, image sha256)``.  The caller builds the
fingerprint from backbone weights, preprocessing, runtime and precision, so a
replaced photo, a new backbone or another runtime never sees a stale vector.
Value: the vector as raw little-endian float32 bytes plus its length (never
pickle: a cache file must not be able to run code).

Concurrency: each :class:`BottleneckCache` owns one connection guarded by a
lock, so threads may share an instance; processes each open their own.  Writes
take ``BEGIN IMMEDIATE`` and retry while another process holds the lock.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import platformdirs

from headstart.errors import CacheError

log = logging.getLogger("headstart")

SCHEMA_VERSION = 1
#: Stay far below SQLite's bound-variable limit (999 before 3.32) per IN (...) query.
_CHUNK = 900
_DTYPE = np.dtype("<f4")
_HINT = "run `headstart cache clear` or pass another --bottleneck_dir"
_T = TypeVar("_T")

# Separate statements: executescript() would COMMIT our BEGIN IMMEDIATE first.
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS extractors (fingerprint TEXT PRIMARY KEY, description TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS bottlenecks ("
    " extractor TEXT NOT NULL, sha256 TEXT NOT NULL, dim INTEGER NOT NULL, vector BLOB NOT NULL,"
    " PRIMARY KEY (extractor, sha256))",
)


def default_cache_dir() -> Path:
    """``$HEADSTART_CACHE_DIR`` if set, else the platform's user cache folder."""
    env = os.environ.get("HEADSTART_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_cache_dir("headstart"))


def models_dir(bottleneck_dir: str | Path | None = None) -> Path:
    """Where converted backbones (ONNX, TensorRT engines) are kept: ``models/`` beside the bottlenecks."""
    base = Path(bottleneck_dir).expanduser() if bottleneck_dir is not None else default_cache_dir()
    return base / "models"


@dataclass(frozen=True)
class ExtractorStats:
    """What one extractor holds: its registered description, row count and vector size."""

    fingerprint: str
    description: dict
    entries: int
    dim: int


@dataclass(frozen=True)
class CacheStats:
    """Size and contents of a cache file, for ``headstart cache stats``."""

    path: Path
    size_bytes: int
    entries: int
    extractors: tuple[ExtractorStats, ...]


class BottleneckCache:
    """Bottleneck vectors in ``<directory>/bottlenecks.sqlite``.

    >>> with BottleneckCache(tmp_dir) as cache:             # doctest: +SKIP
    ...     cache.put_many(fp, [(sha, vector)])
    ...     cache.get_many(fp, [sha])
    """

    FILENAME = "bottlenecks.sqlite"
    DTYPE = _DTYPE  # how a row's values are stored (the cut-point map store keeps float16)

    def __init__(self, directory: str | Path | None = None, *, timeout: float = 60.0) -> None:
        self.directory = Path(directory).expanduser() if directory is not None else default_cache_dir()
        self.path = self.directory / self.FILENAME
        self.timeout = float(timeout)
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CacheError(
                f"cannot create bottleneck cache directory {self.directory}: {exc.strerror or exc}",
                hint="pass another --bottleneck_dir or fix the folder's permissions",
            ) from exc
        with self._translate():
            self._conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False)
            try:
                self._setup()
            except BaseException:
                self._conn.close()
                self._conn = None
                raise

    # ------------------------------------------------------------------ setup
    def _setup(self) -> None:
        conn = self._db
        # A bigger page keeps a 1280-dim vector (5 KiB) on one page; it only
        # takes effect on a new, empty file, before WAL is switched on.
        conn.execute("PRAGMA page_size = 16384")
        mode = self._retry(lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
        if str(mode).lower() != "wal":
            log.warning("bottleneck cache %s: WAL unavailable (journal_mode=%s)", self.path, mode)
        # NORMAL: in WAL mode a crash can lose the last transactions but never corrupts.
        conn.execute("PRAGMA synchronous = NORMAL")

        def create() -> int:
            for statement in _SCHEMA:
                conn.execute(statement)
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                return SCHEMA_VERSION
            return int(row[0])

        # Check before creating: a future schema may not even have our tables.
        version = self._read_version()
        if version is None or version <= SCHEMA_VERSION:
            version = self._write(create)
        if version > SCHEMA_VERSION:
            raise CacheError(
                f"bottleneck cache {self.path} has schema version {version}; "
                f"this headstart reads up to {SCHEMA_VERSION}",
                hint=f"upgrade headstart, {_HINT}",
            )

    def _read_version(self) -> int | None:
        has_meta = self._db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone()
        if not has_meta:
            return None
        row = self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return None if row is None else int(row[0])

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise CacheError(f"bottleneck cache {self.path} is closed", hint="open a new BottleneckCache")
        return self._conn

    # -------------------------------------------------------------- plumbing
    @contextmanager
    def _translate(self) -> Iterator[None]:
        """Turn sqlite3 errors into one-line CacheErrors that name the file."""
        try:
            yield
        except sqlite3.Error as exc:
            raise self._cache_error(exc) from exc

    def _cache_error(self, exc: sqlite3.Error) -> CacheError:
        msg = str(exc)
        low = msg.lower()
        if "full" in low:
            return CacheError(f"bottleneck cache {self.path}: disk is full", hint=f"free disk space, {_HINT}")
        if "not a database" in low or "malformed" in low:
            return CacheError(
                f"{self.path} is not a usable bottleneck cache ({msg})", hint=f"delete that file, {_HINT}"
            )
        if "readonly" in low or "read-only" in low or "unable to open" in low:
            return CacheError(
                f"cannot write bottleneck cache {self.path} ({msg})",
                hint="pass another --bottleneck_dir or fix the folder's permissions",
            )
        if "locked" in low or "busy" in low:
            return CacheError(
                f"bottleneck cache {self.path} stayed locked by another process for {self.timeout:g} s",
                hint="wait for the other headstart run to finish or pass another --bottleneck_dir",
            )
        return CacheError(f"bottleneck cache {self.path}: {msg}", hint=_HINT)

    def _retry(self, fn: Callable[[], _T]) -> _T:
        """Call ``fn`` until it stops failing with 'database is locked' or the timeout passes.

        The busy timeout already waits inside SQLite, but some paths (WAL setup,
        VACUUM, lock upgrades) return SQLITE_BUSY at once; this loop covers them.
        """
        deadline = time.monotonic() + self.timeout
        delay = 0.005
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                low = str(exc).lower()
                if ("locked" not in low and "busy" not in low) or time.monotonic() >= deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.25)

    def _write(self, fn: Callable[[], _T]) -> _T:
        """Run ``fn`` inside one ``BEGIN IMMEDIATE`` transaction (retried while locked)."""
        conn = self._db
        self._retry(lambda: conn.execute("BEGIN IMMEDIATE"))
        try:
            result = fn()
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return result

    # ------------------------------------------------------------ public API
    def register_extractor(self, fingerprint: str, description: dict) -> None:
        """Record what a fingerprint stands for (backbone, runtime, precision ...) for stats."""
        text = json.dumps(description, sort_keys=True, default=str)
        with self._lock, self._translate():
            self._write(
                lambda: self._db.execute(
                    "INSERT OR REPLACE INTO extractors (fingerprint, description) VALUES (?, ?)", (fingerprint, text)
                )
            )

    def get_many(self, extractor: str, sha256s: Sequence[str]) -> dict[str, np.ndarray]:
        """Vectors (float32, 1-D, writable) for the hashes present; missing ones are absent.

        A row whose blob length disagrees with its dim (a torn or tampered row)
        is logged and treated as missing, so the caller recomputes it.
        """
        keys = list(dict.fromkeys(sha256s))
        found: dict[str, np.ndarray] = {}
        if not keys:
            return found
        bad: list[str] = []
        with self._lock, self._translate():
            conn = self._db
            conn.execute("BEGIN")  # one snapshot across chunks, and faster
            try:
                for start in range(0, len(keys), _CHUNK):
                    chunk = keys[start : start + _CHUNK]
                    marks = ",".join("?" * len(chunk))
                    rows = conn.execute(
                        f"SELECT sha256, dim, vector FROM bottlenecks WHERE extractor = ? AND sha256 IN ({marks})",
                        (extractor, *chunk),
                    )
                    for sha, dim, blob in rows:
                        if not isinstance(blob, bytes) or dim <= 0 or len(blob) != dim * self.DTYPE.itemsize:
                            bad.append(sha)
                            continue
                        found[sha] = np.frombuffer(blob, dtype=self.DTYPE).astype(self.DTYPE.newbyteorder("="))
            finally:
                conn.execute("COMMIT")
        if bad:
            log.warning(
                "bottleneck cache %s: %d corrupt vector(s) ignored and will be recomputed (e.g. %s)",
                self.path,
                len(bad),
                bad[0],
            )
        return found

    def put_many(self, extractor: str, items: Iterable[tuple[str, np.ndarray]]) -> int:
        """Store (or overwrite) vectors in ONE transaction; returns the rows written.

        One transaction per call is what makes a run resumable: a process killed
        mid-way loses at most the batch in flight and the file stays intact.
        """
        rows = []
        for sha, vector in items:
            arr = np.asarray(vector)
            if arr.ndim != 1 or arr.size == 0:
                raise ValueError(f"bottleneck for {sha} must be a non-empty 1-D vector, got shape {arr.shape}")
            rows.append((extractor, sha, int(arr.size), arr.astype(self.DTYPE, copy=False).tobytes()))
        if not rows:
            return 0
        with self._lock, self._translate():
            self._write(
                lambda: self._db.executemany(
                    "INSERT OR REPLACE INTO bottlenecks (extractor, sha256, dim, vector) VALUES (?, ?, ?, ?)", rows
                )
            )
        return len(rows)

    def stats(self) -> CacheStats:
        """Entries per extractor, their vector size and description, and bytes on disk."""
        with self._lock, self._translate():
            conn = self._db
            counts = conn.execute("SELECT extractor, COUNT(*), MAX(dim) FROM bottlenecks GROUP BY extractor").fetchall()
            described = dict(conn.execute("SELECT fingerprint, description FROM extractors").fetchall())
        per = {fp: (n, dim) for fp, n, dim in counts}
        extractors = []
        for fp in sorted(set(per) | set(described)):
            try:
                description = json.loads(described[fp]) if fp in described else {}
            except ValueError:
                description = {}
            n, dim = per.get(fp, (0, 0))
            extractors.append(ExtractorStats(fp, description, int(n), int(dim or 0)))
        size = sum(p.stat().st_size for p in (self.path, Path(f"{self.path}-wal")) if p.exists())
        return CacheStats(
            path=self.path, size_bytes=size, entries=sum(e.entries for e in extractors), extractors=tuple(extractors)
        )

    def clear(self, extractor: str | None = None) -> int:
        """Remove one extractor's vectors (and registration), or everything; returns rows removed.

        A full clear also VACUUMs so the file actually shrinks on disk.
        """
        with self._lock, self._translate():
            conn = self._db

            def delete() -> int:
                if extractor is None:
                    n = conn.execute("DELETE FROM bottlenecks").rowcount
                    conn.execute("DELETE FROM extractors")
                else:
                    n = conn.execute("DELETE FROM bottlenecks WHERE extractor = ?", (extractor,)).rowcount
                    conn.execute("DELETE FROM extractors WHERE fingerprint = ?", (extractor,))
                return n

            removed = self._write(delete)
            if extractor is None:
                self._retry(lambda: conn.execute("VACUUM"))
                self._retry(lambda: conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall())
        return removed

    def check_integrity(self) -> bool:
        """True when ``PRAGMA integrity_check`` reports ``ok``."""
        with self._lock, self._translate():
            rows = self._db.execute("PRAGMA integrity_check").fetchall()
        ok = rows == [("ok",)]
        if not ok:
            log.warning("bottleneck cache %s failed integrity_check: %s", self.path, rows[:5])
        return ok

    def close(self) -> None:
        """Close the connection; safe to call twice."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> BottleneckCache:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"BottleneckCache({str(self.directory)!r})"
