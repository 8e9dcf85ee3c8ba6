"""Binary metrics with SSA as the positive class, threshold selection, and their plots.

Convention everywhere: y_true is 1 for SSA and 0 for HP; `prob` is P(SSA); an image is called
SSA when prob >= threshold (the same `>=` as scikit-learn's roc_curve and the serving code).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from sklearn import metrics as skm

from training import CLASSES, POSITIVE_CLASS

THRESHOLD_RULES = ("youden", "sensitivity")


def _as_arrays(y_true, prob) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).astype(np.int64).ravel()
    p = np.asarray(prob, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"y_true has {y.size} values but prob has {p.size}")
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError("y_true must hold 0 (HP) and 1 (SSA) only")
    return y, p


def roc_auc(y_true, prob) -> float | None:
    """ROC AUC, or None when only one class is present (AUC is undefined, not 0.5)."""
    y, p = _as_arrays(y_true, prob)
    if np.unique(y).size < 2:
        return None
    return float(skm.roc_auc_score(y, p))


def binary_metrics(y_true, prob, threshold: float = 0.5, interval: bool = False) -> dict:
    """All the project's metrics at one threshold; plain floats/ints/lists (JSON-ready).

    With `interval`, also the AUC's bootstrap 95 % interval (`roc_auc_ci95`): for the numbers
    a report shows, not for every epoch's (it costs about 0.3 s at MHIST's train size).

    confusion_matrix is [[TN, FP], [FN, TP]] with rows = truth, columns = prediction, in
    CLASSES order (HP, SSA).
    """
    y, p = _as_arrays(y_true, prob)
    pred = (p >= threshold).astype(np.int64)
    cm = skm.confusion_matrix(y, pred, labels=[0, 1])
    tn, fp, fn, tp = (int(v) for v in cm.ravel())
    return {
        "accuracy": float(skm.accuracy_score(y, pred)) if y.size else 0.0,
        "sensitivity": float(skm.recall_score(y, pred, pos_label=1, zero_division=0)),
        "specificity": tn / (tn + fp) if tn + fp else 0.0,
        "precision": float(skm.precision_score(y, pred, pos_label=1, zero_division=0)),
        "f1": float(skm.f1_score(y, pred, pos_label=1, zero_division=0)),
        "balanced_accuracy": _balanced_accuracy(tp, fn, tn, fp),
        "roc_auc": roc_auc(y, p),
        "threshold": float(threshold),
        "n": int(y.size),
        "confusion_matrix": cm.astype(int).tolist(),
        **({"roc_auc_ci95": roc_auc_interval(y, p)} if interval else {}),
    }


BOOTSTRAP_ROUNDS = 2000
BOOTSTRAP_SEED = 0


def roc_auc_interval(y_true, prob, level: float = 0.95, rounds: int = BOOTSTRAP_ROUNDS,
                     seed: int = BOOTSTRAP_SEED) -> list[float] | None:
    """[low, high]: a percentile bootstrap interval of the ROC AUC, resampling positives and
    negatives apart (stratified, so every round has both classes). None with one class.

    A 124-image test partition gives an AUC to three decimals, but its interval spans about
    ±0.05: the interval says how much of the third decimal is noise. Seeded: the same data
    gives the same interval.
    """
    y, p = _as_arrays(y_true, prob)
    positives, negatives = p[y == 1], p[y == 0]
    if positives.size == 0 or negatives.size == 0:
        return None
    rng = np.random.default_rng(seed)
    pos = positives[rng.integers(0, positives.size, (rounds, positives.size))]  # (R, n_pos)
    neg = negatives[rng.integers(0, negatives.size, (rounds, negatives.size))]  # (R, n_neg)
    # Mann-Whitney per round: the share of (positive, negative) pairs ranked right, ties half.
    neg.sort(axis=1)
    below = np.stack([np.searchsorted(row, pos_row, side="left")
                      for row, pos_row in zip(neg, pos, strict=True)])
    at_or_below = np.stack([np.searchsorted(row, pos_row, side="right")
                            for row, pos_row in zip(neg, pos, strict=True)])
    aucs = (below + at_or_below).sum(axis=1) / (2.0 * positives.size * negatives.size)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(aucs, [tail, 1.0 - tail])
    return [float(low), float(high)]


def _balanced_accuracy(tp: int, fn: int, tn: int, fp: int) -> float:
    # Mean recall over the classes PRESENT (scikit-learn's definition, without its warning when
    # one class is absent from a tiny validation split).
    recalls = [tp / (tp + fn)] if tp + fn else []
    recalls += [tn / (tn + fp)] if tn + fp else []
    return float(np.mean(recalls)) if recalls else 0.0


def format_auc(metrics: dict) -> str:
    """`0.899 (95 % CI 0.842–0.951)`, `n/a` without an AUC: the interval beside the number."""
    auc, interval = metrics.get("roc_auc"), metrics.get("roc_auc_ci95")
    if auc is None:
        return "n/a"
    return f"{auc:.3f}" + (f" (95 % CI {interval[0]:.3f}–{interval[1]:.3f})" if interval else "")


def class_counts(metrics: dict) -> tuple[int, int]:
    """(positives, negatives) from binary_metrics' confusion matrix [[TN, FP], [FN, TP]]."""
    (tn, fp), (fn, tp) = metrics["confusion_matrix"]
    return fn + tp, tn + fp


