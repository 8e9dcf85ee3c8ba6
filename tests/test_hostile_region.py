"""Hostile clients, third round: /predict/region's work, its number parsing, rotated images and
wide pixel modes, on every target (Flask, SageMaker, Lambda v1, v2, URL, ALB).

The fixture model takes 64-px input at 7.0 µm/px, so a region at its own mpp is tiled in 64-px
tiles; ?mpp=0.875 is the finest allowed (8× downscale, 512-px tiles).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from services.core.errors import ServiceError
from services.core.preprocessing import MAX_DECODE_BYTES_PER_PIXEL
from services.slides.region import (
    MAX_REGION_DOWNSCALE,
    MAX_REGION_MODEL_PIXELS,
    MAX_REGION_SOURCE_PIXELS,
    check_work,
)
from services.slides.tiling import Scale, plan_grid
from tests.support.corpus import flat_png
from tests.support.slides import tissue_canvas
from tests.support.targets import TARGET_NAMES, Reply, Target, all_targets

REPO_ROOT = Path(__file__).resolve().parents[1]
SIDE = 4096  # the decoder's pixel limit is 4096²
WORK_CODES = {"invalid_parameter", "invalid_stride", "too_much_work", "region_too_small",
              "resolution_too_coarse", "too_many_tiles"}


@pytest.fixture(scope="module")
def targets(model_int8_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Target]:
    return {t.name: t for t in all_targets(model_int8_path, tmp_path_factory.mktemp("region"))}


def region(target: Target, body: bytes, query: str = "") -> Reply:
    return target.request("POST", f"/predict/region{query}", {"Content-Type": "image/png"}, body)


def assert_error(reply: Reply, status: int, codes: set[str] | str, mentions: str = "") -> str:
    """The whole error answer: status, JSON {"error": {"code", "message"}}; the message."""
    codes = {codes} if isinstance(codes, str) else codes
    assert reply.status == status and reply.error_code in codes, (reply.status, reply.body[:400])
    assert reply.headers.get("content-type", "").startswith("application/json")
    document = reply.json()
    assert set(document) == {"error"} and set(document["error"]) == {"code", "message"}
    message = document["error"]["message"]
    assert mentions in message, message
    return message


def png(array: np.ndarray | Image.Image, **options: object) -> bytes:
    image = Image.fromarray(array) if isinstance(array, np.ndarray) else array
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1, **options)
    return buffer.getvalue()


# --- 1. work bounded by pixels, not tiles ------------------------------------------------------

@pytest.fixture(scope="module")
def flat_4096() -> bytes:
    """The red team's file: one saturated colour (all tissue to the mask), 58 KB."""
    data = flat_png(SIDE, SIDE)
    assert len(data) < 100_000
    return data


@pytest.mark.parametrize("name", TARGET_NAMES)
def test_a_tile_far_larger_than_the_input_is_refused(name: str, targets, flat_4096) -> None:
    """Once 289 tiles of 3,270² px (stride 51 px): a 500 after the worker timeout."""
    reply = region(targets[name], flat_4096, "?mpp=0.137&stride=1")
    message = assert_error(reply, 400, "too_much_work", f"the limit is {MAX_REGION_DOWNSCALE:g}×")
    assert "mpp ≥ 0.875" in message


@pytest.mark.parametrize("name", TARGET_NAMES)
def test_source_pixels_over_the_limit_are_refused(name: str, targets, flat_4096) -> None:
    """361 tiles of 512² px (stride 24 model px = 192 px): 94.6 M pixels read, within the
    former 1,024-tile limit, over MAX_REGION_SOURCE_PIXELS (67.1 M)."""
    reply = region(targets[name], flat_4096, "?mpp=0.875&stride=24")
    assert_error(reply, 400, "too_much_work", f"{MAX_REGION_SOURCE_PIXELS:,}")


@pytest.mark.parametrize("name", TARGET_NAMES)
def test_a_normal_request_on_the_largest_image_passes(name: str, targets, flat_4096) -> None:
    """The default request on a 4096² image for a 128-px model (the fixture's 64-px input at
    twice its mpp): 32 x 32 tiles, each pixel read once."""
    reply = region(targets[name], flat_4096, "?mpp=3.5")
    assert reply.status == 200, reply.body[:400]
    body = reply.json()
    assert body["grid"] == {"columns": 32, "rows": 32, "tile_px": 128, "stride_px": 128,
                            "background_tiles": 0}
    assert body["count"] == 1024 == len(body["tiles"])


