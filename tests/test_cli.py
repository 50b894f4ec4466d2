"""The headstart command as users run it: flags, help, outputs and exit codes."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from clitools import run_cli

from headstart.cli import build_parser, main

COMMANDS = ["retrain", "label", "evaluate", "backbones", "cache", "datasets"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_help_shows_an_example(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "example:" in capsys.readouterr().out


def test_retrain_py_flags_keep_their_names_and_dashed_spellings_work() -> None:
    parser = build_parser()
    flags = ["image_dir", "output_labels", "bottleneck_dir", "how_many_training_steps", "learning_rate",
             "train_batch_size", "validation_batch_size", "test_batch_size", "eval_step_interval",
             "testing_percentage", "validation_percentage"]
    underscored = parser.parse_args(["retrain"] + [x for f in flags for x in (f"--{f}", "7")]
                                    + ["--print_misclassified_test_images"])
    dashed = parser.parse_args(["retrain"] + [x for f in flags for x in (f"--{f.replace('_', '-')}", "7")]
                               + ["--print-misclassified-test-images"])
    for name in flags + ["print_misclassified_test_images"]:
        assert getattr(underscored, name) == getattr(dashed, name), name


def test_usage_error_exits_2_in_one_line() -> None:
    result = run_cli("retrain", "--learning_rate", "fast")
    assert result.returncode == 2
    assert "error:" in result.stderr and "Traceback" not in result.stderr


def test_missing_folder_is_a_usage_error_in_one_line_with_hint(tmp_path: Path) -> None:
    # A path the user typed that does not exist is a usage error (2), as for `label`.
    result = run_cli("retrain", "--image_dir", str(tmp_path / "nope"), "--bottleneck_dir", str(tmp_path / "c"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("error:") and "nope" in lines[0]
    assert lines[1].startswith("hint:")
    assert "Traceback" not in result.stderr


def test_debug_env_shows_the_traceback(tmp_path: Path) -> None:
    result = run_cli("retrain", "--image_dir", str(tmp_path / "nope"), env={"HEADSTART_DEBUG": "1"})
    assert "Traceback" in result.stderr


@pytest.mark.slow
def test_retrain_label_evaluate_end_to_end(fashion_dir: Path, fashion_holdout_dir: Path, shared_cache_dir: Path,
                                          tmp_path: Path) -> None:
    run = tmp_path / "run"
    labels_file = tmp_path / "output_labels.txt"
    result = run_cli("retrain", "--image-dir", str(fashion_dir), "--output_dir", str(run), "--bottleneck_dir",
                     str(shared_cache_dir), "--how_many_training_steps", "200", "--eval_step_interval", "50",
                     "--output_labels", str(labels_file), "--print_misclassified_test_images")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Final test accuracy = " in out and "(N=" in out
    assert "precision" in out and "recall" in out and "Confusion matrix" in out
    assert "MISCLASSIFIED TEST IMAGES" in out
    assert "Step 0: Train accuracy = " in result.stderr and "Cross entropy = " in result.stderr
    assert "Validation accuracy = " in result.stderr
    assert labels_file.read_text() == (run / "labels.txt").read_text()

    labelled = run_cli("label", "--model", str(run), str(fashion_holdout_dir / "Sandal"), "--format", "json",
                       "--bottleneck_dir", str(shared_cache_dir), "--top_k", "2")
    assert labelled.returncode == 0, labelled.stderr
    rows = json.loads(labelled.stdout)
    assert len(rows) == 10 and all(len(r["top"]) == 2 for r in rows)

    as_csv = run_cli("label", "--model", str(run), str(fashion_holdout_dir / "Bag"), "--format", "csv",
                     "--bottleneck_dir", str(shared_cache_dir))
    records = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert len(records) == 50 and set(records[0]) == {"path", "rank", "label", "score", "unknown", "ood_score"}
    assert {r["unknown"] for r in records} <= {"true", "false"} and float(records[0]["ood_score"]) == float(records[0]["ood_score"])

    table = run_cli("label", "--model", str(run), str(fashion_holdout_dir / "Bag" / os.listdir(
        fashion_holdout_dir / "Bag")[0]), "--bottleneck_dir", str(shared_cache_dir))
    assert table.returncode == 0 and len(table.stdout.strip().splitlines()) == 6  # path + top 5

    evaluated = run_cli("evaluate", "--model", str(run), "--image_dir", str(fashion_holdout_dir), "--format", "json",
                        "--bottleneck_dir", str(shared_cache_dir))
    assert evaluated.returncode == 0, evaluated.stderr
    block = json.loads(evaluated.stdout)
    assert block["n"] == 100 and {"accuracy", "per_class", "confusion_matrix"} <= set(block)


def test_cache_stats_and_clear(trained_run, tmp_path: Path, shared_cache_dir: Path) -> None:
    # trained_run fills the shared cache, whichever other tests ran first.
    import shutil

    cache = tmp_path / "cache"
    shutil.copytree(shared_cache_dir, cache)
    stats = run_cli("cache", "stats", "--bottleneck_dir", str(cache), "--format", "json")
    assert stats.returncode == 0
    assert json.loads(stats.stdout)["entries"] > 0
    cleared = run_cli("cache", "clear", "--bottleneck_dir", str(cache))
    assert cleared.returncode == 0 and "Removed" in cleared.stdout
    assert json.loads(run_cli("cache", "stats", "--bottleneck_dir", str(cache), "--format", "json").stdout)[
        "entries"] == 0


def test_datasets_command_writes_class_folders(tmp_path: Path) -> None:
    result = run_cli("datasets", "fashion-mnist", "--out", str(tmp_path / "fm"), "--per_class", "3")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "fm").iterdir())[:2] == ["Ankle_boot", "Bag"]
    assert sum(1 for _ in (tmp_path / "fm").rglob("*.png")) == 30
    listing = run_cli("datasets")
    assert "fashion-mnist" in listing.stdout and "flowers" in listing.stdout


def test_import_headstart_loads_no_heavy_module() -> None:
    code = ("import sys, headstart; import headstart.cli; headstart.cli.build_parser(); "
            "print(sorted(m for m in ('torch', 'timm', 'onnxruntime', 'openvino', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


MISSING_PATH_CASES = {
    "label --model": (["label", "--model", "{gone}", "{here}"], "--model"),
    "label image": (["label", "--model", "{here}", "{gone}"], "{gone}"),
    "label --weights": (["label", "--model", "{here}", "--weights", "{gone}", "{here}"], "--weights"),
    "evaluate --model": (["evaluate", "--model", "{gone}", "--image_dir", "{here}"], "--model"),
    "evaluate --image_dir": (["evaluate", "--model", "{here}", "--image_dir", "{gone}"], "--image_dir"),
    "export --model": (["export", "--model", "{gone}"], "--model"),
    "export --image_dir": (["export", "--model", "{here}", "--image_dir", "{gone}"], "--image_dir"),
    "report": (["report", "{gone}"], "RUN_DIR"),
    "report --image_dir": (["report", "{here}", "--image_dir", "{gone}"], "--image_dir"),
    "bench --model": (["bench", "--model", "{gone}"], "--model"),
    "bench extract --image_dir": (["bench", "extract", "--image_dir", "{gone}"], "--image_dir"),
    "datasets --source": (["datasets", "fashion-mnist", "--out", "{here}/out", "--source", "{gone}"], "--source"),
    "retrain --image_dir": (["retrain", "--image_dir", "{gone}"], "--image_dir"),
    "retrain --weights": (["retrain", "--image_dir", "{here}", "--weights", "{gone}"], "--weights"),
    "sweep --image_dir": (["sweep", "--image_dir", "{gone}"], "--image_dir"),
}


@pytest.mark.parametrize("case", sorted(MISSING_PATH_CASES))
def test_a_typed_path_that_does_not_exist_is_a_usage_error_everywhere(case: str, cli, tmp_path: Path) -> None:
    args, named = MISSING_PATH_CASES[case]
    here, gone = tmp_path / "here", tmp_path / "gone"
    here.mkdir()
    fill = {"here": str(here), "gone": str(gone)}
    code, out, err = cli(*[a.format(**fill) for a in args])
    assert code == 2, (case, err)
    lines = err.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("error: ") and lines[1].startswith("hint: "), err
    assert named.format(**fill) in lines[0] and str(gone) in lines[0]
    assert not (here / "out").exists()  # failed before any work


def test_backbones_table_uses_one_number_format_per_column(cli) -> None:
    code, out, _ = cli("backbones")
    assert code == 0
    rows = [line for line in out.splitlines()[2:] if line.strip() and not line.startswith("*")]
    assert len(rows) >= 5
    for row in rows:
        top1 = re.search(r"\s(\d+(?:\.\d+)?)\s+(yes|download)$", row)
        assert top1 and re.fullmatch(r"\d+\.\d", top1.group(1)), row  # 73.0, never 73 next to 75.1
        params = row.split()[2 if "*" not in row else 3]
        assert re.fullmatch(r"\d+\.\d\d", params), row
