"""(2) End to end for one 224² PNG: every serving target of services/targets.py with the FP32
and with the INT8 file (Flask container POST /predict, SageMaker container POST /invocations,
the Lambda image through the Runtime API test server) and the PyTorch baseline container —
p50/p95/p99 and the overhead against a bare `session.run` of the same file.

Each server runs one worker with all CPUs as intra-op threads (the latency-optimal layout, and
the same thread count as the reference), one request at a time from 127.0.0.1, every HTTP
target through the same client and connection policy (benchmarks.load.CONNECTION_POLICY).
Before it is timed, each target answers the first check images, compared with the ONNX FP32
reference; every timed answer is compared too.

The serving-overhead goals (benchmarks/overhead.py) are measured in interleaved rounds: in
process, session.run / predict_bytes (its stages from the same call) / decode / the decode
floor; over HTTP, each request on a new connection alternating with an in-process
predict_bytes — the host server (gunicorn alone, and nginx → gunicorn where nginx is installed)
and the Flask INT8 container (its front server, nginx).
"""

from __future__ import annotations

import contextlib
import shutil
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from benchmarks import BASELINE
from benchmarks.checks import assert_answers_ok, cross_check, response_checker
from benchmarks.inprocess import model_calls
from benchmarks.load import closed_loop
from benchmarks.machine import production_env
from benchmarks.overhead import core_overhead, floor_server, host_server, paired_http
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
from tests.support.containers import free_port
from tests.support.events import make_v2_event

# The container whose requests are paired with in-process predict_bytes (the front-server goal).
PAIRED_CONTAINER = "flask-int8"


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
    rounds = max(bench_config.http_requests, 20)
    for precision in PRECISIONS:
        model = InferenceModel(bench_model.file(precision), threads=bench_config.threads)
        if precision == "int8":  # the overhead goals' file: the decode floor and stages too
            records = core_overhead(model, png_224, 2 * rounds, bench_config.warmup)
        else:
            raw, core = _in_process(model, png_224, rounds, bench_config.warmup)
            records = {"session.run": raw, "predict_bytes": core}
        for call, record in records.items():
            results.put("http", f"reference/{precision}/{call}",
                        {"target": call, "precision": precision, **record})
        floors[precision] = records["session.run"]["p50_ms"]
    return floors


@pytest.fixture(scope="module")
def int8_model(bench_model, bench_config) -> InferenceModel:
    """The INT8 file in this process: the predict_bytes each HTTP request is paired with."""
    return InferenceModel(bench_model.int8, threads=bench_config.threads)


def _paired_record(pairs: dict) -> dict:
    """The paired loop's records and the goal's quantity: HTTP p50 − predict_bytes p50."""
    return {"paired_http": pairs["http"], "paired_predict_bytes": pairs["predict_bytes"],
            "http_minus_predict_bytes_ms": pairs["http"]["p50_ms"]
            - pairs["predict_bytes"]["p50_ms"],
            "http_minus_server_predict_ms": pairs.get("outside_ms")}


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
        if variant.key == PAIRED_CONTAINER:
            int8_model = request.getfixturevalue("int8_model")
            record.update(_paired_record(paired_http(
                int8_model, png_224, target.send, bench_config.http_requests,
                bench_config.warmup)))
    record.update(target=variant.target, precision=variant.precision, image=image,
                  request=variant.request, request_bytes=request_bytes(variant, png_224),
                  threads=bench_config.threads, answers=answers)
    if variant.target != BASELINE and record.get("p50_ms"):
        record["overhead_vs_session_run"] = record["p50_ms"] / session_run_p50[variant.precision]
    results.put("http", variant.key, record)
    assert_answers_ok(answers, labelled=True)
    assert record["errors"] == 0, record["error_examples"]
    assert record["n"] == bench_config.http_requests


HOST_FRONTS = ("none", "nginx")


def _floor_ok(reply) -> None:
    assert reply.status == 200, f"the floor server answered {reply.status}"


@pytest.mark.parametrize("front", HOST_FRONTS)
def test_host_server_overhead(front, int8_model, bench_model, bench_config, png_224,
                              reference, session_run_p50, results):
    """`python -m services.runtime.server` on the host, one worker with all CPUs as ORT
    threads, INT8 file: each POST /predict on a new connection alternates with an in-process
    predict_bytes (benchmarks/overhead.py). `nginx`: the containers' front server
    (services/runtime/nginx.py) before the same gunicorn, where nginx is installed here."""
    if front == "nginx" and not (shutil.which("nginx")
                                 or shutil.which("nginx", path="/usr/sbin:/sbin")):
        pytest.skip("nginx is not installed on this host (Debian: apt-get install nginx-light); "
                    "the Flask container's row measures the front server")
    port = free_port()
    env = production_env({"MODEL_PATH": str(bench_model.int8), "PORT": str(port),
                          "HOST": "127.0.0.1", "WEB_CONCURRENCY": "1", "FRONT_SERVER": front,
                          "ORT_INTRA_OP_THREADS": str(bench_config.threads)})
    check = response_checker(reference, bench_model.image.name, "int8")
    with contextlib.ExitStack() as stack:
        client = stack.enter_context(host_server(env, port, png_224))
        extra = {}
        if front == "none":  # the floor: the same gunicorn and client, no app (floor_app.py)
            bare = stack.enter_context(floor_server(env, free_port()))
            extra["floor"] = lambda: _floor_ok(bare.post("/predict", png_224, "image/png"))

        def send(png: bytes):
            reply = client.post("/predict", png, "image/png")
            problem = check(reply) if reply.status == 200 else f"status {reply.status}"
            assert problem is None, problem
            return reply
        pairs = paired_http(int8_model, png_224, send, 2 * bench_config.http_requests,
                            bench_config.warmup, extra)
    record = {"target": f"host-{front}", "precision": "int8", "front_server": front,
              "threads": bench_config.threads, **_paired_record(pairs),
              "overhead_vs_session_run": pairs["http"]["p50_ms"] / session_run_p50["int8"],
              **({"floor": pairs["floor"]} if "floor" in pairs else {})}
    results.put("http", f"host/{front}/int8", record)
