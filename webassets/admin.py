"""Store maintenance: thumbnails pregen and prune, fsck and stats, through the store's listings."""

import heapq
import json
import logging
import os
import queue
import sys
import threading
import time

from . import logutil, storage, thumbnails
from .exitcodes import EXIT_ATTENTION, EXIT_OK
from .progress import Progress

logger = logging.getLogger(__name__)

__all__ = ["pregen", "prune", "fsck", "stats", "human_size", "run_bounded", "Report", "shown_name",
           "unsafe_reason", "is_served", "Owners"]

DEFAULT_GRACE = 3600  # seconds: unfinished work younger than this may belong to a live request
DEFAULT_PREGEN_SIZES = (123, 200)  # Specify 7's preview and the Web Portal's
MAX_LISTED_FAILURES = 20


class Owners:
    """The originals of one area, indexed to find a thumbnail's original quickly."""

    def __init__(self, names):
        self._by_root = {}
        for name in names:
            self._by_root.setdefault(os.path.splitext(name)[0], []).append(name)

    def owner(self, thumb_name, root):
        """Return the original `thumb_name` (parsed: its `root`) belongs to, or None (an orphan)."""
        return next((name for name in self._by_root.get(root, ())
                     if thumbnails.is_thumbnail_of(name, thumb_name)), None)

    def of(self, thumb_name):
        """Return the original `thumb_name` belongs to, or None (an orphan or not a thumbnail)."""
        parsed = thumbnails.parse_thumbnail_name(thumb_name)
        return None if parsed is None else self.owner(thumb_name, parsed[0])


def unsafe_reason(name):
    """Return why the server could never serve a stored `name`, or None."""
    try:
        storage.check_name(name, "name")
        name.encode("utf-8")
    except storage.UnsafeName as ex:
        return str(ex)
    except UnicodeEncodeError:
        return "name is not valid UTF-8"
    return None


def is_served(listed):
    """Tell whether a Listed entry is a file the server serves (a safe name, a regular file)."""
    return listed.problem is None and unsafe_reason(listed.name) is None


def shown_name(store, coll, name, kind=storage.ORIGINAL):
    """Return `name` as reports show it: relative to the store ('fish/originals/a.jpg').

    Names the server could never serve are shown too (the store would refuse them).
    """
    try:
        return store.static_name(coll, name, kind)
    except storage.UnsafeName:
        return store.static_name(coll, "_", kind)[:-1] + name


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

    def __init__(self, out=None):
        self.out = out
        self.counts = {}
        self._lines = []
        self._lock = threading.Lock()

    def add(self, status, what, name, detail=""):
        """Record one finding about a file named relative to the store ('c/originals/a.jpg')."""
        shown = logutil.escape(name)
        with self._lock:
            self.counts[status] = self.counts.get(status, 0) + 1
            self._lines.append("%-12s %-24s %s%s\n" % (status, what, shown,
                                                       "  (%s)" % detail if detail else ""))

    def tally(self, status):
        """Count a finding without listing it (past a listing limit)."""
        with self._lock:
            self.counts[status] = self.counts.get(status, 0) + 1

    def count(self, *statuses):
        """Return how many findings have any of `statuses`."""
        return sum(self.counts.get(status, 0) for status in statuses)

    def write(self, text=""):
        """Write the findings so far, then `text`."""
        out = self.out or sys.stdout
        with self._lock:
            out.write("".join(self._lines) + text)
            self._lines = []


def _delete_reported(report, shown, what, dry_run, delete, detail=""):
    """Run `delete()` unless dry_run, and report it under `shown`; False if it failed.

    A file that went meanwhile (MissingFile: a request finished or deleted it) leaves
    nothing to repair.
    """
    if dry_run:
        report.add("would remove", what, shown, detail)
        return True
    try:
        delete()
    except storage.MissingFile:
        pass
    except (OSError, storage.StorageError) as ex:
        report.add("FAILED", what, shown, "cannot remove: %s" % (getattr(ex, "strerror", None)
                                                                 or ex))
        return False
    report.add("removed", what, shown, detail)
    return True


