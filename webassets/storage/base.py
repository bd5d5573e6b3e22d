"""The store's interface: files keyed by (collection, kind, name), with its errors."""

import concurrent.futures
import contextlib
import hashlib
import json
import logging
import os
import threading
from typing import NamedTuple, Optional, Tuple

logger = logging.getLogger(__name__)

# The two kinds of stored file: a store keys every file by (collection, kind, name).
ORIGINAL = "original"
THUMBNAIL = "thumbnail"
KINDS = (ORIGINAL, THUMBNAIL)

MAX_NAME_BYTES = 255
# Temporary files start with '.', which check_name refuses, so a client name
# can never collide with (or fetch) a half-written file. fsck looks for these.
UPLOAD_PREFIX = ".upload-"  # an upload being received (a file)
RENDER_PREFIX = ".thumb-"  # a thumbnail being rendered (a directory, thumbnails.py)
TEMP_SUFFIX = ".tmp"
TEMP_PREFIXES = (UPLOAD_PREFIX, RENDER_PREFIX)
COPY_CHUNK = 1024 * 1024
HEAD_BYTES = 4096  # what Store.local_original's `check` sees before the rest is fetched
NOT_A_FILE = "not a regular file"  # Listed.problem of directories, sockets, dangling links


class StorageError(Exception):
    """Base of the storage errors."""


class UnsafeName(StorageError):
    """A client-supplied name is not one safe path component."""


class UnknownCollection(StorageError):
    """`coll` is not a key of COLLECTION_DIRS."""


class MissingFile(StorageError):
    """The named original or file does not exist."""


class StoreUnavailable(StorageError):
    """The store cannot be reached now (a remote store's connection or 5xx); retry later."""

    retry_after = 5


class StoreFailed(StorageError):
    """The store refused or failed an operation (e.g. a bucket's access denied)."""


class BadUpload(StorageError):
    """An upload cannot be stored as sent (its name changed after its file part)."""


def as_us_ascii(name):
    """Return `name` as Specify 6.8.00 and older send it: each non-ASCII character is '?'.

    COMPAT: those clients encode the upload's text fields in US-ASCII, which writes one '?'
    per character it cannot encode (a code point: Java replaces a surrogate pair once).
    """
    return name.encode("ascii", "replace").decode("ascii")


def legacy_collection(coll, names):
    """Return the one of `names` that an old Specify 6's `coll` stands for, else None.

    `coll` itself when it is one of `names`: an exact name always wins. Otherwise a name
    matches when as_us_ascii(name) == coll: each '?' of `coll` is one non-ASCII character
    of the name (or a '?' of its own), every other character is the same. None when `coll`
    has no '?', or when no name or several names match: the caller decides.
    """
    if coll in names:
        return coll
    if "?" not in coll:
        return None
    matches = [name for name in names if as_us_ascii(name) == coll]
    return matches[0] if len(matches) == 1 else None


def check_name(name, what="filename"):
    """Return `name` if it is one safe path component, else raise UnsafeName.

    SECURITY: a name can never leave its directory: no '/', '\\', NUL or other
    control characters, not '.' or '..', no leading dot (which also hides
    our temporary files), at most 255 UTF-8 bytes. Spaces, unicode, '%',
    quotes and names without an extension are fine.
    """
    if not name:
        raise UnsafeName("missing %s" % what)
    if "/" in name or "\\" in name:
        raise UnsafeName("%s must not contain a path separator" % what)
    if any(ord(char) < 32 or ord(char) == 127 for char in name):
        raise UnsafeName("%s must not contain control characters" % what)
    if name.startswith("."):
        raise UnsafeName("%s must not start with '.'" % what)
    if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        raise UnsafeName("%s is longer than %d bytes" % (what, MAX_NAME_BYTES))
    return name


