"""Section 4: process start → first prediction, and container start → first answer against
the floor (the base image running `python3 -c pass`)."""

from __future__ import annotations

from benchmarks import BASELINE
from benchmarks.report.goals import GOALS
from benchmarks.report.records import ColdStart, ContainerStart
from benchmarks.report.text import (
    FLOOR,
    PRECISION_NAMES,
    bullets,
    container_label,
    faster,
    num,
    process_label,
    ratio,
    table,
)

PHASES = (("runtime_s", "run → PID 1"), ("server_s", "PID 1 → serving process"),
          ("imports_s", "imports"), ("session_s", "ORT session"), ("app_s", "rest of app"),
          ("first_request_s", "ready → first answer"),
          ("first_inference_s", "of which first inference"))
PROCESS_COLUMNS = ["process", "total s", "interpreter s", "imports s", "model load s",
                   "first predict s", "÷ ORT core FP32", "heavy modules loaded", "answer", "n"]
# The processes the Flask app's start is compared with, and their short names.
TORCH_PROCESSES = {"torch-eager": "torch eager", "torchscript-frozen": "frozen TorchScript"}


def coldstart_findings(cold: ColdStart) -> list[str]:
    found = []
    base = cold.containers.get(BASELINE)
    for precision in ("fp32", "int8"):
        rec = cold.containers.get(f"flask-{precision}")
        if rec and base:
            found.append("Container start → first 200: " + faster(
                f"Flask {PRECISION_NAMES[precision]}", rec.first_200_s, "PyTorch baseline",
                base.first_200_s, "s") + ".")
    for precision in ("fp32", "int8"):
        ours = cold.processes.get(f"flask-{precision}")
        for name, label in TORCH_PROCESSES.items():
            rec = cold.processes.get(name)
            if rec and ours:
                found.append("Process start → first prediction: " + faster(
                    f"Flask app {PRECISION_NAMES[precision]}", ours.first_prediction_s, label,
                    rec.first_prediction_s, "s") + ".")
    return found


def _process_table(cold: ColdStart) -> list[str]:
    ort = cold.processes.get("ort-fp32")
    rows = [[process_label(name), num(rec.first_prediction_s, 2), num(rec.interpreter_s, 2),
             num(rec.imports_s, 2), num(rec.load_s, 2), num(rec.first_predict_s, 3),
             ratio(rec.first_prediction_s, ort.first_prediction_s if ort else None),
             ", ".join(rec.heavy_modules) or "–", "ok" if rec.ok else "**WRONG**", rec.n]
            for name, rec in cold.processes.items()]
    return ["Process start → first successful prediction (fresh interpreter, warm page cache):",
            "", table(PROCESS_COLUMNS, rows)]


def _container_row(name: str, rec: ContainerStart, floor: float | None,
                   base: float | None) -> list:
    extra = f" (INIT done at {rec.init_s:.2f} s)" if rec.init_s is not None else ""
    over = rec.first_200_s - floor if floor and name != FLOOR else None
    goal = "–" if over is None else "yes" if over <= GOALS.cold_start_allowance_s else "**no**"
    answer = "–" if name == FLOOR else "ok" if rec.ok else "**WRONG**"
    return [container_label(name) + extra, num(rec.first_200_s, 2), num(over, 2), goal,
            ratio(rec.first_200_s, base), answer, rec.n]


def _container_table(cold: dict[str, ContainerStart]) -> list[str]:
    if not cold:
        return []
    base, floor = cold.get(BASELINE), cold.get(FLOOR)
    rows = [_container_row(name, rec, floor.first_200_s if floor else None,
                           base.first_200_s if base else None) for name, rec in cold.items()]
    return ["", "Container start (`run`) → first 200 / first Lambda response, polling with "
            "the real prediction request; the floor runs the base image's "
            "`python3 -c pass` in the same run:", "",
            table(["image", "seconds", "− floor s",
                   f"≤ floor + {GOALS.cold_start_allowance_s:g} s", "÷ PyTorch baseline",
                   "answer", "n"], rows)]


def _phase_table(cold: ColdStart) -> list[str]:
    """Medians of each image's start-up phases, from its own start-up and access log lines
    (services/web/startup.py; benchmarks/test_coldstart.py says what each phase holds)."""
    rows = [[container_label(name), *[num(rec.phases.get(phase), 3) for phase, _ in PHASES]]
            for name, rec in cold.containers.items() if rec.phases]
    if not rows:
        return []
    return ["", "Where a container's cold start goes (median s per phase; the host's and the "
            "container's clocks are the same clock; /proc start times have 10 ms steps):", "",
            table(["image", *[label for _, label in PHASES]], rows)]


def coldstart_section(cold: ColdStart | None) -> str:
    if cold is None:
        return "## 4. Cold start\n\nNo data."
    text = ["## 4. Cold start", "", *_process_table(cold),
            *_container_table(cold.containers), *_phase_table(cold)]
    findings = coldstart_findings(cold)
    if findings:
        text += ["", *bullets(findings)]
    return "\n".join(text)
