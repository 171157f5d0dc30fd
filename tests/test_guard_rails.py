"""Guard rails: a typo of a model's name, the wrong folder level, and removing a version or a
model by hand -- never what is served or kept on purpose."""

from __future__ import annotations

import os
from datetime import timedelta

import pytest

from conftest import assert_one_line_error, lock_held_elsewhere, make_joblib, make_savedmodel, snapshot
from gaia_cas.errors import InvalidInputError, ModelNotFoundError, NotFoundError


@pytest.fixture
def ssd(repo, tmp_path):
    repo.add_model("ssd", aliases=["dl", "detector"])
    repo.deploy("ssd", make_savedmodel(tmp_path / "v0"))
    return repo


# -- deploy sdd when ssd exists --------------------------------------------------------------

def test_a_near_miss_of_a_model_name_is_refused_with_the_name_meant(ssd, cli, root, tmp_path):
    src = make_savedmodel(tmp_path / "v1", variant=1)
    before = snapshot(root)
    run = cli("deploy", "sdd", src)
    assert_one_line_error(run, "no model 'sdd': did you mean ssd?", "model add sdd", "--new")
    assert snapshot(root) == before
    assert ssd.models() == ["ssd"]


def test_a_near_miss_of_an_alias_names_the_alias(ssd, cli, tmp_path):
    run = cli("deploy", "detectro", make_savedmodel(tmp_path / "v1", variant=1))
    assert_one_line_error(run, "did you mean detector?")


def test_new_or_model_add_makes_the_close_name_a_model(ssd, cli, tmp_path):
    src = make_savedmodel(tmp_path / "v1", variant=1)
    run = cli("deploy", "sdd", src, "--new")
    assert run.code == 0, run.err
    assert ssd.models() == ["sdd", "ssd"]
    assert cli("model", "add", "ssdd").code == 0
    assert cli("deploy", "ssdd", src).code == 0
    with pytest.raises(NotFoundError, match="did you mean"):
        ssd.deploy("sd", src)  # the library refuses as the CLI does
    assert ssd.deploy("sd", src, new=True).version == "1.0.0"


def test_a_name_unlike_any_model_or_a_deliberate_variant_is_still_created_by_deploy(ssd, cli, tmp_path):
    run = cli("deploy", "catboost", make_joblib(tmp_path / "m.joblib"))
    assert run.code == 0, run.err
    for variant in ("ssd2", "ssd-copy", "catboost-v1", "catboost-v2", "old-ssd"):  # extends a name, or digits
        assert cli("deploy", variant, make_joblib(tmp_path / f"{variant}.joblib", variant=3)).code == 0, variant
    assert {"catboost", "ssd2", "ssd-copy", "catboost-v2", "old-ssd"} <= set(ssd.models())
    assert_one_line_error(cli("deploy", "sd", tmp_path / "m.joblib"), "did you mean ssd?")  # a letter lost
    assert_one_line_error(cli("deploy", "catbost", tmp_path / "m.joblib"), "did you mean catboost?")


# -- a folder one level too high -------------------------------------------------------------

def test_a_folder_holding_a_savedmodel_one_level_down_is_refused_with_the_folder_meant(repo, cli, root, tmp_path):
    big = tmp_path / "big"
    make_savedmodel(big / "saved_model")
    (big / "README.txt").write_text("exported on monday")
    before = snapshot(root)
    run = cli("deploy", "m", big)
    assert_one_line_error(run, f"did you mean {big / 'saved_model'}?", "big/saved_model is a SavedModel",
                          "--force")
    assert snapshot(root) == before
    assert cli("deploy", "m", big, "--dry-run").code == 1  # a dry run tells the same
    assert cli("deploy", "m", big / "saved_model").code == 0
    forced = cli("deploy", "m", big, "--force", "--json")
    assert forced.code == 0 and forced.json()["format"] == "unknown"


def test_a_folder_with_several_models_inside_or_a_known_format_deploys(repo, cli, tmp_path):
    two = tmp_path / "two"
    make_savedmodel(two / "a")
    make_savedmodel(two / "b", variant=1)
    assert cli("deploy", "m", two).code == 0  # no single folder was obviously meant
    assert cli("deploy", "n", make_savedmodel(tmp_path / "plain")).code == 0


# -- remove MODEL VERSION --------------------------------------------------------------------

@pytest.fixture
def four(repo, tmp_path):
    """m: 1.0.0 pinned, 1.1.0 on channel staging, 1.2.0 free, 1.3.0 current; each its own bytes."""
    for i in range(4):
        repo.deploy("m", make_savedmodel(tmp_path / f"v{i}", variant=i, variables_bytes=4096 + i))
    repo.pin("m", "1.0.0")
    repo.promote("m", "1.1.0", "staging")
    return repo


