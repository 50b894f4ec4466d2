"""Write the image folders of benchmarks/gpu_check.sh, on every core.

``photos``: JPEGs of 500x375 (or 375x500) made from real sample photos (random
crop, flip and quality, as benchmarks/make_images.py makes them).  ``phone``:
the same at 4032x3024, a 12-megapixel phone photo (quality 85-95).
``fashion``: real Fashion-MNIST PNGs (28x28 grey) from the IDX files in
``--source`` (or the Debian package).

    python benchmarks/gpu_images.py photos /tmp/photos --count 8000
    python benchmarks/gpu_images.py phone  /tmp/phone  --count 600
    python benchmarks/gpu_images.py fashion /tmp/fashion --source .gpu_kit/fashion-mnist
"""

from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from functools import lru_cache
from pathlib import Path

import numpy as np

SIZES = {"photos": (500, 375), "phone": (4032, 3024)}


@lru_cache(maxsize=1)
def _sources() -> list[tuple[str, np.ndarray]]:
    """The sample photos, loaded once per process."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from make_images import sample_photos

    return sorted(sample_photos().items())


def _write_range(out: str, kind: str, first: int, last: int) -> int:
    from PIL import Image

    sources = [(name, Image.fromarray(array)) for name, array in _sources()]
    size = SIZES[kind]
    low, high = (80, 96) if kind == "photos" else (85, 96)
    for i in range(first, last):
        rng = np.random.default_rng(i)
        name, photo = sources[i % len(sources)]
        w, h = photo.size
        frac = rng.uniform(0.5, 1.0)
        cw, ch = min(w, max(32, int(w * frac))), min(h, max(32, int(h * frac * rng.uniform(0.8, 1.2))))
        left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        target = size if rng.random() < 0.75 else size[::-1]
        image = photo.crop((left, top, left + cw, top + ch)).resize(target, Image.Resampling.BILINEAR)
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        folder = Path(out) / name
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{name}_{i:06d}.jpg", "JPEG", quality=int(rng.integers(low, high)))
    return last - first


def write_jpegs(out: Path, kind: str, count: int, workers: int) -> None:
    if not _sources():
        raise SystemExit("no sample photos found: install scikit-image")
    step = max(1, -(-count // (workers * 4)))
    with ProcessPoolExecutor(workers) as pool:
        jobs = [pool.submit(_write_range, str(out), kind, a, min(a + step, count)) for a in range(0, count, step)]
        written = sum(job.result() for job in jobs)
    print(f"wrote {written} {kind} JPEGs to {out}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=["photos", "phone", "fashion"])
    parser.add_argument("out", type=Path)
    parser.add_argument("--count", type=int, default=None, help="images (fashion: all 10,000 test images)")
    parser.add_argument("--source", type=Path, default=None, help="folder of the Fashion-MNIST IDX files")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    if args.kind == "fashion":
        from headstart.data.datasets import write_fashion_mnist

        per_class = None if args.count is None else max(1, args.count // 10)
        source = args.source if args.source is not None and args.source.is_dir() else None  # else Debian's
        info = write_fashion_mnist(args.out, per_class=per_class, split="test", source=source)
        print(f"wrote {info.n_images} Fashion-MNIST test images to {args.out}", file=sys.stderr)
    else:
        write_jpegs(args.out, args.kind, args.count or 1000, args.workers)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
