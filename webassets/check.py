"""`webassets check`: settings, store, converters, a live thumbnail probe and keys on one screen."""

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time

from . import __version__, admin, samples, thumbnails
from .exitcodes import EXIT_ATTENTION, EXIT_OK

__all__ = ["run_check", "Screen", "MIN_KEY_LENGTH"]

MIN_KEY_LENGTH = 16
REFERENCE_KEY = "test_attachment_key"  # the published example in the reference's settings.py
PROBE_SCALE = 64
WARN_FREE_FRACTION = 0.10
FAIL_FREE_FRACTION = 0.01
FAIL_FREE_BYTES = 100 * 1024 * 1024
DETAIL_CHARS = 160
_MARKS = {"ok": "[ ok ]", "info": "[info]", "warn": "[warn]", "FAIL": "[FAIL]", "off": "[ -- ]"}
_HINTS = {
    "heic": "ImageMagick here has no HEIC coder: install one built with libheif, "
            "or remove image/heic and image/heif from CAN_THUMBNAIL",
    "pdf": "PDFs need Ghostscript: install it (Debian: ghostscript) or set GHOSTSCRIPT, "
           "or remove application/pdf from CAN_THUMBNAIL",
    "webp": "ImageMagick here has no WEBP coder (libwebp), or remove image/webp from "
            "CAN_THUMBNAIL",
}


class Screen:
    """The check's output: sections of marked lines, counting faults and warnings."""

    def __init__(self):
        self.lines = []
        self.faults = 0
        self.warnings = 0

    def section(self, title):
        """Start a section."""
        self.lines += ["", title]

    def item(self, status, text):
        """Add a line; status is 'ok', 'info', 'warn', 'FAIL' or 'off'."""
        self.faults += status == "FAIL"
        self.warnings += status == "warn"
        self.lines.append("  %s %s" % (_MARKS[status], text))

    def render(self):
        """Return the whole screen, with a summary line."""
        if self.faults:
            summary = "%d fault(s), %d warning(s): exit 1" % (self.faults, self.warnings)
        else:
            summary = "No faults, %d warning(s)." % self.warnings
        return "\n".join(self.lines + ["", summary]) + "\n"


def run_check(settings, source, app, out=None):
    """Check everything for `settings` (loaded from `source`) and print the screen.

    `app` is create_app(settings): the probe uses its store and thumbnail engine, exactly
    as the server would. Returns 1 if any line is a FAIL, else 0.
    """
    screen = Screen()
    screen.lines.append("webassets %s check, settings from %s" % (__version__, source))
    _settings_section(screen, settings)
    _store_section(screen, settings, app.store)
    _converters_section(screen, app.thumbnailer)
    _probe_section(screen, settings, app.thumbnailer)
    _security_section(screen, settings)
    _monitoring_section(screen, settings)
    (out or sys.stdout).write(screen.render())
    return EXIT_ATTENTION if screen.faults else EXIT_OK


# ---------------------------------------------------------------------------- sections

def _settings_section(screen, settings):
    screen.section("Settings")
    screen.item("ok", "valid")
    screen.item("info", "Specify attachment.url = %s/web_asset_store.xml" % settings.public_base())
    screen.item("info", "listening on %s:%d with %d process(es) x %d request slots, at most %d "
                "connections" % (settings.BIND_ADDRESS, settings.PORT, settings.processes,
                                 settings.WORKERS, settings.MAX_CONNECTIONS))
    sizes = settings.THUMBNAIL_SIZES
    screen.item("info", "thumbnail sizes: %s" % (", ".join(map(str, sizes)) if sizes else
                                                 "any up to MAX_SCALE = %d" % settings.MAX_SCALE))


def _store_section(screen, settings, store):
    screen.section("Store")
    rows = store.describe()
    for status, line in rows:
        screen.item(status, line)
    if rows and rows[0][0] == "FAIL":
        return  # the first row is the store itself: unusable, free space would not help
    space = store.free_space()
    if space is not None:
        _free_space(screen, *space)


def _free_space(screen, free, total):
    fraction = free / float(total or 1)
    status = "ok"
    if fraction < FAIL_FREE_FRACTION or free < FAIL_FREE_BYTES:
        status = "FAIL"
    elif fraction < WARN_FREE_FRACTION:
        status = "warn"
    screen.item(status, "free space: %s of %s (%.0f%%)" % (
        admin.human_size(free), admin.human_size(total), 100 * fraction))


