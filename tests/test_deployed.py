"""Exported models run without PyTorch and label images as the run directory does."""

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

from headstart.deployed import (is_exported_model, load_model, read_model_info, resolve_deployed_runtime,
                                sidecar_path)
from headstart.errors import ModelError, UsageError

REPO = Path(__file__).resolve().parents[1]

BLOCKER = textwrap.dedent('''
    """Make torch and timm unimportable, as on a machine that never installed them."""
    import importlib.abc
    import sys

    class _Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "timm", "torchvision"):
                raise ImportError(f"{name} is blocked: deployment must not need it")
            return None

    sys.meta_path.insert(0, _Blocker())
''')


def _blocked_env(tmp_path: Path) -> dict[str, str]:
    site = tmp_path / "blocker"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)]), "HEADSTART_CACHE_DIR":
           str(tmp_path / "no-cache")}
    env.pop("HEADSTART_DEBUG", None)
    return env


def _holdout_images(holdout: Path, per_class: int = 2) -> list[Path]:
    return [p for d in sorted(holdout.iterdir()) for p in sorted(d.iterdir())[:per_class]]


def test_is_exported_model(tmp_path):
    assert is_exported_model("m.onnx") and is_exported_model("a/b/model.XML") and is_exported_model("x.engine")
    assert not is_exported_model(tmp_path) and not is_exported_model("runs/demo")
    assert sidecar_path("a/model-fp32.onnx") == Path("a/model-fp32.json")


def test_read_model_info_from_the_sidecar(exported_onnx, trained_run):
    info = read_model_info(exported_onnx.path)
    assert info.source == "sidecar" and info.labels == trained_run.labels
    assert info.model_format == "onnx" and info.precision == "fp32" and info.input_size == 224
    assert info.preprocessing.crop_pct == 1.0 and info.check["agreement"] >= 0.995


def test_onnx_metadata_alone_is_enough(exported_onnx, trained_run, tmp_path):
    lonely = tmp_path / "copied.onnx"
    shutil.copy(exported_onnx.path, lonely)
    info = read_model_info(lonely)
    assert info.source == "onnx metadata" and info.labels == trained_run.labels
    assert info.preprocessing == read_model_info(exported_onnx.path).preprocessing


def test_missing_or_broken_descriptions_are_model_errors(exported_ir, tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        read_model_info(tmp_path / "nope.onnx")
    xml = tmp_path / "m.xml"
    shutil.copy(exported_ir.path, xml)
    with pytest.raises(ModelError, match="m.json"):
        read_model_info(xml)
    (tmp_path / "m.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ModelError, match="not a headstart export"):
        read_model_info(xml)
    (tmp_path / "m.json").write_text(json.dumps({"format": "headstart-export", "labels": ["a", "b"],
                                                 "preprocessing": {"input_size": 224}}))
    with pytest.raises(ModelError, match="preprocessing"):
        read_model_info(xml)


def test_runtime_resolution():
    assert resolve_deployed_runtime("onnx") == ("openvino", "fp32")
    assert resolve_deployed_runtime("onnx", "onnxruntime") == ("onnxruntime", "fp32")
    assert resolve_deployed_runtime("openvino", precision="bf16") == ("openvino", "bf16")
    with pytest.raises(UsageError):
        resolve_deployed_runtime("openvino", "onnxruntime")
    with pytest.raises(UsageError):
        resolve_deployed_runtime("onnx", "torch")
    with pytest.raises(UsageError):
        resolve_deployed_runtime("onnx", "onnxruntime", "bf16")


def test_predict_proba_checks_its_input(exported_onnx):
    model = load_model(exported_onnx.path, runtime="onnxruntime")
    with pytest.raises(UsageError, match="uint8"):
        model.predict_proba(np.zeros((1, 224, 224, 3), np.float32))
    with pytest.raises(UsageError):
        model.predict_proba(np.zeros((1, 100, 100, 3), np.uint8))
    proba = model.predict_proba(np.zeros((2, 224, 224, 3), np.uint8))
    assert proba.shape == (2, len(model.labels)) and proba.dtype == np.float32


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_same_labels_as_the_run_directory(exported_onnx, trained_run, fashion_holdout_dir, shared_cache_dir, runtime):
    """Images the model never saw get the same label from the export as from the run directory."""
    from headstart.inference import label

    images = [fashion_holdout_dir]
    from_run = label(trained_run.run_dir, images, top_k=1, bottleneck_dir=shared_cache_dir, runtime="onnxruntime",
                     precision="fp32", progress=False)
    from_export = label(exported_onnx.path, images, top_k=1, runtime=runtime, progress=False)
    run_top = {p.path.resolve(): p.top[0] for p in from_run.predictions}
    export_top = {p.path.resolve(): p.top[0] for p in from_export.predictions}
    assert set(run_top) == set(export_top) and len(run_top) == 100
    same = sum(run_top[k][0] == export_top[k][0] for k in run_top)
    assert same >= 99
    assert max(abs(run_top[k][1] - export_top[k][1]) for k in run_top if run_top[k][0] == export_top[k][0]) < 0.02


def test_unreadable_images_are_skipped(exported_onnx, tmp_path, fashion_holdout_dir):
    from headstart.inference import label

    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    good = _holdout_images(fashion_holdout_dir, 1)[0]
    result = label(exported_onnx.path, [good, bad], progress=False)
    assert [p.path for p in result.predictions] == [good]
    assert [s.path for s in result.skipped] == [bad]


def test_the_blocker_blocks(tmp_path):
    done = subprocess.run([sys.executable, "-c", "import torch"], env=_blocked_env(tmp_path), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode != 0 and "blocked" in done.stderr


@pytest.mark.parametrize("which", ["onnx", "openvino"])
def test_label_cli_without_torch(which, exported_onnx, exported_ir, fashion_holdout_dir, tmp_path):
    """``headstart label --model MODEL`` where torch and timm cannot be imported, on unseen images."""
    model = exported_onnx.path if which == "onnx" else exported_ir.path
    images = _holdout_images(fashion_holdout_dir)
    script = ("import sys\nfrom headstart.cli import main\ncode = main(sys.argv[1:])\n"
              "assert 'torch' not in sys.modules and 'timm' not in sys.modules, 'torch was imported'\n"
              "raise SystemExit(code)\n")
    done = subprocess.run([sys.executable, "-c", script, "label", "--model", str(model), "--top_k", "1",
                           "--format", "json", "-q", *map(str, images)],
                          env=_blocked_env(tmp_path), capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    predictions = json.loads(done.stdout)
    assert [Path(p["path"]) for p in predictions] == images
    from headstart.model import load_model as load_classifier

    in_process = load_classifier(model).predict_files(images, top_k=1)[0]
    assert [p["top"][0]["label"] for p in predictions] == [p.label for p in in_process]
    correct = sum(p["top"][0]["label"] == Path(p["path"]).parent.name for p in predictions)
    assert correct >= 0.6 * len(images)  # Fashion-MNIST at 30 images per class: about 75 %
