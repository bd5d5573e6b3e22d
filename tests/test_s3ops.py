"""Operating a bucket: admin, migrate, check, /readyz, /metrics, two instances on one bucket."""

import hashlib
import io
import json
import re
import threading
import time

import pytest

from tests.fake_s3 import FakeS3Client
from tests.fakes import FakeClock, FakeRenderer, fake_thumbnailer, storm
from tests.helpers import call, make_settings, put, upload
from tests.stores import SMALL_PART, S3Backend
from webassets import admin, check, migrate, samples, storage
from webassets.__main__ import main
from webassets.app import create_app
from webassets.storage import FileStore, factory
from webassets.storage.s3 import PROBE_TTL, S3Store
from webassets.storage.s3client import S3Unavailable

COLLECTION_DIRS = {"Fish": "fish", "Fish Tissue": "fish", "Birds": "birds"}
MiB = 1024 * 1024
FAKE = {"STORAGE": "s3", "S3_BUCKET": "fake", "S3_PREFIX": "p/"}  # on a FakeS3Client
LATER = 2 * 3600  # seconds: fsck judges unfinished work as if this much time had passed


class Bucket:
    """One prefix of a bucket (FakeS3Client's, or a real server's) and stores or apps on it.

    Every store() is another instance over the same objects: for a real server, its own
    client (connections, clock offset, stats), as another host would have.
    """

    def __init__(self, request, kind, tmp_path, **settings):
        self.kind = kind
        if kind == "s3-fake":
            self.client, overrides = FakeS3Client(), FAKE
        else:
            self.client = None
            overrides = S3Backend.on(kind, request.getfixturevalue(kind)).overrides()
        settings.setdefault("COLLECTION_DIRS", COLLECTION_DIRS)
        self.settings = make_settings(tmp_path / "unused", **dict(overrides, **settings))

    def store(self):
        return factory.open_store(self.settings, client=self.client)

    def app(self, **options):
        return create_app(self.settings, store=self.store(), **options)


@pytest.fixture(params=["s3-fake", "seaweedfs", "moto"])
def bucket(request, tmp_path):
    return Bucket(request, request.param, tmp_path)


def save(store, coll, name, data):
    staged = store.stage(coll, known_coll=True)
    staged.write(data)
    store.save_original(coll, name, staged)


def save_thumbnail(store, tmp_path, coll, name, data, original=None):
    put(tmp_path / name, data)
    source = store.stat(coll, original) if original else None
    store.save_thumbnail(coll, name, str(tmp_path / name), source)


# ---------------------------------------------------------------------------- admin on a bucket

def test_fsck_stats_prune_and_pregen_walk_a_bucket(bucket, tmp_path, capsys):
    store = bucket.store()
    client, prefix = store.client, store.prefix
    png = samples.png()
    save(store, "Fish", "cod.png", png)
    save(store, "Fish", "empty.jpg", b"")
    save(store, "Birds", "owl.png", png + b"owl")
    save_thumbnail(store, tmp_path, "Fish", "cod_200.png", png, original="cod.png")
    save_thumbnail(store, tmp_path, "Fish", "cod_123.png", b"", original="cod.png")
    save_thumbnail(store, tmp_path, "Birds", "dodo_200.png", png)
    client.put(prefix + "fish/originals/sub/deep.jpg", b"never served")
    # Unfinished work: a multipart upload cut off, an upload staged under the prefix (Specify 7
    # sends the file before `coll`) and a lease an instance never gave back.
    writer = client.writer(prefix + "birds/originals/big.tif", part_size=5 * MiB)
    writer.write(b"\0" * (5 * MiB + 1))
    client.put(prefix + ".upload-cut.tmp", b"half")
    store.try_lease("thumbnail fish/thumbnails/cod_64.png", 60)

    out = io.StringIO()
    assert admin.stats(store, as_json=True, out=out, quiet=True) == 0
    report = json.loads(out.getvalue())
    assert report["store"] == store.location()
    fish = [row for row in report["directories"] if row["directory"] == "fish"][0]
    assert (fish["originals"], fish["thumbnails"]) == (2, 2)

    out = io.StringIO()
    assert admin.prune(store, bucket.settings, dry_run=True, out=out, quiet=True) == 1
    assert "would remove orphan thumbnail         birds/thumbnails/dodo_200.png" in out.getvalue()

    out = io.StringIO()
    assert admin.fsck(store, quiet=True, out=out) == 1
    text = out.getvalue()
    # NOTE: moto's server dates every multipart upload 2010-11-10: only fsck's second run
    # (any time later) can tell it from one a live request is sending.
    recent = r"%s +(recent|leftover) multipart upload +birds/originals/big\.tif \(upload \w+\)"
    assert re.search(recent % ("(kept|removed)" if bucket.kind == "moto" else "kept"), text)
    for pattern in (r"kept +recent upload +\.upload-cut\.tmp",
                    r"kept +recent lease +\.leases/[0-9a-f]{64}",
                    r"removed +orphan thumbnail +birds/thumbnails/dodo_200\.png",
                    r"removed +zero-byte thumbnail +fish/thumbnails/cod_123\.png",
                    r"PROBLEM +zero-byte original +fish/originals/empty\.jpg",
                    r"PROBLEM +unsafe name +fish/originals/sub/deep\.jpg"):
        assert re.search(pattern, text), text
    out = io.StringIO()
    assert admin.fsck(store, out=out, now=time.time() + LATER) == 1  # the problems remain
    text = out.getvalue()
    if bucket.kind != "moto":
        assert re.search(recent % "removed", text), text
    for pattern in (r"removed +leftover upload +\.upload-cut\.tmp",
                    r"removed +leftover lease +\.leases/[0-9a-f]{64}"):
        assert re.search(pattern, text), text
    assert "fsck:" in capsys.readouterr().err  # the progress display
    assert list(client.list_multipart_uploads(prefix)) == [] and store.unfinished() == []

    renderer = FakeRenderer()
    out = io.StringIO()
    engine = fake_thumbnailer(renderer)
    assert admin.pregen(store, engine, bucket.settings, sizes=(200,), out=out, quiet=True) == 0
    assert "made 1, already there 1, not an image 1, failed 0" in out.getvalue()
    assert store.thumbnail_is_fresh("Birds", "owl_200.png", store.stat("Birds", "owl.png"))


