"""Endpoint handlers, one per reference endpoint: handler(app, request, **params) -> Response."""

import json
import logging
import pkgutil
from urllib.request import pathname2url
from xml.sax.saxutils import escape

from . import errors, health, multipart, storage, thumbnails
from . import metrics as metrics_module
from .httputil import (TEXT_PLAIN, Response, content_disposition, file_response, guess_type,
                       read_options)

logger = logging.getLogger(__name__)

OK = b"Ok."
MAX_FIELD_BYTES = 64 * 1024
_XML_TEMPLATE = pkgutil.get_data(__name__.rpartition(".")[0], "web_asset_store.xml").decode("utf-8")


def index(app, request):
    """Answer the reference's health check."""
    return Response(b"It works!", content_type="text/html; charset=UTF-8")


def web_asset_store(app, request):
    """Serve web_asset_store.xml, the URLs Specify discovers at start-up."""
    base = app.settings.public_base(request.script_name)
    body = _XML_TEMPLATE.format(base=base, base_escaped=escape(base))
    return Response(body.encode("utf-8"), content_type="text/xml; charset=utf-8")


def testkey(app, request):
    """Answer 'Ok.' to a valid token for `random` (checked by the route policy)."""
    return Response(OK)


def _scale(app, scale_value):
    """Return the size a `scale` query value asks for (the ladder's); BadScale."""
    settings = app.settings
    return thumbnails.parse_scale(scale_value, settings.MAX_SCALE, settings.THUMBNAIL_SIZES)


def _thumbnail(app, coll, name, scale_value):
    """Make (or find) the thumbnail of an original; return (thumbnail name, content type).

    Raises BadScale, MissingFile, NotThumbnailable, ThumbnailError, Busy.
    """
    return app.thumbnailer.thumbnail_of(app.store, coll, name, _scale(app, scale_value))


def fileget(app, request):
    """Serve an original (type=O) or a thumbnail (type=T).

    404 for a missing file or unknown collection, 400 for a bad name or
    scale, 404 for a type that cannot be thumbnailed, 503 when busy.
    """
    query = request.query
    coll, name = query.get("coll"), storage.check_name(query.get("filename", ""))
    # COMPAT: any type other than T means the original; a missing type too (the reference 500s).
    options = read_options(request)
    if query.get("type") == "T":
        handle, content_type = app.thumbnailer.open_thumbnail(
            app.store, coll, name, _scale(app, query.get("scale")), options)
        return file_response(request, handle, content_type, offload=app.offload)
    handle = app.store.open(coll, name, options=options)
    disposition = content_disposition(query.get("downloadname"))
    headers = [("Content-Disposition", disposition)] if disposition else []
    return file_response(request, handle, guess_type(name), headers, offload=app.offload)


def fileupload(app, request):
    """Store an uploaded original atomically; ignore Specify 6's thumbnail uploads.

    The body streams to a temporary file next to the target and is renamed
    into place only when complete and authorised, so a failed or
    interrupted upload leaves the previous version intact. 403 bad token,
    400 malformed body or name, 404 unknown collection, 413 too large.
    """
    if request.method == "OPTIONS":
        # CORS preflight: Specify 7's XHR upload with a progress listener sends one.
        return Response(b"")
    boundary = multipart.get_boundary(request.header("Content-Type", ""))
    reader = multipart.MultipartReader(request.input, boundary, request.content_length,
                                       limit=app.settings.MAX_UPLOAD_SIZE)
    upload = _Upload(app, request)
    try:
        for part in reader:
            if part.filename is None:
                upload.fields[part.name] = part.text(MAX_FIELD_BYTES)
            elif upload.file_seen:
                part.discard()  # COMPAT: the first file part wins, whatever its field name
            else:
                upload.receive(part)
        return upload.finish()
    finally:
        upload.discard()


