"""Tests for FILE_OFFLOAD: the header that hands a checked file to nginx or Apache, in-process.

tests/test_deploy.py proves with the real nginx and Apache that they find and send the file.
"""

import os
import stat

import pytest

from tests.helpers import U7, call, make_app, token
from webassets import config, storage
from webassets.httputil import Offload, file_response

BASE = "/srv/store"
AWKWARD = 'Ürsprung 100% "echt"+\'q\' a?b#c&d=e;f 名前.jpg'


def test_nginx_header_is_the_quoted_uri_under_the_prefix():
    offload = Offload("nginx", BASE, "/internal/")
    name, value = offload.header(BASE + "/coll/originals/" + AWKWARD)
    assert name == "X-Accel-Redirect"
    assert value == ("/internal/coll/originals/%C3%9Crsprung%20100%25%20%22echt%22%2B%27q%27"
                     "%20a%3Fb%23c%26d%3De%3Bf%20%E5%90%8D%E5%89%8D.jpg")
    assert all(ord(char) < 128 for char in value)


def test_apache_header_is_the_absolute_path_as_its_bytes():
    path = BASE + "/originals/" + AWKWARD
    name, value = Offload("apache", BASE).header(path)
    assert name == "X-Sendfile"
    assert value.encode("latin-1") == path.encode("utf-8")  # PEP 3333: bytes as latin-1 str


@pytest.mark.parametrize("path", ["/srv/other/x.jpg", "/srv/store", "/srv/store/../x.jpg",
                                  "/srv/storex/y.jpg", BASE + "/a\nb.jpg"])
@pytest.mark.parametrize("server", ["nginx", "apache"])
def test_no_header_outside_the_store_or_with_control_characters(server, path):
    """Such a file is sent by webassets itself (None), never named to the front server."""
    assert Offload(server, BASE).header(path) is None


def test_settings():
    assert config.Settings().FILE_OFFLOAD is None
    settings = config.from_mapping({"FILE_OFFLOAD": " NGINX ", "BASE_DIR": "rel"})
    offload = Offload.from_settings(settings)
    assert offload == Offload("nginx", os.path.abspath("rel"), "/webassets-internal/")
    assert config.from_mapping({"FILE_OFFLOAD": "none"}).FILE_OFFLOAD is None
    assert Offload.from_settings(config.Settings()) is None
    assert config.from_mapping({"FILE_OFFLOAD_PREFIX": "/a/b-c/"}).FILE_OFFLOAD_PREFIX == "/a/b-c/"


@pytest.mark.parametrize("name, value", [
    ("FILE_OFFLOAD", "lighttpd"), ("FILE_OFFLOAD", True), ("FILE_OFFLOAD_PREFIX", "/"),
    ("FILE_OFFLOAD_PREFIX", "internal/"), ("FILE_OFFLOAD_PREFIX", "/internal"),
    ("FILE_OFFLOAD_PREFIX", "/a/../b/"), ("FILE_OFFLOAD_PREFIX", "/a b/"),
])
def test_invalid_settings(name, value):
    with pytest.raises(config.ConfigError, match=name):
        config.from_mapping({name: value})


class FakeRequest:
    environ = {}

    def __init__(self, **headers):
        self.headers = headers

    def header(self, name, default=None):
        return self.headers.get(name, default)


def test_file_response_leaves_conditionals_and_ranges_to_the_front_server(tmp_path):
    path = tmp_path / "x.html"
    path.write_bytes(b"<p>hello</p>")
    request = FakeRequest(Range="bytes=0-1", **{"If-None-Match": "*"})
    response = file_response(request, storage.open_local(str(path)), "text/html; charset=UTF-8",
                             [("Content-Disposition", "inline")],
                             offload=Offload("apache", str(tmp_path)))
    assert response.status == 200 and response.body == [b""]
    headers = dict(response.headers)
    assert headers["X-Sendfile"] == str(path) and headers["Content-Length"] == "0"
    assert headers["Content-Type"] == "text/html; charset=UTF-8"
    assert headers["Content-Disposition"] == "inline"
    assert "ETag" not in headers and "Content-Range" not in headers


def test_app_offloads_checked_originals_thumbnails_and_static_files(tmp_path):
    app = make_app(tmp_path, FILE_OFFLOAD="nginx", REQUIRE_KEY_FOR_GET=True)
    original = tmp_path / "originals" / U7
    original.parent.mkdir()
    original.write_bytes(b"not really a JPEG")
    thumb = tmp_path / "thumbnails" / ("%s_64.jpg" % U7[:-4])
    thumb.parent.mkdir()
    thumb.write_bytes(b"a cached thumbnail")
    os.utime(str(thumb), (os.stat(str(original)).st_mtime + 10,) * 2)  # newer: stays cached
    query = {"filename": U7, "token": token(U7), "downloadname": "Ä b.jpg"}
    result = call(app, "GET", "/fileget", dict(query, type="O"))
    assert result.status == 200 and result.body == b""
    assert result.header("X-Accel-Redirect") == "/webassets-internal/originals/" + U7
    assert result.header("Content-Disposition") == "inline; filename*=utf-8''%C3%84%20b.jpg"
    assert result.header("X-Timestamp")
    result = call(app, "GET", "/fileget", dict(query, type="T", scale="64"))
    assert result.status == 200, result
    assert result.header("X-Accel-Redirect") == "/webassets-internal/thumbnails/" + thumb.name
    result = call(app, "GET", "/static/originals/" + U7)
    assert result.header("X-Accel-Redirect") == "/webassets-internal/originals/" + U7
    # Refused or missing: webassets' own answer, nothing handed over.
    for bad in (dict(query, type="O", token="0" * 32 + ":1"), dict(query, filename="none.jpg")):
        result = call(app, "GET", "/fileget", bad)
        assert result.status in (403, 404) and result.header("X-Accel-Redirect") is None


def test_stored_originals_get_the_umask_mode_not_0600(tmp_path):
    """With FILE_OFFLOAD the front server reads them as another user, through the group."""
    staged = storage.StagedFile(str(tmp_path))
    staged.write(b"x")
    staged.commit(str(tmp_path / "x.jpg"))
    assert stat.S_IMODE(os.stat(str(tmp_path / "x.jpg")).st_mode) == storage.FILE_MODE
    mask = os.umask(0o022)
    os.umask(mask)
    assert storage.FILE_MODE == 0o666 & ~mask
