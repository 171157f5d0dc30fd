"""Channels on a remote, against moto on 127.0.0.1 (or $GAIA_CAS_S3_ENDPOINT): promote --remote
moves a remote channel by compare-and-swap; push carries channels under the same no-stale-
overwrite rule as current; pull moves the local current and channels to the remote's (only C
with --channel C, nothing with a VERSION); sync --channel follows one channel. Link paths stay
local."""

from __future__ import annotations

import os

import pytest

from conftest import assert_one_line_error, make_savedmodel, snapshot
from gaia_cas.repo import Repository
from s3_fixtures import origin, s3_server, s3_url, second_store  # noqa: F401



_store = second_store


def _remote(root):
    return Repository(root).remote("origin").manifest("ssd")


def _two_versions_pushed(cli, tmp_path):
    cli("deploy", "ssd", make_savedmodel(tmp_path / "a", variant=1))
    cli("deploy", "ssd", make_savedmodel(tmp_path / "b", variant=2))
    assert cli("push").code == 0


def _served(where, channel) -> bytes:
    return (where / "models" / "ssd" / channel / "saved_model.pb").read_bytes()


def test_promote_on_the_remote_moves_its_channel_by_swap_and_nothing_local(cli, root, origin, tmp_path):
    _two_versions_pushed(cli, tmp_path)
    operator = _store(cli, tmp_path, origin, "operator")
    before = snapshot(operator)
    run = cli("promote", "ssd", "1.0.0", "--channel", "staging", "--remote", "origin", "--reason", "canary",
              "--json", root_dir=operator)
    assert run.code == 0, run.err
    assert run.json() == {"model": "ssd", "version": "1.0.0", "previous": None, "unchanged": False,
                          "remote": "origin", "channel": "staging"}
    assert snapshot(operator) == before
    remote = _remote(root)
    assert remote.channels == {"staging": {"version": "1.0.0", "link": None}} and remote.current == "1.1.0"
    event = next(remote.events_newest_first())
    assert (event.action, event.before, event.after, event.reason, event.details["channel"]) == \
        ("promote", None, "1.0.0", "canary", "staging")
    again = cli("promote", "ssd", "1.0.0", "--to", "staging", "--remote", "origin", root_dir=operator)
    assert again.code == 0 and "already 1.0.0; nothing changed" in again.out
    assert _remote(root).generation == remote.generation
    moved = cli("promote", "ssd", "1.1.0", "--to", "staging", "--remote", "origin", "--json", root_dir=operator)
    assert moved.json()["previous"] == "1.0.0"
    rollback = cli("promote", "ssd", "1.0.0", "--to", "current", "--remote", "origin", "--json", root_dir=operator)
    assert rollback.json()["version"] == "1.0.0" and _remote(root).current == "1.0.0"
    assert_one_line_error(cli("promote", "ssd", "1.0.0", "--to", "staging", "--remote", "origin", "--link", "x/y",
                              root_dir=operator), "local setting")
    assert_one_line_error(cli("promote", "ssd", "9.9.9", "--to", "staging", "--remote", "origin",
                              root_dir=operator), "9.9.9")
    assert_one_line_error(cli("promote", "ssd", "1.0.0", "--to", "Bad/Name", "--remote", "origin",
                              root_dir=operator), "invalid channel name")
    assert snapshot(operator) == before


def test_push_carries_channels_but_never_moves_one_this_store_has_not_seen_change(cli, root, origin, tmp_path):
    _two_versions_pushed(cli, tmp_path)
    assert cli("promote", "ssd", "1.0.0", "--to", "staging", "--link", "api/ssd-staging").code == 0
    doc = cli("push", "--json").json()["pushed"][0]
    assert doc["channels_moved"] == {"staging": "1.0.0"} and doc["error"] is None
    assert _remote(root).channels == {"staging": {"version": "1.0.0", "link": None}}  # the link path stays here
    operator = _store(cli, tmp_path, origin, "operator")
    assert cli("promote", "ssd", "1.1.0", "--to", "staging", "--remote", "origin", root_dir=operator).code == 0
    # this store never saw that move: its own staging change goes nowhere, and it says so
    cli("deploy", "ssd", make_savedmodel(tmp_path / "c", variant=3))
    cli("rollback", "ssd", "1.1.0")
    assert cli("promote", "ssd", "1.2.0", "--to", "staging").code == 0
    run = cli("push", "--json")
    assert run.code == 1
    doc = run.json()["pushed"][0]
    assert doc["versions_sent"] == 1 and doc["channels_moved"] == {} and "channel staging" in doc["error"]
    assert _remote(root).channels["staging"]["version"] == "1.1.0"
    # once it has pulled (staging follows the remote's), a new promote goes out
    assert cli("pull", "ssd").code == 0
    assert Repository(root).manifest("ssd").channels["staging"] == {"version": "1.1.0", "link": "api/ssd-staging"}
    assert cli("promote", "ssd", "1.2.0", "--to", "staging").code == 0
    doc = cli("push", "--json").json()["pushed"][0]
    assert doc["channels_moved"] == {"staging": "1.2.0"} and doc["error"] is None


