"""Training end to end on the synthetic sample: the MLflow run, the registry, the checkpoint,
and that the model actually learns.

One real run (module fixture) through train.main(): 400 images, 6 epochs from scratch at 64 px.
PyTorch's CPU kernels differ between CPUs (AVX2 against AVX-512 VNNI), so a tiny run lands on a
different model on each. With 300 images and 2 epochs the test AUC was 0.72 on one and 0.82 on
the other, and balanced accuracy 0.64 against 0.7+: a knife edge. 400 images for 6 epochs gave
validation AUC 0.88, test AUC 0.89 and balanced accuracy 0.83 on an AVX-512 VNNI machine; the
assertions ask for "well above chance", with a margin computed from each split's class counts.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import runpy
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from PIL import Image

from services.core.preprocessing import PreprocessSpec, preprocess
from training.checkpoint import load_checkpoint, load_from_mlflow, save_checkpoint
from training.data import MHISTDataset, load_annotations, split_sha256, split_train_val
from training.metrics import agreement_metrics, chance_bounds, class_counts, roc_auc
from training.model import WeightsError, build_model
from training.sample_data import generate
from training.train import (
    build_criterion,
    build_data,
    build_optimizer,
    build_scheduler,
    get_args_parser,
    main,
    seed_everything,
    train_one_epoch,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
IMAGE_SIZE = 64
EPOCHS = 6
COUNT = 400
MODEL_NAME = "mhist-resnet18-test"
CHANCE_SIGMAS = 3.0  # "well above chance": three standard errors of a chance-level model
MLFLOW_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME",
              "MLFLOW_RUN_ID")


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 128 px files keep decoding cheap; the network sees 64 px either way.
    out = tmp_path_factory.mktemp("train-sample")
    generate(out, count=COUNT, size=128, seed=0)
    return out


@contextlib.contextmanager
def mlflow_state_restored():
    """mlflow.set_tracking_uri / set_experiment also write MLFLOW_* into os.environ, which every
    later subprocess of this pytest session would inherit: put both back afterwards."""
    import mlflow
    from mlflow.tracking import fluent

    saved = {key: os.environ.get(key) for key in MLFLOW_ENV}
    try:
        yield
    finally:
        mlflow.set_tracking_uri(None)
        fluent._active_experiment_id = None
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def trained(sample: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    work = tmp_path_factory.mktemp("train-run")
    args = get_args_parser().parse_args([
        "--data-dir", str(sample), "--epochs", str(EPOCHS), "--weights", "none",
        "--image-size", str(IMAGE_SIZE), "--batch-size", "16", "--workers", "0",
        "--tracking-uri", f"sqlite:///{work / 'mlflow.db'}", "--experiment", "test-training",
        "--registered-model", MODEL_NAME, "--out", str(work / "ckpt"), "--run-name", "pytest",
    ])
    stdout = io.StringIO()
    env_before = {key: os.environ.get(key) for key in MLFLOW_ENV}
    start = time.perf_counter()
    # Run from a folder of its own to show artifacts land beside the database, not in ./mlruns.
    elsewhere = tmp_path_factory.mktemp("cwd")
    with (pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(stdout),
          mlflow_state_restored()):
        mp.chdir(elsewhere)
        summary = main(args)
    assert not (elsewhere / "mlruns").exists()
    seconds = time.perf_counter() - start
    print(f"\ntraining run: {seconds:.1f} s, val AUC {summary['card']['metrics']['val']['roc_auc']}"
          f", test AUC {summary['card']['metrics']['test']['roc_auc']}")
    return {**summary, "stdout": stdout.getvalue(), "work": work, "seconds": seconds,
            "env_before": env_before,
            "client": MlflowClient(tracking_uri=f"sqlite:///{work / 'mlflow.db'}")}


@pytest.mark.slow
def test_run_logs_params_once(trained: dict) -> None:
    run = trained["client"].get_run(trained["run_id"])
    params = run.data.params
    expected = {"epochs": str(EPOCHS), "weights": "none", "image_size": "64", "batch_size": "16",
                "imbalance": "weighted-loss", "threshold_rule": "youden", "seed": "0",
                "soft_labels": "False",
                "registered_model": MODEL_NAME, "lr": "0.001", "extra_device": "cpu",
                "extra_amp_in_effect": "False"}
    assert {k: params.get(k) for k in expected} == expected
    assert int(params["n_train"]) + int(params["n_val"]) == round(COUNT * 2175 / 3152)
    assert run.info.status == "FINISHED"
    assert run.data.tags["synthetic"] == "true"


@pytest.mark.slow
def test_run_logs_metrics_per_epoch(trained: dict) -> None:
    client = trained["client"]
    for key in ("train_loss", "train_roc_auc", "val_loss", "val_roc_auc", "val_accuracy",
                "val_sensitivity", "val_specificity", "val_precision", "val_f1",
                "val_balanced_accuracy", "lr"):
        history = client.get_metric_history(trained["run_id"], key)
        assert sorted(m.step for m in history) == list(range(1, EPOCHS + 1)), key
    final = client.get_run(trained["run_id"]).data.metrics
    card = trained["card"]
    assert final["test_roc_auc"] == pytest.approx(card["metrics"]["test"]["roc_auc"])
    at_half = card["metrics"]["test_at_0.5"]
    assert final["test_at_0.5_accuracy"] == pytest.approx(at_half["accuracy"])


@pytest.mark.slow
def test_run_holds_plots_json_and_card(trained: dict, tmp_path: Path) -> None:
    client = trained["client"]
    run = client.get_run(trained["run_id"])
    assert run.info.artifact_uri.startswith((trained["work"] / "mlruns").as_uri())
    root = {a.path for a in client.list_artifacts(trained["run_id"])}
    assert {"model_card.json", "metrics.json", "class_counts.json", "predictions.csv",
            "plots"} <= root
    plots = {a.path for a in client.list_artifacts(trained["run_id"], "plots")}
    assert plots == {f"plots/{split}_{kind}.png" for split in ("val", "test")
                     for kind in ("confusion_matrix", "roc")}
    local = Path(client.download_artifacts(trained["run_id"], "", str(tmp_path)))
    for png in (local / "plots").iterdir():
        with Image.open(png) as img:
            assert img.format == "PNG"
    card = json.loads((local / "model_card.json").read_text())
    assert card == trained["card"]
    metrics = json.loads((local / "metrics.json").read_text())
    assert metrics == card["metrics"]
    counts = json.loads((local / "class_counts.json").read_text())
    assert counts["partitions"] == json.loads((Path(card["dataset"]["path"]) /
                                               "synthetic.json").read_text())["counts"]


@pytest.mark.slow
def test_validation_split_is_stored_with_the_model(
    trained: dict, sample: Path, tmp_path: Path
) -> None:
    """Seed, fraction and fingerprint in the card and the run's params re-derive the exact split
    training validated on (the val rows of predictions.csv), as export needs for its gates."""
    config = trained["card"]["config"]
    _, ckpt_card = load_checkpoint(trained["checkpoint"])
    assert ckpt_card["config"] == config
    params = trained["client"].get_run(trained["run_id"]).data.params
    assert params["extra_val_split_sha256"] == config["extra"]["val_split_sha256"]
    assert (params["seed"], params["val_fraction"]) == (str(config["seed"]),
                                                        str(config["val_fraction"]))
    _, val = split_train_val(load_annotations(sample), config["val_fraction"], config["seed"])
    assert split_sha256(val) == config["extra"]["val_split_sha256"]
    rows = Path(trained["client"].download_artifacts(
        trained["run_id"], "predictions.csv", str(tmp_path))).read_text().splitlines()[1:]
    validated = {row.split(",")[0] for row in rows if row.split(",")[1] == "val"}
    assert validated == {r.name for r in val}


@pytest.mark.slow
def test_run_records_the_dataset_input(trained: dict) -> None:
    run = trained["client"].get_run(trained["run_id"])
    inputs = run.inputs.dataset_inputs
    assert len(inputs) == 1
    dataset = inputs[0].dataset
    assert dataset.name == "mhist-synthetic"
    assert dataset.digest == trained["card"]["dataset"]["digest"] and len(dataset.digest) >= 8
    assert {t.key: t.value for t in inputs[0].tags}["mlflow.data.context"] == "training"
    assert json.loads(dataset.profile)["num_rows"] == COUNT


@pytest.mark.slow
def test_registered_version_carries_test_metrics(trained: dict) -> None:
    client = trained["client"]
    card = trained["card"]
    assert trained["version"] == card["mlflow"]["version"] == "1"
    version = client.get_model_version(MODEL_NAME, trained["version"])
    assert version.run_id == trained["run_id"]
    tags = version.tags
    for key in ("accuracy", "sensitivity", "specificity", "precision", "f1",
                "balanced_accuracy", "roc_auc"):
        assert float(tags[f"test_{key}"]) == pytest.approx(card["metrics"]["test"][key], rel=1e-5)
        assert float(tags[f"test_at_0.5_{key}"]) == pytest.approx(
            card["metrics"]["test_at_0.5"][key], rel=1e-5)
    assert float(tags["threshold"]) == pytest.approx(card["threshold"], rel=1e-5)
    assert tags["threshold_rule"] == "youden" and tags["synthetic"] == "true"


@pytest.mark.slow
def test_checkpoint_is_the_evaluated_model(trained: dict, sample: Path) -> None:
    """best.pt + the serving preprocessing reproduce the test AUC written in the card."""
    model, card = load_checkpoint(trained["checkpoint"])
    assert card == trained["card"]
    assert card["classes"] == ["HP", "SSA"] and card["positive_class"] == "SSA"
    assert card["architecture"] == "resnet18"
    assert card["mlflow"]["run_id"] == trained["run_id"]
    assert card["mlflow"]["registered_model"] == MODEL_NAME
    assert card["dataset"]["synthetic"] is True
    spec = PreprocessSpec.from_dict(card["preprocessing"])
    assert (spec.size, spec.resize_size) == (IMAGE_SIZE, IMAGE_SIZE)
    test = [r for r in load_annotations(sample) if r.partition == "test"]
    batch = []
    for record in test:
        with Image.open(record.path) as img:
            batch.append(preprocess(img, spec))
    with torch.inference_mode():
        probs = torch.softmax(model(torch.from_numpy(np.stack(batch))), dim=1)[:, 1].numpy()
    labels = [r.target for r in test]
    assert roc_auc(labels, probs) == pytest.approx(card["metrics"]["test"]["roc_auc"], abs=1e-6)


@pytest.mark.slow
def test_registry_model_loads_as_the_same_weights(trained: dict) -> None:
    from_ckpt, _ = load_checkpoint(trained["checkpoint"])
    with mlflow_state_restored():
        model, card = load_from_mlflow(f"models:/{MODEL_NAME}/{trained['version']}",
                                       trained["client"].tracking_uri)
    assert card == trained["card"]
    for key, value in from_ckpt.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0)


@pytest.mark.slow
def test_mlflow_settings_do_not_leak_into_the_session(trained: dict) -> None:
    import mlflow

    assert {key: os.environ.get(key) for key in MLFLOW_ENV} == trained["env_before"]
    assert "train-run" not in mlflow.get_tracking_uri()


@pytest.mark.slow
def test_chance_bounds_follow_the_split_size() -> None:
    # 41 SSA and 83 HP test images (the fixture's test partition): bounds about 0.67 and 0.64
    # at three standard errors; a tiny split needs a far larger margin.
    bounds = chance_bounds(41, 83, CHANCE_SIGMAS)
    assert bounds["roc_auc"] == pytest.approx(0.666, abs=0.002)
    assert bounds["balanced_accuracy"] == pytest.approx(0.643, abs=0.002)
    assert chance_bounds(5, 10, CHANCE_SIGMAS)["roc_auc"] > 0.85
    with pytest.raises(ValueError, match="both classes"):
        chance_bounds(0, 10, CHANCE_SIGMAS)


@pytest.mark.slow
def test_model_learns(trained: dict) -> None:
    metrics = trained["card"]["metrics"]
    for split in ("val", "test"):
        bound = chance_bounds(*class_counts(metrics[split]), CHANCE_SIGMAS)["roc_auc"]
        assert metrics[split]["roc_auc"] > bound, split
    # At the threshold chosen on validation, carried over to test unchanged.
    bound = chance_bounds(*class_counts(metrics["test"]), CHANCE_SIGMAS)["balanced_accuracy"]
    assert metrics["test"]["balanced_accuracy"] > bound
    # Images the annotators agreed on (0, 1, 6 or 7 of 7 for SSA) are the easy ones.
    agree = metrics["test_agreement"]["groups"]["agree"]
    assert agree["roc_auc"] > metrics["test"]["roc_auc"]
    bound = chance_bounds(*agree_counts(trained, agree["n"]), CHANCE_SIGMAS)["roc_auc"]
    assert agree["roc_auc"] > bound


def agree_counts(trained: dict, n: int) -> tuple[int, int]:
    """(positives, negatives) among the agreed test images, from their SSA vote counts."""
    by_votes = trained["card"]["metrics"]["test_agreement"]["by_votes"]
    positives = sum(by_votes[v]["n"] for v in ("6", "7"))
    negatives = sum(by_votes[v]["n"] for v in ("0", "1"))
    assert positives + negatives == n
    return positives, negatives


@pytest.mark.slow
def test_console_output(trained: dict) -> None:
    out = trained["stdout"]
    assert "SYNTHETIC data" in out
    for line in ("run id      : " + trained["run_id"], f"registered  : {MODEL_NAME} version 1",
                 "checkpoint  : ", "threshold   : ", "test @thr   : ", "test @0.5   : ",
                 "val agree.  : agree (0|1|6|7, n=", "test agree. : agree (0|1|6|7, n="):
        assert line in out


@pytest.mark.slow
def test_metrics_by_annotator_agreement_are_in_the_card_and_mlflow(trained: dict) -> None:
    card, client = trained["card"], trained["client"]
    final = client.get_run(trained["run_id"]).data.metrics
    for split, prefix in (("val", "best_val_"), ("test", "test_")):
        agreement = card["metrics"][f"{split}_agreement"]
        n = card["metrics"][split]["n"]
        groups = agreement["groups"]
        assert groups["agree"]["n"] + groups["split"]["n"] == n
        assert sum(e["n"] for e in agreement["by_votes"].values()) == n
        assert agreement["threshold"] == card["threshold"]
        for key in ("agree_accuracy", "split_accuracy", "very_hard_n", "votes0_n"):
            assert final[prefix + key] == pytest.approx(
                _lookup(agreement, key)), (split, key)
    history = client.get_metric_history(trained["run_id"], "val_agree_roc_auc")
    assert sorted(m.step for m in history) == list(range(1, EPOCHS + 1))


def _lookup(agreement: dict, key: str) -> float:
    if key.startswith("votes"):
        count, _, field = key[len("votes"):].partition("_")
        return agreement["by_votes"][count][field]
    for name in sorted(agreement["groups"], key=len, reverse=True):  # very_hard before hard
        if key.startswith(name + "_"):
            return agreement["groups"][name][key[len(name) + 1:]]
    raise KeyError(key)


def test_agreement_metrics_by_hand() -> None:
    votes = np.array([0, 1, 3, 3, 4, 5, 6, 7])
    y = (votes >= 4).astype(int)
    prob = np.array([0.1, 0.2, 0.6, 0.4, 0.3, 0.7, 0.9, 0.8])  # wrong on one 3/7 and the 4/7
    m = agreement_metrics(y, prob, votes, threshold=0.5)
    agree, split = m["groups"]["agree"], m["groups"]["split"]
    assert (agree["n"], agree["accuracy"], agree["roc_auc"]) == (4, 1.0, 1.0)
    assert (split["n"], split["accuracy"]) == (4, 0.5)
    assert split["roc_auc"] == pytest.approx(2 / 4)  # SSA {0.3, 0.7} vs HP {0.6, 0.4}
    assert m["groups"]["very_hard"]["accuracy"] == pytest.approx(1 / 3)
    assert m["by_votes"]["3"] == {"n": 2, "accuracy": 0.5, "mean_prob_ssa": 0.5}
    assert m["by_votes"]["2"] == {"n": 0, "accuracy": None, "mean_prob_ssa": None}
    # Votes 0 and 1 are HP only: AUC undefined, not 0.5.
    only_hp = agreement_metrics([0, 0], [0.2, 0.3], [0, 1])
    assert only_hp["groups"]["agree"]["roc_auc"] is None
    assert only_hp["groups"]["split"]["accuracy"] is None
    with pytest.raises(ValueError, match="votes"):
        agreement_metrics([0, 1], [0.2, 0.9], [0, 9])
    with pytest.raises(ValueError, match="votes has 1 values"):
        agreement_metrics([0, 1], [0.2, 0.9], [0])


def test_soft_labels_train_on_the_vote_share(tmp_path: Path) -> None:
    """--soft-labels: targets are (1 - v/7, v/7); one real epoch runs and says so in MLflow."""
    data = tmp_path / "data"
    generate(data, count=60, size=64, seed=4)
    records = load_annotations(data)
    dataset = MHISTDataset(records[:8], PreprocessSpec(size=32, resize_size=32),
                           soft_targets=True)
    for record, (_, target) in zip(records[:8], dataset, strict=True):
        torch.testing.assert_close(target, torch.tensor([1 - record.votes / 7, record.votes / 7]))
    assert dataset.targets.tolist() == [r.target for r in records[:8]]  # hard labels kept
    work = tmp_path / "work"
    args = get_args_parser().parse_args([
        "--data-dir", str(data), "--weights", "none", "--image-size", "32", "--batch-size", "16",
        "--workers", "0", "--epochs", "1", "--soft-labels", "--no-register",
        "--tracking-uri", f"sqlite:///{work / 'mlflow.db'}", "--out", str(work / "ckpt"),
    ])
    with (pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(io.StringIO()),
          mlflow_state_restored()):
        mp.chdir(tmp_path)
        summary = main(args)
    run = MlflowClient(tracking_uri=f"sqlite:///{work / 'mlflow.db'}").get_run(summary["run_id"])
    assert run.data.params["soft_labels"] == "True"
    assert run.info.status == "FINISHED"
    assert summary["card"]["config"]["soft_labels"] is True
    assert np.isfinite(run.data.metrics["train_loss"])


# ---------------------------------------------------------------- without a full run


def test_training_is_repeatable_on_cpu(tmp_path: Path) -> None:
    """Same seed → bit-identical weights after an epoch (init, order, augmentation, split)."""
    generate(tmp_path, count=60, size=64, seed=4)
    args = get_args_parser().parse_args([
        "--data-dir", str(tmp_path), "--weights", "none", "--image-size", "32",
        "--batch-size", "16", "--workers", "0", "--epochs", "1",
    ])
    from training.train import config_from_args

    cfg = config_from_args(args)
    device = torch.device("cpu")

    def one_epoch() -> dict:
        seed_everything(cfg.seed)
        data = build_data(cfg, device)
        model = build_model("none")
        optimizer = build_optimizer(model, cfg)
        scheduler = build_scheduler(optimizer, cfg, len(data.loaders["train"]))
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        train_one_epoch(model, build_criterion(cfg, data.train, device), optimizer, scheduler,
                        scaler, data.loaders["train"], device, 1, amp=False)
        return model.state_dict()

    first, second = one_epoch(), one_epoch()
    for key, value in first.items():
        torch.testing.assert_close(second[key], value, rtol=0, atol=0)


def test_imagenet_offline_names_the_alternatives(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # empty: nothing cached
    with pytest.raises(WeightsError) as err:
        build_model("imagenet")
    message = str(err.value)
    assert "--weights none" in message and "--weights PATH" in message
    assert "resnet18" in message


def test_cli_imagenet_offline_fails_cleanly_before_any_run(sample: Path, tmp_path: Path) -> None:
    """`python training/train.py` as a script: exit 2, one-line error, no traceback, no run."""
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch-home")}
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "training" / "train.py"), "--data-dir", str(sample),
         "--weights", "imagenet", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "--weights none" in result.stderr and "--weights PATH" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "mlflow.db").exists()


def test_module_entry_point_reports_a_bad_data_dir(tmp_path: Path, monkeypatch, capsys) -> None:
    """`python -m training` (run here in-process through training/__main__.py)."""
    monkeypatch.setattr(sys, "argv", ["training", "--data-dir", str(tmp_path / "missing")])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("training", run_name="__main__", alter_sys=False)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: data folder") and "does not exist" in err


def test_weights_from_a_local_file(tmp_path: Path) -> None:
    import torchvision

    imagenet_like = torchvision.models.resnet18(weights=None)  # 1000-class head
    path = tmp_path / "resnet18.pth"
    torch.save({f"module.{k}": v for k, v in imagenet_like.state_dict().items()}, path)
    model = build_model(str(path))
    assert model.fc.out_features == 2
    torch.testing.assert_close(model.conv1.weight, imagenet_like.conv1.weight)
    # Our own checkpoint keeps its trained 2-class head.
    ckpt = tmp_path / "best.pt"
    card = {"architecture": "resnet18", "classes": ["HP", "SSA"], "positive_class": "SSA",
            "threshold": 0.5, "preprocessing": PreprocessSpec().to_dict()}
    save_checkpoint(ckpt, model, card)
    again = build_model(str(ckpt))
    torch.testing.assert_close(again.fc.weight, model.fc.weight)
    (tmp_path / "junk.pth").write_bytes(b"not torch")
    with pytest.raises(WeightsError, match="not a readable PyTorch weights file"):
        build_model(str(tmp_path / "junk.pth"))
    with pytest.raises(WeightsError, match="no such file"):
        build_model(str(tmp_path / "absent.pth"))


@pytest.mark.parametrize(("flags", "named"), [
    (["--epochs", "0"], "--epochs"),
    (["--batch-size", "1"], "--batch-size"),
    (["--val-fraction", "1.0"], "--val-fraction"),
    (["--threshold-rule", "sensitivity", "--target-sensitivity", "1.5"], "--target-sensitivity"),
])
def test_unusable_flags_are_named(flags: list[str], named: str) -> None:
    from training.train import ConfigError, config_from_args

    with pytest.raises(ConfigError, match=named):
        config_from_args(get_args_parser().parse_args(flags))
