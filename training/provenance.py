"""Where runs are recorded and which code made them; shared by training and export.

Standard library only: export and sagemaker/package.py import this without torch or mlflow.
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

# Relative: the store is the mlflow.db of the folder a command runs in (the repo root for make).
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"

_CODE_ROOT = Path(__file__).resolve().parents[1]  # the checkout this code runs from
# Tracking stores reached over the network, with their default ports. MLflow retries an
# unreachable one for about 100 s (measured: 106 s against a dead PostgreSQL) and then ends in
# a driver traceback; one TCP connect first turns that into one line.
NETWORK_STORES = {"postgresql": 5432, "mysql": 3306, "mssql": 1433, "http": 80, "https": 443}


class TrackingUnreachable(ValueError):
    """The tracking URI names a server that does not accept connections."""


def absolute_tracking_uri(uri: str) -> str:
    """sqlite:///relative.db → sqlite:////abs/relative.db, so the card works from any folder."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri[len(prefix):]).resolve())
    return uri


def check_tracking_reachable(uri: str, timeout: float = 5.0) -> None:
    """Raise TrackingUnreachable, with what to fix, when a network tracking store does not
    answer; files, sqlite and URIs without a host (a unix socket) are left to MLflow."""
    parts = urlsplit(uri)
    scheme = parts.scheme.split("+", 1)[0]  # postgresql+psycopg → postgresql
    if scheme not in NETWORK_STORES or not parts.hostname:
        return
    try:
        port = parts.port or NETWORK_STORES[scheme]
    except ValueError:
        raise TrackingUnreachable(f"tracking URI {_redacted(parts)} has an invalid port") from None
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
    except OSError as exc:
        raise TrackingUnreachable(
            f"the MLflow tracking store {_redacted(parts)} does not answer on "
            f"{parts.hostname}:{port} ({exc.strerror or exc}); start it, or point "
            "--tracking-uri / MLFLOW_TRACKING_URI at a running one"
        ) from None


def _redacted(parts) -> str:
    """The URI without its password, for messages and logs."""
    host = parts.hostname or ""
    user = f"{parts.username}@" if parts.username else ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{user}{host}{port}{parts.path}"


def git_commit() -> str | None:
    """HEAD of the checkout this code comes from (not of the working folder), or None."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=_CODE_ROOT, capture_output=True,
                             text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None  # not a git checkout, git missing, or no commit yet
    return out.stdout.strip() or None
