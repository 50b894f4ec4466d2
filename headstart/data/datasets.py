"""Demo data sets written as class folders, ready for ``--image_dir``.

Two sets, both the ones people know from retrain.py tutorials and benchmarks:

* Fashion-MNIST (10 classes of 28x28 clothing images). Read from a folder the user
  names, the Debian package ``dataset-fashion-mnist``, or downloaded once into the
  cache. The IDX files are parsed here with numpy so no ML framework is needed.
* TensorFlow's ``flower_photos`` (5 classes of real JPEGs), downloaded and extracted
  with path checks, because a tar archive from a URL is untrusted input.

Nothing here prints; progress goes through :func:`headstart.progress.track`.
"""

from __future__ import annotations

import gzip
import http.client
import logging
import os
import secrets
import shutil
import tarfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import numpy as np

from headstart.data.index import IMAGE_EXTENSIONS
from headstart.errors import DataError, OfflineError, UsageError
from headstart.progress import track

log = logging.getLogger("headstart")

FASHION_MNIST_LABELS = (
    "T-shirt_top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle_boot",
)
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FASHION_MNIST_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FLOWERS_URL = "https://storage.googleapis.com/download.tensorflow.org/example_images/flower_photos.tgz"

_SPLIT_PREFIX = {"train": "train", "test": "t10k"}
_SPLIT_SIZE = {"train": 60_000, "test": 10_000}
_IMAGES_MAGIC = 2051
_LABELS_MAGIC = 2049
_CHUNK = 1 << 20
_TIMEOUT_S = 30.0
# What a failed download raises (urlopen wraps DNS/refused as URLError; reads raise the
# rest; ValueError is a malformed URL). Disk errors are deliberately not in here.
_NETWORK_ERRORS = (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException, ValueError)


@dataclass(frozen=True)
class DatasetInfo:
    """Where a demo data set was written and what it holds."""

    path: Path
    labels: tuple[str, ...]
    n_images: int
    source: str


# --------------------------------------------------------------------------- helpers


