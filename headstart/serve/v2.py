"""The Open Inference Protocol (KServe v2) over REST: request parsing and response building.

The model has one input, ``image`` (``BYTES``, shape ``[N]``, each element an
encoded image file), and two outputs, ``label`` (``BYTES``, ``[N]``) and
``probabilities`` (``FP32``, ``[N, classes]``, columns in ``labels.txt`` order).

Elements of ``image`` arrive in any of these ways:

* the binary tensor extension (what Triton's clients send by default): the
  JSON header, then raw bytes; the input has ``parameters.binary_data_size``
  and the request the ``Inference-Header-Content-Length`` header; each BYTES
  element is a 4-byte little-endian length followed by the file's bytes;
* JSON strings holding the file base64-encoded (``parameters.content_type``
  ``"base64"`` says so; without it a string that is valid base64 is decoded
  and any other string is taken as UTF-8 bytes, which is no image: 422).

Outputs come back as JSON ``data``, or binary when the request asks
(``parameters.binary_data`` on a requested output, or the request's
``parameters.binary_data_output``).  ``parameters.classification: K`` on a
requested output gives Triton's classification extension: ``BYTES [N, K]``
elements ``"score:index:label"``.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from .batcher import Part
from .body import decode_base64, media_type
from .errors import ServeError

INPUT_NAME = "image"
OUTPUT_NAMES = ("label", "probabilities")
HEADER_LENGTH = "inference-header-content-length"


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool
    classification: int | None = None


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    parts: tuple[Part, ...]
    outputs: tuple[RequestedOutput, ...]


def model_metadata(name: str, clf: Any) -> dict[str, Any]:
    return {
        "name": name,
        "versions": [clf.version],
        "platform": clf.platform,
        "inputs": [{"name": INPUT_NAME, "datatype": "BYTES", "shape": [-1]}],
        "outputs": [
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(clf.labels)]},
        ],
    }


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    out: list[Any] = []
    for item in data:
        out.extend(_flatten(item) if isinstance(item, list) else [item])
    return out


def _shape(value: Any) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value):
        raise ServeError(400, f"input {INPUT_NAME!r}: shape must be a list of non-negative integers, got {value!r}")
    return value


def _split_bytes_tensor(buffer: bytes, count: int) -> list[bytes]:
    """Elements of a binary BYTES tensor: each a uint32 little-endian length, then that many bytes."""
    out, offset = [], 0
    for i in range(count):
        if offset + 4 > len(buffer):
            raise ServeError(400, f"input {INPUT_NAME!r}: binary data ends before element {i}")
        (size,) = struct.unpack_from("<I", buffer, offset)
        offset += 4
        if offset + size > len(buffer):
            raise ServeError(400, f"input {INPUT_NAME!r}: element {i} is {size} bytes but the binary data ends sooner")
        out.append(buffer[offset : offset + size])
        offset += size
    if offset != len(buffer):
        raise ServeError(400, f"input {INPUT_NAME!r}: binary data holds more than {count} elements")
    return out


def _element_bytes(value: Any, base64_declared: bool, index: int) -> bytes:
    where = f"input {INPUT_NAME!r} element {index}"
    if not isinstance(value, str):
        raise ServeError(400, f"{where}: BYTES elements in JSON must be strings (base64 image files)")
    if base64_declared:
        return decode_base64(value, where)
    try:
        return decode_base64(value, where)
    except ServeError:
        return value.encode("utf-8", "surrogatepass")  # what the protocol says a JSON string is


def _outputs(request: dict[str, Any], n_classes: int) -> tuple[RequestedOutput, ...]:
    params = request.get("parameters") or {}
    if not isinstance(params, dict):
        raise ServeError(400, "request parameters must be an object")
    binary_all = params.get("binary_data_output") is True
    wanted = request.get("outputs")
    if wanted is None:
        return tuple(RequestedOutput(name, binary_all) for name in OUTPUT_NAMES)
    if not isinstance(wanted, list) or not wanted:
        raise ServeError(400, 'outputs must be a non-empty list of {"name": ...}')
    out = []
    for item in wanted:
        if not isinstance(item, dict) or item.get("name") not in OUTPUT_NAMES:
            name = item.get("name") if isinstance(item, dict) else item
            raise ServeError(400, f"unknown output {name!r}; this model has {' and '.join(OUTPUT_NAMES)}")
        p = item.get("parameters") or {}
        if not isinstance(p, dict):
            raise ServeError(400, f"output {item['name']!r}: parameters must be an object")
        k = p.get("classification")
        if k is not None and (not isinstance(k, int) or isinstance(k, bool) or k < 1):
            raise ServeError(400, f"output {item['name']!r}: classification must be a positive integer")
        out.append(
            RequestedOutput(
                item["name"], bool(p.get("binary_data", binary_all)), None if k is None else min(k, n_classes)
            )
        )
    return tuple(out)


def parse_infer_request(body: bytes, headers: Any, n_classes: int) -> InferRequest:
    """An inference request (JSON, or JSON + binary tensors) -> the image parts and what to answer."""
    header_length = headers.get(HEADER_LENGTH)
    kind = media_type(headers.get("content-type"))
    if header_length is not None:
        try:
            split = int(header_length)
        except ValueError:
            raise ServeError(400, f"Inference-Header-Content-Length {header_length!r} is not a number") from None
        if not 0 <= split <= len(body):
            raise ServeError(400, f"Inference-Header-Content-Length {split} is outside the {len(body)}-byte body")
        header, binary = body[:split], body[split:]
    else:
        if kind not in ("", "application/json", "application/octet-stream") and not kind.endswith("+json"):
            raise ServeError(
                400,
                f"unsupported Content-Type {kind}; send application/json (with the "
                "Inference-Header-Content-Length header for binary tensors)",
            )
        header, binary = body, b""
    try:
        request = json.loads(header)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ServeError(400, f"malformed JSON: {str(exc).splitlines()[0]}") from None
    if not isinstance(request, dict):
        raise ServeError(400, "the inference request must be a JSON object")
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ServeError(400, "id must be a string")
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise ServeError(400, f"inputs must be a list with one input, {INPUT_NAME!r} (BYTES, shape [N])")
    tensor = inputs[0]
    if tensor.get("name") != INPUT_NAME:
        raise ServeError(400, f"unknown input {tensor.get('name')!r}; this model takes one input named {INPUT_NAME!r}")
    if tensor.get("datatype") != "BYTES":
        raise ServeError(
            400, f"input {INPUT_NAME!r} has datatype BYTES (encoded image files), not {tensor.get('datatype')!r}"
        )
    shape = _shape(tensor.get("shape"))
    if len(shape) != 1:
        raise ServeError(400, f"input {INPUT_NAME!r} has shape [N] (one encoded file per element), got {shape}")
    count = math.prod(shape)
    params = tensor.get("parameters") or {}
    if not isinstance(params, dict):
        raise ServeError(400, f"input {INPUT_NAME!r}: parameters must be an object")
    if "binary_data_size" in params:
        size = params["binary_data_size"]
        if not isinstance(size, int) or isinstance(size, bool) or size != len(binary):
            raise ServeError(
                400,
                f"input {INPUT_NAME!r}: binary_data_size {size!r} does not match the "
                f"{len(binary)} bytes after the JSON header",
            )
        elements = _split_bytes_tensor(binary, count)
    else:
        if binary:
            raise ServeError(400, "binary data after the JSON header but no input has binary_data_size")
        if "data" not in tensor:
            raise ServeError(400, f"input {INPUT_NAME!r} has no data")
        values = _flatten(tensor["data"])
        if len(values) != count:
            raise ServeError(400, f"input {INPUT_NAME!r}: shape {shape} needs {count} elements, data has {len(values)}")
        declared = str(params.get("content_type", "")).lower() in ("base64", "b64")
        elements = [_element_bytes(v, declared, i) for i, v in enumerate(values)]
    parts = tuple(Part(str(i), data) for i, data in enumerate(elements))
    return InferRequest(request_id, parts, _outputs(request, n_classes))


def _bytes_tensor(values: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(v)) + v for v in values)


def build_infer_response(name: str, clf: Any, request: InferRequest, proba: np.ndarray) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers (binary outputs follow the JSON header)."""
    labels = clf.labels
    n = len(proba)
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for wanted in request.outputs:
        if wanted.classification is not None:
            order = np.argsort(-proba, axis=1, kind="stable")[:, : wanted.classification]
            strings = [f"{proba[r, j]:f}:{j}:{labels[j]}" for r in range(n) for j in order[r]]
            datatype, shape = "BYTES", [n, wanted.classification]
        elif wanted.name == "label":
            strings = [labels[j] for j in proba.argmax(axis=1)] if n else []
            datatype, shape = "BYTES", [n]
        else:
            strings = None
            datatype, shape = "FP32", [n, len(labels)]
        tensor: dict[str, Any] = {"name": wanted.name, "datatype": datatype, "shape": shape}
        if wanted.binary:
            blob = (
                _bytes_tensor([s.encode() for s in strings])
                if strings is not None
                else np.ascontiguousarray(proba, dtype="<f4").tobytes()
            )
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            tensor["data"] = strings if strings is not None else [float(v) for v in proba.reshape(-1)]
        outputs.append(tensor)
    response: dict[str, Any] = {"model_name": name, "model_version": clf.version, "outputs": outputs}
    if request.id is not None:
        response["id"] = request.id
    header = json.dumps(response, separators=(",", ":")).encode()
    if not blobs:
        return header, {"content-type": "application/json"}
    return header + b"".join(blobs), {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(len(header)),
    }
