"""Where a run's numbers go: benchmarks/results/<timestamp>/raw/<section>.json, written as they
come in (a crashed run still leaves what it measured), plus run.json and machine.json.

benchmarks.report turns a results folder into summary.md and plots/*.png.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmarks.machine import load_average

SECTIONS = (
    "model",          # (1) model only: the PyTorch and ORT variants, + preprocessing
    "http",           # (2) end to end over HTTP, per target and precision
    "throughput",     # (3) Flask container under concurrency, per worker × thread layout
    "coldstart",      # (4) process and container start → first prediction
    "size",           # (5) image and Python env sizes
    "peer",           # (6) `mlflow models serve` (PyTorch, ONNX) vs our Flask service
    "precision",      # (7) FP32 vs INT8 file size, load time, accuracy
    "slides",         # (8) whole slide: tiles/s, seconds per slide, peak memory vs slide size
    "oip",            # (9) Open Inference Protocol: a BYTES infer call beside POST /predict
)


class ResultStore:
    """One run's folder; every `put` rewrites that section's JSON file."""

    def __init__(self, root: Path, mode: str, stamp: str | None = None) -> None:
        stamp = stamp or datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        self.dir = root / stamp
        self.raw = self.dir / "raw"
        self.raw.mkdir(parents=True, exist_ok=True)
        self.started = time.time()
        self.sections: dict[str, dict[str, Any]] = {}
        self.run: dict[str, Any] = {
            "stamp": stamp,
            "mode": mode,
            "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "load_average_at_start": load_average(),
            "skipped": [],
            "failed": [],
            "notes": [],
        }

    def put(self, section: str, key: str, record: Any) -> None:
        if section not in SECTIONS:
            raise ValueError(f"unknown section {section!r}")
        self.sections.setdefault(section, {})[key] = record
        write_json(self.raw / f"{section}.json", self.sections[section])

    def get(self, section: str, key: str, default: Any = None) -> Any:
        return self.sections.get(section, {}).get(key, default)

    def skip(self, what: str, reason: str) -> None:
        entry = {"what": what, "reason": reason}
        if entry not in self.run["skipped"]:
            self.run["skipped"].append(entry)
        self.save_run()

    def fail(self, what: str, message: str) -> None:
        self.run["failed"].append({"what": what, "message": message[:2000]})
        self.save_run()

    def note(self, text: str) -> None:
        if text not in self.run["notes"]:
            self.run["notes"].append(text)
        self.save_run()

    def set_run(self, **values: Any) -> None:
        self.run.update(values)
        self.save_run()

    def finish(self) -> None:
        self.run["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.run["duration_s"] = round(time.time() - self.started, 1)
        self.run["load_average_at_end"] = load_average()
        self.save_run()

    def save_run(self) -> None:
        write_json(self.dir / "run.json", self.run)


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    tmp.replace(path)


def read_results(folder: Path) -> dict[str, Any]:
    """Everything `report` needs from a results folder (missing parts → empty dicts)."""
    folder = Path(folder)
    if not (folder / "run.json").is_file():
        raise FileNotFoundError(f"{folder} has no run.json: is it a benchmarks/results/<ts> "
                                "folder?")
    data: dict[str, Any] = {
        "run": json.loads((folder / "run.json").read_text()),
        "machine": _maybe(folder / "machine.json"),
    }
    for section in SECTIONS:
        data[section] = _maybe(folder / "raw" / f"{section}.json")
    return data


def _maybe(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}
