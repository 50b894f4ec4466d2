"""TF Hub / SavedModel backbones: real TensorFlow, SavedModels built here (tests/tf_fixtures.py), real images."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from clitools import assert_one_line_error, run_cli

pytestmark = pytest.mark.tensorflow

REPO = Path(__file__).resolve().parents[1]
HANDLE = "https://tfhub.dev/google/imagenet/mobilenet_v2_100_224/feature_vector/5"
KAGGLE = "google/mobilenet-v2/tensorFlow2/100-224-feature-vector/2"


@pytest.fixture(scope="session")
def modules(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One of each kind of module, built once per session."""
    from tf_fixtures import build_classifier, build_feature_vector, build_unconvertible, require_tensorflow

    require_tensorflow()

    root = tmp_path_factory.mktemp("savedmodels")
    return {
        "fixed": build_feature_vector(root / "fixed"),
        "dynamic": build_feature_vector(root / "dynamic", image_size=None, seed=1),
        "reusable": build_feature_vector(root / "reusable", seed=2, reusable=True),
        "classifier": build_classifier(root / "classifier", classes=1001, logits=True),
        "classifier_proba": build_classifier(root / "classifier_proba", classes=1000, logits=False, seed=3),
        "unconvertible": build_unconvertible(root / "unconvertible"),
    }


@pytest.fixture(scope="session")
def tf_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tfhub-cache")


@pytest.fixture(scope="session")
def tf_run(tmp_path_factory: pytest.TempPathFactory, modules: dict[str, Path], fashion_dir: Path, tf_cache: Path):
    """A real retrain through the fixed-size module (its vectors computed, its ONNX converted)."""
    from headstart.config import RetrainConfig
    from headstart.train import retrain

    out = tmp_path_factory.mktemp("runs") / "tfhub"
    config = RetrainConfig(image_dir=fashion_dir, output_dir=out, bottleneck_dir=tf_cache,
                           backbone=f"tfhub:{modules['fixed']}", how_many_training_steps=300, progress=False)
    return retrain(config)


def _decoded(paths: list[Path], prep) -> np.ndarray:
    from headstart.data import load_image

    return np.stack([load_image(p, prep) for p in paths])


# ---------------------------------------------------------------- reading the module


def test_signature_read_without_tensorflow_agrees_with_tensorflow(modules: dict[str, Path]) -> None:
    """The protobuf reader finds the input TensorFlow itself reports, for signatures and for __call__."""
    from headstart.savedmodel_info import read_signature
    from headstart.tfhub_runtime import import_tensorflow

    tf = import_tensorflow()
    for name in ("fixed", "dynamic", "reusable", "classifier"):
        info = read_signature(modules[name])
        loaded = tf.saved_model.load(str(modules[name]))
        if info.key == "__call__":
            spec = loaded.__call__.concrete_functions[0].structured_input_signature[0][0]
            assert name == "reusable" and not loaded.signatures
        else:
            function = loaded.signatures[info.key]
            spec = function.structured_input_signature[1][info.input.name]
            assert info.output is not None and info.output.name in function.structured_outputs
        assert info.input.shape == tuple(spec.shape.as_list()), name
        assert info.input.dtype == spec.dtype.name == "float32"
    assert read_signature(modules["fixed"]).image_size == 32
    assert read_signature(modules["dynamic"]).image_size is None


