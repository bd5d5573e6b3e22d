"""Tests for webassets.multipart: client layouts, chunk borders, limits, errors, fuzzing."""

import io
import random
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fakes import FakeInput
from webassets import multipart
from webassets.multipart import (
    CHUNK_SIZE, BodyTooLarge, IncompleteBody, MultipartError, MultipartReader,
    get_boundary, parse_header_params,
)

SMALL_CHUNKS = (1, 7, 64, CHUNK_SIZE)

CHROME_TYPE = "multipart/form-data; boundary=----WebKitFormBoundaryAbC123"
CHROME_DASH = b"------WebKitFormBoundaryAbC123"  # "--" + boundary
HTTPMIME_BOUNDARY = b"Xq9-_aB3cD4eF5gH6iJ7kL8mN9oP0qR1s"
HTTPMIME_TYPE = "multipart/form-data; boundary=%s; charset=UTF-8" % HTTPMIME_BOUNDARY.decode()
TOKEN = b"0123456789abcdef0123456789abcdef:1700000000"
STORE = b"sp62617394751943871.att.jpg"
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(256)) + b"\r\n--\r\n\xff\xd9"


def strict_input(data, announced=None, max_read=None):
    """Return a wsgi.input that holds the reader to WSGI: read(n), n > 0, never past the end."""
    return FakeInput(data, max_read=max_read, strict=True, announced=announced)


def chrome_body(file_data=JPEG, coll="Colección"):
    """Build the Specify 7 (Chrome FormData) upload body of PROTOCOL.md 7 byte for byte."""
    return (
        CHROME_DASH + b'\r\nContent-Disposition: form-data; name="file"; filename="photo.jpg"'
        b"\r\nContent-Type: image/jpeg\r\n\r\n" + file_data + b"\r\n"
        + CHROME_DASH + b'\r\nContent-Disposition: form-data; name="token"\r\n\r\n'
        + TOKEN + b"\r\n"
        + CHROME_DASH + b'\r\nContent-Disposition: form-data; name="store"\r\n\r\n'
        + STORE + b"\r\n"
        + CHROME_DASH + b'\r\nContent-Disposition: form-data; name="type"\r\n\r\nO\r\n'
        + CHROME_DASH + b'\r\nContent-Disposition: form-data; name="coll"\r\n\r\n'
        + coll.encode("utf-8") + b"\r\n" + CHROME_DASH + b"--\r\n")


def httpmime_text_part(name, value):
    return (b"--" + HTTPMIME_BOUNDARY + b'\r\nContent-Disposition: form-data; name="' + name
            + b'"\r\nContent-Type: text/plain; charset=ISO-8859-1\r\n'
            b"Content-Transfer-Encoding: 8bit\r\n\r\n" + value.encode("latin-1") + b"\r\n")


def httpmime_body(file_data=JPEG, filename=b"IMG 0001.JPG", coll="Colección"):
    """Build the Specify 6 (httpmime 4.5.10 STRICT) upload body of PROTOCOL.md 7."""
    fields = ((b"type", "O"), (b"store", STORE.decode()), (b"token", TOKEN.decode()),
              (b"coll", coll), (b"disp", "Botánica"), (b"div", "Plants"), (b"inst", "KU"))
    return (b"".join(httpmime_text_part(name, value) for name, value in fields)
            + b"--" + HTTPMIME_BOUNDARY + b'\r\nContent-Disposition: form-data; name="' + filename
            + b'"; filename="' + filename + b'"\r\nContent-Type: application/octet-stream\r\n'
            b"Content-Transfer-Encoding: binary\r\n\r\n" + file_data + b"\r\n"
            + b"--" + HTTPMIME_BOUNDARY + b"--\r\n")


def build_body(boundary, parts, preamble=b"", epilogue=b"\r\n"):
    """Build a body from (header lines, data) pairs."""
    out = [preamble]
    for headers, data in parts:
        out.append(b"--" + boundary + b"\r\n" + b"".join(h + b"\r\n" for h in headers)
                   + b"\r\n" + data + b"\r\n")
    out.append(b"--" + boundary + b"--" + epilogue)
    return b"".join(out)


def field(name, value):
    return ([b'Content-Disposition: form-data; name="' + name + b'"'], value)


