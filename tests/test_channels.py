"""Channels: promote a version to a named pointer (staging, canary) with its own link; resolve it;
cleanup and gc keep it; 'current' stays the default channel; collisions, bad names and broken
versions are refused."""

from __future__ import annotations

import os
import time
import pytest

import gaia_cas
from conftest import assert_one_line_error, make_joblib, make_savedmodel, snapshot
from gaia_cas.errors import CorruptionError, NotFoundError


@pytest.fixture
def three(repo, tmp_path):
    """Model m (alias mm), versions 1.0.0 .. 1.2.0, each with a file of its own; 1.2.0 is current."""
    repo.add_model("m", aliases=["mm"])
    src = tmp_path / "m"
    for variant in range(3):
        make_savedmodel(src, variant)
        (src / "own.bin").write_bytes(bytes([variant + 1]) * 50_000)
        repo.deploy("m", src)
    return repo


def tree_of(repo, version, model="m"):
    return repo.manifest(model).find(version).tree


def realpath(path):
    return os.path.realpath(path)


def manifest_bytes(root, model="m"):
    return (root / "manifests" / f"{model}.msgpack").read_bytes()


def own_object(repo, version, model="m"):
    entries = {e.name: e for e in repo.trees.entries(tree_of(repo, version, model))}
    return repo.objects.path(entries["own.bin"].oid)


def corrupt(path):
    os.chmod(path, 0o644)
    path.write_bytes(b"garbage")


def test_promote_gives_the_channel_its_own_link_and_resolve_finds_it(three, cli, root):
    current_link = root / "models" / "m" / "current"
    current_before = os.readlink(current_link)
    run = cli("promote", "mm", "1.0", "--to", "staging", "--reason", "QA run 12", "--json")
    assert run.code == 0, run.err
    doc = run.json()
    tree = root / "store" / "trees" / tree_of(three, "1.0.0")
    assert doc == {"model": "m", "version": "1.0.0", "previous": None, "unchanged": False,
                   "path": str(tree), "channel": "staging"}
    link = root / "models" / "m" / "staging"
    assert os.path.islink(link) and realpath(link) == str(tree)
    assert (link / "own.bin").read_bytes() == bytes([1]) * 50_000
    assert os.readlink(current_link) == current_before  # current does not move
    assert three.manifest("m").current == "1.2.0"

    staged = gaia_cas.resolve("m", root=root, channel="staging")
    assert (staged.version, staged.hash, staged.path) == ("1.0.0", tree.name, tree)
    assert gaia_cas.resolve("mm", root=root, channel="staging").version == "1.0.0"  # alias works
    assert gaia_cas.resolve("m", root=root).version == "1.2.0"  # the default channel is current
    assert gaia_cas.resolve("m", root=root, channel="current").version == "1.2.0"
    assert three.manifest("m").channels == {"staging": {"version": "1.0.0", "link": None}}
    assert "promoted m 1.1.0 to canary (was -)" in cli("promote", "m", "1.1", "--to", "canary").out


def test_promoting_again_swaps_the_link_and_an_unchanged_promote_commits_nothing(three, cli, root):
    assert cli("promote", "m", "1.0", "--to", "staging").code == 0
    link = root / "models" / "m" / "staging"
    run = cli("promote", "m", "1.1", "--to", "staging", "--json")
    assert run.code == 0, run.err
    assert (run.json()["version"], run.json()["previous"], run.json()["unchanged"]) == ("1.1.0", "1.0.0", False)
    assert realpath(link) == str(root / "store" / "trees" / tree_of(three, "1.1.0"))
    assert gaia_cas.resolve("m", root=root, channel="staging").version == "1.1.0"
    # no temp links left next to it: the swap was a rename over the old link
    assert sorted(os.listdir(root / "models" / "m")) == ["current", "staging"]

    before = snapshot(root)
    generation = three.manifest("m").generation
    run = cli("promote", "m", "1.1.0", "--to", "staging")
    assert run.code == 0 and "already 1.1.0; nothing changed" in run.out
    assert three.manifest("m").generation == generation
    assert snapshot(root) == before


