"""Issue 12's hostile clients, on every target they apply to: batch isolation, malformed Lambda
events, body limits that say which limit was hit, what an API token hides, nonsense model
metadata, SageMaker's model folder, extreme aspect ratios and a worker's peak memory over the
whole hostile corpus.

The crafted files that used to get a 500 (garbage EXIF in PNG/WebP, a TIFF page chain with a
compression-only IFD, 5,000-digit JSON integers, 1048576x16 PNGs) are BAD_CASES in
tests/support/corpus.py, run on every target by tests/test_robust_bad_inputs.py; the mutation
fuzzer is tests/test_robust_mutations.py.
"""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import onnx
import pytest
from werkzeug.test import EnvironBuilder, run_wsgi_app

from services.adapters.sagemaker import model_environment, resolve_model
from services.core.errors import ModelLoadError
from services.core.model import InferenceModel
from services.core.preprocessing import MAX_ASPECT_RATIO
from services.web.app import create_app
from tests.support.corpus import (
    BAD_CASES,
    TEXT,
    b64,
    flat_png,
    good_corpus,
    multipart,
    png_with_garbage_exif,
    tiff_with_compression_only_ifd,
    webp_with_garbage_exif,
)
from tests.support.events import EVENT_BUILDERS
from tests.support.lambda_local import LambdaContext
from tests.support.mutations import mutate
from tests.support.targets import (
    LAMBDA_KINDS,
    TARGET_NAMES,
    FlaskTarget,
    LambdaTarget,
    Reply,
    Target,
    all_targets,
    lambda_reply,
    load_lambda_module,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
TOKEN = "hostile-test-token-0123456789abcdef"  # test-only, not a secret


@pytest.fixture(scope="module")
def targets(model_int8_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Target]:
    return {t.name: t for t in all_targets(model_int8_path, tmp_path_factory.mktemp("hostile"))}


@pytest.fixture(scope="module")
def good(sample_image_bytes: bytes) -> bytes:
    return sample_image_bytes


def assert_error(reply: Reply, status: int, code: str, mentions: str = "") -> str:
    """The whole error answer; returns the message."""
    assert (reply.status, reply.error_code) == (status, code), (reply.status, reply.body[:400])
    assert reply.headers.get("content-type", "").startswith("application/json")
    document = reply.json()
    assert set(document) == {"error"} and set(document["error"]) == {"code", "message"}
    message = document["error"]["message"]
    assert mentions in message, message
    return message


def assert_serves(target: Target, image: bytes) -> dict:
    reply = target.predict(image, "image/png")
    assert reply.status == 200, (target.name, reply.body[:300])
    return reply.json()


# --- batch isolation: one bad item never fails the batch --------------------------------------

BAD_ITEMS = {
    "png-garbage-exif": (png_with_garbage_exif, 400, "invalid_image"),
    "webp-garbage-exif": (webp_with_garbage_exif, 400, "invalid_image"),
    "tiff-compression-only-ifd": (tiff_with_compression_only_ifd, 400, "invalid_image"),
    "png-1048576x16": (lambda: flat_png(1_048_576, 16), 400, "extreme_aspect_ratio"),
    "text": (lambda: TEXT, 400, "invalid_image"),
}


def _assert_isolated(reply: Reply, status: int, code: str) -> None:
    assert reply.status == 200, reply.body[:400]
    document = reply.json()
    assert (document["count"], document["errors"]) == (3, 1), document
    first, bad, last = document["predictions"]
    assert "label" in first and first == last  # the same image on both sides
    assert set(bad) == {"error", "status"} and bad["status"] == status
    assert bad["error"]["code"] == code and bad["error"]["message"]


@pytest.mark.parametrize("item", BAD_ITEMS)
@pytest.mark.parametrize("name", TARGET_NAMES)
def test_multipart_batch_answers_the_good_items(name: str, item: str,
                                                targets: dict[str, Target], good: bytes) -> None:
    build, status, code = BAD_ITEMS[item]
    body, content_type = multipart([("images", "a.png", good, "image/png"),
                                    ("images", "bad", build(), "application/octet-stream"),
                                    ("images", "c.png", good, "image/png")])
    reply = targets[name].request("POST", "/predict/batch", {"Content-Type": content_type}, body)
    _assert_isolated(reply, status, code)


@pytest.mark.parametrize("item", BAD_ITEMS)
@pytest.mark.parametrize("name", TARGET_NAMES)
def test_json_batch_answers_the_good_items(name: str, item: str, targets: dict[str, Target],
                                           good: bytes) -> None:
    build, status, code = BAD_ITEMS[item]
    target = targets[name]
    images = [b64(good), b64(build()), b64(good)]
    path, document = "/predict/batch", {"images": images}
    if target.family == "sagemaker":  # SageMaker's own route and instances form
        path, document = "/invocations", {"instances": [{"image": i} for i in images]}
    reply = target.request("POST", path, {"Content-Type": "application/json"},
                           json.dumps(document).encode())
    _assert_isolated(reply, status, code)


class Unforeseen(bytes):
    """Bytes whose length cannot be taken: stands for a failure nobody foresaw."""

    def __len__(self) -> int:
        raise RuntimeError("unforeseen")


def test_an_unforeseen_item_failure_keeps_its_slot(model_int8_path: Path, good: bytes,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """Whatever an item raises, the others are predicted and the failure is logged."""
    model = InferenceModel(model_int8_path)
    logging.getLogger("mhist.error").addHandler(caplog.handler)
    try:
        results = model.predict_many([good, Unforeseen(b"x"), good])
    finally:
        logging.getLogger("mhist.error").removeHandler(caplog.handler)
    first, failed, last = results
    assert "label" in first and first == last
    assert failed["status"] == 500 and failed["error"]["code"] == "internal_error"
    assert "Image 1" in failed["error"]["message"]
    logged = [json.loads(r.getMessage()) for r in caplog.records]
    assert {"event": "batch_item_failed", "index": 1, "type": "RuntimeError"} in logged


# --- extreme aspect ratios --------------------------------------------------------------------

@pytest.mark.parametrize("size", [(240, 24), (24, 240)], ids=["240x24", "24x240"])
@pytest.mark.parametrize("name", TARGET_NAMES)
def test_the_aspect_ratio_limit_itself_is_served(name: str, size: tuple[int, int],
                                                 targets: dict[str, Target]) -> None:
    assert max(size) == MAX_ASPECT_RATIO * min(size)
    assert_serves(targets[name], flat_png(*size))


@pytest.mark.parametrize("name", TARGET_NAMES)
def test_a_batch_of_sixteen_extreme_images_is_refused_item_by_item(
        name: str, targets: dict[str, Target]) -> None:
    """Sixteen 1048576x16 PNGs in one batch timed a worker out; now each is a 400 at once."""
    strips = [("images", f"{i}.png", flat_png(1_048_576, 16) if i % 2 else flat_png(16, 262_144),
               "image/png") for i in range(16)]
    body, content_type = multipart(strips)
    reply = targets[name].request("POST", "/predict/batch", {"Content-Type": content_type}, body)
    assert reply.status == 200, reply.body[:300]
    document = reply.json()
    assert (document["count"], document["errors"]) == (16, 16)
    for item in document["predictions"]:
        assert item["error"]["code"] == "extreme_aspect_ratio" and item["status"] == 400
        assert f"the limit is {MAX_ASPECT_RATIO}:1" in item["error"]["message"]


# --- Lambda events ----------------------------------------------------------------------------

V2_KINDS = ("http_api", "function_url")


def _event(kind: str, image: bytes, **changes: Any) -> dict:
    event = EVENT_BUILDERS[kind](method="POST", path="/predict", body=image, binary=True,
                                 headers={"Content-Type": "image/png"})
    event.update(changes)
    return event


def _with_header(kind: str, image: bytes, name: str, value: str) -> dict:
    event = _event(kind, image)
    if "multiValueHeaders" in event:
        event["multiValueHeaders"][name] = [value]
    if "headers" in event:
        event["headers"][name] = value
    return event


def _with_path(kind: str, image: bytes, path: str) -> dict:
    return _event(kind, image, **({"rawPath": path} if kind in V2_KINDS else {"path": path}))


def _with_query(kind: str, image: bytes, value: str) -> dict:
    if kind in V2_KINDS:
        return _event(kind, image, rawQueryString=f"a={value}")
    return _event(kind, image, queryStringParameters={"a": value},
                  multiValueQueryStringParameters={"a": [value]})


BAD_EVENT = (400, "invalid_event")
# name → (event builder, expected (status, code) per kind: None = served normally (200)).
EVENT_CASES: dict[str, tuple[Any, Any]] = {
    # REST APIs and ALBs read multiValueHeaders; payload 2.0 has none, a stray one is ignored.
    "multiValueHeaders-empty-list": (
        lambda kind, image: _event(kind, image, multiValueHeaders={"Content-Type": []}),
        lambda kind: None if kind in V2_KINDS else BAD_EVENT),
    # Payload 2.0 reads cookies; REST APIs and ALBs have none, a stray one is ignored.
    "cookies-not-strings": (
        lambda kind, image: _event(kind, image, cookies=[1, 2]),
        lambda kind: BAD_EVENT if kind in V2_KINDS else None),
    "body-lone-surrogate": (
        lambda kind, image: _event(kind, image, body="\ud800abc", isBase64Encoded=False),
        lambda kind: BAD_EVENT),
    "json-body-lone-surrogate": (
        lambda kind, image: EVENT_BUILDERS[kind](
            method="POST", path="/predict", body='{"image": "\ud800"}',
            headers={"Content-Type": "application/json"}),
        lambda kind: BAD_EVENT),
    "path-lone-surrogate": (lambda kind, image: _with_path(kind, image, "/predict\ud800"),
                            lambda kind: BAD_EVENT),
    "query-lone-surrogate": (lambda kind, image: _with_query(kind, image, "\udfff"),
                             lambda kind: BAD_EVENT),
    "header-lone-surrogate": (lambda kind, image: _with_header(kind, image, "x-note", "a\ud800"),
                              lambda kind: BAD_EVENT),
}


@pytest.mark.parametrize("case", EVENT_CASES)
@pytest.mark.parametrize("kind", LAMBDA_KINDS)
def test_lambda_event_that_gave_500(kind: str, case: str, targets: dict[str, Target],
                                    good: bytes) -> None:
    build, expect = EVENT_CASES[case]
    target = targets[f"lambda-{kind}"]
    assert isinstance(target, LambdaTarget)
    reply = lambda_reply(target.invoke(build(kind, good)))
    expected = expect(kind)
    if expected is None:
        assert reply.status == 200 and "label" in reply.json(), reply.body[:300]
    else:
        assert_error(reply, *expected)
    assert_serves(target, good)


@pytest.mark.parametrize("request_id", [12345, None, b"bytes-id", "bad id\nforged"],
                         ids=["int", "none", "bytes", "newline"])
@pytest.mark.parametrize("kind", LAMBDA_KINDS)
def test_lambda_odd_context_is_served(kind: str, request_id: Any, targets: dict[str, Target],
                                      good: bytes) -> None:
    """The request is fine and only the context is odd: 200, with a request id of our own."""
    target = targets[f"lambda-{kind}"]
    assert isinstance(target, LambdaTarget)
    response = target.module.handler(_event(kind, good), LambdaContext(aws_request_id=request_id))
    reply = lambda_reply(response)
    assert reply.status == 200 and "label" in reply.json(), reply.body[:300]
    assert len(reply.headers["x-request-id"]) == 32  # a fresh uuid4().hex


# --- body limits: each 413 says which limit -----------------------------------------------------

def _parts(count: int) -> list:
    return [("note", None, b"1", None)] * count


FORM_LIMITS = {
    "5000-parts": (lambda good: _parts(5000), "more than 1000 parts"),
    "1500-files": (lambda good: [("images", f"{i}.png", b"x", "image/png")
                                 for i in range(1500)], "more than 1000 parts"),
    "2MB-text-field": (lambda good: [("images", "a.png", good, "image/png"),
                                     ("note", None, b"a" * 2_000_000, None)],
                       "A text field of the form is over 500000 bytes"),
}


@pytest.mark.parametrize("case", FORM_LIMITS)
@pytest.mark.parametrize("name", TARGET_NAMES)
def test_form_limits_name_themselves(name: str, case: str, targets: dict[str, Target],
                                     good: bytes) -> None:
    parts, mentions = FORM_LIMITS[case]
    body, content_type = multipart(parts(good))
    reply = targets[name].request("POST", "/predict/batch", {"Content-Type": content_type}, body)
    message = assert_error(reply, 413, "payload_too_large", mentions)
    assert "request body is over" not in message
    assert_serves(targets[name], good)


@pytest.mark.parametrize("name", TARGET_NAMES)
def test_a_form_of_exactly_1000_parts_is_read(name: str, targets: dict[str, Target],
                                              good: bytes) -> None:
    body, content_type = multipart([("images", "a.png", good, "image/png"), *_parts(999)])
    reply = targets[name].request("POST", "/predict/batch", {"Content-Type": content_type}, body)
    assert reply.status == 200 and reply.json()["count"] == 1, reply.body[:300]


class ChunkedInput(io.RawIOBase):
    """wsgi.input of a chunked request as gunicorn gives it: no Content-Length, and the stream
    ends where the body ends (the server sets wsgi.input_terminated)."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        chunk = self._data.read(min(len(buffer), 8192))  # chunk by chunk, as on a socket
        buffer[: len(chunk)] = chunk
        return len(chunk)


def chunked(target: Target, path: str, content_type: str, body: bytes) -> Reply:
    assert isinstance(target, FlaskTarget)
    environ = EnvironBuilder(method="POST", path=target.resolve(path)).get_environ()
    environ.pop("CONTENT_LENGTH", None)
    environ.update({"CONTENT_TYPE": content_type, "wsgi.input": ChunkedInput(body),
                    "wsgi.input_terminated": True})
    app_iter, status, headers = run_wsgi_app(target.app, environ)
    return Reply(int(status.split()[0]), {k.lower(): v for k, v in headers.items()},
                 b"".join(app_iter))


# Lambda bodies always have a length (API Gateway, URLs and ALBs buffer them); these targets
# run behind a WSGI server that may pass a chunked body through.
STREAMING = ("flask", "sagemaker")


@pytest.mark.parametrize("name", STREAMING)
def test_chunked_body_over_the_limit_is_413(name: str, targets: dict[str, Target],
                                            good: bytes) -> None:
    """Was: the first MAX_CONTENT_LENGTH bytes (a valid PNG) predicted, the rest dropped."""
    target = targets[name]
    assert isinstance(target, FlaskTarget)
    limit = target.app.config["MAX_CONTENT_LENGTH"]
    junk = good + b"\0" * (limit + 512 * 1024 - len(good))  # 10.5 MB on flask
    reply = chunked(target, "predict", "image/png", junk)
    assert_error(reply, 413, "payload_too_large", f"without Content-Length, is over {limit}")
    at_limit = chunked(target, "predict", "image/png", good + b"\0" * (limit - len(good)))
    assert at_limit.status == 200, at_limit.body[:300]  # trailing bytes after IEND are allowed
    assert chunked(target, "predict", "image/png", good).json() == assert_serves(target, good)


@pytest.mark.parametrize("name", STREAMING)
def test_chunked_multipart_is_parsed_and_limited(name: str, targets: dict[str, Target],
                                                 good: bytes) -> None:
    target = targets[name]
    body, content_type = multipart([("images", f"{i}.png", good, "image/png") for i in range(3)])
    reply = chunked(target, "/predict/batch", content_type, body)
    assert reply.status == 200 and reply.json()["count"] == 3, reply.body[:300]
    body, content_type = multipart(_parts(5000))
    assert_error(chunked(target, "/predict/batch", content_type, body), 413,
                 "payload_too_large", "more than 1000 parts")


# --- what the token and the messages give away ----------------------------------------------------

@pytest.fixture(scope="module")
def token_targets(model_int8_path: Path, tmp_path_factory: pytest.TempPathFactory
                  ) -> dict[str, Target]:
    made = all_targets(model_int8_path, tmp_path_factory.mktemp("hostile-token"),
                       env={"MHIST_API_TOKEN": TOKEN})
    return {t.name: t for t in made}


@pytest.mark.parametrize("name", TARGET_NAMES)
def test_401_says_bearer(name: str, token_targets: dict[str, Target], good: bytes) -> None:
    target = token_targets[name]
    for reply in (target.request("POST", "/predict", {"Content-Type": "image/png"}, good),
                  target.request("GET", "/metadata", {"Authorization": "Bearer wrong"})):
        assert_error(reply, 401, "unauthorized")
        assert reply.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize("name", TARGET_NAMES)
def test_ready_names_the_model_only_to_token_holders(name: str, model_int8_path: Path,
                                                     token_targets: dict[str, Target],
                                                     targets: dict[str, Target]) -> None:
    anonymous = token_targets[name].request("GET", "/ready")
    assert anonymous.status == 200 and anonymous.json() == {"status": "ready"}
    wrong = token_targets[name].request("GET", "/ready", {"Authorization": "Bearer wrong"})
    assert wrong.json() == {"status": "ready"}
    holder = token_targets[name].request("GET", "/ready", {"Authorization": f"Bearer {TOKEN}"})
    model = holder.json()["model"]
    assert set(model) == {"name", "version", "precision", "sha256"}
    assert model["sha256"] == InferenceModel(model_int8_path).sha256
    # Without a token nothing is hidden: the model is public information there.
    assert targets[name].request("GET", "/ready").json()["model"] == model


def _not_ready_replies(missing: Path) -> list[tuple[str, Reply]]:
    """/ready (and SageMaker's /ping) of every target started with MODEL_REQUIRED=0 and a
    MODEL_PATH that does not exist yet."""
    config = {"MODEL_PATH": str(missing), "MODEL_REQUIRED": False}
    flask = FlaskTarget(create_app(config))
    sagemaker = FlaskTarget(create_app({**config, "TARGET": "sagemaker"}))
    module = load_lambda_module(missing, env={"MODEL_REQUIRED": "0"})
    replies = [("flask", flask.request("GET", "/ready")),
               ("sagemaker", sagemaker.request("GET", "/ready")),
               ("sagemaker /ping", sagemaker.request("GET", "/ping"))]
    replies += [(f"lambda-{kind}", LambdaTarget(module, kind).request("GET", "/ready"))
                for kind in LAMBDA_KINDS]
    return replies


def test_503_keeps_server_paths_to_the_log(tmp_path: Path,
                                           caplog: pytest.LogCaptureFixture) -> None:
    missing = tmp_path / "secret-volume" / "model.onnx"
    logging.getLogger("mhist.error").addHandler(caplog.handler)
    try:
        replies = _not_ready_replies(missing)
    finally:
        logging.getLogger("mhist.error").removeHandler(caplog.handler)
    for name, reply in replies:
        if name == "sagemaker /ping":
            assert reply.status == 503
            continue
        message = assert_error(reply, 503, "model_not_ready")
        assert "secret-volume" not in message and str(tmp_path) not in message, (name, message)
    assert any(str(missing) in record.getMessage() for record in caplog.records)


def test_406_does_not_echo_the_whole_accept_header(targets: dict[str, Target],
                                                   good: bytes) -> None:
    accept = "text/csv, " + ", ".join(f"application/x-{i:05d}" for i in range(400))
    reply = targets["sagemaker"].post("predict", {"Content-Type": "image/png",
                                                  "Accept": accept}, good)
    message = assert_error(reply, 406, "not_acceptable", "text/csv")
    assert len(message) < 300 and accept[-40:] not in message


def test_model_path_naming_a_directory_says_so(model_int8_path: Path, tmp_path: Path) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "model.int8.onnx").write_bytes(model_int8_path.read_bytes())
    with pytest.raises(ModelLoadError, match="is a directory, not a file") as raised:
        create_app({"MODEL_PATH": str(folder)})
    assert "model.int8.onnx" in str(raised.value)  # what to point MODEL_PATH at instead
    with pytest.raises(ModelLoadError, match=r"Lambda INIT failed: .* is a directory"):
        load_lambda_module(folder)


# --- SageMaker: the model folder is the archive -------------------------------------------------

def test_sagemaker_refuses_a_model_link_that_leaves_the_folder(model_int8_path: Path,
                                                               tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    outside = elsewhere / "model.onnx"
    outside.write_bytes(model_int8_path.read_bytes())
    for link_name in ("model.onnx", "only.onnx"):  # the default name, and the only *.onnx
        folder = tmp_path / f"opt-ml-model-{link_name}"
        folder.mkdir()
        (folder / link_name).symlink_to(outside)
        with pytest.raises(ModelLoadError, match="outside the model folder"):
            resolve_model(folder)
        with pytest.raises(ModelLoadError, match="outside the model folder"):
            model_environment({"SM_MODEL_DIR": str(folder)})


def test_sagemaker_follows_a_link_inside_the_folder(model_int8_path: Path,
                                                    tmp_path: Path) -> None:
    folder = tmp_path / "opt-ml-model"
    (folder / "versions").mkdir(parents=True)
    (folder / "versions" / "v1.onnx").write_bytes(model_int8_path.read_bytes())
    (folder / "model.onnx").symlink_to(folder / "versions" / "v1.onnx")
    path, digest = resolve_model(folder)
    assert (path, digest) == (folder / "model.onnx", None)
    assert model_environment({"SM_MODEL_DIR": str(folder)})["MODEL_PATH"] == str(path)


# --- nonsense model metadata stops start-up with one line ------------------------------------

def _spec(**changes: Any) -> dict[str, str]:
    base = {"size": 64, "resize_size": 64, "interpolation": "bilinear",
            "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "layout": "NCHW",
            "color": "RGB", "pixel_max": 255.0, "resize": "shorter_side_then_center_crop"}
    return {"mhist.preprocessing": json.dumps({**base, **changes})}


# name → (metadata_props to overwrite, the words the one line must hold)
BAD_METADATA: dict[str, tuple[dict[str, str], str]] = {
    "size-0": (_spec(size=0, resize_size=0), "preprocessing.size 0 is outside [16, 512]"),
    "size-100000": (_spec(size=100_000, resize_size=100_000), "preprocessing.size 100000"),
    "size-not-int": (_spec(size=64.5, resize_size=65), "preprocessing.size 64.5 is not an"),
    "resize-10x": (_spec(resize_size=640), "preprocessing.resize_size 640 is outside"),
    "resize-below-size": (_spec(resize_size=32), "resize_size 32 is smaller than size 64"),
    "mean-2-values": (_spec(mean=[0.5, 0.5]), "preprocessing.mean [0.5, 0.5] must be 3"),
    "mean-over-range": (_spec(mean=[0.5, 0.5, 7.0]), "preprocessing.mean"),
    "std-zero": (_spec(std=[0.2, 0.0, 0.2]), "preprocessing.std"),
    "std-negative": (_spec(std=[0.2, -0.2, 0.2]), "preprocessing.std"),
    "pixel-max-0": (_spec(pixel_max=0), "preprocessing.pixel_max 0"),
    "preprocessing-not-object": ({"mhist.preprocessing": "[224]"}, "not a JSON object"),
    "classes-empty": ({"mhist.classes": "[]"}, "is not one of the classes"),
    "classes-duplicate": ({"mhist.classes": '["HP", "HP"]'}, "must be distinct"),
    "classes-not-strings": ({"mhist.classes": "[1, 2]"}, "must be distinct non-empty strings"),
    "classes-not-list": ({"mhist.classes": '"HPSSA"'}, "not a JSON list"),
    "threshold-1.5": ({"mhist.threshold": "1.5"}, "threshold 1.5 is not a number in [0, 1]"),
    "threshold-nan": ({"mhist.threshold": "nan"}, "threshold nan"),
    "positive-class-unknown": ({"mhist.positive_class": "TA"}, "positive class 'TA'"),
}


def with_metadata(source: Path, props: dict[str, str], out: Path) -> Path:
    """A copy of an exported model with some mhist.* metadata_props replaced."""
    model = onnx.load(str(source))
    values = {p.key: p.value for p in model.metadata_props} | props
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, values)
    onnx.save(model, str(out))
    return out


@pytest.mark.parametrize("case", BAD_METADATA)
def test_nonsense_metadata_stops_start_up(case: str, model_int8_path: Path,
                                          tmp_path: Path) -> None:
    props, words = BAD_METADATA[case]
    path = with_metadata(model_int8_path, props, tmp_path / "model.onnx")
    raised = []
    for start in (lambda: create_app({"MODEL_PATH": str(path)}),
                  lambda: load_lambda_module(path),
                  # SageMaker's serve only resolves the folder; its worker's app loads it.
                  lambda: create_app(model_environment({"SM_MODEL_DIR": str(tmp_path)}))):
        with pytest.raises(ModelLoadError) as error:
            start()
        raised.append(str(error.value))
    for message in raised:
        assert "\n" not in message and str(path) in message and words in message, message


def test_sane_metadata_edges_still_load(model_int8_path: Path, tmp_path: Path) -> None:
    """The checks refuse nonsense only: a 0 or 1 threshold and pixel_max 1 with 0..255 means
    are models someone could export."""
    raw = {"pixel_max": 1.0, "mean": [123.7, 116.3, 103.5], "std": [58.4, 57.1, 57.4]}
    for props in (_threshold(model_int8_path, 0.0), _threshold(model_int8_path, 1.0),
                  _spec(**raw)):
        path = with_metadata(model_int8_path, props, tmp_path / "model.onnx")
        assert create_app({"MODEL_PATH": str(path)}) is not None


def _threshold(source: Path, value: float) -> dict[str, str]:
    """mhist.threshold set to `value`, with the temperature-scaled threshold that goes with it
    (a logit scaled by any temperature keeps 0 at 0 and 1 at 1)."""
    props = {"mhist.threshold": repr(value)}
    model = onnx.load(str(source), load_external_data=False)
    stored = {p.key: p.value for p in model.metadata_props}.get("mhist.calibration")
    if stored:
        props["mhist.calibration"] = json.dumps({**json.loads(stored), "threshold": value})
    return props


# --- a worker's peak memory over the hostile corpus -----------------------------------------------

PEAK_RSS_LIMIT_MB = 400


def hostile_requests(sample: bytes) -> list[tuple[str, str, dict[str, str], bytes]]:
    """Every bad case, the good corpus, the extreme-aspect batches and 300 mutated files."""
    requests = []
    for case in BAD_CASES:
        headers, body = case.build()
        path = "/predict" if case.path == "predict" else case.path
        requests.append((case.method, path, headers, body))
    for image in good_corpus(sample).values():
        requests.append(("POST", "/predict", {"Content-Type": "application/octet-stream"}, image))
    for size in ((1_048_576, 16), (16, 262_144)):
        body, content_type = multipart([("images", f"{i}.png", flat_png(*size), "image/png")
                                        for i in range(16)])
        requests.append(("POST", "/predict/batch", {"Content-Type": content_type}, body))
    rng = random.Random(12)
    originals = [image for image in good_corpus(sample).values() if len(image) < 100_000]
    for _ in range(300):
        mutated = mutate(rng, rng.choice(originals))
        requests.append(("POST", "/predict", {"Content-Type": "application/octet-stream"},
                         mutated))
    return requests


def test_peak_memory_over_the_hostile_corpus(model_int8_path: Path, sample_image_bytes: bytes,
                                             tmp_path: Path) -> None:
    requests = hostile_requests(sample_image_bytes)
    requests_file = tmp_path / "requests.pickle"
    with requests_file.open("wb") as handle:
        for request in requests:
            pickle.dump(request, handle)
    env = {k: v for k, v in os.environ.items()
           if k not in ("MHIST_API_TOKEN", "MAX_CONTENT_LENGTH", "SERVING_TARGET")}
    result = subprocess.run(
        [sys.executable, "-m", "tests.support.peak_memory", str(requests_file),
         str(model_int8_path)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
        env={**env, "PYTHONPATH": str(REPO_ROOT), "ORT_INTRA_OP_THREADS": "1",
             "LOG_LEVEL": "warning"})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    statuses = report["statuses"]
    assert len(statuses) == len(requests)
    assert [s for s in statuses if s >= 500] == [], result.stderr[-3000:]
    assert report["peak_rss_mb"] < PEAK_RSS_LIMIT_MB, report | {"statuses": len(statuses)}
