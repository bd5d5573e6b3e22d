"""Tests for webassets.thumbnails: naming, sniffing, argv, single flight, real conversions."""

import io
import os
import shutil
import struct
import subprocess
import threading
import time
import zlib

import pytest

from tests.fakes import (
    FakeConverter, FakeRenderer, fake_thumbnailer, fake_tools, jpeg_header, png_bytes, png_chunk,
    storm,
)
from tests.helpers import CONVERT, needs_convert
from webassets import imageformats, storage, thumbnails
from webassets.thumbnails import BadScale, Busy, NotThumbnailable, ThumbnailError, Thumbnailer

GS = shutil.which("gs")
needs_gs = pytest.mark.skipif(GS is None, reason="Ghostscript (gs) is not installed")


# ------------------------------------------------------------------------- inputs built in Python

def png_bomb(width=30000, height=30000):
    """Return a PNG header claiming width x height over a few bytes of pixel data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header)
            + png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + png_chunk(b"IEND", b""))


def pdf_bytes(pages, stream=None):
    """Return a PDF with one blue rectangle per page; pages are (width, height) in points.

    `stream`, if given, is every page's content instead of the rectangle.
    """
    objects = {1: b"<< /Type /Catalog /Pages 2 0 R >>"}
    kids = []
    for index, (width, height) in enumerate(pages):
        page, content = 3 + 2 * index, 4 + 2 * index
        if stream is None:
            stream = b"0 0 1 rg 10 10 %d %d re f" % (width - 20, height - 20)
        objects[page] = (b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 %d %d] /Contents %d 0 R >>"
                         % (width, height, content))
        objects[content] = b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream)
        kids.append(b"%d 0 R" % page)
    objects[2] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(kids), len(pages))
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number in sorted(objects):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, objects[number])
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\n" % (len(objects) + 1)
    out += b"startxref\n%d\n%%%%EOF\n" % xref
    return bytes(out)


def with_orientation(jpeg, orientation):
    """Return `jpeg` with an EXIF APP1 segment setting Orientation, right after SOI."""
    entry = struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0)  # SHORT, left-justified
    tiff = b"MM\0*" + struct.pack(">IH", 8, 1) + entry + struct.pack(">I", 0)
    payload = b"Exif\0\0" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


HOSTILE = {
    "svg": b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
           b'<image href="file:///etc/passwd"/></svg>',
    "mvg": b"push graphic-context\nviewbox 0 0 640 480\nimage over 0,0 0,0 'file:///etc/passwd'\n"
           b"pop graphic-context\n",
    "ps": b"%!PS-Adobe-3.0\n(/etc/passwd) (r) file\nshowpage\n",
    "eps-binary": b"\xc5\xd0\xd3\xc6" + b"\0" * 28,
    "pdf-after-junk": b"%!PS\n%PDF-1.4\n",
    "text": b"just text\n",
    "docx": b"PK\x03\x04" + b"\0" * 26,
    "html": b"<html><body>hi</body></html>",
}


# ---------------------------------------------------------------------------- naming and parsing

@pytest.mark.parametrize("value, expected", [("123", 123), ("1", 1), ("0600", 600), ("5000", 5000)])
def test_parse_scale_exact(value, expected):
    assert thumbnails.parse_scale(value, 5000, None) == expected


@pytest.mark.parametrize("value", [None, "", "0", "-5", "+5", " 5", "5 ", "abc", "1.5", "0x10",
                                   "\u0661\u0662", "5001", "9" * 5000])
def test_parse_scale_rejects(value):
    with pytest.raises(BadScale):
        thumbnails.parse_scale(value, 5000, None)


@pytest.mark.parametrize("value, expected", [("1", 64), ("64", 64), ("100", 123), ("123", 123),
                                             ("124", 128), ("601", 800), ("1600", 1600),
                                             ("1601", 1600), ("9" * 5000, 1600)])
def test_parse_scale_snaps_up_the_ladder(value, expected):
    assert thumbnails.parse_scale(value, 10, (800, 64, 123, 128, 200, 600, 1600)) == expected


def test_parse_scale_ladder_still_rejects_junk():
    for value in ("0", "-1", "x", None):
        with pytest.raises(BadScale):
            thumbnails.parse_scale(value, 5000, (123, 200))


@pytest.mark.parametrize("name, scale, expected", [
    ("a6daad6c-5091-4461-86ee-eeba9434ef2b.jpg", 123,
     "a6daad6c-5091-4461-86ee-eeba9434ef2b_123.jpg"),
    ("sp6123.att.jpg", 200, "sp6123.att_200.jpg"),
    ("x.JPG", 200, "x_200.JPG"),
    ("x.PDF", 200, "x_200.png"),
    ("x.tif", 5, "x_5.png"),
    ("x.TIFF", 5, "x_5.png"),
    ("x.heic", 5, "x_5.png"),
    ("x.heif", 5, "x_5.png"),
    ("x.gif", 5, "x_5.gif"),
    ("x.webp", 5, "x_5.webp"),
    ("uuid", 5, "uuid_5"),
])
def test_thumbnail_name(name, scale, expected):
    assert thumbnails.thumbnail_name(name, scale) == expected


@pytest.mark.parametrize("name, candidate, expected", [
    ("sp61.att.jpg", "sp61.att_200.jpg", True),
    ("sp61.att.jpg", "sp61.att_200.png", True),
    ("sp61.att.jpg", "sp612.att_200.jpg", False),
    ("sp61.att.jpg", "sp612.att.jpg", False),
    ("sp61.att.jpg", "sp61.att.jpg", False),
    ("sp61.att.jpg", "sp61.att_.jpg", False),
    ("sp61.att.jpg", "sp61.att_12a.jpg", False),
    ("sp61.att.jpg", "sp61.att_200.jpg.bak", False),
    ("sp61.att.jpg", "sp61.att_200.gif", False),
    ("x.pdf", "x_123.png", True),
    ("x.pdf", "x_123.pdf", True),
    ("uuid", "uuid_123", True),
    ("uuid", "uuid_123.png", True),
    ("uuid", "uuid2_123", False),
])
def test_is_thumbnail_of(name, candidate, expected):
    assert thumbnails.is_thumbnail_of(name, candidate) is expected


@pytest.mark.parametrize("candidate, expected", [
    ("a_200.jpg", ("a", 200, ".jpg")), ("scan_2024_64", ("scan_2024", 64, "")),
    ("v1_200.0_final", ("v1", 200, ".0_final")), ("a_1234567890.png", ("a", 1234567890, ".png")),
    ("a_.jpg", None), ("a_12a.jpg", None), ("_200.jpg", None), ("a200.jpg", None),
])
def test_parse_thumbnail_name(candidate, expected):
    assert thumbnails.parse_thumbnail_name(candidate) == expected


def test_output_format_follows_the_name():
    names = ("a_1.jpg", "a_1.JPEG", "a_1.png", "a_1.gif", "a_1.webp", "a_1.bmp", "a_1", "a_1.att")
    assert [thumbnails.output_format(name) for name in names] == \
        ["jpeg", "jpeg", "png", "gif", "webp", "bmp", "png", "png"]


# ---------------------------------------------------------------------------- sniffing and headers

def heif_head(major, *compatible):
    brands = major + b"\0\0\0\0" + b"".join(compatible)
    return struct.pack(">I", 8 + len(brands)) + b"ftyp" + brands


@pytest.mark.parametrize("head, expected", [
    (jpeg_header(10, 10), "jpeg"),
    (png_bytes(1, 1), "png"),
    (b"GIF89a\x01\0\x01\0\0\0\0", "gif"),
    (b"GIF87a\x01\0\x01\0\0\0\0", "gif"),
    (b"II*\0\x08\0\0\0", "tiff"),
    (b"MM\0*\0\0\0\x08", "tiff"),
    (b"%PDF-1.7\n", "pdf"),
    (b"RIFF\0\0\0\0WEBPVP8 ", "webp"),
    (b"BM" + b"\0" * 12 + struct.pack("<I", 40), "bmp"),
    (heif_head(b"heic", b"mif1", b"heic"), "heic"),
    (heif_head(b"mif1", b"heic"), "heic"),
    (heif_head(b"mif1", b"miaf"), "heif"),
    (heif_head(b"avif", b"mif1", b"miaf"), None),
    (heif_head(b"isom", b"mp41"), None),
    (b"BM not a bitmap header", None),
] + [(data, None) for data in HOSTILE.values()])
def test_sniff_format(head, expected):
    assert imageformats.sniff_format(head) == expected


def gif_with_frame(screen, frame):
    """Return a GIF header: a logical screen, a comment extension, one image descriptor."""
    return (b"GIF89a" + struct.pack("<HHBBB", screen[0], screen[1], 0, 0, 0)
            + b"!\xfe\x03abc\x00" + b"," + struct.pack("<HHHHB", 0, 0, frame[0], frame[1], 0))


def tiff_header(width, height, order=">"):
    magic = b"MM\0*" if order == ">" else b"II*\0"
    entries = [struct.pack(order + "HHIHH", 256, 3, 1, width, 0),  # SHORT
               struct.pack(order + "HHII", 257, 4, 1, height)]  # LONG
    return magic + struct.pack(order + "IH", 8, len(entries)) + b"".join(entries) + b"\0\0\0\0"


@pytest.mark.parametrize("fmt, data, expected", [
    ("png", png_bomb(30000, 20000), (30000, 20000)),
    ("jpeg", jpeg_header(4000, 3000), (4000, 3000)),
    ("jpeg", b"\xff\xd8\xff\xe0\x00\x04ab" + jpeg_header(640, 480)[2:], (640, 480)),
    ("gif", gif_with_frame((10, 10), (60000, 50000)), (60000, 50000)),
    ("bmp", b"BM" + b"\0" * 12 + struct.pack("<Iii", 40, 7000, -5000), (7000, 5000)),
    ("bmp", b"BM" + b"\0" * 12 + struct.pack("<IHH", 12, 30, 20), (30, 20)),
    ("webp", b"RIFF\0\0\0\0WEBPVP8X" + b"\0" * 8 + b"\xe7\x03\0" + b"\xf3\x01\0", (1000, 500)),
    ("webp", b"RIFF\0\0\0\0WEBPVP8L\0\0\0\0\x2f" + struct.pack("<I", 99 | (49 << 14)), (100, 50)),
    ("webp", b"RIFF\0\0\0\0WEBPVP8 \0\0\0\0\0\0\0\x9d\x01\x2a" + struct.pack("<HH", 320, 240),
     (320, 240)),
    ("tiff", tiff_header(30000, 40000), (30000, 40000)),
    ("tiff", tiff_header(300, 200, "<"), (300, 200)),
    ("heic", heif_head(b"heic") + b"\0\0\0\x14ispe\0\0\0\0" + struct.pack(">II", 512, 512)
     + b"\0\0\0\x14ispe\0\0\0\0" + struct.pack(">II", 4032, 3024), (4032, 3024)),
    ("pdf", b"%PDF-1.4\n", None),
    ("jpeg", b"\xff\xd8\xff", None),
    ("png", b"\x89PNG\r\n\x1a\n", None),
    ("tiff", b"MM\0*\xff\xff\xff\xff", None),
])
def test_read_dimensions(fmt, data, expected):
    assert imageformats.read_dimensions(io.BytesIO(data), fmt) == expected


def test_read_pdf_page_size(tmp_path):
    path = tmp_path / "x.pdf"
    path.write_bytes(pdf_bytes([(300, 200), (100, 400)]))
    assert imageformats.read_pdf_page_size(str(path)) == (300, 200)
    path.write_bytes(b"%PDF-1.5\n(compressed object streams only)")
    assert imageformats.read_pdf_page_size(str(path)) == (612, 792)


# ---------------------------------------------------------------------------- argv builders

def test_convert_args_are_explicit_and_bounded():
    argv = thumbnails.convert_args("/usr/bin/convert", "/s/a b.jpg", "jpeg", "/t/out", "png", 123,
                                   size=(6000, 4000))
    assert argv[0] == "/usr/bin/convert"
    assert "jpeg:/s/a b.jpg[0]" in argv and argv[-1] == "png:/t/out"
    assert argv[argv.index("-resize") + 1] == "123x123>"
    assert argv[argv.index("-define") + 1] == "jpeg:size=246x164"
    assert argv.index("-auto-orient") < argv.index("-strip")
    assert argv[argv.index("-colorspace") + 1] == "sRGB" and argv[argv.index("-depth") + 1] == "8"
    limits = {argv[i + 1] for i, arg in enumerate(argv) if arg == "-limit"}
    assert limits >= {"memory", "map", "disk", "area", "width", "height"}
    last_limit = max(i for i, arg in enumerate(argv) if arg == "-limit")
    assert last_limit < argv.index("jpeg:/s/a b.jpg[0]")  # limits apply while reading


def test_large_sources_are_box_averaged_first_to_twice_the_thumbnail():
    argv = thumbnails.convert_args("c", "/s/x", "tiff", "/t/o", "png", 50, size=(300, 200))
    # Exactly 2 x the 50x33 that one -resize 50x50> gives, so the sizes agree to the pixel.
    assert argv[argv.index("-scale") + 1] == "100x66!"
    assert (argv.index("tiff:/s/x[0]") < argv.index("-scale") < argv.index("-auto-orient")
            < argv.index("-colorspace") < argv.index("-resize") < argv.index("-strip"))
    assert "-sample" not in argv and "-thumbnail" not in argv  # they drop pixels: aliasing
    unknown = thumbnails.convert_args("c", "/s/x", "tiff", "/t/o", "png", 50)
    assert unknown[unknown.index("-scale") + 1] == "100x100>"  # never enlarges
    # A GIF's first frame, a WebP canvas, a rotated HEIC may not have their header's shape.
    for fmt in ("gif", "webp", "heic"):
        argv = thumbnails.convert_args("c", "/s/x", fmt, "/t/o", "png", 50, size=(300, 200))
        assert argv[argv.index("-scale") + 1] == "100x100>"


@pytest.mark.parametrize("fmt, size, scale", [
    ("png", (200, 150), 50),  # at most 4x the thumbnail: one pass is cheap enough
    ("jpeg", (6000, 4000), 123),  # decoded small already (jpeg:size)
    ("jpeg", (200, 100), 123),  # nothing to shrink
])
def test_small_or_hinted_sources_skip_the_box_pass(fmt, size, scale):
    assert "-scale" not in thumbnails.convert_args("c", "/s/x", fmt, "/t/o", "png", scale,
                                                   size=size)


def test_output_specific_options():
    gif = thumbnails.convert_args("c", "/s/x", "gif", "/t/o", "gif", 50, size=(80, 80))
    assert gif[gif.index("-colors") + 1] == "256" and "+dither" in gif
    jpeg = thumbnails.convert_args("c", "/s/x", "jpeg", "/t/o", "jpeg", 50, size=(80, 80))
    assert "-alpha" not in jpeg and jpeg[jpeg.index("-quality") + 1] == "85"  # no alpha to drop


def test_convert_args_per_format():
    tiff = thumbnails.convert_args("c", "/s/x", "tiff", "/t/o", "png", 50)
    assert "tiff:/s/x[0]" in tiff and "-define" not in tiff and "-alpha" not in tiff
    heif = thumbnails.convert_args("c", "/s/x", "heif", "/t/o", "jpeg", 50)
    assert "heic:/s/x[0]" in heif and heif[-1] == "jpeg:/t/o"
    assert heif[heif.index("-alpha") + 1] == "remove"  # JPEG has no alpha: flatten on white


@pytest.mark.parametrize("size, scale, expected", [
    ((6000, 4000), 200, (400, 267)),
    ((3000, 6000), 123, (123, 246)),
    ((401, 100), 200, (400, 100)),
    ((400, 300), 200, None),  # nothing to gain, and a bigger hint would make libjpeg enlarge
    ((60, 30), 200, None),
    (None, 200, None),
])
def test_jpeg_size_hint_never_exceeds_the_image(size, scale, expected):
    assert thumbnails.jpeg_size_hint(size, scale) == expected


def test_ghostscript_args():
    argv = thumbnails.ghostscript_args("/usr/bin/gs", "/s/x.pdf", "/t/page.png", 29.5)
    for option in ("-dSAFER", "-dBATCH", "-dNOPAUSE", "-dFirstPage=1", "-dLastPage=1",
                   "-sDEVICE=png16m", "-r29.5", "-dGraphicsAlphaBits=4", "-dDOINTERPOLATE"):
        assert option in argv
    assert argv[-2:] == ["-f", "/s/x.pdf"] and argv[argv.index("-o") + 1] == "/t/page.png"
    supersampled = thumbnails.ghostscript_args("gs", "/s/x.pdf", "/t/p.png", 18.181, 4)
    assert "-r72.724" in supersampled and "-dDownScaleFactor=4" in supersampled
    assert "-dGraphicsAlphaBits=4" not in supersampled  # the slow part on vector-heavy pages


def test_pdf_resolution():
    assert thumbnails.pdf_resolution((612, 792), 792) == 72
    assert thumbnails.pdf_resolution((300, 200), 123) == pytest.approx(29.52)
    assert thumbnails.pdf_resolution((1, 1), 1600) == thumbnails.PDF_MAX_DPI
    # Rounded down: a Letter page at 200 must not come out 201 pixels high.
    assert 792 * thumbnails.pdf_resolution((612, 792), 200) / 72 <= 200


@pytest.mark.parametrize("scale, factor", [(64, 4), (200, 4), (600, 4), (1000, 2), (1600, 1)])
def test_pdf_downscale_bounds_the_render(scale, factor):
    assert thumbnails.pdf_downscale(scale) == factor


def test_run_command_kills_the_process_group_on_timeout(tmp_path):
    marker = tmp_path / "survivor"
    script = "(sleep 0.3; touch '%s') & sleep 10" % marker
    started = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        thumbnails.run_command(["/bin/sh", "-c", script], timeout=0.1)
    assert time.monotonic() - started < 3
    time.sleep(0.5)  # the background child would have touched the marker by now
    assert not marker.exists()


# ------------------------------------------------------------------------- the scheduler

@pytest.fixture
def source(tmp_path):
    path = tmp_path / "originals" / "a.png"
    path.parent.mkdir()
    path.write_bytes(png_bytes(20, 20))
    return str(path)


def thumbs(tmp_path, name="a_10.png"):
    return str(tmp_path / "thumbnails" / name)


def test_single_flight(tmp_path, source):
    gate = threading.Event()
    renderer = FakeRenderer(gate=gate)
    thumbnailer = fake_thumbnailer(renderer)
    results, errors = storm(lambda: thumbnailer.thumbnail(source, thumbs(tmp_path), 10),
                            renderer, gate)
    assert errors == [] and results == ["image/png"] * 32
    assert len(renderer.calls) == 1


def test_cached_thumbnail_is_not_rendered_again(tmp_path, source):
    renderer = FakeRenderer()
    thumbnailer = fake_thumbnailer(renderer)
    assert thumbnailer.thumbnail(source, thumbs(tmp_path), 10) == "image/png"
    assert thumbnailer.thumbnail(source, thumbs(tmp_path), 10) == "image/png"
    assert len(renderer.calls) == 1
    # A source newer than its thumbnail (re-uploaded) is rendered again.
    old = os.stat(source).st_mtime - 100
    os.utime(thumbs(tmp_path), (old, old))
    thumbnailer.thumbnail(source, thumbs(tmp_path), 10)
    assert len(renderer.calls) == 2


def test_busy_when_the_queue_is_full(tmp_path, source):
    gate = threading.Event()
    renderer = FakeRenderer(gate=gate)
    thumbnailer = fake_thumbnailer(renderer, max_workers=1, max_queue=1)

    def request(scale):
        target = thumbs(tmp_path, "a_%d.png" % scale)
        return threading.Thread(target=thumbnailer.thumbnail, args=(source, target, scale))

    running, queued = request(1), request(2)
    running.start()
    assert renderer.first.wait(10)
    queued.start()
    deadline = time.monotonic() + 10
    while thumbnailer.pending < 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    with pytest.raises(Busy) as caught:
        thumbnailer.thumbnail(source, thumbs(tmp_path, "a_3.png"), 3)
    assert caught.value.retry_after >= 1
    # A request for a thumbnail already in flight waits for it instead.
    follower = request(1)
    follower.start()
    gate.set()
    for thread in (running, queued, follower):
        thread.join(10)
    assert thumbnailer.thumbnail(source, thumbs(tmp_path, "a_3.png"), 3) == "image/png"
    assert len(renderer.calls) == 3


def test_failures_are_remembered(tmp_path, source):
    now = [1000.0]
    renderer = FakeRenderer(error=ThumbnailError("convert could not convert this file"))
    thumbnailer = fake_thumbnailer(renderer, failure_ttl=60, clock=lambda: now[0])
    for _ in range(3):
        with pytest.raises(ThumbnailError, match="could not convert"):
            thumbnailer.thumbnail(source, thumbs(tmp_path), 10)
    assert len(renderer.calls) == 1
    now[0] += 61
    with pytest.raises(ThumbnailError):
        thumbnailer.thumbnail(source, thumbs(tmp_path), 10)
    assert len(renderer.calls) == 2
    # A new upload (new mtime) is tried at once.
    os.utime(source, (now[0], os.stat(source).st_mtime + 5))
    renderer.error = None
    assert thumbnailer.thumbnail(source, thumbs(tmp_path), 10) == "image/png"


def test_missing_source(tmp_path):
    with pytest.raises(FileNotFoundError):
        fake_thumbnailer().thumbnail(str(tmp_path / "nope.jpg"), thumbs(tmp_path), 10)


@pytest.mark.parametrize("kind, name", [("svg", "x.jpg"), ("mvg", "x.jpg"), ("ps", "x.pdf"),
                                        ("eps-binary", "x.pdf"), ("pdf-after-junk", "x.pdf"),
                                        ("text", "x.png"), ("docx", "x.docx"), ("html", "x.gif")])
def test_hostile_or_unknown_content_is_not_thumbnailable(tmp_path, kind, name):
    path = tmp_path / name
    path.write_bytes(HOSTILE[kind])
    renderer = FakeRenderer()
    with pytest.raises(NotThumbnailable):
        fake_thumbnailer(renderer).thumbnail(str(path), thumbs(tmp_path, "x_10.png"), 10)
    assert renderer.calls == []


def test_decompression_bomb_fails_fast(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_bomb(30000, 30000))
    renderer = FakeRenderer()
    started = time.monotonic()
    with pytest.raises(ThumbnailError, match="too large") as caught:
        fake_thumbnailer(renderer).thumbnail(str(path), thumbs(tmp_path, "bomb_10.png"), 10)
    assert not isinstance(caught.value, NotThumbnailable)
    assert time.monotonic() - started < 1 and renderer.calls == []


def test_can_thumbnail_and_missing_coders(tmp_path, source):
    with pytest.raises(NotThumbnailable, match="disabled"):
        jpeg_only = fake_thumbnailer(can_thumbnail={"image/jpeg"})
        jpeg_only.thumbnail(source, thumbs(tmp_path), 10)
    no_heic = fake_thumbnailer(formats=("JPEG", "PNG"))
    assert no_heic.formats()["heic"] is False and no_heic.formats()["png"] is True
    path = tmp_path / "x.heic"
    path.write_bytes(heif_head(b"heic", b"mif1"))
    with pytest.raises(NotThumbnailable, match="HEIC"):
        no_heic.thumbnail(str(path), thumbs(tmp_path, "x_10.png"), 10)
    nothing = fake_tools()
    nothing.convert = nothing.gs = None  # as if neither is installed (not probed yet)
    assert not any(nothing.formats().values())


def test_one_toolchain_is_probed_once():
    tools = fake_tools()
    probes = []
    run = tools.run
    tools.run = lambda argv, timeout: probes.append(argv) or run(argv, timeout)
    engines = [Thumbnailer(tools=tools) for _ in range(3)]
    assert all(engine.formats()["pdf"] for engine in engines)
    assert len(probes) == 2  # convert -list format, gs --version


# ------------------------------------------------------------------------- the renderer, fake tools

def renderer_job(source, target, scale=10):
    """Return the Job the scheduler would hand the renderer for `source`."""
    fmt, size = fake_thumbnailer().inspect(source)
    return thumbnails.Job(os.path.abspath(source), fmt, size, os.stat(source).st_mtime_ns,
                          os.path.abspath(target), scale)


def test_renderer_leaves_no_partial_file_and_no_work_directory(tmp_path, source):
    converter = FakeConverter(returncode=1, partial=True)
    renderer = thumbnails.Renderer(thumbnails.Toolchain("/fake/convert", "/fake/gs", converter))
    with pytest.raises(ThumbnailError, match="could not convert"):
        renderer.render(renderer_job(source, thumbs(tmp_path)))
    assert len(converter.calls) == 1
    assert os.listdir(os.path.dirname(thumbs(tmp_path))) == []


def test_renderer_dates_a_thumbnail_no_earlier_than_its_source(tmp_path, source):
    converter = FakeConverter()
    thumbnailer = Thumbnailer(tools=thumbnails.Toolchain("/fake/convert", "/fake/gs", converter))
    # A source dated in the future is rendered once, not on every request.
    future = time.time() + 3600
    os.utime(source, (future, future))
    thumbnailer.thumbnail(source, thumbs(tmp_path), 10)
    thumbnailer.thumbnail(source, thumbs(tmp_path), 10)
    assert len(converter.calls) == 1


def test_timeouts_and_missing_tools_are_thumbnail_errors(tmp_path, source):
    def timeout(argv, timeout):
        raise subprocess.TimeoutExpired(argv, timeout)
    renderer = thumbnails.Renderer(thumbnails.Toolchain("/fake/convert", "/fake/gs", timeout),
                                   timeout=5)
    with pytest.raises(ThumbnailError, match="timed out"):
        renderer.render(renderer_job(source, thumbs(tmp_path)))
    assert os.listdir(os.path.dirname(thumbs(tmp_path))) == []


def test_a_store_render_uses_one_private_directory_and_one_rename(tmp_path, monkeypatch):
    store = storage.FileStore(str(tmp_path))
    original = store.local_path(None, "a.png")
    os.makedirs(os.path.dirname(original))
    with open(original, "wb") as f:
        f.write(png_bytes(40, 20))
    converter = FakeConverter()
    engine = Thumbnailer(tools=thumbnails.Toolchain("/fake/convert", "/fake/gs", converter))
    renames = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda *args: renames.append(args) or real_replace(*args))
    assert engine.thumbnail_of(store, None, "a.png", 10) == ("a_10.png", "image/png")
    written = converter.calls[0][-1].partition(":")[2]
    # The converter writes straight into the scratch directory beside the thumbnail.
    thumbnail = store.local_path(None, "a_10.png", storage.THUMBNAIL)
    assert os.path.dirname(os.path.dirname(written)) == os.path.dirname(thumbnail)
    assert renames == [(written, thumbnail)]
    assert os.listdir(os.path.dirname(thumbnail)) == ["a_10.png"]


def test_pdf_goes_to_ghostscript(tmp_path):
    path = tmp_path / "x.pdf"
    path.write_bytes(pdf_bytes([(300, 200)]))
    converter = FakeConverter()
    thumbnailer = Thumbnailer(tools=thumbnails.Toolchain("/fake/convert", "/fake/gs", converter))
    assert thumbnailer.thumbnail(str(path), thumbs(tmp_path, "x_10.png"), 10) == "image/png"
    assert [os.path.basename(argv[0]) for argv in converter.calls] == ["gs"]


# ---------------------------------------------------------------------------- real ImageMagick / gs

def magick(*args):
    subprocess.run([CONVERT] + [str(arg) for arg in args], check=True, stdout=subprocess.PIPE,
                   stderr=subprocess.PIPE, timeout=30)


def identify(path):
    """Return (format, width, height, depth, colorspace, opaque) of an image, via ImageMagick."""
    argv = [CONVERT, str(path), "-format", "%m %w %h %z %[colorspace] %[opaque]", "info:"]
    output = subprocess.run(argv, check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            timeout=30)
    kind, width, height, depth, colorspace, opaque = output.stdout.decode().split()
    return kind, int(width), int(height), int(depth), colorspace, opaque.lower() == "true"


@pytest.fixture(scope="module")
def real():
    if CONVERT is None:
        pytest.skip("ImageMagick is not installed")
    return Thumbnailer()


def render(real, tmp_path, name, data=None, scale=123, make=None):
    """Write (or `make`) an original called `name`, thumbnail it, return (content type, info)."""
    source = tmp_path / "originals" / name
    source.parent.mkdir(exist_ok=True)
    if make is not None:
        make(source)
    else:
        source.write_bytes(data)
    target = tmp_path / "thumbnails" / thumbnails.thumbnail_name(name, scale)
    content_type = real.thumbnail(str(source), str(target), scale)
    leftovers = [entry for entry in os.listdir(str(target.parent)) if entry.startswith(".")]
    assert leftovers == []
    return content_type, identify(target)


@pytest.mark.parametrize("name, coder, content_type, kind", [
    ("a.jpg", "jpeg", "image/jpeg", "JPEG"),
    ("a.png", "png", "image/png", "PNG"),
    ("a.gif", "gif", "image/gif", "GIF"),
    ("a.tif", "tiff", "image/png", "PNG"),
    ("a.webp", "webp", "image/webp", "WEBP"),
    ("a.bmp", "bmp", "image/bmp", "BMP"),
    ("a.heic", "heic", "image/png", "PNG"),
])
def test_every_format(real, tmp_path, name, coder, content_type, kind):
    fmt = "heic" if coder == "heic" else coder
    if not real.formats()[fmt]:
        pytest.skip("ImageMagick here has no %s coder (Thumbnailer.formats() reports it)"
                    % coder.upper())

    def make(path):
        try:
            magick("-size", "300x200", "gradient:red-blue", "%s:%s" % (coder, path))
        except subprocess.CalledProcessError as ex:
            pytest.skip("cannot write a %s test image here: %s" % (coder.upper(), ex.stderr[-200:]))
    served, info = render(real, tmp_path, name, make=make)
    assert served == content_type and info[:3] == (kind, 123, 82)


@needs_gs
def test_two_page_pdf_gives_page_one_as_png(real, tmp_path):
    content_type, info = render(real, tmp_path, "doc.PDF", pdf_bytes([(300, 200), (100, 400)]))
    assert content_type == "image/png" and info[:3] == ("PNG", 123, 82)
    corner = subprocess.run([CONVERT, str(tmp_path / "thumbnails" / "doc_123.png"), "-format",
                             "%[fx:int(255*p{0,0}.r)],%[fx:int(255*p{0,0}.b)]", "info:"],
                            stdout=subprocess.PIPE, check=True).stdout
    assert corner == b"255,255"  # the margin is white, not transparent or black


@needs_gs
def test_pdf_named_jpg_becomes_jpeg(real, tmp_path):
    info = render(real, tmp_path, "doc.jpg", pdf_bytes([(100, 400)]), scale=200)[1]
    assert info[:3] == ("JPEG", 50, 200)


@needs_convert
def test_exif_orientation_is_applied(real, tmp_path):
    def make(path):
        magick("-size", "60x30", "gradient:red-blue", "jpeg:%s" % path)
        path.write_bytes(with_orientation(path.read_bytes(), 6))
    assert render(real, tmp_path, "rotated.jpg", make=make, scale=200)[1][:3] == ("JPEG", 30, 60)


@needs_convert
def test_cmyk_jpeg_becomes_srgb(real, tmp_path):
    info = render(real, tmp_path, "cmyk.jpg", scale=50, make=lambda path: magick(
        "-size", "300x200", "xc:red", "-colorspace", "CMYK", "jpeg:%s" % path))[1]
    assert info[0] == "JPEG" and info[4] == "sRGB"
    red, green, blue = pixel(tmp_path / "thumbnails" / "cmyk_50.jpg", 25, 16)
    assert red > 230 and green < 30 and blue < 30  # not inverted, not muddy


@needs_convert
def test_sixteen_bit_tiff_becomes_eight_bit_png(real, tmp_path):
    info = render(real, tmp_path, "deep.tiff", scale=50, make=lambda path: magick(
        "-size", "300x200", "gradient:red-blue", "-depth", "16", "tiff:%s" % path))[1]
    assert info[:4] == ("PNG", 50, 33, 8)


def gray_stats(path):
    """Return the (mean, standard deviation) of an image's grey levels, from 0 to 1."""
    argv = [CONVERT, "%s[0]" % path, "-colorspace", "Gray", "-format",
            "%[fx:mean] %[fx:standard_deviation]", "info:"]
    output = subprocess.run(argv, check=True, stdout=subprocess.PIPE, timeout=30).stdout
    mean, deviation = output.decode().split()
    return float(mean), float(deviation)


