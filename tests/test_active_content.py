"""Every response says how a browser may run it: nosniff, and a CSP sandbox where script could hide."""

import os
import tempfile

import pytest

from tests.helpers import COLL, call, make_app, make_settings, sp7_upload, token
from webassets import httputil, samples, thumbnails
from webassets.app import create_app

CSP = "Content-Security-Policy"
ACTIVE = httputil.ACTIVE_POLICY
IMAGE = httputil.IMAGE_POLICY
NONE = None  # no CSP at all

# name -> (the Content-Type family, the CSP). Types come from the system's mime.types,
# so only their start is pinned; the policy is what this module is about.
FAMILIES = {
    "page.html": ("text/html", ACTIVE),
    "page.htm": ("text/html", ACTIVE),
    "page.xhtml": ("application/xhtml+xml", ACTIVE),
    "drawing.svg": ("image/svg+xml", ACTIVE),
    "data.xml": ("", ACTIVE),  # text/xml or application/xml, by Python version
    "notes.txt": ("text/plain; charset=UTF-8", ACTIVE),
    "table.csv": ("text/", ACTIVE),
    "data.json": ("application/json", ACTIVE),
    "blob.bin": ("application/octet-stream", ACTIVE),
    "nameless": ("application/octet-stream", ACTIVE),
    "odd.zz9": ("application/octet-stream", ACTIVE),
    "paper.docx": ("application/", ACTIVE),
    "photo.jpg": ("image/jpeg", IMAGE),
    "photo.JPG": ("image/jpeg", IMAGE),
    "scan.png": ("image/png", IMAGE),
    "scan.gif": ("image/gif", IMAGE),
    "scan.tif": ("image/tiff", IMAGE),
    "scan.heic": ("image/heic", IMAGE),
    "scan.pdf": ("application/pdf", NONE),
    "call.mp3": ("audio/", NONE),
    "call.wav": ("audio/", NONE),
    "clip.mp4": ("video/mp4", NONE),
}
# COMPAT: PROTOCOL.md item 36 pins these Content-Types of originals exactly.
PINNED = {"photo.jpg": "image/jpeg", "photo.JPG": "image/jpeg", "scan.pdf": "application/pdf",
          "scan.png": "image/png", "scan.tif": "image/tiff",
          "notes.txt": "text/plain; charset=UTF-8"}
SCRIPTS = ["app.js", "APP.JS"]
CONTENT = b"<script>alert(document.cookie)</script>"


def assert_policy(result, csp):
    assert result.header("X-Content-Type-Options") == "nosniff", result
    assert result.header(CSP) == csp, result


def upload(app, name, content=CONTENT):
    body, headers = sp7_upload(name, content, token(name), file_name=name)
    assert call(app, "POST", "/fileupload", body=body, headers=headers).status == 200


def get(app, name, method="GET", headers=None, **extra):
    query = dict(coll=COLL, type="O", filename=name, **extra)
    return call(app, method, "/fileget", query=query, headers=headers)


@pytest.fixture
def app(app):
    """The conftest app, with a file of every family and script type uploaded."""
    for name in list(FAMILIES) + SCRIPTS:
        upload(app, name)
    return app


# --------------------------------------------------------------------------- the type policy

@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_each_family_gets_its_policy_and_keeps_its_type(app, name):
    family, csp = FAMILIES[name]
    result = get(app, name)
    assert result.status == 200 and result.body == CONTENT
    assert result.header("Content-Type").startswith(family), result
    if name in PINNED:
        assert result.header("Content-Type") == PINNED[name]
    assert_policy(result, csp)


@pytest.mark.parametrize("name", SCRIPTS)
def test_javascript_is_served_as_text(app, name):
    """No stored file is a script of our origin: not for <script src>, nor a service worker."""
    result = get(app, name)
    assert result.header("Content-Type") == "text/plain; charset=UTF-8"
    assert_policy(result, ACTIVE)


@pytest.mark.parametrize("content_type, csp", [
    ("text/html; charset=UTF-8", ACTIVE), ("TEXT/HTML", ACTIVE),
    ("application/xhtml+xml", ACTIVE), ("image/svg+xml", ACTIVE),
    ("image/svg+xml; charset=utf-8", ACTIVE), ("image/x-foo+xml", ACTIVE),
    ("text/xml", ACTIVE), ("application/xml", ACTIVE), ("application/xslt+xml", ACTIVE),
    ("application/javascript", ACTIVE), ("text/plain", ACTIVE),
    ("application/octet-stream", ACTIVE), ("", ACTIVE), ("nonsense", ACTIVE),
    ("multipart/x-mixed-replace", ACTIVE), ("application/x-shockwave-flash", ACTIVE),
    ("image/jpeg", IMAGE), ("Image/PNG", IMAGE), ("image/webp", IMAGE),
    ("application/pdf", NONE), ("APPLICATION/PDF; x=1", NONE),
    ("audio/mpeg", NONE), ("video/webm", NONE),
])
def test_security_headers(content_type, csp):
    headers = dict(httputil.security_headers(content_type))
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers.get(CSP) == csp


