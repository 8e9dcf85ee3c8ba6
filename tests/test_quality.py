"""Input quality flags: ranges learned at export from the training images, warnings in serving.

The model is the fixture exported by the real pipeline from the synthetic sample
(tests/conftest.py); the ranges are whatever export learned from its training split, never
numbers written here. Perturbations are applied to held-out (test partition) sample images:
blurred, blanked or re-stained copies must be flagged, the originals must not, on every target.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from openapi_spec_validator import validate
from PIL import Image, ImageFilter
from prometheus_client.parser import text_string_to_metric_families

from export.convert import read_metadata, write_metadata
from services.core.errors import ModelLoadError
from services.core.model import InferenceModel
from services.core.quality import (
    HED_FROM_RGB,
    RGB_FROM_HED,
    WARNING_CODES,
    QualityRanges,
    laplacian_variance,
    measure,
)
from services.web.app import create_app
from tests.support.targets import all_targets
from training.data import load_annotations

HELD_OUT = 8  # test-partition images each perturbation is tried on


# --- builders ---------------------------------------------------------------------------------

def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def blurred(img: Image.Image) -> Image.Image:
    return img.filter(ImageFilter.GaussianBlur(radius=2.0 * img.width / 96))


def blank(img: Image.Image) -> Image.Image:
    """Empty glass: near-white with a little sensor noise."""
    noise = np.random.default_rng(0).normal(0.0, 2.0, (img.height, img.width, 3))
    return Image.fromarray(np.clip(242.0 + noise, 0, 255).astype(np.uint8))


def mostly_background(img: Image.Image) -> Image.Image:
    """A strip of the tissue at the left edge, glass everywhere else."""
    glass = np.asarray(blank(img)).copy()
    strip = img.width // 8
    glass[:, :strip] = np.asarray(img)[:, :strip]
    return Image.fromarray(glass)


def hue_rotated(img: Image.Image, degrees: int = 180) -> Image.Image:
    """Pink eosin and purple haematoxylin turned green and yellow: another stain entirely."""
    h, s, v = img.convert("HSV").split()
    shift = round(degrees * 256 / 360)
    return Image.merge("HSV", (h.point(lambda x: (x + shift) % 256), s, v)).convert("RGB")


def channel_scaled(img: Image.Image, gains: tuple[float, float, float] = (0.6, 1.0, 1.0)
                   ) -> Image.Image:
    """A red channel at 60 %: much more red absorbed than any H&E in training."""
    scaled = np.asarray(img, dtype=np.float32) * np.asarray(gains, dtype=np.float32)
    return Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8))


PERTURBATIONS: dict[str, tuple[Callable[[Image.Image], Image.Image], str]] = {
    "gaussian_blur": (blurred, "blurry"),
    "blank": (blank, "low_tissue"),
    "mostly_background": (mostly_background, "low_tissue"),
    "hue_rotated": (hue_rotated, "unusual_stain"),
    "channel_scaled": (channel_scaled, "unusual_stain"),
}


@pytest.fixture(scope="module")
def held_out(sample_dir: Path) -> list[Image.Image]:
    """Test-partition images: never seen by training, export's ranges or its gates."""
    records = [r for r in load_annotations(sample_dir) if r.partition == "test"]
    return [Image.open(r.path).convert("RGB") for r in records[:HELD_OUT]]


@pytest.fixture(scope="module")
def model(model_int8_path: Path) -> InferenceModel:
    return InferenceModel(model_int8_path)


def codes(result: dict) -> set[str]:
    return {w["code"] for w in result["warnings"]}


def warning_count(body: str, code: str) -> float:
    for family in text_string_to_metric_families(body):
        if family.name == "mhist_input_warnings":
            for sample in family.samples:
                if sample.name.endswith("_total") and sample.labels.get("code") == code:
                    return sample.value
    raise AssertionError(f"no mhist_input_warnings_total{{code={code!r}}} on /metrics")


# --- export records the ranges ----------------------------------------------------------------

def test_export_records_ranges_from_the_training_split(exported: dict) -> None:
    report = json.loads(exported["report"].read_text())
    quality = report["input_quality"]
    fit = report["splits"]["fit"]["images"]
    assert quality["enabled"] and quality["learned_on"] == {"split": "fit", "images": fit}
    assert f"{fit} images" in quality["ranges"]["source"]
    # Both files carry the same ranges, and they are the ones the report shows.
    fp32, int8 = (InferenceModel(exported[k]).metadata.quality for k in ("fp32", "int8"))
    assert fp32 == int8 == QualityRanges.from_dict(quality["ranges"])
    for rng in (fp32.focus, fp32.tissue_fraction, *fp32.od_mean.values(),
                *fp32.stain.values()):
        assert rng.low < rng.high
    # Held out from the ranges, the validation split is where false alarms are counted.
    validation = quality["validation"]
    assert validation["images"] == report["splits"]["validation"]["images"]
    assert validation["flagged"] == 0, validation


