"""(4) Cold start.

In-process: a fresh Python process per run, process start → first successful prediction, for
the ONNX core and each serving target of services/targets.py (the one app with the target's
settings, the Lambda adapter's handler), each with the FP32 and the INT8 file, vs a torch
process (training checkpoint + torchvision, and frozen TorchScript as the baseline image
does). Every probe starts with the production environment (machine.production_env).
Container: `podman run` → first 200 (HTTP targets with each file, PyTorch baseline) / first
Lambda response, polling with the real prediction request.
The first prediction of every probe and container is compared with the ONNX FP32 reference.

Warm page cache: every run after the first finds the files in memory, as a restarted or
scaled-out container on the same host would. A fresh host pulling the image is slower for all.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from benchmarks.checks import answer_problem
from benchmarks.machine import production_env
from benchmarks.probe import ONNX_PROBES, REPO_ROOT, TORCH_PROBES
from benchmarks.targets import (
    CONTAINER_IDS,
    CONTAINER_VARIANTS,
    PRECISIONS,
    LambdaTarget,
    image_for,
    needs_model_dir,
    running,
    wait_first_ok,
)
from benchmarks.timing import median
from services.adapters.sagemaker import MODEL_FILE

# (probe, precision): every ONNX probe with both files, the torch probes with FP32 weights.
PROCESS_PROBES = ([(probe, precision) for probe in ONNX_PROBES for precision in PRECISIONS]
                  + [(probe, "fp32") for probe in TORCH_PROBES])


def _probe_id(probe: str, precision: str) -> str:
    return f"{probe}-{precision}" if probe in ONNX_PROBES else probe


def _probe(target: str, model: str, image: str, threads: int) -> dict:
    """Spawn one probe process; seconds from spawn to its first prediction, with its phases."""
    spawned = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.probe", target, "--model", model, "--image", image,
         "--threads", str(threads)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=production_env(),
    )
    exited = time.monotonic()
    assert done.returncode == 0, f"probe {target} failed:\n{done.stderr[-3000:]}"
    out = json.loads(done.stdout.strip().splitlines()[-1])
    marks = out["marks"]
    return {
        "first_prediction_s": marks["done_at"] - spawned,
        "interpreter_s": marks["main_at"] - spawned,
        "imports_s": marks["imported_at"] - marks["main_at"],
        "load_s": marks["loaded_at"] - marks["imported_at"],
        "first_predict_s": marks["done_at"] - marks["loaded_at"],
        "process_exit_s": exited - spawned,
        "heavy_modules": out["heavy_modules"],
        "prediction": out["prediction"],
    }


def _summarise(runs: list[dict]) -> dict:
    keys = ("first_prediction_s", "interpreter_s", "imports_s", "load_s", "first_predict_s")
    record = {f"{k}_median": median([r[k] for r in runs]) for k in keys}
    record["first_prediction_s_all"] = [round(r["first_prediction_s"], 4) for r in runs]
    record["heavy_modules"] = runs[0]["heavy_modules"]
    return record


@pytest.mark.parametrize(("target", "precision"), PROCESS_PROBES,
                         ids=[_probe_id(*p) for p in PROCESS_PROBES])
def test_process_cold_start(target, precision, request, bench_model, bench_config,
                            mounted_model_dirs, reference, results):
    if target in TORCH_PROBES:
        request.getfixturevalue("torch_available")
    if needs_model_dir(target):  # the probe resolves the file from its folder, as `serve` does
        model = mounted_model_dirs[precision] / MODEL_FILE
    else:
        model = {
            "torch-eager": lambda: bench_model.checkpoint,
            "torchscript-frozen": lambda: request.getfixturevalue("torchscript_file"),
        }.get(target, lambda: bench_model.file(precision))()
    runs = [_probe(target, str(model), str(bench_model.image), bench_config.threads)
            for _ in range(bench_config.cold_repeats)]
    problems = [answer_problem(run["prediction"], reference, bench_model.image.name, precision)
                for run in runs]
    record = {"target": target, "precision": precision, "model_file": model.name,
              "repeats": len(runs), "answer_problems": [p for p in problems if p],
              **_summarise(runs)}
    results.put("coldstart", f"process/{_probe_id(target, precision)}", record)
    assert not record["answer_problems"], record["answer_problems"]
    if target in ONNX_PROBES:
        # Serving code must never pull in torch or mlflow (the project's rule, checked here
        # because an accidental import would also wreck the numbers).
        assert not {"torch", "torchvision", "mlflow"} & set(record["heavy_modules"])


@pytest.mark.container
@pytest.mark.parametrize("variant", CONTAINER_VARIANTS, ids=CONTAINER_IDS)
def test_container_cold_start(variant, request, bench_model, bench_config, png_224,
                              mounted_model_dirs, reference, results):
    image = image_for(request, variant)
    runs, problems = [], []
    for _ in range(bench_config.cold_repeats):
        with running(variant.target, image, threads=bench_config.threads,
                     model_dir=mounted_model_dirs[variant.precision]) as target:
            seconds, reply = wait_first_ok(target, png_224)
            extra = {}
            if isinstance(target, LambdaTarget):
                runtime = target.runtime
                extra["init_s"] = runtime.next_calls[0] - target.box.started_at
            runs.append({"first_200_s": seconds, **extra})
            problems.append(answer_problem(reply.json(), reference, bench_model.image.name,
                                           variant.precision))
    record = {"target": variant.target, "precision": variant.precision, "image": image,
              "repeats": len(runs),
              "first_200_s_median": median([r["first_200_s"] for r in runs]),
              "first_200_s_all": [round(r["first_200_s"], 4) for r in runs],
              "answer_problems": [p for p in problems if p]}
    if "init_s" in runs[0]:
        record["init_s_median"] = median([r["init_s"] for r in runs])
    results.put("coldstart", f"container/{variant.key}", record)
    assert not record["answer_problems"], record["answer_problems"]
