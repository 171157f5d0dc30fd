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
from gaia_cas import deploy as deploy_verb
from gaia_cas import ingest, objects, statcache
from gaia_cas.errors import GaiaCasError, SourceError
from gaia_cas.reader import resolve
from gaia_cas.repo import Repository
from test_hostile_input import NOBODY, as_nobody, chown_tree, cli_as_nobody, flip_as_nobody, shared  # noqa: F401


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
            if isinstance(item, ingest.ScannedDir):
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


# -- item 1: a source folder swapped for a symlink mid-deploy leaks nothing --------------------

SECRET = b"db_password=hunter2;" * 50


@pytest.fixture
def planted(shared):
    """nobody's source ``user/src`` (sub/weights.bin is a decoy) and root's 0700 ``secret`` folder
    holding a file of the same name and size; root's own root, reachable by nobody."""
    secret = shared / "secret"
    secret.mkdir(mode=0o700)
    (secret / "weights.bin").write_bytes(SECRET)
    (secret / "other.bin").write_bytes(b"s" * 4000)
    mirror = shared / "secret-mirror"  # shaped like the source, for a swap of the source root itself
    mirror.mkdir(mode=0o700)
    (mirror / "sub").mkdir(parents=True)
    (mirror / "sub" / "weights.bin").write_bytes(SECRET)
    (mirror / "sub" / "other.bin").write_bytes(b"s" * 4000)
    (mirror / "top.bin").write_bytes(b"s" * 3000)
    src = shared / "user" / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "weights.bin").write_bytes(b"d" * len(SECRET))
    (src / "sub" / "other.bin").write_bytes(b"o" * 4000)
    (src / "top.bin").write_bytes(b"t" * 3000)
    chown_tree(shared / "user")
    root = shared / "root"
    Repository.init(root)
    return SimpleNamespace(root=root, src=src, secret=secret, shared=shared)


def _swap_to_symlink_as_nobody(planted) -> None:
    def swap():
        os.rename(planted.src / "sub", planted.src / "sub.real")
        os.symlink(planted.secret, planted.src / "sub")
        return 0

    run = as_nobody(swap, cwd=planted.shared)
    assert run.code == 0, run.err


def _after_scan(monkeypatch, action):
    real_scan = ingest.scan
    calls = []

    def scan(source):
        node = real_scan(source)
        calls.append(source)
        action()
        return node

    monkeypatch.setattr(ingest, "scan", scan)
    return calls


def _assert_nothing_leaked(planted) -> None:
    blobs = stored_blobs(planted.root)
    assert SECRET not in blobs and b"s" * 4000 not in blobs and b"s" * 3000 not in blobs


@pytest.mark.parametrize("threads", [1, 2])
def test_a_folder_swapped_for_a_symlink_after_the_scan_is_refused(cli, planted, monkeypatch, threads):
    if threads == 2:  # the two-thread staging path (store_ahead) opens files the same way
        monkeypatch.setattr(ingest, "STAGING_THREADS", 2)
        monkeypatch.setattr(ingest, "PARALLEL_MIN_BYTES", 0)
    before = snapshot(planted.root)
    calls = _after_scan(monkeypatch, lambda: _swap_to_symlink_as_nobody(planted))
    run = cli("deploy", "m", planted.src, root_dir=planted.root)
    assert calls, "the swap never happened: the test proves nothing"
    assert_one_line_error(run, "changed while it was being deployed")
    assert snapshot(planted.root) == before
    _assert_nothing_leaked(planted)


