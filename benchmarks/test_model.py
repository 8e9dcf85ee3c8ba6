"""(1) Model only — PyTorch eager vs ORT FP32 vs ORT INT8, batch 1 and 8, same weights — plus
the numpy + Pillow preprocessing alone, and (7) FP32 vs INT8 file size, load time, accuracy.

Timed with pytest-benchmark (`benchmark.pedantic`, fixed rounds so quick mode stays quick); its
raw per-round timings become our p50/p95/p99. torch.set_num_threads and ORT's intra-op threads
are the same number (BenchConfig.threads), stated in the summary.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from benchmarks.checks import assert_valid_prediction, assert_valid_probabilities
from benchmarks.timing import latency_stats, median, time_calls
from services.model import InferenceModel, softmax
from services.preprocessing import preprocess_bytes

BATCHES = (1, 8)
VARIANTS = ("torch-eager", "ort-fp32", "ort-int8")


@pytest.fixture(scope="module")
def inputs(bench_model) -> dict[int, np.ndarray]:
    """Preprocessed held-out images, (B, 3, 224, 224) float32 per batch size."""
    spec = InferenceModel(bench_model.fp32, threads=1).metadata.preprocessing
    paths = sorted(bench_model.data_dir.joinpath("images").glob("*.png"))[: max(BATCHES)]
    stacked = np.stack([preprocess_bytes(p.read_bytes(), spec) for p in paths])
    return {b: np.ascontiguousarray(stacked[:b]) for b in BATCHES}


@pytest.fixture(scope="module")
def runners(request, bench_model, bench_config):
    """variant → callable(batch) -> logits, each built once with the same thread count."""
    made: dict = {}

    def get(variant: str):
        if variant in made:
            return made[variant]
        if variant == "torch-eager":
            request.getfixturevalue("torch_available")
            import torch

            from training.checkpoint import load_checkpoint

            torch.set_num_threads(bench_config.threads)
            model, _ = load_checkpoint(bench_model.checkpoint)

            def run(batch: np.ndarray) -> np.ndarray:
                with torch.inference_mode():
                    return model(torch.from_numpy(batch)).numpy()
        else:
            path = bench_model.fp32 if variant == "ort-fp32" else bench_model.int8
            model = InferenceModel(path, threads=bench_config.threads)
            meta = model.metadata

            def run(batch: np.ndarray) -> np.ndarray:
                return model.session.run([meta.output_name], {meta.input_name: batch})[0]
        made[variant] = run
        return run

    return get


def _stats_from(benchmark, fallback, results=None, key: str = "") -> list[float]:
    """pytest-benchmark's per-round seconds (its own summary goes to the `pytest_benchmark`
    section); our own loop when it is disabled (--benchmark-disable) and recorded nothing."""
    stats = getattr(getattr(benchmark, "stats", None), "stats", None)
    data = getattr(stats, "data", None)
    if not data:
        return fallback()
    if results is not None:
        results.put("pytest_benchmark", key, {
            "group": benchmark.group, "extra_info": dict(benchmark.extra_info),
            **{field: getattr(stats, field) for field in stats.fields}})
    return list(data)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_model_latency(variant, batch, benchmark, runners, inputs, bench_config, bench_model,
                       results):
    run = runners(variant)
    x = inputs[batch]
    benchmark.group = f"model batch {batch}"
    benchmark.extra_info.update(variant=variant, batch=batch, threads=bench_config.threads)
    logits = benchmark.pedantic(run, args=(x,), rounds=bench_config.model_rounds,
                                warmup_rounds=bench_config.warmup, iterations=1)
    samples = _stats_from(benchmark, lambda: time_calls(lambda: run(x), bench_config.model_rounds),
                          results, f"{variant}/b{batch}")
    record = {"variant": variant, "batch": batch, "threads": bench_config.threads,
              **latency_stats(samples, images_per_call=batch)}
    if variant == "torch-eager":
        import torch

        record["torch_threads"] = torch.get_num_threads()
    results.put("model", f"{variant}/b{batch}", record)
    assert_valid_probabilities(softmax(logits), batch, len(bench_model.classes))


def test_same_weights_same_answers(runners, inputs, results, request):
    """The three variants are the same model: FP32 matches torch; INT8 mostly agrees."""
    x = inputs[max(BATCHES)]
    ort_fp32 = softmax(runners("ort-fp32")(x))
    ort_int8 = softmax(runners("ort-int8")(x))
    record = {"int8_vs_fp32_max_abs_diff": float(np.abs(ort_int8 - ort_fp32).max()),
              "int8_vs_fp32_argmax_agreement": float((ort_int8.argmax(1)
                                                      == ort_fp32.argmax(1)).mean())}
    try:
        request.getfixturevalue("torch_available")
    except pytest.skip.Exception:
        results.put("model", "agreement", record)
        return
    torch_probs = softmax(runners("torch-eager")(x))
    record["fp32_vs_torch_max_abs_diff"] = float(np.abs(ort_fp32 - torch_probs).max())
    results.put("model", "agreement", record)
    # The export's own parity gate is 1e-4; this is a sanity check on the same inputs.
    assert record["fp32_vs_torch_max_abs_diff"] < 1e-3


def test_preprocessing_latency(benchmark, png_224, bench_model, bench_config, results):
    """Decode + resize/crop + normalise of one 224² PNG with numpy + Pillow (services/)."""
    spec = InferenceModel(bench_model.fp32, threads=1).metadata.preprocessing
    benchmark.group = "preprocessing"
    out = benchmark.pedantic(preprocess_bytes, args=(png_224, spec),
                             rounds=bench_config.preprocess_rounds,
                             warmup_rounds=bench_config.warmup, iterations=1)
    samples = _stats_from(benchmark, lambda: time_calls(lambda: preprocess_bytes(png_224, spec),
                                                        bench_config.preprocess_rounds),
                          results, "preprocessing/png224")
    results.put("model", "preprocessing/png224", {"variant": "preprocessing", "batch": 1,
                                                   **latency_stats(samples)})
    assert out.shape == (3, 224, 224) and out.dtype == np.float32


def test_precision_fp32_vs_int8(bench_model, bench_config, png_224, results):
    """(7) File size and load time (InferenceModel: session + metadata), with the accuracy
    deltas the export measured on the held-out split (export_report.json)."""
    record: dict = {}
    for name, path in (("fp32", bench_model.fp32), ("int8", bench_model.int8)):
        loads = []
        for _ in range(bench_config.load_repeats):
            started = time.perf_counter()
            model = InferenceModel(path, threads=bench_config.threads)
            loads.append(time.perf_counter() - started)
        assert_valid_prediction(model.predict_bytes(png_224), bench_model.classes)
        record[name] = {"size_bytes": path.stat().st_size, "load_ms_median": 1000 * median(loads),
                        "load_ms": [round(1000 * s, 2) for s in loads]}
    comparison = bench_model.report["int8"]["comparison"]
    record["comparison"] = comparison
    record["int8_gate"] = bench_model.report["int8"]["gate"]
    record["synthetic_data"] = bench_model.report.get("synthetic_data")
    results.put("precision", "fp32_vs_int8", record)
