"""Class activation maps from ONNX Runtime outputs, in numpy: explanations without torch.

A ResNet ends in global average pooling and one linear layer, so the logit of class c is
Σ_k w_ck · mean(A_k) + b_c and its class activation map is Σ_k w_ck · A_k over the last feature
map A (K, h, w); Grad-CAM at the last convolution is the same map, since ∂logit_c/∂A_k is the
constant w_ck / hw. The exported graph outputs A as a second output (export/features.py) and
the file's `mhist.explain` metadata holds the fp32 weights w, so serving needs one matrix
product per image. Nothing here runs unless a request asks for it (`?explain=1`, or SageMaker's
custom attribute `explain=1`): the default path fetches the logits alone.

Answer, per image: {"method": "cam", "class": <the predicted label>, "grid": h×w numbers in
[0, 1] (ReLU of the map over its largest magnitude, see `cam_grid`; at most 16×16, the feature
map of a 512 px input), "overlay_png_base64": the map tinted over the network's own input (the
resized, centre-cropped patch), a PNG of the input size}. Batch answers carry the grid only: an
overlay measured about 100 KB of base64 at 224 px on the synthetic sample, and 16 of them would
approach the 6 MB a Lambda response may hold.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
from PIL import Image

from services.core.errors import ServiceError
from services.core.metadata import ModelMetadata
from services.core.preprocessing import PreprocessSpec
from services.core.switches import parse_switch

PARAMETER = "explain"
CUSTOM_ATTRIBUTES = "X-Amzn-SageMaker-Custom-Attributes"
METHOD = "cam"
SHOWN_VALUE_CHARS = 40  # of a refused switch value in the 400
# The grid's cap: a ResNet's last feature map is the input / 32, and inputs are at most
# MAX_INPUT_SIZE = 512 px (services/core/metadata.py), so 16×16 numbers per answer at most.
MAX_GRID_SIDE = 16
# The overlay's strongest tint: 0.6 keeps the tissue under the hottest spot visible; where the
# map is 0 the patch shows untouched, so the picture reads as "evidence here".
MAX_ALPHA = 0.6
# A perceptually ordered ramp (dark blue → cyan → green → yellow → red, as in "turbo"),
# interpolated to 256 entries; no matplotlib in serving.
_ANCHORS = np.array([
    (0.00, 48, 18, 59), (0.25, 40, 120, 240), (0.50, 40, 220, 120),
    (0.75, 250, 200, 40), (1.00, 200, 20, 20),
], dtype=np.float64)
_LEVELS = np.linspace(0.0, 1.0, 256)
COLORMAP = np.stack([np.interp(_LEVELS, _ANCHORS[:, 0], _ANCHORS[:, i]) for i in (1, 2, 3)],
                    axis=1)  # (256, 3)
# Blending as two lookups by map level q: pixel · keep[q] + tint[q], in float32 (a few ms less
# per 224 px image than computing colour and alpha per pixel in float64).
_KEEP = (1.0 - MAX_ALPHA * _LEVELS).astype(np.float32)  # (256,)
_TINT = (COLORMAP * (MAX_ALPHA * _LEVELS)[:, None]).astype(np.float32)  # (256, 3)
# zlib level 1: measured here on a 224 px overlay, 82 KB in 24 ms against 73 KB in 103 ms at
# Pillow's default level 6 (a loaded machine; the ratio is what matters).
PNG_COMPRESS_LEVEL = 1


# --- the switch ------------------------------------------------------------------------------

def explain_switch(args: Mapping[str, str]) -> bool:
    """`?explain=1|true|yes|on` → True, absent or `0|false|no|off` → False, else a 400."""
    values = args.getlist(PARAMETER) if hasattr(args, "getlist") else (
        [args[PARAMETER]] if PARAMETER in args else [])
    if len(values) > 1:
        raise _invalid(f"Query parameter {PARAMETER} is given {len(values)} times; give it once.")
    return bool(values) and _switch(values[0], f"Query parameter {PARAMETER}")


def custom_attribute_switch(headers: Mapping[str, str]) -> bool:
    """SageMaker forwards no query string: `X-Amzn-SageMaker-Custom-Attributes: explain=1`.

    The header is the caller's free text (`key=value` pairs split by `;` or `,` by convention);
    only an `explain` key is read, everything else in it is ignored as before.
    """
    text = headers.get(CUSTOM_ATTRIBUTES) or ""
    for token in text.replace(",", ";").split(";"):
        key, sep, value = token.partition("=")
        if sep and key.strip().lower() == PARAMETER:
            return _switch(value, f"{CUSTOM_ATTRIBUTES} attribute {PARAMETER}")
    return False


def _switch(raw: str, where: str) -> bool:
    value = parse_switch(raw)
    if value is not None:
        return value
    raise _invalid(f"{where}={raw[:SHOWN_VALUE_CHARS]!r} is not valid: expected 1 or 0 "
                   "(also true/false, yes/no, on/off).")


def _invalid(message: str) -> ServiceError:
    return ServiceError(400, "invalid_parameter", message)


def unavailable(metadata: ModelMetadata) -> ServiceError:
    """409: the request is fine, the loaded file cannot answer it."""
    return ServiceError(
        409, "explanations_unavailable",
        f"The model {metadata.name} {metadata.version} ({metadata.precision}) was exported "
        "without explanations (no feature-map output or mhist.explain metadata). Re-export it "
        "with export/to_onnx.py, or send the request without explain.",
    )


# --- the map ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class CamExplainer:
    """The file's `mhist.explain`, checked against its graph once, at load."""

    feature_output: str
    weights: np.ndarray  # (C, K) float32, the fp32 fc weights
    classes: tuple[str, ...]
    spec: PreprocessSpec

    @classmethod
    def from_model(cls, metadata: ModelMetadata,
                   session: ort.InferenceSession) -> CamExplainer | None:
        """None for a file without explanations; ValueError for one whose claim is broken."""
        explain = metadata.explain
        if not explain:
            return None
        if explain.get("method") != METHOD:
            raise ValueError(f"mhist.explain method {explain.get('method')!r} is not {METHOD!r}")
        name = explain.get("feature_output")
        shapes = {o.name: o.shape for o in session.get_outputs()}
        if name not in shapes:
            raise ValueError(f"mhist.explain names the feature output {name!r}, but the graph "
                             f"has outputs {sorted(shapes)}")
        shape = shapes[name]  # [N, K, h, w]; h and w are fixed by the exported input size
        if len(shape) != 4 or not all(isinstance(d, int) and 0 < d <= MAX_GRID_SIDE
                                      for d in shape[2:]):
            raise ValueError(f"mhist.explain feature output {name!r} has shape {shape}, not "
                             f"(N, K, h, w) with h, w fixed and at most {MAX_GRID_SIDE}")
        try:
            weights = np.asarray(explain.get("weights"), dtype=np.float32)  # (C, K)
        except (TypeError, ValueError):  # ragged or not numbers: reported as a bad shape below
            weights = np.empty(0, dtype=np.float32)
        channels = shape[1] if isinstance(shape[1], int) else weights.shape[-1]
        expected = (len(metadata.classes), channels)
        if weights.shape != expected or not np.isfinite(weights).all():
            problem = f"shape {weights.shape}" if weights.shape != expected else "NaN or inf"
            raise ValueError(f"mhist.explain weights must be {expected[0]} × {expected[1]} finite "
                             f"numbers (classes × channels of output {name!r}); got {problem}")
        return cls(name, weights, metadata.classes, metadata.preprocessing)

    def explain(self, features: np.ndarray, image: np.ndarray, label: str,
                overlay: bool = True) -> dict:
        """One image: features (K, h, w) and its network input (3, S, S) → the answer."""
        grid = cam_grid(features, self.weights[self.classes.index(label)])  # (h, w)
        answer = {"method": METHOD, "class": label, "grid": grid.tolist()}
        if overlay:
            png = overlay_png(image, grid, self.spec)
            answer["overlay_png_base64"] = base64.b64encode(png).decode("ascii")
        return answer


