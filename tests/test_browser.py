"""Stored HTML, XHTML, SVG and XML run no script in a real Chromium; JPEG and PDF still show."""

import base64
import fcntl
import http.client
import json
import logging
import math
import os
import select
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, HTTPServer
from socketserver import ThreadingMixIn
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest

from tests.fakes import free_port
from tests.helpers import COLL, sp7_upload, token
from webassets import samples

logger = logging.getLogger(__name__)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# As root and without a display: the flags the brief of issue 9 lists, plus a pipe to drive it.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-popup-blocking",
                  "--window-size=1000,700", "--remote-debugging-pipe"]
WAIT = 20.0  # seconds: generous bounds for starting servers and loading pages
SETTLE = 0.5  # seconds after every page has loaded for a late script to report

# Chromium's debugging pipe: it reads commands on fd 3 and writes answers on fd 4.
CDP_IN, CDP_OUT = 3, 4

# The asset server, run by its command line; "open" switches the policy off: the
# positive control, which must see every script run, or the negative checks prove nothing.
SERVE_SCRIPT = r"""
import sys
from webassets import __main__ as cli, app as app_module, httputil

settings_path, mode, viewer_path = sys.argv[1:4]
if mode == "open":
    httputil.security_headers = lambda content_type: []


class WithViewer:
    # The test's stand-in for Specify 7's attachment viewer, served from the asset
    # server's own origin (as when Specify 7's nginx fronts both): unprotected on purpose.

    def __init__(self, app):
        self.app = app

    def __getattr__(self, name):
        return getattr(self.app, name)

    def __call__(self, environ, start_response):
        if environ.get("PATH_INFO") != "/__viewer__":
            return self.app(environ, start_response)
        with open(viewer_path, "rb") as handle:
            body = handle.read()
        start_response("200 OK", [("Content-Type", "text/html; charset=utf-8"),
                                  ("Content-Length", str(len(body)))])
        return [body]


real_create_app = app_module.create_app
app_module.create_app = lambda *args, **kwargs: WithViewer(real_create_app(*args, **kwargs))
sys.exit(cli.main(["serve", "--settings", settings_path]))
"""

# Each script navigates its own frame to the beacon: navigation is the one way out that
# neither the sandbox nor default-src 'none' blocks, so any script that runs is seen.
# No '&' or '<': the same text must be well-formed XML in XHTML, SVG and XML.
SCRIPT = ("location.replace('%(beacon)s/hit?' + location.search.slice(1) + "
          "String.fromCharCode(38) + 'origin=' + encodeURIComponent(self.origin))")
ACTIVE = {
    "page.html": "<!doctype html><title>page</title><p>notes</p><script>%s</script>",
    "page.xhtml": ('<?xml version="1.0"?><html xmlns="http://www.w3.org/1999/xhtml"><head>'
                   '<title>page</title></head><body><p>notes</p><script>%s</script></body>'
                   '</html>'),
    "drawing.svg": ('<svg xmlns="http://www.w3.org/2000/svg" width="40" height="40">'
                    '<rect width="40" height="40" fill="#0a0"/><script>%s</script></svg>'),
    "data.xml": ('<?xml version="1.0"?><specimens><specimen>1</specimen>'
                 '<script xmlns="http://www.w3.org/1999/xhtml">%s</script></specimens>'),
}
JPEG, PDF, WAV = "photo.jpg", "scan.pdf", "call.wav"
PDF_BLUE = (0, 0, 255)  # the fill of samples.pdf(); the JPEG's gradient never reaches it
VIEWER_SIZE = (240, 160)  # each <object>'s box, like Specify 7's viewer pane (smaller)


def wav(rate=8000, seconds=0.5):
    """Return a mono 16-bit PCM WAV of a 440 Hz tone."""
    frames = b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * i / rate)))
                      for i in range(int(rate * seconds)))
    fmt = struct.pack("<HHIIHH", 1, 1, rate, 2 * rate, 2, 16)
    return (b"RIFF" + struct.pack("<I", 20 + len(fmt) + len(frames)) + b"WAVEfmt "
            + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(frames))
            + frames)


