"""Settings: one schema (names, defaults, checks, help), loaded from a file and the environment."""

import collections
import json
import logging
import os
import re
import runpy
import sys
from typing import Callable, NamedTuple

logger = logging.getLogger(__name__)

__all__ = ["Setting", "SCHEMA", "Settings", "ConfigError", "load", "from_mapping", "override",
           "DEFAULT_THUMBNAIL_SIZES"]

# Sizes real clients ask for: Specify 7's default preview 123, Specify 6's 128,
# the Web Portal's 200 and 600; a few more up to 1600 for large screens.
DEFAULT_THUMBNAIL_SIZES = (64, 123, 128, 200, 256, 300, 400, 600, 800, 1024, 1600)

DEFAULT_CAN_THUMBNAIL = frozenset({
    "image/jpeg", "image/gif", "image/png", "image/tiff", "application/pdf",
    "image/heic", "image/heif", "image/webp", "image/bmp",
})


class ConfigError(Exception):
    """A setting is missing or invalid; the message names the source, the name and the reason."""


# --- converters: each takes a Python value (from a .py file) or a str (from the
# environment) and returns the normalised value or raises ValueError(reason).

_NONE_WORDS = ("none", "null")
_TRUE_WORDS = ("1", "true", "yes", "on")
_FALSE_WORDS = ("0", "false", "no", "off", "")


def _optional(convert):
    def optional(value):
        if value is None or (isinstance(value, str) and value.strip().lower() in _NONE_WORDS):
            return None
        return convert(value)
    optional.__name__ = "optional " + convert.__name__
    return optional


def _boolean(value):
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE_WORDS + _FALSE_WORDS:
        return value.strip().lower() in _TRUE_WORDS
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ValueError("expected True or False")


def _integer(low, high=None):
    def integer(value):
        if isinstance(value, bool):
            raise ValueError("expected an integer")
        if isinstance(value, str):
            if not re.fullmatch(r"\s*\d+\s*", value):
                raise ValueError("expected an integer")
            value = int(value)
        if not isinstance(value, int):
            raise ValueError("expected an integer")
        if value < low or (high is not None and value > high):
            raise ValueError("expected an integer from %d%s" % (low, " to %d" % high if high else " up"))
        return value
    integer.__name__ = "integer"
    return integer


def _text(value):
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected a non-empty string")
    return value.strip()


def _key(value):
    if isinstance(value, str) and "," in value and not value.startswith("["):
        # NOTE: from the environment, a comma-separated list means several keys (rotation).
        value = [part.strip() for part in value.split(",")]
    elif isinstance(value, str) and value.startswith("["):
        value = _json(value)
    if isinstance(value, str):
        if not value:
            raise ValueError("expected a non-empty key, or None to disable security")
        return value
    if isinstance(value, (list, tuple)) and value and all(isinstance(k, str) and k for k in value):
        return tuple(value)
    raise ValueError("expected a string, a list of strings, or None")


def _json(value):
    try:
        return json.loads(value)
    except ValueError:
        raise ValueError("expected JSON") from None


def _relative_dir(value):
    value = _text(value)
    parts = value.replace("\\", "/").split("/")
    if value.startswith(("/", "\\")) or any(part in ("", ".", "..") for part in parts):
        raise ValueError("expected a relative directory name without '..'")
    if any(ord(char) < 32 or ord(char) == 127 for char in value):
        raise ValueError("expected a directory name without control characters")
    return value


def _collection_dirs(value):
    if isinstance(value, str):
        value = _json(value)
    if not isinstance(value, dict):
        raise ValueError("expected None or a dict of collection name -> directory")
    for name, directory in value.items():
        if not isinstance(name, str):
            raise ValueError("collection names must be strings, got %r" % (name,))
        _relative_dir(directory)
    return dict(value)


def _mime_set(value):
    if isinstance(value, str):
        value = value.replace(",", " ").split()
    if not isinstance(value, (set, frozenset, list, tuple)):
        raise ValueError("expected a set of MIME types")
    for item in value:
        if not isinstance(item, str) or "/" not in item:
            raise ValueError("%r is not a MIME type" % (item,))
    return frozenset(item.lower() for item in value)


def _sizes(value):
    if isinstance(value, str):
        value = value.replace(",", " ").split()
    if not isinstance(value, (list, tuple, set, frozenset)) or not value:
        raise ValueError("expected None or a list of sizes")
    check = _integer(1, 10000)
    return tuple(sorted({check(item) for item in value}))


def _choice(*choices):
    def choice(value):
        if not isinstance(value, str) or value.strip().lower() not in choices:
            raise ValueError("expected one of %s" % ", ".join(choices))
        return value.strip().lower()
    choice.__name__ = "choice"
    return choice


