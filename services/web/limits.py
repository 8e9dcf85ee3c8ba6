"""Request-body limits, each 413 naming the limit it hit: the app's `request_class`.

werkzeug applies MAX_CONTENT_LENGTH, the multipart part count and the size of a text field,
but two things need help:
- a body without Content-Length (chunked; gunicorn sets `wsgi.input_terminated`) is read up
  to the limit and the rest is dropped: the app would parse a truncated body as if it were
  whole. Here it is read up to the limit plus one byte, and that byte is a 413;
- each limit raises the same bare RequestEntityTooLarge. Here the parts are counted as the
  body streams in, so too many parts is told apart from a text field that is too large;
- the server's own body reader fails in its own ways: gunicorn (serving without nginx, as
  `make serve` does) raises its parser's errors for malformed chunked framing and a socket
  timeout when the body stops arriving (services/runtime/gunicorn_conf.py sets one). Here they
  become a 400 `malformed_body` and a 408 `request_timeout`, never a 500.
"""

from __future__ import annotations

import io
from typing import IO, NoReturn

from flask import Request
from werkzeug.exceptions import HTTPException
from werkzeug.utils import cached_property
from werkzeug.wrappers import Request as WerkzeugRequest

from services.core.errors import ServiceError

# Parts of one multipart form: a batch is at most MAX_BATCH files, so this only stops abuse
# (werkzeug's default; each part costs a FileStorage or a string while the form is parsed).
MAX_FORM_PARTS = 1000
SHOWN_REASON_CHARS = 120  # of the server's own words on a malformed body, in the 400
CHUNKED_FRAMING = ("with Transfer-Encoding: chunked each chunk is '<hex size>\\r\\n<data>\\r\\n' "
                   "and the body ends with '0\\r\\n\\r\\n' (RFC 9112, section 7.1)")


class BoundedRequest(Request):
    """Flask's Request with the body limits above."""

    @cached_property
    def stream(self) -> IO[bytes]:
        limit = self.max_content_length
        boundary = self.mimetype_params.get("boundary", "")
        if self.mimetype != "multipart/form-data":
            boundary = ""
        if "wsgi.input_terminated" not in self.environ:
            source = super().stream  # werkzeug bounds it by Content-Length (413 above limit)
            return _CountingBody(source, None, boundary.encode()) if boundary else source
        # The server ends the body (chunked, or at Content-Length): read it here, capped.
        if limit is not None and self.content_length is not None and self.content_length > limit:
            raise too_large(self)
        return _CountingBody(self.environ["wsgi.input"], limit, boundary.encode())

    @property
    def max_form_parts(self) -> int:
        # werkzeug's own count, one past ours: ours sees each delimiter before werkzeug has
        # parsed the part after it, so a form over the limit always gets our 413.
        return MAX_FORM_PARTS + 1


def too_large(request: WerkzeugRequest) -> ServiceError:
    """The 413 for a bare RequestEntityTooLarge: over Content-Length's limit, or else (a
    multipart body within it) werkzeug's limit on a text field."""
    limit = request.max_content_length
    length = request.content_length
    if request.mimetype == "multipart/form-data" and (length is None or limit is None
                                                      or length <= limit):
        return ServiceError(
            413, "payload_too_large",
            f"A text field of the form is over {request.max_form_memory_size} bytes, the limit "
            "for a field that is not a file; upload images as file parts.",
        )
    what = f"{limit} bytes (MAX_CONTENT_LENGTH)" if limit else "the server's limit"
    return ServiceError(413, "payload_too_large", f"The request body is over {what}.")


class _CountingBody(io.RawIOBase):
    """`source` read at most to `cap` bytes (one byte more is a 413), counting multipart
    delimiters on the way when there is a boundary."""

    def __init__(self, source: IO[bytes], cap: int | None, boundary: bytes) -> None:
        self._source = source
        self._cap = cap
        self._read = 0
        self._delimiter = b"\r\n--" + boundary if boundary else b""
        self._tail = b"\r\n"  # the first delimiter may open the body, without a CRLF
        self._delimiters = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        want = len(buffer) if self._cap is None else min(len(buffer), self._cap + 1 - self._read)
        try:
            data = self._source.read(want)
        except (ServiceError, HTTPException):
            raise
        except Exception as exc:  # noqa: BLE001 - the server's reader raises its own classes
            _unreadable(exc)
        self._read += len(data)
        if self._cap is not None and self._read > self._cap:
            raise ServiceError(
                413, "payload_too_large",
                f"The request body, sent without Content-Length, is over {self._cap} bytes "
                "(MAX_CONTENT_LENGTH).",
            )
        if self._delimiter and data:
            self._count(data)
        buffer[: len(data)] = data
        return len(data)

    def _count(self, data: bytes) -> None:
        window = self._tail + data
        self._delimiters += window.count(self._delimiter)
        self._tail = window[-(len(self._delimiter) - 1):]  # a delimiter split across reads
        if self._delimiters > MAX_FORM_PARTS + 1:  # N parts have N + 1 (the closing one)
            raise ServiceError(
                413, "payload_too_large",
                f"The multipart form has more than {MAX_FORM_PARTS} parts, the limit per "
                "request; send one file part per image.",
            )


def _unreadable(exc: Exception) -> NoReturn:
    """The body the server could not deliver: 408 when it stopped arriving, else 400."""
    if isinstance(exc, TimeoutError):
        raise ServiceError(
            408, "request_timeout",
            "The request body stopped arriving before it was complete; send it without "
            f"pauses ({CHUNKED_FRAMING}: a line ended by a bare LF never ends).",
        ) from None
    reason = " ".join(str(exc).split())[:SHOWN_REASON_CHARS] or type(exc).__name__
    raise ServiceError(
        400, "malformed_body",
        f"The request body could not be read ({reason}); {CHUNKED_FRAMING}.",
    ) from None
