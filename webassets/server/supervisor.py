"""Pre-forked worker processes: start, restart and gracefully stop the server's workers."""

import logging
import os
import select
import signal
import threading
import time

__all__ = ["Supervisor"]

logger = logging.getLogger(__name__)

RESTART_BACKOFF = 0.5          # first pause before restarting a worker process that keeps dying
RESTART_BACKOFF_MAX = 30.0     # longest such pause
STABLE_SECONDS = 10.0          # a worker process that lived this long is restarted at once


class Supervisor:
    """The parent of the worker processes: forks them, restarts them, stops them.

    The workers share a listening socket bound before the fork, and the kernel hands each new
    connection to one of them. The GIL lets one process use about one CPU; several processes
    are how one server uses them all. `run_worker()` runs in each forked worker and returns
    once the worker has drained after SIGTERM; `shutdown_timeout` bounds that drain.
    """

    def __init__(self, processes, run_worker, shutdown_timeout, on_fork=None):
        self.processes = processes
        self.run_worker = run_worker
        self.shutdown_timeout = shutdown_timeout
        self.on_fork = on_fork
        self.children = {}  # pid -> (slot, monotonic start time)
        self.failures = [0] * processes  # per slot: quick deaths in a row
        self.due = {}  # slot -> monotonic time its replacement is started
        self.stop_signal = None
        self._wake_fds = None

    def run(self, ready=None):
        """Supervise until SIGTERM or SIGINT, then stop the workers gracefully.

        `ready()` is called once the signal handlers are in place.
        """
        previous, previous_wakeup = {}, -1
        self._wake_fds = os.pipe()
        for fd in self._wake_fds:
            os.set_blocking(fd, False)
        main = threading.current_thread() is threading.main_thread()
        if main:
            # The handlers only note the signal; set_wakeup_fd makes select() return for it.
            previous_wakeup = signal.set_wakeup_fd(self._wake_fds[1])
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
                previous[signum] = signal.signal(signum, self._on_signal)
        try:
            if ready is not None:
                ready()
            for slot in range(self.processes):
                self._spawn(slot)
            while self.stop_signal is None:
                self._reap()
                self._respawn_due()
                self._sleep(1.0)
            logger.info("Received signal %d; stopping %d worker process(es) after their "
                        "in-flight requests (at most %.0f s)", self.stop_signal,
                        len(self.children), self.shutdown_timeout)
            for signum in (signal.SIGTERM, signal.SIGINT):
                if signum in previous:  # a second signal: the previous behaviour (abort)
                    signal.signal(signum, previous.pop(signum))
            self._stop()
        except BaseException:
            self._kill_all()
            raise
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            if main:
                signal.set_wakeup_fd(previous_wakeup)
            for fd in self._wake_fds:
                os.close(fd)

    def _on_signal(self, signum, frame):
        if signum != signal.SIGCHLD:
            self.stop_signal = signum

    def _sleep(self, longest):
        """Wait until a signal arrives, a restart is due, or `longest` seconds have passed."""
        now = time.monotonic()
        timeout = min([when - now for when in self.due.values()] + [longest])
        try:
            select.select([self._wake_fds[0]], [], [], max(0.0, timeout))
            os.read(self._wake_fds[0], 4096)
        except (BlockingIOError, InterruptedError):
            pass

    def _spawn(self, slot):
        pid = os.fork()
        if pid == 0:
            self._become_worker()  # never returns
        self.children[pid] = (slot, time.monotonic())
        self.due.pop(slot, None)
        logger.debug("Started worker process %d (slot %d)", pid, slot)

    def _become_worker(self):
        """Run in the forked child: serve the inherited socket, then exit (never returns)."""
        status = 1
        try:
            signal.set_wakeup_fd(-1)
            for fd in self._wake_fds:
                os.close(fd)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            # The supervisor's SIGTERM handler only sets a flag that this copy never reads:
            # a stop sent before the worker installs its own draining handler would be lost
            # and the supervisor would wait for it in vain. Until then nothing is in flight,
            # so the default action (exit) is the right one.
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            # Ctrl-C reaches the whole process group: the supervisor turns it into SIGTERM.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            if self.on_fork is not None:
                self.on_fork()
            self.run_worker()
            status = 0
        except BaseException:  # nothing may unwind into the parent's stack in this process
            logger.exception("Worker process %d failed", os.getpid())
        finally:
            logging.shutdown()
            os._exit(status)

    def _exited(self):
        """Forget the workers that have exited; return [(pid, slot, start time, status)]."""
        exited = []
        for pid in list(self.children):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere
                done, status = pid, 0
            if done:
                exited.append((pid,) + self.children.pop(pid) + (status,))
        return exited

    def _reap(self):
        """Schedule a replacement for each worker that died: at once, or after a backoff."""
        for pid, slot, started, status in self._exited():
            lived = time.monotonic() - started
            self.failures[slot] = self.failures[slot] + 1 if lived < STABLE_SECONDS else 0
            # One death is replaced at once, however young the worker was (a kill -9, the
            # OOM killer); only a worker that keeps dying young waits 0.5 s, 1 s, ... 30 s.
            delay = (0.0 if self.failures[slot] <= 1 else
                     min(RESTART_BACKOFF_MAX, RESTART_BACKOFF * 2 ** (self.failures[slot] - 2)))
            self.due[slot] = time.monotonic() + delay
            logger.warning("Worker process %d %s; restarting it in %.1f s",
                           pid, _describe_exit(status), delay)

    def _respawn_due(self):
        now = time.monotonic()
        for slot, when in sorted(self.due.items()):
            if when <= now:
                self._spawn(slot)

    def _stop(self):
        """SIGTERM every worker and wait for their drain; SIGKILL what outlives it."""
        self.due.clear()
        self._signal_all(signal.SIGTERM)
        deadline = time.monotonic() + self.shutdown_timeout + 5.0
        while self.children and time.monotonic() < deadline:
            for pid, _, _, status in self._exited():
                if status:
                    logger.warning("Worker process %d %s", pid, _describe_exit(status))
            if self.children:
                self._sleep(0.05)
        if self.children:
            logger.warning("Killing %d worker process(es) that did not stop in time",
                           len(self.children))
            self._kill_all()

    def _signal_all(self, signum):
        for pid in self.children:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    def _kill_all(self):
        self._signal_all(signal.SIGKILL)
        for pid in list(self.children):
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        self.children.clear()


def _describe_exit(status):
    if os.WIFSIGNALED(status):
        return "was killed by signal %d" % os.WTERMSIG(status)
    return "exited with status %d" % os.WEXITSTATUS(status)
