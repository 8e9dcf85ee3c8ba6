"""OpenAPI 3.1 description of the app, generated from its url_map: a route added to any
blueprint appears here (with its docstring as summary) without touching this file; the
routes listed in `_operations` get their request and response schemas too. The answers'
schemas are generated from their one declaration (services/core/contracts.py).

The document says what this app, with its settings, does: the bearer scheme and the 401s
only when it has an API token; a batch's bounds from its MAX_BATCH. tests/test_schemathesis.py
holds the app to it."""

from __future__ import annotations

import re
from typing import Any

from flask import Flask

from services.core import contracts_v2
from services.core.contracts import schema_components
from services.core.preprocessing import ACCEPTED_FORMATS, MAX_ASPECT_RATIO, MIN_SIDE
from services.core.switches import OFF_WORDS, ON_WORDS
from services.web.payload import BATCH_FIELD, IMAGE_FIELD, INSTANCES_FIELD
from services.web.state import runtime

# 3.1: its schemas are plain JSON Schema 2020-12, what services/core/contracts.py generates.
OPENAPI_VERSION = "3.1.0"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _error(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": _ref("Error")}}}


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


# What an image must be (services/core/preprocessing.py decides; an image that is not gets a
# 400 of its own, in its slot for a batch).
_IMAGE_RULES = (f"{', '.join(ACCEPTED_FORMATS)}; each side at least {MIN_SIDE} px, the long "
                f"side at most {MAX_ASPECT_RATIO}× the short one.")
_BINARY = {"type": "string", "format": "binary", "description": f"An image file: {_IMAGE_RULES}"}
_BASE64 = {"type": "string", "format": "byte",
           "description": "Standard base64 of the image file; a data: URL prefix is allowed. "
                          f"The image: {_IMAGE_RULES}"}
_RAW_IMAGE_TYPES = ("image/png", "image/jpeg", "image/tiff", "image/bmp", "image/webp",
                    "application/octet-stream", "application/x-image")

_ERRORS = {
    "400": _error("Malformed payload or image (invalid_image, invalid_base64, invalid_json, "
                  "missing_field, malformed_body, ...)."),
    "401": _error("API token missing or wrong (only when MHIST_API_TOKEN is set)."),
    "408": _error("The body stopped arriving before it was complete (request_timeout)."),
    "413": _error("Body over the size limit, or image with too many pixels."),
    "415": _error("Unsupported Content-Type."),
    "503": _error("The model is not loaded."),
}

def _predict_body() -> dict[str, Any]:
    content: dict[str, Any] = {
        "multipart/form-data": {"schema": {
            "type": "object", "required": [IMAGE_FIELD],
            "properties": {IMAGE_FIELD: _BINARY}}},
        "application/json": {"schema": {
            "type": "object", "required": [IMAGE_FIELD],
            "properties": {IMAGE_FIELD: _BASE64}}},
    }
    content.update({t: {"schema": _BINARY} for t in _RAW_IMAGE_TYPES})
    return {"required": True, "content": content}


def _batch_body(max_batch: int) -> dict[str, Any]:
    # An empty batch or one over MAX_BATCH is a 400 for the whole request (payload.py).
    bounds = {"minItems": 1, "maxItems": max_batch}
    images = {"type": "array", "items": _BASE64, **bounds}
    instances = {"type": "array", **bounds, "items": {
        "type": "object", "required": [IMAGE_FIELD], "properties": {IMAGE_FIELD: _BASE64}}}
    content: dict[str, Any] = {
        "multipart/form-data": {"schema": {
            "type": "object", "required": [BATCH_FIELD],
            "properties": {BATCH_FIELD: {"type": "array", "items": _BINARY, **bounds}}}},
        "application/json": {"schema": {"oneOf": [
            {"type": "object", "required": [BATCH_FIELD], "properties": {BATCH_FIELD: images}},
            {"type": "object", "required": [INSTANCES_FIELD],
             "properties": {INSTANCES_FIELD: instances}},
        ]}},
    }
    content.update({t: {"schema": _BINARY} for t in _RAW_IMAGE_TYPES})  # a batch of one
    return {"required": True, "content": content}


def _invocations_body(max_batch: int) -> dict[str, Any]:
    """/invocations: one image as /predict takes it, or a JSON batch as /predict/batch does."""
    body = _predict_body()
    single = body["content"]["application/json"]["schema"]
    batch = _batch_body(max_batch)["content"]["application/json"]["schema"]
    body["content"]["application/json"] = {"schema": {"oneOf": [single, *batch["oneOf"]]}}
    return body


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}


_EXPLAIN_DOC = ("1 (or true/yes/on) adds `explanation`, a class activation map; 0 (or "
                "false/no/off) or absent: none, at no cost. Anything else is a 400.")
