"""Test helpers: call the app in-process through wsgiref.validate, build Specify requests."""

import io
import os
import shutil
import subprocess
import time
import wsgiref.util
import wsgiref.validate
from urllib.parse import urlencode

import pytest

from webassets import auth, config
from webassets.app import create_app

KEY = "test_attachment_key"
U7 = "a6daad6c-5091-4461-86ee-eeba9434ef2b.jpg"  # a Specify 7 attachment location
U6 = "sp62617394751943871.att.jpg"  # a Specify 6 attachment location
COLL = "KU Fish Voucher Collection"
SP7_BOUNDARY = "----WebKitFormBoundaryAbC123"
SP6_BOUNDARY = "Xq9-_aB3cD4eF5gH6iJ7kL8mN9oP0qR1sT2"  # 35 chars of [-_0-9a-zA-Z]
# A fractional second on purpose: tokens are judged in whole seconds, like the reference.
NOW = 1700000000.75
DATE = "2015:05:20 12:16:38"  # DateTimeOriginal of the EXIF test pictures

# The real ImageMagick (the distribution's), not a stand-in earlier on PATH.
CONVERT = ("/usr/bin/convert" if os.access("/usr/bin/convert", os.X_OK)
           else shutil.which("magick") or shutil.which("convert"))
needs_convert = pytest.mark.skipif(CONVERT is None, reason="ImageMagick is not installed")


class Result:
    """What the app answered: status, headers (case-insensitive get) and body."""

    def __init__(self, status, headers, body):
        self.status = status
        self.header_list = headers
        self.headers = {name.lower(): value for name, value in headers}
        self.body = body

    def header(self, name):
        return self.headers.get(name.lower())

    def __repr__(self):
        return "<Result %d %r %r>" % (self.status, self.header_list, self.body[:200])


def make_settings(tmp_path, **overrides):
    """Return CFG-A settings (the reference defaults) with BASE_DIR in tmp_path."""
    values = dict(KEY=KEY, TIME_TOLERANCE=150, REQUIRE_KEY_FOR_GET=False,
                  ALLOW_STATIC_FILE_ACCESS=True, COLLECTION_DIRS=None, HOST="localhost",
                  PORT=8080, SERVER_NAME="localhost", SERVER_PORT=8080,
                  BASE_DIR=str(tmp_path))
    values.update(overrides)
    return config.from_mapping(values, source="test")


def make_app(tmp_path, clock=None, **overrides):
    """Return a real app over a fresh store in tmp_path (CFG-A plus overrides)."""
    return create_app(make_settings(tmp_path, **overrides), clock=clock or time.time)


def token(name, delta=0, key=KEY, now=None):
    """Return T(name, delta): the token Specify computes, at the server's clock + delta."""
    now = int(time.time() if now is None else now)
    return auth.generate_token(key, now + delta, name)


def call(app, method="GET", path="/", query=None, body=b"", headers=None, script_name="",
         environ_extra=None):
    """Call a WSGI app in-process through wsgiref.validate; return a Result."""
    if isinstance(query, (dict, list, tuple)):
        query = urlencode(query)
    environ = {"REQUEST_METHOD": method, "SCRIPT_NAME": script_name, "PATH_INFO": path,
               "QUERY_STRING": query or "", "SERVER_PROTOCOL": "HTTP/1.1"}
    for name, value in (headers or {}).items():
        key = name.upper().replace("-", "_")
        environ[key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else "HTTP_" + key] = value
    if hasattr(body, "read"):
        environ["wsgi.input"] = body
    else:
        environ["wsgi.input"] = io.BytesIO(body)
        if body or method in ("POST", "PUT"):
            environ["CONTENT_LENGTH"] = str(len(body))
    environ.update(environ_extra or {})
    wsgiref.util.setup_testing_defaults(environ)
    seen = {}

    def start_response(status, response_headers, exc_info=None):
        seen["status"] = int(status.split()[0])
        seen["headers"] = list(response_headers)

    result = wsgiref.validate.validator(app)(environ, start_response)
    try:
        data = b"".join(result)
    finally:
        result.close()
    return Result(seen["status"], seen["headers"], data)


