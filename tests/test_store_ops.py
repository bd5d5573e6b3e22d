"""The store's operations interface (areas, scan, unfinished work, leases) on every store."""

import hashlib
import os
import threading
import time
import uuid

import pytest

from tests.fake_s3 import FakeS3Client
from tests.fakes import MemoryStore
from tests.helpers import COLL, call, make_settings
from webassets import metrics, storage
from webassets.app import create_app
from webassets.storage import FileStore, Lease, Listed, UnknownCollection
from webassets.storage.s3 import S3Store

COLLS = {"Fish": "fish", "Fish Tissue": "fish", "Birds": "birds"}


def save(store, coll, name, data):
    staged = store.stage(coll, known_coll=True)
    staged.write(data)
    store.save_original(coll, name, staged)


def save_thumbnail(store, tmp_path, coll, name, data):
    rendered = tmp_path / ("rendered-" + name)
    rendered.write_bytes(data)
    store.save_thumbnail(coll, name, str(rendered))


_BUCKETS = {}  # S3 server name -> this module's bucket on it


def s3_store(request, kind, collection_dirs=COLLS):
    """Return an S3Store under a fresh prefix: on FakeS3Client ('s3-fake') or a real server."""
    if kind == "s3-fake":
        client = FakeS3Client()
    else:
        server = request.getfixturevalue(kind)  # skips when the server is not installed
        if kind not in _BUCKETS:
            _BUCKETS[kind] = server.new_bucket("ops")
        client = server.client(_BUCKETS[kind])
    prefix = "t-%s/" % uuid.uuid4().hex[:12]
    return S3Store(client, prefix, collection_dirs=collection_dirs, label="s3://b/" + prefix)


@pytest.fixture(params=["file", "memory", "memory-md5", "s3-fake", "seaweedfs", "moto"])
def any_store(request, tmp_path):
    """A store of each kind with the collections of COLLS (MemoryStore: one area each)."""
    if request.param == "file":
        store = FileStore(str(tmp_path / "store"), collection_dirs=COLLS)
    elif request.param.startswith("memory"):
        store = MemoryStore(colls=set(COLLS), md5=request.param == "memory-md5")
    else:
        store = s3_store(request, request.param)
    store.prepare()
    return store


# ---------------------------------------------------------------------------- areas

def test_group_areas():
    assert storage.group_areas(None) == [storage.Area(".", ())]
    assert storage.group_areas(None)[0].coll is None
    areas = storage.group_areas(COLLS)
    assert areas == [storage.Area("birds", ("Birds",)),
                     storage.Area("fish", ("Fish", "Fish Tissue"))]
    assert [area.coll for area in areas] == ["Birds", "Fish"]
    assert storage.group_areas(COLLS, "Fish Tissue") == areas[1:]
    with pytest.raises(UnknownCollection):
        storage.group_areas(COLLS, "Mammals")


def test_areas_cover_every_collection(any_store):
    covered = sorted(coll for area in any_store.areas() for coll in area.colls)
    assert covered == sorted(COLLS)
    with pytest.raises(UnknownCollection):
        any_store.areas("Mammals")
    assert any_store.absent() is None and any_store.location()


# ---------------------------------------------------------------------------- scan

def test_scan_lists_sizes_and_dates_like_stat(any_store, tmp_path):
    save(any_store, "Fish", "b.jpg", b"bee")
    save(any_store, "Fish", "a b.jpg", b"")
    save_thumbnail(any_store, tmp_path, "Fish", "b_200.jpg", b"thumb")
    listed = any_store.scan("Fish")
    assert [entry.name for entry in listed] == ["a b.jpg", "b.jpg"]
    for entry in listed:
        info = any_store.stat("Fish", entry.name)
        assert (entry.size, entry.mtime_ns) == (info.size, info.mtime_ns)
        assert (entry.link, entry.problem) == (False, None)
        md5 = any_store.content_md5("Fish", entry.name)
        assert entry.md5 == md5
        assert md5 in (None, hashlib.md5(b"bee" if entry.name == "b.jpg" else b"").hexdigest())
    assert [entry.name for entry in any_store.scan("Fish", storage.THUMBNAIL)] == ["b_200.jpg"]
    assert any_store.scan("Birds") == []
    with pytest.raises(UnknownCollection):
        any_store.scan("Mammals")
    with pytest.raises(storage.MissingFile):
        any_store.content_md5("Fish", "gone.jpg")