def test_the_channel_stays_while_current_moves(three, cli, root, tmp_path):
    assert cli("promote", "m", "1.0", "--to", "staging").code == 0
    os.unlink(root / "models" / "m" / "staging")  # lost: the next commit regenerates it from the manifest
    src = tmp_path / "m"
    make_savedmodel(src, 7)
    assert cli("deploy", "m", src).code == 0
    assert cli("rollback", "m", "1.1").code == 0
    assert three.manifest("m").channels["staging"]["version"] == "1.0.0"
    assert gaia_cas.resolve("m", root=root, channel="staging").version == "1.0.0"
    assert realpath(root / "models" / "m" / "staging") == str(root / "store" / "trees" / tree_of(three, "1.0.0"))
    assert gaia_cas.resolve("m", root=root).version == "1.1.0"


def test_channel_of_a_file_model_links_to_the_file_by_its_name(repo, cli, root, tmp_path):
    path = tmp_path / "cb" / "model_catboost_best.joblib"
    for variant in range(2):
        make_joblib(path, variant)
        repo.deploy("catboost", path)
    assert cli("promote", "catboost", "1.0", "--to", "canary").code == 0
    link = root / "models" / "catboost" / "canary"
    make_joblib(path, 0)
    assert os.path.basename(realpath(link)) == "model_catboost_best.joblib"
    assert link.read_bytes() == path.read_bytes()
    resolved = gaia_cas.resolve("catboost", root=root, channel="canary")
    assert resolved.path.name == "model_catboost_best.joblib" and resolved.path.read_bytes() == path.read_bytes()


def test_custom_link_is_used_and_kept(three, cli, root):
    run = cli("promote", "m", "1.0", "--to", "canary", "--link", "api/models/dl_model/canary")
    assert run.code == 0, run.err
    link = root / "api" / "models" / "dl_model" / "canary"
    tree = root / "store" / "trees"
    assert realpath(link) == str(tree / tree_of(three, "1.0.0"))
    assert not os.path.lexists(root / "models" / "m" / "canary")
    assert cli("promote", "m", "1.1", "--to", "canary").code == 0  # no --link: the channel keeps its own
    assert realpath(link) == str(tree / tree_of(three, "1.1.0"))
    assert not os.path.lexists(root / "models" / "m" / "canary")
    # an absolute path inside the root is stored relative to it
    assert cli("promote", "m", "1.1", "--to", "beta", "--link", root / "api" / "beta").code == 0
    assert three.manifest("m").channels["beta"]["link"] == "api/beta"
    assert realpath(root / "api" / "beta") == str(tree / tree_of(three, "1.1.0"))


def test_moving_a_channel_link_removes_the_old_one(three, cli, root):
    """Like 'model set --link' does for current: the old link must not keep serving the old version."""
    assert cli("promote", "m", "1.0", "--to", "staging").code == 0
    old = root / "models" / "m" / "staging"
    assert os.path.islink(old)
    assert cli("promote", "m", "1.1", "--to", "staging", "--link", "api/staging").code == 0
    assert realpath(root / "api" / "staging") == str(root / "store" / "trees" / tree_of(three, "1.1.0"))
    assert not os.path.lexists(old), f"stale channel link left behind, still -> {os.readlink(old)}"


@pytest.mark.parametrize("link, fragment", [
    ("models/other/current", "by model 'other'"),                  # another model's current link
    ("models/other/staging", "by channel 'staging' of 'other'"),   # another model's channel link
    ("models/m/current", "by model 'm'"),                          # this model's own current link
    ("api/m-canary", "by channel 'canary' of 'm'"),                # this model's other channel
])
def test_promote_onto_a_link_another_pointer_owns_is_refused(three, cli, root, tmp_path, link, fragment):
    src = make_savedmodel(tmp_path / "other", 9)
    three.deploy("other", src)
    three.promote("other", "1.0", "staging")
    three.promote("m", "1.0", "canary", link="api/m-canary")
    before = snapshot(root)
    run = cli("promote", "m", "1.1", "--to", "staging", "--link", link)
    assert_one_line_error(run, "already used by", fragment)
    assert snapshot(root) == before


