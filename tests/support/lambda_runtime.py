"""A small, real implementation of the AWS Lambda Runtime API for tests and benchmarks.

The Lambda service hands events to a function's runtime client (awslambdaric) over HTTP:
https://docs.aws.amazon.com/lambda/latest/dg/runtimes-api.html. This server plays the service's
side on 127.0.0.1 so a function image can be run unchanged with
`AWS_LAMBDA_RUNTIME_API=127.0.0.1:PORT`:

    GET  /2018-06-01/runtime/invocation/next            → the next queued event (blocks)
    POST /2018-06-01/runtime/invocation/{id}/response   → the handler's result
    POST /2018-06-01/runtime/invocation/{id}/error      → an unhandled error in the handler
    POST /2018-06-01/runtime/init/error                 → the INIT phase failed

awslambdaric 4.2.2 segfaults when `next` answers without `Content-Type: application/json`, so
every `next` response carries it plus the Lambda-Runtime-* headers the real service sends.

    with LambdaRuntimeServer() as runtime:
        start = time.perf_counter()
        ... start the container with AWS_LAMBDA_RUNTIME_API=runtime.address ...
        init_s = runtime.wait_first_next(timeout=60) - start
        result = runtime.invoke(event, timeout=30)   # Invocation: .response, .error, .latency_s
"""

from __future__ import annotations

import json
import queue
import re
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

API_PREFIX = "/2018-06-01/runtime"
DEFAULT_FUNCTION_ARN = "arn:aws:lambda:us-east-1:123456789012:function:mhist-classifier"
_RESULT_PATH = re.compile(rf"^{API_PREFIX}/invocation/(?P<id>[^/]+)/(?P<kind>response|error)$")


@dataclass
class Invocation:
    """One event's trip through the runtime; times are `time.perf_counter()` seconds."""

    request_id: str
    event: Any
    queued_at: float
    handed_out_at: float | None = None  # when a `next` call received the event
    completed_at: float | None = None  # when its response or error arrived
    response: Any = None  # the handler's return value (decoded JSON)
    error: dict | None = None  # body of …/error, when the handler raised
    error_type: str | None = None  # Lambda-Runtime-Function-Error-Type header
    done: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def latency_s(self) -> float:
        """Handler time as the runtime saw it: event handed out → result posted."""
        if self.handed_out_at is None or self.completed_at is None:
            raise RuntimeError(f"invocation {self.request_id} has not completed")
        return self.completed_at - self.handed_out_at


class RuntimeTimeout(TimeoutError):
    """The function did not do what the test waited for in time."""


