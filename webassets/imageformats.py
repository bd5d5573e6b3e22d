"""Image formats: what a file really is, and its pixel size, from its first bytes."""

import logging
import math
import os
import re
import struct
from typing import Optional, Tuple

__all__ = ["sniff_format", "read_dimensions", "read_pdf_page_size", "SNIFF_BYTES",
           "PDF_DEFAULT_PAGE"]

logger = logging.getLogger(__name__)

# HEIF 'ftyp' brands: HEVC-coded (HEIC) and the generic image brands (HEIF).
HEIC_BRANDS = frozenset((b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs"))
HEIF_BRANDS = frozenset((b"mif1", b"msf1"))
AVIF_BRANDS = frozenset((b"avif", b"avis"))
BMP_HEADER_SIZES = frozenset((12, 40, 52, 56, 64, 108, 124))
JPEG_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}

SNIFF_BYTES = 4096
HEIF_META_BYTES = 64 * 1024
PDF_SCAN_BYTES = 1024 * 1024
PDF_DEFAULT_PAGE = (612.0, 792.0)  # US Letter in points, when no /MediaBox is found
# SECURITY: bounds on the header walks, far above what real files hold (a few fill bytes;
# a few dozen GIF extension sub-blocks before the first frame).
MAX_JPEG_FILL = 4096
MAX_GIF_SUBBLOCKS = 16384
_MEDIA_BOX = re.compile(rb"/MediaBox\s*\[\s*" + rb"\s+".join([rb"([-+0-9.]+)"] * 4) + rb"\s*\]")


def sniff_format(head: bytes) -> Optional[str]:
    """Return the input format named by a file's first bytes, or None if not supported."""
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:4] in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+"):
        return "tiff"
    # SECURITY: '%PDF-' at byte 0 only. Anything else (PostScript, junk before the header) would
    # be run by Ghostscript's PostScript interpreter.
    if head.startswith(b"%PDF-"):
        return "pdf"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:2] == b"BM" and len(head) >= 18 and _le32(head, 14) in BMP_HEADER_SIZES:
        return "bmp"
    if head[4:8] == b"ftyp":
        return _heif_kind(head)
    return None


def _le32(data: bytes, offset: int) -> int:
    return struct.unpack("<I", data[offset:offset + 4])[0]


def _heif_kind(head: bytes) -> Optional[str]:
    """Return 'heic'/'heif' from an ISO-BMFF 'ftyp' box's brands, None for AVIF and video."""
    box_end = min(struct.unpack(">I", head[:4])[0], len(head))
    brands = {head[8:12]}
    brands.update(head[i:i + 4] for i in range(16, box_end - 3, 4))
    if head[8:12] in AVIF_BRANDS:
        return None
    if brands & HEIC_BRANDS:
        return "heic"
    if brands & HEIF_BRANDS:
        return "heif"
    return None


def read_dimensions(f, fmt: str) -> Optional[Tuple[int, int]]:
    """Return (width, height) from the header of an open file, or None if not cheaply known."""
    reader = _SIZE_READERS.get(fmt)
    if reader is None:
        return None
    try:
        f.seek(0)
        return reader(f)
    except (struct.error, ValueError, IndexError) as ex:
        # A malformed header is ImageMagick's to reject; its own limits still apply.
        logger.debug("Cannot read %s dimensions: %s", fmt, ex)
        return None


def _png_size(f):
    head = f.read(24)
    return struct.unpack(">II", head[16:24]) if head[12:16] == b"IHDR" else None


def _gif_size(f):
    head = f.read(13)
    width, height = struct.unpack("<HH", head[6:10])
    flags = head[10]
    position = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    # A frame may be larger than the logical screen: find the first image descriptor.
    blocks = 0
    for _ in range(256):
        f.seek(position)
        introducer = f.read(2)
        if introducer[:1] == b",":
            descriptor = introducer[1:] + f.read(7)
            left, top, frame_width, frame_height = struct.unpack("<HHHH", descriptor)
            return max(width, left + frame_width), max(height, top + frame_height)
        if introducer[:1] != b"!":
            break
        position += 2
        while True:  # extension sub-blocks, ended by a zero size
            blocks += 1
            if blocks > MAX_GIF_SUBBLOCKS:  # SECURITY: bounded work for any file
                return width, height
            f.seek(position)
            size = f.read(1)[0]
            position += 1 + size
            if not size:
                break
    return width, height


