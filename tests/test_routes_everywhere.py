"""Every route of the one app answers on every target, and is in that target's OpenAPI.

The routes are read from the app's url_map, not listed here: a route added to any blueprint is
checked through Flask, through the Lambda handler for each event kind (REST API v1, HTTP API
v2, Function URL, ALB), through the SageMaker target, and in /openapi.json, with no other file
touched. SageMaker's own routes exist on that target only.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from flask import Flask

from services.adapters.aws_lambda import app_of
from services.web.openapi import openapi_path
from services.web.state import runtime
from tests.support.corpus import small_png
from tests.support.targets import (
    TARGET_NAMES,
    FlaskTarget,
    LambdaTarget,
    Reply,
    Target,
    all_targets,
)

IMPLICIT = {"HEAD", "OPTIONS"}


@pytest.fixture(scope="module")
def targets(model_int8_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Target]:
    return {t.name: t for t in all_targets(model_int8_path, tmp_path_factory.mktemp("routes"))}


def app_of_target(target: Target) -> Flask:
    return app_of(target.module.handler) if isinstance(target, LambdaTarget) else target.app


def routes(app: Flask) -> set[tuple[str, str, str]]:
    """(method, path with sample arguments, OpenAPI path) for every route but static files."""
    adapter = app.url_map.bind("localhost")
    found = set()
    meta = runtime(app).state.require().metadata  # /v2/models/<name>: the served model's own
    samples = {"name": meta.name, "version": meta.version}
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        for method in sorted((rule.methods or set()) - IMPLICIT):
            arguments = {name: samples.get(name, 1) for name in rule.arguments}
            path = adapter.build(rule.endpoint, arguments, method=method)
            found.add((method, path, openapi_path(rule.rule)))
    return found


def send(target: Target, method: str, path: str) -> Reply:
    """A request every route can act on: an image for POST, nothing for GET."""
    if method == "POST":
        return target.request(method, path, {"Content-Type": "image/png"}, small_png())
    return target.request(method, path)


def common_routes(targets: dict[str, Target]) -> set[tuple[str, str, str]]:
    return routes(targets["flask"].app)


def test_every_target_but_sagemaker_serves_exactly_the_flask_routes(targets) -> None:
    flask_routes = common_routes(targets)
    assert {("POST", "/predict", "/predict"), ("GET", "/health", "/health")} <= flask_routes
    for name, target in targets.items():
        own = routes(app_of_target(target))
        if name == "sagemaker":
            assert flask_routes < own  # every common route, plus SageMaker's
        else:
            assert own == flask_routes, name


@pytest.mark.parametrize("name", TARGET_NAMES)
def test_every_route_answers_like_flask(name: str, targets: dict[str, Target]) -> None:
    reference = targets["flask"]
    for method, path, _ in sorted(common_routes(targets)):
        expected = send(reference, method, path)
        got = send(targets[name], method, path)
        assert expected.status not in (404, 405), (method, path, expected.body[:200])
        assert (got.status, got.error_code) == (expected.status, expected.error_code), (
            name, method, path, got.body[:300])
        assert got.headers["content-type"] == expected.headers["content-type"], (name, path)
        # /metrics counts each app's own requests; /openapi.json is checked per target below.
        if path not in ("/metrics", "/openapi.json") and expected.headers[
                "content-type"] == "application/json":
            assert comparable(got.json()) == comparable(expected.json()), (name, method, path)


def comparable(document: object) -> object:
    """A JSON answer without what rightly differs by target: ORT threads follow each target's
    worker layout (Lambda: one process owning every vCPU), and SageMaker's file is named by
    the archive (model.onnx)."""
    if isinstance(document, dict):
        return {k: v for k, v in document.items() if k not in ("intra_op_threads", "file")}
    return document


def test_sagemaker_routes_only_on_sagemaker(targets: dict[str, Target]) -> None:
    own = routes(targets["sagemaker"].app) - common_routes(targets)
    assert {method_path[:2] for method_path in own} == {
        ("GET", "/ping"), ("POST", "/invocations"), ("GET", "/execution-parameters")}
    for method, path, _ in own:
        assert send(targets["sagemaker"], method, path).status == 200, path
        for name, target in targets.items():
            if name != "sagemaker":
                reply = send(target, method, path)
                assert (reply.status, reply.error_code) == (404, "not_found"), (name, path)


@pytest.mark.parametrize("name", TARGET_NAMES)
def test_every_route_is_in_the_targets_openapi(name: str, targets: dict[str, Target]) -> None:
    target = targets[name]
    document = target.request("GET", "/openapi.json").json()
    documented = {(method.upper(), path) for path, item in document["paths"].items()
                  for method in item}
    served = {(method, spec_path) for method, _, spec_path in routes(app_of_target(target))}
    assert documented == served


def test_openapi_summaries_come_from_the_views(targets: dict[str, Target]) -> None:
    paths = targets["sagemaker"].request("GET", "/openapi.json").json()["paths"]
    assert paths["/predict"]["post"]["summary"] == "Classify one image (HP or SSA)"
    assert paths["/ping"]["get"]["security"] == []  # a probe: open even with a token
    assert all(op["summary"] and op["operationId"] for item in paths.values()
               for op in item.values())
    assert isinstance(targets["flask"], FlaskTarget)


def test_the_decision_is_the_same_on_every_target(
    model_int8_path: Path, tmp_path: Path, sample_image_bytes: bytes
) -> None:
    """`decision` beside `label` everywhere: equal to the label without a band, "uncertain"
    inside one (here a band over all of (0, 1)), and the band in every target's /metadata."""
    import dataclasses

    from export.convert import read_metadata, write_metadata

    banded = tmp_path / "banded.onnx"
    banded.write_bytes(model_int8_path.read_bytes())
    write_metadata(banded, dataclasses.replace(
        read_metadata(model_int8_path), uncertain_band={"low": 0.0, "high": 1.0}))
    for path, folder in ((model_int8_path, "plain"), (banded, "banded")):
        answers = {}
        for target in all_targets(path, tmp_path / folder):
            reply = target.predict(sample_image_bytes, "image/png")
            assert reply.status == 200, (target.name, reply.body[:300])
            answers[target.name] = reply.json()
            metadata = target.request("GET", "/metadata").json()
            assert metadata["uncertain_band"] == (
                {"low": 0.0, "high": 1.0} if folder == "banded" else None), target.name
        assert set(answers) == set(TARGET_NAMES)
        reference = answers["flask"]
        expected = "uncertain" if folder == "banded" else reference["label"]
        for name, answer in answers.items():
            assert answer["decision"] == expected, (folder, name)
            assert comparable(answer) == comparable(reference), (folder, name)
