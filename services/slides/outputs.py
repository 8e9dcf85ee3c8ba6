"""What tile predictions become: table rows, QuPath GeoJSON, the heatmap PNG, top regions.

The per-tile columns are the same in `<name>.tiles.csv` and in /predict/region's JSON:
x, y, width, height (level-0 pixels for a slide, region pixels for a region), tissue_fraction,
p_<positive class> (p_ssa, on the threshold's scale), label, decision (the label or
not_assessable) and reasons (the input checks a not assessable tile failed, ';'-separated).
numpy + Pillow only: the serving app imports this.
"""

from __future__ import annotations

import csv
import io
import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from services.core.quality import NOT_ASSESSABLE
from services.slides.tiling import Grid, TileResult

# viridis at five stops: perceptually ordered and readable by colour-blind viewers.
_VIRIDIS = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]],
                    dtype=np.float32)
OVERLAY_ALPHA = 0.6
MIN_HEATMAP_SIDE = 256  # small regions are enlarged so the picture stays legible
POSITIVE_COLOUR = (220, 50, 47)
OTHER_COLOURS = ((38, 139, 210), (133, 153, 0), (181, 137, 0), (108, 113, 196))
NOT_ASSESSABLE_COLOUR = (128, 128, 128)
GEOJSON_NAMESPACE = uuid.UUID("0b6f7e52-3c55-4e0e-9a57-2b1f6c1d3f10")  # stable feature ids
# slides.summary.csv: one header, whatever the first slide did, so the tables of several runs
# (Processing-job instances) concatenate. A failed or skipped slide leaves the results empty.
TABLE_COLUMNS = ("slide", "path", "output", "status", "error", "tiles_analysed",
                 "tissue_area_mm2", "positive_class", "fraction_positive", "assessable_share",
                 "decision", "max_probability",
                 "top_region_mm2", "seconds")


def shown(name: str) -> str:
    """A file name as a message prints it: as it is, or JSON-quoted when it holds anything
    not printable (a newline would forge a line, an escape sequence would redraw the terminal;
    undecodable bytes would not print at all)."""
    return name if name.isprintable() else json.dumps(name)


def printable(text: str) -> str:
    """`text` on one line with every character that is not printable escaped."""
    return "".join(c if c.isprintable() else json.dumps(c)[1:-1] for c in " ".join(text.split()))


def probability_column(positive_class: str) -> str:
    """'p_ssa' for SSA: the column (and JSON key) holding P(positive class)."""
    return f"p_{positive_class.lower()}"


def columns(positive_class: str) -> tuple[str, ...]:
    return ("x", "y", "width", "height", "tissue_fraction", probability_column(positive_class),
            "label", "decision", "reasons")


def tile_row(result: TileResult, positive_class: str) -> dict[str, Any]:
    """One tile as a row, in the grid's pixels (level 0 for a slide, the region's own)."""
    return {"x": result.x, "y": result.y, "width": result.size, "height": result.size,
            "tissue_fraction": round(result.tissue_fraction, 4),
            probability_column(positive_class): round(result.probability, 6),
            "label": result.label, "decision": result.decision or result.label,
            "reasons": ";".join(result.reasons)}


class CsvTiles:
    """Streams rows to `<name>.tiles.csv`."""

    def __init__(self, stream: IO[str], positive_class: str) -> None:
        self._writer = csv.DictWriter(stream, fieldnames=columns(positive_class))
        self._writer.writeheader()

    def add(self, row: dict[str, Any]) -> None:
        self._writer.writerow(row)


def class_colour(label: str, positive_class: str, classes: tuple[str, ...]) -> tuple[int, ...]:
    if label == positive_class:
        return POSITIVE_COLOUR
    others = [c for c in classes if c != positive_class]
    return OTHER_COLOURS[others.index(label) % len(OTHER_COLOURS)] if label in others else (0, 0, 0)


def geojson_feature(row: dict[str, Any], positive_class: str, classes: tuple[str, ...],
                    key: str) -> dict[str, Any]:
    """A QuPath tile: a closed level-0 polygon, its class and P(positive) as measurements."""
    x, y, w, h = row["x"], row["y"], row["width"], row["height"]
    probability = row[probability_column(positive_class)]
    # A tile the checks turned away is classified as such in QuPath, not as its label.
    name = NOT_ASSESSABLE if row.get("reasons") else row["label"]
    colour = NOT_ASSESSABLE_COLOUR if row.get("reasons") else class_colour(
        row["label"], positive_class, classes)
    return {
        "type": "Feature",
        "id": str(uuid.uuid5(GEOJSON_NAMESPACE, f"{key}:{x}:{y}:{w}")),
        "geometry": {"type": "Polygon",
                     "coordinates": [[[x, y], [x + w, y], [x + w, y + h], [x, y + h], [x, y]]]},
        "properties": {
            "objectType": "tile",
            "isLocked": True,
            "classification": {"name": name, "color": list(colour)},
            "measurements": {f"P({positive_class})": probability,
                             "Tissue fraction": row["tissue_fraction"]},
        },
    }


class GeoJsonTiles:
    """Streams a FeatureCollection, one feature at a time (QuPath: File ▸ Import objects)."""

    def __init__(self, stream: IO[str], positive_class: str, classes: tuple[str, ...],
                 key: str) -> None:
        self._stream, self._positive, self._classes, self._key = (stream, positive_class,
                                                                  classes, key)
        self._count = 0
        stream.write('{"type": "FeatureCollection", "features": [\n')

    def add(self, row: dict[str, Any]) -> None:
        feature = geojson_feature(row, self._positive, self._classes, self._key)
        self._stream.write((",\n" if self._count else "") + json.dumps(feature))
        self._count += 1

    def close(self) -> None:
        self._stream.write("\n]}\n")