def test_stats_lists_each_area_once(tmp_path):
    """Stats counts files and temporary objects from one listing per area and kind."""
    bucket = Bucket(None, "s3-fake", tmp_path)
    store = bucket.store()
    save(store, "Fish", "cod.png", samples.png())
    store.client.put(store.prefix + "fish/originals/.upload-cut.tmp", b"half")
    store.client.put(store.prefix + "birds/thumbnails/.upload-odd.tmp", b"")
    before = store.client.requests["list"]
    out = io.StringIO()
    assert admin.stats(store, as_json=True, out=out, quiet=True) == 0
    rows = {row["directory"]: row for row in json.loads(out.getvalue())["directories"]}
    assert store.client.requests["list"] - before == 2 * len(rows) == 4
    assert [(rows[d]["originals"], rows[d]["temporary"]) for d in ("birds", "fish")] == [
        (0, 1), (1, 1)]


# ---------------------------------------------------------------------------- migrate

def test_migrate_local_to_bucket_and_back(bucket, tmp_path):
    local = FileStore(str(tmp_path / "local"), collection_dirs=COLLECTION_DIRS)
    big = bytes(range(256)) * (24 * 1024)  # 6 MiB: a multipart upload, no MD5 ETag
    save(local, "Fish", "cod.png", samples.png())
    save(local, "Fish", "big.bin", big)
    save(local, "Birds", "owl b.jpg", b"owl")
    save_thumbnail(local, tmp_path, "Fish", "cod_200.png", samples.png())
    store = bucket.store()
    out = io.StringIO()
    assert migrate.migrate(local, store, jobs=3, out=out, quiet=True) == 0, out.getvalue()
    assert "copied 4 (" in out.getvalue()
    assert store.open("Fish", "big.bin").read() == big
    # The copied thumbnail is fresh for the copied original: not rendered again.
    assert store.thumbnail_is_fresh("Fish", "cod_200.png", store.stat("Fish", "cod.png"))
    if bucket.kind != "s3-fake":  # the fake's ETags are all MD5s
        assert [listed.multipart_etag for listed in store.scan("Fish")
                if listed.name == "big.bin"] == [hashlib.md5(b"".join(
                    hashlib.md5(big[at:at + SMALL_PART]).digest()
                    for at in (0, SMALL_PART))).hexdigest() + "-2"]
    out, again = io.StringIO(), bucket.store()
    gets = _gets(again)
    assert migrate.migrate(local, again, out=out, quiet=True) == 0
    assert "copied 0 (0 B), already there 4" in out.getvalue()
    # Equal by ETags: MD5s, and big.bin's multipart ETag, which its local parts make.
    assert _gets(again) == gets
    back = FileStore(str(tmp_path / "back"), collection_dirs=COLLECTION_DIRS)
    assert migrate.migrate(bucket.store(), back, out=io.StringIO(), quiet=True) == 0
    out, again = io.StringIO(), bucket.store()
    gets = _gets(again)
    assert migrate.migrate(again, back, out=out, quiet=True) == 0
    assert "copied 0 (0 B), already there 4" in out.getvalue() and _gets(again) == gets
    for coll, name, kind in (("Fish", "cod.png", storage.ORIGINAL), ("Fish", "big.bin",
                             storage.ORIGINAL), ("Birds", "owl b.jpg", storage.ORIGINAL),
                             ("Fish", "cod_200.png", storage.THUMBNAIL)):
        with local.open(coll, name, kind) as mine, back.open(coll, name, kind) as theirs:
            assert mine.read() == theirs.read()


