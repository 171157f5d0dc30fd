"""Behaviours pinned after review: each test fails if its fix is undone."""

from __future__ import annotations

import os
import tarfile

from conftest import lock_held_elsewhere, make_savedmodel
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


def test_deploy_all_reports_each_failure_and_still_deploys_the_others(cli, tmp_path):
    good = make_savedmodel(tmp_path / "good")
    doomed = make_savedmodel(tmp_path / "doomed")
    assert cli("model", "add", "a", "--source", doomed).code == 0
    assert cli("model", "add", "b", "--source", good).code == 0
    import shutil

    shutil.rmtree(doomed)  # a's source is gone by the time the nightly deploy runs
    run = cli("deploy", "all", "--json")
    assert run.code == 1
    doc = run.json()
    assert [d["model"] for d in doc["deployed"]] == ["b"]
    assert doc["failed"][0]["model"] == "a" and "does not exist" in doc["failed"][0]["error"]
    assert run.err.strip() == f"gaia-cas: error: deploy of a failed: {doc['failed'][0]['error']}"


def test_cleanup_all_reports_a_locked_model_and_cleans_the_others(cli, repo, root, tmp_path):
    for model in ("a", "b"):
        src = tmp_path / f"src-{model}"
        for variant in range(3):
            make_savedmodel(src, variant)
            repo.deploy(model, src)
    with lock_held_elsewhere(root / "manifests" / "a.lock"):
        run = cli("--lock-timeout", "0.3", "cleanup", "all", "--keep", "1")
    assert run.code == 1 and "cleanup of a failed" in run.err and "a.lock" in run.err
    assert [v.version for v in repo.manifest("b").versions] == ["1.2.0"]
    assert len(repo.manifest("a").versions) == 3


def test_sync_links_regenerates_a_link_left_behind_by_a_crash(repo, root, tmp_path):
    src = tmp_path / "s"
    make_savedmodel(src, 0)
    first = repo.deploy("m", src)
    make_savedmodel(src, 1)
    repo.deploy("m", src)
    link = root / "models" / "m" / "current"
    os.unlink(link)
    link.symlink_to(os.path.relpath(root / "store" / "trees" / first.hash, link.parent))  # lagging behind
    assert repo.sync_links() == ["m"]
    assert os.path.realpath(link) == str(gaia_cas.resolve("m", root=root).path)
    assert repo.sync_links() == []


def test_a_commit_that_cannot_be_flushed_says_it_is_committed(repo, root, tmp_path, monkeypatch):
    from gaia_cas import atomic
    from gaia_cas.errors import StoreError

    src = tmp_path / "s"
    make_savedmodel(src, 0)
    repo.deploy("m", src)
    make_savedmodel(src, 1)
    real = atomic.fsync_dir

    def failing(path):
        if str(path).endswith("manifests"):
            raise OSError(5, "Input/output error")
        return real(path)

    monkeypatch.setattr(atomic, "fsync_dir", failing)
    try:
        repo.deploy("m", src)
        raise AssertionError("expected a StoreError")
    except StoreError as exc:
        assert "is committed" in str(exc) and "may not survive a power loss" in str(exc)
    monkeypatch.setattr(atomic, "fsync_dir", real)
    assert repo.manifest("m").current == "1.1.0"  # visible, and the link follows it
    assert os.path.realpath(root / "models" / "m" / "current") == str(gaia_cas.resolve("m", root=root).path)


def test_history_is_stored_as_a_stream_and_decoded_only_when_read(repo, root, tmp_path, cli):
    import msgpack

    from gaia_cas import manifest as mf
    from gaia_cas.errors import CorruptionError

    src = tmp_path / "s"
    for variant in range(3):
        make_savedmodel(src, variant)
        repo.deploy("m", src)
    path = root / "manifests" / "m.msgpack"
    doc = msgpack.unpackb(path.read_bytes(), raw=False)
    assert isinstance(doc["history"], bytes) and doc["event_fields"][:3] == ["generation", "at", "action"]
    decoded = mf.decode(path.read_bytes())
    assert decoded._history is None  # nothing decoded yet
    assert [e.generation for e in decoded.history] == [1, 2, 3]
    doc["history"] = doc["history"] + b"\xc1"  # a byte that is never valid msgpack
    os.chmod(path, 0o644)
    path.write_bytes(msgpack.packb(doc, use_bin_type=True))
    try:
        mf.decode(path.read_bytes()).history
        raise AssertionError("expected CorruptionError")
    except CorruptionError as exc:
        assert "history does not decode" in str(exc)
    run = cli("history", "m")
    assert run.code == 1 and run.err.startswith("gaia-cas: error:") and "history" in run.err


def test_moving_only_a_channel_link_is_a_change_and_is_logged(repo, root, tmp_path, cli):
    repo.deploy("m", make_savedmodel(tmp_path / "s"))
    assert cli("promote", "m", "1.0", "--to", "staging").code == 0
    run = cli("promote", "m", "1.0", "--to", "staging", "--link", "srv/staging", "--json")
    assert run.code == 0 and run.json()["unchanged"] is False
    assert (root / "srv" / "staging" / "saved_model.pb").is_file()
    assert any("link models/m/staging -> srv/staging" in line for line in repo.logs(10))


def test_verify_repair_logs_what_it_did_even_for_links_only(repo, root, tmp_path, cli):
    repo.deploy("m", make_savedmodel(tmp_path / "s"))
    os.unlink(root / "models" / "m" / "current")
    assert cli("verify", "--repair", "--reason", "after the outage").code == 0
    line = [l for l in repo.logs(10) if "gaia_cas.verify" in l][-1]
    assert "link" in line and "regenerated" in line and "after the outage" in line


def test_an_unreadable_timestamp_is_kept_by_every_age_rule(repo, tmp_path):
    from datetime import datetime, timedelta

    src = tmp_path / "s"
    for variant in range(3):
        make_savedmodel(src, variant)
        repo.deploy("m", src)
    with repo.manifests.edit("m") as manifest:
        from gaia_cas.manifest import record

        manifest.versions[0].created_at = "not a time"
        record(manifest, "model-set", version=None, before=manifest.current, at="x", user="t", host="t", reason=None)
    later = datetime.now().astimezone() + timedelta(days=10)
    plan = repo.plan_cleanup(["m"], keep=0, older_than="1d", now=later)[0]
    assert plan.remove == ["1.1.0"]  # 1.0.0's age is unknown: kept; 1.2.0 is current
