"""POST /predict/region: a larger image tiled on the server, one prediction per tile + a heatmap.

How a QuPath script or a slide viewer sends the region a pathologist selected. The body is an
image as /predict takes it (raw bytes, multipart field `image`, or JSON {"image": base64}), up to
MAX_IMAGE_PIXELS; query parameters: `mpp` (µm per pixel of the image; default: the model's
own), `stride` (pixels at the model's scale; default: one tile) and `min_tissue` (0..1).
Each is checked here (400 `invalid_parameter`); the work they plan is bounded in pixels by
services/slides/region.py (400 `too_much_work` / `too_many_tiles`, naming the limit).
The tiling is services/slides/tiling.py, the code the whole-slide CLI runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

from flask import Blueprint, Response, current_app, jsonify, request

from services.core.contracts import RegionResponse, checked
from services.core.errors import ServiceError
from services.core.preprocessing import decode_image
from services.slides.region import DEFAULT_MIN_TISSUE, analyse_region
from services.web.inference import Inference
from services.web.payload import single_image

bp = Blueprint("region", __name__)


@bp.post("/predict/region")
def predict_region() -> Response:
    """Classify a larger region tile by tile and return a P(SSA) heatmap.
    Query parameters: mpp (µm/px of the image, default the model's), stride (model pixels,
    default one tile), min_tissue (share of tissue a tile needs, default 0.5)."""
    inference = Inference(current_app)
    model = inference.model  # a 503 before the body is read when no model is loaded
    options = region_options(request.args)
    data = single_image(request)
    body = inference.region(
        lambda: analyse_region(model, decode_image(data, model.max_pixels), **options),
        "predict_region")
    return jsonify(checked(RegionResponse, body))


def region_options(args: Mapping[str, str]) -> dict:
    """Query parameters → analyse_region keywords; 400 `invalid_parameter` when unusable."""
    options: dict = {}
    if "mpp" in args:
        options["mpp"] = _number(args, "mpp", lambda v: 0 < v < math.inf, "a positive number")
    if "stride" in args:
        options["stride"] = int(_number(args, "stride", lambda v: 1 <= v < math.inf and v == int(v),
                                        "a whole number of pixels ≥ 1"))
    options["min_tissue"] = (
        _number(args, "min_tissue", lambda v: 0 <= v <= 1, "a number in [0, 1]")
        if "min_tissue" in args else DEFAULT_MIN_TISSUE)
    return options


def _number(args: Mapping[str, str], name: str, valid: Callable[[float], bool],
            expected: str) -> float:
    raw = args[name]
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not valid(value):
        raise ServiceError(
            400, "invalid_parameter",
            f"Query parameter {name}={raw[:40]!r} is not valid: expected {expected}.",
        )
    return value
