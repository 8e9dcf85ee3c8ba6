"""(2) End to end for one 224² PNG: every serving target of services/targets.py (Flask
container POST /predict, SageMaker container POST /invocations, the Lambda image through the
Runtime API test server) and the PyTorch baseline container — p50/p95/p99 and the overhead
against a bare `session.run` of the same INT8 model.

Each server runs one worker with all CPUs as intra-op threads (the latency-optimal layout, and
the same thread count as the reference), one request at a time from 127.0.0.1.
"""

from __future__ import annotations

import pytest

from benchmarks.checks import assert_valid_prediction, response_problem
from benchmarks.load import closed_loop
from benchmarks.targets import (
    BASELINE,
    CONTAINER_TARGETS,
    LambdaTarget,
    running,
    wait_first_ok,
)
from benchmarks.timing import latency_stats, time_calls
from services.model import InferenceModel
from services.preprocessing import preprocess_bytes


@pytest.fixture(scope="module")
def reference(bench_model, bench_config, png_224, results) -> dict:
    """The floor every target is compared with: session.run alone, and the in-process core
    (decode + preprocess + run + JSON-ready dict) — same INT8 file, same threads."""
    model = InferenceModel(bench_model.int8, threads=bench_config.threads)
    meta = model.metadata
    batch = preprocess_bytes(png_224, meta.preprocessing)[None]  # (1, 3, 224, 224)
    rounds = max(bench_config.http_requests, 20)
    raw = latency_stats(time_calls(
        lambda: model.session.run([meta.output_name], {meta.input_name: batch}), rounds,
        bench_config.warmup))
    core = latency_stats(time_calls(lambda: model.predict_bytes(png_224), rounds,
                                    bench_config.warmup))
    results.put("http", "reference/session.run", {"target": "session.run (int8)", **raw})
    results.put("http", "reference/predict_bytes", {"target": "in-process predict_bytes", **core})
    return raw


def _measure(target, png: bytes, classes: list[str], config) -> dict:
    """Sequential requests (concurrency 1) after a short warm-up; every answer validated."""
    if isinstance(target, LambdaTarget):
        samples, problems = [], []
        for i in range(config.warmup + config.http_requests):
            reply = target.send(png)
            problem = response_problem(reply, classes) if reply.status == 200 else (
                f"status {reply.status}: {reply.body[:200]!r}")
            if problem:
                problems.append(problem)
            elif i >= config.warmup:
                samples.append(reply.seconds)
        record = latency_stats(samples) if samples else {"n": 0}
        record.update(errors=len(problems), error_examples=problems[:3])
        return record
    closed_loop(target.base_url, target.path, png, "image/png", 1, config.warmup)
    return closed_loop(target.base_url, target.path, png, "image/png", 1, config.http_requests,
                       validate=lambda r: response_problem(r, classes))


@pytest.mark.container
@pytest.mark.parametrize("name", CONTAINER_TARGETS)
def test_http_latency(name, request, bench_model, bench_config, png_224, reference, results,
                      mounted_model_dir):
    image = (request.getfixturevalue("baseline_image") if name == BASELINE
             else request.getfixturevalue("onnx_images")[name])
    with running(name, image, threads=bench_config.threads,
                 model_dir=mounted_model_dir) as target:
        _, first = wait_first_ok(target, png_224)
        assert_valid_prediction(first.json(), bench_model.classes)
        record = _measure(target, png_224, bench_model.classes, bench_config)
    record.update(target=name, image=image, threads=bench_config.threads,
                  overhead_vs_session_run=record.get("p50_ms", 0) / reference["p50_ms"])
    results.put("http", name, record)
    assert record["errors"] == 0, record["error_examples"]
    assert record["n"] == bench_config.http_requests
