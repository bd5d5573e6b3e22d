"""Prometheus metrics: thread-safe counters and histograms, rendered in the text format."""

import bisect
import threading
import time

from . import __version__

__all__ = ["Metrics", "CONTENT_TYPE", "OTHER_ENDPOINT"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OTHER_ENDPOINT = "other"  # requests that matched no route: one label, whatever the path
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0, 60.0)
CONVERSION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


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

    # -- exposition

    def render(self):
        """Return every metric in the Prometheus text format (version 0.0.4)."""
        with self._lock:
            requests = dict(self._requests)
            latency = {key: list(value) for key, value in self._latency.items()}
            in_progress = dict(self._in_progress)
            bytes_in, bytes_out = self._bytes
            hits, misses = self._thumbnails["hit"], self._thumbnails["miss"]
            rejected, in_flight = self._rejected, self._in_flight
            conversions = dict(self._conversions)
            seconds = {key: list(value) for key, value in self._conversion_seconds.items()}
        # NOTE: read without the Thumbnailer's lock; a scrape may be off by one, never wrong.
        pending = getattr(self.thumbnailer, "pending", 0)
        out = []
        _family(out, "webassets_build_info", "gauge", "Version of this server.",
                [({"version": __version__}, 1)])
        _family(out, "webassets_start_time_seconds", "gauge",
                "Unix time the server started.", [({}, self.started)])
        _family(out, "webassets_requests_total", "counter",
                "Requests answered, by endpoint and status.",
                [({"endpoint": e, "status": s}, n) for (e, s), n in sorted(requests.items())])
        _histograms(out, "webassets_request_duration_seconds",
                    "Time to produce a response (a file body is sent after), by endpoint.",
                    "endpoint", latency, LATENCY_BUCKETS)
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
                [({"result": "hit"}, hits), ({"result": "miss"}, misses)])
        _family(out, "webassets_thumbnail_rejections_total", "counter",
                "Requests refused with 503 because the conversion queue was full.",
                [({}, rejected)])
        _family(out, "webassets_conversions_total", "counter",
                "Conversions run, by input format and result.",
                [({"format": f, "result": r}, n) for (f, r), n in sorted(conversions.items())])
        _histograms(out, "webassets_conversion_seconds", "Conversion time by input format.",
                    "format", seconds, CONVERSION_BUCKETS)
        _family(out, "webassets_conversions_in_flight", "gauge", "Conversions running now.",
                [({}, in_flight)])
        _family(out, "webassets_conversions_queued", "gauge",
                "Conversions waiting for a free converter slot.",
                [({}, max(0, pending - in_flight))])
        return "".join(out)


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
