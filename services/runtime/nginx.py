"""The buffering front server: nginx before gunicorn, as SageMaker's own containers run it.

gunicorn's sync workers read the request themselves, with no read timeout: a client that
dribbles its headers or body holds a worker until gunicorn's worker timeout kills it, and a
few such clients take the service down before Flask ever runs. nginx reads every request
completely (headers and body, with read timeouts) before it hands it to gunicorn over a unix
socket, so a worker only ever sees whole requests, and nginx holds thousands of slow
connections for the price of a few kilobytes each.

`run(settings)` (called by `python -m services.runtime.server` when FRONT_SERVER=nginx) writes the
nginx configuration from the settings, starts gunicorn on a unix socket and nginx on
HOST:PORT, and supervises both: when either exits the other is stopped and the container exits
with the first one's status; SIGTERM stops nginx gracefully first (no new connections, in-flight
requests finish), then drains gunicorn.

Answers nginx gives itself (never reaching the app) are JSON in the app's error shape:
400 (malformed HTTP), 408 (header or body too slow; nginx usually just closes), 413 (body over
MAX_CONTENT_LENGTH, chunked bodies included), 414/494 (request line or headers too large),
503 (the app is not up yet, or restarting).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from services.web.settings import Settings

NGINX = "nginx"
# Whole headers within this time; the body may pause at most this long between two reads.
HEADER_TIMEOUT_S = 10
BODY_TIMEOUT_S = 4
# Bodies up to this size stay in memory; larger ones (up to MAX_CONTENT_LENGTH) go to a file.
BODY_BUFFER = "1m"
MAX_CONNECTIONS = 1024

_NGINX_ERRORS = {
    400: ("bad_request", "The HTTP request is malformed."),
    408: ("request_timeout", "The request was not received in time."),
    413: ("payload_too_large", "The request body is over {limit} bytes (MAX_CONTENT_LENGTH)."),
    414: ("uri_too_long", "The request line is too long."),
    494: ("request_header_too_large", "The request headers are too large."),
    502: ("service_unavailable", "The model server is starting or restarting; retry shortly."),
    503: ("service_unavailable", "The model server is starting or restarting; retry shortly."),
    504: ("gateway_timeout", "The model server did not answer in time."),
    505: ("http_version_not_supported", "Only HTTP/1.0 and HTTP/1.1 are served."),
}


def nginx_conf(settings: Settings, run_dir: Path, upstream: Path) -> str:
    """nginx.conf for these settings; every path nginx writes is under `run_dir`."""
    pages = "\n".join(_error_page(status, code, message, settings)
                      for status, (code, message) in _NGINX_ERRORS.items())
    # The Open Inference Protocol's routes answer errors as {"error": "..."}
    # (services/web/routes/v2.py): nginx's own too, where it knows the location (413, 408).
    v2_pages = "\n".join(_error_page(status, code, message, settings, v2=True)
                         for status, (code, message) in _NGINX_ERRORS.items())
    v2_redirects = "\n".join(f"            {line.strip()}" for line in v2_pages.splitlines()
                             if line.strip().startswith("error_page"))
    v2_locations = "\n".join(line for line in v2_pages.splitlines()
                              if not line.strip().startswith("error_page"))
    proxy = f"""proxy_pass http://app;
            proxy_request_buffering on;  # the whole body before gunicorn sees the request
            proxy_http_version 1.1;
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_read_timeout {settings.timeout + 5}s;"""
    return f"""
worker_processes 1;
pid {run_dir}/nginx.pid;
error_log stderr error;
events {{ worker_connections {MAX_CONNECTIONS}; }}
http {{
    access_log off;  # the app writes one JSON line per request
    server_tokens off;
    client_body_temp_path {run_dir}/body;
    proxy_temp_path {run_dir}/proxy;
    fastcgi_temp_path {run_dir}/fastcgi;
    uwsgi_temp_path {run_dir}/uwsgi;
    scgi_temp_path {run_dir}/scgi;
    client_header_timeout {HEADER_TIMEOUT_S}s;
    client_body_timeout {BODY_TIMEOUT_S}s;
    send_timeout {HEADER_TIMEOUT_S}s;
    keepalive_timeout {settings.keepalive}s;
    client_max_body_size {settings.max_content_length};
    client_body_buffer_size {BODY_BUFFER};
    large_client_header_buffers 4 8k;
    upstream app {{ server unix:{upstream}; }}
    server {{
        listen {_listen(settings)} default_server;
        location / {{
            {proxy}
        }}
        location /v2/ {{
            {proxy}
{v2_redirects}
        }}
        location = /v2 {{  # else nginx answers /v2 with a redirect to /v2/
            {proxy}
{v2_redirects}
        }}
{pages}
{v2_locations}
    }}
}}
"""


def _listen(settings: Settings) -> str:
    host = settings.host
    return f"[{host}]:{settings.port}" if ":" in host else f"{host}:{settings.port}"


def _error_page(status: int, code: str, message: str, settings: Settings,
                v2: bool = False) -> str:
    text = message.format(limit=settings.max_content_length)
    body = json.dumps({"error": text} if v2 else {"error": {"code": code, "message": text}})
    shown = 503 if status in (502, 503) else (400 if status == 494 else status)
    page = f"/_mhist_error{'_v2' if v2 else ''}/{status}"
    # A URI, not a named location: nginx cannot redirect a request whose line it could not
    # parse to a named location, and would answer its own HTML 500 instead.
    return (f"        error_page {status} ={shown} {page};\n"
            f"        location = {page} {{ internal; "
            f"default_type application/json; "
            f"add_header X-Content-Type-Options nosniff always; "
            f"return {shown} '{body}'; }}")


def run(settings: Settings) -> int:
    """Start gunicorn and nginx, supervise both; the exit status of whichever stops first."""
    nginx = shutil.which(NGINX) or shutil.which(NGINX, path="/usr/sbin:/sbin")
    if not nginx:
        print("mhist: cannot start: FRONT_SERVER=nginx but no nginx executable is installed",
              file=sys.stderr, flush=True)
        return 1
    run_dir = Path(tempfile.mkdtemp(prefix="mhist-front-"))
    # Traversable by nginx's workers, which drop to an unprivileged user when started as root.
    run_dir.chmod(0o711)
    upstream = run_dir / "gunicorn.sock"
    conf = run_dir / "nginx.conf"
    conf.write_text(nginx_conf(settings, run_dir, upstream))
    gunicorn = subprocess.Popen([sys.executable, "-m", "services.runtime.server", "--upstream",
                                 f"unix:{upstream}"])
    front = subprocess.Popen([nginx, "-c", str(conf), "-e", "stderr", "-g", "daemon off;"])
    stopping: list[int] = []

    def stop(signum: int, _frame: object) -> None:
        stopping.append(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        return _supervise(gunicorn, front, stopping, settings.graceful_timeout)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def _supervise(gunicorn: subprocess.Popen, front: subprocess.Popen, stopping: list[int],
               grace: int) -> int:
    while not stopping:
        for process, other in ((gunicorn, front), (front, gunicorn)):
            status = process.poll()
            if status is not None:
                _stop(other, signal.SIGQUIT if other is front else signal.SIGTERM, grace)
                return status
        time.sleep(0.05)
    # Graceful: nginx first (stops accepting, finishes what it forwarded), then gunicorn.
    _stop(front, signal.SIGQUIT, grace)
    return _stop(gunicorn, signal.SIGTERM, grace)


def _stop(process: subprocess.Popen, signum: int, grace: int) -> int:
    if process.poll() is None:
        process.send_signal(signum)
        try:
            process.wait(timeout=grace + 1)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode or 0
