"""The admin command line, run in-process: check, keygen, token, thumbnails, fsck, stats."""

import io
import json
import os
import re
import time

import pytest

from tests.fakes import FakeClock, FakeRenderer, MemoryStore, fake_thumbnailer
from tests.helpers import make_settings, needs_convert, put
from webassets import admin, auth, samples, storage, thumbnails
from webassets.__main__ import main
from webassets.progress import Progress

NEW_KEY = "n3w-Key-0123456789abcdefghijklmnop"
OLD_KEY = "0ld-Key-0123456789abcdefghijklmnop"
HOURS_AGO = time.time() - 3 * 3600
COLLECTION_DIRS = {"Fish": "fish", "Fish Tissue": "fish", "Birds": "birds"}


def write_settings(tmp_path, **values):
    """Write a settings.py over a store in tmp_path/store; return its path."""
    values.setdefault("BASE_DIR", str(tmp_path / "store"))
    values.setdefault("KEY", [NEW_KEY, OLD_KEY])
    values.setdefault("COLLECTION_DIRS", COLLECTION_DIRS)
    path = tmp_path / "settings.py"
    path.write_text("".join("%s = %r\n" % item for item in sorted(values.items())))
    return str(path)


@pytest.fixture
def store(tmp_path):
    """A store as a crashed, long-lived server leaves it; returns its BASE_DIR."""
    base = tmp_path / "store"
    fish, birds = base / "fish", base / "birds"
    png = samples.png()
    for name in ("cod.png", "eel.png"):
        put(fish / "originals" / name, png)
    put(birds / "originals" / "owl.png", png)
    put(birds / "originals" / "notes.txt", b"field notes, not an image")
    put(fish / "originals" / "empty.jpg")  # zero-byte original: reported, never deleted
    put(fish / "originals" / ".DS_Store", b"junk")  # a name the server can never serve
    # Interrupted work: an old upload (also in BASE_DIR, staged before `coll` was known),
    # an old render directory, and an upload still being written.
    put(fish / "originals" / ".upload-dead.tmp", b"half an upload", age=3 * 3600)
    put(base / ".upload-early.tmp", b"half", age=3 * 3600)
    put(birds / "thumbnails" / ".thumb-dead.tmp" / "page.png", b"x", age=3 * 3600)
    os.utime(str(birds / "thumbnails" / ".thumb-dead.tmp"), (HOURS_AGO, HOURS_AGO))
    put(fish / "originals" / ".upload-live.tmp", b"arriving")
    # Thumbnails: valid, orphans, off the ladder, zero bytes.
    put(fish / "thumbnails" / "cod_200.png", png)
    put(fish / "thumbnails" / "gone_200.png", png)
    put(birds / "thumbnails" / "dodo_123.jpg", png)
    put(fish / "thumbnails" / "eel_999.png", png)
    put(birds / "thumbnails" / "owl_123.png")
    return base


def run(capsys, *argv):
    """Run the command line in-process; return (status, stdout, stderr)."""
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def names(directory):
    return sorted(os.listdir(str(directory))) if directory.exists() else []


# ---------------------------------------------------------------------------- help and usage

@pytest.mark.parametrize("argv", [["--help"], ["fsck", "--help"], ["thumbnails", "pregen", "-h"]])
def test_every_command_has_help_with_the_exit_statuses(capsys, argv):
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 0
    assert "exit status:" in capsys.readouterr().out


def test_usage_errors_exit_2(capsys, tmp_path):
    assert run(capsys)[0] == 2
    assert run(capsys, "thumbnails")[0] == 2
    with pytest.raises(SystemExit) as exited:
        main(["thumbnails", "pregen", "--sizes", "big"])
    assert exited.value.code == 2


def test_a_missing_store_is_a_settings_error(capsys, tmp_path):
    status, _, err = run(capsys, "fsck", "--settings", write_settings(tmp_path))
    assert status == 2 and "does not exist" in err


# ---------------------------------------------------------------------------- keygen and token

def test_keygen_prints_a_fresh_strong_key(capsys):
    first, second = run(capsys, "keygen")[1].strip(), run(capsys, "keygen")[1].strip()
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", first) and first != second


