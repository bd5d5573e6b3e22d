"""Tests of the multi-process built-in server: supervision, cross-process single flight, metrics."""

import http.client
import json
import os
import select
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tests.fakes import free_port, png_bytes
from webassets import metrics

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork (POSIX)")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WAIT = 10.0  # upper bound for anything that should happen promptly

# A server of 2 worker processes; each worker says "worker <pid>" once it serves.
SERVE_SCRIPT = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, sys.argv[1])
    from webassets.server import serve

    def say(text):  # one write(2) per line: the workers share this pipe
        os.write(1, (text + "\\n").encode())

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/slow":
            say("in-flight")
            time.sleep(0.5)
        body = str(os.getpid()).encode()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]

    def on_fork():
        say("worker %d" % os.getpid())
        time.sleep(float(os.environ.get("SLOW_FORK", "0")))  # widens the start-up window

    serve(app, "127.0.0.1", 0, workers=2, timeout=5, processes=2, on_fork=on_fork,
          ready=lambda server: say("port %d" % server.server_port))
""")


class Child:
    """A subprocess whose stdout lines the test reads with a timeout; killed on exit."""

    def __init__(self, argv, **kwargs):
        self.proc = subprocess.Popen(argv, bufsize=0, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, **kwargs)

    def line(self):
        assert select.select([self.proc.stdout], [], [], WAIT)[0], "no output from the child"
        return self.proc.stdout.readline().decode().strip()

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        self.proc.stderr.close()


@pytest.fixture
def server():
    child = Child([sys.executable, "-c", SERVE_SCRIPT, ROOT])
    try:
        lines = [child.line() for _ in range(3)]  # the port, then both workers, in any order
        child.port = int(next(line for line in lines if line.startswith("port")).split()[1])
        child.workers = {int(line.split()[1]) for line in lines if line.startswith("worker")}
        assert len(child.workers) == 2, lines
        yield child
    finally:
        child.close()


def get(port, path="/"):
    """GET on a new connection; return (status, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_sigterm_while_workers_start_is_not_lost():
    """A stop that reaches a worker before its draining handler is installed still stops it."""
    child = Child([sys.executable, "-c", SERVE_SCRIPT, ROOT], env=dict(os.environ, SLOW_FORK="3"))
    try:
        lines = [child.line() for _ in range(3)]  # the port and both workers, still starting
        assert sum(line.startswith("worker") for line in lines) == 2, lines
        child.proc.send_signal(signal.SIGTERM)
        assert child.proc.wait(WAIT) == 0
    finally:
        child.close()


def test_workers_serve_the_shared_port_and_a_killed_worker_is_replaced(server):
    answers = {int(get(server.port)[1]) for _ in range(4)}
    assert answers <= server.workers and server.proc.pid not in answers
    victim = answers.pop()
    os.kill(victim, signal.SIGKILL)
    replacement = server.line()
    assert replacement.startswith("worker") and int(replacement.split()[1]) not in server.workers
    assert get(server.port)[0] == 200
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(WAIT) == 0
    assert b"killed by signal 9" in server.proc.stderr.read()


def test_sigterm_drains_in_flight_requests_in_every_worker_and_exits_0(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=WAIT)
    try:
        conn.request("GET", "/slow")
        assert server.line() == "in-flight"
        server.proc.send_signal(signal.SIGTERM)
        response = conn.getresponse()
        assert (response.status, int(response.read())) in [(200, pid) for pid in server.workers]
    finally:
        conn.close()
    assert server.proc.wait(WAIT) == 0
    stderr = server.proc.stderr.read()
    assert b"Traceback" not in stderr and b"restarting" not in stderr


def test_processes_must_be_positive():
    from webassets.server import serve
    with pytest.raises(ValueError):
        serve(lambda environ, start_response: [], "127.0.0.1", 0, processes=0)


# ---------------------------------------------------------------- single flight across processes

# Runs `threads` concurrent first requests for one thumbnail through a Thumbnailer whose fake
# renderer logs each call to a file (O_APPEND), then waits a little and writes a PNG.
FLIGHT_SCRIPT = textwrap.dedent("""
    import os, sys, threading, time
    sys.path.insert(0, sys.argv[1])
    from tests.fakes import FakeRenderer, fake_thumbnailer
    base, threads, go = sys.argv[2], int(sys.argv[3]), float(sys.argv[4])

    class LoggedRenderer(FakeRenderer):
        def render(self, job):
            with open(os.path.join(base, "calls.log"), "a") as log:
                log.write("%d\\n" % os.getpid())
            super().render(job)

    engine = fake_thumbnailer(LoggedRenderer(delay=0.3), formats=("PNG",),
                              lock_dir=os.path.join(base, ".locks"))
    engine.formats()
    source = os.path.join(base, "originals", "a.png")
    target = os.path.join(base, "thumbnails", "a_10.png")
    errors = []

    def request():
        try:
            engine.thumbnail(source, target, 10)
        except Exception as ex:
            errors.append(ex)

    workers = [threading.Thread(target=request) for _ in range(threads)]
    time.sleep(max(0.0, go - time.time()))  # both processes start at the same moment
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    print("errors", len(errors), flush=True)
""")


def test_single_flight_holds_across_processes(tmp_path):
    originals = tmp_path / "originals"
    originals.mkdir()
    (originals / "a.png").write_bytes(png_bytes(20, 20))
    go = time.time() + 1.0  # both interpreters are up by then
    children = [Child([sys.executable, "-c", FLIGHT_SCRIPT, ROOT, str(tmp_path), "16", str(go)])
                for _ in range(2)]
    try:
        assert [child.line() for child in children] == ["errors 0", "errors 0"]
    finally:
        for child in children:
            child.close()
    assert len((tmp_path / "calls.log").read_text().split()) == 1
    assert (tmp_path / "thumbnails" / "a_10.png").exists()
    assert len(os.listdir(str(tmp_path / ".locks"))) == 1  # one stripe file, nothing per image


# ---------------------------------------------------------------- metrics across processes

def test_metrics_sum_the_snapshots_of_every_process(tmp_path):
    other = metrics.Metrics()
    other.observe_request("/fileget", 200, 0.002, 0, 100)
    other.observe_thumbnail(True)
    other.enter("/fileupload")
    snapshot = other.snapshot()
    (tmp_path / "1.json").write_text(json.dumps(snapshot))
    stale = dict(snapshot, time=snapshot["time"] - 60)  # a worker that died a minute ago
    (tmp_path / "2.json").write_text(json.dumps(stale))
    here = metrics.Metrics()
    here.share(str(tmp_path), interval=3600)
    here.observe_request("/fileget", 200, 0.002, 0, 50)
    text = here.render()
    assert 'webassets_requests_total{endpoint="/fileget",status="200"} 3\n' in text
    assert "webassets_response_bytes_total 250\n" in text
    assert 'webassets_request_duration_seconds_count{endpoint="/fileget"} 3\n' in text
    assert 'webassets_thumbnail_requests_total{result="hit"} 2\n' in text
    # Gauges count only live processes: the stale snapshot's upload in progress is gone.
    assert "webassets_uploads_in_progress 1\n" in text
    assert (tmp_path / ("%d.json" % os.getpid())).exists()


def test_serve_command_reports_every_process_in_metrics(tmp_path):
    settings = tmp_path / "settings.py"
    settings.write_text("BASE_DIR = %r\nKEY = None\nPROCESSES = 2\nWORKERS = 2\n"
                        % str(tmp_path / "store"))
    port = free_port()
    child = Child([sys.executable, "-m", "webassets", "serve", "--settings", str(settings),
                   "--host", "127.0.0.1", "--port", str(port)], cwd=ROOT,
                  env=dict(os.environ, PYTHONPATH=ROOT))
    try:
        deadline = time.monotonic() + WAIT
        while True:
            try:
                get(port, "/healthz")
                break
            except OSError:
                assert time.monotonic() < deadline, child.proc.stderr.read()
                time.sleep(0.05)
        for _ in range(9):
            assert get(port, "/healthz")[0] == 200
        time.sleep(metrics.PUBLISH_INTERVAL + 0.2)  # every worker has published since
        text = get(port, "/metrics")[1].decode()
        assert 'webassets_requests_total{endpoint="/healthz",status="200"} 10\n' in text
        child.proc.send_signal(signal.SIGTERM)
        assert child.proc.wait(WAIT) == 0
    finally:
        child.close()
