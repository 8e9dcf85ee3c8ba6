"""What an ONNX file says about itself: the contract between export and every serving target.

Stored as ONNX `metadata_props` (string → string; structured values are JSON) so that a file
is self-describing in any tool (Netron, onnx.load, onnxruntime's `custom_metadata_map`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from services.core.preprocessing import MIN_SIDE, PreprocessSpec
from services.core.quality import NOT_ASSESSABLE, QualityRanges

SCHEMA_VERSION = "1"
PREFIX = "mhist."
REQUIRED_KEYS = ("classes", "positive_class", "threshold", "preprocessing", "precision")
# The graph's tensor names, (N, 3, S, S) float32 in → (N, C) logits out. Export names the graph
# with these and records them (mhist.input_name / output_name); serving uses the recorded names.
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
# What a patch classifier's `mhist.preprocessing` may ask for, checked when a file loads: MHIST
# patches are 224 px and 512 leaves room for a model trained at twice that. A size of 0 made
# every request a 500, and 100000 used up 24 GB on the first request.
MAX_INPUT_SIZE = 512
MAX_RESIZE_FACTOR = 2  # resize_size ≤ 2 × size: the centre crop keeps at least a quarter
# Microns per pixel of the network input (`mhist.mpp`): whole-slide inference resamples
# slides to it. MHIST patches are 224 px at about 2.0 µm/px; older files without the key
# get this value and a note saying it was assumed.
DEFAULT_MPP = 2.0
MPP_NOTE = f"the file records no mhist.mpp; MHIST's {DEFAULT_MPP} µm/px is assumed"


@dataclass(frozen=True)
class ModelMetadata:
    classes: tuple[str, ...]  # in logit order
    positive_class: str
    threshold: float  # decision threshold on P(positive_class)
    preprocessing: PreprocessSpec
    precision: str  # "fp32" | "int8"
    name: str = "mhist-resnet18"
    version: str = "unregistered"
    input_name: str = INPUT_NAME
    output_name: str = OUTPUT_NAME
    provenance: dict = field(default_factory=dict)  # mlflow run id, registered version, git commit
    metrics: dict = field(default_factory=dict)  # {"val": {...}, "test": {...}}
    quantization: dict = field(default_factory=dict)  # int8 settings, empty for fp32
    mpp: float = DEFAULT_MPP  # µm per pixel of the network input (its physical scale)
    mpp_note: str | None = None  # why `mpp` is an assumption, when the file lacks it
    # Input quality ranges from the training images (services/core/quality.py, `mhist.quality`).
    # None: no quality checks, and predictions carry no `warnings` / `quality` fields.
    quality: QualityRanges | None = None
    # Class activation maps (services/core/explain.py): method, feature output name, fp32 fc weights
    # (C, K) and bias (C,). Empty for a file exported without the feature output.
    explain: dict = field(default_factory=dict)
    # Temperature scaling fitted on validation at export (export/calibration.py): {"method":
    # "temperature", "temperature": T, "threshold": `threshold` mapped into calibrated P, ...}.
    # Empty: the file serves softmax(logits) as before.
    calibration: dict = field(default_factory=dict)
    # {"low", "high", ...} on the served P(positive): strictly inside it the decision is
    # "uncertain". Empty: decision == label.
    uncertain_band: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_classes(self.classes)
        _check_preprocessing(self.preprocessing)
        if len(self.classes) < 2 or self.positive_class not in self.classes:
            raise ValueError(
                f"positive class {self.positive_class!r} is not one of the classes {self.classes}"
            )
        if not (_is_number(self.threshold) and 0.0 <= self.threshold <= 1.0):
            raise ValueError(f"threshold {self.threshold!r} is not a number in [0, 1]")
        if not (_is_number(self.mpp) and 0.0 < self.mpp < math.inf):
            raise ValueError(f"mpp {self.mpp} is not a positive number of µm per pixel")
        _check_calibration(self)
        _check_uncertain_band(self)

    @property
    def positive_index(self) -> int:
        return self.classes.index(self.positive_class)

    @property
    def temperature(self) -> float:
        """Divides the logits before softmax; 1.0 for a file without calibration."""
        return float(self.calibration.get("temperature", 1.0))

    @property
    def served_threshold(self) -> float:
        """The threshold in the space of the probabilities served (calibrated or not). The label
        is still decided by `threshold` on the uncalibrated P(positive), its own definition."""
        return float(self.calibration["threshold"]) if self.calibration else self.threshold

    @property
    def threshold_scale(self) -> str:
        """Which probabilities `served_threshold` (and every served P) is on."""
        return "calibrated" if self.calibration else "raw"

    @property
    def trained_on_synthetic_data(self) -> bool:
        """The provenance export recorded (export/to_onnx.py, from the training run's dataset
        card, training/sample_data.py's marker): the model never saw tissue."""
        return self.provenance.get("synthetic_data") is True

    def decide(self, label: str, p_positive: float, reasons: list | None = None) -> str:
        """The decision: "not_assessable" when the input failed a quality check (`reasons`),
        else "uncertain" strictly inside the band (on the served P(positive)), else the
        label."""
        if reasons:
            return NOT_ASSESSABLE
        band = self.uncertain_band
        return "uncertain" if band and band["low"] < p_positive < band["high"] else label

    def to_props(self) -> dict[str, str]:
        """Flat string map for `onnx.ModelProto.metadata_props`."""
        values = {
            "schema_version": SCHEMA_VERSION,
            "classes": json.dumps(list(self.classes)),
            "positive_class": self.positive_class,
            "threshold": repr(float(self.threshold)),
            "preprocessing": json.dumps(self.preprocessing.to_dict()),
            "precision": self.precision,
            "name": self.name,
            "version": str(self.version),
            "input_name": self.input_name,
            "output_name": self.output_name,
            "provenance": json.dumps(self.provenance, sort_keys=True),
            "metrics": json.dumps(self.metrics, sort_keys=True),
            "quantization": json.dumps(self.quantization, sort_keys=True),
            "mpp": repr(float(self.mpp)),
        }
        if self.quality is not None:  # optional, like explain
            values["quality"] = json.dumps(self.quality.to_dict(), sort_keys=True)
        if self.explain:  # optional: older readers and files without it are unaffected
            values["explain"] = json.dumps(self.explain)
        if self.calibration:  # optional, like explain
            values["calibration"] = json.dumps(self.calibration, sort_keys=True)
        if self.uncertain_band:
            values["uncertain_band"] = json.dumps(self.uncertain_band, sort_keys=True)
        return {PREFIX + key: value for key, value in values.items()}

    @classmethod
    def from_props(cls, props: dict[str, str]) -> ModelMetadata:
        """Parse a metadata map; ValueError names the missing or malformed key."""
        ours = {k[len(PREFIX) :]: v for k, v in props.items() if k.startswith(PREFIX)}
        missing = [PREFIX + key for key in REQUIRED_KEYS if key not in ours]
        if missing:
            raise ValueError(
                f"the ONNX file lacks the metadata {', '.join(missing)}; "
                "export it with `python export/to_onnx.py`"
            )
        try:
            return cls(
                classes=tuple(_json(ours, "classes", list)),
                positive_class=ours["positive_class"],
                threshold=float(ours["threshold"]),
                preprocessing=PreprocessSpec.from_dict(_json(ours, "preprocessing", dict)),
                precision=ours["precision"],
                name=ours.get("name", "mhist-resnet18"),
                version=ours.get("version", "unregistered"),
                input_name=ours.get("input_name", INPUT_NAME),
                output_name=ours.get("output_name", OUTPUT_NAME),
                provenance=json.loads(ours.get("provenance", "{}")),
                metrics=json.loads(ours.get("metrics", "{}")),
                quantization=json.loads(ours.get("quantization", "{}")),
                mpp=float(ours.get("mpp", DEFAULT_MPP)),
                mpp_note=None if "mpp" in ours else MPP_NOTE,
                quality=(QualityRanges.from_dict(_json(ours, "quality", dict))
                         if "quality" in ours else None),
                explain=_json(ours, "explain", dict) if "explain" in ours else {},
                calibration=_json(ours, "calibration", dict) if "calibration" in ours else {},
                uncertain_band=(_json(ours, "uncertain_band", dict)
                                if "uncertain_band" in ours else {}),
            )
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"the ONNX file's mhist.* metadata is malformed: {exc}") from None

    def describe(self) -> dict:
        """JSON-friendly view for /metadata and reports."""
        return {
            "name": self.name,
            "version": self.version,
            "precision": self.precision,
            "classes": list(self.classes),
            "positive_class": self.positive_class,
            # One threshold, on the scale of the probabilities served; the file's own
            # (uncalibrated) value under a name that says so.
            "threshold": self.served_threshold,
            "threshold_scale": self.threshold_scale,
            "threshold_raw": self.threshold,
            "preprocessing": self.preprocessing.to_dict(),
            "input_name": self.input_name,
            "output_name": self.output_name,
            "provenance": self.provenance,
            "metrics": self.metrics,
            "quantization": self.quantization,
            "mpp": self.mpp,
            **({"mpp_note": self.mpp_note} if self.mpp_note else {}),
            **({"quality": self.quality.to_dict()} if self.quality is not None else {}),
            "calibration": self.calibration or None,  # null: probabilities as the graph gives
            "uncertain_band": self.uncertain_band or None,  # null: decision == label
            # What a client needs to know; the weights stay in the file (K × C numbers).
            **({"explain": {k: self.explain.get(k) for k in ("method", "feature_output")}}
               if self.explain else {}),
        }


