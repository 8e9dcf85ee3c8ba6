"""The CPUs this process may use, the ONNX Runtime thread count that fits them, and the CPU
class an INT8 file needs (`mhist.quantization.cpu_class`) against the one this CPU is.

Standard library at import: gunicorn's master imports this (through services/web/settings.py)
before forking, and numpy there would start native threads. `cpu_info` imports numpy lazily.

CPU features are read from CPUID, the way onnxruntime picks its kernels, through numpy's
runtime dispatch table: /proc/cpuinfo shows the host's flags even under emulation
(`qemu-x86_64 -cpu Haswell`), CPUID shows the emulated CPU's.
"""

from __future__ import annotations

import argparse
import os
import platform
from dataclasses import dataclass
from functools import lru_cache

# u8 activations × s8 weights. Without a dot-product instruction (AVX2, AVX-512 without VNNI)
# onnxruntime multiplies with vpmaddubsw, which adds pairs of products into saturating 16-bit
# lanes: full-range weights clip there, 7-bit weights (reduce_range) do not. onnxruntime's
# quantization docs: reduce_range "is designed for the U8S8 format on AVX2 and AVX512 (non-VNNI)
# machines to mitigate saturation issues. This is not needed on machines supporting VNNI".
# Arm: the docs see no accuracy difference for U8S8 on ARM64; we ask for the dot product
# (asimddp, every Graviton since Graviton2) as the class's name promises speed too.
VNNI_FEATURES = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp")


@dataclass(frozen=True)
class CpuClass:
    name: str
    reduce_range: bool  # 7-bit weights
    requires_any: tuple[str, ...]  # one of these features (Linux /proc/cpuinfo names); () = none
    doc: str


CPU_CLASSES = {
    "portable": CpuClass(
        "portable",
        True,
        (),
        "u8 activations × s8 weights with reduce_range (7-bit weights): the same answers on "
        "every CPU, AVX2-only ones included",
    ),
    "vnni": CpuClass(
        "vnni",
        False,
        VNNI_FEATURES,
        "u8 × s8 with full 8-bit weights: closer to FP32, for x86 with AVX-512 VNNI, AVX-VNNI "
        "or AMX and Arm with the dot product; on AVX2-only CPUs its sums saturate",
    ),
}
DEFAULT_CLASS = "portable"
# The CPU_CLASS setting: `auto` reads CPUID; a class name says what to take this CPU for.
CLASS_SETTING_VALUES = ("auto", *CPU_CLASSES)

# numpy's names (numpy/_core/src/common/npy_cpu_features.h) → Linux's /proc/cpuinfo names, for
# the features onnxruntime's kernels (MLAS) dispatch on. numpy names no AVX-VNNI or AMX: a CPU
# with AVX-VNNI but not AVX-512 VNNI (Intel client cores since Alder Lake) reads as portable,
# the safe side; CPU_CLASS=vnni says otherwise.
_FEATURE_NAMES = {
    "SSE41": "sse4_1",
    "SSE42": "sse4_2",
    "AVX": "avx",
    "FMA3": "fma",
    "AVX2": "avx2",
    "AVX512F": "avx512f",
    "AVX512BW": "avx512bw",
    "AVX512VL": "avx512vl",
    "AVX512VNNI": "avx512_vnni",
    "AVX512BF16": "avx512_bf16",
    "AVX512FP16": "avx512_fp16",
    "ASIMD": "asimd",
    "ASIMDHP": "asimdhp",
    "ASIMDDP": "asimddp",
    "ASIMDFHM": "asimdfhm",
    "SVE": "sve",
}


class CpuClassError(ValueError):
    """A file's CPU class is unknown, or needs features this CPU lacks; one line for people."""


def usable_cpus() -> int:
    """CPUs this process may run on: honours cpusets (`--cpuset-cpus`), unlike os.cpu_count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def default_threads(workers: int = 1) -> int:
    """ORT intra-op threads so that workers × threads ≤ usable CPUs (ORT sizes its pool from
    the host's cores, not from a container's CPU quota)."""
    return max(1, usable_cpus() // max(1, workers))


@dataclass(frozen=True)
class CpuInfo:
    """This CPU as onnxruntime's kernels see it. `error` set: the features could not be read."""

    arch: str
    features: tuple[str, ...]
    error: str | None = None
    source: str = "cpuid (numpy's runtime dispatch table)"

    @property
    def cpu_class(self) -> str | None:
        """The best class this CPU serves correctly; None when its features are unknown."""
        if self.error:
            return None
        return "vnni" if set(VNNI_FEATURES) & set(self.features) else "portable"

    def to_dict(self) -> dict:
        out = {
            "arch": self.arch,
            "class": self.cpu_class,
            "features": list(self.features),
            "source": self.source,
        }
        return {**out, "error": self.error} if self.error else out


