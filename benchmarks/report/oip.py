"""Section 9: the Open Inference Protocol's cost, a BYTES infer call beside POST /predict
(benchmarks/test_oip.py): same host server, same PNG, interleaved rounds."""

from __future__ import annotations

from benchmarks.report.fields import Fields
from benchmarks.report.text import num, ratio, table

_CALLS = (
    ("predict", "POST /predict, raw PNG", "png_bytes"),
    ("v2_binary", "POST /v2/…/infer, BYTES in binary (tritonclient's way)", "binary_body_bytes"),
    ("v2_json", "POST /v2/…/infer, BYTES as base64 JSON", "json_body_bytes"),
)


def oip_section(section: Fields | None) -> str:
    """Markdown for raw/oip.json; "" when the run wrote none (older runs stay as rendered)."""
    if section is None:
        return ""
    text = ["## 9. Open Inference Protocol", ""]
    for key, record in section.items():
        base = record.sub("predict").need("p50_ms")
        rows = []
        for call, label, size in _CALLS:
            stats = record.sub(call)
            rows.append(
                [
                    label,
                    num(stats.need("p50_ms"), 2),
                    num(stats.need("p95_ms"), 2),
                    ratio(stats.need("p50_ms"), base),
                    record.need(size),
                    stats.need("n"),
                ]
            )
        text += [
            f"{key.upper()} file, {record.need('server')}, one request per connection, "
            "interleaved rounds; every answer checked against /predict's (1e-6).",
            "",
            table(["call", "p50 ms", "p95 ms", "p50 ÷ /predict", "body bytes", "n"], rows),
            "",
        ]
    return "\n".join(text).rstrip()