def test_resolving_reads_signature_and_never_imports_tensorflow(modules: dict[str, Path]) -> None:
    code = textwrap.dedent(f"""
        import json, sys
        from headstart.backbones import resolve_backbone
        b = resolve_backbone("tfhub:{modules['fixed']}")
        d = resolve_backbone("tfhub:{modules['dynamic']}@48")
        print(json.dumps([b.name, b.num_features, b.preprocessing.to_dict(), d.name, d.preprocessing.input_size,
                          d.num_features, "tensorflow" in sys.modules]))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    name, dim, prep, dyn_name, dyn_size, dyn_dim, imported = json.loads(out.stdout)
    assert name == f"tfhub:{modules['fixed']}" and dim == 128
    assert prep == {"input_size": 32, "crop_pct": 1.0, "interpolation": "bilinear", "mean": [0.0, 0.0, 0.0],
                    "std": [1.0, 1.0, 1.0]}
    assert dyn_name == f"tfhub:{modules['dynamic']}@48" and dyn_size == 48 and dyn_dim == 32
    assert imported is False


def test_fingerprint_is_the_modules_files_and_signature(modules: dict[str, Path], tmp_path: Path) -> None:
    from tf_fixtures import build_feature_vector

    from headstart.backbones import resolve_backbone

    first = resolve_backbone(f"tfhub:{modules['fixed']}")
    copy = tmp_path / "copy"
    shutil.copytree(modules["fixed"], copy)
    assert resolve_backbone(f"tfhub:{copy}").fingerprint == first.fingerprint  # same module, another folder
    other = build_feature_vector(tmp_path / "other", seed=7)  # same architecture and signature, other weights
    assert resolve_backbone(f"tfhub:{other}").fingerprint != first.fingerprint
    dyn32, dyn48 = (resolve_backbone(f"tfhub:{modules['dynamic']}@{s}") for s in (32, 48))
    assert dyn32.fingerprint != dyn48.fingerprint  # the input size is part of what makes the vectors


# ---------------------------------------------------------------- retrain, cached rerun


def test_retrain_through_a_savedmodel(tf_run, modules: dict[str, Path], tf_cache: Path, fashion_dir: Path) -> None:
    from tf_fixtures import run_in_tensorflow

    from headstart.backbones import resolve_backbone
    from headstart.bundle import load_bundle

    assert tf_run.bottlenecks["computed"] == 300 and tf_run.bottlenecks["cached"] == 0
    assert tf_run.test.accuracy > 0.3  # 10 classes: chance is 0.1
    bundle = load_bundle(tf_run.run_dir)
    backbone = resolve_backbone(f"tfhub:{modules['fixed']}")
    assert bundle.backbone.name == backbone.name and bundle.backbone.timm_name == "tfhub"
    assert bundle.backbone.weights_fingerprint == backbone.weights_fingerprint
    assert bundle.preprocessing == backbone.preprocessing and bundle.backbone.num_features == 128
    assert (tf_cache / "models" / f"tfhub-{backbone.fingerprint}-features.onnx").is_file()
    # The cached vectors are the module's own, as TensorFlow computes them from the same pixels.
    from headstart.cache import BottleneckCache
    from headstart.features import compute_bottlenecks

    records = list(_records(fashion_dir))[:20]
    with BottleneckCache(tf_cache) as cache:
        cached = compute_bottlenecks(records, backbone, cache, runtime=bundle.backbone.runtime,
                                     precision=bundle.backbone.precision, progress=False)
    assert cached.computed == 0
    expected = run_in_tensorflow(modules["fixed"], _decoded([r.path for r in records], backbone.preprocessing) / 255.0)
    cosine = np.sum(cached.vectors * expected, 1) / np.linalg.norm(cached.vectors, axis=1) / np.linalg.norm(
        expected, axis=1)
    assert cosine.min() > 0.995


def _records(image_dir: Path):
    from headstart.data import index_image_dir

    return index_image_dir(image_dir, 10, 10).records


def test_cached_rerun_computes_nothing_and_needs_no_tensorflow(tf_run, modules: dict[str, Path], fashion_dir: Path,
                                                               tf_cache: Path, tmp_path: Path) -> None:
    code = textwrap.dedent(f"""
        import json, sys
        from headstart.config import RetrainConfig
        from headstart.train import retrain
        r = retrain(RetrainConfig(image_dir={str(fashion_dir)!r}, output_dir={str(tmp_path / 'again')!r},
                                  bottleneck_dir={str(tf_cache)!r}, backbone="tfhub:{modules['fixed']}",
                                  how_many_training_steps=300, progress=False))
        print(json.dumps([r.bottlenecks, r.test.accuracy, "tensorflow" in sys.modules]))
    """)
    onnx_files = sorted((tf_cache / "models").glob("*.onnx"))
    stamps = [p.stat().st_mtime_ns for p in onnx_files]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    counts, accuracy, imported = json.loads(out.stdout.strip().splitlines()[-1])
    assert counts == {"computed": 0, "cached": 300, "skipped": 0}
    assert accuracy == pytest.approx(tf_run.test.accuracy)  # the same vectors, the same seed: the same head
    assert imported is False
    assert [p.stat().st_mtime_ns for p in onnx_files] == stamps  # nothing converted again


def test_dynamic_module_needs_image_size(cli, modules: dict[str, Path], fashion_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    code, _, err = cli("retrain", "--image_dir", fashion_dir, "--tfhub_module", modules["dynamic"],
                       "--bottleneck_dir", cache)
    assert code == 2
    assert_one_line_error(err, "dynamic input size", "--image_size")
    assert not (cache / "models").exists()  # nothing was computed or converted
    code, _, err = cli("retrain", "--image_dir", fashion_dir, "--tfhub_module", modules["fixed"],
                       "--image_size", "48", "--bottleneck_dir", cache)
    assert code == 2
    assert_one_line_error(err, "takes 32x32 images")
    code, _, err = cli("retrain", "--image_dir", fashion_dir, "--image_size", "48", "--bottleneck_dir", cache)
    assert code == 2
    assert_one_line_error(err, "--image_size applies to TF Hub")


def test_dynamic_module_with_image_size_runs_at_that_size(modules: dict[str, Path], tmp_path: Path,
                                                          photos) -> None:
    from tf_fixtures import run_in_tensorflow

    from headstart.backbones import resolve_backbone
    from headstart.runtimes import RuntimeChoice, create_runner
    from headstart.tfhub import apply_image_size

    backbone = resolve_backbone(apply_image_size(f"tfhub:{modules['dynamic']}", 48))
    assert backbone.preprocessing.input_size == 48
    images = np.stack([np.asarray(_resized(photos[n], 48)) for n in ("chelsea", "coffee", "astronaut")])
    runner = create_runner(backbone, RuntimeChoice("onnxruntime", "fp32"), tmp_path / "models")
    np.testing.assert_allclose(runner(images), run_in_tensorflow(modules["dynamic"], images / np.float32(255)),
                               rtol=1e-4, atol=1e-3)


def _resized(image: np.ndarray, size: int):
    from PIL import Image

    return Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR)


def test_reusable_savedmodel_without_signatures(modules: dict[str, Path], tmp_path: Path, photos) -> None:
    """TF2 Hub modules are often saved with ``__call__`` only: headstart reads and calls that."""
    from tf_fixtures import run_in_tensorflow

    from headstart.backbones import resolve_backbone
    from headstart.runtimes import RuntimeChoice, create_runner

    backbone = resolve_backbone(f"tfhub:{modules['reusable']}")
    assert backbone.preprocessing.input_size == 32 and backbone.num_features == 128
    images = np.stack([np.asarray(_resized(photos[n], 32)) for n in ("chelsea", "coffee")])
    expected = run_in_tensorflow(modules["reusable"], images / np.float32(255))
    for runtime in ("openvino", "torch"):  # ONNX on OpenVINO; "torch" runs it in TensorFlow (no torch form)
        got = create_runner(backbone, RuntimeChoice(runtime, "fp32"), tmp_path / "models")(images)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-3)


def test_unconvertible_module_falls_back_to_tensorflow(modules: dict[str, Path], tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    from tf_fixtures import run_in_tensorflow

    from headstart.backbones import resolve_backbone
    from headstart.runtimes import RuntimeChoice, create_runner
    from headstart.tfhub_runtime import onnx_path

    backbone = resolve_backbone(f"tfhub:{modules['unconvertible']}")
    images = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    choice, models = RuntimeChoice("onnxruntime", "fp32"), tmp_path / "models"
    with caplog.at_level(logging.WARNING, logger="headstart"):
        runner = create_runner(backbone, choice, models)
    assert "tf2onnx could not convert" in caplog.text and "TensorFlow" in caplog.text
    np.testing.assert_allclose(runner(images), run_in_tensorflow(modules["unconvertible"], images / np.float32(255)),
                               rtol=1e-5, atol=1e-5)
    assert not onnx_path(backbone, models).exists()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="headstart"):
        create_runner(backbone, choice, models)  # remembered: not converted again
    assert "earlier" in caplog.text


def test_fine_tuning_a_tf_backbone_fails_before_any_work(cli, modules: dict[str, Path], fashion_dir: Path,
                                                         tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    code, _, err = cli("retrain", "--image_dir", fashion_dir, "--tfhub_module", modules["fixed"],
                       "--fine_tune_blocks", "1", "--bottleneck_dir", cache)
    assert code == 2
    assert_one_line_error(err, "--fine_tune_blocks", "TF Hub")
    assert not cache.exists()


# ---------------------------------------------------------------- handles, offline, the missing extra

NET_BLOCKER = textwrap.dedent('''
    """No network: every connection attempt is written down and refused."""
    import os
    import socket

    def _refuse(*args, **kwargs):
        with open(os.environ["NET_LOG"], "a") as log:
            log.write(repr(args[:1]) + "\\n")
        raise OSError("network unreachable (blocked by the test)")

    socket.getaddrinfo = _refuse
    socket.create_connection = _refuse
    socket.socket.connect = _refuse
''')


def _blocked_env(tmp_path: Path, code: str, **extra: str) -> dict[str, str]:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(code)
    return {"PYTHONPATH": os.pathsep.join([str(site), str(REPO)]), **extra}


@pytest.mark.parametrize("handle", [HANDLE, KAGGLE])
def test_offline_handle_fails_at_once_naming_it(handle: str, fashion_dir: Path, tmp_path: Path) -> None:
    net_log = tmp_path / "net.log"
    env = _blocked_env(tmp_path, NET_BLOCKER, NET_LOG=str(net_log), TFHUB_CACHE_DIR=str(tmp_path / "empty-hub"))
    done = run_cli("retrain", "--image_dir", fashion_dir, "--tfhub_module", handle, "--bottleneck_dir",
                   tmp_path / "cache", env=env, timeout=120)
    assert done.returncode == 1
    line = assert_one_line_error(done.stderr, handle, "cannot be reached")
    assert "tfhub.dev" in line or "kaggle.com" in line
    assert net_log.read_text().count("\n") == 1  # one refused probe, no download attempt


def test_handle_in_tfhub_cache_resolves_offline(modules: dict[str, Path], tmp_path: Path) -> None:
    """A module downloaded earlier is found in TF Hub's cache (sha1 of the handle) with no network at all."""
    hub = tmp_path / "hub"
    shutil.copytree(modules["fixed"], hub / hashlib.sha1(HANDLE.encode()).hexdigest())
    net_log = tmp_path / "net.log"
    code = ("from headstart.backbones import resolve_backbone; b = resolve_backbone('tfhub:" + HANDLE + "'); "
            "print(b.name, b.weights_path, b.preprocessing.input_size)")
    env = {**os.environ, **_blocked_env(tmp_path, NET_BLOCKER, NET_LOG=str(net_log), TFHUB_CACHE_DIR=str(hub))}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    name, folder, size = out.stdout.split()
    assert name == f"tfhub:{HANDLE}" and Path(folder).parent == hub and size == "32"
    assert not net_log.exists()


TF_BLOCKER = textwrap.dedent('''
    """Make TensorFlow unimportable, as on a machine without the [tensorflow] extra."""
    import importlib.abc
    import sys

    class _Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("tensorflow", "tensorflow_hub", "tf2onnx", "keras", "tf_keras"):
                raise ImportError(f"{name} is blocked")
            return None

    sys.meta_path.insert(0, _Blocker())
''')


def test_missing_extra_names_it(modules: dict[str, Path], fashion_dir: Path, tmp_path: Path) -> None:
    done = run_cli("retrain", "--image_dir", fashion_dir, "--tfhub_module", modules["fixed"], "--bottleneck_dir",
                   tmp_path / "cache", env=_blocked_env(tmp_path, TF_BLOCKER), timeout=120)
    assert done.returncode == 2
    assert_one_line_error(done.stderr, "needs TensorFlow")
    assert "pip install 'headstart[tensorflow]'" in done.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "cache").exists()