def test_token_is_signed_with_the_first_key(capsys, tmp_path):
    status, out, _ = run(capsys, "token", "--settings", write_settings(tmp_path), "cod.png")
    token = out.strip()
    assert status == 0
    auth.validate_token((NEW_KEY,), 150, token, "cod.png", now=time.time())
    with pytest.raises(auth.TokenError):
        auth.validate_token((OLD_KEY,), 150, token, "cod.png", now=time.time())


def test_token_without_a_key_is_a_settings_error(capsys, tmp_path):
    status, out, err = run(capsys, "token", "--settings", write_settings(tmp_path, KEY=None), "x")
    assert (status, out) == (2, "") and "KEY is None" in err


# ---------------------------------------------------------------------------- check

def test_check_without_converters_fails_and_never_prints_keys(capsys, tmp_path, store):
    settings = write_settings(tmp_path, CONVERT="/nonexistent/convert",
                              GHOSTSCRIPT="/nonexistent/gs")
    status, out, _ = run(capsys, "check", "--settings", settings)
    assert status == 1
    assert "[FAIL] ImageMagick: /nonexistent/convert does not run" in out
    assert re.search(r"\[FAIL\] HEIC .*HEIC coder", out)
    assert "2 key(s) accepted (rotation" in out and out.count("characters, fingerprint") == 2
    assert NEW_KEY not in out and OLD_KEY not in out
    assert "[ ok ] BASE_DIR %s is writable" % store in out
    assert re.search(r"%s \(Birds\) is writable" % re.escape(str(store / "birds" / "originals")),
                     out)
    assert "fault(s)" in out.splitlines()[-1]


def test_check_flags_weak_keys_and_static_access(capsys, tmp_path):
    settings = write_settings(tmp_path, KEY=["test_attachment_key", "short"],
                              REQUIRE_KEY_FOR_GET=True, CAN_THUMBNAIL=[])
    status, out, _ = run(capsys, "check", "--settings", settings)
    assert status == 1
    assert "[FAIL] key #1: 19 characters" in out and "published example key" in out
    assert "[FAIL] key #2: 5 characters" in out and "webassets keygen" in out
    assert "[warn] ALLOW_STATIC_FILE_ACCESS = True: /static/ serves every file" in out
    assert "[ -- ] PDF   disabled" in out
    assert "short" not in out.replace("shorter", "")  # the key itself is never shown


def test_check_reports_invalid_settings(capsys, tmp_path):
    status, out, _ = run(capsys, "check", "--settings", write_settings(tmp_path, PORT="http"))
    assert status == 2 and "[FAIL] Invalid PORT" in out


@needs_convert
def test_check_live_probe_shows_a_missing_format(capsys, tmp_path, store):
    settings = write_settings(tmp_path, GHOSTSCRIPT="/nonexistent/gs")
    status, out, _ = run(capsys, "check", "--settings", settings)
    assert status == 1
    assert re.search(r"\[ ok \] PNG   [0-9.]+ s -> image/png", out)
    assert re.search(r"\[FAIL\] PDF   no PDF converter on this server: PDFs need Ghostscript", out)
    assert "[warn] Ghostscript: /nonexistent/gs does not run" in out
    assert "[ ok ] /" in out and "ImageMagick" in out


@needs_convert
def test_check_passes_on_a_healthy_setup(capsys, tmp_path, store):
    settings = write_settings(tmp_path, CAN_THUMBNAIL=["image/png", "image/jpeg"])
    status, out, _ = run(capsys, "check", "--settings", settings)
    assert status == 0, out
    assert out.splitlines()[-1].startswith("No faults")
    assert names(store) == [".upload-early.tmp", "birds", "fish"]


# ---------------------------------------------------------------------------- fsck

def test_fsck_dry_run_changes_nothing(capsys, tmp_path, store):
    before = sorted(os.walk(str(store)))
    status, out, err = run(capsys, "fsck", "--settings", write_settings(tmp_path), "--dry-run")
    assert status == 1
    assert sorted(os.walk(str(store))) == before
    assert re.search(r"would remove +leftover upload +fish/originals/\.upload-dead\.tmp", out)
    assert "fsck: 6/" not in out and "fsck:" in err  # progress goes to stderr, plain lines


