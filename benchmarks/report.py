"""Summary and plots from a results folder's raw JSON — rerunnable at any time:

    python -m benchmarks.report benchmarks/results/<timestamp>
    python -m benchmarks.report benchmarks/results/<timestamp> --latest benchmarks/LATEST.md \\
        --readme README.md
    python -m benchmarks.report --readme README.md      # README's table from LATEST.md alone

writes <folder>/summary.md (Markdown tables with ratios, the machine, what was skipped and
why) and <folder>/plots/*.png. Nothing here measures anything, and every sentence that states
a result is computed from the measurements: a ratio, a comparison, a flag. What is fixed text
says how something was measured, never what came out.

README.md's benchmark table is the headline block of LATEST.md, copied between the markers
README_BEGIN and README_END (`--readme`); benchmarks/test_report.py checks that they agree.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path

import numpy as np

from benchmarks import BASELINE
from benchmarks.machine import BUSY_LOAD_PER_CPU, busy
from benchmarks.store import read_results
from benchmarks.variants import VARIANTS
from services.targets import TARGETS

LATEST = Path(__file__).resolve().parent / "LATEST.md"
README_BEGIN = ("<!-- benchmarks-table:begin — generated from benchmarks/LATEST.md by "
                "`python -m benchmarks.report --readme README.md`; do not edit -->")
README_END = "<!-- benchmarks-table:end -->"
# How the report names a registry target; a new target shows its registry name.
DISPLAY = {"flask": "Flask", "sagemaker": "SageMaker", "lambda": "Lambda"}
PRECISION_NAMES = {"fp32": "FP32", "int8": "INT8"}
EAGER, BEST_FP32 = "torch-eager", ("torch-eager", "torch-channels-last", "torchscript-frozen")
# The cold-start floor (`run` of the base image with `python3 -c pass`) and the goals.
FLOOR = "floor"
COLD_START_ALLOWANCE_S = 0.35  # container start → first answer ≤ floor + this
IMAGE_SIZE_GOAL_MB = 250
PHASES = (("runtime_s", "run → PID 1"), ("server_s", "PID 1 → serving process"),
          ("imports_s", "imports"), ("session_s", "ORT session"), ("app_s", "rest of app"),
          ("first_request_s", "ready → first answer"),
          ("first_inference_s", "of which first inference"))


# --- formatting ------------------------------------------------------------------------------

def _num(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def _ratio(value: float | None, base: float | None) -> str:
    if not value or not base:
        return "–"
    return f"×{value / base:.2f}"


def _table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _quartiles(rec: dict) -> tuple[float, float] | None:
    samples = rec.get("samples_ms")
    if not samples:
        return None
    q1, q3 = np.percentile(np.asarray(samples, dtype=np.float64), [25, 75])
    return float(q1), float(q3)


def faster(name: str, rec: dict, other: str, other_rec: dict, key: str = "p50_ms",
           unit: str = "ms") -> str:
    """'A (x ms) vs B (y ms): A ×r faster' — or slower, or 'the same' — from two records'
    `key`; for latencies with samples, whether their interquartile ranges overlap."""
    a, b = rec.get(key), other_rec.get(key)
    if not a or not b:
        return f"{name} vs {other}: no data"
    digits = 1 if unit == "ms" else 2
    text = f"{name} ({a:.{digits}f} {unit}) vs {other} ({b:.{digits}f} {unit}): "
    if a == b:
        text += "the same"
    elif a < b:
        text += f"{name} ×{b / a:.2f} faster"
    else:
        text += f"{name} ×{a / b:.2f} slower"
    qa, qb = _quartiles(rec), _quartiles(other_rec)
    if qa and qb:
        overlap = qa[0] <= qb[1] and qb[0] <= qa[1]
        text += (" (their interquartile ranges overlap)" if overlap
                 else " (their interquartile ranges do not overlap)")
    return text


def _answers(summary: dict | None) -> str:
    """A table cell: worst |Δp| against the reference and how many labels agree."""
    if not summary:
        return "–"
    worst = summary.get("max_abs_diff")
    worst_text = f"{worst:.1e}" if worst is not None else "–"
    verdict = "ok" if summary.get("ok") else "**WRONG**"
    return (f"{verdict} — max \\|Δp\\| {worst_text} (tolerance {summary['tolerance']:g}), "
            f"labels {summary['labels_agree']}/{summary['images']}")


def _target_name(target: str) -> str:
    return DISPLAY.get(target, target)


def container_label(key: str, rec: dict | None = None) -> str:
    """`flask-int8` → 'Flask container, INT8'; BASELINE → the PyTorch baseline container."""
    if key == BASELINE:
        return "PyTorch baseline container (frozen TorchScript, FP32)"
    if key == FLOOR:
        return "floor: base image, `python3 -c pass`"
    target, _, precision = key.rpartition("-")
    kind = ("image via Runtime API" if target in TARGETS
            and TARGETS[target].protocol == "lambda-runtime" else "container")
    return f"{_target_name(target)} {kind}, {PRECISION_NAMES.get(precision, precision)}"


# --- header, skips ---------------------------------------------------------------------------

def busy_line(run: dict, machine: dict) -> str:
    load = run.get("load_average_at_start")
    cpus = machine.get("usable_cpus") or 1
    limit = BUSY_LOAD_PER_CPU * cpus
    if load is None:
        return "- **Load**: no load average on this OS; the run was not checked for being busy."
    if busy(load, cpus):
        return (f"- **BUSY MACHINE**: 1-min load {load[0]} at start > {BUSY_LOAD_PER_CPU} × "
                f"{cpus} CPUs = {limit:g}. Other jobs took CPU time during this run: its figures "
                "are not comparable with a run on an idle machine, and ratios between rows "
                "measured at different times are not either.")
    return (f"- **Load**: 1-min load {load[0]} at start ≤ {BUSY_LOAD_PER_CPU} × {cpus} CPUs = "
            f"{limit:g}: not flagged as busy.")


def _header(data: dict) -> str:
    run, machine = data["run"], data["machine"]
    flags = machine.get("flags", {})
    flag_text = ", ".join(f"{name} {'yes' if on else 'no'}" for name, on in flags.items())
    versions = machine.get("versions") or {}
    version_text = ", ".join(f"{k} {v}" for k, v in versions.items() if v)
    model = run.get("model") or {}
    stripped = run.get("threading_env_stripped") or {}
    tolerances = run.get("tolerances") or {}
    lines = [
        f"# MHIST benchmarks — {run.get('stamp')} ({run.get('mode')} mode)",
        "",
        f"- **Machine**: {machine.get('cpu_model')} ({machine.get('architecture')}), "
        f"{machine.get('usable_cpus')} usable / {machine.get('logical_cpus')} logical CPUs, "
        f"{machine.get('memory_gib')} GiB RAM; {machine.get('os')}",
        f"- **CPU flags**: {flag_text}",
        f"- **Versions (host)**: Python {machine.get('python')}; {version_text}; "
        f"{machine.get('container_engine') or 'no container engine'}",
    ]
    if run.get("baseline_torch"):
        same = run["baseline_torch"].split("+")[0] == (versions.get("torch") or "").split("+")[0]
        lines.append(f"- **PyTorch baseline image**: torch {run['baseline_torch']} "
                     f"({'the same version as' if same else 'not the version of'} the host's "
                     f"torch {versions.get('torch')}, which runs the model-only and process "
                     "rows)")
    lines += [
        f"- **Threads**: torch.set_num_threads = ORT intra_op_num_threads = {run.get('threads')}"
        " (ORT inter-op 1, sequential execution) unless a row says otherwise",
        "- **Environment**: every timed process starts without OMP_\\*, GOMP_\\*, KMP_\\*, "
        "MKL_\\* and OPENBLAS_\\* variables, as in the images: "
        + (f"this run removed {', '.join(f'{k}={v}' for k, v in stripped.items())}"
           if stripped else "none were set in this run's environment"),
        f"- **HTTP client**: {run.get('http_connection_policy', 'not recorded')}",
        "- **Answers**: every variant's answers on the check images are compared with the ONNX "
        "FP32 file's, run by services.core.model: each probability within "
        + ", ".join(f"{v:g} ({PRECISION_NAMES.get(k, k)})" for k, v in tolerances.items())
        + ", and the same label wherever the reference's probability is further than that from "
        "the threshold. A wrong answer fails the benchmark.",
        f"- **Model**: ResNet18, 2 classes, from the real pipeline (training/train.py → "
        f"export/to_onnx.py): 1 epoch, 224 px, `--weights none`, "
        f"{model.get('train_images')} SYNTHETIC images; {model.get('uri')}.",
        f"- **Run**: {run.get('duration_s', '?')} s in all"
        + (f", of which training + export {run['pipeline_s']} s" if run.get("pipeline_s")
           else "")
        + (f"; image builds (s): {run['image_builds']}" if run.get("image_builds") else ""),
        f"- **Load average** (1/5/15 min) at start {run.get('load_average_at_start')}, at end "
        f"{run.get('load_average_at_end')} (the end includes this run's own processes)",
        busy_line(run, machine),
    ]
    if run.get("mode") == "quick":
        lines.append("- **Quick mode** (CI smoke): few samples, so p95/p99 sit near the "
                     "maximum of `n` samples; run `MHIST_BENCH_MODE=full pytest benchmarks` "
                     "for report numbers.")
    lines += ["", "> Client and server share this machine's CPUs in the HTTP, throughput and "
              "peer runs: the load generator's own CPU time is part of every number there."]
    return "\n".join(lines)


def _skips(data: dict) -> str:
    run = data["run"]
    parts = []
    if run.get("skipped"):
        parts.append("## Skipped\n")
        parts += [f"- `{s['what']}` — {s['reason']}" for s in run["skipped"]]
    if run.get("failed"):
        parts.append("\n## Failed\n")
        parts += [f"- `{f['what']}` — {_last_line(f['message'])}" for f in run["failed"]]
    return "\n".join(parts) if parts else "Nothing was skipped, nothing failed."


def _last_line(message: str) -> str:
    lines = [line for line in (message or "").splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


# --- 1. model only ---------------------------------------------------------------------------

def _model_records(model: dict, batch: int) -> dict[str, dict]:
    return {name: model[f"{name}/b{batch}"] for name in VARIANTS if f"{name}/b{batch}" in model}


def _best_torch_fp32(recs: dict[str, dict]) -> str | None:
    present = [name for name in BEST_FP32 if name in recs]
    return min(present, key=lambda name: recs[name]["p50_ms"]) if present else None


def _label(rec: dict) -> str:
    return rec.get("label") or VARIANTS[rec["variant"]].label


def model_findings(model: dict, batch: int) -> list[str]:
    """The batch's comparisons, each computed from two p50s."""
    recs = _model_records(model, batch)
    best = _best_torch_fp32(recs)
    found = []
    if best and best != EAGER and EAGER in recs:
        comparison = faster(_label(recs[best]), recs[best], "PyTorch eager", recs[EAGER])
        found.append(f"Fastest PyTorch FP32: {comparison}.")
    elif best:
        found.append(f"Fastest PyTorch FP32: {_label(recs[best])} "
                     f"({recs[best]['p50_ms']:.1f} ms).")
    pairs = [("ort-fp32", best), ("ort-int8", "ort-fp32"), ("ort-int8", "torch-int8"),
             ("torch-int8", best)]
    for one, other in pairs:
        if one in recs and other in recs:
            found.append(faster(_label(recs[one]), recs[one], _label(recs[other]),
                                recs[other]) + ".")
    return found


