"""The etc/ deployments for real: Apache + mod_wsgi, nginx + TLS, systemd, upstart + authbind."""

import concurrent.futures
import configparser
import hashlib
import os
import pwd
import re
import runpy
import shlex
import shutil
import ssl
import subprocess
import sys
import time
import uuid

import pytest

from tests import deploy_util
from tests.deploy_util import read_etc, which
from tests.helpers import KEY, call, make_app, sp7_upload, token
from tests.lifecycle import (XML_TYPES, HTTPClient, Sp7Backend, WSGIClient, expect,
                             sp6_lifecycle, sp7_lifecycle, trusting)
from tests.stores import app_on
from webassets import __main__ as cli
from webassets import config, server, thumbnails, wsgi
from webassets.app import create_app

needs_deploy = deploy_util.needs_deploy
CONVERT = shutil.which("magick") or shutil.which("convert")
BIG_BLOCK = 1024 * 1024
BIG_BLOCKS = 200  # the 200 MiB upload through Apache
NGINX_BLOCKS = 8  # past nginx's default 1 MiB client_max_body_size


@pytest.fixture(scope="module")
def jpeg():
    """Return a small real JPEG (ImageMagick), the attachment both lifecycles upload."""
    if CONVERT is None:
        pytest.skip("ImageMagick (magick/convert) is not installed: no thumbnails")
    return subprocess.check_output([CONVERT, "-size", "320x240", "gradient:red-blue", "jpeg:-"])


def get_result(client, path, **query):
    return client.request("GET", path, query=query or None)


# --- the lifecycles themselves, in-process (fast; checks tests/lifecycle.py on every Python)


@pytest.mark.parametrize("mount", ["", "/assets"])
def test_lifecycles_in_process(tmp_path, jpeg, mount, backend):
    client = WSGIClient(app_on(backend, tmp_path), script_name=mount)
    xml_path = mount + "/web_asset_store.xml"
    sp7_lifecycle(client, jpeg, xml_path, public_base="http://localhost:8080" + mount)
    sp6_lifecycle(client, jpeg, xml_path, public_base="http://localhost:8080" + mount)


def test_lifecycle_notices_a_missing_timestamp(tmp_path):
    """The lifecycles fail as Specify would when the XML has no X-Timestamp."""
    app = make_app(tmp_path)

    def without_timestamp(environ, start_response):
        def strip(status, headers, exc_info=None):
            return start_response(status, [h for h in headers if h[0] != "X-Timestamp"], exc_info)
        return app(environ, strip)

    with pytest.raises(AssertionError, match="X-Timestamp"):
        Sp7Backend(WSGIClient(without_timestamp)).init()


# --- offloaded downloads (FILE_OFFLOAD): the same checks through Apache and nginx ------

# Names the front server must still find from our header: space, %, +, quotes, ?, #, &, ;
# and non-ASCII (nginx decodes the URI we send; mod_xsendfile takes the path's bytes).
OFFLOAD_NAMES = ("Ürsprung 100% \"echt\"+'q'.bin", "a?b#c&d=e;f 名前.jpg")
DOWNLOAD_NAME = "Ürsprüngliche Aufnahme 1.jpg"
# The front server's own: validators from the file; Accept-Ranges (Apache answers Range
# through mod_xsendfile without advertising it).
FRONT_HEADERS = ("etag", "last-modified", "accept-ranges")


def own_answer(store_dir, query):
    """Return webassets' own answer (in-process, FILE_OFFLOAD None) to GET /fileget?query."""
    settings = config.from_mapping(dict(KEY=KEY, BASE_DIR=store_dir, METRICS=False))
    return call(create_app(settings), "GET", "/fileget", query=query)


def signed(name, **query):
    return dict(query, filename=name, token=token(name))


