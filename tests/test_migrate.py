"""`webassets migrate`: every file into another store, resumable, verified, between any stores."""

import hashlib
import io
import os
import re
import time

import pytest

from tests.fakes import MemoryStore
from tests.helpers import put
from tests.stores import files_under
from tests.test_admin import run
from webassets import migrate, samples, storage
from webassets.storage import FileStore

COLLECTION_DIRS = {"Fish": "fish", "Fish Tissue": "fish", "Birds": "birds"}
HOURS_AGO = time.time() - 3 * 3600


def write_settings(path, base_dir, **values):
    values.update(BASE_DIR=str(base_dir), KEY="k" * 20)
    values.setdefault("COLLECTION_DIRS", COLLECTION_DIRS)
    path.write_text("".join("%s = %r\n" % item for item in sorted(values.items())))
    return str(path)


@pytest.fixture
def source(tmp_path):
    """A local store with originals, thumbnails, a name never served and unfinished work."""
    base = tmp_path / "source"
    png = samples.png()
    put(base / "fish" / "originals" / "cod.png", png, age=7200)
    put(base / "fish" / "originals" / "eel b.jpg", b"eel" * 1000, age=7200)
    put(base / "birds" / "originals" / "owl.png", png + b"owl", age=7200)
    put(base / "birds" / "originals" / "empty.txt", b"", age=7200)
    put(base / "fish" / "thumbnails" / "cod_200.png", png, age=3600)
    put(base / "fish" / "originals" / ".DS_Store", b"junk")
    put(base / "fish" / "originals" / ".upload-live.tmp", b"arriving")
    return base


def tree(base):
    """Return {relative path: bytes} of every file under `base` but unfinished work."""
    return {path: data for path, data in files_under(base).items()
            if not os.path.basename(path).startswith(storage.TEMP_PREFIXES)}


SERVED = {"fish/originals/cod.png", "fish/originals/eel b.jpg", "birds/originals/owl.png",
          "birds/originals/empty.txt", "fish/thumbnails/cod_200.png"}


def test_migrate_copies_everything_served_then_resumes_with_nothing(capsys, tmp_path, source):
    source_settings = write_settings(tmp_path / "old.py", source)
    target_settings = write_settings(tmp_path / "new.py", tmp_path / "target")
    status, out, err = run(capsys, "migrate", "--from", source_settings, "--to", target_settings,
                           "--jobs", "3")
    assert status == 0, out
    copied = tree(tmp_path / "target")
    assert set(copied) == SERVED
    assert all(copied[path] == (source / path).read_bytes() for path in copied)
    assert re.search(r"skipped +not served +fish/originals/\.DS_Store", out)
    assert "copied 5 (" in out and "already there 0" in out and "failed 0" in out
    assert "migrate:" in err  # the progress display, on standard error
    target = FileStore(str(tmp_path / "target"), collection_dirs=COLLECTION_DIRS)
    # The copied thumbnail is fresh for its copied original: it is not rendered again.
    assert (target.stat("Fish", "cod_200.png", storage.THUMBNAIL).mtime_ns
            >= target.stat("Fish", "cod.png").mtime_ns)
    status, out, _ = run(capsys, "migrate", "--settings", source_settings, "--to",
                         target_settings, "-q")
    assert status == 0 and "copied 0 (0 B), already there 5" in out
    assert run(capsys, "migrate", "--from", source_settings, "--to", target_settings,
               "--dry-run", "-q")[0] == 0  # in sync


