"""Tests for webassets.storage: safe names, layout, atomic saves, exact deletes."""

import errno
import os
import tempfile
import threading
import time
from urllib.parse import unquote

import pytest

from tests.fakes import (ASCII, FakeRenderer, MemoryStore, fake_thumbnailer, storm, tiff_block,
                         with_exif)
from tests.helpers import COLL, DATE, call, make_settings, token, upload
from webassets.app import create_app
from webassets import samples, storage
from webassets.storage import FileStore, MissingFile, UnknownCollection, UnsafeName, check_name


@pytest.mark.parametrize("name", [
    "a6daad6c-5091-4461-86ee-eeba9434ef2b.jpg", "sp6123.att.jpg", "uuid.JPG", "README",
    "My Photo (1).jpg", "résumé.pdf", "100%.png", "it's \"quoted\".tif", "x" * 200, "日本.jpg",
])
def test_legitimate_names(name):
    assert check_name(name) == name


@pytest.mark.parametrize("name", [
    "", "..", ".", "../evil.jpg", "/tmp/evil.jpg", "a/b.jpg", "..\\evil.jpg", "a\x00b",
    "a\nb", "a\rb", "\x7f", ".hidden", ".upload-x.tmp", "x" * 256, "é" * 128,
])
def test_unsafe_names(name):
    with pytest.raises(UnsafeName):
        check_name(name)


def test_layout_without_collection_dirs(tmp_path):
    store = FileStore(str(tmp_path))
    assert store.local_path("anything", "a.jpg") == str(tmp_path / "originals" / "a.jpg")
    assert (store.local_path(None, "a_200.jpg", storage.THUMBNAIL)
            == str(tmp_path / "thumbnails" / "a_200.jpg"))


def test_layout_with_collection_dirs(tmp_path):
    store = FileStore(str(tmp_path), collection_dirs={"KU Fish": "fish", "KUFishtissue": "fish"})
    assert store.local_path("KU Fish", "a.jpg") == str(tmp_path / "fish" / "originals" / "a.jpg")
    assert store.local_path("KUFishtissue", "a.jpg") == store.local_path("KU Fish", "a.jpg")
    with pytest.raises(UnknownCollection):
        store.local_path("Unknown", "a.jpg")


def thumbnails_dir(store, coll):
    """Return the local directory of `coll`'s thumbnails in a FileStore."""
    return os.path.dirname(store.local_path(coll, "_", storage.THUMBNAIL))


def _save(store, name, data, coll=None):
    staged = store.stage(coll)
    staged.write(data)
    store.save_original(coll, name, staged)


def test_save_replaces_atomically_and_leaves_no_temp(tmp_path):
    store = FileStore(str(tmp_path))
    _save(store, "a.jpg", b"one")
    _save(store, "a.jpg", b"two")
    with store.open(None, "a.jpg") as handle:
        assert handle.read() == b"two"
    assert os.listdir(str(tmp_path / "originals")) == ["a.jpg"]


def test_discarded_upload_keeps_previous_version(tmp_path):
    store = FileStore(str(tmp_path))
    _save(store, "a.jpg", b"one")
    with store.stage(None) as staged:
        staged.write(b"partial")
    assert os.listdir(str(tmp_path / "originals")) == ["a.jpg"]
    with store.open(None, "a.jpg") as handle:
        assert handle.read() == b"one"


def test_staging_with_collection_dirs_before_coll_is_known(tmp_path):
    store = FileStore(str(tmp_path), collection_dirs={"C": "c"})
    staged = store.stage(None)
    assert os.path.dirname(staged.path) == str(tmp_path)
    staged.write(b"data")
    store.save_original("C", "a.jpg", staged)
    assert (tmp_path / "c" / "originals" / "a.jpg").read_bytes() == b"data"
    assert [name for name in os.listdir(str(tmp_path)) if name.startswith(".")] == []


