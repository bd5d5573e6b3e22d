"""HTTP plumbing: the Request and Response objects and file responses."""

import email.utils
import mimetypes
import os
import re
from http import HTTPStatus
from typing import NamedTuple
from urllib.parse import parse_qsl, quote
from wsgiref.util import FileWrapper

from . import errors
from .storage import ReadOptions

__all__ = ["Request", "Response", "Offload", "file_response", "read_options", "guess_type",
           "security_headers", "content_disposition", "http_date", "TEXT_PLAIN"]

TEXT_PLAIN = "text/plain; charset=utf-8"
FILE_BLOCK = 256 * 1024
MAX_FORM_BYTES = 64 * 1024

# NOTE: not every system's mime.types knows these; Specify stores all of them.
_EXTRA_TYPES = {".heic": "image/heic", ".heif": "image/heif", ".webp": "image/webp",
                ".tif": "image/tiff", ".tiff": "image/tiff", ".jpg": "image/jpeg",
                ".jpeg": "image/jpeg", ".png": "image/png", ".gif": "image/gif",
                ".pdf": "application/pdf", ".bmp": "image/bmp", ".txt": "text/plain"}
_RANGE_RE = re.compile(r"bytes=\s*([0-9]*)\s*-\s*([0-9]*)\s*")
_DIGITS_RE = re.compile(r"[0-9]+\Z")  # NOTE: str.isdigit() accepts '²', which int() refuses
MAX_HEADER_DIGITS = 18  # a header number above 10**18 (an exabyte) is "huge", never int()ed

# SECURITY: stored files are anyone's uploads, served from our origin (which is Specify 7's
# own where a site proxies us behind its nginx). security_headers() is the one place that
# decides how a served type may behave in a browser; every Response gets its answer.
NOSNIFF = ("X-Content-Type-Options", "nosniff")  # the type we send is the type it is
# Images (but SVG) never run script; the sandbox on them is defence in depth only (an
# image document in a tab or an <object> needs no script and no origin).
IMAGE_POLICY = "sandbox"
# Everything else can carry script (HTML, XHTML, SVG, XML, ...) or is unknown: a browser
# may show it, but only as a sandboxed document (unique origin, no script, forms, popups or
# plugins) that may load nothing; inline style keeps it legible.
ACTIVE_POLICY = "default-src 'none'; style-src 'unsafe-inline'; sandbox"
# Types a browser executes as script (<script src>, workers, service workers): the WHATWG
# "JavaScript MIME type essence" list.
_SCRIPT_TYPES = frozenset(
    ["application/ecmascript", "application/javascript", "application/x-ecmascript",
     "application/x-javascript", "text/ecmascript", "text/javascript", "text/jscript",
     "text/livescript", "text/x-ecmascript", "text/x-javascript"]
    + ["text/javascript1.%d" % minor for minor in range(6)])


class Request:
    """A thin, lazy view of a WSGI environ; `arrived` is when the request came in."""

    def __init__(self, environ, arrived):
        self.environ = environ
        self.arrived = arrived
        self.method = environ.get("REQUEST_METHOD", "GET").upper()
        self.script_name = _recode(environ.get("SCRIPT_NAME", "")).rstrip("/")
        self.path = _recode(environ.get("PATH_INFO", "")) or "/"
        self.route = None  # set by the app once matched
        self._query = None
        self._form = None

    @property
    def query(self):
        """Return the query parameters as a dict; duplicate keys: the last wins."""
        if self._query is None:
            # COMPAT: bottle keeps the last of duplicate keys; '+' is a space.
            self._query = dict(parse_qsl(self.environ.get("QUERY_STRING", ""),
                                         keep_blank_values=True, errors="replace"))
        return self._query

    def header(self, name, default=None):
        """Return a request header by its HTTP name, e.g. 'If-None-Match'."""
        key = name.upper().replace("-", "_")
        if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            key = "HTTP_" + key
        return self.environ.get(key, default)

    @property
    def content_length(self):
        """Return the body length, or None when the host delimits the body itself.

        Raises BadRequest for a malformed value, LengthRequired when the
        body length cannot be known.
        """
        value = self.environ.get("CONTENT_LENGTH", "").strip()
        if not value:
            if self.environ.get("wsgi.input_terminated"):
                return None  # NOTE: mod_wsgi with WSGIChunkedRequest signals EOF for us
            if self.method in ("POST", "PUT"):
                raise errors.LengthRequired()
            return 0
        if not _DIGITS_RE.match(value):
            raise errors.BadRequest("Invalid Content-Length.")
        length = _header_int(value)
        if length is None:
            raise errors.PayloadTooLarge("Content-Length too large.")
        return length

    @property
    def input(self):
        """Return the wsgi.input stream."""
        return self.environ["wsgi.input"]

    def form(self):
        """Return an application/x-www-form-urlencoded body as a dict (last key wins).

        The body is read once and kept: the token check and the handler both
        use it. Raises PayloadTooLarge beyond 64 KiB, BadRequest when incomplete.
        """
        if self._form is None:
            self._form = self._read_form()
        return self._form

    def _read_form(self):
        """Read and parse the urlencoded body; the errors of form()."""
        length = self.content_length
        if length is not None and length > MAX_FORM_BYTES:
            raise errors.PayloadTooLarge("Form body too large.")
        body = self.input.read(length if length is not None else MAX_FORM_BYTES + 1)
        if length is None and len(body) > MAX_FORM_BYTES:
            raise errors.PayloadTooLarge("Form body too large.")
        if length is not None and len(body) < length:
            raise errors.BadRequest("Incomplete request body.")
        ctype = (self.header("Content-Type") or "").split(";")[0].strip().lower()
        if body and ctype not in ("application/x-www-form-urlencoded", ""):
            raise errors.BadRequest("Expected an application/x-www-form-urlencoded body.")
        return dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))


