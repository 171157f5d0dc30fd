"""The source of a deploy is read as it was scanned, from where it was scanned, and never becomes
part of the store: component-by-component opens (a folder swapped for a symlink mid-deploy
leaks nothing), stat-cache trust that a restored mtime cannot fool, no deploy of the store into
itself, `--consume` never keeping a foreign or half-handed-over inode as an object, and an
install that fails part way leaving the store exactly as it was.

Unprivileged cases run for real as ``nobody`` (see tests/test_hostile_input.py).
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import stat
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import assert_one_line_error, make_joblib, make_savedmodel, snapshot
from gaia_cas import ingest, objects, statcache
from gaia_cas.errors import GaiaCasError, SourceError
from gaia_cas.reader import resolve
from gaia_cas.repo import Repository
from test_hostile_input import NOBODY, as_nobody, chown_tree, cli_as_nobody, shared  # noqa: F401


def settle(path: Path) -> None:
    past = time.time() - 60
    targets = [path] if path.is_file() else [Path(d) / f for d, _, fs in os.walk(path) for f in fs]
    for target in targets:
        os.utime(target, (past, past))


def object_path(root: Path, oid: str) -> Path:
    return root / "store" / "objects" / oid[:2] / oid[2:]


def stored_blobs(root: Path) -> set[bytes]:
    found = set()
    for dirpath, _, files in os.walk(root / "store" / "objects"):
        for name in files:
            found.add(Path(dirpath, name).read_bytes())
    return found


def file_oids(repo: Repository, model: str) -> dict[str, str]:
    manifest = repo.manifest(model)
    tree = manifest.current_version().tree
    return {path: entry.oid for path, entry in repo.trees.walk(tree) if entry.kind == "file"}


# -- item 10: a restored mtime does not make a rewritten file "unchanged" --------------------

def _coarse_scan(monkeypatch, ctime_ns: int):
    """Scans see the timestamps of a filesystem with 1 s granularity on which every write of the
    test happens within the same tick: ctime is the same in each scan (it cannot be restored,
    but it cannot move within one tick either)."""
    real_scan = ingest.scan

    def coarse(st):
        return SimpleNamespace(st_dev=st.st_dev, st_ino=st.st_ino, st_size=st.st_size, st_mode=st.st_mode,
                               st_nlink=st.st_nlink, st_uid=st.st_uid,
                               st_mtime_ns=st.st_mtime_ns // 10**9 * 10**9, st_ctime_ns=ctime_ns)

    def scan(source):
        node = real_scan(source)
        stack = [node]
        while stack:
            item = stack.pop()
            if isinstance(item, ingest._Dir):
                stack.extend(item.children.values())
            else:
                item.stat = coarse(item.stat)
        return node

    monkeypatch.setattr(ingest, "scan", scan)


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_a_same_tick_rewrite_with_a_restored_mtime_is_deployed(repo, tmp_path, monkeypatch, kind):
    if kind == "file":
        source = make_joblib(tmp_path / "src" / "model.joblib", variant=1)
        target = source
    else:
        source = make_savedmodel(tmp_path / "src" / "saved_model", variant=1)
        target = source / "saved_model.pb"
    settle(source)  # an mtime well in the past: only the ctime says the file was just written
    old = os.stat(target)
    tick = time.time_ns() // 10**9 * 10**9
    _coarse_scan(monkeypatch, tick)
    monkeypatch.setattr(statcache.time, "time_ns", lambda: tick + 500_000_000)  # still in that tick
    first = repo.deploy("m", source)

    data = target.read_bytes()
    target.write_bytes(bytes([data[0] ^ 0xFF]) + data[1:])  # same size, other bytes
    os.utime(target, ns=(old.st_atime_ns, old.st_mtime_ns))  # touch -d / cp -p: the old mtime again
    second = repo.deploy("m", source)
    assert not second.unchanged and second.version == "1.1.0"
    assert second.hash != first.hash
    assert second.hash == ingest.hash_only(source).tree


def test_a_file_racily_clean_by_ctime_is_not_remembered(tmp_path):
    cache = statcache.StatCache(tmp_path / "statcache.msgpack")
    now = time.time_ns()
    st = SimpleNamespace(st_dev=1, st_ino=2, st_size=3, st_mtime_ns=now - 3600 * 10**9, st_ctime_ns=now)
    assert cache.remember("/x", st, "0" * 32) is False
    old = SimpleNamespace(st_dev=1, st_ino=2, st_size=3, st_mtime_ns=now - 3600 * 10**9,
                          st_ctime_ns=now - 3600 * 10**9)
    assert cache.remember("/x", old, "0" * 32) is True


# -- issue 12 item 3: the store is never deployed into itself ---------------------------------

@pytest.fixture
def deployed(repo, root, tmp_path):
    repo.deploy("m", make_savedmodel(tmp_path / "src" / "saved_model"))
    (root / "store" / "objects").mkdir(exist_ok=True)
    return repo


def _store_sources(root: Path) -> dict[str, Path]:
    return {"store": root / "store", "manifests": root / "manifests", "logs": root / "logs", "root": root,
            "objects": root / "store" / "objects", "materialized": resolve("m", root).path}


@pytest.mark.parametrize("which", ["store", "manifests", "logs", "root", "objects", "materialized"])
def test_plain_deploy_refuses_the_store_itself(cli, root, deployed, which):
    before = snapshot(root)
    source = _store_sources(root)[which]
    run = cli("deploy", "x", source)
    assert_one_line_error(run, "store itself")
    assert snapshot(root) == before


def test_deploy_dot_at_the_root_is_refused(root, deployed):
    before = snapshot(root)
    from conftest import run_launcher

    run = run_launcher("deploy", "x", ".", cwd=root, timeout=30)
    assert_one_line_error(run, "store itself")
    assert snapshot(root) == before


def test_the_store_reached_through_a_symlink_or_bind_path_is_refused(cli, root, deployed, tmp_path):
    """Compared by device and inode along the resolved path, not by spelling."""
    alias = tmp_path / "alias-of-root"
    alias.symlink_to(root)
    before = snapshot(root)
    for source in (alias / "store", alias / "manifests" / ".." / "store", tmp_path / "alias-of-root"):
        assert_one_line_error(cli("deploy", "x", source), "store itself")
    assert snapshot(root) == before


@pytest.mark.parametrize("command", ["add", "set"])
def test_model_source_inside_the_store_is_refused(cli, root, deployed, command):
    before = snapshot(root)
    name = "n" if command == "add" else "m"
    run = cli("model", command, name, "--source", root / "store")
    assert_one_line_error(run, "store itself")
    assert snapshot(root) == before


def test_a_folder_beside_the_store_deploys(repo, root, tmp_path):
    """The control: a source inside the root but outside store/, manifests/ and logs/ is fine."""
    source = make_savedmodel(root / "exports" / "saved_model")
    assert repo.deploy("m", source).version == "1.0.0"


def test_consume_refuses_the_store_with_the_same_check(repo, root, deployed, tmp_path):
    alias = tmp_path / "alias-of-root"
    alias.symlink_to(root)
    before = snapshot(root)
    for source in (alias / "manifests", root / "logs"):
        with pytest.raises(SourceError, match="store itself"):
            repo.deploy("x", source, consume=True)
    assert snapshot(root) == before


# -- also: an install that fails part way leaves the store as it was --------------------------

def _fail_install_after(monkeypatch, n: int):
    real_link = os.link
    placed = []

    def link(src, dst, *args, **kwargs):
        if "/store/objects/" in os.fspath(dst):
            if len(placed) >= n:
                raise OSError(errno.ENOSPC, "No space left on device", os.fspath(dst))
            placed.append(dst)
        return real_link(src, dst, *args, **kwargs)

    monkeypatch.setattr(objects.os, "link", link)
    return placed


@pytest.mark.parametrize("after", [1, 3, 6])
def test_enospc_mid_install_leaves_the_store_exactly_as_before(cli, root, tmp_path, monkeypatch, after):
    assert cli("deploy", "m", make_savedmodel(tmp_path / "a" / "saved_model", variant=1)).code == 0
    source = make_savedmodel(tmp_path / "b" / "saved_model", variant=2, variables_bytes=9000)
    (source / "extra").mkdir()
    for i in range(6):
        (source / "extra" / f"f{i}").write_bytes(os.urandom(100 + i))
    before = snapshot(root)
    placed = _fail_install_after(monkeypatch, after)
    run = cli("deploy", "m", source)
    assert len(placed) == after, "the install did not get that far: the test proves nothing"
    assert_one_line_error(run, "No space left on device")
    assert snapshot(root) == before
    monkeypatch.undo()
    assert cli("deploy", "m", source).code == 0  # and the next try succeeds
    assert cli("verify").code == 0


def test_a_failed_install_keeps_objects_that_existed_before(repo, root, tmp_path, monkeypatch):
    a = make_savedmodel(tmp_path / "a" / "saved_model", variant=1)
    repo.deploy("m", a)
    b = make_savedmodel(tmp_path / "b" / "saved_model", variant=2)  # shares most objects with a
    (b / "new.bin").write_bytes(os.urandom(3000))
    before = snapshot(root)
    _fail_install_after(monkeypatch, 1)
    with pytest.raises(GaiaCasError, match="No space left"):
        repo.deploy("m", b)
    assert snapshot(root) == before
    monkeypatch.undo()
    assert repo.verify().problems == []


# -- item 7: root's --consume copies a file another user owns ---------------------------------

def _try_rewrite(path: str) -> int:
    """As the file's owner would: make it writable again and rewrite it in place."""
    try:
        os.chmod(path, 0o644)
        with open(path, "r+b") as f:
            f.write(b"EVIL")
    except OSError:
        return 3
    return 0


def test_root_consuming_a_foreign_owned_file_copies_it(shared):
    root = shared / "root"
    repo = Repository.init(root)
    source = make_savedmodel(shared / "export" / "saved_model")
    chown_tree(shared / "export")
    inodes = {os.stat(p).st_ino for p in source.rglob("*") if p.is_file()}
    result = repo.deploy("m", source, consume=True)
    assert result.consumed["linked"] == 0
    oids = file_oids(repo, "m")
    for oid in oids.values():
        st = os.stat(object_path(root, oid))
        assert st.st_ino not in inodes and st.st_uid == os.geteuid()
    served = {rel: (resolve("m", root).path / rel).read_bytes() for rel in oids}
    pb = str(object_path(root, oids["saved_model.pb"]))
    assert as_nobody(lambda: _try_rewrite(pb), cwd=shared).code == 3  # the owner cannot reach it
    assert {rel: (resolve("m", root).path / rel).read_bytes() for rel in oids} == served
    assert repo.verify().problems == []
