"""Input quality flags: is an upload the kind of patch the model was trained on?

Statistics of the RGB crop the network sees (after resize and centre crop, before
normalisation), compared with the ranges export recorded from the training images
(`mhist.quality`, export/quality_ranges.py):

- focus: variance of the Laplacian of the grey image (Pech-Pacheco et al., ICPR 2000; the
  4-neighbour kernel, as OpenCV's `Laplacian(ksize=1)`). Blur removes the fine detail the
  Laplacian responds to, so a blurry patch scores low.
- tissue fraction: share of tissue pixels by services/core/tissue.py's mask (Otsu on HSV
  saturation, clamped), the detector whole-slide inference already uses, at its resolution.
- stain: mean optical density per RGB channel over the tissue pixels, and the mean haematoxylin
  and eosin concentrations from Ruifrok & Johnston's colour deconvolution.
- colour: the highest saturation and the grey contrast at the mask's resolution; an image with
  content but no colour is greyscale, not H&E (a fixed rule: nothing to learn from training).

Every check runs on every crop and reports (`QualityRanges.warnings`); each input warning is a
reason the answer is `not_assessable` rather than a class (services/core/model.py). The slide
and region paths run the same checks per tile.

Why the model's own crop as the working resolution: it has a fixed size (preprocessing.size)
and a fixed physical scale (mhist.mpp), so the numbers do not depend on the upload's pixel
size, ranges recorded at export and values measured in serving come from the same pixels, and
the crop already exists (no second decode or resize). numpy + Pillow only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from services.core.tissue import SATURATION_BOUNDS, tissue_mask_and_saturation

# What the crop itself may be flagged for; each is also a reason the input is not assessable.
INPUT_WARNING_CODES = ("blurry", "low_tissue", "unusual_stain", "grayscale")
# Said of the model, on every answer it gives (services/core/model.py): its provenance says it
# learnt from training/sample_data.py's synthetic drawings, not from tissue.
SYNTHETIC_TRAINING = "synthetic_training_data"
WARNING_CODES = (*INPUT_WARNING_CODES, SYNTHETIC_TRAINING)
# The decision of an input the model was not made for (any input warning): neither class.
NOT_ASSESSABLE = "not_assessable"
OD_CHANNELS = ("r", "g", "b")
STAINS = ("haematoxylin", "eosin")
# Below this share of tissue there is nothing to measure the stain on (od_mean and stain are
# null) and focus is not judged.
MIN_TISSUE_TO_JUDGE = 0.05
# Pixels across the patch for the tissue mask and stain: services/slides/tiling.py's
# THUMBNAIL_PX_PER_TILE, so a patch's tissue fraction is what the slide path finds for a tile
# (not imported: tiling imports the model, which imports this module).
MASK_PX = 32
# Greyscale: no pixel (smoothed, at mask resolution) reaches the saturation the tissue detector
# always calls glass below (services/core/tissue.py), yet the image has content: a grey
# standard deviation glass never has (sensor noise on glass measures < 1 grey level at this
# resolution; tissue and photographs 20-60). Independent of the training ranges: H&E is colour.
GREY_MAX_SATURATION = SATURATION_BOUNDS[0]
GREY_MIN_CONTRAST = 8.0

# Ruifrok AC, Johnston DA. Quantification of histochemical staining by color deconvolution.
# Anal Quant Cytol Histol 2001;23(4):291-299. Rows: the OD (R, G, B) of one unit of
# haematoxylin, eosin and DAB; scikit-image's `rgb_from_hed` is this matrix. Concentrations are
# OD @ inverse; DAB (absent from H&E) is the residual and is not reported.
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29],
                         [0.07, 0.99, 0.11],
                         [0.27, 0.57, 0.78]])
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)
# OD = -log10(I / 255) for I in 0..255 (I = 0 taken as 1: a finite OD for black pixels).
_OD_LUT32 = (-np.log10(np.maximum(np.arange(256), 1.0) / 255.0)).astype(np.float32)


@dataclass(frozen=True)
class Measurement:
    """What `measure` finds in one crop; the stain is None with too little tissue to judge."""

    focus: float
    tissue_fraction: float
    od_mean: tuple[float, float, float] | None
    stain: tuple[float, float] | None  # (haematoxylin, eosin) mean concentrations
    # Highest smoothed saturation and the grey standard deviation, at mask resolution: the
    # greyscale check. The defaults (full colour, no contrast) never trip it.
    max_saturation: float = 1.0
    contrast: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "focus": self.focus,
            "tissue_fraction": self.tissue_fraction,
            "od_mean": None if self.od_mean is None else dict(zip(OD_CHANNELS, self.od_mean,
                                                                  strict=True)),
            "stain": None if self.stain is None else dict(zip(STAINS, self.stain, strict=True)),
            "max_saturation": self.max_saturation,
            "contrast": self.contrast,
        }


def laplacian_variance(grey: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Variance of the 4-neighbour Laplacian of an (H, W) uint8 grey image, over its interior
    pixels where `mask` (H, W) is True, or all of them."""
    g = grey.astype(np.int16)  # |Laplacian| ≤ 4 × 255: int16 is exact and half float32's bytes
    lap = g[1:-1, 1:-1] * np.int16(-4)  # built in place: one temporary, not four
    lap += g[:-2, 1:-1]
    lap += g[2:, 1:-1]
    lap += g[1:-1, :-2]
    lap += g[1:-1, 2:]
    lap = lap.astype(np.float32).reshape(-1)  # ((H-2)·(W-2),)
    if mask is None:
        return float(lap.var(dtype=np.float64))
    # A weighted variance by two dot products: cheaper than indexing the tissue pixels out.
    weights = mask[1:-1, 1:-1].astype(np.float32).reshape(-1)
    total = float(weights.sum())
    if total == 0.0:
        return 0.0
    mean = float(weights @ lap) / total
    return max(float(weights @ (lap * lap)) / total - mean * mean, 0.0)


