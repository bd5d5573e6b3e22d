"""Progress of a store walk: a bar with counts and ETA on a terminal, plain lines otherwise."""

import sys
import threading
import time

__all__ = ["Progress"]

BAR_WIDTH = 24
REDRAW_SECONDS = 0.1  # terminal: at most ten redraws a second
LINE_SECONDS = 30.0  # not a terminal: a line at every tenth of the work, or this often


def _duration(seconds):
    seconds = int(seconds + 0.5)
    return "%d:%02d:%02d" % (seconds // 3600, seconds // 60 % 60, seconds % 60)


class Progress:
    """Count work done out of `total`; thread-safe. Writes to `stream` (standard error).

    `tty` forces the terminal form on or off; by default it follows stream.isatty().
    `enabled=False` writes nothing (--quiet).
    """

    def __init__(self, label, total, stream=None, tty=None, enabled=True,
                 clock=time.monotonic):
        self.label = label
        self.total = total
        self.done = 0
        self._stream = stream if stream is not None else sys.stderr
        self._tty = _isatty(self._stream) if tty is None else tty
        self._enabled = enabled and total > 0
        self._clock = clock
        self._lock = threading.Lock()
        self._started = clock()
        self._last_draw = None
        self._last_step = -1
        self._drawn = -1  # `done` when last written

    def update(self, count=1):
        """Add `count` items done; redraw if it is time to."""
        with self._lock:
            self.done += count
            if self._enabled:
                self._maybe_draw()

    def close(self):
        """Write the final state (and end the terminal line)."""
        with self._lock:
            if self._enabled and (self._tty or self._drawn != self.done):
                self._draw(final=True)
            self._enabled = False

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def line(self):
        """Return the progress text without the bar: 'label: 12/40 30% 5.1/s ETA 0:00:05'."""
        elapsed = self._clock() - self._started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        text = "%s: %d/%d %d%%" % (self.label, self.done, self.total,
                                   100 * self.done // max(1, self.total))
        if rate > 0 and self.done < self.total:
            text += " %.1f/s ETA %s" % (rate, _duration((self.total - self.done) / rate))
        elif self.done >= self.total:
            text += " in %s" % _duration(elapsed)
        return text

    def _maybe_draw(self):
        now = self._clock()
        if self._tty:
            if self._last_draw is None or now - self._last_draw >= REDRAW_SECONDS:
                self._draw()
            return
        step = 10 * self.done // self.total
        if step > self._last_step or now - self._last_draw >= LINE_SECONDS:
            self._draw()

    def _draw(self, final=False):
        self._last_draw = self._clock()
        self._last_step = 10 * self.done // self.total
        self._drawn = self.done
        if self._tty:
            filled = BAR_WIDTH * min(self.done, self.total) // self.total
            bar = "[" + "#" * filled + "-" * (BAR_WIDTH - filled) + "] "
            label, _, rest = self.line().partition(": ")
            self._stream.write("\r\x1b[K%s: %s%s%s" % (label, bar, rest, "\n" if final else ""))
        else:
            self._stream.write(self.line() + "\n")
        self._stream.flush()


def _isatty(stream):
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no such method, or a closed stream
        return False
