"""Probabilities a pathologist can weigh: temperature scaling and an optional "uncertain" band.

Not INT8 calibration (export/quantize.py picks activation ranges): this makes P(SSA) mean what
it says. Both are fitted on the validation split training held out (export/splits.py), for each
precision on that file's own logits, and stored in the file's metadata (`mhist.calibration`,
`mhist.uncertain_band`), where the one serving core applies them. The test partition is read
once, after every gate, for the report only.

- Temperature scaling (Guo et al., 2017): served probabilities are softmax(logits / T), T
  minimising the validation negative log-likelihood. T > 0 keeps the order of every margin, so
  the threshold maps to a calibrated threshold and no label changes.
- The band: a symmetric interval in log-odds around the calibrated threshold; images inside it
  are answered "uncertain". Its width is the narrowest that reaches a target accuracy on the
  images left (or the widest that keeps a target coverage), read off validation.
- ECE here is the calibration error of P(positive) (15 equal-width bins, the binary form of
  Guo's top-label ECE): the threshold, the band and the reliability diagram live on P(positive).
"""

from __future__ import annotations

import csv
import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax
from sklearn.metrics import brier_score_loss

from export.convert import ExportError, read_metadata, write_metadata
from export.evaluate import load_batch
from services.core.metadata import ModelMetadata, calibrated_threshold
from services.core.model import InferenceModel
from services.core.preprocessing import PreprocessSpec

ECE_BINS = 15
# T outside this range means the logits carry no usable scale (or the split is separable and
# the NLL keeps falling as T → 0); the fit stops at the bound and the report says so.
TEMPERATURE_BOUNDS = (0.05, 20.0)
FITTED_ON = "validation"
PRECISIONS = ("fp32", "int8")


@dataclass(frozen=True)
class TemperatureFit:
    temperature: float
    nll_before: float  # at T = 1
    nll_after: float
    at_bound: bool
    images: int


