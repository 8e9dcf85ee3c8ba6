"""benchmarks/report on a committed fixture of raw results (benchmarks/fixtures/report-run:
a trimmed quick run on the 2-CPU development machine) — fast, no containers, no model.

The report may only state what the data says: each test changes the data and checks that the
sentence follows it, or checks a sentence against a value computed here from the fixture.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from benchmarks import report
from benchmarks.machine import refusal
from benchmarks.report.cold_start import PHASES
from benchmarks.report.end_to_end import overhead_goals
from benchmarks.report.fields import ReportDataError
from benchmarks.report.goals import GOALS_FILE, read_goals
from benchmarks.report.headline import headline_rows
from benchmarks.report.throughput import throughput_goals
from benchmarks.store import read_results

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "report-run"
REPO_ROOT = Path(__file__).resolve().parents[1]
# Sentences earlier versions printed whatever the measurements said.
FIXED_CLAIMS = ("barely beats", "slowed more by the other jobs", "spin-wait",
                "expected to gain", "machine was quiet", "Latency does not depend")


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A writable copy of the fixture."""
    return Path(shutil.copytree(FIXTURE, tmp_path / FIXTURE.name))


def _edit(folder: Path, name: str, change) -> None:
    path = folder / name
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _render(folder: Path = FIXTURE) -> str:
    return report.render(report.load(folder))


def _speed(a: float, b: float) -> str:
    return f"×{b / a:.2f} faster" if a < b else f"×{a / b:.2f} slower"


def test_every_section_has_data():
    text = _render()
    for heading in ("## Headline", "## 1. Model only", "## 2. End to end", "## 3. Throughput",
                    "## 4. Cold start", "## 5. Size", "## 6. Peers", "## 7. FP32 vs INT8"):
        assert heading in text
    assert "No data." not in text


def test_no_fixed_claims():
    text = _render()
    for phrase in FIXED_CLAIMS:
        assert phrase not in text


def test_model_comparisons_are_computed():
    model = read_results(FIXTURE)["model"]
    fp32, int8 = model["ort-fp32/b1"]["p50_ms"], model["ort-int8/b1"]["p50_ms"]
    expected = (f"ONNX Runtime INT8 ({int8:.1f} ms) vs ONNX Runtime FP32 ({fp32:.1f} ms): "
                f"ONNX Runtime INT8 {_speed(int8, fp32)}")
    assert expected in _render()


def test_a_comparison_follows_the_numbers(run_dir):
    """Make INT8 slower than FP32 in the data: the sentence must say so."""
    def slower(model: dict) -> None:
        model["ort-int8/b1"]["p50_ms"] = model["ort-fp32/b1"]["p50_ms"] * 2
    _edit(run_dir, "raw/model.json", slower)
    assert "ONNX Runtime INT8 ×2.00 slower" in _render(run_dir)


def test_http_and_peer_comparisons_are_computed():
    data = read_results(FIXTURE)
    flask, base = data["http"]["flask-fp32"]["p50_ms"], data["http"]["torch"]["p50_ms"]
    text = _render()
    assert f"Flask container FP32 ({flask:.1f} ms) vs PyTorch baseline container ({base:.1f} ms)" \
           f": Flask container FP32 {_speed(flask, base)}" in text
    ours, mlflow = (data["peer"][k]["p50_ms"] for k in ("ours-fp32", "mlflow-onnx-png"))
    assert (f"ours (ONNX FP32, PNG) ({ours:.1f} ms) vs MLflow (ONNX FP32, PNG) ({mlflow:.1f} ms)"
            in text)
    onnx, torch = (data["peer"][k]["p50_ms"] for k in ("mlflow-onnx-fp32", "mlflow-pytorch"))
    assert (f"MLflow (ONNX FP32, tensor) ({onnx:.1f} ms) vs MLflow (PyTorch, tensor) "
            f"({torch:.1f} ms)" in text)


def test_peer_comparisons_pair_like_requests():
    """A PNG row is never set against a tensor row (the bodies differ ~25× in size)."""
    findings = [line for line in _render().split("\n") if line.startswith("- ") and " vs " in line
                and "MLflow" in line]
    assert findings
    for line in findings:
        assert not ("PNG" in line and "tensor" in line), line


def test_busy_run_is_flagged(run_dir):
    data = read_results(FIXTURE)
    cpus = data["machine"]["usable_cpus"]
    _edit(run_dir, "run.json", lambda run: run.update(load_average_at_start=[cpus, 1, 1]))
    text = _render(run_dir)
    assert "BUSY MACHINE" in text and "**busy machine: not comparable" in text