def check_offloaded(client, store_dir, path, query):
    """GET /fileget?query through the front server; check it sent `path` as webassets would.

    The bytes and the end-to-end headers are webassets' own answer's (Content-Type,
    Content-Disposition, the security headers, X-Timestamp...), the validators the
    front server's; Range gives 206, If-None-Match 304; the offload header never leaks.
    """
    with open(path, "rb") as handle:
        content = handle.read()
    own = own_answer(store_dir, query)
    assert own.status == 200 and own.body == content, own
    full = client.request("GET", "/fileget", query=query)
    assert full.status == 200 and full.body == content, full
    for name, value in own.header_list:
        if name in ("X-Timestamp", "X-Request-Id"):
            assert full.header(name), (name, full)
        elif name.lower() not in FRONT_HEADERS:
            assert full.header(name) == value, (name, full)
    assert full.header("X-Accel-Redirect") is None and full.header("X-Sendfile") is None, full
    # The front server sent the file: its own validator, not webassets'.
    assert full.header("ETag") not in (None, deploy_util.app_etag(path)), full
    start = len(content) // 3
    ranged = client.request("GET", "/fileget", query=query,
                            headers={"Range": "bytes=%d-%d" % (start, start + 99)})
    assert ranged.status == 206 and ranged.body == content[start:start + 100], ranged
    assert ranged.header("Content-Range") == "bytes %d-%d/%d" % (start, start + 99, len(content))
    cached = client.request("GET", "/fileget", query=query,
                            headers={"If-None-Match": full.header("ETag")})
    assert cached.status == 304 and cached.body == b"" and cached.header("X-Timestamp"), cached


def check_offloaded_downloads(client, store_dir, jpeg):
    """Originals with awkward names and a thumbnail, just rendered and cached, all offloaded."""
    backend = Sp7Backend(client)
    backend.init()
    for name in OFFLOAD_NAMES:
        expect(backend.upload(name, os.urandom(300 * 1024), mime="application/octet-stream"),
               200, "upload " + name)
        check_offloaded(client, store_dir, os.path.join(store_dir, "originals", name),
                        signed(name, type="O", downloadname=DOWNLOAD_NAME))
    name = str(uuid.uuid4()) + ".jpg"
    expect(backend.upload(name, jpeg), 200, "upload the JPEG")
    query = signed(name, type="T", scale="64")
    rendered = expect(client.request("GET", "/fileget", query=query), 200, "render")
    path = os.path.join(store_dir, "thumbnails", thumbnails.thumbnail_name(name, 64))
    with open(path, "rb") as handle:
        assert rendered.body == handle.read() and rendered.header("Content-Type") == "image/jpeg"
    check_offloaded(client, store_dir, path, query)


# --- Apache + mod_wsgi ----------------------------------------------------------------


# The shipped conf, but with mod_reqtimeout's first deadlines for a head and a body cut to
# 2 s (from 20 s and 60 s) and the silence a connection may keep to 5 s (from 60 s), so
# the slow-client tests take seconds.
APACHE_SHORT_TIMEOUTS = (("header=20-40,MinRate=500", "header=2-40,MinRate=500"),
                         ("body=60,MinRate=500", "body=2,MinRate=500"),
                         ("\nTimeout 60\n", "\nTimeout 5\n"))


@pytest.fixture(scope="module")
def apache():
    """Apache with etc/apache/webassets.conf on loopback and FILE_OFFLOAD = 'apache' (shorter
    reqtimeout deadlines); yields (client, store dir, apache) with apache.port set."""
    root = deploy_util.apache_root()
    process = None
    try:
        process, port = deploy_util.start_apache(root, APACHE_SHORT_TIMEOUTS, FILE_OFFLOAD="apache")
        process.port = port
        yield HTTPClient("http://127.0.0.1:%d" % port), root + "/var/lib/webassets", process
    finally:
        if process is not None:
            process.stop()
        deploy_util.remove_root(root)


