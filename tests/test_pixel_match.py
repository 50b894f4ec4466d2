"""Aligned pixel comparison of near-duplicate candidates, on real Fashion-MNIST images and sample photos."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from doctor_planting import NEAR_DUPLICATE_KINDS, make_variant
from PIL import Image

from headstart.doctor_checks import scan_images
from headstart.doctor_results import PIXEL_FLOOR, PIXEL_MATCH
from headstart.pixel_match import _window_norms, descriptors, match_scores, match_thumbnail


def _thumb(img: Image.Image) -> np.ndarray:
    return match_thumbnail(np.asarray(img.convert("L")))


def _score(a: np.ndarray, b: np.ndarray, search: bool = True) -> float:
    return float(match_scores([a, b], np.array([0]), np.array([1]), np.array([search]))[0])


@pytest.fixture(scope="module")
def fashion_images(fashion_dir: Path) -> dict[str, list[Image.Image]]:
    out = {}
    for folder in sorted(fashion_dir.iterdir()):
        out[folder.name] = [Image.open(p).convert("L") for p in sorted(folder.iterdir())[:12]]
    return out


def test_every_kind_of_copy_lines_up_with_its_original(fashion_images: dict) -> None:
    rng = np.random.default_rng(0)
    scores = {kind: [] for kind in NEAR_DUPLICATE_KINDS}
    for images in fashion_images.values():
        for img in images[:3]:
            for kind in NEAR_DUPLICATE_KINDS:
                copy, _ = make_variant(img, kind, rng)
                scores[kind].append(_score(_thumb(img), _thumb(copy)))
    for kind, values in scores.items():
        assert min(values) > 0.98 and np.mean(np.array(values) >= PIXEL_MATCH) >= 0.9, (kind, values)


def test_a_copy_outscores_every_look_alike(fashion_images: dict) -> None:
    """Twelve plain trousers line up well with each other; each one's JPEG copy lines up better still."""
    trousers = [_thumb(img) for img in fashion_images["Trouser"]]
    rng = np.random.default_rng(1)
    for n, img in enumerate(fashion_images["Trouser"][:4]):
        copy = _thumb(make_variant(img, "jpeg60", rng)[0])
        rivals = [_score(copy, t) for m, t in enumerate(trousers) if m != n]
        assert _score(copy, trousers[n]) > max(rivals)


def test_integer_crop_matches_exactly_and_scores_are_symmetric(photos: dict) -> None:
    grey = np.asarray(Image.fromarray(photos["chelsea"]).convert("L"))
    patch = grey[100:130, 200:230]  # 30 px: compared at its own size
    crop = patch[2:29, 1:28]
    a, b = match_thumbnail(patch), match_thumbnail(crop)
    assert _score(a, b) > 0.999
    i, j = np.array([0, 1]), np.array([1, 0])
    forward, backward = match_scores([a, b], i, j)
    assert forward == pytest.approx(backward)


def test_crop_resized_back_needs_the_search(photos: dict) -> None:
    """A 6 % crop enlarged back to the original size: only the crop-fraction search lines it up (to within
    the ratio test's floor: on a 32-pixel thumbnail the crop falls between whole pixels)."""
    img = Image.fromarray(photos["coffee"]).convert("L").resize((200, 150))
    copy = img.crop((6, 4, 194, 145)).resize((200, 150), Image.Resampling.BICUBIC)
    a, b = _thumb(img), _thumb(copy)
    assert a.shape == b.shape == (24, 32)
    searched, plain = _score(a, b, search=True), _score(a, b, search=False)
    assert searched >= PIXEL_FLOOR > plain
    search_only = match_scores([a, b], np.array([0]), np.array([1]), plain=False)[0]  # what a later pass adds
    assert search_only == pytest.approx(searched)


def test_flat_and_unreadable_images_match_nothing(fashion_images: dict) -> None:
    blank = np.full((28, 28), 128, np.uint8)
    other = _thumb(fashion_images["Bag"][0])
    assert _score(blank, other) == 0.0 and _score(blank, blank.copy()) == 0.0
    assert not descriptors([blank]).any()
    unreadable = np.zeros((0, 0), np.uint8)  # what scan_images gives a file it cannot decode
    scores = match_scores([other, unreadable, other.copy()], np.array([0, 0]), np.array([1, 2]))
    assert scores[0] <= 0 and scores[1] > 0.999


def test_window_norms_match_a_direct_computation(photos: dict) -> None:
    a = np.asarray(Image.fromarray(photos["astronaut"]).convert("L"), np.float32)[None, 50:70, 80:104]
    got = _window_norms(a, (17, 21)).reshape(4, 4)
    for y, x in itertools.product(range(4), range(4)):
        w = a[0, y : y + 17, x : x + 21]
        assert got[y, x] == pytest.approx(np.linalg.norm(w - w.mean()), rel=1e-4)


def test_scan_images_gives_thumbnails_and_the_statistics_per_image(fashion_dir: Path, tmp_path: Path) -> None:
    paths = sorted(fashion_dir.rglob("*.png"))[:5]
    big = tmp_path / "big.jpg"
    Image.fromarray(np.tile(np.arange(256, dtype=np.uint8), (300, 2))).save(big)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    stats, thumbs = scan_images([*paths, big, bad], workers=2)
    assert [t.shape for t in thumbs[:5]] == [(28, 28)] * 5 and thumbs[5].shape == (19, 32)
    assert thumbs[6].size == 0 and stats[6].error and stats[5].width == 512 and stats[5].height == 300
    one = np.asarray(Image.open(paths[0]).convert("L"), np.float32)
    assert stats[0].mean == pytest.approx(one.mean(), abs=1e-3) and stats[0].std == pytest.approx(one.std(), abs=1e-3)
