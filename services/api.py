"""Prediction routes: POST /predict and POST /predict/batch."""

from __future__ import annotations

import time

from flask import Blueprint, current_app, jsonify
from flask import request as flask_request

from services.app import app_metrics, model_state
from services.errors import ServiceError
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
    valid = [item for item in items if isinstance(item, bytes)]
    metrics = app_metrics(current_app)
    predicted = iter([])
    if valid:
        started = time.perf_counter()
        predicted = iter(model.predict_many(valid))
        metrics.inference.labels("predict_batch").observe(time.perf_counter() - started)
    # Put payload-level item errors (bad base64, wrong type) back in their original slots.
    results = [
        next(predicted) if isinstance(item, bytes)
        else {**item.to_dict(), "status": item.status_code}
        for item in items
    ]
    failed = sum(1 for r in results if "error" in r)
    metrics.images.labels("predicted").inc(len(results) - failed)
    metrics.images.labels("rejected").inc(failed)
    return jsonify({"predictions": results, "count": len(results), "errors": failed})