def test_fsck_repairs_what_is_safe_and_reports_the_rest(capsys, tmp_path, store):
    status, out, _ = run(capsys, "fsck", "--settings", write_settings(tmp_path))
    fish, birds = store / "fish", store / "birds"
    assert names(fish / "originals") == [".DS_Store", ".upload-live.tmp", "cod.png", "eel.png",
                                         "empty.jpg"]
    assert names(store) == ["birds", "fish"]
    assert names(birds / "thumbnails") == []  # orphan, zero-byte and the dead render dir
    assert names(fish / "thumbnails") == ["cod_200.png", "eel_999.png"]  # prune's job
    for line in ("removed      leftover upload          .upload-early.tmp  (3.0 h old)",
                 "removed      leftover render          birds/thumbnails/.thumb-dead.tmp",
                 "removed      orphan thumbnail         fish/thumbnails/gone_200.png",
                 "removed      zero-byte thumbnail      birds/thumbnails/owl_123.png",
                 "PROBLEM      zero-byte original       fish/originals/empty.jpg",
                 "PROBLEM      unsafe name              fish/originals/.DS_Store",
                 "kept         recent upload            fish/originals/.upload-live.tmp"):
        assert line in out, out
    assert status == 1  # problems a person must look at remain
    os.unlink(str(fish / "originals" / "empty.jpg"))
    os.unlink(str(fish / "originals" / ".DS_Store"))
    status, out, _ = run(capsys, "fsck", "--settings", write_settings(tmp_path), "-q")
    assert status == 0 and out.endswith("0 repaired, 0 to repair, 0 problems\n")


def test_fsck_grace_decides_what_is_in_flight(capsys, tmp_path, store):
    run(capsys, "fsck", "--settings", write_settings(tmp_path), "--grace", "0")
    assert ".upload-live.tmp" not in names(store / "fish" / "originals")


def test_fsck_reports_control_characters_escaped(capsys, tmp_path, store):
    put(store / "birds" / "originals" / "bad\x1b[2Jname.png", b"x")
    status, out, _ = run(capsys, "fsck", "--settings", write_settings(tmp_path), "-q")
    assert "\x1b" not in out and "bad\\x1b[2Jname.png" in out and "control characters" in out


# ---------------------------------------------------------------------------- thumbnails prune

def test_prune_removes_orphans_and_off_ladder_sizes(capsys, tmp_path, store):
    settings = write_settings(tmp_path)
    status, out, _ = run(capsys, "thumbnails", "prune", "--settings", settings, "--dry-run")
    assert status == 1 and "gone_200.png" in out and "999 not in THUMBNAIL_SIZES" in out
    assert "cod_200.png" not in out and (store / "fish" / "thumbnails" / "gone_200.png").exists()
    status, out, _ = run(capsys, "thumbnails", "prune", "--settings", settings)
    assert status == 0 and out.endswith("removed 3\n")
    assert names(store / "fish" / "thumbnails") == ["cod_200.png"]
    assert names(store / "birds" / "thumbnails") == [".thumb-dead.tmp", "owl_123.png"]
    assert run(capsys, "thumbnails", "prune", "--settings", settings, "--dry-run")[0] == 0


def test_prune_leaves_symlinked_thumbnails_alone(capsys, tmp_path, store):
    thumbs = store / "fish" / "thumbnails"
    os.symlink("cod_200.png", str(thumbs / "gone_123.png"))  # an orphan, but a link
    status, out, _ = run(capsys, "thumbnails", "prune", "--settings", write_settings(tmp_path))
    assert status == 0 and "gone_123.png" not in out and "gone_200.png" in out
    assert names(thumbs) == ["cod_200.png", "gone_123.png"]


def test_prune_keeps_every_size_without_a_ladder(capsys, tmp_path, store):
    run(capsys, "thumbnails", "prune", "--settings", write_settings(tmp_path, THUMBNAIL_SIZES=None))
    assert "eel_999.png" in names(store / "fish" / "thumbnails")