def pixel(path, x, y):
    """Return the (red, green, blue) of one pixel, from 0 to 255."""
    argv = [CONVERT, "%s[0]" % path, "-format", "%%[fx:int(255*p{%d,%d}.r)] "
            "%%[fx:int(255*p{%d,%d}.g)] %%[fx:int(255*p{%d,%d}.b)]" % ((x, y) * 3), "info:"]
    output = subprocess.run(argv, check=True, stdout=subprocess.PIPE, timeout=30).stdout
    return tuple(int(value) for value in output.split())


@needs_convert
def test_large_sixteen_bit_tiff_becomes_eight_bit_srgb(real, tmp_path):
    info = render(real, tmp_path, "scan.tif", scale=100, make=lambda path: magick(
        "-size", "1200x800", "gradient:red-blue", "-depth", "16", "tiff:%s" % path))[1]
    assert info[:5] == ("PNG", 100, 67, 8, "sRGB")  # as one -resize 100x100> would size it


@needs_convert
def test_cmyk_tiff_becomes_srgb_with_its_colours(real, tmp_path):
    info = render(real, tmp_path, "cmyk.tif", scale=100, make=lambda path: magick(
        "-size", "1000x500", "xc:red", "-colorspace", "CMYK", "tiff:%s" % path))[1]
    assert info[:5] == ("PNG", 100, 50, 8, "sRGB")
    red, green, blue = pixel(tmp_path / "thumbnails" / "cmyk_100.png", 50, 25)
    assert red > 240 and green < 15 and blue < 15


