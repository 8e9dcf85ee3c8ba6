"""MLflow bookkeeping: the run, its params, metrics, artifacts and model, and the registry.

The first part is what training and export do the same way, and export/tracking.py imports
it: where a run is recorded, how params are logged, how a registered version is tagged. The
rest is training's own run. MLflow is imported inside the functions, so that importing this
module (and `python -m training --help`) does not load it.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from training import POSITIVE_CLASS
from training.checkpoint import CARD_FILE
from training.metrics import (
    agreement_scalars,
    plot_confusion_matrix,
    plot_roc,
    scalar_metrics,
)
from training.model import ARCHITECTURE
from training.provenance import absolute_tracking_uri

if TYPE_CHECKING:  # training.train imports this module
    import torch
    from mlflow.data.dataset import Dataset
    from mlflow.entities import Run
    from torch import nn

    from training.train import Data, TrainConfig

# ---------------------------------------------------------------- shared with export


def ensure_experiment(name: str, tracking_uri: str) -> None:
    """Create a missing experiment; with a sqlite store, its artifacts go next to the database.

    MLflow's own default is ./mlruns of the *current* folder, so a run started elsewhere would
    scatter artifacts away from its database; beside the .db file the store stays one folder.
    """
    import mlflow

    prefix = "sqlite:///"
    if not tracking_uri.startswith(prefix) or mlflow.get_experiment_by_name(name) is not None:
        return
    db = Path(absolute_tracking_uri(tracking_uri)[len(prefix):])
    location = (db.parent / "mlruns").as_uri()
    try:
        mlflow.create_experiment(name, artifact_location=location)
    except mlflow.exceptions.MlflowException:
        pass  # created meanwhile by a concurrent run: set_experiment will find it


def start_run(
    tracking_uri: str, experiment: str, run_name: str | None, tags: Mapping[str, str]
) -> AbstractContextManager[Run]:
    """Point MLflow at the store and the experiment, and start a run there (a context manager)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    # Under `mlflow run`, MLFLOW_RUN_ID names a run that already exists in the experiment the
    # CLI chose; setting ours as well would make start_run refuse the mismatch.
    if not os.environ.get("MLFLOW_RUN_ID"):
        ensure_experiment(experiment, tracking_uri)
        mlflow.set_experiment(experiment)
    return mlflow.start_run(run_name=run_name, tags=dict(tags))


def log_params(params: Mapping[str, Any]) -> None:
    """Log params to the active run; under `mlflow run`, keep the values the MLproject logged.

    `mlflow run` logs each entry-point parameter as typed (`data_dir=data/sample`, `lr=1e-4`)
    but hands the script the resolved value (an absolute path for `type: path`); MLflow refuses
    to change a logged param, so a differing value of ours goes under `resolved_<key>` instead.
    """
    import mlflow

    logged = mlflow.get_run(mlflow.active_run().info.run_id).data.params
    ours = {k: str(v) for k, v in params.items()}
    fresh = {k: v for k, v in ours.items() if k not in logged}
    resolved = {f"resolved_{k}": v for k, v in ours.items() if k in logged and logged[k] != v}
    mlflow.log_params(fresh | resolved)


def tag_version(registered_model: str, version: str, tags: Mapping[str, str]) -> None:
    """Set tags on a registered model version (in the store MLflow currently points at)."""
    from mlflow import MlflowClient

    client = MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(registered_model, version, key, value)


# ---------------------------------------------------------------- training's run


def start_training_run(cfg: TrainConfig, data: Data) -> AbstractContextManager[Run]:
    tags = {"synthetic": str(data.synthetic).lower(), "architecture": ARCHITECTURE,
            "positive_class": POSITIVE_CLASS}
    return start_run(cfg.tracking_uri, cfg.experiment, cfg.run_name, tags)


def log_dataset(data: Data, cfg: TrainConfig) -> Dataset:
    """The annotations as the run's training input; its digest goes into the model card."""
    import mlflow
    import pandas as pd

    frame = pd.DataFrame(
        [(r.name, r.label, r.votes, r.partition) for r in data.records],
        columns=["Image Name", "Majority Vote Label",
                 "Number of Annotators who Selected SSA (Out of 7)", "Partition"],
    )
    name = "mhist-synthetic" if data.synthetic else "mhist"
    with warnings.catch_warnings():
        # Harmless noise: MLflow registers its local-path source class twice and then warns
        # the path is ambiguous; and it hints that the integer vote column cannot hold NaN.
        warnings.filterwarnings("ignore", message="The specified dataset source can be")
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
        dataset = mlflow.data.from_pandas(frame, source=str(Path(cfg.data_dir).resolve()),
                                          targets="Majority Vote Label", name=name)
        mlflow.log_input(dataset, context="training")  # the schema is inferred here, lazily
    return dataset


def log_config(cfg: TrainConfig, data: Data) -> None:
    """The config once, `extra` flattened to extra_<key>, and the split sizes."""
    config = asdict(cfg)
    extra = config.pop("extra", {})
    log_params({**config, **{f"extra_{k}": v for k, v in extra.items()},
                "n_train": len(data.train), "n_val": len(data.val), "n_test": len(data.test)})


