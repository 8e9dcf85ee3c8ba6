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


def test_generate_writes_summary_and_plots(run_dir):
    summary = report.generate(run_dir)
    assert (run_dir / "plots" / "latency_model.png").is_file()
    assert "## Plots" in summary.read_text()


def test_readme_table_matches_the_reports():
    """README.md's benchmark block is every class's part, from benchmarks/LATEST.<class>.md
    (python -m benchmarks.report --readme README.md writes it)."""
    readme = report.extract_block((REPO_ROOT / "README.md").read_text())
    assert readme is not None, "README.md lost its benchmarks-table markers"
    assert readme == report.readme_block(), (
        "README.md's benchmark block differs from benchmarks/LATEST.<class>.md: run "
        "`python -m benchmarks.report --readme README.md`")


def _readme(tmp_path: Path) -> Path:
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{report.README_BEGIN}\nold table\n{report.README_END}\n\nrest\n")
    return readme


def _set_flags(folder: Path, **flags: bool) -> None:
    _edit(folder, "machine.json", lambda m: m["flags"].update(flags))


def test_publish_keeps_the_other_class(run_dir, tmp_path):
    """A run on one CPU class writes that class's report and raw JSON, and README.md's block
    keeps every class: an AVX2 run does not replace the AVX-512 VNNI report, nor the reverse."""
    root, readme = tmp_path / "bench", _readme(tmp_path)
    root.mkdir()
    _set_flags(run_dir, **{"AVX-512F": False, "AVX-512 VNNI": False})
    avx2 = report.publish(run_dir, readme, root=root)
    assert avx2 == root / "LATEST.avx2.md"
    assert (root / "latest-run" / "avx2" / "raw" / "http.json").is_file()
    avx2_text = avx2.read_text()
    _edit(run_dir, "run.json", lambda run: run.update(stamp="20261208T000000Z"))
    _set_flags(run_dir, **{"AVX-512F": True, "AVX-512 VNNI": True})
    vnni = report.publish(run_dir, readme, root=root)
    assert vnni == root / "LATEST.avx512-vnni.md" and avx2.read_text() == avx2_text
    block = report.extract_block(readme.read_text())
    assert "old table" not in block and readme.read_text().endswith("\n\nrest\n")
    avx2_part, vnni_part = block.split("### CPU class `avx512-vnni`")
    assert avx2_part.startswith("### CPU class `avx2`: AVX2 — run of 2026-12-02")
    assert "20261208T000000Z" in vnni_part and "AVX-512 VNNI" in vnni_part.split("\n")[0]
    assert report.extract_block(vnni.read_text()) in vnni_part
    assert report.extract_block(avx2_text) in avx2_part
    # Each published report regenerates from its own copied raw JSON.
    for name, path in (("avx2", avx2), ("avx512-vnni", vnni)):
        body = path.read_text().split("\n\n", 1)[1]
        assert body == report.render(report.load(root / "latest-run" / name))


@pytest.mark.parametrize(("flags", "expected"), [
    ({"AVX2": True}, "avx2"),
    ({"AVX2": True, "AVX-512F": True}, "avx512"),
    ({"AVX2": True, "AVX-512F": True, "AVX-512 VNNI": True}, "avx512-vnni"),
    ({"AVX2": True, "AVX-VNNI": True}, "avx-vnni"),
    ({"AVX2": True, "AVX-512 VNNI": True, "AMX-INT8": True}, "amx"),
    ({"ARM dot product": True}, "arm-dotprod"),
    ({}, "baseline"),
])
def test_cpu_class_is_the_fastest_int8_dot_product(flags, expected):
    assert report.cpu_class(flags) == expected


def test_what_int8_buys_is_computed_from_the_table():
    """The README's sentence per class, from the report's headline cells (rounded as shown)."""
    from benchmarks.report.classes import int8_buys

    model = read_results(FIXTURE)["model"]
    int8, fp32, eager = (round(model[f"{k}/b1"]["p50_ms"], 1)
                         for k in ("ort-int8", "ort-fp32", "torch-eager"))
    text = int8_buys(report.extract_block(_render()))
    assert f"×{fp32 / int8:.2f} over ONNX FP32" in text
    assert f"×{eager / int8:.2f} over PyTorch eager" in text
    http = read_results(FIXTURE)["http"]
    base, flask = (round(http[k]["p50_ms"], 1) for k in ("torch", "flask-int8"))
    assert f"Flask INT8 container ×{base / flask:.2f} over the PyTorch baseline" in text


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


def _paired(http_p50: float, core_p50: float) -> dict:
    return {"paired_http": _latency(http_p50), "paired_predict_bytes": _latency(core_p50),
            "http_minus_predict_bytes_ms": http_p50 - core_p50}


def _core(overhead_ms: float) -> dict:
    return {"reference/int8/session.run": _latency(6.0),
            "reference/int8/predict_bytes": _latency(
                8.0, overhead_ms=overhead_ms,
                stages_us={"decode": 1500.0, "preprocess": 90.0, "run": 6000.0,
                           "postprocess": 1000 * overhead_ms - 90.0}),
            "reference/int8/decode": _latency(1.5), "reference/int8/decode_floor": _latency(1.2)}


