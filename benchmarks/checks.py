"""What a right answer is: every variant's probabilities against the ONNX FP32 reference.

The reference is the exported FP32 file run by the serving core (services.core.model) on the same
images. A variant answers rightly when, on every check image,
- each class probability is within its precision's tolerance of the reference's,
- the label it returns (services do; model-only variants return none) is the one the
  reference's threshold gives its own probabilities — checked on every image, so a service with
  a wrong threshold or swapped classes fails even when its model's answers sit near the
  threshold, and
- its label is the reference's label wherever the reference's P(positive) is further than that
  tolerance from the threshold (closer, a legitimate rounding difference may flip it).
A wrong answer fails the benchmark that timed the variant.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from benchmarks.load import Response
from services.core.model import InferenceModel

# Largest |Δp| allowed per class probability against the ONNX FP32 reference. FP32 variants
# differ only by the order of float operations (export's own parity gate is 1e-4 too); an
# INT8 model rounds weights and activations to 8 bits, which moved probabilities by ≤ 0.007
# on the benchmark's model in earlier runs: 0.05 leaves room for that, not for a wrong answer.
TOLERANCE = {"fp32": 1e-4, "int8": 0.05}


def tolerance(precision: str) -> float:
    try:
        return TOLERANCE[precision]
    except KeyError:
        raise ValueError(f"no tolerance for precision {precision!r}; known: "
                         f"{', '.join(TOLERANCE)}") from None


@dataclass(frozen=True)
class Reference:
    """ONNX FP32 answers (class → probability) per check image, and the decision rule."""

    classes: tuple[str, ...]
    positive_class: str
    threshold: float
    answers: dict[str, dict[str, float]]  # image name → probabilities

    @classmethod
    def build(cls, fp32_model: str, images: Sequence) -> Reference:
        """Answers of the FP32 file for `images` (paths), through the serving core."""
        model = InferenceModel(fp32_model, threads=1)
        meta = model.metadata
        answers = {path.name: model.predict_bytes(path.read_bytes())["probabilities"]
                   for path in images}
        return cls(tuple(meta.classes), meta.positive_class, float(meta.threshold), answers)

    def label(self, probabilities: Mapping[str, float]) -> str:
        negative = next(c for c in self.classes if c != self.positive_class)
        return (self.positive_class if probabilities[self.positive_class] >= self.threshold
                else negative)

    def compare(self, image: str, probabilities: Mapping[str, float], precision: str,
                label: str | None = None) -> dict:
        """{"max_abs_diff", "label_ok", "problem"} for one answer; problem is None when right."""
        expected = self.answers[image]
        tol = tolerance(precision)
        diff = max(abs(float(probabilities[c]) - expected[c]) for c in self.classes)
        want = self.label(expected)
        decided = abs(expected[self.positive_class] - self.threshold) > tol
        own = self.label(probabilities)
        got = label if label is not None else own
        problems = []
        if not diff <= tol:  # NaN fails too
            problems.append(f"max |Δp| {diff:.3g} > {tol:g} ({precision} tolerance)")
        if got != own:
            problems.append(f"label {got!r} contradicts its own P({self.positive_class}) "
                            f"{float(probabilities[self.positive_class]):.4f} at the threshold "
                            f"{self.threshold:.4f}")
        if decided and got != want:
            problems.append(f"label {got!r}, reference {want!r}")
        return {"max_abs_diff": diff, "label_ok": got == want or not decided,
                "label_checked": {"own": label is not None, "reference": decided},
                "problem": f"{image}: " + "; ".join(problems) if problems else None}

    def summarise(self, comparisons: Sequence[dict], precision: str) -> dict:
        """What a record stores about a variant's answers: worst |Δp|, labels, problems."""
        diffs = [c["max_abs_diff"] for c in comparisons if c["max_abs_diff"] is not None]
        problems = [c["problem"] for c in comparisons if c["problem"]]
        return {"images": len(comparisons), "precision": precision,
                "tolerance": tolerance(precision),
                "max_abs_diff": max(diffs) if diffs else None,
                "labels_agree": sum(c["label_ok"] for c in comparisons),
                # how many labels were actually compared, by rule (see compare)
                "labels_checked": {rule: sum(bool(c.get("label_checked", {}).get(rule))
                                             for c in comparisons)
                                   for rule in ("own", "reference")},
                "problems": problems[:5], "ok": bool(comparisons) and not problems}

    def spread(self) -> dict:
        """How much the reference itself varies over the check images (a model that gives every
        image the same answer cannot tell a wrong variant from a right one by its labels)."""
        positives = [a[self.positive_class] for a in self.answers.values()]
        labels = [self.label(a) for a in self.answers.values()]
        return {"images": len(positives), "positive_class": self.positive_class,
                "threshold": self.threshold, "p_positive_min": min(positives),
                "p_positive_max": max(positives),
                "labels": {c: labels.count(c) for c in self.classes},
                # per precision: on how many images a label mismatch counts (see compare)
                "labels_checked": {precision: sum(abs(p - self.threshold) > tol
                                                  for p in positives)
                                   for precision, tol in TOLERANCE.items()}}


