"""TFLite model metadata: what MediaPipe Tasks and the TFLite Task Library read to use a classifier.

A Model Maker image classifier carries, inside its ``.tflite``, a ``TFLITE_METADATA``
flatbuffer (schema ``metadata_schema.fbs``, identifier ``M001``) describing the input
image (RGB, normalisation, value range) and the outputs, and a zip archive appended
to the file holding the associated files: the labels, one per line, attached to the
probabilities as ``TENSOR_AXIS_LABELS``.  This module writes the same, plus the
headstart export description (``headstart.json``) as a second associated file so a
``.tflite`` copied without its sidecar still knows its preprocessing.

The tables are built with the ``flatbuffers`` package (a dependency of ai-edge-litert)
field by field: the generated schema module ships only with packages that cannot be
installed next to headstart's own (tflite-support pins protobuf 3, mediapipe pulls a
second OpenCV).  Field numbers follow metadata_schema.fbs 1.5.0; every field used here
exists since 1.0.0.  Reading needs only ``flatbuffers`` and ``zipfile``.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ModelError

METADATA_NAME = "TFLITE_METADATA"
METADATA_IDENTIFIER = b"M001"
MODEL_IDENTIFIER = b"TFL3"
MIN_PARSER_VERSION = "1.0.0"
LABELS_FILE = "labels.txt"
DESCRIPTION_FILE = "headstart.json"

# metadata_schema.fbs enums
_TENSOR_AXIS_LABELS, _DESCRIPTIONS = 2, 1
_RGB = 1
_FEATURE_PROPERTIES, _IMAGE_PROPERTIES = 1, 2  # ContentProperties union
_NORMALIZATION_OPTIONS = 1  # ProcessUnitOptions union


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's metadata as read back."""

    name: str | None
    description: str | None
    content: str | None  # "image" | "feature"
    color_space: str | None = None  # "RGB" ...
    mean: tuple[float, ...] | None = None  # NormalizationOptions
    std: tuple[float, ...] | None = None
    min: tuple[float, ...] | None = None  # Stats
    max: tuple[float, ...] | None = None
    files: tuple[tuple[str, int], ...] = ()  # (name, AssociatedFileType)


@dataclass(frozen=True)
class ModelMetadataInfo:
    """A .tflite's ``TFLITE_METADATA`` and its associated files, as read back."""

    name: str | None
    description: str | None
    version: str | None
    author: str | None
    min_parser_version: str | None
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    subgraph_files: tuple[tuple[str, int], ...]
    files: dict[str, bytes] = field(default_factory=dict)  # the zip appended to the model

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.files.get(LABELS_FILE, b"").decode("utf-8").splitlines())


@dataclass(frozen=True)
class ClassifierMetadata:
    """What goes into the metadata of an exported classifier."""

    name: str
    description: str
    version: str
    labels: Sequence[str]
    mean: Sequence[float]  # per channel, in pixel units (0..255): what the graph subtracts
    std: Sequence[float]
    input_description: str
    output_descriptions: Sequence[tuple[str, str]]  # (name, description), probabilities first
    export_description: dict[str, Any]
    author: str = "headstart"


# ---------------------------------------------------------------- writing


def _builder_helpers(b: Any) -> Any:
    """Small wrappers over flatbuffers.Builder: a vector of offsets, of floats, a table from slots."""

    class H:
        @staticmethod
        def offsets(items: Sequence[int]) -> int:
            b.StartVector(4, len(items), 4)
            for item in reversed(items):
                b.PrependUOffsetTRelative(item)
            return b.EndVector()

        @staticmethod
        def floats(values: Sequence[float]) -> int:
            b.StartVector(4, len(values), 4)
            for value in reversed(values):
                b.PrependFloat32(float(value))
            return b.EndVector()

        @staticmethod
        def table(slots: int, offsets: dict[int, int] | None = None, bytes_: dict[int, int] | None = None) -> int:
            """A table of ``slots`` fields: offsets (strings, vectors, tables) and byte-sized enums by slot."""
            b.StartObject(slots)
            for slot, value in (offsets or {}).items():
                b.PrependUOffsetTRelativeSlot(slot, value, 0)
            for slot, value in (bytes_ or {}).items():
                b.PrependUint8Slot(slot, value, 0)
            return b.EndObject()

    return H