# ---------------------------------------------------------------- label --imagenet


@pytest.mark.parametrize("kind", ["classifier", "classifier_proba"])
def test_label_imagenet_with_a_classification_module(kind: str, modules: dict[str, Path], tmp_path: Path,
                                                     photos, encode) -> None:
    """1001 logits (background first, as TF-slim) or 1000 probabilities: the module's own top class, named."""
    from tf_fixtures import run_in_tensorflow

    from headstart.backbones import resolve_backbone
    from headstart.inference import label_imagenet
    from headstart.networks import imagenet_labels

    paths = []
    for name in ("chelsea", "coffee", "astronaut"):
        paths.append(tmp_path / f"{name}.jpg")
        paths[-1].write_bytes(encode(photos[name], "JPEG", quality=95))
    result = label_imagenet(paths, backbone=f"tfhub:{modules[kind]}", top_k=3, runtime="onnxruntime",
                            precision="fp32", bottleneck_dir=tmp_path, progress=False)
    out = run_in_tensorflow(modules[kind], _decoded(paths, resolve_backbone(f"tfhub:{modules[kind]}").preprocessing)
                            / np.float32(255))
    if kind == "classifier":
        assert out.shape[1] == 1001
        out = np.exp(out - out.max(1, keepdims=True))
        out = (out / out.sum(1, keepdims=True))[:, 1:]
    names = imagenet_labels()
    assert len(result.predictions) == 3
    for prediction, row in zip(result.predictions, out):
        assert prediction.label == names[int(row.argmax())]
        assert prediction.top[0][1] == pytest.approx(float(row.max()), rel=1e-3)
    assert len({p.label for p in result.predictions}) > 1  # the photos get different answers


