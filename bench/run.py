"""Benchmark webassets against its physical floors: `python3 bench/run.py [--quick] [--out DIR]`."""

import argparse
import datetime
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
sys.path.insert(1, REPO)  # webassets itself, for tokens and the thumbnail argv builders

import cases  # noqa: E402
import client  # noqa: E402
import data  # noqa: E402
import procs  # noqa: E402
import report  # noqa: E402
import s3cases  # noqa: E402
import s3migrate  # noqa: E402
import slow  # noqa: E402
import soak  # noqa: E402

logger = logging.getLogger("bench")

FULL = {"big_mib": 512, "get_seconds": 4, "get_rounds": 3, "big_reps": 5, "upload_reps": 4,
        "cold_reps": 9, "migrate_reps": 2, "unhinted_reps": 3, "pregen_rounds": 3,
        "cached_reqs": 200, "mixed_seconds": 60,
        "meta_seconds": 8, "slow_seconds": 30, "slow_floor_seconds": 10,
        "soak_seconds": 600}
QUICK = {"big_mib": 64, "get_seconds": 1, "get_rounds": 1, "big_reps": 3, "upload_reps": 2,
         "cold_reps": 5, "migrate_reps": 2, "unhinted_reps": 1, "pregen_rounds": 1,
         "cached_reqs": 40, "mixed_seconds": 8,
         "meta_seconds": 1, "slow_seconds": 8, "slow_floor_seconds": 4,
         "soak_seconds": 60}

CASES = (cases.CASES + s3cases.CASES + s3migrate.CASES
         + (("slow_clients", slow.slow_clients), ("soak", soak.soak)))

NOTES = [
    "This machine has {cpus} CPUs and the load generator (wrk, or the Python client) runs on "
    "them too, so every figure is shared with the client; the floors pay the same tax.",
    "Each case starts after a sync(2), so writeback left by the case before (e.g. 512 MiB "
    "uploads) does not land in its timings.",
    "wrk runs one thread (`-t1`, `--timeout 10s`, `--latency`); its p50/p99 are per request. "
    "`python -m http.server` speaks HTTP/1.0 and closes every connection, so wrk reconnects "
    "for it; read errors from those closes are not counted as errors.",
    "Large GETs and uploads: one request at a time on a fresh connection, timed from the first "
    "byte sent to the last byte received; the figure is the median of the repetitions. "
    "RSS is VmRSS/VmHWM from /proc/<pid>/status summed over the server's processes (the "
    "supervisor and its workers), with the peaks reset (clear_refs 5) before each measurement.",
    "The upload floor (`bench/sink.py`) reads the body with recv_into into a 1 MiB buffer, "
    "writes it to a file on the same disk and fsyncs it before answering, as webassets does.",
    "Thumbnail floors run the reference server's command by hand with the same binaries: "
    "`convert SRC[0] -resize 200x200> OUT` (JPEG: with the `-define jpeg:size=` decode hint; "
    "'no hint' drops it). PDFs: stock ImageMagick refuses them (policy), so the floor is gs "
    "with webassets' own options (webassets.thumbnails.ghostscript_args), and the ratio is "
    "the server's whole overhead. Cold = the cached thumbnail deleted, then one request; "
    "{cold_reps} pairs of a request and a floor run back to back (the order alternating); "
    "the values are medians, the ratio is the median of the pairs' ratios (robust to "
    "background load, which hits both sides of a pair alike). Before/after images: "
    "OUT/thumbs/NAME.png (left: the reference's output; PDFs: the reference's pipeline "
    "(gs at 72 dpi, then -resize), webassets before issue 13, webassets now).",
    "pregen: `webassets thumbnails pregen --sizes 200 --jobs N` over 200 mixed images "
    "(JPEG, PNG, TIFF, GIF, WebP, BMP, PDF; about 1600x1200), against the same 200 reference "
    "commands (as above) run by `xargs -P N`; N = CPUs; {pregen_rounds} alternating "
    "round(s); ratios are medians of the rounds' ratios. images/s is what pregen prints; "
    "the wall time includes its start-up.",
    "Cached thumbnails are compared with the same bytes served as an original (type=O).",
    "The 32 concurrent first requests go to a second webassets instance whose CONVERT is a "
    "wrapper logging each call; 'conversions run' counts the logged calls naming the image.",
    "Mixed load: {mixed_seconds} s per phase, 16 keep-alive clients (Python http.client "
    "threads in one process, which competes with the server for the CPUs); uploads are ~76 KB "
    "JPEGs under new names; 'warm' runs after every one of the 600 thumbnails exists. "
    "A request fails if it raises or its status is not 200 (a 503 counts).",
]


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a one-minute pass (64 MiB, "
                        "fewer repetitions, shorter loads)")
    parser.add_argument("--out", default=os.path.join(BENCH, "out"),
                        help="output directory (default bench/out)")
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter that runs webassets (default: this one)")
    parser.add_argument("--no-apache", dest="apache", action="store_false",
                        help="skip Apache mod_wsgi even when it is installed")
    parser.add_argument("--only", help="comma-separated cases: " + ", ".join(
        name for name, _ in CASES))
    parser.add_argument("--slow-seconds", type=float, help="slow_clients: seconds of probing "
                        "under the slow load (default 30, --quick 8)")
    parser.add_argument("--soak-seconds", type=float, help="soak: length of the run "
                        "(default 600, --quick 60)")
    parser.add_argument("--offload", choices=("auto", "on", "off"), default="auto",
                        help="slow_clients: FILE_OFFLOAD for the nginx and Apache fronts "
                        "(auto: on when webassets has the setting)")
    return parser.parse_args(argv)