@pytest.mark.parametrize("original, thumb, owned", [
    ("a.jpg", "a_200.jpg", True), ("a.PDF", "a_123.png", True), ("scan_2024", "scan_2024_64", True),
    ("v1.0_final", "v1_200.0_final", True), ("a.jpg", "a_200.gif", False),
    ("a_1.jpg", "a_200.jpg", False), ("a.jpg", "a_1_200.jpg", False),
    # One rule for delete, prune and fsck: any number of digits (the reference wrote any int).
    ("a.jpg", "a_1234567890.jpg", True), ("a.jpg", "a_" + "9" * 40 + ".png", True),
])
def test_thumbnail_ownership_matches_the_server(original, thumb, owned):
    parsed = thumbnails.parse_thumbnail_name(thumb)
    found = parsed is not None and admin.Owners([original]).owner(thumb, parsed[0]) is not None
    assert found == owned == thumbnails.is_thumbnail_of(original, thumb)


# ---------------------------------------------------------------------------- thumbnails pregen

@needs_convert
def test_pregen_makes_missing_thumbnails_and_resumes(capsys, tmp_path, store):
    settings = write_settings(tmp_path)
    status, out, _ = run(capsys, "thumbnails", "pregen", "--settings", settings,
                         "--sizes", "100,200", "--jobs", "2")
    # 100 snaps up the ladder to 123, as a request for scale=100 would.
    assert out.startswith("pregen: 10 thumbnails (sizes 123, 200), 2 at a time")
    # Present: cod_200 and the zero-byte owl_123 (fsck's to remove); not images: the text
    # file and the zero-byte original.
    assert "made 4, already there 2, not an image 4, failed 0" in out and status == 0
    assert names(store / "birds" / "thumbnails") == [".thumb-dead.tmp", "dodo_123.jpg",
                                                     "owl_123.png", "owl_200.png"]
    assert (store / "birds" / "thumbnails" / "owl_200.png").stat().st_size > 0
    status, out, _ = run(capsys, "thumbnails", "pregen", "--settings", settings, "--sizes",
                         "123,200", "--coll", "Fish Tissue", "-q")
    assert "made 0, already there 4, not an image 2, failed 0" in out and status == 0


@needs_convert
def test_pregen_reports_failures(capsys, tmp_path, store):
    put(store / "birds" / "originals" / "broken.png", samples.png()[:60])
    status, out, _ = run(capsys, "thumbnails", "pregen", "--settings", write_settings(tmp_path),
                         "--sizes", "64", "--coll", "Birds")
    assert status == 1 and "failed 1" in out
    assert re.search(r"FAILED +thumbnail at 64 +birds/originals/broken\.png", out)


def test_pregen_unknown_collection_is_a_usage_error(capsys, tmp_path, store):
    status, _, err = run(capsys, "thumbnails", "pregen", "--settings", write_settings(tmp_path),
                         "--coll", "Mammals")
    assert status == 2 and "Unknown collection" in err


def test_pregen_parallelism_is_bounded(tmp_path, store):
    from webassets import config
    from webassets.app import create_app

    settings = config.load(write_settings(tmp_path), environ={})
    renderer = FakeRenderer(delay=0.02)
    engine = fake_thumbnailer(renderer, formats=("PNG",), max_workers=2)
    store_ = create_app(settings).store
    out = io.StringIO()
    ticks = iter((100.0, 104.5))  # the run starts at 100 s and ends at 104.5 s
    status = admin.pregen(store_, engine, settings, sizes=(64, 300, 600), out=out, quiet=True,
                          clock=lambda: next(ticks))
    assert status == 0 and len(renderer.calls) == 9 and renderer.peak == 2, out.getvalue()
    # Throughput: the thumbnails made over the run's wall time.
    assert "failed 0 in 4.5 s: 2.0 images/s\n" in out.getvalue()


# ---------------------------------------------------------------------------- stats

def test_stats_table_and_json(capsys, tmp_path, store):
    settings = write_settings(tmp_path)
    os.symlink("cod.png", str(store / "fish" / "originals" / "link.png"))  # not counted
    status, out, _ = run(capsys, "stats", "--settings", settings, "-q")
    assert status == 0
    assert re.search(r"birds +2 +\d+ B +2 +\d+ B +1", out)
    assert re.search(r"fish +3 +\d+\.\d KiB +3 +\d+\.\d KiB +2", out)  # not .DS_Store
    assert "(total)" in out and "Largest originals:" in out
    status, out, _ = run(capsys, "stats", "--settings", settings, "--json", "--top", "2", "-q")
    report = json.loads(out)
    fish = [row for row in report["directories"] if row["directory"] == "fish"][0]
    assert fish["collections"] == ["Fish", "Fish Tissue"] and fish["originals"] == 3
    assert [item["path"] for item in report["largest_originals"]][:1] in (
        ["fish/originals/cod.png"], ["fish/originals/eel.png"], ["birds/originals/owl.png"])
    assert len(report["largest_originals"]) == 2


