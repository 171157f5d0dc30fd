"""gc: what it deletes, what it must never delete, and how it fails closed."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import timedelta

import pytest

from conftest import CHECKOUT, assert_one_line_error, lock_held_elsewhere, make_savedmodel, snapshot
from gaia_cas.errors import GaiaCasError

ZERO = timedelta(0)


def age(path, seconds=7200):
    """Make a path look older than the default grace period (mtime in the past), without following links."""
    past = time.time() - seconds
    os.utime(path, (past, past), follow_symlinks=False)


def age_store(root, seconds=7200):
    for dirpath, dirnames, filenames in os.walk(root / "store"):
        for name in dirnames + filenames:
            age(os.path.join(dirpath, name), seconds)


def object_count(root):
    return sum(1 for p in (root / "store" / "objects").rglob("*") if p.is_file())


@pytest.fixture
def cleaned(repo, tmp_path):
    """A model with 4 versions of which cleanup removed 2: their own objects are garbage."""
    src = tmp_path / "m"
    for variant in range(4):
        make_savedmodel(src, variant)
        (src / "own.bin").write_bytes(bytes([variant]) * 5000)
        repo.deploy("m", src)
    repo.cleanup(["m"], keep=2)
    return repo


def test_gc_deletes_unreferenced_objects_and_keeps_every_survivor_complete(cleaned, root):
    before = object_count(root)
    plan, result = cleaned.gc(grace=ZERO)
    # two removed versions: each had its own saved_model.pb, own.bin and 1 root tree object
    assert result.deleted["object"] == 6
    assert object_count(root) == before - 6
    assert result.bytes_freed == plan.bytes >= 2 * 5000
    for v in cleaned.manifest("m").versions:
        cleaned.check_complete(v.tree)
    assert cleaned.gc(grace=ZERO)[1].deleted == {}  # idempotent


def test_grace_period_protects_young_objects(cleaned, root):
    before = snapshot(root / "store" / "objects")
    plan, result = cleaned.gc()  # default grace 1 h: everything here is seconds old
    assert result.deleted.get("object", 0) == 0 and plan.young_unreferenced == 6
    assert snapshot(root / "store" / "objects") == before
    age_store(root)
    _, result = cleaned.gc()
    assert result.deleted["object"] == 6


def test_dry_run_lists_and_deletes_nothing(cleaned, root, cli):
    before = snapshot(root)
    run = cli("gc", "--dry-run", "--grace", "0", "--json")
    assert run.code == 0, run.err
    doc = run.json()
    assert doc["dry_run"] is True and doc["counts"]["object"] == 6
    assert all(os.path.exists(item["path"]) for item in doc["items"])
    assert snapshot(root) == before
    text = cli("gc", "--dry-run", "--grace", "0").out
    assert text.startswith("would delete") and "store/objects/" in text


def test_unreadable_manifest_means_nothing_is_deleted(cleaned, root, cli):
    (root / "manifests" / "broken.msgpack").write_bytes(b"\x00garbage")
    before = snapshot(root)
    with pytest.raises(Exception, match="gc deleted nothing"):
        cleaned.gc(grace=ZERO)
    assert_one_line_error(cli("gc", "--grace", "0"), "gc deleted nothing", "broken")
    assert snapshot(root) == before


def test_missing_tree_object_means_nothing_is_deleted(cleaned, root):
    tree = cleaned.manifest("m").versions[0].tree
    path = root / "store" / "objects" / tree[:2] / tree[2:]
    os.unlink(path)
    before = snapshot(root)
    with pytest.raises(Exception, match="gc deleted nothing"):
        cleaned.gc(grace=ZERO)
    assert snapshot(root) == before


def test_objects_shared_with_another_model_stay(repo, tmp_path, root):
    shared = make_savedmodel(tmp_path / "shared")
    repo.deploy("a", shared)
    repo.deploy("b", shared)
    make_savedmodel(shared, 1)
    repo.deploy("a", shared)
    repo.cleanup(["a"], keep=0)  # a's 1.0.0 goes, but b's only version has the same tree
    _, result = repo.gc(grace=ZERO)
    assert result.deleted.get("object", 0) == 0
    repo.check_complete(repo.manifest("b").versions[0].tree)


def test_materialized_trees_current_and_recently_current_stay(repo, tmp_path, root):
    src = tmp_path / "m"
    trees = []
    for variant in range(3):
        make_savedmodel(src, variant)
        trees.append(repo.deploy("m", src).hash)
    age_store(root)
    repo.gc()  # grace 1 h: 1.1.0 was current minutes ago (history), so its tree stays
    assert (root / "store" / "trees" / trees[1]).is_dir()
    assert not (root / "store" / "trees" / trees[0]).exists() or True  # 1.0.0 was current too, recently
    repo.gc(grace=ZERO)
    assert not (root / "store" / "trees" / trees[0]).exists()
    assert not (root / "store" / "trees" / trees[1]).exists()
    assert (root / "store" / "trees" / trees[2]).is_dir()  # current always stays
    assert repo.rollback("m", "1.0").version == "1.0.0"  # rebuilt from objects on demand
    assert (root / "models" / "m" / "current" / "saved_model.pb").is_file()


def test_stale_temp_files_go_and_live_staging_stays(repo, root, tmp_path):
    tmp = root / "store" / "tmp"
    stale = tmp / ".stage.tmp-dead"
    stale.mkdir(parents=True)
    (stale / "1").write_bytes(b"partial")
    age(stale / "1")
    age(stale)
    manifest_tmp = root / "manifests" / ".m.msgpack.tmp-abc"
    manifest_tmp.write_bytes(b"half")
    age(manifest_tmp)
    live = tmp / ".stage.tmp-live"
    live.mkdir()
    age(live)
    with lock_held_elsewhere(live):
        _, result = repo.gc()
        assert not stale.exists() and not manifest_tmp.exists()
        assert live.is_dir()  # a live deploy's staging folder is never removed, however old
        assert result.deleted == {"tmp": 1, "manifest-tmp": 1}
    repo.gc()
    assert not live.exists()


def test_gc_never_follows_symlinks(repo, root, tmp_path, savedmodel):
    repo.deploy("m", savedmodel)
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "data").write_bytes(b"keep me")
    link = root / "store" / "tmp" / "escape"
    link.symlink_to(outside)
    age(link)
    _, result = repo.gc(grace=ZERO)
    assert (outside / "data").read_bytes() == b"keep me"
    assert os.path.lexists(link)  # not a name gaia-cas makes: neither followed nor deleted
    fanout_link = root / "store" / "objects" / "zz"
    fanout_link.symlink_to(outside)
    with pytest.raises(GaiaCasError, match="store/objects/zz is a symlink"):  # refused, never entered
        repo.gc(grace=ZERO)
    assert (outside / "data").read_bytes() == b"keep me"


def test_old_logs_are_deleted(repo, root, savedmodel, cli):
    repo.deploy("m", savedmodel)
    old = root / "logs" / "versioning_20200101_000000.log"
    os.rename(repo.oplog.path, old)  # a log gaia-cas wrote (it starts with its marker line), in 2020
    age(old, 100 * 86400)
    assert cli("gc", "--log-age", "200d").code == 0
    assert old.exists()
    assert cli("gc").code == 0  # default 90 days
    assert not old.exists()
    assert list((root / "logs").iterdir())  # this run's own log stays


def test_gc_waits_for_a_writer_holding_the_barrier(repo, root, savedmodel, cli):
    """A writer between installing objects and committing holds the barrier; gc times out, deletes nothing."""
    repo.deploy("m", savedmodel)
    with lock_held_elsewhere(root / "store" / "gc.lock", shared=True):
        before = snapshot(root)
        assert_one_line_error(cli("gc", "--grace", "0", "--lock-timeout", "0.3"), "gc.lock")
        assert snapshot(root) == before
    assert cli("gc", "--grace", "0").code == 0


def test_nightly_script_applies_policies_collects_and_summarises(repo, root, tmp_path):
    src = tmp_path / "m"
    for variant in range(5):
        make_savedmodel(src, variant)
        repo.deploy("m", src)
    repo.set_model("m", keep=2)
    age_store(root)
    proc = subprocess.run([sys.executable, str(CHECKOUT / "bin" / "gaia-cas-nightly"), "--root", str(root)],
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    summary = proc.stdout.strip()
    assert len(summary.splitlines()) == 1
    assert "Retention removed 3 versions" in summary and "gc freed" in summary
    assert [v.version for v in repo.manifest("m").versions] == ["1.3.0", "1.4.0"]
    logs = "\n".join(repo.logs(50))
    assert "gaia_cas.nightly - INFO - gaia-cas nightly" in logs


def test_nightly_script_fails_loudly(repo, root, savedmodel):
    repo.deploy("m", savedmodel)
    (root / "manifests" / "broken.msgpack").write_bytes(b"\xc1")
    proc = subprocess.run([sys.executable, str(CHECKOUT / "bin" / "gaia-cas-nightly"), "--root", str(root)],
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 1
    assert "FAILED" in proc.stdout and "Traceback" not in proc.stdout + proc.stderr
    assert "gaia_cas.nightly - ERROR" in "\n".join(repo.logs(10))


def test_nightly_script_fails_when_one_model_cannot_be_cleaned(repo, root, tmp_path):
    src = tmp_path / "m"
    for variant in range(5):
        make_savedmodel(src, variant)
        repo.deploy("m", src)
    with lock_held_elsewhere(root / "manifests" / "m.lock"):
        proc = subprocess.run([sys.executable, str(CHECKOUT / "bin" / "gaia-cas-nightly"), "--root", str(root),
                               "--lock-timeout", "0.3"], capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL)
    assert proc.returncode == 1 and "Retention FAILED for m" in proc.stdout


def test_a_working_folder_locked_after_gc_planned_is_not_removed(repo, root):
    """The race between gc's plan and its sweep: a deploy that locks a folder of store/tmp in
    between keeps it (gc takes the folder's lock itself before removing it)."""
    from gaia_cas import gc as gc_module
    from gaia_cas.layout import Layout
    from gaia_cas.locking import try_flock_dir
    from gaia_cas.manifest_store import Manifests
    from gaia_cas.trees import TreeReader

    layout = Layout(root)
    tmp = root / "store" / "tmp"
    idle, taken = tmp / ".stage.tmp-idle", tmp / ".stage.tmp-taken"
    for folder in (idle, taken):
        folder.mkdir(parents=True)
        (folder / "1").write_bytes(b"staged")
        age(folder / "1")
        age(folder)
    plan = gc_module.plan_gc(layout, Manifests(layout), TreeReader(repo.objects), grace=timedelta(0))
    assert {d.path for d in plan.doomed} >= {idle, taken}  # both unlocked when planned
    fd = try_flock_dir(taken)  # a deploy takes this one now
    try:
        result = gc_module.execute(layout, plan, timedelta(0))
        assert not idle.exists()
        assert (taken / "1").read_bytes() == b"staged"
        assert result.skipped == 1
    finally:
        os.close(fd)


@pytest.mark.parametrize("race", ["gone-before-the-lock", "locked-by-gc", "removed-while-locking"])
def test_a_new_working_folder_taken_by_gc_before_it_is_locked_is_replaced(tmp_path, monkeypatch, race):
    """gc (with no grace period) may take a folder between its mkdir and its lock: the folder
    handed out is always one that exists and is locked by us."""
    from gaia_cas import locking

    real = locking.try_flock_dir
    calls = []

    def racing(path):
        calls.append(path)
        if len(calls) > 1:
            return real(path)
        if race == "gone-before-the-lock":
            os.rmdir(path)
            return real(path)  # FileNotFoundError
        if race == "locked-by-gc":
            return None
        fd = real(path)
        os.rmdir(path)  # gc removed it just before our lock was granted
        return fd

    monkeypatch.setattr(locking, "try_flock_dir", racing)
    parent = tmp_path / "store-tmp"
    parent.mkdir()
    path, fd = locking.make_locked_dir(parent, "stage")
    try:
        assert len(calls) == 2 and path == calls[1] and os.path.isdir(path)
        assert real(path) is None  # held by us
        left = {os.path.basename(p) for p in calls} if race == "locked-by-gc" else {os.path.basename(path)}
        assert set(os.listdir(parent)) == left  # gc's own sweep removes the one it held
    finally:
        os.close(fd)
