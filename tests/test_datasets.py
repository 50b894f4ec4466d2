"""Tests for headstart.datasets, with real images and no network.

Fashion-MNIST tests cut small IDX files out of the Debian package's real ones; the
download path is exercised with ``file://`` URLs. Flowers tests build a real .tgz
from scikit-image's sample photos.
"""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from headstart.data import datasets
from headstart.data.datasets import (FASHION_MNIST_LABELS, DatasetInfo, download_flowers, list_datasets,
                                write_fashion_mnist)
from headstart.errors import DataError, OfflineError, UsageError

DEBIAN = Path("/usr/share/datasets/fashion-mnist")
needs_debian = pytest.mark.skipif(not (DEBIAN / "t10k-images-idx3-ubyte.gz").is_file(),
                                  reason="Debian package dataset-fashion-mnist is not installed")

N_TRAIN, N_TEST = 400, 200


def _read_gz(path: Path) -> bytes:
    with gzip.open(path, "rb") as f:
        return f.read()


def _idx(magic: int, shape: tuple[int, ...], data: bytes) -> bytes:
    header = np.array([magic, *shape], dtype=">u4").tobytes()
    return gzip.compress(header + data, compresslevel=1)


@pytest.fixture(scope="module")
def mini_fmnist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first images of each real Fashion-MNIST file, as a valid 4-file IDX folder."""
    if not (DEBIAN / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip("Debian package dataset-fashion-mnist is not installed")
    out = tmp_path_factory.mktemp("fmnist")
    for prefix, n in (("train", N_TRAIN), ("t10k", N_TEST)):
        images = _read_gz(DEBIAN / f"{prefix}-images-idx3-ubyte.gz")[16:16 + n * 784]
        labels = _read_gz(DEBIAN / f"{prefix}-labels-idx1-ubyte.gz")[8:8 + n]
        (out / f"{prefix}-images-idx3-ubyte.gz").write_bytes(_idx(2051, (n, 28, 28), images))
        (out / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(_idx(2049, (n,), labels))
    return out


def _arrays(folder: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    images = np.frombuffer(_read_gz(folder / f"{prefix}-images-idx3-ubyte.gz")[16:], np.uint8)
    labels = np.frombuffer(_read_gz(folder / f"{prefix}-labels-idx1-ubyte.gz")[8:], np.uint8)
    return images.reshape(-1, 28, 28), labels


def _pngs(root: Path) -> list[Path]:
    return sorted(root.rglob("*.png"))


@pytest.fixture
def no_debian(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Pretend the Debian package is absent and give the cache its own folder."""
    monkeypatch.setattr(datasets, "FASHION_MNIST_DEBIAN_DIR", tmp_path / "no-debian")
    cache = tmp_path / "cache"
    monkeypatch.setenv("HEADSTART_CACHE_DIR", str(cache))
    return cache


# --------------------------------------------------------------------------- Fashion-MNIST


def test_writes_class_folders_of_real_pngs(mini_fmnist: Path, tmp_path: Path) -> None:
    info = write_fashion_mnist(tmp_path / "fm", per_class=3, source=mini_fmnist)
    assert info == DatasetInfo(tmp_path / "fm", FASHION_MNIST_LABELS, 30, str(mini_fmnist))
    images, labels = _arrays(mini_fmnist, "train")
    files = _pngs(tmp_path / "fm")
    assert len(files) == 30
    for f in files:
        assert f.name.startswith("train_") and f.suffix == ".png"
        index = int(f.stem.split("_")[1])
        assert FASHION_MNIST_LABELS[labels[index]] == f.parent.name
        with Image.open(f) as im:
            assert im.mode == "L" and im.size == (28, 28)
            np.testing.assert_array_equal(np.asarray(im), images[index])
    # names are the position in the IDX file: the first 3 of each class
    trouser = sorted(int(f.stem[6:]) for f in (tmp_path / "fm" / "Trouser").iterdir())
    assert trouser == list(np.flatnonzero(labels == 1)[:3])


