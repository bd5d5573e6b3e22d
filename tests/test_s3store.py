"""S3Store on the real S3 servers: what the protocol checklist cannot see (requests, bytes)."""

import collections
import concurrent.futures
import email.utils
import errno
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from tests.fake_s3 import FakeS3Client
from tests.fakes import ASCII, FakeClock, FakeInput, fake_thumbnailer, tiff_block, with_exif
from tests.helpers import (COLL, DATE, SP7_BOUNDARY, U6, U7, make_settings, multipart_body,
                           needs_convert, sp6_upload, sp7_upload)
from tests.stores import S3Backend, store_snapshot
from tests.test_protocol import (build, fileget, pseudo_random, put, put_ok, raw_post, req,
                                 thumb, T)
from webassets import config, samples, storage
from webassets.app import create_app
from webassets.exitcodes import EXIT_CONFIG
from webassets.storage import StagedFile, factory
from webassets.storage.s3 import PROBE_TTL, READ_AHEAD_MIN, SOURCE_ETAG, RangedReader, S3Store
from webassets.storage.s3client import S3Unavailable
from webassets.thumbnails import thumbnail_name

Usage = collections.namedtuple("Usage", "total used free")


@pytest.fixture
def app(tmp_path, s3_server, addressing, request):
    """Return an app on S3Store, on each real server, in a fresh prefix (CFG-A)."""
    app = build(tmp_path, "A", backend=S3Backend.on(request.node.callspec.params["s3_server"],
                                                    s3_server, addressing))
    assert app.store.client.config.addressing == addressing  # (no silent fallback to path)
    return app


def requests(app):
    """Return {operation: count} of the app's S3 client so far."""
    return dict(app.store.client.stats.snapshot()["requests"])


def delta(app, before):
    """Return the S3 operations made since `before` (requests())."""
    now = requests(app)
    return {op: count - before.get(op, 0) for op, count in now.items()
            if count != before.get(op, 0)}


# ---------------------------------------------------------------------------- downloads

def test_a_download_is_one_get(app):
    put_ok(app, U7, b"0123456789")
    query = {"coll": COLL, "type": "O", "filename": U7, "token": T(app, U7)}
    for headers, status in (({}, 200), ({"Range": "bytes=2-5"}, 206)):
        before = requests(app)
        assert req(app, "GET", "/fileget", query, headers=headers).status == status
        assert delta(app, before) == {"get": 1}


def test_head_reads_no_body(app):
    put_ok(app, U7, b"0123456789")
    before = requests(app)
    res = req(app, "HEAD", "/fileget", {"coll": COLL, "type": "O", "filename": U7})
    assert (res.status, res.header("Content-Length")) == (200, "10")
    assert delta(app, before) == {"head": 1}


def test_if_range_of_another_version_sends_the_whole_file(app):
    put_ok(app, U7, b"0123456789")
    query = {"coll": COLL, "type": "O", "filename": U7}
    etag = fileget(app, U7).header("ETag")
    res = req(app, "GET", "/fileget", query, headers={"Range": "bytes=2-3", "If-Range": etag})
    assert (res.status, res.body) == (206, b"23")
    res = req(app, "GET", "/fileget", query, headers={"Range": "bytes=2-3", "If-Range": '"old"'})
    assert (res.status, res.body) == (200, b"0123456789")


def test_same_headers_as_the_local_store(tmp_path, app):
    local = build(tmp_path / "local", "A")
    for each in (app, local):
        put_ok(each, U7, b"0123456789")
    for headers in ({}, {"Range": "bytes=-3"}, {"Range": "bytes=20-"}):
        seen = []
        for each in (app, local):
            res = req(each, "GET", "/fileget", {"coll": COLL, "type": "O", "filename": U7,
                                                "downloadname": "a.jpg"}, headers=headers)
            seen.append((res.status, res.body, sorted(
                name for name, _ in res.header_list if name not in ("X-Request-Id",))))
        assert seen[0] == seen[1], headers