def _version(argv, line=0):
    try:
        result = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    except OSError:
        return None
    lines = result.stdout.decode("utf-8", "replace").strip().splitlines()
    return lines[line].strip() if len(lines) > line else None


def machine_meta(args, params):
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    tools = {}
    for name, argv in (("wrk", ["wrk", "--version"]), ("nginx", ["nginx", "-v"]),
                       ("convert", ["convert", "-version"]), ("gs", ["gs", "--version"])):
        if shutil.which(argv[0]):
            tools[name] = (_version(argv) or "?").replace("Version: ", "")[:60]
        else:
            tools[name] = "missing"
    commit = _version(["git", "-C", REPO, "rev-parse", "--short", "HEAD"]) or "unknown"
    if _version(["git", "-C", REPO, "status", "--porcelain", "--", "webassets"]):
        commit += " + uncommitted changes in webassets/"
    return {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "cpu": cpu, "cpus": os.cpu_count() or 1, "kernel": os.uname().release,
            "quick": args.quick, "params": params, "commit": commit, "tools": tools,
            "server_python": procs.python_version(args.python),
            "bench_python": sys.version.split()[0]}


def _start_servers(ctx, args):
    ctx.servers["webassets"] = procs.start_webassets(ctx.procs, "webassets", ctx.run_dir,
                                                     ctx.store, args.python)
    ctx.servers["http.server"] = procs.start_http_server(ctx.procs, ctx.originals, args.python)
    ctx.servers["nginx"] = procs.start_nginx(ctx.procs, ctx.run_dir, ctx.originals)
    if ctx.servers["nginx"] is None:
        ctx.notes.append("Skipped the nginx floors: nginx is not installed.")
    ctx.servers["sink"] = procs.start_sink(ctx.procs, ctx.originals, args.python)
    ctx.servers["apache"] = None
    if args.apache:
        ctx.servers["apache"] = procs.start_apache(ctx.procs, ctx.run_dir, ctx.store)
        if ctx.servers["apache"] is None:
            ctx.notes.append("Skipped Apache mod_wsgi: %s." % procs.apache_missing())
        else:
            ctx.notes.append("Apache mod_wsgi (daemon mode, 2 processes x 15 threads, as "
                             "etc/apache ships it, Debian's Python) serves the GET cases too; "
                             "its rows are for comparison and carry no target.")
    if not client.wrk_path():
        ctx.notes.append("wrk is not installed: fixed-URL loads used the Python client.")


def run(args):
    params = dict(QUICK if args.quick else FULL)
    if args.slow_seconds:
        params["slow_seconds"] = args.slow_seconds
    if args.soak_seconds:
        params["soak_seconds"] = args.soak_seconds
    params["offload"], params["apache"] = args.offload, args.apache
    out_dir = os.path.abspath(args.out)
    run_dir = os.path.join(out_dir, "run")
    shutil.rmtree(run_dir, ignore_errors=True)
    os.makedirs(run_dir)
    data_paths = data.generate(os.path.join(out_dir, "data"), params["big_mib"])
    ctx = cases.Context(params, run_dir, data_paths, args.python)
    os.makedirs(ctx.originals)
    selected = set(args.only.split(",")) if args.only else None
    ctx.procs = procs.Processes(os.path.join(run_dir, "logs"))
    started = time.monotonic()
    load_before = os.getloadavg()
    failed = []
    try:
        _start_servers(ctx, args)
        for name, case in CASES:
            if selected is not None and name not in selected:
                continue
            logger.info("Case %s", name)
            # Each case starts with no dirty pages of the one before (a 512 MiB case leaves
            # seconds of writeback that would land in the next case's timings).
            os.sync()
            try:
                case(ctx)
            except Exception as ex:  # one broken case must not lose the others' results
                logger.exception("Case %s failed", name)
                failed.append(name)
                ctx.notes.append("Case %s FAILED: %s" % (name, ex))
    finally:
        ctx.procs.stop_all()
        shutil.rmtree(ctx.store, ignore_errors=True)
        for store in ("store-stampede", "store-slow", "store-soak", "store-s3", "store-migrate",
                      "store-pregen"):
            shutil.rmtree(os.path.join(run_dir, store), ignore_errors=True)
    meta = machine_meta(args, params)
    meta["seconds"] = round(time.monotonic() - started, 1)
    meta["loadavg_before"] = [round(value, 2) for value in load_before]
    if load_before[0] > 0.5 * meta["cpus"]:
        ctx.notes.append("The machine was already busy when the run started (1-minute load "
                         "average %.1f on %d CPUs): absolute figures are low and noisy; the "
                         "ratios, measured side by side, are what to compare."
                         % (load_before[0], meta["cpus"]))
    notes = [note.format(**dict(params, cpus=meta["cpus"])) for note in NOTES] + ctx.notes
    text = report.write(out_dir, meta, ctx.rows, ctx.raw, notes)
    sys.stdout.write(text + "\n")
    logger.info("Wrote %s/results.md, results.json and ratios.svg in %.0f s", out_dir,
                meta["seconds"])
    return 1 if failed else 0


def _terminate(signum, frame):
    raise KeyboardInterrupt("signal %d" % signum)  # so the finally blocks stop the servers


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return run(args)
    except RuntimeError as ex:
        logger.error("%s", ex)
        return 2
    except KeyboardInterrupt:
        logger.error("Interrupted; every server this run started has been stopped")
        return 130


if __name__ == "__main__":
    sys.exit(main())