@needs_convert
def test_orientation_is_applied_after_the_box_pass(real, tmp_path):
    info = render(real, tmp_path, "turned.tif", scale=100, make=lambda path: magick(
        "-size", "1000x500", "gradient:red-blue", "-orient", "RightTop", "tiff:%s" % path))[1]
    assert info[:3] == ("PNG", 50, 100)


@needs_convert
def test_exif_orientation_is_applied_to_a_hinted_jpeg(real, tmp_path):
    def make(path):
        magick("-size", "1000x500", "gradient:red-blue", "jpeg:%s" % path)
        path.write_bytes(with_orientation(path.read_bytes(), 6))
    assert render(real, tmp_path, "turned.jpg", make=make, scale=100)[1][:3] == ("JPEG", 50, 100)


@needs_convert
def test_one_pixel_checks_become_grey_not_moire(real, tmp_path):
    # A pre-shrink that samples (-sample, -thumbnail) would keep every other pixel: black.
    render(real, tmp_path, "checks.png", scale=100, make=lambda path: magick(
        "-size", "1600x800", "pattern:gray50", "png:%s" % path))
    mean, deviation = gray_stats(tmp_path / "thumbnails" / "checks_100.png")
    assert 0.4 < mean < 0.6 and deviation < 0.05


@needs_convert
def test_gif_thumbnail_keeps_transparency(real, tmp_path):
    info = render(real, tmp_path, "half.gif", scale=50, make=lambda path: magick(
        "-size", "400x200", "xc:none", "-fill", "red", "-draw", "rectangle 0,0 199,199",
        "gif:%s" % path))[1]
    assert info[:3] == ("GIF", 50, 25) and info[5] is False