def read_features(table: dict[str, bool] | None) -> CpuInfo:
    """CpuInfo from numpy's feature table (name → present); `table` None or empty: unreadable."""
    arch = platform.machine() or "unknown"
    if not table:
        return CpuInfo(arch, (), error="numpy's CPU feature table is empty or missing")
    present = tuple(name for key, name in _FEATURE_NAMES.items() if table.get(key))
    return CpuInfo(arch, present)


@lru_cache(maxsize=1)
def cpu_info() -> CpuInfo:
    """This CPU, read once per process (CPUID does not change while it runs)."""
    try:  # numpy ≥ 2 keeps it in _core, numpy 1 in core
        from numpy._core._multiarray_umath import __cpu_features__ as table
    except ImportError:
        try:
            from numpy.core._multiarray_umath import __cpu_features__ as table
        except ImportError as exc:
            return CpuInfo(
                platform.machine() or "unknown",
                (),
                error=f"numpy's CPU feature table cannot be imported ({exc})",
            )
    return read_features(dict(table))


def model_cpu_class(quantization: dict) -> str | None:
    """The class a file's `mhist.quantization` asks for; None for FP32 (no quantization).
    Files from before classes existed: full-range u8×s8 is `vnni`, reduce_range `portable`.
    CpuClassError for a class this server does not know."""
    if not quantization:
        return None
    name = quantization.get("cpu_class")
    if name is None:
        return DEFAULT_CLASS if quantization.get("reduce_range", True) else "vnni"
    if name not in CPU_CLASSES:
        raise CpuClassError(
            f"mhist.quantization.cpu_class {name!r} is not a CPU class this server knows "
            f"({', '.join(CPU_CLASSES)}); export the file again with --cpu-class, or update "
            "the server"
        )
    return name


def check_cpu_class(
    quantization: dict, claimed: str = "auto", info: CpuInfo | None = None
) -> str | None:
    """CpuClassError when the file's class needs features this CPU lacks, or when they cannot
    be read and the file needs any; else the file's class (None for FP32).

    `claimed` is the CPU_CLASS setting: `auto` judges by CPUID; a class name is what the
    operator says this CPU is, instead of CPUID."""
    needed = model_cpu_class(quantization)
    if needed is None or not CPU_CLASSES[needed].requires_any:
        return needed
    if claimed != "auto":
        if claimed == needed or CPU_CLASSES[claimed].requires_any:
            return needed
        raise CpuClassError(
            f"the file is INT8 for CPU class {needed!r} but CPU_CLASS={claimed} says this CPU "
            f"is {claimed!r}: serve an INT8 file exported with --cpu-class {claimed}, or unset "
            "CPU_CLASS to judge by CPUID"
        )
    info = info or cpu_info()
    needs = " or ".join(CPU_CLASSES[needed].requires_any)
    if info.error:
        raise CpuClassError(
            f"the file is INT8 for CPU class {needed!r} (needs {needs}), and this CPU's "
            f"features cannot be read: {info.error}. Set CPU_CLASS=vnni if this CPU has them, "
            "or serve the portable INT8 file (export --cpu-class portable)"
        )
    if info.cpu_class != needed:
        raise CpuClassError(
            f"the file is INT8 for CPU class {needed!r} (needs {needs}) but this {info.arch} "
            f"CPU has only {' '.join(info.features) or 'none of the features'} (CPUID): its "
            "u8×s8 sums would saturate and the answers drift from FP32 without an error. "
            "Serve the portable INT8 file (export --cpu-class portable) or FP32, or set "
            "CPU_CLASS=vnni if CPUID is wrong about this CPU"
        )
    return needed


def add_cpu_class_argument(parser: argparse.ArgumentParser) -> None:
    """`--cpu-class` for the command lines: the server's CPU_CLASS setting, as an argument."""
    parser.add_argument(
        "--cpu-class", choices=CLASS_SETTING_VALUES, default="auto",
        help="what to take this CPU for: auto reads CPUID; an INT8 file made for a class this "
        "CPU is not (a vnni file on an AVX2-only CPU) is refused, as the server refuses it",
    )
