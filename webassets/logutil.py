"""Logging plumbing: request ids, the access-log line (combined or JSON) and log setup."""

import json
import logging
import os
import re
import sys
import threading
import time

__all__ = ["REQUEST_ID_KEY", "ACCESS_FORMATS", "assign_request_id", "current_request_id",
           "clear_request_id", "escape", "log_access", "combined_time", "LineFormatter",
           "JsonFormatter", "install", "set_format", "uninstall"]

ACCESS_LOGGER = "webassets.access"
REQUEST_ID_KEY = "webassets.request_id"  # where the app leaves the id in the WSGI environ
ACCESS_FORMATS = ("combined", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"

# SECURITY: an incoming id is echoed into headers and log lines; only plain tokens are kept.
_SANE_ID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,200}\Z")
_local = threading.local()
access_logger = logging.getLogger(ACCESS_LOGGER)


# ---------------------------------------------------------------------------- request ids

def assign_request_id(environ):
    """Return the request's id: a sane incoming X-Request-Id, else a new random one.

    The id is stored in the environ (REQUEST_ID_KEY, for the server's access log) and in
    this thread's log context, so warnings logged while serving the request carry it.
    """
    incoming = environ.get("HTTP_X_REQUEST_ID")
    request_id = incoming if incoming and _SANE_ID.match(incoming) else os.urandom(8).hex()
    environ[REQUEST_ID_KEY] = request_id
    _local.request_id = request_id
    return request_id


def current_request_id():
    """Return the id of the request this thread is serving, or None."""
    return getattr(_local, "request_id", None)


def clear_request_id():
    """Forget this thread's request id (a new request is starting)."""
    _local.request_id = None


# ---------------------------------------------------------------------------- access lines

_LOG_ESCAPES = {code: "\\x%02x" % code for code in list(range(0x20)) + list(range(0x7F, 0xA0))}
_LOG_ESCAPES.update({ord('"'): '\\"', ord("\\"): "\\\\"})
_time_cache = [None, ""]  # [whole second, its formatted form]; a race only recomputes it


def escape(text):
    """Return `text` with control characters, quotes and backslashes escaped for a log line."""
    # SECURITY: request lines and headers are client text; escaped, they cannot forge lines.
    return str(text).translate(_LOG_ESCAPES)


def combined_time(timestamp):
    """Return Apache's %t for a Unix time: '[10/Oct/2000:13:55:36 -0700]' (local time)."""
    second = int(timestamp)
    cached_second, text = _time_cache
    if cached_second != second:
        # NOTE: %b is locale-dependent, but Python leaves LC_TIME at "C" unless told otherwise.
        text = time.strftime("[%d/%b/%Y:%H:%M:%S %z]", time.localtime(second))
        _time_cache[:] = [second, text]
    return text


def log_access(client, request_line, status, size, referer, user_agent, started, elapsed,
               request_id=None):
    """Log one request on 'webassets.access' as an Apache combined line plus id and time.

    `started` is the Unix time the request arrived, `elapsed` its duration in seconds. The
    record also carries the fields as `record.access`, which JsonFormatter writes out.
    """
    if not access_logger.isEnabledFor(logging.INFO):
        return
    fields = {"remote_addr": client, "request": request_line, "status": status,
              "bytes": size, "referer": referer, "user_agent": user_agent,
              "request_id": request_id, "duration_ms": round(elapsed * 1000.0, 1),
              "started": started}
    access_logger.info('%s - - %s "%s" %s %s "%s" "%s" %s %.1fms', client,
                       combined_time(started), escape(request_line), status, size or "-",
                       escape(referer or "-"), escape(user_agent or "-"), request_id or "-",
                       elapsed * 1000.0, extra={"access": fields})


# ---------------------------------------------------------------------------- formatters

class _RequestIdFilter(logging.Filter):
    """Give every record a `request_id` (the thread's current request, or '-')."""

    def filter(self, record):
        if not hasattr(record, "request_id"):
            record.request_id = current_request_id() or "-"
        return True


class LineFormatter(logging.Formatter):
    """Text lines; access records are written bare, so the line stays Apache's format."""

    def __init__(self, fmt=TEXT_FORMAT):
        super().__init__(fmt)

    def format(self, record):
        if record.name == ACCESS_LOGGER:
            return record.getMessage()
        return super().format(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line; tracebacks go into an 'exception' field."""

    def format(self, record):
        access = getattr(record, "access", None)
        if access is not None:
            return json.dumps(_access_object(access), ensure_ascii=False)
        entry = {"time": _iso_time(record.created), "level": record.levelname,
                 "logger": record.name, "message": record.getMessage()}
        request_id = getattr(record, "request_id", "-")
        if request_id != "-":
            entry["request_id"] = request_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def _access_object(fields):
    method, target, protocol = (fields["request"].split(" ") + ["", "", ""])[:3]
    status = fields["status"]
    return {"time": _iso_time(fields["started"]), "type": "access",
            "remote_addr": fields["remote_addr"], "method": method, "path": target,
            "protocol": protocol, "status": int(status) if str(status).isdigit() else status,
            "bytes": fields["bytes"], "referer": fields["referer"],
            "user_agent": fields["user_agent"], "request_id": fields["request_id"],
            "duration_ms": fields["duration_ms"]}


def _iso_time(timestamp):
    local = time.localtime(timestamp)
    zone = time.strftime("%z", local)
    return "%s.%03d%s:%s" % (time.strftime("%Y-%m-%dT%H:%M:%S", local),
                             int(timestamp * 1000) % 1000, zone[:3], zone[3:])


# ---------------------------------------------------------------------------- setup

class _StderrHandler(logging.StreamHandler):
    """A StreamHandler on whatever sys.stderr is when a record is written."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass  # NOTE: always the current sys.stderr (it may be swapped, e.g. by pytest)


def install(level=logging.INFO, access_format="combined"):
    """Send webassets' logs to standard error: text lines, or JSON lines for 'json'.

    Returns a token for set_format() and uninstall(). The root logger gets the handler,
    so the logs of every module (and of libraries) come out the same way.
    """
    handler = _StderrHandler()
    handler.addFilter(_RequestIdFilter())
    token = handler, logging.getLogger("webassets").level
    set_format(token, access_format)
    logging.getLogger("webassets").setLevel(level)
    logging.getLogger().addHandler(handler)
    return token


def set_format(token, access_format):
    """Switch install()'s handler to 'combined' (text lines) or 'json' (JSON lines)."""
    token[0].setFormatter(JsonFormatter() if access_format == "json" else LineFormatter())


def uninstall(token):
    """Undo install() (for in-process callers such as tests)."""
    handler, previous = token
    logging.getLogger().removeHandler(handler)
    logging.getLogger("webassets").setLevel(previous)
