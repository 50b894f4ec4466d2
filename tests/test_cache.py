"""Tests for the bottleneck store (headstart/cache.py).

Real data: scikit-learn's digits images serve as vectors, keyed by the sha256 of
their bytes, just as features.py keys photos.  Crash and concurrency tests run
real child processes against one cache directory.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from headstart.cache import BottleneckCache, CacheStats, default_cache_dir
from headstart.errors import CacheError

REPO = Path(__file__).resolve().parents[1]
FP_A = "tf_efficientnet_lite0:weights=ab12:pre=224c:runtime=onnx:fp32"
FP_B = "tf_efficientnet_lite0:weights=ab12:pre=224c:runtime=openvino:bf16"


@pytest.fixture(scope="module")
def digits() -> tuple[list[str], np.ndarray]:
    """(sha256 of each image's bytes, image as a 64-dim float32 vector) for 1,797 real digits."""
    from sklearn.datasets import load_digits  # here, so spawned writer children start fast

    images = load_digits().images.astype(np.float32)
    shas = [hashlib.sha256(img.tobytes()).hexdigest() for img in images]
    keep = dict(zip(shas, images.reshape(len(images), -1)))  # a few digits are identical
    return list(keep), np.stack(list(keep.values()))


@pytest.fixture
def cache(tmp_path: Path):
    with BottleneckCache(tmp_path / "bottlenecks") as c:
        yield c


def test_hit_and_miss(cache: BottleneckCache, digits) -> None:
    shas, vecs = digits
    assert cache.put_many(FP_A, zip(shas[:100], vecs[:100])) == 100
    got = cache.get_many(FP_A, shas[:150])
    assert set(got) == set(shas[:100])
    for sha, vec in zip(shas[:100], vecs[:100]):
        assert got[sha].dtype == np.float32 and got[sha].shape == (64,)
        np.testing.assert_array_equal(got[sha], vec)
    assert cache.get_many(FP_A, []) == {}
    assert cache.get_many(FP_A, ["0" * 64]) == {}


def test_returned_vectors_are_writable_copies(cache: BottleneckCache, digits) -> None:
    shas, vecs = digits
    cache.put_many(FP_A, [(shas[0], vecs[0])])
    v = cache.get_many(FP_A, [shas[0]])[shas[0]]
    v += 1  # must not raise (read-only buffer) nor change the store
    np.testing.assert_array_equal(cache.get_many(FP_A, [shas[0]])[shas[0]], vecs[0])


def test_many_keys_chunked_and_duplicates(cache: BottleneckCache) -> None:
    """More keys than SQLite's variable limit, duplicates in the request."""
    rng = np.random.default_rng(0)
    shas = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(2500)]
    vecs = rng.standard_normal((2500, 1280)).astype(np.float32)
    cache.put_many(FP_A, zip(shas, vecs))
    got = cache.get_many(FP_A, shas + shas[:10])
    assert len(got) == 2500
    np.testing.assert_array_equal(got[shas[2499]], vecs[2499])


def test_float64_input_stored_as_float32_and_bad_shape_rejected(cache: BottleneckCache) -> None:
    v = np.linspace(0, 1, 7)
    cache.put_many(FP_A, [("a" * 64, v)])
    np.testing.assert_array_equal(cache.get_many(FP_A, ["a" * 64])["a" * 64], v.astype(np.float32))
    with pytest.raises(ValueError, match="1-D"):
        cache.put_many(FP_A, [("b" * 64, np.zeros((2, 3)))])
    assert cache.put_many(FP_A, []) == 0


def test_overwrite(cache: BottleneckCache, digits) -> None:
    shas, vecs = digits
    cache.put_many(FP_A, [(shas[0], vecs[0])])
    cache.put_many(FP_A, [(shas[0], vecs[1])])
    np.testing.assert_array_equal(cache.get_many(FP_A, [shas[0]])[shas[0]], vecs[1])
    assert cache.stats().entries == 1


def test_extractors_do_not_mix(cache: BottleneckCache, digits) -> None:
    shas, vecs = digits
    cache.put_many(FP_A, zip(shas[:10], vecs[:10]))
    cache.put_many(FP_B, zip(shas[:5], vecs[10:15]))
    a = cache.get_many(FP_A, shas[:10])
    b = cache.get_many(FP_B, shas[:10])
    assert len(a) == 10 and len(b) == 5
    np.testing.assert_array_equal(a[shas[0]], vecs[0])
    np.testing.assert_array_equal(b[shas[0]], vecs[10])


def test_persists_across_reopen(tmp_path: Path, digits) -> None:
    shas, vecs = digits
    with BottleneckCache(tmp_path) as c:
        c.put_many(FP_A, zip(shas, vecs))
    with BottleneckCache(tmp_path) as c:
        got = c.get_many(FP_A, shas)
    np.testing.assert_array_equal(np.stack([got[s] for s in shas]), vecs)


