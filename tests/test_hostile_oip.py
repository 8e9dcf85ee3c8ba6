"""Hostile requests on every Open Inference Protocol route (services/web/routes/v2.py), on
every target in this process (Flask, SageMaker, Lambda under REST API v1, HTTP API v2,
Function URL and ALB): malformed JSON, an Inference-Header-Content-Length that lies, BYTES
elements that are not images, shapes and data that disagree, huge shapes, NaN and infinities
in FP32 tensors, compressed bodies, odd names. Each is a clear 4xx in the protocol's shape
({"error": "..."}), never a 5xx, and the target answers a good request afterwards.

Memory: the worst bodies the limits let through, replayed in a fresh worker process under an
address-space limit (tests/support/peak_memory.py). Slow bodies need a real server and are in
tests/test_oip_container.py.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from services.core.model import InferenceModel
from tests.support.corpus import png_header_only, small_png, zip_bytes
from tests.support.targets import REPO_ROOT, TARGET_NAMES, Target, all_targets

HEADER = "Inference-Header-Content-Length"


@pytest.fixture(scope="module")
def targets(model_int8_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Target]:
    return {t.name: t for t in all_targets(model_int8_path, tmp_path_factory.mktemp("hostile-oip"))}


@pytest.fixture(scope="module")
def model(model_int8_path: Path) -> InferenceModel:
    return InferenceModel(model_int8_path, threads=1)


def body(inputs: list[dict], **extra: object) -> bytes:
    return json.dumps({"inputs": inputs, **extra}).encode()


def image_input(*elements: str, shape: list[int] | None = None, **extra: object) -> dict:
    return {
        "name": "image",
        "datatype": "BYTES",
        "shape": shape if shape is not None else [len(elements)],
        "data": list(elements),
        **extra,
    }


def binary(header: dict, blob: bytes, declared: str | None = None) -> tuple[dict, bytes]:
    text = json.dumps(header).encode()
    return {HEADER: declared if declared is not None else str(len(text))}, text + blob


def length_prefixed(*elements: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def hostile_requests(model: InferenceModel) -> dict[str, tuple[str, str, dict, bytes]]:
    """name → (method, path, headers, body); every one must be a 4xx."""
    meta = model.metadata
    base = f"/v2/models/{meta.name}"
    infer = f"{base}/infer"
    size = meta.preprocessing.size
    values = 3 * size * size
    fp32 = {"name": meta.input_name, "datatype": "FP32", "shape": [1, 3, size, size]}
    png = small_png()
    b64 = base64.b64encode(png).decode()
    nan = np.zeros(values, "<f4")
    nan[5] = np.nan
    inf = np.zeros(values, "<f4")
    inf[-1] = np.inf
    cases: dict[str, tuple[dict, bytes]] = {
        # malformed JSON
        "empty body": ({}, b""),
        "not JSON": ({}, b"\x89PNG\r\n\x1a\n" + png),
        "truncated JSON": ({}, body([image_input(b64)])[:-3]),
        "JSON array": ({}, b"[]"),
        "JSON null": ({}, b"null"),
        "no inputs": ({}, b"{}"),
        "inputs not a list": ({}, b'{"inputs": "image"}'),
        "unknown top-level field": ({}, body([image_input(b64)], extra=1)),
        "id not a string": ({}, body([image_input(b64)], id=7)),
        "parameter not a scalar": ({}, body([image_input(b64)], parameters={"a": [1]})),
        "unknown datatype": ({}, body([{**image_input(b64), "datatype": "STRING"}])),
        "deep nesting": (
            {},
            b'{"inputs":[{"name":"image","datatype":"BYTES","shape":[1],'
            b'"data":' + b"[" * 100_000 + b"]" * 100_000 + b"}]}",
        ),
        "not UTF-8": ({}, b'{"inputs": "\xff\xfe"}'),
        "huge integer": (
            {},
            b'{"inputs":[{"name":"image","datatype":"BYTES","shape":['
            + b"9" * 5000
            + b'],"data":["x"]}]}',
        ),
        "NaN token": (
            {},
            body([{**fp32, "data": [0.0] * (values - 1)}]).replace(b"0.0]", b"0.0, NaN]"),
        ),
        "number beyond float64": (
            {},
            body([{**fp32, "data": [0.0] * (values - 1)}]).replace(b"0.0]", b"0.0, 1e999]"),
        ),
        # inputs and outputs
        "no input": ({}, body([])),
        "two inputs": ({}, body([image_input(b64), image_input(b64)])),
        "unknown input": ({}, body([{**image_input(b64), "name": "pixels"}])),
        "wrong datatype": ({}, body([{**image_input(b64), "datatype": "UINT8"}])),
        "unknown output": ({}, body([image_input(b64)], outputs=[{"name": "logits"}])),
        # BYTES elements that are not images
        "element not base64": ({}, body([image_input("not base64!")])),
        "element a number": ({}, body([{**image_input(b64), "data": [7]}])),
        "element empty": ({}, body([image_input("")])),
        "element text": ({}, body([image_input(base64.b64encode(b"hello").decode())])),
        "element a zip": ({}, body([image_input(base64.b64encode(zip_bytes()).decode())])),
        "element a truncated PNG": ({}, body([image_input(b64[: len(b64) // 2 // 4 * 4])])),
        "element a PNG claiming 10^10 pixels": (
            {},
            body([image_input(base64.b64encode(png_header_only(100_000, 100_000)).decode())]),
        ),
        "binary element not an image": binary(
            {
                "inputs": [
                    {
                        "name": "image",
                        "datatype": "BYTES",
                        "shape": [1],
                        "parameters": {"binary_data_size": 4 + 9},
                    }
                ]
            },
            length_prefixed(b"not image"),
        ),
        # shapes and data that disagree
        "shape 2, one element": ({}, body([image_input(b64, shape=[2])])),
        "shape 1, two elements": ({}, body([image_input(b64, b64, shape=[1])])),
        "shape [1, 2] for images": ({}, body([image_input(b64, b64, shape=[1, 2])])),
        "empty shape": ({}, body([image_input(b64, shape=[])])),
        "empty batch": ({}, body([image_input(shape=[0])])),
        "negative shape": ({}, body([image_input(b64, shape=[-1])])),
        "FP32 values short": ({}, body([{**fp32, "data": [0.0] * (values - 1)}])),
        "FP32 ragged": ({}, body([{**fp32, "data": [[0.0], [0.0, 1.0]]}])),
        "FP32 strings": ({}, body([{**fp32, "data": ["a"] * values}])),
        "FP32 objects": ({}, body([{**fp32, "data": [{"a": 1}]}])),
        "FP32 binary short": binary(
            {"inputs": [{**fp32, "parameters": {"binary_data_size": values * 4 - 4}}]},
            bytes(values * 4 - 4),
        ),
        "element length beyond the data": binary(
            {
                "inputs": [
                    {
                        "name": "image",
                        "datatype": "BYTES",
                        "shape": [1],
                        "parameters": {"binary_data_size": 8},
                    }
                ]
            },
            struct.pack("<I", 0xFFFFFFFF) + b"abcd",
        ),
        "more elements than the shape": binary(
            {
                "inputs": [
                    {
                        "name": "image",
                        "datatype": "BYTES",
                        "shape": [1],
                        "parameters": {"binary_data_size": 2 * (4 + len(png))},
                    }
                ]
            },
            length_prefixed(png, png),
        ),
        "binary size beyond the body": binary(
            {
                "inputs": [
                    {
                        "name": "image",
                        "datatype": "BYTES",
                        "shape": [1],
                        "parameters": {"binary_data_size": 10**9},
                    }
                ]
            },
            length_prefixed(png),
        ),
        "binary size a string": binary(
            {
                "inputs": [
                    {
                        "name": "image",
                        "datatype": "BYTES",
                        "shape": [1],
                        "parameters": {"binary_data_size": "all"},
                    }
                ]
            },
            length_prefixed(png),
        ),
        "binary size negative": binary(
            {
                "inputs": [
                    {
                        "name": "image",
                        "datatype": "BYTES",
                        "shape": [1],
                        "parameters": {"binary_data_size": -4},
                    }
                ]
            },
            length_prefixed(png),
        ),
        "binary and data both": binary(
            {"inputs": [{**image_input(b64), "parameters": {"binary_data_size": 4 + len(png)}}]},
            length_prefixed(png),
        ),
        "no data at all": ({}, body([{"name": "image", "datatype": "BYTES", "shape": [1]}])),
        "bytes after the JSON for nobody": binary({"inputs": [image_input(b64)]}, b"extra"),
        # huge shapes
        "shape 10^18 images": ({}, body([image_input(b64, shape=[10**18])])),
        "shape 2^64": ({}, body([image_input(b64, shape=[2**64])])),
        "FP32 10^9 x 10^9": ({}, body([{**fp32, "shape": [1, 3, 10**9, 10**9], "data": [0]}])),
        "FP32 10^6 rows": ({}, body([{**fp32, "shape": [10**6, 3, size, size], "data": [0]}])),
        "too many images": ({}, body([image_input(*[b64] * 17)])),
        # NaN and infinities
        "FP32 NaN (binary)": binary(
            {"inputs": [{**fp32, "parameters": {"binary_data_size": values * 4}}]}, nan.tobytes()
        ),
        "FP32 infinity (binary)": binary(
            {"inputs": [{**fp32, "parameters": {"binary_data_size": values * 4}}]}, inf.tobytes()
        ),
        "FP32 beyond float32 (JSON)": ({}, body([{**fp32, "data": [1e39] * values}])),
        # the header that lies
        "header not a number": ({HEADER: "twelve"}, body([image_input(b64)])),
        "header negative": ({HEADER: "-5"}, body([image_input(b64)])),
        "header float": ({HEADER: "1e3"}, body([image_input(b64)])),
        "header beyond the body": ({HEADER: "99999"}, body([image_input(b64)])),
        "header 20 digits": ({HEADER: "9" * 20}, body([image_input(b64)])),
        "header zero": ({HEADER: "0"}, body([image_input(b64)])),
        "header short of the JSON": ({HEADER: "10"}, body([image_input(b64)])),
        "gzip body": ({"Content-Encoding": "gzip"}, gzip.compress(body([image_input(b64)]))),
    }
    requests = {name: ("POST", infer, headers, data) for name, (headers, data) in cases.items()}
    for path in (
        "/models/resnet50",
        "/models/resnet50/ready",
        f"/models/{meta.name}/versions/{meta.version}9",
        "/models/" + "x" * 4000,
        "/models/%00",
        "/models/%F0%9F%98%80",
        f"/models/{meta.name}/versions/%2e%2e/ready",
        "/nowhere",
    ):
        requests[f"GET {path[:40]}"] = ("GET", f"/v2{path}", {}, b"")
    requests["POST to an unknown model"] = (
        "POST",
        "/v2/models/resnet50/infer",
        {},
        body([image_input(b64)]),
    )
    requests["POST to the metadata route"] = ("POST", base, {}, body([image_input(b64)]))
    return requests


@pytest.mark.parametrize("name", TARGET_NAMES)
def test_hostile_requests_are_4xx_in_the_protocols_shape(
    name: str, targets: dict[str, Target], model: InferenceModel
) -> None:
    target = targets[name]
    wrong = []
    for case, (method, path, headers, data) in hostile_requests(model).items():
        reply = target.request(method, path, {"Content-Type": "application/json", **headers}, data)
        try:
            document = reply.json()
        except ValueError:
            document = None
        shaped = (
            isinstance(document, dict)
            and list(document) == ["error"]
            and isinstance(document["error"], str)
            and document["error"]
        )
        if not (400 <= reply.status < 500 and shaped):
            wrong.append((case, reply.status, reply.body[:200]))
    assert wrong == [], wrong
    good = target.request(
        "POST",
        f"/v2/models/{model.metadata.name}/infer",
        {"Content-Type": "application/json"},
        body([image_input(base64.b64encode(small_png()).decode())]),
    )
    assert good.status == 200, good.body[:300]


def test_the_messages_say_what_was_wrong(targets: dict[str, Target], model: InferenceModel) -> None:
    """A few answers read in full: each names the thing to fix."""
    cases = hostile_requests(model)
    expected = {
        "header beyond the body": "says 99999 bytes of JSON, but the body has only",
        "element a PNG claiming 10^10 pixels": "Element 0 of 'image'",
        "FP32 NaN (binary)": "NaN or infinite",
        "shape 10^18 images": "the limit is 16 per request (MAX_BATCH)",
        "FP32 10^9 x 10^9": "expected [N, 3,",
        "deep nesting": "nested too deeply",
        "gzip body": "send it uncompressed",
        "unknown top-level field": "`extra`",
        "bytes after the JSON for nobody": "belong to no input",
    }
    flask = targets["flask"]
    for case, words in expected.items():
        method, path, headers, data = cases[case]
        reply = flask.request(method, path, headers, data)
        assert words in reply.json()["error"], (case, reply.json())


def test_peak_memory_of_the_worst_bodies(
    model_int8_path: Path, model: InferenceModel, tmp_path: Path
) -> None:
    """The largest bodies the limits let through, in a fresh worker under a 3 GB address
    space: a 10 MB JSON tensor of the most numbers, 10 MB of length prefixes, a batch of the
    largest images in the binary form."""
    meta = model.metadata
    infer = f"/v2/models/{meta.name}/infer"
    limit = 10 * 1024 * 1024  # MAX_CONTENT_LENGTH's default
    numbers = b"0," * ((limit - 200) // 2)
    requests_file = tmp_path / "requests.pickle"
    many_numbers = (
        b'{"inputs":[{"name":"'
        + meta.input_name.encode()
        + b'","datatype":"FP32","shape":[1,3,'
        + str(meta.preprocessing.size).encode()
        + b","
        + str(meta.preprocessing.size).encode()
        + b'],"data":['
        + numbers
        + b"0]}]}"
    )
    prefixes = struct.pack("<I", 0) * ((limit - 300) // 4)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "BYTES",
                    "shape": [16],
                    "parameters": {"binary_data_size": len(prefixes)},
                }
            ]
        }
    )
    claims = png_header_only(100_000, 100_000)
    header_claims = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "BYTES",
                    "shape": [16],
                    "parameters": {"binary_data_size": 16 * (4 + len(claims))},
                }
            ]
        }
    )
    with requests_file.open("wb") as handle:
        pickle.dump(("POST", infer, {}, many_numbers), handle)
        pickle.dump(("POST", infer, {HEADER: str(len(header))}, header.encode() + prefixes), handle)
        pickle.dump(
            (
                "POST",
                infer,
                {HEADER: str(len(header_claims))},
                header_claims.encode() + length_prefixed(*[claims] * 16),
            ),
            handle,
        )
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MHIST_API_TOKEN", "MAX_CONTENT_LENGTH", "SERVING_TARGET")
    }
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.support.peak_memory",
            str(requests_file),
            str(model_int8_path),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={
            **env,
            "PYTHONPATH": str(REPO_ROOT),
            "MHIST_PEAK_AS_LIMIT_MB": "3072",
            "LOG_LEVEL": "warning",
        },
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    print("worst v2 bodies:", report)
    assert all(400 <= status < 500 for status in report["statuses"]), report
    assert report["peak_rss_mb"] - report["baseline_rss_mb"] < 400, report
