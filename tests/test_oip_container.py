"""The real `tritonclient` against the Flask container (services/Dockerfile: nginx in front of
gunicorn), built and run with podman or docker: the same checks as tests/test_oip.py runs on
the in-process targets, then a slow body on the infer route while a normal client is served.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from services.core.model import InferenceModel
from services.web.settings import Settings
from tests.support import oip
from tests.support.containers import run_container, wait_for_http
from tests.support.images import built_image

pytestmark = pytest.mark.container

CONTAINER_PORT = 8080
SLOW_BYTE_EVERY_S = 1.0  # under nginx's 4 s pause between two reads of a body: never cut for it
SLOW_HOLD_S = 40.0  # bound of the slow client's loop


@pytest.fixture(scope="module")
def flask_image(require_containers: str, model_int8_path: Path) -> str:
    return built_image("flask", model_int8_path)


def test_tritonclient_against_the_flask_container(
    flask_image: str, model_int8_path: Path, sample_dir: Path
) -> None:
    images = [p.read_bytes() for p in sorted((sample_dir / "images").glob("*.png"))[:3]]
    settings = Settings.from_env(overrides={"MODEL_PATH": str(model_int8_path), "TARGET": "flask"})
    model = InferenceModel(model_int8_path, threads=1)
    with run_container(flask_image, port=CONTAINER_PORT) as box:
        wait_for_http(box.url("/v2/health/ready"), timeout=90, container=box)
        target = oip.Served(
            "flask-container",
            f"127.0.0.1:{box.host_port}",
            model,
            settings.max_batch,
            settings.max_content_length,
        )
        oip.check_health_and_metadata(target)
        for binary in (True, False):
            oip.check_bytes_images(target, images[0], binary)
            oip.check_fp32(target, images[:2], binary)
        oip.check_batch(target, images)
        oip.check_bad_requests(target, images[0])
        oip.check_oversized(target)  # refused by nginx, in the protocol's shape
        slow = slow_body(box.host_port, model.metadata.name)
        logs = box.logs()
    assert "Traceback" not in logs, logs[-3000:]
    print(f"slow body: {slow}")
    cut_after_s, answer, normal_s = slow
    assert answer.startswith(b"HTTP/1.1 408") or answer == b"", answer[:300]
    if answer:
        assert b'{"error": "' in answer, answer[-300:]
    assert cut_after_s < SLOW_HOLD_S, slow
    assert max(normal_s) < 2.0, normal_s


def slow_body(port: int, name: str) -> tuple[float, bytes, list[float]]:
    """A POST to the infer route whose body trickles in one byte a second, then stops: nginx
    buffers it without troubling gunicorn, and cuts it off when it stops arriving (408 after
    4 s without a byte). Meanwhile normal requests are timed. (seconds until cut off, what
    the server sent, normal request latencies)."""
    head = (
        f"POST /v2/models/{name}/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n"
        "Content-Type: application/json\r\n\r\n"
    ).encode()
    normal: list[float] = []
    with socket.create_connection(("127.0.0.1", port), timeout=SLOW_HOLD_S) as sock:
        started = time.monotonic()
        sock.sendall(head + b'{"inputs": [')
        for _ in range(5):  # a dribble, then silence
            time.sleep(SLOW_BYTE_EVERY_S)
            sock.sendall(b" ")
            normal.append(_timed_ready(port))
        answer = b""
        sock.settimeout(1.0)
        while time.monotonic() - started < SLOW_HOLD_S:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                normal.append(_timed_ready(port))
                continue
            except ConnectionResetError:
                break
            if not chunk:
                break
            answer += chunk
        return time.monotonic() - started, answer, normal


def _timed_ready(port: int) -> float:
    import urllib.request

    started = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=10) as reply:
        assert reply.status == 200
    return time.perf_counter() - started
