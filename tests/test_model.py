"""load_model / Classifier: one object for a run directory and for an exported model, giving `label`'s answers."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from headstart.data import find_images
from headstart.errors import ImageError, ModelError, UsageError
from headstart.inference import label
from headstart.model import ExportedClassifier, Prediction, load_model
from headstart.run_model import RunClassifier


@pytest.fixture(scope="module")
def holdout_paths(fashion_holdout_dir: Path) -> list[Path]:
    return find_images([fashion_holdout_dir])


def _same_answers(a: list[Prediction], b: list[Prediction]) -> None:
    assert [p.path for p in a] == [p.path for p in b]
    for x, y in zip(a, b):
        assert [lab for lab, _ in x.top] == [lab for lab, _ in y.top]
        np.testing.assert_allclose([s for _, s in x.top], [s for _, s in y.top], atol=1e-6)


def test_run_directory_gives_the_same_labels_and_scores_as_label(trained_run, holdout_paths, shared_cache_dir):
    with load_model(trained_run.run_dir, bottleneck_dir=shared_cache_dir) as clf:
        assert isinstance(clf, RunClassifier) and clf.kind == "run"
        assert clf.labels == trained_run.labels
        assert clf.input_size == 224 and len(clf.version) == 16
        predictions, skipped = clf.predict_files(holdout_paths, top_k=3)
    assert not skipped and len(predictions) == len(holdout_paths)
    expected = label(trained_run.run_dir, holdout_paths, top_k=3, bottleneck_dir=shared_cache_dir, progress=False)
    _same_answers(predictions, list(expected.predictions))
    right = sum(p.label == path.parent.name for p, path in zip(predictions, holdout_paths))
    assert right / len(predictions) > 0.6  # real Fashion-MNIST test images, 300 training steps


def test_exported_model_gives_the_same_labels_and_scores_as_label(exported_onnx, exported_ir, holdout_paths):
    for export in (exported_onnx, exported_ir):
        with load_model(export.path) as clf:
            assert isinstance(clf, ExportedClassifier) and clf.kind == "export"
            predictions, skipped = clf.predict_files(holdout_paths, top_k=2)
        expected = label(export.path, holdout_paths, top_k=2, progress=False)
        assert not skipped
        _same_answers(predictions, list(expected.predictions))


def test_export_and_run_agree_on_the_label(trained_run, exported_onnx, holdout_paths):
    run = load_model(trained_run.run_dir, runtime="onnxruntime", precision="fp32")
    exported = load_model(exported_onnx.path)
    a, _ = run.predict_files(holdout_paths)
    b, _ = exported.predict_files(holdout_paths)
    agree = np.mean([x.label == y.label for x, y in zip(a, b)])
    assert agree >= 0.99


def test_predict_images_takes_encoded_bytes_and_arrays_of_any_size(trained_run, holdout_paths, photos):
    clf = load_model(trained_run.run_dir)
    path = holdout_paths[0]
    from_file, _ = clf.predict_files([path])
    from_bytes = clf.predict_images([path.read_bytes()], names=["x"])
    assert from_bytes[0].path == "x"
    np.testing.assert_allclose(from_file[0].top[0][1], from_bytes[0].top[0][1], atol=1e-6)
    pixels = np.asarray(Image.open(path).convert("RGB"))
    from_array = clf.predict_images([pixels])
    assert from_array[0].label == from_file[0].label
    proba = clf.predict_proba([photos["chelsea"], pixels[:, :, 0]])  # a photo and a grey image
    assert proba.shape == (2, len(clf.labels))
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-5)


def test_bad_images_are_skipped_or_refused_with_a_reason(trained_run, holdout_paths, tmp_path: Path):
    clf = load_model(trained_run.run_dir)
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    predictions, skipped = clf.predict_files([holdout_paths[0], bad, holdout_paths[1]])
    assert [p.path for p in predictions] == [holdout_paths[0], holdout_paths[1]]
    assert len(skipped) == 1 and skipped[0].path == bad and skipped[0].reason
    with pytest.raises(ImageError):
        clf.predict_images([b"plain text"])
    with pytest.raises(UsageError):
        clf.predict_batch(np.zeros((1, 10, 10, 3), np.uint8))


def test_decompression_bomb_is_refused_before_decoding(trained_run):
    clf = load_model(trained_run.run_dir)
    buf = io.BytesIO()
    Image.new("L", (4000, 3000)).save(buf, "PNG")
    with pytest.raises(ImageError, match="over the limit"):
        clf.decode(buf.getvalue(), max_pixels=1_000_000)


@pytest.mark.slow
def test_one_classifier_builds_the_backbone_once_for_many_calls(trained_run, holdout_paths, monkeypatch):
    import headstart.runtimes as runtimes

    built = []
    real = runtimes.create_runner
    monkeypatch.setattr(runtimes, "create_runner", lambda *a, **k: built.append(1) or real(*a, **k))
    clf = load_model(trained_run.run_dir)
    for _ in range(5):  # 500 images in five calls, then batches of raw pixels
        clf.predict_files(holdout_paths)
    clf.predict_batch(np.zeros((3, 224, 224, 3), np.uint8))
    assert len(built) == 1


@pytest.mark.slow
def test_label_does_not_write_the_cache_unless_asked(trained_run, holdout_paths, tmp_path: Path):
    label(trained_run.run_dir, holdout_paths[:5], bottleneck_dir=tmp_path, progress=False)
    assert not (tmp_path / "bottlenecks.sqlite").exists()
    label(trained_run.run_dir, holdout_paths[:5], bottleneck_dir=tmp_path, use_cache=True, progress=False)
    from headstart.cache import BottleneckCache

    with BottleneckCache(tmp_path) as cache:
        assert cache.stats().entries == 5


def test_missing_model_is_a_one_line_model_error(tmp_path: Path):
    with pytest.raises(ModelError):
        load_model(tmp_path / "nope")
    with pytest.raises(ModelError):
        load_model(tmp_path / "nope.onnx")
