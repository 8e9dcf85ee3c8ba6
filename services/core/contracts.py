"""The shapes a client receives, declared once.

Every answer that classifies images is built from these types and turned into JSON by
`msgspec.to_builtins`; the OpenAPI components of /openapi.json are generated from the same
types (`schema_components`). A field added, renamed or documented here changes both, so the
JSON and its description cannot drift apart; tests validate real answers of every route against
the generated schemas.

msgspec rather than pydantic: one 0.2 MB wheel with no dependencies in the serving images, and
building a Struct does no validation on the hot path (the tests validate instead).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from services.core.quality import GREY_MAX_SATURATION, NOT_ASSESSABLE, WARNING_CODES

Probability = Annotated[float, Meta(ge=0.0, le=1.0)]
Precision = Literal["fp32", "int8"]
WarningCode = Literal[WARNING_CODES]  # type: ignore[valid-type]  # a tuple of str literals
ThresholdScale = Annotated[Literal["calibrated", "raw"], Meta(description=(
    "Which probabilities the threshold is on: calibrated (softmax(logits / T), the file "
    "carries a temperature) or raw (softmax(logits)). Always the scale of the probabilities "
    "shown beside it."))]


def _doc(text: str, **constraints: Any) -> Meta:
    return Meta(description=text, **constraints)


class ModelRef(Struct, kw_only=True):
    """Which model answered."""

    name: str
    version: str
    precision: Precision


class Explanation(Struct, kw_only=True, omit_defaults=True, rename={"class_": "class"}):
    """Present only when asked for (explain=1). The class activation map of the predicted
    class: Σ_k w_ck·A_k over the last feature map (equal to Grad-CAM at the last convolution),
    ReLU, divided by its largest magnitude. Batch items carry the grid without the overlay."""

    method: Literal["cam"]
    class_: Annotated[str, _doc("The class explained: the label.")]
    grid: Annotated[list[list[Probability]], _doc(
        "h×w map over the network input (7×7 for 224 px; at most 16×16), row-major, values "
        "in [0, 1].")]
    overlay_png_base64: Annotated[str | None, _doc(
        "PNG of the map tinted over the network input (the resized, centre-cropped image), at "
        "the input size; single images only.")] = None


class OutOfRange(Struct, kw_only=True):
    """One statistic outside its range."""

    statistic: Annotated[str, _doc("e.g. focus, tissue_fraction, od_mean.g, stain.eosin, "
                                   "max_saturation.")]
    value: float
    expected: Annotated[list[float], _doc("[low, high].", min_length=2, max_length=2)]


class InputWarning(Struct, kw_only=True, omit_defaults=True):
    """Something a person must know about this answer: a statistic of the input outside the
    training images' range (each such code also makes the decision not_assessable), or a
    notice about the model itself."""

    code: Annotated[WarningCode, _doc(
        "blurry: focus below range; low_tissue: tissue fraction below range; unusual_stain: "
        "optical density statistics outside their ranges; grayscale: no colour (highest "
        f"saturation under {GREY_MAX_SATURATION:g}) in an image with content. "
        "synthetic_training_data: the model learnt from the synthetic sample, not tissue (a "
        "notice on every answer of such a model; not about the input).")]
    message: Annotated[str, _doc("For a person: what was found, with its values and ranges.")]
    value: Annotated[float | None, _doc(
        "The measured value (of `statistic`); absent for the model notice.")] = None
    expected: Annotated[list[float], _doc(
        "[low, high] from the training images (grayscale: the H&E saturation floor and 1).",
        min_length=2, max_length=2)] | None = None
    statistic: Annotated[str | None, _doc(
        "Which statistic `value` is, e.g. focus, tissue_fraction, od_mean.g, stain.eosin; "
        "for unusual_stain the one furthest outside its range.")] = None
    statistics: Annotated[list[OutOfRange] | None, _doc(
        "Every statistic of this check outside its range, with its value and range.")] = None


class InputQuality(Struct, kw_only=True):
    """Measured on the RGB crop the network sees (before normalisation)."""

    focus: Annotated[float, _doc("Variance of the Laplacian of the grey crop.", ge=0.0)]
    tissue_fraction: Probability
    od_mean: Annotated[dict[str, float] | None, _doc(
        "Mean optical density of the tissue pixels per channel (r, g, b); null with under 5 % "
        "tissue.")]
    stain: Annotated[dict[str, float] | None, _doc(
        "Mean haematoxylin and eosin concentrations (Ruifrok-Johnston colour deconvolution); "
        "null with under 5 % tissue.")]
    max_saturation: Annotated[float, _doc(
        "Highest HSV saturation (smoothed, at mask resolution): the greyscale check.",
        ge=0.0, le=1.0)] = 1.0
    contrast: Annotated[float, _doc(
        "Standard deviation of the grey levels (0-255) at mask resolution: greyscale with "
        "content, not glass.", ge=0.0)] = 0.0


class Prediction(Struct, kw_only=True, omit_defaults=True):
    """One image's answer, on every target."""

    label: Annotated[str, _doc("The class at the model's threshold (never changed by "
                               "calibration).")]
    decision: Annotated[str, _doc(
        f"What to act on. \"{NOT_ASSESSABLE}\" when the input is not what the model was "
        "made for (any input warning: no tissue, greyscale, another stain, out of focus; see "
        "`reasons`); else \"uncertain\" when the served P(positive) lies strictly inside the "
        "model's uncertain band (see /metadata uncertain_band); else the label.")]
    probabilities: Annotated[dict[str, Probability], _doc(
        "softmax(logits / T), T from /metadata calibration (1 without it); full precision.")]
    threshold: Annotated[float, _doc(
        "The decision threshold on P(positive) on the scale of `probabilities` "
        "(`threshold_scale`: calibrated when they are): label is the positive class exactly "
        "when P(positive) ≥ threshold. The same number as /metadata threshold.",
        ge=0.0, le=1.0)]
    threshold_scale: ThresholdScale
    model: ModelRef
    explanation: Explanation | None = None
    warnings: Annotated[list[InputWarning] | None, _doc(
        "Input quality warnings; [] when every check passed. Present (with `quality`) on "
        "every prediction when the model file records the training images' ranges "
        "(mhist.quality, see /metadata), and whenever the model notice applies; absent "
        "otherwise. /predict/region reports per tile `decision` and `reasons` instead.")] = None
    reasons: Annotated[list[WarningCode] | None, _doc(
        f"Why the decision is {NOT_ASSESSABLE}: the input warnings' codes; [] when the input "
        "passed every check. Present with `quality`.")] = None
    quality: InputQuality | None = None


