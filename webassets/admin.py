"""Store maintenance: thumbnails pregen and prune, fsck and stats, over every collection dir."""

import heapq
import json
import logging
import os
import queue
import shutil
import sys
import threading
import time

from . import logutil, storage, thumbnails
from .exitcodes import EXIT_ATTENTION, EXIT_OK
from .progress import Progress

logger = logging.getLogger(__name__)

__all__ = ["Area", "areas", "pregen", "prune", "fsck", "stats", "human_size"]

DEFAULT_GRACE = 3600  # seconds: a temporary file younger than this may belong to a live request
DEFAULT_PREGEN_SIZES = (123, 200)  # Specify 7's preview and the Web Portal's
MAX_LISTED_FAILURES = 20


Area = storage.Area


def areas(store, coll=None):
    """Return the store's collection directories, or only `coll`'s; UnknownCollection."""
    return store.areas(coll)


class _Owners:
    """The originals of one area, indexed to find a thumbnail's original quickly."""

    def __init__(self, names):
        self._by_root = {}
        for name in names:
            self._by_root.setdefault(os.path.splitext(name)[0], []).append(name)

    def owner(self, thumb_name, root):
        """Return the original `thumb_name` belongs to, or None (an orphan)."""
        return next((name for name in self._by_root.get(root, ())
                     if thumbnails.is_thumbnail_of(name, thumb_name)), None)


def _entries(directory):
    """Return the directory's entries sorted by name; none if it does not exist."""
    try:
        with os.scandir(directory) as entries:
            return sorted(entries, key=lambda entry: entry.name)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _is_temp(name):
    return name.startswith(storage.TEMP_PREFIXES)


def _unsafe(name):
    """Return why the server could never serve `name`, or None."""
    try:
        storage.check_name(name, "name")
        name.encode("utf-8")
    except storage.UnsafeName as ex:
        return str(ex)
    except UnicodeEncodeError:
        return "name is not valid UTF-8"
    return None


def human_size(number):
    """Return a byte count for people: '512 B', '1.5 MiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if number < 1024 or unit == "TiB":
            return ("%d %s" % (number, unit)) if unit == "B" else ("%.1f %s" % (number, unit))
        number /= 1024.0


def _age(seconds):
    if seconds < 120:
        return "%d s" % seconds
    if seconds < 7200:
        return "%d min" % (seconds // 60)
    return "%.1f h" % (seconds / 3600.0)


class Report:
    """A walk's findings: counted as they come, written to `out` after the progress bar."""

    def __init__(self, base_dir, out=None):
        self.base_dir = base_dir
        self.out = out
        self.counts = {}
        self._lines = []

    def add(self, status, what, path, detail=""):
        """Record one finding, e.g. ('removed', 'orphan thumbnail', path, '12 KiB')."""
        self.add_stored(status, what, os.path.relpath(path, self.base_dir), detail)

    def add_stored(self, status, what, name, detail=""):
        """Record one finding about a file named relative to the store ('c/originals/a.jpg')."""
        self.counts[status] = self.counts.get(status, 0) + 1
        shown = logutil.escape(name)
        self._lines.append("%-12s %-24s %s%s\n" % (status, what, shown,
                                                   "  (%s)" % detail if detail else ""))

    def count(self, *statuses):
        """Return how many findings have any of `statuses`."""
        return sum(self.counts.get(status, 0) for status in statuses)

    def write(self, text=""):
        """Write the findings so far, then `text`."""
        out = self.out or sys.stdout
        out.write("".join(self._lines) + text)
        self._lines = []


def _delete_reported(report, shown, what, dry_run, delete, gone, detail=""):
    """Run `delete()` unless dry_run, and report it under `shown`; False if it failed.

    `gone` is the exception `delete()` raises when the file went meanwhile (a request
    finished or deleted it): nothing is left to repair then.
    """
    if dry_run:
        report.add_stored("would remove", what, shown, detail)
        return True
    try:
        delete()
    except gone:
        pass
    except OSError as ex:
        report.add_stored("FAILED", what, shown, "cannot remove: %s" % (ex.strerror or ex))
        return False
    report.add_stored("removed", what, shown, detail)
    return True