def parse(body, boundary, chunk_size=CHUNK_SIZE, length="auto", limit=None, max_read=None,
          stream=None):
    """Read every part fully; return [(part, body bytes)]."""
    length = len(body) if length == "auto" else length
    stream = stream or strict_input(body, length, max_read)
    reader = MultipartReader(stream, boundary, length, limit=limit, chunk_size=chunk_size)
    return [(part, part.read()) for part in reader]


# ---------------------------------------------------------------- client layouts

@pytest.mark.parametrize("chunk_size", SMALL_CHUNKS)
def test_chrome_layout_file_first(chunk_size):
    parts = parse(chrome_body(), get_boundary(CHROME_TYPE), chunk_size)
    assert [(p.name, p.filename, p.content_type) for p, _ in parts] == [
        ("file", "photo.jpg", "image/jpeg"), ("token", None, "text/plain"),
        ("store", None, "text/plain"), ("type", None, "text/plain"), ("coll", None, "text/plain")]
    assert parts[0][1] == JPEG
    assert [data for _, data in parts[1:4]] == [TOKEN, STORE, b"O"]
    assert parts[4][1].decode("utf-8") == "Colección"
    assert parts[4][0].charset is None


@pytest.mark.parametrize("chunk_size", SMALL_CHUNKS)
def test_httpmime_layout_file_last(chunk_size):
    body = httpmime_body()
    reader = MultipartReader(strict_input(body, len(body)), get_boundary(HTTPMIME_TYPE), len(body),
                             chunk_size=chunk_size)
    values, files = {}, []
    for part in reader:
        if part.filename is None:
            assert part.charset == "ISO-8859-1"
            assert part.headers["content-transfer-encoding"] == "8bit"
            values[part.name] = part.text()
        else:
            sink = io.BytesIO()
            files.append((part.name, part.filename, part.content_type, part.copy_to(sink)))
            assert sink.getvalue() == JPEG
    assert values == {"type": "O", "store": STORE.decode(), "token": TOKEN.decode(),
                      "coll": "Colección", "disp": "Botánica", "div": "Plants", "inst": "KU"}
    assert files == [("IMG 0001.JPG", "IMG 0001.JPG", "application/octet-stream", len(JPEG))]


def test_httpmime_latin1_bytes_on_the_wire():
    assert "Colección".encode("latin-1") in httpmime_body()
    assert "Colección".encode("utf-8") not in httpmime_body()


def test_empty_file_and_empty_filename():
    body = build_body(b"b", [
        ([b'Content-Disposition: form-data; name="file"; filename="empty.jpg"'], b""),
        ([b'Content-Disposition: form-data; name="other"; filename=""'], b""),
        field(b"token", b"t")])
    parts = parse(body, b"b", chunk_size=3)
    assert [(p.name, p.filename, data) for p, data in parts] == [
        ("file", "empty.jpg", b""), ("other", "", b""), ("token", None, b"t")]


def test_chrome_empty_form_has_no_parts():
    assert parse(CHROME_DASH + b"--\r\n", get_boundary(CHROME_TYPE)) == []


def test_part_headers_defaults_and_decoding():
    body = build_body(b"b", [
        ([], b"no headers"),
        ([b'Content-Disposition: form-data; name="f"; filename="fot\xc3\xb3.jpg"'], b"utf8"),
        ([b'content-disposition: form-data; name="g"; filename="fot\xf3.jpg"',
          b"CONTENT-TYPE: Image/PNG; charset=", b"X-Dup: first", b"X-Dup: second"], b"latin1")])
    (bare, _), (utf8, _), (latin1, _) = parse(body, b"b")
    assert (bare.name, bare.filename, bare.content_type) == ("", None, "text/plain")
    assert bare.headers == {}
    assert utf8.filename == "fotó.jpg"
    assert (latin1.filename, latin1.content_type) == ("fotó.jpg", "image/png")
    assert latin1.charset is None
    assert latin1.headers["x-dup"] == "first"


@pytest.mark.parametrize("encoding", [b"7bit", b"8bit", b"BINARY", b" binary "])
def test_identity_transfer_encodings(encoding):
    body = build_body(b"b", [([b"Content-Transfer-Encoding:" + encoding], b"\x00\xff")])
    assert parse(body, b"b")[0][1] == b"\x00\xff"


def test_other_transfer_encoding_rejected():
    body = build_body(b"b", [([b"Content-Transfer-Encoding: base64"], b"AAAA")])
    with pytest.raises(MultipartError):
        parse(body, b"b")


