"""Summary and plots from a results folder's raw JSON — rerunnable at any time:

    python -m benchmarks.report benchmarks/results/<timestamp>

writes <folder>/summary.md (Markdown tables with ratios, the machine, what was skipped and
why) and <folder>/plots/*.png (latency distributions, throughput vs concurrency, cold start
and size bars). Nothing here measures anything.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from benchmarks import BASELINE
from benchmarks.store import read_results
from services.targets import TARGETS, ServingTarget

MODEL_VARIANTS = ("torch-eager", "ort-fp32", "ort-int8")
VARIANT_NAMES = {"torch-eager": "PyTorch eager (FP32)", "ort-fp32": "ORT FP32",
                 "ort-int8": "ORT INT8", "preprocessing": "preprocessing (numpy + Pillow)"}


def _container_label(target: ServingTarget) -> str:
    """`<name> container, POST <path>`; the part before the comma names the image."""
    if target.protocol == "lambda-runtime":
        return f"{target.name} image via Runtime API (v2 event), POST {target.predict_path}"
    return f"{target.name} container, POST {target.predict_path}"


def _process_label(target: ServingTarget) -> str:
    if target.protocol == "lambda-runtime":
        return f"{target.name}: make_handler (INIT) + invoke"
    return f"{target.name}: create_app(target {target.settings_target})"


# The "vs" column of the HTTP table: the plain HTTP target (the Flask container).
REFERENCE = next(name for name, target in TARGETS.items() if target.settings_target == "http")
# Row order: the registry's targets, then the PyTorch baseline they are compared with.
HTTP_TARGETS = {
    **{name: _container_label(target) for name, target in TARGETS.items()},
    BASELINE: "PyTorch baseline container, POST /predict",
}
PROCESS_NAMES = {
    "ort": "ORT core (services.model)",
    **{name: _process_label(target) for name, target in TARGETS.items()},
    "torch-eager": "torch + torchvision (checkpoint)", "torchscript": "torch (TorchScript)",
}


# --- formatting ------------------------------------------------------------------------------

def _num(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def _ratio(value: float | None, base: float | None) -> str:
    if not value or not base:
        return "–"
    return f"×{value / base:.2f}"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# --- sections --------------------------------------------------------------------------------

def _header(data: dict) -> str:
    run, machine = data["run"], data["machine"]
    flags = machine.get("flags", {})
    flag_text = ", ".join(f"{name} {'yes' if on else 'no'}" for name, on in flags.items())
    versions = ", ".join(f"{k} {v}" for k, v in (machine.get("versions") or {}).items() if v)
    model = run.get("model") or {}
    threads = run.get("threads")
    lines = [
        f"# MHIST benchmarks — {run.get('stamp')} ({run.get('mode')} mode)",
        "",
        f"- **Machine**: {machine.get('cpu_model')} ({machine.get('architecture')}), "
        f"{machine.get('usable_cpus')} usable / {machine.get('logical_cpus')} logical CPUs, "
        f"{machine.get('memory_gib')} GiB RAM; {machine.get('os')}",
        f"- **CPU flags**: {flag_text}",
        f"- **Versions**: Python {machine.get('python')}; {versions}; "
        f"{machine.get('container_engine') or 'no container engine'}",
        f"- **Threads**: torch.set_num_threads = ORT intra_op_num_threads = {threads} "
        "(ORT inter-op 1, sequential execution) unless a row says otherwise",
        f"- **Model**: ResNet18, 2 classes, from the real pipeline (training/train.py → "
        f"export/to_onnx.py): 1 epoch, 224 px, `--weights none`, "
        f"{model.get('train_images')} SYNTHETIC images; {model.get('uri')}. Latency does "
        "not depend on the weights' quality; the accuracy figures below say nothing about "
        "real polyps.",
        f"- **Run**: {run.get('duration_s', '?')} s in all"
        + (f", of which training + export {run['pipeline_s']} s" if run.get("pipeline_s")
           else "")
        + (f"; image builds (s): {run['image_builds']}" if run.get("image_builds") else ""),
        f"- **Load average** (1/5/15 min) at start {run.get('load_average_at_start')}, at end "
        f"{run.get('load_average_at_end')}: other jobs on the machine slow every row, torch "
        "(OpenMP threads that spin-wait) far more than onnxruntime (spinning off)",
    ]
    if run.get("mode") == "quick":
        lines.append("- **Quick mode** (CI smoke): few samples, so p95/p99 sit near the "
                     "maximum of `n` samples; run `MHIST_BENCH_MODE=full pytest benchmarks` "
                     "for report numbers.")
    lines.append("")
    for note in run.get("notes", []):
        lines.append(f"> {note}")
        lines.append("")
    lines.append("> Client and server share this machine's CPUs in the HTTP and throughput "
                 "runs: the load generator's own CPU time is part of every number there.")
    return "\n".join(lines)


def _skips(data: dict) -> str:
    run = data["run"]
    parts = []
    if run.get("skipped"):
        parts.append("## Skipped\n")
        parts += [f"- `{s['what']}` — {s['reason']}" for s in run["skipped"]]
    if run.get("failed"):
        parts.append("\n## Failed\n")
        parts += [f"- `{f['what']}` — {f['message'].splitlines()[-1][:300] if f['message'] else ''}"
                  for f in run["failed"]]
    return "\n".join(parts) if parts else "Nothing was skipped."


def _model_section(data: dict) -> str:
    model = data["model"]
    if not model:
        return "## 1. Model only\n\nNo data."
    rows = []
    for batch in (1, 8):
        torch_p50 = (model.get(f"torch-eager/b{batch}") or {}).get("p50_ms")
        for variant in MODEL_VARIANTS:
            rec = model.get(f"{variant}/b{batch}")
            if not rec:
                continue
            rows.append([VARIANT_NAMES[variant], batch, _num(rec["p50_ms"]), _num(rec["p95_ms"]),
                         _num(rec["p99_ms"]), _num(rec["images_per_s"]),
                         _ratio(torch_p50, rec["p50_ms"]), rec["n"]])
    pre = model.get("preprocessing/png224")
    if pre:
        rows.append([VARIANT_NAMES["preprocessing"], 1, _num(pre["p50_ms"], 2),
                     _num(pre["p95_ms"], 2), _num(pre["p99_ms"], 2), _num(pre["images_per_s"]),
                     "–", pre["n"]])
    text = ["## 1. Model only (same weights, preprocessed input)", "",
            _table(["variant", "batch", "p50 ms", "p95 ms", "p99 ms", "images/s",
                    "speed-up vs PyTorch (p50)", "n"], rows)]
    fp32, int8 = model.get("ort-fp32/b1"), model.get("ort-int8/b1")
    if fp32 and int8:
        gain = fp32["p50_ms"] / int8["p50_ms"]
        text.append(f"\nINT8 vs FP32 at batch 1: ×{gain:.2f} faster (p50).")
        if gain > 1.3 and not data["machine"].get("int8_fast_path"):
            # The note above expects ~×1.06 on AVX2-without-VNNI; say so when a run disagrees.
            text.append(
                "That is more than the ~×1.06 measured before on this kind of CPU (FIELD-NOTES: "
                "19.3 vs 20.5 ms): without VNNI the INT8 kernels cannot be much faster per "
                "multiply, so the gap here comes from elsewhere — less memory traffic (11 vs "
                "45 MB of weights) and FP32 runs slowed more by the other jobs on the machine "
                "(compare their p95). Treat the INT8 gain on this CPU as uncertain.")
    agreement = model.get("agreement")
    if agreement:
        text.append("Same answers: " + ", ".join(f"{k} {v:.2g}" for k, v in agreement.items())
                    + ".")
    return "\n".join(text)


def _http_section(data: dict) -> str:
    http = data["http"]
    if not http:
        return "## 2. End to end over HTTP\n\nNo data."
    base = (http.get("reference/session.run") or {}).get("p50_ms")
    reference = (http.get(REFERENCE) or {}).get("p50_ms")
    rows = []
    for key, label in (("reference/session.run", "session.run alone (INT8, in-process)"),
                       ("reference/predict_bytes", "predict_bytes: decode + preprocess + run")):
        rec = http.get(key)
        if rec:
            rows.append([label, _num(rec["p50_ms"]), _num(rec["p95_ms"]), _num(rec["p99_ms"]),
                         _ratio(rec["p50_ms"], base), "–", rec["n"], 0])
    for key, label in HTTP_TARGETS.items():
        rec = http.get(key)
        if rec and rec.get("n"):
            rows.append([label, _num(rec["p50_ms"]), _num(rec["p95_ms"]), _num(rec["p99_ms"]),
                         _ratio(rec["p50_ms"], base), _ratio(rec["p50_ms"], reference), rec["n"],
                         rec.get("errors", 0)])
    return "\n".join([
        "## 2. End to end, one 224² PNG (one worker, all CPUs as intra-op threads, "
        "sequential requests)", "",
        _table(["target", "p50 ms", "p95 ms", "p99 ms", "overhead vs session.run (p50)",
                f"vs {REFERENCE} container (p50)", "n", "errors"], rows),
        "\nThe ONNX targets serve the INT8 file; the PyTorch baseline serves the FP32 "
        "TorchScript of the same weights (torch CPU build), with the same decoding and "
        "preprocessing code. Its long tail is torch's OpenMP threads spin-waiting for CPUs "
        "that the client (and any other job) holds; onnxruntime runs with spinning off.",
    ])


def _default_label(machine: dict) -> str:
    """The `http` target's default layout on this machine (services/settings.py, read by
    services/gunicorn_conf.py): one worker per CPU (≤ 4), ORT threads = CPUs // workers."""
    cpus = machine.get("usable_cpus") or 1
    workers = min(cpus, 4)
    return f"{workers}w×{max(1, cpus // workers)}ort"


