"""lambda/handler.py in-process: every event kind, every error path, INIT failure.

Expected answers come from the Flask test client on the same bytes (the handler wraps that
same app), never from hard-coded numbers. Events are built like AWS sends them
(tests/support/events.py) and carry a real image from the pipeline's sample.
"""

from __future__ import annotations

import base64
import json
from types import ModuleType

import pytest

from services.adapters.aws_lambda import app_of, event_shape
from services.core.errors import ModelLoadError
from services.web.app import create_app
from services.web.hooks import access_log
from services.web.settings import LAMBDA_MAX_CONTENT_LENGTH, SettingsError
from services.web.state import runtime
from tests.support.events import (
    EVENT_BUILDERS,
    make_alb_event,
    make_function_url_event,
    make_v1_event,
    make_v2_event,
    multipart_body,
)
from tests.support.lambda_local import LambdaContext, load_handler
from tests.support.logs import json_log_lines

SHAPES = {  # builder name → the event shape apig-wsgi (and the guard) must decide
    "rest_api": "v1",
    "http_api": "v2",
    "function_url": "v2",
    "alb": "alb",
}


@pytest.fixture(scope="module")
def lam(model_int8_path) -> ModuleType:
    return load_handler({"MODEL_PATH": str(model_int8_path), "CORS_ALLOW_ORIGINS": "",
                         "EMF_METRICS": "0", "MAX_CONTENT_LENGTH": ""})


@pytest.fixture(scope="module")
def flask_client(model_int8_path):
    return create_app({"MODEL_PATH": str(model_int8_path)}).test_client()


def call(module: ModuleType, event, request_id: str | None = None) -> dict:
    context = LambdaContext(**({"aws_request_id": request_id} if request_id else {}))
    return module.handler(event, context)


def header(response: dict, name: str) -> str | None:
    for key in ("headers", "multiValueHeaders"):
        for k, v in (response.get(key) or {}).items():
            if k.lower() == name.lower():
                return v[-1] if isinstance(v, list) else v
    return None


def body_json(response: dict) -> dict:
    assert response["isBase64Encoded"] is False
    return json.loads(response["body"])


def assert_shape(response: dict, builder: str, multi_value: bool = False) -> None:
    """The response fields each integration reads, in the form it expects."""
    assert isinstance(response["statusCode"], int)
    assert isinstance(response["body"], str)
    assert header(response, "content-type").startswith("application/json")
    if builder in ("http_api", "function_url"):
        assert "cookies" in response and "multiValueHeaders" not in response
        assert all(k == k.lower() for k in response["headers"])
    elif multi_value:
        assert "headers" not in response
        assert all(isinstance(v, list) for v in response["multiValueHeaders"].values())
    if builder == "alb":
        code = response["statusCode"]
        assert response["statusDescription"].startswith(f"{code} ")


def assert_error(response: dict, status: int, code: str) -> dict:
    assert response["statusCode"] == status, response
    body = body_json(response)
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code, body
    assert body["error"]["message"].strip()
    assert "Traceback" not in response["body"]
    return body


# --- same answers as Flask, every event kind, every payload style ---------------------------

@pytest.mark.parametrize("builder", list(EVENT_BUILDERS))
@pytest.mark.parametrize("style", ["raw", "json_base64", "multipart"])
def test_predict_equals_flask(lam, flask_client, sample_image_bytes, builder, style):
    if style == "raw":
        body, content_type, binary = sample_image_bytes, "image/png", True
        expected = flask_client.post("/predict", data=body, content_type=content_type)
    elif style == "json_base64":
        doc = {"image": base64.b64encode(sample_image_bytes).decode()}
        body, content_type, binary = json.dumps(doc), "application/json", False
        expected = flask_client.post("/predict", json=doc)
    else:
        body, content_type = multipart_body("image", "patch.png", sample_image_bytes)
        binary = True
        expected = flask_client.post("/predict", data=body, content_type=content_type)
    event = EVENT_BUILDERS[builder](method="POST", path="/predict", body=body, binary=binary,
                                    headers={"Content-Type": content_type})
    response = call(lam, event, request_id="req-123")
    assert expected.status_code == 200
    assert response["statusCode"] == 200
    assert body_json(response) == expected.get_json()
    assert header(response, "x-request-id") == "req-123"  # the AWS request id
    assert_shape(response, builder, multi_value=builder == "rest_api")


