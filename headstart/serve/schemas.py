"""The shapes of requests and answers, for the OpenAPI document at ``/openapi.json``.

Handlers build their JSON directly (the binary tensor extension and raw
image bodies are not JSON); these models say what that JSON is.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from .errors import ERROR_STATUSES


class ErrorResponse(BaseModel):
    error: str = Field(description="one line saying what went wrong")


class TopLabel(BaseModel):
    label: str
    score: float


class PredictionRow(BaseModel):
    path: str = Field(description="the part's file name, the instance's name, or its index")
    top: list[TopLabel]
    unknown: bool | None = Field(
        None, description="the out-of-distribution score is past the model's threshold (models that score novelty only)"
    )
    ood_score: float | None = Field(None, description="the out-of-distribution score (models that score novelty)")


class PredictResponse(BaseModel):
    model: str
    model_version: str = Field(description="the weights fingerprint: changes when the model changes")
    predictions: list[PredictionRow]


class ModelInfo(BaseModel):
    model_config = {"extra": "allow"}
    model: str
    model_version: str
    labels: list[str]
    runtime: str
    max_batch_size: int
    ready: bool


class ModelList(BaseModel):
    default: str
    models: list[ModelInfo]


class Instance(BaseModel):
    b64: str = Field(description="the encoded image file (JPEG, PNG, ...), base64")
    name: str | None = Field(None, description="echoed as the row's path")


class InstancesRequest(BaseModel):
    instances: list[Instance]


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class Live(BaseModel):
    live: bool


class Ready(BaseModel):
    ready: bool


class ModelReady(BaseModel):
    name: str
    ready: bool


class MetadataTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]


class RequestInput(BaseModel):
    name: str = Field(description='always "image"')
    shape: list[int] = Field(description="[N]")
    datatype: str = Field(description='always "BYTES"')
    parameters: dict[str, Any] | None = Field(
        None, description='{"content_type": "base64"}, or {"binary_data_size": bytes} with the binary extension'
    )
    data: list[Any] | None = Field(None, description="N base64 strings, each an encoded image file")


class RequestOutput(BaseModel):
    name: str = Field(description='"label" or "probabilities"')
    parameters: dict[str, Any] | None = Field(
        None, description='{"binary_data": true} for a binary answer, {"classification": K} for top-K strings'
    )


class InferenceRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput]
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    outputs: list[ResponseOutput]


def request_components() -> dict[str, Any]:
    """Schemas the request bodies refer to, for ``components.schemas``
    (FastAPI adds only those of parsed bodies, and these bodies are parsed by hand)."""
    out: dict[str, Any] = {}
    for model in (InstancesRequest, InferenceRequest):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        out.update(schema.pop("$defs", {}))
        out[model.__name__] = schema
    return out


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for these error statuses (plus 401, which every guarded route has)."""
    return {
        status: {"model": ErrorResponse, "description": ERROR_STATUSES[status]} for status in sorted({*statuses, 401})
    }


def body(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"requestBody": {"required": True, "description": description, "content": schema}}


BINARY = {"schema": {"type": "string", "format": "binary"}}

PREDICT_BODY = body(
    {
        "image/jpeg": BINARY,
        "image/png": BINARY,
        "application/octet-stream": BINARY,
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"file": {"type": "array", "items": {"type": "string", "format": "binary"}}},
                "required": ["file"],
            }
        },
        "application/json": {"schema": {"$ref": "#/components/schemas/InstancesRequest"}},
    },
    "the image itself (Content-Type image/*), multipart/form-data with one or more 'file' parts, "
    'or JSON {"instances": [{"b64": "..."}]}',
)

INFER_BODY = body(
    {
        "application/json": {"schema": {"$ref": "#/components/schemas/InferenceRequest"}},
        "application/octet-stream": {
            **BINARY,
            "description": "the binary tensor extension: JSON header "
            "(Inference-Header-Content-Length bytes), then the tensors",
        },
    },
    "an Open Inference Protocol request with one input, 'image' (BYTES, shape [N])",
)
