"""Untrusted files: loading weights or a model never runs code, and a tampered model is refused.

The payloads here are live: each test first shows that an ordinary
``pickle.load`` of the same file would run it, then that headstart refuses
the file with one line naming the problem and the payload never ran.
Bundle-level checks on synthetic bundles (and manifest fuzzing) are in
test_bundle.py; this file goes through the commands users run, on a real
trained model.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tamper import mutate, read_manifest, replace_file, write_manifest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from headstart.bundle import HEAD_NAME, LABELS_NAME, MANIFEST_NAME, load_bundle
from headstart.data import Preprocessing
from headstart.errors import ModelError
from headstart.run_model import load_head

from clitools import assert_one_line_error


class Payload:
    """Unpickling this writes ``marker``: what a malicious checkpoint would do, harmlessly."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return exec, (f"open({str(self.marker)!r}, 'w').write('payload ran')",)


def _prove_live(path: Path, marker: Path, load: Any) -> None:
    """The file really runs its payload when unpickled the unsafe way (then clean up)."""
    load(path)
    assert marker.exists(), "the payload is not live: the test would prove nothing"
    marker.unlink()


@pytest.fixture(params=["torch.save", "raw pickle"])
def evil_weights(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, Path]:
    """A ``.pth`` whose unpickling writes a marker file: (weights path, marker path)."""
    torch = pytest.importorskip("torch")
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pth"
    state = {"conv_stem.weight": torch.zeros(1), "bias": Payload(marker)}
    if request.param == "torch.save":
        torch.save(state, path)
        _prove_live(path, marker, lambda p: torch.load(p, weights_only=False))
    else:
        path.write_bytes(pickle.dumps(state))
        _prove_live(path, marker, lambda p: pickle.loads(p.read_bytes()))
    return path, marker


# --------------------------------------------------------------------------- third-party weights


def test_retrain_with_malicious_weights_is_refused(evil_weights: tuple[Path, Path], fashion_dir: Path,
                                                   tmp_path: Path, cli) -> None:
    images = tmp_path / "photos"
    for name in ("Bag", "Coat"):
        shutil.copytree(fashion_dir / name, images / name)
    path, marker = evil_weights
    code, out, err = cli("retrain", "--image_dir", images, "--weights", path, "--bottleneck_dir", tmp_path / "cache",
                         "--output_dir", tmp_path / "run")
    assert code == 1
    assert_one_line_error(err, f"cannot read weights file {path}")
    assert not marker.exists()
    assert not (tmp_path / "run").exists()


def test_label_imagenet_with_malicious_weights_is_refused(evil_weights: tuple[Path, Path], fashion_dir: Path,
                                                          tmp_path: Path, cli) -> None:
    path, marker = evil_weights
    code, out, err = cli("label", "--imagenet", "--weights", path, "--bottleneck_dir", tmp_path / "cache",
                         next(fashion_dir.glob("Bag/*.png")))
    assert code == 1 and out == ""
    assert_one_line_error(err, "cannot read weights file")
    assert not marker.exists()


def test_safetensors_weights_hold_no_code(tmp_path: Path) -> None:
    """A ``.safetensors`` file is parsed, never unpickled: a pickle renamed to it is just invalid."""
    from headstart.networks import load_state_dict

    marker = tmp_path / "marker"
    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps({"w": Payload(marker)}))
    with pytest.raises(ModelError, match="cannot read weights file"):
        load_state_dict(path)
    assert not marker.exists()


# --------------------------------------------------------------------------- tampered run directories





def _edit(run: Path, path: tuple[str, ...], value: Any) -> None:
    manifest = read_manifest(run)
    parent = manifest
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    write_manifest(run, manifest)


def _narrow_head(run: Path) -> None:
    from safetensors.numpy import load, save

    tensors = load((run / HEAD_NAME).read_bytes())
    tensors["final.weight"] = np.ascontiguousarray(tensors["final.weight"][:, :-1])
    replace_file(run, HEAD_NAME, save(tensors))


def _pickle_as_head(run: Path) -> None:
    replace_file(run, HEAD_NAME, pickle.dumps({"final.weight": Payload(run.parent / "marker")}))


def _flip_last_byte(run: Path) -> None:
    data = bytearray((run / HEAD_NAME).read_bytes())
    data[-1] ^= 1
    (run / HEAD_NAME).write_bytes(bytes(data))