def _remove(report, path, what, dry_run, detail="", tree=False):
    """Remove a file (or a tree) unless dry_run, and report it; False if removal failed."""
    remove = shutil.rmtree if tree else os.unlink
    return _delete_reported(report, os.path.relpath(path, report.base_dir), what, dry_run,
                            lambda: remove(path), FileNotFoundError, detail)


# ---------------------------------------------------------------------------- thumbnails pregen

def pregen(store, thumbnailer, settings, sizes=DEFAULT_PREGEN_SIZES, coll=None, jobs=None,
           out=None, quiet=False, clock=time.monotonic):
    """Make the missing thumbnails of every original at `sizes` (snapped to the ladder).

    Resumable: fresh thumbnails are skipped. At most `jobs` (by default, and at most, the
    engine's THUMBNAIL_WORKERS) conversions run at once, on the server's engine. The last
    line reports the thumbnails made per second of the run. Returns EXIT_ATTENTION if any
    conversion failed. Raises UnknownCollection, or BadScale for a size.
    """
    scales = sorted({thumbnails.parse_scale(str(size), settings.MAX_SCALE,
                                            settings.THUMBNAIL_SIZES) for size in sizes})
    work = [(one_coll, name, scale) for one_coll in _walked_colls(store, coll)
            for name in store.list(one_coll)
            if _unsafe(name) is None for scale in scales]
    # More threads than the engine's converter slots would only wait for a slot.
    jobs = max(1, min(jobs or thumbnailer.max_workers, thumbnailer.max_workers))
    report = Report(store.base_dir, out)
    report.write("pregen: %d thumbnails (sizes %s), %d at a time\n"
                 % (len(work), ", ".join(map(str, scales)), jobs))
    tally = {"made": 0, "present": 0, "not an image": 0, "failed": 0}
    lock = threading.Lock()
    bar = Progress("pregen", len(work), enabled=not quiet)

    def one(item):
        outcome = _pregen_one(store, thumbnailer, item, report, lock)
        with lock:
            tally[outcome] += 1
        bar.update()

    started = clock()
    try:
        _run_bounded(one, work, jobs)
    finally:
        bar.close()
        elapsed = max(clock() - started, 1e-6)
        report.write("made %(made)d, already there %(present)d, not an image %(not an image)d, "
                     "failed %(failed)d" % tally + " in %.1f s: %.1f images/s\n"
                     % (elapsed, tally["made"] / elapsed))
    return EXIT_ATTENTION if tally["failed"] else EXIT_OK


def _pregen_one(store, thumbnailer, item, report, lock):
    coll, name, scale = item
    thumb_name = thumbnails.thumbnail_name(name, scale)
    try:
        if (store.stat(coll, thumb_name, storage.THUMBNAIL).mtime_ns
                >= store.stat(coll, name).mtime_ns):
            return "present"
    except (storage.MissingFile, OSError):
        pass  # no thumbnail yet (or the original just went away: the engine says which)
    try:
        thumbnailer.thumbnail_of(store, coll, name, scale)
    except thumbnails.NotThumbnailable:
        return "not an image"
    except (thumbnails.ThumbnailError, storage.StorageError, OSError) as ex:
        with lock:
            if report.count("FAILED") < MAX_LISTED_FAILURES:
                report.add_stored("FAILED", "thumbnail at %d" % scale,
                                  store.static_name(coll, name), str(ex))
            else:
                report.counts["FAILED"] += 1
        return "failed"
    return "made"


