"""Per-request hooks and error handlers shared by every target (Flask, Lambda, SageMaker).

- request id: the client's X-Request-ID when it is safe to log, else Lambda's aws_request_id
  (apig-wsgi passes the context in the WSGI environ), else a fresh one; echoed back;
- CORS for CORS_ALLOW_ORIGINS, preflight answered before the token check;
- the API token (MHIST_API_TOKEN) on every route but the open ones;
- security headers; Prometheus metrics; one JSON access-log line per request (never the body),
  which is also a CloudWatch EMF document when EMF_METRICS is on; the model's time as a
  `Server-Timing: predict;dur=MS` header;
- every error leaves as `{"error": {"code", "message"}}`, never a traceback.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import re
import sys
import time
import uuid
from typing import Any

from flask import Flask, Response, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException

from services.core.errors import ServiceError
from services.web.limits import too_large
from services.web.metrics import UNMATCHED_ROUTE
from services.web.settings import Settings
from services.web.state import runtime

# Routes anyone may call even when an API token is set: probes and the static page itself
# (the page asks for the token and sends it with its own API calls). SageMaker's /ping is a
# probe too: the platform sends no token.
OPEN_ENDPOINTS = frozenset({"ops.health", "ops.ready", "ui.index", "static", "sagemaker.ping",
                            "v2.live", "v2.server_ready"})
# The page's CSS/JS/images come from this origin only; previews are blob: URLs.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
CORS_ALLOW_METHODS = "GET, POST, OPTIONS"
CORS_ALLOW_HEADERS = "Content-Type, Authorization, X-Request-ID"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")  # anything else could forge log lines

access_log = logging.getLogger("mhist.access")
error_log = logging.getLogger("mhist.error")
_first_request = True  # per process: marks a Lambda (or worker) cold start in the log line


def register(app: Flask, settings: Settings) -> None:
    app.before_request(_start_request)
    app.after_request(_finish_request)
    app.register_error_handler(ServiceError, _service_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected_error)


def configure_logging(level: str = "info") -> None:
    """JSON lines on stderr, where gunicorn, container runtimes and CloudWatch collect them."""
    for logger in (access_log, error_log):
        if not logger.handlers:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(message)s"))
            logger.addHandler(handler)
            logger.propagate = False
        logger.setLevel(level.upper())


def take_cold_start() -> bool:
    """True for the first request this process serves (a Lambda cold start), then False."""
    global _first_request
    first, _first_request = _first_request, False
    return first


def note_inference(seconds: float) -> None:
    """Routes report model time here; it goes to the access line (and EMF) of this request."""
    g.inference_seconds = g.get("inference_seconds", 0.0) + seconds


# --- before / after ---------------------------------------------------------------------------

def _start_request() -> Response | None:
    g.started = time.perf_counter()
    g.request_id = _request_id()
    settings = runtime_settings()
    if _is_preflight(settings):
        return _preflight()
    _check_token(settings.api_token)
    return None


def _finish_request(response: Response) -> Response:
    response.headers["X-Request-ID"] = g.get("request_id", "")
    if "inference_seconds" in g:
        # The model's share of this request (decode to answer), W3C Server-Timing: a client
        # (browser devtools, benchmarks/overhead.py) can tell it from the HTTP around it.
        response.headers["Server-Timing"] = f"predict;dur={g.inference_seconds * 1000.0:.3f}"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers.update(_cors_headers(runtime_settings()))
    _record(response.status_code)
    return response


def runtime_settings() -> Settings:
    return runtime(current_app).settings


def _request_id() -> str:
    incoming = request.headers.get("X-Request-ID", "")
    if _REQUEST_ID.match(incoming):
        return incoming
    aws_id = getattr(request.environ.get("apig_wsgi.context"), "aws_request_id", None)
    if isinstance(aws_id, str) and _REQUEST_ID.match(aws_id):
        return aws_id
    return uuid.uuid4().hex


def _check_token(token: str | None) -> None:
    if not token or request.endpoint in OPEN_ENDPOINTS:
        return
    if not has_token(token):
        raise ServiceError(
            401, "unauthorized",
            "Missing or wrong API token; send 'Authorization: Bearer <MHIST_API_TOKEN>'.",
            headers={"WWW-Authenticate": 'Bearer realm="mhist"'},  # RFC 6750: say the scheme
        )


def has_token(token: str) -> bool:
    """The request carries `Authorization: Bearer <token>`."""
    scheme, _, offered = request.headers.get("Authorization", "").partition(" ")
    # compare_digest on bytes: constant time, and no TypeError on non-ASCII input.
    return scheme.lower() == "bearer" and hmac.compare_digest(
        offered.strip().encode(), token.encode()
    )


# --- CORS -------------------------------------------------------------------------------------

def _is_preflight(settings: Settings) -> bool:
    return (request.method == "OPTIONS" and bool(settings.cors_allow_origins)
            and "Origin" in request.headers
            and "Access-Control-Request-Method" in request.headers)


def _preflight() -> Response:
    response = Response(status=204)
    response.headers.update({
        "Access-Control-Allow-Methods": CORS_ALLOW_METHODS,
        "Access-Control-Allow-Headers": CORS_ALLOW_HEADERS,
        "Access-Control-Max-Age": "600",
    })
    return response


def _cors_headers(settings: Settings) -> dict[str, str]:
    origin = request.headers.get("Origin")
    allowed = settings.cors_allow_origins
    if not origin or not allowed:
        return {}
    if "*" in allowed:
        return {"Access-Control-Allow-Origin": "*"}
    if origin in allowed:
        return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
    return {}


# --- metrics and the access line --------------------------------------------------------------

def _record(status: int) -> None:
    """Metrics + one JSON access-log line. Never the body: image bytes stay out of logs."""
    current = runtime(current_app)
    seconds = time.perf_counter() - g.get("started", time.perf_counter())
    route = request.url_rule.rule if request.url_rule else UNMATCHED_ROUTE
    current.metrics.observe_request(route, request.method, status, seconds)
    line: dict[str, Any] = {
        "event": "request", "method": request.method, "route": route, "path": request.path,
        "status": status, "latency_ms": round(seconds * 1000.0, 3),
        "request_id": g.get("request_id"), "content_length": request.content_length,
        "remote_addr": request.remote_addr, "pid": os.getpid(),
        "target": current.settings.target, "cold_start": take_cold_start(),
    }
    if "inference_seconds" in g:
        line["inference_ms"] = round(g.inference_seconds * 1000.0, 3)
    if current.settings.emf_metrics:
        line.update(_emf(line, current.settings))
    access_log.info(json.dumps(line))


def _emf(line: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """CloudWatch embedded metric format: the log line itself carries the metric values."""
    metrics = [{"Name": "Latency", "Unit": "Milliseconds"}]
    values = {"Latency": line["latency_ms"]}
    if "inference_ms" in line:
        metrics.append({"Name": "InferenceTime", "Unit": "Milliseconds"})
        values["InferenceTime"] = line["inference_ms"]
    return {
        "_aws": {
            "Timestamp": int(time.time() * 1000),
            "CloudWatchMetrics": [{"Namespace": settings.emf_namespace,
                                   "Dimensions": [["FunctionName"]], "Metrics": metrics}],
        },
        "FunctionName": settings.function_name,
        **values,
    }


# --- errors -----------------------------------------------------------------------------------

def _service_error(exc: ServiceError) -> tuple[Response, int, dict[str, str]]:
    return jsonify(_shaped(exc.to_dict())), exc.status_code, exc.headers


def _shaped(body: dict) -> dict:
    """The Open Inference Protocol's routes (/v2...) answer errors as {"error": "message"}."""
    path = request.path
    if path == "/v2" or path.startswith("/v2/"):
        return {"error": body["error"]["message"]}
    return body


def _http_error(exc: HTTPException) -> Response:
    response = exc.get_response()  # keeps headers such as Allow on a 405
    response.data = json.dumps(_shaped(http_error_body(exc)))
    response.content_type = "application/json"
    return response


def http_error_body(exc: HTTPException) -> dict:
    code = re.sub(r"[^a-z0-9]+", "_", (exc.name or "error").lower()).strip("_")
    if exc.code == 413 and request:  # say which limit, as the payload decoder does
        return too_large(request).to_dict()
    return {"error": {"code": code, "message": exc.description or exc.name}}


def _unexpected_error(exc: Exception) -> tuple[Response, int]:
    # The traceback goes to the log, tagged with the request id; the client gets none.
    error_log.exception(json.dumps({
        "event": "unhandled_exception", "request_id": g.get("request_id"),
        "type": type(exc).__name__,
    }))
    body = {"error": {"code": "internal_error", "message": "Internal server error; "
                      f"quote request id {g.get('request_id')} when reporting it."}}
    return jsonify(_shaped(body)), 500