def first_rename_crosses_filesystems(monkeypatch):
    """Make the store's first os.replace() fail with EXDEV; return the list of its sources."""
    real_replace = os.replace
    calls = []

    def replace(src, dst):
        calls.append(src)
        if len(calls) == 1:
            raise OSError(errno.EXDEV, "cross-device link")
        return real_replace(src, dst)

    monkeypatch.setattr(storage.filesystem.os, "replace", replace)
    return calls


def test_commit_across_filesystems_copies(tmp_path, monkeypatch):
    store = FileStore(str(tmp_path))
    calls = first_rename_crosses_filesystems(monkeypatch)
    _save(store, "a.jpg", b"moved")
    assert (tmp_path / "originals" / "a.jpg").read_bytes() == b"moved"
    assert os.listdir(str(tmp_path / "originals")) == ["a.jpg"]


def test_missing_original(tmp_path):
    store = FileStore(str(tmp_path))
    with pytest.raises(MissingFile):
        store.stat(None, "nope.jpg")
    with pytest.raises(MissingFile):
        store.open(None, "nope.jpg")
    with pytest.raises(MissingFile):
        store.delete_original(None, "nope.jpg", lambda name: True)


def test_directory_is_not_a_file(tmp_path):
    store = FileStore(str(tmp_path))
    os.makedirs(str(tmp_path / "originals" / "dir.jpg"))
    with pytest.raises(MissingFile):
        store.open(None, "dir.jpg")


def test_delete_removes_only_selected_thumbnails(tmp_path):
    store = FileStore(str(tmp_path))
    _save(store, "sp61.att.jpg", b"1")
    _save(store, "sp612.att.jpg", b"2")
    thumbs = tmp_path / "thumbnails"
    thumbs.mkdir()
    for name in ("sp61.att_200.jpg", "sp612.att_200.jpg"):
        (thumbs / name).write_bytes(b"t")
    removed = store.delete_original(None, "sp61.att.jpg", lambda name: name == "sp61.att_200.jpg")
    assert removed == ["sp61.att_200.jpg"]
    assert sorted(os.listdir(str(thumbs))) == ["sp612.att_200.jpg"]
    assert store.list(None) == ["sp612.att.jpg"]


def test_lists_skip_temporary_files(tmp_path):
    store = FileStore(str(tmp_path))
    _save(store, "a.jpg", b"1")
    (tmp_path / "originals" / ".upload-abc.tmp").write_bytes(b"x")
    assert store.list(None) == ["a.jpg"]
    assert store.list(None, storage.THUMBNAIL) == []


def temporary(store, coll, kind=storage.ORIGINAL):
    return store.survey(coll, kind)[1]


def test_survey_names_unfinished_work(tmp_path):
    store = FileStore(str(tmp_path), collection_dirs={"C": "c"})
    assert temporary(store, "C") == temporary(store, "C", storage.THUMBNAIL) == []
    (tmp_path / "c" / "originals").mkdir(parents=True)
    (tmp_path / "c" / "originals" / ".upload-1.tmp").write_bytes(b"half")
    (tmp_path / "c" / "originals" / ".hidden").write_bytes(b"x")
    (tmp_path / "c" / "originals" / "a.jpg").write_bytes(b"x")
    (tmp_path / "c" / "thumbnails" / ".thumb-2.tmp").mkdir(parents=True)
    assert temporary(store, "C") == [".upload-1.tmp"]
    assert temporary(store, "C", storage.THUMBNAIL) == [".thumb-2.tmp"]
    assert [listed.name for listed in store.survey("C")[0]] == [".hidden", "a.jpg"]
    with pytest.raises(UnknownCollection):
        temporary(store, "Nope")


def test_static_path(tmp_path):
    store = FileStore(str(tmp_path))
    assert store.static_path("originals/a.jpg") == str(tmp_path / "originals" / "a.jpg")
    for bad in ("../settings.py", "originals/../../x", "", "originals//a", ".upload-x"):
        with pytest.raises(UnsafeName):
            store.static_path(bad)