@dataclass(frozen=True)
class BandTarget:
    """What the band is chosen for: an accuracy on the images answered, or a coverage."""

    accuracy: float | None = None
    coverage: float | None = None

    def __post_init__(self) -> None:
        given = [v for v in (self.accuracy, self.coverage) if v is not None]
        if len(given) != 1 or not 0.0 < given[0] <= 1.0:
            raise ValueError("an uncertain band needs exactly one target, accuracy or coverage, "
                             f"in (0, 1]; got accuracy={self.accuracy}, coverage={self.coverage}")

    def to_dict(self) -> dict:
        return {"accuracy": self.accuracy} if self.accuracy is not None else {
            "coverage": self.coverage}


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of softmax(logits / T); (N, C), (N,) class indices."""
    log_p = log_softmax(np.asarray(logits, np.float64) / temperature, axis=1)
    return float(-log_p[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> TemperatureFit:
    """T minimising the NLL, searched on log T (the NLL is convex in 1/T, so one minimum)."""
    if len(labels) == 0:
        raise ExportError("no validation images to fit the temperature on; pass "
                          "--no-temperature-scaling to export without calibration")
    low, high = (math.log(b) for b in TEMPERATURE_BOUNDS)
    found = minimize_scalar(lambda log_t: nll(logits, labels, math.exp(log_t)),
                            bounds=(low, high), method="bounded", options={"xatol": 1e-6})
    temperature, before = math.exp(found.x), nll(logits, labels)
    after = nll(logits, labels, temperature)
    if after > before:  # a search that stopped short must never make things worse than T = 1
        temperature, after = 1.0, before
    at_bound = bool(min(abs(found.x - low), abs(found.x - high)) < 1e-3)
    for bound in TEMPERATURE_BOUNDS:
        # A separable validation split: the NLL underflows to 0 as T → 0 and the search can stop
        # anywhere on the flat part; the minimiser is the bound, and the report must say so.
        at_edge = nll(logits, labels, bound)
        if at_edge <= after:
            temperature, after, at_bound = bound, at_edge, True
    return TemperatureFit(temperature, before, after, at_bound, len(labels))


def reliability_bins(y: np.ndarray, p: np.ndarray, bins: int = ECE_BINS) -> list[dict]:
    """Equal-width bins of P(positive): count, mean predicted, observed fraction positive."""
    index = np.minimum((np.asarray(p) * bins).astype(int), bins - 1)  # p = 1.0 → last bin
    rows = []
    for b in range(bins):
        chosen = index == b
        if chosen.any():
            rows.append({"low": b / bins, "high": (b + 1) / bins, "count": int(chosen.sum()),
                         "predicted": float(p[chosen].mean()),
                         "observed": float(y[chosen].mean())})
    return rows


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = ECE_BINS) -> float:
    """Σ_b (n_b / n) |mean p_b − fraction positive_b| over non-empty bins."""
    rows = reliability_bins(y, p, bins)
    n = sum(r["count"] for r in rows)
    return float(sum(r["count"] / n * abs(r["predicted"] - r["observed"]) for r in rows))


def calibration_metrics(logits: np.ndarray, labels: np.ndarray, positive: int,
                        temperature: float = 1.0) -> dict:
    """ECE (15 bins), Brier score and NLL of softmax(logits / T) on P(positive)."""
    p = softmax(np.asarray(logits, np.float64) / temperature, axis=1)[:, positive]
    y = (labels == positive).astype(np.int64)
    return {"ece": expected_calibration_error(y, p),
            "brier": float(brier_score_loss(y, p, pos_label=1)) if len(y) else float("nan"),
            "nll": nll(logits, labels, temperature), "images": len(y)}


# --- the uncertain band ----------------------------------------------------------------------

def _logit(p: np.ndarray | float) -> np.ndarray:
    q = np.clip(np.asarray(p, np.float64), 1e-15, 1 - 1e-15)
    return np.log(q) - np.log1p(-q)


def band_edges(cut: float, half_width: float) -> tuple[float, float]:
    """[low, high] in probability: `cut` ± half_width in log-odds."""
    centre = float(_logit(cut))
    return (float(1 / (1 + np.exp(-(centre - half_width)))),
            float(1 / (1 + np.exp(-(centre + half_width)))))


def band_outcome(p: np.ndarray, correct: np.ndarray, low: float, high: float) -> dict:
    """Coverage and accuracy of the answers outside (low, high): the serving rule itself."""
    answered = ~((low < p) & (p < high))
    return {"coverage": float(answered.mean()) if len(p) else 0.0,
            "accuracy": float(correct[answered].mean()) if answered.any() else None,
            "answered": int(answered.sum()), "images": len(p)}


def coverage_curve(p: np.ndarray, correct: np.ndarray, cut: float) -> list[dict]:
    """Every band that separates the images: excluding the k closest to the cut (in log-odds),
    k = 0..n−1, with the coverage and accuracy of the rest. A band edge lies halfway between
    two distinct distances, so no image sits on it."""
    if len(p) == 0:
        raise ExportError("no validation images to choose the uncertain band on")
    distance = np.abs(_logit(p) - _logit(cut))
    order = np.argsort(distance, kind="stable")
    d, right = distance[order], np.asarray(correct, bool)[order]
    right_from = np.cumsum(right[::-1])[::-1]  # correct answers among images k..n−1
    n, rows = len(d), []
    for k in range(n):
        if k and d[k - 1] == d[k]:
            continue  # no band can split images at the same distance
        half = 0.0 if k == 0 else float((d[k - 1] + d[k]) / 2)
        low, high = band_edges(cut, half) if k else (cut, cut)
        rows.append({"excluded": k, "coverage": (n - k) / n,
                     "accuracy": float(right_from[k] / (n - k)),
                     "half_width_logit": half, "low": low, "high": high})
    return rows


def choose_band(curve: list[dict], target: BandTarget) -> dict:
    """The curve point a target asks for; ExportError when validation cannot reach it."""
    if target.coverage is not None:
        fits = [r for r in curve if r["coverage"] >= target.coverage]
        return fits[-1]  # the widest band still answering `coverage` of the images (k=0 fits)
    fits = [r for r in curve if r["accuracy"] >= target.accuracy]
    if not fits:
        best = max(curve, key=lambda r: r["accuracy"])
        raise ExportError(
            f"no uncertain band reaches accuracy {target.accuracy:g} on validation (the best is "
            f"{best['accuracy']:.3f} answering {100 * best['coverage']:.1f} % of the images); "
            "lower --uncertain-target-accuracy or use --uncertain-coverage")
    return fits[0]  # the narrowest band reaching the accuracy


# --- the export step -------------------------------------------------------------------------

@dataclass(frozen=True)
class SplitLogits:
    logits: np.ndarray  # (N, C) from the file's graph, float64
    labels: np.ndarray  # (N,) class indices


def file_logits(path: Path, records: Sequence, spec: PreprocessSpec, chunk: int = 16
                ) -> SplitLogits:
    """One ONNX file's raw logits on `records` (serving preprocessing), and their labels."""
    model = InferenceModel(path)
    meta = model.metadata
    batch = load_batch([r.path for r in records], spec)  # (N, 3, S, S)
    parts = [model.session.run([meta.output_name], {meta.input_name: batch[i: i + chunk]})[0]
             for i in range(0, len(batch), chunk)]
    logits = np.concatenate(parts).astype(np.float64) if parts else np.zeros((0, 2))
    labels = np.array([meta.classes.index(r.label) for r in records], dtype=np.int64)
    return SplitLogits(logits, labels)


