"""Build the store the settings name: FileStore under BASE_DIR, or S3Store on a bucket."""

import os
import tempfile
import zlib

from ..config import ConfigError
from .filesystem import FileStore

__all__ = ["open_store", "lock_dir", "LOCK_DIR"]

LOCK_DIR = ".locks"  # under BASE_DIR: the thumbnail engine's lock files


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
                   part_size=settings.S3_PART_SIZE, spool_dir=settings.S3_SPOOL_DIR)


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