def test_file_offload_sends_the_bytes_itself(tmp_path, s3_server, request):
    app = build(tmp_path, "A", backend=S3Backend.on(request.node.callspec.params["s3_server"],
                                                    s3_server), FILE_OFFLOAD="nginx")
    put_ok(app, U7, b"bytes")
    res = fileget(app, U7)
    assert (res.status, res.body, res.header("X-Accel-Redirect")) == (200, b"bytes", None)


# ---------------------------------------------------------------------------- uploads

# Virtual-hosted: Specify 7's order (create, parts, complete, then a copy) covers the calls.
@pytest.mark.parametrize("layout, addressing", [("sp7", "path"), ("sp6", "path"),
                                                ("sp7", "virtual")], indirect=["addressing"])
def test_multipart_upload_both_orders(app, layout):
    content = pseudo_random(11 * 1024 * 1024 + 3, 11)  # three 5 MiB parts
    before = requests(app)
    put_ok(app, U7, content, layout=layout)
    made = delta(app, before)
    assert made["upload_part"] == 3 and made["complete_multipart"] == 1
    # Specify 7's file goes to a temporary key first, then is copied on the server.
    assert made.get("copy", 0) == (1 if layout == "sp7" else 0)
    body = fileget(app, U7).body
    assert hashlib.sha256(body).digest() == hashlib.sha256(content).digest()
    assert store_snapshot(app).keys() == {"originals/" + U7}


@pytest.mark.parametrize("layout", ["sp7", "sp6"])
def test_cut_off_upload_aborts_the_multipart_upload(app, layout):
    put_ok(app, U7, b"previous")
    upload = sp7_upload if layout == "sp7" else sp6_upload
    body, headers = upload(U7, pseudo_random(12 << 20, 5), T(app, U7))
    res = raw_post(app, FakeInput(body, cut=11 << 20), len(body), headers)
    assert res.status == 400
    assert fileget(app, U7).body == b"previous"
    assert store_snapshot(app) == {"originals/" + U7: b"previous"}  # no upload left either


@pytest.fixture
def spooling(tmp_path, s3_server, request):
    """Return an app on S3Store with S3_SPOOL_DIR = tmp_path/spool, and that directory."""
    spool = tmp_path / "spool"
    spool.mkdir()
    backend = S3Backend.on(request.node.callspec.params["s3_server"], s3_server)
    return build(tmp_path, "A", backend=backend, S3_SPOOL_DIR=str(spool)), spool


def test_spooled_upload_goes_to_its_key_in_one_pass(spooling):
    app, spool = spooling
    content = pseudo_random(11 * 1024 * 1024 + 3, 12)
    before = requests(app)
    put_ok(app, U7, content)  # Specify 7's order: the name comes after the file
    made = delta(app, before)
    assert made["upload_part"] == 3 and "copy" not in made
    assert hashlib.sha256(fileget(app, U7).body).digest() == hashlib.sha256(content).digest()
    assert store_snapshot(app).keys() == {"originals/" + U7} and os.listdir(str(spool)) == []


def test_spool_refused_cut_off_or_full_leaves_nothing(spooling, monkeypatch):
    app, spool = spooling
    put_ok(app, U7, b"previous")
    assert put(app, U7, b"x" * 1000, tok=T(app, U7, key="wrong")).status == 403
    body, headers = sp7_upload(U7, pseudo_random(1 << 20, 6), T(app, U7))
    assert raw_post(app, FakeInput(body, cut=1 << 19), len(body), headers).status == 400

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(StagedFile, "write", full)
    assert put(app, U7, b"y" * 1000).status == 507
    monkeypatch.undo()
    assert fileget(app, U7).body == b"previous"
    assert store_snapshot(app) == {"originals/" + U7: b"previous"} and os.listdir(str(spool)) == []


def test_spool_without_room_copies_in_the_bucket(spooling, monkeypatch):
    app, spool = spooling
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10 << 30, 60 << 20, 0))
    before = requests(app)
    put_ok(app, U7, b"no room for this and 64 MiB more")
    assert delta(app, before).get("copy") == 1 and os.listdir(str(spool)) == []
    assert fileget(app, U7).body == b"no room for this and 64 MiB more"


