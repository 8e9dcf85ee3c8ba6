"""services' numpy + Pillow preprocessing == torchvision's eval transform, within 1e-6.

torchvision's path: decode → services.preprocessing.to_rgb (colour-mode handling is ours by
design) → T.Resize(shorter side) → T.CenterCrop → T.ToTensor → T.Normalize. The services path is
preprocess_bytes(), exactly what every serving target and the training evaluation run.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from services.preprocessing import PreprocessSpec, decode_image, preprocess_bytes, to_rgb

SIZES = [(224, 224), (300, 200), (97, 451), (64, 64), (225, 224), (20, 33), (512, 130)]
SPECS = [
    PreprocessSpec(size=224, resize_size=224),
    PreprocessSpec(size=224, resize_size=256),
    PreprocessSpec(size=64, resize_size=64),
]


def smooth_rgb(width: int, height: int, seed: int) -> np.ndarray:
    """Tissue-like content: smooth colour gradients plus grain (uint8, (H, W, 3))."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    base = np.stack([
        128 + 100 * np.sin(x / (7 + seed % 5)) * np.cos(y / 11),
        128 + 90 * np.cos((x + y) / 13),
        128 + 80 * np.sin(y / 5 + x / 17),
    ], axis=-1)
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


def encode(width: int, height: int, mode: str, seed: int = 0) -> bytes:
    """Image bytes in `mode`, in a lossless format that stores that mode."""
    rgb = Image.fromarray(smooth_rgb(width, height, seed))
    fmt = "PNG"
    if mode == "RGB":
        img = rgb
    elif mode == "L":
        img = rgb.convert("L")
    elif mode == "RGBA":
        alpha = Image.fromarray(smooth_rgb(width, height, seed + 1)[..., 0])
        img = rgb.copy()
        img.putalpha(alpha)
    elif mode == "P":
        img = rgb.quantize(colors=64)
    elif mode == "P+transparency":
        img = rgb.quantize(colors=64)
        img.info["transparency"] = 3
    elif mode == "CMYK":
        img, fmt = rgb.convert("CMYK"), "TIFF"
    elif mode == "I;16":
        wide = smooth_rgb(width, height, seed)[..., 1].astype(np.uint16) * 257 + 100
        img = Image.fromarray(wide)
        assert img.mode == "I;16"
    else:
        raise AssertionError(mode)
    buffer = io.BytesIO()
    img.save(buffer, format=fmt)
    return buffer.getvalue()


def torchvision_reference(data: bytes, spec: PreprocessSpec) -> np.ndarray:
    transform = T.Compose([
        T.Resize(spec.resize_size, interpolation=T.InterpolationMode.BILINEAR),
        T.CenterCrop(spec.size),
        T.ToTensor(),
        T.Normalize(spec.mean, spec.std),
    ])
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        tensor = transform(to_rgb(img))
    assert tensor.dtype == torch.float32
    return tensor.numpy()


MODES = ["RGB", "L", "RGBA", "P", "P+transparency", "CMYK", "I;16"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("width", "height"), SIZES)
def test_services_equal_torchvision(mode: str, width: int, height: int) -> None:
    data = encode(width, height, mode, seed=width + height)
    for spec in SPECS:
        ours = preprocess_bytes(data, spec)
        reference = torchvision_reference(data, spec)
        assert ours.dtype == np.float32
        assert ours.shape == reference.shape == (3, spec.size, spec.size)
        np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_the_decoded_mode_is_the_one_under_test(mode: str) -> None:
    """Guards the parity test itself: the file really decodes to the intended mode."""
    with decode_image(encode(40, 30, mode)) as img:
        expected = {"P+transparency": "P", "I;16": ("I;16", "I")}.get(mode, mode)
        assert img.mode in (expected if isinstance(expected, tuple) else (expected,))
        if mode == "P+transparency":
            assert "transparency" in img.info


def test_sixteen_bit_uses_the_full_range() -> None:
    """65535 must map to white, not clip at 255 (Pillow's own I;16 → L conversion clips)."""
    wide = np.full((32, 32), 65535, dtype=np.uint16)
    wide[:16] = 0
    buffer = io.BytesIO()
    Image.fromarray(wide).save(buffer, format="PNG")
    spec = PreprocessSpec(size=32, resize_size=32)
    out = preprocess_bytes(buffer.getvalue(), spec)
    white = (1.0 - np.array(spec.mean)) / np.array(spec.std)
    black = (0.0 - np.array(spec.mean)) / np.array(spec.std)
    np.testing.assert_allclose(out[:, 24, 16], white, atol=1e-6)
    np.testing.assert_allclose(out[:, 4, 16], black, atol=1e-6)


def test_a_stored_spec_is_honoured_or_refused() -> None:
    """Every key of `mhist.preprocessing` means something: a file written before a key
    existed, or with one this code does not know, still loads; a rule it cannot apply
    exactly (another resize, layout or filter) is refused instead of silently ignored."""
    stored = {**PreprocessSpec(size=64, resize_size=72).to_dict(), "added_later": 1}
    assert stored["resize"] == "shorter_side_then_center_crop"
    without_rule = {k: v for k, v in stored.items() if k != "resize"}
    assert PreprocessSpec.from_dict(stored) == PreprocessSpec.from_dict(without_rule)
    for key, value in (("resize", "stretch"), ("layout", "NHWC"), ("interpolation", "lanczos")):
        with pytest.raises(ValueError, match=f"unsupported preprocessing {key} '{value}'"):
            PreprocessSpec.from_dict({**stored, key: value})
