"""Prediction routes: POST /predict and POST /predict/batch."""

from __future__ import annotations

import time

from flask import Blueprint, current_app, jsonify
from flask import request as flask_request

from services.app import app_metrics, model_state
from services.errors import ServiceError
from services.model import batch_response
from services.payload import batch_images, single_image

bp = Blueprint("api", __name__)


@bp.post("/predict")
def predict():
    model = model_state(current_app).require()
    data = single_image(flask_request)
    metrics = app_metrics(current_app)
    started = time.perf_counter()
    try:
        result = model.predict_bytes(data)
    except ServiceError:
        metrics.images.labels("rejected").inc()
        raise
    metrics.inference.labels("predict").observe(time.perf_counter() - started)
    metrics.images.labels("predicted").inc()
    return jsonify(result)


@bp.post("/predict/batch")
def predict_batch():
    model = model_state(current_app).require()
    items = batch_images(flask_request, int(current_app.config["MAX_BATCH"]))
    metrics = app_metrics(current_app)
    started = time.perf_counter()
    body = batch_response(model.predict_many(items))
    if body["errors"] < body["count"]:  # no inference ran when every item was rejected
        metrics.inference.labels("predict_batch").observe(time.perf_counter() - started)
    metrics.images.labels("predicted").inc(body["count"] - body["errors"])
    metrics.images.labels("rejected").inc(body["errors"])
    return jsonify(body)
