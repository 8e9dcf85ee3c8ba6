"""The shared robustness corpus: good images in every accepted format and mode, and bad inputs.

Everything is built in code from a real sample image (no binary files in the repository):

    good = good_corpus(sample_png_bytes)      # {"png-rgb-224": b"...", ...}, cached per source
    bomb = png_header_only(50_000, 50_000)    # a tiny file that declares 2.5 gigapixels

`BAD_CASES` lists the malformed requests every target (Flask, Lambda, SageMaker) must refuse
with a specific 4xx code; `expected_for(case, family)` gives the status and code per target.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import io
import json
import struct
import uuid
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

# --- good inputs -----------------------------------------------------------------------------

# (name, format, mode, size, save options). Sizes span 32² (just above the 16 px floor) to 2048²,
# square and not, so resize + centre crop run on both orientations.
GOOD_SPECS: tuple[tuple[str, str, str, tuple[int, int], dict], ...] = (
    ("png-rgb-32", "PNG", "RGB", (32, 32), {}),
    ("png-rgb-224", "PNG", "RGB", (224, 224), {}),
    ("png-rgb-2048", "PNG", "RGB", (2048, 2048), {"compress_level": 1}),
    ("png-l-300x200", "PNG", "L", (300, 200), {}),
    ("png-la-200x300", "PNG", "LA", (200, 300), {}),
    ("png-rgba-256", "PNG", "RGBA", (256, 256), {}),
    ("png-p-128", "PNG", "P", (128, 128), {}),
    ("png-i16-96", "PNG", "I;16", (96, 96), {}),
    ("jpeg-rgb-224", "JPEG", "RGB", (224, 224), {"quality": 90}),
    ("jpeg-rgb-2048", "JPEG", "RGB", (2048, 2048), {"quality": 85}),
    ("jpeg-l-160x120", "JPEG", "L", (160, 120), {"quality": 90}),
    ("jpeg-cmyk-200", "JPEG", "CMYK", (200, 200), {"quality": 90}),
    ("tiff-rgb-224", "TIFF", "RGB", (224, 224), {}),
    ("tiff-cmyk-128", "TIFF", "CMYK", (128, 128), {}),
    ("tiff-l-64", "TIFF", "L", (64, 64), {}),
    ("tiff-rgba-lzw-100", "TIFF", "RGBA", (100, 100), {"compression": "tiff_lzw"}),
    ("bmp-rgb-224", "BMP", "RGB", (224, 224), {}),
    ("bmp-l-50", "BMP", "L", (50, 50), {}),
    ("bmp-p-64", "BMP", "P", (64, 64), {}),
    ("webp-rgb-224", "WEBP", "RGB", (224, 224), {"quality": 90}),
    ("webp-lossless-rgba-96", "WEBP", "RGBA", (96, 96), {"lossless": True}),
)
# Keep every good image small enough for a Lambda event (4.5 MB decoded by default).
MAX_GOOD_BYTES = 4_000_000


def source_image(sample_png: bytes) -> Image.Image:
    """The real sample image as RGB, the seed every corpus image is derived from."""
    with Image.open(io.BytesIO(sample_png)) as img:
        return img.convert("RGB")


def _convert(img: Image.Image, mode: str) -> Image.Image:
    if mode == "I;16":
        # 16-bit grey spanning the full 0..65535 range (×257 maps 255 to 65535).
        grey = np.asarray(img.convert("L"), dtype=np.uint16) * np.uint16(257)
        return Image.frombytes("I;16", img.size, grey.astype("<u2").tobytes())
    if mode in ("LA", "RGBA"):
        # A real alpha channel: a transparent band on the left, opaque elsewhere.
        converted = img.convert(mode)
        alpha = Image.new("L", img.size, 255)
        alpha.paste(0, (0, 0, max(1, img.size[0] // 5), img.size[1]))
        converted.putalpha(alpha)
        return converted
    if mode == "P":
        return img.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    return img.convert(mode)


def encode(img: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **options)
    return buffer.getvalue()


def exif_rotated_jpeg(source: Image.Image, size: tuple[int, int] = (240, 160)) -> bytes:
    """A landscape JPEG whose EXIF Orientation (6: rotate 90° CW) makes it portrait."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(source.resize(size, Image.Resampling.BILINEAR), "JPEG", quality=90,
                  exif=exif.tobytes())


