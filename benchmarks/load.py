"""HTTP clients for the benchmarks: one request, and a bounded closed-loop load on 127.0.0.1.

One client and one connection policy for every HTTP target (CONNECTION_POLICY): each request
opens its own TCP connection, says `Connection: close`, and is timed from before the connect
to the last byte of the body. gunicorn's sync workers close every connection anyway; giving
the servers that could keep one alive (nginx, uvicorn) the same policy keeps the rows alike.
http.client rather than requests: less client-side CPU per request, which matters when client
and server share two cores.
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

CONNECTION_POLICY = ("one new TCP connection per request (`Connection: close`), timed from "
                     "before the connect to the last byte of the response, by one "
                     "http.client client on 127.0.0.1")


@dataclass
class Response:
    status: int
    body: bytes
    seconds: float

    def json(self) -> object:
        return json.loads(self.body)


class Client:
    """Requests to one host:port, each on its own connection (CONNECTION_POLICY)."""

    def __init__(self, base_url: str, timeout: float = 60.0) -> None:
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.timeout = timeout

    def post(self, path: str, body: bytes, content_type: str) -> Response:
        started = time.perf_counter()
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            conn.request("POST", path, body=body, headers={"Content-Type": content_type,
                                                          "Connection": "close"})
            reply = conn.getresponse()
            data = reply.read()
        finally:
            conn.close()
        return Response(reply.status, data, time.perf_counter() - started)


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
        while True:
            with lock:
                if next(counter) >= total:
                    return
            try:
                reply = client.post(path, body, content_type)
            except (OSError, http.client.HTTPException) as exc:
                with lock:
                    errors.append(repr(exc))
                continue
            problem = None if reply.status == 200 else f"HTTP {reply.status}"
            if problem is None and validate is not None:
                problem = validate(reply)
            with lock:
                if problem is None:
                    latencies.append(reply.seconds)
                else:
                    errors.append(f"{problem}: {reply.body[:200]!r}")

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