@needs_convert
def test_gif_frame_smaller_than_its_screen_keeps_its_shape(real, tmp_path):
    # The header says 1000x1000 (the screen); ImageMagick decodes the 600x200 frame. Its box
    # pass cannot be sized to the pixel from the header, so 33.3 may round either way.
    info = render(real, tmp_path, "framed.gif", scale=100, make=lambda path: magick(
        "-size", "600x200", "xc:red", "-repage", "1000x1000+0+0", "gif:%s" % path))[1]
    assert info[:2] == ("GIF", 100) and info[2] in (33, 34)


@needs_gs
def test_scanned_pdf_page_is_filtered_not_point_sampled(real, tmp_path):
    # The page is one image of 1-pixel stripes, 4x finer than even the supersampled render.
    stripes = bytes([0, 255] * 1200)
    page = b"q 600 0 0 600 0 0 cm BI /W 2400 /H 1 /CS /G /BPC 8 ID " + stripes + b" EI Q"
    content_type, info = render(real, tmp_path, "scan.pdf", pdf_bytes([(600, 600)], page),
                                scale=100)
    assert content_type == "image/png" and info[:5] == ("PNG", 100, 100, 8, "sRGB")
    mean, deviation = gray_stats(tmp_path / "thumbnails" / "scan_100.png")
    assert 0.4 < mean < 0.6 and deviation < 0.05


