"""Monitoring endpoints (/healthz, /readyz, /metrics), the metrics registry, and key rotation."""

import os
import re
import sys
import threading

import pytest

from tests.fakes import FakeConverter, FakeInput
from webassets import config, samples, thumbnails
from webassets.metrics import Metrics
from webassets.thumbnails import NullObserver, Thumbnailer

from .helpers import COLL, KEY, U7, call, make_app, token, upload

OTHER_KEY = "second-key-0123456789abcdef"
SAMPLE_LINE = re.compile(r'[a-z_]+(\{([a-z_]+="[^"\\\n]*",?)*\})? -?[0-9.e+-]+\Z|#.*\Z')


def metered_app(tmp_path, converter=None, **overrides):
    """Return an app whose thumbnail engine uses a fake converter and reports to the metrics."""
    app = make_app(tmp_path, **overrides)
    # sys.executable: a program that exists, for /readyz.
    tools = thumbnails.Toolchain(sys.executable, sys.executable,
                                 converter or FakeConverter(("PNG", "JPEG")))
    app.thumbnailer = Thumbnailer(tools=tools, observer=app.metrics, max_workers=1, max_queue=1)
    app.metrics.thumbnailer = app.thumbnailer
    return app


def put_original(tmp_path, name="a.png"):
    path = tmp_path / "originals" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(samples.png())
    return path


def thumbnail(app, name="a.png", scale=123):
    return call(app, "GET", "/fileget", {"coll": COLL, "type": "T", "filename": name,
                                         "scale": str(scale)})


def scrape(app):
    """Return /metrics as {'name{labels}': value}, checking every line's syntax."""
    result = call(app, "GET", "/metrics")
    assert result.status == 200
    assert result.header("Content-Type") == "text/plain; version=0.0.4; charset=utf-8"
    samples_ = {}
    for line in result.body.decode("utf-8").splitlines():
        assert SAMPLE_LINE.match(line), line
        if not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples_[name] = float(value)
    return samples_


# ---------------------------------------------------------------------------- /healthz, /readyz

def test_healthz_needs_no_token_and_no_disk(tmp_path):
    app = make_app(tmp_path / "not-there", REQUIRE_KEY_FOR_GET=True)
    result = call(app, "GET", "/healthz", headers={"X-Timestamp": "123"})
    assert (result.status, result.body) == (200, b"ok\n")
    assert result.header("X-Request-Id") and result.header("X-Timestamp")
    assert not (tmp_path / "not-there").exists()
    assert call(app, "HEAD", "/healthz").status == 200
    assert call(app, "POST", "/healthz").status == 405


def test_readyz_ok_leaves_nothing_behind(tmp_path):
    app = metered_app(tmp_path, REQUIRE_KEY_FOR_GET=True)
    result = call(app, "GET", "/readyz")
    assert (result.status, result.body) == (200, b"ok store\nok converters\n")
    assert os.listdir(str(tmp_path)) == []


def test_readyz_names_the_failing_check(tmp_path):
    app = metered_app(tmp_path / "unmounted")
    result = call(app, "GET", "/readyz")
    assert result.status == 503 and result.header("Retry-After") is None
    assert result.body == (b"FAIL store: BASE_DIR does not exist or is not a directory\n"
                           b"ok converters\n")
    assert not (tmp_path / "unmounted").exists()  # never created by a probe


def test_readyz_store_not_writable(tmp_path):
    app = metered_app(tmp_path)
    os.chmod(str(tmp_path), 0o500)
    try:
        if os.access(str(tmp_path), os.W_OK):
            pytest.skip("running as root: permissions are not enforced")
        result = call(app, "GET", "/readyz")
    finally:
        os.chmod(str(tmp_path), 0o700)
    assert result.status == 503 and b"FAIL store: cannot create a file in BASE_DIR" in result.body


def test_readyz_converters(tmp_path):
    app = metered_app(tmp_path)
    app.thumbnailer.tools.gs = str(tmp_path / "no-gs")
    result = call(app, "GET", "/readyz")
    assert result.status == 503
    assert b"FAIL converters: Ghostscript (gs) not found, needed for PDF\n" in result.body
    no_pdf = metered_app(tmp_path, CAN_THUMBNAIL=["image/png"])
    no_pdf.thumbnailer.tools.gs = None
    assert call(no_pdf, "GET", "/readyz").status == 200
    no_pdf.thumbnailer.tools.convert = "no-such-convert-program"
    assert b"ImageMagick (convert/magick) not found" in call(no_pdf, "GET", "/readyz").body