def _gets(store):
    return store.request_stats()["requests"].get("get", 0)


# --------------------------------------------------------------------- check, /readyz, /metrics

def test_check_shows_the_buckets_access_clock_and_conditional_writes(bucket):
    rows = bucket.store().describe()
    lines = [line for _, line in rows]
    assert rows[0] == ("ok", "%s: an object was written" % bucket.store().location())
    assert ("ok", "it was read back") in rows and ("ok", "it was deleted") in rows
    assert ("ok", "conditional writes (If-None-Match: *) work: THUMBNAIL_LEASES may be on") in rows
    assert any(re.match(r"clock offset to the S3 server: [+-]\d+ s\Z", line) for line in lines)
    assert bucket.store().unfinished() == []  # the probe left nothing


def test_check_screen_warns_when_conditional_writes_are_ignored(tmp_path):
    class Unconditional(FakeS3Client):
        def put(self, key, data, content_type=None, metadata=None, if_none_match_star=False):
            return super().put(key, data, content_type, metadata)

    settings = make_settings(tmp_path, **FAKE)
    app = create_app(settings, store=factory.open_store(settings, client=Unconditional()))
    out = io.StringIO()
    check.run_check(settings, "test", app, out=out)
    assert "[warn] the server ignores conditional writes" in out.getvalue()
    assert "[ ok ] s3://fake/" in out.getvalue()


def test_readyz_checks_the_bucket(tmp_path):
    settings = make_settings(tmp_path, CAN_THUMBNAIL=[], **FAKE)
    client, clock = FakeS3Client(), FakeClock(0.0)
    app = create_app(settings, store=S3Store(client, clock=clock))
    assert call(app, "GET", "/readyz").status == 200
    client.fail = S3Unavailable(0, "ConnectionError", "connection refused")
    assert call(app, "GET", "/readyz").status == 200  # a pass is trusted for a while
    clock.now += PROBE_TTL
    down = call(app, "GET", "/readyz")
    assert down.status == 503 and b"store" in down.body
    assert call(app, "GET", "/healthz").status == 200


def test_metrics_count_the_buckets_requests(bucket):
    app = bucket.app()
    assert upload(app, "a.jpg", b"data", coll="Fish").body == b"Ok."
    call(app, "GET", "/fileget", {"type": "O", "coll": "Fish", "filename": "gone.jpg"})
    text = call(app, "GET", "/metrics").body.decode()
    assert re.search(r'webassets_store_requests_total\{operation="\w+"\} [1-9]', text), text
    assert re.search(r'webassets_store_request_seconds_total\{operation="\w+"\} ', text)
    assert "# TYPE webassets_store_errors_total counter" in text


# ---------------------------------------------------------------------------- two instances