@functools.lru_cache(maxsize=4)
def _good_corpus_cached(digest: str, sample_png: bytes) -> tuple[tuple[str, bytes], ...]:
    source = source_image(sample_png)
    items = []
    for name, fmt, mode, size, options in GOOD_SPECS:
        img = _convert(source.resize(size, Image.Resampling.BILINEAR), mode)
        items.append((name, encode(img, fmt, **options)))
    items.append(("jpeg-exif-rotated-240x160", exif_rotated_jpeg(source)))
    items.append(("png-sample-original", sample_png))
    return tuple(items)


def good_corpus(sample_png: bytes) -> dict[str, bytes]:
    """Every good input, by name; built once per distinct source image."""
    digest = hashlib.sha256(sample_png).hexdigest()
    return dict(_good_corpus_cached(digest, sample_png))


GOOD_NAMES: tuple[str, ...] = (*(spec[0] for spec in GOOD_SPECS), "jpeg-exif-rotated-240x160",
                               "png-sample-original")


# --- bad images, crafted by hand ---------------------------------------------------------------

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int) -> bytes:
    """A ~60-byte PNG declaring width × height RGB pixels (a decompression bomb's header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (PNG_SIGNATURE + png_chunk(b"IHDR", ihdr)
            + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + png_chunk(b"IEND", b""))


def small_png(size: tuple[int, int] = (64, 64), mode: str = "RGB") -> bytes:
    img = Image.new(mode, size, 128 if mode == "L" else (180, 90, 160))
    return encode(img, "PNG")


def small_jpeg(size: tuple[int, int] = (64, 64)) -> bytes:
    gradient = Image.linear_gradient("L").resize(size).convert("RGB")
    return encode(gradient, "JPEG", quality=90)


def corrupt_crc(png: bytes, chunk: bytes = b"IHDR") -> bytes:
    """Flip the stored CRC of the first `chunk` (the data itself stays intact)."""
    start = png.index(chunk) - 4
    (length,) = struct.unpack(">I", png[start:start + 4])
    crc_at = start + 8 + length
    return png[:crc_at] + bytes([png[crc_at] ^ 0xFF]) + png[crc_at + 1:]


def animated_gif(size: tuple[int, int] = (64, 64), frames: int = 3) -> bytes:
    images = [Image.new("P", size, i * 40) for i in range(frames)]
    return encode(images[0], "GIF", save_all=True, append_images=images[1:], duration=100, loop=0)


def multipage_tiff(size: tuple[int, int] = (64, 64), pages: int = 2) -> bytes:
    images = [Image.new("RGB", size, (i * 60, 100, 150)) for i in range(pages)]
    return encode(images[0], "TIFF", save_all=True, append_images=images[1:])


GARBAGE_EXIF = b"garbage, not TIFF data"  # Pillow's EXIF parser raises SyntaxError on it


def png_with_garbage_exif(size: tuple[int, int] = (64, 64)) -> bytes:
    """A valid PNG (CRCs right) whose eXIf chunk is not TIFF data."""
    png = small_png(size)
    at = png.index(b"IDAT") - 4
    return png[:at] + png_chunk(b"eXIf", GARBAGE_EXIF) + png[at:]


def webp_with_garbage_exif(size: tuple[int, int] = (64, 64)) -> bytes:
    return encode(Image.new("RGB", size, (180, 90, 160)), "WEBP", exif=b"Exif\0\0" + GARBAGE_EXIF)


def tiff_with_compression_only_ifd(size: tuple[int, int] = (64, 64)) -> bytes:
    """A TIFF whose next-IFD offset points to a second IFD holding only tag 259 (Compression):
    counting its pages fails with TypeError "Missing dimensions"."""
    data = bytearray(encode(Image.new("RGB", size, (10, 20, 30)), "TIFF"))
    assert data[:4] == b"II*\0"
    (ifd,) = struct.unpack("<I", data[4:8])
    (count,) = struct.unpack("<H", data[ifd:ifd + 2])
    next_at = ifd + 2 + 12 * count
    data += b"\0" * (len(data) % 2)  # IFDs start on a word boundary
    data[next_at:next_at + 4] = struct.pack("<I", len(data))
    data += struct.pack("<HHHII", 1, 259, 3, 1, 1) + struct.pack("<I", 0)
    return bytes(data)


@functools.lru_cache(maxsize=4)
def flat_png(width: int, height: int) -> bytes:
    """A real, fully decodable PNG of one colour: 1048576x16 is 49 KB."""
    return encode(Image.new("RGB", (width, height), (200, 120, 180)), "PNG")


def zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("image.png", small_png())
    return buffer.getvalue()


TEXT = b"this is not an image, just a sentence of plain text\n"
HTML = b"<!doctype html><html><body><img src=x onerror=alert(1)></body></html>"
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
SVG = (b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64">'
       b'<rect width="64" height="64" fill="red"/></svg>')


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def multipart(parts: list[tuple[str, str | None, bytes, str | None]]) -> tuple[bytes, str]:
    """multipart/form-data from (field, filename or None for a text field, data, content type)."""
    boundary = f"----mhist{uuid.uuid4().hex}"
    body = b""
    for name, filename, data, content_type in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        head = f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
        if content_type:
            head += f"Content-Type: {content_type}\r\n"
        body += head.encode() + b"\r\n" + data + b"\r\n"
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


# --- bad requests ------------------------------------------------------------------------------

@dataclass(frozen=True)
class BadCase:
    """One malformed request. `path` "predict" means the target's prediction route.

    expect: (status, code) for every target; `overrides` maps a target family ("flask",
    "lambda", "sagemaker") to its own documented answer where the contract differs.
    """

    name: str
    build: Callable[[], tuple[dict[str, str], bytes]]  # → (headers, body)
    expect: tuple[int, str]
    method: str = "POST"
    path: str = "predict"
    overrides: dict[str, tuple[int, str]] = field(default_factory=dict)


def _raw(content_type: str | None, data: bytes | Callable[[], bytes]) -> Callable:
    def build() -> tuple[dict[str, str], bytes]:
        body = data() if callable(data) else data
        return ({"Content-Type": content_type} if content_type else {}), body
    return build


def _json(document: object | Callable[[], object]) -> Callable:
    def build() -> tuple[dict[str, str], bytes]:
        value = document() if callable(document) else document
        return {"Content-Type": "application/json"}, json.dumps(value).encode()
    return build


def _json_text(text: bytes) -> Callable:
    return _raw("application/json", text)


def _form(parts_factory: Callable[[], list]) -> Callable:
    def build() -> tuple[dict[str, str], bytes]:
        body, content_type = multipart(parts_factory())
        return {"Content-Type": content_type}, body
    return build


def _deeply_nested_json() -> bytes:
    depth = 100_000  # far past json's recursion limit
    return b"[" * depth + b"]" * depth


def _nested_image() -> dict:
    value: object = "x"
    for _ in range(60):
        value = {"image": value}
    return {"image": value}


# SageMaker speaks image/*, octet-stream/x-image and JSON only (the inference toolkit's
# content negotiation): a multipart upload there is 415, not a form error.
_SM_415 = {"sagemaker": (415, "unsupported_media_type")}
# Over every target's limit: Flask 10 MiB, Lambda 4.5 MB, SageMaker 6 MiB by default.
OVER_LIMIT_BYTES = 11 * 1024 * 1024
INVALID = (400, "invalid_image")
ASPECT = (400, "extreme_aspect_ratio")

BAD_CASES: tuple[BadCase, ...] = (
    BadCase("empty-body-png", _raw("image/png", b""), (400, "empty_image")),
    BadCase("empty-body-octet", _raw("application/octet-stream", b""), (400, "empty_image")),
    BadCase("zero-byte-file", _form(lambda: [("image", "empty.png", b"", "image/png")]),
            (400, "empty_image"), overrides=_SM_415),
    BadCase("text-as-png", _raw("image/png", TEXT), INVALID),
    BadCase("html-as-jpeg", _raw("image/jpeg", HTML), INVALID),
    BadCase("pdf-as-png", _raw("image/png", PDF), INVALID),
    BadCase("svg-as-svg", _raw("image/svg+xml", SVG), INVALID),
    BadCase("zip-as-octet", _raw("application/octet-stream", zip_bytes), INVALID),
    BadCase("truncated-png", _raw("image/png", lambda: small_png()[:60]), INVALID),
    BadCase("truncated-png-mid-idat",
            _raw("image/png", lambda: small_png((128, 128), "RGB")[:-40]), INVALID),
    BadCase("truncated-jpeg", _raw("image/jpeg", lambda: small_jpeg()[:300]), INVALID),
    BadCase("corrupt-png-ihdr-crc", _raw("image/png", lambda: corrupt_crc(small_png())), INVALID),
    # Pillow alone decodes this one (it skips the IDAT CRC); libpng and the service refuse it.
    BadCase("corrupt-png-idat-crc",
            _raw("image/png", lambda: corrupt_crc(small_png(), b"IDAT")), INVALID),
    BadCase("png-bomb-50000x50000", _raw("image/png", lambda: png_header_only(50_000, 50_000)),
            (413, "image_too_large")),
    BadCase("png-5000x5000-over-max-pixels",
            _raw("image/png", lambda: png_header_only(5000, 5000)), (413, "image_too_large")),
    BadCase("png-1x1", _raw("image/png", lambda: small_png((1, 1))), (400, "image_too_small")),
    BadCase("png-8x200", _raw("image/png", lambda: small_png((8, 200))),
            (400, "image_too_small")),
    BadCase("png-zero-area", _raw("image/png", lambda: png_header_only(0, 64)), INVALID),
    BadCase("animated-gif", _raw("image/gif", animated_gif), INVALID),
    BadCase("multi-page-tiff", _raw("image/tiff", multipage_tiff), (400, "multi_page_image")),
    BadCase("png-garbage-exif", _raw("image/png", png_with_garbage_exif), INVALID),
    BadCase("webp-garbage-exif", _raw("image/webp", webp_with_garbage_exif), INVALID),
    BadCase("tiff-next-ifd-compression-only",
            _raw("image/tiff", tiff_with_compression_only_ifd), INVALID),
    # Within MAX_IMAGE_PIXELS, but resizing the short side to the model's size would need
    # billions of pixels: refused from the header, before decoding.
    BadCase("png-1048576x16", _raw("image/png", lambda: flat_png(1_048_576, 16)), ASPECT),
    BadCase("png-16x262144", _raw("image/png", lambda: flat_png(16, 262_144)), ASPECT),
    BadCase("png-241x24-just-over-10-to-1", _raw("image/png", lambda: flat_png(241, 24)),
            ASPECT),
    BadCase("json-invalid-base64", _json({"image": "***not base64***"}), (400, "invalid_base64")),
    BadCase("json-urlsafe-base64", _json({"image": "ab-_" * 8}), (400, "invalid_base64")),
    BadCase("json-base64-of-text", _json({"image": b64(TEXT)}), INVALID),
    BadCase("json-base64-of-gif", _json(lambda: {"image": b64(animated_gif())}), INVALID),
    BadCase("json-base64-empty", _json({"image": ""}), (400, "empty_image")),
    BadCase("json-array", _json([{"image": "AAAA"}]), (400, "invalid_json_type")),
    BadCase("json-number", _json(42), (400, "invalid_json_type")),
    BadCase("json-string", _json("aGVsbG8="), (400, "invalid_json_type")),
    BadCase("json-null", _json(None), (400, "invalid_json_type")),
    BadCase("json-deeply-nested", _json_text(_deeply_nested_json()), (400, "invalid_json")),
    BadCase("json-nested-image-object", _json(_nested_image), (400, "invalid_field_type")),
    BadCase("json-missing-image", _json({"picture": "AAAA"}), (400, "missing_field")),
    BadCase("json-image-number", _json({"image": 12345}), (400, "invalid_field_type")),
    BadCase("json-image-list", _json({"image": ["AAAA"]}), (400, "invalid_field_type")),
    BadCase("json-malformed", _json_text(b'{"image": "AAAA"'), (400, "invalid_json")),
    # Python's int-digit limit (4300) raises ValueError, not JSONDecodeError.
    BadCase("json-integer-5000-digits", _json_text(b'{"image": ' + b"1" * 5000 + b"}"),
            (400, "invalid_json")),
    BadCase("json-integer-5000-digits-batch",
            _json_text(b'{"images": [' + b"1" * 5000 + b"]}"), (400, "invalid_json"),
            path="/predict/batch"),
    BadCase("json-empty-body", _json_text(b""), (400, "invalid_json")),
    BadCase("json-non-utf8", _json_text('{"image": "café"}'.encode("latin-1")),
            (400, "invalid_encoding")),
    BadCase("json-utf16", _json_text('{"image": "AAAA"}'.encode("utf-16")),
            (400, "invalid_encoding")),
    BadCase("multipart-no-file-field",
            _form(lambda: [("file", "a.png", small_png(), "image/png")]),
            (400, "missing_field"), overrides=_SM_415),
    BadCase("multipart-image-as-text-field", _form(lambda: [("image", None, b"hello", None)]),
            (400, "missing_file"), overrides=_SM_415),
    BadCase("multipart-empty-file", _form(lambda: [("image", "a.png", b"", "image/png")]),
            (400, "empty_image"), overrides=_SM_415),
    BadCase("multipart-two-files",
            _form(lambda: [("image", "a.png", small_png(), "image/png"),
                           ("image", "b.png", small_png(), "image/png")]),
            (400, "too_many_images"), overrides=_SM_415),
    BadCase("multipart-no-boundary", _raw("multipart/form-data", small_png),
            (400, "invalid_multipart"), overrides=_SM_415),
    BadCase("content-type-text-plain", _raw("text/plain", small_png),
            (415, "unsupported_media_type")),
    BadCase("content-type-missing", _raw(None, small_png), (415, "unsupported_media_type")),
    BadCase("content-type-form-urlencoded", _raw("application/x-www-form-urlencoded", b"a=b"),
            (415, "unsupported_media_type")),
    BadCase("lying-jpeg-is-json", _raw("image/jpeg", b'{"image": "AAAA"}'), INVALID),
    BadCase("lying-json-is-png", _raw("application/json", small_png), (400, "invalid_encoding")),
    BadCase("lying-multipart-is-png",
            _raw("multipart/form-data; boundary=xyz", small_png),
            (400, "missing_field"), overrides=_SM_415),
    BadCase("body-over-limit",
            _raw("application/octet-stream", lambda: b"\0" * OVER_LIMIT_BYTES),
            (413, "payload_too_large")),
    BadCase("very-long-content-type",
            _raw("application/x-" + "a" * 60_000, small_png), (415, "unsupported_media_type")),
    BadCase("get-predict", _raw(None, b""), (405, "method_not_allowed"), method="GET"),
    BadCase("unknown-path", _raw("image/png", small_png), (404, "not_found"),
            path="/no/such/route"),
)


def expected_for(case: BadCase, family: str) -> tuple[int, str]:
    return case.overrides.get(family, case.expect)