class ErrorDetail(Struct, kw_only=True):
    code: Annotated[str, _doc("Stable machine code, e.g. invalid_image.")]
    message: Annotated[str, _doc("What was wrong and what to do, for a person.")]


class Error(Struct, kw_only=True):
    """Every error of every target: `{"error": {"code", "message"}}`, never a traceback."""

    error: ErrorDetail


class ItemError(Struct, kw_only=True):
    """A batch item that failed: the error a single request would get, with its status."""

    error: ErrorDetail
    status: int


_PREDICTION_OR_ERROR = {"oneOf": [{"$ref": "#/components/schemas/Prediction"},
                                  {"$ref": "#/components/schemas/ItemError"}]}


class BatchResponse(Struct, kw_only=True):
    """One result per image, in order: a prediction or the item's error."""

    predictions: list[Annotated[dict[str, Any], Meta(extra_json_schema=_PREDICTION_OR_ERROR)]]
    count: int
    errors: Annotated[int, _doc("How many items failed.")]


class Ready(Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    status: Literal["ready"]
    model: Annotated[dict[str, Any] | None, _doc(
        "name, version, precision and sha256; with an API token set, for token holders "
        "only")] = None


class Metadata(Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """What the served file says about itself (its mhist.* metadata) and how it is run."""

    name: str
    version: str
    precision: Precision
    classes: list[str]
    positive_class: str
    threshold: Annotated[float, _doc(
        "The decision threshold on P(positive) on the scale of the probabilities every "
        "answer serves (`threshold_scale`): calibrated when the file carries a temperature. "
        "Every prediction, region, slide and S3 result states this same number.")]
    threshold_scale: ThresholdScale
    threshold_raw: Annotated[float, _doc(
        "The same cut on the uncalibrated softmax(logits), as recorded in the file "
        "(mhist.threshold); equal to `threshold` without calibration. Not the scale of any "
        "served probability.")]
    preprocessing: dict[str, Any]
    input_name: str
    output_name: str
    provenance: dict[str, Any]
    metrics: dict[str, Any]
    quantization: dict[str, Any]
    mpp: Annotated[float, _doc("µm per pixel of the network input.")]
    calibration: Annotated[dict[str, Any] | None, _doc(
        "Temperature scaling fitted on validation at export: method, temperature, threshold "
        "(the uncalibrated `threshold` in calibrated P), fitted_on, images, validation ECE/NLL "
        "before and after. null: probabilities are softmax(logits).")]
    uncertain_band: Annotated[dict[str, Any] | None, _doc(
        "low and high on the served P(positive): strictly between them the decision is "
        "\"uncertain\"; chosen_on, target, and the validation coverage and accuracy. null: no "
        "band.")]
    sha256: str
    mpp_note: Annotated[str | None, _doc("Present when mpp was assumed.")] = None
    quality: Annotated[dict[str, Any] | None, _doc(
        "Input quality ranges from the training images (present when the file records "
        "them).")] = None
    explain: Annotated[dict[str, Any] | None, _doc(
        "method and feature_output, present when the file can answer explain=1.")] = None
    file: str | None = None
    size_bytes: int | None = None
    intra_op_threads: int | None = None
    onnxruntime: str | None = None
    cpu: Annotated[dict[str, Any] | None, _doc(
        "This CPU as onnxruntime's kernels see it (CPUID): arch, class (`vnni` or `portable`; "
        "the INT8 file's own is `quantization.cpu_class`), features, source.")] = None


class RegionGrid(Struct, kw_only=True, forbid_unknown_fields=True):
    columns: int
    rows: int
    tile_px: int
    stride_px: int
    background_tiles: int


class RegionScale(Struct, kw_only=True, forbid_unknown_fields=True):
    region_mpp: float
    model_mpp: float
    mpp_source: Literal["query", "model"]
    tile_um: float


class Heatmap(Struct, kw_only=True, forbid_unknown_fields=True):
    media_type: Literal["image/png"]
    base64: str


_TILE = {"description": "One tile, in region pixels: x, y, width, height, tissue_fraction, "
                        "p_<positive class> (p_ssa, P(SSA) on the threshold's scale), label, "
                        f"decision (the label, or {NOT_ASSESSABLE}) and reasons (the input "
                        "warnings' codes, ';'-separated; empty when assessable)."}


class RegionResponse(Struct, kw_only=True, forbid_unknown_fields=True):
    """A larger region tiled on the server: one prediction per tile with enough tissue, and a
    heatmap of P(positive)."""

    tiles: list[Annotated[dict[str, Any], Meta(extra_json_schema=_TILE)]]
    count: Annotated[int, _doc("Tiles analysed (enough tissue).")]
    grid: RegionGrid
    scale: RegionScale
    summary: Annotated[dict[str, Any], _doc(
        "Tissue area (mm²), share of the assessable tissue called positive (null when no tile "
        "is assessable), largest positive regions, and `assessable`: tiles, share and counts "
        "by reason, with the region's own stain and focus warnings.")]
    heatmap: Heatmap
    threshold: Annotated[float, _doc("The threshold tiles are labelled with, on the scale of "
                                     "their p_<positive class> (as /metadata threshold).")]
    threshold_scale: ThresholdScale
    model: dict[str, Any]


# The answers /openapi.json describes, by component name (the class name).
DOCUMENTED = (Prediction, BatchResponse, Error, ItemError, Ready, Metadata, RegionResponse)


def schema_components() -> dict[str, Any]:
    """JSON Schema (2020-12, as OpenAPI 3.1 uses) of every documented answer and the types
    they use, by name, with `$ref`s into #/components/schemas."""
    _, components = msgspec.json.schema_components(
        DOCUMENTED, ref_template="#/components/schemas/{name}")
    return components


def checked(kind: type[Struct], document: dict[str, Any]) -> dict[str, Any]:
    """`document` read as `kind` (every key declared, every type right) and back to JSON-ready
    form. For answers off the hot path; ValueError naming the key when it does not fit."""
    try:
        return to_json(msgspec.convert(document, kind))
    except msgspec.ValidationError as exc:
        raise ValueError(f"{kind.__name__} answer does not fit its declaration: {exc}") from None


def to_json(answer: Struct) -> dict[str, Any]:
    """The JSON-ready form of an answer (field order kept; unset optional fields left out)."""
    return msgspec.to_builtins(answer)
