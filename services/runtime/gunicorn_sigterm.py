"""gunicorn hook: on SIGTERM a worker stops listening at once, then drains.

The master closes its listening socket on SIGTERM, but every worker holds its own copy until
it exits, so the kernel keeps accepting connections that nobody will serve (they hang, then
reset). Closing the worker's copies first makes new connections fail fast with "connection
refused" (a load balancer retries elsewhere) while in-flight requests finish normally.

Installed by services/runtime/gunicorn_conf.py, the one server configuration.
"""

from __future__ import annotations

import signal


def post_worker_init(worker) -> None:
    drain = worker.handle_exit  # gunicorn's own: stop the loop after the current request

    def stop_listening_then_drain(sig, frame) -> None:
        for sock in worker.sockets:
            sock.close()
        drain(sig, frame)

    signal.signal(signal.SIGTERM, stop_listening_then_drain)
