"""Real-socket tests of the built-in server (webassets.server) on 127.0.0.1."""

import http.client
import logging
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

from tests import fakes
from webassets.server import make_server

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WAIT = 5.0  # upper bound for anything that should happen promptly
DATA = bytes(range(256)) * 4096  # 1 MiB with a position-dependent pattern


# ---------------------------------------------------------------- fixtures (reusable)

def running_server(app, **kwargs):
    """Serve `app` in a thread (tests.fakes.running_server) with this module's WAIT."""
    return fakes.running_server(app, wait=WAIT, **kwargs)


def connect(server):
    """Return an http.client connection to `server` (closed with the server)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=WAIT)
    server.test_clients.append(conn)
    return conn


def raw_connect(server):
    """Return a plain socket connected to `server` (closed with the server)."""
    sock = socket.create_connection(("127.0.0.1", server.server_port), timeout=WAIT)
    server.test_clients.append(sock)
    return sock


def fetch(conn, method="GET", path="/", body=None, headers=None):
    """Send one request on `conn`; return (status, response, body)."""
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    return response.status, response, response.read()


def read_response(sock, method="GET"):
    """Read one response from a plain socket; return (status, response, body)."""
    response = http.client.HTTPResponse(sock, method=method)
    response.begin()
    return response.status, response, response.read()


def wait_for_record(caplog, predicate):
    """Return the first captured log record matching `predicate`, waiting up to WAIT."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        for record in caplog.records:
            if predicate(record):
                return record
        time.sleep(0.01)
    raise AssertionError("no matching log record in %r" % [r.getMessage() for r in caplog.records])


def reset(sock):
    """Close `sock` with an RST instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def is_closed_by_peer(sock, timeout):
    """Return True if the peer closes `sock` within `timeout` seconds (data is discarded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        readable, _, _ = select.select([sock], [], [], deadline - time.monotonic())
        if readable:
            try:
                if not sock.recv(65536):
                    return True
            except ConnectionResetError:
                return True
    return False


# ---------------------------------------------------------------- tiny apps

def echo_app(environ, start_response):
    """Answer with the method, path, query and the request body."""
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    payload = ("%(REQUEST_METHOD)s %(PATH_INFO)s?%(QUERY_STRING)s " % environ).encode() + body
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(payload)))])
    return [payload]


class NoFileno(object):
    """A file-like object without fileno(): the server has to iterate it."""

    def __init__(self, handle):
        self._handle = handle

    def read(self, size):
        return self._handle.read(size)

    def close(self):
        self._handle.close()


def file_app(path, offset=0, length=None, wrap=lambda handle: handle):
    """Return an app sending `length` bytes of `path` from `offset` through wsgi.file_wrapper."""
    def app(environ, start_response):
        if environ["PATH_INFO"] != "/file":
            return echo_app(environ, start_response)
        handle = open(path, "rb")
        handle.seek(offset)
        size = os.path.getsize(path) - offset if length is None else length
        start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                  ("Content-Length", str(size))])
        return environ["wsgi.file_wrapper"](wrap(handle))
    return app


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(DATA)
    return str(path)


@pytest.fixture
def quiet(caplog, capsys):
    """Yield caplog at DEBUG; afterwards check nothing reached stderr or was logged as an error."""
    caplog.set_level(logging.DEBUG, logger="webassets")
    yield caplog
    assert capsys.readouterr().err == ""
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


# ---------------------------------------------------------------- keep-alive and framing

def test_keep_alive_serves_sequential_requests_on_one_connection(data_file):
    with running_server(file_app(data_file)) as server:
        conn = connect(server)
        first = fetch(conn, "GET", "/a?x=1")
        local = conn.sock.getsockname()
        second = fetch(conn, "GET", "/file")
        assert conn.sock.getsockname() == local
        third = fetch(conn, "POST", "/b", body=b"hello")
        assert conn.sock.getsockname() == local
    assert (first[0], first[2]) == (200, b"GET /a?x=1 ")
    assert (second[0], second[2]) == (200, DATA)
    assert (third[0], third[2]) == (200, b"POST /b? hello")
    assert all(response.getheader("Connection") is None for _, response, _ in (first, second))


