"""Bad-input battery: every malformed request gets its documented 4xx and a specific code, on
every target, and the target still serves afterwards.

Targets: the Flask app (test client), the Lambda handler under REST API v1, HTTP API v2,
Function URL and ALB events, and the SageMaker app (test client). The generic cases live in
tests/support/corpus.py (BAD_CASES); Lambda-only event cases and SageMaker-only content
negotiation cases are below.
"""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.corpus import BAD_CASES, BadCase, expected_for, small_png
from tests.support.events import EVENT_BUILDERS
from tests.support.targets import (
    LAMBDA_KINDS,
    LambdaTarget,
    Reply,
    Target,
    all_targets,
    lambda_reply,
)

TARGET_NAMES = ("flask", *(f"lambda-{kind}" for kind in LAMBDA_KINDS), "sagemaker")


@pytest.fixture(scope="module")
def targets(model_int8_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Target]:
    return {t.name: t for t in all_targets(model_int8_path, tmp_path_factory.mktemp("battery"))}


@pytest.fixture(scope="module")
def good_image(sample_image_bytes: bytes) -> bytes:
    return sample_image_bytes


def assert_error(reply: Reply, status: int, code: str) -> None:
    """The whole error answer: status, JSON type, exactly {"error": {"code", "message"}}."""
    assert (reply.status, reply.error_code) == (status, code), (reply.status, reply.body[:400])
    assert reply.headers.get("content-type", "").startswith("application/json")
    document = reply.json()
    assert set(document) == {"error"} and set(document["error"]) == {"code", "message"}
    message = document["error"]["message"]
    assert isinstance(message, str) and len(message) >= 10
    assert "Traceback" not in message and 'File "' not in message


def assert_still_serving(target: Target, image: bytes) -> None:
    health = target.request("GET", target.health_path)
    assert health.status == 200, (target.name, health.status, health.body[:200])
    prediction = target.predict(image, "image/png")
    assert prediction.status == 200, (target.name, prediction.body[:300])
    assert set(prediction.json()["probabilities"]) >= {"HP", "SSA"}


# --- the generic battery: every case × every target -------------------------------------------

def test_battery_is_big_enough() -> None:
    assert len(BAD_CASES) >= 40
    assert len({case.name for case in BAD_CASES}) == len(BAD_CASES)


@pytest.mark.parametrize("target_name", TARGET_NAMES)
@pytest.mark.parametrize("case", BAD_CASES, ids=[case.name for case in BAD_CASES])
def test_bad_input(case: BadCase, target_name: str, targets: dict[str, Target],
                   good_image: bytes) -> None:
    target = targets[target_name]
    headers, body = case.build()
    reply = target.request(case.method, target.resolve(case.path), headers, body)
    assert_error(reply, *expected_for(case, target.family))
    assert_still_serving(target, good_image)


# --- Lambda: events that are not what API Gateway, URLs or ALBs send --------------------------

def _predict_event(kind: str, **overrides: Any) -> dict:
    event = EVENT_BUILDERS[kind](method="POST", path="/predict", body=small_png(), binary=True,
                                 headers={"Content-Type": "image/png"})
    event.update(overrides)
    return event


def _without(event: dict, *path: str) -> dict:
    event = copy.deepcopy(event)
    holder = event
    for key in path[:-1]:
        holder = holder[key]
    del holder[path[-1]]
    return event


def _v1(**overrides: Any) -> dict:
    return _predict_event("rest_api", **overrides)


def _v2(**overrides: Any) -> dict:
    return _predict_event("http_api", **overrides)


S3_EVENT = {"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
                         "s3": {"bucket": {"name": "b"}, "object": {"key": "k.png"}}}]}
SQS_EVENT = {"Records": [{"messageId": "1", "eventSource": "aws:sqs", "body": "{}"}]}
SCHEDULE_EVENT = {"version": "0", "source": "aws.events", "detail-type": "Scheduled Event",
                  "detail": {}}

