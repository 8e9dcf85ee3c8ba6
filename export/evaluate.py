"""Numbers the export gates on: FP32 parity with PyTorch, skill above chance, INT8 against FP32."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from export.convert import ExportError
from services.core.model import InferenceModel, softmax
from services.core.preprocessing import PreprocessSpec, preprocess_bytes
from training.metrics import (
    agreement_metrics,
    binary_metrics,
    chance_bounds,
    class_counts,
    format_agreement,
)


def load_batch(paths: Sequence[Path], spec: PreprocessSpec) -> np.ndarray:
    """Image files → (N, 3, S, S) float32 through the serving preprocessing."""
    return np.stack([preprocess_bytes(p.read_bytes(), spec) for p in paths])


def torch_probabilities(model: torch.nn.Module, batch: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        logits = model.eval().cpu()(torch.from_numpy(batch))  # (N, C)
    return softmax(logits.numpy())


def onnx_probabilities(model: InferenceModel, batch: np.ndarray, chunk: int = 16) -> np.ndarray:
    meta = model.metadata
    parts = [
        model.session.run([meta.output_name], {meta.input_name: batch[i : i + chunk]})[0]
        for i in range(0, len(batch), chunk)
    ]
    return softmax(np.concatenate(parts))


@dataclass(frozen=True)
class ParityResult:
    images: int
    max_abs_diff: float
    mean_abs_diff: float
    tolerance: float
    split: str  # which images: the gates read validation, never test

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance

    def to_dict(self) -> dict:
        return {**self.__dict__, "passed": self.passed}


def check_parity(
    torch_model: torch.nn.Module,
    onnx_model: InferenceModel,
    batch: np.ndarray,
    tolerance: float,
    split: str = "validation",
) -> ParityResult:
    """ONNX FP32 vs PyTorch on the same preprocessed images; raises ExportError if over."""
    diff = np.abs(torch_probabilities(torch_model, batch) - onnx_probabilities(onnx_model, batch))
    result = ParityResult(len(batch), float(diff.max()), float(diff.mean()), tolerance, split)
    if not result.passed:
        raise ExportError(
            f"parity gate failed: ONNX FP32 and PyTorch probabilities differ by up to "
            f"{result.max_abs_diff:.3g} (mean {result.mean_abs_diff:.3g}) on {result.images} "
            f"{split} images; the tolerance is {tolerance:g}. The exported graph does not "
            "compute what the PyTorch model computes."
        )
    return result


def compare_precisions(
    fp32: InferenceModel,
    int8: InferenceModel,
    batch: np.ndarray,
    labels: np.ndarray,
    split: str = "validation",
    votes: np.ndarray | None = None,
) -> dict:
    """FP32 vs INT8 on images of `split`: metrics of each, deltas and top-1 agreement.

    With the annotators' SSA votes per image, also each precision's metrics by annotator
    agreement (training.metrics.agreement_metrics) under "agreement".
    """
    meta = fp32.metadata
    pos = meta.positive_index
    p32 = onnx_probabilities(fp32, batch)
    p8 = onnx_probabilities(int8, batch)
    m32 = binary_metrics(labels, p32[:, pos], meta.threshold, interval=True)
    m8 = binary_metrics(labels, p8[:, pos], meta.threshold, interval=True)
    same_label = (p32[:, pos] >= meta.threshold) == (p8[:, pos] >= meta.threshold)
    result = {
        "split": split,
        "images": len(batch),
        "fp32": m32,
        "int8": m8,
        "accuracy_drop_pp": 100.0 * (m32["accuracy"] - m8["accuracy"]),
        "auc_drop": _auc(m32) - _auc(m8),
        "top1_agreement": float(same_label.mean()),
        "max_abs_prob_diff": float(np.abs(p32 - p8).max()),
    }
    if votes is not None:
        result["agreement"] = {
            name: agreement_metrics(labels, p[:, pos], votes, meta.threshold)
            for name, p in (("fp32", p32), ("int8", p8))
        }
    return result


def agreement_lines(comparison: dict | None) -> list[str]:
    """Console lines: each precision's metrics by annotator agreement on the comparison's split."""
    if not comparison or "agreement" not in comparison:
        return []
    return [
        f"{comparison['split']} {name.upper()} by annotator agreement: {format_agreement(m)}"
        for name, m in comparison["agreement"].items()
    ]


def _auc(metrics: dict) -> float:
    value = metrics.get("roc_auc")
    return float("nan") if value is None else float(value)


def accuracy_gate(comparison: dict, max_drop_pp: float, allow_degraded: bool,
                  min_agreement: float = 0.0) -> str | None:
    """None when INT8 is acceptable, else the failure message (raised unless allowed).

    Two checks on the same validation images. Accuracy: INT8 may lose `max_drop_pp` points, but
    one image more or less never fails it by itself (on the demo's 56 validation images a single
    image is 1.79 pp, so a 1 pp limit would judge noise). Agreement: INT8 must give FP32's label
    on at least `min_agreement` of the images, which catches a file whose flips cancel out in
    accuracy (an accuracy-only gate is blind to that).
    """
    failures = _gate_failures(comparison, max_drop_pp, min_agreement)
    if not failures:
        return None
    # The advice names only choices the gate re-checks on the same validation split; the test
    # partition is not read before the gates pass, so it cannot become a tuning set.
    message = (
        f"INT8 accuracy gate failed: {'; '.join(failures)} (on {comparison['images']} "
        f"{comparison['split']} images). Check that "
        "the calibration images (the fit split) look like the images served, change "
        "--calibration-size or --calibration-method (Entropy, Percentile) and let this gate "
        "judge again on the same split, serve FP32 instead, or pass --allow-degraded to keep "
        "the file anyway. No gate reads the test partition: it gives the final numbers only "
        "and must not steer these choices."
    )
    if allow_degraded:
        return message
    raise ExportError(message)


def _gate_failures(comparison: dict, max_drop_pp: float, min_agreement: float) -> list[str]:
    failures = []
    drop, images = comparison["accuracy_drop_pp"], comparison["images"]
    one_image_pp = 100.0 / images if images else 0.0
    # A negative limit is a demand INT8 beat FP32: no one-image allowance then.
    allowed = max(max_drop_pp, one_image_pp + 1e-9) if max_drop_pp >= 0 else max_drop_pp
    if drop > allowed:
        failures.append(
            f"accuracy fell by {drop:.2f} percentage points ({comparison['fp32']['accuracy']:.4f}"
            f" → {comparison['int8']['accuracy']:.4f}); the limit is {max_drop_pp:g} pp "
            f"(or one image, {one_image_pp:.2f} pp, whichever is larger)")
    if comparison["top1_agreement"] < min_agreement:
        failures.append(
            f"INT8 gave FP32's label on {comparison['top1_agreement']:.3f} of the images; the "
            f"minimum is {min_agreement:g} (--min-agreement)")
    return failures


def skill_gate(labels: np.ndarray, probabilities: np.ndarray, threshold: float, z: float,
               allow_degraded: bool, split: str = "validation") -> dict:
    """The absolute floor the relative gates lack: a model that gives every image the same
    probability has zero parity error and INT8 agreement 1.0, so parity and the INT8 gate
    pass it. Here the served model must beat chance on `split` by `z` standard errors for its
    class counts (training.metrics.chance_bounds), in ROC AUC and in balanced accuracy at its
    threshold, and must not give every image one label.

    Returns the report entry; raises ExportError on failure unless `allow_degraded`, in which
    case the entry says the floor was overridden.
    """
    metrics = binary_metrics(labels, probabilities, threshold)
    positives, negatives = class_counts(metrics)
    bounds = chance_bounds(positives, negatives, z)
    predicted_positive = int(np.sum(probabilities >= threshold))
    failures = [
        f"{name} {metrics[name]:.3f} is not above {bound:.3f} (chance + {z:g} standard errors "
        f"for {positives} positive and {negatives} negative images)"
        for name, bound in bounds.items() if not metrics[name] > bound]
    if predicted_positive in (0, len(labels)):
        failures.append(f"every {split} image gets the same label")
    entry = {"split": split, "images": len(labels), "z": z,
             "roc_auc": metrics["roc_auc"], "balanced_accuracy": metrics["balanced_accuracy"],
             "bounds": bounds, "predicted_positive": predicted_positive,
             "passed": not failures, "overridden": bool(failures) and allow_degraded}
    if failures:
        message = (f"skill gate failed on {len(labels)} {split} images: {'; '.join(failures)}. "
                   "The model is no better than chance here: train longer or on more data, "
                   "check the data folder is the one it was trained on, or pass "
                   "--allow-degraded to export it anyway (the report records that).")
        if not allow_degraded:
            raise ExportError(message)
        entry["message"] = message
    return entry
