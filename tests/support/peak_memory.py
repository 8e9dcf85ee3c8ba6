"""Replay requests through one app in a fresh process and report its peak memory.

    python -m tests.support.peak_memory REQUESTS.pickle MODEL.onnx
    → one JSON line: {"peak_rss_mb": ..., "statuses": [...], "seconds": ...}

REQUESTS.pickle holds (method, path, headers, body) tuples, pickled one after another and
read one at a time, so the harness holds one body at most. The process is what a gunicorn
worker is (create_app with the environment's settings, the model loaded), so its peak RSS
(the kernel's VmHWM) is the worker's peak over these requests. Not getrusage's ru_maxrss:
Linux carries it over from the parent through fork and exec, so a child of a big pytest
process would report the parent's peak. An
address-space limit (MHIST_PEAK_AS_LIMIT_MB, default 3072) turns a runaway allocation into a
MemoryError, a 500 in the statuses, instead of taking the machine's memory.
"""

from __future__ import annotations

import json
import os
import pickle
import resource
import sys
import time


def peak_rss_mb() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) // 1024  # kB
    raise RuntimeError("no VmHWM in /proc/self/status (this measurement needs Linux)")


def main(argv: list[str]) -> int:
    requests_file, model = argv
    limit = int(os.environ.get("MHIST_PEAK_AS_LIMIT_MB", "3072")) * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    from services.web.app import create_app  # after the limit: onnxruntime's arenas count too

    client = create_app({"MODEL_PATH": model}).test_client()
    baseline = peak_rss_mb()
    started = time.perf_counter()
    statuses = []
    with open(requests_file, "rb") as handle:
        while True:
            try:
                method, path, headers, body = pickle.load(handle)
            except EOFError:
                break
            reply = client.open(path, method=method, headers=headers, data=body)
            statuses.append(reply.status_code)
            del reply, body
    print(json.dumps({
        "peak_rss_mb": peak_rss_mb(),
        "baseline_rss_mb": baseline, "statuses": statuses,
        "seconds": round(time.perf_counter() - started, 2),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
