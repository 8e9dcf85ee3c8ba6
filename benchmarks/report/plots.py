"""plots/*.png for summary.md: latency boxes, throughput curves, cold start and size bars."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.report.records import (
    ColdStart,
    HttpSection,
    Layout,
    ModelSection,
    Results,
    SizeSection,
)
from benchmarks.report.text import container_label, process_label


def _colour(label: str) -> str:
    """PyTorch bars orange, ONNX bars blue: the comparison the plots are about."""
    return "tab:orange" if "torch" in label.lower() else "tab:blue"


def _model(plt: Any, model: ModelSection | None) -> Any:
    if not model or not model.by_batch:
        return None
    batches = list(model.by_batch)
    fig, axes = plt.subplots(1, len(batches), figsize=(6 * len(batches), 4.5), squeeze=False)
    for ax, (batch, runs) in zip(axes[0], model.by_batch.items(), strict=True):
        samples = [run.samples_ms for run in runs.values()]
        labels = [run.label for run in runs.values()]
        if batch == 1 and model.preprocessing:
            samples.append(model.preprocessing.samples_ms)
            labels.append("preprocess")
        ax.boxplot(samples, showfliers=True)
        ax.set_xticks(range(1, len(labels) + 1), labels, rotation=30, ha="right")
        ax.set_title(f"model only, batch {batch}")
        ax.set_yscale("log")  # contention outliers would otherwise flatten the boxes
        ax.set_ylabel("ms per call (log)")
    return fig


def _http(plt: Any, http: HttpSection | None) -> Any:
    keys = [key for key, rec in (http.containers if http else {}).items() if rec.samples_ms]
    if not keys:
        return None
    fig, ax = plt.subplots(figsize=(11, 4.5))
    ax.boxplot([http.containers[k].samples_ms for k in keys], showfliers=True)
    ax.set_xticks(range(1, len(keys) + 1), keys, rotation=20, ha="right")
    ax.set_ylabel("ms per request")
    ax.set_title("end to end, one 224² PNG")
    return fig


def _throughput(plt: Any, tp: dict[str, Layout]) -> Any:
    if not tp:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for label, rec in tp.items():
        levels = sorted(rec.levels, key=int)
        xs = [int(c) for c in levels]
        left.plot(xs, [rec.levels[c].images_per_s for c in levels], marker="o", label=label)
        right.plot(xs, [rec.levels[c].p99_ms or 0 for c in levels], marker="o", label=label)
    left.set(xlabel="concurrency", ylabel="images/s", title="throughput")
    right.set(xlabel="concurrency", ylabel="p99 ms", title="tail latency")
    left.legend()
    return fig


def _coldstart(plt: Any, cold: ColdStart | None) -> Any:
    if not cold:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    proc = [(process_label(k), v.first_prediction_s) for k, v in cold.processes.items()]
    box = [(container_label(k), v.first_200_s) for k, v in cold.containers.items()]
    for ax, pairs, title in ((left, proc, "process start → first prediction"),
                             (right, box, "container start → first 200")):
        if pairs:
            bars = ax.barh([p[0] for p in pairs], [p[1] for p in pairs],
                           color=[_colour(p[0]) for p in pairs])
            ax.bar_label(bars, fmt="%.2f s", padding=2)
        ax.set(xlabel="seconds", title=title)
    return fig


def _size(plt: Any, size: SizeSection | None) -> Any:
    if not size or not size.images:
        return None
    names = list(size.images)
    fig, ax = plt.subplots(figsize=(10, 4))
    xs = range(len(names))
    image_bars = ax.bar([x - 0.2 for x in xs], [size.images[n].image_mb for n in names], 0.4,
                        label="image")
    venv_bars = ax.bar([x + 0.2 for x in xs], [size.images[n].venv_mb for n in names], 0.4,
                       label="/opt/venv")
    ax.bar_label(image_bars, fmt="%.0f")
    ax.bar_label(venv_bars, fmt="%.0f")
    ax.set_xticks(list(xs), names)
    ax.set(ylabel="MB", title="image and Python env size")
    ax.legend()
    return fig


def draw_plots(results: Results, folder: Path) -> list[Path]:
    """Draw every plot the results have data for into `folder`; the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    figures = {"latency_model.png": _model(plt, results.model),
               "latency_http.png": _http(plt, results.http),
               "throughput.png": _throughput(plt, results.throughput),
               "coldstart.png": _coldstart(plt, results.coldstart),
               "size.png": _size(plt, results.size)}
    written = []
    for name, fig in figures.items():
        if fig is None:
            continue
        fig.tight_layout()
        fig.savefig(folder / name, dpi=110)
        plt.close(fig)
        written.append(folder / name)
    return written
