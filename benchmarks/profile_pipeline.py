"""Where the time goes in bottleneck extraction: decoding, the pipeline, the network.

    python benchmarks/profile_pipeline.py IMAGE_DIR [--runtime auto] [--workers 2] [--batch_size 16]

Prints one JSON object: single-thread decode cost per image, the decode-only
rate of the thread and process pools, the pipeline's rate with a network that
costs nothing (decode + batching + cache writes), the model-only rate, and the
end-to-end rate, all on the same images in one run.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("image_dir", type=Path)
    parser.add_argument("--runtime", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--limit", type=int, default=1000)
    args = parser.parse_args()

    from headstart.backbones import resolve_backbone
    from headstart.bench import list_image_records, measure_ceiling, sample_batch
    from headstart.cache import BottleneckCache, default_cache_dir
    from headstart.data import load_image
    from headstart.features import compute_bottlenecks, decode_ahead, default_workers
    from headstart.runtimes import create_runner, resolve_runtime

    workers = args.workers or default_workers()
    backbone = resolve_backbone("efficientnet_lite0", crop_pct=1.0)
    prep = backbone.preprocessing
    records = list_image_records(args.image_dir, limit=args.limit)
    paths = [r.path for r in records]
    out: dict[str, object] = {"images": len(records), "workers": workers, "batch_size": args.batch_size}

    payloads = [p.read_bytes() for p in paths[:300]]
    start = time.perf_counter()
    for payload in payloads:
        load_image(payload, prep)
    out["decode_ms_per_image_one_thread"] = 1e3 * (time.perf_counter() - start) / len(payloads)
    out.update(resample_costs(payloads, prep))

    for mode in ("threads", "processes"):
        start = time.perf_counter()
        for _ in decode_ahead(paths, prep, args.batch_size, workers, mode=mode):
            pass
        out[f"decode_only_{mode}_per_s"] = len(paths) / (time.perf_counter() - start)

    choice = resolve_runtime(args.runtime, args.precision)
    runner = create_runner(backbone, choice, default_cache_dir() / "models")
    dim = runner(sample_batch(records, prep, 2)).shape[1]

    def free(images: np.ndarray) -> np.ndarray:
        return np.zeros((len(images), dim), np.float32)

    for name, fn in (("pipeline_free_network", free), ("end_to_end", runner)):
        for mode in ("threads", "processes"):
            with tempfile.TemporaryDirectory() as tmp, BottleneckCache(tmp) as cache:
                start = time.perf_counter()
                compute_bottlenecks(records, backbone, cache, runtime=choice, batch_size=args.batch_size,
                                    workers=workers, progress=False, runner=fn, decode=mode)
                out[f"{name}_{mode}_per_s"] = len(records) / (time.perf_counter() - start)
    batch = sample_batch(records, prep, args.batch_size)
    out[f"model_only_{choice.key}_per_s"] = measure_ceiling(runner, batch, seconds=4.0)[0]
    print(json.dumps(out, indent=2))


def resample_costs(payloads: list[bytes], prep) -> dict[str, float]:
    """ms per image of the resize before the crop alone, headstart's (headstart.data.resize) against
    Pillow's (what timm's transform runs), on the same decoded images, one thread."""
    import io

    from PIL import Image

    from headstart.data.resize import PIL_RESAMPLE, resize

    jobs = []
    for payload in payloads:
        img = Image.open(io.BytesIO(payload))
        img.draft("RGB", (prep.resize_size, prep.resize_size))
        pixels = np.asarray(img.convert("RGB"))
        h, w = pixels.shape[:2]
        scale = prep.resize_size
        jobs.append((pixels, (scale, int(scale * h / w)) if w <= h else (int(scale * w / h), scale)))
    costs = {}
    for name, fn in (("headstart", lambda p, s: resize(p, s, prep.interpolation)),
                     ("pillow", lambda p, s: Image.fromarray(p).resize(s, PIL_RESAMPLE[prep.interpolation]))):
        start = time.perf_counter()
        for pixels, size in jobs:
            fn(pixels, size)
        costs[f"resample_ms_per_image_{name}"] = 1e3 * (time.perf_counter() - start) / len(jobs)
    return costs


if __name__ == "__main__":
    main()