@pytest.mark.parametrize("builder", list(EVENT_BUILDERS))
def test_health_equals_flask(lam, flask_client, builder):
    response = call(lam, EVENT_BUILDERS[builder](method="GET", path="/health"))
    assert response["statusCode"] == 200
    assert body_json(response) == flask_client.get("/health").get_json()
    assert_shape(response, builder, multi_value=builder == "rest_api")


def test_alb_multi_value_headers_answered_in_kind(lam, flask_client, sample_image_bytes):
    event = make_alb_event(method="POST", path="/predict", body=sample_image_bytes, binary=True,
                           headers={"Content-Type": "image/png"}, multi_value_headers=True)
    response = call(lam, event)
    expected = flask_client.post("/predict", data=sample_image_bytes, content_type="image/png")
    assert body_json(response) == expected.get_json()
    assert_shape(response, "alb", multi_value=True)


def test_event_shape_is_decided_in_one_place():
    assert {name: event_shape(build(method="GET", path="/health"))
            for name, build in EVENT_BUILDERS.items()} == SHAPES


def test_client_request_id_is_kept(lam):
    event = make_v2_event(method="GET", path="/health", headers={"X-Request-ID": "client-42"})
    assert header(call(lam, event, request_id="aws-1"), "x-request-id") == "client-42"


# --- errors: the Flask app's own, passed through --------------------------------------------

@pytest.mark.parametrize("builder", list(EVENT_BUILDERS))
def test_bad_image_same_error_as_flask(lam, flask_client, builder):
    data = b"this is not an image"
    expected = flask_client.post("/predict", data=data, content_type="image/png")
    event = EVENT_BUILDERS[builder](method="POST", path="/predict", body=data, binary=True,
                                    headers={"Content-Type": "image/png"})
    response = call(lam, event)
    assert response["statusCode"] == expected.status_code == 400
    assert body_json(response) == expected.get_json()
    assert_shape(response, builder, multi_value=builder == "rest_api")


def test_unknown_route_and_wrong_method_are_json(lam, flask_client):
    for method, path in (("GET", "/nope"), ("GET", "/predict")):
        expected = flask_client.open(path, method=method)
        response = call(lam, make_v2_event(method=method, path=path))
        assert response["statusCode"] == expected.status_code
        assert body_json(response) == expected.get_json()


# --- errors the wrapper catches before the app ----------------------------------------------

def test_body_over_default_limit_is_413(lam):
    # Default limit 4.5 MB decoded: 4.6 MB arrives as ~6.1 MB of base64.
    settings = runtime(app_of(lam.handler)).settings
    assert settings.max_content_length == LAMBDA_MAX_CONTENT_LENGTH == 4_500_000
    data = b"\x89PNG" + b"\0" * 4_600_000
    for build in EVENT_BUILDERS.values():
        event = build(method="POST", path="/predict", body=data, binary=True,
                      headers={"Content-Type": "image/png"})
        assert_error(call(lam, event), 413, "payload_too_large")


def test_configured_limit_counts_decoded_bytes(model_int8_path, sample_image_bytes):
    small = load_handler({"MODEL_PATH": str(model_int8_path),
                          "MAX_CONTENT_LENGTH": str(len(sample_image_bytes))})
    fits = make_v2_event(method="POST", path="/predict", body=sample_image_bytes, binary=True,
                         headers={"Content-Type": "image/png"})
    assert call(small, fits)["statusCode"] == 200  # base64 text is longer; the bytes fit
    over = make_v2_event(method="POST", path="/predict", body=sample_image_bytes + b"\0",
                         binary=True, headers={"Content-Type": "image/png"})
    assert_error(call(small, over), 413, "payload_too_large")
    # Non-base64 (text) bodies are counted too: a JSON body over the limit.
    text = make_v1_event(method="POST", path="/predict", body="x" * (len(sample_image_bytes) + 1),
                         headers={"Content-Type": "application/json"})
    assert_error(call(small, text), 413, "payload_too_large")


