"""Settings: one home for each default and check; a bad value fails before any work, exit 2."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest
from clitools import assert_one_line_error, run_cli

from headstart.config import RetrainConfig, check_config
from headstart.errors import UsageError
from headstart.settings import SETTINGS, check_value


def test_every_config_field_has_one_setting_and_the_same_default() -> None:
    for f in fields(RetrainConfig):
        if f.name == "image_dir":
            continue
        assert f.name in SETTINGS
        assert f.default == SETTINGS[f.name].default, f.name


def test_cli_defaults_come_from_the_settings() -> None:
    from headstart.cli import build_parser

    args = build_parser().parse_args(["retrain", "--image_dir", "x"])
    for name, setting in SETTINGS.items():
        if hasattr(args, name) and name != "image_dir":
            assert getattr(args, name) == setting.default, name


@pytest.mark.parametrize("name, value", [
    ("optimizer", "adamw"), ("learning_rate", 0.0), ("learning_rate", float("nan")), ("how_many_training_steps", 0),
    ("train_batch_size", 0), ("eval_step_interval", 0), ("dropout", 1.0), ("hidden_units", -1),
    ("weight_decay", -0.1), ("random_crop", 150.0), ("distorted_copies", 0), ("crop_pct", 0.0),
    ("runtime", "tpu"), ("precision", "int4"), ("testing_percentage", -1.0), ("workers", 0),
])
def test_bad_values_are_usage_errors_naming_the_flag(tmp_path: Path, name: str, value: object) -> None:
    config = RetrainConfig(image_dir=tmp_path, **{name: value})
    with pytest.raises(UsageError, match=f"--{name}"):
        check_config(config)


def test_good_defaults_pass(tmp_path: Path) -> None:
    check_config(RetrainConfig(image_dir=tmp_path))
    check_value("optimizer", "sgd")


def test_percentages_over_100_together_fail(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="over 100"):
        check_config(RetrainConfig(image_dir=tmp_path, testing_percentage=60, validation_percentage=50))


def test_unknown_optimizer_through_the_api_fails_before_any_bottleneck(fashion_dir: Path, tmp_path: Path) -> None:
    from headstart.train import retrain

    cache = tmp_path / "cache"
    with pytest.raises(UsageError, match="--optimizer"):
        retrain(RetrainConfig(image_dir=fashion_dir, optimizer="adamw", bottleneck_dir=cache, progress=False))
    assert not (cache / "bottlenecks.sqlite").exists()


def test_bad_setting_on_the_command_line_exits_2_in_one_line(fashion_dir: Path, tmp_path: Path) -> None:
    result = run_cli("retrain", "--image_dir", fashion_dir, "--optimizer", "adamw", "--bottleneck_dir", tmp_path)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "--optimizer")
    result = run_cli("retrain", "--image_dir", fashion_dir, "--dropout", "1.5", "--bottleneck_dir", tmp_path)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "--dropout")
    assert not (tmp_path / "bottlenecks.sqlite").exists()


def test_gpu_decoding_without_cuda_fails_before_any_work(fashion_dir: Path, tmp_path: Path) -> None:
    from headstart.runtimes import cuda_available

    if cuda_available():
        pytest.skip("this machine has CUDA")
    result = run_cli("retrain", "--image_dir", fashion_dir, "--decode", "gpu", "--bottleneck_dir", tmp_path)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "--decode gpu")
    assert not (tmp_path / "bottlenecks.sqlite").exists()


def test_min_epochs_adds_steps_only_where_the_steps_would_not_make_that_many_passes(tmp_path: Path) -> None:
    config = RetrainConfig(image_dir=tmp_path)  # 1,000 steps of 100, at least 16 passes
    assert config.training_steps(2_379) == 1_000  # 42 passes already
    assert config.training_steps(48_000) == 16 * 480
    assert config.training_steps(48_001) == 16 * 481
    assert config.training_steps(None) == 1_000
    assert RetrainConfig(image_dir=tmp_path, min_epochs=0).training_steps(48_000) == 1_000
    assert RetrainConfig(image_dir=tmp_path, train_batch_size=-1).training_steps(48_000) == 1_000  # a step is a pass
    assert config.head_params(48_000)["how_many_training_steps"] == 7_680


def test_retrain_runs_the_extra_steps_and_reports_them(tmp_path: Path, fashion_dir: Path,
                                                        shared_cache_dir: Path) -> None:
    from headstart.train import retrain

    steps: list[int] = []
    config = RetrainConfig(image_dir=fashion_dir, output_dir=tmp_path / "run", bottleneck_dir=shared_cache_dir,
                           how_many_training_steps=3, min_epochs=2, train_batch_size=10, eval_step_interval=1,
                           early_stopping=False, progress=False, write_report=False)
    result = retrain(config, on_step=lambda step: steps.append(step.steps))
    n_train = result.metrics["training"]["n"]
    expected = 2 * -(-n_train // 10)
    assert expected > 3 and result.metrics["training"]["steps_run"] == expected
    assert set(steps) == {expected}  # the progress bar's total