def _run_bounded(function, items, jobs):
    """Call function(item) for every item on `jobs` threads; Ctrl-C lets running calls end."""
    pending = queue.Queue(maxsize=jobs * 2)
    stop = threading.Event()

    def work():
        while True:
            item = pending.get()
            if item is None:
                return
            if not stop.is_set():
                function(item)

    threads = [threading.Thread(target=work, name="pregen-%d" % n, daemon=True)
               for n in range(jobs)]
    for thread in threads:
        thread.start()
    try:
        for item in items:
            pending.put(item)
    except BaseException:
        stop.set()  # KeyboardInterrupt: drop what is queued, finish what is running
        raise
    finally:
        for _ in threads:
            pending.put(None)
        for thread in threads:
            thread.join()


# ---------------------------------------------------------------------------- thumbnails prune

def _walked_colls(store, coll=None):
    """Return one collection per collection directory, or `coll`'s; UnknownCollection.

    None stands for the store when COLLECTION_DIRS is None (any collection will do).
    """
    return [area.colls[0] if area.colls else None for area in areas(store, coll)]


def _prunable_thumbnails(store, coll):
    """Return the names of `coll`'s thumbnails that prune may judge.

    Symlinks are left alone, as they always were: someone put them there on purpose.
    Names the server could never make are fsck's to report.
    """
    found = []
    for name in store.list(coll, storage.THUMBNAIL):
        try:
            path = store.local_path(coll, name, storage.THUMBNAIL)
        except storage.UnsafeName:
            continue
        if path is None or not os.path.islink(path):
            found.append(name)
    return found


def _remove_thumbnail(report, store, coll, name, what, dry_run, detail=""):
    """Delete a stored thumbnail unless dry_run, and report it; False if deletion failed."""
    return _delete_reported(report, store.static_name(coll, name, storage.THUMBNAIL), what,
                            dry_run, lambda: store.delete_thumbnail(coll, name),
                            storage.MissingFile, detail)


def prune(store, settings, dry_run=False, out=None, quiet=False):
    """Remove thumbnails whose original is gone, and off-ladder sizes when a ladder is set.

    Returns EXIT_ATTENTION if a removal failed or, with dry_run, if any would be removed.
    """
    report = Report(store.base_dir, out)
    # Thumbnails are listed before originals: a thumbnail made meanwhile then has its
    # original in the list, so a live upload never loses its fresh thumbnail.
    listings = [(coll, _prunable_thumbnails(store, coll)) for coll in _walked_colls(store)]
    listings = [(coll, thumbs, _Owners(store.list(coll))) for coll, thumbs in listings]
    total = sum(len(thumbs) for _, thumbs, _ in listings)
    sizes = frozenset(settings.THUMBNAIL_SIZES or ())
    with Progress("prune", total, enabled=not quiet) as bar:
        for coll, thumbs, owners in listings:
            for name in thumbs:
                _prune_one(store, coll, name, owners, sizes, report, dry_run)
                bar.update()
    report.write("prune: %d thumbnails checked, %s %d\n"
                 % (total, "would remove" if dry_run else "removed",
                    report.count("would remove" if dry_run else "removed")))
    return EXIT_ATTENTION if report.count("FAILED", "would remove") else EXIT_OK


def _prune_one(store, coll, name, owners, sizes, report, dry_run):
    parsed = thumbnails.parse_thumbnail_name(name)
    if parsed is None:
        return  # not a name the server makes: fsck reports it
    if owners.owner(name, parsed[0]) is None:
        _remove_thumbnail(report, store, coll, name, "orphan thumbnail", dry_run)
    elif sizes and parsed[1] not in sizes:
        _remove_thumbnail(report, store, coll, name, "size not in ladder", dry_run,
                          "%d not in THUMBNAIL_SIZES" % parsed[1])


# ---------------------------------------------------------------------------- fsck

def _temp_age(entry, now):
    """Return the seconds since a temporary file or directory (or anything in it) changed."""
    newest = entry.stat(follow_symlinks=False).st_mtime
    if entry.is_dir(follow_symlinks=False):
        for inner in _entries(entry.path):
            newest = max(newest, inner.stat(follow_symlinks=False).st_mtime)
    return now - newest