def test_model_pixels_bound_a_larger_model() -> None:
    """For a 224-px model the default request on 4096² passes (324 tiles); upsampled 2× with
    some overlap, 676 tiles pass the tile limit but feed the model twice the yardstick."""
    scale = Scale(2.0, 2.0, 224)
    check_work(plan_grid(SIDE, SIDE, scale), scale)
    assert 324 * 224 ** 2 <= MAX_REGION_MODEL_PIXELS
    scale = Scale(4.0, 2.0, 224)  # 112-px tiles, 75-px steps: 26 x 26 tiles
    with pytest.raises(ServiceError, match="MAX_REGION_MODEL_PIXELS") as caught:
        check_work(plan_grid(2048, 2048, scale, stride=150), scale)
    assert (caught.value.status_code, caught.value.code) == (400, "too_much_work")


WORST_ALLOWED = {  # query → status: the largest work the limits let through, and the attack
    "?mpp=1.75&stride=31": 200,  # 1,024 tiles of 256² px: 67.1 M source pixels, both at the limit
    "?mpp=0.875&stride=32": 200,  # 225 tiles of 512² px (8× downscale): 59 M source pixels
    "?mpp=0.137&stride=1": 400,  # the attack
}


def test_peak_memory_and_time_of_the_worst_allowed_requests(model_int8_path: Path,
                                                            flat_4096: bytes,
                                                            tmp_path: Path) -> None:
    """A fresh worker process (tests/support/peak_memory.py, under an address-space limit)."""
    requests_file = tmp_path / "requests.pickle"
    with requests_file.open("wb") as handle:
        for query in WORST_ALLOWED:
            pickle.dump(("POST", f"/predict/region{query}", {"Content-Type": "image/png"},
                         flat_4096), handle)
    env = {k: v for k, v in os.environ.items()
           if k not in ("MHIST_API_TOKEN", "MAX_CONTENT_LENGTH", "SERVING_TARGET")}
    result = subprocess.run(
        [sys.executable, "-m", "tests.support.peak_memory", str(requests_file),
         str(model_int8_path)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
        env={**env, "PYTHONPATH": str(REPO_ROOT), "MHIST_PEAK_AS_LIMIT_MB": "3072",
             "LOG_LEVEL": "warning"})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    print("worst allowed region requests:", report)
    assert report["statuses"] == list(WORST_ALLOWED.values()), report
    assert report["peak_rss_mb"] - report["baseline_rss_mb"] < 600, report


# --- 2. numbers that overflowed the tiling arithmetic --------------------------------------------

@pytest.fixture(scope="module")
def tissue_448() -> bytes:
    return png(tissue_canvas(("SH", "HS"), 224)[0])


EXTREMES = {
    "mpp": ["1e-307", "1e-320", "5e-324", "4.9e-324", "1e-300", "2.2250738585072014e-308", "0",
            "-0", "-1", "-5e-324", "inf", "-inf", "nan", "NaN", "infinity", "1e308", "1e400",
            "1.7976931348623157e308", "abc", "", "%20", "0x10", "1,5", "%C2%BD", "9" * 4000,
            "0." + "0" * 4000 + "1", "1e-99999"],
    "stride": ["1e308", "1.7976931348623157e308", "9" * 308, "9" * 4000, "1e20", "0", "-1",
               "0.5", "inf", "nan", "abc", "5e-324", "1e-320"],
}


@pytest.mark.parametrize("name", TARGET_NAMES)
def test_extreme_numbers_are_4xx(name: str, targets, tissue_448: bytes) -> None:
    target = targets[name]
    queries = [f"?mpp={v}" for v in EXTREMES["mpp"]]
    queries += [f"?stride={v}" for v in EXTREMES["stride"]]
    queries += [f"?mpp={m}&stride={v}" for m in ("0.5", "3.5", "14") for v in EXTREMES["stride"]]
    for query in queries:
        reply = region(target, tissue_448, query)
        assert 400 <= reply.status < 500, (query[:60], reply.status, reply.body[:300])
        assert_error(reply, reply.status, WORK_CODES)


@pytest.mark.parametrize("query", ["?mpp=1e-307", "?mpp=1e-320", "?mpp=5e-324",
                                   "?stride=1e308&mpp=0.5", "?stride=1e308&mpp=3.5"])
@pytest.mark.parametrize("name", TARGET_NAMES)
def test_the_reported_overflows_are_400(name: str, query: str, targets, tissue_448) -> None:
    reply = region(targets[name], tissue_448, query)
    assert_error(reply, 400, {"too_much_work", "invalid_stride"})


@settings(max_examples=150, deadline=None)
@given(mpp=st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True),
       stride=st.one_of(st.none(), st.integers(min_value=-10, max_value=10 ** 400),
                        st.floats(allow_subnormal=True)))
