"""AWS Signature Version 4 for S3 requests: URI encoding, the canonical request, the signature."""

import hashlib
import hmac
import time
import urllib.parse

ALGORITHM = "AWS4-HMAC-SHA256"
SERVICE = "s3"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
# Headers a proxy or http.client may add or change on the way: never signed.
UNSIGNED_HEADERS = frozenset(["content-length", "user-agent", "connection", "expect",
                              "accept-encoding", "authorization"])


def uri_encode(text, keep_slash=False):
    """Percent-encode `text` (str, as UTF-8) the way SigV4 wants it.

    Everything but the unreserved A-Z a-z 0-9 - _ . ~ becomes %XX in upper case;
    '/' is kept only with keep_slash (object keys in the path). urllib's quote
    keeps '~' only from Python 3.7 on, so it is always named here.
    """
    return urllib.parse.quote(text, safe="-_.~/" if keep_slash else "-_.~")


def canonical_query(params):
    """Return the canonical query string of [(name, value)] pairs: encoded, sorted."""
    pairs = sorted((uri_encode(name), uri_encode(value)) for name, value in params)
    return "&".join("%s=%s" % pair for pair in pairs)


def wire_query(params):
    """Return the query string to send: like canonical_query, but `?uploads`, not `uploads=`."""
    return "&".join(uri_encode(name) + ("=" + uri_encode(value) if value != "" else "")
                    for name, value in params)


def amz_date(epoch):
    """Return the x-amz-date value (basic ISO 8601, UTC) of an epoch time."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(epoch))


def _hmac(key, text):
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).digest()


def signing_key(secret_key, day, region, service=SERVICE):
    """Return the derived key for one day (YYYYMMDD), region and service."""
    key = _hmac(("AWS4" + secret_key).encode("utf-8"), day)
    return _hmac(_hmac(_hmac(key, region), service), "aws4_request")


def authorization(method, path, params, headers, payload_hash, access_key, secret_key,
                  region, date, service=SERVICE):
    """Return the Authorization header value of a request.

    `path` is the URI-encoded path as sent, `params` the query pairs (not encoded),
    `headers` a {lower-case name: value} dict holding host, x-amz-date (= `date`)
    and x-amz-content-sha256 (= `payload_hash`); every header in it but those of
    UNSIGNED_HEADERS is signed.
    """
    signed = sorted(name for name in headers if name not in UNSIGNED_HEADERS)
    canonical_headers = "".join(
        "%s:%s\n" % (name, " ".join(str(headers[name]).split())) for name in signed)
    signed_headers = ";".join(signed)
    request = "\n".join([method, path, canonical_query(params), canonical_headers,
                         signed_headers, payload_hash])
    scope = "%s/%s/%s/aws4_request" % (date[:8], region, service)
    to_sign = "\n".join([ALGORITHM, date, scope,
                         hashlib.sha256(request.encode("utf-8")).hexdigest()])
    key = signing_key(secret_key, date[:8], region, service)
    signature = hmac.new(key, to_sign.encode("utf-8"), hashlib.sha256).hexdigest()
    return "%s Credential=%s/%s, SignedHeaders=%s, Signature=%s" % (
        ALGORITHM, access_key, scope, signed_headers, signature)
