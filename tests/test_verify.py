"""verify and verify --repair: corruption is found, isolated, never served; links and trees are rebuilt."""

from __future__ import annotations

import os
from datetime import date

import pytest

import gaia_cas
from conftest import make_savedmodel
from gaia_cas.errors import CorruptionError
from gaia_cas.ingest import hash_only
from gaia_cas.verify import in_sample


@pytest.fixture
def three(repo, tmp_path):
    """Versions 1.0.0 .. 1.2.0; each has its own big.bin, all share variables/."""
    src = tmp_path / "m"
    for variant in range(3):
        make_savedmodel(src, variant)
        (src / "big.bin").write_bytes(bytes([variant + 1]) * 300_000)
        repo.deploy("m", src)
    return repo


def own_object(repo, version):
    """The object of big.bin in ``version``: used by that version only."""
    tree = repo.manifest("m").find(version).tree
    entries = {e.name: e for e in repo.trees.entries(tree)}
    return repo.objects.path(entries["big.bin"].oid)


def writable(path):
    os.chmod(path, 0o644)
    return path


def test_clean_store_verifies(three, cli):
    run = cli("verify", "--json")
    assert run.code == 0, run.out
    doc = run.json()
    assert doc["ok"] is True and doc["problems"] == []
    # distinct file objects: big.bin and saved_model.pb differ per version (2 x 3), while
    # variables.index, the variables data and fingerprint.pb are shared (3)
    assert doc["checked_objects"] == 9
    assert doc["checked_links"] == 1


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_damaged_object_is_reported_with_the_versions_it_affects(three, cli, damage):
    path = own_object(three, "1.0.0")
    if damage == "flip":
        data = bytearray(writable(path).read_bytes())
        data[1000] ^= 0xFF
        path.write_bytes(bytes(data))
    elif damage == "truncate":
        writable(path).write_bytes(path.read_bytes()[:-1])
    else:
        os.unlink(path)
    run = cli("verify")
    assert run.code == 1
    kind = "missing-object" if damage == "delete" else "corrupt-object"
    assert kind in run.out and "(affects m 1.0.0)" in run.out


def test_repair_quarantines_marks_broken_and_never_serves(three, cli, root):
    path = own_object(three, "1.1.0")
    oid = path.parent.name + path.name
    writable(path).write_bytes(b"garbage")
    run = cli("verify", "--repair", "--json")
    assert run.code == 0, run.out  # every problem fixed or isolated; current (1.2.0) is intact
    doc = run.json()
    assert doc["broken_versions"] == ["m 1.1.0"]
    assert not path.exists()
    assert any(p.name.startswith(oid) for p in (root / "store" / "quarantine").iterdir())
    assert cli("verify").code == 0  # the store verifies apart from the broken version, which is listed
    assert "broken versions (never served): m 1.1.0" in cli("verify").out
    run = cli("rollback", "m", "1.1")
    assert run.code == 1 and "marked broken" in run.err
    assert three.manifest("m").current == "1.2.0"
    assert "!" in [line for line in cli("list", "m").out.splitlines() if " 1.1.0 " in line][0]


def test_broken_current_is_reported_not_rolled_back(three, cli, root):
    writable(own_object(three, "1.2.0")).write_bytes(b"garbage")
    run = cli("verify", "--repair")
    assert run.code == 1 and "broken-current" in run.out
    manifest = three.manifest("m")
    assert manifest.current == "1.2.0" and manifest.find("1.2.0").broken  # no silent rollback
    with pytest.raises(CorruptionError, match="marked broken"):
        gaia_cas.resolve("m", root=root)
    assert not os.path.lexists(root / "models" / "m" / "current")  # never served through the link either
    assert cli("verify").code == 1  # until the operator acts
    assert cli("rollback", "m", "1.1").code == 0
    assert cli("verify").code == 0
    assert gaia_cas.resolve("m", root=root).version == "1.1.0"


def test_redeploying_the_content_unmarks_a_broken_version(three, cli, tmp_path):
    path = own_object(three, "1.1.0")
    writable(path).write_bytes(b"garbage")
    cli("verify", "--repair")
    src = tmp_path / "m"
    make_savedmodel(src, 1)
    (src / "big.bin").write_bytes(bytes([2]) * 300_000)
    assert three.deploy("m", src).version == "1.3.0"  # same bytes as 1.1.0: the object is back
    run = cli("verify", "--repair", "--json")
    assert run.json()["broken_versions"] == []
    assert not three.manifest("m").find("1.1.0").broken
    assert cli("rollback", "m", "1.1").code == 0


def test_materialized_file_edited_in_place_is_caught(three, cli, root):
    tree = three.manifest("m").find("1.2.0").tree
    victim = root / "store" / "trees" / tree / "fingerprint.pb"
    # Replace the hard link by a different file (an editor's save-by-rename): the object is intact.
    os.chmod(victim.parent, 0o755)
    os.unlink(victim)
    victim.write_bytes(b"edited")
    os.chmod(victim.parent, 0o555)
    run = cli("verify")
    assert run.code == 1 and "tree-mismatch" in run.out and "edited in place" in run.out
    assert cli("verify", "--repair").code == 0
    assert victim.read_bytes() == b"fp"
    assert hash_only(root / "store" / "trees" / tree).tree == tree


