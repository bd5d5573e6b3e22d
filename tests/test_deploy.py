"""The etc/ deployments for real: Apache + mod_wsgi, nginx + TLS, systemd, upstart + authbind."""

import configparser
import hashlib
import os
import pwd
import re
import shlex
import shutil
import ssl
import subprocess
import uuid

import pytest

from tests import deploy_util
from tests.deploy_util import read_etc, which
from tests.helpers import make_app, sp7_upload, token
from tests.lifecycle import (XML_TYPES, HTTPClient, Sp7Backend, WSGIClient, expect,
                             sp6_lifecycle, sp7_lifecycle, trusting)
from webassets import __main__ as cli
from webassets import server

DEPLOY = os.environ.get("WEBASSETS_DEPLOY_TESTS") == "1"
needs_deploy = pytest.mark.skipif(
    not DEPLOY, reason="deploy tests run only with WEBASSETS_DEPLOY_TESTS=1 (bin/test sets it "
                       "for one Python: they start Apache, nginx and servers)")
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
def test_lifecycles_in_process(tmp_path, jpeg, mount):
    client = WSGIClient(make_app(tmp_path), script_name=mount)
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


# --- Apache + mod_wsgi ----------------------------------------------------------------


@pytest.fixture(scope="module")
def apache():
    """Apache with etc/apache/webassets.conf on loopback; yields (client, store dir, apache)."""
    reason = deploy_util.apache_missing()
    if reason:
        pytest.skip(reason)
    root = deploy_util.make_root()
    process = None
    try:
        process, port = deploy_util.start_apache(root)
        yield HTTPClient("http://127.0.0.1:%d" % port), root + "/var/lib/webassets", process
    finally:
        if process is not None:
            process.stop()
        deploy_util.remove_root(root)


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
def test_apache_ran_the_app_in_its_daemon_without_errors(apache):
    """After the tests above: the daemon group ran the app (as www-data) and logged no error."""
    process = apache[2]
    with open(process.error_log, encoding="utf-8", errors="replace") as handle:
        log = handle.read()
    user = " with uid=%d" % pwd.getpwnam(deploy_util.APACHE_USER).pw_uid
    assert "Starting process 'webassets'" + (user if os.geteuid() == 0 else "") in log, log
    assert "[wsgi:error]" not in log and "Traceback" not in log, log


def test_apache_conf_directives():
    """The shipped conf has what the issue asks for (the tests above prove it works)."""
    text = read_etc("apache", "webassets.conf")
    daemon = re.search(r"^WSGIDaemonProcess webassets (.*?)(?<!\\)$", text, re.M | re.S).group(1)
    for option in ("threads=", "request-timeout=", "python-home=/opt/webassets/.venv"):
        assert option in daemon
    for directive in ("WSGIChunkedRequest On", "LimitRequestBody 0", "EnableSendfile On",
                      "SetEnv WEBASSETS_SETTINGS /etc/webassets/settings.py",
                      "WSGIScriptAlias /assets /opt/webassets/bin/webassets.wsgi",
                      "WSGIScriptAlias / /opt/webassets/bin/webassets.wsgi"):
        assert re.search(r"^%s\b" % re.escape(directive), text, re.M), directive


# --- nginx + TLS in front of the built-in server -----------------------------------------


@pytest.fixture(scope="module")
def nginx():
    """webassets behind nginx (etc/nginx/webassets.conf); yields (client, http port, nginx)."""
    reason = deploy_util.nginx_missing()
    if reason:
        pytest.skip(reason)
    root = deploy_util.make_root()
    processes = []
    try:
        app_port, http_port, https_port = (deploy_util.free_port() for _ in range(3))
        public = "https://127.0.0.1:%d" % https_port
        settings = deploy_util.settings_text(root + "/var/lib/webassets", PUBLIC_URL=public,
                                             BIND_ADDRESS="127.0.0.1", PORT=app_port)
        processes.append(deploy_util.start_webassets(root, settings, app_port))
        process, cert = deploy_util.start_nginx(root, app_port, http_port, https_port)
        processes.append(process)
        yield HTTPClient(public, ssl_context=trusting(cert)), http_port, process
    finally:
        for process in reversed(processes):
            process.stop()
        deploy_util.remove_root(root)


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
def test_nginx_unbuffered_large_upload(nginx):
    """An 8 MiB upload passes nginx (client_max_body_size) and streams to webassets.

    proxy_request_buffering off: nginx warns in its error log whenever it spools a
    request body to a temporary file; it must not have.
    """
    client, _, process = nginx
    backend = Sp7Backend(client)
    backend.init()
    store = str(uuid.uuid4()) + ".bin"
    chunks, headers, expected = deploy_util.streamed_sp7_upload(
        store, backend.generate_token(store), os.urandom(BIG_BLOCK), NGINX_BLOCKS)
    expect(client.request("POST", "/fileupload", body=chunks, headers=headers), 200, "8 MiB")
    digest = hashlib.sha256()
    expect(client.request("GET", "/fileget", query={"type": "O", "filename": store},
                          sink=digest.update), 200, "8 MiB download")
    assert digest.hexdigest() == expected
    with open(process.error_log, encoding="utf-8", errors="replace") as handle:
        log = handle.read()
    assert "client request body is buffered" not in log, log


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
        assert status == cli.EXIT_FAULT and "Permission denied" in output, output
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
        assert status == cli.EXIT_FAULT and "not permitted" in output, output
        try:
            permit = deploy_util.authbind_permit(port)
        except FileExistsError:
            pytest.skip("an authbind permission for 127.0.0.1:%d exists already" % port)
        serve_until_lifecycle(argv, root, port, cwd, jpeg)
    finally:
        if permit is not None:
            os.remove(permit)
        deploy_util.remove_root(root)
