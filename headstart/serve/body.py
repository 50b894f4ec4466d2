"""Request bodies: read within the size limit, then split into the images they carry.

The limit holds for what the server keeps in memory: a ``Content-Length``
over it is refused before reading, a chunked body as soon as it passes it,
and a compressed body (``Content-Encoding: gzip`` or ``deflate``) as soon as
its *decompressed* size does (a zip bomb costs nothing).
"""

from __future__ import annotations

import base64
import binascii
import json
import zlib
from collections.abc import AsyncIterator
from typing import Any

from .batcher import Part
from .errors import ServeError

RAW_TYPES = ("application/octet-stream",)
FILE_FIELDS = ("file", "files")


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def _too_large(limit: int) -> ServeError:
    return ServeError(413, f"request body over {limit / 1048576:g} MB (--max_body_mb); send fewer or smaller images")


async def read_body(request: Any, limit: int) -> bytes:
    """The whole body, decompressed; ServeError 413 past ``limit`` bytes, 400 for a bad encoding."""
    length = request.headers.get("content-length")
    if length is not None:
        try:
            declared = int(length)
        except ValueError:
            raise ServeError(400, f"Content-Length {length!r} is not a number") from None
        if declared > limit:
            raise _too_large(limit)
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        inflater = None
    elif encoding in ("gzip", "x-gzip"):
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    elif encoding == "deflate":
        inflater = zlib.decompressobj()
    else:
        raise ServeError(400, f"Content-Encoding {encoding!r} is not supported; use gzip, deflate or none")
    chunks: list[bytes] = []
    size = 0
    raw = 0
    try:
        async for chunk in request.stream():
            raw += len(chunk)
            if raw > limit:
                raise _too_large(limit)
            if inflater is not None:
                chunk = inflater.decompress(chunk, limit + 1 - size)
                if inflater.unconsumed_tail:  # more output waiting than the limit leaves room for
                    raise _too_large(limit)
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
        if inflater is not None:
            tail = inflater.flush()
            size += len(tail)
            if size > limit:
                raise _too_large(limit)
            chunks.append(tail)
            if not inflater.eof:
                raise ServeError(400, f"the {encoding} body is truncated")
    except zlib.error as exc:
        raise ServeError(400, f"the body is not valid {encoding}: {exc}") from None
    return b"".join(chunks)


def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ServeError(400, f"malformed JSON: {str(exc).splitlines()[0]}") from None


def decode_base64(text: Any, where: str) -> bytes:
    if not isinstance(text, str):
        raise ServeError(400, f"{where} must be a base64 string")
    try:
        # Both alphabets: browsers' btoa gives the standard one, some clients the URL-safe one.
        cleaned = "".join(text.split())
        if "-" in cleaned or "_" in cleaned:
            cleaned = cleaned.replace("-", "+").replace("_", "/")
        return base64.b64decode(cleaned + "=" * (-len(cleaned) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ServeError(400, f"{where} is not valid base64") from None


def instances_parts(payload: Any) -> list[Part]:
    """TF-Serving's ``{"instances": [{"b64": ...}, ...]}`` (also ``{"image_bytes": {"b64": ...}}``)."""
    if not isinstance(payload, dict) or "instances" not in payload:
        raise ServeError(400, 'JSON body must be {"instances": [{"b64": "<base64 image>"}, ...]}')
    instances = payload["instances"]
    if not isinstance(instances, list):
        raise ServeError(400, '"instances" must be a list of {"b64": "<base64 image>"}')
    parts: list[Part] = []
    for i, instance in enumerate(instances):
        where = f"instances[{i}]"
        if isinstance(instance, dict) and isinstance(instance.get("image_bytes"), dict):
            instance = {**instance, **instance["image_bytes"]}
        if not isinstance(instance, dict) or "b64" not in instance:
            raise ServeError(400, f'{where} must be {{"b64": "<base64 image>"}}')
        name = instance.get("name", instance.get("key", str(i)))
        parts.append(Part(str(name), decode_base64(instance["b64"], f"{where}.b64")))
    return parts


async def multipart_parts(request: Any, body: bytes, max_files: int) -> list[Part]:
    """The ``file`` parts of a ``multipart/form-data`` body, named by their file names."""
    from starlette.formparsers import MultiPartException, MultiPartParser

    async def stream() -> AsyncIterator[bytes]:
        yield body

    # The body was already read within --max_body_mb, so no part can be larger than it.
    parser = MultiPartParser(
        request.headers,
        stream(),  # type: ignore[arg-type]
        max_files=max_files,
        max_fields=1000,
        max_part_size=max(len(body), 1),
    )
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        if exc.message.startswith("Too many files"):
            raise ServeError(
                413,
                f"more than {max_files} files in one request; this server takes at most "
                f"{max_files} (--max_queue): send them in smaller requests",
            ) from None
        raise ServeError(400, f"malformed multipart body: {exc.message}") from None
    parts: list[Part] = []
    try:
        for field_name, value in form.multi_items():
            if field_name not in FILE_FIELDS:
                continue
            if isinstance(value, str):  # a text field named "file": its text is the "image"
                parts.append(Part(str(len(parts)), value.encode()))
                continue
            data = await value.read()
            parts.append(Part(value.filename or str(len(parts)), data))
    finally:
        await form.close()
    if not parts:
        raise ServeError(400, "multipart body has no 'file' part; send the images as file=@photo.jpg")
    return parts


async def rest_parts(request: Any, body: bytes, max_files: int) -> list[Part]:
    """The images of a REST predict request: raw bytes, multipart files, or JSON instances."""
    kind = media_type(request.headers.get("content-type"))
    if kind.startswith("image/") or kind in RAW_TYPES:
        return [Part(request.query_params.get("name") or "0", body)]
    if kind == "multipart/form-data":
        return await multipart_parts(request, body, max_files)
    if kind == "application/json" or kind.endswith("+json"):
        return instances_parts(parse_json(body))
    shown = kind or "none"
    raise ServeError(
        400,
        f"unsupported Content-Type {shown}; send image/* (the raw image), multipart/form-data "
        'with file parts, or application/json {"instances": [{"b64": ...}]}',
    )
