"""PyTorch model → one self-contained FP32 ONNX file carrying the model's metadata."""

from __future__ import annotations

import tempfile
from pathlib import Path

import onnx
import torch

from export.features import with_features
from services.core.metadata import INPUT_NAME, OUTPUT_NAME, PREFIX, ModelMetadata

OPSET = 18


class ExportError(RuntimeError):
    """An export step failed a check; the message carries the numbers."""


def export_fp32(model: torch.nn.Module, image_size: int, out_path: Path) -> None:
    """Export with a dynamic batch axis into a single file (no `.onnx.data` beside it).

    A batch of 2 as the example: a batch-1 example can specialise the batch dimension to 1.
    A ResNet also outputs its last feature map (export/features.py), for explanations.
    """
    model, extra_outputs = with_features(model.eval().cpu())
    example = torch.randn(2, 3, image_size, image_size)  # (N, 3, S, S)
    batch = torch.export.Dim("batch", min=1, max=1024)
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / "model.onnx"
        torch.onnx.export(
            model,
            (example,),
            str(staged),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME, *extra_outputs],
            dynamic_shapes=({0: batch},),
            opset_version=OPSET,
            dynamo=True,
            verbose=False,
        )
        # The dynamo exporter writes weights to model.onnx.data; load both, save one file.
        proto = onnx.load(str(staged), load_external_data=True)
    onnx.save_model(proto, str(out_path), save_as_external_data=False)
    onnx.checker.check_model(str(out_path), full_check=True)


def write_metadata(path: Path, metadata: ModelMetadata) -> None:
    """Replace the file's `mhist.*` metadata_props with `metadata` (other props are kept)."""
    proto = onnx.load(str(path))
    kept = [p for p in proto.metadata_props if not p.key.startswith(PREFIX)]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    onnx.helper.set_model_props(proto, {**{p.key: p.value for p in kept}, **metadata.to_props()})
    proto.doc_string = (
        f"MHIST {metadata.positive_class}-vs-rest ResNet18 ({metadata.precision}); "
        "see metadata_props mhist.* for classes, threshold and preprocessing."
    )
    proto.producer_name = proto.producer_name or "mhist-onnx"
    onnx.save_model(proto, str(path), save_as_external_data=False)
    onnx.checker.check_model(str(path))


def read_metadata(path: Path) -> ModelMetadata:
    proto = onnx.load(str(path), load_external_data=False)
    return ModelMetadata.from_props({p.key: p.value for p in proto.metadata_props})
