"""Hostile slow clients for a server on 127.0.0.1: dribbled headers, dribbled bodies, garbage.

    with SlowClients("127.0.0.1", port, count=16, interval_s=5.0, hold_s=60.0) as attack:
        ...                      # the service must keep answering normal requests meanwhile
    attack.results               # one Outcome per connection: how and when it was cut off
Each of the `count` attackers reconnects as soon as it is cut off, until `hold_s` is over.

Every loop is bounded by `hold_s` (a slow-client test must not hang
the suite when the server under test does).
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass

KINDS = ("headers", "body", "garbage", "tls")
_TLS_HELLO = bytes.fromhex("16030100c8010000c40303") + bytes(41)  # a ClientHello's first bytes


@dataclass
class Outcome:
    kind: str
    cut_after_s: float | None  # None: still open when the attack ended
    answer: bytes  # what the server sent before closing (b"" for a plain close)


def _chunks(kind: str) -> tuple[bytes, list[bytes]]:
    """(what is sent at once, what is then sent one piece per interval)."""
    if kind == "headers":
        return b"POST /predict HTTP/1.1\r\n", [f"X-Slow-{i}: x\r\n".encode() for i in range(100)]
    if kind == "body":
        head = (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                b"Content-Length: 1000000\r\n\r\n")
        return head, [b"\x89"] * 1000
    if kind == "garbage":
        return b"\x00\x01garbage without a line end", [b"\x02"] * 1000
    return _TLS_HELLO[:20], [_TLS_HELLO[20:21]] * 1000


def _one(host: str, port: int, kind: str, interval_s: float, deadline: float) -> Outcome:
    started = time.monotonic()
    first, rest = _chunks(kind)
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.settimeout(0.2)
        answer = b""
        try:
            sock.sendall(first)
            pieces = iter(rest)
            next_send = started + interval_s
            while time.monotonic() < deadline:
                try:
                    data = sock.recv(4096)
                    if not data:  # closed by the server
                        return Outcome(kind, time.monotonic() - started, answer)
                    answer += data
                except TimeoutError:
                    pass
                if time.monotonic() >= next_send:
                    sock.sendall(next(pieces, b"x"))
                    next_send += interval_s
        except (ConnectionError, OSError):
            return Outcome(kind, time.monotonic() - started, answer)
    return Outcome(kind, None, answer)


class SlowClients:
    def __init__(self, host: str, port: int, count: int = 16, interval_s: float = 5.0,
                 hold_s: float = 60.0) -> None:
        self.host, self.port, self.count = host, port, count
        self.interval_s, self.hold_s = interval_s, hold_s
        self.results: list[Outcome] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def __enter__(self) -> SlowClients:
        deadline = time.monotonic() + self.hold_s
        for index in range(self.count):
            kind = KINDS[index % len(KINDS)]
            thread = threading.Thread(target=self._run, args=(kind, deadline), daemon=True)
            thread.start()
            self._threads.append(thread)
        time.sleep(0.5)  # every socket connected and sending before the caller measures
        return self

    def _run(self, kind: str, deadline: float) -> None:
        """A persistent attacker: reconnects whenever the server cuts it off."""
        while time.monotonic() < deadline - 0.5:
            try:
                outcome = _one(self.host, self.port, kind, self.interval_s, deadline)
            except OSError:
                outcome = Outcome(kind, 0.0, b"connect failed")
                time.sleep(0.5)
            with self._lock:
                self.results.append(outcome)
            # A slow client, not a flood: wait a moment before coming back.
            time.sleep(max(0.0, 1.0 - (outcome.cut_after_s or 1.0)))

    def __exit__(self, *exc: object) -> None:
        for thread in self._threads:
            thread.join(timeout=self.hold_s + 10)