def _url(pattern, reason):
    def url(value):
        value = _text(value).rstrip("/")
        if not re.fullmatch(pattern, value):
            raise ValueError(reason)
        return value
    url.__name__ = "url"
    return url


_public_url = _url(r"https?://[^/?#\s]+(/[^?#\s]*)?",
                   "expected http(s)://host[:port][/prefix] without query or fragment")
_endpoint = _url(r"https?://[^/?#\s]+", "expected http(s)://host[:port] without a path")


def _base_dir(value):
    return os.path.abspath(_text(value))


def _uri_prefix(value):
    value = _text(value)
    if not re.fullmatch(r"/([A-Za-z0-9._~-]+/)+", value) or "/./" in value or "/../" in value:
        raise ValueError("expected a URI path like /webassets-internal/ (with both slashes)")
    return value


def _key_prefix(value):
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError("expected a string")
    value = value.strip().strip("/")
    if not value:
        return ""
    _relative_dir(value)  # no '..', '.', empty or absolute parts, no control characters
    return value + "/"


def _existing(test, what):
    def existing(value):
        value = os.path.abspath(_text(value))
        if not test(value):
            raise ValueError("no such " + what)
        return value
    existing.__name__ = "existing " + what
    return existing


_directory = _existing(os.path.isdir, "directory")


def _spool_dir(value):
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    return _optional(_directory)(value)
_readable_file = _existing(os.path.isfile, "file")


class Setting(NamedTuple):
    """One setting: its name, default, converter (raises ValueError(reason)) and help line."""

    name: str
    default: object
    convert: Callable
    help: str


