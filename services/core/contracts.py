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

from services.core.quality import WARNING_CODES

Probability = Annotated[float, Meta(ge=0.0, le=1.0)]
Precision = Literal["fp32", "int8"]
WarningCode = Literal[WARNING_CODES]  # type: ignore[valid-type]  # a tuple of str literals


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


class InputWarning(Struct, kw_only=True, omit_defaults=True):
    """A statistic of the input outside the training images' range."""

    code: Annotated[WarningCode, _doc(
        "blurry: focus below range; low_tissue: tissue fraction below range; unusual_stain: "
        "an optical density statistic outside it.")]
    message: str
    value: Annotated[float, _doc("The measured value.")]
    expected: Annotated[list[float], _doc("[low, high] from the training images.",
                                          min_length=2, max_length=2)]
    statistic: Annotated[str | None, _doc(
        "unusual_stain only: which one, e.g. od_mean.g or stain.eosin.")] = None


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


class Prediction(Struct, kw_only=True, omit_defaults=True):
    """One image's answer, on every target."""

    label: Annotated[str, _doc("The class at the model's threshold (never changed by "
                               "calibration).")]
    decision: Annotated[str, _doc(
        "The label, or \"uncertain\" when the served P(positive) lies strictly inside the "
        "model's uncertain band (see /metadata uncertain_band); equal to label when the file "
        "has none.")]
    probabilities: Annotated[dict[str, Probability], _doc(
        "softmax(logits / T), T from /metadata calibration (1 without it); full precision.")]
    threshold: Annotated[float, _doc(
        "The decision threshold in the space of `probabilities` (calibrated when they are).",
        ge=0.0, le=1.0)]
    model: ModelRef
    explanation: Explanation | None = None
    warnings: Annotated[list[InputWarning] | None, _doc(
        "Input quality warnings; [] when every check passed. Present (with `quality`) on "
        "every prediction when the model file records the training images' ranges "
        "(mhist.quality, see /metadata); absent when it does not. Not computed per tile by "
        "/predict/region.")] = None
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
        "The decision threshold on the scale of the graph's own softmax (uncalibrated); "
        "`calibration.threshold` is the same threshold on the served, calibrated scale.")]
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
                        "label, and p_<positive class> (p_ssa), P(SSA)."}


class RegionResponse(Struct, kw_only=True, forbid_unknown_fields=True):
    """A larger region tiled on the server: one prediction per tile with enough tissue, and a
    heatmap of P(positive)."""

    tiles: list[Annotated[dict[str, Any], Meta(extra_json_schema=_TILE)]]
    count: Annotated[int, _doc("Tiles analysed (enough tissue).")]
    grid: RegionGrid
    scale: RegionScale
    summary: Annotated[dict[str, Any], _doc(
        "Tissue area (mm²), share of tissue called positive, largest positive regions.")]
    heatmap: Heatmap
    threshold: float
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
