"""Leases: a version held by a live process is a gc root for as long as the process lives."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CHECKOUT, run_launcher
from gaia_cas import leases
from gaia_cas.repo import Repository

HOLDER = """
import sys
sys.path.insert(0, sys.argv[1])
from gaia_cas import leases
from gaia_cas.repo import Repository
repo = Repository(sys.argv[2])
active = repo.resolve(sys.argv[3])
lease = leases.hold_version(repo, active.model, active.version, active.hash)
print(active.path, flush=True)
sys.stdin.readline()
lease.release()
print("released", flush=True)
sys.stdin.readline()
"""


def deploy(repo: Repository, tmp_path: Path, content: bytes, name: str = "model.bin") -> None:
    src = tmp_path / "src" / content.hex()[:16] / name
    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_bytes(content)
    repo.deploy("m", src)


def start_holder(root: Path) -> tuple[subprocess.Popen, Path]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(CHECKOUT), str(root), "m"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    assert line, "the holder did not start"
    return proc, Path(line)


def gc_now(root: Path):
    run = run_launcher("--root", root, "gc", "--grace", "0s", "--json", timeout=30)
    assert run.code == 0, run.err
    return run.json()


def replace_v1(repo: Repository, tmp_path: Path) -> None:
    deploy(repo, tmp_path, b"version two " * 100)
    plans = repo.cleanup(["m"], keep=1)
    assert [v for p in plans for v in p.removed] and len(repo.manifest("m").versions) == 1


@pytest.fixture
def v1(repo, tmp_path):
    deploy(repo, tmp_path, b"version one " * 100)
    active = repo.resolve("m")
    return active


def objects_of(repo: Repository, tree: str) -> list[Path]:
    return [repo.layout.object_path(tree)] + [repo.layout.object_path(e.oid) for _, e in repo.trees.walk(tree)]


def test_live_lease_keeps_a_cleaned_up_version_through_gc_until_released(repo, root, tmp_path, v1):
    files = objects_of(repo, v1.hash)
    holder, path = start_holder(root)
    try:
        assert path == v1.path
        replace_v1(repo, tmp_path)
        gc_now(root)
        assert path.read_bytes() == b"version one " * 100  # files intact and readable
        assert all(p.is_file() for p in files)
        assert len(os.listdir(leases.leases_dir(repo.layout))) == 1

        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "released"
        assert os.listdir(leases.leases_dir(repo.layout)) == []  # release removes the file
        gc_now(root)
        assert not repo.layout.tree_path(v1.hash).exists()
        assert not any(p.exists() for p in files)
    finally:
        holder.kill()
        holder.wait(timeout=10)


def test_the_lease_of_a_killed_holder_is_ignored_and_removed_by_gc(repo, root, tmp_path, v1):
    files = objects_of(repo, v1.hash)
    holder, path = start_holder(root)
    replace_v1(repo, tmp_path)
    gc_now(root)
    assert path.read_bytes() == b"version one " * 100
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=10)
    assert len(os.listdir(leases.leases_dir(repo.layout))) == 1  # left behind by the kill

    result = gc_now(root)
    assert result["deleted"].get("lease") == 1
    assert os.listdir(leases.leases_dir(repo.layout)) == []
    assert not repo.layout.tree_path(v1.hash).exists()
    assert not any(p.exists() for p in files)


def test_a_lease_protects_the_current_tree_folder_too_whatever_the_grace(repo, root, tmp_path, v1):
    # Not cleaned up, only replaced: without the lease, gc --grace 0s removes v1's folder.
    with leases.hold_version(repo, v1.model, v1.version, v1.hash):
        deploy(repo, tmp_path, b"version two " * 100)
        gc_now(root)
        assert v1.path.read_bytes() == b"version one " * 100
    gc_now(root)
    assert not repo.layout.tree_path(v1.hash).exists()
    assert repo.layout.object_path(v1.hash).exists()  # still a version of the manifest


def test_leasing_a_version_gc_already_took_fails_and_leaves_no_lease(repo, root, tmp_path, v1):
    replace_v1(repo, tmp_path)
    gc_now(root)
    with pytest.raises(leases.LeaseLostError, match="collected before it was leased"):
        leases.hold_version(repo, v1.model, v1.version, v1.hash)
    assert os.listdir(leases.leases_dir(repo.layout)) == []


def test_a_leased_version_whose_folder_gc_removed_is_rebuilt_under_the_lease(repo, root, tmp_path, v1):
    deploy(repo, tmp_path, b"version two " * 100)
    gc_now(root)  # v1 is still a version: objects stay, its folder goes
    assert not repo.layout.tree_path(v1.hash).exists()
    with leases.hold_version(repo, v1.model, v1.version, v1.hash):
        assert v1.path.read_bytes() == b"version one " * 100


def test_gc_made_between_lease_creation_and_the_check_is_waited_for(repo, root, tmp_path, v1, monkeypatch):
    """The interleaving the barrier exists for: a gc that read the leases before this one existed
    runs to its end before the holder checks the files, so the check sees what it left."""
    replace_v1(repo, tmp_path)
    real_acquire = leases.acquire

    def acquire_then_gc(*args):
        lease = real_acquire(*args)
        # A gc that planned before the lease: simulated by planning with the lease hidden.
        from gaia_cas import gc

        real_scan = leases.scan
        monkeypatch.setattr(leases, "scan", lambda layout: ([], [], []))
        try:
            repo.gc(grace=gc.timedelta(0))
        finally:
            monkeypatch.setattr(leases, "scan", real_scan)
        return lease

    monkeypatch.setattr(leases, "acquire", acquire_then_gc)
    with pytest.raises(leases.LeaseLostError):
        leases.hold_version(repo, v1.model, v1.version, v1.hash)


def test_a_symlinked_leases_folder_is_refused_by_holders_and_by_gc(repo, root, tmp_path, v1):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    leases.leases_dir(repo.layout).symlink_to(elsewhere)
    with pytest.raises(leases.StoreError, match="symlink"):
        leases.hold_version(repo, v1.model, v1.version, v1.hash)
    run = run_launcher("--root", root, "gc", "--grace", "0s", timeout=30)
    assert run.code == 1 and "gc deleted nothing" in run.err and "leases" in run.err
    assert os.listdir(elsewhere) == []


def test_a_locked_file_that_is_not_a_lease_names_nothing(repo, root, tmp_path, v1):
    from conftest import lock_held_elsewhere

    folder = leases.leases_dir(repo.layout)
    folder.mkdir()
    junk = folder / "junk"
    junk.write_bytes(b"not a lease")
    with lock_held_elsewhere(junk):
        deploy(repo, tmp_path, b"version two " * 100)
        result = gc_now(root)
        assert "lease" not in result["deleted"]
        assert junk.exists()
    assert not repo.layout.tree_path(v1.hash).exists()


def test_a_gc_removing_the_lease_temporary_before_it_is_locked_makes_the_holder_try_again(repo, v1, monkeypatch):
    """The two interleavings of gc with a lease being made: gc unlinked the temporary (the rename
    fails), or gc holds its lock to unlink it (the holder's lock is refused)."""
    import fcntl

    real_flock = fcntl.flock
    interleavings = ["gc unlinks it", "gc holds it"]

    def flock(fd, op):
        if interleavings and op == fcntl.LOCK_EX | fcntl.LOCK_NB:
            what = interleavings.pop(0)
            name = next(n for n in os.listdir(leases.leases_dir(repo.layout)) if ".tmp-" in n)
            path = leases.leases_dir(repo.layout) / name
            if what == "gc unlinks it":
                monkeypatch.setattr(fcntl, "flock", real_flock)  # gc's own locking is real
                assert leases.remove_dead(repo.layout, path)
                monkeypatch.setattr(fcntl, "flock", flock)
            else:
                raise BlockingIOError
        return real_flock(fd, op)

    monkeypatch.setattr(fcntl, "flock", flock)
    lease = leases.hold_version(repo, v1.model, v1.version, v1.hash)
    monkeypatch.setattr(fcntl, "flock", real_flock)
    try:
        assert interleavings == []
        assert os.listdir(leases.leases_dir(repo.layout)) == [lease.name]
        live, dead, _ = leases.scan(repo.layout)
        assert [x.tree for x in live] == [v1.hash] and dead == []
    finally:
        lease.release()