def upload_8_mib(client):
    """Upload 8 MiB of random bytes as Specify 7 does; return (store name, its sha256 hex)."""
    backend = Sp7Backend(client)
    backend.init()
    store = str(uuid.uuid4()) + ".bin"
    chunks, headers, expected = deploy_util.streamed_sp7_upload(
        store, backend.generate_token(store), os.urandom(BIG_BLOCK), NGINX_BLOCKS)
    expect(client.request("POST", "/fileupload", body=chunks, headers=headers), 200, "8 MiB")
    return store, expected


@needs_deploy
@pytest.mark.parametrize("mount", ["", "/assets"])
def test_apache_lifecycles(apache, jpeg, mount):
    """Specify 7 and 6 work through mod_wsgi at / and under /assets (the XML says /assets)."""
    client = apache[0]
    xml_path = mount + "/web_asset_store.xml"
    sp7_lifecycle(client, jpeg, xml_path)
    sp6_lifecycle(client, jpeg, xml_path)


@needs_deploy
def test_apache_200_mib_upload_download_and_range(apache):
    """A 200 MiB upload streams through mod_wsgi and comes back byte-exact; Range gives 206."""
    client, store_dir, process = apache
    backend = Sp7Backend(client, xml_path="/assets/web_asset_store.xml")
    backend.init()
    store = str(uuid.uuid4()) + ".bin"
    block = os.urandom(BIG_BLOCK)
    chunks, headers, expected = deploy_util.streamed_sp7_upload(
        store, backend.generate_token(store), block, BIG_BLOCKS)
    expect(client.request("POST", "/assets/fileupload", body=chunks, headers=headers),
           200, "200 MiB upload")
    assert os.path.getsize(os.path.join(store_dir, "originals", store)) == BIG_BLOCK * BIG_BLOCKS

    digest, query = hashlib.sha256(), {"type": "O", "filename": store}
    result = client.request("GET", "/fileget", query=query, sink=digest.update)
    assert result.status == 200, process.logs((process.error_log,))
    assert result.header("Content-Length") == str(BIG_BLOCK * BIG_BLOCKS)
    assert digest.hexdigest() == expected

    start = BIG_BLOCK * 150 + 7
    ranged = client.request("GET", "/fileget", query=query,
                            headers={"Range": "bytes=%d-%d" % (start, start + 99)})
    assert ranged.status == 206
    assert ranged.header("Content-Range") == "bytes %d-%d/%d" % (start, start + 99,
                                                                 BIG_BLOCK * BIG_BLOCKS)
    assert ranged.body == (block * 2)[7:107]
    expect(backend.delete(store), 200, "delete the 200 MiB file")


@needs_deploy
def test_apache_chunked_upload(apache, jpeg):
    """WSGIChunkedRequest On: an upload without Content-Length is stored whole."""
    client = apache[0]
    store = str(uuid.uuid4()) + ".jpg"
    body, headers = sp7_upload(store, jpeg, token(store))
    pieces = (body[i:i + 1000] for i in range(0, len(body), 1000))  # no Content-Length: chunked
    expect(client.request("POST", "/fileupload", body=pieces, headers=headers), 200, "chunked")
    thumb = get_result(client, "/assets/fileget", type="T", filename=store, scale="64")
    assert thumb.status == 200 and thumb.header("Content-Type") == "image/jpeg"
    assert get_result(client, "/fileget", type="O", filename=store).body == jpeg


@needs_deploy
def test_apache_xsendfile_sends_originals_and_thumbnails(apache, jpeg):
    """FILE_OFFLOAD = 'apache': mod_xsendfile sends the files (bytes, headers, Range, 304)."""
    client, store_dir, _ = apache
    check_offloaded_downloads(client, store_dir, jpeg)


