"""What a new user trips over, retried as a new user does: real commands on a real Fashion-MNIST folder.

One folder (the shared Fashion-MNIST images plus a truncated JPEG and a text file
named .jpg) is retrained twice into the same run directory: first with ``-q``,
then with a learning rate far too high.  Each test reads what those two commands
printed and wrote.
"""

from __future__ import annotations

import io
import json
import logging
import math
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

from clitools import run_cli

BAD = {"Bag/cut.jpg": "truncated JPEG: the file ends before the image does",
       "Coat/notes.jpg": "not an image"}
README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def newcomer(tmp_path_factory: pytest.TempPathFactory, fashion_dir: Path, shared_cache_dir: Path) -> dict:
    base = tmp_path_factory.mktemp("newcomer")
    root = base / "fashion"
    shutil.copytree(fashion_dir, root)
    first = sorted((root / "Bag").glob("*.png"))[0]
    buf = io.BytesIO()
    Image.open(first).convert("RGB").resize((112, 112)).save(buf, "JPEG", quality=95)
    (root / "Bag" / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (root / "Coat" / "notes.jpg").write_text("shopping list: eggs, milk\n")
    run_dir = base / "run"
    common = ("--image_dir", root, "--output_dir", run_dir, "--bottleneck_dir", shared_cache_dir)
    quiet = run_cli("retrain", *common, "-q")
    # Without label smoothing the loss of an easy folder reaches 0, where -0.0 used to show.
    steep = run_cli("retrain", *common, "--learning_rate", "1.0", "--label_smoothing", "0")
    return {"root": root, "run_dir": run_dir, "quiet": quiet, "steep": steep}


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_quiet_prints_the_final_accuracy_lines_and_warnings_only(newcomer: dict) -> None:
    result = newcomer["quiet"]
    assert result.returncode == 0, result.stderr
    out = _lines(result.stdout)
    assert len(out) == 2, result.stdout
    assert re.fullmatch(r"Final test accuracy = \d+\.\d% \(N=\d+\)", out[0])
    assert re.fullmatch(r"Final test top-5 accuracy = \d+\.\d%", out[1])
    assert all(line.startswith("warning: ") for line in _lines(result.stderr)), result.stderr
    assert "Confusion matrix" not in result.stdout and "precision" not in result.stdout


def test_a_learning_rate_far_too_high_is_one_warning_and_no_negative_zero(newcomer: dict) -> None:
    result = newcomer["steep"]
    assert result.returncode == 0, result.stderr
    said = result.stdout + result.stderr
    assert "-0.0000" not in said and "Cross entropy = 0.0000" in said
    too_high = [line for line in _lines(result.stderr) if "too high" in line]
    assert len(too_high) == 1 and too_high[0].startswith("warning: --learning_rate 1 looks too high"), too_high
    assert "--learning_rate 0.1" in too_high[0]  # says what to try
    assert "UserWarning" not in said and "Warning:" not in said  # no third-party warnings in the terminal
    metrics_text = (newcomer["run_dir"] / "metrics.json").read_text()
    assert "-0.0," not in metrics_text and "-0.0}" not in metrics_text
    metrics = json.loads(metrics_text)
    for step in metrics["history"]:
        assert math.copysign(1.0, step["cross_entropy"]) == 1.0, step
    assert metrics["training"]["warning"] == too_high[0].removeprefix("warning: ")


def test_each_skipped_image_is_named_once_with_a_clean_reason(newcomer: dict) -> None:
    for name in ("quiet", "steep"):
        result = newcomer[name]
        said = result.stdout + result.stderr
        for relpath, reason in BAD.items():
            path = newcomer["root"].resolve() / relpath
            assert said.count(str(path)) == 1, (name, relpath, said)
            assert f"warning: skipped {path}: {reason}" in result.stderr
        assert "image file is truncated" not in said and "bytes not processed" not in said
    steep = newcomer["steep"]
    indexed = next(line for line in steep.stderr.splitlines() if line.startswith("indexed "))
    assert "skipped" not in indexed, indexed  # indexing skipped nothing; decoding did, later
    assert ", 2 skipped in " in steep.stdout
    assert f"2 images skipped, listed with reasons in {newcomer['run_dir'] / 'skipped.csv'}" in steep.stdout


def test_the_report_lists_the_skipped_images(newcomer: dict) -> None:
    page = (newcomer["run_dir"] / "report.html").read_text(encoding="utf-8")
    assert "Skipped images (2)" in page
    for relpath, reason in BAD.items():
        assert f"<td class='l'>{relpath}</td>" in page
        assert reason in page
    metrics = json.loads((newcomer["run_dir"] / "metrics.json").read_text())
    assert {item["path"] for item in metrics["skipped"]} == set(BAD)


def test_retraining_into_a_run_says_it_replaces_it(newcomer: dict) -> None:
    run_dir = newcomer["run_dir"]
    assert f"replacing the previous run in {run_dir}" not in newcomer["quiet"].stderr  # quiet, and it was new
    replacing = [line for line in newcomer["steep"].stderr.splitlines() if "replacing the previous run" in line]
    assert replacing == [f"replacing the previous run in {run_dir}"]
    assert not list(run_dir.parent.glob(f".{run_dir.name}.*"))  # the atomic swap left nothing behind


def test_the_report_total_is_the_printed_total_time(newcomer: dict) -> None:
    printed = re.search(r"^Total time (\d+\.\d)s\. Model written to ", newcomer["steep"].stdout, re.M)
    assert printed, newcomer["steep"].stdout
    metrics = json.loads((newcomer["run_dir"] / "metrics.json").read_text())
    assert f"{metrics['timing']['total_s']:.1f}" == printed.group(1)
    page = (newcomer["run_dir"] / "report.html").read_text(encoding="utf-8")
    assert f"<td class='l'>total</td><td>{printed.group(1)}</td>" in page


def test_a_small_test_split_warns_with_its_confidence_interval(newcomer: dict) -> None:
    from headstart.metrics import wilson_interval

    test = json.loads((newcomer["run_dir"] / "metrics.json").read_text())["test"]  # the second run's
    assert test["n"] < 30, "the fixture's folder is meant to have a small test split"
    for name in ("quiet", "steep"):
        printed = re.search(r"Final test accuracy = (\d+\.\d)% \(N=(\d+)\)", newcomer[name].stdout)
        n = int(printed.group(2))
        low, high = wilson_interval(round(float(printed.group(1)) * n / 100), n)
        line = (f"warning: only {n} test images: an accuracy of {printed.group(1)}% is not meaningful "
                f"(95% confidence interval {100 * low:.1f}% to {100 * high:.1f}%)")
        assert line in newcomer[name].stderr, newcomer[name].stderr
    low, high = wilson_interval(round(test["accuracy"] * test["n"]), test["n"])
    few = [label for label, m in test["per_class"].items() if 0 < m["support"] < 5]
    assert few and f"{len(few)} of 10 classes have under 5 test images" in newcomer["steep"].stderr
    page = (newcomer["run_dir"] / "report.html").read_text(encoding="utf-8")
    assert f"95% confidence interval {100 * low:.1f}% to {100 * high:.1f}%" in page


def test_one_cached_bottleneck_is_said_in_the_singular(trained_run, fashion_dir: Path, shared_cache_dir: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    from headstart.backbones import resolve_backbone
    from headstart.cache import BottleneckCache
    from headstart.data import index_image_dir
    from headstart.features import compute_bottlenecks

    from headstart.config import RetrainConfig

    config = RetrainConfig(image_dir=fashion_dir)  # trained_run's settings: its vectors are in the cache
    records = index_image_dir(fashion_dir, config.validation_percentage, config.testing_percentage).records[:1]
    backbone = resolve_backbone(config.backbone, crop_pct=config.crop_pct)
    with caplog.at_level(logging.INFO, logger="headstart"), BottleneckCache(shared_cache_dir) as cache:
        result = compute_bottlenecks(records, backbone, cache, progress=False)
    assert result.cached == 1
    said = [r.getMessage() for r in caplog.records if "cached" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("the 1 bottleneck is cached ("), said
    assert "bottlenecks" not in said[0]


def test_the_readme_says_how_big_the_install_is_and_how_to_avoid_cuda() -> None:
    setup = README.read_text(encoding="utf-8").split("## Set up", 1)[1].split("\n## ", 1)[0]
    assert re.search(r"du -sh \.venv` measured \d+\.\d GB", setup)
    assert "pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu" in setup
    assert "pip install -e ." in setup.split("download.pytorch.org/whl/cpu", 1)[1]
    measured = README.read_text(encoding="utf-8").split("## Measured", 1)[1].split("\n## ", 1)[0]
    assert "Timings vary between machines" in measured and "ratio measured within one run" in measured