@needs_convert
def test_multi_page_tiff_gives_page_one(real, tmp_path):
    info = render(real, tmp_path, "pages.tif", scale=123, make=lambda path: magick(
        "-size", "300x200", "xc:red", "-size", "40x40", "xc:blue", "-size", "30x90", "xc:green",
        "tiff:%s" % path))[1]
    assert info[:3] == ("PNG", 123, 82)


@needs_convert
def test_transparent_png_keeps_alpha(real, tmp_path):
    data = png_bytes(80, 40, lambda x, y: (0, 128, 0, 0 if x < 40 else 255))
    info = render(real, tmp_path, "clear.png", data, scale=20)[1]
    assert info[:3] == ("PNG", 20, 10) and info[5] is False


@needs_convert
def test_never_enlarged(real, tmp_path):
    info = render(real, tmp_path, "small.jpg", scale=600,
                  make=lambda path: magick("-size", "40x30", "xc:red", "jpeg:%s" % path))[1]
    assert info[:3] == ("JPEG", 40, 30)


@needs_convert
def test_extension_lies_are_decoded_by_content(real, tmp_path):
    info = render(real, tmp_path, "png-inside.jpg", png_bytes(40, 20), scale=10)[1]
    assert info[:3] == ("JPEG", 10, 5)

    def make(path):
        magick("-size", "40x20", "xc:red", "jpeg:%s" % path)
    assert render(real, tmp_path, "jpeg-inside.png", make=make, scale=10)[1][:3] == ("PNG", 10, 5)


