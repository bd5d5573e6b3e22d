"""The slow-client case: trickled heads, slow uploads and slow downloads against a latency probe."""

import json
import logging
import os
import pwd
import signal
import subprocess
import sys
import threading
import time

import cases
import client
import data
import fronts
import procs
from procs import HOST

from webassets import thumbnails

logger = logging.getLogger(__name__)

HEADS, UPLOADS, DOWNLOADS = 256, 64, 64
HEAD_RATE = 1  # bytes a second
TRANSFER_RATE = 10 * 1024  # bytes a second, each upload and each download
DECLARED_UPLOAD = 300 * 1000 * 1000  # a field station's TIFF; never sent whole here
DOWNLOAD_MIB = 100
PROBE_TIMEOUT = 10.0  # a probe request that waits longer on one step is an error
HEALTH_INTERVAL = 0.1
P99_TARGET_MS, HEALTH_TARGET_MS = 1000.0, 100.0
READY_TIMEOUT = 15.0  # for the generator to have tried every first connection
SETTLE = 2.0  # seconds between the attack being in place and the probe starting
THUMB_SCALE = 200
TRICKLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "trickle.py")


class Variant:
    """One server set-up under test: its front port, the URLs to use, what to stop after."""

    def __init__(self, label, port, servers, paths, targets=True, uploads=True, note=None):
        self.label = label
        self.port = port
        self.servers = servers
        self.paths = paths  # 'original', 'thumbnail', 'health', 'download'
        self.targets = targets
        self.uploads = uploads
        self.note = note

    def stop(self):
        for server in reversed(self.servers):
            server.stop()


# ---------------------------------------------------------------------------- the store

def _prepare_store(ctx):
    """Lay out the store all variants share: the probe's original, the download, a tile."""
    store = os.path.join(ctx.run_dir, "store-slow")
    originals = os.path.join(store, "originals")
    download = data.download_file(os.path.dirname(ctx.data[data.SMALL]), DOWNLOAD_MIB)
    names = {"original": cases.place(ctx.data[data.SMALL], originals),
             "download": cases.place(download, originals),
             "thumbnail": cases.place(os.path.join(ctx.data["tiles"], "img_000.jpg"), originals)}
    with open(os.path.join(store, "healthz"), "w") as f:
        f.write("ok\n")  # what the static nginx reference serves as its /healthz
    return store, names


def _webassets_paths(names):
    return {"original": cases.fileget(names["original"]),
            "thumbnail": cases.fileget(names["thumbnail"], "T", THUMB_SCALE),
            "download": cases.fileget(names["download"]), "health": "/healthz"}


def _chown_store(store, user="www-data"):
    """Give the store to Apache's daemon user (as root, mod_wsgi runs the app as www-data)."""
    if os.geteuid() != 0:
        return
    entry = pwd.getpwnam(user)
    for root, dirs, files in os.walk(store):
        for name in [root] + [os.path.join(root, n) for n in dirs + files]:
            os.chown(name, entry.pw_uid, entry.pw_gid)


def _offload_available(python):
    """Return True if the webassets under test has the FILE_OFFLOAD setting."""
    check = "from webassets import config; raise SystemExit('FILE_OFFLOAD' not in " \
            "config.Settings._fields)"
    env = dict(os.environ, PYTHONPATH=procs.REPO)
    return subprocess.call([python, "-c", check], env=env, cwd=procs.REPO) == 0


# ---------------------------------------------------------------------------- variants

def _builtin(ctx, store, names):
    server = procs.start_webassets(ctx.procs, "webassets-slow", ctx.run_dir, store, ctx.python)
    return Variant("built-in", server.port, [server], _webassets_paths(names))


def _nginx_front(ctx, store, names, offload):
    if procs.nginx_path() is None:
        return None
    prefix = fronts.nginx_internal_prefix()
    extra, note = "", "nginx front: FILE_OFFLOAD off"
    if offload and prefix:
        extra = "FILE_OFFLOAD = 'nginx'\nFILE_OFFLOAD_PREFIX = %r\n" % prefix
        note = "nginx front: FILE_OFFLOAD = 'nginx' (X-Accel-Redirect to %s)" % prefix
    backend = procs.start_webassets(ctx.procs, "webassets-behind-nginx", ctx.run_dir, store,
                                    ctx.python, extra=extra)
    try:
        nginx = fronts.start_shipped_nginx(ctx.procs, ctx.run_dir, backend.port, store)
    except Exception:
        backend.stop()
        raise
    return Variant("nginx front" + (", offload" if extra else ""), nginx.port,
                   [backend, nginx], _webassets_paths(names), note=note)


