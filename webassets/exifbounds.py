"""Bound ExifRead's work on one file: a read-budgeted view with the main EXIF structure sanitized."""

import bisect
import io
import logging
import os
import struct
from typing import Dict, List, Optional, Tuple

__all__ = ["BudgetExceeded", "BoundedView", "sanitize", "MAX_READS", "MAX_BYTES"]

logger = logging.getLogger(__name__)

# SECURITY: ExifRead loops as many times as a file says (one read per value, per entry, per
# IFD). Its work is bounded by what it may read: every loop whose trip count comes from the
# file reads at least once per turn or is linear in what was already read. A camera JPEG
# needs a few thousand reads plus one per MakerNote byte (at most 64 KiB in a JPEG); 120,000
# reads take about 0.2 CPU-s on Python 3.11.
MAX_READS = 120000
MAX_BYTES = 16 * 1024 * 1024
# Bounds on the main TIFF structure, enforced before ExifRead sees it. Camera IFDs hold a few
# hundred entries at most; a MakerNote lives in a 64 KiB JPEG segment in nearly every file.
MAX_IFD_ENTRIES = 1024
MAX_CHAIN_IFDS = 1024       # IFD0, IFD1, ... (pages of a multi-page TIFF)
MAX_SCANNED_ENTRIES = 32768  # entries over all IFDs the sanitizer looks at
MAX_MAKERNOTE_BYTES = 64 * 1024

# TIFF field type -> bytes per value (ExifRead skips the other types, 0 included).
_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4}
_DROPPED_TYPE = b"\0\0"  # type 0: ExifRead ignores the entry (non-strict mode)
_MAKERNOTE = 0x927C
_EXIF_IFD, _SUB_IFDS = 0x8769, 0x014A
# Pointers ExifRead follows from any IFD read with its EXIF tag table (GPS, Interoperability).
_NESTED_POINTERS = (0x8825, 0xA005)


def file_size(f) -> int:
    """Return the size of a seekable binary file, keeping its position (no fstat: it may be
    a remote file read in ranges)."""
    position = f.tell()
    size = f.seek(0, os.SEEK_END)
    f.seek(position)
    return size


class BudgetExceeded(Exception):
    """The file needs more reads than ExifRead is allowed for one file."""


class BoundedView(io.RawIOBase):
    """A read-only view of an open binary file with patches laid over its bytes.

    Reads past MAX_READS calls or MAX_BYTES bytes in all raise BudgetExceeded; everything
    else reads exactly like the file (short reads at its end).
    """

    def __init__(self, f, patches: Optional[Dict[int, bytes]] = None,
                 max_reads: int = MAX_READS, max_bytes: int = MAX_BYTES):
        super().__init__()
        self._f = f
        self._size = file_size(f)
        self._pos = 0
        self._reads_left = max_reads
        self._bytes_left = max_bytes
        patches = sorted((patches or {}).items())
        self._patch_starts = [start for start, _ in patches]
        self._patches = patches

    def readable(self):
        return True

    def seekable(self):
        return True

    def seek(self, offset, whence=io.SEEK_SET):
        if whence == io.SEEK_CUR:
            offset += self._pos
        elif whence == io.SEEK_END:
            offset += self._size
        if offset < 0:
            raise ValueError("negative seek position %d" % offset)
        self._pos = offset
        return offset

    def tell(self):
        return self._pos

    def read(self, size=-1):
        """Return up to `size` bytes (all up to the budget if negative); BudgetExceeded."""
        self._reads_left -= 1
        if self._reads_left < 0:
            raise BudgetExceeded("more than %d reads" % MAX_READS)
        if size is None or size < 0 or size > self._bytes_left:
            size = self._bytes_left + 1  # one byte more shows that the budget is exceeded
        start = self._pos
        if start >= self._size and not self._patches:
            return b""
        self._f.seek(start)
        data = self._f.read(size)
        if len(data) > self._bytes_left:
            raise BudgetExceeded("more than %d bytes read" % MAX_BYTES)
        self._bytes_left -= len(data)
        if self._patches:
            data = self._patch(start, data, size)
        self._pos = start + len(data)
        return data

    def readinto(self, buffer):
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def _patch(self, start: int, data: bytes, size: int) -> bytes:
        """Lay the patches that overlap [start, start + size) over `data`."""
        index = max(0, bisect.bisect_right(self._patch_starts, start) - 1)
        out = None
        for patch_start, patch in self._patches[index:]:
            if patch_start >= start + size:
                break
            if patch_start + len(patch) <= start:
                continue
            if out is None:
                out = bytearray(data)
            end = min(patch_start + len(patch), start + size)
            if end > start + len(out):  # a patch past the file's end (a cut IFD's next pointer)
                out.extend(b"\0" * (end - start - len(out)))
            lo = max(patch_start, start)
            out[lo - start:end - start] = patch[lo - patch_start:end - patch_start]
        return data if out is None else bytes(out)


