"""Built-in HTTP/1.1 server: worker processes, each a fixed pool of threads running a WSGI app."""

import contextlib
import io
import logging
import os
import queue
import re
import select
import selectors
import signal
import socket
import socketserver
import stat
import sys
import threading
import time
import wsgiref.handlers
import wsgiref.simple_server
import wsgiref.util
from http import HTTPStatus
from typing import Callable
from typing import Optional

from . import __version__, logutil
from .supervisor import Supervisor

__all__ = ["FileWrapper", "WSGIServer", "make_server", "serve"]

logger = logging.getLogger(__name__)

SERVER_SOFTWARE = "webassets/" + __version__
BLOCK_SIZE = 256 * 1024        # file_wrapper read size when sendfile(2) cannot be used
DRAIN_LIMIT = 64 * 1024        # unread request body we discard to keep a connection alive
LINGER_SECONDS = 2.0           # how long a closing connection swallows a body still arriving
SHUTDOWN_TIMEOUT = 30.0        # how long shutdown() waits for in-flight requests
ACCEPT_BACKOFF = 0.1           # pause after accept() fails, e.g. out of file descriptors
MAX_LINE = 65536               # longest request line, as in http.server
KEEPALIVE_WAIT = 0.002         # how long a thread waits for a kept-alive client's next request

# A client that hangs up or stalls: nobody is left to read an error page.
CLIENT_ERRORS = (BrokenPipeError, ConnectionAbortedError, ConnectionResetError, socket.timeout)

_DIGITS = re.compile(r"[0-9]{1,18}\Z")
_UNSAFE_HEADER = re.compile(r"[\r\n\0]")
# SECURITY: request lines and headers are client text; escape it so it cannot forge log lines.
_escape = logutil.escape


def _content_length(value) -> Optional[int]:
    """Return a response's Content-Length as an int, or None if missing or malformed."""
    if value is None or not _DIGITS.match(value.strip()):
        return None
    return int(value)


