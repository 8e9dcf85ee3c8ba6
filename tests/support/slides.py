"""Real pyramidal tiled TIFF slides, written with tifffile, drawn by the synthetic generator.

    canvas, truth = tissue_canvas(SLIDE_LAYOUT, cell_px=224)   # at 2.0 µm/px: 448 µm a cell
    write_pyramid(path, canvas, canvas_mpp=2.0, level0_mpp=0.5)   # levels 0.5, 2.0, 8.0 µm/px

A layout is rows of characters, one per cell: `S` an SSA field, `H` an HP field, `.` glass.
Each tissue cell is one `training.sample_data.render` patch (448 µm of synthetic mucosa at
any pixel size), so the model meets the tissue it was trained on, cut and scanned as a slide.
Level 0 is written tile by tile from the canvas, so a slide 16× the canvas costs no memory.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from training.sample_data import Row, render

GLASS = (238, 236, 241)
TIFF_TILE = 256
# 10 × 8 cells: an SSA field top left, an HP field right of centre, glass around both.
SLIDE_LAYOUT = (
    "..........",
    ".SSS......",
    ".SSS..HHH.",
    ".SSS..HHH.",
    "......HHH.",
    "..........",
    "..........",
    "..........",
)


def tissue_canvas(layout: Sequence[str], cell_px: int, seed: int = 3
                  ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(rows·cell, cols·cell, 3) uint8 canvas and, per class letter, its (rows, cols) truth."""
    rows, cols = len(layout), len(layout[0])
    rng = np.random.default_rng(seed)
    canvas = np.clip(rng.normal(0.0, 3.0, (rows * cell_px, cols * cell_px, 3)) + GLASS, 0, 255)
    canvas = canvas.astype(np.uint8)
    truth = {letter: np.array([[c == letter for c in line] for line in layout])
             for letter in "SH"}
    for r, line in enumerate(layout):
        for c, letter in enumerate(line):
            if letter in "SH":
                label, votes = ("SSA", 7) if letter == "S" else ("HP", 0)
                # Textbook fields: the sample's own images are about as ambiguous as MHIST's,
                # and a planted field must be what the test says it is.
                patch = render(Row(f"{r:02d}{c:02d}", label, votes, "test"), cell_px, seed,
                               textbook=True)
                canvas[r * cell_px:(r + 1) * cell_px, c * cell_px:(c + 1) * cell_px] = patch
    return canvas, truth


def _level(canvas: np.ndarray, factor: float) -> np.ndarray:
    """The canvas resized by `factor` (< 1 shrinks with a box filter, > 1 repeats pixels)."""
    if factor == 1:
        return canvas
    if factor > 1:
        k = round(factor)
        return canvas.repeat(k, axis=0).repeat(k, axis=1)
    size = (max(1, round(canvas.shape[1] * factor)), max(1, round(canvas.shape[0] * factor)))
    return np.asarray(Image.fromarray(canvas).resize(size, Image.Resampling.BOX))


def _upsampled_tiles(canvas: np.ndarray, k: int) -> Iterator[np.ndarray]:
    """Tiles of the canvas enlarged k× (pixel repetition), row-major, padded to TIFF_TILE."""
    height, width = canvas.shape[0] * k, canvas.shape[1] * k
    step = TIFF_TILE // k
    for top in range(0, height, TIFF_TILE):
        for left in range(0, width, TIFF_TILE):
            block = canvas[top // k:top // k + step, left // k:left // k + step]
            block = block.repeat(k, axis=0).repeat(k, axis=1)
            tile = np.full((TIFF_TILE, TIFF_TILE, 3), 255, dtype=np.uint8)
            tile[:block.shape[0], :block.shape[1]] = block
            yield tile


def write_pyramid(path: Path, canvas: np.ndarray, canvas_mpp: float, level0_mpp: float,
                  downsamples: Sequence[int] = (1, 4, 16), resolution: bool = True) -> Path:
    """A tiled, zlib-compressed pyramidal TIFF: one page per level (generic-tiff to OpenSlide),
    with XResolution/YResolution in pixels per centimetre unless `resolution` is False."""
    k = canvas_mpp / level0_mpp  # level-0 pixels per canvas pixel
    with tifffile.TiffWriter(path) as tiff:
        for index, downsample in enumerate(downsamples):
            mpp = level0_mpp * downsample
            options = {"photometric": "rgb", "tile": (TIFF_TILE, TIFF_TILE),
                       "compression": "zlib", "compressionargs": {"level": 1},
                       "subfiletype": 0 if index == 0 else 1}
            if resolution:
                options |= {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"}
            factor = k / downsample  # level pixels per canvas pixel
            if factor > 1:
                shape = (canvas.shape[0] * round(factor), canvas.shape[1] * round(factor), 3)
                tiff.write(_upsampled_tiles(canvas, round(factor)), shape=shape,
                           dtype=np.uint8, **options)
            else:
                tiff.write(_level(canvas, factor), **options)
    return path
