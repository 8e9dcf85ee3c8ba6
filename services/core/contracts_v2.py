"""The Open Inference Protocol's shapes (KServe "v2", also spoken by Triton and MLServer),
declared once: the v2 routes (services/web/routes/v2.py) decode requests with them and build
answers from them, and /openapi.json documents them from the same declarations.

https://kserve.github.io/website/docs/concepts/architecture/data-plane/v2-protocol (REST), and
Triton's binary tensor data extension for the binary bodies real clients send.

Requests are decoded strictly (`msgspec.json.decode(..., type=InferenceRequest)`): a field of
the wrong type is a 400 naming its JSON path, before any tensor is built.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

# What a parameter may hold: the protocol allows only scalars.
Scalar = str | int | float | bool
Parameters = dict[str, Scalar]
# The datatypes of the protocol's tensor data types table.
Datatype = Literal[
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
    "BF16",
]
# Dimensions of a tensor; -1 in metadata is a variable dimension.
Shape = list[Annotated[int, Meta(ge=-1)]]


def _doc(text: str, **constraints: Any) -> Meta:
    return Meta(description=text, **constraints)


class ServerMetadata(Struct, kw_only=True):
    """GET /v2: who answers and which protocol extensions it speaks."""

    name: str
    version: str
    extensions: list[str]


class Live(Struct, kw_only=True):
    live: bool


class ReadyV2(Struct, kw_only=True):
    ready: bool


class ModelReady(Struct, kw_only=True):
    name: str
    ready: bool


class TensorMetadata(Struct, kw_only=True, omit_defaults=True):
    name: str
    datatype: Datatype
    shape: Annotated[Shape, _doc("-1: any size along that dimension.")]
    parameters: Parameters | None = None


class ModelMetadataV2(Struct, kw_only=True):
    """GET /v2/models/{name}: the tensors the model takes and gives."""

    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: Parameters


class RequestInput(Struct, kw_only=True, forbid_unknown_fields=True):
    name: str
    shape: Shape
    datatype: Datatype
    parameters: Annotated[
        Parameters | None,
        _doc("binary_data_size: the byte length of this tensor in the binary part of the body."),
    ] = None
    data: Annotated[
        list[Any] | None,
        _doc(
            "Row-major values, flat or nested; absent when the tensor is in the binary part. "
            "BYTES elements in JSON are base64 text of the encoded image."
        ),
    ] = None


class RequestOutput(Struct, kw_only=True, forbid_unknown_fields=True):
    name: str
    parameters: Annotated[
        Parameters | None,
        _doc("binary_data: true to receive this output in the binary part of the answer."),
    ] = None


class InferenceRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    """POST /v2/models/{name}/infer: exactly one input, `image` (BYTES: one encoded image per
    element) or the graph's own input (FP32, N×3×S×S, preprocessed as /metadata says)."""

    inputs: list[RequestInput]
    id: str | None = None
    parameters: Annotated[
        Parameters | None, _doc("binary_data_output: true returns every output in the binary part.")
    ] = None
    outputs: list[RequestOutput] | None = None


class ResponseOutput(Struct, kw_only=True, omit_defaults=True):
    name: str
    shape: Shape
    datatype: Datatype
    parameters: Parameters | None = None
    data: Annotated[
        list[Any] | None,
        _doc(
            "Flat, row-major; absent when the output is in the binary part (see its "
            "binary_data_size)."
        ),
    ] = None


class InferenceResponse(Struct, kw_only=True, omit_defaults=True):
    """The answer: `probabilities` (FP32, N×C, in the order of the `classes` parameter),
    `label` and `decision` (BYTES, N); the prediction's other fields are parameters."""

    model_name: str
    model_version: str
    outputs: list[ResponseOutput]
    parameters: Annotated[
        Parameters | None,
        _doc(
            "threshold and precision (the model's); classes (comma-separated, the order of "
            "`probabilities`); every other field of /predict's answer (warnings, quality, ...) "
            "as JSON text of a list with one entry per image."
        ),
    ] = None
    id: str | None = None


class ErrorV2(Struct, kw_only=True):
    """Every error of a v2 route, as the protocol shapes it: one message, the HTTP status
    says the kind."""

    error: Annotated[str, _doc("What was wrong and what to do, for a person.")]


DOCUMENTED = (
    ServerMetadata,
    Live,
    ReadyV2,
    ModelReady,
    ModelMetadataV2,
    InferenceRequest,
    InferenceResponse,
    ErrorV2,
)


def schema_components() -> dict[str, Any]:
    """JSON Schema of the v2 shapes by name, `$ref`s into #/components/schemas."""
    _, components = msgspec.json.schema_components(
        DOCUMENTED, ref_template="#/components/schemas/{name}"
    )
    return components


def to_json(answer: Struct) -> dict[str, Any]:
    return msgspec.to_builtins(answer)
