"""The Open Inference Protocol (KServe "v2", Triton, MLServer) over REST, on every target.

    GET  /v2/health/live, /v2/health/ready, /v2
    GET  /v2/models/{name}[/versions/{version}]          tensors in and out
    GET  /v2/models/{name}[/versions/{version}]/ready
    POST /v2/models/{name}[/versions/{version}]/infer

A thin adapter like /invocations: the body is turned into image bytes (input `image`, BYTES,
one encoded image per element) or into a preprocessed FP32 batch (the graph's own input), the
one inference entry (services/web/inference.py) classifies it, and the predictions are laid out
as tensors: `probabilities` (FP32, N×C), `label` and `decision` (BYTES, N). What has no tensor
(threshold, warnings, ...) travels as parameters. Triton's binary tensor data extension is
spoken both ways: a body whose first `Inference-Header-Content-Length` bytes are the JSON and
the rest the tensors' bytes, and outputs asked for with `binary_data`.

Name and version are the model file's own (mhist.* metadata); any other is a 404. Errors on
these routes are `{"error": "..."}` (services/web/hooks.py picks the shape by path). Limits are
the app's: MAX_CONTENT_LENGTH for the body, MAX_BATCH for the images or rows of one request,
MAX_IMAGE_PIXELS for each image.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from math import prod
from typing import Any

import msgspec
import numpy as np
from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

from services.core import contracts_v2 as v2
from services.core.errors import ServiceError
from services.core.model import InferenceModel
from services.web.inference import Inference
from services.web.limits import too_large
from services.web.payload import BatchItem, decode_base64
from services.web.state import runtime

bp = Blueprint("v2", __name__, url_prefix="/v2")

SERVER_NAME = "mhist-onnx"
PROTOCOL_VERSION = "2.0"
EXTENSIONS = ["binary_tensor_data"]
PLATFORM = "onnxruntime_onnx"
IMAGE_INPUT = "image"
OUTPUTS = ("probabilities", "label", "decision")
HEADER_LENGTH = "Inference-Header-Content-Length"
ENDPOINT = "v2_infer"  # the inference metrics' endpoint label
BINARY_TYPE = "application/octet-stream"
_LENGTH_PREFIX = struct.Struct("<I")  # each BYTES element in binary: 4-byte LE length, bytes
# Fields of /predict's answer that are tensors, or the model reference (name/version already
# head the answer); every other field becomes a parameter.
_TENSOR_FIELDS = frozenset({"label", "decision", "probabilities", "model", "explanation"})


# --- health and metadata ----------------------------------------------------------------------


@bp.get("/health/live")
def live() -> Response:
    """Open Inference Protocol liveness: the process answers."""
    return jsonify(v2.to_json(v2.Live(live=True)))


@bp.get("/health/ready")
def server_ready() -> Response:
    """Open Inference Protocol readiness: the model is loaded (503 otherwise)."""
    state = runtime(current_app).state
    state.retry_if_due()
    state.require()
    return jsonify(v2.to_json(v2.ReadyV2(ready=True)))


@bp.get("")
def server_metadata() -> Response:
    """Open Inference Protocol server metadata: name, version, extensions."""
    return jsonify(
        v2.to_json(
            v2.ServerMetadata(name=SERVER_NAME, version=PROTOCOL_VERSION, extensions=EXTENSIONS)
        )
    )


@bp.get("/models/<name>")
@bp.get("/models/<name>/versions/<version>")
def model_metadata(name: str, version: str | None = None) -> Response:
    """Open Inference Protocol model metadata: the tensors the model takes and gives."""
    return jsonify(v2.to_json(describe(_served(name, version))))


@bp.get("/models/<name>/ready")
@bp.get("/models/<name>/versions/<version>/ready")
def model_ready(name: str, version: str | None = None) -> Response:
    """Open Inference Protocol model readiness (404 for a model this server does not serve)."""
    model = _served(name, version)
    return jsonify(v2.to_json(v2.ModelReady(name=model.metadata.name, ready=True)))


def describe(model: InferenceModel) -> v2.ModelMetadataV2:
    meta = model.metadata
    size = meta.preprocessing.size
    return v2.ModelMetadataV2(
        name=meta.name,
        versions=[meta.version],
        platform=PLATFORM,
        inputs=[
            v2.TensorMetadata(
                name=IMAGE_INPUT,
                datatype="BYTES",
                shape=[-1],
                parameters={
                    "content": "one encoded image (PNG, JPEG, TIFF, BMP, WebP) per element; "
                    "base64 text in JSON data"
                },
            ),
            v2.TensorMetadata(
                name=meta.input_name,
                datatype="FP32",
                shape=[-1, 3, size, size],
                parameters={"content": "preprocessed as /metadata's preprocessing says (NCHW)"},
            ),
        ],
        outputs=[
            v2.TensorMetadata(
                name="probabilities",
                datatype="FP32",
                shape=[-1, len(meta.classes)],
                parameters={"classes": ",".join(meta.classes)},
            ),
            v2.TensorMetadata(name="label", datatype="BYTES", shape=[-1]),
            v2.TensorMetadata(name="decision", datatype="BYTES", shape=[-1]),
        ],
        parameters={
            "classes": ",".join(meta.classes),
            "positive_class": meta.positive_class,
            "threshold": meta.served_threshold,
            "precision": meta.precision,
        },
    )


def _served(name: str, version: str | None) -> InferenceModel:
    """The loaded model when `name` (and `version`) are its own; 404 otherwise, 503 when none
    is loaded."""
    model = runtime(current_app).state.require()
    meta = model.metadata
    if name != meta.name:
        raise ServiceError(
            404,
            "model_not_found",
            f"Unknown model '{_shown(name)}'; this server serves '{meta.name}' "
            f"(GET /v2/models/{meta.name}).",
        )
    if version is not None and version != meta.version:
        raise ServiceError(
            404,
            "model_version_not_found",
            f"Model '{meta.name}' has no version '{_shown(version)}'; it has "
            f"version '{meta.version}'.",
        )
    return model


def _shown(text: str, limit: int = 64) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


# --- infer ------------------------------------------------------------------------------------


@bp.post("/models/<name>/infer")
@bp.post("/models/<name>/versions/<version>/infer")
def infer(name: str, version: str | None = None) -> Response:
    """Open Inference Protocol inference: BYTES images or an FP32 batch in, tensors out."""
    model = _served(name, version)
    _check_encoding()
    header, binary = _split(_body(), request.headers.get(HEADER_LENGTH))
    body = _decode(header)
    tensor = _single_input(body, model)
    binary_part = _binary_parts(body, binary)[0]
    max_batch = runtime(current_app).settings.max_batch
    if tensor.datatype == "BYTES":
        predictions = _classify_images(_image_items(tensor, binary_part, max_batch))
    else:
        predictions = Inference(current_app).tensors(
            _fp32_batch(tensor, binary_part, model, max_batch), ENDPOINT
        )
    return _answer(body, predictions, model)


def _check_encoding() -> None:
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise ServiceError(
            415,
            "unsupported_encoding",
            f"Cannot read a body with Content-Encoding '{_shown(encoding)}'; send it uncompressed.",
        )


def _body() -> bytes:
    try:
        return request.get_data(cache=True)
    except RequestEntityTooLarge:
        raise too_large(request) from None


def _split(body: bytes, declared: str | None) -> tuple[bytes, bytes]:
    """(JSON header, binary part) by the Inference-Header-Content-Length header."""
    if declared is None:
        return body, b""
    text = declared.strip()
    if not text.isdigit() or len(text) > 12:
        raise _bad(
            f"{HEADER_LENGTH} is '{_shown(declared)}'; expected the byte length of "
            "the JSON part of the body (a non-negative integer)."
        )
    length = int(text)
    if length > len(body):
        raise _bad(
            f"{HEADER_LENGTH} says {length} bytes of JSON, but the body has only {len(body)} bytes."
        )
    return body[:length], body[length:]


def _decode(header: bytes) -> v2.InferenceRequest:
    if not header:
        raise _bad("The body is empty; send the inference request's JSON.")
    try:
        return msgspec.json.decode(header, type=v2.InferenceRequest)
    except msgspec.ValidationError as exc:
        raise _bad(f"The inference request does not fit the protocol: {exc}.") from None
    except RecursionError:
        raise _bad("The inference request's JSON is nested too deeply.") from None
    except msgspec.DecodeError as exc:
        hint = (
            f" (is {HEADER_LENGTH} the length of the JSON part?)"
            if HEADER_LENGTH in request.headers
            else ""
        )
        raise _bad(f"The inference request is not valid JSON: {exc}{hint}.") from None


def _single_input(body: v2.InferenceRequest, model: InferenceModel) -> v2.RequestInput:
    """The one input this model takes per request: `image` (BYTES) or the graph's (FP32)."""
    meta = model.metadata
    expected = {IMAGE_INPUT: "BYTES", meta.input_name: "FP32"}
    names = ", ".join(f"'{n}' ({t})" for n, t in expected.items())
    if len(body.inputs) != 1:
        raise _bad(f"The request has {len(body.inputs)} inputs; send exactly one: {names}.")
    tensor = body.inputs[0]
    if tensor.name not in expected:
        raise _bad(f"Unknown input '{_shown(tensor.name)}'; this model takes {names}.")
    if tensor.datatype != expected[tensor.name]:
        raise _bad(f"Input '{tensor.name}' is {expected[tensor.name]}, not {tensor.datatype}.")
    for output in body.outputs or ():
        if output.name not in OUTPUTS:
            raise _bad(
                f"Unknown output '{_shown(output.name)}'; this model gives {', '.join(OUTPUTS)}."
            )
    return tensor


