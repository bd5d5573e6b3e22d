"""Hostile files for the time-bound tests; `python -m tests.crafted` rewrites tests/data/crafted/.

Each builder returns the bytes of one file named for what it attacks. SMALL files are committed
in tests/data/crafted/ (a few KiB each); LARGE ones (MiB of filler) are only built in code.
"""

import os
import struct
import sys
import zlib

CRAFTED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "crafted")

BYTE, ASCII, SHORT, LONG, RATIONAL, UNDEFINED = 1, 2, 3, 4, 5, 7
MAKE, MODEL, EXIF_IFD, GPS_IFD, INTEROP_IFD, SUB_IFDS = 0x010F, 0x0110, 0x8769, 0x8825, 0xA005, 0x014A
MAKERNOTE, DATE_ORIGINAL = 0x927C, 0x9003
_SIZES = {BYTE: 1, ASCII: 1, SHORT: 2, LONG: 4, RATIONAL: 8, UNDEFINED: 1}


class Tiff:
    """A TIFF structure built bottom-up: add blobs and IFDs, then finish(first IFD offset).

    An entry is (tag, type, count, value): an int is the raw 4-byte field (an inline
    number, or an offset, however wrong); bytes are the value, inline if they fit in 4 bytes,
    else stored as a blob that the field points to.
    """

    def __init__(self, order=">"):
        self.order = order
        self.data = bytearray(b"MM\0*" if order == ">" else b"II*\0") + bytearray(4)

    def blob(self, data):
        if len(self.data) % 2:
            self.data += b"\0"
        offset = len(self.data)
        self.data += data
        return offset

    def ifd(self, entries, next_ifd=0, declared=None):
        table = struct.pack(self.order + "H", len(entries) if declared is None else declared)
        fields = []
        for tag, kind, count, value in entries:
            if isinstance(value, bytes):
                if len(value) <= 4:
                    field = value.ljust(4, b"\0")
                else:
                    field = struct.pack(self.order + "I", self.blob(value))
            elif kind == SHORT and count == 1:
                field = struct.pack(self.order + "HH", value, 0)
            else:
                field = struct.pack(self.order + "I", value)
            fields.append(struct.pack(self.order + "HHI", tag, kind, count) + field)
        return self.blob(table + b"".join(fields) + struct.pack(self.order + "I", next_ifd))

    def finish(self, first_ifd):
        self.data[4:8] = struct.pack(self.order + "I", first_ifd)
        return bytes(self.data)


def text(value):
    return value.encode("latin-1") + b"\0"


def jpeg(tiff, body=b"\xff\xd9"):
    """Return a JPEG: SOI, an APP1 'Exif' segment holding `tiff`, then `body`."""
    payload = b"Exif\0\0" + tiff
    return b"\xff\xd8\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + body


def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(chunks=(), width=1, height=1):
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + b"".join(chunks)
            + png_chunk(b"IDAT", zlib.compress(b"\0\0")) + png_chunk(b"IEND", b""))


def canon_ifd0(tiff, exif_ifd, extra=()):
    return tiff.ifd([(MAKE, ASCII, 6, text("Canon")), (MODEL, ASCII, 13, text("Canon EOS 5D")),
                     (EXIF_IFD, LONG, 1, exif_ifd)] + list(extra))


# --------------------------------------------------------------------------- EXIF

def exif_makernote_count_ffffffff():
    """The issue's file: a MakerNote whose value count is 0xFFFFFFFF (ExifRead loops 4G times)."""
    tiff = Tiff()
    exif = tiff.ifd([(DATE_ORIGINAL, ASCII, 20, text("2015:05:20 12:16:38")),
                     (MAKERNOTE, UNDEFINED, 0xFFFFFFFF, 0)])
    return jpeg(tiff.finish(canon_ifd0(tiff, exif)))


def exif_ascii_count_ffffffff():
    """An ASCII tag of 0xFFFFFFFF characters: one read of the rest of the file."""
    tiff = Tiff()
    exif = tiff.ifd([(0x9286, ASCII, 0xFFFFFFFF, 8)])  # UserComment over the rest of the file
    return jpeg(tiff.finish(canon_ifd0(tiff, exif)), body=b"\xff\xd9" + b"x" * 2000)


