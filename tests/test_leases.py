"""Thumbnail leases: instances over one store render a thumbnail once (THUMBNAIL_LEASES)."""

import logging
import threading

import pytest

from tests.fakes import FakeClock, FakeRenderer, MemoryStore, fake_thumbnailer, storm
from tests.helpers import COLL, call, make_settings, upload
from webassets import samples
from webassets.app import create_app
from webassets.storage import FileStore

KEY = "thumbnail C/thumbnail/a_64.png"  # MemoryStore's static name of a_64.png


def save(store, name, data=None, coll="C"):
    staged = store.stage(coll, known_coll=True)
    staged.write(samples.png() if data is None else data)
    store.save_original(coll, name, staged)


def instances(store, renderer, count=2, **options):
    """Return `count` engines over `store` with leases on, sharing `renderer` (one tally)."""
    engines = [fake_thumbnailer(renderer, leases=True, **options) for _ in range(count)]
    for engine in engines:
        engine.lease_poll = 0.01
    return engines


@pytest.mark.parametrize("kind", ["file", "memory"])
def test_a_storm_over_two_instances_makes_one_conversion(tmp_path, kind):
    # No shared lock_dir: the instances are on different hosts; only the store is shared.
    store = FileStore(str(tmp_path / "store")) if kind == "file" else MemoryStore()
    save(store, "a.png", coll=None)
    gate = threading.Event()
    renderer = FakeRenderer(gate=gate)
    engines = instances(store, renderer)
    turn = iter(range(1000))
    results, errors = storm(lambda: engines[next(turn) % 2].thumbnail_of(store, None, "a.png", 64),
                            renderer, gate)
    assert errors == [] and results == [("a_64.png", "image/png")] * 32
    assert len(renderer.calls) == 1
    assert store.unfinished() == []  # the lease was given back


def test_without_leases_each_instance_converts(tmp_path):
    store = MemoryStore()
    save(store, "a.png", coll=None)
    gate = threading.Event()
    renderer = FakeRenderer(gate=gate)
    engines = [fake_thumbnailer(renderer) for _ in range(2)]
    turn = iter(range(1000))
    results, errors = storm(lambda: engines[next(turn) % 2].thumbnail_of(store, None, "a.png", 64),
                            renderer, gate)
    assert errors == [] and len(renderer.calls) == 2


def test_a_dead_holders_lease_is_taken_over_once_it_expires():
    clock = FakeClock(1000.0)
    store = MemoryStore(colls={"C"}, clock=clock)
    save(store, "a.png")

    def sleep(seconds):
        clock.now += seconds

    renderer = FakeRenderer()
    engine = fake_thumbnailer(renderer, leases=True, sleep=sleep, timeout=10)
    dead = store.try_lease(KEY, engine.lease_ttl)  # taken by an instance that then died
    assert dead is not None
    assert engine.thumbnail_of(store, "C", "a.png", 64) == ("a_64.png", "image/png")
    assert len(renderer.calls) == 1
    assert engine.lease_ttl <= clock.now - 1000.0 < engine.lease_ttl + 1  # waited one ttl
    assert store.leases == {}  # ours, given back


@pytest.mark.parametrize("kind", ["file", "memory"])
def test_a_leader_slower_than_its_lease_keeps_it_renewed(tmp_path, kind):
    """A render outlasting the lease's ttl: the lease is renewed, so nobody takes it over."""
    store = FileStore(str(tmp_path / "store")) if kind == "file" else MemoryStore()
    save(store, "a.png", coll=None)
    renderer = FakeRenderer(delay=1.5)
    leader, other = instances(store, renderer)
    for engine in (leader, other):
        engine.lease_ttl = 1.0  # renewed every third of it, while the render takes 1.5 s
    first = threading.Thread(target=leader.thumbnail_of, args=(store, None, "a.png", 64))
    first.start()
    assert renderer.first.wait(5)
    assert other.thumbnail_of(store, None, "a.png", 64) == ("a_64.png", "image/png")
    first.join(5)
    assert len(renderer.calls) == 1
    assert store.unfinished() == []  # given back, not written back by a late renewal


class _HeldForever(MemoryStore):
    """A store whose lease is always someone else's (a holder renewing it, a clock far off)."""

    def try_lease(self, key, ttl):
        self.asked = getattr(self, "asked", 0) + 1
        return None


def test_waiting_is_bounded_then_it_renders(caplog):
    store = _HeldForever(colls={"C"})
    save(store, "a.png")
    slept = []
    renderer = FakeRenderer()
    engine = fake_thumbnailer(renderer, leases=True, sleep=slept.append, timeout=1)
    with caplog.at_level(logging.WARNING):
        assert engine.thumbnail_of(store, "C", "a.png", 64)[0] == "a_64.png"
    assert len(renderer.calls) == 1
    assert sum(slept) == pytest.approx(2 * engine.lease_ttl, abs=engine.lease_poll)
    assert "rendering it here" in caplog.text


def test_the_holders_thumbnail_ends_the_wait(tmp_path):
    store = MemoryStore(colls={"C"})
    save(store, "a.png")
    holder = store.try_lease(KEY, 60)
    rendered = tmp_path / "a_64.png"

    def sleep(seconds):
        # Meanwhile the holder publishes the thumbnail and gives its lease back.
        rendered.write_bytes(samples.png())
        store.save_thumbnail("C", "a_64.png", str(rendered))
        store.release(holder)

    renderer = FakeRenderer()
    engine = fake_thumbnailer(renderer, leases=True, sleep=sleep)
    assert engine.thumbnail_of(store, "C", "a.png", 64) == ("a_64.png", "image/png")
    assert renderer.calls == []


class _Unreachable(MemoryStore):
    def try_lease(self, key, ttl):
        raise OSError("the lease store is unreachable")


def test_a_store_error_on_the_lease_renders_without_one(caplog):
    store = _Unreachable(colls={"C"})
    save(store, "a.png")
    renderer = FakeRenderer()
    engine = fake_thumbnailer(renderer, leases=True)
    with caplog.at_level(logging.WARNING):
        assert engine.thumbnail_of(store, "C", "a.png", 64)[0] == "a_64.png"
    assert len(renderer.calls) == 1 and "Cannot take the lease" in caplog.text


def test_the_setting_turns_leases_on(tmp_path):
    store = MemoryStore(colls={COLL})
    renderer = FakeRenderer()
    settings = make_settings(tmp_path / "unused", THUMBNAIL_LEASES=True)
    app = create_app(settings, store=store)
    assert app.thumbnailer.leases is True
    assert app.thumbnailer.lease_ttl == settings.THUMBNAIL_TIMEOUT + 30
    assert create_app(make_settings(tmp_path / "unused")).thumbnailer.leases is False
    app = create_app(settings, store=store, thumbnailer=fake_thumbnailer(renderer, leases=True))
    assert upload(app, "a.png", samples.png()).body == b"Ok."
    query = {"type": "T", "coll": COLL, "filename": "a.png", "scale": "64"}
    assert call(app, "GET", "/fileget", query).status == 200
    assert len(renderer.calls) == 1 and store.leases == {}