def test_filestore_scan_shows_what_the_server_cannot_serve(tmp_path):
    store = FileStore(str(tmp_path), collection_dirs=COLLS)
    save(store, "Fish", "a.jpg", b"a")
    originals = tmp_path / "fish" / "originals"
    (originals / ".DS_Store").write_bytes(b"junk")
    (originals / ".upload-x.tmp").write_bytes(b"half")  # unfinished work: not listed
    (originals / "sub").mkdir()
    os.symlink("a.jpg", str(originals / "link.jpg"))
    os.symlink("nowhere.jpg", str(originals / "dangling.jpg"))
    by_name = {entry.name: entry for entry in store.scan("Fish Tissue")}
    assert sorted(by_name) == [".DS_Store", "a.jpg", "dangling.jpg", "link.jpg", "sub"]
    assert by_name["link.jpg"] == Listed("link.jpg", 1, by_name["a.jpg"].mtime_ns, None, True)
    assert by_name["dangling.jpg"].problem == by_name["sub"].problem == storage.NOT_A_FILE
    assert by_name["dangling.jpg"].link and not by_name["sub"].link


# ---------------------------------------------------------------------------- unfinished work

def test_filestore_unfinished_work_and_its_removal(tmp_path):
    store = FileStore(str(tmp_path), collection_dirs=COLLS)
    (tmp_path / ".upload-early.tmp").write_bytes(b"half")
    render = tmp_path / "birds" / "thumbnails" / ".thumb-1.tmp"
    render.mkdir(parents=True)
    (render / "page.png").write_bytes(b"x")
    os.utime(str(render), (1000, 1000))
    os.utime(str(render / "page.png"), (2000, 2000))
    (tmp_path / "fish" / "originals").mkdir(parents=True)
    (tmp_path / "fish" / "originals" / ".upload-2.tmp").write_bytes(b"x")
    (tmp_path / "fish" / "originals" / "done.jpg").write_bytes(b"x")
    lease = store.try_lease("thumbnail fish/thumbnails/a_200.jpg", 60)
    work = {item.shown: item for item in store.unfinished()}
    assert sorted(work) == [".leases/" + storage.lease_name(lease.key), ".upload-early.tmp",
                            "birds/thumbnails/.thumb-1.tmp", "fish/originals/.upload-2.tmp"]
    assert [work[shown].what for shown in sorted(work)] == ["lease", "upload", "render", "upload"]
    assert work["birds/thumbnails/.thumb-1.tmp"].changed == 2000  # the newest change inside
    for item in work.values():
        store.remove_unfinished(item)
        store.remove_unfinished(item)  # gone already: fine
    assert store.unfinished() == []
    assert os.listdir(str(tmp_path / "fish" / "originals")) == ["done.jpg"]
    assert store.try_lease(lease.key, 60) is not None  # the removed lease is free again


def test_memory_store_unfinished_work(tmp_path):
    store = MemoryStore()
    item = storage.Unfinished("originals/x (upload 1)", "multipart upload", 5.0, "x")
    store.work.append(item)
    lease = store.try_lease("k", 60)
    assert [one.what for one in store.unfinished()] == ["multipart upload", "lease"]
    for one in store.unfinished():
        store.remove_unfinished(one)
    assert store.unfinished() == [] and store.try_lease("k", 60) is not None
    assert lease.token


# ---------------------------------------------------------------------------- leases

def test_a_lease_is_held_once_until_released(any_store):
    first = any_store.try_lease("thumbnail fish/thumbnails/a_200.jpg", 60)
    assert isinstance(first, Lease) and first.ttl == 60
    assert any_store.try_lease(first.key, 60) is None
    assert any_store.try_lease("another key", 60) is not None
    any_store.release(first)
    any_store.release(first)  # released already: fine
    second = any_store.try_lease(first.key, 60)
    assert second is not None and second.token != first.token


def test_an_expired_lease_is_taken_over_and_its_release_is_harmless(any_store):
    stale = any_store.try_lease("key", 0)  # expired at once
    fresh = any_store.try_lease("key", 60)
    assert fresh is not None
    any_store.release(stale)  # the old holder finishes late: the new lease stands
    assert any_store.try_lease("key", 60) is None
    any_store.release(fresh)
    assert any_store.try_lease("key", 60) is not None


