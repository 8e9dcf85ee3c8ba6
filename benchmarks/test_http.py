"""(2) End to end for one 224² PNG: every serving target of services/targets.py with the FP32
and with the INT8 file (Flask container POST /predict, SageMaker container POST /invocations,
the Lambda image through the Runtime API test server) and the PyTorch baseline container —
p50/p95/p99 and the overhead against a bare `session.run` of the same file.

Each server runs one worker with all CPUs as intra-op threads (the latency-optimal layout, and
the same thread count as the reference), one request at a time from 127.0.0.1, every HTTP
target through the same client and connection policy (benchmarks.load.CONNECTION_POLICY).
Before it is timed, each target answers the first check images, compared with the ONNX FP32
reference; every timed answer is compared too.
"""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from benchmarks import BASELINE
from benchmarks.checks import assert_answers_ok, cross_check, response_checker
from benchmarks.inprocess import model_calls
from benchmarks.load import closed_loop
from benchmarks.targets import (
    CONTAINER_IDS,
    CONTAINER_VARIANTS,
    PRECISIONS,
    LambdaTarget,
    image_for,
    lambda_response,
    request_bytes,
    running,
    wait_first_ok,
)
from benchmarks.timing import latency_stats, time_calls
from services.core.model import InferenceModel
from services.core.stages import STAGES
from tests.support.events import make_v2_event


def _in_process(model: InferenceModel, png: bytes, rounds: int, warmup: int
                ) -> tuple[dict, dict]:
    """(session.run alone, predict_bytes: decode + preprocess + run) latency stats."""
    calls = model_calls(model)
    raw = time_calls(calls["session.run"](png), rounds, warmup)
    core = time_calls(calls["predict_bytes"](png), rounds, warmup)
    return latency_stats(raw), latency_stats(core)


@pytest.fixture(scope="module")
def session_run_p50(bench_model, bench_config, png_224, results) -> dict[str, float]:
    """precision → p50 ms of session.run alone: the floor every target is compared with. The
    in-process core (decode + preprocess + run + JSON-ready dict) is recorded too."""
    floors = {}
    for precision in PRECISIONS:
        model = InferenceModel(bench_model.file(precision), threads=bench_config.threads)
        raw, core = _in_process(model, png_224, max(bench_config.http_requests, 20),
                                bench_config.warmup)
        results.put("http", f"reference/{precision}/session.run",
                    {"target": "session.run", "precision": precision, **raw})
        results.put("http", f"reference/{precision}/predict_bytes",
                    {"target": "predict_bytes", "precision": precision, **core})
        floors[precision] = raw["p50_ms"]
    return floors


def _measure(target, png: bytes, check, config, warmed_up=lambda: None) -> dict:
    """Sequential requests (concurrency 1) after a short warm-up (then `warmed_up()` is
    called); every answer checked."""
    if isinstance(target, LambdaTarget):
        samples, problems = [], []
        for i in range(config.warmup + config.http_requests):
            if i == config.warmup:
                warmed_up()
            reply = target.send(png)
            problem = check(reply) if reply.status == 200 else (
                f"status {reply.status}: {reply.body[:200]!r}")
            if problem:
                problems.append(problem)
            elif i >= config.warmup:
                samples.append(reply.seconds)
        record = latency_stats(samples) if samples else {"n": 0}
        record.update(errors=len(problems), error_examples=problems[:3])
        return record
    closed_loop(target.base_url, target.path, png, "image/png", 1, config.warmup)
    warmed_up()
    return closed_loop(target.base_url, target.path, png, "image/png", 1, config.http_requests,
                       validate=check)


def stage_totals(target) -> dict[str, tuple[float, float]]:
    """stage → (seconds, predictions) so far, from the container's own mhist_stage_seconds
    histogram (GET /metrics; for Lambda, a GET /metrics event)."""
    if isinstance(target, LambdaTarget):
        invocation = target.runtime.invoke(make_v2_event(method="GET", path="/metrics"),
                                           timeout=60)
        text = lambda_response(invocation, 0.0).body.decode()
    else:
        with urllib.request.urlopen(target.base_url.rstrip("/") + "/metrics", timeout=30) as r:
            text = r.read().decode()
    sums, counts = {}, {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "mhist_stage_seconds_sum":
                sums[sample.labels["stage"]] = sample.value
            elif sample.name == "mhist_stage_seconds_count":
                counts[sample.labels["stage"]] = sample.value
    return {stage: (sums.get(stage, 0.0), counts.get(stage, 0.0)) for stage in STAGES}


def stage_means(before: dict, after: dict) -> dict[str, float]:
    """Mean ms per stage over the predictions between two stage_totals (the timed ones)."""
    means = {}
    for stage in STAGES:
        seconds = after[stage][0] - before[stage][0]
        count = after[stage][1] - before[stage][1]
        if count:
            means[stage] = 1000.0 * seconds / count
    return means


@pytest.mark.container
@pytest.mark.parametrize("variant", CONTAINER_VARIANTS, ids=CONTAINER_IDS)
def test_http_latency(variant, request, bench_model, bench_config, png_224, reference,
                      session_run_p50, results, mounted_model_dirs):
    image = image_for(request, variant)
    check = response_checker(reference, bench_model.image.name, variant.precision)
    with running(variant.target, image, threads=bench_config.threads,
                 model_dir=mounted_model_dirs[variant.precision]) as target:
        _, first = wait_first_ok(target, png_224)
        assert check(first) is None, check(first)
        answers = cross_check(target.send, reference,
                              bench_model.check_images[:bench_config.http_check_images],
                              variant.precision)
        before = {}  # the stage histogram's totals once warmed up: stages of timed requests
        if variant.target == BASELINE:
            record = _measure(target, png_224, check, bench_config)
        else:
            record = _measure(target, png_224, check, bench_config,
                              lambda: before.update(stage_totals(target)))
            record["stages_ms"] = stage_means(before, stage_totals(target))
    record.update(target=variant.target, precision=variant.precision, image=image,
                  request=variant.request, request_bytes=request_bytes(variant, png_224),
                  threads=bench_config.threads, answers=answers)
    if variant.target != BASELINE and record.get("p50_ms"):
        record["overhead_vs_session_run"] = record["p50_ms"] / session_run_p50[variant.precision]
    results.put("http", variant.key, record)
    assert_answers_ok(answers, labelled=True)
    assert record["errors"] == 0, record["error_examples"]
    assert record["n"] == bench_config.http_requests
