"""One suite, every backend: what the verbs may rely on from any object store and manifest store
(gaia_cas.storage). A new backend (the S3 remote) joins by adding a fixture parameter."""

from __future__ import annotations

import io
import threading

import pytest
import xxhash

from gaia_cas.errors import CorruptionError, ModelNotFoundError
from gaia_cas.layout import Layout
from gaia_cas.manifest import Manifest, ModelConfig, Version, record
from gaia_cas.manifest_store import Manifests
from gaia_cas.objects import ObjectStore
from gaia_cas.repo import Repository
from gaia_cas.storage import (BaseManifestStore, BaseObjectStore, MemoryManifestStore, MemoryObjectStore,
                              StaleTokenError)
from s3_fixtures import s3_server, s3_stores  # noqa: F401  (the S3 backend's server, session-scoped)


@pytest.fixture(params=["disk", "memory", "s3"])
def objects(request, tmp_path) -> BaseObjectStore:
    if request.param == "memory":
        return MemoryObjectStore()
    if request.param == "s3":  # moto on 127.0.0.1, or $GAIA_CAS_S3_ENDPOINT (tests/s3_fixtures.py)
        return s3_stores(request.getfixturevalue("s3_server"))[0]
    Repository.init(tmp_path / "root")
    return ObjectStore(Layout(tmp_path / "root"))


@pytest.fixture(params=["disk", "memory", "s3"])
def manifests(request, tmp_path) -> BaseManifestStore:
    if request.param == "memory":
        return MemoryManifestStore()
    if request.param == "s3":
        return s3_stores(request.getfixturevalue("s3_server"))[1]
    Repository.init(tmp_path / "root")
    return Manifests(Layout(tmp_path / "root"), lock_timeout=10)


def _add(store, *blobs: bytes) -> list[str]:
    with store.staging() as stage:
        oids = [stage.add_bytes(b) for b in blobs]
        stage.install()
    return oids


# -- objects ---------------------------------------------------------------------------------

def test_round_trip_and_the_oid_is_the_xxh3_of_the_bytes(objects):
    data = b"weights" * 1000
    (oid,) = _add(objects, data)
    assert oid == xxhash.xxh3_128_hexdigest(data)
    assert objects.exists(oid)
    assert objects.read(oid, limit=len(data)) == data
    with objects.open(oid) as f:
        assert f.read() == data


def test_streams_are_staged_like_bytes(objects):
    data = bytes(range(256)) * 5000
    with objects.staging() as stage:
        oid, size = stage.add_stream(io.BytesIO(data), "a stream")
        stage.install()
    assert (oid, size) == (xxhash.xxh3_128_hexdigest(data), len(data))
    assert objects.read(oid, limit=size) == data


def test_adding_the_same_bytes_twice_is_harmless(objects):
    (first,) = _add(objects, b"same")
    with objects.staging() as stage:
        again = stage.add_bytes(b"same")
        assert stage.install() == 0
    assert first == again and objects.read(first, 10) == b"same"
    assert sorted(objects.oids()) == [first]


def test_staged_objects_are_invisible_until_installed(objects):
    with objects.staging() as stage:
        oid = stage.add_bytes(b"not yet")
        assert not objects.exists(oid)
        assert oid not in list(objects.oids())
        assert stage.install() == 1
    assert objects.exists(oid)


def test_leaving_staging_without_install_keeps_nothing(objects):
    with objects.staging() as stage:
        oid = stage.add_bytes(b"abandoned")
    assert not objects.exists(oid)
    assert list(objects.oids()) == []


def test_read_refuses_more_than_the_limit_and_a_missing_object(objects):
    (oid,) = _add(objects, b"x" * 100)
    with pytest.raises(CorruptionError):
        objects.read(oid, limit=99)
    with pytest.raises(CorruptionError):
        objects.read("0" * 32, limit=100)