def test_leases_race_to_one_holder(any_store):
    won, start = [], threading.Barrier(8)

    def take():
        start.wait()
        lease = any_store.try_lease("contested", 60)
        if lease is not None:
            won.append(lease)

    threads = [threading.Thread(target=take) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 1


def test_a_lease_is_renewed_by_its_holder_only(any_store):
    lease = any_store.try_lease("thumbnail x", 60)
    stranger = lease._replace(token="someone else's")
    assert any_store.renew(lease) and not any_store.renew(stranger)
    assert any_store.try_lease("thumbnail x", 60) is None  # still held, by its token
    any_store.release(lease)
    assert not any_store.renew(lease)  # gone: a renewal never writes it back
    assert any_store.unfinished() == []


def test_a_renewed_lease_is_dated_again(tmp_path):
    store = FileStore(str(tmp_path / "store"))
    lease = store.try_lease("thumbnail x", 60)
    (path,) = [item.handle for item in store.unfinished()]
    os.utime(path, (1000, 1000))  # taken long ago: expired
    assert store.renew(lease)
    assert time.time() - os.stat(path).st_mtime < 60
    assert store.try_lease("thumbnail x", 60) is None


def test_filestore_lease_being_written_counts_as_held(tmp_path):
    store = FileStore(str(tmp_path))
    store.prepare()
    os.makedirs(str(tmp_path / ".leases"))
    (tmp_path / ".leases" / storage.lease_name("key")).write_bytes(b"")  # a taker mid-write
    assert store.try_lease("key", 60) is None
    assert store.try_lease("key", 0) is not None  # judged by the asker's ttl: expired


# ---------------------------------------------------------------------------- /metrics

class _Remote(MemoryStore):
    """A store that counts requests as a bucket's client does."""

    def request_stats(self):
        return {"requests": {"GetObject": 3, "PutObject": 1}, "errors": {"SlowDown": 2},
                "seconds": {"GetObject": 0.5, "PutObject": 0.25}}


def test_metrics_show_a_remote_stores_requests(tmp_path):
    remote = create_app(make_settings(tmp_path), store=_Remote(colls={COLL}))
    text = call(remote, "GET", "/metrics").body.decode()
    assert 'webassets_store_requests_total{operation="GetObject"} 3' in text
    assert 'webassets_store_request_seconds_total{operation="PutObject"} 0.25' in text
    assert 'webassets_store_errors_total{code="SlowDown"} 2' in text
    local = call(create_app(make_settings(tmp_path)), "GET", "/metrics").body.decode()
    assert "webassets_store_" not in local
    # Worker processes: each counts its own requests; a scrape sums them.
    snapshot = remote.metrics.snapshot()
    merged = metrics.merge_snapshots([snapshot, snapshot, dict(snapshot, store=None)], 0)
    assert merged["store"]["requests"] == {"GetObject": 6, "PutObject": 2}
    assert merged["store"]["seconds"]["GetObject"] == 1.0


def test_filestore_takeover_never_removes_a_fresh_lease(tmp_path, monkeypatch):
    store = FileStore(str(tmp_path))
    store.prepare()
    stale = store.try_lease("key", 0)
    path = str(tmp_path / ".leases" / storage.lease_name("key"))
    rename = os.rename

    def racing_rename(source, target):
        # Another instance took the expired lease over between our look and our rename.
        os.unlink(source)
        with open(source, "wb") as handle:
            handle.write(storage.lease_body(Lease("key", "theirs", 60)))
        rename(source, target)

    monkeypatch.setattr(os, "rename", racing_rename)
    assert store.try_lease("key", 60) is None  # theirs is moved back, not removed
    monkeypatch.setattr(os, "rename", rename)
    with open(path, "rb") as handle:
        assert storage.lease_holder(handle.read(), 60) == ("theirs", 60)
    assert os.listdir(str(tmp_path / ".leases")) == [storage.lease_name("key")]
    store.release(stale)  # not ours any more: left alone
    assert os.path.exists(path)


# ---------------------------------------------------------------------------- publishing

def test_a_published_thumbnail_is_served_as_it_was_announced(any_store, tmp_path):
    """publish_thumbnail's FileInfo is what open() gives once its Future is done."""
    save(any_store, "Fish", "a.jpg", b"original")
    rendered = tmp_path / "rendered.jpg"
    rendered.write_bytes(b"thumbnail bytes")
    source = any_store.stat("Fish", "a.jpg")
    info, done = any_store.publish_thumbnail("Fish", "a_64.jpg", str(rendered), source)
    published = done.result(timeout=30)
    assert any_store.thumbnail_is_fresh("Fish", "a_64.jpg", source)
    with any_store.open("Fish", "a_64.jpg", storage.THUMBNAIL) as stored:
        assert stored.read() == b"thumbnail bytes"
        if info is not None:
            # The guess (a bucket answers before its PUT is done) is right on these servers.
            assert (info.size, info.etag) == (stored.size, stored.etag)
            assert 0 <= stored.info.mtime_ns - info.mtime_ns <= 2 * 10 ** 9
    assert published is None or published.etag == info.etag


def test_a_stored_file_calls_on_close_once(tmp_path):
    calls = []
    path = tmp_path / "f"
    path.write_bytes(b"x")
    stored = storage.StoredFile(open(str(path), "rb"), storage.FileInfo(1, 0, '"x"'),
                                on_close=lambda: calls.append(1))
    stored.close()
    stored.close()
    assert calls == [1] and stored.closed
