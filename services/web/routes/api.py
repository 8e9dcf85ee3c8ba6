"""Prediction routes: POST /predict and POST /predict/batch, run by services/web/inference.py."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify, request

from services.core.explain import explain_switch
from services.web.inference import Inference
from services.web.payload import batch_images, single_image
from services.web.state import runtime

bp = Blueprint("api", __name__)


@bp.post("/predict")
def predict() -> Response:
    """Classify one image (HP or SSA)."""
    explain = explain_switch(request.args)  # a bad value is a 400 before the body is read
    return Inference(current_app).timed_response(lambda: single_image(request), "predict",
                                                 explain)


@bp.post("/predict/batch")
def predict_batch() -> Response:
    """Classify several images; one result per image, in order."""
    max_batch = runtime(current_app).settings.max_batch
    explain = explain_switch(request.args)
    items = batch_images(request, max_batch)
    return jsonify(Inference(current_app).batch(items, "predict_batch", explain))
