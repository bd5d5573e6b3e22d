"""One HTTP/1.1 client connection: its socket, the request head and body, and the response."""

import collections
import io
import logging
import os
import re
import select
import socket
import stat
import sys
import threading
import time
import wsgiref.handlers
import wsgiref.simple_server
import wsgiref.util
from http import HTTPStatus
from typing import Callable, Optional

from .. import __version__, logutil

__all__ = ["Channel", "Connection", "FileWrapper", "RequestBody", "Slots", "take_head"]

logger = logging.getLogger("webassets.server")

SERVER_SOFTWARE = "webassets/" + __version__
BLOCK_SIZE = 256 * 1024        # file_wrapper read size when sendfile(2) cannot be used
SENDFILE_CHUNK = 8 * 1024 ** 2  # one sendfile(2) call at most, so a reader's stall is noticed
DRAIN_LIMIT = 64 * 1024        # unread request body we discard to keep a connection alive
LINGER_SECONDS = 2.0           # how long a closing connection swallows a body still arriving
MAX_LINE = 65536               # longest request line, as in http.server
MAX_HEAD = 64 * 1024           # longest request head (line and headers)
KEEPALIVE_WAIT = 0.002         # how long a thread waits for a kept-alive client's next request

# On the server's own error pages (400, 408, 411, 414, 431, 503), which the app never sees.
SAFE_ERROR_HEADERS = (("X-Content-Type-Options", "nosniff"),
                      ("Content-Security-Policy", "default-src 'none'; sandbox"))
# A client that hangs up or stalls: nobody is left to read an error page.
CLIENT_ERRORS = (BrokenPipeError, ConnectionAbortedError, ConnectionResetError, socket.timeout)

_DIGITS = re.compile(r"[0-9]{1,18}\Z")
_UNSAFE_HEADER = re.compile(r"[\r\n\0]")
_HEAD_END = re.compile(b"\r?\n\r?\n")
# SECURITY: request lines and headers are client text; escape it so it cannot forge log lines.
_escape = logutil.escape


def take_head(pending):
    """Remove the complete request head from the start of `pending` and return it.

    Returns None while the head is incomplete, or the HTTPStatus to refuse it with once its
    request line is longer than MAX_LINE (414) or the head longer than MAX_HEAD (431).
    Empty lines before the request line belong to the head (RFC 7230 3.5: ignored).
    """
    start = len(pending) - len(pending.lstrip(b"\r\n"))
    match = _HEAD_END.search(pending, start)
    if match is None and len(pending) <= MAX_HEAD:
        return None
    if pending.find(b"\n", start, start + MAX_LINE + 1) < 0:
        return HTTPStatus.REQUEST_URI_TOO_LONG
    if match is None or match.end() > MAX_HEAD:
        return HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE
    head = bytes(pending[:match.end()])
    del pending[:match.end()]
    return head


def _content_length(value) -> Optional[int]:
    """Return a response's Content-Length as an int, or None if missing or malformed."""
    if value is None or not _DIGITS.match(value.strip()):
        return None
    return int(value)


def _do_nothing():
    pass


def _ready(sock, events, timeout) -> bool:
    """Return True if `sock` is ready for `events` (select.POLLIN/POLLOUT) within `timeout` s."""
    try:
        if hasattr(select, "poll"):  # NOTE: select() fails on descriptors above 1023
            poller = select.poll()
            poller.register(sock, events)
            return bool(poller.poll(timeout * 1000.0))
        lists = ([sock], [], []) if events == select.POLLIN else ([], [sock], [])
        return any(select.select(*lists, timeout))
    except (OSError, ValueError):  # closed meanwhile: let the next call on it fail
        return True


