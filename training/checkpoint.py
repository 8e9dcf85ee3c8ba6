"""Checkpoints = {"state_dict", "card"}; the card is the model's plain-JSON passport.

Card keys: architecture, classes (logit order), positive_class, threshold, threshold_rule,
preprocessing (PreprocessSpec.to_dict()), metrics {val, test, test_at_0.5}, config (TrainConfig),
mlflow {run_id, experiment_id, tracking_uri, registered_model, version}, git_commit,
dataset {digest, counts, synthetic}. The export step copies it into the ONNX metadata.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from training.model import ARCHITECTURE, build_model

CARD_FILE = "model_card.json"  # at the MLflow run's artifact root
REQUIRED_CARD_KEYS = ("architecture", "classes", "positive_class", "threshold", "preprocessing")


def check_card(card: dict) -> dict:
    """The card, after checking it is JSON-serialisable and has what export needs."""
    missing = [key for key in REQUIRED_CARD_KEYS if key not in card]
    if missing:
        raise ValueError(f"model card lacks {', '.join(missing)}")
    if card["architecture"] != ARCHITECTURE:
        raise ValueError(f"model card architecture {card['architecture']!r} is not {ARCHITECTURE}")
    if card["positive_class"] not in card["classes"]:
        raise ValueError(f"positive class {card['positive_class']!r} not in {card['classes']}")
    json.dumps(card, allow_nan=False)  # raises on tensors, numpy scalars, NaN
    return card


def save_checkpoint(path: str | Path, model: nn.Module, card: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Weights on CPU so the file loads anywhere; written to a temp name then renamed so an
    # interrupted save never leaves a half-written best.pt behind.
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    tmp = path.with_suffix(path.suffix + ".tmp")
    # A JSON round trip stores plain types only (str subclasses such as torch's TorchVersion
    # would otherwise be pickled as their class and refused by weights_only loading).
    plain = json.loads(json.dumps(check_card(card)))
    torch.save({"state_dict": state, "card": plain}, tmp)
    tmp.replace(path)
    return path


def load_checkpoint(path: str | Path, device: str = "cpu") -> tuple[nn.Module, dict]:
    """(model in eval mode, card) from a file written by save_checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no checkpoint at {path}; train one with `python training/train.py`"
        )
    obj = torch.load(path, map_location=device, weights_only=True)
    if not isinstance(obj, dict) or "state_dict" not in obj or "card" not in obj:
        raise ValueError(f"{path} is not a checkpoint of this project (no state_dict + card)")
    card = check_card(obj["card"])
    model = build_model("none", num_classes=len(card["classes"]))
    model.load_state_dict(obj["state_dict"])
    return model.to(device).eval(), card


def load_from_mlflow(model_uri: str, tracking_uri: str | None = None) -> tuple[nn.Module, dict]:
    """(ResNet18 nn.Module in eval mode, card) for `models:/NAME/VERSION`, `models:/NAME@ALIAS`,
    `models:/NAME/latest` or `runs:/RUN_ID/model`.

    The weights come from the logged MLflow model (whatever its serialization format) and are
    loaded into a fresh torchvision ResNet18, so callers always get the same plain module; the
    card is the run's model_card.json.
    """
    import mlflow
    import mlflow.pytorch

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    logged = mlflow.pytorch.load_model(model_uri, map_location="cpu")
    info = mlflow.models.get_model_info(model_uri)
    card = check_card(mlflow.artifacts.load_dict(f"runs:/{info.run_id}/{CARD_FILE}"))
    model = build_model("none", num_classes=len(card["classes"]))
    model.load_state_dict(logged.state_dict())
    return model.eval(), card
