"""Section 1: each model variant in a process of its own, same weights, same input."""

from __future__ import annotations

from benchmarks.report.records import ModelRun, ModelSection, Spread
from benchmarks.report.text import (
    PRECISION_NAMES,
    answers_cell,
    bullets,
    faster,
    precision_name,
    ratio,
    table,
)
from benchmarks.report.text import num as _num
from benchmarks.variants import VARIANTS

EAGER = "torch-eager"
BEST_FP32 = ("torch-eager", "torch-channels-last", "torchscript-frozen", "torch-compile")
# The comparisons each batch states, (one, other); None = the fastest PyTorch FP32 variant.
PAIRS = (("ort-fp32", None), ("ort-int8", "ort-fp32"), ("ort-int8", "torch-int8"),
         ("torch-int8", None))
COLUMNS = ["variant", "precision", "batch", "p50 ms", "p95 ms", "p99 ms", "cold p50 ms",
           "images/s",
           "speed-up vs PyTorch eager (p50)", "setup s", "answers vs ONNX FP32", "n"]


def best_torch_fp32(runs: dict[str, ModelRun]) -> str | None:
    present = [name for name in BEST_FP32 if name in runs]
    return min(present, key=lambda name: runs[name].p50_ms) if present else None


def _vs(one: ModelRun, other: ModelRun, other_label: str | None = None) -> str:
    return faster(one.label, one.p50_ms, other_label or other.label, other.p50_ms,
                  samples=(one.samples_ms, other.samples_ms))


def model_findings(runs: dict[str, ModelRun]) -> list[str]:
    """One batch's comparisons, each computed from two p50s."""
    best = best_torch_fp32(runs)
    found = []
    if best and best != EAGER and EAGER in runs:
        found.append(f"Fastest PyTorch FP32: {_vs(runs[best], runs[EAGER], 'PyTorch eager')}.")
    elif best:
        found.append(f"Fastest PyTorch FP32: {runs[best].label} ({runs[best].p50_ms:.1f} ms).")
    for one, other in PAIRS:
        other = other or best
        if one in runs and other in runs:
            found.append(_vs(runs[one], runs[other]) + ".")
    return found


def _spread_line(spread: Spread) -> str:
    labels = ", ".join(f"{c} {n}" for c, n in spread.labels.items())
    return (f"The reference's P({spread.positive_class}) on them spans "
            f"{spread.p_min:.3f}–{spread.p_max:.3f} (threshold {spread.threshold:.3f}; labels "
            f"{labels}); a label mismatch counts on "
            + ", ".join(f"{n}/{spread.images} images for {precision_name(p)}"
                        for p, n in spread.labels_checked.items())
            + " (on the others the reference is within the tolerance of the threshold).")


def answers_findings(model: ModelSection) -> list[str]:
    """What the answer checks found, and how discriminating the check images were."""
    if model.answers_ok is None:
        return []
    wrong = [VARIANTS[k].label if k in VARIANTS else k
             for k, ok in model.answers_ok.items() if not ok]
    lines = [(f"Answers: **WRONG** for {', '.join(wrong)}." if wrong else
              f"Answers: all {len(model.answers_ok)} variants within tolerance of ONNX FP32 on "
              f"{model.reference_images} check images.")]
    if model.spread is not None:
        lines.append(_spread_line(model.spread))
    return lines


def _rows(model: ModelSection) -> list[list]:
    rows = []
    for batch, runs in model.by_batch.items():
        eager = runs[EAGER].p50_ms if EAGER in runs else None
        rows += [[run.label, PRECISION_NAMES.get(run.precision, "?"), batch, _num(run.p50_ms),
                  _num(run.p95_ms), _num(run.p99_ms), _num(run.cold_p50_ms),
                  _num(run.images_per_s),
                  ratio(eager, run.p50_ms), _num(run.setup_s), answers_cell(run.answers),
                  run.n] for run in runs.values()]
    pre = model.preprocessing
    if pre:
        rows.append(["preprocessing (numpy + Pillow)", "–", 1, _num(pre.p50_ms, 2),
                     _num(pre.p95_ms, 2), _num(pre.p99_ms, 2), "–", _num(pre.images_per_s),
                     "–", "–", "–", pre.n])
    return rows


def _settings(model: ModelSection) -> list[str]:
    settings = {}
    for runs in model.by_batch.values():
        for name, run in runs.items():
            runtime = (f"torch {run.torch}, {run.torch_threads} threads" if run.torch
                       else f"onnxruntime {run.onnxruntime}")
            if name == "torch-compile" and run.first_call_s is not None:
                runtime += f"; compiling, at the first call, took {run.first_call_s:.1f} s"
            settings[name] = f"- **{run.label}**: {run.setting} ({runtime})"
    return ["", "How each variant is set up:", "", *settings.values()] if settings else []


def model_section(model: ModelSection | None) -> str:
    if model is None:
        return "## 1. Model only\n\nNo data."
    text = ["## 1. Model only (same weights, same preprocessed input)", "",
            "Each variant in a process of its own, rounds interleaved (round r runs every "
            "variant once, in an order rotated by r). In its turn a variant runs twice and the "
            "second call is timed, as in a server under load; \"cold\" is the first, after "
            "another variant's turn filled the caches. "
            "Setup = load + build + the first call (tracing, freezing, compiling).", "",
            table(COLUMNS, _rows(model)), ""]
    for batch, runs in model.by_batch.items():
        text += [f"Batch {batch}:", "", *bullets(model_findings(runs)), ""]
    return "\n".join(text + answers_findings(model) + _settings(model))