def colormap(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] → (..., 3) uint8 viridis colours."""
    position = np.clip(np.nan_to_num(values), 0.0, 1.0) * (len(_VIRIDIS) - 1)
    low = np.minimum(position.astype(int), len(_VIRIDIS) - 2)
    weight = (position - low)[..., None]
    return np.rint(_VIRIDIS[low] * (1 - weight) + _VIRIDIS[low + 1] * weight).astype(np.uint8)


def render_heatmap(thumbnail: Image.Image, values: np.ndarray, grid: Grid, label: str,
                   threshold: float) -> Image.Image:
    """P(positive) per tile over the thumbnail, with a colour bar on the right.

    Each tile colours its stride × stride cell, centred in the tile (the whole tile when tiles
    do not overlap); tiles not analysed leave the thumbnail as it is.
    """
    base = thumbnail.convert("RGB")
    if max(base.size) < MIN_HEATMAP_SIDE:
        factor = MIN_HEATMAP_SIDE / max(base.size)
        base = base.resize((round(base.width * factor), round(base.height * factor)),
                           Image.Resampling.BILINEAR)
    scale = base.width / grid.width
    colours = np.dstack([colormap(values), np.where(np.isnan(values), 0,
                                                    round(255 * OVERLAY_ALPHA)).astype(np.uint8)])
    cells = Image.fromarray(colours, "RGBA").resize(
        (max(1, round(grid.columns * grid.stride * scale)),
         max(1, round(grid.rows * grid.stride * scale))), Image.Resampling.NEAREST)
    offset = round((grid.tile - grid.stride) / 2 * scale)
    overlay = Image.new("RGBA", base.size, (0, 0, 0, 0))
    overlay.paste(cells, (offset, offset))
    picture = Image.alpha_composite(base.convert("RGBA"), overlay).convert("RGB")
    return _with_colour_bar(picture, label, threshold)


def _with_colour_bar(picture: Image.Image, label: str, threshold: float) -> Image.Image:
    """The picture with a vertical 0..1 colour bar, its ticks, the threshold and a label."""
    font = ImageFont.load_default()
    bar_height = max(picture.height - 40, 64)
    canvas = Image.new("RGB", (picture.width + 90, max(picture.height, bar_height + 40)), "white")
    canvas.paste(picture, (0, 0))
    left, top = picture.width + 12, 24
    ramp = colormap(np.linspace(1.0, 0.0, bar_height))[:, None, :].repeat(16, axis=1)
    canvas.paste(Image.fromarray(ramp, "RGB"), (left, top))
    draw = ImageDraw.Draw(canvas)
    draw.text((left - 4, 4), label, fill="black", font=font)
    for value in (0.0, 0.5, 1.0):
        y = top + round((1.0 - value) * (bar_height - 1))
        draw.line((left + 16, y, left + 20, y), fill="black")
        draw.text((left + 23, y - 6), f"{value:.1f}", fill="black", font=font)
    y = top + round((1.0 - threshold) * (bar_height - 1))
    draw.line((left - 3, y, left + 19, y), fill="red", width=2)
    draw.text((left + 23, y + 4), f"t={threshold:.2f}", fill="red", font=font)
    return canvas


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


@dataclass(frozen=True)
class Region:
    """Connected positive tiles (4-neighbourhood on the grid)."""

    tiles: list[tuple[int, int]]
    probabilities: list[float]

    def describe(self, grid: Grid, um_per_px: float) -> dict[str, Any]:
        """Bounding box [x, y, width, height] in the grid's pixels, area in mm²."""
        rows = [r for r, _ in self.tiles]
        cols = [c for _, c in self.tiles]
        x0, y0 = grid.origin(min(rows), min(cols))
        x1, y1 = (value + grid.tile for value in grid.origin(max(rows), max(cols)))
        tile_mm2 = (grid.stride * um_per_px / 1000.0) ** 2
        return {
            "tiles": len(self.tiles),
            "area_mm2": round(len(self.tiles) * tile_mm2, 4),
            "bbox": [x0, y0, x1 - x0, y1 - y0],
            "mean_probability": round(float(np.mean(self.probabilities)), 4),
            "max_probability": round(float(np.max(self.probabilities)), 4),
        }


def positive_regions(values: np.ndarray, threshold: float, limit: int = 5) -> list[Region]:
    """The largest groups of adjacent tiles at or above `threshold`, largest first."""
    positive = np.nan_to_num(values, nan=-1.0) >= threshold
    seen = np.zeros_like(positive)
    regions = []
    for start in map(tuple, np.argwhere(positive)):
        if seen[start]:
            continue
        seen[start] = True
        stack, members = [start], []
        while stack:
            row, col = stack.pop()
            members.append((int(row), int(col)))
            for r, c in ((row - 1, col), (row + 1, col), (row, col - 1), (row, col + 1)):
                inside = 0 <= r < positive.shape[0] and 0 <= c < positive.shape[1]
                if inside and positive[r, c] and not seen[r, c]:
                    seen[r, c] = True
                    stack.append((r, c))
        regions.append(Region(sorted(members), [float(values[m]) for m in sorted(members)]))
    regions.sort(key=lambda region: (-len(region.tiles), -max(region.probabilities)))
    return regions[:limit]


def write_table(path: Path, rows: list[dict[str, Any]]) -> None:
    """The summary table of a run over several slides: one row per slide, failures and skipped
    entries included, TABLE_COLUMNS always (undecodable bytes of a name backslash-escaped)."""
    with open(path, "w", newline="", encoding="utf-8", errors="backslashreplace") as stream:
        writer = csv.DictWriter(stream, fieldnames=TABLE_COLUMNS, restval="")
        writer.writeheader()
        writer.writerows(rows)
