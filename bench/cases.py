"""The benchmark cases: each measures webassets and, in the same run, the floor it cannot beat."""

import collections
import hashlib
import logging
import os
import re
import resource
import shlex
import shutil
import subprocess
import threading
import time
from urllib.parse import urlencode

import client
import data
import procs
from procs import COLL, HOST, KEY

from webassets import auth, imageformats, thumbnails

logger = logging.getLogger(__name__)

SCALE = 200
MIXED_SCALES = (123, 200, 300)
STAMPEDE = 32
MB = 1000.0 * 1000.0
MIB = 1024.0 * 1024.0

# (label, data file, thumbnailer input format, floor label, target ratio): issue 13's targets.
THUMB_FORMATS = (
    ("JPEG 6000x4000", data.PHOTO, "jpeg", "convert, hinted", 1.1),
    ("TIFF 4000x3000 16-bit", data.SCAN, "tiff", "convert", 0.5),
    ("PNG 4000x3000", data.PLATE, "png", "convert", 0.7),
    ("GIF 3000x2000 drawing", data.DRAWING, "gif", "convert", 0.7),
    ("WebP 3000x2000", data.WEBP, "webp", "convert", 0.7),
    ("BMP 3000x2000", data.BMP, "bmp", "convert", 0.7),
    ("PDF 20 pages of text", data.DOC, "pdf", "gs, same options", 1.2),
    ("PDF vector map page", data.MAP, "pdf", "gs, same options", 1.2),
    ("PDF scanned page", data.SCANNED, "pdf", "gs, same options", 1.2),
)
_MAGIC = {".jpg": b"\xff\xd8\xff", ".png": b"\x89PNG", ".gif": b"GIF8", ".webp": b"RIFF",
          ".bmp": b"BM"}


class Context:
    """What the cases share: settings, data, the running servers and the collected results."""

    def __init__(self, params, run_dir, data_paths, python):
        self.params = params
        self.run_dir = run_dir
        self.data = data_paths
        self.python = python
        self.store = os.path.join(run_dir, "store")
        self.originals = os.path.join(self.store, "originals")
        self.thumbs = os.path.join(self.store, "thumbnails")
        self.procs = None
        self.servers = {}  # 'webassets', 'nginx', 'http.server', 'sink' -> procs.Server or None
        self.rows = []
        self.raw = {}
        self.notes = []
        self.thumb_floor_ms = {}  # input format -> median floor ms, reused by the stampede

    def web(self):
        return self.servers["webassets"]

    def row(self, case, metric, value, unit, floor=None, floor_value=None, target=None,
            met=None, ratio=None):
        """Record one line of the results table; the ratio is value / floor_value."""
        if ratio is None and value is not None and floor_value:
            ratio = value / floor_value
        self.rows.append({"case": case, "metric": metric, "value": value, "unit": unit,
                          "floor": floor, "floor_value": floor_value, "ratio": ratio,
                          "target": target, "met": met})

    def skip(self, what, why):
        logger.warning("Skipping %s: %s", what, why)
        self.notes.append("Skipped %s: %s." % (what, why))


def fileget(name, kind="O", scale=None):
    """Return the /fileget path of an original (kind O) or a thumbnail (kind T)."""
    query = [("coll", COLL), ("type", kind), ("filename", name)]
    if scale is not None:
        query.append(("scale", str(scale)))
    return "/fileget?" + urlencode(query)


def place(source, directory, name=None):
    """Hard-link (or copy) a data file into a store directory; return its name there."""
    name = name or os.path.basename(source)
    os.makedirs(directory, exist_ok=True)
    target = os.path.join(directory, name)
    if not os.path.exists(target):
        try:
            os.link(source, target)
        except OSError:
            with open(source, "rb") as src, open(target, "wb") as dst:
                dst.write(src.read())
    return name


def token(name):
    return auth.generate_token(KEY, int(time.time()), name)


def upload_fields(store):
    return (("token", token(store)), ("store", store), ("type", "O"), ("coll", COLL))


# ---------------------------------------------------------------------------- 64 KiB GET