def test_metadata_route_shows_the_ranges(model_int8_path: Path) -> None:
    client = create_app({"MODEL_PATH": str(model_int8_path)}).test_client()
    described = client.get("/metadata").get_json()
    assert QualityRanges.from_dict(described["quality"]) == InferenceModel(
        model_int8_path).metadata.quality


# --- flags fire on perturbed images and stay quiet on the originals ---------------------------

def test_originals_are_quiet(model: InferenceModel, held_out: list[Image.Image]) -> None:
    results = model.predict_many([png(img) for img in held_out])
    for result in results:
        assert result["warnings"] == [], result["warnings"]
        measured = result["quality"]
        assert set(measured) == {"focus", "tissue_fraction", "od_mean", "stain"}
        assert set(measured["od_mean"]) == {"r", "g", "b"}
        assert set(measured["stain"]) == {"haematoxylin", "eosin"}


@pytest.mark.parametrize("name", PERTURBATIONS)
def test_perturbation_fires_its_flag(name: str, model: InferenceModel,
                                     held_out: list[Image.Image]) -> None:
    perturb, expected = PERTURBATIONS[name]
    results = model.predict_many([png(perturb(img)) for img in held_out])
    for result in results:
        assert expected in codes(result), (name, result["quality"], result["warnings"])
        warning = next(w for w in result["warnings"] if w["code"] == expected)
        low, high = warning["expected"]
        assert not low <= warning["value"] <= high and warning["message"]
    if expected == "low_tissue":
        # Glass has neither focus nor stain to judge: one warning says what is wrong.
        assert all(codes(r) == {"low_tissue"} for r in results), name


def test_a_larger_upload_of_the_same_field_is_measured_alike(
        model: InferenceModel, held_out: list[Image.Image]) -> None:
    """The statistics are measured on the model's crop, so twice the pixels changes little."""
    for img in held_out[:4]:
        small, large = model.predict_many(
            [png(img), png(img.resize((2 * img.width, 2 * img.height),
                                      Image.Resampling.BICUBIC))])
        assert large["warnings"] == []
        assert large["quality"]["tissue_fraction"] == pytest.approx(
            small["quality"]["tissue_fraction"], abs=0.1)


# --- the same answer on every target, counted on /metrics -------------------------------------

def test_every_target_returns_the_same_warnings_and_counts_them(
        model_int8_path: Path, held_out: list[Image.Image], tmp_path: Path) -> None:
    images = {"original": png(held_out[0]), "blurred": png(blurred(held_out[0])),
              "blank": png(blank(held_out[0])), "restained": png(hue_rotated(held_out[0]))}
    answers: dict[str, dict[str, dict]] = {}
    for target in all_targets(model_int8_path, tmp_path):
        before = target.request("GET", "/metrics").body.decode()
        answers[target.name] = {}
        for name, data in images.items():
            reply = target.predict(data, "image/png")
            assert reply.status == 200, (target.name, name, reply.body[:300])
            answers[target.name][name] = reply.json()
        after = target.request("GET", "/metrics").body.decode()
        for code in ("blurry", "low_tissue", "unusual_stain"):
            assert warning_count(after, code) - warning_count(before, code) >= 1, (
                target.name, code)
    reference = answers["flask"]
    assert reference["original"]["warnings"] == []
    assert codes(reference["blurred"]) >= {"blurry"}
    assert codes(reference["blank"]) == {"low_tissue"}
    assert "unusual_stain" in codes(reference["restained"])
    for name, got in answers.items():
        for image in images:
            assert got[image]["warnings"] == reference[image]["warnings"], (name, image)
            assert got[image]["quality"] == reference[image]["quality"], (name, image)


def test_batch_items_carry_their_own_warnings(model_int8_path: Path,
                                              held_out: list[Image.Image]) -> None:
    client = create_app({"MODEL_PATH": str(model_int8_path)}).test_client()
    body = {"images": [base64.b64encode(png(held_out[1])).decode(), "not base64!",
                       base64.b64encode(png(blurred(held_out[1]))).decode()]}
    answer = client.post("/predict/batch", json=body).get_json()
    first, error, last = answer["predictions"]
    assert first["warnings"] == [] and "warnings" not in error and "blurry" in codes(last)
    assert warning_count(client.get("/metrics").get_data(as_text=True), "blurry") == 1


def test_openapi_documents_the_fields(model_int8_path: Path) -> None:
    client = create_app({"MODEL_PATH": str(model_int8_path)}).test_client()
    document = client.get("/openapi.json").get_json()
    validate(document)
    schemas = document["components"]["schemas"]
    assert {"warnings", "quality"} <= set(schemas["Prediction"]["properties"])
    assert schemas["InputWarning"]["properties"]["code"]["enum"] == list(WARNING_CODES)
    assert set(schemas["InputQuality"]["required"]) == {"focus", "tissue_fraction", "od_mean",
                                                        "stain"}


# --- a file without the key serves as before; a malformed key does not load ------------------