def _throughput_section(data: dict) -> str:
    tp = data["throughput"]
    if not tp:
        return "## 3. Throughput\n\nNo data."
    rows = []
    for label, rec in tp.items():
        for level, r in rec["levels"].items():
            rows.append([label, level, _num(r["throughput_images_per_s"]),
                         _num(r.get("p50_ms")), _num(r.get("p99_ms")), r["errors"],
                         r["requests"]])
    labels = list(tp)
    levels = sorted({int(c) for rec in tp.values() for c in rec["levels"]})
    pivot = [[c] + [_num((tp[label]["levels"].get(str(c)) or {}).get("throughput_images_per_s"))
                    for label in labels] for c in levels]
    text = ["## 3. Throughput — Flask container, closed loop on 127.0.0.1", "",
            "Layout = gunicorn workers × ORT intra-op threads (× gthreads when shown). "
            "images/s by concurrency:", "",
            _table(["concurrency", *labels], pivot), "", "Details:", "",
            _table(["layout", "concurrency", "images/s", "p50 ms", "p99 ms", "errors",
                    "requests"], rows), ""]
    text.append(throughput_verdict(tp, _default_label(data["machine"])))
    return "\n".join(text)


def throughput_verdict(tp: dict, default: str) -> str:
    """Peak images/s of each layout (over the concurrency levels), the winner, and how the
    default layout of services/settings.py compares; plus the lowest single-request p50."""
    peaks = {}
    for label, rec in tp.items():
        level, best = max(rec["levels"].items(),
                          key=lambda item: item[1]["throughput_images_per_s"])
        peaks[label] = (best["throughput_images_per_s"], level)
    if not peaks:
        return ""
    winner = max(peaks, key=lambda label: peaks[label][0])
    listed = ", ".join(f"{label} {value:.1f} (c={level})" for label, (value, level)
                       in peaks.items())
    text = f"**Verdict**: peak images/s — {listed}. Most throughput: **{winner}**"
    if default == winner:
        text += ", which is the default layout (services/settings.py) on this machine"
    elif default in peaks:
        text += (f"; the default layout {default} reaches "
                 f"{_ratio(peaks[default][0], peaks[winner][0])} of it")
    low = str(min(int(c) for rec in tp.values() for c in rec["levels"]))
    at_low = {label: rec["levels"][low].get("p50_ms") for label, rec in tp.items()
              if rec["levels"].get(low, {}).get("p50_ms")}
    if at_low:
        fastest = min(at_low, key=at_low.get)
        text += f". Lowest p50 at concurrency {low}: {fastest} ({at_low[fastest]:.1f} ms)"
    return text + "."


