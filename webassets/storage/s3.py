"""The S3 store: originals and thumbnails as objects of a bucket, in the local store's layout."""

import concurrent.futures
import contextlib
import email.utils
import functools
import hashlib
import io
import logging
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
import uuid

from .base import (COPY_CHUNK, HEAD_BYTES, ORIGINAL, TEMP_PREFIXES, TEMP_SUFFIX, THUMBNAIL,
                   UPLOAD_PREFIX, BadUpload, FileInfo, Lease, Listed, MissingFile, Store,
                   StoredFile, StoreFailed, StoreUnavailable, Unfinished, check_name,
                   lease_body, lease_holder, lease_name)
from .filesystem import StagedFile
from .layout import Layout
from .s3client import (DEFAULT_PART_SIZE, InvalidRange, NoSuchKey, PreconditionFailed, S3Error,
                       S3Unavailable)

__all__ = ["S3Store", "RangedReader", "SOURCE_ETAG"]

logger = logging.getLogger(__name__)

# x-amz-meta-<SOURCE_ETAG> on a thumbnail: the ETag of the original it was made from.
SOURCE_ETAG = "source-etag"
READ_AHEAD_MIN = 16 * 1024  # ExifRead's first reads: the JPEG/TIFF header and its segments
READ_AHEAD_MAX = 8 * 1024 * 1024  # a whole-file reader reaches this after ~9 reads
SPOOL_RESERVE = 64 * 1024 * 1024  # free space S3_SPOOL_DIR keeps beyond an upload's size
UPLOAD_THREADS = 4  # parts of a spooled file sent at once (memory: 4 x S3_PART_SIZE)
# Parts of a streamed upload on the wire while the next fills (memory: 3 x S3_PART_SIZE):
# one part at a time leaves the link idle between parts; two keep up with boto3's ten.
UPLOAD_INFLIGHT = 2
POOL_THREADS = 8  # requests sent alongside a request's own (each thread keeps its connection)
LEASE_DIR = ".leases/"  # under the prefix: one object per lease (Store.try_lease)
PROBE = b"webassets check"  # what `check` writes, reads back and deletes
PROBE_TTL = 30.0  # seconds problem() trusts a passing probe (readiness probes come every few)
CLOCK_WARN_SECONDS = 30  # `check` warns about a clock this far off the server's
SUB_PREFIX = "key below a sub-prefix"  # Listed.problem: originals/a/b.jpg is never served
_MD5_ETAG = re.compile(r'"?([0-9a-fA-F]{32})"?\Z')  # a single-part, unencrypted object's ETag
_MULTIPART_ETAG = re.compile(r'"?([0-9a-fA-F]{32}-[1-9][0-9]{0,4})"?\Z')  # MD5 of parts' MD5s


def _translated(error):
    """Return the storage error for a client error (the HTTP layer knows only those)."""
    if isinstance(error, NoSuchKey):
        return MissingFile("File does not exist.")
    if isinstance(error, S3Unavailable):
        return StoreUnavailable("S3 unavailable: %s" % (error,))
    return StoreFailed("S3 %s (%s) on %s: %s" % (error.status, error.code, error.key,
                                                error.message))


def _s3_errors(method):
    """Decorate a method so that client errors leave it as storage errors."""
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except S3Error as ex:
            raise _translated(ex) from ex
    return wrapper


def _info(obj):
    """Return the FileInfo of a client ObjectInfo (S3's ETag, second-precision mtime)."""
    return FileInfo(obj.size or 0, int(round(obj.last_modified * 1e9)), obj.etag)


def _bare(etag):
    """Return an ETag without its quotes (a metadata value)."""
    return (etag or "").strip('"')


def _made_from(thumbnail, source):
    """Tell whether a thumbnail (ObjectInfo) was made from the original `source` (FileInfo).

    The freshness rule of a bucket: the original's ETag the thumbnail was tagged with.
    """
    return (thumbnail.metadata or {}).get(SOURCE_ETAG) == _bare(source.etag)