def log_epoch(epoch: int, train: dict, val: dict, agreement: dict) -> None:
    """One epoch's metrics at step `epoch`; the full agreement breakdown waits for the end."""
    import mlflow

    group_aucs = {f"val_{name}_roc_auc": agreement["groups"][name]["roc_auc"]
                  for name in ("agree", "split")
                  if agreement["groups"][name]["roc_auc"] is not None}
    mlflow.log_metrics({"train_loss": train["loss"], "lr": train["lr"],
                        **scalar_metrics(train["metrics"], "train_"),
                        **scalar_metrics(val["metrics"], "val_"), **group_aucs}, step=epoch)


def log_results(final: dict, metrics: dict, data: Data, threshold: float, rule: str,
                step: int) -> None:
    """The final metrics at step `step` (the best epoch), plots, predictions and tags."""
    import mlflow

    mlflow.log_metrics({**scalar_metrics(metrics["val"], "best_val_"),
                        **scalar_metrics(metrics["test"], "test_"),
                        **scalar_metrics(metrics["test_at_0.5"], "test_at_0.5_"),
                        **agreement_scalars(metrics["val_agreement"], "best_val_"),
                        **agreement_scalars(metrics["test_agreement"], "test_"),
                        "best_epoch": float(step)}, step=step)
    with tempfile.TemporaryDirectory() as tmp:
        write_artifacts(Path(tmp), final, data, threshold)
        mlflow.log_artifacts(tmp)
    mlflow.log_dict(metrics, "metrics.json")
    mlflow.set_tags({"threshold": f"{threshold:.6g}", "threshold_rule": rule})


def write_artifacts(folder: Path, final: dict, data: Data, threshold: float) -> None:
    plots = folder / "plots"
    plots.mkdir()
    for split in ("val", "test"):
        result = final[split]
        plot_confusion_matrix(result["metrics"]["confusion_matrix"],
                              plots / f"{split}_confusion_matrix.png",
                              f"{split} at threshold {threshold:.3f}")
        plot_roc(result["targets"], result["probs"], plots / f"{split}_roc.png",
                 f"{split} ROC ({POSITIVE_CLASS} positive)", threshold)
    (folder / "class_counts.json").write_text(json.dumps(data.counts, indent=2))
    rows = ["image,split,label,prob_ssa"]
    for split, records in (("val", data.val), ("test", data.test)):
        for record, prob in zip(records, final[split]["probs"], strict=True):
            rows.append(f"{record.name},{split},{record.label},{prob:.6f}")
    (folder / "predictions.csv").write_text("\n".join(rows) + "\n")


def log_trained_model(model: nn.Module, data: Data, cfg: TrainConfig, device: torch.device,
                      card: dict) -> dict:
    """Log (and register, and tag) the model; returns the card with its version and URI."""
    info, version = log_model(model, data, cfg, device)
    if version:
        tag_version(cfg.registered_model, version, _version_tags(cfg, card, data.synthetic))
    model_uri = f"models:/{cfg.registered_model}/{version}" if version else info.model_uri
    return {**card, "mlflow": {**card["mlflow"], "version": version, "model_uri": model_uri}}


def log_model(model: nn.Module, data: Data, cfg: TrainConfig, device: torch.device) -> tuple:
    """Log (and register) the model; returns (model_info, registered version or None)."""
    import mlflow
    import mlflow.pytorch
    import torch
    import torchvision
    from mlflow.models import infer_signature

    # Two real validation images as the example: batch 2, because MLflow's default pt2
    # (torch.export) format specialises a batch of 1 into a model that only accepts 1.
    example = torch.stack([data.loaders["val"].dataset[i][0] for i in range(2)])  # (2, 3, S, S)
    model = model.to("cpu").eval()
    with torch.inference_mode():
        logits = model(example)  # (2, 2)
    requirements = [f"torch=={torch.__version__.split('+')[0]}",
                    f"torchvision=={torchvision.__version__.split('+')[0]}",
                    f"mlflow=={mlflow.__version__}"]
    info = mlflow.pytorch.log_model(
        model, name="model",
        signature=infer_signature(example.numpy(), logits.numpy()),
        input_example=example.numpy(),
        # Explicit: skips MLflow's requirement inference, which re-imports torch in a subprocess.
        pip_requirements=requirements,
        registered_model_name=cfg.registered_model if cfg.register else None,
    )
    model.to(device)
    version = info.registered_model_version
    return info, (str(version) if version is not None else None)


def _version_tags(cfg: TrainConfig, card: dict, synthetic: bool) -> dict[str, str]:
    """Test metrics (at the threshold and at 0.5), threshold and data facts on the version."""
    metrics = card["metrics"]
    val_auc = metrics["val"]["roc_auc"]
    tags = {f"test_{k}": f"{v:.6g}" for k, v in scalar_metrics(metrics["test"]).items()}
    tags |= {f"test_at_0.5_{k}": f"{v:.6g}"
             for k, v in scalar_metrics(metrics["test_at_0.5"]).items() if k != "threshold"}
    tags |= {"threshold": f"{card['threshold']:.6g}", "threshold_rule": card["threshold_rule"],
             "val_roc_auc": "n/a" if val_auc is None else f"{val_auc:.3f}",
             "synthetic": str(synthetic).lower(), "image_size": str(cfg.image_size),
             "dataset_digest": card["dataset"]["digest"]}
    return tags


def log_card(card: dict) -> None:
    """At the artifact root: export reads the model card from here."""
    import mlflow

    mlflow.log_dict(card, CARD_FILE)
