"""(1) Model only — PyTorch at its default (eager) and at its best (channels_last, frozen
TorchScript, torch.compile), PyTorch's own INT8 (PT2E), ONNX Runtime FP32 and INT8: the same
weights, the same preprocessed inputs, the same thread count (BenchConfig.threads) — plus the
numpy + Pillow preprocessing alone, and (7) FP32 vs INT8 file size, load time, accuracy.

Each variant runs in a process of its own with the environment it has in production, rounds
interleaved across the variants (benchmarks/variants.py). Every variant's answers on the check
images are compared with the ONNX FP32 reference (benchmarks/checks.py): a wrong answer fails
the variant's test.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from benchmarks.checks import answer_problem, assert_answers_ok
from benchmarks.machine import production_env
from benchmarks.timing import latency_stats, median, time_calls
from benchmarks.variants import VARIANTS, measure
from services.core.model import InferenceModel
from services.core.preprocessing import preprocess_bytes
from tests.conftest import unavailable

# Not a dependency of the project: PyTorch's INT8 path runs where it is installed.
OPTIONAL_MODULES = {"torchao": "pip install -c constraints.txt torchao"}
# The variants inductor compiles to C++ (torch.compile); they need a C++ compiler on the host.
COMPILED = ("torch-compile", "torch-int8")
# What inductor raises when it cannot build its C++ kernels here (no or broken compiler).
COMPILE_ERRORS = ("InductorError", "CppCompileError", "BackendCompilerFailed",
                  "InvalidCxxCompiler")


def _cxx() -> str | None:
    """The C++ compiler inductor would find ($CXX, else g++ or clang++ on PATH), or None."""
    for name in (os.environ.get("CXX"), "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _preprocessed(paths: list[Path], spec) -> np.ndarray:
    return np.stack([preprocess_bytes(p.read_bytes(), spec) for p in paths])  # (N, 3, S, S)


@pytest.fixture(scope="module")
def model_inputs(bench_model, bench_config, tmp_path_factory) -> Path:
    """One .npz every worker reads: the timed batches (the first check images), the check
    images themselves and the PyTorch INT8 calibration images, all preprocessed as served."""
    spec = InferenceModel(bench_model.fp32, threads=1).metadata.preprocessing
    check = _preprocessed(bench_model.check_images, spec)
    arrays = {f"b{b}": np.ascontiguousarray(check[:b]) for b in bench_config.model_batches}
    assert all(len(a) == int(k[1:]) for k, a in arrays.items()), "too few check images"
    path = tmp_path_factory.mktemp("model-inputs") / "inputs.npz"
    np.savez(path, check=check, calib=_preprocessed(bench_model.calibration_images, spec),
             **arrays)
    return path


def _why_not(name: str, config) -> str | None:
    """Why variant `name` cannot run here, or None."""
    variant = VARIANTS[name]
    if variant.runtime == "torch" and "torch" in config.skip:
        return "torch parts skipped by MHIST_BENCH_SKIP/--bench-skip"
    if name in ("torch-compile", "torch-int8") and config.skipped(name):
        return f"{variant.label} skipped by MHIST_BENCH_SKIP/--bench-skip"
    if name in COMPILED and _cxx() is None:
        return ("inductor (torch.compile) cannot compile here: no C++ compiler ($CXX, g++ or "
                "clang++); install g++ (Debian: apt-get install g++)")
    missing = [m for m in variant.modules if importlib.util.find_spec(m) is None]
    return f"{', '.join(missing)} not installed" if missing else None


@pytest.fixture(scope="module")
def model_runs(bench_model, bench_config, model_inputs, tmp_path_factory) -> dict[str, dict]:
    """Every variant that can run here, measured together (variants.measure)."""
    names = [name for name in VARIANTS if _why_not(name, bench_config) is None]
    runs = measure(
        names, model_inputs, threads=bench_config.threads, batches=bench_config.model_batches,
        rounds=bench_config.model_rounds, warmup=bench_config.warmup,
        files={"checkpoint": bench_model.checkpoint, "fp32": bench_model.fp32,
               "int8": bench_model.int8},
        env=production_env(),
        log_dir=tmp_path_factory.mktemp("variant-logs"))
    for name in VARIANTS:
        if name not in runs:
            runs[name] = {"variant": name, "not_run": _why_not(name, bench_config)}
    return runs


def _answers(run: dict, reference, bench_model) -> dict:
    """The variant's check answers against the reference (checks.Reference.summarise)."""
    classes = run["info"]["classes"]
    comparisons = [
        reference.compare(path.name, dict(zip(classes, row, strict=True)),
                          VARIANTS[run["variant"]].precision)
        for path, row in zip(bench_model.check_images, run.get("check", []), strict=False)]
    return reference.summarise(comparisons, VARIANTS[run["variant"]].precision)