def _with_quality(source: Path, target: Path, quality: object) -> Path:
    shutil.copyfile(source, target)
    write_metadata(target, dataclasses.replace(read_metadata(target), quality=quality))
    return target


def test_a_file_without_ranges_serves_as_before(model_int8_path: Path, tmp_path: Path,
                                                held_out: list[Image.Image]) -> None:
    plain = _with_quality(model_int8_path, tmp_path / "plain.onnx", None)
    client = create_app({"MODEL_PATH": str(plain)}).test_client()
    answer = client.post("/predict", data=png(blank(held_out[0])),
                         content_type="image/png").get_json()
    assert "warnings" not in answer and "quality" not in answer and "label" in answer
    assert "quality" not in client.get("/metadata").get_json()
    metrics = client.get("/metrics").get_data(as_text=True)
    assert all(warning_count(metrics, code) == 0 for code in WARNING_CODES)


def test_a_malformed_quality_key_is_a_load_error(model_int8_path: Path, tmp_path: Path) -> None:
    import onnx

    path = tmp_path / "bad.onnx"
    shutil.copyfile(model_int8_path, path)
    proto = onnx.load(str(path))
    for prop in proto.metadata_props:
        if prop.key == "mhist.quality":
            prop.value = json.dumps({"focus": {"low": 5, "high": 1}})
    onnx.save(proto, str(path))
    with pytest.raises(ModelLoadError, match="quality range focus"):
        InferenceModel(path)


# --- the statistics themselves ----------------------------------------------------------------

def test_deconvolution_matrix_recovers_pure_stains() -> None:
    """Ruifrok-Johnston: the OD of one unit of haematoxylin deconvolves to (1, 0, 0)."""
    assert np.allclose(RGB_FROM_HED @ HED_FROM_RGB, np.eye(3))
    assert np.allclose(RGB_FROM_HED[0] @ HED_FROM_RGB, [1.0, 0.0, 0.0])
    assert np.allclose(RGB_FROM_HED[1] @ HED_FROM_RGB, [0.0, 1.0, 0.0])


def test_laplacian_variance_by_hand() -> None:
    grey = np.zeros((5, 5), dtype=np.uint8)
    grey[2, 2] = 10  # interior Laplacian: -40 at the centre, +10 at its 4 neighbours, 0 else
    lap = np.array([0, 10, 0, 10, -40, 10, 0, 10, 0], dtype=np.float64)
    assert laplacian_variance(grey) == pytest.approx(lap.var())
    assert laplacian_variance(np.full((8, 8), 7, dtype=np.uint8)) == 0.0


def test_the_mask_resolution_is_the_slide_paths() -> None:
    """A patch's tissue fraction is what whole-slide inference finds for one tile."""
    from services.core.quality import MASK_PX
    from services.slides.tiling import THUMBNAIL_PX_PER_TILE

    assert MASK_PX == THUMBNAIL_PX_PER_TILE


def test_blank_and_flat_images_have_no_stain_to_judge() -> None:
    white = measure(Image.new("RGB", (64, 64), (255, 255, 255)))
    assert (white.tissue_fraction, white.od_mean, white.stain) == (0.0, None, None)
    pink = measure(Image.new("RGB", (64, 64), (232, 168, 204)))
    assert pink.tissue_fraction == 1.0 and pink.focus == 0.0
    assert pink.od_mean == pytest.approx(tuple(-np.log10(np.array([232, 168, 204]) / 255.0)),
                                         abs=1e-6)


def test_ranges_are_widened_percentiles_with_a_floor() -> None:
    from export.quality_ranges import MARGIN, widened

    values = np.arange(101, dtype=np.float64)  # percentiles 1 and 99 are 1 and 99
    got = widened(values, floor=0.0)
    assert (got.low, got.high) == pytest.approx((1 - MARGIN * 98, 99 + MARGIN * 98))
    assert widened(values, floor=0.0, bounds=(0.0, 1.0)).to_dict() == {"low": 0.0, "high": 1.0}
    flat = widened(np.full(10, 0.3), floor=0.02)  # no spread in training: the floor decides
    assert (flat.low, flat.high) == pytest.approx((0.28, 0.32))
    # Focus is widened in log space: 10^2 .. 10^4, so percentiles 1 and 99 are 10^2.02, 10^3.98.
    focus = widened(np.geomspace(100.0, 10000.0, 101), floor=0.0, log=True)
    assert (focus.low, focus.high) == pytest.approx(
        (10 ** (2.02 - MARGIN * 1.96), 10 ** (3.98 + MARGIN * 1.96)), rel=1e-9)


def test_training_images_without_tissue_give_no_ranges() -> None:
    """Export then goes on without mhist.quality (tests/test_export.py's black images)."""
    from export.quality_ranges import NoRangesError, learn_ranges

    black = measure(Image.new("RGB", (64, 64), (0, 0, 0)))
    with pytest.raises(NoRangesError, match="enough tissue"):
        learn_ranges([black] * 5, "black")
    with pytest.raises(NoRangesError):
        learn_ranges([], "nothing")
