"""Fine-tuning the top stages from cached cut-point maps: cut points, the map store, training, the run directory."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from clitools import assert_one_line_error, run_cli

from headstart.backbones import Backbone, resolve_backbone
from headstart.config import RetrainConfig, check_config
from headstart.errors import UsageError
from headstart.settings import blocks_value

LITE0_MAPS = {1: (192, 7, 7), 2: (112, 14, 14), 3: (80, 14, 14), 7: (32, 112, 112)}


@pytest.fixture(scope="module")
def lite0() -> Backbone:
    return resolve_backbone("efficientnet_lite0")


@pytest.fixture(scope="module")
def photo_batch(photos, lite0) -> np.ndarray:
    from headstart.model import as_network_input

    return np.stack([as_network_input(p, lite0.preprocessing) for p in photos.values()])


# ---------------------------------------------------------------- cut points


def test_frozen_then_top_is_the_whole_network_on_real_photos(lite0, photo_batch) -> None:
    from headstart.map_cache import map_shape
    from headstart.networks import create_feature_extractor, split_backbone

    with torch.inference_mode():
        whole = create_feature_extractor(lite0)(torch.from_numpy(photo_batch)).numpy()
        for blocks, shape in LITE0_MAPS.items():
            frozen, top = split_backbone(lite0, blocks)
            maps = frozen(torch.from_numpy(photo_batch))
            assert tuple(maps.shape) == (len(photo_batch), *shape)
            assert map_shape(lite0, blocks) == shape
            np.testing.assert_allclose(top(maps).numpy(), whole, rtol=1e-4, atol=1e-4)
            # Only the top stages, the head conv and its norm are trained; never the stem or the classifier.
            names = [name for name, _ in top.trainable_parameters()]
            assert names and all(n.startswith((*[f"blocks.{i}." for i in range(7 - blocks, 7)], "conv_head", "bn2"))
                                 for n in names)


def test_cut_points_beyond_the_depth_or_on_uncuttable_backbones_are_usage_errors(lite0, tmp_path: Path) -> None:
    from headstart.finetune_run import check_fine_tune

    config = RetrainConfig(image_dir=tmp_path, fine_tune_blocks=8)
    with pytest.raises(UsageError, match="beyond the depth of efficientnet_lite0") as err:
        check_fine_tune(config, lite0)
    assert "1-7" in err.value.hint
    resnet = Backbone("resnet18", "resnet18", lite0.preprocessing, None, "none", 512)
    with pytest.raises(UsageError, match="cannot be cut"):
        check_fine_tune(replace(config, fine_tune_blocks=2), resnet)
    assert check_fine_tune(replace(config, fine_tune_blocks="all"), resnet) == "all"
    with pytest.raises(UsageError, match="--random_crop needs the images"):
        check_fine_tune(replace(config, fine_tune_blocks=1, random_crop=10.0), lite0)


def test_fine_tune_blocks_values(tmp_path: Path) -> None:
    assert blocks_value("3") == 3 and blocks_value("ALL") == "all" and blocks_value(2) == 2
    for bad in (-1, "some", 1.5):
        with pytest.raises(UsageError, match="--fine_tune_blocks"):
            check_config(RetrainConfig(image_dir=tmp_path, fine_tune_blocks=bad), need_image_dir=False)


@pytest.mark.slow  # a whole CLI process that builds the network
def test_a_cut_beyond_the_depth_fails_in_one_line_before_any_work(fashion_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    result = run_cli("retrain", "--image_dir", fashion_dir, "--output_dir", tmp_path / "run", "--bottleneck_dir",
                     cache, "--fine_tune_blocks", "9")
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "--fine_tune_blocks 9", "7 stages")
    assert "1-7" in result.stderr.strip().splitlines()[-1]
    assert not (cache / "maps.sqlite").exists() and not (tmp_path / "run").exists()


# ---------------------------------------------------------------- the map store


@pytest.mark.slow
def test_maps_are_cached_by_content_and_a_second_run_computes_nothing(fashion_dir: Path, lite0, tmp_path: Path) -> None:
    from headstart.data import index_image_dir, load_image
    from headstart.map_cache import MapCache, compute_maps, read_maps
    from headstart.networks import split_backbone

    records = index_image_dir(fashion_dir).records[:40]
    with MapCache(tmp_path) as cache:
        first = compute_maps(records[:24], lite0, 1, cache, progress=False)  # as if interrupted after 24
        again = compute_maps(records, lite0, 1, cache, progress=False)
        assert (first.computed, first.cached) == (24, 0)
        assert (again.computed, again.cached) == (16, 24)  # resumed: only the missing ones ran
        rerun = compute_maps(records, lite0, 1, cache, progress=False)
        assert (rerun.computed, rerun.cached) == (0, 40)
        other_cut = compute_maps(records[:4], lite0, 2, cache, progress=False)
        assert other_cut.computed == 4 and other_cut.extractor != rerun.extractor  # the cut point is in the key
        maps = read_maps(cache, rerun, records[:4])
    assert maps.dtype == np.float16 and maps.shape == (4, 192, 7, 7)
    assert rerun.bytes_per_image == 192 * 7 * 7 * 2
    # The runtime's maps (OpenVINO bf16 here, or whichever runtime auto picks) match PyTorch fp32's.
    frozen, _ = split_backbone(lite0, 1)
    pixels = np.stack([load_image(r.path, lite0.preprocessing) for r in records[:4]])
    with torch.inference_mode():
        reference = frozen(torch.from_numpy(pixels)).numpy().reshape(4, -1)
    got = maps.astype(np.float32).reshape(4, -1)
    cosine = (got * reference).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(reference, axis=1)
    assert cosine.min() > 0.99


def test_flipping_maps_mirrors_the_width_and_approximates_the_mirrored_image(lite0, photo_batch) -> None:
    from headstart.map_cache import flip_maps
    from headstart.networks import split_backbone

    x = np.arange(2 * 3 * 2 * 4, dtype=np.float32).reshape(2, 3, 2, 4)
    np.testing.assert_array_equal(flip_maps(x), x[..., ::-1])
    some = flip_maps(torch.from_numpy(x), torch.tensor([False, True]))
    np.testing.assert_array_equal(some[0].numpy(), x[0])
    np.testing.assert_array_equal(some[1].numpy(), x[1, ..., ::-1])
    # A conv map is not mirror-symmetric, but the mirrored map is far closer to the
    # mirrored image's map than the unflipped one is (measured: cosine 0.91-0.95 in front of the last stage).
    frozen, _ = split_backbone(lite0, 1)
    with torch.inference_mode():
        maps = frozen(torch.from_numpy(photo_batch))
        mirrored = frozen(torch.from_numpy(np.ascontiguousarray(photo_batch[:, :, ::-1])))
    cos = torch.nn.functional.cosine_similarity
    flipped = cos(flip_maps(maps).flatten(1), mirrored.flatten(1))
    assert flipped.min() > 0.85
    assert (flipped > cos(maps.flatten(1), mirrored.flatten(1))).all()


# ---------------------------------------------------------------- training and the run directory


@pytest.fixture(scope="module")
def tuned_run(fashion_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    from headstart.train import retrain

    base = tmp_path_factory.mktemp("finetune")
    # No validation split: 30 images a class leave too few to judge an epoch by, so every epoch runs and the
    # last is kept, and the test can see what training did (without label smoothing, the plain cross entropy).
    config = RetrainConfig(image_dir=fashion_dir, output_dir=base / "run", bottleneck_dir=base / "cache",
                           validation_percentage=0, fine_tune_blocks=1, fine_tune_epochs=2,
                           fine_tune_label_smoothing=0.0, how_many_training_steps=300, progress=False,
                           write_report=False)
    return config, retrain(config)


@pytest.mark.slow
def test_fine_tuning_trains_the_top_and_writes_a_tuned_backbone(tuned_run, lite0) -> None:
    from headstart.bundle import BACKBONE_NAME, load_bundle

    _, result = tuned_run
    tuned = result.metrics["fine_tune"]
    assert tuned["blocks"] == 1 and tuned["map_shape"] == [192, 7, 7] and tuned["bytes_per_image"] == 18816
    assert [h["epoch"] for h in tuned["history"]] == [1, 2] and tuned["best_epoch"] == 2
    assert tuned["history"][1]["train_loss"] < tuned["history"][0]["train_loss"]
    assert tuned["training_loss_end"] < tuned["training_loss_start"]
    assert result.metrics["bottlenecks"]["computed"] == 300
    bundle = load_bundle(result.run_dir)
    weights = (result.run_dir / BACKBONE_NAME).read_bytes()
    assert bundle.backbone.fine_tune_blocks == 1
    assert bundle.backbone.base_weights_fingerprint == lite0.weights_fingerprint
    assert bundle.backbone.weights_fingerprint == hashlib.sha256(weights).hexdigest() != lite0.weights_fingerprint
    manifest = json.loads((result.run_dir / "headstart.json").read_text())
    assert manifest["files"][BACKBONE_NAME]["sha256"] == bundle.backbone.weights_fingerprint
    # The full network in timm's names, ImageNet classifier included: Backbone(weights_path=...) works everywhere.
    from safetensors.torch import load_file

    state = load_file(str(result.run_dir / BACKBONE_NAME))
    import timm

    assert set(state) == set(timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict())
    assert "classifier.weight" in state
    assert set(bundle.head_tensors) >= {"final.weight", "final.bias"}
    assert bundle.head_tensors["final.weight"].shape == (1280, 10)


@pytest.mark.slow
def test_a_second_fine_tune_computes_no_map_and_repeats_exactly(tuned_run, tmp_path: Path) -> None:
    from headstart.bundle import load_bundle
    from headstart.train import retrain

    config, first = tuned_run
    second = retrain(replace(config, output_dir=tmp_path / "again", doctor=True))
    assert second.metrics["bottlenecks"] == {"computed": 0, "cached": 300, "skipped": 0}
    assert (tmp_path / "again" / "doctor.json").is_file() and "summary" in second.metrics["doctor"]  # --doctor too
    fingerprint = load_bundle(first.run_dir).backbone.weights_fingerprint
    assert load_bundle(second.run_dir).backbone.weights_fingerprint == fingerprint
    assert second.test.accuracy == first.test.accuracy


@pytest.mark.slow
def test_a_tuned_run_labels_and_exports_with_its_own_backbone(tuned_run, fashion_holdout_dir: Path) -> None:
    import headstart
    from headstart.cache import BottleneckCache
    from headstart.export import export_model

    config, result = tuned_run
    tuned_fp = json.loads((result.run_dir / "headstart.json").read_text())["backbone"]["weights_fingerprint"]
    with headstart.load_model(result.run_dir, bottleneck_dir=config.bottleneck_dir) as model:
        assert model.backbone.weights_path == (result.run_dir / "backbone.safetensors").resolve()
        assert model.backbone.weights_fingerprint == tuned_fp
    evaluated = headstart.evaluate(result.run_dir, fashion_holdout_dir, bottleneck_dir=config.bottleneck_dir,
                                   progress=False)
    assert evaluated.evaluation.n == 100 and evaluated.evaluation.accuracy > 0.6
    # Labelling cached its bottlenecks under the tuned weights' own fingerprint, never the base one's.
    with BottleneckCache(config.bottleneck_dir) as cache:
        described = [e.description for e in cache.stats().extractors if e.entries]
    assert any(d.get("weights_fingerprint") == tuned_fp for d in described)
    exported = export_model(result.run_dir, cache_dir=config.bottleneck_dir, progress=False)
    assert exported.check.passed and exported.check.agreement >= 0.995
    with headstart.load_model(exported.path) as onnx_model:
        files = sorted(fashion_holdout_dir.rglob("*.png"))[:20]
        exported_labels = [p.label for p in onnx_model.predict_files(files, top_k=1)[0]]
    with headstart.load_model(result.run_dir, runtime="torch") as torch_model:
        torch_labels = [p.label for p in torch_model.predict_files(files, top_k=1)[0]]
    assert np.mean(np.array(exported_labels) == np.array(torch_labels)) >= 0.95


@pytest.mark.slow
def test_an_interrupted_fine_tune_leaves_no_run_directory(fashion_dir: Path, tmp_path: Path, monkeypatch) -> None:
    import headstart.finetune
    from headstart.train import retrain

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(headstart.finetune, "train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        retrain(RetrainConfig(image_dir=fashion_dir, output_dir=tmp_path / "run", bottleneck_dir=tmp_path / "cache",
                              fine_tune_blocks=1, how_many_training_steps=50, progress=False))
    assert not (tmp_path / "run").exists() and not list(tmp_path.glob(".run*"))
    assert (tmp_path / "cache" / "maps.sqlite").exists()  # the maps computed so far stay for the next run


@pytest.mark.slow
def test_the_whole_network_trains_from_images(fashion_dir: Path, tmp_path: Path) -> None:
    from headstart.train import retrain

    small = tmp_path / "two"
    for label in ("Sneaker", "Bag"):
        (small / label).mkdir(parents=True)
        for path in sorted((fashion_dir / label).glob("*.png"))[:20]:
            (small / label / path.name).write_bytes(path.read_bytes())
    result = retrain(RetrainConfig(image_dir=small, output_dir=tmp_path / "run", bottleneck_dir=tmp_path / "cache",
                                   fine_tune_blocks="all", fine_tune_epochs=1, how_many_training_steps=50,
                                   progress=False, write_report=False))
    tuned = result.metrics["fine_tune"]
    assert tuned["blocks"] == "all" and tuned["distortion"]["flip_left_right"] and tuned["history"][-1]["epoch"] == 1
    assert json.loads((result.run_dir / "headstart.json").read_text())["backbone"]["fine_tune_blocks"] == "all"