def test_any_number_is_a_4xx_or_an_answer(targets, tissue_448: bytes, mpp: float,
                                          stride: int | float | None) -> None:
    """Any float for mpp, any stride: never a 5xx (Flask: the adapters carry the same app)."""
    query = f"?mpp={mpp!r}" + ("" if stride is None else f"&stride={stride!r}"[:5000])
    reply = region(targets["flask"], tissue_448, query)
    if reply.status != 200:
        assert_error(reply, reply.status, WORK_CODES)
        assert 400 <= reply.status < 500


# --- 3. EXIF orientation -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def strip() -> Image.Image:
    """256 x 1024 upright: four 256-px fields, SSA and HP alternating (tiles of 128 px at
    ?mpp=3.5, a 2 x 8 grid)."""
    return Image.fromarray(tissue_canvas(("S", "H", "S", "H"), 256)[0])


def stored_rotated(upright: Image.Image, orientation: int, fmt: str) -> bytes:
    """The upright picture stored as a camera would: pixels turned, EXIF saying how to undo."""
    turn = {6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}[orientation]
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    options = {"quality": 95, "subsampling": 0} if fmt == "JPEG" else {}
    upright.transpose(turn).save(buffer, format=fmt, exif=exif.tobytes(), **options)
    return buffer.getvalue()


def encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    options = {"quality": 95, "subsampling": 0} if fmt == "JPEG" else {}
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
@pytest.mark.parametrize("orientation", [6, 8])
@pytest.mark.parametrize("name", TARGET_NAMES)
def test_a_rotated_image_is_tiled_upright(name: str, orientation: int, fmt: str, targets,
                                          strip: Image.Image) -> None:
    target = targets[name]
    upright = region(target, encoded(strip, fmt), "?mpp=3.5")
    rotated = region(target, stored_rotated(strip, orientation, fmt), "?mpp=3.5")
    assert upright.status == rotated.status == 200, (upright.body[:300], rotated.body[:300])
    expected, got = upright.json(), rotated.json()
    assert got["grid"] == expected["grid"] == {"columns": 2, "rows": 8, "tile_px": 128,
                                               "stride_px": 128, "background_tiles": 0}
    assert [(t["x"], t["y"], t["label"]) for t in got["tiles"]] == \
        [(t["x"], t["y"], t["label"]) for t in expected["tiles"]]
    # PNG: the same pixels, so the same numbers; JPEG: the rotation moves the 8x8 blocks.
    tolerance = 0 if fmt == "PNG" else 0.05
    for mine, theirs in zip(got["tiles"], expected["tiles"], strict=True):
        assert mine["p_ssa"] == pytest.approx(theirs["p_ssa"], abs=tolerance)


@pytest.mark.parametrize("name", TARGET_NAMES)
def test_garbage_exif_on_a_region_is_a_400(name: str, targets) -> None:
    from tests.support.corpus import png_with_garbage_exif, webp_with_garbage_exif

    for body in (png_with_garbage_exif((256, 256)), webp_with_garbage_exif((256, 256))):
        assert_error(region(targets[name], body, "?mpp=3.5"), 400, "invalid_image", "EXIF")


# --- 4. wide pixel modes bounded by their memory -------------------------------------------------

def wide_images() -> dict[str, bytes]:
    """4096² images that compress to almost nothing but decode wide."""
    sixteen = Image.fromarray(np.full((SIDE, SIDE), 40000, dtype=np.uint16))
    int32 = Image.fromarray(np.full((SIDE, SIDE), 123456, dtype=np.int32))
    return {"png-16-bit": png(sixteen),
            "tiff-int32": encoded_tiff(int32)}


def encoded_tiff(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="TIFF", compression="tiff_adobe_deflate")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def wide() -> dict[str, bytes]:
    return wide_images()


@pytest.mark.parametrize("kind", ["png-16-bit", "tiff-int32"])
@pytest.mark.parametrize("name", TARGET_NAMES)
def test_wide_modes_are_bounded_by_their_memory(name: str, kind: str, targets, wide) -> None:
    target = targets[name]
    body = wide[kind]
    assert len(body) < 1_000_000
    for reply in (target.predict(body, "application/octet-stream"), region(target, body)):
        message = assert_error(reply, 413, "image_too_large", "MiB")
        assert f"{MAX_DECODE_BYTES_PER_PIXEL} bytes x" in message


@pytest.mark.parametrize("name", TARGET_NAMES)
def test_a_smaller_16_bit_image_is_still_served(name: str, targets) -> None:
    body = png(Image.fromarray(np.full((1024, 1024), 40000, dtype=np.uint16)))
    reply = targets[name].predict(body, "application/octet-stream")
    assert reply.status == 200, reply.body[:300]
