"""Find the images under class folders, split them, and decode them for a network.

Three jobs, kept light (numpy + PIL only, no torch) because every other module
starts here:

* :func:`index_image_dir` turns ``image_dir/<class>/**/<image>`` into an
  :class:`ImageIndex`: one record per usable image with its label, split and
  content hash.  Everything that is wrong with the *folder* is a
  :class:`DataError` before any real work starts; everything that is wrong with
  one *file* is a :class:`SkippedImage`, never an exception.
* :func:`which_split` is retrain.py's stable hash split, computed on the path
  relative to ``image_dir`` so moving the folder keeps every image in its set.
* :func:`load_image` decodes one image with timm's evaluation geometry
  (resize the shorter side, centre crop; see :mod:`headstart.resize` for how
  the resampling stays fast), tolerating the photos
  people actually have: EXIF-rotated, transparent, 16-bit, CMYK, animated,
  truncated, or not images at all.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import re
import stat
import threading
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from headstart.errors import DataError, ImageError, UsageError
from headstart.resize import PIL_RESAMPLE, resize

log = logging.getLogger("headstart")

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
)
SPLITS = ("training", "validation", "testing")
MAX_NUM_IMAGES_PER_CLASS = 2**27 - 1
DEFAULT_MAX_PIXELS = 100_000_000
MIN_IMAGES_PER_CLASS = 20  # fewer is allowed but warned about, as retrain.py did

# Bump whenever load_image() can return different pixels for the same file and
# Preprocessing (new draft rule, alpha handling ...): it is part of
# Preprocessing.fingerprint(), so cached bottlenecks are recomputed.
DECODER_VERSION = "2"  # 2: downscaling by 2x supersampling (headstart.resize)

# Formats whose extensions we accept.  Naming them stops PIL from trying every
# plugin it has (EPS would even run Ghostscript) on a file that only claims to
# be a photo.  PIL's JPEG opener also returns MPO (many camera JPEGs).
_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "DIB", "TIFF")
_JPEG_FORMATS = frozenset({"JPEG", "MPO"})
_UPRIGHT = {  # EXIF orientation -> what shows the [row, column, channel] array upright (as ImageOps.exif_transpose)
    2: lambda a: a[:, ::-1],  # flip left-right
    3: lambda a: a[::-1, ::-1],  # rotate 180
    4: lambda a: a[::-1],  # flip top-bottom
    5: lambda a: a.transpose(1, 0, 2),  # transpose
    6: lambda a: np.rot90(a, -1),  # rotate 90 clockwise
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),  # transverse
    8: lambda a: np.rot90(a, 1),  # rotate 90 counter-clockwise
}
_EXIF_ORIENTATION = 0x0112
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_16BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})  # "I": older Pillow's 16-bit PNG
_MAX_ASPECT = 16  # beyond this long/short ratio, resample only the crop (see _resize_center_crop)
_HINT_BAD_IMAGE = "open it in an image viewer; re-save it as JPEG or PNG, or delete it"


# --------------------------------------------------------------------------- preprocessing


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class Preprocessing:
    """How an image file becomes the network input.

    It travels with cached bottlenecks and saved models so inference decodes
    exactly as training did.  Geometry follows timm: resize the shorter side to
    ``floor(input_size / crop_pct)``, then centre-crop ``input_size``.
    ``mean``/``std`` are not applied here (they belong in the exported graph)
    but are part of the contract, hence of the fingerprint.
    """

    input_size: int
    crop_pct: float
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __post_init__(self) -> None:
        if not _is_int(self.input_size) or self.input_size < 1:
            raise ValueError(f"Preprocessing.input_size must be a positive int, got {self.input_size!r}")
        if not _is_real(self.crop_pct) or not 0 < self.crop_pct <= 1:
            raise ValueError(f"Preprocessing.crop_pct must be a number in (0, 1], got {self.crop_pct!r}")
        if not isinstance(self.interpolation, str) or self.interpolation not in PIL_RESAMPLE:
            raise ValueError(
                f"Preprocessing.interpolation must be one of {', '.join(PIL_RESAMPLE)}, got {self.interpolation!r}"
            )
        object.__setattr__(self, "crop_pct", float(self.crop_pct))
        for field in ("mean", "std"):
            value = getattr(self, field)
            if not isinstance(value, (tuple, list)) or len(value) != 3 or not all(map(_is_real, value)):
                raise ValueError(f"Preprocessing.{field} must be three numbers, got {value!r}")
            object.__setattr__(self, field, tuple(float(v) for v in value))
        if min(self.std) <= 0:
            raise ValueError(f"Preprocessing.std must be positive, got {self.std!r}")

    @property
    def resize_size(self) -> int:
        """The shorter side before the centre crop (timm's ``scale_size``)."""
        return math.floor(self.input_size / self.crop_pct)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (tuples become lists)."""
        return {
            "input_size": self.input_size,
            "crop_pct": self.crop_pct,
            "interpolation": self.interpolation,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Preprocessing:
        """Inverse of :meth:`to_dict`; unknown or missing fields are refused,
        since preprocessing we do not fully understand would silently give
        wrong predictions."""
        if not isinstance(d, Mapping):
            raise ValueError(f"Preprocessing must be a mapping, got {type(d).__name__}")
        names = ("input_size", "crop_pct", "interpolation", "mean", "std")
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise ValueError(f"Preprocessing has unknown field {unknown[0]!r}")
        missing = [n for n in names if n not in d]
        if missing:
            raise ValueError(f"Preprocessing is missing field {missing[0]!r}")
        return cls(**{n: d[n] for n in names})

    def fingerprint(self) -> str:
        """Short stable id of these settings plus the decoder version; part of
        every bottleneck cache key."""
        payload = {"decoder_version": DECODER_VERSION, **self.to_dict()}
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


# --------------------------------------------------------------------------- index types


@dataclass(frozen=True)
class ImageRecord:
    """One usable image: where it is, what it is, which set it belongs to."""

    path: Path
    relpath: str
    label: str
    split: str
    sha256: str


@dataclass(frozen=True)
class SkippedImage:
    """A file that looked like an image but cannot be used, and why."""

    path: Path
    reason: str


@dataclass(frozen=True)
class ImageIndex:
    """Everything later stages need to know about an image folder."""

    root: Path
    labels: tuple[str, ...]
    records: tuple[ImageRecord, ...]
    skipped: tuple[SkippedImage, ...]
    warnings: tuple[str, ...]

    def split(self, name: str) -> tuple[ImageRecord, ...]:
        """The records of one split, in index order."""
        if name not in SPLITS:
            raise UsageError(f"unknown split {name!r}", hint=f"use one of {', '.join(SPLITS)}")
        return tuple(r for r in self.records if r.split == name)

    def label_ids(self, records: Iterable[ImageRecord]) -> np.ndarray:
        """Class index (position in ``labels``) of each record, as int64."""
        ids = {label: i for i, label in enumerate(self.labels)}
        return np.array([ids[r.label] for r in records], dtype=np.int64)

    def counts(self) -> dict[str, dict[str, int]]:
        """label -> split -> number of images (zeros included)."""
        out = {label: dict.fromkeys(SPLITS, 0) for label in self.labels}
        for r in self.records:
            out[r.label][r.split] += 1
        return out


# --------------------------------------------------------------------------- split


@dataclass(frozen=True)
class Distortion:
    """retrain.py's training distortions, drawn once per image and copy so their bottlenecks can be cached.

    retrain.py drew new distortions at every step and so had to run the network
    at every step, bypassing its cache.  Here copy ``k`` of an image always gets
    the same draw (seeded by the image's content hash and ``k``): a few distorted
    copies per training image are computed once, cached like any bottleneck, and
    train the head from memory.  Percentages mean what retrain.py's flags meant.
    """

    flip_left_right: bool = False
    random_crop: float = 0.0  # % of margin around the crop, randomly placed
    random_scale: float = 0.0  # up to this % larger before cropping
    random_brightness: float = 0.0  # multiply pixels by 1 +/- up to this %
    copy: int = 0

    def __post_init__(self) -> None:
        for name in ("random_crop", "random_scale", "random_brightness"):
            value = getattr(self, name)
            if not _is_real(value) or not 0 <= value <= 100:
                raise UsageError(f"--{name} must be a percentage between 0 and 100, got {value!r}",
                                 hint=f"e.g. --{name} 10")

    @property
    def active(self) -> bool:
        return self.flip_left_right or any((self.random_crop, self.random_scale, self.random_brightness))

    def fingerprint(self) -> str:
        text = json.dumps([self.flip_left_right, self.random_crop, self.random_scale, self.random_brightness,
                           self.copy, DECODER_VERSION])
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def rng(self, image_sha256: str) -> np.random.Generator:
        seed = hashlib.sha256(f"{image_sha256}|{self.fingerprint()}".encode()).digest()
        return np.random.default_rng(int.from_bytes(seed[:8], "little"))


def _check_percentages(validation_percentage: float, testing_percentage: float) -> None:
    given = {"validation_percentage": validation_percentage, "testing_percentage": testing_percentage}
    for flag, value in given.items():
        if not _is_real(value) or not 0 <= value <= 100:
            raise UsageError(f"--{flag} must be between 0 and 100, got {value!r}", hint=f"e.g. --{flag} 10")
    if validation_percentage + testing_percentage > 100:
        raise UsageError(
            f"--validation_percentage {validation_percentage} plus --testing_percentage "
            f"{testing_percentage} is over 100",
            hint="leave some images for training, e.g. 10 and 10",
        )


def which_split(relpath: str, validation_percentage: float, testing_percentage: float) -> str:
    """The split of an image, from a hash of its path relative to ``image_dir``.

    This is retrain.py's rule (so an image never changes set when others are
    added, and ``x_nohash_1.jpg``/``x_nohash_2.jpg`` stay together) applied to
    the *relative* path, so moving the folder changes nothing.  The path is
    NFC-normalised first so a folder copied between macOS (NFD names) and
    Linux keeps its splits; ASCII and NFC names hash exactly as retrain.py.
    """
    _check_percentages(validation_percentage, testing_percentage)
    hash_name = re.sub(r"_nohash_.*$", "", unicodedata.normalize("NFC", relpath))
    digest = hashlib.sha1(hash_name.encode("utf-8", "surrogateescape")).hexdigest()
    percentage_hash = (int(digest, 16) % (MAX_NUM_IMAGES_PER_CLASS + 1)) * (100.0 / MAX_NUM_IMAGES_PER_CLASS)
    if percentage_hash < validation_percentage:
        return "validation"
    if percentage_hash < validation_percentage + testing_percentage:
        return "testing"
    return "training"


# --------------------------------------------------------------------------- index


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in chunks (hashlib releases the GIL,
    so a thread pool hashes files in parallel)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _hash_or_reason(path: Path) -> tuple[str | None, str | None]:
    """(sha256, None) for a usable file, (None, reason) otherwise; never raises
    OSError, so one bad file cannot stop the index."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            return None, "not a regular file"
        if st.st_size == 0:
            return None, "empty file (0 bytes)"
        return sha256_file(path), None
    except FileNotFoundError:
        return None, "file not found (broken symbolic link?)"
    except PermissionError:
        return None, "permission denied"
    except OSError as err:
        return None, f"unreadable ({err.strerror or err})"


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()  # follows symbolic links
    except OSError:
        return False


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _find_images(root: Path, class_name: str, warnings: list[str]) -> list[str]:
    """Relative POSIX paths of the image files under ``root/class_name``.

    Symbolic links are followed, but each real directory is entered once, so a
    link loop costs a warning instead of a hang.
    """
    found: list[str] = []
    seen: set[tuple[int, int]] = set()
    stack = [PurePosixPath(class_name)]
    while stack:
        rel = stack.pop()
        try:
            st = os.stat(root / rel)
            key = (st.st_dev, st.st_ino)
            if key in seen:
                warnings.append(f"{rel}: folder already visited (symbolic link loop?), not followed again")
                continue
            seen.add(key)
            with os.scandir(root / rel) as it:
                entries = list(it)
        except OSError as err:
            warnings.append(f"{rel}: cannot list folder ({err.strerror or err})")
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            child = rel / entry.name
            if _is_dir(entry):
                stack.append(child)
            elif _is_image_name(entry.name):
                found.append(child.as_posix())
            else:
                log.debug("ignoring non-image file %s", child)
    return sorted(found)


def _check_class_names(names: Sequence[str]) -> None:
    """Refuse names a user surely meant as one class (``Roses``/``roses``)."""
    by_key: dict[str, str] = {}
    for name in names:
        key = "".join(c for c in name.casefold() if c.isalnum())
        if key in by_key:
            raise DataError(
                f"class folders '{by_key[key]}' and '{name}' differ only in case or punctuation",
                hint="merge them into one folder, or rename one if they really are different classes",
            )
        by_key[key] = name


def _list_classes(root: Path, labels: Sequence[str] | None) -> list[str]:
    hint = "pass --image_dir, a folder with one sub-folder of images per class"
    if not root.exists():
        raise DataError(f"image folder not found: {root}", hint=hint)
    if not root.is_dir():
        raise DataError(f"not a folder: {root}", hint=hint)
    with os.scandir(root) as it:
        entries = [e for e in it if not e.name.startswith(".")]
    names = sorted(e.name for e in entries if _is_dir(e))
    if not names:
        raise DataError(
            f"no class folders in {root}",
            hint=f"put each class's images in its own sub-folder, e.g. {root / 'cats'} and {root / 'dogs'}",
        )
    if labels is not None:
        unknown = [n for n in names if n not in labels]
        if unknown:
            raise DataError(
                f"class folder '{unknown[0]}' in {root} is not one of the model's labels: {', '.join(labels)}",
                hint="rename or remove that folder; a model can only be evaluated on classes it was trained on",
            )
    elif len(names) == 1:
        raise DataError(
            f"only one class folder ('{names[0]}') in {root}; a classifier needs at least two",
            hint="add a sub-folder of images for each other class",
        )
    _check_class_names(names)
    loose = [e.name for e in entries if not _is_dir(e) and _is_image_name(e.name)]
    if loose:
        log.debug("%d image files directly in %s are in no class folder, ignored", len(loose), root)
    return names


def _no_training_error(name: str, usable: int) -> DataError:
    return DataError(
        f"class '{name}' has no training images ({usable} usable, none in the training split)",
        hint="add more images to it, or lower --validation_percentage / --testing_percentage",
    )


def index_image_dir(
    image_dir: str | Path,
    validation_percentage: float = 10,
    testing_percentage: float = 10,
    *,
    labels: Sequence[str] | None = None,
    require_training: bool = True,
    workers: int = 4,
) -> ImageIndex:
    """Index ``image_dir/<class>/**/<image>``: labels, splits and content hashes.

    Folder problems (missing, no/one class, an empty class, ``Roses`` next to
    ``roses``, a class left without training images) raise :class:`DataError`
    up front, because no amount of computing fixes them.  File problems (empty,
    unreadable, duplicated) only skip that file.  An image stored twice in a
    class is used once (under its shortest name, so a copy never moves the
    original to another split); an image stored in two classes is not used at all,
    since its label is ambiguous.  ``labels`` fixes the label list and order
    (evaluating a saved model on another folder); then the folders may be any
    subset of it and a single class is fine.
    """
    _check_percentages(validation_percentage, testing_percentage)
    if not _is_int(workers) or workers < 1:
        raise UsageError(f"workers must be a positive integer, got {workers!r}", hint="e.g. workers=4")
    if labels is not None:
        labels = tuple(labels)
        if not labels or len(set(labels)) != len(labels) or not all(isinstance(x, str) and x for x in labels):
            raise UsageError(f"labels must be distinct non-empty names, got {labels!r}",
                             hint="pass each class name once, e.g. labels=('cat', 'dog')")
    root = Path(image_dir).expanduser()
    class_names = _list_classes(root, labels)
    root = root.resolve()

    warnings: list[str] = []
    files: list[tuple[str, str]] = []  # (label, relpath)
    for name in class_names:
        found = _find_images(root, name, warnings)
        if not found:
            raise DataError(
                f"class folder '{name}' has no images ({root / name})",
                hint=f"add images ({', '.join(sorted(IMAGE_EXTENSIONS))}) to it, or remove the folder",
            )
        splits = {which_split(rel, validation_percentage, testing_percentage) for rel in found}
        if require_training and "training" not in splits:
            raise _no_training_error(name, len(found))  # before hashing: dropping duplicates cannot help
        files.extend((name, rel) for rel in found)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        hashes = list(pool.map(_hash_or_reason, [root / rel for _, rel in files]))

    skipped: list[SkippedImage] = []
    by_digest: dict[str, list[tuple[str, str]]] = {}
    for (label, rel), (digest, reason) in zip(files, hashes):
        if digest is None:
            skipped.append(SkippedImage(root / rel, reason or "unreadable"))
        else:
            by_digest.setdefault(digest, []).append((label, rel))

    records: list[ImageRecord] = []
    for digest, copies in by_digest.items():
        # Keep the shortest name, then the first: "IMG_1.jpg" over "IMG_1 copy.jpg" or
        # "IMG_1 (2).jpg", so adding a copy leaves the original, and its split, in place.
        copies.sort(key=lambda c: (len(c[1]), c[1]))
        classes = sorted({label for label, _ in copies})
        if len(classes) > 1:
            warnings.append(
                f"the same image is in classes {', '.join(repr(c) for c in classes)} "
                f"({', '.join(rel for _, rel in copies)}); not used, its label is ambiguous"
            )
            for label, rel in copies:
                others = ", ".join(c for c in classes if c != label)
                skipped.append(SkippedImage(root / rel, f"same image also in class {others}"))
            continue
        (label, first), *rest = copies
        skipped.extend(SkippedImage(root / rel, f"duplicate of {first}") for _, rel in rest)
        split = which_split(first, validation_percentage, testing_percentage)
        records.append(ImageRecord(root / first, first, label, split, digest))
    records.sort(key=lambda r: (r.label, r.relpath))
    skipped.sort(key=lambda s: str(s.path))

    index = ImageIndex(root, labels or tuple(class_names), tuple(records), tuple(skipped), ())
    counts = index.counts()
    for name in class_names:
        n = sum(counts[name].values())
        if require_training and counts[name]["training"] == 0:
            raise _no_training_error(name, n)
        if n < MIN_IMAGES_PER_CLASS:
            warnings.append(
                f"class '{name}' has only {n} usable images; {MIN_IMAGES_PER_CLASS} or more give better results"
            )
        elif n > MAX_NUM_IMAGES_PER_CLASS:
            warnings.append(
                f"class '{name}' has over {MAX_NUM_IMAGES_PER_CLASS} images; the split cannot tell them apart"
            )
    for warning in warnings:
        log.warning("%s", warning)
    totals = {s: sum(c[s] for c in counts.values()) for s in SPLITS}
    log.info(
        "indexed %s: %d classes, %d training, %d validation, %d testing images, %d skipped",
        root, len(index.labels), totals["training"], totals["validation"], totals["testing"], len(skipped),
    )
    return replace(index, warnings=tuple(warnings))


# --------------------------------------------------------------------------- decode


class _Unusable(Exception):
    """Internal: why an image cannot be used (reason, hint)."""


_OPEN_LOCK = threading.Lock()


def _open_unchecked(fp: io.BytesIO) -> Image.Image:
    """``Image.open`` with PIL's own bomb check off: it would warn or raise at
    its own fixed limit, while we compare against ``max_pixels`` ourselves
    before decoding.  ``MAX_IMAGE_PIXELS`` is a module global, so it is only
    lifted under a lock, for the header read, which is cheap."""
    with _OPEN_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            return Image.open(fp, formats=_FORMATS)
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _open(source: Path | bytes) -> tuple[Image.Image, bytes]:
    """Open lazily (header only), and the file's bytes.  A path is read into
    memory first so no file I/O happens under the open lock, and a file is read
    exactly once."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        payload = source
    else:
        try:
            payload = Path(source).read_bytes()
        except FileNotFoundError:
            raise _Unusable("file not found", "check the path; was the file moved or deleted?") from None
        except PermissionError:
            raise _Unusable("permission denied", "make the file readable (chmod +r) or remove it") from None
        except IsADirectoryError:
            raise _Unusable("is a folder, not an image", "pass an image file") from None
        except OSError as err:
            raise _Unusable(f"unreadable ({err.strerror or err})", "check the disk or network share") from None
    if len(payload) == 0:
        raise _Unusable("empty file (0 bytes)", _HINT_BAD_IMAGE)
    try:
        return _open_unchecked(io.BytesIO(payload)), bytes(payload)
    except UnidentifiedImageError:
        raise _Unusable("not an image (unrecognised format)", _HINT_BAD_IMAGE) from None


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB the way a person would see it: transparency
    over white, 16-bit scaled (not clipped) to 8 bits, CMYK/palette/grey
    converted."""
    if img.mode == "RGB" and "transparency" not in img.info:
        return img
    if img.mode in _16BIT_MODES:
        # PIL's own I;16 -> L clips at 255, turning most 16-bit photos white.
        wide = np.clip(np.asarray(img), 0, 65535).astype(np.uint32)
        return Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8)).convert("RGB")
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGB", rgba.size, (255, 255, 255))
        white.paste(rgba, mask=rgba.getchannel("A"))
        return white
    return img.convert("RGB")


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation tag (1 = upright).  Unreadable EXIF counts as
    upright, not as a broken image."""
    try:
        orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # corrupt EXIF: PIL raises assorted errors
        return 1
    return orientation if isinstance(orientation, int) else 1


def _upright(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Apply the EXIF orientation (what every photo viewer does) so the
    network sees the photo upright."""
    turn = _UPRIGHT.get(orientation)
    return pixels if turn is None else np.ascontiguousarray(turn(pixels))