LAMBDA_EVENT_CASES: list[tuple[str, Any, int, str]] = [
    ("event-is-a-list", [1, 2, 3], 400, "invalid_event"),
    ("event-is-null", None, 400, "invalid_event"),
    ("event-is-a-string", "GET /health", 400, "invalid_event"),
    ("event-is-a-number", 7, 400, "invalid_event"),
    ("event-empty-object", {}, 400, "unsupported_event"),
    ("event-s3-notification", S3_EVENT, 400, "unsupported_event"),
    ("event-sqs-batch", SQS_EVENT, 400, "unsupported_event"),
    ("event-eventbridge-schedule", SCHEDULE_EVENT, 400, "unsupported_event"),
    ("event-version-3", _v2(version="3.0"), 400, "unsupported_event"),
    ("v1-missing-httpMethod", _without(_v1(), "httpMethod"), 400, "unsupported_event"),
    ("v1-httpMethod-number", _v1(httpMethod=5), 400, "invalid_event"),
    ("v1-missing-path", _without(_v1(), "path"), 400, "invalid_event"),
    ("v1-relative-path", _v1(path="predict"), 400, "invalid_event"),
    ("v1-headers-a-list", _v1(headers=["Content-Type: image/png"]), 400, "invalid_event"),
    ("v1-multivalue-headers-not-lists", _v1(multiValueHeaders={"Content-Type": "image/png"}),
     400, "invalid_event"),
    ("v1-query-a-string", _v1(queryStringParameters="a=b"), 400, "invalid_event"),
    ("v2-missing-requestContext", _without(_v2(), "requestContext"), 400, "invalid_event"),
    ("v2-missing-http", _without(_v2(), "requestContext", "http"), 400, "invalid_event"),
    ("v2-missing-method", _without(_v2(), "requestContext", "http", "method"), 400,
     "invalid_event"),
    ("v2-rawQueryString-number", _v2(rawQueryString=12), 400, "invalid_event"),
    ("v2-cookies-a-string", _v2(cookies="a=b"), 400, "invalid_event"),
    ("v2-headers-values-not-strings", _v2(headers={"content-type": ["image/png"]}), 400,
     "invalid_event"),
]


@pytest.mark.parametrize(("event", "status", "code"),
                         [pytest.param(e, s, c, id=n) for n, e, s, c in LAMBDA_EVENT_CASES])
def test_lambda_malformed_event(event: Any, status: int, code: str, targets: dict[str, Target],
                                good_image: bytes) -> None:
    target = targets["lambda-http_api"]
    assert isinstance(target, LambdaTarget)
    reply = lambda_reply(target.invoke(copy.deepcopy(event)))
    assert_error(reply, status, code)
    for name in TARGET_NAMES[1:-1]:
        assert_still_serving(targets[name], good_image)


def _body_null(kind: str) -> dict:
    event = _predict_event(kind)
    event["body"] = None
    event["isBase64Encoded"] = False
    return event


def _base64_lie_true(kind: str) -> dict:
    return _predict_event(kind, body="this is @@ not base64 !!", isBase64Encoded=True)


def _base64_lie_false(kind: str) -> dict:
    # A PNG base64-encoded but flagged as plain text: the app receives base64 characters.
    return _predict_event(kind, isBase64Encoded=False)


def _base64_flag_string(kind: str) -> dict:
    return _predict_event(kind, isBase64Encoded="true")


def _body_number(kind: str) -> dict:
    return _predict_event(kind, body=12345)


def _body_object(kind: str) -> dict:
    return _predict_event(kind, body={"image": "AAAA"})


def _over_limit(kind: str) -> dict:
    # 6 MB of base64 (4.5 MB decoded + a bit): over the lambda target's default MAX_CONTENT_LENGTH.
    body = base64.b64encode(b"\0" * 4_600_000).decode()
    return _predict_event(kind, body=body, isBase64Encoded=True)


def _json_base64_encoded(kind: str) -> dict:
    # HTTP APIs base64-encode any body they consider binary, JSON included: must still parse.
    document = json.dumps({"image": base64.b64encode(b"not an image").decode()}).encode()
    return EVENT_BUILDERS[kind](method="POST", path="/predict", body=document, binary=True,
                                headers={"Content-Type": "application/json"})


