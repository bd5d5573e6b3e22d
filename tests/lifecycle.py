"""The Specify 7 and Specify 6 attachment lifecycles (PROTOCOL.md items 78, 79) over any client."""

# A client has `base_url` and `request(method, path, query=None, body=b"", headers=None,
# sink=None) -> Result` (tests.helpers.Result: `.status`, `.header(name)`, `.body`).
# HTTPClient talks HTTP(S) to a real server; WSGIClient calls an app in-process.
# The lifecycles discover the URLs from web_asset_store.xml, follow them as the
# clients do, and compute tokens from X-Timestamp with each client's own clock logic.

import hmac
import http.client
import json
import random
import ssl
import time
import uuid
import xml.etree.ElementTree as ElementTree
from urllib.parse import urlencode, urlsplit

from tests.helpers import COLL, KEY, Result, call, sp6_upload, sp7_upload

__all__ = ["HTTPClient", "WSGIClient", "Sp7Backend", "Sp6Client", "sp7_lifecycle",
           "sp6_lifecycle", "XML_TYPES"]

# type attribute -> the endpoint each URL must name (PROTOCOL.md 3.1).
XML_TYPES = {"read": "fileget", "write": "fileupload", "delete": "filedelete",
             "getmetadata": "getmetadata", "testkey": "testkey"}
SP6_SYSTEM_OFFSET = 100000  # WebStoreAttachmentMgr.getSystemTime() adds it on purpose
SP6_CONTEXT = (("disp", "Ichthyology"), ("div", "Fish"), ("inst", "KU"))
RESPONSE_BLOCK = 1024 * 1024


def _query_string(query):
    if query is None:
        return ""
    return query if isinstance(query, str) else urlencode(query)


def _hmac_token(key, timestamp, name):
    """Return '<hex>:<ts>' as both Specify clients compute it (not via webassets.auth)."""
    digest = hmac.new(key.encode("utf-8"), (str(timestamp) + name).encode("utf-8"), "md5")
    return digest.hexdigest() + ":" + str(timestamp)


def expect(result, status, step):
    """Raise AssertionError naming `step` unless `result` has `status`; return it."""
    if result.status != status:
        raise AssertionError("%s: expected %d, got %r" % (step, status, result))
    return result


class HTTPClient:
    """A client over http.client: one connection per request, like Specify's clients."""

    def __init__(self, base_url, ssl_context=None, timeout=60.0):
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or parts.path not in ("", "/"):
            raise ValueError("base_url must be http(s)://host:port, got %r" % (base_url,))
        self.base_url = "%s://%s" % (parts.scheme, parts.netloc)
        self.scheme, self.host, self.port = parts.scheme, parts.hostname, parts.port
        self.ssl_context = ssl_context
        self.timeout = timeout

    def connect(self):
        """Return a new, unopened HTTP(S) connection to the server."""
        if self.scheme == "https":
            return http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout,
                                               context=self.ssl_context)
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)

    def request(self, method, path, query=None, body=b"", headers=None, sink=None):
        """Send one request; return a Result.

        `body` is bytes or an iterable of bytes (sent chunked unless headers
        give Content-Length). With `sink`, the response body is passed to
        sink(chunk) block by block and Result.body is b"".
        """
        query = _query_string(query)
        target = path + ("?" + query if query else "")
        headers = dict(headers or {})
        if isinstance(body, bytes) and (body or method in ("POST", "PUT")):
            headers.setdefault("Content-Length", str(len(body)))
        connection = self.connect()
        try:
            connection.request(method, target, body=body if body != b"" else None,
                               headers=headers)
            response = connection.getresponse()
            data = self._read(response, sink)
            return Result(response.status, response.getheaders(), data)
        finally:
            connection.close()

    @staticmethod
    def _read(response, sink):
        if sink is None:
            return response.read()
        while True:
            chunk = response.read(RESPONSE_BLOCK)
            if not chunk:
                return b""
            sink(chunk)


class WSGIClient:
    """The same interface over an in-process app, mounted at script_name.

    `call` makes each request: tests.helpers.call, or a wrapper with its signature
    (tests/test_protocol.py passes its `req`, which checks every response).
    """

    def __init__(self, app, script_name="", base_url="http://localhost:8080", call=call):
        self.app = app
        self.script_name = script_name.rstrip("/")
        self.base_url = base_url
        self.call = call

    def request(self, method, path, query=None, body=b"", headers=None, sink=None):
        """Call the app with `path` (which includes the mount); return a Result."""
        if not path.startswith(self.script_name + "/"):
            return Result(404, [], b"outside the mount")
        if not isinstance(body, bytes):
            body = b"".join(body)
        result = self.call(self.app, method, path[len(self.script_name):],
                           query=_query_string(query), body=body, headers=headers,
                           script_name=self.script_name)
        if sink is not None:
            sink(result.body)
            result.body = b""
        return result