class _Sanitizer:
    """Walk the IFDs ExifRead walks in a TIFF structure and patch what would make it loop."""

    def __init__(self, f, size: int, base: int, order: str):
        self.f, self.size, self.base, self.order = f, size, base, order
        self.patches = {}  # type: Dict[int, bytes]
        self.scanned = 0
        self.seen = set()

    def pack(self, fmt: str, *values) -> bytes:
        return struct.pack(self.order + fmt, *values)

    def read_at(self, offset: int, length: int) -> bytes:
        """Return up to `length` bytes at TIFF offset `offset` (past the end: fewer)."""
        position = self.base + offset
        if position >= self.size or length <= 0:
            return b""
        self.f.seek(position)
        return self.f.read(min(length, self.size - position))

    def chain(self, first: int) -> None:
        """Sanitize IFD0, IFD1, ... as exifread's list_ifd walks them."""
        ifd, seen, count = first, set(), 0
        while ifd and ifd not in seen:
            seen.add(ifd)
            count += 1
            next_at, next_ifd = self.ifd(ifd, depth=0 if count == 1 else 1)
            if next_ifd == ifd:
                break  # exifread ends the chain there itself
            if count >= MAX_CHAIN_IFDS and next_ifd and next_at is not None:
                self.patches[self.base + next_at] = self.pack("I", 0)
                break
            ifd = next_ifd

    def ifd(self, ifd: int, depth: int = 1) -> Tuple[Optional[int], int]:
        """Sanitize the IFD at `ifd` and the IFDs it points to; return (next-pointer offset, next).

        An entry count that runs past the file or over MAX_IFD_ENTRIES is cut (the chain
        ends there); a MakerNote over MAX_MAKERNOTE_BYTES or past the end of the file gets
        type 0, which ExifRead skips. Depth 0 is IFD0, whose EXIF
        and SubIFDs pointers ExifRead follows; it follows GPS and Interoperability pointers
        two levels deep at most.
        """
        head = self.read_at(ifd, 2)
        if len(head) < 2:
            return None, 0
        declared = struct.unpack(self.order + "H", head)[0]
        fits = max(0, (self.size - (self.base + ifd + 2)) // 12)
        entries = min(declared, fits, MAX_IFD_ENTRIES, MAX_SCANNED_ENTRIES - self.scanned)
        self.scanned += entries
        if self.scanned >= MAX_SCANNED_ENTRIES:
            raise BudgetExceeded("more than %d IFD entries" % MAX_SCANNED_ENTRIES)
        next_at = ifd + 2 + 12 * entries
        if entries < declared:
            self.patches[self.base + ifd] = self.pack("H", entries)
            self.patches[self.base + next_at] = self.pack("I", 0)
        table = self.read_at(ifd + 2, 12 * entries + 4)
        pointers = []  # type: List[Tuple[int, int]]
        for index in range(entries):
            entry = table[12 * index:12 * index + 12]
            tag, kind, count = struct.unpack(self.order + "HHI", entry[:8])
            size = _TYPE_SIZES.get(kind)
            if size is None:
                continue
            length = count * size
            value_at = ifd + 2 + 12 * index + 8
            if length > 4:
                value_at = struct.unpack(self.order + "I", entry[8:12])[0]
            # ExifRead reads a MakerNote value by value, however many there are; every other
            # tag stops at 999 values, so only MakerNotes are dropped.
            if tag == _MAKERNOTE and (length > MAX_MAKERNOTE_BYTES
                                      or self.base + value_at + length > self.size):
                self.patches[self.base + ifd + 2 + 12 * index + 2] = _DROPPED_TYPE
                continue
            if kind in (3, 4, 13) and (tag in _NESTED_POINTERS
                                       or (depth == 0 and tag in (_EXIF_IFD, _SUB_IFDS))):
                pointers.append((tag, self.first_value(value_at, kind, count, tag)))
        if entries == declared:
            tail = table[12 * entries:12 * entries + 4]
            next_ifd = struct.unpack(self.order + "I", tail)[0] if len(tail) == 4 else 0
        else:
            next_ifd = 0
        for tag, targets in pointers:
            for target in targets:
                if target and target not in self.seen and depth < 3:
                    self.seen.add(target)
                    self.ifd(target, depth + 1)
        return next_at, next_ifd

    def first_value(self, value_at: int, kind: int, count: int, tag: int) -> List[int]:
        """Return the IFD offsets a pointer entry holds (all of them for SubIFDs)."""
        size = _TYPE_SIZES[kind]
        wanted = min(count, 999) if tag == _SUB_IFDS else min(count, 1)
        data = self.read_at(value_at, size * wanted)
        fmt = "H" if size == 2 else "I"
        return [struct.unpack(self.order + fmt, data[i:i + size])[0]
                for i in range(0, len(data) - size + 1, size)]


def sanitize(f, base: int, endian: str) -> Dict[int, bytes]:
    """Return patches {file offset: bytes} that bound the TIFF structure at `base`.

    `endian` is ExifRead's byte-order letter ('I' little-endian, anything else big-endian,
    as ExifRead reads it). Raise BudgetExceeded if the structure is too large to walk.
    """
    size = file_size(f)
    walker = _Sanitizer(f, size, base, "<" if endian == "I" else ">")
    head = walker.read_at(4, 4)
    if len(head) == 4:
        walker.chain(struct.unpack(walker.order + "I", head)[0])
    return walker.patches
