"""A small S3 client on the standard library: signed requests, retries, multipart uploads."""

import email.utils
import hashlib
import http.client
import ipaddress
import logging
import os
import random
import re
import ssl
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
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
# A bucket name that can be the first label of a host name (virtual-hosted addressing).
# Names with dots are left out: a *.host certificate covers one label only, and servers
# disagree on them (moto takes the first label of the host name as the bucket).
DNS_BUCKET = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")


class S3Config:
    """Where the bucket is and how to sign: one bucket, one endpoint, one set of credentials.

    Credentials default to AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and
    AWS_SESSION_TOKEN with them) from `environ`; endpoint None is AWS's
    https://s3.<region>.amazonaws.com. addressing: "path" (https://host/bucket/key),
    "virtual" (https://bucket.host/key) or "auto" (virtual on AWS, else path).
    Virtual-hosted addressing needs a bucket name that is one DNS label (lowercase
    letters, digits, hyphens) and an endpoint named by a host name, not an IP address;
    for other buckets path-style is used (with a warning if "virtual" was asked for).
    S3ConfigError if this cannot work.
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
        self.addressing = addressing
        if addressing == "auto":
            self.addressing = "virtual" if endpoint is None else "path"
        problem = (_virtual_host_problem(bucket, self.host) if self.addressing == "virtual"
                   else None)
        if problem is not None:
            if addressing == "virtual":
                logger.warning("S3 bucket %r cannot be addressed virtual-hosted (%s): "
                               "using path-style addressing", bucket, problem)
            self.addressing = "path"
        self.ca_file = ca_file or None
        self.timeout = float(timeout)
        self.retries = int(retries)

    def target(self, key=None):
        """Return (host to connect to, Host header, encoded path) of the bucket or a key."""
        path = "/" if key is None else "/" + sigv4.uri_encode(key, keep_slash=True)
        if self.addressing == "virtual":
            return self.bucket + "." + self.host, self.bucket + "." + self.host_header, path
        return self.host, self.host_header, "/" + self.bucket + ("" if key is None else path)


def _virtual_host_problem(bucket, host):
    """Return why <bucket>.<host> cannot name the bucket, or None if it can."""
    if not DNS_BUCKET.match(bucket):
        # Host names ignore case: a bucket with capitals (AWS allowed them once) is lost.
        return "the name is not one DNS label of lowercase letters, digits and hyphens"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return None
    return "the endpoint is the IP address %s" % host


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

    def writer(self, key, content_type=None, metadata=None, part_size=DEFAULT_PART_SIZE,
               inflight=1):
        """Return a MultipartWriter storing what is written under `key` on commit().

        inflight: parts sent in the background while the next fills (memory: inflight
        + 1 parts); 0 sends each part in place.
        """
        return MultipartWriter(self, key, content_type, metadata, part_size, inflight)

    def upload_file(self, key, file, content_type=None, metadata=None,
                    part_size=DEFAULT_PART_SIZE, threads=4):
        """Upload a local file (a path or a seekable binary file, from its position) to
        `key`, `threads` parts at a time in threads x part_size bytes; return the ETag.

        Nothing appears at `key` unless all of it does; S3Error, OSError.
        """
        return self.writer(key, content_type, metadata, part_size).upload_file(file, threads)

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
    """Write an object in bounded memory: one part filling, `inflight` more being sent.

    write(data) buffers; a full part goes up in a background thread once more data
    arrives, while the next one fills (inflight=0: sent in place, synchronously), so
    at most (inflight + 1) x part_size bytes are held. A background part's error is
    raised by the next write() or commit(). commit() stores the whole under the key
    (one PUT if it fits one part, else Complete) and returns the ETag; nothing appears
    at the key before. abort() drops the upload (and never raises: fsck finds
    leftovers). `with` aborts unless committed. upload_file() sends a local file instead,
    several parts at a time.
    """

    def __init__(self, client, key, content_type=None, metadata=None,
                 part_size=DEFAULT_PART_SIZE, inflight=1):
        if part_size < 1:
            raise ValueError("part_size must be positive")
        if inflight < 0:
            raise ValueError("inflight must not be negative")
        self.client = client
        self.key = key
        self.part_size = part_size
        self.inflight = inflight
        self.size = 0
        self.uploaded = 0  # bytes of the parts the server has taken
        self.peak_buffered = 0  # most bytes held at once: filling, in flight, read ahead
        self.upload_id = None
        self._headers = object_headers(content_type, metadata)
        # Part buffers are grown to part_size once and then refilled in place (no
        # reallocation per part, which fragments the heap); _filled bytes of _buffer
        # are data. A sent part's buffer comes back as the next spare.
        self._buffer = bytearray()
        self._filled = 0
        self._spares = []
        self._flying = []  # [(partNumber, Future of its ETag, buffer, bytes)], oldest first
        self._executor = None
        self._error = None  # a background part's failure: the upload cannot commit
        self._parts = []
        self._copied = 0  # bytes added by copy_part
        self._state = "open"

    def write(self, data):
        """Buffer `data`, sending each full part; return len(data).

        Raises what a background part raised (S3Error, OSError); the upload can only
        be aborted then.
        """
        if self._state != "open":
            raise ValueError("write to a %s S3 upload" % self._state)
        self._land(block=False)
        view = memoryview(data).cast("B")
        while view:
            if self._filled >= self.part_size:
                self._send_part()
            piece = view[:self.part_size - self._filled]
            self._buffer[self._filled:self._filled + len(piece)] = piece
            self._filled += len(piece)
            self.size += len(piece)
            view = view[len(piece):]
            self._held(0)
        return len(data)

    def _held(self, extra):
        """Note the bytes held now (plus `extra` read ahead elsewhere) in peak_buffered."""
        held = self._filled + sum(part[3] for part in self._flying) + extra
        self.peak_buffered = max(self.peak_buffered, held)

    def _start(self):
        """Start the multipart upload if need be (CreateMultipartUpload)."""
        if self.upload_id is not None:
            return
        reply = self.client._request("create_multipart", "POST", self.key,
                                     [("uploads", "")], headers=dict(self._headers),
                                     body=_Body(b""))
        page = parse_xml(reply.data, reply.status, self.key)
        self.upload_id = page.findtext("UploadId")
        if not self.upload_id:
            raise S3Error(200, "NoUploadId", "CreateMultipartUpload gave no UploadId",
                          key=self.key)

    def _next_number(self):
        """Start the upload if need be; return the next part's number."""
        self._start()
        return len(self._parts) + len(self._flying) + 1

    def _upload_part(self, number, part):
        """Send bytes-like `part` as part `number`; return its ETag (any thread)."""
        params = [("partNumber", str(number)), ("uploadId", self.upload_id)]
        reply = self.client._request("upload_part", "PUT", self.key, params, body=_Body(part))
        return reply.headers.get("ETag", "")

    def _send_part(self):
        """Send the filled buffer as the next part: in the background if inflight allows."""
        number = self._next_number()
        if not self.inflight:
            with memoryview(self._buffer)[:self._filled] as part:
                self._parts.append((number, self._upload_part(number, part)))
            self.uploaded += self._filled
            self._filled = 0
            return
        while len(self._flying) >= self.inflight:
            self._land(block=True)
        if self._executor is None:
            # One thread (per part in flight) for the whole upload: it keeps its connection.
            self._executor = ThreadPoolExecutor(self.inflight)
        buffer, filled = self._buffer, self._filled
        future = self._executor.submit(self._send_buffer, number, buffer, filled)
        self._flying.append((number, future, buffer, filled))
        self._buffer = self._spares.pop() if self._spares else bytearray()
        self._filled = 0

    def _send_buffer(self, number, buffer, filled):
        with memoryview(buffer)[:filled] as part:  # released before the buffer is reused
            return self._upload_part(number, part)

    def _land(self, block):
        """Collect finished background parts in order (waiting for the oldest if `block`).

        Raises (once, and again on each later write or commit) what a part raised.
        """
        while self._flying and self._error is None and (block or self._flying[0][1].done()):
            number, future, buffer, filled = self._flying.pop(0)
            try:
                etag = future.result()
            except BaseException as ex:  # kept, and raised to the writer's user
                self._error = ex
                break
            self._parts.append((number, etag))
            self.uploaded += filled
            self._spares.append(buffer)
            block = False
        if self._error is not None:
            raise self._error

    def _settle(self):
        """Wait for every background part and stop the thread; raise nothing."""
        for _number, future, _buffer, _filled in self._flying:
            try:
                future.result()
            except BaseException:  # the upload is being dropped anyway
                pass
        self._flying = []
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def copy_part(self, source, start, end):
        """Add bytes start..end (inclusive) of object `source` as the next part, copied
        by the server (UploadPartCopy); only before anything is written."""
        if self._state != "open" or self.size != self._copied:
            raise ValueError("copy_part into a %s S3 upload" % (
                "written" if self._state == "open" else self._state))
        number = self._next_number()
        headers = {"x-amz-copy-source": self.client.copy_source(source),
                   "x-amz-copy-source-range": "bytes=%d-%d" % (start, end)}
        reply = self.client._request("upload_part_copy", "PUT", self.key,
                                     [("partNumber", str(number)),
                                      ("uploadId", self.upload_id)],
                                     headers=headers, body=_Body(b""), error_in_body=True)
        etag = quote_etag(parse_xml(reply.data, reply.status, self.key).findtext("ETag"))
        self._parts.append((number, etag))
        self.size += end - start + 1
        self.uploaded += end - start + 1
        self._copied += end - start + 1

    def upload_file(self, file, threads=4):
        """Upload a local file (a path, or a seekable binary file from its position to its
        end) as the whole object, `threads` parts at a time; commit and return the ETag.

        Parts are read at their offsets, one at a time, into one part_size buffer per
        thread: at most threads x part_size bytes are held. Only on a fresh writer
        (ValueError); S3Error or OSError after aborting the upload.
        """
        if self._state != "open" or self.size or self._parts:
            raise ValueError("upload_file into a %s S3 upload" % (
                "written" if self._state == "open" else self._state))
        if isinstance(file, (str, bytes, os.PathLike)):
            with open(file, "rb") as opened:
                return self.upload_file(opened, threads)
        start = file.tell()
        size = os.fstat(file.fileno()).st_size - start
        if size <= self.part_size:
            self._buffer = bytearray(size)
            self._filled = file.readinto(self._buffer)
            self.size = self._filled
            self._held(0)
            return self.commit()
        try:
            self._start()
            self._parts = _FilePartUploader(self, file, start, size, threads).run()
            self.size = self.uploaded = size
            etag = self._complete()
        except BaseException:
            self.abort()
            raise
        self._state = "committed"
        return etag

    def commit(self):
        """Store what was written under the key; return its ETag (S3Error: aborted)."""
        if self._state != "open":
            raise ValueError("commit of a %s S3 upload" % self._state)
        try:
            self._land(block=False)
            if self.upload_id is None:
                etag = self._put_whole()
            else:
                if self._filled:
                    self._send_part()
                while self._flying:
                    self._land(block=True)
                etag = self._complete()
        except BaseException:
            self.abort()
            raise
        self._settle()
        self._state = "committed"
        self._buffer, self._filled, self._spares = bytearray(), 0, []
        return etag

    def _put_whole(self):
        with memoryview(self._buffer)[:self._filled] as whole:
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
        """Drop the upload and its parts; log (never raise) a failure to tell the server.

        Waits for background parts first: a part landing after the abort would be kept.
        """
        if self._state != "open":
            return
        self._state = "aborted"
        self._settle()
        self._buffer, self._filled, self._spares = bytearray(), 0, []
        if self.upload_id is not None:
            try:
                self.client.abort_multipart(self.key, self.upload_id)
            except S3Error as ex:
                logger.warning("cannot abort the S3 upload of %r (fsck will): %s", self.key, ex)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.abort()