# The reference's settings first, in its order, then webassets' own. README's settings table
# and etc/settings.py.example describe each one (tests/test_config.py checks they do).
SCHEMA = (
    Setting("KEY", "test_attachment_key", _optional(_key),
            "secret shared with Specify; a list accepts several (rotation); None: no security"),
    Setting("TIME_TOLERANCE", 150, _optional(_integer(0)),
            "seconds a token's time may differ from the server's; None: no time check"),
    Setting("REQUIRE_KEY_FOR_GET", False, _boolean, "downloads need a token too"),
    Setting("ALLOW_STATIC_FILE_ACCESS", True, _boolean,
            "serve /getfileref and /static/ (the old Web Portal) without tokens"),
    Setting("HOST", "localhost", _text, "host written by /getfileref; SERVER_NAME's default"),
    Setting("PORT", 8080, _integer(0, 65535), "port of the built-in server; SERVER_PORT's default"),
    Setting("SERVER_NAME", None, _optional(_text),
            "host written into web_asset_store.xml; None: HOST"),
    Setting("SERVER_PORT", None, _optional(_integer(1, 65535)),
            "port written into web_asset_store.xml; None: PORT"),
    Setting("COLLECTION_DIRS", None, _optional(_collection_dirs),
            "collection name -> directory under BASE_DIR; None: one store for all"),
    Setting("BASE_DIR", "/home/specify/attachments/", _base_dir, "the store"),
    Setting("THUMB_DIR", "thumbnails", _relative_dir, "subdirectory of cached thumbnails"),
    Setting("ORIG_DIR", "originals", _relative_dir, "subdirectory of originals"),
    Setting("CAN_THUMBNAIL", DEFAULT_CAN_THUMBNAIL, _mime_set, "MIME types to thumbnail"),
    Setting("DEBUG", False, _boolean, "accepted so the reference's settings.py loads; unused"),
    Setting("SERVER", None, _optional(_text),
            "accepted so the reference's settings.py loads; webassets has one server"),
    Setting("DEVELOPMENT_PORT", None, _optional(_integer(0, 65535)),
            "accepted so the reference's settings.py loads; unused"),
    Setting("PUBLIC_URL", None, _optional(_public_url),
            "exact base URL for web_asset_store.xml, e.g. https://assets.example.org/prefix"),
    # COMPAT: the reference listens on every interface.
    Setting("BIND_ADDRESS", "0.0.0.0", _text, "address the built-in server listens on"),
    Setting("MAX_UPLOAD_SIZE", 4 * 1024 ** 3, _optional(_integer(1)),
            "largest upload in bytes (413 above); None: no limit"),
    Setting("MAX_SCALE", 1600, _integer(1, 10000),
            "largest scale accepted when THUMBNAIL_SIZES is None"),
    Setting("THUMBNAIL_SIZES", DEFAULT_THUMBNAIL_SIZES, _optional(_sizes),
            "the size ladder a scale is rounded up to; None: the exact scale"),
    Setting("CONVERT", None, _optional(_text), "ImageMagick program; None: magick/convert on PATH"),
    Setting("GHOSTSCRIPT", None, _optional(_text), "Ghostscript program; None: gs on PATH"),
    Setting("THUMBNAIL_TIMEOUT", 60, _integer(1), "seconds one conversion may run"),
    Setting("THUMBNAIL_WORKERS", None, _optional(_integer(1, 256)),
            "conversions at once per process; None: the CPUs shared among the processes"),
    Setting("THUMBNAIL_QUEUE", 64, _integer(0), "conversions that may wait (503 beyond)"),
    Setting("THUMBNAIL_LEASES", False, _boolean,
            "instances on other hosts sharing the store render each thumbnail once (a lease)"),
    Setting("MAX_PIXELS", 200 * 1000 * 1000, _integer(1), "largest image thumbnailed, in pixels"),
    # Fewer request slots fight less over the GIL (bench: c=64).
    Setting("WORKERS", 4, _integer(1, 1024), "request slots per process of the built-in server"),
    Setting("PROCESSES", None, _optional(_integer(1, 256)),
            "processes of the built-in server; None: CPU count"),
    Setting("REQUEST_TIMEOUT", 60, _integer(1), "seconds a client may stay silent"),
    Setting("MAX_CONNECTIONS", 1024, _integer(1, 1000000),
            "open client connections, all processes together (503 beyond)"),
    Setting("METRICS", True, _boolean, "serve /metrics (Prometheus text) and count for it"),
    Setting("ACCESS_LOG_FORMAT", "combined", _choice("combined", "json"),
            "'combined' (Apache) or 'json' (one object per line)"),
    Setting("FILE_OFFLOAD", None, _optional(_choice("nginx", "apache")),
            "'nginx' or 'apache': the front server sends the files' bytes; None: we do"),
    Setting("FILE_OFFLOAD_PREFIX", "/webassets-internal/", _uri_prefix,
            "nginx's internal location that aliases BASE_DIR"),
    Setting("STORAGE", "local", _choice("local", "s3"),
            "'local': files under BASE_DIR; 's3': objects in S3_BUCKET"),
    Setting("S3_BUCKET", None, _optional(_text), "the bucket of STORAGE = 's3' (required then)"),
    Setting("S3_PREFIX", "", _key_prefix,
            "key prefix in the bucket, e.g. 'webassets/'; '': the bucket's root"),
    Setting("S3_ENDPOINT", None, _optional(_endpoint),
            "http(s)://host[:port] of an S3-compatible server; None: AWS (by S3_REGION)"),
    Setting("S3_REGION", "us-east-1", _text, "region the requests are signed for"),
    Setting("S3_ACCESS_KEY", None, _optional(_text),
            "access key id; None: AWS_ACCESS_KEY_ID from the environment"),
    Setting("S3_SECRET_KEY", None, _optional(_text),
            "secret access key; None: AWS_SECRET_ACCESS_KEY from the environment"),
    Setting("S3_ADDRESSING", "auto", _choice("auto", "path", "virtual"),
            "'path' (host/bucket/key), 'virtual' (bucket.host/key; path for a bucket name "
            "that cannot be a host name) or 'auto' (virtual on AWS, else path)"),
    Setting("S3_CA_FILE", None, _optional(_readable_file),
            "PEM file of the CA that signed the endpoint's certificate; None: the system's"),
    Setting("S3_PART_SIZE", 8 * 1024 ** 2, _integer(5 * 1024 ** 2, 5 * 1024 ** 3),
            "bytes per part of a multipart upload (an upload holds three in memory)"),
    Setting("S3_SPOOL_DIR", "auto", _spool_dir,
            "a disk directory where Specify 7's uploads wait for their name; 'auto': /var/tmp "
            "unless it is in memory (tmpfs); None: none (a temporary key and a copy instead)"),
)
_SCHEMA_BY_NAME = {setting.name: setting for setting in SCHEMA}

_Values = collections.namedtuple("_Values", [setting.name for setting in SCHEMA])
# NOTE: namedtuple's `defaults=` is 3.7+.
_Values.__new__.__defaults__ = tuple(setting.default for setting in SCHEMA)


