"""AWS Lambda adapter: the Flask app of services/ behind apig-wsgi, so routes, JSON and errors
are exactly the Flask service's.

    handler(event, context)   Lambda entry point (`CMD ["handler.handler"]` in lambda/Dockerfile)

INIT (module import, once per execution environment) loads the ONNX model from MODEL_PATH;
a missing or bad model raises ModelLoadError here, so Lambda reports an INIT failure naming
the file instead of failing every request.

Per invocation, before the app sees anything, this wrapper
- decides the event kind in one place (`event_kind`): API Gateway REST API / HTTP API payload
  1.0, HTTP API payload 2.0, Function URL, ALB — anything else is a 400, never an exception;
- validates the fields apig-wsgi reads (a malformed event is a 400 naming the field), checks an
  `isBase64Encoded` body really is base64, and refuses bodies over MAX_BODY_BYTES with a 413;
- stamps the AWS request id as X-Request-ID (unless the client sent one), adds CORS headers for
  CORS_ALLOW_ORIGINS, and writes one JSON log line (optionally a CloudWatch EMF document).

Environment: MODEL_PATH, MAX_BODY_BYTES, CORS_ALLOW_ORIGINS ("*" or comma-separated origins),
EMF_METRICS (1/true), EMF_NAMESPACE, plus the Flask app's own (ORT_INTRA_OP_THREADS, ...).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from apig_wsgi import make_lambda_handler

from services.app import app_metrics, create_app
from services.errors import ModelLoadError, ServiceError

DEFAULT_MODEL_PATH = "/opt/model/model.onnx"
# Lambda's synchronous invoke payload limit is 6 MB (6,291,456 bytes) for the whole event.
# Binary bodies arrive base64-encoded (4/3 growth): 4.5 MB decoded is 6.0 MB of base64, which
# leaves ~290 kB for headers and the rest of the event.
DEFAULT_MAX_BODY_BYTES = 4_500_000
DEFAULT_EMF_NAMESPACE = "MhistClassifier"
CORS_ALLOW_METHODS = "GET, POST, OPTIONS"
CORS_ALLOW_HEADERS = "Content-Type, Authorization, X-Request-ID"
KINDS = ("api_gateway_v1", "api_gateway_v2", "function_url", "alb")

log = logging.getLogger("mhist.lambda")


@dataclass(frozen=True)
class LambdaSettings:
    model_path: str
    max_body_bytes: int
    cors_origins: tuple[str, ...]  # empty: no CORS headers
    emf: bool
    emf_namespace: str
    function_name: str

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> LambdaSettings:
        raw_limit = environ.get("MAX_BODY_BYTES") or str(DEFAULT_MAX_BODY_BYTES)
        if not raw_limit.isdigit() or int(raw_limit) <= 0:
            raise ValueError(f"MAX_BODY_BYTES={raw_limit!r} is not a positive integer (bytes)")
        origins = environ.get("CORS_ALLOW_ORIGINS", "")
        return cls(
            model_path=environ.get("MODEL_PATH") or DEFAULT_MODEL_PATH,
            max_body_bytes=int(raw_limit),
            cors_origins=tuple(o.strip() for o in origins.split(",") if o.strip()),
            emf=environ.get("EMF_METRICS", "").strip().lower() in ("1", "true", "yes", "on"),
            emf_namespace=environ.get("EMF_NAMESPACE") or DEFAULT_EMF_NAMESPACE,
            function_name=environ.get("AWS_LAMBDA_FUNCTION_NAME", "local"),
        )


def _init() -> tuple[LambdaSettings, Any, Any]:
    settings = LambdaSettings.from_env()
    try:
        app = create_app({
            "MODEL_PATH": settings.model_path,
            "MODEL_REQUIRED": True,
            # Flask enforces the same limit for bodies that pass the wrapper (e.g. multipart).
            "MAX_CONTENT_LENGTH": settings.max_body_bytes,
        })
    except ModelLoadError as exc:
        raise ModelLoadError(f"Lambda INIT failed: {exc}") from None
    if os.environ.get("AWS_LAMBDA_RUNTIME_API"):
        # Under a Lambda runtime the wrapper's invocation line replaces Flask's access line
        # (one JSON line per invocation). Only there: the logger is process-wide.
        logging.getLogger("mhist.access").setLevel(logging.WARNING)
    return settings, app, make_lambda_handler(app, binary_support=True)


SETTINGS, APP, _WSGI_HANDLER = _init()
_cold_start = True


# --- the one place that decides the event kind -------------------------------------------------

def event_kind(event: Any) -> str:
    """One of KINDS, or ServiceError 400 when the event is not an HTTP event we serve.

    Same rules as apig-wsgi: `requestContext.elb` means ALB; otherwise `version` (absent on
    REST APIs) picks 1.0 or 2.0. A 2.0 event on a *.lambda-url.* domain is a Function URL.
    """
    if not isinstance(event, dict):
        raise _bad_event(f"the event is a {type(event).__name__}, not a JSON object")
    context = event.get("requestContext")
    if isinstance(context, dict) and "elb" in context:
        return "alb"
    version = event.get("version")
    if version == "2.0":
        domain = context.get("domainName", "") if isinstance(context, dict) else ""
        return "function_url" if ".lambda-url." in str(domain) else "api_gateway_v2"
    if version in (None, "1.0") and "httpMethod" in event:
        return "api_gateway_v1"
    raise ServiceError(
        400, "unsupported_event",
        "This function serves HTTP requests from API Gateway (REST or HTTP API), a Function URL "
        "or an Application Load Balancer; the event has neither 'httpMethod' nor version '2.0' "
        f"(keys: {', '.join(sorted(map(str, event))[:12]) or 'none'}).",
    )


def _bad_event(reason: str) -> ServiceError:
    return ServiceError(400, "invalid_event", f"Malformed {reason}.")


# --- validation: every field apig-wsgi reads, so it can never raise KeyError/TypeError -------

def normalize_event(event: dict, kind: str) -> dict:
    """A shallow copy safe to hand to apig-wsgi; optional 2.0 fields get their defaults."""
    event = dict(event)
    if kind in ("api_gateway_v1", "alb"):
        _require_str(event, "httpMethod")
        _require_path(event, "path")
        _optional_map(event, "headers", list_values=False)
        _optional_map(event, "multiValueHeaders", list_values=True)
        _optional_map(event, "queryStringParameters", list_values=False)
        _optional_map(event, "multiValueQueryStringParameters", list_values=True)
    else:
        context = event["requestContext"] if isinstance(event.get("requestContext"), dict) else {}
        http = context.get("http")
        if not isinstance(http, dict):
            raise _bad_event("event: 'requestContext.http' is missing (payload 2.0 needs it)")
        _require_str(http, "method", "requestContext.http.method")
        http = {"sourceIp": "127.0.0.1", "protocol": "HTTP/1.1", **http}
        event["requestContext"] = {**context, "http": http}
        event.setdefault("rawPath", http.get("path"))
        _require_path(event, "rawPath")
        event.setdefault("rawQueryString", "")
        event.setdefault("headers", {})
        # Payload 2.0 has no multi-value headers and apig-wsgi ignores the key for it; a stray
        # one would make this wrapper put X-Request-ID there (lost) or crash on a non-map.
        event.pop("multiValueHeaders", None)
        _require_type(event, "rawQueryString", str)
        _optional_map(event, "headers", list_values=False)
        event["headers"] = event["headers"] or {}
        if not isinstance(event.get("cookies", []), list):
            raise _bad_event("event: 'cookies' must be a list of strings")
    if event.get("body") is not None and not isinstance(event["body"], str):
        raise _bad_event(f"event: 'body' is a {type(event['body']).__name__}; API Gateway, "
                         "URLs and ALBs send a string (or null)")
    if not isinstance(event.get("isBase64Encoded", False), bool):
        raise _bad_event("event: 'isBase64Encoded' must be true or false")
    return event


def _require_str(container: dict, key: str, shown: str | None = None) -> None:
    if not isinstance(container.get(key), str) or not container[key]:
        raise _bad_event(f"event: '{shown or key}' is missing or not a string")


def _require_path(event: dict, key: str) -> None:
    _require_str(event, key)
    if not event[key].startswith("/"):
        raise _bad_event(f"event: '{key}' must start with '/'")


def _require_type(event: dict, key: str, kind: type) -> None:
    if not isinstance(event.get(key), kind):
        raise _bad_event(f"event: '{key}' must be a {kind.__name__}")


def _optional_map(event: dict, key: str, list_values: bool) -> None:
    value = event.get(key)
    if value is None:
        return
    expected = "list of strings" if list_values else "string"
    ok = isinstance(value, dict) and all(
        isinstance(k, str) and (
            isinstance(v, list) and all(isinstance(i, str) for i in v) if list_values
            else isinstance(v, str)
        ) for k, v in value.items()
    )
    if not ok:
        raise _bad_event(f"event: '{key}' must map names to a {expected}")


def body_size(event: dict, limit: int) -> int:
    """Decoded body size; 413 over `limit`, 400 when `isBase64Encoded` is true but it is not."""
    body = event.get("body") or ""
    if not event.get("isBase64Encoded"):
        size = len(body.encode("utf-8"))
    else:
        # 3 bytes per 4 characters: refuse an oversized body before spending time decoding it.
        if len(body) * 3 // 4 - body.count("=", -2) > limit:
            raise _too_large(limit)
        try:
            size = len(base64.b64decode(body, validate=True))
        except (binascii.Error, ValueError):
            raise ServiceError(
                400, "invalid_base64_body",
                "The event says isBase64Encoded=true but its body is not valid base64.",
            ) from None
    if size > limit:
        raise _too_large(limit)
    return size


def _too_large(limit: int) -> ServiceError:
    return ServiceError(
        413, "payload_too_large",
        f"The request body is over {limit} bytes, this function's limit (Lambda's synchronous "
        "payload limit is 6 MB including base64 growth); send a smaller image.",
    )


# --- headers in whichever form the event kind uses ---------------------------------------------

def _request_header(event: Any, name: str) -> str | None:
    """A request header, case-insensitive; None also for an event too broken to have one."""
    if not isinstance(event, dict):
        return None
    for key in ("headers", "multiValueHeaders"):
        headers = event.get(key)
        if not isinstance(headers, dict):
            continue
        for header, value in headers.items():
            if isinstance(value, list):
                value = value[-1] if value else None
            if str(header).lower() == name.lower() and isinstance(value, str):
                return value
    return None


def _uses_multi_value(event: Any) -> bool:
    # apig-wsgi reads (and answers with) multiValueHeaders whenever the key is present.
    return isinstance(event, dict) and "multiValueHeaders" in event


def _with_request_header(event: dict, name: str, value: str) -> dict:
    if _uses_multi_value(event):
        return {**event, "multiValueHeaders": {**(event["multiValueHeaders"] or {}), name: [value]}}
    return {**event, "headers": {**(event.get("headers") or {}), name: value}}


def _set_response_headers(response: dict, kind: str, values: dict[str, str]) -> None:
    if kind == "api_gateway_v2" or kind == "function_url":
        values = {k.lower(): v for k, v in values.items()}  # 2.0 responses use lower case
    if "multiValueHeaders" in response:
        response["multiValueHeaders"].update({k: [v] for k, v in values.items()})
    else:
        response.setdefault("headers", {}).update(values)


def _response_header(response: dict, name: str) -> str | None:
    for key in ("headers", "multiValueHeaders"):
        for header, value in (response.get(key) or {}).items():
            if header.lower() == name.lower():
                return value[-1] if isinstance(value, list) else value
    return None


def _json_response(kind: str | None, event: Any, status: int, document: dict) -> dict:
    """A response built here (bad event, 413, preflight) in the shape the event kind expects."""
    response: dict[str, Any] = {"statusCode": status, "isBase64Encoded": False,
                                "body": json.dumps(document) if document else ""}
    headers = {"Content-Type": "application/json"}
    if kind in ("api_gateway_v1", "alb") and _uses_multi_value(event):
        response["multiValueHeaders"] = {k: [v] for k, v in headers.items()}
    else:
        response["headers"] = headers
    if kind in ("api_gateway_v2", "function_url"):
        response["cookies"] = []
        response["headers"] = {k.lower(): v for k, v in headers.items()}
    return response


def _cors_headers(origin: str | None) -> dict[str, str]:
    allowed = SETTINGS.cors_origins
    if not origin or not allowed:
        return {}
    if "*" in allowed:
        return {"Access-Control-Allow-Origin": "*"}
    if origin in allowed:
        return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
    return {}


# --- the entry point ----------------------------------------------------------------------------

def handler(event: Any, context: Any) -> dict:
    """Lambda entry point: an HTTP event in, an HTTP response for the same event kind out."""
    global _cold_start
    started = time.perf_counter()
    aws_request_id = getattr(context, "aws_request_id", None) or "local"
    kind: str | None = None
    method = path = None
    inference_s: float | None = None
    try:
        kind = event_kind(event)
        event = normalize_event(event, kind)
        method, path = _method_and_path(event, kind)
        body_size(event, SETTINGS.max_body_bytes)
        if _request_header(event, "x-request-id") is None:
            event = _with_request_header(event, "X-Request-ID", aws_request_id)
        response, inference_s = _call_app(event, context, kind, method)
    except ServiceError as exc:
        response = _json_response(kind, event, exc.status_code, exc.to_dict())
    except Exception:  # noqa: BLE001 - last line: a client gets JSON, the log gets the traceback
        log.error(json.dumps({"event": "unhandled_exception", "aws_request_id": aws_request_id,
                              "traceback": traceback.format_exc()}))
        response = _json_response(kind, event, 500, {"error": {
            "code": "internal_error",
            "message": f"Internal error; quote request id {aws_request_id} when reporting it."}})
    headers = {"X-Request-ID": _response_header(response, "x-request-id") or aws_request_id,
               # The app sets it on its answers; the wrapper's own (bad event, 413) need it too.
               "X-Content-Type-Options": "nosniff"}
    origin = _request_header(event, "origin") if kind else None
    headers.update(_cors_headers(origin))
    _set_response_headers(response, kind or "", headers)
    if kind == "alb":
        status = response["statusCode"]
        response["statusDescription"] = f"{status} {_phrase(status)}"
    _log_invocation(aws_request_id, kind, method, path, response, started, inference_s)
    _cold_start = False
    return response


def _method_and_path(event: dict, kind: str) -> tuple[str, str]:
    if kind in ("api_gateway_v1", "alb"):
        return event["httpMethod"], event["path"]
    return event["requestContext"]["http"]["method"], event["rawPath"]


def _call_app(event: dict, context: Any, kind: str, method: str) -> tuple[dict, float | None]:
    """Preflight answered here; everything else goes through apig-wsgi to Flask."""
    if (method == "OPTIONS" and SETTINGS.cors_origins
            and _request_header(event, "access-control-request-method")):
        response = _json_response(kind, event, 204, {})
        _set_response_headers(response, kind, {
            "Access-Control-Allow-Methods": CORS_ALLOW_METHODS,
            "Access-Control-Allow-Headers": CORS_ALLOW_HEADERS,
            "Access-Control-Max-Age": "600",
        })
        return response, None
    before = _inference_seconds_total()
    response = _WSGI_HANDLER(event, context)
    spent = _inference_seconds_total() - before
    return response, (spent if spent > 0 else None)


def _inference_seconds_total() -> float:
    """Sum of the app's inference histogram (prometheus public API); its delta across one call
    is this invocation's model time (decode + preprocess + session.run)."""
    registry = app_metrics(APP).registry
    return sum(registry.get_sample_value("mhist_inference_duration_seconds_sum",
                                         {"endpoint": endpoint}) or 0.0
               for endpoint in ("predict", "predict_batch"))


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def _log_invocation(aws_request_id: str, kind: str | None, method: str | None, path: str | None,
                    response: dict, started: float, inference_s: float | None) -> None:
    """One JSON line on stdout (CloudWatch Logs); with EMF_METRICS it is also an EMF document."""
    latency_ms = round((time.perf_counter() - started) * 1000.0, 3)
    line: dict[str, Any] = {
        "event": "invocation",
        "aws_request_id": aws_request_id,
        "request_id": _response_header(response, "x-request-id"),
        "kind": kind,
        "method": method,
        "path": path,
        "status": response.get("statusCode"),
        "latency_ms": latency_ms,
        "cold_start": _cold_start,
    }
    if inference_s is not None:
        line["inference_ms"] = round(inference_s * 1000.0, 3)
    if SETTINGS.emf:
        line.update(_emf(line))
    print(json.dumps(line), flush=True)


def _emf(line: dict) -> dict:
    """CloudWatch embedded metric format: the log line itself carries the metric values."""
    metrics = [{"Name": "Latency", "Unit": "Milliseconds"}]
    values = {"Latency": line["latency_ms"]}
    if "inference_ms" in line:
        metrics.append({"Name": "InferenceTime", "Unit": "Milliseconds"})
        values["InferenceTime"] = line["inference_ms"]
    return {
        "_aws": {
            "Timestamp": int(time.time() * 1000),
            "CloudWatchMetrics": [{
                "Namespace": SETTINGS.emf_namespace,
                "Dimensions": [["FunctionName"]],
                "Metrics": metrics,
            }],
        },
        "FunctionName": SETTINGS.function_name,
        **values,
    }
