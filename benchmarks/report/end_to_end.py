"""Section 2: one PNG end to end over HTTP per target, and the serving-overhead goals."""

from __future__ import annotations

from benchmarks import BASELINE
from benchmarks.report.goals import GOALS, KEEPALIVE_KEY
from benchmarks.report.records import (
    CoreOverhead,
    HttpRun,
    HttpSection,
    Layout,
    Paired,
    Run,
)
from benchmarks.report.text import (
    PRECISION_NAMES,
    answers_cell,
    bullets,
    container_label,
    faster,
    num,
    ratio,
    table,
)
from services.core.stages import STAGES

COLUMNS = ["target", "file", "request", "p50 ms", "p95 ms", "p99 ms",
           "÷ session.run, same file (p50)", "speed-up vs PyTorch baseline (p50)",
           "answers vs ONNX FP32", "n", "errors"]
LAMBDA_NOTE = ("Lambda: no HTTP endpoint of its own; the same benchmark process times "
               "`invoke` from queuing the event to receiving the result (the function's "
               "runtime client polls the Runtime API test server on 127.0.0.1).")


def _p50(http: HttpSection, reference: str) -> float | None:
    """The p50 of an in-process reference call, "int8/session.run" and the like."""
    rec = http.reference.get(reference)
    return rec.p50_ms if rec else None


def http_findings(http: HttpSection, throughput: dict[str, Layout] | None = None) -> list[str]:
    base = http.containers.get(BASELINE)
    found = []
    if base:
        for key, rec in http.containers.items():
            if key.startswith("flask-"):
                precision = PRECISION_NAMES.get(key.rpartition("-")[2], "?")
                found.append(faster(f"Flask container {precision}", rec.p50_ms,
                                    "PyTorch baseline container", base.p50_ms,
                                    samples=(rec.samples_ms, base.samples_ms)) + ".")
    if http.containers:
        fastest = min(http.containers, key=lambda key: http.containers[key].p50_ms)
        found.append(f"Lowest p50: {container_label(fastest)} "
                     f"({http.containers[fastest].p50_ms:.1f} ms).")
    return found + overhead_goals(http, throughput)


def _one_worker(throughput: dict[str, Layout] | None) -> Layout | None:
    """The throughput layout with one worker and one gunicorn thread, if it ran."""
    return next((rec for rec in (throughput or {}).values()
                 if rec.workers == 1 and rec.gunicorn_threads == 1), None)


def _overhead_line(key: str, p50: float, floor: float, single: Layout | None) -> str:
    name = {"predict_bytes": "INT8 predict_bytes (in-process)",
            KEEPALIVE_KEY: f"Flask container, INT8, over one kept-alive connection (wrk, "
                           f"concurrency 1, {single.setting if single else ''})"
            }.get(key) or container_label(key)
    return f"{name}: p50 {p50:.2f} ms = ×{p50 / floor:.2f} INT8 session.run ({floor:.2f} ms)."


def _verdict(value: float, goal: float) -> str:
    return f"goal ≤ {goal:.1f} ms: **{'met' if value <= goal else 'not met'}**"


def overhead_goals(http: HttpSection, throughput: dict[str, Layout] | None = None
                   ) -> list[str]:
    """The serving-overhead goals (goals.json "overhead", in ms) judged on the interleaved
    measurements (benchmarks/overhead.py), then every INT8 row's ratio to session.run. With
    throughput records, also POST /predict over a kept-alive connection: wrk at concurrency 1
    on the one-worker layout."""
    floor = _p50(http, "int8/session.run")
    if not floor:
        return []
    lines = [*_core_goal(http.core, floor), *_http_goals(http, floor)]
    measured = {"predict_bytes": _p50(http, "int8/predict_bytes")}
    measured |= {key: rec.p50_ms for key, rec in http.containers.items()
                 if key.endswith("-int8") and key != BASELINE}
    single = _one_worker(throughput)
    level = single.levels.get("1") if single else None
    if level and level.p50_ms:
        measured[KEEPALIVE_KEY] = level.p50_ms
    return lines + [_overhead_line(key, p50, floor, single) for key, p50 in measured.items()
                    if p50]