def test_label_imagenet_refuses_a_feature_vector(cli, modules: dict[str, Path], tmp_path: Path, photos,
                                                 encode) -> None:
    photo = tmp_path / "cat.png"
    photo.write_bytes(encode(photos["chelsea"], "PNG"))
    code, _, err = cli("label", "--imagenet", "--tfhub_module", modules["fixed"], photo, "--bottleneck_dir", tmp_path)
    assert code == 1
    assert_one_line_error(err, "128 values per image", "1000")


# ---------------------------------------------------------------- export


def test_export_to_onnx_agrees_with_the_run(tf_run, tf_cache: Path, fashion_holdout_dir: Path) -> None:
    """The exported graph (tf2onnx's backbone + the head) labels unseen images as the run directory does."""
    import onnx

    from headstart.export import export_model
    from headstart.model import load_model

    result = export_model(tf_run.run_dir, cache_dir=tf_cache, progress=False)
    assert result.check.n == tf_run.test.n and result.check.agreement >= 0.995
    assert result.check.accuracy == pytest.approx(tf_run.test.accuracy, abs=0.04)
    graph = onnx.load(str(result.path))
    assert [i.name for i in graph.graph.input] == ["images"]
    assert [o.name for o in graph.graph.output] == ["probabilities", "ood_score"]
    paths = sorted(fashion_holdout_dir.glob("*/*.png"))[::4]
    with load_model(tf_run.run_dir, runtime="onnxruntime", precision="fp32", bottleneck_dir=tf_cache) as run, \
            load_model(result.path) as exported:
        assert exported.preprocessing == run.preprocessing
        ours, skipped = exported.predict_files(paths, top_k=3)
        theirs, _ = run.predict_files(paths, top_k=3)
    assert not skipped and len(ours) == len(paths) == len(theirs)
    assert [p.label for p in ours] == [p.label for p in theirs]
    for a, b in zip(ours, theirs):
        assert a.top[0][1] == pytest.approx(b.top[0][1], abs=1e-4)
        assert a.unknown == b.unknown


