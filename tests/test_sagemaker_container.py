"""The SageMaker image, run the way SageMaker runs it: `IMAGE serve`, the extracted
model.tar.gz mounted at /opt/ml/model, HTTP on the container's port.

Checks the container contract (/ping before and after load, content types, Accept, errors,
/execution-parameters, SIGTERM drain, start-up refusal) and that its JSON equals the Flask
service's for the same bytes. Prints the image size and the start → first /ping 200 time.
"""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import requests

from awsdeploy import container_engine
from services.web.app import create_app as create_flask_app
from tests.support.containers import free_port, run_container, start_container, wait_for_http
from tests.support.images import built_image
from tests.support.sagemaker_files import package_and_extract

pytestmark = pytest.mark.container

MODEL_MOUNT = "/opt/ml/model"


@pytest.fixture(scope="module")
def image(require_containers: str, model_int8_path: Path) -> str:
    started = time.perf_counter()
    tag = built_image("sagemaker", model_int8_path)  # the model is mounted, not baked
    size = container_engine.image_size_bytes(tag)
    print(f"\nsagemaker image {tag}: {size / 1e6:.0f} MB, built in "
          f"{time.perf_counter() - started:.0f} s")
    return tag


@pytest.fixture(scope="module")
def model_dir(model_int8_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return package_and_extract(model_int8_path, tmp_path_factory.mktemp("sm-container"))[1]


def mount(folder: Path) -> str:
    return f"{folder}:{MODEL_MOUNT}:ro"


def poll_ping(url: str, timeout: float = 60.0) -> tuple[float, list[str]]:
    """Poll /ping tightly; (seconds until the first 200, what was seen before it)."""
    seen: list[str] = []
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return time.perf_counter() - started, seen
                seen.append(f"HTTP {response.status}")
        except urllib.error.HTTPError as exc:
            seen.append(f"HTTP {exc.code}")
        except OSError as exc:  # refused / reset while gunicorn is not yet listening
            seen.append(type(exc).__name__)
        time.sleep(0.02)
    raise TimeoutError(f"{url} never answered 200; saw {seen[-5:]}")


@pytest.fixture(scope="module")
def server(image: str, model_dir: Path):
    """One container for the request tests; reports start → first 200 on /ping."""
    with run_container(image, port=8080, command=["serve"], volumes=[mount(model_dir)],
                       env={"SAGEMAKER_MODEL_SERVER_WORKERS": "2"}) as box:
        after_run = time.perf_counter() - box.started_at
        to_first_200, seen = poll_ping(box.url("/ping"))
        total = after_run + to_first_200
        print(f"\nsagemaker container: start → first /ping 200 in {total:.2f} s "
              f"({after_run:.2f} s in `run`, then {len(seen)} polls not yet 200: "
              f"{sorted(set(seen))})")
        box.startup = {"seconds": total, "seen_before_200": seen}
        yield box


@pytest.fixture(scope="module")
def flask_reference(model_dir: Path):
    app = create_flask_app({"MODEL_PATH": str(model_dir / "model.onnx"), "API_TOKEN": None,
                            "ORT_INTRA_OP_THREADS": 1})
    client = app.test_client()

    def predict(data: bytes) -> dict:
        response = client.post("/predict", data=data, headers={"Content-Type": "image/png"})
        assert response.status_code == 200
        return response.get_json()

    return predict


def post(box, body: bytes | str, content_type: str | None, **headers: str) -> requests.Response:
    all_headers = {**({"Content-Type": content_type} if content_type else {}), **headers}
    return requests.post(box.url("/invocations"), data=body, headers=all_headers, timeout=30)


def assert_error(response: requests.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json()["error"]["code"] == code
    assert "Traceback" not in response.text


# --- start-up -----------------------------------------------------------------------------------

def test_ping_is_not_200_before_the_model_is_loaded(server) -> None:
    # serve checks the model before gunicorn binds: the first polls are refused.
    assert server.startup["seen_before_200"], "the very first /ping was already 200"
    assert "HTTP 200" not in server.startup["seen_before_200"]


def test_ping_after_load_is_200_empty_and_fast(server) -> None:
    started = time.perf_counter()
    response = requests.get(server.url("/ping"), timeout=2)
    assert (response.status_code, response.content) == (200, b"")
    assert time.perf_counter() - started < 2.0


def test_image_has_no_training_stack(image: str) -> None:
    code = ("import importlib.util as u; print(','.join(m for m in "
            "('torch', 'torchvision', 'mlflow', 'boto3', 'sagemaker') if u.find_spec(m)))")
    result = subprocess.run([container_engine.engine(), "run", "--rm", image, "python", "-c", code],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def test_image_labels_and_user(image: str) -> None:
    result = subprocess.run([container_engine.engine(), "image", "inspect", image, "--format",
                             "{{json .Config}}"], capture_output=True, text=True, timeout=60)
    config = json.loads(result.stdout)
    assert config["Labels"]["com.amazonaws.sagemaker.capabilities.accept-bind-to-port"] == "true"
    assert config["User"] not in ("", "0", "root")


# --- requests -----------------------------------------------------------------------------------

@pytest.mark.parametrize("content_type", ["image/png", "application/x-image",
                                          "application/octet-stream"])
def test_raw_content_types_equal_flask(server, flask_reference, sample_image_bytes: bytes,
                                       content_type: str) -> None:
    response = post(server, sample_image_bytes, content_type)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json() == flask_reference(sample_image_bytes)


def test_jpeg_and_json_equal_flask(server, flask_reference, sample_image_bytes: bytes) -> None:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.open(io.BytesIO(sample_image_bytes)).convert("RGB").save(buffer, "JPEG")
    jpeg = buffer.getvalue()
    assert post(server, jpeg, "image/jpeg").json() == flask_reference(jpeg)
    encoded = base64.b64encode(sample_image_bytes).decode()
    single = post(server, json.dumps({"image": encoded}), "application/json")
    assert single.json() == flask_reference(sample_image_bytes)
    batch = post(server, json.dumps({"instances": [{"image": encoded}, {"image": "!!"}]}),
                 "application/json").json()
    assert batch["count"] == 2 and batch["errors"] == 1
    assert batch["predictions"][0] == flask_reference(sample_image_bytes)
    assert batch["predictions"][1]["error"]["code"] == "invalid_base64"


@pytest.mark.parametrize(("accept", "status"), [
    ("application/json", 200), ("*/*", 200), (None, 200),
    ("text/csv", 406), ("application/x-protobuf", 406),
])
def test_accept(server, sample_image_bytes: bytes, accept: str | None, status: int) -> None:
    headers = {"Accept": accept} if accept else {}
    session = requests.Session()
    if accept is None:
        session.headers.pop("Accept", None)  # requests adds */* by default
    response = session.post(server.url("/invocations"), data=sample_image_bytes, timeout=30,
                            headers={"Content-Type": "image/png", **headers})
    if status == 200:
        assert response.status_code == 200 and "probabilities" in response.json()
    else:
        assert_error(response, 406, "not_acceptable")


def test_errors(server, sample_image_bytes: bytes) -> None:
    assert_error(post(server, sample_image_bytes, "text/plain"), 415, "unsupported_media_type")
    assert_error(post(server, b"not an image", "image/png"), 400, "invalid_image")
    assert_error(post(server, "{oops", "application/json"), 400, "invalid_json")
    assert_error(requests.get(server.url("/nope"), timeout=10), 404, "not_found")


def test_body_over_6_mb_is_413(server) -> None:
    too_big = b"\0" * (6 * 1024 * 1024 + 1)
    assert_error(post(server, too_big, "application/octet-stream"), 413, "payload_too_large")


def test_custom_attributes_header_is_ignored(server, flask_reference, sample_image_bytes) -> None:
    response = post(server, sample_image_bytes, "image/png",
                    **{"X-Amzn-SageMaker-Custom-Attributes": "trace=1;" + "a" * 2000})
    assert response.status_code == 200
    assert response.json() == flask_reference(sample_image_bytes)


def test_execution_parameters(server) -> None:
    response = requests.get(server.url("/execution-parameters"), timeout=10)
    assert response.json() == {"MaxConcurrentTransforms": 2, "BatchStrategy": "SINGLE_RECORD",
                               "MaxPayloadInMB": 6}


# --- port, SIGTERM, refusal ---------------------------------------------------------------------

def _send_partial_request(port: int, body: bytes, first_part: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    head = (f"POST /invocations HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    sock.sendall(head + body[:first_part])
    return sock


def _read_response(sock: socket.socket) -> tuple[int, dict]:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_sigterm_lets_the_request_in_flight_finish(image: str, model_dir: Path, flask_reference,
                                                   sample_image_bytes: bytes) -> None:
    # Another port through SAGEMAKER_BIND_TO_PORT, as SageMaker may choose it.
    port = 9090
    box = start_container(image, port=port, host_port=free_port(), command=["serve"],
                          volumes=[mount(model_dir)],
                          env={"SAGEMAKER_BIND_TO_PORT": str(port),
                               "SAGEMAKER_MODEL_SERVER_WORKERS": "1"})
    try:
        wait_for_http(box.url("/ping"), container=box)
        half = len(sample_image_bytes) // 2
        sock = _send_partial_request(box.host_port, sample_image_bytes, half)
        time.sleep(0.5)  # the worker is now reading this request's body
        subprocess.run([box.engine, "kill", "--signal", "TERM", box.name], check=True,
                       capture_output=True, timeout=30)
        time.sleep(1.0)
        assert box.state() == "running", "exited before the request in flight finished"
        sock.sendall(sample_image_bytes[half:])
        status, body = _read_response(sock)
        sock.close()
        assert status == 200 and body == flask_reference(sample_image_bytes)
        deadline = time.monotonic() + 30
        # podman reports "stopped" for a moment between the process's exit and "exited".
        while box.state() != "exited" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert box.state() == "exited" and box.exit_code() == 0, box.logs()[-3000:]
        assert "Handling signal: term" in box.logs()
    finally:
        box.remove()


@pytest.mark.parametrize(("volumes", "message"), [
    ([], "model directory /opt/ml/model does not exist"),
    (["garbage"], "not a loadable ONNX model"),
])
def test_serve_without_a_good_model_exits_non_zero(image: str, tmp_path: Path, volumes,
                                                   message: str) -> None:
    args = []
    if volumes:
        folder = tmp_path / "model"
        folder.mkdir(mode=0o755)
        (folder / "model.onnx").write_bytes(b"not onnx at all")
        (folder / "model.onnx").chmod(0o644)
        args = ["-v", mount(folder)]
    result = subprocess.run([container_engine.engine(), "run", "--rm", *args, image, "serve"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "serve: cannot start:" in result.stderr and message in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