def answers_findings(agreement: dict) -> list[str]:
    """What the answer checks found, and how discriminating the check images were."""
    if not agreement:
        return []
    spread = agreement.get("reference") or {}
    variants = {k: v for k, v in agreement.items() if k != "reference"}
    wrong = [VARIANTS[k].label if k in VARIANTS else k for k, v in variants.items()
             if not v.get("ok")]
    lines = [(f"Answers: **WRONG** for {', '.join(wrong)}." if wrong else
              f"Answers: all {len(variants)} variants within tolerance of ONNX FP32 on "
              f"{spread.get('images', '?')} check images.")]
    if spread.get("threshold") is not None:
        checked = spread.get("labels_checked") or {}
        labels = ", ".join(f"{c} {n}" for c, n in (spread.get("labels") or {}).items())
        lines.append(
            f"The reference's P({spread['positive_class']}) on them spans "
            f"{spread['p_positive_min']:.3f}–{spread['p_positive_max']:.3f} (threshold "
            f"{spread['threshold']:.3f}; labels {labels}); a label mismatch counts on "
            + ", ".join(f"{n}/{spread['images']} images for {PRECISION_NAMES.get(p, p)}"
                        for p, n in checked.items())
            + " (on the others the reference is within the tolerance of the threshold).")
    return lines


def _model_section(data: dict) -> str:
    model = data["model"]
    if not model:
        return "## 1. Model only\n\nNo data."
    batches = sorted({rec["batch"] for key, rec in model.items()
                      if "/b" in key and rec.get("variant") in VARIANTS})
    rows = []
    for batch in batches:
        recs = _model_records(model, batch)
        eager = (recs.get(EAGER) or {}).get("p50_ms")
        for rec in recs.values():
            rows.append([_label(rec), PRECISION_NAMES.get(rec.get("precision"), "?"), batch,
                         _num(rec["p50_ms"]), _num(rec["p95_ms"]), _num(rec["p99_ms"]),
                         _num(rec["images_per_s"]), _ratio(eager, rec["p50_ms"]),
                         _num(rec.get("setup_s")), _answers(rec.get("answers")), rec["n"]])
    pre = model.get("preprocessing/png224")
    if pre:
        rows.append(["preprocessing (numpy + Pillow)", "–", 1, _num(pre["p50_ms"], 2),
                     _num(pre["p95_ms"], 2), _num(pre["p99_ms"], 2), _num(pre["images_per_s"]),
                     "–", "–", "–", pre["n"]])
    text = ["## 1. Model only (same weights, same preprocessed input)", "",
            "Each variant in a process of its own, rounds interleaved (round r runs every "
            "variant once, in an order rotated by r). Setup = load + build + the first call "
            "(tracing, freezing, compiling).", "",
            _table(["variant", "precision", "batch", "p50 ms", "p95 ms", "p99 ms", "images/s",
                    "speed-up vs PyTorch eager (p50)", "setup s", "answers vs ONNX FP32", "n"],
                   rows), ""]
    for batch in batches:
        text += [f"Batch {batch}:", ""] + [f"- {line}" for line in model_findings(model, batch)]
        text.append("")
    text += answers_findings(model.get("agreement") or {})
    settings = {}
    for batch in batches:
        for name, rec in _model_records(model, batch).items():
            runtime = (f"torch {rec['torch']}, {rec.get('torch_threads')} threads"
                       if rec.get("torch") else f"onnxruntime {rec.get('onnxruntime', '?')}")
            settings[name] = f"- **{_label(rec)}**: {rec.get('setting', '')} ({runtime})"
    if settings:
        text += ["", "How each variant is set up:", "", *settings.values()]
    return "\n".join(text)