def _do_nothing():
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

    A client that disconnects or stalls makes read() raise (OSError, socket.timeout) or return
    short; either way `failed` is set and the connection is closed after the response.
    """

    def __init__(self, rfile, length: int, send_continue: Optional[Callable[[], None]] = None):
        self._rfile = rfile
        self.remaining = length
        self.failed = False
        self._send_continue = send_continue if length else None

    @property
    def continue_pending(self) -> bool:
        """Return True if the client waits for "100 Continue" that was never sent."""
        return self._send_continue is not None

    def read(self, size: int = -1) -> bytes:
        """Read up to `size` bytes (all that is left if negative)."""
        return self._take(self._rfile.read, size)

    def readline(self, size: int = -1) -> bytes:
        """Read one line, at most `size` bytes."""
        return self._take(self._rfile.readline, size)

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
            self.read(BLOCK_SIZE)

    def _take(self, method, size):
        if size is None or size < 0 or size > self.remaining:
            size = self.remaining
        if not size:
            return b""
        if self._send_continue is not None:
            send, self._send_continue = self._send_continue, None
            send()
        try:
            data = method(size)
        except (OSError, ValueError):
            self.failed = True
            raise
        self.remaining -= len(data)
        if not data:
            self.failed = True  # EOF before Content-Length: the client went away
        return data


class _SocketReader(io.RawIOBase):
    """Raw socket reader: each read waits at most `timeout`, and never past `deadline`.

    The deadline bounds the whole request head, so a client trickling one byte at a time
    cannot hold a worker forever; body reads only have the per-read timeout.
    """

    def __init__(self, sock, timeout: float):
        super().__init__()
        self._sock = sock
        self.timeout = timeout
        self.deadline = None
        self._probing = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> Optional[int]:
        if self._probing:
            return None  # "no data without blocking": peek() then shows only the buffer
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout("request head not received in time")
            self._sock.settimeout(min(self.timeout, left))
        return self._sock.recv_into(buffer)

    def has_buffered(self, reader) -> bool:
        """Return True if `reader`, a BufferedReader over this one, holds unread bytes (no I/O)."""
        self._probing = True
        try:
            return bool(reader.peek(1))
        finally:
            self._probing = False

    def end_head(self) -> None:
        """Drop the head deadline and restore the plain per-read timeout."""
        self.deadline = None
        self._sock.settimeout(self.timeout)


class ServerHandler(wsgiref.handlers.SimpleHandler):
    """Run the app for one request and frame its response for a kept-alive connection."""

    http_version = "1.1"
    server_software = SERVER_SOFTWARE
    wsgi_file_wrapper = FileWrapper
    # SECURITY: wsgiref copies the whole process environment (secrets included) into every
    # request environ; the app gets its settings passed in and needs none of it.
    os_environ = {}
    request_handler = None  # the RequestHandler, set right after construction
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
        """Send a wrapped regular file with socket.sendfile(); return False to iterate instead."""
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
        if count > 0:  # socket.sendfile() reads to EOF when count is 0
            self.bytes_sent += self.request_handler.connection.sendfile(filelike, offset, count)
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


class RequestHandler(wsgiref.simple_server.WSGIRequestHandler):
    """One client connection; the server calls handle() whenever a request arrives on it."""

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

    def __init__(self, request, client_address, server):
        # Unlike socketserver's handlers, do not serve from the constructor: between requests
        # the server parks the connection, so an idle client holds no worker thread.
        self.request = request
        self.client_address = client_address
        self.server = server
        self.setup()

    def setup(self):
        self.timeout = self.server.connection_timeout
        super().setup()
        self.rfile.close()  # replaced by a reader that can put a deadline on the request head
        self._reader = _SocketReader(self.connection, self.timeout)
        self.rfile = io.BufferedReader(self._reader)

    def handle(self) -> bool:
        """Serve the requests that have arrived; return True to keep the connection open."""
        try:
            self.close_connection = False
            self.handle_one_request()
            while not self.close_connection and self._reader.has_buffered(self.rfile):
                self.handle_one_request()  # pipelined: the next request is already here
        except CLIENT_ERRORS as ex:
            logger.debug("Connection from %s ended: %r", self.client_address[0], ex)
            return False
        return not self.close_connection

    def close(self):
        """Finish the connection (lingering if a body was left unread) and close it."""
        try:
            self.finish()
        finally:
            self.server.shutdown_request(self.request)

    def handle_one_request(self):
        """Read one request, run the app on it, and leave the connection ready for the next."""
        self.close_connection = True
        self.headers = None
        self._expect_continue = False
        self.request_id = None
        logutil.clear_request_id()
        if not self._read_request_line() or not self.parse_request():
            return  # EOF, timeout, or parse_request() has already sent the error
        length = self._body_length()
        if length is None:
            self._linger = True  # the rejected body may still be on its way
            return
        self._reader.end_head()
        body = RequestBody(self.rfile, length,
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

    def finish(self):
        try:
            super().finish()
        finally:
            if self._linger:
                self._lingering_close()

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

    def _read_request_line(self):
        """Read the next request line; return False when the connection should close."""
        self._reader.deadline = time.monotonic() + self.timeout
        self.raw_requestline = self.rfile.readline(MAX_LINE + 1)
        self._started = time.monotonic()
        self._started_wall = time.time()
        if len(self.raw_requestline) > MAX_LINE:
            self.requestline = self.request_version = self.command = ""
            self._linger = True
            self.send_error(HTTPStatus.REQUEST_URI_TOO_LONG)
            return False
        return bool(self.raw_requestline)

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
            body.discard()  # a timeout or reset here ends the connection in handle()
            self.close_connection = body.failed

    def _lingering_close(self):
        """Swallow what the client still sends, so closing does not reset our response."""
        deadline = time.monotonic() + LINGER_SECONDS
        try:
            self.connection.shutdown(socket.SHUT_WR)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.connection.settimeout(left)
                if not self.connection.recv(BLOCK_SIZE):
                    break
        except OSError:  # includes socket.timeout: the client had its chance
            pass


class WSGIServer(wsgiref.simple_server.WSGIServer):
    """wsgiref's server with a fixed pool of worker threads and a graceful shutdown.

    serve_forever() accepts connections and watches them with a selector; a connection goes
    to one of `workers` threads only when a request arrives on it, so idle keep-alive clients
    hold no thread. A connection idle for `timeout` seconds is closed.
    """

    shutdown_timeout = SHUTDOWN_TIMEOUT

    def __init__(self, server_address, app, workers: int = 16, timeout: float = 60.0,
                 backlog: int = 128, handler_class=RequestHandler, listener=None):
        if workers < 1 or backlog < 1 or not timeout > 0:
            raise ValueError("workers, backlog and timeout must be positive (got %r, %r, %r)"
                             % (workers, backlog, timeout))
        self.address_family = socket.AF_INET6 if ":" in server_address[0] else socket.AF_INET
        self.request_queue_size = backlog
        self.workers = workers
        self.connection_timeout = float(timeout)
        self._ready = queue.Queue()  # connections with a request waiting, for the workers
        self._parking = []  # kept-alive connections the workers hand back to serve_forever()
        self._threads = []
        self._lock = threading.Lock()
        self._stopping = False
        self._accepting = False
        self._loop_done = threading.Event()
        self._loop_done.set()
        self._stopped = threading.Event()
        self._wake_in, self._wake_out = socket.socketpair()
        self._wake_in.setblocking(False)
        self._wake_out.setblocking(False)
        if listener is None:
            super().__init__(server_address, handler_class)
        else:
            # A worker process serving the socket its supervisor bound and listens on.
            super().__init__(server_address, handler_class, bind_and_activate=False)
            self.socket.close()
            self.socket = listener
            self.server_address = listener.getsockname()
            self._describe_address()
            self.socket.setblocking(False)
        self.set_app(app)

    @property
    def stopping(self) -> bool:
        """Return True once shutdown() or server_close() has been called."""
        return self._stopping

    def server_bind(self):
        socketserver.TCPServer.server_bind(self)
        self._describe_address()

    def _describe_address(self):
        host, port = self.server_address[:2]
        # NOTE: HTTPServer calls socket.getfqdn(), a DNS lookup that can stall startup.
        self.server_name = host if host not in ("", "0.0.0.0", "::") else socket.gethostname()
        self.server_port = port
        self.setup_environ()

    def server_activate(self):
        super().server_activate()
        self.socket.setblocking(False)  # accept() after select() must never block

    def serve_forever(self, poll_interval: float = 0.5):
        """Accept connections and pass the ready ones to the workers until shutdown().

        Idle connections are checked for their timeout every `poll_interval` seconds.
        """
        with self._lock:
            if self._stopping:
                return
            self._accepting = True
            self._loop_done.clear()
            if not self._threads:
                self._threads = [threading.Thread(target=self._work, daemon=True,
                                                  name="webassets-worker-%d" % number)
                                 for number in range(self.workers)]
                for thread in self._threads:
                    thread.start()
        try:
            with selectors.DefaultSelector() as selector:
                self._watch(selector, poll_interval)
        finally:
            self._loop_done.set()

    def shutdown(self, timeout: Optional[float] = None):
        """Stop accepting, let in-flight requests finish, then stop the workers.

        Waits at most `timeout` seconds (default `shutdown_timeout`) for the requests; idle
        connections are closed at once. Call it from another thread than serve_forever();
        a second call waits for the first to finish.
        """
        with self._lock:
            first = not self._stopping
            self._stopping = True
        self._wake()
        self._loop_done.wait()
        if not first:
            self._stopped.wait()
            return
        try:
            self._stop_workers(self.shutdown_timeout if timeout is None else timeout)
        finally:
            self._stopped.set()

    def server_close(self):
        """Close the listening socket and the connections still waiting for a worker.

        Call shutdown() first if serve_forever() is running.
        """
        super().server_close()
        with self._lock:
            self._stopping = True
        while True:
            try:
                connection = self._ready.get_nowait()
            except queue.Empty:
                break
            if connection is not None:
                connection.close()
        for thread in self._threads:
            if thread.is_alive():
                self._ready.put(None)
        self._wake_in.close()
        self._wake_out.close()

    def handle_error(self, request, client_address):
        logger.exception("Unexpected error serving %s", client_address[0])

    def _watch(self, selector, poll_interval):
        idle = {}  # connection -> when it is closed unless a request arrives
        selector.register(self.socket, selectors.EVENT_READ)
        selector.register(self._wake_in, selectors.EVENT_READ)
        next_sweep = time.monotonic() + poll_interval
        try:
            while not self._stopping:
                for key, _ in selector.select(poll_interval):
                    if key.fileobj is self.socket:
                        self._accept(selector, idle)
                    elif key.fileobj is self._wake_in:
                        self._drain_wakes()
                    else:
                        selector.unregister(key.fileobj)
                        del idle[key.data]
                        self._ready.put(key.data)
                with self._lock:
                    parked, self._parking = self._parking, []
                now = time.monotonic()
                for connection in parked:
                    selector.register(connection.connection, selectors.EVENT_READ, connection)
                    idle[connection] = now + self.connection_timeout
                if now >= next_sweep:
                    next_sweep = now + poll_interval
                    for connection in [c for c, until in idle.items() if until <= now]:
                        selector.unregister(connection.connection)
                        del idle[connection]
                        connection.close()
        finally:
            with self._lock:
                self._accepting = False
                parked, self._parking = self._parking, []
            for connection in list(idle) + parked:
                connection.close()

    def _accept(self, selector, idle):
        try:
            request, client_address = self.get_request()
        except BlockingIOError:
            return  # the client gave up between select() and accept()
        except OSError as ex:
            # e.g. EMFILE: back off until the idle sweep or a worker frees a descriptor
            logger.warning("Cannot accept connections: %s", ex)
            time.sleep(ACCEPT_BACKOFF)
            return
        try:
            connection = self.RequestHandlerClass(request, client_address, self)
        except OSError as ex:
            logger.debug("Connection from %s failed at once: %r", client_address[0], ex)
            self.shutdown_request(request)
            return
        selector.register(request, selectors.EVENT_READ, connection)
        idle[connection] = time.monotonic() + self.connection_timeout

    def _work(self):
        while True:
            connection = self._ready.get()
            if connection is None:
                return
            try:
                self._serve_connection(connection)
            except Exception:
                self.handle_error(connection.request, connection.client_address)
                self.shutdown_request(connection.request)

    def _serve_connection(self, connection):
        """Serve a connection's requests; park it once it goes quiet, close it when done."""
        while connection.handle():
            if not self._next_request_soon(connection):
                if not self._park(connection):
                    connection.close()
                return
        connection.close()

    def _next_request_soon(self, connection):
        """Return True if the client's next request arrives at once and no one else waits.

        Parking costs a wake-up and a selector round trip in serve_forever(); a client that
        sends its next request right away (keep-alive) is cheaper served by this thread.
        """
        if self._stopping or not self._ready.empty():
            return False
        return _readable(connection.connection, KEEPALIVE_WAIT)

    def _park(self, connection):
        """Hand a kept-alive connection back to serve_forever(); False if it has stopped."""
        with self._lock:
            if self._stopping or not self._accepting:
                return False
            self._parking.append(connection)
        self._wake()
        return True

    def _wake(self):
        try:
            self._wake_out.send(b"\0")
        except OSError:  # full (a wake-up is pending anyway) or already closed
            pass

    def _drain_wakes(self):
        try:
            self._wake_in.recv(4096)
        except OSError:
            pass

    def _stop_workers(self, timeout):
        for _ in self._threads:
            self._ready.put(None)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        busy = sum(1 for thread in self._threads if thread.is_alive())
        if busy:
            logger.warning("Gave up waiting for %d connection(s) after %.0f s", busy, timeout)