def test_file_wrapper_sends_a_large_file_with_sendfile(tmp_path, monkeypatch):
    payload = os.urandom(5 * 1024 * 1024)
    path = tmp_path / "big.bin"
    path.write_bytes(payload)
    sent = []  # (offset, bytes sent) of each sendfile(2) call
    original = os.sendfile

    def spy(out_fd, in_fd, offset, count):
        done = original(out_fd, in_fd, offset, count)
        sent.append((offset, done))
        return done

    monkeypatch.setattr(os, "sendfile", spy)
    with running_server(file_app(str(path))) as server:
        conn = connect(server)
        status, response, body = fetch(conn, "GET", "/file")
        assert fetch(conn, "GET", "/file")[2] == payload  # same connection, still in step
    assert status == 200
    assert response.getheader("Content-Length") == str(len(payload))
    assert body == payload
    # Two responses, each from offset 0 and contiguous, all of it through sendfile(2).
    assert sum(done for _, done in sent) == 2 * len(payload)
    assert [offset for offset, _ in sent].count(0) == 2


@pytest.mark.parametrize("wrap", [lambda handle: handle, NoFileno], ids=["sendfile", "iterate"])
def test_file_wrapper_sends_exactly_content_length_from_the_file_position(data_file, wrap):
    app = file_app(data_file, offset=1000, length=5000, wrap=wrap)
    with running_server(app) as server:
        conn = connect(server)
        status, response, body = fetch(conn, "GET", "/file")
        after = fetch(conn, "GET", "/next")
    assert (status, body) == (200, DATA[1000:6000])
    assert response.getheader("Connection") is None
    assert after[2] == b"GET /next? "  # no stray file bytes before the next response


def test_head_sends_headers_without_body(data_file):
    with running_server(file_app(data_file)) as server:
        conn = connect(server)
        file_head = fetch(conn, "HEAD", "/file")
        text_head = fetch(conn, "HEAD", "/text")  # echo_app wrongly returns a body for HEAD
        status, _, body = fetch(conn, "GET", "/file")
    assert file_head[1].getheader("Content-Length") == str(len(DATA))
    assert text_head[1].getheader("Content-Length") == str(len(b"HEAD /text? "))
    assert file_head[2] == text_head[2] == b""
    assert (status, body) == (200, DATA)


def test_response_without_content_length_ends_with_the_connection():
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return iter([b"one ", b"two"])

    with running_server(app) as server:
        status, response, body = fetch(connect(server))
    assert (status, body) == (200, b"one two")
    assert response.getheader("Connection") == "close"


def test_unread_request_body_does_not_corrupt_the_next_request():
    def app(environ, start_response):
        if environ["REQUEST_METHOD"] == "GET":
            return echo_app(environ, start_response)
        start_response("403 Forbidden", [("Content-Length", "2")])
        return [b"no"]

    with running_server(app) as server:
        conn = connect(server)
        small = fetch(conn, "POST", "/up", body=b"x" * 1000)
        local = conn.sock.getsockname()
        after_small = fetch(conn, "GET", "/a")
        assert conn.sock.getsockname() == local  # the small body was drained, not a new socket
        large = fetch(conn, "POST", "/up", body=b"x" * (1024 * 1024))
        after_large = fetch(conn, "GET", "/b")  # http.client reconnects after Connection: close
    assert (small[0], small[2], after_small[2]) == (403, b"no", b"GET /a? ")
    assert (large[0], large[2], after_large[2]) == (403, b"no", b"GET /b? ")
    assert large[1].getheader("Connection") == "close"