def _remove(path):
    """Remove a temporary file; never raises (it runs on the pool, where none would see it)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as ex:
        logger.warning("Cannot remove temporary file %s: %s", path, ex)


def _answer(obj, status):
    """Return a bodiless StoredFile (304, 416) of the object `obj`."""
    return StoredFile(io.BytesIO(b""), _info(obj), status=status)


class RangedReader(io.RawIOBase):
    """A seekable read-only view of one object, read with ranged GETs and a read-ahead buffer.

    Random readers (ExifRead) fetch a few KiB; the read-ahead doubles while reads go on
    where the last fetch ended, so reading a whole object takes few requests too.
    `fetched` counts the bytes transferred. NOTE: a replacement of the object while it is
    read shows up as a mix of versions; its readers (EXIF, format sniffing) then fail soft.
    """

    def __init__(self, client, key, size):
        super().__init__()
        self.client = client
        self.key = key
        self.size = size
        self.fetched = 0
        self._pos = 0
        self._buffer = b""
        self._buffer_at = 0
        self._ahead = READ_AHEAD_MIN

    def readable(self):
        return True

    def seekable(self):
        return True

    def tell(self):
        return self._pos

    def seek(self, offset, whence=os.SEEK_SET):
        """Move the read position (no I/O); return it."""
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position %d" % (base + offset))
        self._pos = base + offset
        return self._pos

    def read(self, size=-1):
        """Read up to `size` bytes from the position (all the rest with -1)."""
        end = self.size if size is None or size < 0 else min(self.size, self._pos + size)
        chunks = []
        while self._pos < end:
            offset = self._pos - self._buffer_at
            if not 0 <= offset < len(self._buffer):
                self._fill(end - self._pos)
                offset = 0
            chunk = self._buffer[offset:offset + end - self._pos]
            chunks.append(chunk)
            self._pos += len(chunk)
        return b"".join(chunks)

    def readinto(self, buffer):
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    @_s3_errors
    def _fill(self, wanted):
        """Fetch at least `wanted` bytes from the position into the buffer; StorageError."""
        sequential = self._pos == self._buffer_at + len(self._buffer) and self._buffer
        self._ahead = min(READ_AHEAD_MAX, self._ahead * 2) if sequential else READ_AHEAD_MIN
        last = min(self.size, self._pos + max(wanted, self._ahead)) - 1
        data = self.client.get_bytes(self.key, self._pos, last)
        if not data:
            raise StoreFailed("S3 object %s ended before its size %d" % (self.key, self.size))
        self.fetched += len(data)
        self._buffer, self._buffer_at = data, self._pos


class _Streamed:
    """Read a GET's body (the client's GetResult) with the store's errors.

    A connection lost while reading it is a StoreUnavailable, as every other failure of
    the store.
    """

    def __init__(self, result):
        self.result = result

    @_s3_errors
    def read(self, size=-1):
        return self.result.read(size)

    @_s3_errors
    def readinto(self, buffer):
        return self.result.readinto(buffer)

    def close(self):
        self.result.close()


class S3Upload:
    """An upload streaming into a multipart upload (MultipartWriter) at `key`.

    Nothing is visible at `key` until commit(); discard() aborts what commit() did not
    publish, so a refused, cut-off or failed upload leaves no object and no parts.
    """

    def __init__(self, writer, key, final):
        self.writer = writer
        self.key = key
        self.final = final  # True: `key` is the original's own key (Specify 6's order)
        self.done = False

    @property
    def size(self):
        """Return the bytes written so far."""
        return self.writer.size

    @_s3_errors
    def write(self, data):
        """Append `data` (a part is uploaded each time one is full); StorageError."""
        self.writer.write(data)

    @_s3_errors
    def commit(self):
        """Publish the object at `key`; return its ETag. StorageError."""
        etag = self.writer.commit()
        self.done = True
        return etag

    def discard(self):
        """Abort the multipart upload unless it was committed; never raises."""
        if self.done:
            return
        self.done = True
        try:
            self.writer.abort()
        except (S3Error, OSError) as ex:
            # fsck aborts multipart uploads left behind after its grace period.
            logger.warning("Cannot abort the upload to %s: %s", self.key, ex)


class S3Store(Store):
    """Originals and thumbnails as objects of one bucket under `prefix`.

    Keys mirror the local store: <prefix>[<collection dir>/]originals/<name> and
    .../thumbnails/<thumbnail name> (Layout). Thumbnails carry the ETag of the original they
    were made from (x-amz-meta-source-etag): they are fresh while it is the original's.
    There are no local paths: local_path() is None, so FILE_OFFLOAD sends nothing.
    """

    remote = True

    def __init__(self, client, prefix="", orig_dir="originals", thumb_dir="thumbnails",
                 collection_dirs=None, label=None, part_size=DEFAULT_PART_SIZE, spool_dir=None,
                 clock=time.monotonic):
        self.client = client
        self.prefix = prefix
        self.layout = Layout(orig_dir, thumb_dir, collection_dirs)
        self.collection_dirs = collection_dirs
        self.label = label or "the bucket's prefix %r" % prefix
        self.part_size = part_size
        self.spool_dir = spool_dir  # S3_SPOOL_DIR: where Specify 7's uploads wait for a name
        self._executor = None
        self._pool_lock = threading.Lock()
        self._clock = clock  # monotonic: when problem()'s probe last passed
        self._probe_passed = None
        # Whether this server's ETag of a PUT object is its MD5 (publish_thumbnail); the
        # first answer that says otherwise turns the prediction off.
        self._md5_etags = True

    # -- keys

    def _dir_key(self, coll, kind):
        return self.prefix + self.layout.directory(coll, kind) + "/"

    def key(self, coll, name, kind=ORIGINAL):
        """Return the object key of a stored file; UnsafeName, UnknownCollection."""
        return self._dir_key(coll, kind) + check_name(name)

    def _spool_has_room(self, expected_size):
        """Tell whether spool_dir can take an upload of `expected_size` bytes (None: unknown)."""
        if expected_size is None:
            return True  # a full disk answers 507, as the local store does
        try:
            free = shutil.disk_usage(self.spool_dir).free
        except OSError as ex:
            logger.warning("Cannot read the free space of S3_SPOOL_DIR %s: %s", self.spool_dir, ex)
            return False
        return free >= expected_size + SPOOL_RESERVE

    def _writer(self, key):
        return self.client.writer(key, part_size=self.part_size, inflight=UPLOAD_INFLIGHT)

    # -- health

    def prepare(self):
        """Nothing to create: the bucket exists (problem() says if it does not)."""

    def _probe_key(self):
        return "%s%sprobe-%s%s" % (self.prefix, UPLOAD_PREFIX, uuid.uuid4().hex, TEMP_SUFFIX)

    @_s3_errors
    def _probe(self):
        key = self._probe_key()
        self.client.put(key, b"")
        self.client.delete(key)

    def problem(self):
        """Return why an object cannot be written and deleted under the prefix, or None.

        A passing probe (a PUT and a DELETE) is trusted for PROBE_TTL seconds, so readiness
        probes every second cost one write per PROBE_TTL; a failure is never remembered.
        """
        passed = self._probe_passed
        if passed is not None and 0 <= self._clock() - passed < PROBE_TTL:
            return None
        try:
            self._probe()
        except (StoreFailed, StoreUnavailable, MissingFile) as ex:
            self._probe_passed = None
            return "cannot write to %s: %s" % (self.label, ex)
        self._probe_passed = self._clock()
        return None

    def describe(self):
        """Return [(status, line)]: write, read, conditional write and delete of a probe object,
        the clock offset, then where each collection's files go.
        """
        key = self._probe_key()
        try:
            self.client.put(key, PROBE)
        except S3Error as ex:
            return [("FAIL", "%s: cannot write an object: %s" % (self.location(), _translated(ex)))]
        rows = [("ok", "%s: an object was written" % self.location())]
        try:
            rows.append(self._read_row(key))
            rows.append(self._conditional_row(key))
        finally:
            rows.append(self._delete_row(key))
        offset = self.client.clock_offset
        rows.append(("ok" if abs(offset) <= CLOCK_WARN_SECONDS else "warn",
                     "clock offset to the S3 server: %+.0f s%s" % (offset, (
                         "" if abs(offset) <= CLOCK_WARN_SECONDS else
                         ": set this machine's clock (NTP); tokens are judged by it"))))
        for area in self.areas():
            names = " (%s)" % ", ".join(area.colls) if area.colls else ""
            rows.append(("ok", "%s%s and %s%s" % (self._dir_key(area.coll, ORIGINAL), names,
                                                  self._dir_key(area.coll, THUMBNAIL), names)))
        return rows

    def _read_row(self, key):
        try:
            same = self.client.get_bytes(key, 0, len(PROBE) - 1) == PROBE
        except S3Error as ex:
            return ("FAIL", "cannot read the object back: %s" % _translated(ex))
        return ("ok", "it was read back") if same else ("FAIL", "it reads back other bytes")

    def _conditional_row(self, key):
        try:
            self.client.put(key, b"", if_none_match_star=True)
        except PreconditionFailed:
            return ("ok", "conditional writes (If-None-Match: *) work: THUMBNAIL_LEASES may be on")
        except S3Error as ex:
            return ("warn", "conditional writes (If-None-Match: *) fail: %s" % _translated(ex))
        # NOTE: leases are advisory, so this costs duplicate conversions, never wrong files.
        return ("warn", "the server ignores conditional writes (If-None-Match: *): with "
                        "THUMBNAIL_LEASES instances may still convert one thumbnail twice")

    def _delete_row(self, key):
        try:
            self.client.delete(key)
            self.client.head(key)
        except NoSuchKey:
            return ("ok", "it was deleted")
        except S3Error as ex:
            return ("FAIL", "cannot delete the object %s: %s" % (key, _translated(ex)))
        return ("FAIL", "the object %s is still there after its delete" % key)

    def free_space(self):
        """Return None: a bucket has no free space to report."""
        return None

    def areas(self, coll=None):
        """Return the collection directories (Area); UnknownCollection."""
        return self.layout.areas(coll)

    def collections(self):
        """Return the COLLECTION_DIRS names, or None if `coll` is ignored (no COLLECTION_DIRS)."""
        return self.layout.collections()

    # -- reading

    @_s3_errors
    def stat(self, coll, name, kind=ORIGINAL):
        """Return the FileInfo of a stored file (one HEAD); MissingFile if there is none."""
        return _info(self.client.head(self.key(coll, name, kind)))

    def open(self, coll, name, kind=ORIGINAL, options=None):
        """Open a stored file: ranged reads without `options`, else one GET answering them.

        MissingFile if there is none.
        """
        return self._open_key(self.key(coll, name, kind), options)

    def open_static(self, relpath, options=None):
        """Open the object a /static/<relpath> names under the prefix; UnsafeName, MissingFile.

        SECURITY: as the local store: every component one safe name (no '..', no
        temporary or hidden names such as .upload-*), so nothing outside the prefix.
        """
        parts = relpath.split("/")
        for part in parts:
            check_name(part, "path component")
        return self._open_key(self.prefix + "/".join(parts), options)

    def _open_key(self, key, options):
        return self._open_object(key, options)[0]

    @_s3_errors
    def _open_object(self, key, options):
        """Return (StoredFile, the client's ObjectInfo or None) of `key` opened for `options`."""
        if options is None:
            obj = self.client.head(key)
            return StoredFile(RangedReader(self.client, key, obj.size), _info(obj)), obj
        if options.head:
            # HEAD: the HTTP layer answers the conditionals from the HEAD's headers.
            obj = self.client.head(key)
            return StoredFile(io.BytesIO(b""), _info(obj)), obj
        return self._get(key, options)

    def _get(self, key, options):
        """Answer a GET's conditionals and Range with one GET of the object (see ReadOptions).

        Return (StoredFile, ObjectInfo or None).
        """
        tags = options.if_none_match
        if options.range == (None, 0) or tags == ("*",):
            # bytes=-0 is unsatisfiable, and '*' matches any existing object: no GET needed.
            obj = self.client.head(key)
            return _answer(obj, 416 if options.range else 304), obj
        since = options.if_modified_since
        kwargs = {"if_none_match": tags[0] if tags is not None and len(tags) == 1 else None,
                  "if_modified_since": None if since is None
                  else email.utils.formatdate(since, usegmt=True)}
        byte_range = None
        if options.range is not None:
            first, last = options.range
            byte_range = "bytes=%s-%s" % ("" if first is None else first,
                                          "" if last is None else last)
        try:
            result = self.client.get(key, range=byte_range, **kwargs)
        except InvalidRange as ex:
            if getattr(ex, "size", None) is not None:
                return StoredFile(io.BytesIO(b""), FileInfo(ex.size, 0), status=416), None
            obj = self.client.head(key)
            return _answer(obj, 416), obj
        if (result.status == 206 and options.if_range is not None
                and options.if_range != result.info.etag):
            # If-Range names another version: the whole current file instead.
            result.close()
            result = self.client.get(key, **kwargs)
        if result.status != 304 and tags is not None and result.info.etag in tags:
            # NOTE: several tags are matched here, after one GET; S3 servers take one.
            result.close()
            return _answer(result.info, 304), result.info
        if result.status == 304:
            result.close()
            # SeaweedFS and moto send no Last-Modified with a 304; the local store does.
            obj = result.info if result.info.last_modified is not None else self.client.head(key)
            return _answer(obj, 304), obj
        return StoredFile(_Streamed(result), _info(result.info), status=result.status,
                          content_range=result.content_range), result.info

    @_s3_errors
    def open_fresh_thumbnail(self, coll, name, thumb_name, options=None):
        """Open thumbnail `thumb_name` if it was made from the original `name` as it is now.

        One round trip: the original's HEAD (on a thread of the pool) and the thumbnail's
        GET go out together. Return (StoredFile or None if the thumbnail is absent or stale,
        the original's FileInfo); MissingFile if the original is missing.
        """
        source = self._pool().submit(self.client.head, self.key(coll, name))
        try:
            thumbnail, obj = self._open_object(self.key(coll, thumb_name, THUMBNAIL), options)
        except MissingFile:
            thumbnail = obj = None
        try:
            original = _info(source.result())
        except BaseException:
            if thumbnail is not None:
                thumbnail.close()
            raise
        if thumbnail is None:
            return None, original
        if obj is None or SOURCE_ETAG not in (obj.metadata or {}):
            # A 304 or 416 may come without the x-amz-meta headers.
            obj = self.client.head(self.key(coll, thumb_name, THUMBNAIL))
        if not _made_from(obj, original):
            thumbnail.close()
            return None, original
        return thumbnail, original

    def _pool(self):
        """Return the threads that send a request alongside another one.

        Made on first use, so after the built-in server has forked its workers.
        """
        with self._pool_lock:
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    POOL_THREADS, thread_name_prefix="s3store")
            return self._executor

    @contextlib.contextmanager
    def local_copy(self, coll, name, kind=ORIGINAL):
        """Yield the path of a temporary file holding the object (streamed); MissingFile."""
        with self._downloaded(self.key(coll, name, kind)) as (path, _):
            yield path

    @contextlib.contextmanager
    def local_original(self, coll, name, check=None):
        """Yield (temporary local path, FileInfo) of the original from one GET (see Store).

        The FileInfo (its ETag) is the GET's own: exactly the version of the bytes fetched.
        """
        with self._downloaded(self.key(coll, name), check) as fetched:
            yield fetched

    @contextlib.contextmanager
    def _downloaded(self, key, check=None):
        """Yield (path, FileInfo) of a temporary file holding the object; MissingFile.

        The file is removed on a thread of the pool: freeing a large file's pages takes
        most of a millisecond that the caller's answer need not wait for.
        """
        fd, path = tempfile.mkstemp(prefix="webassets-s3-copy-")
        try:
            with os.fdopen(fd, "wb") as copy:
                info = self._download(key, copy, check)
            yield path, info
        finally:
            self._pool().submit(_remove, path)

    @_s3_errors
    def _download(self, key, target, check=None):
        """Stream the object into `target`; return its FileInfo. `check` sees its head first."""
        with self.client.get(key) as result:
            if check is not None:
                # Whatever check() raises closes the GET with most of the object unread.
                head = result.read(HEAD_BYTES)  # (http.client reads all of it, or to the end)
                check(head)
                target.write(head)
            buffer = bytearray(COPY_CHUNK)  # one buffer for the whole object, no copies
            view = memoryview(buffer)
            count = result.readinto(buffer)
            while count:
                target.write(view[:count])
                count = result.readinto(buffer)
            return _info(result.info)

    def local_path(self, coll, name, kind=ORIGINAL):
        """Return None: objects have no local path (FILE_OFFLOAD has nothing to hand over)."""
        return None

    def static_name(self, coll, name, kind=ORIGINAL):
        """Return the file's key relative to the prefix (for /static URLs)."""
        return self.key(coll, name, kind)[len(self.prefix):]

    # -- writing

    def stage(self, coll=None, known_coll=False, name=None, expected_size=None):
        """Start an upload: straight to the original's key when `name` is known (Specify 6).

        Else (Specify 7 sends the file before the name): into a file of `spool_dir` when
        there is one with room for `expected_size` and SPOOL_RESERVE more (save_original
        uploads it to its key); otherwise to a temporary key, beside the originals when the
        collection is known, else under the prefix (save_original copies it onto its key).
        UnknownCollection, UnsafeName; OSError if the spool file cannot be made.
        """
        if name is not None:
            key = self.key(coll, name, ORIGINAL)
            return S3Upload(self._writer(key), key, final=True)
        if self.spool_dir is not None and self._spool_has_room(expected_size):
            return StagedFile(self.spool_dir)
        directory = (self._dir_key(coll, ORIGINAL)
                     if self.collection_dirs is None or known_coll else self.prefix)
        key = "%s%s%s%s" % (directory, UPLOAD_PREFIX, uuid.uuid4().hex, TEMP_SUFFIX)
        return S3Upload(self._writer(key), key, final=False)

    @_s3_errors
    def save_original(self, coll, name, staged):
        """Publish a staged upload as the original `name`, replacing any previous version.

        The object appears whole or not at all. BadUpload if it was streamed to another
        name's key (the name changed after the file part).
        """
        key = self.key(coll, name, ORIGINAL)
        if isinstance(staged, StagedFile):
            staged.file.flush()
            # Parts go up in parallel, read at their offsets (the upload aborts on errors).
            self.client.upload_file(key, staged.path, part_size=self.part_size,
                                    threads=UPLOAD_THREADS)
            return  # the caller's discard() removes the spool file
        if staged.final and staged.key != key:
            raise BadUpload("the store name changed after the file part")
        staged.commit()
        if staged.key == key:
            return
        try:
            self.client.copy(staged.key, key)  # on the server: no byte passes through here
        finally:
            self.client.delete(staged.key)

    @_s3_errors
    def save_thumbnail(self, coll, name, local_file, source=None):
        """Upload the rendered `local_file` as thumbnail `name`, tagged with `source`'s ETag.

        Return its FileInfo from the PUT's answer (None if the server sent no Date): the
        ETag a later GET gives, and the answer's Date as its mtime. NOTE: the object's
        Last-Modified may be a second earlier than that Date; a response dated from this
        FileInfo is still right where it counts: clients revalidate with the ETag
        (If-None-Match, which wins over If-Modified-Since), and one asking with the
        off-by-one date at worst gets the whole (small) thumbnail once more.
        """
        metadata = {SOURCE_ETAG: _bare(source.etag)} if source is not None else None
        with open(local_file, "rb") as rendered:
            obj = self.client.put_info(self.key(coll, name, THUMBNAIL), rendered,
                                       metadata=metadata)
        return None if obj.last_modified is None else _info(obj)

    def publish_thumbnail(self, coll, name, local_file, source=None):
        """Start uploading thumbnail `name` on a thread; return (predicted FileInfo, Future).

        The rendered file can be served while it goes up: its FileInfo is predicted, the
        ETag as the MD5 of its bytes (what S3 and its kin give an object PUT whole,
        unencrypted), the mtime as the server's clock now. NOTE: a wrong guess costs a
        client at most one more download of a small file (its If-None-Match or
        If-Modified-Since misses); the first answer that shows ETags are not MD5s here
        turns the guess off, and then this publishes before it returns, as save_thumbnail.
        The Future gives save_thumbnail()'s FileInfo, or its StorageError.
        """
        if not self._md5_etags:
            return super().publish_thumbnail(coll, name, local_file, source)
        digest, size = hashlib.md5(), 0
        with open(local_file, "rb") as rendered:
            for chunk in iter(lambda: rendered.read(COPY_CHUNK), b""):
                digest.update(chunk)
                size += len(chunk)
        etag = digest.hexdigest()
        now = self.client.clock() + self.client.clock_offset
        predicted = FileInfo(size, int(now) * 1000000000, '"%s"' % etag)

        def upload():
            info = self.save_thumbnail(coll, name, local_file, source)
            if info is not None and _bare(info.etag) != etag and self._md5_etags:
                self._md5_etags = False
                logger.info("This S3 server's ETags are not MD5s (%s answered %s): "
                            "thumbnails are served once they are uploaded",
                            self.label, info.etag or "no ETag")
            return info

        return predicted, self._pool().submit(upload)

    @_s3_errors
    def thumbnail_is_fresh(self, coll, name, source):
        """Tell whether thumbnail `name` exists and was made from this version of the original."""
        try:
            thumbnail = self.client.head(self.key(coll, name, THUMBNAIL))
        except NoSuchKey:
            return False
        return _made_from(thumbnail, source)

    @_s3_errors
    def delete_thumbnail(self, coll, name):
        """Delete one thumbnail; MissingFile if there is no such thumbnail."""
        key = self.key(coll, name, THUMBNAIL)
        self.client.head(key)  # NoSuchKey -> MissingFile: S3's DELETE cannot tell
        self.client.delete(key)

    @_s3_errors
    def delete_original(self, coll, name, is_own_thumbnail):
        """Delete an original and the thumbnails `is_own_thumbnail(thumb_name)` selects.

        Return the names of the removed thumbnails; MissingFile if there is no such original.
        Only thumbnails whose names start with the original's stem are listed (every
        thumbnail name does, thumbnails.thumbnail_name); each is deleted by its own key.
        """
        key = self.key(coll, name, ORIGINAL)
        self.client.head(key)
        self.client.delete(key)
        directory = self._dir_key(coll, THUMBNAIL)
        stem = os.path.splitext(name)[0]
        removed = []
        for thumb_name in self._names(directory + stem, directory):
            if is_own_thumbnail(thumb_name):
                self.client.delete(directory + thumb_name)
                removed.append(thumb_name)
        return removed

    # -- listing

    def _names(self, prefix, directory):
        """Yield the names of the objects directly in `directory` whose keys start with `prefix`."""
        for obj in self.client.list(prefix):
            name = obj.key[len(directory):]
            if "/" not in name:
                yield name

    @_s3_errors
    def list(self, coll, kind=ORIGINAL):
        """Return the sorted names of `coll`'s objects of `kind` (temporary ones excluded)."""
        directory = self._dir_key(coll, kind)
        return sorted(name for name in self._names(directory, directory)
                      if not name.startswith("."))

    # -- operating the bucket: admin, migrate, leases

    def location(self):
        """Return the bucket and prefix, and the endpoint they are on."""
        endpoint = getattr(getattr(self.client, "config", None), "endpoint", None)
        return "%s at %s" % (self.label, endpoint) if endpoint else self.label

    def absent(self):
        """Return why the bucket cannot be listed (missing, refused, unreachable), or None."""
        try:
            next(iter(self.client.list(self.prefix, page_size=1)), None)
        except S3Error as ex:
            return "%s cannot be listed: %s" % (self.label, _translated(ex))
        return None

    @_s3_errors
    def survey(self, coll, kind=ORIGINAL):
        """Return (scan(), the temporary objects' names) of `coll`'s `kind` from one listing.

        md5 is the ETag of a single-part object, multipart_etag that of a multipart one; a
        key below a further '/' is never served. The temporary objects are Specify 7
        uploads; multipart uploads in progress are not objects (fsck lists them apart).
        """
        directory = self._dir_key(coll, kind)
        found, temporary = [], []
        for obj in self.client.list(directory):
            name = obj.key[len(directory):]
            if name.startswith(TEMP_PREFIXES):
                if "/" not in name:
                    temporary.append(name)
                continue
            match = _MD5_ETAG.match(obj.etag or "")
            parts = _MULTIPART_ETAG.match(obj.etag or "")
            # Whole seconds, as stat() has them from Last-Modified (a listing may have ms).
            found.append(Listed(name, obj.size or 0, int(obj.last_modified) * 10 ** 9,
                                match.group(1).lower() if match else None, False,
                                SUB_PREFIX if "/" in name else None,
                                parts.group(1).lower() if parts else None))
        return sorted(found), sorted(temporary)

    @_s3_errors
    def content_md5(self, coll, name, kind=ORIGINAL):
        """Return the MD5 a single-part object's ETag is, else None; MissingFile."""
        match = _MD5_ETAG.match(self.client.head(self.key(coll, name, kind)).etag or "")
        return match.group(1).lower() if match else None

    def request_stats(self):
        """Return the client's request counters (requests, errors, seconds)."""
        return self.client.stats.snapshot()

    @_s3_errors
    def unfinished(self):
        """Return unfinished multipart uploads, temporary objects and leases under the prefix."""
        found = [Unfinished("%s (upload %s)" % (key[len(self.prefix):], upload_id[:8]),
                            "multipart upload", initiated, ("multipart", key, upload_id))
                 for key, upload_id, initiated in self.client.list_multipart_uploads(self.prefix)]
        directories = [self.prefix] + [self._dir_key(area.coll, kind) for area in self.areas()
                                       for kind in (ORIGINAL, THUMBNAIL)]
        for directory in sorted(set(directories)):
            for temp_prefix in TEMP_PREFIXES:
                found.extend(Unfinished(obj.key[len(self.prefix):],
                                        "upload" if temp_prefix == UPLOAD_PREFIX else "render",
                                        obj.last_modified, ("object", obj.key))
                             for obj in self.client.list(directory + temp_prefix))
        found.extend(Unfinished(obj.key[len(self.prefix):], "lease", obj.last_modified,
                                ("object", obj.key))
                     for obj in self.client.list(self.prefix + LEASE_DIR))
        return found

    @_s3_errors
    def remove_unfinished(self, item):
        """Abort a multipart upload or delete a temporary object or lease; gone is fine."""
        if item.handle[0] == "multipart":
            self.client.abort_multipart(item.handle[1], item.handle[2])
        else:
            self.client.delete(item.handle[1])

    @_s3_errors
    def try_lease(self, key, ttl):
        """Take lease `key` as <prefix>.leases/<hash>, written with If-None-Match: *."""
        lease_key = self.prefix + LEASE_DIR + lease_name(key)
        lease = Lease(key, secrets.token_hex(16), ttl)
        for attempt in range(2):
            try:
                self.client.put(lease_key, lease_body(lease), content_type="application/json",
                                if_none_match_star=True)
                return lease
            except PreconditionFailed:
                if attempt or not self._take_over(lease_key, ttl):
                    return None
        return None

    def _take_over(self, lease_key, ttl):
        """Delete an expired lease object; True if the caller may try its PUT again.

        Judged by the server's clock (Last-Modified against local time + clock_offset).
        NOTE: two takers may delete and write in turn and both hold it: leases are advisory.
        """
        try:
            with self.client.get(lease_key) as result:
                data, taken = result.read(), result.info.last_modified
        except NoSuchKey:
            return True  # released meanwhile
        held_ttl = lease_holder(data, ttl)[1]
        # NOTE: Last-Modified and Date (clock_offset) have whole seconds: a lease may end
        # up to a second early, never late.
        if time.time() + self.client.clock_offset + 1 < taken + held_ttl:
            return False
        self.client.delete(lease_key)
        return True

    def _holds(self, lease):
        """Return the lease object's key if it holds `lease`'s token, else None."""
        lease_key = self.prefix + LEASE_DIR + lease_name(lease.key)
        try:
            with self.client.get(lease_key) as result:
                data = result.read()
        except NoSuchKey:
            return None
        return lease_key if lease_holder(data, lease.ttl)[0] == lease.token else None

    @_s3_errors
    def renew(self, lease):
        """Write the lease object again (a new Last-Modified) if it still holds `lease`'s token.

        NOTE: no conditional write here: the holder renews long before the lease expires,
        and nobody takes over an unexpired lease.
        """
        lease_key = self._holds(lease)
        if lease_key is None:
            return False
        self.client.put(lease_key, lease_body(lease), content_type="application/json")
        return True

    @_s3_errors
    def release(self, lease):
        """Delete the lease object if it still holds `lease`'s token."""
        lease_key = self._holds(lease)
        if lease_key is not None:
            self.client.delete(lease_key)