def _recode(value):
    """Undo PEP 3333's latin-1 decoding of PATH_INFO: the bytes are UTF-8."""
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return value


class Response:
    """A status, headers and a body iterable; calling it serves it (a WSGI app)."""

    def __init__(self, body=b"", status=200, content_type=TEXT_PLAIN, headers=()):
        self.status = HTTPStatus(status)
        self.headers = list(headers)
        if content_type is not None:
            self.set_header("Content-Type", content_type)
            for name, value in security_headers(content_type):
                self.set_header(name, value)
        if isinstance(body, bytes):
            self.body = [body]
            self.set_header("Content-Length", str(len(body)))
        else:
            self.body = body

    def set_header(self, name, value):
        """Set a header, replacing any previous value of the same name."""
        lower = name.lower()
        self.headers = [(key, val) for key, val in self.headers if key.lower() != lower]
        self.headers.append((name, value))

    def get_header(self, name, default=None):
        """Return a header's value, or `default`."""
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return default

    def drop_body(self):
        """Close and discard the body, keeping the headers (HEAD)."""
        close = getattr(self.body, "close", None)
        if close is not None:
            close()
        self.body = []

    def __call__(self, environ, start_response):
        start_response("%d %s" % (self.status.value, self.status.phrase), self.headers)
        return self.body


def http_date(timestamp):
    """Format a Unix time as an RFC 7231 date."""
    return email.utils.formatdate(timestamp, usegmt=True)


def guess_type(name):
    """Return the Content-Type for a stored name (octet-stream when unknown).

    COMPAT: text types carry '; charset=UTF-8' as bottle's static_file adds.
    """
    ext = os.path.splitext(name)[1].lower()
    mimetype = _EXTRA_TYPES.get(ext) or mimetypes.guess_type("x" + ext)[0]
    if mimetype is None:
        # The reference falls back to text/html; octet-stream is the honest answer.
        return "application/octet-stream"
    if mimetype in _SCRIPT_TYPES:
        # SECURITY: with nosniff, a script type is the only one a browser will run from
        # <script src>, a worker or a service worker (which would then control every page of
        # our origin): a stored .js is text to look at, never a script of this origin.
        mimetype = "text/plain"
    if mimetype.startswith("text/"):
        return mimetype + "; charset=UTF-8"
    return mimetype


def security_headers(content_type):
    """Return the headers that keep a response of `content_type` from running script.

    Every response carries nosniff. PDF, audio and video get no CSP at all: no
    browser runs their content as script of the origin, and a sandbox breaks
    their viewers (Chromium 156 plays no audio opened in a tab under `sandbox`,
    and video shares that media document; its older PDF viewer, a plugin,
    loaded neither under `sandbox` nor under default-src 'none'). Images but
    SVG get IMAGE_POLICY; all else, unknown types and octet-stream included,
    ACTIVE_POLICY.
    """
    mimetype = content_type.split(";")[0].strip().lower()
    major, _, minor = mimetype.partition("/")
    if mimetype == "application/pdf" or major in ("audio", "video"):
        return [NOSNIFF]
    if major == "image" and "xml" not in minor and "svg" not in minor:
        return [NOSNIFF, ("Content-Security-Policy", IMAGE_POLICY)]
    return [NOSNIFF, ("Content-Security-Policy", ACTIVE_POLICY)]