@pytest.mark.parametrize("head, status", [
    (b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 411),
    (b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", 400),
    (b"Content-Length: -5\r\n\r\n", 400),
], ids=["chunked", "conflicting-length", "negative-length"])
def test_request_body_without_a_usable_length_is_refused(head, status):
    with running_server(echo_app) as server:
        sock = raw_connect(server)
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\n" + head)
        got, response, _ = read_response(sock, "POST")
        sock.close()
    assert got == status
    assert response.getheader("Connection") == "close"


def test_http_1_0_keeps_alive_only_when_asked():
    request = b"GET /%d HTTP/1.0\r\n%s\r\n"
    with running_server(echo_app) as server:
        sock = raw_connect(server)
        sock.sendall(request % (1, b"Connection: keep-alive\r\n"))
        first = read_response(sock)
        sock.sendall(request % (2, b""))
        second = read_response(sock)
        assert is_closed_by_peer(sock, WAIT)
        sock.close()
    assert (first[2], second[2]) == (b"GET /1? ", b"GET /2? ")
    assert first[1].getheader("Connection") == "keep-alive"
    assert second[1].getheader("Connection") == "close"


def test_expect_continue_is_sent_only_when_the_app_reads_the_body():
    def app(environ, start_response):
        if environ["PATH_INFO"] == "/read":
            return echo_app(environ, start_response)
        start_response("403 Forbidden", [("Content-Length", "0")])
        return []

    head = "POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
    with running_server(app) as server:
        refused = raw_connect(server)
        refused.sendall((head % "/refuse").encode())
        refused_status, refused_response, _ = read_response(refused, "POST")
        refused.close()

        accepted = raw_connect(server)
        accepted.sendall((head % "/read").encode())
        reader = accepted.makefile("rb")
        interim = [reader.readline(), reader.readline()]
        accepted.sendall(b"hello")
        status_line = reader.readline()
        reader.close()
        accepted.close()
    assert refused_status == 403  # the final answer came first, without 100 Continue
    assert refused_response.getheader("Connection") == "close"
    assert interim == [b"HTTP/1.1 100 Continue\r\n", b"\r\n"]
    assert status_line.startswith(b"HTTP/1.1 200 ")


# ---------------------------------------------------------------- timeouts and concurrency

def test_stalled_clients_are_released_after_the_timeout_while_others_are_served(quiet):
    with running_server(echo_app, workers=3, timeout=0.5) as server:
        half_line = raw_connect(server)
        half_line.sendall(b"GET / HT")
        half_body = raw_connect(server)
        half_body.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
        started = time.monotonic()
        status, _, body = fetch(connect(server), "GET", "/other")
        served_after = time.monotonic() - started
        assert is_closed_by_peer(half_line, WAIT) and is_closed_by_peer(half_body, WAIT)
        released_after = time.monotonic() - started
        assert fetch(connect(server), "GET", "/later")[0] == 200
    assert (status, body) == (200, b"GET /other? ")
    assert served_after < 0.5 <= released_after + 0.1  # served while the stalled ones waited
    assert released_after < 3.0


def test_idle_connections_hold_no_worker():
    with running_server(echo_app, workers=1) as server:
        silent = [raw_connect(server) for _ in range(3)]  # connected, never say a word
        kept = connect(server)
        assert fetch(kept, "GET", "/first")[0] == 200  # now idle, kept alive
        local = kept.sock.getsockname()
        started = time.monotonic()
        other = fetch(connect(server), "GET", "/other")
        elapsed = time.monotonic() - started
        again = fetch(kept, "GET", "/again")
        assert kept.sock.getsockname() == local
        for sock in silent:
            sock.close()
    assert (other[2], again[2]) == (b"GET /other? ", b"GET /again? ")
    assert elapsed < 1.0  # not held up by the idle connections (timeout is 5 s)


def test_idle_connections_are_closed_after_the_timeout():
    with running_server(echo_app, timeout=0.3) as server:
        silent = raw_connect(server)
        kept = connect(server)
        assert fetch(kept)[0] == 200
        started = time.monotonic()
        assert is_closed_by_peer(silent, WAIT) and is_closed_by_peer(kept.sock, WAIT)
        elapsed = time.monotonic() - started
        silent.close()
    assert elapsed < 2.0


def test_pipelined_requests_are_answered_in_order():
    with running_server(echo_app) as server:
        sock = raw_connect(server)
        sock.sendall(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"POST /2 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
                     b"GET /3 HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while not data.endswith(b"GET /3? "):
            chunk = sock.recv(65536)
            assert chunk, "closed after %r" % data
            data += chunk
        sock.close()
    assert data.count(b"HTTP/1.1 200 OK\r\n") == 3
    assert data.index(b"GET /1? ") < data.index(b"POST /2? abc") < data.index(b"GET /3? ")


def test_trickled_request_head_is_cut_off_at_the_timeout():
    with running_server(echo_app, workers=1, timeout=0.5) as server:
        sock = raw_connect(server)
        sock.sendall(b"GET /")
        started = time.monotonic()
        closed = False
        for _ in range(60):  # one byte every 50 ms: each read is quick, the head never ends
            try:
                sock.sendall(b"x")
            except OSError:
                closed = True
                break
            if is_closed_by_peer(sock, 0.05):
                closed = True
                break
        elapsed = time.monotonic() - started
        sock.close()
        assert fetch(connect(server))[0] == 200  # the only worker is free again
    assert closed and elapsed < 2.0


def test_more_clients_than_workers_are_all_served():
    lock = threading.Lock()
    active = [0, 0]  # current, highest

    def app(environ, start_response):
        with lock:
            active[0] += 1
            active[1] = max(active)
        time.sleep(0.02)
        with lock:
            active[0] -= 1
        return echo_app(environ, start_response)

    results = []
    with running_server(app, workers=2) as server:
        def client(number):
            results.append(fetch(connect(server), "GET", "/%d" % number)[::2])

        threads = [threading.Thread(target=client, args=(n,)) for n in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT)
    assert sorted(results) == sorted((200, b"GET /%d? " % n) for n in range(12))
    assert active[1] <= 2


@pytest.mark.parametrize("hang_up", [socket.socket.close, reset], ids=["fin", "reset"])
def test_client_disconnecting_mid_upload_leaves_the_server_serving(quiet, hang_up):
    outcome = []
    reading = threading.Event()
    done = threading.Event()

    def app(environ, start_response):
        if environ["REQUEST_METHOD"] == "GET":
            return echo_app(environ, start_response)
        stream, total = environ["wsgi.input"], 0
        try:
            chunk = stream.read(1000)
            while chunk:
                total += len(chunk)
                reading.set()
                chunk = stream.read(1000)
        except OSError as ex:
            outcome.append(ex)
        else:
            outcome.append(total)
        finally:
            done.set()
        start_response("400 Bad Request", [("Content-Length", "0")])
        return []

    with running_server(app) as server:
        sock = raw_connect(server)
        sock.sendall(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n")
        sock.sendall(b"x" * 10000)
        assert reading.wait(WAIT)
        hang_up(sock)
        assert done.wait(WAIT)
        status, _, _ = fetch(connect(server), "GET", "/after")
    assert status == 200
    assert isinstance(outcome[0], OSError) or outcome[0] < 1000000


@pytest.mark.parametrize("body", ["iterable", "file"])
def test_client_disconnecting_mid_response_is_logged_at_debug(quiet, tmp_path, body):
    path = tmp_path / "big.bin"
    path.write_bytes(DATA * 16)

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/after":
            return echo_app(environ, start_response)
        start_response("200 OK", [("Content-Length", str(len(DATA) * 16))])
        if body == "file":
            return environ["wsgi.file_wrapper"](open(str(path), "rb"))
        return iter([DATA] * 16)

    with running_server(app) as server:
        sock = raw_connect(server)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 200 ")
        reset(sock)
        wait_for_record(quiet, lambda r: '"GET / HTTP/1.1" 200' in r.getMessage())
        assert fetch(connect(server), "GET", "/after")[0] == 200
    assert any("went away" in r.getMessage() for r in quiet.records if r.levelno == logging.DEBUG)


# ---------------------------------------------------------------- errors and logging

def test_app_errors_become_500_and_go_to_the_log_not_stderr(caplog, capsys):
    def app(environ, start_response):
        if environ["PATH_INFO"] == "/crash":
            raise RuntimeError("boom")
        start_response("200 OK", [("Content-Length", "0"), ("X-Evil", "a\r\nSet-Cookie: x=1")])
        return []

    with running_server(app) as server:
        conn = connect(server)
        crash = fetch(conn, "GET", "/crash")
        evil = fetch(connect(server), "GET", "/evil")
    assert crash[0] == evil[0] == 500
    assert evil[1].getheader("Set-Cookie") is None
    assert crash[1].getheader("Connection") == "close"
    errors = [r for r in caplog.records if r.name == "webassets.server" and r.exc_info]
    assert {type(r.exc_info[1]) for r in errors} == {RuntimeError, ValueError}
    assert capsys.readouterr().err == ""


def test_access_log_line_per_request(caplog, capsys):
    caplog.set_level(logging.INFO, logger="webassets.access")
    with running_server(echo_app) as server:
        fetch(connect(server), "GET", "/a/b?x=1", headers={"User-Agent": 'tester "1"'})
        bad = raw_connect(server)
        bad.sendall(b"NONSENSE\r\n\r\n")  # not even a method and a path
        bad_status = read_response(bad)[0]
        bad.close()
        ok = wait_for_record(caplog, lambda r: "/a/b" in r.getMessage())
        refused = wait_for_record(caplog, lambda r: "NONSENSE" in r.getMessage())
    assert bad_status == 400
    line = ok.getMessage()
    # Apache combined format, then the request id ('-': echo_app sets none) and the duration.
    assert re.match(r'127\.0\.0\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\] '
                    r'"GET /a/b\?x=1 HTTP/1\.1" 200 13 "-" "tester \\"1\\"" - [0-9.]+ms\Z', line), line
    assert refused.name == "webassets.access" and " 400 " in refused.getMessage()
    assert capsys.readouterr().err == ""


def test_make_server_binds_with_the_backlog_and_rejects_a_non_positive_pool():
    server = make_server(echo_app, "127.0.0.1", 0, backlog=64)
    server.server_close()
    assert server.server_port > 0 and server.request_queue_size == 64
    with pytest.raises(ValueError):
        make_server(echo_app, "127.0.0.1", 0, workers=0)


# ---------------------------------------------------------------- shutdown

def test_graceful_shutdown_waits_for_an_in_flight_request():
    started, release = threading.Event(), threading.Event()
    result = []

    def app(environ, start_response):
        started.set()
        release.wait(WAIT)
        start_response("200 OK", [("Content-Length", "4")])
        return [b"done"]

    with running_server(app) as server:
        client = threading.Thread(target=lambda: result.append(fetch(connect(server))))
        client.start()
        assert started.wait(WAIT)
        stopper = threading.Thread(target=server.shutdown)
        stopper.start()
        stopper.join(0.2)
        assert stopper.is_alive()  # still waiting for the request
        release.set()
        stopper.join(WAIT)
        assert not stopper.is_alive()
        client.join(WAIT)
    status, response, body = result[0]
    assert (status, body) == (200, b"done")
    assert response.getheader("Connection") == "close"


def test_shutdown_closes_idle_keep_alive_connections_at_once():
    with running_server(echo_app, timeout=WAIT) as server:
        conn = connect(server)
        assert fetch(conn)[0] == 200
        started = time.monotonic()
        server.shutdown()
        elapsed = time.monotonic() - started
        assert is_closed_by_peer(conn.sock, WAIT)
    assert elapsed < 1.0


@pytest.mark.skipif(not hasattr(signal, "SIGTERM") or os.name != "posix", reason="POSIX signals")
def test_serve_finishes_the_in_flight_request_on_sigterm_and_exits_0():
    script = "\n".join([
        "import sys, time",
        "sys.path.insert(0, sys.argv[1])",
        "from webassets.server import serve",
        "def app(environ, start_response):",
        "    print('in-flight', flush=True)",
        "    time.sleep(0.3)",
        "    start_response('200 OK', [('Content-Length', '4')])",
        "    return [b'done']",
        "serve(app, '127.0.0.1', 0, workers=2, timeout=5,",
        "      ready=lambda server: print(server.server_port, flush=True))",
    ])
    proc = subprocess.Popen([sys.executable, "-c", script, ROOT], bufsize=0,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        def next_line():
            assert select.select([proc.stdout], [], [], WAIT)[0], "no output from the server"
            return proc.stdout.readline().decode().strip()

        port = int(next_line())
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
        conn.request("GET", "/slow")
        assert next_line() == "in-flight"
        proc.send_signal(signal.SIGTERM)
        response = conn.getresponse()
        assert (response.status, response.read()) == (200, b"done")
        assert proc.wait(WAIT) == 0
        assert b"Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


# ---------------------------------------------------------------- slow and many clients

def body_app(environ, start_response):
    """Read the whole body in 1 KiB reads; answer with its length."""
    body, total = environ["wsgi.input"], 0
    while True:
        data = body.read(1024)
        if not data:
            break
        total += len(data)
    payload = str(total).encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(payload)))])
    return [payload]


