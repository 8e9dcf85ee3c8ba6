"""The app against its own /openapi.json, by schemathesis (pinned in constraints.txt).

In process (WSGI), one app per case the document changes with: the Flask target without an API
token (no bearer scheme, no 401s) and the SageMaker target with one (every route, the token
sent). For each operation schemathesis generates requests from the document and checks every
answer: no 5xx, a status the operation declares, the declared content type, a body that fits
the declared schema (the components generated from services/core/contracts.py). A few
examples per operation keep the file near a minute on two CPUs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import ignored_auth, not_a_server_error
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from services.core.preprocessing import MIN_SIDE
from services.web.app import create_app

pytestmark = pytest.mark.slow

TOKEN = "schemathesis-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, ignored_auth,
          response_schema_conformance]
EXAMPLES_PER_OPERATION = 40
MAX_BATCH = 5  # not the default, so the document shows the setting
SETTINGS = settings(
    max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True, database=None,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: each failure is reported as found
    suppress_health_check=list(HealthCheck),
)


def open_app(model: Path) -> Flask:
    return create_app({"MODEL_PATH": str(model), "SERVING_TARGET": "flask",
                       "MAX_BATCH": str(MAX_BATCH)})


def token_app(model: Path) -> Flask:
    return create_app({"MODEL_PATH": str(model), "SERVING_TARGET": "sagemaker",
                       "MHIST_API_TOKEN": TOKEN})


def run_schema(app: Flask, headers: dict[str, str]) -> tuple[int, list[str]]:
    """Every operation of the app's own document, EXAMPLES_PER_OPERATION generated cases
    each, valid (positive) and invalid (negative): (cases run, one line per failing case)."""
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app, headers=headers)
    ran, failures = 0, []
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in GenerationMode:
            try:
                ran += run_operation(operation, mode, headers, failures)
            except Unsatisfiable:  # negative: an operation without parameters or body
                assert mode is GenerationMode.NEGATIVE, operation.label
    return ran, failures


def run_operation(operation: Any, mode: GenerationMode, headers: dict[str, str],
                  failures: list[str]) -> int:
    """Cases run on one operation; each failing one appended to `failures`."""
    ran = 0

    @SETTINGS
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case: Any) -> None:
        nonlocal ran
        ran += 1
        try:
            case.call_and_validate(checks=CHECKS, headers=headers)
        except (Failure, FailureGroup) as exc:
            failures.append(f"{operation.label} ({mode.value}): "
                            f"{' '.join(str(exc).split())[:400]} | {case.as_curl_command()}")

    check()
    return ran


def test_without_a_token(model_int8_path: Path) -> None:
    ran, failures = run_schema(open_app(model_int8_path), {})
    assert ran >= 9, ran
    assert failures == []


def test_with_a_token(model_int8_path: Path) -> None:
    ran, failures = run_schema(token_app(model_int8_path), AUTH)
    assert ran >= 12, ran
    assert failures == []


def test_the_document_says_what_the_server_does(model_int8_path: Path) -> None:
    """Security only with a token; a batch's bounds and the smallest image side declared."""
    bare = open_app(model_int8_path).test_client().get("/openapi.json").get_json()
    secured = token_app(model_int8_path).test_client().get("/openapi.json",
                                                           headers=AUTH).get_json()
    assert "security" not in bare and "securitySchemes" not in bare["components"]
    assert all("401" not in op["responses"] for item in bare["paths"].values()
               for op in item.values())
    assert secured["security"] == [{"bearer": []}]
    assert secured["components"]["securitySchemes"] == {
        "bearer": {"type": "http", "scheme": "bearer"}}
    assert "401" in secured["paths"]["/metadata"]["get"]["responses"]
    body = bare["paths"]["/predict/batch"]["post"]["requestBody"]["content"]
    form = body["multipart/form-data"]["schema"]
    assert form["required"] == ["images"]
    assert (form["properties"]["images"]["minItems"],
            form["properties"]["images"]["maxItems"]) == (1, MAX_BATCH)
    for variant in body["application/json"]["schema"]["oneOf"]:
        (field,) = variant["required"]
        assert (variant["properties"][field]["minItems"],
                variant["properties"][field]["maxItems"]) == (1, MAX_BATCH)
    image = bare["paths"]["/predict"]["post"]["requestBody"]["content"]["image/png"]["schema"]
    assert f"at least {MIN_SIDE} px" in image["description"]