class _FilePartUploader:
    """Send a local file's parts from `threads` threads, each with one part buffer."""

    def __init__(self, writer, file, start, size, threads):
        self.writer = writer
        self.file = file
        self.start = start
        self.size = size
        self.count = (size + writer.part_size - 1) // writer.part_size
        self.threads = max(1, min(threads, self.count))
        self.etags = [None] * self.count
        self.next = 0
        self.error = None
        self.lock = threading.Lock()  # one reader at a time: a shared file position

    def run(self):
        """Send every part; return [(partNumber, ETag)] or raise the first failure."""
        workers = [threading.Thread(target=self._work, name="s3-part-%d" % n, daemon=True)
                   for n in range(self.threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        if self.error is not None:
            raise self.error
        return [(index + 1, etag) for index, etag in enumerate(self.etags)]

    def _work(self):
        part_size = self.writer.part_size
        buffer = bytearray(min(part_size, self.size))
        with self.lock:
            self.writer.peak_buffered += len(buffer)
        try:
            while True:
                with self.lock:
                    index = self.next
                    if self.error is not None or index >= self.count:
                        return
                    self.next += 1
                    offset = index * part_size
                    length = min(part_size, self.size - offset)
                    self.file.seek(self.start + offset)
                    got = self.file.readinto(memoryview(buffer)[:length])
                if got != length:
                    raise OSError("the file to upload shrank while it was sent")
                with memoryview(buffer)[:length] as part:
                    self.etags[index] = self.writer._upload_part(index + 1, part)
        except BaseException as ex:  # handed to run(), in the caller's thread
            with self.lock:
                self.error = self.error or ex