class Slots:
    """The request slots: how many requests of a process may run Python code at once.

    A thread takes a slot before it runs the app and gives it back while it waits on its
    client (see Channel), so a slow client costs a thread and a socket but no slot. Slots
    are handed over first come, first served: a thread that gives one back and asks again
    at once (keep-alive) must not overtake the threads already waiting, or their requests
    wait for ever longer.
    """

    def __init__(self, count: int):
        self.count = count
        self._free = count
        self._lock = threading.Lock()
        self._waiters = collections.deque()  # one locked Lock per waiting thread

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc_info):
        self.release()

    def acquire(self):
        """Take a slot, waiting behind the threads that asked first."""
        with self._lock:
            if self._free and not self._waiters:
                self._free -= 1
                return
            turn = threading.Lock()
            turn.acquire()
            self._waiters.append(turn)
        turn.acquire()  # release() hands this thread the slot directly

    def release(self):
        """Give the slot back: to the longest-waiting thread, if any."""
        with self._lock:
            if self._waiters:
                self._waiters.popleft().release()
            else:
                self._free += 1


class Channel:
    """A client socket in non-blocking mode; a wait on the client gives up the request slot.

    `pending` holds bytes received but not yet consumed (the start of a body, or of the
    next request). A wait longer than `timeout` seconds of silence raises socket.timeout;
    there is no limit on a transfer's total duration.
    """

    def __init__(self, sock, timeout: float):
        sock.setblocking(False)
        self.sock = sock
        self.timeout = timeout
        self.pending = bytearray()
        self.slots = None  # set while this thread holds one of them

    def fileno(self) -> int:
        return self.sock.fileno()

    def recv(self, size: int) -> bytes:
        """Return up to `size` bytes, waiting for at least one; b"" at EOF."""
        if self.pending:
            data = bytes(self.pending[:size])
            del self.pending[:size]
            return data
        while True:
            try:
                return self.sock.recv(size)
            except BlockingIOError:
                self._wait(select.POLLIN)

    def fill(self, limit: int) -> Optional[bool]:
        """Append what has arrived (at most `limit` bytes) to `pending` without waiting.

        Return True if bytes were added, False at EOF, None if nothing is there yet.
        """
        try:
            data = self.sock.recv(limit)
        except (BlockingIOError, InterruptedError):
            return None
        self.pending += data
        return bool(data)

    def sendall(self, data) -> None:
        """Send all of `data`, waiting for the client to read as long as it keeps reading."""
        view = memoryview(data)
        while view:
            try:
                view = view[self.sock.send(view):]
            except BlockingIOError:
                self._wait(select.POLLOUT)

    def sendfile(self, fileno: int, offset: int, count: int) -> int:
        """Send `count` bytes of a regular file from `offset` with sendfile(2); return the sent.

        Returns fewer only if the file is shorter than that.
        """
        sent = 0
        while sent < count:
            try:
                done = os.sendfile(self.sock.fileno(), fileno, offset + sent,
                                   min(count - sent, SENDFILE_CHUNK))
            except BlockingIOError:
                self._wait(select.POLLOUT)
                continue
            if not done:
                break  # the file ended early
            sent += done
        return sent

    def wait_readable(self, timeout: float) -> bool:
        """Return True if the client sends something (or closes) within `timeout` seconds."""
        return _ready(self.sock, select.POLLIN, timeout)

    def _wait(self, events):
        """Wait until the socket is ready for `events`, holding no slot meanwhile."""
        slots = self.slots
        if slots is not None:
            slots.release()
        try:
            if not _ready(self.sock, events, self.timeout):
                raise socket.timeout("the client was silent for %g s" % self.timeout)
        finally:
            if slots is not None:
                slots.acquire()


class _Writer:
    """The `wfile` of a connection: blocking writes through its Channel."""

    def __init__(self, channel):
        self._channel = channel

    def write(self, data) -> int:
        self._channel.sendall(data)
        return len(data)

    def flush(self):
        pass


class FileWrapper(wsgiref.util.FileWrapper):
    """wsgi.file_wrapper: regular files go out with sendfile(2), others in blocks.

    The server sends exactly the response's Content-Length from the file's current position,
    so an app serves a range by seeking to its start and declaring its length.
    """

    def __init__(self, filelike, blksize: int = BLOCK_SIZE):
        super().__init__(filelike, blksize)


