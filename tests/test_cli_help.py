"""Every command-line tool a user runs answers --help with exit 0 and shows its defaults."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

COMMANDS = {
    "train": ["training/train.py"],
    "export": ["export/to_onnx.py"],
    "sample": ["-m", "training.sample_data"],
    "predict": ["-m", "services.predict"],
    "slides": ["-m", "services.slides"],
    "server": ["-m", "services.runtime.server"],
    "images": ["-m", "awsdeploy.images", "build"],
    "lambda deploy": ["lambda/deploy.py", "deploy"],
    "sagemaker deploy": ["sagemaker/deploy.py", "deploy"],
    "sagemaker package": ["sagemaker/package.py"],
}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_exits_0_and_shows_defaults(name: str) -> None:
    result = subprocess.run([sys.executable, *COMMANDS[name], "--help"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage:")
    assert "default" in result.stdout, result.stdout
