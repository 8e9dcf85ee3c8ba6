"""torchvision ResNet18 with a new head for MHIST's two classes."""

from __future__ import annotations

import socket
from pathlib import Path

import torch
from torch import nn
from torchvision.models import ResNet, ResNet18_Weights, resnet18

ARCHITECTURE = "resnet18"
DOWNLOAD_TIMEOUT_S = 60  # torch.hub sets none: a firewalled host would otherwise hang for ever


class WeightsError(RuntimeError):
    """Initial weights cannot be obtained or do not fit; the message says what to pass instead."""


def build_model(weights: str = "imagenet", num_classes: int = 2) -> ResNet:
    """ResNet18 whose final layer is a fresh `num_classes` Linear.

    weights: "imagenet" (torchvision's IMAGENET1K_V1, downloaded once into TORCH_HOME),
    "none" (random init), or a PATH to a local state_dict / checkpoint of an ImageNet-style
    ResNet18 (its own fc is kept only if it already has `num_classes` outputs).
    """
    if weights == "none":
        return resnet18(weights=None, num_classes=num_classes)
    if weights == "imagenet":
        model = _imagenet()
    else:
        model = resnet18(weights=None)
        state = _read_state_dict(Path(weights))
        if state.get("fc.weight") is not None and state["fc.weight"].shape[0] == num_classes:
            model.fc = nn.Linear(model.fc.in_features, num_classes)
            _load(model, state, weights)
            return model
        _load(model, {k: v for k, v in state.items() if not k.startswith("fc.")}, weights,
              allow_missing=("fc.weight", "fc.bias"))
    # A new head: ImageNet's 1000 classes mean nothing for polyps.
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    return model


def _imagenet() -> ResNet:
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        return resnet18(weights=ResNet18_Weights.IMAGENET1K_V1)
    except (OSError, RuntimeError, ValueError) as exc:  # URLError is an OSError
        url = ResNet18_Weights.IMAGENET1K_V1.url
        raise WeightsError(
            f"could not get the ImageNet weights for ResNet18 ({url}): {exc}. "
            "This machine looks offline. Train from scratch with `--weights none`, or download "
            "that file elsewhere and pass it with `--weights PATH` (or place it in "
            f"{torch.hub.get_dir()}/checkpoints/ so the default finds it)."
        ) from exc
    finally:
        socket.setdefaulttimeout(previous)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise WeightsError(
            f"--weights {path}: no such file; use `imagenet`, `none` or a path to a ResNet18 "
            "state_dict (.pth) or checkpoint (.pt)"
        )
    try:
        # weights_only: a weights file from elsewhere must not run code when it is read.
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling/zip failure means "not a weights file"
        raise WeightsError(
            f"--weights {path} is not a readable PyTorch weights file: {exc}"
        ) from exc
    # Our checkpoints hold {"state_dict", "card"}; torchvision's reference scripts {"model", ...}.
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"--weights {path} does not hold a state_dict of tensors")
    # DataParallel / DDP prefix their keys with "module."
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _load(
    model: nn.Module, state: dict, source: str, allow_missing: tuple[str, ...] = ()
) -> None:
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatch
        raise WeightsError(f"--weights {source} does not fit ResNet18: {exc}") from exc
    missing = [k for k in result.missing_keys if k not in allow_missing]
    if missing or result.unexpected_keys:
        raise WeightsError(
            f"--weights {source} is not a ResNet18 state_dict: missing {missing[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )
