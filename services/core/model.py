"""The ONNX inference core shared by Flask, Lambda and SageMaker: load once, predict many.

decode → preprocess → session.run → postprocess, with the model's own metadata deciding the
classes, threshold and preprocessing. onnxruntime + numpy only.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

from services.core import contracts
from services.core.cpus import CpuClassError, check_cpu_class, cpu_info, default_threads
from services.core.errors import ModelLoadError, ServiceError
from services.core.explain import CamExplainer
from services.core.explain import unavailable as explain_unavailable
from services.core.files import sha256_file
from services.core.metadata import ModelMetadata
from services.core.preprocessing import (
    DEFAULT_MAX_PIXELS,
    normalize,
    preprocess_bytes,
    preprocess_bytes_and_crop,
    resize_and_crop,
    to_rgb,
)
from services.core.quality import assess, synthetic_notice
from services.core.stages import stage

# Serving images run as a non-root user with a read-only HOME: onnxruntime's telemetry would
# try to persist a device id there and warn in every worker. Nothing is sent from here anyway.
ort.disable_telemetry_events()
error_log = logging.getLogger("mhist.error")  # services.web.hooks gives it its JSON-lines handler


def session_options(threads: int, spinning: bool) -> ort.SessionOptions:
    """CPU session options for small machines.

    Spinning threads burn a core waiting for work: good for one process owning the CPU,
    bad when several gunicorn workers share a couple of cores, hence a switch.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return options


@dataclass(frozen=True)
class Prediction:
    label: str
    probabilities: dict[str, float]
    explanation: dict | None = None  # only when the request asked (services/core/explain.py)
    # label, "uncertain" inside the file's band or "not_assessable" (reasons); None: label
    decision: str | None = None
    # Input quality (services/core/quality.py): set when the file records mhist.quality.
    warnings: list | None = None
    reasons: list | None = None
    quality: dict | None = None

    def to_dict(self, metadata: ModelMetadata) -> dict:
        """The answer's JSON, built from its one declaration (services/core/contracts.py)."""
        found = self.warnings
        if metadata.trained_on_synthetic_data:  # said on every answer, checked or not
            found = [*(found or ()), synthetic_notice()]
        answer = contracts.Prediction(
            label=self.label,
            decision=self.decision or self.label,
            probabilities=self.probabilities,
            # In the space of `probabilities`: calibrated when the file carries a temperature.
            threshold=metadata.served_threshold,
            threshold_scale=metadata.threshold_scale,
            model=contracts.ModelRef(name=metadata.name, version=metadata.version,
                                     precision=metadata.precision),
            explanation=_explanation(self.explanation),
            warnings=(None if found is None else _warnings(found)),
            reasons=self.reasons,
            quality=None if self.quality is None else contracts.InputQuality(**self.quality),
        )
        return contracts.to_json(answer)


def _warnings(found: list[dict]) -> list[contracts.InputWarning]:
    return [contracts.InputWarning(**{**w, "statistics": [
        contracts.OutOfRange(**s) for s in w["statistics"]] if w.get("statistics") else None})
        for w in found]


def _explanation(answer: dict | None) -> contracts.Explanation | None:
    if answer is None:
        return None
    return contracts.Explanation(method=answer["method"], class_=answer["class"],
                                 grid=answer["grid"],
                                 overlay_png_base64=answer.get("overlay_png_base64"))


