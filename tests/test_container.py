"""The container image (etc/docker) built with podman and run as Specify 7's compose runs it."""

import logging
import os
import re
import secrets
import signal
import socket
import subprocess
import time
import uuid

import pytest

from tests import container_util, deploy_util
from tests.helpers import sp7_upload, token
from tests.lifecycle import HTTPClient, expect, sp6_lifecycle, sp7_lifecycle
from webassets import samples, server

logger = logging.getLogger(__name__)

needs_deploy = deploy_util.needs_deploy
# Specify 7's docker-compose.yml gives the reference's image exactly this (PROTOCOL.md 1);
# a fresh key, as a site's ASSET_SERVER_KEY (`check` fails the reference's example key).
ASSET_SERVER_KEY = secrets.token_urlsafe(32)
SPECIFY7_ENV = {"SERVER_NAME": "host.docker.internal", "SERVER_PORT": "80",
                "ATTACHMENT_KEY": ASSET_SERVER_KEY, "DEBUG_MODE": "false"}
SPECIFY7_PUBLIC_BASE = "http://host.docker.internal:80"
VOLUME = "/home/specify/attachments"
IMAGE_UID = 999  # the reference image's user and group
MAX_IMAGE_BYTES = 600 * 1024 * 1024
LEGACY_NAME = "3f1b6a1e-reference.jpg"  # an attachment the reference server stored


def read_docker_file(name):
    return deploy_util.read_etc("docker", name)


# --- the shipped files (no podman needed) --------------------------------------------------


def test_dockerfile_directives():
    text = read_docker_file("Dockerfile")
    assert re.search(r"^FROM debian:stable-slim$", text, re.M)
    install = re.search(r"apt-get install ([^&]*)", text).group(1).split()
    for package in ("python3", "python3-exifread", "imagemagick", "ghostscript",
                    "libheif-plugin-libde265", "tini"):
        assert package in install, package
    assert re.search(r"^USER 999:999$", text, re.M)
    assert re.search(r"^EXPOSE 8080$", text, re.M)
    assert re.search(r"^VOLUME %s$" % VOLUME, text, re.M)
    assert re.search(r"^HEALTHCHECK .*\n.*CMD \[.*/healthz", text, re.M)
    # Exec form: SIGTERM reaches the server, not a shell that ignores it.
    assert re.search(r'^ENTRYPOINT \["/usr/bin/tini", "--", "python3", "-m", "webassets"\]$',
                     text, re.M)


def test_compose_file_runs_the_image_as_specify7_runs_the_reference():
    """The compose service keeps Specify 7's environment, volume and name; it builds our image."""
    text = read_docker_file("docker-compose.yml")
    service = text.split("\n  asset-server:\n", 1)[1].split("\n\n", 1)[0]
    for name in SPECIFY7_ENV:
        assert re.search(r"^\s+- %s=" % name, service, re.M), name
    assert "ATTACHMENT_KEY=${ASSET_SERVER_KEY}" in service
    assert '"attachments:%s"' % VOLUME in service
    assert "dockerfile: etc/docker/Dockerfile" in service
    stop = int(re.search(r"stop_grace_period: (\d+)s", service).group(1))
    assert stop > server.SHUTDOWN_TIMEOUT


# --- the image, built and run for real ------------------------------------------------------


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    """Build the image (base from debootstrap unless cached); yield (inspect, rootfs, figures)."""
    reason = container_util.container_missing()
    if reason:
        pytest.skip(reason)
    log_path = str(tmp_path_factory.mktemp("image") / "build.log")
    with open(log_path, "wb") as log:
        try:
            base_seconds = container_util.make_base_image(container_util.base_image(), log)
            build_seconds = container_util.build_image(log)
        except (subprocess.SubprocessError, OSError, RuntimeError) as ex:
            with open(log_path, "rb") as handle:
                raise AssertionError("building the image failed (%s):\n%s" % (
                    ex, handle.read()[-8000:].decode("utf-8", "replace")))
    inspected = container_util.inspect_image()
    figures = {"base seconds": base_seconds, "build seconds": build_seconds,
               "size bytes": inspected.get("Size")}
    logger.info("container image: %r", figures)
    rootfs = container_util.podman("image", "mount", container_util.TEST_IMAGE).strip()
    try:
        yield inspected, rootfs, figures
    finally:
        container_util.podman("image", "unmount", container_util.TEST_IMAGE)


