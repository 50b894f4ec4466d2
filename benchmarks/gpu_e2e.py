"""End to end on a CUDA GPU, from image files to cached bottlenecks: CPU decoding against GPU decoding.

    python benchmarks/gpu_e2e.py photos=/tmp/photos phone=/tmp/phone fashion=/tmp/fashion \
        [--batch_size 128] [--workers 16] [--readers 8]

For each folder, in one process, with one network (EfficientNet-Lite0, 224 px,
crop_pct 1.0, CUDA fp16 channels-last, built once and not timed):

* ``cpu``: ``compute_bottlenecks(decode="processes")`` with the CUDA runner,
  what ``headstart bench extract --runtime cuda`` times (pool start-up included);
* ``gpu``: :func:`headstart.gpu_decode.run_gpu_pipeline` (reading threads,
  nvJPEG, resize on the device, the same network) committing every batch to a
  ``BottleneckCache``, which is what ``compute_bottlenecks(decode="gpu")`` does;
  when that mode is wired into ``compute_bottlenecks`` it is timed as well;
* ``agreement``: per-image cosine between the two runs' vectors (all images),
  and the mean absolute pixel difference between GPU and CPU decoding on a sample.

Both runs write into a fresh (cold) cache; hashing the files is not timed (as
in bench extract).  Before the timed runs, one untimed run over the first two
batches warms cuDNN and nvJPEG.  Prints one JSON object.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def gpu_extractor(backbone, choice) -> str:
    """The cache key of GPU-decoded vectors: the CPU key plus the GPU decoder's id."""
    from headstart.features import extractor_fingerprint
    from headstart.gpu_decode import decoder_id

    if "decoder" in inspect.signature(extractor_fingerprint).parameters:
        return extractor_fingerprint(backbone, choice, decoder=decoder_id())
    base = extractor_fingerprint(backbone, choice)
    return hashlib.sha256(f"{base}|decoder:{decoder_id()}".encode()).hexdigest()[:16]


def gpu_bottlenecks(records, backbone, cache, module, choice, batch_size: int, readers: int | None,
                    device: str = "cuda"):
    """compute_bottlenecks' cache protocol around run_gpu_pipeline: look up, compute the misses, commit per batch."""
    from headstart.gpu_decode import run_gpu_pipeline

    extractor = gpu_extractor(backbone, choice)
    cache.register_extractor(extractor, {**backbone.describe(), "runtime": choice.runtime,
                                         "precision": choice.precision, "decoder": "gpu"})
    found = cache.get_many(extractor, [r.sha256 for r in records])
    misses, seen = [], set()
    for r in records:
        if r.sha256 not in found and r.sha256 not in seen:
            seen.add(r.sha256)
            misses.append(r)
    skipped: list[str] = []

    def store(positions, vectors) -> None:
        cache.put_many(extractor, [(misses[p].sha256, vectors[i]) for i, p in enumerate(positions)])

    stats = run_gpu_pipeline([r.path for r in misses], backbone.preprocessing, module, batch_size, store,
                             lambda p, reason: skipped.append(reason), readers=readers, device=device)
    return extractor, stats, skipped


