"""Faults lose nothing: a worker killed mid-upload, a full disk (real server, real filesystem)."""

import contextlib
import errno
import glob
import http.client
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from urllib.parse import urlencode

import pytest

from tests import deploy_util
from tests.fakes import png_bytes
from tests.helpers import COLL, call, make_settings, sp7_upload, token
from tests.test_thumbnails import pdf_bytes
from webassets import thumbnails
from webassets.app import create_app

logger = logging.getLogger(__name__)

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/fd") or not hasattr(os, "fork"),
                                reason="needs Linux /proc and os.fork")

WAIT = 10.0  # upper bound for anything that should happen promptly
REPLACEMENT_BOUND = 1.0  # issue 9: the supervisor replaces a killed worker within a second
NAME = "fault-test.png"


# --------------------------------------------------------------------------- the real server

@pytest.fixture
def root():
    path = deploy_util.make_root()
    try:
        yield path
    finally:
        deploy_util.remove_root(path)


def start_server(root, base_dir, **settings):
    """Start `python -m webassets serve` on a free loopback port; return (process, port)."""
    port = deploy_util.free_port()
    text = deploy_util.settings_text(base_dir, **settings)
    return deploy_util.start_webassets(root, text, port), port


def request(port, method, path, query=None, body=None, headers=None, timeout=WAIT):
    """Send one request on a fresh connection; return (status, body)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        url = path + ("?" + urlencode(query) if query else "")
        connection.request(method, url, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def upload(port, name, content):
    body, headers = sp7_upload(name, content, token(name))
    return request(port, "POST", "/fileupload", body=body, headers=headers)


def get_original(port, name, timeout=WAIT):
    query = {"filename": name, "coll": COLL, "type": "O", "token": token(name)}
    return request(port, "GET", "/fileget", query, timeout=timeout)


def get_thumbnail(port, name, scale):
    query = {"filename": name, "coll": COLL, "type": "T", "scale": scale, "token": token(name)}
    return request(port, "GET", "/fileget", query)


def fsck(root, *args):
    """Run `webassets fsck` on the server's settings; return (exit status, output)."""
    env = dict(os.environ, PYTHONPATH=deploy_util.REPO)
    result = subprocess.run(
        [sys.executable, "-m", "webassets", "fsck", "--quiet", "--settings",
         root + "/etc/webassets/settings.py"] + list(args),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, timeout=60)
    return result.returncode, result.stdout.decode("utf-8", "replace")


def temp_files(directory, prefix):
    return glob.glob(os.path.join(glob.escape(directory), prefix + "*"))


# --------------------------------------------------------------------------- the process tree

def children(pid):
    """Return the pids whose parent is `pid` (live or not yet reaped)."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry, "rb") as handle:
                stat = handle.read()
        except OSError:  # exited meanwhile
            continue
        fields = stat[stat.rindex(b")") + 2:].split()  # the name in parentheses may hold spaces
        if int(fields[1]) == pid and fields[0] != b"Z":
            found.add(int(entry))
    return found


def open_files(pid):
    """Return the targets of `pid`'s file descriptors ('/path', 'socket:[inode]', ...)."""
    targets = set()
    try:
        fds = os.listdir("/proc/%d/fd" % pid)
    except OSError:
        return targets
    for fd in fds:
        with contextlib.suppress(OSError):
            targets.add(os.readlink("/proc/%d/fd/%s" % (pid, fd)))
    return targets


def listening_inode(port):
    """Return the inode of the socket listening on 127.0.0.1:port (or on any address)."""
    with open("/proc/net/tcp") as handle:
        for line in handle.read().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[1].endswith(":%04X" % port):
                return fields[9]
    return None


def server_side_inode(client):
    """Return the inode of the server's end of the loopback TCP connection `client`."""
    client_port = client.getsockname()[1]
    server_port = client.getpeername()[1]
    local = "0100007F:%04X" % server_port  # /proc/net/tcp: little-endian 127.0.0.1
    remote = "0100007F:%04X" % client_port
    with open("/proc/net/tcp") as handle:
        for line in handle.read().splitlines()[1:]:
            fields = line.split()
            if fields[1] == local and fields[2] == remote:
                return fields[9]
    return None


