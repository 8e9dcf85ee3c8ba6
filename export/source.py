"""Where the model to export comes from: an MLflow model URI or a training checkpoint."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from export.registry import resolve_version
from training.checkpoint import load_checkpoint, load_from_mlflow


@dataclass
class ModelSource:
    model: torch.nn.Module
    card: dict  # the training run's model card (classes, threshold, preprocessing, metrics ...)
    uri: str  # what the user asked for, resolved (models:/NAME/3 rather than .../latest)
    run_id: str | None
    registered_model: str | None
    registered_version: str | None


def from_checkpoint(path: Path) -> ModelSource:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist (train with training/train.py)")
    model, card = load_checkpoint(path)
    mlflow_info = card.get("mlflow") or {}
    return ModelSource(
        model=model,
        card=card,
        uri=str(path),
        run_id=mlflow_info.get("run_id"),
        registered_model=mlflow_info.get("registered_model"),
        registered_version=_str_or_none(mlflow_info.get("version")),
    )


def from_mlflow(uri: str, tracking_uri: str) -> ModelSource:
    """`models:/NAME[/VERSION|/latest|@ALIAS]` or `runs:/RUN_ID/model`.

    `latest` and aliases are resolved to a version number first, so the ONNX metadata and
    the report name exactly which registered version they came from.
    """
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    found = resolve_version(
        client, uri, "train first (python training/train.py) or pass --checkpoint PATH"
    )
    if found is None:  # runs:/RUN_ID/PATH
        name = version = None
        run_id = uri.split("/")[1]
    else:
        name, version, run_id = found.name, str(found.version), found.run_id
        uri = f"models:/{name}/{version}"
    model, card = load_from_mlflow(uri, tracking_uri)
    return ModelSource(model, card, uri, run_id, name, version)


def _str_or_none(value: object) -> str | None:
    return None if value is None else str(value)