def test_a_second_pass_catches_up_and_never_overwrites_newer(capsys, tmp_path, source):
    source_settings = write_settings(tmp_path / "old.py", source)
    target_settings = write_settings(tmp_path / "new.py", tmp_path / "target")
    assert run(capsys, "migrate", "--from", source_settings, "--to", target_settings, "-q")[0] == 0
    target = tmp_path / "target"
    # While the old server still runs: an upload and a replaced file (same size, new bytes).
    put(source / "birds" / "originals" / "new.jpg", b"new")
    put(source / "fish" / "originals" / "eel b.jpg", b"EEL" * 1000)
    # After the cut-over the new store took an upload of its own under an old name.
    put(target / "birds" / "originals" / "owl.png", b"uploaded after the switch")
    status, out, _ = run(capsys, "migrate", "--from", source_settings, "--to", target_settings,
                         "--dry-run", "-q")
    assert status == 1  # something to copy
    assert re.search(r"would copy +original +birds/originals/new\.jpg", out)
    assert re.search(r"would copy +original +fish/originals/eel b\.jpg", out)
    assert "birds/originals/new.jpg" not in tree(target)
    status, out, _ = run(capsys, "migrate", "--from", source_settings, "--to", target_settings,
                         "-q")
    assert status == 0 and "copied 2 (" in out and "newer in target 1" in out
    assert re.search(r"kept +newer in target +birds/originals/owl\.png", out)
    assert (target / "birds" / "originals" / "owl.png").read_bytes() == b"uploaded after the switch"
    assert (target / "fish" / "originals" / "eel b.jpg").read_bytes() == b"EEL" * 1000
    (source / "birds" / "originals" / "new.jpg").unlink()  # deleted at the source: kept
    status, out, _ = run(capsys, "migrate", "--from", source_settings, "--to", target_settings,
                         "-q", "--size-only")
    assert status == 0 and "only in target 1" in out and "new.jpg" in str(tree(target))


@pytest.mark.parametrize("md5", [False, True])
def test_between_a_file_store_and_a_store_without_paths(tmp_path, source, md5):
    local = FileStore(str(source), collection_dirs=COLLECTION_DIRS)
    remote = MemoryStore(colls=set(COLLECTION_DIRS), md5=md5)
    remote.areas = lambda coll=None: local.areas(coll)  # the same grouping of collections
    out = io.StringIO()
    assert migrate.migrate(local, remote, out=out, quiet=True) == 0
    assert sorted(remote.static_name(coll, name, kind) for coll, kind, name in remote.files) == [
        "Birds/original/empty.txt", "Birds/original/owl.png", "Fish/original/cod.png",
        "Fish/original/eel b.jpg", "Fish/thumbnail/cod_200.png"]
    assert remote.files[("Fish", storage.ORIGINAL, "cod.png")][0] == samples.png()
    out = io.StringIO()
    assert migrate.migrate(local, remote, out=out, quiet=True) == 0
    assert "copied 0 (0 B), already there 5" in out.getvalue()
    back = FileStore(str(tmp_path / "back"), collection_dirs=COLLECTION_DIRS)
    assert migrate.migrate(remote, back, out=io.StringIO(), quiet=True) == 0
    assert tree(tmp_path / "back") == {path: (source / path).read_bytes() for path in SERVED}


def s3_multipart_etag(data, part_size):
    """Return the ETag S3 gives `data` uploaded in parts of `part_size` bytes."""
    parts = [hashlib.md5(data[at:at + part_size]).digest()
             for at in range(0, len(data), part_size)]
    return "%s-%d" % (hashlib.md5(b"".join(parts)).hexdigest(), len(parts))


class _Multipart(MemoryStore):
    """A bucket's listing: files over `part_size` have a multipart ETag, not an MD5.

    `etag` makes that ETag (S3's, else e.g. an encrypting server's); `reads` counts opens.
    """

    part_size = 1000

    def __init__(self, etag=s3_multipart_etag, **kwargs):
        super().__init__(md5=True, **kwargs)
        self.etag = etag
        self.reads = 0

    def scan(self, coll, kind=storage.ORIGINAL):
        found = []
        for listed in super().scan(coll, kind):
            if listed.size > self.part_size:
                data = self.files[(coll, kind, listed.name)][0]
                listed = listed._replace(md5=None, multipart_etag=self.etag(data,
                                                                            self.part_size))
            found.append(listed)
        return found

    def content_md5(self, coll, name, kind=storage.ORIGINAL):
        size = self.stat(coll, name, kind).size
        return None if size > self.part_size else super().content_md5(coll, name, kind)

    def open(self, coll, name, kind=storage.ORIGINAL, options=None):
        self.reads += 1
        return super().open(coll, name, kind, options)


