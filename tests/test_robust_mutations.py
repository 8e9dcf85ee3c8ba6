"""Mutation fuzzer: real PNG, JPEG, TIFF and WebP files, mutated with knowledge of their
structure (tests/support/mutations.py: PNG chunks with valid CRCs, JPEG marker segments, TIFF
IFD entries, WebP RIFF chunks, and plain byte edits), sent to every in-process target.

The property: every answer is a 200 with a prediction or a 4xx JSON error, never a 5xx; a
mutated file in a batch fails alone; and afterwards every target still predicts the original
files exactly as before. Seeded (the same cases every run) and bounded: CASES per target,
under a minute for all targets on two cores. MHIST_FUZZ_SCALE=20 makes a longer local hunt.

Against earlier code the same cases found the garbage-EXIF SyntaxError, the TIFF
page-count TypeError, a KeyError and a struct.error in TIFF parsing: about 2 % of them.
"""

from __future__ import annotations

import json
import os
import random
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from tests.support.corpus import b64, encode, multipart, source_image
from tests.support.mutations import mutate, sniff
from tests.support.targets import TARGET_NAMES, Reply, Target, all_targets

SCALE = max(1, int(os.environ.get("MHIST_FUZZ_SCALE", "1")))
CASES = 700 * SCALE  # per target; × 6 targets ≈ 4,200 requests
SEED = 20240612
MIME = {"PNG": "image/png", "JPEG": "image/jpeg", "TIFF": "image/tiff", "WEBP": "image/webp"}
TRANSPORTS = ("raw", "json", "multipart", "batch")


@pytest.fixture(scope="module")
def targets(model_int8_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Target]:
    return {t.name: t for t in all_targets(model_int8_path, tmp_path_factory.mktemp("mutate"))}


@pytest.fixture(scope="module")
def originals(sample_image_bytes: bytes) -> list[bytes]:
    """Small real files in each format and its common variants (small: decoding stays cheap,
    so the cases go to the parsers, not to pixel work)."""
    img = source_image(sample_image_bytes).resize((48, 40), Image.Resampling.BILINEAR)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: the EXIF block is parsed on every request
    rotated = exif.tobytes()
    return [
        encode(img, "PNG"), encode(img.convert("P"), "PNG"), encode(img.convert("RGBA"), "PNG"),
        encode(img, "PNG", exif=rotated),
        encode(img, "JPEG", quality=80), encode(img, "JPEG", quality=80, progressive=True),
        encode(img, "JPEG", quality=80, exif=rotated),
        encode(img, "TIFF"), encode(img, "TIFF", compression="tiff_lzw"),
        encode(img.convert("L"), "TIFF", exif=rotated),
        encode(img, "WEBP", quality=80), encode(img, "WEBP", lossless=True),
        encode(img, "WEBP", quality=80, exif=rotated),
    ]


def send(target: Target, transport: str, data: bytes, good: bytes) -> Reply:
    mime = MIME.get(sniff(data), "application/octet-stream")
    if transport == "json":
        return target.post("predict", {"Content-Type": "application/json"},
                           json.dumps({"image": b64(data)}).encode())
    if transport == "batch":  # the mutated file first, a good one after it
        body, content_type = multipart([("images", "m", data, mime),
                                        ("images", "ok.png", good, "image/png")])
        return target.request("POST", "/predict/batch", {"Content-Type": content_type}, body)
    if transport == "multipart" and target.family != "sagemaker":  # /invocations: no forms
        body, content_type = multipart([("image", "m", data, mime)])
        return target.post("predict", {"Content-Type": content_type}, body)
    return target.predict(data, mime)


def problem(reply: Reply, transport: str) -> str | None:
    """What is wrong with an answer, or None."""
    if reply.status >= 500:
        return f"{reply.status}: {reply.body[:200]!r}"
    try:
        document = reply.json()
    except ValueError:
        return f"{reply.status} not JSON: {reply.body[:100]!r}"
    if reply.status != 200:
        error = document.get("error") if isinstance(document, dict) else None
        if 400 <= reply.status < 500 and isinstance(error, dict) and error.get("code") \
                and error.get("message"):
            return None
        return f"{reply.status} without a JSON error: {reply.body[:200]!r}"
    if transport == "batch":
        predictions = document.get("predictions", [])
        if document.get("count") != 2 or "label" not in predictions[1]:
            return f"the good item of a batch was not predicted: {reply.body[:300]!r}"
        return None
    return None if "label" in document else f"200 without a label: {reply.body[:200]!r}"


@pytest.mark.parametrize("name", TARGET_NAMES)
def test_mutated_files_get_a_prediction_or_a_4xx(name: str, targets: dict[str, Target],
                                                 originals: list[bytes]) -> None:
    target = targets[name]
    good = originals[0]
    before = [target.predict(data, MIME[sniff(data)]).json() for data in originals]
    rng = random.Random(f"{SEED}-{name}")
    statuses: Counter[int] = Counter()
    problems = []
    for index in range(CASES):
        transport = TRANSPORTS[index % len(TRANSPORTS)]
        data = mutate(rng, rng.choice(originals))
        reply = send(target, transport, data, good)
        statuses[reply.status] += 1
        found = problem(reply, transport)
        if found:
            problems.append((index, transport, data[:48].hex(), found))
    assert problems == [], f"{len(problems)} of {CASES}: {problems[:5]}"
    assert statuses[200] > CASES // 10 and sum(statuses.values()) == CASES, statuses
    after = [target.predict(data, MIME[sniff(data)]).json() for data in originals]
    assert after == before