def batch_response(results: list[dict]) -> dict:
    """The batch answer every target returns: {"predictions", "count", "errors"}."""
    failed = sum(1 for result in results if "error" in result)
    return {"predictions": results, "count": len(results), "errors": failed}


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64, stable for large logits; (N, C) → (N, C)."""
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


class InferenceModel:
    """One ONNX file, its metadata and one onnxruntime session (built once per process)."""

    def __init__(
        self,
        path: str | os.PathLike,
        threads: int | None = None,
        spinning: bool = False,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        cpu_class: str = "auto",
    ) -> None:
        """`cpu_class`: what to take this CPU for (services/core/cpus.py): `auto` reads CPUID.
        An INT8 file for a class this CPU is not refuses to load (ModelLoadError): a full-range
        file on an AVX2-only CPU would answer wrong, silently, in every caller (server, CLIs)."""
        self.path = Path(path)
        self.max_pixels = max_pixels
        self.threads = threads or default_threads()
        self.sha256 = _sha256_of_model(self.path)
        started = time.perf_counter()
        self.session = _load_session(self.path, session_options(self.threads, spinning))
        self.metadata = _read_metadata(self.path, self.session)
        self.cpu_class = _cpu_class(self.path, self.metadata, cpu_class)
        self.explainer = _explainer(self.path, self.session, self.metadata)
        self.load_seconds = time.perf_counter() - started

    def predict_bytes(self, data: bytes, explain: bool = False) -> dict:
        """One image's bytes → prediction JSON; ServiceError (4xx) for a bad image."""
        self.require_explainer(explain)
        array, crop = self._preprocess(data)
        with stage("postprocess"):  # softmax, label, checks, JSON dict; session.run nests as "run"
            prediction = self.predict_array(array[None], explain)[0]
            return self._checked(prediction, crop).to_dict(self.metadata)

    def predict_many(self, items: Sequence[bytes | ServiceError],
                     explain: bool = False) -> list[dict]:
        """Several images in one session.run, results in request order.

        An item may already be a ServiceError (the payload parser could not get bytes out of
        it, e.g. bad base64): it keeps its slot, as does an image that fails to decode, and so
        does an item whose preprocessing failed in a way nobody foresaw (logged, status 500).
        """
        self.require_explainer(explain)  # the whole request is refused, before any work
        arrays: list[np.ndarray] = []
        crops: list[Image.Image | None] = []  # one per array, for the quality checks
        results: list[dict | None] = []
        for index, item in enumerate(items):
            try:
                if isinstance(item, ServiceError):
                    raise item
                array, crop = self._preprocess(item)
                arrays.append(array)
                crops.append(crop)
                results.append(None)
            except ServiceError as exc:
                results.append(exc.item_error())
            except Exception as exc:  # noqa: BLE001 - one item must never fail the whole batch
                error_log.exception(json.dumps({"event": "batch_item_failed", "index": index,
                                                "type": type(exc).__name__}))
                results.append(_unexpected_item_error(index))
        if arrays:
            predictions = iter(self._checked(p, crop) for p, crop in zip(
                # (N, 3, S, S); explained items carry the grid only (services/core/explain.py)
                self.predict_array(np.stack(arrays), explain, overlay=False), crops,
                strict=True))
            results = [
                r if r is not None else next(predictions).to_dict(self.metadata) for r in results
            ]
        return results  # type: ignore[return-value]

    def predict_images(self, images: Sequence[Image.Image]) -> list[Prediction]:
        """Already decoded images (slide or region tiles) → one Prediction each, in one
        session.run, through the same preprocessing as uploaded bytes (its resize included),
        each with the same quality checks (decision not_assessable, reasons) as an upload."""
        if not images:
            return []
        spec = self.metadata.preprocessing
        crops = [resize_and_crop(to_rgb(img), spec) for img in images]
        predictions = self.predict_array(np.stack([normalize(crop, spec) for crop in crops]))
        return [self._checked(p, crop) for p, crop in zip(predictions, crops, strict=True)]

    def predict_array(self, batch: np.ndarray, explain: bool = False,
                      overlay: bool = True) -> list[Prediction]:
        """Preprocessed (N, 3, S, S) float32 → one Prediction per row (with its class
        activation map when `explain`, and its PNG overlay when `overlay` too)."""
        meta = self.metadata
        if explain:  # the feature map is fetched only then: the default path fetches logits
            self.require_explainer()
            with stage("run"):
                logits, features = self.session.run(
                    [meta.output_name, self.explainer.feature_output], {meta.input_name: batch}
                )  # (N, C), (N, K, h, w)
        else:
            with stage("run"):
                (logits,) = self.session.run([meta.output_name], {meta.input_name: batch})  # (N, C)
        probabilities = softmax(logits)
        positive = probabilities[:, meta.positive_index]
        # The label is decided on softmax(logits) (p_pos), where the threshold was chosen; what
        # is served is softmax(logits / T): the same order of margins (services/core/metadata.py).
        served = softmax(logits.astype(np.float64) / meta.temperature) if meta.calibration \
            else probabilities
        negative = [c for c in meta.classes if c != meta.positive_class]
        predictions = []
        for row, p_pos in zip(served, positive, strict=True):
            if len(meta.classes) == 2:
                label = meta.positive_class if p_pos >= meta.threshold else negative[0]
            else:
                label = meta.classes[int(row.argmax())]
            predictions.append(
                Prediction(
                    label=label,
                    probabilities={c: float(p) for c, p in zip(meta.classes, row, strict=True)},
                    decision=meta.decide(label, float(row[meta.positive_index])),
                )
            )
        if explain:
            predictions = [
                replace(p, explanation=self.explainer.explain(f, image, p.label, overlay))
                for p, f, image in zip(predictions, features, batch, strict=True)
            ]
        return predictions

    def _preprocess(self, data: bytes) -> tuple[np.ndarray, Image.Image | None]:
        """(3, S, S) model input, and the RGB crop it came from when the file records quality
        ranges (None otherwise: a file without mhist.quality pays nothing for the checks)."""
        spec = self.metadata.preprocessing
        if self.metadata.quality is None:
            return preprocess_bytes(data, spec, self.max_pixels), None
        return preprocess_bytes_and_crop(data, spec, self.max_pixels)

    def _checked(self, prediction: Prediction, crop: Image.Image | None) -> Prediction:
        """The prediction with its input quality warnings and measurements, when checked; an
        input that fails a check is not assessable, whatever its probabilities."""
        if crop is None or self.metadata.quality is None:
            return prediction
        checked = assess(crop, self.metadata.quality)
        if checked["reasons"]:
            checked["decision"] = self.metadata.decide(prediction.label, 0.0, checked["reasons"])
        return replace(prediction, **checked)

    def require_explainer(self, explain: bool = True) -> None:
        """409 when explanations are asked of a file exported without them."""
        if explain and self.explainer is None:
            raise explain_unavailable(self.metadata)

    def describe(self) -> dict:
        """/metadata's JSON, checked against its declaration (contracts.Metadata): a key the
        declaration lacks is an error here, not a silent extra in the answer."""
        return contracts.checked(contracts.Metadata, {
            **self.metadata.describe(),
            "sha256": self.sha256,
            "file": self.path.name,
            "size_bytes": self.path.stat().st_size,
            "intra_op_threads": self.threads,
            "onnxruntime": ort.__version__,
            "cpu": cpu_info().to_dict(),
        })