def test_rerun_is_idempotent(mini_fmnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_fashion_mnist(tmp_path, per_class=2, source=mini_fmnist)
    before = {f: f.stat().st_mtime_ns for f in _pngs(tmp_path)}

    def must_not_write(*args: object) -> None:
        raise AssertionError("rewrote a file that was already there")

    monkeypatch.setattr(datasets, "_save_png", must_not_write)
    info = write_fashion_mnist(tmp_path, per_class=2, source=mini_fmnist)
    assert info.n_images == 20
    assert {f: f.stat().st_mtime_ns for f in _pngs(tmp_path)} == before
    assert not [p for p in tmp_path.rglob(".*")]


def test_test_split_with_offset_is_disjoint_from_first_images(mini_fmnist: Path, tmp_path: Path) -> None:
    first = write_fashion_mnist(tmp_path / "a", per_class=2, split="test", source=mini_fmnist)
    later = write_fashion_mnist(tmp_path / "b", per_class=3, split="test", offset=2, source=mini_fmnist)
    assert (first.n_images, later.n_images) == (20, 30)
    names_a = {f.relative_to(first.path) for f in _pngs(first.path)}
    names_b = {f.relative_to(later.path) for f in _pngs(later.path)}
    assert not names_a & names_b
    assert all(p.name.startswith("test_") for p in names_a | names_b)
    _, labels = _arrays(mini_fmnist, "t10k")
    bags = sorted(int(f.stem[5:]) for f in (later.path / "Bag").iterdir())
    assert bags == list(np.flatnonzero(labels == 8)[2:5])


def test_all_images_when_per_class_is_none(mini_fmnist: Path, tmp_path: Path) -> None:
    info = write_fashion_mnist(tmp_path, split="test", source=mini_fmnist)
    assert info.n_images == N_TEST == len(_pngs(tmp_path))


@needs_debian
def test_debian_package_is_the_default_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEADSTART_CACHE_DIR", str(tmp_path / "cache"))
    info = write_fashion_mnist(tmp_path / "fm", per_class=1, split="test")
    assert info.source == str(DEBIAN) and info.n_images == 10
    assert not (tmp_path / "cache").exists()


def test_downloads_into_cache_when_not_installed(mini_fmnist: Path, tmp_path: Path, no_debian: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets, "FASHION_MNIST_URL", mini_fmnist.as_uri() + "/")
    info = write_fashion_mnist(tmp_path / "fm", per_class=1, split="test")
    cached = no_debian / "datasets" / "fashion-mnist"
    assert sorted(p.name for p in cached.iterdir()) == ["t10k-images-idx3-ubyte.gz",
                                                        "t10k-labels-idx1-ubyte.gz"]
    assert info.n_images == 10 and info.source.startswith("file://")
    # second time: from the cache, the (now unreachable) URL is not needed
    monkeypatch.setattr(datasets, "FASHION_MNIST_URL", (tmp_path / "gone").as_uri() + "/")
    assert write_fashion_mnist(tmp_path / "fm2", per_class=1, split="test").n_images == 10


def test_source_may_be_a_base_url(mini_fmnist: Path, tmp_path: Path, no_debian: Path) -> None:
    info = write_fashion_mnist(tmp_path / "fm", per_class=1, source=mini_fmnist.as_uri())
    assert info.n_images == 10
    assert (no_debian / "datasets" / "fashion-mnist" / "train-images-idx3-ubyte.gz").is_file()


def test_offline_and_not_installed_is_a_clear_error(tmp_path: Path, no_debian: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets, "FASHION_MNIST_URL", (tmp_path / "unreachable").as_uri() + "/")
    with pytest.raises(OfflineError) as err:
        write_fashion_mnist(tmp_path / "fm", per_class=1)
    assert str(err.value).startswith("Fashion-MNIST is not installed and cannot be downloaded (")
    assert "apt-get install dataset-fashion-mnist" in err.value.hint and "--source DIR" in err.value.hint
    leftovers = list(no_debian.rglob("*")) if no_debian.exists() else []
    assert not [p for p in leftovers if p.is_file()]


def _corrupt(folder: Path, how: str) -> Path:
    target = folder / "train-labels-idx1-ubyte.gz"
    if how == "magic":
        target.write_bytes(_idx(2051, (10,), bytes(10)))
    elif how == "short":
        target.write_bytes(_idx(2049, (N_TRAIN,), bytes(N_TRAIN - 1)))
    elif how == "header":
        target.write_bytes(gzip.compress(b"\x00\x00"))
    elif how == "not-gzip":
        target.write_bytes(b"this is not gzip")
    elif how == "bad-label":
        target.write_bytes(_idx(2049, (N_TRAIN,), bytes([11]) * N_TRAIN))
    elif how == "count":
        target.write_bytes(_idx(2049, (5,), bytes(5)))
    return target


@pytest.mark.parametrize("how", ["magic", "short", "header", "not-gzip", "bad-label", "count"])
def test_bad_idx_file_is_a_data_error_naming_it(mini_fmnist: Path, tmp_path: Path, how: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for f in mini_fmnist.iterdir():
        (src / f.name).write_bytes(f.read_bytes())
    bad = _corrupt(src, how)
    with pytest.raises(DataError) as err:
        write_fashion_mnist(tmp_path / "fm", per_class=1, source=src)
    assert str(bad) in str(err.value)
    assert "\n" not in str(err.value) and err.value.hint


def test_missing_file_in_source_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz not found"):
        write_fashion_mnist(tmp_path / "fm", source=tmp_path)


@pytest.mark.parametrize("kwargs", [{"split": "validation"}, {"per_class": -1}, {"offset": -5}])
def test_bad_arguments_are_usage_errors(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(UsageError):
        write_fashion_mnist(tmp_path, **kwargs)


def test_old_module_name_is_the_same_module() -> None:
    import headstart.datasets

    assert headstart.datasets is datasets  # so setting an attribute through either name is seen by both


def test_list_datasets_describes_both() -> None:
    rows = list_datasets()
    assert [r["name"] for r in rows] == ["fashion-mnist", "flowers"]
    for row in rows:
        assert {"name", "description", "size", "source"} <= row.keys()
        assert all(isinstance(row[k], str) and row[k] for k in ("description", "size", "source"))


# --------------------------------------------------------------------------- flowers


def _jpeg(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    im = Image.fromarray(image)
    im.thumbnail((96, 96))
    im.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def flowers_tgz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small flower_photos.tgz laid out like the real one, with real photos."""
    skdata = pytest.importorskip("skimage.data")
    path = tmp_path_factory.mktemp("archive") / "flower_photos.tgz"
    with tarfile.open(path, "w:gz") as tar:
        for folder in ("flower_photos", "flower_photos/daisy", "flower_photos/roses"):
            info = tarfile.TarInfo(folder)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tar.addfile(info)
        _add(tar, "flower_photos/LICENSE.txt", b"All images licensed under CC-BY 2.0\n")
        _add(tar, "flower_photos/daisy/chelsea.jpg", _jpeg(skdata.chelsea()))
        _add(tar, "flower_photos/daisy/coffee.jpg", _jpeg(skdata.coffee()))
        _add(tar, "flower_photos/roses/astronaut.jpg", _jpeg(skdata.astronaut()))
        _add(tar, "flower_photos/roses/rocket.jpg", _jpeg(skdata.rocket()))
    return path


def test_download_flowers_from_file_url(flowers_tgz: Path, tmp_path: Path) -> None:
    info = download_flowers(tmp_path, url=flowers_tgz.as_uri(), progress=True)
    photos = tmp_path / "flower_photos"
    assert info == DatasetInfo(photos, ("daisy", "roses"), 4, flowers_tgz.as_uri())
    assert not (photos / "LICENSE.txt").exists()
    for jpg in photos.rglob("*.jpg"):
        with Image.open(jpg) as im:
            assert im.format == "JPEG" and im.mode == "RGB"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flower_photos"]  # no temp files left


def test_download_flowers_twice_does_not_download_again(flowers_tgz: Path, tmp_path: Path) -> None:
    download_flowers(tmp_path, url=flowers_tgz.as_uri())
    info = download_flowers(tmp_path, url=(tmp_path / "gone.tgz").as_uri())
    assert info.n_images == 4 and info.labels == ("daisy", "roses")


def _malicious(path: Path, kind: str) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        _add(tar, "flower_photos/daisy/ok.jpg", b"x")
        if kind == "dotdot":
            _add(tar, "../evil", b"owned")
        elif kind == "nested-dotdot":
            _add(tar, "flower_photos/../../evil", b"owned")
        elif kind == "absolute":
            _add(tar, str(path.parent / "evil"), b"owned")
        elif kind == "symlink":
            link = tarfile.TarInfo("flower_photos/daisy/link")
            link.type, link.linkname = tarfile.SYMTYPE, "../../../../etc/passwd"
            tar.addfile(link)
        elif kind == "device":
            dev = tarfile.TarInfo("flower_photos/daisy/dev")
            dev.type = tarfile.CHRTYPE
            tar.addfile(dev)
    return path


@pytest.mark.parametrize("kind", ["dotdot", "nested-dotdot", "absolute", "symlink", "device"])
def test_malicious_archive_is_refused(tmp_path: Path, kind: str) -> None:
    archive = _malicious(tmp_path / "bad.tgz", kind)
    out = tmp_path / "out" / "deeper"
    with pytest.raises(DataError, match="Refusing to extract archive member") as err:
        download_flowers(out, url=archive.as_uri())
    assert err.value.hint
    assert not (tmp_path / "evil").exists() and not (tmp_path / "out" / "evil").exists()
    assert list(out.iterdir()) == []  # no flower_photos, no temp files


def test_archive_without_flower_photos(tmp_path: Path) -> None:
    archive = tmp_path / "other.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        _add(tar, "something/else.jpg", b"x")
    with pytest.raises(DataError, match="no flower_photos"):
        download_flowers(tmp_path / "out", url=archive.as_uri())


def test_damaged_archive(tmp_path: Path) -> None:
    archive = tmp_path / "damaged.tgz"
    archive.write_bytes(os.urandom(2000))
    with pytest.raises(DataError, match="Cannot extract"):
        download_flowers(tmp_path / "out", url=archive.as_uri())
    assert list((tmp_path / "out").iterdir()) == []


def test_flowers_offline_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(OfflineError) as err:
        download_flowers(tmp_path, url=(tmp_path / "missing.tgz").as_uri())
    assert str(err.value).startswith("The flowers data set cannot be downloaded (")
    assert datasets.FLOWERS_URL in err.value.hint
    assert list(tmp_path.iterdir()) == []
