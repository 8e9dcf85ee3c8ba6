"""Not assessable is an answer: inputs the model was not made for get neither class.

The model is the fixture exported by the real pipeline from the synthetic sample; the rules
are the ranges its export recorded (mhist.quality), never numbers written here. Greyscale,
photographic, blank, blurred and re-stained versions of the sample's held-out images must be
`not_assessable` with the reason that names what is wrong; the sample's own test images must
be assessable (the rate is printed); label and probabilities stay as they were.
"""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from export.convert import read_metadata, write_metadata
from services.core.model import InferenceModel
from services.core.quality import NOT_ASSESSABLE, SYNTHETIC_TRAINING
from services.web.app import create_app
from tests.support.quality import (
    BY_NAME,
    MIN_PERTURBED_FLAGGED,
    PERTURBATIONS,
    blank,
    greyscale,
    hue_rotated,
    immunostained,
)
from tests.support.targets import TARGET_NAMES, all_targets
from training.data import load_annotations

# The sample's own test images that must be assessable, at least. Export's ranges turn away
# 0 of the validation split (tests/test_quality.py); the test partition is drawn alike.
MIN_ASSESSABLE = 0.95


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def model(model_int8_path: Path) -> InferenceModel:
    return InferenceModel(model_int8_path)


@pytest.fixture(scope="module")
def test_images(sample_dir: Path) -> list[Image.Image]:
    """The sample's test partition: never seen by training, export's ranges or calibration."""
    records = sorted((r for r in load_annotations(sample_dir) if r.partition == "test"),
                     key=lambda r: r.name)
    return [Image.open(r.path).convert("RGB") for r in records]


def photographs() -> dict[str, Image.Image]:
    """Real photographs shipped with scikit-learn and matplotlib (a temple, a flower, a
    portrait), in colour and greyscale: no tissue, no H&E."""
    from matplotlib import cbook
    from sklearn.datasets import load_sample_image

    found = {name: Image.fromarray(load_sample_image(f"{name}.jpg"))
             for name in ("china", "flower")}
    with cbook.get_sample_data("grace_hopper.jpg") as stream:
        found["portrait"] = Image.open(stream).convert("RGB")
    for name in list(found):
        found[name].thumbnail((224, 224))
        found[f"{name}_grey"] = greyscale(found[name])
    return found


def test_the_samples_own_test_images_are_assessable(model: InferenceModel,
                                                   test_images: list[Image.Image]) -> None:
    answers = model.predict_many([png(img) for img in test_images])
    refused = [(i, a["reasons"]) for i, a in enumerate(answers) if a["decision"] == NOT_ASSESSABLE]
    rate = 1 - len(refused) / len(answers)
    print(f"assessable: {len(answers) - len(refused)} of {len(answers)} sample test images "
          f"({rate:.1%}); turned away: {refused}")
    assert rate >= MIN_ASSESSABLE, refused
    for answer in answers:
        assert answer["decision"] != NOT_ASSESSABLE or answer["reasons"]
        if answer["decision"] != NOT_ASSESSABLE:
            assert answer["reasons"] == [] and answer["decision"] in ("HP", "SSA", "uncertain")


@pytest.mark.parametrize("name", [p.name for p in PERTURBATIONS])
def test_perturbed_sample_images_are_not_assessable_for_the_right_reason(
        name: str, model: InferenceModel, test_images: list[Image.Image]) -> None:
    """Blurred, blank, mostly glass, re-stained (hue, a channel, IHC) and greyscale versions of
    every test image: not_assessable, with the perturbation's own reason; the few misses are
    patches already too sparse to judge, which are not assessable anyway."""
    expected = BY_NAME[name].code
    answers = model.predict_many([png(BY_NAME[name].apply(img)) for img in test_images])
    missed = [i for i, a in enumerate(answers) if expected not in a["reasons"]]
    assert len(missed) <= (1 - MIN_PERTURBED_FLAGGED) * len(answers), (name, missed)
    for answer in answers:
        assert answer["decision"] == NOT_ASSESSABLE, (name, answer["warnings"])
        # One warning per reason, each naming its statistics with their values and ranges.
        assert answer["reasons"] == [w["code"] for w in answer["warnings"]
                                     if w["code"] != SYNTHETIC_TRAINING]
        for warning in answer["warnings"]:
            if warning["code"] == SYNTHETIC_TRAINING:
                continue
            assert warning["statistics"], warning
            for stat in warning["statistics"]:
                low, high = stat["expected"]
                assert not low <= stat["value"] <= high, warning
                assert stat["statistic"] in warning["message"] or warning["code"] in (
                    "low_tissue", "grayscale"), warning