def test_static_path_refuses_symlink_out_of_store(tmp_path):
    base = tmp_path / "store"
    (base / "originals").mkdir(parents=True)
    (tmp_path / "secret").write_text("x")
    os.symlink(str(tmp_path / "secret"), str(base / "originals" / "link"))
    with pytest.raises(UnsafeName):
        FileStore(str(base)).static_path("originals/link")


def test_static_name_uses_slashes(tmp_path):
    store = FileStore(str(tmp_path), collection_dirs={"C": "c/d"})
    assert store.static_name("C", "a b.jpg") == "c/d/originals/a b.jpg"


# ---------------------------------------------------------------------------- the interface

def test_check_collection(tmp_path):
    store = FileStore(str(tmp_path), collection_dirs={"C": "c"})
    assert store.check_collection("C") is None
    with pytest.raises(UnknownCollection):
        store.check_collection("Unknown")
    assert FileStore(str(tmp_path)).check_collection("anything") is None  # COMPAT: one store


@pytest.mark.parametrize("coll,names,expected", [
    ("Colecci?n", ["Colección", "Other"], "Colección"),
    ("Colecci?n", ["Colección", "Colecciñn"], None),  # ambiguous
    ("Colecci?n", ["Coleccion"], None),  # '?' is never an ASCII letter
    ("Colecci?n", ["Colecci?n", "Colección"], "Colecci?n"),  # exact wins
    ("Coleccion", ["Colección"], None),  # no '?': exact only
    ("Cole?ci?n", ["Coleçción"], "Coleçción"),
    ("e??", ["e\u0301\U0001F41F"], "e\u0301\U0001F41F"),  # one '?' per code point
    ("?", [], None),
])
def test_legacy_collection(coll, names, expected):
    assert storage.legacy_collection(coll, names) == expected


@pytest.mark.parametrize("store", [
    lambda tmp: FileStore(str(tmp), collection_dirs={"Colección": "c", "Peces?": "p"}),
    lambda tmp: MemoryStore(colls=["Colección", "Peces?"]),
], ids=["file", "memory"])
def test_resolve_collection_is_shared_by_every_store(tmp_path, store):
    store = store(tmp_path)
    assert store.resolve_collection("Colecci?n", lenient=True) == "Colección"
    assert store.resolve_collection("Peces?", lenient=True) == "Peces?"
    for coll, lenient in (("Colecci?n", False), ("Colecci??", True), (None, True)):
        with pytest.raises(UnknownCollection):
            store.resolve_collection(coll, lenient=lenient)
    with pytest.raises(UnknownCollection):
        store.check_collection("Colecci?n")  # everywhere else: exact names only


def test_resolve_collection_without_collections(tmp_path):
    assert FileStore(str(tmp_path)).resolve_collection("Colecci?n", lenient=True) == "Colecci?n"


def test_stat_and_open_give_size_mtime_and_etag(tmp_path):
    store = FileStore(str(tmp_path))
    _save(store, "a.jpg", b"12345")
    path = tmp_path / "originals" / "a.jpg"
    os.utime(str(path), ns=(1700000000123456789, 1700000000123456789))
    info = store.stat(None, "a.jpg")
    assert (info.size, info.mtime_ns) == (5, 1700000000123456789)
    assert info.mtime == os.stat(str(path)).st_mtime
    assert info.etag == '"%x-%x"' % (1700000000123456789, 5)
    with store.open(None, "a.jpg") as handle:
        assert (handle.size, handle.mtime, handle.etag) == (5, info.mtime, info.etag)
        assert handle.local_path == str(path)
        assert os.fstat(handle.fileno()).st_ino == os.stat(str(path)).st_ino  # sendfile
        handle.seek(2)
        assert (handle.tell(), handle.read(2), handle.read()) == (2, b"34", b"5")
    assert handle.closed