def test_the_active_policy_forbids_script_and_every_load():
    directives = [part.strip() for part in ACTIVE.split(";")]
    assert "sandbox" in directives  # no allow-scripts, allow-same-origin, ...
    assert "default-src 'none'" in directives
    assert not any("script" in part for part in directives)


# --------------------------------------------------------------------------- every response kind

@pytest.mark.parametrize("name", ["page.html", "drawing.svg", "photo.jpg", "scan.pdf"])
def test_every_kind_of_file_response_carries_the_policy(app, name):
    csp = FAMILIES[name][1]
    full = get(app, name)
    etag = full.header("ETag")
    head = get(app, name, method="HEAD")
    assert head.body == b"" and head.header("Content-Type") == full.header("Content-Type")
    partial = get(app, name, headers={"Range": "bytes=0-3"})
    assert partial.status == 206 and partial.body == CONTENT[:4]
    # A 304's headers replace the cached 200's in a browser: they must agree.
    for result in (full, head, partial, get(app, name, headers={"If-None-Match": etag})):
        assert_policy(result, csp)
    assert get(app, name, headers={"If-None-Match": etag}).status == 304


def test_errors_are_never_sniffed(app):
    """Error bodies are text/plain that may echo client text: never HTML, never script."""
    unsatisfiable = get(app, "page.html", headers={"Range": "bytes=999-"})
    missing = get(app, "<img src=x onerror=alert(1)>.html")
    bad_scale = call(app, "GET", "/fileget", query=dict(
        coll=COLL, type="T", filename="photo.jpg", scale="<svg onload=alert(1)>"))
    unknown_route = call(app, "GET", "/<script>")
    bad_method = call(app, "PUT", "/fileget")
    for result, status in ((unsatisfiable, 416), (missing, 404), (bad_scale, 400),
                           (unknown_route, 404), (bad_method, 405)):
        assert result.status == status, result
        assert result.header("Content-Type").startswith("text/plain"), result
        assert_policy(result, ACTIVE)


def test_a_refused_token_is_never_sniffed(tmp_path):
    app = make_app(tmp_path, REQUIRE_KEY_FOR_GET=True)
    result = get(app, "page.html", token="<b>x</b>")
    assert result.status == 403
    assert_policy(result, ACTIVE)


def test_the_other_endpoints_carry_nosniff(app):
    for path in ("/", "/web_asset_store.xml", "/healthz", "/readyz"):
        result = call(app, "GET", path)
        assert result.status == 200, path
        assert_policy(result, ACTIVE)
    preflight = call(app, "OPTIONS", "/fileupload")
    assert preflight.header("X-Content-Type-Options") == "nosniff"


def test_downloadname_stays_inline_for_active_types(app):
    """Specify 7's viewer embeds originals with downloadname: attachment would download them."""
    result = get(app, "page.html", downloadname="notes.html")
    assert result.header("Content-Disposition") == "inline; filename*=utf-8''notes.html"
    assert_policy(result, ACTIVE)


def test_static_serves_under_the_same_policy(app):
    for name in ("page.html", "drawing.svg", "photo.jpg", "scan.pdf"):
        result = call(app, "GET", "/static/originals/" + name)
        assert result.status == 200 and result.body == CONTENT
        assert_policy(result, FAMILIES[name][1])


class PNGThumbnailer(thumbnails.Thumbnailer):
    """A thumbnail engine that writes the PNG sample: type=T is always an image we made."""

    def make(self, store, coll, name, scale, source, seen=None, rendered=None):
        with tempfile.TemporaryDirectory() as scratch:
            rendered = os.path.join(scratch, "thumbnail")
            with open(rendered, "wb") as handle:
                handle.write(samples.png())
            store.save_thumbnail(coll, thumbnails.thumbnail_name(name, scale), rendered, source)
        return "image/png"


@pytest.mark.parametrize("name", ["page.html", "scan.pdf", "photo.jpg"])
def test_thumbnails_are_images(tmp_path, name):
    app = create_app(make_settings(tmp_path), thumbnailer=PNGThumbnailer())
    upload(app, name)
    result = call(app, "GET", "/fileget", query=dict(coll=COLL, type="T", filename=name,
                                                    scale="64"))
    assert result.status == 200 and result.header("Content-Type") == "image/png"
    assert_policy(result, IMAGE)


@pytest.mark.skipif(not hasattr(httputil, "Offload"), reason="no FILE_OFFLOAD in this tree")
@pytest.mark.parametrize("server", ["nginx", "apache"])
def test_offloaded_answers_carry_the_policy(tmp_path, server):
    """The front server sends the bytes, but the headers are still ours."""
    app = make_app(tmp_path, FILE_OFFLOAD=server)
    for name in ("page.html", "scan.pdf"):
        upload(app, name)
        result = get(app, name)
        assert result.header("X-Accel-Redirect") or result.header("X-Sendfile"), result
        assert_policy(result, FAMILIES[name][1])
