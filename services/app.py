"""Flask application factory: `create_app(config=None)`.

The ONNX session is built here, once per process (gunicorn runs with preload off, so once per
worker). Blueprints: api (predict routes), ops (health, ready, metadata, metrics, openapi),
ui (the upload page). Every error leaves as `{"error": {"code", "message"}}`.

Local run without a container:
    MODEL_PATH=artifacts/model.int8.onnx .venv/bin/gunicorn -c services/gunicorn.conf.py \
        "services.app:create_app()"
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
from collections.abc import Mapping
from typing import Any

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from services.errors import ModelLoadError, ServiceError
from services.metrics import Metrics
from services.model import default_threads
from services.payload import DEFAULT_MAX_BATCH
from services.preprocessing import DEFAULT_MAX_PIXELS
from services.state import ModelState

DEFAULT_MAX_CONTENT_LENGTH = 10 * 1024 * 1024
# Routes anyone may call even when an API token is set: probes and the static page itself
# (the page asks for the token and sends it with its own API calls).
OPEN_ENDPOINTS = frozenset({"ops.health", "ops.ready", "ui.index", "static"})
# The page's CSS/JS/images come from this origin only; previews are blob: URLs.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")  # anything else could forge log lines

access_log = logging.getLogger("mhist.access")
error_log = logging.getLogger("mhist.error")


def config_from_env(environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """Defaults overridden by environment variables (names documented in the README)."""
    workers = _int(environ, "WEB_CONCURRENCY", 1) * _int(environ, "GUNICORN_THREADS", 1)
    return {
        "MODEL_PATH": environ.get("MODEL_PATH"),
        "MODEL_REQUIRED": _bool(environ, "MODEL_REQUIRED", True),
        "MODEL_RETRY_SECONDS": float(environ.get("MODEL_RETRY_SECONDS") or 5.0),
        "MAX_CONTENT_LENGTH": _int(environ, "MAX_CONTENT_LENGTH", DEFAULT_MAX_CONTENT_LENGTH),
        "MAX_BATCH": _int(environ, "MAX_BATCH", DEFAULT_MAX_BATCH),
        "MAX_IMAGE_PIXELS": _int(environ, "MAX_IMAGE_PIXELS", DEFAULT_MAX_PIXELS),
        "API_TOKEN": environ.get("MHIST_API_TOKEN") or None,
        "ORT_INTRA_OP_THREADS": _int(environ, "ORT_INTRA_OP_THREADS", default_threads(workers)),
        "ORT_SPINNING": _bool(environ, "ORT_SPINNING", False),
    }


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app; ModelLoadError when MODEL_REQUIRED and the model cannot be loaded."""
    app = Flask(__name__)
    app.config.update(config_from_env())
    app.config.update(config or {})
    app.json.sort_keys = False  # keep label, probabilities, threshold, model in DESIGN's order
    _configure_logging()

    state = ModelState({
        "path": app.config["MODEL_PATH"] or "",
        "threads": int(app.config["ORT_INTRA_OP_THREADS"]),
        "spinning": bool(app.config["ORT_SPINNING"]),
        "max_pixels": int(app.config["MAX_IMAGE_PIXELS"]),
    }, retry_seconds=float(app.config["MODEL_RETRY_SECONDS"]))
    if not app.config["MODEL_PATH"]:
        state.error = "MODEL_PATH is not set; point it at an exported ONNX file"
        if app.config["MODEL_REQUIRED"]:
            raise ModelLoadError(state.error)
    elif app.config["MODEL_REQUIRED"]:
        state.load()  # raises ModelLoadError: the worker must not boot without its model
    else:
        state.retry_if_due()
    app.extensions["mhist.state"] = state
    app.extensions["mhist.metrics"] = Metrics()

    from services.api import bp as api_bp
    from services.ops import bp as ops_bp
    from services.ui import bp as ui_bp

    app.register_blueprint(api_bp)
    app.register_blueprint(ops_bp)
    app.register_blueprint(ui_bp)
    _register_hooks(app)
    _register_error_handlers(app)
    return app