# --- 2. HTTP ---------------------------------------------------------------------------------

def _http_rows(http: dict) -> list[tuple[str, dict]]:
    from benchmarks.targets import CONTAINER_IDS

    return [(key, http[key]) for key in CONTAINER_IDS if (http.get(key) or {}).get("n")]


def http_findings(http: dict, throughput: dict | None = None) -> list[str]:
    base = http.get(BASELINE)
    found = []
    rows = dict(_http_rows(http))
    if base:
        for key, rec in rows.items():
            if key.startswith("flask-"):
                precision = PRECISION_NAMES.get(key.rpartition("-")[2], "?")
                found.append(faster(f"Flask container {precision}", rec, "PyTorch baseline "
                                    "container", base) + ".")
    if rows:
        fastest = min(rows, key=lambda key: rows[key]["p50_ms"])
        found.append(f"Lowest p50: {container_label(fastest)} ({rows[fastest]['p50_ms']:.1f} "
                     "ms).")
    return found + overhead_goals(http, throughput)


# The serving-overhead issue's goals, INT8 file, p50 over a bare session.run of the same file.
# POST /predict over a kept-alive connection, from the throughput run on one worker.
KEEPALIVE_KEY = "flask-int8-keepalive"
OVERHEAD_GOALS = {"predict_bytes": 1.15, "flask-int8": 1.25, KEEPALIVE_KEY: 1.25}


def overhead_goals(http: dict, throughput: dict | None = None) -> list[str]:
    """The INT8 overhead ratios against their goals (and the other targets' ratios, which have
    none), computed from the records. With throughput records, also POST /predict over a
    kept-alive connection: wrk at concurrency 1 on the one-worker layout."""
    floor = (http.get("reference/int8/session.run") or {}).get("p50_ms")
    if not floor:
        return []
    measured = {"predict_bytes": (http.get("reference/int8/predict_bytes") or {}).get("p50_ms")}
    measured |= {key: rec["p50_ms"] for key, rec in _http_rows(http)
                 if key.endswith("-int8") and key != BASELINE}
    single = next((rec for rec in (throughput or {}).values()
                   if rec.get("workers") == 1 and rec.get("gunicorn_threads", 1) == 1), None)
    if single and (single["levels"].get("1") or {}).get("p50_ms"):
        measured[KEEPALIVE_KEY] = single["levels"]["1"]["p50_ms"]
    lines = []
    for key, p50 in measured.items():
        if not p50:
            continue
        name = {"predict_bytes": "INT8 predict_bytes (in-process)",
                KEEPALIVE_KEY: f"Flask container, INT8, over one kept-alive connection (wrk, "
                               f"concurrency 1, {single['setting'] if single else ''})"
                }.get(key) or container_label(key)
        ratio = p50 / floor
        goal = OVERHEAD_GOALS.get(key)
        verdict = (f" (goal ≤ ×{goal:.2f}: **{'met' if ratio <= goal else 'not met'}**)"
                   if goal else "")
        lines.append(f"{name}: p50 {p50:.2f} ms = ×{ratio:.2f} INT8 session.run "
                     f"({floor:.2f} ms){verdict}.")
    return lines + _overhead_floor(http, floor)


def _overhead_floor(http: dict, floor: float) -> list[str]:
    """Where predict_bytes' time beyond session.run goes, from the Flask INT8 container's stage
    histogram, when the predict_bytes goal is not met."""
    core = (http.get("reference/int8/predict_bytes") or {}).get("p50_ms")
    stages = (http.get("flask-int8") or {}).get("stages_ms") or {}
    goal = OVERHEAD_GOALS["predict_bytes"]
    if not core or core <= goal * floor or not stages:
        return []
    parts = {name: stages[name] for name in ("decode", "preprocess", "postprocess")
             if name in stages}
    listed = ", ".join(f"{name} {ms:.2f}" for name, ms in parts.items())
    return [f"predict_bytes − session.run: {core - floor:.2f} ms by their p50s (timed one after "
            f"the other), where ×{goal:.2f} allows {(goal - 1) * floor:.2f} ms. The same "
            f"stages inside the Flask INT8 container (mean ms, mhist_stage_seconds): {listed}, "
            f"{sum(parts.values()):.2f} ms in all; postprocess includes the input quality "
            "checks, which an export with `--no-quality-ranges` leaves out."]


def _http_section(data: dict) -> str:
    http, run = data["http"], data["run"]
    if not http:
        return "## 2. End to end over HTTP\n\nNo data."
    base = (http.get(BASELINE) or {}).get("p50_ms")
    rows = []
    for precision in ("fp32", "int8"):
        for part, label in (("session.run", "session.run alone (in-process)"),
                            ("predict_bytes", "predict_bytes: decode + preprocess + run")):
            rec = http.get(f"reference/{precision}/{part}")
            if rec:
                rows.append([label, PRECISION_NAMES[precision], "–", _num(rec["p50_ms"]),
                             _num(rec["p95_ms"]), _num(rec["p99_ms"]), "–", "–", "–", rec["n"],
                             0])
    for key, rec in _http_rows(http):
        overhead = rec.get("overhead_vs_session_run")
        rows.append([container_label(key), PRECISION_NAMES.get(rec.get("precision"), "?"),
                     f"{rec.get('request', '?')}, {_num(rec.get('request_bytes', 0) / 1024, 0)}"
                     " KB", _num(rec["p50_ms"]), _num(rec["p95_ms"]), _num(rec["p99_ms"]),
                     f"×{overhead:.2f}" if overhead else "–", _ratio(base, rec["p50_ms"]),
                     _answers(rec.get("answers")), rec["n"], rec.get("errors", 0)])
    lambda_note = ("Lambda: no HTTP endpoint of its own; the same benchmark process times "
                   "`invoke` from queuing the event to receiving the result (the function's "
                   "runtime client polls the Runtime API test server on 127.0.0.1).")
    return "\n".join([
        "## 2. End to end, one 224² PNG (one worker, all CPUs as intra-op threads, "
        "sequential requests)", "",
        f"HTTP client: {run.get('http_connection_policy', 'not recorded')}. {lambda_note} "
        f"The PyTorch baseline serves the FP32 TorchScript of the same weights, frozen and "
        f"optimized at load (torch {run.get('baseline_torch') or '?'}), with the same decoding "
        "and preprocessing code.", "",
        _table(["target", "file", "request", "p50 ms", "p95 ms", "p99 ms",
                "÷ session.run, same file (p50)", "speed-up vs PyTorch baseline (p50)",
                "answers vs ONNX FP32", "n", "errors"], rows), "",
        *[f"- {line}" for line in http_findings(http, data.get("throughput"))],
        *_stage_table(http),
    ])


def _stage_table(http: dict) -> list[str]:
    """Mean ms per stage of the timed predictions, from each container's mhist_stage_seconds
    histogram; the rest of the mean latency is outside the handler (the socket, the front
    server, WSGI, the Lambda runtime client) and the client."""
    from services.core.stages import STAGES

    rows = []
    for key, rec in _http_rows(http):
        stages = rec.get("stages_ms")
        if not stages:
            continue
        inside = sum(stages.values())
        rows.append([container_label(key), *[_num(stages.get(name), 2) for name in STAGES],
                     _num(inside, 2), _num(rec["mean_ms"], 2), _num(rec["mean_ms"] - inside, 2)])
    if not rows:
        return []
    return ["", "Where one request's time goes: mean ms per stage inside the app over the timed "
            "requests (`mhist_stage_seconds` on each container's /metrics), and what the mean "
            "latency adds outside them (socket, front server, WSGI or Lambda runtime client, "
            "client):", "",
            _table(["target", *STAGES, "sum", "mean ms", "mean − sum"], rows)]


