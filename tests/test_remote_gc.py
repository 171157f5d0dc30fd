"""gc --remote against moto on 127.0.0.1 (or $GAIA_CAS_S3_ENDPOINT): what no remote manifest
reaches goes once past the grace; a push in flight keeps its objects; one gc at a time; an
unreadable manifest deletes nothing."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import boto3
import pytest

from conftest import assert_one_line_error, make_savedmodel
from gaia_cas import remote_objects
from gaia_cas.codec import pack
from gaia_cas.remotes import get
from gaia_cas.repo import Repository
from gaia_cas.s3 import S3ManifestStore
from s3_fixtures import s3_server, s3_url  # noqa: F401


@pytest.fixture
def pushed(cli, root, tmp_path, s3_server):  # noqa: F811
    url = s3_url(s3_server)
    assert cli("remote", "add", "origin", url, "--endpoint", s3_server.endpoint).code == 0
    cli("deploy", "ssd", make_savedmodel(tmp_path / "a", variant=1))
    assert cli("push").code == 0
    objects, manifests = get(Repository(root), "origin").open()
    raw = boto3.client("s3", endpoint_url=s3_server.endpoint)
    return objects, manifests, raw, s3_server.bucket, url.split("/", 3)[3] + "/"


def _stray(objects, data=b"left by an interrupted push") -> str:
    with objects.staging() as stage:
        oid = stage.add_bytes(data)
        stage.install()
    return oid


def test_gc_deletes_only_what_no_manifest_reaches_and_only_past_the_grace(cli, root, pushed):
    objects, _, _, _, _ = pushed
    stray = _stray(objects)
    kept = set(objects.oids()) - {stray}
    young = cli("gc", "--remote", "origin", "--json").json()  # default grace 24 h: the stray is young
    assert young["deleted"] == 0 and young["young_unreferenced"] == 1 and objects.exists(stray)
    dry = cli("gc", "--remote", "origin", "--grace", "0s", "--dry-run", "--json").json()
    assert dry["objects"] == [stray] and objects.exists(stray)
    done = cli("gc", "--remote", "origin", "--grace", "0s", "--json").json()
    assert done["deleted"] == 1 and done["reachable_objects"] == len(kept)
    assert not objects.exists(stray) and set(objects.oids()) == kept
    assert cli("verify", "--remote", "origin").code == 0


def test_a_push_racing_gc_keeps_every_object_it_commits(cli, root, pushed, tmp_path, monkeypatch):
    objects, manifests, _, _, _ = pushed
    cli("deploy", "ssd", make_savedmodel(tmp_path / "b", variant=2))
    real = S3ManifestStore.update
    ran = []

    def gc_first(self, model, change, **kw):  # the push's objects are up, its manifest not yet
        ran.append(Repository(root).remote("origin").gc(grace=timedelta(minutes=5)))
        return real(self, model, change, **kw)

    monkeypatch.setattr(S3ManifestStore, "update", gc_first)
    assert cli("push").code == 0
    assert ran and ran[0].deleted == 0 and ran[0].young_unreferenced > 0
    monkeypatch.setattr(S3ManifestStore, "update", real)
    assert cli("verify", "--remote", "origin").code == 0  # everything the new manifest names is there
    assert manifests.snapshot("ssd").manifest.current == "1.1.0"


def test_a_push_sends_again_an_old_unreferenced_object_it_finds(cli, root, pushed, tmp_path, monkeypatch):
    objects, manifests, _, _, _ = pushed
    cli("deploy", "ssd", make_savedmodel(tmp_path / "b", variant=2))
    real_update, real_upload = S3ManifestStore.update, type(objects).upload
    sent = []

    def interrupted(self, model, change, **kw):
        raise KeyboardInterrupt  # objects uploaded, the manifest never written

    monkeypatch.setattr(S3ManifestStore, "update", interrupted)
    monkeypatch.setattr(type(objects), "upload", lambda self, oid, data: (sent.append(oid), real_upload(self, oid, data)))
    assert cli("push").code == 130 and sent
    first, sent[:] = list(sent), []
    assert cli("push").code == 130
    assert sent == []  # found unreferenced, but uploaded a moment ago: trusted as it is
    monkeypatch.setattr(remote_objects, "REFRESH_AGE", timedelta(0))  # now every such upload counts as old
    assert cli("push").code == 130
    assert sorted(sent) == sorted(first)  # re-uploaded: its age starts again, so gc's grace covers it
    monkeypatch.setattr(S3ManifestStore, "update", real_update)
    assert cli("push").code == 0 and manifests.snapshot("ssd").manifest.current == "1.1.0"


def test_one_gc_at_a_time_and_an_expired_lease_is_taken_over(cli, root, pushed):
    objects, _, raw, bucket, prefix = pushed
    stray = _stray(objects)
    now = datetime.now(timezone.utc)
    held = pack({"holder": "ops@other", "started": now.isoformat(), "expires": (now + timedelta(hours=1)).isoformat()})
    raw.put_object(Bucket=bucket, Key=f"{prefix}gc.lease", Body=held)
    assert_one_line_error(cli("gc", "--remote", "origin", "--grace", "0s"), "another gc holds the lease", "ops@other")
    assert objects.exists(stray)
    stale = pack({"holder": "ops@other", "started": now.isoformat(), "expires": (now - timedelta(hours=1)).isoformat()})
    raw.put_object(Bucket=bucket, Key=f"{prefix}gc.lease", Body=stale)
    assert cli("gc", "--remote", "origin", "--grace", "0s").code == 0
    assert not objects.exists(stray)
    assert "Contents" not in raw.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}gc.lease")  # released


def test_an_unreadable_remote_manifest_stops_gc_with_nothing_deleted(cli, root, pushed):
    objects, _, raw, bucket, prefix = pushed
    stray = _stray(objects)
    raw.put_object(Bucket=bucket, Key=f"{prefix}manifests/broken.msgpack", Body=b"\xc1 not a manifest")
    assert_one_line_error(cli("gc", "--remote", "origin", "--grace", "0s"), "deleted nothing")
    assert objects.exists(stray)
