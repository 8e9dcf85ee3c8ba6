"""Reports per CPU class: what INT8 buys depends on the CPU's SIMD far more than on anything
else (×1.1 over FP32 on an AVX2-only EPYC, ×3.5 with AVX-512 VNNI), so each class keeps its
own latest report, and a run on one class never replaces another's.

    benchmarks/LATEST.<class>.md          the latest full report of that class
    benchmarks/latest-run/<class>/        its run.json, machine.json and raw/ (what it renders)

The class comes from the run's machine.json (the SIMD flags benchmarks/machine.py records), so
a committed run names its own class. README.md's benchmark block holds every class measured so
far: its flags, date and load, what INT8 buys there (computed from that report's headline
table) and the headline table itself.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from benchmarks.report.readme import README_BEGIN, README_END, extract_block

BENCH_DIR = Path(__file__).resolve().parents[1]
LATEST_RUNS = BENCH_DIR / "latest-run"
# machine.json's flag names (benchmarks/machine.py INT8_FLAGS) → class, first match wins: the
# fastest INT8 dot product the CPU has decides the class.
CLASS_BY_FLAG = (
    ("AMX-INT8", "amx"),
    ("AVX-512 VNNI", "avx512-vnni"),
    ("AVX-VNNI", "avx-vnni"),
    ("AVX-512F", "avx512"),
    ("AVX2", "avx2"),
    ("ARM dot product", "arm-dotprod"),
)
FALLBACK_CLASS = "baseline"  # none of the above: SSE only, or a CPU these flags do not cover
# The first line of a report kept as written because its raw JSON was never committed.
ARCHIVED_MARK = "<!-- archived:"
_FILE = re.compile(r"^LATEST\.([a-z0-9-]+)\.md$")


def cpu_class(flags: dict[str, bool]) -> str:
    """The class of a machine.json `flags` mapping (display name → present)."""
    return next((name for flag, name in CLASS_BY_FLAG if flags.get(flag)), FALLBACK_CLASS)


def latest_path(name: str, root: Path = BENCH_DIR) -> Path:
    return root / f"LATEST.{name}.md"


def latest_run_dir(name: str, root: Path = BENCH_DIR) -> Path:
    return root / "latest-run" / name


def published(root: Path = BENCH_DIR) -> dict[str, Path]:
    """class → its LATEST.<class>.md, sorted by class name."""
    found = {m.group(1): p for p in root.iterdir() if (m := _FILE.match(p.name))}
    return dict(sorted(found.items()))


def publish(folder: Path, readme: Path | None, root: Path = BENCH_DIR) -> Path:
    """Make the run in `folder` its class's latest: copy run.json, machine.json and raw/ to
    latest-run/<class>/, write LATEST.<class>.md from them, then rebuild README.md's block
    from every class. Other classes' files are left as they are. Returns the report's path."""
    from benchmarks.report.document import write_latest
    from benchmarks.report.records import load

    folder = Path(folder)
    name = cpu_class(load(folder).machine.flags)
    target = latest_run_dir(name, root)
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for part in ("run.json", "machine.json"):
        shutil.copyfile(folder / part, target / part)
    shutil.copytree(folder / "raw", target / "raw")
    latest = latest_path(name, root)
    write_latest(target, latest, source=folder)
    if readme is not None:
        sync_readme(readme, root)
    return latest


# --- README.md's block ----------------------------------------------------------------------


@dataclass(frozen=True)
class ClassReport:
    """What README.md says of one class, read from its LATEST.<class>.md."""

    name: str
    path: Path
    stamp: str
    flags: list[str]
    load_at_start: str
    headline: str  # the report's headline block (its table)
    archived: bool


def read_report(name: str, path: Path) -> ClassReport:
    text = path.read_text()
    stamp = re.search(r"^# MHIST benchmarks — (\S+)", text, re.MULTILINE)
    flags = re.search(r"^- \*\*CPU flags\*\*: (.*)$", text, re.MULTILINE)
    load = re.search(
        r"^- \*\*Load average\*\* \(1/5/15 min\) at start \[([^\],]+)", text, re.MULTILINE
    )
    block = extract_block(text)
    if not (stamp and flags and load and block):
        raise ValueError(
            f"{path} is not a benchmark report (no title, CPU flags, load average "
            "or headline block): regenerate it with `python -m benchmarks.report "
            "benchmarks/results/<timestamp> --publish --readme README.md`"
        )
    present = [
        part.rsplit(" ", 1)[0] for part in flags.group(1).split(", ") if part.endswith(" yes")
    ]
    return ClassReport(
        name, path, stamp.group(1), present, load.group(1), block, text.startswith(ARCHIVED_MARK)
    )


def _date(stamp: str) -> str:
    """20261207T080752Z → 2026-12-07 08:07 UTC."""
    match = re.match(r"(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})", stamp)
    return (
        f"{'-'.join(match.groups()[:3])} {match.group(4)}:{match.group(5)} UTC" if match else stamp
    )


def _first_number(cell: str) -> float | None:
    match = re.match(r"\s*([0-9]+(?:\.[0-9]+)?)", cell)
    return float(match.group(1)) if match else None


def _row(headline: str, starts: str) -> list[str] | None:
    for line in headline.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0].startswith(starts):
            return cells[1:]
    return None


def int8_buys(headline: str) -> str:
    """What ONNX INT8 buys, from a headline table's cells (columns: PyTorch eager, PyTorch best
    FP32, PyTorch INT8, ONNX FP32, ONNX INT8): model only at batch 1, and over HTTP."""
    parts = []
    model = _row(headline, "model only, batch 1")
    if model and len(model) == 5:
        eager, best, _, fp32, int8 = (_first_number(c) for c in model)
        best_name = re.search(r"\(([^×)]+)\)", model[1])
        if int8:
            if fp32:
                parts.append(f"×{fp32 / int8:.2f} over ONNX FP32")
            if best:
                parts.append(
                    f"×{best / int8:.2f} over PyTorch's best FP32"
                    + (f" ({best_name.group(1)})" if best_name else "")
                )
            if eager:
                parts.append(f"×{eager / int8:.2f} over PyTorch eager")
    text = ("ONNX INT8, model only, batch 1 (p50): " + ", ".join(parts)) if parts else ""
    http = _row(headline, "one PNG over HTTP")
    if http and len(http) == 5:
        base, int8_http = _first_number(http[1]), _first_number(http[4])
        if base and int8_http:
            text += (
                f"; one PNG over HTTP, Flask INT8 container ×{base / int8_http:.2f} over the "
                "PyTorch baseline container"
            )
    return (text + ".") if text else "No model-only or HTTP row in this report."


def readme_block(root: Path = BENCH_DIR) -> str:
    """README.md's benchmark block: every class measured so far."""
    reports = [read_report(name, path) for name, path in published(root).items()]
    if not reports:
        raise ValueError(
            f"no benchmarks/LATEST.<class>.md under {root}: publish a full run "
            "with `python -m benchmarks.report benchmarks/results/<timestamp> "
            "--publish --readme README.md`"
        )
    parts = []
    for rep in reports:
        note = (
            " Archived: kept as written, its raw JSON was never committed." if rep.archived else ""
        )
        parts += [
            f"### CPU class `{rep.name}`: {', '.join(rep.flags) or 'no SIMD flag listed'}"
            f" — run of {_date(rep.stamp)}, 1-min load {rep.load_at_start} at start",
            "",
            f"What INT8 buys here: {int8_buys(rep.headline)} Full report: "
            f"[`benchmarks/{rep.path.name}`](benchmarks/{rep.path.name}).{note}",
            "",
            rep.headline,
            "",
        ]
    return "\n".join(parts).rstrip("\n")


def sync_readme(readme: Path, root: Path = BENCH_DIR) -> None:
    """Replace README.md's generated block with every class's part."""
    text = readme.read_text()
    if README_BEGIN not in text or README_END not in text:
        raise ValueError(
            f"{readme} has no {README_BEGIN!r} … {README_END!r} block: put the two "
            "markers where the benchmark table goes"
        )
    start = text.index(README_BEGIN) + len(README_BEGIN)
    end = text.index(README_END, start)
    readme.write_text(text[:start] + "\n" + readme_block(root) + "\n" + text[end:])
