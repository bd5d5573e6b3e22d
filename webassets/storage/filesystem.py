"""The filesystem store: originals and thumbnails under BASE_DIR, in the reference's layout."""

import contextlib
import errno
import logging
import os
import secrets
import shutil
import stat
import tempfile
import time

from .base import (ORIGINAL, THUMBNAIL, COPY_CHUNK, UPLOAD_PREFIX, TEMP_SUFFIX, TEMP_PREFIXES,
                   NOT_A_FILE, FileInfo, Lease, Listed, MissingFile, Store, StoredFile,
                   Unfinished, UnsafeName, check_name, fresh_by_mtime, lease_body, lease_holder,
                   lease_name)
from .layout import Layout

logger = logging.getLogger(__name__)


def _process_umask():
    """Return the process's umask (read by setting it, so call it before threads start)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# Stored files get open()'s mode (0666 less the umask), not mkstemp's private 0600:
# with FILE_OFFLOAD the front server reads them as another user, through the group
# (the systemd unit's UMask=0027 makes them 0640).
FILE_MODE = 0o666 & ~_process_umask()


def open_local(path):
    """Open a local regular file as a StoredFile; MissingFile if absent or not a file."""
    try:
        handle = open(path, "rb")
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        raise MissingFile("File does not exist.") from None
    info = os.fstat(handle.fileno())  # the file opened, not the path
    if not stat.S_ISREG(info.st_mode):
        handle.close()
        raise MissingFile("File does not exist.")
    return StoredFile(handle, FileInfo.from_stat(info), os.path.abspath(path))


def _directory_row(directory, names):
    """Return (status, line): can this user write into `directory`, or create it?"""
    if os.path.isdir(directory):
        writable = os.access(directory, os.W_OK | os.X_OK)
        return ("ok" if writable else "FAIL", "%s%s %s" % (
            directory, names, "is writable" if writable else "is NOT writable by this user"))
    parent = directory
    while not os.path.isdir(parent):
        parent = os.path.dirname(parent)
    creatable = os.access(parent, os.W_OK | os.X_OK)
    return ("ok" if creatable else "FAIL", "%s%s %s" % (
        directory, names, "not created yet (made on first use)" if creatable
        else "is missing and %s is not writable" % parent))


def _fsync_dir(path):
    """Flush a directory entry so a rename survives a crash (best effort)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # NOTE: some filesystems refuse fsync on directories; the rename still happened.
    finally:
        os.close(fd)


LEASE_DIR = ".leases"  # under BASE_DIR: one file per lease (Store.try_lease)


def _listed(entry):
    """Return the Listed of a directory entry, or None if it went meanwhile."""
    link = entry.is_symlink()
    try:
        info = entry.stat()
    except FileNotFoundError:
        if not link:
            return None  # removed meanwhile
        info = None  # a dangling link
    except OSError:
        info = None  # a loop of links, or no permission
    if info is None or not stat.S_ISREG(info.st_mode):
        return Listed(entry.name, 0, 0, None, link, NOT_A_FILE)
    return Listed(entry.name, info.st_size, info.st_mtime_ns, None, link, None)


def _newest_change(path):
    """Return the epoch seconds of the last change to `path` or, for a directory, in it."""
    newest = os.lstat(path).st_mtime
    if stat.S_ISDIR(os.lstat(path).st_mode):
        with os.scandir(path) as entries:
            for entry in entries:
                try:
                    newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
                except FileNotFoundError:
                    pass
    return newest


def _what(name):
    """Return what unfinished work a temporary file name stands for."""
    return "upload" if name.startswith(UPLOAD_PREFIX) else "render"


class StagedFile:
    """An upload being written to a temporary file; commit() publishes it atomically."""

    def __init__(self, directory):
        os.makedirs(directory, exist_ok=True)
        fd, self.path = tempfile.mkstemp(prefix=UPLOAD_PREFIX, suffix=TEMP_SUFFIX, dir=directory)
        self.file = os.fdopen(fd, "wb")
        os.fchmod(fd, FILE_MODE)
        self.size = 0

    def write(self, data):
        """Append `data`; an OSError (e.g. disk full) propagates to the caller."""
        self.file.write(data)
        self.size += len(data)

    def commit(self, target):
        """Flush, fsync and os.replace the temp file onto `target`."""
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        target_dir = os.path.dirname(target)
        os.makedirs(target_dir, exist_ok=True)
        try:
            os.replace(self.path, target)
        except OSError as ex:
            if ex.errno != errno.EXDEV:
                raise
            # The staging area is on another filesystem: copy next to the target first.
            self._copy_across(target)
        _fsync_dir(target_dir)

    def _copy_across(self, target):
        staged = StagedFile(os.path.dirname(target))
        try:
            with open(self.path, "rb") as source:
                shutil.copyfileobj(source, staged.file, COPY_CHUNK)
            staged.commit(target)
        finally:
            staged.discard()
            os.unlink(self.path)

    def discard(self):
        """Remove the temp file if it still exists; never raises."""
        if not self.file.closed:
            self.file.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        except OSError as ex:
            logger.warning("Cannot remove temporary file %s: %s", self.path, ex)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.discard()


