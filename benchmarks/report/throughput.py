"""Section 3: the Flask container under concurrency, against its in-process ceiling."""

from __future__ import annotations

from benchmarks.report.goals import GOALS
from benchmarks.report.records import Layout, Machine, Run
from benchmarks.report.text import bullets, num, ratio, table

DETAIL_COLUMNS = ["layout", "concurrency", "images/s", "÷ in-process predict_bytes", "p50 ms",
                  "p99 ms", "p99 ÷ p50", "errors", "requests"]


def default_layout(run: Run, machine: Machine) -> str:
    """The `http` target's default layout, as services/web/settings.py gave it during the run."""
    if run.default_layout:
        return run.default_layout
    cpus = machine.usable_cpus or 1
    workers = min(cpus, 4)
    return f"{workers}w×{max(1, cpus // workers)}ort"


def _share(value: float | None, base: float | None) -> str:
    return f"{100.0 * value / base:.0f} %" if value and base else "–"


def _detail_rows(tp: dict[str, Layout]) -> list[list]:
    rows = []
    for label, rec in tp.items():
        ceiling = rec.inprocess.get("predict_bytes")
        for level, r in rec.levels.items():
            rows.append([label, level, num(r.images_per_s), _share(r.images_per_s, ceiling),
                         num(r.p50_ms), num(r.p99_ms),
                         f"×{r.p99_ms / r.p50_ms:.2f}" if r.p50_ms and r.p99_ms else "–",
                         r.errors, r.requests])
    return rows


def _pivot(tp: dict[str, Layout]) -> list[list]:
    """images/s: one row per concurrency level and in-process call, one column per layout."""
    levels = sorted({int(c) for rec in tp.values() for c in rec.levels})
    pivot = [[f"container, concurrency {c}"]
             + [num(rec.levels[str(c)].images_per_s if str(c) in rec.levels else None)
                for rec in tp.values()] for c in levels]
    for call in ("predict_bytes", "session.run"):
        if any(rec.inprocess.get(call) for rec in tp.values()):
            pivot.append([f"in-process {call}, same layout"]
                         + [num(rec.inprocess.get(call)) for rec in tp.values()])
    return pivot


def throughput_goals(tp: dict[str, Layout]) -> list[str]:
    """One line per layout: the goal's concurrency against the goals, from the records."""
    lines, at = [], GOALS.throughput_concurrency
    for label, rec in tp.items():
        r = rec.levels.get(at)
        ceiling = rec.inprocess.get("predict_bytes")
        if not r or not ceiling or not r.p50_ms:
            continue
        share = r.images_per_s / ceiling
        tail = r.p99_ms / r.p50_ms
        bare = rec.inprocess.get("session.run")
        met = (share >= GOALS.throughput_share and tail <= GOALS.throughput_tail
               and not r.errors)
        lines.append(
            f"{label} at concurrency {at}: {r.images_per_s:.1f} images/s = {100 * share:.0f} % "
            f"of in-process predict_bytes ({ceiling:.1f}; goal "
            f"≥ {100 * GOALS.throughput_share:.0f} %)"
            + (f", {100 * r.images_per_s / bare:.0f} % of bare session.run ({bare:.1f})"
               if bare else "")
            + f"; p99 = {tail:.2f} × p50 (goal ≤ {GOALS.throughput_tail:g}); "
            f"{r.errors} errors: **goal {'met' if met else 'not met'}**.")
    return lines


def _lowest_p50(tp: dict[str, Layout]) -> str:
    low = str(min(int(c) for rec in tp.values() for c in rec.levels))
    at_low = {label: rec.levels[low].p50_ms for label, rec in tp.items()
              if low in rec.levels and rec.levels[low].p50_ms}
    if not at_low:
        return ""
    fastest = min(at_low, key=lambda label: at_low[label])
    return f". Lowest p50 at concurrency {low}: {fastest} ({at_low[fastest]:.1f} ms)"


def throughput_verdict(tp: dict[str, Layout], default: str) -> str:
    """Peak images/s of each layout (over the concurrency levels), the winner, and how the
    default layout of services/web/settings.py compares; plus the lowest single-request p50."""
    peaks = {}
    for label, rec in tp.items():
        level, best = max(rec.levels.items(), key=lambda item: item[1].images_per_s)
        peaks[label] = (best.images_per_s, level)
    if not peaks:
        return ""
    winner = max(peaks, key=lambda label: peaks[label][0])
    listed = ", ".join(f"{label} {value:.1f} (c={level})" for label, (value, level)
                       in peaks.items())
    text = f"**Verdict**: peak images/s — {listed}. Most throughput: **{winner}**"
    if default == winner:
        text += ", which is the default layout (services/web/settings.py) on this machine"
    elif default in peaks:
        text += (f"; the default layout {default} reaches "
                 f"{ratio(peaks[default][0], peaks[winner][0])} of it")
    return text + _lowest_p50(tp) + "."


def throughput_section(tp: dict[str, Layout], run: Run, machine: Machine) -> str:
    if not tp:
        return "## 3. Throughput\n\nNo data."
    client = run.throughput_client or "a closed loop of Python threads"
    return "\n".join([
        "## 3. Throughput — Flask container (INT8 file) on 127.0.0.1, against its in-process "
        "ceiling", "",
        f"Load: {client}. Layout = gunicorn workers × ORT intra-op threads (× gthreads when "
        "shown); the in-process rows run the same file in the same layout without HTTP "
        "(benchmarks/inprocess.py). images/s:", "",
        table(["", *tp], _pivot(tp)), "", "Details:", "",
        table(DETAIL_COLUMNS, _detail_rows(tp)), "",
        *bullets(throughput_goals(tp)), "",
        throughput_verdict(tp, default_layout(run, machine))])