def test_idle_run_is_not_flagged(run_dir):
    _edit(run_dir, "run.json", lambda run: run.update(load_average_at_start=[0.05, 0.1, 0.1]))
    text = _render(run_dir)
    assert "BUSY" not in text and "not flagged as busy" in text


@pytest.mark.parametrize(("mode", "load", "environ", "refused"), [
    ("full", [1.5, 1, 1], {}, True),
    ("full", [1.5, 1, 1], {"MHIST_BENCH_ALLOW_BUSY": "1"}, False),
    ("full", [0.5, 3, 3], {}, False),  # only the 1-minute average counts, at the start
    ("quick", [1.5, 1, 1], {}, False),  # CI's quick runs are flagged, not refused
])
def test_busy_full_run_is_refused(mode, load, environ, refused):
    assert (refusal(mode, load, 2, environ) is not None) is refused


def test_wrong_answers_are_shown(run_dir):
    def wrong(model: dict) -> None:
        model["ort-int8/b1"]["answers"].update(ok=False, max_abs_diff=0.4)
        model["agreement"]["ort-int8"]["ok"] = False
    _edit(run_dir, "raw/model.json", wrong)
    text = _render(run_dir)
    assert "**WRONG** — max \\|Δp\\| 4.0e-01" in text
    assert "Answers: **WRONG** for ONNX Runtime INT8." in text


def test_skips_and_failures_are_listed(run_dir):
    _edit(run_dir, "run.json", lambda run: run.update(
        skipped=[{"what": "test_model.py::test_model_latency[torch-int8]",
                  "reason": "torchao not installed"}],
        failed=[{"what": "test_http.py::test_http_latency[flask-int8]",
                 "message": "Traceback…\nAssertionError: wrong answers"}]))
    text = _render(run_dir)
    assert "- `test_model.py::test_model_latency[torch-int8]` — torchao not installed" in text
    assert "- `test_http.py::test_http_latency[flask-int8]` — AssertionError: wrong answers" in text


def test_model_quality_caveat_follows_the_metrics(run_dir):
    def chance(precision: dict) -> None:
        precision["fp32_vs_int8"]["comparison"]["fp32"].update(roc_auc=0.3,
                                                               balanced_accuracy=0.5)
    assert "worse than chance" not in _render()  # the fixture's model: AUC 1.0
    _edit(run_dir, "raw/precision.json", chance)
    text = _render(run_dir)
    assert "FP32 ROC AUC 0.300 < 0.5" in text and "every image the same label" in text


def test_headline_cells_are_the_section_numbers():
    data = read_results(FIXTURE)
    rows = {row[0]: row[1:] for row in headline_rows(report.load(FIXTURE))}
    model = data["model"]
    assert rows["model only, batch 1, p50 ms"][3].startswith(
        f"{model['ort-fp32/b1']['p50_ms']:.1f} (×")
    assert rows["one PNG over HTTP, Flask container (PyTorch: baseline container), p50 ms"][1] \
        == f"{data['http']['torch']['p50_ms']:.1f}"


def test_generate_writes_summary_latest_and_readme(run_dir, tmp_path):
    latest, readme = tmp_path / "LATEST.md", tmp_path / "README.md"
    readme.write_text(f"# x\n\n{report.README_BEGIN}\nold table\n{report.README_END}\n\nrest\n")
    summary = report.generate(run_dir, latest=latest, readme=readme)
    assert (run_dir / "plots" / "latency_model.png").is_file()
    assert "## Plots" in summary.read_text() and "## Plots" not in latest.read_text()
    block = report.extract_block(readme.read_text())
    assert block == report.extract_block(latest.read_text())
    assert "old table" not in block and readme.read_text().endswith("\n\nrest\n")


def test_readme_table_matches_latest():
    """README.md's benchmark table is LATEST.md's headline (python -m benchmarks.report
    --readme README.md copies it)."""
    readme = report.extract_block((REPO_ROOT / "README.md").read_text())
    assert readme is not None, "README.md lost its benchmarks-table markers"
    assert readme == report.readme_block_for(report.LATEST.read_text()), (
        "README.md's benchmark table differs from benchmarks/LATEST.md: run "
        "`python -m benchmarks.report --readme README.md`")


def test_cold_start_is_set_against_the_floor(run_dir):
    cold = read_results(FIXTURE)["coldstart"]
    floor = cold["container/floor"]["first_200_s_median"]
    flask = cold["container/flask-int8"]["first_200_s_median"]
    text = _render()
    assert f"| {flask:.2f} | {flask - floor:.2f} | " in text
    assert f"| floor: base image, `python3 -c pass` | {floor:.2f} | – | – |" in text

    def at(seconds: float):
        return lambda c: c["container/flask-int8"].update(first_200_s_median=seconds)
    _edit(run_dir, "raw/coldstart.json", at(floor + 0.30))
    assert f"| {floor + 0.30:.2f} | 0.30 | yes |" in _render(run_dir)
    _edit(run_dir, "raw/coldstart.json", at(floor + 0.40))
    assert f"| {floor + 0.40:.2f} | 0.40 | **no** |" in _render(run_dir)