def make_server(app: Callable, host: str, port: int, workers: int = 16, timeout: float = 60.0,
                backlog: int = 128) -> WSGIServer:
    """Bind a server for `app` on host:port without serving yet (port 0: any free port).

    `server.server_port` tells the bound port. Raises OSError if the address cannot be bound
    and ValueError for a non-positive workers, timeout or backlog.
    """
    return WSGIServer((host, port), app, workers=workers, timeout=timeout, backlog=backlog)


def serve(app: Callable, host: str, port: int, workers: int = 16, timeout: float = 60.0,
          backlog: int = 128, ready: Optional[Callable[[WSGIServer], None]] = None,
          processes: int = 1, on_fork: Optional[Callable[[], None]] = None) -> None:
    """Serve `app` until SIGTERM or SIGINT, then let in-flight requests finish and return.

    With `processes` > 1 this process binds the socket, forks that many worker processes
    (each `workers` threads) and supervises them: a worker that dies is restarted, and a
    signal is passed on to the workers as SIGTERM. `on_fork()` runs first in every worker.
    `ready(server)` is called once the server listens. Signal handlers are installed only in
    the main thread; a second signal gets the previous handler (a second Ctrl-C aborts).
    Raises OSError if the address cannot be bound, ValueError for a non-positive count.
    """
    if processes < 1:
        raise ValueError("processes must be positive (got %r)" % (processes,))
    server = make_server(app, host, port, workers=workers, timeout=timeout, backlog=backlog)
    try:
        if processes == 1:
            _serve_here(server, (signal.SIGTERM, signal.SIGINT), ready)
        else:
            supervisor = Supervisor(processes, lambda: _serve_worker(server),
                                    server.shutdown_timeout, on_fork)
            supervisor.run(None if ready is None else lambda: ready(server))
    finally:
        server.server_close()