class FileInfo(NamedTuple):
    """What the HTTP layer needs to know of a stored file: size, modification time, ETag.

    `tag` is the store's own strong ETag (quoted, e.g. S3's), None to derive one.
    """

    size: int
    mtime_ns: int
    tag: Optional[str] = None

    @property
    def mtime(self):
        """Return the modification time in seconds (a float, as os.stat's st_mtime)."""
        seconds, nanoseconds = divmod(self.mtime_ns, 10 ** 9)
        return seconds + nanoseconds * 1e-9

    @property
    def etag(self):
        """Return the strong ETag: the store's, else one from the size and mtime."""
        return self.tag or '"%x-%x"' % (self.mtime_ns, self.size)

    @classmethod
    def from_stat(cls, info):
        """Return the FileInfo of an os.stat_result."""
        return cls(info.st_size, info.st_mtime_ns)


class Area(NamedTuple):
    """One collection directory of a store: its label and the collections kept there."""

    label: str  # the COLLECTION_DIRS directory; '.' when COLLECTION_DIRS is None
    colls: tuple  # the collections kept there, sorted; () when COLLECTION_DIRS is None

    @property
    def coll(self):
        """Return one collection of the area (None for the store without COLLECTION_DIRS).

        Every collection of an area names the same files, so any one walks the area.
        """
        return self.colls[0] if self.colls else None


def group_areas(collection_dirs, coll=None):
    """Return the Areas of COLLECTION_DIRS sorted by label, or only `coll`'s; UnknownCollection.

    Collections that share a directory share one Area.
    """
    if collection_dirs is None:
        # COMPAT: without COLLECTION_DIRS every collection is the one store.
        return [Area(".", ())]
    if coll is not None and coll not in collection_dirs:
        raise UnknownCollection("Unknown collection: %r" % (coll,))
    by_dir = {}
    for name, directory in collection_dirs.items():
        by_dir.setdefault(directory, []).append(name)
    return [Area(directory, tuple(sorted(colls))) for directory, colls in sorted(by_dir.items())
            if coll is None or directory == collection_dirs[coll]]


class Listed(NamedTuple):
    """One entry of a Store.scan(): what a listing tells without reading the file."""

    name: str
    size: int
    mtime_ns: int
    md5: Optional[str] = None  # hex MD5 of the content, when the store knows it unread
    link: bool = False  # a symbolic link (a filesystem store): put there by hand
    problem: Optional[str] = None  # why the server can never serve this entry, else None
    # A multipart object's ETag, "<hex MD5 of its parts' MD5s>-<parts>" (md5 is None then).
    multipart_etag: Optional[str] = None


class Unfinished(NamedTuple):
    """Unfinished work in a store (an upload, a render, a lease): what fsck may remove."""

    shown: str  # its name relative to the store, for reports
    what: str  # 'upload', 'render', 'lease' or 'multipart upload'
    changed: float  # epoch seconds of its last change
    handle: object  # what the store's remove_unfinished() needs


class Lease(NamedTuple):
    """A lease taken with Store.try_lease(): `token` tells this holder from the next."""

    key: str
    token: str
    ttl: float


def lease_name(key):
    """Return the file or object name of lease `key` in any store: a hex SHA-256 of it."""
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def lease_body(lease):
    """Return the bytes a store keeps for a Lease (JSON: key, token, ttl)."""
    return json.dumps({"key": lease.key, "token": lease.token, "ttl": lease.ttl}).encode()