def require_chromium():
    if os.environ.get("WEBASSETS_DEPLOY_TESTS") == "0":
        pytest.skip("bin/test drives Chromium with its first Python only")
    if CHROMIUM is None:
        message = "Chromium is not installed (Debian: apt-get install chromium; bin/test does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


# --------------------------------------------------------------------------- other origin

class _Threading(ThreadingMixIn, HTTPServer):
    daemon_threads = True


class OtherOrigin:
    """A second origin on 127.0.0.1: the beacon scripts report to, and viewer pages."""

    def __init__(self):
        self.hits = []
        self.pages = {}
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                url = urlsplit(self.path)
                if url.path == "/hit":
                    with outer.lock:
                        outer.hits.append(dict(parse_qsl(url.query)))
                body = outer.pages.get(url.path, b"")
                self.send_response(200 if body or url.path == "/hit" else 404)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = _Threading(("127.0.0.1", 0), Handler)
        self.base = "http://127.0.0.1:%d" % self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def hit_list(self):
        with self.lock:
            return list(self.hits)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


# --------------------------------------------------------------------------- asset servers

class AssetServer:
    """`python -m webassets serve` (through SERVE_SCRIPT) on a fresh store; stop() ends it."""

    def __init__(self, root, mode, viewer_html):
        self.mode = mode
        os.makedirs(root)
        store = os.path.join(root, "store")
        os.makedirs(store)
        self.port = free_port()
        self.base = "http://127.0.0.1:%d" % self.port
        settings = os.path.join(root, "settings.py")
        viewer = os.path.join(root, "viewer.html")
        with open(settings, "w") as handle:
            handle.write("KEY = 'browser-key'\nBASE_DIR = %r\nBIND_ADDRESS = '127.0.0.1'\n"
                         "PORT = %d\nPROCESSES = 1\nWORKERS = 16\n" % (store, self.port))
        with open(viewer, "wb") as handle:
            handle.write(viewer_html(""))  # same origin: relative URLs
        self.log = open(os.path.join(root, "server.log"), "wb")
        self.proc = subprocess.Popen([sys.executable, "-c", SERVE_SCRIPT, settings, mode, viewer],
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        self.key = "browser-key"

    def wait(self):
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        with open(self.log.name, "rb") as handle:
            raise RuntimeError("the %s server did not start:\n%s"
                               % (self.mode, handle.read()[-3000:].decode("utf-8", "replace")))

    def upload(self, name, content):
        body, headers = sp7_upload(name, content, token(name, key=self.key), file_name=name,
                                   file_type="application/octet-stream")
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=WAIT)
        try:
            conn.request("POST", "/fileupload", body=body, headers=headers)
            response = conn.getresponse()
            assert (response.status, response.read()) == (200, b"Ok."), name
        finally:
            conn.close()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def fileget(name, where, base=""):
    """Specify 7's original URL (with downloadname) plus `ctx`, which the server ignores."""
    return base + "/fileget?" + urlencode([("coll", COLL), ("type", "O"), ("filename", name),
                                           ("downloadname", name), ("ctx", where)])


def viewer_page(where):
    """Return a function of the asset base URL giving Specify 7's viewer, mimicked.

    Non-image originals go in <object data type>, images in <img>; each object's
    fallback is a magenta box that shows only when the object shows nothing.
    """
    def render(base):
        width, height = VIEWER_SIZE
        cells = []
        for name in sorted(ACTIVE) + [JPEG, PDF]:
            cells.append(
                '<object id="%s" data="%s" width="%d" height="%d">'
                '<div class="fallback" style="width:%dpx;height:%dpx;background:#f0f"></div>'
                '</object>' % (name, fileget(name, where, base), width, height, width, height))
        for name in (JPEG, "drawing.svg"):
            cells.append('<img id="img-%s" src="%s">' % (name, fileget(name, where, base)))
        return ("<!doctype html><html><body style='margin:0;background:#fff'>%s</body></html>"
                % "".join(cells)).encode("utf-8")
    return render


