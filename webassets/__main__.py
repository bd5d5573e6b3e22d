"""Command line: `webassets serve|check|keygen|token|thumbnails|fsck|stats|migrate`."""

import argparse
import logging
import os
import secrets
import shutil
import sys
import tempfile
import time

from . import __version__, config, logutil, storage
from .exitcodes import EXIT_ATTENTION, EXIT_CONFIG, EXIT_INTERRUPTED, EXIT_OK
from .exitcodes import HELP as EXIT_HELP

logger = logging.getLogger("webassets")


def _load(args, **overrides):
    """Load the settings named on the command line (or WEBASSETS_SETTINGS), then `overrides`.

    The command line's values are checked as the file's are; ConfigError.
    """
    settings = config.load(args.settings)
    if getattr(args, "host", None):
        overrides["BIND_ADDRESS"] = args.host
    if getattr(args, "port", None) is not None:
        overrides["PORT"] = args.port
    return config.override(settings, overrides, "the command line")


def _source(args):
    return args.settings or os.environ.get("WEBASSETS_SETTINGS") or "the defaults"


def prepare_store(store):
    """Create what the store needs and check it takes files; raise ConfigError otherwise.

    A remote store (a bucket) that cannot take files now is only warned about: it may be
    back in a moment, and /readyz reports it meanwhile.
    """
    try:
        store.prepare()
    except OSError as ex:
        raise config.ConfigError("Cannot prepare the store %s: %s"
                                 % (store.location(), ex.strerror or ex))
    problem = store.problem()
    if problem and store.remote:
        logger.warning("The store %s cannot take files now: %s", store.location(), problem)
    elif problem:
        raise config.ConfigError("The store %s cannot take files: %s"
                                 % (store.location(), problem))


def _existing_store(settings):
    """Return the app over an existing store (never created here); ConfigError if missing."""
    from .app import create_app

    app = create_app(settings)
    absent = app.store.absent()
    if absent:
        raise config.ConfigError(absent)
    return app


# ---------------------------------------------------------------------------- commands

def cmd_serve(args):
    """Run the built-in server (PROCESSES x WORKERS request slots) until SIGTERM/SIGINT."""
    from .app import create_app
    from .server import serve

    settings = _load(args)
    logutil.set_format(args.log, settings.ACCESS_LOG_FORMAT)
    processes = settings.processes
    app = create_app(settings)
    prepare_store(app.store)
    formats = app.thumbnailer.formats()  # probed once here, before the workers fork
    missing = sorted(name for name, ok in formats.items() if not ok)
    logger.info("Thumbnail formats: %s", ", ".join(sorted(n for n, ok in formats.items() if ok)))
    if missing:
        logger.warning("Thumbnails NOT available on this machine for: %s", ", ".join(missing))
    if not settings.keys:
        logger.warning("KEY is None: anyone who can reach this server can store and delete files")

    def ready(server):
        logger.info("webassets %s listening on %s:%d (%d process(es) x %d request slots), "
                    "store %s",
                    __version__, settings.BIND_ADDRESS, server.server_port, processes,
                    settings.WORKERS, app.store.location())
        logger.info("Specify attachment.url = %s/web_asset_store.xml",
                    settings.public_base())

    metrics_dir = None
    if processes > 1 and app.metrics is not None:
        metrics_dir = tempfile.mkdtemp(prefix="webassets-metrics-")

    def on_fork():
        if metrics_dir is not None:
            app.metrics.share(metrics_dir)

    try:
        serve(app, settings.BIND_ADDRESS, settings.PORT, workers=settings.WORKERS,
              timeout=settings.REQUEST_TIMEOUT, ready=ready, processes=processes,
              on_fork=on_fork, max_connections=settings.MAX_CONNECTIONS)
    except OSError as ex:
        logger.error("Cannot listen on %s:%d: %s", settings.BIND_ADDRESS, settings.PORT,
                     ex.strerror or ex)
        return EXIT_ATTENTION
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return EXIT_OK


def cmd_keygen(args):
    """Print a new random key for KEY and Specify's attachment.key."""
    sys.stdout.write(secrets.token_urlsafe(32) + "\n")
    return EXIT_OK


def cmd_token(args):
    """Print a token for NAME, signed now with the first configured key."""
    from . import auth

    settings = _load(args)
    if not settings.keys:
        raise config.ConfigError("KEY is None: the server checks no tokens")
    sys.stdout.write(auth.generate_token(settings.keys[0], int(time.time()), args.name) + "\n")
    return EXIT_OK


