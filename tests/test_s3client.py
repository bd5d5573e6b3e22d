"""The stdlib S3 client: SigV4, addressing, retries and failure modes, against real S3 servers."""

import hashlib
import io
import os
import ssl
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, HTTPServer
from socketserver import ThreadingMixIn

import pytest

from tests.deploy_util import make_certificate, which
from tests.s3servers import both_addressings, resolve_localhost
from webassets.storage import s3client, sigv4
from webassets.storage.s3client import (AccessDenied, InvalidRange, NoSuchKey, PreconditionFailed,
                                        S3Client, S3Config, S3Error, S3Unavailable)

MiB = 1024 * 1024
# Which servers honour PUT If-None-Match: * (conditional writes). Recorded, so a
# change either way shows up here; `webassets check` reports it for a real bucket.
CONDITIONAL_WRITES = {"seaweedfs": True, "moto": True}
# Which servers create buckets whose names have capitals (AWS did before 2018).
CAPITAL_BUCKETS = {"seaweedfs": False, "moto": True}
AWKWARD_KEYS = ["with space.jpg", "plus+sign.jpg", "percent%20d.jpg", "tilde~.jpg",
                "ünïcødé 日本.jpg", "dir/sub/file.jpg", "amp&lt<gt>'quote\".jpg",
                "query?hash#eq=semi;colon.jpg", "  two  spaces  "]


