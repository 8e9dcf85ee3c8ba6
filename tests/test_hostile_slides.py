"""Hostile inputs to the slides CLI ("Hostile clients, third round"), on real slide files.

- Slides whose names collide (`a/case.tiff` and `b/case.tiff`, `case.tif` and `case.tiff`)
  each get their own outputs; what is skipped is said, with the reason; slides.summary.csv
  has one header whatever fails.
- A tiny TIFF declaring 200,000² px is refused before any pixel is read.
- Numbers no slide can have (--mpp 1e-310, a 4,000-digit --stride, an Aperio MPP of 1e308),
  --out naming a file and a newline in a file name: one clear line, the right exit status.
"""

from __future__ import annotations

import csv
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile

from tests.conftest import REPO_ROOT
from tests.support.slides import TIFF_TILE, tissue_canvas, write_pyramid

CELL_PX = 224  # as tests/test_slides.py: 448 µm a cell at 2.0 µm/px, level 0 at 0.5 µm/px
CANVAS_MPP, LEVEL0_MPP = 2.0, 0.5
TABLE_HEADER = ["slide", "path", "output", "status", "error", "tiles_analysed",
                "tissue_area_mm2", "positive_class", "fraction_positive", "assessable_share",
                "decision", "max_probability", "top_region_mm2", "seconds"]
OUTPUT_SUFFIXES = (".tiles.csv", ".geojson", ".heatmap.png", ".summary.json")