def _binary_parts(body: v2.InferenceRequest, binary: bytes) -> list[bytes | None]:
    """Each input's slice of the binary part (None: its data is in the JSON), the sizes
    declared by `binary_data_size` adding up to exactly the binary part."""
    parts: list[bytes | None] = []
    offset = 0
    for tensor in body.inputs:
        size = (tensor.parameters or {}).get("binary_data_size")
        if size is None:
            if tensor.data is None:
                raise _bad(f"Input '{tensor.name}' has neither data nor binary_data_size.")
            parts.append(None)
            continue
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise _bad(
                f"binary_data_size of input '{tensor.name}' is {size!r}; expected a byte count."
            )
        if tensor.data is not None:
            raise _bad(f"Input '{tensor.name}' has both data and binary_data_size; send one.")
        if offset + size > len(binary):
            raise _bad(
                f"Input '{tensor.name}' declares {size} bytes of binary data, but only "
                f"{len(binary) - offset} follow the JSON part."
            )
        parts.append(binary[offset : offset + size])
        offset += size
    if offset != len(binary):
        raise _bad(
            f"{len(binary) - offset} bytes after the JSON part belong to no input "
            f"(check {HEADER_LENGTH} and binary_data_size)."
        )
    return parts


def _batch_size(tensor: v2.RequestInput, max_batch: int, what: str) -> int:
    count = tensor.shape[0] if tensor.shape else 0
    if count < 1:
        raise _bad(
            f"Input '{tensor.name}' holds no {what}s (shape {tensor.shape}); send at least one."
        )
    if count > max_batch:
        raise _bad(
            f"Input '{tensor.name}' holds {count} {what}s; the limit is {max_batch} "
            "per request (MAX_BATCH)."
        )
    return count