@needs_deploy
def test_apache_ran_the_app_in_its_daemon_without_errors(apache):
    """After the tests above: the daemon group ran the app (as www-data) and logged no error."""
    process = apache[2]
    with open(process.error_log, encoding="utf-8", errors="replace") as handle:
        log = handle.read()
    user = " with uid=%d" % pwd.getpwnam(deploy_util.APACHE_USER).pw_uid
    assert "Starting process 'webassets'" + (user if os.geteuid() == 0 else "") in log, log
    assert "[wsgi:error]" not in log and "Traceback" not in log, log


@needs_deploy  # NOTE: after the test above: mod_wsgi logs the cut upload as an error
def test_apache_cuts_a_trickling_head_but_not_a_slow_upload(apache):
    """Short deadlines here: mod_reqtimeout cuts a head sent at 4 bytes/s with 408 after
    2 s, but an upload at 10 KiB/s runs past its 2 s (MinRate) and completes; an upload
    that stalls halfway is cut after Timeout (5 s) of silence and the file stays intact."""
    client, store_dir, process = apache
    store = str(uuid.uuid4()) + ".bin"
    body, headers = sp7_upload(store, os.urandom(30 * 1024), token(store))
    headers["Content-Length"] = str(len(body))
    head = "POST /fileupload HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n" + "".join(
        "%s: %s\r\n" % item for item in sorted(headers.items()))
    request = head.encode("ascii") + b"\r\n" + body
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        trickle = pool.submit(deploy_util.trickle_head, process.port, 0.25, 10.0)
        slow = pool.submit(deploy_util.slow_upload, process.port, "/fileupload", request,
                           10 * 1024)
        stalled = pool.submit(deploy_util.slow_upload, process.port, "/fileupload", request,
                              10 * 1024, stall_after=len(request) // 2)
        expect(client.request("GET", "/healthz"), 200, "healthz meanwhile")
        seconds, answer = trickle.result()
        assert seconds is not None and 1.5 < seconds < 5, (seconds, answer)
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert slow.result()[0] == 200
        status, seconds = stalled.result()
        assert status != 200 and 5 < seconds < 10, (status, seconds)
    assert os.path.getsize(os.path.join(store_dir, "originals", store)) == 30 * 1024


def test_apache_conf_directives():
    """The shipped conf has what the issue asks for (the tests above prove it works)."""
    text = read_etc("apache", "webassets.conf")
    daemon = re.search(r"^WSGIDaemonProcess webassets (.*?)(?<!\\)$", text, re.M | re.S).group(1)
    for option in ("threads=", "request-timeout=", "queue-timeout=",
                   "python-home=/opt/webassets/.venv"):
        assert option in daemon
    # Every slow upload holds a daemon thread: room for the 64 and everyone else.
    threads = int(re.search(r"\bthreads=(\d+)", daemon).group(1))
    assert int(re.search(r"\bprocesses=(\d+)", daemon).group(1)) * threads >= 64 + 16
    timeouts = re.search(r"^RequestReadTimeout (.*)$", text, re.M).group(1).split()
    assert {"header=20-40,MinRate=500", "body=60,MinRate=500"} <= set(timeouts)
    assert re.search(r"^<IfModule mod_xsendfile.c>\s+XSendFile On\s+"
                     r"XSendFilePath /var/lib/webassets\s+</IfModule>", text, re.M)
    for directive in ("WSGIChunkedRequest On", "LimitRequestBody 0", "EnableSendfile On",
                      "SetEnv WEBASSETS_SETTINGS /etc/webassets/settings.py",
                      "WSGIScriptAlias /assets /opt/webassets/bin/webassets.wsgi",
                      "WSGIScriptAlias / /opt/webassets/bin/webassets.wsgi"):
        assert re.search(r"^%s\b" % re.escape(directive), text, re.M), directive


# --- webassets/wsgi.py as mod_wsgi's script file (WSGIScriptAlias .../webassets/wsgi.py) ----

WSGI_PY = os.path.join(deploy_util.REPO, "webassets", "wsgi.py")


def test_wsgi_py_loads_as_a_script_file():
    """Run as a script (no package: as mod_wsgi loads it), it serves the package's application."""
    namespace = runpy.run_path(WSGI_PY, run_name="_mod_wsgi_0123456789abcdef")
    assert namespace["application"] is wsgi.application


def run_script(argv, cwd):
    done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=cwd)
    return done.returncode, done.stdout.decode("utf-8", "replace")


