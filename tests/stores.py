"""The stores a test app runs on (local, S3 servers), and what a test sees of a store's files."""

import os
import time
import uuid

from tests.helpers import COLL, make_settings
from webassets import storage
from webassets.app import create_app
from webassets.storage.s3 import S3Store

# S3 servers of tests/s3servers.py, by the name of their session fixture.
S3_SERVERS = ("seaweedfs", "moto")
SMALL_PART = 5 * 1024 * 1024  # S3's smallest part: multipart is exercised from 5 MiB on


class LocalBackend:
    """The filesystem store under BASE_DIR (the settings' default)."""

    name = "file"

    def overrides(self):
        """Return the settings that select this store."""
        return {}

    def store(self, settings):
        """Return the store to build the app with (None: the one the settings make)."""
        return None


class S3Backend(LocalBackend):
    """S3Store on a real server (tests/s3servers.py), in one bucket, a prefix per app."""

    _buckets = {}  # server name -> the session's bucket on it

    def __init__(self, name, server, bucket, addressing="path"):
        self.name = name
        self.server = server
        self.bucket = bucket
        self.addressing = addressing

    @classmethod
    def on(cls, name, server, addressing="path"):
        """Return the backend on `server` (a session fixture), in the session's bucket there.

        addressing "virtual" needs <bucket>.localhost resolved (the `addressing` fixture).
        """
        if name not in cls._buckets:
            cls._buckets[name] = server.new_bucket("proto")
        return cls(name, server, cls._buckets[name], addressing)

    def overrides(self):
        server = self.server
        return {"STORAGE": "s3", "S3_BUCKET": self.bucket,
                "S3_ENDPOINT": server.endpoint_for(self.addressing),
                "S3_REGION": server.region, "S3_ACCESS_KEY": server.access_key,
                "S3_SECRET_KEY": server.secret_key, "S3_ADDRESSING": self.addressing,
                "S3_PREFIX": "t-%s/" % uuid.uuid4().hex[:12], "S3_PART_SIZE": SMALL_PART,
                # The diskless path (a temporary key, then a copy); spooling has its own tests.
                "S3_SPOOL_DIR": None}


def app_on(backend, base_dir, clock=time.time, tools=None, **overrides):
    """Return a real app on `backend`'s store (CFG-A and `overrides`; BASE_DIR `base_dir`)."""
    values = dict(backend.overrides(), **overrides)
    settings = make_settings(base_dir, **values)
    return create_app(settings, store=backend.store(settings), clock=clock, tools=tools)


def is_s3(app):
    """Tell whether `app` stores in a bucket."""
    return isinstance(app.store, S3Store)


def store_snapshot(app):
    """Return {path under the store's root: bytes} of every file the store holds.

    For a bucket: every object under the prefix, and each unfinished multipart upload as
    'multipart:<key>' (b''), so an upload left behind shows.
    """
    store = app.store
    if not is_s3(app):
        return files_under(store.base_dir)
    client, prefix = store.client, store.prefix
    files = {}
    for obj in client.list(prefix):
        with client.get(obj.key) as result:
            files[obj.key[len(prefix):]] = result.read()
    for key, _, _ in client.list_multipart_uploads(prefix):
        files["multipart:" + key[len(prefix):]] = b""
    return files


def everything(root, app):
    """Return {path: bytes} of every file under `root` (a test's tmp_path) and in the store."""
    files = files_under(root)
    if is_s3(app):
        files.update(("s3:" + path, data) for path, data in store_snapshot(app).items())
    return files


def files_under(root):
    """Return {path relative to `root`: bytes} of every file under `root`."""
    files = {}
    for directory, _, names in os.walk(str(root)):
        for name in names:
            path = os.path.join(directory, name)
            with open(path, "rb") as handle:
                files[os.path.relpath(path, str(root))] = handle.read()
    return files


def stored(app, kind=storage.ORIGINAL, coll=None):
    """Return every name in a collection's directory of `kind` (temporary ones included)."""
    store = app.store
    coll = coll if coll is not None else _any_coll(app)
    if not is_s3(app):
        directory = os.path.dirname(store.local_path(coll, "x", kind))
        return sorted(os.listdir(directory)) if os.path.isdir(directory) else []
    directory = store.key(coll, "x", kind)[:-1]
    names = [obj.key[len(directory):] for obj in store.client.list(directory)]
    return sorted(name for name in names if "/" not in name)


def stored_files(app, kind=storage.ORIGINAL):
    """Return {name: bytes} of a collection's directory of `kind`."""
    files = {}
    for name in stored(app, kind):
        with app.store.open(_any_coll(app), name, kind) as handle:
            files[name] = handle.read()
    return files


def plant(app, relpath, data):
    """Put a file at `relpath` under the store's root behind the app's back."""
    if is_s3(app):
        app.store.client.put(app.store.prefix + relpath, data)
        return
    path = os.path.join(app.store.base_dir, *relpath.split("/"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(data)


def relative_dir(app, kind=storage.ORIGINAL):
    """Return the collection directory of `kind` relative to the store's root, '/'-separated."""
    return app.store.layout.directory(_any_coll(app), kind)


def _any_coll(app):
    dirs = app.settings.COLLECTION_DIRS
    return COLL if not dirs or COLL in dirs else sorted(dirs)[0]