def _check_temp(entry, report, dry_run, grace, now):
    try:
        age = _temp_age(entry, now)
    except FileNotFoundError:
        return  # finished meanwhile
    what = "leftover upload" if entry.name.startswith(storage.UPLOAD_PREFIX) else "leftover render"
    if age < grace:
        report.add("kept", what.replace("leftover", "recent"), entry.path,
                   "%s old, may be in progress" % _age(age))
        return
    _remove(report, entry.path, what, dry_run, "%s old" % _age(age),
            tree=entry.is_dir(follow_symlinks=False))


def _check_original(entry, report):
    reason = _unsafe(entry.name)
    if reason is not None:
        report.add("PROBLEM", "unsafe name", entry.path, reason + "; never served")
        return
    try:
        if not entry.is_file():
            report.add("PROBLEM", "not a regular file", entry.path)
            return
        with open(entry.path, "rb") as handle:
            first = handle.read(1)
    except OSError as ex:
        report.add("PROBLEM", "unreadable original", entry.path, ex.strerror or str(ex))
        return
    if not first:
        report.add("PROBLEM", "zero-byte original", entry.path, "upload it again")


def _check_thumbnail(entry, owners, report, dry_run):
    reason = _unsafe(entry.name)
    parsed = thumbnails.parse_thumbnail_name(entry.name) if reason is None else None
    try:
        is_file = entry.is_file(follow_symlinks=False)
        empty = is_file and entry.stat(follow_symlinks=False).st_size == 0
    except FileNotFoundError:
        return  # removed meanwhile (the original was deleted)
    if reason is not None or parsed is None or not is_file:
        report.add("PROBLEM", "not a thumbnail", entry.path,
                   reason or ("unexpected name" if parsed is None else "not a regular file"))
    elif owners.owner(entry.name, parsed[0]) is None:
        _remove(report, entry.path, "orphan thumbnail", dry_run)
    elif empty:
        _remove(report, entry.path, "zero-byte thumbnail", dry_run, "made again on request")


def fsck(store, dry_run=False, grace=DEFAULT_GRACE, out=None, quiet=False, now=None):
    """Check the whole store; repair what is safe to repair, report the rest.

    Removes temporary files older than `grace` seconds (interrupted uploads and renders),
    orphan and zero-byte thumbnails. Reports zero-byte or unreadable originals and names the
    server can never serve. Returns EXIT_ATTENTION if a problem is left (or, with dry_run,
    anything would be repaired).
    """
    now = time.time() if now is None else now
    report = Report(store.base_dir, out)
    selected = areas(store)
    # Uploads are staged in BASE_DIR itself while Specify 7's `coll` is still unknown.
    base_temps = [entry for entry in _entries(store.base_dir) if _is_temp(entry.name)]
    listings = [(area, _entries(area.originals), _entries(area.thumbnails)) for area in selected]
    total = len(base_temps) + sum(len(orig) + len(thumb) for _, orig, thumb in listings)
    with Progress("fsck", total, enabled=not quiet) as bar:
        for entry in base_temps:
            _check_temp(entry, report, dry_run, grace, now)
            bar.update()
        for area, originals, thumbs in listings:
            _fsck_area(originals, thumbs, report, dry_run, grace, now, bar)
    report.write("fsck: %d originals, %d thumbnails; %d repaired, %d to repair, %d problems\n"
                 % (sum(len(orig) for _, orig, _ in listings),
                    sum(len(thumbs) for _, _, thumbs in listings), report.count("removed"),
                    report.count("would remove"), report.count("PROBLEM", "FAILED")))
    return EXIT_ATTENTION if report.count("PROBLEM", "FAILED", "would remove") else EXIT_OK