def _coldstart_section(data: dict) -> str:
    cold = data["coldstart"]
    if not cold:
        return "## 4. Cold start\n\nNo data."
    ort = (cold.get("process/ort") or {}).get("first_prediction_s_median")
    rows = []
    for key, label in PROCESS_NAMES.items():
        rec = cold.get(f"process/{key}")
        if rec:
            rows.append([label, _num(rec["first_prediction_s_median"], 2),
                         _num(rec["interpreter_s_median"], 2), _num(rec["imports_s_median"], 2),
                         _num(rec["load_s_median"], 2), _num(rec["first_predict_s_median"], 3),
                         _ratio(rec["first_prediction_s_median"], ort),
                         ", ".join(rec["heavy_modules"]) or "–", len(
                             rec["first_prediction_s_all"])])
    text = ["## 4. Cold start", "",
            "Process start → first successful prediction (fresh interpreter, warm page cache):",
            "",
            _table(["process", "total s", "interpreter s", "imports s", "model load s",
                    "first predict s", "vs ORT core", "heavy modules loaded", "n"], rows)]
    torch_box = (cold.get(f"container/{BASELINE}") or {}).get("first_200_s_median")
    rows = []
    for key, label in HTTP_TARGETS.items():
        rec = cold.get(f"container/{key}")
        if rec:
            extra = (f" (INIT done at {rec['init_s_median']:.2f} s)" if "init_s_median" in rec
                     else "")
            rows.append([label.split(",")[0] + extra, _num(rec["first_200_s_median"], 2),
                         _ratio(rec["first_200_s_median"], torch_box),
                         len(rec["first_200_s_all"])])
    if rows:
        text += ["", "Container start (`run`) → first 200 / first Lambda response, polling with "
                 "the real prediction request:", "",
                 _table(["image", "seconds", "vs PyTorch baseline", "n"], rows)]
    return "\n".join(text)