def _multipart_pair(tmp_path, source, **kwargs):
    local = FileStore(str(source), collection_dirs=COLLECTION_DIRS)
    remote = _Multipart(colls=set(COLLECTION_DIRS), **kwargs)
    remote.areas = lambda coll=None: local.areas(coll)
    assert migrate.migrate(local, remote, out=io.StringIO(), quiet=True) == 0
    remote.reads = 0
    return local, remote


@pytest.mark.parametrize("size", [999, 1000, 1001, 2000, 2500, 3000])
def test_a_multipart_etag_is_computed_as_s3_does(tmp_path, size):
    data = os.urandom(size)
    local = FileStore(str(tmp_path))
    put(tmp_path / "originals" / "a.bin", data)
    assert (migrate._multipart_etag(local, None, "a.bin", storage.ORIGINAL, 1000)
            == s3_multipart_etag(data, 1000))


def test_a_multipart_etag_the_local_parts_make_spares_reading_the_bucket(tmp_path, source):
    local, remote = _multipart_pair(tmp_path, source)
    out = io.StringIO()
    assert migrate.migrate(local, remote, out=out, quiet=True) == 0
    assert "copied 0 (0 B), already there 5" in out.getvalue()
    assert remote.reads == 0  # eel b.jpg (3000 bytes, 3 parts): its local parts' MD5s
    out = io.StringIO()
    assert migrate.migrate(remote, FileStore(str(source), collection_dirs=COLLECTION_DIRS),
                           out=out, quiet=True) == 0  # and the other way
    assert "copied 0 (0 B), already there 5" in out.getvalue() and remote.reads == 0


@pytest.mark.parametrize("etag", [
    lambda data, part_size: s3_multipart_etag(data, 1500),  # another part size, 2 parts
    lambda data, part_size: "%s-3" % hashlib.md5(data).hexdigest()])  # not MD5s of parts
def test_a_multipart_etag_that_does_not_match_falls_back_to_the_bytes(tmp_path, source, etag):
    local, remote = _multipart_pair(tmp_path, source, etag=etag)
    out = io.StringIO()
    assert migrate.migrate(local, remote, out=out, quiet=True) == 0
    assert "copied 0 (0 B), already there 5" in out.getvalue()
    assert remote.reads == 1  # eel b.jpg, read through and compared by SHA-256


def test_a_changed_file_of_the_same_size_differs_from_its_multipart_etag(tmp_path, source):
    local, remote = _multipart_pair(tmp_path, source)
    put(source / "fish" / "originals" / "eel b.jpg", b"EEL" * 1000)  # newer, as large
    out = io.StringIO()
    assert migrate.migrate(local, remote, out=out, quiet=True) == 0
    assert "copied 1 (" in out.getvalue() and "already there 4" in out.getvalue()
    assert remote.files[("Fish", storage.ORIGINAL, "eel b.jpg")][0] == b"EEL" * 1000


class _Corrupting(MemoryStore):
    """A target that stores one byte less than it was given."""

    def save_original(self, coll, name, staged):
        staged.truncate(max(0, staged.size - 1))
        super().save_original(coll, name, staged)


class _Failing(FileStore):
    """A source one of whose files cannot be read (a disk error)."""

    broken = {"owl.png"}

    def open(self, coll, name, kind=storage.ORIGINAL, options=None):
        if name in self.broken:
            raise OSError(5, "Input/output error")
        return super().open(coll, name, kind, options)


