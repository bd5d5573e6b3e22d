"""Run the etc/ deployments for real on loopback: Apache, nginx + TLS, the built-in server."""

import hashlib
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from tests.fakes import free_port  # noqa: F401 (test_deploy uses deploy_util.free_port)
from tests.helpers import COLL, KEY, SP7_BOUNDARY

logger = logging.getLogger(__name__)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ETC = os.path.join(REPO, "etc")
SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
APACHE_MODULES = "/usr/lib/apache2/modules"  # Debian's layout
SYSTEM_PYTHON = "/usr/bin/python3"  # the Python Debian's mod_wsgi is built against
APACHE_USER = "www-data"  # Debian's Apache user (base-passwd)
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0

DEPLOY = os.environ.get("WEBASSETS_DEPLOY_TESTS") == "1"
needs_deploy = pytest.mark.skipif(
    not DEPLOY, reason="deploy tests run only with WEBASSETS_DEPLOY_TESTS=1 (bin/test sets it "
                       "for one Python: they start Apache, nginx, containers and servers)")

# The paths the shipped files use; a test roots each under its own directory.
INSTALL_PATHS = ("/opt/webassets", "/etc/webassets", "/var/lib/webassets")


def which(name):
    """Return the path of a command, looking in the sbin directories too."""
    return shutil.which(name, path=SBIN_PATH)


def bind_loopback(port):
    """Bind 127.0.0.1:port and let it go again; OSError if it is taken or not allowed."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))


def read_etc(*parts):
    with open(os.path.join(ETC, *parts), encoding="utf-8") as handle:
        return handle.read()


def reroot(text, root):
    """Return `text` with every install path (/opt/webassets, ...) moved under `root`."""
    pattern = "|".join(re.escape(path) for path in INSTALL_PATHS)
    return re.sub("(?<![\\w/.-])(%s)(?![\\w-])" % pattern, lambda m: root + m.group(1), text)


def write(path, text, mode=0o644):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(path, mode)


def settings_text(base_dir, **values):
    """Return a settings.py: KEY and BASE_DIR plus `values`."""
    values = dict(KEY=KEY, BASE_DIR=base_dir, TIME_TOLERANCE=150, **values)
    return "".join("%s = %r\n" % item for item in sorted(values.items()))


def make_root():
    """Return a fresh directory that Apache's and nginx's workers (other users) can enter.

    Not under pytest's tmp_path: that is 0700 and kept after the run (with the
    200 MiB upload in it); the caller removes this one with remove_root().
    """
    root = tempfile.mkdtemp(prefix="webassets-deploy-")
    os.chmod(root, 0o755)
    return root


def remove_root(root):
    shutil.rmtree(root, ignore_errors=True)


def make_certificate(directory, host="127.0.0.1"):
    """Make a self-signed certificate for `host` with openssl; return (cert, key) paths."""
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    subprocess.check_output(
        [which("openssl"), "req", "-x509", "-nodes", "-newkey", "ec", "-pkeyopt",
         "ec_paramgen_curve:prime256v1", "-keyout", key, "-out", cert, "-days", "2",
         "-subj", "/CN=" + host, "-addext", "subjectAltName=IP:%s,DNS:localhost" % host],
        stderr=subprocess.STDOUT)
    return cert, key


class Process:
    """A server process we started, in its own process group; stop() ends exactly it."""

    def __init__(self, name, argv, log_path, env=None, cwd=None):
        self.name = name
        self.log_path = log_path
        self.log = open(log_path, "wb")
        self.popen = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, env=env, cwd=cwd,
                                      start_new_session=True)

    def wait_port(self, port, timeout=START_TIMEOUT, extra_logs=()):
        """Wait until 127.0.0.1:port accepts; else stop the process and raise RuntimeError."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                break
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        logs = self.logs(extra_logs)
        self.stop()
        raise RuntimeError("%s did not start on port %d:\n%s" % (self.name, port, logs))

    def logs(self, extra=()):
        text = []
        for path in (self.log_path,) + tuple(extra):
            try:
                with open(path, "rb") as handle:
                    tail = handle.read()[-4000:].decode("utf-8", "replace")
                text.append("--- %s\n%s" % (path, tail))
            except OSError as ex:
                text.append("--- %s: %s" % (path, ex))
        return "\n".join(text)

    def stop(self, signum=signal.SIGTERM):
        """Signal the process, wait (bounded), then kill its process group if still there."""
        if self.popen.poll() is None:
            self.popen.send_signal(signum)
            try:
                self.popen.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                logger.warning("%s ignored signal %d; killing its group", self.name, signum)
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)  # leftovers: mod_wsgi daemons, workers
        except ProcessLookupError:
            pass
        self.popen.wait(STOP_TIMEOUT)
        self.log.close()