class RequestBody(object):
    """wsgi.input: the request body, never read past its Content-Length.

    read(n) returns n bytes unless the body ends first. A client that disconnects or stays
    silent too long makes read() raise (OSError, socket.timeout) or return short; either
    way `failed` is set and the connection is closed after the response.
    """

    def __init__(self, channel, length: int, send_continue: Optional[Callable[[], None]] = None):
        self._channel = channel
        self.remaining = length
        self.failed = False
        self._send_continue = send_continue if length else None

    @property
    def continue_pending(self) -> bool:
        """Return True if the client waits for "100 Continue" that was never sent."""
        return self._send_continue is not None

    def read(self, size: int = -1) -> bytes:
        """Read `size` bytes (all that is left if negative), fewer only at the body's end."""
        size = self._allowed(size)
        chunks, wanted = [], size
        while wanted:
            data = self._recv(wanted)
            if not data:
                break
            chunks.append(data)
            wanted -= len(data)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def readline(self, size: int = -1) -> bytes:
        """Read one line, at most `size` bytes."""
        size = self._allowed(size)
        channel, line = self._channel, b""
        while size:
            if not channel.pending:
                data = self._recv(size)
                if not data:
                    break
                channel.pending[:0] = data
            end = channel.pending.find(b"\n", 0, size)
            take = size if end < 0 else end + 1
            part = channel.recv(take)
            self.remaining -= len(part)
            line += part
            size -= len(part)
            if end >= 0:
                break
        return line

    def readlines(self, hint: int = -1) -> list:
        """Read lines until about `hint` bytes (all if negative)."""
        lines, total = [], 0
        for line in self:
            lines.append(line)
            total += len(line)
            if 0 < hint <= total:
                break
        return lines

    def __iter__(self):
        line = self.readline()
        while line:
            yield line
            line = self.readline()

    def seal_continue(self) -> None:
        """Never send "100 Continue" from now on: the final response is going out."""
        if self._send_continue is not None:
            self._send_continue = _do_nothing  # still pending: the client may hold the body back

    def discard(self) -> None:
        """Read and drop the rest of the body; raise like read()."""
        while self.remaining and not self.failed:
            self._recv(min(BLOCK_SIZE, self.remaining))

    def _allowed(self, size):
        if size is None or size < 0 or size > self.remaining:
            return self.remaining
        return size

    def _recv(self, size):
        """Receive up to `size` (<= remaining) bytes; b"" and `failed` if the client left."""
        # Never past the body: what follows it is the client's next request.
        size = min(size, self.remaining)
        if not size:
            return b""
        if self._send_continue is not None:
            send, self._send_continue = self._send_continue, None
            send()
        try:
            data = self._channel.recv(size)
        except (OSError, ValueError):
            self.failed = True
            raise
        self.remaining -= len(data)
        if not data:
            self.failed = True  # EOF before Content-Length: the client went away
        return data