def _unexpected_item_error(index: int) -> dict:
    return ServiceError(500, "internal_error",
                        f"Image {index} of the batch could not be processed (an unexpected "
                        "error, logged on the server); the others were.").item_error()


def _sha256_of_model(path: Path) -> str:
    if path.is_dir():
        found = sorted(p.name for p in path.glob("*.onnx"))[:5]
        hint = f" (it holds {', '.join(found)})" if found else ""
        raise ModelLoadError(f"model path {path} is a directory, not a file{hint}; set "
                             "MODEL_PATH to the ONNX file itself")
    if not path.is_file():
        raise ModelLoadError(f"model file {path} does not exist (set MODEL_PATH to an ONNX file)")
    if path.stat().st_size == 0:
        raise ModelLoadError(f"model file {path} is empty (0 bytes)")
    return sha256_file(path)


def _load_session(path: Path, options: ort.SessionOptions) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT raises several types for unreadable files
        raise ModelLoadError(f"model file {path} is not a loadable ONNX model: {exc}") from None


def _cpu_class(path: Path, metadata: ModelMetadata, claimed: str) -> str | None:
    try:
        return check_cpu_class(metadata.quantization, claimed)
    except CpuClassError as exc:
        raise ModelLoadError(f"model file {path}: {exc}") from None


def _explainer(path: Path, session: ort.InferenceSession,
               metadata: ModelMetadata) -> CamExplainer | None:
    try:
        return CamExplainer.from_model(metadata, session)
    except ValueError as exc:
        raise ModelLoadError(f"model file {path}: {exc}") from None


def _read_metadata(path: Path, session: ort.InferenceSession) -> ModelMetadata:
    try:
        metadata = ModelMetadata.from_props(session.get_modelmeta().custom_metadata_map)
    except ValueError as exc:
        raise ModelLoadError(f"model file {path}: {exc}") from None
    inputs = {i.name for i in session.get_inputs()}
    outputs = {o.name for o in session.get_outputs()}
    if metadata.input_name not in inputs or metadata.output_name not in outputs:
        raise ModelLoadError(
            f"model file {path}: metadata names input {metadata.input_name!r} and output "
            f"{metadata.output_name!r}, but the graph has inputs {sorted(inputs)} and outputs "
            f"{sorted(outputs)}"
        )
    width = next(o.shape for o in session.get_outputs() if o.name == metadata.output_name)[-1]
    if isinstance(width, int) and width != len(metadata.classes):
        # Otherwise zip() would silently drop or invent class probabilities at request time.
        raise ModelLoadError(
            f"model file {path}: output {metadata.output_name!r} has {width} columns but the "
            f"metadata names {len(metadata.classes)} classes {list(metadata.classes)}"
        )
    return metadata
