"""The migrate case (issue 10): `webassets migrate` of a local store into a SeaweedFS bucket.

The floor is webassets' own S3 client uploading the same files straight to the bucket with
as many threads as migrate's --jobs, in the same run on the same server.
"""

import io
import logging
import os
import shutil
import time

import client
from s3cases import direct_upload, seaweedfs

from webassets import migrate
from webassets.admin import run_bounded
from webassets.storage import FileStore
from webassets.storage.s3 import S3Store
from webassets.storage.s3client import S3Client

logger = logging.getLogger(__name__)

JOBS = 4
SMALL = 1024 * 1024  # a photo-sized original
SMALL_COUNT = 48


def s3_migrate(ctx):
    """Migrate a local store into a bucket, then again (all equal), against direct uploads."""
    with seaweedfs(ctx, "the S3 migrate case") as started:
        if started is not None:
            _s3_migrate(ctx, started[1])


def _local_store(ctx):
    """Return a FileStore of SMALL_COUNT small originals and two large ones (the big file)."""
    store = FileStore(os.path.join(ctx.run_dir, "store-migrate"))
    big = ctx.data["big"]
    names = []
    for number in range(SMALL_COUNT):
        staged = store.stage(None)
        staged.write(os.urandom(SMALL))
        store.save_original(None, "photo-%03d.jpg" % number, staged)
        names.append("photo-%03d.jpg" % number)
    for number in range(2):
        os.makedirs(os.path.dirname(store.local_path(None, "x")), exist_ok=True)
        os.link(big, store.local_path(None, "scan-%d.tif" % number))
        names.append("scan-%d.tif" % number)
    return store, names


def _s3_migrate(ctx, server):
    bucket = server.new_bucket("migrate")
    local, names = _local_store(ctx)
    size = sum(local.stat(None, name).size for name in names)
    times = {"direct": [], "migrate": [], "size": [], "again": []}
    for rep in range(ctx.params["upload_reps"]):
        logger.info("S3 migrate, round %d", rep + 1)
        s3 = S3Client(server.config(bucket, retries=4, timeout=120.0))
        began = time.perf_counter()
        run_bounded(lambda name: direct_upload(s3, "direct-%d/%s" % (rep, name),
                                               local.local_path(None, name)), names, JOBS)
        times["direct"].append(time.perf_counter() - began)
        for verify, label in ((migrate.VERIFY_READ, "migrate"), (migrate.VERIFY_SIZE, "size")):
            target = S3Store(S3Client(server.config(bucket)), "%s-%d/" % (label, rep))
            began = time.perf_counter()
            status = migrate.migrate(local, target, jobs=JOBS, verify=verify,
                                     out=io.StringIO(), quiet=True)
            times[label].append(time.perf_counter() - began)
            if status != 0:
                raise RuntimeError("migrate into %s failed" % target.location())
        began = time.perf_counter()
        migrate.migrate(local, target, jobs=JOBS, out=io.StringIO(), quiet=True)
        times["again"].append(time.perf_counter() - began)
    shutil.rmtree(local.base_dir, ignore_errors=True)
    med = {name: client.median(values) for name, values in times.items()}
    rate = {name: size / seconds / 1e6 for name, seconds in med.items()}
    what = "S3 migrate %d files, %d MiB" % (len(names), size >> 20)
    ctx.raw["s3_migrate"] = {"bytes": size, "files": len(names), "seconds": times}
    ctx.row(what, "MB/s", rate["migrate"], "MB/s", "s3client uploads, %d threads" % JOBS,
            rate["direct"], ">= 0.5x", rate["migrate"] >= 0.5 * rate["direct"])
    ctx.row(what + " (--verify size)", "MB/s", rate["size"], "MB/s",
            "s3client uploads, %d threads" % JOBS, rate["direct"], ">= 0.7x",
            rate["size"] >= 0.7 * rate["direct"])
    ctx.row(what + ", second pass (all equal)", "time", 1000 * med["again"], "ms",
            "s3client uploads, %d threads" % JOBS, 1000 * med["direct"])
    ctx.notes.append(
        "S3 migrate: `webassets migrate` (in-process, --jobs %d) of a local store of %d x 1 MiB "
        "and 2 x the big file into a SeaweedFS bucket, against webassets' S3 client uploading "
        "the same files with %d threads. The default verification reads back what the bucket "
        "cannot vouch for by an MD5 ETag (multipart objects); --verify size does not. The "
        "second pass finds every file equal (MD5 ETags, else SHA-256 of both copies)."
        % (JOBS, SMALL_COUNT, JOBS))


CASES = (("s3_migrate", s3_migrate),)
