"""The machine a run measured: CPU model, cores, SIMD flags that matter for INT8, versions,
how busy it was, and the environment every measured process gets.

Versions come from package metadata, not imports: importing torch to print its version would
cost seconds and load libraries into the benchmark process.
"""

from __future__ import annotations

import os
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path

from services.core.cpus import usable_cpus

REPO_ROOT = Path(__file__).resolve().parents[1]
# Flags that decide how fast INT8 (u8×s8 dot products) runs: VNNI on x86, dot product on ARM.
INT8_FLAGS = {
    "avx2": "AVX2",
    "avx512f": "AVX-512F",
    "avx512_vnni": "AVX-512 VNNI",
    "avx_vnni": "AVX-VNNI",
    "amx_int8": "AMX-INT8",
    "asimddp": "ARM dot product",
    "i8mm": "ARM i8mm",
}
PACKAGES = ("torch", "torchao", "onnxruntime", "onnx", "numpy", "pillow", "flask", "gunicorn",
            "mlflow")


def _cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "flags", "features", "cpu model") and key not in info:
            info[key] = value.strip()
    return info


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _engine_version() -> str | None:
    try:
        from awsdeploy.container_engine import EngineUnavailable, engine

        tool = engine()
    except (ImportError, EngineUnavailable):
        return None
    try:
        out = subprocess.run([tool, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except (OSError, ValueError):
        return None
    return None


# Threading variables no deployment of ours sets (the images set none of them); a shell or a
# test harness may. Every process a benchmark times runs without them, so each runtime keeps
# its own defaults: OMP_WAIT_POLICY=PASSIVE alone slowed torch by ~40 % on a 2-CPU machine.
THREADING_PREFIXES = ("OMP_", "GOMP_", "KMP_", "MKL_", "OPENBLAS_")
# A run is "busy" when the 1-minute load average at its start is above this share of the
# usable CPUs: other jobs then take CPU time from every row.
BUSY_LOAD_PER_CPU = 0.5


def load_average() -> list[float] | None:
    """1/5/15-minute load averages, or None where the OS has none."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def busy(load: list[float] | None, cpus: int) -> bool:
    """Whether a 1-minute load average says other jobs were running (see BUSY_LOAD_PER_CPU)."""
    return bool(load) and load[0] > BUSY_LOAD_PER_CPU * cpus


def settle(cpus: int, limit_s: float = 150.0, poll_s: float = 2.0) -> float:
    """Wait until the 1-minute load average is no longer busy (at most `limit_s`); the seconds
    waited. The load average trails the CPU use of the last minute, including this run's own
    previous section (a slide being written, containers being stopped): a section that wants
    to start, and be reported, on an idle machine waits for it to decay."""
    started = time.monotonic()
    while busy(load_average(), cpus) and time.monotonic() - started < limit_s:
        time.sleep(poll_s)
    return time.monotonic() - started


def refusal(mode: str, load: list[float] | None, cpus: int,
            environ: dict[str, str] | None = None) -> str | None:
    """Why a run must not start (a full run on a busy machine, unless MHIST_BENCH_ALLOW_BUSY=1),
    or None. Quick runs (CI) only get flagged in their report."""
    environ = os.environ if environ is None else environ
    if mode != "full" or not busy(load, cpus) or environ.get("MHIST_BENCH_ALLOW_BUSY") == "1":
        return None
    return (f"benchmarks: refusing a full run on a busy machine (1-min load {load[0]} > "
            f"{BUSY_LOAD_PER_CPU} × {cpus} CPUs): other jobs would slow every row. Wait for "
            "the machine to be idle, or set MHIST_BENCH_ALLOW_BUSY=1 to run anyway (the report "
            "flags it).")


def production_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without THREADING_PREFIXES variables, with the repository
    first on PYTHONPATH, plus `extra`: what a timed subprocess (model variant, cold-start
    probe, host server) starts with."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(THREADING_PREFIXES)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(REPO_ROOT), env.get("PYTHONPATH"))))
    return {**env, **(extra or {})}


def stripped_threading_env() -> dict[str, str]:
    """The threading variables production_env() removes from this process's environment."""
    return {k: v for k, v in os.environ.items() if k.startswith(THREADING_PREFIXES)}


def describe_machine() -> dict:
    info = _cpuinfo()
    flags = set((info.get("flags") or info.get("features") or "").split())
    usable = usable_cpus()
    present = {name: (flag in flags) for flag, name in INT8_FLAGS.items()}
    vnni = any(flag in flags for flag in ("avx512_vnni", "avx_vnni", "amx_int8"))
    return {
        "cpu_model": info.get("model name") or info.get("cpu model") or platform.processor()
        or "unknown",
        "architecture": platform.machine(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "memory_gib": _memory_gib(),
        "flags": present,
        "int8_fast_path": vnni or "asimddp" in flags,
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": {name: _version(name) for name in PACKAGES},
        "container_engine": _engine_version(),
    }
