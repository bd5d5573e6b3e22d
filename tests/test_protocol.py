"""Conformance: every item of tests/PROTOCOL.md section 9, in-process, for CFG-A..CFG-F."""

import errno
import functools
import hashlib
import json
import logging
import os
import random
import re
import time
import xml.dom.minidom
import xml.etree.ElementTree as ElementTree
import xml.sax
from urllib.parse import quote_plus, unquote, urlencode, urlsplit

import pytest

from tests.fakes import FakeClock, FakeInput
from tests.helpers import (
    CONVERT, COLL, DATE, KEY, NOW, SP6_BOUNDARY, SP7_BOUNDARY, U6, U7, call, decode,
    make_settings, multipart_body, needs_convert, sp6_upload, sp7_upload, token,
)
from tests.lifecycle import Sp6Client, Sp7Backend, WSGIClient
from tests.s3servers import both_addressings
from tests.stores import (LocalBackend, app_on, everything, is_s3, plant, relative_dir,
                          store_snapshot, stored, stored_files)
from webassets import auth, config, multipart, storage, thumbnails
from webassets.storage.s3 import S3Upload

# --------------------------------------------------------------------------- configurations

CFGS = {
    "A": {},
    "B": {"REQUIRE_KEY_FOR_GET": True},
    "C": {"COLLECTION_DIRS": {COLL: "fish", "KUFishtissue": "fish"}},
    "D": {"KEY": None},
    "E": {"ALLOW_STATIC_FILE_ACCESS": False},
    "F": {"TIME_TOLERANCE": None},
}
ALL = "ABCDEF"
WITH_KEY = "ABCEF"  # a 403 needs a key
WITH_TIME = "ABCE"  # an expired token needs a key and a tolerance
GET_WITHOUT_TOKEN = "ACDEF"  # tokenless GETs (portal, Sp7-FE) need REQUIRE_KEY_FOR_GET off
WITH_STATIC = "ABCDF"
COLL_IGNORED = "ABDEF"
# D, E and F change nothing on the thumbnail path, and conversions are the slow part:
# the conversion-heavy items run where the token (B) or the directory (C) differs.
THUMB_CFGS = "ABC"

PROTOCOL_PATHS = ("/testkey", "/fileupload", "/filedelete", "/fileget", "/getmetadata",
                  "/web_asset_store.xml")
RANDOM = "6f1c5a4e-2b0e-4c1e-9d55-8f0b7b2f3a11"
ROOT7 = U7[:-len(".jpg")]
FORM = "application/x-www-form-urlencoded"
SP6_EXTRA = [("disp", "Ichthyology"), ("div", "Fish"), ("inst", "KU")]

REFERENCE_XML = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b'<urls>\n'
    b'    <url type="read"><![CDATA[http://localhost:8080/fileget]]></url>\n'
    b'    <url type="write"><![CDATA[http://localhost:8080/fileupload]]></url>\n'
    b'    <url type="delete"><![CDATA[http://localhost:8080/filedelete]]></url>\n'
    b'    <url type="getmetadata"><![CDATA[http://localhost:8080/getmetadata]]></url>\n'
    b'    <url type="testkey">http://localhost:8080/testkey</url>\n'
    b'</urls>\n'
)
URL_PATHS = {"read": "fileget", "write": "fileupload", "delete": "filedelete",
             "getmetadata": "getmetadata", "testkey": "testkey"}

def configs(names):
    """Run a test once per named configuration."""
    return pytest.mark.parametrize("cfg", list(names))


def config_cases(*pairs):
    """Run a test for each (case, configurations) pair: the case applies only there."""
    return pytest.mark.parametrize("cfg,case", [(cfg, case) for case, names in pairs
                                                for cfg in names])


@functools.lru_cache(maxsize=None)
def probed_tools():
    """Return the run's one Toolchain: ImageMagick is asked for its formats only once."""
    return thumbnails.Toolchain(convert=CONVERT)


def build(tmp_path, cfg="A", clock=None, backend=None, **overrides):
    """Return an app (with its own thumbnail engine) for CFG-<cfg> plus overrides.

    Its store is `backend`'s (tests.stores; the local one by default): under tmp_path/store,
    or a fresh prefix of a bucket. Only the probed converters are shared between apps.
    """
    values = dict(CFGS[cfg], CONVERT=CONVERT)
    values.update(overrides)
    return app_on(backend or LocalBackend(), tmp_path / "store", clock or FakeClock(NOW),
                  probed_tools(), **values)


@pytest.fixture
def cfg():
    return "A"


@pytest.fixture
def app(tmp_path, cfg, backend):
    return build(tmp_path, cfg, backend=backend)


# --------------------------------------------------------------------------- requests

def req(app, method, path, query=None, **kwargs):
    """Call the app; assert what every response must carry (items 43, 76, 77)."""
    result = call(app, method, path, query=query, **kwargs)
    if result.status != 304:
        assert result.header("Content-Type"), result
    for _, value in result.header_list:
        # Well-formed: no CR/LF (header injection) and no raw non-ASCII.
        assert "\r" not in value and "\n" not in value and max(value or " ") < "\x80", result
    if path in PROTOCOL_PATHS:
        assert re.fullmatch(r"\d+", result.header("X-Timestamp") or ""), result
    if (path == "/fileupload" and method in ("POST", "OPTIONS")) or path == "/getfileref":
        assert result.header("Access-Control-Allow-Origin") in ("*", "http://sp7.example"), result
    if method == "HEAD":
        assert result.body == b""
    return result


def same_headers(one, other):
    """Compare two responses' headers, except the per-request X-Request-Id."""
    return ({k: v for k, v in one.headers.items() if k != "x-request-id"}
            == {k: v for k, v in other.headers.items() if k != "x-request-id"})


def get(app, path, query=None, **kwargs):
    return req(app, "GET", path, query, **kwargs)


def T(app, name, delta=0, key=KEY):
    """Return T(name, delta) at the app's clock, as Specify computes it."""
    return token(name, delta, key=key, now=app.clock())


def fileget(app, name, signed=True, **query):
    """GET /fileget the Specify 7 way (coll, type=O, filename) plus a token if `signed`."""
    params = {"coll": COLL, "type": "O", "filename": name}
    params.update(query)
    if signed:
        params["token"] = T(app, name)
    return get(app, "/fileget", list(params.items()))


def thumb(app, name, scale, signed=True, **query):
    return fileget(app, name, signed, type="T", scale=str(scale), **query)


def put(app, name, content, layout="sp7", tok=None, **kwargs):
    """Upload `content` as `name` with Specify 7's (or 6's) exact multipart layout."""
    build_body = sp7_upload if layout == "sp7" else sp6_upload
    body, headers = build_body(name, content, T(app, name) if tok is None else tok, **kwargs)
    return req(app, "POST", "/fileupload", body=body, headers=headers)


def put_ok(app, name, content, **kwargs):
    res = put(app, name, content, **kwargs)
    assert (res.status, res.body) == (200, b"Ok."), res
    return res


def delete(app, name, tok=None, content_type=FORM, fields=None):
    """POST /filedelete the Specify 7 backend way (urlencoded body)."""
    data = fields or [("filename", name), ("coll", COLL),
                      ("token", T(app, name) if tok is None else tok)]
    return req(app, "POST", "/filedelete", body=urlencode(data).encode("utf-8"),
               headers={"Content-Type": content_type})


def form_upload(fields, file_part=("file", "photo.jpg", b"data"), file_first=True):
    """Return (body, headers) of a browser-style upload with the file part anywhere (or none)."""
    parts = [(['Content-Disposition: form-data; name="%s"' % name], value.encode("utf-8"))
             for name, value in fields]
    if file_part is not None:
        name, filename, content = file_part
        part = (['Content-Disposition: form-data; name="%s"; filename="%s"' % (name, filename),
                 "Content-Type: application/octet-stream"], content)
        parts.insert(0 if file_first else len(parts), part)
    headers = {"Content-Type": "multipart/form-data; boundary=" + SP7_BOUNDARY}
    return multipart_body(parts, SP7_BOUNDARY), headers