# ---------------------------------------------------------------------------- /metrics

def test_metrics_count_requests_latency_and_bytes(tmp_path):
    app = metered_app(tmp_path, REQUIRE_KEY_FOR_GET=True)
    assert upload(app, U7, b"x" * 1000).status == 200
    call(app, "GET", "/healthz")
    call(app, "GET", "/nope/../etc")
    call(app, "GET", "/fileget", {"coll": COLL, "filename": U7, "type": "O", "token": "bad"})
    call(app, "HEAD", "/healthz")
    seen = scrape(app)
    assert seen['webassets_requests_total{endpoint="/fileupload",status="200"}'] == 1
    assert seen['webassets_requests_total{endpoint="/healthz",status="200"}'] == 2
    assert seen['webassets_requests_total{endpoint="other",status="404"}'] == 1
    assert seen['webassets_requests_total{endpoint="/fileget",status="403"}'] == 1
    assert seen['webassets_request_duration_seconds_count{endpoint="/healthz"}'] == 2
    assert seen['webassets_request_duration_seconds_bucket{endpoint="/healthz",le="+Inf"}'] == 2
    assert seen['webassets_request_duration_seconds_bucket{endpoint="/healthz",le="60"}'] == 2
    assert seen["webassets_request_bytes_total"] > 1000
    assert seen["webassets_response_bytes_total"] == len(b"Ok.") + len(b"ok\n") + len(
        b"Not found.\n")  # the 403 and HEAD have no body
    assert seen["webassets_uploads_in_progress"] == 0
    assert seen['webassets_build_info{version="%s"}' % __import__("webassets").__version__] == 1


def test_metrics_never_need_the_key(tmp_path):
    app = metered_app(tmp_path, REQUIRE_KEY_FOR_GET=True)
    assert call(app, "GET", "/metrics", {"token": "junk"}).status == 200


def test_metrics_can_be_switched_off(tmp_path):
    app = make_app(tmp_path, METRICS=False)
    assert app.metrics is None and isinstance(app.thumbnailer.observer, NullObserver)
    assert call(app, "GET", "/metrics").status == 404
    assert call(app, "GET", "/healthz").status == 200
    assert config.from_mapping({"METRICS": "off"}).METRICS is False
    with pytest.raises(config.ConfigError):
        config.from_mapping({"ACCESS_LOG_FORMAT": "xml"})


def test_metrics_thumbnail_hits_misses_and_conversions(tmp_path):
    app = metered_app(tmp_path)
    put_original(tmp_path)
    assert thumbnail(app).status == 200
    assert thumbnail(app).status == 200
    assert thumbnail(app, scale=200).status == 200
    seen = scrape(app)
    assert seen['webassets_thumbnail_requests_total{result="hit"}'] == 1
    assert seen['webassets_thumbnail_requests_total{result="miss"}'] == 2
    assert seen['webassets_conversions_total{format="png",result="ok"}'] == 2
    assert seen['webassets_conversion_seconds_count{format="png"}'] == 2
    assert seen["webassets_conversions_in_flight"] == 0
    assert seen["webassets_conversions_queued"] == 0


def test_metrics_in_flight_queued_and_rejections(tmp_path):
    gate = threading.Event()
    converter = FakeConverter(("PNG", "JPEG"), gate=gate)
    app = metered_app(tmp_path, converter)  # one converter slot, one queue place
    for name in ("a.png", "b.png", "c.png"):
        put_original(tmp_path, name)
    results = []
    threads = [threading.Thread(target=lambda n=name: results.append(thumbnail(app, n)))
               for name in ("a.png", "b.png")]
    try:
        threads[0].start()
        assert converter.started.acquire(timeout=10)
        threads[1].start()
        for _ in range(200):
            if app.thumbnailer.pending == 2:
                break
            threading.Event().wait(0.01)
        busy = thumbnail(app, "c.png")
        seen = scrape(app)
    finally:
        gate.set()
        for thread in threads:
            thread.join(10)
    assert busy.status == 503
    assert seen["webassets_conversions_in_flight"] == 1
    assert seen["webassets_conversions_queued"] == 1
    assert seen["webassets_thumbnail_rejections_total"] == 1
    assert seen['webassets_requests_in_progress{endpoint="/fileget"}'] == 2
    assert sorted(result.status for result in results) == [200, 200]