def _json(props: dict[str, str], key: str, kind: type) -> Any:
    value = json.loads(props[key])
    if not isinstance(value, kind):
        raise ValueError(f"{PREFIX}{key} is {type(value).__name__}, not a JSON "
                         f"{'list' if kind is list else 'object'}")
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_classes(classes: tuple) -> None:
    if not all(isinstance(c, str) and c for c in classes) or len(set(classes)) != len(classes):
        raise ValueError(f"classes {list(classes)} must be distinct non-empty strings")


def _check_preprocessing(spec: PreprocessSpec) -> None:
    """ValueError naming the first value of `mhist.preprocessing` that serving cannot use."""
    for name, value in (("size", spec.size), ("resize_size", spec.resize_size)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"preprocessing.{name} {value!r} is not an integer")
    if not MIN_SIDE <= spec.size <= MAX_INPUT_SIZE:
        raise ValueError(f"preprocessing.size {spec.size} is outside [{MIN_SIDE}, "
                         f"{MAX_INPUT_SIZE}] pixels")
    if not spec.size <= spec.resize_size <= MAX_RESIZE_FACTOR * spec.size:
        raise ValueError(f"preprocessing.resize_size {spec.resize_size} is outside [size, "
                         f"{MAX_RESIZE_FACTOR} × size] = [{spec.size}, "
                         f"{MAX_RESIZE_FACTOR * spec.size}]")
    if not (_is_number(spec.pixel_max) and 1.0 <= spec.pixel_max <= 65535.0):
        raise ValueError(f"preprocessing.pixel_max {spec.pixel_max!r} is outside [1, 65535]")
    top = 255.0 / spec.pixel_max  # inputs span [0, top] once divided by pixel_max
    for name, low_open in (("mean", False), ("std", True)):
        values = getattr(spec, name)
        if len(values) != 3 or not all(
            _is_number(v) and (0.0 < v if low_open else 0.0 <= v) and v <= top for v in values
        ):
            bound = "(0" if low_open else "[0"
            raise ValueError(f"preprocessing.{name} {list(values)} must be 3 numbers (R, G, B) "
                             f"in {bound}, {top:g}]")


