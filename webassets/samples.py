"""Tiny sample images of every input format, for the live thumbnail probe of `webassets check`."""

import base64
import struct
import zlib

__all__ = ["SAMPLES", "sample"]

SIZE = 16  # pixels per side of the generated samples

# Formats with no simple encoder are stored: 16x16 images written by ImageMagick 6.9.11.
_JPEG = (
    "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDABALDA4MChAODQ4SERATGCgaGBYWGDEjJR0oOjM9PDkzODdASFxOQERX"
    "RTc4UG1RV19iZ2hnPk1xeXBkeFxlZ2P/2wBDARESEhgVGC8aGi9jQjhCY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2Nj"
    "Y2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2P/wAARCAAQABADASIAAhEBAxEB/8QAFgABAQEAAAAAAAAAAAAAAAAA"
    "AAQF/8QAFRABAQAAAAAAAAAAAAAAAAAAABP/xAAUAQEAAAAAAAAAAAAAAAAAAAAF/8QAFhEAAwAAAAAAAAAAAAAA"
    "AAAAABVh/9oADAMBAAIRAxEAPwDAqVRVKlFEGWlP/9k=")
_WEBP = ("UklGRkoAAABXRUJQVlA4ID4AAAAwAgCdASoQABAAAgA0JbACdGuA/wAFu1l1EAD+9YZ6ZaqopAwE3//bTZX7"
         "eTX/3CMKP/+5zPdRWtkLpAAAAA==")
_HEIC = (
    "AAAAHGZ0eXBoZWljAAAAAG1pZjFoZWljbWlhZgAAAaptZXRhAAAAAAAAACFoZGxyAAAAAAAAAABwaWN0AAAAAAAA"
    "AAAAAAAAAAAAAA5waXRtAAAAAAACAAAAEGlkYXQAAAAAABAAEAAAADhpbG9jAQAAAERAAAIAAQAAAAAAAAHOAAEA"
    "AAAAAAAANQACAAEAAAAAAAAAAQAAAAAAAAAIAAAAOGlpbmYAAAAAAAIAAAAVaW5mZQIAAAEAAQAAaHZjMQAAAAAV"
    "aW5mZQIAAAAAAgAAZ3JpZAAAAADVaXBycAAAALNpcGNvAAAAc2h2Y0MBA3AAAAAAAAAAAAAe8AD8/fj4AAAPAyAA"
    "AQAYQAEMAf//A3AAAAMAkAAAAwAAAwAeugJAIQABACdCAQEDcAAAAwCQAAADAAADAB6gIIEFluqumubAgAAAAwCA"
    "AAADAIQiAAEABkQBwXPBiQAAABRpc3BlAAAAAAAAAEAAAABAAAAAFGlzcGUAAAAAAAAAEAAAABAAAAAQcGl4aQAA"
    "AAADCAgIAAAAGmlwbWEAAAAAAAAAAgABAoECAAICA4QAAAAaaXJlZgAAAAAAAAAOZGltZwACAAEAAQAAAD1tZGF0"
    "AAAAMSgBrxkhZMJA715m6ZPpJJM9Qcd4ZkFC80x66H/cZm/zf41p6iGLebSgq+D5EJOMlFs=")


def _pixel(x, y):
    """Return the sample's (r, g, b): a red-to-blue gradient."""
    return (255 - 16 * y, 8 * x, 16 * y)


def _rows():
    return [bytes(value for x in range(SIZE) for value in _pixel(x, y)) for y in range(SIZE)]


def _png_chunk(kind, data):
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def png():
    """Return an 8-bit RGB PNG."""
    header = struct.pack(">IIBBBBB", SIZE, SIZE, 8, 2, 0, 0, 0)
    data = zlib.compress(b"".join(b"\0" + row for row in _rows()))
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", data)
            + _png_chunk(b"IEND", b""))


def bmp():
    """Return a 24-bit bottom-up BMP (pixels in BGR order, rows padded to 4 bytes)."""
    pad = b"\0" * (-SIZE * 3 % 4)
    pixels = b"".join(_bgr(row) + pad for row in reversed(_rows()))
    info = struct.pack("<IiiHHIIiiII", 40, SIZE, SIZE, 1, 24, 0, len(pixels), 2835, 2835, 0, 0)
    header = struct.pack("<2sIHHI", b"BM", 14 + len(info) + len(pixels), 0, 0, 14 + len(info))
    return header + info + pixels