def wait_for(predicate, what, timeout=WAIT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError("timed out waiting for " + what)


class GetLoop(threading.Thread):
    """GET the original over and over, each on a new connection, noting when and what."""

    def __init__(self, port, name, expected):
        super().__init__(daemon=True)
        self.port, self.name, self.expected = port, name, expected
        self.results = []  # (started, finished, outcome): 'ok', a status, or an exception
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                status, body = get_original(self.port, self.name, timeout=5)
                outcome = "ok" if status == 200 and body == self.expected else (status, body[:80])
            except (OSError, http.client.HTTPException) as ex:
                outcome = ex
            self.results.append((started, time.monotonic(), outcome))


def test_kill_9_of_a_worker_mid_upload_loses_nothing(root):
    base = os.path.join(root, "store")
    server, port = start_server(root, base, PROCESSES=2, REQUEST_TIMEOUT=30)
    stalled = None
    try:
        supervisor = server.popen.pid
        workers = wait_for(lambda: children(supervisor) if len(children(supervisor)) == 2
                           else None, "two worker processes")
        version1 = png_bytes(32, 32, lambda x, y: (x * 8, y * 8, 0, 255))
        assert upload(port, NAME, version1) == (200, b"Ok.")

        # Version 2: the head and 2 of 8 MiB of body, then silence; the worker stages it.
        chunks, headers, _ = deploy_util.streamed_sp7_upload(NAME, token(NAME), b"v2" * 32768, 128)
        stalled = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        head = "POST /fileupload HTTP/1.1\r\nHost: 127.0.0.1\r\n" + "".join(
            "%s: %s\r\n" % item for item in headers.items()) + "\r\n"
        stalled.sendall(head.encode("ascii") + next(chunks))
        for _ in range(32):
            stalled.sendall(next(chunks))
        originals = os.path.join(base, "originals")
        leftover = wait_for(lambda: temp_files(originals, ".upload-"), "the staged upload")[0]
        wait_for(lambda: os.path.getsize(leftover) > 0, "the staged upload to grow")

        # The worker holding that connection, found from the process tree alone.
        inode = wait_for(lambda: server_side_inode(stalled), "the connection in /proc/net/tcp")
        holders = [pid for pid in workers if "socket:[%s]" % inode in open_files(pid)]
        assert len(holders) == 1, (workers, inode)
        victim = holders[0]
        assert leftover in open_files(victim)  # the same worker writes the staged file

        loop = GetLoop(port, NAME, version1)
        loop.start()
        wait_for(lambda: len(loop.results) >= 5, "the GET loop to run")
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        new = wait_for(lambda: children(supervisor) - workers, "a replacement worker")
        replaced_after = time.monotonic() - killed_at
        time.sleep(0.3)  # the loop keeps going against the surviving and the new worker
        loop.stop.set()
        loop.join(WAIT)

        assert len(new) == 1 and victim not in children(supervisor)
        logger.warning("worker %d replaced by %s after %.3f s", victim, new, replaced_after)
        assert replaced_after < REPLACEMENT_BOUND
        assert "socket:[%s]" % listening_inode(port) in open_files(new.pop())
        # The killed worker's connections end; only a GET it had already accepted may fail.
        stalled.settimeout(WAIT)
        with contextlib.suppress(ConnectionResetError):
            assert stalled.recv(4096) == b""
        failed = [(started, outcome) for started, _, outcome in loop.results if outcome != "ok"]
        assert all(started < killed_at for started, _ in failed), failed
        assert len(failed) <= 1, failed
        after = [r for r in loop.results if r[0] >= killed_at]
        assert len(after) >= 5, "the surviving worker answered only %d GETs" % len(after)

        # The previous version is intact and served; the staged version 2 is left over.
        assert get_original(port, NAME) == (200, version1)
        assert os.path.exists(leftover)
        status, report = fsck(root, "--grace", "0")
        assert status == 0, report
        assert "leftover upload" in report and not os.path.exists(leftover), report
        assert temp_files(originals, ".upload-") == []
        assert get_original(port, NAME) == (200, version1)
    finally:
        if stalled is not None:
            stalled.close()
        server.stop()


# --------------------------------------------------------------------------- a full disk

def mount_small_tmpfs(directory, size):
    """Mount a tmpfs of `size` on `directory`; skip the test if this host cannot."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root")
    mount = deploy_util.which("mount")
    if mount is None:
        pytest.skip("no mount(8)")
    result = subprocess.run([mount, "-t", "tmpfs", "-o", "size=%s,mode=0755" % size, "tmpfs",
                             directory], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        pytest.skip("cannot mount a tmpfs here: " + result.stdout.decode(errors="replace"))


def unmount(directory):
    subprocess.run([deploy_util.which("umount"), "-l", directory], check=True)


def fill(directory):
    """Write to `directory` until its filesystem is full; return the filler's path."""
    path = os.path.join(directory, "filler")
    block = b"\0" * 65536
    with open(path, "wb", buffering=0) as handle:
        for size in (65536, 4096, 512, 1):
            try:
                while True:
                    handle.write(block[:size])
            except OSError as ex:
                if ex.errno != errno.ENOSPC:
                    raise
    return path


def test_full_disk_gives_507_and_keeps_every_original(root):
    base = os.path.join(root, "store")
    os.mkdir(base)
    mount_small_tmpfs(base, "4m")
    server = None
    try:
        server, port = start_server(root, base, PROCESSES=1)
        version1 = png_bytes(400, 300, lambda x, y: (x % 256, y % 256, (x * y) % 256, 255))
        assert upload(port, NAME, version1) == (200, b"Ok.")
        assert upload(port, "scan.pdf", pdf_bytes([(600, 800)])) == (200, b"Ok.")
        filler = fill(base)
        assert thumbnails._free_bytes(base) == 0

        # A cold thumbnail: 507 with a one-line reason, nothing half-written left.
        status, body = get_thumbnail(port, NAME, 200)
        assert status == 507, body
        assert body.count(b"\n") == 1 and b"space" in body, body
        thumbs = os.path.join(base, "thumbnails")
        assert temp_files(thumbs, ".thumb-") == []
        assert not os.path.exists(os.path.join(thumbs, thumbnails.thumbnail_name(NAME, 200)))
        assert get_original(port, NAME) == (200, version1)
        if deploy_util.which("gs"):  # Ghostscript exits 0 when its write fails
            status, body = get_thumbnail(port, "scan.pdf", 500)
            assert status == 507 and body.count(b"\n") == 1, (status, body)
            assert sorted(os.listdir(thumbs)) == []

        # An upload of a new version: 507, the previous one intact, no staged file left.
        status, body = upload(port, NAME, version1[::-1][:200000])
        assert status == 507 and body.count(b"\n") == 1, body
        assert get_original(port, NAME) == (200, version1)
        assert temp_files(os.path.join(base, "originals"), ".upload-") == []

        # Room again: the thumbnail is made at once (a full disk is not remembered).
        os.unlink(filler)
        status, body = get_thumbnail(port, NAME, 200)
        assert status == 200 and body.startswith(b"\x89PNG"), (status, body[:80])
        status, report = fsck(root, "--grace", "0")
        assert status == 0, report
    finally:
        if server is not None:
            server.stop()
        unmount(base)


# --------------------------------------------------------------------------- in-process

def full_disk_app(tmp_path, monkeypatch, render):
    """Return (app, free space dict) with `render(argv)` standing in for convert and gs."""
    free = {"bytes": 0}
    monkeypatch.setattr(thumbnails, "_free_bytes", lambda directory: free["bytes"])

    def run(argv, timeout):
        if "-list" in argv or "--version" in argv:  # the capability probe runs for real
            return thumbnails.run_command(argv, timeout)
        return render(argv)

    app = create_app(make_settings(tmp_path), thumbnailer=thumbnails.Thumbnailer(run=run))
    return app, free


def test_a_converter_failing_on_a_full_disk_is_507_and_not_remembered(tmp_path, monkeypatch):
    originals = tmp_path / "originals"
    originals.mkdir()
    (originals / NAME).write_bytes(png_bytes(64, 64))
    # ImageMagick's answer when its write fails: its own message, never ENOSPC.
    app, free = full_disk_app(tmp_path, monkeypatch, lambda argv: subprocess.CompletedProcess(
        argv, 1, b"", b"convert: WriteBlob Failed"))
    query = {"filename": NAME, "coll": COLL, "type": "T", "scale": "64"}
    res = call(app, path="/fileget", query=query)
    assert res.status == 507 and res.body == b"no space left to write the thumbnail\n"
    assert list((tmp_path / "thumbnails").iterdir()) == []
    free["bytes"] = 1 << 30  # room again: the same failure is now the file's fault
    assert call(app, path="/fileget", query=query).status == 422


def test_ghostscript_cut_short_by_a_full_disk_publishes_nothing(tmp_path, monkeypatch):
    originals = tmp_path / "originals"
    originals.mkdir()
    (originals / "scan.pdf").write_bytes(pdf_bytes([(200, 100)]))

    def ghostscript_on_a_full_disk(argv):  # gs exits 0 after a failed write, output cut short
        with open(argv[argv.index("-o") + 1], "wb") as handle:
            handle.write(png_bytes(100, 50)[:60])
        return subprocess.CompletedProcess(argv, 0, b"", b"")

    app, _ = full_disk_app(tmp_path, monkeypatch, ghostscript_on_a_full_disk)
    if not app.thumbnailer.formats()["pdf"]:
        pytest.skip("no Ghostscript here")
    query = {"filename": "scan.pdf", "coll": COLL, "type": "T", "scale": "200"}
    assert call(app, path="/fileget", query=query).status == 507
    assert list((tmp_path / "thumbnails").iterdir()) == []