def test_thumbnails_are_a_kind_of_their_own(tmp_path):
    store = FileStore(str(tmp_path))
    _save(store, "a.jpg", b"original")
    (tmp_path / "thumbnails").mkdir()
    (tmp_path / "thumbnails" / "a_200.jpg").write_bytes(b"thumb")
    assert store.list(None) == ["a.jpg"]
    assert store.list(None, storage.THUMBNAIL) == ["a_200.jpg"]
    assert store.stat(None, "a_200.jpg", storage.THUMBNAIL).size == 5
    with store.open(None, "a_200.jpg", storage.THUMBNAIL) as handle:
        assert handle.read() == b"thumb"
    with pytest.raises(MissingFile):
        store.open(None, "a_200.jpg")  # not an original
    with pytest.raises(UnsafeName):
        store.stat(None, "../originals/a.jpg", storage.THUMBNAIL)


def test_local_copy_is_the_file_itself(tmp_path):
    store = FileStore(str(tmp_path))
    _save(store, "a b.jpg", b"data")
    with store.local_copy(None, "a b.jpg") as path:
        assert path == str(tmp_path / "originals" / "a b.jpg")
        with open(path, "rb") as handle:
            assert handle.read() == b"data"
    assert os.path.exists(path)  # the filesystem store lends, never copies
    with pytest.raises(MissingFile):
        with store.local_copy(None, "nope.jpg"):
            pass  # pragma: no cover


def test_local_path_and_static_name(tmp_path):
    store = FileStore(str(tmp_path), collection_dirs={"C": "c"})
    assert store.local_path("C", "a.jpg") == str(tmp_path / "c" / "originals" / "a.jpg")
    assert store.local_path("C", "a_9.jpg", storage.THUMBNAIL) == str(
        tmp_path / "c" / "thumbnails" / "a_9.jpg")
    assert store.static_name("C", "a b.jpg") == "c/originals/a b.jpg"
    assert store.static_name("C", "a_9.jpg", storage.THUMBNAIL) == "c/thumbnails/a_9.jpg"


def test_open_static(tmp_path):
    store = FileStore(str(tmp_path))
    _save(store, "a.jpg", b"data")
    with store.open_static("originals/a.jpg") as handle:
        assert handle.read() == b"data" and handle.size == 4
    with pytest.raises(MissingFile):
        store.open_static("originals")  # a directory is not a file
    with pytest.raises(UnsafeName):
        store.open_static("../x")


def test_open_local_refuses_what_is_not_a_regular_file(tmp_path):
    with pytest.raises(MissingFile):
        storage.open_local(str(tmp_path / "absent"))
    with pytest.raises(MissingFile):
        storage.open_local(str(tmp_path))


def test_the_interface_is_abstract(tmp_path):
    store = storage.Store()
    for call in (lambda: store.stat("c", "a"), lambda: store.open("c", "a"),
                 lambda: store.list("c"), lambda: store.local_path("c", "a"),
                 lambda: store.check_collection("c")):
        with pytest.raises(NotImplementedError):
            call()


# ---------------------------------------------------------------------------- thumbnails through it

def test_thumbnail_of_renders_into_the_store_and_is_then_fresh(tmp_path):
    store = FileStore(str(tmp_path), collection_dirs={"C": "c"})
    _save(store, "a b.png", samples.png(), coll="C")
    renderer = FakeRenderer()
    engine = fake_thumbnailer(renderer)
    assert engine.thumbnail_of(store, "C", "a b.png", 64) == ("a b_64.png", "image/png")
    assert store.list("C", storage.THUMBNAIL) == ["a b_64.png"]
    assert os.listdir(thumbnails_dir(store, "C")) == ["a b_64.png"]  # the scratch dir is gone
    with store.open("C", "a b_64.png", storage.THUMBNAIL) as handle:
        assert handle.read() == samples.png()
    assert engine.thumbnail_of(store, "C", "a b.png", 64) == ("a b_64.png", "image/png")
    assert len(renderer.calls) == 1
    with pytest.raises(MissingFile):
        engine.thumbnail_of(store, "C", "gone.png", 64)
    with pytest.raises(UnknownCollection):
        engine.thumbnail_of(store, "Nope", "a b.png", 64)