def _served(data: SplitLogits, meta: ModelMetadata) -> tuple[np.ndarray, np.ndarray]:
    """(served P(positive), whether the label is right) under the file's own metadata."""
    pos = meta.positive_index
    raw = softmax(data.logits, axis=1)[:, pos]
    served = softmax(data.logits / meta.temperature, axis=1)[:, pos]
    correct = (raw >= meta.threshold) == (data.labels == pos)  # labels as serving decides them
    return served, correct


def calibrate_file(path: Path, validation: SplitLogits, scale: bool,
                   target: BandTarget | None, out_dir: Path, precision: str) -> dict:
    """Fit T (when `scale`) and the band on validation; rewrite the file's metadata with them.

    Returns this precision's report section; what others wrote in the metadata is kept.
    """
    meta = read_metadata(path)
    pos, section = meta.positive_index, {}
    calibration: dict = {}
    if scale:
        fit = fit_temperature(validation.logits, validation.labels)
        before = calibration_metrics(validation.logits, validation.labels, pos)
        after = calibration_metrics(validation.logits, validation.labels, pos, fit.temperature)
        calibration = {
            "method": "temperature", "temperature": fit.temperature, "fitted_on": FITTED_ON,
            "threshold": calibrated_threshold(meta.threshold, fit.temperature),
            "images": fit.images, "at_bound": fit.at_bound,
            "validation": {"ece_before": before["ece"], "ece_after": after["ece"],
                           "nll_before": fit.nll_before, "nll_after": fit.nll_after},
        }
        section = {"temperature": fit.temperature, "at_bound": fit.at_bound,
                   "threshold": calibration["threshold"],
                   "validation": {"before": before, "after": after}}
    meta = _replace(meta, calibration=calibration, uncertain_band={})
    if target is not None:
        served, correct = _served(validation, meta)
        curve = coverage_curve(served, correct, meta.served_threshold)
        chosen = choose_band(curve, target)
        outcome = band_outcome(served, correct, chosen["low"], chosen["high"])
        band = {"low": chosen["low"], "high": chosen["high"], "chosen_on": FITTED_ON,
                "space": f"{'calibrated ' if calibration else ''}P({meta.positive_class})",
                "half_width_logit": chosen["half_width_logit"], "target": target.to_dict(),
                "validation": outcome}
        meta = _replace(meta, uncertain_band=band)
        section["band"] = {**band, "curve_csv": _write_curve(curve, chosen, out_dir, precision)}
        _plot_curve(curve, chosen, target, out_dir / f"coverage_{precision}.png", precision)
    write_metadata(path, meta)
    return section


def _replace(meta: ModelMetadata, **changes) -> ModelMetadata:
    return dataclasses.replace(meta, **changes)


def report_split(path: Path, data: SplitLogits, split: str, out_dir: Path, precision: str
                 ) -> dict:
    """Before/after metrics, the band's coverage and accuracy and a reliability diagram of one
    calibrated file on one split (validation, or test for the final report)."""
    meta = read_metadata(path)
    pos = meta.positive_index
    result: dict = {"before": calibration_metrics(data.logits, data.labels, pos)}
    if meta.calibration:
        result["after"] = calibration_metrics(data.logits, data.labels, pos, meta.temperature)
    served, correct = _served(data, meta)
    if meta.uncertain_band:
        band = meta.uncertain_band
        result["band"] = band_outcome(served, correct, band["low"], band["high"])
    y = (data.labels == pos).astype(np.int64)
    raw = softmax(data.logits, axis=1)[:, pos]
    result["reliability_png"] = _plot_reliability(
        y, raw, served if meta.calibration else None,
        out_dir / f"reliability_{precision}_{split}.png", f"{precision.upper()}, {split}",
        meta.positive_class)
    return result


def _write_curve(curve: list[dict], chosen: dict, out_dir: Path, precision: str) -> str:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"coverage_{precision}.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*curve[0], "chosen"])
        writer.writeheader()
        writer.writerows({**r, "chosen": int(r is chosen)} for r in curve)
    return str(path)


def _figure():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _plot_curve(curve: list[dict], chosen: dict, target: BandTarget, path: Path,
                precision: str) -> None:
    plt = _figure()
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot([r["coverage"] for r in curve], [r["accuracy"] for r in curve], marker=".", lw=1)
    ax.scatter([chosen["coverage"]], [chosen["accuracy"]], color="red", zorder=3,
               label=f"chosen: band ({chosen['low']:.3f}, {chosen['high']:.3f})")
    ax.set(xlabel="coverage (share of images answered)", ylabel="accuracy of the answers",
           title=f"{precision.upper()} on validation, target {target.to_dict()}")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_reliability(y: np.ndarray, before: np.ndarray, after: np.ndarray | None, path: Path,
                      title: str, positive: str) -> str:
    plt = _figure()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, (ax, counts) = plt.subplots(2, 1, figsize=(5, 6), sharex=True,
                                     gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label="perfect calibration")
    for name, p in (("before", before), ("after (temperature)", after)):
        if p is None:
            continue
        rows = reliability_bins(y, p)
        ece = expected_calibration_error(y, p)
        ax.plot([r["predicted"] for r in rows], [r["observed"] for r in rows], marker="o",
                label=f"{name}: ECE {ece:.3f}")
        counts.hist(p, bins=ECE_BINS, range=(0, 1), alpha=0.5, label=name)
    ax.set(ylabel=f"observed fraction {positive}", title=f"Reliability, {title}",
           xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper left", fontsize=8)
    counts.set(xlabel=f"predicted P({positive}) ({ECE_BINS} bins)", ylabel="images")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)