@lru_cache(maxsize=1)
def _simplejpeg() -> Any:
    import simplejpeg

    return simplejpeg


def _decode_jpeg(payload: bytes, size: tuple[int, int]) -> np.ndarray | None:
    """libjpeg-turbo straight into a numpy array of ``size`` (width, height): the
    size PIL's draft mode chose, so the same pixels as PIL's decoder (the same
    library, the same settings) without PIL's copy into numpy.  ``None`` when
    libjpeg reports anything at all: PIL then decodes the file and decides."""
    try:
        # The largest reduction that keeps both sides >= ``size`` is the draft's 1/2, 1/4 or 1/8.
        return _simplejpeg().decode_jpeg(payload, "RGB", strict=True, min_width=size[0], min_height=size[1])
    except ValueError:
        return None


def _resize_center_crop(pixels: np.ndarray, prep: Preprocessing) -> np.ndarray:
    """timm's eval geometry: torchvision ``Resize(shorter side)`` then
    ``CenterCrop``.

    For extreme aspect ratios (a 1x10000 strip would need a 256x2560000
    intermediate) only the cropped box is resampled: nearly the same pixels,
    without the gigabytes.
    """
    size, scale = prep.input_size, prep.resize_size
    h, w = pixels.shape[:2]
    if w <= h:
        new_w, new_h = scale, int(scale * h / w)
    else:
        new_w, new_h = int(scale * w / h), scale
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    if new_w * new_h > _MAX_ASPECT * scale * scale:
        sx, sy = w / new_w, h / new_h
        box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
        crop = Image.fromarray(pixels).resize((size, size), PIL_RESAMPLE[prep.interpolation], box=box)
        return np.array(crop, dtype=np.uint8)
    resized = resize(pixels, (new_w, new_h), prep.interpolation)
    # Crop in numpy: Image.crop() would apply PIL's global bomb check to the result.
    return np.array(resized[top : top + size, left : left + size])


