"""One region image in memory → tile predictions and a heatmap (POST /predict/region).

The same grid, tissue mask and batched prediction as the whole-slide CLI; only the pixels come
from a decoded image instead of a slide level. numpy + Pillow only.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
from PIL import Image

from services.core.errors import ServiceError
from services.core.model import InferenceModel
from services.core.preprocessing import to_rgb
from services.core.tissue import tissue_area_mm2, tissue_mask
from services.slides.outputs import png_bytes, positive_regions, render_heatmap, tile_row
from services.slides.tiling import (
    Grid,
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

# Keeps a request inside the 30 s worker timeout: measured here, a 4096² PNG (512 tiles, the
# 128-px INT8 demo model, 2 cores) took 7.4 s, decode and heatmap included.
MAX_REGION_TILES = 1024
DEFAULT_MIN_TISSUE = 0.5
REGION_BATCH = 16
MAX_HEATMAP_SIDE = 512  # the answer's PNG stays small (tens of kB)


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
    scale = plan_scale(meta, source_mpp)
    grid = plan_grid(image.width, image.height, scale, stride)
    if grid.size > max_tiles:
        raise ServiceError(
            400, "too_many_tiles",
            f"The region makes {grid.size} tiles ({grid.columns}x{grid.rows}); the limit is "
            f"{max_tiles}: send a smaller region or a larger stride.",
        )
    image = to_rgb(image)  # once, upright per EXIF: tiles and thumbnail share these pixels
    thumbnail = region_thumbnail(image, grid)
    mask = tissue_mask(thumbnail)
    fractions = tissue_fractions(mask, grid)
    require_tissue(fractions, min_tissue, "the region")
    results = list(classify(model, grid, fractions, min_tissue, crop_reader(image), REGION_BATCH))
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
                             tissue_area_mm2(mask, mask_um)),
        "heatmap": {"media_type": "image/png",
                    "base64": base64.b64encode(png_bytes(heatmap)).decode("ascii")},
        "threshold": meta.served_threshold,
        "model": {"name": meta.name, "version": meta.version, "precision": meta.precision},
    }


def summarise(results: list[TileResult], values: np.ndarray, grid: Grid, threshold: float,
              source_mpp: float, positive: str, tissue_mm2: float) -> dict[str, Any]:
    """Tiles analysed, tissue area, share of tissue called positive, the top regions."""
    weights = np.array([r.tissue_fraction for r in results], dtype=np.float64)
    called = np.array([r.label == positive for r in results], dtype=bool)
    return summarise_arrays(weights, called, values, grid, threshold, source_mpp, positive,
                            tissue_mm2)


def summarise_arrays(weights: np.ndarray, called: np.ndarray, values: np.ndarray, grid: Grid,
                     threshold: float, source_mpp: float, positive: str,
                     tissue_mm2: float) -> dict[str, Any]:
    """`summarise` from per-tile arrays in row-major tile order — each analysed tile's tissue
    fraction and whether it was called positive — so a slide keeps no record per tile."""
    share = float(weights[called].sum() / weights.sum()) if weights.sum() > 0 else 0.0
    return {
        "tiles_analysed": len(weights),
        "tissue_area_mm2": round(tissue_mm2, 4),
        "positive_class": positive,
        "fraction_positive": round(share, 4),
        "max_probability": round(float(np.nanmax(values)), 4) if len(weights) else None,
        "top_regions": [region.describe(grid, source_mpp)
                        for region in positive_regions(values, threshold)],
    }
