"""Where the model to export comes from: an MLflow model URI or a training checkpoint."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from training.checkpoint import load_checkpoint, load_from_mlflow


@dataclass
class ModelSource:
    model: torch.nn.Module
    card: dict  # the training run's model card (classes, threshold, preprocessing, metrics ...)
    uri: str  # what the user asked for, resolved (models:/NAME/3 rather than .../latest)
    run_id: str | None
    registered_model: str | None
    registered_version: str | None


_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>[^/]+)|@(?P<alias>[^/]+))?$")


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
    name = version = None
    match = _MODELS_URI.match(uri)
    if match:
        name = match["name"]
        version = _resolve_version(client, name, match["version"], match["alias"])
        run_id = client.get_model_version(name, version).run_id
        uri = f"models:/{name}/{version}"
    elif uri.startswith("runs:/"):
        run_id = uri.split("/")[1]
    else:
        raise ValueError(
            f"unsupported model URI {uri!r}: use models:/NAME/VERSION or runs:/ID/model"
        )
    model, card = load_from_mlflow(uri, tracking_uri)
    return ModelSource(model, card, uri, run_id, name, version)


def _resolve_version(client, name: str, version: str | None, alias: str | None) -> str:
    if alias:
        return str(client.get_model_version_by_alias(name, alias).version)
    if version and version != "latest":
        return version
    versions = client.search_model_versions(f"name='{name}'")
    if not versions:
        raise ValueError(
            f"no registered model {name!r} in this tracking store: train first "
            "(python training/train.py) or pass --checkpoint PATH"
        )
    return str(max(int(v.version) for v in versions))


def _str_or_none(value: object) -> str | None:
    return None if value is None else str(value)