def _skip_not_run(run: dict) -> None:
    reason = run["not_run"]
    if any(module in reason for module in OPTIONAL_MODULES):
        hints = "; ".join(OPTIONAL_MODULES.values())
        pytest.skip(f"{VARIANTS[run['variant']].label}: {reason} ({hints})")
    if "skipped by" in reason:
        pytest.skip(reason)
    unavailable(f"{VARIANTS[run['variant']].label}: {reason}")


@pytest.mark.parametrize("name", list(VARIANTS))
def test_model_latency(name, model_runs, reference, bench_model, bench_config, results):
    run = model_runs[name]
    if "not_run" in run:
        _skip_not_run(run)
    if name in COMPILED and any(e in run.get("error", "") for e in COMPILE_ERRORS):
        # The compiler is there but inductor's C++ build fails: a machine problem, said as such.
        first = run["error"].split("\n", 1)[0][:500]
        unavailable(f"{VARIANTS[name].label}: inductor (torch.compile) cannot compile on this "
                    f"machine ({_cxx()}): {first}")
    assert "error" not in run, run["error"]
    variant = VARIANTS[name]
    answers = _answers(run, reference, bench_model)
    for batch, samples in run["samples"].items():
        results.put("model", f"{name}/b{batch}", {
            "variant": name, "label": variant.label, "runtime": variant.runtime,
            "precision": variant.precision, "setting": variant.setting, "batch": int(batch),
            "threads": bench_config.threads, "setup_s": run["setup_s"], **run["info"],
            "answers": answers, **latency_stats(samples, images_per_call=int(batch)),
            # the untimed call before each timed one: the first after another variant's turn
            "cold_p50_ms": median(run["cold_samples"][batch]) * 1000.0})
    assert_answers_ok(answers)
    assert len(run["check"]) == len(bench_model.check_images)


def test_same_weights_same_answers(request, model_runs, reference, bench_model, results):
    """All variants side by side; ORT INT8 against ORT FP32 and PyTorch eager against the ONNX
    export are asserted here, whichever per-variant test failed first."""
    record = {name: _answers(run, reference, bench_model) for name, run in model_runs.items()
              if run.get("check")}
    record["reference"] = reference.spread()
    results.put("model", "agreement", record)
    for name in ("ort-fp32", "ort-int8"):
        assert name in record, model_runs[name].get("error") or model_runs[name]
        assert_answers_ok(record[name])
    if "torch-eager" not in record:
        request.getfixturevalue("torch_available")  # skips, or fails when CI requires torch
        pytest.fail(model_runs["torch-eager"].get("error")
                    or f"PyTorch eager did not run: {model_runs['torch-eager']}")
    assert_answers_ok(record["torch-eager"])


def test_preprocessing_latency(png_224, bench_model, bench_config, results):
    """Decode + resize/crop + normalise of one 224² PNG with numpy + Pillow (services/)."""
    spec = InferenceModel(bench_model.fp32, threads=1).metadata.preprocessing
    samples = time_calls(lambda: preprocess_bytes(png_224, spec), bench_config.preprocess_rounds,
                         bench_config.warmup)
    results.put("model", "preprocessing/png224", {"variant": "preprocessing", "batch": 1,
                                                   **latency_stats(samples)})
    out = preprocess_bytes(png_224, spec)
    assert out.shape == (3, 224, 224) and out.dtype == np.float32


def test_precision_fp32_vs_int8(bench_model, bench_config, png_224, reference, results):
    """(7) File size and load time (InferenceModel: session + metadata), with the accuracy
    deltas the export measured on the held-out split (export_report.json)."""
    record: dict = {}
    for name in ("fp32", "int8"):
        path = bench_model.file(name)
        loads = []
        for _ in range(bench_config.load_repeats):
            started = time.perf_counter()
            model = InferenceModel(path, threads=bench_config.threads)
            loads.append(time.perf_counter() - started)
        problem = answer_problem(model.predict_bytes(png_224), reference, bench_model.image.name,
                                 name)
        assert problem is None, problem
        record[name] = {"size_bytes": path.stat().st_size, "load_ms_median": 1000 * median(loads),
                        "load_ms": [round(1000 * s, 2) for s in loads]}
    record["comparison"] = bench_model.report["int8"]["comparison"]
    record["int8_gate"] = bench_model.report["int8"]["gate"]
    record["synthetic_data"] = bench_model.report.get("synthetic_data")
    results.put("precision", "fp32_vs_int8", record)
