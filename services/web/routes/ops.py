"""Operations routes: /health, /ready, /metadata, /metrics, /openapi.json."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify

from services.core.contracts import Ready, checked
from services.web.hooks import has_token
from services.web.openapi import openapi_spec
from services.web.state import runtime

bp = Blueprint("ops", __name__)


@bp.get("/health")
def health() -> Response:
    """Liveness: the process answers. Says nothing about the model (that is /ready)."""
    return jsonify({"status": "ok"})


@bp.get("/ready")
def ready() -> Response:
    """Readiness: the model is loaded (503 otherwise). With an API token set, which model is
    loaded is for callers holding the token: probes get the status alone."""
    current = runtime(current_app)
    state = current.state
    state.retry_if_due()
    model = state.require()
    token = current.settings.api_token
    if token and not has_token(token):
        return jsonify(checked(Ready, {"status": "ready"}))
    meta = model.metadata
    return jsonify(checked(Ready, {
        "status": "ready",
        "model": {"name": meta.name, "version": meta.version, "precision": meta.precision,
                  "sha256": model.sha256},
    }))


@bp.get("/metadata")
def metadata() -> Response:
    """What the model file says about itself."""
    return jsonify(runtime(current_app).state.require().describe())


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus metrics."""
    body, content_type = runtime(current_app).metrics.exposition()
    return Response(body, content_type=content_type)


@bp.get("/openapi.json")
def openapi() -> Response:
    """This API's OpenAPI document, generated from the app's routes."""
    return jsonify(openapi_spec(current_app))