def exif_offsets_past_end():
    """Values, sub-IFDs and the next IFD at offsets up to 0xFFFFFFF0, past the end."""
    tiff = Tiff()
    ifd1 = tiff.ifd([(0x0201, LONG, 1, 0xFFFFFF00), (0x0202, LONG, 1, 0xFFFF)],
                    next_ifd=0x7FFFFFFF)
    ifd0 = tiff.ifd([(MAKE, ASCII, 20, 0x7FFFFFF0), (0x011A, RATIONAL, 500, 0xFFFFFFF0),
                     (0x0111, LONG, 900, 0xFFFFFFF0), (EXIF_IFD, LONG, 1, 0xFFFFFF00),
                     (GPS_IFD, LONG, 1, 0xFFFFFFF0)], next_ifd=ifd1)
    return jpeg(tiff.finish(ifd0))


def exif_ifd_chain_loop():
    """IFD0 -> IFD1 -> IFD2 -> IFD1: exifread's list_ifd must stop."""
    tiff = Tiff()
    ifd2 = tiff.ifd([(0x0101, SHORT, 1, 1)])
    ifd1 = tiff.ifd([(0x0100, SHORT, 1, 1)], next_ifd=ifd2)
    tiff.data[ifd2 + 14:ifd2 + 18] = struct.pack(">I", ifd1)
    return jpeg(tiff.finish(tiff.ifd([(MAKE, ASCII, 6, text("Canon"))], next_ifd=ifd1)))


def exif_pointer_loops():
    """EXIF IFD -> IFD0, GPS and Interoperability -> the IFD holding them, IFD0 -> itself."""
    tiff = Tiff()
    exif = tiff.ifd([(GPS_IFD, LONG, 1, 0), (INTEROP_IFD, LONG, 1, 0)])
    tiff.data[exif + 10:exif + 14] = struct.pack(">I", exif)
    tiff.data[exif + 22:exif + 26] = struct.pack(">I", exif)
    ifd0 = tiff.ifd([(MAKE, ASCII, 6, text("Canon")), (EXIF_IFD, LONG, 1, 0),
                     (GPS_IFD, LONG, 1, exif)])
    tiff.data[ifd0 + 22:ifd0 + 26] = struct.pack(">I", ifd0)  # ExifOffset -> IFD0
    tiff.data[ifd0 + 38:ifd0 + 42] = struct.pack(">I", ifd0)  # next IFD -> IFD0
    return jpeg(tiff.finish(ifd0))


def exif_many_tags():
    """300 tags of 999 SHORTs each, sharing one value: 300,000 reads in ExifRead."""
    tiff = Tiff()
    shared = tiff.blob(b"\0\1" * 999)
    exif = tiff.ifd([(0xC000 + i, SHORT, 999, shared) for i in range(300)])
    return jpeg(tiff.finish(canon_ifd0(tiff, exif)))


def exif_entry_count_65535():
    """An EXIF IFD declaring 65535 entries in a file that holds one."""
    tiff = Tiff()
    exif = tiff.ifd([(DATE_ORIGINAL, ASCII, 20, text("2015:05:20 12:16:38"))], declared=65535)
    return jpeg(tiff.finish(canon_ifd0(tiff, exif)))


def exif_many_ifds():
    """A chain of 400 IFDs (pages) of one 999-value tag each."""
    tiff = Tiff("<")
    shared = tiff.blob(b"\1\0" * 999)
    ifd = 0
    for _ in range(400):
        ifd = tiff.ifd([(0x0100, SHORT, 999, shared)], next_ifd=ifd)
    return tiff.finish(ifd)


def exif_subifds_999():
    """999 SubIFDs, all the same IFD of 60 tags of 999 values."""
    tiff = Tiff("<")
    shared = tiff.blob(b"\1\0" * 999)
    sub = tiff.ifd([(0xC000 + i, SHORT, 999, shared) for i in range(60)])
    offsets = tiff.blob(struct.pack("<I", sub) * 999)
    return tiff.finish(tiff.ifd([(0x0100, SHORT, 1, 1), (SUB_IFDS, LONG, 999, offsets)]))


