"""Per-request stage timings (services/core/stages.py) and their histogram on /metrics.

The model is the fixture exported by the real pipeline (tests/conftest.py); only counts and
the nesting arithmetic are asserted, never a duration.
"""

from __future__ import annotations

import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from services.core.model import InferenceModel
from services.core.stages import STAGES, collect, stage
from services.web.app import create_app


def test_nested_stage_time_is_not_counted_twice():
    with collect() as seconds:
        with stage("postprocess"):
            with stage("run"):
                time.sleep(0.02)
        with stage("serialise"):
            pass
    assert set(seconds) == {"postprocess", "run", "serialise"}
    assert seconds["run"] >= 0.02
    assert 0 <= seconds["postprocess"] < seconds["run"]  # its own time only, not run's


def test_stages_outside_a_collection_record_nothing(model_int8_path: Path,
                                                    sample_image_bytes: bytes):
    model = InferenceModel(model_int8_path, threads=1)
    with collect() as seconds:
        pass
    model.predict_bytes(sample_image_bytes)
    assert seconds == {}
    with collect() as seconds:
        model.predict_bytes(sample_image_bytes)
    assert set(seconds) == {"decode", "preprocess", "run", "postprocess"}


def _stage_counts(client) -> dict[str, float]:
    text = client.get("/metrics").get_data(as_text=True)
    counts = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "mhist_stage_seconds_count":
                counts[sample.labels["stage"]] = sample.value
    return counts


def test_metrics_show_each_stage_of_each_prediction(model_int8_path: Path,
                                                    sample_image_bytes: bytes):
    client = create_app({"MODEL_PATH": str(model_int8_path)}).test_client()
    assert _stage_counts(client) == dict.fromkeys(STAGES, 0.0)  # present from the start
    for _ in range(2):
        reply = client.post("/predict", data=sample_image_bytes, content_type="image/png")
        assert reply.status_code == 200
    rejected = client.post("/predict", data=b"not an image", content_type="image/png")
    assert rejected.status_code == 400  # a failed prediction adds no stage sample
    assert _stage_counts(client) == dict.fromkeys(STAGES, 2.0)