# ---------------------------------------------------------------------------- progress

class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_on_a_terminal():
    ticks = iter(range(100))
    stream = Terminal()
    with Progress("walk", 4, stream=stream, clock=lambda: next(ticks)) as bar:
        bar.update()
        bar.update()
    text = stream.getvalue()
    assert text.startswith("\r\x1b[Kwalk: [######------------------] 1/4 25% ")
    assert "/s ETA 0:00:" in text and "\r\x1b[Kwalk: [############------------] 2/4 50% " in text
    assert text.endswith("\n") and text.count("\n") == 1


def test_progress_plain_lines_every_tenth():
    stream = io.StringIO()
    with Progress("walk", 100, stream=stream) as bar:
        for _ in range(100):
            bar.update()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 11 and lines[-1].startswith("walk: 100/100 100% in ")
    assert "\r" not in stream.getvalue()


def test_progress_quiet_and_empty_write_nothing():
    stream = io.StringIO()
    with Progress("walk", 5, stream=stream, enabled=False) as bar:
        bar.update(5)
    with Progress("walk", 0, stream=stream):
        pass
    assert stream.getvalue() == ""


# ---------------------------------------------------------------------------- any store

def test_admin_walks_a_store_without_local_paths(tmp_path):
    clock = FakeClock(HOURS_AGO)
    store = MemoryStore(colls={"Fish", "Birds"}, clock=clock)
    store.try_lease("thumbnail Fish/thumbnail/cod_64.png", 60)  # a lease left 3 hours ago
    clock.now = time.time()
    for name, data in (("cod.png", samples.png()), ("empty.jpg", b"")):
        staged = store.stage("Fish")
        staged.write(data)
        store.save_original("Fish", name, staged)
    for name, data in (("cod_200.png", samples.png()), ("cod_123.png", b""),
                       ("gone_200.png", b"x")):
        put(tmp_path / name, data)
        store.save_thumbnail("Fish", name, str(tmp_path / name))
    store.work += [storage.Unfinished("Fish/original/a.jpg (upload 1)", "multipart upload",
                                      HOURS_AGO, "1"),
                   storage.Unfinished("Fish/original/b.jpg (upload 2)", "multipart upload",
                                      time.time(), "2")]
    out = io.StringIO()
    assert admin.stats(store, as_json=True, out=out, quiet=True) == 0
    fish = [row for row in json.loads(out.getvalue())["directories"]
            if row["collections"] == ["Fish"]][0]
    assert (fish["originals"], fish["thumbnails"]) == (2, 3)
    out = io.StringIO()
    assert admin.prune(store, make_settings(tmp_path), dry_run=True, out=out, quiet=True) == 1
    assert "would remove orphan thumbnail         Fish/thumbnail/gone_200.png" in out.getvalue()
    out = io.StringIO()
    assert admin.fsck(store, out=out, quiet=True) == 1
    for line in ("removed      leftover multipart upload Fish/original/a.jpg (upload 1)",
                 "kept         recent multipart upload  Fish/original/b.jpg (upload 2)",
                 "removed      leftover lease",
                 "removed      orphan thumbnail         Fish/thumbnail/gone_200.png",
                 "removed      zero-byte thumbnail      Fish/thumbnail/cod_123.png",
                 "PROBLEM      zero-byte original       Fish/original/empty.jpg"):
        assert line in out.getvalue(), out.getvalue()
    assert store.leases == {} and [item.handle for item in store.unfinished()] == ["2"]
    renderer = FakeRenderer()
    out = io.StringIO()
    assert admin.pregen(store, fake_thumbnailer(renderer), make_settings(tmp_path),
                        sizes=(123, 200), out=out, quiet=True) == 0
    assert "made 1, already there 1, not an image 2, failed 0" in out.getvalue()
