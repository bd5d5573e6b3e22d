"""The WSGI application: route table, dispatch, token policy and the error table."""

import errno
import logging
import re
import time
from typing import Callable, NamedTuple, Optional

from . import auth, errors, handlers, logutil, metrics, multipart, storage, thumbnails
from .httputil import Offload, Request, Response
from .storage import factory

logger = logging.getLogger(__name__)

__all__ = ["App", "Route", "ROUTES", "create_app"]


class Route(NamedTuple):
    """One endpoint: its path, methods, handler and per-route policy."""

    path: str
    methods: tuple
    handler: Callable
    token: Optional[str] = None  # the field the token signs
    token_in: str = "query"  # 'query', 'form', or 'handler' (the handler checks it itself)
    always: bool = False  # token required even when REQUIRE_KEY_FOR_GET is off
    cors: bool = False  # Access-Control-Allow-Origin: * on every response
    prefix: bool = False  # path is a prefix; the rest goes to the handler as `path`


GET = ("GET", "HEAD")

ROUTES = (
    #     path                    methods              handler                    token       policy
    Route("/", GET, handlers.index),
    Route("/web_asset_store.xml", GET, handlers.web_asset_store),
    Route("/testkey", GET, handlers.testkey, token="random", always=True),
    Route("/fileget", GET, handlers.fileget, token="filename"),
    Route("/fileupload", ("POST", "OPTIONS"), handlers.fileupload, token="store",
          token_in="handler", always=True, cors=True),
    Route("/filedelete", ("POST",), handlers.filedelete, token="filename", token_in="form",
          always=True),
    Route("/getmetadata", GET, handlers.getmetadata, token="filename"),
    Route("/getfileref", GET, handlers.getfileref, cors=True),
    Route("/static/", GET, handlers.static, prefix=True),
    # Monitoring, outside the Specify protocol: no token, ever.
    Route("/healthz", GET, handlers.healthz),
    Route("/readyz", GET, handlers.readyz),
    Route("/metrics", GET, handlers.metrics),
)

class ErrorRule(NamedTuple):
    """One row of the error table: which domain errors, and what the client and the log get."""

    domain: type  # this exception class and its subclasses
    http_error: type  # the errors.HTTPError answered
    show_message: bool = True  # str(error) is the one-line body; else the status's default
    retry_after: bool = False  # Retry-After: the error's `retry_after` seconds
    errnos: tuple = ()  # for OSError rows: only these errno values
    log_level: Optional[int] = None  # log the error at this level (with %(method)s ...)
    log_format: str = ""
    traceback: bool = False  # log the traceback too

    def matches(self, ex):
        """Tell whether this row applies to `ex`."""
        return isinstance(ex, self.domain) and (not self.errnos or ex.errno in self.errnos)

    def http(self, ex):
        """Return the HTTP error the client sees for `ex`."""
        description = (str(ex) or None) if self.show_message else None
        if self.retry_after:
            return self.http_error(description, getattr(ex, "retry_after", 1))
        return self.http_error(description)


