"""Section 8: whole slides through `python -m services.slides`' core — tiles/s, seconds per
slide, answers tile by tile, and peak memory against the slide's size."""

from __future__ import annotations

from benchmarks.machine import BUSY_LOAD_PER_CPU, busy
from benchmarks.report.records import SlideCheck, SlideMemory, SlideRun, SlidesSection
from benchmarks.report.text import bullets, faster, num, ratio, table

COLUMNS = ["variant", "tiles/s", "seconds per slide", "÷ PyTorch", "model load s", "warm-up s",
           "RSS after load MB", "peak RSS MB", "answers vs ONNX FP32", "n"]


def _label(slides: SlidesSection, name: str) -> str:
    run = slides.runs.get(name)
    return run.label if run else name


def _answers_cell(slides: SlidesSection, name: str) -> str:
    """A table cell: each slide size's worst |Δp| and label agreement against ONNX FP32."""
    if name == slides.reference:
        return "reference"
    sizes = slides.checks.get(name)
    if not sizes:
        return "–"
    verdict = "ok" if all(s.ok for s in sizes.values()) else "**WRONG**"
    parts = [f"{key}: max \\|Δp\\| {s.max_abs_diff:.1e} (tolerance {s.tolerance:g}), "
             f"labels {s.labels_agree}/{s.tiles}" for key, s in sizes.items()
             if s.max_abs_diff is not None]
    return f"{verdict} — " + "; ".join(parts)


def _torch(slides: SlidesSection) -> str | None:
    return next((k for k, v in slides.runs.items() if v.runtime == "torch"), None)


def _speed_findings(slides: SlidesSection) -> list[str]:
    torch_name = _torch(slides)
    found = []
    for one, other in (("ort-int8", "ort-fp32"), ("ort-fp32", torch_name),
                       ("ort-int8", torch_name)):
        a, b = slides.runs.get(one), slides.runs.get(other) if other else None
        if a and b:
            found.append("Seconds per slide: " + faster(
                a.label, a.seconds_per_slide, b.label, b.seconds_per_slide, unit="s") + ".")
    return found


def _undecided(slides: SlidesSection, name: str, sizes: dict[str, SlideCheck]) -> list[str]:
    decided = sum(s.labels_decided for s in sizes.values())
    tiles = sum(s.tiles for s in sizes.values())
    if decided >= tiles:
        return []
    return [f"{_label(slides, name)}: on {tiles - decided} of {tiles} tiles the FP32 P lies "
            "within its tolerance of the threshold, where a label may legitimately differ; "
            "only the share of equal labels bounds them there."]


def slide_findings(slides: SlidesSection) -> list[str]:
    """Seconds per slide compared between the variants (each from two medians), and what the
    tile-by-tile answer checks found."""
    found = _speed_findings(slides)
    checked = slides.checks
    if not checked:
        return found
    wrong = [_label(slides, k) for k, v in checked.items() if not all(s.ok for s in v.values())]
    summaries = [s for v in checked.values() for s in v.values()]
    lowest = min(s.label_share for s in summaries)
    found.append(
        f"Answers: **WRONG** for {', '.join(wrong)}." if wrong else
        f"Answers: {', '.join(_label(slides, k) for k in checked)} against ONNX "
        f"FP32 on {sum(s.tiles for s in summaries)} tiles (both slides): every P within "
        f"tolerance; the lowest share of equal labels {lowest:.1%}.")
    for name, sizes in checked.items():
        found += _undecided(slides, name, sizes)
    return found


def _memory_line(label: str, rec: SlideMemory) -> str:
    peaks, tiles, warm = rec.peak_rss_mb, rec.tiles, rec.after_warmup_rss_mb
    above = (f"; above the loaded, warmed-up model {peaks['1x'] - warm['1x']} → "
             f"{peaks['4x'] - warm['4x']} MB" if warm.get("1x") and warm.get("4x") else "")
    return (f"{label}: tiles analysed ×{tiles['4x'] / tiles['1x']:.2f} "
            f"({tiles['1x']} → {tiles['4x']}); peak RSS ×{rec.peak_ratio:.2f} "
            f"({peaks['1x']} → {peaks['4x']} MB, {peaks['4x'] - peaks['1x']:+d} MB{above}).")