# --- 3. throughput ---------------------------------------------------------------------------

def _default_label(run: dict, machine: dict) -> str:
    """The `http` target's default layout, as services/web/settings.py gave it during the run."""
    if run.get("default_layout"):
        return run["default_layout"]
    cpus = machine.get("usable_cpus") or 1
    workers = min(cpus, 4)
    return f"{workers}w×{max(1, cpus // workers)}ort"


def _throughput_section(data: dict) -> str:
    tp = data["throughput"]
    if not tp:
        return "## 3. Throughput\n\nNo data."
    rows = []
    for label, rec in tp.items():
        ceiling = _ceiling(rec, "predict_bytes")
        for level, r in rec["levels"].items():
            p50, p99 = r.get("p50_ms"), r.get("p99_ms")
            rows.append([label, level, _num(r["throughput_images_per_s"]),
                         _share(r["throughput_images_per_s"], ceiling), _num(p50), _num(p99),
                         f"×{p99 / p50:.2f}" if p50 and p99 else "–", r["errors"],
                         r["requests"]])
    labels = list(tp)
    levels = sorted({int(c) for rec in tp.values() for c in rec["levels"]})
    pivot = [[f"container, concurrency {c}"]
             + [_num((tp[label]["levels"].get(str(c)) or {}).get("throughput_images_per_s"))
                for label in labels] for c in levels]
    for call in ("predict_bytes", "session.run"):
        if any(_ceiling(rec, call) for rec in tp.values()):
            pivot.append([f"in-process {call}, same layout"]
                         + [_num(_ceiling(tp[label], call)) for label in labels])
    client = data["run"].get("throughput_client") or "a closed loop of Python threads"
    return "\n".join([
        "## 3. Throughput — Flask container (INT8 file) on 127.0.0.1, against its in-process "
        "ceiling", "",
        f"Load: {client}. Layout = gunicorn workers × ORT intra-op threads (× gthreads when "
        "shown); the in-process rows run the same file in the same layout without HTTP "
        "(benchmarks/inprocess.py). images/s:", "",
        _table(["", *labels], pivot), "", "Details:", "",
        _table(["layout", "concurrency", "images/s", "÷ in-process predict_bytes", "p50 ms",
                "p99 ms", "p99 ÷ p50", "errors", "requests"], rows), "",
        *[f"- {line}" for line in throughput_goals(tp)], "",
        throughput_verdict(tp, _default_label(data["run"], data["machine"]))])


def _ceiling(rec: dict, call: str) -> float | None:
    return ((rec.get("inprocess") or {}).get(call) or {}).get("images_per_s")


def _share(value: float | None, base: float | None) -> str:
    return f"{100.0 * value / base:.0f} %" if value and base else "–"


# The serving-overhead issue's goals at concurrency 4: the container keeps this share of what
# predict_bytes reaches in-process in the same layout, with its p99 within this many p50s.
THROUGHPUT_GOAL_SHARE = 0.90
THROUGHPUT_GOAL_TAIL = 3.0
GOAL_CONCURRENCY = "4"


def throughput_goals(tp: dict) -> list[str]:
    """One line per layout: concurrency 4 against the goals, computed from the records."""
    lines = []
    for label, rec in tp.items():
        r = rec["levels"].get(GOAL_CONCURRENCY)
        ceiling = _ceiling(rec, "predict_bytes")
        if not r or not ceiling or not r.get("p50_ms"):
            continue
        share = r["throughput_images_per_s"] / ceiling
        tail = r["p99_ms"] / r["p50_ms"]
        bare = _ceiling(rec, "session.run")
        met = share >= THROUGHPUT_GOAL_SHARE and tail <= THROUGHPUT_GOAL_TAIL and not r["errors"]
        lines.append(
            f"{label} at concurrency {GOAL_CONCURRENCY}: {r['throughput_images_per_s']:.1f} "
            f"images/s = {100 * share:.0f} % of in-process predict_bytes ({ceiling:.1f}; goal "
            f"≥ {100 * THROUGHPUT_GOAL_SHARE:.0f} %)"
            + (f", {100 * r['throughput_images_per_s'] / bare:.0f} % of bare session.run "
               f"({bare:.1f})" if bare else "")
            + f"; p99 = {tail:.2f} × p50 (goal ≤ {THROUGHPUT_GOAL_TAIL:g}); "
            f"{r['errors']} errors: **goal {'met' if met else 'not met'}**.")
    return lines


def throughput_verdict(tp: dict, default: str) -> str:
    """Peak images/s of each layout (over the concurrency levels), the winner, and how the
    default layout of services/web/settings.py compares; plus the lowest single-request p50."""
    peaks = {}
    for label, rec in tp.items():
        level, best = max(rec["levels"].items(),
                          key=lambda item: item[1]["throughput_images_per_s"])
        peaks[label] = (best["throughput_images_per_s"], level)
    if not peaks:
        return ""
    winner = max(peaks, key=lambda label: peaks[label][0])
    listed = ", ".join(f"{label} {value:.1f} (c={level})" for label, (value, level)
                       in peaks.items())
    text = f"**Verdict**: peak images/s — {listed}. Most throughput: **{winner}**"
    if default == winner:
        text += ", which is the default layout (services/web/settings.py) on this machine"
    elif default in peaks:
        text += (f"; the default layout {default} reaches "
                 f"{_ratio(peaks[default][0], peaks[winner][0])} of it")
    low = str(min(int(c) for rec in tp.values() for c in rec["levels"]))
    at_low = {label: rec["levels"][low].get("p50_ms") for label, rec in tp.items()
              if rec["levels"].get(low, {}).get("p50_ms")}
    if at_low:
        fastest = min(at_low, key=at_low.get)
        text += f". Lowest p50 at concurrency {low}: {fastest} ({at_low[fastest]:.1f} ms)"
    return text + "."


# --- 4. cold start ---------------------------------------------------------------------------

def process_label(key: str) -> str:
    """`process/flask-int8` → 'flask: create_app (target http), INT8' and so on."""
    name = key.split("/", 1)[1]
    if name == "torch-eager":
        return "torch + torchvision (checkpoint), eager"
    if name == "torchscript-frozen":
        return "torch (TorchScript, frozen at load)"
    probe, _, precision = name.rpartition("-")
    if probe == "ort":
        what = "ORT core (services.core.model)"
    elif probe in TARGETS and TARGETS[probe].protocol == "lambda-runtime":
        what = f"{_target_name(probe)}: make_handler (INIT) + invoke"
    elif probe in TARGETS:
        what = f"{_target_name(probe)}: create_app (target {TARGETS[probe].settings_target})"
    else:
        what = probe
    return f"{what}, {PRECISION_NAMES.get(precision, precision)}"


