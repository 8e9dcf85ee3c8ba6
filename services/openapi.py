"""OpenAPI 3.0 description of exactly the routes the Flask app serves (a test compares them)."""

from __future__ import annotations

from typing import Any

from services.payload import BATCH_FIELD, IMAGE_FIELD, INSTANCES_FIELD

OPENAPI_VERSION = "3.0.3"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _error(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": _ref("Error")}}}


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_BINARY = {"type": "string", "format": "binary"}
_BASE64 = {"type": "string", "format": "byte",
           "description": "Standard base64 of the image file; a data: URL prefix is allowed."}
_RAW_IMAGE_TYPES = ("image/png", "image/jpeg", "image/tiff", "image/bmp", "image/webp",
                    "application/octet-stream", "application/x-image")

_ERRORS = {
    "400": _error("Malformed payload or image (invalid_image, invalid_base64, invalid_json, "
                  "missing_field, ...)."),
    "401": _error("API token missing or wrong (only when MHIST_API_TOKEN is set)."),
    "413": _error("Body over the size limit, or image with too many pixels."),
    "415": _error("Unsupported Content-Type."),
    "503": _error("The model is not loaded."),
}

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object", "required": ["error"],
        "properties": {"error": {
            "type": "object", "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
        }},
    },
    "ItemError": {
        "allOf": [_ref("Error"), {"type": "object", "required": ["status"],
                                  "properties": {"status": {"type": "integer"}}}],
    },
    "Prediction": {
        "type": "object", "required": ["label", "probabilities", "threshold", "model"],
        "properties": {
            "label": {"type": "string", "example": "SSA"},
            "probabilities": {"type": "object",
                              "additionalProperties": {"type": "number", "minimum": 0,
                                                       "maximum": 1},
                              "example": {"HP": 0.07, "SSA": 0.93}},
            "threshold": {"type": "number", "minimum": 0, "maximum": 1},
            "model": {"type": "object", "required": ["name", "version", "precision"],
                      "properties": {"name": {"type": "string"}, "version": {"type": "string"},
                                     "precision": {"type": "string",
                                                   "enum": ["fp32", "int8"]}}},
        },
    },
    "BatchResponse": {
        "type": "object", "required": ["predictions", "count", "errors"],
        "properties": {
            "predictions": {"type": "array",
                            "items": {"oneOf": [_ref("Prediction"), _ref("ItemError")]}},
            "count": {"type": "integer"},
            "errors": {"type": "integer", "description": "How many items failed."},
        },
    },
    "Ready": {
        "type": "object", "required": ["status", "model"],
        "properties": {"status": {"type": "string", "enum": ["ready"]},
                       "model": {"type": "object"}},
    },
    "Metadata": {
        "type": "object",
        "required": ["name", "version", "precision", "classes", "positive_class", "threshold",
                     "preprocessing", "provenance", "metrics", "sha256"],
        "properties": {
            "name": {"type": "string"}, "version": {"type": "string"},
            "precision": {"type": "string"},
            "classes": {"type": "array", "items": {"type": "string"}},
            "positive_class": {"type": "string"}, "threshold": {"type": "number"},
            "preprocessing": {"type": "object"}, "provenance": {"type": "object"},
            "metrics": {"type": "object"}, "quantization": {"type": "object"},
            "sha256": {"type": "string"}, "file": {"type": "string"},
            "size_bytes": {"type": "integer"}, "intra_op_threads": {"type": "integer"},
            "onnxruntime": {"type": "string"},
        },
    },
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


def _batch_body() -> dict[str, Any]:
    images = {"type": "array", "items": _BASE64}
    instances = {"type": "array", "items": {
        "type": "object", "required": [IMAGE_FIELD], "properties": {IMAGE_FIELD: _BASE64}}}
    return {"required": True, "content": {
        "multipart/form-data": {"schema": {
            "type": "object",
            "properties": {BATCH_FIELD: {"type": "array", "items": _BINARY}}}},
        "application/json": {"schema": {"oneOf": [
            {"type": "object", "required": [BATCH_FIELD], "properties": {BATCH_FIELD: images}},
            {"type": "object", "required": [INSTANCES_FIELD],
             "properties": {INSTANCES_FIELD: instances}},
        ]}},
    }}


def _paths() -> dict[str, Any]:
    open_route: dict[str, Any] = {"security": []}
    return {
        "/predict": {"post": {
            "summary": "Classify one image (HP or SSA)", "operationId": "predict",
            "requestBody": _predict_body(),
            "responses": {"200": _json("The prediction.", _ref("Prediction")), **_ERRORS},
        }},
        "/predict/batch": {"post": {
            "summary": "Classify several images; one result per image, in order",
            "operationId": "predictBatch", "requestBody": _batch_body(),
            "responses": {"200": _json("Per-item predictions or errors.",
                                       _ref("BatchResponse")), **_ERRORS},
        }},
        "/health": {"get": {
            "summary": "Liveness", "operationId": "health", **open_route,
            "responses": {"200": _json("The process answers.", {"type": "object"})},
        }},
        "/ready": {"get": {
            "summary": "Readiness: the model is loaded", "operationId": "ready", **open_route,
            "responses": {"200": _json("Ready.", _ref("Ready")), "503": _ERRORS["503"]},
        }},
        "/metadata": {"get": {
            "summary": "What the model file says about itself", "operationId": "metadata",
            "responses": {"200": _json("Model metadata.", _ref("Metadata")),
                          "401": _ERRORS["401"], "503": _ERRORS["503"]},
        }},
        "/metrics": {"get": {
            "summary": "Prometheus metrics", "operationId": "metrics",
            "responses": {"200": {"description": "Prometheus text exposition format.",
                                  "content": {"text/plain": {"schema": {"type": "string"}}}},
                          "401": _ERRORS["401"]},
        }},
        "/openapi.json": {"get": {
            "summary": "This document", "operationId": "openapi",
            "responses": {"200": _json("OpenAPI document.", {"type": "object"}),
                          "401": _ERRORS["401"]},
        }},
        "/": {"get": {
            "summary": "Upload page", "operationId": "uploadPage", **open_route,
            "responses": {"200": {"description": "HTML page.",
                                  "content": {"text/html": {"schema": {"type": "string"}}}}},
        }},
    }


def openapi_spec() -> dict[str, Any]:
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "MHIST polyp classifier",
            "version": "1.0.0",
            "description": "ONNX Runtime ResNet18 telling hyperplastic polyps (HP) from sessile "
                           "serrated adenomas (SSA) on H&E patches.",
        },
        "paths": _paths(),
        "components": {
            "schemas": _SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        # Applies only when the server has MHIST_API_TOKEN set; open routes override it.
        "security": [{"bearer": []}],
    }
