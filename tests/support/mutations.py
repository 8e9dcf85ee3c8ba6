"""Seeded, format-aware mutations of real PNG, JPEG, TIFF and WebP files (the mutation fuzzer).

    rng = random.Random(seed)
    data = mutate(rng, original)        # 1-3 mutations; the format is sniffed from the bytes

About two thirds of the mutations know the format's structure, so that they reach the decoder
instead of the first sanity check: PNG chunks get their CRC recomputed; JPEG marker segments,
TIFF IFD entries and WebP RIFF chunks are edited field by field. The rest are byte-level (flip,
set, insert, delete, truncate), aimed at the first 64 bytes where parsers branch most.
"""

from __future__ import annotations

import random
import struct
import zlib
from collections.abc import Callable

Mutator = Callable[[random.Random, bytes], bytes]

# Values that sit on the edges parsers check: 0, 1, powers of two and their neighbours, the
# 16 px floor, sign bits.
EDGE_INTS = (0, 1, 2, 3, 7, 8, 15, 16, 17, 255, 256, 4095, 4096, 4097, 65535, 65536,
             2**31 - 1, 2**31, 2**32 - 1)
GARBAGE_EXIF = (b"garbage-not-tiff", b"Exif\x00\x00garbage!", b"MM\x00*\x00\x00\x00\x08\xff\xff",
                b"II*\x00\xff\xff\xff\x7f", b"II*\x00\x08\x00\x00\x00\x01\x00\x12\x01\x03\x00")


def _garbage(rng: random.Random, limit: int = 64) -> bytes:
    if rng.random() < 0.4:
        return rng.choice(GARBAGE_EXIF)
    return rng.randbytes(rng.randint(0, limit))


def _edge(rng: random.Random, bits: int) -> int:
    value = rng.choice(EDGE_INTS) if rng.random() < 0.7 else rng.getrandbits(bits)
    return value % (1 << bits)


# --- byte level -------------------------------------------------------------------------------

def _position(rng: random.Random, data: bytes) -> int:
    return rng.randrange(min(64, len(data))) if rng.random() < 0.6 else rng.randrange(len(data))


def byte_mutation(rng: random.Random, data: bytes) -> bytes:
    if not data:
        return rng.randbytes(8)
    buffer = bytearray(data)
    at = _position(rng, data)
    kind = rng.randrange(5)
    if kind == 0:
        buffer[at] ^= 1 << rng.randrange(8)
    elif kind == 1:
        buffer[at] = rng.choice((0, 0xFF, 0x7F, 0x80, rng.randrange(256)))
    elif kind == 2:
        buffer[at:at] = rng.randbytes(rng.randint(1, 16))
    elif kind == 3:
        del buffer[at:at + rng.randint(1, 32)]
    else:
        del buffer[max(8, at):]
    return bytes(buffer)


# --- PNG: chunks, CRCs recomputed -------------------------------------------------------------

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_EXTRA_CHUNKS = (b"eXIf", b"iCCP", b"tEXt", b"zTXt", b"iTXt", b"sRGB", b"gAMA", b"pHYs",
                    b"PLTE", b"tRNS", b"acTL", b"fcTL", b"IDAT", b"sBIT", b"bKGD", b"IEND")


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    chunks, at = [], len(PNG_SIGNATURE)
    while at + 8 <= len(data):
        (length,) = struct.unpack(">I", data[at:at + 4])
        kind, body = data[at + 4:at + 8], data[at + 8:at + 8 + length]
        chunks.append((kind, body))
        at += 12 + length
    return chunks


def png_build(chunks: list[tuple[bytes, bytes]]) -> bytes:
    out = [PNG_SIGNATURE]
    for kind, body in chunks:
        out.append(struct.pack(">I", len(body)) + kind + body
                   + struct.pack(">I", zlib.crc32(kind + body)))
    return b"".join(out)


