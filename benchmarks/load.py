"""HTTP clients for the benchmarks: one request, and a bounded closed-loop load on 127.0.0.1.

http.client rather than requests: less client-side CPU per request, which matters when client
and server share two cores. Each client thread keeps its own connection (reconnecting when a
sync gunicorn worker closes it, as it does after every response).
"""

from __future__ import annotations

import http.client
import itertools
import json
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from benchmarks.timing import latency_stats


@dataclass
class Response:
    status: int
    body: bytes
    seconds: float

    def json(self) -> object:
        return json.loads(self.body)


class Client:
    """A keep-alive HTTP/1.1 connection to one host:port; `post` reconnects when needed."""

    def __init__(self, base_url: str, timeout: float = 60.0) -> None:
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.timeout = timeout
        self.conn: http.client.HTTPConnection | None = None

    def post(self, path: str, body: bytes, content_type: str) -> Response:
        started = time.perf_counter()
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self.conn.request("POST", path, body=body, headers={"Content-Type": content_type})
                reply = self.conn.getresponse()
                data = reply.read()
                if reply.getheader("Connection", "").lower() == "close":
                    self.close()
                return Response(reply.status, data, time.perf_counter() - started)
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                # A kept-alive connection the server closed meanwhile: one fresh retry.
                self.close()
                if attempt == 2:
                    raise
                started = time.perf_counter()
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def closed_loop(url: str, path: str, body: bytes, content_type: str, concurrency: int,
                total: int, validate=None, timeout: float = 60.0) -> dict:
    """`concurrency` clients each send their next request as soon as the last one answered,
    until `total` requests have been sent. Latency stats of the successful ones, images/s over
    the wall time, and the error count (non-200, invalid body, or exception)."""
    counter = itertools.count()
    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[str] = []

    def worker() -> None:
        client = Client(url, timeout)
        try:
            while True:
                with lock:
                    if next(counter) >= total:
                        return
                try:
                    reply = client.post(path, body, content_type)
                except OSError as exc:
                    with lock:
                        errors.append(repr(exc))
                    client.close()
                    continue
                problem = None if reply.status == 200 else f"HTTP {reply.status}"
                if problem is None and validate is not None:
                    problem = validate(reply)
                with lock:
                    if problem is None:
                        latencies.append(reply.seconds)
                    else:
                        errors.append(f"{problem}: {reply.body[:200]!r}")
        finally:
            client.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout * total)
    wall = time.perf_counter() - started
    record = latency_stats(latencies) if latencies else {"n": 0}
    record.update({
        "concurrency": concurrency,
        "requests": total,
        "ok": len(latencies),
        "errors": len(errors),
        "error_examples": errors[:3],
        "wall_s": wall,
        # Throughput counts only the answered-well requests.
        "throughput_images_per_s": len(latencies) / wall if wall > 0 else 0.0,
    })
    return record


def wait_until_ok(send, timeout: float, interval: float = 0.05) -> tuple[float, object]:
    """Call `send()` until it returns a Response with status 200; (seconds, that response).

    Connection refused/reset while the server is still starting count as "not yet".
    """
    started = time.perf_counter()
    last: object = "no answer"
    while time.perf_counter() - started < timeout:
        try:
            reply = send()
        except (OSError, http.client.HTTPException) as exc:
            last = repr(exc)
        else:
            if reply.status == 200:
                return time.perf_counter() - started, reply
            last = f"HTTP {reply.status}: {reply.body[:200]!r}"
        time.sleep(interval)
    raise TimeoutError(f"no 200 within {timeout:.0f} s (last: {last})")