def _size_section(data: dict) -> str:
    size = data["size"]
    if not size:
        return "## 5. Size\n\nNo data."
    torch_mb = (size.get(BASELINE) or {}).get("image_mb")
    rows = []
    for key, label in HTTP_TARGETS.items():
        rec = size.get(key)
        if rec:
            top = ", ".join(f"{p['package']} {p['mb']:.0f}" for p in rec["top_packages"][:4])
            rows.append([label.split(",")[0], _num(rec["image_mb"], 0), _num(rec["venv_mb"], 0),
                         _ratio(rec["image_mb"], torch_mb), top])
    base = size.get("base") or {}
    text = ["## 5. Size", "", _table(["image", "image MB", "/opt/venv MB", "vs PyTorch image",
                                      "largest packages (MB)"], rows)]
    if base.get("base_image_mb"):
        text.append(f"\nBase image {base['image']}: {base['base_image_mb']:.0f} MB (in every "
                    "row above).")
    return "\n".join(text)


def _peer_section(data: dict) -> str:
    peer = data["peer"]
    if not peer:
        return "## 6. Peer: `mlflow models serve`\n\nNo data."
    ours = peer.get("onnx_flask") or {}
    rows = []
    for key in ("onnx_flask", "mlflow"):
        rec = peer.get(key)
        if rec:
            rows.append([rec["server"], _num(rec["first_200_s"], 2), _num(rec.get("p50_ms")),
                         _num(rec.get("p95_ms")), _num(rec.get("p99_ms")),
                         _ratio(rec.get("p50_ms"), ours.get("p50_ms")),
                         _num(rec["request_bytes"] / 1024, 0), rec.get("n")])
    return "\n".join([
        "## 6. Peer: `mlflow models serve` (PyTorch) vs our Flask service, host processes, "
        "one worker", "",
        _table(["server", "launch → first 200 s", "p50 ms", "p95 ms", "p99 ms",
                "p50 vs ours", "request KB", "n"], rows),
        "\nThe MLflow server takes the preprocessed tensor as JSON (its model signature); ours "
        "takes the PNG and preprocesses it itself.",
    ])


