"""Prediction routes: POST /predict and POST /predict/batch.

`predict_one` and `predict_batch_items` are the inference steps every route that classifies
images goes through (SageMaker's /invocations too), so metrics and timing are the same.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from flask import Blueprint, Response, current_app, jsonify, request

from services.errors import ServiceError
from services.explain import explain_switch
from services.hooks import note_inference
from services.model import batch_response
from services.payload import BatchItem, batch_images, single_image
from services.stages import collect, stage
from services.state import runtime

bp = Blueprint("api", __name__)


@bp.post("/predict")
def predict() -> Response:
    """Classify one image (HP or SSA)."""
    explain = explain_switch(request.args)  # a bad value is a 400 before the body is read
    return timed_prediction(lambda: single_image(request), "predict", explain)


@bp.post("/predict/batch")
def predict_batch() -> Response:
    """Classify several images; one result per image, in order."""
    max_batch = runtime(current_app).settings.max_batch
    explain = explain_switch(request.args)
    return jsonify(predict_batch_items(batch_images(request, max_batch), "predict_batch",
                                       explain))


def timed_prediction(read: Callable[[], bytes], endpoint: str, explain: bool) -> Response:
    """read() the image, predict_one, jsonify: a successful prediction's stages (services/
    stages.py) go to the mhist_stage_seconds histogram."""
    with collect() as seconds:
        with stage("read_body"):
            data = read()
        result = predict_one(data, endpoint, explain)
        with stage("serialise"):
            response = jsonify(result)
    runtime(current_app).metrics.observe_stages(seconds)
    return response


def predict_one(data: bytes, endpoint: str, explain: bool = False) -> dict:
    current = runtime(current_app)
    model = current.state.require()
    started = time.perf_counter()
    try:
        result = model.predict_bytes(data, explain)
    except ServiceError:
        current.metrics.images.labels("rejected").inc()
        raise
    seconds = time.perf_counter() - started
    current.metrics.inference.labels(endpoint).observe(seconds)
    current.metrics.images.labels("predicted").inc()
    current.metrics.count_warnings([result])
    note_inference(seconds)
    return result


def predict_batch_items(items: list[BatchItem], endpoint: str, explain: bool = False) -> dict:
    current = runtime(current_app)
    model = current.state.require()
    started = time.perf_counter()
    body = batch_response(model.predict_many(items, explain))
    seconds = time.perf_counter() - started
    if body["errors"] < body["count"]:  # no inference ran when every item was rejected
        current.metrics.inference.labels(endpoint).observe(seconds)
        note_inference(seconds)
    current.metrics.images.labels("predicted").inc(body["count"] - body["errors"])
    current.metrics.images.labels("rejected").inc(body["errors"])
    current.metrics.count_warnings(body["predictions"])
    return body