class LambdaRuntimeServer:
    """Threaded Runtime API server on 127.0.0.1; events are served in the order queued."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0,
                 function_arn: str = DEFAULT_FUNCTION_ARN, timeout_ms: int = 30_000) -> None:
        self.function_arn = function_arn
        self.timeout_ms = timeout_ms
        self.invocations: dict[str, Invocation] = {}
        self.next_calls: list[float] = []  # perf_counter() of every `next` call
        self.init_error: dict | None = None
        self.unknown_posts: list[str] = []  # paths nobody should have called
        self._pending: queue.Queue[Invocation] = queue.Queue()
        self._first_next = threading.Event()
        self._init_failed = threading.Event()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._server = _QuietServer((host, port), _handler_class(self))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="lambda-runtime-api")

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def address(self) -> str:
        """HOST:PORT, the value for AWS_LAMBDA_RUNTIME_API."""
        host, port = self._server.server_address[:2]
        return f"{host}:{port}"

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self) -> LambdaRuntimeServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> LambdaRuntimeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what tests call ----------------------------------------------------------------------

    def submit(self, event: Any, request_id: str | None = None) -> Invocation:
        """Queue an event; the next `next` call receives it."""
        invocation = Invocation(request_id or str(uuid.uuid4()), event, time.perf_counter())
        with self._lock:
            self.invocations[invocation.request_id] = invocation
        self._pending.put(invocation)
        return invocation

    def invoke(self, event: Any, timeout: float = 30.0) -> Invocation:
        """Queue an event and wait for its response or error."""
        invocation = self.submit(event)
        if not invocation.done.wait(timeout):
            raise RuntimeTimeout(
                f"no result for invocation {invocation.request_id} within {timeout} s"
                + self._init_hint()
            )
        return invocation

    def wait_first_next(self, timeout: float = 60.0) -> float:
        """perf_counter() of the first `next` call: the function finished INIT."""
        if not self._first_next.wait(timeout):
            raise RuntimeTimeout(f"the function never asked for an event in {timeout} s"
                                 + self._init_hint())
        return self.next_calls[0]

    def wait_init_error(self, timeout: float = 60.0) -> dict:
        """The body the runtime posted to /runtime/init/error."""
        if not self._init_failed.wait(timeout):
            raise RuntimeTimeout(f"no init error was reported in {timeout} s")
        assert self.init_error is not None
        return self.init_error

    def _init_hint(self) -> str:
        return f"; INIT failed: {self.init_error}" if self.init_error else ""

    # -- request handling (called from server threads) ---------------------------------------

    def _next_invocation(self) -> Invocation | None:
        """Block like the real service until an event is queued (None when stopping)."""
        with self._lock:
            self.next_calls.append(time.perf_counter())
        self._first_next.set()
        while not self._stopping.is_set():
            try:
                invocation = self._pending.get(timeout=0.2)
            except queue.Empty:
                continue
            invocation.handed_out_at = time.perf_counter()
            return invocation
        return None

    def _next_headers(self, invocation: Invocation) -> dict[str, str]:
        deadline_ms = int(time.time() * 1000) + self.timeout_ms
        trace = (f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]};"
                 f"Parent={uuid.uuid4().hex[:16]};Sampled=0")
        return {
            "Content-Type": "application/json",  # awslambdaric segfaults without it
            "Lambda-Runtime-Aws-Request-Id": invocation.request_id,
            "Lambda-Runtime-Deadline-Ms": str(deadline_ms),
            "Lambda-Runtime-Invoked-Function-Arn": self.function_arn,
            "Lambda-Runtime-Trace-Id": trace,
        }

    def _complete(self, request_id: str, kind: str, body: Any, error_type: str | None) -> bool:
        with self._lock:
            invocation = self.invocations.get(request_id)
        if invocation is None or invocation.done.is_set():
            return False
        if kind == "response":
            invocation.response = body
        else:
            invocation.error = body if isinstance(body, dict) else {"raw": body}
            invocation.error_type = error_type
        invocation.completed_at = time.perf_counter()
        invocation.done.set()
        return True

    def _record_init_error(self, body: Any) -> None:
        self.init_error = body if isinstance(body, dict) else {"raw": body}
        self._init_failed.set()


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A stopped container drops its pending `next` connection: expected, not a failure.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _handler_class(runtime: LambdaRuntimeServer) -> type[BaseHTTPRequestHandler]:
    class RuntimeApiHandler(BaseHTTPRequestHandler):
        # The runtime client keeps its connection open between calls.
        protocol_version = "HTTP/1.1"
        # Headers and body leave in separate writes: without TCP_NODELAY, Nagle + delayed ACK
        # add ~40 ms to every `next`, which would swamp the latencies benchmarks measure.
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:
            return  # quiet: tests print their own measurements

        def do_GET(self) -> None:
            if self.path != f"{API_PREFIX}/invocation/next":
                self._send(HTTPStatus.NOT_FOUND, {"errorMessage": f"unknown path {self.path}",
                                                  "errorType": "NotFound"})
                return
            invocation = runtime._next_invocation()
            if invocation is None:  # server stopping: the real service would freeze the sandbox
                self._send(HTTPStatus.GONE, {"errorMessage": "runtime stopping",
                                             "errorType": "Stopping"})
                return
            body = json.dumps(invocation.event).encode()
            self._send_raw(HTTPStatus.OK, body, runtime._next_headers(invocation))

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = _json_or_text(raw)
            if self.path == f"{API_PREFIX}/init/error":
                runtime._record_init_error(body)
                self._send(HTTPStatus.ACCEPTED, {"status": "OK"})
                return
            match = _RESULT_PATH.match(self.path)
            if not match:
                runtime.unknown_posts.append(self.path)
                self._send(HTTPStatus.NOT_FOUND, {"errorMessage": f"unknown path {self.path}",
                                                  "errorType": "NotFound"})
                return
            error_type = self.headers.get("Lambda-Runtime-Function-Error-Type")
            if runtime._complete(match["id"], match["kind"], body, error_type):
                self._send(HTTPStatus.ACCEPTED, {"status": "OK"})
            else:
                self._send(HTTPStatus.BAD_REQUEST, {
                    "errorMessage": f"unknown or already completed request id {match['id']}",
                    "errorType": "InvalidRequestID"})

        def _send(self, status: HTTPStatus, document: dict) -> None:
            self._send_raw(status, json.dumps(document).encode(),
                           {"Content-Type": "application/json"})

        def _send_raw(self, status: HTTPStatus, body: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return RuntimeApiHandler


def _json_or_text(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return raw.decode("utf-8", "replace")
