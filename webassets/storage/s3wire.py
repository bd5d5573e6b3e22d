"""What S3 says on the wire, as Python values: its errors, XML, dates and object headers."""

import calendar
import email.utils
import re
import xml.etree.ElementTree as ElementTree
from typing import NamedTuple

RETRY_STATUSES = frozenset([500, 502, 503, 504])
RETRY_CODES = frozenset(["RequestTimeout", "SlowDown", "InternalError", "ServiceUnavailable",
                         "ConnectionError"])
AUTH_CODES = frozenset(["AccessDenied", "SignatureDoesNotMatch", "InvalidAccessKeyId",
                        "InvalidToken", "ExpiredToken", "InvalidSecurity", "AccountProblem",
                        "AuthorizationHeaderMalformed", "RequestTimeTooSkewed"])
STATUS_CODES = {403: "AccessDenied", 404: "NoSuchKey", 412: "PreconditionFailed",
                416: "InvalidRange"}  # for error answers without a body (HEAD)
XML_DECLARATIONS = re.compile(br"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)


# --- errors ---------------------------------------------------------------------

class S3ConfigError(ValueError):
    """The S3 settings cannot work (no credentials, a bad endpoint or addressing)."""


class S3Error(Exception):
    """An S3 request failed: .status (HTTP; 0 if none), .code, .message, .request_id, .key."""

    def __init__(self, status, code, message="", request_id=None, key=None):
        super().__init__(status, code, message, request_id, key)
        self.status = status
        self.code = code
        self.message = message
        self.request_id = request_id
        self.key = key

    def __str__(self):
        return "S3 %s%s: %s%s%s" % (
            self.status or "", (" " + self.code) if self.code else "",
            ("%r: " % self.key) if self.key is not None else "", self.message,
            (" (request %s)" % self.request_id) if self.request_id else "")


class NoSuchKey(S3Error):
    """404: no object under the key."""


class AccessDenied(S3Error):
    """403: refused, including bad signatures, unknown keys and skewed clocks."""


class PreconditionFailed(S3Error):
    """412 (or 409 ConditionalRequestConflict): a conditional write found the key taken."""


class InvalidRange(S3Error):
    """416: the Range starts past the end; .size is the object's size when the server said."""

    size = None


class S3Unavailable(S3Error):
    """Connection errors, 5xx, RequestTimeout or SlowDown still failing after the retries."""


def error_class(status, code):
    """Return the S3Error subclass for an answer's status and code."""
    if code in ("PreconditionFailed", "ConditionalRequestConflict") or status == 412:
        return PreconditionFailed
    if code in AUTH_CODES or status == 403:
        return AccessDenied
    if code == "NoSuchKey":
        return NoSuchKey
    if code == "InvalidRange" or status == 416:
        return InvalidRange
    if code in RETRY_CODES or status in RETRY_STATUSES:
        return S3Unavailable
    return S3Error


# --- values -----------------------------------------------------------------------

class ObjectInfo(NamedTuple):
    """One object: size, ETag (quoted, as served), last_modified (epoch float), type, metadata."""

    key: str
    size: int
    etag: str
    last_modified: float
    content_type: object = None  # None in listings
    metadata: dict = {}  # x-amz-meta-* headers, names without the prefix, lower case


# --- parsing ----------------------------------------------------------------------

def parse_xml(data, status=200, key=None):
    """Return the root element of an S3 XML answer, namespaces stripped from the tags.

    SECURITY: S3 answers never declare a DOCTYPE or entities, so a body that does is
    refused before parsing (no entity expansion, no external entities): S3Error.
    """
    data = data.lstrip()  # Complete may send spaces while it works, then the XML
    if XML_DECLARATIONS.search(data):
        raise S3Error(status, "UnsafeXML", "the answer declares a DOCTYPE or entities",
                      key=key)
    try:
        root = ElementTree.fromstring(data)
    except ElementTree.ParseError as ex:
        raise S3Error(status, "MalformedXML", "unreadable answer: %s" % ex, key=key) from None
    for element in root.iter():
        if element.tag.startswith("{"):
            element.tag = element.tag.partition("}")[2]
    return root


def quote_etag(etag):
    """Return an ETag from an XML answer quoted as in headers (some servers leave it bare)."""
    etag = (etag or "").strip()
    if etag and not etag.startswith(('"', "W/")):
        return '"%s"' % etag
    return etag


def parse_http_date(value):
    """Return the epoch seconds of an HTTP date, or None if there is none or it is bad."""
    parsed = email.utils.parsedate_tz(value) if value else None
    return float(email.utils.mktime_tz(parsed)) if parsed else None


def parse_iso_date(value):
    """Return the epoch seconds of S3's ISO 8601 time (2026-12-02T08:09:03.000Z), or None."""
    match = re.match(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(\.\d+)?", value or "")
    if not match:
        return None
    whole = calendar.timegm(tuple(int(part) for part in match.groups()[:6]))
    return whole + float(match.group(7) or 0)


def parse_content_range(value):
    """Return (start, end, total) of a `bytes a-b/n` Content-Range, or None."""
    match = re.match(r"bytes (\d+)-(\d+)/(\d+)\Z", (value or "").strip())
    return tuple(int(part) for part in match.groups()) if match else None


def object_info(key, headers, size):
    metadata = {name.lower()[len("x-amz-meta-"):]: value for name, value in headers.items()
                if name.lower().startswith("x-amz-meta-")}
    return ObjectInfo(key, size, headers.get("ETag", ""),
                      parse_http_date(headers.get("Last-Modified")),
                      headers.get("Content-Type"), metadata)


def listed_info(element):
    return ObjectInfo(element.findtext("Key"), int(element.findtext("Size") or 0),
                      quote_etag(element.findtext("ETag")),
                      parse_iso_date(element.findtext("LastModified")))


def object_headers(content_type, metadata):
    """Return the headers that store a Content-Type and x-amz-meta-* metadata."""
    headers = {}
    if content_type:
        headers["content-type"] = content_type
    for name, value in (metadata or {}).items():
        try:
            (name + str(value)).encode("ascii")
        except UnicodeEncodeError:
            raise ValueError("S3 metadata must be ASCII: %r" % name) from None
        headers["x-amz-meta-" + name.lower()] = str(value)
    return headers