def test_auto_spool_dir_is_a_disk_directory_never_a_tmpfs(tmp_path):
    disk, memory = tmp_path / "disk", tmp_path / "memory"
    disk.mkdir()
    memory.mkdir()
    mounts = tmp_path / "mounts"
    mounts.write_text("/dev/sda1 / ext4 rw 0 0\n"
                      "tmpfs %s tmpfs rw 0 0\n" % str(memory).replace(" ", "\\040"))
    candidates = (str(tmp_path / "missing"), str(memory), str(disk))
    assert factory.spool_dir("auto", candidates, str(mounts)) == str(disk)
    assert factory.spool_dir("auto", candidates[:2], str(mounts)) is None
    # Unknown filesystem (no /proc/mounts): no spool, rather than one that may be memory.
    assert factory.spool_dir("auto", candidates, str(tmp_path / "no-mounts")) is None
    assert factory.spool_dir(None, candidates, str(mounts)) is None
    assert factory.spool_dir(str(memory), candidates, str(mounts)) == str(memory)  # as set
    assert config.from_mapping({"S3_SPOOL_DIR": "AUTO"}).S3_SPOOL_DIR == "auto"
    assert config.from_mapping({}).S3_SPOOL_DIR == "auto"


def test_name_changed_after_the_file_is_refused(app):
    fields = [("type", "O"), ("store", U6), ("token", T(app, U6)), ("coll", COLL)]
    parts = [(['Content-Disposition: form-data; name="%s"' % n], v.encode()) for n, v in fields]
    parts.append((['Content-Disposition: form-data; name="f"; filename="x.jpg"'], b"data"))
    parts += [(['Content-Disposition: form-data; name="store"'], U7.encode()),
              (['Content-Disposition: form-data; name="token"'], T(app, U7).encode())]
    res = req(app, "POST", "/fileupload", body=multipart_body(parts, SP7_BOUNDARY),
              headers={"Content-Type": "multipart/form-data; boundary=" + SP7_BOUNDARY})
    assert res.status == 400
    assert store_snapshot(app) == {}


# ---------------------------------------------------------------------------- thumbnails

# What a cold thumbnail costs: the thumbnail's GET (a miss) and the original's HEAD, sent
# together; one GET of the original (its format checked from its first bytes, its ETag the
# thumbnail's source tag); the thumbnail's PUT. The rendered file itself is served.
COLD = {"get": 2, "head": 1, "put": 1}
CACHED = {"get": 1, "head": 1}  # the thumbnail's GET and the original's HEAD, together


@needs_convert
def test_thumbnail_follows_its_original(app, images):
    put_ok(app, U7, images["jpeg"])
    before = requests(app)
    first = thumb(app, U7, 64)
    assert first.status == 200 and delta(app, before) == COLD
    query = {"coll": COLL, "type": "T", "filename": U7, "scale": "64"}
    thumb_name = thumbnail_name(U7, 64)
    etag = app.store.stat(COLL, U7).etag
    meta = app.store.client.head(app.store.key(COLL, thumb_name, storage.THUMBNAIL)).metadata
    assert meta[SOURCE_ETAG] == etag.strip('"')
    before = requests(app)
    assert thumb(app, U7, 64).body == first.body  # cached: the original's HEAD alongside
    assert delta(app, before) == {"head": 1, "get": 1}  # the thumbnail's GET, no upload
    held = {"If-None-Match": first.header("ETag")}  # a browser's cached copy
    assert req(app, "GET", "/fileget", query, headers=held).status == 304
    # A re-upload within the same second (S3 dates have whole seconds) still renews it,
    # also for a client that holds the old one.
    put_ok(app, U7, images["small"])
    again = req(app, "GET", "/fileget", query, headers=held)
    assert again.status == 200 and again.body != first.body


def http_date_seconds(value):
    """Return the epoch seconds of an HTTP date."""
    return email.utils.parsedate_to_datetime(value).timestamp()


SAME_HEADERS = ("ETag", "Content-Type", "Content-Length", "Accept-Ranges",
                "X-Content-Type-Options", "Content-Security-Policy", "Cache-Control")


