"""Start, measure and stop the servers the benchmark runs, all on 127.0.0.1."""

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(REPO, "bench")
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0

KEY = "bench-attachment-key"
COLL = "Bench Collection"

_SETTINGS = """# Written by bench/run.py for one benchmark run.
KEY = {key!r}
BASE_DIR = {base_dir!r}
BIND_ADDRESS = {host!r}
HOST = {host!r}
PORT = {port!r}
SERVER_NAME = {host!r}
SERVER_PORT = {port!r}
MAX_UPLOAD_SIZE = {max_upload!r}
{extra}"""

_NGINX = """daemon off;
master_process on;
{user}
worker_processes auto;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections {connections}; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    default_type application/octet-stream;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
{http}
}}
"""

_NGINX_STATIC = """    tcp_nodelay on;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    server {{
        listen {host}:{port} backlog=4096;
        root {root};
        location / {{ }}
    }}"""


def write_nginx_conf(prefix, http, connections=4096):
    """Write `prefix`/nginx.conf for an nginx in the foreground under `prefix`; return its path.

    `http` goes inside the http block, after what every nginx of the benchmark shares.
    """
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        os.makedirs(os.path.join(prefix, "tmp", sub), exist_ok=True)
    # Workers run as 'nobody' under a root master unless told otherwise; the files are ours.
    user = "user root;" if os.geteuid() == 0 else ""
    conf = os.path.join(prefix, "nginx.conf")
    with open(conf, "w") as f:
        f.write(_NGINX.format(prefix=prefix, user=user, connections=connections, http=http))
    return conf


# What every Apache of the benchmark starts with: its own root, address, pid file, logs, user.
_APACHE_HEAD = """ServerRoot "{prefix}"
ServerName 127.0.0.1
Listen {host}:{port}
PidFile {prefix}/apache2.pid
DefaultRuntimeDir {prefix}/run
Mutex file:{prefix}/run default
ErrorLog {prefix}/error.log
LogLevel warn
{user}
"""
_APACHE = """LoadModule mpm_event_module {modules}/mod_mpm_event.so
LoadModule authz_core_module {modules}/mod_authz_core.so
LoadModule env_module {modules}/mod_env.so
LoadModule wsgi_module {modules}/mod_wsgi.so
WSGISocketPrefix {prefix}/run/wsgi
# As etc/apache/webassets.conf ships it: daemon mode, 2 processes x 15 threads, sendfile.
WSGIDaemonProcess bench processes=2 threads=15 python-path={repo} lang=C.UTF-8 locale=C.UTF-8
WSGIScriptAlias / {repo}/bin/webassets.wsgi process-group=bench application-group=%{{GLOBAL}}
SetEnv WEBASSETS_SETTINGS {settings}
EnableSendfile On
WSGIEnableSendfile On
LimitRequestBody 0
<Directory {repo}/bin>
    <Files webassets.wsgi>
        Require all granted
    </Files>
</Directory>
"""
APACHE_MODULES = "/usr/lib/apache2/modules"  # Debian's layout
APACHE_MODULE_FILES = ("mod_mpm_event.so", "mod_authz_core.so", "mod_env.so", "mod_wsgi.so")
SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])


def free_port():
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def proc_status(pid):
    """Return /proc/<pid>/status memory fields in KiB: {'VmRSS': n, 'VmHWM': n}, or {}."""
    fields = {}
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                name, _, value = line.partition(":")
                if name in ("VmRSS", "VmHWM"):
                    fields[name] = int(value.split()[0])
    except OSError:
        pass
    return fields


def _cpu_seconds(pid, reaped=False):
    """Return the user+system CPU seconds of `pid` (with `reaped`: and of its reaped children)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = sum(int(value) for value in fields[11:15 if reaped else 13])
    return ticks / float(os.sysconf("SC_CLK_TCK"))


def children(pid):
    """Return the pids of `pid`'s direct children (from /proc/<pid>/task/*/children)."""
    found = []
    try:
        tasks = os.listdir("/proc/%d/task" % pid)
    except OSError:
        return found
    for task in tasks:
        try:
            with open("/proc/%d/task/%s/children" % (pid, task)) as f:
                found.extend(int(child) for child in f.read().split())
        except OSError:
            pass
    return found


