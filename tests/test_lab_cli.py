"""The sweep, curve, compare and report commands, end to end on real images."""

from __future__ import annotations

import csv
import io
import json
import shutil

import pytest

from headstart.cli import main

SWEEP_KEYS = {"learning_rate", "train_batch_size", "how_many_training_steps", "test_accuracy",
              "validation_accuracy", "macro_precision", "macro_recall", "cross_entropy", "train_s"}


@pytest.fixture
def common(trained_run, fashion_dir, shared_cache_dir):
    return ["--image_dir", str(fashion_dir), "--bottleneck_dir", str(shared_cache_dir), "-q"]


def test_sweep_json_has_one_object_per_cell(common, capsys):
    code = main(["sweep", *common, "--learning_rate", "0.001,0.01", "--train_batch_size", "4,32",
                 "--how_many_training_steps", "50", "--format", "json"])
    assert code == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 4
    for row in rows:
        assert SWEEP_KEYS <= set(row)
        assert row["how_many_training_steps"] == 50 and 0 <= row["test_accuracy"] <= 1
    assert {(r["learning_rate"], r["train_batch_size"]) for r in rows} == {(0.001, 4), (0.001, 32), (0.01, 4),
                                                                          (0.01, 32)}


def test_sweep_table_csv_and_output_dir(common, capsys, tmp_path):
    out = tmp_path / "sweep"
    assert main(["sweep", *common, "--optimizer", "sgd,adam", "--how_many_training_steps", "30",
                 "--output_dir", str(out)]) == 0
    text = capsys.readouterr().out
    assert "optimizer" in text.splitlines()[0] and "test_accuracy" in text and "2 cells x 1 repeats" in text
    for name in ("sweep.json", "sweep.csv", "sweep.png", "sweep.html"):
        assert (out / name).stat().st_size > 0
    saved = json.loads((out / "sweep.json").read_text())
    assert saved["swept"] == ["optimizer"] and len(saved["rows"]) == 2
    assert "data:image/png;base64," in (out / "sweep.html").read_text()

    assert main(["sweep", *common, "--dropout", "0,0.5", "--how_many_training_steps", "30", "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["dropout"] for r in rows] == ["0.0", "0.5"] and all(r["test_accuracy"] for r in rows)


def test_sweep_reports_divergence(common, capsys):
    assert main(["sweep", *common, "--optimizer", "sgd", "--learning_rate", "0.01,1e30", "--hidden_units", "16",
                 "--how_many_training_steps", "20"]) == 0
    out = capsys.readouterr().out
    assert "DIVERGED" in out


def test_sweep_bad_values_are_usage_errors(common, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["sweep", *common, "--learning_rate", "0.01,fast"])
    assert exc.value.code == 2
    assert main(["sweep", *common, "--optimizer", "rmsprop"]) == 2
    assert "optimizer" in capsys.readouterr().err


def test_curve_json(common, capsys, tmp_path):
    assert main(["curve", *common, "--images_per_class", "1,all", "--repeats", "2", "--how_many_training_steps",
                 "100", "--format", "json", "--output_dir", str(tmp_path)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["images_per_class"] for r in rows] == [1, "all"]
    for row in rows:
        assert {"images_per_class", "accuracy_mean", "accuracy_std", "n_test"} <= set(row)
    assert (tmp_path / "curve.png").read_bytes().startswith(b"\x89PNG")
    with pytest.raises(SystemExit):
        main(["curve", *common, "--images_per_class", "0,5"])


def test_compare_json_without_timing(common, capsys):
    assert main(["compare", *common, "--backbones", "efficientnet_lite0", "--no_timing",
                 "--how_many_training_steps", "100", "--format", "json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["backbone"] == "efficientnet_lite0" and row["bottleneck_size"] == 1280
    assert 0 < row["test_accuracy"] <= 1


def test_report_rebuilds_a_run(trained_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run.run_dir, run)
    (run / "report.html").unlink()
    assert main(["report", str(run)]) == 0
    assert "report.html" in capsys.readouterr().out
    assert (run / "report.html").read_text().count("data:image/") >= 2
    assert main(["report", str(tmp_path / "nothing")]) == 2  # a typed path that does not exist: usage error