def test_cold_start_phases_come_from_the_record():
    phases = read_results(FIXTURE)["coldstart"]["container/flask-int8"]["phases_median"]
    text = _render()
    assert "Where a container's cold start goes" in text
    cells = " | ".join(f"{phases[name]:.3f}" for name, _ in PHASES)
    assert f"| Flask container, INT8 | {cells} |" in text


def test_stage_breakdown_sums_the_stages():
    rec = read_results(FIXTURE)["http"]["flask-int8"]
    stages = rec["stages_ms"]
    total = sum(stages.values())
    text = _render()
    assert f"| {total:.2f} | {rec['mean_ms']:.2f} | {rec['mean_ms'] - total:.2f} |" in text
    assert f"| {stages['run']:.2f} |" in text


def test_size_goal_follows_the_numbers(run_dir):
    _edit(run_dir, "raw/size.json", lambda s: s["flask-int8"].update(image_mb=251.0))
    assert "| Flask container, INT8 | 251 |" in _render(run_dir)
    row = next(line for line in _render(run_dir).splitlines()
               if line.startswith("| Flask container, INT8 | 251 |"))
    assert "| **no** |" in row


def test_slides_section_is_computed():
    slides = read_results(FIXTURE)["slides"]
    int8, fp32 = (slides[f"run/{k}"]["seconds_per_slide_median"] for k in ("ort-int8", "ort-fp32"))
    memory = slides["memory"]["ort-int8"]
    text = _render()
    assert "## 8. Whole slide" in text and "SYNTHETIC" in text
    assert (f"ONNX Runtime INT8 ({int8:.2f} s) vs ONNX Runtime FP32 ({fp32:.2f} s): "
            f"ONNX Runtime INT8 {_speed(int8, fp32)}") in text
    peaks = memory["peak_rss_mb"]
    assert (f"peak RSS ×{peaks['4x'] / peaks['1x']:.2f} ({peaks['1x']} → {peaks['4x']} MB, "
            f"{peaks['4x'] - peaks['1x']:+d} MB") in text


def test_slides_sentences_follow_the_numbers(run_dir):
    """A slower INT8, a peak that doubles and a wrong tile: each sentence must say so."""
    def change(slides: dict) -> None:
        slides["run/ort-int8"]["seconds_per_slide_median"] = (
            slides["run/ort-fp32"]["seconds_per_slide_median"] * 2)
        memory = slides["memory"]["ort-int8"]
        memory["peak_rss_mb"]["4x"] = memory["peak_rss_mb"]["1x"] * 2
        memory["peak_ratio"] = 2.0
        slides["agreement"]["ort-int8"]["4x"].update(ok=False, max_abs_diff=0.4)
    _edit(run_dir, "raw/slides.json", change)
    text = _render(run_dir)
    assert "Seconds per slide: ONNX Runtime INT8" in text and "INT8 ×2.00 slower" in text
    assert "peak RSS ×2.00" in text
    assert "Answers: **WRONG** for ONNX Runtime INT8." in text


def _level(images_per_s: float, p50: float, p99: float, errors: int = 0) -> dict:
    return {"throughput_images_per_s": images_per_s, "p50_ms": p50, "p99_ms": p99,
            "errors": errors, "requests": 100}


def _latency(p50: float, **extra) -> dict:
    """A latency record as benchmarks/timing.py writes it (the percentiles around `p50`)."""
    return {"n": 10, "p50_ms": p50, "p95_ms": p50 * 1.2, "p99_ms": p50 * 1.5,
            "mean_ms": p50 * 1.1, **extra}


def _layout(label: str, workers: int, levels: dict, **extra) -> dict:
    return {label: {"setting": label, "workers": workers, "gunicorn_threads": 1,
                    "levels": levels, **extra}}


@pytest.mark.parametrize(("level", "ceiling", "verdict"), [
    (_level(95.0, 40.0, 100.0), 100.0, "goal met"),       # 95 %, tail ×2.5
    (_level(85.0, 40.0, 100.0), 100.0, "goal not met"),   # 85 % of the ceiling
    (_level(95.0, 40.0, 130.0), 100.0, "goal not met"),   # p99 = ×3.25 p50
    (_level(95.0, 40.0, 100.0, errors=1), 100.0, "goal not met"),
])
def test_throughput_goal_follows_the_numbers(level, ceiling, verdict):
    tp = _layout("2w×1ort", 2, {"4": level},
                 inprocess={"predict_bytes": {"images_per_s": ceiling},
                            "session.run": {"images_per_s": 2 * ceiling}})
    (line,) = throughput_goals(report.parse({"throughput": tp}).throughput)
    share = round(100 * level["throughput_images_per_s"] / ceiling)
    assert f"= {share} % of in-process predict_bytes" in line
    assert f"p99 = {level['p99_ms'] / level['p50_ms']:.2f} × p50" in line
    assert line.endswith(f"**{verdict}**.")