def coll_dir(app):
    """Return COLL's directory under the store's root ('' or 'fish/')."""
    dirs = app.settings.COLLECTION_DIRS
    return dirs[COLL] + "/" if dirs else ""


def originals(app):
    """Return every name in COLL's originals directory (temporary ones included)."""
    return stored(app, storage.ORIGINAL)


def thumbnails_of(app):
    """Return every name in COLL's thumbnails directory."""
    return stored(app, storage.THUMBNAIL)


def write(path, content):
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    with open(str(path), "wb") as handle:
        handle.write(content)


def pseudo_random(size, seed):
    """Return `size` reproducible random bytes (random.randbytes is 3.9+)."""
    return random.Random(seed).getrandbits(8 * size).to_bytes(size, "little") if size else b""


def url_path(url):
    return urlsplit(url).path


def xml_urls(body):
    """Parse the XML the way Specify 7 does: {type: [untrimmed text, ...]}."""
    urls = {}
    for url in ElementTree.fromstring(body).findall("url"):
        urls.setdefault(url.attrib["type"], []).append(url.text)
    return urls


def expected_urls(base):
    return {kind: [base + "/" + path] for kind, path in URL_PATHS.items()}


class _UrlTypes(xml.sax.ContentHandler):
    """A non-namespace-aware SAX pass, like Specify 6's dom4j: the type of every <url>."""

    def __init__(self):
        super().__init__()
        self.types = []

    def startElement(self, name, attrs):
        if name == "url":
            self.types.append(attrs.getValue("type"))


# --------------------------------------------------------------------------- client simulations

def wsgi(app):
    """Return a tests.lifecycle client over `app` whose every request goes through req()."""
    return WSGIClient(app, call=req)


def sp7_client(app, offset=0):
    """Return Specify 7's backend with a clock `offset` from the app's (tests.lifecycle)."""
    return Sp7Backend(wsgi(app), offset=offset, clock=app.clock)


def sp6_client(app, offset=0):
    """Return Specify 6's client with a clock `offset` from the app's (tests.lifecycle)."""
    return Sp6Client(wsgi(app), offset=offset, clock=app.clock)


def slow_input(body, clock, seconds_per_read):
    """Return the wsgi.input of a slow client: 16 KiB reads, each advancing `clock`."""

    def tick(_):
        clock.now += seconds_per_read

    return FakeInput(body, max_read=16 * 1024, before_read=tick)


def raw_post(app, body_input, length, headers):
    """POST a body from a wsgi.input stand-in with an explicit Content-Length."""
    headers = dict(headers, **{"Content-Length": str(length)})
    return req(app, "POST", "/fileupload", body=body_input, headers=headers)


# =========================================================================== A. Discovery

@configs(ALL)
def test_01_web_asset_store_xml(tmp_path, cfg):
    app = build(tmp_path, cfg, clock=time.time)
    res = get(app, "/web_asset_store.xml")
    assert res.status == 200
    assert abs(int(res.header("X-Timestamp")) - time.time()) <= 2
    assert res.header("Content-Type") == "text/xml; charset=utf-8"
    assert xml_urls(res.body) == expected_urls("http://localhost:8080")
    sax = _UrlTypes()
    xml.sax.parseString(res.body, sax)
    assert sorted(sax.types) == sorted(URL_PATHS)
    dom = xml.dom.minidom.parseString(res.body)
    assert all(node.getAttribute("type") for node in dom.getElementsByTagName("url"))
    assert all("?" not in urls[0] for urls in xml_urls(res.body).values())
    assert res.body == REFERENCE_XML and len(res.body) == 410


@configs(ALL)
def test_02_head_web_asset_store_xml(app):
    full = get(app, "/web_asset_store.xml")
    res = req(app, "HEAD", "/web_asset_store.xml")
    assert (res.status, res.body) == (200, b"")
    assert same_headers(res, full)


@configs(ALL)
def test_03_server_name_and_port(tmp_path, cfg):
    app = build(tmp_path, cfg, SERVER_NAME="host.docker.internal", SERVER_PORT=80, PORT=8123)
    body = get(app, "/web_asset_store.xml").body
    assert xml_urls(body) == expected_urls("http://host.docker.internal:80")
    assert b"8123" not in body


@configs(ALL)
def test_04_host_header_ignored(app):
    res = get(app, "/web_asset_store.xml", headers={"Host": "other:1234"})
    assert xml_urls(res.body) == expected_urls("http://localhost:8080")


@configs(ALL)
def test_04_public_url_verbatim(tmp_path, cfg):
    app = build(tmp_path, cfg, PUBLIC_URL="https://assets.example.org/prefix")
    res = get(app, "/web_asset_store.xml", headers={"Host": "other:1234"})
    assert xml_urls(res.body) == expected_urls("https://assets.example.org/prefix")


CLIENT_OFFSETS = (-10000, 0, 10000)  # the test client's clock minus the server's


@configs(ALL)
def test_05_sp7_init(tmp_path, cfg):
    app = build(tmp_path, cfg, clock=time.time)
    for offset in CLIENT_OFFSETS:
        client = sp7_client(app, offset)
        client.discover()
        assert client.test_key().status == 200, offset
        if offset and cfg in WITH_TIME:
            # Control: the client's own clock alone would be refused.
            naive = auth.generate_token(KEY, client.now(), "x")
            assert get(app, "/testkey", {"random": "x", "token": naive}).status == 403


@configs(ALL)
def test_06_sp6_init(tmp_path, cfg):
    app = build(tmp_path, cfg, clock=time.time)
    for offset in CLIENT_OFFSETS:
        client = sp6_client(app, offset)
        client.discover()
        random_value = str(random.Random(offset).randint(-2 ** 31, 2 ** 31 - 1))
        res = client.send("GET", "testkey", {"random": random_value,
                                             "token": client.generate_token(random_value)})
        assert res.status == 200, offset


# =========================================================================== B. /testkey

@configs(ALL)
def test_07_testkey(app):
    query = urlencode({"random": RANDOM, "token": T(app, RANDOM)})
    assert "%3A" in query
    res = get(app, "/testkey", query)
    assert (res.status, res.body, res.header("Content-Type")) == (
        200, b"Ok.", "text/plain; charset=utf-8")


@configs(ALL)
def test_08_testkey_raw_colon(app):
    res = get(app, "/testkey", "random=%s&token=%s" % (RANDOM, T(app, RANDOM)))
    assert ":" in T(app, RANDOM) and res.status == 200


@configs(ALL)
def test_09_testkey_sp6_negative_random(app):
    res = get(app, "/testkey", {"random": "-1473683936", "token": T(app, "-1473683936")})
    assert res.status == 200


@configs(WITH_KEY)
def test_10_testkey_missing_token(app):
    res = get(app, "/testkey", {"random": RANDOM})
    assert (res.status, res.body) == (403, b"")


def assert_testkey(app, tokens, expected):
    """Assert /testkey answers `expected` for each token."""
    for tok in tokens:
        res = get(app, "/testkey", {"random": RANDOM, "token": tok})
        assert res.status == expected, (tok, res)


@configs(WITH_KEY)
def test_11_testkey_malformed_token(app):
    assert_testkey(app, ["", "abc", "ee4efd433c8579597024c4ec1621cfd8:notanint"], 403)


@configs(WITH_KEY)
def test_12_testkey_wrong_key_or_name(app):
    assert_testkey(app, [T(app, RANDOM, key="wrong"), T(app, "another-random")], 403)


@configs(ALL)
def test_13_testkey_tolerance(app, cfg):
    assert_testkey(app, [T(app, RANDOM, -149), T(app, RANDOM, 149)], 200)
    assert_testkey(app, [T(app, RANDOM, -150), T(app, RANDOM, 150)],
                   403 if cfg in WITH_TIME else 200)