def measure_kind(name: str, folder: Path, backbone, module, runner, choice, args) -> dict:
    import torch

    from headstart.bench import list_image_records
    from headstart.cache import BottleneckCache
    from headstart.data import load_image
    from headstart.features import DECODE_MODES, compute_bottlenecks, extractor_fingerprint
    from headstart.gpu_decode import decode_files

    records = list_image_records(folder, workers=os.cpu_count() or 4)
    out: dict = {"images": len(records), "batch_size": args.batch_size}
    warm = records[: 2 * args.batch_size]
    with tempfile.TemporaryDirectory() as tmp, BottleneckCache(tmp) as cache:  # untimed warm-up
        compute_bottlenecks(warm, backbone, cache, runtime=choice, batch_size=args.batch_size,
                            workers=args.workers, progress=False, runner=runner, decode="processes")
        gpu_bottlenecks(warm, backbone, cache, module, choice, args.batch_size, args.readers, args.device)
    with tempfile.TemporaryDirectory() as tmp, BottleneckCache(tmp) as cache:
        start = time.perf_counter()
        result = compute_bottlenecks(records, backbone, cache, runtime=choice, batch_size=args.batch_size,
                                     workers=args.workers, progress=False, runner=runner, decode="processes")
        seconds = time.perf_counter() - start
        out["cpu"] = {"decode": f"processes x{args.workers}", "seconds": round(seconds, 2),
                      "images_per_s": round(len(records) / seconds, 1), "skipped": len(result.skipped)}
        cuda = args.device == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        extractor, stats, skipped = gpu_bottlenecks(records, backbone, cache, module, choice, args.batch_size,
                                                    args.readers, args.device)
        seconds = time.perf_counter() - start
        out["gpu"] = {"decode": "nvjpeg" if cuda else "libjpeg-turbo (CPU check)", "seconds": round(seconds, 2),
                      "images_per_s": round(len(records) / seconds, 1),
                      "routes": {"nvjpeg": stats.nvjpeg, "pixels": stats.pixels, "cpu": stats.cpu,
                                 "skipped": stats.skipped},
                      "peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None}
        out["gpu_over_cpu"] = round(out["gpu"]["images_per_s"] / out["cpu"]["images_per_s"], 2)
        shas = [r.sha256 for r in records]
        cpu_vectors = cache.get_many(extractor_fingerprint(backbone, choice), shas)
        gpu_vectors = cache.get_many(extractor, shas)
        both = [s for s in shas if s in cpu_vectors and s in gpu_vectors]
        if both:
            cosine = _cosine(np.stack([gpu_vectors[s] for s in both]), np.stack([cpu_vectors[s] for s in both]))
            out["agreement"] = {"images": len(both), "cosine_min": round(float(cosine.min()), 4),
                                "cosine_p1": round(float(np.percentile(cosine, 1)), 4),
                                "cosine_mean": round(float(cosine.mean()), 5)}
    sample = [r.path for r in records[: args.pixel_sample]]
    batch = decode_files(sample, backbone.preprocessing, device=args.device)
    rows = {p: i for i, p in enumerate(batch.positions)}
    diffs = [float(np.abs(batch.images[rows[i]].cpu().numpy().astype(np.int32)
                          - load_image(path, backbone.preprocessing).astype(np.int32)).mean())
             for i, path in enumerate(sample) if i in rows]
    if diffs:
        out.setdefault("agreement", {}).update({"pixel_sample": len(diffs),
                                                "pixel_mean_abs_max": round(max(diffs), 3),
                                                "pixel_mean_abs_mean": round(float(np.mean(diffs)), 3)})
    if "gpu" in DECODE_MODES and name == "photos":  # the wired path, once it exists
        with tempfile.TemporaryDirectory() as tmp, BottleneckCache(tmp) as cache:
            start = time.perf_counter()
            compute_bottlenecks(records, backbone, cache, runtime=choice, batch_size=args.batch_size,
                                workers=args.workers, progress=False, decode="gpu")
            seconds = time.perf_counter() - start
        out["compute_bottlenecks_gpu"] = {"seconds": round(seconds, 2),
                                          "images_per_s": round(len(records) / seconds, 1),
                                          "note": "model built inside, included"}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", help="NAME=DIR")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--readers", type=int, default=None)
    parser.add_argument("--pixel_sample", type=int, default=32)
    parser.add_argument("--device", default="cuda", help="cpu: the same code on the CPU (to check the script)")
    args = parser.parse_args()

    import torch

    from headstart.backbones import resolve_backbone
    from headstart.networks import create_feature_extractor
    from headstart.runtimes import RuntimeChoice, create_torch_runner

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU")
    backbone = resolve_backbone("efficientnet_lite0", crop_pct=1.0)
    choice = RuntimeChoice("cuda", "fp16") if args.device == "cuda" else RuntimeChoice("torch", "fp32")
    module = create_feature_extractor(backbone)
    runner = create_torch_runner(module, choice)  # moves ``module`` to the GPU (fp16, channels-last) in place
    result: dict = {"device_name": torch.cuda.get_device_name(0) if args.device == "cuda" else None,
                    "torch": torch.__version__, "cores": os.cpu_count(), "runtime": choice.key}
    for spec in args.folders:
        name, _, folder = spec.partition("=")
        try:
            result[name] = measure_kind(name, Path(folder), backbone, module, runner, choice, args)
        except Exception as exc:  # noqa: BLE001 - one kind failing must not lose the others' figures
            result[name] = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps({name: result[name]}), file=sys.stderr, flush=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":  # worker processes re-import this file
    main()
