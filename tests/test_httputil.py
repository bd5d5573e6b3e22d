"""Tests for webassets.httputil: ranges, conditional requests, headers."""

import io

import pytest

from webassets import errors, storage
from webassets.httputil import Request, _parse_range, content_disposition, file_response, guess_type


@pytest.mark.parametrize("header, expected", [
    ("bytes=2-5", (2, 5)), ("bytes=0-", (0, 9)), ("bytes=-3", (7, 9)), ("bytes=5-100", (5, 9)),
    ("bytes=-100", (0, 9)), ("bytes=0-0,5-6", None), ("items=1-2", None), ("bytes=5-2", None),
    ("bytes=-", None),
])
def test_parse_range(header, expected):
    assert _parse_range(header, 10) == expected


@pytest.mark.parametrize("header", ["bytes=50-60", "bytes=10-", "bytes=-0"])
def test_unsatisfiable_range(header):
    with pytest.raises(errors.RangeNotSatisfiable):
        _parse_range(header, 10)


@pytest.mark.parametrize("name, expected", [
    ("testFile.jpg", "inline; filename*=utf-8''testFile.jpg"),
    ("My Photo (1).jpg", "inline; filename*=utf-8''My%20Photo%20%281%29.jpg"),
    ("dir/sub/x.png", "inline; filename*=utf-8''x.png"),
    ("C:\\x\\y.jpg", "inline; filename*=utf-8''y.jpg"),
    ("résumé.pdf", "inline; filename*=utf-8''r%C3%A9sum%C3%A9.pdf"),
    ("a\r\nSet-Cookie: x=1", "inline; filename*=utf-8''a%0D%0ASet-Cookie%3A%20x%3D1"),
    ("", None), (None, None), ("dir/", None),
])
def test_content_disposition(name, expected):
    assert content_disposition(name) == expected


@pytest.mark.parametrize("name, expected", [
    ("a.jpg", "image/jpeg"), ("a.JPG", "image/jpeg"), ("a.pdf", "application/pdf"),
    ("a.png", "image/png"), ("a.tif", "image/tiff"), ("a.txt", "text/plain; charset=UTF-8"),
    ("a.heic", "image/heic"), ("README", "application/octet-stream"),
    ("a.unknownext", "application/octet-stream"),
])
def test_guess_type(name, expected):
    assert guess_type(name) == expected


def _request(**headers):
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/x", "QUERY_STRING": ""}
    for name, value in headers.items():
        environ["HTTP_" + name.upper()] = value
    return Request(environ, arrived=0)


def _file(tmp_path, data=b"0123456789"):
    path = tmp_path / "f.bin"
    if not path.exists():
        path.write_bytes(data)
    return storage.open_local(str(path))


def test_file_response_full_and_etag_304(tmp_path):
    response = file_response(_request(), _file(tmp_path), "image/jpeg")
    assert response.status == 200 and b"".join(response.body) == b"0123456789"
    etag = response.get_header("ETag")
    response.drop_body()
    again = file_response(_request(if_none_match=etag), _file(tmp_path), "image/jpeg")
    assert again.status == 304 and again.get_header("Content-Type") is None


def test_file_response_if_modified_since(tmp_path):
    first = file_response(_request(), _file(tmp_path), "image/jpeg")
    first.drop_body()
    since = first.get_header("Last-Modified")
    assert file_response(_request(if_modified_since=since), _file(tmp_path), "x/y").status == 304
    stale = "Thu, 01 Jan 1970 00:00:00 GMT"
    response = file_response(_request(if_modified_since=stale), _file(tmp_path), "x/y")
    assert response.status == 200
    response.drop_body()


def test_file_response_range(tmp_path):
    response = file_response(_request(range="bytes=2-5"), _file(tmp_path), "image/jpeg")
    assert response.status == 206
    assert response.get_header("Content-Range") == "bytes 2-5/10"
    assert response.get_header("Content-Length") == "4"
    assert b"".join(response.body) == b"2345"
    response.drop_body()


def test_if_range_mismatch_sends_whole_file(tmp_path):
    response = file_response(_request(range="bytes=2-5", if_range='"other"'), _file(tmp_path), "a/b")
    assert response.status == 200
    response.drop_body()


def test_query_last_duplicate_wins_and_plus_is_space():
    request = Request({"QUERY_STRING": "filename=a&filename=b&coll=KU+Fish&token=x%3A1"}, 0)
    assert request.query == {"filename": "b", "coll": "KU Fish", "token": "x:1"}


def test_path_info_is_recoded_from_latin1():
    raw = "/static/originals/é.jpg".encode("utf-8").decode("latin-1")
    assert Request({"PATH_INFO": raw}, 0).path == "/static/originals/é.jpg"


def test_form_too_large():
    body = b"a=" + b"x" * 70000
    request = Request({"REQUEST_METHOD": "POST", "CONTENT_LENGTH": str(len(body)),
                       "wsgi.input": io.BytesIO(body)}, 0)
    with pytest.raises(errors.PayloadTooLarge):
        request.form()