def test_wsgi_py_copied_out_of_its_package(tmp_path):
    """A copy uses the installed webassets; with none importable it stops at load time with
    the reason (mod_wsgi logs it) instead of a 500 per request."""
    copy = tmp_path / "wsgi.py"
    shutil.copy(WSGI_PY, str(copy))
    status, output = run_script([sys.executable, "-I", str(copy)], str(tmp_path))
    assert status == 0, output
    status, output = run_script([sys.executable, "-I", "-S", str(copy)], str(tmp_path))
    assert status != 0, output
    assert "was loaded as a script file, but the webassets package cannot be imported" in output


@needs_deploy
def test_apache_serves_with_wsgi_py_as_the_script_file(jpeg):
    """WSGIScriptAlias pointing at the package's own wsgi.py (as Django sites do): both
    lifecycles at / and /assets, and nothing in Apache's error log."""
    root = deploy_util.apache_root()
    process = None
    try:
        replace = [(deploy_util.reroot(old, root), deploy_util.reroot(new, root)) for old, new in (
            ("/opt/webassets/bin/webassets.wsgi", "/opt/webassets/webassets/wsgi.py"),
            ("<Directory /opt/webassets/bin>", "<Directory /opt/webassets/webassets>"),
            ("<Files webassets.wsgi>", "<Files wsgi.py>"))]
        process, port = deploy_util.start_apache(root, replace)
        client = HTTPClient("http://127.0.0.1:%d" % port)
        for mount in ("", "/assets"):
            sp7_lifecycle(client, jpeg, mount + "/web_asset_store.xml")
            sp6_lifecycle(client, jpeg, mount + "/web_asset_store.xml")
        with open(process.error_log, encoding="utf-8", errors="replace") as handle:
            log = handle.read()
        assert "wsgi.py" in log and "[wsgi:error]" not in log and "Traceback" not in log, log
    finally:
        if process is not None:
            process.stop()
        deploy_util.remove_root(root)


# --- nginx + TLS in front of the built-in server -----------------------------------------


def nginx_deployment(**settings):
    """Run webassets (`settings`) behind nginx (etc/nginx/webassets.conf); yield
    (client, http port, nginx, webassets, store dir) and stop both after."""
    reason = deploy_util.nginx_missing()
    if reason:
        pytest.skip(reason)
    root = deploy_util.make_root()
    processes = []
    try:
        app_port, http_port, https_port = (deploy_util.free_port() for _ in range(3))
        public = "https://127.0.0.1:%d" % https_port
        store = root + "/var/lib/webassets"
        text = deploy_util.settings_text(store, PUBLIC_URL=public, BIND_ADDRESS="127.0.0.1",
                                         PORT=app_port, **settings)
        processes.append(deploy_util.start_webassets(root, text, app_port))
        process, cert = deploy_util.start_nginx(root, app_port, http_port, https_port)
        processes.append(process)
        client = HTTPClient(public, ssl_context=trusting(cert))
        yield client, http_port, process, processes[0], store
    finally:
        for process in reversed(processes):
            process.stop()
        deploy_util.remove_root(root)


@pytest.fixture(scope="module")
def nginx():
    """webassets sending its files itself behind nginx; see nginx_deployment()."""
    yield from nginx_deployment()


@pytest.fixture(scope="module")
def nginx_offload():
    """webassets behind nginx with FILE_OFFLOAD = 'nginx' and tokens on GET too."""
    yield from nginx_deployment(FILE_OFFLOAD="nginx", REQUIRE_KEY_FOR_GET=True)