def _cache_dir() -> Path:
    """``$HEADSTART_CACHE_DIR`` or the platform's per-user cache folder."""
    env = os.environ.get("HEADSTART_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("headstart"))


def _is_url(text: str) -> bool:
    scheme, sep, _ = text.partition("://")
    return bool(sep) and scheme.lower() in {"http", "https", "file", "ftp"}


def _open_url(url: str) -> BinaryIO:
    """Open ``url`` with a timeout, so a dead network fails instead of hanging (one seam for tests)."""
    return urllib.request.urlopen(url, timeout=_TIMEOUT_S)  # http(s)/file only by design


def _reason(err: BaseException) -> str:
    reason = getattr(err, "reason", None)
    return str(reason if reason is not None else err) or type(err).__name__


def _download(url: str, dest: Path, *, desc: str, progress: bool) -> None:
    """Fetch ``url`` into ``dest`` via a temp file and an atomic rename.

    A half-finished download never sits at ``dest``, so a later run cannot mistake it
    for a good file. Network errors propagate as ``URLError``/``OSError`` for the
    caller to turn into an :class:`OfflineError` with a hint that fits the data set.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.partial-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        with _open_url(url) as response, open(tmp, "wb") as out:
            length = response.headers.get("Content-Length") if hasattr(response, "headers") else None
            total = -(-int(length) // _CHUNK) if length and length.isdigit() else None

            def chunks() -> Iterator[bytes]:
                while block := response.read(_CHUNK):
                    yield block

            for block in track(chunks(), total=total, desc=desc, unit="MiB", enabled=progress):
                out.write(block)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------- Fashion-MNIST


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """Parse one gzipped IDX file (uint8 data) into an array, checking header and size.

    Format (big-endian): int32 magic, int32 count, then for images int32 rows and
    int32 cols, then the raw uint8 data. A wrong magic or a short/long body means a
    wrong or damaged file, which must not silently become wrong labels.
    """
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(
            f"Cannot read Fashion-MNIST file {path}: {err}", hint="delete it and run again to fetch a fresh copy"
        ) from err
    n_dims = 3 if magic == _IMAGES_MAGIC else 1
    header_len = 4 * (1 + n_dims)
    if len(raw) < header_len:
        raise DataError(
            f"Fashion-MNIST file {path} is truncated ({len(raw)} bytes)",
            hint="delete it and run again to fetch a fresh copy",
        )
    header = np.frombuffer(raw, dtype=">u4", count=1 + n_dims)
    if int(header[0]) != magic:
        raise DataError(
            f"Fashion-MNIST file {path} has magic number {int(header[0])}, expected {magic}",
            hint="is this the right file? images are *-images-idx3-ubyte.gz, labels *-labels-idx1-ubyte.gz",
        )
    shape = tuple(int(d) for d in header[1:])
    expected = int(np.prod(shape))
    if len(raw) - header_len != expected:
        raise DataError(
            f"Fashion-MNIST file {path} holds {len(raw) - header_len} data bytes, its header promises {expected}",
            hint="the file is truncated or damaged; delete it and run again",
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_len).reshape(shape)


def _fashion_files(split: str) -> tuple[str, str]:
    prefix = _SPLIT_PREFIX[split]
    return f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz"


def _locate_fashion_mnist(split: str, source: str | Path | None, progress: bool) -> tuple[Path, Path, str]:
    """Find (or fetch) the two IDX files of ``split``: argument > Debian > cache/download."""
    names = _fashion_files(split)
    if source is not None and not _is_url(str(source)):
        folder = Path(source).expanduser()
        paths = [folder / n for n in names]
        for p in paths:
            if not p.is_file():
                raise DataError(
                    f"Fashion-MNIST file {p} not found",
                    hint=f"the folder must hold {names[0]} and {names[1]} (from {FASHION_MNIST_URL})",
                )
        return paths[0], paths[1], str(folder)

    if source is None:
        debian = Path(FASHION_MNIST_DEBIAN_DIR)
        if all((debian / n).is_file() for n in names):
            return debian / names[0], debian / names[1], str(debian)
        base = FASHION_MNIST_URL
    else:
        base = str(source)

    cache = _cache_dir() / "datasets" / "fashion-mnist"
    base = base if base.endswith("/") else base + "/"
    for name in names:
        dest = cache / name
        if dest.is_file():
            continue
        url = base + name
        log.info("Downloading %s", url)
        try:
            _download(url, dest, desc=name, progress=progress)
        except _NETWORK_ERRORS as err:
            raise OfflineError(
                f"Fashion-MNIST is not installed and cannot be downloaded ({_reason(err)})",
                hint=f"apt-get install dataset-fashion-mnist, or download the four .gz files "
                f"from {FASHION_MNIST_URL} and pass --source DIR",
            ) from err
    return cache / names[0], cache / names[1], base


def _save_png(path: Path, pixels: np.ndarray) -> None:
    from PIL import Image

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        Image.fromarray(pixels).save(tmp, format="PNG")  # 2-D uint8 -> mode "L"
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_fashion_mnist(
    out_dir: str | Path,
    *,
    per_class: int | None = None,
    split: str = "train",
    offset: int = 0,
    source: str | Path | None = None,
    progress: bool = False,
) -> DatasetInfo:
    """Write Fashion-MNIST as ``out_dir/<label>/<split>_<index:05d>.png`` class folders.

    ``index`` is the image's position in the IDX file, so names are stable across runs
    and a ``--split test`` folder never shares an image with a ``train`` one. Per class,
    the first ``offset`` images are skipped and the next ``per_class`` (all if None)
    written; files already present are left alone, so re-running is cheap and safe.
    """
    if split not in _SPLIT_PREFIX:
        raise UsageError(f"Unknown Fashion-MNIST split {split!r}", hint="use 'train' or 'test'")
    if per_class is not None and per_class < 0:
        raise UsageError(f"per_class must be 0 or more, got {per_class}")
    if offset < 0:
        raise UsageError(f"offset must be 0 or more, got {offset}")

    images_path, labels_path, where = _locate_fashion_mnist(split, source, progress)
    images = _read_idx(images_path, _IMAGES_MAGIC)
    labels = _read_idx(labels_path, _LABELS_MAGIC)
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"Fashion-MNIST files disagree: {images_path} has {images.shape[0]} images, "
            f"{labels_path} has {labels.shape[0]} labels",
            hint="the two files come from different splits or one is damaged",
        )
    if labels.size and int(labels.max()) >= len(FASHION_MNIST_LABELS):
        raise DataError(
            f"Fashion-MNIST file {labels_path} holds label {int(labels.max())}; "
            f"only 0-{len(FASHION_MNIST_LABELS) - 1} exist",
            hint="is this really a Fashion-MNIST labels file?",
        )

    out = Path(out_dir).expanduser()
    jobs: list[tuple[Path, int]] = []
    for class_id, name in enumerate(FASHION_MNIST_LABELS):
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        idx = np.flatnonzero(labels == class_id)[offset:]
        if per_class is not None:
            if len(idx) < per_class:
                log.warning(
                    "Fashion-MNIST %s has only %d %s images after offset %d (asked for %d)",
                    split,
                    len(idx),
                    name,
                    offset,
                    per_class,
                )
            idx = idx[:per_class]
        jobs.extend((folder / f"{split}_{int(i):05d}.png", int(i)) for i in idx)

    todo = [(p, i) for p, i in jobs if not p.exists()]
    for path, i in track(todo, desc=f"Fashion-MNIST {split}", unit="img", enabled=progress):
        _save_png(path, images[i])
    log.info("Fashion-MNIST %s: %d images in %s (%d new) from %s", split, len(jobs), out, len(todo), where)
    return DatasetInfo(path=out, labels=FASHION_MNIST_LABELS, n_images=len(jobs), source=where)


# --------------------------------------------------------------------------- flowers


def _check_member(member: tarfile.TarInfo, dest: Path) -> None:
    """Refuse archive entries that would land outside ``dest`` or are not plain files/dirs."""
    name = member.name
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or (parts and ":" in parts[0]) or ".." in parts:
        raise DataError(
            f"Refusing to extract archive member {name!r}: its path leaves the target folder",
            hint="the archive is not a plain data archive; check where it came from",
        )
    if member.issym() or member.islnk():
        target = PurePosixPath(member.linkname)
        base = PurePosixPath(name).parent if member.issym() else PurePosixPath()
        resolved = os.path.normpath(dest / base / target)
        if target.is_absolute() or not Path(resolved).is_relative_to(dest):
            raise DataError(
                f"Refusing to extract archive member {name!r}: it links to "
                f"{member.linkname!r}, outside the target folder",
                hint="the archive is not a plain data archive; check where it came from",
            )
    elif not (member.isfile() or member.isdir()):
        raise DataError(
            f"Refusing to extract archive member {name!r}: not a regular file or folder",
            hint="the archive is not a plain data archive; check where it came from",
        )


def _extract_flowers(archive: Path, dest: Path) -> None:
    """Extract ``flower_photos/`` from ``archive`` into ``dest``, minus its top-level LICENSE.txt."""
    try:
        dest = dest.resolve()
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for m in members:
                _check_member(m, dest)
            keep = [
                m
                for m in members
                if PurePosixPath(m.name).parts[:1] == ("flower_photos",)
                and PurePosixPath(m.name) != PurePosixPath("flower_photos/LICENSE.txt")
            ]
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, members=keep, filter="data")
            else:  # Python < 3.10.12 / 3.11.4: our own checks above are the guard
                tar.extractall(dest, members=keep)
    except (tarfile.TarError, EOFError, zlib.error) as err:
        raise DataError(
            f"Cannot extract the flowers archive: {err}",
            hint="the download is damaged or not flower_photos.tgz; run again",
        ) from err


def _flowers_info(photos: Path, source: str) -> DatasetInfo:
    labels = tuple(sorted(d.name for d in photos.iterdir() if d.is_dir() and not d.name.startswith(".")))
    if not labels:
        raise DataError(f"{photos} holds no class folders", hint="the archive is not flower_photos.tgz; check the URL")
    n = sum(1 for label in labels for f in (photos / label).iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS)
    return DatasetInfo(path=photos, labels=labels, n_images=n, source=source)


def download_flowers(out_dir: str | Path, *, url: str = FLOWERS_URL, progress: bool = False) -> DatasetInfo:
    """Download and extract TensorFlow's flower photos into ``out_dir/flower_photos/<class>/``.

    The archive is extracted into a hidden sibling folder and renamed into place, so
    ``flower_photos`` either is complete or absent; when it exists already nothing is
    downloaded again. Entries that would escape ``out_dir`` are refused.
    """
    out = Path(out_dir).expanduser()
    photos = out / "flower_photos"
    if photos.is_dir():
        log.info("Flowers already in %s; not downloading again", photos)
        return _flowers_info(photos, url)

    out.mkdir(parents=True, exist_ok=True)
    token = f"{os.getpid()}-{secrets.token_hex(4)}"
    archive = out / f".flower_photos.tgz.partial-{token}"
    staging = out / f".flower_photos.partial-{token}"
    try:
        log.info("Downloading %s", url)
        try:
            _download(url, archive, desc="flower_photos.tgz", progress=progress)
        except _NETWORK_ERRORS as err:
            raise OfflineError(
                f"The flowers data set cannot be downloaded ({_reason(err)})",
                hint=f"download {FLOWERS_URL} on a connected machine and pass its file:// URL, "
                "or extract it yourself and use --image_dir",
            ) from err
        staging.mkdir()
        _extract_flowers(archive, staging)
        if not (staging / "flower_photos").is_dir():
            raise DataError(
                f"The archive at {url} has no flower_photos/ folder", hint="check the URL points at flower_photos.tgz"
            )
        os.replace(staging / "flower_photos", photos)
    finally:
        archive.unlink(missing_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
    info = _flowers_info(photos, url)
    log.info("Flowers: %d images in %d classes in %s", info.n_images, len(info.labels), photos)
    return info


# --------------------------------------------------------------------------- listing


def list_datasets() -> list[dict]:
    """Describe the demo data sets (for ``headstart datasets`` with no name)."""
    debian = Path(FASHION_MNIST_DEBIAN_DIR)
    installed = all((debian / n).is_file() for s in _SPLIT_PREFIX for n in _fashion_files(s))
    return [
        {
            "name": "fashion-mnist",
            "description": "Zalando's clothing images: 10 classes, 28x28 grayscale",
            "size": "70,000 images (60,000 train + 10,000 test), 30 MB",
            "source": str(debian) if installed else FASHION_MNIST_URL,
            "installed": installed,
            "license": "MIT",
        },
        {
            "name": "flowers",
            "description": "TensorFlow's flower photos: daisy, dandelion, roses, sunflowers, tulips",
            "size": "3,670 JPEG photos, 5 classes, 218 MB",
            "source": FLOWERS_URL,
            "installed": False,
            "license": "CC-BY 2.0 (per-photo credits in the archive's LICENSE.txt)",
        },
    ]
