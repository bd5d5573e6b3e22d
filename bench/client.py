"""Load generators: wrk for fixed-URL GETs, a lean Python keep-alive client for the rest."""

import http.client
import logging
import random
import re
import shutil
import socket
import subprocess
import threading
import time

logger = logging.getLogger(__name__)

RECV_BUFFER = 1024 * 1024
BOUNDARY = "----BenchFormBoundary7MA4YWxkTrZu0gW"
CLIENT_TIMEOUT = 60.0
WRK_TIMEOUT = "10s"  # wrk's default 2 s would count slow answers as timeouts, hiding the p99

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def percentile(sorted_values, fraction):
    """Return the nearest-rank percentile of an ascending list (None if empty)."""
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, int(round(fraction * len(sorted_values))) - 1))
    return sorted_values[index]


def median(values):
    values = sorted(values)
    if not values:
        return None
    middle = len(values) // 2
    return values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2.0


# ---------------------------------------------------------------------------- wrk

def wrk_path():
    return shutil.which("wrk")


def _ms(text):
    match = re.match(r"([0-9.]+)(us|ms|s|m|h)$", text.strip())
    return float(match.group(1)) * _UNITS[match.group(2)] if match else None


def parse_wrk(text):
    """Return {'rps', 'p50_ms', 'p99_ms', 'requests', 'errors'} from wrk --latency output."""
    result = {"requests": 0, "errors": 0, "rps": 0.0, "p50_ms": None, "p99_ms": None}
    match = re.search(r"Requests/sec:\s*([0-9.]+)", text)
    if match:
        result["rps"] = float(match.group(1))
    match = re.search(r"(\d+) requests in", text)
    if match:
        result["requests"] = int(match.group(1))
    for name, pct in (("p50_ms", "50"), ("p99_ms", "99")):
        match = re.search(r"^\s*%s%%\s+(\S+)" % pct, text, re.M)
        if match:
            result[name] = _ms(match.group(1))
    match = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if match:
        # NOTE: a read error is often just the server closing an HTTP/1.0 connection.
        result["errors"] += int(match.group(1)) + int(match.group(3)) + int(match.group(4))
        result["read_errors"] = int(match.group(2))
    match = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if match:
        result["errors"] += int(match.group(1))
    return result


def run_wrk(url, connections, seconds):
    """Run one wrk thread with `connections` for `seconds`; return parse_wrk's dict."""
    argv = ["wrk", "-t1", "-c%d" % connections, "-d%ds" % max(1, int(round(seconds))),
            "--timeout", WRK_TIMEOUT, "--latency", url]
    result = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    text = result.stdout.decode("utf-8", "replace")
    if result.returncode != 0:
        raise RuntimeError("wrk failed: %s" % text[-1000:])
    parsed = parse_wrk(text)
    parsed["generator"] = "wrk -t1"
    return parsed


# ---------------------------------------------------------------------------- Python pool

def run_pool(host, port, make_request, connections, seconds, seed=1):
    """Run `connections` keep-alive clients for `seconds`; return the summary dict.

    make_request(rng, worker, n) returns (kind, method, path, body, headers). A request
    fails if it raises or its status is not 200.
    """
    records = []  # (kind, seconds, ok); list.append is atomic
    deadline = time.monotonic() + seconds
    start = time.monotonic()

    def worker(number):
        rng = random.Random(seed * 1000 + number)
        conn = http.client.HTTPConnection(host, port, timeout=CLIENT_TIMEOUT)
        n = 0
        while time.monotonic() < deadline:
            kind, method, path, body, headers = make_request(rng, number, n)
            n += 1
            began = time.perf_counter()
            try:
                conn.request(method, path, body=body, headers=headers or {})
                response = conn.getresponse()
                response.read()
                ok = response.status == 200
            except (OSError, http.client.HTTPException):
                conn.close()
                ok = False
            records.append((kind, time.perf_counter() - began, ok))
        conn.close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return summarize(records, time.monotonic() - start)


def summarize(records, elapsed):
    """Return overall and per-kind rps, p50, p99 (ms) and errors for (kind, s, ok) records."""
    def stats(items):
        latencies = sorted(seconds * 1000.0 for _, seconds, _ in items)
        return {"requests": len(items), "rps": len(items) / elapsed if elapsed else 0.0,
                "p50_ms": percentile(latencies, 0.50), "p99_ms": percentile(latencies, 0.99),
                "errors": sum(1 for _, _, ok in items if not ok)}

    summary = stats(records)
    summary["generator"] = "python http.client pool"
    summary["kinds"] = {kind: stats([r for r in records if r[0] == kind])
                        for kind in sorted(set(r[0] for r in records))}
    return summary


