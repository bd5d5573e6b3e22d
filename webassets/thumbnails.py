"""Thumbnail engine: detect, render and cache thumbnails with ImageMagick and Ghostscript."""

import collections
import contextlib
import errno
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import zlib
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

try:
    import fcntl
except ImportError:  # not POSIX: single flight holds within one process only
    fcntl = None

from .imageformats import SNIFF_BYTES, read_dimensions, read_pdf_page_size, sniff_format
from .storage import (RENDER_PREFIX, TEMP_SUFFIX, THUMBNAIL, FileInfo, StorageError,
                      StoredFile, fresh_by_mtime)

__all__ = [
    "ThumbnailError", "NotThumbnailable", "BadScale", "Busy", "DiskFull",
    "parse_scale", "thumbnail_name", "parse_thumbnail_name", "is_thumbnail_of", "output_format",
    "jpeg_size_hint", "convert_args", "ghostscript_args", "pdf_resolution", "pdf_downscale",
    "run_command", "Toolchain", "Job", "Renderer", "Thumbnailer", "NullObserver",
]

logger = logging.getLogger(__name__)

# Input formats: name -> (ImageMagick coder, mimetype). PDF goes to Ghostscript, not a coder.
INPUTS = {
    "jpeg": ("jpeg", "image/jpeg"),
    "png": ("png", "image/png"),
    "gif": ("gif", "image/gif"),
    "tiff": ("tiff", "image/tiff"),
    "pdf": (None, "application/pdf"),
    "heic": ("heic", "image/heic"),
    "heif": ("heic", "image/heif"),
    "webp": ("webp", "image/webp"),
    "bmp": ("bmp", "image/bmp"),
}

# COMPAT: the reference forces '.png' when mimetypes.guess_type(name) is PDF, TIFF, HEIC or
# HEIF; these are the extensions mime.types maps to those types (guess_type ignores case).
FORCE_PNG_EXTENSIONS = frozenset((".pdf", ".tif", ".tiff", ".heic", ".heif"))

# Output format by the thumbnail name's extension. A name whose extension is not listed here
# (no extension, '.att', '.xyz', ...) gets PNG data; the caller serves it with the returned type.
OUTPUTS = {".jpg": "jpeg", ".jpeg": "jpeg", ".jpe": "jpeg", ".jfif": "jpeg", ".png": "png",
           ".gif": "gif", ".webp": "webp", ".bmp": "bmp"}
CONTENT_TYPES = {"jpeg": "image/jpeg", "png": "image/png", "gif": "image/gif",
                 "webp": "image/webp", "bmp": "image/bmp"}

PDF_MAX_DPI = 300.0  # bounds the render when the page size guess is far too small
# PDF pages render at up to PDF_SUPERSAMPLE x the thumbnail's resolution and Ghostscript
# box-averages that down (-dDownScaleFactor): every mark is antialiased by its coverage, and
# it costs less than -dGraphicsAlphaBits on pages of thousands of paths (half, on a map).
# The render's long side stays within PDF_RENDER_SIDE.
PDF_SUPERSAMPLE = 4
PDF_RENDER_SIDE = 2400
# Raster sources more than PRESHRINK_ABOVE x the scale are first box-averaged to PRESHRINK x
# the scale (cheap and alias-free), so the sharp final filter runs on a small image.
PRESHRINK = 2
PRESHRINK_ABOVE = 4
# Formats whose header size is exactly the size ImageMagick decodes for [0]. Not GIF (a first
# frame smaller than the screen), WebP (an animation's canvas), HEIC/HEIF (libheif applies the
# rotation property): forcing their header's aspect ratio could distort them.
EXACT_SIZE_FORMATS = frozenset(("png", "bmp", "tiff", "jpeg"))
DEFAULT_MAX_PIXELS = 100 * 1000 * 1000
DEFAULT_MAX_QUEUE = 64
DEFAULT_RESOURCE_LIMITS = (("memory", "512MiB"), ("map", "1GiB"), ("disk", "4GiB"),
                           ("area", "128MP"), ("width", "64KP"), ("height", "64KP"))
PROBE_TIMEOUT = 20
LOCK_STRIPES = 64  # lock files in lock_dir; targets share them by a hash of their path
COUNT_BYTES = 8  # a lock file holds how many thumbnails of its stripe were published
STDERR_LOG_CHARS = 2000
# A failed render on a filesystem with less free space than this is put down to a full disk.
DISK_FULL_BYTES = 1024 * 1024
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
DISK_FULL_MESSAGE = "no space left to write the thumbnail"
LEASE_MARGIN = 30  # seconds a lease outlives the conversion timeout (fetching, publishing)
LEASE_POLL = 0.25  # seconds between looks for a thumbnail another instance is rendering

# SECURITY: ImageMagick expands these in file names ('%d' scene numbers, globs, '[...]'
# subimage specs) and Ghostscript expands '%' in its output file; such paths never reach argv.
_IM_SPECIAL = re.compile(r"[%*?\[\]{}]")
_SCALE = re.compile(r"[0-9]+\Z")
_THUMBNAIL_STEM = re.compile(r"(.+)_([0-9]+)\Z", re.S)  # greedy: the last '_<digits>'
_FORMAT_LINE = re.compile(r"\s*([A-Z0-9-]+)\*?\s+\S+\s+([r-])([w-])[+-]")


class ThumbnailError(Exception):
    """Conversion failed: bad, hostile or corrupt file, or a converter error."""


class NotThumbnailable(ThumbnailError):
    """This type cannot be thumbnailed (here)."""


class BadScale(ThumbnailError):
    """The requested scale is missing, not a positive integer, or too large."""


class DiskFull(ThumbnailError):
    """The thumbnail directory's filesystem is full; nothing was published, retry later."""


class Busy(ThumbnailError):
    """The conversion queue is full; retry after `retry_after` seconds."""

    def __init__(self, message="thumbnail queue full", retry_after=1):
        super().__init__(message, retry_after)
        self.retry_after = retry_after

    def __str__(self):
        return self.args[0]


# ---------------------------------------------------------------------------- naming

