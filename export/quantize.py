"""Static INT8 (QDQ) quantization fed by the serving preprocessing.

Generic step (`quantize_int8`) + model-specific reader (`ImageCalibrationReader`), as in the
onnxruntime quantization examples. `quant_pre_process` runs as its own step first.
"""

from __future__ import annotations

import random
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from services.core.cpus import CPU_CLASSES, DEFAULT_CLASS
from services.core.preprocessing import PreprocessSpec, preprocess_bytes


@dataclass(frozen=True)
class QuantSettings:
    """What the INT8 file was made with; stored in its metadata (`mhist.quantization`) and the
    export report.

    u8 activations with s8 per-channel weights, made for a named CPU class
    (services/core/cpus.py): `portable` uses reduce_range (7-bit weights), because without
    VNNI (AVX2 only) the u8×s8 multiply-add saturates 16-bit intermediates with full-range
    weights; `vnni` uses the full range, 4-5× closer to FP32 on CPUs with a dot-product
    instruction. The class and the CPU features it needs travel with the file, and the server
    refuses a file whose class its CPU lacks.
    """

    cpu_class: str = DEFAULT_CLASS
    cpu_requires_any: tuple[str, ...] = ()
    format: str = "QDQ"
    activation_type: str = "QUInt8"
    weight_type: str = "QInt8"
    per_channel: bool = True
    reduce_range: bool = True
    calibration_method: str = "MinMax"
    calibration_images: int = 0
    calibration_seed: int = 0

    @classmethod
    def for_class(cls, cpu_class: str, **calibration: Any) -> QuantSettings:
        """The settings of a CPU class (ValueError naming the classes for an unknown one)."""
        if cpu_class not in CPU_CLASSES:
            raise ValueError(f"CPU class {cpu_class!r} is not one of {', '.join(CPU_CLASSES)}")
        chosen = CPU_CLASSES[cpu_class]
        return cls(cpu_class=cpu_class, cpu_requires_any=chosen.requires_any,
                   reduce_range=chosen.reduce_range, **calibration)

    def to_dict(self) -> dict:
        return {**asdict(self), "cpu_requires_any": list(self.cpu_requires_any)}


def int8_file_name(cpu_class: str) -> str:
    """`model.int8.onnx` for the default class (where the Makefile, the images and the README
    look), `model.int8.<class>.onnx` for another."""
    return "model.int8.onnx" if cpu_class == DEFAULT_CLASS else f"model.int8.{cpu_class}.onnx"


class ImageCalibrationReader(CalibrationDataReader):
    """Feeds images one at a time through the exact serving preprocessing."""

    def __init__(self, paths: Sequence[Path], spec: PreprocessSpec, input_name: str) -> None:
        self._paths = list(paths)
        self._spec = spec
        self._input_name = input_name
        self._index = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._index >= len(self._paths):
            return None
        data = self._paths[self._index].read_bytes()
        self._index += 1
        return {self._input_name: preprocess_bytes(data, self._spec)[None]}  # (1, 3, S, S)

    def rewind(self) -> None:
        self._index = 0


def pick_calibration_images(paths: Sequence[Path], count: int, seed: int) -> list[Path]:
    """Sorted then seeded sample, so the same data and seed always calibrate identically."""
    ordered = sorted(paths, key=lambda p: p.name)
    if count >= len(ordered):
        return ordered
    return sorted(random.Random(seed).sample(ordered, count), key=lambda p: p.name)


def quantize_int8(
    fp32_path: Path,
    int8_path: Path,
    reader: ImageCalibrationReader,
    settings: QuantSettings,
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # Shape inference + graph optimisation first: the quantizer then sees fused Conv+BN.
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=False)
        quantize_static(
            str(prepared),
            str(int8_path),
            calibration_data_reader=reader,
            quant_format=QuantFormat[settings.format],
            activation_type=QuantType[settings.activation_type],
            weight_type=QuantType[settings.weight_type],
            per_channel=settings.per_channel,
            reduce_range=settings.reduce_range,
            calibrate_method=CalibrationMethod[settings.calibration_method],
        )
