"""An in-memory stand-in of storage.s3client.S3Client with S3's answers, for S3Store's tests."""

import collections
import email.utils
import hashlib
import io
import re
import threading
import time
import uuid

from webassets.storage.s3client import (InvalidRange, NoSuchKey, ObjectInfo, PreconditionFailed,
                                        Stats)

_RANGE = re.compile(r"bytes=([0-9]*)-([0-9]*)\Z")


class FakeResult:
    """What get() returns: status, info, content_range, read(), close().

    The bytes read count as served (`client.bytes_served`): a body closed early costs less.
    """

    def __init__(self, status, info, data=b"", content_range=None, client=None):
        self.status = status
        self.info = info
        self.content_range = content_range
        self._body = io.BytesIO(data)
        self._client = client
        self.closed = False

    def read(self, n=-1):
        data = self._body.read(n)
        if self._client is not None:
            self._client.bytes_served += len(data)
        return data

    def readinto(self, buffer):
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def close(self):
        self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


class FakeWriter:
    """A multipart upload: parts kept in memory (the real one holds at most one)."""

    def __init__(self, client, key, content_type, metadata, part_size):
        self.client = client
        self.key = key
        self.metadata = metadata
        self.part_size = part_size
        self.upload_id = uuid.uuid4().hex
        self.chunks = []
        self.size = 0
        client.uploads[self.upload_id] = (key, time.time())

    def write(self, data):
        self.client.count("upload_part")
        self.chunks.append(bytes(data))
        self.size += len(data)

    def commit(self):
        if self.upload_id not in self.client.uploads:
            raise NoSuchKey(404, "NoSuchUpload", "no such upload", key=self.key)
        del self.client.uploads[self.upload_id]
        return self.client.put(self.key, b"".join(self.chunks), metadata=self.metadata)

    def abort(self):
        self.client.uploads.pop(self.upload_id, None)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *rest):
        if exc_type is not None:
            self.abort()


class FakeS3Client:
    """A bucket in a dict: {key: (bytes, ObjectInfo)}; counts requests and bytes read.

    Last-Modified has S3's one-second precision. `fail` may be set to an exception that
    every request raises (an unreachable server).
    """

    def __init__(self, clock=time.time):
        self.objects = {}
        self.uploads = {}  # upload id -> (key, initiated)
        self.clock = clock
        self.requests = collections.Counter()
        self.stats = Stats()  # as the real client's, for /metrics
        self.clock_offset = 0.0
        self.bytes_served = 0
        self.fail = None
        self._lock = threading.Lock()

    def count(self, op):
        if self.fail is not None:
            self.stats.error(getattr(self.fail, "code", "ConnectionError"))
            raise self.fail
        self.requests[op] += 1
        self.stats.request(op)
        self.stats.seconds(op, 0.0)  # answered at once

    def _object(self, key):
        try:
            return self.objects[key]
        except KeyError:
            raise NoSuchKey(404, "NoSuchKey", "no such key", key=key) from None

    def head(self, key):
        self.count("head")
        return self._object(key)[1]

    def get(self, key, range=None, if_none_match=None, if_modified_since=None):
        self.count("get")
        data, info = self._object(key)
        if if_none_match is not None:
            if if_none_match in ("*", info.etag):
                return FakeResult(304, info)
        elif if_modified_since is not None:
            since = email.utils.parsedate_to_datetime(if_modified_since).timestamp()
            if info.last_modified <= since:
                return FakeResult(304, info)
        match = _RANGE.match(range or "")
        if match and (match.group(1) or match.group(2)):
            size = len(data)
            if match.group(1):
                first = int(match.group(1))
                last = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
            else:
                first, last = max(0, size - int(match.group(2))), size - 1
            if first >= size or first > last:
                raise InvalidRange(416, "InvalidRange", "not satisfiable", key=key)
            return FakeResult(206, info, data[first:last + 1], (first, last, size), self)
        return FakeResult(200, info, data, client=self)

    def get_bytes(self, key, start, end):
        with self.get(key, range="bytes=%d-%d" % (start, end)) as result:
            return result.read()

    def put(self, key, data, content_type=None, metadata=None, if_none_match_star=False):
        return self.put_info(key, data, content_type, metadata, if_none_match_star).etag

    def put_info(self, key, data, content_type=None, metadata=None, if_none_match_star=False):
        self.count("put")
        if not isinstance(data, bytes):
            data = data.read()
        with self._lock:
            if if_none_match_star and key in self.objects:
                raise PreconditionFailed(412, "PreconditionFailed", "exists", key=key)
            etag = '"%s"' % hashlib.md5(data).hexdigest()
            info = ObjectInfo(key, len(data), etag, float(int(self.clock())), content_type,
                              dict(metadata or {}))
            self.objects[key] = (data, info)
        return info

    def copy(self, source, target):
        self.count("copy")
        data, info = self._object(source)
        self.requests["put"] -= 1
        return self.put(target, data, info.content_type, info.metadata)

    def delete(self, key):
        self.count("delete")
        self.objects.pop(key, None)

    def list(self, prefix, start_after=None, page_size=None):
        self.count("list")
        for key in sorted(self.objects):
            if key.startswith(prefix) and (start_after is None or key > start_after):
                yield self.objects[key][1]._replace(content_type=None)

    def list_prefixes(self, prefix, delimiter="/"):
        self.count("list")
        found = {prefix + key[len(prefix):].split(delimiter, 1)[0] + delimiter
                 for key in self.objects
                 if key.startswith(prefix) and delimiter in key[len(prefix):]}
        return iter(sorted(found))

    def writer(self, key, content_type=None, metadata=None, part_size=8 << 20, inflight=1):
        # `inflight` is accepted for the real writer's signature: the fake sends in place.
        self.count("create_multipart")
        return FakeWriter(self, key, content_type, metadata, part_size)

    def upload_file(self, key, file, content_type=None, metadata=None, part_size=8 << 20,
                    threads=4):
        with self.writer(key, content_type, metadata, part_size) as writer, \
                open(file, "rb") as local:
            writer.write(local.read())
            return writer.commit()

    def list_multipart_uploads(self, prefix):
        self.count("list_uploads")
        return iter([(key, upload_id, started) for upload_id, (key, started)
                     in sorted(self.uploads.items()) if key.startswith(prefix)])

    def abort_multipart(self, key, upload_id):
        self.count("abort")
        self.uploads.pop(upload_id, None)
