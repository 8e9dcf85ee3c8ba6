"""The service under a real gunicorn on 127.0.0.1: graceful SIGTERM, several workers, start-up.

Run exactly as documented:
    MODEL_PATH=... gunicorn -c python:services.runtime.gunicorn_conf "services.web.app:create_app()"
"""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.core.model import InferenceModel
from tests.support.containers import free_port, wait_for_http

REPO_ROOT = Path(__file__).resolve().parents[1]
GUNICORN = [sys.executable, "-m", "services.runtime.server"]


@dataclass
class Server:
    process: subprocess.Popen
    port: int
    log_path: Path

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_gunicorn(tmp_path: Path, model: Path | str, **env: str) -> Server:
    port = free_port()
    log_path = tmp_path / f"gunicorn-{port}.log"
    environment = {
        **os.environ,
        "MODEL_PATH": str(model),
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "WEB_CONCURRENCY": "2",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / f"prometheus-{port}"),
        **env,
    }
    with log_path.open("wb") as log:
        process = subprocess.Popen(GUNICORN, cwd=REPO_ROOT, env=environment,
                                   stdout=log, stderr=subprocess.STDOUT)
    return Server(process, port, log_path)


def stop(server: Server) -> int:
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
    try:
        return server.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.process.kill()
        return server.process.wait(timeout=10)


@pytest.fixture()
def server(tmp_path: Path, model_int8_path: Path) -> Iterator[Server]:
    running = start_gunicorn(tmp_path, model_int8_path)
    try:
        wait_for_http(running.url("/ready"), timeout=60)
        yield running
    finally:
        stop(running)


def post_image(url: str, data: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "image/png"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, json.loads(response.read())


def test_sigterm_lets_the_in_flight_request_finish(server, sample_image_bytes, model_int8_path):
    expected = InferenceModel(model_int8_path, threads=1).predict_bytes(sample_image_bytes)
    body = sample_image_bytes
    half = len(body) // 2
    head = (f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
            f"Content-Length: {len(body)}\r\nX-Request-ID: in-flight\r\n"
            f"Connection: close\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(head + body[:half])
        time.sleep(0.5)  # a worker now holds the request, waiting for the rest of the body
        terminated = time.perf_counter()
        server.process.send_signal(signal.SIGTERM)
        time.sleep(1.0)  # the master has told the workers to stop...
        assert "Handling signal: term" in server.log()
        assert server.process.poll() is None  # ...and waits for the one still serving
        sock.sendall(body[half:])
        response = http.client.HTTPResponse(sock)
        response.begin()
        answer = json.loads(response.read())
    assert response.status == 200
    assert response.getheader("X-Request-ID") == "in-flight"
    assert answer["label"] == expected["label"]
    for name, p in expected["probabilities"].items():
        assert answer["probabilities"][name] == pytest.approx(p, abs=1e-6)
    assert server.process.wait(timeout=20) == 0
    drained = time.perf_counter() - terminated
    assert drained < 8.0, f"shutdown took {drained:.1f} s: workers hung until SIGKILL?"
    assert "Shutting down: Master" in server.log()


def test_metrics_aggregate_across_workers(server, sample_image_bytes):
    def one(_: int) -> int:
        status, _body = post_image(server.url("/predict"), sample_image_bytes)
        return status

    def serving_pids() -> set[int]:
        return {record["pid"] for record in _access_records(server.log())
                if record["route"] == "/predict"}

    # The kernel decides which worker accepts a connection, and one fast worker may take a
    # whole round (seen once in CI: 24 of 24); send rounds until both have served.
    total = 0
    with concurrent.futures.ThreadPoolExecutor(max_workers=6) as pool:
        while len(serving_pids()) < 2 and total < 240:
            statuses = list(pool.map(one, range(24)))
            assert statuses == [200] * 24
            total += 24
    pids = serving_pids()
    assert len(pids) == 2, f"expected both workers to serve /predict, saw pids {pids}"
    # Whichever worker answers the scrape, it reports every worker's requests.
    for _ in range(6):
        with urllib.request.urlopen(server.url("/metrics"), timeout=10) as response:
            text = response.read().decode()
        assert _value(text, "mhist_http_requests_total",
                      route="/predict", method="POST", status="200") == total
        assert _value(text, "mhist_inference_duration_seconds_count",
                      endpoint="predict") == total


def test_missing_model_stops_start_up_with_a_clear_message(tmp_path):
    missing = tmp_path / "nope.onnx"
    server = start_gunicorn(tmp_path, missing)
    assert server.process.wait(timeout=30) == 1
    assert f"cannot start: model file {missing} does not exist" in server.log()
    assert "Traceback" not in server.log()


def test_unloadable_model_fails_worker_boot(tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a protobuf at all")
    server = start_gunicorn(tmp_path, broken, WEB_CONCURRENCY="1")
    assert server.process.wait(timeout=60) == 3  # gunicorn's "Worker failed to boot"
    log = server.log()
    assert "is not a loadable ONNX model" in log
    assert "Worker failed to boot" in log


def test_not_ready_mode_serves_health_and_503(tmp_path):
    server = start_gunicorn(tmp_path, tmp_path / "later.onnx", MODEL_REQUIRED="0",
                            WEB_CONCURRENCY="1")
    try:
        wait_for_http(server.url("/health"), timeout=60)
        wait_for_http(server.url("/ready"), timeout=10, ok=lambda status: status == 503)
    finally:
        assert stop(server) == 0


def _access_records(log: str) -> list[dict]:
    records = []
    for line in log.splitlines():
        if line.startswith('{"event": "request"'):
            records.append(json.loads(line))
    return records


def _value(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    raise AssertionError(f"{name}{labels} not in /metrics")
