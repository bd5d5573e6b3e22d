"""Benchmark data: generate the originals once with ImageMagick and Ghostscript, then reuse them."""

import json
import logging
import os
import shutil
import struct
import subprocess

logger = logging.getLogger(__name__)

DATA_VERSION = 1  # bump when the generated files change
SMALL_BYTES = 64 * 1024
MIB = 1024 * 1024
SMALL_IMAGES = 200
TILE = "600x400"  # the small images: tiles of the big photo, 100 per orientation

# Names inside the data directory.
SMALL = "small.bin"
PHOTO = "photo.jpg"          # 6000x4000 JPEG with an EXIF block (getmetadata reads it)
SCAN = "scan16.tif"          # 4000x3000 16-bit RGB TIFF, uncompressed like a scanner's
PLATE = "plate.png"          # 4000x3000 8-bit RGB PNG
DOC = "doc.pdf"              # 20-page PDF, Letter
TILES = "tiles"              # directory of the 200 small JPEGs
MANIFEST = "manifest.json"
# The cold-thumbnail formats of issue 13, made (once) after the files above.
DRAWING = "drawing.gif"      # 3000x2000 GIF of the map: lines and text, a palette image
WEBP = "photo.webp"          # 3000x2000 lossy WebP
BMP = "photo.bmp"            # 3000x2000 24-bit BMP
MAP = "map.pdf"              # one Letter page of 18,000 curves and 150 labels (vector-heavy)
SCANNED = "scanned.pdf"      # one Letter page wrapping a 2550x3300 JPEG of that map (a scan)
MIXED = "mixed"              # 200 images of every format, about 1600x1200, for pregen
MIXED_IMAGES = 200
EXTRA_VERSION = 1  # bump when the files of issue 13 change

# 20 Letter pages of text and vector shapes; page numbers so the pages differ.
_POSTSCRIPT = b"""%!PS-Adobe-3.0
<< /PageSize [612 792] >> setpagedevice
/Helvetica findfont 14 scalefont setfont
1 1 20 {
  /n exch def
  0.9 0.95 1 setrgbcolor 36 36 540 720 rectfill
  0 0 0.4 setrgbcolor
  72 720 moveto (Specimen record, page ) show n 3 string cvs show
  10 1 40 { /i exch def 72 700 i 14 mul sub moveto
    (Catalog number KU-FISH-) show i n mul 6 string cvs show
    (  Locality: Kansas River, Douglas County, coordinates 38.97 N 95.23 W) show } for
  0.2 0.5 0.2 setrgbcolor 4 setlinewidth
  306 200 n 5 mul 60 add 0 360 arc stroke
  showpage
} for
"""


# A map: 1500 random strokes of 12 Bezier segments each, and a label at every tenth.
_MAP_POSTSCRIPT = b"""%!PS-Adobe-3.0
<< /PageSize [612 792] >> setpagedevice
/Helvetica findfont 7 scalefont setfont
0.3 setlinewidth
12345 srand
1 1 1500 {
  /i exch def
  i 7 mod 7 div 0.4 i 13 mod 13 div setrgbcolor
  rand 540 mod 36 add rand 720 mod 36 add moveto
  1 1 12 { pop rand 41 mod 20 sub rand 41 mod 20 sub rand 41 mod 20 sub
             rand 41 mod 20 sub rand 41 mod 20 sub rand 41 mod 20 sub rcurveto } for
  stroke
  i 10 mod 0 eq { 0 setgray rand 540 mod 36 add rand 720 mod 36 add moveto
                  (Locality 38.97N) show } if
} for
showpage
"""

# (extension, what) of the mixed set's sources, cycled over its 200 names: mostly photos.
_MIXED_KINDS = (("jpg", "photo"), ("png", "photo"), ("jpg", "photo"), ("tif", "photo"),
                ("gif", "drawing"), ("jpg", "photo"), ("webp", "photo"), ("jpg", "photo"),
                ("bmp", "photo"), ("pdf", "doc"))


def tool(name):
    """Return the path of `name` on PATH, or None."""
    return shutil.which(name)


def _run(argv):
    """Run a generator command; raise RuntimeError with its stderr when it fails."""
    logger.debug("Running %s", subprocess.list2cmdline(argv))
    result = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if result.returncode != 0:
        raise RuntimeError("%s failed: %s" % (subprocess.list2cmdline(argv),
                                              result.stderr.decode("utf-8", "replace")[-2000:]))


def _ifd(entries, offset):
    """Return a little-endian TIFF IFD at `offset`: (tag, type, count, value bytes) entries."""
    data_at = offset + 2 + 12 * len(entries) + 4
    head, data = struct.pack("<H", len(entries)), b""
    for tag, kind, count, value in sorted(entries):
        if len(value) <= 4:
            head += struct.pack("<HHI", tag, kind, count) + value.ljust(4, b"\0")
        else:
            head += struct.pack("<HHII", tag, kind, count, data_at + len(data))
            data += value + b"\0" * (len(value) % 2)
    return head + struct.pack("<I", 0) + data


