"""Backbone registry, offline weights and the weight mapping, on real photos."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from headstart.backbones import REGISTRY, list_backbones, resolve_backbone
from headstart.data import load_image
from headstart.errors import ModelError, OfflineError, UsageError


@pytest.mark.parametrize("index", [0, 1, 2])
@pytest.mark.slow
def test_packaged_weights_map_one_to_one_onto_timm(index: int) -> None:
    import timm
    import torch

    from headstart.networks import load_state_dict, map_state_dict

    backbone = resolve_backbone(f"efficientnet_lite{index}")
    source = load_state_dict(backbone.weights_path)
    target = timm.create_model(f"tf_efficientnet_lite{index}", pretrained=False).state_dict()
    assert len(source) == len(target)
    for (src_name, src), (dst_name, dst) in zip(source.items(), target.items()):
        assert tuple(src.shape) == tuple(dst.shape), (src_name, dst_name)
    mapped = map_state_dict(source, target, "package")
    assert list(mapped) == list(target)
    assert all(torch.equal(mapped[k], v) for k, v in zip(target, source.values()))


def _imagenet_top1(photos: dict[str, np.ndarray], name: str, tmp_path: Path) -> dict[str, str]:
    import torch
    from PIL import Image

    from headstart.networks import create_imagenet_classifier, imagenet_labels

    backbone = resolve_backbone(name)
    model = create_imagenet_classifier(backbone)
    labels = imagenet_labels()
    result = {}
    for key in ("chelsea", "coffee"):
        path = tmp_path / f"{key}.png"
        Image.fromarray(photos[key]).save(path)
        image = load_image(path, backbone.preprocessing)
        with torch.inference_mode():
            proba = model(torch.from_numpy(image[None])).numpy()[0]
        result[key] = labels[int(proba.argmax())]
    return result


@pytest.mark.parametrize("name", ["efficientnet_lite0", pytest.param("efficientnet_lite2", marks=pytest.mark.slow)])
def test_packaged_weights_recognise_a_cat_and_coffee(photos, tmp_path: Path, name: str) -> None:
    top1 = _imagenet_top1(photos, name, tmp_path)
    assert "cat" in top1["chelsea"]
    assert top1["coffee"] == "espresso"


def test_fingerprint_changes_with_weights_and_preprocessing(tmp_path: Path) -> None:
    base = resolve_backbone("efficientnet_lite0")
    assert resolve_backbone("efficientnet_lite0").fingerprint == base.fingerprint
    assert resolve_backbone("efficientnet_lite0", crop_pct=1.0).fingerprint != base.fingerprint
    copy = tmp_path / "lite0.pth"
    data = bytearray(base.weights_path.read_bytes())
    copy.write_bytes(bytes(data))
    assert resolve_backbone("efficientnet_lite0", copy).fingerprint == base.fingerprint  # same bytes
    data[-1] ^= 1
    copy.write_bytes(bytes(data))
    assert resolve_backbone("efficientnet_lite0", copy).weights_fingerprint != base.weights_fingerprint


def test_local_weights_for_another_timm_model(tmp_path: Path) -> None:
    """--weights loads a local safetensors checkpoint for any timm architecture (no download)."""
    import timm
    import torch
    from safetensors.torch import save_file

    from headstart.networks import create_feature_extractor

    model = timm.create_model("mobilenetv3_small_050", pretrained=False)
    path = tmp_path / "small.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    backbone = resolve_backbone("mobilenetv3_small_050", path)
    assert backbone.weights_path == path.resolve()
    extractor = create_feature_extractor(backbone)
    size = backbone.preprocessing.input_size
    out = extractor(torch.zeros((2, size, size, 3), dtype=torch.uint8))
    # the bottleneck is timm's pre-logits vector: MobileNetV3's head conv widens it past num_features
    assert out.shape == (2, getattr(model, "head_hidden_size", None) or model.num_features)


def test_weights_for_the_wrong_architecture_are_refused(tmp_path: Path) -> None:
    import timm
    from safetensors.torch import save_file

    from headstart.networks import create_model

    model = timm.create_model("mobilenetv3_small_050", pretrained=False)
    path = tmp_path / "small.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    with pytest.raises(ModelError, match="architecture"):
        create_model(resolve_backbone("efficientnet_lite0", path))


def test_unknown_backbone_lists_valid_names() -> None:
    with pytest.raises(UsageError) as err:
        resolve_backbone("no_such_net_v9")
    assert "efficientnet_lite0" in err.value.hint


def test_missing_weights_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not found"):
        resolve_backbone("efficientnet_lite0", tmp_path / "absent.pth")


def test_hub_download_offline_fails_clearly(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No network here: timm's hub path must end in a one-line OfflineError suggesting --weights."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(OfflineError) as err:
        resolve_backbone("mobilenet_v3_large")
    assert "--weights" in err.value.hint
    assert "\n" not in str(err.value)


def test_list_backbones_reports_offline_weights() -> None:
    rows = {r.name: r for r in list_backbones()}
    assert set(REGISTRY) == set(rows)
    for index, size in ((0, 224), (1, 240), (2, 260)):
        row = rows[f"efficientnet_lite{index}"]
        assert row.offline and row.input_size == size and row.bottleneck_size == 1280 and row.top1
    assert not rows["inception_v3"].offline


def test_resolving_packaged_weights_does_not_import_torch() -> None:
    code = ("import sys; from headstart.backbones import resolve_backbone; "
            "b = resolve_backbone('efficientnet_lite0'); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_backbones_json_cli() -> None:
    from headstart.cli import main

    out = subprocess.run([sys.executable, "-m", "headstart", "backbones", "--format", "json"], capture_output=True,
                         text=True, check=True)
    rows = json.loads(out.stdout)
    assert {"name", "params_m", "input_size", "bottleneck_size", "top1", "offline"} <= set(rows[0])
    assert main is not None


def test_hub_weights_come_from_the_local_hugging_face_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A timm model whose weights are in the Hugging Face cache resolves and builds offline."""
    import huggingface_hub.constants
    import timm
    import torch
    from safetensors.torch import save_file

    from headstart.networks import create_feature_extractor

    hub_id = timm.get_pretrained_cfg("mobilenetv3_small_050").hf_hub_id
    repo = tmp_path / ("models--" + hub_id.replace("/", "--"))
    revision = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    model = timm.create_model("mobilenetv3_small_050", pretrained=False)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(snapshot / "model.safetensors"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    backbone = resolve_backbone("mobilenetv3_small_050")
    assert backbone.weights_path.name == "model.safetensors"
    out = create_feature_extractor(backbone)(torch.zeros((1, 224, 224, 3), dtype=torch.uint8))
    assert out.shape[0] == 1


def test_registry_preprocessing_matches_timm_pretrained_configs() -> None:
    import timm

    for spec in REGISTRY.values():
        cfg = timm.get_pretrained_cfg(spec.timm_name)
        prep = spec.preprocessing
        assert (prep.input_size, prep.crop_pct, prep.interpolation) == (cfg.input_size[-1], cfg.crop_pct,
                                                                        cfg.interpolation), spec.name
        assert np.allclose(prep.mean, cfg.mean) and np.allclose(prep.std, cfg.std), spec.name