def test_preamble_padding_and_epilogue_ignored():
    body = (b"This is the preamble.\r\n--b \t \r\n\r\nfirst\r\n--b\t\r\n\r\nsecond"
            b"\r\n--b-- \r\nepilogue --b\r\n")
    stream = strict_input(body + b"NOT PART OF THE BODY", len(body))
    assert [data for _, data in parse(body, b"b", 4, stream=stream)] == [b"first", b"second"]
    assert stream.pos == len(body)  # the epilogue was drained, nothing more was read


def test_close_delimiter_at_eof_without_crlf():
    body = b"--b\r\n\r\nx\r\n--b--"
    assert [data for _, data in parse(body, b"b", length=None)] == [b"x"]


# ---------------------------------------------------------------- binary safety

FAKES = (b"\r\n--notboundary\r\n\r\n--", b"\r\n--%s", b"\r\n--%s!", b"x--%s\r\n", b"\n--%s\r\n",
         b"\r--%s\r\n", b"\r\n-%s\r\n", b"\r\n", b"\r", b"\r\n--", b"-")


def tricky_data(boundary, size, seed):
    """Random bytes with boundary look-alikes at several places, including both ends."""
    rng = random.Random(seed)
    data = bytearray(rng.getrandbits(8 * size).to_bytes(size, "little"))
    fakes = [fake.replace(b"%s", boundary[:-1]) for fake in FAKES]
    for index, fake in enumerate(fakes * 3):
        pos = rng.randrange(len(data)) if index else 0
        data[pos:pos] = fake
    data += b"\r\n--" + boundary[:-1]
    assert b"\r\n--" + boundary not in data
    return bytes(data)


@pytest.mark.parametrize("chunk_size,size", [
    (1, 2000), (7, 20000), (64, 1 << 20), (4093, 1 << 20), (CHUNK_SIZE, 1 << 20)])
def test_random_file_with_fake_boundaries_round_trips(chunk_size, size):
    data = tricky_data(b"----WebKitFormBoundaryAbC123", size, seed=chunk_size)
    parts = parse(chrome_body(data), get_boundary(CHROME_TYPE), chunk_size)
    assert parts[0][1] == data
    assert parts[4][1] == "Colección".encode("utf-8")


@pytest.mark.parametrize("tail", [b"", b"\r", b"\r\n", b"\r\n-", b"\r\n--", b"\r\n--b", b"-"])
@pytest.mark.parametrize("chunk_size", (1, 2, 3, 5))
def test_data_ending_like_a_delimiter(tail, chunk_size):
    body = build_body(b"bb", [field(b"a", b"x" + tail), field(b"c", tail)])
    parts = parse(body, b"bb", chunk_size, max_read=2)
    assert [data for _, data in parts] == [b"x" + tail, tail]


def test_memory_stays_flat_for_a_large_part():
    """Stream a 16 MiB part from a generating stream: peak memory stays O(chunk)."""
    size = 16 << 20
    head = b'--b\r\nContent-Disposition: form-data; name="f"; filename="big"\r\n\r\n'
    tail = b"\r\n--b--\r\n"

    class Generated:
        pos = 0
        total = len(head) + size + len(tail)

        def read(self, want):
            assert want > 0
            start, self.pos = self.pos, min(self.pos + want, self.total)
            body_end = len(head) + size
            zeros = max(0, min(self.pos, body_end) - max(start, len(head)))
            return (head[start:self.pos] + bytes(zeros)
                    + tail[max(start - body_end, 0):max(self.pos - body_end, 0)])

    class Sink:
        written = 0

        def write(self, data):
            self.written += len(data)

    stream, sink = Generated(), Sink()
    tracemalloc.start()
    try:
        for part in MultipartReader(stream, b"b", stream.total):
            assert part.copy_to(sink) == size
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sink.written == size
    assert peak < 6 * CHUNK_SIZE


# ---------------------------------------------------------------- reading API

def test_read_sizes_iter_chunks_and_copy_to():
    body = build_body(b"b", [field(b"a", b"0123456789"), field(b"b", b"abcdef"),
                             field(b"c", b"xyz")])
    reader = MultipartReader(strict_input(body, len(body)), b"b", len(body), chunk_size=3)
    first, second, third = None, None, None
    for part in reader:
        if part.name == "a":
            first = part
            assert part.read(0) == b""
            assert part.read(5) == b"01234"  # several reads of 3 bytes, joined
            chunks = list(part.iter_chunks())
            assert b"".join(chunks) == b"56789"
            assert max(len(chunk) for chunk in chunks) <= 3
            assert part.read() == b""
        elif part.name == "b":
            second = part
            assert part.copy_to(io.BytesIO()) == 6
        else:
            third = part
            part.discard()
            assert part.read() == b""
    assert first.read() == second.read(3) == third.read() == b""


