"""What one serving process holds: its settings, its model (or why there is none), its metrics.

With MODEL_REQUIRED (the default) a load failure is raised from `create_app`, so a gunicorn
worker cannot boot and the server exits non-zero. With MODEL_REQUIRED off the app starts
anyway, /ready answers 503 (the log names the file and the problem: clients never see server
paths), and every /ready call retries the load at most once per MODEL_RETRY_SECONDS — for a
model volume that is mounted after the process starts.

Routes reach this through `runtime(current_app)`; it lives in `app.extensions`, so several apps
can coexist in one process (tests) and no module imports the app module back.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass

from flask import Flask

from services.core.errors import ModelLoadError, ServiceError
from services.core.model import InferenceModel
from services.web.metrics import Metrics
from services.web.settings import Settings

_EXTENSION = "mhist"
error_log = logging.getLogger("mhist.error")  # services.web.hooks gives it its JSON-lines handler


class ModelState:
    """Holds the InferenceModel of this process, or why there is none yet."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._last_attempt = float("-inf")
        self.model: InferenceModel | None = None
        self.error: str | None = "the model has not been loaded yet"  # for logs: may name paths
        self.public_error = self.error  # for clients: what /ready's 503 says

    def start(self) -> None:
        """The load at start-up: raises when the model is required, else only records why."""
        if not self._settings.model_path:
            self.error = self.public_error = (
                "MODEL_PATH is not set; point it at an exported ONNX file")
            if self._settings.model_required:
                raise ModelLoadError(self.error)
        elif self._settings.model_required:
            self.load()  # ModelLoadError: the worker must not boot without its model
        else:
            self.retry_if_due()

    def load(self) -> InferenceModel:
        """Load now; ModelLoadError on failure (the message also stays in `.error`)."""
        settings = self._settings
        with self._lock:
            self._last_attempt = time.monotonic()
            try:
                model = InferenceModel(settings.model_path or "", threads=settings.ort_threads,
                                       spinning=settings.ort_spinning,
                                       max_pixels=settings.max_image_pixels,
                                       cpu_class=settings.cpu_class)
                _check_digest(model, settings.model_sha256)
            except ModelLoadError as exc:
                self.error = str(exc)
                self.public_error = (
                    "the model file could not be loaded (the server log names the file and the "
                    f"problem); it is tried again at most every {settings.model_retry_seconds:g} s")
                raise
            self.model, self.error, self.public_error = model, None, None
            return model

    def retry_if_due(self) -> None:
        """Try again when not loaded and the last attempt is older than the retry interval."""
        due = time.monotonic() - self._last_attempt >= self._settings.model_retry_seconds
        if self.model is None and self._settings.model_path and due:
            try:
                self.load()
            except ModelLoadError as exc:  # the 503 of /ready says less: no server paths
                error_log.error(json.dumps({"event": "model_load_failed", "error": str(exc)}))

    def require(self) -> InferenceModel:
        """The model, or a 503 ServiceError saying why it is not ready."""
        if self.model is None:
            raise ServiceError(503, "model_not_ready",
                               f"The model is not ready: {self.public_error}")
        return self.model


def _check_digest(model: InferenceModel, expected: str | None) -> None:
    if expected and expected.lower() != model.sha256:
        raise ModelLoadError(
            f"{model.path} has sha256 {model.sha256}, but {expected} was expected (the "
            "SageMaker archive's manifest.json): the file is corrupt or was edited; rebuild "
            "the archive with `python sagemaker/package.py`"
        )


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    state: ModelState
    metrics: Metrics


def attach(app: Flask, runtime_: Runtime) -> None:
    app.extensions[_EXTENSION] = runtime_


def runtime(app: Flask) -> Runtime:
    return app.extensions[_EXTENSION]
