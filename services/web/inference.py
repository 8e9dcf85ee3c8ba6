"""The one inference entry of the app: every route that classifies images (/predict,
/predict/batch, /invocations, /predict/region) and the Lambda S3 flow go through `Inference`,
so the model is looked up, timed and counted in one place.

Metrics (services/web/metrics.py): `mhist_inference_duration_seconds` by endpoint (only when a
model ran), `mhist_images` by outcome (predicted or rejected) and `mhist_input_warnings` by code.
Inside an HTTP request the model time also goes to the request's access line
(services/web/hooks.py); the S3 flow has no request and logs its own line.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
from flask import Flask, Response, has_request_context

from services.core.errors import ServiceError
from services.core.model import InferenceModel, batch_response
from services.core.stages import collect, stage
from services.web.hooks import note_inference
from services.web.payload import BatchItem
from services.web.responses import json_response
from services.web.state import Runtime, runtime


class Inference:
    """The model of one app, with its bookkeeping; `Inference(app)` is cheap (a lookup)."""

    def __init__(self, app: Flask) -> None:
        self._runtime: Runtime = runtime(app)

    @property
    def model(self) -> InferenceModel:
        """The loaded model, or a 503 ServiceError saying why there is none."""
        return self._runtime.state.require()

    def one(self, data: bytes, endpoint: str, explain: bool = False) -> dict:
        """One encoded image → /predict's JSON; a bad image is a ServiceError (counted)."""
        model = self.model
        with self._timed(endpoint) as done:
            result = model.predict_bytes(data, explain)
            done(predicted=1, rejected=0, results=[result])
        return result

    def batch(self, items: list[BatchItem], endpoint: str, explain: bool = False) -> dict:
        """Several images → {"predictions", "count", "errors"}; a bad item is an error entry."""
        model = self.model
        with self._timed(endpoint) as done:
            body = batch_response(model.predict_many(items, explain))
            done(predicted=body["count"] - body["errors"], rejected=body["errors"],
                 results=body["predictions"])
        return body

    def tensors(self, batch: np.ndarray, endpoint: str) -> list[dict]:
        """A preprocessed (N, 3, S, S) float32 batch (the Open Inference Protocol's FP32
        input) → one prediction JSON per row; no quality checks (there is no image)."""
        model = self.model
        with self._timed(endpoint) as done:
            results = [p.to_dict(model.metadata) for p in model.predict_array(batch)]
            done(predicted=len(results), rejected=0, results=results)
        return results

    def region(self, analyse: Callable[[], dict], endpoint: str) -> dict:
        """A tiled region: `analyse()` runs every tile and returns the region's JSON."""
        with self._timed(endpoint) as done:
            body = analyse()
            done(predicted=1, rejected=0, results=[])
        return body

    def timed_response(self, read: Callable[[], bytes], endpoint: str,
                       explain: bool) -> Response:
        """read() the body, `one`, jsonify — with the stage histogram of a single prediction:
        read_body, decode, preprocess, run, postprocess, serialise (services/core/stages.py)."""
        with collect() as seconds:
            with stage("read_body"):
                data = read()
            result = self.one(data, endpoint, explain)
            with stage("serialise"):
                response = json_response(result)
        self._runtime.metrics.observe_stages(seconds)
        return response

    @contextmanager
    def _timed(self, endpoint: str) -> Iterator[Callable[..., None]]:
        """Times the block; the block reports its outcome through the callable it gets. A
        ServiceError escaping the block counts one rejected image."""
        metrics = self._runtime.metrics
        outcome: dict = {}
        started = time.perf_counter()
        try:
            yield lambda **counts: outcome.update(counts)
        except ServiceError:
            metrics.images.labels("rejected").inc()
            raise
        seconds = time.perf_counter() - started
        metrics.images.labels("predicted").inc(outcome["predicted"])
        metrics.images.labels("rejected").inc(outcome["rejected"])
        metrics.count_warnings(outcome["results"])
        if outcome["predicted"]:  # no model ran when every item was rejected
            metrics.inference.labels(endpoint).observe(seconds)
            if has_request_context():
                note_inference(seconds)
