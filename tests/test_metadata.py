"""Tests for webassets.metadata: EXIF as the /getmetadata JSON shape, never an exception."""

import json
import random
import struct

import exifread
import pytest

from tests import fakes
from tests.fakes import ASCII, SHORT, tiff_block
from tests.helpers import DATE
from webassets import metadata


def jpeg_with_exif(tiff, body=b"\xff\xd9"):
    """Return a JPEG: SOI, an APP1 'Exif' segment holding `tiff`, then `body`."""
    return fakes.with_exif(b"\xff\xd8" + body, tiff)


def canon_jpeg():
    return jpeg_with_exif(tiff_block(
        [(0x010F, ASCII, "Canon"), (0x0110, ASCII, "Canon EOS 5D"), (0x0112, SHORT, 1)],
        [(0x9003, ASCII, DATE)]))


@pytest.fixture
def write(tmp_path):
    def write(name, data):
        path = tmp_path / name
        path.write_bytes(data)
        return str(path)
    return write


def test_read_exif_groups_tags_like_the_reference(write):
    path = write("sp61.att.jpg", canon_jpeg())
    groups = metadata.read_exif(path)
    by_name = {group["Name"]: group["Fields"] for group in groups}
    assert by_name["Image"]["Make"] == "Canon"
    assert by_name["Image"]["Model"] == "Canon EOS 5D"
    assert by_name["EXIF"]["DateTimeOriginal"] == DATE
    for group in groups:  # PROTOCOL 66: exactly Name (str) and Fields (str -> str)
        assert set(group) == {"Name", "Fields"}
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in group["Fields"].items())
    json.dumps(groups)


def test_read_exif_splits_on_the_first_space_only(write, monkeypatch):
    tags = {"Image Tag 0x877A": "x", "EXIF DateTimeOriginal": DATE,
            "JPEGThumbnail": b"\xff\xd8", "Thumbnail Compression": "JPEG"}
    monkeypatch.setattr(metadata, "_process", lambda path, **options: tags)
    assert metadata.read_exif(write("a.jpg", b"")) == [
        {"Name": "Image", "Fields": {"Tag 0x877A": "x"}},
        {"Name": "EXIF", "Fields": {"DateTimeOriginal": DATE}},
        {"Name": "Thumbnail", "Fields": {"Compression": "JPEG"}},
    ]


def test_date_original(write):
    assert metadata.date_original(write("a.jpg", canon_jpeg())) == DATE


def test_no_exif_gives_empty_results(write):
    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr
    for data in (b"\xff\xd8\xff\xd9", png, b"plain text, not an image"):
        path = write("x.bin", data)
        assert metadata.read_exif(path) == []
        assert metadata.date_original(path) is None


def test_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        metadata.read_exif(str(tmp_path / "nope.jpg"))
    with pytest.raises(FileNotFoundError):
        metadata.date_original(str(tmp_path / "nope.jpg"))


def test_garbage_exif_never_raises(write):
    good = tiff_block([(0x010F, ASCII, "Canon")], [(0x9003, ASCII, DATE)])
    generator = random.Random(1234)
    samples = [
        b"MM\0*" + struct.pack(">I", 0xFFFFFFF0),      # IFD offset past the end
        b"MM\0*" + struct.pack(">I", 8) + b"\x00\x40",  # 64 entries, none present
        b"II*\0" + b"\0" * 3,                           # cut short
        b"XX\0*" + good[4:],                            # unknown byte order
    ]
    samples += [bytes(generator.getrandbits(8) for _ in range(generator.randrange(8, 80)))
                for _ in range(40)]
    # Flip bytes of a valid block: the shapes that crash EXIF parsers. (Few samples: ExifRead
    # walks a corrupt entry count of up to 65535 one entry at a time, about 1 s each.)
    for _ in range(40):
        broken = bytearray(good)
        for _ in range(generator.randrange(1, 4)):
            broken[generator.randrange(len(broken))] = generator.getrandbits(8)
        samples.append(bytes(broken))
    for tiff in samples:
        path = write("bad.jpg", jpeg_with_exif(tiff))
        assert isinstance(metadata.read_exif(path), list)
        result = metadata.date_original(path)
        assert result is None or isinstance(result, str)


def test_exifread_exceptions_are_contained(write, monkeypatch):
    def explode(f, **options):
        raise ZeroDivisionError("bad rational")
    monkeypatch.setattr(exifread, "process_file", explode)
    monkeypatch.setattr(metadata, "_process_without_thumbnails", explode)  # ExifRead 3.0
    path = write("a.jpg", canon_jpeg())
    assert metadata.read_exif(path) == []
    assert metadata.date_original(path) is None
