"""Readiness checks shared by /readyz and `webassets check`: store writable, converters present."""

import os
import shutil
import tempfile

from . import storage

__all__ = ["store_problem", "converter_problem", "readiness"]

PDF = "application/pdf"


def store_problem(base_dir):
    """Return why a file cannot be created in `base_dir`, or None if it can.

    Nothing is created if BASE_DIR is missing: an unmounted volume must not look ready.
    """
    if not os.path.isdir(base_dir):
        return "BASE_DIR does not exist or is not a directory"
    try:
        # The upload prefix: if we die before the unlink, fsck removes the leftover.
        fd, path = tempfile.mkstemp(prefix=storage.UPLOAD_PREFIX, suffix=storage.TEMP_SUFFIX,
                                    dir=base_dir)
    except OSError as ex:
        return "cannot create a file in BASE_DIR: %s" % (ex.strerror or ex)
    os.close(fd)
    try:
        os.unlink(path)
    except OSError as ex:
        return "cannot remove a file from BASE_DIR: %s" % (ex.strerror or ex)
    return None


def _runnable(program):
    # which() takes a bare name (searched on PATH) or a path (checked as given).
    return bool(program) and shutil.which(program) is not None


def converter_problem(thumbnailer, can_thumbnail):
    """Return which converter the thumbnail types in `can_thumbnail` lack, or None.

    Only checks that the programs exist (no subprocess): cheap enough for every probe.
    """
    if not can_thumbnail:
        return None
    missing = []
    if not _runnable(getattr(thumbnailer, "convert", None)):
        missing.append("ImageMagick (convert/magick) not found")
    if PDF in can_thumbnail and not _runnable(getattr(thumbnailer, "gs", None)):
        missing.append("Ghostscript (gs) not found, needed for PDF")
    return "; ".join(missing) or None


def readiness(app):
    """Return [(check name, problem or None)] for the running app."""
    settings = app.settings
    return [("store", store_problem(settings.BASE_DIR)),
            ("converters", converter_problem(app.thumbnailer, settings.CAN_THUMBNAIL))]