def small_get(ctx):
    """64 KiB original at c=1, 8, 64: webassets vs `python -m http.server` and nginx.

    Servers take turns within each round (so background load hits all of them alike); the
    figures are medians over the rounds, errors are summed.
    """
    name = place(ctx.data[data.SMALL], ctx.originals)
    seconds = ctx.params["get_seconds"]
    targets = [(label, path) for label, path in (
        ("webassets", fileget(name)), ("apache", fileget(name)), ("http.server", "/" + name),
        ("nginx", "/" + name)) if ctx.servers.get(label) is not None]
    for label, path in targets:
        client.warm_up(HOST, ctx.servers[label].port, path)
    raw = ctx.raw["small_get"] = {}
    for connections in (1, 8, 64):
        runs = {label: [] for label, _ in targets}
        for _ in range(ctx.params["get_rounds"]):
            for label, path in targets:
                server = ctx.servers[label]
                logger.info("64 KiB GET c=%d on %s", connections, label)
                cpu = server.cpu_seconds()
                result = client.load_get(HOST, server.port, path, connections, seconds)
                result["cpu_ms_per_request"] = ((server.cpu_seconds() - cpu) * 1000.0
                                                / max(1, result["requests"]))
                runs[label].append(result)
        results = raw["c=%d" % connections] = {label: _combine(runs[label]) for label in runs}
        _small_get_rows(ctx, connections, results)


def _combine(runs):
    """Merge repeated load runs: medians of the rates and percentiles, errors summed."""
    merged = {"runs": runs, "errors": sum(run["errors"] for run in runs),
              "generator": runs[0]["generator"]}
    for key in ("rps", "p50_ms", "p99_ms", "cpu_ms_per_request"):
        values = [run[key] for run in runs if run.get(key) is not None]
        merged[key] = client.median(values) if values else None
    return merged


def _small_get_rows(ctx, connections, results):
    case = "64 KiB GET c=%d" % connections
    web, pyhttp, nginx = (results.get(k) for k in ("webassets", "http.server", "nginx"))
    target = {8: ">= 2x"}.get(connections)
    ratio_met = web["rps"] >= 2 * pyhttp["rps"] if target else None
    ctx.row(case, "req/s", web["rps"], "req/s", "http.server", pyhttp["rps"], target, ratio_met)
    if nginx:
        ctx.row(case, "req/s", web["rps"], "req/s", "nginx", nginx["rps"])
    p99_target = "< 100 ms, 0 errors" if connections == 64 else None
    p99_met = (web["p99_ms"] < 100 and web["errors"] == 0) if p99_target else None
    ctx.row(case, "p99", web["p99_ms"], "ms", "http.server", pyhttp["p99_ms"], p99_target, p99_met)
    if connections == 8:
        ctx.row(case, "server CPU per request", web["cpu_ms_per_request"], "ms", "http.server",
                pyhttp["cpu_ms_per_request"])
    if connections == 64:
        ctx.row(case, "errors", web["errors"], "count", "http.server", pyhttp["errors"], "0",
                web["errors"] == 0, ratio=None)
    apache = results.get("apache")
    if apache:
        case = "64 KiB GET c=%d, Apache mod_wsgi" % connections
        ctx.row(case, "req/s", apache["rps"], "req/s", "http.server", pyhttp["rps"])
        ctx.row(case, "p99", apache["p99_ms"], "ms", "http.server", pyhttp["p99_ms"])


# ---------------------------------------------------------------------------- 512 MiB GET