def coldstart_findings(cold: dict) -> list[str]:
    found = []
    base = cold.get(f"container/{BASELINE}")
    for precision in ("fp32", "int8"):
        rec = cold.get(f"container/flask-{precision}")
        if rec and base:
            found.append("Container start → first 200: " + faster(
                f"Flask {PRECISION_NAMES[precision]}", rec, "PyTorch baseline", base,
                "first_200_s_median", "s") + ".")
    short = {"torch-eager": "torch eager", "torchscript-frozen": "frozen TorchScript"}
    for precision in ("fp32", "int8"):
        ours = cold.get(f"process/flask-{precision}")
        for name, label in short.items():
            rec = cold.get(f"process/{name}")
            if rec and ours:
                found.append("Process start → first prediction: " + faster(
                    f"Flask app {PRECISION_NAMES[precision]}", ours, label, rec,
                    "first_prediction_s_median", "s") + ".")
    return found


def _coldstart_section(data: dict) -> str:
    cold = data["coldstart"]
    if not cold:
        return "## 4. Cold start\n\nNo data."
    ort = (cold.get("process/ort-fp32") or {}).get("first_prediction_s_median")
    rows = []
    for key, rec in cold.items():
        if key.startswith("process/"):
            rows.append([process_label(key), _num(rec["first_prediction_s_median"], 2),
                         _num(rec["interpreter_s_median"], 2), _num(rec["imports_s_median"], 2),
                         _num(rec["load_s_median"], 2), _num(rec["first_predict_s_median"], 3),
                         _ratio(rec["first_prediction_s_median"], ort),
                         ", ".join(rec["heavy_modules"]) or "–",
                         "ok" if not rec.get("answer_problems") else "**WRONG**",
                         len(rec["first_prediction_s_all"])])
    text = ["## 4. Cold start", "",
            "Process start → first successful prediction (fresh interpreter, warm page cache):",
            "",
            _table(["process", "total s", "interpreter s", "imports s", "model load s",
                    "first predict s", "÷ ORT core FP32", "heavy modules loaded",
                    "answer", "n"], rows)]
    base = (cold.get(f"container/{BASELINE}") or {}).get("first_200_s_median")
    floor = (cold.get(f"container/{FLOOR}") or {}).get("first_200_s_median")
    rows = []
    for key, rec in cold.items():
        if key.startswith("container/"):
            name = key.split("/", 1)[1]
            extra = (f" (INIT done at {rec['init_s_median']:.2f} s)" if "init_s_median" in rec
                     else "")
            seconds = rec["first_200_s_median"]
            over = seconds - floor if floor and name != FLOOR else None
            goal = ("–" if over is None else
                    "yes" if over <= COLD_START_ALLOWANCE_S else "**no**")
            rows.append([container_label(name) + extra, _num(seconds, 2),
                         _num(over, 2), goal, _ratio(seconds, base),
                         "–" if name == FLOOR else
                         "ok" if not rec.get("answer_problems") else "**WRONG**",
                         len(rec["first_200_s_all"])])
    if rows:
        text += ["", "Container start (`run`) → first 200 / first Lambda response, polling with "
                 "the real prediction request; the floor runs the base image's "
                 "`python3 -c pass` in the same run:", "",
                 _table(["image", "seconds", "− floor s",
                         f"≤ floor + {COLD_START_ALLOWANCE_S:g} s", "÷ PyTorch baseline",
                         "answer", "n"], rows)]
    text += _phase_table(cold)
    findings = coldstart_findings(cold)
    if findings:
        text += [""] + [f"- {line}" for line in findings]
    return "\n".join(text)


def _phase_table(cold: dict) -> list[str]:
    """Medians of each image's start-up phases, from its own start-up and access log lines
    (services/web/startup.py; benchmarks/test_coldstart.py says what each phase holds)."""
    rows = [[container_label(key.split("/", 1)[1]),
             *[_num(rec["phases_median"].get(name), 3) for name, _ in PHASES]]
            for key, rec in cold.items()
            if key.startswith("container/") and rec.get("phases_median")]
    if not rows:
        return []
    return ["", "Where a container's cold start goes (median s per phase; the host's and the "
            "container's clocks are the same clock; /proc start times have 10 ms steps):", "",
            _table(["image", *[label for _, label in PHASES]], rows)]


# --- 5. size ---------------------------------------------------------------------------------

def _size_section(data: dict) -> str:
    size = data["size"]
    if not size:
        return "## 5. Size\n\nNo data."
    torch_mb = (size.get(BASELINE) or {}).get("image_mb")
    rows = []
    for key, rec in size.items():
        if key == "base":
            continue
        mounted = rec.get("target") in TARGETS and not TARGETS[rec["target"]].bakes_model
        label = (f"{_target_name(rec['target'])} container (model mounted, not in the image)"
                 if mounted else container_label(key))
        top = ", ".join(f"{p['package']} {p['mb']:.0f}" for p in rec["top_packages"][:4])
        goal = ("–" if key == BASELINE else
                "yes" if rec["image_mb"] <= IMAGE_SIZE_GOAL_MB else "**no**")
        rows.append([label, _num(rec["image_mb"], 0), _num(rec["venv_mb"], 0), goal,
                     _ratio(rec["image_mb"], torch_mb), top])
    base = size.get("base") or {}
    text = ["## 5. Size", "", _table(["image", "image MB", "/opt/venv MB",
                                      f"≤ {IMAGE_SIZE_GOAL_MB} MB", "÷ PyTorch image",
                                      "largest packages (MB)"], rows)]
    if base.get("base_image_mb"):
        text.append(f"\nBase image {base['image']}: {base['base_image_mb']:.0f} MB. The PyTorch "
                    "baseline is built on it; the ONNX images' final stage starts from an empty "
                    "root and takes from it only the interpreter, the standard library and the "
                    "shared libraries serving loads (services/install-venv.sh).")
    return "\n".join(text)


# --- 6. peers --------------------------------------------------------------------------------

PEER_ORDER = ("mlflow-pytorch", "mlflow-onnx-fp32", "ours-fp32", "ours-int8")
PEER_SHORT = {"mlflow-pytorch": "MLflow (PyTorch)", "mlflow-onnx-fp32": "MLflow (ONNX FP32)",
              "ours-fp32": "ours (ONNX FP32)", "ours-int8": "ours (ONNX INT8)"}


def peer_findings(peer: dict) -> list[str]:
    found = []
    pairs = [("ours-fp32", "mlflow-onnx-fp32", "the server alone (same FP32 ONNX file)"),
             ("mlflow-onnx-fp32", "mlflow-pytorch", "the runtime inside MLflow's server"),
             ("ours-int8", "ours-fp32", "INT8 vs FP32 in our server")]
    for one, other, what in pairs:
        a, b = peer.get(one), peer.get(other)
        if a and b:
            found.append(f"{what}: {faster(PEER_SHORT[one], a, PEER_SHORT[other], b)}; launch "
                         f"→ first 200 {a['first_200_s']:.2f} vs {b['first_200_s']:.2f} s.")
    return found


def _peer_section(data: dict) -> str:
    peer = data["peer"]
    if not peer:
        return "## 6. Peers: `mlflow models serve`\n\nNo data."
    rows = []
    for key in PEER_ORDER:
        rec = peer.get(key)
        if rec:
            rows.append([rec["server"], rec.get("request", "?"),
                         _num(rec["request_bytes"] / 1024, 0), _num(rec["first_200_s"], 2),
                         _num(rec.get("p50_ms")), _num(rec.get("p95_ms")),
                         _num(rec.get("p99_ms")), _answers(rec.get("answers")), rec.get("n"),
                         rec.get("settings", "–")])
    return "\n".join([
        "## 6. Peers: `mlflow models serve` (PyTorch and ONNX) vs our service, host processes, "
        "one worker", "",
        _table(["server", "request", "request KB", "launch → first 200 s", "p50 ms", "p95 ms",
                "p99 ms", "answers vs ONNX FP32", "n", "settings"], rows), "",
        "Each server gets the request it is built for: MLflow's rows include parsing the "
        "tensor JSON, ours decoding and preprocessing the PNG.", "",
        *[f"- {line}" for line in peer_findings(peer)],
    ])