class _Upload:
    """One /fileupload body, in either client's order of parts.

    Specify 6: type, store, token, coll (and disp, div, inst), then the file. The upload is
    judged when the file part starts, so a bad token is refused before the body is read
    and a thumbnail (type=T) is skipped unread. Specify 7: the file, then token, store, type,
    coll. The file is staged (in BASE_DIR while `coll` is unknown), then judged at the end.
    """

    def __init__(self, app, request):
        self.app = app
        self.request = request
        self.fields = {}
        self.file_seen = False
        self.staged = None  # a storage.StagedFile once the file is being received
        self.coll = None  # the collection `coll` resolved to, once check() passed
        self._judged = None  # the fields the last check() passed

    @property
    def is_thumbnail(self):
        # COMPAT: Specify 6 uploads its own thumbnail with the original's store name.
        return self.fields.get("type") == "T"

    def check(self):
        """Judge the token and names, once per set of fields; Forbidden, BadRequest, NotFound."""
        judged = tuple(self.fields.get(name) for name in ("token", "store", "coll", "type"))
        if judged == self._judged:
            return
        self.app.authorize(self.request, self.request.route, self.fields)
        if not self.is_thumbnail:
            storage.check_name(self.fields.get("store", ""), "store")
            # Unknown -> 404; lenient: an old Specify 6 sends "Colección" as "Colecci?n".
            self.coll = self.app.store.resolve_collection(self.fields.get("coll"), lenient=True)
        self._judged = judged

    def receive(self, part):
        """Stream the file part to a staged file, or skip a Specify 6 thumbnail."""
        self.file_seen = True
        fields_first = "store" in self.fields and "token" in self.fields  # Specify 6
        if fields_first:
            self.check()
            if self.is_thumbnail:
                part.discard()
                return
        coll = self.coll if fields_first else self.fields.get("coll")
        # Specify 6's name is known (and checked): a remote store can stream to its key.
        self.staged = self.app.store.stage(coll, known_coll=fields_first,
                                           name=self.fields["store"] if fields_first else None,
                                           expected_size=self.request.content_length)
        part.copy_to(self.staged)

    def finish(self):
        """Judge the complete upload and publish the file; return the response."""
        self.check()
        if self.is_thumbnail:
            return Response(b"Ignoring thumbnail upload!")
        if self.staged is None:
            raise errors.BadRequest("No file in the upload.")
        self.app.store.save_original(self.coll, self.fields["store"], self.staged)
        logger.info("Stored %s (%d bytes)", self.fields["store"], self.staged.size)
        return Response(OK)

    def discard(self):
        """Remove the staged file unless it was published; never raises."""
        if self.staged is not None:
            self.staged.discard()


def filedelete(app, request):
    """Delete an original and exactly its own thumbnails (token checked by the route).

    404 if there is no such original; 400 for an unsafe name.
    """
    form = request.form()
    name = storage.check_name(form.get("filename", ""))
    removed = app.store.delete_original(
        form.get("coll"), name, lambda candidate: thumbnails.is_thumbnail_of(name, candidate))
    logger.info("Deleted %s and %d thumbnail(s)", name, len(removed))
    return Response(OK)


def getmetadata(app, request):
    """Serve EXIF as Specify 6's JSON, or DateTimeOriginal with dt=date (404 if none)."""
    query = request.query
    coll, name = query.get("coll"), storage.check_name(query.get("filename", ""))
    # Seekable: ExifRead reads a few KiB of it (in ranges, from a remote store).
    with app.store.open(coll, name) as original:  # MissingFile -> 404
        if query.get("dt") == "date":
            date = app.metadata.date_original(original)
            if date is None:
                raise errors.NotFound("No DateTimeOriginal in this file.")
            return Response(date.encode("utf-8"))
        exif = app.metadata.read_exif(original)
    body = json.dumps(exif, indent=4, ensure_ascii=False)
    return Response(body.encode("utf-8"), content_type="application/json")


def _require_static_access(app):
    if not app.settings.ALLOW_STATIC_FILE_ACCESS:
        raise errors.NotFound()


def getfileref(app, request):
    """Return a /static URL for an original or a (generated) thumbnail: the legacy portal.

    COMPAT: the URL uses HOST:PORT, not SERVER_NAME; no token; for type=O
    the file's existence is not checked.
    """
    _require_static_access(app)
    query = request.query
    coll, name = query.get("coll"), storage.check_name(query.get("filename", ""))
    if query.get("type") == "T":
        static_name = app.store.static_name(coll, _thumbnail(app, coll, name, query.get("scale"))[0],
                                            storage.THUMBNAIL)
    else:
        static_name = app.store.static_name(coll, name)
    settings = app.settings
    url = "http://%s:%d/static/%s" % (settings.HOST, settings.PORT,
                                      pathname2url(static_name).lstrip("/"))
    return Response(url.encode("utf-8"), content_type=TEXT_PLAIN)


def static(app, request, path):
    """Serve a file of the store (under BASE_DIR, or the bucket's prefix) for the legacy portal."""
    _require_static_access(app)
    return file_response(request, app.store.open_static(path, read_options(request)),
                         guess_type(path), offload=app.offload)


# ---------------------------------------------------------------------------- monitoring

def healthz(app, request):
    """Answer liveness: the process serves requests (no I/O at all)."""
    return Response(b"ok\n")


def readyz(app, request):
    """Answer readiness: 200 if the store is writable and the converters exist, else 503.

    The body has one line per check; a failing one says why. No paths: no token is needed.
    """
    results = health.readiness(app)
    lines = ["ok %s" % name if problem is None else "FAIL %s: %s" % (name, problem)
             for name, problem in results]
    ready = all(problem is None for _, problem in results)
    # NOTE: a 503 here is the answer, not an error of the request: no Retry-After.
    return Response(("\n".join(lines) + "\n").encode("utf-8"), 200 if ready else 503)


def metrics(app, request):
    """Serve the Prometheus text exposition; 404 when METRICS is off."""
    if app.metrics is None:
        raise errors.NotFound()
    return Response(app.metrics.render().encode("utf-8"),
                    content_type=metrics_module.CONTENT_TYPE)
