"""decode_image's one walk over a PNG's chunks (services.core.preprocessing.png_chunk_types):
every chunk's length and CRC up to IEND, and which chunks send the file to Pillow."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from services.core import preprocessing
from services.core.errors import ServiceError
from services.core.preprocessing import decode_image, png_chunk_types


def _png(size: int = 32) -> bytes:
    rgb = np.random.default_rng(3).integers(0, 256, (size, size, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(out, "PNG")
    return out.getvalue()


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _insert_before_iend(data: bytes, chunk: bytes) -> bytes:
    return data[:-12] + chunk + data[-12:]


def test_the_chunk_types_of_a_plain_png() -> None:
    assert png_chunk_types(_png()) == {b"IHDR", b"IDAT", b"IEND"}


@pytest.mark.parametrize("damage", ["idat_crc", "cut", "no_iend", "bad_length", "bad_type"])
def test_a_damaged_png_is_a_400(damage: str) -> None:
    data = bytearray(_png())
    idat = data.index(b"IDAT") - 4
    if damage == "idat_crc":
        length = struct.unpack(">I", data[idat:idat + 4])[0]
        data[idat + 8 + length] ^= 0xFF  # first byte of the IDAT's CRC
    elif damage == "cut":
        data = data[:idat + 20]
    elif damage == "no_iend":
        data = data[:-12]
    elif damage == "bad_length":
        data[idat:idat + 4] = struct.pack(">I", 2**31)
    else:  # after the pixels, where Pillow's open() does not look
        data = bytearray(_insert_before_iend(bytes(data), _chunk(b"t1Xt", b"x")))
    with pytest.raises(ServiceError) as caught:
        decode_image(bytes(data))
    assert caught.value.status_code == 400 and caught.value.code == "invalid_image"
    assert "The PNG is corrupt" in caught.value.message


def test_an_exif_chunk_after_the_pixels_sends_the_file_to_pillow(monkeypatch) -> None:
    """Found by the walk wherever it is, not by a byte search of the compressed data."""
    exif = Image.Exif()
    exif[0x0112] = 1
    data = _insert_before_iend(_png(), _chunk(b"eXIf", exif.tobytes()))
    assert b"eXIf" in png_chunk_types(data)
    monkeypatch.setattr(preprocessing.pyspng, "load", lambda *a: pytest.fail("libspng"))
    assert decode_image(data).size == (32, 32)


def test_chunk_type_bytes_inside_the_pixels_do_not_send_the_file_to_pillow(monkeypatch) -> None:
    """A byte string 'acTL' inside a text chunk is data, not a chunk: libspng decodes it."""
    data = _insert_before_iend(_png(), _chunk(b"tEXt", b"Comment\x00acTL eXIf"))
    calls = []
    real = preprocessing.pyspng.load
    monkeypatch.setattr(preprocessing.pyspng, "load", lambda *a: calls.append(1) or real(*a))
    np.testing.assert_array_equal(np.asarray(decode_image(data)), np.asarray(decode_image(_png())))
    assert calls