def _distorted(pixels: np.ndarray, prep: Preprocessing, distortion: Distortion, seed: str) -> np.ndarray:
    """retrain.py's distortions on top of the evaluation geometry: scale up by the crop
    margin and a random scale, crop ``input_size`` at a random place, maybe flip, scale
    the brightness."""
    rng = distortion.rng(seed)
    scale = (1 + distortion.random_crop / 100) * rng.uniform(1.0, 1 + distortion.random_scale / 100)
    size = prep.input_size
    shorter = max(size, int(round(prep.resize_size * scale)))
    h, w = pixels.shape[:2]
    new_w, new_h = (shorter, max(shorter, int(shorter * h / w))) if w <= h else (max(shorter, int(shorter * w / h)),
                                                                                shorter)
    array = resize(pixels, (new_w, new_h), prep.interpolation)
    # The crop moves only within the (scaled) region the evaluation crop shows:
    # without random_crop or random_scale it stays centred, as evaluation's does.
    region = max(size, int(round(size * scale)))
    region_h, region_w = min(new_h, region), min(new_w, region)
    top = int(round((new_h - region_h) / 2.0)) + int(rng.integers(0, region_h - size + 1))
    left = int(round((new_w - region_w) / 2.0)) + int(rng.integers(0, region_w - size + 1))
    out = array[top : top + size, left : left + size]
    if distortion.flip_left_right and rng.random() < 0.5:
        out = out[:, ::-1]
    if distortion.random_brightness:
        factor = rng.uniform(1 - distortion.random_brightness / 100, 1 + distortion.random_brightness / 100)
        return np.clip(out.astype(np.float32) * factor + 0.5, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(out)


def _decode(source: Path | bytes, prep: Preprocessing, max_pixels: int,
            distortion: Distortion | None = None, seed: str = "") -> np.ndarray:
    img, payload = _open(source)
    with img:
        fmt = img.format or "image"
        w, h = img.size
        if w * h > max_pixels:
            raise _Unusable(
                f"{w * h} pixels is over the limit of {max_pixels} ({w}x{h}; a decompression bomb?)",
                "if the image is genuine, shrink it or raise max_pixels",
            )
        try:
            pixels = None
            if fmt in _JPEG_FORMATS:
                # Let libjpeg decode at 1/2, 1/4 or 1/8 scale while both sides
                # stay >= the resize target: several times faster on photos.
                target = prep.resize_size
                if distortion is not None and distortion.active:
                    target = int(target * (1 + distortion.random_crop / 100) * (1 + distortion.random_scale / 100))
                drafted = img.draft("RGB", (target, target))
                if drafted is not None and img.mode == "RGB":  # CMYK and grey JPEGs: PIL converts
                    pixels = _decode_jpeg(payload, img.size)
            if pixels is None:
                img.load()
                pixels = np.asarray(_to_rgb(img), dtype=np.uint8)
            pixels = _upright(pixels, _orientation(img))
            if distortion is not None and distortion.active:
                out = _distorted(pixels, prep, distortion, seed)
            else:
                out = _resize_center_crop(pixels, prep)
        except MemoryError:
            raise
        except Image.DecompressionBombError as err:
            raise _Unusable(f"over PIL's size limit ({_one_line(err)})", "shrink the image") from err
        except Exception as err:  # PIL signals corrupt data with many exception types
            text = _one_line(err)
            if "truncated" in text.lower() or "broken data stream" in text.lower():
                hint = "re-download or re-export the image, or delete it"
                raise _Unusable(f"truncated {fmt} ({text})", hint) from err
            raise _Unusable(f"corrupt or unsupported {fmt} ({text})", _HINT_BAD_IMAGE) from err
    return out


def load_image(
    source: Path | bytes,
    prep: Preprocessing,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    name: str | None = None,
    distortion: Distortion | None = None,
    seed: str = "",
) -> np.ndarray:
    """Decode one image to a ``uint8`` RGB array ``[input_size, input_size, 3]``.

    ``source`` is a path or the file's bytes (a caller that hashed the bytes
    need not read the file twice).  The size is checked against
    ``max_pixels`` before anything is decoded.  Any failure is an
    :class:`ImageError` whose message is ``"<name or path>: <reason>"``; the
    bare reason is also in its ``reason`` attribute, ready for a
    :class:`SkippedImage`.  Safe to call from many threads.  With an active
    ``distortion``, the image is distorted as drawn for ``seed`` (the image's
    content hash) instead of centre-cropped.
    """
    where = name if name is not None else (
        str(source) if isinstance(source, (str, os.PathLike)) else "<image bytes>"
    )
    try:
        return _decode(source, prep, max_pixels, distortion, seed)
    except _Unusable as err:
        reason, hint = err.args
    except MemoryError:
        raise
    except Exception as err:  # a malformed header: PIL raises many types
        reason, hint = f"corrupt or unsupported image ({_one_line(err)})", _HINT_BAD_IMAGE
    error = ImageError(f"{where}: {reason}", hint=hint)
    error.reason = reason  # type: ignore[attr-defined]
    raise error
