"""Slow-client load generator: hundreds of connections trickling heads, bodies and downloads.

One process, one thread, one selector, so that it costs a few percent of a CPU. Run by
bench/slow.py as `python3 bench/trickle.py SPEC.json`; SPEC describes each kind of flow:

    {"host": "127.0.0.1", "port": 8080, "ramp_per_second": 200, "reopen_after": 1.0,
     "kinds": [{"name": "head", "heads": ["GET /x HTTP/1.1\\r\\n..."], "count": 256,
                "trickle_head": true, "send_rate": 1},
               {"name": "upload", "heads": [...], "count": 64, "send_rate": 10240,
                "body_bytes": 314572800, "tail": "..."},
               {"name": "download", "heads": [...], "count": 64, "recv_rate": 10240}]}

`heads` are latin-1 strings, used round-robin. A trickled head is sent at `send_rate` bytes
a second and never ends (header lines follow the request line forever). Other heads go out
at once; then `body_bytes` filler bytes (and `tail`) at `send_rate`, or the response is read
at `recv_rate`. A connection the server closes is reopened `reopen_after` seconds later, as a
real client or a scanner would. It prints one JSON line of counters a second on stdout, a
line {"event": "ready"} once every first connection has been tried, and on SIGTERM closes
every socket and prints {"event": "final", ...} with its own CPU time.
"""

import errno
import json
import resource
import selectors
import signal
import socket
import sys
import time

TICK = 0.05  # seconds between rate-limited sends and reads
SMALL_BUFFER = 16 * 1024  # socket buffers: a slow peer must really hold the server back
CONNECT_TIMEOUT = 30.0
_RETRY = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR)


class Flow:
    """One slow connection: its socket, the bytes still to send, its counters."""

    def __init__(self, kind, index):
        self.kind = kind
        self.index = index
        self.sock = None
        self.state = "idle"  # idle -> connecting -> open -> closed -> (reopen) connecting
        self.out = b""  # bytes to send as soon as the socket takes them
        self.credit = 0.0
        self.sent_body = 0
        self.head_seen = b""
        self.since = 0.0
        self.extra_header = 0
        self.pending_head = b""
        self.stream = b""  # a trickled head: the bytes not sent yet
        self.body_done = False