# Temperatures outside this range are no calibration but a broken file: logits / 1e-300 overflow.
MIN_TEMPERATURE, MAX_TEMPERATURE = 1e-3, 1e3


def calibrated_threshold(threshold: float, temperature: float) -> float:
    """`threshold` on softmax(z) → the same cut on softmax(z / T), for two classes.

    P = sigmoid(margin), margin = z_pos − z_neg; dividing by T > 0 keeps every margin's order,
    so p ≥ t ⟺ sigmoid(margin / T) ≥ sigmoid(logit(t) / T): no label changes.
    """
    if threshold <= 0.0 or threshold >= 1.0:
        return float(threshold)  # always / never positive, at any temperature
    margin = math.log(threshold) - math.log1p(-threshold)  # logit(t)
    return 1.0 / (1.0 + math.exp(-margin / temperature))


def _check_calibration(meta: ModelMetadata) -> None:
    """ValueError naming the mhist.calibration value that serving cannot use."""
    cal = meta.calibration
    if not cal:
        return
    key = f"{PREFIX}calibration"
    if cal.get("method") != "temperature":
        raise ValueError(f"{key}.method {cal.get('method')!r} is not 'temperature' (the only "
                         "calibration this server applies)")
    t = cal.get("temperature")
    if not (_is_number(t) and MIN_TEMPERATURE <= t <= MAX_TEMPERATURE):
        raise ValueError(f"{key}.temperature {t!r} is not a number in [{MIN_TEMPERATURE:g}, "
                         f"{MAX_TEMPERATURE:g}]")
    cut = cal.get("threshold")
    expected = calibrated_threshold(meta.threshold, t)
    if not (_is_number(cut) and abs(cut - expected) <= 1e-9):
        raise ValueError(f"{key}.threshold {cut!r} is not {PREFIX}threshold {meta.threshold!r} "
                         f"at temperature {t!r} (expected {expected!r}); re-export the model")


def _check_uncertain_band(meta: ModelMetadata) -> None:
    band = meta.uncertain_band
    if not band:
        return
    key = f"{PREFIX}uncertain_band"
    if len(meta.classes) != 2:
        raise ValueError(f"{key} needs two classes, the file has {len(meta.classes)}")
    low, high, cut = band.get("low"), band.get("high"), meta.served_threshold
    if not (_is_number(low) and _is_number(high) and 0.0 <= low <= cut <= high <= 1.0):
        raise ValueError(f"{key} low {low!r} and high {high!r} must be numbers with 0 ≤ low ≤ "
                         f"threshold ({cut!r}) ≤ high ≤ 1")