def _bgr(row):
    return bytes(value for i in range(0, len(row), 3) for value in row[i:i + 3][::-1])


def _ifd_entry(tag, kind, count, value):
    """Return a little-endian TIFF directory entry; a SHORT value sits in the first 2 bytes."""
    if kind == 3 and count == 1:
        return struct.pack("<HHIHH", tag, kind, count, value, 0)
    return struct.pack("<HHII", tag, kind, count, value)


def tiff():
    """Return a little-endian, uncompressed, single-strip RGB TIFF."""
    pixels = b"".join(_rows())
    tags = 12
    ifd_start = 8 + len(pixels)
    bits_at = ifd_start + 2 + 12 * tags + 4  # values too big for an entry follow the IFD
    resolution_at = bits_at + 6
    entries = [(256, 3, 1, SIZE), (257, 3, 1, SIZE), (258, 3, 3, bits_at), (259, 3, 1, 1),
               (262, 3, 1, 2), (273, 4, 1, 8), (277, 3, 1, 3), (278, 3, 1, SIZE),
               (279, 4, 1, len(pixels)), (282, 5, 1, resolution_at),
               (283, 5, 1, resolution_at), (296, 3, 1, 2)]
    ifd = (struct.pack("<H", tags) + b"".join(_ifd_entry(*entry) for entry in entries)
           + struct.pack("<I", 0))
    extra = struct.pack("<HHHII", 8, 8, 8, 72, 1)
    return b"II*\0" + struct.pack("<I", ifd_start) + pixels + ifd + extra


def gif():
    """Return a GIF: 128-color palette, 8-bit LZW codes with a clear code every 100 pixels."""
    palette = b"".join(bytes((2 * i, 0, 255 - 2 * i)) for i in range(128))
    pixels = [min(127, y * 8 + x // 2) for y in range(SIZE) for x in range(SIZE)]
    # NOTE: with a 7-bit minimum code size every code is one byte while the table stays
    # below 256 entries, which regular clear codes (128) ensure; 129 ends the image.
    codes = bytearray()
    for start in range(0, len(pixels), 100):
        codes.append(128)
        codes.extend(pixels[start:start + 100])
    codes.append(129)
    blocks = b"".join(bytes((len(codes[i:i + 255]),)) + bytes(codes[i:i + 255])
                      for i in range(0, len(codes), 255))
    screen = struct.pack("<HHBBB", SIZE, SIZE, 0xF6, 0, 0)  # global table of 2**(6+1) colors
    image = b"," + struct.pack("<HHHHB", 0, 0, SIZE, SIZE, 0)
    return b"GIF89a" + screen + palette + image + b"\x07" + blocks + b"\0;"


def pdf():
    """Return a one-page PDF (a blue rectangle on a 200 x 100 pt page)."""
    stream = b"0 0 1 rg 10 10 180 80 re f"
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>",
               b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 100] /Contents 4 0 R >>",
               b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream)]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1, xref)
    return bytes(out)


def heif():
    """Return the HEIC sample relabelled with generic HEIF brands (mif1, miaf)."""
    data = bytearray(base64.b64decode(_HEIC))
    data[8:12] = b"mif1"
    data[16:28] = b"mif1miafmiaf"
    return bytes(data)


# Input format (thumbnails.INPUTS) -> (sample file name, sample maker).
SAMPLES = {
    "jpeg": ("sample.jpg", lambda: base64.b64decode(_JPEG)),
    "png": ("sample.png", png),
    "gif": ("sample.gif", gif),
    "tiff": ("sample.tif", tiff),
    "pdf": ("sample.pdf", pdf),
    "heic": ("sample.heic", lambda: base64.b64decode(_HEIC)),
    "heif": ("sample.heif", heif),
    "webp": ("sample.webp", lambda: base64.b64decode(_WEBP)),
    "bmp": ("sample.bmp", bmp),
}


def sample(fmt):
    """Return (file name, bytes) of the sample for an input format; KeyError if unknown."""
    name, make = SAMPLES[fmt]
    return name, make()