@configs(WITH_KEY)
def test_14_testkey_exact_string_compare(app):
    mac, ts = T(app, RANDOM).split(":")
    assert_testkey(app, [mac.upper() + ":" + ts, mac + ":0" + ts, mac + ":+" + ts], 403)


@configs(WITH_KEY)
def test_15_testkey_many_colons(app):
    assert_testkey(app, ["a:b:c", "::", T(app, RANDOM) + ":extra"], 403)


@configs("D")
def test_16_no_key_accepts_anything(app):
    assert get(app, "/testkey", {"random": "x"}).status == 200
    assert put(app, U7, b"x", tok="").status == 200
    assert delete(app, U7, tok="garbage").status == 200


@configs("F")
def test_17_no_tolerance(app):
    assert get(app, "/testkey", {"random": RANDOM, "token": T(app, RANDOM, -100000)}).status == 200


# =========================================================================== C. /fileupload

@configs(ALL)
def test_18_cors_preflight(app):
    res = req(app, "OPTIONS", "/fileupload", headers={
        "Origin": "http://sp7.example", "Access-Control-Request-Method": "POST"})
    assert (res.status, res.body) == (200, b"")


@configs(ALL)
def test_19_sp7_upload(app):
    res = put(app, U7, b"B-bytes")
    assert (res.status, res.body, res.header("Content-Type")) == (
        200, b"Ok.", "text/plain; charset=utf-8")
    assert fileget(app, U7).body == b"B-bytes"


@configs(ALL)
def test_20_sp6_upload(app):
    assert len(SP6_BOUNDARY) == 35 and "-" in SP6_BOUNDARY and "_" in SP6_BOUNDARY
    body, headers = sp6_upload(U6, b"sp6-bytes", T(app, U6))
    assert headers["Content-Type"].endswith("; charset=UTF-8")
    assert b'name="IMG 0001.JPG"; filename="IMG 0001.JPG"' in body
    assert req(app, "POST", "/fileupload", body=body, headers=headers).status == 200
    assert fileget(app, U6).body == b"sp6-bytes"
    assert stored_files(app) == {U6: b"sp6-bytes"}


BINARY = b"\xff\xd8\x00\r\n--notboundary\r\n\r\n--" + pseudo_random(1 << 20, 21) + b"\r\n"


@configs(ALL)
@pytest.mark.parametrize("layout", ["sp7", "sp6"])
def test_21_binary_safety(app, layout):
    for content in (BINARY, b""):
        put_ok(app, U7, content, layout=layout)
        assert fileget(app, U7).body == content


@configs(WITH_KEY)
@pytest.mark.parametrize("layout", ["sp7", "sp6"])
@pytest.mark.parametrize("existing", [False, True])
def test_22_invalid_token(tmp_path, app, layout, existing):
    if existing:
        put_ok(app, U7, b"previous")
    before = everything(tmp_path, app)
    res = put(app, U7, b"attack", layout=layout, tok=T(app, U7, key="wrong"))
    assert res.status == 403
    assert everything(tmp_path, app) == before


def _assert_refused_upload(tmp_path, app, res):
    assert res.status == 403
    assert everything(tmp_path, app) == {}


@configs(WITH_TIME)
def test_23_expired_token(tmp_path, app):
    _assert_refused_upload(tmp_path, app, put(app, U7, b"x", tok=T(app, U7, -150)))


@configs(WITH_KEY)
def test_23_token_for_other_name(tmp_path, app):
    _assert_refused_upload(tmp_path, app, put(app, U7, b"x", tok=T(app, "other.jpg")))


@configs(WITH_KEY)
def test_23_missing_token(tmp_path, app):
    body, headers = form_upload([("store", U7), ("type", "O"), ("coll", COLL)])
    _assert_refused_upload(tmp_path, app, req(app, "POST", "/fileupload", body=body, headers=headers))


@configs(ALL)
def test_24_reupload_replaces(app):
    put_ok(app, U7, b"old")
    put_ok(app, U7, b"new")
    assert fileget(app, U7).body == b"new"
    assert originals(app) == [U7]


@configs(ALL)
def test_25_sp6_thumbnail_upload_ignored(tmp_path, app):
    put_ok(app, U6, b"original", layout="sp6")
    before = everything(tmp_path, app)
    res = put(app, U6, b"B2-thumb", layout="sp6", upload_type="T", file_name="sp6_thumb_123.tmp")
    assert (res.status, res.body) == (200, b"Ignoring thumbnail upload!")
    assert everything(tmp_path, app) == before
    assert fileget(app, U6).body == b"original"


@configs(WITH_KEY)
def test_26_thumbnail_upload_invalid_token(app):
    res = put(app, U6, b"x", layout="sp6", upload_type="T", tok=T(app, U6, key="wrong"))
    assert res.status == 403


@configs(ALL)
@pytest.mark.parametrize("file_first", [True, False])
def test_27_file_part_anywhere(app, file_first):
    fields = [("token", T(app, U7)), ("store", U7), ("type", "O"), ("coll", COLL)]
    for field in ("file", "IMG 0001.JPG", "upload"):
        body, headers = form_upload(fields, (field, "x.jpg", field.encode()), file_first)
        assert req(app, "POST", "/fileupload", body=body, headers=headers).status == 200
        assert fileget(app, U7).body == field.encode()


@configs(COLL_IGNORED)
def test_28_coll_ignored(app):
    put_ok(app, U7, b"x", coll="A")
    assert fileget(app, U7, coll="B").body == b"x"


@configs("C")
def test_29_collections_share_a_dir(app):
    put_ok(app, U7, b"fish")
    assert fileget(app, U7, coll="KUFishtissue").body == b"fish"
    assert relative_dir(app) == "fish/originals" and originals(app) == [U7]


@configs("C")
@pytest.mark.parametrize("layout", ["sp7", "sp6"])
def test_29_unknown_collection(tmp_path, app, layout):
    res = put(app, U7, b"x", layout=layout, coll="Unknown")
    assert res.status == 404
    assert everything(tmp_path, app) == {}


@configs("C")
def test_29_latin1_collection(tmp_path, cfg, backend):
    app = build(tmp_path, cfg, backend=backend, COLLECTION_DIRS={"Colección": "coleccion"})
    body, headers = sp6_upload(U6, b"x", T(app, U6), coll="Colección")
    assert "Colección".encode("latin-1") in body
    assert req(app, "POST", "/fileupload", body=body, headers=headers).status == 200
    assert app.store.layout.directory("Colección", storage.ORIGINAL) == "coleccion/originals"
    assert stored(app, coll="Colección") == [U6]
    assert fileget(app, U6, coll="Colección").body == b"x"


PECES = "Colección Peces"
PECES_ASCII = "Colecci?n Peces"  # as Specify 6.8.00 and older send PECES (US-ASCII)


def old_sp6_put(app, coll, content=b"x", name=U6, **kwargs):
    """Upload the way Specify 6.8.00 sends it: fields first, `coll` in US-ASCII, no charset."""
    body, headers = sp6_upload(name, content, T(app, name), coll=coll, coll_charset=None,
                               **kwargs)
    return req(app, "POST", "/fileupload", body=body, headers=headers)


def store_dirs(app, *dirs):
    """Return {directory: its originals} for COLLECTION_DIRS directories `dirs`."""
    coll_of = {directory: coll for coll, directory in app.settings.COLLECTION_DIRS.items()}
    return {d: stored(app, coll=coll_of[d]) for d in dirs}


