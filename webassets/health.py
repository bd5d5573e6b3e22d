"""Readiness checks shared by /readyz and `webassets check`: store writable, converters present."""

import shutil

__all__ = ["converter_problem", "readiness"]

PDF = "application/pdf"


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
    return [("store", app.store.problem()),
            ("converters", converter_problem(app.thumbnailer, settings.CAN_THUMBNAIL))]
