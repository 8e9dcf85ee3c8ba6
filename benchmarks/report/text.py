"""Formatting shared by the sections: numbers, ratios, tables, comparisons and the names the
report gives targets, containers and processes."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from benchmarks import BASELINE
from benchmarks.report.records import Answers
from services.targets import TARGETS

# How the report names a registry target; a new target shows its registry name.
DISPLAY = {"flask": "Flask", "sagemaker": "SageMaker", "lambda": "Lambda"}
PRECISION_NAMES = {"fp32": "FP32", "int8": "INT8"}
# The cold-start floor: `run` of the base image with `python3 -c pass`.
FLOOR = "floor"


def num(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def ratio(value: float | None, base: float | None) -> str:
    if not value or not base:
        return "–"
    return f"×{value / base:.2f}"


def table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def bullets(lines: list[str]) -> list[str]:
    return [f"- {line}" for line in lines]


def precision_name(precision: str | None) -> str:
    return PRECISION_NAMES.get(precision, precision)


def _quartiles(samples: Sequence[float]) -> tuple[float, float] | None:
    if not samples:
        return None
    q1, q3 = np.percentile(np.asarray(samples, dtype=np.float64), [25, 75])
    return float(q1), float(q3)


def faster(name: str, a: float | None, other: str, b: float | None, unit: str = "ms",
           samples: tuple[Sequence[float], Sequence[float]] = ((), ())) -> str:
    """'A (x ms) vs B (y ms): A ×r faster' — or slower, or 'the same' — from two values; with
    both records' samples, whether their interquartile ranges overlap."""
    if not a or not b:
        return f"{name} vs {other}: no data"
    digits = 1 if unit == "ms" else 2
    text = f"{name} ({a:.{digits}f} {unit}) vs {other} ({b:.{digits}f} {unit}): "
    if a == b:
        text += "the same"
    elif a < b:
        text += f"{name} ×{b / a:.2f} faster"
    else:
        text += f"{name} ×{a / b:.2f} slower"
    qa, qb = _quartiles(samples[0]), _quartiles(samples[1])
    if qa and qb:
        overlap = qa[0] <= qb[1] and qb[0] <= qa[1]
        text += (" (their interquartile ranges overlap)" if overlap
                 else " (their interquartile ranges do not overlap)")
    return text


def answers_cell(answers: Answers | None) -> str:
    """A table cell: worst |Δp| against the reference and how many labels agree."""
    if answers is None:
        return "–"
    worst = f"{answers.max_abs_diff:.1e}" if answers.max_abs_diff is not None else "–"
    verdict = "ok" if answers.ok else "**WRONG**"
    return (f"{verdict} — max \\|Δp\\| {worst} (tolerance {answers.tolerance:g}), "
            f"labels {answers.labels_agree}/{answers.images}")


def target_name(target: str) -> str:
    return DISPLAY.get(target, target)


def container_label(key: str) -> str:
    """`flask-int8` → 'Flask container, INT8'; BASELINE → the PyTorch baseline container."""
    if key == BASELINE:
        return "PyTorch baseline container (frozen TorchScript, FP32)"
    if key == FLOOR:
        return "floor: base image, `python3 -c pass`"
    target, _, precision = key.rpartition("-")
    kind = ("image via Runtime API" if target in TARGETS
            and TARGETS[target].protocol == "lambda-runtime" else "container")
    return f"{target_name(target)} {kind}, {precision_name(precision)}"


def process_label(name: str) -> str:
    """`flask-int8` (a process/ cold-start record) → 'Flask: create_app (target http), INT8'."""
    if name == "torch-eager":
        return "torch + torchvision (checkpoint), eager"
    if name == "torchscript-frozen":
        return "torch (TorchScript, frozen at load)"
    probe, _, precision = name.rpartition("-")
    if probe == "ort":
        what = "ORT core (services.core.model)"
    elif probe in TARGETS and TARGETS[probe].protocol == "lambda-runtime":
        what = f"{target_name(probe)}: make_handler (INIT) + invoke"
    elif probe in TARGETS:
        what = f"{target_name(probe)}: create_app (target {TARGETS[probe].name})"
    else:
        what = probe
    return f"{what}, {precision_name(precision)}"
