"""Settings: the reference's names and defaults, loaded once from a file and the environment."""

import json
import logging
import os
import re
import runpy
import sys
from typing import NamedTuple, Optional

logger = logging.getLogger(__name__)

__all__ = ["Settings", "ConfigError", "load", "from_mapping", "DEFAULT_THUMBNAIL_SIZES"]

# Sizes real clients ask for: Specify 7's default preview 123, Specify 6's 128,
# the Web Portal's 200 and 600; a few more up to 1600 for large screens.
DEFAULT_THUMBNAIL_SIZES = (64, 123, 128, 200, 256, 300, 400, 600, 800, 1024, 1600)

DEFAULT_CAN_THUMBNAIL = frozenset({
    "image/jpeg", "image/gif", "image/png", "image/tiff", "application/pdf",
    "image/heic", "image/heif", "image/webp", "image/bmp",
})


class ConfigError(Exception):
    """A setting is missing or invalid; the message names the source, the name and the reason."""


class Settings(NamedTuple):
    """Every setting, with the reference's defaults (settings.py of web-asset-server)."""

    KEY: object = "test_attachment_key"  # str, None (no security) or a tuple of str (rotation)
    TIME_TOLERANCE: Optional[int] = 150
    REQUIRE_KEY_FOR_GET: bool = False
    ALLOW_STATIC_FILE_ACCESS: bool = True
    HOST: str = "localhost"
    PORT: int = 8080
    SERVER_NAME: Optional[str] = None  # None: same as HOST (the reference's settings.py)
    SERVER_PORT: Optional[int] = None  # None: same as PORT
    COLLECTION_DIRS: Optional[dict] = None
    BASE_DIR: str = "/home/specify/attachments/"
    THUMB_DIR: str = "thumbnails"
    ORIG_DIR: str = "originals"
    CAN_THUMBNAIL: frozenset = DEFAULT_CAN_THUMBNAIL
    DEBUG: bool = False
    # Accepted so the reference's settings.py loads; webassets has one server.
    SERVER: Optional[str] = None
    DEVELOPMENT_PORT: Optional[int] = None
    # webassets additions.
    PUBLIC_URL: Optional[str] = None  # e.g. https://assets.example.org/prefix
    BIND_ADDRESS: str = "0.0.0.0"  # COMPAT: the reference listens on every interface
    MAX_UPLOAD_SIZE: Optional[int] = 4 * 1024 ** 3
    MAX_SCALE: int = 1600
    THUMBNAIL_SIZES: Optional[tuple] = DEFAULT_THUMBNAIL_SIZES
    CONVERT: Optional[str] = None  # None: find magick/convert on PATH
    GHOSTSCRIPT: Optional[str] = None  # None: find gs on PATH
    THUMBNAIL_TIMEOUT: int = 60
    THUMBNAIL_WORKERS: Optional[int] = None  # None: CPU count
    THUMBNAIL_QUEUE: int = 64
    MAX_PIXELS: int = 200 * 1000 * 1000
    WORKERS: int = 4  # request slots per process; fewer fight less over the GIL (bench: c=64)
    PROCESSES: Optional[int] = None  # None: CPU count
    REQUEST_TIMEOUT: int = 60
    MAX_CONNECTIONS: int = 1024  # open client connections, all processes together
    METRICS: bool = True  # serve /metrics (Prometheus text) and count for it
    ACCESS_LOG_FORMAT: str = "combined"  # 'combined' (Apache) or 'json' (one object per line)
    # 'nginx' (X-Accel-Redirect) or 'apache' (X-Sendfile): the front server sends the bytes
    # of originals and thumbnails once we have checked the request. None: we send them.
    FILE_OFFLOAD: Optional[str] = None
    FILE_OFFLOAD_PREFIX: str = "/webassets-internal/"  # nginx's internal location for BASE_DIR

    @property
    def public_name(self):
        """Return the host written into web_asset_store.xml."""
        return self.SERVER_NAME if self.SERVER_NAME is not None else self.HOST

    @property
    def public_port(self):
        """Return the port written into web_asset_store.xml."""
        return self.SERVER_PORT if self.SERVER_PORT is not None else self.PORT

    @property
    def processes(self):
        """Return how many worker processes the built-in server runs (PROCESSES or CPUs)."""
        return self.PROCESSES or os.cpu_count() or 1

    @property
    def keys(self):
        """Return the accepted keys as a tuple; empty when security is off."""
        if self.KEY is None:
            return ()
        return (self.KEY,) if isinstance(self.KEY, str) else tuple(self.KEY)


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