def test_export_label_cli_without_tensorflow(tf_run, tf_cache: Path, fashion_holdout_dir: Path,
                                             tmp_path: Path) -> None:
    """The exported file is labelled with TensorFlow import-blocked: deployment does not need it."""
    from headstart.export import export_model

    out = tmp_path / "model.onnx"
    export_model(tf_run.run_dir, output=out, cache_dir=tf_cache, progress=False)
    folder = sorted(fashion_holdout_dir.iterdir())[0]
    done = run_cli("label", "--model", out, folder, "--format", "json", env=_blocked_env(tmp_path, TF_BLOCKER))
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert len(rows) == len(list(folder.iterdir())) and all(r["top"] for r in rows)


# ---------------------------------------------------------------- real ImageNet weights through the TF Hub path


@pytest.fixture(scope="session")
def lite0_modules(tmp_path_factory: pytest.TempPathFactory, modules: dict[str, Path]) -> dict[str, Path]:
    """EfficientNet-Lite0's packaged ImageNet weights rebuilt in Keras, saved as TF Hub modules."""
    from tf_fixtures import build_efficientnet_lite0

    root = tmp_path_factory.mktemp("lite0")
    return {"features": build_efficientnet_lite0(root / "features"),
            "classifier": build_efficientnet_lite0(root / "classifier", classifier=True)}


