"""Bottlenecks on a real multi-node Ray cluster (headstart.distributed).

Every cluster test starts two Ray nodes on 127.0.0.1 (``ray.cluster_utils.Cluster``:
separate raylet and worker processes, one CPU and a 200 MB object store each) and
tears them down afterwards.  Images are real Fashion-MNIST photos.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from clitools import assert_one_line_error, run_cli

from headstart.backbones import resolve_backbone
from headstart.cache import BottleneckCache
from headstart.data import index_image_dir
from headstart.features import compute_bottlenecks
from headstart.runtimes import RuntimeChoice

CLASSES = ("Bag", "Coat", "Sandal", "Trouser")
OBJECT_STORE = 200 * 1024**2
EXACT = RuntimeChoice("openvino", "fp32")  # one runtime and precision on both sides: bit-for-bit


# ---------------------------------------------------------------- without a cluster


def test_missing_ray_is_one_line_naming_the_extra(tmp_path: Path, fashion_dir: Path) -> None:
    blocker = tmp_path / "blocked"
    (blocker / "ray").mkdir(parents=True)
    (blocker / "ray" / "__init__.py").write_text("raise ImportError('No module named ray')\n")
    result = run_cli("retrain", "--image_dir", fashion_dir, "--ray", "auto", "--bottleneck_dir", tmp_path / "c",
                     env={"PYTHONPATH": str(blocker)})
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "--ray needs Ray")
    assert 'pip install "headstart[ray]"' in result.stderr


def test_bad_ray_flags_are_usage_errors(tmp_path: Path, fashion_dir: Path) -> None:
    result = run_cli("retrain", "--image_dir", fashion_dir, "--ray", "nowhere", "--bottleneck_dir", tmp_path)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "--ray must be auto, local")
    result = run_cli("retrain", "--image_dir", fashion_dir, "--max_memory", "lots", "--bottleneck_dir", tmp_path)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "--max_memory")


def test_the_pool_fits_the_cluster() -> None:
    from headstart.errors import UsageError
    from headstart.ray_cluster import RaySettings, plan_pool

    nodes = [{"Alive": True, "Resources": {"CPU": 16.0}}, {"Alive": True, "Resources": {"CPU": 8.0, "GPU": 2.0}},
             {"Alive": False, "Resources": {"CPU": 64.0}}]
    whole = plan_pool(nodes, RaySettings("auto"))
    assert (whole.wanted, whole.nodes, whole.cpus_per_actor) == (3, 2, 8.0)  # 16 // 8 + 8 // 8
    cores = plan_pool(nodes, RaySettings("auto", cpus_per_actor=1.0))
    assert (cores.wanted, cores.now) == (24, 24)
    gpus = plan_pool(nodes, RaySettings("auto", actors=4, gpus_per_actor=1.0))
    assert (gpus.wanted, gpus.now, gpus.cpus_per_actor) == (4, 2, 1.0)  # the rest wait for an autoscaler
    with pytest.raises(UsageError, match="2 GPU"):
        plan_pool(nodes, RaySettings("auto", gpus_per_actor=4.0))
    with pytest.raises(UsageError, match="32 CPU"):
        plan_pool(nodes, RaySettings("auto", cpus_per_actor=32.0))


# ---------------------------------------------------------------- the cluster


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """Two Ray nodes on loopback, connected; shut down after the test whatever happens."""
    ray = pytest.importorskip("ray", reason="the [ray] extra is not installed")
    from ray.cluster_utils import Cluster

    # Ray would advertise the machine's outward address; loopback only here (this process and its children).
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    monkeypatch.setattr(ray._private.ray_constants, "ENABLE_RAY_CLUSTER", False)
    node = {"num_cpus": 1, "object_store_memory": OBJECT_STORE, "node_ip_address": "127.0.0.1"}
    made = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
    try:
        made.add_node(**node)
        ray.init(address=made.address, log_to_driver=False)
        made.wait_for_nodes()
        yield made
    finally:
        ray.shutdown()
        made.shutdown()


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory, fashion_dir: Path) -> Path:
    """120 real images in four classes, and one file that is not an image."""
    root = tmp_path_factory.mktemp("ray") / "photos"
    for name in CLASSES:
        shutil.copytree(fashion_dir / name, root / name)
    (root / "Bag" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return root


def _models(cache_dir: Path, shared_cache_dir: Path) -> Path:
    """A fresh cache that already holds the converted backbone (linked from the session's cache)."""
    cache_dir.mkdir(parents=True)
    models = shared_cache_dir / "models"
    if models.is_dir():
        shutil.copytree(models, cache_dir / "models", dirs_exist_ok=True)
    return cache_dir


def _settings(actors: int | None = None):
    from headstart.ray_cluster import RaySettings

    return RaySettings("auto", actors)  # "auto" is never dialled: the test's connection is used


@pytest.mark.slow
def test_cluster_vectors_equal_local_bit_for_bit(cluster, photos: Path, tmp_path: Path, shared_cache_dir: Path,
                                                 trained_run, fashion_holdout_dir: Path) -> None:
    index = index_image_dir(photos, 10, 10)
    backbone = resolve_backbone("efficientnet_lite0")
    with BottleneckCache(_models(tmp_path / "local", shared_cache_dir)) as cache:
        local = compute_bottlenecks(index.records, backbone, cache, runtime=EXACT, progress=False)
    with BottleneckCache(_models(tmp_path / "ray", shared_cache_dir)) as cache:
        remote = compute_bottlenecks(index.records, backbone, cache, runtime=EXACT, progress=False,
                                     ray=_settings(actors=2))
        again = compute_bottlenecks(index.records, backbone, cache, runtime=EXACT, progress=False,
                                    ray=_settings())
        # Another runtime on the nodes (auto: bf16 where the CPU has it) is another fingerprint, never mixed in.
        auto = compute_bottlenecks(index.records, backbone, cache, progress=False, ray=_settings())
    assert [r.sha256 for r in remote.records] == [r.sha256 for r in local.records]
    assert np.array_equal(remote.vectors, local.vectors)
    assert remote.extractor == local.extractor and remote.runtime == EXACT
    assert remote.computed == len(local.records) and remote.cached == 0
    assert [(s.path, s.reason) for s in remote.skipped] == [(s.path, s.reason) for s in local.skipped]
    assert [s.path.name for s in remote.skipped] == ["broken.png"]
    assert again.computed == 0 and again.cached == len(index.records) - 1
    assert np.array_equal(again.vectors, local.vectors)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    cosine = np.sum(unit(auto.vectors) * unit(local.vectors), axis=1)
    assert cosine.min() >= 0.99
    if auto.runtime != EXACT:
        assert auto.extractor != local.extractor and auto.computed == len(local.records)
    # A runtime the nodes lack fails in one line that says which, after Ray's retries, with nothing stored.
    from headstart.errors import HeadstartError

    with BottleneckCache(_models(tmp_path / "cuda", shared_cache_dir)) as cache:
        with pytest.raises(HeadstartError, match="cuda"):
            compute_bottlenecks(index.records[:8], backbone, cache, runtime="cuda", progress=False, ray=_settings())
    # evaluate --ray: the model's own runtime on the nodes, the same metrics as a local evaluation.
    from headstart.inference import evaluate

    here = evaluate(trained_run.run_dir, fashion_holdout_dir, bottleneck_dir=_models(tmp_path / "e1", shared_cache_dir),
                    progress=False)
    there = evaluate(trained_run.run_dir, fashion_holdout_dir, progress=False, ray=_settings(),
                     bottleneck_dir=_models(tmp_path / "e2", shared_cache_dir))
    assert there.evaluation.to_dict() == here.evaluation.to_dict() and here.evaluation.n == 100


def _worker_pids() -> list[int]:
    import psutil

    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info.get("cmdline") or [])
        if "MapBatches(Extractor)" in cmdline:
            found.append(proc.info["pid"])
    return found


