"""Export a real trained run: one graph from pixels to probabilities, checked against PyTorch."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest

from headstart.bench import format_bench_rows
from headstart.errors import DataError, ModelError, UsageError
from headstart.export import export_model, fold_head
from headstart.export_check import compare


def test_fold_head_matches_the_numpy_head():
    from headstart.head import SoftmaxHead

    rng = np.random.default_rng(0)
    X = rng.normal(3.0, 2.0, (200, 16)).astype(np.float32)
    y = (X[:, 0] > 3).astype(int) + (X[:, 1] > 3).astype(int)
    for hidden in (0, 8):
        head = SoftmaxHead(hidden_units=hidden, standardize=True, how_many_training_steps=50).fit(X, y)
        tensors, _ = head.to_state()
        z = X.astype(np.float64)
        layers = fold_head(tensors)
        for i, (w, b) in enumerate(layers):
            z = z @ w + b
            if i < len(layers) - 1:
                z = np.maximum(z, 0)
        np.testing.assert_allclose(z, head.logits(X), rtol=1e-4, atol=1e-4)
        assert len(layers) == (2 if hidden else 1)


def test_compare_counts_points():
    ref = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    out = np.array([[0.8, 0.2], [0.6, 0.4], [0.6, 0.4], [0.3, 0.7]])
    numbers = compare(out, ref, np.array([0, 1, 0, 1]))
    assert numbers["agreement"] == 0.75
    assert numbers["reference_accuracy"] == 1.0 and numbers["accuracy"] == 0.75
    assert numbers["accuracy_drop"] == 25.0
    assert numbers["max_abs_diff"] == pytest.approx(0.4)


def test_onnx_export_agrees_with_pytorch(exported_onnx, trained_run):
    result = exported_onnx
    check = result.check
    assert result.path == trained_run.run_dir / "export" / "model-fp32.onnx"
    assert check.source == "run test split" and check.n == trained_run.test.n
    assert check.agreement >= 0.995
    assert check.accuracy == pytest.approx(check.reference_accuracy, abs=1e-9)
    assert check.accuracy == pytest.approx(trained_run.test.accuracy, abs=0.04)  # bottlenecks vs one graph
    assert check.max_abs_diff < 1e-3
    assert check.passed and check.runtime == "onnxruntime-fp32"


def test_sidecar_and_metadata_carry_labels_preprocessing_and_provenance(exported_onnx, trained_run):
    import onnx

    side = json.loads(exported_onnx.sidecar.read_text())
    assert exported_onnx.sidecar == exported_onnx.path.with_suffix(".json")
    assert side["labels"] == list(trained_run.labels)
    assert side["preprocessing"]["normalization"] == "in_graph"
    assert side["preprocessing"]["input_size"] == 224 and side["preprocessing"]["crop_pct"] == 1.0
    assert side["preprocessing"]["interpolation"] == "bicubic"
    prov = side["provenance"]
    assert prov["backbone"] == "efficientnet_lite0" and prov["weights_fingerprint"]
    import hashlib

    assert prov["head_sha256"] == hashlib.sha256((trained_run.run_dir / "head.safetensors").read_bytes()).hexdigest()
    assert side["check"]["agreement"] >= 0.995 and side["check"]["n"] == trained_run.test.n
    assert side["model_sha256"] == hashlib.sha256(exported_onnx.path.read_bytes()).hexdigest()

    model = onnx.load(str(exported_onnx.path))
    meta = {p.key: p.value for p in model.metadata_props}
    stored = json.loads(meta["headstart"])
    assert stored["labels"] == list(trained_run.labels)
    assert stored["preprocessing"] == side["preprocessing"]
    # uint8 NHWC images with a dynamic batch in, probabilities (and the novelty score) out
    (inp,), (out, ood) = model.graph.input, model.graph.output
    assert inp.name == "images" and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [224, 224, 3]
    assert out.name == "probabilities" and ood.name == "ood_score"
    assert side["unknown"]["output"] == "ood_score" and side["unknown"]["threshold"] is not None


def test_exported_onnx_outputs_probabilities(exported_onnx, photos):
    import onnxruntime as ort

    from headstart.data import Preprocessing, load_image
    from headstart.deployed import read_model_info

    info = read_model_info(exported_onnx.path)
    session = ort.InferenceSession(str(exported_onnx.path), providers=["CPUExecutionProvider"])
    import io

    from PIL import Image

    images = []
    for array in photos.values():
        buf = io.BytesIO()
        Image.fromarray(array).save(buf, "PNG")
        images.append(load_image(buf.getvalue(), info.preprocessing))
    proba = session.run(None, {"images": np.stack(images)})[0]
    assert proba.shape == (3, len(info.labels))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    assert isinstance(info.preprocessing, Preprocessing)


def test_openvino_ir_export(exported_ir, trained_run):
    assert exported_ir.path.suffix == ".xml" and exported_ir.path.with_suffix(".bin").is_file()
    assert exported_ir.check.agreement >= 0.995 and exported_ir.check.runtime == "openvino-fp32"
    side = json.loads(exported_ir.sidecar.read_text())
    assert side["model_format"] == "openvino" and side["labels"] == list(trained_run.labels)
    assert {p.name for p in exported_ir.files} == {"fashion.xml", "fashion.bin", "fashion.json"}


def test_bad_requests_are_usage_errors(trained_run, tmp_path):
    with pytest.raises(UsageError, match="fp16"):
        export_model(trained_run.run_dir, precision="fp16", output=tmp_path / "m.onnx")
    with pytest.raises(UsageError, match="format"):
        export_model(trained_run.run_dir, model_format="coreml")
    with pytest.raises(UsageError, match=r"\.xml"):
        export_model(trained_run.run_dir, model_format="openvino", output=tmp_path / "m.onnx")
    with pytest.raises(UsageError):
        export_model(trained_run.run_dir, max_accuracy_drop=-1)
    assert not list(tmp_path.iterdir())


def _moved_run(trained_run, tmp_path):
    """A copy of the run whose recorded image folder no longer exists."""
    run = tmp_path / "run"
    shutil.copytree(trained_run.run_dir, run, ignore=shutil.ignore_patterns("export"))
    manifest = json.loads((run / "headstart.json").read_text())
    manifest["data"]["image_dir"] = str(tmp_path / "gone")
    (run / "headstart.json").write_text(json.dumps(manifest))
    return run


@pytest.mark.slow
def test_images_gone_says_so_and_image_dir_takes_over(trained_run, fashion_holdout_dir, tmp_path):
    run = _moved_run(trained_run, tmp_path)
    with pytest.raises(DataError, match="gone") as info:
        export_model(run, progress=False)
    assert "--image_dir" in info.value.hint
    assert not (run / "export").exists() or not list((run / "export").iterdir())
    result = export_model(run, image_dir=fashion_holdout_dir, progress=False)
    assert result.check.source == "--image_dir" and result.check.n == 100
    assert result.check.agreement >= 0.995


@pytest.mark.slow
def test_forced_export_without_images_records_that_it_was_not_checked(trained_run, tmp_path):
    run = _moved_run(trained_run, tmp_path)
    result = export_model(run, force=True, output=tmp_path / "unchecked.onnx", progress=False)
    assert result.check.n == 0 and not result.check.passed and "gone" in result.check.note
    assert json.loads(result.sidecar.read_text())["check"]["n"] == 0


@pytest.mark.slow
def test_int8_gate_fails_with_numbers_and_writes_nothing(trained_run, tmp_path):
    """Calibrated on one image, int8 clips most activations: the gate must catch what that costs."""
    out = tmp_path / "out" / "m-int8.onnx"
    try:
        result = export_model(trained_run.run_dir, precision="int8", output=out, calibration_images=1,
                              max_accuracy_drop=0.0, progress=False)
    except ModelError as exc:
        assert "points of test accuracy" in str(exc) and "PyTorch" in str(exc) and "--force" in exc.hint
        assert not list(out.parent.iterdir())  # no model, no sidecar, no staging folder
    else:  # the gate passed: then it really lost nothing
        assert result.check.accuracy_drop <= 0.0


@pytest.mark.slow
def test_int8_export_calibrated_on_the_run(trained_run, tmp_path):
    out = tmp_path / "m-int8.onnx"
    result = export_model(trained_run.run_dir, precision="int8", output=out, force=True, progress=False)
    side = json.loads(result.sidecar.read_text())
    assert side["precision"] == "int8" and side["calibration"]["images"] > 100
    assert side["calibration"]["source"] == "run training split"
    assert result.check.n == trained_run.test.n and result.check.agreement > 0.8
    assert out.stat().st_size < 0.5 * 13_000_000  # int8 weights: about a quarter of the fp32 file
    _assert_ordinary_modes([*result.files, result.sidecar])


@pytest.mark.slow
def test_cli_export_json(trained_run, tmp_path, capsys):
    from headstart.cli import main

    out = tmp_path / "cli.onnx"
    assert main(["export", "--model", str(trained_run.run_dir), "--output", str(out), "--json", "-q"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["path"] == str(out) and printed["check"]["agreement"] >= 0.995
    assert out.is_file() and out.with_suffix(".json").is_file()


def test_format_bench_rows():
    rows = [{"runtime": "torch", "precision": "fp32", "model": "PyTorch eager", "n": 30, "latency_p50_ms": 40.0,
             "latency_p90_ms": 45.5, "throughput_ips": 50.2, "accuracy": 0.9, "agreement": 1.0,
             "latency_speedup": 1.0},
            {"runtime": "openvino", "precision": "bf16", "model": "m.onnx", "n": 30, "error": "RuntimeError: x"}]
    text = format_bench_rows(rows)
    assert "b1 p50 ms" in text and "PyTorch eager" in text and "90.0" in text and "1.00x" in text
    assert "failed: openvino bf16: RuntimeError: x" in text


@pytest.mark.slow
def test_bench_exported_model(exported_onnx, trained_run):
    from headstart.bench import bench_model

    rows = bench_model(exported_onnx.path, runtimes=["onnxruntime", "openvino"], progress=False)
    assert {(r["runtime"], r["precision"]) for r in rows} >= {("onnxruntime", "fp32"), ("openvino", "fp32")}
    for row in rows:
        assert "error" not in row, row
        assert row["latency_p50_ms"] > 0 and row["latency_p90_ms"] >= row["latency_p50_ms"]
        assert row["throughput_ips"] > 0 and row["n"] == trained_run.test.n
        assert row["accuracy"] == pytest.approx(exported_onnx.check.accuracy, abs=0.05)


@pytest.mark.slow
def test_bench_run_dir_against_eager_pytorch(trained_run):
    from headstart.bench import bench_model

    rows = bench_model(trained_run.run_dir, runtimes=["torch", "onnxruntime"], progress=False)
    keys = [(r["runtime"], r["precision"]) for r in rows]
    assert keys[0] == ("torch", "fp32")
    assert ("onnxruntime", "fp32") in keys and ("onnxruntime", "int8") in keys
    by = dict(zip(keys, rows))
    assert by[("torch", "fp32")]["agreement"] == 1.0 and by[("torch", "fp32")]["latency_speedup"] == 1.0
    assert by[("onnxruntime", "fp32")]["agreement"] >= 0.995
    assert all("latency_speedup" in r for r in rows)


# ---------------------------------------------------------------- what a new user tripped over


def test_the_accuracy_change_is_said_in_words():
    from headstart.cli.deploy import describe_drop

    assert describe_drop(0.0) == "no accuracy lost"
    assert describe_drop(-0.0) == "no accuracy lost" and describe_drop(0.04) == "no accuracy lost"
    assert describe_drop(0.3448) == "lost 0.3 points"
    assert describe_drop(1.0) == "lost 1.0 point"
    assert describe_drop(-2.5) == "gained 2.5 points"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _assert_ordinary_modes(files) -> None:
    """Every file an export writes gets the user's usual mode (mkstemp's 0600 must not leak through)."""
    expected = 0o666 & ~_umask()
    for path in files:
        assert stat.S_IMODE(Path(path).stat().st_mode) == expected, (path, oct(Path(path).stat().st_mode))


def test_exported_files_follow_the_umask(exported_onnx, exported_ir):
    _assert_ordinary_modes([*exported_onnx.files, exported_onnx.sidecar])
    _assert_ordinary_modes([*exported_ir.files, exported_ir.sidecar])
    assert {p.suffix for p in exported_ir.files} == {".xml", ".bin", ".json"}


@pytest.mark.slow
def test_export_on_a_terminal_shows_progress_and_says_no_accuracy_lost(trained_run, shared_cache_dir, tmp_path):
    """Run as a user at a terminal does: stderr is a pty, so the progress bars must draw."""
    import fcntl
    import pty
    import struct
    import subprocess
    import sys
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a real size: tqdm needs one
    out = tmp_path / "tty.onnx"
    env = {k: v for k, v in os.environ.items() if k != "HEADSTART_DEBUG"}
    proc = subprocess.Popen([sys.executable, "-m", "headstart", "export", "--model", str(trained_run.run_dir),
                             "--output", str(out), "--bottleneck_dir", str(shared_cache_dir)],
                            stdout=subprocess.PIPE, stderr=follower, text=True, env=env)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    stdout, _ = proc.communicate(timeout=600)
    os.close(leader)
    terminal = b"".join(chunks).decode("utf-8", "replace")
    assert proc.returncode == 0, terminal[-3000:]
    for bar in ("Test images:", "PyTorch fp32:", "onnxruntime-fp32 export:"):
        assert bar in terminal and "img/s" in terminal, (bar, terminal[-2000:])
    assert "no accuracy lost" in stdout and "drop +0.0" not in stdout
    _assert_ordinary_modes([out, out.with_suffix(".json")])
