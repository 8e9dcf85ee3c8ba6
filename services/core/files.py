"""File helpers shared by serving, export and deploy scripts (standard library only)."""

from __future__ import annotations

import hashlib
import os

_CHUNK = 1 << 20  # 1 MiB: hashes a 45 MB model without holding it in memory twice


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def model_file_problem(path: str) -> str | None:
    """What stops `path` from being a model file to load, in one line, or None: the cheap
    checks a process can make before importing onnxruntime (gunicorn's master, SageMaker's
    `serve`)."""
    if not path:
        return "MODEL_PATH is not set; point it at an exported ONNX file"
    if os.path.isdir(path):
        return f"MODEL_PATH {path} is a directory; point it at the ONNX file inside it"
    if not os.path.isfile(path):
        return f"model file {path} does not exist (set MODEL_PATH to an ONNX file)"
    if not os.access(path, os.R_OK):
        return f"model file {path} is not readable by uid {os.getuid()}"
    if os.path.getsize(path) == 0:
        return f"model file {path} is empty (0 bytes)"
    return None