def build_metadata(meta: ClassifierMetadata) -> bytes:
    """The ``TFLITE_METADATA`` flatbuffer of an image classifier (uint8 RGB in; probabilities, ood_score out)."""
    import flatbuffers

    b = flatbuffers.Builder(1024)
    h = _builder_helpers(b)
    s = b.CreateString

    def associated_file(name: str, description: str, kind: int) -> int:
        # AssociatedFile: name 0, description 1, type 2
        return h.table(5, {0: s(name), 1: s(description)}, {2: kind})

    def stats(lo: Sequence[float], hi: Sequence[float]) -> int:
        return h.table(2, {0: h.floats(hi), 1: h.floats(lo)})  # Stats: max 0, min 1

    # input: TensorMetadata name 0, description 1, content 3, process_units 4, stats 5
    image_props = h.table(2, bytes_={0: _RGB})  # ImageProperties: color_space 0
    image_content = h.table(3, {1: image_props}, {0: _IMAGE_PROPERTIES})  # Content: type 0, value 1
    norm = h.table(2, {0: h.floats(meta.mean), 1: h.floats(meta.std)})  # NormalizationOptions: mean 0, std 1
    unit = h.table(2, {1: norm}, {0: _NORMALIZATION_OPTIONS})  # ProcessUnit: options_type 0, options 1
    image = h.table(
        7,
        {0: s("image"), 1: s(meta.input_description), 3: image_content, 4: h.offsets([unit]), 5: stats([0.0], [255.0])},
    )
    outputs = []
    for i, (name, description) in enumerate(meta.output_descriptions):
        feature = h.table(3, {1: h.table(0)}, {0: _FEATURE_PROPERTIES})
        slots = {0: s(name), 1: s(description), 3: feature}
        if i == 0:  # the probabilities: the labels along their last axis, values in [0, 1]
            slots[5] = stats([0.0], [1.0])
            slots[6] = h.offsets(
                [associated_file(LABELS_FILE, "Labels for the probabilities, one per line", _TENSOR_AXIS_LABELS)]
            )
        outputs.append(h.table(7, slots))
    described = associated_file(
        DESCRIPTION_FILE, "headstart export description: labels, preprocessing, provenance (JSON)", _DESCRIPTIONS
    )
    # SubGraphMetadata: name 0, input_tensor_metadata 2, output_tensor_metadata 3, associated_files 4
    subgraph = h.table(
        10, {0: s("image_classifier"), 2: h.offsets([image]), 3: h.offsets(outputs), 4: h.offsets([described])}
    )
    # ModelMetadata: name 0, description 1, version 2, subgraph_metadata 3, author 4, min_parser_version 7
    root = h.table(
        8,
        {
            0: s(meta.name),
            1: s(meta.description),
            2: s(meta.version),
            3: h.offsets([subgraph]),
            4: s(meta.author),
            7: s(MIN_PARSER_VERSION),
        },
    )
    b.Finish(root, file_identifier=METADATA_IDENTIFIER)
    return bytes(b.Output())


class _AlignedBuffer:
    """A model buffer packed 16-byte aligned (the schema's ``force_align: 16``, which the Python
    object API ignores), so weights stay aligned for the interpreter after re-packing."""

    def __init__(self, buffer: Any) -> None:
        self.buffer = buffer

    def Pack(self, builder: Any) -> int:
        from ai_edge_litert import schema_py_generated as schema

        data = self.buffer.data
        vector = None
        if data is not None:
            raw = bytes(memoryview(data)) if not hasattr(data, "tobytes") else data.tobytes()
            builder.StartVector(1, len(raw), 16)
            builder.head = builder.Head() - len(raw)
            builder.Bytes[builder.Head() : builder.Head() + len(raw)] = raw
            builder.vectorNumElems = len(raw)
            vector = builder.EndVector()
        schema.BufferStart(builder)
        if vector is not None:
            schema.BufferAddData(builder, vector)
        schema.BufferAddOffset(builder, self.buffer.offset)
        schema.BufferAddSize(builder, self.buffer.size)
        return schema.BufferEnd(builder)


