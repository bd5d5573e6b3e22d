"""Prometheus metrics: thread-safe counters and histograms, rendered in the text format."""

import bisect
import json
import logging
import os
import tempfile
import threading
import time

from . import __version__

__all__ = ["Metrics", "CONTENT_TYPE", "OTHER_ENDPOINT", "merge_snapshots", "render_snapshot"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OTHER_ENDPOINT = "other"  # requests that matched no route: one label, whatever the path
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0, 60.0)
CONVERSION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
PUBLISH_INTERVAL = 1.0  # how often a worker process writes its snapshot for the others
STALE_AFTER = 5.0  # a snapshot older than this is of a dead process: its gauges are dropped

logger = logging.getLogger(__name__)


def _histogram(buckets):
    """Return an empty histogram: one count per bucket, one for +Inf, then the sum."""
    return [0] * (len(buckets) + 1) + [0.0]


def _observe(histogram, buckets, value):
    histogram[bisect.bisect_left(buckets, value)] += 1
    histogram[-1] += value


class Metrics:
    """Everything /metrics reports; every update takes one short lock (many worker threads)."""

    def __init__(self, clock=time.time):
        self._lock = threading.Lock()
        self._requests = {}  # (endpoint, status) -> count
        self._latency = {}  # endpoint -> histogram
        self._in_progress = {}  # endpoint -> requests being handled
        self._bytes = [0, 0]  # request bodies in, response bodies out
        self._thumbnails = {"hit": 0, "miss": 0}
        self._rejected = 0
        self._conversions = {}  # (format, result) -> count
        self._conversion_seconds = {}  # format -> histogram
        self._in_flight = 0
        self.thumbnailer = None  # the engine reporting here (its `pending` is the queue gauge)
        self.store = None  # the store: its request_stats() (a remote store's requests)
        self._shared_dir = None  # see share()
        self.started = clock()

    # -- updates (hot path: keep them small)

    def enter(self, endpoint):
        """Count a request to `endpoint` as in progress."""
        with self._lock:
            self._in_progress[endpoint] = self._in_progress.get(endpoint, 0) + 1

    def leave(self, endpoint):
        """Count a request to `endpoint` as no longer in progress."""
        with self._lock:
            self._in_progress[endpoint] -= 1

    def observe_request(self, endpoint, status, seconds, bytes_in, bytes_out):
        """Record one answered request."""
        index = bisect.bisect_left(LATENCY_BUCKETS, seconds)
        key = (endpoint, status)
        with self._lock:
            self._requests[key] = self._requests.get(key, 0) + 1
            histogram = self._latency.get(endpoint)
            if histogram is None:
                histogram = self._latency[endpoint] = _histogram(LATENCY_BUCKETS)
            histogram[index] += 1
            histogram[-1] += seconds
            self._bytes[0] += bytes_in
            self._bytes[1] += bytes_out

    def observe_thumbnail(self, hit):
        """Record a thumbnail request served from the cache (hit) or needing a render."""
        with self._lock:
            self._thumbnails["hit" if hit else "miss"] += 1

    def observe_rejection(self):
        """Record a request refused with 503 because the conversion queue was full."""
        with self._lock:
            self._rejected += 1

    def conversion_started(self):
        """Count a conversion as running."""
        with self._lock:
            self._in_flight += 1

    def conversion_finished(self, fmt, seconds, ok):
        """Record a finished conversion of an input `fmt` and how long it took."""
        key = (fmt, "ok" if ok else "error")
        with self._lock:
            self._in_flight -= 1
            self._conversions[key] = self._conversions.get(key, 0) + 1
            histogram = self._conversion_seconds.get(fmt)
            if histogram is None:
                histogram = self._conversion_seconds[fmt] = _histogram(CONVERSION_BUCKETS)
            _observe(histogram, CONVERSION_BUCKETS, seconds)

    # -- sharing between the built-in server's worker processes
    #
    # Each worker process counts in its own memory (no lock or I/O on the hot path) and
    # writes a JSON snapshot into a directory private to the server every PUBLISH_INTERVAL.
    # A scrape, answered by any one worker, sums its live numbers with the others' latest
    # snapshots: other workers' counts may lag by up to PUBLISH_INTERVAL. The snapshot of a
    # worker that died stays, so totals never go down; its gauges go once it is stale.

    def share(self, directory, interval=PUBLISH_INTERVAL):
        """Publish this process's snapshot into `directory` and sum the others' on render().

        Starts a daemon thread that writes the snapshot every `interval` seconds.
        """
        self._shared_dir = directory
        self.publish()
        thread = threading.Thread(target=self._publish_every, args=(interval,), daemon=True,
                                  name="webassets-metrics")
        thread.start()

    def publish(self):
        """Write this process's snapshot atomically into the shared directory (if any)."""
        directory = self._shared_dir
        if directory is None:
            return
        try:
            fd, temp = tempfile.mkstemp(prefix=".snapshot-", dir=directory)
            with os.fdopen(fd, "w") as f:
                json.dump(self.snapshot(), f)
            os.replace(temp, os.path.join(directory, "%d.json" % os.getpid()))
        except OSError as ex:
            logger.warning("Cannot publish metrics to %s: %s", directory, ex)

    def _publish_every(self, interval):
        while True:
            time.sleep(interval)
            self.publish()

    def snapshot(self):
        """Return this process's numbers as a JSON-able dict (see merge_snapshots)."""
        with self._lock:
            snapshot = {
                "pid": os.getpid(), "time": time.time(),
                "requests": [[e, s, n] for (e, s), n in self._requests.items()],
                "latency": {key: list(value) for key, value in self._latency.items()},
                "in_progress": dict(self._in_progress),
                "bytes": list(self._bytes), "thumbnails": dict(self._thumbnails),
                "rejected": self._rejected,
                "conversions": [[f, r, n] for (f, r), n in self._conversions.items()],
                "conversion_seconds": {k: list(v) for k, v in self._conversion_seconds.items()},
                "in_flight": self._in_flight,
            }
        # NOTE: read without the Thumbnailer's lock; a scrape may be off by one, never wrong.
        snapshot["pending"] = getattr(self.thumbnailer, "pending", 0)
        snapshot["store"] = self.store.request_stats() if self.store is not None else None
        return snapshot

    def _others(self):
        """Return the latest snapshots of the other worker processes (none when not shared)."""
        directory = self._shared_dir
        if directory is None:
            return []
        own = "%d.json" % os.getpid()
        snapshots = []
        for name in os.listdir(directory):
            if name.endswith(".json") and name != own:
                try:
                    with open(os.path.join(directory, name)) as f:
                        snapshots.append(json.load(f))
                except (OSError, ValueError) as ex:  # e.g. removed at shutdown
                    logger.debug("Skipping metrics snapshot %s: %s", name, ex)
        return snapshots

    # -- exposition

    def render(self):
        """Return every metric in the Prometheus text format (version 0.0.4).

        With share(), the figures are the sums over every worker process.
        """
        merged = merge_snapshots([self.snapshot()] + self._others(), time.time())
        return render_snapshot(merged, self.started)


