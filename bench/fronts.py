"""Apache mod_wsgi and nginx started from the shipped etc/ files, rewritten for a loopback run."""

import logging
import os
import re
import signal

import procs
from procs import HOST, REPO

logger = logging.getLogger(__name__)

SHIPPED_APACHE = os.path.join(REPO, "etc", "apache", "webassets.conf")
SHIPPED_NGINX = os.path.join(REPO, "etc", "nginx", "webassets.conf")
# The install paths the shipped files name, replaced by this run's.
INSTALL_ROOT = "/opt/webassets"
SETTINGS_PATH = "/etc/webassets/settings.py"
STORE_PATH = "/var/lib/webassets"

# What Debian's apache2.conf and its default modules set, as far as it matters here: the
# shipped file is included into exactly that (after procs.write_apache_conf's head).
_APACHE = """Timeout 300
KeepAlive On
MaxKeepAliveRequests 100
KeepAliveTimeout 5
{modules}
{debian}
WSGISocketPrefix {prefix}/run/wsgi
# ---- {shipped}, with this run's paths:
{site}
"""
# Debian's defaults when its own files are not there to include.
_DEBIAN_MPM = """StartServers 2
MinSpareThreads 25
MaxSpareThreads 75
ThreadLimit 64
ThreadsPerChild 25
MaxRequestWorkers 150
MaxConnectionsPerChild 0"""
_DEBIAN_REQTIMEOUT = "RequestReadTimeout header=20-40,minrate=500\n" \
                     "RequestReadTimeout body=10,minrate=500"
# Modules Debian enables by default (mpm_event, reqtimeout, ...) plus those a shipped
# directive needs: (module name, file, directive that needs it or None for always).
_APACHE_MODULES = (
    ("mpm_event_module", "mod_mpm_event.so", None),
    ("authz_core_module", "mod_authz_core.so", None),
    ("env_module", "mod_env.so", None),
    ("reqtimeout_module", "mod_reqtimeout.so", None),
    ("wsgi_module", "mod_wsgi.so", None),
    ("headers_module", "mod_headers.so", "Header"),
    ("setenvif_module", "mod_setenvif.so", "SetEnvIf"),
    ("alias_module", "mod_alias.so", "Alias"),
    ("xsendfile_module", "mod_xsendfile.so", "XSendFile"),
)

# What Debian's nginx.conf adds around a site file, as far as it matters here.
_NGINX_SITE = """    types_hash_max_size 2048;
    {mime}
    # ---- {shipped}, plain HTTP, with this run's paths:
{site}"""


def shipped_apache_site(settings, store, text=None):
    """Return etc/apache/webassets.conf with this checkout, settings file and store in it.

    mod_wsgi runs Debian's Python with this checkout on its path instead of /opt's venv.
    """
    if text is None:
        with open(SHIPPED_APACHE) as f:
            text = f.read()
    text = re.sub(r"python-home=\S+", "python-path=" + REPO, text)
    text = text.replace(SETTINGS_PATH, settings).replace(STORE_PATH, store.rstrip("/"))
    return text.replace(INSTALL_ROOT, REPO)


def apache_offload(text=None):
    """Return True when the shipped Apache file turns X-Sendfile on (mod_xsendfile)."""
    if text is None:
        with open(SHIPPED_APACHE) as f:
            text = f.read()
    return re.search(r"^\s*XSendFile\s+On", text, re.M | re.I) is not None