def make_volume(root):
    """Return an attachments volume as the reference's image left it: owned by 999, one file."""
    volume = os.path.join(root, "attachments")
    originals = os.path.join(volume, "originals")
    os.makedirs(originals)
    with open(os.path.join(originals, LEGACY_NAME), "wb") as handle:
        handle.write(samples.sample("jpeg")[1])
    for directory, _, files in os.walk(volume):
        os.chown(directory, IMAGE_UID, IMAGE_UID)
        for name in files:
            os.chown(os.path.join(directory, name), IMAGE_UID, IMAGE_UID)
    return volume


@pytest.fixture(scope="module")
def container(image):
    """The image's entrypoint with Specify 7's environment and volume; yields the Container."""
    inspected, rootfs, _ = image
    root = deploy_util.make_root()
    running = None
    try:
        running = container_util.Container(rootfs, inspected, SPECIFY7_ENV, make_volume(root),
                                           root)
        running.volume = os.path.join(root, "attachments")
        running.wait_port(8080)
        yield running
    finally:
        if running is not None:
            running.stop()
        deploy_util.remove_root(root)


@needs_deploy
def test_image_is_configured_like_the_reference(image):
    inspected, rootfs, figures = image
    config = inspected["Config"]
    assert "8080/tcp" in config.get("ExposedPorts", {})
    assert list(config.get("Volumes")) == [VOLUME]
    assert container_util.resolve_user(rootfs, config["User"])[:2] == (IMAGE_UID, IMAGE_UID)
    with open(os.path.join(rootfs, "etc/passwd"), encoding="utf-8") as handle:
        assert re.search(r"^specify:x:999:999:", handle.read(), re.M)
    assert os.stat(rootfs + VOLUME).st_uid == IMAGE_UID
    check = container_util.healthcheck(inspected)
    assert check and check[0] == "CMD" and "/healthz" in check[-1], check
    assert config.get("StopSignal") in (None, "SIGTERM", "15")
    assert 0 < figures["size bytes"] < MAX_IMAGE_BYTES, figures


@needs_deploy
def test_container_check_passes_every_format(container):
    """`webassets check` in the container: store, converters, each sample format (HEIC, PDF)."""
    status, output = container.exec(["python3", "-m", "webassets", "check"])
    assert status == 0, output
    for fmt in ("JPEG", "PDF", "HEIC", "WEBP", "TIFF"):
        assert re.search(r"^  \[ ok \] %s " % fmt, output, re.M), (fmt, output)


@needs_deploy
def test_container_specify_lifecycles(container):
    """Specify 7 and 6 work against the container configured as Specify 7's compose does it."""
    jpeg = samples.sample("jpeg")[1]
    client = HTTPClient("http://127.0.0.1:8080")
    container.call(sp7_lifecycle, client, jpeg, public_base=SPECIFY7_PUBLIC_BASE,
                   key=ASSET_SERVER_KEY)
    container.call(sp6_lifecycle, client, jpeg, public_base=SPECIFY7_PUBLIC_BASE,
                   key=ASSET_SERVER_KEY)
    # The volume the reference left: its files are served, new ones are written as 999.
    old = container.call(client.request, "GET", "/fileget",
                         {"type": "O", "filename": LEGACY_NAME})
    assert old.status == 200 and old.body == jpeg, old
    thumbnails = os.path.join(container.volume, "thumbnails")
    assert os.stat(thumbnails).st_uid == IMAGE_UID


