"""Exporting a run whose backbone is a SavedModel: the backbone's ONNX composed with the head's.

:func:`headstart.export.export_model` builds every export from a torch module:
it writes the module's ONNX graph and checks the exported file against the
module.  A SavedModel has no torch form, so :class:`TFHubClassifier` stands in:

- as the reference, its extractor runs the module in TensorFlow (fp32), then the
  same folded head and novelty score as every export (graph.ClassifierModule);
- as the graph, :meth:`TFHubClassifier.write_onnx` converts the module with
  tf2onnx (uint8 images in, normalisation inside) and composes it with the head
  exported from torch (features in, probabilities and ``ood_score`` out) into
  one ONNX file with ``onnx.compose``.

Everything after that (int8 calibration, OpenVINO IR, the TensorRT engine, the
sidecar and the self-check) is the export's own code, unchanged.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .graph import ClassifierModule
from .tfhub_runtime import OPSET, OUTPUT_NAME, LoadedModule, convert_to_onnx, load_module

if TYPE_CHECKING:  # pragma: no cover
    from .backbones import Backbone
    from .calibrate import NoveltyScore
    from .sidecar import ExportDescription

FEATURES = "features"


class TensorFlowExtractor(torch.nn.Module):
    """uint8 ``[N, S, S, 3]`` torch tensor -> the module's vectors computed by TensorFlow (not traceable)."""

    def __init__(self, module: LoadedModule) -> None:
        super().__init__()
        self.loaded = module

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.loaded.function(np.ascontiguousarray(images.cpu().numpy(), dtype=np.uint8))[OUTPUT_NAME]
        return torch.from_numpy(np.array(out, dtype=np.float32))  # a writable copy, as torch wants


class _Head(torch.nn.Module):
    """The classifier after its extractor: features in, probabilities (and the novelty score) out."""

    def __init__(self, classifier: ClassifierModule) -> None:
        super().__init__()
        self.head = classifier.head
        self.novelty = classifier.novelty

    def forward(self, features: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        proba = self.head(features)
        return proba if self.novelty is None else (proba, self.novelty(features, proba))


class TFHubClassifier(ClassifierModule):
    """The whole classifier for a SavedModel backbone: TensorFlow as the reference, composed ONNX as the graph."""

    def __init__(
        self, backbone: Backbone, layers: list[tuple[np.ndarray, np.ndarray]], novelty: NoveltyScore | None
    ) -> None:
        super().__init__(TensorFlowExtractor(load_module(backbone)), layers, novelty)
        self.backbone = backbone
        self.num_features = int(layers[0][0].shape[0])

    def write_onnx(self, path: Path, description: ExportDescription) -> Path:
        """uint8 images -> probabilities (, ood_score): tf2onnx's backbone and torch's head in one file."""
        import onnx
        from onnx import compose

        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="headstart-tfhub-", dir=path.parent) as tmp:
            backbone_path = convert_to_onnx(self.extractor.loaded, Path(tmp) / "backbone.onnx")
            head_path = Path(tmp) / "head.onnx"
            names = description.output_names
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the tracer's warnings are about torch internals
                torch.onnx.export(
                    _Head(self).eval(),
                    (torch.zeros(2, self.num_features),),
                    str(head_path),
                    input_names=[FEATURES],
                    output_names=names,
                    dynamic_axes={FEATURES: {0: "batch"}, **{n: {0: "batch"} for n in names}},
                    opset_version=OPSET,
                    dynamo=False,
                )
            backbone, head = onnx.load(str(backbone_path)), onnx.load(str(head_path))
        ir_version = max(backbone.ir_version, head.ir_version)
        backbone.ir_version = head.ir_version = ir_version
        # Node and tensor names of the two graphs must not collide; the graph's own inputs and outputs keep theirs.
        backbone = compose.add_prefix(backbone, "backbone/", rename_inputs=False, rename_outputs=False)
        head = compose.add_prefix(head, "head/", rename_inputs=False, rename_outputs=False)
        merged = compose.merge_models(
            backbone,
            head,
            io_map=[(OUTPUT_NAME, FEATURES)],
            producer_name="headstart",
            producer_version=description.provenance.get("headstart_version", ""),
        )
        # One entry per domain: merge_models lists the default domain twice when one graph spells it "" and
        # the other leaves it unset, and ONNX Runtime's quantiser then finds no ai.onnx opset at all.
        versions: dict[str, int] = {}
        for opset in merged.opset_import:
            versions[opset.domain] = max(versions.get(opset.domain, 0), opset.version)
        del merged.opset_import[:]
        merged.opset_import.extend(onnx.helper.make_opsetid(domain, version) for domain, version in versions.items())
        del merged.metadata_props[:]
        for key, value in description.metadata().items():
            entry = merged.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.checker.check_model(merged)
        fd, tmp_file = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".onnx", dir=path.parent)
        os.close(fd)
        try:
            onnx.save(merged, tmp_file)
            os.replace(tmp_file, path)
        finally:
            if os.path.exists(tmp_file):
                os.unlink(tmp_file)
        return path


def create_tfhub_classifier(
    backbone: Backbone, layers: list[tuple[np.ndarray, np.ndarray]], novelty: NoveltyScore | None = None
) -> TFHubClassifier:
    return TFHubClassifier(backbone, layers, novelty).eval().requires_grad_(False)


__all__ = ["TFHubClassifier", "TensorFlowExtractor", "create_tfhub_classifier"]