def fetch_urls(client, xml_path, public_base):
    """GET web_asset_store.xml and check it; return (result, {type: url}).

    Parsed as Specify 7 does (ElementTree, `url.text` untrimmed). Every URL
    must be exactly `public_base` + '/' + its endpoint, with no query string.
    """
    result = expect(client.request("GET", xml_path), 200, "GET " + xml_path)
    if result.header("X-Timestamp") is None:
        raise AssertionError("web_asset_store.xml has no X-Timestamp: both clients break")
    root = ElementTree.fromstring(result.body)
    urls = {url.attrib["type"]: url.text for url in root.findall("url")}
    wanted = {kind: public_base + "/" + endpoint for kind, endpoint in XML_TYPES.items()}
    if urls != wanted:
        raise AssertionError("web_asset_store.xml advertises %r, expected %r" % (urls, wanted))
    return result, urls


def default_public_base(client, xml_path):
    """Return the base the XML should advertise: the client's server plus the XML's directory."""
    return client.base_url + xml_path.rsplit("/", 1)[0]


def path_of(url):
    """Return the path a client requests for an advertised URL."""
    return urlsplit(url).path


class _SpecifyClient:
    """What both clients share: the advertised URLs and a clock resynced from X-Timestamp.

    The client's clock is clock() + offset (offset: its error against the server).
    """

    SYSTEM_OFFSET = 0
    NO_TIMESTAMP = None  # how the client dies when it never saw an X-Timestamp

    def __init__(self, client, key=KEY, xml_path="/web_asset_store.xml", public_base=None,
                 offset=0, clock=time.time):
        self.client = client
        self.key = key
        self.xml_path = xml_path
        self.public_base = public_base or default_public_base(client, xml_path)
        self.offset = offset
        self.clock = clock
        self.server_time_delta = None
        self.urls = None

    def now(self):
        """Return the client's own clock in whole seconds."""
        return int(self.clock() + self.offset) + self.SYSTEM_OFFSET

    def update_time_delta(self, result):
        timestamp = result.header("X-Timestamp")
        if timestamp is not None:
            self.server_time_delta = int(timestamp) - self.now()

    def generate_token(self, name):
        if self.server_time_delta is None:
            raise AssertionError(self.NO_TIMESTAMP)
        return _hmac_token(self.key, self.now() + self.server_time_delta, name)

    def discover(self):
        """Fetch and check the XML, resync the clock; return the XML's Result."""
        result, self.urls = fetch_urls(self.client, self.xml_path, self.public_base)
        self.update_time_delta(result)
        return result


class Sp7Backend(_SpecifyClient):
    """Specify 7's attachment_gw: clock delta from the XML and delete responses only."""

    NO_TIMESTAMP = "no X-Timestamp seen: Specify 7's init() dies with TypeError"

    def test_key(self):
        """GET testkey with a fresh UUID and its token; return the Result."""
        random_value = str(uuid.uuid4())
        return self.get("testkey", [("random", random_value),
                                    ("token", self.generate_token(random_value))])

    def init(self):
        """Fetch the XML, resync the clock, test the key (views.py init())."""
        self.discover()
        expect(self.test_key(), 200, "Sp7 testkey")

    def get(self, kind, query, sink=None):
        return self.client.request("GET", path_of(self.urls[kind]), query, sink=sink)

    def upload(self, store, content, coll=COLL, file_name="photo.jpg", mime="image/jpeg"):
        """Upload as the browser does, with a token minted just before (uploadFile)."""
        body, headers = sp7_upload(store, content, self.generate_token(store), coll=coll,
                                   file_name=file_name, file_type=mime)
        return self.client.request("POST", path_of(self.urls["write"]), body=body,
                                   headers=headers)

    def delete(self, store, coll=COLL):
        """POST the delete form as delete_attachment_file does; resync the clock."""
        body = urlencode([("filename", store), ("coll", coll),
                          ("token", self.generate_token(store))]).encode("ascii")
        result = self.client.request(
            "POST", path_of(self.urls["delete"]), body=body,
            headers={"Content-Type": "application/x-www-form-urlencoded"})
        self.update_time_delta(result)
        return result


