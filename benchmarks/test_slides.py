"""(8) Whole slide: `python -m services.slides`'s core over a SYNTHETIC 40× slide — ONNX Runtime
INT8 vs FP32 vs PyTorch on the same tiles, tiles/s, seconds per slide, peak memory — and
whether the peak memory grows with the slide.

Full mode: a 20,000 × 20,000 px slide at 0.25 µm/px (the issue's size), analysed ROUNDS times
per variant, the variants interleaved (round r starts with a different one), then each variant
once over a slide of 4× the area (40,000²). Quick mode (CI): 6,000² and 12,000², batch 2, so
that even the small slide takes several batches. MHIST_BENCH_SLIDE_SIDE=N sets the 1× side
(a multiple of 8; the 4× slide is 2N) in either mode. Every run is a process of its own
(benchmarks/slides.py) with the environment it has in production, the same thread count
(BenchConfig.threads) and batch size for every variant.

Answers: every tile's P(SSA) and label from INT8 and PyTorch against ONNX FP32 on the same
slide (benchmarks.slides.agreement); a wrong answer fails the benchmark. Speed is recorded,
never asserted; the peak memory's growth between the two slides is asserted loosely (a guard
against holding pixels per tile: MAX_PEAK_GROWTH_MB), and reported exactly.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.machine import load_average, production_env, settle, usable_cpus
from benchmarks.slides import REFERENCE, SLIDE_VARIANTS, agreement, read_tiles, write_slide
from benchmarks.timing import median
from services.core.model import InferenceModel
from tests.conftest import REPO_ROOT, unavailable

# (1× side, 4× side) in level-0 pixels, tiles per inference call, timed rounds on the 1× slide.
SIDES = {"quick": (6_000, 12_000), "full": (20_000, 40_000)}
BATCH = {"quick": 2, "full": 32}  # full: the CLI's default
ROUNDS = {"quick": 1, "full": 3}
# How much more the peak RSS may be on the 4×-area slide than on the 1× slide. What does grow
# until it is full: OpenSlide's tile cache (32 MiB by default), so small slides differ by up to
# that much (quick runs here: +21 to +38 MB; with the cache off, +5 MB), and the heap's own
# slack; holding every tile's pixels would add ~0.8 MB a tile (a 448² RGBA read), +218 MB
# between the full-mode slides.
MAX_PEAK_GROWTH_MB = 96
RUN_TIMEOUT_S = 3600


def _why_not(name: str, config) -> str | None:
    if SLIDE_VARIANTS[name].runtime != "torch":
        return None
    if "torch" in config.skip:
        return "torch parts skipped by MHIST_BENCH_SKIP/--bench-skip"
    return None if importlib.util.find_spec("torch") else "torch is not installed"


def _sides(mode: str) -> tuple[int, int]:
    """The mode's slide sides, or MHIST_BENCH_SLIDE_SIDE (the 1× side; 4× is twice it)."""
    side = int(os.environ.get("MHIST_BENCH_SLIDE_SIDE") or 0)
    return (side, 2 * side) if side > 0 else SIDES[mode]