@needs_deploy
def test_nginx_https_lifecycles(nginx, jpeg):
    """Both clients work over HTTPS; every URL in the XML is the public https:// base."""
    client = nginx[0]
    result = expect(client.request("GET", "/web_asset_store.xml"), 200, "XML over HTTPS")
    urls = re.findall(rb"(?:CDATA\[|>)(\w+://[^\]<]*)", result.body)
    assert len(urls) == len(XML_TYPES)
    assert all(url.decode().startswith(client.base_url + "/") for url in urls), urls
    sp7_lifecycle(client, jpeg)
    sp6_lifecycle(client, jpeg)


@needs_deploy
def test_nginx_unbuffered_large_upload_and_download(nginx):
    """An 8 MiB upload passes nginx (client_max_body_size) and streams to webassets; its
    download, read by a client that first waits a second, is not spooled to disk.

    nginx warns in its error log whenever it spools a request body
    (proxy_request_buffering off) or a response (proxy_max_temp_file_size 0) to a
    temporary file; it must not have.
    """
    client, _, process = nginx[:3]
    store, expected = upload_8_mib(client)
    digest, started = hashlib.sha256(), []

    def slow_start(chunk):
        if not started:
            started.append(True)
            time.sleep(1.0)  # meanwhile webassets sends as much as nginx will take
        digest.update(chunk)

    expect(client.request("GET", "/fileget", query={"type": "O", "filename": store},
                          sink=slow_start), 200, "8 MiB download")
    assert digest.hexdigest() == expected
    with open(process.error_log, encoding="utf-8", errors="replace") as handle:
        log = handle.read()
    assert "client request body is buffered" not in log, log
    assert "upstream response is buffered" not in log, log


@needs_deploy
def test_nginx_offload_sends_originals_and_thumbnails(nginx_offload, jpeg):
    """FILE_OFFLOAD = 'nginx': nginx sends the files (bytes, headers, Range, 304) through
    X-Accel-Redirect, and webassets itself sent no byte of any of them."""
    client, _, _, app, store_dir = nginx_offload
    check_offloaded_downloads(client, store_dir, jpeg)
    store, expected = upload_8_mib(client)
    digest = hashlib.sha256()
    expect(client.request("GET", "/fileget", query=signed(store, type="O"), sink=digest.update),
           200, "8 MiB download")
    assert digest.hexdigest() == expected
    # Each original: GET, Range, If-None-Match; the thumbnail: those and its rendering; 8 MiB.
    sent = deploy_util.access_log_bytes(app.log_path, "/fileget")
    assert len(sent) == len(OFFLOAD_NAMES) * 3 + 4 + 1, sent
    assert all(size == 0 for _, size in sent), sent


@needs_deploy
def test_nginx_offload_checks_the_token_and_the_file_first(nginx_offload, jpeg):
    """A bad token gets webassets' 403 and a missing file its 404: nothing from nginx."""
    client, _, _, _, store_dir = nginx_offload
    store = str(uuid.uuid4()) + ".jpg"
    backend = Sp7Backend(client)
    backend.init()
    expect(backend.upload(store, jpeg), 200, "upload")
    forged = dict(signed(store, type="O"), token="0" * 32 + ":1")
    for query, status in ((forged, 403), (signed("missing.jpg", type="O"), 404)):
        result = client.request("GET", "/fileget", query=query)
        assert result.status == status and result.header("ETag") is None, result
        assert result.header("Content-Type") == "text/plain; charset=utf-8", result  # ours
    sp6_lifecycle(client, jpeg)  # Specify 6 signs its GETs: the token check lets it through


@needs_deploy
def test_nginx_plain_http_redirects_to_https(nginx):
    plain = HTTPClient("http://127.0.0.1:%d" % nginx[1])
    result = plain.request("GET", "/web_asset_store.xml")
    assert result.status == 301
    assert result.header("Location").startswith("https://127.0.0.1")