# --- Apache + mod_wsgi ------------------------------------------------------------------

APACHE_MAIN = """\
ServerRoot "{root}/apache"
ServerName 127.0.0.1
Listen 127.0.0.1:{port}
PidFile {root}/apache/apache2.pid
DefaultRuntimeDir {root}/apache/run
Mutex file:{root}/apache/run default
ErrorLog {root}/apache/error.log
LogLevel warn wsgi:info
{user}
LoadModule mpm_event_module {modules}/mod_mpm_event.so
LoadModule authz_core_module {modules}/mod_authz_core.so
LoadModule env_module {modules}/mod_env.so
LoadModule wsgi_module {modules}/mod_wsgi.so
LoadModule reqtimeout_module {modules}/mod_reqtimeout.so
LoadModule xsendfile_module {modules}/mod_xsendfile.so
WSGISocketPrefix {root}/apache/run/wsgi
# As on Debian: conf-enabled/ (our file) at server level, then a default site whose
# virtual host must inherit the WSGIScriptAlias mounts.
Include {root}/apache/webassets.conf
<VirtualHost 127.0.0.1:{port}>
    DocumentRoot {root}/apache/www
</VirtualHost>
"""

APACHE_MODULE_FILES = ("mod_mpm_event.so", "mod_authz_core.so", "mod_env.so", "mod_wsgi.so",
                       "mod_reqtimeout.so", "mod_xsendfile.so")
APACHE_PACKAGES = {"mod_wsgi.so": "libapache2-mod-wsgi-py3",
                   "mod_xsendfile.so": "libapache2-mod-xsendfile"}


