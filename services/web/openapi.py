"""OpenAPI 3.0 description of the app, generated from its url_map: a route added to any
blueprint appears here (with its docstring as summary) without touching this file; the
routes listed in `_OPERATIONS` get their request and response schemas too."""

from __future__ import annotations

import re
from typing import Any

from flask import Flask

from services.core.switches import OFF_WORDS, ON_WORDS
from services.web.payload import BATCH_FIELD, IMAGE_FIELD, INSTANCES_FIELD

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
        "type": "object", "required": ["label", "decision", "probabilities", "threshold",
                                       "model"],
        "properties": {
            "label": {"type": "string", "example": "SSA",
                      "description": "The class at the model's threshold (never changed by "
                                     "calibration)."},
            "decision": {"type": "string", "example": "uncertain",
                         "description": "The label, or \"uncertain\" when the served "
                         "P(positive) lies strictly inside the model's uncertain band (see "
                         "/metadata uncertain_band); equal to label when the file has none."},
            "probabilities": {"type": "object",
                              "additionalProperties": {"type": "number", "minimum": 0,
                                                       "maximum": 1},
                              "description": "softmax(logits / T), T from /metadata "
                                             "calibration (1 without it); full precision.",
                              "example": {"HP": 0.07, "SSA": 0.93}},
            "threshold": {"type": "number", "minimum": 0, "maximum": 1,
                          "description": "The decision threshold in the space of "
                                         "`probabilities` (calibrated when they are)."},
            "model": {"type": "object", "required": ["name", "version", "precision"],
                      "properties": {"name": {"type": "string"}, "version": {"type": "string"},
                                     "precision": {"type": "string",
                                                   "enum": ["fp32", "int8"]}}},
            "explanation": _ref("Explanation"),
            "warnings": {"type": "array", "items": _ref("InputWarning"),
                         "description": "Input quality warnings; [] when every check passed. "
                         "Present (with `quality`) on every prediction when the model file "
                         "records the training images' ranges (mhist.quality, see /metadata); "
                         "absent when it does not. Not computed per tile by /predict/region."},
            "quality": _ref("InputQuality"),
        },
    },
    "Explanation": {
        "type": "object", "required": ["method", "class", "grid"],
        "description": "Present only when asked for (explain=1). The class activation map of "
                       "the predicted class: Σ_k w_ck·A_k over the last feature map (equal to "
                       "Grad-CAM at the last convolution), ReLU, divided by its largest "
                       "magnitude. Batch items carry the grid without the overlay.",
        "properties": {
            "method": {"type": "string", "enum": ["cam"]},
            "class": {"type": "string", "description": "The class explained: the label."},
            "grid": {"type": "array", "description": "h×w map over the network input (7×7 "
                     "for 224 px; at most 16×16), row-major, values in [0, 1].",
                     "items": {"type": "array", "items": {"type": "number", "minimum": 0,
                                                           "maximum": 1}}},
            "overlay_png_base64": {"type": "string", "format": "byte",
                                   "description": "PNG of the map tinted over the network "
                                                  "input (the resized, centre-cropped image), "
                                                  "at the input size; single images only."},
        },
    },
    "InputWarning": {
        "type": "object", "required": ["code", "message", "value", "expected"],
        "description": "A statistic of the input outside the training images' range.",
        "properties": {
            "code": {"type": "string", "enum": ["blurry", "low_tissue", "unusual_stain"],
                     "description": "blurry: focus below range; low_tissue: tissue fraction "
                     "below range; unusual_stain: an optical density statistic outside it."},
            "message": {"type": "string"},
            "value": {"type": "number", "description": "The measured value."},
            "expected": {"type": "array", "items": {"type": "number"}, "minItems": 2,
                         "maxItems": 2, "description": "[low, high] from the training images."},
            "statistic": {"type": "string", "description": "unusual_stain only: which one, "
                          "e.g. od_mean.g or stain.eosin."},
        },
    },
    "InputQuality": {
        "type": "object", "required": ["focus", "tissue_fraction", "od_mean", "stain"],
        "description": "Measured on the RGB crop the network sees (before normalisation).",
        "properties": {
            "focus": {"type": "number", "minimum": 0,
                      "description": "Variance of the Laplacian of the grey crop."},
            "tissue_fraction": {"type": "number", "minimum": 0, "maximum": 1},
            "od_mean": {"type": "object", "nullable": True, "description": "Mean optical "
                        "density of the tissue pixels per channel (r, g, b); null with under "
                        "5 % tissue.", "additionalProperties": {"type": "number"}},
            "stain": {"type": "object", "nullable": True, "description": "Mean haematoxylin "
                      "and eosin concentrations (Ruifrok-Johnston colour deconvolution); null "
                      "with under 5 % tissue.", "additionalProperties": {"type": "number"}},
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
        "type": "object", "required": ["status"],
        "properties": {"status": {"type": "string", "enum": ["ready"]},
                       "model": {"type": "object", "description": "name, version, precision "
                                 "and sha256; with an API token set, for token holders only"}},
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
            "mpp": {"type": "number", "description": "µm per pixel of the network input."},
            "mpp_note": {"type": "string", "description": "Present when mpp was assumed."},
            "explain": {"type": "object", "description": "method and feature_output, present "
                        "when the file can answer explain=1."},
            "calibration": {"type": "object", "nullable": True, "description": "Temperature "
                            "scaling fitted on validation at export: method, temperature, "
                            "threshold (the uncalibrated `threshold` in calibrated P), "
                            "fitted_on, images, validation ECE/NLL before and after. null: "
                            "probabilities are softmax(logits)."},
            "uncertain_band": {"type": "object", "nullable": True, "description": "low and "
                               "high on the served P(positive): strictly between them the "
                               "decision is \"uncertain\"; chosen_on, target, and the "
                               "validation coverage and accuracy. null: no band."},
            "quality": {"type": "object", "description": "Input quality ranges from the "
                        "training images (present when the file records them)."},
        },
    },
    "RegionTile": {
        "type": "object",
        "required": ["x", "y", "width", "height", "tissue_fraction", "label"],
        "description": "One tile, in region pixels; p_<positive class> (p_ssa) is P(SSA).",
        "properties": {
            **{k: {"type": "integer"} for k in ("x", "y", "width", "height")},
            "tissue_fraction": {"type": "number", "minimum": 0, "maximum": 1},
            "p_ssa": {"type": "number", "minimum": 0, "maximum": 1},
            "label": {"type": "string"},
        },
    },
    "RegionResponse": {
        "type": "object",
        "required": ["tiles", "count", "grid", "scale", "summary", "heatmap", "threshold",
                     "model"],
        "properties": {
            "tiles": {"type": "array", "items": _ref("RegionTile")},
            "count": {"type": "integer", "description": "Tiles analysed (enough tissue)."},
            "grid": {"type": "object", "properties": {
                k: {"type": "integer"} for k in ("columns", "rows", "tile_px", "stride_px",
                                                 "background_tiles")}},
            "scale": {"type": "object", "properties": {
                "region_mpp": {"type": "number"}, "model_mpp": {"type": "number"},
                "mpp_source": {"type": "string", "enum": ["query", "model"]},
                "tile_um": {"type": "number"}}},
            "summary": {"type": "object", "description": "Tissue area (mm²), share of tissue "
                        "called positive, largest positive regions."},
            "heatmap": {"type": "object", "required": ["media_type", "base64"], "properties": {
                "media_type": {"type": "string", "enum": ["image/png"]},
                "base64": {"type": "string", "format": "byte"}}},
            "threshold": {"type": "number"},
            "model": {"type": "object"},
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
# Details for the routes that have them, by endpoint. A route without an entry still appears,
# described by its view's docstring: the paths come from the app's url_map, not from here.
_OPERATIONS: dict[str, dict[str, Any]] = {
    "api.predict": {
        "parameters": [_EXPLAIN],
        "requestBody": _predict_body(),
        "responses": {"200": _json("The prediction.", _ref("Prediction")), **_ERRORS,
                      **_NO_EXPLANATIONS},
    },
    "api.predict_batch": {
        "parameters": [_EXPLAIN],
        "requestBody": _batch_body(),
        "responses": {"200": _json("Per-item predictions or errors.", _ref("BatchResponse")),
                      **_ERRORS, **_NO_EXPLANATIONS},
    },
    "region.predict_region": {
        "parameters": [
            _query("mpp", {"type": "number", "exclusiveMinimum": True, "minimum": 0},
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
        "description": "HTML page.", "content": {"text/html": {"schema": {"type": "string"}}}}}},
    "sagemaker.ping": {**_OPEN, "responses": {"200": {"description": "Ready (empty body)."},
                                              "503": _ERRORS["503"]}},
    "sagemaker.invocations": {
        "parameters": [_EXPLAIN, _CUSTOM_ATTRIBUTES],
        "requestBody": _predict_body(),
        "responses": {"200": _json("The prediction, or per-item results for a JSON batch.",
                                   {"oneOf": [_ref("Prediction"), _ref("BatchResponse")]}),
                      "406": _error("Accept does not allow application/json."), **_ERRORS,
                      **_NO_EXPLANATIONS},
    },
}
_SKIPPED_ENDPOINTS = frozenset({"static"})
_IMPLICIT_METHODS = frozenset({"HEAD", "OPTIONS"})


def _operation(endpoint: str, view: Any) -> dict[str, Any]:
    doc = (getattr(view, "__doc__", None) or endpoint).strip()
    lines = doc.splitlines()
    described = {"summary": lines[0].rstrip("."), "operationId": _operation_id(endpoint)}
    if len(lines) > 1:
        described["description"] = " ".join(line.strip() for line in lines[1:]).strip()
    default = {"responses": {"200": {"description": "OK"}, "4XX": _error("Client error.")}}
    return {**described, **_OPERATIONS.get(endpoint, default)}


def _operation_id(endpoint: str) -> str:
    words = endpoint.replace(".", "_").split("_")
    return words[0] + "".join(word.title() for word in words[1:])


def openapi_path(rule: str) -> str:
    """werkzeug's /items/<int:id> → OpenAPI's /items/{id}."""
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def _paths(app: Flask) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        if rule.endpoint in _SKIPPED_ENDPOINTS:
            continue
        view = app.view_functions[rule.endpoint]
        for method in sorted((rule.methods or set()) - _IMPLICIT_METHODS):
            item = paths.setdefault(openapi_path(rule.rule), {})
            item[method.lower()] = _operation(rule.endpoint, view)
    return paths


def openapi_spec(app: Flask) -> dict[str, Any]:
    """The OpenAPI document of exactly the routes `app` serves."""
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "MHIST polyp classifier",
            "version": "1.0.0",
            "description": "ONNX Runtime ResNet18 telling hyperplastic polyps (HP) from sessile "
                           "serrated adenomas (SSA) on H&E patches.",
        },
        "paths": _paths(app),
        "components": {
            "schemas": _SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        # Applies only when the server has MHIST_API_TOKEN set; open routes override it.
        "security": [{"bearer": []}],
    }
