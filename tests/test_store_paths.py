"""The store never follows a symlink among its own paths (issue 13 items 3 and 4, and the
"also" on init's folders): a symlinked store folder is refused by gc and by writers, gc sweeps
only names gaia-cas makes, and locks, the gc barrier, manifests, the stat cache and the
operation log are opened with O_NOFOLLOW (and O_NONBLOCK plus a regular-file check)."""

from __future__ import annotations

import os
import shutil
import time
from datetime import timedelta
from pathlib import Path

import pytest

import gaia_cas
from conftest import assert_one_line_error, make_savedmodel, snapshot
from gaia_cas.errors import GaiaCasError
from gaia_cas.repo import Repository


def _aged(path: Path, seconds: int = 86400 * 400) -> None:
    past = time.time() - seconds
    os.utime(path, (past, past), follow_symlinks=False)


@pytest.fixture
def scratch(tmp_path) -> Path:
    """Another project's folder on a scratch disk: old files, some named like gaia-cas's own."""
    path = tmp_path / "scratch"
    path.mkdir()
    for name in ("results.csv", ".stage.tmp-0123456789ab", "ab"):
        (path / name).write_bytes(b"another project's data")
        _aged(path / name)
    _aged(path)
    return path


def _scratch_listing(path: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def _move_out(root: Path, relative: str, scratch: Path) -> None:
    """What the operator did: move a store folder to the scratch disk and leave a symlink."""
    real = root / relative
    target = scratch / ("moved-" + real.name)
    shutil.move(str(real), str(target))
    os.symlink(target, real)


@pytest.fixture
def deployed(cli, root, tmp_path):
    assert cli("deploy", "m", make_savedmodel(tmp_path / "a" / "saved_model", variant=1)).code == 0
    assert cli("deploy", "m", make_savedmodel(tmp_path / "b" / "saved_model", variant=2)).code == 0
    return tmp_path


def _a_shard(root: Path) -> str:
    return "store/objects/" + sorted(os.listdir(root / "store" / "objects"))[0]


@pytest.mark.parametrize("folder", ["store/tmp", "store/objects", "store/trees", "shard"])
def test_gc_refuses_a_symlinked_store_folder_and_deletes_nothing(cli, root, deployed, scratch, folder):
    if folder == "store/tmp":
        shutil.rmtree(root / "store" / "tmp")
        os.symlink(scratch, root / "store" / "tmp")  # staging moved to the scratch disk itself
        relative = "store/tmp"
    else:
        relative = _a_shard(root) if folder == "shard" else folder
        _move_out(root, relative, scratch)
    before_scratch = {p: p.read_bytes() for p in scratch.rglob("*") if p.is_file()}
    before = snapshot(root)
    run = cli("gc", "--grace", "0s", "--log-age", "0s")
    assert_one_line_error(run, f"{relative} is a symlink", "never follows a symlink under store/")
    assert {p: p.read_bytes() for p in scratch.rglob("*") if p.is_file()} == before_scratch
    assert snapshot(root) == before


@pytest.mark.parametrize("folder", ["store/tmp", "store/objects", "shard"])
def test_writers_refuse_a_symlinked_store_folder(cli, root, deployed, scratch, folder):
    if folder == "store/tmp":
        shutil.rmtree(root / "store" / "tmp")
        os.symlink(scratch, root / "store" / "tmp")
        relative = "store/tmp"
    else:
        relative = _a_shard(root) if folder == "shard" else folder
        _move_out(root, relative, scratch)
    before_scratch = {p: p.read_bytes() for p in scratch.rglob("*") if p.is_file()}
    before = snapshot(root)
    run = cli("deploy", "m", make_savedmodel(deployed / "c" / "saved_model", variant=3))
    assert_one_line_error(run, f"{relative} is a symlink")
    assert {p: p.read_bytes() for p in scratch.rglob("*") if p.is_file()} == before_scratch
    assert snapshot(root) == before


def test_gc_sweeps_only_the_names_gaia_cas_makes_in_store_tmp(repo, root, deployed):
    tmp = root / "store" / "tmp"
    notes = tmp / "notes.txt"  # an operator's file: not a name gaia-cas makes
    notes.write_bytes(b"mine")
    folder = tmp / "keep-me"
    folder.mkdir()
    (folder / "data").write_bytes(b"mine too")
    stale = tmp / ".stage.tmp-0123456789ab"  # an interrupted deploy's staging folder
    stale.mkdir()
    (stale / "x").write_bytes(b"half a deploy")
    for path in (notes, folder / "data", folder, stale / "x", stale):
        _aged(path)
    plan, result = repo.gc(grace=timedelta(0))
    assert not stale.exists()
    assert notes.read_bytes() == b"mine" and (folder / "data").read_bytes() == b"mine too"
    assert "tmp/notes.txt" in plan.ignored and "tmp/keep-me" in plan.ignored


# -- the store's own files, never through a symlink (item 4) ----------------------------------

@pytest.mark.parametrize("planted", ["manifests/m.lock", "store/gc.intent", "store/gc.lock"])
def test_a_planted_lock_or_barrier_symlink_creates_nothing_outside(cli, root, deployed, tmp_path, planted):
    outside = tmp_path / "outside"
    outside.mkdir()
    path = root / planted
    if os.path.lexists(path):
        os.unlink(path)
    os.symlink(outside / "created-by-gaia-cas", path)
    before = snapshot(root)
    assert_one_line_error(cli("model", "set", "m", "--meta", "owner=vision"), "symlink")
    assert os.listdir(outside) == []
    assert snapshot(root) == before
    run = cli("deploy", "m", make_savedmodel(deployed / "c" / "saved_model", variant=3))
    assert_one_line_error(run, "symlink")
    assert os.listdir(outside) == []
    if planted != "manifests/m.lock":  # the barrier comes before any object is installed
        assert snapshot(root) == before
    run = cli("gc", "--grace", "0s")  # gc takes the barrier (refused), never the model lock
    assert run.code == (0 if planted == "manifests/m.lock" else 1) and "Traceback" not in run.err, run
    assert os.listdir(outside) == []


@pytest.mark.parametrize("kind", ["symlink-to-fifo", "fifo"])
def test_a_manifest_replaced_by_a_fifo_never_hangs_a_reader(cli, root, deployed, tmp_path, no_hang, kind):
    manifest = root / "manifests" / "m.msgpack"
    os.unlink(manifest)
    if kind == "fifo":
        os.mkfifo(manifest)
    else:
        fifo = tmp_path / "fifo"
        os.mkfifo(fifo)
        os.symlink(fifo, manifest)
    with pytest.raises(GaiaCasError, match="m.msgpack"):
        gaia_cas.resolve("m", root=root)
    assert_one_line_error(cli("list", "m"), "m.msgpack")
    assert_one_line_error(cli("gc"), "m.msgpack")


def test_a_manifest_symlinked_to_another_file_is_not_read(cli, root, deployed, tmp_path):
    manifest = root / "manifests" / "m.msgpack"
    copy = tmp_path / "elsewhere.msgpack"
    shutil.copy(manifest, copy)
    os.unlink(manifest)
    os.symlink(copy, manifest)
    assert_one_line_error(cli("list", "m"), "symlink")


@pytest.mark.parametrize("which", ["statcache.msgpack", "statcache-trees.msgpack"])
def test_a_stat_cache_replaced_by_a_fifo_is_ignored_not_waited_on(repo, root, deployed, tmp_path, no_hang, which):
    cache = root / "store" / which
    if os.path.lexists(cache):
        os.unlink(cache)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    os.symlink(fifo, cache)
    result = repo.deploy("m", make_savedmodel(deployed / "c" / "saved_model", variant=3))
    assert result.version == "1.2.0"


def test_a_planted_log_symlink_writes_nothing_outside(repo, root, deployed, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    now = time.time()
    for offset in range(0, 6):  # the log this process will open, whichever second it starts in
        name = time.strftime("versioning_%Y%m%d_%H%M%S.log", time.localtime(now + offset))
        path = root / "logs" / name
        if os.path.lexists(path):
            os.unlink(path)
        os.symlink(outside / name, path)
    fresh = Repository(root, lock_timeout=5)
    fresh.deploy("m", make_savedmodel(deployed / "c" / "saved_model", variant=3), reason="log me")
    assert os.listdir(outside) == []
    assert fresh.oplog.error is not None and "symlink" in fresh.oplog.error


# -- durability of init's folders ("also") ------------------------------------------------------

def test_init_fsyncs_the_parent_of_every_folder_it_makes(tmp_path, monkeypatch):
    synced = set()
    real = os.fsync

    def recording(fd):
        st = os.fstat(fd)
        synced.add((st.st_dev, st.st_ino))
        return real(fd)

    monkeypatch.setattr(os, "fsync", recording)
    root = tmp_path / "srv" / "gaia"
    Repository.init(root)
    parents = [tmp_path, tmp_path / "srv", root, root / "store"]
    for parent in parents:
        st = os.stat(parent)
        assert (st.st_dev, st.st_ino) in synced, f"{parent} was not fsynced after a folder was made in it"


def test_resolve_never_rebuilds_a_tree_through_a_symlinked_store_tmp(root, deployed, scratch):
    manifest = Repository(root).manifest("m")
    tree = root / "store" / "trees" / manifest.current_version().tree
    os.chmod(tree, 0o755)
    shutil.rmtree(tree)  # derived data gc removed: resolve() would rebuild it in store/tmp
    shutil.rmtree(root / "store" / "tmp")
    os.symlink(scratch, root / "store" / "tmp")
    before = _scratch_listing(scratch)
    with pytest.raises(GaiaCasError, match="never follows a symlink under store/"):
        gaia_cas.resolve("m", root=root)
    assert _scratch_listing(scratch) == before
    assert not tree.exists()


def test_a_shard_swapped_for_a_symlink_between_plan_and_sweep_is_not_entered(repo, root, deployed, scratch,
                                                                             monkeypatch):
    """Interleaving: gc has planned to delete unreferenced objects; the shard holding one is then
    moved to the scratch disk and replaced by a symlink. The sweep must not delete through it."""
    from gaia_cas import gc

    repo.cleanup(["m"], keep=1)  # 1.0.0 goes: its own objects become garbage
    for dirpath, dirnames, filenames in os.walk(root / "store"):
        for name in dirnames + filenames:
            _aged(Path(dirpath) / name)
    real_execute = gc.execute
    moved = {}

    def swap_then_execute(layout, plan, grace):
        doomed = sorted(d.path for d in plan.doomed if d.kind == "object")
        assert doomed
        shard = doomed[0].parent
        _move_out(root, os.path.relpath(shard, root), scratch)
        moved.update({p.name: p.read_bytes() for p in (scratch / ("moved-" + shard.name)).iterdir()})
        return real_execute(layout, plan, grace)

    monkeypatch.setattr(gc, "execute", swap_then_execute)
    with pytest.raises(GaiaCasError, match="is a symlink"):
        repo.gc(grace=timedelta(0))
    assert moved
    shard_copy = next(p for p in scratch.iterdir() if p.name.startswith("moved-"))
    assert {p.name: p.read_bytes() for p in shard_copy.iterdir()} == moved


def test_a_fifo_among_the_logs_never_hangs_logs_or_gc(cli, root, deployed, no_hang):
    fifo = root / "logs" / "versioning_20200101_000000.log"
    os.mkfifo(fifo)
    _aged(fifo)
    run = cli("logs", "-n", "5")
    assert run.code == 0 and "deployed m 1.1.0" in run.out, run
    assert cli("gc", "--log-age", "1d").code == 0
    assert os.path.exists(fifo)  # not a file gaia-cas wrote: left alone
