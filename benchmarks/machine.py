"""The machine a run measured: CPU model, cores, SIMD flags that matter for INT8, versions.

Versions come from package metadata, not imports: importing torch to print its version would
cost seconds and load libraries into the benchmark process.
"""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

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
PACKAGES = ("torch", "onnxruntime", "onnx", "numpy", "pillow", "flask", "gunicorn", "mlflow",
            "pytest-benchmark")


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
        from awsdeploy.containers import EngineUnavailable, engine

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


def describe_machine() -> dict:
    info = _cpuinfo()
    flags = set((info.get("flags") or info.get("features") or "").split())
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
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
