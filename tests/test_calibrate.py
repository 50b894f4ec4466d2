"""Honest confidence: temperature scaling, calibration error, and the "unknown" answer on real images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from headstart.calibrate import (NoveltyScore, expected_calibration_error, fit_novelty, fit_temperature,
                                 reliability, softmax)
from headstart.model import load_model


def _calibrated_sample(temperature: float, n: int = 4000, classes: int = 5, seed: int = 0):
    """Logits whose labels were drawn from softmax(logits / temperature): that T is the right one."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, (n, classes))
    p = softmax(logits / temperature)
    y = np.array([rng.choice(classes, p=row) for row in p])
    return logits, y


@pytest.mark.parametrize("true_t", [0.5, 1.0, 2.5])
def test_fit_temperature_recovers_the_temperature_that_generated_the_labels(true_t: float) -> None:
    logits, y = _calibrated_sample(true_t)
    assert fit_temperature(logits, y) == pytest.approx(true_t, rel=0.12)


def test_temperature_lowers_the_calibration_error_of_an_overconfident_model() -> None:
    logits, y = _calibrated_sample(3.0)  # the raw logits are three times too sure of themselves
    before = expected_calibration_error(softmax(logits), y)
    after = expected_calibration_error(softmax(logits / fit_temperature(logits, y)), y)
    assert after < before / 2


def test_reliability_bins_cover_every_image_once() -> None:
    logits, y = _calibrated_sample(1.0, n=500)
    rows = reliability(softmax(logits), y)
    assert sum(r["n"] for r in rows) == 500
    assert all(0 <= r["accuracy"] <= 1 and r["lo"] < r["confidence"] <= r["hi"] + 1e-9 for r in rows)
    assert fit_temperature(logits[:0], y[:0]) == 1.0


def test_novelty_threshold_accepts_the_asked_share_and_survives_a_round_trip() -> None:
    rng = np.random.default_rng(1)
    centres = rng.normal(0, 1, (3, 64))
    x = np.concatenate([c + 0.3 * rng.normal(0, 1, (200, 64)) for c in centres]).astype(np.float32)
    y = np.repeat(np.arange(3), 200)
    proba = np.eye(3)[y] * 0.8 + 0.2 / 3
    novelty = fit_novelty(x[::2], y[::2], 3, x[1::2], proba[1::2], accept=0.9)
    accepted = 1 - novelty.is_unknown(novelty.score(x[1::2], proba[1::2])).mean()
    assert accepted == pytest.approx(0.9, abs=0.02)
    far = rng.normal(0, 1, (50, 64)).astype(np.float32) * 3
    assert novelty.is_unknown(novelty.score(far, np.full((50, 3), 1 / 3))).mean() > 0.9
    tensors, config = novelty.to_state()
    again = NoveltyScore.from_state(tensors, json.loads(json.dumps(config)))
    np.testing.assert_allclose(again.score(far, np.full((50, 3), 1 / 3)), novelty.score(far, np.full((50, 3), 1 / 3)))
    off = fit_novelty(x[::2], y[::2], 3, x[1::2], proba[1::2], accept=0.0)
    assert off.threshold is None and not off.is_unknown(off.score(far, np.full((50, 3), 1 / 3))).any()


# ---------------------------------------------------------------- on a real run


@pytest.fixture(scope="module")
def novel_images(tmp_path_factory, photos) -> list[Path]:
    """Images of none of Fashion-MNIST's classes: handwritten digits and crops of colour photos."""
    from sklearn.datasets import load_digits

    out = tmp_path_factory.mktemp("novel")
    paths = []
    for i, digit in enumerate(load_digits().images[:20]):
        path = out / f"digit{i}.png"
        Image.fromarray((digit / 16 * 255).astype(np.uint8)).resize((28, 28), Image.BICUBIC).save(path)
        paths.append(path)
    rng = np.random.default_rng(0)
    for name, photo in photos.items():
        for i in range(7):
            s = int(rng.integers(64, min(photo.shape[:2])))
            y, x = int(rng.integers(0, photo.shape[0] - s)), int(rng.integers(0, photo.shape[1] - s))
            path = out / f"{name}{i}.jpg"
            Image.fromarray(photo[y:y + s, x:x + s]).save(path, quality=90)
            paths.append(path)
    return paths


