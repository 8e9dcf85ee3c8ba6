"""services' numpy + Pillow preprocessing == torchvision's eval transform, within 1e-6.

torchvision's path: decode → services.core.preprocessing.to_rgb (colour-mode handling is ours by
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

from services.core.preprocessing import PreprocessSpec, decode_image, preprocess_bytes, to_rgb

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


def _pillow_pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(to_rgb(img.convert("RGB") if img.mode != "RGB" else img))


LIBSPNG_DECODES = {"plain": True, "interlaced": True, "trns": True, "level0": True,
                   "exif-rotated": False, "16-bit": False}


@pytest.mark.parametrize("variant", LIBSPNG_DECODES)
def test_both_png_decoders_give_the_same_pixels(variant: str, monkeypatch) -> None:
    """8-bit RGB PNGs go through libspng (services.core.preprocessing._decode_plain_png), the rest
    through Pillow: either way decode_image + to_rgb give Pillow's own pixels."""
    from services.core import preprocessing

    calls = []
    real = preprocessing.pyspng.load
    monkeypatch.setattr(preprocessing.pyspng, "load",
                        lambda *args: calls.append(1) or real(*args))  # a spy: the real decoder
    rgb = Image.fromarray(smooth_rgb(224, 224, 7))
    out = io.BytesIO()
    if variant == "plain":
        rgb.save(out, "PNG")
    elif variant == "interlaced":  # Pillow cannot write Adam7; built by hand below
        out.write(_adam7_png(np.asarray(rgb)))
    elif variant == "trns":  # a colour key: still opaque RGB to both decoders
        rgb.save(out, "PNG", transparency=(10, 20, 30))
    elif variant == "level0":
        rgb.save(out, "PNG", compress_level=0)
    elif variant == "exif-rotated":  # eXIf chunk: Pillow's path, rotated by to_rgb
        exif = Image.Exif()
        exif[0x0112] = 6
        rgb.crop((0, 0, 224, 160)).save(out, "PNG", exif=exif)
    elif variant == "16-bit":  # Pillow reads 48-bit RGB as 8-bit RGB
        wide = np.asarray(rgb).astype(np.uint16) * 257
        out.write(_png_bytes(wide, bit_depth=16))
    data = out.getvalue()
    ours = np.asarray(to_rgb(decode_image(data)))
    assert bool(calls) is LIBSPNG_DECODES[variant]
    if variant == "exif-rotated":
        assert ours.shape == (224, 160, 3)  # rotated upright: width and height swapped
        return
    np.testing.assert_array_equal(ours, _pillow_pixels(data))


def _png_bytes(pixels: np.ndarray, bit_depth: int = 8, interlace: int = 0,
               raw: bytes | None = None) -> bytes:
    """An RGB PNG written from scratch: filter 0 rows (or `raw`, already laid out)."""
    import struct
    import zlib

    height, width = pixels.shape[:2]

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

    if raw is None:
        rows = pixels.astype(">u2" if bit_depth == 16 else np.uint8).reshape(height, -1)
        raw = b"".join(b"\x00" + row.tobytes() for row in rows)
    header = struct.pack(">IIBBBBB", width, height, bit_depth, 2, 0, 0, interlace)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


def _adam7_png(pixels: np.ndarray) -> bytes:
    """An interlaced (Adam7) 8-bit RGB PNG: the seven passes, each row with filter 0."""
    passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
              (0, 1, 1, 2)]  # (x0, y0, dx, dy)
    raw = b""
    for x0, y0, dx, dy in passes:
        sub = pixels[y0::dy, x0::dx]
        if sub.size:
            raw += b"".join(b"\x00" + row.tobytes() for row in sub)
    return _png_bytes(pixels, interlace=1, raw=raw)


def test_a_cut_zlib_stream_with_good_checksums_is_a_400() -> None:
    """Every chunk's CRC is right but the pixel data ends early: libspng's error is a 400 that
    says so, as Pillow's is."""
    import struct
    import zlib

    from services.core.errors import ServiceError

    pixels = smooth_rgb(64, 64, 3)
    raw = b"".join(b"\x00" + row.tobytes() for row in pixels.reshape(64, -1))
    cut = zlib.compress(raw)[:-400]

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

    data = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 64, 64, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", cut) + chunk(b"IEND", b""))
    with pytest.raises(ServiceError) as raised:
        decode_image(data)
    assert raised.value.status_code == 400 and "truncated or corrupt" in raised.value.message


def test_a_png_whose_first_chunk_is_not_ihdr_is_decoded_by_pillow(monkeypatch) -> None:
    """Pillow opens a PNG with a text chunk before IHDR; the bytes where IHDR's depth and colour
    type would be then belong to that chunk, here crafted to read as 8-bit RGB. Such a file
    must not reach libspng (which requires IHDR first and would refuse it): Pillow decodes it."""
    import struct
    import zlib

    from services.core import preprocessing

    monkeypatch.setattr(preprocessing.pyspng, "load", lambda *args: pytest.fail("libspng"))
    out = io.BytesIO()
    Image.fromarray(smooth_rgb(48, 48, 5)).save(out, "PNG")
    plain = out.getvalue()
    body = b"k\x00abcdef\x08\x02"  # bytes 24 and 25 of the file: "depth 8, colour type 2"
    text = (struct.pack(">I", len(body)) + b"tEXt" + body
            + struct.pack(">I", zlib.crc32(b"tEXt" + body) & 0xFFFFFFFF))
    crafted = plain[:8] + text + plain[8:]
    assert (crafted[24], crafted[25]) == (8, 2)
    np.testing.assert_array_equal(np.asarray(decode_image(crafted)), _pillow_pixels(plain))