def test_default_channel_link_taken_by_another_model_is_refused(three, cli, root, tmp_path):
    three.deploy("other", make_savedmodel(tmp_path / "other", 9))
    three.promote("other", "1.0", "canary", link="models/m/staging")
    before = snapshot(root)
    assert_one_line_error(cli("promote", "m", "1.0", "--to", "staging"), "already used by channel 'canary' of 'other'")
    assert snapshot(root) == before


def test_model_link_onto_a_channel_link_is_refused(three, cli, root, tmp_path):
    """The collision check must hold both ways: a current link may not take over a channel's link."""
    three.deploy("other", make_savedmodel(tmp_path / "other", 9))
    three.promote("m", "1.0", "staging", link="api/staging")
    three.promote("m", "1.0", "canary")
    before = snapshot(root)
    assert_one_line_error(cli("model", "set", "other", "--link", "api/staging"), "api/staging")
    assert_one_line_error(cli("model", "set", "m", "--link", "models/m/canary"), "models/m/canary")
    assert_one_line_error(cli("model", "add", "z", "--link", "api/staging"), "api/staging")
    assert snapshot(root) == before


def test_deploying_a_new_model_never_takes_over_a_channel_link(three, cli, root, tmp_path):
    """m's canary lives where model y's default current link would be: deploying y must not hijack it."""
    three.promote("m", "1.0", "canary", link="models/y/current")
    canary = root / "models" / "y" / "current"
    served = realpath(canary)
    run = cli("deploy", "y", make_savedmodel(tmp_path / "y", 9))
    assert realpath(canary) == served, "m's canary link now serves model y"
    assert_one_line_error(run, "models/y/current")


@pytest.mark.parametrize("channel", ["Staging", "../x", "a/b", "", "all", "both", "-x", ".hidden", "x" * 65,
                                     "st aging", "ca\nnary"])
def test_invalid_channel_names_are_refused(three, cli, root, channel):
    before = snapshot(root)
    run = cli("promote", "m", "1.0", f"--to={channel}")
    assert run.code == 1 and "Traceback" not in run.err
    assert run.err.startswith("gaia-cas: error: ")
    assert "channel" in run.err or "reserved" in run.err
    assert snapshot(root) == before
    with pytest.raises(NotFoundError):
        gaia_cas.resolve("m", root=root, channel="staging")


@pytest.mark.parametrize("link", ["../outside", "store/x", "manifests/x", "/etc/gaia-staging", "a//b", "./a"])
def test_invalid_channel_link_paths_are_refused(three, cli, root, tmp_path, link):
    before = snapshot(root)
    assert_one_line_error(cli("promote", "m", "1.0", "--to", "staging", "--link", link), "link path")
    assert snapshot(root) == before
    assert not os.path.lexists(tmp_path / "outside") and not os.path.lexists("/etc/gaia-staging")


def test_promote_to_current_behaves_like_rollback(three, cli, root):
    run = cli("promote", "m", "1.0", "--to", "current", "--reason", "bad recall", "--json")
    assert run.code == 0, run.err
    doc = run.json()
    assert (doc["version"], doc["previous"], doc["unchanged"], doc["channel"]) == ("1.0.0", "1.2.0", False, "current")
    manifest = three.manifest("m")
    assert manifest.current == "1.0.0" and manifest.channels == {}
    assert realpath(root / "models" / "m" / "current") == str(root / "store" / "trees" / tree_of(three, "1.0.0"))
    event = manifest.history[-1]
    assert (event.action, event.before, event.after, event.reason) == ("rollback", "1.2.0", "1.0.0", "bad recall")
    assert gaia_cas.resolve("m", root=root).version == "1.0.0"
    assert cli("rollback", "m", "previous").code == 0  # the move counts as a change of current
    assert three.manifest("m").current == "1.2.0"
    before = snapshot(root)
    assert_one_line_error(cli("promote", "m", "1.0", "--to", "current", "--link", "api/x"), "model set")
    assert snapshot(root) == before


def test_channel_moves_do_not_confuse_previous(three, cli):
    assert cli("rollback", "m", "1.1").code == 0
    assert cli("promote", "m", "1.0", "--to", "staging").code == 0
    assert cli("promote", "m", "1.2", "--to", "staging").code == 0
    assert cli("rollback", "m", "previous").code == 0
    assert three.manifest("m").current == "1.2.0"


