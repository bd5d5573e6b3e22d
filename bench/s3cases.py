"""The S3 cases (issue 10): webassets over a SeaweedFS bucket against boto3 on the same bucket.

SeaweedFS (`weed mini`, signatures checked) is started the way the tests start it
(tests/s3servers.py, from .venv/s3servers, which `bin/test` builds); boto3 runs in that
venv's Python (bench/s3boto.py), one process per timed transfer (or per series of them).
"""

import contextlib
import hashlib
import json
import logging
import os
import subprocess
import time

import client
import data
from cases import COLL, HOST, MB, MIB, SCALE, _timed_get, fileget, place, token
from procs import start_webassets

from tests import s3servers
from webassets import config, thumbnails
from webassets.storage.s3client import S3Client

logger = logging.getLogger(__name__)

BENCH = os.path.dirname(os.path.abspath(__file__))
BOTO = os.path.join(BENCH, "s3boto.py")
CHUNK = 1024 * 1024
WHOLE = 1 << 40  # a Range end past any object: get_bytes() then reads it all


def tools_python():
    """Return the S3 tools venv's Python if boto3 imports there, else None."""
    weed = s3servers.find_tool("weed")
    python = weed and os.path.join(os.path.dirname(weed), "python")
    if not python or not os.access(python, os.X_OK):
        return None
    probe = subprocess.run([python, "-c", "import boto3"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    return python if probe.returncode == 0 else None


def boto(python, server, op, bucket, key, path, *more):
    """Run one boto3 transfer (bench/s3boto.py `op`, with `more` arguments); return seconds."""
    result = subprocess.run([python, BOTO, op, server.endpoint, server.region,
                             server.access_key, server.secret_key, bucket, key, path]
                            + list(more), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if result.returncode != 0:
        raise RuntimeError("boto3 %s failed: %s" % (op, result.stderr.decode()[-1000:]))
    return json.loads(result.stdout.decode().strip().splitlines()[-1])["seconds"]


def boto_gets(python, server, bucket, key, count, op="gets", *more):
    """Time `count` boto3 calls (s3boto.py `op`: gets, transfers) on one client; return ms each."""
    result = subprocess.run([python, BOTO, op, server.endpoint, server.region,
                             server.access_key, server.secret_key, bucket, key, str(count)]
                            + list(more), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if result.returncode != 0:
        raise RuntimeError("boto3 %s failed: %s" % (op, result.stderr.decode()[-1000:]))
    return json.loads(result.stdout.decode().strip().splitlines()[-1])["ms"]


class BotoCue:
    """A boto3 process (s3boto.py transfers ... cue) that times the floor's transfers on cue.

    Called, it runs one get_object of `key` read to the end and one put_object of
    `thumb_key`'s bytes, and returns their milliseconds.
    """

    def __init__(self, python, server, bucket, key, thumb_key):
        self.process = subprocess.Popen(
            [python, BOTO, "transfers", server.endpoint, server.region, server.access_key,
             server.secret_key, bucket, key, "cue", thumb_key],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, universal_newlines=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.process.stdin.close()
        self.process.wait(timeout=30)

    def __call__(self):
        self.process.stdin.write("go\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("the boto3 transfers process ended early")
        return float(line)


def direct_upload(s3, key, path):
    """Upload a file with our own client's multipart writer; return seconds."""
    began = time.perf_counter()
    with open(path, "rb") as source, s3.writer(key) as writer:
        for chunk in iter(lambda: source.read(CHUNK), b""):
            writer.write(chunk)
        writer.commit()
    return time.perf_counter() - began


def direct_file_upload(s3, key, path):
    """Upload a file with our own client's upload_file (parallel parts); return seconds."""
    began = time.perf_counter()
    s3.upload_file(key, path)
    return time.perf_counter() - began


def _read_to_null(s3, key):
    got = 0
    with s3.get(key) as result:
        for chunk in iter(lambda: result.read(CHUNK), b""):
            got += len(chunk)
    return got


def direct_get(s3, key):
    """Read an object to nowhere with our own client; return (bytes, seconds)."""
    began = time.perf_counter()
    got = _read_to_null(s3, key)
    return got, time.perf_counter() - began


def specify6_frame(file_name, fields):
    """Return (preamble, epilogue) around a file part, Specify 6's layout: fields first."""
    boundary = client.BOUNDARY
    head = "".join('--%s\r\nContent-Disposition: form-data; name="%s"\r\n\r\n%s\r\n'
                   % (boundary, name, value) for name, value in fields)
    head += ('--%s\r\nContent-Disposition: form-data; name="file"; filename="%s"\r\n'
             "Content-Type: application/octet-stream\r\n\r\n" % (boundary, file_name))
    return head.encode("utf-8"), ("\r\n--%s--\r\n" % boundary).encode("utf-8")


def _fields(store):
    return (("token", token(store)), ("store", store), ("type", "O"), ("coll", COLL))


def s3_settings(server, bucket):
    """Return the settings.py lines that put a webassets instance on `bucket`."""
    values = dict(STORAGE="s3", S3_BUCKET=bucket, S3_ENDPOINT=server.endpoint,
                  S3_REGION=server.region, S3_ACCESS_KEY=server.access_key,
                  S3_SECRET_KEY=server.secret_key, S3_ADDRESSING="path")
    return "".join("%s = %r\n" % item for item in sorted(values.items()))


def find_key(s3, name):
    """Return the bucket key of the original `name` (wherever the layout put it)."""
    keys = [info.key for info in s3.list("") if info.key.endswith("/" + name)]
    if len(keys) != 1:
        raise RuntimeError("expected one object named %s in the bucket, found %r" % (name, keys))
    return keys[0]


@contextlib.contextmanager
def seaweedfs(ctx, what):
    """Yield (tools python, a started SeaweedFS) for a case, or None (noted) without them."""
    python = tools_python()
    if python is None:
        ctx.skip(what, "no .venv/s3servers with weed and boto3 (bin/test builds it)")
        yield None
        return
    try:
        server = s3servers.start_seaweedfs()
    except (s3servers.Unavailable, s3servers.StartFailed) as ex:
        ctx.skip(what, str(ex).splitlines()[0])
        yield None
        return
    try:
        yield python, server
    finally:
        server.stop()


def start_s3_webassets(ctx, server, bucket, name="webassets-s3", extra=""):
    """Start a webassets instance over `bucket`, or return None (noted) if it has no S3."""
    if not any(setting.name == "STORAGE" for setting in config.SCHEMA):
        ctx.skip("webassets over S3", "this webassets has no STORAGE = 's3'")
        return None
    return start_webassets(ctx.procs, name, ctx.run_dir, os.path.join(ctx.run_dir, "store-s3"),
                           ctx.python, s3_settings(server, bucket) + extra)


def start_spooling_webassets(ctx, server, bucket):
    """Start one over `bucket` with S3_SPOOL_DIR on the run's disk, or return None (noted)."""
    if not any(setting.name == "S3_SPOOL_DIR" for setting in config.SCHEMA):
        ctx.skip("Specify 7 uploads spooled to disk", "this webassets has no S3_SPOOL_DIR")
        return None
    spool = os.path.join(ctx.run_dir, "s3-spool")
    os.makedirs(spool, exist_ok=True)
    return start_s3_webassets(ctx, server, bucket, "webassets-s3-spool",
                              "S3_SPOOL_DIR = %r\n" % spool)


def s3_transfer(ctx):
    """512 MiB upload and GET through webassets on S3 vs boto3 straight to the bucket."""
    with seaweedfs(ctx, "the S3 transfer case") as started:
        if started is not None:
            _s3_transfer(ctx, *started)
    ctx.notes.append(
        "S3 cases: SeaweedFS `weed mini` on loopback (signatures checked), one bucket; "
        "webassets runs with STORAGE = 's3' on it; boto3 runs in its own process per "
        "transfer (bench/s3boto.py: upload_file and download_fileobj with boto3's defaults, "
        "8 MiB parts, 10 threads; get_object streamed), timed around the transfer alone. "
        "'s3client alone' is webassets' own client used directly, in the benchmark process "
        "(its writer fed 1 MiB writes; upload_file: 4 threads reading parts at offsets).")


# (name, row label, instance: 0 = S3_SPOOL_DIR = None, 1 = a spool on disk, frame)
UPLOADS = (("web7", "Specify 7 order, S3_SPOOL_DIR = None (temporary key + copy)", 0,
            client.multipart_frame),
           ("web6", "Specify 6 order", 0, specify6_frame),
           ("web7_spool", "Specify 7 order, spooled on disk (S3_SPOOL_DIR 'auto')", 1,
            client.multipart_frame))


def _s3_transfer(ctx, python, server):
    bucket = server.new_bucket("bench")
    s3 = S3Client(server.config(bucket, retries=4, timeout=120.0))
    source = ctx.data["big"]
    size = os.path.getsize(source)
    label = "%d MiB" % (size // MIB)
    sink = os.path.join(ctx.run_dir, "s3-download.bin")
    # Instance 0 is diskless (a temporary key and a copy); 1 spools as S3_SPOOL_DIR 'auto' does.
    web = start_s3_webassets(ctx, server, bucket, extra="S3_SPOOL_DIR = None\n")
    instances = (web, web and start_spooling_webassets(ctx, server, bucket))
    uploads = [upload for upload in UPLOADS if instances[upload[2]] is not None]
    times = {name: [] for name in ("boto_up", "ours_up", "ours_file", "web_get", "boto_download",
                                   "boto_get", "ours_get")}
    times.update((upload[0], []) for upload in uploads)
    growth = []
    store = "s3_big.bin"
    for rep in range(ctx.params["upload_reps"]):
        logger.info("S3 %s uploads, round %d", label, rep + 1)
        for name, _, instance, frame in uploads:
            seconds, grown = _web_upload(instances[instance], frame, store, source, size)
            times[name].append(seconds)
            growth.append(grown)
        times["boto_up"].append(boto(python, server, "upload", bucket, "boto.bin", source))
        times["ours_up"].append(direct_upload(s3, "ours.bin", source))
        if hasattr(s3, "upload_file"):
            times["ours_file"].append(direct_file_upload(s3, "ours-file.bin", source))
    web_key = find_key(s3, store) if web is not None else None
    for rep in range(ctx.params["big_reps"]):
        logger.info("S3 %s GETs, round %d", label, rep + 1)
        if web is not None:
            status, got, seconds = client.get_to_null(HOST, web.port, fileget(store))
            if status != 200 or got != size:
                raise RuntimeError("S3 GET: status %d, %d of %d bytes" % (status, got, size))
            times["web_get"].append(seconds)
        times["boto_download"].append(boto(python, server, "download", bucket, "boto.bin",
                                           sink))
        times["boto_get"].append(boto(python, server, "get", bucket, "boto.bin", sink))
        got, seconds = direct_get(s3, "ours.bin")
        if got != size:
            raise RuntimeError("direct S3 GET: %d of %d bytes" % (got, size))
        times["ours_get"].append(seconds)
    _check_copies(s3, source, sink, web_key)
    os.unlink(sink)
    rates = {name: [size / seconds / MB for seconds in values] for name, values in times.items()}
    ctx.raw["s3_transfer"] = {"size": size, "mb_s": rates, "rss_growth_mib": growth,
                              "server": "SeaweedFS weed mini", "stats": s3.stats.snapshot()}
    med = {name: client.median(values) if values else None for name, values in rates.items()}
    for name, order, _, _ in uploads:
        ctx.row("S3 %s upload (%s)" % (label, order), "MB/s", med[name], "MB/s",
                "boto3 upload_file", med["boto_up"], ">= 0.7x", med[name] >= 0.7 * med["boto_up"])
    if web is not None:
        ctx.row("S3 %s upload" % label, "server RSS growth", max(growth), "MiB",
                target="<= 64 MiB", met=max(growth) <= 64)
        ctx.row("S3 %s GET" % label, "MB/s", med["web_get"], "MB/s", "boto3 download_fileobj",
                med["boto_download"], ">= 0.8x", med["web_get"] >= 0.8 * med["boto_download"])
        ctx.row("S3 %s GET" % label, "MB/s", med["web_get"], "MB/s", "boto3 get_object",
                med["boto_get"])
    ctx.row("S3 %s upload, s3client alone" % label, "MB/s", med["ours_up"], "MB/s",
            "boto3 upload_file", med["boto_up"])
    if med["ours_file"] is not None:
        ctx.row("S3 %s upload, s3client upload_file alone" % label, "MB/s", med["ours_file"],
                "MB/s", "boto3 upload_file", med["boto_up"])
    ctx.row("S3 %s GET, s3client alone" % label, "MB/s", med["ours_get"], "MB/s",
            "boto3 get_object", med["boto_get"])


def _web_upload(web, frame, store, source, size):
    """Upload the file through a webassets instance; return (seconds, its RSS growth MiB)."""
    preamble, epilogue = frame(store, _fields(store))
    before = web.rss_kib()
    web.reset_peak()
    status, body, seconds = client.post_file(HOST, web.port, "/fileupload", preamble, source,
                                             size, epilogue)
    if status != 200 or body != b"Ok.":
        raise RuntimeError("S3 upload failed: %d %r" % (status, body[:200]))
    return seconds, (web.peak_kib() - before) / 1024.0


def _sha256(chunks):
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


def _object_sha256(s3, key):
    with s3.get(key) as result:
        return _sha256(iter(lambda: result.read(CHUNK), b""))


def _file_sha256(path):
    with open(path, "rb") as f:
        return _sha256(iter(lambda: f.read(CHUNK), b""))


def _check_copies(s3, source, sink, web_key):
    """Every copy in the bucket (and boto3's last download) equals the source."""
    expected = _file_sha256(source)
    found = {key: _object_sha256(s3, key) for key in ("boto.bin", "ours.bin", web_key) if key}
    found["boto3 get_object"] = _file_sha256(sink)
    wrong = sorted(name for name, digest in found.items() if digest != expected)
    if wrong:
        raise RuntimeError("S3 copies differ from the source: %s" % ", ".join(wrong))


# ---------------------------------------------------------------------------- thumbnails

def _s3_cold(s3, thumb_key, conn, path):
    """Time one cold thumbnail on the bucket: its object deleted, then one request."""
    s3.delete(thumb_key)
    return _timed_get(conn, path, b"\xff\xd8\xff")[0]


def _local_cold(ctx, thumb_name, conn, name):
    """Time one cold thumbnail on the local store: its file deleted, then one request."""
    os.unlink(os.path.join(ctx.thumbs, thumb_name))
    return _timed_get(conn, fileget(name, "T", SCALE), b"\xff\xd8\xff")[0]


def s3_thumbs(ctx):
    """Cached and cold JPEG thumbnail on S3 vs a direct GET, and vs the local store's cold time."""
    with seaweedfs(ctx, "the S3 thumbnail case") as started:
        if started is not None:
            _s3_thumbs(ctx, *started)
    ctx.notes.append(
        "S3 cold thumbnail: %d reps of three timings back to back, the order alternating: "
        "the thumbnail's object deleted, then one request to webassets on the bucket; the "
        "same on the local store; a kept-alive boto3 client (bench/s3boto.py transfers ... "
        "cue) getting the original read to the end and putting the thumbnail's bytes. The "
        "values are medians; the ratio is the median of each rep's cold / (local cold + "
        "boto3 transfers)." % (2 * ctx.params["cold_reps"]))


def _s3_thumbs(ctx, python, server):
    bucket = server.new_bucket("thumbs")
    s3 = S3Client(server.config(bucket))
    web = start_s3_webassets(ctx, server, bucket, "webassets-s3-thumbs")
    if web is None:
        return
    photo = ctx.data[data.PHOTO]
    name = "s3_" + os.path.basename(photo)
    preamble, epilogue = client.multipart_frame(name, _fields(name))
    status, body, _ = client.post_file(HOST, web.port, "/fileupload", preamble, photo,
                                       os.path.getsize(photo), epilogue)
    if status != 200:
        raise RuntimeError("S3 photo upload failed: %d %r" % (status, body[:200]))
    local_name = place(photo, ctx.originals, name)
    thumb_name = thumbnails.thumbnail_name(name, SCALE)
    path = fileget(name, "T", SCALE)
    s3_conn, local_conn = client.Conn(HOST, web.port), client.Conn(HOST, ctx.web().port)
    _timed_get(s3_conn, path, b"\xff\xd8\xff")  # renders once: now the keys exist
    _timed_get(local_conn, fileget(local_name, "T", SCALE), b"\xff\xd8\xff")
    original_key, thumb_key = find_key(s3, name), find_key(s3, thumb_name)
    thumb = s3.get_bytes(thumb_key, 0, WHOLE)
    times = {"cold": [], "local_cold": [], "transfers": [], "boto3_transfers": [],
             "cached": [], "direct": []}
    # The floor's transfers as a user would make them: a plain S3 client (boto3), one kept
    # alive, timing one original down and thumbnail up each time it is cued.
    with BotoCue(python, server, bucket, original_key, thumb_key) as boto3_transfers:
        for rep in range(2 * ctx.params["cold_reps"]):
            # Each rep's three timings back to back, the order alternating: each ratio's
            # sides see the same background load, and neither always goes first.
            steps = [("cold", lambda: _s3_cold(s3, thumb_key, s3_conn, path)),
                     ("local_cold", lambda: _local_cold(ctx, thumb_name, local_conn,
                                                        local_name)),
                     ("boto3_transfers", boto3_transfers)]
            for key, step in (steps if rep % 2 else steps[::-1]):
                times[key].append(step())
            began = time.perf_counter()  # the same transfers by webassets' own client
            _read_to_null(s3, original_key)
            s3.put("transfer-probe", thumb)
            times["transfers"].append((time.perf_counter() - began) * 1000.0)
    for _ in range(ctx.params["cached_reqs"]):
        times["cached"].append(_timed_get(s3_conn, path, b"\xff\xd8\xff")[0])
        began = time.perf_counter()
        s3.get_bytes(thumb_key, 0, WHOLE)
        times["direct"].append((time.perf_counter() - began) * 1000.0)
    s3_conn.close()
    local_conn.close()
    times["boto3"] = boto_gets(python, server, bucket, thumb_key, ctx.params["cached_reqs"])
    med = {key: client.median(values) for key, values in times.items()}
    ratio = client.median([cold / (local + boto) for cold, local, boto in zip(
        times["cold"], times["local_cold"], times["boto3_transfers"])])
    own_ratio = client.median([cold / (local + own) for cold, local, own in zip(
        times["cold"], times["local_cold"], times["transfers"])])
    ctx.raw["s3_thumbs"] = dict(times, stats=s3.stats.snapshot(), pair_ratio=ratio)
    case = "S3 thumbnail JPEG 6000x4000"
    ctx.row(case + ", cached", "latency", med["cached"], "ms", "boto3 get_object of it",
            med["boto3"], "<= 1.5x", med["cached"] <= 1.5 * med["boto3"])
    ctx.row(case + ", cached", "latency", med["cached"], "ms", "s3client GET of it",
            med["direct"])
    ctx.row(case + ", cold", "latency", med["cold"], "ms", "local cold + 2 boto3 transfers",
            med["local_cold"] + med["boto3_transfers"], "<= 1x", ratio <= 1, ratio=ratio)
    ctx.row(case + ", cold", "latency", med["cold"], "ms", "local cold + 2 s3client transfers",
            med["local_cold"] + med["transfers"], ratio=own_ratio)
    ctx.row(case + ", cold", "latency", med["cold"], "ms", "local store cold", med["local_cold"])


CASES = (("s3_transfer", s3_transfer), ("s3_thumbs", s3_thumbs))
