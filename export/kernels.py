"""Judge an INT8 file on the kernels it will meet.

The export machine's own kernels judge every file. A `portable` file must also be right on
AVX2-only CPUs, whose u8×s8 kernels (vpmaddubsw, saturating 16-bit sums) differ from a VNNI
machine's: where the export machine has VNNI, a few validation images also run under
`qemu-x86_64 -cpu Haswell` (Debian's `qemu-user`), where onnxruntime sees an AVX2 CPU in CPUID
and takes its AVX2 kernels. Emulation is for correctness, never for timing: INT8 costs about
2-3 s an image at 224 px there.

The emulated side is this module run as a program (`python -m export.kernels MODEL BATCH OUT
--input NAME --output NAME`): numpy and onnxruntime only, as serving imports them, so it starts
in about 2 s under emulation.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from services.core.cpus import CpuInfo, cpu_info

QEMU = "qemu-x86_64"
EMULATED_CPU = "Haswell"  # AVX2 + FMA, no AVX-512: the kernels of c6a and Lambda x86_64
REPO_ROOT = Path(__file__).resolve().parents[1]
# qemu's TCG cannot emulate a few of Haswell's system features; they do not matter here.
_QEMU_NOISE = "qemu-x86_64: warning: TCG doesn't support requested feature"


class EmulationError(RuntimeError):
    """The emulated run could not be made (qemu missing, or the program failed)."""


def kernels(info: CpuInfo, where: str = "native") -> dict:
    """What the report says a gate saw: where it ran, the CPU class and the features."""
    return {
        "where": where,
        "cpu_class": info.cpu_class,
        "arch": info.arch,
        "features": list(info.features),
    }


def needs_avx2_gate(cpu_class: str, info: CpuInfo) -> bool:
    """A portable file judged on VNNI kernels only has not met the kernels it promises."""
    return cpu_class == "portable" and info.arch in ("x86_64", "AMD64") and info.cpu_class == "vnni"


def emulated_logits(
    model: Path, batch: np.ndarray, input_name: str, output_name: str, timeout: float
) -> tuple[np.ndarray, CpuInfo, float]:
    """(N, C) logits of `model` on `batch` under AVX2 kernels, the CpuInfo the emulated
    process read from CPUID, and the seconds it took. EmulationError when it cannot run."""
    qemu = shutil.which(QEMU)
    if qemu is None:
        raise EmulationError(
            f"{QEMU} not found (Debian: apt-get install qemu-user; `make test-deps` installs it)"
        )
    # The real interpreter, not the venv's symlink: under qemu the venv is found through
    # PYTHONPATH instead (../shared/FIELD-NOTES.md).
    python = os.path.realpath(sys.executable)
    path = os.pathsep.join([str(REPO_ROOT), *(p for p in sys.path if p and Path(p).is_dir())])
    with tempfile.TemporaryDirectory() as tmp:
        batch_path, out_path = Path(tmp) / "batch.npy", Path(tmp) / "out.npz"
        np.save(batch_path, batch)
        started = time.perf_counter()
        try:
            result = subprocess.run(
                [
                    qemu,
                    "-cpu",
                    EMULATED_CPU,
                    python,
                    "-m",
                    "export.kernels",
                    str(model),
                    str(batch_path),
                    str(out_path),
                    "--input",
                    input_name,
                    "--output",
                    output_name,
                ],
                capture_output=True,
                text=True,
                timeout=timeout,
                cwd=REPO_ROOT,
                env={**os.environ, "PYTHONPATH": path},
            )
        except subprocess.TimeoutExpired:
            raise EmulationError(f"the emulated run took over {timeout:.0f} s") from None
        seconds = time.perf_counter() - started
        if result.returncode != 0:
            tail = "\n".join(
                line for line in result.stderr.splitlines() if not line.startswith(_QEMU_NOISE)
            )[-2000:]
            raise EmulationError(f"the emulated run exited {result.returncode}: {tail}")
        with np.load(out_path) as out:
            logits = out["logits"]
            seen = json.loads(str(out["cpu"]))
    info = CpuInfo(seen["arch"], tuple(seen["features"]), seen.get("error"))
    return logits, info, seconds


def compare(
    p32: np.ndarray, p8: np.ndarray, labels: np.ndarray, threshold: float, positive: int, split: str
) -> dict:
    """FP32 vs INT8 probabilities in the shape export/evaluate.accuracy_gate judges."""
    from training.metrics import binary_metrics  # scikit-learn: not under emulation

    m32 = binary_metrics(labels, p32[:, positive], threshold)
    m8 = binary_metrics(labels, p8[:, positive], threshold)
    same = (p32[:, positive] >= threshold) == (p8[:, positive] >= threshold)
    diff = np.abs(p32[:, positive] - p8[:, positive])
    return {
        "split": split,
        "images": len(labels),
        "fp32": {"accuracy": m32["accuracy"]},
        "int8": {"accuracy": m8["accuracy"]},
        "accuracy_drop_pp": 100.0 * (m32["accuracy"] - m8["accuracy"]),
        "top1_agreement": float(same.mean()),
        "mean_abs_positive_diff": float(diff.mean()),
        "max_abs_positive_diff": float(diff.max()),
    }


def _run(argv: list[str] | None = None) -> int:
    """The emulated side: one session, logits and the CPUID it saw into an .npz."""
    import onnxruntime as ort

    p = argparse.ArgumentParser(description="run MODEL on BATCH.npy, write OUT.npz")
    p.add_argument("model")
    p.add_argument("batch")
    p.add_argument("out")
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    args = p.parse_args(argv)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2  # each thread is one emulated CPU of the host's
    session = ort.InferenceSession(args.model, options, providers=["CPUExecutionProvider"])
    batch = np.load(args.batch)
    logits = np.concatenate(
        [
            session.run([args.output], {args.input: batch[i : i + 8]})[0]
            for i in range(0, len(batch), 8)
        ]
    )
    info = cpu_info()
    seen = {"arch": info.arch, "features": list(info.features), "error": info.error}
    np.savez(args.out, logits=logits, cpu=np.array(json.dumps(seen)))
    return 0


if __name__ == "__main__":
    sys.exit(_run())
