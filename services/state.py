"""The worker's model: loaded once in the factory, or reported as not ready.

With MODEL_REQUIRED (the default) a load failure is raised from `create_app`, so a gunicorn
worker cannot boot and the server exits non-zero. With MODEL_REQUIRED off the app starts
anyway, /ready answers 503 and names the problem, and every /ready call retries the load at
most once per `retry_seconds` — for a model volume that is mounted after the process starts.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from services.errors import ModelLoadError, ServiceError
from services.model import InferenceModel


class ModelState:
    """Holds the InferenceModel of this process, or why there is none yet."""

    def __init__(self, load_kwargs: dict[str, Any], retry_seconds: float = 5.0) -> None:
        self._kwargs = load_kwargs
        self._retry_seconds = retry_seconds
        self._lock = threading.Lock()
        self._last_attempt = float("-inf")
        self.model: InferenceModel | None = None
        self.error: str | None = "the model has not been loaded yet"

    def load(self) -> InferenceModel:
        """Load now; ModelLoadError on failure (the message also stays in `.error`)."""
        with self._lock:
            self._last_attempt = time.monotonic()
            try:
                self.model = InferenceModel(**self._kwargs)
            except ModelLoadError as exc:
                self.error = str(exc)
                raise
            self.error = None
            return self.model

    def retry_if_due(self) -> None:
        """Try again when not loaded and the last attempt is older than the retry interval."""
        if self.model is None and time.monotonic() - self._last_attempt >= self._retry_seconds:
            try:
                self.load()
            except ModelLoadError:
                pass  # .error already says why; /ready reports it

    def require(self) -> InferenceModel:
        """The model, or a 503 ServiceError saying why it is not ready."""
        if self.model is None:
            raise ServiceError(503, "model_not_ready", f"The model is not ready: {self.error}")
        return self.model