def exif_makernote_entries():
    """A Canon MakerNote IFD declaring 65535 entries of 999 values each (shared)."""
    tiff = Tiff()
    shared = tiff.blob(b"\0\1" * 999)
    note = struct.pack(">H", 65535) + struct.pack(">HHII", 0x0001, SHORT, 999, shared) * 300
    exif = tiff.ifd([(MAKERNOTE, UNDEFINED, len(note), note)])
    return jpeg(tiff.finish(canon_ifd0(tiff, exif)))


def exif_nikon_makernote_relative():
    """A Nikon type-2 MakerNote whose relative offsets point far past the end."""
    tiff = Tiff()
    inner = struct.pack(">H", 3) + b"".join(
        struct.pack(">HHII", 0x0001 + i, SHORT, 999, 0x7FFFFF00) for i in range(3)) + b"\0" * 4
    note = b"Nikon\0\x02\x10\0\0MM\0*\0\0\0\x08" + inner
    exif = tiff.ifd([(MAKERNOTE, UNDEFINED, len(note), note)])
    ifd0 = tiff.ifd([(MAKE, ASCII, 18, text("NIKON CORPORATION")), (EXIF_IFD, LONG, 1, exif)])
    return jpeg(tiff.finish(ifd0))


def png_exif_count_ffffffff():
    """The MakerNote-count file's EXIF in a PNG eXIf chunk."""
    return png([png_chunk(b"eXIf", exif_makernote_count_ffffffff()[12:-2])])


def png_many_chunks(count=200000):
    """LARGE: 200,000 empty chunks before the end; ExifRead walks them looking for eXIf."""
    return png([png_chunk(b"tEXt", b"")] * count)


def webp_exif_count_ffffffff():
    """The MakerNote-count file's EXIF in a WebP EXIF chunk."""
    exif = b"Exif\0\0" + exif_makernote_count_ffffffff()[12:-2]
    vp8x = b"VP8X" + struct.pack("<I", 10) + bytes([8, 0, 0, 0]) + b"\0\0\0" + b"\0\0\0"
    chunk = b"EXIF" + struct.pack("<I", len(exif)) + exif + b"\0" * (len(exif) % 2)
    body = b"WEBP" + vp8x + chunk
    return b"RIFF" + struct.pack("<I", len(body)) + body


def tiff_giant_makernote(size=3 * 1024 * 1024):
    """LARGE: a 3 MiB MakerNote inside the file (ExifRead reads it one byte at a time)."""
    tiff = Tiff("<")
    note = tiff.blob(b"\0" * size)
    exif = tiff.ifd([(MAKERNOTE, UNDEFINED, size, note)])
    return tiff.finish(tiff.ifd([(MAKE, ASCII, 6, text("Canon")), (EXIF_IFD, LONG, 1, exif)]))


def tiff_uncompressed_thumbnail(strips=900, strip_bytes=4096):
    """LARGE: IFD1 an uncompressed 'thumbnail' of 900 strips: ExifRead's copy is quadratic."""
    tiff = Tiff("<")
    pixels = tiff.blob(b"\x80" * (strips * strip_bytes))
    offsets = tiff.blob(b"".join(struct.pack("<I", pixels + i * strip_bytes) for i in range(strips)))
    counts = tiff.blob(struct.pack("<I", strip_bytes) * strips)
    ifd1 = tiff.ifd([(0x0100, SHORT, 1, 64), (0x0101, SHORT, 1, strips), (0x0103, SHORT, 1, 1),
                     (0x0111, LONG, strips, offsets), (0x0117, LONG, strips, counts)])
    return tiff.finish(tiff.ifd([(0x0100, SHORT, 1, 1), (0x0101, SHORT, 1, 1)], next_ifd=ifd1))


# --------------------------------------------------------------------------- image headers

