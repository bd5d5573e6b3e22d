"""Test doubles, one of each: converters, a renderer, a store, wsgi.input, EXIF, a port, a server."""

import contextlib
import hashlib
import io
import os
import secrets
import socket
import struct
import subprocess
import tempfile
import threading
import time
import zlib

from webassets import samples, storage, thumbnails
from webassets.server import make_server

WAIT = 10.0  # upper bound for anything a fake waits on
ALL_FORMATS = ("JPEG", "PNG", "GIF", "TIFF", "HEIC", "WEBP", "BMP")


def png_chunk(kind, data):
    checksum = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", checksum)


def png_bytes(width, height, pixel=lambda x, y: (255, 0, 0, 255)):
    """Return an 8-bit RGBA PNG whose pixels come from pixel(x, y)."""
    rows = b"".join(b"\0" + bytes(value for x in range(width) for value in pixel(x, y))
                    for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header)
            + png_chunk(b"IDAT", zlib.compress(rows)) + png_chunk(b"IEND", b""))


def jpeg_header(width, height):
    """Return the start of a baseline JPEG: SOI and a SOF0 segment (enough for sniffing)."""
    sof = struct.pack(">BHHB", 8, height, width, 3) + b"\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    return b"\xff\xd8\xff\xc0" + struct.pack(">H", len(sof) + 2) + sof + b"\xff\xd9"


# ---------------------------------------------------------------------------- converters

class Concurrency:
    """Counts calls and how many ran at once (`calls`, `running`, `peak`); `started` is set
    by the first call and released once by each (a Semaphore count)."""

    def __init__(self, gate=None, delay=0.0):
        self.gate = gate  # every call waits for this Event, if given
        self.delay = delay
        self.calls = []
        self.running = self.peak = 0
        self.started = threading.Semaphore(0)
        self.first = threading.Event()
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def call(self, what):
        """Record one call while it runs (after the gate and the delay)."""
        with self._lock:
            self.calls.append(what)
            self.running += 1
            self.peak = max(self.peak, self.running)
        self.started.release()
        self.first.set()
        try:
            if self.gate is not None:
                assert self.gate.wait(WAIT)
            if self.delay:
                time.sleep(self.delay)
            yield
        finally:
            with self._lock:
                self.running -= 1


def storm(request, fake, gate, count=32):
    """Call `request()` from `count` threads at once, held at `fake`'s gate until all arrive.

    `fake` is a Concurrency whose calls wait for the Event `gate`; the first call opens it
    once the others have had time to reach it. Returns (results, errors) of the threads.
    """
    results, errors = [], []

    def one():
        try:
            results.append(request())
        except Exception as ex:  # collected for the caller to assert
            errors.append(ex)

    threads = [threading.Thread(target=one) for _ in range(count)]
    for thread in threads:
        thread.start()
    assert fake.first.wait(WAIT)
    time.sleep(0.05)  # let the others reach the flight
    gate.set()
    for thread in threads:
        thread.join(WAIT)
    return results, errors


class FakeConverter(Concurrency):
    """A converter `run(argv, timeout)`: answers the probes, 'converts' by writing a PNG or JPEG.

    The output path is gs's `-o` value or ImageMagick's last argument ('png:/path'). With
    `partial`, only the start of the image is written; `returncode` is what every conversion
    exits with.
    """

    def __init__(self, formats=ALL_FORMATS, returncode=0, partial=False, gate=None, delay=0.0):
        super().__init__(gate, delay)
        self.formats = formats
        self.returncode = returncode
        self.partial = partial

    def __call__(self, argv, timeout):
        if argv[1:] == ["-list", "format"]:
            listing = "".join("  %s* %s  rw+  test\n" % (name, name) for name in self.formats)
            return subprocess.CompletedProcess(argv, 0, listing.encode(), b"")
        if argv[1:] == ["--version"]:
            return subprocess.CompletedProcess(argv, 0, b"10.00.0\n", b"")
        with self.call(argv):
            if "-o" in argv:  # gs
                coder, path = "png", argv[argv.index("-o") + 1]
            else:
                coder, _, path = argv[-1].partition(":")
            data = png_bytes(10, 10) if coder == "png" else jpeg_header(10, 10)
            with open(path, "wb") as out:
                out.write(data[:20] if self.partial else data)
        return subprocess.CompletedProcess(argv, self.returncode, b"", b"fake failure")