@pytest.mark.parametrize("event", [
    {},
    {"Records": [{"eventSource": "aws:s3", "s3": {"bucket": {"name": "b"}}}]},
    {"version": "3.0", "rawPath": "/health"},
    {"source": "aws.events", "detail-type": "Scheduled Event"},
], ids=["empty", "s3", "unknown-version", "eventbridge"])
def test_non_http_event_is_400(lam, event):
    body = assert_error(call(lam, event), 400, "unsupported_event")
    assert "API Gateway" in body["error"]["message"]


@pytest.mark.parametrize("event", [[1, 2], "GET /health", None, 42], ids=str)
def test_non_object_event_is_400(lam, event):
    assert_error(call(lam, event), 400, "invalid_event")


def test_body_null(lam, flask_client):
    health = make_v1_event(method="GET", path="/health", body=None)
    assert health["body"] is None
    assert call(lam, health)["statusCode"] == 200
    # POST with body null is an empty upload: the app's own error, as Flask gives it.
    expected = flask_client.post("/predict", data=b"", content_type="image/png")
    event = make_v1_event(method="POST", path="/predict", body=None,
                          headers={"Content-Type": "image/png"})
    response = call(lam, event)
    assert response["statusCode"] == expected.status_code == 400
    assert body_json(response) == expected.get_json()


def test_body_not_a_string_is_400(lam):
    event = make_v2_event(method="POST", path="/predict", headers={"Content-Type": "image/png"})
    event["body"] = {"image": "abc"}  # what a console test event often holds
    body = assert_error(call(lam, event), 400, "invalid_event")
    assert "'body'" in body["error"]["message"]


def test_is_base64_encoded_true_but_body_is_not(lam):
    event = make_v1_event(method="POST", path="/predict", body="<<< not base64 >>>",
                          headers={"Content-Type": "image/png"})
    event["isBase64Encoded"] = True
    assert_error(call(lam, event), 400, "invalid_base64_body")


def test_is_base64_encoded_false_but_body_is_base64(lam, flask_client, sample_image_bytes):
    text = base64.b64encode(sample_image_bytes).decode()
    event = make_function_url_event(method="POST", path="/predict", body=text, binary=False,
                                    headers={"Content-Type": "image/png"})
    expected = flask_client.post("/predict", data=text.encode(), content_type="image/png")
    response = call(lam, event)
    assert response["statusCode"] == expected.status_code == 400
    assert body_json(response) == expected.get_json()


def test_is_base64_encoded_not_boolean_is_400(lam):
    event = make_v2_event(method="GET", path="/health")
    event["isBase64Encoded"] = "yes"
    assert_error(call(lam, event), 400, "invalid_event")


@pytest.mark.parametrize("breaker, field", [
    (lambda e: e.pop("path"), "path"),
    (lambda e: e.update(httpMethod=None), "httpMethod"),
    (lambda e: e.update(path="predict"), "path"),
    (lambda e: e.update(headers=["Content-Type: image/png"]), "headers"),
    (lambda e: e.update(multiValueHeaders={"Content-Type": "image/png"}), "multiValueHeaders"),
], ids=["no-path", "null-method", "relative-path", "headers-list", "multivalue-not-list"])
def test_malformed_v1_event_names_the_field(lam, breaker, field):
    event = make_v1_event(method="GET", path="/health", headers={"Accept": "*/*"})
    breaker(event)
    body = assert_error(call(lam, event), 400, "invalid_event")
    assert field in body["error"]["message"]


def test_malformed_v2_event_names_the_field(lam):
    event = make_v2_event(method="GET", path="/health")
    del event["requestContext"]["http"]
    body = assert_error(call(lam, event), 400, "invalid_event")
    assert "requestContext.http" in body["error"]["message"]
    event = make_v2_event(method="GET", path="/health")
    event["rawQueryString"] = 5
    assert_error(call(lam, event), 400, "invalid_event")


def test_v2_event_without_what_aws_always_sends_names_the_field(lam):
    """API Gateway and Function URLs always send sourceIp, protocol, rawQueryString, headers;
    an event without them is not theirs: a 400 naming the first field missing."""
    event = {"version": "2.0", "rawPath": "/health",
             "requestContext": {"http": {"method": "GET"}}}
    body = assert_error(call(lam, event), 400, "invalid_event")
    assert "requestContext.http.sourceIp" in body["error"]["message"]


