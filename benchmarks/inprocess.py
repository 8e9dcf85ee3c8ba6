"""In-process throughput in a server's layout: the ceiling the Flask container is compared with.

The same file, image and worker × thread layout as a gunicorn setting (benchmarks.config
.ServerSetting), without HTTP: `workers` fresh processes (spawned, like gunicorn's workers each
with its own session), each running `gunicorn_threads` Python threads on its one session with
`ort_threads` intra-op threads, calling as fast as they can for a fixed time, all started
together. Two calls are measured: `predict_bytes` (decode + preprocess + run + postprocess, what
a request costs inside the app) and bare `session.run` on a preprocessed tensor.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.config import ServerSetting

CALLS = ("predict_bytes", "session.run")
_WARMUP_CALLS = 5


def model_calls(model) -> dict[str, Callable[[bytes], Callable[[], object]]]:
    """call name (CALLS) → png → a no-argument call on `model` (services.core.model.InferenceModel):
    what section 2 times one call at a time and this module times in a server's layout."""
    from services.core.preprocessing import preprocess_bytes

    meta = model.metadata

    def session_run(png: bytes) -> Callable[[], object]:
        batch = preprocess_bytes(png, meta.preprocessing)[None]  # (1, 3, S, S)
        return lambda: model.session.run([meta.output_name], {meta.input_name: batch})

    return {"predict_bytes": lambda png: lambda: model.predict_bytes(png),
            "session.run": session_run}


def _call(model_path: str, png: bytes, ort_threads: int, what: str) -> Callable[[], object]:
    from services.core.model import InferenceModel

    return model_calls(InferenceModel(model_path, threads=ort_threads))[what](png)


def _worker(model_path: str, png: bytes, setting: ServerSetting, what: str, seconds: float,
            barrier, results) -> None:
    call = _call(model_path, png, setting.ort_threads, what)
    for _ in range(_WARMUP_CALLS):
        call()
    counts = [0] * setting.gunicorn_threads
    barrier.wait()  # every process has loaded and warmed up: start together
    deadline = time.perf_counter() + seconds

    def loop(index: int) -> None:
        done = 0
        while time.perf_counter() < deadline:
            call()
            done += 1
        counts[index] = done

    started = time.perf_counter()
    threads = [threading.Thread(target=loop, args=(i,)) for i in range(setting.gunicorn_threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    results.put((sum(counts), time.perf_counter() - started))


def inprocess_throughput(model_path: Path, png: bytes, setting: ServerSetting, what: str,
                         seconds: float) -> dict:
    """images/s of `what` (one of CALLS) summed over the layout's processes."""
    if what not in CALLS:
        raise ValueError(f"unknown call {what!r}; expected one of {CALLS}")
    context = multiprocessing.get_context("spawn")  # fresh interpreters, as gunicorn's workers
    barrier = context.Barrier(setting.workers)
    results = context.Queue()
    processes = [context.Process(target=_worker, args=(str(model_path), png, setting, what,
                                                       seconds, barrier, results))
                 for _ in range(setting.workers)]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=seconds + 120) for _ in processes]
    for process in processes:
        process.join(timeout=30)
        if process.exitcode != 0:
            raise RuntimeError(f"in-process throughput worker exited with {process.exitcode}")
    calls = sum(count for count, _ in outcomes)
    wall = max(elapsed for _, elapsed in outcomes)
    return {"call": what, "layout": setting.label, "calls": calls, "wall_s": wall,
            "images_per_s": calls / wall}
