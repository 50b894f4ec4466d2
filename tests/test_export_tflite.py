"""TFLite (LiteRT) export of a real run: parity in the LiteRT interpreter, metadata, int8, labelling without torch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from headstart.errors import ModelError, UsageError

pytestmark = [pytest.mark.tensorflow, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]

BLOCKER = textwrap.dedent('''
    """Make torch, TensorFlow and the other runtimes unimportable: LiteRT alone must do."""
    import importlib.abc
    import sys

    BLOCKED = ("torch", "timm", "torchvision", "tensorflow", "tf_keras", "keras", "onnx", "onnxruntime",
               "openvino", "onnx2tf", "jax")

    class _Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked: a .tflite must run on ai-edge-litert alone")
            return None

    sys.meta_path.insert(0, _Blocker())
''')


def _require_converters() -> None:
    from tf_fixtures import require_tensorflow

    require_tensorflow()
    for name in ("onnx2tf", "onnxsim", "ai_edge_litert"):
        pytest.importorskip(name)


@pytest.fixture(scope="module")
def tflite_fp32(trained_run, tmp_path_factory):
    _require_converters()
    from headstart.export import export_model

    out = tmp_path_factory.mktemp("tflite") / "fashion-fp32.tflite"
    return export_model(trained_run.run_dir, model_format="tflite", output=out, progress=False)


@pytest.fixture(scope="module")
def tflite_int8(trained_run, tmp_path_factory):
    _require_converters()
    from headstart.export import export_model

    out = tmp_path_factory.mktemp("tflite") / "fashion-int8.tflite"
    # 30 test images: one image is 3 points, so the gate is checked on the measured run (docs/DEPLOY.md)
    return export_model(trained_run.run_dir, model_format="tflite", precision="int8", output=out, force=True,
                        progress=False)


def _holdout(holdout: Path, per_class: int = 4) -> list[Path]:
    return [p for d in sorted(holdout.iterdir()) for p in sorted(d.iterdir())[:per_class]]


def _interpreter_probabilities(path: Path, images: np.ndarray) -> np.ndarray:
    """The plain LiteRT interpreter, as an app would call it: one image at a time, the first output."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    (image,), outputs = interpreter.get_input_details(), interpreter.get_output_details()
    rows = []
    for x in images:
        interpreter.set_tensor(image["index"], x[None])
        interpreter.invoke()
        rows.append(interpreter.get_tensor(outputs[0]["index"])[0])
    return np.stack(rows)


def test_fp32_tflite_agrees_with_pytorch_and_onnx(tflite_fp32, exported_onnx, trained_run, fashion_holdout_dir):
    check = tflite_fp32.check
    assert check.runtime == "litert-fp32" and check.source == "run test split" and check.n == trained_run.test.n
    assert check.agreement >= 0.995 and check.accuracy_drop <= 0.0 and check.max_abs_diff < 1e-4
    side = json.loads(tflite_fp32.sidecar.read_text())
    assert side["model_format"] == "tflite" and side["check"]["agreement"] == check.agreement
    assert "onnx2tf" in side["tensorflow"]["converter"] and side["model_sha256"]
    # Images it was never checked on, through the bare interpreter, against the ONNX export.
    from headstart.data import load_image
    from headstart.deployed import load_model

    onnx_model = load_model(exported_onnx.path, runtime="onnxruntime")
    x = np.stack([load_image(p, onnx_model.info.preprocessing) for p in _holdout(fashion_holdout_dir)])
    ours, reference = _interpreter_probabilities(tflite_fp32.path, x), onnx_model.predict_proba(x)
    assert np.array_equal(ours.argmax(1), reference.argmax(1))
    assert np.abs(ours - reference).max() < 1e-4 and np.allclose(ours.sum(1), 1.0, atol=1e-5)