@pytest.mark.slow
def test_pretrained_classification_module_names_real_photos(lite0_modules: dict[str, Path], tmp_path: Path,
                                                            photos, encode) -> None:
    from headstart.inference import label_imagenet

    paths = []
    for name in ("chelsea", "coffee"):
        paths.append(tmp_path / f"{name}.jpg")
        paths[-1].write_bytes(encode(photos[name], "JPEG", quality=95))
    result = label_imagenet(paths, backbone=f"tfhub:{lite0_modules['classifier']}", top_k=5,
                            bottleneck_dir=tmp_path, progress=False)
    cat, coffee = (" ".join(label for label, _ in p.top) for p in result.predictions)
    assert "cat" in result.predictions[0].label, cat
    assert "espresso" in coffee, coffee


@pytest.mark.slow
def test_tfhub_lite0_gives_the_builtin_lite0_vectors(lite0_modules: dict[str, Path], tmp_path: Path,
                                                    photos) -> None:
    """The same network and weights, reached through the SavedModel path: the same bottlenecks for the same pixels."""
    from headstart.backbones import resolve_backbone
    from headstart.runtimes import RuntimeChoice, create_runner

    images = np.stack([np.asarray(_resized(photos[n], 224)) for n in ("chelsea", "coffee", "astronaut")])
    choice = RuntimeChoice("onnxruntime", "fp32")
    ours = create_runner(resolve_backbone(f"tfhub:{lite0_modules['features']}"), choice, tmp_path)(images)
    builtin = create_runner(resolve_backbone("efficientnet_lite0"), choice, tmp_path)(images)
    assert ours.shape == builtin.shape == (3, 1280)
    np.testing.assert_allclose(ours, builtin, rtol=1e-3, atol=1e-3)


def test_compare_counts_a_savedmodel_on_its_graph(tf_run, modules: dict[str, Path], fashion_dir: Path,
                                                  tf_cache: Path) -> None:
    """``compare`` sizes a SavedModel backbone from its converted graph, with no torch form to count on."""
    from headstart.backbone_comparison import compare

    result = compare(fashion_dir, [f"tfhub:{modules['fixed']}"], bottleneck_dir=tf_cache, timing_seconds=0.2,
                     how_many_training_steps=300, progress=False)
    (row,) = result.rows
    # 3x3/2 conv 3->8, depthwise 3x3, 1x1 8->8, all at 16x16: the batch norms are folded into them.
    assert row["macs"] == 16 * 16 * 8 * (3 * 9 + 9 + 8)
    assert row["params"] == (8 * 3 * 9 + 8) + (8 * 9 + 8) + (8 * 8 + 8)
    assert row["bottleneck_size"] == 128 and row["bottlenecks_computed"] == 0
    assert row["test_accuracy"] == pytest.approx(tf_run.test.accuracy, abs=0.1)