def chance_bounds(positives: int, negatives: int, z: float) -> dict[str, float]:
    """What a model that learnt nothing exceeds only by luck, `z` standard errors above 0.5.

    roc_auc: the AUC's standard error under the null (Hanley & McNeil 1982, AUC = 0.5),
    sqrt((n_pos + n_neg + 1) / (12 n_pos n_neg)). balanced_accuracy: the variance of
    (sensitivity + specificity) / 2 of a random labeller is at most (1/n_pos + 1/n_neg) / 16.
    z = 1.645 is a one-sided 5 % test, z = 3 about 0.1 %. Small splits need wide margins: a
    validation split of 9 SSA and 19 HP images asks AUC > 0.70 at z = 1.645.
    """
    if positives < 1 or negatives < 1:
        raise ValueError(f"chance bounds need both classes: {positives} positive and "
                         f"{negatives} negative images")
    auc_se = math.sqrt((positives + negatives + 1) / (12 * positives * negatives))
    accuracy_se = math.sqrt((1 / positives + 1 / negatives) / 16)
    return {"roc_auc": 0.5 + z * auc_se, "balanced_accuracy": 0.5 + z * accuracy_se}


def scalar_metrics(metrics: dict, prefix: str = "") -> dict[str, float]:
    """The finite scalar entries, for mlflow.log_metrics (it rejects None and lists)."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if math.isfinite(value):
            out[prefix + key] = float(value)
    return out


def youden_threshold(y_true, prob) -> float:
    """Threshold maximising Youden's J = sensitivity + specificity - 1 on these scores.

    Equivalent to maximising balanced accuracy. Ties go to the highest threshold (fewest
    false alarms for the same J). The returned value sits midway between that score and the
    next lower one: every value in that gap gives the same J on validation, and the middle
    leaves the most margin for new images and for INT8's small probability shifts (a
    threshold exactly on a validation score flips that image at the slightest noise).
    """
    y, p = _as_arrays(y_true, prob)
    _require_both_classes(y)
    fpr, tpr, thresholds = skm.roc_curve(y, p, pos_label=1)
    best = int(np.argmax(tpr - fpr))  # argmax returns the first, i.e. highest, threshold
    upper = _finite(thresholds[best])
    below = p[p < upper]
    return float((upper + below.max()) / 2.0) if below.size else upper


def sensitivity_threshold(y_true, prob, target: float) -> float:
    """The highest threshold whose sensitivity (recall of SSA) on these scores is >= target.

    Highest, because among the thresholds that catch enough SSA it raises the fewest false
    alarms. roc_curve's drop_intermediate is off so no candidate threshold is skipped.
    """
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target sensitivity must be in (0, 1], got {target}")
    y, p = _as_arrays(y_true, prob)
    _require_both_classes(y)
    _, tpr, thresholds = skm.roc_curve(y, p, pos_label=1, drop_intermediate=False)
    reaching = np.flatnonzero(tpr >= target - 1e-12)  # tolerance: 0.9 from 9/10 must count
    return _finite(thresholds[reaching[0]])


def select_threshold(
    y_true, prob, rule: str = "youden", target_sensitivity: float = 0.9
) -> tuple[float, str]:
    """(threshold, rule description for the model card): 'youden' or 'sensitivity>=0.90'."""
    if rule == "youden":
        return youden_threshold(y_true, prob), "youden"
    if rule == "sensitivity":
        return (
            sensitivity_threshold(y_true, prob, target_sensitivity),
            f"sensitivity>={target_sensitivity:.2f}",
        )
    raise ValueError(f"unknown threshold rule {rule!r}; choose one of {', '.join(THRESHOLD_RULES)}")


def _require_both_classes(y: np.ndarray) -> None:
    if np.unique(y).size < 2:
        raise ValueError(
            "choosing a threshold needs both HP and SSA among the validation images; "
            "use more data or a larger --val-fraction"
        )


def _finite(threshold: float) -> float:
    # roc_curve's first threshold is +inf ("call nothing positive"); a usable threshold is a
    # probability, so clamp to [0, 1].
    return float(min(max(threshold, 0.0), 1.0))


def plot_confusion_matrix(cm, path: str | Path, title: str) -> Path:
    """PNG of a 2×2 confusion matrix with counts and row percentages."""
    from matplotlib.figure import Figure  # Figure + Agg canvas: no pyplot, no GUI backend

    cm = np.asarray(cm, dtype=np.int64)
    fig = Figure(figsize=(4.2, 3.8), dpi=100)
    ax = fig.add_subplot()
    ax.imshow(cm, cmap="Blues", vmin=0)
    rows = cm.sum(axis=1, keepdims=True).clip(min=1)
    for i in range(2):
        for j in range(2):
            dark = cm[i, j] > cm.max() / 2
            ax.text(j, i, f"{cm[i, j]}\n{100 * cm[i, j] / rows[i, 0]:.0f}%", ha="center",
                    va="center", color="white" if dark else "black")
    ax.set_xticks([0, 1], labels=list(CLASSES))
    ax.set_yticks([0, 1], labels=list(CLASSES))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


def plot_roc(y_true, prob, path: str | Path, title: str, threshold: float | None = None) -> Path:
    """PNG of the ROC curve (SSA positive), with the operating point of `threshold` marked."""
    from matplotlib.figure import Figure

    y, p = _as_arrays(y_true, prob)
    fig = Figure(figsize=(4.2, 4.0), dpi=100)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    auc = roc_auc(y, p)
    if auc is not None:
        fpr, tpr, _ = skm.roc_curve(y, p, pos_label=1)
        ax.plot(fpr, tpr, label=f"AUC {auc:.3f}")
        if threshold is not None:
            m = binary_metrics(y, p, threshold)
            ax.plot(1 - m["specificity"], m["sensitivity"], "o", color="crimson",
                    label=f"threshold {threshold:.3f}")
        ax.legend(loc="lower right")
    else:
        ax.text(0.5, 0.5, "AUC undefined: one class only", ha="center")
    ax.set_xlabel("1 - specificity (HP called SSA)")
    ax.set_ylabel(f"sensitivity ({POSITIVE_CLASS} found)")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


# ---------------------------------------------------------------- annotator agreement

ANNOTATORS = 7
# MHIST's paper reports its models by how far the 7 pathologists agreed on an image; "agree" and
# "split" pool its four levels so that each group holds enough images to say something.
AGREEMENT_GROUPS: dict[str, tuple[int, ...]] = {
    "agree": (0, 1, 6, 7),  # unanimous or one dissenter
    "split": (2, 3, 4, 5),
    "very_easy": (0, 7),
    "easy": (1, 6),
    "hard": (2, 5),
    "very_hard": (3, 4),
}


def agreement_metrics(y_true, prob, votes, threshold: float = 0.5) -> dict:
    """Metrics per annotator-agreement group and per vote count (SSA votes of 7); JSON-ready.

    {"threshold", "groups": {name: {"votes", "n", "accuracy", "balanced_accuracy", "roc_auc",
    "mean_prob_ssa"}}, "by_votes": {"0".."7": {"n", "accuracy", "mean_prob_ssa"}}}.
    A group's AUC is None when it holds one class only (votes 0 and 1 are always HP), and its
    accuracy is None when it is empty: undefined, not 0.
    """
    y, p = _as_arrays(y_true, prob)
    v = np.asarray(votes).astype(np.int64).ravel()
    if v.shape != y.shape:
        raise ValueError(f"votes has {v.size} values but y_true has {y.size}")
    if v.size and not ((v >= 0) & (v <= ANNOTATORS)).all():
        raise ValueError(f"votes must be integers 0-{ANNOTATORS}")
    correct = (p >= threshold).astype(np.int64) == y
    groups = {name: _group(y, p, correct, np.isin(v, members)) | {"votes": list(members)}
              for name, members in AGREEMENT_GROUPS.items()}
    by_votes = {}
    for count in range(ANNOTATORS + 1):
        mask = v == count
        by_votes[str(count)] = {"n": int(mask.sum()),
                                "accuracy": _mean_or_none(correct[mask]),
                                "mean_prob_ssa": _mean_or_none(p[mask])}
    return {"threshold": float(threshold), "groups": groups, "by_votes": by_votes}


def _group(y: np.ndarray, p: np.ndarray, correct: np.ndarray, mask: np.ndarray) -> dict:
    tp = int((correct & (y == 1) & mask).sum())
    tn = int((correct & (y == 0) & mask).sum())
    fn = int(((y == 1) & mask).sum()) - tp
    fp = int(((y == 0) & mask).sum()) - tn
    return {"n": int(mask.sum()),
            "accuracy": _mean_or_none(correct[mask]),
            "balanced_accuracy": _balanced_accuracy(tp, fn, tn, fp) if mask.any() else None,
            "roc_auc": roc_auc(y[mask], p[mask]),
            "mean_prob_ssa": _mean_or_none(p[mask])}


def _mean_or_none(values: np.ndarray) -> float | None:
    return float(np.mean(values)) if values.size else None


def agreement_scalars(metrics: dict, prefix: str = "") -> dict[str, float]:
    """Flat, finite entries for mlflow.log_metrics: {prefix}split_roc_auc, {prefix}votes3_n…"""
    out = {}
    for name, group in metrics["groups"].items():
        out |= scalar_metrics({k: v for k, v in group.items() if k != "votes"}, f"{prefix}{name}_")
    for count, entry in metrics["by_votes"].items():
        out |= scalar_metrics(entry, f"{prefix}votes{count}_")
    return out


def format_agreement(metrics: dict) -> str:
    """One line: AUC and accuracy of the agree and split groups, then accuracy per vote count."""
    def number(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    parts = [f"{name} ({'|'.join(map(str, g['votes']))}, n={g['n']}) AUC {number(g['roc_auc'])} "
             f"acc {number(g['accuracy'])}"
             for name, g in metrics["groups"].items() if name in ("agree", "split")]
    per_vote = " ".join(f"{count}/7:{number(e['accuracy'])}"
                        for count, e in metrics["by_votes"].items() if e["n"])
    return "; ".join(parts) + f"; accuracy by SSA votes {per_vote}"