def test_a_folder_swapped_during_the_scan_and_back_is_refused(cli, planted, monkeypatch):
    """The scan itself went through the symlink (it listed and stat'ed the secret folder), then
    the real folder came back with same-named decoys: the inodes differ, nothing is read."""
    real_scan_dir = ingest.scan_dir
    swapped = []

    def scan_dir(path, depth, *args):
        if path == str(planted.src / "sub") and not swapped:
            swapped.append(path)
            _swap_to_symlink_as_nobody(planted)
            try:
                return real_scan_dir(path, depth, *args)
            finally:
                os.unlink(planted.src / "sub")
                os.rename(planted.src / "sub.real", planted.src / "sub")
        return real_scan_dir(path, depth, *args)

    monkeypatch.setattr(ingest, "scan_dir", scan_dir)
    before = snapshot(planted.root)
    run = cli("deploy", "m", planted.src, root_dir=planted.root)
    assert swapped, "the scan never reached sub: the test proves nothing"
    assert_one_line_error(run, "changed while it was being deployed (replaced by another file)")  # weights.bin
    assert snapshot(planted.root) == before
    _assert_nothing_leaked(planted)


def test_a_file_replaced_by_another_of_the_same_size_after_the_scan_is_refused(cli, root, tmp_path, monkeypatch):
    src = make_savedmodel(tmp_path / "src" / "saved_model")
    target = src / "variables" / "variables.index"

    def replace():
        size = target.stat().st_size
        other = target.with_name("other")
        other.write_bytes(b"x" * size)
        os.rename(other, target)

    before = snapshot(root)
    _after_scan(monkeypatch, replace)
    run = cli("deploy", "m", src)
    assert_one_line_error(run, "variables.index changed while it was being deployed (replaced by another file)")
    assert snapshot(root) == before


def test_the_source_root_swapped_after_the_scan_is_refused(cli, planted, monkeypatch):
    def swap_root():
        def swap():
            os.rename(planted.src, planted.src.with_name("src.real"))
            os.symlink(planted.shared / "secret-mirror", planted.src)
            return 0

        assert as_nobody(swap, cwd=planted.shared).code == 0

    before = snapshot(planted.root)
    _after_scan(monkeypatch, swap_root)
    run = cli("deploy", "m", planted.src, root_dir=planted.root)
    assert_one_line_error(run, "changed while it was being deployed")
    assert snapshot(planted.root) == before
    _assert_nothing_leaked(planted)


def test_a_consumed_folder_swapped_for_a_symlink_links_nothing_of_it(repo, root, tmp_path, monkeypatch):
    """--consume takes files by link(): the folder above the file is reached by descriptor too."""
    secret = tmp_path / "secret"
    secret.mkdir(mode=0o700)
    (secret / "weights.bin").write_bytes(SECRET)
    src = tmp_path / "export"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "weights.bin").write_bytes(b"d" * len(SECRET))

    def swap():
        os.rename(src / "sub", src / "sub.real")
        os.symlink(secret, src / "sub")

    real_plan = ingest.plan_consumption

    def plan(*args):
        consumption = real_plan(*args)
        swap()
        return consumption

    monkeypatch.setattr(ingest, "plan_consumption", plan)
    before = snapshot(root)
    with pytest.raises(SourceError, match="changed while it was being deployed"):
        repo.deploy("m", src, consume=True)
    assert snapshot(root) == before and os.stat(secret / "weights.bin").st_nlink == 1


def test_a_real_flipping_attacker_never_gets_a_secret_stored(planted):
    repo = Repository(planted.root, lock_timeout=5)
    pid = flip_as_nobody(planted.src / "sub", planted.secret, 0.002,
                         spare=planted.src.parent)  # beside the source, not in it
    outcomes = []
    try:
        for _ in range(40):
            try:
                repo.deploy("m", planted.src, force=True)
                outcomes.append("deployed")
                served = resolve("m", planted.root).path / "sub" / "weights.bin"
                # (a scan between two renames saw no sub at all: a smaller, honest tree)
                assert not served.exists() or served.read_bytes() == b"d" * len(SECRET)
            except GaiaCasError as exc:
                outcomes.append("refused")
                assert "\n" not in str(exc)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    _assert_nothing_leaked(planted)
    assert len(outcomes) == 40
    print(f"{outcomes.count('deployed')} deployed, {outcomes.count('refused')} refused")


