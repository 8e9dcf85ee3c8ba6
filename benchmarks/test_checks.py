"""The answer checks themselves: a wrong answer must fail them, whichever way it is wrong.

Runs without a model or a container: the reference is built from known probabilities, and the
wrk check runs the real wrk (benchmarks/wrk_post.lua) against a small server on 127.0.0.1.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from benchmarks.checks import Reference, assert_answers_ok, compare_prediction
from benchmarks.load import LoadGeneratorMissing, wrk_load, wrk_path
from tests.conftest import unavailable

REFERENCE = Reference(classes=("HP", "SSA"), positive_class="SSA", threshold=0.3,
                      answers={"far.png": {"HP": 0.9, "SSA": 0.1},
                               "near.png": {"HP": 0.72, "SSA": 0.28}})


def answer(p_ssa: float, label: str | None = None) -> dict:
    body: dict = {"probabilities": {"HP": 1 - p_ssa, "SSA": p_ssa}}
    if label is not None:
        body["label"] = label
    return body


def problem(image: str, prediction: object, precision: str = "int8") -> str | None:
    return compare_prediction(prediction, REFERENCE, image, precision)["problem"]


def test_a_right_answer_passes() -> None:
    assert problem("far.png", answer(0.11, "HP")) is None
    # Near the threshold INT8 may round across it: a flip within the tolerance is no error.
    assert problem("near.png", answer(0.31, "SSA")) is None


@pytest.mark.parametrize(("image", "prediction", "why"), [
    ("far.png", answer(0.1, "SSA"), "contradicts its own"),      # label from a wrong threshold
    ("far.png", answer(0.4, "SSA"), "max |Δp|"),                 # probabilities far off
    ("far.png", answer(float("nan"), "HP"), "out of [0, 1]"),
    ("far.png", {"probabilities": {"HP": 0.9}}, "do not name exactly"),
    ("far.png", {"probabilities": {"SSA": 0.9, "HP": 0.1}, "label": "HP"}, "contradicts"),
    ("far.png", ["HP"], "not a JSON object"),
    ("near.png", answer(0.28, "SSA"), "contradicts its own"),    # near the threshold too
])
def test_a_wrong_answer_fails(image: str, prediction: object, why: str) -> None:
    found = problem(image, prediction)
    assert found is not None and why in found, found


def test_fp32_has_no_room_for_rounding() -> None:
    assert problem("far.png", answer(0.1002, "HP"), "fp32") is not None
    assert problem("far.png", answer(0.10005, "HP"), "fp32") is None


def test_a_service_must_have_every_label_compared() -> None:
    labelled = [compare_prediction(answer(0.1, "HP"), REFERENCE, "far.png", "int8")]
    unlabelled = [compare_prediction(answer(0.1), REFERENCE, "far.png", "int8")]
    assert_answers_ok(REFERENCE.summarise(labelled, "int8"), labelled=True)
    with pytest.raises(AssertionError):
        assert_answers_ok(REFERENCE.summarise(unlabelled, "int8"), labelled=True)
    with pytest.raises(AssertionError, match="wrong answers"):
        assert_answers_ok(REFERENCE.summarise(
            [compare_prediction(answer(0.1, "SSA"), REFERENCE, "far.png", "int8")], "int8"))


@contextmanager
def json_server(body: dict) -> Iterator[str]:
    """A server on 127.0.0.1 that answers every POST with `body` (keep-alive, as gunicorn)."""
    payload = json.dumps(body).encode()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(("served", "good"), [("HP", True), ("SSA", False)])
def test_wrk_counts_only_the_reference_label(served: str, good: bool) -> None:
    try:
        wrk_path()
    except LoadGeneratorMissing as exc:
        unavailable(str(exc))
    with json_server({"label": served, "probabilities": {"HP": 0.9, "SSA": 0.1}}) as url:
        record = wrk_load(url, "/predict", b"\x89PNG", "image/png", 2, 1.0, "HP")
    assert record["requests"] > 0
    if good:
        assert record["ok"] == record["requests"] and record["errors"] == 0
    else:
        assert record["ok"] == 0 and record["errors"] >= record["requests"]
        assert '"label": "SSA"' in record["error_examples"][0]
