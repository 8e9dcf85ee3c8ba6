"""Slides through OpenSlide (the `openslide-python` + `openslide-bin` wheels: no system library).

OpenSlide reads Aperio SVS, Hamamatsu NDPI, MIRAX, Leica SCN, Philips TIFF, Ventana BIF,
DICOM-WSI (OpenSlide 4; pass one file of the series) and generic tiled TIFF. Every failure
becomes a ServiceError with a one-line message: the CLI prints it and goes on with the next
slide. Only the CLI imports this module (the serving images do not ship OpenSlide).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import openslide
from PIL import Image

from services.core.errors import ServiceError
from services.core.preprocessing import to_rgb
from services.slides.tiling import TileReader

# Level pixels read at a time for the thumbnail: 4 MB of RGBA, ~4× that while it is made RGB.
# 2048 (16 MB a block) raised the peak RSS of a 40,000² slide by ~20 MB over a 20,000² one,
# whose level fits in one smaller block; at 1024 the two peaks differ by ~4 MB.
THUMBNAIL_BLOCK = 1024
LEVEL_TOLERANCE = 1.01  # a level 1 % coarser than wanted still counts as not upsampling
# µm per level-0 pixel a slide may have. Scanners record 0.1–1 (100× oil to 10×), camera images
# of a microscope up to ~10; below 0.01 or above 100 a value is another unit (nm, mm) or
# corruption, and at the extremes (1e-310, 1e308) the scale arithmetic overflows.
MPP_RANGE = (0.01, 100.0)


@dataclass(frozen=True)
class Slide:
    path: Path
    handle: openslide.OpenSlide
    mpp: float  # µm per level-0 pixel
    mpp_source: str  # "openslide.mpp-x/y" or "--mpp"

    @property
    def dimensions(self) -> tuple[int, int]:
        return self.handle.dimensions

    @property
    def downsamples(self) -> Sequence[float]:
        return self.handle.level_downsamples

    def describe(self) -> dict:
        props = self.handle.properties
        return {
            "name": self.path.name,
            "path": str(self.path),
            "vendor": props.get(openslide.PROPERTY_NAME_VENDOR),
            "dimensions": list(self.dimensions),
            "levels": self.handle.level_count,
            "level_downsamples": [round(d, 4) for d in self.downsamples],
            "mpp": self.mpp,
            "mpp_source": self.mpp_source,
            "objective_power": props.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER),
            "size_bytes": self.path.stat().st_size,
        }


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


@contextmanager
def open_slide(path: Path, mpp: float | None = None) -> Iterator[Slide]:
    """The slide at `path`, closed afterwards; ServiceError when it cannot be used."""
    if not path.is_file():
        raise ServiceError(404, "no_such_file", f"{path} does not exist or is not a file.")
    try:
        handle = openslide.OpenSlide(str(path))
    except openslide.OpenSlideUnsupportedFormatError:
        if _container(path):
            raise ServiceError(
                422, "corrupt_slide",
                f"OpenSlide cannot read this {_container(path)} file: it is truncated or corrupt, "
                "or not a tiled whole-slide image.",
            ) from None
        raise ServiceError(
            415, "not_a_slide",
            "OpenSlide does not recognise this file as a slide (SVS, NDPI, MRXS, SCN, tiled "
            "TIFF, DICOM ...); for a single image use POST /predict/region.",
        ) from None
    except (openslide.OpenSlideError, OSError) as exc:
        raise ServiceError(422, "corrupt_slide",
                           f"The slide is corrupt or truncated: {_one_line(exc)}.") from None
    try:
        level0_mpp, source = slide_mpp(handle.properties, mpp)
        yield Slide(path, handle, level0_mpp, source)
    finally:
        handle.close()


def _container(path: Path) -> str | None:
    """'TIFF' or 'DICOM' when the file starts like one (SVS, NDPI, SCN, BIF are TIFFs)."""
    with open(path, "rb") as stream:
        head = stream.read(132)
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    return "DICOM" if head[128:132] == b"DICM" else None


def slide_mpp(properties: Mapping[str, str], override: float | None) -> tuple[float, str]:
    """(µm per level-0 pixel, where it came from); 422 `unknown_resolution` without one."""
    if override is not None:
        return override, "--mpp"
    values = []
    for name in (openslide.PROPERTY_NAME_MPP_X, openslide.PROPERTY_NAME_MPP_Y):
        try:
            values.append(float(properties[name]))
        except (KeyError, ValueError):
            continue
    values = [v for v in values if 0.0 < v < math.inf]
    if not values:
        raise ServiceError(
            422, "unknown_resolution",
            "The slide does not record its resolution (no openslide.mpp-x property); pass "
            "--mpp with its µm per pixel at level 0 (about 0.25 at 40×, 0.5 at 20×).",
        )
    mpp = math.fsum(v / len(values) for v in values)  # not sum()/n: 1e308 + 1e308 is inf
    low, high = MPP_RANGE
    if not low <= mpp <= high:
        raise ServiceError(
            422, "invalid_resolution",
            f"The slide records {mpp:g} µm per pixel, outside the {low:g}..{high:g} a scan can "
            "have (corrupt, or another unit); pass --mpp with its µm per pixel at level 0 "
            "(about 0.25 at 40×, 0.5 at 20×).",
        )
    return mpp, "openslide.mpp-x/y"


def choose_level(downsamples: Sequence[float], factor: float) -> int:
    """The coarsest level that needs no upsampling to reach `factor` (level-0 pixels per model
    pixel): fewest pixels to read, and the model's own filter only ever shrinks them."""
    fitting = [i for i, d in enumerate(downsamples) if d <= factor * LEVEL_TOLERANCE]
    return max(fitting, key=lambda i: downsamples[i]) if fitting else 0


