"""The listening socket of one process: accept, read request heads, and the request pool."""

import collections
import logging
import selectors
import socket
import socketserver
import threading
import time
import wsgiref.simple_server
from typing import Optional

from .connection import MAX_HEAD, Connection, Slots, take_head

__all__ = ["WSGIServer"]

logger = logging.getLogger("webassets.server")

SHUTDOWN_TIMEOUT = 30.0        # how long shutdown() waits for in-flight requests
ACCEPT_BACKOFF = 0.1           # pause after accept() fails, e.g. out of file descriptors
ACCEPT_BATCH = 1               # connections accepted per wake-up: the other processes take the rest
THREAD_IDLE = 30.0             # a pool thread above `workers` idle this long exits
RECV_SIZE = 16 * 1024          # one read of a request head
REFUSAL_LOG_INTERVAL = 10.0    # at most one warning this often about refused connections
# Sent, without reading the request, to a client beyond the connection limit.
_REFUSAL = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"X-Content-Type-Options: nosniff\r\nRetry-After: 5\r\nConnection: close\r\n"
            b"Content-Length: 45\r\n\r\nToo many connections; try again in a moment.\n")


class _Pool:
    """Threads that serve connections with a complete request head, started as needed.

    At most `limit` threads; `keep` of them stay when idle. A thread serves one connection
    at a time, so a slow client holds a thread but never another client's.
    """

    def __init__(self, keep: int, limit: int, serve):
        self._keep = keep
        self._limit = limit
        self._serve = serve
        self._items = collections.deque()
        self._ready = threading.Condition(threading.Lock())
        self._waiting = 0  # threads waiting for an item
        self._threads = set()
        self._number = 0
        self._stopping = False

    def submit(self, item) -> None:
        """Hand `item` to an idle thread, a new one, or (at the limit) the next one free."""
        with self._ready:
            self._items.append(item)
            if self._waiting >= len(self._items):
                self._ready.notify()
            elif len(self._threads) < self._limit:
                self._number += 1
                thread = threading.Thread(target=self._work, daemon=True,
                                          name="webassets-request-%d" % self._number)
                self._threads.add(thread)
                thread.start()

    def stop(self, timeout: float) -> int:
        """Let the threads finish their connections; return how many were still busy."""
        with self._ready:
            self._stopping = True
            threads = list(self._threads)
            self._ready.notify_all()
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return sum(1 for thread in threads if thread.is_alive())

    def _next(self):
        """Return the next item, or None when this thread should end."""
        me = threading.current_thread()
        with self._ready:
            while not self._items:
                if self._stopping:
                    self._threads.discard(me)
                    return None
                self._waiting += 1
                try:
                    woken = self._ready.wait(THREAD_IDLE)
                finally:
                    self._waiting -= 1
                if not woken and not self._items and len(self._threads) > self._keep:
                    self._threads.discard(me)
                    return None
            return self._items.popleft()

    def _work(self):
        item = self._next()
        while item is not None:
            self._serve(item)
            item = self._next()


