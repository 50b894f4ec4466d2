"""Planting known problems in real image folders, for the doctor's tests and benchmark.

Every helper changes a folder the way a user's mistake would (a photo dropped in
the wrong class folder, a re-saved copy under a new name, ...) and returns what
it planted, so a test can compare the doctor's findings with the truth.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from headstart.data import which_split

NEAR_DUPLICATE_KINDS = ("jpeg60", "resize", "crop5", "brightness")
PHOTO_SOURCES = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "retina", "china", "flower")


def sample_photos() -> dict[str, np.ndarray]:
    """scikit-image's and scikit-learn's colour sample photos (shipped with the packages, no download)."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    photos = {name: np.asarray(getattr(skimage.data, name)()) for name in PHOTO_SOURCES[:6]}
    photos.update(zip(("china", "flower"), (np.asarray(a) for a in load_sample_images().images)))
    return {k: v[..., :3] for k, v in photos.items()}


def write_photo_crops(out: Path, *, grid: int = 5, seed: int = 0) -> Path:
    """One class per sample photo; each image a different cell of a ``grid``-per-short-side grid (no overlap),
    at the photo's own resolution (60 to 280 px), saved as JPEG: distinct photos that look like their class."""
    rng = np.random.default_rng(seed)
    for name, array in sorted(sample_photos().items()):
        photo = Image.fromarray(array)
        w, h = photo.size
        cell = min(w, h) // grid
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        n = 0
        for top in range(0, h - cell + 1, cell):
            for left in range(0, w - cell + 1, cell):
                crop = photo.crop((left, top, left + cell, top + cell))
                crop.save(folder / f"{name}_{n:03d}.jpg", "JPEG", quality=int(rng.integers(85, 96)))
                n += 1
    return out


def images_of(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def make_variant(img: Image.Image, kind: str, rng: np.random.Generator) -> tuple[Image.Image, str]:
    """A near-duplicate of ``img`` and the file extension to save it with."""
    img = img.convert("RGB") if img.mode not in ("L", "RGB") else img
    w, h = img.size
    if kind == "jpeg60":
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=60)
        return Image.open(io.BytesIO(buf.getvalue())), ".jpg"
    if kind == "resize":
        size = (w, h)
        while size == (w, h):  # a "resize" that keeps the size would be a byte-identical copy
            f = rng.uniform(0.8, 1.2)
            size = (max(1, round(w * f)), max(1, round(h * f)))
        return img.resize(size, Image.Resampling.BICUBIC), ".png"
    if kind == "crop5":
        cw, ch = round(w * 0.95), round(h * 0.95)
        left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        return img.crop((left, top, left + cw, top + ch)), ".png"
    if kind == "brightness":
        f = float(rng.choice([0.9, 1.1]))
        return Image.fromarray(np.clip(np.asarray(img, np.float32) * f + 0.5, 0, 255).astype(np.uint8)), ".png"
    raise ValueError(kind)


def plant_label_errors(root: Path, fraction: float, *, seed: int = 0,
                       exclude: set[str] = frozenset()) -> dict[str, str]:
    """Move ``fraction`` of the images to a wrong class folder: ``{new relpath: true class}``."""
    rng = np.random.default_rng(seed)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    files = [f for f in images_of(root) if f not in exclude]
    chosen = rng.choice(len(files), size=max(1, int(round(fraction * len(files)))), replace=False)
    planted = {}
    for i in sorted(chosen):
        rel = files[i]
        true = rel.split("/")[0]
        wrong = classes[(classes.index(true) + int(rng.integers(1, len(classes)))) % len(classes)]
        new = f"{wrong}/{rel.split('/', 1)[1]}"
        (root / rel).rename(root / new)
        planted[new] = true
    return planted


def plant_near_duplicates(root: Path, n: int, *, seed: int = 0, kinds: tuple[str, ...] = NEAR_DUPLICATE_KINDS,
                          leak_every: int = 0) -> list[tuple[str, str, str]]:
    """``n`` near-duplicate copies (kinds in turn) under new names next to their originals:
    ``[(original, copy, kind)]``.  With ``leak_every=k`` every k-th copy is named so that it falls
    in another split than its original (a leak)."""
    rng = np.random.default_rng(seed)
    files = images_of(root)
    chosen = rng.choice(len(files), size=n, replace=False)
    planted = []
    for m, i in enumerate(chosen):
        rel = files[i]
        kind = kinds[m % len(kinds)]
        with Image.open(root / rel) as img:
            variant, ext = make_variant(img, kind, rng)
        stem = rel.rsplit(".", 1)[0]
        split = which_split(rel, 10, 10)
        for attempt in range(1000):
            copy = f"{stem}_copy{attempt}{ext}"
            other = which_split(copy, 10, 10)
            if (root / copy).exists():
                continue
            if not leak_every or (m % leak_every == 0) == (other != split and "training" in (split, other)):
                break
        variant.save(root / copy)
        planted.append((rel, copy, kind))
    return planted


def plant_exact_duplicates(root: Path, n: int, *, across_classes: bool, seed: int = 0,
                           exclude: set[str] = frozenset()) -> list[tuple[str, str]]:
    """Byte-for-byte copies: ``[(original, copy)]``, in the same class or in another one."""
    rng = np.random.default_rng(seed)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    files = [f for f in images_of(root) if f not in exclude and "/dup_" not in f]
    out = []
    for i in rng.choice(len(files), size=n, replace=False):
        rel = files[i]
        label, name = rel.split("/", 1)
        target = classes[(classes.index(label) + 1) % len(classes)] if across_classes else label
        copy = f"{target}/dup_{name}"
        shutil.copyfile(root / rel, root / copy)
        out.append((rel, copy))
    return out


def plant_bad_images(folder: Path, photo: np.ndarray) -> dict[str, str]:
    """One image of each problem the doctor checks pixels for, in ``folder``: ``{file name: kind}``."""
    folder.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(photo).convert("RGB")
    w, h = img.size
    bad = {
        "blank.png": (Image.new("RGB", (200, 200), (128, 128, 128)), "near_blank"),
        "dark.jpg": (Image.fromarray((np.asarray(img, np.float32) * 0.12).astype(np.uint8)), "dark"),
        "bright.jpg": (Image.fromarray((228 + np.asarray(img, np.float32) * 0.1).astype(np.uint8)), "bright"),
        "blurred.jpg": (img.filter(ImageFilter.GaussianBlur(radius=max(w, h) / 60)), "blurred"),
        "tiny.png": (img.resize((16, 12)), "tiny"),
        "strip.jpg": (img.crop((0, 0, w, max(1, w // 8))), "aspect_ratio"),
    }
    for name, (image, _) in bad.items():
        image.save(folder / name)
    (folder / "truncated.jpg").write_bytes(_jpeg(img)[:600])
    (folder / "notes.jpg").write_bytes(b"this is not an image\n")
    return {**{name: kind for name, (_, kind) in bad.items()}, "truncated.jpg": "unreadable", "notes.jpg": "unreadable"}


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()