def populate(model: bytes, meta: ClassifierMetadata, output_names: Sequence[str]) -> bytes:
    """``model`` with its metadata: outputs put in ``output_names`` order (the converter sorts its
    signature's outputs by name, MediaPipe reads the first as the scores), tensors named, the
    metadata flatbuffer stored in a buffer, the associated files zipped onto the end."""
    import flatbuffers
    import numpy as np
    from ai_edge_litert import schema_py_generated as schema

    tree = schema.ModelT.InitFromObj(schema.Model.GetRootAs(model, 0))
    graph = tree.subgraphs[0]
    if tree.signatureDefs:
        signature = tree.signatureDefs[0]
        by_name = {m.name.decode() if isinstance(m.name, bytes) else m.name: m.tensorIndex for m in signature.outputs}
        if set(output_names) != set(by_name):
            raise ModelError(
                f"the converted model's outputs are {sorted(by_name)}, expected {list(output_names)}",
                hint="report this: the TFLite converter changed its output naming",
            )
        graph.outputs = [by_name[n] for n in output_names]
        for name, index in by_name.items():
            graph.tensors[index].name = name
        for m in signature.inputs:
            graph.tensors[m.tensorIndex].name = m.name
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(build_metadata(meta), dtype=np.uint8)
    tree.metadata = [m for m in (tree.metadata or []) if m.name not in (METADATA_NAME, METADATA_NAME.encode())]
    tree.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = METADATA_NAME, len(tree.buffers) - 1
    tree.metadata.append(entry)
    tree.buffers = [_AlignedBuffer(b) for b in tree.buffers]
    builder = flatbuffers.Builder(len(model) + 65536)
    builder.Finish(tree.Pack(builder), file_identifier=MODEL_IDENTIFIER)
    out = io.BytesIO(bytes(builder.Output()))
    files = {
        LABELS_FILE: "".join(f"{label}\n" for label in meta.labels).encode("utf-8"),
        DESCRIPTION_FILE: json.dumps(meta.export_description, indent=1, sort_keys=True).encode("utf-8"),
    }
    with zipfile.ZipFile(out, "a", compression=zipfile.ZIP_STORED) as archive:  # appended after the flatbuffer
        for name, data in files.items():
            archive.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)  # same bytes every time
    return out.getvalue()


# ---------------------------------------------------------------- reading


def _tables() -> Any:
    """Readers for flatbuffer tables by slot number (what generated code does, for the fields used here)."""
    from flatbuffers import number_types as n
    from flatbuffers.table import Table

    def off(t: Table, slot: int) -> int:
        return int(t.Offset(4 + 2 * slot))

    class R:
        @staticmethod
        def string(t: Table, slot: int) -> str | None:
            o = off(t, slot)
            return t.String(o + t.Pos).decode("utf-8") if o else None

        @staticmethod
        def table(t: Table, slot: int) -> Table | None:
            o = off(t, slot)
            return Table(t.Bytes, t.Indirect(o + t.Pos)) if o else None

        @staticmethod
        def tables(t: Table, slot: int) -> list[Table]:
            o = off(t, slot)
            if not o:
                return []
            start = t.Vector(o)
            return [Table(t.Bytes, t.Indirect(start + 4 * i)) for i in range(t.VectorLen(o))]

        @staticmethod
        def floats(t: Table | None, slot: int) -> tuple[float, ...] | None:
            o = off(t, slot) if t is not None else 0
            if t is None or not o:
                return None
            start = t.Vector(o)
            return tuple(float(t.Get(n.Float32Flags, start + 4 * i)) for i in range(t.VectorLen(o)))

        @staticmethod
        def byte(t: Table, slot: int) -> int:
            o = off(t, slot)
            return int(t.Get(n.Uint8Flags, o + t.Pos)) if o else 0

    return R, Table


