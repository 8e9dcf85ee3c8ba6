"""Input quality flags: ranges learned at export from the training images, warnings in serving.

The model is the fixture exported by the real pipeline from the synthetic sample
(tests/conftest.py); the ranges are whatever export learned from its training split, never
numbers written here. Every held-out image (the validation split and the test partition: all
the sample's images the ranges were not fitted on) is sent as it is and perturbed (blurred,
blanked, re-stained; tests/support/quality.py): at most MAX_ORIGINALS_FLAGGED of the originals
may be flagged, at least MIN_PERTURBED_FLAGGED of each perturbation must carry its warning.
docs/serving.md's table of these counts comes from the same code at docs build time.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from openapi_spec_validator import validate
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from export.convert import read_metadata, write_metadata
from services.core.errors import ModelLoadError
from services.core.model import InferenceModel
from services.core.quality import (
    HED_FROM_RGB,
    INPUT_WARNING_CODES,
    RGB_FROM_HED,
    SYNTHETIC_TRAINING,
    WARNING_CODES,
    QualityRanges,
    laplacian_variance,
    measure,
)
from services.web.app import create_app
from tests.support.quality import (
    BY_NAME,
    INPUTS,
    MAX_ORIGINALS_FLAGGED,
    MIN_PERTURBED_FLAGGED,
    ORIGINAL,
    PERTURBATIONS,
    HeldOut,
    blank,
    blurred,
    held_out_flags,
    hue_rotated,
    markdown_table,
    perturbed,
    sample_held_out,
)
from tests.support.targets import all_targets

# --- builders ---------------------------------------------------------------------------------

def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def model(model_int8_path: Path) -> InferenceModel:
    return InferenceModel(model_int8_path)


@pytest.fixture(scope="module")
def held(exported: dict, sample_dir: Path, model: InferenceModel) -> HeldOut:
    """Every sample image the ranges were not fitted on, with the flags of each input, from the
    split the export report names (its seed and validation share)."""
    split = json.loads(exported["report"].read_text())["splits"]["validation"]
    return held_out_flags(sample_dir, model.metadata.preprocessing, seed=split["seed"],
                          val_fraction=split["val_fraction"])


@pytest.fixture(scope="module")
def held_out(held: HeldOut) -> list[Image.Image]:
    """The held-out images: never seen by training's fit, export's ranges or calibration."""
    return [Image.open(path).convert("RGB") for path in held.paths]


def codes(result: dict) -> set[str]:
    """The input warnings' codes (the model's synthetic-training notice is on every answer of
    the fixture model, which learnt from the sample)."""
    return {w["code"] for w in result["warnings"]} - {SYNTHETIC_TRAINING}


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
    # Every input warning is a not_assessable rule: the report counts what each turns away.
    turned_away = validation["not_assessable"]
    assert turned_away["by_rule"] == validation["by_code"]
    assert set(turned_away["by_rule"]) == set(INPUT_WARNING_CODES)
    assert turned_away["images"] == validation["flagged"]
    print(f"validation images turned away per rule: {turned_away}")


def test_metadata_route_shows_the_ranges(model_int8_path: Path) -> None:
    client = create_app({"MODEL_PATH": str(model_int8_path)}).test_client()
    described = client.get("/metadata").get_json()
    assert QualityRanges.from_dict(described["quality"]) == InferenceModel(
        model_int8_path).metadata.quality


# --- flags fire on perturbed images and stay quiet on the originals ---------------------------

def test_the_held_out_split_and_ranges_are_exports(exported: dict, held: HeldOut,
                                                   model: InferenceModel) -> None:
    """The rates below (and the docs table) come from the ranges the model file carries."""
    splits = json.loads(exported["report"].read_text())["splits"]
    assert held.fit_images == splits["fit"]["images"]
    assert len(held.paths) == splits["validation"]["images"] + splits["test"]["images"]
    recorded = model.metadata.quality
    assert dataclasses.replace(held.ranges, source=recorded.source) == recorded


@pytest.mark.parametrize("name", INPUTS)
def test_serving_flags_each_held_out_image_as_counted(name: str, model: InferenceModel,
                                                      held: HeldOut,
                                                      held_out: list[Image.Image]) -> None:
    """predict_many (decode, the model's crop, assess) gives every image the warnings the
    rates count; every warning's value is outside the range it quotes."""
    results = model.predict_many([png(perturbed(name, img)) for img in held_out])
    assert [codes(r) for r in results] == held.flags[name]
    for result in results:
        assert set(result["quality"]) == {"focus", "tissue_fraction", "od_mean", "stain",
                                          "max_saturation", "contrast"}
        assert result["reasons"] == [w["code"] for w in result["warnings"]
                                     if w["code"] != SYNTHETIC_TRAINING]
        assert (result["decision"] == "not_assessable") == bool(result["reasons"])
        for warning in result["warnings"]:
            if warning["code"] == SYNTHETIC_TRAINING:
                continue
            low, high = warning["expected"]
            assert not low <= warning["value"] <= high and warning["message"], warning


def test_few_clean_held_out_images_are_flagged(held: HeldOut) -> None:
    originals = held.flags[ORIGINAL]
    flagged = [(path.name, found) for path, found in zip(held.paths, originals, strict=True)
               if found]
    assert len(flagged) <= MAX_ORIGINALS_FLAGGED * len(originals), flagged


@pytest.mark.parametrize("name", [p.name for p in PERTURBATIONS])
def test_each_perturbation_is_flagged_on_held_out_images(name: str, held: HeldOut) -> None:
    expected = BY_NAME[name].code
    found = held.flags[name]
    missed = [i for i, codes_ in enumerate(found) if expected not in codes_]
    assert len(missed) <= (1 - MIN_PERTURBED_FLAGGED) * len(found), (
        name, [(held.paths[i].name, found[i]) for i in missed])
    # A miss is a patch already too sparse to judge: low_tissue, not assessable either way.
    for i in missed:
        assert "low_tissue" in found[i] and "low_tissue" in held.flags[ORIGINAL][i], (
            name, held.paths[i].name, found[i])
    if name == "blank":
        # Glass has neither focus nor stain to judge: one warning says what is wrong.
        assert all(codes_ == {"low_tissue"} for codes_ in found), name


def test_the_docs_table_counts_this_sample(held: HeldOut) -> None:
    """docs/hooks.py renders the table from a sample it generates like the fixture's: the same
    ranges, the same flags on every image, so the docs show exactly what is asserted here."""
    docs = sample_held_out()
    assert [p.name for p in docs.paths] == [p.name for p in held.paths]
    assert docs.ranges == dataclasses.replace(held.ranges, source=docs.ranges.source)
    assert docs.flags == held.flags
    assert markdown_table(docs) == markdown_table(held)


def test_a_larger_upload_of_the_same_field_is_measured_alike(
        model: InferenceModel, held_out: list[Image.Image]) -> None:
    """The statistics are measured on the model's crop, so twice the pixels changes little."""
    for img in held_out[:4]:
        small, large = model.predict_many(
            [png(img), png(img.resize((2 * img.width, 2 * img.height),
                                      Image.Resampling.BICUBIC))])
        assert codes(large) == set()
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
    assert codes(reference["original"]) == set()
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
    assert codes(first) == set() and "warnings" not in error and "blurry" in codes(last)
    assert warning_count(client.get("/metrics").get_data(as_text=True), "blurry") == 1


def test_openapi_documents_the_fields(model_int8_path: Path) -> None:
    client = create_app({"MODEL_PATH": str(model_int8_path)}).test_client()
    document = client.get("/openapi.json").get_json()
    validate(document)
    schemas = document["components"]["schemas"]
    assert {"warnings", "quality"} <= set(schemas["Prediction"]["properties"])
    assert sorted(schemas["InputWarning"]["properties"]["code"]["enum"]) == sorted(
        WARNING_CODES)
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
    assert "quality" not in answer and "reasons" not in answer and "label" in answer
    # Unchecked, the answer still carries the model's notice: it learnt from the sample.
    assert [w["code"] for w in answer["warnings"]] == [SYNTHETIC_TRAINING]
    assert answer["decision"] == answer["label"]
    assert "quality" not in client.get("/metadata").get_json()
    metrics = client.get("/metrics").get_data(as_text=True)
    assert all(warning_count(metrics, code) == 0 for code in INPUT_WARNING_CODES)


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