class ServerHandler(wsgiref.handlers.SimpleHandler):
    """Run the app for one request and frame its response for a kept-alive connection."""

    http_version = "1.1"
    server_software = SERVER_SOFTWARE
    wsgi_file_wrapper = FileWrapper
    # SECURITY: wsgiref copies the whole process environment (secrets included) into every
    # request environ; the app gets its settings passed in and needs none of it.
    os_environ = {}
    request_handler = None  # the Connection, set right after construction
    _body_allowed = True
    _expected = None  # the response's declared Content-Length

    def run(self, application):
        """Call the app and send its response; errors never escape as tracebacks on stderr."""
        try:
            self.setup_environ()
            self.result = application(self.environ, self.start_response)
            self.finish_response()
        except CLIENT_ERRORS as ex:
            self.request_handler.close_connection = True
            logger.debug("Client %s went away: %r", self.request_handler.client_address[0], ex)
            self.close()
        except Exception:
            self.request_handler.close_connection = True
            try:
                self.handle_error()
            except Exception:
                self.close()
                raise

    def handle_error(self):
        """Log the app's exception; send a 500 unless the response has already started."""
        self.log_exception(sys.exc_info())
        if self.headers_sent:
            self.close()  # a cut-short body; closing the connection is all we can tell the client
        else:
            self.result = self.error_output(self.environ, self.start_response)
            self.finish_response()

    def log_exception(self, exc_info):
        logger.error("Error serving %r for %s", self.request_handler.requestline,
                     self.request_handler.client_address[0], exc_info=exc_info)

    def finish_response(self):
        """Send the body (sendfile(2) for a wrapped file), then close the app's iterable."""
        try:
            if not self.result_is_file() or not self.sendfile():
                for data in self.result:
                    self.write(data)
                    if self._body_complete():
                        break  # e.g. a wrapped file longer than the range being sent
            self.finish_content()
        except Exception:
            self._close_result()  # bpo-29183: close it before error handling replaces it
            raise
        self.close()

    def sendfile(self):
        """Send a wrapped regular file with sendfile(2); return False to iterate instead."""
        filelike = self.result.filelike
        try:
            offset = filelike.tell()
            info = os.fstat(filelike.fileno())
        except (AttributeError, OSError, ValueError):
            return False
        if not stat.S_ISREG(info.st_mode) or "b" not in getattr(filelike, "mode", "b"):
            return False
        if not self.headers_sent:
            self.headers.setdefault("Content-Length", str(max(0, info.st_size - offset)))
            self.send_headers()
        if not self._body_allowed:
            return True
        if self._expected is None:
            return False
        count = self._expected - self.bytes_sent
        if count > 0:
            self.bytes_sent += self.request_handler.channel.sendfile(
                filelike.fileno(), offset, count)
        return True

    def write(self, data):
        """Send `data`, preceded by the headers on the first call (one packet when small)."""
        if type(data) is not bytes:
            raise TypeError("write() argument must be bytes, not %s" % type(data).__name__)
        if not self.status:
            raise AssertionError("write() before start_response()")
        head = b""
        if not self.headers_sent:
            self.bytes_sent = len(data)  # wsgiref: the Content-Length of a one-item body
            head = self._head()
            self.bytes_sent = 0
        data = self._clip(data)
        if head or data:
            self._write(head + data)
            self._flush()
        self.bytes_sent += len(data)

    def send_headers(self):
        self._write(self._head())
        self._flush()

    def cleanup_headers(self):
        """Complete the headers and decide whether the connection survives this response.

        Raises ValueError for a header containing CR, LF or NUL (the app gets a 500 instead).
        """
        super().cleanup_headers()
        for name, value in self.headers.items():
            if _UNSAFE_HEADER.search(name) or _UNSAFE_HEADER.search(value):
                raise ValueError("response header %r contains CR, LF or NUL" % name)
        code = int(self.status[:3])
        # RFC 7230 3.3: HEAD, 1xx, 204 and 304 responses never carry a body
        self._body_allowed = (self.environ["REQUEST_METHOD"] != "HEAD"
                              and code >= 200 and code not in (204, 304))
        self._expected = _content_length(self.headers.get("Content-Length"))
        self.headers.setdefault("Date", wsgiref.handlers.format_date_time(time.time()))
        self.headers.setdefault("Server", self.server_software)
        handler = self.request_handler
        if self._must_close():
            handler.close_connection = True
        self.stdin.seal_continue()
        if handler.close_connection:
            self.headers["Connection"] = "close"
        elif handler.request_version == "HTTP/1.0":
            self.headers["Connection"] = "keep-alive"

    def finish_content(self):
        super().finish_content()
        if self._body_allowed and self._expected is not None and self.bytes_sent < self._expected:
            logger.warning("Response to %r ended %d bytes short of its Content-Length",
                           self.request_handler.requestline, self._expected - self.bytes_sent)
            self.request_handler.close_connection = True

    def close(self):
        """Close the app's iterable, write the access log line and reset for reuse."""
        status, sent = self.status, self.bytes_sent
        # The app leaves the request id in the environ; take it before the reset below.
        self.request_handler.request_id = (self.environ or {}).get(logutil.REQUEST_ID_KEY)
        try:
            self._close_result()
        except Exception:  # the app's close(): the response is out, so log rather than send a 500
            logger.exception("Error closing the response to %r", self.request_handler.requestline)
            self.request_handler.close_connection = True
        finally:
            self.result = self.headers = self.status = self.environ = None
            self.bytes_sent = 0
            self.headers_sent = False
            self.request_handler.log_request(status.split(" ", 1)[0] if status else "-", sent)

    def _head(self):
        self.cleanup_headers()
        self.headers_sent = True
        if not self.client_is_modern():
            return b""
        status = "HTTP/%s %s\r\n" % (self.http_version, self.status)
        return status.encode("iso-8859-1") + bytes(self.headers)

    def _must_close(self):
        body = self.stdin
        return (self.request_handler.server.stopping
                # NOTE: no chunked responses; without a length only the close ends the body
                or (self._body_allowed and self._expected is None)
                or body.remaining > DRAIN_LIMIT
                or bool(body.remaining and body.continue_pending))

    def _clip(self, data):
        """Return the part of `data` the response may still carry."""
        if not self._body_allowed:
            return b""
        room = len(data) if self._expected is None else self._expected - self.bytes_sent
        if len(data) > room and not self.result_is_file():  # a wrapped file may outrun a range
            logger.warning("Response to %r is longer than its Content-Length; truncated",
                           self.request_handler.requestline)
        return data[:max(0, room)]

    def _body_complete(self):
        return self.headers_sent and (not self._body_allowed or (
            self._expected is not None and self.bytes_sent >= self._expected))

    def _close_result(self):
        result, self.result = self.result, None
        if hasattr(result, "close"):
            result.close()


