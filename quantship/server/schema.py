"""The server's OpenAPI document: wire shapes as pydantic models and JSON Schema, for documentation only.

Routes read raw bodies (tritonclient's binary bodies are not JSON) and answer with ready-made
responses, so nothing here validates a request; `app.py` attaches these to its route table so that
/openapi.json documents every body and every status code the server can answer.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, Field

from quantship.server.protocol import BINARY_TYPE, DATATYPES, HEADER_LENGTH
from quantship.server.runner_signature import Signature

EXAMPLE_MAX_VALUES = 4096
"""Largest example request worth putting in the document (the digits model takes 64 values a row)."""


class ErrorBody(BaseModel):
    error: str = Field(description="What went wrong, naming the input, value or limit at fault.")


class Live(BaseModel):
    live: bool


class Ready(BaseModel):
    ready: bool


class ModelReady(BaseModel):
    name: str
    ready: bool


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(description="-1 marks a dimension the model leaves open.")


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    batching: dict[str, Any] | None = Field(
        None,
        description="The batching policy measured at load: max_batch_size, reason, microseconds per row, "
        "inline_rows (calls of at most this many rows run on the event loop; 0: none), alone_rows (the same "
        "for a request that comes alone), overlap (more than one CPU: requests that look alone are probed "
        "for concurrency).",
    )


class ResponseOutput(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    data: list[Any] | None = Field(None, description="Row-major values; absent when sent as binary.")
    parameters: dict[str, Any] | None = None


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str
    id: str = Field(
        description="The request's id as given (even empty), or one made for a request without one: "
        "quote it in feedback."
    )
    outputs: list[ResponseOutput]


class FeedbackResponse(BaseModel):
    id: str
    rows: int
    quantized_correct: int
    reference_correct: int | None = Field(description="null when no reference model is loaded.")


_REQUEST_INPUT = {
    "type": "object",
    "required": ["name", "shape", "datatype"],
    "properties": {
        "name": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "datatype": {"type": "string", "enum": list(DATATYPES)},
        "parameters": {
            "type": "object",
            "properties": {"binary_data_size": {"type": "integer", "minimum": 0}},
        },
        "data": {"type": "array", "description": "Row-major values, flat or nested."},
    },
}
INFERENCE_REQUEST = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "parameters": {"type": "object", "properties": {"binary_data_output": {"type": "boolean"}}},
        "inputs": {"type": "array", "minItems": 1, "items": _REQUEST_INPUT},
        "outputs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string"},
                    "parameters": {"type": "object", "properties": {"binary_data": {"type": "boolean"}}},
                },
            },
        },
    },
}
FEEDBACK_REQUEST = {
    "type": "object",
    "required": ["id", "label"],
    "properties": {
        "id": {"type": "string", "description": "The id of an answered inference request."},
        "label": {
            "description": "The true class id, or one per row of a batched request.",
            "oneOf": [{"type": "integer"}, {"type": "array", "items": {"type": "integer"}}],
        },
    },
}


def request_body(schema: dict[str, Any], *, binary: bool = False) -> dict[str, Any]:
    content: dict[str, Any] = {"application/json": {"schema": schema}}
    if binary:
        content[BINARY_TYPE] = {
            "schema": {"type": "string", "format": "binary"},
            "description": f"Binary tensor extension: a JSON header of {HEADER_LENGTH} bytes, then tensors.",
        }
    return {"requestBody": {"required": True, "content": content}}


_WHY = {
    400: "The request is malformed or does not fit the model.",
    404: "No such model, version, or request id.",
    408: "The body did not arrive within --body-timeout-s; the connection is closed.",
    409: "This request already got its label.",
    413: "The body is larger than --max-body-bytes (inflated, if sent gzip or deflate).",
    415: "A Content-Encoding other than gzip or deflate.",
    429: "The queue is full (--max-queue-size); retry later.",
    500: "Inference failed inside onnxruntime, on ones of the request's shapes too.",
    503: "The model is loading, was refused, or the server is shutting down.",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorBody, "description": _WHY[code]} for code in codes}


def ok(model: type[BaseModel], description: str, *, binary: bool = False) -> dict[int | str, dict[str, Any]]:
    entry: dict[str, Any] = {"model": model, "description": description}
    if binary:
        entry["content"] = {BINARY_TYPE: {"schema": {"type": "string", "format": "binary"}}}
    return {200: entry}


def without_validation_errors(document: dict[str, Any]) -> dict[str, Any]:
    """Drop FastAPI's automatic 422 entries: validation errors are answered 400 (see errors.py)."""
    for path in document.get("paths", {}).values():
        for operation in path.values():
            operation.get("responses", {}).pop("422", None)
    schemas = document.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    return document


def pin_path_parameters(document: dict[str, Any], values: dict[str, str]) -> dict[str, Any]:
    """Document the one model name and version this server answers to, as an enum of one.

    Any other name is still answered (404); the enum tells readers, and fuzzers, what reaches the model.
    """
    for path in document.get("paths", {}).values():
        for operation in path.values():
            for parameter in operation.get("parameters", []):
                if parameter.get("in") == "path" and parameter.get("name") in values:
                    parameter["schema"] = {**parameter.get("schema", {}), "enum": [values[parameter["name"]]]}
    return document


_EXAMPLE_VALUES: dict[str, Any] = {"BYTES": "", "BOOL": True}


def infer_example(signature: Signature, row_shapes: Mapping[str, Sequence[int]]) -> dict[str, Any] | None:
    """A one-row request for the loaded model, or None when it would be too large. Ones (true for
    BOOL, empty strings for BYTES), as the batch policy's first try: a valid mask, id and divisor.
    Open dimensions as in one sample of the gate's data (`Artifact.row_shapes`), else 1."""
    inputs = []
    for spec in signature.inputs:
        shape = list(spec.one_row(row_shapes.get(spec.name, ())))
        count = math.prod(shape)
        if count > EXAMPLE_MAX_VALUES:
            return None
        data: list[Any] = [_EXAMPLE_VALUES.get(spec.datatype, 1)] * count
        inputs.append({"name": spec.name, "shape": shape, "datatype": spec.datatype, "data": data})
    return {"id": "example", "inputs": inputs}


def with_infer_example(document: dict[str, Any], example: dict[str, Any]) -> dict[str, Any]:
    for path, operations in document.get("paths", {}).items():
        if path.endswith("/infer"):
            content = operations["post"]["requestBody"]["content"]["application/json"]
            content["example"] = example
    return document


def path_parameters(path: str) -> list[dict[str, Any]]:
    """OpenAPI parameters for the `{name}` segments of a route path (all strings)."""
    names = re.findall(r"{(\w+)}", path)
    return [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}} for name in names]
