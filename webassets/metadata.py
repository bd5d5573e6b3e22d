"""EXIF metadata for /getmetadata: an ExifRead wrapper that never fails on bad EXIF."""

import logging
from typing import Dict, List, Optional

import exifread

__all__ = ["read_exif", "date_original"]

logger = logging.getLogger(__name__)


def read_exif(path: str) -> List[Dict[str, object]]:
    """Return the EXIF tags as [{"Name": group, "Fields": {tag: text}}], [] if none.

    Groups are ExifRead's "<Group> <Tag>" keys split on the first space, in file order;
    embedded thumbnails (keys without a group, binary values) are left out. Raise
    FileNotFoundError for a missing file; malformed EXIF gives [].
    """
    # COMPAT: ExifRead's default options, as the reference uses (MakerNotes included).
    groups = {}
    for key, value in _process(path).items():
        group, _, tag = key.partition(" ")
        if not tag or isinstance(value, (bytes, bytearray)):
            continue  # 'JPEGThumbnail', 'TIFFThumbnail': image data, not text
        groups.setdefault(group, {})[tag] = str(value)
    return [{"Name": group, "Fields": fields} for group, fields in groups.items()]


def date_original(path: str) -> Optional[str]:
    """Return EXIF DateTimeOriginal as text ('2015:05:20 12:16:38'), or None if absent.

    Raise FileNotFoundError for a missing file; malformed EXIF gives None.
    """
    # Stop at the tag and skip MakerNotes and thumbnails: only the date is needed.
    tags = _process(path, details=False, stop_tag="DateTimeOriginal")
    value = tags.get("EXIF DateTimeOriginal")
    return None if value is None else str(value)


def _process(path: str, **options) -> dict:
    """Return exifread.process_file's tags for `path`, {} if ExifRead fails on its content."""
    with open(path, "rb") as f:  # FileNotFoundError propagates: the caller answers 404
        try:
            return exifread.process_file(f, **options)
        except Exception as ex:
            # ExifRead raises almost anything on malformed input (struct.error, IndexError,
            # KeyError, ValueError, ZeroDivisionError, RecursionError, ...); bad EXIF in an
            # upload must give "no metadata", never a 500.
            logger.debug("Cannot read EXIF from %s: %r", path, ex)
            return {}