@configs("C")
def test_29_old_sp6_ascii_collection(tmp_path, cfg, caplog, backend):
    app = build(tmp_path, cfg, backend=backend, COLLECTION_DIRS={PECES: "peces", "Colección Aves": "aves"})
    body, _ = sp6_upload(U6, b"x", T(app, U6), coll=PECES_ASCII, coll_charset=None)
    assert (b'name="coll"\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: 8bit'
            b'\r\n\r\nColecci?n Peces\r\n') in body
    caplog.set_level(logging.INFO, logger="webassets.storage")
    for content in (b"one", b"two"):
        res = old_sp6_put(app, PECES_ASCII, content)
        assert (res.status, res.body) == (200, b"Ok."), res
    assert store_dirs(app, "peces", "aves") == {"peces": [U6], "aves": []}
    legacy = [r.getMessage() for r in caplog.records if "old Specify 6" in r.getMessage()]
    assert legacy == ["Collection %r from an old Specify 6 (US-ASCII) taken as %r"
                      % (PECES_ASCII, PECES)]  # once per name, INFO
    assert fileget(app, U6, coll=PECES).body == b"two"
    assert old_sp6_put(app, PECES_ASCII, upload_type="T").body == b"Ignoring thumbnail upload!"
    assert delete(app, U6, fields=[("filename", U6), ("coll", PECES),
                                   ("token", T(app, U6))]).status == 200
    assert fileget(app, U6, coll=PECES).status == 404


@configs("C")
def test_29_old_sp6_collection_file_first(tmp_path, cfg, backend):
    app = build(tmp_path, cfg, backend=backend, COLLECTION_DIRS={PECES: "peces"})
    put_ok(app, U7, b"x", coll=PECES_ASCII)  # judged after the file: staged, then published
    assert store_snapshot(app) == {os.path.join("peces", "originals", U7): b"x"}


@configs("C")
@pytest.mark.parametrize("dirs,coll,stored", [
    ({"Colección": "a", "Colecciñn": "b"}, "Colecci?n", None),  # ambiguous
    ({PECES: "a"}, "Colecci?n Aves", None),  # no match
    ({PECES: "a"}, "Colecci??n Peces", None),  # one '?' is one character
    ({"Coleccion Peces": "a"}, PECES_ASCII, None),  # '?' never stands for an ASCII character
    ({"Coleccion Peces": "a"}, "Coleccion Peces", "a"),  # ASCII names: exact, as ever
    ({"Peces?": "a", "Peces¿": "b"}, "Peces?", "a"),  # a real '?' matches exactly, first
    ({"Peces ¿Qué?": "a"}, "Peces ?Qu??", "a"),  # '?' of its own and for non-ASCII
    ({"Peces 🐟": "a", "Peces": "b"}, "Peces ?", "a"),  # one '?' per code point
])
def test_29_old_sp6_collection_matches_only_one(tmp_path, cfg, dirs, coll, stored, backend):
    app = build(tmp_path, cfg, backend=backend, COLLECTION_DIRS=dirs)
    res = old_sp6_put(app, coll)
    if stored is None:
        assert (res.status, res.body) == (404, ("Unknown collection: %r\n" % coll).encode())
        assert everything(tmp_path, app) == {}
    else:
        assert res.status == 200, res
        assert store_dirs(app, *sorted(set(dirs.values())))[stored] == [U6]


@configs("C")
def test_29_old_sp6_collection_only_on_upload(tmp_path, cfg, backend):
    app = build(tmp_path, cfg, backend=backend, COLLECTION_DIRS={PECES: "peces"})
    assert old_sp6_put(app, PECES_ASCII).status == 200
    query = [("filename", U6), ("token", T(app, U6)), ("coll", PECES_ASCII)]
    assert get(app, "/fileget", query + [("type", "O")]).status == 404
    assert get(app, "/fileget", query + [("type", "T"), ("scale", "200")]).status == 404
    assert get(app, "/getmetadata", query + [("dt", "json")]).status == 404
    assert delete(app, U6, fields=query).status == 404
    assert store_dirs(app, "peces") == {"peces": [U6]}


HOSTILE_STORES = ["../evil.jpg", "{abs}", "a/b.jpg", "..\\evil.jpg", "..", ".", ".hidden",
                  "x\x00y.jpg", "x\x01y.jpg", "x\ny.jpg", ""]


@configs(ALL)
@pytest.mark.parametrize("layout", ["sp7", "sp6"])
def test_30_unsafe_store(tmp_path, app, layout):
    for store in HOSTILE_STORES:
        store = store.format(abs=str(tmp_path / "evil.jpg"))
        res = put(app, store, b"evil", layout=layout)
        assert res.status == 400, (store, res)
        assert everything(tmp_path, app) == {}, store


@configs(ALL)
@pytest.mark.parametrize("layout", ["sp7", "sp6"])
def test_31_slow_upload(tmp_path, cfg, layout, backend):
    clock = FakeClock(NOW)
    app = build(tmp_path, cfg, clock=clock, backend=backend)
    content = pseudo_random(400 * 1024, 31)
    body, headers = (sp7_upload if layout == "sp7" else sp6_upload)(U7, content, T(app, U7))
    res = req(app, "POST", "/fileupload", body=slow_input(body, clock, 40),
              headers=dict(headers, **{"Content-Length": str(len(body))}))
    assert res.status == 200
    assert clock.now >= NOW + 200
    assert fileget(app, U7).body == content


def test_32_large_upload(app):
    size, block = 50 << 20, pseudo_random(1 << 20, 32)
    prefix_suffix, headers = sp7_upload(U7, b"", T(app, U7))
    cut = prefix_suffix.index(b"\r\n\r\n") + 4
    expected = hashlib.sha256()

    def chunks():
        yield prefix_suffix[:cut]
        for index in range(size >> 20):
            chunk = block[index:] + block[:index]  # every MiB differs
            expected.update(chunk)
            yield chunk
        yield prefix_suffix[cut:]

    res = raw_post(app, FakeInput(chunks()), len(prefix_suffix) + size, headers)
    assert res.status == 200
    body = fileget(app, U7).body
    assert len(body) == size and hashlib.sha256(body).digest() == expected.digest()


@configs(ALL)
@pytest.mark.parametrize("layout", ["sp7", "sp6"])
def test_33_no_file_part(tmp_path, app, layout):
    if layout == "sp6":
        body, headers = sp6_upload(U7, b"", T(app, U7))
        delimiter = b"--" + SP6_BOUNDARY.encode("ascii")
        body = body[:body.rindex(delimiter + b"\r\n")] + delimiter + b"--\r\n"  # drop the file
    else:
        body, headers = form_upload([("token", T(app, U7)), ("store", U7), ("type", "O"),
                                     ("coll", COLL)], file_part=None)
    assert b"filename=" not in body
    assert req(app, "POST", "/fileupload", body=body, headers=headers).status == 400
    assert everything(tmp_path, app) == {}


@configs(ALL)
def test_33_urlencoded_upload(app):
    body = urlencode({"token": T(app, U7), "store": U7, "type": "O"}).encode()
    res = req(app, "POST", "/fileupload", body=body, headers={"Content-Type": FORM})
    assert res.status == 400


@configs(ALL)
def test_34_get_fileupload(app):
    res = get(app, "/fileupload")
    assert res.status == 405
    assert set(res.header("Allow").split(",")) == {"OPTIONS", "POST"}


# =========================================================================== D. /fileget originals

@configs(GET_WITHOUT_TOKEN)
def test_35_sp7_fe_original(app):
    put_ok(app, U7, b"0123456789")
    res = get(app, "/fileget", "coll=KU+Fish+Voucher+Collection&type=O&filename=" + U7)
    assert (res.status, res.body) == (200, b"0123456789")
    assert res.header("Content-Type") == "image/jpeg"
    assert res.header("Content-Length") == "10"
    assert res.header("Accept-Ranges") == "bytes"
    assert res.header("Content-Disposition") is None


CONTENT_TYPES = [
    ("x.JPG", "image/jpeg"), ("x.pdf", "application/pdf"), ("x.png", "image/png"),
    ("x.tif", "image/tiff"), ("x.txt", "text/plain; charset=UTF-8"),
    ("README", "application/octet-stream"), ("x.unknownext", "application/octet-stream"),
]


