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
