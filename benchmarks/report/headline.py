"""The headline table (README.md's benchmark table): one row per question, one column per
runtime, each cell a number from the sections below it in the report."""

from __future__ import annotations

from collections.abc import Callable

from benchmarks import BASELINE
from benchmarks.machine import busy
from benchmarks.report.classes import cpu_class
from benchmarks.report.model_only import EAGER, best_torch_fp32
from benchmarks.report.records import ModelRun, Results
from benchmarks.report.text import table

HEADLINE_COLUMNS = ("PyTorch eager", "PyTorch, best FP32", "PyTorch INT8 (PT2E)", "ONNX FP32",
                    "ONNX INT8")
# The processes of the process-start row, in HEADLINE_COLUMNS' order (no PyTorch INT8 one).
PROCESS_ROW = ("torch-eager", "torchscript-frozen", "flask-fp32", "flask-int8")


def _cell(value: float | None, digits: int, name: str | None = None,
          base: float | None = None) -> str:
    if value is None:
        return "–"
    text = f"{value:.{digits}f}"
    if base and name is None:
        text += f" (×{value / base:.2f})"
    return f"{text} ({name})" if name else text


def _model_row(batch: int, runs: dict[str, ModelRun]) -> list[str]:
    best = best_torch_fp32(runs)
    best_p50 = runs[best].p50_ms if best else None

    def p50(name: str) -> float | None:
        return runs[name].p50_ms if name in runs else None
    return [f"model only, batch {batch}, p50 ms", _cell(p50(EAGER), 1, base=best_p50),
            _cell(best_p50, 1, runs[best].label if best else None),
            *[_cell(p50(n), 1, base=best_p50) for n in ("torch-int8", "ort-fp32", "ort-int8")]]


def _trio(value: Callable[[str], float | None], digits: int, what: str) -> list[list[str]]:
    """A row of the PyTorch baseline container against the Flask containers (none if no
    value)."""
    base = value(BASELINE)
    values = [value("flask-fp32"), value("flask-int8")]
    if base is None and not any(values):
        return []
    return [[what, "–", _cell(base, digits), "–", *[_cell(v, digits, base=base) for v in values]]]


def _container_rows(results: Results) -> list[list[str]]:
    http, cold, size = results.http, results.coldstart, results.size

    def latency(key: str) -> float | None:
        return http.containers[key].p50_ms if http and key in http.containers else None

    def start(key: str) -> float | None:
        return cold.containers[key].first_200_s if cold and key in cold.containers else None

    def image(key: str) -> float | None:
        return size.images[key].image_mb if size and key in size.images else None
    return (_trio(latency, 1, "one PNG over HTTP, Flask container (PyTorch: baseline "
                  "container), p50 ms")
            + _trio(start, 2, "container start → first 200, s")
            + _trio(image, 0, "image size, MB"))


def _process_row(results: Results) -> list[list[str]]:
    cold = results.coldstart
    eager, frozen, fp32, int8 = (
        cold.processes[k].first_prediction_s if cold and k in cold.processes else None
        for k in PROCESS_ROW)
    if not any((eager, frozen, fp32, int8)):
        return []
    return [["process start → first prediction (app), s", _cell(eager, 2, base=frozen),
             _cell(frozen, 2), "–", _cell(fp32, 2, base=frozen), _cell(int8, 2, base=frozen)]]


def _peer_rows(results: Results) -> list[list[str]]:
    peer = results.peer
    if not peer:
        return []

    def p50(key: str) -> float | None:
        return peer[key].p50_ms if key in peer else None
    rows = [["`mlflow models serve`, tensor JSON, p50 ms", _cell(p50("mlflow-pytorch"), 1),
             "–", "–", _cell(p50("mlflow-onnx-fp32"), 1), "–"],
            ["`mlflow models serve`, PNG (base64 in JSON), p50 ms", "–", "–", "–",
             _cell(p50("mlflow-onnx-png"), 1), "–"],
            ["our service on the host, PNG, p50 ms", "–", "–", "–",
             _cell(p50("ours-fp32"), 1), _cell(p50("ours-int8"), 1)]]
    return [row for row in rows if any(cell != "–" for cell in row[1:])]


def headline_rows(results: Results) -> list[list[str]]:
    """One row per question, one column per runtime; (×r) = the cell ÷ its row's 'PyTorch,
    best FP32' cell."""
    by_batch = results.model.by_batch if results.model else {}
    return ([_model_row(batch, runs) for batch, runs in by_batch.items()]
            + _container_rows(results) + _process_row(results) + _peer_rows(results))


def _simd(flags: dict[str, bool]) -> str:
    """The CPU's SIMD features present, which INT8's and PyTorch's speeds depend on."""
    present = [name for name, on in flags.items() if on]
    return ", ".join(present) if present else "no AVX2, AVX-512 or ARM dot product"


def headline(results: Results) -> str:
    run, cpus = results.run, results.machine.usable_cpus
    load = run.load_at_start
    state = ("**busy machine: not comparable with an idle run**" if busy(load, cpus or 1)
             else "not flagged as busy")
    return "\n".join([
        f"Run {run.stamp} ({run.mode} mode) on {results.machine.cpu_model} "
        f"({_simd(results.machine.flags)}), "
        f"{cpus} CPUs, {run.threads} threads per runtime; 1-min load at start "
        f"{load[0] if load else '?'} ({state}). (×r) = the cell ÷ the row's \"PyTorch, best "
        "FP32\" cell; the PyTorch baseline container serves frozen TorchScript. Details, "
        f"request formats and answer checks: benchmarks/LATEST.{cpu_class(results.machine.flags)}"
        ".md.", "",
        table(["what", *HEADLINE_COLUMNS], headline_rows(results))])
