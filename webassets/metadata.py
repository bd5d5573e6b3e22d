"""EXIF metadata for /getmetadata: an ExifRead wrapper that never fails on bad EXIF."""

import contextlib
import inspect
import logging
import os
from typing import Dict, List, Optional

import exifread

from . import exifbounds

__all__ = ["read_exif", "date_original"]

logger = logging.getLogger(__name__)

try:  # ExifRead >= 3.2
    from exifread.core.find_exif import determine_type as _locate_exif
except ImportError:  # ExifRead 3.0 and 3.1
    try:
        from exifread import _determine_type as _locate_exif
    except ImportError:  # a future release: the read budget alone still bounds the work
        _locate_exif = None

# COMPAT: ExifRead 3.0 (Debian 12's python3-exifread, the newest on Python 3.6) has no
# extract_thumbnail option and always copies the thumbnail; see _process_without_thumbnails.
_HAS_THUMBNAIL_OPTION = "extract_thumbnail" in inspect.signature(exifread.process_file).parameters


def read_exif(path) -> List[Dict[str, object]]:
    """Return the EXIF tags as [{"Name": group, "Fields": {tag: text}}], [] if none.

    `path` is a file's path, or the file itself open for binary reading and seekable.

    Groups are ExifRead's "<Group> <Tag>" keys split on the first space, in file order;
    embedded thumbnails (keys without a group, binary values) are left out. Raise
    FileNotFoundError for a missing file; malformed EXIF, or EXIF that needs more work than
    exifbounds allows, gives [].
    """
    # COMPAT: ExifRead's default options, as the reference uses (MakerNotes included).
    groups = {}
    for key, value in _process(path).items():
        group, _, tag = key.partition(" ")
        if not tag or isinstance(value, (bytes, bytearray)):
            continue  # 'JPEGThumbnail', 'TIFFThumbnail': image data, not text
        groups.setdefault(group, {})[tag] = str(value)
    return [{"Name": group, "Fields": fields} for group, fields in groups.items()]


def date_original(path) -> Optional[str]:
    """Return EXIF DateTimeOriginal as text ('2015:05:20 12:16:38'), or None if absent.

    `path` as read_exif's.

    Raise FileNotFoundError for a missing file; malformed or too costly EXIF gives None.
    """
    # Stop at the tag and skip MakerNotes and thumbnails: only the date is needed.
    tags = _process(path, details=False, stop_tag="DateTimeOriginal")
    value = tags.get("EXIF DateTimeOriginal")
    return None if value is None else str(value)


@contextlib.contextmanager
def _opened(path):
    """Yield `path` opened for binary reading, or `path` itself if it is an open file.

    An open file stays open: its owner closes it. (contextlib.nullcontext is 3.7+.)
    """
    if not isinstance(path, (str, bytes, os.PathLike)):
        yield path
        return
    with open(path, "rb") as f:
        yield f


def _process(path, details: bool = True, stop_tag: Optional[str] = None) -> dict:
    """Return exifread.process_file's tags for `path`, {} if ExifRead fails on its content.

    SECURITY: ExifRead never sees the file itself, only an exifbounds.BoundedView of it: its
    main IFD structure sanitized, and a budget of reads after which it gives up. That bounds
    its CPU time and memory for any input without a thread, process or timer, so it holds
    in every host (the built-in server, mod_wsgi).
    """
    options = {"details": details}
    if stop_tag is not None:
        options["stop_tag"] = stop_tag
    with _opened(path) as f:  # FileNotFoundError propagates: the caller answers 404
        try:
            # ExifRead's own locator (it differs between versions) says where the TIFF
            # structure starts; run it on a budgeted view too.
            patches = {}
            if _locate_exif is not None:
                base, endian, _ = _locate_exif(exifbounds.BoundedView(f))
                patches = exifbounds.sanitize(f, base, chr(endian[0]))
            view = exifbounds.BoundedView(f, patches)
            if _HAS_THUMBNAIL_OPTION:
                # Thumbnails are dropped by read_exif; copying an uncompressed TIFF one is
                # quadratic in its strips.
                return exifread.process_file(view, extract_thumbnail=False, **options)
            return _process_without_thumbnails(view, **options)
        except Exception as ex:
            # ExifRead raises almost anything on malformed input (struct.error, IndexError,
            # KeyError, ValueError, ZeroDivisionError, RecursionError, ...), and
            # exifbounds.BudgetExceeded when the file needs too much work; bad EXIF in an
            # upload must give "no metadata", never a 500.
            logger.debug("Cannot read EXIF from %s: %r", path, ex)
            return {}


def _process_without_thumbnails(fh, details=True, stop_tag=None):
    """Return what ExifRead 3.0's process_file returns, minus the thumbnails.

    COMPAT: a copy of ExifRead 3.0.0's process_file (debug off) without its last step, the
    thumbnail extraction, which read_exif drops and which is quadratic in the strips of an
    uncompressed TIFF thumbnail.
    """
    from exifread.classes import ExifHeader
    from exifread.exceptions import ExifNotFound, InvalidExif
    from exifread.tags import DEFAULT_STOP_TAG

    fh.seek(0)
    try:
        offset, endian, fake_exif = _locate_exif(fh)
    except (ExifNotFound, InvalidExif):
        return {}
    header = ExifHeader(fh, chr(endian[0]), offset, fake_exif, False, False, details, True)
    stop_tag = stop_tag or DEFAULT_STOP_TAG
    for number, ifd in enumerate(header.list_ifd()):
        name = {0: "Image", 1: "Thumbnail"}.get(number, "IFD %d" % number)
        header.dump_ifd(ifd, name, stop_tag=stop_tag)
    exif_offset = header.tags.get("Image ExifOffset")
    if exif_offset:
        header.dump_ifd(exif_offset.values[0], "EXIF", stop_tag=stop_tag)
    if details and "EXIF MakerNote" in header.tags and "Image Make" in header.tags:
        header.decode_maker_note()
    return header.tags