@needs_deploy
def test_container_runs_as_the_non_root_user(container):
    """PID 1 is tini; every process has uid and gid 999 and no capability."""
    pids = container.processes()
    assert len(pids) >= 2, pids
    with open("/proc/%d/comm" % pids[0]) as handle:
        assert handle.read().strip() == "tini"
    for pid in pids:
        status = container_util.proc_status(pid)
        assert status["Uid"].split() == [str(IMAGE_UID)] * 4, (pid, status)
        assert status["Gid"].split() == [str(IMAGE_UID)] * 4, (pid, status)
        assert int(status["CapEff"], 16) == 0 and int(status["CapPrm"], 16) == 0, status


@needs_deploy
def test_container_healthcheck_passes(container):
    status, output = container.exec(container_util.healthcheck(
        container_util.inspect_image())[1:], timeout=10)
    assert status == 0, output


@needs_deploy
def test_container_logs_go_to_standard_error(container):
    container.call(HTTPClient("http://127.0.0.1:8080").request, "GET", "/healthz")
    time.sleep(0.2)  # the access line is written after the response
    with open(container.stdout_path, "rb") as handle:
        assert handle.read() == b""
    with open(container.stderr_path, encoding="utf-8", errors="replace") as handle:
        log = handle.read()
    assert "listening on 0.0.0.0:8080" in log and '"GET /healthz HTTP/1.1" 200' in log, log
    assert "Traceback" not in log, log


def _upload_across_sigterm(container):
    """Send half an upload, SIGTERM the container, send the rest; return the status line."""
    store = str(uuid.uuid4()) + ".bin"
    body, headers = sp7_upload(store, os.urandom(256 * 1024),
                               token(store, key=ASSET_SERVER_KEY))
    head = "POST /fileupload HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n" + "".join(
        "%s: %s\r\n" % item for item in sorted(dict(headers, **{
            "Content-Length": str(len(body))}).items()))
    request = head.encode("ascii") + b"\r\n" + body
    half = len(request) // 2
    sock = container.call(socket.create_connection, ("127.0.0.1", 8080), 30)
    try:
        sock.sendall(request[:half])
        time.sleep(0.5)  # the request is in a worker's hands
        container.signal(signal.SIGTERM)
        time.sleep(0.5)  # the server is draining
        sock.sendall(request[half:])
        answer = sock.recv(4096)
    finally:
        sock.close()
    return store, answer.split(b"\r\n", 1)[0]


@needs_deploy  # NOTE: last: it stops the container
def test_container_stops_cleanly_on_sigterm(container):
    """SIGTERM to PID 1 (docker stop): the upload in flight completes, then exit status 0."""
    store, status_line = _upload_across_sigterm(container)
    assert status_line == b"HTTP/1.1 200 OK", (status_line, container.logs())
    started = time.monotonic()
    assert container.wait() == 0, container.logs()
    assert time.monotonic() - started < server.SHUTDOWN_TIMEOUT
    assert os.path.getsize(os.path.join(container.volume, "originals", store)) == 256 * 1024
    with open(container.stderr_path, encoding="utf-8", errors="replace") as handle:
        log = handle.read()
    assert "Received signal 15" in log and "Traceback" not in log, log


@needs_deploy
def test_container_refuses_to_start_without_a_key(image):
    """Like the reference's image (KeyError), it will not serve with a well-known key."""
    inspected, rootfs, _ = image
    env = {name: value for name, value in SPECIFY7_ENV.items() if name != "ATTACHMENT_KEY"}
    root = deploy_util.make_root()
    try:
        refused = container_util.Container(rootfs, inspected, env, make_volume(root), root)
        assert refused.wait(30) == 2
        refused.stop()
        with open(refused.stderr_path, encoding="utf-8", errors="replace") as handle:
            assert "set ATTACHMENT_KEY" in handle.read()
    finally:
        deploy_util.remove_root(root)
