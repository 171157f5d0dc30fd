"""Behaviours pinned after review: each test fails if its fix is undone."""

from __future__ import annotations

import os
import tarfile

from conftest import make_savedmodel
import gaia_cas


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


def test_export_of_files_with_equal_content_imports_again(repo, tmp_path, cli):
    src = make_savedmodel(tmp_path / "m")
    (src / "a.txt").write_bytes(b"same")
    (src / "b.txt").write_bytes(b"same")  # one object, two hard links in the materialized tree
    repo.deploy("m", src)
    out = tmp_path / "m.tar"
    assert cli("export", "m", "-o", out).code == 0
    with tarfile.open(out) as tar:
        assert not any(m.islnk() or m.issym() for m in tar.getmembers())
    run = cli("import", out, "copy", "--json")
    assert run.code == 0, run.err
    assert run.json()["hash"] == repo.manifest("m").current_version().tree


def test_model_add_leaves_a_link_it_does_not_own(repo, root, tmp_path):
    legacy = tmp_path / "legacy_current"
    legacy.mkdir()
    link = root / "api" / "current"
    link.parent.mkdir()
    link.symlink_to(legacy)
    repo.add_model("ssd", link="api/current")
    assert os.readlink(link) == str(legacy)  # servers following it keep working until a deploy
    repo.deploy("ssd", make_savedmodel(tmp_path / "s"))
    assert (link / "saved_model.pb").is_file()


def test_keep_within_empty_clears_the_policy(repo, tmp_path, cli):
    repo.deploy("m", make_savedmodel(tmp_path / "s"))
    assert cli("model", "set", "m", "--keep", "2", "--keep-within", "30d").code == 0
    assert repo.manifest("m").config.retention == {"keep": 2, "keep_within": "30d"}
    assert cli("model", "set", "m", "--keep-within", "").code == 0
    assert repo.manifest("m").config.retention == {"keep": 2, "keep_within": None}


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


def test_importing_an_archive_leaves_no_stat_cache_entries(repo, root, tmp_path, cli):
    repo.deploy("m", make_savedmodel(tmp_path / "s"))
    out = tmp_path / "m.tar"
    cli("export", "m", "-o", out)
    cache = root / "store" / "statcache.msgpack"
    before = cache.read_bytes() if cache.exists() else b""
    assert cli("import", out, "copy").code == 0
    after = cache.read_bytes() if cache.exists() else b""
    assert after == before
