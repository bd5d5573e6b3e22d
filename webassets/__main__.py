"""Command line: `python -m webassets serve [--settings F] [--host H] [--port P]` and friends."""

import argparse
import logging
import os
import secrets
import sys

from . import __version__, config

logger = logging.getLogger("webassets")

EXIT_OK, EXIT_FAULT, EXIT_CONFIG = 0, 1, 2


def _load(args):
    """Load the settings named on the command line (or WEBASSETS_SETTINGS)."""
    settings = config.load(args.settings)
    overrides = {}
    if getattr(args, "host", None):
        overrides["BIND_ADDRESS"] = args.host
    if getattr(args, "port", None) is not None:
        overrides["PORT"] = args.port
    return settings._replace(**overrides)


def prepare_store(settings):
    """Create BASE_DIR if needed and check it is writable; raise ConfigError otherwise."""
    try:
        os.makedirs(settings.BASE_DIR, exist_ok=True)
    except OSError as ex:
        raise config.ConfigError("Cannot create BASE_DIR %s: %s" % (settings.BASE_DIR, ex.strerror))
    if not os.access(settings.BASE_DIR, os.W_OK | os.X_OK):
        raise config.ConfigError("BASE_DIR %s is not writable by this user" % settings.BASE_DIR)


def cmd_serve(args):
    """Run the built-in threaded server until SIGTERM/SIGINT."""
    from .app import create_app
    from .handlers import public_base
    from .server import serve

    settings = _load(args)
    prepare_store(settings)
    app = create_app(settings)
    formats = app.thumbnailer.formats()
    missing = sorted(name for name, ok in formats.items() if not ok)
    logger.info("Thumbnail formats: %s", ", ".join(sorted(n for n, ok in formats.items() if ok)))
    if missing:
        logger.warning("Thumbnails NOT available on this machine for: %s", ", ".join(missing))
    if not settings.keys:
        logger.warning("KEY is None: anyone who can reach this server can store and delete files")

    def ready(server):
        logger.info("webassets %s listening on %s:%d, store %s", __version__,
                    settings.BIND_ADDRESS, server.server_port, settings.BASE_DIR)
        logger.info("Specify attachment.url = %s/web_asset_store.xml",
                    public_base(settings))

    serve(app, settings.BIND_ADDRESS, settings.PORT, workers=settings.WORKERS,
          timeout=settings.REQUEST_TIMEOUT, ready=ready)
    return EXIT_OK


def cmd_keygen(args):
    """Print a new random key for KEY and Specify's attachment.key."""
    sys.stdout.write(secrets.token_urlsafe(32) + "\n")
    return EXIT_OK


def build_parser():
    """Return the argparse parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="webassets", description="Specify web asset server.")
    parser.add_argument("--version", action="version", version="webassets " + __version__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = sub.add_parser("serve", help="run the built-in HTTP server")
    serve.add_argument("--settings", help="settings.py (default: $WEBASSETS_SETTINGS)")
    serve.add_argument("--host", help="address to listen on (default: BIND_ADDRESS, 0.0.0.0)")
    serve.add_argument("--port", type=int, help="port to listen on (default: PORT)")
    serve.set_defaults(func=cmd_serve)
    keygen = sub.add_parser("keygen", help="print a new random key")
    keygen.set_defaults(func=cmd_keygen)
    return parser


def main(argv=None):
    """Run the command line; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_CONFIG
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except config.ConfigError as ex:
        logger.error("%s", ex)
        return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
