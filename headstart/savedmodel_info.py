"""What a SavedModel takes and returns, read from ``saved_model.pb`` without importing TensorFlow.

TensorFlow takes seconds to import; resolving a TF Hub backbone (its input size,
its feature size, its fingerprint) happens on every run, also on cached runs that
never run the network.  So the few protobuf fields needed are decoded here from
the wire format: the ``signature_def`` map of the ``serve`` meta graph (TF1 and
Keras exports), else the input signatures of the root object's ``__call__``
(TF2 "reusable" SavedModels, the format of most TF Hub modules).

Field numbers are those of tensorflow/core/protobuf/{saved_model,meta_graph,
saved_object_graph,struct}.proto and tensorflow/core/framework/tensor_shape.proto.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelError

DTYPES = {
    1: "float32",
    2: "float64",
    3: "int32",
    4: "uint8",
    7: "string",
    9: "int64",
    10: "bool",
    19: "float16",
    14: "bfloat16",
}
CALL = "__call__"  # the signature name used for a reusable SavedModel's __call__


@dataclass(frozen=True)
class TensorSpecInfo:
    name: str
    dtype: str
    shape: tuple[int | None, ...] | None  # None: unknown rank; None in it: a dynamic dimension


@dataclass(frozen=True)
class SignatureInfo:
    """One way to call the module: a signature (or ``__call__``), its image input and its vector output."""

    key: str  # signature key, or "__call__"
    input: TensorSpecInfo
    output: TensorSpecInfo | None  # None where the file does not say (a reusable SavedModel's outputs)

    @property
    def image_size(self) -> int | None:
        """The square input size the signature fixes, or None when it is dynamic."""
        shape = self.input.shape
        if shape is None or len(shape) != 4 or shape[1] is None or shape[1] != shape[2]:
            return None
        return shape[1]

    def describe(self) -> dict[str, object]:
        return {
            "key": self.key,
            "input": [self.input.name, self.input.dtype, list(self.input.shape or ())],
            "output": None
            if self.output is None
            else [self.output.name, self.output.dtype, list(self.output.shape or ())],
        }


# ------------------------------------------------------------------ protobuf wire format


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(data: bytes) -> Iterator[tuple[int, int | bytes]]:
    """``(field number, value)`` of one message: ints for varints and fixed widths, bytes for the rest."""
    pos, end = 0, len(data)
    while pos < end:
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            yield number, value
        elif wire == 2:
            size, pos = _varint(data, pos)
            yield number, data[pos : pos + size]
            pos += size
        elif wire == 1:
            yield number, int.from_bytes(data[pos : pos + 8], "little")
            pos += 8
        elif wire == 5:
            yield number, int.from_bytes(data[pos : pos + 4], "little")
            pos += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")


def _all(data: bytes, number: int) -> list[bytes]:
    return [v for n, v in _fields(data) if n == number and isinstance(v, bytes)]


def _first(data: bytes, number: int) -> int | bytes | None:
    return next((v for n, v in _fields(data) if n == number), None)


def _text(data: bytes, number: int) -> str:
    value = _first(data, number)
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else ""


def _map(data: bytes, number: int) -> dict[str, bytes]:
    """A ``map<string, Message>`` field: entries are messages with key 1 and value 2."""
    out = {}
    for entry in _all(data, number):
        key, value = _text(entry, 1), _first(entry, 2)
        out[key] = value if isinstance(value, bytes) else b""
    return out


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _shape(data: bytes | None) -> tuple[int | None, ...] | None:
    """TensorShapeProto: ``dim`` = 2 (each with ``size`` = 1), ``unknown_rank`` = 3."""
    if data is None:
        return None
    if _first(data, 3):
        return None
    dims = []
    for dim in _all(data, 2):
        size = _first(dim, 1)
        value = _signed(size) if isinstance(size, int) else 0
        dims.append(None if value < 0 else value)
    return tuple(dims)


def _dtype(value: int | bytes | None) -> str:
    return DTYPES.get(value, f"dtype {value}") if isinstance(value, int) else "unknown"


def _tensor_info(name: str, data: bytes) -> TensorSpecInfo:
    """TensorInfo: ``name`` = 1, ``dtype`` = 2, ``tensor_shape`` = 3."""
    shape = _first(data, 3)
    return TensorSpecInfo(name, _dtype(_first(data, 2)), _shape(shape if isinstance(shape, bytes) else None))


def _tensor_specs(value: bytes) -> Iterator[TensorSpecInfo]:
    """Every TensorSpecProto (``tensor_spec_value`` = 33: name 1, shape 2, dtype 3) in a StructuredValue, in order."""
    for number, inner in _fields(value):
        if not isinstance(inner, bytes):
            continue
        if number == 33:
            shape = _first(inner, 2)
            yield TensorSpecInfo(
                _text(inner, 1), _dtype(_first(inner, 3)), _shape(shape if isinstance(shape, bytes) else None)
            )
        elif number in (51, 52):  # ListValue / TupleValue: values = 1
            for item in _all(inner, 1):
                yield from _tensor_specs(item)
        elif number in (53, 54):  # DictValue: fields = 1; NamedTupleValue: values = 2 (PairValue: value = 2)
            for entry in _all(inner, 1 if number == 53 else 2):
                member = _first(entry, 2)
                if isinstance(member, bytes):
                    yield from _tensor_specs(member)


# ------------------------------------------------------------------ the SavedModel


def _serve_graph(data: bytes) -> bytes:
    """The MetaGraphDef tagged ``serve`` (else the only or first one): SavedModel.meta_graphs = 2."""
    graphs = _all(data, 2)
    if not graphs:
        raise ValueError("no meta graph")
    for graph in graphs:
        info = _first(graph, 1)  # MetaInfoDef: tags = 4
        if isinstance(info, bytes) and "serve" in [t.decode() for t in _all(info, 4)]:
            return graph
    return graphs[0]


def _is_image(spec: TensorSpecInfo) -> bool:
    return spec.dtype == "float32" and spec.shape is not None and len(spec.shape) == 4 and spec.shape[3] in (3, None)


_PREFERRED_OUTPUTS = ("feature_vector", "default", "logits", "probabilities", "output_0", "outputs")


def _signature_defs(graph: bytes) -> list[SignatureInfo]:
    """Signatures with one float image input and a rank-2 output (``serving_default`` first)."""
    found = []
    signatures = _map(graph, 5)  # MetaGraphDef.signature_def
    order = sorted(signatures, key=lambda k: (k not in ("serving_default", "default"), k != "serving_default", k))
    for key in order:
        body = signatures[key]
        inputs = [_tensor_info(k, v) for k, v in _map(body, 1).items()]
        outputs = [_tensor_info(k, v) for k, v in _map(body, 2).items()]
        images = [i for i in inputs if _is_image(i)]
        vectors = [o for o in outputs if o.shape is not None and len(o.shape) == 2]
        if len(inputs) != 1 or not images or not vectors:
            continue
        vectors.sort(
            key=lambda o: (
                o.name not in _PREFERRED_OUTPUTS,
                _PREFERRED_OUTPUTS.index(o.name) if o.name in _PREFERRED_OUTPUTS else 0,
                o.name,
            )
        )
        found.append(SignatureInfo(key, images[0], vectors[0]))
    return found


def _call_signatures(graph: bytes) -> list[SignatureInfo]:
    """The root object's ``__call__`` concrete functions (object_graph_def = 7) whose first input is an image."""
    objects = _first(graph, 7)
    if not isinstance(objects, bytes):
        return []
    nodes = _all(objects, 1)  # SavedObjectGraph.nodes; node 0 is the root
    functions = _map(objects, 2)  # SavedObjectGraph.concrete_functions
    if not nodes:
        return []
    call = next((_first(ref, 1) for ref in _all(nodes[0], 1) if _text(ref, 2) == CALL), None)
    if not isinstance(call, int) or call >= len(nodes):
        return []
    function = _first(nodes[call], 6)  # SavedObject.function: SavedFunction.concrete_functions = 1
    names = [n.decode() for n in _all(function, 1)] if isinstance(function, bytes) else []
    found = []
    for name in names:
        signature = _first(functions.get(name, b""), 3)  # SavedConcreteFunction.canonicalized_input_signature
        specs = list(_tensor_specs(signature)) if isinstance(signature, bytes) else []
        outputs = _first(functions.get(name, b""), 4)
        out_specs = (
            [s for s in _tensor_specs(outputs) if s.shape is not None and len(s.shape) == 2]
            if isinstance(outputs, bytes)
            else []
        )
        if specs and _is_image(specs[0]):
            found.append(SignatureInfo(CALL, specs[0], out_specs[0] if len(out_specs) == 1 else None))
    # A batch-agnostic trace first (TF Hub modules trace __call__ for several batch sizes and training flags).
    found.sort(key=lambda s: (s.input.shape or (0,))[0] is not None)
    return found


def read_signature(saved_model_dir: Path) -> SignatureInfo:
    """The signature headstart calls: an image feature-vector (or classification) signature of the module."""
    path = Path(saved_model_dir) / "saved_model.pb"
    try:
        graph = _serve_graph(path.read_bytes())
        found = _signature_defs(graph) or _call_signatures(graph)
    except (OSError, ValueError, IndexError) as exc:
        raise ModelError(f"cannot read {path}: {exc}", hint="pass a TensorFlow SavedModel folder") from exc
    if not found:
        raise ModelError(
            f"{saved_model_dir} has no image signature (float32 [N, H, W, 3] in, [N, D] out)",
            hint="export the model with a serving_default signature that takes images in [0, 1], "
            "as TF Hub's image feature vectors do",
        )
    return found[0]


__all__ = ["SignatureInfo", "TensorSpecInfo", "read_signature"]
