"""The extraction benchmark (library and ``headstart bench``) and start-up cost.

Durations are never asserted (shared, noisy machines): only that the figures
are there and consistent with each other.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import FrozenInstanceError
from pathlib import Path

import numpy as np
import pytest

from headstart.bench import (Timing, bench_extract, ceiling_choices, format_extract_bench, list_image_records,
                             measure_ceiling, time_calls)
from headstart.cli import main
from headstart.errors import DataError
from headstart.runtimes import resolve_runtime


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory, photos) -> Path:
    """Twelve real JPEG photos of about 500x375 in two class folders."""
    from PIL import Image

    root = tmp_path_factory.mktemp("bench-photos")
    for i, (name, array) in enumerate(sorted(photos.items()) * 4):
        folder = root / ("a" if i % 2 else "b")
        folder.mkdir(exist_ok=True)
        image = Image.fromarray(array)
        box = (i * 7, i * 5, image.width - i * 3, image.height - i * 4)
        image.crop(box).resize((500, 375)).save(folder / f"{name}_{i}.jpg", quality=85 + i)
    return root


@pytest.fixture(autouse=True)
def _restore_logging():
    """``main()`` configures the "headstart" logger for a terminal; put it back for other tests."""
    import logging

    logger = logging.getLogger("headstart")
    saved = (logger.handlers[:], logger.propagate, logger.level)
    yield
    logger.handlers[:], logger.propagate, logger.level = saved[0], saved[1], saved[2]


def _fastest() -> str:
    return resolve_runtime().key


@pytest.mark.slow
def test_bench_extract_measures_ceiling_end_to_end_and_ratio(photo_dir, shared_cache_dir):
    result = bench_extract(photo_dir, ceilings=[_fastest()], seconds=0.2, batch_size=4,
                           model_dir=shared_cache_dir / "models")
    e = result.end_to_end
    assert e.images == 12 and e.skipped == 0
    assert e.images_per_s == pytest.approx(12 / e.seconds)
    assert [c.key for c in result.ceilings] == [_fastest()]
    assert result.best.images_per_s == max(c.images_per_s for c in result.ceilings) > 0
    assert result.ratio == pytest.approx(e.images_per_s / result.best.images_per_s)
    assert e.peak_rss_mb > 0 and result.machine.cores >= 1
    with pytest.raises(FrozenInstanceError):
        result.ratio = 2.0  # type: ignore[misc]
    as_json = json.loads(json.dumps(result.to_dict()))
    assert as_json["best"] == _fastest() and as_json["end_to_end"]["images"] == 12
    text = format_extract_bench(result)
    assert "Ratio end-to-end / best ceiling" in text and "<- best" in text


@pytest.mark.slow
def test_bench_extract_adds_the_end_to_end_runtime_to_the_ceilings(photo_dir, shared_cache_dir):
    result = bench_extract(photo_dir, runtime="onnxruntime", ceilings=["openvino-fp32"], seconds=0.1,
                           batch_size=6, limit=6, decode="processes", workers=2,
                           model_dir=shared_cache_dir / "models")
    assert [c.key for c in result.ceilings] == ["openvino-fp32", "onnxruntime-fp32"]
    assert result.end_to_end.runtime == "onnxruntime" and result.end_to_end.images == 6
    assert result.end_to_end.decode == "processes"


def test_time_calls_times_only_the_calls_after_warm_up():
    done: list[int] = []
    timing = time_calls(lambda: done.append(1), repeats=7, warmup=2)
    assert len(done) == 9 and timing.calls == 7
    assert timing.best_s == min(timing.seconds) and timing.p50_ms <= timing.p90_ms <= 1000 * max(timing.seconds)
    assert sum(timing.seconds) <= timing.total_s and timing.calls_per_s == pytest.approx(7 / timing.total_s)
    # With seconds as well, it stops only once both the count and the duration are reached.
    timed = time_calls(lambda: None, seconds=0.05, repeats=3, warmup=0)
    assert timed.calls >= 3 and timed.total_s >= 0.05
    with pytest.raises(ValueError, match="seconds, repeats"):
        time_calls(lambda: None)


def test_timing_figures_follow_the_recorded_calls():
    timing = Timing((0.004, 0.001, 0.003, 0.002), 0.01)
    assert timing.p50_ms == pytest.approx(2.5) and timing.p90_ms == pytest.approx(3.7)
    assert timing.best_s == 0.001 and timing.calls_per_s == pytest.approx(400.0)


def test_measure_ceiling_counts_images_per_second_of_whole_batches():
    batch = np.zeros((4, 8, 8, 3), np.uint8)
    rate, batches, seconds = measure_ceiling(lambda b: b.astype(np.float32).mean(axis=(1, 2, 3)), batch,
                                             seconds=0.05)
    assert batches >= 2 and seconds >= 0.05 and rate == pytest.approx(4 * batches / seconds)


def test_ceiling_choices_cover_each_runtime_at_fp32():
    keys = [c.key for c in ceiling_choices(["torch", "onnxruntime", "openvino"])]
    assert {"torch-fp32", "onnxruntime-fp32", "openvino-fp32"} <= set(keys)
    assert len(keys) == len(set(keys))


def test_list_image_records_takes_any_folder_of_images(photo_dir, tmp_path):
    records = list_image_records(photo_dir)
    assert len(records) == 12 and {r.label for r in records} == {"a", "b"}
    assert len(list_image_records(photo_dir, limit=5)) == 5
    with pytest.raises(DataError, match="no images"):
        list_image_records(tmp_path)


def test_cli_bench_extract_json(photo_dir, shared_cache_dir, capsys, monkeypatch):
    monkeypatch.setenv("HEADSTART_CACHE_DIR", str(shared_cache_dir))
    code = main(["bench", "extract", "--image_dir", str(photo_dir), "--ceilings", _fastest(), "--seconds", "0.1",
                 "--batch_size", "4", "--format", "json", "--quiet"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["end_to_end"]["images"] == 12 and out["ratio"] > 0


@pytest.mark.parametrize("argv, words", [
    (["bench"], "say what to measure"),
    (["bench", "extract"], "needs --image_dir"),
    (["bench", "extract", "--image_dir", "x", "--model", "y"], "not --model"),
])
def test_cli_bench_usage_errors(argv, words, capsys):
    assert main(argv) == 2
    assert words in capsys.readouterr().err


@pytest.mark.parametrize("code", ["import headstart", "from headstart.cli import build_parser; build_parser()"])
def test_start_up_imports_nothing_heavy(code):
    """``import headstart`` and ``headstart --help`` must not load torch, timm or a runtime."""
    heavy = ("torch", "timm", "onnxruntime", "openvino", "onnx", "matplotlib", "sklearn", "cv2")
    check = f"{code}\nimport sys\nprint(','.join(m for m in {heavy!r} if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == ""