def exif_segment():
    """Return a JPEG APP1 Exif segment with Make, Model, Orientation and DateTimeOriginal."""
    ascii_ = 2

    def text(tag, value):
        raw = value.encode("ascii") + b"\0"
        return (tag, ascii_, len(raw), raw)

    exif_ifd = [text(0x9003, "2024:05:17 10:42:00"), text(0x9004, "2024:05:17 10:42:00")]

    def ifd0(pointer):
        return [text(0x010F, "BenchCam"), text(0x0110, "Model 6000"),
                (0x0112, 3, 1, struct.pack("<H", 1)), (0x8769, 4, 1, struct.pack("<I", pointer))]

    first = _ifd(ifd0(0), 8)
    tiff = b"II*\0" + struct.pack("<I", 8) + _ifd(ifd0(8 + len(first)), 8)
    tiff += _ifd(exif_ifd, len(tiff))
    payload = b"Exif\0\0" + tiff
    return b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload


def add_exif(path):
    """Insert an Exif APP1 segment after the JPEG's SOI (and JFIF APP0, if any)."""
    with open(path, "rb") as f:
        data = f.read()
    at = 2
    if data[2:4] == b"\xff\xe0":
        at = 4 + struct.unpack(">H", data[4:6])[0]
    with open(path + ".tmp", "wb") as f:
        f.write(data[:at] + exif_segment() + data[at:])
    os.replace(path + ".tmp", path)


def _random_file(path, size):
    with open(path + ".tmp", "wb") as f:
        left = size
        while left:
            block = os.urandom(min(MIB, left))
            f.write(block)
            left -= len(block)
    os.replace(path + ".tmp", path)


def big_name(big_mib):
    """Return the file name of the large original of `big_mib` MiB."""
    return "big_%dmib.bin" % big_mib


def download_file(data_dir, mib):
    """Return the path of a random original of `mib` MiB in `data_dir`, written once."""
    path = os.path.join(data_dir, big_name(mib))
    if not os.path.exists(path):
        logger.info("Writing a %d MiB random original", mib)
        _random_file(path, mib * MIB)
    return path


def _generate_images(data_dir, convert, gs):
    base = os.path.join(data_dir, "base.png")
    photo = os.path.join(data_dir, PHOTO)
    # A plasma fractal scaled up with grain compresses and decodes like a camera photo (~8 MB).
    _run([convert, "-size", "1500x1000", "-seed", "7", "plasma:fractal", base])
    _run([convert, base, "-resize", "6000x4000!", "-attenuate", "0.3", "+noise", "Gaussian",
          "-quality", "90", photo])
    os.unlink(base)
    add_exif(photo)
    _run([convert, photo, "-crop", "4000x3000+0+0", "+repage", "-depth", "16",
          "-compress", "none", os.path.join(data_dir, SCAN)])
    _run([convert, photo, "-crop", "4000x3000+1000+500", "+repage", "-quality", "51",
          os.path.join(data_dir, PLATE)])
    tiles = os.path.join(data_dir, TILES)
    os.makedirs(tiles, exist_ok=True)
    _run([convert, photo, "-crop", TILE, "+repage", "-quality", "85",
          os.path.join(tiles, "img_%03d.jpg")])
    _run([convert, photo, "-flop", "-crop", TILE, "+repage", "-quality", "85", "-scene", "100",
          os.path.join(tiles, "img_%03d.jpg")])
    ps = os.path.join(data_dir, "doc.ps")
    with open(ps, "wb") as f:
        f.write(_POSTSCRIPT)
    _run([gs, "-q", "-dSAFER", "-dBATCH", "-dNOPAUSE", "-sDEVICE=pdfwrite",
          "-o", os.path.join(data_dir, DOC), ps])
    os.unlink(ps)


def jpeg_pdf(jpeg, width, height, page=(612, 792)):
    """Return a one-page PDF showing the JPEG `jpeg` (width x height px) over the whole page.

    That is how a scanner writes a page: one image, no text.
    """
    content = b"q %d 0 0 %d 0 0 cm /Im0 Do Q" % page
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 %d %d] /Resources "
        b"<< /XObject << /Im0 4 0 R >> >> /Contents 5 0 R >>" % page,
        b"<< /Type /XObject /Subtype /Image /Width %d /Height %d /ColorSpace /DeviceRGB "
        b"/BitsPerComponent 8 /Filter /DCTDecode /Length %d >>\nstream\n"
        % (width, height, len(jpeg)) + jpeg + b"\nendstream",
        b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream",
    ]
    out = b"%PDF-1.4\n"
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    return out + b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1, xref)