def _precision_section(data: dict) -> str:
    rec = (data["precision"] or {}).get("fp32_vs_int8")
    if not rec:
        return "## 7. FP32 vs INT8\n\nNo data."
    cmp_ = rec["comparison"]
    metrics = [m for m in ("accuracy", "balanced_accuracy", "roc_auc", "f1")
               if m in cmp_.get("fp32", {})]
    rows = []
    for name in ("fp32", "int8"):
        f = rec[name]
        rows.append([name.upper(), _num(f["size_bytes"] / 1e6, 1), _num(f["load_ms_median"], 0)]
                    + [_num(cmp_[name].get(m), 3) for m in metrics])
    rows.append(["INT8 vs FP32 (ratio; metric Δ)",
                 _ratio(rec["int8"]["size_bytes"], rec["fp32"]["size_bytes"]),
                 _ratio(rec["int8"]["load_ms_median"], rec["fp32"]["load_ms_median"])]
                + [_num((cmp_["int8"].get(m) or 0) - (cmp_["fp32"].get(m) or 0), 3)
                   for m in metrics])
    return "\n".join([
        "## 7. FP32 vs INT8 (file, load, accuracy from export_report.json)", "",
        _table(["file", "size MB", "load ms", *metrics], rows),
        f"\nTop-1 agreement {cmp_.get('top1_agreement', float('nan')):.3f}, max |Δp| "
        f"{cmp_.get('max_abs_prob_diff', float('nan')):.3g} on {cmp_.get('images')} held-out "
        "SYNTHETIC images.",
    ])


def render(data: dict) -> str:
    return "\n\n".join([
        _header(data), _skips(data), _model_section(data), _http_section(data),
        _throughput_section(data), _coldstart_section(data), _size_section(data),
        _peer_section(data), _precision_section(data),
    ]) + "\n"


# --- plots -----------------------------------------------------------------------------------

def _colour(label: str) -> str:
    """PyTorch bars orange, ONNX bars blue: the comparison the plots are about."""
    return "tab:orange" if "torch" in label.lower() else "tab:blue"