def _fsck_area(originals, thumbs, report, dry_run, grace, now, bar):
    names = [entry.name for entry in originals]
    owners = _Owners(names)
    for entry in originals:
        if _is_temp(entry.name):
            _check_temp(entry, report, dry_run, grace, now)
        else:
            _check_original(entry, report)
        bar.update()
    for entry in thumbs:
        if _is_temp(entry.name):
            _check_temp(entry, report, dry_run, grace, now)
        else:
            _check_thumbnail(entry, owners, report, dry_run)
        bar.update()


# ---------------------------------------------------------------------------- stats

def _listing(store, coll, kind):
    """Return (names, temporary names) of `coll`'s files of `kind`."""
    return store.list(coll, kind), store.list_temporary(coll, kind)


def _tally(store, coll, kind, listing, bar):
    """Return (count, bytes, temporary files, [(size, stored name)]) of a _listing().

    Hidden files other than our temporary ones are not counted: the server never serves
    them; nor are symlinks (as before) and names it could never serve.
    """
    names, temps = listing
    count = total = 0
    files = []
    for name in names:
        bar.update()
        try:
            path = store.local_path(coll, name, kind)
            if path is not None and os.path.islink(path):
                continue
            info = store.stat(coll, name, kind)
        except (storage.MissingFile, storage.UnsafeName):
            continue  # deleted meanwhile, or a name no request can reach
        count += 1
        total += info.size
        files.append((info.size, store.static_name(coll, name, kind)))
    for _ in temps:
        bar.update()
    return count, total, len(temps), files


def stats(store, top=10, as_json=False, out=None, quiet=False):
    """Print originals and thumbnails per collection directory and the largest originals."""
    out = out or sys.stdout
    listings = [(area, coll, _listing(store, coll, storage.ORIGINAL),
                 _listing(store, coll, storage.THUMBNAIL))
                for area, coll in zip(areas(store), _walked_colls(store))]
    rows, largest = [], []
    total = sum(len(names) + len(temps) for _, _, *both in listings for names, temps in both)
    with Progress("stats", total, enabled=not quiet) as bar:
        for area, coll, original_listing, thumb_listing in listings:
            originals = _tally(store, coll, storage.ORIGINAL, original_listing, bar)
            thumbs = _tally(store, coll, storage.THUMBNAIL, thumb_listing, bar)
            rows.append({"directory": area.label, "collections": list(area.colls),
                         "originals": originals[0], "originals_bytes": originals[1],
                         "thumbnails": thumbs[0], "thumbnails_bytes": thumbs[1],
                         "temporary": originals[2] + thumbs[2]})
            largest = heapq.nlargest(top, largest + originals[3])
    largest = [{"bytes": size, "path": name} for size, name in largest]
    if as_json:
        out.write(json.dumps({"base_dir": store.base_dir, "directories": rows,
                              "largest_originals": largest}, indent=2) + "\n")
    else:
        out.write(_stats_table(store.base_dir, rows, largest))
    return EXIT_OK


def _stats_table(base_dir, rows, largest):
    lines = ["Store %s" % logutil.escape(base_dir),
             "%-24s %10s %12s %10s %12s %5s" % (
                 "directory", "originals", "bytes", "thumbnails", "bytes", "temp")]
    keys = ("originals", "originals_bytes", "thumbnails", "thumbnails_bytes", "temporary")
    totals = {key: sum(row[key] for row in rows) for key in keys}
    for row in rows + ([dict(totals, directory="(total)")] if len(rows) > 1 else []):
        lines.append("%-24s %10d %12s %10d %12s %5d" % (
            logutil.escape(row["directory"])[:24], row["originals"],
            human_size(row["originals_bytes"]), row["thumbnails"],
            human_size(row["thumbnails_bytes"]), row["temporary"]))
    if largest:
        lines.append("Largest originals:")
        lines.extend("  %10s  %s" % (human_size(item["bytes"]), logutil.escape(item["path"]))
                     for item in largest)
    return "\n".join(lines) + "\n"