def test_edit_through_a_hard_link_corrupts_the_object_and_is_caught(three, cli, root):
    """The DVC failure mode: editing a linked checkout edits the cache. Permission bits prove nothing."""
    target = root / "models" / "m" / "current" / "big.bin"
    os.chmod(target, 0o644)  # a user who forces it
    with open(target, "r+b") as f:
        f.write(b"tampered")
    run = cli("verify", "--json")
    assert run.code == 1
    kinds = {p["kind"] for p in run.json()["problems"]}
    assert "corrupt-object" in kinds


def test_wrong_or_missing_link_is_regenerated(three, cli, root):
    link = root / "models" / "m" / "current"
    os.unlink(link)
    run = cli("verify")
    assert run.code == 1 and "link" in run.out and "is missing" in run.out
    assert cli("verify", "--repair").code == 0
    assert os.path.realpath(link) == str(gaia_cas.resolve("m", root=root).path)
    os.unlink(link)
    link.symlink_to(root / "store" / "trees" / three.manifest("m").find("1.0.0").tree)
    assert "points at" in cli("verify").out
    assert cli("verify", "--repair").code == 0
    assert cli("verify").code == 0


def test_removed_materialized_tree_is_not_a_problem_but_a_dangling_link_is(three, cli, root):
    from gaia_cas.materialize import remove_tree

    remove_tree(root / "store" / "trees" / three.manifest("m").find("1.0.0").tree)
    assert cli("verify").code == 0  # derived data: gc may remove it
    remove_tree(root / "store" / "trees" / three.manifest("m").find("1.2.0").tree)
    run = cli("verify")
    assert run.code == 1 and "dangles" in run.out
    assert cli("verify", "--repair").code == 0
    assert (root / "models" / "m" / "current" / "saved_model.pb").is_file()


def test_unreadable_tree_object_is_reported(three, cli):
    tree = three.manifest("m").find("1.0.0").tree
    writable(three.objects.path(tree)).write_bytes(b"\xc1 not msgpack")
    run = cli("verify", "--json")
    assert run.code == 1
    problem = [p for p in run.json()["problems"] if p["oid"] == tree]
    assert problem and problem[0]["versions"] == ["m 1.0.0"]
    assert cli("verify", "--repair").code == 0
    assert three.manifest("m").find("1.0.0").broken


def test_sample_is_deterministic_and_rotates_over_every_object():
    oids = [f"{i:08x}" + "0" * 24 for i in range(0, 2**32, 2**32 // 997)]
    day = date(2026, 11, 26).toordinal()
    first = {o for o in oids if in_sample(o, 10, day)}
    assert first == {o for o in oids if in_sample(o, 10, day)}  # same day, same sample
    assert 0.05 * len(oids) < len(first) < 0.15 * len(oids)
    covered = set()
    for offset in range(10):
        covered |= {o for o in oids if in_sample(o, 10, day + offset)}
    assert covered == set(oids)  # ten nights of 10% re-hash everything
    assert {o for o in oids if in_sample(o, 10, day + 1)} != first


def test_sample_option(three, cli):
    full = cli("verify", "--json").json()["checked_objects"]
    part = cli("verify", "--sample", "50", "--json").json()
    assert part["sample_percent"] == 50 and part["checked_objects"] <= full
    run = cli("verify", "--sample", "0")
    assert run.code == 1 and "--sample" in run.err


def test_redeploying_the_bytes_of_a_broken_current_version_restores_it(repo, root, tmp_path):
    src = make_savedmodel(tmp_path / "m")
    (src / "big.bin").write_bytes(b"B" * 100_000)
    first = repo.deploy("m", src)
    entries = {e.name: e for e in repo.trees.entries(first.hash)}
    obj = repo.objects.path(entries["big.bin"].oid)
    os.chmod(obj, 0o644)
    obj.write_bytes(b"garbage")
    assert repo.verify(repair=True).broken_versions == ["m 1.0.0"]
    result = repo.deploy("m", src)  # same bytes as the broken current: not "unchanged"
    assert not result.unchanged and result.version == "1.1.0"
    assert repo.verify(repair=True).ok
    assert gaia_cas.resolve("m", root=root).version == "1.1.0"
    assert not repo.manifest("m").find("1.0.0").broken  # its object is back: unmarked



def test_verify_of_one_model_isolates_a_corrupt_object_it_shares_with_another(repo, root, tmp_path):
    src = make_savedmodel(tmp_path / "s")
    repo.deploy("a", src)
    repo.deploy("b", src)  # the same tree: every object shared
    tree = repo.manifest("a").current_version().tree
    entries = {e.name: e for e in repo.trees.entries(tree)}
    obj = repo.objects.path(entries["saved_model.pb"].oid)
    os.chmod(obj, 0o644)
    obj.write_bytes(b"garbage")
    repo.verify("a", repair=True)
    assert repo.manifest("b").current_version().broken  # never served through b either
    assert not (root / "store" / "trees" / tree).exists()



def test_verify_repair_logs_what_it_did_even_for_links_only(repo, root, tmp_path, cli):
    repo.deploy("m", make_savedmodel(tmp_path / "s"))
    os.unlink(root / "models" / "m" / "current")
    assert cli("verify", "--repair", "--reason", "after the outage").code == 0
    line = [l for l in repo.logs(10) if "gaia_cas.verify" in l][-1]
    assert "link" in line and "regenerated" in line and "after the outage" in line
