"""Section 6: `mlflow models serve` (PyTorch and ONNX) against our service, host processes."""

from __future__ import annotations

from benchmarks.report.records import PeerRun
from benchmarks.report.text import answers_cell, bullets, faster, num, table

PEER_ORDER = ("mlflow-pytorch", "mlflow-onnx-fp32", "mlflow-onnx-png", "ours-fp32",
              "ours-int8")
PEER_SHORT = {"mlflow-pytorch": "MLflow (PyTorch, tensor)",
              "mlflow-onnx-fp32": "MLflow (ONNX FP32, tensor)",
              "mlflow-onnx-png": "MLflow (ONNX FP32, PNG)",
              "ours-fp32": "ours (ONNX FP32, PNG)", "ours-int8": "ours (ONNX INT8, PNG)"}
# Only pairs with the same request: a tensor row is never set against a PNG row (a tensor body
# is ~25× a PNG's and skips decoding and preprocessing).
PAIRS = (("ours-fp32", "mlflow-onnx-png",
          "the server alone (same FP32 ONNX file, same PNG, same preprocessing)"),
         ("mlflow-onnx-fp32", "mlflow-pytorch",
          "the runtime inside MLflow's server (same tensor JSON)"),
         ("ours-int8", "ours-fp32", "INT8 vs FP32 in our server (same PNG)"))
COLUMNS = ["server", "request", "request KB", "launch → first 200 s", "p50 ms", "p95 ms",
           "p99 ms", "answers vs ONNX FP32", "n", "settings"]


def peer_findings(peer: dict[str, PeerRun]) -> list[str]:
    found = []
    for one, other, what in PAIRS:
        a, b = peer.get(one), peer.get(other)
        if a and b:
            comparison = faster(PEER_SHORT[one], a.p50_ms, PEER_SHORT[other], b.p50_ms,
                                samples=(a.samples_ms, b.samples_ms))
            found.append(f"{what}: {comparison}; launch → first 200 {a.first_200_s:.2f} vs "
                         f"{b.first_200_s:.2f} s.")
    return found


def _row(rec: PeerRun) -> list:
    return [rec.server, rec.request, num(rec.request_bytes / 1024, 0), num(rec.first_200_s, 2),
            num(rec.p50_ms), num(rec.p95_ms), num(rec.p99_ms), answers_cell(rec.answers),
            rec.n, rec.settings]


def peer_section(peer: dict[str, PeerRun]) -> str:
    if not peer:
        return "## 6. Peers: `mlflow models serve`\n\nNo data."
    return "\n".join([
        "## 6. Peers: `mlflow models serve` (PyTorch and ONNX) vs our service, host processes, "
        "one worker", "",
        table(COLUMNS, [_row(peer[key]) for key in PEER_ORDER if key in peer]), "",
        "Rows with a tensor request include parsing the tensor JSON but no decoding or "
        "preprocessing; rows with a PNG request include decoding and preprocessing it (MLflow's "
        "also base64 and the DataFrame). Comparisons below pair only rows with the same "
        "request.", "",
        *bullets(peer_findings(peer)),
    ])