def _rows(cache_dir: Path) -> int:
    import sqlite3

    db = cache_dir / BottleneckCache.FILENAME
    if not db.exists():
        return 0
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.2)
        try:
            return con.execute("SELECT COUNT(*) FROM bottlenecks").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return 0


@pytest.mark.slow
def test_a_killed_worker_is_replaced_and_the_run_completes(cluster, fashion_dir: Path, tmp_path: Path,
                                                         shared_cache_dir: Path) -> None:
    index = index_image_dir(fashion_dir, 10, 10)
    backbone = resolve_backbone("efficientnet_lite0")
    cache_dir = _models(tmp_path / "ray", shared_cache_dir)
    total = len(index.records)
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            with BottleneckCache(cache_dir) as cache:
                outcome["result"] = compute_bottlenecks(index.records, backbone, cache, runtime=EXACT,
                                                        batch_size=8, progress=False, ray=_settings(actors=2))
        except BaseException as exc:  # reported by the assertion below
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    killed, rows_at_kill = None, None
    deadline = time.monotonic() + 300
    while thread.is_alive() and time.monotonic() < deadline and killed is None:
        pids = _worker_pids()
        if pids and _rows(cache_dir) > 0:
            rows_at_kill = _rows(cache_dir)
            killed = pids[0]
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.05)
    thread.join(timeout=600)
    assert killed is not None and rows_at_kill is not None and rows_at_kill < total, "no worker was killed mid-run"
    assert "error" not in outcome, outcome.get("error")
    result = outcome["result"]
    assert len(result.records) == total and not result.skipped
    with BottleneckCache(_models(tmp_path / "local", shared_cache_dir)) as cache:
        local = compute_bottlenecks(index.records, backbone, cache, runtime=EXACT, progress=False)
    assert np.array_equal(result.vectors, local.vectors)


