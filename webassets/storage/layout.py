"""Where a store keeps each collection's originals and thumbnails, relative to its root."""

from .base import ORIGINAL, THUMBNAIL, UnknownCollection, group_areas


class Layout:
    """The reference's layout: [COLLECTION_DIRS[coll]/]ORIG_DIR|THUMB_DIR/<name>.

    Every directory is returned '/'-separated and relative to the store's root (BASE_DIR,
    or a bucket's prefix); each store joins it onto its root.
    """

    def __init__(self, orig_dir="originals", thumb_dir="thumbnails", collection_dirs=None):
        self.orig_dir = orig_dir.replace("\\", "/")
        self.thumb_dir = thumb_dir.replace("\\", "/")
        self.collection_dirs = collection_dirs

    def collections(self):
        """Return the COLLECTION_DIRS names, or None if `coll` is ignored (no COLLECTION_DIRS)."""
        return None if self.collection_dirs is None else sorted(self.collection_dirs)

    def root(self, coll):
        """Return `coll`'s directory ('' without COLLECTION_DIRS); UnknownCollection."""
        if self.collection_dirs is None:
            # COMPAT: with COLLECTION_DIRS = None the coll parameter is ignored.
            return ""
        try:
            return self.collection_dirs[coll].replace("\\", "/")
        except KeyError:
            raise UnknownCollection("Unknown collection: %r" % (coll,)) from None

    def directory(self, coll, kind):
        """Return the directory of `coll`'s files of `kind`; UnknownCollection, ValueError."""
        if kind == ORIGINAL:
            leaf = self.orig_dir
        elif kind == THUMBNAIL:
            leaf = self.thumb_dir
        else:
            raise ValueError("unknown kind of file: %r" % (kind,))
        root = self.root(coll)
        return root + "/" + leaf if root else leaf

    def areas(self, coll=None):
        """Return the collection directories (base.Area), or only `coll`'s; UnknownCollection.

        Collections that share a directory share one Area.
        """
        return group_areas(self.collection_dirs, coll)