class WSGIServer(wsgiref.simple_server.WSGIServer):
    """wsgiref's server, built so that slow and idle clients cost no request slot.

    serve_forever() accepts connections and reads every request head itself, without a
    thread. A complete head goes to a pool thread, which runs the app while holding one of
    `workers` slots and gives the slot up while it waits on its client (a slow upload or
    download). At most `max_connections` are open: beyond that a client gets a 503. A head
    must arrive within `timeout` seconds of its first byte, and an idle connection is closed
    after `timeout` seconds; a body or response only after `timeout` seconds of silence.
    """

    shutdown_timeout = SHUTDOWN_TIMEOUT

    def __init__(self, server_address, app, workers: int = 4, timeout: float = 60.0,
                 backlog: int = 128, max_connections: int = 1024, handler_class=Connection,
                 listener=None):
        if workers < 1 or backlog < 1 or max_connections < 1 or not timeout > 0:
            raise ValueError("workers, backlog, max_connections and timeout must be positive "
                             "(got %r, %r, %r, %r)" % (workers, backlog, max_connections, timeout))
        self.address_family = socket.AF_INET6 if ":" in server_address[0] else socket.AF_INET
        self.request_queue_size = backlog
        self.workers = workers
        self.max_connections = max_connections
        self.connection_timeout = float(timeout)
        self.slots = Slots(workers)
        self._pool = _Pool(workers, max_connections, self._serve_connection)
        self._open = 0  # connections accepted and not yet closed
        self._refused = 0  # connections refused since the last warning about it
        self._refused_logged = -REFUSAL_LOG_INTERVAL
        self._parking = []  # idle connections the pool threads hand back to serve_forever()
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

    @property
    def open_connections(self) -> int:
        """Return how many client connections are open."""
        return self._open

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
        """Accept connections, read request heads and pass them to the pool until shutdown().

        Deadlines of idle connections and unfinished heads are checked every
        `poll_interval` seconds.
        """
        with self._lock:
            if self._stopping:
                return
            self._accepting = True
            self._loop_done.clear()
        try:
            with selectors.DefaultSelector() as selector:
                self._watch(selector, poll_interval)
        finally:
            self._loop_done.set()

    def shutdown(self, timeout: Optional[float] = None):
        """Stop accepting, let in-flight requests finish, then stop the pool.

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
            busy = self._pool.stop(self.shutdown_timeout if timeout is None else timeout)
            if busy:
                logger.warning("Gave up waiting for %d connection(s) after %.0f s", busy,
                               self.shutdown_timeout if timeout is None else timeout)
        finally:
            self._stopped.set()

    def server_close(self):
        """Close the listening socket; call shutdown() first if serve_forever() is running."""
        super().server_close()
        with self._lock:
            self._stopping = True
        self._pool.stop(0)
        self._wake_in.close()
        self._wake_out.close()

    def release(self, connection) -> None:
        """Close a connection's socket and stop counting it (any thread)."""
        self.shutdown_request(connection.request)
        with self._lock:
            self._open -= 1

    def handle_error(self, request, client_address):
        logger.exception("Unexpected error serving %s", client_address[0])

    # ------------------------------------------------------------------ the listener loop

    def _watch(self, selector, poll_interval):
        selector.register(self.socket, selectors.EVENT_READ)
        selector.register(self._wake_in, selectors.EVENT_READ)
        waiting = set()  # connections whose next request head is being read here
        next_sweep = time.monotonic() + poll_interval
        try:
            while not self._stopping:
                for key, _ in selector.select(poll_interval):
                    if key.fileobj is self.socket:
                        self._accept(selector, waiting)
                    elif key.fileobj is self._wake_in:
                        self._drain_wakes()
                    else:
                        self._read_head(selector, waiting, key.data)
                with self._lock:
                    parked, self._parking = self._parking, []
                now = time.monotonic()
                for connection in parked:
                    self._wait_for_head(selector, waiting, connection, now)
                if now >= next_sweep:
                    next_sweep = now + poll_interval
                    for connection in [c for c in waiting if c.deadline <= now]:
                        self._forget(selector, waiting, connection)
                        self.release(connection)
        finally:
            with self._lock:
                self._accepting = False
                parked, self._parking = self._parking, []
            for connection in list(waiting) + parked:
                self.release(connection)

    def _accept(self, selector, waiting):
        for _ in range(ACCEPT_BATCH):
            try:
                request, client_address = self.get_request()
            except (BlockingIOError, InterruptedError):
                return  # none left (or the client gave up between select() and accept())
            except OSError as ex:
                # e.g. EMFILE: back off until a connection closes and frees a descriptor
                logger.warning("Cannot accept connections: %s", ex)
                time.sleep(ACCEPT_BACKOFF)
                return
            with self._lock:
                full = self._open >= self.max_connections
                if not full:
                    self._open += 1
            if full:
                _refuse(request)
                self._note_refusal(client_address)
                continue
            try:
                connection = self.RequestHandlerClass(request, client_address, self)
            except OSError as ex:
                logger.debug("Connection from %s failed at once: %r", client_address[0], ex)
                with self._lock:
                    self._open -= 1
                self.shutdown_request(request)
                continue
            self._wait_for_head(selector, waiting, connection, time.monotonic())

    def _note_refusal(self, client_address):
        self._refused += 1
        now = time.monotonic()
        if now - self._refused_logged >= REFUSAL_LOG_INTERVAL:  # an attack must not flood the log
            logger.warning("Too many open connections (%d): refused %d, the last from %s",
                           self.max_connections, self._refused, client_address[0])
            self._refused, self._refused_logged = 0, now

    def _wait_for_head(self, selector, waiting, connection, now):
        connection.deadline = now + self.connection_timeout
        selector.register(connection.connection, selectors.EVENT_READ, connection)
        waiting.add(connection)

    def _read_head(self, selector, waiting, connection):
        """Read what has arrived of a connection's request head; dispatch it once complete."""
        channel = connection.channel
        started = bool(channel.pending.strip(b"\r\n"))
        try:
            got = channel.fill(RECV_SIZE)
        except OSError as ex:
            got = False
            logger.debug("Connection from %s ended: %r", connection.client_address[0], ex)
        if got is None:
            return
        if got is False:
            self._forget(selector, waiting, connection)
            self.release(connection)
            return
        if not started:
            # A head must come whole within the timeout of its first byte (slowloris).
            connection.deadline = time.monotonic() + self.connection_timeout
        head = take_head(channel.pending)
        if head is None:
            return
        self._forget(selector, waiting, connection)
        self._pool.submit((connection, head))

    def _forget(self, selector, waiting, connection):
        selector.unregister(connection.connection)
        waiting.discard(connection)

    # ------------------------------------------------------------------ the pool side

    def _serve_connection(self, item):
        connection, head = item
        try:
            idle = connection.run(head, self.slots)
        except Exception:
            self.handle_error(connection.request, connection.client_address)
            self.release(connection)
            return
        if idle and not self._park(connection):
            connection.close()

    def _park(self, connection):
        """Hand an idle connection back to serve_forever(); False if it has stopped."""
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


def _refuse(sock):
    """Answer 503 to a connection beyond the limit and close it, without blocking."""
    try:
        sock.setblocking(False)
        try:
            sock.recv(MAX_HEAD)  # what has arrived: closing on unread data would reset the 503
        except (BlockingIOError, InterruptedError):
            pass
        sock.send(_REFUSAL)
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    finally:
        sock.close()
