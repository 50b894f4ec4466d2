"""retrain.py's distortion flags, made cacheable: fixed draws per image and copy, real photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from headstart.data import Distortion, Preprocessing, load_image
from headstart.errors import UsageError
from headstart.config import RetrainConfig
from headstart.train import retrain

PREP = Preprocessing(224, 1.0, "bicubic", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


@pytest.fixture
def cat(photos, tmp_path: Path) -> Path:
    path = tmp_path / "chelsea.png"
    Image.fromarray(photos["chelsea"]).save(path)
    return path


def test_inactive_distortion_is_the_evaluation_transform(cat: Path) -> None:
    np.testing.assert_array_equal(load_image(cat, PREP, distortion=Distortion(), seed="x"), load_image(cat, PREP))


def test_each_copy_has_its_own_fixed_draw(cat: Path) -> None:
    distortion = Distortion(flip_left_right=True, random_crop=20, random_scale=20, random_brightness=20)
    first = load_image(cat, PREP, distortion=distortion, seed="image-hash")
    again = load_image(cat, PREP, distortion=distortion, seed="image-hash")
    other_copy = load_image(cat, PREP, distortion=Distortion(True, 20, 20, 20, copy=1), seed="image-hash")
    other_image = load_image(cat, PREP, distortion=distortion, seed="another-hash")
    assert first.shape == (224, 224, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, again)  # cacheable: the same draw every time
    assert not np.array_equal(first, other_copy)
    assert not np.array_equal(first, other_image)


def test_flip_mirrors_and_brightness_scales(cat: Path) -> None:
    plain = load_image(cat, PREP).astype(np.float64)
    flips = [load_image(cat, PREP, distortion=Distortion(flip_left_right=True, copy=c), seed="s") for c in range(8)]
    mirrored = [np.array_equal(f, plain[:, ::-1].astype(np.uint8)) for f in flips]
    same = [np.array_equal(f, plain.astype(np.uint8)) for f in flips]
    assert all(m or s for m, s in zip(mirrored, same)) and any(mirrored) and any(same)
    for copy in range(4):
        bright = load_image(cat, PREP, distortion=Distortion(random_brightness=30, copy=copy), seed="s")
        ratio = bright.astype(np.float64).mean() / plain.mean()
        assert 0.69 <= ratio <= 1.31


def test_percentages_are_checked() -> None:
    with pytest.raises(UsageError, match="random_crop"):
        Distortion(random_crop=150)


@pytest.mark.slow
def test_distorted_copies_are_cached_and_train_the_head(fashion_dir: Path, shared_cache_dir: Path,
                                                        tmp_path: Path) -> None:
    config = RetrainConfig(image_dir=fashion_dir, output_dir=tmp_path / "run", bottleneck_dir=shared_cache_dir,
                           flip_left_right=True, random_crop=10, distorted_copies=2, how_many_training_steps=100,
                           progress=False, write_report=False)
    first = retrain(config)
    n_train = first.metrics["splits"]["training"]
    assert first.metrics["distorted_bottlenecks"] == {"copies": 2, "computed": 2 * n_train, "cached": 0}
    assert first.metrics["training"]["n"] == 3 * n_train
    import json

    manifest = json.loads((first.run_dir / "headstart.json").read_text())
    assert manifest["hyperparameters"]["flip_left_right"] is True
    assert manifest["hyperparameters"]["distorted_copies"] == 2
    second = retrain(config)
    assert second.metrics["distorted_bottlenecks"] == {"copies": 2, "computed": 0, "cached": 2 * n_train}
    assert second.test.accuracy == first.test.accuracy


def test_flip_only_keeps_the_centre_crop_on_odd_margins(tmp_path: Path, photos) -> None:
    """Without crop or scale, a distorted copy is the evaluation image or its mirror, at any aspect ratio."""
    path = tmp_path / "odd.png"
    Image.fromarray(photos["coffee"][:, :439]).save(path)  # 439x400 -> 245x224: an odd margin
    plain = load_image(path, PREP)
    for copy in range(6):
        out = load_image(path, PREP, distortion=Distortion(flip_left_right=True, copy=copy), seed="s")
        assert np.array_equal(out, plain) or np.array_equal(out, plain[:, ::-1])