@pytest.fixture(scope="module")
def slides(bench_config, tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    """'1x' and '4x' → (the SYNTHETIC slide in a temp folder, what it is)."""
    folder = tmp_path_factory.mktemp("bench-slides")
    return {key: (folder / f"synthetic-{side}px.tif", write_slide(
        folder / f"synthetic-{side}px.tif", side)) for key, side in
        zip(("1x", "4x"), _sides(bench_config.mode), strict=True)}


def _run_one(name: str, slide: Path, out: Path, files: dict[str, Path], threads: int,
             batch: int) -> dict:
    """One variant over one slide, in its own process; its JSON line, or {"error": why}."""
    model = (["--checkpoint", str(files["checkpoint"]), "--metadata", str(files["metadata"])]
             if SLIDE_VARIANTS[name].runtime == "torch"
             else ["--onnx", str(files[SLIDE_VARIANTS[name].precision])])
    argv = [sys.executable, "-m", "benchmarks.slides", name, str(slide), "--out", str(out),
            "--threads", str(threads), "--batch-size", str(batch), *model]
    try:
        done = subprocess.run(argv, cwd=REPO_ROOT, env=production_env(), capture_output=True,
                              text=True, timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"error": f"{name} on {slide.name}: no result within {RUN_TIMEOUT_S} s"}
    if done.returncode != 0:
        return {"error": f"{name} on {slide.name} exited {done.returncode}:\n"
                         f"{done.stderr[-3000:]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def slide_runs(bench_model, bench_config, slides, tmp_path_factory) -> dict:
    """name → {"1x": [a record per round], "4x": [one record]} or {"not_run"/"error": why},
    plus "load_average": at the start and end of these runs."""
    work = tmp_path_factory.mktemp("slide-runs")
    metadata = work / "fp32-metadata.json"  # the PyTorch variant's classes, threshold, scale
    metadata.write_text(json.dumps(InferenceModel(bench_model.fp32, threads=1)
                                   .metadata.to_props()))
    files = {"fp32": bench_model.fp32, "int8": bench_model.int8,
             "checkpoint": bench_model.checkpoint, "metadata": metadata}
    names = [n for n in SLIDE_VARIANTS if _why_not(n, bench_config) is None]
    runs: dict = {n: {"not_run": _why_not(n, bench_config)} for n in SLIDE_VARIANTS
                  if n not in names}
    runs.update({n: {"1x": [], "4x": []} for n in names})
    if not bench_config.quick:  # the slides were just written: let that load decay first
        settle(usable_cpus())
    start_load = load_average()
    batch = BATCH[bench_config.mode]

    def run(name: str, key: str, index: int) -> None:
        if "error" in runs[name]:
            return
        out = work / f"{name}-{key}-{index}"
        record = _run_one(name, slides[key][0], out, files, bench_config.threads, batch)
        if "error" in record:
            runs[name] = {"error": record["error"]}
        else:
            runs[name][key].append(record)

    for r in range(ROUNDS[bench_config.mode]):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            run(name, "1x", r)
    for name in names:
        run(name, "4x", 0)
    runs["load_average"] = {"start": start_load, "end": load_average()}
    return runs


def _required(name: str, slide_runs: dict) -> dict:
    run = slide_runs[name]
    if "not_run" in run:
        if "skipped by" in run["not_run"]:
            pytest.skip(run["not_run"])
        unavailable(f"{SLIDE_VARIANTS[name].label}: {run['not_run']}")
    assert "error" not in run, run["error"]
    return run


def _stats(records: list[dict]) -> dict:
    """Medians over the rounds (peak memory: the largest) and each round's raw numbers."""
    analysed = records[0]["tiles"]["analysed"]
    return {
        "n": len(records), "tiles_analysed": analysed, "tiles_grid": records[0]["tiles"]["grid"],
        "tiles_per_s_median": median([r["timings"]["tiles_per_s"] for r in records]),
        "seconds_per_slide_median": median([r["wall_s"] for r in records]),
        "slide_tiles_per_s_median": median([analysed / r["wall_s"] for r in records]),
        "load_s_median": median([r["load_s"] for r in records]),
        "warmup_s_median": median([r["warmup_s"] for r in records]),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in records),
        "after_load_rss_mb": max(r["after_load_rss_mb"] for r in records),
        "after_warmup_rss_mb": max(r["after_warmup_rss_mb"] for r in records),
        "rounds": [{k: r[k] for k in ("wall_s", "load_s", "warmup_s", "timings", "peak_rss_mb",
                                      "after_load_rss_mb", "after_warmup_rss_mb")}
                   for r in records],
    }


@pytest.mark.parametrize("name", list(SLIDE_VARIANTS))
def test_slide_throughput(name, slide_runs, slides, bench_config, results):
    """Tiles/s, seconds per slide and peak RSS of one variant on the 1× slide (recorded)."""
    run = _required(name, slide_runs)
    variant = SLIDE_VARIANTS[name]
    first = run["1x"][0]
    results.put("slides", f"run/{name}", {
        "variant": name, "label": variant.label, "runtime": variant.runtime,
        "precision": variant.precision, "setting": variant.setting,
        "threads": first["threads"],
        "batch_size": first["batch_size"], "level": first["level"],
        "tile_px_read": first["tile_px_read"], **_stats(run["1x"])})
    results.put("slides", "slides", {
        "synthetic": True, "sizes": {key: record for key, (_, record) in slides.items()},
        "rounds": ROUNDS[bench_config.mode], "load_average": slide_runs["load_average"]})
    assert first["tiles"]["analysed"] > 0


def test_slide_answers_agree(slide_runs, bench_model, results):
    """Every tile of INT8 and PyTorch against ONNX FP32 on the same slide, both sizes."""
    reference_run = _required(REFERENCE, slide_runs)
    meta = InferenceModel(bench_model.fp32, threads=1).metadata
    positive = meta.positive_class
    threshold = getattr(meta, "served_threshold", meta.threshold)  # what the CSV's P is in
    record: dict = {"reference": REFERENCE, "threshold": threshold}
    for name, variant in SLIDE_VARIANTS.items():
        run = slide_runs[name]
        if name == REFERENCE or "1x" not in run:
            continue
        record[name] = {key: agreement(read_tiles(Path(run[key][0]["tiles_csv"]), positive),
                                       read_tiles(Path(reference_run[key][0]["tiles_csv"]),
                                                  positive), variant.precision, threshold)
                        for key in ("1x", "4x")}
    results.put("slides", "agreement", record)
    for name in SLIDE_VARIANTS:
        if name != REFERENCE:
            _required(name, slide_runs)
            for key, summary in record[name].items():
                assert summary["ok"], f"{name} on the {key} slide: {summary['problems']}"


def test_slide_memory_does_not_grow_with_the_slide(slide_runs, slides, results):
    """Peak RSS of each variant on the 4×-area slide ÷ on the 1× slide."""
    record: dict = {"sides_px": {k: v[1]["side_px"] for k, v in slides.items()}}
    for name in SLIDE_VARIANTS:
        run = slide_runs[name]
        if "1x" not in run:
            continue
        one, four = (_stats(run[key]) for key in ("1x", "4x"))
        record[name] = {
            "tiles": {"1x": one["tiles_analysed"], "4x": four["tiles_analysed"]},
            "after_warmup_rss_mb": {"1x": one["after_warmup_rss_mb"],
                                    "4x": four["after_warmup_rss_mb"]},
            "peak_rss_mb": {"1x": one["peak_rss_mb"], "4x": four["peak_rss_mb"]},
            "peak_ratio": four["peak_rss_mb"] / one["peak_rss_mb"],
        }
    results.put("slides", "memory", record)
    reference = _required(REFERENCE, slide_runs)
    tiles, batch = reference["1x"][0]["tiles"]["analysed"], reference["1x"][0]["batch_size"]
    if tiles < 2 * batch:  # one batch being predicted, the next being read
        pytest.fail(f"the 1× slide has {tiles} tiles with tissue, fewer than two batches of "
                    f"{batch}: its peak measures a partial batch, not the slide. Use a larger "
                    "MHIST_BENCH_SLIDE_SIDE.")
    for name in SLIDE_VARIANTS:
        if name in record:
            peaks = record[name]["peak_rss_mb"]
            assert peaks["4x"] - peaks["1x"] <= MAX_PEAK_GROWTH_MB, (
                f"{name}: peak RSS {peaks['1x']} → {peaks['4x']} MB for 4× the slide area, "
                f"more than {MAX_PEAK_GROWTH_MB} MB more")