def _version(argv):
    """Return the first line a program prints for its version, or None if it cannot run."""
    try:
        result = thumbnails.run_command(argv, timeout=thumbnails.PROBE_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = (result.stdout or b"").decode("utf-8", "replace").strip().splitlines()
    if result.returncode != 0 or not lines:
        return None
    return lines[0].replace("Version: ", "").split(" http")[0]


def _converters_section(screen, thumbnailer):
    screen.section("Converters")
    _program_item(screen, thumbnailer.convert, "-version", "ImageMagick", "FAIL",
                  "neither magick nor convert on PATH")
    _program_item(screen, thumbnailer.gs, "--version", "Ghostscript", "warn", "gs not on PATH",
                  " (needed for PDF thumbnails only)", shown="Ghostscript ")


def _program_item(screen, program, version_flag, name, status, missing, note="", shown=""):
    """Add the line of one converter: its version, else `status` saying why it cannot run."""
    version = _version([program, version_flag]) if program else None
    if version:
        screen.item("ok", "%s: %s%s" % (program, shown, version))
    else:
        screen.item(status, "%s: %s%s" % (
            name, "%s does not run" % program if program else missing, note))


class _Capture(logging.Handler):
    """Keep the thumbnail engine's warnings (converter stderr) for the probe's report."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _probe_section(screen, settings, thumbnailer):
    screen.section("Thumbnail probe (a generated sample of each format, %d px)" % PROBE_SCALE)
    engine_logger = logging.getLogger(thumbnails.__name__)
    capture = _Capture()
    engine_logger.addHandler(capture)
    propagate, engine_logger.propagate = engine_logger.propagate, False
    workdir = tempfile.mkdtemp(prefix="webassets-check-")
    # The samples render into a private directory nobody else uses: no store locks needed,
    # so check leaves the store exactly as it found it.
    lock_dir, thumbnailer.lock_dir = thumbnailer.lock_dir, None
    try:
        for fmt in samples.SAMPLES:
            mimetype = thumbnails.INPUTS[fmt][1]
            if mimetype not in settings.CAN_THUMBNAIL:
                screen.item("off", "%-5s disabled (%s not in CAN_THUMBNAIL)" % (
                    fmt.upper(), mimetype))
                continue
            del capture.messages[:]
            status, detail = _probe(thumbnailer, fmt, workdir, capture)
            screen.item(status, "%-5s %s" % (fmt.upper(), detail))
    finally:
        thumbnailer.lock_dir = lock_dir
        engine_logger.removeHandler(capture)
        engine_logger.propagate = propagate
        shutil.rmtree(workdir, ignore_errors=True)


def _probe(thumbnailer, fmt, workdir, capture):
    """Thumbnail the sample of `fmt`; return (status, detail)."""
    name, data = samples.sample(fmt)
    source = os.path.join(workdir, name)
    with open(source, "wb") as handle:
        handle.write(data)
    target = os.path.join(workdir, thumbnails.thumbnail_name(name, PROBE_SCALE))
    started = time.monotonic()
    try:
        content_type = thumbnailer.thumbnail(source, target, PROBE_SCALE)
    except thumbnails.NotThumbnailable as ex:
        hint = _HINTS.get("heic" if fmt == "heif" else fmt, "ImageMagick here cannot read it")
        return "FAIL", "%s: %s" % (ex, hint)
    except (thumbnails.ThumbnailError, OSError) as ex:
        said = [line for message in capture.messages for line in message.splitlines()
                if line.strip()]
        return "FAIL", "%s%s" % (ex, (": " + said[-1].strip()[:DETAIL_CHARS]) if said else "")
    return "ok", "%.2f s -> %s" % (time.monotonic() - started, content_type)


def _fingerprint(key):
    # SECURITY: 32 bits of a hash tell keys apart across machines; they never give the key.
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:8]


def _security_section(screen, settings):
    screen.section("Security")
    keys = settings.keys
    if not keys:
        screen.item("warn", "KEY = None: no tokens; anyone who reaches the server can store "
                            "and delete files")
    else:
        screen.item("ok", "%d key(s) accepted%s; the first signs `webassets token`" % (
            len(keys), " (rotation: Specify may use any of them)" if len(keys) > 1 else ""))
    for number, key in enumerate(keys, 1):
        described = "key #%d: %d characters, fingerprint %s" % (number, len(key), _fingerprint(key))
        if key == REFERENCE_KEY:
            screen.item("FAIL", described + ": the reference's published example key")
        elif len(key) < MIN_KEY_LENGTH:
            screen.item("FAIL", described + ": shorter than %d; make one with `webassets keygen`"
                        % MIN_KEY_LENGTH)
        else:
            screen.item("ok", described)
    if keys and settings.TIME_TOLERANCE is None:
        screen.item("warn", "TIME_TOLERANCE = None: a token never expires")
    if settings.REQUIRE_KEY_FOR_GET:
        screen.item("info", "REQUIRE_KEY_FOR_GET = True: downloads need a token")
    else:
        screen.item("info", "REQUIRE_KEY_FOR_GET = False: originals, thumbnails and metadata "
                            "are served to anyone who knows a file name")
    if not settings.ALLOW_STATIC_FILE_ACCESS:
        screen.item("info", "ALLOW_STATIC_FILE_ACCESS = False: /static/ and /getfileref are off")
    elif settings.REQUIRE_KEY_FOR_GET and keys:
        screen.item("warn", "ALLOW_STATIC_FILE_ACCESS = True: /static/ serves every file "
                            "without a token, around REQUIRE_KEY_FOR_GET")
    else:
        screen.item("info", "ALLOW_STATIC_FILE_ACCESS = True: /static/ and /getfileref serve "
                            "every stored file without a token")


def _monitoring_section(screen, settings):
    screen.section("Monitoring")
    screen.item("info", "/healthz and /readyz answer without a token")
    screen.item("info", "/metrics %s" % ("on (METRICS = True), without a token"
                                         if settings.METRICS else "off (METRICS = False)"))
    screen.item("info", "access log: %s lines on standard error" % settings.ACCESS_LOG_FORMAT)