@configs(ALL)
def test_36_content_types(app):
    for name, content_type in CONTENT_TYPES:
        put_ok(app, name, b"x")
        assert fileget(app, name).header("Content-Type") == content_type, name


@configs(GET_WITHOUT_TOKEN)
def test_37_get_token_ignored(app):
    put_ok(app, U7, b"x")
    for value in ("", "garbage", T(app, U7, -10000)):
        assert get(app, "/fileget", [("coll", COLL), ("type", "O"), ("filename", U7),
                                     ("token", value)]).status == 200


@configs(ALL)
def test_38_sp6_fileget(app):
    put_ok(app, U6, b"sp6", layout="sp6")
    query = [("type", "O"), ("scale", "null"), ("filename", U6), ("token", T(app, U6)),
             ("coll", COLL)] + SP6_EXTRA
    res = get(app, "/fileget", query)
    assert (res.status, res.body) == (200, b"sp6")


@configs(ALL)
def test_39_download_all(app):
    put_ok(app, U7, b"zip me")
    query = [("filename", U7), ("coll", COLL), ("type", "O"), ("token", T(app, U7))]
    for _ in range(3):
        assert get(app, "/fileget", query).body == b"zip me"


DOWNLOAD_NAMES = [
    ("testFile.jpg", "testFile.jpg"),
    ("My Photo (1).jpg", "My%20Photo%20%281%29.jpg"),
    ("dir/sub/x.png", "x.png"),
    ("résumé.pdf", "r%C3%A9sum%C3%A9.pdf"),
    ("C:\\x\\y.jpg", "y.jpg"),
    ("evil\r\nSet-Cookie: a=b.jpg", "evil%0D%0ASet-Cookie%3A%20a%3Db.jpg"),
    ('q"uote;.jpg', "q%22uote%3B.jpg"),
]


@configs(ALL)
def test_40_downloadname(app):
    put_ok(app, U7, b"x")
    for download_name, encoded in DOWNLOAD_NAMES:
        res = fileget(app, U7, downloadname=download_name)  # req() checks CR/LF, ASCII
        assert res.header("Content-Disposition") == "inline; filename*=utf-8''" + encoded


@configs(ALL)
@both_addressings  # (on S3 only: tests/conftest.py)
def test_41_range(app):
    put_ok(app, U7, b"0123456789")
    res = get(app, "/fileget", {"coll": COLL, "type": "O", "filename": U7, "token": T(app, U7)},
              headers={"Range": "bytes=2-5"})
    assert (res.status, res.body) == (206, b"2345")
    assert res.header("Content-Range") == "bytes 2-5/10"
    assert res.header("Content-Length") == "4"
    res = get(app, "/fileget", {"coll": COLL, "type": "O", "filename": U7, "token": T(app, U7)},
              headers={"Range": "bytes=50-60"})
    assert res.status == 416
    assert res.header("Content-Range") == "bytes */10"


@configs(ALL)
def test_42_head(app):
    put_ok(app, U7, b"0123456789")
    query = {"coll": COLL, "type": "O", "filename": U7, "token": T(app, U7)}
    full = get(app, "/fileget", query)
    res = req(app, "HEAD", "/fileget", query)
    assert (res.status, res.body) == (200, b"")
    assert same_headers(res, full)


@configs(ALL)
def test_43_missing_file(app):
    res = fileget(app, "nope.jpg")
    assert res.status == 404 and res.header("Content-Type")


@configs(ALL)
def test_44_traversal_not_served(tmp_path, app):
    write(tmp_path / "secret.txt", b"secret")
    plant(app, "secret.txt", b"secret")
    for raw_name in ("../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "%2e%2e%2fsecret.txt",
                     "..%5Csecret.txt", "..%2F..%2Fsecret.txt"):
        query = "coll=%s&type=O&filename=%s&token=%s" % (
            quote_plus(COLL), raw_name, quote_plus(T(app, unquote(raw_name))))
        res = get(app, "/fileget", query)
        assert res.status in (400, 404), (raw_name, res)
        assert b"secret" not in res.body and b"root:" not in res.body


@configs("B")
def test_45_require_key_for_get(app):
    put_ok(app, U7, b"x")
    assert fileget(app, U7, signed=False).status == 403
    assert fileget(app, U7).status == 200
    for bad in (T(app, U7, -150), T(app, "other.jpg")):
        assert get(app, "/fileget", {"coll": COLL, "type": "O", "filename": U7,
                                     "token": bad}).status == 403


@configs("C")
def test_46_collection_dirs_fileget(app):
    plant(app, "fish/originals/" + U7, b"fish")
    assert fileget(app, U7, coll="Unknown").status == 404
    assert fileget(app, U7).body == b"fish"
    assert fileget(app, U7, coll="KUFishtissue").body == b"fish"


@configs(ALL)
def test_47_duplicate_filename_last_wins(app):
    put_ok(app, "first.jpg", b"first")
    put_ok(app, "last.jpg", b"last")
    res = get(app, "/fileget", [("coll", COLL), ("type", "O"), ("filename", "first.jpg"),
                                ("filename", "last.jpg"), ("token", T(app, "last.jpg"))])
    assert res.body == b"last"


@configs(ALL)
def test_48_post_fileget_and_missing_type(app):
    res = req(app, "POST", "/fileget", body=b"")
    assert res.status == 405 and set(res.header("Allow").split(",")) == {"GET", "HEAD"}
    put_ok(app, U7, b"x")
    res = get(app, "/fileget", {"coll": COLL, "filename": U7, "token": T(app, U7)})
    assert (res.status, res.body) == (200, b"x")


# =========================================================================== E. thumbnails

def assert_thumbnail(res, content_type, max_side):
    assert res.status == 200, res
    assert res.header("Content-Type") == content_type
    width, height, _ = decode(res.body)
    assert max(width, height) <= max_side
    return width, height


@needs_convert
@configs(ALL)
def test_49_sp7_thumbnail(app, images):
    put_ok(app, U7, images["jpeg"])
    size = assert_thumbnail(thumb(app, U7, 123, signed=app.settings.REQUIRE_KEY_FOR_GET),
                            "image/jpeg", 123)
    assert size == (123, 92)
    assert thumbnails_of(app) == [ROOT7 + "_123.jpg"]


@needs_convert
@configs(ALL)
def test_50_sp6_thumbnail(app, images):
    put_ok(app, U6, images["jpeg"], layout="sp6")
    query = [("type", "T"), ("scale", "200"), ("filename", U6), ("token", T(app, U6)),
             ("coll", COLL)] + SP6_EXTRA
    assert_thumbnail(get(app, "/fileget", query), "image/jpeg", 200)


@needs_convert
@configs(GET_WITHOUT_TOKEN)
def test_50_portal_thumbnail(app, images):
    put_ok(app, U7, images["jpeg"])
    res = get(app, "/fileget", [("coll", COLL), ("type", "T"), ("filename", U7), ("scale", "200")])
    assert_thumbnail(res, "image/jpeg", 200)


@needs_convert
@configs(THUMB_CFGS)
def test_51_no_enlargement(app, images):
    put_ok(app, U7, images["small"])
    assert assert_thumbnail(thumb(app, U7, 200), "image/jpeg", 200) == (50, 40)


@needs_convert
@configs(THUMB_CFGS)
@pytest.mark.parametrize("ext", [".pdf", ".tif", ".heic", ".heif"])
def test_52_png_thumbnails(app, images, ext):
    name = ROOT7 + ext
    put_ok(app, name, images[ext])
    assert_thumbnail(thumb(app, name, 123), "image/png", 123)
    assert thumbnails_of(app) == [ROOT7 + "_123.png"]


@configs(ALL)
def test_53_thumbnail_of_missing_original(app):
    assert thumb(app, U7, 123).status == 404