# --- BYTES: encoded images --------------------------------------------------------------------


def _image_items(tensor: v2.RequestInput, binary: bytes | None, max_batch: int) -> list[BatchItem]:
    if len(tensor.shape) not in (1, 2) or (len(tensor.shape) == 2 and tensor.shape[1] != 1):
        raise _bad(
            f"Input '{IMAGE_INPUT}' has shape {tensor.shape}; expected [N] or [N, 1], "
            "one encoded image per element."
        )
    count = _batch_size(tensor, max_batch, "image")
    elements = (
        list(_bytes_elements(binary, count))
        if binary is not None
        else _json_elements(tensor.data or [], count)
    )
    return [
        element if element else ServiceError(400, "empty_image", "The element is empty.")
        for element in elements
    ]


def _bytes_elements(binary: bytes, count: int) -> Iterator[bytes]:
    """The binary form of a BYTES tensor: each element a 4-byte little-endian length and its
    bytes, `count` elements filling the slice exactly."""
    offset = 0
    for index in range(count):
        if offset + _LENGTH_PREFIX.size > len(binary):
            raise _bad(
                f"The binary data of '{IMAGE_INPUT}' ends before element {index} of "
                f"{count} (shape and data disagree)."
            )
        (length,) = _LENGTH_PREFIX.unpack_from(binary, offset)
        offset += _LENGTH_PREFIX.size
        if offset + length > len(binary):
            raise _bad(
                f"Element {index} of '{IMAGE_INPUT}' says {length} bytes, but only "
                f"{len(binary) - offset} remain."
            )
        yield binary[offset : offset + length]
        offset += length
    if offset != len(binary):
        raise _bad(
            f"The binary data of '{IMAGE_INPUT}' holds more than the {count} elements "
            "its shape says."
        )


