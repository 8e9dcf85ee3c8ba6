"""SageMaker's container contract as a blueprint of the one app: /ping, /invocations and
/execution-parameters (batch transform). Registered on the `sagemaker` target only.

In the SageMaker inference toolkit's four verbs: the model is loaded once per worker (by the
app factory), the request is decoded by `services.web.payload`, the same inference steps as
/predict run, and the output is JSON after content negotiation (werkzeug parses Accept):
an unsupported Content-Type is a 415, an unsupported Accept a 406.
"""

from __future__ import annotations

import json

from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.datastructures import MIMEAccept

from services.core.errors import ServiceError
from services.core.explain import custom_attribute_switch, explain_switch
from services.web import payload
from services.web.inference import Inference
from services.web.settings import MIB
from services.web.state import runtime

JSON = "application/json"
# What SageMaker clients send; any image/* is read too, since the decoder sniffs the format.
ACCEPTED_TYPES = ("image/png", "image/jpeg", *payload.RAW_TYPES, JSON)
BATCH_FIELDS = (payload.INSTANCES_FIELD, payload.BATCH_FIELD)
SHOWN_ACCEPT_CHARS = 64  # of a refused Accept header in the 406: enough to recognise it

bp = Blueprint("sagemaker", __name__)


@bp.get("/ping")
def ping() -> Response:
    """SageMaker health check: 200 with an empty body once the model is loaded."""
    runtime(current_app).state.require()  # 503 while it is not (MODEL_REQUIRED=0)
    return Response(status=200)


@bp.get("/execution-parameters")
def execution_parameters() -> Response:
    """Batch transform's tuning hints, from this container's settings."""
    settings = runtime(current_app).settings
    return jsonify({
        "MaxConcurrentTransforms": settings.workers,
        "BatchStrategy": "SINGLE_RECORD",
        "MaxPayloadInMB": max(1, settings.max_content_length // MIB),
    })


@bp.post("/invocations")
def invocations() -> Response:
    """SageMaker inference: one image, or a JSON batch ({"instances": [...]})."""
    _check_content_type(request.mimetype)
    _check_accept()
    # SageMaker forwards no query string to the container, so the explanation switch also
    # comes as the custom attribute explain=1; the rest of that caller-controlled free text
    # is ignored. `?explain=1` works for clients that call the container directly.
    explain = explain_switch(request.args) | custom_attribute_switch(request.headers)
    if _is_batch():
        max_batch = runtime(current_app).settings.max_batch
        items = payload.batch_images(request, max_batch)
        return jsonify(Inference(current_app).batch(items, "invocations", explain))
    return Inference(current_app).timed_response(lambda: payload.single_image(request),
                                                 "invocations", explain)


def _check_content_type(mimetype: str) -> None:
    if mimetype in ACCEPTED_TYPES or mimetype.startswith("image/"):
        return
    shown = f"'{mimetype}'" if mimetype else "no Content-Type"
    raise ServiceError(
        415, "unsupported_media_type",
        f"Cannot read an image from {shown}; send one of: {', '.join(ACCEPTED_TYPES)}.",
    )


def _check_accept() -> None:
    """JSON is the only output. Media-type parameters are ignored ("application/json;
    charset=utf-8" is JSON); an explicit q=0 refuses it even beside */*."""
    accept = request.headers.get("Accept", "")
    if not accept.strip():
        return
    ranges = MIMEAccept([(value.split(";", 1)[0].strip(), quality)
                         for value, quality in request.accept_mimetypes])
    if ranges.best_match([JSON]) is None:
        shown = accept if len(accept) <= SHOWN_ACCEPT_CHARS else (
            f"{accept[:SHOWN_ACCEPT_CHARS]}... ({len(accept)} characters)")
        raise ServiceError(
            406, "not_acceptable",
            f"Cannot answer with Accept '{shown}'; this endpoint returns {JSON} (or send */*).",
        )


def _is_batch() -> bool:
    """A JSON body with "instances" (or "images") is a batch; everything else is one image."""
    if request.mimetype != JSON:
        return False
    try:
        document = json.loads(request.get_data(cache=True))
    except (ValueError, RecursionError):
        return False  # services.web.payload reports the malformed JSON as a 400
    return isinstance(document, dict) and any(field in document for field in BATCH_FIELDS)
