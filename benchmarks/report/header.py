"""The report's opening: the machine, the run's settings and load, what was skipped."""

from __future__ import annotations

from benchmarks.machine import BUSY_LOAD_PER_CPU, busy
from benchmarks.report.records import Machine, Results, Run
from benchmarks.report.text import precision_name


def busy_line(run: Run, machine: Machine) -> str:
    load = run.load_at_start
    cpus = machine.usable_cpus or 1
    limit = BUSY_LOAD_PER_CPU * cpus
    if load is None:
        return "- **Load**: no load average on this OS; the run was not checked for being busy."
    if busy(load, cpus):
        return (f"- **BUSY MACHINE**: 1-min load {load[0]} at start > {BUSY_LOAD_PER_CPU} × "
                f"{cpus} CPUs = {limit:g}. Other jobs took CPU time during this run: its figures "
                "are not comparable with a run on an idle machine, and ratios between rows "
                "measured at different times are not either.")
    return (f"- **Load**: 1-min load {load[0]} at start ≤ {BUSY_LOAD_PER_CPU} × {cpus} CPUs = "
            f"{limit:g}: not flagged as busy.")


def _machine_lines(run: Run, machine: Machine) -> list[str]:
    flags = ", ".join(f"{name} {'yes' if on else 'no'}" for name, on in machine.flags.items())
    versions = ", ".join(f"{k} {v}" for k, v in machine.versions.items() if v)
    lines = [
        f"- **Machine**: {machine.cpu_model} ({machine.architecture}), "
        f"{machine.usable_cpus} usable / {machine.logical_cpus} logical CPUs, "
        f"{machine.memory_gib} GiB RAM; {machine.os}",
        f"- **CPU flags**: {flags}",
        f"- **Versions (host)**: Python {machine.python}; {versions}; "
        f"{machine.container_engine or 'no container engine'}",
    ]
    if run.baseline_torch:
        host = machine.versions.get("torch")
        same = run.baseline_torch.split("+")[0] == (host or "").split("+")[0]
        lines.append(f"- **PyTorch baseline image**: torch {run.baseline_torch} "
                     f"({'the same version as' if same else 'not the version of'} the host's "
                     f"torch {host}, which runs the model-only and process rows)")
    return lines


def _method_lines(run: Run) -> list[str]:
    stripped = run.threading_env_stripped
    return [
        f"- **Threads**: torch.set_num_threads = ORT intra_op_num_threads = {run.threads}"
        " (ORT inter-op 1, sequential execution) unless a row says otherwise",
        "- **Environment**: every timed process starts without OMP_\\*, GOMP_\\*, KMP_\\*, "
        "MKL_\\* and OPENBLAS_\\* variables, as in the images: "
        + (f"this run removed {', '.join(f'{k}={v}' for k, v in stripped.items())}"
           if stripped else "none were set in this run's environment"),
        f"- **HTTP client**: {run.http_connection_policy}",
        "- **Answers**: every variant's answers on the check images are compared with the ONNX "
        "FP32 file's, run by services.core.model: each probability within "
        + ", ".join(f"{v:g} ({precision_name(k)})" for k, v in run.tolerances.items())
        + ", and the same label wherever the reference's probability is further than that from "
        "the threshold. A wrong answer fails the benchmark.",
        f"- **Model**: ResNet18, 2 classes, from the real pipeline (training/train.py → "
        f"export/to_onnx.py): 1 epoch, 224 px, `--weights none`, "
        f"{run.train_images} SYNTHETIC images; {run.model_uri}.",
    ]


def _run_lines(run: Run, machine: Machine) -> list[str]:
    lines = [
        f"- **Run**: {run.duration_s} s in all"
        + (f", of which training + export {run.pipeline_s} s" if run.pipeline_s else "")
        + (f"; image builds (s): {run.image_builds}" if run.image_builds else ""),
        f"- **Load average** (1/5/15 min) at start {run.load_at_start}, at end "
        f"{run.load_at_end} (the end includes this run's own processes)",
        busy_line(run, machine),
    ]
    if run.mode == "quick":
        lines.append("- **Quick mode** (CI smoke): few samples, so p95/p99 sit near the "
                     "maximum of `n` samples; run `MHIST_BENCH_MODE=full pytest benchmarks` "
                     "for report numbers.")
    return lines


def header(results: Results) -> str:
    run, machine = results.run, results.machine
    return "\n".join([
        f"# MHIST benchmarks — {run.stamp} ({run.mode} mode)", "",
        *_machine_lines(run, machine), *_method_lines(run), *_run_lines(run, machine),
        "", "> Client and server share this machine's CPUs in the HTTP, throughput and peer "
        "runs: the load generator's own CPU time is part of every number there."])


def _last_line(message: str) -> str:
    lines = [line for line in (message or "").splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def skips(run: Run) -> str:
    parts = []
    if run.skipped:
        parts.append("## Skipped\n")
        parts += [f"- `{s.what}` — {s.reason}" for s in run.skipped]
    if run.failed:
        parts.append("\n## Failed\n")
        parts += [f"- `{f.what}` — {_last_line(f.reason)}" for f in run.failed]
    return "\n".join(parts) if parts else "Nothing was skipped, nothing failed."