def test_unread_parts_are_skipped_and_then_unreadable():
    body = build_body(b"b", [field(b"a", b"A" * 100), field(b"b", b"B"), field(b"c", b"")])
    reader = MultipartReader(strict_input(body, len(body)), b"b", len(body), chunk_size=8)
    parts = []
    for part in reader:
        parts.append(part)
        if part.name == "b":
            assert part.read(1) == b"B"
    assert [p.name for p in parts] == ["a", "b", "c"]
    with pytest.raises(RuntimeError):
        parts[0].read()  # data was thrown away: loud, not a silent empty file
    assert parts[1].read() == parts[2].read() == b""


def test_text_charsets_and_limit():
    body = build_body(b"b", [
        ([b"Content-Type: text/plain; charset=ISO-8859-1"], "Ñandú".encode("latin-1")),
        ([], "Ñandú".encode("utf-8")),
        ([], "Ñandú".encode("latin-1")),  # not UTF-8: latin-1 fallback
        ([b"Content-Type: text/plain; charset=no-such-charset"], b"ok"),
        ([b"Content-Type: text/plain; charset=hex"], b"ok"),
        ([], b"x" * 11)])
    reader = MultipartReader(strict_input(body, len(body)), b"b", len(body))
    texts = []
    for part in reader:
        if len(texts) < 5:
            texts.append(part.text())
        else:
            with pytest.raises(MultipartError):
                part.text(limit=10)
    assert texts == ["Ñandú", "Ñandú", "Ñandú", "ok", "ok"]


# ---------------------------------------------------------------- broken bodies

def small_body():
    return build_body(b"bnd", [
        ([b'Content-Disposition: form-data; name="f"; filename="a.bin"'], b"\r\n--bn\r\n"),
        field(b"token", b"t:1")])


@pytest.mark.parametrize("chunk_size", (1, 7, 64))
def test_every_truncation_is_incomplete_body(chunk_size):
    body = small_body()
    for cut in range(len(body)):
        with pytest.raises(IncompleteBody):
            parse(body, b"bnd", chunk_size, stream=strict_input(body[:cut], len(body)))


@pytest.mark.parametrize("chunk_size", (1, 7, 64))
def test_every_truncation_without_content_length(chunk_size):
    body = small_body()
    complete = body.index(b"--bnd--") + len(b"--bnd--")
    for cut in range(len(body) + 1):
        if cut < complete:
            with pytest.raises(IncompleteBody):
                parse(body[:cut], b"bnd", chunk_size, length=None)
        else:
            assert len(parse(body[:cut], b"bnd", chunk_size, length=None)) == 2


@pytest.mark.parametrize("body", [
    b"--b\r\n\r\nvalue\r\n",               # no close delimiter
    b"--b\r\n\r\nvalue\r\n--b\r\n",        # a part that never starts
    b"--b\r\nContent-Disposition: form-data; name=\"a\"\r\n",  # headers never end
    b"no boundary here at all",
    b"",
])
def test_missing_close_delimiter(body):
    for length in (len(body), None):
        with pytest.raises(IncompleteBody):
            parse(body, b"b", 4, length=length)


@pytest.mark.parametrize("body", [
    b"--b garbage\r\n\r\nx\r\n--b--\r\n",           # junk after the boundary
    b"--bx\r\n\r\nx\r\n--b--\r\n",                  # boundary is only a prefix of the line
    b"--b\r\nno colon here\r\n\r\nx\r\n--b--\r\n",
    b"--b\r\n: no name\r\n\r\nx\r\n--b--\r\n",
    b"--b" + b" " * (multipart.MAX_PADDING + 10) + b"\r\n\r\nx\r\n--b--\r\n",
])
def test_garbage_is_multipart_error(body):
    with pytest.raises(MultipartError) as info:
        parse(body, b"b", 16)
    assert not isinstance(info.value, IncompleteBody)