def test_cleanup_keeps_every_channel_version(three, cli, root):
    assert cli("promote", "m", "1.0", "--to", "staging").code == 0
    assert cli("promote", "m", "1.0", "--to", "canary").code == 0
    run = cli("cleanup", "m", "--keep", "0", "--json")
    assert run.code == 0, run.err
    plan = run.json()["models"][0]
    assert plan["removed"] == ["1.1.0"]
    keep = {k["version"]: k["reasons"] for k in plan["keep"]}
    assert keep == {"1.2.0": ["current"], "1.0.0": ["channel canary", "channel staging"]}
    assert [v.version for v in three.manifest("m").versions] == ["1.0.0", "1.2.0"]
    assert gaia_cas.resolve("m", root=root, channel="staging").version == "1.0.0"
    text = cli("cleanup", "m", "--keep", "0", "--dry-run").out
    assert "channel staging" in text and "would remove nothing" in text


def age_store(root, seconds=7200):
    past = time.time() - seconds
    for dirpath, dirnames, filenames in os.walk(root / "store"):
        for name in dirnames + filenames:
            os.utime(os.path.join(dirpath, name), (past, past), follow_symlinks=False)


def test_gc_keeps_a_channel_versions_materialized_tree_and_objects(three, cli, root, tmp_path):
    src = tmp_path / "m"
    make_savedmodel(src, 3)
    (src / "own.bin").write_bytes(bytes([4]) * 50_000)
    three.deploy("m", src)  # 1.3.0 current
    assert cli("promote", "m", "1.0", "--to", "staging").code == 0
    assert cli("pin", "m", "1.1").code == 0  # kept in the manifest, but no pointer serves it
    trees = {v: root / "store" / "trees" / tree_of(three, v) for v in ("1.0.0", "1.1.0", "1.2.0", "1.3.0")}
    gone_objects = [own_object(three, "1.2.0")]
    assert cli("cleanup", "m", "--keep", "0").code == 0  # removes 1.2.0
    assert [v.version for v in three.manifest("m").versions] == ["1.0.0", "1.1.0", "1.3.0"]
    assert all(t.is_dir() for t in trees.values())
    age_store(root)

    run = cli("gc", "--grace", "0", "--json")
    assert run.code == 0, run.err
    assert run.json()["deleted"].get("object", 0) >= 2  # 1.2.0's own.bin and saved_model.pb at least
    assert trees["1.0.0"].is_dir(), "gc removed the staging version's materialized tree"
    assert trees["1.3.0"].is_dir()
    assert not trees["1.1.0"].exists()  # gc does remove trees no pointer serves: the check above means something
    assert not trees["1.2.0"].exists() and not any(p.exists() for p in gone_objects)
    for version in ("1.0.0", "1.1.0", "1.3.0"):
        three.check_complete(tree_of(three, version))  # every object still there
    link = root / "models" / "m" / "staging"
    assert os.path.exists(link) and (link / "own.bin").read_bytes() == bytes([1]) * 50_000
    assert gaia_cas.resolve("m", root=root, channel="staging").path == trees["1.0.0"]
    assert cli("verify").code == 0


def test_promote_of_a_broken_version_is_refused(three, cli, root):
    corrupt(own_object(three, "1.0.0"))
    run = cli("verify", "--repair", "--json")
    assert run.json()["broken_versions"] == ["m 1.0.0"]
    before = snapshot(root)
    assert_one_line_error(cli("promote", "m", "1.0", "--to", "staging"), "broken")
    assert_one_line_error(cli("promote", "m", "1.0", "--to", "current"), "broken")
    assert snapshot(root) == before
    assert three.manifest("m").channels == {} and three.manifest("m").current == "1.2.0"


def test_a_channel_whose_version_breaks_is_never_served(three, cli, root):
    assert cli("promote", "m", "1.0", "--to", "staging").code == 0
    link = root / "models" / "m" / "staging"
    assert os.path.islink(link)
    corrupt(own_object(three, "1.0.0"))
    assert cli("verify", "--repair").code == 0  # isolated: current (1.2.0) is intact
    with pytest.raises(CorruptionError, match="broken"):
        gaia_cas.resolve("m", root=root, channel="staging")
    assert not os.path.lexists(link)
    assert gaia_cas.resolve("m", root=root).version == "1.2.0"
    assert cli("promote", "m", "1.1", "--to", "staging").code == 0  # moving the channel off it works
    assert realpath(link) == str(root / "store" / "trees" / tree_of(three, "1.1.0"))


