"""A small S3 client on the standard library: signed requests, retries, multipart uploads."""

import email.utils
import hashlib
import http.client
import logging
import os
import random
import re
import ssl
import threading
import time
import urllib.parse
from typing import NamedTuple

from . import sigv4
from .s3wire import (STATUS_CODES, AccessDenied, InvalidRange, NoSuchKey, ObjectInfo,
                     PreconditionFailed, S3ConfigError, S3Error, S3Unavailable, error_class,
                     listed_info, object_headers, object_info, parse_content_range,
                     parse_http_date, parse_iso_date, parse_xml, quote_etag)

__all__ = ["S3Config", "S3Client", "MultipartWriter", "GetResult", "ObjectInfo", "Stats",
           "S3Error", "S3ConfigError", "NoSuchKey", "AccessDenied", "PreconditionFailed",
           "InvalidRange", "S3Unavailable", "parse_xml"]

logger = logging.getLogger(__name__)

MiB = 1024 * 1024
DEFAULT_PART_SIZE = 8 * MiB
SEND_CHUNK = MiB
PAGE_SIZE = 1000  # ListObjectsV2's own maximum
COPY_LIMIT = 5 * 1024 * MiB  # CopyObject's maximum; larger objects are copied in parts
COPY_PART_SIZE = 512 * MiB
BACKOFF_BASE = 0.1  # seconds before the first retry; doubles with each
BACKOFF_CAP = 5.0
SKEW_STEP = 2.0  # Date has whole seconds: a smaller difference is no news
DRAIN_LIMIT = 64 * 1024  # an unread rest up to this is read to keep the connection
IDLE_PER_HOST = 4  # idle keep-alive connections kept per thread and host
# Errors that mean a kept-alive connection was closed by the server before our request.
STALE_ERRORS = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)
DNS_BUCKET = re.compile(r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]\Z")