def _generate_extra(data_dir, convert, gs):
    """Make the issue-13 files: GIF, WebP, BMP, the vector and scanned PDFs, the mixed set."""
    photo = os.path.join(data_dir, PHOTO)
    ps = os.path.join(data_dir, "map.ps")
    with open(ps, "wb") as f:
        f.write(_MAP_POSTSCRIPT)
    map_pdf = os.path.join(data_dir, MAP)
    _run([gs, "-q", "-dSAFER", "-dBATCH", "-dNOPAUSE", "-sDEVICE=pdfwrite", "-o", map_pdf, ps])
    os.unlink(ps)
    # The scan: the map rendered at 300 dpi, as a scanner would see the printed page.
    scan_jpeg = os.path.join(data_dir, "scan-page.jpg")
    _run([gs, "-q", "-dSAFER", "-dBATCH", "-dNOPAUSE", "-sDEVICE=jpeg", "-dJPEGQ=85", "-r300",
          "-dTextAlphaBits=4", "-dGraphicsAlphaBits=4", "-o", scan_jpeg, map_pdf])
    with open(scan_jpeg, "rb") as f:
        scan = f.read()
    with open(os.path.join(data_dir, SCANNED), "wb") as f:
        f.write(jpeg_pdf(scan, 2550, 3300))
    drawing = os.path.join(data_dir, "drawing.png")
    _run([gs, "-q", "-dSAFER", "-dBATCH", "-dNOPAUSE", "-sDEVICE=png16m", "-r400",
          "-dTextAlphaBits=4", "-dGraphicsAlphaBits=4", "-o", drawing, map_pdf])
    _run([convert, drawing, "-crop", "3000x2000+200+600", "+repage",
          os.path.join(data_dir, DRAWING)])
    _run([convert, photo, "-crop", "3000x2000+1500+1000", "+repage", "-quality", "80",
          os.path.join(data_dir, WEBP)])
    _run([convert, photo, "-crop", "3000x2000+500+1500", "+repage", "-type", "TrueColor",
          os.path.join(data_dir, BMP)])
    mixed = os.path.join(data_dir, MIXED)
    os.makedirs(mixed, exist_ok=True)
    sources = {}
    for index, (ext, what) in enumerate(_MIXED_KINDS):
        path = os.path.join(data_dir, "mixed-source-%d.%s" % (index, ext))
        if what == "doc":
            shutil.copyfile(os.path.join(data_dir, DOC), path)
        else:
            base = photo if what == "photo" else drawing
            _run([convert, base, "-crop", "1600x1200+%d+%d" % (300 * index, 200 * index),
                  "+repage", "-quality", "85", path])
        sources[index] = path
    for number in range(MIXED_IMAGES):
        index = number % len(_MIXED_KINDS)
        target = os.path.join(mixed, "m_%03d.%s" % (number, _MIXED_KINDS[index][0]))
        shutil.copyfile(sources[index], target)
    for path in list(sources.values()) + [drawing, scan_jpeg]:
        os.unlink(path)


def tile_names(data_dir):
    """Return the sorted names of the small images."""
    return sorted(os.listdir(os.path.join(data_dir, TILES)))[:SMALL_IMAGES]


def generate(data_dir, big_mib):
    """Create (or reuse) every input in `data_dir`; return {what: absolute path}.

    Raises RuntimeError when ImageMagick's convert or Ghostscript is missing or fails.
    """
    os.makedirs(data_dir, exist_ok=True)
    convert, gs = tool("convert") or tool("magick"), tool("gs")
    if not convert or not gs:
        raise RuntimeError("the benchmark needs ImageMagick (convert) and Ghostscript (gs)")
    manifest_path = os.path.join(data_dir, MANIFEST)
    try:
        with open(manifest_path) as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        manifest = {}
    if manifest.get("version") != DATA_VERSION or not all(
            os.path.exists(os.path.join(data_dir, name))
            for name in (SMALL, PHOTO, SCAN, PLATE, DOC, TILES)):
        logger.info("Generating images and PDF in %s (once; reused by later runs)", data_dir)
        _random_file(os.path.join(data_dir, SMALL), SMALL_BYTES)
        _generate_images(data_dir, convert, gs)
        manifest = {"version": DATA_VERSION}
    extras = (DRAWING, WEBP, BMP, MAP, SCANNED, MIXED)
    if manifest.get("extra_version") != EXTRA_VERSION or not all(
            os.path.exists(os.path.join(data_dir, name)) for name in extras):
        logger.info("Generating the GIF, WebP, BMP, PDF pages and mixed set in %s", data_dir)
        shutil.rmtree(os.path.join(data_dir, MIXED), ignore_errors=True)
        _generate_extra(data_dir, convert, gs)
        manifest["extra_version"] = EXTRA_VERSION
    big = download_file(data_dir, big_mib)
    with open(manifest_path, "w") as f:
        json.dump(manifest, f)
    if len(tile_names(data_dir)) < SMALL_IMAGES:
        raise RuntimeError("expected %d small images in %s" % (SMALL_IMAGES, TILES))
    paths = {name: os.path.join(data_dir, name)
             for name in (SMALL, PHOTO, SCAN, PLATE, DOC) + extras}
    paths["big"] = big
    paths["tiles"] = os.path.join(data_dir, TILES)
    return paths
