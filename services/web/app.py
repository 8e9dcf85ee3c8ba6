"""The one Flask application of every serving target: `create_app(config=None)`.

The Flask container (gunicorn), the Lambda function (apig-wsgi) and the SageMaker container
(gunicorn, `serve`) all run this app; they differ only in how bytes arrive and leave. The ONNX
session is built here, once per process (gunicorn runs with preload off: once per worker).

Blueprints: api (predict routes), region (/predict/region), ops (health, ready, metadata,
metrics, openapi), ui (the upload page), v2 (the Open Inference Protocol, /v2/...), and
sagemaker (/ping, /invocations, /execution-parameters) on the `sagemaker` target only. Hooks
(request id, API token, CORS, security headers, metrics, one JSON log line per request,
optionally CloudWatch EMF) and JSON error handlers apply to every route.

Local run without a container:
    MODEL_PATH=artifacts/model.int8.onnx .venv/bin/python -m services.runtime.server
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from services.web import hooks
from services.web.limits import BoundedRequest
from services.web.metrics import Metrics
from services.web.routes import api, ops, region, sagemaker, ui, v2
from services.web.settings import Settings
from services.web.startup import log_ready
from services.web.state import ModelState, Runtime, attach


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app from the environment, `config` overriding it (keys: Settings fields in
    upper case, e.g. MODEL_PATH). ModelLoadError when the model is required and unusable,
    SettingsError when a setting is."""
    app_at = time.time()  # start-up timeline (services/web/startup.py): imports are done here
    settings = Settings.from_env(overrides=config)
    app = Flask(__name__)
    app.request_class = BoundedRequest  # 413s that name their limit, chunked bodies included
    app.config["MAX_CONTENT_LENGTH"] = settings.max_content_length  # werkzeug refuses above
    if settings.front_server == "nginx":
        # Behind our own nginx (services/runtime/nginx.py), which overwrites X-Forwarded-For/-Proto
        # with the real peer: trust exactly one hop.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1, x_proto=1)  # type: ignore[method-assign]
    app.json.sort_keys = False  # keep the documented order: label, decision, probabilities, …
    hooks.configure_logging(settings.log_level)

    state = ModelState(settings)
    state.start()
    attach(app, Runtime(settings, state, Metrics()))

    for blueprint in (api.bp, region.bp, ops.bp, ui.bp, v2.bp):
        app.register_blueprint(blueprint)
    if settings.target == "sagemaker":
        app.register_blueprint(sagemaker.bp)
    hooks.register(app, settings)
    log_ready(app_at, state.model.load_seconds if state.model else None)
    return app
