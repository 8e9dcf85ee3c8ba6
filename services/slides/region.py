"""One region image in memory → tile predictions and a heatmap (POST /predict/region).

The same grid, tissue mask and batched prediction as the whole-slide CLI; only the pixels come
from a decoded image instead of a slide level. numpy + Pillow only.
"""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from services.core.errors import ServiceError
from services.core.model import InferenceModel
from services.core.preprocessing import to_rgb
from services.core.quality import NOT_ASSESSABLE, Measurement, QualityRanges
from services.core.tissue import tissue_area_mm2, tissue_mask
from services.slides.outputs import png_bytes, positive_regions, render_heatmap, tile_row
from services.slides.tiling import (
    Grid,
    Scale,
    TileReader,
    TileResult,
    check_mpp,
    classify,
    plan_grid,
    plan_scale,
    probability_grid,
    selected_tiles,
    thumbnail_scale,
    thumbnail_size,
    tissue_fractions,
)

# Work limits: a request is bounded by the pixels it costs, not by its tile count alone (mpp
# scales the tile: ?mpp=0.137&stride=1 on a 58 KB flat 4096² PNG once planned 1,024 tiles of
# 3,270² px, 650× the default work, and died at 1.5 GiB after the 30 s worker timeout).
# The yardstick is the default request on the largest image decode_image accepts: a 4096²
# image at the model's own µm/px with stride = tile reads each pixel once (4096² source
# pixels) and feeds the model (4096 / model_px)² tiles of model_px² pixels (4096² again).
DEFAULT_REGION_PIXELS = 4096 * 4096
# Tiles × model input pixels (resize_size²): the model's work. The yardstick itself: what
# MAX_REGION_TILES allows the 128-px INT8 demo model, whose timing it was measured on (below);
# a 224-px model gets the same work in 334 tiles (its default 4096² request is 324).
MAX_REGION_MODEL_PIXELS = DEFAULT_REGION_PIXELS
# Tiles × tile source pixels: pixels cropped, then resized to the model's input. 4× the
# yardstick allows a half-tile stride (each pixel read 4 times) over the largest image; the
# crops and resizes are cheap next to the model (memcpy and one antialiased pass).
MAX_REGION_SOURCE_PIXELS = 4 * DEFAULT_REGION_PIXELS
# Source pixels per model pixel. 8× is a 40× scan (0.25 µm/px) for the MHIST model (2.0 µm/px);
# beyond it more than 98% of every tile's pixels are read only to be averaged away, which
# says the mpp is wrong, not that the scan is fine.
MAX_REGION_DOWNSCALE = 8.0
# Tiles: per-tile Python work (crop, preprocessing, a result row) costs ~3 ms whatever the
# model, so the count keeps its own bound: measured here, a 4096² PNG of 512 tiles (128-px INT8
# demo model, 2 cores) took 7.4 s, decode and heatmap included; 4,096 tiles of the 64-px test
# model took 12-32 s, too close to the 30 s worker timeout.
MAX_REGION_TILES = 1024
DEFAULT_MIN_TISSUE = 0.5
REGION_BATCH = 16
# Source pixels of one batch of crops (two batches are held: one read ahead): 16 tiles of
# 448² px, a 2× downscale for a 224-px model; larger tiles go fewer to a batch (13 MB of RGBX).
REGION_BATCH_PIXELS = REGION_BATCH * 448 * 448
MAX_HEATMAP_SIDE = 512  # the answer's PNG stays small (tens of kB)


def too_much_work(what: str, advice: str) -> ServiceError:
    return ServiceError(400, "too_much_work", f"{what}; {advice}")


def check_scale(scale: Scale, mpp_given: bool) -> None:
    """400 `too_much_work` when a tile is more than MAX_REGION_DOWNSCALE× the model's input;
    checked before the grid is planned, so a subnormal mpp never reaches the arithmetic."""
    if scale.factor > MAX_REGION_DOWNSCALE:
        where = "the mpp given" if mpp_given else "the model's mpp"
        raise too_much_work(
            f"At {scale.source_mpp:g} µm/px ({where}) one tile would be "
            f"{scale.factor:.3g}× the model's input of {scale.model_px} px at "
            f"{scale.model_mpp:g} µm/px per side; the limit is {MAX_REGION_DOWNSCALE:g}× "
            f"(mpp ≥ {scale.model_mpp / MAX_REGION_DOWNSCALE:g})",
            "check the mpp, or downscale the image to at most that resolution and send its mpp")