def _json_elements(data: list[Any], count: int) -> list[bytes]:
    flat = data[0] if len(data) == 1 and isinstance(data[0], list) and count > 1 else data
    flat = [row[0] if isinstance(row, list) and len(row) == 1 else row for row in flat]
    if len(flat) != count:
        raise _bad(f"Input '{IMAGE_INPUT}' has shape [{count}] but {len(flat)} elements.")
    elements = []
    for index, value in enumerate(flat):
        if not isinstance(value, str):
            raise _bad(
                f"Element {index} of '{IMAGE_INPUT}' is not a string; in JSON each "
                "element is the base64 text of an encoded image."
            )
        try:
            elements.append(decode_base64(value))
        except ServiceError as exc:
            raise _bad(f"Element {index} of '{IMAGE_INPUT}': {exc.message}") from None
    return elements


def _classify_images(items: list[BatchItem]) -> list[dict]:
    """Through the one inference entry; one bad image fails the request (the protocol has no
    per-element errors), naming the element and keeping that image's own status."""
    answer = Inference(current_app).batch(items, ENDPOINT)
    for index, result in enumerate(answer["predictions"]):
        if "error" in result:
            raise ServiceError(
                result["status"],
                result["error"]["code"],
                f"Element {index} of '{IMAGE_INPUT}': {result['error']['message']}",
            )
    return answer["predictions"]


# --- FP32: a preprocessed batch ---------------------------------------------------------------


def _fp32_batch(
    tensor: v2.RequestInput, binary: bytes | None, model: InferenceModel, max_batch: int
) -> np.ndarray:
    size = model.metadata.preprocessing.size
    count = _batch_size(tensor, max_batch, "row")
    expected = [count, 3, size, size]
    if tensor.shape != expected:
        raise _bad(
            f"Input '{tensor.name}' has shape {tensor.shape}; expected [N, 3, {size}, "
            f"{size}] (N ≤ {max_batch}), preprocessed as /metadata says."
        )
    values = prod(expected)
    if binary is not None:
        if len(binary) != values * 4:
            raise _bad(
                f"Input '{tensor.name}' of shape {expected} needs {values * 4} bytes of "
                f"FP32 data; binary_data_size is {len(binary)}."
            )
        array = np.frombuffer(binary, dtype="<f4")
    else:
        try:
            with np.errstate(over="ignore"):  # beyond float32 becomes inf: refused below
                array = np.asarray(tensor.data, dtype=np.float32).reshape(-1)
        except (TypeError, ValueError):
            raise _bad(
                f"The data of '{tensor.name}' is not an array of numbers (nested lists "
                "must be regular)."
            ) from None
        if array.size != values:
            raise _bad(
                f"Input '{tensor.name}' has shape {expected} ({values} values) but "
                f"{array.size} values of data."
            )
    if not np.isfinite(array).all():
        raise _bad(f"Input '{tensor.name}' holds NaN or infinite values; send finite FP32.")
    return array.reshape(expected).astype(np.float32, copy=False)  # (N, 3, S, S)


