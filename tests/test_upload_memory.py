"""A 1 GiB upload through the real built-in server keeps the server's RSS flat."""

import http.client
import os
import subprocess
import sys
import textwrap

import pytest

from tests.helpers import SP7_BOUNDARY, token

GIB = 1024 ** 3
RSS_BUDGET = 32 * 1024 * 1024
BLOCK = os.urandom(1024 * 1024)

SERVER_SCRIPT = textwrap.dedent("""
    import sys
    from webassets import config
    from webassets.app import create_app
    from webassets.server import make_server
    settings = config.from_mapping({"KEY": "test_attachment_key", "BASE_DIR": sys.argv[1]})
    server = make_server(create_app(settings), "127.0.0.1", 0, workers=4, timeout=60)
    sys.stdout.write("%d\\n" % server.server_port)
    sys.stdout.flush()
    server.serve_forever()
""")


def _status_kib(pid, field):
    with open("/proc/%d/status" % pid) as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise LookupError(field)


@pytest.fixture
def server_process(tmp_path):
    process = subprocess.Popen([sys.executable, "-c", SERVER_SCRIPT, str(tmp_path)],
                               stdout=subprocess.PIPE, cwd=os.path.dirname(os.path.dirname(__file__)))
    try:
        port = int(process.stdout.readline())
        yield process, port
    finally:
        process.terminate()
        process.wait(timeout=30)
        process.stdout.close()


def _multipart_parts(store):
    head = ("--%s\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.bin\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n" % SP7_BOUNDARY).encode("ascii")
    fields = [("token", token(store)), ("store", store), ("type", "O"), ("coll", "C")]
    tail = b"".join(("\r\n--%s\r\nContent-Disposition: form-data; name=\"%s\"\r\n\r\n%s" % (
        SP7_BOUNDARY, name, value)).encode("utf-8") for name, value in fields)
    tail += ("\r\n--%s--\r\n" % SP7_BOUNDARY).encode("ascii")
    return head, tail


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc for RSS")
def test_1gib_upload_keeps_rss_flat(server_process, tmp_path):
    process, port = server_process
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    connection.request("GET", "/")  # warm up: imports, first thread
    connection.getresponse().read()
    baseline = _status_kib(process.pid, "VmRSS")
    head, tail = _multipart_parts("big.bin")
    connection.putrequest("POST", "/fileupload")
    connection.putheader("Content-Type", "multipart/form-data; boundary=" + SP7_BOUNDARY)
    connection.putheader("Content-Length", str(len(head) + GIB + len(tail)))
    connection.endheaders()
    connection.send(head)
    for _ in range(GIB // len(BLOCK)):
        connection.send(BLOCK)
    connection.send(tail)
    response = connection.getresponse()
    assert (response.status, response.read()) == (200, b"Ok.")
    growth = _status_kib(process.pid, "VmHWM") - baseline
    stored = tmp_path / "originals" / "big.bin"
    assert stored.stat().st_size == GIB
    stored.unlink()
    print("RSS growth over a 1 GiB upload: %.1f MiB" % (growth / 1024 / 1024))
    assert growth <= RSS_BUDGET
