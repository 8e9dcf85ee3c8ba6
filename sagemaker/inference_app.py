"""The SageMaker inference container's web app: /ping, /invocations, /execution-parameters.

A thin adapter over the shared core, in the SageMaker inference toolkit's four verbs: the model
is loaded once per worker (`load_model`), the request is decoded by `services.payload` (the
one request → image bytes parser), `InferenceModel` predicts, and the output is encoded as
JSON after content negotiation (unsupported Content-Type → 415, unsupported Accept → 406).

This file is not named like any module of the `sagemaker` SDK, and the folder has no
`__init__.py`, so the SDK is never shadowed. `serve` (beside it) starts gunicorn on it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import uuid
from collections.abc import Iterable

from flask import Flask, Response, request
from model_loader import Settings, load_model
from werkzeug.exceptions import HTTPException

from services import payload
from services.errors import ServiceError
from services.model import InferenceModel, batch_response

__all__ = ["create_app"]

JSON = "application/json"
# What SageMaker clients send; any image/* is read too, since the decoder sniffs the format.
RAW_TYPES = ("application/x-image", "application/octet-stream")
ACCEPTED_TYPES = ("image/png", "image/jpeg", *RAW_TYPES, JSON)
BATCH_FIELDS = (payload.INSTANCES_FIELD, payload.BATCH_FIELD)

log = logging.getLogger("mhist.sagemaker")


# --- app ----------------------------------------------------------------------------------------

def create_app(model_dir: str | os.PathLike | None = None,
               settings: Settings | None = None) -> Flask:
    """The WSGI app for one worker; the model is loaded here, once, before any request."""
    settings = settings or Settings.from_env()
    model = load_model(model_dir or settings.model_dir, threads=settings.ort_threads)
    app = Flask(__name__)
    # Werkzeug refuses bodies over this before reading them (413 via services.payload).
    app.config["MAX_CONTENT_LENGTH"] = settings.max_payload_mb * 1024 * 1024
    _register_routes(app, model, settings)
    _register_error_handlers(app)
    app.after_request(_safe_headers)
    _configure_logging()
    log.info("model %s loaded in %.2f s", model.sha256[:12], model.load_seconds)
    return app


def _register_routes(app: Flask, model: InferenceModel, settings: Settings) -> None:
    @app.get("/ping")
    def ping() -> Response:
        # The app only exists once the model is loaded, so being here means healthy; no
        # inference, so it stays fast while invocations run on the other threads.
        return Response(status=200)

    @app.get("/execution-parameters")
    def execution_parameters() -> Response:
        return _json({
            "MaxConcurrentTransforms": settings.workers,
            "BatchStrategy": "SINGLE_RECORD",
            "MaxPayloadInMB": settings.max_payload_mb,
        })

    @app.post("/invocations")
    def invocations() -> Response:
        # X-Amzn-SageMaker-Custom-Attributes is deliberately never read: it is caller-controlled
        # free text with no meaning for this model.
        _check_content_type(request.mimetype)
        _check_accept(request.headers.get("Accept"))
        if _is_batch(request):
            max_batch = settings.max_batch or payload.DEFAULT_MAX_BATCH
            items = payload.batch_images(request, max_batch)
            return _json(batch_response(model.predict_many(items)))
        return _json(model.predict_bytes(payload.single_image(request)))


def _safe_headers(response: Response) -> Response:
    # Every answer is JSON (or empty): no client may sniff it into something executable.
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def _check_content_type(mimetype: str) -> None:
    if mimetype in ACCEPTED_TYPES or mimetype.startswith("image/"):
        return
    shown = f"'{mimetype}'" if mimetype else "no Content-Type"
    raise ServiceError(
        415, "unsupported_media_type",
        f"Cannot read an image from {shown}; send one of: {', '.join(ACCEPTED_TYPES)}.",
    )


def _check_accept(accept: str | None) -> None:
    """JSON is the only output: absent, */*, application/* or application/json are fine."""
    if not accept or not accept.strip() or _json_quality(request.accept_mimetypes) > 0:
        return
    raise ServiceError(
        406, "not_acceptable",
        f"Cannot answer with Accept '{accept}'; this endpoint returns {JSON} (or send */*).",
    )


def _json_quality(accepted: Iterable[tuple[str, float]]) -> float:
    """The q of the most specific range covering application/json, parameters ignored
    ("application/json; charset=utf-8" is JSON; "application/json;q=0, */*" refuses it)."""
    specificity = {JSON: 2, "application/*": 1, "*/*": 0}
    best: tuple[int, float] | None = None
    for value, quality in accepted:
        rank = specificity.get(value.split(";", 1)[0].strip().lower())
        if rank is not None and (best is None or rank > best[0]):
            best = (rank, quality)
    return best[1] if best else 0.0


def _is_batch(req) -> bool:
    """A JSON body with "instances" (or "images") is a batch; everything else is one image."""
    if req.mimetype != JSON:
        return False
    try:
        document = json.loads(req.get_data(cache=True))
    except (ValueError, RecursionError):
        return False  # services.payload reports the malformed JSON as a 400
    return isinstance(document, dict) and any(field in document for field in BATCH_FIELDS)


def _json(document: dict, status: int = 200) -> Response:
    return Response(json.dumps(document), status=status, mimetype=JSON)


def _register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ServiceError)
    def service_error(exc: ServiceError) -> Response:
        return _json(exc.to_dict(), exc.status_code)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        code = "payload_too_large" if exc.code == 413 else _snake(exc.name)
        response = exc.get_response()  # keeps headers such as Allow on a 405
        response.data = json.dumps({"error": {"code": code,
                                              "message": exc.description or exc.name}})
        response.content_type = JSON
        return response

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        # The traceback goes to CloudWatch under an incident id; the client gets no internals.
        incident = uuid.uuid4().hex[:12]
        log.exception("unhandled %s (incident %s)", type(exc).__name__, incident)
        return _json({"error": {"code": "internal_error", "message":
                                f"The server failed on this request (incident {incident})."}},
                     500)


def _configure_logging() -> None:
    """One line per event on stderr, which SageMaker ships to CloudWatch; never bodies."""
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def _snake(name: str) -> str:
    return "_".join(name.lower().replace("-", " ").split())