def check_work(grid: Grid, scale: Scale, max_tiles: int = MAX_REGION_TILES) -> None:
    """400 when the grid's tiles, source pixels or model pixels exceed the limits above."""
    planned = f"The region makes {grid.size} tiles ({grid.columns}x{grid.rows}"
    advice = "send a smaller region or a larger stride"
    if grid.size > max_tiles:
        raise ServiceError(400, "too_many_tiles",
                           f"{planned}); the limit is {max_tiles}: {advice}.")
    source = grid.size * grid.tile ** 2
    if source > MAX_REGION_SOURCE_PIXELS:
        raise too_much_work(
            f"{planned} of {grid.tile}x{grid.tile} px), {source:,} source pixels to read; the "
            f"limit is {MAX_REGION_SOURCE_PIXELS:,} (MAX_REGION_SOURCE_PIXELS)", advice + ".")
    model = grid.size * scale.model_px ** 2
    if model > MAX_REGION_MODEL_PIXELS:
        raise too_much_work(
            f"{planned}), {model:,} pixels of model input ({scale.model_px}² a tile); the "
            f"limit is {MAX_REGION_MODEL_PIXELS:,} (MAX_REGION_MODEL_PIXELS)",
            advice + ", or a coarser mpp.")


def batch_size(grid: Grid) -> int:
    """Tiles per session.run: REGION_BATCH, fewer when tiles are large (REGION_BATCH_PIXELS)."""
    return max(1, min(REGION_BATCH, REGION_BATCH_PIXELS // grid.tile ** 2))


def crop_reader(image: Image.Image) -> TileReader:
    return lambda x, y, side: image.crop((x, y, x + side, y + side))


def region_thumbnail(image: Image.Image, grid: Grid) -> Image.Image:
    """The RGB region at mask resolution (see tiling.thumbnail_scale), box-filtered."""
    return image.resize(thumbnail_size(grid), Image.Resampling.BOX)


def require_tissue(fractions: np.ndarray, min_tissue: float, what: str) -> int:
    """How many tiles will be analysed; 422 `no_tissue` when none."""
    count = len(selected_tiles(fractions, min_tissue))
    if count == 0:
        raise ServiceError(
            422, "no_tissue",
            f"No tissue found in {what}: no tile is at least {min_tissue:.0%} tissue "
            f"(best {float(fractions.max()):.0%}); lower min_tissue or check the image.",
        )
    return count


def analyse_region(model: InferenceModel, image: Image.Image, mpp: float | None = None,
                   stride: int | None = None, min_tissue: float = DEFAULT_MIN_TISSUE,
                   max_tiles: int = MAX_REGION_TILES) -> dict[str, Any]:
    """The /predict/region answer for a decoded image; ServiceError (4xx) for bad input."""
    meta = model.metadata
    source_mpp = meta.mpp if mpp is None else check_mpp(mpp, "mpp")
    # The downscale bound first: it also keeps a subnormal mpp (a tile of inf pixels) from
    # reaching plan_scale's own 400, so every too-fine mpp gets the same answer.
    check_scale(Scale(source_mpp, meta.mpp, meta.preprocessing.resize_size), mpp is not None)
    scale = plan_scale(meta, source_mpp)
    # Upright per EXIF before the grid is planned: a strip stored rotated (Orientation 6)
    # must be tiled as the picture it shows. Once: tiles and thumbnail share these pixels.
    image = to_rgb(image)
    grid = plan_grid(image.width, image.height, scale, stride)
    check_work(grid, scale, max_tiles)
    thumbnail = region_thumbnail(image, grid)
    mask = tissue_mask(thumbnail)
    fractions = tissue_fractions(mask, grid)
    require_tissue(fractions, min_tissue, "the region")
    results = list(classify(model, grid, fractions, min_tissue, crop_reader(image),
                        batch_size(grid)))
    values = probability_grid(results, grid)
    positive = meta.positive_class
    heatmap = render_heatmap(thumbnail, values, grid, f"P({positive})", meta.served_threshold)
    heatmap.thumbnail((MAX_HEATMAP_SIDE, MAX_HEATMAP_SIDE), Image.Resampling.BOX)
    mask_um = source_mpp / thumbnail_scale(grid)
    return {
        "tiles": [tile_row(result, positive) for result in results],
        "count": len(results),
        "grid": {"columns": grid.columns, "rows": grid.rows, "tile_px": grid.tile,
                 "stride_px": grid.stride, "background_tiles": grid.size - len(results)},
        "scale": {"region_mpp": source_mpp, "model_mpp": meta.mpp,
                  "mpp_source": "model" if mpp is None else "query", "tile_um": scale.tile_um},
        "summary": summarise(results, values, grid, meta.served_threshold, source_mpp, positive,
                             tissue_area_mm2(mask, mask_um), meta.quality),
        "heatmap": {"media_type": "image/png",
                    "base64": base64.b64encode(png_bytes(heatmap)).decode("ascii")},
        "threshold": meta.served_threshold,
        "threshold_scale": meta.threshold_scale,
        "model": {"name": meta.name, "version": meta.version, "precision": meta.precision},
    }


def summarise(results: list[TileResult], values: np.ndarray, grid: Grid, threshold: float,
              source_mpp: float, positive: str, tissue_mm2: float,
              ranges: QualityRanges | None) -> dict[str, Any]:
    """Tiles analysed, tissue area, share of tissue called positive, the top regions, and how
    much of it was assessable."""
    weights = np.array([r.tissue_fraction for r in results], dtype=np.float64)
    called = np.array([r.label == positive for r in results], dtype=bool)
    assessable = np.array([r.assessable for r in results], dtype=bool)
    checked = assessability([r.reasons for r in results],
                            [r.stain_focus for r in results if r.stain_focus], ranges)
    return summarise_arrays(weights, called, assessable, values, grid, threshold, source_mpp,
                            positive, tissue_mm2, checked)


def summarise_arrays(weights: np.ndarray, called: np.ndarray, assessable: np.ndarray,
                     values: np.ndarray, grid: Grid, threshold: float, source_mpp: float,
                     positive: str, tissue_mm2: float, checked: dict[str, Any]
                     ) -> dict[str, Any]:
    """`summarise` from per-tile arrays in row-major tile order — each analysed tile's tissue
    fraction, whether it was called positive and whether it was assessable — so a slide keeps
    no record per tile. The positive share counts assessable tissue only, and is null when
    there is none or the whole source failed its stain or focus check: tissue in the wrong
    stain is not "0 % positive"."""
    kept = weights[assessable]
    share = (None if checked["decision"] == NOT_ASSESSABLE or kept.sum() <= 0
             else round(float(kept[called[assessable]].sum() / kept.sum()), 4))
    shown = values[~np.isnan(values)]
    return {
        "tiles_analysed": len(weights),
        "tissue_area_mm2": round(tissue_mm2, 4),
        "positive_class": positive,
        "fraction_positive": share,
        "max_probability": round(float(shown.max()), 4) if shown.size else None,
        "top_regions": [region.describe(grid, source_mpp)
                        for region in positive_regions(values, threshold)],
        "assessable": checked,
    }


def assessability(reasons: Sequence[tuple[str, ...]], stain_focus: Sequence[tuple[float, ...]],
                  ranges: QualityRanges | None) -> dict[str, Any]:
    """How much of a region or slide the input checks let through, and its own stain and
    focus check: the median over the tiles whose stain was measured, against the training
    ranges. Tiles are judged one by one too, but a slide stained otherwise must be said to be
    so as a whole, beside the share of tiles that passed."""
    tiles = len(reasons)
    passed = sum(1 for r in reasons if not r)
    found = [] if ranges is None or not stain_focus else source_warnings(stain_focus, ranges)
    return {
        "checked": ranges is not None,
        "tiles": passed,
        "share": round(passed / tiles, 4) if tiles else None,
        "by_reason": dict(sorted(Counter(code for r in reasons for code in r).items())),
        "warnings": found,
        "decision": NOT_ASSESSABLE if found or (tiles and not passed) else "assessable",
    }


def source_warnings(stain_focus: Sequence[tuple[float, ...]],
                    ranges: QualityRanges) -> list[dict[str, Any]]:
    """blurry / unusual_stain of the median tile (focus, od r g b, haematoxylin, eosin)."""
    median = np.median(np.asarray(stain_focus, dtype=np.float64), axis=0)  # (6,)
    # A whole tissue fraction and full colour: only focus and stain are judged here.
    typical = Measurement(float(median[0]), 1.0, tuple(float(v) for v in median[1:4]),
                          (float(median[4]), float(median[5])))  # type: ignore[arg-type]
    return ranges.warnings(typical)