# --- logs, metrics, CORS ---------------------------------------------------------------------

@pytest.fixture
def log_lines():
    """The JSON lines the app's access logger writes (stderr in Lambda, i.e. CloudWatch)."""
    with json_log_lines(access_log) as lines:
        yield lines


def test_one_json_log_line_per_invocation(lam, log_lines, sample_image_bytes):
    call(lam, make_v2_event(method="POST", path="/predict", body=sample_image_bytes, binary=True,
                            headers={"Content-Type": "image/png"}), request_id="aws-log-1")
    call(lam, {"not": "http"}, request_id="aws-log-2")
    assert [x["request_id"] for x in log_lines] == ["aws-log-1", "aws-log-2"]
    assert [x["status"] for x in log_lines] == [200, 400]
    assert all(x["latency_ms"] > 0 and x["target"] == "lambda" for x in log_lines)
    assert log_lines[0]["route"] == "/predict" and log_lines[0]["inference_ms"] > 0
    assert log_lines[1]["error"] == "unsupported_event"
    assert "_aws" not in log_lines[0]  # EMF off in this module


def test_emf_metrics(model_int8_path, log_lines, sample_image_bytes):
    emf = load_handler({"MODEL_PATH": str(model_int8_path), "EMF_METRICS": "1",
                        "EMF_NAMESPACE": "TestNs", "AWS_LAMBDA_FUNCTION_NAME": "fn-under-test"})
    call(emf, make_v2_event(method="POST", path="/predict", body=sample_image_bytes,
                            binary=True, headers={"Content-Type": "image/png"}))
    # INIT ran inside the capture: its one startup line, then the invocation's access line.
    startup, line = log_lines
    assert startup["event"] == "startup" and startup["session_s"] > 0
    directive = line["_aws"]["CloudWatchMetrics"][0]
    assert directive["Namespace"] == "TestNs"
    assert directive["Dimensions"] == [["FunctionName"]]
    assert {m["Name"] for m in directive["Metrics"]} == {"Latency", "InferenceTime"}
    assert line["FunctionName"] == "fn-under-test"
    assert 0 < line["InferenceTime"] <= line["Latency"]


def test_cors_origins(model_int8_path):
    cors = load_handler({"MODEL_PATH": str(model_int8_path),
                         "CORS_ALLOW_ORIGINS": "https://a.example, https://b.example"})
    allowed = call(cors, make_v2_event(method="GET", path="/health",
                                       headers={"Origin": "https://b.example"}))
    assert header(allowed, "access-control-allow-origin") == "https://b.example"
    assert header(allowed, "vary") == "Origin"
    other = call(cors, make_v2_event(method="GET", path="/health",
                                     headers={"Origin": "https://evil.example"}))
    assert header(other, "access-control-allow-origin") is None
    preflight = call(cors, make_alb_event(method="OPTIONS", path="/predict", headers={
        "Origin": "https://a.example", "Access-Control-Request-Method": "POST"}))
    assert preflight["statusCode"] == 204
    assert "POST" in header(preflight, "access-control-allow-methods")
    assert header(preflight, "access-control-allow-origin") == "https://a.example"


def test_no_cors_headers_by_default(lam):
    response = call(lam, make_v2_event(method="GET", path="/health",
                                       headers={"Origin": "https://a.example"}))
    assert header(response, "access-control-allow-origin") is None


# --- INIT ------------------------------------------------------------------------------------

def test_init_fails_clearly_without_model(tmp_path):
    missing = tmp_path / "nowhere.onnx"
    with pytest.raises(ModelLoadError) as info:
        load_handler({"MODEL_PATH": str(missing)})
    assert "Lambda INIT failed" in str(info.value) and str(missing) in str(info.value)


def test_init_fails_clearly_with_bad_model(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not an onnx protobuf")
    with pytest.raises(ModelLoadError, match="not a loadable ONNX model"):
        load_handler({"MODEL_PATH": str(bad)})


def test_init_rejects_bad_limit(model_int8_path):
    with pytest.raises(SettingsError, match="MAX_CONTENT_LENGTH='lots'"):
        load_handler({"MODEL_PATH": str(model_int8_path), "MAX_CONTENT_LENGTH": "lots"})
