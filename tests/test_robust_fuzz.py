"""Property tests (hypothesis): no input escapes as anything but a result or a 4xx.

- decode + preprocess: arbitrary bytes, bytes behind a real format signature, and mutated
  real PNG/JPEG/TIFF/BMP/WebP files → a (3, S, S) finite float32 array or ServiceError 4xx;
- request decoding (services.web.payload):
  arbitrary Content-Type + body → bytes or ServiceError 4xx;
- the Lambda handler: arbitrary JSON-ish events, and real events with fields replaced by
  arbitrary JSON → a response dict with a 2xx-4xx statusCode, never an exception;
- the Flask and SageMaker apps: arbitrary method/path/headers/body → never a 5xx.

Deterministic (derandomize=True, no example database) and bounded for CI; raise
MHIST_FUZZ_SCALE (e.g. 20) for a longer local hunt.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from services.core.errors import ServiceError
from services.core.preprocessing import PreprocessSpec, preprocess_bytes
from services.web.payload import batch_images, single_image
from tests.support.corpus import encode, small_png, source_image
from tests.support.events import EVENT_BUILDERS
from tests.support.targets import (
    FlaskTarget,
    LambdaTarget,
    SageMakerTarget,
    Target,
    all_targets,
    lambda_reply,
)

SCALE = max(1, int(os.environ.get("MHIST_FUZZ_SCALE", "1")))
SPEC = PreprocessSpec(size=64, resize_size=73)
MAX_PIXELS = 2048 * 2048  # small enough that a mutated header cannot make a case slow
FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=150 * SCALE,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.filter_too_much],
)

SIGNATURES = [
    b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"\xff\xd8\xff\xe1", b"II*\x00", b"MM\x00*",
    b"BM", b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"RIFF\x00\x00\x00\x00WEBPVP8L", b"GIF89a",
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
]


def check_preprocess(data: bytes) -> None:
    """The property: an array of the spec's shape, or a ServiceError with a 4xx status."""
    try:
        array = preprocess_bytes(data, SPEC, MAX_PIXELS)
    except ServiceError as exc:
        assert 400 <= exc.status_code < 500, (exc.status_code, exc.code)
        assert exc.code and exc.message
        return
    assert array.shape == (3, SPEC.size, SPEC.size)
    assert array.dtype == np.float32
    assert np.isfinite(array).all()


@FUZZ
@given(st.binary(max_size=4096))
def test_preprocess_arbitrary_bytes(data: bytes) -> None:
    check_preprocess(data)


@FUZZ
@given(st.sampled_from(SIGNATURES), st.binary(max_size=2048))
def test_preprocess_bytes_behind_a_real_signature(signature: bytes, rest: bytes) -> None:
    check_preprocess(signature + rest)


@pytest.fixture(scope="module")
def real_files(sample_image_bytes: bytes) -> list[bytes]:
    """Small real files of every accepted format, from the sample image."""
    img = source_image(sample_image_bytes).resize((48, 40))
    return [
        sample_image_bytes,
        encode(img, "PNG"),
        encode(img.convert("P"), "PNG"),
        encode(img, "JPEG", quality=80),
        encode(img, "JPEG", quality=80, progressive=True),
        encode(img, "TIFF"),
        encode(img, "TIFF", compression="tiff_lzw"),
        encode(img, "BMP"),
        encode(img, "WEBP", quality=80),
        encode(img, "WEBP", lossless=True),
    ]


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(1, 255)),
    st.tuples(st.just("set"), st.integers(0, 10**6), st.integers(0, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 10**6), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.integers(0, 255)),
    st.tuples(st.just("delete"), st.integers(0, 10**6), st.integers(1, 64)),
)


def mutate(data: bytes, steps: list[tuple[str, int, int]]) -> bytes:
    buffer = bytearray(data)
    for op, position, value in steps:
        if not buffer:
            break
        # Headers are where parsers branch: half of the positions land in the first 64 bytes.
        at = position % (64 if position % 2 else len(buffer)) % len(buffer)
        if op == "flip":
            buffer[at] ^= value
        elif op == "set":
            buffer[at] = value
        elif op == "truncate":
            del buffer[at:]
        elif op == "insert":
            buffer[at:at] = bytes([value]) * (1 + position % 7)
        else:
            del buffer[at:at + value]
    return bytes(buffer)


@FUZZ
@given(st.data())
def test_preprocess_mutated_real_files(real_files: list[bytes], data: st.DataObject) -> None:
    original = data.draw(st.sampled_from(real_files), label="file")
    steps = data.draw(st.lists(mutation, min_size=1, max_size=6), label="mutations")
    check_preprocess(mutate(original, steps))


# --- request decoding ---------------------------------------------------------------------------

content_types = st.one_of(
    st.sampled_from([
        "", "image/png", "application/json", "multipart/form-data", "application/octet-stream",
        "multipart/form-data; boundary=x", "application/json; charset=latin-1", "text/plain",
        "application/vnd.api+json", "image/", "multipart/form-data; boundary=",
    ]),
    st.text(max_size=80),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True)
    | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["image", "images", "instances", "x", ""]) | st.text(max_size=8),
        inner, max_size=4),
    max_leaves=12,
)


