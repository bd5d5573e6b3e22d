"""The built-in HTTP/1.1 server: one listener per process, pre-forked worker processes.

connection.py serves one client connection, listener.py accepts them and reads request
heads, supervisor.py forks and restarts the worker processes; this module starts it all.
"""

import contextlib
import logging
import os
import signal
import threading
import time
from typing import Callable, Optional

from .connection import SERVER_SOFTWARE, FileWrapper
from .listener import SHUTDOWN_TIMEOUT, WSGIServer
from .supervisor import Supervisor

try:
    import resource
except ImportError:  # NOTE: not on Windows, where there is no descriptor limit to raise
    resource = None

__all__ = ["FileWrapper", "SERVER_SOFTWARE", "SHUTDOWN_TIMEOUT", "WSGIServer", "make_server",
           "serve"]

logger = logging.getLogger(__name__)

SPARE_DESCRIPTORS = 64  # open files beside the connections: uploads, thumbnails, logs, pipes


def make_server(app: Callable, host: str, port: int, workers: int = 4, timeout: float = 60.0,
                backlog: int = 128, max_connections: int = 1024) -> WSGIServer:
    """Bind a server for `app` on host:port without serving yet (port 0: any free port).

    `server.server_port` tells the bound port. Raises OSError if the address cannot be bound
    and ValueError for a non-positive workers, timeout, backlog or max_connections.
    """
    return WSGIServer((host, port), app, workers=workers, timeout=timeout, backlog=backlog,
                      max_connections=max_connections)


def serve(app: Callable, host: str, port: int, workers: int = 4, timeout: float = 60.0,
          backlog: int = 128, ready: Optional[Callable[[WSGIServer], None]] = None,
          processes: int = 1, on_fork: Optional[Callable[[], None]] = None,
          max_connections: int = 1024) -> None:
    """Serve `app` until SIGTERM or SIGINT, then let in-flight requests finish and return.

    With `processes` > 1 this process binds the socket, forks that many worker processes
    (each `workers` request slots) and supervises them: a worker that dies is restarted, and
    a signal is passed on to the workers as SIGTERM. `max_connections` is shared evenly
    among the processes. `on_fork()` runs first in every worker. `ready(server)` is called
    once the server listens. Signal handlers are installed only in the main thread; a second
    signal gets the previous handler (a second Ctrl-C aborts).
    Raises OSError if the address cannot be bound, ValueError for a non-positive count.
    """
    if processes < 1:
        raise ValueError("processes must be positive (got %r)" % (processes,))
    per_process = -(-max_connections // processes)
    raise_descriptor_limit(per_process + SPARE_DESCRIPTORS)
    server = make_server(app, host, port, workers=workers, timeout=timeout, backlog=backlog,
                         max_connections=per_process)
    try:
        if processes == 1:
            _serve_here(server, (signal.SIGTERM, signal.SIGINT), ready)
        else:
            supervisor = Supervisor(processes, lambda: _serve_worker(server),
                                    server.shutdown_timeout, on_fork)
            supervisor.run(None if ready is None else lambda: ready(server))
    finally:
        server.server_close()


def raise_descriptor_limit(wanted: int) -> None:
    """Raise this process's open-file limit to `wanted` if the hard limit allows; else warn."""
    if resource is None:
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < wanted:
        logger.warning("The open-file limit (%d) is below MAX_CONNECTIONS per process plus %d; "
                       "raise it (systemd: LimitNOFILE=) or lower MAX_CONNECTIONS",
                       target, SPARE_DESCRIPTORS)


def _serve_worker(parent):
    """Serve the supervisor's bound socket in a forked worker until SIGTERM drains it."""
    server = WSGIServer(parent.server_address, parent.get_app(), workers=parent.workers,
                        timeout=parent.connection_timeout, backlog=parent.request_queue_size,
                        max_connections=parent.max_connections,
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