def multipart_body(parts, boundary):
    """Build a multipart body from (headers: list of str, content: bytes) pairs."""
    out = io.BytesIO()
    for part_headers, content in parts:
        out.write(b"--" + boundary.encode("ascii") + b"\r\n")
        for line in part_headers:
            out.write(line.encode("latin-1") + b"\r\n")
        out.write(b"\r\n" + content + b"\r\n")
    out.write(b"--" + boundary.encode("ascii") + b"--\r\n")
    return out.getvalue()


def sp7_upload(store, content, tok, coll=COLL, file_name="photo.jpg", file_type="image/jpeg",
               upload_type="O"):
    """Return (body, headers) of Specify 7's browser upload: file first, then the fields."""
    parts = [(['Content-Disposition: form-data; name="file"; filename="%s"' % file_name,
               "Content-Type: %s" % file_type], content)]
    for name, value in (("token", tok), ("store", store), ("type", upload_type), ("coll", coll)):
        parts.append((['Content-Disposition: form-data; name="%s"' % name],
                      value.encode("utf-8")))
    headers = {"Content-Type": "multipart/form-data; boundary=" + SP7_BOUNDARY}
    return multipart_body(parts, SP7_BOUNDARY), headers


def sp6_upload(store, content, tok, coll=COLL, file_name="IMG 0001.JPG", upload_type="O",
               extra=(("disp", "Ichthyology"), ("div", "Fish"), ("inst", "KU")),
               coll_charset="ISO-8859-1"):
    """Return (body, headers) of Specify 6's httpmime STRICT upload: fields first, file last.

    With `coll_charset=None`, the `coll` part is Specify 6.8.00's and older: no charset,
    US-ASCII bytes (give `coll` as it sent it, each non-ASCII character already a '?').
    """
    parts = []
    fields = (("type", upload_type), ("store", store), ("token", tok), ("coll", coll)) + tuple(extra)
    for name, value in fields:
        charset = coll_charset if name == "coll" else "ISO-8859-1"
        content_type = "text/plain; charset=%s" % charset if charset else "text/plain"
        parts.append((['Content-Disposition: form-data; name="%s"' % name,
                       "Content-Type: " + content_type, "Content-Transfer-Encoding: 8bit"],
                      value.encode(charset or "ascii")))
    parts.append((['Content-Disposition: form-data; name="%s"; filename="%s"' % (file_name, file_name),
                   "Content-Type: application/octet-stream",
                   "Content-Transfer-Encoding: binary"], content))
    headers = {"Content-Type": "multipart/form-data; boundary=%s; charset=UTF-8" % SP6_BOUNDARY}
    return multipart_body(parts, SP6_BOUNDARY), headers


def upload(app, store, content, tok=None, layout="sp7", **kwargs):
    """Upload `content` as `store` the Specify 7 (or 6) way; return the Result."""
    tok = token(store) if tok is None else tok
    build = sp7_upload if layout == "sp7" else sp6_upload
    body, headers = build(store, content, tok, **kwargs)
    return call(app, "POST", "/fileupload", body=body, headers=headers)


def originals(tmp_path, sub=""):
    """Return the sorted names in the store's originals directory (temp files included)."""
    path = os.path.join(str(tmp_path), sub, "originals")
    return sorted(os.listdir(path)) if os.path.isdir(path) else []


def put(path, data=b"", age=None):
    """Create a file (and its directory); optionally make it `age` seconds old."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if age is not None:
        os.utime(str(path), (time.time() - age, time.time() - age))
    return path


def convert_image(args, data=None):
    """Run the real ImageMagick with `args` (stdin `data`); return its stdout."""
    return subprocess.run([CONVERT] + [str(arg) for arg in args], input=data,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=True,
                          timeout=60).stdout


def decode(data):
    """Decode an image with ImageMagick; return (width, height, format)."""
    width, height, fmt = convert_image(["-", "-format", "%w %h %m", "info:"], data).split()
    return int(width), int(height), fmt.decode()