@needs_deploy
def test_nginx_rejects_an_untrusted_certificate(nginx):
    """The client really checks TLS: without the test CA the handshake fails."""
    strict = HTTPClient(nginx[0].base_url, ssl_context=ssl.create_default_context())
    with pytest.raises(ssl.SSLError):
        strict.request("GET", "/")


# --- systemd -------------------------------------------------------------------------


def unit():
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string(read_etc("systemd", "webassets.service"))
    return parser


def serve_args(argv):
    """Parse a `webassets serve ...` command line with the real CLI parser."""
    return cli.build_parser().parse_args(argv[1:])


def test_systemd_unit_directives():
    service = unit()["Service"]
    assert service["User"] == "webassets" and service["Group"] == "webassets"
    argv = shlex.split(service["ExecStart"])
    assert argv[0] == "/opt/webassets/.venv/bin/webassets"
    args = serve_args(argv)
    assert (args.command, args.settings) == ("serve", "/etc/webassets/settings.py")
    expected = {"NoNewPrivileges": "true", "ProtectSystem": "strict", "PrivateTmp": "true",
                "ProtectHome": "true", "ReadWritePaths": "/var/lib/webassets",
                "AmbientCapabilities": "CAP_NET_BIND_SERVICE",
                "CapabilityBoundingSet": "CAP_NET_BIND_SERVICE",
                "Restart": "on-failure", "KillSignal": "SIGTERM"}
    assert {name: service.get(name) for name in expected} == expected
    # SIGKILL must not cut the server's own drain of in-flight requests short.
    assert int(service["TimeoutStopSec"]) > server.SHUTDOWN_TIMEOUT
    assert unit()["Install"]["WantedBy"] == "multi-user.target"