@configs(ALL)
def test_54_not_thumbnailable(app):
    for name in ("x.docx", "x.txt"):
        put_ok(app, name, b"PK\x03\x04 not an image at all")
        assert thumb(app, name, 123).status == 404, name
        assert get(app, "/testkey", {"random": RANDOM, "token": T(app, RANDOM)}).status == 200
        assert fileget(app, name).status == 200


@configs(ALL)
def test_55_bad_scale(app):
    put_ok(app, U7, b"\xff\xd8\xff not decoded: the scale is checked first")
    query = [("coll", COLL), ("type", "T"), ("filename", U7), ("token", T(app, U7))]
    for scale in (None, "", "abc", "0", "-5", "1.5", " 12", "+12", "0x10"):
        res = get(app, "/fileget", query + ([("scale", scale)] if scale is not None else []))
        assert res.status == 400, (scale, res)
    assert thumbnails_of(app) == []


@needs_convert
@configs(THUMB_CFGS)
def test_55_scale_above_max(tmp_path, cfg, images, backend):
    app = build(tmp_path, cfg, backend=backend, THUMBNAIL_SIZES=None, MAX_SCALE=300)
    put_ok(app, U7, images["jpeg"])
    for scale in ("301", "99999999999999999999"):
        assert thumb(app, U7, scale).status == 400
    assert assert_thumbnail(thumb(app, U7, 300), "image/jpeg", 300) == (300, 225)


@configs("B")
def test_56_thumbnail_needs_token(app):
    put_ok(app, U7, b"x")
    assert thumb(app, U7, 123, signed=False).status == 403


# =========================================================================== F. /filedelete

@configs(ALL)
def test_57_sp7_delete(app):
    put_ok(app, U7, b"x")
    body = urlencode([("filename", U7), ("coll", COLL), ("token", T(app, U7))])
    assert "coll=KU+Fish+Voucher+Collection" in body and "%3A" in body
    res = req(app, "POST", "/filedelete", body=body.encode(), headers={"Content-Type": FORM})
    assert (res.status, res.body) == (200, b"Ok.")
    assert fileget(app, U7).status == 404


@configs(ALL)
def test_58_sp6_delete(app):
    put_ok(app, U6, b"x", layout="sp6")
    fields = [("filename", U6), ("token", T(app, U6)), ("coll", COLL)] + SP6_EXTRA
    res = delete(app, U6, content_type=FORM + "; charset=UTF-8", fields=fields)
    assert res.status == 200
    assert originals(app) == []


@configs(ALL)
def test_59_delete_missing(app):
    assert delete(app, "nope.jpg").status == 404


@config_cases(("wrong", WITH_KEY), ("expired", WITH_TIME), ("missing", WITH_KEY))
def test_60_delete_bad_token(app, case):
    put_ok(app, U7, b"x")
    tok = {"wrong": T(app, U7, key="wrong"), "expired": T(app, U7, -150), "missing": ""}[case]
    fields = [("filename", U7), ("coll", COLL)] + ([("token", tok)] if tok else [])
    assert delete(app, U7, fields=fields).status == 403
    assert fileget(app, U7).body == b"x"


@configs(WITH_KEY)
def test_61_delete_params_in_query_only(app):
    put_ok(app, U7, b"x")
    res = req(app, "POST", "/filedelete", {"filename": U7, "token": T(app, U7)}, body=b"",
              headers={"Content-Type": FORM})
    assert res.status == 403
    assert fileget(app, U7).status == 200


@needs_convert
@configs(THUMB_CFGS)
@both_addressings
def test_62_delete_removes_own_thumbnails(app, images):
    for name in (U7, "sp61.att.jpg", "sp612.att.jpg"):
        put_ok(app, name, images["jpeg"])
    for name, scale in ((U7, 123), (U7, 200), ("sp61.att.jpg", 200), ("sp612.att.jpg", 200)):
        assert thumb(app, name, scale).status == 200
    # Look-alikes that belong to nobody (or to another attachment) must stay too.
    for stray in (ROOT7 + "_123.jpg.bak", ROOT7 + "x_123.jpg", ROOT7 + "_.jpg"):
        plant(app, relative_dir(app, storage.THUMBNAIL) + "/" + stray, b"stray")
    assert delete(app, U7).status == 200
    assert delete(app, "sp61.att.jpg").status == 200
    assert thumbnails_of(app) == sorted(
        ["sp612.att_200.jpg", ROOT7 + "_123.jpg.bak", ROOT7 + "x_123.jpg", ROOT7 + "_.jpg"])
    assert originals(app) == ["sp612.att.jpg"]


@configs(ALL)
def test_63_delete_traversal(tmp_path, app):
    put_ok(app, U7, b"keep")
    plant(app, coll_dir(app) + "x", b"keep")
    write(tmp_path / "x", b"keep")
    before = everything(tmp_path, app)
    for name in ("../x", "../originals/" + U7, "..\\x", "x/../" + U7, "../../x"):
        assert delete(app, name).status == 400, name
    assert everything(tmp_path, app) == before


@configs(ALL)
def test_64_get_filedelete(app):
    res = get(app, "/filedelete")
    assert res.status == 405 and res.header("Allow") == "POST"


# =========================================================================== G. /getmetadata

def sp6_metadata(app, name, dt="json"):
    query = [("dt", dt), ("filename", name), ("token", T(app, name)), ("coll", COLL)] + SP6_EXTRA
    return get(app, "/getmetadata", query)


@configs(ALL)
def test_65_metadata_without_exif(app):
    put_ok(app, U6, b"\xff\xd8\xff\xd9", layout="sp6")
    res = sp6_metadata(app, U6)
    assert (res.status, res.header("Content-Type")) == (200, "application/json")
    assert json.loads(res.body.decode("utf-8")) == []


@needs_convert
@configs(ALL)
def test_66_metadata_json(app, images):
    put_ok(app, U6, images["exif"], layout="sp6")
    res = sp6_metadata(app, U6)
    assert res.status == 200
    groups = json.loads(res.body.decode("utf-8"))
    assert isinstance(groups, list) and groups
    for group in groups:
        assert set(group) == {"Name", "Fields"} and isinstance(group["Name"], str)
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in group["Fields"].items())
    by_name = {group["Name"]: group["Fields"] for group in groups}
    assert by_name["EXIF"]["DateTimeOriginal"] == DATE
    assert by_name["Image"]["Make"] == "Canon"


@needs_convert
@configs(ALL)
def test_67_metadata_date(app, images):
    put_ok(app, U6, images["exif"], layout="sp6")
    put_ok(app, U7, images["jpeg"])
    res = sp6_metadata(app, U6, dt="date")
    assert (res.status, res.body) == (200, DATE.encode())
    assert sp6_metadata(app, U7, dt="date").status == 404


@configs(ALL)
def test_68_metadata_missing_file(app):
    assert sp6_metadata(app, "nope.jpg").status == 404


@configs("B")
def test_68_metadata_needs_token(app):
    put_ok(app, U7, b"x")
    assert get(app, "/getmetadata", {"dt": "json", "filename": U7}).status == 403


# =========================================================================== H. legacy portal

def static_sub(app):
    return "fish/" if app.settings.COLLECTION_DIRS else ""


@configs(WITH_STATIC)
def test_69_getfileref_original(app):
    res = get(app, "/getfileref", {"coll": COLL, "type": "O", "filename": U7})
    assert (res.status, res.header("Content-Type")) == (200, "text/plain; charset=utf-8")
    assert res.body == ("http://localhost:8080/static/%soriginals/%s"
                        % (static_sub(app), U7)).encode()


@needs_convert
@configs(WITH_STATIC)
def test_70_getfileref_thumbnail(app, images):
    put_ok(app, U7, images["jpeg"])
    res = get(app, "/getfileref", {"coll": COLL, "type": "T", "filename": U7, "scale": "200"})
    assert res.body == ("http://localhost:8080/static/%sthumbnails/%s_200.jpg"
                        % (static_sub(app), ROOT7)).encode()
    assert thumbnails_of(app) == [ROOT7 + "_200.jpg"]


