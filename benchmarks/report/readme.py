"""The markers of README.md's benchmark block, and of the headline block inside each report
that README.md's block quotes (benchmarks/report/classes.py writes README.md's)."""

from __future__ import annotations

import re

README_BEGIN = ("<!-- benchmarks-table:begin — generated from benchmarks/LATEST.<class>.md by "
                "`python -m benchmarks.report --readme README.md`; do not edit -->")
README_END = "<!-- benchmarks-table:end -->"
# Any begin marker: reports written before the per-class layout name benchmarks/LATEST.md in it.
_BEGIN = r"<!-- benchmarks-table:begin[^\n]*?-->"


def extract_block(text: str) -> str | None:
    """What stands between a begin marker and README_END in `text`, or None."""
    match = re.search(_BEGIN + r"\n(.*?)\n?" + re.escape(README_END), text, re.DOTALL)
    return match.group(1).strip("\n") if match else None