def apache_missing():
    """Return why the Apache test cannot run here, or None."""
    if which("apache2") is None:
        return "apache2 is not installed (Debian: apache2)"
    for name in APACHE_MODULE_FILES:
        if not os.path.exists(os.path.join(APACHE_MODULES, name)):
            return "%s/%s is missing (Debian: %s)" % (APACHE_MODULES, name,
                                                      APACHE_PACKAGES.get(name, "apache2-bin"))
    if not os.path.exists(SYSTEM_PYTHON):
        return SYSTEM_PYTHON + " is missing"
    probe = subprocess.call([SYSTEM_PYTHON, "-c", "import exifread, venv"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if probe != 0:
        return "ExifRead is not importable by %s (Debian: python3-exifread)" % SYSTEM_PYTHON
    return None


def apache_root():
    """Skip the test unless Apache, mod_wsgi and Debian's ExifRead are here; return make_root()."""
    reason = apache_missing()
    if reason:
        pytest.skip(reason)
    return make_root()


def copy_checkout(root):
    """Copy bin/webassets.wsgi and the package to <root>/opt/webassets (the README's checkout)."""
    home = root + "/opt/webassets"
    os.makedirs(home + "/bin")
    shutil.copy(os.path.join(REPO, "bin", "webassets.wsgi"), home + "/bin/webassets.wsgi")
    shutil.copytree(os.path.join(REPO, "webassets"), home + "/webassets",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return home


CONSOLE_SCRIPT = """\
#!{python}
import sys

from webassets.__main__ import main

sys.exit(main())
"""


def install_checkout(root):
    """Install <root>/opt/webassets as the README does: the checkout, .venv, bin/webassets.

    The venv is made by the system Python (mod_wsgi's). Tests install nothing,
    so `pip install` is replaced by what it leaves behind: a .pth naming the
    checkout (as `pip install -e` writes) and the `webassets` console script.
    ExifRead comes from Debian's python3-exifread through the system site-packages.
    """
    home = copy_checkout(root)
    venv = home + "/.venv"
    subprocess.check_call([SYSTEM_PYTHON, "-m", "venv", "--without-pip", "--system-site-packages",
                           venv])
    purelib = subprocess.check_output(
        [venv + "/bin/python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
    write(os.path.join(purelib.decode().strip(), "webassets-checkout.pth"), home + "\n")
    write(venv + "/bin/webassets", CONSOLE_SCRIPT.format(python=venv + "/bin/python"), mode=0o755)
    return home


def chown_to(path, user):
    """Give `path` to `user` (its primary group too) when running as root."""
    if os.geteuid() == 0:
        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def install_root(root, owner, install=install_checkout, **settings):
    """Lay out the documented install under `root`: install(root) (the checkout), a store
    `owner` owns at /var/lib/webassets, and /etc/webassets/settings.py with `settings`."""
    install(root)
    store = root + "/var/lib/webassets"
    os.makedirs(store)
    chown_to(store, owner)
    write(root + "/etc/webassets/settings.py", settings_text(store, **settings))


def start_apache(root, replace=(), install=install_checkout, **settings):
    """Start Apache with etc/apache/webassets.conf rerooted under `root`; return (process, port).

    `settings` go into the settings file; `replace` is (old, new) pairs for the rerooted
    conf, each of which must occur in it (RuntimeError otherwise); install(root) puts
    webassets under <root>/opt/webassets (default: the checkout and its venv).
    """
    port = free_port()
    install_root(root, APACHE_USER, install, SERVER_NAME="127.0.0.1", SERVER_PORT=port,
                 **settings)
    os.makedirs(root + "/apache/run")
    os.makedirs(root + "/apache/www")
    text = reroot(read_etc("apache", "webassets.conf"), root)
    for old, new in replace:
        if old not in text:
            raise RuntimeError("etc/apache/webassets.conf no longer mentions " + old)
        text = text.replace(old, new)
    write(root + "/apache/webassets.conf", text)
    # Root starts Apache, which then runs as www-data, as on a real system.
    user = "User %s\nGroup %s" % (APACHE_USER, APACHE_USER) if os.geteuid() == 0 else ""
    write(root + "/apache/apache2.conf",
          APACHE_MAIN.format(root=root, port=port, modules=APACHE_MODULES, user=user))
    conf = root + "/apache/apache2.conf"
    check = subprocess.Popen([which("apache2"), "-t", "-f", conf], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT)
    output = check.communicate(timeout=START_TIMEOUT)[0].decode("utf-8", "replace")
    if check.returncode != 0:
        raise RuntimeError("apache2 -t rejects the configuration:\n" + output)
    env = dict(os.environ, LANG="C")  # as Debian's /etc/apache2/envvars sets it
    env.pop("PYTHONPATH", None)  # the daemon finds webassets only where the install put it
    process = Process("apache2", [which("apache2"), "-f", conf, "-DFOREGROUND"],
                      root + "/apache/console.log", env=env)
    process.wait_port(port, extra_logs=(root + "/apache/error.log",))
    process.error_log = root + "/apache/error.log"
    return process, port


# --- nginx + TLS in front of the built-in server ------------------------------------------

NGINX_MAIN = """\
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
daemon off;
events {{ worker_connections 64; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/tmp/client_body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    include {prefix}/webassets.conf;
}}
"""
NGINX_CERT = "/etc/ssl/certs/webassets.pem"
NGINX_KEY = "/etc/ssl/private/webassets.key"
NGINX_UPSTREAM = "127.0.0.1:8080"


def nginx_missing():
    """Return why the nginx test cannot run here, or None."""
    if which("nginx") is None:
        return "nginx is not installed (Debian: nginx)"
    if which("openssl") is None:
        return "openssl is not installed (Debian: openssl)"
    return None


def nginx_site(text, http_port, https_port, app_port, cert, key):
    """Return etc/nginx/webassets.conf for loopback: listen addresses, upstream, cert paths."""
    lines = []
    for line in text.splitlines(True):
        if re.match(r"\s*listen\s+\[::\]", line):
            continue  # one loopback address is enough for the test
        line = re.sub(r"^(\s*listen\s+)443\b", r"\g<1>127.0.0.1:%d" % https_port, line)
        line = re.sub(r"^(\s*listen\s+)80\b", r"\g<1>127.0.0.1:%d" % http_port, line)
        lines.append(line)
    text = "".join(lines)
    for old, new in ((NGINX_UPSTREAM, "127.0.0.1:%d" % app_port), (NGINX_CERT, cert),
                     (NGINX_KEY, key)):
        if old not in text:
            raise RuntimeError("etc/nginx/webassets.conf no longer mentions " + old)
        text = text.replace(old, new)
    return text


def start_webassets(root, settings, port):
    """Start `python -m webassets serve` on loopback `port`; return the Process."""
    path = root + "/etc/webassets/settings.py"
    write(path, settings)
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    argv = [sys.executable, "-m", "webassets", "serve", "--settings", path,
            "--host", "127.0.0.1", "--port", str(port)]
    process = Process("webassets", argv, root + "/webassets.log", env=env, cwd=root)
    process.wait_port(port)
    return process


def start_nginx(root, app_port, http_port, https_port):
    """Start nginx with etc/nginx/webassets.conf on loopback; return (process, cert path)."""
    prefix = root + "/nginx"
    for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        os.makedirs(prefix + "/tmp/" + name)
    cert, key = make_certificate(prefix)
    site = reroot(read_etc("nginx", "webassets.conf"), root)  # the internal location's alias
    write(prefix + "/webassets.conf", nginx_site(site, http_port, https_port, app_port, cert, key))
    write(prefix + "/nginx.conf", NGINX_MAIN.format(prefix=prefix))
    argv = [which("nginx"), "-p", prefix, "-c", prefix + "/nginx.conf", "-e", prefix + "/error.log"]
    check = subprocess.Popen(argv + ["-t"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = check.communicate(timeout=START_TIMEOUT)[0].decode("utf-8", "replace")
    if check.returncode != 0:
        raise RuntimeError("nginx -t rejects the configuration:\n" + output)
    process = Process("nginx", argv, prefix + "/console.log")
    process.wait_port(https_port, extra_logs=(prefix + "/error.log",))
    process.error_log = prefix + "/error.log"
    return process, cert


# --- large streamed uploads -------------------------------------------------------------

def streamed_sp7_upload(store, tok, block, count, coll=COLL):
    """Return (chunks, headers, sha256 hex) of a Specify 7 upload of `block` * `count`.

    The body is generated while it is sent, so hundreds of MiB cost no memory.
    """
    head = ('--%s\r\nContent-Disposition: form-data; name="file"; filename="big.bin"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n" % SP7_BOUNDARY).encode("ascii")
    tail = b"".join(b'\r\n--%s\r\nContent-Disposition: form-data; name="%s"\r\n\r\n%s'
                    % (SP7_BOUNDARY.encode("ascii"), name.encode("ascii"), value.encode("utf-8"))
                    for name, value in (("token", tok), ("store", store), ("type", "O"),
                                        ("coll", coll)))
    tail += b"\r\n--%s--\r\n" % SP7_BOUNDARY.encode("ascii")
    digest = hashlib.sha256()
    for _ in range(count):
        digest.update(block)

    def chunks():
        yield head
        for _ in range(count):
            yield block
        yield tail

    headers = {"Content-Type": "multipart/form-data; boundary=" + SP7_BOUNDARY,
               "Content-Length": str(len(head) + len(block) * count + len(tail))}
    return chunks(), headers, digest.hexdigest()


# --- the systemd unit and the upstart job, run as their unprivileged user --------------

SERVICE_USER = "nobody"  # stands in for the `webassets` user the files name
SERVICE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
               "LANG": "C.UTF-8"}  # roughly what systemd and upstart give a service


def low_free_port(first=400, last=511):
    """Return a free loopback port below 512 (authbind wants '!' files for 512-1023), or None."""
    for port in range(first, last + 1):
        try:
            bind_loopback(port)
            return port
        except OSError:
            continue
    return None


def service_root(port):
    """Return a root with the install, settings (127.0.0.1:port) and a store SERVICE_USER owns."""
    root = make_root()
    install_root(root, SERVICE_USER, BIND_ADDRESS="127.0.0.1", PORT=port,
                 SERVER_NAME="127.0.0.1", SERVER_PORT=port)
    return root


def as_service_user(setpriv, argv, capability=None, no_new_privs=False):
    """Return argv run as SERVICE_USER by setpriv, optionally keeping one ambient capability.

    `capability` ('net_bind_service') reproduces AmbientCapabilities= plus
    CapabilityBoundingSet=; `no_new_privs` reproduces NoNewPrivileges=.
    """
    entry = pwd.getpwnam(SERVICE_USER)
    command = [setpriv, "--reuid=%d" % entry.pw_uid, "--regid=%d" % entry.pw_gid, "--clear-groups"]
    if capability:
        command += ["--inh-caps=+" + capability, "--ambient-caps=+" + capability,
                    "--bounding-set=-all,+" + capability]
    else:
        command += ["--inh-caps=-all"]
    if no_new_privs:
        command.append("--no-new-privs")
    return command + list(argv)


def run_refused(argv, cwd):
    """Run a server command that must fail to start; return its exit status and output."""
    process = subprocess.Popen(argv, env=SERVICE_ENV, cwd=cwd, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        output = process.communicate(timeout=START_TIMEOUT)[0]
    except subprocess.TimeoutExpired:
        process.kill()
        output = process.communicate()[0]
        raise AssertionError("the server started although it should not have:\n%r" % output)
    return process.returncode, output.decode("utf-8", "replace")


def authbind_permit(port, user=SERVICE_USER):
    """Create /etc/authbind/byaddr/127.0.0.1,PORT for `user` (README: chmod 500); return its path.

    Raises FileExistsError rather than touch an existing permission.
    """
    path = "/etc/authbind/byaddr/127.0.0.1,%d" % port
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o500))
    chown_to(path, user)
    return path


# --- what the front server did: offloaded files, access logs, slow clients ---------------

def app_etag(path):
    """Return the ETag webassets itself gives the file at `path` (httputil.file_response)."""
    stat = os.stat(path)
    return '"%x-%x"' % (stat.st_mtime_ns, stat.st_size)


_ACCESS_LINE = re.compile(r'"(?P<method>[A-Z]+) (?P<target>\S+) HTTP/[\d.]+" (?P<status>\d{3}) '
                          r'(?P<bytes>\d+|-) ')


def access_log_bytes(log_path, path):
    """Return [(status, body bytes sent)] of the built-in server's access-log lines for `path`."""
    with open(log_path, encoding="utf-8", errors="replace") as handle:
        matches = (_ACCESS_LINE.search(line) for line in handle)
        return [(int(m.group("status")), 0 if m.group("bytes") == "-" else int(m.group("bytes")))
                for m in matches if m and m.group("target").split("?")[0] == path]


def trickle_head(port, interval, give_up):
    """Send a request head one byte per `interval` s; return (seconds until the server
    answered or closed, what it answered), or (None, b"") if it still waited after `give_up` s.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=give_up) as sock:
        started = time.monotonic()
        sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        sock.settimeout(interval)
        while time.monotonic() - started < give_up:
            try:
                answer = sock.recv(4096)
                return time.monotonic() - started, answer
            except socket.timeout:
                pass
            try:
                sock.sendall(b"X")
            except OSError:
                return time.monotonic() - started, b""
        return None, b""


def slow_upload(port, path, head_and_body, rate, stall_after=None, give_up=30.0):
    """POST `head_and_body` (request head + body bytes) at `rate` bytes/s; stop sending
    after `stall_after` bytes if given. Return (status or None if cut, seconds taken).
    """
    with socket.create_connection(("127.0.0.1", port), timeout=give_up) as sock:
        started = time.monotonic()
        block = max(1, rate // 10)
        limit = len(head_and_body) if stall_after is None else stall_after
        sent = 0
        try:
            while sent < limit:
                piece = head_and_body[sent:min(sent + block, limit)]
                sock.sendall(piece)
                sent += len(piece)
                time.sleep(len(piece) / rate)
            answer = sock.recv(4096)
        except OSError:
            answer = b""
        took = time.monotonic() - started
        match = re.match(rb"HTTP/1\.[01] (\d{3}) ", answer)
        return (int(match.group(1)) if match else None), took
