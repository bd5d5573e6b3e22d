"""Where originals and thumbnails live: the store interface and its backends."""

from .base import (KINDS, ORIGINAL, THUMBNAIL, MAX_NAME_BYTES, UPLOAD_PREFIX, RENDER_PREFIX,
                   TEMP_SUFFIX, TEMP_PREFIXES, COPY_CHUNK, StorageError, UnsafeName,
                   UnknownCollection, MissingFile, as_us_ascii, legacy_collection, check_name,
                   FileInfo, StoredFile, Store)
from .filesystem import FILE_MODE, Area, StagedFile, FileStore, open_local

__all__ = ["StorageError", "UnsafeName", "UnknownCollection", "MissingFile", "as_us_ascii",
           "legacy_collection", "check_name", "FileInfo", "StoredFile", "open_local", "Store",
           "FileStore",
           "ORIGINAL", "THUMBNAIL", "TEMP_PREFIXES"]
