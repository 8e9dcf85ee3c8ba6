"""Collect the JSON lines the serving loggers write (stderr in a container, CloudWatch on AWS).

    with json_log_lines(access_log, error_log) as lines:
        ...                      # lines: every record's message, parsed, in order
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def json_log_lines(*loggers: logging.Logger) -> Iterator[list[dict]]:
    lines: list[dict] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(json.loads(record.getMessage()))

    collect = Collect()
    for logger in loggers:
        logger.addHandler(collect)
    try:
        yield lines
    finally:
        for logger in loggers:
            logger.removeHandler(collect)
