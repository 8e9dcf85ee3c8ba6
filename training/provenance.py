"""Where runs are recorded and which code made them; shared by training and export.

Standard library only: export and sagemaker/package.py import this without torch or mlflow.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

# Relative: the store is the mlflow.db of the folder a command runs in (the repo root for make).
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"

_CODE_ROOT = Path(__file__).resolve().parents[1]  # the checkout this code runs from


def git_commit() -> str | None:
    """HEAD of the checkout this code comes from (not of the working folder), or None."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=_CODE_ROOT, capture_output=True,
                             text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None  # not a git checkout, git missing, or no commit yet
    return out.stdout.strip() or None
