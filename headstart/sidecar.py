"""The description that travels with an exported model: the ``<model>.json`` sidecar and the ONNX metadata.

A graph cannot hold the labels, the decoding geometry or the "unknown"
threshold, so :class:`ExportDescription` does; this module is the one place
that writes it (``headstart export``) and reads it (``headstart label`` on an
export, the HTTP service), so the two can never drift apart.  No torch here.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .data import Preprocessing
from .errors import ModelError

SIDECAR_FORMAT = "headstart-export"
SIDECAR_VERSION = 1
METADATA_KEY = "headstart"  # ONNX metadata_props key holding the description's JSON (without the check)
INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"
OOD_OUTPUT_NAME = "ood_score"
_PREP_FIELDS = ("input_size", "crop_pct", "interpolation", "mean", "std")


@dataclass(frozen=True)
class ExportDescription:
    """What an exported model is, where it came from and how it checked out."""

    path: Path  # the model file it describes
    source: str  # "sidecar" | "onnx metadata" | "export" (not yet written)
    model_format: str  # onnx | openvino | tensorrt | tflite | saved_model
    precision: str  # fp32 | fp16 | int8
    labels: tuple[str, ...]
    preprocessing: Preprocessing
    provenance: dict[str, Any]
    unknown: dict[str, Any] | None = None  # {"output", "threshold", "accept", "method"}: the graph's ood_score
    check: dict[str, Any] | None = None  # the self-check against PyTorch
    calibration: dict[str, Any] | None = None  # int8 calibration images
    tensorrt: dict[str, Any] | None = None
    tensorflow: dict[str, Any] | None = None  # TFLite / SavedModel: converter, signatures, metadata
    created: str | None = None
    model_sha256: str | None = None

    @property
    def input_size(self) -> int:
        return self.preprocessing.input_size

    def with_(self, **changes: Any) -> ExportDescription:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        prep = self.preprocessing
        out: dict[str, Any] = {
            "format": SIDECAR_FORMAT,
            "format_version": SIDECAR_VERSION,
            "model_format": self.model_format,
            "precision": self.precision,
            "input": {
                "name": INPUT_NAME,
                "dtype": "uint8",
                "layout": "NHWC",
                "color": "RGB",
                "shape": ["batch", prep.input_size, prep.input_size, 3],
            },
            "output": {
                "name": OUTPUT_NAME,
                "dtype": "float32",
                "shape": ["batch", len(self.labels)],
                "meaning": "calibrated softmax probabilities, columns follow labels",
            },
            "labels": list(self.labels),
            "preprocessing": {
                **prep.to_dict(),
                "resize_size": prep.resize_size,
                "steps": [
                    "decode to RGB (EXIF orientation applied, alpha over white)",
                    f"resize the shorter side to {prep.resize_size} px ({prep.interpolation})",
                    f"centre-crop {prep.input_size}x{prep.input_size}",
                    "uint8 NHWC into the graph",
                ],
                "normalization": "in_graph",  # mean/std are applied inside the model, not by the caller
            },
            "provenance": dict(self.provenance),
        }
        for key in ("unknown", "calibration", "tensorrt", "tensorflow", "check", "created", "model_sha256"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out

    def metadata(self) -> dict[str, str]:
        """ONNX ``metadata_props``: the description without what is only known after the check."""
        data = {k: v for k, v in self.to_dict().items() if k not in ("check", "created", "model_sha256")}
        return {
            METADATA_KEY: json.dumps(data, sort_keys=True),
            "labels": json.dumps(data["labels"]),
            "preprocessing": json.dumps(data["preprocessing"], sort_keys=True),
        }

    @property
    def output_names(self) -> list[str]:
        return [OUTPUT_NAME, OOD_OUTPUT_NAME] if self.unknown else [OUTPUT_NAME]

    @classmethod
    def from_dict(cls, path: Path, data: Any, source: str) -> ExportDescription:
        where = f"{path} ({source})"
        if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
            raise ModelError(
                f"{where} is not a headstart export description", hint="export the model again with 'headstart export'"
            )
        if int(data.get("format_version", 0)) > SIDECAR_VERSION:
            raise ModelError(f"{where} was written by a newer headstart", hint="upgrade headstart")
        labels = data.get("labels")
        if not isinstance(labels, list) or len(labels) < 2 or not all(isinstance(x, str) for x in labels):
            raise ModelError(f"{where}: labels are missing or malformed", hint="export the model again")
        prep: Any = data.get("preprocessing")
        try:
            preprocessing = Preprocessing.from_dict({k: prep[k] for k in _PREP_FIELDS})
        except (TypeError, KeyError, ValueError) as exc:
            raise ModelError(
                f"{where}: preprocessing is missing or malformed ({exc})", hint="export the model again"
            ) from None
        sections = {}
        for key in ("unknown", "check", "calibration", "tensorrt", "tensorflow", "provenance"):
            value = data.get(key)
            if value is not None and not isinstance(value, dict):
                raise ModelError(f"{where}: {key} must be an object", hint="export the model again")
            sections[key] = value
        unknown = sections["unknown"]
        threshold = unknown.get("threshold") if unknown else None
        if threshold is not None and (not isinstance(threshold, (int, float)) or isinstance(threshold, bool)):
            raise ModelError(f"{where}: unknown.threshold is malformed", hint="export the model again")
        return cls(
            path=path,
            source=source,
            model_format=str(data.get("model_format", "onnx")),
            precision=str(data.get("precision", "fp32")),
            labels=tuple(labels),
            preprocessing=preprocessing,
            provenance=dict(sections["provenance"] or {}),
            unknown=unknown,
            check=sections["check"],
            calibration=sections["calibration"],
            tensorrt=sections["tensorrt"],
            tensorflow=sections["tensorflow"],
            created=data.get("created"),
            model_sha256=data.get("model_sha256"),
        )


def sidecar_path(model: str | Path) -> Path:
    return Path(model).with_suffix(".json")


def write_sidecar(path: Path, description: ExportDescription) -> Path:
    """Write the description as JSON at ``path`` (normally :func:`sidecar_path` of the model)."""
    path.write_text(json.dumps(description.to_dict(), indent=2) + "\n", encoding="utf-8")
    return path


def _onnx_metadata(path: Path) -> dict[str, str]:
    """The ONNX file's metadata_props, read with the onnx package or, failing that, ONNX Runtime."""
    if importlib.util.find_spec("onnx") is not None:
        import onnx

        model = onnx.load(str(path), load_external_data=False)
        return {p.key: p.value for p in model.metadata_props}
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(session.get_modelmeta().custom_metadata_map)


