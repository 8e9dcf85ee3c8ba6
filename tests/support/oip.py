"""The Open Inference Protocol's client side for tests and benchmarks: real HTTP servers on
127.0.0.1 that `tritonclient.http` can talk to, for the targets that run in this process.

    with serve_wsgi(app) as url:                   # the Flask or SageMaker app, werkzeug server
        client = tritonclient.http.InferenceServerClient(url)
    with serve_wsgi(lambda_gateway(module)) as url:  # lambda/handler.py behind an HTTP API

`lambda_gateway` plays API Gateway (HTTP API, payload 2.0): every HTTP request becomes an event
built by tests/support/events.py and goes through the real `handler(event, context)`, binary
bodies base64-encoded as API Gateway does; the proxy response becomes the HTTP answer.
"""

from __future__ import annotations

import base64
import contextlib
import json
import threading
from collections.abc import Callable, Iterable, Iterator
from http import HTTPStatus
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import requests
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException
from werkzeug.serving import make_server
from werkzeug.wrappers import Request

from services.core.model import InferenceModel
from services.core.preprocessing import preprocess_bytes
from tests.support.targets import LambdaTarget

TOLERANCE = 1e-6  # /predict's probabilities are float64; the protocol's tensor is FP32

# Hop-by-hop or recomputed by the server: never copied from a proxy response.
_SKIPPED_HEADERS = frozenset({"content-length", "transfer-encoding", "connection"})