def test_a_failed_install_keeps_an_object_another_writer_took_up_meanwhile(repo, root, tmp_path, monkeypatch):
    """Another deploy of the same bytes found the new object and refreshed it (it is about to
    commit a version that needs it): the failed install leaves that one in place."""
    source = tmp_path / "src"
    source.mkdir()
    for i in range(4):
        (source / f"f{i}").write_bytes(os.urandom(200 + i))
    real_link = os.link
    placed = []

    def link(src, dst, *args, **kwargs):
        if "/store/objects/" in os.fspath(dst):
            if len(placed) == 2:
                os.utime(placed[0], ns=(1, time.time_ns() + 10**9))  # the other writer's refresh
                raise OSError(errno.ENOSPC, "No space left on device", os.fspath(dst))
            real_link(src, dst, *args, **kwargs)
            placed.append(os.fspath(dst))
            return None
        return real_link(src, dst, *args, **kwargs)

    monkeypatch.setattr(objects.os, "link", link)
    with pytest.raises(GaiaCasError, match="No space left"):
        repo.deploy("m", source)
    assert os.path.exists(placed[0]) and not os.path.exists(placed[1])


# -- item 8: no object keeps a source file's inode after a failed or interrupted --consume -----

def _source_inodes(source: Path) -> set[tuple[int, int]]:
    return {(os.lstat(p).st_dev, os.lstat(p).st_ino) for p in source.rglob("*") if p.is_file()}


def _store_inodes(root: Path) -> set[tuple[int, int]]:
    found = set()
    for base in (root / "store" / "objects", root / "store" / "trees"):
        for dirpath, _, files in os.walk(base):
            for name in files:
                st = os.lstat(os.path.join(dirpath, name))
                found.add((st.st_dev, st.st_ino))
    return found


def _rewrite_in_place(source: Path) -> None:
    """What a training job does next: make the checkpoint writable and overwrite it in place."""
    for path in source.rglob("*"):
        if path.is_file():
            os.chmod(path, 0o644)
            with open(path, "r+b") as f:
                f.write(b"RETRAINED")


def _served(root: Path, model: str = "m") -> dict[str, bytes]:
    tree = resolve(model, root).path
    return {str(p.relative_to(tree)): p.read_bytes() for p in tree.rglob("*") if p.is_file()}


def test_a_consume_failing_at_its_commit_leaves_no_object_on_the_sources_inodes(repo, root, tmp_path, monkeypatch):
    repo.deploy("other", make_savedmodel(tmp_path / "other", variant=9))
    source = make_savedmodel(tmp_path / "export" / "saved_model", variant=3)
    before = snapshot(root)

    def refuse(*args, **kwargs):
        raise GaiaCasError("the commit failed")

    monkeypatch.setattr(deploy_verb, "commit", refuse)
    with pytest.raises(GaiaCasError, match="the commit failed"):
        repo.deploy("m", source, consume=True)
    monkeypatch.undo()
    assert not (_source_inodes(source) & _store_inodes(root))
    assert snapshot(root) == before  # the store exactly as before: no objects, no tree left
    # the retry, then the next retrain writing the checkpoint in place
    result = repo.deploy("m", source)
    served = _served(root)
    _rewrite_in_place(source)
    assert _served(root) == served
    assert repo.verify().problems == [] and result.version == "1.0.0"


