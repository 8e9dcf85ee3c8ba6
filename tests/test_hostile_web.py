"""Hostile clients, third round: what a client can do to the web layer without a valid request.

- invented HTTP method names must not grow /metrics (every label value a new series, kept for
  the life of the process and, under gunicorn, in each worker's mmap file): in process and
  under a real gunicorn;
- malformed chunked framing sent straight to gunicorn (no nginx, as `make serve` runs) is a
  400 JSON `malformed_body` at once, and a bare-LF body a 408 within nginx's body timeout,
  never a 500 or a worker held until the client gives up.

Raw sockets with timeouts and bounded loops: no test here can hang.
"""

from __future__ import annotations

import concurrent.futures
import json
import random
import socket
import string
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.runtime.nginx import BODY_TIMEOUT_S
from services.web.app import create_app
from services.web.metrics import KNOWN_METHODS, OTHER_METHOD
from tests.support.containers import wait_for_http
from tests.test_service_gunicorn import Server, start_gunicorn, stop

pytestmark = pytest.mark.slow

INVENTED_METHODS = 2000
METRICS_GROWTH_BYTES = 4096  # the counts' digits grow; a new series would add ~1.5 KB each
PATHS = ("/predict", "/predict/batch", "/nowhere", "/health")
BODY_ROUTES = ("/predict", "/predict/batch", "/predict/region")
SOCKET_TIMEOUT_S = BODY_TIMEOUT_S + 10.0


def invented_methods(count: int, seed: int) -> list[str]:
    """Upper-case tokens of 3 to 16 letters, as gunicorn's request line accepts them."""
    rng = random.Random(seed)
    return ["".join(rng.choices(string.ascii_uppercase, k=rng.randint(3, 16)))
            for _ in range(count)]


def method_labels(exposition: str) -> set[str]:
    return {sample.labels["method"] for family in text_string_to_metric_families(exposition)
            for sample in family.samples if "method" in sample.labels}


# --- /metrics under invented methods, in process -----------------------------------------------

def test_invented_methods_do_not_grow_metrics_in_process(model_int8_path: Path) -> None:
    client = create_app({"MODEL_PATH": str(model_int8_path)}).test_client()
    for method in invented_methods(len(PATHS), seed=1):  # the one "other" series per route
        for path in PATHS:
            client.open(path, method=method)
    before = client.get("/metrics").get_data(as_text=True)
    for index, method in enumerate(invented_methods(INVENTED_METHODS, seed=2)):
        response = client.open(PATHS[index % len(PATHS)], method=method)
        assert 400 <= response.status_code < 500 and response.is_json, method
    after = client.get("/metrics").get_data(as_text=True)
    assert len(after.encode()) - len(before.encode()) < METRICS_GROWTH_BYTES
    assert method_labels(after) <= KNOWN_METHODS | {OTHER_METHOD}
    assert OTHER_METHOD in method_labels(after)


# --- the same, and malformed chunked bodies, under gunicorn -------------------------------------

@pytest.fixture(scope="module")
def gunicorn(model_int8_path: Path, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[Server]:
    running = start_gunicorn(tmp_path_factory.mktemp("hostile-web"), model_int8_path)
    try:
        wait_for_http(running.url("/ready"), timeout=60)
        yield running
    finally:
        stop(running)


def exchange(port: int, data: bytes, timeout: float = SOCKET_TIMEOUT_S) -> tuple[bytes, float]:
    """Send `data`, read until the server closes or `timeout`: (answer, seconds)."""
    started = time.perf_counter()
    answer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        try:
            while len(answer) < 1 << 20:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
        except TimeoutError:
            pass
    return answer, time.perf_counter() - started


def status_and_json(answer: bytes) -> tuple[int, dict]:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 "), answer[:200]
    return int(head.split()[1]), json.loads(body)


def metrics_text(server: Server) -> str:
    with urllib.request.urlopen(server.url("/metrics"), timeout=10) as response:
        return response.read().decode()


def test_invented_methods_do_not_grow_metrics_under_gunicorn(gunicorn: Server) -> None:
    def send(indexed: tuple[int, str]) -> int:
        index, method = indexed
        request = (f"{method} {PATHS[index % len(PATHS)]} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                   "Connection: close\r\n\r\n").encode()
        answer, _ = exchange(gunicorn.port, request, timeout=10)
        return status_and_json(answer)[0]

    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        warm = list(pool.map(send, enumerate(invented_methods(len(PATHS), seed=3))))
        before = metrics_text(gunicorn)
        statuses = list(pool.map(send, enumerate(invented_methods(INVENTED_METHODS, seed=4))))
    after = metrics_text(gunicorn)
    assert all(400 <= status < 500 for status in warm + statuses)
    assert len(after.encode()) - len(before.encode()) < METRICS_GROWTH_BYTES
    assert method_labels(after) <= KNOWN_METHODS | {OTHER_METHOD}


def chunked(path: str, body: bytes, content_type: str = "image/png") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
            "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n").encode() + body


MALFORMED_FRAMING = {
    "negative size": b"-5\r\nabcde\r\n0\r\n\r\n",
    "size not hex": b"zz\r\nabc\r\n0\r\n\r\n",
    "empty size": b"\r\nabc\r\n0\r\n\r\n",
    "no CRLF after the data": b"3\r\nabcXX0\r\n\r\n",
    "bare CR in an extension": b"3;a=\rb\r\nabc\r\n0\r\n\r\n",
    "size beyond the data, then close": b"ff\r\nabc\r\n",
}
CONTENT_TYPES = ("image/png", "application/json", "multipart/form-data; boundary=x")


@pytest.mark.parametrize("framing", MALFORMED_FRAMING)
def test_malformed_chunked_framing_is_a_400(gunicorn: Server, framing: str) -> None:
    for path in BODY_ROUTES:
        for content_type in CONTENT_TYPES:
            request = chunked(path, MALFORMED_FRAMING[framing], content_type)
            with socket.create_connection(("127.0.0.1", gunicorn.port), timeout=10) as sock:
                sock.sendall(request)
                sock.shutdown(socket.SHUT_WR)  # "then close": the client sends no more
                answer = b""
                for _ in range(64):
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    answer += chunk
            status, body = status_and_json(answer)
            assert (status, body["error"]["code"]) == (400, "malformed_body"), (path, answer)
            assert set(body["error"]) == {"code", "message"}
    assert "unhandled_exception" not in gunicorn.log()


def test_bare_lf_framing_is_answered_within_the_body_timeout(gunicorn: Server) -> None:
    for path in BODY_ROUTES:  # one at a time: each holds a worker until it times out
        answer, seconds = exchange(gunicorn.port, chunked(path, b"3\nabc\n0\n\n"))
        assert answer, f"no answer in {seconds:.1f} s: a worker is held by a bare-LF body"
        status, body = status_and_json(answer)
        assert (status, body["error"]["code"]) == (408, "request_timeout")
        assert seconds < BODY_TIMEOUT_S + 3.0
    started = time.perf_counter()  # the workers are free again
    with urllib.request.urlopen(gunicorn.url("/health"), timeout=5) as response:
        assert response.status == 200
    assert time.perf_counter() - started < 2.0