def cmd_check(args):
    """Check the settings, store, converters and keys; print one screen."""
    from . import check
    from .app import create_app

    try:
        settings = _load(args)
    except config.ConfigError as ex:
        sys.stdout.write("webassets %s check, settings from %s\n\n  [FAIL] %s\n"
                         % (__version__, _source(args), ex))
        return EXIT_CONFIG
    return check.run_check(settings, _source(args), create_app(settings))


def cmd_pregen(args):
    """Make missing thumbnails ahead of time."""
    from . import admin

    # pregen is a process of its own: by default its conversions may use every CPU.
    overrides = {"PROCESSES": 1}
    if args.jobs:
        overrides["THUMBNAIL_WORKERS"] = args.jobs
    settings = _load(args, **overrides)
    app = _existing_store(settings)
    try:
        return admin.pregen(app.store, app.thumbnailer, settings, sizes=args.sizes,
                            coll=args.coll, quiet=args.quiet)
    except storage.UnknownCollection as ex:
        raise config.ConfigError(str(ex)) from None


def cmd_prune(args):
    """Remove orphan and off-ladder thumbnails."""
    from . import admin

    settings = _load(args)
    return admin.prune(_existing_store(settings).store, settings, dry_run=args.dry_run,
                       quiet=args.quiet)


def cmd_fsck(args):
    """Check the store; repair what is safe to repair."""
    from . import admin

    app = _existing_store(_load(args))
    return admin.fsck(app.store, dry_run=args.dry_run, grace=args.grace, quiet=args.quiet)


def cmd_stats(args):
    """Print counts and sizes per collection directory."""
    from . import admin

    app = _existing_store(_load(args))
    return admin.stats(app.store, top=args.top, as_json=args.json, quiet=args.quiet)


def cmd_migrate(args):
    """Copy every original and thumbnail into the store of another settings file."""
    from . import migrate
    from .app import create_app

    source = _existing_store(_load(args)).store
    target = create_app(config.load(args.to)).store
    try:
        migrate.check_pair(source, target)  # before the target is created
        if not args.dry_run:
            prepare_store(target)
            problem = target.problem()  # even a remote one: every copy would fail
            if problem:
                raise config.ConfigError("The target %s cannot take files: %s"
                                         % (target.location(), problem))
        elif target.remote and target.absent():
            raise config.ConfigError(target.absent())  # a missing local target is empty
        return migrate.migrate(source, target, dry_run=args.dry_run, jobs=args.jobs,
                               size_only=args.size_only, verify=args.verify, quiet=args.quiet)
    except migrate.MigrateError as ex:
        raise config.ConfigError(str(ex)) from None


# ---------------------------------------------------------------------------- parser