def _plots(data: dict, folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    written = []

    def save(fig, name: str) -> None:
        path = folder / name
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    model = data["model"]
    if model:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for ax, batch in zip(axes, (1, 8), strict=True):
            keys = [v for v in MODEL_VARIANTS if f"{v}/b{batch}" in model]
            samples = [model[f"{v}/b{batch}"]["samples_ms"] for v in keys]
            labels = [VARIANT_NAMES[v] for v in keys]
            if batch == 1 and "preprocessing/png224" in model:
                samples.append(model["preprocessing/png224"]["samples_ms"])
                labels.append("preprocess")
            if samples:
                ax.boxplot(samples, showfliers=True)
                ax.set_xticks(range(1, len(labels) + 1), labels, rotation=15)
            ax.set_title(f"model only, batch {batch}")
            ax.set_yscale("log")  # contention outliers would otherwise flatten the boxes
            ax.set_ylabel("ms per call (log)")
        save(fig, "latency_model.png")
    http = data["http"]
    keys = [k for k in ("reference/session.run", "reference/predict_bytes", *HTTP_TARGETS)
            if (http.get(k) or {}).get("samples_ms")]
    if keys:
        fig, ax = plt.subplots(figsize=(10, 4))
        ax.boxplot([http[k]["samples_ms"] for k in keys], showfliers=True)
        ax.set_xticks(range(1, len(keys) + 1), [k.split("/")[-1] for k in keys], rotation=15)
        ax.set_ylabel("ms per request")
        ax.set_title("end to end, one 224² PNG")
        save(fig, "latency_http.png")
    tp = data["throughput"]
    if tp:
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
        for label, rec in tp.items():
            levels = sorted(rec["levels"], key=int)
            xs = [int(c) for c in levels]
            left.plot(xs, [rec["levels"][c]["throughput_images_per_s"] for c in levels],
                      marker="o", label=label)
            right.plot(xs, [rec["levels"][c].get("p99_ms") or 0 for c in levels], marker="o",
                       label=label)
        left.set(xlabel="concurrency", ylabel="images/s", title="throughput")
        right.set(xlabel="concurrency", ylabel="p99 ms", title="tail latency")
        left.legend()
        save(fig, "throughput.png")
    cold = data["coldstart"]
    if cold:
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
        proc = [(PROCESS_NAMES.get(k.split("/")[1], k.split("/")[1]),
                 v["first_prediction_s_median"])
                for k, v in cold.items() if k.startswith("process/")]
        box = [(HTTP_TARGETS.get(k.split("/")[1], k.split("/")[1]).split(",")[0],
                v["first_200_s_median"])
               for k, v in cold.items() if k.startswith("container/")]
        for ax, pairs, title in ((left, proc, "process start → first prediction"),
                                 (right, box, "container start → first 200")):
            if pairs:
                bars = ax.barh([p[0] for p in pairs], [p[1] for p in pairs],
                               color=[_colour(p[0]) for p in pairs])
                ax.bar_label(bars, fmt="%.2f s", padding=2)
            ax.set(xlabel="seconds", title=title)
        save(fig, "coldstart.png")
    size = data["size"]
    names = [k for k in HTTP_TARGETS if k in size]
    if names:
        fig, ax = plt.subplots(figsize=(8, 4))
        xs = range(len(names))
        image_bars = ax.bar([x - 0.2 for x in xs], [size[n]["image_mb"] for n in names], 0.4,
                            label="image")
        venv_bars = ax.bar([x + 0.2 for x in xs], [size[n]["venv_mb"] for n in names], 0.4,
                           label="/opt/venv")
        ax.bar_label(image_bars, fmt="%.0f")
        ax.bar_label(venv_bars, fmt="%.0f")
        ax.set_xticks(list(xs), names)
        ax.set(ylabel="MB", title="image and Python env size")
        ax.legend()
        save(fig, "size.png")
    return written


def generate(folder: str | Path, latest: Path | None = None) -> Path:
    """Write summary.md and plots/ for `folder`; returns the summary's path. With `latest`,
    also write the summary there without plot links (benchmarks/LATEST.md is committed, the
    plots are not)."""
    folder = Path(folder)
    data = read_results(folder)
    summary = folder / "summary.md"
    plots = _plots(data, folder / "plots")
    text = render(data)
    if latest is not None:
        latest.write_text(
            "<!-- generated by `python -m benchmarks.report benchmarks/results/"
            f"{folder.name} --latest {latest}`; do not edit by hand -->\n\n" + text)
    if plots:
        text += "\n## Plots\n\n" + "\n".join(f"![{p.stem}](plots/{p.name})" for p in plots) + "\n"
    summary.write_text(text)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Regenerate summary.md and plots from a "
                                                 "benchmarks/results/<timestamp> folder.")
    parser.add_argument("folder", type=Path, help="benchmarks/results/<timestamp>")
    parser.add_argument("--latest", type=Path, default=None,
                        help="also write the summary (without plots) here, e.g. "
                             "benchmarks/LATEST.md")
    args = parser.parse_args(argv)
    try:
        path = generate(args.folder, args.latest)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