def lease_holder(data, default_ttl):
    """Return (token, ttl) of stored lease bytes; (None, default_ttl) if unreadable.

    A lease is unreadable while its taker is still writing it: judge it with the ttl
    the asker would give it.
    """
    try:
        held = json.loads(data.decode("utf-8"))
        return str(held["token"]), float(held["ttl"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return None, default_ttl


def fresh_by_mtime(thumbnail, source):
    """Tell whether a thumbnail (FileInfo) is fresh for its source's: dated no earlier."""
    return thumbnail.mtime_ns >= source.mtime_ns


class ReadOptions(NamedTuple):
    """What an HTTP read asks of a stored file, for a store that answers it itself.

    `range` is one byte range (first, last) as the client wrote it, either bound None when
    absent (bytes=5- is (5, None), bytes=-3 is (None, 3)); None for the whole file. `if_range`
    is the If-Range ETag; `if_none_match` the If-None-Match tags ('*' is one); and
    `if_modified_since` an epoch time, only without `if_none_match`.
    """

    head: bool = False
    range: Optional[Tuple[Optional[int], Optional[int]]] = None
    if_range: Optional[str] = None
    if_none_match: Optional[Tuple[str, ...]] = None
    if_modified_since: Optional[float] = None


class StoredFile:
    """A stored file open for binary reading, with its FileInfo.

    `local_path` is the file's own path when it lives on this machine (so a front
    server may send it: FILE_OFFLOAD), else None. fileno() and tell() reach the
    descriptor, so the built-in server can sendfile(2) it.

    `status` is None when the file is the whole file, for the HTTP layer to answer the
    request's conditionals and Range itself (the local store). A store that passed
    ReadOptions on (S3) sets the answer it got: 200 (the whole file), 206 (the bytes
    `content_range` = (first, last, size) says), 304 (no body) or 416 (no body).
    `on_close`, if given, is called once after the file is closed.
    """

    mode = "rb"

    def __init__(self, handle, info, local_path=None, status=None, content_range=None,
                 on_close=None):
        self.file = handle
        self.info = info
        self.local_path = local_path
        self.status = status
        self.content_range = content_range
        self.on_close = on_close

    size = property(lambda self: self.info.size)
    mtime = property(lambda self: self.info.mtime)
    etag = property(lambda self: self.info.etag)

    def read(self, size=-1):
        """Read up to `size` bytes (all with -1)."""
        return self.file.read(size)

    def seek(self, offset, whence=os.SEEK_SET):
        """Move the read position; return the new one."""
        return self.file.seek(offset, whence)

    def tell(self):
        """Return the read position."""
        return self.file.tell()

    def fileno(self):
        """Return the descriptor (io.UnsupportedOperation where there is none)."""
        return self.file.fileno()

    def close(self):
        """Close the file (then call `on_close`, the first time)."""
        self.file.close()
        on_close, self.on_close = self.on_close, None
        if on_close is not None:
            on_close()

    @property
    def closed(self):
        """Return whether the file is closed."""
        return self.file.closed

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


# Guards each store's set of legacy collection names already logged (see _report_legacy).
_REPORTED_LOCK = threading.Lock()


class Store:
    """The store's interface: files keyed by (collection, name), originals and thumbnails.

    Handlers talk only to this; no path crosses it except local_copy() (for the
    converters and ExifRead) and local_path() (for FILE_OFFLOAD). Every method
    raises UnknownCollection for an unknown collection, UnsafeName for an unsafe
    name and MissingFile for an absent file; OSError for I/O failures. A backend
    implements collections(); check_collection() and resolve_collection() are shared.
    """

    remote = False  # True for a store over the network (a bucket): its outages may pass
    part_size = None  # the part size of the multipart uploads it makes (a bucket), else None

    def prepare(self):
        """Create what the store needs before its first request; OSError if it cannot."""
        raise NotImplementedError

    def problem(self):
        """Return why the store cannot take a new file now (one line), or None if it can."""
        raise NotImplementedError

    def describe(self):
        """Return [(status, line)] for `webassets check`: status is 'ok', 'warn' or 'FAIL'.

        The first row is the store as a whole; a 'FAIL' there ends the list.
        """
        raise NotImplementedError

    def free_space(self):
        """Return (free bytes, total bytes) where new files go, or None if unknown."""
        raise NotImplementedError

    def collections(self):
        """Return the configured collection names, or None if `coll` is ignored (any goes)."""
        raise NotImplementedError

    def check_collection(self, coll):
        """Return None if `coll` is a known collection; UnknownCollection otherwise."""
        self.resolve_collection(coll)

    def resolve_collection(self, coll, lenient=False):
        """Return the collection `coll` names; UnknownCollection if it names none.

        That is `coll` itself when it is configured, or when collections are ignored. With
        `lenient` (only for an upload's `coll`, never a file name), an unknown `coll` holding
        '?' may stand for the one configured name legacy_collection() finds: COMPAT: Specify
        6.8.00 and older send "Colección" as "Colecci?n". An exact name always wins; no match
        or an ambiguous one stays unknown.
        """
        names = self.collections()
        if names is None or coll in names:
            return coll
        match = legacy_collection(coll, names) if lenient and coll is not None else None
        if match is None:
            raise UnknownCollection("Unknown collection: %r" % (coll,))
        self._report_legacy(coll, match)
        return match

    def _report_legacy(self, coll, match):
        """Log at INFO, once per name and store object, that `coll` was taken for `match`."""
        with _REPORTED_LOCK:
            reported = self.__dict__.setdefault("_reported_legacy", set())
            if coll in reported:
                return
            reported.add(coll)  # at most one per configured name: as_us_ascii(match) == coll
        logger.info("Collection %r from an old Specify 6 (US-ASCII) taken as %r", coll, match)

    def stat(self, coll, name, kind=ORIGINAL):
        """Return the FileInfo of a stored file; MissingFile if there is none."""
        raise NotImplementedError

    def open(self, coll, name, kind=ORIGINAL, options=None):
        """Open a stored file for reading: a StoredFile; MissingFile if there is none.

        Without `options` the file is seekable (reading it costs I/O: ExifRead reads a
        remote file in ranges). With ReadOptions, a store may answer them itself (see
        StoredFile.status); with options.head it reads no content.
        """
        raise NotImplementedError

    def stage(self, coll=None, known_coll=False, name=None, expected_size=None):
        """Start receiving an upload: an object with write(data), size and discard().

        `name` is the original's name when it is known already (Specify 6 sends it first);
        `expected_size` an upper bound of its size when known (the request's Content-Length).
        """
        raise NotImplementedError

    def save_original(self, coll, name, staged):
        """Publish a staged upload as the original `name` atomically, replacing any other."""
        raise NotImplementedError

    def save_thumbnail(self, coll, name, local_file, source=None):
        """Publish the rendered local file `local_file` as thumbnail `name` atomically.

        `source` is the FileInfo of the original it was made from: from then on
        thumbnail_is_fresh() holds for that version of the original. No reader ever sees
        half a thumbnail. The caller removes `local_file` if it is still there. Return the
        published thumbnail's FileInfo as open() would give it (None if the store cannot
        tell without asking again): a store without local paths lets the caller serve
        the rendered file with it.
        """
        raise NotImplementedError

    def publish_thumbnail(self, coll, name, local_file, source=None):
        """Start publishing the rendered `local_file` as thumbnail `name`, as save_thumbnail().

        Return (FileInfo to serve the rendered file with now, or None as save_thumbnail()
        gives it; a concurrent.futures.Future that is done once the thumbnail is
        published, with save_thumbnail()'s FileInfo or its error). The caller keeps
        `local_file` until then. This default publishes before it returns (and raises what
        save_thumbnail() raises); a remote store may answer at once and upload meanwhile.
        """
        info = self.save_thumbnail(coll, name, local_file, source)
        done = concurrent.futures.Future()
        done.set_result(info)
        return info, done

    def open_fresh_thumbnail(self, coll, name, thumb_name, options=None):
        """Open thumbnail `thumb_name` (as open()) if it is fresh for the original `name` now.

        Return (StoredFile or None if the thumbnail is absent or stale, the original's
        FileInfo); MissingFile if the original is missing. A remote store overrides it to ask
        for both at once.
        """
        source = self.stat(coll, name)
        if not self.thumbnail_is_fresh(coll, thumb_name, source):
            return None, source
        try:
            return self.open(coll, thumb_name, THUMBNAIL, options), source
        except MissingFile:
            return None, source  # deleted since: make it again

    def thumbnail_is_fresh(self, coll, name, source):
        """Tell whether thumbnail `name` exists and was made from the original `source`.

        `source` is the original's FileInfo now: the one rule of when a cached thumbnail
        may be served.
        """
        raise NotImplementedError

    def delete_thumbnail(self, coll, name):
        """Delete one thumbnail; MissingFile if there is no such thumbnail."""
        raise NotImplementedError

    def delete_original(self, coll, name, is_own_thumbnail):
        """Delete an original and the thumbnails `is_own_thumbnail(thumb_name)` selects.

        Return the names of the removed thumbnails; MissingFile if there is no such original.
        """
        raise NotImplementedError

    def list(self, coll, kind=ORIGINAL):
        """Return the sorted names of `coll`'s stored files of `kind` (no temporary files)."""
        raise NotImplementedError

    def local_copy(self, coll, name, kind=ORIGINAL):
        """Return a context manager yielding a local path holding the file's bytes.

        The path is valid inside the `with` only; MissingFile if there is no such file.
        """
        raise NotImplementedError

    @contextlib.contextmanager
    def local_original(self, coll, name, check=None):
        """Yield (local path, FileInfo) of the original `name`: the version to make thumbnails of.

        The FileInfo is what save_thumbnail() records as the thumbnail's source. `check`, if
        given, is called with the file's first HEAD_BYTES bytes (fewer if it is shorter)
        before the rest is fetched; what it raises stops the fetch and leaves this. The path
        is valid inside the `with` only; MissingFile if there is no such original. A remote
        store overrides it to learn both from one download.
        """
        source = self.stat(coll, name)
        with self.local_copy(coll, name) as path:
            if check is not None:
                with open(path, "rb") as copy:
                    check(copy.read(HEAD_BYTES))
            yield path, source

    def local_path(self, coll, name, kind=ORIGINAL):
        """Return the file's own local path (it may not exist), or None for a remote store."""
        raise NotImplementedError

    def static_name(self, coll, name, kind=ORIGINAL):
        """Return the '/'-separated name under /static that serves this file."""
        raise NotImplementedError

    # -- operating the store (admin, migrate, leases)

    def location(self):
        """Return one line naming where the files live; two stores with one location are one."""
        raise NotImplementedError

    def absent(self):
        """Return why the store is not there at all (one line), or None; creates nothing."""
        raise NotImplementedError

    def areas(self, coll=None):
        """Return the store's Areas sorted by label, or only `coll`'s; UnknownCollection."""
        raise NotImplementedError

    def scan(self, coll, kind=ORIGINAL):
        """Return the Listed entries of `coll`'s files of `kind`, sorted by name.

        Every entry but temporary work, including names the server can never serve (the
        caller check_name()s them); one listing, no request per file.
        """
        return self.survey(coll, kind)[0]

    def survey(self, coll, kind=ORIGINAL):
        """Return (scan()'s Listed entries, sorted temporary names) of `coll`'s files of `kind`.

        Temporary work: uploads being received and thumbnails being rendered, or left by a
        crash. Both come from one listing (stats: one pass per area).
        """
        raise NotImplementedError

    def content_md5(self, coll, name, kind=ORIGINAL):
        """Return the hex MD5 of a stored file if known without reading it, else None."""
        self.stat(coll, name, kind)  # MissingFile, as every method
        return None

    def request_stats(self):
        """Return a remote store's request counters for /metrics, or None (a local store).

        {"requests": {operation: n}, "errors": {code: n}, "seconds": {operation: total}}.
        """
        return None

    def unfinished(self):
        """Return the store's unfinished work (Unfinished): uploads, renders, leases."""
        raise NotImplementedError

    def remove_unfinished(self, item):
        """Remove one Unfinished; already gone is fine. OSError or StorageError if it cannot."""
        raise NotImplementedError

    def try_lease(self, key, ttl):
        """Take the lease `key` for `ttl` seconds: a Lease, or None while another holds it.

        A lease held longer than its ttl (by the store's clock) is taken over. Leases are
        advisory: two holders at once cost duplicate work, never a wrong file.
        """
        raise NotImplementedError

    def renew(self, lease):
        """Hold a Lease for its ttl again from now, if it is still this holder's.

        Return False if it is not (gone, or expired and taken over). The holder renews
        well before it expires: nobody takes over a lease in time.
        """
        raise NotImplementedError

    def release(self, lease):
        """Give a Lease back if it is still this holder's; never raises for one gone."""
        raise NotImplementedError

    def open_static(self, relpath, options=None):
        """Open the file /static/<relpath> names (as open()); UnsafeName if it leaves the store."""
        raise NotImplementedError