def run_slides(*args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services.slides", *map(str, args)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)


def analyse(model: Path, out: Path, *args: str | Path, timeout: float = 300
            ) -> subprocess.CompletedProcess:
    return run_slides(*args, "--model", model, "--out", out, "--no-progress", "--threads", "1",
                      "--min-tissue", "0.4", timeout=timeout)


@pytest.fixture(scope="module")
def small_slides() -> dict[str, np.ndarray]:
    """Two 2 × 2-cell canvases that answer differently."""
    return {"ssa": tissue_canvas(("SS", "SS"), CELL_PX)[0],
            "hp": tissue_canvas(("HH", "HH"), CELL_PX)[0]}


def slide(path: Path, canvas: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_pyramid(path, canvas, CANVAS_MPP, LEVEL0_MPP, downsamples=(1, 4))


def table(out: Path) -> tuple[list[str], list[dict]]:
    with open(out / "slides.summary.csv", newline="", encoding="utf-8") as stream:
        reader = csv.DictReader(stream)
        return list(reader.fieldnames or []), list(reader)


def huge_tiff(path: Path, side: int = 200_000, tile: int = 4096) -> Path:
    """A valid generic TIFF of side² px in ~68 KB: every tile entry points at one deflated
    white tile. OpenSlide reads it (0.2 s a 1024² block), so the whole run takes hours."""
    data = zlib.compress(b"\xff" * (tile * tile * 3), 9)
    count = (-(-side // tile)) ** 2
    ifd_at, entries = 8, 12
    offsets_at = ifd_at + 2 + entries * 12 + 4
    counts_at = offsets_at + 4 * count
    bits_at = counts_at + 4 * count
    data_at = bits_at + 6
    tags = [(256, 4, 1, side), (257, 4, 1, side), (258, 3, 3, bits_at), (259, 3, 1, 8),
            (262, 3, 1, 2), (277, 3, 1, 3), (284, 3, 1, 1), (322, 3, 1, tile),
            (323, 3, 1, tile), (324, 4, count, offsets_at), (325, 4, count, counts_at),
            (339, 3, 1, 1)]
    out = bytearray(b"II*\x00" + struct.pack("<IH", ifd_at, len(tags)))
    for tag, kind, number, value in tags:
        layout = "<HHIHH" if kind == 3 and number == 1 else "<HHII"
        out += struct.pack(layout, tag, kind, number, *((value, 0) if layout == "<HHIHH"
                                                       else (value,)))
    out += struct.pack("<I", 0)
    out += struct.pack(f"<{count}I", *[data_at] * count)
    out += struct.pack(f"<{count}I", *[len(data)] * count)
    out += struct.pack("<3H", 8, 8, 8) + data
    path.write_bytes(bytes(out))
    return path


def aperio(path: Path, canvas: np.ndarray, mpp: str) -> Path:
    """An Aperio SVS (OpenSlide's `aperio` vendor) recording `MPP = <mpp>`."""
    height, width = canvas.shape[:2]
    description = (f"Aperio Image Library v12.0.15\r\n{width}x{height} [0,0 {width}x{height}] "
                   f"({TIFF_TILE}x{TIFF_TILE}) RGB|AppMag = 20|MPP = {mpp}")
    with tifffile.TiffWriter(path) as tiff:
        tiff.write(np.repeat(np.repeat(canvas, 4, axis=0), 4, axis=1), photometric="rgb",
                   tile=(TIFF_TILE, TIFF_TILE), compression="zlib", description=description,
                   metadata=None)
    return path


# --- outputs that collided -------------------------------------------------------------------

def test_slides_with_the_same_stem_get_their_own_outputs(small_slides, model_int8_path,
                                                         tmp_path: Path) -> None:
    """Once: all four reported `ok` while only one set of case.* files remained."""
    source, out = tmp_path / "in", tmp_path / "out"
    given = [slide(source / "a" / "case.tiff", small_slides["ssa"]),
             slide(source / "b" / "case.tiff", small_slides["hp"])]
    slide(source / "c" / "case.tif", small_slides["hp"])
    slide(source / "c" / "case.tiff", small_slides["ssa"])
    result = analyse(model_int8_path, out, *given, source / "c")
    assert result.returncode == 0, result.stderr
    header, rows = table(out)
    assert header == TABLE_HEADER
    outputs = {Path(row["path"]).relative_to(source).as_posix(): row["output"] for row in rows}
    assert outputs == {"a/case.tiff": "a_case.tiff", "b/case.tiff": "b_case.tiff",
                       "c/case.tif": "case.tif", "c/case.tiff": "c_case.tiff"}
    assert all(row["status"] == "ok" for row in rows)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{name}{suffix}" for name in outputs.values() for suffix in OUTPUT_SUFFIXES]
        + ["slides.summary.csv"])
    for relative, name in outputs.items():  # each set of files is its own slide's
        summary = json.loads((out / f"{name}.summary.json").read_text())
        assert Path(summary["slide"]["path"]).resolve() == (source / relative).resolve()
        assert summary["outputs"]["tiles"] == f"{name}.tiles.csv"
    fractions = {row["path"]: float(row["fraction_positive"]) for row in rows}
    ssa, hp = fractions[str(given[0])], fractions[str(given[1])]
    assert ssa > hp  # not one slide's answer copied to the other's row


def test_the_same_slide_given_twice_is_analysed_once(small_slides, model_int8_path,
                                                     tmp_path: Path) -> None:
    path = slide(tmp_path / "in" / "case.tif", small_slides["ssa"])
    result = analyse(model_int8_path, tmp_path / "out", path, tmp_path / "in")
    assert result.returncode == 0, result.stderr
    _, rows = table(tmp_path / "out")
    assert [row["status"] for row in rows] == ["ok", "skipped"]
    assert "same file" in rows[1]["error"]
    assert "skipped" in result.stderr and "same file" in result.stderr


def test_what_is_skipped_is_said_with_the_reason(small_slides, model_int8_path,
                                                 tmp_path: Path) -> None:
    """Once: slides in subfolders (and hidden files) were left out without a word."""
    source, out = tmp_path / "in", tmp_path / "out"
    slide(source / "top.tif", small_slides["ssa"])
    slide(source / "sub" / "deeper.tif", small_slides["hp"])
    (source / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    result = analyse(model_int8_path, out, source)
    assert result.returncode == 0, result.stderr
    notes = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert len(notes) == 2, result.stderr
    (folder,) = [line for line in notes if "sub" in line]
    assert "skipped" in folder and "a folder" in folder and "pass it" in folder
    (hidden,) = [line for line in notes if ".DS_Store" in line]
    assert "hidden" in hidden
    _, rows = table(out)
    status = {Path(row["path"]).name: (row["status"], row["error"]) for row in rows}
    assert status["top.tif"][0] == "ok"
    assert status["sub"][0] == status[".DS_Store"][0] == "skipped"
    assert status["sub"][1] and status[".DS_Store"][1]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"top{s}" for s in OUTPUT_SUFFIXES] + ["slides.summary.csv"])


def test_the_summary_table_has_one_header_whatever_fails_first(small_slides, model_int8_path,
                                                               tmp_path: Path) -> None:
    """Once: a failing first slide put `error` before the result columns, so the tables of
    several Processing-job instances did not line up."""
    headers = []
    for bad in ("0-first.txt", "z-last.txt"):
        source = tmp_path / bad / "in"
        slide(source / "good.tif", small_slides["ssa"])
        (source / bad).write_text("not a slide\n")
        result = analyse(model_int8_path, tmp_path / bad / "out", source)
        assert result.returncode == 1, result.stderr
        header, rows = table(tmp_path / bad / "out")
        headers.append(header)
        assert sorted(row["status"] for row in rows) == ["error", "ok"]
    assert headers == [TABLE_HEADER, TABLE_HEADER]


# --- a slide that declares more than it holds ------------------------------------------------

def test_a_tiny_file_declaring_a_huge_slide_is_refused_before_any_read(
        small_slides, model_int8_path, tmp_path: Path) -> None:
    """Once: a 68 KB TIFF declaring 200,000² px kept the CLI busy for hours (the thumbnail
    alone needed ~38,000 block reads)."""
    source = tmp_path / "in"
    source.mkdir()
    huge = huge_tiff(source / "huge.tif")
    assert huge.stat().st_size < 100_000
    slide(source / "normal.tif", small_slides["ssa"])
    result = analyse(model_int8_path, tmp_path / "out", source, "--mpp", "0.5", timeout=90)
    assert result.returncode == 1, result.stderr
    (line,) = [e for e in result.stderr.splitlines() if e.startswith("error: ")]
    assert line.startswith("error: huge.tif: ") and line.endswith("[slide_too_large]")
    assert "200000x200000" in line and "--max-gigapixels" in line
    _, rows = table(tmp_path / "out")
    assert {row["output"]: row["status"] for row in rows} == {"huge": "error", "normal": "ok"}


def test_the_pixel_bound_can_be_raised_or_lowered(small_slides, model_int8_path,
                                                  tmp_path: Path) -> None:
    path = slide(tmp_path / "normal.tif", small_slides["ssa"])
    lowered = analyse(model_int8_path, tmp_path / "out", path, "--max-gigapixels", "0.000001")
    assert lowered.returncode == 1 and "[slide_too_large]" in lowered.stderr
    for bad in ("0", "-1", "nan", "inf"):
        refused = analyse(model_int8_path, tmp_path / "out", path, "--max-gigapixels", bad)
        assert refused.returncode == 2 and "--max-gigapixels" in refused.stderr
        assert "Traceback" not in refused.stderr


# --- numbers and names no slide can have -----------------------------------------------------

@pytest.mark.parametrize("option", [
    ("--mpp", "1e-310"), ("--mpp", "1e308"), ("--mpp", "1e-9"),
    ("--stride", "9" * 4000), ("--stride", "10000000000"),
    ("--batch-size", "9" * 4000), ("--threads", "9" * 4000),
], ids=["mpp-subnormal", "mpp-huge", "mpp-tiny", "stride-4000-digits", "stride-huge",
        "batch-4000-digits", "threads-4000-digits"])
def test_impossible_numbers_are_usage_errors(small_slides, model_int8_path, tmp_path: Path,
                                             option: tuple[str, str]) -> None:
    """Once: --mpp 1e-310 and a 4,000-digit --stride ended in `unexpected_error`."""
    path = slide(tmp_path / "normal.tif", small_slides["ssa"])
    result = analyse(model_int8_path, tmp_path / "out", path, *option)
    assert result.returncode == 2, result.stdout + result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert option[0] in last and "Traceback" not in result.stderr
    assert "unexpected_error" not in result.stderr and len(last) < 300


def test_an_aperio_mpp_of_1e308_is_a_clear_per_slide_error(small_slides, model_int8_path,
                                                           tmp_path: Path) -> None:
    """Once: ZeroDivisionError (the mean of two 1e308 values is inf)."""
    path = aperio(tmp_path / "huge-mpp.svs", small_slides["ssa"], "1e308")
    result = analyse(model_int8_path, tmp_path / "out", path)
    assert result.returncode == 1, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: huge-mpp.svs: ") and line.endswith("[invalid_resolution]")
    assert "--mpp" in line and "ZeroDivision" not in line
    # The file's value is overridden by --mpp: the same slide then runs.
    fixed = analyse(model_int8_path, tmp_path / "out", path, "--mpp", "0.5")
    assert fixed.returncode == 0, fixed.stderr


def test_out_naming_a_file_is_a_usage_error(small_slides, model_int8_path,
                                            tmp_path: Path) -> None:
    """Once: a FileExistsError traceback and exit status 1."""
    path = slide(tmp_path / "normal.tif", small_slides["ssa"])
    taken = tmp_path / "results"
    taken.write_text("a file, not a folder\n")
    result = analyse(model_int8_path, taken, path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: --out ") and "not a folder" in line


def test_a_newline_in_a_file_name_cannot_forge_a_line(small_slides, model_int8_path,
                                                      tmp_path: Path) -> None:
    """Once: `bad\\nerror: forged.tif` printed a second, forged `error:` line."""
    source = tmp_path / "in"
    slide(source / "good.tif", small_slides["ssa"])
    (source / "bad\nerror: forged.tif").write_text("not a slide\n")
    (source / "bell\x07\x1b[2J.txt").write_text("not a slide\n")
    result = analyse(model_int8_path, tmp_path / "out", source)
    assert result.returncode == 1, result.stderr
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 2, result.stderr
    assert all(line.startswith("error: \"") for line in errors), errors
    assert any('"bad\\nerror: forged.tif": ' in line for line in errors), errors
    assert "\x1b" not in result.stderr and "\x07" not in result.stderr
    _, rows = table(tmp_path / "out")
    assert sorted(row["slide"] for row in rows) == sorted(
        ["good.tif", "bad\nerror: forged.tif", "bell\x07\x1b[2J.txt"])
