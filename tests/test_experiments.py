"""Sweeps, learning curves and backbone comparison on real Fashion-MNIST bottlenecks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from headstart.errors import UsageError
from headstart.backbone_comparison import compare
from headstart.experiments import (best_validation_step, check_grid, curve, load_features, parse_sizes,
                                   sample_per_class, sweep, training_config)
from headstart.head import TrainStep

ROW_KEYS = {"learning_rate", "train_batch_size", "how_many_training_steps", "optimizer", "hidden_units", "dropout",
            "weight_decay", "test_accuracy", "validation_accuracy", "macro_precision", "macro_recall", "cross_entropy",
            "train_s", "best_step", "diverged"}


@pytest.fixture(scope="module")
def features(trained_run, fashion_dir, shared_cache_dir):
    """The fixture folder's bottlenecks, read from the cache the trained run filled."""
    return load_features(training_config(fashion_dir, bottleneck_dir=shared_cache_dir, progress=False))


def test_features_come_from_the_cache_and_use_retrains_split(features, trained_run):
    assert features.computed == 0 and features.cached == 300
    assert len(features.y_test) == trained_run.test.n
    assert len(features.y_train) + len(features.y_val) + len(features.y_test) == 300
    assert features.n_features == 1280


def test_sweep_runs_every_cell_with_all_scores(features, fashion_dir):
    result = sweep(fashion_dir, {"learning_rate": [0.001, 0.01], "train_batch_size": [4, 32],
                                 "how_many_training_steps": [100]}, repeats=2, features=features)
    assert result.swept == ("learning_rate", "train_batch_size")
    assert len(result.rows) == 4
    assert [(r["learning_rate"], r["train_batch_size"]) for r in result.rows] == [
        (0.001, 4), (0.001, 32), (0.01, 4), (0.01, 32)]
    for row in result.rows:
        assert ROW_KEYS <= set(row)
        assert row["how_many_training_steps"] == 100 and row["optimizer"] == "adam" and row["repeats"] == 2
        for key in ("test_accuracy", "validation_accuracy", "macro_precision", "macro_recall"):
            assert 0.0 <= row[key] <= 1.0
        assert row["test_accuracy"] > 0.3  # ten classes: chance is 0.1
        assert row["cross_entropy"] > 0 and row["train_s"] > 0
        assert 0 <= row["best_step"] < 100
        assert row["diverged"] is False
        assert row["n_test"] == len(features.y_test)


def test_sweep_repeats_use_different_seeds(features, fashion_dir):
    one = sweep(fashion_dir, {"train_batch_size": [4], "how_many_training_steps": [30]}, repeats=3,
                features=features).rows[0]
    assert one["test_accuracy_std"] > 0  # three seeds, three different heads


def test_a_diverging_learning_rate_is_reported_not_raised(features, fashion_dir):
    result = sweep(fashion_dir, {"learning_rate": [0.001, 1e30], "optimizer": ["sgd"],
                                 "how_many_training_steps": [20]}, hidden_units=16, features=features)
    ok, bad = result.rows
    assert ok["diverged"] is False and bad["diverged"] is True
    assert bad["cross_entropy"] is None  # NaN is not JSON; None says "no finite loss"
    assert 0.0 <= bad["test_accuracy"] <= 1.0


def test_bad_grids_are_usage_errors(fashion_dir):
    with pytest.raises(UsageError, match="cannot sweep"):
        check_grid({"image_dir": ["x"]})
    with pytest.raises(UsageError):
        check_grid({"learning_rate": ["fast"]})
    with pytest.raises(UsageError, match="learning_rate"):
        sweep(fashion_dir, {"learning_rate": [0.01, -1.0]})
    with pytest.raises(UsageError, match="optimizer"):
        sweep(fashion_dir, {"optimizer": ["rmsprop"]})
    with pytest.raises(UsageError, match="repeats"):
        sweep(fashion_dir, {"learning_rate": [0.01]}, repeats=0)