@configs(WITH_STATIC)
def test_71_static(app):
    put_ok(app, U7, b"static bytes")
    res = get(app, "/static/%soriginals/%s" % (static_sub(app), U7))
    assert (res.status, res.body) == (200, b"static bytes")
    assert get(app, "/static/originals/nope.jpg").status == 404


STATIC_ESCAPES = ["/static/../settings.py", "/static/originals/../../settings.py",
                  "/static/%2e%2e/settings.py", "/static/..%2fsettings.py", "/static/..\\settings.py",
                  "/static//settings.py", "/static/originals/\x00", "/static/.%2e/settings.py",
                  "/static/.upload-x.tmp", "/static/"]


@configs(ALL)
def test_71_static_escapes(tmp_path, app):
    write(tmp_path / "settings.py", b"KEY = 'secret'")
    plant(app, ".upload-x.tmp", b"KEY = 'secret'")
    for path in STATIC_ESCAPES:
        res = get(app, path)
        assert res.status in (400, 404), (path, res)
        assert b"secret" not in res.body


@configs("E")
def test_72_static_disabled(app):
    put_ok(app, U7, b"x")
    assert get(app, "/getfileref", {"coll": COLL, "type": "O", "filename": U7}).status == 404
    assert get(app, "/static/originals/" + U7).status == 404


@needs_convert
@configs(GET_WITHOUT_TOKEN)
def test_73_modern_portal(app, images):
    put_ok(app, U7, images["jpeg"])
    xml_url = "http://localhost:8080/web_asset_store.xml"
    image_base_url = xml_url.replace("/web_asset_store.xml", "")
    read = url_path(image_base_url + "/fileget")
    res = get(app, read, [("coll", COLL), ("type", "T"), ("filename", U7), ("scale", "200")])
    assert_thumbnail(res, "image/jpeg", 200)
    res = get(app, read, [("coll", COLL), ("type", "O"), ("filename", U7)])
    assert res.body == images["jpeg"]


@configs(ALL)
def test_73_script_name_prefix(app):
    res = get(app, "/web_asset_store.xml", script_name="/assets")
    assert xml_urls(res.body) == expected_urls("http://localhost:8080/assets")
    put_ok(app, U7, b"prefixed")
    res = get(app, "/fileget", {"coll": COLL, "type": "O", "filename": U7, "token": T(app, U7)},
              script_name="/assets")
    assert res.body == b"prefixed"


# =========================================================================== I. misc

@configs(ALL)
def test_74_index(app):
    res = get(app, "/")
    assert (res.status, res.body) == (200, b"It works!")


@configs(ALL)
def test_75_unknown_path(app):
    for path in ("/nope", "/fileget/", "/static", "/testkey/x", "/web_asset_store.xml/"):
        assert get(app, path).status == 404, path


def error_requests(app):
    """Yield (method, path, query, kwargs, expected status) of protocol-endpoint errors."""
    yield "GET", "/testkey", {"random": "x"}, {}, 403
    yield "POST", "/testkey", None, {}, 405
    yield "POST", "/web_asset_store.xml", None, {}, 405
    yield "GET", "/fileget", {"type": "O", "filename": "nope.jpg"}, {}, 404
    yield "GET", "/fileget", {"type": "O", "filename": "../x"}, {}, 400
    yield "GET", "/fileget", {"type": "T", "filename": "nope.jpg", "scale": "x"}, {}, 400
    yield "GET", "/getmetadata", {"filename": "nope.jpg"}, {}, 404
    yield "POST", "/filedelete", None, {"body": b"filename=x"}, 403
    yield "POST", "/fileupload", None, {"body": b"x", "headers": {"Content-Type": FORM}}, 400
    yield "GET", "/fileupload", None, {}, 405


@configs("A")
def test_76_x_timestamp_on_errors(app):
    for method, path, query, kwargs, status in error_requests(app):
        res = req(app, method, path, query, **kwargs)  # req() asserts X-Timestamp
        assert res.status == status, (method, path, res)


@configs("AC")
def test_77_cors_on_every_upload_status(tmp_path, app):
    statuses = {put(app, U7, b"ok").status, put(app, U7, b"x", tok="bad").status,
                put(app, "../x", b"x").status, put(app, U7, b"x", coll="Unknown").status,
                req(app, "OPTIONS", "/fileupload").status}  # req() asserts ACAO on each
    assert statuses == ({200, 403, 400, 404} if app.settings.COLLECTION_DIRS else {200, 403, 400})
    limited = build(tmp_path / "limited", "A", MAX_UPLOAD_SIZE=10)
    assert put(limited, U7, b"x" * 100).status == 413
    assert get(app, "/getfileref", {"type": "O", "filename": U7, "coll": COLL}).status == 200


@needs_convert
@configs(ALL)
@both_addressings
def test_78_sp7_lifecycle(app, images):
    client = sp7_client(app, offset=10000)
    client.discover()
    assert client.test_key().status == 200
    signed = {"token": client.generate_token(U7)} if app.settings.REQUIRE_KEY_FOR_GET else {}

    def read(**query):
        return client.get("read", [("coll", COLL)] + sorted(query.items()) + sorted(signed.items()))

    assert client.upload(U7, images["jpeg"]).status == 200
    assert_thumbnail(read(type="T", filename=U7, scale="123"), "image/jpeg", 123)
    res = read(type="O", filename=U7, downloadname="photo.jpg")
    assert (res.status, res.body, res.header("Content-Type")) == (200, images["jpeg"], "image/jpeg")
    res = client.get("read", {"filename": U7, "coll": COLL, "type": "O",
                              "token": client.generate_token(U7)})
    assert res.status == 200
    for expected in (200, 404):
        assert client.delete(U7).status == expected  # resyncs the clock, as Specify 7 does
    assert read(type="O", filename=U7).status == 404


@needs_convert
@configs(ALL)
@both_addressings
def test_79_sp6_lifecycle(app, images):
    client = sp6_client(app, offset=-10000)
    client.discover()
    assert client.send("GET", "testkey", {"random": "-42",
                                          "token": client.generate_token("-42")}).status == 200
    # Each request below is Specify 6's exact field order, disp/div/inst included.
    assert client.upload(U6, images["exif"], "O", file_name="IMG 0001.JPG").status == 200
    assert client.upload(U6, b"client thumbnail", "T", file_name="sp6_thumb_42.tmp").status == 200
    assert_thumbnail(client.fileget(U6, "T", "200"), "image/jpeg", 200)
    assert client.fileget(U6, "O", "null").body == images["exif"]
    res = client.getmetadata(U6)
    assert res.status == 200 and isinstance(json.loads(res.body.decode("utf-8")), list)
    for expected in (200, 404):
        assert client.delete(U6).status == expected


# =========================================================================== extras (issue 2)

@configs("A")
@pytest.mark.parametrize("method,path,allowed", [
    ("GET", "/fileupload", {"OPTIONS", "POST"}), ("PUT", "/fileupload", {"OPTIONS", "POST"}),
    ("OPTIONS", "/fileget", {"GET", "HEAD"}), ("DELETE", "/fileget", {"GET", "HEAD"}),
    ("POST", "/testkey", {"GET", "HEAD"}), ("GET", "/filedelete", {"POST"}),
    ("POST", "/getmetadata", {"GET", "HEAD"}), ("POST", "/", {"GET", "HEAD"}),
    ("POST", "/static/originals/x", {"GET", "HEAD"}),
])
def test_extra_method_not_allowed(app, method, path, allowed):
    res = req(app, method, path, body=b"")
    assert res.status == 405
    assert set(res.header("Allow").split(",")) == allowed


