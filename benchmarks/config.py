"""How much to measure: quick (CI smoke) or full (reports), and what to skip.

    MHIST_BENCH_MODE=quick|full          (or pytest --bench-mode)
    MHIST_BENCH_SKIP=torch-image,mlflow-peer   (or pytest --bench-skip; comma-separated)
    MHIST_BENCH_ALLOW_BUSY=1             (full mode: run even when the machine is busy at start;
                                          the report flags it either way)
    MHIST_BENCH_THREADS=N                (intra-op threads for torch and ORT; default all CPUs)
    MHIST_BENCH_RESULTS=DIR              (default benchmarks/results)
    MHIST_BENCH_CACHE=DIR                (keep/reuse the trained + exported benchmark model)
    MHIST_BENCH_PUBLISH=0                (full mode: do not publish the run as its CPU class's
                                          benchmarks/LATEST.<class>.md and README.md's block)
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from services.core.cpus import default_threads

MODES = ("quick", "full")
# What a user may skip, and what each name covers.
SKIPPABLE = {
    "torch-image": "the PyTorch baseline container image (build, latency, cold start, size)",
    "mlflow-peer": "`mlflow models serve` of the registered PyTorch model and of the ONNX file",
    "torch-compile": "PyTorch's `torch.compile` (inductor) FP32 variant (needs a C++ compiler; "
                     "about a minute of compiling on a small machine)",
    "torch-int8": "PyTorch's own INT8 (PT2E + x86 quantizer + torch.compile: minutes of "
                  "compiling on a small machine)",
    "torch": "everything that needs torch on the host (PyTorch model-only variants, torch cold "
             "start, baseline image, MLflow PyTorch peer)",
}
RESULTS_ROOT = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class ServerSetting:
    """One gunicorn layout for the Flask container: processes × ORT threads (× gthreads)."""

    workers: int
    ort_threads: int
    gunicorn_threads: int = 1

    @property
    def ident(self) -> str:
        """ASCII form for test ids: 2w-1ort, 1w2t-1ort."""
        threads = f"{self.gunicorn_threads}t" if self.gunicorn_threads > 1 else ""
        return f"{self.workers}w{threads}-{self.ort_threads}ort"

    @property
    def label(self) -> str:
        worker = f"{self.workers}w" + (f"×{self.gunicorn_threads}t" if self.gunicorn_threads > 1
                                       else "")
        return f"{worker}×{self.ort_threads}ort"

    def env(self) -> dict[str, str]:
        return {"WEB_CONCURRENCY": str(self.workers),
                "GUNICORN_THREADS": str(self.gunicorn_threads),
                "ORT_INTRA_OP_THREADS": str(self.ort_threads)}


@dataclass(frozen=True)
class BenchConfig:
    mode: str
    threads: int  # torch.set_num_threads == ORT intra_op_num_threads
    skip: frozenset[str]
    results_root: Path
    cache_dir: Path | None
    # training the benchmark's model (real pipeline, SYNTHETIC data)
    train_images: int
    train_epochs: int
    image_size: int
    # images every variant answers, compared with the ONNX FP32 reference (benchmarks.checks)
    check_images: int  # model-only variants and cold starts
    http_check_images: int  # each container and host server, before it is timed
    # iteration counts
    model_batches: tuple[int, ...]
    warmup: int
    model_rounds: int
    preprocess_rounds: int
    http_requests: int
    # wrk's time per concurrency level, and the in-process ceiling's time per call
    throughput_seconds: float
    concurrency: tuple[int, ...]
    server_settings: tuple[ServerSetting, ...]
    cold_repeats: int
    peer_requests: int
    load_repeats: int
    extra: dict = field(default_factory=dict)

    @property
    def quick(self) -> bool:
        return self.mode == "quick"

    def skipped(self, name: str) -> bool:
        return name in self.skip or ("torch" in self.skip and name in (
            "torch-image", "torch-compile", "torch-int8"))

    def to_dict(self) -> dict:
        data = asdict(self)
        data["skip"] = sorted(self.skip)
        data["results_root"] = str(self.results_root)
        data["cache_dir"] = str(self.cache_dir) if self.cache_dir else None
        data["server_settings"] = [s.label for s in self.server_settings]
        return data


def parse_skip(raw: str | None) -> frozenset[str]:
    names = frozenset(part.strip() for part in (raw or "").split(",") if part.strip())
    unknown = names - set(SKIPPABLE)
    if unknown:
        raise ValueError(f"unknown benchmark skip name(s) {sorted(unknown)}; "
                         f"known: {', '.join(SKIPPABLE)}")
    return names


def load_config(mode: str | None = None, skip: str | None = None) -> BenchConfig:
    """Options win over the environment; the environment over the defaults."""
    mode = (mode or os.environ.get("MHIST_BENCH_MODE") or "quick").strip().lower()
    if mode not in MODES:
        raise ValueError(f"MHIST_BENCH_MODE={mode!r}: expected one of {', '.join(MODES)}")
    cpus = default_threads(1)
    threads = int(os.environ.get("MHIST_BENCH_THREADS") or cpus)
    half = max(1, cpus // 2)
    # Both layouts fill the CPUs exactly (workers × ORT threads = CPUs): what differs is
    # processes vs intra-op threads, which is the question the default has to answer.
    settings = [ServerSetting(1, cpus), ServerSetting(cpus, 1)]
    if cpus >= 4:
        settings.append(ServerSetting(half, 2))
    if mode == "full":
        settings.append(ServerSetting(1, 1, gunicorn_threads=cpus))
    cache = os.environ.get("MHIST_BENCH_CACHE")
    common = dict(
        mode=mode,
        threads=threads,
        skip=parse_skip(skip if skip is not None else os.environ.get("MHIST_BENCH_SKIP")),
        results_root=Path(os.environ.get("MHIST_BENCH_RESULTS") or RESULTS_ROOT),
        cache_dir=Path(cache) if cache else None,
        train_epochs=1,
        image_size=224,
        concurrency=(1, 2, 4, 8),
        server_settings=tuple(dict.fromkeys(settings)),
    )
    if mode == "quick":
        # Batch 1 only: torch.compile (the PT2E INT8 variant) compiles once per batch size.
        return BenchConfig(**common, train_images=160, check_images=8, http_check_images=4,
                           model_batches=(1,), warmup=2, model_rounds=15,
                           preprocess_rounds=30, http_requests=15, throughput_seconds=2.0,
                           cold_repeats=1, peer_requests=5, load_repeats=2)
    return BenchConfig(**common, train_images=240, check_images=32, http_check_images=8,
                       model_batches=(1, 8), warmup=5, model_rounds=100,
                       preprocess_rounds=200, http_requests=100, throughput_seconds=8.0,
                       cold_repeats=3, peer_requests=30, load_repeats=5)
