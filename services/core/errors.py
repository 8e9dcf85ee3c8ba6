"""The one error type every target turns into `{"error": {"code", "message"}}`."""

from __future__ import annotations

from collections.abc import Mapping


class ServiceError(Exception):
    """An error a client can act on: an HTTP status, a stable machine code and a message."""

    def __init__(self, status_code: int, code: str, message: str,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.headers = dict(headers or {})  # e.g. WWW-Authenticate on a 401

    def to_dict(self) -> dict:
        """`{"error": {"code", "message"}}` (services/core/contracts.py, Error)."""
        return {"error": {"code": self.code, "message": self.message}}

    def item_error(self) -> dict:
        """A failed batch item: the error and its status (contracts.ItemError)."""
        return {**self.to_dict(), "status": self.status_code}


class ModelLoadError(RuntimeError):
    """The model file is missing, not ONNX or lacks the metadata serving needs (start-up only)."""
