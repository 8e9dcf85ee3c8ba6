"""(9) The Open Inference Protocol's cost: a BYTES infer call beside POST /predict.

One host server (`python -m services.runtime.server`, gunicorn alone, one worker with all CPUs
as ORT threads: the layout of section 2's host rows), the INT8 file, the same 224² PNG. In
interleaved rounds (benchmarks/overhead.py), each on a new connection:

- POST /predict with the raw PNG;
- POST /v2/models/{name}/infer in binary (Triton's binary tensor data extension, as
  tritonclient sends images): the JSON header, the 4-byte length and the PNG; every output
  answered in binary;
- the same call in JSON: the PNG as base64 text, JSON tensors back.

Every answer is checked against /predict's for the same image (probabilities to 1e-6). The
report shows p50/p95 and each protocol call ÷ /predict: the ratio, not the milliseconds, is
what a shared machine lets one read.
"""

from __future__ import annotations

import base64
import http.client
import json
import struct
import time

import numpy as np

from benchmarks.machine import production_env
from benchmarks.overhead import host_server, interleaved
from benchmarks.timing import latency_stats
from services.core.model import InferenceModel
from tests.support.containers import free_port

HEADER = "Inference-Header-Content-Length"
TOLERANCE = 1e-6


def _post(port: int, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict, bytes]:
    """One request on its own connection (the suite's CONNECTION_POLICY)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", path, body=body, headers={**headers, "Connection": "close"})
        reply = conn.getresponse()
        return reply.status, dict(reply.getheaders()), reply.read()
    finally:
        conn.close()


def binary_request(png: bytes) -> tuple[bytes, dict[str, str]]:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "BYTES",
                    "shape": [1],
                    "parameters": {"binary_data_size": 4 + len(png)},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    body = header + struct.pack("<I", len(png)) + png
    return body, {"Content-Type": "application/octet-stream", HEADER: str(len(header))}


def json_request(png: bytes) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "BYTES",
                    "shape": [1],
                    "data": [base64.b64encode(png).decode()],
                }
            ]
        }
    ).encode()
    return body, {"Content-Type": "application/json"}


def probabilities_of(status: int, headers: dict, body: bytes) -> list[float]:
    """The `probabilities` row of a v2 answer, binary or JSON."""
    assert status == 200, body[:300]
    length = headers.get(HEADER)
    document = json.loads(body[: int(length)] if length else body)
    offset = int(length) if length else 0
    for output in document["outputs"]:
        size = (output.get("parameters") or {}).get("binary_data_size")
        if output["name"] == "probabilities":
            if size is None:
                return list(output["data"])
            return np.frombuffer(body[offset : offset + size], "<f4").tolist()
        offset += size or 0
    raise AssertionError(f"no probabilities in {document}")


def test_oip_infer_beside_predict(bench_model, bench_config, png_224, results) -> None:
    model = InferenceModel(bench_model.int8, threads=bench_config.threads)
    meta = model.metadata
    port = free_port()
    env = production_env(
        {
            "MODEL_PATH": str(bench_model.int8),
            "PORT": str(port),
            "HOST": "127.0.0.1",
            "WEB_CONCURRENCY": "1",
            "FRONT_SERVER": "none",
            "ORT_INTRA_OP_THREADS": str(bench_config.threads),
        }
    )
    infer = f"/v2/models/{meta.name}/infer"
    binary_body, binary_headers = binary_request(png_224)
    json_body, json_headers = json_request(png_224)
    with host_server(env, port, png_224):
        status, _, body = _post(port, "/predict", png_224, {"Content-Type": "image/png"})
        assert status == 200, body[:300]
        expected = [json.loads(body)["probabilities"][c] for c in meta.classes]
        for request in ((binary_body, binary_headers), (json_body, json_headers)):
            got = probabilities_of(*_post(port, infer, *request))
            assert np.allclose(got, expected, atol=TOLERANCE, rtol=0), (got, expected)
        started = time.perf_counter()
        samples = interleaved(
            {
                "predict": lambda: _post(port, "/predict", png_224, {"Content-Type": "image/png"}),
                "v2_binary": lambda: _post(port, infer, binary_body, binary_headers),
                "v2_json": lambda: _post(port, infer, json_body, json_headers),
            },
            2 * bench_config.http_requests,
            bench_config.warmup,
        )
        seconds = time.perf_counter() - started
    stats = {name: latency_stats(values) for name, values in samples.items()}
    record = {
        "precision": "int8",
        "server": "host gunicorn, 1 worker",
        "png_bytes": len(png_224),
        "binary_body_bytes": len(binary_body),
        "json_body_bytes": len(json_body),
        **stats,
        "ratio_p50": {
            name: stats[name]["p50_ms"] / stats["predict"]["p50_ms"]
            for name in ("v2_binary", "v2_json")
        },
        "seconds": round(seconds, 1),
    }
    results.put("oip", "int8", record)
    print(
        f"\n[oip] p50 ms: predict {stats['predict']['p50_ms']:.2f}, v2 binary "
        f"{stats['v2_binary']['p50_ms']:.2f} (×{record['ratio_p50']['v2_binary']:.2f}), "
        f"v2 JSON {stats['v2_json']['p50_ms']:.2f} (×{record['ratio_p50']['v2_json']:.2f})"
    )