# --- the answer -------------------------------------------------------------------------------


def _answer(body: v2.InferenceRequest, predictions: list[dict], model: InferenceModel) -> Response:
    meta = model.metadata
    tensors = _tensors(predictions, list(meta.classes))
    asked = body.outputs or [v2.RequestOutput(name=n) for n in OUTPUTS]
    all_binary = bool((body.parameters or {}).get("binary_data_output", False))
    outputs: list[v2.ResponseOutput] = []
    blobs: list[bytes] = []
    for wanted in asked:
        datatype, shape, values = tensors[wanted.name]
        if all_binary or (wanted.parameters or {}).get("binary_data", False):
            blob = _binary_tensor(datatype, values)
            blobs.append(blob)
            outputs.append(
                v2.ResponseOutput(
                    name=wanted.name,
                    datatype=datatype,
                    shape=shape,
                    parameters={"binary_data_size": len(blob)},
                )
            )
        else:
            outputs.append(
                v2.ResponseOutput(
                    name=wanted.name,
                    datatype=datatype,
                    shape=shape,
                    data=_json_tensor(datatype, values),
                )
            )
    answer = v2.InferenceResponse(
        model_name=meta.name,
        model_version=meta.version,
        id=body.id,
        outputs=outputs,
        parameters=_parameters(predictions, meta),
    )
    if not blobs:
        return jsonify(v2.to_json(answer))
    header = msgspec.json.encode(answer)
    response = Response(header + b"".join(blobs), content_type=BINARY_TYPE)
    response.headers[HEADER_LENGTH] = str(len(header))
    return response


def _tensors(predictions: list[dict], classes: list[str]) -> dict[str, tuple[str, list, Any]]:
    count = len(predictions)
    probabilities = np.array(
        [[p["probabilities"][c] for c in classes] for p in predictions], dtype=np.float32
    )  # (N, C)
    return {
        "probabilities": ("FP32", [count, len(classes)], probabilities),
        "label": ("BYTES", [count], [p["label"] for p in predictions]),
        "decision": ("BYTES", [count], [p.get("decision", p["label"]) for p in predictions]),
    }


def _binary_tensor(datatype: str, values: Any) -> bytes:
    if datatype == "FP32":
        return values.astype("<f4").tobytes()
    return b"".join(_LENGTH_PREFIX.pack(len(v)) + v for v in (s.encode() for s in values))


def _json_tensor(datatype: str, values: Any) -> list:
    return values.reshape(-1).tolist() if datatype == "FP32" else list(values)


def _parameters(predictions: list[dict], meta: Any) -> dict[str, Any]:
    """precision and classes (the model's), then every field of /predict's answer that is no
    tensor: a scalar when it is one and the same for every image of the request (threshold),
    else JSON text of a list with one entry per image (warnings, quality, ...)."""
    parameters: dict[str, Any] = {"precision": meta.precision, "classes": ",".join(meta.classes)}
    for key in (k for k in predictions[0] if k not in _TENSOR_FIELDS):
        values = [p.get(key) for p in predictions]
        shared = isinstance(values[0], (str, int, float, bool)) and all(
            v == values[0] for v in values
        )
        parameters[key] = values[0] if shared else json.dumps(values)
    return parameters


def _bad(message: str) -> ServiceError:
    return ServiceError(400, "invalid_inference_request", message)