def test_a_normal_deploy_does_not_trust_an_object_that_is_the_sources_inode(repo, root, tmp_path):
    """What a --consume killed after its install leaves: objects (and a materialized tree) that
    are the source's own inodes. The next plain deploy puts copies in their place."""
    source = make_savedmodel(tmp_path / "export" / "saved_model", variant=4)
    pid = os.fork()
    if pid == 0:  # a --consume killed right before its commit: no cleanup of any kind
        try:
            def die(*args, **kwargs):
                os.kill(os.getpid(), signal.SIGKILL)

            deploy_verb.commit = die
            Repository(root, lock_timeout=5).deploy("m", source, consume=True)
        finally:
            os._exit(7)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert _source_inodes(source) & _store_inodes(root), "the killed consume linked nothing: proves nothing"

    result = repo.deploy("m", source)
    assert result.version == "1.0.0"
    served_paths = [p for p in resolve("m", root).path.rglob("*") if p.is_file()]
    served_inodes = {(os.lstat(p).st_dev, os.lstat(p).st_ino) for p in served_paths}
    object_inodes = {(os.lstat(object_path(root, oid)).st_dev, os.lstat(object_path(root, oid)).st_ino)
                     for oid in file_oids(repo, "m").values()}
    assert not (_source_inodes(source) & (served_inodes | object_inodes))
    served = _served(root)
    _rewrite_in_place(source)
    assert _served(root) == served
    assert repo.verify().problems == []


def test_a_cache_hit_on_an_object_that_is_the_sources_inode_is_restaged(repo, root, tmp_path, monkeypatch):
    """The stat cache vouches for the source's oid without reading it; the object found under
    that oid is the source file itself: a copy is staged and put in its place."""
    source = make_savedmodel(tmp_path / "export" / "saved_model", variant=5)
    settle(source)
    real = time.time_ns
    monkeypatch.setattr(statcache, "time", SimpleNamespace(time_ns=lambda: real() + 60 * 10**9))
    repo.deploy("other", source)  # remembered in the stat cache
    oid = file_oids(repo, "other")["saved_model.pb"]
    obj = object_path(root, oid)
    # make the object the source's inode, as a killed --consume of this file would have
    os.chmod(obj.parent, 0o755)
    tree_copy = resolve("other", root).path / "saved_model.pb"
    os.unlink(obj)
    os.link(source / "saved_model.pb", obj)
    result = repo.deploy("m", source, force=True)
    st = os.lstat(object_path(root, file_oids(repo, "m")["saved_model.pb"]))
    assert (st.st_dev, st.st_ino) != (os.lstat(source / "saved_model.pb").st_dev, os.lstat(source / "saved_model.pb").st_ino)
    served = _served(root)
    _rewrite_in_place(source)
    assert _served(root) == served and result.version == "1.0.0"
    assert tree_copy.exists()


def test_a_failed_consume_leaves_an_object_another_writer_took_up_but_not_on_the_sources_inode(
        repo, root, tmp_path, monkeypatch):
    """Another deploy of the same bytes refreshed one of the linked objects meanwhile (it may be
    committing a version that needs it): the object stays, and the source file gets an inode of
    its own, so rewriting the source cannot reach the object."""
    source = make_savedmodel(tmp_path / "export" / "saved_model", variant=6)
    original = {str(p.relative_to(source)): p.read_bytes() for p in source.rglob("*") if p.is_file()}

    def refuse(self, request, built, *args, **kwargs):
        oid = next(e.oid for _, e in self.trees.walk(built.tree) if e.name == "saved_model.pb")
        os.utime(object_path(root, oid), ns=(1, time.time_ns() + 10**9))  # the other writer's refresh
        raise GaiaCasError("the commit failed")

    monkeypatch.setattr(deploy_verb, "commit", refuse)
    with pytest.raises(GaiaCasError, match="the commit failed"):
        repo.deploy("m", source, consume=True)
    assert not (_source_inodes(source) & _store_inodes(root))
    kept = [p for p in (root / "store" / "objects").rglob("*") if p.is_file()]
    assert [p.read_bytes() for p in kept] == [original["saved_model.pb"]]
    assert {str(p.relative_to(source)): p.read_bytes() for p in source.rglob("*") if p.is_file()} == original
    assert not [p for p in source.rglob("*") if "gaia-cas-copy" in p.name]