def fake_tools(formats=ALL_FORMATS, program="/fake/convert", gs="/fake/gs", **options):
    """Return a thumbnails.Toolchain over a FakeConverter (its `run`) for `formats`."""
    return thumbnails.Toolchain(program, gs, FakeConverter(formats, **options))


class FakeRenderer(Concurrency):
    """A thumbnails renderer for scheduler tests: writes a PNG, or raises `error`; no argv."""

    def __init__(self, error=None, gate=None, delay=0.0):
        super().__init__(gate, delay)
        self.error = error

    def render(self, job):
        """Publish job.target (dated no earlier than the source), or raise `error`."""
        with self.call(job):
            os.makedirs(os.path.dirname(job.target), exist_ok=True)
            partial = job.target + ".part"
            self._write(job, partial)
            os.replace(partial, job.target)

    def render_into(self, job, workdir):
        """Write the PNG into the caller's `workdir` and return its path, or raise `error`."""
        with self.call(job):
            out = os.path.join(workdir, "out")
            self._write(job, out)
            return out

    def _write(self, job, path):
        if self.error is not None:
            raise self.error
        with open(path, "wb") as out:
            out.write(samples.png())
        if os.stat(path).st_mtime_ns < job.mtime_ns:
            os.utime(path, ns=(job.mtime_ns, job.mtime_ns))


def fake_thumbnailer(renderer=None, formats=ALL_FORMATS, **options):
    """Return a Thumbnailer over fake converters and `renderer` (a FakeRenderer by default)."""
    return thumbnails.Thumbnailer(tools=fake_tools(formats), renderer=renderer or FakeRenderer(),
                                  **options)


# ---------------------------------------------------------------------------- a store