def _serve_worker(parent):
    """Serve the supervisor's bound socket in a forked worker until SIGTERM drains it."""
    server = WSGIServer(parent.server_address, parent.get_app(), workers=parent.workers,
                        timeout=parent.connection_timeout, backlog=parent.request_queue_size,
                        handler_class=parent.RequestHandlerClass, listener=parent.socket)
    threading.Thread(target=_stop_when_orphaned, args=(server, os.getppid()),
                     name="webassets-orphan-watch", daemon=True).start()
    try:
        _serve_here(server, (signal.SIGTERM,))
    finally:
        server.server_close()


def _serve_here(server, signals, ready=None):
    """Run `server` in this process until one of `signals` has drained it."""
    with _stop_on_signals(server, signals):
        if ready is not None:
            ready(server)
        server.serve_forever()
        server.shutdown()  # waits for the drain the signal started


def _readable(sock, timeout):
    """Return True if `sock` has data (or EOF) within `timeout` seconds."""
    try:
        if hasattr(select, "poll"):  # NOTE: select() fails on descriptors above 1023
            poller = select.poll()
            poller.register(sock, select.POLLIN)
            return bool(poller.poll(timeout * 1000.0))
        return bool(select.select([sock], [], [], timeout)[0])
    except (OSError, ValueError):  # closed meanwhile
        return False


def _stop_when_orphaned(server, parent_pid, interval=1.0):
    """Shut `server` down if its supervisor dies (SIGKILL leaves it no time to stop us)."""
    while not server.stopping:
        time.sleep(interval)
        if os.getppid() != parent_pid:
            logger.warning("Supervisor %d is gone; worker process %d stops", parent_pid,
                           os.getpid())
            server.shutdown()
            return


@contextlib.contextmanager
def _stop_on_signals(server, signals):
    """Make `signals` start a graceful shutdown of `server` (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}

    def on_signal(signum, frame):
        signal.signal(signum, previous[signum])
        # shutdown() blocks until serve_forever() returns, so it cannot run in this thread.
        threading.Thread(target=_shutdown_after_signal, args=(server, signum),
                         name="webassets-shutdown", daemon=True).start()

    for signum in signals:
        previous[signum] = signal.signal(signum, on_signal)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _shutdown_after_signal(server, signum):
    logger.info("Received signal %d; finishing in-flight requests (at most %.0f s)",
                signum, server.shutdown_timeout)
    server.shutdown()