def _apache(ctx, store, names, offload):
    if procs.apache_missing():
        return None
    extra, note = "", "Apache: FILE_OFFLOAD off"
    if offload and fronts.apache_offload():
        extra, note = "FILE_OFFLOAD = 'apache'\n", "Apache: FILE_OFFLOAD = 'apache' (X-Sendfile)"
    _chown_store(store)
    server = fronts.start_shipped_apache(ctx.procs, ctx.run_dir, store, extra)
    if server is None:
        return None
    return Variant("Apache mod_wsgi" + (", offload" if extra else ""), server.port, [server],
                   _webassets_paths(names), note=note)


def _nginx_static(ctx, store, names):
    server = procs.start_nginx(ctx.procs, ctx.run_dir, store, name="nginx-slow-reference")
    if server is None:
        return None
    paths = {"original": "/originals/" + names["original"],
             "thumbnail": "/thumbnails/" + _thumb_name(names),
             "download": "/originals/" + names["download"], "health": "/healthz"}
    return Variant("nginx static (reference)", server.port, [server], paths, targets=False,
                   uploads=False, note="nginx static reference: no uploads (it has no "
                   "upload handler)")


def _thumb_name(names):
    return thumbnails.thumbnail_name(names["thumbnail"], THUMB_SCALE)


# ---------------------------------------------------------------------------- the attack

def _spec(port, variant, names):
    """Return the trickle.py spec: heads, uploads (Specify 7's multipart) and downloads."""
    host = "Host: %s:%d\r\n" % (HOST, port)
    heads = ["GET %s HTTP/1.1\r\n%s" % (variant.paths["original"], host)]
    downloads = ["GET %s HTTP/1.1\r\n%sUser-Agent: bench-slow-download\r\n\r\n"
                 % (variant.paths["download"], host)]
    uploads, tail = [], ""
    for index in range(UPLOADS if variant.uploads else 0):
        store_name = "slow_upload_%d.tif" % index
        preamble, tail = client.multipart_frame(store_name, cases.upload_fields(store_name),
                                                "image/tiff")
        length = len(preamble) + DECLARED_UPLOAD + len(tail)
        uploads.append("POST /fileupload HTTP/1.1\r\n%sContent-Type: %s\r\nContent-Length: %d"
                       "\r\n\r\n" % (host, client.upload_headers()["Content-Type"], length)
                       + preamble.decode("latin-1"))
        tail = tail.decode("latin-1")
    kinds = [{"name": "head", "heads": heads, "count": HEADS, "trickle_head": True,
              "send_rate": HEAD_RATE},
             {"name": "download", "heads": downloads, "count": DOWNLOADS,
              "recv_rate": TRANSFER_RATE}]
    if uploads:
        kinds.insert(1, {"name": "upload", "heads": uploads, "count": UPLOADS,
                         "send_rate": TRANSFER_RATE, "body_bytes": DECLARED_UPLOAD,
                         "tail": tail})
    return {"host": HOST, "port": port, "ramp_per_second": 200, "reopen_after": 1.0,
            "kinds": kinds}