def test_thumbnail_of_makes_one_conversion_for_concurrent_requests(tmp_path):
    store = FileStore(str(tmp_path), collection_dirs={"C": "c"})
    _save(store, "a.png", samples.png(), coll="C")
    gate = threading.Event()
    renderer = FakeRenderer(gate=gate)
    engine = fake_thumbnailer(renderer, lock_dir=str(tmp_path / ".locks"))
    results, errors = storm(lambda: engine.thumbnail_of(store, "C", "a.png", 64), renderer,
                            gate)
    assert errors == [] and results == [("a_64.png", "image/png")] * 32
    assert len(renderer.calls) == 1
    assert os.listdir(thumbnails_dir(store, "C")) == ["a_64.png"]


def test_save_thumbnail_renames_into_place(tmp_path):
    store = FileStore(str(tmp_path), collection_dirs={"C": "c"})
    rendered = tmp_path / "rendered"
    rendered.write_bytes(b"thumb")
    os.utime(str(rendered), ns=(5 * 10 ** 18, 5 * 10 ** 18))  # dated after its original
    store.save_thumbnail("C", "a_64.png", str(rendered))
    assert not rendered.exists()
    assert store.stat("C", "a_64.png", storage.THUMBNAIL) == storage.FileInfo(5, 5 * 10 ** 18)
    store.delete_thumbnail("C", "a_64.png")
    assert store.list("C", storage.THUMBNAIL) == []
    with pytest.raises(MissingFile):
        store.delete_thumbnail("C", "a_64.png")
    with pytest.raises(UnsafeName):
        store.save_thumbnail("C", "../a_64.png", str(rendered))


def test_save_thumbnail_across_filesystems_copies_and_keeps_the_date(tmp_path, monkeypatch):
    store = FileStore(str(tmp_path / "store"))
    rendered = tmp_path / "rendered"
    rendered.write_bytes(b"thumb")
    os.utime(str(rendered), ns=(5 * 10 ** 18, 5 * 10 ** 18))
    calls = first_rename_crosses_filesystems(monkeypatch)
    store.save_thumbnail(None, "a_64.png", str(rendered))
    assert store.stat(None, "a_64.png", storage.THUMBNAIL) == storage.FileInfo(5, 5 * 10 ** 18)
    assert os.listdir(thumbnails_dir(store, None)) == ["a_64.png"]


def test_prepare_and_problem(tmp_path):
    store = FileStore(str(tmp_path / "store"))
    assert store.problem() == "BASE_DIR does not exist or is not a directory"  # never created
    assert not (tmp_path / "store").exists()
    store.prepare()
    assert store.problem() is None and os.listdir(str(tmp_path / "store")) == []
    if os.geteuid() != 0:  # root writes anywhere
        os.chmod(str(tmp_path / "store"), 0o500)
        try:
            assert store.problem().startswith("cannot create a file in BASE_DIR")
        finally:
            os.chmod(str(tmp_path / "store"), 0o700)


def test_describe_areas_and_free_space(tmp_path):
    store = FileStore(str(tmp_path), collection_dirs={"KU Fish": "fish", "KUFishtissue": "fish",
                                                      "Birds": "birds"})
    assert store.areas() == [storage.Area("birds", ("Birds",)),
                             storage.Area("fish", ("KU Fish", "KUFishtissue"))]
    assert store.areas("KUFishtissue") == store.areas("KU Fish") == store.areas()[1:]
    assert FileStore(str(tmp_path)).areas() == [storage.Area(".", ())]
    with pytest.raises(UnknownCollection):
        store.areas("Unknown")
    rows = store.describe()
    assert rows[0] == ("ok", "BASE_DIR %s is writable" % tmp_path)
    assert ("ok", "%s (Birds) not created yet (made on first use)"
            % (tmp_path / "birds" / "originals")) in rows
    assert len(rows) == 5
    free, total = store.free_space()
    assert 0 <= free <= total
    missing = FileStore(str(tmp_path / "gone"))
    assert missing.describe() == [
        ("FAIL", "BASE_DIR %s: BASE_DIR does not exist or is not a directory" % missing.base_dir)]