def test_unknown_channel_is_a_clear_error(three, root):
    three.promote("m", "1.0", "staging")
    with pytest.raises(NotFoundError, match="no channel 'canary'.*staging"):
        gaia_cas.resolve("m", root=root, channel="canary")


def test_verify_checks_and_repairs_channel_links(three, cli, root):
    assert cli("promote", "m", "1.0", "--to", "staging").code == 0
    assert cli("verify", "--json").json()["checked_links"] == 2
    link = root / "models" / "m" / "staging"
    os.unlink(link)
    run = cli("verify")
    assert run.code == 1 and "models/m/staging" in run.out
    assert cli("verify", "--repair").code == 0
    assert realpath(link) == str(root / "store" / "trees" / tree_of(three, "1.0.0"))
    os.unlink(link)
    link.symlink_to(root / "store" / "trees" / tree_of(three, "1.2.0"))  # pointing at the wrong version
    assert cli("verify").code == 1
    assert cli("verify", "--repair").code == 0
    assert realpath(link) == str(root / "store" / "trees" / tree_of(three, "1.0.0"))


def test_promote_is_recorded_in_history(three, cli):
    assert cli("promote", "m", "1.0", "--to", "staging", "--reason", "QA").code == 0
    assert cli("promote", "m", "1.1", "--to", "staging", "--reason", "QA 2").code == 0
    events = [e for e in cli("history", "m", "--json").json()["events"] if e["action"] == "promote"]
    assert [(e["version"], e["before"], e["after"], e["reason"], e["details"]["channel"]) for e in events] == [
        ("1.0.0", None, "1.0.0", "QA", "staging"), ("1.1.0", "1.0.0", "1.1.0", "QA 2", "staging")]
    assert all(e["user"] and e["host"] for e in events)
    assert "promote staging" in cli("history", "m").out


def test_unknown_version_or_model_is_one_line(three, cli, root):
    before = snapshot(root)
    assert_one_line_error(cli("promote", "m", "9.9", "--to", "staging"), "9.9")
    assert_one_line_error(cli("promote", "nosuch", "1.0", "--to", "staging"), "nosuch")
    assert snapshot(root) == before



def test_gc_sweeps_temp_links_a_crashed_channel_swap_left(three, cli, root):
    """A swap interrupted between symlink() and rename() leaves '.<name>.tmp-…' beside the link; gc
    removes such leftovers beside current (tests/test_crash_points.py) and must beside a channel link too."""
    from gaia_cas.atomic import TMP_MARK

    three.promote("m", "1.0", "staging")
    three.promote("m", "1.0", "canary", link="api/canary")
    leftovers = [root / "models" / "m" / f".staging{TMP_MARK}0123456789ab",
                 root / "api" / f".canary{TMP_MARK}0123456789ab"]
    for path in leftovers:
        os.symlink("../../store/trees/" + tree_of(three, "1.1.0"), path)
        past = time.time() - 7200
        os.utime(path, (past, past), follow_symlinks=False)
    assert cli("gc", "--grace", "0").code == 0
    assert [p.name for p in leftovers if os.path.lexists(p)] == []
    assert os.path.islink(root / "models" / "m" / "staging") and os.path.islink(root / "api" / "canary")


def test_moving_only_a_channel_link_is_a_change_and_is_logged(repo, root, tmp_path, cli):
    repo.deploy("m", make_savedmodel(tmp_path / "s"))
    assert cli("promote", "m", "1.0", "--to", "staging").code == 0
    run = cli("promote", "m", "1.0", "--to", "staging", "--link", "srv/staging", "--json")
    assert run.code == 0 and run.json()["unchanged"] is False
    assert (root / "srv" / "staging" / "saved_model.pb").is_file()
    assert any("link models/m/staging -> srv/staging" in line for line in repo.logs(10))
