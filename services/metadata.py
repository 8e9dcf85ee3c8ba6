"""What an ONNX file says about itself: the contract between export and every serving target.

Stored as ONNX `metadata_props` (string → string; structured values are JSON) so that a file
is self-describing in any tool (Netron, onnx.load, onnxruntime's `custom_metadata_map`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from services.preprocessing import PreprocessSpec

SCHEMA_VERSION = "1"
PREFIX = "mhist."
REQUIRED_KEYS = ("classes", "positive_class", "threshold", "preprocessing", "precision")
# The graph's tensor names, (N, 3, S, S) float32 in → (N, C) logits out. Export names the graph
# with these and records them (mhist.input_name / output_name); serving uses the recorded names.
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


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

    def __post_init__(self) -> None:
        if len(self.classes) < 2 or self.positive_class not in self.classes:
            raise ValueError(
                f"positive class {self.positive_class!r} is not one of the classes {self.classes}"
            )
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold {self.threshold} is outside [0, 1]")

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
                classes=tuple(json.loads(ours["classes"])),
                positive_class=ours["positive_class"],
                threshold=float(ours["threshold"]),
                preprocessing=PreprocessSpec.from_dict(json.loads(ours["preprocessing"])),
                precision=ours["precision"],
                name=ours.get("name", "mhist-resnet18"),
                version=ours.get("version", "unregistered"),
                input_name=ours.get("input_name", INPUT_NAME),
                output_name=ours.get("output_name", OUTPUT_NAME),
                provenance=json.loads(ours.get("provenance", "{}")),
                metrics=json.loads(ours.get("metrics", "{}")),
                quantization=json.loads(ours.get("quantization", "{}")),
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
        }