@needs_deploy
def test_systemd_analyze_verify(tmp_path):
    """systemd-analyze verify accepts the unit; its offline security score stays low."""
    analyze = which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian: systemd)")
    # verify checks that ExecStart exists: point it at an executable stand-in.
    stub = str(tmp_path / "opt/webassets/.venv/bin/webassets")
    os.makedirs(os.path.dirname(stub))
    with open(stub, "w") as handle:
        handle.write("#!/bin/sh\n")
    os.chmod(stub, 0o755)
    path = str(tmp_path / "webassets.service")
    deploy_util.write(path, read_etc("systemd", "webassets.service").replace(
        "/opt/webassets/.venv/bin/webassets", stub))
    verify = subprocess.Popen([analyze, "verify", path], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT)
    output = verify.communicate(timeout=30)[0].decode("utf-8", "replace")
    # Only our unit's lines: the host's own units may have complaints of their own.
    assert verify.returncode == 0 and "webassets" not in output, output
    security = subprocess.Popen([analyze, "security", "--offline=true", "--no-pager", path],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = security.communicate(timeout=30)[0].decode("utf-8", "replace")
    match = re.search(r"Overall exposure level for webassets\.service: ([0-9.]+)", output)
    if match is None:
        pytest.skip("this systemd-analyze cannot score units offline: " + output[-300:])
    assert float(match.group(1)) <= 3.0, output


def service_tools():
    """Skip unless the service tests can run: root, setpriv, the system Python with ExifRead."""
    setpriv = which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv (util-linux) to run the service as another user")
    reason = deploy_util.apache_missing()
    if reason and "ExifRead" in reason:
        pytest.skip(reason)
    port = deploy_util.low_free_port()
    if port is None:
        pytest.skip("no free loopback port below 512")
    return setpriv, port


def serve_until_lifecycle(argv, root, port, cwd, jpeg):
    """Start a service command line, run the Specify 7 lifecycle through it, stop it."""
    process = deploy_util.Process(argv[0], argv, root + "/service.log",
                                  env=deploy_util.SERVICE_ENV, cwd=cwd)
    try:
        process.wait_port(port)
        sp7_lifecycle(HTTPClient("http://127.0.0.1:%d" % port), jpeg)
    finally:
        process.stop()


@needs_deploy
def test_systemd_exec_start_serves_a_low_port_with_only_the_units_capability(jpeg):
    """ExecStart, run as an unprivileged user with the unit's capability set, serves port < 512.

    setpriv reproduces User=, AmbientCapabilities=/CapabilityBoundingSet=CAP_NET_BIND_SERVICE
    and NoNewPrivileges=; without the capability the same command cannot bind.
    """
    setpriv, port = service_tools()
    service = unit()["Service"]
    # The unit's own settings, translated to setpriv's terms.
    ambient = service.get("AmbientCapabilities", "")
    capability = ambient[len("CAP_"):].lower() if ambient.startswith("CAP_") else None
    no_new_privs = service.get("NoNewPrivileges") == "true"
    root = deploy_util.service_root(port)
    try:
        argv = shlex.split(deploy_util.reroot(service["ExecStart"], root))
        status, output = deploy_util.run_refused(
            deploy_util.as_service_user(setpriv, argv, no_new_privs=no_new_privs), "/")
        assert status == cli.EXIT_ATTENTION and "Permission denied" in output, output
        serve_until_lifecycle(deploy_util.as_service_user(
            setpriv, argv, capability, no_new_privs), root, port, "/", jpeg)
    finally:
        deploy_util.remove_root(root)


# --- upstart and authbind ----------------------------------------------------------------


def upstart_stanzas():
    stanzas = {}
    for line in read_etc("upstart", "webassets.conf").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.strip().partition(" ")
            stanzas.setdefault(name, []).append(value)
    return stanzas


def test_upstart_conf():
    """The upstart job runs our command line through authbind --deep as an unprivileged user."""
    stanzas = upstart_stanzas()
    assert stanzas["setuid"] == ["webassets"] and stanzas["setgid"] == ["webassets"]
    assert stanzas["start"] == ["on runlevel [2345]"] and stanzas["stop"] == ["on runlevel [016]"]
    assert "respawn" in stanzas
    argv = shlex.split(stanzas["exec"][0])
    assert argv[:2] == ["/usr/bin/authbind", "--deep"]
    assert argv[2] == unit()["Service"]["ExecStart"].split()[0]  # same install as systemd
    args = serve_args(argv[2:])
    assert (args.command, args.settings) == ("serve", "/etc/webassets/settings.py")
    kill_timeout = [value for value in stanzas["kill"] if value.startswith("timeout ")]
    assert int(kill_timeout[0].split()[1]) > server.SHUTDOWN_TIMEOUT


@needs_deploy
def test_upstart_exec_line_serves_a_low_port_through_authbind(jpeg):
    """The job's exec line, as its setuid user from its chdir, binds port < 512 via authbind --deep.

    The README's authbind permission (here the loopback-only byaddr form, created
    for the test and removed after) is what makes it work: without it, bind fails.
    """
    setpriv, port = service_tools()
    if which("authbind") is None:
        pytest.skip("authbind is not installed (Debian: authbind)")
    stanzas = upstart_stanzas()
    root = deploy_util.service_root(port)
    permit = None
    try:
        argv = deploy_util.as_service_user(
            setpriv, shlex.split(deploy_util.reroot(stanzas["exec"][0], root)))
        cwd = deploy_util.reroot(stanzas["chdir"][0], root)
        status, output = deploy_util.run_refused(argv, cwd)
        assert status == cli.EXIT_ATTENTION and "not permitted" in output, output
        try:
            permit = deploy_util.authbind_permit(port)
        except FileExistsError:
            pytest.skip("an authbind permission for 127.0.0.1:%d exists already" % port)
        serve_until_lifecycle(argv, root, port, cwd, jpeg)
    finally:
        if permit is not None:
            os.remove(permit)
        deploy_util.remove_root(root)