def _add_histograms(total, histograms):
    for key, histogram in histograms.items():
        into = total.setdefault(key, [0] * len(histogram))
        for index, value in enumerate(histogram):
            into[index] += value


def _add_store_stats(total, stats):
    """Add one process's store request stats (None for a local store) into `total`."""
    if stats is None:
        return
    into = total["store"] = total["store"] or {"requests": {}, "errors": {}, "seconds": {}}
    for table in ("requests", "errors", "seconds"):
        for name, value in stats.get(table, {}).items():
            into[table][name] = into[table].get(name, 0) + value


def merge_snapshots(snapshots, now, stale_after=STALE_AFTER):
    """Sum snapshots: counters from all, gauges only from those at most `stale_after` old."""
    requests, conversions = {}, {}
    total = {"latency": {}, "in_progress": {}, "bytes": [0, 0],
             "thumbnails": {"hit": 0, "miss": 0}, "rejected": 0, "conversion_seconds": {},
             "in_flight": 0, "queued": 0, "store": None}
    for snapshot in snapshots:
        _add_store_stats(total, snapshot.get("store"))
        for endpoint, status, count in snapshot["requests"]:
            requests[(endpoint, status)] = requests.get((endpoint, status), 0) + count
        for fmt, result, count in snapshot["conversions"]:
            conversions[(fmt, result)] = conversions.get((fmt, result), 0) + count
        _add_histograms(total["latency"], snapshot["latency"])
        _add_histograms(total["conversion_seconds"], snapshot["conversion_seconds"])
        total["bytes"] = [a + b for a, b in zip(total["bytes"], snapshot["bytes"])]
        for result in ("hit", "miss"):
            total["thumbnails"][result] += snapshot["thumbnails"][result]
        total["rejected"] += snapshot["rejected"]
        if now - snapshot["time"] <= stale_after:
            for endpoint, count in snapshot["in_progress"].items():
                total["in_progress"][endpoint] = total["in_progress"].get(endpoint, 0) + count
            total["in_flight"] += snapshot["in_flight"]
            total["queued"] += max(0, snapshot["pending"] - snapshot["in_flight"])
    total["requests"], total["conversions"] = requests, conversions
    return total


