"""Metrics against scikit-learn on known arrays, and both threshold-selection rules."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn import metrics as skm

from training.metrics import (
    binary_metrics,
    plot_confusion_matrix,
    plot_roc,
    roc_auc,
    scalar_metrics,
    select_threshold,
    sensitivity_threshold,
    youden_threshold,
)

# 12 images: 5 SSA (1), 7 HP (0); scores with a tie and one score exactly at 0.5.
Y = np.array([0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
P = np.array([0.05, 0.20, 0.35, 0.50, 0.62, 0.40, 0.10, 0.45, 0.70, 0.90, 0.62, 0.30])


def test_metrics_match_scikit_learn_at_a_threshold() -> None:
    m = binary_metrics(Y, P, threshold=0.5)
    pred = (P >= 0.5).astype(int)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(Y, pred))
    assert m["sensitivity"] == pytest.approx(skm.recall_score(Y, pred))
    assert m["specificity"] == pytest.approx(skm.recall_score(Y, pred, pos_label=0))
    assert m["precision"] == pytest.approx(skm.precision_score(Y, pred))
    assert m["f1"] == pytest.approx(skm.f1_score(Y, pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(Y, pred))
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(Y, P))
    assert m["confusion_matrix"] == skm.confusion_matrix(Y, pred).tolist()
    assert (m["threshold"], m["n"]) == (0.5, 12)


def test_confusion_matrix_by_hand() -> None:
    # At 0.5: SSA scores 0.45 and 0.30 are missed; HP 0.50 and 0.62 are false alarms (>= counts).
    m = binary_metrics(Y, P, threshold=0.5)
    assert m["confusion_matrix"] == [[5, 2], [2, 3]]  # [[TN, FP], [FN, TP]]
    assert m["sensitivity"] == pytest.approx(3 / 5)
    assert m["specificity"] == pytest.approx(5 / 7)
    assert m["precision"] == pytest.approx(3 / 5)


def test_degenerate_inputs() -> None:
    only_hp = binary_metrics([0, 0, 0], [0.1, 0.7, 0.2])
    assert only_hp["roc_auc"] is None
    assert only_hp["sensitivity"] == 0.0 and only_hp["precision"] == 0.0
    assert only_hp["specificity"] == pytest.approx(2 / 3)
    assert roc_auc([1, 1], [0.2, 0.3]) is None
    with pytest.raises(ValueError, match="0 \\(HP\\) and 1 \\(SSA\\)"):
        binary_metrics([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="y_true has 2 values but prob has 3"):
        binary_metrics([0, 1], [0.1, 0.2, 0.3])


def test_scalar_metrics_keeps_only_finite_numbers() -> None:
    m = binary_metrics([0, 0], [0.1, 0.2])
    flat = scalar_metrics(m, "val_")
    assert "val_roc_auc" not in flat and "val_confusion_matrix" not in flat
    assert flat["val_accuracy"] == 1.0 and flat["val_n"] == 2.0
    assert scalar_metrics({"a": float("nan"), "b": 1}) == {"b": 1.0}


def _brute_force(y: np.ndarray, p: np.ndarray):
    """(threshold, sensitivity, specificity) for every candidate threshold, highest first."""
    rows = []
    for t in sorted(set(p.tolist()) | {1.0}, reverse=True):
        pred = p >= t
        rows.append((t, pred[y == 1].mean(), (~pred[y == 0]).mean()))
    return rows


def test_youden_threshold_maximises_j_and_prefers_the_highest() -> None:
    rows = _brute_force(Y, P)
    best_j = max(sens + spec - 1 for _, sens, spec in rows)
    upper = max(t for t, sens, spec in rows if np.isclose(sens + spec - 1, best_j))
    lower = P[P < upper].max()
    threshold = youden_threshold(Y, P)
    # Midway in the gap below the highest best-J score: the same J, the most margin.
    assert threshold == pytest.approx((upper + lower) / 2)
    m = binary_metrics(Y, P, threshold)
    assert m["sensitivity"] + m["specificity"] - 1 == pytest.approx(best_j)


@pytest.mark.parametrize("target", [0.5, 0.8, 0.9, 1.0])
def test_sensitivity_threshold_is_the_highest_reaching_the_target(target: float) -> None:
    rows = _brute_force(Y, P)
    expected = max(t for t, sens, _ in rows if sens >= target - 1e-12)
    threshold = sensitivity_threshold(Y, P, target)
    assert threshold == pytest.approx(expected)
    assert binary_metrics(Y, P, threshold)["sensitivity"] >= target
    # Any higher threshold misses the target.
    higher = [t for t, _, _ in rows if t > threshold]
    assert all(binary_metrics(Y, P, t)["sensitivity"] < target for t in higher)


def test_select_threshold_rules_and_descriptions() -> None:
    assert select_threshold(Y, P) == (youden_threshold(Y, P), "youden")
    threshold, rule = select_threshold(Y, P, "sensitivity", target_sensitivity=0.8)
    assert rule == "sensitivity>=0.80"
    assert threshold == sensitivity_threshold(Y, P, 0.8)
    with pytest.raises(ValueError, match="unknown threshold rule 'f1'"):
        select_threshold(Y, P, "f1")
    with pytest.raises(ValueError, match="both HP and SSA"):
        select_threshold([0, 0, 0], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="target sensitivity"):
        sensitivity_threshold(Y, P, 0.0)


def test_perfect_separation_thresholds_are_probabilities() -> None:
    y, p = np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.95])
    assert youden_threshold(y, p) == pytest.approx(0.5)  # midway between 0.2 and 0.8
    assert 0.0 <= sensitivity_threshold(y, p, 1.0) <= 1.0


def test_plots_are_png_files(tmp_path: Path) -> None:
    m = binary_metrics(Y, P, 0.5)
    cm_path = plot_confusion_matrix(m["confusion_matrix"], tmp_path / "cm.png", "val")
    roc_path = plot_roc(Y, P, tmp_path / "roc.png", "val ROC", threshold=0.5)
    one_class = plot_roc([0, 0], [0.1, 0.2], tmp_path / "roc1.png", "one class")
    for path in (cm_path, roc_path, one_class):
        with Image.open(path) as img:
            assert img.format == "PNG" and img.size[0] > 200 and img.size[1] > 200


def test_auc_interval_is_seeded_stratified_and_shrinks_with_data() -> None:
    from training.metrics import format_auc, roc_auc, roc_auc_interval

    rng = np.random.default_rng(3)

    def sample(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.r_[np.zeros(2 * n), np.ones(n)]
        return y, np.r_[rng.normal(0, 1, 2 * n), rng.normal(1.2, 1, n)]

    small, large = sample(40), sample(400)
    low, high = roc_auc_interval(*small)
    assert low < roc_auc(*small) < high
    assert roc_auc_interval(*small) == [low, high]  # seeded: the same data, the same interval
    wide, narrow = high - low, np.subtract(*roc_auc_interval(*large)[::-1])
    assert narrow < wide / 2  # ten times the data: about a third of the width
    assert roc_auc_interval([0, 0], [0.1, 0.2]) is None
    assert "roc_auc_ci95" not in binary_metrics(*small)  # per-epoch metrics skip the cost
    metrics = binary_metrics(*small, interval=True)
    assert metrics["roc_auc_ci95"] == [low, high]
    assert format_auc(metrics).startswith(f"{metrics['roc_auc']:.3f} (95 % CI {low:.3f}–")
