"""One threshold, one scale: every surface of one calibrated model states the same number.

The fixture model is exported with temperature scaling, so its file holds two cuts of one
rule: `mhist.threshold` on softmax(logits) and its image on the calibrated probabilities every
answer serves. Walked here: /metadata and /predict on every target, /predict/batch,
/invocations, /predict/region, the OpenAPI description, the text CLI, a slide's summary and
CSV, and the S3 flow's result. Each must state the calibrated number, say "calibrated", and
label with it (the positive class exactly when the P it shows is at or above it). The upload
page is walked in tests/test_service_browser.py (its data-threshold is the API's).
"""

from __future__ import annotations

import base64
import csv
import io
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from services.core.model import InferenceModel
from services.web.app import create_app
from tests.conftest import REPO_ROOT
from tests.support.lambda_local import LambdaContext
from tests.support.targets import all_targets
from tests.test_lambda_s3 import Buckets, aws_env, buckets, moto, s3_handler  # noqa: F401

ROUNDED = 1e-6  # CSV and region tiles round P to 6 decimals: labels are checked beyond that


@pytest.fixture(scope="module")
def model(model_int8_path: Path) -> InferenceModel:
    model = InferenceModel(model_int8_path)
    assert model.metadata.calibration, "the walk needs a calibrated model"
    # Two different numbers in the file: a surface stating the raw one would be caught.
    assert abs(model.metadata.served_threshold - model.metadata.threshold) > 1e-3
    return model


def labelled_with(answer: dict, threshold: float, positive: str = "SSA") -> bool:
    p = answer["probabilities"][positive]
    return (answer["label"] == positive) == (p >= threshold)


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def test_every_surface_states_the_calibrated_threshold(
        model: InferenceModel, model_int8_path: Path, sample_dir: Path, tmp_path: Path,
        sample_image_bytes: bytes) -> None:
    expected = model.metadata.served_threshold
    images = sorted((sample_dir / "images").glob("*.png"))[:8]
    found: dict[str, float] = {}

    for target in all_targets(model_int8_path, tmp_path / "targets"):
        meta = target.request("GET", "/metadata").json()
        assert (meta["threshold_scale"], meta["threshold_raw"]) == (
            "calibrated", model.metadata.threshold), target.name
        assert meta["calibration"]["threshold"] == meta["threshold"]
        found[f"{target.name} /metadata"] = meta["threshold"]
        answer = target.predict(sample_image_bytes, "image/png").json()
        assert answer["threshold_scale"] == "calibrated", target.name
        assert labelled_with(answer, expected), (target.name, answer)
        found[f"{target.name} {target.predict_path}"] = answer["threshold"]

    client = create_app({"MODEL_PATH": str(model_int8_path)}).test_client()
    batch = client.post("/predict/batch", json={"images": [
        base64.b64encode(p.read_bytes()).decode() for p in images]}).get_json()
    assert batch["errors"] == 0 and batch["count"] == len(images), batch
    for index, answer in enumerate(batch["predictions"]):
        assert answer["threshold_scale"] == "calibrated" and labelled_with(answer, expected)
        found[f"/predict/batch item {index}"] = answer["threshold"]

    region = client.post("/predict/region?min_tissue=0", data=sample_image_bytes,
                         content_type="image/png").get_json()
    assert region["threshold_scale"] == "calibrated"
    found["/predict/region"] = region["threshold"]
    for tile in region["tiles"]:
        if abs(tile["p_ssa"] - expected) > ROUNDED and tile["decision"] != "not_assessable":
            assert (tile["label"] == "SSA") == (tile["p_ssa"] >= expected), tile

    schemas = client.get("/openapi.json").get_json()["components"]["schemas"]
    for name in ("Metadata", "Prediction", "RegionResponse"):
        described = schemas[name]["properties"]["threshold"].get("description", "")
        assert "scale" in described, (name, described)
        assert "threshold_scale" in schemas[name]["properties"], name
    assert "calibrated" in str(schemas["Metadata"]["properties"]["threshold_scale"])

    text = subprocess.run(
        [sys.executable, "-m", "services.predict", "--format", "text", "--model",
         str(model_int8_path), *map(str, images[:3])],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=True).stdout
    lines = [line for line in text.splitlines() if "threshold" in line]
    assert len(lines) == 3 and all(f"threshold {expected:.3f} (calibrated)" in line
                                   for line in lines), text
    found["text CLI (3 decimals)"] = round(expected, 3)

    found.update(slide_thresholds(model, tmp_path / "slide", expected))
    print("\n".join(f"{surface:>32}: {value!r}" for surface, value in found.items()))
    for surface, value in found.items():
        tolerance = 5e-4 if "3 decimals" in surface else 0.0
        assert value == pytest.approx(expected, abs=tolerance), surface


def slide_thresholds(model: InferenceModel, out: Path, expected: float) -> dict[str, float]:
    """A slide of the planted SSA and HP fields: summary.json and the CSV's labels."""
    pytest.importorskip("openslide")
    from services.slides.run import Options, analyse_slide
    from tests.support.slides import SLIDE_LAYOUT, tissue_canvas, write_pyramid

    canvas, _ = tissue_canvas(SLIDE_LAYOUT, 64)
    mpp = model.metadata.mpp * model.metadata.preprocessing.resize_size / 64
    slide = write_pyramid(out.parent / "walk.tif", canvas, mpp, mpp / 4)
    out.mkdir()
    summary = analyse_slide(slide, model, Options(progress=False), out)
    assert summary["model"]["threshold_scale"] == "calibrated"
    assert summary["model"]["threshold_raw"] == model.metadata.threshold
    with open(out / "walk.tiles.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert rows
    for row in rows:
        p = float(row["p_ssa"])
        if abs(p - expected) > ROUNDED:
            assert (row["label"] == "SSA") == (p >= expected), row
    return {"slide summary.json": summary["model"]["threshold"]}


@pytest.mark.aws
def test_the_s3_result_states_the_calibrated_threshold(
        model: InferenceModel, model_int8_path: Path, buckets: Buckets,  # noqa: F811
        sample_image_bytes: bytes) -> None:
    handler = s3_handler(model_int8_path, buckets)
    key = "incoming/walk.png"
    assert handler(buckets.put(key, sample_image_bytes), LambdaContext()) == {
        "outcomes": {"predicted": 1}}
    result = buckets.result(key)
    assert result["threshold"] == model.metadata.served_threshold
    assert result["threshold_scale"] == "calibrated"
    assert labelled_with(result, result["threshold"])
    assert "decision" in result and "reasons" in result
