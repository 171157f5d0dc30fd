"""The S3 backends beyond the contract suite: layout, verified downloads, lost responses and
409 conflicts of the compare-and-swap -- against moto on 127.0.0.1 (or $GAIA_CAS_S3_ENDPOINT)."""

from __future__ import annotations

import io

import boto3
import pytest
import xxhash

from gaia_cas.errors import CorruptionError
from gaia_cas.manifest import Manifest, decode, record
from gaia_cas.s3 import Remote, RemoteError, parse_url
from gaia_cas.storage import StaleTokenError
from s3_fixtures import s3_server, s3_url  # noqa: F401


@pytest.fixture
def remote(s3_server):  # noqa: F811
    url = s3_url(s3_server)
    r = Remote("origin", url, s3_server.endpoint, None)
    objects, manifests = r.open()
    raw = boto3.client("s3", endpoint_url=s3_server.endpoint)
    return objects, manifests, raw, s3_server.bucket, parse_url(url).prefix


def _event(manifest: Manifest, n: int) -> None:
    record(manifest, "config", version=None, before=None, at="2026-12-01T00:00:00+00:00", user=f"u{n}", host="h",
           reason=None)


def test_objects_and_manifests_use_the_documented_layout(remote):
    objects, manifests, raw, bucket, prefix = remote
    with objects.staging() as stage:
        oid = stage.add_bytes(b"weights")
        stage.install()
    body = raw.get_object(Bucket=bucket, Key=f"{prefix}objects/{oid[:2]}/{oid[2:]}")["Body"].read()
    assert body == b"weights" and oid == xxhash.xxh3_128_hexdigest(b"weights")
    manifests.update("m", lambda m: _event(m, 1), create=True)
    stored = raw.get_object(Bucket=bucket, Key=f"{prefix}manifests/m.msgpack")["Body"].read()
    assert decode(stored).model == "m" and decode(stored).generation == 1  # the local schema, as is
    assert '"' not in manifests.snapshot("m").token  # quotes stripped (Ceph RGW's If-Match bug)


def test_a_corrupt_object_is_never_returned(remote):
    objects, _, raw, bucket, prefix = remote
    oid = xxhash.xxh3_128_hexdigest(b"the real bytes")
    raw.put_object(Bucket=bucket, Key=f"{prefix}objects/{oid[:2]}/{oid[2:]}", Body=b"the rEal bytes")
    with pytest.raises(CorruptionError, match=f"object {oid} .*does not match its hash"):
        objects.read(oid, limit=1000)
    with objects.open(oid) as stream, pytest.raises(CorruptionError, match=oid):
        stream.read()
    local = []
    with pytest.raises(CorruptionError):  # a staging area fed from it installs nothing
        with objects.open(oid) as stream:
            local.append(io.BytesIO(stream.read()))
    assert local == []


def test_a_create_whose_response_was_lost_is_recognised_as_ours(remote, monkeypatch):
    _, manifests, _, _, _ = remote
    real = manifests.send
    calls = []

    def lost(key, data, mode):
        calls.append(mode)
        if len(calls) == 1:
            real(key, data, mode)  # the write lands ...
            raise ConnectionResetError("connection reset")  # ... and its answer is lost
        return real(key, data, mode)  # the retry meets our own write: 412

    monkeypatch.setattr(manifests, "send", lost)
    committed = manifests.update("m", lambda m: _event(m, 1), create=True)
    assert calls == ["create", "create"]
    snap = manifests.snapshot("m")
    assert snap.manifest.generation == committed.generation == 1
    assert len(snap.manifest.history) == 1  # written once, not twice


def test_a_lost_update_response_is_ours_but_a_real_race_is_stale(remote, monkeypatch):
    _, manifests, _, _, _ = remote
    manifests.update("m", lambda m: _event(m, 1), create=True)
    snap = manifests.snapshot("m")
    manifests.update("m", lambda m: _event(m, 2))  # someone else commits meanwhile
    late = snap.manifest
    _event(late, 3)
    late.generation += 1
    with pytest.raises(StaleTokenError):
        manifests.compare_and_swap("m", snap.token, late)
    assert [e.user for e in manifests.snapshot("m").manifest.history] == ["u1", "u2"]


def test_a_409_conflict_is_retried(remote, monkeypatch):
    _, manifests, _, _, _ = remote
    real = manifests.send
    calls = []

    class Conflict(Exception):
        pass

    def conflicted(key, data, mode):
        calls.append(1)
        if len(calls) <= 2:
            raise Conflict("Server returned non-2xx status code: 409 Conflict: <Code>ConditionalRequestConflict</Code>")
        return real(key, data, mode)

    monkeypatch.setattr(manifests, "send", conflicted)
    manifests.update("m", lambda m: _event(m, 1), create=True)
    assert len(calls) == 3 and manifests.snapshot("m").manifest.generation == 1


def test_remote_urls_are_checked():
    assert parse_url("s3://bucket-1/a/b") == ("bucket-1", "a/b/")
    assert parse_url("s3://bucket-1") == ("bucket-1", "")
    for bad in ("http://bucket/x", "s3://B/x", "s3://bucket/../x", "bucket/x", "s3://"):
        with pytest.raises(Exception) as info:
            parse_url(bad)
        assert "invalid" in str(info.value)


def test_an_endpoint_that_is_down_fails_in_bounded_time():
    objects, _ = Remote("down", "s3://bucket-x", "http://127.0.0.1:9", None).open()
    with pytest.raises(RemoteError, match="cannot connect"):
        objects.exists("0" * 32)
