"""One slide → `<name>.tiles.csv`, `<name>.geojson`, `<name>.heatmap.png`, `<name>.summary.json`.

`<name>` is the slide's stem unless the caller gives another (the CLI does when two slides'
stems collide). Steps: open (resolution from the slide or --mpp) → scale and pyramid level →
the work bounded (Options.max_gigapixels, before any pixel is read) → tissue mask on a
thumbnail → tiles with tissue predicted in batches (streamed to the CSV and the GeoJSON as
they come) → heatmap and summary. Files are written under temporary names and renamed at the
end, so a slide that fails half-way leaves nothing that looks finished.

Memory: one batch of tile pixels (and the next, being read), OpenSlide's tile cache, a
thumbnail of at most MAX_THUMBNAIL_SIDE px read in THUMBNAIL_BLOCK blocks, and the tiles'
answers as grids of a few bytes a tile; benchmarks/test_slides.py measures the peak on two
slide sizes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
from tqdm.auto import tqdm

from services.core.errors import ServiceError
from services.core.model import InferenceModel
from services.core.tissue import tissue_area_mm2, tissue_mask
from services.slides.outputs import CsvTiles, GeoJsonTiles, render_heatmap, shown, tile_row
from services.slides.reader import (
    Slide,
    choose_level,
    level_reader,
    library_version,
    open_slide,
    read_thumbnail,
    thumbnail_level,
)
from services.slides.region import assessability, require_tissue, summarise_arrays
from services.slides.tiling import (
    Grid,
    Scale,
    TileResult,
    classify,
    plan_grid,
    plan_scale,
    thumbnail_size,
    tissue_fractions,
)

SUFFIXES = {"tiles": ".tiles.csv", "geojson": ".geojson", "heatmap": ".heatmap.png",
            "summary": ".summary.json"}


@dataclass(frozen=True)
class Options:
    mpp: float | None = None  # µm/px of level 0, overriding the slide's own
    stride: int | None = None  # model pixels between tiles; None: one tile (no overlap)
    batch_size: int = 32
    min_tissue: float = 0.5
    progress: bool = True
    # Most level pixels one slide may make us read (the thumbnail's level and the tiles'), in
    # gigapixels; None: no bound (the CLI always sets one: __main__.MAX_GIGAPIXELS).
    max_gigapixels: float | None = None


@dataclass(frozen=True)
class TileAnswers:
    """Every tile's answer as (rows, columns) grids: 6 bytes a tile, where a list of
    TileResult records took ~280, so memory follows the grid only as far as the heatmap must."""

    values: np.ndarray  # float32 P(positive class), NaN where not analysed or not assessable
    called: np.ndarray  # bool: labelled the positive class
    analysed: np.ndarray  # bool
    assessable: np.ndarray  # bool: passed the input checks
    # Per analysed tile, in order: its reasons (mostly the one shared empty tuple) and, where
    # measured, its focus and stain (six floats) for the slide's own stain and focus check.
    reasons: list = field(default_factory=list)
    stain_focus: list = field(default_factory=list)

    @classmethod
    def empty(cls, grid: Grid) -> TileAnswers:
        shape = (grid.rows, grid.columns)
        return cls(np.full(shape, np.nan, dtype=np.float32), np.zeros(shape, dtype=bool),
                   np.zeros(shape, dtype=bool), np.zeros(shape, dtype=bool))

    def add(self, result: TileResult, positive_class: str) -> None:
        cell = (result.row, result.column)
        if result.assessable:
            self.values[cell] = result.probability
        self.called[cell] = result.label == positive_class
        self.analysed[cell] = True
        self.assessable[cell] = result.assessable
        self.reasons.append(result.reasons)
        if result.stain_focus is not None:
            self.stain_focus.append(result.stain_focus)


def output_paths(out: Path, name: str) -> dict[str, Path]:
    return {kind: out / f"{name}{suffix}" for kind, suffix in SUFFIXES.items()}


def analyse_slide(path: Path, model: InferenceModel, options: Options, out: Path,
                  name: str | None = None) -> dict:
    """Analyse one slide into `out` as `<name>.*` (default: its stem); returns its summary.
    ServiceError on bad input."""
    started = time.perf_counter()
    timings: dict[str, float] = {}
    with open_slide(path, options.mpp) as slide:
        scale = plan_scale(model.metadata, slide.mpp)
        grid = plan_grid(*slide.dimensions, scale, options.stride)
        level = choose_level(slide.downsamples, scale.factor)
        if options.max_gigapixels is not None:
            check_work(slide, grid, level, options.max_gigapixels)
        thumbnail = read_thumbnail(slide, thumbnail_size(grid))
        mask = tissue_mask(thumbnail)
        fractions = tissue_fractions(mask, grid)
        count = require_tissue(fractions, options.min_tissue, path.name)
        timings["tissue_s"] = time.perf_counter() - started
        paths = output_paths(out, name or path.stem)
        with _staged(paths.values()) as staged:
            t = time.perf_counter()
            answers = _predict(slide, model, grid, fractions, level, options, count,
                               staged[paths["tiles"]], staged[paths["geojson"]])
            timings["inference_s"] = time.perf_counter() - t
            t = time.perf_counter()
            values = answers.values
            meta = model.metadata
            heatmap = render_heatmap(thumbnail, values, grid, f"P({meta.positive_class})",
                                     meta.served_threshold)
            heatmap.save(staged[paths["heatmap"]], format="PNG")
            checked = assessability(answers.reasons, answers.stain_focus, meta.quality)
            summary = summarise_arrays(fractions[answers.analysed],
                                       answers.called[answers.analysed],
                                       answers.assessable[answers.analysed], values, grid,
                                       meta.served_threshold, slide.mpp, meta.positive_class,
                                       tissue_area_mm2(mask,
                                                       slide.mpp * grid.width / mask.shape[1]),
                                       checked)
            timings["outputs_s"] = time.perf_counter() - t
            timings["total_s"] = time.perf_counter() - started
            document = _summary(slide, model, scale, grid, level, options, summary, timings,
                                paths)
            staged[paths["summary"]].write_text(json.dumps(document, indent=2) + "\n")
    return document


def check_work(slide: Slide, grid: Grid, level: int, max_gigapixels: float) -> None:
    """413 `slide_too_large` when analysing the slide would read more than `max_gigapixels`
    level pixels: the thumbnail's level whole, plus every tile of the grid at its level (an
    upper bound: glass is skipped). Only the slide's header is known yet; no pixel is read.

    The tile term also bounds the grid (a tile read is ≥ ~model_px² pixels), so the per-tile
    answer grids stay small."""
    thumb_level = thumbnail_level(slide, thumbnail_size(grid))
    level_w, level_h = slide.handle.level_dimensions[thumb_level]
    tile_read = max(1, round(grid.tile / slide.downsamples[level]))
    thumb_px, tiles_px = level_w * level_h, grid.size * tile_read * tile_read
    if thumb_px + tiles_px <= max_gigapixels * 1e9:
        return
    width, height = slide.dimensions
    raise ServiceError(
        413, "slide_too_large",
        f"The slide declares {width}x{height} px at level 0 ({slide.handle.level_count} "
        f"level(s)): analysing it would read {(thumb_px + tiles_px) / 1e9:.1f} gigapixels "
        f"({thumb_px / 1e9:.1f} for the thumbnail at level {thumb_level}, "
        f"{tiles_px / 1e9:.1f} for {grid.size} tiles at level {level}), more than "
        f"--max-gigapixels {max_gigapixels:g}. A small file declaring this much is malformed; "
        "for a real slide this large, raise --max-gigapixels.",
    )


def _predict(slide: Slide, model: InferenceModel, grid: Grid, fractions: np.ndarray,
             level: int, options: Options, count: int, csv_path: Path,
             geojson_path: Path) -> TileAnswers:
    """Stream tile predictions into the CSV and the GeoJSON; returns them as grids for the
    heatmap and the summary."""
    meta = model.metadata
    answers = TileAnswers.empty(grid)
    with open(csv_path, "w", newline="", encoding="utf-8") as csv_stream, \
            open(geojson_path, "w", encoding="utf-8") as geo_stream:
        table = CsvTiles(csv_stream, meta.positive_class)
        features = GeoJsonTiles(geo_stream, meta.positive_class, meta.classes,
                                shown(slide.path.name))
        tiles = classify(model, grid, fractions, options.min_tissue, level_reader(slide, level),
                         options.batch_size)
        for result in tqdm(tiles, total=count, unit="tile", desc=shown(slide.path.name),
                           disable=not options.progress, leave=False):
            row = tile_row(result, meta.positive_class)  # the grid is in level-0 pixels
            table.add(row)
            features.add(row)
            answers.add(result, meta.positive_class)
        features.close()
    return answers


@contextmanager
def _staged(finals: Iterable[Path]) -> Iterator[dict[Path, Path]]:
    """Temporary paths for `finals`, renamed onto them on success and deleted on failure."""
    staged = {final: final.with_name(final.name + ".partial") for final in finals}
    with ExitStack() as cleanup:
        cleanup.callback(lambda: [p.unlink(missing_ok=True) for p in staged.values()])
        yield staged
        for final, partial in staged.items():
            partial.replace(final)


def _summary(slide: Slide, model: InferenceModel, scale: Scale, grid: Grid, level: int,
             options: Options, summary: dict, timings: dict[str, float],
             paths: dict[str, Path]) -> dict[str, Any]:
    downsample = slide.downsamples[level]
    meta = model.metadata
    analysed = summary["tiles_analysed"]
    return {
        "slide": slide.describe(),
        "analysis": {
            "level": level, "level_downsample": round(downsample, 4),
            "level_mpp": round(slide.mpp * downsample, 4), "model_mpp": meta.mpp,
            "tile_um": scale.tile_um, "tile_px_level0": grid.tile,
            "tile_px_read": max(1, round(grid.tile / downsample)),
            "model_input_px": meta.preprocessing.size,
            "resampling": f"{meta.preprocessing.interpolation} (the model's preprocessing)",
            "stride_px_level0": grid.stride, "grid": [grid.columns, grid.rows],
            "options": asdict(options),
        },
        "tiles": {"grid": grid.size, "analysed": analysed, "background": grid.size - analysed},
        **{k: v for k, v in summary.items() if k != "tiles_analysed"},
        "model": {**{k: meta.describe()[k] for k in ("name", "version", "precision",
                                                     "threshold", "threshold_scale",
                                                     "threshold_raw", "mpp", "provenance")},
                  "sha256": model.sha256, "file": model.path.name},
        "timings": {**{k: round(v, 3) for k, v in timings.items()},
                    "tiles_per_s": round(analysed / max(timings["inference_s"], 1e-9), 1)},
        "outputs": {kind: path.name for kind, path in paths.items()},
        "software": {"openslide": library_version(), "onnxruntime": onnxruntime.__version__},
    }
