"""The one gunicorn configuration, for the Flask container and the SageMaker container alike.

    MODEL_PATH=artifacts/model.int8.onnx .venv/bin/python -m services.runtime.server

Every value comes from `services.web.settings.Settings` (each declared once, with its
variable and description), so the server and the app agree on workers, threads and ORT
threads; a bad value stops the master with one line naming the variable. On the `sagemaker`
target SageMaker's own variables (SAGEMAKER_BIND_TO_PORT, SAGEMAKER_MODEL_SERVER_WORKERS, ...)
are read instead.

Why these choices:
- preload_app off: each worker builds its own onnxruntime session after the fork (ORT's thread
  pools do not survive fork, and a per-worker session keeps workers independent).
- workers × threads × ORT threads ≤ CPUs (Settings sizes ORT threads so): no oversubscription,
  and ORT would otherwise size its pool from the host's cores, not the container's quota.
- SIGTERM: each worker closes its listening socket first (new connections are refused), then
  finishes its in-flight request (services/runtime/gunicorn_sigterm.py);
  graceful_timeout (8 s, 25 s on
  SageMaker) fits inside the 10 s of `docker stop` and the 30 s SageMaker waits before SIGKILL.
- A missing or empty model file stops the master before it forks, with one clear line and
  exit status 1; a file that is not a valid exported model stops every worker at boot and
  gunicorn exits with status 3. /ready is 503 only when MODEL_REQUIRED=0 lets the app start.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile

from gunicorn import util as _gunicorn_util

from services.core.files import model_file_problem
from services.runtime.gunicorn_sigterm import post_worker_init  # noqa: F401 - a gunicorn hook
from services.runtime.nginx import BODY_TIMEOUT_S
from services.web.settings import Settings, SettingsError

try:
    _SETTINGS = Settings.from_env()
except SettingsError as _exc:
    # One line, not gunicorn's "Failed to read config file" traceback.
    print(f"mhist: cannot start: {_exc}", file=sys.stderr, flush=True)
    sys.exit(1)

bind = f"{_SETTINGS.host}:{_SETTINGS.port}"
workers = _SETTINGS.workers
threads = _SETTINGS.threads
worker_class = _SETTINGS.worker_class
timeout = _SETTINGS.timeout
graceful_timeout = min(_SETTINGS.graceful_timeout, _SETTINGS.timeout)
keepalive = _SETTINGS.keepalive
max_requests = _SETTINGS.max_requests
max_requests_jitter = max_requests // 10
preload_app = False
# nginx (services/runtime/nginx.py) already bounds the header block to 4 × 8 KB;
# gunicorn's own limit
# of 100 fields would answer a request with more with its HTML 400 page instead of our JSON.
limit_request_fields = 1000
# gunicorn ≥ 25 opens a control socket in $HOME by default: unused here, and parallel servers
# (tests, several containers sharing a home) would fight over its one path.
control_socket_disable = True
# The app writes one JSON line per request itself; gunicorn's own access log would duplicate it.
accesslog = None
errorlog = "-"
loglevel = _SETTINGS.log_level
# Worker heartbeats on tmpfs: a container's overlay /tmp can stall them under disk load.
worker_tmp_dir = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None

# prometheus_client chooses per-process files at import time, so the folder must be in the
# environment before any worker imports services.web.metrics: set it here, in the master.
_OWN_PROMETHEUS_DIR = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if _OWN_PROMETHEUS_DIR:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="mhist-prometheus-")


def _write_json_error(sock, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's answer to a request it cannot parse (a control character in a header, ...),
    as our JSON error instead of its HTML page. nginx catches most malformed HTTP first; this
    is what passes nginx and still fails gunicorn's stricter parser."""
    code = "_".join(reason.lower().split()) or "bad_request"
    body = json.dumps({"error": {"code": code, "message": mesg or reason}}).encode()
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nX-Content-Type-Options: nosniff\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode("latin-1")
    _gunicorn_util.write_nonblock(sock, head + body)


# The one place gunicorn writes an error page itself (gunicorn.workers.base.handle_error calls
# it through the module): replaced in the master, so every forked worker has it.
_gunicorn_util.write_error = _write_json_error


def on_starting(server) -> None:
    """Master, before forking: empty the metrics folder and check the model file cheaply.

    Only a file check here: importing numpy/onnxruntime in the master starts native threads
    (OpenBLAS), and workers forked after that hang at exit until SIGKILL (seen in the image:
    a 10 s stop instead of 1 s). A file that exists but is not a usable model fails in the
    workers' create_app instead: gunicorn then exits with status 3 ("Worker failed to boot"),
    the ModelLoadError message as the last line of each worker's log.
    """
    _clear_folder(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    if not _SETTINGS.model_required:
        return
    problem = model_file_problem(_SETTINGS.model_path or "")
    if problem:
        _fail(server, problem)


def pre_request(worker, req) -> None:
    """Worker, headers parsed, before the app: bound each wait for more of the request body.

    gunicorn reads the body with no timeout. Without nginx in front (`make serve`) a client that
    stops sending mid-body, or frames a chunked body with bare LFs (gunicorn's parser waits for
    a CRLF that never comes), would hold a sync worker until the worker timeout kills it, and a
    gthread worker's thread for ever. Now a read that waits BODY_TIMEOUT_S (nginx's own
    client_body_timeout) raises, and the app answers 408 (services/web/limits.py). Behind nginx
    the body arrives whole, so this never fires there. It also bounds each send of the answer.
    """
    sock = getattr(getattr(req, "unreader", None), "sock", None)
    if sock is not None:
        sock.settimeout(BODY_TIMEOUT_S)


def post_fork(server, worker) -> None:
    server.log.info("worker %s: %s worker, ORT intra-op threads %s", worker.pid,
                    _SETTINGS.worker_class, _SETTINGS.ort_threads)


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
