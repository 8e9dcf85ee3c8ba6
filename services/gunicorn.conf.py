"""gunicorn settings for the MHIST Flask service (read by `gunicorn -c services/gunicorn.conf.py`).

    MODEL_PATH=artifacts/model.int8.onnx .venv/bin/gunicorn -c services/gunicorn.conf.py \
        "services.app:create_app()"

Environment: PORT (8000), HOST (127.0.0.1; the image sets 0.0.0.0), WEB_CONCURRENCY (workers,
default = usable CPUs capped at 4), GUNICORN_THREADS (1 = sync worker), GUNICORN_TIMEOUT (30),
GUNICORN_GRACEFUL_TIMEOUT (8), GUNICORN_KEEPALIVE (5), GUNICORN_MAX_REQUESTS (0 = never
recycle), ORT_INTRA_OP_THREADS (default: CPUs // (workers × threads), at least 1),
PROMETHEUS_MULTIPROC_DIR (default: a fresh temporary folder).

Why these choices:
- preload_app off: each worker builds its own onnxruntime session after the fork (ORT's thread
  pools do not survive fork, and a per-worker session keeps workers independent).
- One worker per CPU with one ORT thread each beats one worker with many threads for
  throughput on small machines, and avoids oversubscription: workers × threads × ORT threads
  ≤ CPUs. ORT would otherwise size its pool from the host's cores, not the container's quota.
- SIGTERM: each worker closes its listening socket first (new connections are refused), then
  finishes its in-flight request (services/gunicorn_sigterm.py).
- graceful_timeout 8 s fits inside the 10 s that `docker stop` / `podman stop` wait before
  SIGKILL: in-flight requests finish, then the worker exits.
- A missing or empty model file stops the master before it forks, with one clear line and
  exit status 1; a file that is not a valid exported model stops every worker at boot and
  gunicorn exits with status 3. /ready is 503 only when MODEL_REQUIRED=0 lets the app start.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

from services.gunicorn_sigterm import post_worker_init  # noqa: F401 - a gunicorn hook

_ENV = os.environ


def _env_int(name: str, default: int) -> int:
    raw = _ENV.get(name, "")
    return int(raw) if raw.strip() else default


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


bind = f"{_ENV.get('HOST', '127.0.0.1')}:{_env_int('PORT', 8000)}"
workers = _env_int("WEB_CONCURRENCY", min(_usable_cpus(), 4))
threads = _env_int("GUNICORN_THREADS", 1)
worker_class = "gthread" if threads > 1 else "sync"
timeout = _env_int("GUNICORN_TIMEOUT", 30)
graceful_timeout = _env_int("GUNICORN_GRACEFUL_TIMEOUT", 8)
keepalive = _env_int("GUNICORN_KEEPALIVE", 5)
max_requests = _env_int("GUNICORN_MAX_REQUESTS", 0)
max_requests_jitter = max_requests // 10
preload_app = False
# gunicorn ≥ 25 opens a control socket in $HOME by default: unused here, and parallel servers
# (tests, several containers sharing a home) would fight over its one path.
control_socket_disable = True
# The app writes one JSON line per request itself; gunicorn's own access log would duplicate it.
accesslog = None
errorlog = "-"
loglevel = _ENV.get("GUNICORN_LOGLEVEL", "info")
# Worker heartbeats on tmpfs: a container's overlay /tmp can stall them under disk load.
worker_tmp_dir = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None

# prometheus_client chooses per-process files at import time, so the folder must be in the
# environment before any worker imports services.metrics: set it here, in the master.
_OWN_PROMETHEUS_DIR = not _ENV.get("PROMETHEUS_MULTIPROC_DIR")
if _OWN_PROMETHEUS_DIR:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="mhist-prometheus-")


def on_starting(server) -> None:
    """Master, before forking: empty the metrics folder and check the model file cheaply.

    Only a file check here: importing numpy/onnxruntime in the master starts native threads
    (OpenBLAS), and workers forked after that hang at exit until SIGKILL (seen in the image:
    a 10 s stop instead of 1 s). A file that exists but is not a usable model fails in the
    workers' create_app instead: gunicorn then exits with status 3 ("Worker failed to boot"),
    the ModelLoadError message as the last line of each worker's log.
    """
    _clear_folder(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    if os.environ.get("MODEL_REQUIRED", "1").strip().lower() in ("0", "false", "no", "off"):
        return
    problem = _model_file_problem(os.environ.get("MODEL_PATH", ""))
    if problem:
        _fail(server, problem)


def _model_file_problem(path: str) -> str | None:
    if not path:
        return "MODEL_PATH is not set; point it at an exported ONNX file"
    if not os.path.isfile(path):
        return f"model file {path} does not exist (set MODEL_PATH to an ONNX file)"
    if not os.access(path, os.R_OK):
        return f"model file {path} is not readable by uid {os.getuid()}"
    if os.path.getsize(path) == 0:
        return f"model file {path} is empty (0 bytes)"
    return None


def post_fork(server, worker) -> None:
    """Worker, before the app is imported: size ORT threads from the final worker settings."""
    if not os.environ.get("ORT_INTRA_OP_THREADS"):
        per_worker = max(1, _usable_cpus() // max(1, server.cfg.workers * server.cfg.threads))
        os.environ["ORT_INTRA_OP_THREADS"] = str(per_worker)
    server.log.info("worker %s: ORT intra-op threads %s", worker.pid,
                    os.environ["ORT_INTRA_OP_THREADS"])


def child_exit(server, worker) -> None:
    """Master: drop a dead worker's live gauges from the aggregated metrics."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server) -> None:
    if _OWN_PROMETHEUS_DIR:
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)


def _clear_folder(folder: str) -> None:
    """Counters from a previous run in a reused folder would be summed into this one's."""
    os.makedirs(folder, exist_ok=True)
    for name in os.listdir(folder):
        if name.endswith(".db"):
            os.remove(os.path.join(folder, name))


def _fail(server, message: str) -> None:
    server.log.error("cannot start: %s", message)
    print(f"mhist: cannot start: {message}", file=sys.stderr, flush=True)
    on_exit(server)
    sys.exit(1)
