"""cleanup --remote, against moto on 127.0.0.1 (or $GAIA_CAS_S3_ENDPOINT): the remote's own
retention by compare-and-swap with local retention's rules (never current, a channel's or a
pinned version); local cleanups stay local; a cleaned version is never pushed back; a push that
relied on a version a cleanup dropped checks its objects again."""

from __future__ import annotations

from datetime import timedelta

import pytest

from conftest import assert_one_line_error, make_savedmodel
from gaia_cas.repo import Repository
from gaia_cas.s3 import S3ManifestStore
from s3_fixtures import s3_server, s3_url  # noqa: F401


@pytest.fixture
def origin(cli, root, s3_server):  # noqa: F811
    url = s3_url(s3_server)
    assert cli("remote", "add", "origin", url, "--endpoint", s3_server.endpoint).code == 0
    return url, s3_server.endpoint


def _remote(root):
    return Repository(root).remote("origin").manifest("ssd")


def _five_pushed(cli, tmp_path):
    for n in range(1, 6):
        cli("deploy", "ssd", make_savedmodel(tmp_path / f"v{n}", variant=n))
    cli("pin", "ssd", "1.0.0")
    cli("promote", "ssd", "1.1.0", "--to", "staging")
    assert cli("push").code == 0, "setup"


def test_cleanup_remote_applies_local_rules_to_the_remote_and_leaves_this_store_alone(cli, root, origin, tmp_path):
    _five_pushed(cli, tmp_path)
    local_before = (root / "manifests" / "ssd.msgpack").read_bytes()
    dry = cli("cleanup", "ssd", "--remote", "origin", "--keep", "1", "--dry-run", "--json").json()
    assert dry["models"][0]["remove"] == ["1.3.0", "1.2.0"]
    assert _remote(root).version_numbers() == ["1.0.0", "1.1.0", "1.2.0", "1.3.0", "1.4.0"]
    run = cli("cleanup", "ssd", "--remote", "origin", "--keep", "1", "--reason", "space")
    assert run.code == 0, run.err
    assert "removed 1.2.0, 1.3.0" in run.out and "gc --remote origin" in run.out
    remote = _remote(root)
    # kept: current (1.4.0, also the newest), the channel's (1.1.0) and the pinned one (1.0.0)
    assert remote.version_numbers() == ["1.0.0", "1.1.0", "1.4.0"]
    event = next(remote.events_newest_first())
    assert (event.action, event.details["removed"], event.reason) == ("cleanup", ["1.2.0", "1.3.0"], "space")
    assert len(event.details["identities"]) == 2
    assert (root / "manifests" / "ssd.msgpack").read_bytes() == local_before  # nothing local changed
    # the cleaned versions are never pushed back by a store that still holds them
    doc = cli("push", "--json").json()["pushed"][0]
    assert (doc["versions_sent"], doc["objects_sent"]) == (0, 0)
    assert _remote(root).version_numbers() == ["1.0.0", "1.1.0", "1.4.0"]
    assert_one_line_error(cli("cleanup", "nothere", "--remote", "origin"), "unknown model 'nothere'")
    assert_one_line_error(cli("cleanup", "--remote", "origin", "--keep", "-1"), "--keep")


def test_a_local_keep_never_prunes_the_remote(cli, root, origin, tmp_path):
    _five_pushed(cli, tmp_path)
    assert cli("model", "set", "ssd", "--keep", "1").code == 0
    assert cli("cleanup", "ssd").code == 0
    assert Repository(root).manifest("ssd").version_numbers() == ["1.0.0", "1.1.0", "1.4.0"]  # local rules
    assert cli("push").code == 0
    remote = _remote(root)
    assert remote.version_numbers() == ["1.0.0", "1.1.0", "1.2.0", "1.3.0", "1.4.0"]
    assert remote.config.retention == {}  # the trainer's policy does not travel
    plan = Repository(root).remote("origin").plan_cleanup(["ssd"])[0]
    assert plan.policy.keep == 3 and plan.remove == []  # the remote's own default, not keep 1
    assert {d.version: d.reasons for d in plan.decisions}["1.2.0"] == ["newest 3"]


def test_a_push_that_relied_on_a_version_cleaned_meanwhile_uploads_what_gc_took(cli, root, origin, tmp_path,
                                                                                monkeypatch):
    def source(name, variant, extra: bool):
        path = make_savedmodel(tmp_path / name, variant=variant)
        if extra:
            (path / "vocab.txt").write_bytes(b"reached on the remote by 1.0.0 only")
        return path

    cli("deploy", "ssd", source("a", 1, True))
    cli("deploy", "ssd", source("b", 2, False))
    assert cli("push").code == 0
    cli("deploy", "ssd", source("c", 3, True))  # shares vocab.txt with 1.0.0 only
    real, armed = S3ManifestStore.update, [True]

    def cleanup_and_gc_first(self, model, change, **kw):
        if armed and armed.pop():  # the push trusted 1.0.0's tree and sent no vocab.txt
            remote = Repository(root).remote("origin")
            assert remote.cleanup(["ssd"], keep=1)[0].removed == ["1.0.0"]
            assert remote.gc(grace=timedelta(0)).deleted >= 1
        return real(self, model, change, **kw)

    monkeypatch.setattr(S3ManifestStore, "update", cleanup_and_gc_first)
    doc = cli("push", "--json").json()["pushed"][0]
    assert not armed and doc["versions_sent"] == 1 and doc["error"] is None
    assert _remote(root).version_numbers() == ["1.1.0", "1.2.0"]
    verify = cli("verify", "--remote", "origin", "--json")
    assert verify.code == 0 and verify.json()["ok"], verify.out  # nothing 1.2.0 needs is missing there