def test_header_limits():
    huge = build_body(b"b", [([b"X-Big: " + b"a" * multipart.MAX_HEADER_BYTES], b"")])
    many = build_body(b"b", [([b"X-H: 1"] * (multipart.MAX_HEADERS + 1), b"")])
    for body in (huge, many):
        with pytest.raises(MultipartError) as info:
            parse(body, b"b", 1000)
        assert not isinstance(info.value, IncompleteBody)
    assert len(parse(build_body(b"b", [([b"X-H: 1"] * multipart.MAX_HEADERS, b"")]), b"b")) == 1


def test_part_count_limit():
    body = build_body(b"b", [([], b"")] * multipart.MAX_PARTS)
    assert len(parse(body, b"b")) == multipart.MAX_PARTS
    body = build_body(b"b", [([], b"")] * (multipart.MAX_PARTS + 1))
    with pytest.raises(MultipartError):
        parse(body, b"b")


def test_limit_checked_up_front():
    body = chrome_body()
    stream = strict_input(body, len(body))
    with pytest.raises(BodyTooLarge):
        MultipartReader(stream, get_boundary(CHROME_TYPE), len(body), limit=len(body) - 1)
    assert stream.reads == 0
    assert len(parse(body, get_boundary(CHROME_TYPE), limit=len(body))) == 5


@pytest.mark.parametrize("chunk_size", (1, 64, CHUNK_SIZE))
def test_limit_without_content_length(chunk_size):
    body = chrome_body()
    boundary = get_boundary(CHROME_TYPE)
    assert len(parse(body, boundary, chunk_size, length=None, limit=len(body))) == 5
    with pytest.raises(BodyTooLarge):
        parse(body, boundary, chunk_size, length=None, limit=len(body) - 1)
    with pytest.raises(BodyTooLarge):  # also while draining the epilogue
        parse(body + b"epilogue", boundary, chunk_size, length=None, limit=len(body))
    stream = strict_input(body * 100)
    with pytest.raises(BodyTooLarge):
        parse(body, boundary, chunk_size, length=None, limit=100, stream=stream)
    assert stream.pos <= 101  # never reads more than one byte past the limit


def test_stream_error_is_incomplete_body():
    class Broken:
        def read(self, size):
            raise OSError("request data read error")

    with pytest.raises(IncompleteBody):
        list(MultipartReader(Broken(), b"b", 100))


def test_reader_argument_checks():
    with pytest.raises(MultipartError):
        MultipartReader(io.BytesIO(), b"", 0)
    with pytest.raises(MultipartError):
        MultipartReader(io.BytesIO(), b"x" * 71, 0)
    with pytest.raises(MultipartError):
        MultipartReader(io.BytesIO(), b"x", -1)


# ---------------------------------------------------------------- header parameters

@pytest.mark.parametrize("value,expected", [
    ("multipart/form-data; boundary=xyz; charset=UTF-8",
     ("multipart/form-data", {"boundary": "xyz", "charset": "UTF-8"})),
    ("Multipart/Form-Data;BOUNDARY=\"a b:c\"", ("multipart/form-data", {"boundary": "a b:c"})),
    ('form-data; name="a\\"b"; filename="a\\\\b"',
     ("form-data", {"name": 'a"b', "filename": "a\\b"})),
    ('form-data; filename="C:\\Users\\me\\x.jpg"',
     ("form-data", {"filename": "C:\\Users\\me\\x.jpg"})),
    ('form-data; name="IMG 0001.JPG"; filename="my "best" pic.jpg"',
     ("form-data", {"name": "IMG 0001.JPG", "filename": 'my "best" pic.jpg'})),
    ('form-data; name="a";b"; filename="c"', ("form-data", {"name": 'a";b', "filename": "c"})),
    ('form-data; name="a;b";filename="c" ', ("form-data", {"name": "a;b", "filename": "c"})),
    ("  Form-Data ;; name = x y ;;; filename=\"\" ;",
     ("form-data", {"name": "x y", "filename": ""})),
    ("form-data; flag; name=x; name=y", ("form-data", {"name": "x"})),
    ('form-data; name="unterminated', ("form-data", {"name": "unterminated"})),
    ("form-data; filename*=UTF-8''f%C3%B3.jpg; filename=\"f.jpg\"",
     ("form-data", {"filename*": "UTF-8''f%C3%B3.jpg", "filename": "f.jpg"})),
    ("form-data; =x; name=", ("form-data", {"name": ""})),
    ("", ("", {})),
    (";;;", ("", {})),
])
def test_parse_header_params(value, expected):
    assert parse_header_params(value) == expected


