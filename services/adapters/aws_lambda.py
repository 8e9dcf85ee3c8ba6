"""AWS Lambda adapter: the one Flask app behind apig-wsgi, plus one guard for malformed events.

    handler = make_handler()      # lambda/handler.py; Lambda imports it once per environment

INIT (the import) builds the app with the `lambda` target's settings and loads the model from
MODEL_PATH; a missing or bad model raises ModelLoadError there, so Lambda reports an INIT
failure naming the file instead of failing every request.

apig-wsgi decides the event version (API Gateway REST / HTTP API payload 1.0, payload 2.0 and
Function URLs, ALB) and shapes the response; the app does everything else (routes, limits,
request ids, CORS, the log line). The guard only makes sure apig-wsgi can read the event: the
fields it reads have the types it expects, and an `isBase64Encoded` body is base64. Anything
else is a 400 JSON error in the event's own response shape, never an exception.

With S3_INPUT_URI set, `Records` events (S3 notifications, SQS batches of them) go to the S3
entry instead (services/adapters/s3_events.py): S3 in, S3 out.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Callable, Mapping
from http import HTTPStatus
from typing import Any

from apig_wsgi import make_lambda_handler
from flask import Flask

from services.adapters import s3_events
from services.core.errors import ModelLoadError, ServiceError
from services.web.app import create_app
from services.web.hooks import access_log, take_cold_start

LambdaHandler = Callable[[Any, Any], dict]


def make_handler(config: Mapping[str, Any] | None = None) -> LambdaHandler:
    """The Lambda entry point for a new app (built now: this is INIT)."""
    try:
        app = create_app({"TARGET": "lambda", **(config or {})})
    except ModelLoadError as exc:
        raise ModelLoadError(f"Lambda INIT failed: {exc}") from None
    wsgi = make_lambda_handler(app, binary_support=True)
    s3_entry = s3_events.entry_for(app)  # None unless S3_INPUT_URI is set

    def handler(event: Any, context: Any) -> dict:
        if s3_entry is not None and s3_events.is_records_event(event):
            return s3_entry(event, context)  # S3 notifications, or SQS batches of them
        started = time.perf_counter()
        try:
            shape = event_shape(event)
        except ServiceError as exc:
            _log_rejected(exc, context, started)
            return error_response(event, exc)
        response = wsgi(event, context)
        if shape == "alb":  # ALB wants the reason phrase too; apig-wsgi does not add it
            response["statusDescription"] = _status_line(response["statusCode"])
        return response

    handler.app = app  # type: ignore[attr-defined]  # for tests and tools: the app it serves
    return handler


def app_of(handler: LambdaHandler) -> Flask:
    return handler.app  # type: ignore[attr-defined]


def _log_rejected(exc: ServiceError, context: Any, started: float) -> None:
    """The app logs every request it sees; this is the line for an event it never saw."""
    access_log.info(json.dumps({
        "event": "request", "status": exc.status_code, "error": exc.code,
        "latency_ms": round((time.perf_counter() - started) * 1000.0, 3),
        "request_id": getattr(context, "aws_request_id", None), "target": "lambda",
        "cold_start": take_cold_start(),
    }))


# --- the guard ----------------------------------------------------------------------------------

def event_shape(event: Any) -> str:
    """'v1', 'v2' or 'alb', by apig-wsgi's own rule, once the event is safe for it to read;
    ServiceError 400 naming the problem otherwise."""
    if not isinstance(event, dict):
        raise _bad(f"the event is a {type(event).__name__}, not a JSON object")
    context = event.get("requestContext")
    if isinstance(context, dict) and "elb" in context:
        shape = "alb"
    elif event.get("version", "1.0") == "1.0" and "httpMethod" in event:
        shape = "v1"
    elif event.get("version") == "2.0":
        shape = "v2"
    else:
        raise ServiceError(
            400, "unsupported_event",
            "This function serves HTTP requests from API Gateway (REST or HTTP API), a Function "
            "URL or an Application Load Balancer; the event has neither 'httpMethod' nor "
            f"version '2.0' (keys: {', '.join(sorted(map(str, event))[:12]) or 'none'}).",
        )
    if shape == "v2":
        _check_v2(event)
    else:
        _check_v1(event)
    _check_body(event)
    return shape


def _check_v1(event: dict) -> None:
    _text(event, "httpMethod")
    _path(event, "path")
    for key, multi in (("headers", False), ("multiValueHeaders", True),
                       ("queryStringParameters", False),
                       ("multiValueQueryStringParameters", True)):
        _string_map(event, key, multi)


def _check_v2(event: dict) -> None:
    http = event.get("requestContext", {}).get("http") if isinstance(
        event.get("requestContext"), dict) else None
    if not isinstance(http, dict):
        raise _bad("event: 'requestContext.http' is missing (payload 2.0 needs it)")
    _text(http, "method", "requestContext.http.method")
    for key in ("sourceIp", "protocol"):
        _text(http, key, f"requestContext.http.{key}")
    _path(event, "rawPath")
    if not _is_text(event.get("rawQueryString")):
        raise _bad("event: 'rawQueryString' must be a string of valid Unicode")
    _string_map(event, "headers", multi=False)
    if not isinstance(event.get("headers"), dict):
        raise _bad("event: 'headers' must map names to a string")
    cookies = event.get("cookies", [])
    if not (isinstance(cookies, list) and all(_is_text(c) for c in cookies)):
        raise _bad("event: 'cookies' must be a list of strings of valid Unicode")


def _check_body(event: dict) -> None:
    body = event.get("body")
    if body is not None and not isinstance(body, str):
        raise _bad(f"event: 'body' is a {type(body).__name__}; API Gateway, URLs and ALBs "
                   "send a string (or null)")
    encoded = event.get("isBase64Encoded", False)
    if not isinstance(encoded, bool):
        raise _bad("event: 'isBase64Encoded' must be true or false")
    if body and not encoded and not _is_text(body):  # base64 is checked below
        raise _bad("event: 'body' is not valid Unicode (it holds a lone surrogate such as "
                   "\\ud800, which has no UTF-8 encoding)")
    if encoded and body:
        try:
            base64.b64decode(body, validate=True)  # apig-wsgi's decode would skip bad bytes
        except (binascii.Error, ValueError):
            raise ServiceError(
                400, "invalid_base64_body",
                "The event says isBase64Encoded=true but its body is not valid base64.",
            ) from None


def _is_text(value: Any) -> bool:
    """A str apig-wsgi can encode: JSON's "\\ud800" escapes decode to lone surrogates, and
    apig-wsgi's UTF-8 (body, query) and Latin-1 (path) encodings raise on them."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _text(container: dict, key: str, shown: str | None = None) -> None:
    if not _is_text(container.get(key)) or not container[key]:
        raise _bad(f"event: '{shown or key}' is missing or not a string of valid Unicode")


