"""What "produced a valid prediction" means for every variant (the only thing benchmarks assert)."""

from __future__ import annotations

import math

import numpy as np

from benchmarks.load import Response


def prediction_problem(prediction: object, classes: list[str]) -> str | None:
    """None when `prediction` is the service's prediction JSON for `classes`, else why not."""
    if not isinstance(prediction, dict):
        return f"not a JSON object: {prediction!r:.200}"
    probabilities = prediction.get("probabilities")
    if not isinstance(probabilities, dict) or sorted(probabilities) != sorted(classes):
        return f"probabilities {probabilities!r:.200} do not name exactly {classes}"
    values = list(probabilities.values())
    if not all(isinstance(v, float | int) and math.isfinite(v) and 0 <= v <= 1 for v in values):
        return f"probabilities out of [0, 1]: {values}"
    if abs(sum(values) - 1.0) > 1e-3:
        return f"probabilities sum to {sum(values)}"
    if "label" in prediction and prediction["label"] not in classes:
        return f"label {prediction['label']!r} is not one of {classes}"
    return None


def response_problem(reply: Response, classes: list[str]) -> str | None:
    try:
        document = reply.json()
    except ValueError:
        return f"body is not JSON: {reply.body[:200]!r}"
    return prediction_problem(document, classes)


def assert_valid_prediction(prediction: object, classes: list[str]) -> None:
    problem = prediction_problem(prediction, classes)
    assert problem is None, problem


def assert_valid_probabilities(probabilities: np.ndarray, batch: int, classes: int) -> None:
    """(batch, classes) rows of finite probabilities summing to 1."""
    assert probabilities.shape == (batch, classes), probabilities.shape
    assert np.isfinite(probabilities).all()
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)
