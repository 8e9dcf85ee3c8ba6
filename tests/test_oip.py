"""The Open Inference Protocol (services/web/routes/v2.py) driven by the real `tritonclient`
(tritonclient[http], pinned in constraints.txt) against the targets that run in this process:
the Flask app, the SageMaker app and lambda/handler.py behind an API Gateway of our own
(tests/support/oip.py), each on a real HTTP server on 127.0.0.1. The Flask container gets the
same checks in tests/test_oip_container.py.

Every answer is compared with the same target's POST /predict for the same image: labels and
decisions equal, probabilities to 1e-6 (the protocol's tensor is FP32).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from services.adapters.aws_lambda import app_of
from services.web.state import runtime
from tests.support import oip
from tests.support.oip import Served, lambda_gateway, serve_wsgi
from tests.support.targets import all_targets

TARGETS = ("flask", "sagemaker", "lambda")


@pytest.fixture(scope="module")
def served(
    model_int8_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Served]]:
    targets = {t.name: t for t in all_targets(model_int8_path, tmp_path_factory.mktemp("oip"))}
    handler = targets["lambda-http_api"].module  # type: ignore[attr-defined]
    apps = {
        "flask": targets["flask"].app,  # type: ignore[attr-defined]
        "sagemaker": targets["sagemaker"].app,  # type: ignore[attr-defined]
        "lambda": app_of(handler.handler),
    }
    wsgi = {**apps, "lambda": lambda_gateway(handler)}  # the Lambda app only through its handler
    with (
        serve_wsgi(wsgi["flask"]) as flask,
        serve_wsgi(wsgi["sagemaker"]) as sagemaker,
        serve_wsgi(wsgi["lambda"]) as lam,
    ):
        urls = {"flask": flask, "sagemaker": sagemaker, "lambda": lam}
        yield {name: served_target(name, urls[name], apps[name]) for name in TARGETS}


def served_target(name: str, url: str, app: object) -> Served:
    current = runtime(app)  # type: ignore[arg-type]
    return Served(
        name,
        url,
        current.state.require(),
        current.settings.max_batch,
        current.settings.max_content_length,
    )


@pytest.fixture(scope="module")
def images(sample_dir: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted((sample_dir / "images").glob("*.png"))[:3]]


@pytest.mark.parametrize("name", TARGETS)
def test_health_and_metadata(name: str, served: dict[str, Served]) -> None:
    oip.check_health_and_metadata(served[name])


@pytest.mark.parametrize("name", TARGETS)
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_bytes_images_answer_like_predict(
    name: str, binary: bool, served: dict[str, Served], images: list[bytes]
) -> None:
    oip.check_bytes_images(served[name], images[0], binary)


@pytest.mark.parametrize("name", TARGETS)
def test_a_batch_answers_like_predict_image_by_image(
    name: str, served: dict[str, Served], images: list[bytes]
) -> None:
    oip.check_batch(served[name], images)


@pytest.mark.parametrize("name", TARGETS)
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_an_fp32_tensor_answers_like_predict(
    name: str, binary: bool, served: dict[str, Served], images: list[bytes]
) -> None:
    oip.check_fp32(served[name], images[:2], binary)


@pytest.mark.parametrize("name", TARGETS)
def test_bad_requests_are_4xx_that_say_why(
    name: str, served: dict[str, Served], images: list[bytes]
) -> None:
    oip.check_bad_requests(served[name], images[0])


@pytest.mark.parametrize("name", TARGETS)
def test_an_oversized_body_is_a_413(name: str, served: dict[str, Served]) -> None:
    oip.check_oversized(served[name])


def test_v2_errors_are_the_protocols_and_other_routes_keep_theirs(
    served: dict[str, Served],
) -> None:
    url = served["flask"].url

    def get(path: str) -> requests.Response:
        return requests.get(f"http://{url}{path}", timeout=30)

    for path, status in (
        ("/v2/models/nope", 404),
        ("/v2/nowhere", 404),
        ("/v2/models/x/infer", 405),
    ):
        reply = get(path)
        assert (reply.status_code, list(reply.json())) == (status, ["error"]), path
        assert isinstance(reply.json()["error"], str) and reply.json()["error"], path
    ours = requests.post(
        f"http://{url}/predict", data=b"no image", headers={"Content-Type": "image/png"}, timeout=30
    )
    assert ours.status_code == 400 and set(ours.json()["error"]) == {"code", "message"}
    elsewhere = get("/v2x")
    assert elsewhere.status_code == 404 and set(elsewhere.json()["error"]) == {"code", "message"}


def test_the_token_guards_v2_but_not_its_probes(model_int8_path: Path) -> None:
    """With MHIST_API_TOKEN set, /v2/health/* stay open (Kubernetes probes send no token);
    everything else under /v2 is a 401 in the protocol's shape without it."""
    from services.web.app import create_app

    client = create_app({"MODEL_PATH": str(model_int8_path), "API_TOKEN": "t0k"}).test_client()
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200
    refused = client.get("/v2")
    assert refused.status_code == 401 and isinstance(refused.get_json()["error"], str)
    assert client.get("/v2", headers={"Authorization": "Bearer t0k"}).status_code == 200


def test_without_a_model_the_process_is_live_but_not_ready(tmp_path: Path) -> None:
    """MODEL_REQUIRED=0 and no file yet: liveness 200, readiness and every model route 503,
    in the protocol's shape (KServe keeps such a pod out of the service, and alive)."""
    from services.web.app import create_app

    app = create_app({"MODEL_PATH": str(tmp_path / "later.onnx"), "MODEL_REQUIRED": "0"})
    client = app.test_client()
    assert client.get("/v2/health/live").get_json() == {"live": True}
    for method, path in (
        ("GET", "/v2/health/ready"),
        ("GET", "/v2/models/mhist-resnet18"),
        ("POST", "/v2/models/mhist-resnet18/infer"),
    ):
        reply = client.open(path, method=method, data=b"{}")
        assert reply.status_code == 503, (path, reply.get_data())
        assert isinstance(reply.get_json()["error"], str), path