def test_two_instances_serve_one_bucket_as_one(bucket):
    first, second = bucket.app(), bucket.app()
    photo = samples.png() + b"-first"
    assert upload(first, "a b.png", photo, coll="Fish").body == b"Ok."
    query = {"type": "O", "coll": "Fish", "filename": "a b.png"}
    got = call(second, "GET", "/fileget", query)
    assert got.status == 200 and got.body == photo  # at once: no cache in between
    assert upload(second, "a b.png", photo + b"-again", coll="Fish").body == b"Ok."
    assert call(first, "GET", "/fileget", query).body == photo + b"-again"
    deleted = call(second, "POST", "/filedelete", body=_delete_form(first, "a b.png"),
                   headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert deleted.status == 200
    assert call(first, "GET", "/fileget", query).status == 404


def _delete_form(app, name):
    from tests.helpers import token

    return ("filename=%s&coll=Fish&token=%s" % (name.replace(" ", "+"), token(name))).encode()


def test_a_thumbnail_storm_over_two_instances_makes_one_conversion(bucket):
    gate = threading.Event()
    renderer = FakeRenderer(gate=gate)
    apps = [bucket.app(thumbnailer=fake_thumbnailer(renderer, leases=True)) for _ in range(2)]
    for app in apps:
        app.thumbnailer.lease_poll = 0.02
    assert upload(apps[0], "a.png", samples.png(), coll="Fish").body == b"Ok."
    query = {"type": "T", "coll": "Fish", "filename": "a.png", "scale": "64"}
    turn = iter(range(1000))
    results, errors = storm(lambda: call(apps[next(turn) % 2], "GET", "/fileget", query),
                            renderer, gate, count=16)
    assert errors == [] and [result.status for result in results] == [200] * 16
    # The leader serves the file it rendered, the others GET the object: one ETag.
    assert len({(result.body, result.header("ETag")) for result in results}) == 1
    assert len(renderer.calls) == 1
    assert bucket.store().unfinished() == []  # the lease was given back


@pytest.mark.parametrize("kind", ["seaweedfs", "moto"])
def test_the_migrate_command_moves_a_disk_into_a_bucket(request, tmp_path, capsys, kind):
    local = FileStore(str(tmp_path / "local"), collection_dirs=COLLECTION_DIRS)
    save(local, "Fish", "cod.png", samples.png())
    save(local, "Birds", "owl.png", b"owl")
    old = tmp_path / "old.py"
    old.write_text("BASE_DIR = %r\nCOLLECTION_DIRS = %r\n" % (local.base_dir, COLLECTION_DIRS))
    new = tmp_path / "new.py"
    overrides = S3Backend.on(kind, request.getfixturevalue(kind)).overrides()
    new.write_text("".join("%s = %r\n" % item for item in sorted(
        dict(overrides, COLLECTION_DIRS=COLLECTION_DIRS).items())))
    argv = ["migrate", "--from", str(old), "--to", str(new), "-q"]
    assert main(argv + ["--dry-run"]) == 1
    assert "would copy 2 (" in capsys.readouterr().out
    assert main(argv) == 0
    assert "copied 2 (" in capsys.readouterr().out
    assert main(argv + ["--dry-run"]) == 0  # in sync: the cut-over's last check
    bucket = factory.open_store(make_settings(tmp_path, **dict(
        overrides, COLLECTION_DIRS=COLLECTION_DIRS)))
    assert bucket.list("Fish Tissue") == ["cod.png"]
    assert bucket.open("Birds", "owl.png").read() == b"owl"


@pytest.mark.parametrize("kind", ["seaweedfs", "moto"])
def test_admin_commands_on_a_bucket_from_its_settings_file(request, tmp_path, capsys, kind):
    overrides = dict(S3Backend.on(kind, request.getfixturevalue(kind)).overrides(),
                     COLLECTION_DIRS=COLLECTION_DIRS, CAN_THUMBNAIL=[])
    settings = tmp_path / "s3.py"
    settings.write_text("".join("%s = %r\n" % item for item in sorted(overrides.items())))
    store = factory.open_store(make_settings(tmp_path, **overrides))
    save(store, "Birds", "owl.png", b"owl")
    argv = ["--settings", str(settings), "-q"]
    assert main(["stats", "--json"] + argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["store"] == store.location() and report["directories"][0]["originals"] == 1
    assert main(["fsck"] + argv) == 0
    assert capsys.readouterr().out.endswith("0 repaired, 0 to repair, 0 problems\n")
    main(["check", "--settings", str(settings)])  # converters and keys are not ours here
    screen = capsys.readouterr().out
    store_section = screen.split("\nStore\n")[1].split("\n\n")[0]
    assert "[FAIL]" not in store_section and "[warn]" not in store_section, screen
    assert "[ ok ] conditional writes (If-None-Match: *) work" in screen
    assert re.search(r"\[ ok \] clock offset to the S3 server: [+-]\d+ s", screen)
    missing = tmp_path / "missing.py"
    missing.write_text(settings.read_text() + "S3_BUCKET = 'no-such-bucket-here'\n")
    assert main(["fsck", "--settings", str(missing), "-q"]) == 2
    assert "cannot be listed" in capsys.readouterr().err
    local = tmp_path / "local.py"
    local.write_text("BASE_DIR = %r\nCOLLECTION_DIRS = %r\n" % (str(tmp_path / "disk"),
                                                                 COLLECTION_DIRS))
    (tmp_path / "disk").mkdir()
    # (A write, by the migration itself, may create the bucket: SeaweedFS makes one on PUT.)
    assert main(["migrate", "--from", str(local), "--to", str(missing), "-q", "--dry-run"]) == 2
    assert "no-such-bucket-here" in capsys.readouterr().err