class Generator:
    """Every flow of a spec, driven by one loop: connect, trickle, read, report, reopen."""

    def __init__(self, spec):
        self.spec = spec
        self.host, self.port = spec["host"], spec["port"]
        self.selector = selectors.DefaultSelector()
        self.flows = []
        self.stopping = False
        self.started = time.monotonic()
        self.stats = {}
        for kind in spec["kinds"]:
            self.stats[kind["name"]] = {
                "target": kind["count"], "connecting": 0, "open": 0, "max_open": 0,
                "connected": 0, "connect_errors": 0, "closed_by_server": 0, "reopened": 0,
                "bytes_sent": 0, "bytes_received": 0, "send_stalls": 0, "read_starved": 0,
                "statuses": {}}
            for index in range(kind["count"]):
                self.flows.append(Flow(kind, index))

    # ------------------------------------------------------------------ connections

    def open(self, flow, now):
        kind, stats = flow.kind, self.stats[flow.kind["name"]]
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)
        sock.setblocking(False)
        code = sock.connect_ex((self.host, self.port))
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            stats["connect_errors"] += 1
            flow.state, flow.since = "closed", now
            return
        head = kind["heads"][flow.index % len(kind["heads"])].encode("latin-1")
        flow.sock, flow.state, flow.since = sock, "connecting", now
        flow.out, flow.credit, flow.sent_body, flow.head_seen = b"", 0.0, 0, b""
        flow.body_done = False
        flow.pending_head = head
        stats["connecting"] += 1
        self.selector.register(sock, selectors.EVENT_WRITE, flow)

    def connected(self, flow, now):
        stats = self.stats[flow.kind["name"]]
        code = flow.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            stats["connect_errors"] += 1
            self.drop(flow, now, counted=False)
            return
        stats["connecting"] -= 1
        flow.state = "open"
        stats["open"] += 1
        stats["connected"] += 1
        stats["max_open"] = max(stats["max_open"], stats["open"])
        if flow.kind.get("trickle_head"):
            # Spread the one-byte sends over the second instead of all on one tick.
            flow.credit = (flow.index * 0.618) % 1.0
            flow.stream = flow.pending_head
        else:
            flow.out = flow.pending_head
        if flow.kind.get("recv_rate"):
            # Read on the tick only: a level-triggered readable socket would spin the loop.
            self.selector.unregister(flow.sock)
        else:
            self.selector.modify(flow.sock, selectors.EVENT_READ, flow)

    def drop(self, flow, now, counted=True):
        """Close a flow's socket; it reopens after `reopen_after` unless the run is ending."""
        stats = self.stats[flow.kind["name"]]
        if flow.state == "open":
            stats["open"] -= 1
        elif flow.state == "connecting":
            stats["connecting"] -= 1
        if counted:
            stats["closed_by_server"] += 1
        try:
            self.selector.unregister(flow.sock)
        except (KeyError, ValueError):
            pass
        flow.sock.close()
        flow.sock, flow.state, flow.since = None, "closed", now

    # ------------------------------------------------------------------ I/O

    def readable(self, flow, now):
        """Read what the server sent on a flow that is not rate-limited (a reply, or EOF)."""
        try:
            data = flow.sock.recv(65536)
        except OSError as ex:
            if ex.errno in _RETRY:
                return
            data = b""
        if not data:
            self.drop(flow, now)
            return
        self.received(flow, data)

    def received(self, flow, data):
        stats = self.stats[flow.kind["name"]]
        stats["bytes_received"] += len(data)
        if flow.head_seen is not None:
            flow.head_seen += data[:64]
            if b"\r\n" in flow.head_seen:
                parts = flow.head_seen.split(b" ", 2)
                status = parts[1].decode("latin-1") if len(parts) > 1 else "?"
                stats["statuses"][status] = stats["statuses"].get(status, 0) + 1
                flow.head_seen = None

    def send(self, flow, data, now):
        """Send what the socket takes now; return the count (0 when it is full)."""
        try:
            return flow.sock.send(data)
        except OSError as ex:
            if ex.errno in _RETRY:
                return 0
            self.drop(flow, now)
            return -1

    def tick(self, now, elapsed):
        for flow in self.flows:
            if flow.state == "connecting" and now - flow.since > CONNECT_TIMEOUT:
                self.stats[flow.kind["name"]]["connect_errors"] += 1
                self.drop(flow, now, counted=False)
            if flow.state != "open":
                continue
            kind, stats = flow.kind, self.stats[flow.kind["name"]]
            if flow.out:
                count = self.send(flow, flow.out, now)
                if count < 0:
                    continue
                stats["bytes_sent"] += count
                flow.out = flow.out[count:]
                if flow.out:
                    stats["send_stalls"] += 1
                    continue
            rate = kind.get("send_rate")
            if rate and not flow.body_done:
                # Unused credit is capped at one second's worth: a stalled flow does not burst.
                flow.credit = min(flow.credit + rate * elapsed, float(max(rate, 1)))
                if flow.credit >= 1:
                    self.send_rated(flow, int(flow.credit), now)
            rate = kind.get("recv_rate")
            if rate:
                flow.credit = min(flow.credit + rate * elapsed, float(rate))
                self.read_rated(flow, now)

    def send_rated(self, flow, budget, now):
        kind, stats = flow.kind, self.stats[flow.kind["name"]]
        if kind.get("trickle_head"):
            chunk = self.head_bytes(flow, budget)
        else:
            left = kind.get("body_bytes", 0) - flow.sent_body
            if left <= 0:
                flow.out, flow.body_done = kind.get("tail", "").encode("latin-1"), True
                return
            chunk = b"x" * min(budget, left)
        count = self.send(flow, chunk, now)
        if count < 0:
            return
        if count < len(chunk):
            stats["send_stalls"] += 1
        stats["bytes_sent"] += count
        flow.credit -= count
        if kind.get("trickle_head"):
            flow.stream = flow.stream[count:]
        else:
            flow.sent_body += count

    def head_bytes(self, flow, budget):
        """Return the next `budget` bytes of a head that never ends."""
        while len(flow.stream) < budget:
            flow.extra_header += 1
            flow.stream += b"X-Trickle-%d: %d\r\n" % (flow.extra_header, flow.index)
        return flow.stream[:budget]

    def read_rated(self, flow, now):
        stats = self.stats[flow.kind["name"]]
        while flow.credit >= 1 and flow.state == "open":
            try:
                data = flow.sock.recv(int(flow.credit))
            except OSError as ex:
                if ex.errno in _RETRY:
                    stats["read_starved"] += 1  # it wants bytes the server has not sent
                    return
                data = b""
            if not data:
                self.drop(flow, now)
                return
            flow.credit -= len(data)
            self.received(flow, data)

    # ------------------------------------------------------------------ main loop

    def report(self, event=None, **extra):
        usage = resource.getrusage(resource.RUSAGE_SELF)
        line = {"t": round(time.monotonic() - self.started, 2),
                "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 3),
                "max_rss_kib": usage.ru_maxrss, "kinds": self.stats}
        line.update(extra)
        if event:
            line["event"] = event
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()

    def run(self):
        ramp = float(self.spec.get("ramp_per_second", 200))
        reopen_after = float(self.spec.get("reopen_after", 1.0))
        waiting = list(self.flows)  # first connections, opened at `ramp` a second
        ready_sent = False
        last_tick = last_report = time.monotonic()
        while not self.stopping:
            now = time.monotonic()
            due = int((now - self.started) * ramp) + 1
            opened = len(self.flows) - len(waiting)
            while waiting and opened < due:
                self.open(waiting.pop(0), now)
                opened += 1
            if not waiting and not ready_sent and not any(
                    flow.state == "connecting" for flow in self.flows):
                ready_sent = True
                self.report("ready")
            for key, _ in self.selector.select(timeout=max(0.0, last_tick + TICK - now)):
                flow = key.data
                if flow.state == "connecting":
                    self.connected(flow, time.monotonic())
                elif flow.state == "open":
                    self.readable(flow, time.monotonic())
            now = time.monotonic()
            if now - last_tick >= TICK:
                self.tick(now, now - last_tick)
                last_tick = now
                for flow in self.flows:
                    if flow.state == "closed" and now - flow.since >= reopen_after:
                        self.stats[flow.kind["name"]]["reopened"] += 1
                        self.open(flow, now)
            if now - last_report >= 1.0:
                last_report = now
                self.report()
        self.close_all()

    def close_all(self):
        """Close every socket (the server sees EOF) and print the final counters."""
        closed = 0
        for flow in self.flows:
            if flow.sock is not None:
                try:
                    self.selector.unregister(flow.sock)
                except (KeyError, ValueError):
                    pass
                flow.sock.close()
                flow.sock = None
                closed += 1
        self.report("final", closed_at_end=closed)


def raise_nofile(needed):
    """Raise the soft RLIMIT_NOFILE to cover `needed` sockets (up to the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed + 64
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        if new < want:
            sys.stderr.write("trickle: only %d file descriptors allowed\n" % new)


def main(argv):
    with open(argv[1]) as f:
        spec = json.load(f)
    raise_nofile(sum(kind["count"] for kind in spec["kinds"]))
    generator = Generator(spec)

    def stop(signum, frame):
        generator.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    generator.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
