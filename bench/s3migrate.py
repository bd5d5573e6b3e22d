"""The migrate case (issue 10): `webassets migrate` of a local store into a SeaweedFS bucket.

The floors are what a museum's sysadmin would otherwise run against the same bucket, in the
same run: a boto3 script uploading the store's tree (upload_file per file on as many threads
as migrate's --jobs; bench/s3boto.py `tree`), and `aws s3 sync` of the directory.
"""

import io
import logging
import os
import shutil
import subprocess
import time

import client
from s3cases import boto, seaweedfs

from webassets import migrate
from webassets.storage import FileStore
from webassets.storage.s3 import S3Store
from webassets.storage.s3client import S3Client

logger = logging.getLogger(__name__)

JOBS = 4
SMALL = 1024 * 1024  # a photo-sized original
SMALL_COUNT = 48
FILES = SMALL_COUNT + 2  # and two large ones


def s3_migrate(ctx):
    """Migrate a local store into a bucket, then again (all equal), against boto3 and the CLI."""
    with seaweedfs(ctx, "the S3 migrate case") as started:
        if started is not None:
            _s3_migrate(ctx, *started)


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


class AwsSync:
    """`aws s3 sync DIR s3://BUCKET/PREFIX` as a sysadmin types it, on the same server.

    The CLI from the S3 tools venv, its defaults (10 concurrent requests, 8 MiB parts)
    but for path-style addressing, keyed by the environment and configured by a file of
    its own (nothing of the user's ~/.aws is read).
    """

    def __init__(self, aws, server, run_dir):
        self.aws = aws
        self.endpoint = server.endpoint
        config = os.path.join(run_dir, "aws-config")
        with open(config, "w") as f:
            f.write("[default]\nregion = %s\ns3 =\n    addressing_style = path\n"
                    % server.region)
        self.env = {name: value for name, value in os.environ.items()
                    if not name.startswith("AWS_")}
        self.env.update(AWS_ACCESS_KEY_ID=server.access_key,
                        AWS_SECRET_ACCESS_KEY=server.secret_key, AWS_CONFIG_FILE=config,
                        AWS_SHARED_CREDENTIALS_FILE=os.path.join(run_dir, "aws-none"),
                        AWS_EC2_METADATA_DISABLED="true", AWS_PAGER="")

    def __call__(self, top, bucket, prefix):
        """Run the sync; return its seconds (the whole command, its start-up included)."""
        began = time.perf_counter()
        result = subprocess.run([self.aws, "s3", "sync", top, "s3://%s/%s" % (bucket, prefix),
                                 "--endpoint-url", self.endpoint, "--only-show-errors",
                                 "--no-progress"], env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
        seconds = time.perf_counter() - began
        if result.returncode != 0:
            raise RuntimeError("aws s3 sync failed: %s" % result.stdout.decode()[-1000:])
        return seconds


def _aws_cli(python):
    """Return the tools venv's `aws` beside its Python, or None."""
    aws = os.path.join(os.path.dirname(python), "aws")
    return aws if os.access(aws, os.X_OK) else None


def _migrate(local, server, bucket, prefix, verify=migrate.VERIFY_READ,
             expect="copied %d (" % FILES):
    """Run `webassets migrate` of `local` into `prefix`; return its seconds.

    RuntimeError unless it succeeded and its summary says `expect`.
    """
    target = S3Store(S3Client(server.config(bucket)), prefix)
    out = io.StringIO()
    began = time.perf_counter()
    status = migrate.migrate(local, target, jobs=JOBS, verify=verify, out=out, quiet=True)
    seconds = time.perf_counter() - began
    if status != 0 or expect not in out.getvalue():
        raise RuntimeError("migrate into %s: %s" % (target.location(), out.getvalue()))
    return seconds


def _s3_migrate(ctx, python, server):
    bucket = server.new_bucket("migrate")
    local, names = _local_store(ctx)
    top = local.base_dir
    size = sum(local.stat(None, name).size for name in names)
    aws = _aws_cli(python)
    sync = aws and AwsSync(aws, server, ctx.run_dir)
    if sync is None:
        ctx.skip("the `aws s3 sync` floor of the migrate case", "no `aws` in the S3 tools "
                 "venv (bin/test installs awscli there)")
    times = {"boto3": [], "migrate": [], "size": [], "sync": [], "again": [], "sync_again": []}
    for rep in range(ctx.params["migrate_reps"]):
        logger.info("S3 migrate, round %d", rep + 1)
        steps = [("boto3", lambda: boto(python, server, "tree", bucket, "boto3-%d/" % rep, top,
                                        str(JOBS))),
                 ("migrate", lambda: _migrate(local, server, bucket, "migrate-%d/" % rep)),
                 ("size", lambda: _migrate(local, server, bucket, "size-%d/" % rep,
                                           migrate.VERIFY_SIZE))]
        if sync is not None:
            steps.append(("sync", lambda: sync(top, bucket, "sync-%d/" % rep)))
        # Back to back, the order alternating: each ratio's sides share the background load.
        for name, step in (steps if rep % 2 == 0 else steps[::-1]):
            times[name].append(step())
        times["again"].append(_migrate(local, server, bucket, "migrate-%d/" % rep,
                                       expect="copied 0 (0 B), already there %d," % FILES))
        if sync is not None:
            times["sync_again"].append(sync(top, bucket, "sync-%d/" % rep))
    _check_floors(S3Client(server.config(bucket)), ["boto3"] + ["sync"] * (sync is not None),
                  ctx.params["migrate_reps"], size)
    shutil.rmtree(local.base_dir, ignore_errors=True)
    _rows(ctx, times, size, len(names))


def _check_floors(s3, floors, rounds, size):
    """Each floor's prefixes hold the FILES files, `size` bytes in all; else RuntimeError."""
    for floor in floors:
        for rep in range(rounds):
            prefix = "%s-%d/" % (floor, rep)
            objects = list(s3.list(prefix))
            found = (len(objects), sum(obj.size for obj in objects))
            if found != (FILES, size):
                raise RuntimeError("the %s floor left %d objects (%d bytes) in %s"
                                   % ((floor,) + found + (prefix,)))


def _paired(times, ours, floor):
    """Return the median over the rounds of floor seconds / our seconds (a rate ratio)."""
    return client.median([theirs / mine for mine, theirs in zip(times[ours], times[floor])])


def _rows(ctx, times, size, files):
    med = {name: client.median(values) for name, values in times.items() if values}
    rate = {name: size / seconds / 1e6 for name, seconds in med.items()}
    what = "S3 migrate %d files, %d MiB" % (files, size >> 20)
    boto3 = "boto3 upload_file, %d threads" % JOBS
    ctx.raw["s3_migrate"] = {"bytes": size, "files": files, "seconds": times}
    for name, label, target, floor in (("migrate", "", 0.5, ">= 0.5x"),
                                       ("size", " (--verify size)", 0.7, ">= 0.7x")):
        ratio = _paired(times, name, "boto3")
        ctx.row(what + label, "MB/s", rate[name], "MB/s", boto3, rate["boto3"], floor,
                ratio >= target, ratio=ratio)
        if "sync" in med:
            ctx.row(what + label, "MB/s", rate[name], "MB/s", "aws s3 sync", rate["sync"],
                    ratio=_paired(times, name, "sync"))
    if "sync_again" in med:
        ctx.row(what + ", second pass (all equal)", "time", 1000 * med["again"], "ms",
                "aws s3 sync, second pass", 1000 * med["sync_again"],
                ratio=1 / _paired(times, "again", "sync_again"))
    else:
        ctx.row(what + ", second pass (all equal)", "time", 1000 * med["again"], "ms")
    ctx.notes.append(
        "S3 migrate: `webassets migrate` (in-process, --jobs %d) of a local store of %d x 1 MiB "
        "and 2 x the big file into a fresh prefix of a SeaweedFS bucket, against what a "
        "sysadmin would otherwise run on the same bucket: a boto3 script (bench/s3boto.py "
        "tree: upload_file per file, boto3's defaults (8 MiB parts, 10 threads a file), on "
        "a pool of %d threads sharing one client, timed around the transfers) and `aws s3 "
        "sync DIR s3://BUCKET/PREFIX` (the AWS CLI v1 with its defaults, max_concurrent_"
        "requests 10 and 8 MiB parts, path-style addressing; the whole command timed, its "
        "start-up included). The targets (first pass >= 0.5x, --verify size >= 0.7x) are "
        "against the boto3 script. Each of %d rounds runs the four back to back, the order "
        "alternating; the ratios are medians of the rounds' ratios. The default "
        "verification reads back what the bucket cannot vouch for by an MD5 ETag "
        "(multipart objects), in one streamed GET each; --verify size does not. The second "
        "pass finds every file equal by content, reading only the local copies (single-part "
        "ETags are MD5s; a multipart ETag is matched by the MD5s of the local file's 8 MiB "
        "parts), against sync's own second pass (sizes and dates only)."
        % (JOBS, SMALL_COUNT, JOBS, ctx.params["migrate_reps"]))


CASES = (("s3_migrate", s3_migrate),)