def big_get(ctx):
    """Large original, one connection at a time: MB/s vs nginx, and the server's peak RSS."""
    name = place(ctx.data["big"], ctx.originals)
    size = os.path.getsize(ctx.data["big"])
    label = "%d MiB GET" % (size // MIB)
    web, nginx, apache = ctx.web(), ctx.servers.get("nginx"), ctx.servers.get("apache")
    rates = {"webassets": [], "nginx": [], "apache": []}
    rss_before = web.rss_kib()
    exact_peak = web.reset_peak()
    for rep in range(ctx.params["big_reps"]):
        for server, path in ((web, fileget(name)), (nginx, "/" + name),
                             (apache, fileget(name))):
            if server is None:
                continue
            status, got, seconds = client.get_to_null(HOST, server.port, path)
            if status != 200 or got != size:
                raise RuntimeError("%s GET: status %d, %d of %d bytes" % (server.name, status,
                                                                          got, size))
            rates[server.name].append(size / seconds / MB)
    peak = web.peak_kib()
    ctx.raw["big_get"] = {"size": size, "mb_s": rates, "rss_before_kib": rss_before,
                          "peak_kib": peak, "peak_reset": exact_peak}
    web_rate = client.median(rates["webassets"])
    if nginx is None:
        ctx.skip("the %s nginx floor" % label, "nginx is not installed")
        ctx.row(label, "MB/s", web_rate, "MB/s")
    else:
        nginx_rate = client.median(rates["nginx"])
        ctx.row(label, "MB/s", web_rate, "MB/s", "nginx", nginx_rate, ">= 0.9x",
                web_rate >= 0.9 * nginx_rate)
    if apache is not None and nginx is not None:
        ctx.row(label + ", Apache mod_wsgi", "MB/s", client.median(rates["apache"]), "MB/s",
                "nginx", client.median(rates["nginx"]))
    ctx.row(label, "server peak RSS (+%.1f MiB during the GETs)" % ((peak - rss_before) / 1024.0),
            peak / 1024.0, "MiB")


# ---------------------------------------------------------------------------- 512 MiB upload

def big_upload(ctx):
    """Large multipart upload streamed from disk: MB/s vs a bare socket sink, RSS growth."""
    source = ctx.data["big"]
    size = os.path.getsize(source)
    label = "%d MiB upload" % (size // MIB)
    web, sink = ctx.web(), ctx.servers["sink"]
    store = "upload_big.bin"
    rates = {"webassets": [], "sink": []}
    growth = []
    for rep in range(ctx.params["upload_reps"]):
        preamble, epilogue = client.multipart_frame(store, upload_fields(store))
        before = web.rss_kib()
        web.reset_peak()
        status, body, seconds = client.post_file(HOST, web.port, "/fileupload", preamble,
                                                 source, size, epilogue)
        if status != 200 or body != b"Ok.":
            raise RuntimeError("upload failed: %d %r" % (status, body[:200]))
        growth.append((web.peak_kib() - before) / 1024.0)
        rates["webassets"].append(size / seconds / MB)
        os.unlink(os.path.join(ctx.originals, store))
        status, body, seconds = client.post_file(HOST, sink.port, "/fileupload", preamble,
                                                 source, size, epilogue)
        if status != 200:
            raise RuntimeError("sink upload failed: %d" % status)
        rates["sink"].append(size / seconds / MB)
    ctx.raw["big_upload"] = {"size": size, "mb_s": rates, "rss_growth_mib": growth}
    web_rate, sink_rate = client.median(rates["webassets"]), client.median(rates["sink"])
    ctx.row(label, "MB/s", web_rate, "MB/s", "socket sink", sink_rate, ">= 0.5x",
            web_rate >= 0.5 * sink_rate)
    ctx.row(label, "server RSS growth", max(growth), "MiB", target="<= 40 MiB",
            met=max(growth) <= 40)


# ---------------------------------------------------------------------------- thumbnails

def reference_argv(converter, gs, source, fmt, target, scale=SCALE, hinted=True):
    """Return the command the reference server would run for this thumbnail, by hand.

    The reference runs `convert SRC[0] -resize NxN> OUT`; JPEGs are judged against it with the
    `jpeg:size` decode hint (hinted=True), the fastest stock command. PDFs cannot go through
    stock ImageMagick (its policy forbids the PDF coder), so their floor is Ghostscript with
    webassets' own resolution and antialiasing: the ratio is the server's whole overhead.
    """
    if fmt == "pdf":
        dpi = thumbnails.pdf_resolution(imageformats.read_pdf_page_size(source), scale)
        return thumbnails.ghostscript_args(gs, source, target, dpi, thumbnails.pdf_downscale(scale))
    argv = [converter]
    if fmt == "jpeg" and hinted:
        with open(source, "rb") as f:
            hint = thumbnails.jpeg_size_hint(imageformats.read_dimensions(f, fmt), scale)
        if hint:
            argv += ["-define", "jpeg:size=%dx%d" % hint]
    return argv + ["%s[0]" % source, "-resize", "%dx%d>" % (scale, scale), target]


def _previous_pdf_argv(gs, source, target):
    """Return the PDF command of webassets before issue 13: alpha bits at the final dpi."""
    # NOTE: the old pdf_resolution rounded to the nearest 0.001 dpi, not down.
    dpi = round(SCALE * 72.0 / max(imageformats.read_pdf_page_size(source)), 3)
    return [gs, "-dSAFER", "-dBATCH", "-dNOPAUSE", "-dQUIET", "-dFirstPage=1", "-dLastPage=1",
            "-sDEVICE=png16m", "-r%g" % dpi, "-dTextAlphaBits=4", "-dGraphicsAlphaBits=4",
            "-o", target, "-f", source]


def _reference_pdf_panel(converter, gs, source, work, target):
    """Render a PDF as the reference's convert would (gs at 72 dpi, then -resize) to `target`."""
    page = os.path.join(work, "page72.png")
    _run_floor([gs, "-dSAFER", "-dBATCH", "-dNOPAUSE", "-dQUIET", "-dFirstPage=1",
                "-dLastPage=1", "-sDEVICE=png16m", "-r72", "-dTextAlphaBits=4",
                "-dGraphicsAlphaBits=4", "-o", page, "-f", source])
    _run_floor([converter, page, "-resize", "%dx%d>" % (SCALE, SCALE), target])


def _side_by_side(converter, panels, target):
    """Write the PNG `target`: the images `panels` left to right on grey, shown at 2x."""
    argv = [converter, "-background", "#888888"]
    for path in panels:
        argv += ["(", path + "[0]", "-bordercolor", "#888888", "-border", "4", ")"]
    _run_floor(argv + ["+append", "-sample", "200%", "png:" + target])


def thumbs(ctx):
    """Cold and cached thumbnails at scale 200 per format vs the reference's command by hand.

    Writes the before/after images to OUT/thumbs/: NAME-reference.* (the floor's output),
    NAME-webassets.* (the served thumbnail) and NAME.png, the two side by side at 2x (for
    PDFs: the reference's own pipeline, webassets before issue 13, webassets now).
    """
    converter, gs = converters()
    web = ctx.web()
    out_dir = os.path.join(ctx.run_dir, "floor")
    os.makedirs(out_dir, exist_ok=True)
    shots = os.path.join(os.path.dirname(ctx.run_dir), "thumbs")
    shutil.rmtree(shots, ignore_errors=True)  # only this run's images
    os.makedirs(shots)
    raw = ctx.raw["thumbnails"] = {"convert": converter, "gs": gs, "images": shots}
    for label, data_name, fmt, floor_label, target in THUMB_FORMATS:
        name = place(ctx.data[data_name], ctx.originals)
        thumb_name = thumbnails.thumbnail_name(name, SCALE)
        ext = os.path.splitext(thumb_name)[1]
        magic = _MAGIC[ext]
        slug = data_name.replace(".", "-")
        reference = os.path.join(shots, "%s-reference%s" % (slug, ext))
        argv = reference_argv(converter, gs, ctx.data[data_name], fmt, reference)
        conn = client.Conn(HOST, web.port)
        cold, floor, previous, cold_cpu, floor_cpu = [], [], [], [], []
        before = os.path.join(shots, "%s-previous.png" % slug)
        previous_argv = _previous_pdf_argv(gs, ctx.data[data_name], before) if fmt == "pdf" \
            else None
        logger.info("Cold thumbnails: %s", label)
        _timed_get(conn, fileget(name, "T", SCALE), magic)  # warm-up, not timed
        _run_floor(argv)
        for rep in range(ctx.params["cold_reps"]):
            try:
                os.unlink(os.path.join(ctx.thumbs, thumb_name))
            except FileNotFoundError:
                pass
            # Pairs back to back, the order alternating: both sides of a pair see the same
            # background load, and neither always goes first.
            if rep % 2:
                floor.append(_run_floor(argv, floor_cpu))
            cpu_before = web.cpu_seconds(reaped=True)
            cold.append(_timed_get(conn, fileget(name, "T", SCALE), magic)[0])
            cold_cpu.append((web.cpu_seconds(reaped=True) - cpu_before) * 1000.0)
            if not rep % 2:
                floor.append(_run_floor(argv, floor_cpu))
            if previous_argv:
                previous.append(_run_floor(previous_argv))
        ratio = client.median([ours / base for ours, base in zip(cold, floor)])
        entry = raw[label] = {"cold_ms": cold, "floor_ms": floor, "pair_ratio": ratio,
                              "cold_cpu_ms": cold_cpu, "floor_cpu_ms": floor_cpu,
                              "floor_argv": subprocess.list2cmdline(argv)}
        ctx.thumb_floor_ms[fmt] = client.median(floor)
        case = "Cold thumbnail %s" % label
        cold_ms = client.median(cold)
        ctx.row(case, "latency", cold_ms, "ms", floor_label, client.median(floor),
                "<= %gx" % target, ratio <= target, ratio=ratio)
        # CPU time (server and its converters vs the floor command) hardly depends on what
        # else the machine runs: the steadier figure when the wall times are noisy.
        ctx.row(case, "CPU time", client.median(cold_cpu), "ms", floor_label,
                client.median(floor_cpu), ratio=client.median(
                    [ours / max(base, 1.0) for ours, base in zip(cold_cpu, floor_cpu)]))
        if fmt == "jpeg":
            plain = reference_argv(converter, gs, ctx.data[data_name], fmt, reference,
                                   hinted=False)
            entry["unhinted_ms"] = [_run_floor(plain) for _ in range(ctx.params["unhinted_reps"])]
            ctx.row(case, "latency", cold_ms, "ms", "convert, no hint",
                    client.median(entry["unhinted_ms"]))
        if previous:
            entry["previous_ms"] = previous
            ctx.row(case, "latency", cold_ms, "ms", "gs as webassets ran it before",
                    client.median(previous),
                    ratio=client.median([ours / base for ours, base in zip(cold, previous)]))
        ours = os.path.join(shots, "%s-webassets%s" % (slug, ext))
        shutil.copyfile(os.path.join(ctx.thumbs, thumb_name), ours)
        panels = [reference, ours]
        if fmt == "pdf":
            # The floor's output is webassets' own look: show the reference's instead.
            _reference_pdf_panel(converter, gs, ctx.data[data_name], out_dir, reference)
            panels = [reference, before, ours]
        _side_by_side(converter, panels, os.path.join(shots, slug + ".png"))
        _cached(ctx, conn, label, name, thumb_name, magic, entry)
        conn.close()


def _children_cpu():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run_floor(argv, cpu=None):
    """Run a floor command; return its wall ms, and append its CPU ms to the list `cpu`."""
    began, cpu_before = time.perf_counter(), _children_cpu()
    result = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - began
    if result.returncode != 0:
        raise RuntimeError("floor command failed: %s\n%s" % (
            subprocess.list2cmdline(argv), result.stderr.decode("utf-8", "replace")[-1000:]))
    if cpu is not None:
        cpu.append((_children_cpu() - cpu_before) * 1000.0)
    return elapsed * 1000.0


def _timed_get(conn, path, magic):
    status, body, seconds = conn.get(path)
    if status != 200 or not body.startswith(magic):
        raise RuntimeError("GET %s: status %d, %r" % (path, status, body[:100]))
    return seconds * 1000.0, body


def converters():
    """Return the (convert, gs) paths webassets itself would find on PATH."""
    probe = thumbnails.Thumbnailer()
    return probe.convert, probe.gs


def _cached(ctx, conn, label, name, thumb_name, magic, entry):
    """Time the cached thumbnail against the same bytes served as an original."""
    copy = "cached_" + thumb_name
    with open(os.path.join(ctx.thumbs, thumb_name), "rb") as src, \
            open(os.path.join(ctx.originals, copy), "wb") as dst:
        dst.write(src.read())
    cached, original = [], []
    for _ in range(ctx.params["cached_reqs"]):
        cached.append(_timed_get(conn, fileget(name, "T", SCALE), magic)[0])
        original.append(_timed_get(conn, fileget(copy), magic)[0])
    entry.update(cached_ms_median=client.median(cached), original_ms_median=client.median(original),
                 thumb_bytes=os.path.getsize(os.path.join(ctx.thumbs, thumb_name)))
    ctx.row("Cached thumbnail %s" % label, "latency", client.median(cached), "ms",
            "same file as original", client.median(original), "~1x (issue 3)", None)


# ---------------------------------------------------------------------------- pregen

def pregen(ctx):
    """`thumbnails pregen` of 200 mixed images at scale 200 vs the reference's commands.

    Both run N conversions at a time (N = CPUs): pregen with --jobs N, the floor as one
    shell command per image (reference_argv) under `xargs -P N`. Rounds alternate the two,
    each from no thumbnails. webassets' figure is the images/s pregen itself reports.
    """
    converter, gs = converters()
    jobs = os.cpu_count() or 1
    base = os.path.join(ctx.run_dir, "store-pregen")
    originals = os.path.join(base, "originals")
    names = [place(os.path.join(ctx.data[data.MIXED], name), originals)
             for name in sorted(os.listdir(ctx.data[data.MIXED]))]
    settings = os.path.join(ctx.run_dir, "pregen_settings.py")
    procs.write_settings(settings, base, procs.free_port())
    floor_dir = os.path.join(ctx.run_dir, "pregen-floor")
    script = os.path.join(ctx.run_dir, "pregen-floor.txt")
    with open(script, "w") as f:
        for name in names:
            source = os.path.join(originals, name)
            with open(source, "rb") as image:
                fmt = imageformats.sniff_format(image.read(imageformats.SNIFF_BYTES))
            target = os.path.join(floor_dir, thumbnails.thumbnail_name(name, SCALE))
            argv = reference_argv(converter, gs, source, fmt, target)
            f.write(" ".join(shlex.quote(arg) for arg in argv) + "\n")
    env = dict(os.environ, PYTHONPATH=procs.REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    ours_argv = [ctx.python, "-m", "webassets", "thumbnails", "pregen", "--settings", settings,
                 "--sizes", str(SCALE), "--jobs", str(jobs), "--quiet"]
    floor_argv = ["xargs", "-d", "\n", "-P", str(jobs), "-I", "{}", "sh", "-c", "{}"]
    for name in names:  # both sides then read the originals from the page cache
        with open(os.path.join(originals, name), "rb") as f:
            while f.read(1 << 20):
                pass
    rates, walls, floors = [], [], []
    for rep in range(ctx.params["pregen_rounds"]):
        logger.info("pregen of %d mixed images, round %d", len(names), rep + 1)
        # The order alternates, as for the cold thumbnails.
        if rep % 2:
            floors.append(_pregen_floor(floor_argv, script, floor_dir, len(names)))
        shutil.rmtree(os.path.join(base, "thumbnails"), ignore_errors=True)
        began = time.perf_counter()
        result = subprocess.run(ours_argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=env, cwd=procs.REPO)
        walls.append(time.perf_counter() - began)
        report = result.stdout.decode("utf-8", "replace")
        found = re.search(r"made (\d+),.* failed (\d+) in [0-9.]+ s: ([0-9.]+) images/s", report)
        if result.returncode != 0 or not found or found.group(1, 2) != (str(len(names)), "0"):
            raise RuntimeError("pregen: exit %d\n%s%s" % (result.returncode, report[-1000:],
                                                          result.stderr.decode()[-1000:]))
        rates.append(float(found.group(3)))
        if not rep % 2:
            floors.append(_pregen_floor(floor_argv, script, floor_dir, len(names)))
    ctx.raw["pregen"] = {"images": len(names), "jobs": jobs, "images_per_s": rates,
                         "pregen_wall_s": walls, "floor_wall_s": floors}
    case = "pregen %d mixed images at %d, %d at a time" % (len(names), SCALE, jobs)
    floor_label = "reference commands, xargs -P %d" % jobs
    ctx.row(case, "images/s (pregen's report)", client.median(rates), "images/s", floor_label,
            len(names) / client.median(floors),
            ratio=client.median([rate * wall / len(names) for rate, wall in zip(rates, floors)]))
    ctx.row(case, "wall time, start-up included", client.median(walls) * 1000.0, "ms",
            floor_label, client.median(floors) * 1000.0,
            ratio=client.median([ours / base for ours, base in zip(walls, floors)]))


def _pregen_floor(argv, script, floor_dir, count):
    """Run the floor's commands (one per line of `script`) with `argv`; return the seconds."""
    shutil.rmtree(floor_dir, ignore_errors=True)
    os.makedirs(floor_dir)
    with open(script, "rb") as commands:
        began = time.perf_counter()
        result = subprocess.run(argv, stdin=commands, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        seconds = time.perf_counter() - began
    if result.returncode != 0 or len(os.listdir(floor_dir)) != count:
        raise RuntimeError("pregen floor: exit %d, %d thumbnails\n%s" % (
            result.returncode, len(os.listdir(floor_dir)), result.stderr.decode()[-1000:]))
    return seconds


# ---------------------------------------------------------------------------- stampede

def _counting_convert(path, real, log):
    """Write a convert wrapper that logs each call (one line) before running the real one."""
    with open(path, "w") as f:
        f.write('#!/bin/sh\nprintf "%%s\\n" "$*" >> "%s"\nexec "%s" "$@"\n' % (log, real))
    os.chmod(path, 0o755)


def stampede(ctx):
    """32 concurrent first requests for one new 6000x4000 JPEG: wall time, conversions, failures.

    A second webassets instance runs with CONVERT set to a wrapper that appends one line per
    call to a log; the conversions are the log lines naming the image (the start-up format
    probe is another line and is not counted).
    """
    converter, gs = converters()
    base = os.path.join(ctx.run_dir, "store-stampede")
    originals, thumb_dir = os.path.join(base, "originals"), os.path.join(base, "thumbnails")
    name = place(ctx.data[data.PHOTO], originals, "stampede.jpg")
    log = os.path.join(ctx.run_dir, "convert-calls.log")
    wrapper = os.path.join(ctx.run_dir, "convert-counting")
    _counting_convert(wrapper, converter, log)
    server = procs.start_webassets(ctx.procs, "webassets-stampede", ctx.run_dir, base, ctx.python,
                                   extra="CONVERT = %r\n" % wrapper)
    try:
        results = _fire(server.port, fileget(name, "T", SCALE), STAMPEDE)
    finally:
        server.stop()
    with open(log) as f:
        conversions = sum(1 for line in f if name in line)
    entries = os.listdir(thumb_dir) if os.path.isdir(thumb_dir) else []
    digests = collections.Counter(digest for _, digest, _, _ in results if digest)
    common = digests.most_common(1)[0][0] if digests else None
    # A failure: an error status, a broken JPEG, or an image unlike the one most clients got.
    failures = sum(1 for status, digest, _, _ in results if status != 200 or digest != common)
    wall = (max(end for _, _, _, end in results) - min(start for _, _, start, _ in results)) * 1e3
    ctx.raw["stampede"] = {"requests": STAMPEDE, "wall_ms": wall, "conversions": conversions,
                           "statuses": sorted(status for status, _, _, _ in results),
                           "thumbnail_files": sorted(entries)}
    floor = ctx.thumb_floor_ms.get("jpeg")
    if floor is None:
        argv = reference_argv(converter, gs, ctx.data[data.PHOTO], "jpeg",
                              os.path.join(ctx.run_dir, "floor.jpg"))
        floor = ctx.thumb_floor_ms["jpeg"] = _run_floor(argv)
    case = "32 concurrent first requests"
    ctx.row(case, "wall time", wall, "ms", "convert, hinted (1 run)", floor)
    ctx.row(case, "conversions run", conversions, "count", target="exactly 1",
            met=conversions == 1)
    ctx.row(case, "failures", failures, "count", target="0", met=failures == 0)


def _fire(port, path, count):
    """Connect `count` clients, release them together; return (status, sha1, start, end) each."""
    barrier = threading.Barrier(count)
    results = []

    def one():
        conn = client.Conn(HOST, port)
        conn.conn.connect()
        barrier.wait()
        start = time.perf_counter()
        try:
            status, body, _ = conn.get(path)
            ok = status == 200 and body.startswith(b"\xff\xd8") and body.endswith(b"\xff\xd9")
            digest = hashlib.sha1(body).hexdigest() if ok else None
        except OSError as ex:
            logger.warning("stampede request failed: %r", ex)
            status, digest = 0, None
        results.append((status, digest, start, time.perf_counter()))
        conn.close()

    threads = [threading.Thread(target=one, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


# ---------------------------------------------------------------------------- mixed load

def mixed(ctx):
    """c=16 mix: 80% thumbnails of 200 images at 123/200/300, 15% originals, 5% uploads."""
    names = [place(os.path.join(ctx.data["tiles"], tile), ctx.originals)
             for tile in data.tile_names(os.path.dirname(ctx.data["tiles"]))]
    with open(os.path.join(ctx.originals, names[0]), "rb") as f:
        upload_bytes = f.read()
    web = ctx.web()
    seconds = ctx.params["mixed_seconds"]

    def make_request(rng, worker, n):
        draw = rng.random()
        if draw < 0.80:
            return "thumbnail", "GET", fileget(rng.choice(names), "T", rng.choice(MIXED_SCALES)), \
                None, None
        if draw < 0.95:
            return "original", "GET", fileget(rng.choice(names)), None, None
        store = "mixed_%d_%d_%d.jpg" % (os.getpid(), worker, n)
        preamble, epilogue = client.multipart_frame(store, upload_fields(store), "image/jpeg")
        return "upload", "POST", "/fileupload", preamble + upload_bytes + epilogue, \
            client.upload_headers()

    for name in names:
        for scale in MIXED_SCALES:
            try:
                os.unlink(os.path.join(ctx.thumbs, thumbnails.thumbnail_name(name, scale)))
            except FileNotFoundError:
                pass
    logger.info("Mixed load, cold cache: %d s at c=16", seconds)
    cold = client.run_pool(HOST, web.port, make_request, 16, seconds, seed=1)
    _prewarm(web.port, names)
    logger.info("Mixed load, warm cache: %d s at c=16", seconds)
    warm = client.run_pool(HOST, web.port, make_request, 16, seconds, seed=2)
    ctx.raw["mixed"] = {"seconds": seconds, "cold": cold, "warm": warm}
    for phase, result in (("cold", cold), ("warm", warm)):
        case = "Mixed load c=16, %s cache" % phase
        ctx.row(case, "req/s", result["rps"], "req/s")
        p99_target = "< 3000 ms" if phase == "cold" else None
        ctx.row(case, "p99", result["p99_ms"], "ms", target=p99_target,
                met=result["p99_ms"] < 3000 if p99_target else None)
        ctx.row(case, "errors", result["errors"], "count", target="0" if phase == "cold" else None,
                met=result["errors"] == 0 if phase == "cold" else None)


def _prewarm(port, names):
    """Make every thumbnail of the mix exist (two clients), so the warm phase never converts."""
    paths = [fileget(name, "T", scale) for name in names for scale in MIXED_SCALES]

    def walk(share):
        conn = client.Conn(HOST, port)
        for path in share:
            conn.get(path)
        conn.close()

    threads = [threading.Thread(target=walk, args=(paths[i::2],), daemon=True) for i in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


# ---------------------------------------------------------------------------- getmetadata

def getmetadata(ctx):
    """getmetadata (EXIF as JSON) of the 6000x4000 JPEG at c=8."""
    name = place(ctx.data[data.PHOTO], ctx.originals)
    web = ctx.web()
    path = "/getmetadata?" + urlencode([("coll", COLL), ("filename", name), ("dt", "json")])
    conn = client.Conn(HOST, web.port)
    status, body, _ = conn.get(path)
    conn.close()
    if status != 200 or b"DateTimeOriginal" not in body:
        raise RuntimeError("getmetadata: status %d, %r" % (status, body[:200]))
    client.warm_up(HOST, web.port, path)
    result = client.load_get(HOST, web.port, path, 8, ctx.params["meta_seconds"])
    ctx.raw["getmetadata"] = result
    reference = ctx.raw.get("small_get", {}).get("c=8", {}).get("webassets")
    ctx.row("getmetadata c=8", "req/s", result["rps"], "req/s",
            "webassets 64 KiB GET c=8" if reference else None,
            reference["rps"] if reference else None)
    ctx.row("getmetadata c=8", "p99", result["p99_ms"], "ms")


CASES = (
    ("small_get", small_get),
    ("big_get", big_get),
    ("upload", big_upload),
    ("thumbnails", thumbs),
    ("pregen", pregen),
    ("stampede", stampede),
    ("mixed", mixed),
    ("getmetadata", getmetadata),
)