def test_best_validation_step_is_the_first_step_at_the_best_accuracy():
    rows = [TrainStep(0, 0.5, 1.0, 0.4, 1.0), TrainStep(10, 0.6, 0.8, 0.7, 0.9),
            TrainStep(20, 0.7, 0.6, 0.7, 0.9), TrainStep(30, 0.7, math.nan, 0.9, 0.9)]
    assert best_validation_step(rows) == 10  # the NaN row marks divergence and does not count
    assert best_validation_step([TrainStep(0, 0.5, 1.0, None, None)]) is None


def test_sizes_and_per_class_sampling():
    assert parse_sizes(["1", "5", "ALL"]) == [1, 5, "all"]
    for bad in (["0"], ["x"], []):
        with pytest.raises(UsageError):
            parse_sizes(bad)
    y = np.repeat(np.arange(3), [5, 2, 9])
    idx = sample_per_class(y, 3, seed=0)
    assert np.bincount(y[idx]).tolist() == [3, 2, 3]  # a class with fewer gives all it has
    assert not np.array_equal(idx, sample_per_class(y, 3, seed=1))
    assert np.array_equal(idx, sample_per_class(y, 3, seed=0))
    assert len(sample_per_class(y, "all", seed=0)) == len(y)


def test_curve_rises_with_images_per_class(features, fashion_dir):
    result = curve(fashion_dir, [1, 5, "all"], repeats=3, how_many_training_steps=200, features=features)
    rows = result.rows
    assert [r["images_per_class"] for r in rows] == [1, 5, "all"]
    assert [r["n_train"] for r in rows[:2]] == [10, 50]
    assert rows[2]["n_train"] == len(features.y_train)
    assert {r["n_test"] for r in rows} == {len(features.y_test)}
    for r in rows:
        assert r["accuracy_min"] <= r["accuracy_mean"] <= r["accuracy_max"] and r["accuracy_std"] >= 0
    assert rows[0]["accuracy_mean"] < rows[2]["accuracy_mean"]
    assert rows[0]["accuracy_std"] > 0  # one image per class: the sample matters


def test_compare_without_timing_is_fast_and_complete(trained_run, fashion_dir, shared_cache_dir):
    result = compare(fashion_dir, ["efficientnet_lite0"], measure_speed=False, bottleneck_dir=shared_cache_dir,
                     how_many_training_steps=200, progress=False)
    (row,) = result.rows
    assert row["backbone"] == "efficientnet_lite0" and row["bottleneck_size"] == 1280
    assert row["input_size"] == 224 and row["bottlenecks_computed"] == 0
    assert 0.3 < row["test_accuracy"] <= 1.0 and 0 <= row["macro_precision"] <= 1
    assert result.training["how_many_training_steps"] == 200


def test_compare_rejects_bad_backbone_lists(fashion_dir):
    with pytest.raises(UsageError):
        compare(fashion_dir, [])
    with pytest.raises(UsageError, match="twice"):
        compare(fashion_dir, ["efficientnet_lite0", "efficientnet_lite0"])
    with pytest.raises(UsageError, match="unknown backbone"):
        compare(fashion_dir, ["no_such_network_xyz"], measure_speed=False)


@pytest.mark.slow
def test_compare_two_real_backbones_measures_cost_and_accuracy(trained_run, fashion_dir, shared_cache_dir):
    result = compare(fashion_dir, ["efficientnet_lite0", "efficientnet_lite1"], bottleneck_dir=shared_cache_dir,
                     how_many_training_steps=200, timing_seconds=0.3, progress=False)
    lite0, lite1 = result.rows
    assert lite1["input_size"] == 240
    assert 3e6 < lite0["params"] < lite1["params"] < 6e6  # feature extractors, ImageNet classifier removed
    assert 2e8 < lite0["macs"] < lite1["macs"] < 1e9
    for row in (lite0, lite1):
        assert row["images_per_s"] > 0 and row["latency_ms"] > 0 and 0.3 < row["test_accuracy"] <= 1
    assert lite1["bottlenecks_computed"] in (0, 300)
