"""Where originals and thumbnails live: the store interface and its backends."""

from .base import (KINDS, ORIGINAL, THUMBNAIL, MAX_NAME_BYTES, UPLOAD_PREFIX, RENDER_PREFIX,
                   TEMP_SUFFIX, TEMP_PREFIXES, COPY_CHUNK, HEAD_BYTES, NOT_A_FILE, StorageError,
                   UnsafeName, UnknownCollection, MissingFile, StoreUnavailable, StoreFailed,
                   BadUpload, as_us_ascii, legacy_collection, check_name, fresh_by_mtime, FileInfo,
                   ReadOptions, StoredFile, Store, Area, Listed, Unfinished, Lease, group_areas,
                   lease_name, lease_body, lease_holder)
from .filesystem import FILE_MODE, StagedFile, FileStore, open_local
from .layout import Layout

__all__ = ["StorageError", "UnsafeName", "UnknownCollection", "MissingFile", "StoreUnavailable",
           "StoreFailed", "BadUpload", "as_us_ascii", "legacy_collection", "check_name",
           "FileInfo", "ReadOptions", "StoredFile", "open_local", "Store", "FileStore",
           "ORIGINAL", "THUMBNAIL", "TEMP_PREFIXES", "Area", "Listed", "Unfinished", "Lease"]