def calibrate_export(paths: dict[str, Path], validation: Sequence, spec: PreprocessSpec,
                     scale: bool, target: BandTarget | None, out_dir: Path) -> dict:
    """The export step: each precision's T and band from its own validation logits, written into
    its file; the report section with validation numbers (and INT8 under FP32's T, to show
    what fitting per precision buys)."""
    section: dict = {"method": "temperature" if scale else None, "fitted_on": FITTED_ON,
                     "ece_bins": ECE_BINS, "band_target": target.to_dict() if target else None}
    logits = {}
    for precision, path in paths.items():
        logits[precision] = file_logits(path, validation, spec)
        section[precision] = calibrate_file(path, logits[precision], scale, target, out_dir,
                                            precision)
        section[precision].setdefault("validation", {}).update(
            report_split(path, logits[precision], FITTED_ON, out_dir, precision))
    if scale and {"fp32", "int8"} <= set(paths):
        meta = read_metadata(paths["int8"])
        section["int8"]["validation"]["after_with_fp32_temperature"] = calibration_metrics(
            logits["int8"].logits, logits["int8"].labels, meta.positive_index,
            section["fp32"]["temperature"])
    return section


def report_test(section: dict, paths: dict[str, Path], test: Sequence, spec: PreprocessSpec,
                out_dir: Path) -> None:
    """The final report on test, after every gate: numbers only, nothing is chosen on them."""
    for precision, path in paths.items():
        data = file_logits(path, test, spec)
        section[precision]["test"] = report_split(path, data, "test", out_dir, precision)


def flat_metrics(section: dict | None) -> dict[str, float]:
    """MLflow metrics: cal_<split>_<precision>_<metric>_<before|after>, band coverage and
    accuracy per split, and each precision's temperature."""
    out: dict[str, float] = {}
    for precision in PRECISIONS:
        part = (section or {}).get(precision) or {}
        if "temperature" in part:
            out[f"cal_{precision}_temperature"] = part["temperature"]
        for split in ("validation", "test"):
            numbers = part.get(split) or {}
            for stage in ("before", "after"):
                for key in ("ece", "brier", "nll"):
                    value = (numbers.get(stage) or {}).get(key)
                    if value is not None and math.isfinite(value):
                        out[f"cal_{split}_{precision}_{key}_{stage}"] = value
            for key in ("coverage", "accuracy"):
                value = (numbers.get("band") or {}).get(key)
                if value is not None and math.isfinite(value):
                    out[f"band_{split}_{precision}_{key}"] = value
    return out


def summary_lines(section: dict | None) -> list[str]:
    """What export prints: rounded for people (the report keeps full precision)."""
    lines: list[str] = []
    for precision in PRECISIONS:
        part = (section or {}).get(precision)
        if not part:
            continue
        if "temperature" in part:
            bound = " (at the search bound)" if part["at_bound"] else ""
            text = [f"calibration {precision.upper()}: T = {part['temperature']:.3f}{bound}, "
                    f"threshold {part['threshold']:.3f} in calibrated P"]
            for split in ("validation", "test"):
                numbers = part.get(split) or {}
                if "after" in numbers:
                    b, a = numbers["before"], numbers["after"]
                    text.append(f"{split} ECE {b['ece']:.3f} → {a['ece']:.3f}, Brier "
                                f"{b['brier']:.3f} → {a['brier']:.3f}, NLL {b['nll']:.3f} → "
                                f"{a['nll']:.3f} ({b['images']} images)")
            lines.append("; ".join(text))
        if "band" in part:
            band = part["band"]
            text = [f"uncertain band {precision.upper()}: P in ({band['low']:.3f}, "
                    f"{band['high']:.3f}), target {band['target']}"]
            for split in ("validation", "test"):
                got = (part.get(split) or {}).get("band")
                if got and got["accuracy"] is not None:
                    text.append(f"{split} coverage {100 * got['coverage']:.1f} %, accuracy "
                                f"{100 * got['accuracy']:.1f} %")
            lines.append("; ".join(text))
    return lines
