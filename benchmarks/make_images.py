"""Write folders of real, photo-sized test images for the benchmarks.

``photos``: JPEGs of about 500x375 (the size of a typical web photo and of the
flower_photos set), made from scikit-image's and scikit-learn's sample photos
with random crops, rescales, flips and JPEG qualities, one class folder per
source photo.  ``fashion``: real Fashion-MNIST PNGs (28x28 greyscale).

    python benchmarks/make_images.py photos /tmp/photos --count 2000
    python benchmarks/make_images.py fashion /tmp/fashion --count 3000
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def sample_photos() -> dict[str, np.ndarray]:
    """Real colour photos that ship with scikit-image / scikit-learn (no download)."""
    import skimage.data

    photos = {}
    for name in ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry"):
        try:
            photos[name] = np.asarray(getattr(skimage.data, name)())
        except Exception:  # noqa: BLE001 - a sample missing from this scikit-image build
            continue
    try:
        from sklearn.datasets import load_sample_images

        for name, image in zip(("china", "flower"), load_sample_images().images):
            photos[name] = np.asarray(image)
    except Exception:  # noqa: BLE001 - scikit-learn is optional here
        pass
    return {k: v[..., :3] for k, v in photos.items() if v.ndim == 3}


def write_photo_folder(out: Path, count: int, *, size: tuple[int, int] = (500, 375), seed: int = 0) -> Path:
    """``count`` distinct JPEGs of ``size`` (landscape or portrait at random) under ``out/<photo>/``."""
    rng = np.random.default_rng(seed)
    sources = [(name, Image.fromarray(array)) for name, array in sorted(sample_photos().items())]
    if not sources:
        raise SystemExit("no sample photos found: install scikit-image")
    for name, _ in sources:
        (out / name).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        name, photo = sources[i % len(sources)]
        w, h = photo.size
        frac = rng.uniform(0.45, 1.0)
        cw, ch = max(32, int(w * frac)), max(32, int(h * frac * rng.uniform(0.8, 1.2)))
        cw, ch = min(cw, w), min(ch, h)
        left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        target = size if rng.random() < 0.75 else size[::-1]
        image = photo.crop((left, top, left + cw, top + ch)).resize(target, Image.Resampling.BILINEAR)
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        image.save(out / name / f"{name}_{i:06d}.jpg", "JPEG", quality=int(rng.integers(80, 96)))
    return out


def write_fashion_folder(out: Path, count: int) -> Path:
    """``count`` real Fashion-MNIST training images as PNG class folders."""
    from headstart.datasets import write_fashion_mnist

    write_fashion_mnist(out, per_class=max(1, count // 10), progress=False)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=["photos", "fashion"])
    parser.add_argument("out", type=Path)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.kind == "photos":
        write_photo_folder(args.out, args.count, seed=args.seed)
    else:
        write_fashion_folder(args.out, args.count)
    print(f"wrote {args.count} {args.kind} images to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