def fixed_get(path):
    """Return a make_request for run_pool that always GETs `path`."""
    def make_request(rng, worker, n):
        return "get", "GET", path, None, None
    return make_request


def warm_up(host, port, path, count=20):
    """Send `count` sequential GETs (imports, caches and the accept path warmed)."""
    conn = Conn(host, port)
    try:
        for _ in range(count):
            conn.get(path)
    finally:
        conn.close()


def load_get(host, port, path, connections, seconds):
    """Load one URL with wrk, or with the Python pool when wrk is not installed."""
    if wrk_path():
        return run_wrk("http://%s:%d%s" % (host, port, path), connections, seconds)
    return run_pool(host, port, fixed_get(path), connections, seconds)


# ---------------------------------------------------------------------------- single requests

def _read_head(sock):
    """Read a response head; return (status, headers dict lowercased, leftover body bytes)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed before the response head")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("iso-8859-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, rest


def _drain_body(sock, headers, rest, keep=False):
    """Read the body (Content-Length or to EOF); return its bytes if keep, else its length."""
    length = int(headers["content-length"]) if "content-length" in headers else None
    buffer = bytearray(RECV_BUFFER)
    view = memoryview(buffer)
    kept = [rest] if keep else None
    total = len(rest)
    while length is None or total < length:
        want = RECV_BUFFER if length is None else min(RECV_BUFFER, length - total)
        count = sock.recv_into(view[:want])
        if not count:
            break
        if keep:
            kept.append(bytes(view[:count]))
        total += count
    return b"".join(kept) if keep else total


def get_to_null(host, port, path, timeout=CLIENT_TIMEOUT):
    """GET `path` on a new connection and discard the body; return (status, bytes, seconds).

    The time runs from the first byte sent; each connect, send and recv waits at most
    `timeout` (socket.timeout, an OSError, when it does not happen).
    """
    with socket.create_connection((host, port), timeout=timeout) as sock:
        began = time.perf_counter()
        sock.sendall(("GET %s HTTP/1.1\r\nHost: %s:%d\r\nConnection: close\r\n\r\n"
                      % (path, host, port)).encode("ascii"))
        status, headers, rest = _read_head(sock)
        size = _drain_body(sock, headers, rest)
        return status, size, time.perf_counter() - began


def multipart_frame(file_name, fields, content_type="application/octet-stream"):
    """Return (preamble, epilogue) around a file part, Specify 7's layout: file first."""
    head = ('--%s\r\nContent-Disposition: form-data; name="file"; filename="%s"\r\n'
            "Content-Type: %s\r\n\r\n" % (BOUNDARY, file_name, content_type))
    tail = ""
    for name, value in fields:
        tail += ('\r\n--%s\r\nContent-Disposition: form-data; name="%s"\r\n\r\n%s'
                 % (BOUNDARY, name, value))
    tail += "\r\n--%s--\r\n" % BOUNDARY
    return head.encode("utf-8"), tail.encode("utf-8")


def upload_headers():
    return {"Content-Type": "multipart/form-data; boundary=" + BOUNDARY}


def post_file(host, port, path, preamble, file_path, size, epilogue):
    """POST a multipart body streamed from disk with sendfile; return (status, body, seconds)."""
    length = len(preamble) + size + len(epilogue)
    head = ("POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
            "Connection: close\r\n\r\n" % (path, host, port, upload_headers()["Content-Type"],
                                           length)).encode("ascii")
    with socket.create_connection((host, port), timeout=CLIENT_TIMEOUT) as sock, \
            open(file_path, "rb") as f:
        began = time.perf_counter()
        sock.sendall(head + preamble)
        sock.sendfile(f, 0, size)
        sock.sendall(epilogue)
        status, headers, rest = _read_head(sock)
        body = _drain_body(sock, headers, rest, keep=True)
        return status, body, time.perf_counter() - began


class Conn:
    """One keep-alive connection for sequential timed requests."""

    def __init__(self, host, port):
        self.conn = http.client.HTTPConnection(host, port, timeout=CLIENT_TIMEOUT)

    def get(self, path):
        """GET `path`; return (status, body, seconds)."""
        began = time.perf_counter()
        self.conn.request("GET", path)
        response = self.conn.getresponse()
        body = response.read()
        return response.status, body, time.perf_counter() - began

    def close(self):
        self.conn.close()