def content_disposition(download_name):
    """Return an inline Content-Disposition for `download_name`, or None if empty.

    Only the last path component is kept. SECURITY: the name is
    percent-encoded (RFC 5987 UTF-8), so CR/LF can never reach the header.
    SECURITY: inline for every type, HTML and SVG included: Specify 7 shows
    originals in <img> and <object> and opens them in a new tab, where
    `attachment` would start a download instead each time a record is opened.
    security_headers() keeps their script from running; saving a file stays a
    browser's "Save as" or Specify's own Download button.
    """
    name = re.split(r"[/\\]", download_name or "")[-1]
    if not name:
        return None
    return "inline; filename*=utf-8''" + quote(name.encode("utf-8", "replace"), safe="")


class _LimitedFile:
    """A read()-able slice of an open file, for Range responses."""

    def __init__(self, handle, length):
        self.handle = handle
        self.remaining = length

    def read(self, size):
        data = self.handle.read(min(size, self.remaining))
        self.remaining -= len(data)
        return data

    def close(self):
        self.handle.close()


def _http_time(value):
    """Return an HTTP date header's epoch time, None if absent or unreadable."""
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value)
        return None if parsed is None else parsed.timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None  # a date we cannot read (year 99999, ...): send the file


def _etags(header):
    """Return the tags of an If-None-Match header as a tuple ('*' is one), None if absent."""
    if header is None:
        return None
    return tuple(tag.strip() for tag in header.split(","))


def _not_modified(request, etag, mtime):
    tags = _etags(request.header("If-None-Match"))
    if tags is not None:
        return tags == ("*",) or etag in tags
    since = _http_time(request.header("If-Modified-Since"))
    return since is not None and int(mtime) <= since


def _header_int(digits):
    """Return the value of an ASCII digit string, None above MAX_HEADER_DIGITS digits.

    SECURITY: int() is quadratic in the digits, and refuses more than 4300 on 3.11+.
    """
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= MAX_HEADER_DIGITS else None


def _range_bound(digits):
    """Return a Range bound, None if absent; a huge one is past any file's end."""
    if not digits:
        return None
    value = _header_int(digits)
    return 10 ** MAX_HEADER_DIGITS if value is None else value


def _range_bounds(header):
    """Return a single byte range's (first, last) as written (None where absent), or None.

    None means "send the whole file": multiple or malformed ranges (RFC 7233 allows it), or
    a last byte before the first.
    """
    match = _RANGE_RE.fullmatch(header)
    if match is None or (not match.group(1) and not match.group(2)):
        return None
    first, last = _range_bound(match.group(1)), _range_bound(match.group(2))
    if first is not None and last is not None and last < first:
        return None
    return first, last


def _parse_range(header, size):
    """Return (start, end) inclusive for a single byte range, or None to send all.

    Raises RangeNotSatisfiable when the range lies outside the file.
    """
    bounds = _range_bounds(header)
    if bounds is None:
        return None
    first, last = bounds
    if first is not None:
        start = first
        end = min(last, size - 1) if last is not None else size - 1
    else:
        start, end = max(size - last, 0), size - 1
        if last == 0:
            raise errors.RangeNotSatisfiable(size)
    if start >= size:
        raise errors.RangeNotSatisfiable(size)
    return start, end


def read_options(request):
    """Return the storage.ReadOptions of a GET or HEAD, for a store that answers them itself.

    They mean what file_response() does with the same headers: If-Modified-Since only
    without If-None-Match, one well-formed Range or none.
    """
    range_header = request.header("Range")
    bounds = _range_bounds(range_header) if range_header else None
    tags = _etags(request.header("If-None-Match"))
    return ReadOptions(
        head=request.method == "HEAD", range=bounds,
        if_range=request.header("If-Range") if bounds is not None else None, if_none_match=tags,
        if_modified_since=_http_time(request.header("If-Modified-Since")) if tags is None else None)


