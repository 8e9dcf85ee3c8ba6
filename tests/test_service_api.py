"""The Flask service through Flask's test client: every route and every error code.

The model is the fixture exported by the real pipeline (tests/conftest.py); expected answers
come from the in-process InferenceModel on the same bytes, never from hard-coded numbers.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import shutil
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from openapi_spec_validator import validate
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from services.core.errors import ModelLoadError
from services.core.model import InferenceModel
from services.web.app import create_app

TOKEN = "s3cret-token"
ABS_TOL = 1e-6


# --- builders ---------------------------------------------------------------------------------

def encode(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def gradient(size: tuple[int, int] = (80, 60), mode: str = "RGB") -> Image.Image:
    """A non-uniform image, so that different preprocessing paths could tell apart."""
    base = Image.linear_gradient("L").resize(size)
    return Image.merge("RGB", (base, base.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
                               base.rotate(90))).convert(mode)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def multipart(**files: bytes | list[bytes] | str) -> dict:
    """Werkzeug test-client form data: bytes → one file part, list → several, str → text."""
    form: dict = {}
    for name, value in files.items():
        if isinstance(value, list):
            form[name] = [(io.BytesIO(v), f"{name}{i}.png") for i, v in enumerate(value)]
        elif isinstance(value, bytes):
            form[name] = (io.BytesIO(value), f"{name}.png")
        else:
            form[name] = value
    return form


def assert_error(response, status: int, code: str) -> None:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code
    assert body["error"]["message"].strip()
    assert "Traceback" not in response.get_data(as_text=True)


def assert_same_prediction(got: dict, expected: dict) -> None:
    assert got["label"] == expected["label"]
    assert got["threshold"] == expected["threshold"]
    assert got["model"] == expected["model"]
    assert got["probabilities"].keys() == expected["probabilities"].keys()
    for name, p in expected["probabilities"].items():
        assert got["probabilities"][name] == pytest.approx(p, abs=ABS_TOL)


# --- fixtures ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_path(model_int8_path: Path) -> Path:
    return model_int8_path


@pytest.fixture(scope="module")
def reference(model_path: Path) -> InferenceModel:
    """The in-process core: what every HTTP answer must equal."""
    return InferenceModel(model_path, threads=1)


@pytest.fixture(scope="module")
def app(model_path: Path) -> Flask:
    return create_app({"MODEL_PATH": str(model_path), "ORT_INTRA_OP_THREADS": 1})


@pytest.fixture()
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture(scope="module")
def image(sample_image_bytes: bytes) -> bytes:
    return sample_image_bytes


# --- POST /predict: the three ways in ---------------------------------------------------------

def test_predict_three_encodings_equal_the_core(client, image, reference):
    expected = reference.predict_bytes(image)
    answers = [
        client.post("/predict", data=image, content_type="image/png"),
        client.post("/predict", data=image, content_type="application/octet-stream"),
        client.post("/predict", data=image, content_type="application/x-image"),
        client.post("/predict", json={"image": b64(image)}),
        client.post("/predict", json={"image": "data:image/png;base64," + b64(image)}),
        client.post("/predict", data=multipart(image=image), content_type="multipart/form-data"),
    ]
    for response in answers:
        assert response.status_code == 200, response.get_data(as_text=True)
        body = response.get_json()
        # warnings and quality: the fixture's export records input quality ranges.
        assert set(body) == {"label", "decision", "probabilities", "threshold",
                             "threshold_scale", "model", "warnings", "reasons", "quality"}
        assert_same_prediction(body, expected)
        assert body["label"] in reference.metadata.classes
        assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("fmt", ["JPEG", "TIFF", "BMP", "WEBP"])
def test_predict_other_formats(client, reference, fmt):
    data = encode(gradient(), fmt)
    response = client.post("/predict", data=data, content_type=f"image/{fmt.lower()}")
    assert response.status_code == 200
    assert_same_prediction(response.get_json(), reference.predict_bytes(data))


# --- errors -----------------------------------------------------------------------------------

def _png() -> bytes:
    return encode(gradient())


def _noisy_png() -> bytes:
    """Incompressible pixels, so that cutting the file cuts image data (not just the trailer)."""
    return encode(Image.effect_noise((80, 60), 64).convert("RGB"))


ERROR_CASES = {
    "garbage bytes": (dict(data=b"not an image at all", content_type="image/png"),
                      400, "invalid_image"),
    "truncated png": (dict(data=_noisy_png()[:3000], content_type="image/png"),
                      400, "invalid_image"),
    "gif": (dict(data=encode(gradient(), "GIF"), content_type="image/gif"), 400, "invalid_image"),
    "too small": (dict(data=encode(gradient((8, 8))), content_type="image/png"),
                  400, "image_too_small"),
    "empty raw body": (dict(data=b"", content_type="image/png"), 400, "empty_image"),
    "bad base64": (dict(json={"image": "iVBOR%%%w0KGgo="}), 400, "invalid_base64"),
    "bad base64 padding": (dict(json={"image": "iVBORw0KGgo"}), 400, "invalid_base64"),
    "base64 of junk": (dict(json={"image": b64(b"junk" * 10)}), 400, "invalid_image"),
    "empty base64": (dict(json={"image": ""}), 400, "empty_image"),
    "bad json": (dict(data=b'{"image": ', content_type="application/json"), 400, "invalid_json"),
    "empty json": (dict(data=b"", content_type="application/json"), 400, "invalid_json"),
    "json array": (dict(json=[{"image": "x"}]), 400, "invalid_json_type"),
    "json string": (dict(json="abc"), 400, "invalid_json_type"),
    "missing field": (dict(json={"img": "abc"}), 400, "missing_field"),
    "non-string field": (dict(json={"image": 42}), 400, "invalid_field_type"),
    "null field": (dict(json={"image": None}), 400, "invalid_field_type"),
    "not utf-8": (dict(data=b'{"image": "\xff\xfe"}', content_type="application/json"),
                  400, "invalid_encoding"),
    "multipart no image field": (dict(data=multipart(file=_png()),
                                      content_type="multipart/form-data"), 400, "missing_field"),
    "multipart text field": (dict(data=multipart(image="iVBORw0KGgo="),
                                  content_type="multipart/form-data"), 400, "missing_file"),
    "multipart empty file": (dict(data=multipart(image=b""), content_type="multipart/form-data"),
                             400, "empty_image"),
    "multipart two files": (dict(data=multipart(image=[_png(), _png()]),
                                 content_type="multipart/form-data"), 400, "too_many_images"),
    "multipart without boundary": (dict(data=b"--x\r\n", content_type="multipart/form-data"),
                                   400, "invalid_multipart"),
    "text/plain": (dict(data=b"hello", content_type="text/plain"), 415, "unsupported_media_type"),
    "form-urlencoded (curl -d)": (dict(data=b"image=abc",
                                       content_type="application/x-www-form-urlencoded"),
                                  415, "unsupported_media_type"),
    "no content type": (dict(data=b"abc"), 415, "unsupported_media_type"),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_predict_errors(client, image, reference, case):
    kwargs, status, code = ERROR_CASES[case]
    assert_error(client.post("/predict", **kwargs), status, code)
    # The worker keeps serving after every error.
    after = client.post("/predict", data=image, content_type="image/png")
    assert after.status_code == 200
    assert_same_prediction(after.get_json(), reference.predict_bytes(image))


def test_413_body_over_limit(model_path, image):
    app = create_app({"MODEL_PATH": str(model_path), "MAX_CONTENT_LENGTH": 1000})
    client = app.test_client()
    big = encode(gradient((400, 400)))
    assert len(big) > 1000
    assert_error(client.post("/predict", data=big, content_type="image/png"),
                 413, "payload_too_large")
    assert_error(client.post("/predict", json={"image": b64(big)}), 413, "payload_too_large")
    assert_error(client.post("/predict", data=multipart(image=big),
                             content_type="multipart/form-data"), 413, "payload_too_large")
    assert_error(client.post("/predict/batch", json={"images": [b64(big)]}),
                 413, "payload_too_large")
    small = encode(gradient((32, 32)))
    assert len(small) < 1000
    assert client.post("/predict", data=small, content_type="image/png").status_code == 200


def test_413_default_limit_is_10_mb(app, client):
    assert app.config["MAX_CONTENT_LENGTH"] == 10 * 1024 * 1024
    assert_error(client.post("/predict", data=b"\0" * (10 * 1024 * 1024 + 1),
                             content_type="image/png"), 413, "payload_too_large")


def test_413_too_many_pixels(model_path, client):
    # A decompression bomb: 5000 x 5000 black pixels compress to a small PNG (< 100 kB) but
    # exceed the default limit of 4096 x 4096; the header alone must decide.
    bomb = encode(Image.new("L", (5000, 5000)))
    assert len(bomb) < 100_000
    assert_error(client.post("/predict", data=bomb, content_type="image/png"),
                 413, "image_too_large")
    strict = create_app({"MODEL_PATH": str(model_path), "MAX_IMAGE_PIXELS": 50 * 50}).test_client()
    assert_error(strict.post("/predict", data=encode(gradient((60, 60))),
                             content_type="image/png"), 413, "image_too_large")
    assert strict.post("/predict", data=encode(gradient((50, 50))),
                       content_type="image/png").status_code == 200


def test_404_and_405_are_json(client):
    assert_error(client.get("/no/such/route"), 404, "not_found")
    response = client.get("/predict")
    assert_error(response, 405, "method_not_allowed")
    assert "POST" in response.headers["Allow"]
    assert_error(client.post("/health"), 405, "method_not_allowed")


def test_unexpected_exception_is_a_json_500_without_traceback(model_path, image):
    app = create_app({"MODEL_PATH": str(model_path)})

    def broken():
        raise RuntimeError("secret internal detail")

    app.add_url_rule("/broken", view_func=broken)  # a real bug in a real route
    client = app.test_client()
    response = client.get("/broken", headers={"X-Request-ID": "req-500"})
    assert_error(response, 500, "internal_error")
    assert "secret internal detail" not in response.get_data(as_text=True)
    assert "req-500" in response.get_json()["error"]["message"]
    assert client.post("/predict", data=image, content_type="image/png").status_code == 200


# --- batch ------------------------------------------------------------------------------------

def test_batch_json_with_bad_items(client, image, reference):
    other = encode(gradient(), "JPEG")
    items = [b64(image), "%%%not-base64", 7, b64(b"junk" * 8), b64(other), ""]
    response = client.post("/predict/batch", json={"images": items})
    assert response.status_code == 200
    body = response.get_json()
    assert body["count"] == 6 and body["errors"] == 4
    results = body["predictions"]
    assert_same_prediction(results[0], reference.predict_bytes(image))
    assert_same_prediction(results[4], reference.predict_bytes(other))
    codes = [(r["status"], r["error"]["code"]) for r in (results[i] for i in (1, 2, 3, 5))]
    assert codes == [(400, "invalid_base64"), (400, "invalid_field_type"),
                     (400, "invalid_image"), (400, "empty_image")]


def test_batch_instances_and_multipart(client, image, reference):
    other = encode(gradient((64, 96)), "WEBP")
    expected = [reference.predict_bytes(image), reference.predict_bytes(other)]
    by_instances = client.post("/predict/batch", json={"instances": [
        {"image": b64(image)}, {"image": b64(other)}, {"img": "x"}, "bare string"]})
    assert by_instances.status_code == 200
    results = by_instances.get_json()["predictions"]
    for got, want in zip(results[:2], expected, strict=True):
        assert_same_prediction(got, want)
    assert [r["error"]["code"] for r in results[2:]] == ["missing_field", "invalid_field_type"]

    by_form = client.post("/predict/batch", data=multipart(images=[image, other, b""]),
                          content_type="multipart/form-data")
    assert by_form.status_code == 200
    results = by_form.get_json()["predictions"]
    for got, want in zip(results[:2], expected, strict=True):
        assert_same_prediction(got, want)
    assert results[2]["error"]["code"] == "empty_image"


@pytest.mark.parametrize(("kwargs", "status", "code"), [
    (dict(json={"images": []}), 400, "empty_batch"),
    (dict(json={"images": "abc"}), 400, "invalid_field_type"),
    (dict(json={"image": "abc"}), 400, "missing_field"),
    (dict(json=[]), 400, "invalid_json_type"),
    (dict(data=b"{", content_type="application/json"), 400, "invalid_json"),
    (dict(data=b"abc", content_type="text/csv"), 415, "unsupported_media_type"),
])
def test_batch_request_errors(client, kwargs, status, code):
    assert_error(client.post("/predict/batch", **kwargs), status, code)


def test_batch_count_is_bounded(model_path, image):
    client = create_app({"MODEL_PATH": str(model_path), "MAX_BATCH": 2}).test_client()
    assert client.post("/predict/batch", json={"images": [b64(image)] * 2}).status_code == 200
    assert_error(client.post("/predict/batch", json={"images": [b64(image)] * 3}),
                 400, "too_many_images")
    assert_error(client.post("/predict/batch", data=multipart(images=[image] * 3),
                             content_type="multipart/form-data"), 400, "too_many_images")


# --- auth -------------------------------------------------------------------------------------

def test_token_required_when_configured(model_path, image):
    client = create_app({"MODEL_PATH": str(model_path), "API_TOKEN": TOKEN}).test_client()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN},
                    {"Authorization": f"Basic {TOKEN}"}, {"Authorization": "Bearer sécret"}):
        assert_error(client.post("/predict", data=image, content_type="image/png",
                                 headers=headers), 401, "unauthorized")
    for path in ("/metadata", "/metrics", "/openapi.json"):
        assert_error(client.get(path), 401, "unauthorized")
    assert_error(client.post("/predict/batch", json={"images": []}), 401, "unauthorized")
    good = {"Authorization": f"Bearer {TOKEN}"}
    assert client.post("/predict", data=image, content_type="image/png",
                       headers=good).status_code == 200
    assert client.get("/metadata", headers=good).status_code == 200
    # Probes and the static page stay open (the page asks for the token itself).
    for path in ("/health", "/ready", "/", "/static/app.js"):
        assert client.get(path).status_code == 200, path


def test_token_from_environment(monkeypatch, model_path):
    monkeypatch.setenv("MHIST_API_TOKEN", TOKEN)
    client = create_app({"MODEL_PATH": str(model_path)}).test_client()
    assert_error(client.get("/metadata"), 401, "unauthorized")
    assert client.get("/metadata", headers={"Authorization": f"bearer {TOKEN}"}).status_code == 200


# --- readiness and model loading --------------------------------------------------------------

def test_not_ready_until_the_model_appears(tmp_path, model_path, image, reference, caplog):
    target = tmp_path / "later.onnx"
    logging.getLogger("mhist.error").addHandler(caplog.handler)
    try:
        app = create_app({"MODEL_PATH": str(target), "MODEL_REQUIRED": False,
                          "MODEL_RETRY_SECONDS": 0})
        client = app.test_client()
        assert client.get("/health").status_code == 200
        response = client.get("/ready")
    finally:
        logging.getLogger("mhist.error").removeHandler(caplog.handler)
    assert_error(response, 503, "model_not_ready")
    # The server-side path and problem go to the log, never to the client.
    assert str(tmp_path) not in response.get_json()["error"]["message"]
    assert any(str(target) in r.getMessage() and "does not exist" in r.getMessage()
               for r in caplog.records)
    assert_error(client.post("/predict", data=image, content_type="image/png"),
                 503, "model_not_ready")
    assert_error(client.get("/metadata"), 503, "model_not_ready")

    shutil.copyfile(model_path, target)  # e.g. a volume mounted after start
    assert client.get("/ready").status_code == 200
    response = client.post("/predict", data=image, content_type="image/png")
    assert_same_prediction(response.get_json(), reference.predict_bytes(image))


def test_required_model_failures_stop_create_app(tmp_path, monkeypatch):
    not_onnx = tmp_path / "not.onnx"
    not_onnx.write_bytes(b"this is not a protobuf")
    with pytest.raises(ModelLoadError, match="not a loadable ONNX model"):
        create_app({"MODEL_PATH": str(not_onnx)})
    with pytest.raises(ModelLoadError, match="does not exist"):
        create_app({"MODEL_PATH": str(tmp_path / "missing.onnx")})
    monkeypatch.delenv("MODEL_PATH", raising=False)
    with pytest.raises(ModelLoadError, match="MODEL_PATH is not set"):
        create_app()


def test_model_path_from_environment(monkeypatch, model_path):
    monkeypatch.setenv("MODEL_PATH", str(model_path))
    assert create_app().test_client().get("/ready").status_code == 200


# --- ops routes -------------------------------------------------------------------------------

def test_health_ready_metadata(client, reference):
    assert client.get("/health").get_json() == {"status": "ok"}
    meta = reference.metadata
    assert client.get("/ready").get_json() == {"status": "ready", "model": {
        "name": meta.name, "version": meta.version, "precision": meta.precision,
        "sha256": reference.sha256}}
    described = client.get("/metadata").get_json()
    expected = json.loads(json.dumps(reference.describe()))
    assert described == expected
    assert described["classes"] == list(meta.classes)
    assert described["precision"] == "int8"


def test_request_id_is_echoed_or_generated(client):
    response = client.get("/health", headers={"X-Request-ID": "abc-123.x:y_z"})
    assert response.headers["X-Request-ID"] == "abc-123.x:y_z"
    forged = client.get("/health", headers={"X-Request-ID": 'evil", "status": 200, "x": "'})
    generated = forged.headers["X-Request-ID"]
    assert len(generated) == 32 and int(generated, 16) >= 0
    assert client.get("/health").headers["X-Request-ID"] != generated


def test_security_headers_on_every_response(client, image):
    for response in (client.get("/health"), client.get("/"), client.get("/nope"),
                     client.post("/predict", data=image, content_type="image/png"),
                     client.post("/predict", data=b"x", content_type="text/plain")):
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        csp = response.headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "http" not in csp


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def test_one_json_log_line_per_request_without_image_bytes(client, image):
    handler = ListHandler()
    logger = logging.getLogger("mhist.access")
    logger.addHandler(handler)
    try:
        client.post("/predict", data=image, content_type="image/png",
                    headers={"X-Request-ID": "log-1"})
        client.post("/predict", json={"image": b64(image)}, headers={"X-Request-ID": "log-2"})
        client.post("/predict", data=b"junk", content_type="image/png")
        client.get("/missing")
    finally:
        logger.removeHandler(handler)
    assert len(handler.lines) == 4
    records = [json.loads(line) for line in handler.lines]
    assert [(r["method"], r["route"], r["status"]) for r in records] == [
        ("POST", "/predict", 200), ("POST", "/predict", 200), ("POST", "/predict", 400),
        ("GET", "<unmatched>", 404)]
    assert [r["request_id"] for r in records[:2]] == ["log-1", "log-2"]
    assert all(isinstance(r["latency_ms"], float) and r["latency_ms"] >= 0 for r in records)
    text = "\n".join(handler.lines)
    assert b64(image)[:64] not in text and "junk" not in text


def _samples(client: FlaskClient) -> dict[tuple, float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    out = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_metrics_count_requests_and_inference(model_path, image):
    client = create_app({"MODEL_PATH": str(model_path)}).test_client()
    before = _samples(client)
    for _ in range(3):
        client.post("/predict", data=image, content_type="image/png")
    client.post("/predict", data=b"x", content_type="text/plain")
    client.post("/predict/batch", json={"images": [b64(image), "%%"]})
    after = _samples(client)

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    requests = "mhist_http_requests_total"
    assert delta(requests, route="/predict", method="POST", status="200") == 3
    assert delta(requests, route="/predict", method="POST", status="415") == 1
    assert delta(requests, route="/predict/batch", method="POST", status="200") == 1
    assert delta("mhist_http_request_duration_seconds_count",
                 route="/predict", method="POST") == 4
    assert delta("mhist_inference_duration_seconds_count", endpoint="predict") == 3
    assert delta("mhist_inference_duration_seconds_count", endpoint="predict_batch") == 1
    assert delta("mhist_images_total", outcome="predicted") == 4
    assert delta("mhist_images_total", outcome="rejected") == 1


# --- OpenAPI and the page ---------------------------------------------------------------------

def test_openapi_is_valid_and_matches_the_routes(app, client):
    spec = client.get("/openapi.json").get_json()
    validate(spec)
    documented = {(path, method.upper()) for path, ops in spec["paths"].items() for method in ops}
    from services.web.openapi import openapi_path  # /v2/models/<name> → /v2/models/{name}

    served = {
        (openapi_path(rule.rule), method)
        for rule in app.url_map.iter_rules() if rule.endpoint != "static"
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    assert documented == served


def test_upload_page_is_self_contained(client):
    page = client.get("/")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    for element in ('id="file"', 'id="drop"', 'id="preview"', 'id="label"', 'id="bars"',
                    'id="threshold"'):
        assert element in html
    assets = ["/static/app.js", "/static/style.css"]
    for asset in assets:
        assert asset in html
    texts = [html] + [client.get(a).get_data(as_text=True) for a in assets]
    for text in texts:
        assert "http://" not in text and "https://" not in text and "//cdn" not in text
