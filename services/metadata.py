"""What an ONNX file says about itself: the contract between export and every serving target.

Stored as ONNX `metadata_props` (string → string; structured values are JSON) so that a file
is self-describing in any tool (Netron, onnx.load, onnxruntime's `custom_metadata_map`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from services.preprocessing import MIN_SIDE, PreprocessSpec

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

    @property
    def positive_index(self) -> int:
        return self.classes.index(self.positive_class)

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
            "threshold": self.threshold,
            "preprocessing": self.preprocessing.to_dict(),
            "input_name": self.input_name,
            "output_name": self.output_name,
            "provenance": self.provenance,
            "metrics": self.metrics,
            "quantization": self.quantization,
            "mpp": self.mpp,
            **({"mpp_note": self.mpp_note} if self.mpp_note else {}),
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