class Offload(NamedTuple):
    """FILE_OFFLOAD: the front server that sends stored files' bytes, and where it finds them."""

    server: str  # 'nginx' (X-Accel-Redirect) or 'apache' (X-Sendfile, mod_xsendfile)
    base_dir: str  # BASE_DIR, absolute: only files under it are handed over
    prefix: str = "/webassets-internal/"  # nginx: the internal location aliasing BASE_DIR

    @classmethod
    def from_settings(cls, settings):
        """Return the Offload that FILE_OFFLOAD asks for, or None to send files ourselves."""
        if not settings.FILE_OFFLOAD:
            return None
        return cls(settings.FILE_OFFLOAD, settings.BASE_DIR, settings.FILE_OFFLOAD_PREFIX)

    def header(self, path):
        """Return the (name, value) header that hands `path` to the front server.

        None for a path outside base_dir (it is then sent by us). nginx gets
        the URI under `prefix`, percent-encoded as UTF-8 (nginx decodes it,
        so spaces, '%', '?', '#' and non-ASCII survive); Apache gets the
        absolute path as its bytes (mod_xsendfile 0.12 does not decode).
        SECURITY: stored names have no control characters (storage.check_name),
        and the nginx value is pure ASCII, so no value can split the header.
        """
        relative = os.path.relpath(os.path.abspath(path), self.base_dir)
        if relative == os.curdir or relative.split(os.sep)[0] == os.pardir:
            return None
        raw = os.fsencode(path if self.server == "apache" else relative.replace(os.sep, "/"))
        if any(byte < 32 or byte == 127 for byte in raw):
            return None
        if self.server == "apache":
            # NOTE: PEP 3333 header values are latin-1 str: these are the path's own bytes.
            return ("X-Sendfile", raw.decode("latin-1"))
        return ("X-Accel-Redirect", self.prefix + quote(raw, safe="/"))


def file_response(request, handle, content_type, headers=(), offload=None):
    """Serve an open stored file: ETag/Last-Modified/304, Range (206/416), HEAD.

    `handle` is a storage.StoredFile (read/seek/close plus size, mtime, etag and
    local_path); the response takes ownership of it (it is closed when done).
    The full file goes out through wsgi.file_wrapper, zero-copy where the
    host offers it. With an `offload` (Offload) and a file on this machine,
    the answer is an empty 200 naming the file to the front server, which then
    does the conditionals, Range and the sending itself, so a slow reader holds
    no thread of ours.
    """
    if offload is not None and handle.local_path is not None:
        header = offload.header(handle.local_path)
        if header is not None:
            handle.close()
            return Response(b"", 200, content_type, [header] + list(headers))
    size, mtime, etag = handle.size, handle.mtime, handle.etag
    # The 304 too: a browser merges its headers into the cached 200's.
    common = [("Last-Modified", http_date(mtime)), ("ETag", etag),
              ("Accept-Ranges", "bytes")] + list(headers) + security_headers(content_type)
    if handle.status is not None:
        return _answered(handle, content_type, common)
    if _not_modified(request, etag, mtime):
        handle.close()
        return Response(status=304, content_type=None, body=[], headers=common)
    byte_range = None
    range_header = request.header("Range")
    if range_header and request.header("If-Range", etag) == etag:
        try:
            byte_range = _parse_range(range_header, size)
        except errors.RangeNotSatisfiable:
            handle.close()
            raise
    wrapper = request.environ.get("wsgi.file_wrapper", FileWrapper)
    if byte_range is None:
        response = Response(wrapper(handle, FILE_BLOCK), 200, content_type, common)
        response.set_header("Content-Length", str(size))
        return response
    start, end = byte_range
    handle.seek(start)
    body = FileWrapper(_LimitedFile(handle, end - start + 1), FILE_BLOCK)
    return _partial(Response(body, 206, content_type, common), start, end, size)


def _answered(handle, content_type, common):
    """Serve a file whose store answered the request's conditionals and Range itself.

    The same statuses and headers as file_response's own answers; the body streams
    from the store (no sendfile: there is no local file).
    """
    if handle.status in (304, 416):
        handle.close()
        if handle.status == 416:
            raise errors.RangeNotSatisfiable(handle.size)
        return Response(status=304, content_type=None, body=[], headers=common)
    response = Response(FileWrapper(handle, FILE_BLOCK), handle.status, content_type, common)
    if handle.status == 206:
        return _partial(response, *handle.content_range)
    response.set_header("Content-Length", str(handle.size))
    return response


def _partial(response, first, last, size):
    """Give a 206 response the headers of bytes first..last (inclusive) of `size`."""
    response.set_header("Content-Range", "bytes %d-%d/%d" % (first, last, size))
    response.set_header("Content-Length", str(last - first + 1))
    return response