# What each in-process stage holds (services/core/stages.py; model.py nests "run" in
# "postprocess").
_STAGE_NOTES = {"preprocess": "to RGB, resize/crop, normalise",
                "postprocess": "softmax, calibration, label, input quality checks, JSON dict"}


def _core_goal(core: CoreOverhead | None, floor: float) -> list[str]:
    """In-process: predict_bytes − session.run − decode, each call's own stages."""
    if core is None:
        return [f"In-process overhead goal (predict_bytes − session.run − decode ≤ "
                f"{GOALS.overhead['core_ms']:.1f} ms): not measured in this run (no "
                "interleaved record, benchmarks/overhead.py)."]
    goal = GOALS.overhead["core_ms"]
    stages = ", ".join(f"{name} {us:.0f} µs" + (f" ({_STAGE_NOTES[name]})"
                                                 if name in _STAGE_NOTES else "")
                       for name, us in core.stages_us.items() if name not in ("run", "decode"))
    decode = (f" Decoding, not counted: the decode stage {core.decode_ms:.2f} ms (header checks, "
              f"PNG checksums, libspng), of which the decode floor (libspng alone, same rounds) "
              f"{core.decode_floor_ms:.2f} ms."
              if core.decode_ms is not None and core.decode_floor_ms is not None else "")
    line = (f"In-process overhead, predict_bytes − session.run − decode (p50 over calls, each "
            f"call's own stages, interleaved rounds): {core.overhead_ms:.2f} ms = "
            f"×{core.overhead_ms / floor:.3f} INT8 session.run ({floor:.2f} ms) "
            f"({_verdict(core.overhead_ms, goal)}). Stages, p50: {stages}.{decode}")
    others = {name: us for name, us in core.stages_us.items() if name not in ("run", "decode")}
    if core.overhead_ms > goal and others:
        largest = max(others, key=lambda name: others[name])
        line += (f" What stands in the way: {largest} ({others[largest]:.0f} µs of the "
                 f"{1000 * core.overhead_ms:.0f}).")
    return [line]


def _http_goals(http: HttpSection, floor: float) -> list[str]:
    """POST /predict on a new connection − predict_bytes, alternating: the host server alone,
    and through the front server (the Flask container's nginx; the host's where no container
    ran)."""
    rows: list[tuple[str, Paired, float]] = []
    host = http.host.get("none")
    if host:
        rows.append(("host server (gunicorn alone)", host.paired,
                     GOALS.overhead["host_http_ms"]))
    container = http.containers.get("flask-int8")
    if container and container.paired:
        rows.append(("Flask container (its front server: nginx → gunicorn)", container.paired,
                     GOALS.overhead["front_http_ms"]))
    front = http.host.get("nginx")
    if front:
        judged = not (container and container.paired)
        rows.append(("host server behind nginx (the containers' front server, on the host)",
                     front.paired, GOALS.overhead["front_http_ms"] if judged else 0.0))
    if not rows:
        return [f"HTTP overhead goals (POST /predict − predict_bytes ≤ "
                f"{GOALS.overhead['host_http_ms']:.1f} ms on the host server, ≤ "
                f"{GOALS.overhead['front_http_ms']:.1f} ms through the front server): not "
                "measured in this run (no paired record, benchmarks/overhead.py)."]
    lines = [_http_line(name, pair, goal, floor) for name, pair, goal in rows]
    if host and host.floor_ms is not None:
        own = host.paired.http_minus_server_predict_ms
        lines.append(
            f"The HTTP floor, in the same rounds: a bare gunicorn app that only reads the body "
            f"and answers a fixed JSON (benchmarks/floor_app.py, one sync worker, same client) "
            f"took {host.floor_ms:.2f} ms p50"
            + (f"; of the host server's {own:.2f} ms, {own - host.floor_ms:.2f} ms is the app's "
               "own (Flask, hooks, metrics, logging)." if own is not None else "."))
    return lines


