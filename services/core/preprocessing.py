"""The one preprocessing implementation: image bytes → RGB PIL image → (3, S, S) float32.

Training's evaluation, INT8 calibration and every serving target call these functions, so a
model sees exactly the same pixels wherever it runs. numpy + Pillow only.
"""

from __future__ import annotations

import io
import zlib
from dataclasses import asdict, dataclass

import numpy as np
import pyspng
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from services.core.errors import ServiceError
from services.core.stages import stage

# Formats a histology patch plausibly arrives in. GIF is left out on purpose: a palette of 256
# colours destroys H&E staining, so a GIF is almost always the wrong file.
ACCEPTED_FORMATS = ("PNG", "JPEG", "TIFF", "BMP", "WEBP")
DEFAULT_MAX_PIXELS = 4096 * 4096  # decoded pixels per image; an MHIST patch is 224² = 50 k
MIN_SIDE = 16  # smaller than this carries no tissue structure at 224 px input
# Longest side : shortest side. An MHIST patch is square; the centre crop of a 10:1 image keeps a
# tenth of it, so anything longer is a strip or a mosaic, not a patch. The limit also bounds the
# resized intermediate to MAX_ASPECT_RATIO × resize_size² pixels: without it a 1048576x16 PNG
# (49 KB, within MAX_IMAGE_PIXELS) resized to a 224 px short side needs 14680064x224 pixels (10 GB).
MAX_ASPECT_RATIO = 10
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_ORIENTATION = 0x0112  # EXIF tag: 1 is upright
# Peak bytes per pixel to decode an image of a mode and bring it to 8-bit RGB (to_rgb),
# measured as peak RSS on 4096² images: 8-bit modes hold ≤ 4 bytes a pixel (Pillow stores RGB
# as RGBX) and convert in one pass; alpha is composited on white through three RGBA images
# (256 MiB at 4096²); 32-bit float goes through one float32 temporary (129 MiB); 16- and
# 32-bit integers through float64 (383 MiB for a 4096² 16-bit PNG, against 48 for 8-bit RGB).
_DECODE_BYTES_PER_PIXEL = {
    **dict.fromkeys(("1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"), 4),
    **dict.fromkeys(("RGBA", "RGBa", "LA", "La", "PA"), 16),
    "F": 8,
}
_UNLISTED_MODE_BYTES = 24  # "I", "I;16", "I;16B", ...: the float64 path
# The decoding budget is max_pixels times this: an 8-bit RGBA image at the pixel limit, the
# costliest image accepted at full size. 16- and 32-bit integer images get the same memory,
# so fewer pixels (two thirds of the limit: 3344² instead of 4096²).
MAX_DECODE_BYTES_PER_PIXEL = 16
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}

# Never let Pillow decode a partial file silently: a truncated upload must be a 400.
ImageFile.LOAD_TRUNCATED_IMAGES = False


@dataclass(frozen=True)
class PreprocessSpec:
    """What the model expects; stored inside every ONNX file (`mhist.preprocessing`)."""

    size: int = 224  # final square crop fed to the network
    resize_size: int = 224  # shorter side after resize, before the centre crop
    interpolation: str = "bilinear"  # Pillow filter, antialiased (= torchvision on PIL images)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    layout: str = "NCHW"
    color: str = "RGB"
    pixel_max: float = 255.0  # inputs are divided by this before mean/std
    resize: str = "shorter_side_then_center_crop"  # the rule resize_and_crop applies

    def __post_init__(self) -> None:
        # Checked here, not only when reading a file: a spec this code cannot honour exactly
        # must never reach a model, or serving would silently feed it other pixels.
        if self.resize_size < self.size:
            raise ValueError(f"resize_size {self.resize_size} is smaller than size {self.size}")
        for name, value, supported in (
            ("resize", self.resize, _RESIZERS),
            ("interpolation", self.interpolation, _FILTERS),
            ("layout", self.layout, ("NCHW",)),
            ("color", self.color, ("RGB",)),
        ):
            if value not in supported:
                raise ValueError(
                    f"unsupported preprocessing {name} {value!r}; this code supports "
                    f"{', '.join(supported)} (was the model exported by a newer version?)"
                )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> PreprocessSpec:
        """The spec stored in a model file; keys this version does not know are ignored."""
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for key in ("mean", "std"):
            if key in known:
                known[key] = tuple(float(v) for v in known[key])
        return cls(**known)


_FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode untrusted bytes into a fully loaded single-frame image, or raise ServiceError.

    The pixel count is checked from the header, before any pixel is decoded, so a
    decompression bomb costs nothing.
    """
    if not data:
        raise ServiceError(400, "empty_image", "The image is empty (0 bytes).")
    try:
        img = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except UnidentifiedImageError:
        raise ServiceError(
            400,
            "invalid_image",
            f"The bytes are not a readable image; accepted formats: {', '.join(ACCEPTED_FORMATS)}.",
        ) from None
    except Image.DecompressionBombError:
        raise _too_many_pixels(None, max_pixels) from None
    except Exception as exc:  # noqa: BLE001 - any decoder failure on untrusted input is a 400
        raise ServiceError(400, "invalid_image", f"The image header is corrupt: {exc}") from None
    width, height = img.size
    if width * height > max_pixels:
        raise _too_many_pixels((width, height), max_pixels)
    check_decode_bytes(img, max_pixels)
    if min(width, height) < MIN_SIDE:
        raise ServiceError(
            400,
            "image_too_small",
            f"The image is {width}x{height} pixels; both sides must be at least {MIN_SIDE}.",
        )
    check_aspect_ratio(width, height)
    pages = _tiff_pages(img) if img.format == "TIFF" else 1
    if pages > 1:
        # A multi-page TIFF is a stack or a slide pyramid: which page is the patch is ambiguous.
        raise ServiceError(
            400,
            "multi_page_image",
            f"The TIFF holds {pages} pages; send one patch per image.",
        )
    if img.format == "PNG":
        fast = _decode_plain_png(data, png_chunk_types(data))
        if fast is not None:
            return fast
    try:
        img.seek(0)  # animated PNG/WebP: the first frame is the patch
        img.load()
    except Exception as exc:  # noqa: BLE001 - truncated data, bad CRC, codec errors
        raise _corrupt_data(exc) from None
    return img


def decode_bytes(img: Image.Image) -> int:
    """Peak bytes decoding `img` (opened, not loaded) and converting it to RGB will take."""
    per_pixel = _DECODE_BYTES_PER_PIXEL.get(img.mode, _UNLISTED_MODE_BYTES)
    if img.mode == "P" and "transparency" in img.info:
        per_pixel = _DECODE_BYTES_PER_PIXEL["RGBA"]  # composited through RGBA like alpha
    return img.size[0] * img.size[1] * per_pixel


def check_decode_bytes(img: Image.Image, max_pixels: int) -> None:
    """413 `image_too_large` when the image's mode makes it cost more memory than the limit
    (MAX_DECODE_BYTES_PER_PIXEL × max_pixels), read from the header before any pixel."""
    needed, limit = decode_bytes(img), MAX_DECODE_BYTES_PER_PIXEL * max_pixels
    if needed > limit:
        per_pixel = needed // (img.size[0] * img.size[1])
        raise ServiceError(
            413, "image_too_large",
            f"The image is {img.size[0]}x{img.size[1]} pixels of mode {img.mode}: about "
            f"{needed / 2**20:.0f} MiB to decode and convert to 8-bit RGB, over the limit of "
            f"{limit / 2**20:.0f} MiB ({MAX_DECODE_BYTES_PER_PIXEL} bytes x {max_pixels} "
            f"pixels). Send it as 8-bit RGB, or at most {limit // per_pixel} pixels.",
        )


def check_aspect_ratio(width: int, height: int) -> None:
    """ServiceError 400 for an image longer than MAX_ASPECT_RATIO:1 either way."""
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        ratio = max(width, height) / min(width, height)
        raise ServiceError(
            400,
            "extreme_aspect_ratio",
            f"The image is {width}x{height} pixels, an aspect ratio of {ratio:.1f}:1; the limit "
            f"is {MAX_ASPECT_RATIO}:1. Send a roughly square patch (MHIST patches are 224x224).",
        )


def _tiff_pages(img: Image.Image) -> int:
    """Pages of a TIFF; counting them parses every IFD, where a crafted chain can fail."""
    try:
        return img.n_frames
    except Exception as exc:  # noqa: BLE001 - e.g. TypeError "Missing dimensions" on a bad IFD
        raise ServiceError(
            400, "invalid_image", f"The TIFF's page directory is corrupt: {exc}"
        ) from None


def png_chunk_types(data: bytes) -> frozenset[bytes]:
    """The type of every chunk of a PNG, walking its chunks once and checking each one's length
    and CRC, up to IEND; ServiceError 400 for a corrupt or truncated file.

    Pillow checks the CRC of the chunks before the image data only; libpng (browsers, most
    tools) refuses a PNG whose IDAT fails its CRC, so do the same instead of predicting on
    corrupt bytes. Cheap: one zlib.crc32 pass over the compressed data, no decoding. One walk
    serves both questions asked of a PNG before decoding (are its chunks whole, and which are
    there): Pillow's own verify() and a byte search for the chunk types cost 0.2 ms more on
    a 224² patch, measured here.
    """
    view, end, position, found = memoryview(data), len(data), 8, set()  # 8: the signature
    while True:
        if position + 12 > end:
            raise _corrupt_png(f"truncated at byte {position}, before its IEND chunk")
        length = int.from_bytes(view[position:position + 4], "big")
        kind = bytes(view[position + 4:position + 8])
        stop = position + 12 + length  # length, type, data, CRC
        if length > _PNG_MAX_CHUNK or stop > end or not kind.isalpha():
            raise _corrupt_png(f"chunk {kind!r} at byte {position} is cut or malformed")
        crc = int.from_bytes(view[stop - 4:stop], "big")
        if zlib.crc32(view[position + 4:stop - 4]) != crc:
            raise _corrupt_png(f"chunk {kind.decode('latin-1')} at byte {position} fails its "
                               "CRC")
        found.add(kind)
        if kind == b"IEND":
            return frozenset(found)
        position = stop


_PNG_MAX_CHUNK = 2**31 - 1  # the PNG standard's limit on a chunk's length


def _corrupt_png(what: str) -> ServiceError:
    return ServiceError(400, "invalid_image",
                        f"The PNG is corrupt (chunk checksum or length): {what}.")


# PNG chunks that only Pillow's path honours: EXIF orientation (applied by to_rgb) and
# animation (the first frame is the patch).
_PILLOW_ONLY_PNG_CHUNKS = frozenset({b"eXIf", b"acTL"})
# Byte offsets when IHDR is the first chunk, as the PNG standard requires (Pillow also opens a
# file with another chunk first: those go to Pillow): 8 (signature) + 4 (length), then the
# depth and colour type after the chunk type and the two 4-byte sizes.
_IHDR_TYPE, _IHDR_DEPTH, _IHDR_COLOUR = slice(12, 16), 24, 25
_TRUECOLOUR_8BIT = (8, 2)  # bit depth 8, colour type 2 (RGB): how MHIST patches are stored


def _decode_plain_png(data: bytes, chunks: frozenset[bytes]) -> Image.Image | None:
    """An 8-bit RGB PNG without EXIF or animation, decoded by libspng (pyspng), or None for any
    other PNG (Pillow decodes those).

    Why a second decoder: Pillow's PNG unfiltering made decoding the largest cost of a request
    after the model (2.07 ms for a 224² patch here, 1.27 with libspng; the same pixels, which
    tests/test_preprocessing_parity.py checks). decode_image has already checked the header,
    the pixel count and every chunk's CRC, so libspng only ever sees a well-formed file; a
    failure in the pixel data is a 400 like Pillow's.
    """
    if (data[_IHDR_TYPE] != b"IHDR"
            or (data[_IHDR_DEPTH], data[_IHDR_COLOUR]) != _TRUECOLOUR_8BIT
            or not chunks.isdisjoint(_PILLOW_ONLY_PNG_CHUNKS)):
        return None
    try:
        pixels = pyspng.load(data, "RGB")  # (H, W, 3) uint8
    except Exception as exc:  # noqa: BLE001 - libspng reports every decoding error this way
        raise _corrupt_data(exc) from None
    return Image.fromarray(pixels, "RGB")


def _corrupt_data(exc: Exception) -> ServiceError:
    """The 400 for pixel data that does not decode, whichever decoder found it."""
    return ServiceError(400, "invalid_image", f"The image data is truncated or corrupt: {exc}")


def _too_many_pixels(size: tuple[int, int] | None, max_pixels: int) -> ServiceError:
    what = f"{size[0]}x{size[1]} pixels" if size else "too many pixels"
    return ServiceError(
        413, "image_too_large", f"The image has {what}; the limit is {max_pixels} pixels."
    )


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode → 8-bit RGB, upright per EXIF, transparency composited on white.

    White, because slide background is white: a transparent margin should look like glass.
    """
    img = _upright(img)  # a new image only when EXIF rotates it
    if img.mode in _SIXTEEN_BIT_MODES:
        # 16-bit grey: rescale 0..65535 to 0..255 (Pillow's own convert would clip at 255).
        wide = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8), mode="L")
    elif img.mode == "F":
        img = Image.fromarray(np.clip(np.rint(np.asarray(img) * 255.0), 0, 255).astype(np.uint8))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def _upright(img: Image.Image) -> Image.Image:
    """Rotated per EXIF Orientation. The EXIF block is parsed here, not at decode, so a corrupt
    one (a PNG eXIf chunk or WebP EXIF that is not TIFF data) surfaces here: a 400."""
    try:
        if img.getexif().get(_ORIENTATION, 1) == 1:
            return img  # exif_transpose would return a copy: one whole-image copy saved
        return ImageOps.exif_transpose(img)
    except Exception as exc:  # noqa: BLE001 - SyntaxError, struct.error, ... on garbage EXIF
        raise ServiceError(
            400, "invalid_image", f"The image's EXIF metadata is corrupt: {exc}"
        ) from None


