"""README.md's benchmark table: LATEST.md's headline block, copied between two markers."""

from __future__ import annotations

import re
from pathlib import Path

LATEST = Path(__file__).resolve().parents[1] / "LATEST.md"
README_BEGIN = ("<!-- benchmarks-table:begin — generated from benchmarks/LATEST.md by "
                "`python -m benchmarks.report --readme README.md`; do not edit -->")
README_END = "<!-- benchmarks-table:end -->"


def extract_block(text: str) -> str | None:
    """What stands between README_BEGIN and README_END in `text`, or None."""
    match = re.search(re.escape(README_BEGIN) + r"\n(.*?)\n?" + re.escape(README_END), text,
                      re.DOTALL)
    return match.group(1).strip("\n") if match else None


def readme_block_for(latest_text: str) -> str:
    """What README.md's block must hold for this LATEST.md (which every report writes)."""
    block = extract_block(latest_text)
    if block is None:
        raise ValueError("benchmarks/LATEST.md has no headline block: regenerate it with "
                         "`python -m benchmarks.report benchmarks/results/<timestamp> --latest "
                         "benchmarks/LATEST.md --readme README.md`")
    return block


def sync_readme(readme: Path, latest: Path = LATEST) -> None:
    """Replace README.md's generated block with LATEST.md's headline."""
    text = readme.read_text()
    if extract_block(text) is None:
        raise ValueError(f"{readme} has no {README_BEGIN!r} … {README_END!r} block: put the two "
                         "markers where the benchmark table goes")
    block = readme_block_for(latest.read_text())
    start = text.index(README_BEGIN) + len(README_BEGIN)
    end = text.index(README_END, start)
    readme.write_text(text[:start] + "\n" + block + "\n" + text[end:])
