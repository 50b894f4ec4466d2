"""Backbones as ONNX files (uint8 NHWC in), written atomically and built once per backbone fingerprint."""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..backbones import Backbone

if TYPE_CHECKING:  # pragma: no cover
    import torch

log = logging.getLogger("headstart")


def export_onnx(
    module: "torch.nn.Module",
    path: Path,
    input_size: int,
    *,
    output_name: str | Sequence[str] = "output",
    metadata: dict[str, str] | None = None,
) -> Path:
    """Export a uint8-NHWC module to ONNX with a dynamic batch, atomically (one output name per module output)."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros((2, input_size, input_size, 3), dtype=torch.uint8)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".onnx", dir=path.parent)
    os.close(fd)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's warnings are about torch internals, not the user's model
            names = [output_name] if isinstance(output_name, str) else list(output_name)
            torch.onnx.export(
                module,
                (example,),
                tmp,
                input_names=["images"],
                output_names=names,
                dynamic_axes={"images": {0: "batch"}, **{n: {0: "batch"} for n in names}},
                opset_version=17,
                dynamo=False,
            )
        if metadata:
            import onnx

            model = onnx.load(tmp)
            for key, value in metadata.items():
                entry = model.metadata_props.add()
                entry.key, entry.value = key, value
            onnx.save(model, tmp)
        _apply_umask(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _apply_umask(path: str | Path) -> None:
    """mkstemp creates files 0600; a model is an ordinary file, so give it the user's usual mode."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def ensure_backbone_onnx(backbone: Backbone, model_dir: Path, *, imagenet: bool = False) -> Path:
    """The backbone as ONNX (uint8 images in, bottlenecks or ImageNet probabilities out), built once."""
    kind = "imagenet" if imagenet else "features"
    path = Path(model_dir) / f"{backbone.name}-{backbone.fingerprint}-{kind}.onnx"
    if path.is_file():
        return path
    from ..networks import create_feature_extractor, create_imagenet_classifier

    log.info("converting %s to ONNX (once per backbone) -> %s", backbone.name, path)
    module = create_imagenet_classifier(backbone) if imagenet else create_feature_extractor(backbone)
    return export_onnx(module, path, backbone.preprocessing.input_size)
