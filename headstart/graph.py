"""The whole classifier as one torch module, for export: pixels -> probabilities (and a novelty score).

Built from plain layers (Linear, ReLU, Softmax, a matrix product) so that every
exporter (ONNX, OpenVINO, TensorRT, LiteRT) can convert it; the normalisation is
inside the backbone's InputAdapter.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from .networks import create_feature_extractor

if TYPE_CHECKING:  # pragma: no cover
    from .backbones import Backbone
    from .calibrate import NoveltyScore


class NoveltyModule(torch.nn.Module):
    """:meth:`headstart.calibrate.NoveltyScore.score` in torch ops."""

    def __init__(self, novelty: NoveltyScore) -> None:
        super().__init__()
        self.register_buffer("means", torch.from_numpy(np.ascontiguousarray(novelty.class_means, np.float32)))
        self.msp = (novelty.msp_mean, novelty.msp_std)
        self.cos = (novelty.cos_mean, novelty.cos_std)

    def forward(self, features: torch.Tensor, proba: torch.Tensor) -> torch.Tensor:
        msp = 1.0 - proba.max(dim=1).values
        unit = features / features.norm(dim=1, keepdim=True).clamp_min(1e-12)
        cos = 1.0 - (unit @ self.means.T).max(dim=1).values
        return (msp - self.msp[0]) / self.msp[1] + (cos - self.cos[0]) / self.cos[1]


class ClassifierModule(torch.nn.Module):
    """uint8 ``[N, H, W, 3]`` -> ``probabilities [N, classes]`` (, ``ood_score [N]``)."""

    def __init__(
        self, extractor: torch.nn.Module, layers: list[tuple[np.ndarray, np.ndarray]], novelty: NoveltyScore | None
    ) -> None:
        super().__init__()
        self.extractor = extractor
        modules: list[torch.nn.Module] = []
        for i, (w, b) in enumerate(layers):
            if i:
                modules.append(torch.nn.ReLU())
            linear = torch.nn.Linear(w.shape[0], w.shape[1])
            with torch.no_grad():
                linear.weight.copy_(torch.from_numpy(np.ascontiguousarray(w.T)))
                linear.bias.copy_(torch.from_numpy(np.ascontiguousarray(b)))
            modules.append(linear)
        modules.append(torch.nn.Softmax(dim=-1))
        self.head = torch.nn.Sequential(*modules)
        self.novelty = NoveltyModule(novelty) if novelty is not None else None

    def forward(self, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        features = self.extractor(images)
        proba = self.head(features)
        if self.novelty is None:
            return proba
        return proba, self.novelty(features, proba)


def create_classifier_module(
    backbone: Backbone, layers: list[tuple[np.ndarray, np.ndarray]], novelty: NoveltyScore | None = None
) -> torch.nn.Module:
    if backbone.name.startswith("tfhub:"):  # a SavedModel has no torch form: headstart.tfhub_export
        from .tfhub_export import create_tfhub_classifier

        return create_tfhub_classifier(backbone, layers, novelty)
    module = ClassifierModule(create_feature_extractor(backbone), layers, novelty)
    return module.eval().requires_grad_(False)
