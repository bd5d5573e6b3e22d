"""Build etc/docker/Dockerfile with podman and run its entrypoint as a container runtime would."""

# No registry is reachable and full container runs fail on this kernel's cgroup setup, so:
# the base image is made locally (debootstrap, imported under the Dockerfile's FROM name),
# the image is built with `podman build --isolation chroot`, and a "container" is the image's
# entrypoint run from the mounted image in new mount, PID and network namespaces, chrooted,
# as the image's user, with the image's environment plus the one compose gives it.

import calendar
import concurrent.futures
import ctypes
import glob
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

from tests.deploy_util import REPO, which

logger = logging.getLogger(__name__)

DOCKERFILE = os.path.join(REPO, "etc", "docker", "Dockerfile")
TEST_IMAGE = "localhost/webassets-test:latest"
BUILD_TIMEOUT = 1200
BASE_MAX_AGE = 14 * 24 * 3600  # seconds
START_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0
CLONE_NEWNET = 0x40000000
# What Debian's -slim images leave out (debuerreotype's slimify), so the local base is alike.
SLIM_DPKG_CFG = """\
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/lintian/overrides/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/locale/*
path-exclude /usr/share/man/*
"""
SLIM_REMOVE = ("usr/share/doc/*/*", "usr/share/groff/*", "usr/share/info/*",
               "usr/share/linda/*", "usr/share/lintian/overrides/*", "usr/share/locale/*",
               "usr/share/man/*", "var/cache/apt/*.bin", "var/cache/apt/archives/*.deb",
               "var/lib/apt/lists/*_*")
# The setup inside the new namespaces (host tools), before the image's entrypoint takes over:
# what a runtime gives a container (/proc, /dev nodes, a private /tmp, loopback, the volume).
NAMESPACE_SETUP = """\
set -e
root=$1 volume_source=$2 volume_target=$3 user=$4 groups=$5 workdir=$6
shift 6
ip link set lo up
mount -t proc -o nosuid,nodev,noexec proc "$root/proc"
mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs "$root/tmp"
mount -t tmpfs -o nosuid,mode=0755 tmpfs "$root/dev"
for node in null zero full random urandom; do
    touch "$root/dev/$node"
    mount --bind "/dev/$node" "$root/dev/$node"
done
mount --bind "$volume_source" "$root$volume_target"
exec chroot --userspec="$user" --groups="$groups" "$root" /usr/bin/env -i -C "$workdir" "$@"
"""


def container_missing():
    """Return why the image cannot be built and run here, or None."""
    if os.geteuid() != 0:
        return "needs root (podman image mount, namespaces, chroot)"
    for tool, package in (("podman", "podman"), ("debootstrap", "debootstrap"),
                          ("unshare", "util-linux"), ("nsenter", "util-linux"),
                          ("chroot", "coreutils"), ("ip", "iproute2")):
        if which(tool) is None:
            return "%s is not installed (Debian: %s)" % (tool, package)
    if debian_mirror() is None:
        return "no Debian mirror in /etc/apt/sources.list* for debootstrap"
    probe = subprocess.call([which("unshare"), "--mount", "--pid", "--net", "--fork", "true"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if probe != 0:
        return "this machine allows no new mount, PID and network namespaces"
    return None


def run(argv, log, timeout=BUILD_TIMEOUT, stdin=subprocess.DEVNULL):
    """Run a command with its output appended to the open file `log`; raise on failure."""
    log.write(("\n$ %s\n" % " ".join(argv)).encode("utf-8"))
    log.flush()
    subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, stdin=stdin, timeout=timeout,
                   check=True)


def podman(*args):
    """Run podman; return its standard output as text (CalledProcessError on failure)."""
    return subprocess.run([which("podman")] + list(args), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, check=True,
                          timeout=BUILD_TIMEOUT).stdout.decode("utf-8", "replace")


def debian_mirror():
    """Return the Debian archive URL apt is configured with on this machine, or None.

    Read at run time: the tests name no mirror host.
    """
    paths = sorted(glob.glob("/etc/apt/sources.list") + glob.glob("/etc/apt/sources.list.d/*"))
    for path in paths:
        if not path.endswith((".list", ".sources")):
            continue
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                text = handle.read()
        except OSError:
            continue
        for line in text.splitlines():
            line = line.split("#", 1)[0]
            for url in re.findall(r"(https?://\S+)", line):
                if line.strip().startswith(("deb ", "URIs:")) and \
                        re.search(r"/debian/?$", url):
                    return url.rstrip("/")
    return None


def base_image():
    """Return the fully qualified name of the Dockerfile's FROM image."""
    with open(DOCKERFILE, encoding="utf-8") as handle:
        name = re.search(r"^FROM\s+(\S+)", handle.read(), re.M).group(1)
    first = name.split("/", 1)[0]
    if "/" not in name:
        return "docker.io/library/" + name
    if "." not in first and ":" not in first and first != "localhost":
        return "docker.io/" + name
    return name


def image_exists(name):
    return subprocess.call([which("podman"), "image", "exists", name]) == 0


def image_age(name):
    """Return how many seconds ago podman made image `name`."""
    created = inspect_image(name)["Created"]  # e.g. 2026-12-02T06:58:08.123456789Z
    return time.time() - calendar.timegm(time.strptime(created[:19], "%Y-%m-%dT%H:%M:%S"))


def make_base_image(name, log):
    """Debootstrap Debian stable (minbase, slimmed) and import it as `name`; return seconds.

    Reuses `name` while podman has it (its storage persists between runs) and it is younger
    than BASE_MAX_AGE, so the image gets stable's updates now and then.
    """
    if image_exists(name) and image_age(name) < BASE_MAX_AGE:
        return 0.0
    started = time.monotonic()
    suite = name.rsplit(":", 1)[1].split("-")[0] if ":" in name else "stable"
    rootfs = tempfile.mkdtemp(prefix="webassets-debootstrap-")
    try:
        run([which("debootstrap"), "--variant=minbase", suite, rootfs, debian_mirror()], log)
        with open(os.path.join(rootfs, "etc/dpkg/dpkg.cfg.d/docker-slim"), "w") as handle:
            handle.write(SLIM_DPKG_CFG)
        for pattern in SLIM_REMOVE:
            for path in glob.glob(os.path.join(rootfs, pattern)):
                if path.endswith("/copyright"):
                    continue
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path)
                elif os.path.lexists(path):  # NOTE: gone already if reached through a link
                    os.unlink(path)
        tar = subprocess.Popen(["tar", "--numeric-owner", "-C", rootfs, "-c", "."],
                               stdout=subprocess.PIPE)
        try:
            run([which("podman"), "import", "--change", 'CMD ["bash"]', "-", name], log,
                stdin=tar.stdout)
        finally:
            tar.stdout.close()
            if tar.wait() != 0:
                raise RuntimeError("tar of the debootstrap root failed")
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)
    return time.monotonic() - started


