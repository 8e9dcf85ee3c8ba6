"""Explanations computed in ONNX Runtime (services/core/explain.py) against torch, across precisions
and across every serving target.

The model is the session fixture exported by the real pipeline (tests/conftest.py): a ResNet18
trained on the synthetic sample at 64 px, so its feature map is 2×2. The reference
maps come from torch autograd (Grad-CAM at layer4) on the checkpoint the file was exported from.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

from services.core.errors import ModelLoadError
from services.core.explain import CUSTOM_ATTRIBUTES, cam_grid, overlay_png, upsample
from services.core.metadata import PREFIX
from services.core.model import InferenceModel
from services.core.preprocessing import decode_image, preprocess_bytes, resize_and_crop, to_rgb
from services.web.app import create_app
from tests.conftest import unavailable
from tests.support.corpus import small_png
from tests.support.targets import all_targets
from training.data import load_annotations

# Torch and ONNX Runtime run the same float32 convolutions in different orders; on maps
# scaled to [0, 1] the largest difference measured here was 4.65e-6 (62 test images, both
# classes). 1e-4 leaves room for other CPUs and thread counts.
CAM_TOLERANCE = 1e-4
MIN_CORRELATION = 0.9  # FP32 vs INT8 maps, per test image
FAINT = 0.1  # a served map whose strongest cell is under this tints the patch by < 6 %
BAD_VALUES = ["banana", "", "2", "yes please", "1;drop"]


# --- fixtures ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fp32(model_fp32_path: Path) -> InferenceModel:
    return InferenceModel(model_fp32_path)


@pytest.fixture(scope="module")
def int8(model_int8_path: Path) -> InferenceModel:
    return InferenceModel(model_int8_path)


@pytest.fixture(scope="module")
def test_images(sample_dir: Path) -> list[Path]:
    """The sample's test partition: only reported on, nothing is tuned on it."""
    return [r.path for r in load_annotations(sample_dir) if r.partition == "test"]


