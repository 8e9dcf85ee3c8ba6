"""The model's share of a request as a W3C Server-Timing header (services/web/hooks.py): what
lets a client, benchmarks/overhead.py among them, tell the HTTP around a prediction from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.load import server_predict
from services.web.app import create_app


@pytest.fixture(scope="module")
def client(model_int8_path: Path):
    return create_app({"MODEL_PATH": str(model_int8_path), "ORT_INTRA_OP_THREADS": 1}
                      ).test_client()


def test_a_prediction_says_the_model_time(client, sample_image_bytes: bytes) -> None:
    reply = client.post("/predict", data=sample_image_bytes, content_type="image/png")
    assert reply.status_code == 200
    seconds = server_predict(reply.headers["Server-Timing"])
    assert seconds is not None and 0.0 < seconds < 30.0
    assert reply.headers["Server-Timing"] == f"predict;dur={seconds * 1000:.3f}"


@pytest.mark.parametrize(("method", "path", "body"), [
    ("GET", "/health", None),
    ("POST", "/predict", b"not an image"),  # rejected before any model ran
])
def test_no_model_time_without_a_model_run(client, method, path, body) -> None:
    reply = client.open(path, method=method, data=body, content_type="image/png")
    assert "Server-Timing" not in reply.headers


@pytest.mark.parametrize(("header", "expected"), [
    ("predict;dur=12.5", 0.0125),
    ("db;dur=3, predict;desc=\"model\";dur=7", 0.007),
    ("predict", None), ("predict;dur=x", None), (None, None),
])
def test_the_benchmark_client_reads_the_header(header, expected) -> None:
    assert server_predict(header) == expected
