"""The soak case: minutes of mixed requests at c=32; errors, and the RSS of every webassets process."""

import http.client
import logging
import os
import random
import threading
import time
from urllib.parse import urlencode

import cases
import client
import data
import procs
from procs import COLL, HOST

logger = logging.getLogger(__name__)

CONNECTIONS = 32
WARMUP_FRACTION = 0.2
GROWTH_TARGET_MIB = 10.0
CACHED_IMAGES = 50  # tiles whose thumbnail exists before the clock starts
CACHED_SCALE = 200
COLD_SCALES = (123, 200)
BACKLOG = 8  # uploads a client keeps before it deletes one
REQUEST_TIMEOUT = 60.0
# Kind and share of the draws. Cold thumbnails and deletes need an upload of the same client
# first; when it has none, the draw becomes an upload.
MIX = (("thumbnail cached", 0.30), ("original", 0.25), ("getmetadata", 0.10),
       ("upload", 0.12), ("thumbnail cold", 0.12), ("delete", 0.11))
_JPEG = b"\xff\xd8\xff"


class Client:
    """One keep-alive client of the soak and the names it has uploaded."""

    def __init__(self, number, port, tiles, upload_sources):
        self.number = number
        self.rng = random.Random(number)
        self.conn = http.client.HTTPConnection(HOST, port, timeout=REQUEST_TIMEOUT)
        self.tiles = tiles
        self.sources = upload_sources
        self.fresh = []  # uploaded, thumbnail not yet asked for
        self.done = []  # thumbnail made: next to be deleted
        self.count = 0

    def draw(self):
        """Return (kind, method, path, body, headers, check, on_success) for the next request."""
        pick, total = self.rng.random(), 0.0
        for kind, share in MIX:
            total += share
            if pick < total:
                break
        if len(self.fresh) + len(self.done) >= BACKLOG:
            kind = "delete"
        if kind == "thumbnail cold" and not self.fresh:
            kind = "upload"
        if kind == "delete" and not (self.done or self.fresh):
            kind = "upload"
        return getattr(self, "_" + kind.replace(" ", "_"))()

    def _thumbnail_cached(self):
        path = cases.fileget(self.rng.choice(self.tiles), "T", CACHED_SCALE)
        return "thumbnail cached", "GET", path, None, {}, _is_jpeg, None

    def _original(self):
        path = cases.fileget(self.rng.choice(self.tiles))
        return "original", "GET", path, None, {}, _is_jpeg, None

    def _getmetadata(self):
        path = "/getmetadata?" + urlencode([("coll", COLL), ("filename", data.PHOTO),
                                            ("dt", "json")])
        return "getmetadata", "GET", path, None, {}, lambda body: b"BenchCam" in body, None

    def _upload(self):
        self.count += 1
        name = "soak_%d_%d.jpg" % (self.number, self.count)
        preamble, epilogue = client.multipart_frame(name, cases.upload_fields(name),
                                                    "image/jpeg")
        body = preamble + self.rng.choice(self.sources) + epilogue
        return ("upload", "POST", "/fileupload", body, client.upload_headers(),
                lambda reply: reply == b"Ok.", lambda: self.fresh.append(name))

    def _thumbnail_cold(self):
        name = self.fresh.pop(0)
        self.done.append(name)  # deleted later whatever the answer
        path = cases.fileget(name, "T", self.rng.choice(COLD_SCALES))
        return "thumbnail cold", "GET", path, None, {}, _is_jpeg, None

    def _delete(self):
        name = (self.done or self.fresh).pop(0)
        body = urlencode([("filename", name), ("coll", COLL), ("token", cases.token(name))])
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        return "delete", "POST", "/filedelete", body.encode("ascii"), headers, None, None

    def run(self, deadline, records, errors):
        while time.monotonic() < deadline:
            kind, method, path, body, headers, check, on_success = self.draw()
            began = time.perf_counter()
            why = None
            try:
                self.conn.request(method, path, body=body, headers=headers)
                response = self.conn.getresponse()
                reply = response.read()
                if response.status != 200:
                    why = "%s %d %r" % (kind, response.status, reply[:80])
                elif check is not None and not check(reply):
                    why = "%s: unexpected body %r" % (kind, reply[:80])
            except (OSError, http.client.HTTPException) as ex:
                self.conn.close()
                why = "%s: %s" % (kind, type(ex).__name__)
            records.append((kind, time.perf_counter() - began, why is None))
            if why is None and on_success is not None:
                on_success()
            elif why is not None and len(errors) < 20:
                errors.append(why)
        self.conn.close()


def _is_jpeg(body):
    return body.startswith(_JPEG)


def webassets_processes(root):
    """Return the pids of the supervisor `root` and of its children running the same program.

    Workers are the supervisor's forked children; the converters they start (ImageMagick,
    Ghostscript) are grandchildren running another program and are not counted.
    """
    found = [root]
    try:
        exe = os.readlink("/proc/%d/exe" % root)
    except OSError:
        return found
    for pid in procs.children(root):
        try:
            if os.readlink("/proc/%d/exe" % pid) == exe:
                found.append(pid)
        except OSError:
            pass
    return found