def test_the_run_records_calibration_and_its_unknown_threshold(trained_run) -> None:
    metrics = trained_run.metrics
    cal = metrics["calibration"]
    assert cal["temperature"] > 0 and 0 <= cal["ece_after"] <= 1 and 0 <= cal["ece_before"] <= 1
    assert metrics["unknown"]["accept"] == 0.95 and metrics["unknown"]["threshold"] is not None
    manifest = json.loads((trained_run.run_dir / "headstart.json").read_text())
    assert manifest["head_config"]["novelty"]["threshold"] == metrics["unknown"]["threshold"]
    assert manifest["head_config"]["temperature"] == pytest.approx(cal["temperature"])


def test_unknown_images_are_rejected_and_known_ones_accepted(trained_run, novel_images, fashion_holdout_dir):
    from headstart.data import find_images

    clf = load_model(trained_run.run_dir)
    novel, _ = clf.predict_files(novel_images)
    known, _ = clf.predict_files(find_images([fashion_holdout_dir]))
    assert all(p.ood_score is not None for p in novel + known)
    assert np.mean([p.unknown for p in novel]) >= 0.8
    assert np.mean([p.unknown for p in known]) <= 0.2  # 30 validation images set the threshold: some slack
    row = novel[0].to_dict()
    assert set(row) == {"path", "top", "unknown", "ood_score"}


def test_exports_carry_the_same_unknown_answer(trained_run, exported_onnx, exported_ir, novel_images) -> None:
    run = load_model(trained_run.run_dir, runtime="onnxruntime", precision="fp32")
    expected, _ = run.predict_files(novel_images)
    sidecar = json.loads(exported_onnx.sidecar.read_text())
    assert sidecar["unknown"]["threshold"] == pytest.approx(run.threshold)
    for export in (exported_onnx, exported_ir):
        got, _ = load_model(export.path).predict_files(novel_images)
        np.testing.assert_allclose([p.ood_score for p in got], [p.ood_score for p in expected], atol=2e-3)
        assert np.mean([a.unknown == b.unknown for a, b in zip(got, expected)]) >= 0.95


def test_calibrated_scores_are_what_label_prints(trained_run, fashion_holdout_dir) -> None:
    from headstart.inference import label
    from headstart.run_model import load_head
    from headstart.bundle import load_bundle

    head = load_head(load_bundle(trained_run.run_dir))
    assert head.temperature_ == pytest.approx(trained_run.metrics["calibration"]["temperature"])
    result = label(trained_run.run_dir, [fashion_holdout_dir / "Bag"], top_k=1, progress=False)
    clf = load_model(trained_run.run_dir)
    features = clf.features(np.stack([clf.decode(p.path) for p in result.predictions]))
    np.testing.assert_allclose([p.top[0][1] for p in result.predictions],
                               head.predict_proba(features).max(axis=1), atol=1e-5)


def test_evaluate_unknown_dir_reports_the_rejected_share(trained_run, novel_images, cli) -> None:
    folder = novel_images[0].parent
    code, out, err = cli("evaluate", "--model", trained_run.run_dir, "--unknown_dir", folder, "-q")
    assert code == 0, err
    assert "Unknown images rejected = " in out and f"of {len(novel_images)}" in out
    code, out, err = cli("evaluate", "--model", trained_run.run_dir, "--unknown_dir", folder, "--format", "json")
    data = json.loads(out)
    assert data["unknown_dir"]["n"] == len(novel_images) and data["unknown_dir"]["rejected"] >= 0.8
