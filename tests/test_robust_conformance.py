"""Conformance: the same image bytes give the same probabilities on every target.

One corpus (tests/support/corpus.py: PNG, JPEG, TIFF, BMP, WebP; RGB, L, LA, RGBA, P, CMYK,
16-bit; 32² to 2048²; an EXIF-rotated JPEG), derived from a real sample image, is sent to the
Flask app, the Lambda handler under each event kind (REST API v1, HTTP API v2, Function URL,
ALB) and the SageMaker app. Each answer must equal `InferenceModel.predict_bytes` in process
within 1e-6, for the FP32 and the INT8 model.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from services.core.model import InferenceModel
from services.core.preprocessing import preprocess_bytes, to_rgb
from tests.support.corpus import GOOD_NAMES, MAX_GOOD_BYTES, good_corpus, multipart
from tests.support.targets import Target, all_targets

TOLERANCE = 1e-6


# The INT8 model is what the images ship and runs the whole corpus; the FP32 one runs a
# representative subset (the 2048² decodes dominate the time on a 2-core machine).
FP32_SUBSET = ("png-rgb-224", "jpeg-cmyk-200", "png-i16-96", "png-la-200x300",
               "jpeg-exif-rotated-240x160", "webp-lossless-rgba-96", "tiff-cmyk-128")
CASES = [("int8", name) for name in GOOD_NAMES] + [("fp32", name) for name in FP32_SUBSET]


class Served:
    """One model file in process (the core) and behind every target, built on first use."""

    def __init__(self, paths: dict[str, Path], work: Path) -> None:
        self._paths, self._work, self._built = paths, work, {}

    def __call__(self, precision: str) -> tuple[InferenceModel, list[Target]]:
        if precision not in self._built:
            path = self._paths[precision]
            self._built[precision] = (InferenceModel(path),
                                      all_targets(path, self._work / precision))
        return self._built[precision]


@pytest.fixture(scope="module")
def served(model_fp32_path: Path, model_int8_path: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Served:
    return Served({"fp32": model_fp32_path, "int8": model_int8_path},
                  tmp_path_factory.mktemp("conformance"))


@pytest.fixture(scope="module")
def corpus(sample_image_bytes: bytes) -> dict[str, bytes]:
    return good_corpus(sample_image_bytes)


def test_corpus_covers_the_promised_formats_modes_and_sizes(corpus: dict[str, bytes]) -> None:
    seen = set()
    for name, data in corpus.items():
        assert len(data) <= MAX_GOOD_BYTES, f"{name} is {len(data)} bytes: too big for Lambda"
        with Image.open(io.BytesIO(data)) as img:
            seen.add((img.format, img.mode))
            sizes = img.size
        assert 32 <= min(sizes) and max(sizes) <= 2048, (name, sizes)
    formats = {fmt for fmt, _ in seen}
    modes = {mode for _, mode in seen}
    assert formats == {"PNG", "JPEG", "TIFF", "BMP", "WEBP"}
    assert {"RGB", "L", "LA", "RGBA", "P", "CMYK", "I;16"} <= modes
    assert ("JPEG", "CMYK") in seen and ("TIFF", "CMYK") in seen


def test_exif_rotation_is_applied(corpus: dict[str, bytes]) -> None:
    """The EXIF-rotated JPEG is stored 240×160 and must be read upright as 160×240."""
    data = corpus["jpeg-exif-rotated-240x160"]
    with Image.open(io.BytesIO(data)) as img:
        assert img.size == (240, 160)
        assert to_rgb(img).size == (160, 240)


def _probabilities(reply) -> dict[str, float]:
    assert reply.status == 200, (reply.status, reply.body[:300])
    assert reply.headers.get("content-type", "").startswith("application/json")
    return reply.json()["probabilities"]


@pytest.mark.parametrize(("precision", "name"), CASES)
def test_every_target_matches_the_core(precision: str, name: str, corpus: dict[str, bytes],
                                       served: Served) -> None:
    core, targets = served(precision)
    data = corpus[name]
    expected = core.predict_bytes(data)
    arr = preprocess_bytes(data, core.metadata.preprocessing)
    assert arr.dtype == np.float32 and np.isfinite(arr).all()
    differences = {}
    for target in targets:
        reply = target.predict(data)
        got = _probabilities(reply)
        document = reply.json()
        assert document["label"] == expected["label"], (target.name, document)
        assert document["model"] == expected["model"], (target.name, document)
        assert set(got) == set(expected["probabilities"])
        differences[target.name] = max(abs(got[c] - p)
                                       for c, p in expected["probabilities"].items())
    assert all(d <= TOLERANCE for d in differences.values()), differences


@pytest.mark.parametrize("name", ["png-rgb-224", "jpeg-cmyk-200", "png-i16-96"])
def test_json_and_multipart_carry_the_same_bytes(name: str, corpus: dict[str, bytes],
                                                 served: Served) -> None:
    """The same bytes via JSON base64 (all targets) and multipart (Flask, Lambda) agree too."""
    core, targets = served("int8")
    data = corpus[name]
    expected = core.predict_bytes(data)["probabilities"]
    document = json.dumps({"image": base64.b64encode(data).decode()}).encode()
    form, form_type = multipart([("image", "x.bin", data, "application/octet-stream")])
    for target in targets:
        answers = [target.post("predict", {"Content-Type": "application/json"}, document)]
        if target.family != "sagemaker":  # SageMaker's contract has no multipart
            answers.append(target.post("predict", {"Content-Type": form_type}, form))
        for reply in answers:
            got = _probabilities(reply)
            assert max(abs(got[c] - p) for c, p in expected.items()) <= TOLERANCE, target.name