def _path(event: dict, key: str) -> None:
    _text(event, key)
    if not event[key].startswith("/"):
        raise _bad(f"event: '{key}' must start with '/'")


def _string_map(event: dict, key: str, multi: bool) -> None:
    """None or {str: str} ({str: [str, ...]} when `multi`), the only forms apig-wsgi reads."""
    value = event.get(key)
    if value is None:
        return

    def ok(item: Any) -> bool:
        if multi:
            return isinstance(item, list) and bool(item) and all(_is_text(i) for i in item)
        return _is_text(item)

    if not (isinstance(value, dict) and all(_is_text(k) and ok(v)
                                            for k, v in value.items())):
        expected = "a non-empty list of strings" if multi else "a string"
        expected += " of valid Unicode"
        raise _bad(f"event: '{key}' must map names to {expected}")


def _bad(reason: str) -> ServiceError:
    return ServiceError(400, "invalid_event", f"Malformed {reason}.")


# --- the guard's own answers, in the shape the event expects ------------------------------------

def error_response(event: Any, exc: ServiceError) -> dict:
    """A JSON error for an event apig-wsgi could not read: multi-value headers when the event
    uses them (REST APIs, ALB with them on), lower-case headers for payload 2.0."""
    headers = {"Content-Type": "application/json", "X-Content-Type-Options": "nosniff"}
    response: dict[str, Any] = {"statusCode": exc.status_code, "isBase64Encoded": False,
                                "body": json.dumps(exc.to_dict())}
    event = event if isinstance(event, dict) else {}
    context = event.get("requestContext")
    if event.get("version") == "2.0":
        response["headers"] = {name.lower(): value for name, value in headers.items()}
        response["cookies"] = []
    elif "multiValueHeaders" in event:
        response["multiValueHeaders"] = {name: [value] for name, value in headers.items()}
    else:
        response["headers"] = headers
    if isinstance(context, dict) and "elb" in context:
        response["statusDescription"] = _status_line(exc.status_code)
    return response


def _status_line(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return str(status)