def start_shipped_apache(processes, run_dir, store, extra_settings=""):
    """Start Apache with etc/apache/webassets.conf over `store`; return the Server or None.

    As root, the daemon runs as www-data, so `store` must be writable by it (the caller
    chowns it). Returns None (logged) when Apache or mod_wsgi is missing.
    """
    missing = procs.apache_missing()
    if missing:
        logger.warning("Skipping Apache mod_wsgi: %s", missing)
        return None
    port = procs.free_port()
    prefix = os.path.join(run_dir, "apache-shipped")
    settings = os.path.join(run_dir, "apache_shipped_settings.py")
    procs.write_settings(settings, store, port, extra_settings)
    with open(SHIPPED_APACHE) as f:
        shipped = f.read()
    site = shipped_apache_site(settings, store, shipped)
    modules = []
    for name, filename, directive in _APACHE_MODULES:
        path = os.path.join(procs.APACHE_MODULES, filename)
        if directive is None or re.search(r"^\s*%s\b" % directive, site, re.M):
            if not os.path.exists(path):
                raise RuntimeError("the shipped Apache conf needs %s, which is missing" % path)
            modules.append("LoadModule %s %s" % (name, path))
    debian = []
    for own, fallback in (("mpm_event.conf", _DEBIAN_MPM),
                          ("reqtimeout.conf", _DEBIAN_REQTIMEOUT)):
        path = os.path.join("/etc/apache2/mods-available", own)
        debian.append("Include %s" % path if os.path.exists(path) else fallback)
    conf = procs.write_apache_conf(prefix, port, _APACHE.format(
        prefix=prefix, modules="\n".join(modules), debian="\n".join(debian),
        shipped=os.path.relpath(SHIPPED_APACHE, REPO), site=site))
    return procs.run_apache(processes, "apache-shipped", conf, port)


def shipped_nginx_site(port, backend_port, store, text=None):
    """Return etc/nginx/webassets.conf for plain HTTP on `port` in front of `backend_port`.

    The port-80 redirect server is dropped, the TLS server listens on HOST:port without
    TLS, the upstream is the backend's port and the internal location aliases `store`.
    Raises RuntimeError if the shipped file no longer has the parts rewritten here.
    """
    if text is None:
        with open(SHIPPED_NGINX) as f:
            text = f.read()
    text, redirects = re.subn(r"server\s*\{[^{}]*return\s+301[^{}]*\}", "", text)
    text, upstreams = re.subn(r"server\s+127\.0\.0\.1:\d+", "server %s:%d" % (HOST, backend_port),
                              text)
    text, listens = re.subn(r"^(\s*)listen\s+443\s+ssl[^;]*;", r"\1listen %s:%d;" % (HOST, port),
                            text, flags=re.M)
    if not (redirects and upstreams and listens):
        raise RuntimeError("%s changed shape: expected a port-80 redirect server, an upstream "
                           "on 127.0.0.1 and 'listen 443 ssl'" % SHIPPED_NGINX)
    text = re.sub(r"^\s*listen\s+\[::\][^;]*;\n", "", text, flags=re.M)
    text = re.sub(r"^\s*(ssl_\w+|http2)\s[^;]*;\n", "", text, flags=re.M)
    return text.replace(STORE_PATH + "/", store.rstrip("/") + "/")


def nginx_internal_prefix(text=None):
    """Return the shipped nginx file's `internal` location (for FILE_OFFLOAD_PREFIX), or None."""
    if text is None:
        with open(SHIPPED_NGINX) as f:
            text = f.read()
    match = re.search(r"location\s+(\S+)\s*\{\s*internal;", text)
    return match.group(1) if match else None


def start_shipped_nginx(processes, run_dir, backend_port, store):
    """Start nginx with etc/nginx/webassets.conf in front of `backend_port`.

    Returns the Server, or None when nginx is not installed.
    """
    nginx = procs.nginx_path()
    if not nginx:
        return None
    port = procs.free_port()
    prefix = os.path.join(run_dir, "nginx-front")
    site = shipped_nginx_site(port, backend_port, store)
    mime = "include /etc/nginx/mime.types;" if os.path.exists("/etc/nginx/mime.types") else ""
    conf = procs.write_nginx_conf(prefix, _NGINX_SITE.format(
        mime=mime, site=site, shipped=os.path.relpath(SHIPPED_NGINX, REPO)), connections=768)
    argv = [nginx, "-e", os.path.join(prefix, "error.log"), "-p", prefix, "-c", conf]
    return processes.start("nginx-front", argv, port, stop_signal=signal.SIGQUIT)