def test_remove_drops_a_version_records_it_and_gc_frees_it_later(four, cli, root):
    tree = four.manifest("m").find("1.2.0").tree
    run = cli("remove", "m", "1.2.0", "--reason", "bad calibration")
    assert run.code == 0, run.err
    assert "removed m 1.2.0" in run.out and "gc" in run.out
    manifest = four.manifest("m")
    assert manifest.find("1.2.0") is None and manifest.current == "1.3.0"
    event = manifest.history[-1]
    assert (event.action, event.version, event.reason) == ("remove", "1.2.0", "bad calibration")
    assert event.details["removed"] == ["1.2.0"]
    assert "removed 1.2.0" in cli("history", "m", "-n", "1").out
    assert (root / "store" / "trees" / tree).exists()  # still there: gc frees it
    four.gc(grace=timedelta(0))
    assert not (root / "store" / "trees" / tree).exists()
    assert four.deploy("m", root.parent / "v2", force=True).version == "1.4.0"  # 1.2.0 is never given again
    assert any("removed m 1.2.0" in line for line in four.logs(5))


@pytest.mark.parametrize("version, why", [
    ("1.3.0", "is the current version of 'm'"),
    ("1.1.0", "is on channel staging"),
    ("1.0.0", "is pinned; unpin it first"),
], ids=["current", "channel", "pinned"])
def test_remove_never_takes_what_is_served_or_kept(four, cli, root, version, why):
    before = snapshot(root)
    run = cli("remove", "m", version)
    assert_one_line_error(run, "not removed", why)
    assert snapshot(root) == before
    with pytest.raises(InvalidInputError, match="not removed"):
        four.remove("m", version)


def test_remove_of_an_unknown_version_or_under_a_held_lock(four, cli, root):
    assert_one_line_error(cli("remove", "m", "9.9.9"), "has no version '9.9.9'")
    with lock_held_elsewhere(root / "manifests" / "m.lock"):
        run = cli("--lock-timeout", "0.2", "remove", "m", "1.2.0")
    assert_one_line_error(run, "could not take the lock")
    assert four.manifest("m").find("1.2.0") is not None


# -- model remove ----------------------------------------------------------------------------

def test_model_remove_refuses_a_model_that_serves_something_without_force(four, cli, root):
    before = snapshot(root)
    run = cli("model", "remove", "m")
    assert_one_line_error(run, "still has current version 1.3.0", "channel staging (1.1.0)", "pinned 1.0.0",
                          "--force")
    assert snapshot(root) == before


def test_model_remove_force_drops_links_then_manifest_and_gc_frees_the_files(four, cli, root, tmp_path):
    other = four.deploy("keep", tmp_path / "v3", new=True)  # shares 1.3.0's bytes: they stay
    current, staging = root / "models" / "m" / "current", root / "models" / "m" / "staging"
    assert current.is_symlink() and staging.is_symlink()
    trees = {v.version: v.tree for v in four.manifest("m").versions}
    run = cli("model", "remove", "m", "--force", "--reason", "retired", "--json")
    assert run.code == 0, run.err
    doc = run.json()
    assert doc["model_removed"] and doc["removed_versions"] == ["1.0.0", "1.1.0", "1.2.0", "1.3.0"]
    assert sorted(doc["links_removed"]) == ["models/m/current", "models/m/staging"]
    assert not os.path.lexists(current) and not os.path.lexists(staging)
    assert four.models() == ["keep"]
    with pytest.raises(ModelNotFoundError):
        four.manifest("m")
    assert "m:" not in cli("list").out
    assert any("removed model m" in line and "retired" in line for line in four.logs(5, model="m"))
    four.gc(grace=timedelta(0))
    for version, tree in trees.items():
        assert (root / "store" / "trees" / tree).exists() == (tree == other.hash), version
    assert four.deploy("m", tmp_path / "v0").version == "1.0.0"  # the name is free again: a new model


def test_model_remove_without_force_when_nothing_is_served(repo, cli, root):
    repo.add_model("empty")
    run = cli("model", "remove", "empty")
    assert run.code == 0, run.err
    assert "removed model empty (0 versions)" in run.out
    assert repo.models() == []
    assert_one_line_error(cli("model", "remove", "empty"), "unknown model 'empty'")


def test_model_remove_leaves_a_link_that_is_not_gaia_cas_s(repo, cli, root, tmp_path):
    legacy = tmp_path / "legacy_current"
    legacy.mkdir()
    link = root / "api" / "current"
    link.parent.mkdir()
    os.symlink(legacy, link)  # the old layout's current, which servers still follow
    repo.add_model("m", link="api/current")
    assert cli("model", "remove", "m").code == 0
    assert os.readlink(link) == str(legacy)


def test_force_is_only_for_whole_models(four):
    with pytest.raises(InvalidInputError, match="--force removes a whole model"):
        four.remove("m", "1.3.0", force=True)