def test_delete_quarantine_and_refresh(objects):
    a, b, c = _add(objects, b"a", b"b", b"c")
    assert objects.delete(a) is True and objects.delete(a) is False
    assert not objects.exists(a)
    assert objects.quarantine(b)
    assert not objects.exists(b) and objects.quarantine(b) is None
    objects.refresh(c)
    assert sorted(objects.oids()) == [c]


def test_an_invalid_oid_never_reaches_the_backend(objects):
    for bad in ("../../etc/passwd", "ab", "G" * 32, "a" * 33):
        with pytest.raises(Exception) as info:
            objects.exists(bad)
        assert "object id" in str(info.value) or isinstance(info.value, ValueError)


# -- manifests -------------------------------------------------------------------------------

def _deployed(model: str, number: str) -> "callable":
    def change(manifest: Manifest) -> None:
        manifest.versions.append(Version(version=number, deployment_id="20261201_000000",
                                         created_at="2026-12-01T00:00:00+00:00", tree="ab" * 16,
                                         artifact="directory", name=None, size_bytes=1, file_count=1,
                                         format="unknown"))
        manifest.current = number
        manifest.highest = number
        record(manifest, "deploy", version=number, before=None, at="2026-12-01T00:00:00+00:00",
               user="u", host="h", reason=None)
    return change


def test_snapshot_of_a_missing_model_is_none_and_update_needs_create(manifests):
    assert manifests.snapshot("m") is None
    with pytest.raises(ModelNotFoundError):
        manifests.update("m", _deployed("m", "1.0.0"))
    committed = manifests.update("m", _deployed("m", "1.0.0"), create=True)
    assert committed.generation == 1
    snap = manifests.snapshot("m")
    assert snap.manifest.current == "1.0.0" and snap.manifest.generation == 1
    assert manifests.names() == ["m"]


def test_compare_and_swap_refuses_a_stale_token(manifests):
    manifests.update("m", _deployed("m", "1.0.0"), create=True)
    snap = manifests.snapshot("m")
    manifests.update("m", _deployed("m", "1.1.0"))
    stale = snap.manifest
    stale.config = ModelConfig(aliases=["late"])
    record(stale, "config", version=None, before=None, at="2026-12-01T00:00:00+00:00", user="u", host="h",
           reason=None)
    with pytest.raises(StaleTokenError):
        manifests.compare_and_swap("m", snap.token, stale)
    assert manifests.snapshot("m").manifest.current == "1.1.0"
    with pytest.raises(StaleTokenError):  # a create over an existing manifest is stale too
        manifests.compare_and_swap("m", None, Manifest(model="m"))


def test_a_change_that_records_nothing_writes_nothing(manifests):
    manifests.update("m", _deployed("m", "1.0.0"), create=True)
    token = manifests.snapshot("m").token
    manifests.update("m", lambda manifest: None)
    assert manifests.snapshot("m").token == token


def test_two_concurrent_editors_both_land_with_distinct_generations(manifests):
    manifests.update("m", _deployed("m", "1.0.0"), create=True)
    barrier = threading.Barrier(2)
    runs = {"a": 0, "b": 0}

    def editor(name: str) -> None:
        def change(manifest: Manifest) -> None:
            runs[name] += 1
            if runs[name] == 1:
                barrier.wait(timeout=10)  # both have read the same generation before either writes
            manifest.config = manifest.config.replace(aliases=sorted({*manifest.config.aliases, name}))
            record(manifest, "config", version=None, before=None, at="2026-12-01T00:00:00+00:00",
                   user=name, host="h", reason=None)
        manifests.update("m", change)

    threads = [threading.Thread(target=editor, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    final = manifests.snapshot("m").manifest
    assert final.config.aliases == ["a", "b"]  # neither edit lost
    gens = [e.generation for e in final.history]
    assert gens == [1, 2, 3] and final.generation == 3
    assert sum(runs.values()) == 3  # exactly one of them lost the race and decided again
