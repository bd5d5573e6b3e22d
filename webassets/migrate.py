"""`webassets migrate`: copy every original and thumbnail of one store into another, verified."""

import hashlib
import logging
import os
import tempfile
import threading
from typing import NamedTuple, Optional

from . import storage
from .admin import Owners, Report, human_size, is_served, run_bounded, shown_name, unsafe_reason
from .exitcodes import EXIT_ATTENTION, EXIT_OK
from .progress import Progress

logger = logging.getLogger(__name__)

__all__ = ["migrate", "check_pair", "MigrateError", "DEFAULT_JOBS", "VERIFY_READ", "VERIFY_SIZE"]

DEFAULT_JOBS = 4  # copies at once: a remote store answers each request with some latency
VERIFY_READ, VERIFY_SIZE = "read", "size"
MAX_LISTED_COPIES = 100  # --dry-run lists this many files it would copy, then counts
# Every file is read through from its start: a bucket streams it in one GET (not in the
# ranged reads a plain open() makes for random readers, one request per 8 MiB).
WHOLE = storage.ReadOptions()


class MigrateError(Exception):
    """The two stores cannot be migrated between (the same store, other collections)."""


class _Item(NamedTuple):
    """One source file to bring over, with what the target's listing says of it."""

    coll: Optional[str]
    kind: str
    source: storage.Listed
    target: Optional[storage.Listed]  # None: not in the target
    owner: Optional[str]  # a thumbnail's original (None: an orphan, or an original)


class _Digests:
    """The MD5 and the SHA-256 of a stream of bytes, as they pass (None: not wanted)."""

    def __init__(self, md5=True, sha256=True):
        self.md5 = hashlib.md5() if md5 else None
        self.sha256 = hashlib.sha256() if sha256 else None
        self.size = 0

    def update(self, data):
        """Add `data` to the digests."""
        for digest in (self.md5, self.sha256):
            if digest is not None:
                digest.update(data)
        self.size += len(data)


def _read_digest(store, coll, name, kind, digest):
    """Read a stored file through `digest` (a hashlib object); return the digest.

    MissingFile, OSError, StorageError.
    """
    with store.open(coll, name, kind, WHOLE) as handle:
        for data in iter(lambda: handle.read(storage.COPY_CHUNK), b""):
            digest.update(data)
    return digest


def _multipart_etag(store, coll, name, kind, part_size):
    """Return the multipart ETag a stored file would have in parts of `part_size` bytes.

    That is the hex MD5 of its parts' MD5s, '-', the number of parts (as S3 computes it).
    MissingFile, OSError, StorageError.
    """
    digests = []
    with store.open(coll, name, kind, WHOLE) as handle:
        while True:
            part, left = hashlib.md5(), part_size
            for data in iter(lambda: handle.read(min(storage.COPY_CHUNK, left)), b""):
                part.update(data)
                left -= len(data)
                if not left:
                    break
            if left == part_size:
                break  # the end: no byte of a further part
            digests.append(part.digest())
            if left:
                break  # a short last part
    return "%s-%d" % (hashlib.md5(b"".join(digests)).hexdigest(), len(digests))


def check_pair(source, target):
    """Raise MigrateError unless `target` can take `source`'s files collection by collection.

    Not one store twice, and the same collections grouped the same way (the directory
    names may differ).
    """
    if source.location() == target.location():
        raise MigrateError("the source and the target are the same store: %s"
                           % source.location())
    grouping = [area.colls for area in source.areas()]
    if grouping != [area.colls for area in target.areas()]:
        raise MigrateError("the two stores must have the same COLLECTION_DIRS collections, "
                           "grouped the same way (source: %s; target: %s)"
                           % (_grouping(source), _grouping(target)))


def _grouping(store):
    return "; ".join("%s: %s" % (area.label, ", ".join(area.colls) or "every collection")
                     for area in store.areas())


