"""Selectors that name a version: hash prefixes are unique or refused, 'previous' without a
model, and a legacy number whose first copy was cleaned points at the copy that remains."""

from __future__ import annotations

import pytest

from conftest import assert_one_line_error, make_joblib, make_savedmodel, snapshot
from gaia_cas.errors import InvalidInputError, VersionNotFoundError
from test_legacy import build_legacy


@pytest.fixture
def legacy_root(cli, root, tmp_path):
    """The Gaia Vision layout imported: dl (ssd) has 1.3.0 and 1.3.1, both the old v1.3, one tree."""
    legacy = build_legacy(root / "api" / "models")
    assert cli("import-legacy", legacy).code == 0
    return root


def test_prefix_shared_by_two_versions_with_one_tree_is_refused(legacy_root, repo, cli):
    manifest = repo.manifest("ssd")
    tree = manifest.find("1.3.0").tree
    assert manifest.find("1.3.1").tree == tree  # the two v1.3 copies are byte-identical
    with pytest.raises(InvalidInputError, match="ambiguous") as caught:
        repo.select(manifest, tree[:10])
    assert "1.3.0" in str(caught.value) and "1.3.1" in str(caught.value)
    before = snapshot(legacy_root)
    run = cli("rollback", "dl", tree[:10])
    assert_one_line_error(run, "ambiguous", "1.3.0", "1.3.1")
    assert snapshot(legacy_root) == before
    # a prefix that one version alone has still works
    other = manifest.find("1.0.0").tree
    assert repo.select(manifest, other[:12]).version == "1.0.0"


def test_rollback_previous_without_a_model_uses_the_only_model(repo, cli, tmp_path):
    src = make_joblib(tmp_path / "s" / "model.joblib", 0)
    repo.deploy("m", src)
    make_joblib(src, 1)
    repo.deploy("m", src)
    run = cli("rollback", "previous")
    assert run.code == 0, run.err
    assert repo.manifest("m").current == "1.0.0"
    assert "1.1.0 -> 1.0.0" in run.out


def test_rollback_previous_without_a_model_names_the_models_when_there_are_several(repo, cli, root, tmp_path):
    for model in ("alpha", "beta"):
        src = make_joblib(tmp_path / model / "model.joblib", 0)
        repo.deploy(model, src)
        make_joblib(src, 1)
        repo.deploy(model, src)
    before = snapshot(root)
    run = cli("rollback", "previous")
    assert_one_line_error(run, "alpha", "beta", "rollback MODEL previous")
    assert "VERSION" not in run.err.replace("MODEL", "")  # not a complaint about a missing VERSION
    assert snapshot(root) == before


def test_rollback_of_a_model_without_a_version_is_still_a_usage_error(repo, cli, tmp_path):
    repo.deploy("m", make_joblib(tmp_path / "s" / "model.joblib", 0))
    run = cli("rollback", "m")
    assert run.code == 2 and "required: VERSION" in run.err


def test_cleaned_legacy_number_points_at_the_other_copy(legacy_root, repo, cli):
    # 1.3.0 and 1.3.1 are both the old v1.3; the newest three (1.3.1, 1.4.0, 1.5.0) are kept
    [plan] = repo.cleanup(["ssd"], keep=3)
    assert plan.removed == ["1.0.0", "1.1.0", "1.2.0", "1.3.0"]
    with pytest.raises(VersionNotFoundError) as caught:
        repo.rollback("dl", "v1.3")
    assert "1.3.1" in str(caught.value) and "v1.3_20250716_202612" in str(caught.value)
    before = snapshot(legacy_root)
    run = cli("rollback", "dl", "v1.3")
    assert_one_line_error(run, "1.3.1", "still exists")
    assert snapshot(legacy_root) == before
    # the old folder name of the later copy still reaches it
    assert repo.rollback("dl", "v1.3_20250716_202612").version == "1.3.1"


def test_rollback_previous_in_an_empty_root(cli, root):
    assert_one_line_error(cli("rollback", "previous"), "no model yet")