def model_state(app: Flask) -> ModelState:
    return app.extensions["mhist.state"]


def app_metrics(app: Flask) -> Metrics:
    return app.extensions["mhist.metrics"]


# --- per-request hooks -----------------------------------------------------------------------

def _register_hooks(app: Flask) -> None:
    @app.before_request
    def start_request() -> None:
        g.started = time.perf_counter()
        incoming = request.headers.get("X-Request-ID", "")
        g.request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        _check_token(app.config.get("API_TOKEN"))

    @app.after_request
    def finish_request(response: Response) -> Response:
        response.headers["X-Request-ID"] = g.get("request_id", "")
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        response.headers["Referrer-Policy"] = "no-referrer"
        _record(app, response.status_code)
        return response


def _check_token(token: str | None) -> None:
    if not token or request.endpoint in OPEN_ENDPOINTS:
        return
    header = request.headers.get("Authorization", "")
    scheme, _, offered = header.partition(" ")
    # compare_digest on bytes: constant time, and no TypeError on non-ASCII input.
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        offered.strip().encode(), token.encode()
    ):
        raise ServiceError(
            401, "unauthorized",
            "Missing or wrong API token; send 'Authorization: Bearer <MHIST_API_TOKEN>'.",
        )


def _record(app: Flask, status: int) -> None:
    """Metrics + one JSON access-log line. Never the body: image bytes stay out of logs."""
    seconds = time.perf_counter() - g.get("started", time.perf_counter())
    route = request.url_rule.rule if request.url_rule else "<unmatched>"
    app_metrics(app).observe_request(route, request.method, status, seconds)
    access_log.info(json.dumps({
        "event": "request",
        "method": request.method,
        "route": route,
        "path": request.path,
        "status": status,
        "latency_ms": round(seconds * 1000.0, 3),
        "request_id": g.get("request_id"),
        "content_length": request.content_length,
        "remote_addr": request.remote_addr,
        "pid": os.getpid(),
    }))


def _configure_logging() -> None:
    """JSON lines on stderr, where gunicorn and container runtimes collect them."""
    for logger in (access_log, error_log):
        if not logger.handlers:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(message)s"))
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)
            logger.propagate = False


# --- errors ----------------------------------------------------------------------------------

def _register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ServiceError)
    def service_error(exc: ServiceError) -> tuple[Response, int]:
        return jsonify(exc.to_dict()), exc.status_code

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        response = exc.get_response()  # keeps headers such as Allow on a 405
        response.data = json.dumps(_http_error_body(exc))
        response.content_type = "application/json"
        return response

    @app.errorhandler(Exception)
    def unexpected_error(exc: Exception) -> tuple[Response, int]:
        # The traceback goes to the log, tagged with the request id; the client gets none.
        error_log.exception(json.dumps({
            "event": "unhandled_exception", "request_id": g.get("request_id"),
            "type": type(exc).__name__,
        }))
        body = {"error": {"code": "internal_error", "message": "Internal server error; "
                          f"quote request id {g.get('request_id')} when reporting it."}}
        return jsonify(body), 500


def _http_error_body(exc: HTTPException) -> dict:
    code = re.sub(r"[^a-z0-9]+", "_", (exc.name or "error").lower()).strip("_")
    if exc.code == 413:
        code = "payload_too_large"
    return {"error": {"code": code, "message": exc.description or exc.name}}


# --- env parsing -----------------------------------------------------------------------------

def _int(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name)
    if raw in (None, ""):
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None


def _bool(environ: Mapping[str, str], name: str, default: bool) -> bool:
    raw = environ.get(name)
    if raw in (None, ""):
        return default
    return raw.strip().lower() in ("1", "true", "yes", "on")