def resize_and_crop(img: Image.Image, spec: PreprocessSpec) -> Image.Image:
    """Resize and crop to a spec.size square by the spec's own rule (`spec.resize`)."""
    return _RESIZERS[spec.resize](img, spec)


def _shorter_side_then_center_crop(img: Image.Image, spec: PreprocessSpec) -> Image.Image:
    """Shorter side → spec.resize_size, then a centred spec.size square (torchvision's rules).

    Resize-then-crop, not Pillow's `resize(box=...)` of the crop alone: the box path runs its
    passes in another order and with float32 coordinates, so it differs from torchvision by a
    grey level on a few percent of pixels. The intermediate is bounded by the aspect ratio
    check instead (at most MAX_ASPECT_RATIO × resize_size² pixels).
    """
    width, height = img.size
    check_aspect_ratio(width, height)  # decode_image checks it too; tiles reach here directly
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = spec.resize_size, int(spec.resize_size * long / short)
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    if (new_w, new_h) != (width, height):
        img = img.resize((new_w, new_h), _FILTERS[spec.interpolation])
    if (new_w, new_h) == (spec.size, spec.size):
        return img  # already the crop (an MHIST patch at 224 px): no whole-image copy
    top = round((new_h - spec.size) / 2.0)
    left = round((new_w - spec.size) / 2.0)
    return img.crop((left, top, left + spec.size, top + spec.size))