class S3Config:
    """Where the bucket is and how to sign: one bucket, one endpoint, one set of credentials.

    Credentials default to AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and
    AWS_SESSION_TOKEN with them) from `environ`; endpoint None is AWS's
    https://s3.<region>.amazonaws.com. addressing: "path" (https://host/bucket/key),
    "virtual" (https://bucket.host/key) or "auto" (virtual on AWS for bucket names that
    are one DNS label, else path). S3ConfigError if this cannot work.
    """

    def __init__(self, bucket, endpoint=None, region="us-east-1", access_key=None,
                 secret_key=None, session_token=None, addressing="auto", ca_file=None,
                 timeout=60.0, retries=4, environ=None):
        environ = os.environ if environ is None else environ
        if not bucket or "/" in bucket:
            raise S3ConfigError("S3 bucket name %r is not a bucket name" % (bucket,))
        if addressing not in ("auto", "path", "virtual"):
            raise S3ConfigError("S3 addressing must be auto, path or virtual, not %r"
                                % (addressing,))
        self.bucket = bucket
        self.region = region or "us-east-1"
        if not access_key and not secret_key:
            access_key = environ.get("AWS_ACCESS_KEY_ID")
            secret_key = environ.get("AWS_SECRET_ACCESS_KEY")
            session_token = session_token or environ.get("AWS_SESSION_TOKEN")
        if not access_key or not secret_key:
            raise S3ConfigError("no S3 credentials: set the access and secret key, or "
                                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
        self.access_key, self.secret_key = access_key, secret_key
        self.session_token = session_token or None
        self.endpoint = endpoint or "https://s3.%s.amazonaws.com" % self.region
        parts = urllib.parse.urlsplit(self.endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise S3ConfigError("S3 endpoint %r is not an http(s)://host[:port] URL"
                                % (self.endpoint,))
        if parts.path not in ("", "/") or parts.query:
            raise S3ConfigError("S3 endpoint %r must not have a path" % (self.endpoint,))
        self.scheme = parts.scheme
        self.host = parts.hostname
        try:
            self.port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise S3ConfigError("S3 endpoint %r has a bad port" % (self.endpoint,)) from None
        self.host_header = parts.netloc.rpartition("@")[2].lower()
        if addressing == "auto":
            addressing = ("virtual" if endpoint is None and DNS_BUCKET.match(bucket)
                          else "path")
        self.addressing = addressing
        self.ca_file = ca_file or None
        self.timeout = float(timeout)
        self.retries = int(retries)

    def target(self, key=None):
        """Return (host to connect to, Host header, encoded path) of the bucket or a key."""
        path = "/" if key is None else "/" + sigv4.uri_encode(key, keep_slash=True)
        if self.addressing == "virtual":
            return self.bucket + "." + self.host, self.bucket + "." + self.host_header, path
        return self.host, self.host_header, "/" + self.bucket + ("" if key is None else path)


class Stats:
    """Request counters for /metrics: requests and seconds by operation, errors by code."""

    def __init__(self):
        self._lock = threading.Lock()
        self._requests = {}
        self._errors = {}
        self._seconds = {}

    def _add(self, table, name, amount):
        with self._lock:
            table[name] = table.get(name, 0) + amount

    def request(self, op):
        """Count one HTTP request (each attempt) of an operation."""
        self._add(self._requests, op, 1)

    def error(self, code):
        """Count one error answer or connection failure by its code."""
        self._add(self._errors, code, 1)

    def seconds(self, op, seconds):
        """Add one operation's latency (all its attempts)."""
        self._add(self._seconds, op, seconds)

    def snapshot(self):
        """Return {"requests": {op: n}, "errors": {code: n}, "seconds": {op: total}}."""
        with self._lock:
            return {"requests": dict(self._requests), "errors": dict(self._errors),
                    "seconds": dict(self._seconds)}


# --- helpers -----------------------------------------------------------------------

def _is_tls_refusal(error):
    """Return whether a connection failed on TLS itself (a certificate), not on the network."""
    if isinstance(error, ssl.CertificateError):
        return True
    return isinstance(error, ssl.SSLError) and not isinstance(
        error, (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLWantReadError))


def backoff(attempt):
    """Return the pause before retry `attempt` (0, 1, ...): exponential, full jitter."""
    return random.uniform(0.5, 1.0) * min(BACKOFF_CAP, BACKOFF_BASE * 2 ** attempt)


class _Body:
    """A request body: bytes-like in memory, or a seekable file from its position to its end."""

    def __init__(self, data):
        self.data = data
        if hasattr(data, "read"):
            self.start = data.tell()
            self.length = data.seek(0, os.SEEK_END) - self.start
            data.seek(self.start)
        else:
            self.start = None
            self.length = len(data)

    def sha256(self):
        """Return the payload's hex SHA-256 (reads a file through, then rewinds it)."""
        if self.start is None:
            return hashlib.sha256(self.data).hexdigest()
        digest = hashlib.sha256()
        self.data.seek(self.start)
        for chunk in self._chunks():
            digest.update(chunk)
        self.data.seek(self.start)
        return digest.hexdigest()

    def _chunks(self):
        left = self.length
        while left > 0:
            chunk = self.data.read(min(SEND_CHUNK, left))
            if not chunk:
                raise OSError("the file to upload shrank while it was sent")
            left -= len(chunk)
            yield chunk

    def send(self, conn):
        """Send the whole body on `conn` (rewinding a file first, so retries resend it)."""
        if self.start is None:
            conn.send(self.data)
            return
        self.data.seek(self.start)
        for chunk in self._chunks():
            conn.send(chunk)


class _Reply(NamedTuple):
    status: int
    headers: object  # http.client.HTTPMessage
    data: bytes  # b"" for a streamed reply
    response: object = None  # the open http.client.HTTPResponse of a streamed reply
    release: object = None  # release() returns its connection


class GetResult:
    """An object being read: status (200, 206 or 304), info, content_range, read(), close().

    info.size is the whole object's size (None on a 304, or if the server did not
    say: a chunked 200); content_range is
    (start, end, total) on a 206. read() raises S3Unavailable if the connection fails.
    """

    def __init__(self, status, info, content_range, reply):
        self.status = status
        self.info = info
        self.content_range = content_range
        self._reply = reply

    def read(self, size=-1):
        """Read up to `size` bytes of the body (all of the rest with -1); b"" at the end."""
        if size is None or size < 0:
            return self._reading(lambda response: response.read(), b"")
        return self._reading(lambda response: response.read(size), b"")

    def readinto(self, buffer):
        """Read up to len(buffer) bytes of the body into `buffer`; return how many (0: the end).

        No new bytes object per read: what a download into a file uses.
        """
        return self._reading(lambda response: response.readinto(buffer), 0)

    def _reading(self, read, at_end):
        """Return read(response), or `at_end` once the body is done; S3Unavailable."""
        response = self._reply.response if self._reply else None
        if response is None:
            return at_end
        try:
            data = read(response)
        except (OSError, http.client.HTTPException) as ex:
            self._reply.response.close()
            self._reply.release()
            self._reply = None
            raise S3Unavailable(0, "ConnectionError", "reading: %s" % ex,
                                key=self.info.key) from None
        if response.isclosed():
            self.close()
        return data

    def close(self):
        """Release the connection (kept for reuse when the body was read or nearly)."""
        if self._reply is None:
            return
        reply, self._reply = self._reply, None
        response = reply.response
        if not response.isclosed() and response.length is not None \
                and response.length <= DRAIN_LIMIT:  # (a chunked rest is never drained)
            try:
                response.read()
            except (OSError, http.client.HTTPException):
                pass  # the connection is closed below
        reply.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


# --- the client ------------------------------------------------------------------------

class S3Client:
    """Talk to one bucket: objects, listings and multipart uploads. Thread-safe.

    Each thread keeps its own keep-alive connections (a forked child opens its own).
    Connection errors, 5xx, RequestTimeout and SlowDown are retried `config.retries`
    times with backoff (then S3Unavailable); 403, 404, 412 and 416 never are.
    RequestTimeTooSkewed corrects clock_offset (server Date - local clock) and retries once.
    """

    def __init__(self, config, clock=time.time, sleep=time.sleep):
        self.config = config
        self.clock = clock
        self.sleep = sleep
        self.clock_offset = 0.0
        self.stats = Stats()
        self.page_size = PAGE_SIZE
        self.copy_limit = COPY_LIMIT
        self.copy_part_size = COPY_PART_SIZE
        self._local = threading.local()
        self._pid = os.getpid()
        self._ssl = None
        if config.scheme == "https":
            try:
                self._ssl = ssl.create_default_context(cafile=config.ca_file)
            except (OSError, ssl.SSLError) as ex:
                raise S3ConfigError("S3 CA file %s cannot be used: %s"
                                    % (config.ca_file, ex)) from None

    # --- objects

    def head(self, key):
        """Return the ObjectInfo of `key`; NoSuchKey if there is none."""
        reply = self._request("head", "HEAD", key)
        return object_info(key, reply.headers, int(reply.headers.get("Content-Length", 0)))

    def get(self, key, range=None, if_none_match=None, if_modified_since=None):
        """Start reading `key`: a GetResult to read and close; NoSuchKey, InvalidRange.

        `range` is a Range header value as the client sent it. As in RFC 7232 (and
        unlike S3, which answers 304 if either says so), If-Modified-Since is only
        sent without If-None-Match. if_modified_since: an HTTP date or epoch seconds.
        """
        headers = {}
        if range:
            headers["range"] = range
        if if_none_match:
            headers["if-none-match"] = if_none_match
        elif if_modified_since is not None:
            headers["if-modified-since"] = (
                if_modified_since if isinstance(if_modified_since, str)
                else email.utils.formatdate(if_modified_since, usegmt=True))
        reply = self._request("get", "GET", key, headers=headers, ok=(200, 206, 304),
                              stream=True)
        content_range = parse_content_range(reply.headers.get("Content-Range"))
        size = None
        if reply.status == 206 and content_range:
            size = content_range[2]
        elif reply.status == 200 and reply.headers.get("Content-Length") is not None:
            size = int(reply.headers["Content-Length"])
        info = object_info(key, reply.headers, size)
        return GetResult(reply.status, info, content_range if reply.status == 206 else None,
                         reply)

    def get_bytes(self, key, start, end):
        """Return bytes start..end (inclusive) of `key`, fewer past its end.

        NoSuchKey; InvalidRange if `start` is past the end.
        """
        with self.get(key, range="bytes=%d-%d" % (start, end)) as result:
            data = result.read()
        return data if result.status == 206 else data[start:end + 1]

    def put(self, key, data, content_type=None, metadata=None, if_none_match_star=False):
        """Store `data` under `key` in one PUT; return the new ETag.

        data: bytes-like, or a seekable binary file sent from its position to its
        end. PreconditionFailed if if_none_match_star and the key exists (on servers
        that support conditional writes; others overwrite).
        """
        return self.put_info(key, data, content_type, metadata, if_none_match_star).etag

    def put_info(self, key, data, content_type=None, metadata=None, if_none_match_star=False):
        """Store `data` under `key` as put() does; return the new object's ObjectInfo.

        Its last_modified is the answer's Date (None without one): S3 answers a PUT
        without Last-Modified, and sets the object's within that second (or the one
        before, when the upload crossed a second).
        """
        headers = object_headers(content_type, metadata)
        if if_none_match_star:
            headers["if-none-match"] = "*"
        body = _Body(data)
        reply = self._request("put", "PUT", key, headers=headers, body=body)
        return ObjectInfo(key, body.length, reply.headers.get("ETag", ""),
                          parse_http_date(reply.headers.get("Date")), content_type,
                          dict(metadata or {}))

    def delete(self, key):
        """Delete `key`; deleting an absent key is no error."""
        try:
            self._request("delete", "DELETE", key, ok=(200, 204))
        except NoSuchKey:
            pass

    def copy(self, source, target):
        """Copy object `source` to `target` on the server (no bytes pass through here).

        Content-Type and metadata go along. Return the new ETag; NoSuchKey if
        `source` is absent. Objects over copy_limit (S3's 5 GiB) are copied in parts.
        """
        info = self.head(source)
        if info.size > self.copy_limit:
            with self.writer(target, info.content_type, info.metadata) as writer:
                for start in range(0, info.size, self.copy_part_size):
                    writer.copy_part(source, start,
                                     min(info.size, start + self.copy_part_size) - 1)
                return writer.commit()
        reply = self._request("copy", "PUT", target, body=_Body(b""), error_in_body=True,
                              headers={"x-amz-copy-source": self.copy_source(source)})
        return quote_etag(parse_xml(reply.data, reply.status, target).findtext("ETag"))

    def copy_source(self, key):
        """Return the x-amz-copy-source value naming `key` of this bucket."""
        return sigv4.uri_encode(self.config.bucket + "/" + key, keep_slash=True)

    def writer(self, key, content_type=None, metadata=None, part_size=DEFAULT_PART_SIZE):
        """Return a MultipartWriter storing what is written under `key` on commit()."""
        return MultipartWriter(self, key, content_type, metadata, part_size)

    # --- listings

    def list(self, prefix, start_after=None, page_size=None):
        """Yield the ObjectInfo of every key under `prefix` (after `start_after`), in order."""
        for page in self._pages("list", [("list-type", "2"), ("prefix", prefix)],
                                start_after, page_size):
            for element in page.findall("Contents"):
                yield listed_info(element)

    def list_prefixes(self, prefix, delimiter="/", page_size=None):
        """Yield the common prefixes ("directories") right under `prefix`."""
        params = [("list-type", "2"), ("prefix", prefix), ("delimiter", delimiter)]
        for page in self._pages("list", params, None, page_size):
            for element in page.findall("CommonPrefixes"):
                yield element.findtext("Prefix")

    def _pages(self, op, params, start_after, page_size):
        params = params + [("max-keys", str(page_size or self.page_size))]
        if start_after:
            params.append(("start-after", start_after))
        token = None
        while True:
            page = self._xml(op, "GET", None, params + (
                [("continuation-token", token)] if token else []))
            yield page
            token = page.findtext("NextContinuationToken")
            if page.findtext("IsTruncated") != "true" or not token:
                return

    def list_multipart_uploads(self, prefix, page_size=None):
        """Yield (key, upload_id, initiated epoch) of each unfinished multipart upload."""
        params = [("uploads", ""), ("prefix", prefix),
                  ("max-uploads", str(page_size or self.page_size))]
        markers = []
        while True:
            page = self._xml("list_uploads", "GET", None, params + markers)
            last = None
            for element in page.findall("Upload"):
                last = (element.findtext("Key"), element.findtext("UploadId"))
                yield last + (parse_iso_date(element.findtext("Initiated")),)
            if page.findtext("IsTruncated") != "true" or last is None:
                return
            # COMPAT: send back the markers the server gave. SeaweedFS gives only
            # NextUploadIdMarker, pages by upload id, and lists nothing after both markers.
            following = [(name, page.findtext(tag)) for name, tag in (
                ("key-marker", "NextKeyMarker"), ("upload-id-marker", "NextUploadIdMarker"))
                if page.findtext(tag)] or [("key-marker", last[0])]
            if following == markers:
                raise S3Error(200, "NoProgress", "ListMultipartUploads repeats its page")
            markers = following

    def abort_multipart(self, key, upload_id):
        """Abort one multipart upload, dropping its parts; an unknown upload is no error."""
        try:
            self._request("abort_multipart", "DELETE", key, [("uploadId", upload_id)],
                          ok=(200, 204))
        except S3Error as ex:
            if ex.status != 404:
                raise

    def create_bucket(self):
        """Create the bucket (tests and first setups); one that is already ours is no error."""
        body = b""
        if self.config.region != "us-east-1":
            body = ("<CreateBucketConfiguration><LocationConstraint>%s</LocationConstraint>"
                    "</CreateBucketConfiguration>" % self.config.region).encode("ascii")
        try:
            self._request("create_bucket", "PUT", None, body=_Body(body))
        except S3Error as ex:
            if ex.code != "BucketAlreadyOwnedByYou":
                raise

    # --- requests

    def _xml(self, op, method, key, params, body=None):
        reply = self._request(op, method, key, params, body=body)
        return parse_xml(reply.data, reply.status, key)

    def _request(self, op, method, key=None, params=(), headers=None, body=None, ok=(200,),
                 stream=False, error_in_body=False):
        """Send one request, retrying as the class says; return a _Reply or raise S3Error.

        error_in_body: a 200 whose XML body is an <Error> is an error (Complete).
        """
        started = time.monotonic()
        try:
            return self._attempts(op, method, key, list(params), headers or {}, body, ok,
                                  stream, error_in_body)
        finally:
            self.stats.seconds(op, time.monotonic() - started)

    def _attempts(self, op, method, key, params, headers, body, ok, stream, error_in_body):
        connect_host, host_header, path = self.config.target(key)
        query = sigv4.wire_query(params)
        url = path + ("?" + query if query else "")
        payload_hash = body.sha256() if body is not None else sigv4.EMPTY_SHA256
        attempt = 0
        skew_retried = stale_retried = False
        while True:
            conn, reused = self._checkout(connect_host)
            signed = self._sign(method, host_header, path, params, headers, payload_hash, body)
            self.stats.request(op)
            try:
                response = self._exchange(conn, method, url, signed, body)
                data = b"" if stream and response.status in ok else response.read()
            except (OSError, http.client.HTTPException, ssl.CertificateError) as ex:
                conn.close()
                if _is_tls_refusal(ex):  # a wrong certificate stays wrong: no retry
                    self.stats.error("TLSError")
                    raise S3Error(0, "TLSError", "%s: %s" % (self.config.endpoint, ex),
                                  key=key) from None
                if reused and isinstance(ex, STALE_ERRORS) and not stale_retried:
                    stale_retried = True  # the server closed an idle keep-alive connection
                    continue
                self.stats.error("ConnectionError")
                error = S3Unavailable(0, "ConnectionError", "%s %s: %s" % (
                    method, self.config.endpoint, ex or type(ex).__name__), key=key)
            else:
                self._learn_offset(response.getheader("Date"))
                error = self._check(response, data, ok, error_in_body, key)
                if error is None:
                    release = self._releaser(connect_host, conn, response)
                    if not stream:
                        release()
                    return _Reply(response.status, response.headers, data, response, release)
                self._releaser(connect_host, conn, response)()
                self.stats.error(error.code)
                if error.code == "RequestTimeTooSkewed" and not skew_retried:
                    skew_retried = True
                    self._learn_offset(response.getheader("Date"), force=True)
                    continue
            if not isinstance(error, S3Unavailable) or attempt >= self.config.retries:
                raise error
            pause = backoff(attempt)
            logger.warning("%s; retrying in %.1f s", error, pause)
            attempt += 1
            self.sleep(pause)

    def _sign(self, method, host_header, path, params, headers, payload_hash, body):
        date = sigv4.amz_date(self.clock() + self.clock_offset)
        signed = {"host": host_header, "x-amz-date": date,
                  "x-amz-content-sha256": payload_hash}
        if self.config.session_token:
            signed["x-amz-security-token"] = self.config.session_token
        signed.update(headers)
        if body is not None:
            signed["content-length"] = str(body.length)
        signed["authorization"] = sigv4.authorization(
            method, path, params, signed, payload_hash, self.config.access_key,
            self.config.secret_key, self.config.region, date)
        return signed

    @staticmethod
    def _exchange(conn, method, url, headers, body):
        """Send a request and return the response (read an early answer if sending fails)."""
        conn.putrequest(method, url, skip_host=True, skip_accept_encoding=True)
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.endheaders()
        if body is not None:
            try:
                body.send(conn)
            except OSError:
                # A server may refuse (403) before it takes the whole body, then close.
                try:
                    return conn.getresponse()
                except (OSError, http.client.HTTPException):
                    pass
                raise
        return conn.getresponse()

    def _check(self, response, data, ok, error_in_body, key):
        """Return None if `response` succeeded, else its S3Error (not raised)."""
        status = response.status
        root = None
        if status in ok:
            if not (error_in_body and data.lstrip().startswith(b"<")):
                return None
            root = parse_xml(data, status, key)
            if root.tag != "Error":
                return None
        elif data.lstrip().startswith(b"<"):
            try:
                root = parse_xml(data, status, key)
            except S3Error:
                root = None
        code = STATUS_CODES.get(status, "HTTP%d" % status)
        message, request_id = response.reason, response.getheader("x-amz-request-id")
        if root is not None and root.tag == "Error":
            code = root.findtext("Code") or code
            message = root.findtext("Message") or message
            request_id = root.findtext("RequestId") or request_id
        error = error_class(status, code)(status, code, message, request_id, key)
        if isinstance(error, InvalidRange):
            total = root.findtext("ActualObjectSize") if root is not None else None
            if total is None:
                match = re.match(r"bytes \*/(\d+)", response.getheader("Content-Range") or "")
                total = match and match.group(1)
            error.size = int(total) if total else None
        return error

    def _learn_offset(self, date, force=False):
        server = parse_http_date(date)
        if server is None:
            return
        offset = server - self.clock()
        if force or abs(offset - self.clock_offset) >= SKEW_STEP:
            if abs(offset) >= SKEW_STEP:
                logger.info("S3 server clock is %+.0f s off ours", offset)
            self.clock_offset = offset

    # --- connections (per thread)

    def _checkout(self, host):
        """Return (an idle connection to `host` of this thread or a new one, reused?)."""
        if self._pid != os.getpid():
            # A forked worker must not share its parent's sockets: start its own.
            self._local, self._pid = threading.local(), os.getpid()
        idle = getattr(self._local, "idle", None)
        if idle is None:
            idle = self._local.idle = {}
        conns = idle.setdefault(host, [])
        if conns:
            return conns.pop(), True
        if self._ssl is not None:
            conn = http.client.HTTPSConnection(host, self.config.port,
                                               timeout=self.config.timeout, context=self._ssl)
        else:
            conn = http.client.HTTPConnection(host, self.config.port,
                                              timeout=self.config.timeout)
        return conn, False

    def _releaser(self, host, conn, response):
        """Return release(): keep `conn` for reuse if `response` was read through, else close."""
        thread_idle = self._local.idle

        def release():
            conns = thread_idle.setdefault(host, [])
            if response.isclosed() and len(conns) < IDLE_PER_HOST:
                conns.append(conn)
            else:
                conn.close()
        return release


class MultipartWriter:
    """Write an object in constant memory: at most one part buffered, sent as one upload.

    write(data) buffers; a full part goes up once more data arrives. commit()
    stores the whole under the key (one PUT if it fits one part, else Complete)
    and returns the ETag; nothing appears at the key before. abort() drops the
    upload (and never raises: fsck finds leftovers). `with` aborts unless committed.
    """

    def __init__(self, client, key, content_type=None, metadata=None,
                 part_size=DEFAULT_PART_SIZE):
        if part_size < 1:
            raise ValueError("part_size must be positive")
        self.client = client
        self.key = key
        self.part_size = part_size
        self.size = 0
        self.uploaded = 0  # bytes sent as parts
        self.peak_buffered = 0
        self.upload_id = None
        self._headers = object_headers(content_type, metadata)
        # One part's buffer, grown to part_size once and then refilled in place (no
        # reallocation per part, which fragments the heap); _filled bytes are data.
        self._buffer = bytearray()
        self._filled = 0
        self._parts = []
        self._state = "open"

    def write(self, data):
        """Buffer `data`, sending each full part; return len(data)."""
        if self._state != "open":
            raise ValueError("write to a %s S3 upload" % self._state)
        view = memoryview(data).cast("B")
        while view:
            if self._filled >= self.part_size:
                self._send_part()
            piece = view[:self.part_size - self._filled]
            self._buffer[self._filled:self._filled + len(piece)] = piece
            self._filled += len(piece)
            self.size += len(piece)
            view = view[len(piece):]
            self.peak_buffered = max(self.peak_buffered, self._filled)
        return len(data)

    def _buffered(self):
        """Return a view of the buffered bytes (release it before the next write)."""
        return memoryview(self._buffer)[:self._filled]

    def _next_part(self):
        """Start the multipart upload if need be; return [(partNumber, n), (uploadId, id)]."""
        if self.upload_id is None:
            reply = self.client._request("create_multipart", "POST", self.key,
                                         [("uploads", "")], headers=dict(self._headers),
                                         body=_Body(b""))
            page = parse_xml(reply.data, reply.status, self.key)
            self.upload_id = page.findtext("UploadId")
            if not self.upload_id:
                raise S3Error(200, "NoUploadId", "CreateMultipartUpload gave no UploadId",
                              key=self.key)
        return [("partNumber", str(len(self._parts) + 1)), ("uploadId", self.upload_id)]

    def _send_part(self):
        params = self._next_part()
        with self._buffered() as part:
            reply = self.client._request("upload_part", "PUT", self.key, params,
                                         body=_Body(part))
        self._parts.append((len(self._parts) + 1, reply.headers.get("ETag", "")))
        self.uploaded += self._filled
        self._filled = 0

    def copy_part(self, source, start, end):
        """Add bytes start..end (inclusive) of object `source` as the next part, copied
        by the server (UploadPartCopy); only before anything is written."""
        if self._state != "open" or self._filled:
            raise ValueError("copy_part into a %s S3 upload" % (
                "written" if self._state == "open" else self._state))
        params = self._next_part()
        headers = {"x-amz-copy-source": self.client.copy_source(source),
                   "x-amz-copy-source-range": "bytes=%d-%d" % (start, end)}
        reply = self.client._request("upload_part_copy", "PUT", self.key, params,
                                     headers=headers, body=_Body(b""), error_in_body=True)
        etag = quote_etag(parse_xml(reply.data, reply.status, self.key).findtext("ETag"))
        self._parts.append((len(self._parts) + 1, etag))
        self.size += end - start + 1
        self.uploaded += end - start + 1

    def commit(self):
        """Store what was written under the key; return its ETag (S3Error: aborted)."""
        if self._state != "open":
            raise ValueError("commit of a %s S3 upload" % self._state)
        try:
            if self.upload_id is None:
                etag = self._put_whole()
            else:
                if self._filled:
                    self._send_part()
                etag = self._complete()
        except BaseException:
            self.abort()
            raise
        self._state = "committed"
        self._buffer, self._filled = bytearray(), 0
        return etag

    def _put_whole(self):
        with self._buffered() as whole:
            reply = self.client._request("put", "PUT", self.key, headers=dict(self._headers),
                                         body=_Body(whole))
        return reply.headers.get("ETag", "")

    def _complete(self):
        body = "<CompleteMultipartUpload>%s</CompleteMultipartUpload>" % "".join(
            "<Part><PartNumber>%d</PartNumber><ETag>%s</ETag></Part>"
            % (number, etag.replace("&", "&amp;").replace("<", "&lt;"))
            for number, etag in self._parts)
        reply = self.client._request("complete_multipart", "POST", self.key,
                                     [("uploadId", self.upload_id)],
                                     body=_Body(body.encode("ascii")), error_in_body=True)
        etag = quote_etag(parse_xml(reply.data, reply.status, self.key).findtext("ETag"))
        if not etag.strip('"'):
            # COMPAT: Ceph RGW can answer Complete with an empty ETag.
            etag = self.client.head(self.key).etag
        return etag

    def abort(self):
        """Drop the upload and its parts; log (never raise) a failure to tell the server."""
        if self._state != "open":
            return
        self._state = "aborted"
        self._buffer, self._filled = bytearray(), 0
        if self.upload_id is not None:
            try:
                self.client.abort_multipart(self.key, self.upload_id)
            except S3Error as ex:
                logger.warning("cannot abort the S3 upload of %r (fsck will): %s", self.key, ex)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.abort()