def read_description(path: str | Path) -> ExportDescription:
    """An exported model's description: its sidecar first, then (for .onnx) the metadata inside it."""
    model = Path(path).expanduser()
    if not (model.is_file() or (model / "saved_model.pb").is_file()):  # a SavedModel is a directory
        raise ModelError(
            f"exported model {model} does not exist",
            hint="pass the file written by 'headstart export' (.onnx, .xml, .engine, .tflite)",
        )
    side = sidecar_path(model)
    if side.is_file():
        try:
            data = json.loads(side.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise ModelError(f"cannot read {side}: {exc}", hint="export the model again") from None
        return ExportDescription.from_dict(model, data, "sidecar")
    if model.suffix.lower() == ".onnx":
        meta = _onnx_metadata(model)
        if METADATA_KEY in meta:
            try:
                data = json.loads(meta[METADATA_KEY])
            except ValueError:
                raise ModelError(
                    f"{model}: its headstart metadata is not valid JSON", hint="export the model again"
                ) from None
            return ExportDescription.from_dict(model, data, "onnx metadata")
        raise ModelError(
            f"{model} has no headstart metadata and no {side.name} next to it",
            hint="export it with 'headstart export', or put its .json sidecar next to it",
        )
    if model.suffix.lower() == ".tflite":  # the description is also zipped into the file (tflite_metadata)
        from .tflite_metadata import read_embedded_description

        embedded = read_embedded_description(model)
        if embedded is not None:
            return ExportDescription.from_dict(model, embedded, "tflite metadata")
    raise ModelError(
        f"{model} has no {side.name} next to it (it holds the labels and preprocessing)",
        hint="copy the .json file written by 'headstart export' next to the model",
    )


__all__ = [
    "INPUT_NAME",
    "METADATA_KEY",
    "OOD_OUTPUT_NAME",
    "OUTPUT_NAME",
    "SIDECAR_FORMAT",
    "SIDECAR_VERSION",
    "ExportDescription",
    "read_description",
    "sidecar_path",
    "write_sidecar",
]