class Sp6Client(_SpecifyClient):
    """Specify 6's WebStoreAttachmentMgr: +100000 s clock, resynced after every response."""

    SYSTEM_OFFSET = SP6_SYSTEM_OFFSET
    NO_TIMESTAMP = "no X-Timestamp seen: Specify 6 throws NullPointerException"

    def update_time_delta(self, result):
        try:
            super().update_time_delta(result)
        except ValueError:
            pass  # Long.parseLong failed: Specify 6 keeps the old delta

    def send(self, method, kind, query=None, body=b"", headers=None):
        """Send to an advertised URL and resync the clock from the answer."""
        result = self.client.request(method, path_of(self.urls[kind]), query, body, headers)
        self.update_time_delta(result)
        return result

    def init(self):
        """Fetch the XML (getURLSetupXML) and test the key (testKey, a signed int)."""
        self.discover()
        random_value = str(random.randint(-2 ** 31, 2 ** 31 - 1))
        expect(self.send("GET", "testkey", [("random", random_value),
                                            ("token", self.generate_token(random_value))]),
               200, "Sp6 testkey")

    def upload(self, store, content, upload_type="O", file_name="IMG 0001.JPG", coll=COLL):
        body, headers = sp6_upload(store, content, self.generate_token(store), coll=coll,
                                   file_name=file_name, upload_type=upload_type)
        return self.send("POST", "write", body=body, headers=headers)

    def _signed(self, location, coll, first=()):
        return list(first) + [("filename", location), ("token", self.generate_token(location)),
                              ("coll", coll)] + list(SP6_CONTEXT)

    def fileget(self, location, file_type, scale, coll=COLL):
        """GET type, scale ('null' for originals), filename, token, coll, disp, div, inst."""
        query = self._signed(location, coll, [("type", file_type), ("scale", str(scale))])
        return self.send("GET", "read", query)

    def getmetadata(self, location, coll=COLL):
        return self.send("GET", "getmetadata", self._signed(location, coll, [("dt", "json")]))

    def delete(self, location, coll=COLL):
        body = urlencode(self._signed(location, coll)).encode("utf-8")
        return self.send("POST", "delete", body=body, headers={
            "Content-Type": "application/x-www-form-urlencoded; charset=UTF-8"})


def _expect_image(result, step):
    expect(result, 200, step)
    content_type = result.header("Content-Type") or ""
    if not content_type.startswith("image/") or not result.body:
        raise AssertionError("%s: expected an image, got %r" % (step, result))


def _expect_bytes(result, content, step):
    expect(result, 200, step)
    if result.body != content:
        raise AssertionError("%s: %d bytes differ from the %d uploaded"
                             % (step, len(result.body), len(content)))


def sp7_lifecycle(client, content, xml_path="/web_asset_store.xml", public_base=None, key=KEY,
                  coll=COLL, scale=123):
    """Run PROTOCOL.md item 78 (Specify 7) with a JPEG `content`; return the location used.

    Raises AssertionError naming the step that failed.
    """
    backend = Sp7Backend(client, key, xml_path, public_base)
    backend.init()                                                         # 1. XML, testkey
    location = str(uuid.uuid4()) + ".jpg"
    expect(backend.upload(location, content, coll), 200, "Sp7 upload")   # 2.
    _expect_image(backend.get("read", [("coll", coll), ("type", "T"), ("filename", location),
                                       ("scale", str(scale))]), "Sp7 thumbnail")    # 3.
    original = backend.get("read", [("coll", coll), ("type", "O"), ("filename", location),
                                    ("downloadname", "photo.jpg")])
    _expect_bytes(original, content, "Sp7 original")                      # 4.
    if not original.header("Content-Type") or "inline" not in (
            original.header("Content-Disposition") or ""):
        raise AssertionError("Sp7 original: Content-Type or inline disposition missing: %r"
                             % (original,))
    _expect_bytes(backend.get("read", [("filename", location), ("coll", coll), ("type", "O"),
                                       ("token", backend.generate_token(location))]),
                  content, "Sp7 download_all")                             # 5.
    expect(backend.delete(location, coll), 200, "Sp7 delete")             # 6.
    expect(backend.delete(location, coll), 404, "Sp7 delete again")       # 7.
    expect(backend.get("read", [("coll", coll), ("type", "O"), ("filename", location)]),
           404, "Sp7 original after delete")                              # 8.
    return location


def sp6_lifecycle(client, content, xml_path="/web_asset_store.xml", public_base=None, key=KEY,
                  coll=COLL, scale=200):
    """Run PROTOCOL.md item 79 (Specify 6) with a JPEG `content`; return the location used.

    Raises AssertionError naming the step that failed.
    """
    sp6 = Sp6Client(client, key, xml_path, public_base)
    sp6.init()                                                             # 1. XML, testkey
    location = "sp6%d.att.jpg" % random.randint(10 ** 17, 10 ** 18)
    expect(sp6.upload(location, content, coll=coll), 200, "Sp6 upload")   # 2.
    expect(sp6.upload(location, b"client thumbnail", upload_type="T",
                      file_name="sp6_thumb_4711.tmp", coll=coll), 200, "Sp6 thumbnail upload")  # 3.
    _expect_image(sp6.fileget(location, "T", scale, coll), "Sp6 thumbnail")          # 4.
    _expect_bytes(sp6.fileget(location, "O", "null", coll), content,
                  "Sp6 original (intact after the type=T upload)")        # 5.
    metadata = expect(sp6.getmetadata(location, coll), 200, "Sp6 getmetadata")        # 6.
    if not isinstance(json.loads(metadata.body.decode("utf-8")), list):
        raise AssertionError("Sp6 getmetadata: not a JSON array: %r" % (metadata,))
    expect(sp6.delete(location, coll), 200, "Sp6 delete")                 # 7.
    expect(sp6.delete(location, coll), 404, "Sp6 delete again")           # 8.
    return location


def trusting(cafile):
    """Return an SSL context that trusts only the certificate in `cafile`."""
    return ssl.create_default_context(cafile=cafile)