@pytest.fixture(scope="module")
def targets(model_int8_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    return {t.name: t for t in all_targets(model_int8_path, tmp_path_factory.mktemp("explain"))}


@pytest.fixture(scope="module")
def old_export(model_fp32_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same model as exported before explanations: logits only, no mhist.explain."""
    proto = onnx.load(str(model_fp32_path))
    kept = [o for o in proto.graph.output if o.name == "logits"]
    del proto.graph.output[:]
    proto.graph.output.extend(kept)
    props = [p for p in proto.metadata_props if p.key != PREFIX + "explain"]
    del proto.metadata_props[:]
    proto.metadata_props.extend(props)
    path = tmp_path_factory.mktemp("old") / "old.onnx"
    onnx.save(proto, str(path))
    return path


def torch_model(checkpoint: Path):
    try:
        from training.checkpoint import load_checkpoint
    except ImportError as exc:  # torch is a training dependency, not a serving one
        unavailable(f"torch is not installed ({exc}); pip install -e '.[train]'")
    model, _ = load_checkpoint(checkpoint)
    return model.eval()


def grad_cam(model, batch: np.ndarray, class_index: int) -> np.ndarray:
    """Grad-CAM (Selvaraju et al.) at layer4 with torch autograd → (N, h, w), scaled as served:
    ReLU over the map's largest magnitude (services/core/explain.py `cam_grid`)."""
    import torch

    kept: dict = {}
    hook = model.layer4.register_forward_hook(lambda _m, _i, out: kept.update(a=out))
    try:
        logits = model(torch.from_numpy(batch))  # (N, C)
        activations = kept["a"]  # (N, K, h, w)
        (grads,) = torch.autograd.grad(logits[:, class_index].sum(), activations)
    finally:
        hook.remove()
    alpha = grads.mean(dim=(2, 3), keepdim=True)  # (N, K, 1, 1)
    cam = (alpha * activations).sum(dim=1).double().detach().numpy()  # (N, h, w)
    scale = np.abs(cam).reshape(len(cam), -1).max(axis=1)[:, None, None]
    return np.maximum(cam, 0.0) / np.where(scale > 0, scale, 1.0)


def features_of(model: InferenceModel, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    meta = model.metadata
    logits, features = model.session.run(
        [meta.output_name, model.explainer.feature_output], {meta.input_name: batch})
    return logits, features


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r; 0 when one map is flat and the other is not (they do not agree)."""
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    denominator = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denominator) if denominator > 0 else float(np.array_equal(a, b))


def batch_of(paths: list[Path], model: InferenceModel) -> np.ndarray:
    spec = model.metadata.preprocessing
    return np.stack([preprocess_bytes(p.read_bytes(), spec) for p in paths])  # (N, 3, S, S)


# --- the export -------------------------------------------------------------------------------

def test_both_files_output_the_feature_map_as_float(model_fp32_path, model_int8_path) -> None:
    for path in (model_fp32_path, model_int8_path):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        outputs = {o.name: (o.type, o.shape) for o in session.get_outputs()}
        assert outputs["logits"] == ("tensor(float)", ["batch", 2]), path
        kind, shape = outputs["features"]
        assert kind == "tensor(float)" and shape[:2] == ["batch", 512], (path, shape)
    # The quantizer keeps graph outputs float by ending them with DequantizeLinear.
    graph = onnx.load(str(model_int8_path)).graph
    producer = {out: node.op_type for node in graph.node for out in node.output}
    assert producer["features"] == "DequantizeLinear"


def test_both_files_carry_the_same_fp32_fc_weights(fp32, int8, exported) -> None:
    model = torch_model(exported["checkpoint"])
    for served in (fp32, int8):
        explain = served.metadata.explain
        assert (explain["method"], explain["feature_output"]) == ("cam", "features")
        np.testing.assert_array_equal(served.explainer.weights,
                                      model.fc.weight.detach().numpy())
        assert explain["bias"] == model.fc.bias.detach().numpy().tolist()
    assert fp32.describe()["explain"] == {"method": "cam", "feature_output": "features"}


def test_metadata_weights_are_the_graphs_own(fp32, test_images) -> None:
    """logit = w · GAP(features) + b: the stored weights are the ones the FP32 graph applies."""
    logits, features = features_of(fp32, batch_of(test_images, fp32))
    explain = fp32.metadata.explain
    rebuilt = features.mean(axis=(2, 3)) @ np.asarray(explain["weights"]).T + explain["bias"]
    np.testing.assert_allclose(rebuilt, logits, atol=1e-4)


# --- the map against torch --------------------------------------------------------------------

def test_cam_from_onnx_runtime_equals_torch_grad_cam(fp32, exported, test_images) -> None:
    model = torch_model(exported["checkpoint"])
    batch = batch_of(test_images, fp32)
    _, features = features_of(fp32, batch)
    worst = 0.0
    for class_index in range(len(fp32.metadata.classes)):
        reference = grad_cam(model, batch, class_index)  # (N, h, w)
        ours = np.stack([cam_grid(f, fp32.explainer.weights[class_index]) for f in features])
        assert ours.shape == reference.shape
        worst = max(worst, float(np.abs(ours - reference).max()))
    print(f"CAM (ORT FP32) vs Grad-CAM (torch): max |diff| {worst:.2e} on "
          f"{len(test_images)} test images × 2 classes")
    assert worst <= CAM_TOLERANCE
    # And the served answer carries that same map for the predicted class.
    for path, reference_row in zip(test_images[:4], batch[:4], strict=True):
        answer = fp32.predict_bytes(path.read_bytes(), explain=True)
        index = fp32.metadata.classes.index(answer["explanation"]["class"])
        expected = grad_cam(model, reference_row[None], index)[0]
        assert answer["explanation"]["class"] == answer["label"]
        np.testing.assert_allclose(answer["explanation"]["grid"], expected, atol=CAM_TOLERANCE)


def test_fp32_and_int8_maps_agree(fp32, int8, test_images) -> None:
    """Pearson r of FP32 and INT8 maps, per test image, from the same fp32 weights.

    On the maps before ReLU (Σ_k w_ck A_k, both classes) every image must reach 0.9. On the
    served maps (the predicted class) an image whose map is faint in both precisions (no cell
    over FAINT: nothing to see in either overlay) is counted apart; otherwise r must reach 0.9
    too, a map flat in one precision only counting as r = 0. Maps are compared upsampled to
    the input size, as shown.
    """
    batch = batch_of(test_images, fp32)
    _, features32 = features_of(fp32, batch)
    _, features8 = features_of(int8, batch)
    size, weights = fp32.metadata.preprocessing.size, fp32.explainer.weights
    raw = [pearson(upsample(np.tensordot(w, f32, 1), size), upsample(np.tensordot(w, f8, 1), size))
           for f32, f8 in zip(features32, features8, strict=True) for w in weights]
    served, faint = [], 0
    labels = [p.label for p in fp32.predict_array(batch)]
    for f32, f8, label in zip(features32, features8, labels, strict=True):
        w = weights[fp32.metadata.classes.index(label)]
        a, b = cam_grid(f32, w), cam_grid(f8, w)
        if max(a.max(), b.max()) < FAINT:
            faint += 1
            continue
        served.append(pearson(upsample(a, size), upsample(b, size)))
    print(f"FP32 vs INT8 CAM Pearson r, {len(test_images)} test images: before ReLU (2 classes) "
          f"min {min(raw):.3f} median {np.median(raw):.3f}; served (predicted class, "
          f"{len(served)} shown, {faint} faint in both) min {min(served):.3f} "
          f"median {np.median(served):.3f}")
    assert min(raw) >= MIN_CORRELATION
    assert min(served) >= MIN_CORRELATION


# --- the answer -------------------------------------------------------------------------------

def test_explanation_answer_shape(int8, sample_image_bytes) -> None:
    plain = int8.predict_bytes(sample_image_bytes)
    answer = int8.predict_bytes(sample_image_bytes, explain=True)
    assert "explanation" not in plain
    explanation = answer.pop("explanation")
    assert answer == plain  # the rest of the answer is unchanged
    assert set(explanation) == {"method", "class", "grid", "overlay_png_base64"}
    assert explanation["method"] == "cam" and explanation["class"] == plain["label"]
    grid = np.array(explanation["grid"])
    side = int8.metadata.preprocessing.size // 32
    assert grid.shape == (side, side) and 0 <= grid.min() and grid.max() <= 1
    overlay = Image.open(io.BytesIO(base64.b64decode(explanation["overlay_png_base64"])))
    size = int8.metadata.preprocessing.size
    assert (overlay.format, overlay.mode, overlay.size) == ("PNG", "RGB", (size, size))


def test_overlay_of_an_empty_map_is_the_network_input(int8, sample_image_bytes) -> None:
    """Undoing the normalisation gives back the resized, centre-cropped patch the model saw."""
    spec = int8.metadata.preprocessing
    image = preprocess_bytes(sample_image_bytes, spec)
    png = overlay_png(image, np.zeros((2, 2)), spec)
    crop = resize_and_crop(to_rgb(decode_image(sample_image_bytes)), spec)
    difference = np.abs(np.asarray(Image.open(io.BytesIO(png)), dtype=int)
                        - np.asarray(crop, dtype=int))
    assert difference.max() <= 1  # float32 round trip


def test_batch_explains_every_item_and_keeps_failed_slots(int8, sample_image_bytes) -> None:
    results = int8.predict_many([sample_image_bytes, b"not an image", small_png()], explain=True)
    assert [("explanation" in r, "error" in r) for r in results] == [
        (True, False), (False, True), (True, False)]
    single = int8.predict_bytes(sample_image_bytes, explain=True)
    del single["explanation"]["overlay_png_base64"]  # batches carry the grid only
    assert results[0] == single


def test_old_export_serves_but_refuses_explanations(old_export, sample_image_bytes) -> None:
    client = create_app({"MODEL_PATH": str(old_export)}).test_client()
    assert client.post("/predict", data=sample_image_bytes,
                       content_type="image/png").status_code == 200
    for path in ("/predict?explain=1", "/predict/batch?explain=true"):
        response = client.post(path, data=sample_image_bytes, content_type="image/png")
        assert response.status_code == 409, path
        error = response.get_json()["error"]
        assert error["code"] == "explanations_unavailable"
        assert "exported without explanations" in error["message"]
    assert client.post("/predict?explain=0", data=sample_image_bytes,
                       content_type="image/png").status_code == 200
    assert "explain" not in client.get("/metadata").get_json()


def test_a_claim_the_graph_cannot_keep_fails_at_load(old_export, model_fp32_path,
                                                     tmp_path) -> None:
    """mhist.explain present, feature output gone: a broken file, refused at start-up."""
    proto = onnx.load(str(old_export))
    source = {p.key: p.value for p in onnx.load(str(model_fp32_path)).metadata_props}
    onnx.helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props},
                                        PREFIX + "explain": source[PREFIX + "explain"]})
    path = tmp_path / "broken.onnx"
    onnx.save(proto, str(path))
    with pytest.raises(ModelLoadError, match="feature output 'features'"):
        InferenceModel(path)


@pytest.mark.parametrize("weights", [[[1.0]], {"HP": 1}, "nan", [[float("nan")] * 512] * 2])
def test_malformed_explain_weights_fail_at_load(model_fp32_path, tmp_path, weights) -> None:
    proto = onnx.load(str(model_fp32_path))
    props = {p.key: p.value for p in proto.metadata_props}
    explain = {**json.loads(props[PREFIX + "explain"]), "weights": weights}
    onnx.helper.set_model_props(proto, {**props, PREFIX + "explain": json.dumps(explain)})
    path = tmp_path / "malformed.onnx"
    onnx.save(proto, str(path))
    with pytest.raises(ModelLoadError, match=r"mhist\.explain weights"):
        InferenceModel(path)


# --- every target -----------------------------------------------------------------------------

def test_explain_is_the_same_on_every_target(targets, sample_image_bytes) -> None:
    headers = {"Content-Type": "image/png"}
    reference = targets["flask"].post("/predict?explain=1", headers, sample_image_bytes)
    assert reference.status == 200 and "explanation" in reference.json()
    for name, target in targets.items():
        reply = target.post(f"{target.predict_path}?explain=1", headers, sample_image_bytes)
        assert (reply.status, reply.json()) == (200, reference.json()), name
        plain = target.post(target.predict_path, headers, sample_image_bytes)
        assert plain.status == 200 and "explanation" not in plain.json(), name
    # SageMaker forwards no query string: the same switch as a custom attribute.
    sagemaker = targets["sagemaker"]
    for attributes in ("explain=1", "trace=42; explain=true", "explain=1,tenant=7"):
        reply = sagemaker.post("/invocations", {**headers, CUSTOM_ATTRIBUTES: attributes},
                               sample_image_bytes)
        assert (reply.status, reply.json()) == (200, reference.json()), attributes
    reply = sagemaker.post("/invocations", {**headers, CUSTOM_ATTRIBUTES: "trace=42"},
                           sample_image_bytes)
    assert reply.status == 200 and "explanation" not in reply.json()


def test_batch_explain_is_the_same_on_every_target(targets, sample_image_bytes) -> None:
    body = {"images": [base64.b64encode(sample_image_bytes).decode()] * 2}
    headers = {"Content-Type": "application/json"}
    reference = targets["flask"].post("/predict/batch?explain=1", headers,
                                      json.dumps(body).encode()).json()
    assert all("explanation" in item for item in reference["predictions"])
    for name, target in targets.items():
        reply = target.post("/predict/batch?explain=1", headers, json.dumps(body).encode())
        assert (reply.status, reply.json()) == (200, reference), name
    instances = {"instances": [{"image": image} for image in body["images"]]}
    reply = targets["sagemaker"].post("/invocations", {**headers, CUSTOM_ATTRIBUTES: "explain=1"},
                                      json.dumps(instances).encode())
    assert (reply.status, reply.json()) == (200, reference)


@pytest.mark.parametrize("value", BAD_VALUES)
def test_bad_switch_values_are_400_on_every_target(targets, sample_image_bytes,
                                                   value: str) -> None:
    headers = {"Content-Type": "image/png"}
    for name, target in targets.items():
        for path in (target.predict_path, "/predict/batch"):
            reply = target.post(f"{path}?explain={value}", headers, sample_image_bytes)
            assert (reply.status, reply.error_code) == (400, "invalid_parameter"), (name, path)
            assert "explain" in reply.json()["error"]["message"]
    if ";" in value:
        return  # in the custom attributes, "explain=1;drop" is explain=1 and a key "drop"
    reply = targets["sagemaker"].post("/invocations", {**headers,
                                                       CUSTOM_ATTRIBUTES: f"explain={value}"},
                                      sample_image_bytes)
    assert (reply.status, reply.error_code) == (400, "invalid_parameter")
    assert CUSTOM_ATTRIBUTES in reply.json()["error"]["message"]


def test_openapi_documents_the_switch_and_the_field(targets) -> None:
    for name, target in targets.items():
        document = target.request("GET", "/openapi.json").json()
        explanation = document["components"]["schemas"]["Prediction"]["properties"][
            "explanation"]
        # Optional: OpenAPI 3.1 (JSON Schema) says so with anyOf [the schema, null].
        refs = {option.get("$ref") for option in explanation["anyOf"]}
        assert refs == {"#/components/schemas/Explanation", None}, name
        schema = document["components"]["schemas"]["Explanation"]
        assert set(schema["required"]) == {"method", "class", "grid"}  # batches: no overlay
        assert "overlay_png_base64" in schema["properties"]
        operation = document["paths"][target.predict_path]["post"]
        where = {(p["in"], p["name"]) for p in operation["parameters"]}
        assert ("query", "explain") in where, name
        if name == "sagemaker":
            assert ("header", CUSTOM_ATTRIBUTES) in {
                (p["in"], p["name"]) for p in document["paths"]["/invocations"]["post"][
                    "parameters"]}
        assert "409" in operation["responses"], name