def served_promptly(server, path="/other"):
    """Return the seconds a fresh connection waits for an answer to GET `path`."""
    started = time.monotonic()
    status, _, body = fetch(connect(server), "GET", path)
    assert (status, body) == (200, b"GET %s? " % path.encode())
    return time.monotonic() - started


def test_clients_trickling_request_heads_hold_no_slot(quiet):
    with running_server(echo_app, workers=1) as server:
        trickling = [raw_connect(server) for _ in range(20)]
        for sock in trickling:
            sock.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\nX-Pad: ")
        assert served_promptly(server) < 1.0
        for sock in trickling:  # and they are still served once their heads are complete
            sock.sendall(b"y\r\n\r\n")
        assert [read_response(sock)[0] for sock in trickling] == [200] * 20


def test_a_slow_upload_holds_no_slot_while_it_waits_for_its_body(quiet):
    app = lambda environ, start_response: (  # noqa: E731
        body_app if environ["REQUEST_METHOD"] == "POST" else echo_app)(environ, start_response)
    with running_server(app, workers=1) as server:
        slow = raw_connect(server)
        slow.sendall(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 4096\r\n\r\n" + b"a" * 100)
        time.sleep(0.2)  # the app is now reading the body, in the only slot's thread
        assert served_promptly(server) < 1.0
        slow.sendall(b"b" * 3996)
        assert read_response(slow)[::2] == (200, b"4096")


def test_a_client_slow_to_read_a_download_holds_no_slot(quiet, tmp_path):
    path = tmp_path / "big.bin"
    path.write_bytes(os.urandom(32 * 1024 * 1024))  # far more than the socket buffers hold
    with running_server(file_app(str(path)), workers=1) as server:
        slow = raw_connect(server)
        slow.sendall(b"GET /file HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.2)  # sendfile(2) is now blocked on the full socket
        assert served_promptly(server) < 1.0
        received = 0
        while received <= 32 * 1024 * 1024:  # the stalled download then completes
            data = slow.recv(1024 * 1024)
            assert data, "closed after %d bytes" % received
            received += len(data)


def test_a_slow_transfer_is_cut_only_after_the_timeout_of_silence(quiet):
    with running_server(body_app, timeout=0.5) as server:
        steady = raw_connect(server)
        steady.sendall(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\n\r\n")
        started = time.monotonic()
        for _ in range(12):  # 2.4 s in all, far beyond the timeout, but never 0.5 s silent
            time.sleep(0.2)
            steady.sendall(b"z")
        assert read_response(steady)[::2] == (200, b"12")
        assert time.monotonic() - started > 2.0
        silent = raw_connect(server)
        silent.sendall(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\n\r\nzz")
        assert is_closed_by_peer(silent, WAIT)


def test_connections_beyond_the_limit_get_503_and_are_closed(quiet):
    with running_server(echo_app, max_connections=3) as server:
        held = [raw_connect(server) for _ in range(3)]
        time.sleep(0.1)  # let the listener accept them
        extra = raw_connect(server)
        extra.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        status, response, body = read_response(extra)
        assert (status, response.getheader("Connection")) == (503, "close")
        assert response.getheader("Retry-After") and body.startswith(b"Too many connections")
        assert response.getheader("X-Content-Type-Options") == "nosniff"
        assert is_closed_by_peer(extra, WAIT)
        held.pop().close()
        time.sleep(0.1)
        assert served_promptly(server) < 1.0
        assert server.open_connections <= 3


@pytest.mark.parametrize("head, status", [
    (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", 414),
    (b"GET / HTTP/1.1\r\n" + b"X-Pad: %s\r\n" % (b"b" * 1000) * 70 + b"\r\n", 431),
])
def test_oversized_request_heads_are_refused(quiet, head, status):
    with running_server(echo_app) as server:
        sock = raw_connect(server)
        try:
            sock.sendall(head)
        except ConnectionResetError:
            pass  # closed while we were still sending: the answer came first
        status_got, response, _ = read_response(sock)
        assert status_got == status
        assert response.getheader("X-Content-Type-Options") == "nosniff"
        assert "sandbox" in response.getheader("Content-Security-Policy")
        assert served_promptly(server) < 1.0


def test_discarding_an_unread_body_never_eats_the_next_request(quiet):
    def app(environ, start_response):
        if environ["REQUEST_METHOD"] == "GET":
            return echo_app(environ, start_response)
        start_response("403 Forbidden", [("Content-Length", "2")])
        return [b"no"]  # the body is left unread: the server drains it

    with running_server(app) as server:
        sock = raw_connect(server)
        sock.sendall(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
        assert read_response(sock)[::2] == (403, b"no")
        # The rest of the body and the next request arrive together, after the answer.
        sock.sendall(b"x" * 1000 + b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(sock)[::2] == (200, b"GET /next? ")