class Attack:
    """trickle.py running in its own process; its JSON lines are read as they come."""

    def __init__(self, run_dir, label, spec):
        slug = "".join(c if c.isalnum() else "-" for c in label.lower())
        spec_path = os.path.join(run_dir, "trickle-%s.json" % slug)
        with open(spec_path, "w") as f:
            json.dump(spec, f)
        self.stderr = open(os.path.join(run_dir, "logs", "trickle-%s.log" % slug), "wb")
        self.popen = subprocess.Popen([sys.executable, TRICKLE, spec_path],
                                      stdout=subprocess.PIPE, stderr=self.stderr,
                                      stdin=subprocess.DEVNULL)
        self.last = None
        self.final = None
        self.ready = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.popen.stdout:
            try:
                report = json.loads(line.decode("utf-8"))
            except ValueError:
                continue
            self.last = report
            if report.get("event") == "ready":
                self.ready.set()
            elif report.get("event") == "final":
                self.final = report

    def stop(self):
        """SIGTERM it: it closes every socket and prints its final counters; return them."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(15)
        except subprocess.TimeoutExpired:
            logger.warning("trickle.py did not stop; killing it")
            self.popen.kill()
            self.popen.wait()
        self.reader.join(5)
        self.stderr.close()
        return self.final or self.last


def server_connections(port):
    """Count TCP connections to 127.0.0.1:port the server side still holds (not TIME_WAIT)."""
    count = 0
    local = "0100007F:%04X" % port
    for table in ("/proc/net/tcp",):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    # 0A: LISTEN, 06: TIME_WAIT (no socket left); the rest hold one.
                    if fields[1] == local and fields[3] not in ("0A", "06"):
                        count += 1
        except OSError:
            pass
    return count


# ---------------------------------------------------------------------------- the probes

def _probe_loop(port, paths, expected, stop, records, interval=0.0):
    """GET each path in turn on a new connection until `stop`; record (path, s, ok, why)."""
    index = 0
    while not stop.is_set():
        path = paths[index % len(paths)]
        index += 1
        began = time.perf_counter()
        try:
            status, size, _ = client.get_to_null(HOST, port, path, timeout=PROBE_TIMEOUT)
            why = None if status == 200 and size == expected[path] else \
                "status %d, %d bytes" % (status, size)
        except (OSError, ValueError, IndexError) as ex:  # socket.timeout is an OSError
            why = type(ex).__name__
        elapsed = time.perf_counter() - began
        records.append((path, elapsed, why is None, why))
        if interval:
            stop.wait(max(0.0, interval - elapsed))


def _summary(records):
    latencies = sorted(seconds * 1000.0 for _, seconds, _, _ in records)
    reasons = {}
    for _, _, ok, why in records:
        if not ok:
            reasons[why] = reasons.get(why, 0) + 1
    return {"requests": len(records), "errors": sum(1 for r in records if not r[2]),
            "p50_ms": client.percentile(latencies, 0.50),
            "p99_ms": client.percentile(latencies, 0.99),
            "max_ms": latencies[-1] if latencies else None, "error_reasons": reasons}


def probe(port, paths, expected, seconds):
    """Run the GET probe and the /healthz probe side by side; return their summaries."""
    stop = threading.Event()
    gets, health = [], []
    threads = [threading.Thread(target=_probe_loop, daemon=True,
                                args=(port, [paths["original"], paths["thumbnail"]], expected,
                                      stop, gets)),
               threading.Thread(target=_probe_loop, daemon=True,
                                args=(port, [paths["health"]], expected, stop, health,
                                      HEALTH_INTERVAL))]
    for thread in threads:
        thread.start()
    stop.wait(seconds)
    stop.set()
    for thread in threads:
        thread.join(PROBE_TIMEOUT * 3)
    return {"get": _summary(gets), "health": _summary(health)}


# ---------------------------------------------------------------------------- the case

def _expected(ctx, store, names, paths):
    thumb = os.path.join(store, "thumbnails", _thumb_name(names))
    return {paths["original"]: os.path.getsize(ctx.data[data.SMALL]),
            paths["thumbnail"]: os.path.getsize(thumb), paths["health"]: 3}


def _warm(port, paths):
    """GET every probe URL once (the thumbnail gets made); raise RuntimeError unless 200."""
    for path in (paths["thumbnail"], paths["original"], paths["health"]):
        status, size, _ = client.get_to_null(HOST, port, path, timeout=60)
        if status != 200:
            raise RuntimeError("warm-up GET %s: status %d, %d bytes" % (path, status, size))


def run_variant(ctx, variant, names, store):
    """Measure one variant: the quiet probe (floor), then the probe under the slow load."""
    params = ctx.params
    _warm(variant.port, variant.paths)
    expected = _expected(ctx, store, names, variant.paths)
    logger.info("Slow clients, %s: quiet probe for %d s", variant.label,
                params["slow_floor_seconds"])
    quiet = probe(variant.port, variant.paths, expected, params["slow_floor_seconds"])
    rss_quiet = _rss_kib(variant)
    attack = Attack(ctx.run_dir, variant.label, _spec(variant.port, variant, names))
    began = time.monotonic()
    try:
        if not attack.ready.wait(READY_TIMEOUT):
            logger.warning("%s: the slow connections were not all connected after %d s",
                           variant.label, READY_TIMEOUT)
        time.sleep(SETTLE)
        at_start = attack.last
        logger.info("Slow clients, %s: probe under load for %d s", variant.label,
                    params["slow_seconds"])
        loaded = probe(variant.port, variant.paths, expected, params["slow_seconds"])
        during = attack.last
        rss_loaded = _rss_kib(variant)
    finally:
        final = attack.stop()
    wall = time.monotonic() - began
    time.sleep(2.0)  # let the server notice the closes
    left = server_connections(variant.port)
    return {"label": variant.label, "note": variant.note, "quiet": quiet, "loaded": loaded,
            "attack_at_probe_start": at_start, "attack_at_probe_end": during,
            "attack_final": final, "attack_wall_seconds": wall,
            "server_connections_after_teardown": left,
            "rss_kib": {"quiet": rss_quiet, "loaded": rss_loaded}}


def _rss_kib(variant):
    """Return the RSS in KiB of the webassets processes of a variant (None if none)."""
    sizes = [server.rss_kib() for server in variant.servers if server.name.startswith("webassets")]
    return sum(sizes) if sizes else None


def slow_clients(ctx):
    """256 heads at 1 byte/s, 64 uploads and 64 downloads at 10 KiB/s; a probe's p99 and errors.

    Variants: the built-in server with its defaults, nginx in front of it (the shipped conf,
    plain HTTP, FILE_OFFLOAD when available), Apache mod_wsgi (the shipped conf) and, for
    reference, nginx serving the same files itself.
    """
    store, names = _prepare_store(ctx)
    offload = ctx.params.get("offload", "auto")
    if offload == "auto":
        offload = _offload_available(ctx.python)
    else:
        offload = offload == "on"
    starters = [lambda: _builtin(ctx, store, names),
                lambda: _nginx_front(ctx, store, names, offload)]
    if ctx.params.get("apache", True):
        starters.append(lambda: _apache(ctx, store, names, offload))
    starters.append(lambda: _nginx_static(ctx, store, names))
    results = ctx.raw["slow_clients"] = {
        "heads": HEADS, "uploads": UPLOADS, "downloads": DOWNLOADS, "variants": [],
        "rates": {"head": HEAD_RATE, "upload": TRANSFER_RATE, "download": TRANSFER_RATE}}
    for start in starters:
        variant = start()
        if variant is None:
            continue
        try:
            result = run_variant(ctx, variant, names, store)
        finally:
            variant.stop()
        results["variants"].append(result)
        _rows(ctx, variant, result)
        if variant.note:
            ctx.notes.append("Slow clients, " + variant.note + ".")
    # Every upload was cut mid-body: the servers must have removed their temporary files.
    expected = set(names.values())
    left = sorted(name for name in os.listdir(os.path.join(store, "originals"))
                  if name not in expected)
    results["files_left_in_originals"] = left
    if left:
        ctx.notes.append("Slow clients: %d files left in originals/ after the cut uploads "
                         "(e.g. %s)." % (len(left), ", ".join(left[:3])))
    cpu = [_generator_cpu(result) for result in results["variants"]]
    ctx.row("Slow clients: load generator", "CPU (one process, max over variants)",
            max(cpu) if cpu else None, "% of a CPU")


def _generator_cpu(result):
    final = result["attack_final"] or {}
    return 100.0 * final.get("cpu_seconds", 0.0) / max(0.001, final.get("t", 0.0))


def _rows(ctx, variant, result):
    case = "Slow clients: " + variant.label
    quiet, loaded = result["quiet"], result["loaded"]
    get, health = loaded["get"], loaded["health"]
    targets = variant.targets
    ctx.row(case, "probe p99", get["p99_ms"], "ms", "same probe, no slow clients",
            quiet["get"]["p99_ms"], "< 1000 ms" if targets else None,
            get["p99_ms"] < P99_TARGET_MS if targets else None)
    ctx.row(case, "probe errors (of %d)" % get["requests"], get["errors"], "count",
            "no slow clients", quiet["get"]["errors"], "0" if targets else None,
            get["errors"] == 0 if targets else None, ratio=None)
    ctx.row(case, "/healthz max (p99 %s)" % _ms(health["p99_ms"]), health["max_ms"], "ms",
            "no slow clients", quiet["health"]["max_ms"], "<= 100 ms" if targets else None,
            (health["max_ms"] <= HEALTH_TARGET_MS and health["errors"] == 0)
            if targets else None)
    kinds = (result["attack_at_probe_end"] or {}).get("kinds", {})
    open_now = sum(kind["open"] for kind in kinds.values())
    asked = sum(kind["target"] for kind in kinds.values())
    ctx.row(case, "slow connections open at the probe's end", open_now, "count",
            "slow connections asked", asked)
    rss = result["rss_kib"]
    if rss["quiet"] and rss["loaded"] and open_now:
        # Memory bound: what each open slow connection costs the webassets processes.
        ctx.row(case, "webassets RSS per slow connection (%.0f -> %.0f MiB)"
                % (rss["quiet"] / 1024.0, rss["loaded"] / 1024.0),
                (rss["loaded"] - rss["quiet"]) / float(open_now), "KiB", ratio=None)


def _ms(value):
    return "-" if value is None else "%.0f ms" % value
