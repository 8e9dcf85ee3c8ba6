"""HTTP request → image bytes: the one place every target decodes what a client sent.

Every target runs the one Flask app, so every caller passes a werkzeug `Request` and multipart
is always parsed by werkzeug's parser.

Accepted for one image (`single_image`):
  multipart/form-data            file field `image` (exactly one file)
  image/*, application/octet-stream, application/x-image   the raw body
  application/json               {"image": "<base64>"} (a `data:...;base64,` prefix is allowed)
Accepted for a batch (`batch_images`):
  multipart/form-data            several files in field `images` (or `image`), in order
  application/json               {"images": [b64, ...]} or {"instances": [{"image": b64}, ...]}
  a raw image body               a batch of one
Errors are ServiceError: 400 for a malformed payload, 413 over the body limit, 415 for any
other Content-Type. In a batch, an item that cannot be turned into bytes comes back as a
ServiceError in its slot, so one bad item never fails the whole batch.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import sys
from typing import Any

from werkzeug.datastructures import FileStorage, MultiDict
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.wrappers import Request

from services.core.errors import ServiceError
from services.web.limits import too_large

IMAGE_FIELD = "image"
BATCH_FIELD = "images"
INSTANCES_FIELD = "instances"
RAW_TYPES = ("application/octet-stream", "application/x-image")
ACCEPTED_TYPES = (
    "multipart/form-data",
    "application/json",
    "image/*",
    *RAW_TYPES,
)
DEFAULT_MAX_BATCH = 16

_DATA_URL = re.compile(r"^data:[\w.+-]+/[\w.+-]+(;[\w.+-]+=[\w.+-]+)*;base64,", re.IGNORECASE)
_WHITESPACE = re.compile(r"[ \t\r\n]+")

# Items in a decoded batch: the image bytes, or the error that item alone gets.
BatchItem = bytes | ServiceError


def single_image(request: Request) -> bytes:
    """The one image a request carries, or ServiceError (400/413/415)."""
    kind = _payload_kind(request)
    if kind == "multipart":
        return _one_file(_files(request).getlist(IMAGE_FIELD), request)
    body = _body(request)
    if kind == "raw":
        return _non_empty(body)
    document = _json_object(body)
    if IMAGE_FIELD not in document:
        raise _missing(IMAGE_FIELD, "JSON body", f'{{"{IMAGE_FIELD}": "<base64>"}}')
    item = _b64_item(document[IMAGE_FIELD], f'"{IMAGE_FIELD}"')
    if isinstance(item, ServiceError):
        raise item
    return item


def batch_images(request: Request, max_batch: int = DEFAULT_MAX_BATCH) -> list[BatchItem]:
    """Every image of a batch request, in order; a malformed item is a ServiceError in its slot.

    Whole-request problems (wrong type, bad JSON, no list, empty or over `max_batch`) raise.
    """
    kind = _payload_kind(request)
    if kind == "multipart":
        items: list[BatchItem] = list(_batch_files(request))
    elif kind == "raw":
        items = [_non_empty(_body(request))]
    else:
        items = _json_batch(_json_object(_body(request)))
    if not items:
        raise ServiceError(400, "empty_batch", "The batch holds no images; send at least one.")
    if len(items) > max_batch:
        raise ServiceError(
            400, "too_many_images",
            f"The batch holds {len(items)} images; the limit is {max_batch} per request.",
        )
    return items


def decode_base64(text: str) -> bytes:
    """Strict base64 → bytes: standard alphabet, correct padding; whitespace and a data-URL
    prefix are tolerated because `base64` wraps lines and browsers' FileReader adds the prefix.
    """
    text = _WHITESPACE.sub("", _DATA_URL.sub("", text, count=1))
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise ServiceError(
            400, "invalid_base64",
            "The image is not valid base64 (standard alphabet A-Z a-z 0-9 + /, '=' padding).",
        ) from None


# --- Content-Type ------------------------------------------------------------------------------

def _payload_kind(request: Request) -> str:
    """'multipart' | 'raw' | 'json', or 415 naming what is accepted."""
    mimetype = request.mimetype  # lower-cased, parameters stripped
    if mimetype == "multipart/form-data":
        if not request.mimetype_params.get("boundary"):
            raise ServiceError(
                400, "invalid_multipart",
                "multipart/form-data without a boundary parameter; let the HTTP client set "
                "the Content-Type header for form uploads.",
            )
        return "multipart"
    if mimetype.startswith("image/") or mimetype in RAW_TYPES:
        return "raw"
    if mimetype == "application/json" or (
        mimetype.startswith("application/") and mimetype.endswith("+json")
    ):
        return "json"
    shown = f"'{mimetype}'" if mimetype else "no Content-Type"
    raise ServiceError(
        415, "unsupported_media_type",
        f"Cannot read an image from {shown}; send one of: {', '.join(ACCEPTED_TYPES)}.",
    )


# --- body access (size limit) ------------------------------------------------------------------

def _body(request: Request) -> bytes:
    try:
        return request.get_data(cache=True)
    except RequestEntityTooLarge:
        raise too_large(request) from None


def _files(request: Request) -> MultiDict[str, FileStorage]:
    try:
        return request.files
    except RequestEntityTooLarge:
        raise too_large(request) from None


def _non_empty(data: bytes) -> bytes:
    if not data:
        raise ServiceError(400, "empty_image", "The request body is empty; send the image bytes.")
    return data


# --- multipart ---------------------------------------------------------------------------------

def _one_file(files: list[FileStorage], request: Request) -> bytes:
    if not files:
        raise _missing_file(request, IMAGE_FIELD)
    if len(files) > 1:
        raise ServiceError(
            400, "too_many_images",
            f"The form holds {len(files)} files in field '{IMAGE_FIELD}'; /predict takes one "
            "(use /predict/batch for several).",
        )
    data = files[0].read()
    if not data:
        raise ServiceError(400, "empty_image", f"The uploaded file '{files[0].filename}' is empty.")
    return data


def _batch_files(request: Request) -> list[bytes]:
    files = _files(request)
    plural, singular = files.getlist(BATCH_FIELD), files.getlist(IMAGE_FIELD)
    if plural and singular:
        # The relative order of two fields is lost by the form parser: refuse to guess it.
        raise ServiceError(
            400, "ambiguous_fields",
            f"Send the batch's files in one field, '{BATCH_FIELD}' or '{IMAGE_FIELD}', not both.",
        )
    chosen = plural or singular
    if not chosen:
        raise _missing_file(request, BATCH_FIELD)
    # Empty files stay in their slot: the model core reports them as `empty_image` items.
    return [storage.read() for storage in chosen]


def _missing_file(request: Request, field: str) -> ServiceError:
    if field in request.form or IMAGE_FIELD in request.form:
        return ServiceError(
            400, "missing_file",
            f"The form field '{field}' is text, not a file; upload the image as a file part.",
        )
    # werkzeug parses a malformed multipart body as an empty form, so say both possibilities.
    return _missing(field, "multipart form (or it is malformed)", f"a file part named '{field}'")


def _missing(field: str, where: str, expected: str) -> ServiceError:
    return ServiceError(400, "missing_field", f"The {where} has no '{field}'; expected {expected}.")


# --- JSON --------------------------------------------------------------------------------------

def _json_object(body: bytes) -> dict[str, Any]:
    if not body:
        raise ServiceError(400, "invalid_json", "The JSON body is empty.")
    try:
        text = body.decode("utf-8-sig")  # JSON is UTF-8 (RFC 8259); tolerate a BOM
    except UnicodeDecodeError as exc:
        raise ServiceError(
            400, "invalid_encoding", f"The JSON body is not UTF-8 (byte {exc.start})."
        ) from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ServiceError(
            400, "invalid_json",
            f"The body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}.",
        ) from None
    except RecursionError:
        raise ServiceError(400, "invalid_json", "The JSON body is nested too deeply.") from None
    except ValueError:
        # Not a JSONDecodeError: Python refuses integers of more than 4300 digits
        # (sys.get_int_max_str_digits) with a plain ValueError.
        raise ServiceError(
            400, "invalid_json",
            f"The JSON body holds a number of more than {sys.get_int_max_str_digits()} digits; "
            "images are sent as base64 strings.",
        ) from None
    if not isinstance(document, dict):
        raise ServiceError(
            400, "invalid_json_type",
            f"The JSON body is {_json_type(document)}; expected an object such as "
            f'{{"{IMAGE_FIELD}": "<base64>"}}.',
        )
    return document


def _json_batch(document: dict[str, Any]) -> list[BatchItem]:
    if BATCH_FIELD in document:
        values = _json_list(document[BATCH_FIELD], BATCH_FIELD)
        return [_b64_item(v, f'"{BATCH_FIELD}"[{i}]') for i, v in enumerate(values)]
    if INSTANCES_FIELD in document:
        values = _json_list(document[INSTANCES_FIELD], INSTANCES_FIELD)
        return [_instance_item(v, i) for i, v in enumerate(values)]
    raise _missing(
        BATCH_FIELD, "JSON body",
        f'{{"{BATCH_FIELD}": ["<base64>", ...]}} or '
        f'{{"{INSTANCES_FIELD}": [{{"{IMAGE_FIELD}": "<base64>"}}, ...]}}',
    )


def _json_list(value: Any, field: str) -> list[Any]:
    if not isinstance(value, list):
        raise ServiceError(
            400, "invalid_field_type",
            f"'{field}' is {_json_type(value)}; expected a list.",
        )
    return value


def _instance_item(value: Any, index: int) -> BatchItem:
    where = f'"{INSTANCES_FIELD}"[{index}]'
    if not isinstance(value, dict):
        return ServiceError(
            400, "invalid_field_type",
            f'{where} is {_json_type(value)}; expected {{"{IMAGE_FIELD}": "<base64>"}}.',
        )
    if IMAGE_FIELD not in value:
        return _missing(IMAGE_FIELD, f"item {where}", "a base64 string")
    return _b64_item(value[IMAGE_FIELD], f'{where}."{IMAGE_FIELD}"')


def _b64_item(value: Any, where: str) -> BatchItem:
    if not isinstance(value, str):
        return ServiceError(
            400, "invalid_field_type",
            f"{where} is {_json_type(value)}; expected a base64 string.",
        )
    try:
        return _non_empty_b64(decode_base64(value), where)
    except ServiceError as exc:
        return exc


def _non_empty_b64(data: bytes, where: str) -> bytes:
    if not data:
        raise ServiceError(400, "empty_image", f"{where} decodes to 0 bytes.")
    return data


def _json_type(value: Any) -> str:
    """'an array', 'a string', ... for messages."""
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
             type(None): "null"}
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "a number"
    return names.get(type(value), type(value).__name__)