def test_tflite_layout_is_what_mediapipe_expects(tflite_fp32, trained_run):
    """uint8 NHWC in with a resizable batch, probabilities first, then the novelty score; builtin ops only."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(tflite_fp32.path))
    (image,) = interpreter.get_input_details()
    probabilities, ood = interpreter.get_output_details()
    assert image["name"] == "images" and image["dtype"] == np.uint8
    assert list(image["shape_signature"]) == [-1, 224, 224, 3]
    assert probabilities["name"] == "probabilities" and list(probabilities["shape_signature"]) == [
        -1, len(trained_run.labels)]
    assert ood["name"] == "ood_score" and list(ood["shape_signature"]) == [-1]
    model = schema.Model.GetRootAs(tflite_fp32.path.read_bytes(), 0)
    codes = [model.OperatorCodes(i) for i in range(model.OperatorCodesLength())]
    assert all(max(c.BuiltinCode(), c.DeprecatedBuiltinCode()) != schema.BuiltinOperator.CUSTOM for c in codes)
    interpreter.resize_tensor_input(image["index"], [3, 224, 224, 3])
    interpreter.allocate_tensors()
    interpreter.set_tensor(image["index"], np.zeros((3, 224, 224, 3), np.uint8))
    interpreter.invoke()
    assert interpreter.get_tensor(probabilities["index"]).shape == (3, len(trained_run.labels))


def test_metadata_reads_back_labels_and_normalisation(tflite_fp32, trained_run):
    from headstart.tflite_metadata import DESCRIPTION_FILE, LABELS_FILE, read_metadata

    meta = read_metadata(tflite_fp32.path)
    side = json.loads(tflite_fp32.sidecar.read_text())
    mean, std = side["preprocessing"]["mean"], side["preprocessing"]["std"]
    assert meta.labels == tuple(trained_run.labels)
    assert meta.min_parser_version == "1.0.0" and meta.author == "headstart" and meta.version
    (image,) = meta.inputs
    assert image.content == "image" and image.color_space == "RGB"
    assert image.mean == pytest.approx([255 * m for m in mean]) and image.std == pytest.approx([255 * s for s in std])
    assert image.min == (0.0,) and image.max == (255.0,) and "normalises them itself" in image.description
    probabilities, ood = meta.outputs
    assert probabilities.name == "probabilities" and probabilities.files == ((LABELS_FILE, 2),)  # TENSOR_AXIS_LABELS
    assert probabilities.min == (0.0,) and probabilities.max == (1.0,)
    assert ood.name == "ood_score" and "unknown" in ood.description
    assert meta.subgraph_files == ((DESCRIPTION_FILE, 1),)  # DESCRIPTIONS
    embedded = json.loads(meta.files[DESCRIPTION_FILE])
    assert embedded["labels"] == list(trained_run.labels) and embedded["preprocessing"] == side["preprocessing"]
    assert "check" not in embedded and embedded["model_format"] == "tflite"


def test_a_tflite_without_its_sidecar_still_knows_its_labels(tflite_fp32, trained_run, tmp_path):
    from headstart.deployed import read_model_info

    lonely = tmp_path / "copied.tflite"
    shutil.copy(tflite_fp32.path, lonely)
    info = read_model_info(lonely)
    assert info.source == "tflite metadata" and info.labels == trained_run.labels
    assert info.preprocessing == read_model_info(tflite_fp32.path).preprocessing
    (tmp_path / "plain.tflite").write_bytes(b"not a model")
    with pytest.raises(ModelError, match=r"plain\.json"):
        read_model_info(tmp_path / "plain.tflite")


def test_int8_tflite_is_quantised_calibrated_and_close(tflite_int8, tflite_fp32, trained_run):
    from ai_edge_litert import schema_py_generated as schema

    check = tflite_int8.check
    assert check.runtime == "litert-fp32" and check.n == trained_run.test.n and check.agreement > 0.8
    side = json.loads(tflite_int8.sidecar.read_text())
    assert side["precision"] == "int8" and side["calibration"]["images"] > 100
    assert side["calibration"]["source"] == "run training split"
    assert tflite_int8.path.stat().st_size < 0.5 * tflite_fp32.path.stat().st_size
    graph = schema.Model.GetRootAs(tflite_int8.path.read_bytes(), 0).Subgraphs(0)
    types = {graph.Tensors(i).Type() for i in range(graph.TensorsLength())}
    assert schema.TensorType.INT8 in types and schema.TensorType.FLOAT32 in types  # int8 body, float ends
    from headstart.tflite_metadata import read_metadata

    assert read_metadata(tflite_int8.path).labels == tuple(trained_run.labels)


def _blocked_env(tmp_path: Path) -> dict[str, str]:
    site = tmp_path / "blocker"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)]),
           "HEADSTART_CACHE_DIR": str(tmp_path / "no-cache")}
    env.pop("HEADSTART_DEBUG", None)
    return env


def test_label_a_tflite_with_litert_alone(tflite_int8, fashion_holdout_dir, tmp_path):
    """``headstart label --model MODEL.tflite`` where torch, TensorFlow, ONNX Runtime and OpenVINO cannot be
    imported, on a .tflite copied without its sidecar, on images never trained on."""
    model = tmp_path / "phone.tflite"
    shutil.copy(tflite_int8.path, model)
    images = _holdout(fashion_holdout_dir, 2)
    script = ("import sys\nfrom headstart.cli import main\ncode = main(sys.argv[1:])\n"
              "loaded = {m.split('.')[0] for m in sys.modules}\n"
              "assert not loaded & {'torch', 'tensorflow', 'onnxruntime', 'openvino'}, loaded\n"
              "assert 'ai_edge_litert' in loaded\nraise SystemExit(code)\n")
    env = _blocked_env(tmp_path)
    blocked = subprocess.run([sys.executable, "-c", "import tensorflow"], env=env, capture_output=True, text=True,
                             timeout=60)
    assert blocked.returncode != 0 and "blocked" in blocked.stderr
    done = subprocess.run([sys.executable, "-c", script, "label", "--model", str(model), "--top_k", "1",
                           "--format", "json", "-q", *map(str, images)],
                          env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    predictions = json.loads(done.stdout)
    assert [Path(p["path"]) for p in predictions] == images
    assert all("ood_score" in p and isinstance(p["unknown"], bool) for p in predictions)
    from headstart.model import load_model

    in_process = load_model(tflite_int8.path).predict_files(images, top_k=1)[0]
    assert [p["top"][0]["label"] for p in predictions] == [p.label for p in in_process]
    correct = sum(p["top"][0]["label"] == Path(p["path"]).parent.name for p in predictions)
    assert correct >= 0.6 * len(images)  # Fashion-MNIST at 30 training images per class: about 75 %


def test_mediapipe_image_classifier_loads_it(tflite_fp32, trained_run, fashion_holdout_dir):
    """MediaPipe Tasks' ImageClassifier, as it loads a Model Maker model (where mediapipe is installed)."""
    pytest.importorskip("mediapipe")
    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions, vision
    from PIL import Image

    from headstart.model import load_model

    options = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=str(tflite_fp32.path)),
                                            max_results=1)
    images = _holdout(fashion_holdout_dir, 2)
    ours = [p.label for p in load_model(tflite_fp32.path).predict_files(images, top_k=1)[0]]
    with vision.ImageClassifier.create_from_options(options) as classifier:
        answers = []
        for path in images:
            rgb = np.ascontiguousarray(np.asarray(Image.open(path).convert("RGB")))
            result = classifier.classify(mp.Image(image_format=mp.ImageFormat.SRGB, data=rgb))
            head = result.classifications[0]
            assert head.head_name == "probabilities"
            answers.append(head.categories[0].category_name)
    assert set(answers) <= set(trained_run.labels)
    # MediaPipe resizes with its own (bilinear) kernel, headstart with bicubic: nearly always the same label
    assert np.mean([a == b for a, b in zip(answers, ours)]) >= 0.85


def test_tflite_precisions_and_missing_converter(trained_run, cli, monkeypatch):
    from headstart.export import export_model

    with pytest.raises(UsageError, match="saved_model exports support fp32"):
        export_model(trained_run.run_dir, model_format="saved_model", precision="int8")
    import headstart.runtimes as runtimes

    real = runtimes.installed
    monkeypatch.setattr(runtimes, "installed", lambda name: name != "onnx2tf" and real(name))
    code, _, err = cli("export", "--model", trained_run.run_dir, "--format", "tflite")
    assert code == 2 and "onnx2tf" in err and "pip install 'headstart[tensorflow]'" in err
    assert "Traceback" not in err