def _overhead(http: dict, throughput: dict | None = None) -> list[str]:
    """overhead_goals on records parsed from raw http.json/throughput.json objects."""
    results = report.parse({"http": http, "throughput": throughput})
    return overhead_goals(results.http, results.throughput)


@pytest.mark.parametrize(("p50", "verdict"), [(11.0, "met"), (13.0, "not met")])
def test_overhead_goal_follows_the_numbers(p50, verdict):
    http = {"reference/int8/session.run": _latency(10.0),
            "reference/int8/predict_bytes": _latency(p50 - 0.5),
            "flask-int8": _latency(p50)}
    lines = _overhead(http)
    flask = next(line for line in lines if "Flask" in line)
    assert f"×{p50 / 10.0:.2f} INT8 session.run" in flask and f"**{verdict}**" in flask
    core = next(line for line in lines if "predict_bytes" in line)
    assert f"×{(p50 - 0.5) / 10.0:.2f}" in core


def test_keepalive_overhead_comes_from_the_one_worker_throughput_run():
    http = {"reference/int8/session.run": _latency(10.0)}
    throughput = (_layout("2w×1ort", 2, {"1": _level(30.0, 30.0, 60.0)})
                  | _layout("1w×2ort", 1, {"1": _level(80.0, 12.0, 24.0)}))
    (line,) = _overhead(http, throughput)
    assert "kept-alive" in line and "1w×2ort" in line and "×1.20 INT8 session.run" in line
    assert line.endswith("**met**).")


def test_a_missed_core_goal_names_the_stages_that_cost_it():
    http = {"reference/int8/session.run": _latency(10.0),
            "reference/int8/predict_bytes": _latency(12.0),
            "flask-int8": _latency(13.0, stages_ms={"decode": 1.0, "preprocess": 0.25,
                                                    "postprocess": 0.5, "run": 10.0})}
    line = _overhead(http)[-1]
    assert "decode 1.00, preprocess 0.25, postprocess 0.50, 1.75 ms in all" in line
    assert "predict_bytes − session.run: 2.00 ms" in line and "×1.15 allows 1.50 ms" in line
    http["reference/int8/predict_bytes"]["p50_ms"] = 11.0  # met: nothing to explain
    assert not any("stands between" in line for line in _overhead(http))


def test_a_missing_key_names_the_file_and_record(run_dir):
    """Raw JSON is parsed once, at the boundary: a record without a required key is an error
    that says where, not a KeyError from deep inside a section."""
    _edit(run_dir, "raw/http.json", lambda http: http["flask-int8"].pop("p95_ms"))
    with pytest.raises(ReportDataError, match=r"raw/http\.json, flask-int8 has no 'p95_ms'"):
        report.load(run_dir)


def test_the_cli_reports_a_missing_key(run_dir, capsys):
    from benchmarks.report.__main__ import main

    _edit(run_dir, "raw/coldstart.json", lambda c: c["container/floor"].pop("first_200_s_all"))
    assert main([str(run_dir)]) == 2
    assert "container/floor has no 'first_200_s_all'" in capsys.readouterr().err


def test_every_goal_has_its_reason():
    raw = json.loads(GOALS_FILE.read_text())
    goals = {key: value for key, value in raw.items() if not key.startswith("_")}
    assert goals and all(value.get("reason") for value in goals.values())
    assert read_goals().cold_start_allowance_s == raw["cold_start_allowance_s"]["value"]


def test_latest_md_is_generated_from_its_committed_raw_data() -> None:
    """Every number in benchmarks/LATEST.md (and so in README.md's table) traces to the run's
    raw JSON, committed in benchmarks/latest-run/: regenerating gives the same text."""
    from benchmarks.report.document import render
    from benchmarks.report.records import load

    latest_run = Path(__file__).resolve().parent / "latest-run"
    generated_by, body = report.LATEST.read_text().split("\n\n", 1)
    run = json.loads((latest_run / "run.json").read_text())
    assert body == render(load(latest_run)), (
        "benchmarks/LATEST.md is not what benchmarks/latest-run/ renders: after a full run, "
        "copy its run.json, machine.json and raw/ there and regenerate LATEST.md")
    assert run["mode"] == "full" and "generated by" in generated_by