def png_mutation(rng: random.Random, data: bytes) -> bytes:
    chunks = png_chunks(data)
    if not chunks:
        return byte_mutation(rng, data)
    kind = rng.randrange(6)
    index = rng.randrange(len(chunks))
    if kind == 0 and chunks[0][0] == b"IHDR" and len(chunks[0][1]) == 13:
        # IHDR: width, height, bit depth, colour type, compression, filter, interlace
        fields = list(struct.unpack(">IIBBBBB", chunks[0][1]))
        field = rng.randrange(7)
        fields[field] = _edge(rng, 32 if field < 2 else 8)
        chunks[0] = (b"IHDR", struct.pack(">IIBBBBB", *fields))
    elif kind == 1:  # a byte inside a chunk's data, CRC kept valid
        name, body = chunks[index]
        chunks[index] = (name, byte_mutation(rng, body) if body else rng.randbytes(4))
    elif kind == 2:
        chunks.insert(rng.randrange(1, len(chunks) + 1),
                      (rng.choice(PNG_EXTRA_CHUNKS), _garbage(rng)))
    elif kind == 3:
        chunks.insert(rng.randrange(len(chunks) + 1), chunks[index])
    elif kind == 4 and len(chunks) > 1:
        del chunks[index]
    else:  # a length field that lies (the CRC is then checked over the wrong bytes)
        built = bytearray(png_build(chunks))
        at = len(PNG_SIGNATURE) + sum(12 + len(body) for _, body in chunks[:index])
        built[at:at + 4] = struct.pack(">I", _edge(rng, 32))
        return bytes(built)
    return png_build(chunks)


# --- JPEG: marker segments up to the scan -----------------------------------------------------

JPEG_MARKERS = (0xC0, 0xC1, 0xC2, 0xC3, 0xC4, 0xC9, 0xCF, 0xDB, 0xDD, 0xE0, 0xE1, 0xE2, 0xEE,
                0xFE, 0xD9, 0xDA)