PER_KIND_CASES = {
    "body-null": (_body_null, 400, "empty_image"),
    "isBase64Encoded-true-but-not-base64": (_base64_lie_true, 400, "invalid_base64_body"),
    "isBase64Encoded-false-but-base64": (_base64_lie_false, 400, "invalid_image"),
    "isBase64Encoded-a-string": (_base64_flag_string, 400, "invalid_event"),
    "body-a-number": (_body_number, 400, "invalid_event"),
    "body-an-object": (_body_object, 400, "invalid_event"),
    "base64-body-over-limit": (_over_limit, 413, "payload_too_large"),
    "json-body-base64-encoded-bad-image": (_json_base64_encoded, 400, "invalid_image"),
}


@pytest.mark.parametrize("kind", LAMBDA_KINDS)
@pytest.mark.parametrize("case", sorted(PER_KIND_CASES))
def test_lambda_event_field_lies(case: str, kind: str, targets: dict[str, Target],
                                 good_image: bytes) -> None:
    build, status, code = PER_KIND_CASES[case]
    target = targets[f"lambda-{kind}"]
    assert isinstance(target, LambdaTarget)
    response = target.invoke(build(kind))
    reply = lambda_reply(response)
    assert_error(reply, status, code)
    if kind == "alb":  # ALB needs a status line description, errors included
        assert response["statusDescription"].startswith(f"{status} ")
    assert_still_serving(target, good_image)


# --- SageMaker: content negotiation -------------------------------------------------------------

SAGEMAKER_CASES = [
    ("accept-image-png", {"Content-Type": "image/png", "Accept": "image/png"}, 406,
     "not_acceptable"),
    ("accept-text-csv", {"Content-Type": "image/png", "Accept": "text/csv"}, 406,
     "not_acceptable"),
    ("accept-json-refused-by-q0", {"Content-Type": "image/png",
                                   "Accept": "application/json;q=0, text/html"}, 406,
     "not_acceptable"),
    ("content-type-text-csv", {"Content-Type": "text/csv"}, 415, "unsupported_media_type"),
    ("content-type-jsonlines", {"Content-Type": "application/jsonlines"}, 415,
     "unsupported_media_type"),
]


@pytest.mark.parametrize(("headers", "status", "code"),
                         [pytest.param(h, s, c, id=n) for n, h, s, c in SAGEMAKER_CASES])
def test_sagemaker_negotiation(headers: dict[str, str], status: int, code: str,
                               targets: dict[str, Target], good_image: bytes) -> None:
    target = targets["sagemaker"]
    assert_error(target.post("predict", headers, good_image), status, code)
    assert_still_serving(target, good_image)


@pytest.mark.parametrize(("method", "path", "status", "code"), [
    ("GET", "/invocations", 405, "method_not_allowed"),
    ("POST", "/ping", 405, "method_not_allowed"),
    ("DELETE", "/invocations", 405, "method_not_allowed"),
])
def test_sagemaker_wrong_method(method: str, path: str, status: int, code: str,
                                targets: dict[str, Target], good_image: bytes) -> None:
    target = targets["sagemaker"]
    assert_error(target.request(method, path, {"Content-Type": "image/png"}, b""), status, code)
    assert_still_serving(target, good_image)


@pytest.mark.parametrize("kind", ["http_api", "function_url"])
@pytest.mark.parametrize("stray", [1, "x", {"X-Request-ID": ["from-the-stray-key"]}])
def test_lambda_v2_stray_multi_value_headers_are_ignored(kind: str, stray: Any,
                                                         targets: dict[str, Target]) -> None:
    """Regression (found by the fuzz test): payload 2.0 has no multiValueHeaders; a stray key
    made the wrapper raise (500) or file X-Request-ID where apig-wsgi never looks."""
    target = targets[f"lambda-{kind}"]
    assert isinstance(target, LambdaTarget)
    event = _predict_event(kind, multiValueHeaders=stray)
    response = target.invoke(event)
    reply = lambda_reply(response)
    assert reply.status == 200, reply.body[:300]
    assert "multiValueHeaders" not in response
    assert reply.headers["x-request-id"] != "from-the-stray-key"
