"""normalize() is torchvision's ToTensor + Normalize to the bit, for every 8-bit value of every
channel: the float32 operations written out one by one on the interleaved (H, W, 3) array, as
the first implementation did. A faster normalize must not change a single answer."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from services.core.preprocessing import PreprocessSpec, normalize


def _spelled_out(img: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    pixels = np.asarray(img).astype(np.float32)  # (H, W, 3)
    scaled = pixels / np.float32(spec.pixel_max)
    scaled = (scaled - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return np.ascontiguousarray(scaled.transpose(2, 0, 1))  # (3, H, W)


@pytest.mark.parametrize("spec", [PreprocessSpec(size=16, resize_size=16),
                                  PreprocessSpec(size=16, resize_size=16, mean=(0.5, 0.25, 0.1),
                                                 std=(0.3, 0.7, 0.9), pixel_max=127.5)])
def test_every_value_of_every_channel_is_bit_identical(spec: PreprocessSpec) -> None:
    rng = np.random.default_rng(0)
    values = np.arange(256, dtype=np.uint8).reshape(16, 16)
    # Each channel holds every value once, in a different order, so channels cannot be swapped.
    rgb = np.stack([values, values.T, rng.permutation(values.reshape(-1)).reshape(16, 16)], -1)
    img = Image.fromarray(rgb, "RGB")
    ours = normalize(img, spec)
    assert ours.dtype == np.float32 and ours.shape == (3, 16, 16) and ours.flags.c_contiguous
    np.testing.assert_array_equal(ours.view(np.uint32), _spelled_out(img, spec).view(np.uint32))


def test_a_wide_image_keeps_its_orientation() -> None:
    rgb = np.random.default_rng(1).integers(0, 256, (5, 9, 3), dtype=np.uint8)  # (H, W, 3)
    spec = PreprocessSpec(size=5, resize_size=5)
    ours = normalize(Image.fromarray(rgb, "RGB"), spec)
    assert ours.shape == (3, 5, 9)
    np.testing.assert_array_equal(ours, _spelled_out(Image.fromarray(rgb, "RGB"), spec))