def jpeg_soi_only():
    """A JPEG cut after its first marker byte."""
    return b"\xff\xd8\xff"


def jpeg_marker_length_0():
    """Segment lengths of 0 and 1, which would step back into the header."""
    return b"\xff\xd8\xff\xe0\x00\x00" + b"\xff\xe0\x00\x01" * 8


def jpeg_sof_65535():
    """A frame of 65535 x 65535 pixels (refused by MAX_PIXELS before ImageMagick)."""
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, 65535, 65535, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + sof + b"\xff\xd9"


def jpeg_ff_fill(size=8 * 1024 * 1024):
    """LARGE: SOI then MiB of 0xFF fill bytes (a marker that never comes)."""
    return b"\xff\xd8" + b"\xff" * size


def png_truncated():
    """A PNG cut inside IHDR."""
    return b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR\0\0"


def png_huge_dimensions():
    """IHDR of 2**31-1 x 2**31-1 pixels."""
    return png(width=0x7FFFFFFF, height=0x7FFFFFFF)


def gif_truncated():
    """A GIF cut inside its logical screen descriptor."""
    return b"GIF89a\x10\x00"


def gif_frame_65535():
    """A frame of 65535 x 65535 pixels at offset 65535, 65535 on a 1 x 1 screen."""
    screen = b"GIF89a" + struct.pack("<HHBBB", 1, 1, 0, 0, 0)
    return screen + b"," + struct.pack("<HHHHB", 65535, 65535, 65535, 65535, 0) + b"\x02\x02\x44\x01\x00;"


def gif_many_subblocks(extensions=256, blocks=4000):
    """LARGE: 256 extensions of 4000 one-byte sub-blocks before any image."""
    extension = b"!\xfe" + b"\x01x" * blocks + b"\x00"
    return b"GIF89a" + struct.pack("<HHBBB", 1, 1, 0, 0, 0) + extension * extensions + b";"


def tiff_ifd_past_end():
    """A TIFF whose first IFD lies at 0xFFFFFFF0."""
    return b"II*\0" + struct.pack("<I", 0xFFFFFFF0)


def tiff_entry_count_65535():
    """A TIFF IFD declaring 65535 entries, holding one."""
    return b"MM\0*" + struct.pack(">I", 8) + b"\xff\xff" + struct.pack(">HHII", 256, 3, 1, 0)


def bigtiff_truncated():
    """A BigTIFF header and nothing else."""
    return b"II+\0\x08\0\0\0"


def heic_ftyp_size_0():
    """An 'ftyp' box of size 0 (to the end of the file)."""
    return b"\0\0\0\0ftypheic\0\0\0\0mif1heic"


def heic_ftyp_size_huge():
    """An 'ftyp' box of size 0xFFFFFFFF."""
    return b"\xff\xff\xff\xffftypheic\0\0\0\0" + b"heic" * 8


def heic_ispe_huge():
    """50 'ispe' boxes of 0xFFFFFFFF x 0xFFFFFFFF pixels."""
    ftyp = struct.pack(">I", 24) + b"ftypheic\0\0\0\0mif1heic"
    ispe = struct.pack(">I", 20) + b"ispe" + b"\0\0\0\0" + struct.pack(">II", 0xFFFFFFFF, 0xFFFFFFFF)
    return ftyp + ispe * 50


def webp_truncated():
    """A WebP cut after its 'VP8 ' chunk name."""
    return b"RIFF\x10\0\0\0WEBPVP8 "


def webp_vp8x_max():
    """A VP8X canvas of 2**24 x 2**24 pixels."""
    return b"RIFF" + struct.pack("<I", 22) + b"WEBPVP8X" + struct.pack("<I", 10) + b"\0" * 4 + b"\xff" * 6


def bmp_truncated():
    """A BMP cut inside its info header."""
    return b"BM\0\0\0\0\0\0\0\0\0\0\0\0\x28\0\0\0"


def bmp_int_min_height():
    """A BMP of height -2**31 (top-down, abs() overflows int32)."""
    header = b"BM" + struct.pack("<IHHI", 54, 0, 0, 54)
    return header + struct.pack("<IiiHHIIiiII", 40, 1, -2 ** 31, 1, 24, 0, 0, 0, 0, 0, 0)