# Domain error -> HTTP error. Keep this the only such mapping; the first matching row wins.
ERROR_TABLE = (
    # COMPAT: an empty 403 body, like the reference; the log says why (a wrong
    # attachment.key or clock skew is the usual Specify set-up problem).
    ErrorRule(auth.TokenError, errors.Forbidden, show_message=False,
              log_level=logging.INFO, log_format="Refused %(method)s %(path)s: %(error)s"),
    ErrorRule(storage.UnsafeName, errors.BadRequest),
    ErrorRule(storage.UnknownCollection, errors.NotFound),
    ErrorRule(storage.MissingFile, errors.NotFound),
    # SECURITY: an OSError's message names a server path; it never reaches the client.
    ErrorRule(FileNotFoundError, errors.NotFound, show_message=False),
    ErrorRule(storage.BadUpload, errors.BadRequest),
    ErrorRule(storage.StoreUnavailable, errors.ServiceUnavailable, show_message=False,
              retry_after=True, log_level=logging.WARNING,
              log_format="Store unavailable on %(method)s %(path)s: %(error)s"),
    # SECURITY: a store's message may name the bucket and key; it stays in the log.
    ErrorRule(storage.StoreFailed, errors.BadGateway, show_message=False,
              log_level=logging.ERROR, log_format="Store failed on %(method)s %(path)s: %(error)s"),
    ErrorRule(multipart.BodyTooLarge, errors.PayloadTooLarge),
    ErrorRule(multipart.MultipartError, errors.BadRequest),
    ErrorRule(thumbnails.BadScale, errors.BadRequest),
    ErrorRule(thumbnails.NotThumbnailable, errors.NotFound),
    ErrorRule(thumbnails.Busy, errors.ServiceUnavailable, retry_after=True),
    ErrorRule(thumbnails.DiskFull, errors.InsufficientStorage),
    ErrorRule(thumbnails.ThumbnailError, errors.UnprocessableEntity),
    ErrorRule(OSError, errors.InsufficientStorage, show_message=False,
              errnos=(errno.ENOSPC, errno.EDQUOT), log_level=logging.ERROR,
              log_format="Disk full on %(method)s %(path)s: %(error)s"),
    ErrorRule(OSError, errors.InternalServerError, show_message=False,
              log_level=logging.ERROR, log_format="I/O error on %(method)s %(path)s",
              traceback=True),
)
DOMAIN_ERRORS = tuple(rule.domain for rule in ERROR_TABLE)


def error_rule(ex):
    """Return the ERROR_TABLE row for a domain error; TypeError if there is none."""
    for rule in ERROR_TABLE:
        if rule.matches(ex):
            return rule
    raise TypeError("no HTTP error for %r" % (ex,))


def as_http_error(ex):
    """Translate a domain error into the HTTP error the client sees."""
    return error_rule(ex).http(ex)


def error_response(error):
    """Render an HTTPError as a plain-text one-line response."""
    body = (error.description + "\n").encode("utf-8") if error.description else b""
    return Response(body, error.status, headers=error.headers)