def _jpeg_size(f):
    f.seek(2)
    fill = 0
    for _ in range(1024):
        if f.read(1) != b"\xff":
            return None
        marker = f.read(1)[0]
        while marker == 0xFF:
            # SECURITY: fill bytes may run for the whole file; real files have a few at most.
            fill += 1
            if fill > MAX_JPEG_FILL:
                return None
            marker = f.read(1)[0]
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:
            continue
        if marker in (0xD9, 0xDA):
            return None
        length = struct.unpack(">H", f.read(2))[0]
        if length < 2:
            return None  # would step back into the segment header
        if marker in JPEG_SOF_MARKERS:
            height, width = struct.unpack(">HH", f.read(5)[1:5])
            return width, height
        f.seek(length - 2, os.SEEK_CUR)
    return None


def _bmp_size(f):
    head = f.read(26)
    if struct.unpack("<I", head[14:18])[0] == 12:
        return struct.unpack("<HH", head[18:22])
    width, height = struct.unpack("<ii", head[18:26])
    return abs(width), abs(height)


def _webp_size(f):
    head = f.read(30)
    chunk = head[12:16]
    if chunk == b"VP8 ":
        width, height = struct.unpack("<HH", head[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":
        bits = _le32(head, 21)
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        return int.from_bytes(head[24:27], "little") + 1, int.from_bytes(head[27:30], "little") + 1
    return None


def _tiff_size(f):
    head = f.read(8)
    order = "<" if head[:2] == b"II" else ">"
    if struct.unpack(order + "H", head[2:4])[0] != 42:
        return None  # BigTIFF: left to ImageMagick's width/height limits
    f.seek(struct.unpack(order + "I", head[4:8])[0])
    count = min(struct.unpack(order + "H", f.read(2))[0], 1024)
    entries = f.read(12 * count)
    found = {}
    for start in range(0, len(entries) - 11, 12):
        tag, kind = struct.unpack(order + "HH", entries[start:start + 4])
        if tag in (256, 257):
            # A SHORT value sits in the first two bytes of the four-byte field.
            value_format, length = ("H", 2) if kind == 3 else ("I", 4)
            value = entries[start + 8:start + 8 + length]
            found[tag] = struct.unpack(order + value_format, value)[0]
    return (found[256], found[257]) if len(found) == 2 else None


def _heif_size(f):
    # The largest 'ispe' (image spatial extents) property in the metadata is the full image;
    # grid tiles have smaller ones.
    head = f.read(HEIF_META_BYTES)
    sizes = [struct.unpack(">II", head[at + 8:at + 16])
             for at in (m.start() for m in re.finditer(b"ispe", head)) if len(head) >= at + 16]
    return max(sizes, key=lambda size: size[0] * size[1]) if sizes else None


_SIZE_READERS = {"png": _png_size, "gif": _gif_size, "jpeg": _jpeg_size, "bmp": _bmp_size,
                 "webp": _webp_size, "tiff": _tiff_size, "heic": _heif_size, "heif": _heif_size}


def read_pdf_page_size(path: str) -> Tuple[float, float]:
    """Return the first /MediaBox (width, height) in points near the file start, or Letter."""
    with open(path, "rb") as f:
        match = _MEDIA_BOX.search(f.read(PDF_SCAN_BYTES))
    if match:
        try:
            x1, y1, x2, y2 = (float(number) for number in match.groups())
        except ValueError:
            return PDF_DEFAULT_PAGE
        width, height = abs(x2 - x1), abs(y2 - y1)
        # float() turns 400 digits into inf: such a box is as good as none.
        if 1 <= width < math.inf and 1 <= height < math.inf:
            return width, height
    return PDF_DEFAULT_PAGE