def parse_scale(value: Optional[str], max_scale: int, sizes: Optional[Iterable[int]]) -> int:
    """Return the size to render for the `scale` query value.

    A positive decimal integer without sign or spaces. With `sizes` (a ladder) it snaps up to
    the next rung, and above the top rung the top rung is served; otherwise it must not exceed
    `max_scale`. Raise BadScale with a one-line reason.
    """
    if not value:
        raise BadScale("missing scale")
    if not _SCALE.match(value):
        raise BadScale("scale must be a positive integer: %r" % value[:20])
    # NOTE: no int() on huge digit strings (slow, and limited on 3.11+); they are just "too big".
    scale = int(value) if len(value) <= 12 else math.inf
    if scale <= 0:
        raise BadScale("scale must be a positive integer: %r" % value)
    if sizes:
        rungs = sorted(sizes)
        return next((rung for rung in rungs if rung >= scale), rungs[-1])
    if scale > max_scale:
        raise BadScale("scale above the maximum of %d" % max_scale)
    return scale


def thumbnail_name(name: str, scale: int) -> str:
    """Return the reference cache name '<root>_<scale><ext>' ('.png' for PDF/TIFF/HEIC/HEIF)."""
    root, ext = os.path.splitext(name)
    if ext.lower() in FORCE_PNG_EXTENSIONS:
        ext = ".png"
    return "%s_%d%s" % (root, scale, ext)


def parse_thumbnail_name(candidate: str) -> Optional[Tuple[str, int, str]]:
    """Return (root, scale, ext) of a '<root>_<digits><ext>' thumbnail name, or None.

    The one rule for what is a thumbnail name (delete, prune and fsck all use it): any number
    of digits, as the reference wrote whatever integer it was asked for.
    """
    stem, ext = os.path.splitext(candidate)
    match = _THUMBNAIL_STEM.match(stem)
    return (match.group(1), int(match.group(2)), ext) if match else None


def is_thumbnail_of(name: str, candidate: str) -> bool:
    """Tell whether `candidate` is exactly '<root>_<digits><ext or .png>' for `name`."""
    parsed = parse_thumbnail_name(candidate)
    if parsed is None:
        return False
    root, ext = os.path.splitext(name)
    return parsed[0] == root and parsed[2] in (ext, ".png")


def output_format(target_path: str) -> str:
    """Return the format written for a thumbnail file name (by its extension, else PNG)."""
    return OUTPUTS.get(os.path.splitext(target_path)[1].lower(), "png")


# ---------------------------------------------------------------------------- argv builders (pure)

def pdf_resolution(page_size: Tuple[float, float], scale: int) -> float:
    """Return the dpi that renders a page of `page_size` points with its long side <= scale."""
    # Rounded down: a page one pixel too big would cost a second, ImageMagick pass.
    dpi = math.floor(scale * 72000.0 / max(page_size)) / 1000.0
    return min(PDF_MAX_DPI, max(1.0, dpi))