class Settings(_Values):
    """Every setting of SCHEMA, by name, and the values derived from them."""

    __slots__ = ()

    @property
    def public_name(self):
        """Return the host written into web_asset_store.xml."""
        return self.SERVER_NAME if self.SERVER_NAME is not None else self.HOST

    @property
    def public_port(self):
        """Return the port written into web_asset_store.xml."""
        return self.SERVER_PORT if self.SERVER_PORT is not None else self.PORT

    def public_base(self, script_name=""):
        """Return the base URL Specify should use: PUBLIC_URL, else http://SERVER_NAME:SERVER_PORT.

        COMPAT: the port is always explicit and the Host header is ignored, as
        in the reference; SCRIPT_NAME is added so a mounted server advertises
        its prefix.
        """
        if self.PUBLIC_URL:
            return self.PUBLIC_URL
        return "http://%s:%d%s" % (self.public_name, self.public_port, script_name)

    @property
    def processes(self):
        """Return how many processes serve requests: mod_wsgi's daemons, else PROCESSES or CPUs."""
        return _host_processes() or self.PROCESSES or os.cpu_count() or 1

    @property
    def thumbnail_workers(self):
        """Return the conversions one process runs at once (THUMBNAIL_WORKERS).

        None: the CPUs shared among the processes (rounded up), so that all of them together
        run about one conversion per CPU.
        """
        if self.THUMBNAIL_WORKERS is not None:
            return self.THUMBNAIL_WORKERS
        return -(-(os.cpu_count() or 1) // self.processes)

    @property
    def keys(self):
        """Return the accepted keys as a tuple; empty when security is off."""
        if self.KEY is None:
            return ()
        return (self.KEY,) if isinstance(self.KEY, str) else tuple(self.KEY)


def _host_processes():
    """Return the processes of the mod_wsgi daemon group this runs in, or None elsewhere."""
    mod_wsgi = sys.modules.get("mod_wsgi")  # NOTE: Apache's mod_wsgi provides it, nobody else
    processes = getattr(mod_wsgi, "maximum_processes", None)
    return processes if isinstance(processes, int) and processes > 0 else None


# Names the reference's Docker image reads (specify/web-asset-server Dockerfile).
_DOCKER_ENV = {"ATTACHMENT_KEY": "KEY", "SERVER_NAME": "SERVER_NAME",
               "SERVER_PORT": "SERVER_PORT", "DEBUG_MODE": "DEBUG"}
_ENV_PREFIX = "WEBASSETS_"


def _validate(values, source):
    """Return {NAME: converted value} of the known names in `values`; ConfigError."""
    clean = {}
    for name, value in values.items():
        setting = _SCHEMA_BY_NAME.get(name)
        if setting is None:
            logger.warning("Ignoring unknown setting %s in %s", name, source)
            continue
        try:
            clean[name] = setting.convert(value)
        except ValueError as ex:
            raise ConfigError("Invalid %s in %s: %r (%s)" % (name, source, value, ex)) from None
    return clean


def from_mapping(values, source="settings"):
    """Validate a {NAME: value} mapping over the defaults and return Settings.

    Raises ConfigError naming `source`, the setting and the reason. Unknown
    uppercase names are logged and ignored (settings.py may define helpers).
    """
    return Settings(**_validate(values, source))


def override(settings, values, source):
    """Return `settings` with `values` ({NAME: value}) checked as the file's are; ConfigError."""
    return settings._replace(**_validate(values, source))


def read_python(path):
    """Execute a settings.py and return its UPPERCASE names.

    Raises ConfigError if the file cannot be read or raises (e.g. the Docker
    image's `os.environ['ATTACHMENT_KEY']` with the variable unset).
    """
    directory = os.path.dirname(os.path.abspath(path))
    # COMPAT: old reference settings do `from secret_key import KEY`, a sibling module.
    sys.path.insert(0, directory)
    try:
        namespace = runpy.run_path(path, run_name="webassets_settings")
    except OSError as ex:
        raise ConfigError("Cannot read settings file %s: %s" % (path, ex.strerror)) from None
    except Exception as ex:  # a settings file can raise anything; report it, don't crash
        raise ConfigError("Error in settings file %s: %s: %s" % (path, type(ex).__name__, ex)) from None
    finally:
        sys.path.remove(directory)
    return {name: value for name, value in namespace.items() if name.isupper()}


def read_environ(environ):
    """Return the settings given by environment variables, as strings."""
    values = {}
    for env_name, name in _DOCKER_ENV.items():
        if env_name in environ:
            values[name] = environ[env_name]
    for env_name, value in environ.items():
        if env_name.startswith(_ENV_PREFIX) and env_name[len(_ENV_PREFIX):] in _SCHEMA_BY_NAME:
            values[env_name[len(_ENV_PREFIX):]] = value
    return values


def load(path=None, environ=None):
    """Load settings from `path` (a settings.py), then environment overrides.

    With no path, WEBASSETS_SETTINGS from `environ` names the file; with
    neither, the defaults apply. Raises ConfigError on any invalid value.
    """
    environ = os.environ if environ is None else environ
    path = path or environ.get("WEBASSETS_SETTINGS") or None
    values = read_python(path) if path else {}
    settings = from_mapping(values, source=path or "defaults")
    return override(settings, read_environ(environ), "the environment")