_RESIZERS = {"shorter_side_then_center_crop": _shorter_side_then_center_crop}


def normalize(img: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """RGB image → (3, S, S) float32, scaled and standardised like ToTensor + Normalize.

    The same float32 operations in the same order as torchvision ((x / pixel_max - mean) /
    std), so the same bits, but written channel by channel straight into the channel-first
    array: no (S, S, 3) float copy and no transpose pass (0.2 ms instead of 0.69 at 224 px
    here).
    """
    pixels = np.asarray(img)  # (S, S, 3) uint8
    pixel_max = np.float32(spec.pixel_max)
    array = np.empty((3, *pixels.shape[:2]), dtype=np.float32)  # (3, S, S)
    for channel, (mean, std) in enumerate(zip(spec.mean, spec.std, strict=True)):
        # A 2-D strided read per channel vectorises; transposing the whole image does not.
        plane = array[channel]
        np.divide(pixels[:, :, channel], pixel_max, out=plane, dtype=np.float32,
                  casting="unsafe")
        plane -= np.float32(mean)
        plane /= np.float32(std)
    return array


def preprocess(img: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """An already decoded image → model input for one image, (3, S, S) float32."""
    return normalize(resize_and_crop(to_rgb(img), spec), spec)


def preprocess_bytes(
    data: bytes, spec: PreprocessSpec, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Untrusted image bytes → (3, S, S) float32, or ServiceError with a 4xx status."""
    return preprocess_bytes_and_crop(data, spec, max_pixels)[0]


def preprocess_bytes_and_crop(
    data: bytes, spec: PreprocessSpec, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[np.ndarray, Image.Image]:
    """`preprocess_bytes`, also returning the RGB spec.size crop the array was made from: the
    input quality checks (services/core/quality.py)
    read it, so nothing is decoded or resized twice."""
    with stage("decode"):
        img = decode_image(data, max_pixels)
    with stage("preprocess"):
        crop = resize_and_crop(to_rgb(img), spec)
        return normalize(crop, spec), crop