def served_headers(res):
    """Return the headers a freshly made and a cached thumbnail must share (absent: None)."""
    return {name: res.header(name) for name in SAME_HEADERS}


@needs_convert
def test_a_fresh_thumbnail_is_served_as_a_cached_one(app, images):
    """The leader serves the file it rendered, with the object's ETag, as a later GET does."""
    put_ok(app, U7, images["jpeg"])
    first = thumb(app, U7, 64)
    cached = thumb(app, U7, 64)
    assert (first.status, cached.status, first.body) == (200, 200, cached.body)
    assert served_headers(first) == served_headers(cached)
    assert first.header("ETag") == app.store.stat(COLL, thumbnail_name(U7, 64),
                                                  storage.THUMBNAIL).etag
    # S3 dates the object within the PUT's answer's second (see S3Store.save_thumbnail).
    made, kept = (http_date_seconds(res.header("Last-Modified")) for res in (first, cached))
    assert 0 <= made - kept <= 1


# A HEAD, or If-None-Match: *, looks for the thumbnail with a HEAD instead of a GET.
COLD_BY_HEAD = {"get": 1, "head": 2, "put": 1}


@needs_convert
@pytest.mark.parametrize("method, headers, status, part, cold", [
    ("GET", {"Range": "bytes=2-9"}, 206, slice(2, 10), COLD),
    ("GET", {"Range": "bytes=-5"}, 206, slice(-5, None), COLD),
    ("HEAD", {}, 200, slice(0, 0), COLD_BY_HEAD),
    ("GET", {"If-None-Match": "*"}, 304, slice(0, 0), COLD_BY_HEAD)])
def test_the_first_answer_of_a_new_thumbnail_answers_range_and_conditionals(
        app, images, method, headers, status, part, cold):
    put_ok(app, U7, images["jpeg"])
    query = {"coll": COLL, "type": "T", "filename": U7, "scale": "64", "token": T(app, U7)}
    before = requests(app)
    res = req(app, method, "/fileget", query, headers=headers)
    assert (res.status, delta(app, before)) == (status, cold)
    whole = thumb(app, U7, 64).body
    assert res.body == whole[part]
    if status == 206:
        assert res.header("Content-Range") == "bytes %d-%d/%d" % (
            part.indices(len(whole))[0], part.indices(len(whole))[1] - 1, len(whole))
    if method == "HEAD":
        assert res.header("Content-Length") == str(len(whole))



def fake_app(tmp_path, **options):
    """Return an app on S3Store over a FakeS3Client, with fake converters and a lock dir."""
    settings = make_settings(tmp_path, STORAGE="s3", S3_BUCKET="b")
    return create_app(settings, store=factory.open_store(settings, client=FakeS3Client()),
                      thumbnailer=fake_thumbnailer(lock_dir=str(tmp_path / "locks"), **options))


def counted(app, call):
    """Return (call(), the S3 requests it made as {operation: count})."""
    before = collections.Counter(app.store.client.requests)
    result = call()
    return result, dict(app.store.client.requests - before)


@pytest.mark.parametrize("leases, cold", [
    (False, COLD),
    # THUMBNAIL_LEASES adds the lease's PUT (If-None-Match: *), a look under it (HEAD) and
    # its release (GET, DELETE).
    (True, {"get": 3, "head": 2, "put": 2, "delete": 1})])
def test_thumbnail_requests_cold_and_cached(tmp_path, leases, cold):
    app = fake_app(tmp_path, leases=leases)
    put_ok(app, U7, samples.png())
    res, made = counted(app, lambda: thumb(app, U7, 64))
    assert res.status == 200 and made == cold
    assert len(app.thumbnailer.renderer.calls) == 1
    meta = app.store.client.head(app.store.key(COLL, thumbnail_name(U7, 64), "thumbnail"))
    assert meta.metadata[SOURCE_ETAG] == app.store.stat(COLL, U7).etag.strip('"')
    again, made = counted(app, lambda: thumb(app, U7, 64))
    assert (again.body, again.header("ETag"), made) == (res.body, res.header("ETag"), CACHED)
    assert again.header("Last-Modified") == res.header("Last-Modified")