def pdf_downscale(scale: int) -> int:
    """Return the supersampling factor for a PDF thumbnail of `scale` (1 to PDF_SUPERSAMPLE)."""
    return max(1, min(PDF_SUPERSAMPLE, PDF_RENDER_SIDE // max(1, scale)))


def ghostscript_args(gs: str, source: str, target: str, dpi: float, downscale: int = 1
                     ) -> List[str]:
    """Return gs argv rendering page 1 of `source` (a PDF) to the PNG `target` on white.

    The page renders at `dpi` x `downscale` and Ghostscript averages each downscale x
    downscale block into one pixel; without supersampling its alpha bits antialias instead.
    """
    # -dDOINTERPOLATE: images (a scanned page is one big image) are filtered down, not
    # point-sampled, which would alias whatever the supersampling.
    argv = [gs, "-dSAFER", "-dBATCH", "-dNOPAUSE", "-dQUIET", "-dFirstPage=1", "-dLastPage=1",
            "-sDEVICE=png16m", "-r%g" % round(dpi * downscale, 3), "-dDOINTERPOLATE"]
    if downscale > 1:
        argv.append("-dDownScaleFactor=%d" % downscale)
    else:
        argv += ["-dTextAlphaBits=4", "-dGraphicsAlphaBits=4"]
    return argv + ["-o", target, "-f", source]


def jpeg_size_hint(size: Optional[Tuple[int, int]], scale: int) -> Optional[Tuple[int, int]]:
    """Return the `jpeg:size` decode hint for a JPEG of `size`, or None when it cannot help.

    libjpeg then decodes at a reduced scale (M/8) that is still at least twice the thumbnail.
    The hint keeps the image's aspect ratio: ImageMagick picks a scale covering both hinted
    sides, and libjpeg-turbo scales *up* to reach them (a 60x30 JPEG hinted 60x60 decodes at
    120x60), so a hint must never exceed the image.
    """
    if not size or max(size) <= 2 * scale:
        return None
    longest = max(size)
    return tuple(max(1, int(math.ceil(2.0 * scale * side / longest))) for side in size)


def _preshrink_geometry(size: Optional[Tuple[int, int]], scale: int,
                        exact: bool = True) -> Optional[str]:
    """Return the box pre-shrink's -scale geometry for a source of `size`, or None.

    With an `exact` known size it is exactly PRESHRINK x the thumbnail's own size (as -resize
    would round it), so the final pass lands on the same pixel size as one -resize would.
    """
    if size is not None and max(size) <= PRESHRINK_ABOVE * scale:
        return None
    if size is None or not exact:
        side = PRESHRINK * scale
        return "%dx%d>" % (side, side)  # keeps the aspect ratio; leaves smaller images alone
    width, height = size
    factor = min(float(scale) / width, float(scale) / height)
    fitted = [max(1, int(math.floor(side * factor + 0.5))) for side in size]
    return "%dx%d!" % tuple(PRESHRINK * side for side in fitted)


def convert_args(convert: str, source: str, in_fmt: str, target: str, out_fmt: str, scale: int,
                 limits: Iterable[Tuple[str, str]] = DEFAULT_RESOURCE_LIMITS,
                 size: Optional[Tuple[int, int]] = None) -> List[str]:
    """Return ImageMagick argv shrinking page 1 of `source` to fit scale x scale at `target`.

    Coders are explicit on both sides (`jpeg:/abs/src[0]`, `png:/abs/out`) so content can
    never choose one; paths must be absolute and free of ImageMagick's special characters.
    `size` is the source's stored (width, height), if known. The output is 8-bit sRGB with
    the EXIF orientation applied and no metadata.
    """
    argv = [convert]
    for name, value in limits:
        argv += ["-limit", name, str(value)]
    hint = jpeg_size_hint(size, scale) if in_fmt == "jpeg" else None
    if hint:
        # Decode large photos at 1/2..1/8 size: the biggest speed-up there is.
        argv += ["-define", "jpeg:size=%dx%d" % hint]
    argv.append("%s:%s[0]" % (INPUTS[in_fmt][0], source))
    preshrink = None if hint else _preshrink_geometry(size, scale,
                                                      in_fmt in EXACT_SIZE_FORMATS)
    if preshrink:
        # NOTE: not -thumbnail: its -sample pre-shrink drops pixels, so fine lines and text
        # alias. -scale averages every pixel (a box filter; faster than -filter Box -resize
        # on palette images), and the final Lanczos pass still has PRESHRINK x the
        # thumbnail to work from.
        argv += ["-scale", preshrink]
    # Orientation and colour work on the small image; -auto-orient reads the orientation
    # ImageMagick kept from the EXIF/TIFF tag, and -strip drops it only after.
    argv += ["-auto-orient", "+repage", "-colorspace", "sRGB",
             "-resize", "%dx%d>" % (scale, scale)]
    if out_fmt == "jpeg" and in_fmt != "jpeg":
        argv += ["-background", "white", "-alpha", "remove"]  # JPEG has no alpha
    if out_fmt == "jpeg":
        argv += ["-quality", "85"]
    elif out_fmt == "gif":
        # The GIF writer's own quantizer dithers (Riemersma): most of a GIF thumbnail's
        # time, and speckle on a 200 px image. An adaptive palette without dither instead.
        argv += ["+dither", "-treedepth", "6", "-colors", "256"]
    argv += ["-depth", "8", "-strip", "%s:%s" % (out_fmt, target)]
    return argv


# ---------------------------------------------------------------------------- processes

def run_command(argv: List[str], timeout: float) -> subprocess.CompletedProcess:
    """Run argv in its own process group; on timeout kill the whole group.

    Raise subprocess.TimeoutExpired on timeout, OSError if the program cannot start.
    """
    logger.debug("Invoking %s", subprocess.list2cmdline(argv))
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except BaseException:
        # Delegates (gs, ...) run as children: killing only the leader would leave them running.
        _kill_group(process.pid)
        process.communicate()
        raise
    return subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _find_program(names: Iterable[str]) -> Optional[str]:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    return None


# ---------------------------------------------------------------------------- toolchain

class Toolchain:
    """The converters of this machine: ImageMagick and Ghostscript, and what they can read.

    `run(argv, timeout)` returns a CompletedProcess-like object (returncode, stdout, stderr)
    and raises subprocess.TimeoutExpired or OSError; it is injectable for tests. The formats
    are probed once, on first use; engines that share a Toolchain share the probe.
    """

    def __init__(self, convert: Optional[str] = None, gs: Optional[str] = None,
                 run: Callable = run_command):
        self.convert = convert or _find_program(("magick", "convert"))
        self.gs = gs or _find_program(("gs",))
        self.run = run
        self._lock = threading.Lock()
        self._formats = None

    def formats(self) -> Dict[str, bool]:
        """Return which input formats this machine can thumbnail (probed once, then cached)."""
        with self._lock:
            if self._formats is None:
                self._formats = self._probe_formats()
            return dict(self._formats)

    def _probe_formats(self) -> Dict[str, bool]:
        readable = set()
        if self.convert:
            result = self._probe([self.convert, "-list", "format"])
            for line in (result or "").splitlines():
                match = _FORMAT_LINE.match(line)
                if match and match.group(2) == "r":
                    readable.add(match.group(1).lower())
        formats = {fmt: coder in readable for fmt, (coder, _) in INPUTS.items() if coder}
        # PDF pages are rendered by gs and, when needed, resized by convert as PNG.
        formats["pdf"] = bool(self.gs and "png" in readable
                              and self._probe([self.gs, "--version"]) is not None)
        missing = sorted(fmt for fmt, ok in formats.items() if not ok)
        if missing:
            logger.info("Thumbnails unavailable for: %s", ", ".join(missing))
        return formats

    def _probe(self, argv: List[str]) -> Optional[str]:
        try:
            result = self.run(argv, timeout=PROBE_TIMEOUT)
        except (OSError, subprocess.TimeoutExpired) as ex:
            logger.warning("Cannot run %s: %s", argv[0], ex)
            return None
        if result.returncode != 0:
            logger.warning("%s exited with %s", subprocess.list2cmdline(argv), result.returncode)
            return None
        return (result.stdout or b"").decode("utf-8", "replace")


# ---------------------------------------------------------------------------- engine

# One thumbnail to render: absolute source, its format, header size and mtime, target, scale.
# The target is the local file to render onto (None until the scheduler picks one); for
# Renderer.render_into, only its extension counts (it picks the output format).
Job = collections.namedtuple("Job", "source fmt size mtime_ns target scale")


class NullObserver:
    """What the engine reports to, when nobody listens (metrics.Metrics has the same methods)."""

    def observe_thumbnail(self, hit):
        """A thumbnail was asked for; `hit` if a fresh cached file answered it."""

    def observe_rejection(self):
        """A request got Busy because the queue was full."""

    def conversion_started(self):
        """A conversion got its slot and starts."""

    def conversion_finished(self, fmt, seconds, ok):
        """A conversion of input format `fmt` ended after `seconds`, successfully or not."""


class _Want(collections.namedtuple(
        "_Want", "key failure_key mtime_ns name scale is_fresh render store lease_key seen "
                 "rendered")):
    """One thumbnail asked for: when it is fresh, and how to render and publish it.

    `key` names the thumbnail (single flight, the cross-process lock); `failure_key` the
    source version and scale, so a new upload under the same name (new mtime) is tried again
    at once. `is_fresh()` judges the published thumbnail; `render(job, convert)` makes and
    publishes it, running the conversion itself as convert(job, work) (timed and reported).
    `store` (None: no leases) holds the lease `lease_key` while one instance renders it.
    `seen` is key's publication count (Thumbnailer._published) from before the request
    found the thumbnail missing, None if unknown. `rendered` is the list render() puts the
    leader's rendered file in (see Thumbnailer._render_and_save), or None.
    """

    __slots__ = ()

    @property
    def content_type(self):
        """Return the type the thumbnail is served with (by its name's extension)."""
        return CONTENT_TYPES[output_format(self.name)]


_NO_LEASE = object()  # the store could not give a lease: render without one


class _Flight:
    """One conversion in progress, shared by every request for the same thumbnail."""

    def __init__(self):
        self.done = threading.Event()
        self.error = None


class Thumbnailer:
    """Render thumbnails: one conversion per target, bounded concurrency, failures remembered.

    The converters come as one `tools` (a Toolchain), else one is made from `convert`, `gs`
    and `run` (see Toolchain). The conversions themselves are the `renderer`'s (a Renderer
    over the tools by default; for tests, anything with render(job) and
    render_into(job, workdir)).

    Within a process, requests for one target share one flight. With `lock_dir` (the same
    directory in every process on the store, e.g. the built-in server's workers), processes
    agree too: a flight's leader takes an flock(2) on one of LOCK_STRIPES files in `lock_dir`
    before it renders, and skips the render if another process made the thumbnail meanwhile
    (it asks the store again only if the lock file's publication count moved since its
    request looked: a remote store is asked once per cold thumbnail, not three times).
    With `leases`, instances on other hosts agree as well: the leader takes the store's lease
    on the thumbnail (store.try_lease) before it takes a slot; while another instance holds
    it, the leader waits for the thumbnail to appear (polling every `lease_poll` seconds with
    `sleep`), and renders itself only if it has not appeared when the holder's lease has
    expired twice over.
    """

    def __init__(self, convert: Optional[str] = None, gs: Optional[str] = None,
                 timeout: float = 60, max_workers: Optional[int] = None,
                 max_queue: int = DEFAULT_MAX_QUEUE, max_pixels: int = DEFAULT_MAX_PIXELS,
                 failure_ttl: float = 60, can_thumbnail: Optional[Iterable[str]] = None,
                 run: Callable = run_command,
                 limits: Iterable[Tuple[str, str]] = DEFAULT_RESOURCE_LIMITS,
                 clock: Callable[[], float] = time.monotonic, observer=None,
                 lock_dir: Optional[str] = None, tools: Optional[Toolchain] = None,
                 renderer=None, leases: bool = False, sleep: Callable = time.sleep):
        self.tools = tools or Toolchain(convert, gs, run)
        self.renderer = renderer or Renderer(self.tools, timeout, limits, max_pixels)
        self.max_workers = max_workers or os.cpu_count() or 1
        self.max_queue = max_queue
        self.max_pixels = max_pixels
        self.failure_ttl = failure_ttl
        self.can_thumbnail = None if can_thumbnail is None else frozenset(can_thumbnail)
        self._clock = clock
        self.observer = observer or NullObserver()
        self.lock_dir = lock_dir
        self.leases = leases
        self.lease_ttl = timeout + LEASE_MARGIN
        self.lease_poll = LEASE_POLL
        self._sleep = sleep
        self._lock = threading.Lock()
        self._slots = threading.Semaphore(self.max_workers)
        self._flights = {}  # _Want.key -> _Flight
        self._pending = 0  # conversions running or waiting for a slot
        self._failures = {}  # _Want.failure_key -> (expires, exception type, args)
        self._average_seconds = 1.0

    # -- public API

    def open_thumbnail(self, store, coll: Optional[str], name: str, scale: int, options=None):
        """Return (StoredFile, content type) of the thumbnail of original `name` at `scale`.

        A fresh cached thumbnail is opened with the freshness check itself
        (store.open_fresh_thumbnail: one round trip to a remote store); else make() makes it
        (without looking again) and it is opened with the storage.ReadOptions `options`.
        The flight's leader on a store without local paths (a bucket) gets the file it
        rendered instead, with the FileInfo the store published it with: a StoredFile
        whose status is None, for the HTTP layer to answer `options` itself (no GET of
        what was just uploaded). Raise what thumbnail_of() raises.
        """
        thumb_name = thumbnail_name(name, scale)
        seen = self._published((coll, thumb_name))  # before the look: see _made_meanwhile
        cached, source = store.open_fresh_thumbnail(coll, name, thumb_name, options)
        self.observer.observe_thumbnail(cached is not None)
        if cached is not None:
            return cached, CONTENT_TYPES[output_format(thumb_name)]
        rendered = []  # the leader's rendered file, opened (see _render_and_save)
        try:
            content_type = self.make(store, coll, name, scale, source, seen, rendered)
        except BaseException:
            for handle in rendered:
                handle.close()
            raise
        if rendered:
            return rendered[0], content_type
        return store.open(coll, thumb_name, THUMBNAIL, options), content_type

    def thumbnail_of(self, store, coll: Optional[str], name: str, scale: int) -> Tuple[str, str]:
        """Ensure `store` holds the thumbnail of original `name` at `scale`.

        Return (thumbnail name, content type); the thumbnail is then store.open()-able as a
        storage.THUMBNAIL. The store judges whether its thumbnail is fresh for this version
        of the original (store.thumbnail_is_fresh); else the flight's leader fetches the
        original (store.local_original(): its format is checked from its first bytes before
        the rest is fetched), renders it into a scratch directory and publishes it with
        store.save_thumbnail(), tagged with the version it fetched. Raise MissingFile (no
        original), UnknownCollection, UnsafeName and whatever thumbnail() raises.
        """
        thumb_name = thumbnail_name(name, scale)
        seen = self._published((coll, thumb_name))  # before the look: see _made_meanwhile
        source = store.stat(coll, name)
        fresh = store.thumbnail_is_fresh(coll, thumb_name, source)
        self.observer.observe_thumbnail(fresh)
        if fresh:
            return thumb_name, CONTENT_TYPES[output_format(thumb_name)]
        return thumb_name, self.make(store, coll, name, scale, source, seen)

    def make(self, store, coll: Optional[str], name: str, scale: int, source: FileInfo,
             seen: Optional[int] = None, rendered: Optional[list] = None) -> str:
        """Make the thumbnail of original `name` at `scale`, just found missing or stale.

        `source` is the original's FileInfo the look found; `seen` the thumbnail's
        publication count from before it (None: unknown). With a `rendered` list, the
        flight's leader appends the file it rendered and published, opened as a StoredFile
        with its stored FileInfo, if the store has no local path for it (the caller closes
        it). Return the content type; raise what thumbnail_of() raises.
        """
        thumb_name = thumbnail_name(name, scale)

        def is_fresh():
            return store.thumbnail_is_fresh(coll, thumb_name, source)

        def render(job, convert):
            # Only the flight's leader fetches the original (a download, from a remote store),
            # and inspects it: the format from its first bytes, before the rest is fetched.
            with store.local_original(coll, name, self.check_format) as (path, fetched):
                fmt, size = self.inspect(path)
                # The version fetched is what the thumbnail is tagged with (and dated after).
                job = job._replace(source=os.path.abspath(path), fmt=fmt, size=size,
                                   mtime_ns=fetched.mtime_ns)
                return convert(job, lambda: self._render_and_save(store, coll, thumb_name,
                                                                  job, fetched, rendered))

        lease_key = ("thumbnail " + store.static_name(coll, thumb_name, THUMBNAIL)
                     if self.leases else None)
        # The ETag names the version (a local store's is made of the mtime and size).
        want = _Want((coll, thumb_name), (coll, name, source.etag, scale), source.mtime_ns,
                     thumb_name, scale, is_fresh, render, store if self.leases else None,
                     lease_key, seen, rendered)
        return self._ensure(want, Job(None, None, None, want.mtime_ns, None, scale))

    def thumbnail(self, source_path: str, target_path: str, scale: int) -> str:
        """Ensure `target_path` holds a thumbnail of `source_path`; return its content type.

        Renders when the target is missing or older than the source. Raise FileNotFoundError
        (no source), NotThumbnailable, DiskFull (no room to write it; not remembered),
        ThumbnailError (conversion failed, now or within failure_ttl) or Busy (queue full).
        """
        mtime_ns = os.stat(source_path).st_mtime_ns
        target_path = os.path.abspath(target_path)

        def render(job, convert):
            convert(job, lambda: self.renderer.render(job._replace(target=target_path)))

        want = _Want(target_path, (os.path.abspath(source_path), mtime_ns, scale), mtime_ns,
                     target_path, scale, lambda: _is_fresh(target_path, mtime_ns), render,
                     None, None, None, None)
        fresh = want.is_fresh()
        self.observer.observe_thumbnail(fresh)
        if fresh:
            return want.content_type
        fmt, size = self.inspect(source_path)
        return self._ensure(want, Job(os.path.abspath(source_path), fmt, size, mtime_ns, None,
                                      scale))

    def _ensure(self, want: "_Want", job: Job) -> str:
        """Render a stale thumbnail once per key (single flight); return its content type.

        The leader looks at the thumbnail again under the process lock (see _lead), not here
        under the engine's lock: that look may be a round trip to a remote store.
        """
        with self._lock:
            self._raise_remembered_failure(want.failure_key)
            flight = self._flights.get(want.key)
            leader = flight is None
            if leader:
                flight = self._start_flight(want.key)
        if leader:
            self._lead(flight, want, job)
        else:
            flight.done.wait()
            if flight.error is not None:
                raise _copy_error(flight.error)
        return want.content_type

    def _render_and_save(self, store, coll: Optional[str], thumb_name: str, job: Job,
                         source, rendered: Optional[list] = None):
        """Render `job` into a private scratch directory, then publish it into the store.

        The scratch directory is beside the thumbnail when the store has a local path for
        it (so publishing is one rename on one filesystem), else in the system's temp dir.
        The renderer works in that directory too: one private directory, one rename.
        Without a local path and with a `rendered` list, the rendered file is appended to it,
        open, as a StoredFile with the FileInfo store.publish_thumbnail() gave, and the
        upload may still be going on: then return its Future (the scratch directory goes
        when it is done), else None (published).
        """
        local = store.local_path(coll, thumb_name, THUMBNAIL)
        parent = os.path.dirname(local) if local is not None else None
        with _disk_full_as_error(parent or tempfile.gettempdir()):
            if parent is not None:
                os.makedirs(parent, exist_ok=True)
            scratch = tempfile.mkdtemp(prefix=RENDER_PREFIX, suffix=TEMP_SUFFIX, dir=parent)
        publishing = None
        try:
            # Inside the try: the free space is judged while the partial output still fills
            # the disk, before the scratch directory is removed.
            with _disk_full_as_error(scratch):
                # The thumbnail's name only picks the output format (by its extension).
                staged = self.renderer.render_into(job._replace(target=thumb_name), scratch)
                if rendered is None or local is not None:
                    store.save_thumbnail(coll, thumb_name, staged, source)
                    return None
                info, publishing = store.publish_thumbnail(coll, thumb_name, staged, source)
            if info is not None:
                # Opened before the scratch directory goes: an open file outlives its
                # removal (POSIX), so the first answer needs no GET of what was just put.
                # (A local store's own file is served instead: sendfile, FILE_OFFLOAD.)
                rendered.append(StoredFile(open(staged, "rb"), info))
            if publishing.done():
                publishing.result()  # its error, if any, is this request's
                publishing = None
            return publishing
        finally:
            if publishing is None:
                shutil.rmtree(scratch, ignore_errors=True)
            else:
                publishing.add_done_callback(
                    lambda _: shutil.rmtree(scratch, ignore_errors=True))

    def inspect(self, source_path: str) -> Tuple[str, Optional[Tuple[int, int]]]:
        """Return the source's real format and header size after the cheap checks.

        Checks the magic bytes, that the format is allowed and supported, and the pixel cap.
        Raise FileNotFoundError, NotThumbnailable or ThumbnailError (too many pixels).
        """
        with open(source_path, "rb") as f:
            return self.inspect_file(f)

    def inspect_file(self, f) -> Tuple[str, Optional[Tuple[int, int]]]:
        """Return what inspect() does, of an open seekable binary file at its start."""
        fmt = self.check_format(f.read(SNIFF_BYTES))
        size = read_dimensions(f, fmt)
        _check_pixels(size, fmt, self.max_pixels)
        return fmt, size

    def check_format(self, head: bytes) -> str:
        """Return the format of a file starting with `head`, if allowed and supported here.

        Raise NotThumbnailable otherwise.
        """
        fmt = sniff_format(head[:SNIFF_BYTES])
        if fmt is None:
            raise NotThumbnailable("not a thumbnailable image or PDF")
        if self.can_thumbnail is not None and INPUTS[fmt][1] not in self.can_thumbnail:
            raise NotThumbnailable("%s thumbnails are disabled" % INPUTS[fmt][1])
        if not self.formats().get(fmt):
            raise NotThumbnailable("no %s converter on this server" % fmt.upper())
        return fmt

    @property
    def pending(self) -> int:
        """Return how many conversions are running or waiting for a slot."""
        return self._pending

    @property
    def convert(self) -> Optional[str]:
        """Return the ImageMagick program (None if there is none)."""
        return self.tools.convert

    @property
    def gs(self) -> Optional[str]:
        """Return the Ghostscript program (None if there is none)."""
        return self.tools.gs

    def formats(self) -> Dict[str, bool]:
        """Return which input formats this machine can thumbnail (probed once, then cached)."""
        return self.tools.formats()

    # -- single flight and bounded pool

    def _start_flight(self, key) -> _Flight:
        # Called with self._lock held.
        if self._pending >= self.max_workers + self.max_queue:
            estimate = self._average_seconds * self._pending / self.max_workers
            self.observer.observe_rejection()
            raise Busy(retry_after=max(1, min(60, int(math.ceil(estimate)))))
        flight = self._flights[key] = _Flight()
        self._pending += 1
        return flight

    def _lead(self, flight: _Flight, want: "_Want", job: Job) -> None:
        """Make the thumbnail as the flight's leader; end the flight once it is published.

        A store still uploading it when the render returns (see _render_and_save) keeps
        the process lock, the lease and the flight until its upload is done (_finish):
        until then, other requests wait for it instead of rendering it again.
        """
        publishing = None
        try:
            with contextlib.ExitStack() as held:
                # The lock comes before the slot: waiting for another process holds no slot.
                lock = held.enter_context(self._process_lock(want.key))
                if self._made_meanwhile(want, lock):
                    return
                if not held.enter_context(self._lease(want)):
                    return  # another instance made it
                with self._slots:
                    publishing = want.render(job, self._convert)
                if publishing is None:
                    _count_publication(lock)
                    return
                still_held = held.pop_all()
        except BaseException as ex:
            self._fail(flight, want, ex)
            raise
        finally:
            if publishing is None:
                self._end_flight(flight, want)
        for handle in want.rendered or ():
            # The answer is sent meanwhile; its end waits for the flight's (so whoever
            # closed it finds the thumbnail published, the lock and lease released).
            handle.on_close = flight.done.wait
        publishing.add_done_callback(
            lambda done: self._finish(flight, want, done, still_held, lock))

    def _finish(self, flight: _Flight, want: "_Want", done, held, lock: Optional[int]) -> None:
        """End a flight whose thumbnail the store published after the render returned.

        Runs where the store's upload ended (its Future's callback). The leader's request
        has its answer already; requests that waited for the flight get the upload's error.
        """
        try:
            done.result()
            _count_publication(lock)
        except BaseException as ex:  # anything: the flight must end, whatever happened
            logger.warning("Cannot publish thumbnail %s: %s", want.name, ex)
            self._fail(flight, want, ex)
        finally:
            try:
                held.close()  # the lease and the process lock
            finally:
                self._end_flight(flight, want)

    def _fail(self, flight: _Flight, want: "_Want", ex: BaseException) -> None:
        """Record the flight's error for its waiters (and remember a conversion failure)."""
        flight.error = ex
        # A full disk is the store's fault, not the file's: try again once there is room.
        if isinstance(ex, ThumbnailError) and not isinstance(ex, DiskFull):
            self._remember_failure(want.failure_key, ex)

    def _end_flight(self, flight: _Flight, want: "_Want") -> None:
        """Forget the flight and wake the requests waiting for it."""
        with self._lock:
            del self._flights[want.key]
            self._pending -= 1
        flight.done.set()

    def _made_meanwhile(self, want: "_Want", lock: Optional[int]) -> bool:
        """Tell whether the thumbnail is fresh now, under the process lock `lock` (a fd).

        Another thread or process made it since the request looked, or it did not: if the
        lock file's publication count is still what the request read before it looked,
        nobody on this lock_dir published since (no need to ask the store again).
        """
        if lock is not None and want.seen is not None and _read_count(lock) == want.seen:
            return False
        return want.is_fresh()

    def _published(self, key) -> Optional[int]:
        """Return the publication count of `key`'s lock file; None without lock_dir.

        Read before a request looks for the thumbnail (see _made_meanwhile). Every key of
        the stripe counts: another key's publication only costs one more look.
        """
        if self.lock_dir is None or fcntl is None:
            return None
        try:
            fd = os.open(self._lock_path(key), os.O_RDONLY)
        except FileNotFoundError:
            return 0
        except OSError:
            return None
        try:
            return _read_count(fd)
        finally:
            os.close(fd)

    def _lock_path(self, key) -> str:
        """Return the lock file of `key`'s stripe in lock_dir."""
        # NOTE: crc32, not hash(): every process must pick the same stripe for a key.
        stripe = zlib.crc32(str(key).encode("utf-8", "surrogateescape")) % LOCK_STRIPES
        return os.path.join(self.lock_dir, "%02d" % stripe)

    def _convert(self, job: Job, work: Callable[[], Any]) -> Any:
        """Run work(), the conversion of `job`: timed, reported and averaged (Busy's estimate).

        Return what work() returns.
        """
        started = self._clock()
        self.observer.conversion_started()
        ok = False
        try:
            result = work()
            ok = True
        finally:
            elapsed = self._clock() - started
            self.observer.conversion_finished(job.fmt, elapsed, ok)
        self._average_seconds = 0.8 * self._average_seconds + 0.2 * elapsed
        return result

    @contextlib.contextmanager
    def _process_lock(self, key):
        """Hold `key`'s striped lock file in lock_dir; yield its fd (None without lock_dir).

        Raise OSError.
        """
        if self.lock_dir is None or fcntl is None:
            yield None
            return
        os.makedirs(self.lock_dir, exist_ok=True)
        fd = os.open(self._lock_path(key), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            # Each call opens its own descriptor, so threads of one process exclude each
            # other too; the lock goes with the descriptor, even if the process dies.
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield fd
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _lease(self, want: "_Want"):
        """Hold the store's lease on the thumbnail; yield whether this instance renders it.

        Without leases, yield True. Waits (bounded) while another instance holds the lease.
        """
        if want.store is None:
            yield True
            return
        lease, waited = self._try_lease(want), 0.0
        while lease is None:
            if want.is_fresh():
                yield False  # the holder published it
                return
            if waited >= 2 * self.lease_ttl:
                logger.warning("Thumbnail %s still missing after %.0f s under another "
                               "instance's lease: rendering it here", want.lease_key, waited)
                break
            self._sleep(self.lease_poll)
            waited += self.lease_poll
            if waited >= self.lease_ttl:
                lease = self._try_lease(want)  # the holder may have died: its lease expired
        try:
            with self._renewing(want, lease):
                # Checked again under the lease: a holder may have published and released
                # it between our first look and our taking the lease.
                yield not want.is_fresh()
        finally:
            if lease not in (None, _NO_LEASE):
                try:
                    want.store.release(lease)
                except (OSError, StorageError) as ex:
                    logger.warning("Cannot release the lease on %s (it expires): %s",
                                   want.lease_key, ex)

    @contextlib.contextmanager
    def _renewing(self, want: "_Want", lease):
        """Renew `lease` every third of its ttl on a thread while the caller holds it.

        A leader may wait for a slot, fetch a large original and upload for longer than a
        lease lasts; renewed, the lease keeps the other instances waiting for its thumbnail
        instead of rendering it too. The thread is joined before the lease is released (a
        renewal after the release would write it back).
        """
        if lease in (None, _NO_LEASE):
            yield
            return
        stop = threading.Event()
        renewer = threading.Thread(target=self._keep, args=(want, lease, stop), daemon=True,
                                   name="thumbnail-lease")
        renewer.start()
        try:
            yield
        finally:
            stop.set()
            renewer.join()

    def _keep(self, want: "_Want", lease, stop: threading.Event) -> None:
        """Renew `lease` each third of its ttl until `stop` is set or the lease is lost."""
        while not stop.wait(lease.ttl / 3):
            try:
                if not want.store.renew(lease):
                    logger.warning("Lost the lease on %s (it expired): another instance may "
                                   "render it too", want.lease_key)
                    return
            except (OSError, StorageError) as ex:
                logger.warning("Cannot renew the lease on %s: %s", want.lease_key, ex)

    def _try_lease(self, want: "_Want"):
        """Return the store's lease on the thumbnail, None if held, _NO_LEASE on a store error."""
        try:
            return want.store.try_lease(want.lease_key, self.lease_ttl)
        except (OSError, StorageError) as ex:
            # A lease only saves duplicate work: without one, render (the store's own
            # failure, if any, then shows where the thumbnail is published).
            logger.warning("Cannot take the lease on %s: %s", want.lease_key, ex)
            return _NO_LEASE

    def _remember_failure(self, key: tuple, ex: ThumbnailError) -> None:
        now = self._clock()
        with self._lock:
            if len(self._failures) >= 1024:
                self._failures = {k: v for k, v in self._failures.items() if v[0] > now}
            self._failures[key] = (now + self.failure_ttl, type(ex), ex.args)

    def _raise_remembered_failure(self, key: tuple) -> None:
        # Called with self._lock held.
        failure = self._failures.get(key)
        if failure is None:
            return
        expires, error_type, args = failure
        if expires <= self._clock():
            del self._failures[key]
            return
        raise error_type(*args)


class Renderer:
    """Render one Job with the toolchain: ImageMagick, and Ghostscript for PDF pages.

    The Thumbnailer decides when to render (single flight, slots, failures); the renderer
    only converts. `render(job)` publishes job.target atomically, dated no earlier than the
    source, or raises ThumbnailError (DiskFull when the target's filesystem has no room);
    `render_into(job, workdir)` leaves the file in a directory the caller owns, for callers
    that publish it themselves (a store).
    """

    def __init__(self, tools: Toolchain, timeout: float = 60,
                 limits: Iterable[Tuple[str, str]] = DEFAULT_RESOURCE_LIMITS,
                 max_pixels: int = DEFAULT_MAX_PIXELS):
        self.tools = tools
        self.timeout = timeout
        self.limits = tuple(limits) + (("time", str(int(math.ceil(timeout)))),)
        self.max_pixels = max_pixels

    def render(self, job: Job) -> None:
        """Render into a private RENDER_PREFIX dir beside the target, then publish atomically.

        Raise DiskFull when the target's filesystem has no room (the work dir is removed).
        """
        target_dir = os.path.dirname(job.target)
        with _disk_full_as_error(target_dir):
            os.makedirs(target_dir, exist_ok=True)
            workdir = tempfile.mkdtemp(prefix=RENDER_PREFIX, suffix=TEMP_SUFFIX, dir=target_dir)
        try:
            # Inside the try: the free space is judged while the partial output still fills
            # the disk, before the work dir is removed.
            with _disk_full_as_error(target_dir):
                os.replace(self.render_into(job, workdir), job.target)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    def render_into(self, job: Job, workdir: str) -> str:
        """Render job.source in `workdir`; return the finished file's path there.

        `workdir` is a private directory the caller owns (and removes, with any partial
        output); job.target only names the output format, by its extension. The file is
        checked and dated no earlier than the source. Raise ThumbnailError.
        """
        if _IM_SPECIAL.search(workdir):
            raise ThumbnailError("thumbnail directory name has characters ImageMagick "
                                 "interprets: %r" % os.path.dirname(workdir))
        source = _safe_source(job.source, workdir)
        out = os.path.join(workdir, "out")
        out_fmt = output_format(job.target)
        if job.fmt == "pdf":
            self._render_pdf(source, workdir, out, out_fmt, job.scale)
        else:
            self._call(convert_args(self.tools.convert, source, job.fmt, out, out_fmt,
                                    job.scale, self.limits, job.size))
        self._check_output(out, out_fmt)
        if os.stat(out).st_mtime_ns < job.mtime_ns:
            # A source dated in the future must not leave its thumbnail stale forever.
            os.utime(out, ns=(job.mtime_ns, job.mtime_ns))
        return out

    def _render_pdf(self, source: str, workdir: str, out: str, out_fmt: str, scale: int) -> None:
        # NOTE: a page has no pixel size; render it straight at the requested size with
        # Ghostscript (stock ImageMagick policies forbid PDF), and resize only if the page-size
        # guess was off or the name asks for another format.
        page = os.path.join(workdir, "page.png")
        dpi = pdf_resolution(read_pdf_page_size(source), scale)
        self._call(ghostscript_args(self.tools.gs, source, page, dpi, pdf_downscale(scale)))
        size = self._check_output(page, "png")
        if out_fmt == "png" and max(size) <= scale:
            os.replace(page, out)
        else:
            self._call(convert_args(self.tools.convert, page, "png", out, out_fmt, scale,
                                    self.limits, size))

    def _check_output(self, path: str, fmt: str) -> Tuple[int, int]:
        if _free_bytes(os.path.dirname(path)) < DISK_FULL_BYTES:
            # Ghostscript exits 0 when its write fails: a full disk may have cut this short.
            raise DiskFull(DISK_FULL_MESSAGE)
        try:
            with open(path, "rb") as f:
                size = read_dimensions(f, fmt)
        except FileNotFoundError:
            size = None
        if not size:
            raise ThumbnailError("the converter produced no %s image" % fmt.upper())
        _check_pixels(size, fmt, self.max_pixels)
        return size

    def _call(self, argv: List[str]) -> None:
        tool = os.path.basename(argv[0])
        try:
            result = self.tools.run(argv, timeout=self.timeout)
        except subprocess.TimeoutExpired as ex:
            raise ThumbnailError("%s timed out after %gs" % (tool, self.timeout)) from ex
        except OSError as ex:
            raise ThumbnailError("cannot run %s: %s" % (argv[0], ex)) from ex
        if result.returncode != 0:
            stderr = (result.stderr or b"").decode("utf-8", "replace")
            logger.warning("%s failed (exit %s): %s", subprocess.list2cmdline(argv),
                           result.returncode, stderr[-STDERR_LOG_CHARS:])
            # The client sees only the tool and status; paths and details stay in the log.
            raise ThumbnailError("%s could not convert this file (exit %s)"
                                 % (tool, result.returncode))


def _check_pixels(size: Optional[Tuple[int, int]], fmt: str, max_pixels: int) -> None:
    """Raise ThumbnailError if an image of `size` has no pixels or more than `max_pixels`."""
    if size is None:
        return
    width, height = size
    if width <= 0 or height <= 0:
        raise ThumbnailError("%s image has no pixels (%dx%d)" % (fmt.upper(), width, height))
    if width * height > max_pixels:
        raise ThumbnailError("image too large: %dx%d exceeds the %d-pixel limit"
                             % (width, height, max_pixels))


@contextlib.contextmanager
def _disk_full_as_error(directory: str):
    """Turn ENOSPC, or a converter failure on a full filesystem, into DiskFull."""
    try:
        yield
    except OSError as ex:
        if ex.errno not in DISK_FULL_ERRNOS:
            raise
        raise DiskFull(DISK_FULL_MESSAGE) from ex
    except ThumbnailError as ex:
        # NOTE: ImageMagick and Ghostscript report a failed write as their own error, never
        # as ENOSPC ("WriteBlob Failed"); only the filesystem's free space tells.
        if isinstance(ex, DiskFull) or _free_bytes(directory) >= DISK_FULL_BYTES:
            raise
        logger.error("Thumbnail failed on a full disk (%s): %s", directory, ex)
        raise DiskFull(DISK_FULL_MESSAGE) from ex


def _free_bytes(directory: str) -> float:
    """Return the bytes an unprivileged writer may still use in `directory`'s filesystem."""
    try:
        info = os.statvfs(directory)
    except (AttributeError, OSError):  # no statvfs (Windows), or the directory is gone
        return math.inf
    return info.f_bavail * info.f_frsize


def _is_fresh(target_path: str, source_mtime_ns: int) -> bool:
    try:
        return fresh_by_mtime(FileInfo.from_stat(os.stat(target_path)),
                              FileInfo(0, source_mtime_ns))
    except FileNotFoundError:
        return False


def _read_count(fd: int) -> int:
    """Return the publication count a lock file holds (0 when empty)."""
    # NOTE: read without the lock by _published: a torn read only costs one more look.
    return int.from_bytes(os.pread(fd, COUNT_BYTES, 0), "little")


def _count_publication(fd: Optional[int]) -> None:
    """Add one to the publication count of a lock file held with flock (no-op for None)."""
    if fd is not None:
        count = (_read_count(fd) + 1) % (1 << (8 * COUNT_BYTES))
        os.pwrite(fd, count.to_bytes(COUNT_BYTES, "little"), 0)


def _safe_source(source: str, workdir: str) -> str:
    """Return a path ImageMagick reads literally: the source, or a symlink to it if needed."""
    if not _IM_SPECIAL.search(source):
        return source
    link = os.path.join(workdir, "source")
    os.symlink(source, link)
    return link


def _copy_error(ex: BaseException) -> BaseException:
    """Return a fresh exception like `ex`, so waiting threads never share one traceback."""
    try:
        return type(ex)(*ex.args)
    except Exception:  # an exception type with an unusual constructor
        return ThumbnailError(str(ex))
