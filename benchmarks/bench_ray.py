"""Scale-out benchmarks for docs/SCALE.md: Ray overhead, the driver's commit path, streaming head training.

    python benchmarks/bench_ray.py overhead IMAGE_DIR [--cpus 2]     # local pipeline vs Ray, same cores, one run
    python benchmarks/bench_ray.py commit [--vectors 50000]          # design (a) driver commits vs (b) Parquet shards
    python benchmarks/bench_ray.py stream [--rows 1000000]           # 1M synthetic 1,280-d vectors: peak RSS, time
    python benchmarks/bench_ray.py accuracy IMAGE_DIR                # streamed (fp16, fp32) vs in-memory, real images

Every Ray cluster here is started on 127.0.0.1 with a 200 MB object store per node
and shut down at the end.  Each prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

OBJECT_STORE = 200 * 1024**2


@contextmanager
def local_cluster(nodes: int, cpus_per_node: int) -> Iterator[Any]:
    """A real multi-node Ray cluster on loopback (ray.cluster_utils.Cluster), torn down afterwards."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # loopback addresses only, for the nodes' processes
    import ray
    import ray._private.ray_constants as constants
    from ray.cluster_utils import Cluster

    constants.ENABLE_RAY_CLUSTER = False  # and for this one (the variable is read when ray is imported)

    node = {"num_cpus": cpus_per_node, "object_store_memory": OBJECT_STORE, "node_ip_address": "127.0.0.1"}
    cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
    try:
        for _ in range(nodes - 1):
            cluster.add_node(**node)
        ray.init(address=cluster.address, log_to_driver=False)
        cluster.wait_for_nodes()
        yield ray
    finally:
        ray.shutdown()
        cluster.shutdown()


def fresh_cache(root: Path, models_from: Path | None) -> Path:
    root.mkdir(parents=True)
    if models_from is not None and (models_from / "models").is_dir():
        shutil.copytree(models_from / "models", root / "models")
    return root