def render_snapshot(merged, started):
    """Return a merge_snapshots() result in the Prometheus text format."""
    requests, conversions = merged["requests"], merged["conversions"]
    in_progress = merged["in_progress"]
    bytes_in, bytes_out = merged["bytes"]
    out = []
    _family(out, "webassets_build_info", "gauge", "Version of this server.",
            [({"version": __version__}, 1)])
    _family(out, "webassets_start_time_seconds", "gauge",
            "Unix time the server started.", [({}, started)])
    _family(out, "webassets_requests_total", "counter",
            "Requests answered, by endpoint and status.",
            [({"endpoint": e, "status": s}, n) for (e, s), n in sorted(requests.items())])
    _histograms(out, "webassets_request_duration_seconds",
                "Time to produce a response (a file body is sent after), by endpoint.",
                "endpoint", merged["latency"], LATENCY_BUCKETS)
    _family(out, "webassets_requests_in_progress", "gauge",
            "Requests being handled, by endpoint.",
            [({"endpoint": e}, n) for e, n in sorted(in_progress.items())])
    _family(out, "webassets_uploads_in_progress", "gauge", "Uploads being received.",
            [({}, in_progress.get("/fileupload", 0))])
    _family(out, "webassets_request_bytes_total", "counter",
            "Request body bytes received (as declared by Content-Length).", [({}, bytes_in)])
    _family(out, "webassets_response_bytes_total", "counter",
            "Response body bytes sent (as declared by Content-Length).", [({}, bytes_out)])
    _family(out, "webassets_thumbnail_requests_total", "counter",
            "Thumbnail requests: hit = served from the cache, miss = needed a render.",
            [({"result": "hit"}, merged["thumbnails"]["hit"]),
             ({"result": "miss"}, merged["thumbnails"]["miss"])])
    _family(out, "webassets_thumbnail_rejections_total", "counter",
            "Requests refused with 503 because the conversion queue was full.",
            [({}, merged["rejected"])])
    _family(out, "webassets_conversions_total", "counter",
            "Conversions run, by input format and result.",
            [({"format": f, "result": r}, n) for (f, r), n in sorted(conversions.items())])
    _histograms(out, "webassets_conversion_seconds", "Conversion time by input format.",
                "format", merged["conversion_seconds"], CONVERSION_BUCKETS)
    _family(out, "webassets_conversions_in_flight", "gauge", "Conversions running now.",
            [({}, merged["in_flight"])])
    _family(out, "webassets_conversions_queued", "gauge",
            "Conversions waiting for a free converter slot.", [({}, merged["queued"])])
    if merged["store"] is not None:
        _store_families(out, merged["store"])
    return "".join(out)


def _store_families(out, stats):
    """Add a remote store's requests, their time and its errors (S3: by operation, code)."""
    _family(out, "webassets_store_requests_total", "counter",
            "Requests sent to the store (each attempt), by operation.",
            [({"operation": op}, n) for op, n in sorted(stats["requests"].items())])
    _family(out, "webassets_store_request_seconds_total", "counter",
            "Time spent in store requests (with retries), by operation.",
            [({"operation": op}, float(n)) for op, n in sorted(stats["seconds"].items())])
    _family(out, "webassets_store_errors_total", "counter",
            "Error answers and connection failures of the store, by code.",
            [({"code": code}, n) for code, n in sorted(stats["errors"].items())])


def _labels(labels):
    if not labels:
        return ""
    return "{%s}" % ",".join('%s="%s"' % (name, _escape_label(value))
                             for name, value in labels.items())


def _escape_label(value):
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value):
    if isinstance(value, float):
        return repr(value) if value != int(value) or abs(value) >= 1e15 else "%d" % value
    return str(value)


def _family(out, name, kind, help_text, samples):
    out.append("# HELP %s %s\n# TYPE %s %s\n" % (name, help_text, name, kind))
    for labels, value in samples:
        out.append("%s%s %s\n" % (name, _labels(labels), _number(value)))


def _histograms(out, name, help_text, label, histograms, buckets):
    out.append("# HELP %s %s\n# TYPE %s histogram\n" % (name, help_text, name))
    bounds = [_number(bound) for bound in buckets] + ["+Inf"]
    for key, histogram in sorted(histograms.items()):
        total = 0
        for bound, count in zip(bounds, histogram):
            total += count
            out.append("%s_bucket%s %d\n" % (name, _labels({label: key, "le": bound}), total))
        out.append("%s_sum%s %s\n" % (name, _labels({label: key}), _number(histogram[-1])))
        out.append("%s_count%s %d\n" % (name, _labels({label: key}), total))