@configs("AC")
def test_extra_max_upload_size(tmp_path, cfg, backend):
    app = build(tmp_path, cfg, backend=backend, MAX_UPLOAD_SIZE=1000)
    put_ok(app, U7, b"small")
    assert put(app, U7, b"x" * 2000).status == 413
    assert put(app, U7, b"x" * 2000, layout="sp6").status == 413
    assert fileget(app, U7).body == b"small"
    assert store_snapshot(app) == {os.path.join(relative_dir(app), U7): b"small"}


@configs(ALL)
@pytest.mark.parametrize("layout", ["sp7", "sp6"])
def test_extra_type_t_upload_never_touches_originals(tmp_path, app, layout):
    put_ok(app, U7, b"original")
    before = everything(tmp_path, app)
    for store in (U7, "absent.jpg", "../escape.jpg"):
        res = put(app, store, b"thumb", layout=layout, upload_type="T")
        assert (res.status, res.body) == (200, b"Ignoring thumbnail upload!"), store
        assert everything(tmp_path, app) == before, store


@configs(WITH_KEY)
def test_extra_sp6_bad_token_refused_before_body(app):
    body, headers = sp6_upload(U6, pseudo_random(8 << 20, 6), T(app, U6, key="wrong"))
    stream = FakeInput(body)
    assert raw_post(app, stream, len(body), headers).status == 403
    assert stream.count <= multipart.CHUNK_SIZE  # one read buffer of the 8 MiB body at most


@configs("AC")
@pytest.mark.parametrize("layout", ["sp7", "sp6"])
def test_extra_interrupted_upload(app, layout):
    put_ok(app, U7, b"previous")
    body, headers = (sp7_upload if layout == "sp7" else sp6_upload)(
        U7, pseudo_random(300 * 1024, 7), T(app, U7))
    res = raw_post(app, FakeInput(body, cut=200 * 1024), len(body), headers)
    assert res.status == 400
    assert fileget(app, U7).body == b"previous"
    assert originals(app) == [U7]
    assert store_snapshot(app).keys() == {os.path.join(relative_dir(app), U7)}


@configs("AC")
@pytest.mark.parametrize("layout", ["sp7", "sp6"])
def test_extra_disk_full(app, layout, monkeypatch):
    put_ok(app, U7, b"previous")

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    def unavailable(self, data):
        raise storage.StoreUnavailable("S3 unavailable: connection refused")

    # A full disk, or a bucket that stops answering in the middle of the upload.
    if is_s3(app):
        monkeypatch.setattr(S3Upload, "write", unavailable)
    else:
        monkeypatch.setattr(storage.StagedFile, "write", full)
    res = put(app, U7, pseudo_random(100 * 1024, 8), layout=layout)
    assert res.status == (503 if is_s3(app) else 507)
    monkeypatch.undo()
    assert fileget(app, U7).body == b"previous"
    assert originals(app) == [U7]
    assert len(store_snapshot(app)) == 1


HOSTILE_NAMES = ["../x", "a/b", "..\\x", "x\x00y", "x\x01y", "x\ny", ".hidden", "..", ".", ""]


def name_requests(app, name):
    """Yield the responses of every endpoint that takes `name` as filename."""
    signed = [("token", T(app, name))]
    yield get(app, "/fileget", [("coll", COLL), ("type", "O"), ("filename", name)] + signed)
    yield get(app, "/fileget", [("coll", COLL), ("type", "T"), ("filename", name),
                                ("scale", "64")] + signed)
    yield get(app, "/getmetadata", [("filename", name)] + signed)
    yield delete(app, name)
    if app.settings.ALLOW_STATIC_FILE_ACCESS:
        yield get(app, "/getfileref", {"type": "O", "filename": name})


@configs(ALL)
def test_extra_hostile_query_names(tmp_path, app):
    put_ok(app, U7, b"x")
    write(tmp_path / "x", b"outside")
    plant(app, ".hidden", b"hidden")
    before = everything(tmp_path, app)
    for name in HOSTILE_NAMES:
        for res in name_requests(app, name):
            assert res.status == 400, (name, res)
    assert everything(tmp_path, app) == before


@configs("AC")
@pytest.mark.parametrize("layout", ["sp7", "sp6"])
def test_extra_hostile_coll(tmp_path, app, layout):
    for coll in ("../x", "a/b", "..\\x", "x\x00y", ".hidden", "..", ""):
        res = put(app, U7, b"x", layout=layout, coll=coll)
        if app.settings.COLLECTION_DIRS:
            assert res.status == 404, coll
            assert everything(tmp_path, app) == {}, coll
        else:
            assert res.status == 200, coll  # COMPAT: coll is ignored without COLLECTION_DIRS
            assert originals(app) == [U7]


@pytest.mark.parametrize("directory", ["../x", "/abs", "..\\x", "a/../../x", "x\x00y", "", "."])
def test_extra_hostile_collection_dir_setting(tmp_path, directory):
    with pytest.raises(config.ConfigError):
        make_settings(tmp_path, COLLECTION_DIRS={COLL: directory})


LEGIT_NAMES = ["my photo.jpg", "résumé 東京.jpg", "100%.jpg", "it's \"quoted\".jpg", "README",
               "sp6123.att.jpg", ROOT7 + ".JPG", "a+b&c=d;e.jpg", "-rf.jpg"]


@needs_convert
@pytest.mark.parametrize("name", LEGIT_NAMES)
def test_extra_legitimate_names_end_to_end(tmp_path, images, name, backend):
    app = build(tmp_path, "B", backend=backend)
    layout = "sp6" if name.encode("latin-1", "ignore").decode("latin-1") == name else "sp7"
    put_ok(app, name, images["jpeg"], layout=layout)
    put_ok(app, name, images["jpeg"])
    assert fileget(app, name).body == images["jpeg"]
    res = thumb(app, name, 64)
    assert res.status == 200 and decode(res.body)[:2] == (64, 48)
    assert get(app, "/getmetadata", {"filename": name, "token": T(app, name)}).status == 200
    ref = get(app, "/getfileref", {"type": "O", "filename": name}).body.decode("ascii")
    # What a WSGI server puts in PATH_INFO: the URL's bytes, percent-decoded, as latin-1.
    assert get(app, unquote(url_path(ref), encoding="latin-1")).body == images["jpeg"]
    assert originals(app) == [name] and len(thumbnails_of(app)) == 1
    assert delete(app, name).status == 200
    assert originals(app) == [] and thumbnails_of(app) == []


@configs(ALL)
def test_extra_conditional_get(app):
    put_ok(app, U7, b"0123456789")
    full = fileget(app, U7)
    etag, modified = full.header("ETag"), full.header("Last-Modified")
    assert etag and modified
    query = {"coll": COLL, "type": "O", "filename": U7, "token": T(app, U7)}
    for headers in ({"If-None-Match": etag}, {"If-None-Match": '"x", ' + etag},
                    {"If-Modified-Since": modified}):
        res = get(app, "/fileget", query, headers=headers)
        assert (res.status, res.body) == (304, b""), headers
        assert res.header("ETag") == etag
    assert get(app, "/fileget", query, headers={"If-None-Match": '"other"'}).status == 200
    res = get(app, "/fileget", query, headers={"Range": "bytes=-3"})
    assert (res.status, res.body) == (206, b"789")


def test_extra_refused_token_reason_is_logged(app, caplog):
    caplog.set_level("INFO", logger="webassets.app")
    assert req(app, "GET", "/testkey", {"random": "x", "token": "a:b:c"}).status == 403
    assert "Refused GET /testkey: malformed token" in caplog.text


def test_extra_os_error_reason_names_no_server_path(app, monkeypatch):
    """A FileNotFoundError that escapes (e.g. a race with a delete) is a plain 404."""

    def vanished(source, target, scale):
        raise FileNotFoundError(2, "No such file or directory", source)

    monkeypatch.setattr(app.thumbnailer, "thumbnail", vanished)
    put_ok(app, U7, b"x")
    res = req(app, "GET", "/fileget", {"type": "T", "filename": U7, "scale": "123"})
    assert res.status == 404
    assert app.settings.BASE_DIR.encode() not in res.body