def build_image(log):
    """Build etc/docker/Dockerfile as TEST_IMAGE (podman's layer cache on); return seconds."""
    started = time.monotonic()
    run([which("podman"), "build", "--isolation", "chroot", "--format", "docker",
         "--pull=never", "--layers", "-f", DOCKERFILE, "-t", TEST_IMAGE, REPO], log)
    return time.monotonic() - started


def inspect_image(name=TEST_IMAGE):
    """Return `podman image inspect` of `name` as a dict."""
    return json.loads(podman("image", "inspect", name))[0]


def healthcheck(inspected):
    """Return the image's HEALTHCHECK test as a list (["CMD", ...]) or None."""
    check = (inspected.get("HealthCheck") or inspected.get("Healthcheck")
             or inspected.get("Config", {}).get("Healthcheck"))
    return (check or {}).get("Test")


def resolve_user(rootfs, user):
    """Return (uid, gid, home) of the image's USER ("name", "uid" or "uid:gid")."""
    name, _, group = (user or "0").partition(":")
    entries = {}
    with open(os.path.join(rootfs, "etc/passwd"), encoding="utf-8") as handle:
        for line in handle:
            fields = line.strip().split(":")
            if len(fields) >= 6:
                entry = (int(fields[2]), int(fields[3]), fields[5])
                entries[fields[0]] = entries[fields[2]] = entry
    uid, gid, home = entries.get(name) or (int(name), 0, "/")
    return uid, (int(group) if group.isdigit() else gid), home


def environment(inspected, home, extra):
    """Return the environment a runtime gives the entrypoint: the image's, HOME, `extra`."""
    env = dict(item.split("=", 1) for item in inspected["Config"].get("Env") or ())
    env.setdefault("HOME", home)
    env["HOSTNAME"] = "asset-server"
    env.update(extra)
    return env