class FileStore(Store):
    """Originals and thumbnails under BASE_DIR, one directory pair per collection dir.

    The layout is the reference's: BASE_DIR/[COLLECTION_DIRS[coll]/]originals/<name>
    and .../thumbnails/<thumbnail name>, so an existing store keeps working.
    """

    def __init__(self, base_dir, orig_dir="originals", thumb_dir="thumbnails", collection_dirs=None):
        self.base_dir = os.path.abspath(base_dir)
        self.orig_dir = orig_dir
        self.thumb_dir = thumb_dir
        self.collection_dirs = collection_dirs
        self.layout = Layout(orig_dir, thumb_dir, collection_dirs)

    def _local(self, relative):
        """Return the local path of a Layout directory (relative, '/'-separated)."""
        return os.path.join(self.base_dir, *relative.split("/"))

    def _directory(self, coll, kind):
        """Return the local directory of `coll`'s files of `kind`; UnknownCollection."""
        return self._local(self.layout.directory(coll, kind))

    def _path(self, coll, name, kind):
        return os.path.join(self._directory(coll, kind), check_name(name))

    def _relative(self, path):
        """Return `path` relative to BASE_DIR, with '/' separators (for /static URLs)."""
        return os.path.relpath(path, self.base_dir).replace(os.sep, "/")

    def prepare(self):
        """Create BASE_DIR if it is missing; OSError if it cannot be."""
        os.makedirs(self.base_dir, exist_ok=True)

    def problem(self):
        """Return why a file cannot be created in BASE_DIR, or None if it can.

        Nothing is created if BASE_DIR is missing: an unmounted volume must not look ready.
        """
        if not os.path.isdir(self.base_dir):
            return "BASE_DIR does not exist or is not a directory"
        try:
            # The upload prefix: if we die before the unlink, fsck removes the leftover.
            fd, path = tempfile.mkstemp(prefix=UPLOAD_PREFIX, suffix=TEMP_SUFFIX,
                                        dir=self.base_dir)
        except OSError as ex:
            return "cannot create a file in BASE_DIR: %s" % (ex.strerror or ex)
        os.close(fd)
        try:
            os.unlink(path)
        except OSError as ex:
            return "cannot remove a file from BASE_DIR: %s" % (ex.strerror or ex)
        return None

    def describe(self):
        """Return [(status, line)]: BASE_DIR writable, then each collection directory."""
        problem = self.problem()
        if problem:
            return [("FAIL", "BASE_DIR %s: %s" % (self.base_dir, problem))]
        rows = [("ok", "BASE_DIR %s is writable" % self.base_dir)]
        for area in self.areas():
            names = " (%s)" % ", ".join(area.colls) if area.colls else ""
            rows.extend(_directory_row(self._directory(area.coll, kind), names)
                        for kind in (ORIGINAL, THUMBNAIL))
        return rows

    def free_space(self):
        """Return (free bytes, total bytes) of BASE_DIR's filesystem."""
        usage = shutil.disk_usage(self.base_dir)
        return usage.free, usage.total

    def location(self):
        """Return BASE_DIR (absolute)."""
        return self.base_dir

    def absent(self):
        """Return why BASE_DIR is not there (never created here), or None."""
        if os.path.isdir(self.base_dir):
            return None
        return "BASE_DIR %s does not exist (is the volume mounted?)" % self.base_dir

    def areas(self, coll=None):
        """Return the collection directories (Area), or only `coll`'s; UnknownCollection."""
        return self.layout.areas(coll)

    def collections(self):
        """Return the COLLECTION_DIRS names, or None if `coll` is ignored (no COLLECTION_DIRS)."""
        return self.layout.collections()

    def stat(self, coll, name, kind=ORIGINAL):
        """Return the FileInfo of a stored file; MissingFile if there is none."""
        try:
            return FileInfo.from_stat(os.stat(self._path(coll, name, kind)))
        except (FileNotFoundError, NotADirectoryError):
            raise MissingFile("File does not exist.") from None

    def open(self, coll, name, kind=ORIGINAL, options=None):
        """Open a stored file for reading: the whole file (the HTTP layer applies `options`).

        MissingFile if there is none.
        """
        return open_local(self._path(coll, name, kind))

    @contextlib.contextmanager
    def local_copy(self, coll, name, kind=ORIGINAL):
        """Yield the file's own path: it is already local. MissingFile if there is none."""
        path = self._path(coll, name, kind)
        self.stat(coll, name, kind)
        yield path

    def local_path(self, coll, name, kind=ORIGINAL):
        """Return the file's own path (it may not exist)."""
        return self._path(coll, name, kind)

    def static_name(self, coll, name, kind=ORIGINAL):
        """Return the file's path relative to BASE_DIR, '/'-separated (for /static URLs)."""
        return self._relative(self._path(coll, name, kind))

    def open_static(self, relpath, options=None):
        """Open the file a /static/<relpath> names (as open()); UnsafeName, MissingFile."""
        return open_local(self.static_path(relpath))

    def stage(self, coll=None, known_coll=False, name=None, expected_size=None):
        """Start an upload: a StagedFile in the target directory when it is known.

        With COLLECTION_DIRS set and the collection not yet known (Specify 7
        sends the file before `coll`), stage in BASE_DIR on the same disk.
        """
        if self.collection_dirs is None or known_coll:
            directory = self._directory(coll, ORIGINAL)
        else:
            directory = self.base_dir
        return StagedFile(directory)

    def save_original(self, coll, name, staged):
        """Publish a StagedFile as the original `name`, replacing any previous version."""
        staged.commit(self._path(coll, name, ORIGINAL))

    def save_thumbnail(self, coll, name, local_file, source=None):
        """Rename `local_file` onto thumbnail `name` (a copy first if on another filesystem).

        The renderer dated `local_file` no earlier than `source`, which makes it fresh.
        Return its FileInfo (a rename and the copy keep its size and mtime).
        """
        target = self._path(coll, name, THUMBNAIL)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        info = FileInfo.from_stat(os.stat(local_file))
        try:
            os.replace(local_file, target)
        except OSError as ex:
            if ex.errno != errno.EXDEV:
                raise
            with StagedFile(os.path.dirname(target)) as staged, open(local_file, "rb") as source:
                shutil.copyfileobj(source, staged.file, COPY_CHUNK)
                staged.file.flush()
                mtime_ns = os.stat(local_file).st_mtime_ns
                os.utime(staged.path, ns=(mtime_ns, mtime_ns))
                staged.commit(target)
        return info

    def thumbnail_is_fresh(self, coll, name, source):
        """Tell whether thumbnail `name` exists and is dated no earlier than `source`."""
        try:
            return fresh_by_mtime(self.stat(coll, name, THUMBNAIL), source)
        except MissingFile:
            return False

    def delete_thumbnail(self, coll, name):
        """Delete one thumbnail; MissingFile if there is no such thumbnail."""
        try:
            os.unlink(self._path(coll, name, THUMBNAIL))
        except (FileNotFoundError, NotADirectoryError):
            raise MissingFile("File does not exist.") from None

    def delete_original(self, coll, name, is_own_thumbnail):
        """Delete an original and the thumbnails `is_own_thumbnail(thumb_name)` selects.

        Returns the names of the removed thumbnails. MissingFile if there is
        no such original.
        """
        path = self._path(coll, name, ORIGINAL)
        try:
            os.unlink(path)
        except (FileNotFoundError, NotADirectoryError):
            raise MissingFile("File does not exist.") from None
        removed = []
        for thumb_name in self.list(coll, THUMBNAIL):
            if is_own_thumbnail(thumb_name):
                try:
                    os.unlink(os.path.join(self._directory(coll, THUMBNAIL), thumb_name))
                    removed.append(thumb_name)
                except FileNotFoundError:
                    pass  # a concurrent delete got there first
        return removed

    def _list(self, directory):
        try:
            with os.scandir(directory) as entries:
                return sorted(entry.name for entry in entries
                              if entry.is_file() and not entry.name.startswith("."))
        except FileNotFoundError:
            return []

    def list(self, coll, kind=ORIGINAL):
        """Return the sorted names of `coll`'s files of `kind` (temporary files excluded)."""
        return self._list(self._directory(coll, kind))

    def survey(self, coll, kind=ORIGINAL):
        """Return (scan(), the temporary files and render dirs) of `coll`'s `kind`.

        One directory read.
        """
        found, temporary = [], []
        try:
            with os.scandir(self._directory(coll, kind)) as entries:
                for entry in entries:
                    if entry.name.startswith(TEMP_PREFIXES):
                        temporary.append(entry.name)
                    else:
                        found.append(_listed(entry))
        except (FileNotFoundError, NotADirectoryError):
            return [], []
        return sorted(listed for listed in found if listed is not None), sorted(temporary)

    # -- unfinished work and leases

    def _temporary_dirs(self):
        """Return every directory that may hold temporary files, each once."""
        found = [self.base_dir]  # uploads staged before `coll` is known (see stage())
        for area in self.areas():
            for kind in (ORIGINAL, THUMBNAIL):
                directory = self._directory(area.coll, kind)
                if directory not in found:
                    found.append(directory)
        return found

    def unfinished(self):
        """Return the temporary files and render dirs, and the leases, of the whole store."""
        found = []
        for directory, is_lease in ([(d, False) for d in self._temporary_dirs()]
                                    + [(os.path.join(self.base_dir, LEASE_DIR), True)]):
            try:
                with os.scandir(directory) as entries:
                    paths = sorted(entry.path for entry in entries
                                   if is_lease or entry.name.startswith(TEMP_PREFIXES))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for path in paths:
                try:
                    changed = _newest_change(path)
                except FileNotFoundError:
                    continue  # finished meanwhile
                what = "lease" if is_lease else _what(os.path.basename(path))
                found.append(Unfinished(self._relative(path), what, changed, path))
        return found

    def remove_unfinished(self, item):
        """Remove a temporary file, render dir or lease file; already gone is fine."""
        try:
            if stat.S_ISDIR(os.lstat(item.handle).st_mode):
                shutil.rmtree(item.handle)
            else:
                os.unlink(item.handle)
        except FileNotFoundError:
            pass

    def try_lease(self, key, ttl):
        """Take lease `key` as BASE_DIR/.leases/<hash>, created with O_EXCL; None if held."""
        directory = os.path.join(self.base_dir, LEASE_DIR)
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, lease_name(key))
        lease = Lease(key, secrets.token_hex(16), ttl)
        for attempt in range(2):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                if attempt or not self._take_over(path, ttl):
                    return None
                continue
            with os.fdopen(fd, "wb") as handle:
                handle.write(lease_body(lease))
            return lease
        return None

    def _take_over(self, path, ttl):
        """Move an expired lease file aside; True if the caller may try O_EXCL again."""
        try:
            with open(path, "rb") as handle:
                data = handle.read()
                taken = os.fstat(handle.fileno()).st_mtime
        except FileNotFoundError:
            return True  # released meanwhile
        token, held_ttl = lease_holder(data, ttl)
        if time.time() < taken + held_ttl:
            return False
        # NOTE: no compare-and-delete on POSIX: rename the file aside, then check it is the
        # expired lease we judged; if a fresh one was moved instead, link it back.
        aside = "%s.stale-%s" % (path, secrets.token_hex(8))
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return True
        try:
            with open(aside, "rb") as handle:
                if handle.read() == data:
                    return True
            try:
                os.link(aside, path)
            except FileExistsError:
                pass  # a third taker got in: its lease stands
            return False
        finally:
            os.unlink(aside)

    def _holds(self, lease):
        """Return the lease file's path if it holds `lease`'s token, else None."""
        path = os.path.join(self.base_dir, LEASE_DIR, lease_name(lease.key))
        try:
            with open(path, "rb") as handle:
                held = lease_holder(handle.read(), lease.ttl)[0] == lease.token
        except FileNotFoundError:
            return None
        return path if held else None  # else expired and taken over: the new holder's

    def renew(self, lease):
        """Date the lease file now if it still holds `lease`'s token (its mtime is its start)."""
        path = self._holds(lease)
        try:
            if path is not None:
                os.utime(path)
                return True
        except FileNotFoundError:
            pass  # released meanwhile
        return False

    def release(self, lease):
        """Remove the lease file if it still holds `lease`'s token."""
        path = self._holds(lease)
        try:
            if path is not None:
                os.unlink(path)
        except FileNotFoundError:
            pass

    def static_path(self, relpath):
        """Resolve a /static/<relpath> under BASE_DIR; UnsafeName if it could leave it."""
        parts = relpath.split("/")
        for part in parts:
            check_name(part, "path component")
        path = os.path.join(self.base_dir, *parts)
        # SECURITY: also refuse a symlink that points outside the store.
        real_base = os.path.realpath(self.base_dir)
        if os.path.commonpath([real_base, os.path.realpath(path)]) != real_base:
            raise UnsafeName("path leaves the store")
        return path