@needs_convert
def test_truncated_jpeg_is_an_error_or_a_whole_image(real, tmp_path):
    whole = tmp_path / "whole.jpg"
    magick("-size", "300x200", "gradient:red-blue", "-quality", "95", "jpeg:%s" % whole)
    source = tmp_path / "cut.jpg"
    source.write_bytes(whole.read_bytes()[:len(whole.read_bytes()) // 2])
    target = tmp_path / "thumbnails" / "cut_50.jpg"
    try:
        real.thumbnail(str(source), str(target), 50)
    except ThumbnailError:
        assert not target.exists()
    else:
        assert identify(target)[:3] == ("JPEG", 50, 33)
    assert [entry for entry in os.listdir(str(target.parent)) if entry.startswith(".")] == []


@needs_convert
def test_names_imagemagick_would_interpret(real, tmp_path):
    name = "odd %d [0] *?{x}.png"
    source = tmp_path / name
    source.write_bytes(png_bytes(40, 20))
    target = tmp_path / "thumbnails" / thumbnails.thumbnail_name(name, 10)
    assert real.thumbnail(str(source), str(target), 10) == "image/png"
    with target.open("rb") as f:
        assert imageformats.read_dimensions(f, "png") == (10, 5)


@needs_convert
def test_single_flight_with_real_imagemagick(tmp_path):
    calls = []

    def counting_run(argv, timeout):
        if "-resize" in argv:
            calls.append(argv)
            time.sleep(0.2)  # keep the conversion in flight while the others arrive
        return thumbnails.run_command(argv, timeout)

    thumbnailer = Thumbnailer(run=counting_run)
    source = tmp_path / "photo.jpg"
    magick("-size", "300x200", "gradient:red-blue", "jpeg:%s" % source)
    target = tmp_path / "thumbnails" / "photo_123.jpg"
    barrier = threading.Barrier(32)
    results = []

    def request():
        barrier.wait()
        results.append(thumbnailer.thumbnail(str(source), str(target), 123))

    threads = [threading.Thread(target=request) for _ in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results == ["image/jpeg"] * 32 and len(calls) == 1
    assert identify(target)[:3] == ("JPEG", 123, 82)
