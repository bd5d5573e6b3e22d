"""Tokens: the reference's HMAC-MD5 '<hex>:<timestamp>' scheme."""

import hmac
import re

__all__ = ["TokenError", "generate_token", "validate_token"]

# COMPAT: the reference compares whole strings, so the timestamp must be the
# canonical decimal form: an optional '-' then digits without leading zeros.
# SECURITY: at most 20 digits (Specify sends 10; int64 needs 19): int() refuses more than
# 4300 digits on Python 3.11+, and no clock is that far off anyway.
_TOKEN_RE = re.compile(r"([0-9a-f]{32}):(-?(?:0|[1-9][0-9]{0,19}))")


class TokenError(Exception):
    """The token is missing, malformed, expired or signed with another key/name."""


def generate_token(key, timestamp, name):
    """Return the token Specify computes for `name` at `timestamp` with `key`."""
    message = str(timestamp).encode("utf-8") + name.encode("utf-8")
    digest = hmac.new(key.encode("utf-8"), message, "md5").hexdigest()
    return "%s:%d" % (digest, timestamp)


def validate_token(keys, tolerance, token, name, now):
    """Accept `token` for `name` at time `now`, or raise TokenError.

    `keys` is a tuple of accepted keys (empty: security off, everything
    passes). `tolerance` is TIME_TOLERANCE in seconds or None (no time check).
    `now` is when the request arrived, so a long upload is judged by the
    moment it started (web-asset-server#11).
    """
    if not keys:
        return
    # COMPAT: the reference judges whole seconds (int(time.time())), so +-150 s
    # fails even when the request arrived 0.9 s into a second.
    now = int(now)
    match = _TOKEN_RE.fullmatch(token or "")
    if match is None:
        # COMPAT: the reference answers 500 for 'a:b:c'; a bad token is a 403.
        raise TokenError("malformed token")
    timestamp = int(match.group(2))
    # COMPAT: strict inequality; +-149 s passes, +-150 s fails, like the reference.
    if tolerance is not None and not abs(now - timestamp) < tolerance:
        raise TokenError("token expired")
    for key in keys:
        # SECURITY: constant-time comparison of the whole token.
        if hmac.compare_digest(generate_token(key, timestamp, name), token):
            return
    raise TokenError("bad token")
