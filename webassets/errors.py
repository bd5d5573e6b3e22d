"""HTTP errors: raise anywhere during a request; app.py renders them."""

from http import HTTPStatus

__all__ = [
    "HTTPError", "BadRequest", "Forbidden", "NotFound", "MethodNotAllowed",
    "LengthRequired", "PayloadTooLarge", "RangeNotSatisfiable",
    "UnprocessableEntity", "InternalServerError", "BadGateway", "ServiceUnavailable",
    "InsufficientStorage",
]


class HTTPError(Exception):
    """Base for errors that map to exactly one HTTP status.

    `description` is the one-line plain-text body; `headers` are extra
    response headers (e.g. `Allow`, `Retry-After`).
    """

    status = HTTPStatus.INTERNAL_SERVER_ERROR
    description = "Internal server error."

    def __init__(self, description=None, headers=()):
        super().__init__(description or self.description)
        if description is not None:
            self.description = description
        self.headers = list(headers)


class BadRequest(HTTPError):
    """400: a parameter or the request body is malformed."""

    status = HTTPStatus.BAD_REQUEST
    description = "Bad request."


class Forbidden(HTTPError):
    """403: the token is missing, malformed, expired or wrong."""

    status = HTTPStatus.FORBIDDEN
    # COMPAT: the reference answers 403 with an empty body; clients read only the status.
    description = ""


class NotFound(HTTPError):
    """404: the path, collection, original or thumbnail does not exist."""

    status = HTTPStatus.NOT_FOUND
    description = "Not found."


class MethodNotAllowed(HTTPError):
    """405: the path exists but not for this method; sets `Allow`."""

    status = HTTPStatus.METHOD_NOT_ALLOWED
    description = "Method not allowed."

    def __init__(self, allowed, description=None):
        super().__init__(description, [("Allow", ",".join(sorted(allowed)))])


class LengthRequired(HTTPError):
    """411: an upload without Content-Length on a host that cannot frame it."""

    status = HTTPStatus.LENGTH_REQUIRED
    description = "Content-Length required."


class PayloadTooLarge(HTTPError):
    """413: the upload exceeds MAX_UPLOAD_SIZE."""

    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    description = "Upload too large."


class RangeNotSatisfiable(HTTPError):
    """416: the Range header lies outside the file; sets `Content-Range`."""

    status = HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE
    description = "Requested range not satisfiable."

    def __init__(self, size):
        super().__init__(None, [("Content-Range", "bytes */%d" % size)])


class UnprocessableEntity(HTTPError):
    """422: the file exists but cannot be converted (corrupt or hostile)."""

    status = HTTPStatus.UNPROCESSABLE_ENTITY
    description = "The file could not be processed."


class InternalServerError(HTTPError):
    """500: an unexpected error; the traceback is in the log, never in the body."""


class BadGateway(HTTPError):
    """502: the store behind us (a bucket) refused or failed; the details are in the log."""

    status = HTTPStatus.BAD_GATEWAY
    description = "The storage service failed."


class ServiceUnavailable(HTTPError):
    """503: the server is overloaded; sets `Retry-After`."""

    status = HTTPStatus.SERVICE_UNAVAILABLE
    description = "Server busy, retry later."

    def __init__(self, description=None, retry_after=1):
        super().__init__(description, [("Retry-After", str(int(retry_after)))])


class InsufficientStorage(HTTPError):
    """507: the disk is full; the previous version of the file is intact."""

    status = HTTPStatus.INSUFFICIENT_STORAGE
    description = "Insufficient storage on the server."
