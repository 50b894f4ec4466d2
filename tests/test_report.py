"""HTML reports: self-contained, with plots and thumbnails, and rendered by a real browser."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from headstart.lab_report import render_compare_report, render_curve_report, render_sweep_report
from headstart.plots import plot_compare, plot_confusion_matrix, plot_curve, plot_sweep, plot_training_curves
from headstart.report import MAX_GALLERY, rebuild_run_report, render_run_report
from headstart.report_page import thumbnail

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
    plots = [a for a, _ in images if a in ("training curves", "confusion matrix", "reliability diagram")]
    assert sorted(plots) == ["confusion matrix", "reliability diagram", "training curves"]
    assert len(images) - 3 == min(n_wrong, MAX_GALLERY)
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
@pytest.mark.slow
def test_report_renders_with_its_images_in_chromium(trained_run, fashion_dir, tmp_path):
    text = _run_report(trained_run, fashion_dir)
    page = tmp_path / "report.html"
    page.write_text(text.replace("</body>", _CHECK + "</body>"), encoding="utf-8")
    dom = _chromium(tmp_path, page, "--virtual-time-budget=5000", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    found = re.search(r'data-images="(\d+)/(\d+)"', dom.stdout)
    assert found, "the page did not finish loading: " + dom.stdout[:500]
    loaded, total = map(int, found.groups())
    assert total == 3 + min(len(trained_run.misclassified), MAX_GALLERY)  # three plots, then the gallery
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


# ---------------------------------------------------------------- what a new user tripped over


def test_a_loss_of_zero_is_drawn_without_warnings():
    import io
    import warnings

    import numpy as np
    from PIL import Image

    history = [{"step": s, "train_accuracy": 1.0, "cross_entropy": 0.0 if s else 21.6,
                "validation_accuracy": 1.0, "validation_cross_entropy": 0.0} for s in range(0, 1000, 100)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        png = plot_training_curves(history)
    assert not caught, [str(w.message) for w in caught]
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    left = pixels[:, : pixels.shape[1] // 2]
    blue = np.abs(left - np.array([31, 119, 180])).sum(axis=2) < 60  # matplotlib's first line colour
    assert blue.sum() > 200  # the training loss is drawn along the floor (the legend's sample alone is ~30)


def _small_metrics(**extra):
    test = {"accuracy": 0.75, "n": 4, "cross_entropy": 0.5, "macro_precision": 0.5, "macro_recall": 0.75,
            "macro_f1": 0.6, "top5_accuracy": None, "labels": ["cat", "dog", "owl"],
            "confusion_matrix": [[2, 1, 0], [0, 1, 0], [0, 0, 0]],
            "per_class": {"cat": {"precision": 1.0, "recall": 0.667, "f1": 0.8, "support": 3},
                          "dog": {"precision": 0.5, "recall": 1.0, "f1": 0.667, "support": 1},
                          "owl": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}}}
    return {"test": test, "validation": {"accuracy": 1.0, "n": 2}, "training": {}, "history": [],
            "timing": {"bottlenecks_s": 1.234, "train_s": 0.5, "total_s": 1.9}, **extra}


def test_a_class_without_test_images_and_a_tiny_test_set_are_explained():
    from headstart.metrics import wilson_interval

    text = render_run_report(metrics=_small_metrics(), labels=["cat", "dog", "owl"], image_root=None,
                             backbone={}, hyperparameters={})
    assert "<td class='l'>owl</td><td>n/a</td><td>n/a</td><td>n/a</td><td>0</td>" in text
    assert "n/a: no test image of owl, so recall and F1 are undefined" in text
    low, high = wilson_interval(3, 4)
    assert f"only 4 test images: an accuracy of 75.0% is not meaningful (95% confidence interval " \
           f"{100 * low:.1f}% to {100 * high:.1f}%)" in text
    assert "2 of 3 classes have under 5 test images" in text
    assert "<td class='l'>total</td><td>1.9</td>" in text and "<td>1.2</td>" in text and "<td>0.50</td>" in text
    _assert_self_contained(text)


def test_skipped_images_are_listed_with_their_reasons():
    skipped = [{"path": "cat/cut.jpg", "reason": "truncated JPEG: the file ends before the image does"},
               {"path": "dog/notes.jpg", "reason": "not an image (unrecognised format)"}]
    metrics = _small_metrics(skipped=skipped, bottlenecks={"computed": 5, "cached": 0, "skipped": 2})
    text = render_run_report(metrics=metrics, labels=["cat", "dog", "owl"], image_root=None, backbone={},
                             hyperparameters={})
    assert "Skipped images (2)" in text and "2 images skipped" in text
    for item in skipped:
        assert f"<td class='l'>{item['path']}</td><td class='l'>{item['reason']}</td>" in text
    assert "Every image was used." in render_run_report(metrics=_small_metrics(), labels=["cat", "dog", "owl"],
                                                        image_root=None, backbone={}, hyperparameters={})


def test_a_too_high_learning_rate_is_said_in_the_report():
    metrics = _small_metrics(training={"warning": "--learning_rate 1 looks too high: the first step took the "
                                                  "training loss to 21.64; try --learning_rate 0.1 or lower"})
    text = render_run_report(metrics=metrics, labels=["cat", "dog", "owl"], image_root=None, backbone={},
                             hyperparameters={})
    assert "<p class='warn'>Warning: <code>--learning_rate</code> 1 looks too high" in text


def _gallery_metrics(trained_run, fashion_dir, n=20):
    names = sorted(p.relative_to(fashion_dir).as_posix() for p in fashion_dir.glob("T-shirt_top/*.png"))[:n]
    return {**trained_run.metrics, "misclassified": [{"path": name, "label": "T-shirt_top", "predicted": "Shirt",
                                                      "score": 0.9} for name in names]}


def test_gallery_names_break_at_separators_with_the_full_name_in_a_title(trained_run, fashion_dir):
    from headstart.bundle import load_bundle

    bundle = load_bundle(trained_run.run_dir)
    text = render_run_report(metrics=_gallery_metrics(trained_run, fashion_dir, 3), labels=trained_run.labels,
                             image_root=fashion_dir, backbone=bundle.backbone.to_dict(),
                             hyperparameters=bundle.hyperparameters)
    name = sorted(p.name for p in fashion_dir.glob("T-shirt_top/*.png"))[0]
    assert (f"<div class='name' title='T-shirt_top/{name}'><span>T-shirt_top/</span><span>{name}</span></div>"
            in text)
    assert "break-word" not in text and "display:grid" in text


_LAYOUT = ("<script>window.addEventListener('load',function(){"
           "var tops=[].map.call(document.querySelectorAll('.card'),function(c){return c.offsetTop;});"
           "var g=document.querySelector('.gallery').getBoundingClientRect();"
           "var shots=[].slice.call(document.querySelectorAll('.shot')).map(function(s){"
           "return s.getBoundingClientRect();});"
           "var row=shots.filter(function(r){return Math.abs(r.top-shots[0].top)<1;});"
           "var right=Math.max.apply(null,row.map(function(r){return r.right;}));"
           "var h2=document.querySelector('h2').getBoundingClientRect();"
           "var lines=[].map.call(document.querySelectorAll('.name span'),function(s){return s.getClientRects().length;});"
           "document.body.setAttribute('data-layout',JSON.stringify({rows:new Set(tops).size,cards:tops.length,"
           "gap:g.right-right,width:g.width/h2.width,lines:Math.max.apply(null,lines)}));});</script>")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed here (CI installs it)")
def test_cards_sit_on_one_row_and_the_gallery_fills_the_width_in_chromium(trained_run, fashion_dir, tmp_path):
    import json

    from headstart.bundle import load_bundle

    bundle = load_bundle(trained_run.run_dir)
    text = render_run_report(metrics=_gallery_metrics(trained_run, fashion_dir), labels=trained_run.labels,
                             image_root=fashion_dir, backbone=bundle.backbone.to_dict(),
                             hyperparameters=bundle.hyperparameters)
    page = tmp_path / "layout.html"
    page.write_text(text.replace("</body>", _LAYOUT + "</body>"), encoding="utf-8")
    dom = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,2000", "--virtual-time-budget=5000",
         "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    found = re.search(r"data-layout=\"([^\"]+)\"", dom.stdout)
    assert found, dom.stderr[-2000:]
    layout = json.loads(found.group(1).replace("&quot;", '"'))
    assert layout["cards"] == 6 and layout["rows"] == 1, layout  # training time no longer alone on a row
    assert layout["width"] > 0.98 and 0 <= layout["gap"] < 2, layout  # the gallery's first row reaches the edge
    assert layout["lines"] == 1, layout  # each part of a name on one line, never wrapped mid-word