# ---------------------------------------------------------------------------- no paths in handlers

def test_handlers_serve_a_store_without_local_paths(tmp_path):
    store = MemoryStore(colls={COLL})
    app = create_app(make_settings(tmp_path / "unused"), store=store)
    photo = with_exif(b"\xff\xd8\xff\xd9", tiff_block([], [(0x9003, ASCII, DATE)]))
    assert upload(app, "a b.jpg", photo).body == b"Ok."
    assert store.list(COLL) == ["a b.jpg"]
    query = {"type": "O", "coll": COLL, "filename": "a b.jpg"}
    whole = call(app, "GET", "/fileget", query)
    assert whole.status == 200 and whole.body == photo
    assert whole.header("ETag") == store.stat(COLL, "a b.jpg").etag
    assert call(app, "GET", "/fileget", query,
                headers={"If-None-Match": whole.header("ETag")}).status == 304
    part = call(app, "GET", "/fileget", query, headers={"Range": "bytes=0-1"})
    assert (part.status, part.body) == (206, b"\xff\xd8")
    date = call(app, "GET", "/getmetadata", {"coll": COLL, "filename": "a b.jpg", "dt": "date"})
    assert date.body == DATE.encode()
    ref = call(app, "GET", "/getfileref", {"type": "O", "coll": COLL, "filename": "a b.jpg"})
    static = unquote(ref.body.decode().split("/static/", 1)[1])  # as a server decodes it
    assert call(app, "GET", "/static/" + static).body == photo
    assert call(app, "GET", "/fileget", dict(query, coll="Nope")).status == 404
    body = "filename=a+b.jpg&coll=%s&token=%s" % (COLL.replace(" ", "+"), token("a b.jpg"))
    deleted = call(app, "POST", "/filedelete", body=body.encode(),
                   headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert deleted.status == 200 and store.files == {}
    assert call(app, "GET", "/fileget", query).status == 404
    assert call(app, "GET", "/readyz").status in (200, 503)  # converters may be missing here
    assert not (tmp_path / "unused").exists()  # nothing went to BASE_DIR


def test_thumbnails_of_a_store_without_local_paths(tmp_path, monkeypatch):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # local copies and renders go here
    store = MemoryStore(colls={COLL})
    renderer = FakeRenderer()
    app = create_app(make_settings(tmp_path / "unused"), store=store,
                     thumbnailer=fake_thumbnailer(renderer))
    assert upload(app, "a b.png", samples.png()).body == b"Ok."
    query = {"type": "T", "coll": COLL, "filename": "a b.png", "scale": "64"}
    for _ in range(2):
        made = call(app, "GET", "/fileget", query)
        assert made.status == 200 and made.header("Content-Type") == "image/png"
        assert made.body == samples.png()
    assert len(renderer.calls) == 1  # the second request was served from the store
    assert store.list(COLL, storage.THUMBNAIL) == ["a b_64.png"]
    thumb_mtime = store.stat(COLL, "a b_64.png", storage.THUMBNAIL).mtime_ns
    key = (COLL, storage.ORIGINAL, "a b.png")
    store.files[key] = (store.files[key][0], thumb_mtime + 1)  # a newer original
    assert call(app, "GET", "/fileget", query).status == 200
    assert len(renderer.calls) == 2
    assert store.stat(COLL, "a b_64.png", storage.THUMBNAIL).mtime_ns > thumb_mtime
    assert call(app, "GET", "/fileget", dict(query, filename="gone.png")).status == 404
    assert os.listdir(str(scratch)) == []  # no local copy or scratch dir left behind
    assert not (tmp_path / "unused").exists()