def jpeg_segments(data: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """[(marker, payload)] from SOI up to SOS (exclusive), and the rest (SOS onwards)."""
    segments, at = [], 2
    while at + 4 <= len(data) and data[at] == 0xFF:
        marker = data[at + 1]
        if marker == 0xDA:
            break
        (length,) = struct.unpack(">H", data[at + 2:at + 4])
        segments.append((marker, data[at + 4:at + 2 + length]))
        at += 2 + length
    return segments, data[at:]


def jpeg_build(segments: list[tuple[int, bytes]], rest: bytes) -> bytes:
    out = [b"\xff\xd8"]
    for marker, payload in segments:
        out.append(bytes([0xFF, marker]) + struct.pack(">H", (len(payload) + 2) % 65536)
                   + payload)
    return b"".join(out) + rest


def jpeg_mutation(rng: random.Random, data: bytes) -> bytes:
    segments, rest = jpeg_segments(data)
    if not segments:
        return byte_mutation(rng, data)
    kind = rng.randrange(6)
    index = rng.randrange(len(segments))
    sof = [i for i, (marker, _) in enumerate(segments) if marker in (0xC0, 0xC1, 0xC2)]
    if kind == 0 and sof:  # SOF: precision, height, width, components, then per component
        i = sof[0]
        payload = bytearray(segments[i][1])
        at = rng.randrange(len(payload))
        if at in (1, 3):
            payload[at:at + 2] = struct.pack(">H", _edge(rng, 16))
        else:
            payload[at] = _edge(rng, 8)
        segments[i] = (segments[i][0], bytes(payload))
    elif kind == 1:
        marker, payload = segments[index]
        segments[index] = (rng.choice(JPEG_MARKERS) if rng.random() < 0.3 else marker,
                           byte_mutation(rng, payload) if payload else b"\0")
    elif kind == 2:  # APP1 Exif / APP2 ICC / COM with garbage
        marker = rng.choice((0xE1, 0xE1, 0xE2, 0xFE))
        body = (b"Exif\x00\x00" if marker == 0xE1 else b"") + _garbage(rng)
        segments.insert(rng.randrange(len(segments) + 1), (marker, body))
    elif kind == 3:
        segments.insert(rng.randrange(len(segments) + 1), segments[index])
    elif kind == 4 and len(segments) > 1:
        del segments[index]
    else:  # inside the scan: the entropy-coded data
        if len(rest) > 8:
            at = rng.randrange(4, len(rest))
            rest = rest[:at] + bytes([rng.randrange(256)]) + rest[at + 1:]
    return jpeg_build(segments, rest)


# --- TIFF: IFD entries ------------------------------------------------------------------------

TIFF_TAGS = (256, 257, 258, 259, 262, 273, 274, 277, 278, 279, 284, 317, 320, 338, 339, 530)


def tiff_mutation(rng: random.Random, data: bytes) -> bytes:
    if len(data) < 8 or data[:2] not in (b"II", b"MM"):
        return byte_mutation(rng, data)
    order = "<" if data[:2] == b"II" else ">"
    (ifd,) = struct.unpack(order + "I", data[4:8])
    if ifd + 2 > len(data):
        return byte_mutation(rng, data)
    (count,) = struct.unpack(order + "H", data[ifd:ifd + 2])
    buffer = bytearray(data)
    kind = rng.randrange(5)
    if kind < 3 and count:
        entry = ifd + 2 + 12 * rng.randrange(count)
        if entry + 12 > len(buffer):
            return byte_mutation(rng, data)
        field = rng.randrange(4)  # tag, type, count, value/offset
        if field == 0:
            buffer[entry:entry + 2] = struct.pack(order + "H", rng.choice(TIFF_TAGS))
        elif field == 1:
            buffer[entry + 2:entry + 4] = struct.pack(order + "H", rng.randrange(20))
        elif field == 2:
            buffer[entry + 4:entry + 8] = struct.pack(order + "I", _edge(rng, 32))
        else:
            buffer[entry + 8:entry + 12] = struct.pack(order + "I", _edge(rng, 32))
    elif kind == 3:  # the next-IFD offset: to itself, past the end, or to an IFD of one tag
        next_at = ifd + 2 + 12 * count
        if next_at + 4 > len(buffer):
            return byte_mutation(rng, data)
        tail = len(buffer) + len(buffer) % 2
        target = rng.choice((ifd, _edge(rng, 32), tail))
        buffer[next_at:next_at + 4] = struct.pack(order + "I", target)
        if target == tail:
            buffer += b"\0" * (tail - len(buffer))
            tag = rng.choice(TIFF_TAGS)
            buffer += struct.pack(order + "HHHII", 1, tag, 3, 1, _edge(rng, 16))
            buffer += struct.pack(order + "I", 0)
    else:
        buffer[ifd:ifd + 2] = struct.pack(order + "H", _edge(rng, 16))
    return bytes(buffer)


# --- WebP: RIFF chunks ------------------------------------------------------------------------

WEBP_CHUNKS = (b"VP8 ", b"VP8L", b"VP8X", b"ALPH", b"ANIM", b"ANMF", b"EXIF", b"ICCP", b"XMP ")


def webp_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    chunks, at = [], 12
    while at + 8 <= len(data):
        kind = data[at:at + 4]
        (size,) = struct.unpack("<I", data[at + 4:at + 8])
        chunks.append((kind, data[at + 8:at + 8 + size]))
        at += 8 + size + size % 2
    return chunks


def webp_build(chunks: list[tuple[bytes, bytes]]) -> bytes:
    body = b"WEBP" + b"".join(kind + struct.pack("<I", len(payload)) + payload
                              + b"\0" * (len(payload) % 2) for kind, payload in chunks)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def webp_mutation(rng: random.Random, data: bytes) -> bytes:
    chunks = webp_chunks(data)
    if not chunks:
        return byte_mutation(rng, data)
    kind = rng.randrange(5)
    index = rng.randrange(len(chunks))
    if kind == 0:  # the first bytes of a chunk: VP8 frame header and sizes, VP8X flags
        name, payload = chunks[index]
        buffer = bytearray(payload or b"\0")
        at = rng.randrange(min(16, len(buffer)))
        buffer[at] = _edge(rng, 8)
        chunks[index] = (name, bytes(buffer))
    elif kind == 1:  # an extended file with an EXIF chunk of garbage
        flags = bytes([0x08 | (0x10 if rng.random() < 0.3 else 0), 0, 0, 0])
        chunks.insert(0, (b"VP8X", flags + struct.pack("<I", 47)[:3] + struct.pack("<I", 39)[:3]))
        chunks.append((b"EXIF", _garbage(rng)))
    elif kind == 2:
        chunks.insert(rng.randrange(len(chunks) + 1), (rng.choice(WEBP_CHUNKS), _garbage(rng)))
    elif kind == 3:
        chunks[index] = (rng.choice(WEBP_CHUNKS), chunks[index][1])
    else:  # the RIFF size or a chunk size that lies
        built = bytearray(webp_build(chunks))
        at = 4 if rng.random() < 0.5 else 16
        built[at:at + 4] = struct.pack("<I", _edge(rng, 32))
        return bytes(built)
    return webp_build(chunks)


# --- dispatch ---------------------------------------------------------------------------------

def sniff(data: bytes) -> str:
    if data.startswith(PNG_SIGNATURE):
        return "PNG"
    if data.startswith(b"\xff\xd8"):
        return "JPEG"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return ""


FORMAT_MUTATORS: dict[str, Mutator] = {"PNG": png_mutation, "JPEG": jpeg_mutation,
                                       "TIFF": tiff_mutation, "WEBP": webp_mutation}


def mutate(rng: random.Random, data: bytes) -> bytes:
    """1-3 mutations, each structural (when the format is still recognisable) or byte-level."""
    for _ in range(rng.choice((1, 1, 2, 3))):
        structural = FORMAT_MUTATORS.get(sniff(data))
        data = (structural if structural and rng.random() < 0.65 else byte_mutation)(rng, data)
    return data