def stain_statistics(rgb: np.ndarray, mask: np.ndarray) -> tuple[tuple, tuple]:
    """Mean OD per channel over the masked pixels of (H, W, 3) uint8, and its H&E split.

    OD comes from a 256-entry table (no log per pixel). Deconvolution is linear, so the mean
    concentration is the deconvolved mean OD: one 3x3 product per image, not one per pixel.
    """
    od = _OD_LUT32[rgb].reshape(-1, 3)  # (H*W, 3)
    weights = mask.reshape(-1).astype(np.float32)
    mean_od = (weights @ od).astype(np.float64) / float(weights.sum())  # (3,)
    hed = mean_od @ HED_FROM_RGB
    return tuple(float(v) for v in mean_od), (float(hed[0]), float(hed[1]))


def measure(crop: Image.Image) -> Measurement:
    """Focus, tissue fraction and stain of an RGB crop (the model's input, before scaling)."""
    crop = crop if crop.mode == "RGB" else crop.convert("RGB")
    # Tissue and stain are regional: measured at whole-slide inference's mask resolution,
    # MASK_PX across the patch (a box mean), which also makes them cost little.
    small = crop.reduce(max(1, min(crop.size) // MASK_PX))  # (≈MASK_PX, ≈MASK_PX)
    mask, saturation = tissue_mask_and_saturation(small)  # (≈MASK_PX, ≈MASK_PX) each
    fraction = float(mask.mean())
    colour = (float(saturation.max()), float(np.asarray(small.convert("L")).std()))
    grey = np.asarray(crop.convert("L"))  # (S, S): focus at full resolution, fine detail
    if fraction < MIN_TISSUE_TO_JUDGE:
        return Measurement(laplacian_variance(grey), fraction, None, None, *colour)
    # Focus over the tissue only: flat glass beside sharp tissue is not blur.
    full = _upsampled(mask, crop.size)  # (S, S)
    od, stain = stain_statistics(np.asarray(small), mask)
    return Measurement(laplacian_variance(grey, full), fraction, od, stain,  # type: ignore[arg-type]
                       *colour)


def _upsampled(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The mask at the crop's size, nearest neighbour. A whole factor (224 = 7 × 32) is
    np.repeat, the same pixels as Pillow's NEAREST at under half its cost (measured 17 against
    39 µs at 224 px); other sizes go through Pillow."""
    rows, columns = mask.shape
    width, height = size
    if width % columns == 0 and height % rows == 0:
        return mask.repeat(height // rows, axis=0).repeat(width // columns, axis=1)
    return np.asarray(Image.fromarray(mask).resize(size, Image.Resampling.NEAREST))


@dataclass(frozen=True)
class Range:
    low: float
    high: float

    @classmethod
    def from_dict(cls, data: Any, name: str) -> Range:
        if not isinstance(data, Mapping):
            raise ValueError(f"quality range {name} is not an object with low and high")
        low, high = data.get("low"), data.get("high")
        if not (_finite(low) and _finite(high) and low <= high):
            raise ValueError(f"quality range {name} needs finite numbers low ≤ high, got "
                             f"{low!r}, {high!r}")
        return cls(float(low), float(high))

    def to_dict(self) -> dict[str, float]:
        return {"low": self.low, "high": self.high}

    @property
    def expected(self) -> list[float]:
        return [self.low, self.high]

    def distance(self, value: float) -> float:
        """How far outside the range `value` lies, in widths of the range (0 inside)."""
        gap = max(self.low - value, value - self.high, 0.0)
        return gap / max(self.high - self.low, 1e-12)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class QualityRanges:
    """The training images' ranges (`mhist.quality`): the checks every prediction runs.

    Which side is checked: focus below its range (the flag is for blur; sharper than training,
    e.g. another magnification, would need a code of its own), tissue fraction below, stain on
    both sides. All ranges are recorded in full, both sides, for /metadata.
    """

    focus: Range
    tissue_fraction: Range
    od_mean: dict[str, Range]  # per channel r, g, b
    stain: dict[str, Range]  # haematoxylin, eosin
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "focus": self.focus.to_dict(),
            "tissue_fraction": self.tissue_fraction.to_dict(),
            "od_mean": {c: r.to_dict() for c, r in self.od_mean.items()},
            "stain": {s: r.to_dict() for s, r in self.stain.items()},
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, data: Any) -> QualityRanges:
        """Parse `mhist.quality`; ValueError names what is missing or malformed."""
        if not isinstance(data, Mapping):
            raise ValueError("mhist.quality is not a JSON object")

        def group(key: str, names: tuple[str, ...]) -> dict[str, Range]:
            values = data.get(key)
            if not isinstance(values, Mapping):
                raise ValueError(f"mhist.quality.{key} is not an object")
            return {n: Range.from_dict(values.get(n), f"{key}.{n}") for n in names}

        return cls(
            focus=Range.from_dict(data.get("focus"), "focus"),
            tissue_fraction=Range.from_dict(data.get("tissue_fraction"), "tissue_fraction"),
            od_mean=group("od_mean", OD_CHANNELS),
            stain=group("stain", STAINS),
            source=str(data.get("source", "")),
        )

    def warnings(self, m: Measurement) -> list[dict[str, Any]]:
        """Every check, every warning: one per code whose statistics are out of range.

        With under MIN_TISSUE_TO_JUDGE tissue there is no stain to measure and no tissue to
        judge focus on: `low_tissue` says so, and the greyscale check still runs."""
        found = []
        if m.tissue_fraction < self.tissue_fraction.low:
            found.append(_low_tissue(m.tissue_fraction, self.tissue_fraction))
        if m.max_saturation < GREY_MAX_SATURATION and m.contrast >= GREY_MIN_CONTRAST:
            found.append(_warning(
                "grayscale", f"No colour: the image is greyscale (highest saturation "
                f"{m.max_saturation:.3f}; H&E-stained tissue reaches {GREY_MAX_SATURATION:g}). "
                "The model reads H&E colour images.",
                m.max_saturation, Range(GREY_MAX_SATURATION, 1.0), "max_saturation"))
        if m.od_mean is None:
            return found
        if m.focus < self.focus.low:
            found.append(_warning(
                "blurry", f"Out of focus: focus {m.focus:.4g} is below the training patches' "
                f"{_span(self.focus, '.4g')} (variance of the Laplacian: less fine detail).",
                m.focus, self.focus, "focus"))
        stain = self._stain_outliers(m)
        if stain is not None:
            found.append(stain)
        return found

    def _stain_outliers(self, m: Measurement) -> dict[str, Any] | None:
        """Every stain statistic outside its range, as one `unusual_stain` warning; its
        value, expected and statistic are the one furthest out (in widths of its range)."""
        values = {f"od_mean.{c}": v for c, v in zip(OD_CHANNELS, m.od_mean or (), strict=False)}
        values.update({f"stain.{s}": v for s, v in zip(STAINS, m.stain or (), strict=False)})
        ranges = {**{f"od_mean.{c}": r for c, r in self.od_mean.items()},
                  **{f"stain.{s}": r for s, r in self.stain.items()}}
        outside = {name: value for name, value in values.items()
                   if not ranges[name].low <= value <= ranges[name].high}
        if not outside:
            return None
        worst = max(outside, key=lambda name: ranges[name].distance(outside[name]))
        listed = ", ".join(f"{name} {value:.3f} (training {_span(ranges[name], '.3f')})"
                           for name, value in outside.items())
        return _warning(
            "unusual_stain", f"Unusual staining, not the H&E the model learnt from: {listed} "
            "(optical density).", outside[worst], ranges[worst], worst,
            [_statistic(name, value, ranges[name]) for name, value in outside.items()])


def _low_tissue(fraction: float, bounds: Range) -> dict[str, Any]:
    """The message says what the value means: none at all is glass, some is not."""
    training = f"training patches {_span(bounds, '.0%')}"
    if fraction < MIN_TISSUE_TO_JUDGE:
        text = (f"No tissue found: {fraction:.0%} of the patch is stained tissue ({training}); "
                "it looks like background (glass) or an unstained image, so focus and stain "
                "were not judged.")
    else:
        text = f"Less tissue than the training patches: {fraction:.0%} of the patch ({training})."
    return _warning("low_tissue", text, fraction, bounds, "tissue_fraction")


def _span(bounds: Range, spec: str) -> str:
    return f"{format(bounds.low, spec)}–{format(bounds.high, spec)}"


def _statistic(name: str, value: float, bounds: Range) -> dict[str, Any]:
    return {"statistic": name, "value": value, "expected": bounds.expected}


def _warning(code: str, message: str, value: float, bounds: Range, statistic: str,
             statistics: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "value": value, "expected": bounds.expected,
            "statistic": statistic,
            "statistics": statistics or [_statistic(statistic, value, bounds)]}


def synthetic_notice() -> dict[str, Any]:
    """The warning every answer of a model trained on the synthetic sample carries."""
    return {"code": SYNTHETIC_TRAINING,
            "message": "This model was trained on the synthetic sample (generated drawings in "
                       "MHIST's layout), not on real tissue: its answers say nothing about "
                       "real polyps."}


def assess(crop: Image.Image, ranges: QualityRanges) -> dict[str, Any]:
    """The fields a prediction gains when its model records quality ranges: `reasons` (the
    codes that make it not assessable: every input warning) beside warnings and quality."""
    measured = measure(crop)
    found = ranges.warnings(measured)
    return {"warnings": found, "reasons": [w["code"] for w in found],
            "quality": measured.to_dict()}
