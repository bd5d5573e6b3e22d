"""dist/webassets.pyz from bin/build-pyz: every command under `python3 -I` on 3.6 and 3.13."""

import glob
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import zipfile

import pytest

from tests import deploy_util
from tests.helpers import KEY
from tests.lifecycle import HTTPClient, sp6_lifecycle, sp7_lifecycle
from webassets import __version__, samples

needs_deploy = deploy_util.needs_deploy
BUILD = os.path.join(deploy_util.REPO, "bin", "build-pyz")
SERIES = ("3.6", "3.13")  # the oldest and the newest Python the archive must run on
# A host's service environment: no PYTHONPATH, no venv (-I ignores PYTHON* and site anyway).
CLEAN_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}


def build(output, *args):
    """Run bin/build-pyz; return its log (CalledProcessError with the log on failure)."""
    done = subprocess.run([sys.executable, BUILD, "--output", str(output)] + list(args),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
    log = done.stdout.decode("utf-8", "replace")
    assert done.returncode == 0, log
    return log


def pyenv_python(series):
    """Return the newest pyenv interpreter of `series` (e.g. 3.6), or None."""
    pyenv = shutil.which("pyenv")
    if pyenv:
        root = subprocess.check_output([pyenv, "root"]).decode().strip()
    else:
        root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    found = [path for path in glob.glob(os.path.join(root, "versions", series + ".*", "bin",
                                                     "python"))
             if re.search(r"/%s\.\d+/bin/python$" % re.escape(series), path)]
    found.sort(key=lambda path: [int(part) for part in path.split("/")[-3].split(".")])
    return found[-1] if found else None


def fake_exifread(root):
    """Return a site directory with a stand-in ExifRead 3.0.0 (package, metadata, licence)."""
    site = os.path.join(root, "site")
    os.makedirs(os.path.join(site, "exifread", "tags"))
    os.makedirs(os.path.join(site, "exifread", "__pycache__"))
    os.makedirs(os.path.join(site, "ExifRead-3.0.0.dist-info"))
    for name, text in (("exifread/__init__.py", "__version__ = '3.0.0'\n"),
                       ("exifread/tags/__init__.py", ""),
                       ("exifread/__pycache__/__init__.cpython-36.pyc", "stale"),
                       ("ExifRead-3.0.0.dist-info/METADATA", "Name: ExifRead\nVersion: 3.0.0\n"),
                       ("ExifRead-3.0.0.dist-info/LICENSE.txt", "BSD\n"),
                       ("ExifRead-3.0.0.dist-info/RECORD", "")):
        deploy_util.write(os.path.join(site, name), text)
    return site


def test_build_pyz_archive(tmp_path):
    """The archive: a shebang, __main__, the package with its XML, ExifRead and its licence,
    no bytecode; the same inputs give the same bytes; it runs."""
    site = fake_exifread(str(tmp_path))
    first, second = tmp_path / "a.pyz", tmp_path / "b.pyz"
    build(first, "--exifread", site)
    build(second, "--exifread", site)
    data = first.read_bytes()
    assert data.startswith(b"#!/usr/bin/env python3\n") and data == second.read_bytes()
    assert os.stat(str(first)).st_mode & 0o111
    names = zipfile.ZipFile(str(first)).namelist()
    assert names == sorted(names)
    for name in ("__main__.py", "webassets/__main__.py", "webassets/web_asset_store.xml",
                 "webassets/server/listener.py", "exifread/__init__.py",
                 "exifread/tags/__init__.py", "ExifRead-3.0.0.dist-info/LICENSE.txt"):
        assert name in names, name
    assert not [name for name in names if "__pycache__" in name or name.endswith(".pyc")]
    assert not [name for name in names if name.startswith(("tests/", "bench/"))]
    version = subprocess.run([sys.executable, "-I", str(first), "--version"],
                             stdout=subprocess.PIPE, env=CLEAN_ENV, cwd=str(tmp_path))
    assert version.stdout.decode().strip() == "webassets " + __version__


# --- the real archive, with the real ExifRead, on the oldest and newest Python -------------


@pytest.fixture(scope="module")
def pyz(tmp_path_factory):
    """Build the archive as the README says (ExifRead for Python 3.6: installed or pip's)."""
    output = tmp_path_factory.mktemp("pyz") / "webassets.pyz"
    build(output)
    return str(output)


@pytest.fixture(params=SERIES)
def python(request):
    found = pyenv_python(request.param)
    if found is None:
        pytest.skip("no pyenv Python %s" % request.param)
    return found


def settings_file(root, **values):
    path = os.path.join(root, "etc/webassets/settings.py")
    deploy_util.write(path, deploy_util.settings_text(os.path.join(root, "var/lib/webassets"),
                                                      **values))
    return path


def run_pyz(python, pyz, *args, cwd):
    """Run `python -I webassets.pyz ARGS`; return (status, output)."""
    done = subprocess.run([python, "-I", pyz] + list(args), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, env=CLEAN_ENV, cwd=cwd, timeout=120)
    return done.returncode, done.stdout.decode("utf-8", "replace")


@needs_deploy
def test_pyz_serves_both_lifecycles_isolated(pyz, python, tmp_path):
    """`python3 -I webassets.pyz serve` (two processes) serves Specify 7 and 6 over HTTP,
    with ExifRead from the archive (getmetadata), and stops with status 0 on SIGTERM."""
    root = str(tmp_path)
    port = deploy_util.free_port()
    settings = settings_file(root, BIND_ADDRESS="127.0.0.1", PORT=port, PROCESSES=2,
                             SERVER_NAME="127.0.0.1", SERVER_PORT=port)
    process = deploy_util.Process("webassets.pyz", [python, "-I", pyz, "serve", "--settings",
                                                    settings], root + "/serve.log",
                                  env=CLEAN_ENV, cwd=root)
    try:
        process.wait_port(port)
        jpeg = samples.sample("jpeg")[1]
        client = HTTPClient("http://127.0.0.1:%d" % port)
        sp7_lifecycle(client, jpeg)
        sp6_lifecycle(client, jpeg)
        process.popen.send_signal(signal.SIGTERM)
        assert process.popen.wait(deploy_util.STOP_TIMEOUT) == 0, process.logs()
    finally:
        process.stop()
    with open(process.log_path, encoding="utf-8", errors="replace") as handle:
        log = handle.read()
    assert "listening on 127.0.0.1:%d (2 process(es)" % port in log and "Traceback" not in log, log


@needs_deploy
def test_pyz_every_command_isolated(pyz, python, tmp_path):
    """keygen, token, check, thumbnails pregen/prune, fsck and stats all run from the archive."""
    root = str(tmp_path)
    settings = settings_file(root)
    os.makedirs(os.path.join(root, "var/lib/webassets/originals"))
    with open(os.path.join(root, "var/lib/webassets/originals/a.jpg"), "wb") as handle:
        handle.write(samples.sample("jpeg")[1])
    status, output = run_pyz(python, pyz, "keygen", cwd=root)
    assert status == 0 and re.fullmatch(r"[A-Za-z0-9_-]{43}\n", output), output
    status, output = run_pyz(python, pyz, "token", "a.jpg", "--settings", settings, cwd=root)
    assert status == 0 and re.fullmatch(r"[0-9a-f]{32}:\d+\n", output), output
    status, output = run_pyz(python, pyz, "check", "--settings", settings, cwd=root)
    assert status in (0, 1) and "[ ok ] JPEG" in output and "Traceback" not in output, output
    for args in (["thumbnails", "pregen", "-q"], ["thumbnails", "prune", "--dry-run", "-q"],
                 ["fsck", "--dry-run", "-q"]):
        status, output = run_pyz(python, pyz, *(args + ["--settings", settings]), cwd=root)
        assert status == 0 and "Traceback" not in output, (args, output)
    status, output = run_pyz(python, pyz, "stats", "--json", "-q", "--settings", settings,
                            cwd=root)
    assert status == 0, output
    assert json.loads(output)
    status, output = run_pyz(python, pyz, "--help", cwd=root)
    assert status == 0 and "serve" in output
    # -I leaves the interpreter's own site-packages on the path: ExifRead must be the archive's.
    done = subprocess.run([python, "-I", "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                           "import exifread; print(exifread.__file__)", pyz],
                          stdout=subprocess.PIPE, env=CLEAN_ENV, cwd=root)
    assert done.stdout.decode().strip() == os.path.join(pyz, "exifread", "__init__.py")


@needs_deploy
def test_pyz_readme_exec_start_as_a_service_user(pyz):
    """The README's ExecStart line for the archive, with the system python3, as an
    unprivileged user with the unit's one capability, serves Specify 7 on a port below 512."""
    setpriv = deploy_util.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv (util-linux) to run the service as another user")
    port = deploy_util.low_free_port()
    if port is None:
        pytest.skip("no free loopback port below 512")
    with open(os.path.join(deploy_util.REPO, "README.md"), encoding="utf-8") as handle:
        line = re.search(r"^ExecStart=(\S+python3 -I /opt/webassets/webassets\.pyz .*)$",
                         handle.read(), re.M).group(1)
    root = deploy_util.service_root(port)
    try:
        shutil.copy(pyz, root + "/opt/webassets/webassets.pyz")
        argv = deploy_util.as_service_user(setpriv, shlex.split(deploy_util.reroot(line, root)),
                                           "net_bind_service", no_new_privs=True)
        process = deploy_util.Process("webassets.pyz", argv, root + "/service.log",
                                      env=deploy_util.SERVICE_ENV, cwd="/")
        try:
            process.wait_port(port)
            sp7_lifecycle(HTTPClient("http://127.0.0.1:%d" % port), samples.sample("jpeg")[1])
        finally:
            process.stop()
    finally:
        deploy_util.remove_root(root)


def install_pyz(pyz):
    """Return install(root) for start_apache: the archive and bin/webassets.wsgi, no venv."""
    def install(root):
        home = root + "/opt/webassets"
        os.makedirs(home + "/bin")
        shutil.copy(pyz, home + "/webassets.pyz")
        shutil.copy(os.path.join(deploy_util.REPO, "bin", "webassets.wsgi"),
                    home + "/bin/webassets.wsgi")
    return install


@needs_deploy
def test_pyz_under_mod_wsgi(pyz):
    """The README's mod_wsgi setup for the archive: python-path=webassets.pyz instead of a
    venv, the shipped bin/webassets.wsgi as the script; both lifecycles at / and /assets."""
    reason = deploy_util.apache_missing()
    if reason:
        pytest.skip(reason)
    probe = subprocess.call([deploy_util.SYSTEM_PYTHON, "-I", "-c", "import webassets"],
                            stderr=subprocess.DEVNULL, cwd="/")
    assert probe != 0, "the system Python has its own webassets: the test would prove nothing"
    root = deploy_util.make_root()
    process = None
    try:
        replace = [(deploy_util.reroot("python-home=/opt/webassets/.venv", root),
                    deploy_util.reroot("python-path=/opt/webassets/webassets.pyz", root))]
        process, port = deploy_util.start_apache(root, replace, install=install_pyz(pyz))
        client = HTTPClient("http://127.0.0.1:%d" % port)
        jpeg = samples.sample("jpeg")[1]
        for mount in ("", "/assets"):
            sp7_lifecycle(client, jpeg, mount + "/web_asset_store.xml", key=KEY)
            sp6_lifecycle(client, jpeg, mount + "/web_asset_store.xml", key=KEY)
        with open(process.error_log, encoding="utf-8", errors="replace") as handle:
            log = handle.read()
        assert "[wsgi:error]" not in log and "Traceback" not in log, log
    finally:
        if process is not None:
            process.stop()
        deploy_util.remove_root(root)
