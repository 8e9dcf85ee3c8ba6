"""Operations routes: /health, /ready, /metadata, /metrics, /openapi.json."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify

from services.app import app_metrics, model_state
from services.openapi import openapi_spec

bp = Blueprint("ops", __name__)


@bp.get("/health")
def health():
    """Liveness: the process answers. Says nothing about the model (that is /ready)."""
    return jsonify({"status": "ok"})


@bp.get("/ready")
def ready():
    state = model_state(current_app)
    state.retry_if_due()
    model = state.require()  # 503 model_not_ready with the load error
    meta = model.metadata
    return jsonify({
        "status": "ready",
        "model": {"name": meta.name, "version": meta.version, "precision": meta.precision,
                  "sha256": model.sha256},
    })


@bp.get("/metadata")
def metadata():
    return jsonify(model_state(current_app).require().describe())


@bp.get("/metrics")
def metrics():
    body, content_type = app_metrics(current_app).exposition()
    return Response(body, content_type=content_type)


@bp.get("/openapi.json")
def openapi():
    return jsonify(openapi_spec())