@pytest.mark.parametrize(("overhead", "verdict"), [(0.45, "met"), (0.55, "not met")])
def test_core_overhead_goal_follows_the_numbers(overhead, verdict):
    (line, *_) = _overhead(_core(overhead))
    assert line.startswith("In-process overhead, predict_bytes − session.run − decode")
    assert f": {overhead:.2f} ms = ×{overhead / 6.0:.3f} INT8 session.run (6.00 ms)" in line
    assert f"(goal ≤ 0.5 ms: **{verdict}**)" in line
    assert "preprocess 90 µs" in line and f"postprocess {1000 * overhead - 90:.0f} µs" in line
    assert "decode stage 1.50 ms" in line and "decode floor (libspng alone, same rounds) 1.20" \
        in line


@pytest.mark.parametrize(("host", "container", "verdicts"), [
    ((7.0, 6.6), (7.5, 6.8), ("met", "met")),      # 0.4 ms and 0.7 ms
    ((7.2, 6.6), (7.7, 6.8), ("not met", "not met")),  # 0.6 ms and 0.9 ms
])
def test_http_overhead_goals_follow_the_numbers(host, container, verdicts):
    http = {**_core(0.4),
            "host/none/int8": {"front_server": "none", **_paired(*host)},
            "flask-int8": _latency(7.6, **_paired(*container))}
    lines = _overhead(http)
    gunicorn = next(line for line in lines if "host server (gunicorn alone)" in line)
    front = next(line for line in lines if "Flask container (its front server" in line)
    assert f": {host[0] - host[1]:.2f} ms, HTTP p50 − in-process" in gunicorn
    assert f"(HTTP p50 {host[0]:.2f} ms" in gunicorn
    assert f"(goal ≤ 0.5 ms: **{verdicts[0]}**)" in gunicorn
    assert f": {container[0] - container[1]:.2f} ms" in front
    assert f"(goal ≤ 0.8 ms: **{verdicts[1]}**)" in front


def test_the_http_goal_is_judged_on_the_servers_own_predict_where_measured():
    """With Server-Timing, each request's own server-side predict_bytes is what is taken off;
    the difference of the two p50s is still shown."""
    pair = {**_paired(7.6, 6.8), "http_minus_server_predict_ms": 0.45}
    lines = _overhead({**_core(0.4), "host/none/int8": {"front_server": "none", **pair}})
    (line,) = [x for x in lines if "gunicorn alone" in x]
    assert ": 0.45 ms, each request's time − its own predict_bytes in the server" in line
    assert "difference of p50s 0.80 ms" in line and line.endswith("**met**).")


def test_the_host_front_server_is_judged_only_without_the_container():
    host_nginx = {"host/nginx/int8": {"front_server": "nginx", **_paired(7.5, 6.8)}}
    (line,) = [x for x in _overhead({**_core(0.4), **host_nginx}) if "behind nginx" in x]
    assert "(goal ≤ 0.8 ms: **met**)" in line
    both = {**_core(0.4), **host_nginx, "flask-int8": _latency(7.6, **_paired(7.5, 6.8))}
    (line,) = [x for x in _overhead(both) if "behind nginx" in x]
    assert "goal" not in line


def test_keepalive_overhead_comes_from_the_one_worker_throughput_run():
    http = {"reference/int8/session.run": _latency(10.0)}
    throughput = (_layout("2w×1ort", 2, {"1": _level(30.0, 30.0, 60.0)})
                  | _layout("1w×2ort", 1, {"1": _level(80.0, 12.0, 24.0)}))
    lines = _overhead(http, throughput)
    (line,) = [x for x in lines if "kept-alive" in x]
    assert "1w×2ort" in line and "×1.20 INT8 session.run" in line
    assert any("not measured in this run" in x for x in lines)


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


def test_every_class_report_is_generated_from_its_committed_raw_data() -> None:
    """Every number in benchmarks/LATEST.<class>.md (and so in README.md's block) traces to the
    run's raw JSON, committed in benchmarks/latest-run/<class>/: regenerating gives the same
    text, and the run's own machine.json names that class. The one exception is a report
    marked archived (written before raw JSON was committed), which has no raw folder."""
    from benchmarks.report.classes import ARCHIVED_MARK, latest_run_dir, published

    classes = published()
    assert classes, "no benchmarks/LATEST.<class>.md"
    regenerated = 0
    for name, path in classes.items():
        text, folder = path.read_text(), latest_run_dir(name)
        if not (folder / "run.json").is_file():
            assert text.startswith(ARCHIVED_MARK), (
                f"{path.name} has no raw JSON in {folder}: publish a full run "
                "(`python -m benchmarks.report benchmarks/results/<ts> --publish`)")
            continue
        generated_by, body = text.split("\n\n", 1)
        results = report.load(folder)
        assert report.cpu_class(results.machine.flags) == name, (path.name, folder)
        assert body == report.render(results), (
            f"{path.name} is not what {folder} renders: publish the run again "
            "(`python -m benchmarks.report benchmarks/results/<ts> --publish --readme "
            "README.md`)")
        assert results.run.mode == "full" and "generated by" in generated_by
        regenerated += 1
    assert regenerated, "no class report regenerates from committed raw JSON"