def process_tree(pid):
    """Return `pid` and all its descendants (host pids), parents first."""
    parents = {}
    for path in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(path, "rb") as handle:
                stat = handle.read().decode("utf-8", "replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        parents.setdefault(int(fields[1]), []).append(int(path.split("/")[2]))
    tree, queue = [], [pid]
    while queue:
        current = queue.pop(0)
        tree.append(current)
        queue.extend(sorted(parents.get(current, ())))
    return tree


def proc_status(pid):
    """Return /proc/<pid>/status as {field: value}."""
    with open("/proc/%d/status" % pid, encoding="utf-8") as handle:
        return dict(line.rstrip("\n").split(":\t", 1) for line in handle if ":\t" in line)


def _enter_network(pid):
    """Move the calling thread into the network namespace of host process `pid`."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open("/proc/%d/ns/net" % pid, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            error = ctypes.get_errno()
            raise OSError(error, os.strerror(error))
    finally:
        os.close(fd)


class Container:
    """The image's entrypoint in its own mount, PID and network namespaces, like `docker run`.

    `call(func, *args)` runs func in a thread inside the container's network namespace
    (its 127.0.0.1:8080 is the container's); stop() sends SIGTERM to its PID 1.
    """

    def __init__(self, rootfs, inspected, env, volume, log_dir, command=None):
        config = inspected["Config"]
        self.uid, self.gid, home = resolve_user(rootfs, config.get("User"))
        self.rootfs = rootfs
        self.env = environment(inspected, home, env)
        self.workdir = config.get("WorkingDir") or "/"
        argv = list(config.get("Entrypoint") or ()) + list(command or config.get("Cmd") or ())
        (volume_target,) = list(config.get("Volumes") or {})
        self.stdout_path = os.path.join(log_dir, "stdout")
        self.stderr_path = os.path.join(log_dir, "stderr")
        self._stdout = open(self.stdout_path, "wb")
        self._stderr = open(self.stderr_path, "wb")
        setup = [which("unshare"), "--mount", "--pid", "--net", "--fork", "--propagation",
                 "private", "--", "/bin/sh", "-c", NAMESPACE_SETUP, "namespace-setup",
                 rootfs, volume, volume_target, "%d:%d" % (self.uid, self.gid),
                 str(self.gid), self.workdir]
        self.popen = subprocess.Popen(
            setup + ["%s=%s" % item for item in sorted(self.env.items())] + argv,
            stdout=self._stdout, stderr=self._stderr, stdin=subprocess.DEVNULL,
            env={"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"})
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        self._wait_for_namespace()
        self._pool.submit(_enter_network, self.popen.pid).result()

    def _wait_for_namespace(self):
        """Wait until unshare has left our network namespace (it unshares, then forks)."""
        ours = os.readlink("/proc/self/ns/net")
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and self.popen.poll() is None:
            try:
                if os.readlink("/proc/%d/ns/net" % self.popen.pid) != ours:
                    return
            except OSError:
                pass
            time.sleep(0.01)
        raise RuntimeError("unshare made no network namespace:\n" + self.logs())

    def call(self, func, *args, **kwargs):
        """Run func(*args, **kwargs) inside the container's network namespace; return its result."""
        return self._pool.submit(func, *args, **kwargs).result()

    def init_pid(self):
        """Return the host pid of the container's PID 1 (the entrypoint), or None."""
        children = process_tree(self.popen.pid)[1:2]
        return children[0] if children else None

    def processes(self):
        """Return the host pids of every process in the container."""
        return process_tree(self.popen.pid)[1:]

    def wait_port(self, port=8080, timeout=START_TIMEOUT):
        """Wait until the container's port accepts; RuntimeError with its log otherwise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.popen.poll() is None:
            try:
                self.call(socket.create_connection, ("127.0.0.1", port), 1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("the container did not listen on %d:\n%s" % (port, self.logs()))

    def exec(self, argv, timeout=120):
        """Run argv in the container as its user (like `docker exec`); return (status, output)."""
        pid = self.init_pid()
        command = [which("nsenter"), "--target", str(pid), "--mount", "--pid", "--net",
                   "--root", "--wd", "--setuid", str(self.uid),
                   "--setgid", str(self.gid), "--", "/usr/bin/env", "-i"]
        command += ["%s=%s" % item for item in sorted(self.env.items())] + list(argv)
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, timeout=timeout)
        return done.returncode, done.stdout.decode("utf-8", "replace")

    def logs(self):
        self._stderr.flush()
        text = []
        for path in (self.stdout_path, self.stderr_path):
            with open(path, "rb") as handle:
                text.append("--- %s\n%s" % (path, handle.read()[-6000:].decode("utf-8",
                                                                                 "replace")))
        return "\n".join(text)

    def signal(self, signum):
        """Send `signum` to the container's PID 1, as `docker stop`/`docker kill` do."""
        pid = self.init_pid()
        if pid is not None:
            os.kill(pid, signum)

    def wait(self, timeout=STOP_TIMEOUT):
        """Wait for the container to exit; return its status (the entrypoint's)."""
        return self.popen.wait(timeout)

    def stop(self):
        """SIGTERM, then SIGKILL everything left after STOP_TIMEOUT; return the exit status."""
        if self.popen.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                logger.warning("the container ignored SIGTERM; killing it")
                for pid in reversed(self.processes()):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                self.popen.wait(STOP_TIMEOUT)
        self._pool.shutdown()
        self._stdout.close()
        self._stderr.close()
        return self.popen.returncode