def test_an_original_that_is_no_image_is_not_downloaded(tmp_path):
    app = fake_app(tmp_path)
    put_ok(app, U7, pseudo_random(1 << 20, 5))
    served = app.store.client.bytes_served
    res, made = counted(app, lambda: thumb(app, U7, 64))
    assert res.status == 404 and made == {"get": 2, "head": 1}
    assert app.store.client.bytes_served - served <= storage.HEAD_BYTES
    assert app.thumbnailer.renderer.calls == []


def test_a_thumbnail_published_meanwhile_is_not_made_again(tmp_path, monkeypatch):
    """Another process on the lock dir publishes it between a request's look and its flight."""
    app = fake_app(tmp_path)
    other = fake_thumbnailer(lock_dir=str(tmp_path / "locks"))
    put_ok(app, U7, samples.png())
    look = app.store.open_fresh_thumbnail

    def look_then_other_publishes(coll, name, thumb_name, options=None):
        found = look(coll, name, thumb_name, options)
        other.thumbnail_of(app.store, coll, name, 64)
        return found

    monkeypatch.setattr(app.store, "open_fresh_thumbnail", look_then_other_publishes)
    assert thumb(app, U7, 64).status == 200
    assert (len(other.renderer.calls), app.thumbnailer.renderer.calls) == (1, [])


# ---------------------------------------------------------------------------- publishing

def held_puts(app, monkeypatch, key, error=None):
    """Hold the client's PUTs of `key` until the returned `release` is set (then raise `error`).

    Return (entered, release): Events. Other keys go through at once.
    """
    entered, release = threading.Event(), threading.Event()
    put_info = app.store.client.put_info

    def held(put_key, *args, **kwargs):
        if put_key == key:
            entered.set()
            release.wait(10)
            if error is not None:
                raise error
        return put_info(put_key, *args, **kwargs)

    monkeypatch.setattr(app.store.client, "put_info", held)
    return entered, release


def thumbnail_key(app, name, scale):
    return app.store.key(COLL, thumbnail_name(name, scale), storage.THUMBNAIL)


def test_the_answer_goes_out_while_the_thumbnail_uploads(tmp_path, monkeypatch):
    """The leader's answer waits for no PUT; its close, and other requests for it, do."""
    app = fake_app(tmp_path)
    put_ok(app, U7, samples.png())
    key = thumbnail_key(app, U7, 64)
    entered, release = held_puts(app, monkeypatch, key)
    handle, content_type = app.thumbnailer.open_thumbnail(app.store, COLL, U7, 64)
    body = handle.read()
    assert (body, content_type) == (samples.png(), "image/jpeg")
    assert entered.wait(5) and key not in app.store.client.objects
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        follower = pool.submit(thumb, app, U7, 64)
        closing = pool.submit(handle.close)
        time.sleep(0.2)
        assert not follower.done() and not closing.done()
        release.set()
        closing.result(5)
        assert key in app.store.client.objects  # published by the time the close returns
        res = follower.result(5)
    assert (res.status, res.body, res.header("ETag")) == (200, body, handle.etag)
    assert handle.etag == app.store.client.head(key).etag
    assert len(app.thumbnailer.renderer.calls) == 1