class _Migration:
    """One run: the plan from both listings, then each file compared, copied and verified."""

    def __init__(self, source, target, dry_run, size_only, verify, report):
        self.source = source
        self.target = target
        self.dry_run = dry_run
        self.size_only = size_only
        self.verify = verify
        self.report = report
        self.tally = {"copied": 0, "same": 0, "newer": 0, "failed": 0}
        self.bytes_copied = 0
        self.only_in_target = 0
        self.skipped = 0
        self._lock = threading.Lock()

    # -- the plan

    def plan(self):
        """Return the _Items to bring over: every original first, then every thumbnail.

        Originals go first so a copied thumbnail is never older than its copied original
        (the target would render it again).
        """
        colls = [area.coll for area in self.source.areas()]
        originals = [item for coll in colls for item in self._plan_area(coll, storage.ORIGINAL)]
        owners = {coll: Owners(item.source.name for item in originals if item.coll == coll)
                  for coll in colls}
        return originals + [item._replace(owner=owners[coll].of(item.source.name))
                            for coll in colls
                            for item in self._plan_area(coll, storage.THUMBNAIL)]

    def _plan_area(self, coll, kind):
        there = {listed.name: listed for listed in self.target.scan(coll, kind)}
        items = []
        for listed in self.source.scan(coll, kind):
            present = there.pop(listed.name, None)
            if not is_served(listed):
                # Never served, so never migrated: fsck reports these.
                self.skipped += 1
                self.report.add("skipped", "not served", shown_name(self.source, coll,
                                                                    listed.name, kind),
                                listed.problem or unsafe_reason(listed.name))
                continue
            items.append(_Item(coll, kind, listed, present, None))
        self.only_in_target += len(there)
        return items

    # -- one file

    def run_one(self, item):
        """Compare, copy and verify one file; record the outcome (never raises for I/O)."""
        shown = shown_name(self.source, item.coll, item.source.name, item.kind)
        try:
            outcome = self._one(item, shown)
        except (OSError, storage.StorageError) as ex:
            if isinstance(ex, storage.MissingFile):
                return  # deleted at the source meanwhile: nothing to bring over
            outcome = "failed"
            self.report.add("FAILED", item.kind, shown, getattr(ex, "strerror", None) or str(ex))
        with self._lock:
            self.tally[outcome] += 1
            if outcome == "copied":
                self.bytes_copied += item.source.size

    def _one(self, item, shown):
        if item.target is not None:
            if self._equal(item):
                return "same"
            if item.target.mtime_ns > item.source.mtime_ns:
                # Written at the target after the source's version (an upload after the
                # cut-over): the newer file wins, never the migration.
                self.report.add("kept", "newer in target", shown, "differs; not replaced")
                return "newer"
        if self.dry_run:
            if self.report.count("would copy") < MAX_LISTED_COPIES:
                self.report.add("would copy", item.kind, shown, human_size(item.source.size))
            else:
                self.report.tally("would copy")
            return "copied"
        written = self._copy(item)
        self._verify(item, written, shown)
        return "copied"

    def _equal(self, item):
        """Tell whether the target's file has the source's bytes (size, then a digest)."""
        source, target = item.source, item.target
        if source.size != target.size:
            return False
        if self.size_only:
            return True
        if source.md5 and target.md5:
            return source.md5 == target.md5
        if target.md5 or source.md5:
            # One side knows its MD5 unread (a bucket's ETag): read only the other side.
            store, known = (self.source, target.md5) if target.md5 else (self.target, source.md5)
            return _read_digest(store, item.coll, source.name, item.kind,
                                hashlib.md5()).hexdigest() == known
        if self._same_parts(item):
            return True
        return (_read_digest(self.source, item.coll, source.name, item.kind,
                             hashlib.sha256()).digest()
                == _read_digest(self.target, item.coll, source.name, item.kind,
                                hashlib.sha256()).digest())

    def _same_parts(self, item):
        """Tell whether one side is a multipart object whose ETag the other side's parts make.

        Cut in the bucket's own part size (the one a copy by webassets used), the other
        copy is read once, instead of both. Only a match counts: another part size or
        an ETag that is no MD5 of MD5s (an encrypting server) also differ, so the caller
        then compares the bytes themselves.
        """
        for listed, store, other in ((item.target, self.target, self.source),
                                     (item.source, self.source, self.target)):
            etag, part_size = listed.multipart_etag, store.part_size
            if etag and part_size and -(-listed.size // part_size) == int(etag.split("-")[1]):
                return _multipart_etag(other, item.coll, listed.name, item.kind,
                                       part_size) == etag
        return False

    def _copy(self, item):
        """Copy one file into the target atomically; return the _Digests of what was sent.

        The digests its verification can use: a file the target stores in parts has no
        MD5 ETag to check (and MD5 is the slower one), and --verify size needs no SHA-256.
        """
        part_size = self.target.part_size
        if part_size and item.source.size > part_size:
            digests = _Digests(md5=False, sha256=self.verify != VERIFY_SIZE)
        else:
            digests = _Digests()
        with self.source.open(item.coll, item.source.name, item.kind, WHOLE) as handle:
            if item.kind == storage.ORIGINAL:
                # The name is known: a bucket takes the bytes straight at its key.
                staged = self.target.stage(item.coll, known_coll=True, name=item.source.name)
                try:
                    _pump(handle, staged, digests)
                    self.target.save_original(item.coll, item.source.name, staged)
                finally:
                    staged.discard()
                return digests
            # A thumbnail is published from a local file (Store.save_thumbnail); this one is
            # dated now, after its original's copy, and made from the target's original:
            # the target finds it fresh.
            fd, local = tempfile.mkstemp(prefix="webassets-migrate-")
            try:
                with os.fdopen(fd, "wb") as copy:
                    _pump(handle, copy, digests)
                self.target.save_thumbnail(item.coll, item.source.name, local,
                                           self._original_info(item))
            finally:
                if os.path.exists(local):
                    os.unlink(local)
        return digests

    def _original_info(self, item):
        """Return the FileInfo of a thumbnail's original in the target, or None."""
        if item.owner is None:
            return None
        try:
            return self.target.stat(item.coll, item.owner)
        except storage.MissingFile:
            return None

    def _verify(self, item, written, shown):
        """Raise StorageError unless the target now holds exactly the bytes sent.

        By the MD5 the target knows (a bucket's single-part ETag), else by reading the copy
        back (VERIFY_READ) or, with VERIFY_SIZE, by its size alone (a bucket checked each
        part's SHA-256 as it arrived: SigV4 signs the payload).
        """
        name = item.source.name
        md5 = (self.target.content_md5(item.coll, name, item.kind)
               if written.md5 is not None else None)
        if md5 is not None:
            same = md5 == written.md5.hexdigest()
        elif self.verify == VERIFY_SIZE:
            same = self.target.stat(item.coll, name, item.kind).size == written.size
        else:
            same = (_read_digest(self.target, item.coll, name, item.kind,
                                 hashlib.sha256()).digest() == written.sha256.digest())
        if not same:
            # The bad copy is this run's own, and newer than the source's file: left there,
            # the next run would keep it as "newer in the target".
            self._remove_copy(item)
            raise storage.StorageError("verification failed: the target's copy differs")

    def _remove_copy(self, item):
        """Delete a copy this run made (an original without its thumbnails); best effort."""
        name = item.source.name
        try:
            if item.kind == storage.ORIGINAL:
                self.target.delete_original(item.coll, name, lambda thumb_name: False)
            else:
                self.target.delete_thumbnail(item.coll, name)
        except (OSError, storage.StorageError) as ex:
            logger.warning("Cannot remove the bad copy of %s: %s", name, ex)


def _pump(source, sink, digests):
    """Copy `source` into `sink` (anything with write) in COPY_CHUNK pieces, digesting."""
    for data in iter(lambda: source.read(storage.COPY_CHUNK), b""):
        digests.update(data)
        sink.write(data)


def migrate(source, target, dry_run=False, jobs=DEFAULT_JOBS, size_only=False,
            verify=VERIFY_READ, out=None, quiet=False):
    """Copy every original, then every thumbnail, of `source` that `target` lacks or differs.

    Resumable and repeatable: a file the target holds with the same size and content (MD5
    where a store knows it, e.g. a bucket's single-part ETag; a bucket's multipart ETag
    matched by the other copy's parts; else SHA-256 of both) is skipped; a differing one
    that is newer in the target is kept. Every copy is published atomically and verified
    (see _Migration._verify for `verify`). Nothing is ever deleted from the target.
    Returns EXIT_ATTENTION if a copy failed or, with dry_run, if anything would be copied.
    MigrateError if the two cannot be paired (check_pair).
    """
    check_pair(source, target)
    report = Report(out)
    run = _Migration(source, target, dry_run, size_only, verify, report)
    items = run.plan()
    report.write("migrate: %s -> %s: %d files (%s)%s\n" % (
        source.location(), target.location(), len(items),
        human_size(sum(item.source.size for item in items)), ", dry run" if dry_run else ""))
    with Progress("migrate", len(items), enabled=not quiet) as bar:
        def one(item):
            run.run_one(item)
            bar.update()

        try:
            # Every original is in place before the first thumbnail is copied: a thumbnail
            # is tagged with (or dated after) its original in the target.
            for kind in (storage.ORIGINAL, storage.THUMBNAIL):
                run_bounded(one, [item for item in items if item.kind == kind], max(1, jobs),
                            "migrate")
        finally:
            bar.close()
            report.write(_summary(run))
    failed = run.tally["failed"]
    return EXIT_ATTENTION if failed or (dry_run and run.tally["copied"]) else EXIT_OK


def _summary(run):
    tally = run.tally
    return ("%s %d (%s), already there %d, newer in target %d, failed %d; not served %d; "
            "only in target %d\n" % ("would copy" if run.dry_run else "copied", tally["copied"],
                                     human_size(run.bytes_copied), tally["same"], tally["newer"],
                                     tally["failed"], run.skipped, run.only_in_target))