def read_region(slide: Slide, level: int, x: int, y: int, size: tuple[int, int]) -> Image.Image:
    """`size` level pixels from level-0 (x, y), RGBA; 422 `corrupt_slide` when unreadable."""
    try:
        return slide.handle.read_region((x, y), level, size)
    except openslide.OpenSlideError as exc:
        raise ServiceError(
            422, "corrupt_slide",
            f"The slide is corrupt or truncated: reading level {level} at ({x}, {y}) failed: "
            f"{_one_line(exc)}.",
        ) from None


def level_reader(slide: Slide, level: int) -> TileReader:
    """Tiles given in level-0 pixels, read at `level` (RGBA: the one preprocessing composites
    transparent margins on white and resizes to the model's input)."""
    downsample = slide.downsamples[level]

    def read(x: int, y: int, side: int) -> Image.Image:
        size = max(1, round(side / downsample))
        return read_region(slide, level, x, y, (size, size))

    return read


def thumbnail_level(slide: Slide, size: tuple[int, int]) -> int:
    """The level read_thumbnail reads for a thumbnail of `size`: the nearest above it."""
    return slide.handle.get_best_level_for_downsample(slide.dimensions[0] / size[0])


def read_thumbnail(slide: Slide, size: tuple[int, int]) -> Image.Image:
    """The whole slide at `size`, read block by block from the level nearest above it, so
    memory stays bounded even for a slide without a pyramid."""
    width, _ = slide.dimensions
    scale = size[0] / width  # thumbnail pixels per level-0 pixel
    level = thumbnail_level(slide, size)
    downsample = slide.downsamples[level]
    level_w, level_h = slide.handle.level_dimensions[level]
    thumbnail = Image.new("RGB", size, "white")
    for top in range(0, level_h, THUMBNAIL_BLOCK):
        for left in range(0, level_w, THUMBNAIL_BLOCK):
            block = (min(THUMBNAIL_BLOCK, level_w - left), min(THUMBNAIL_BLOCK, level_h - top))
            x0, y0, x1, y1 = (round(v * downsample * scale)
                              for v in (left, top, left + block[0], top + block[1]))
            if x1 <= x0 or y1 <= y0:
                continue
            pixels = read_region(slide, level, round(left * downsample),
                                 round(top * downsample), block)
            thumbnail.paste(to_rgb(pixels).resize((x1 - x0, y1 - y0), Image.Resampling.BOX),
                            (x0, y0))
    return thumbnail


def library_version() -> str:
    return openslide.__library_version__