def pattern(size, seed=b"webassets"):
    """Return `size` reproducible, incompressible-looking bytes."""
    block = b"".join(hashlib.sha256(seed + b"%d" % n).digest() for n in range(2048))
    return (block * (size // len(block) + 1))[:size]


@pytest.fixture
def bucket(s3_server):
    return s3_server.new_bucket()


@pytest.fixture
def client(s3_server, bucket, addressing):
    """Return a client of `bucket`, path-style unless the test asks for both addressings."""
    return s3_server.client(bucket, addressing=addressing)


# --------------------------------------------------------------------------- real servers

@both_addressings
def test_put_head_get_delete(client):
    etag = client.put("a.txt", b"hello world", content_type="text/plain",
                      metadata={"Origin-Mtime": "1700000000.5"})
    info = client.head("a.txt")
    assert info.etag == etag == '"%s"' % hashlib.md5(b"hello world").hexdigest()
    assert (info.size, info.content_type) == (11, "text/plain")
    assert info.metadata == {"origin-mtime": "1700000000.5"}
    assert abs(info.last_modified - time.time()) < 600
    with client.get("a.txt") as result:
        assert (result.status, result.info.size, result.content_range) == (200, 11, None)
        assert result.info.etag == etag
        assert result.read() == b"hello world"
    buffer = bytearray(8)
    with client.get("a.txt") as result:
        assert [result.readinto(buffer) for _ in range(3)] == [8, 3, 0]
        assert bytes(buffer) == b"rldlo wo"
    client.delete("a.txt")
    with pytest.raises(NoSuchKey) as caught:
        client.head("a.txt")
    assert (caught.value.status, caught.value.key) == (404, "a.txt")
    with pytest.raises(NoSuchKey):
        client.get("a.txt")
    client.delete("a.txt")  # idempotent


def test_put_from_a_file_position(client):
    source = io.BytesIO(b"skip me|the rest")
    source.seek(8)
    client.put("f", source)
    assert client.get_bytes("f", 0, 100) == b"the rest"


def test_ranges(client):
    data = pattern(1000)
    client.put("r", data)
    with client.get("r", range="bytes=10-19") as result:
        assert (result.status, result.content_range, result.info.size) == (206, (10, 19, 1000),
                                                                            1000)
        assert result.read() == data[10:20]
    with client.get("r", range="bytes=-5") as result:
        assert (result.content_range, result.read()) == ((995, 999, 1000), data[-5:])
    with client.get("r", range="bytes=990-") as result:
        assert result.read() == data[990:]
    assert client.get_bytes("r", 998, 5000) == data[998:]
    with pytest.raises(InvalidRange) as caught:
        client.get("r", range="bytes=1000-")
    assert caught.value.status == 416
    assert caught.value.size in (1000, None)  # the object's size when the server says it


def test_conditional_get(client):
    etag = client.put("c", b"cached")
    modified = client.head("c").last_modified
    with client.get("c", if_none_match=etag) as result:
        assert (result.status, result.read()) == (304, b"")
    with client.get("c", if_none_match='"other"') as result:
        assert (result.status, result.read()) == (200, b"cached")
    with client.get("c", if_modified_since=modified + 60) as result:
        assert result.status == 304
    with client.get("c", if_modified_since="Sat, 01 Jan 2000 00:00:00 GMT") as result:
        assert result.status == 200
    # RFC 7232: If-Modified-Since counts only without If-None-Match.
    with client.get("c", if_none_match='"other"', if_modified_since=modified + 60) as result:
        assert result.status == 200


def test_conditional_put(client, s3_server):
    client.put("lease", b"first", if_none_match_star=True)
    if CONDITIONAL_WRITES[s3_server.name]:
        with pytest.raises(PreconditionFailed):
            client.put("lease", b"second", if_none_match_star=True)
        assert client.get_bytes("lease", 0, 99) == b"first"
    else:
        client.put("lease", b"second", if_none_match_star=True)
        assert client.get_bytes("lease", 0, 99) == b"second"


# Virtual-hosted, the key is encoded as path-style encodes it: one key with them all.
@pytest.mark.parametrize("key, addressing", [(key, "path") for key in AWKWARD_KEYS] + [
    ("/".join(AWKWARD_KEYS), "virtual")], indirect=["addressing"])
def test_awkward_keys_round_trip(client, key):
    client.put(key, key.encode("utf-8"))
    assert client.head(key).size == len(key.encode("utf-8"))
    assert client.get_bytes(key, 0, 999) == key.encode("utf-8")
    assert [info.key for info in client.list(key)] == [key]
    client.delete(key)
    assert list(client.list(key)) == []


class Counting:
    """A source handing out `size` bytes in chunks, counting what it handed out."""

    def __init__(self, data, chunk=MiB):
        self.data = data
        self.chunk = chunk
        self.given = 0

    def chunks(self):
        while self.given < len(self.data):
            piece = self.data[self.given:self.given + self.chunk]
            self.given += len(piece)
            yield piece


@pytest.mark.parametrize("inflight", [0, 1])
def test_multipart_writer_in_constant_memory(client, inflight):
    data = pattern(20 * MiB + 12345)
    source = Counting(data)
    most_held = 0
    with client.writer("big.bin", content_type="application/octet-stream",
                       part_size=5 * MiB, inflight=inflight) as writer:
        for piece in source.chunks():
            writer.write(piece)
            most_held = max(most_held, source.given - writer.uploaded)
            if writer.uploaded:
                with pytest.raises(NoSuchKey):  # no partial object at the key
                    client.head("big.bin")
        etag = writer.commit()
    # One part filling and `inflight` parts being sent, never more.
    bound = (inflight + 1) * 5 * MiB
    assert most_held <= bound and writer.peak_buffered <= bound
    assert writer.peak_buffered > 5 * MiB or not inflight  # a part was sent in the background
    assert writer.size == len(data)
    assert etag.strip('"').endswith("-5")  # a multipart ETag: 5 parts
    info = client.head("big.bin")
    assert (info.size, info.etag, info.content_type) == (len(data), etag,
                                                          "application/octet-stream")
    digest = hashlib.sha256()
    with client.get("big.bin") as result:
        for piece in iter(lambda: result.read(MiB), b""):
            digest.update(piece)
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()
    assert list(client.list_multipart_uploads("big")) == []


@pytest.mark.parametrize("size", [5 * MiB, 15 * MiB, 17 * MiB + 3, 12345])
def test_upload_file_sends_parts_in_parallel(client, tmp_path, size):
    data = pattern(size, seed=b"%d" % size)
    path = tmp_path / "local.bin"
    path.write_bytes(b"skipped" + data)
    writer = client.writer("up.bin", content_type="image/tiff", part_size=5 * MiB)
    with open(str(path), "rb") as local:
        local.seek(len(b"skipped"))  # a file is sent from its position
        etag = writer.upload_file(local, threads=3)
    parts = -(-size // (5 * MiB))
    assert writer.peak_buffered <= min(3, parts) * 5 * MiB
    info = client.head("up.bin")
    assert (info.size, info.etag, info.content_type) == (size, etag, "image/tiff")
    assert etag.strip('"').endswith("-%d" % parts) == (parts > 1)
    with client.get("up.bin") as result:
        assert hashlib.sha256(result.read()).digest() == hashlib.sha256(data).digest()
    assert list(client.list_multipart_uploads("up")) == []
    with pytest.raises(ValueError):
        writer.write(b"more")


def test_upload_file_takes_a_path(client, tmp_path):
    data = pattern(11 * MiB)
    (tmp_path / "a.bin").write_bytes(data)
    etag = client.upload_file("a.bin", str(tmp_path / "a.bin"), part_size=5 * MiB)
    assert client.head("a.bin").etag == etag
    assert client.get_bytes("a.bin", 0, 11 * MiB) == data


@both_addressings
def test_copy_on_the_server(client):
    client.put("from/a b.txt", b"copied", content_type="text/plain", metadata={"m": "1"})
    etag = client.copy("from/a b.txt", "to/ü.txt")
    info = client.head("to/ü.txt")
    assert (info.etag, info.content_type, info.metadata) == (etag, "text/plain", {"m": "1"})
    assert client.get_bytes("to/ü.txt", 0, 99) == b"copied"
    with pytest.raises(NoSuchKey):
        client.copy("absent", "to/x")


def test_copy_in_parts(client):
    data = pattern(11 * MiB)
    client.put("whole", data, content_type="image/tiff")
    client.copy_limit, client.copy_part_size = MiB, 5 * MiB
    client.copy("whole", "copied")
    info = client.head("copied")
    assert (info.size, info.content_type) == (len(data), "image/tiff")
    assert info.etag.strip('"').endswith("-3")
    with client.get("copied") as result:
        assert hashlib.sha256(result.read()).digest() == hashlib.sha256(data).digest()
    assert client.stats.snapshot()["requests"]["upload_part_copy"] == 3


def test_small_writer_is_one_put(client):
    with client.writer("small", part_size=5 * MiB) as writer:
        writer.write(b"tiny")
        etag = writer.commit()
    assert writer.upload_id is None
    assert client.head("small").etag == etag
    assert client.stats.snapshot()["requests"].get("create_multipart") is None


def test_abort_on_exception_leaves_nothing(client):
    with pytest.raises(RuntimeError):
        with client.writer("cut.bin", part_size=5 * MiB) as writer:
            writer.write(pattern(11 * MiB))
            assert writer.upload_id is not None
            raise RuntimeError("the client went away")
    with pytest.raises(NoSuchKey):
        client.head("cut.bin")
    assert [upload for upload in client.list_multipart_uploads("") if upload[0] == "cut.bin"] == []
    with pytest.raises(ValueError):
        writer.write(b"more")


@both_addressings
def test_list_pages(client):
    keys = ["p/%02d" % n for n in range(7)] + ["p/sub%d/x" % n for n in range(3)]
    for key in keys:
        client.put(key, b"x")
    client.put("q/other", b"x")
    listed = [info.key for info in client.list("p/", page_size=2)]
    assert listed == sorted(keys)
    assert [info.key for info in client.list("p/", start_after="p/05", page_size=2)] == [
        "p/06", "p/sub0/x", "p/sub1/x", "p/sub2/x"]
    assert client.stats.snapshot()["requests"]["list"] == 5 + 2
    assert list(client.list_prefixes("p/", page_size=2)) == ["p/sub0/", "p/sub1/", "p/sub2/"]
    assert list(client.list_prefixes("")) == ["p/", "q/"]
    info = next(client.list("q/"))
    assert (info.size, info.etag, info.content_type) == (1, client.head("q/other").etag, None)


@both_addressings
def test_list_and_abort_multipart_uploads(client, s3_server):
    writer = client.writer("pending/upload.bin", part_size=5 * MiB)
    writer.write(pattern(5 * MiB + 1))
    uploads = list(client.list_multipart_uploads("pending/"))
    assert [(key, upload_id) for key, upload_id, _ in uploads] == [
        ("pending/upload.bin", writer.upload_id)]
    if s3_server.name != "moto":  # moto answers a fixed Initiated time (in 2010)
        assert abs(uploads[0][2] - time.time()) < 600
    client.abort_multipart("pending/upload.bin", writer.upload_id)
    assert list(client.list_multipart_uploads("pending/")) == []
    client.abort_multipart("pending/upload.bin", writer.upload_id)  # idempotent
    writer.abort()


def test_list_multipart_uploads_pages(client):
    writers = [client.writer("pending/%d" % number, part_size=5 * MiB) for number in range(3)]
    for writer in writers:
        writer.write(pattern(5 * MiB + 1))
    listed = [(key, upload_id) for key, upload_id, _ in
              client.list_multipart_uploads("pending/", page_size=1)]
    assert sorted(listed) == sorted((writer.key, writer.upload_id) for writer in writers)
    for writer in writers:
        writer.abort()
    assert list(client.list_multipart_uploads("pending/")) == []


def test_virtual_hosted_requests_name_the_bucket_in_the_host(s3_server, monkeypatch):
    resolve_localhost(monkeypatch)
    virtual = s3_server.client("wa-virtual-%s" % uuid.uuid4().hex[:8], addressing="virtual")
    host, host_header, path = virtual.config.target("k")
    assert (host, path) == (virtual.config.bucket + ".localhost", "/k")
    assert host_header == "%s:%d" % (host, virtual.config.port)
    virtual.create_bucket()
    virtual.put("dir/from virtual", b"v")
    path_style = s3_server.client(virtual.config.bucket)
    path_style.put("dir/from path", b"p")
    for each in (virtual, path_style):  # one bucket, whichever way it is named
        assert [info.key for info in each.list("dir/")] == ["dir/from path", "dir/from virtual"]
    assert virtual.get_bytes("dir/from path", 0, 9) == b"p"


@pytest.mark.parametrize("name", ["wa.dotted.%s", "Wa-Capitals-%s"])
def test_a_bucket_name_that_is_no_host_label_is_addressed_by_path(s3_server, monkeypatch,
                                                                   caplog, name):
    resolve_localhost(monkeypatch)
    client = s3_server.client(name % uuid.uuid4().hex[:8], addressing="virtual")
    assert client.config.addressing == "path"
    assert "using path-style addressing" in caplog.text
    if name[0].isupper() and not CAPITAL_BUCKETS[s3_server.name]:
        with pytest.raises(S3Error, match="InvalidBucketName"):
            client.create_bucket()
        return
    # Virtual-hosted, moto would look for bucket "wa", and the capitals would be lost.
    client.create_bucket()
    client.put("k", b"by path")
    assert client.get_bytes("k", 0, 99) == b"by path"


@both_addressings
def test_wrong_secret_is_access_denied_without_retries(s3_server, bucket, addressing):
    pauses = []
    config = s3_server.config(bucket, secret_key="not-the-secret", retries=4,
                              addressing=addressing)
    bad = S3Client(config, sleep=pauses.append)
    for attempt in (lambda: bad.put("x", b"data"), lambda: bad.head("x"),
                    lambda: list(bad.list(""))):
        with pytest.raises(AccessDenied) as caught:
            attempt()
        assert caught.value.status == 403
    assert pauses == []
    assert bad.stats.snapshot()["requests"] == {"put": 1, "head": 1, "list": 1}


def test_unknown_access_key_is_access_denied(s3_server, bucket):
    with pytest.raises(AccessDenied):
        s3_server.client(bucket, access_key="AKIAUNKNOWN0000000000").put("x", b"data")


def test_clock_skew_is_corrected(s3_server, bucket):
    late = S3Client(s3_server.config(bucket), clock=lambda: time.time() - 3600)
    late.put("skew", b"it works")
    assert late.get_bytes("skew", 0, 99) == b"it works"
    assert abs(late.clock_offset - 3600) < 5
    # The request that found the skew was answered RequestTimeTooSkewed and retried
    # once, or the server does not check the time (then Date taught the offset).
    assert late.stats.snapshot()["errors"] in ({}, {"RequestTimeTooSkewed": 1})


def test_session_token_on_moto(moto):
    bucket = moto.new_bucket()
    access_key, secret_key, token = moto.assume_role()
    temporary = moto.client(bucket, access_key=access_key, secret_key=secret_key,
                            session_token=token)
    temporary.put("k", b"with a session token")
    assert temporary.get_bytes("k", 0, 99) == b"with a session token"
    for wrong in ("not-the-token", None):
        with pytest.raises(AccessDenied):
            moto.client(bucket, access_key=access_key, secret_key=secret_key,
                        session_token=wrong).put("k", b"refused")


# --------------------------------------------------------------------------- pure parts

def test_sigv4_matches_aws_documented_examples():
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    date = "20130524T000000Z"
    headers = {"host": "examplebucket.s3.amazonaws.com", "range": "bytes=0-9",
               "x-amz-content-sha256": sigv4.EMPTY_SHA256, "x-amz-date": date}
    value = sigv4.authorization("GET", "/test.txt", [], headers, sigv4.EMPTY_SHA256,
                                "AKIAIOSFODNN7EXAMPLE", secret, "us-east-1", date)
    assert value.endswith("SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, Signature="
                          "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")
    del headers["range"]
    value = sigv4.authorization("GET", "/", [("max-keys", "2"), ("prefix", "J")], headers,
                                sigv4.EMPTY_SHA256, "AKIAIOSFODNN7EXAMPLE", secret,
                                "us-east-1", date)
    assert value.endswith("34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7")


def test_uri_encoding():
    assert sigv4.uri_encode("a b+c%d~e/ü", keep_slash=True) == "a%20b%2Bc%25d~e/%C3%BC"
    assert sigv4.uri_encode("a/b=c") == "a%2Fb%3Dc"
    assert sigv4.wire_query([("uploads", ""), ("prefix", "a b")]) == "uploads&prefix=a%20b"
    assert sigv4.canonical_query([("uploads", ""), ("prefix", "a b")]) == \
        "prefix=a%20b&uploads="


def test_addressing(caplog):
    aws = S3Config("my-bucket", region="eu-west-1", access_key="a", secret_key="s")
    assert (aws.addressing, aws.endpoint) == ("virtual", "https://s3.eu-west-1.amazonaws.com")
    assert aws.target("dir/a b") == ("my-bucket.s3.eu-west-1.amazonaws.com",
                                     "my-bucket.s3.eu-west-1.amazonaws.com", "/dir/a%20b")
    assert aws.target() == ("my-bucket.s3.eu-west-1.amazonaws.com",
                            "my-bucket.s3.eu-west-1.amazonaws.com", "/")
    dotted = S3Config("my.bucket", access_key="a", secret_key="s")
    assert dotted.addressing == "path"
    assert dotted.target("k") == ("s3.us-east-1.amazonaws.com", "s3.us-east-1.amazonaws.com",
                                  "/my.bucket/k")
    custom = S3Config("b1", endpoint="http://Minio.local:9000", access_key="a",
                      secret_key="s")
    assert (custom.addressing, custom.port) == ("path", 9000)
    assert custom.target() == ("minio.local", "minio.local:9000", "/b1")
    virtual = S3Config("b1", endpoint="https://sos.example:8443", addressing="virtual",
                       access_key="a", secret_key="s")
    assert virtual.target("k") == ("b1.sos.example", "b1.sos.example:8443", "/k")
    assert caplog.text == ""  # "auto" chose path for my.bucket: nothing to warn about


@pytest.mark.parametrize("bucket, endpoint", [
    ("my.bucket", None), ("my.bucket", "http://s3.example"), ("My-Bucket", "http://s3.example"),
    ("my_bucket", "http://s3.example"), ("b" * 64, "http://s3.example"),
    ("-b1", "http://s3.example"), ("b1", "http://127.0.0.1:9000"), ("b1", "https://[::1]"),
])
def test_virtual_falls_back_to_path_where_no_host_name_can_name_the_bucket(
        bucket, endpoint, caplog):
    config = S3Config(bucket, endpoint=endpoint, addressing="virtual", access_key="a",
                      secret_key="s")
    assert config.addressing == "path"
    assert config.target("k")[2] == "/%s/k" % bucket
    assert "cannot be addressed virtual-hosted" in caplog.text


@pytest.mark.parametrize("values, problem", [
    (dict(bucket=""), "bucket"), (dict(addressing="dns"), "addressing"),
    (dict(endpoint="ftp://host"), "endpoint"), (dict(endpoint="http://host/path"), "path"),
    (dict(access_key=None, secret_key=None), "credentials"),
])
def test_config_errors(values, problem):
    arguments = dict(bucket="b1", access_key="a", secret_key="s", environ={})
    arguments.update(values)
    with pytest.raises(s3client.S3ConfigError, match=problem):
        S3Config(**arguments)


def test_credentials_from_the_environment():
    environ = {"AWS_ACCESS_KEY_ID": "AKENV", "AWS_SECRET_ACCESS_KEY": "secret",
               "AWS_SESSION_TOKEN": "token"}
    config = S3Config("b1", environ=environ)
    assert (config.access_key, config.secret_key, config.session_token) == (
        "AKENV", "secret", "token")
    # Keys from the settings never borrow the environment's session token.
    config = S3Config("b1", access_key="a", secret_key="s", environ=environ)
    assert (config.access_key, config.session_token) == ("a", None)


def test_unsafe_xml_is_refused():
    bomb = b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><x>&a;</x>'
    with pytest.raises(S3Error, match="DOCTYPE"):
        s3client.parse_xml(bomb)
    root = s3client.parse_xml(b'<R xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><K>v</K></R>')
    assert (root.tag, root.findtext("K")) == ("R", "v")


# --------------------------------------------------------------------------- a scripted fake

class _Threading(ThreadingMixIn, HTTPServer):
    daemon_threads = True
    block_on_close = False


class FakeS3:
    """A loopback HTTP server answering from a script: [(status, headers, body)] or 'drop'.

    Records (method, path, headers, body) of every request and the client's port (one
    per connection); answers 200 once the script runs out.
    """

    def __init__(self, script, tls=None):
        self.script = list(script)
        self.requests = []
        self.ports = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {name.lower(): value for name, value in self.headers.items()}
                fake.requests.append((self.command, self.path, headers, body))
                fake.ports.append(self.client_address[1])
                status, headers, data = fake.script.pop(0) if fake.script else (200, {}, b"")
                if status == "drop":
                    self.close_connection = True
                    return
                self.send_response_only(status)  # no Date of its own: tests send one
                for name, value in headers.items():
                    if name == "hang-up":  # close after answering, without saying so
                        self.close_connection = True
                    else:
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _answer

        self.server = _Threading(("127.0.0.1", 0), Handler)
        scheme = "http"
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            scheme = "https"
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.01})
        self.thread.start()
        self.endpoint = "%s://127.0.0.1:%d" % (scheme, self.server.server_address[1])

    def client(self, pauses, **overrides):
        values = dict(endpoint=self.endpoint, access_key="AKFAKE", secret_key="secret",
                      retries=3, timeout=10.0)
        values.update(overrides)
        return S3Client(S3Config("fake", **values), sleep=pauses.append)

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def fake():
    servers = []

    def make(*script, **options):
        servers.append(FakeS3(script, **options))
        return servers[-1]
    yield make
    for server in servers:
        server.close()


def error(status, code, message="", extra=""):
    body = ("<Error><Code>%s</Code><Message>%s</Message>%s<RequestId>r1</RequestId></Error>"
            % (code, message, extra)).encode()
    return (status, {"Content-Type": "application/xml"}, body)


def test_retries_5xx_and_resends_a_file_body(fake):
    server = fake(error(503, "SlowDown"), (500, {}, b""), (200, {"ETag": '"e"'}, b""))
    pauses = []
    source = io.BytesIO(b"xxthe body")
    source.seek(2)
    assert server.client(pauses).put("k", source) == '"e"'
    assert [request[3] for request in server.requests] == [b"the body"] * 3
    assert len(pauses) == 2 and 0 < pauses[0] <= pauses[1] * 2


@pytest.mark.parametrize("answer", [
    error(500, "InternalError"), (502, {}, b""), error(503, "SlowDown"), (504, {}, b"<html/>"),
    error(400, "RequestTimeout"), error(503, "ServiceUnavailable"),
])
def test_retries_each_transient_answer(fake, answer):
    server = fake(answer, (200, {}, b"body"))
    pauses = []
    assert server.client(pauses).get_bytes("k", 0, 9) == b"body"
    assert len(server.requests) == 2 and len(pauses) == 1


def test_gives_up_after_the_retries(fake):
    server = fake(*[error(500, "InternalError")] * 4)
    pauses = []
    client = server.client(pauses, retries=3)
    with pytest.raises(S3Unavailable) as caught:
        client.head("k")
    assert caught.value.status == 500 and len(server.requests) == 4 and len(pauses) == 3
    assert client.stats.snapshot()["requests"] == {"head": 4}


def test_retries_a_dropped_connection(fake):
    server = fake("drop", (200, {"ETag": '"e"'}, b""))
    pauses = []
    assert server.client(pauses).put("k", b"data") == '"e"'
    assert len(server.requests) == 2


@pytest.mark.parametrize("answer, exception", [
    (error(403, "AccessDenied"), AccessDenied), (error(404, "NoSuchKey"), NoSuchKey),
    (error(412, "PreconditionFailed"), PreconditionFailed),
    (error(416, "InvalidRange", extra="<ActualObjectSize>7</ActualObjectSize>"), InvalidRange),
    (error(400, "InvalidArgument"), S3Error),
])
def test_never_retries_client_errors(fake, answer, exception):
    server = fake(answer)
    pauses = []
    with pytest.raises(exception) as caught:
        server.client(pauses).get("k", range="bytes=9-")
    assert (len(server.requests), pauses) == (1, [])
    assert (caught.value.status, caught.value.request_id, caught.value.key) == (
        answer[0], "r1", "k")
    if exception is InvalidRange:
        assert caught.value.size == 7


def test_request_time_too_skewed_is_retried_once_with_the_servers_date(fake):
    server_now = time.time() + 7200
    date = s3client.email.utils.formatdate(server_now, usegmt=True)
    skewed = error(403, "RequestTimeTooSkewed")
    skewed[1]["Date"] = date
    server = fake(skewed, (200, {"ETag": '"e"', "Date": date}, b""), skewed, skewed)
    pauses = []
    client = server.client(pauses)
    client.put("k", b"x")
    assert abs(client.clock_offset - 7200) < 5 and pauses == []
    first, second = (request[2]["x-amz-date"] for request in server.requests)
    assert second > first
    with pytest.raises(AccessDenied):  # still skewed after the retry: no second retry
        client.put("k", b"x")
    assert len(server.requests) == 4


def test_session_token_is_sent_and_signed(fake):
    server = fake((200, {}, b""))
    server.client([], session_token="the-token").head("k")
    headers = server.requests[0][2]
    assert headers["x-amz-security-token"] == "the-token"
    assert "x-amz-security-token" in headers["authorization"].split("SignedHeaders=")[1]
    assert headers["x-amz-content-sha256"] == sigv4.EMPTY_SHA256


CREATED = (200, {}, b"<InitiateMultipartUploadResult><UploadId>u1</UploadId>"
                    b"</InitiateMultipartUploadResult>")
PART = (200, {"ETag": '"p"'}, b"")


def test_complete_answering_200_with_an_error_raises_and_aborts(fake):
    server = fake(CREATED, PART, PART, error(200, "InvalidPart", "gone"), (204, {}, b""))
    writer = server.client([]).writer("k", part_size=4)
    writer.write(b"123456")
    with pytest.raises(S3Error) as caught:
        writer.commit()
    assert (caught.value.code, caught.value.message) == ("InvalidPart", "gone")
    assert [request[:2] for request in server.requests[-2:]] == [
        ("POST", "/fake/k?uploadId=u1"), ("DELETE", "/fake/k?uploadId=u1")]
    assert b"<PartNumber>2</PartNumber><ETag>\"p\"</ETag>" in server.requests[3][3]


def test_a_failed_background_part_surfaces_and_the_upload_aborts(fake):
    server = fake(CREATED, error(403, "AccessDenied"))
    with server.client([]).writer("k", part_size=4) as writer:
        writer.write(b"12345")  # part 1 goes up in the background
        with pytest.raises(AccessDenied):  # part 2 waits for part 1 to land
            writer.write(b"6789")
        with pytest.raises(AccessDenied):  # the upload stays failed
            writer.commit()
    assert [request[:2] for request in server.requests] == [
        ("POST", "/fake/k?uploads"), ("PUT", "/fake/k?partNumber=1&uploadId=u1"),
        ("DELETE", "/fake/k?uploadId=u1")]


def test_a_failed_background_part_fails_commit(fake):
    server = fake(CREATED, error(403, "AccessDenied"), PART, (204, {}, b""))
    writer = server.client([]).writer("k", part_size=4)
    writer.write(b"123456")
    with pytest.raises(AccessDenied):
        writer.commit()
    assert server.requests[-1][:2] == ("DELETE", "/fake/k?uploadId=u1")
    assert writer._executor is None  # the background thread was stopped


def test_a_failed_file_part_aborts_the_upload(fake, tmp_path):
    (tmp_path / "f").write_bytes(b"0123456789")
    server = fake(CREATED, PART, error(403, "AccessDenied"), PART)
    with pytest.raises(AccessDenied):
        server.client([]).upload_file("k", str(tmp_path / "f"), part_size=4, threads=1)
    assert [request[:2] for request in server.requests] == [
        ("POST", "/fake/k?uploads"), ("PUT", "/fake/k?partNumber=1&uploadId=u1"),
        ("PUT", "/fake/k?partNumber=2&uploadId=u1"), ("DELETE", "/fake/k?uploadId=u1")]


def test_complete_with_an_empty_etag_asks_head(fake):
    done = (200, {}, b"<CompleteMultipartUploadResult><ETag></ETag>"
                     b"</CompleteMultipartUploadResult>")
    server = fake(CREATED, PART, PART, done, (200, {"ETag": '"whole-2"'}, b""))
    writer = server.client([]).writer("k", part_size=4)
    writer.write(b"123456")
    assert writer.commit() == '"whole-2"'
    assert server.requests[-1][:2] == ("HEAD", "/fake/k")


def test_keeps_connections_alive(fake):
    server = fake((200, {}, b""), (200, {}, b"x" * 100), (200, {}, b""),
                  (200, {}, b"y" * (1024 * 1024)))
    client = server.client([])
    client.put("a", b"1")
    with client.get("a") as result:
        assert result.read() == b"x" * 100
    client.head("a")
    with client.get("big") as result:
        assert result.read(10) == b"y" * 10  # closed early: the connection cannot be reused
    client.head("a")
    assert len(set(server.ports[:4])) == 1 and server.ports[4] != server.ports[3]


# The fake's threads run in this process; the child touches only the client.
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_opens_its_own_connections(fake):
    server = fake()
    client = server.client([])
    client.head("a")
    child = os.fork()
    if child == 0:  # pragma: no cover (the child)
        try:
            client.head("b")
        finally:
            os._exit(0)
    assert os.waitpid(child, 0)[1] == 0
    client.head("c")
    assert [request[1] for request in server.requests] == ["/fake/a", "/fake/b", "/fake/c"]
    assert server.ports[0] == server.ports[2] != server.ports[1]


def test_a_connection_the_server_closed_is_reopened_without_a_retry(fake):
    server = fake((200, {"hang-up": "1"}, b""), (200, {"ETag": '"e"'}, b""))
    pauses = []
    client = server.client(pauses, retries=0)
    client.head("a")
    assert client.put("a", b"1") == '"e"'
    assert pauses == [] and len(server.requests) == 2
    assert client.stats.snapshot()["errors"] == {}  # an idle connection closing is no error


def test_threads_share_a_client(s3_server, bucket):
    client = s3_server.client(bucket)
    failures = []

    def work(number):
        try:
            for round_ in range(5):
                key = "t%d/%d" % (number, round_)
                client.put(key, key.encode())
                assert client.get_bytes(key, 0, 99) == key.encode()
        except Exception as ex:  # noqa: BLE001 (reported below)
            failures.append(ex)
    threads = [threading.Thread(target=work, args=(number,)) for number in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert len(list(client.list("t"))) == 20


def test_a_private_ca_file(fake, tmp_path):
    if which("openssl") is None:
        pytest.skip("openssl is not installed (Debian: openssl)")
    cert, key = make_certificate(str(tmp_path))
    server = fake((200, {"ETag": '"e"'}, b""), tls=(cert, key))
    assert server.client([], ca_file=cert).head("k").etag == '"e"'
    pauses = []
    with pytest.raises(S3Error) as caught:  # the system's CAs do not know it: no retries
        server.client(pauses).head("k")
    assert (caught.value.code, pauses) == ("TLSError", [])
    with open(str(tmp_path / "junk.pem"), "w") as junk:
        junk.write("not a certificate")
    for bad in (str(tmp_path / "absent.pem"), junk.name):
        with pytest.raises(s3client.S3ConfigError, match="CA file"):
            server.client([], ca_file=bad)
