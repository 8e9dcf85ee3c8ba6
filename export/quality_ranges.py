"""The training images' input quality ranges, recorded at export as `mhist.quality`.

Serving (services/core/quality.py)
measures focus, tissue fraction and stain on every upload and warns
when a value falls outside these ranges; each such warning is a rule that answers
`not_assessable` instead of a class. They are learned from the images training fit on (the
`train` partition minus the validation split, export/splits.py), measured exactly as serving
measures them (the model's own resize and centre crop), and checked on the validation split:
the report says how many held-out images would have been flagged.

Each range is the 1st-99th percentile widened on both sides by MARGIN x its width, with a floor:
- percentiles, not min/max, so one odd training image does not stretch a range;
- a margin because even a new patch from the same slides falls outside [p1, p99] 2 % of the
  time by definition, more when percentiles come from a few hundred images, and a flag on an
  ordinary patch teaches users to ignore flags;
- a floor because a statistic that barely varies in training (one lab, one scanner, or the
  synthetic sample's almost fixed eosin) would otherwise flag any re-scan of the same slides.
Focus is widened in log space: blur and contrast change it by factors, not by amounts.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from services.core.preprocessing import PreprocessSpec, resize_and_crop, to_rgb
from services.core.quality import (
    INPUT_WARNING_CODES,
    OD_CHANNELS,
    STAINS,
    Measurement,
    QualityRanges,
    Range,
    measure,
)

PERCENTILES = (1.0, 99.0)
MARGIN = 0.5  # of the 1st-99th percentile width, on each side
# Smallest half-margin per statistic: focus as a factor (x/÷ 1.25), tissue as a share of the
# patch, optical density in OD units (0.02 ≈ 5 % transmitted light, below what a viewer sees).
FLOORS = {"focus": float(np.log(1.25)), "tissue_fraction": 0.02, "od": 0.02}


class NoRangesError(ValueError):
    """The training images give no ranges (none, or none with tissue): export goes on without
    mhist.quality, and serving without the checks."""


def measure_images(paths: Sequence[Path], spec: PreprocessSpec) -> list[Measurement]:
    """Each image measured as serving measures an upload: its spec.size RGB crop."""
    found = []
    for path in paths:
        with Image.open(path) as img:
            found.append(measure(resize_and_crop(to_rgb(img), spec)))
    return found


def widened(values: Sequence[float], floor: float, log: bool = False,
            bounds: tuple[float, float] = (-np.inf, np.inf)) -> Range:
    """The percentile range of `values`, widened by MARGIN of its width (at least `floor`)."""
    data = np.asarray(values, dtype=np.float64)
    if log:
        data = np.log(np.maximum(data, 1e-6))  # a focus of 0 (a flat image) stays finite
    low, high = np.percentile(data, PERCENTILES)
    pad = max(MARGIN * (high - low), floor)
    low, high = low - pad, high + pad
    if log:
        low, high = np.exp(low), np.exp(high)
    return Range(float(max(low, bounds[0])), float(min(high, bounds[1])))


def learn_ranges(measured: Sequence[Measurement], source: str) -> QualityRanges:
    """Ranges over the training measurements; stain over those with enough tissue to judge."""
    if not measured:
        raise NoRangesError("no training images to learn input quality ranges from")
    stained = [m for m in measured if m.od_mean is not None and m.stain is not None]
    if not stained:
        raise NoRangesError("no training image has enough tissue to learn stain ranges from")
    od = np.array([m.od_mean for m in stained])  # (N, 3)
    hed = np.array([m.stain for m in stained])  # (N, 2)
    return QualityRanges(
        focus=widened([m.focus for m in measured], FLOORS["focus"], log=True),
        tissue_fraction=widened([m.tissue_fraction for m in measured],
                                FLOORS["tissue_fraction"], bounds=(0.0, 1.0)),
        od_mean={c: widened(od[:, i], FLOORS["od"]) for i, c in enumerate(OD_CHANNELS)},
        stain={s: widened(hed[:, i], FLOORS["od"]) for i, s in enumerate(STAINS)},
        source=source,
    )


def flag_rates(ranges: QualityRanges, measured: Sequence[Measurement]) -> dict:
    """How many of `measured` each warning code would flag (for held-out images: false alarms).

    Every input warning is a rule that makes the answer `not_assessable`
    (services/core/quality.py), so `flagged` is also how many images serving would turn away
    and `by_code` how many each rule would: `not_assessable` says so in those words."""
    counts = dict.fromkeys(INPUT_WARNING_CODES, 0)
    flagged = 0
    for m in measured:
        codes = {w["code"] for w in ranges.warnings(m)}
        flagged += bool(codes)
        for code in codes:
            counts[code] += 1
    return {"images": len(measured), "flagged": flagged, "by_code": counts,
            "not_assessable": {"images": flagged, "share": round(flagged / len(measured), 4)
                               if measured else None, "by_rule": dict(counts)}}


def quality_ranges(fit: Sequence, validation: Sequence, spec: PreprocessSpec,
                   fit_split: str, gate_split: str) -> tuple[QualityRanges, dict]:
    """(ranges from the `fit` records, report with the `validation` records' flag rates)."""
    ranges = learn_ranges(
        measure_images([r.path for r in fit], spec),
        f"{fit_split} split of the train partition, {len(fit)} images, percentiles "
        f"{PERCENTILES[0]:g}-{PERCENTILES[1]:g} widened by {MARGIN:g} of their width",
    )
    report = {
        "ranges": ranges.to_dict(),
        "learned_on": {"split": fit_split, "images": len(fit)},
        gate_split: flag_rates(ranges, measure_images([r.path for r in validation], spec)),
    }
    return ranges, report