def pdf_header_only():
    """'%PDF-1.4' and nothing else."""
    return b"%PDF-1.4\n"


def pdf_mediabox_5000_digits():
    """A /MediaBox of two 5000-digit numbers (float() gives inf)."""
    digits = b"9" * 5000
    return b"%PDF-1.4\n1 0 obj << /Type /Page /MediaBox [0 0 " + digits + b" " + digits + b"] >>\n"


def pdf_mediabox_backtracking():
    """'/MediaBox [' then long runs of digits that never close the array, many times."""
    return b"%PDF-1.4\n" + (b"/MediaBox [ 1 1 1 " + b"1" * 2000 + b"\n") * 2


SMALL = {
    "exif-makernote-count-ffffffff.jpg": exif_makernote_count_ffffffff,
    "exif-ascii-count-ffffffff.jpg": exif_ascii_count_ffffffff,
    "exif-offsets-past-end.jpg": exif_offsets_past_end,
    "exif-ifd-chain-loop.jpg": exif_ifd_chain_loop,
    "exif-pointer-loops.jpg": exif_pointer_loops,
    "exif-many-tags.jpg": exif_many_tags,
    "exif-entry-count-65535.jpg": exif_entry_count_65535,
    "exif-many-ifds.tif": exif_many_ifds,
    "exif-subifds-999.tif": exif_subifds_999,
    "exif-makernote-entries.jpg": exif_makernote_entries,
    "exif-nikon-makernote-relative.jpg": exif_nikon_makernote_relative,
    "png-exif-count-ffffffff.png": png_exif_count_ffffffff,
    "webp-exif-count-ffffffff.webp": webp_exif_count_ffffffff,
    "jpeg-soi-only.jpg": jpeg_soi_only,
    "jpeg-marker-length-0.jpg": jpeg_marker_length_0,
    "jpeg-sof-65535.jpg": jpeg_sof_65535,
    "png-truncated.png": png_truncated,
    "png-huge-dimensions.png": png_huge_dimensions,
    "gif-truncated.gif": gif_truncated,
    "gif-frame-65535.gif": gif_frame_65535,
    "tiff-ifd-past-end.tif": tiff_ifd_past_end,
    "tiff-entry-count-65535.tif": tiff_entry_count_65535,
    "bigtiff-truncated.tif": bigtiff_truncated,
    "heic-ftyp-size-0.heic": heic_ftyp_size_0,
    "heic-ftyp-size-huge.heic": heic_ftyp_size_huge,
    "heic-ispe-huge.heic": heic_ispe_huge,
    "webp-truncated.webp": webp_truncated,
    "webp-vp8x-max.webp": webp_vp8x_max,
    "bmp-truncated.bmp": bmp_truncated,
    "bmp-int-min-height.bmp": bmp_int_min_height,
    "pdf-header-only.pdf": pdf_header_only,
    "pdf-mediabox-5000-digits.pdf": pdf_mediabox_5000_digits,
    "pdf-mediabox-backtracking.pdf": pdf_mediabox_backtracking,
}

LARGE = {
    "png-many-chunks.png": png_many_chunks,
    "tiff-giant-makernote.tif": tiff_giant_makernote,
    "tiff-uncompressed-thumbnail.tif": tiff_uncompressed_thumbnail,
    "jpeg-ff-fill.jpg": jpeg_ff_fill,
    "gif-many-subblocks.gif": gif_many_subblocks,
}


def write_corpus(directory=CRAFTED_DIR):
    """Write every SMALL file into `directory`; return their names."""
    os.makedirs(directory, exist_ok=True)
    for name, build in sorted(SMALL.items()):
        with open(os.path.join(directory, name), "wb") as f:
            f.write(build())
    return sorted(SMALL)


if __name__ == "__main__":
    for written in write_corpus(sys.argv[1] if len(sys.argv) > 1 else CRAFTED_DIR):
        print(written)