# --- 7. precision ----------------------------------------------------------------------------

def model_quality_findings(cmp_: dict) -> list[str]:
    """What the export's metrics say about the model itself (computed conditions only)."""
    found = []
    fp32 = cmp_.get("fp32") or {}
    auc, balanced = fp32.get("roc_auc"), fp32.get("balanced_accuracy")
    if auc is not None and auc < 0.5:
        found.append(f"FP32 ROC AUC {auc:.3f} < 0.5: the model ranks the two classes worse "
                     "than chance on these images.")
    if balanced is not None and abs(balanced - 0.5) < 1e-9:
        found.append("FP32 balanced accuracy 0.500: the model gives every image the same "
                     "label.")
    if found:
        found.append("INT8-vs-FP32 accuracy deltas and agreement on such a model do not show "
                     "that INT8 would keep a useful model's quality.")
    return found


def _precision_section(data: dict) -> str:
    rec = (data["precision"] or {}).get("fp32_vs_int8")
    if not rec:
        return "## 7. FP32 vs INT8\n\nNo data."
    cmp_ = rec["comparison"]
    metrics = [m for m in ("accuracy", "balanced_accuracy", "roc_auc", "f1")
               if m in cmp_.get("fp32", {})]
    rows = []
    for name in ("fp32", "int8"):
        f = rec[name]
        rows.append([name.upper(), _num(f["size_bytes"] / 1e6, 1), _num(f["load_ms_median"], 0)]
                    + [_num(cmp_[name].get(m), 3) for m in metrics])
    rows.append(["INT8 vs FP32 (ratio; metric Δ)",
                 _ratio(rec["int8"]["size_bytes"], rec["fp32"]["size_bytes"]),
                 _ratio(rec["int8"]["load_ms_median"], rec["fp32"]["load_ms_median"])]
                + [_num((cmp_["int8"].get(m) or 0) - (cmp_["fp32"].get(m) or 0), 3)
                   for m in metrics])
    text = [
        "## 7. FP32 vs INT8 (file, load, accuracy from export_report.json)", "",
        _table(["file", "size MB", "load ms", *metrics], rows),
        f"\nTop-1 agreement {cmp_.get('top1_agreement', float('nan')):.3f}, max |Δp| "
        f"{cmp_.get('max_abs_prob_diff', float('nan')):.3g} on {cmp_.get('images')} "
        f"SYNTHETIC images of the {cmp_.get('split', 'held-out')} split."]
    text += [f"\n{line}" for line in model_quality_findings(cmp_)]
    return "\n".join(text)


# --- 8. whole slide ---------------------------------------------------------------------------

SLIDE_REFERENCE = "ort-fp32"


def _slide_label(name: str, rec: dict | None) -> str:
    return (rec or {}).get("label") or name


def _slide_answers(agreement: dict, name: str) -> str:
    """A table cell: each slide size's worst |Δp| and label agreement against ONNX FP32."""
    if name == agreement.get("reference", SLIDE_REFERENCE):
        return "reference"
    sizes = agreement.get(name) or {}
    if not sizes:
        return "–"
    verdict = "ok" if all(s.get("ok") for s in sizes.values()) else "**WRONG**"
    parts = [f"{key}: max \\|Δp\\| {s['max_abs_diff']:.1e} (tolerance {s['tolerance']:g}), "
             f"labels {s['labels_agree']}/{s['tiles']}" for key, s in sizes.items()
             if s.get("max_abs_diff") is not None]
    return f"{verdict} — " + "; ".join(parts)


def _slide_runs(slides: dict) -> dict[str, dict]:
    return {k.split("/", 1)[1]: v for k, v in slides.items() if k.startswith("run/")}


def slide_findings(slides: dict) -> list[str]:
    """Seconds per slide compared between the variants (each from two medians), and what the
    tile-by-tile answer checks found."""
    runs = _slide_runs(slides)
    torch_name = next((k for k, v in runs.items() if v.get("runtime") == "torch"), None)
    found = []
    for one, other in (("ort-int8", "ort-fp32"), ("ort-fp32", torch_name),
                       ("ort-int8", torch_name)):
        a, b = runs.get(one), runs.get(other) if other else None
        if a and b:
            found.append("Seconds per slide: " + faster(
                _slide_label(one, a), a, _slide_label(other, b), b,
                key="seconds_per_slide_median", unit="s") + ".")
    agreement = slides.get("agreement") or {}
    checked = {k: v for k, v in agreement.items() if isinstance(v, dict) and v}
    if not checked:
        return found
    wrong = [_slide_label(k, runs.get(k)) for k, v in checked.items()
             if not all(s.get("ok") for s in v.values())]
    summaries = [s for v in checked.values() for s in v.values()]
    lowest = min(s["label_share"] for s in summaries)
    found.append(
        f"Answers: **WRONG** for {', '.join(wrong)}." if wrong else
        f"Answers: {', '.join(_slide_label(k, runs.get(k)) for k in checked)} against ONNX "
        f"FP32 on {sum(s['tiles'] for s in summaries)} tiles (both slides): every P within "
        f"tolerance; the lowest share of equal labels {lowest:.1%}.")
    for name, sizes in checked.items():
        decided = sum(s.get("labels_decided", 0) for s in sizes.values())
        tiles = sum(s["tiles"] for s in sizes.values())
        if decided < tiles:
            found.append(
                f"{_slide_label(name, runs.get(name))}: on {tiles - decided} of {tiles} tiles "
                f"the FP32 P lies within its tolerance of the threshold, where a label may "
                "legitimately differ; only the share of equal labels bounds them there.")
    return found


def memory_findings(memory: dict, labels: dict[str, str]) -> list[str]:
    """How the peak RSS followed the slide's area: ratios computed from the two runs."""
    sides = memory.get("sides_px") or {}
    found = []
    if sides.get("1x") and sides.get("4x"):
        area = (sides["4x"] / sides["1x"]) ** 2
        found.append(f"Slide area ×{area:.2f} ({sides['1x']:,}² → {sides['4x']:,}² px).")
    for name, rec in memory.items():
        if not isinstance(rec, dict) or "peak_rss_mb" not in rec:
            continue
        peaks, tiles = rec["peak_rss_mb"], rec["tiles"]
        warm = rec.get("after_warmup_rss_mb") or {}
        above = (f"; above the loaded, warmed-up model {peaks['1x'] - warm['1x']} → "
                 f"{peaks['4x'] - warm['4x']} MB" if warm.get("1x") and warm.get("4x") else "")
        found.append(
            f"{labels.get(name, name)}: tiles analysed ×{tiles['4x'] / tiles['1x']:.2f} "
            f"({tiles['1x']} → {tiles['4x']}); peak RSS ×{rec['peak_ratio']:.2f} "
            f"({peaks['1x']} → {peaks['4x']} MB, {peaks['4x'] - peaks['1x']:+d} MB{above}).")
    return found