def test_photographs_are_not_assessable(model: InferenceModel) -> None:
    for name, img in photographs().items():
        answer = model.predict_bytes(png(img))
        assert answer["decision"] == NOT_ASSESSABLE, (name, answer["warnings"])
        reasons = set(answer["reasons"])
        if name.endswith("_grey"):
            assert "grayscale" in reasons, (name, reasons)
        else:  # coloured, but not the stain (or not the tissue) the model learnt from
            assert reasons & {"unusual_stain", "low_tissue"}, (name, reasons)
        # label and probabilities stay, for compatibility
        assert answer["label"] in ("HP", "SSA")
        assert sum(answer["probabilities"].values()) == pytest.approx(1.0)


def test_every_check_runs_and_names_every_statistic(model: InferenceModel,
                                                     test_images: list[Image.Image]) -> None:
    """IHC re-staining changes several statistics: one unusual_stain warning names them all,
    and low tissue (if any) no longer hides it."""
    answer = model.predict_bytes(png(immunostained(test_images[0])))
    (stain,) = [w for w in answer["warnings"] if w["code"] == "unusual_stain"]
    names = [s["statistic"] for s in stain["statistics"]]
    assert len(names) >= 2, stain
    for stat in stain["statistics"]:
        assert stat["statistic"] in stain["message"] and f"{stat['value']:.3f}" in stain[
            "message"], stain
    assert stain["statistic"] in names and stain["value"] in [s["value"] for s in
                                                              stain["statistics"]]


def test_low_tissue_messages_match_the_value(model: InferenceModel,
                                             test_images: list[Image.Image]) -> None:
    """No tissue is said to be glass; some tissue, below training's share, is not."""
    quality = model.metadata.quality
    empty = model.predict_bytes(png(blank(test_images[0])))
    (none,) = [w for w in empty["warnings"] if w["code"] == "low_tissue"]
    assert none["value"] < 0.05 and "No tissue" in none["message"] and "glass" in none[
        "message"]
    # A patch with a share of tissue just under the training range: half tissue, half glass,
    # the split moved until the measured fraction lies between 0.05 and the range's low end.
    img = test_images[0]
    for share in np.linspace(0.9, 0.1, 17):
        glass = np.asarray(blank(img)).copy()
        glass[:, : round(share * img.width)] = np.asarray(img)[:, : round(share * img.width)]
        answer = model.predict_bytes(png(Image.fromarray(glass)))
        fraction = answer["quality"]["tissue_fraction"]
        if 0.05 <= fraction < quality.tissue_fraction.low:
            (some,) = [w for w in answer["warnings"] if w["code"] == "low_tissue"]
            assert "glass" not in some["message"] and f"{fraction:.0%}" in some["message"]
            assert answer["decision"] == NOT_ASSESSABLE
            return
    pytest.fail("no split gave a tissue fraction between 0.05 and the range's low end")


def test_not_assessable_keeps_label_and_probabilities_and_wins_over_uncertain(
        model_int8_path: Path, tmp_path: Path, test_images: list[Image.Image]) -> None:
    """The same file without ranges gives the same label and probabilities; with a band over
    all of (0, 1) an assessable image is uncertain, a blank one still not_assessable."""
    meta = read_metadata(model_int8_path)
    plain, banded = tmp_path / "plain.onnx", tmp_path / "banded.onnx"
    for path, changed in ((plain, {"quality": None}),
                          (banded, {"uncertain_band": {"low": 0.0, "high": 1.0}})):
        path.write_bytes(model_int8_path.read_bytes())
        write_metadata(path, dataclasses.replace(meta, **changed))
    images = [png(test_images[0]), png(blank(test_images[0])), png(hue_rotated(test_images[0]))]
    checked = InferenceModel(model_int8_path).predict_many(images)
    unchecked = InferenceModel(plain).predict_many(images)
    in_band = InferenceModel(banded).predict_many(images)
    for a, b in zip(checked, unchecked, strict=True):
        assert (a["label"], a["probabilities"]) == (b["label"], b["probabilities"])
        assert "reasons" not in b and b["decision"] == b["label"]
    assert [a["decision"] for a in in_band] == ["uncertain", NOT_ASSESSABLE, NOT_ASSESSABLE]


