"""Threads or processes to feed a GPU?  Three extractions in a row per decode mode, in
one process, so the later runs show the rate once the pool and cuDNN are warm.

    python benchmarks/gpu_decode_modes.py DIR [--modes processes,threads] [--workers 16]

Prints one JSON object: images/s of each run, per mode.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("image_dir", type=Path)
    parser.add_argument("--modes", default="processes,threads")
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--batch_size", type=int, default=128)
    args = parser.parse_args()

    from headstart.backbones import resolve_backbone
    from headstart.bench import list_image_records
    from headstart.cache import BottleneckCache
    from headstart.features import compute_bottlenecks
    from headstart.runtimes import create_runner, resolve_runtime

    backbone = resolve_backbone("efficientnet_lite0", crop_pct=1.0)
    choice = resolve_runtime("cuda", "fp16")
    records = list_image_records(args.image_dir)
    runner = create_runner(backbone, choice, Path(tempfile.mkdtemp()) / "models")
    out: dict[str, object] = {"images": len(records), "workers": args.workers, "batch_size": args.batch_size}
    for mode in args.modes.split(","):
        rates = []
        for _ in range(3):
            with tempfile.TemporaryDirectory() as tmp, BottleneckCache(tmp) as cache:
                start = time.perf_counter()
                compute_bottlenecks(records, backbone, cache, runtime=choice, batch_size=args.batch_size,
                                    workers=args.workers, progress=False, runner=runner, decode=mode)
                rates.append(round(len(records) / (time.perf_counter() - start)))
        out[mode] = rates
    print(json.dumps(out, indent=2))


if __name__ == "__main__":  # worker processes re-import this file
    main()
