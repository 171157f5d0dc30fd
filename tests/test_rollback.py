"""rollback: every selector form, 'previous', history, and no bytes copied."""

from __future__ import annotations

import os

import pytest

from conftest import make_savedmodel, snapshot
from gaia_cas.errors import InvalidInputError, NotFoundError, VersionNotFoundError


@pytest.fixture
def three(repo, tmp_path):
    src = tmp_path / "m"
    results = []
    for variant in range(3):
        make_savedmodel(src, variant)
        results.append(repo.deploy("ssd", src))
    return results


def _link_target(root, model="ssd"):
    return os.path.realpath(root / "models" / model / "current")


def test_every_selector_form_reaches_the_version(repo, three, root):
    v1 = repo.manifest("ssd").find("1.1.0")
    forms = ["1.1.0", "1.1", "v1.1", "v1.1.0", f"v1.1_{v1.deployment_id}", f"v1.1.0_{v1.deployment_id}",
             v1.tree[:8], v1.tree]
    for form in forms:
        repo.rollback("ssd", "1.2.0")
        result = repo.rollback("ssd", form)
        assert (result.version, result.previous) == ("1.1.0", "1.2.0"), form
        assert repo.manifest("ssd").current == "1.1.0"
        assert _link_target(root) == os.path.realpath(root / "store" / "trees" / v1.tree)


def test_previous_toggles_like_cd_dash(repo, three):
    assert repo.rollback("ssd", "previous").version == "1.1.0"
    assert repo.rollback("ssd", "previous").version == "1.2.0"
    assert repo.rollback("ssd", "1.0").version == "1.0.0"
    assert repo.rollback("ssd", "previous").version == "1.2.0"


def test_previous_without_history_is_an_error(repo, savedmodel):
    repo.deploy("ssd", savedmodel)
    with pytest.raises(VersionNotFoundError, match="no earlier current version"):
        repo.rollback("ssd", "previous")


def test_rollback_copies_no_bytes(repo, three, root):
    objects_before = sorted(p for p in (root / "store" / "objects").rglob("*"))
    pb = root / "store" / "trees" / three[0].hash / "saved_model.pb"
    inode = pb.stat().st_ino
    repo.rollback("ssd", "1.0.0")
    assert sorted(p for p in (root / "store" / "objects").rglob("*")) == objects_before
    linked = root / "models" / "ssd" / "current" / "saved_model.pb"
    assert linked.stat().st_ino == inode  # the link leads to the same inode: a hard link to the object


def test_rollback_is_recorded_in_history_with_reason(repo, three):
    repo.rollback("ssd", "1.0.0", reason="false positives on batch 7")
    event = repo.manifest("ssd").history[-1]
    assert (event.action, event.version, event.before, event.after) == ("rollback", "1.0.0", "1.2.0", "1.0.0")
    assert event.reason == "false positives on batch 7" and event.user


def test_rollback_to_current_changes_nothing(repo, three, root):
    before = snapshot(root)
    result = repo.rollback("ssd", "1.2")
    assert result.unchanged and result.version == "1.2.0"
    assert snapshot(root) == before


@pytest.mark.parametrize("selector, error", [
    ("9.9", VersionNotFoundError), ("v1.1_20000101_000000", VersionNotFoundError),
    ("deadbeefdeadbeef", VersionNotFoundError), ("1.x", InvalidInputError), ("", InvalidInputError),
    ("abc", InvalidInputError), ("1.2.3.4", InvalidInputError),
])
def test_bad_selectors_leave_the_store_alone(repo, three, root, selector, error):
    before = snapshot(root)
    with pytest.raises(error):
        repo.rollback("ssd", selector)
    assert snapshot(root) == before


def test_ambiguous_hash_prefix_is_refused(repo):
    from gaia_cas.manifest import Manifest, Version

    def version(number, tree):
        return Version(number, "20250716_202612", "2025-07-16T20:26:12+00:00", tree, "directory", None,
                       1, 1, "unknown")

    manifest = Manifest("ssd", versions=[version("1.0.0", "abcdef12" + "0" * 24),
                                         version("1.1.0", "abcdef12" + "1" * 24)], current="1.1.0")
    with pytest.raises(InvalidInputError, match="ambiguous"):
        repo.select(manifest, "abcdef12")
    assert repo.select(manifest, "abcdef120").version == "1.0.0"


def test_unknown_model(repo):
    with pytest.raises(NotFoundError):
        repo.rollback("nope", "1.0")


def test_rollback_rebuilds_a_removed_materialized_tree(repo, three, root):
    from gaia_cas.materialize import remove_tree

    tree_dir = root / "store" / "trees" / three[0].hash
    remove_tree(tree_dir)
    repo.rollback("ssd", "1.0.0")
    assert (root / "models" / "ssd" / "current" / "saved_model.pb").is_file()
    assert tree_dir.is_dir()
