"""The bottleneck pipeline: parallel decoding in order, bounded look-ahead,
bad files skipped, work kept batch by batch, threads and processes alike."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from headstart.backbones import resolve_backbone
from headstart.cache import BottleneckCache
from headstart.data import load_image
from headstart.errors import UsageError
from headstart.features import compute_bottlenecks, decode_ahead, decode_one
from headstart.runtimes import create_runner, resolve_runtime


@pytest.fixture(scope="module")
def backbone():
    return resolve_backbone("efficientnet_lite0", crop_pct=1.0)


@pytest.fixture(scope="module")
def runner(backbone, shared_cache_dir):
    return create_runner(backbone, resolve_runtime(), shared_cache_dir / "models")


@pytest.fixture
def photo_files(tmp_path: Path, photos) -> list[Path]:
    """Nine real JPEG photos of different sizes, plus a PNG."""
    from PIL import Image

    out = []
    for i, (name, array) in enumerate(sorted(photos.items())):
        image = Image.fromarray(array)
        for j, scale in enumerate((1.0, 0.7, 0.45)):
            path = tmp_path / f"{name}_{j}.jpg"
            image.resize((int(image.width * scale), int(image.height * scale))).save(path, quality=90)
            out.append(path)
    png = tmp_path / "chelsea.png"
    Image.fromarray(photos["chelsea"]).save(png)
    return out + [png]


@pytest.fixture
def records(photo_files):
    from headstart.bench import list_image_records

    return list_image_records(photo_files[0].parent)


class _Recording(list):
    """A list of paths that remembers the highest position read from it."""

    highest = -1

    def __getitem__(self, index):
        if isinstance(index, int):
            self.highest = max(self.highest, index)
        return super().__getitem__(index)


@pytest.mark.parametrize("mode", ["threads", "processes"])
def test_decode_ahead_yields_in_order_and_equals_load_image(photo_files, prep, mode):
    got = list(decode_ahead(photo_files, prep, batch_size=4, workers=2, mode=mode))
    assert [position for position, _, _ in got] == list(range(len(photo_files)))
    for (_, image, error), path in zip(got, photo_files):
        assert error is None
        np.testing.assert_array_equal(image, load_image(path, prep))


def test_decode_ahead_is_bounded_by_the_look_ahead(photo_files, prep):
    paths = _Recording(photo_files * 20)
    items = decode_ahead(paths, prep, batch_size=4, workers=2, lookahead_batches=2)
    for _ in range(3):
        next(items)
    assert paths.highest < 3 + 8  # never more than lookahead_batches * batch_size ahead
    items.close()  # stopping early cancels what is queued
    assert paths.highest < len(paths) - 1


def test_bad_files_become_reasons_not_exceptions(tmp_path, photo_files, prep):
    text = tmp_path / "notes.jpg"
    text.write_text("not a photo")
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(photo_files[0].read_bytes()[:300])
    missing = tmp_path / "gone.jpg"
    assert decode_one(text, prep)[1] == "not an image (unrecognised format)"
    assert decode_one(missing, prep)[1] == "file not found"
    image, reason = decode_one(truncated, prep)
    assert image is None and "truncated" in reason.lower()
    got = list(decode_ahead([photo_files[0], text, missing, photo_files[1]], prep, 2, 2))
    assert [image is None for _, image, _ in got] == [False, True, True, False]


def test_unknown_decode_mode_is_a_usage_error(records, backbone, tmp_path, runner):
    with BottleneckCache(tmp_path / "c") as cache, pytest.raises(UsageError, match="decode mode"):
        compute_bottlenecks(records, backbone, cache, runner=runner, decode="fibers", progress=False)


def test_processes_and_threads_give_the_same_bottlenecks(records, backbone, tmp_path, runner):
    results = {}
    for mode in ("threads", "processes"):
        with BottleneckCache(tmp_path / mode) as cache:
            results[mode] = compute_bottlenecks(records, backbone, cache, runtime=resolve_runtime(), batch_size=4,
                                                workers=2, runner=runner, decode=mode, progress=False)
    assert results["threads"].computed == len(records)
    np.testing.assert_array_equal(results["threads"].vectors, results["processes"].vectors)


def test_unusable_images_are_skipped_with_a_reason(records, backbone, tmp_path, runner):
    from dataclasses import replace

    broken = records[0].path.with_name("broken.jpg")
    broken.write_bytes(b"\xff\xd8\xff\xe0 definitely not the rest of a JPEG")
    bad = replace(records[0], path=broken, relpath="broken.jpg", sha256="0" * 64)
    with BottleneckCache(tmp_path / "c") as cache:
        result = compute_bottlenecks([bad, *records], backbone, cache, runtime=resolve_runtime(), runner=runner,
                                     batch_size=4, progress=False)
    assert [s.path for s in result.skipped] == [broken]
    assert result.computed == len(records) and len(result.records) == len(records)


def test_an_interrupted_run_keeps_every_finished_batch(records, backbone, tmp_path, runner):
    calls = []

    def interrupted(images: np.ndarray) -> np.ndarray:
        calls.append(len(images))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return runner(images)

    choice = resolve_runtime()
    with BottleneckCache(tmp_path / "c") as cache:
        with pytest.raises(KeyboardInterrupt):
            compute_bottlenecks(records, backbone, cache, runtime=choice, runner=interrupted, batch_size=3,
                                progress=False)
        resumed = compute_bottlenecks(records, backbone, cache, runtime=choice, runner=runner, batch_size=3,
                                      progress=False)
    assert resumed.cached == 6 and resumed.computed == len(records) - 6


def test_duplicates_are_computed_once(records, backbone, tmp_path, runner):
    seen = []

    def counting(images: np.ndarray) -> np.ndarray:
        seen.append(len(images))
        return runner(images)

    with BottleneckCache(tmp_path / "c") as cache:
        result = compute_bottlenecks([*records, *records[:3]], backbone, cache, runtime=resolve_runtime(),
                                     runner=counting, progress=False)
    assert sum(seen) == len(records) and len(result.records) == len(records) + 3
    np.testing.assert_array_equal(result.vectors[-3:], result.vectors[:3])


def test_cached_folder_never_builds_the_network(records, backbone, tmp_path, runner):
    choice = resolve_runtime()
    with BottleneckCache(tmp_path / "c") as cache:
        compute_bottlenecks(records, backbone, cache, runtime=choice, runner=runner, progress=False)

        def must_not_run(images: np.ndarray) -> np.ndarray:
            raise AssertionError("the network ran on a cached folder")

        again = compute_bottlenecks(records, backbone, cache, runtime=choice, runner=must_not_run, progress=False)
    assert again.cached == len(records) and again.computed == 0