def _family(pid):
    """Return pid and its descendants (nginx's workers), from /proc/<pid>/task/*/children."""
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        queue.extend(children(current))
    return found


class Server:
    """A process this benchmark started: its name, Popen, port and log file."""

    def __init__(self, name, popen, port, log_path, stop_signal=signal.SIGTERM):
        self.name = name
        self.popen = popen
        self.port = port
        self.log_path = log_path
        self.stop_signal = stop_signal

    @property
    def pid(self):
        return self.popen.pid

    def rss_kib(self):
        """Return the resident set size in KiB of the process and its children (0 if unknown)."""
        return sum(proc_status(pid).get("VmRSS", 0) for pid in _family(self.pid))

    def peak_kib(self):
        """Return the summed peak resident set sizes (VmHWM) in KiB of the process family."""
        return sum(proc_status(pid).get("VmHWM", 0) for pid in _family(self.pid))

    def reset_peak(self):
        """Reset VmHWM to the current RSS (Linux clear_refs 5); return False if not allowed."""
        try:
            for pid in _family(self.pid):
                with open("/proc/%d/clear_refs" % pid, "w") as f:
                    f.write("5")
            return True
        except OSError:
            return False

    def cpu_seconds(self, reaped=False):
        """Return user+system CPU seconds of the process and its live children (0 if unknown).

        With `reaped`, the children they have waited for count too (a worker's converters).
        """
        return sum(_cpu_seconds(pid, reaped) for pid in _family(self.pid))

    def alive(self):
        return self.popen.poll() is None

    def stop(self):
        """Stop the process (its signal, then SIGKILL after STOP_TIMEOUT); never raises."""
        if self.popen.poll() is not None:
            return
        try:
            self.popen.send_signal(self.stop_signal)
            self.popen.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            logger.warning("%s (pid %d) did not stop; killing it", self.name, self.pid)
            self.popen.kill()
            self.popen.wait()
        except OSError:
            pass


class Processes:
    """Every server started in one run; stop_all() ends them in reverse order."""

    def __init__(self, log_dir):
        self.log_dir = log_dir
        self.servers = []
        os.makedirs(log_dir, exist_ok=True)

    def start(self, name, argv, port, cwd=None, env=None, stop_signal=signal.SIGTERM):
        """Start argv, wait until it accepts on `port`; return the Server.

        Raises RuntimeError (with the log's tail) if it exits or does not listen in time.
        """
        log_path = os.path.join(self.log_dir, name + ".log")
        log = open(log_path, "wb")
        try:
            popen = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                     stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        finally:
            log.close()
        server = Server(name, popen, port, log_path, stop_signal)
        self.servers.append(server)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if not server.alive():
                break
            try:
                socket.create_connection((HOST, port), timeout=1).close()
                return server
            except OSError:
                time.sleep(0.05)
        server.stop()
        raise RuntimeError("%s did not start; see %s:\n%s" % (name, log_path, _tail(log_path)))

    def stop_all(self):
        for server in reversed(self.servers):
            server.stop()
        self.servers = []


def _tail(path, size=2000):
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - size))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def write_settings(path, base_dir, port, extra=""):
    """Write a webassets settings.py for a loopback server over `base_dir`."""
    with open(path, "w") as f:
        f.write(_SETTINGS.format(key=KEY, base_dir=base_dir, host=HOST, port=port,
                                 max_upload=64 * 1024 ** 3, extra=extra))


def start_webassets(procs, name, run_dir, base_dir, python, extra=""):
    """Start `python -m webassets serve` (the built-in server) over `base_dir`."""
    port = free_port()
    settings = os.path.join(run_dir, name + "_settings.py")
    write_settings(settings, base_dir, port, extra)
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    argv = [python, "-m", "webassets", "serve", "--settings", settings,
            "--host", HOST, "--port", str(port)]
    return procs.start(name, argv, port, cwd=REPO, env=env)