def test_stats(cache: BottleneckCache, digits) -> None:
    shas, vecs = digits
    desc = {"backbone": "tf_efficientnet_lite0", "runtime": "onnx", "precision": "fp32"}
    cache.register_extractor(FP_A, desc)
    cache.register_extractor(FP_B, {"backbone": "x"})  # registered, nothing stored yet
    cache.put_many(FP_A, zip(shas[:30], vecs[:30]))
    cache.put_many("unregistered", [(shas[0], np.ones(3))])
    st = cache.stats()
    assert isinstance(st, CacheStats)
    assert st.path == cache.path and st.path.name == "bottlenecks.sqlite"
    assert st.size_bytes > 30 * 64 * 4
    assert st.entries == 31
    by_fp = {e.fingerprint: e for e in st.extractors}
    assert by_fp[FP_A].description == desc
    assert (by_fp[FP_A].entries, by_fp[FP_A].dim) == (30, 64)
    assert (by_fp[FP_B].entries, by_fp[FP_B].dim) == (0, 0)
    assert by_fp["unregistered"].description == {} and by_fp["unregistered"].dim == 3


def test_clear_one_extractor_then_all(cache: BottleneckCache) -> None:
    rng = np.random.default_rng(1)
    shas = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(500)]
    vecs = rng.standard_normal((500, 1280)).astype(np.float32)
    cache.register_extractor(FP_A, {"backbone": "a"})
    cache.put_many(FP_A, zip(shas, vecs))
    cache.put_many(FP_B, zip(shas[:100], vecs[:100]))
    big = cache.stats().size_bytes

    assert cache.clear(FP_A) == 500
    assert cache.get_many(FP_A, shas) == {}
    assert len(cache.get_many(FP_B, shas)) == 100
    assert [e.fingerprint for e in cache.stats().extractors] == [FP_B]

    assert cache.clear() == 100
    st = cache.stats()
    assert st.entries == 0 and st.extractors == ()
    assert st.size_bytes < big / 10, "VACUUM after a full clear must shrink the file"
    assert cache.clear() == 0
    cache.put_many(FP_A, [(shas[0], vecs[0])])  # still usable after VACUUM
    assert cache.check_integrity()


def test_corrupt_blob_is_treated_as_missing(cache: BottleneckCache, digits, caplog) -> None:
    shas, vecs = digits
    cache.put_many(FP_A, zip(shas[:3], vecs[:3]))
    with sqlite3.connect(cache.path) as raw:  # a torn / tampered row
        raw.execute("UPDATE bottlenecks SET vector = substr(vector, 1, 10) WHERE sha256 = ?", (shas[1],))
        raw.execute("UPDATE bottlenecks SET dim = 65 WHERE sha256 = ?", (shas[2],))
    raw.close()
    with caplog.at_level(logging.WARNING, logger="headstart"):
        got = cache.get_many(FP_A, shas[:3])
    assert list(got) == [shas[0]]
    assert "2 corrupt vector" in caplog.text


def test_not_a_database_file(tmp_path: Path) -> None:
    (tmp_path / BottleneckCache.FILENAME).write_bytes(b"this is a JPEG, honest\n" * 200)
    with pytest.raises(CacheError) as err:
        BottleneckCache(tmp_path)
    assert str(tmp_path / BottleneckCache.FILENAME) in str(err.value)
    assert "\n" not in str(err.value)
    assert "headstart cache clear" in err.value.hint and "--bottleneck_dir" in err.value.hint


def test_directory_under_a_regular_file(tmp_path: Path) -> None:
    """Uncreatable directory: its parent is a file (NotADirectoryError), which stops root too."""
    blocker = tmp_path / "photo.jpg"
    blocker.write_bytes(b"x")
    with pytest.raises(CacheError) as err:
        BottleneckCache(blocker / "bottlenecks")
    assert str(blocker / "bottlenecks") in str(err.value)
    assert "--bottleneck_dir" in err.value.hint


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
def test_existing_directory_where_no_file_can_be_created() -> None:
    """Read-only directory that exists: /proc refuses new files even to root."""
    with pytest.raises(CacheError) as err:
        BottleneckCache("/proc")
    assert "/proc/bottlenecks.sqlite" in str(err.value)
    assert "--bottleneck_dir" in err.value.hint


def test_disk_full(cache: BottleneckCache) -> None:
    """SQLITE_FULL (the same error a full disk gives), made real with max_page_count."""
    rng = np.random.default_rng(2)
    cache.put_many(FP_A, [("0" * 64, np.ones(1280))])
    pages = cache._db.execute("PRAGMA page_count").fetchone()[0]
    cache._db.execute(f"PRAGMA max_page_count = {pages + 2}")
    batch = [(f"{i:064x}", rng.standard_normal(1280)) for i in range(1, 200)]
    with pytest.raises(CacheError, match="disk is full") as err:
        cache.put_many(FP_A, batch)
    assert str(cache.path) in str(err.value)
    assert "headstart cache clear" in err.value.hint
    # The failed batch left nothing behind and the store still works.
    assert cache.stats().entries == 1
    assert cache.check_integrity()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    with BottleneckCache(tmp_path) as c:
        c._db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(CacheError, match="schema version 99") as err:
        BottleneckCache(tmp_path)
    assert "upgrade headstart" in err.value.hint