def test_a_thumbnail_upload_failing_after_the_answer(tmp_path, monkeypatch, caplog):
    """The leader has its thumbnail; those who waited get the store's error; nothing is kept."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    app = fake_app(tmp_path)
    put_ok(app, U7, samples.png())
    key = thumbnail_key(app, U7, 64)
    entered, release = held_puts(app, monkeypatch, key, S3Unavailable(0, "ConnectionRefused"))
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        leader = pool.submit(thumb, app, U7, 64)
        assert entered.wait(5)
        follower = pool.submit(thumb, app, U7, 64)
        time.sleep(0.2)
        release.set()
        first, waited = leader.result(5), follower.result(5)
    assert (first.status, first.body) == (200, samples.png())
    assert waited.status == 503
    assert "Cannot publish thumbnail" in caplog.text
    assert key not in app.store.client.objects and os.listdir(str(scratch)) == []
    monkeypatch.undo()
    again = thumb(app, U7, 64)
    assert again.status == 200 and key in app.store.client.objects
    assert len(app.thumbnailer.renderer.calls) == 2


def test_etags_that_are_not_md5s_turn_the_guess_off(tmp_path, monkeypatch, caplog):
    """A server whose ETags are no MD5s (SSE-KMS) is seen once, then answered after the PUT."""
    app = fake_app(tmp_path)
    client = app.store.client
    put_info = client.put_info

    def kms_put(key, *args, **kwargs):
        info = put_info(key, *args, **kwargs)
        info = info._replace(etag='"%s"' % hashlib.sha1(info.etag.encode()).hexdigest())
        client.objects[key] = (client.objects[key][0], info)
        return info

    monkeypatch.setattr(client, "put_info", kms_put)
    put_ok(app, U7, samples.png())
    caplog.set_level(logging.INFO, logger="webassets.storage.s3")
    first = thumb(app, U7, 64)
    real = client.head(thumbnail_key(app, U7, 64)).etag
    assert first.status == 200 and first.header("ETag") != real
    assert "ETags are not MD5s" in caplog.text
    # Its client's revalidation misses once (a whole small thumbnail, never a wrong one).
    stale = thumb(app, U7, 64, headers={"If-None-Match": first.header("ETag")})
    assert (stale.status, stale.header("ETag")) == (200, real)
    second = thumb(app, U7, 128)
    assert second.status == 200
    assert second.header("ETag") == client.head(thumbnail_key(app, U7, 128)).etag


# ---------------------------------------------------------------------------- EXIF

def test_metadata_reads_a_few_kib_of_a_large_original(app, monkeypatch):
    exif = tiff_block([(0x010F, ASCII, "Canon")], [(0x9003, ASCII, DATE)])
    original = with_exif(b"\xff\xd8\xff\xd9", exif) + pseudo_random(8 << 20, 9)
    put_ok(app, U6, original, layout="sp6")
    fetched = []
    get_bytes = app.store.client.get_bytes

    def counting(key, start, end):
        data = get_bytes(key, start, end)
        fetched.append(len(data))
        return data

    monkeypatch.setattr(app.store.client, "get_bytes", counting)
    res = get(app, U6, "date")
    assert (res.status, res.body) == (200, DATE.encode())
    assert get(app, U6, "json").status == 200
    assert 0 < sum(fetched) <= 4 * READ_AHEAD_MIN, fetched


def get(app, name, dt):
    return req(app, "GET", "/getmetadata", {"dt": dt, "filename": name, "coll": COLL})


# ---------------------------------------------------------------------------- the store itself

def test_ranged_reader_reads_ahead():
    client = FakeS3Client()
    data = pseudo_random(3 << 20, 3)
    client.put("k", data)
    reader = RangedReader(client, "k", len(data))
    assert reader.read(4) == data[:4] and reader.fetched == READ_AHEAD_MIN
    reader.seek(-10, 2)
    assert reader.read() == data[-10:]
    reader.seek(0)
    assert reader.read() == data and client.requests["get"] <= 10
    reader.seek(100)
    assert (reader.tell(), reader.read(5), reader.read(0)) == (100, data[100:105], b"")


def test_describe_problem_and_free_space(s3_server):
    bucket = s3_server.new_bucket()
    store = S3Store(s3_server.client(bucket), "p/", collection_dirs={"B": "birds"},
                    label="s3://%s/p/" % bucket)
    assert store.problem() is None and store.free_space() is None
    rows = store.describe()
    assert rows[0][0] == "ok" and "birds/originals/" in rows[-1][1]  # after the access rows
    denied = S3Store(s3_server.client(bucket, secret_key="wrong", retries=0), "p/")
    assert "cannot write to" in denied.problem()


def test_problem_trusts_a_passing_probe_for_a_while(tmp_path):
    client, clock = FakeS3Client(), FakeClock(100.0)
    store = S3Store(client, "p/", clock=clock)

    def writes():
        return client.requests["put"]

    assert store.problem() is None and dict(client.requests) == {"put": 1, "delete": 1}
    clock.now += PROBE_TTL - 1
    assert store.problem() is None and writes() == 1
    clock.now += 1
    assert store.problem() is None and writes() == 2
    clock.now += PROBE_TTL
    client.fail = S3Unavailable(0, "ConnectionError", "connection refused")
    assert "cannot write to" in store.problem()
    assert "cannot write to" in store.problem()  # a failure is never remembered
    assert client.stats.snapshot()["errors"] == {"ConnectionError": 2}
    client.fail = None
    assert store.problem() is None and writes() == 3
    store.describe()  # `webassets check` writes for real, whatever problem() knows
    assert writes() == 5  # the probe object and the conditional write


def test_readiness_probes_write_once_in_a_while(tmp_path):
    app = fake_app(tmp_path)
    for _ in range(3):
        req(app, "GET", "/readyz")
    assert app.store.client.requests["put"] == 1


def test_unreachable_bucket_is_503_and_denied_is_502(tmp_path):
    settings = make_settings(tmp_path, STORAGE="s3", S3_BUCKET="b")
    client = FakeS3Client()
    app = create_app(settings, store=factory.open_store(settings, client=client))
    put_ok(app, U7, b"x")
    from webassets.storage.s3client import AccessDenied, S3Unavailable
    client.fail = S3Unavailable(0, "ConnectionError", "connection refused")
    res = fileget(app, U7)
    assert (res.status, res.header("Retry-After")) == (503, "5")
    client.fail = AccessDenied(403, "AccessDenied", "Access Denied", key="originals/" + U7)
    res = fileget(app, U7)
    assert res.status == 502 and b"originals" not in res.body


def test_a_connection_lost_while_a_get_is_read_is_a_storage_error(monkeypatch):
    client = FakeS3Client()
    store = S3Store(client)
    staged = store.stage(None, name="a.bin")
    staged.write(b"x" * 100)
    store.save_original(None, "a.bin", staged)
    get = client.get

    def cut_off(*args, **kwargs):
        result = get(*args, **kwargs)
        result.read = result.readinto = lambda *args: _raise(
            S3Unavailable(0, "ConnectionError", "reading: reset"))
        return result

    monkeypatch.setattr(client, "get", cut_off)
    with store.open(None, "a.bin", options=storage.ReadOptions()) as handle:
        with pytest.raises(storage.StoreUnavailable):
            handle.read(10)
        with pytest.raises(storage.StoreUnavailable):
            handle.file.readinto(bytearray(10))


def _raise(error):
    raise error


# ---------------------------------------------------------------------------- settings

def test_s3_without_a_bucket_is_a_config_error(tmp_path):
    with pytest.raises(config.ConfigError, match="S3_BUCKET"):
        create_app(make_settings(tmp_path, STORAGE="s3"))
    run = subprocess.run([sys.executable, "-m", "webassets", "serve", "--port", "0"],
                         env={"WEBASSETS_STORAGE": "s3", "PATH": "/usr/bin:/bin"},
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
    assert run.returncode == EXIT_CONFIG and b"S3_BUCKET" in run.stdout


def test_settings_from_the_environment(tmp_path):
    settings = config.load(None, environ={
        "WEBASSETS_STORAGE": "s3", "WEBASSETS_S3_BUCKET": "assets", "WEBASSETS_S3_PREFIX": "/sp/",
        "WEBASSETS_S3_ENDPOINT": "http://127.0.0.1:9000/", "WEBASSETS_S3_ADDRESSING": "path"})
    assert (settings.STORAGE, settings.S3_BUCKET, settings.S3_PREFIX, settings.S3_ENDPOINT) == (
        "s3", "assets", "sp/", "http://127.0.0.1:9000")
    store = factory.open_store(settings._replace(S3_ACCESS_KEY="a", S3_SECRET_KEY="s"))
    assert isinstance(store, S3Store) and store.local_path(None, "a.jpg") is None
    assert store.static_name(None, "a b.jpg") == "originals/a b.jpg"
    assert store.key(None, "a b.jpg") == "sp/originals/a b.jpg"
    with pytest.raises(config.ConfigError):
        config.from_mapping({"S3_PREFIX": "a/../b"})