def _metadata_buffer(model: bytes) -> bytes | None:
    from ai_edge_litert import schema_py_generated as schema

    tree = schema.Model.GetRootAs(model, 0)
    for i in range(tree.MetadataLength()):
        entry = tree.Metadata(i)
        if entry.Name() == METADATA_NAME.encode():
            buffer = tree.Buffers(entry.Buffer())
            if buffer.Offset() > 1:  # stored after the flatbuffer (models over 2 GB)
                return model[buffer.Offset() : buffer.Offset() + buffer.Size()]
            return buffer.DataAsNumpy().tobytes()
    return None


def read_metadata(path: str | Path) -> ModelMetadataInfo:
    """The metadata a .tflite carries, read back with flatbuffers alone; ModelError when it has none."""
    import flatbuffers

    model = Path(path).read_bytes()
    raw = _metadata_buffer(model)
    if raw is None:
        raise ModelError(f"{path} carries no TFLite metadata", hint="export it again with 'headstart export'")
    if not flatbuffers.util.BufferHasIdentifier(raw, 0, METADATA_IDENTIFIER):
        raise ModelError(f"{path}: its metadata buffer is not a TFLite metadata flatbuffer")
    r, table = _tables()
    root = table(raw, flatbuffers.encode.Get(flatbuffers.packer.uoffset, raw, 0))

    def files_of(t: Any, slot: int) -> tuple[tuple[str, int], ...]:
        return tuple((r.string(f, 0) or "", r.byte(f, 2)) for f in r.tables(t, slot))

    def tensor(t: Any) -> TensorInfo:
        content, color, mean, std = None, None, None, None
        c = r.table(t, 3)
        if c is not None:
            kind = r.byte(c, 0)
            content = {_IMAGE_PROPERTIES: "image", _FEATURE_PROPERTIES: "feature"}.get(kind, str(kind))
            props = r.table(c, 1)
            if kind == _IMAGE_PROPERTIES and props is not None:
                color = {1: "RGB", 2: "GRAYSCALE"}.get(r.byte(props, 0), "UNKNOWN")
        for unit in r.tables(t, 4):
            if r.byte(unit, 0) == _NORMALIZATION_OPTIONS:
                options = r.table(unit, 1)
                mean, std = r.floats(options, 0), r.floats(options, 1)
        st = r.table(t, 5)
        return TensorInfo(
            r.string(t, 0), r.string(t, 1), content, color, mean, std, r.floats(st, 1), r.floats(st, 0), files_of(t, 6)
        )

    subgraphs = r.tables(root, 3)
    if not subgraphs:
        raise ModelError(f"{path}: its metadata describes no subgraph")
    sub = subgraphs[0]
    archive: dict[str, bytes] = {}
    if zipfile.is_zipfile(io.BytesIO(model)):
        with zipfile.ZipFile(io.BytesIO(model)) as z:
            archive = {name: z.read(name) for name in z.namelist()}
    return ModelMetadataInfo(
        name=r.string(root, 0),
        description=r.string(root, 1),
        version=r.string(root, 2),
        author=r.string(root, 4),
        min_parser_version=r.string(root, 7),
        inputs=tuple(tensor(t) for t in r.tables(sub, 2)),
        outputs=tuple(tensor(t) for t in r.tables(sub, 3)),
        subgraph_files=files_of(sub, 4),
        files=archive,
    )


def read_embedded_description(path: str | Path) -> dict[str, Any] | None:
    """The headstart description zipped into a .tflite (stdlib only), or None when it has none."""
    try:
        with zipfile.ZipFile(path) as archive:
            return json.loads(archive.read(DESCRIPTION_FILE).decode("utf-8"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None


__all__ = [
    "DESCRIPTION_FILE",
    "LABELS_FILE",
    "ClassifierMetadata",
    "ModelMetadataInfo",
    "TensorInfo",
    "build_metadata",
    "populate",
    "read_embedded_description",
    "read_metadata",
]