def raw_request(content_type: str, body: bytes) -> Request:
    """A werkzeug Request from just a Content-Type and a body, as any WSGI server builds it."""
    environ = EnvironBuilder(method="POST", data=body).get_environ()
    environ["CONTENT_TYPE"] = content_type  # as sent: werkzeug's builder refuses some bytes
    request = Request(environ)
    request.max_content_length = 1 << 20
    return request


def check_payload(content_type: str, body: bytes) -> None:
    for call in (single_image, batch_images):
        try:
            result = call(raw_request(content_type, body))
        except ServiceError as exc:
            assert 400 <= exc.status_code < 500, (exc.status_code, exc.code)
            continue
        items = result if isinstance(result, list) else [result]
        for item in items:
            assert isinstance(item, bytes) or (
                isinstance(item, ServiceError) and 400 <= item.status_code < 500)


@FUZZ
@given(content_types, st.binary(max_size=512))
def test_payload_arbitrary_type_and_body(content_type: str, body: bytes) -> None:
    check_payload(content_type, body)


@FUZZ
@given(json_values)
def test_payload_arbitrary_json(document: Any) -> None:
    check_payload("application/json", json.dumps(document).encode())


# --- the Lambda handler -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def targets(model_int8_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Target]:
    return {t.name: t for t in all_targets(model_int8_path, tmp_path_factory.mktemp("fuzz"))}


def check_lambda_response(response: Any, head: bool = False) -> None:
    assert isinstance(response, dict), response
    status = response.get("statusCode")
    assert isinstance(status, int) and 200 <= status < 500, response
    reply = lambda_reply(response)
    if status >= 400 and not head:  # a HEAD answer has headers only
        assert reply.error_code, reply.body[:300]


SMALL_PNG = small_png((40, 32))
EVENT_KEYS = ["version", "httpMethod", "path", "rawPath", "rawQueryString", "headers",
              "multiValueHeaders", "queryStringParameters", "multiValueQueryStringParameters",
              "requestContext", "body", "isBase64Encoded", "cookies", "routeKey"]
json_ish = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.text(max_size=30)
    | st.sampled_from(["2.0", "1.0", "/predict", "/health", "POST", "GET", "image/png"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from([*EVENT_KEYS, "http", "method", "elb", "domainName", "content-type"])
        | st.text(max_size=10), inner, max_size=4),
    max_leaves=16,
)


@FUZZ
@given(json_ish)
def test_lambda_arbitrary_events(targets: dict[str, Target], event: Any) -> None:
    target = targets["lambda-http_api"]
    assert isinstance(target, LambdaTarget)
    check_lambda_response(target.invoke(event))


@FUZZ
@given(st.data())
def test_lambda_real_events_with_fields_replaced(targets: dict[str, Target],
                                                 data: st.DataObject) -> None:
    kind = data.draw(st.sampled_from(list(EVENT_BUILDERS)), label="kind")
    method = data.draw(st.sampled_from(["GET", "POST", "PUT", "OPTIONS", "HEAD"]), label="m")
    path = data.draw(st.sampled_from(["/predict", "/predict/batch", "/health", "/ready",
                                      "/metadata", "/", "/nope", "/predict/"]), label="path")
    event = EVENT_BUILDERS[kind](method=method, path=path, body=SMALL_PNG, binary=True,
                                 headers={"Content-Type": "image/png"})
    for key in data.draw(st.lists(st.sampled_from(EVENT_KEYS), max_size=3, unique=True),
                         label="replaced"):
        if data.draw(st.booleans(), label=f"delete {key}"):
            event.pop(key, None)
        else:
            event[key] = data.draw(json_ish, label=key)
    target = targets[f"lambda-{kind}"]
    assert isinstance(target, LambdaTarget)
    check_lambda_response(target.invoke(event), head=method == "HEAD")


# --- the Flask and SageMaker apps ---------------------------------------------------------------

header_values = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=60)


@FUZZ
@given(st.data())
def test_apps_never_answer_5xx(targets: dict[str, Target], data: st.DataObject) -> None:
    target = data.draw(st.sampled_from([targets["flask"], targets["sagemaker"]]), label="t")
    assert isinstance(target, FlaskTarget | SageMakerTarget)
    method = data.draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "OPTIONS"]), label="m")
    path = data.draw(st.sampled_from(["/predict", "/predict/batch", "/invocations", "/ping",
                                      "/health", "/metadata", "/execution-parameters"]),
                     label="path")
    headers = {
        # No CR or LF: no HTTP server passes them in a header (werkzeug's client refuses them).
        "Content-Type": data.draw(content_types.filter(lambda v: not {"\r", "\n"} & set(v)),
                                  label="content-type"),
        "Accept": data.draw(st.sampled_from(["", "*/*", "application/json", "image/png"])
                            | header_values, label="accept"),
        "X-Request-ID": data.draw(header_values, label="request id"),
    }
    body = data.draw(st.binary(max_size=256), label="body")
    reply = target.request(method, path, headers, body)
    assert reply.status < 500, (target.name, method, path, headers, reply.body[:300])
