"""Tiles at the model's physical scale: the one tiling code of the CLI and of /predict/region.

A tile covers the model's field of view: `resize_size` input pixels at the model's µm/px
(224 px × 2.0 µm/px = 448 µm for MHIST). It is cut from the source (a slide level, a region
image) at the source's own resolution and handed to `InferenceModel.predict_images`, whose
preprocessing — the one preprocessing truth — resizes it to the input size with the model's
own filter. So a slide tile and an uploaded patch of the same tissue get the same pixels.

Grids are planned in source pixels (level 0 for a slide); only tiles that lie wholly inside the
source are analysed, so a margin narrower than one tile at the right and bottom is not covered.
numpy + Pillow only: the serving app imports this module.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image

from services.core.errors import ServiceError
from services.core.metadata import ModelMetadata
from services.core.model import InferenceModel

MAX_UPSAMPLING = 2.0  # beyond this a tile is mostly interpolation: refuse rather than guess
THUMBNAIL_PX_PER_TILE = 32  # mask and heatmap resolution: pixels across a tile ...
MAX_THUMBNAIL_SIDE = 2048  # ... unless the thumbnail's long side would exceed this

# Reads one tile: (x, y, side) in source pixels → an RGB or RGBA image of any size (a pyramid
# level returns it smaller than `side`); transparent pixels are glass (white) to preprocessing.
TileReader = Callable[[int, int, int], Image.Image]


@dataclass(frozen=True)
class Scale:
    """How the source's pixels relate to the model's input."""

    source_mpp: float  # µm per source pixel (a slide's level 0, a region image)
    model_mpp: float  # µm per network-input pixel (the model's mhist.mpp)
    model_px: int  # tile side at the model's scale (preprocessing.resize_size)

    @property
    def factor(self) -> float:
        """Source pixels per model pixel: > 1 when the source is finer than the model."""
        return self.model_mpp / self.source_mpp

    @property
    def tile_um(self) -> float:
        return self.model_px * self.model_mpp

    def source_px(self, model_px: float) -> int:
        """A length in model pixels, in whole source pixels."""
        return max(1, round(model_px * self.factor))


def check_mpp(value: float, what: str) -> float:
    """A usable µm/px, or a 400 naming where the value came from."""
    if not (isinstance(value, (int, float)) and 0.0 < value < math.inf):
        raise ServiceError(
            400, "invalid_mpp", f"{what} must be a positive number of µm per pixel, got {value!r}."
        )
    return float(value)


def plan_scale(metadata: ModelMetadata, source_mpp: float) -> Scale:
    """The scale from a source at `source_mpp` to the model; 422 if it needs > 2× upsampling,
    400 if a tile would not even have a size in pixels (a subnormal µm/px: 7 / 5e-324 = inf)."""
    scale = Scale(source_mpp, metadata.mpp, metadata.preprocessing.resize_size)
    if scale.factor < 1.0 / MAX_UPSAMPLING:
        raise ServiceError(
            422,
            "resolution_too_coarse",
            f"The image is at {source_mpp:g} µm/px but the model needs {metadata.mpp:g} µm/px: "
            f"{1.0 / scale.factor:.2f}× upsampling, more than the {MAX_UPSAMPLING:g}× allowed. "
            "Use a finer scan, or check the resolution given.",
        )
    if not math.isfinite(scale.model_px * scale.factor):
        # round(inf) in source_px would be an OverflowError, i.e. a 500.
        raise ServiceError(
            400, "invalid_mpp",
            f"{source_mpp:g} µm/px is not a usable resolution: one tile of the model "
            f"({scale.tile_um:g} µm) would be more pixels than can be counted.",
        )
    return scale


@dataclass(frozen=True)
class Grid:
    """Square tiles of `tile` source pixels every `stride` pixels over a width × height source."""

    width: int
    height: int
    tile: int
    stride: int

    @property
    def columns(self) -> int:
        return (self.width - self.tile) // self.stride + 1

    @property
    def rows(self) -> int:
        return (self.height - self.tile) // self.stride + 1

    @property
    def size(self) -> int:
        return self.columns * self.rows

    def origin(self, row: int, column: int) -> tuple[int, int]:
        return column * self.stride, row * self.stride


def plan_grid(width: int, height: int, scale: Scale, stride: int | None = None) -> Grid:
    """The grid over a source; `stride` in model pixels (default: one tile, no overlap)."""
    if stride is not None and stride < 1:
        raise ServiceError(400, "invalid_stride", f"The stride must be ≥ 1 pixel, got {stride}.")
    tile = scale.source_px(scale.model_px)  # finite: plan_scale checked it
    if width < tile or height < tile:
        raise ServiceError(
            400,
            "region_too_small",
            f"The image is {width}x{height} px at {scale.source_mpp:g} µm/px, smaller than one "
            f"tile ({tile}x{tile} px = {scale.tile_um:g} µm, the model's field of view).",
        )
    # Bounded before it is converted, for the CLI and the API alike: a stride beyond the image
    # makes one tile anyway, and an unbounded one overflows float and integer arithmetic
    # (1e308 model px × 14 source px per model px = inf). factor ≥ 1 / MAX_UPSAMPLING, so
    # the first test keeps a huge integer out of the float product.
    side = max(width, height)
    if stride is not None and (stride > MAX_UPSAMPLING * side or stride * scale.factor > side):
        raise ServiceError(
            400, "invalid_stride",
            f"The stride ({stride} model px) is larger than the image ({width}x{height} px at "
            f"{scale.factor:g} px per model px); use at most {int(side / scale.factor)}.",
        )
    return Grid(width, height, tile, scale.source_px(stride or scale.model_px))


def thumbnail_scale(grid: Grid) -> float:
    """Thumbnail pixels per source pixel: THUMBNAIL_PX_PER_TILE across a tile, bounded."""
    scale = THUMBNAIL_PX_PER_TILE / grid.tile
    return min(scale, MAX_THUMBNAIL_SIDE / max(grid.width, grid.height), 1.0)


def thumbnail_size(grid: Grid) -> tuple[int, int]:
    scale = thumbnail_scale(grid)
    return max(1, round(grid.width * scale)), max(1, round(grid.height * scale))


def tissue_fractions(mask: np.ndarray, grid: Grid) -> np.ndarray:
    """(rows, columns) share of tissue in each tile; `mask` covers the whole source at any
    resolution. A summed-area table makes this O(mask + tiles)."""
    height, width = mask.shape
    # Integer counts summed in place: exact, and one (H+1)·(W+1) int32 table (16 MB for the
    # largest thumbnail) instead of float64 temporaries three times its size.
    table = np.zeros((height + 1, width + 1), dtype=np.int32)
    table[1:, 1:] = mask
    np.cumsum(table, axis=0, out=table)
    np.cumsum(table, axis=1, out=table)
    x0, x1 = _mask_spans(grid.columns, grid, width / grid.width, width)
    y0, y1 = _mask_spans(grid.rows, grid, height / grid.height, height)
    sums = (table[np.ix_(y1, x1)] - table[np.ix_(y0, x1)] - table[np.ix_(y1, x0)]
            + table[np.ix_(y0, x0)])
    return sums / np.outer(y1 - y0, x1 - x0)


def _mask_spans(count: int, grid: Grid, scale: float, limit: int) -> tuple[np.ndarray, ...]:
    """Start and end mask indices of `count` tiles along one axis (at least one mask pixel)."""
    start = np.arange(count) * grid.stride
    first = np.clip(np.round(start * scale).astype(int), 0, limit - 1)
    last = np.clip(np.round((start + grid.tile) * scale).astype(int), first + 1, limit)
    return first, last


@dataclass(frozen=True)
class TileResult:
    row: int
    column: int
    x: int  # source pixels
    y: int
    size: int
    tissue_fraction: float
    probability: float  # P(positive class), on the threshold's (served) scale
    label: str
    decision: str = ""  # the label, "uncertain" or "not_assessable" (the input checks)
    reasons: tuple[str, ...] = ()  # why not assessable: the input warnings' codes
    # focus, od_mean r g b, haematoxylin, eosin (services/core/quality.py) when the tile had
    # tissue enough to judge its stain; the slide-level stain and focus check reads them.
    stain_focus: tuple[float, ...] | None = None

    @property
    def assessable(self) -> bool:
        return not self.reasons


def selected_tiles(fractions: np.ndarray, min_tissue: float) -> np.ndarray:
    """(N, 2) [row, column] of the tiles to analyse, in row-major order."""
    return np.argwhere(fractions >= min_tissue)


def classify(
    model: InferenceModel,
    grid: Grid,
    fractions: np.ndarray,
    min_tissue: float,
    read: TileReader,
    batch_size: int,
) -> Iterator[TileResult]:
    """Predict every tile with enough tissue, `batch_size` tiles per session.run.

    One batch of pixels is held at a time (plus the next, read by a helper thread while the
    model runs: OpenSlide and ORT both release the GIL), so memory does not grow with the
    source. Results come in row-major order.
    """
    chosen = selected_tiles(fractions, min_tissue)
    batches = [chosen[i : i + batch_size] for i in range(0, len(chosen), batch_size)]
    positive = model.metadata.positive_class

    def load(batch: np.ndarray) -> list[Image.Image]:
        return [read(*grid.origin(row, column), grid.tile) for row, column in batch]

    with ThreadPoolExecutor(max_workers=1) as reader:
        pending = reader.submit(load, batches[0]) if batches else None
        for index, batch in enumerate(batches):
            images = pending.result()  # type: ignore[union-attr]
            if index + 1 < len(batches):
                pending = reader.submit(load, batches[index + 1])
            predictions = model.predict_images(images)
            del images
            for (row, column), prediction in zip(batch.tolist(), predictions, strict=True):
                x, y = grid.origin(row, column)
                yield TileResult(row, column, x, y, grid.tile,
                                 float(fractions[row, column]),
                                 prediction.probabilities[positive], prediction.label,
                                 prediction.decision or prediction.label,
                                 tuple(prediction.reasons or ()),
                                 stain_focus(prediction.quality))


def stain_focus(quality: dict | None) -> tuple[float, ...] | None:
    """A tile's focus, mean OD (r, g, b) and H&E concentrations, when its stain was judged."""
    if not quality or quality.get("od_mean") is None or quality.get("stain") is None:
        return None
    return (quality["focus"], *quality["od_mean"].values(), *quality["stain"].values())


def probability_grid(results: list[TileResult] | Iterator[TileResult], grid: Grid) -> np.ndarray:
    """(rows, columns) P(positive) per assessable tile; NaN where no tile was analysed or the
    tile is not assessable (no answer to draw or to count in a positive region)."""
    values = np.full((grid.rows, grid.columns), np.nan, dtype=np.float32)
    for result in results:
        if result.assessable:
            values[result.row, result.column] = result.probability
    return values