def _slides_section(data: dict) -> str:
    slides = data.get("slides") or {}
    runs = _slide_runs(slides)
    if not runs:
        return "## 8. Whole slide\n\nNo data."
    info = slides.get("slides") or {}
    size = (info.get("sizes") or {}).get("1x") or {}
    first = next(iter(runs.values()))
    agreement = slides.get("agreement") or {}
    torch_s = next((v["seconds_per_slide_median"] for v in runs.values()
                    if v.get("runtime") == "torch"), None)
    rows = [[_slide_label(name, rec), _num(rec["tiles_per_s_median"]),
             _num(rec["seconds_per_slide_median"], 2),
             _ratio(rec["seconds_per_slide_median"], torch_s),
             _num(rec["load_s_median"], 2), _num(rec.get("warmup_s_median"), 2),
             rec["after_load_rss_mb"], rec["peak_rss_mb"], _slide_answers(agreement, name),
             rec["n"]] for name, rec in runs.items()]
    load = info.get("load_average") or {}
    cpus = (data.get("machine") or {}).get("usable_cpus") or 1
    start = load.get("start")
    text = [
        "## 8. Whole slide (`python -m services.slides`' core, one process per run)", "",
        f"A SYNTHETIC {size.get('side_px', 0):,} × {size.get('side_px', 0):,} px slide at "
        f"{size.get('mpp')} µm/px (tiled pyramidal TIFF, downsamples {size.get('downsamples')}, "
        f"{size.get('file_mb')} MB; the synthetic generator's tissue, not a scan): "
        f"{first['tiles_grid']} tiles in the grid, {first['tiles_analysed']} with tissue "
        f"analysed, read at level {first['level']} ({first['tile_px_read']} px a tile, resized "
        f"by the model's preprocessing); batch {first['batch_size']}, {first['threads']} "
        f"threads, median of {first['n']} run(s) per variant, the variants interleaved.", "",
        "tiles/s = tiles analysed ÷ the time from the first tile read to the last answer "
        "written (reading, preprocessing, the model); seconds per slide = opening the slide → "
        "every output written, the model already loaded and warmed up; peak = the process's "
        "VmHWM. Answers: each variant's `<name>.tiles.csv` against ONNX FP32's, tile by tile "
        "(P to the CSV's 6 decimals).", "",
        _table(["variant", "tiles/s", "seconds per slide", "÷ PyTorch", "model load s",
                "warm-up s", "RSS after load MB", "peak RSS MB", "answers vs ONNX FP32",
                "n"], rows), "",
        *[f"- {line}" for line in slide_findings(slides)],
    ]
    if start:
        text.append(f"- Load average (1/5/15 min) at the start of these runs {start}, at the "
                    f"end {load.get('end')}"
                    + (f": **busy** (1-min load > {BUSY_LOAD_PER_CPU} × {cpus} CPUs)."
                       if busy(start, cpus) else "."))
    settings = [f"- **{_slide_label(k, v)}**: {v['setting']}" for k, v in runs.items()
                if v.get("setting")]
    if settings:
        text += ["", "How each variant is set up:", "", *settings]
    memory = slides.get("memory") or {}
    if memory:
        text += ["", "Peak memory against the slide's size (each variant once more over a "
                 "slide of 4× the area):", "",
                 *[f"- {line}" for line in memory_findings(
                     memory, {k: _slide_label(k, v) for k, v in runs.items()})]]
    return "\n".join(text)


# --- headline (README) -----------------------------------------------------------------------

HEADLINE_COLUMNS = ("PyTorch eager", "PyTorch, best FP32", "PyTorch INT8 (PT2E)", "ONNX FP32",
                    "ONNX INT8")


def _cell(value: float | None, digits: int, name: str | None = None,
          base: float | None = None) -> str:
    if value is None:
        return "–"
    text = f"{value:.{digits}f}"
    if base and name is None:
        text += f" (×{value / base:.2f})"
    return f"{text} ({name})" if name else text


def headline_rows(data: dict) -> list[list[str]]:
    """One row per question, one column per runtime; (×r) = the cell ÷ its row's 'PyTorch,
    best FP32' cell."""
    rows = []
    model = data["model"]
    for batch in sorted({rec["batch"] for key, rec in model.items() if "/b" in key
                         and rec.get("variant") in VARIANTS}):
        recs = _model_records(model, batch)
        best = _best_torch_fp32(recs)
        best_p50 = recs[best]["p50_ms"] if best else None
        rows.append([f"model only, batch {batch}, p50 ms",
                     _cell((recs.get(EAGER) or {}).get("p50_ms"), 1, base=best_p50),
                     _cell(best_p50, 1, _label(recs[best]) if best else None),
                     *[_cell((recs.get(n) or {}).get("p50_ms"), 1, base=best_p50)
                       for n in ("torch-int8", "ort-fp32", "ort-int8")]])
    http, cold, size, peer = data["http"], data["coldstart"], data["size"], data["peer"]

    def trio(get, digits: int, what: str) -> list[str] | None:
        """A row of the PyTorch baseline container against the Flask containers."""
        base = get(BASELINE)
        values = [get("flask-fp32"), get("flask-int8")]
        if base is None and not any(values):
            return None
        return [what, "–", _cell(base, digits), "–",
                *[_cell(v, digits, base=base) for v in values]]

    for row in (
        trio(lambda k: (http.get(k) or {}).get("p50_ms"), 1,
             "one PNG over HTTP, Flask container (PyTorch: baseline container), p50 ms"),
        trio(lambda k: (cold.get(f"container/{k}") or {}).get("first_200_s_median"), 2,
             "container start → first 200, s"),
        trio(lambda k: (size.get(k) or {}).get("image_mb"), 0, "image size, MB"),
    ):
        if row:
            rows.append(row)
    procs = {k: (cold.get(f"process/{k}") or {}).get("first_prediction_s_median")
             for k in ("torch-eager", "torchscript-frozen", "flask-fp32", "flask-int8")}
    if any(procs.values()):
        base = procs["torchscript-frozen"]
        rows.append(["process start → first prediction (app), s",
                     _cell(procs["torch-eager"], 2, base=base), _cell(base, 2), "–",
                     _cell(procs["flask-fp32"], 2, base=base),
                     _cell(procs["flask-int8"], 2, base=base)])
    if peer:
        def p50(key: str) -> float | None:
            return (peer.get(key) or {}).get("p50_ms")
        rows.append(["`mlflow models serve`, tensor JSON, p50 ms", _cell(p50("mlflow-pytorch"), 1),
                     "–", "–", _cell(p50("mlflow-onnx-fp32"), 1), "–"])
        rows.append(["our service on the host, PNG, p50 ms", "–", "–", "–",
                     _cell(p50("ours-fp32"), 1), _cell(p50("ours-int8"), 1)])
    return rows


def headline(data: dict) -> str:
    run, machine = data["run"], data["machine"]
    load = run.get("load_average_at_start")
    cpus = machine.get("usable_cpus")
    state = ("**busy machine: not comparable with an idle run**" if busy(load, cpus or 1)
             else "not flagged as busy")
    return "\n".join([
        f"Run {run.get('stamp')} ({run.get('mode')} mode) on {machine.get('cpu_model')}, "
        f"{cpus} CPUs, {run.get('threads')} threads per runtime; 1-min load at start "
        f"{load[0] if load else '?'} ({state}). (×r) = the cell ÷ the row's \"PyTorch, best "
        "FP32\" cell; the PyTorch baseline container serves frozen TorchScript. Details, "
        "request formats and answer checks: benchmarks/LATEST.md.", "",
        _table(["what", *HEADLINE_COLUMNS], headline_rows(data))])


