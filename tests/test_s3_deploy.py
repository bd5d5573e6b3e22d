"""A real `webassets serve` on a bucket: both lifecycles, 1 GiB in flat memory, a killed upload."""

import hashlib
import http.client
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid

import pytest

from tests import deploy_util
from tests.helpers import sp6_upload, sp7_upload, token
from tests.lifecycle import HTTPClient, sp6_lifecycle, sp7_lifecycle

needs_deploy = deploy_util.needs_deploy
pytestmark = [needs_deploy,
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")]

GIB = 1024 ** 3
BLOCK = 1024 * 1024
RSS_BUDGET = 64 * 1024 * 1024
PART = 5 * 1024 * 1024  # S3_PART_SIZE of the kill test: a part is uploaded early


class Served:
    """`webassets serve` (one process) on a fresh prefix of a bucket of `server`."""

    def __init__(self, server, **settings):
        self.server = server
        self.bucket = server.new_bucket("deploy")
        self.prefix = "wa-%s/" % uuid.uuid4().hex[:8]
        self.client = server.client(self.bucket)
        self.root = deploy_util.make_root()
        self.port = deploy_util.free_port()
        self.base = "http://127.0.0.1:%d" % self.port
        text = deploy_util.settings_text(
            self.root + "/unused", STORAGE="s3", S3_BUCKET=self.bucket, S3_PREFIX=self.prefix,
            S3_ENDPOINT=server.endpoint, S3_REGION=server.region, S3_ACCESS_KEY=server.access_key,
            S3_SECRET_KEY=server.secret_key, S3_ADDRESSING="path", PROCESSES=1,
            PUBLIC_URL=self.base, **settings)
        self.process = deploy_util.start_webassets(self.root, text, self.port)

    def key(self, name):
        return self.prefix + "originals/" + name

    def status(self, field):
        """Return a /proc/<pid>/status size field of the server (VmRSS, VmHWM) in bytes."""
        with open("/proc/%d/status" % self.process.popen.pid) as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        raise LookupError(field)

    def stop(self, signum=signal.SIGTERM):
        self.process.stop(signum)
        deploy_util.remove_root(self.root)


@pytest.fixture
def served():
    """Start `webassets serve` on the S3 server the test names; stop it after."""
    started = []

    def start(server, **settings):
        started.append(Served(server, **settings))
        return started[-1]

    yield start
    for each in started:
        each.stop()


@pytest.fixture(scope="module")
def jpeg():
    convert = shutil.which("magick") or shutil.which("convert")
    if convert is None:
        pytest.skip("ImageMagick is not installed: no thumbnails")
    return subprocess.check_output([convert, "-size", "320x240", "gradient:red-blue", "jpeg:-"])


def test_lifecycles_through_serve(served, s3_server, jpeg):
    service = served(s3_server)
    client = HTTPClient(service.base)
    sp7_lifecycle(client, jpeg, public_base=service.base)
    sp6_lifecycle(client, jpeg, public_base=service.base)
    assert list(service.client.list(service.prefix + "originals/")) == []


def test_1gib_upload_and_download_in_flat_memory(served, seaweedfs):
    service = served(seaweedfs)
    connection = http.client.HTTPConnection("127.0.0.1", service.port, timeout=300)
    connection.request("GET", "/")  # warm up: imports, first thread
    connection.getresponse().read()
    baseline = service.status("VmRSS")
    block = os.urandom(BLOCK)
    chunks, headers, expected = deploy_util.streamed_sp7_upload(
        "big.bin", token("big.bin"), block, GIB // BLOCK)
    connection.putrequest("POST", "/fileupload")
    for name, value in headers.items():
        connection.putheader(name, value)
    connection.endheaders()
    for chunk in chunks:  # made while sent: the 1 GiB is never on our disk
        connection.send(chunk)
    response = connection.getresponse()
    assert (response.status, response.read()) == (200, b"Ok.")
    connection.request("GET", "/fileget?coll=C&type=O&filename=big.bin")
    response = connection.getresponse()
    assert (response.status, response.getheader("Content-Length")) == (200, str(GIB))
    digest = hashlib.sha256()
    while True:
        data = response.read(BLOCK)
        if not data:
            break
        digest.update(data)
    growth = service.status("VmHWM") - baseline
    service.client.delete(service.key("big.bin"))  # the server's copy goes at once too
    print("1 GiB through webassets on SeaweedFS: RSS growth %.1f MiB (budget %d MiB)"
          % (growth / 1024 ** 2, RSS_BUDGET // 1024 ** 2))
    assert digest.hexdigest() == expected
    assert growth <= RSS_BUDGET


@pytest.mark.parametrize("layout", ["sp6", "sp7", "sp7-spooled"])
def test_killed_mid_upload_leaves_the_previous_version(served, seaweedfs, layout, tmp_path):
    # Specify 7's file part goes to a temporary key (S3_SPOOL_DIR None) or waits on disk.
    spool = tmp_path / "spool"
    spool.mkdir()
    service = served(seaweedfs, S3_PART_SIZE=PART,
                     S3_SPOOL_DIR=str(spool) if layout == "sp7-spooled" else None)
    client = HTTPClient(service.base)
    name = "sp61234.att.jpg"
    body, headers = sp6_upload(name, b"previous", token(name))
    assert client.request("POST", "/fileupload", body=body, headers=headers).status == 200
    upload = sp6_upload if layout == "sp6" else sp7_upload
    spooled = layout == "sp7-spooled"
    body, headers = upload(name, os.urandom(3 * PART), token(name))
    connection = http.client.HTTPConnection("127.0.0.1", service.port, timeout=60)
    connection.putrequest("POST", "/fileupload")
    for header, value in dict(headers, **{"Content-Length": str(len(body))}).items():
        connection.putheader(header, value)
    connection.endheaders()
    connection.send(body[:2 * PART + PART // 2])  # two parts' worth: one part uploaded
    deadline = time.monotonic() + 30
    while not (_spool_has_data(spool) if spooled
               else list(service.client.list_multipart_uploads(service.prefix))):
        assert time.monotonic() < deadline, "the upload did not start"
        time.sleep(0.05)
    service.process.stop(signal.SIGKILL)
    connection.close()
    keys = [obj.key for obj in service.client.list(service.prefix)]
    assert keys == [service.key(name)]  # no temporary object, nothing new at the key
    with service.client.get(service.key(name)) as result:
        assert result.read() == b"previous"
    unfinished = list(service.client.list_multipart_uploads(service.prefix))
    assert len(unfinished) == (0 if spooled else 1)  # fsck aborts it after its grace period
    for key, upload_id, _ in unfinished:
        service.client.abort_multipart(key, upload_id)


def _spool_has_data(spool):
    """Tell whether an upload's spool file in `spool` has received bytes."""
    return any(entry.stat().st_size > 0 for entry in spool.iterdir())