def cam_grid(features: np.ndarray, class_weights: np.ndarray) -> np.ndarray:
    """Σ_k w_k A_k, ReLU, scaled by its largest magnitude; (K, h, w), (K,) → (h, w) in [0, 1].

    Where the class's support dominates (the usual case) this is Grad-CAM's own scaling, the
    maximum becomes 1. Scaling by the largest magnitude rather than the largest positive value
    keeps a patch that speaks almost only against the class faint: on the fixture model, maps
    ≤ 0 but for one cell at 0.005 (against -0.72 elsewhere) otherwise showed that noise at full
    strength, in FP32 and not in INT8. All zeros when no cell supports the class.
    """
    cam = np.tensordot(class_weights.astype(np.float64),
                       features.astype(np.float64), axes=1)  # (h, w)
    scale = np.abs(cam).max()
    return np.maximum(cam, 0.0) / scale if scale > 0 else np.zeros_like(cam)


def upsample(grid: np.ndarray, size: int) -> np.ndarray:
    """(h, w) → (size, size) bilinear, cell centres aligned (align_corners=False)."""
    plane = Image.fromarray(grid.astype(np.float32))  # mode F
    return np.asarray(plane.resize((size, size), Image.Resampling.BILINEAR))


def overlay_png(image: np.ndarray, grid: np.ndarray, spec: PreprocessSpec) -> bytes:
    """The map tinted over the network input (undone normalisation), as PNG bytes."""
    rgb = unnormalize(image, spec)  # (S, S, 3) float32 in [0, 255]
    level = np.rint(np.clip(upsample(grid, rgb.shape[0]), 0.0, 1.0) * 255).astype(np.intp)
    blended = rgb * _KEEP[level][..., None] + _TINT[level]  # (S, S, 3)
    out = io.BytesIO()
    Image.fromarray(np.rint(blended).astype(np.uint8)).save(
        out, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return out.getvalue()


def unnormalize(image: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """(3, S, S) model input → (S, S, 3) pixels in [0, 255]: normalize() run backwards."""
    mean = np.asarray(spec.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(spec.std, dtype=np.float32)[:, None, None]
    pixels = (image * std + mean) * np.float32(spec.pixel_max)  # (3, S, S)
    return np.clip(pixels, 0.0, 255.0).transpose(1, 2, 0)
