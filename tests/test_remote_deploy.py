"""deploy --remote against moto on 127.0.0.1 (or $GAIA_CAS_S3_ENDPOINT): the remote numbers the
version by compare-and-swap and the local store records the same version; two trainers racing
both land with distinct numbers (an interleaving hook makes one swap lose; then a real race of
two processes); a refusal changes nothing anywhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import CHECKOUT, assert_one_line_error, make_savedmodel, snapshot
from gaia_cas.repo import Repository
from gaia_cas.s3 import S3ManifestStore
from gaia_cas.transfer import identity
from s3_fixtures import origin, s3_server, s3_url, second_store  # noqa: F401



_trainer = second_store


def _remote(root):
    return Repository(root).remote("origin").manifest("ssd")


def _agrees(where, remote_manifest) -> None:
    """Every local version is on the remote under the same number (same tree, deployment id,
    user and host), and the local current is one of them."""
    local = Repository(where).manifest("ssd")
    numbers = {identity(v): v.version for v in remote_manifest.versions}
    assert {v.version: numbers.get(identity(v)) for v in local.versions} == {v.version: v.version
                                                                             for v in local.versions}


def test_deploy_remote_numbers_on_the_remote_and_records_the_same_version_here(cli, root, origin, tmp_path):
    run = cli("deploy", "ssd", make_savedmodel(tmp_path / "a", variant=1), "--remote", "origin", "--json",
              "--reason", "first")
    assert run.code == 0, run.err
    doc = run.json()
    assert (doc["version"], doc["remote"], doc["remote_previous"], doc["renumbered_from"]) == \
        ("1.0.0", "origin", None, None)
    assert doc["objects_sent"] >= 6 and doc["bytes_sent"] > 4096
    remote = _remote(root)
    local = Repository(root).manifest("ssd")
    assert remote.current == local.current == "1.0.0"
    (rv,), (lv,) = remote.versions, local.versions
    assert (rv.version, rv.deployment_id, rv.user, rv.host, rv.tree) == \
        (lv.version, lv.deployment_id, lv.user, lv.host, lv.tree)
    assert rv.reason == "first"
    assert next(remote.events_newest_first()).details["via"] == "deploy"
    # the same content again: nothing on the remote, nothing in the manifest here
    _, manifests = Repository(root).remotes()[1]["origin"].open()
    token = manifests.snapshot("ssd").token
    stored = (root / "manifests" / "ssd.msgpack").read_bytes()
    again = cli("deploy", "ssd", tmp_path / "a", "--remote", "origin", "--json").json()
    assert again["unchanged"] and again["version"] == "1.0.0" and again["objects_sent"] == 0
    dry = cli("deploy", "ssd", tmp_path / "a", "--remote", "origin", "--dry-run", "--json").json()
    assert (dry["version"], dry["unchanged"], dry["dry_run"]) == ("1.0.0", True, True)
    assert manifests.snapshot("ssd").token == token
    assert (root / "manifests" / "ssd.msgpack").read_bytes() == stored
    text = cli("deploy", "ssd", make_savedmodel(tmp_path / "b", variant=2), "--remote", "origin")
    assert text.code == 0 and "deployed ssd 1.1.0 on origin and here" in text.out
    assert "remote current: 1.0.0 -> 1.1.0" in text.out
    # the next push from this store is in step: nothing to send, nothing refused
    push = cli("push", "--json").json()["pushed"][0]
    assert (push["versions_sent"], push["objects_sent"], push["error"]) == (0, 0, None)


def test_a_deploy_that_loses_the_swap_takes_the_next_free_number_and_both_stores_agree(cli, root, origin, tmp_path,
                                                                                       monkeypatch):
    assert cli("deploy", "ssd", make_savedmodel(tmp_path / "a", variant=1), "--remote", "origin").code == 0
    other = _trainer(cli, tmp_path, origin, "other")
    assert cli("pull", "ssd", root_dir=other).code == 0  # both trainers hold 1.0.0: both will pick 1.1.0
    real, armed = S3ManifestStore.compare_and_swap, [True]

    def other_trainer_commits_first(self, model, token, manifest):
        if armed and armed.pop():  # between this deploy's read of the remote and its swap
            Repository(other).remote("origin").deploy("ssd", make_savedmodel(tmp_path / "c", variant=3))
        return real(self, model, token, manifest)

    monkeypatch.setattr(S3ManifestStore, "compare_and_swap", other_trainer_commits_first)
    run = cli("deploy", "ssd", make_savedmodel(tmp_path / "b", variant=2), "--remote", "origin", "--json")
    assert run.code == 0, run.err
    doc = run.json()
    assert not armed and (doc["version"], doc["renumbered_from"]) == ("1.2.0", "1.1.0")
    remote = _remote(root)
    assert remote.version_numbers() == ["1.0.0", "1.1.0", "1.2.0"] and remote.current == "1.2.0"
    assert len({v.tree for v in remote.versions}) == 3  # nobody's version lost
    for where in (root, other):
        _agrees(where, remote)
    assert Repository(root).manifest("ssd").current == "1.2.0"
    assert Repository(other).manifest("ssd").current == "1.1.0"
    mine = [e for e in Repository(root).manifest("ssd").history if e.action == "renumber"]
    assert [(e.details["from"], e.details["to"]) for e in mine] == [("1.1.0", "1.2.0")]
    assert any(e.details.get("renumbered_from") == "1.1.0" for e in remote.history)


def test_two_trainers_deploying_at_once_both_land_and_their_stores_agree(cli, root, origin, tmp_path):
    assert cli("deploy", "ssd", make_savedmodel(tmp_path / "a", variant=1), "--remote", "origin").code == 0
    other = _trainer(cli, tmp_path, origin, "other")
    assert cli("pull", "ssd", root_dir=other).code == 0
    sources = [make_savedmodel(tmp_path / "b", variant=2), make_savedmodel(tmp_path / "c", variant=3)]
    env = dict(os.environ, PYTHONPATH=str(CHECKOUT))
    procs = [subprocess.Popen([sys.executable, "-m", "gaia_cas", "--root", str(where), "deploy", "ssd", str(src),
                               "--remote", "origin", "--json"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for where, src in zip((root, other), sources)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    numbers = sorted(json.loads(out)["version"] for out, _ in outs)
    assert numbers == ["1.1.0", "1.2.0"]  # distinct, whoever won
    remote = _remote(root)
    assert remote.version_numbers() == ["1.0.0", "1.1.0", "1.2.0"] and remote.current in numbers
    for where in (root, other):
        _agrees(where, remote)


def test_a_refused_deploy_remote_changes_nothing_anywhere(cli, root, origin, tmp_path):
    cli("deploy", "ssd", make_savedmodel(tmp_path / "a", variant=1), "--remote", "origin")
    cli("deploy", "ssd", make_savedmodel(tmp_path / "b", variant=2), "--remote", "origin")
    operator = _trainer(cli, tmp_path, origin, "operator")
    assert cli("rollback", "ssd", "1.0.0", "--remote", "origin", "--reason", "bad recall", root_dir=operator).code == 0
    _, manifests = Repository(root).remotes()[1]["origin"].open()
    token = manifests.snapshot("ssd").token
    before = snapshot(root)
    # this trainer never saw the rollback: redeploying the content rolled back from is refused
    assert_one_line_error(cli("deploy", "ssd", make_savedmodel(tmp_path / "b2", variant=2), "--remote", "origin"),
                          "rolled back", "on remote 'origin'", "--force")
    assert_one_line_error(cli("deploy", "ssd", make_savedmodel(tmp_path / "c", variant=3), "--remote", "origin",
                              "--version", "1.1.0"), "already assigned on remote 'origin'")
    assert_one_line_error(cli("deploy", "ssd", tmp_path / "c", "--remote", "nope"), "unknown remote 'nope'")
    assert_one_line_error(cli("deploy", "all", "--remote", "origin"), "deploys one model")
    dry = cli("deploy", "ssd", tmp_path / "c", "--remote", "origin", "--dry-run", "--json").json()
    assert dry["version"] == "1.2.0" and dry["dry_run"]
    assert {k: v for k, v in snapshot(root).items() if not k.startswith("logs")} == \
        {k: v for k, v in before.items() if not k.startswith("logs")}
    assert manifests.snapshot("ssd").token == token


def test_when_the_remote_part_fails_the_version_stays_here_and_a_push_sends_it(cli, root, origin, tmp_path,
                                                                               monkeypatch):
    from gaia_cas.s3 import RemoteError

    cli("deploy", "ssd", make_savedmodel(tmp_path / "a", variant=1), "--remote", "origin")
    real = S3ManifestStore.compare_and_swap

    def refused(self, model, token, manifest):
        raise RemoteError("remote 'origin': service unavailable (503)")

    monkeypatch.setattr(S3ManifestStore, "compare_and_swap", refused)
    run = cli("deploy", "ssd", make_savedmodel(tmp_path / "b", variant=2), "--remote", "origin")
    assert_one_line_error(run, "service unavailable", "ssd 1.1.0 is deployed here but not on remote 'origin'",
                          "gaia-cas push ssd")
    assert Repository(root).manifest("ssd").current == "1.1.0"
    assert _remote(root).version_numbers() == ["1.0.0"]
    monkeypatch.setattr(S3ManifestStore, "compare_and_swap", real)
    doc = cli("push", "--json").json()["pushed"][0]
    assert doc["versions_sent"] == 1 and doc["current_moved"] and doc["error"] is None
    assert _remote(root).current == "1.1.0"
    _agrees(root, _remote(root))