class MemoryStore(storage.Store):
    """A storage.Store in a dict, with no local paths: proves handlers need none.

    Collections are `colls` (any name when None). Files are {(coll, kind, name): (bytes,
    mtime_ns)}; local_copy() writes a temporary file, as a remote store would. With `md5`,
    scan() and content_md5() know each file's MD5 (as a bucket's ETag tells). `work` is the
    unfinished work a test puts there; leases are {lease name: (token, taken, ttl)}.
    """

    def __init__(self, colls=None, md5=False, clock=time.time):
        self.colls = colls
        self.md5 = md5
        self.clock = clock
        self.files = {}
        self.work = []
        self.leases = {}
        self._lock = threading.Lock()

    def _key(self, coll, name, kind):
        self.check_collection(coll)
        return (coll, kind, storage.check_name(name))

    def _get(self, coll, name, kind):
        try:
            return self.files[self._key(coll, name, kind)]
        except KeyError:
            raise storage.MissingFile("File does not exist.") from None

    def prepare(self):
        pass

    def problem(self):
        return None

    def describe(self):
        return [("ok", "memory store with %d file(s)" % len(self.files))]

    def free_space(self):
        return None

    def collections(self):
        return None if self.colls is None else sorted(self.colls)

    def stat(self, coll, name, kind=storage.ORIGINAL):
        data, mtime_ns = self._get(coll, name, kind)
        return storage.FileInfo(len(data), mtime_ns)

    def open(self, coll, name, kind=storage.ORIGINAL, options=None):
        data, _ = self._get(coll, name, kind)
        return storage.StoredFile(io.BytesIO(data), self.stat(coll, name, kind))

    def stage(self, coll=None, known_coll=False, name=None, expected_size=None):
        return _MemoryStaged()

    def save_original(self, coll, name, staged):
        self.files[self._key(coll, name, storage.ORIGINAL)] = (staged.getvalue(),
                                                               int(time.time() * 1e9))

    def save_thumbnail(self, coll, name, local_file, source=None):
        with open(local_file, "rb") as rendered:
            data = rendered.read()
        mtime_ns = max(os.stat(local_file).st_mtime_ns, int(time.time() * 1e9))
        self.files[self._key(coll, name, storage.THUMBNAIL)] = (data, mtime_ns)
        return storage.FileInfo(len(data), mtime_ns)

    def thumbnail_is_fresh(self, coll, name, source):
        try:
            return storage.fresh_by_mtime(self.stat(coll, name, storage.THUMBNAIL), source)
        except storage.MissingFile:
            return False

    def delete_thumbnail(self, coll, name):
        self._get(coll, name, storage.THUMBNAIL)
        del self.files[self._key(coll, name, storage.THUMBNAIL)]

    def delete_original(self, coll, name, is_own_thumbnail):
        self._get(coll, name, storage.ORIGINAL)
        del self.files[self._key(coll, name, storage.ORIGINAL)]
        removed = [thumb for thumb in self.list(coll, storage.THUMBNAIL) if is_own_thumbnail(thumb)]
        for thumb in removed:
            del self.files[(coll, storage.THUMBNAIL, thumb)]
        return removed

    def list(self, coll, kind=storage.ORIGINAL):
        self.check_collection(coll)
        return sorted(name for (key_coll, key_kind, name) in self.files
                      if (key_coll, key_kind) == (coll, kind))

    @contextlib.contextmanager
    def local_copy(self, coll, name, kind=storage.ORIGINAL):
        data, _ = self._get(coll, name, kind)
        with tempfile.NamedTemporaryFile(prefix="memory-store-") as copy:
            copy.write(data)
            copy.flush()
            yield copy.name

    def local_path(self, coll, name, kind=storage.ORIGINAL):
        return None

    def static_name(self, coll, name, kind=storage.ORIGINAL):
        return "%s/%s/%s" % (coll, kind, storage.check_name(name))

    def open_static(self, relpath, options=None):
        coll, kind, name = (relpath.split("/") + ["", ""])[:3]
        return self.open(coll, name, kind)

    def location(self):
        return "memory:%x" % id(self)

    def absent(self):
        return None

    def areas(self, coll=None):
        if self.colls is None:
            return storage.group_areas(None)
        return storage.group_areas({one: one for one in self.colls}, coll)

    def _md5(self, data):
        return hashlib.md5(data).hexdigest() if self.md5 else None

    def survey(self, coll, kind=storage.ORIGINAL):
        self.check_collection(coll)
        return sorted(storage.Listed(name, len(data), mtime_ns, self._md5(data))
                      for (key_coll, key_kind, name), (data, mtime_ns) in self.files.items()
                      if (key_coll, key_kind) == (coll, kind)), []

    def content_md5(self, coll, name, kind=storage.ORIGINAL):
        return self._md5(self._get(coll, name, kind)[0])

    def unfinished(self):
        leases = [storage.Unfinished("leases/" + name, "lease", taken, name)
                  for name, (_, taken, _) in sorted(self.leases.items())]
        return list(self.work) + leases

    def remove_unfinished(self, item):
        with self._lock:
            if item in self.work:
                self.work.remove(item)
            self.leases.pop(item.handle, None)

    def try_lease(self, key, ttl):
        name = storage.lease_name(key)
        with self._lock:
            held = self.leases.get(name)
            if held is not None and self.clock() < held[1] + held[2]:
                return None
            lease = storage.Lease(key, secrets.token_hex(8), ttl)
            self.leases[name] = (lease.token, self.clock(), ttl)
            return lease

    def renew(self, lease):
        name = storage.lease_name(lease.key)
        with self._lock:
            if self.leases.get(name, (None,))[0] != lease.token:
                return False
            self.leases[name] = (lease.token, self.clock(), lease.ttl)
            return True

    def release(self, lease):
        name = storage.lease_name(lease.key)
        with self._lock:
            if self.leases.get(name, (None,))[0] == lease.token:
                del self.leases[name]


class _MemoryStaged(io.BytesIO):
    """An upload received into memory (MemoryStore.stage)."""

    @property
    def size(self):
        return len(self.getvalue())

    def discard(self):
        pass


# ---------------------------------------------------------------------------- wsgi.input