@pytest.mark.slow
def test_a_killed_driver_resumes_with_only_the_rest(cluster, fashion_dir: Path, tmp_path: Path,
                                                   shared_cache_dir: Path) -> None:
    cache_dir = _models(tmp_path / "cache", shared_cache_dir)
    total = len(index_image_dir(fashion_dir, 10, 10).records)
    command = [sys.executable, "-m", "headstart", "retrain", "--image_dir", str(fashion_dir), "--bottleneck_dir",
               str(cache_dir), "--ray", cluster.address, "--ray_actors", "1", "--runtime", "openvino",
               "--precision", "fp32", "--how_many_training_steps", "50", "--no_report", "--format", "json"]
    env = {**os.environ, "HEADSTART_DEBUG": ""}
    driver = subprocess.Popen([*command, "--output_dir", str(tmp_path / "first")], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    try:
        while driver.poll() is None and time.monotonic() < deadline and _rows(cache_dir) == 0:
            time.sleep(0.05)
        assert driver.poll() is None, driver.communicate()[1].decode()[-2000:]
        driver.send_signal(signal.SIGKILL)
    finally:
        driver.wait(timeout=60)
    committed = _rows(cache_dir)
    assert 0 < committed < total
    # The rerun also trains past a tiny --max_memory: vectors from the store, streamed to the head.
    second = subprocess.run([*command, "--output_dir", str(tmp_path / "second"), "--max_memory", "1MiB"], env=env,
                            capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    summary = json.loads(second.stdout)
    assert summary["bottlenecks"]["cached"] == committed
    assert summary["bottlenecks"]["computed"] == total - committed
    assert summary["bottlenecks"]["skipped"] == 0
    assert summary["training"]["streamed"] is True and summary["test"]["n"] > 0
    assert _rows(cache_dir) == total


# ---------------------------------------------------------------- training beyond memory (no cluster)


def _synthetic(n: int, dim: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Bottleneck-like vectors: non-negative, a mean per class plus noise."""
    rng = np.random.default_rng(seed)
    means = rng.uniform(0, 2, (classes, dim)).astype(np.float32)
    y = rng.integers(0, classes, n)
    x = np.maximum(means[y] + rng.normal(0, 0.8, (n, dim)).astype(np.float32), 0)
    return x.astype(np.float32), y


def test_store_reads_exactly_the_rows_asked(tmp_path: Path) -> None:
    from headstart.stream_head import VectorStore, write_store

    x, _ = _synthetic(500, 24, 3, 1)
    for dtype in ("float32", "float16"):
        store = write_store(tmp_path / f"x.{dtype}", [x[:123], x[123:]], 24, dtype)
        expected = x.astype(dtype).astype(np.float32)
        idx = np.array([499, 0, 7, 7, 8, 9, 250, -1, 3])
        assert np.array_equal(store[idx], expected[idx])
        assert np.array_equal(store[10:40], expected[10:40])
        assert np.array_equal(np.asarray(store), expected)
        assert store.shape == (500, 24) and VectorStore(store.path).rows == 500
        with pytest.raises(IndexError):
            store[np.array([500])]
    torn = tmp_path / "x.float32"
    torn.write_bytes(torn.read_bytes()[:-5])
    with pytest.raises(Exception, match="does not hold 500 rows"):
        VectorStore(torn)


class _CountingStore:
    """Wraps a store and counts the rows read from it."""

    def __init__(self, store) -> None:
        self.store, self.read, self.shape = store, 0, store.shape

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, index):
        rows = self.store[index]
        self.read += len(rows)
        return rows


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_streaming_draws_the_same_batches_and_weights_as_memory(tmp_path: Path, dtype: str) -> None:
    from headstart.head import SoftmaxHead
    from headstart.stream_head import StreamingHead, write_store

    x, y = _synthetic(3000, 64, 5, 2)
    xv, yv = _synthetic(300, 64, 5, 3)
    store = write_store(tmp_path / "train", [x], 64, dtype)
    params = dict(n_classes=5, optimizer="adam", learning_rate=0.01, train_batch_size=50, how_many_training_steps=300,
                  eval_step_interval=50, dropout=0.2, early_stopping=True, seed=7)
    memory = SoftmaxHead(**params).fit(x.astype(dtype).astype(np.float32), y, xv, yv)
    counted = _CountingStore(store)

    class Counting(StreamingHead):
        def _training_features(self, X):
            return counted if X is store else super()._training_features(X)

    streamed = Counting(**params).fit(store, y, xv, yv)
    assert counted.read == streamed.n_steps_run_ * 50  # only the rows the sampler drew, one batch per step
    assert memory.weights_.keys() == streamed.weights_.keys()
    for name in memory.weights_:
        assert np.array_equal(memory.weights_[name], streamed.weights_[name]), name
    assert [s.cross_entropy for s in memory.history_] == [s.cross_entropy for s in streamed.history_]
    plain = StreamingHead(**params).fit(store, y, xv, yv)
    assert np.array_equal(plain.predict_proba(store), memory.predict_proba(np.asarray(store)))


@pytest.mark.slow  # trains on 1M generated vectors
def test_streaming_training_keeps_resident_memory_bounded(tmp_path: Path) -> None:
    """A child process writes 100,000 x 1,280 vectors (a 256 MB store, 512 MB as float32) and trains on them."""
    script = f"""
import numpy as np
from headstart.stream_head import StoreWriter, StreamingHead
def hwm_kb():  # peak resident memory of this process image (ru_maxrss would include the forked parent's)
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])
rng = np.random.default_rng(0)
means = rng.uniform(0, 2, (10, 1280)).astype(np.float32)
w = StoreWriter({str(tmp_path / 'big')!r}, 1280)
labels = []
for _ in range(25):
    y = rng.integers(0, 10, 4000)
    w.append(np.maximum(means[y] + rng.normal(0, 1.0, (4000, 1280)).astype(np.float32), 0))
    labels.append(y)
store, y = w.close(), np.concatenate(labels)
before = hwm_kb()
head = StreamingHead(n_classes=10, optimizer="adam", learning_rate=0.001, train_batch_size=100,
                     how_many_training_steps=300, seed=0).fit(store, y)
accuracy = float(np.mean(head.predict(store) == y))
print(before, hwm_kb(), accuracy, store.nbytes)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    before_kb, peak_kb, accuracy, nbytes = result.stdout.split()
    matrix = 100_000 * 1280 * 4
    assert int(nbytes) == matrix // 2
    assert int(peak_kb) * 1024 < matrix / 2  # never near the matrix it would have held in memory
    assert int(peak_kb) - int(before_kb) < 64 * 1024  # training itself adds less than 64 MiB
    assert float(accuracy) > 0.9


def test_retrain_streams_past_max_memory_with_the_same_weights(tmp_path: Path, fashion_dir: Path,
                                                               shared_cache_dir: Path, trained_run,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from headstart import stream_head
    from headstart.bundle import load_bundle
    from headstart.config import RetrainConfig
    from headstart.train import retrain

    monkeypatch.setattr(stream_head, "MIN_EXTRACT_CHUNK", 64)  # several extraction chunks on 300 images
    monkeypatch.setattr(stream_head, "STORE_DTYPE", "float32")  # the same numbers as in memory
    common = dict(image_dir=fashion_dir, bottleneck_dir=shared_cache_dir, how_many_training_steps=200,
                  progress=False, write_report=False)
    memory = retrain(RetrainConfig(output_dir=tmp_path / "memory", **common))
    streamed = retrain(RetrainConfig(output_dir=tmp_path / "streamed", max_memory=2**20, **common))
    assert memory.metrics["training"]["streamed"] is False and streamed.metrics["training"]["streamed"] is True
    assert streamed.bottlenecks["computed"] == 0  # the vectors came from the cache
    a, b = load_bundle(memory.run_dir).head_tensors, load_bundle(streamed.run_dir).head_tensors
    for name in ("final.weight", "final.bias"):
        assert np.array_equal(a[name], b[name]), name
    assert streamed.test.accuracy == memory.test.accuracy and streamed.test.n == memory.test.n
    assert np.allclose(a["novelty.class_means"], b["novelty.class_means"], atol=1e-5)