TAMPERING = {
    "manifest not JSON": (lambda run: (run / MANIFEST_NAME).write_text('{"format": "headstart-bundle",'),
                          f"{MANIFEST_NAME}: not valid JSON"),
    "manifest missing": (lambda run: (run / MANIFEST_NAME).unlink(), f"no {MANIFEST_NAME}"),
    "head missing": (lambda run: (run / HEAD_NAME).unlink(), f"{HEAD_NAME}: missing"),
    "labels missing": (lambda run: (run / LABELS_NAME).unlink(), f"{LABELS_NAME}: missing"),
    "head edited": (_flip_last_byte, f"{HEAD_NAME}: checksum mismatch"),
    "labels edited": (lambda run: (run / LABELS_NAME).write_text((run / LABELS_NAME).read_text().replace("Bag", "Bog")),
                      f"{LABELS_NAME}: checksum mismatch"),
    "manifest labels reordered": (lambda run: _edit(run, ("labels",), read_manifest(run)["labels"][::-1]),
                                  f"{LABELS_NAME}: its labels disagree with {MANIFEST_NAME}"),
    "tensor shape": (_narrow_head, "tensor 'final.weight' has shape (1280, 9), expected (1280, 10)"),
    "pickle as tensors": (_pickle_as_head, f"{HEAD_NAME}: not a valid safetensors file"),
    "preprocessing type": (lambda run: _edit(run, ("preprocessing", "crop_pct"), "1.0"),
                           f"{MANIFEST_NAME}: preprocessing: Preprocessing.crop_pct must be a number"),
    "preprocessing value": (lambda run: _edit(run, ("preprocessing", "input_size"), 256),
                            "preprocessing in the manifest differs from the backbone's"),
    "head config type": (lambda run: _edit(run, ("head_config", "params"), None),
                         f"{MANIFEST_NAME}: head_config.params has the wrong type"),
    "head config size": (lambda run: _edit(run, ("head_config", "n_features"), 1024),
                         "no tensor has a dimension of n_features=1024"),
}


@pytest.mark.parametrize("case", sorted(TAMPERING))
def test_label_refuses_a_tampered_model(case: str, trained_run, fashion_holdout_dir: Path, tmp_path: Path,
                                        shared_cache_dir: Path, cli) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained_run.run_dir, run)
    tamper, problem = TAMPERING[case]
    tamper(run)
    code, out, err = cli("label", "--model", run, "--bottleneck_dir", shared_cache_dir,
                         next(fashion_holdout_dir.glob("Bag/*.png")))
    assert code == 1
    assert out == ""  # not one prediction from a model that cannot be trusted
    assert_one_line_error(err, problem)
    assert not (tmp_path / "marker").exists()


# --------------------------------------------------------------------------- property tests


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
PREP_FIELDS = ("input_size", "crop_pct", "interpolation", "mean", "std")
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                        HealthCheck.function_scoped_fixture])
VALID_PREP = {"input_size": 224, "crop_pct": 1.0, "interpolation": "bicubic", "mean": [0.5] * 3, "std": [0.5] * 3}


@FUZZ
@given(st.dictionaries(st.sampled_from(PREP_FIELDS + ("size", "")), json_values, max_size=6)
       | st.fixed_dictionaries({k: st.one_of(st.just(v), json_values) for k, v in VALID_PREP.items()}))
def test_preprocessing_from_any_json_is_valid_or_a_value_error(d: dict) -> None:
    try:
        prep = Preprocessing.from_dict(d)
    except ValueError:
        return
    assert Preprocessing.from_dict(prep.to_dict()) == prep
    assert prep.input_size >= 1 and 0 < prep.crop_pct <= 1 and min(prep.std) > 0


@pytest.fixture(scope="module")
def fuzz_run(trained_run, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("fuzz") / "run"
    shutil.copytree(trained_run.run_dir, run)
    (run.parent / "valid.json").write_bytes((run / MANIFEST_NAME).read_bytes())
    return run


@FUZZ
@given(data=st.data())
def test_random_head_config_or_preprocessing_loads_or_is_a_model_error(fuzz_run: Path, data: st.DataObject) -> None:
    """What ``label`` does with a manifest: load_bundle, then the head; only ModelError may escape."""
    manifest = json.loads((fuzz_run.parent / "valid.json").read_text())
    places = [(manifest[k], sub) for k in ("head_config", "preprocessing") for sub in manifest[k]]
    places += [(manifest["head_config"]["params"], sub) for sub in manifest["head_config"]["params"]]
    mutate(data, places, json_values)
    write_manifest(fuzz_run, manifest)
    try:
        bundle = load_bundle(fuzz_run)
        head = load_head(bundle)
    except ModelError as err:
        assert "\n" not in str(err) and err.hint
        return
    assert bundle.preprocessing.input_size > 0
    proba = head.predict_proba(np.zeros((2, bundle.head_config["n_features"]), dtype=np.float32))
    assert proba.shape == (2, len(bundle.labels)) and np.isfinite(proba).all()