@contextlib.contextmanager
def serve_wsgi(app: Callable[..., Iterable[bytes]]) -> Iterator[str]:
    """`app` on a threaded werkzeug server at 127.0.0.1:<free port>; yields 'host:port'."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


def lambda_gateway(module: ModuleType, kind: str = "http_api") -> Callable[..., Iterable[bytes]]:
    """A WSGI app that hands each request to lambda/handler.py as an API Gateway event."""
    target = LambdaTarget(module, kind)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        request = Request(environ)
        path = request.full_path.rstrip("?")
        headers = {k: v for k, v in request.headers.items() if k.lower() != "content-length"}
        reply = target.request(request.method, path, headers, request.get_data())
        phrase = HTTPStatus(reply.status).phrase
        start_response(
            f"{reply.status} {phrase}",
            [(k, v) for k, v in reply.headers.items() if k.lower() not in _SKIPPED_HEADERS]
            + [("Content-Length", str(len(reply.body)))],
        )
        return [reply.body]

    return app


# --- the client's checks, shared by the in-process targets and the container ---------------------


class Served:
    """A target on HTTP as `tritonclient` sees it, its own POST /predict beside, the model
    file it serves (for names and preprocessing) and its limits."""

    def __init__(
        self, name: str, url: str, model: InferenceModel, max_batch: int, max_content_length: int
    ) -> None:
        self.name, self.url, self.model = name, url, model
        self.max_batch, self.max_content_length = max_batch, max_content_length
        self.client = triton.InferenceServerClient(url, connection_timeout=30, network_timeout=120)

    def predict(self, image: bytes) -> dict:
        reply = requests.post(
            f"http://{self.url}/predict",
            data=image,
            headers={"Content-Type": "image/png"},
            timeout=60,
        )
        assert reply.status_code == 200, reply.text[:300]
        return reply.json()


def bytes_input(images: list[bytes], binary: bool) -> triton.InferInput:
    """Input `image`: the files themselves (binary) or their base64 text (JSON)."""
    tensor = triton.InferInput("image", [len(images)], "BYTES")
    values = images if binary else [base64.b64encode(i) for i in images]
    tensor.set_data_from_numpy(np.array(values, dtype=np.object_), binary_data=binary)
    return tensor


def json_outputs() -> list[triton.InferRequestedOutput]:
    return [
        triton.InferRequestedOutput(n, binary_data=False)
        for n in ("probabilities", "label", "decision")
    ]


def texts(values: np.ndarray) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def assert_same_answers(
    result: triton.InferResult, expected: list[dict], classes: list[str]
) -> None:
    """The tensors and parameters of `result` say what /predict said, image by image."""
    probabilities = result.as_numpy("probabilities")
    assert probabilities.dtype == np.float32
    assert probabilities.shape == (len(expected), len(classes))
    rows = zip(
        probabilities,
        texts(result.as_numpy("label")),
        texts(result.as_numpy("decision")),
        expected,
        strict=True,
    )
    for row, label, decision, answer in rows:
        assert (label, decision) == (answer["label"], answer["decision"])
        for value, name in zip(row, classes, strict=True):
            assert abs(float(value) - answer["probabilities"][name]) <= TOLERANCE
    parameters = result.get_response()["parameters"]
    assert parameters["threshold"] == expected[0]["threshold"]
    assert parameters["classes"] == ",".join(classes)
    if "warnings" in expected[0]:
        assert json.loads(parameters["warnings"]) == [a["warnings"] for a in expected]


def refused(call: Callable[[], Any]) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value


def check_health_and_metadata(target: Served) -> None:
    client, meta = target.client, target.model.metadata
    assert client.is_server_live() and client.is_server_ready()
    server = client.get_server_metadata()
    assert server["extensions"] == ["binary_tensor_data"] and server["version"] == "2.0"
    assert client.is_model_ready(meta.name)
    assert client.is_model_ready(meta.name, meta.version)
    assert not client.is_model_ready("not-" + meta.name)
    described = client.get_model_metadata(meta.name)
    assert described == client.get_model_metadata(meta.name, meta.version)
    size = meta.preprocessing.size
    assert described["name"] == meta.name and described["versions"] == [meta.version]
    assert [(t["name"], t["datatype"], t["shape"]) for t in described["inputs"]] == [
        ("image", "BYTES", [-1]),
        (meta.input_name, "FP32", [-1, 3, size, size]),
    ]
    assert [(t["name"], t["datatype"], t["shape"]) for t in described["outputs"]] == [
        ("probabilities", "FP32", [-1, len(meta.classes)]),
        ("label", "BYTES", [-1]),
        ("decision", "BYTES", [-1]),
    ]
    for error in (
        refused(lambda: client.get_model_metadata("resnet50")),
        refused(lambda: client.get_model_metadata(meta.name, meta.version + "0")),
    ):
        assert error.status() == "404" and meta.name in error.message(), error


def check_bytes_images(target: Served, image: bytes, binary: bool) -> None:
    """One image, sent and answered in binary (tritonclient's default when no outputs are
    named: binary_data_output) or in JSON (base64 text in, JSON tensors out)."""
    meta = target.model.metadata
    result = target.client.infer(
        meta.name,
        [bytes_input([image], binary)],
        outputs=None if binary else json_outputs(),
        request_id="req-7",
    )
    answer = result.get_response()
    assert (answer["id"], answer["model_version"]) == ("req-7", meta.version)
    assert_same_answers(result, [target.predict(image)], list(meta.classes))


def check_batch(target: Served, images: list[bytes]) -> None:
    """Several images in one request, the outputs mixing binary and JSON."""
    meta = target.model.metadata
    outputs = [
        triton.InferRequestedOutput("probabilities", binary_data=True),
        triton.InferRequestedOutput("label", binary_data=False),
        triton.InferRequestedOutput("decision", binary_data=True),
    ]
    result = target.client.infer(
        meta.name, [bytes_input(images, True)], model_version=meta.version, outputs=outputs
    )
    assert_same_answers(result, [target.predict(i) for i in images], list(meta.classes))


def check_fp32(target: Served, images: list[bytes], binary: bool) -> None:
    """A client that preprocesses as /metadata says (here with our own preprocessing) and
    sends the graph's input gets /predict's probabilities."""
    meta = target.model.metadata
    batch = np.stack([preprocess_bytes(i, meta.preprocessing) for i in images])  # (N, 3, S, S)
    tensor = triton.InferInput(meta.input_name, list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch, binary_data=binary)
    result = target.client.infer(meta.name, [tensor], outputs=None if binary else json_outputs())
    expected = [target.predict(i) for i in images]
    for row, answer in zip(result.as_numpy("probabilities"), expected, strict=True):
        for value, name in zip(row, meta.classes, strict=True):
            assert abs(float(value) - answer["probabilities"][name]) <= TOLERANCE
    assert texts(result.as_numpy("label")) == [a["label"] for a in expected]
    assert result.get_response()["parameters"]["threshold"] == expected[0]["threshold"]


def check_bad_requests(target: Served, image: bytes) -> None:
    """Each refused with a 4xx whose message names the problem; no 5xx."""
    meta, infer = target.model.metadata, target.client.infer
    size = meta.preprocessing.size
    wrong_datatype = triton.InferInput("image", [1], "INT32")
    wrong_datatype.set_data_from_numpy(np.array([7], dtype=np.int32))
    fp32_as_bytes = triton.InferInput(meta.input_name, [1], "BYTES")
    fp32_as_bytes.set_data_from_numpy(np.array([image], dtype=np.object_))
    wrong_shape = triton.InferInput(meta.input_name, [1, 3, size, size + 1], "FP32")
    wrong_shape.set_data_from_numpy(np.zeros((1, 3, size, size + 1), np.float32))
    shape_lies = bytes_input([image], True)
    shape_lies.set_shape([2])
    wrong_name = triton.InferInput("pixels", [1], "BYTES")
    wrong_name.set_data_from_numpy(np.array([image], dtype=np.object_))
    empty = triton.InferInput("image", [0], "BYTES")
    empty.set_data_from_numpy(np.array([], dtype=np.object_))
    nan = np.zeros((1, 3, size, size), np.float32)
    nan[0, 1, 2, 3] = np.nan
    with_nan = triton.InferInput(meta.input_name, list(nan.shape), "FP32")
    with_nan.set_data_from_numpy(nan)
    cases = {
        "wrong datatype": (wrong_datatype, "400", "is BYTES, not INT32"),
        "FP32 input sent as BYTES": (fp32_as_bytes, "400", "is FP32, not BYTES"),
        "wrong shape": (wrong_shape, "400", f"expected [N, 3, {size}, {size}]"),
        "shape and data disagree": (shape_lies, "400", "ends before element 1"),
        "wrong name": (wrong_name, "400", "Unknown input 'pixels'"),
        "empty batch": (empty, "400", "holds no images"),
        "not an image": (
            bytes_input([b"GIF89a, but no image"], True),
            "400",
            "Element 0 of 'image'",
        ),
        "NaN": (with_nan, "400", "NaN"),
        "too many images": (
            bytes_input([image] * (target.max_batch + 1), True),
            "400",
            "MAX_BATCH",
        ),
    }
    for case, (tensor, status, words) in cases.items():
        error = refused(lambda t=tensor: infer(meta.name, [t]))
        assert (error.status(), words in error.message()) == (status, True), (case, error)
    error = refused(lambda: infer("resnet50", [bytes_input([image], True)]))
    assert error.status() == "404" and "resnet50" in error.message(), error
    error = refused(
        lambda: infer(
            meta.name, [bytes_input([image], True)], outputs=[triton.InferRequestedOutput("logits")]
        )
    )
    assert error.status() == "400" and "Unknown output 'logits'" in error.message(), error


def check_oversized(target: Served) -> None:
    """A body over MAX_CONTENT_LENGTH is a 413 naming the limit; the target keeps serving."""
    tensor = bytes_input([b"\x89PNG" + bytes(target.max_content_length)], True)
    error = refused(lambda: target.client.infer(target.model.metadata.name, [tensor]))
    assert error.status() == "413" and "MAX_CONTENT_LENGTH" in error.message(), error
    assert target.client.is_server_ready()
