"""Export: parity gate, INT8 size and accuracy gate, metadata round trip, MLflow registration.

The `exported` fixture ran the real `export/to_onnx.py` on a model registered by the real
training script; these tests check what it produced, then break things on purpose. Both gates
read the training run's validation split; the test partition is evaluated last, reported only.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from mlflow import MlflowClient
from PIL import Image

from export.convert import ExportError, export_fp32, read_metadata, write_metadata
from export.evaluate import accuracy_gate, check_parity, load_batch, skill_gate
from export.splits import training_splits
from services.core.model import InferenceModel
from services.core.preprocessing import PreprocessSpec
from tests.conftest import REPO_ROOT
from training.checkpoint import load_checkpoint, save_checkpoint
from training.data import Record, load_annotations

pytestmark = pytest.mark.slow


def test_report_records_both_gates(exported: dict) -> None:
    report = json.loads(exported["report"].read_text())
    assert report["parity"]["passed"] is True
    assert report["parity"]["max_abs_diff"] <= 1e-4
    assert report["parity"]["images"] > 0
    comparison = report["int8"]["comparison"]
    assert comparison["images"] > 0
    gate = report["int8"]["gate"]
    # The gate's verdict follows its own numbers (one image of accuracy is always allowed).
    within = (comparison["top1_agreement"] >= gate["min_top1_agreement"]
              and comparison["accuracy_drop_pp"] <= max(gate["max_accuracy_drop_pp"],
                                                        100 / comparison["images"] + 1e-9))
    assert gate["passed"] is within and gate["overridden"] is not within
    # The fixture model learnt: it clears the absolute floor on every validation image.
    skill = report["skill"]
    assert skill["passed"] is True and skill["overridden"] is False, skill
    assert skill["images"] == report["splits"]["validation"]["images"]
    assert skill["roc_auc"] > skill["bounds"]["roc_auc"] > 0.5
    assert report["allow_degraded"] is True  # the fixture passes it (tests/conftest.py)
    assert set(report["files"]) == {"fp32", "int8"}
    assert report["int8"]["settings"]["format"] == "QDQ"
    # The default CPU class: 7-bit weights, right on every CPU (tests/test_cpu_class.py).
    assert report["int8"]["settings"]["reduce_range"] is True
    assert report["int8"]["settings"]["cpu_class"] == "portable"
    assert report["int8"]["comparison"]["kernels"]["where"] == "native"
    assert report["synthetic_data"] is True
    assert report["opset"] >= 17


def test_gates_read_the_training_validation_split_and_test_is_reported_only(
    exported: dict, sample_dir: Path
) -> None:
    report = json.loads(exported["report"].read_text())
    _, card = load_checkpoint(exported["checkpoint"])
    splits = training_splits(load_annotations(sample_dir), card)
    validation = report["splits"]["validation"]
    assert validation["sha256"] == card["config"]["extra"]["val_split_sha256"]
    assert validation["matches_training"] is True
    assert (validation["partition"], validation["images"]) == ("train", len(splits.validation))
    assert (validation["seed"], validation["val_fraction"]) == (
        card["config"]["seed"], card["config"]["val_fraction"])
    assert report["parity"]["split"] == "validation"
    assert report["parity"]["images"] == min(32, len(splits.validation))
    assert report["int8"]["gate"]["split"] == report["int8"]["comparison"]["split"] == "validation"
    assert report["int8"]["comparison"]["images"] == len(splits.validation)
    assert report["int8"]["calibration_split"] == "fit"
    assert report["splits"]["fit"]["images"] == len(splits.calibration)
    final = report["test_evaluation"]
    assert (final["split"], final["gates"], final["images"]) == ("test", False, len(splits.test))
    assert {"accuracy", "roc_auc"} <= set(final["fp32"]) & set(final["int8"])


def test_int8_is_under_30_percent_of_fp32(exported: dict) -> None:
    fp32, int8 = exported["fp32"].stat().st_size, exported["int8"].stat().st_size
    assert int8 < 0.30 * fp32, (int8, fp32)


def test_fp32_is_one_self_contained_checked_file(exported: dict) -> None:
    assert not list(exported["dir"].glob("*.data"))
    proto = onnx.load(str(exported["fp32"]), load_external_data=False)
    onnx.checker.check_model(proto, full_check=True)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param, "batch axis must be dynamic"


def test_metadata_round_trips_from_the_training_card(exported: dict) -> None:
    _, card = load_checkpoint(exported["checkpoint"])
    for precision, path in (("fp32", exported["fp32"]), ("int8", exported["int8"])):
        meta = read_metadata(path)
        assert meta.precision == precision
        assert meta.classes == tuple(card["classes"]) == ("HP", "SSA")
        assert meta.positive_class == "SSA"
        assert meta.threshold == pytest.approx(card["threshold"])
        assert meta.preprocessing == PreprocessSpec.from_dict(card["preprocessing"])
        assert meta.name == "mhist-resnet18"
        assert meta.version == "1"
        assert meta.provenance["mlflow_run_id"] == card["mlflow"]["run_id"]
        assert meta.provenance["synthetic_data"] is True
        assert meta.metrics["test"] == card["metrics"]["test"]
        # What serving sees is what export wrote.
        assert InferenceModel(path).metadata == meta
    assert read_metadata(exported["int8"]).quantization["per_channel"] is True


def test_metrics_by_annotator_agreement_for_both_precisions_and_splits(
    exported: dict, sample_dir: Path
) -> None:
    """Validation (the gates' split) and test (reported only), FP32 and INT8, from the votes."""
    report = json.loads(exported["report"].read_text())
    votes = {r.name: r.votes for r in load_annotations(sample_dir)}
    _, card = load_checkpoint(exported["checkpoint"])
    splits = training_splits(load_annotations(sample_dir), card)
    run = MlflowClient(tracking_uri=exported["tracking_uri"]).get_run(report["mlflow"]["run_id"])
    for comparison, records, prefix in ((report["int8"]["comparison"], splits.validation, ""),
                                        (report["test_evaluation"], splits.test, "test_")):
        for precision in ("fp32", "int8"):
            agreement = comparison["agreement"][precision]
            by_votes = {int(k): e["n"] for k, e in agreement["by_votes"].items()}
            assert by_votes == {v: sum(votes[r.name] == v for r in records) for v in range(8)}
            assert agreement["threshold"] == card["threshold"]
            split = agreement["groups"]["split"]
            assert run.data.metrics[f"{prefix}{precision}_split_accuracy"] == split["accuracy"]


def test_both_files_registered_as_onnx_model(exported: dict) -> None:
    client = MlflowClient(tracking_uri=exported["tracking_uri"])
    versions = client.search_model_versions("name='mhist-resnet18-onnx'")
    by_precision = {v.tags["precision"]: v for v in versions}
    assert set(by_precision) == {"fp32", "int8"}
    report = json.loads(exported["report"].read_text())
    for precision, version in by_precision.items():
        assert version.tags["sha256"] == report["files"][precision]["sha256"]
        assert version.tags["source_run_id"] == report["source"]["run_id"]


def test_tampered_graph_fails_the_parity_gate(
    exported: dict, sample_dir: Path, tmp_path: Path
) -> None:
    model, card = load_checkpoint(exported["checkpoint"])
    spec = PreprocessSpec.from_dict(card["preprocessing"])
    path = tmp_path / "tampered.onnx"
    export_fp32(model, spec.size, path)
    write_metadata(path, read_metadata(exported["fp32"]))
    proto = onnx.load(str(path))
    bias = next(t for t in proto.graph.initializer if tuple(t.dims) == (2,))  # fc bias
    values = onnx.numpy_helper.to_array(bias).copy()
    values[1] += 0.5  # shift the SSA logit: small, but far beyond 1e-4 in probability
    bias.CopyFrom(onnx.numpy_helper.from_array(values, bias.name))
    onnx.save(proto, str(path))
    images = sorted((sample_dir / "images").glob("*.png"))[:8]
    with pytest.raises(ExportError, match="parity gate failed"):
        check_parity(model, InferenceModel(path), load_batch(images, spec), tolerance=1e-4)
    # The untampered export of the same model passes the same check.
    result = check_parity(model, InferenceModel(exported["fp32"]), load_batch(images, spec), 1e-4)
    assert result.passed and result.max_abs_diff < 1e-4


def _export_cli(checkpoint: Path, data_dir: Path, out: Path, *extra: str):
    return subprocess.run(
        [
            sys.executable,
            "export/to_onnx.py",
            "--checkpoint",
            str(checkpoint),
            "--data-dir",
            str(data_dir),
            "--out",
            str(out),
            "--no-mlflow",
            "--parity-images",
            "4",
            "--calibration-size",
            "4",
            "--eval-limit",
            "12",
            *extra,
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _blackened_copy(sample_dir: Path, dest: Path, records: Iterable[Record]) -> Path:
    """A copy of the sample in which the images of `records` are black, same size and names:
    annotations.csv is untouched, so the training run's split re-derives unchanged."""
    shutil.copytree(sample_dir, dest)
    for record in records:
        path = dest / "images" / record.name
        with Image.open(path) as img:
            size = img.size
        Image.new("RGB", size).save(path)
    return dest


def test_int8_calibrated_on_black_images_fails_the_gate(
    exported: dict, sample_dir: Path, tmp_path: Path
) -> None:
    """A genuinely bad INT8 file, caught at the default limit. Black calibration images give
    the input quantizer a range of [-2.1, 0] after normalisation, so every pixel brighter than
    black is clipped to 0 and INT8 stops seeing the tissue. (White blank images do not show it
    on the fixture model: its input range keeps all of bright H&E and the labels survive.)"""
    _, card = load_checkpoint(exported["checkpoint"])
    splits = training_splits(load_annotations(sample_dir), card)
    data = _blackened_copy(sample_dir, tmp_path / "data", splits.calibration)
    out = tmp_path / "out"
    result = _export_cli(exported["checkpoint"], data, out, "--eval-limit", "0")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "INT8 accuracy gate failed" in result.stderr
    assert f"on {len(splits.validation)} validation images" in result.stderr
    assert "the limit is 1 pp" in result.stderr or "the minimum is 0.95" in result.stderr
    assert "No gate reads the test partition" in result.stderr
    assert not (out / "model.int8.onnx").exists(), "a file that failed its gate is removed"
    report = json.loads((out / "export_report.json").read_text())
    gate, comparison = report["int8"]["gate"], report["int8"]["comparison"]
    assert gate == {"split": "validation", "max_accuracy_drop_pp": 1.0,
                    "min_top1_agreement": 0.95, "passed": False}
    one_image_pp = 100.0 / comparison["images"]
    assert comparison["accuracy_drop_pp"] > max(1.0, one_image_pp) \
        or comparison["top1_agreement"] < 0.95
    assert report["parity"]["passed"] is True  # FP32 is fine; only INT8 is broken
    assert "test_evaluation" not in report, "the test partition is read only after the gates"


def test_gates_do_not_read_the_test_partition(
    exported: dict, sample_dir: Path, tmp_path: Path
) -> None:
    """Black out every test image: both gates give the numbers of the fixture's export (same
    model, same flags) to the last digit; only the final evaluation changes."""
    test = [r for r in load_annotations(sample_dir) if r.partition == "test"]
    data = _blackened_copy(sample_dir, tmp_path / "data", test)
    out = tmp_path / "out"
    result = _export_cli(
        exported["checkpoint"], data, out, "--calibration-size", "16", "--eval-limit", "0",
        "--parity-images", "32", "--allow-degraded",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    ours = json.loads((out / "export_report.json").read_text())
    fixture = json.loads(exported["report"].read_text())
    assert ours["splits"]["validation"] == fixture["splits"]["validation"]
    assert ours["parity"] == fixture["parity"]
    assert ours["int8"]["comparison"] == fixture["int8"]["comparison"]
    assert ours["int8"]["gate"] == fixture["int8"]["gate"]
    assert ours["test_evaluation"] != fixture["test_evaluation"]


def test_another_data_folder_is_refused_not_gated_on(
    exported: dict, sample_dir: Path, tmp_path: Path
) -> None:
    """Drop one train row: the seeded split re-derived from it is no longer training's."""
    data = tmp_path / "data"
    shutil.copytree(sample_dir, data)
    lines = (data / "annotations.csv").read_text().splitlines()
    first_train = next(i for i, line in enumerate(lines) if line.endswith(",train"))
    del lines[first_train]
    (data / "annotations.csv").write_text("\n".join(lines) + "\n")
    result = _export_cli(exported["checkpoint"], data, tmp_path / "out")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "is not the one training held out" in result.stderr
    assert "--data-dir must be the folder the model was trained on" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out" / "model.onnx").exists()


def test_accuracy_gate_failure_path_when_forced(
    exported: dict, sample_dir: Path, tmp_path: Path
) -> None:
    # The CLI's failure path (exit 1, file removed, report kept) with an impossible allowance;
    # test_int8_calibrated_on_black_images_fails_the_gate shows a real failure.
    result = _export_cli(
        exported["checkpoint"], sample_dir, tmp_path, "--max-accuracy-drop", "-100"
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "INT8 accuracy gate failed" in result.stderr
    assert "--allow-degraded" in result.stderr
    assert (tmp_path / "model.onnx").is_file()
    assert not (tmp_path / "model.int8.onnx").exists(), "a file that failed its gate is removed"
    report = json.loads((tmp_path / "export_report.json").read_text())
    assert report["int8"]["gate"]["passed"] is False
    assert "test_evaluation" not in report


def test_bad_data_folder_is_a_clear_cli_error(exported: dict, tmp_path: Path) -> None:
    result = _export_cli(exported["checkpoint"], tmp_path / "nowhere", tmp_path / "out")
    assert result.returncode == 1
    assert result.stderr.startswith("export failed:")
    assert "nowhere" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_registered_model_is_a_clear_cli_error(tmp_path: Path, sample_dir: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "export/to_onnx.py",
            "--data-dir",
            str(sample_dir),
            "--tracking-uri",
            f"sqlite:///{tmp_path / 'empty.db'}",
            "--out",
            str(tmp_path),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1
    assert "no registered model 'mhist-resnet18'" in result.stderr
    assert "Traceback" not in result.stderr


def test_calibration_reader_feeds_the_serving_preprocessing(sample_dir: Path) -> None:
    from export.quantize import ImageCalibrationReader, pick_calibration_images
    from services.core.preprocessing import preprocess_bytes

    paths = sorted((sample_dir / "images").glob("*.png"))
    picked = pick_calibration_images(paths, 5, seed=3)
    assert picked == pick_calibration_images(list(reversed(paths)), 5, seed=3)  # order-proof
    spec = PreprocessSpec(size=64, resize_size=64)
    reader = ImageCalibrationReader(picked, spec, "input")
    first = reader.get_next()["input"]
    assert first.shape == (1, 3, 64, 64) and first.dtype == np.float32
    np.testing.assert_array_equal(first[0], preprocess_bytes(picked[0].read_bytes(), spec))
    fed = 1 + sum(1 for _ in iter(reader.get_next, None))
    assert fed == 5


def _comparison(images: int, fp32_right: int, int8_right: int, agreement: float) -> dict:
    return {"split": "validation", "images": images, "top1_agreement": agreement,
            "fp32": {"accuracy": fp32_right / images}, "int8": {"accuracy": int8_right / images},
            "accuracy_drop_pp": 100.0 * (fp32_right - int8_right) / images}


@pytest.mark.parametrize(
    ("comparison", "fails_on"),
    [
        (_comparison(56, 48, 47, 55 / 56), None),  # one image (1.79 pp) is noise, not a failure
        (_comparison(56, 48, 46, 54 / 56), "accuracy fell by 3.57"),  # two images fail at 1 pp
        (_comparison(400, 300, 297, 397 / 400), None),  # 0.75 pp: inside the limit
        (_comparison(400, 300, 294, 394 / 400), "accuracy fell by 1.50"),
        (_comparison(56, 48, 48, 50 / 56), "FP32's label on 0.893"),  # flips cancel out
    ],
)
def test_accuracy_gate_judges_images_not_noise(comparison: dict, fails_on: str | None) -> None:
    if fails_on is None:
        assert accuracy_gate(comparison, 1.0, allow_degraded=False, min_agreement=0.95) is None
        return
    with pytest.raises(ExportError, match="INT8 accuracy gate failed") as caught:
        accuracy_gate(comparison, 1.0, allow_degraded=False, min_agreement=0.95)
    assert fails_on in str(caught.value)
    warning = accuracy_gate(comparison, 1.0, allow_degraded=True, min_agreement=0.95)
    assert warning == str(caught.value)


def test_a_negative_limit_has_no_one_image_allowance() -> None:
    with pytest.raises(ExportError, match="limit is -100 pp"):
        accuracy_gate(_comparison(56, 48, 48, 1.0), -100.0, allow_degraded=False)


# --- the skill gate: an absolute floor under the relative gates --------------------------------

def _degenerate_checkpoint(checkpoint: Path, dest: Path) -> Path:
    """The fixture's model with its classifier zeroed: every image gets the same probability.
    Parity with PyTorch is exact and INT8 agrees with FP32 on every image, so only an absolute
    floor can refuse it."""
    model, card = load_checkpoint(checkpoint)
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.copy_(torch.tensor([0.0, 1.0]))
    return save_checkpoint(dest, model, card)


def test_skill_gate_refuses_a_constant_model() -> None:
    labels = np.array([0] * 20 + [1] * 10)
    constant = np.full(30, 0.7)
    with pytest.raises(ExportError) as failure:
        skill_gate(labels, constant, 0.5, 1.645, allow_degraded=False)
    message = str(failure.value)
    assert "roc_auc 0.500 is not above" in message
    assert "balanced_accuracy 0.500 is not above" in message
    assert "every validation image gets the same label" in message
    entry = skill_gate(labels, constant, 0.5, 1.645, allow_degraded=True)
    assert (entry["passed"], entry["overridden"]) == (False, True)
    assert "--allow-degraded" in entry["message"]


def test_skill_gate_margin_follows_the_split_size() -> None:
    """AUC 0.8 on 10 positive and 20 negative images clears the 5 % bound (0.68); the same
    ranking on 3 and 3 images does not (0.5 + 1.645 × 0.24 = 0.90)."""
    rng = np.random.default_rng(0)
    labels = np.array([0] * 20 + [1] * 10)
    scores = np.where(labels == 1, rng.normal(1.2, 1, 30), rng.normal(0, 1, 30))
    probabilities = 1 / (1 + np.exp(-scores))
    entry = skill_gate(labels, probabilities, 0.5, 1.645, allow_degraded=False)
    assert entry["passed"] and entry["roc_auc"] > entry["bounds"]["roc_auc"]
    tiny = skill_gate(np.array([0, 0, 0, 1, 1, 1]), np.array([0.2, 0.6, 0.3, 0.7, 0.4, 0.8]),
                      0.5, 1.645, allow_degraded=True)
    assert tiny["roc_auc"] > 0.75 and not tiny["passed"]


def test_a_degenerate_model_fails_export_unless_allowed(
    exported: dict, sample_dir: Path, tmp_path: Path
) -> None:
    checkpoint = _degenerate_checkpoint(exported["checkpoint"], tmp_path / "constant.pt")
    refused = _export_cli(checkpoint, sample_dir, tmp_path / "refused")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "skill gate failed" in refused.stderr and "--allow-degraded" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert not (tmp_path / "refused" / "model.onnx").exists()
    assert not (tmp_path / "refused" / "model.int8.onnx").exists()

    allowed = _export_cli(checkpoint, sample_dir, tmp_path / "allowed", "--allow-degraded")
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    assert "OVERRIDDEN by --allow-degraded" in allowed.stdout
    report = json.loads((tmp_path / "allowed" / "export_report.json").read_text())
    assert report["allow_degraded"] is True
    assert (report["skill"]["passed"], report["skill"]["overridden"]) == (False, True)
    assert report["parity"]["passed"] is True  # the relative gates were blind to it