class Connection(wsgiref.simple_server.WSGIRequestHandler):
    """One client connection: serves its requests on a pool thread, one complete head at a time.

    The listener reads request heads without a thread; `run()` is called on a pool thread
    with a complete head and serves requests while the client keeps sending them at once.
    """

    protocol_version = "HTTP/1.1"
    # NOTE: HTTP/0.9 is long gone; assuming 1.0 lets a garbled request line get a real 400.
    default_request_version = "HTTP/1.0"
    server_version = SERVER_SOFTWARE
    # Headers and body are separate writes: with Nagle the body could wait ~40 ms for an ACK.
    disable_nagle_algorithm = True
    _linger = False
    _started = None
    _started_wall = None
    _expect_continue = False
    request_id = None  # the app's request id, for the access log line
    requestline = ""
    request_version = command = None
    deadline = None  # while the listener holds it: when it is closed unless a head arrives

    def __init__(self, request, client_address, server):
        # Unlike socketserver's handlers, do not serve from the constructor: the listener
        # reads the request head first, and between requests an idle client holds no thread.
        self.request = self.connection = request
        self.client_address = client_address
        self.server = server
        self.timeout = server.connection_timeout
        self.close_connection = False
        if self.disable_nagle_algorithm:
            request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        self.channel = Channel(request, self.timeout)
        self.wfile = _Writer(self.channel)
        self.rfile = None

    def run(self, head, slots) -> bool:
        """Serve requests, starting with `head`; return True to hand the connection back.

        `head` is a complete request head, or the HTTPStatus to refuse an oversized one
        with. A request runs while holding one of `slots`. Returns False once the
        connection is closed, True when it is idle (the listener then waits for the next).
        """
        while True:
            try:
                with slots:
                    self.channel.slots = slots
                    try:
                        self.handle_one_request(head)
                    finally:
                        self.channel.slots = None
                if not self.close_connection:
                    head = self._next_head()
                    if head is None:
                        return True
                    continue
            except CLIENT_ERRORS as ex:
                logger.debug("Connection from %s ended: %r", self.client_address[0], ex)
            self.close()
            return False

    def close(self):
        """Finish the connection (lingering if a body was left unread) and close it."""
        try:
            if self._linger:
                self._lingering_close()
        finally:
            self.server.release(self)

    def handle_one_request(self, head):
        """Run the app on one request head, and leave the connection ready for the next."""
        self.close_connection = True
        self.headers = None
        self._expect_continue = False
        self.request_id = None
        self._started = time.monotonic()
        self._started_wall = time.time()
        logutil.clear_request_id()
        if isinstance(head, HTTPStatus):
            self.requestline = self.request_version = self.command = ""
            self._linger = True
            self.send_error(head)
            return
        head = bytes(head).lstrip(b"\r\n")
        line_end = head.find(b"\n") + 1
        self.raw_requestline = head[:line_end]
        self.rfile = io.BytesIO(head[line_end:])
        try:
            if not self.parse_request():
                return  # parse_request() has already sent the error
        finally:
            self.rfile = None
        length = self._body_length()
        if length is None:
            self._linger = True  # the rejected body may still be on its way
            return
        body = RequestBody(self.channel, length,
                           self._send_continue if self._expect_continue else None)
        environ = self.get_environ()
        if length:
            environ["CONTENT_LENGTH"] = str(length)
        handler = ServerHandler(body, self.wfile, self.get_stderr(), environ,
                                multithread=True, multiprocess=False)
        handler.request_handler = self
        handler.run(self.server.get_app())
        self._settle_body(body)
        if self.server.stopping:
            self.close_connection = True

    def handle_expect_100(self):
        """Defer "100 Continue" to the app's first read: an early 403 or 413 saves the upload."""
        self._expect_continue = True
        return True

    def end_headers(self):
        """End the head of one of the server's own error pages (the app's go through WSGI)."""
        # SECURITY: such a page can echo client text; it never runs script or gets sniffed.
        for name, value in SAFE_ERROR_HEADERS:
            self.send_header(name, value)
        super().end_headers()

    def log_request(self, code="-", size="-"):
        """Write the access log line: Apache combined, then the request id and duration."""
        headers = self.headers or {}
        elapsed = time.monotonic() - self._started if self._started else 0.0
        logutil.log_access(self.client_address[0], self.requestline, getattr(code, "value", code),
                           size if isinstance(size, int) else 0, headers.get("Referer"),
                           headers.get("User-Agent"), self._started_wall or time.time(),
                           elapsed, self.request_id)
        self.request_id = None

    def log_message(self, fmt, *args):
        logger.debug("%s: %s", self.client_address[0], _escape(fmt % args))

    def version_string(self):
        return self.server_version

    def _next_head(self):
        """Return the next request's head if it is already here or arrives at once, else None.

        Handing an idle connection back costs a wake-up and a selector round trip in the
        listener; a client that sends its next request right away (keep-alive) is cheaper
        served by this thread.
        """
        channel = self.channel
        head = take_head(channel.pending)
        if head is None and channel.wait_readable(KEEPALIVE_WAIT):
            if channel.fill(MAX_HEAD) is False:
                self.close_connection = True
                raise ConnectionResetError("closed by the client")
            head = take_head(channel.pending)
        return head

    def _body_length(self):
        """Return the request body's length, or None after answering 411 or 400."""
        if self.headers.get("Transfer-Encoding") is not None:
            # NOTE: no dechunking; RFC 7230 3.3.3 lets a server ask for a Content-Length.
            self.send_error(HTTPStatus.LENGTH_REQUIRED, "Send a Content-Length, not chunks")
            return None
        values = set(value.strip() for value in self.headers.get_all("Content-Length", []))
        if not values:
            return 0
        value = values.pop()
        # SECURITY: conflicting or odd lengths are how requests get smuggled past a proxy.
        if values or not _DIGITS.match(value):
            self.send_error(HTTPStatus.BAD_REQUEST, "Bad Content-Length")
            return None
        return int(value)

    def _send_continue(self):
        self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _settle_body(self, body):
        """Discard what the app left of a small body, or plan to close the connection."""
        if body.failed:
            self.close_connection = True
        elif body.remaining and (self.close_connection or body.continue_pending
                                 or body.remaining > DRAIN_LIMIT):
            self.close_connection = True
            self._linger = True
        elif body.remaining:
            body.discard()  # a timeout or reset here ends the connection in run()
            self.close_connection = body.failed

    def _lingering_close(self):
        """Swallow what the client still sends, so closing does not reset our response."""
        deadline = time.monotonic() + LINGER_SECONDS
        sock = self.connection
        try:
            sock.shutdown(socket.SHUT_WR)
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not _ready(sock, select.POLLIN, left):
                    break
                try:
                    if not sock.recv(BLOCK_SIZE):
                        break
                except (BlockingIOError, InterruptedError):
                    continue
        except OSError:  # the client had its chance
            pass