def test_failures_are_reported_and_a_rerun_resumes(tmp_path, source):
    local = _Failing(str(source), collection_dirs=COLLECTION_DIRS)
    target = FileStore(str(tmp_path / "target"), collection_dirs=COLLECTION_DIRS)
    out = io.StringIO()
    assert migrate.migrate(local, target, out=out, quiet=True) == 1
    assert re.search(r"FAILED +original +birds/originals/owl\.png +\(Input/output error\)",
                     out.getvalue())
    assert "copied 4 (" in out.getvalue() and "failed 1" in out.getvalue()
    local.broken = set()
    out = io.StringIO()
    assert migrate.migrate(local, target, out=out, quiet=True) == 0
    assert "copied 1 (" in out.getvalue() and "already there 4" in out.getvalue()


def test_a_copy_that_does_not_verify_fails(tmp_path, source):
    local = FileStore(str(source), collection_dirs=COLLECTION_DIRS)
    target = _Corrupting(colls=set(COLLECTION_DIRS))
    target.areas = lambda coll=None: local.areas(coll)
    for verify in (migrate.VERIFY_READ, migrate.VERIFY_SIZE):
        out = io.StringIO()
        assert migrate.migrate(local, target, verify=verify, out=out, quiet=True) == 1
        assert "verification failed" in out.getvalue() and "failed 3" in out.getvalue()
        # The bad copies are gone (the next run copies them again); the good ones stay.
        assert sorted(name for _, _, name in target.files) == ["cod_200.png", "empty.txt"]


class _CorruptingParts(_Corrupting, _Multipart):
    """A bucket storing its multipart objects one byte short."""


class _FlippingParts(_Multipart):
    """A bucket storing the first byte of its multipart objects wrong (the size right)."""

    def save_original(self, coll, name, staged):
        if staged.size > self.part_size:
            staged.seek(0)
            first = staged.read(1)
            staged.seek(0)
            staged.write(bytes([first[0] ^ 1]))
        super().save_original(coll, name, staged)


@pytest.mark.parametrize("verify", [migrate.VERIFY_READ, migrate.VERIFY_SIZE])
def test_a_bad_multipart_copy_fails_its_verification(tmp_path, source, verify):
    # The copy of eel b.jpg (3000 bytes) is multipart: no MD5 to check, so no MD5 made.
    local = FileStore(str(source), collection_dirs=COLLECTION_DIRS)
    for target, failed in ((_CorruptingParts(colls=set(COLLECTION_DIRS)), "failed 3"),
                           (_FlippingParts(colls=set(COLLECTION_DIRS)), "failed 1")):
        target.areas = lambda coll=None: local.areas(coll)
        out = io.StringIO()
        status = migrate.migrate(local, target, verify=verify, out=out, quiet=True)
        if verify == migrate.VERIFY_SIZE and isinstance(target, _FlippingParts):
            # What --verify size trusts the bucket with: SigV4 checked each part's bytes.
            assert status == 0 and "failed 0" in out.getvalue()
            continue
        assert status == 1 and "verification failed" in out.getvalue()
        assert failed in out.getvalue()
        assert ("Fish", storage.ORIGINAL, "eel b.jpg") not in target.files


def test_stores_that_cannot_be_paired_are_a_settings_error(capsys, tmp_path, source):
    source_settings = write_settings(tmp_path / "old.py", source)
    status, _, err = run(capsys, "migrate", "--from", source_settings, "--to", source_settings)
    assert status == 2 and "the same store" in err
    other = write_settings(tmp_path / "new.py", tmp_path / "target", COLLECTION_DIRS=None)
    status, _, err = run(capsys, "migrate", "--from", source_settings, "--to", other)
    assert status == 2 and "grouped the same way" in err
    assert not (tmp_path / "target").exists()
    missing = write_settings(tmp_path / "gone.py", tmp_path / "gone")
    status, _, err = run(capsys, "migrate", "--from", missing, "--to", other)
    assert status == 2 and "does not exist" in err
