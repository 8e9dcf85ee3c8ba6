"""Calibrated probabilities and the "uncertain" answer (export/calibration.py, services core).

The numeric parts are checked on seeded synthetic logits whose true probabilities are known;
the export and serving parts on the files the real pipeline writes (tests/conftest.py), with
copies whose `mhist.*` metadata is rewritten where a test needs a value export would not pick.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from mlflow import MlflowClient

from export.calibration import (
    BandTarget,
    band_outcome,
    calibration_metrics,
    choose_band,
    coverage_curve,
    expected_calibration_error,
    fit_temperature,
    nll,
)
from export.convert import ExportError, read_metadata, write_metadata
from export.splits import training_splits
from services.core.errors import ModelLoadError
from services.core.metadata import calibrated_threshold
from services.core.model import InferenceModel, softmax
from tests.conftest import REPO_ROOT
from training.checkpoint import load_checkpoint
from training.data import load_annotations

# --- builders ---------------------------------------------------------------------------------


def overconfident(n: int = 4000, scale: float = 3.0, seed: int = 0):
    """Two-class logits `scale` times too large for their true probabilities, and labels drawn
    from those probabilities: the temperature that calibrates them is `scale`."""
    rng = np.random.default_rng(seed)
    margin = rng.normal(0.0, 2.0, n)  # true log-odds of class 1
    labels = (rng.random(n) < 1 / (1 + np.exp(-margin))).astype(np.int64)
    logits = np.stack([np.zeros(n), scale * margin], axis=1)  # (N, 2)
    return logits, labels


def with_props(src: Path, dest: Path, props: dict[str, str | None]) -> Path:
    """A copy of an ONNX file with some `mhist.*` props set (str) or removed (None), as a
    hand-edited or older file would carry them: no validation on the way in."""
    proto = onnx.load(str(src))
    kept = {p.key: p.value for p in proto.metadata_props}
    for key, value in props.items():
        if value is None:
            kept.pop(key, None)
        else:
            kept[key] = value
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, kept)
    onnx.save(proto, str(dest))
    return dest


def old_style(src: Path, dest: Path) -> Path:
    """The file as export wrote it before calibration existed."""
    return with_props(src, dest, {"mhist.calibration": None, "mhist.uncertain_band": None})


def with_temperature(src: Path, dest: Path, temperature: float, band: dict | None = None) -> Path:
    meta = read_metadata(old_style(src, dest))
    calibration = {"method": "temperature", "temperature": temperature, "fitted_on": "test",
                   "threshold": calibrated_threshold(meta.threshold, temperature)}
    write_metadata(dest, dataclasses.replace(meta, calibration=calibration,
                                             uncertain_band=band or {}))
    return dest


def sample_images(sample_dir: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted((sample_dir / "images").glob("*.png"))]


# --- temperature scaling on known logits ------------------------------------------------------

def test_temperature_recovers_the_overconfidence_and_lowers_ece() -> None:
    logits, labels = overconfident(scale=3.0)
    fit = fit_temperature(logits, labels)
    assert fit.temperature == pytest.approx(3.0, rel=0.15)
    assert fit.nll_after < fit.nll_before and not fit.at_bound
    before = calibration_metrics(logits, labels, positive=1)
    after = calibration_metrics(logits, labels, positive=1, temperature=fit.temperature)
    # 4000 draws from known probabilities: the overconfident ECE is far above sampling noise.
    assert before["ece"] > 0.08 and after["ece"] < 0.03
    assert after["brier"] < before["brier"]


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("scale", [0.3, 1.0, 3.0])
def test_the_fit_never_raises_the_nll_it_minimises(seed: int, scale: float) -> None:
    logits, labels = overconfident(n=60, scale=scale, seed=seed)  # small, noisy, like validation
    fit = fit_temperature(logits, labels)
    assert fit.nll_after <= fit.nll_before == pytest.approx(nll(logits, labels))
    assert fit.nll_after == pytest.approx(nll(logits, labels, fit.temperature))


def test_separable_validation_stops_at_the_bound_and_says_so() -> None:
    labels = np.array([0, 1] * 20)
    logits = np.stack([np.zeros(40), np.where(labels == 1, 5.0, -5.0)], axis=1)
    fit = fit_temperature(logits, labels)
    assert fit.at_bound and fit.temperature == pytest.approx(0.05, rel=1e-2)


def test_ece_of_a_perfectly_calibrated_constant_is_zero() -> None:
    y = np.array([1, 0, 0, 0] * 25)
    assert expected_calibration_error(y, np.full(100, 0.25)) == pytest.approx(0.0)
    assert expected_calibration_error(y, np.full(100, 0.75)) == pytest.approx(0.5)


@pytest.mark.parametrize("threshold", [0.5, 0.0312, 0.49999156960711844, 0.97])
@pytest.mark.parametrize("temperature", [0.05, 0.4, 1.0, 2.5, 20.0])
def test_the_threshold_maps_so_that_no_label_changes(threshold: float,
                                                     temperature: float) -> None:
    rng = np.random.default_rng(1)
    cut = math.log(threshold / (1 - threshold))
    margins = np.concatenate([rng.normal(cut, 3.0, 2000), cut + np.linspace(-1e-6, 1e-6, 201)])
    raw = 1 / (1 + np.exp(-margins))
    calibrated = 1 / (1 + np.exp(-margins / temperature))
    t_c = calibrated_threshold(threshold, temperature)
    same = (raw >= threshold) == (calibrated >= t_c)
    # In exact arithmetic nothing moves. In floats only a tie can: a margin within rounding of
    # the cut, or a calibrated P rounded onto the calibrated threshold (sigmoid saturates at a
    # small T). The serving core decides the label on the uncalibrated P for that reason.
    assert np.all(same | (np.abs(margins - cut) < 1e-12) | (calibrated == t_c))
    assert calibrated_threshold(threshold, 1.0) == pytest.approx(threshold, abs=1e-15)


# --- the uncertain band on known data ---------------------------------------------------------

def test_band_reaches_the_accuracy_target_with_the_widest_coverage() -> None:
    logits, labels = overconfident(n=600, scale=1.0, seed=3)
    p = softmax(logits)[:, 1]
    correct = (p >= 0.5) == (labels == 1)
    curve = coverage_curve(p, correct, 0.5)
    chosen = choose_band(curve, BandTarget(accuracy=0.9))
    outcome = band_outcome(p, correct, chosen["low"], chosen["high"])
    assert outcome["accuracy"] >= 0.9 > correct.mean()  # the band was needed, and it works
    assert outcome["coverage"] == pytest.approx(chosen["coverage"])
    assert chosen["low"] < 0.5 < chosen["high"]
    narrower = [r for r in curve if r["coverage"] > chosen["coverage"]]
    assert all(r["accuracy"] < 0.9 for r in narrower)


def test_band_for_a_coverage_answers_at_least_that_share() -> None:
    logits, labels = overconfident(n=500, scale=1.0, seed=4)
    p = softmax(logits)[:, 1]
    correct = (p >= 0.3) == (labels == 1)
    chosen = choose_band(coverage_curve(p, correct, 0.3), BandTarget(coverage=0.8))
    outcome = band_outcome(p, correct, chosen["low"], chosen["high"])
    assert 0.8 <= outcome["coverage"] < 0.8 + 2 / 500
    assert chosen["low"] < 0.3 < chosen["high"]


def test_an_unreachable_accuracy_is_an_export_error() -> None:
    p = np.array([0.1, 0.2, 0.8, 0.9])
    correct = np.array([False, False, False, False])
    with pytest.raises(ExportError, match=r"no uncertain band reaches accuracy 0\.99"):
        choose_band(coverage_curve(p, correct, 0.5), BandTarget(accuracy=0.99))


@pytest.mark.parametrize("kwargs", [{}, {"accuracy": 0.9, "coverage": 0.9}, {"coverage": 0.0},
                                    {"accuracy": 1.5}])
def test_a_band_needs_exactly_one_target_in_range(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="exactly one target"):
        BandTarget(**kwargs)


# --- the serving core -------------------------------------------------------------------------

@pytest.mark.parametrize("temperature", [0.3, 1.0, 3.7])
def test_served_probabilities_are_tempered_and_labels_unchanged(
    model_fp32_path: Path, sample_dir: Path, tmp_path: Path, temperature: float
) -> None:
    images = sample_images(sample_dir)
    plain = InferenceModel(old_style(model_fp32_path, tmp_path / "old.onnx"))
    tempered = InferenceModel(with_temperature(model_fp32_path, tmp_path / "t.onnx", temperature))
    before, after = plain.predict_many(images), tempered.predict_many(images)
    meta = tempered.metadata
    assert meta.served_threshold == pytest.approx(calibrated_threshold(meta.threshold,
                                                                       temperature))
    for old, new in zip(before, after, strict=True):
        assert new["label"] == old["label"]
        for answer in (old, new):  # an input the quality checks turn away is not assessable
            assert answer["decision"] == ("not_assessable" if answer.get("reasons")
                                          else answer["label"])
        p_old = old["probabilities"]["SSA"]
        margin = math.log(p_old) - math.log1p(-p_old)
        assert new["probabilities"]["SSA"] == pytest.approx(1 / (1 + math.exp(-margin /
                                                                               temperature)),
                                                            abs=1e-7)
        assert new["threshold"] == meta.served_threshold
        assert (new["probabilities"]["SSA"] >= new["threshold"]) == (new["label"] == "SSA")


def test_an_old_file_without_calibration_serves_as_before(
    model_int8_path: Path, tmp_path: Path
) -> None:
    model = InferenceModel(old_style(model_int8_path, tmp_path / "old.onnx"))
    meta = model.metadata
    assert (meta.calibration, meta.uncertain_band, meta.temperature) == ({}, {}, 1.0)
    assert meta.served_threshold == meta.threshold
    describe = model.describe()
    assert describe["calibration"] is None and describe["uncertain_band"] is None
    batch = np.stack([np.zeros((3, meta.preprocessing.size, meta.preprocessing.size),
                               np.float32)] * 2)
    (logits,) = model.session.run([meta.output_name], {meta.input_name: batch})
    for answer, row in zip(model.predict_array(batch), softmax(logits), strict=True):
        assert answer.probabilities == {c: float(p) for c, p in zip(meta.classes, row,
                                                                    strict=True)}
        assert answer.to_dict(meta)["decision"] == answer.label
        assert answer.to_dict(meta)["threshold"] == meta.threshold


def test_inside_the_band_the_decision_is_uncertain(
    model_int8_path: Path, sample_dir: Path, tmp_path: Path
) -> None:
    plain = InferenceModel(model_int8_path)
    images = sample_images(sample_dir)
    answers = plain.predict_many(images)
    cut = plain.metadata.served_threshold
    p = np.array([a["probabilities"]["SSA"] for a in answers])
    # A band holding about half the images, each side of the threshold.
    below, above = p[p < cut], p[p >= cut]
    low = float(np.median(below)) if below.size else cut
    high = float(np.median(above)) if above.size else cut
    band = {"low": low, "high": high, "chosen_on": "test"}
    meta = dataclasses.replace(plain.metadata, uncertain_band=band)
    path = tmp_path / "band.onnx"
    path.write_bytes(model_int8_path.read_bytes())
    write_metadata(path, meta)
    banded = InferenceModel(path).predict_many(images)
    assert any(a["decision"] == "uncertain" for a in banded)
    for old, new, prob in zip(answers, banded, p, strict=True):
        assert new["label"] == old["label"] and new["probabilities"] == old["probabilities"]
        assert new["decision"] == ("not_assessable" if new.get("reasons") else
                                   "uncertain" if low < prob < high else new["label"])


@pytest.mark.parametrize(
    ("props", "message"),
    [
        ({"mhist.calibration": '{"method": "platt", "temperature": 2}'},
         "mhist.calibration.method 'platt'"),
        ({"mhist.calibration": '{"method": "temperature", "temperature": 0}'},
         "mhist.calibration.temperature 0"),
        ({"mhist.calibration": '{"method": "temperature", "temperature": "2"}'},
         "mhist.calibration.temperature '2'"),
        ({"mhist.calibration": '{"method": "temperature", "temperature": 2, "threshold": 0.7}'},
         "mhist.calibration.threshold 0.7 is not mhist.threshold 0.5"),
        ({"mhist.calibration": '[2.0]'}, "mhist.calibration is list"),
        ({"mhist.uncertain_band": '{"low": 0.9, "high": 1.0}'}, "mhist.uncertain_band low 0.9"),
        ({"mhist.uncertain_band": '{"low": 0.1}'}, "mhist.uncertain_band low 0.1 and high None"),
    ],
)
def test_bad_calibration_metadata_is_a_load_error_naming_the_key(
    model_int8_path: Path, tmp_path: Path, props: dict, message: str
) -> None:
    base = old_style(model_int8_path, tmp_path / "base.onnx")
    # A threshold of 0.5 keeps the expected messages independent of the trained threshold.
    path = with_props(base, tmp_path / "bad.onnx", {"mhist.threshold": "0.5", **props})
    with pytest.raises(ModelLoadError, match=re.escape(message)):
        InferenceModel(path)


# --- what export wrote ------------------------------------------------------------------------

def test_export_fits_on_validation_and_reports_test_per_precision(exported: dict,
                                                                  sample_dir: Path) -> None:
    report = json.loads(exported["report"].read_text())
    section = report["calibration"]
    _, card = load_checkpoint(exported["checkpoint"])
    splits = training_splits(load_annotations(sample_dir), card)
    assert (section["method"], section["fitted_on"], section["ece_bins"]) == (
        "temperature", "validation", 15)
    for precision in ("fp32", "int8"):
        part = section[precision]
        meta = read_metadata(exported[precision])
        assert meta.calibration["temperature"] == part["temperature"] > 0
        assert meta.calibration["fitted_on"] == "validation"
        assert meta.calibration["images"] == len(splits.validation)
        assert meta.served_threshold == pytest.approx(
            calibrated_threshold(meta.threshold, part["temperature"]))
        val, test = part["validation"], part["test"]
        assert val["before"]["images"] == len(splits.validation)
        assert test["before"]["images"] == len(splits.test)
        # What the fit minimises, on the split it was fitted on: never worse than T = 1.
        assert val["after"]["nll"] <= val["before"]["nll"] + 1e-12
        for split in (val, test):
            assert {"ece", "brier", "nll"} <= set(split["before"]) & set(split["after"])
            assert Path(split["reliability_png"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "after_with_fp32_temperature" in section["int8"]["validation"]


def test_export_logs_calibration_to_mlflow(exported: dict) -> None:
    client = MlflowClient(tracking_uri=exported["tracking_uri"])
    run_id = json.loads(exported["report"].read_text())["mlflow"]["run_id"]
    metrics = client.get_run(run_id).data.metrics
    for precision in ("fp32", "int8"):
        assert metrics[f"cal_{precision}_temperature"] > 0
        for split in ("validation", "test"):
            for key in ("ece", "brier", "nll"):
                assert f"cal_{split}_{precision}_{key}_before" in metrics
                assert f"cal_{split}_{precision}_{key}_after" in metrics
    logged = {a.path for a in client.list_artifacts(run_id, "calibration")}
    assert "calibration/reliability_fp32_validation.png" in logged
    assert "calibration/reliability_int8_test.png" in logged


@pytest.fixture(scope="module")
def banded_export(exported: dict, sample_dir: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("banded")
    result = subprocess.run(
        [sys.executable, "export/to_onnx.py", "--checkpoint", str(exported["checkpoint"]),
         "--data-dir", str(sample_dir), "--out", str(out), "--no-mlflow", "--parity-images", "4",
         "--calibration-size", "4", "--eval-limit", "12", "--allow-degraded",
         "--uncertain-coverage", "0.75"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "uncertain band FP32" in result.stdout and "calibration INT8: T = " in result.stdout
    return out


def test_band_chosen_on_validation_is_what_serving_applies(
    banded_export: Path, exported: dict, sample_dir: Path
) -> None:
    report = json.loads((banded_export / "export_report.json").read_text())
    _, card = load_checkpoint(exported["checkpoint"])
    splits = training_splits(load_annotations(sample_dir), card)
    for precision, name in (("fp32", "model.onnx"), ("int8", "model.int8.onnx")):
        model = InferenceModel(banded_export / name)
        band = model.metadata.uncertain_band
        part = report["calibration"][precision]
        assert band["target"] == {"coverage": 0.75} and band["chosen_on"] == "validation"
        assert band["low"] <= model.metadata.served_threshold <= band["high"]
        assert band["validation"]["coverage"] >= 0.75
        # The serving core, on the validation images, answers exactly the reported share.
        answers = model.predict_many([r.path.read_bytes() for r in splits.validation])
        answered = [a["decision"] != "uncertain" for a in answers]
        assert np.mean(answered) == pytest.approx(band["validation"]["coverage"])
        assert part["test"]["band"]["images"] == len(splits.test)  # reported beside it
        assert 0.0 <= part["test"]["band"]["coverage"] <= 1.0
        assert (banded_export / "calibration" / f"coverage_{precision}.csv").is_file()
        assert (banded_export / "calibration" / f"coverage_{precision}.png").is_file()
        assert model.describe()["uncertain_band"] == band


def test_a_bad_band_target_fails_before_any_work(exported: dict, sample_dir: Path,
                                                 tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "export/to_onnx.py", "--checkpoint", str(exported["checkpoint"]),
         "--data-dir", str(sample_dir), "--out", str(tmp_path), "--no-mlflow",
         "--uncertain-target-accuracy", "1.5"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "exactly one target" in result.stderr and not list(tmp_path.iterdir())


def test_the_command_line_rounds_for_people_and_keeps_json_exact(
    model_int8_path: Path, sample_image_path: Path
) -> None:
    def run(*extra: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "services.predict", "--model", str(model_int8_path), *extra,
             str(sample_image_path)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    exact = json.loads(run())
    assert exact["threshold"] == InferenceModel(model_int8_path).metadata.served_threshold
    text = run("--format", "text")
    assert re.fullmatch(rf"{sample_image_path.name}: (HP|SSA|uncertain) \(label (HP|SSA)\); "
                        r"P\(HP\) \d{1,3}\.\d %, P\(SSA\) \d{1,3}\.\d %; threshold [01]\.\d{3} "
                        r"\((calibrated|raw)\)",
                        text), text
    assert f"P(SSA) {100 * exact['probabilities']['SSA']:.1f} %" in text