def memory_findings(slides: SlidesSection) -> list[str]:
    """How the peak RSS followed the slide's area: ratios computed from the two runs."""
    sides = slides.sides_px
    found = []
    if sides.get("1x") and sides.get("4x"):
        area = (sides["4x"] / sides["1x"]) ** 2
        found.append(f"Slide area ×{area:.2f} ({sides['1x']:,}² → {sides['4x']:,}² px).")
    return found + [_memory_line(_label(slides, name), rec)
                    for name, rec in slides.memory.items()]


def _row(slides: SlidesSection, name: str, run: SlideRun, torch_s: float | None) -> list:
    return [run.label, num(run.tiles_per_s), num(run.seconds_per_slide, 2),
            ratio(run.seconds_per_slide, torch_s), num(run.load_s, 2), num(run.warmup_s, 2),
            run.after_load_rss_mb, run.peak_rss_mb, _answers_cell(slides, name), run.n]


def _intro(slides: SlidesSection) -> str:
    first = next(iter(slides.runs.values()))
    return (
        f"A SYNTHETIC {slides.side_px:,} × {slides.side_px:,} px slide at {slides.mpp} µm/px "
        f"(tiled pyramidal TIFF, downsamples {slides.downsamples}, {slides.file_mb} MB; the "
        f"synthetic generator's tissue, not a scan): {first.tiles_grid} tiles in the grid, "
        f"{first.tiles_analysed} with tissue analysed, read at level {first.level} "
        f"({first.tile_px_read} px a tile, resized by the model's preprocessing); batch "
        f"{first.batch_size}, {first.threads} threads, median of {first.n} run(s) per variant, "
        "the variants interleaved.")


def _load_line(slides: SlidesSection, cpus: int) -> list[str]:
    start = slides.load_start
    if not start:
        return []
    return [f"- Load average (1/5/15 min) at the start of these runs {start}, at the end "
            f"{slides.load_end}"
            + (f": **busy** (1-min load > {BUSY_LOAD_PER_CPU} × {cpus} CPUs)."
               if busy(start, cpus) else ".")]


def _extras(slides: SlidesSection) -> list[str]:
    settings = [f"- **{run.label}**: {run.setting}" for run in slides.runs.values()
                if run.setting]
    text = ["", "How each variant is set up:", "", *settings] if settings else []
    if slides.sides_px or slides.memory:
        text += ["", "Peak memory against the slide's size (each variant once more over a "
                 "slide of 4× the area):", "", *bullets(memory_findings(slides))]
    return text


def slides_section(slides: SlidesSection | None, cpus: int) -> str:
    if slides is None:
        return "## 8. Whole slide\n\nNo data."
    torch = _torch(slides)
    torch_s = slides.runs[torch].seconds_per_slide if torch else None
    rows = [_row(slides, name, run, torch_s) for name, run in slides.runs.items()]
    return "\n".join([
        "## 8. Whole slide (`python -m services.slides`' core, one process per run)", "",
        _intro(slides), "",
        "tiles/s = tiles analysed ÷ the time from the first tile read to the last answer "
        "written (reading, preprocessing, the model); seconds per slide = opening the slide → "
        "every output written, the model already loaded and warmed up; peak = the process's "
        "VmHWM. Answers: each variant's `<name>.tiles.csv` against ONNX FP32's, tile by tile "
        "(P to the CSV's 6 decimals).", "",
        table(COLUMNS, rows), "", *bullets(slide_findings(slides)),
        *_load_line(slides, cpus), *_extras(slides)])