# --------------------------------------------------------------------------- Chromium

class Chromium:
    """A headless Chromium driven over its DevTools pipe (JSON messages ending in NUL)."""

    def __init__(self, profile):
        commands, self._commands = os.pipe()
        self._answers, answers = os.pipe()

        def onto_fds_3_and_4():
            # Out of the way first: a pipe end may itself be fd 3 or 4.
            high_in = fcntl.fcntl(commands, fcntl.F_DUPFD, 10)
            high_out = fcntl.fcntl(answers, fcntl.F_DUPFD, 10)
            os.dup2(high_in, CDP_IN)
            os.dup2(high_out, CDP_OUT)

        self.log = open(os.path.join(profile, "chromium.log"), "wb")
        self.proc = subprocess.Popen(
            [CHROMIUM] + CHROMIUM_FLAGS + ["--user-data-dir=" + os.path.join(profile, "profile"),
                                           "about:blank"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
            preexec_fn=onto_fds_3_and_4, close_fds=False, start_new_session=True)
        os.close(commands)
        os.close(answers)
        self._buffer = b""
        self._last_id = 0
        self.events = []

    def send(self, method, session=None, **params):
        """Send one command; return its id (answers arrive through wait())."""
        self._last_id += 1
        message = {"id": self._last_id, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode("utf-8") + b"\0")
        return self._last_id

    def wait(self, ids):
        """Return the results of the commands `ids`, in order; RuntimeError on an error."""
        answers = {}
        deadline = time.monotonic() + WAIT
        while not all(ident in answers for ident in ids):
            message = self._receive(deadline)
            if message.get("id") in ids:
                answers[message["id"]] = message
            else:
                self.events.append(message)
        for answer in answers.values():
            if "error" in answer:
                raise RuntimeError("command %d: %s" % (answer["id"], answer["error"]))
        return [answers[ident]["result"] for ident in ids]

    def call(self, method, session=None, **params):
        """Send one command and return its result."""
        return self.wait([self.send(method, session, **params)])[0]

    def pump(self, seconds):
        """Collect events for up to `seconds`."""
        deadline = time.monotonic() + seconds
        try:
            while True:
                self.events.append(self._receive(deadline))
        except TimeoutError:
            pass

    def _receive(self, deadline):
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._answers], [], [], left)[0]:
                raise TimeoutError("no message from Chromium")
            chunk = os.read(self._answers, 1 << 20)
            if not chunk:
                raise EOFError("Chromium exited")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message.decode("utf-8"))

    def open(self, urls):
        """Open each URL in a new tab, as "Open in new tab" would; return their sessions.

        The commands of all tabs go out together: the pages load side by side.
        """
        targets = self.wait([self.send("Target.createTarget", url="about:blank")
                             for _ in urls])
        sessions = [result["sessionId"] for result in self.wait(
            [self.send("Target.attachToTarget", targetId=target["targetId"], flatten=True)
             for target in targets])]
        self.wait([self.send("Page.enable", session=session) for session in sessions])
        self.wait([self.send("Page.navigate", session=session, url=url)
                   for session, url in zip(sessions, urls)])
        return sessions

    def loaded(self, session):
        return any(event.get("method") == "Page.loadEventFired"
                   and event.get("sessionId") == session for event in self.events)

    def evaluate(self, session, expression):
        result = self.call("Runtime.evaluate", session=session, expression=expression,
                           returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError("%s: %s" % (expression, result["exceptionDetails"]))
        return result["result"].get("value")

    def screenshot(self, session, box=None, scale=1.0):
        """Return the pixels of the tab (or of a {left, top, width, height} box) as RGB rows."""
        self.call("Page.bringToFront", session=session)
        params = {}
        if box is not None:
            params["clip"] = {"x": box["left"], "y": box["top"], "width": box["width"],
                              "height": box["height"], "scale": scale}
        data = self.call("Page.captureScreenshot", session=session, format="png",
                         **params)["data"]
        return read_png(base64.b64decode(data))

    def close(self):
        try:
            self.call("Browser.close")
        except (RuntimeError, TimeoutError, EOFError, OSError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            self.proc.wait()
        os.close(self._commands)
        os.close(self._answers)
        self.log.close()


def read_png(data):
    """Decode an 8-bit RGB or RGBA non-interlaced PNG (Chromium's screenshots) to RGB rows."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    position, compressed = 8, b""
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        chunk = data[position + 8:position + 8 + length]
        if kind == b"IHDR":
            width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", chunk)
            assert depth == 8 and color in (2, 6) and not interlace, (depth, color, interlace)
        elif kind == b"IDAT":
            compressed += chunk
        position += 12 + length
    step = 3 if color == 2 else 4
    stride = width * step
    raw = zlib.decompress(compressed)
    rows, previous = [], bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        for i in range(stride):
            left = line[i - step] if i >= step else 0
            up = previous[i]
            corner = previous[i - step] if i >= step else 0
            if kind == 1:
                line[i] = (line[i] + left) & 255
            elif kind == 2:
                line[i] = (line[i] + up) & 255
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 255
            elif kind == 4:
                guess = left + up - corner
                near = min((abs(guess - left), 0, left), (abs(guess - up), 1, up),
                           (abs(guess - corner), 2, corner))[2]
                line[i] = (line[i] + near) & 255
        rows.append([tuple(line[x:x + 3]) for x in range(0, stride, step)])
        previous = line
    return rows


# --------------------------------------------------------------------------- the test

@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Both asset servers (protected and open) with the files uploaded, and the other origin."""
    require_chromium()
    root = tmp_path_factory.mktemp("browser")
    other = OtherOrigin()
    servers = {mode: AssetServer(str(root / mode), mode, viewer_page("same"))
               for mode in ("protected", "open")}
    try:
        files = {name: (text % (SCRIPT % {"beacon": other.base})).encode("utf-8")
                 for name, text in ACTIVE.items()}
        files[JPEG] = samples.sample("jpeg")[1]
        files[PDF] = samples.pdf()
        files[WAV] = wav()
        for mode, server in servers.items():
            server.wait()
            for name, content in files.items():
                server.upload(name, content)
            other.pages["/viewer-" + mode] = viewer_page("cross")(server.base)
        yield root, other, servers
    finally:
        for server in servers.values():
            server.stop()
        other.close()


def test_no_stored_script_runs_and_media_still_display(world):
    root, other, servers = world
    started = time.monotonic()
    browser = Chromium(str(root))
    try:
        urls = {}
        for mode, server in servers.items():
            for name in sorted(ACTIVE) + [JPEG, PDF, WAV]:
                urls[mode, "direct", name] = fileget(name, "direct", server.base)
            urls[mode, "viewer", "same"] = server.base + "/__viewer__"
            urls[mode, "viewer", "cross"] = other.base + "/viewer-" + mode
        tabs = dict(zip(urls, browser.open(list(urls.values()))))
        deadline = time.monotonic() + WAIT
        expected_open = {(name, where) for name in ACTIVE for where in ("direct", "same", "cross")}
        while time.monotonic() < deadline:
            browser.pump(0.1)
            ran = {(hit["filename"], hit["ctx"]) for hit in other.hit_list()}
            # The control's pages may never finish: their scripts navigate them away.
            if ran >= expected_open and all(browser.loaded(session) for key, session
                                            in tabs.items() if key[0] == "protected"):
                break
        browser.pump(SETTLE)
        hits = other.hit_list()
        loaded = time.monotonic() - started

        # The control: with the policy off, every script ran, on the asset server's origin.
        open_hits = [hit for hit in hits if hit.get("origin") == servers["open"].base]
        assert {(hit["filename"], hit["ctx"]) for hit in open_hits} == expected_open, hits
        # With it on, none did: not opened, not in <object> on either origin.
        assert len(open_hits) == len(hits), [hit for hit in hits if hit not in open_hits]

        for name in ACTIVE:
            # The file did arrive, script and all: it was shown, and its script did not run.
            source = browser.evaluate(tabs["protected", "direct", name],
                                      "document.documentElement.outerHTML")
            assert "location.replace" in source, (name, source)
        checks = check_display(browser, tabs)
        logger.info("Chromium: %d tabs loaded in %.1f s, display checked in %.1f s; %s",
                    len(tabs), loaded, time.monotonic() - started - loaded, checks)
    finally:
        browser.close()


def check_display(browser, tabs):
    """Assert that the JPEG and PDF show opened and in both viewers, and that the WAV plays
    opened; return what was seen."""
    seen = {}
    direct_jpeg = tabs["protected", "direct", JPEG]
    # Chromium's image document: one <img> of the file itself.
    seen["jpeg opened"] = browser.evaluate(direct_jpeg, "document.images[0].naturalWidth")
    assert seen["jpeg opened"] == 16
    # The viewer's first page, at the top of the tab (half scale: fewer pixels to decode).
    seen["wav opened"] = wait_for_media(browser, tabs["protected", "direct", WAV])
    seen["pdf opened"] = wait_for_blue(browser, tabs["protected", "direct", PDF],
                                       {"left": 0, "top": 0, "width": 1000, "height": 300}, 0.5)
    for where in ("same", "cross"):
        session = tabs["protected", "viewer", where]
        for name in (JPEG, "drawing.svg"):
            width = browser.evaluate(
                session, "document.getElementById('img-%s').naturalWidth" % name)
            assert width > 0, (where, name)
        boxes = browser.evaluate(session, """(() => {
            const out = {};
            for (const element of document.querySelectorAll('object')) {
                const box = element.getBoundingClientRect();
                out[element.id] = {left: box.left, top: box.top, width: box.width,
                                   height: box.height, fallback: element.querySelector(
                                       '.fallback').getBoundingClientRect().width > 0};
            }
            return out;
        })()""")
        # An object that shows its file never renders its fallback (the magenta box): the
        # active files too are shown (sandboxed), as Specify 7's users expect.
        assert not any(box["fallback"] for box in boxes.values()), (where, boxes)
        jpeg = wait_for_gradient(browser, session, boxes[JPEG])
        # The sample is a red-to-blue gradient: both ends are on screen, magenta is not.
        assert any(r > 200 and b < 60 for r, g, b in jpeg), where
        assert any(b > 200 and r < 60 for r, g, b in jpeg), where
        assert (255, 0, 255) not in jpeg, where
        seen["pdf in %s-origin viewer" % where] = wait_for_blue(browser, session, boxes[PDF])
    return seen


def wait_for_media(browser, session):
    """Wait until the media document's player has the sound's duration; return it."""
    browser.call("Page.bringToFront", session=session)  # background tabs defer media loads
    deadline = time.monotonic() + WAIT
    while True:
        duration = browser.evaluate(session, "document.querySelector('video').duration")
        if duration or time.monotonic() > deadline:
            assert duration == 0.5, "the WAV did not load in its tab (%r)" % (duration,)
            return duration
        time.sleep(0.1)


def wait_for_gradient(browser, session, box):
    """Return the box's pixels once the JPEG's red end is painted (a busy machine paints late)."""
    deadline = time.monotonic() + WAIT
    while True:
        pixels = [pixel for row in browser.screenshot(session, box) for pixel in row]
        if any(r > 200 and b < 60 for r, g, b in pixels) or time.monotonic() > deadline:
            return pixels
        time.sleep(0.1)


def wait_for_blue(browser, session, box, scale=1.0):
    """Wait until the PDF's blue fills 2% of the box; return that share (the PDF renders late)."""
    deadline = time.monotonic() + WAIT
    while True:
        pixels = [pixel for row in browser.screenshot(session, box, scale) for pixel in row]
        share = pixels.count(PDF_BLUE) / float(len(pixels))
        if share > 0.02 or time.monotonic() > deadline:
            assert share > 0.02, "the PDF did not show (%.1f%% blue)" % (100 * share)
            return round(share, 2)
        time.sleep(0.1)