def start_http_server(procs, root, python):
    """Start `python -m http.server` serving `root`: the pure-Python floor."""
    port = free_port()
    argv = [python, "-m", "http.server", "--bind", HOST, str(port)]
    return procs.start("http.server", argv, port, cwd=root)


def nginx_path():
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.path.exists(p)), None)


def start_nginx(procs, run_dir, root, name="nginx"):
    """Start nginx serving `root`, or return None (with a message) if nginx is not installed."""
    nginx = nginx_path()
    if not nginx:
        logger.warning("nginx not installed: skipping the nginx floors (apt-get install nginx)")
        return None
    port = free_port()
    prefix = os.path.join(run_dir, name)
    conf = write_nginx_conf(prefix, _NGINX_STATIC.format(host=HOST, port=port, root=root))
    argv = [nginx, "-e", os.path.join(prefix, "error.log"), "-p", prefix, "-c", conf]
    return procs.start(name, argv, port, stop_signal=signal.SIGQUIT)


def write_apache_conf(prefix, port, body):
    """Write `prefix`/apache2.conf for an Apache on HOST:`port`; return its path.

    `body` follows the head every Apache of the benchmark shares. As root, the
    children run as www-data.
    """
    os.makedirs(os.path.join(prefix, "run"), exist_ok=True)
    user = "User www-data\nGroup www-data" if os.geteuid() == 0 else ""
    conf = os.path.join(prefix, "apache2.conf")
    with open(conf, "w") as f:
        f.write(_APACHE_HEAD.format(prefix=prefix, host=HOST, port=port, user=user) + body)
    return conf


def run_apache(procs, name, conf, port):
    """Start Apache in the foreground on `conf` (from write_apache_conf); return the Server."""
    argv = [shutil.which("apache2", path=SBIN_PATH), "-f", conf, "-DFOREGROUND"]
    env = dict(os.environ, APACHE_RUN_DIR=os.path.join(os.path.dirname(conf), "run"))
    return procs.start(name, argv, port, env=env, stop_signal=signal.SIGTERM)


def apache_missing():
    """Return why Apache + mod_wsgi cannot run here, or None."""
    if shutil.which("apache2", path=SBIN_PATH) is None:
        return "apache2 is not installed"
    for name in APACHE_MODULE_FILES:
        if not os.path.exists(os.path.join(APACHE_MODULES, name)):
            return "%s is missing (Debian: libapache2-mod-wsgi-py3)" % name
    # mod_wsgi runs Debian's own Python, which needs ExifRead (python3-exifread).
    if subprocess.call(["/usr/bin/python3", "-c", "import exifread"], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL) != 0:
        return "ExifRead is not importable by /usr/bin/python3 (Debian: python3-exifread)"
    return None


def start_apache(procs, run_dir, base_dir):
    """Start Apache + mod_wsgi (daemon mode) over `base_dir`, or return None with a message.

    As root, Apache's children run as www-data, which only reads the store: GET cases only.
    """
    missing = apache_missing()
    if missing:
        logger.warning("Skipping Apache mod_wsgi: %s", missing)
        return None
    port = free_port()
    prefix = os.path.join(run_dir, "apache")
    settings = os.path.join(run_dir, "apache_settings.py")
    write_settings(settings, base_dir, port)
    conf = write_apache_conf(prefix, port, _APACHE.format(
        prefix=prefix, repo=REPO, modules=APACHE_MODULES, settings=settings))
    return run_apache(procs, "apache", conf, port)


def start_sink(procs, directory, python):
    """Start the bare socket reader that writes upload bodies to `directory`."""
    port = free_port()
    argv = [python, os.path.join(BENCH, "sink.py"), HOST, str(port), directory]
    return procs.start("sink", argv, port)


def python_version(python):
    """Return `python --version` of an interpreter."""
    result = subprocess.run([python, "--version"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    return result.stdout.decode("utf-8", "replace").strip()


def default_python():
    return sys.executable
