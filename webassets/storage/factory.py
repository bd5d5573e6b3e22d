"""Build the store the settings name: FileStore under BASE_DIR, or S3Store on a bucket."""

import logging
import os
import tempfile
import zlib

from ..config import ConfigError
from .filesystem import FileStore

__all__ = ["open_store", "lock_dir", "spool_dir", "LOCK_DIR"]

logger = logging.getLogger(__name__)

LOCK_DIR = ".locks"  # under BASE_DIR: the thumbnail engine's lock files
# S3_SPOOL_DIR = 'auto': /var/tmp is on disk on Debian, RHEL and SLES (/tmp may be a tmpfs).
AUTO_SPOOL_DIRS = ("/var/tmp",)
MEMORY_FILESYSTEMS = ("tmpfs", "ramfs")


def open_store(settings, client=None):
    """Return the Store of `settings` (STORAGE); ConfigError when STORAGE = 's3' lacks a bucket.

    `client` replaces the S3 client the settings describe (tests).
    """
    if settings.STORAGE != "s3":
        return FileStore(settings.BASE_DIR, settings.ORIG_DIR, settings.THUMB_DIR,
                         settings.COLLECTION_DIRS)
    from .s3 import S3Store

    if not settings.S3_BUCKET:
        raise ConfigError("STORAGE = 's3' needs S3_BUCKET (the bucket that holds the files)")
    if client is None:
        from .s3client import S3Client, S3Config

        client = S3Client(S3Config(
            settings.S3_BUCKET, endpoint=settings.S3_ENDPOINT, region=settings.S3_REGION,
            access_key=settings.S3_ACCESS_KEY, secret_key=settings.S3_SECRET_KEY,
            addressing=settings.S3_ADDRESSING, ca_file=settings.S3_CA_FILE))
    return S3Store(client, settings.S3_PREFIX, settings.ORIG_DIR, settings.THUMB_DIR,
                   settings.COLLECTION_DIRS, label="s3://%s/%s" % (settings.S3_BUCKET,
                                                                 settings.S3_PREFIX),
                   part_size=settings.S3_PART_SIZE, spool_dir=spool_dir(settings.S3_SPOOL_DIR))


def spool_dir(setting, candidates=AUTO_SPOOL_DIRS, mounts="/proc/mounts"):
    """Return the directory S3_SPOOL_DIR names, or None for none.

    'auto' picks the first of `candidates` that is a writable directory on a disk: a
    spool on a tmpfs would hold a whole upload in memory, which the spool exists to avoid.
    """
    if setting != "auto":
        return setting
    for candidate in candidates:
        if not os.access(candidate, os.W_OK | os.X_OK) or not os.path.isdir(candidate):
            continue
        fstype = _filesystem_type(candidate, mounts)
        if fstype is not None and fstype not in MEMORY_FILESYSTEMS:
            logger.info("S3_SPOOL_DIR 'auto': Specify 7 uploads wait in %s (%s)",
                        candidate, fstype)
            return candidate
    logger.info("S3_SPOOL_DIR 'auto': no disk directory among %s; Specify 7 uploads go "
                "through a temporary key and a copy in the bucket", ", ".join(candidates))
    return None


def _filesystem_type(path, mounts):
    """Return the type of the filesystem holding `path` (the longest mount point), or None."""
    path = os.path.realpath(path)
    best, fstype = "", None
    try:
        with open(mounts, encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.split()
                if len(fields) < 3:
                    continue
                # /proc/mounts escapes spaces and such in mount points as octal (\040).
                point = fields[1].encode("latin-1", "replace").decode("unicode_escape")
                inside = path == point or path.startswith(point.rstrip("/") + "/")
                if inside and len(point) >= len(best):
                    best, fstype = point, fields[2]
    except OSError:
        return None  # not Linux, or no /proc: unknown, so no spool
    return fstype


def lock_dir(settings):
    """Return the directory of the thumbnail engine's lock files for this store.

    Every process of this machine on the store uses the same one: BASE_DIR/.locks, or for
    a bucket a directory in the system's temp dir named after the bucket and prefix.
    """
    if settings.STORAGE != "s3":
        return os.path.join(settings.BASE_DIR, LOCK_DIR)
    where = "%s\n%s\n%s" % (settings.S3_ENDPOINT, settings.S3_BUCKET, settings.S3_PREFIX)
    return os.path.join(tempfile.gettempdir(), "webassets-locks-%08x"
                        % zlib.crc32(where.encode("utf-8")))
