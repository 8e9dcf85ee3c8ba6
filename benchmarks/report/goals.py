"""The goals the report judges against, read from goals.json (the reasons live there)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

GOALS_FILE = Path(__file__).with_name("goals.json")
# Key of the kept-alive POST /predict row among the overhead goals.
KEEPALIVE_KEY = "flask-int8-keepalive"


@dataclass(frozen=True)
class Goals:
    cold_start_allowance_s: float  # container start → first answer ≤ floor + this
    image_size_mb: float
    overhead: dict[str, float]  # key → the p50 ÷ INT8 session.run it may reach
    throughput_concurrency: str  # the level judged, as the throughput records name it
    throughput_share: float  # of in-process predict_bytes, at least
    throughput_tail: float  # p99 ÷ p50, at most


def read_goals(path: Path = GOALS_FILE) -> Goals:
    try:
        raw = json.loads(path.read_text())
        overhead, tp = raw["overhead"], raw["throughput"]
        return Goals(
            cold_start_allowance_s=raw["cold_start_allowance_s"]["value"],
            image_size_mb=raw["image_size_mb"]["value"],
            overhead={k: v for k, v in overhead.items() if k != "reason"},
            throughput_concurrency=tp["concurrency"], throughput_share=tp["share"],
            throughput_tail=tp["tail"])
    except KeyError as exc:
        raise ValueError(f"{path} has no {exc}: see the keys benchmarks/report/goals.py "
                         "reads") from exc


GOALS = read_goals()