def test_every_target_gives_the_same_decision_reasons_and_fields(
        model_int8_path: Path, tmp_path: Path, test_images: list[Image.Image]) -> None:
    """Flask, Lambda (every event kind) and SageMaker: the same decision, reasons and
    warnings for a patch, a blank image and a greyscale one, and the fields in /openapi.json."""
    images = {"patch": png(test_images[0]), "blank": png(blank(test_images[0])),
              "grey": png(greyscale(test_images[0]))}
    answers: dict[str, dict] = {}
    for target in all_targets(model_int8_path, tmp_path):
        answers[target.name] = {}
        for name, data in images.items():
            reply = target.predict(data, "image/png")
            assert reply.status == 200, (target.name, name, reply.body[:300])
            answers[target.name][name] = reply.json()
        schemas = target.request("GET", "/openapi.json").json()["components"]["schemas"]
        assert {"decision", "reasons", "warnings", "threshold", "threshold_scale"} <= set(
            schemas["Prediction"]["properties"]), target.name
        assert {"threshold", "threshold_scale", "threshold_raw"} <= set(
            schemas["Metadata"]["properties"]), target.name
        assert "not_assessable" in schemas["Prediction"]["properties"]["decision"][
            "description"]
    assert set(answers) == set(TARGET_NAMES)
    reference = answers["flask"]
    assert reference["patch"]["decision"] in ("HP", "SSA", "uncertain")
    assert reference["blank"]["decision"] == reference["grey"]["decision"] == NOT_ASSESSABLE
    assert "grayscale" in reference["grey"]["reasons"]
    for name, got in answers.items():
        for image in images:
            for key in ("decision", "reasons", "warnings", "threshold", "threshold_scale",
                        "label"):
                assert got[image][key] == reference[image][key], (name, image, key)


def test_region_tiles_carry_their_decision_and_the_region_its_share(
        model_int8_path: Path, test_images: list[Image.Image]) -> None:
    """A region of four patches, the last re-stained: that tile is not_assessable, the share
    says so, and the positive share counts the others only; a region wholly re-stained has no
    positive share at all, and its own stain warning."""
    client = create_app({"MODEL_PATH": str(model_int8_path)}).test_client()
    side = test_images[0].width
    tiles = [test_images[i] for i in range(4)]
    half = Image.new("RGB", (4 * side, side))
    for i, img in enumerate(tiles):
        half.paste(img if i < 3 else hue_rotated(img), (i * side, 0))
    meta = InferenceModel(model_int8_path).metadata
    mpp = meta.mpp * meta.preprocessing.resize_size / side  # one patch, one tile
    body = client.post(f"/predict/region?mpp={mpp}", data=png(half),
                       content_type="image/png").get_json()
    assert [t["decision"] == NOT_ASSESSABLE for t in body["tiles"]] == [False, False, False,
                                                                        True], body["tiles"]
    assert "unusual_stain" in body["tiles"][3]["reasons"]
    checked = body["summary"]["assessable"]
    assert (checked["tiles"], checked["share"], checked["decision"]) == (3, 0.75, "assessable")
    assert checked["by_reason"] == {"unusual_stain": 1} and checked["warnings"] == []
    assert body["summary"]["fraction_positive"] is not None
    assert body["threshold_scale"] == meta.threshold_scale

    restained = Image.new("RGB", (4 * side, side))
    for i, img in enumerate(tiles):
        restained.paste(hue_rotated(img), (i * side, 0))
    body = client.post(f"/predict/region?mpp={mpp}", data=png(restained),
                       content_type="image/png").get_json()
    summary = body["summary"]
    assert summary["fraction_positive"] is None, summary  # never "0 % SSA"
    assert summary["assessable"]["decision"] == NOT_ASSESSABLE
    assert summary["assessable"]["share"] == 0.0
    assert "unusual_stain" in {w["code"] for w in summary["assessable"]["warnings"]}


def test_a_slide_in_the_wrong_stain_is_not_reported_as_no_ssa(
        model_int8_path: Path, tmp_path: Path) -> None:
    """The whole slide re-stained (IHC): every tile turned away, the slide's own stain check
    fails, no positive share; the CSV and the summary say so."""
    pytest.importorskip("openslide")
    from services.slides.run import Options, analyse_slide
    from tests.support.slides import SLIDE_LAYOUT, tissue_canvas, write_pyramid

    canvas, _ = tissue_canvas(SLIDE_LAYOUT, 64)
    stained = np.asarray(immunostained(Image.fromarray(canvas)))
    model = InferenceModel(model_int8_path)
    canvas_mpp = model.metadata.mpp * model.metadata.preprocessing.resize_size / 64
    slide = write_pyramid(tmp_path / "ihc.tif", stained, canvas_mpp, canvas_mpp / 4)
    (tmp_path / "out").mkdir()
    summary = analyse_slide(slide, model, Options(progress=False), tmp_path / "out")
    checked = summary["assessable"]
    print(json.dumps(checked))
    assert summary["fraction_positive"] is None
    assert checked["decision"] == NOT_ASSESSABLE and checked["share"] < 0.2
    assert "unusual_stain" in {w["code"] for w in checked["warnings"]}
    rows = (tmp_path / "out" / "ihc.tiles.csv").read_text().splitlines()
    assert rows[0].endswith("label,decision,reasons")
    assert sum(NOT_ASSESSABLE in row for row in rows[1:]) >= 0.8 * (len(rows) - 1)