def assert_answers_ok(summary: dict, labelled: bool = False) -> None:
    """The variant answered rightly; with `labelled` (a service, which returns a label), every
    one of its labels was compared, so the label check cannot pass by comparing none."""
    assert summary["ok"], (f"wrong answers ({summary['precision']} tolerance "
                           f"{summary['tolerance']:g}): {summary['problems']}")
    if labelled:
        assert summary["labels_checked"]["own"] == summary["images"] > 0, summary


def prediction_problem(prediction: object, classes: Sequence[str]) -> str | None:
    """None when `prediction` is the service's prediction JSON for `classes`, else why not."""
    if not isinstance(prediction, dict):
        return f"not a JSON object: {prediction!r:.200}"
    probabilities = prediction.get("probabilities")
    if not isinstance(probabilities, dict) or sorted(probabilities) != sorted(classes):
        return f"probabilities {probabilities!r:.200} do not name exactly {list(classes)}"
    values = list(probabilities.values())
    if not all(isinstance(v, float | int) and math.isfinite(v) and 0 <= v <= 1 for v in values):
        return f"probabilities out of [0, 1]: {values}"
    if "label" in prediction and prediction["label"] not in classes:
        return f"label {prediction['label']!r} is not one of {list(classes)}"
    return None


def compare_prediction(prediction: object, reference: Reference, image: str,
                       precision: str) -> dict:
    """Reference.compare for the service's prediction JSON, a malformed one included."""
    problem = prediction_problem(prediction, reference.classes)
    if problem:
        return {"max_abs_diff": None, "label_ok": False, "problem": f"{image}: {problem}"}
    return reference.compare(image, prediction["probabilities"], precision,
                             prediction.get("label"))


def compare_reply(reply: Response, reference: Reference, image: str, precision: str) -> dict:
    """compare_prediction for an HTTP-like reply: a non-200 or non-JSON body is a problem."""
    if reply.status != 200:
        return {"max_abs_diff": None, "label_ok": False,
                "problem": f"{image}: HTTP {reply.status}: {reply.body[:200]!r}"}
    try:
        document = reply.json()
    except ValueError:
        return {"max_abs_diff": None, "label_ok": False,
                "problem": f"{image}: body is not JSON: {reply.body[:200]!r}"}
    return compare_prediction(document, reference, image, precision)


def answer_problem(prediction: object, reference: Reference, image: str,
                   precision: str) -> str | None:
    """None when the service JSON `prediction` for `image` is well formed and right."""
    return compare_prediction(prediction, reference, image, precision)["problem"]


def response_checker(reference: Reference, image: str, precision: str):
    """A closed_loop `validate` callback: the body must be the right answer for `image`."""
    return lambda reply: compare_reply(reply, reference, image, precision)["problem"]


def cross_check(send, reference: Reference, images: Sequence, precision: str) -> dict:
    """Each image (a path) sent once with `send(png_bytes) -> Response`; the summary."""
    return reference.summarise([compare_reply(send(path.read_bytes()), reference, path.name,
                                              precision) for path in images], precision)


def logits_to_probabilities(logits: Sequence[float], classes: Sequence[str]) -> dict[str, float]:
    """One row of logits → class → probability (float64 softmax, as services.core.model)."""
    row = np.asarray(logits, dtype=np.float64)
    exp = np.exp(row - row.max())
    return {c: float(p) for c, p in zip(classes, exp / exp.sum(), strict=True)}