def _sizes(text):
    try:
        sizes = [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise argparse.ArgumentTypeError("expected sizes like 123,200") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError("expected positive sizes like 123,200")
    return sizes


def _positive(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError("expected a positive integer")
    return value


def _seconds(text):
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value < 0:
        raise argparse.ArgumentTypeError("expected seconds (0 or more)")
    return value


def _common(walks=False):
    """Return the options every command that reads settings shares."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--settings", help="settings.py (default: $WEBASSETS_SETTINGS)")
    parent.add_argument("-v", "--verbose", action="store_true", help="log INFO messages too")
    if walks:
        parent.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    return parent


def _add(sub, name, func, help_text, parents=(), description=None):
    parser = sub.add_parser(name, help=help_text, description=description or help_text,
                            parents=list(parents), epilog=EXIT_HELP,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(func=func)
    return parser


def build_parser():
    """Return the argparse parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="webassets", description="Specify web asset server.",
                                     epilog=EXIT_HELP,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version="webassets " + __version__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    common, walks = _common(), _common(walks=True)
    serve = _add(sub, "serve", cmd_serve, "run the built-in HTTP server", [common])
    serve.add_argument("--host", help="address to listen on (default: BIND_ADDRESS, 0.0.0.0)")
    serve.add_argument("--port", type=int, help="port to listen on (default: PORT)")
    _add(sub, "check", cmd_check, "check settings, store, converters and keys; one screen",
         [common])
    _add(sub, "keygen", cmd_keygen, "print a new random key for KEY and attachment.key")
    token = _add(sub, "token", cmd_token, "print a valid token for NAME (for curl tests)",
                 [common])
    token.add_argument("name", metavar="NAME", help="the file name (or random) the token signs")
    thumbs = _add(sub, "thumbnails", None, "make or prune cached thumbnails")
    thumbs.set_defaults(help_parser=thumbs)
    actions = thumbs.add_subparsers(dest="action", metavar="ACTION")
    pregen = _add(actions, "pregen", cmd_pregen,
                  "make missing thumbnails ahead of time (resumable)", [walks])
    pregen.add_argument("--sizes", type=_sizes, default=[123, 200],
                        help="comma-separated sizes, snapped to THUMBNAIL_SIZES like requests "
                             "(default: 123,200)")
    pregen.add_argument("--coll", help="only this collection (a COLLECTION_DIRS name)")
    pregen.add_argument("--jobs", type=_positive,
                        help="conversions at once (default: THUMBNAIL_WORKERS)")
    prune = _add(actions, "prune", cmd_prune,
                 "remove thumbnails of deleted originals and sizes not in THUMBNAIL_SIZES",
                 [walks])
    prune.add_argument("--dry-run", action="store_true", help="list, remove nothing")
    fsck = _add(sub, "fsck", cmd_fsck, "find and repair store problems", [walks], description=(
        "Remove unfinished work older than --grace (temporary files of interrupted uploads "
        "and renders, a bucket's unfinished multipart uploads, stale thumbnail leases), "
        "orphan and zero-byte thumbnails; report zero-byte or unreadable originals and names "
        "the server can never serve (those are never changed)."))
    fsck.add_argument("--dry-run", action="store_true", help="report, change nothing")
    fsck.add_argument("--grace", type=_seconds, default=3600, metavar="SECONDS",
                      help="leave unfinished work younger than this alone (default: 3600)")
    stats = _add(sub, "stats", cmd_stats, "originals and thumbnails per collection directory",
                 [walks])
    stats.add_argument("--top", type=_positive, default=10, help="largest files shown (10)")
    stats.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _migrate_parser(sub)
    return parser


def _migrate_parser(sub):
    migrate = _add(sub, "migrate", cmd_migrate, "copy every file into another store (resumable)",
                   description=(
                       "Copy every original, then every thumbnail, from the store of --from into "
                       "the store of --to (e.g. the local disk into a bucket, or back). Files "
                       "the target holds with the same size and content are skipped, so a "
                       "second run copies only what changed meanwhile; a differing file that is "
                       "newer in the target is kept. Each copy is atomic and verified; nothing "
                       "is deleted from either store. Safe while the server runs."))
    migrate.add_argument("--from", "--settings", dest="settings", metavar="SETTINGS",
                         help="settings.py of the source (default: $WEBASSETS_SETTINGS)")
    migrate.add_argument("--to", required=True, metavar="SETTINGS",
                         help="settings.py of the target (its STORAGE, BASE_DIR or bucket)")
    migrate.add_argument("--dry-run", action="store_true",
                         help="compare and list what would be copied; copy nothing")
    migrate.add_argument("--jobs", type=_positive, default=4, help="files at once (default: 4)")
    migrate.add_argument("--size-only", action="store_true",
                         help="treat files of equal size as equal (a quick catch-up; no reads)")
    migrate.add_argument("--verify", choices=("read", "size"), default="read",
                         help="check each copy by the target's MD5 where it has one, else by "
                              "reading it back (read, the default) or by its size (size: a "
                              "bucket checks every part's SHA-256 as it arrives)")
    migrate.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    migrate.add_argument("-v", "--verbose", action="store_true", help="log INFO messages too")


def main(argv=None):
    """Run the command line; return the exit status (argparse exits 2 on bad usage)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        getattr(args, "help_parser", parser).print_help()
        return EXIT_CONFIG
    serving = args.command == "serve"
    args.log = logutil.install(logging.INFO if serving or getattr(args, "verbose", False)
                               else logging.WARNING)
    try:
        return args.func(args)
    except config.ConfigError as ex:
        logger.error("%s", ex)
        return EXIT_CONFIG
    except storage.StorageError as ex:
        # A store that fails in the middle of a walk (a bucket gone unreachable): one line.
        logger.error("The store failed: %s", ex)
        return EXIT_ATTENTION
    except KeyboardInterrupt:
        logger.warning("Interrupted")
        return EXIT_INTERRUPTED
    finally:
        logutil.uninstall(args.log)


if __name__ == "__main__":
    sys.exit(main())
