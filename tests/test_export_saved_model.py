"""SavedModel export of a real trained run, called from TensorFlow with encoded image bytes."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.tensorflow


def _tf():
    from tf_fixtures import require_tensorflow

    tf = require_tensorflow()
    for name in ("onnx2tf", "onnxsim"):
        pytest.importorskip(name)
    return tf


@pytest.fixture(scope="module")
def saved_model(trained_run, tmp_path_factory):
    _tf()
    from headstart.export import export_model

    out = tmp_path_factory.mktemp("saved_model") / "fashion"
    return export_model(trained_run.run_dir, model_format="saved_model", output=out, progress=False)


def _holdout(holdout: Path, per_class: int = 5) -> list[Path]:
    return [p for d in sorted(holdout.iterdir()) for p in sorted(d.iterdir())[:per_class]]


@pytest.mark.slow
def test_saved_model_export_checks_itself(saved_model, trained_run):
    assert saved_model.path.is_dir() and (saved_model.path / "saved_model.pb").is_file()
    assert saved_model.sidecar == saved_model.path.with_suffix(".json")
    check = saved_model.check
    assert check.runtime == "tensorflow-fp32" and check.n == trained_run.test.n
    assert check.agreement >= 0.995 and check.max_abs_diff < 1e-4
    side = json.loads(saved_model.sidecar.read_text())
    assert side["model_format"] == "saved_model" and len(side["model_sha256"]) == 64
    signatures = side["tensorflow"]["signatures"]
    assert set(signatures) == {"serving_default", "classify_images"}
    assert "image_bytes" in signatures["serving_default"]["inputs"]
    bytes_check = side["tensorflow"]["serving_default_check"]
    assert bytes_check["n"] == trained_run.test.n and bytes_check["agreement_with_headstart_decoding"] >= 0.9


@pytest.mark.slow
def test_serving_default_takes_image_bytes(saved_model, trained_run, fashion_holdout_dir):
    """Loaded by TensorFlow alone and called with the files' own bytes, as TF Serving would."""
    tf = _tf()
    from headstart.model import load_model

    loaded = tf.saved_model.load(str(saved_model.path))
    serve = loaded.signatures["serving_default"]
    (spec,) = serve.structured_input_signature[1].values()
    assert spec.name == "image_bytes" and spec.dtype == tf.string and spec.shape.as_list() == [None]
    files = _holdout(fashion_holdout_dir)
    out = serve(image_bytes=tf.constant([p.read_bytes() for p in files]))
    proba = out["probabilities"].numpy()
    labels = [b.decode() for b in out["label"].numpy()]
    assert proba.shape == (len(files), len(trained_run.labels)) and np.allclose(proba.sum(1), 1.0, atol=1e-5)
    assert labels == [trained_run.labels[i] for i in proba.argmax(1)]
    assert out["ood_score"].shape == (len(files),) and out["unknown"].dtype == tf.bool
    # The run itself (PyTorch, headstart's decoding) on the same files: TensorFlow's resize kernel differs
    # from Pillow's, so a few labels may change, no more.
    run = [p.label for p in load_model(trained_run.run_dir, runtime="torch").predict_files(files, top_k=1)[0]]
    assert np.mean([a == b for a, b in zip(labels, run)]) >= 0.9
    assert np.mean([a == p.parent.name for a, p in zip(labels, files)]) >= 0.6


@pytest.mark.slow
def test_serving_default_decodes_like_headstart(saved_model, photos):
    """JPEG photos of any shape, greyscale and RGBA PNGs: TensorFlow decodes, resizes and crops them
    into nearly the pixels headstart's own decoding gives (compared through the pixel signature)."""
    tf = _tf()
    from headstart.data import load_image
    from headstart.deployed import read_model_info

    prep = read_model_info(saved_model.path).preprocessing
    loaded = tf.saved_model.load(str(saved_model.path))
    serve, classify = loaded.signatures["serving_default"], loaded.signatures["classify_images"]

    def encode(image: Image.Image, fmt: str) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
        return buffer.getvalue()

    rgba = np.dstack([photos["coffee"], np.full(photos["coffee"].shape[:2], 255, np.uint8)])
    rgba[:100, :100, 3] = 0  # transparent corner: white, as headstart composites it
    payloads = [encode(Image.fromarray(photos["chelsea"]), "JPEG"), encode(Image.fromarray(photos["astronaut"]), "PNG"),
                encode(Image.fromarray(photos["chelsea"]).convert("L"), "PNG"), encode(Image.fromarray(rgba), "PNG")]
    ours = serve(image_bytes=tf.constant(payloads))["probabilities"].numpy()
    pixels = np.stack([load_image(p, prep) for p in payloads])
    theirs = classify(images=tf.constant(pixels))["probabilities"].numpy()
    assert ours.shape == theirs.shape
    assert np.abs(ours - theirs).max() < 0.15  # out-of-domain photos: low-confidence, so the bound is loose


@pytest.mark.slow
def test_pixel_signature_matches_the_onnx_export(saved_model, exported_onnx, fashion_holdout_dir):
    tf = _tf()
    from headstart.data import load_image
    from headstart.deployed import load_model

    onnx_model = load_model(exported_onnx.path, runtime="onnxruntime")
    x = np.stack([load_image(p, onnx_model.info.preprocessing) for p in _holdout(fashion_holdout_dir, 3)])
    classify = tf.saved_model.load(str(saved_model.path)).signatures["classify_images"]
    out = classify(images=tf.constant(x))
    assert np.abs(out["probabilities"].numpy() - onnx_model.predict_proba(x)).max() < 1e-4
    ood = onnx_model.predict_scores(x)[:, -1]
    assert np.abs(out["ood_score"].numpy() - ood).max() < 1e-3


def test_directories_replace_and_hash(tmp_path):
    """A SavedModel is a folder: written over an older one, and hashed by its files."""
    from headstart.tf_export import export_sha256, replace_export

    old, new = tmp_path / "model", tmp_path / ".staging" / "model"
    (old / "variables").mkdir(parents=True)
    (old / "saved_model.pb").write_bytes(b"old")
    (old / "variables" / "stale").write_bytes(b"x")
    (new / "variables").mkdir(parents=True)
    (new / "saved_model.pb").write_bytes(b"new")
    digest = export_sha256(new)
    replace_export(new, old)
    assert (old / "saved_model.pb").read_bytes() == b"new" and not (old / "variables" / "stale").exists()
    assert not new.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".model")] == []
    assert export_sha256(old) == digest and len(digest) == 64
    (old / "saved_model.pb").write_bytes(b"changed")
    assert export_sha256(old) != digest