class FakeInput:
    """wsgi.input of a test client; counts the bytes the app read (`count`, `reads`).

    `data` is bytes, or an iterable of byte chunks made on demand (a 50 MiB body need not be
    in memory). The client may disconnect after `cut` bytes, send at most `max_read` per read
    (a socket's short reads), or run `before_read(self)` ahead of each read (advance a clock,
    stall). `strict` holds the app to WSGI: read(n) with an int n > 0, never past `announced`.
    """

    def __init__(self, data, cut=None, max_read=None, before_read=None, strict=False,
                 announced=None):
        if isinstance(data, (bytes, bytearray)):
            data = [bytes(data if cut is None else data[:cut])]
        self._chunks = iter(data)
        self._pending, self._offset = b"", 0
        self.max_read = max_read
        self.before_read = before_read
        self.strict = strict
        self.announced = announced
        self.count = self.reads = 0

    @property
    def pos(self):
        """Return how many bytes the app has read."""
        return self.count

    def read(self, size=-1):
        if self.strict:
            assert type(size) is int and size > 0, "read(%r) breaks the WSGI rule" % (size,)
            if self.announced is not None:
                assert self.count + size <= self.announced, "read past Content-Length"
        if self.before_read is not None:
            self.before_read(self)
        self.reads += 1
        if self.max_read and (size is None or size < 0 or size > self.max_read):
            size = self.max_read
        while self._offset >= len(self._pending):
            self._pending, self._offset = next(self._chunks, None), 0
            if self._pending is None:
                self._pending = b""
                return b""
        end = len(self._pending) if size is None or size < 0 else self._offset + size
        data = self._pending[self._offset:end]
        self._offset += len(data)
        self.count += len(data)
        return data

    # wsgiref.validate insists that wsgi.input has these too; the app never calls them.
    def readline(self, size=-1):
        raise NotImplementedError

    readlines = __iter__ = readline


# ---------------------------------------------------------------------------- EXIF

ASCII, SHORT, LONG = 2, 3, 4


def tiff_block(ifd0, exif_ifd=()):
    """Return a big-endian TIFF structure holding IFD0 and, if given, an EXIF sub-IFD.

    Entries are (tag, type, value): value is text for ASCII, an int otherwise.
    """
    def layout(entries, start):
        # An IFD: count, 12-byte entries, next-IFD offset; long values go after it.
        data_at = start + 2 + 12 * len(entries) + 4
        table, data = struct.pack(">H", len(entries)), b""
        for tag, kind, value in entries:
            if kind == ASCII:
                raw = value.encode("ascii") + b"\0"
                if len(raw) <= 4:
                    field = raw.ljust(4, b"\0")
                else:
                    field = struct.pack(">I", data_at + len(data))
                    data += raw + b"\0" * (len(raw) % 2)  # word-aligned
                table += struct.pack(">HHI", tag, kind, len(raw)) + field
            else:
                field = struct.pack(">HH", value, 0) if kind == SHORT else struct.pack(">I", value)
                table += struct.pack(">HHI", tag, kind, 1) + field
        return table + struct.pack(">I", 0) + data

    ifd0 = list(ifd0)
    if exif_ifd:
        # The EXIF IFD goes right after IFD0; its offset depends on IFD0's size, so lay out twice.
        ifd0.append((0x8769, LONG, 0))
        first = layout(ifd0, 8)
        ifd0[-1] = (0x8769, LONG, 8 + len(first))
        exif = layout(exif_ifd, 8 + len(first))
        return b"MM\0*" + struct.pack(">I", 8) + layout(ifd0, 8) + exif
    return b"MM\0*" + struct.pack(">I", 8) + layout(ifd0, 8)


def exif_segment(tiff):
    """Return a JPEG APP1 'Exif' segment holding `tiff`."""
    payload = b"Exif\0\0" + tiff
    return b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload


def with_exif(jpeg, tiff):
    """Return `jpeg` (from SOI on) with an APP1 'Exif' segment holding `tiff` right after SOI."""
    return jpeg[:2] + exif_segment(tiff) + jpeg[2:]


# ---------------------------------------------------------------------------- sockets

def free_port():
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def running_server(app, wait=WAIT, **kwargs):
    """Serve `app` on 127.0.0.1 (ephemeral port) in a thread; yield the server; stop it.

    `server.test_clients` are closed on the way out (tests append their connections).
    """
    kwargs.setdefault("workers", 4)
    kwargs.setdefault("timeout", wait)
    server = make_server(app, "127.0.0.1", 0, **kwargs)
    server.test_clients = []
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01},
                              daemon=True)
    thread.start()
    try:
        yield server
    finally:
        for client in server.test_clients:
            client.close()
        server.shutdown(timeout=wait)
        server.server_close()
        thread.join(wait)



# ---------------------------------------------------------------------------- time

class FakeClock:
    """A settable clock (call it for the time); `now` may be moved by the test."""

    def __init__(self, now):
        self.now = now

    def __call__(self):
        return self.now
