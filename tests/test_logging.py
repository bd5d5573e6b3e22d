"""Request ids, the access-log line in Apache combined and JSON form, and log setup."""

import http.client
import json
import logging
import re
import time

import pytest

from tests.fakes import running_server
from webassets import logutil

from .helpers import call

COMBINED = re.compile(r'(?P<host>\S+) - - \[(?P<time>[^\]]+)\] "(?P<request>(?:[^"\\]|\\.)*)" '
                      r'(?P<status>\d{3}) (?P<bytes>\d+|-) "(?P<referer>(?:[^"\\]|\\.)*)" '
                      r'"(?P<agent>(?:[^"\\]|\\.)*)" (?P<id>\S+) (?P<ms>[0-9.]+)ms\Z')


class Logs:
    """The CLI's log setup, installed for one test; lines() returns what reached stderr."""

    def __init__(self, capsys):
        self.capsys = capsys
        self.token = logutil.install(logging.INFO)

    def lines(self):
        return self.capsys.readouterr().err.splitlines()


@pytest.fixture
def logs(capsys):
    installed = Logs(capsys)
    try:
        yield installed
    finally:
        logutil.uninstall(installed.token)


# ---------------------------------------------------------------------------- request ids

@pytest.mark.parametrize("incoming, kept", [
    ("0f8fad5b-d9cb-469f-a165-70867728950e", True),
    ("req:42/a+b=c@d.e_f", True),
    ("x" * 200, True),
    ("x" * 201, False),
    ("two words", False),
    ('quote"d', False),
    ("line\nbreak", False),
    ("", False),
])
def test_incoming_request_id_is_kept_only_if_sane(incoming, kept):
    environ = {"HTTP_X_REQUEST_ID": incoming}
    request_id = logutil.assign_request_id(environ)
    assert (request_id == incoming) == kept
    assert kept or re.fullmatch(r"[0-9a-f]{16}", request_id)
    assert environ[logutil.REQUEST_ID_KEY] == request_id == logutil.current_request_id()
    logutil.clear_request_id()
    assert logutil.current_request_id() is None


def test_every_response_carries_the_request_id(app):
    echoed = call(app, "GET", "/nope", headers={"X-Request-Id": "trace-1"})
    assert echoed.status == 404 and echoed.header("X-Request-Id") == "trace-1"
    first, second = call(app, "GET", "/"), call(app, "GET", "/")
    assert first.header("X-Request-Id") != second.header("X-Request-Id")
    assert logutil.current_request_id() is None  # the thread's later lines are not the request's


def test_errors_are_logged_with_the_request_id_and_traceback_only_in_the_log(app, logs):

    class BrokenStore:
        def open(self, coll, name, kind=None, options=None):
            raise RuntimeError("disk on fire")

    app.store = BrokenStore()
    result = call(app, "GET", "/getmetadata", {"filename": "a.jpg", "coll": "x"},
                  headers={"X-Request-Id": "trace-500"})
    assert result.status == 500 and b"fire" not in result.body and b"Traceback" not in result.body
    lines = logs.lines()
    assert re.match(r"\S+ \S+ ERROR webassets.app \[trace-500\]: Unhandled error on GET "
                    r"/getmetadata", lines[0])
    assert "Traceback (most recent call last):" in lines and "RuntimeError: disk on fire" in lines


# ---------------------------------------------------------------------------- the access line

def test_combined_line_fields_and_escaping(caplog):
    caplog.set_level(logging.INFO, logger="webassets.access")
    started = 1700000000.25
    logutil.log_access("10.0.0.1", 'GET /a?b="c"\x1b[2J HTTP/1.1', 200, 1234,
                       "http://portal/", 'agent "x"', started, 0.0123, "abc123")
    logutil.log_access("10.0.0.1", "POST /fileupload HTTP/1.1", 403, 0, None, None, started,
                       0.5)
    first, second = [record.getMessage() for record in caplog.records]
    match = COMBINED.match(first)
    assert match, first
    assert match.group("time") == time.strftime("%d/%b/%Y:%H:%M:%S %z",
                                                time.localtime(started))
    assert match.group("request") == 'GET /a?b=\\"c\\"\\x1b[2J HTTP/1.1'
    assert (match.group("status"), match.group("bytes"), match.group("referer"),
            match.group("agent"), match.group("id"), match.group("ms")) == (
        "200", "1234", "http://portal/", 'agent \\"x\\"', "abc123", "12.3")
    assert second.endswith('"POST /fileupload HTTP/1.1" 403 - "-" "-" - 500.0ms')


def test_json_lines(logs):
    logutil.set_format(logs.token, "json")
    logutil.log_access("10.0.0.1", "GET /fileget?x=1 HTTP/1.1", 200, 10, None, "curl",
                       1700000000.5, 0.002, "rid-1")
    try:
        raise ValueError("bad value")
    except ValueError:
        logging.getLogger("webassets.app").exception("Unhandled error on %s", "GET /x")
    access, error = [json.loads(line) for line in logs.lines()]
    assert access["type"] == "access" and access["request_id"] == "rid-1"
    assert (access["method"], access["path"], access["protocol"], access["status"],
            access["bytes"], access["user_agent"], access["referer"], access["duration_ms"]) == (
        "GET", "/fileget?x=1", "HTTP/1.1", 200, 10, "curl", None, 2.0)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.500[+-]\d\d:\d\d", access["time"])
    assert error["level"] == "ERROR" and error["logger"] == "webassets.app"
    assert error["message"] == "Unhandled error on GET /x"
    assert "ValueError: bad value" in error["exception"]


def test_text_lines_keep_the_access_line_bare(logs):
    logutil.log_access("127.0.0.1", "GET / HTTP/1.1", 200, 9, None, None, time.time(), 0.001)
    logging.getLogger("webassets.app").warning("Disk nearly full")
    access, warning = logs.lines()
    assert COMBINED.match(access) and access.startswith("127.0.0.1 - - [")
    assert re.match(r"\d{4}-\d\d-\d\d [0-9:,]+ WARNING webassets.app \[-\]: Disk nearly full\Z",
                    warning)


def test_uninstall_restores_logging():
    package = logging.getLogger("webassets")
    before = (list(logging.getLogger().handlers), package.level)
    logutil.uninstall(logutil.install(logging.DEBUG, "json"))
    assert (list(logging.getLogger().handlers), package.level) == before


# ---------------------------------------------------------------------------- through the server

def test_server_access_line_has_the_apps_request_id(app, caplog):
    caplog.set_level(logging.INFO, logger="webassets.access")
    with running_server(app, workers=2) as server:
        connection = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=10)
        server.test_clients.append(connection)
        connection.request("GET", "/healthz", headers={"X-Request-Id": "lb-7", "Referer": "r"})
        response = connection.getresponse()
        response.read()
        connection.request("GET", "/healthz")
        second = connection.getresponse()
        second.read()
        deadline = time.monotonic() + 10
        while len(caplog.records) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert response.getheader("X-Request-Id") == "lb-7"
    lines = [record.getMessage() for record in caplog.records if record.name == "webassets.access"]
    first = COMBINED.match(lines[0])
    assert first and first.group("id") == "lb-7" and first.group("referer") == "r"
    assert first.group("request") == "GET /healthz HTTP/1.1" and first.group("bytes") == "3"
    assert COMBINED.match(lines[1]).group("id") == second.getheader("X-Request-Id")
    assert json.loads(logutil.JsonFormatter().format(caplog.records[0]))["request_id"] == "lb-7"
