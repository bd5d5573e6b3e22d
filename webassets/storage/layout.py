"""Where a store keeps each collection's originals and thumbnails, relative to its root."""

from typing import NamedTuple

from .base import ORIGINAL, THUMBNAIL, UnknownCollection


class Area(NamedTuple):
    """One collection directory of a store: where its originals and thumbnails are."""

    label: str  # its directory under the store's root; '.' when COLLECTION_DIRS is None
    colls: tuple  # the collections kept there
    originals: str
    thumbnails: str


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
        """Return the collection directories (Area), or only `coll`'s; UnknownCollection.

        Collections that share a directory share one Area.
        """
        if self.collection_dirs is None:
            # COMPAT: without COLLECTION_DIRS every collection is the one store.
            return [Area(".", (), self.directory(None, ORIGINAL), self.directory(None, THUMBNAIL))]
        wanted = self.root(coll) if coll is not None else None
        by_dir = {}
        for name, directory in self.collection_dirs.items():
            by_dir.setdefault(directory, []).append(name)
        found = []
        for directory, colls in sorted(by_dir.items()):
            first = sorted(colls)[0]
            if wanted is None or self.root(first) == wanted:
                found.append(Area(directory, tuple(sorted(colls)), self.directory(first, ORIGINAL),
                                  self.directory(first, THUMBNAIL)))
        return found