def test_wal_mode_and_integrity(cache: BottleneckCache, digits) -> None:
    shas, vecs = digits
    cache.put_many(FP_A, zip(shas, vecs))
    raw = sqlite3.connect(cache.path)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        raw.close()
    assert Path(f"{cache.path}-wal").exists()
    assert cache._db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert cache.check_integrity()


def test_closed_cache_raises_and_close_is_idempotent(tmp_path: Path) -> None:
    c = BottleneckCache(tmp_path)
    c.close()
    c.close()
    with pytest.raises(CacheError, match="closed"):
        c.get_many(FP_A, ["a"])


def test_default_cache_dir(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HEADSTART_CACHE_DIR", str(tmp_path / "here"))
    assert default_cache_dir() == tmp_path / "here"
    with BottleneckCache() as c:
        assert c.path == tmp_path / "here" / "bottlenecks.sqlite"
    monkeypatch.delenv("HEADSTART_CACHE_DIR")
    assert "headstart" in str(default_cache_dir())


def test_threads_share_one_instance(cache: BottleneckCache) -> None:
    rng = np.random.default_rng(3)
    vecs = rng.standard_normal((8, 50, 32)).astype(np.float32)
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(50):
                cache.put_many(FP_A, [(f"t{t}-{i}", vecs[t, i])])
                assert f"t{t}-{i}" in cache.get_many(FP_A, [f"t{t}-{i}"])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert cache.stats().entries == 400


# ---------------------------------------------------------------- processes
N_BATCHES, BATCH, DIM = 100, 40, 256


def _batch(worker: int, b: int) -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng([worker, b])
    return [
        (hashlib.sha256(f"{worker}/{b}/{i}".encode()).hexdigest(), rng.standard_normal(DIM).astype(np.float32))
        for i in range(BATCH)
    ]


def _writer(directory: str, worker: int, start) -> None:
    """Child process: open the shared cache and write batches, reading back as it goes."""
    start.wait(60)  # both create the fresh database and write at the same moment
    with BottleneckCache(directory, timeout=60) as c:
        c.register_extractor(FP_A, {"backbone": "digits", "worker": worker})
        for b in range(N_BATCHES):
            items = _batch(worker, b)
            c.put_many(FP_A, items)
            c.get_many(FP_A, [sha for sha, _ in items])


def test_two_processes_write_concurrently(tmp_path: Path) -> None:
    """Both spawn-started writers finish on a fresh directory and every row is there."""
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(2)
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), w, start)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    with BottleneckCache(tmp_path) as c:
        assert c.check_integrity()
        assert c.stats().entries == 2 * N_BATCHES * BATCH
        for w in range(2):
            for b in (0, N_BATCHES - 1):
                items = _batch(w, b)
                got = c.get_many(FP_A, [sha for sha, _ in items])
                for sha, vec in items:
                    np.testing.assert_array_equal(got[sha], vec)


_KILL_CHILD = """
import sys, numpy as np
from headstart.cache import BottleneckCache
c = BottleneckCache(sys.argv[1])
for b in range(100000):
    rng = np.random.default_rng(b)
    vecs = rng.standard_normal((500, 1280)).astype(np.float32)
    c.put_many("fp", ((f"{b:06d}-{i:03d}", v) for i, v in enumerate(vecs)))
    print(b, flush=True)
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_mid_write_keeps_committed_batches(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    committed = -1
    with subprocess.Popen(
        [sys.executable, "-c", _KILL_CHILD, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env
    ) as child:
        try:
            assert child.stdout is not None
            for line in child.stdout:  # a line is printed only after its batch committed
                committed = int(line)
                if committed >= 5:
                    break
        finally:
            child.send_signal(signal.SIGKILL)  # lands while the next batch is being written
            child.wait(30)
    assert child.returncode == -signal.SIGKILL
    assert committed >= 5, "child died before committing anything"

    with BottleneckCache(tmp_path) as c:
        assert c.check_integrity()
        n = c.stats().entries
        assert n % 500 == 0, "a batch was half written"
        assert n >= (committed + 1) * 500
        for b in range(committed + 1):
            keys = [f"{b:06d}-{i:03d}" for i in range(500)]
            got = c.get_many("fp", keys)
            assert len(got) == 500
        expected = np.random.default_rng(committed).standard_normal((500, 1280)).astype(np.float32)
        np.testing.assert_array_equal(got[keys[-1]], expected[-1])


def test_lock_held_past_timeout_is_a_clear_error(tmp_path: Path) -> None:
    """Another process holding the write lock longer than ``timeout``: CacheError, not a hang."""
    with BottleneckCache(tmp_path, timeout=0.2) as c:
        other = sqlite3.connect(c.path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            with pytest.raises(CacheError, match="locked") as err:
                c.put_many(FP_A, [("a" * 64, np.ones(4))])
            assert "--bottleneck_dir" in err.value.hint
            assert c.get_many(FP_A, ["a" * 64]) == {}  # readers are not blocked in WAL
            other.execute("COMMIT")
        finally:
            other.close()
        assert c.put_many(FP_A, [("a" * 64, np.ones(4))]) == 1