@pytest.mark.parametrize("content_type,boundary", [
    (CHROME_TYPE, b"----WebKitFormBoundaryAbC123"),
    (HTTPMIME_TYPE, HTTPMIME_BOUNDARY),
    ('multipart/form-data; charset=UTF-8; boundary="a b:c=d"', b"a b:c=d"),
    ("multipart/form-data; boundary=" + "x" * 70, b"x" * 70),
])
def test_get_boundary(content_type, boundary):
    assert get_boundary(content_type) == boundary


@pytest.mark.parametrize("content_type", [
    None, "", "text/plain", "multipart/mixed; boundary=x", "multipart/form-data",
    "multipart/form-data; boundary=", 'multipart/form-data; boundary=""',
    "multipart/form-data; boundary=" + "x" * 71, "multipart/form-data; boundary=a@b",
    'multipart/form-data; boundary="ab "', "multipart/form-data; boundary=ab\u00e9",
])
def test_get_boundary_errors(content_type):
    with pytest.raises(MultipartError):
        get_boundary(content_type)


# ---------------------------------------------------------------- fuzzing

FUZZ_BOUNDARY = b"Zz-1"
FUZZ_DELIMITER = b"\r\n--" + FUZZ_BOUNDARY
PIECES = [b"\r\n", b"\r", b"\n", b"-", b"--", b" ", b":", b"\x00", b"\xff", b"a", b"Z", b"z-",
          FUZZ_BOUNDARY, b"--" + FUZZ_BOUNDARY, b"\r\n\r\n", b'"', b";", b"="]
tricky_bytes = st.lists(st.sampled_from(PIECES), max_size=12).map(b"".join)
read_options = st.fixed_dictionaries({
    "chunk_size": st.integers(1, 40), "max_read": st.sampled_from([None, 1, 3]),
    "use_length": st.booleans(), "limit": st.sampled_from([None, 50, 10 ** 6])})


def without_delimiter(data):
    """Remove every fuzz delimiter from `data` (a removal may join a new one: loop)."""
    while FUZZ_DELIMITER in data:
        data = data.replace(FUZZ_DELIMITER, b"")
    return data


def make_valid_body(drawn):
    """Return (body, [(name, filename, data)]) for a well-formed body."""
    preamble, fields = drawn
    parts = [("f%d" % index, filename, without_delimiter(data))
             for index, (filename, data) in enumerate(fields)]
    headers = []
    for name, filename, data in parts:
        disposition = 'Content-Disposition: form-data; name="%s"' % name
        if filename is not None:
            disposition += '; filename="%s"' % filename
        headers.append(([disposition.encode()], data))
    return build_body(FUZZ_BOUNDARY, headers, preamble=preamble), parts


valid_bodies = st.tuples(
    st.sampled_from([b"", b"preamble\r\n"]),
    st.lists(st.tuples(st.sampled_from([None, "", "a b.jpg", 'q"q.jpg']), tricky_bytes),
             max_size=3),
).map(make_valid_body)


def consume(body, options):
    """Parse `body`; return the parts or the MultipartError raised. Anything else propagates."""
    length = len(body) if options["use_length"] else None
    stream = strict_input(body, length, options["max_read"])
    try:
        reader = MultipartReader(stream, FUZZ_BOUNDARY, length, limit=options["limit"],
                                 chunk_size=options["chunk_size"])
        return [(part.name, part.filename, part.read()) for part in reader]
    except MultipartError as ex:
        return ex


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=300) | tricky_bytes, options=read_options)
def test_fuzz_arbitrary_bytes(body, options):
    consume(body, options)


@settings(max_examples=300, deadline=None)
@given(sample=valid_bodies, options=read_options)
def test_fuzz_valid_bodies_round_trip(sample, options):
    body, parts = sample
    result = consume(body, options)
    if options["limit"] is not None and len(body) > options["limit"]:
        assert isinstance(result, BodyTooLarge)
    else:
        assert result == parts


mutations = st.lists(st.tuples(st.floats(0, 1), st.integers(0, 6), tricky_bytes),
                     min_size=1, max_size=4)


@settings(max_examples=300, deadline=None)
@given(sample=valid_bodies, options=read_options, edits=mutations)
def test_fuzz_mutated_bodies(sample, options, edits):
    body = bytearray(sample[0])
    for where, size, replacement in edits:
        pos = int(where * len(body))
        body[pos:pos + size] = replacement  # insert, delete, replace or truncate
    consume(bytes(body), options)