class Sampler(threading.Thread):
    """Sample the RSS of every webassets process every `interval` seconds until stopped."""

    def __init__(self, root, interval):
        super().__init__(daemon=True)
        self.root, self.interval = root, interval
        self.samples = []
        self.stopping = threading.Event()
        self.started = time.monotonic()
        self.names = {root: "supervisor"}  # pid -> 'worker N (pid P)', N in order of birth

    def sample(self):
        rss = {}
        for pid in webassets_processes(self.root):
            if pid not in self.names:
                self.names[pid] = "worker %d (pid %d)" % (len(self.names), pid)
            value = procs.proc_status(pid).get("VmRSS")
            if value:
                rss[self.names[pid]] = value
        self.samples.append({"t": time.monotonic() - self.started, "rss_kib": rss})

    def run(self):
        while True:
            self.sample()
            if self.stopping.wait(self.interval):
                self.sample()
                return


def _prewarm(port, tiles):
    """Make the cached thumbnails (two clients); raise RuntimeError if one fails."""
    failures = []

    def walk(share):
        conn = client.Conn(HOST, port)
        for name in share:
            status, body, _ = conn.get(cases.fileget(name, "T", CACHED_SCALE))
            if status != 200:
                failures.append("%s: %d" % (name, status))
        conn.close()

    threads = [threading.Thread(target=walk, args=(tiles[i::2],), daemon=True) for i in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise RuntimeError("soak prewarm failed: " + ", ".join(failures[:5]))


def growth(samples, warmup):
    """Return {name: (RSS at the end of warm-up, peak after it, last), in KiB} per process.

    The baseline is a process's first sample at or after `warmup` seconds; a process that
    appears later (a replaced worker) is measured from its own first sample.
    """
    result = {}
    for sample in samples:
        if sample["t"] < warmup:
            continue
        for name, rss in sample["rss_kib"].items():
            base, peak, _ = result.get(name, (rss, rss, rss))
            result[name] = (base, max(peak, rss), rss)
    return result


def soak(ctx):
    """c=32 for soak_seconds: cached and cold thumbnails, originals, getmetadata, uploads, deletes.

    Targets: no errors, and each process's RSS grows by <= 10 MiB after the warm-up (the
    first 20% of the run); the floor of each RSS row is that process's RSS at the warm-up's end.
    """
    seconds = ctx.params["soak_seconds"]
    store = os.path.join(ctx.run_dir, "store-soak")
    originals = os.path.join(store, "originals")
    tiles = [cases.place(os.path.join(ctx.data["tiles"], tile), originals)
             for tile in data.tile_names(os.path.dirname(ctx.data["tiles"]))[:CACHED_IMAGES]]
    cases.place(ctx.data[data.PHOTO], originals)
    sources = []
    for tile in data.tile_names(os.path.dirname(ctx.data["tiles"]))[100:110]:
        with open(os.path.join(ctx.data["tiles"], tile), "rb") as f:
            sources.append(f.read())
    server = procs.start_webassets(ctx.procs, "webassets-soak", ctx.run_dir, store, ctx.python)
    try:
        _prewarm(server.port, tiles)
        interval = max(1.0, seconds / 60.0)
        sampler = Sampler(server.pid, interval)
        records, errors = [], []
        clients = [Client(number, server.port, tiles, sources) for number in range(CONNECTIONS)]
        logger.info("Soak: %d s at c=%d, RSS sampled every %.0f s", seconds, CONNECTIONS,
                    interval)
        sampler.start()
        began = time.monotonic()
        deadline = began + seconds
        threads = [threading.Thread(target=one.run, args=(deadline, records, errors),
                                    daemon=True) for one in clients]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - began
        sampler.stopping.set()
        sampler.join()
    finally:
        server.stop()
    load = client.summarize(records, elapsed)
    load["error_examples"] = errors
    warmup = WARMUP_FRACTION * seconds
    per_process = growth(sampler.samples, warmup)
    ctx.raw["soak"] = {"seconds": seconds, "connections": CONNECTIONS, "load": load,
                       "sample_seconds": interval, "warmup_seconds": warmup,
                       "samples": sampler.samples,
                       "processes": {name: {"base_kib": base, "peak_kib": peak, "last_kib": last}
                                     for name, (base, peak, last) in per_process.items()}}
    _rows(ctx, seconds, load, per_process, sampler.samples)


def _rows(ctx, seconds, load, per_process, samples):
    case = "Soak c=%d, %d s" % (CONNECTIONS, seconds)
    ctx.row(case, "req/s (p99 %.0f ms)" % (load["p99_ms"] or 0), load["rps"], "req/s")
    ctx.row(case, "errors (of %d)" % load["requests"], load["errors"], "count", target="0",
            met=load["errors"] == 0)
    first = set(samples[0]["rss_kib"]) if samples else set()
    for name in sorted(per_process, key=lambda n: (n != "supervisor", n)):
        base, peak, last = per_process[name]
        grown = (peak - base) / 1024.0
        label = "RSS %s: +%.1f MiB after warm-up (last %.1f MiB)%s" % (
            name, grown, last / 1024.0, "" if name in first else ", started during the run")
        ctx.row(case, label, peak / 1024.0, "MiB", "RSS at the end of warm-up", base / 1024.0,
                "growth <= %g MiB" % GROWTH_TARGET_MIB, grown <= GROWTH_TARGET_MIB)
    replaced = sorted(set(per_process) - first)
    if replaced:
        ctx.notes.append("Soak: processes that started during the run (a worker replaced?): "
                         + ", ".join(replaced) + ".")