class App:
    """The asset server as a WSGI callable; everything it uses is passed in."""

    def __init__(self, settings, store, thumbnailer, metadata, clock=time.time, routes=ROUTES,
                 metrics=None):
        self.settings = settings
        self.store = store
        self.thumbnailer = thumbnailer
        self.metadata = metadata
        self.clock = clock
        self.routes = routes
        self.metrics = metrics  # a metrics.Metrics, or None when METRICS is off
        self.offload = Offload.from_settings(settings)  # None: files are sent by us

    def __call__(self, environ, start_response):
        started = time.perf_counter()
        request = Request(environ, arrived=self.clock())
        logutil.assign_request_id(environ)
        route = None
        try:
            route, params = self.match(request.method, request.path)
            request.route = route
            if route.token_in != "handler":
                self.authorize(request, route)
            response = self.dispatch(route, request, params)
        except errors.HTTPError as ex:
            response = error_response(ex)
        except DOMAIN_ERRORS as ex:
            response = error_response(self._domain_error(request, ex))
        except Exception:
            logger.exception("Unhandled error on %s %s", request.method, request.path)
            response = error_response(errors.InternalServerError())
        self.finish(request, route, response)
        self.done(request, route, response, started)
        return response(environ, start_response)

    def match(self, method, path):
        """Return (route, handler params); NotFound or MethodNotAllowed."""
        for route in self.routes:
            if route.prefix and path.startswith(route.path):
                params = {"path": path[len(route.path):]}
            elif path == route.path:
                params = {}
            else:
                continue
            if method not in route.methods:
                raise errors.MethodNotAllowed(route.methods)
            return route, params
        raise errors.NotFound()

    def dispatch(self, route, request, params):
        """Run the route's handler; while it runs, the request counts as in progress."""
        if self.metrics is None:
            return route.handler(self, request, **params)
        self.metrics.enter(route.path)
        try:
            return route.handler(self, request, **params)
        finally:
            self.metrics.leave(route.path)

    def done(self, request, route, response, started):
        """Record the answered request in the metrics; end its log context."""
        logutil.clear_request_id()  # later log lines of this thread are not this request's
        if self.metrics is None:
            return
        seconds = time.perf_counter() - started
        status = response.status.value
        has_body = request.method != "HEAD" and status not in (204, 304)
        self.metrics.observe_request(
            route.path if route is not None else metrics.OTHER_ENDPOINT, status, seconds,
            _length(request.environ.get("CONTENT_LENGTH")),
            _length(response.get_header("Content-Length")) if has_body else 0)

    def authorize(self, request, route, fields=None):
        """Check the route's token (from the query, the form, or `fields`); Forbidden.

        GET tokens are checked only with REQUIRE_KEY_FOR_GET, unless the route
        says `always`. The token is judged against the request's arrival time.
        """
        if route.token is None or request.method == "OPTIONS":
            return
        if not (route.always or self.settings.REQUIRE_KEY_FOR_GET):
            return  # COMPAT: the token on a GET is then ignored entirely
        if fields is None:
            fields = request.form() if route.token_in == "form" else request.query
        settings = self.settings
        auth.validate_token(settings.keys, settings.TIME_TOLERANCE, fields.get("token", ""),
                            fields.get(route.token, ""), now=request.arrived)

    def _domain_error(self, request, ex):
        """Log `ex` as its ERROR_TABLE row says; return the HTTP error the client sees."""
        rule = error_rule(ex)
        if rule.log_level is not None:
            logger.log(rule.log_level, rule.log_format,
                       {"method": request.method, "path": request.path, "error": ex},
                       exc_info=ex if rule.traceback else None)
        return rule.http(ex)

    def finish(self, request, route, response):
        """Add the cross-cutting headers; drop the body of HEAD responses."""
        # Specify 6 and 7 resync their clocks from X-Timestamp, even on errors.
        response.set_header("X-Timestamp", str(int(self.clock())))
        response.set_header("X-Request-Id", request.environ[logutil.REQUEST_ID_KEY])
        if route is not None and route.cors:
            response.set_header("Access-Control-Allow-Origin", "*")
        if request.method == "HEAD":
            response.drop_body()


def _length(value):
    """Return a Content-Length header's value as an int (0 if absent, malformed or huge)."""
    # NOTE: not isdigit() ('²' passes) nor int() of any length (refused past 4300 digits).
    value = (value or "").strip()
    return int(value) if re.match(r"[0-9]{1,18}\Z", value) else 0


def create_app(settings, store=None, thumbnailer=None, metadata=None, clock=time.time,
               tools=None):
    """Build the App for `settings`; collaborators default to the real ones.

    The store is the one STORAGE names (storage.factory; ConfigError). With METRICS on, the
    default thumbnailer also reports to the app's metrics. `tools` (a thumbnails.Toolchain)
    lets engines share one probe of the converters.
    """
    from . import metadata as metadata_module  # NOTE: keeps ExifRead off the import path of tools

    registry = metrics.Metrics() if settings.METRICS else None
    if store is None:
        store = factory.open_store(settings)  # ConfigError
    if thumbnailer is None:
        thumbnailer = thumbnails.Thumbnailer(
            convert=settings.CONVERT, gs=settings.GHOSTSCRIPT, timeout=settings.THUMBNAIL_TIMEOUT,
            max_workers=settings.thumbnail_workers, max_queue=settings.THUMBNAIL_QUEUE,
            max_pixels=settings.MAX_PIXELS, can_thumbnail=settings.CAN_THUMBNAIL,
            observer=registry,
            # Every process and host on this store (serve's workers, mod_wsgi daemons,
            # pregen) renders one thumbnail at most once at a time.
            lock_dir=factory.lock_dir(settings), tools=tools,
            leases=settings.THUMBNAIL_LEASES)
    if registry is not None:
        registry.thumbnailer = thumbnailer
        registry.store = store
    return App(settings, store, thumbnailer, metadata or metadata_module, clock, metrics=registry)
