"""The TensorRT builder's surroundings: profiles, cache keys, the trtexec line, the error without TensorRT.

TensorRT itself is not installed where these tests run; the tests that need it
are skipped when it is missing, the rest pin down everything it is fed.
"""

from __future__ import annotations

import importlib.util
import shlex

import pytest

from headstart.errors import ModelError, UsageError
from headstart.runtimes.tensorrt import (BatchProfile, TensorRTUnavailable, engine_cache_key, engine_cache_path,
                                require_tensorrt, tensorrt_version, trtexec_command)

HAVE_TRT = importlib.util.find_spec("tensorrt") is not None
no_trt = pytest.mark.skipif(HAVE_TRT, reason="TensorRT is installed here")


def test_profile_shapes_are_nhwc_with_a_dynamic_batch():
    assert BatchProfile().shapes(224) == ((1, 224, 224, 3), (32, 224, 224, 3), (64, 224, 224, 3))
    assert BatchProfile(2, 8, 16).shapes(260)[1] == (8, 260, 260, 3)


@pytest.mark.parametrize("bad", [(0, 1, 1), (4, 2, 8), (1, 32, 16)])
def test_profile_rejects_unordered_batches(bad):
    with pytest.raises(UsageError):
        BatchProfile(*bad)


def test_trtexec_command_fp16():
    line = trtexec_command("runs/a b/model-fp32.onnx", "model-fp16.engine", input_size=224, precision="fp16")
    assert shlex.split(line) == [
        "trtexec", "--onnx=runs/a b/model-fp32.onnx", "--saveEngine=model-fp16.engine", "--fp16",
        "--minShapes=images:1x224x224x3", "--optShapes=images:32x224x224x3", "--maxShapes=images:64x224x224x3"]


def test_trtexec_command_precisions_and_profile():
    fp32 = shlex.split(trtexec_command("m.onnx", "m.engine", input_size=240, precision="fp32"))
    assert "--fp16" not in fp32 and "--int8" not in fp32
    int8 = shlex.split(trtexec_command("m.onnx", "m.engine", input_size=240, precision="int8",
                                       profile=BatchProfile(1, 8, 8)))
    assert "--int8" in int8 and "--fp16" in int8
    assert "--maxShapes=images:8x240x240x3" in int8
    with pytest.raises(UsageError):
        trtexec_command("m.onnx", "m.engine", input_size=224, precision="bf16")


def test_engine_cache_key_changes_with_everything_that_changes_the_engine():
    base = dict(trt_version="10.3.0", gpu_name="NVIDIA H100 80GB HBM3", precision="fp16")
    key = engine_cache_key("a" * 64, **base)
    assert key == engine_cache_key("a" * 64, **base)  # stable
    variants = [
        engine_cache_key("b" * 64, **base),  # retrained model
        engine_cache_key("a" * 64, **{**base, "trt_version": "10.4.0"}),
        engine_cache_key("a" * 64, **{**base, "gpu_name": "NVIDIA L4"}),
        engine_cache_key("a" * 64, **{**base, "precision": "fp32"}),
        engine_cache_key("a" * 64, **base, profile=BatchProfile(1, 16, 64)),
    ]
    assert len({key, *variants}) == 1 + len(variants)
    # The calibration set matters for int8 only.
    assert engine_cache_key("a" * 64, **base, calibration="x") == key
    int8 = {**base, "precision": "int8"}
    assert engine_cache_key("a" * 64, **int8, calibration="x") != engine_cache_key("a" * 64, **int8, calibration="y")
    with pytest.raises(UsageError):
        engine_cache_key("a" * 64, **{**base, "precision": "int4"})


def test_engine_cache_path(tmp_path):
    path = engine_cache_path(tmp_path, "abc", "fp16")
    assert path == tmp_path / "tensorrt" / "abc-fp16.engine"


@no_trt
def test_version_is_none_without_tensorrt():
    assert tensorrt_version() is None


@no_trt
def test_require_tensorrt_explains_and_prints_trtexec():
    with pytest.raises(TensorRTUnavailable) as info:
        require_tensorrt("m.onnx", "m-fp16.engine", input_size=224, precision="fp16")
    err = info.value
    assert isinstance(err, ModelError)
    assert "TensorRT is not installed" in str(err) and "\n" not in str(err)
    assert "trtexec --onnx=m.onnx --saveEngine=m-fp16.engine --fp16 --minShapes=images:1x224x224x3" in err.hint


@no_trt
def test_export_without_tensorrt_writes_the_onnx_and_the_command(trained_run, exported_onnx):
    from headstart.export import export_model

    with pytest.raises(TensorRTUnavailable) as info:
        export_model(trained_run.run_dir, model_format="tensorrt", precision="fp16", progress=False)
    folder = trained_run.run_dir / "export" / "tensorrt"  # engines and their ONNX keep to a folder of their own
    onnx_path = folder / "model-fp32.onnx"
    assert onnx_path.is_file()
    assert f"--onnx={onnx_path}" in info.value.hint
    assert "--saveEngine=" + str(folder / "model-fp16.engine") in info.value.hint
    assert not (folder / "model-fp16.engine").exists()


@no_trt
def test_cli_export_tensorrt_prints_the_command(trained_run, exported_onnx, capsys):
    from headstart.cli import main

    code = main(["export", "--model", str(trained_run.run_dir), "--format", "tensorrt", "--precision", "int8", "-q"])
    err = capsys.readouterr().err
    assert code == 1
    assert "error: TensorRT is not installed" in err
    assert "trtexec --onnx=" in err and "--int8" in err