def _public_url(value):
    value = _text(value).rstrip("/")
    if not re.fullmatch(r"https?://[^/?#\s]+(/[^?#\s]*)?", value):
        raise ValueError("expected http(s)://host[:port][/prefix] without query or fragment")
    return value


def _base_dir(value):
    return os.path.abspath(_text(value))


def _uri_prefix(value):
    value = _text(value)
    if not re.fullmatch(r"/([A-Za-z0-9._~-]+/)+", value) or "/./" in value or "/../" in value:
        raise ValueError("expected a URI path like /webassets-internal/ (with both slashes)")
    return value


_CONVERTERS = {
    "KEY": _optional(_key),
    "TIME_TOLERANCE": _optional(_integer(0)),
    "REQUIRE_KEY_FOR_GET": _boolean,
    "ALLOW_STATIC_FILE_ACCESS": _boolean,
    "HOST": _text,
    "PORT": _integer(0, 65535),
    "SERVER_NAME": _optional(_text),
    "SERVER_PORT": _optional(_integer(1, 65535)),
    "COLLECTION_DIRS": _optional(_collection_dirs),
    "BASE_DIR": _base_dir,
    "THUMB_DIR": _relative_dir,
    "ORIG_DIR": _relative_dir,
    "CAN_THUMBNAIL": _mime_set,
    "DEBUG": _boolean,
    "SERVER": _optional(_text),
    "DEVELOPMENT_PORT": _optional(_integer(0, 65535)),
    "PUBLIC_URL": _optional(_public_url),
    "BIND_ADDRESS": _text,
    "MAX_UPLOAD_SIZE": _optional(_integer(1)),
    "MAX_SCALE": _integer(1, 10000),
    "THUMBNAIL_SIZES": _optional(_sizes),
    "CONVERT": _optional(_text),
    "GHOSTSCRIPT": _optional(_text),
    "THUMBNAIL_TIMEOUT": _integer(1),
    "THUMBNAIL_WORKERS": _optional(_integer(1, 256)),
    "THUMBNAIL_QUEUE": _integer(0),
    "MAX_PIXELS": _integer(1),
    "WORKERS": _integer(1, 1024),
    "PROCESSES": _optional(_integer(1, 256)),
    "REQUEST_TIMEOUT": _integer(1),
    "MAX_CONNECTIONS": _integer(1, 1000000),
    "METRICS": _boolean,
    "ACCESS_LOG_FORMAT": _choice("combined", "json"),
    "FILE_OFFLOAD": _optional(_choice("nginx", "apache")),
    "FILE_OFFLOAD_PREFIX": _uri_prefix,
}

# Names the reference's Docker image reads (specify/web-asset-server Dockerfile).
_DOCKER_ENV = {"ATTACHMENT_KEY": "KEY", "SERVER_NAME": "SERVER_NAME",
               "SERVER_PORT": "SERVER_PORT", "DEBUG_MODE": "DEBUG"}
_ENV_PREFIX = "WEBASSETS_"


def from_mapping(values, source="settings"):
    """Validate a {NAME: value} mapping over the defaults and return Settings.

    Raises ConfigError naming `source`, the setting and the reason. Unknown
    uppercase names are logged and ignored (settings.py may define helpers).
    """
    clean = {}
    for name, value in values.items():
        convert = _CONVERTERS.get(name)
        if convert is None:
            logger.warning("Ignoring unknown setting %s in %s", name, source)
            continue
        try:
            clean[name] = convert(value)
        except ValueError as ex:
            raise ConfigError("Invalid %s in %s: %r (%s)" % (name, source, value, ex)) from None
    return Settings(**clean)


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
        if env_name.startswith(_ENV_PREFIX) and env_name[len(_ENV_PREFIX):] in _CONVERTERS:
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
    overrides = read_environ(environ)
    if overrides:
        env_settings = from_mapping(overrides, source="the environment")
        settings = settings._replace(**{name: getattr(env_settings, name) for name in overrides})
    return settings
