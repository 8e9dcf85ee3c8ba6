"""Run lambda/handler.py in this process: import it fresh (its INIT) and call `handler`.

lambda/ is not a package (`lambda` is a keyword), so the file is imported by path; each
`load_handler` call runs INIT again with the environment it is given, like a new execution
environment would.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

REPO_ROOT = Path(__file__).resolve().parents[2]
HANDLER_FILE = REPO_ROOT / "lambda" / "handler.py"


def load_handler(env: dict[str, str]) -> ModuleType:
    """Import lambda/handler.py as a new module with `env` set during the import (INIT)."""
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    name = f"mhist_lambda_handler_{uuid.uuid4().hex[:8]}"
    try:
        spec = importlib.util.spec_from_file_location(name, HANDLER_FILE)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while INIT runs
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
        return module
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@dataclass
class LambdaContext:
    """The attributes of the context object the Lambda runtime passes to a handler."""

    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    function_name: str = "mhist-classifier"
    function_version: str = "$LATEST"
    memory_limit_in_mb: int = 2048
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:mhist-classifier"
    log_group_name: str = "/aws/lambda/mhist-classifier"
    log_stream_name: str = "2026/01/01/[$LATEST]0123456789abcdef"

    def get_remaining_time_in_millis(self) -> int:
        return 30_000