def test_metrics_uploads_in_progress(tmp_path):
    from .helpers import sp7_upload

    app = metered_app(tmp_path)
    body, headers = sp7_upload(U7, b"y" * 5000, token(U7))
    reading, resume = threading.Event(), threading.Event()

    def stall(stream):  # the client stops after its first 100 bytes until `resume`
        if stream.count:
            reading.set()
            assert resume.wait(10)

    stalled = FakeInput(body, max_read=100, before_read=stall)
    headers["Content-Length"] = str(len(body))
    done = []
    thread = threading.Thread(target=lambda: done.append(
        call(app, "POST", "/fileupload", body=stalled, headers=headers)))
    thread.start()
    try:
        assert reading.wait(10)
        during = scrape(app)["webassets_uploads_in_progress"]
    finally:
        resume.set()
        thread.join(10)
    assert during == 1 and done[0].status == 200
    assert scrape(app)["webassets_uploads_in_progress"] == 0


def test_metrics_registry_is_exact_under_threads():
    registry = Metrics()

    def hammer():
        for number in range(2000):
            registry.enter("/fileget")
            registry.observe_request("/fileget", 200, number / 1000.0, 1, 2)
            registry.leave("/fileget")
            registry.observe_thumbnail(number % 2 == 0)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    text = registry.render()
    assert 'webassets_requests_total{endpoint="/fileget",status="200"} 16000\n' in text
    assert 'webassets_request_duration_seconds_count{endpoint="/fileget"} 16000\n' in text
    assert 'webassets_request_duration_seconds_bucket{endpoint="/fileget",le="1"} 8008\n' in text
    assert "webassets_request_bytes_total 16000\n" in text
    assert "webassets_response_bytes_total 32000\n" in text
    assert 'webassets_thumbnail_requests_total{result="hit"} 8000\n' in text
    assert 'webassets_requests_in_progress{endpoint="/fileget"} 0\n' in text


def test_metrics_label_values_are_escaped():
    registry = Metrics()
    registry.observe_request('a"b\\c\nd', 200, 0.1, 0, 0)
    assert 'endpoint="a\\"b\\\\c\\nd"' in registry.render()


def test_per_request_overhead_is_small(tmp_path):
    # NOTE: a loose bound that only catches a gross regression (e.g. I/O per request).
    import timeit

    registry = Metrics()
    seconds = timeit.timeit(lambda: registry.observe_request("/fileget", 200, 0.01, 0, 10),
                            number=20000) / 20000
    assert seconds < 50e-6


# ---------------------------------------------------------------------------- key rotation

def test_any_listed_key_validates(tmp_path):
    app = make_app(tmp_path, KEY=[OTHER_KEY, KEY])
    for key in (OTHER_KEY, KEY):
        result = call(app, "GET", "/testkey", {"random": "r", "token": token("r", key=key)})
        assert (result.status, result.body) == (200, b"Ok.")
    assert call(app, "GET", "/testkey", {"random": "r",
                                         "token": token("r", key="retired")}).status == 403
    assert upload(app, "old.jpg", b"data", tok=token("old.jpg", key=KEY)).status == 200
    assert upload(app, "new.jpg", b"data", tok=token("new.jpg", key=OTHER_KEY)).status == 200


def test_key_lists_from_files_and_the_environment(tmp_path):
    settings_py = tmp_path / "settings.py"
    settings_py.write_text("KEY = ['%s', '%s']\n" % (OTHER_KEY, KEY))
    assert config.load(str(settings_py), environ={}).keys == (OTHER_KEY, KEY)
    from_env = config.load(None, environ={"WEBASSETS_KEY": "%s, %s" % (OTHER_KEY, KEY)})
    assert from_env.keys == (OTHER_KEY, KEY)
    assert config.load(None, environ={"ATTACHMENT_KEY": KEY}).keys == (KEY,)
    with pytest.raises(config.ConfigError):
        config.from_mapping({"KEY": [KEY, ""]})
