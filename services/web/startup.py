"""This process's start-up timeline: one JSON line {"event": "startup", ...} when its app is
built, so an operator (and benchmarks/test_coldstart.py) can see where a cold start goes.

Marks are wall-clock seconds since the epoch, comparable with any clock on the same host:
    container_init_at  PID 1 of this PID namespace started (the container's entry process)
    process_at         this process started (exec, or its fork from the gunicorn master)
    app_at             create_app began: the interpreter, services' imports (flask, numpy,
                       onnxruntime, Pillow) and the server's own start-up are done
    ready_at           create_app returned: the session is built and the app can answer
and `session_s`, the part of app_at → ready_at spent building the onnxruntime session (and
reading the model's metadata). /proc gives process start times in clock ticks (10 ms).
`cpu`: this CPU as onnxruntime's kernels see it (services/core/cpus.py): arch, class, the
features read from CPUID, or why they could not be read.
"""

from __future__ import annotations

import json
import logging
import os
import time

from services.core.cpus import cpu_info

log = logging.getLogger("mhist.access")  # services.web.hooks gives it its JSON-lines handler


def _process_started_at(pid: int | str = "self") -> float | None:
    """When process `pid` started, in epoch seconds; None where /proc cannot say."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            # Field 22 (starttime, ticks since boot); the command name (field 2) may hold spaces.
            ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as kernel:
            boot = next(int(line.split()[1]) for line in kernel if line.startswith("btime "))
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def timeline(app_at: float, session_s: float | None) -> dict:
    """The startup line's fields, with ready_at = now."""
    return {
        "event": "startup", "pid": os.getpid(),
        "container_init_at": _process_started_at(1), "process_at": _process_started_at(),
        "app_at": round(app_at, 4), "ready_at": round(time.time(), 4),
        "session_s": None if session_s is None else round(session_s, 4),
        "cpu": cpu_info().to_dict(),
    }


def log_ready(app_at: float, session_s: float | None) -> None:
    log.info(json.dumps(timeline(app_at, session_s)))
