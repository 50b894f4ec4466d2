"""Find the images under class folders: discovery, retrain.py's split, de-duplication.

:func:`index_image_dir` turns ``image_dir/<class>/**/<image>`` into an
:class:`ImageIndex`: one record per usable image with its label, split and
content hash.  Everything that is wrong with the *folder* is a
:class:`DataError` before any real work starts; everything that is wrong with
one *file* is a :class:`SkippedImage`, never an exception.  :func:`which_split`
is retrain.py's stable hash split, computed on the path relative to
``image_dir`` so moving the folder keeps every image in its set.
:func:`list_image_files` and :func:`find_images` are the one way the package
finds image files in a folder.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
import unicodedata
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

import numpy as np

from headstart.checks import is_int, is_real
from headstart.errors import DataError, UsageError
from headstart.files import sha256_file

log = logging.getLogger("headstart")

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
SPLITS = ("training", "validation", "testing")
MAX_NUM_IMAGES_PER_CLASS = 2**27 - 1
MIN_IMAGES_PER_CLASS = 20  # fewer is allowed but warned about, as retrain.py did
RUNS_MARKER = ".headstart-runs"  # see _list_classes


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


def _check_percentages(validation_percentage: float, testing_percentage: float) -> None:
    given = {"validation_percentage": validation_percentage, "testing_percentage": testing_percentage}
    for flag, value in given.items():
        if not is_real(value) or not 0 <= value <= 100:
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


def _walk_images(root: Path, start: PurePosixPath, warnings: list[str]) -> list[str]:
    """Relative POSIX paths (from ``root``) of the image files under ``root/start``, sorted.

    Hidden files and folders (a leading dot) are skipped.  Symbolic links are
    followed, but each real directory is entered once, so a link loop costs a
    warning instead of a hang.
    """
    found: list[str] = []
    seen: set[tuple[int, int]] = set()
    stack = [start]
    while stack:
        rel = stack.pop()
        where = rel.as_posix() if rel.parts else str(root)
        try:
            st = os.stat(root / rel)
            key = (st.st_dev, st.st_ino)
            if key in seen:
                warnings.append(f"{where}: folder already visited (symbolic link loop?), not followed again")
                continue
            seen.add(key)
            with os.scandir(root / rel) as it:
                entries = list(it)
        except OSError as err:
            warnings.append(f"{where}: cannot list folder ({err.strerror or err})")
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


def list_image_files(folder: str | Path) -> list[Path]:
    """Every image file under ``folder``, at any depth, sorted by relative path.

    An image is a file whose extension is in :data:`IMAGE_EXTENSIONS`; hidden
    files and folders are skipped, symbolic links followed (each real folder
    once).  A sub-folder that cannot be listed is logged and skipped.
    """
    folder = Path(folder)
    warnings: list[str] = []
    found = [folder / rel for rel in _walk_images(folder, PurePosixPath(), warnings)]
    for warning in warnings:
        log.warning("%s", warning)
    return found


def find_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Files given directly, plus the images found in folders given (see :func:`list_image_files`).

    A path that does not exist, or inputs holding no image at all, is a :class:`UsageError`.
    """
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found.extend(list_image_files(path))
        elif path.exists():
            found.append(path)
        else:
            raise UsageError(f"no such file or folder: {path}", hint="check the path")
    if not found:
        raise UsageError(
            "no images found in " + ", ".join(str(p) for p in inputs),
            hint=f"images are files ending in {', '.join(sorted(IMAGE_EXTENSIONS))}",
        )
    return found


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
        # A folder holding RUNS_MARKER keeps run directories next to the classes (the studio's runs/): no class.
        entries = [
            e for e in it if not e.name.startswith(".") and not os.path.exists(os.path.join(e.path, RUNS_MARKER))
        ]
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
    if not is_int(workers) or workers < 1:
        raise UsageError(f"workers must be a positive integer, got {workers!r}", hint="e.g. workers=4")
    if labels is not None:
        labels = tuple(labels)
        if not labels or len(set(labels)) != len(labels) or not all(isinstance(x, str) and x for x in labels):
            raise UsageError(
                f"labels must be distinct non-empty names, got {labels!r}",
                hint="pass each class name once, e.g. labels=('cat', 'dog')",
            )
    root = Path(image_dir).expanduser()
    class_names = _list_classes(root, labels)
    root = root.resolve()

    warnings: list[str] = []
    files: list[tuple[str, str]] = []  # (label, relpath)
    for name in class_names:
        found = _walk_images(root, PurePosixPath(name), warnings)
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
    # Only what indexing itself skipped (copies, unreadable files); images that fail to decode are
    # counted later, so "0 skipped" here would be a promise the next step may break.
    log.info(
        "indexed %s: %d classes, %d training, %d validation, %d testing images%s",
        root,
        len(index.labels),
        totals["training"],
        totals["validation"],
        totals["testing"],
        f" ({len(skipped)} skipped: copies or unreadable files)" if skipped else "",
    )
    return replace(index, warnings=tuple(warnings))


__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_NUM_IMAGES_PER_CLASS",
    "MIN_IMAGES_PER_CLASS",
    "SPLITS",
    "ImageIndex",
    "ImageRecord",
    "SkippedImage",
    "find_images",
    "index_image_dir",
    "list_image_files",
    "sha256_file",
    "which_split",
]
