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

__all__ = ["Request", "Response", "Offload", "file_response", "guess_type",
           "content_disposition", "http_date", "TEXT_PLAIN"]

TEXT_PLAIN = "text/plain; charset=utf-8"
FILE_BLOCK = 256 * 1024
MAX_FORM_BYTES = 64 * 1024

# NOTE: not every system's mime.types knows these; Specify stores all of them.
_EXTRA_TYPES = {".heic": "image/heic", ".heif": "image/heif", ".webp": "image/webp",
                ".tif": "image/tiff", ".tiff": "image/tiff", ".jpg": "image/jpeg",
                ".jpeg": "image/jpeg", ".png": "image/png", ".gif": "image/gif",
                ".pdf": "application/pdf", ".bmp": "image/bmp", ".txt": "text/plain"}
_RANGE_RE = re.compile(r"bytes=\s*(\d*)\s*-\s*(\d*)\s*")


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
        if not value.isdigit():
            raise errors.BadRequest("Invalid Content-Length.")
        return int(value)

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
    if mimetype.startswith("text/"):
        return mimetype + "; charset=UTF-8"
    return mimetype


def content_disposition(download_name):
    """Return an inline Content-Disposition for `download_name`, or None if empty.

    Only the last path component is kept. SECURITY: the name is
    percent-encoded (RFC 5987 UTF-8), so CR/LF can never reach the header.
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


def _not_modified(request, etag, mtime):
    match = request.header("If-None-Match")
    if match is not None:
        return match.strip() == "*" or etag in [tag.strip() for tag in match.split(",")]
    since = request.header("If-Modified-Since")
    if since:
        try:
            parsed = email.utils.parsedate_to_datetime(since)
        except (TypeError, ValueError, IndexError):
            return False
        return parsed is not None and int(mtime) <= parsed.timestamp()
    return False


def _parse_range(header, size):
    """Return (start, end) inclusive for a single byte range, or None to send all.

    Raises RangeNotSatisfiable when the range lies outside the file.
    """
    match = _RANGE_RE.fullmatch(header)
    if match is None or (not match.group(1) and not match.group(2)):
        return None  # multiple or malformed ranges: RFC 7233 lets us send the whole file
    first, last = match.group(1), match.group(2)
    if first:
        start = int(first)
        end = min(int(last), size - 1) if last else size - 1
        if last and int(last) < start:
            return None
    else:
        start, end = max(size - int(last), 0), size - 1
        if int(last) == 0:
            raise errors.RangeNotSatisfiable(size)
    if start >= size:
        raise errors.RangeNotSatisfiable(size)
    return start, end


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
    """Serve an open binary file: ETag/Last-Modified/304, Range (206/416), HEAD.

    Takes ownership of `handle` (it is closed when the response is done).
    The full file goes out through wsgi.file_wrapper, zero-copy where the
    host offers it. With an `offload` (Offload), the answer is an empty 200
    naming the file to the front server, which then does the conditionals,
    Range and the sending itself, so a slow reader holds no thread of ours.
    """
    if offload is not None:
        header = offload.header(handle.name)
        if header is not None:
            handle.close()
            return Response(b"", 200, content_type, [header] + list(headers))
    stat = os.fstat(handle.fileno())
    size = stat.st_size
    etag = '"%x-%x"' % (stat.st_mtime_ns, size)
    common = [("Last-Modified", http_date(stat.st_mtime)), ("ETag", etag),
              ("Accept-Ranges", "bytes")] + list(headers)
    if _not_modified(request, etag, stat.st_mtime):
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
    response = Response(body, 206, content_type, common)
    response.set_header("Content-Range", "bytes %d-%d/%d" % (start, end, size))
    response.set_header("Content-Length", str(end - start + 1))
    return response