def _walked_colls(store, coll=None):
    """Return one collection per area, or `coll`'s; UnknownCollection.

    None stands for the store when COLLECTION_DIRS is None (any collection will do).
    """
    return [area.coll for area in store.areas(coll)]


def scan_all(store, wanted, label, quiet=False, temporary=False):
    """Return {(coll, kind): [Listed]} of store.scan() for each (coll, kind) of `wanted`, in order.

    With `temporary`, each value is store.survey()'s ([Listed], temporary names) instead.
    A progress bar counts the listings: on a bucket each is a LIST per thousand objects.
    """
    look = store.survey if temporary else store.scan
    found = {}
    with Progress(label + " listing", len(wanted), enabled=not quiet) as bar:
        for coll, kind in wanted:
            found[(coll, kind)] = look(coll, kind)
            bar.update()
    return found


def run_bounded(function, items, jobs, name="worker"):
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

    threads = [threading.Thread(target=work, name="%s-%d" % (name, n), daemon=True)
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


# ---------------------------------------------------------------------------- thumbnails pregen

def _pregen_work(listings, coll, scales):
    """Return [(coll, name, scale, fresh)] for `coll`'s originals, judged from two listings.

    A thumbnail dated no earlier than its original is taken as fresh (the server judges by
    the store's own rule on request: a bucket's thumbnail follows its original's ETag).
    """
    thumbs = {listed.name: listed.mtime_ns for listed in listings[(coll, storage.THUMBNAIL)]
              if listed.problem is None}
    return [(coll, listed.name, scale,
             thumbs.get(thumbnails.thumbnail_name(listed.name, scale), -1) >= listed.mtime_ns)
            for listed in listings[(coll, storage.ORIGINAL)] if is_served(listed)
            for scale in scales]


def pregen(store, thumbnailer, settings, sizes=DEFAULT_PREGEN_SIZES, coll=None, jobs=None,
           out=None, quiet=False, clock=time.monotonic):
    """Make the missing thumbnails of every original at `sizes` (snapped to the ladder).

    Resumable: fresh thumbnails (dated no earlier than their original in the store's
    listing) are skipped. At most `jobs` (by default, and at most, the engine's
    THUMBNAIL_WORKERS) conversions run at once, on the server's engine. The last line
    reports the thumbnails made per second of the run. Returns EXIT_ATTENTION if any
    conversion failed. Raises UnknownCollection, or BadScale for a size.
    """
    scales = sorted({thumbnails.parse_scale(str(size), settings.MAX_SCALE,
                                            settings.THUMBNAIL_SIZES) for size in sizes})
    colls = _walked_colls(store, coll)
    listings = scan_all(store, [(one, kind) for one in colls
                                for kind in (storage.THUMBNAIL, storage.ORIGINAL)],
                        "pregen", quiet)
    work = [item for one in colls for item in _pregen_work(listings, one, scales)]
    # More threads than the engine's converter slots would only wait for a slot.
    jobs = max(1, min(jobs or thumbnailer.max_workers, thumbnailer.max_workers))
    report = Report(out)
    report.write("pregen: %d thumbnails (sizes %s), %d at a time\n"
                 % (len(work), ", ".join(map(str, scales)), jobs))
    tally = {"made": 0, "present": 0, "not an image": 0, "failed": 0}
    lock = threading.Lock()
    bar = Progress("pregen", len(work), enabled=not quiet)

    def one(item):
        outcome = _pregen_one(store, thumbnailer, item, report)
        with lock:
            tally[outcome] += 1
        bar.update()

    started = clock()
    try:
        run_bounded(one, work, jobs, "pregen")
    finally:
        bar.close()
        elapsed = max(clock() - started, 1e-6)
        report.write("made %(made)d, already there %(present)d, not an image %(not an image)d, "
                     "failed %(failed)d" % tally + " in %.1f s: %.1f images/s\n"
                     % (elapsed, tally["made"] / elapsed))
    return EXIT_ATTENTION if tally["failed"] else EXIT_OK


def _pregen_one(store, thumbnailer, item, report):
    coll, name, scale, fresh = item
    if fresh:
        return "present"
    try:
        thumbnailer.thumbnail_of(store, coll, name, scale)
    except thumbnails.NotThumbnailable:
        return "not an image"
    except (thumbnails.ThumbnailError, storage.StorageError, OSError) as ex:
        if report.count("FAILED") < MAX_LISTED_FAILURES:
            report.add("FAILED", "thumbnail at %d" % scale, store.static_name(coll, name), str(ex))
        else:
            report.tally("FAILED")
        return "failed"
    return "made"


# ---------------------------------------------------------------------------- thumbnails prune

def prune(store, settings, dry_run=False, out=None, quiet=False):
    """Remove thumbnails whose original is gone, and off-ladder sizes when a ladder is set.

    Symlinked thumbnails are left alone, as they always were: someone put them there on
    purpose; names the server could never make are fsck's to report. Returns
    EXIT_ATTENTION if a removal failed or, with dry_run, if any would be removed.
    """
    report = Report(out)
    # Thumbnails are listed before originals: a thumbnail made meanwhile then has its
    # original in the list, so a live upload never loses its fresh thumbnail.
    colls = _walked_colls(store)
    found = scan_all(store, [(coll, storage.THUMBNAIL) for coll in colls]
                     + [(coll, storage.ORIGINAL) for coll in colls], "prune", quiet)
    listings = [(coll, [listed.name for listed in found[(coll, storage.THUMBNAIL)]
                        if is_served(listed) and not listed.link],
                 Owners(listed.name for listed in found[(coll, storage.ORIGINAL)]))
                for coll in colls]
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


def _remove_thumbnail(report, store, coll, name, what, dry_run, detail=""):
    """Delete a stored thumbnail unless dry_run, and report it; False if deletion failed."""
    return _delete_reported(report, store.static_name(coll, name, storage.THUMBNAIL), what,
                            dry_run, lambda: store.delete_thumbnail(coll, name), detail)


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

def _check_unfinished(store, item, report, dry_run, grace, now):
    age = now - item.changed
    if age < grace:
        report.add("kept", "recent " + item.what, item.shown,
                   "%s old, may be in progress" % _age(age))
        return
    _delete_reported(report, item.shown, "leftover " + item.what, dry_run,
                     lambda: store.remove_unfinished(item), "%s old" % _age(age))


def _check_original(store, coll, listed, report):
    shown = shown_name(store, coll, listed.name)
    reason = unsafe_reason(listed.name)
    if reason is not None:
        report.add("PROBLEM", "unsafe name", shown, reason + "; never served")
        return
    if listed.problem is not None:
        report.add("PROBLEM", listed.problem, shown)
        return
    if store.local_path(coll, listed.name) is not None:
        # A local file is cheap to open: find the unreadable ones (a remote store's
        # listing has already proven the object is there).
        try:
            with store.open(coll, listed.name) as handle:
                handle.read(1)
        except storage.MissingFile:
            return  # deleted meanwhile
        except OSError as ex:
            report.add("PROBLEM", "unreadable original", shown, ex.strerror or str(ex))
            return
    if listed.size == 0:
        report.add("PROBLEM", "zero-byte original", shown, "upload it again")


def _check_thumbnail(store, coll, listed, owners, report, dry_run):
    name = listed.name
    reason = unsafe_reason(name)
    parsed = thumbnails.parse_thumbnail_name(name) if reason is None else None
    if reason is not None or parsed is None or listed.problem is not None or listed.link:
        report.add("PROBLEM", "not a thumbnail", shown_name(store, coll, name, storage.THUMBNAIL),
                   reason or ("unexpected name" if parsed is None else storage.NOT_A_FILE))
    elif owners.owner(name, parsed[0]) is None:
        _remove_thumbnail(report, store, coll, name, "orphan thumbnail", dry_run)
    elif listed.size == 0:
        _remove_thumbnail(report, store, coll, name, "zero-byte thumbnail", dry_run,
                          "made again on request")


def fsck(store, dry_run=False, grace=DEFAULT_GRACE, out=None, quiet=False, now=None):
    """Check the whole store; repair what is safe to repair, report the rest.

    Removes unfinished work older than `grace` seconds (interrupted uploads and renders,
    unfinished multipart uploads, stale leases), orphan and zero-byte thumbnails. Reports
    zero-byte or unreadable originals and names the server can never serve. Returns
    EXIT_ATTENTION if a problem is left (or, with dry_run, anything would be repaired).
    """
    now = time.time() if now is None else now
    report = Report(out)
    work = store.unfinished()
    colls = _walked_colls(store)
    found = scan_all(store, [(coll, kind) for coll in colls
                             for kind in (storage.ORIGINAL, storage.THUMBNAIL)], "fsck", quiet)
    listings = [(coll, found[(coll, storage.ORIGINAL)], found[(coll, storage.THUMBNAIL)])
                for coll in colls]
    total = len(work) + sum(len(orig) + len(thumb) for _, orig, thumb in listings)
    with Progress("fsck", total, enabled=not quiet) as bar:
        for item in work:
            _check_unfinished(store, item, report, dry_run, grace, now)
            bar.update()
        for coll, originals, thumbs in listings:
            owners = Owners(listed.name for listed in originals)
            for listed in originals:
                _check_original(store, coll, listed, report)
                bar.update()
            for listed in thumbs:
                _check_thumbnail(store, coll, listed, owners, report, dry_run)
                bar.update()
    report.write("fsck: %d originals, %d thumbnails; %d repaired, %d to repair, %d problems\n"
                 % (sum(len(orig) for _, orig, _ in listings),
                    sum(len(thumbs) for _, _, thumbs in listings), report.count("removed"),
                    report.count("would remove"), report.count("PROBLEM", "FAILED")))
    return EXIT_ATTENTION if report.count("PROBLEM", "FAILED", "would remove") else EXIT_OK


# ---------------------------------------------------------------------------- stats

def _tally(store, coll, kind, surveyed):
    """Return (count, bytes, temporary files, [(size, stored name)]) of `coll`'s `kind`.

    `surveyed` is store.survey()'s. Hidden files other than our temporary ones are not
    counted: the server never serves them; nor are symbolic links (as before) and names it
    could never serve.
    """
    listing, temps = surveyed
    files = [(listed.size, store.static_name(coll, listed.name, kind)) for listed in listing
             if is_served(listed) and not listed.link]
    return len(files), sum(size for size, _ in files), len(temps), files


def stats(store, top=10, as_json=False, out=None, quiet=False):
    """Print originals and thumbnails per collection directory and the largest originals."""
    out = out or sys.stdout
    rows, largest = [], []
    selected = store.areas()
    found = scan_all(store, [(area.coll, kind) for area in selected
                             for kind in (storage.ORIGINAL, storage.THUMBNAIL)], "stats", quiet,
                     temporary=True)
    for area in selected:
        originals, thumbs = (_tally(store, area.coll, kind, found[(area.coll, kind)])
                             for kind in (storage.ORIGINAL, storage.THUMBNAIL))
        rows.append({"directory": area.label, "collections": list(area.colls),
                     "originals": originals[0], "originals_bytes": originals[1],
                     "thumbnails": thumbs[0], "thumbnails_bytes": thumbs[1],
                     "temporary": originals[2] + thumbs[2]})
        largest = heapq.nlargest(top, largest + originals[3])
    largest = [{"bytes": size, "path": name} for size, name in largest]
    if as_json:
        out.write(json.dumps({"store": store.location(), "directories": rows,
                              "largest_originals": largest}, indent=2) + "\n")
    else:
        out.write(_stats_table(store.location(), rows, largest))
    return EXIT_OK


def _stats_table(location, rows, largest):
    lines = ["Store %s" % logutil.escape(location),
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
