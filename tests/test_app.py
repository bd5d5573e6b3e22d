"""The error table of webassets.app and the upload flow's checks, in-process."""

import errno
import logging

import pytest

from tests.fakes import FakeInput
from tests.helpers import SP6_BOUNDARY, U6, call, multipart_body, sp6_upload, token
from webassets import app as app_module
from webassets import auth, errors, multipart, storage, thumbnails


@pytest.mark.parametrize("error, status, body", [
    (auth.TokenError("expired"), 403, ""),  # COMPAT: the reference's empty 403
    (storage.UnsafeName("missing filename"), 400, "missing filename"),
    (storage.UnknownCollection("Unknown collection: 'x'"), 404, "Unknown collection: 'x'"),
    (FileNotFoundError(errno.ENOENT, "No such file", "/srv/store/x"), 404, "Not found."),
    (multipart.BodyTooLarge("too large"), 413, "too large"),
    (thumbnails.Busy(retry_after=7), 503, "thumbnail queue full"),
    (thumbnails.DiskFull("no space"), 507, "no space"),
    (thumbnails.ThumbnailError("convert could not convert this file (exit 1)"), 422,
     "convert could not convert this file (exit 1)"),
    (OSError(errno.ENOSPC, "No space left on device", "/srv/store/x"), 507,
     errors.InsufficientStorage.description),
    (OSError(errno.EIO, "Input/output error", "/srv/store/x"), 500,
     errors.InternalServerError.description),
])
def test_error_table(error, status, body):
    http_error = app_module.as_http_error(error)
    assert (http_error.status, http_error.description) == (status, body)
    retry_after = [value for name, value in http_error.headers if name == "Retry-After"]
    assert retry_after == (["7"] if status == 503 else [])


def test_every_domain_error_has_a_row():
    with pytest.raises(TypeError):
        app_module.as_http_error(ValueError("not a domain error"))


def test_os_errors_are_logged_never_shown(app, monkeypatch, caplog):
    def broken(coll, name, kind=None, options=None):
        raise OSError(errno.EIO, "Input/output error", "/srv/secret/path")

    monkeypatch.setattr(app.store, "open", broken)
    caplog.set_level(logging.ERROR, logger="webassets.app")
    res = call(app, "GET", "/fileget", {"type": "O", "filename": "a.jpg"})
    assert res.status == 500 and b"secret" not in res.body
    assert "I/O error on GET /fileget" in caplog.text and "Traceback" in caplog.text


def test_sp6_upload_is_judged_before_its_file_and_again_if_a_field_changes(app):
    # Fields first, then the file: the token is judged before the file is read ...
    body, headers = sp6_upload(U6, b"x" * (4 * multipart.CHUNK_SIZE), token(U6, key="wrong"))
    stream = FakeInput(body)
    headers["Content-Length"] = str(len(body))
    assert call(app, "POST", "/fileupload", body=stream, headers=headers).status == 403
    assert stream.count <= multipart.CHUNK_SIZE
    # ... and a field sent after the file (here another `store`) is judged too.
    parts = [(['Content-Disposition: form-data; name="%s"' % name], value.encode())
             for name, value in (("type", "O"), ("store", U6), ("token", token(U6)))]
    parts.append((['Content-Disposition: form-data; name="f"; filename="f"'], b"data"))
    parts.append((['Content-Disposition: form-data; name="store"'], b"other.jpg"))
    headers = {"Content-Type": "multipart/form-data; boundary=" + SP6_BOUNDARY}
    res = call(app, "POST", "/fileupload", body=multipart_body(parts, SP6_BOUNDARY),
               headers=headers)
    assert res.status == 403


def test_unchanged_fields_are_judged_once(app, monkeypatch):
    judged = []
    authorize = app.authorize
    monkeypatch.setattr(app, "authorize", lambda *args: judged.append(1) or authorize(*args))
    body, headers = sp6_upload(U6, b"x", token(U6))
    assert call(app, "POST", "/fileupload", body=body, headers=headers).status == 200
    assert len(judged) == 1