_EXPLAIN = _query("explain", {"type": "string", "enum": [*ON_WORDS, *OFF_WORDS]}, _EXPLAIN_DOC)
_CUSTOM_ATTRIBUTES = {
    "name": "X-Amzn-SageMaker-Custom-Attributes", "in": "header", "required": False,
    "schema": {"type": "string", "example": "explain=1"},
    "description": "SageMaker forwards no query string: `explain=1` among `;`- or "
                   "`,`-separated key=value pairs asks for the explanation. Other keys are "
                   "ignored.",
}
_NO_EXPLANATIONS = {"409": _error("explain=1, but the model file was exported without "
                                  "explanations (explanations_unavailable).")}

_OPEN: dict[str, Any] = {"security": []}


# --- the Open Inference Protocol (services/web/routes/v2.py): its own error shape ----------------

def _v2_error(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": _ref("ErrorV2")}}}


_V2_ERRORS = {
    "400": _v2_error("Malformed inference request: JSON, shape, datatype, input or output "
                     "name, binary sizes, an element that is not an image, NaN in FP32."),
    "401": _v2_error("API token missing or wrong (only when MHIST_API_TOKEN is set)."),
    "404": _v2_error("No model of that name or version is served here."),
    "408": _v2_error("The body stopped arriving before it was complete."),
    "413": _v2_error("Body over the size limit, or an image with too many pixels."),
    "415": _v2_error("A compressed body (Content-Encoding); send it uncompressed."),
    "503": _v2_error("The model is not loaded."),
}
_V2_MODEL_ERRORS = {code: _V2_ERRORS[code] for code in ("401", "404", "503")}
_HEADER_LENGTH = {
    "name": "Inference-Header-Content-Length", "in": "header", "required": False,
    "schema": {"type": "integer", "minimum": 0},
    "description": "Binary tensor data extension: the byte length of the JSON part; the rest "
                   "of the body is the inputs' bytes (see each input's binary_data_size).",
}


def _v2_operations() -> dict[str, dict[str, Any]]:
    binary = {"type": "string", "format": "binary",
              "description": "Inference-Header-Content-Length bytes of JSON (InferenceRequest "
                             "or InferenceResponse), then the tensors' bytes."}
    return {
        "v2.live": {**_OPEN, "responses": {"200": _json("Live.", _ref("Live"))}},
        "v2.server_ready": {**_OPEN, "responses": {"200": _json("Ready.", _ref("ReadyV2")),
                                                   "503": _V2_ERRORS["503"]}},
        "v2.server_metadata": {"responses": {
            "200": _json("Server metadata.", _ref("ServerMetadata")), "401": _V2_ERRORS["401"]}},
        "v2.model_metadata": {"responses": {
            "200": _json("Model metadata.", _ref("ModelMetadataV2")), **_V2_MODEL_ERRORS}},
        "v2.model_ready": {"responses": {"200": _json("Ready.", _ref("ModelReady")),
                                         **_V2_MODEL_ERRORS}},
        "v2.infer": {
            "parameters": [_HEADER_LENGTH],
            "requestBody": {"required": True, "content": {
                "application/json": {"schema": _ref("InferenceRequest")},
                "application/octet-stream": {"schema": binary}}},
            "responses": {"200": {
                "description": "The outputs; binary when an output asked for binary_data.",
                "content": {"application/json": {"schema": _ref("InferenceResponse")},
                            "application/octet-stream": {"schema": binary}}},
                **_V2_ERRORS},
        },
    }


def _operations(max_batch: int) -> dict[str, dict[str, Any]]:
    """Details for the routes that have them, by endpoint. A route without an entry still
    appears, described by its view's docstring: the paths come from the app's url_map."""
    return {
        "api.predict": {
            "parameters": [_EXPLAIN],
            "requestBody": _predict_body(),
            "responses": {"200": _json("The prediction.", _ref("Prediction")), **_ERRORS,
                          **_NO_EXPLANATIONS},
        },
        "api.predict_batch": {
            "parameters": [_EXPLAIN],
            "requestBody": _batch_body(max_batch),
            "responses": {"200": _json("Per-item predictions or errors.", _ref("BatchResponse")),
                          **_ERRORS, **_NO_EXPLANATIONS},
        },
        "region.predict_region": {
            "parameters": [
                _query("mpp", {"type": "number", "exclusiveMinimum": 0},
                       "µm per pixel of the image (default: the model's own, see /metadata)."),
                _query("stride", {"type": "integer", "minimum": 1},
                       "Tile step in pixels at the model's scale (default: one tile)."),
                _query("min_tissue", {"type": "number", "minimum": 0, "maximum": 1},
                       "Share of tissue a tile needs to be analysed (default 0.5)."),
            ],
            "requestBody": _predict_body(),
            "responses": {"200": _json("Per-tile predictions and the heatmap.",
                                       _ref("RegionResponse")), **_ERRORS,
                          "422": _error("No tissue, or a resolution needing more than 2× "
                                        "upsampling (no_tissue, resolution_too_coarse).")},
        },
        "ops.health": {**_OPEN, "responses": {"200": _json("The process answers.",
                                                            {"type": "object"})}},
        "ops.ready": {**_OPEN, "responses": {"200": _json("Ready.", _ref("Ready")),
                                             "503": _ERRORS["503"]}},
        "ops.metadata": {"responses": {"200": _json("Model metadata.", _ref("Metadata")),
                                       "401": _ERRORS["401"], "503": _ERRORS["503"]}},
        "ops.metrics": {"responses": {
            "200": {"description": "Prometheus text exposition format.",
                    "content": {"text/plain": {"schema": {"type": "string"}}}},
            "401": _ERRORS["401"]}},
        "ops.openapi": {"responses": {"200": _json("OpenAPI document.", {"type": "object"}),
                                      "401": _ERRORS["401"]}},
        "ui.index": {**_OPEN, "responses": {"200": {
            "description": "HTML page.",
            "content": {"text/html": {"schema": {"type": "string"}}}}}},
        "sagemaker.ping": {**_OPEN, "responses": {"200": {"description": "Ready (empty body)."},
                                                  "503": _ERRORS["503"]}},
        **_v2_operations(),
        "sagemaker.invocations": {
            "parameters": [_EXPLAIN, _CUSTOM_ATTRIBUTES],
            "requestBody": _invocations_body(max_batch),
            "responses": {"200": _json("The prediction, or per-item results for a JSON batch.",
                                       {"oneOf": [_ref("Prediction"), _ref("BatchResponse")]}),
                          "406": _error("Accept does not allow application/json."), **_ERRORS,
                          **_NO_EXPLANATIONS},
        },
    }


_SKIPPED_ENDPOINTS = frozenset({"static"})
_IMPLICIT_METHODS = frozenset({"HEAD", "OPTIONS"})


def _operation(endpoint: str, view: Any, details: dict[str, Any] | None,
               secured: bool) -> dict[str, Any]:
    doc = (getattr(view, "__doc__", None) or endpoint).strip()
    lines = doc.splitlines()
    described = {"summary": lines[0].rstrip("."), "operationId": _operation_id(endpoint)}
    if len(lines) > 1:
        described["description"] = " ".join(line.strip() for line in lines[1:]).strip()
    default = {"responses": {"200": {"description": "OK"}, "4XX": _error("Client error.")}}
    operation = {**described, **(details or default)}
    if not secured:  # no token configured: no route answers 401
        operation["responses"] = {code: response for code, response
                                  in operation["responses"].items() if code != "401"}
    return operation


def _operation_id(endpoint: str) -> str:
    words = endpoint.replace(".", "_").split("_")
    return words[0] + "".join(word.title() for word in words[1:])


def openapi_path(rule: str) -> str:
    """werkzeug's /items/<int:id> → OpenAPI's /items/{id}."""
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def _paths(app: Flask, secured: bool) -> dict[str, Any]:
    operations = _operations(runtime(app).settings.max_batch)
    paths: dict[str, Any] = {}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        if rule.endpoint in _SKIPPED_ENDPOINTS:
            continue
        view = app.view_functions[rule.endpoint]
        for method in sorted((rule.methods or set()) - _IMPLICIT_METHODS):
            item = paths.setdefault(openapi_path(rule.rule), {})
            operation = _operation(rule.endpoint, view, operations.get(rule.endpoint), secured)
            item[method.lower()] = _with_path_arguments(operation, rule.arguments)
    return paths


def _with_path_arguments(operation: dict[str, Any], arguments: Any) -> dict[str, Any]:
    """Declare a rule's path arguments (/v2/models/{name}); a second rule of one view (its
    /versions/{version} form) gets an operationId of its own."""
    if not arguments:
        return operation
    declared = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                for name in sorted(arguments)]
    suffix = "Version" if "version" in arguments else ""
    return {**operation, "operationId": operation["operationId"] + suffix,
            "parameters": [*declared, *operation.get("parameters", [])]}


def openapi_spec(app: Flask) -> dict[str, Any]:
    """The OpenAPI document of exactly the routes `app` serves, as its settings serve them."""
    secured = bool(runtime(app).settings.api_token)
    document: dict[str, Any] = {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "MHIST polyp classifier",
            "version": "1.0.0",
            "description": "ONNX Runtime ResNet18 telling hyperplastic polyps (HP) from sessile "
                           "serrated adenomas (SSA) on H&E patches.",
        },
        "paths": _paths(app, secured),
        "components": {"schemas": {**schema_components(),
                                   **contracts_v2.schema_components()}},
    }
    if secured:  # MHIST_API_TOKEN is set: every route but the open ones (security: []) needs it
        document["components"]["securitySchemes"] = {"bearer": {"type": "http",
                                                                "scheme": "bearer"}}
        document["security"] = [{"bearer": []}]
    return document
