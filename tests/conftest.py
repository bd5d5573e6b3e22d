"""Shared fixtures: an app over a fresh store, a settable clock, pictures made by ImageMagick."""

import pytest

from tests import fakes, stores
from tests.helpers import CONVERT, DATE, NOW, convert_image, make_app
# The real S3 servers: session fixtures, started on first use, stopped at the end.
from tests.s3servers import moto, s3_server, seaweedfs  # noqa: F401
from webassets import samples

# The stores `backend` runs a test on: the local one, then S3Store on each real S3 server.
STORE_BACKENDS = ("file",) + stores.S3_SERVERS


@pytest.fixture
def clock():
    """Return a FakeClock at NOW (a fractional second); tests move `clock.now`."""
    return fakes.FakeClock(NOW)


@pytest.fixture
def app(tmp_path):
    """Return a real app over a fresh store in tmp_path (the reference defaults)."""
    return make_app(tmp_path)


@pytest.fixture(scope="session")
def images():
    """Return the test pictures, made once by the real ImageMagick (skip without it)."""
    if CONVERT is None:
        pytest.skip("ImageMagick is not installed")
    jpeg = convert_image(["-size", "400x300", "gradient:red-blue", "-strip", "jpeg:-"])
    heic = convert_image(["-size", "400x300", "xc:green", "heic:-"])
    exif = fakes.tiff_block([(0x010F, fakes.ASCII, "Canon")], [(0x9003, fakes.ASCII, DATE)])
    return {
        "jpeg": jpeg,
        "exif": fakes.with_exif(jpeg, exif),
        "small": convert_image(["-size", "50x40", "xc:orange", "-strip", "jpeg:-"]),
        ".tif": convert_image(["-size", "400x300", "xc:blue", "tiff:-"]),
        ".heic": heic,
        ".heif": heic,
        ".pdf": samples.pdf(),  # ImageMagick's policy here forbids writing PDF
    }


@pytest.fixture(params=STORE_BACKENDS)
def backend(request):
    """Return the store a test app is built on (tests.stores): each test runs on each."""
    if request.param == "file":
        return stores.LocalBackend()
    return stores.S3Backend.on(request.param, request.getfixturevalue(request.param))


def _s3_configs(item):
    """Return the configurations an S3 backend runs `item` in: its first, and C if listed.

    The configurations differ in tokens (B, D, E, F) or in the collection directories (C);
    the store is exercised by the first listed and by C, so an item of the protocol
    checklist runs at least once on every S3 server without six times the requests.
    """
    for marker in item.iter_markers("parametrize"):
        if marker.args[0] == "cfg":
            listed = list(marker.args[1])
            return {listed[0]} | ({"C"} & set(listed))
    return None


def pytest_collection_modifyitems(config, items):
    """Deselect the S3 runs of configurations that test tokens only (see _s3_configs)."""
    keep, drop = [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        wanted = _s3_configs(item) if params.get("backend", "file") != "file" else None
        (drop if wanted is not None and params.get("cfg") not in wanted else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
