"""Shared fixtures: an app over a fresh store, a settable clock, pictures made by ImageMagick."""

import pytest

from tests import fakes, stores
from tests.helpers import CONVERT, DATE, NOW, convert_image, make_app
# The real S3 servers: session fixtures, started on first use, stopped at the end.
from tests.s3servers import addressing, moto, s3_server, seaweedfs  # noqa: F401
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
def backend(request, addressing):
    """Return the store a test app is built on (tests.stores): each test runs on each.

    An S3 store is addressed as `addressing` says (path-style unless @both_addressings).
    """
    if request.param == "file":
        return stores.LocalBackend()
    return stores.S3Backend.on(request.param, request.getfixturevalue(request.param),
                               addressing)


def _s3_configs(item, addressing):
    """Return the configurations an S3 backend runs `item` in: its first, and C if listed.

    The configurations differ in tokens (B, D, E, F) or in the collection directories (C);
    the store is exercised by the first listed and by C, so an item of the protocol
    checklist runs at least once on every S3 server without six times the requests.
    Virtual-hosted addressing changes only how requests reach the bucket: the first.
    """
    for marker in item.iter_markers("parametrize"):
        if marker.args[0] == "cfg":
            listed = list(marker.args[1])
            if addressing == "virtual":
                return {listed[0]}
            return {listed[0]} | ({"C"} & set(listed))
    return None


def _deselected(params, item):
    """Tell whether a run of `item` with `params` adds nothing (see _s3_configs)."""
    if "backend" not in params:
        return False
    if params["backend"] == "file":
        # The local store has no addressing: its "virtual" run is its "path" run again.
        return params.get("addressing") == "virtual"
    wanted = _s3_configs(item, params.get("addressing"))
    return wanted is not None and params.get("cfg") not in wanted


def pytest_collection_modifyitems(config, items):
    """Deselect the S3 runs of configurations that test tokens only, and the local
    store's runs with virtual-hosted addressing (see _deselected)."""
    keep, drop = [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        (drop if _deselected(params, item) else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