def test_pull_moves_current_and_channels_and_pull_channel_moves_only_that_one(cli, root, origin, tmp_path):
    _two_versions_pushed(cli, tmp_path)
    cli("promote", "ssd", "1.0.0", "--to", "staging", "--remote", "origin")
    host = _store(cli, tmp_path, origin, "host")
    doc = cli("pull", "ssd", "--json", root_dir=host).json()["pulled"][0]
    assert (doc["current"], doc["channels_moved"]) == ("1.1.0", {"staging": "1.0.0"})
    assert _served(host, "current") == (tmp_path / "b" / "saved_model.pb").read_bytes()
    assert _served(host, "staging") == (tmp_path / "a" / "saved_model.pb").read_bytes()
    before = snapshot(host)
    again = cli("pull", "ssd", "--json", root_dir=host).json()["pulled"][0]
    assert not again["changed"] and snapshot(host) == before
    # the remote moves both; pulling one channel moves that one only
    cli("deploy", "ssd", make_savedmodel(tmp_path / "c", variant=3))
    cli("push")
    cli("promote", "ssd", "1.1.0", "--to", "staging", "--remote", "origin")
    doc = cli("pull", "ssd", "--channel", "staging", "--json", root_dir=host).json()["pulled"][0]
    assert (doc["channels_moved"], doc["current"], doc["previous"]) == ({"staging": "1.1.0"}, "1.1.0", "1.1.0")
    assert Repository(host).manifest("ssd").version_numbers() == ["1.1.0", "1.0.0"]  # 1.2.0 not fetched
    doc = cli("pull", "ssd", "--channel", "current", "--json", root_dir=host).json()["pulled"][0]
    assert (doc["current"], doc["channels_moved"]) == ("1.2.0", {})
    assert_one_line_error(cli("pull", "ssd", "1.0.0", "--channel", "staging", root_dir=host), "not both")
    assert_one_line_error(cli("pull", "ssd", "--channel", "nope", root_dir=host), "has no channel 'nope'")


def test_sync_channel_follows_one_channel(cli, root, origin, tmp_path):
    _two_versions_pushed(cli, tmp_path)
    cli("promote", "ssd", "1.0.0", "--to", "staging", "--remote", "origin")
    host = _store(cli, tmp_path, origin, "host")
    first = cli("sync", "--channel", "staging", "--json", root_dir=host).json()["pulled"]
    assert [(r["model"], r["channels_moved"], r["current"]) for r in first] == [("ssd", {"staging": "1.0.0"}, None)]
    assert os.path.lexists(host / "models" / "ssd" / "staging")
    assert not os.path.lexists(host / "models" / "ssd" / "current")  # only the channel followed
    cli("promote", "ssd", "1.1.0", "--to", "staging", "--remote", "origin")
    assert "up to date" not in cli("sync", "--channel", "staging", root_dir=host).out
    assert Repository(host).manifest("ssd").channels["staging"]["version"] == "1.1.0"
    assert cli("sync", "--channel", "staging", root_dir=host).out.strip() == "up to date"


def test_pull_all_with_a_channel_pulls_the_models_that_have_it(cli, root, origin, tmp_path):
    cli("deploy", "ssd", make_savedmodel(tmp_path / "a", variant=1))
    cli("deploy", "yolo", make_savedmodel(tmp_path / "y", variant=7))
    cli("promote", "ssd", "1.0.0", "--to", "canary")
    assert cli("push", "all").code == 0
    host = _store(cli, tmp_path, origin, "host")
    doc = cli("pull", "all", "--channel", "canary", "--json", root_dir=host).json()["pulled"]
    assert [(r["model"], r["channels_moved"]) for r in doc] == [("ssd", {"canary": "1.0.0"})]
    assert Repository(host).models() == ["ssd"]
    assert Repository(host).manifest("ssd").current is None  # only the channel was asked for
    assert_one_line_error(cli("pull", "ssd", "--channel", "Bad/Name", root_dir=host), "invalid channel name")
