"""Tests for headstart.bundle: round trip, atomic writes, and every way to tamper."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tamper import mutate, read_manifest, replace_file, write_manifest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import load_file, save_file

from headstart import bundle
from headstart.bundle import (HEAD_NAME, LABELS_NAME, MANIFEST_NAME, METRICS_NAME, Bundle,
                              default_run_dir, load_bundle, save_bundle, versions)
from headstart.errors import DataError, ModelError, UsageError

LABELS = ("daisy", "roses", "tulips")
N_FEATURES = 8


def _params(labels: tuple[str, ...] = LABELS, seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    n = len(labels)
    return {
        "labels": labels,
        "backbone": {"name": "efficientnet_lite0", "timm_name": "tf_efficientnet_lite0",
                     "weights_fingerprint": "ab" * 32, "num_features": N_FEATURES,
                     "runtime": "onnxruntime", "precision": "fp32"},
        "preprocessing": {"input_size": 224, "crop_pct": 0.875, "interpolation": "bicubic",
                          "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
        "head_tensors": {"W_out": rng.standard_normal((N_FEATURES, n)).astype(np.float32),
                         "b_out": rng.standard_normal(n).astype(np.float32)},
        "head_config": {"type": "logistic", "n_classes": n, "n_features": N_FEATURES},
        "hyperparameters": {"learning_rate": 0.01, "train_batch_size": 100, "seed": seed},
    }


@pytest.fixture
def run(tmp_path: Path) -> Path:
    return save_bundle(tmp_path / "run", **_params(), metrics={"accuracy": 0.9, "n": 30})





def _replace_tensors(run: Path, tensors: dict[str, np.ndarray]) -> None:
    tmp = run.parent / "t.safetensors"
    save_file(tensors, str(tmp))
    replace_file(run, HEAD_NAME, tmp.read_bytes())


def _hidden(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith(".")]


# --------------------------------------------------------------------------- round trip


def test_round_trip(tmp_path: Path) -> None:
    params = _params()
    out = save_bundle(tmp_path / "run", **params, metrics={"accuracy": np.float64(0.5), "f1": float("nan")},
                      extra_files={"report.html": "<h1>ok</h1>", "skipped.csv": b"path,reason\n"},
                      output_labels=tmp_path / "elsewhere" / "output_labels.txt")
    assert out == tmp_path / "run"
    b = load_bundle(out)
    assert isinstance(b, Bundle) and b.path == out
    assert b.labels == LABELS
    assert b.backbone.to_dict() == params["backbone"] and b.preprocessing.to_dict() == params["preprocessing"]
    assert b.backbone.name == "efficientnet_lite0" and b.preprocessing.input_size > 0  # typed, not dicts
    assert b.head_config == params["head_config"] and b.hyperparameters == params["hyperparameters"]
    assert b.head_tensors.keys() == params["head_tensors"].keys()
    for name, t in params["head_tensors"].items():
        assert b.head_tensors[name].dtype == np.float32
        np.testing.assert_array_equal(b.head_tensors[name], t)
    assert b.metrics == {"accuracy": 0.5, "f1": None}
    assert {"headstart", "python", "numpy"} <= b.versions.keys()
    assert b.created[:2] == "20" and "T" in b.created
    assert (out / LABELS_NAME).read_text() == "daisy\nroses\ntulips\n"
    assert (tmp_path / "elsewhere" / "output_labels.txt").read_text() == "daisy\nroses\ntulips\n"
    assert (out / "report.html").read_text() == "<h1>ok</h1>"
    assert (out / "skipped.csv").read_bytes() == b"path,reason\n"
    # the head is a plain safetensors file any tool can read
    assert set(load_file(str(out / HEAD_NAME))) == {"W_out", "b_out"}
    assert _hidden(tmp_path) == [] and _hidden(tmp_path / "elsewhere") == []


def test_metrics_are_optional(tmp_path: Path) -> None:
    b = load_bundle(save_bundle(tmp_path / "run", **_params()))
    assert b.metrics is None and not (tmp_path / "run" / METRICS_NAME).exists()


def test_float64_tensors_are_stored_as_float32(tmp_path: Path) -> None:
    params = _params()
    params["head_tensors"] = {k: v.astype(np.float64) for k, v in params["head_tensors"].items()}
    b = load_bundle(save_bundle(tmp_path / "run", **params))
    assert all(t.dtype == np.float32 for t in b.head_tensors.values())


def test_versions_does_not_import_torch() -> None:
    code = ("import sys, headstart.bundle as b; v = b.versions(); "
            "assert 'torch' not in sys.modules and 'openvino' not in sys.modules, v; print(sorted(v))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], timeout=60)
    assert done.returncode == 0, done.stderr
    assert {"headstart", "python", "numpy"} <= set(versions())


def test_default_run_dir_is_unique(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from datetime import datetime

    class Frozen(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> "Frozen":
            return cls(2024, 5, 6, 7, 8, 9)

    monkeypatch.setattr(bundle, "datetime", Frozen)
    first = default_run_dir(tmp_path / "runs")
    assert first == tmp_path / "runs" / "20240506-070809" and not first.exists()
    first.mkdir(parents=True)
    second = default_run_dir(tmp_path / "runs")
    assert second.name == "20240506-070809-2"
    second.mkdir()
    assert default_run_dir(tmp_path / "runs").name == "20240506-070809-3"


# --------------------------------------------------------------------------- atomic writes


def test_overwrites_a_previous_bundle(run: Path) -> None:
    save_bundle(run, **_params(("cat", "dog")))
    assert load_bundle(run).labels == ("cat", "dog")
    assert not (run / METRICS_NAME).exists()  # nothing of the old bundle survives
    assert _hidden(run.parent) == []


def test_accepts_an_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert load_bundle(save_bundle(tmp_path / "empty", **_params())).labels == LABELS


def test_refuses_to_clobber_a_user_folder(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(UsageError, match="not a headstart run") as err:
        save_bundle(folder, **_params())
    assert "--output_dir" in err.value.hint
    assert [p.name for p in folder.iterdir()] == ["holiday.jpg"]
    assert _hidden(tmp_path) == []


def test_refuses_a_file_as_run_dir(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="not a folder"):
        save_bundle(tmp_path / "file", **_params())


def test_failure_while_writing_keeps_previous_bundle(run: Path) -> None:
    before = (run / MANIFEST_NAME).read_bytes()
    with pytest.raises(UnicodeEncodeError):
        save_bundle(run, **_params(("cat", "dog")), extra_files={"report.html": "bad \ud800 surrogate"})
    assert (run / MANIFEST_NAME).read_bytes() == before
    assert load_bundle(run).labels == LABELS
    assert _hidden(run.parent) == []


@pytest.mark.parametrize("existing", [True, False])
def test_failing_rename_keeps_previous_bundle(run: Path, monkeypatch: pytest.MonkeyPatch,
                                              existing: bool) -> None:
    target = run if existing else run.parent / "fresh"
    real_replace = os.replace

    def flaky_replace(src: Any, dst: Any) -> None:
        if ".partial-" in str(src):  # the new bundle's rename into place
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(bundle.os, "replace", flaky_replace)
    with pytest.raises(ModelError, match="Cannot write the model") as err:
        save_bundle(target, **_params(("cat", "dog")))
    monkeypatch.undo()
    assert "unchanged" in err.value.hint
    assert load_bundle(run).labels == LABELS
    assert existing or not target.exists()
    assert _hidden(run.parent) == []


@pytest.mark.parametrize("change, error", [
    ({"labels": ("a", "a")}, DataError),
    ({"labels": ("a", "")}, DataError),
    ({"labels": ("a", "b\nc")}, DataError),
    ({"head_config": {"n_classes": 2, "n_features": N_FEATURES}}, ModelError),
    ({"head_tensors": {"W": np.full((N_FEATURES, 3), np.nan, np.float32)}}, ModelError),
    ({"head_tensors": {}}, ModelError),
])
def test_save_refuses_what_load_would_refuse(tmp_path: Path, change: dict, error: type) -> None:
    with pytest.raises(error):
        save_bundle(tmp_path / "run", **{**_params(), **change})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["../escape.txt", "/abs.txt", "labels.txt", "a/../../b", ""])
def test_extra_file_names_stay_inside(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError):
        save_bundle(tmp_path / "run", **_params(), extra_files={name: "x"})
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- tampering


def _load_error(run: Path) -> ModelError:
    with pytest.raises(ModelError) as err:
        load_bundle(run)
    assert err.value.hint and "\n" not in str(err.value)
    return err.value


def test_missing_folder(tmp_path: Path) -> None:
    assert "does not exist" in str(_load_error(tmp_path / "nope"))


def test_folder_without_manifest(tmp_path: Path) -> None:
    assert "not a headstart run folder" in str(_load_error(tmp_path))


def test_manifest_not_json(run: Path) -> None:
    (run / MANIFEST_NAME).write_text("{not json")
    assert str(_load_error(run)).startswith(f"{MANIFEST_NAME}: not valid JSON")


def test_edited_tensor_bytes(run: Path) -> None:
    data = bytearray((run / HEAD_NAME).read_bytes())
    data[-1] ^= 0xFF
    (run / HEAD_NAME).write_bytes(bytes(data))
    assert str(_load_error(run)) == f"{HEAD_NAME}: checksum mismatch: the file was modified after training"


def test_edited_labels_file(run: Path) -> None:
    (run / LABELS_NAME).write_text("daisy\nroses\ntulip\n")
    assert str(_load_error(run)).startswith(f"{LABELS_NAME}: checksum mismatch")


@pytest.mark.parametrize("name", [HEAD_NAME, LABELS_NAME])
def test_missing_file(run: Path, name: str) -> None:
    (run / name).unlink()
    assert str(_load_error(run)).startswith(f"{name}: missing")


def test_manifest_labels_disagree_with_labels_file(run: Path) -> None:
    manifest = read_manifest(run)
    manifest["labels"] = ["tulips", "roses", "daisy"]
    write_manifest(run, manifest)
    assert "disagree" in str(_load_error(run))


@pytest.mark.parametrize("shape, problem", [((N_FEATURES, 4), "n_classes=3"), ((5, 3), "n_features=8")])
def test_wrong_tensor_shape(run: Path, shape: tuple[int, int], problem: str) -> None:
    _replace_tensors(run, {"W_out": np.zeros(shape, np.float32)})
    err = str(_load_error(run))
    assert err.startswith(HEAD_NAME) and problem in err


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_tensor(run: Path, value: float) -> None:
    w = np.zeros((N_FEATURES, 3), np.float32)
    w[2, 1] = value
    _replace_tensors(run, {"W_out": w})
    assert "NaN or infinite" in str(_load_error(run))


def test_wrong_tensor_dtype(run: Path) -> None:
    _replace_tensors(run, {"W_out": np.zeros((N_FEATURES, 3), np.float64)})
    assert "expected float32" in str(_load_error(run))


def test_not_a_safetensors_file(run: Path) -> None:
    replace_file(run, HEAD_NAME, b"\x80\x04K\x01.")  # a pickle, of all things
    assert "not a valid safetensors file" in str(_load_error(run))


def test_bad_metrics(run: Path) -> None:
    (run / METRICS_NAME).write_text("[1, 2")
    assert str(_load_error(run)).startswith(METRICS_NAME)


_DELETE = object()


@pytest.mark.parametrize("keys, value, problem", [
    (("format",), "something-else", "'format'"),
    (("format_version",), "1", "'format_version' must be an integer"),
    (("format_version",), True, "'format_version' must be an integer"),
    (("format_version",), 99, "format_version 99 is not supported"),
    (("labels",), "daisy", "'labels' must be a JSON array"),
    (("labels",), [1, 2, 3], "is not a non-empty string"),
    (("labels",), ["daisy", "daisy", "roses"], "appears twice"),
    (("labels",), [], "non-empty list"),
    (("backbone",), _DELETE, "required key 'backbone' is missing"),
    (("backbone", "name"), 7, "backbone.name"),
    (("preprocessing",), [1], "'preprocessing' must be a JSON dict"),
    (("head_config", "n_classes"), "3", "head_config.n_classes must be a positive integer"),
    (("head_config", "n_classes"), 4, "head_config.n_classes is 4 but there are 3 labels"),
    (("head_config", "n_features"), -1, "head_config.n_features"),
    (("created",), 5, "'created' must be a JSON str"),
    (("files", HEAD_NAME), _DELETE, "files.head.safetensors.sha256"),
    (("files", LABELS_NAME, "sha256"), "abc", "files.labels.txt.sha256"),
])
def test_manifest_with_wrong_types(run: Path, keys: tuple[str, ...], value: Any, problem: str) -> None:
    manifest = read_manifest(run)
    parent = manifest
    for key in keys[:-1]:
        parent = parent[key]
    if value is _DELETE:
        del parent[keys[-1]]
    else:
        parent[keys[-1]] = value
    write_manifest(run, manifest)
    err = str(_load_error(run))
    assert err.startswith(MANIFEST_NAME) and problem in err, err


# --------------------------------------------------------------------------- fuzzing


@pytest.fixture(scope="module")
def fuzz_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = save_bundle(tmp_path_factory.mktemp("fuzz") / "run", **_params())
    (run.parent / "valid.json").write_bytes((run / MANIFEST_NAME).read_bytes())
    return run


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: (st.lists(children, max_size=4)
                      | st.dictionaries(st.text(max_size=8), children, max_size=4)),
    max_leaves=12,
)
FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(data=st.binary(max_size=300))
def test_random_bytes_manifest_gives_model_error(fuzz_run: Path, data: bytes) -> None:
    (fuzz_run / MANIFEST_NAME).write_bytes(data)
    with pytest.raises(ModelError):
        load_bundle(fuzz_run)


@FUZZ
@given(value=json_values)
def test_random_json_manifest_gives_model_error(fuzz_run: Path, value: Any) -> None:
    write_manifest(fuzz_run, value)
    with pytest.raises(ModelError):
        load_bundle(fuzz_run)


@FUZZ
@given(data=st.data())
def test_mutated_manifest_loads_or_gives_model_error(fuzz_run: Path, data: st.DataObject) -> None:
    """Random values in every place of a valid manifest: load or ModelError, nothing else."""
    manifest = json.loads((fuzz_run.parent / "valid.json").read_text())
    places = [(manifest, k) for k in manifest] + [(manifest[k], sub) for k in
                                                  ("backbone", "head_config", "files") for sub in manifest[k]]
    mutate(data, places, json_values)
    write_manifest(fuzz_run, manifest)
    try:
        load_bundle(fuzz_run)
    except ModelError:
        pass
