"""Every answer fits its one declaration (services/core/contracts.py).

The JSON and the OpenAPI components both come from those declarations; this checks the last
link: real answers of every target, validated against the schemas its own /openapi.json
publishes (JSON Schema 2020-12, as OpenAPI 3.1 uses), for each route that classifies, fails,
or describes the model.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator
from PIL import Image
from referencing import Registry, Resource

from services.core import contracts
from tests.support.targets import Target, all_targets

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def targets(model_int8_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Target]:
    return {t.name: t for t in all_targets(model_int8_path, tmp_path_factory.mktemp("contracts"))}


def validator(document: dict, component: str) -> Draft202012Validator:
    """A validator for one component, resolving $refs into the document's own components."""
    registry = Registry().with_resource("urn:openapi", Resource.from_contents(
        {**document, "$schema": "https://json-schema.org/draft/2020-12/schema"}))
    schema = {"$ref": f"urn:openapi#/components/schemas/{component}"}
    return Draft202012Validator(schema, registry=registry)


def region_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (448, 448), (200, 120, 170)).save(buffer, format="PNG")
    return buffer.getvalue()


def answers(target: Target, image: bytes) -> list[tuple[str, int, object]]:
    """(component, expected status, JSON) for each kind of answer this target gives."""
    # One good image and one bad item: the batch holds a Prediction and an ItemError.
    batch = json.dumps({"images": [base64.b64encode(image).decode(), "not base64!"]}).encode()
    single = target.post(f"{target.predict_path}?explain=1", {"Content-Type": "image/png"},
                         image)
    plain = target.post("predict", {"Content-Type": "image/png"}, image)
    bad = target.post("predict", {"Content-Type": "image/png"}, b"not an image")
    found = [("Prediction", single.status, single.json()),
             ("Prediction", plain.status, plain.json()),
             ("Error", bad.status, bad.json())]
    if target.family != "sagemaker":
        batched = target.post("/predict/batch", {"Content-Type": "application/json"}, batch)
        region = target.post("/predict/region", {"Content-Type": "image/png"}, region_png())
        found += [("BatchResponse", batched.status, batched.json()),
                  ("RegionResponse", region.status, region.json())]
    for path, component in (("/ready", "Ready"), ("/metadata", "Metadata")):
        reply = target.request("GET", path)
        found.append((component, reply.status, reply.json()))
    return found


def test_every_answer_fits_the_published_schema(targets: dict[str, Target],
                                                sample_image_bytes: bytes) -> None:
    checked: set[str] = set()
    for name, target in targets.items():
        document = target.request("GET", "/openapi.json").json()
        assert document["openapi"].startswith("3.1")
        for component, status, answer in answers(target, sample_image_bytes):
            expected = 400 if component == "Error" else 200
            assert status == expected, (name, component, answer)
            errors = sorted(validator(document, component).iter_errors(answer), key=str)
            assert errors == [], (name, component, [e.message for e in errors[:3]])
            checked.add(component)
    assert checked == {"Prediction", "Error", "BatchResponse", "RegionResponse", "Ready",
                       "Metadata"}


def test_a_drifted_answer_fails_the_schema(targets: dict[str, Target],
                                           sample_image_bytes: bytes) -> None:
    """The check can fail: a renamed key, a wrong type or a probability above 1 is caught."""
    target = targets["flask"]
    document = target.request("GET", "/openapi.json").json()
    answer = target.predict(sample_image_bytes, "image/png").json()
    check = validator(document, "Prediction")
    assert check.is_valid(answer)
    for broken in ({k: v for k, v in answer.items() if k != "threshold"},
                   {**answer, "threshold": "0.5"},
                   {**answer, "probabilities": {"HP": -0.1, "SSA": 1.1}},
                   {**answer, "model": {**answer["model"], "precision": "int4"}}):
        assert not check.is_valid(broken), broken


def test_an_undeclared_metadata_key_is_refused_not_served() -> None:
    """Answers built off the hot path are read through their declaration: an extra key is an
    error naming it, so /metadata cannot grow a field the schema does not describe."""
    with pytest.raises(ValueError, match="unexpected_key"):
        contracts.checked(contracts.Ready, {"status": "ready", "unexpected_key": 1})
