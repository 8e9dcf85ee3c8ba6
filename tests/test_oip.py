"""The Open Inference Protocol (services/web/routes/v2.py) driven by the real `tritonclient`
(tritonclient[http], pinned in constraints.txt) against the targets that run in this process:
the Flask app, the SageMaker app and lambda/handler.py behind an API Gateway of our own
(tests/support/oip.py), each on a real HTTP server on 127.0.0.1. The Flask container gets the
same client in tests/test_oip_container.py.

Every answer is compared with the same target's POST /predict for the same image: labels and
decisions equal, probabilities to 1e-6 (the protocol's tensor is FP32).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from services.core.model import InferenceModel
from services.core.preprocessing import preprocess_bytes
from services.web.state import runtime
from tests.support.oip import lambda_gateway, serve_wsgi
from tests.support.targets import all_targets

TARGETS = ("flask", "sagemaker", "lambda")
TOLERANCE = 1e-6


class Served:
    """One target on HTTP: its base URL, its own /predict and the model it serves."""

    def __init__(self, name: str, url: str, app: object, model: InferenceModel) -> None:
        self.name, self.url, self.app, self.model = name, url, app, model
        self.client = triton.InferenceServerClient(url, connection_timeout=30, network_timeout=120)

    @property
    def model_name(self) -> str:
        return self.model.metadata.name

    def predict(self, image: bytes) -> dict:
        reply = requests.post(
            f"http://{self.url}/predict",
            data=image,
            headers={"Content-Type": "image/png"},
            timeout=60,
        )
        assert reply.status_code == 200, reply.text[:300]
        return reply.json()


@pytest.fixture(scope="module")
def served(
    model_int8_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Served]]:
    targets = {t.name: t for t in all_targets(model_int8_path, tmp_path_factory.mktemp("oip"))}
    lam = targets["lambda-http_api"]
    wsgi = {
        "flask": targets["flask"].app,
        "sagemaker": targets["sagemaker"].app,
        "lambda": lambda_gateway(lam.module),
    }
    from services.adapters.aws_lambda import app_of

    apps = {
        "flask": targets["flask"].app,
        "sagemaker": targets["sagemaker"].app,
        "lambda": app_of(lam.module.handler),
    }
    with (
        serve_wsgi(wsgi["flask"]) as f,
        serve_wsgi(wsgi["sagemaker"]) as s,
        serve_wsgi(wsgi["lambda"]) as la,
    ):
        urls = {"flask": f, "sagemaker": s, "lambda": la}
        yield {
            name: Served(name, urls[name], apps[name], runtime(apps[name]).state.model)
            for name in TARGETS
        }


@pytest.fixture(scope="module")
def images(sample_dir: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted((sample_dir / "images").glob("*.png"))[:3]]


def bytes_input(images: list[bytes], binary: bool) -> triton.InferInput:
    tensor = triton.InferInput("image", [len(images)], "BYTES")
    values = images if binary else [base64.b64encode(i) for i in images]
    tensor.set_data_from_numpy(np.array(values, dtype=np.object_), binary_data=binary)
    return tensor


def json_outputs() -> list[triton.InferRequestedOutput]:
    return [
        triton.InferRequestedOutput(n, binary_data=False)
        for n in ("probabilities", "label", "decision")
    ]


def assert_same_answers(
    result: triton.InferResult, expected: list[dict], classes: list[str]
) -> None:
    """The tensors and parameters of `result` say what /predict said, image by image."""
    probabilities = result.as_numpy("probabilities")
    assert probabilities.dtype == np.float32 and probabilities.shape == (
        len(expected),
        len(classes),
    )
    labels = [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("label")]
    decisions = [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("decision")]
    for row, label, decision, answer in zip(
        probabilities, labels, decisions, expected, strict=True
    ):
        assert label == answer["label"]
        assert decision == answer["decision"]
        for value, name in zip(row, classes, strict=True):
            assert abs(float(value) - answer["probabilities"][name]) <= TOLERANCE
    parameters = result.get_response()["parameters"]
    assert parameters["threshold"] == expected[0]["threshold"]
    assert parameters["classes"] == ",".join(classes)
    if "warnings" in expected[0]:
        assert json.loads(parameters["warnings"]) == [a["warnings"] for a in expected]


# --- health and metadata ----------------------------------------------------------------------


@pytest.mark.parametrize("name", TARGETS)
def test_health_and_metadata(name: str, served: dict[str, Served]) -> None:
    target = served[name]
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
    for bad in (
        lambda: client.get_model_metadata("resnet50"),
        lambda: client.get_model_metadata(meta.name, meta.version + "0"),
    ):
        with pytest.raises(InferenceServerException) as caught:
            bad()
        assert caught.value.status() == "404", caught.value
        assert meta.name in caught.value.message()


# --- infer ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TARGETS)
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_bytes_images_answer_like_predict(
    name: str, binary: bool, served: dict[str, Served], images: list[bytes]
) -> None:
    target = served[name]
    classes = list(target.model.metadata.classes)
    expected = [target.predict(images[0])]
    # No outputs named: tritonclient asks for every output in binary (binary_data_output).
    outputs = None if binary else json_outputs()
    result = target.client.infer(
        target.model_name, [bytes_input(images[:1], binary)], outputs=outputs, request_id="req-7"
    )
    assert result.get_response()["id"] == "req-7"
    assert result.get_response()["model_version"] == target.model.metadata.version
    assert_same_answers(result, expected, classes)


@pytest.mark.parametrize("name", TARGETS)
def test_a_batch_answers_like_predict_image_by_image(
    name: str, served: dict[str, Served], images: list[bytes]
) -> None:
    target = served[name]
    meta = target.model.metadata
    expected = [target.predict(image) for image in images]
    outputs = [
        triton.InferRequestedOutput("probabilities", binary_data=True),
        triton.InferRequestedOutput("label", binary_data=False),
        triton.InferRequestedOutput("decision", binary_data=True),
    ]
    result = target.client.infer(
        meta.name, [bytes_input(images, True)], model_version=meta.version, outputs=outputs
    )
    assert_same_answers(result, expected, list(meta.classes))


@pytest.mark.parametrize("name", TARGETS)
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_an_fp32_tensor_answers_like_predict(
    name: str, binary: bool, served: dict[str, Served], images: list[bytes]
) -> None:
    """A client that preprocesses as /metadata says (here with our own preprocessing) and
    sends the graph's input gets /predict's probabilities."""
    target = served[name]
    meta = target.model.metadata
    batch = np.stack([preprocess_bytes(i, meta.preprocessing) for i in images[:2]])
    tensor = triton.InferInput(meta.input_name, list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch, binary_data=binary)
    result = target.client.infer(meta.name, [tensor], outputs=None if binary else json_outputs())
    expected = [target.predict(i) for i in images[:2]]
    probabilities = result.as_numpy("probabilities")
    for row, answer in zip(probabilities, expected, strict=True):
        for value, cls in zip(row, meta.classes, strict=True):
            assert abs(float(value) - answer["probabilities"][cls]) <= TOLERANCE
    labels = [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("label")]
    assert labels == [a["label"] for a in expected]
    assert result.get_response()["parameters"]["threshold"] == expected[0]["threshold"]


# --- bad requests, through the client ---------------------------------------------------------


def refused(call: object) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        call()  # type: ignore[operator]
    return caught.value


@pytest.mark.parametrize("name", TARGETS)
def test_bad_requests_are_4xx_in_the_protocols_shape(
    name: str, served: dict[str, Served], images: list[bytes]
) -> None:
    target = served[name]
    client, meta = target.client, target.model.metadata
    size = meta.preprocessing.size
    infer = client.infer

    wrong_datatype = triton.InferInput("image", [1], "INT32")
    wrong_datatype.set_data_from_numpy(np.array([7], dtype=np.int32))
    fp32_as_bytes = triton.InferInput(meta.input_name, [1], "BYTES")
    fp32_as_bytes.set_data_from_numpy(np.array([images[0]], dtype=np.object_))
    wrong_shape = triton.InferInput(meta.input_name, [1, 3, size, size + 1], "FP32")
    wrong_shape.set_data_from_numpy(np.zeros((1, 3, size, size + 1), np.float32))
    shape_lies = bytes_input(images[:1], True)
    shape_lies.set_shape([2])
    wrong_name = triton.InferInput("pixels", [1], "BYTES")
    wrong_name.set_data_from_numpy(np.array([images[0]], dtype=np.object_))
    empty = triton.InferInput("image", [0], "BYTES")
    empty.set_data_from_numpy(np.array([], dtype=np.object_))
    not_an_image = bytes_input([b"GIF89a this is not an image at all"], True)
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
        "not an image": (not_an_image, "400", "Element 0 of 'image'"),
        "NaN": (with_nan, "400", "NaN"),
    }
    for case, (tensor, status, words) in cases.items():
        error = refused(lambda t=tensor: infer(meta.name, [t]))
        assert (error.status(), words in error.message()) == (status, True), (case, error)

    too_many = runtime(target.app).settings.max_batch + 1
    error = refused(lambda: infer(meta.name, [bytes_input(images[:1] * too_many, True)]))
    assert error.status() == "400" and "MAX_BATCH" in error.message(), error
    error = refused(lambda: infer("resnet50", [bytes_input(images[:1], True)]))
    assert error.status() == "404" and "resnet50" in error.message(), error
    error = refused(
        lambda: infer(
            meta.name,
            [bytes_input(images[:1], True)],
            outputs=[triton.InferRequestedOutput("logits")],
        )
    )
    assert error.status() == "400" and "Unknown output 'logits'" in error.message(), error


@pytest.mark.parametrize("name", TARGETS)
def test_an_oversized_body_is_a_413(name: str, served: dict[str, Served]) -> None:
    target = served[name]
    limit = runtime(target.app).settings.max_content_length
    error = refused(
        lambda: target.client.infer(
            target.model_name, [bytes_input([b"\x89PNG" + bytes(limit)], True)]
        )
    )
    assert error.status() == "413" and "MAX_CONTENT_LENGTH" in error.message(), error
    assert target.client.is_server_ready()  # and the target keeps serving


def test_v2_errors_are_the_protocols_and_other_routes_keep_theirs(
    served: dict[str, Served],
) -> None:
    url = served["flask"].url
    v2 = requests.get(f"http://{url}/v2/models/nope", timeout=30)
    assert (v2.status_code, list(v2.json())) == (404, ["error"])
    assert isinstance(v2.json()["error"], str)
    unmatched = requests.get(f"http://{url}/v2/nowhere", timeout=30)
    assert unmatched.status_code == 404 and isinstance(unmatched.json()["error"], str)
    wrong_method = requests.get(f"http://{url}/v2/models/x/infer", timeout=30)
    assert wrong_method.status_code == 405 and isinstance(wrong_method.json()["error"], str)
    ours = requests.post(
        f"http://{url}/predict", data=b"no image", headers={"Content-Type": "image/png"}, timeout=30
    )
    assert ours.status_code == 400 and set(ours.json()["error"]) == {"code", "message"}
    elsewhere = requests.get(f"http://{url}/v2x", timeout=30)
    assert elsewhere.status_code == 404 and set(elsewhere.json()["error"]) == {"code", "message"}
