"""The Open Inference Protocol's client side for tests and benchmarks: real HTTP servers on
127.0.0.1 that `tritonclient.http` can talk to, for the targets that run in this process.

    with serve_wsgi(app) as url:                   # the Flask or SageMaker app, werkzeug server
        client = tritonclient.http.InferenceServerClient(url)
    with serve_wsgi(lambda_gateway(module)) as url:  # lambda/handler.py behind an HTTP API

`lambda_gateway` plays API Gateway (HTTP API, payload 2.0): every HTTP request becomes an event
built by tests/support/events.py and goes through the real `handler(event, context)`, binary
bodies base64-encoded as API Gateway does; the proxy response becomes the HTTP answer.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable, Iterator
from http import HTTPStatus
from types import ModuleType
from typing import Any

from werkzeug.serving import make_server
from werkzeug.wrappers import Request

from tests.support.targets import LambdaTarget

# Hop-by-hop or recomputed by the server: never copied from a proxy response.
_SKIPPED_HEADERS = frozenset({"content-length", "transfer-encoding", "connection"})


@contextlib.contextmanager
def serve_wsgi(app: Callable[..., Iterable[bytes]]) -> Iterator[str]:
    """`app` on a threaded werkzeug server at 127.0.0.1:<free port>; yields 'host:port'."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


def lambda_gateway(module: ModuleType, kind: str = "http_api") -> Callable[..., Iterable[bytes]]:
    """A WSGI app that hands each request to lambda/handler.py as an API Gateway event."""
    target = LambdaTarget(module, kind)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        request = Request(environ)
        path = request.full_path.rstrip("?")
        headers = {k: v for k, v in request.headers.items() if k.lower() != "content-length"}
        reply = target.request(request.method, path, headers, request.get_data())
        phrase = HTTPStatus(reply.status).phrase
        start_response(
            f"{reply.status} {phrase}",
            [(k, v) for k, v in reply.headers.items() if k.lower() not in _SKIPPED_HEADERS]
            + [("Content-Length", str(len(reply.body)))],
        )
        return [reply.body]

    return app