def extract_block(text: str) -> str | None:
    """What stands between README_BEGIN and README_END in `text`, or None."""
    match = re.search(re.escape(README_BEGIN) + r"\n(.*?)\n?" + re.escape(README_END), text,
                      re.DOTALL)
    return match.group(1).strip("\n") if match else None


def readme_block_for(latest_text: str) -> str:
    """What README.md's block must hold for this LATEST.md (which every report writes)."""
    block = extract_block(latest_text)
    if block is None:
        raise ValueError("benchmarks/LATEST.md has no headline block: regenerate it with "
                         "`python -m benchmarks.report benchmarks/results/<timestamp> --latest "
                         "benchmarks/LATEST.md --readme README.md`")
    return block


def sync_readme(readme: Path, latest: Path = LATEST) -> None:
    """Replace README.md's generated block with LATEST.md's headline."""
    text = readme.read_text()
    if extract_block(text) is None:
        raise ValueError(f"{readme} has no {README_BEGIN!r} … {README_END!r} block: put the two "
                         "markers where the benchmark table goes")
    block = readme_block_for(latest.read_text())
    start = text.index(README_BEGIN) + len(README_BEGIN)
    end = text.index(README_END, start)
    readme.write_text(text[:start] + "\n" + block + "\n" + text[end:])


def render(data: dict) -> str:
    return "\n\n".join([
        _header(data),
        "## Headline\n\n" + README_BEGIN + "\n" + headline(data) + "\n" + README_END,
        _skips(data), _model_section(data), _http_section(data), _throughput_section(data),
        _coldstart_section(data), _size_section(data), _peer_section(data),
        _precision_section(data), _slides_section(data),
    ]) + "\n"


# --- plots -----------------------------------------------------------------------------------

def _colour(label: str) -> str:
    """PyTorch bars orange, ONNX bars blue: the comparison the plots are about."""
    return "tab:orange" if "torch" in label.lower() else "tab:blue"


def _plots(data: dict, folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    written = []

    def save(fig, name: str) -> None:
        path = folder / name
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    model = data["model"]
    batches = sorted({rec["batch"] for key, rec in model.items() if "/b" in key
                      and rec.get("variant") in VARIANTS})
    if batches:
        fig, axes = plt.subplots(1, len(batches), figsize=(6 * len(batches), 4.5),
                                 squeeze=False)
        for ax, batch in zip(axes[0], batches, strict=True):
            recs = _model_records(model, batch)
            samples = [rec["samples_ms"] for rec in recs.values()]
            labels = [_label(rec) for rec in recs.values()]
            if batch == 1 and "preprocessing/png224" in model:
                samples.append(model["preprocessing/png224"]["samples_ms"])
                labels.append("preprocess")
            ax.boxplot(samples, showfliers=True)
            ax.set_xticks(range(1, len(labels) + 1), labels, rotation=30, ha="right")
            ax.set_title(f"model only, batch {batch}")
            ax.set_yscale("log")  # contention outliers would otherwise flatten the boxes
            ax.set_ylabel("ms per call (log)")
        save(fig, "latency_model.png")
    http = data["http"]
    keys = [key for key, rec in _http_rows(http) if rec.get("samples_ms")]
    if keys:
        fig, ax = plt.subplots(figsize=(11, 4.5))
        ax.boxplot([http[k]["samples_ms"] for k in keys], showfliers=True)
        ax.set_xticks(range(1, len(keys) + 1), keys, rotation=20, ha="right")
        ax.set_ylabel("ms per request")
        ax.set_title("end to end, one 224² PNG")
        save(fig, "latency_http.png")
    tp = data["throughput"]
    if tp:
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
        for label, rec in tp.items():
            levels = sorted(rec["levels"], key=int)
            xs = [int(c) for c in levels]
            left.plot(xs, [rec["levels"][c]["throughput_images_per_s"] for c in levels],
                      marker="o", label=label)
            right.plot(xs, [rec["levels"][c].get("p99_ms") or 0 for c in levels], marker="o",
                       label=label)
        left.set(xlabel="concurrency", ylabel="images/s", title="throughput")
        right.set(xlabel="concurrency", ylabel="p99 ms", title="tail latency")
        left.legend()
        save(fig, "throughput.png")
    cold = data["coldstart"]
    if cold:
        fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
        proc = [(process_label(k), v["first_prediction_s_median"])
                for k, v in cold.items() if k.startswith("process/")]
        box = [(container_label(k.split("/", 1)[1]), v["first_200_s_median"])
               for k, v in cold.items() if k.startswith("container/")]
        for ax, pairs, title in ((left, proc, "process start → first prediction"),
                                 (right, box, "container start → first 200")):
            if pairs:
                bars = ax.barh([p[0] for p in pairs], [p[1] for p in pairs],
                               color=[_colour(p[0]) for p in pairs])
                ax.bar_label(bars, fmt="%.2f s", padding=2)
            ax.set(xlabel="seconds", title=title)
        save(fig, "coldstart.png")
    size = data["size"]
    names = [k for k in size if k != "base"]
    if names:
        fig, ax = plt.subplots(figsize=(10, 4))
        xs = range(len(names))
        image_bars = ax.bar([x - 0.2 for x in xs], [size[n]["image_mb"] for n in names], 0.4,
                            label="image")
        venv_bars = ax.bar([x + 0.2 for x in xs], [size[n]["venv_mb"] for n in names], 0.4,
                           label="/opt/venv")
        ax.bar_label(image_bars, fmt="%.0f")
        ax.bar_label(venv_bars, fmt="%.0f")
        ax.set_xticks(list(xs), names)
        ax.set(ylabel="MB", title="image and Python env size")
        ax.legend()
        save(fig, "size.png")
    return written


def generate(folder: str | Path, latest: Path | None = None, readme: Path | None = None
             ) -> Path:
    """Write summary.md and plots/ for `folder`; returns the summary's path. With `latest`,
    also write the summary there without plot links (benchmarks/LATEST.md is committed, the
    plots are not); with `readme`, then copy LATEST.md's headline into that README."""
    folder = Path(folder)
    data = read_results(folder)
    summary = folder / "summary.md"
    plots = _plots(data, folder / "plots")
    text = render(data)
    if latest is not None:
        latest.write_text(
            "<!-- generated by `python -m benchmarks.report benchmarks/results/"
            f"{folder.name} --latest {latest}`; do not edit by hand -->\n\n" + text)
        if readme is not None:
            sync_readme(readme, latest)
    if plots:
        text += "\n## Plots\n\n" + "\n".join(f"![{p.stem}](plots/{p.name})" for p in plots) + "\n"
    summary.write_text(text)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Regenerate summary.md and plots from a "
                                                 "benchmarks/results/<timestamp> folder.")
    parser.add_argument("folder", type=Path, nargs="?", default=None,
                        help="benchmarks/results/<timestamp>")
    parser.add_argument("--latest", type=Path, default=None,
                        help="also write the summary (without plots) here, e.g. "
                             "benchmarks/LATEST.md")
    parser.add_argument("--readme", type=Path, default=None,
                        help="copy the headline table of --latest (default "
                             "benchmarks/LATEST.md) into this README's generated block")
    args = parser.parse_args(argv)
    try:
        if args.folder is None:
            if args.readme is None:
                parser.error("give a results folder, or --readme to sync README.md alone")
            sync_readme(args.readme, args.latest or LATEST)
            print(args.readme)
            return 0
        if args.readme is not None and args.latest is None:
            parser.error("--readme with a results folder needs --latest: README.md's table is "
                         "copied from the LATEST.md that this folder writes")
        print(generate(args.folder, args.latest, args.readme))
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