def bench_overhead(image_dir: Path, cpus: int, nodes: int) -> dict[str, Any]:
    """The same misses, into empty caches: local pipeline, then Ray with the same cores, then local again."""
    from headstart.backbones import resolve_backbone
    from headstart.cache import BottleneckCache
    from headstart.data import index_image_dir
    from headstart.features import compute_bottlenecks
    from headstart.ray_cluster import RaySettings
    from headstart.runtimes import resolve_runtime

    index = index_image_dir(image_dir, 10, 10)
    backbone = resolve_backbone("efficientnet_lite0")
    choice = resolve_runtime()
    work = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    try:
        warm = fresh_cache(work / "warm", None)
        with BottleneckCache(warm) as cache:  # converts the backbone once, outside every timing
            compute_bottlenecks(index.records[:16], backbone, cache, runtime=choice, progress=False)

        def local(name: str) -> float:
            with BottleneckCache(fresh_cache(work / name, warm)) as cache:
                t = time.perf_counter()
                result = compute_bottlenecks(index.records, backbone, cache, runtime=choice, progress=False)
                return result.computed / (time.perf_counter() - t)

        out: dict[str, Any] = {"images": len(index.records), "runtime": choice.key, "cores": cpus,
                               "local_images_per_s": [local("local1")]}
        with local_cluster(nodes, cpus // nodes):
            for actors, cpus_per_actor in ((1, float(cpus // nodes)), (cpus, 1.0)):
                settings = RaySettings("auto", actors, 0.0, cpus_per_actor)
                with BottleneckCache(fresh_cache(work / f"ray{actors}", warm)) as cache:
                    t = time.perf_counter()
                    result = compute_bottlenecks(index.records, backbone, cache, runtime=choice, progress=False,
                                                 ray=settings)
                    rate = result.computed / (time.perf_counter() - t)
                out[f"ray_{actors}x{cpus_per_actor:g}cpu_images_per_s"] = rate
        out["local_images_per_s"].append(local("local2"))
        base = float(np.mean(out["local_images_per_s"]))
        for key in [k for k in out if k.startswith("ray_")]:
            out[key.replace("_images_per_s", "_vs_local")] = round(out[key] / base, 3)
        out["nodes"] = nodes
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def bench_commit(n: int, dim: int = 1280, batch: int = 16) -> dict[str, Any]:
    """(a) the driver's commit of returned batches; (b) Parquet shards written by workers, then indexed."""
    from collections import Counter

    import pyarrow as pa
    import pyarrow.parquet as pq

    from headstart.backbones import resolve_backbone
    from headstart.cache import BottleneckCache
    from headstart.data import ImageRecord
    from headstart.distributed import _commit

    backbone = resolve_backbone("efficientnet_lite0")
    rng = np.random.default_rng(0)
    vectors = rng.random((n, dim), dtype=np.float32)
    misses = [ImageRecord(Path(f"/x/{i}.png"), f"{i}.png", "a", "training", f"{i:064x}") for i in range(n)]
    work = Path(tempfile.mkdtemp(prefix="bench-commit-"))
    out: dict[str, Any] = {"vectors": n, "dim": dim, "batch": batch}
    try:
        with BottleneckCache(work / "a") as cache:
            fingerprints: dict[str, str] = {}
            t = time.perf_counter()
            for lo in range(0, n, batch):
                hi = min(n, lo + batch)
                _commit({"position": np.arange(lo, hi), "vector": vectors[lo:hi], "error": np.array([""] * (hi - lo)),
                         "runtime": np.array(["openvino-bf16"] * (hi - lo))}, misses, backbone, cache, None,
                        fingerprints, Counter(), [])
            out["a_driver_commit_vectors_per_s"] = n / (time.perf_counter() - t)
            out["store_bytes_per_vector"] = cache.stats().size_bytes / n
            fingerprint = next(iter(fingerprints.values()))
            t = time.perf_counter()
            for lo in range(0, n, 10_000):  # what building the training stores reads back
                cache.get_many(fingerprint, [m.sha256 for m in misses[lo:lo + 10_000]])
            out["store_read_vectors_per_s"] = n / (time.perf_counter() - t)
        # (a) through a real cluster: vectors made in Ray tasks, shipped through the object store, committed.
        with local_cluster(2, 1) as ray:
            context = ray.data.DataContext.get_current()
            context.enable_progress_bars = False

            def make(b: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
                ids = b["id"]
                g = np.random.default_rng(int(ids[0]))
                return {"position": ids, "vector": g.random((len(ids), dim), dtype=np.float32),
                        "error": np.array([""] * len(ids)), "runtime": np.array(["openvino-bf16"] * len(ids))}

            ds = ray.data.range(n, override_num_blocks=max(1, n // 256)).map_batches(make, batch_size=batch)
            ds = ds.materialize()  # produced first, so the timing is the shipping and the commit
            with BottleneckCache(work / "a2") as cache:
                fingerprints = {}
                t = time.perf_counter()
                got = 0
                for b in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2):
                    _commit(b, misses, backbone, cache, None, fingerprints, Counter(), [])
                    got += len(b["position"])
                out["a_cluster_to_driver_commit_vectors_per_s"] = got / (time.perf_counter() - t)
            # (b) workers write Parquet shards, then the driver indexes them into the store.
            shards = work / "shards"
            t = time.perf_counter()
            ds.map_batches(lambda b: {"sha256": np.array([f"{i:064x}" for i in b["position"]]),
                                      "vector": b["vector"]}, batch_size=batch).write_parquet(str(shards))
            written = time.perf_counter() - t
        with BottleneckCache(work / "b") as cache:
            t = time.perf_counter()
            rows = 0
            for shard in sorted(shards.glob("*.parquet")):
                table = pq.read_table(shard)
                matrix = np.stack(table.column("vector").to_numpy(zero_copy_only=False)).astype(np.float32)
                cache.put_many("b", zip(table.column("sha256").to_pylist(), matrix))
                rows += len(matrix)
            indexed = time.perf_counter() - t
        out["b_parquet_write_vectors_per_s"] = n / written
        out["b_index_into_store_vectors_per_s"] = rows / indexed
        out["b_total_vectors_per_s"] = n / (written + indexed)
        out["pyarrow"] = pa.__version__
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


STREAM_CHILD = r"""
import json, sys, time
import numpy as np
from headstart.stream_head import StoreWriter, StreamingHead
def hwm_kb():  # peak resident memory of this process image (ru_maxrss would include the forked parent's)
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])
rows, dim, classes, path = int(sys.argv[1]), 1280, 10, sys.argv[2]
rng = np.random.default_rng(0)
means = rng.uniform(0, 2, (classes, dim)).astype(np.float32)
t = time.perf_counter()
w, labels = StoreWriter(path, dim), []
for lo in range(0, rows, 20000):
    y = rng.integers(0, classes, min(20000, rows - lo))
    w.append(np.maximum(means[y] + rng.normal(0, 2.0, (len(y), dim)).astype(np.float32), 0))
    labels.append(y)
store, y = w.close(), np.concatenate(labels)
write_s = time.perf_counter() - t
peak_writing_mb = hwm_kb() / 1024
open("/proc/self/clear_refs", "w").write("5")  # restart the peak: what follows is training alone
val = rng.integers(0, rows, 10000)
xv, yv = store[np.sort(val)], y[np.sort(val)]
t = time.perf_counter()
head = StreamingHead(n_classes=classes, optimizer="adam", learning_rate=0.001, train_batch_size=100,
                     how_many_training_steps=1000, early_stopping=True, seed=0).fit(store, y, xv, yv)
train_s = time.perf_counter() - t
t = time.perf_counter()
accuracy = float(np.mean(head.predict(store) == y))
predict_s = time.perf_counter() - t
print(json.dumps({"rows": rows, "dim": dim, "store_bytes": store.nbytes, "store_dtype": store.dtype.name,
                  "write_s": write_s, "train_s": train_s, "steps": head.n_steps_run_, "predict_all_s": predict_s,
                  "train_accuracy_all_rows": accuracy,
                  "peak_rss_writing_mb": peak_writing_mb, "peak_rss_training_mb": hwm_kb() / 1024}))
"""


def bench_stream(rows: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bench-stream-"))
    try:
        out = subprocess.run([sys.executable, "-c", STREAM_CHILD, str(rows), str(work / "store")],
                             capture_output=True, text=True, timeout=3600)
        if out.returncode:
            raise SystemExit(out.stderr[-3000:])
        return json.loads(out.stdout)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def bench_accuracy(image_dir: Path, steps: int) -> dict[str, Any]:
    """Test accuracy of retrain on real images: in memory, streamed from fp16 stores, streamed from fp32."""
    from headstart import stream_head
    from headstart.config import RetrainConfig
    from headstart.train import retrain

    work = Path(tempfile.mkdtemp(prefix="bench-acc-"))
    out: dict[str, Any] = {"image_dir": str(image_dir), "steps": steps}
    try:
        common = dict(image_dir=image_dir, bottleneck_dir=work / "cache", how_many_training_steps=steps,
                      progress=False, write_report=False)
        memory = retrain(RetrainConfig(output_dir=work / "m", **common))
        out.update(images=sum(memory.metrics["splits"].values()), test_n=memory.test.n,
                   in_memory_accuracy=memory.test.accuracy)
        for dtype in ("float16", "float32"):
            stream_head.STORE_DTYPE = dtype
            t = time.perf_counter()
            streamed = retrain(RetrainConfig(output_dir=work / dtype, max_memory=2**20, **common))
            assert streamed.metrics["training"]["streamed"]
            out[f"streamed_{dtype}_accuracy"] = streamed.test.accuracy
            out[f"streamed_{dtype}_total_s"] = time.perf_counter() - t
        out["in_memory_total_s"] = memory.timing["total_s"]
        return out
    finally:
        stream_head.STORE_DTYPE = "float16"
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("overhead")
    p.add_argument("image_dir", type=Path)
    p.add_argument("--cpus", type=int, default=os.cpu_count() or 2)
    p.add_argument("--nodes", type=int, default=1)
    p = sub.add_parser("commit")
    p.add_argument("--vectors", type=int, default=50_000)
    p = sub.add_parser("stream")
    p.add_argument("--rows", type=int, default=1_000_000)
    p = sub.add_parser("accuracy")
    p.add_argument("image_dir", type=Path)
    p.add_argument("--steps", type=int, default=1000)
    args = parser.parse_args()
    t = time.perf_counter()
    if args.what == "overhead":
        result = bench_overhead(args.image_dir, args.cpus, args.nodes)
    elif args.what == "commit":
        result = bench_commit(args.vectors)
    elif args.what == "stream":
        result = bench_stream(args.rows)
    else:
        result = bench_accuracy(args.image_dir, args.steps)
    result["bench_s"] = round(time.perf_counter() - t, 1)
    result["driver_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result, indent=1, default=float))


if __name__ == "__main__":
    main()
