"""HTML reports: self-contained, with plots and thumbnails, and rendered by a real browser."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from headstart.report import (MAX_GALLERY, plot_compare, plot_confusion_matrix, plot_curve, plot_sweep,
                              plot_training_curves, rebuild_run_report, render_compare_report,
                              render_curve_report, render_run_report, render_sweep_report, thumbnail)

PNG = b"\x89PNG\r\n\x1a\n"
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


def _run_report(trained_run, image_root):
    from headstart.bundle import load_bundle

    bundle = load_bundle(trained_run.run_dir)
    return render_run_report(metrics=trained_run.metrics, labels=trained_run.labels, image_root=image_root,
                             backbone=bundle.backbone.to_dict(), hyperparameters=bundle.hyperparameters)


def _assert_self_contained(text: str) -> None:
    assert text.startswith("<!doctype html>")
    assert "<script" not in text.lower()
    assert not re.search(r"""(src|href)\s*=\s*['"](?!data:)""", text)  # nothing fetched from anywhere
    assert "@import" not in text and "url(" not in text


def test_run_report_has_plots_table_and_gallery(trained_run, fashion_dir):
    text = _run_report(trained_run, fashion_dir)
    _assert_self_contained(text)
    n_wrong = len(trained_run.misclassified)
    assert n_wrong > 0
    images = re.findall(r"<img alt='([^']*)' src='data:image/(png|jpeg);base64,", text)
    plots = [a for a, _ in images if a in ("training curves", "confusion matrix")]
    assert sorted(plots) == ["confusion matrix", "training curves"]
    assert len(images) - 2 == min(n_wrong, MAX_GALLERY)
    for label in trained_run.labels:
        assert f"<td class='l'>{label}</td>" in text
    assert f"(N={trained_run.test.n})" in text
    assert "image not found" not in text


def test_missing_images_get_a_placeholder(trained_run, tmp_path):
    text = _run_report(trained_run, tmp_path / "gone")
    assert "image not found" in text
    _assert_self_contained(text)


def test_retrain_writes_the_report_and_report_rebuilds_it(trained_run, tmp_path, fashion_dir):
    run = tmp_path / "run"
    shutil.copytree(trained_run.run_dir, run)
    original = (run / "report.html").read_text(encoding="utf-8")
    assert "Misclassified test images" in original
    (run / "report.html").unlink()
    out = rebuild_run_report(run)
    assert out == run / "report.html"
    text = out.read_text(encoding="utf-8")
    assert "confusion matrix" in text and "image not found" not in text  # image_dir came from metrics.json
    moved = tmp_path / "moved"
    shutil.copytree(fashion_dir, moved)
    assert "image not found" not in rebuild_run_report(run, image_root=moved).read_text(encoding="utf-8")


def test_report_survives_a_diverged_run_and_no_history():
    metrics = {"test": {"accuracy": 0.1, "n": 2, "per_class": {"a": {"precision": 0.0, "recall": 0.0, "f1": 0.0,
                                                                       "support": 1},
                                                                 "b": {"precision": 0.5, "recall": 1.0, "f1": 0.667,
                                                                       "support": 1}},
                        "confusion_matrix": [[0, 1], [0, 1]], "labels": ["a", "b"], "macro_precision": 0.25,
                        "macro_recall": 0.5, "macro_f1": 0.33, "top5_accuracy": None},
               "training": {"diverged": True}, "history": [], "misclassified": [
                   {"path": "a/x.png", "label": "a", "predicted": "b", "score": 0.9}]}
    text = render_run_report(metrics=metrics, labels=["a", "b"], image_root=None, backbone={},
                             hyperparameters={})
    assert "Training diverged" in text and "image not found" in text
    _assert_self_contained(text)


def test_plots_are_png(tmp_path, photos):
    assert plot_training_curves([]) is None
    history = [{"step": s, "train_accuracy": 0.5 + s / 400, "cross_entropy": 1 / (s + 1),
                "validation_accuracy": 0.5, "validation_cross_entropy": 0.7} for s in range(0, 100, 10)]
    assert plot_training_curves(history).startswith(PNG)
    assert plot_confusion_matrix([[3, 1], [0, 4]], ["cat", "dog"]).startswith(PNG)
    rows = [{"learning_rate": lr, "optimizer": opt, "test_accuracy": 0.8, "test_accuracy_std": 0.01,
             "train_s": 0.1, "diverged": lr > 1} for lr in (0.01, 0.1, 10.0) for opt in ("sgd", "adam")]
    assert plot_sweep(rows, ["learning_rate", "optimizer"]).startswith(PNG)
    assert plot_sweep(rows[:3:2], []).startswith(PNG)
    curve = [{"images_per_class": n, "train_images_per_class": float(n if n != "all" else 24),
              "accuracy_mean": 0.5, "accuracy_std": 0.1, "n_test": 30} for n in (1, 5, "all")]
    assert plot_curve(curve).startswith(PNG)
    assert plot_compare([{"backbone": "x", "latency_ms": 3.0, "test_accuracy": 0.9, "params_m": 3.4,
                          "gmacs": 0.38, "runtime": "openvino-bf16"}]).startswith(PNG)
    assert plot_compare([{"backbone": "x", "test_accuracy": 0.9}]) is None
    from PIL import Image

    Image.fromarray(photos["chelsea"]).save(tmp_path / "cat.jpg")
    assert thumbnail(tmp_path / "cat.jpg").startswith("data:image/jpeg;base64,")
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    assert thumbnail(tmp_path / "broken.jpg") is None


def test_experiment_pages_are_self_contained():
    rows = [{"learning_rate": 0.01, "train_batch_size": b, "test_accuracy": 0.8, "test_accuracy_std": 0.0,
             "validation_accuracy": 0.8, "macro_precision": 0.8, "macro_recall": 0.8, "cross_entropy": 0.3,
             "train_s": 0.1, "best_step": 90, "diverged": b == 4} for b in (4, 32)]
    page = render_sweep_report(rows, ["train_batch_size"], repeats=1, seconds=1.0, command="headstart sweep")
    _assert_self_contained(page)
    assert page.count("<tr class='bad'>") == 1
    curve = [{"images_per_class": 1, "train_images_per_class": 1.0, "n_train": 10, "accuracy_mean": 0.5,
              "accuracy_std": 0.1, "n_test": 30}]
    _assert_self_contained(render_curve_report(curve, repeats=2))
    _assert_self_contained(render_compare_report([{"backbone": "x", "latency_ms": 3.0, "test_accuracy": 0.9}]))


# A check that runs in the browser only for this test: the report itself has no scripts.
_CHECK = ("<script>window.addEventListener('load',function(){var imgs=[].slice.call(document.images);"
          "var ok=imgs.filter(function(i){return i.complete&&i.naturalWidth>0&&i.src.indexOf('data:')===0;});"
          "document.body.setAttribute('data-images',ok.length+'/'+imgs.length);"
          "document.body.setAttribute('data-width',String(document.body.scrollWidth));});</script>")


def _chromium(tmp_path: Path, html_path: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
         "--window-size=1200,2000", *extra, html_path.as_uri()],
        capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed here (CI installs it)")
def test_report_renders_with_its_images_in_chromium(trained_run, fashion_dir, tmp_path):
    text = _run_report(trained_run, fashion_dir)
    page = tmp_path / "report.html"
    page.write_text(text.replace("</body>", _CHECK + "</body>"), encoding="utf-8")
    dom = _chromium(tmp_path, page, "--virtual-time-budget=5000", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    found = re.search(r'data-images="(\d+)/(\d+)"', dom.stdout)
    assert found, "the page did not finish loading: " + dom.stdout[:500]
    loaded, total = map(int, found.groups())
    assert total == 2 + min(len(trained_run.misclassified), MAX_GALLERY)
    assert loaded == total  # every plot and thumbnail decoded
    assert "Per-class precision" in dom.stdout

    shot = tmp_path / "shot.png"
    plain = tmp_path / "plain.html"
    plain.write_text(text, encoding="utf-8")
    result = _chromium(tmp_path, plain, f"--screenshot={shot}")
    assert result.returncode == 0 and shot.exists(), result.stderr[-2000:]
    import numpy as np
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.shape == (2000, 1200)
    assert pixels.std() > 10  # text, plots and thumbnails, not a blank page