def _http_line(name: str, pair: Paired, goal: float, floor: float) -> str:
    """Judged on each request's time − its own predict_bytes in the server (Server-Timing)
    where the run has it, else on the difference of the two alternating p50s."""
    own = pair.http_minus_server_predict_ms
    judged = own if own is not None else pair.http_minus_predict_bytes_ms
    what = ("each request's time − its own predict_bytes in the server (Server-Timing), p50"
            if own is not None else "HTTP p50 − in-process predict_bytes p50")
    return (f"POST /predict on a new connection − predict_bytes, {name}, alternating with "
            f"in-process predict_bytes ({pair.n} rounds): {judged:.2f} ms, {what} "
            f"(HTTP p50 {pair.http_p50_ms:.2f} ms = ×{pair.http_p50_ms / floor:.2f} INT8 "
            f"session.run; in-process predict_bytes p50 {pair.predict_bytes_p50_ms:.2f} ms"
            + (f", difference of p50s {pair.http_minus_predict_bytes_ms:.2f} ms"
               if own is not None else "") + ")"
            + (f" ({_verdict(judged, goal)})." if goal else "."))


def _container_row(key: str, rec: HttpRun, base: float | None) -> list:
    overhead = rec.overhead_vs_session_run
    return [container_label(key), PRECISION_NAMES.get(rec.precision, "?"),
            f"{rec.request}, {num(rec.request_bytes / 1024, 0)} KB", num(rec.p50_ms),
            num(rec.p95_ms), num(rec.p99_ms), f"×{overhead:.2f}" if overhead else "–",
            ratio(base, rec.p50_ms), answers_cell(rec.answers), rec.n, rec.errors]


def _rows(http: HttpSection) -> list[list]:
    rows = []
    for precision in ("fp32", "int8"):
        for part, label in (("session.run", "session.run alone (in-process)"),
                            ("predict_bytes", "predict_bytes: decode + preprocess + run")):
            rec = http.reference.get(f"{precision}/{part}")
            if rec:
                rows.append([label, PRECISION_NAMES[precision], "–", num(rec.p50_ms),
                             num(rec.p95_ms), num(rec.p99_ms), "–", "–", "–", rec.n, 0])
    base = http.containers.get(BASELINE)
    return rows + [_container_row(key, rec, base.p50_ms if base else None)
                   for key, rec in http.containers.items()]


def _stage_table(http: HttpSection) -> list[str]:
    """Mean ms per stage of the timed predictions, from each container's mhist_stage_seconds
    histogram; the rest of the mean latency is outside the handler (the socket, the front
    server, WSGI, the Lambda runtime client) and the client."""
    rows = []
    for key, rec in http.containers.items():
        if not rec.stages_ms:
            continue
        inside = sum(rec.stages_ms.values())
        rows.append([container_label(key), *[num(rec.stages_ms.get(name), 2) for name in STAGES],
                     num(inside, 2), num(rec.mean_ms, 2), num(rec.mean_ms - inside, 2)])
    if not rows:
        return []
    return ["", "Where one request's time goes: mean ms per stage inside the app over the timed "
            "requests (`mhist_stage_seconds` on each container's /metrics), and what the mean "
            "latency adds outside them (socket, front server, WSGI or Lambda runtime client, "
            "client):", "",
            table(["target", *STAGES, "sum", "mean ms", "mean − sum"], rows)]


def http_section(http: HttpSection | None, run: Run, throughput: dict[str, Layout]) -> str:
    if http is None:
        return "## 2. End to end over HTTP\n\nNo data."
    return "\n".join([
        "## 2. End to end, one 224² PNG (one worker, all CPUs as intra-op threads, "
        "sequential requests)", "",
        f"HTTP client: {run.http_connection_policy}. {LAMBDA_NOTE} "
        f"The PyTorch baseline serves the FP32 TorchScript of the same weights, frozen and "
        f"optimized at load (torch {run.baseline_torch or '?'}), with the same decoding "
        "and preprocessing code.", "",
        table(COLUMNS, _rows(http)), "",
        *bullets(http_findings(http, throughput)),
        *_stage_table(http),
    ])
