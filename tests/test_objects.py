"""The object store (gaia_cas/objects.py, ingest.py); tree objects are in test_trees.py, a full disk
in test_disk_full.py.

Content is stored once under ``store/objects/<oid[:2]>/<oid[2:]>``, read-only, named by the
xxh3-128 of its bytes; trees are canonical msgpack, validated entry by entry when read back; an
ingest that fails -- bad source, source changing under it, full disk -- leaves the store as it was.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest
import xxhash

from conftest import make_joblib, make_savedmodel, snapshot
from gaia_cas import ingest
from gaia_cas.errors import CorruptionError, GaiaCasError, SourceError, StoreError
from gaia_cas.layout import Layout
from gaia_cas.objects import CHUNK, ObjectStore, hash_bytes, hash_file, hash_stream
from gaia_cas.trees import DIR, FILE, Entry, encode_tree

from store_helpers import DATA_MOUNT, DISK, fake_root, objects_under, rand_bytes, tmp_leftovers, tree_oids, write, xxh


# -- stored once ------------------------------------------------------------------------------

def test_identical_files_within_one_version_are_stored_once(repo, tmp_path):
    x, y = rand_bytes(5000, 1), rand_bytes(7000, 2)
    src = tmp_path / "src" / "model"
    write(src / "a.bin", x)
    write(src / "sub" / "b.bin", x)
    write(src / "sub" / "c.bin", y)
    write(src / "d.bin", y)
    write(src / "other" / "e.bin", x)
    write(src / "other" / "f.bin", y)

    result = repo.deploy("m", src)

    objects = objects_under(repo.root)
    root_tree = xxh(encode_tree([
        Entry("a.bin", FILE, xxh(x), len(x)), Entry("d.bin", FILE, xxh(y), len(y)),
        Entry("other", DIR, xxh(encode_tree([Entry("e.bin", FILE, xxh(x), len(x)),
                                              Entry("f.bin", FILE, xxh(y), len(y))])), len(x) + len(y)),
        Entry("sub", DIR, xxh(encode_tree([Entry("b.bin", FILE, xxh(x), len(x)),
                                            Entry("c.bin", FILE, xxh(y), len(y))])), len(x) + len(y)),
    ]))
    assert result.hash == root_tree
    # Two file contents + root tree + two subtrees (the subtrees differ only by names).
    assert len(objects) == 5
    assert xxh(x) in objects and xxh(y) in objects
    assert result.new_objects == 5
    assert result.file_count == 6
    assert result.size_bytes == 3 * (len(x) + len(y))


def test_identical_subtrees_within_one_version_are_stored_once(repo, tmp_path):
    src = tmp_path / "src" / "model"
    for shard in ("shard0", "shard1", "shard2"):
        write(src / shard / "weights.bin", b"same weights")
        write(src / shard / "config.json", b"{}")
    result = repo.deploy("m", src)
    # One weights object, one config object, one shard tree, one root tree.
    assert len(objects_under(repo.root)) == 4
    assert result.new_objects == 4


def test_unchanged_content_across_versions_is_stored_once(repo, tmp_path):
    v1 = make_savedmodel(tmp_path / "v1" / "saved_model", variant=0, variables_bytes=200_000)
    r1 = repo.deploy("ssd", v1)
    after_v1 = objects_under(repo.root)
    assert set(after_v1) == tree_oids(repo, r1.hash)

    # v2 changes saved_model.pb only: one new file object, one new root tree; variables/ reused.
    v2 = make_savedmodel(tmp_path / "v2" / "saved_model", variant=1, variables_bytes=200_000)
    r2 = repo.deploy("ssd", v2)
    after_v2 = objects_under(repo.root)
    assert r2.version != r1.version and r2.hash != r1.hash
    assert set(after_v2) - set(after_v1) == {r2.hash, xxh((v2 / "saved_model.pb").read_bytes())}
    assert r2.new_objects == 2
    assert set(after_v2) == tree_oids(repo, r1.hash) | tree_oids(repo, r2.hash)

    # Redeploying v1's bytes as v3 adds nothing at all.
    r3 = repo.deploy("ssd", v1, force=True)
    assert r3.hash == r1.hash
    assert r3.new_objects == 0
    assert objects_under(repo.root) == after_v2


def test_identical_content_across_two_models_is_stored_once(repo, tmp_path, savedmodel):
    ra = repo.deploy("ssd", savedmodel)
    before = objects_under(repo.root)
    rb = repo.deploy("ssd-copy", savedmodel)
    assert rb.hash == ra.hash
    assert rb.new_objects == 0
    assert objects_under(repo.root) == before

    # Same bytes under another file name: the file object is shared, only the one-entry tree is new.
    j1 = make_joblib(tmp_path / "a" / "model_catboost_best.joblib")
    j2 = write(tmp_path / "b" / "renamed.joblib", j1.read_bytes())
    r1 = repo.deploy("cat", j1)
    r2 = repo.deploy("cat2", j2)
    assert r1.hash != r2.hash
    assert r2.new_objects == 1
    assert set(objects_under(repo.root)) - set(before) == {xxh(j1.read_bytes()), r1.hash, r2.hash}


def test_materialized_versions_hard_link_the_objects(repo, savedmodel):
    result = repo.deploy("ssd", savedmodel)
    tree_dir = repo.root / "store" / "trees" / result.hash
    for rel, entry in repo.trees.walk(result.hash):
        if entry.kind != FILE:
            continue
        checked_out = os.stat(tree_dir / rel)
        stored = os.stat(repo.objects.path(entry.oid))
        assert (checked_out.st_dev, checked_out.st_ino) == (stored.st_dev, stored.st_ino)
        assert stat.S_IMODE(checked_out.st_mode) == 0o444


# -- naming, mode, hashing --------------------------------------------------------------------

def test_objects_are_read_only_and_named_by_their_xxh3_128(repo, tmp_path, savedmodel, joblib_file):
    repo.deploy("ssd", savedmodel)
    repo.deploy("catboost", joblib_file)
    objects = objects_under(repo.root)
    assert objects
    for oid, path in objects.items():
        rel = path.relative_to(repo.root / "store" / "objects")
        assert len(rel.parts) == 2 and len(rel.parts[0]) == 2 and len(rel.parts[1]) == 30, rel
        assert len(oid) == 32 and all(c in "0123456789abcdef" for c in oid), oid
        data = path.read_bytes()
        assert xxhash.xxh3_128_hexdigest(data) == oid, path
        assert hash_bytes(data) == oid
        st = os.lstat(path)
        assert stat.S_ISREG(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o444, oct(st.st_mode)
        assert repo.objects.path(oid) == path
    # And every source file is there under the hash of its bytes.
    for source in [*savedmodel.rglob("*"), joblib_file]:
        if source.is_file():
            assert xxh(source.read_bytes()) in objects, source


def test_object_path_rejects_non_oids(repo):
    for bad in ("../../etc/passwd", "ABCDEF0123456789ABCDEF0123456789", "0" * 31, "0" * 33, "", "g" * 32):
        with pytest.raises(CorruptionError):
            repo.objects.path(bad)


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 3 * CHUNK + CHUNK // 2])
def test_file_sizes_around_the_chunk_hash_and_round_trip(repo, tmp_path, size):
    data = rand_bytes(size, size)
    path = write(tmp_path / "src" / "weights.bin", data)
    oid = xxh(data)

    assert hash_file(path) == (oid, size)
    result = repo.deploy("big", path)
    assert result.size_bytes == size

    (entry,) = repo.trees.entries(result.hash)
    assert entry == Entry("weights.bin", FILE, oid, size)
    stored = repo.objects.path(oid)
    assert stored.read_bytes() == data
    assert Path(result.path).read_bytes() == data
    assert (repo.root / "models" / "big" / "current").read_bytes() == data
    assert repo.manifest("big").versions[-1].size_bytes == size


class _Trickle:
    """A raw stream handing out at most ``step`` bytes per read, like a pipe or a network mount."""

    def __init__(self, data: bytes, step: int):
        self.data = memoryview(data)
        self.pos = 0
        self.step = step

    def readinto(self, buffer) -> int:
        n = min(self.step, len(buffer), len(self.data) - self.pos)
        buffer[:n] = self.data[self.pos:self.pos + n]
        self.pos += n
        return n


@pytest.mark.parametrize("step", [1, 4093, CHUNK - 7, CHUNK])
def test_short_reads_hash_and_store_correctly(repo, step):
    data = rand_bytes(2 * CHUNK + 12345, 7) if step > 1 else rand_bytes(10_000, 7)
    oid = xxh(data)
    assert hash_stream(_Trickle(data, step)) == (oid, len(data))
    with repo.objects.staging() as stage:
        assert stage.add_stream(_Trickle(data, step)) == (oid, len(data))
        assert stage.install() == 1
    assert repo.objects.path(oid).read_bytes() == data
    assert tmp_leftovers(repo.root) == []


def test_staging_discarded_without_install_writes_nothing(repo):
    before = snapshot(repo.root)
    with repo.objects.staging() as stage:
        stage.add_bytes(b"never installed")
        stage.add_stream(_Trickle(rand_bytes(3 * CHUNK, 3), CHUNK))
        assert os.listdir(stage.dir)  # really staged
    assert snapshot(repo.root) == before


# -- failures leave the store as it was --------------------------------------------------------

def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _symlink(path: Path) -> None:
    os.symlink("/etc/hostname", path)


def _symlink_to_dir(path: Path) -> None:
    os.symlink(path.parent, path)


@pytest.mark.parametrize("make_bad", [_fifo, _symlink, _symlink_to_dir], ids=["fifo", "symlink", "symlink-dir"])
@pytest.mark.parametrize("where", ["top", "nested"])
def test_scan_rejects_special_files_before_writing_anything(repo, tmp_path, savedmodel, make_bad, where, no_hang):
    repo.deploy("ssd", savedmodel)  # a store with content already in it
    src = make_savedmodel(tmp_path / "v2" / "saved_model", variant=5)
    write(src / "new_weights.bin", rand_bytes(3 * CHUNK, 5))
    make_bad(src / "bad" if where == "top" else src / "variables" / "bad")
    before = snapshot(repo.root)
    with pytest.raises(SourceError) as info:
        repo.deploy("ssd", src)
    assert "bad" in str(info.value)
    assert snapshot(repo.root) == before
    assert tmp_leftovers(repo.root) == []


def _swap_to_symlink(path: str) -> None:
    os.unlink(path)
    os.symlink("/etc/hostname", path)


def _swap_to_fifo(path: str) -> None:
    os.unlink(path)
    os.mkfifo(path)


def _vanish(path: str) -> None:
    os.unlink(path)


def _grow(path: str) -> None:
    with open(path, "ab") as f:
        f.write(b"appended after the scan")


def _shrink(path: str) -> None:
    os.truncate(path, 10)


MUTATIONS = {"symlink": _swap_to_symlink, "fifo": _swap_to_fifo, "vanished": _vanish,
             "grown": _grow, "shrunk": _shrink}


class _FailingReader:
    """Reads one chunk of the real file, then fails like a dying disk or a dropped NFS mount."""

    def __init__(self, f):
        self.f = f
        self.calls = 0

    def readinto(self, buffer):
        self.calls += 1
        if self.calls > 1:
            raise OSError(errno.EIO, "Input/output error")
        return self.f.readinto(buffer)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def _failing_source(repo, tmp_path, monkeypatch, mutate) -> Path:
    """A three-file source whose second file, in whatever order ingest takes them, goes bad."""
    repo.deploy("ssd", make_savedmodel(tmp_path / "v1" / "saved_model"))
    src = tmp_path / "v2" / "model"
    for i in range(3):
        write(src / f"part{i}.bin", rand_bytes(2 * CHUNK + i, 100 + i))
    real_open = ingest.open_source_file
    seen: list[str] = []

    def open_regular(path):
        seen.append(path)
        if len(seen) == 2:
            # Really mid-ingest: the first file is already staged under store/tmp.
            staged = [f for d in (repo.root / "store" / "tmp").iterdir() for f in d.iterdir()]
            assert staged, "nothing staged before the failure: the test would prove nothing"
            if mutate is None:
                return _FailingReader(real_open(path))
            mutate(path)
        return real_open(path)

    monkeypatch.setattr(ingest, "open_source_file", open_regular)
    return src


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_source_changing_mid_ingest_leaves_store_as_before(repo, tmp_path, monkeypatch, mutation, no_hang):
    src = _failing_source(repo, tmp_path, monkeypatch, MUTATIONS[mutation])
    before = snapshot(repo.root)
    objects_before = objects_under(repo.root)
    with pytest.raises(SourceError):
        repo.deploy("ssd", src)
    assert snapshot(repo.root) == before
    assert objects_under(repo.root) == objects_before
    assert tmp_leftovers(repo.root) == []
    assert [v.version for v in repo.manifest("ssd").versions] == ["1.0.0"]


def test_read_error_mid_ingest_leaves_store_as_before(repo, tmp_path, monkeypatch):
    src = _failing_source(repo, tmp_path, monkeypatch, None)
    before = snapshot(repo.root)
    with pytest.raises(GaiaCasError) as info:
        repo.deploy("ssd", src)
    assert "Input/output error" in str(info.value)
    assert snapshot(repo.root) == before
    assert tmp_leftovers(repo.root) == []


def test_failed_ingest_then_retry_succeeds(repo, tmp_path, monkeypatch):
    src = _failing_source(repo, tmp_path, monkeypatch, _grow)
    with pytest.raises(SourceError):
        repo.deploy("ssd", src)
    monkeypatch.undo()
    result = repo.deploy("ssd", src)
    assert result.version == "1.1.0" and result.file_count == 3
    for path in src.iterdir():
        assert (Path(result.path) / path.name).read_bytes() == path.read_bytes()


# -- reuse refreshes, never rewrites -----------------------------------------------------------

OLD = 1_000_000_000  # 2001-09-09: far older than any grace period


@pytest.mark.parametrize("second_name", ["model_catboost_best.joblib", "other_name.joblib"])
def test_reusing_an_object_refreshes_its_mtime_and_never_rewrites_it(repo, tmp_path, second_name):
    data = rand_bytes(CHUNK + 100, 11)
    first = write(tmp_path / "a" / "model_catboost_best.joblib", data)
    r1 = repo.deploy("catboost", first)
    oid = xxh(data)
    obj = repo.objects.path(oid)
    tree_obj = repo.objects.path(r1.hash)
    for path in (obj, tree_obj):
        os.utime(path, (OLD, OLD))
    before = os.stat(obj)
    assert before.st_mtime == OLD

    second = write(tmp_path / "b" / second_name, data)
    r2 = repo.deploy("catboost-copy", second)

    after = os.stat(obj)
    assert after.st_mtime > OLD  # refreshed, so a gc grace period covers the new reference
    assert (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino)  # the same file, not a new one
    assert stat.S_IMODE(after.st_mode) == 0o444
    assert obj.read_bytes() == data
    if r2.hash == r1.hash:
        assert os.stat(tree_obj).st_mtime > OLD
    assert tmp_leftovers(repo.root) == []


def test_installing_an_object_already_stored_keeps_the_stored_file(repo, tmp_path):
    """Immutability: install never replaces what already sits under an oid."""
    data = b"genuine weights" * 100
    r1 = repo.deploy("m", write(tmp_path / "a" / "w.bin", data))
    obj = repo.objects.path(xxh(data))
    inode = os.stat(obj).st_ino
    with repo.objects.staging() as stage:
        assert stage.add_bytes(data) == xxh(data)
        assert stage.install() == 0
    assert os.stat(obj).st_ino == inode
    assert r1.new_objects == 2


# -- filesystems without hard links -------------------------------------------------------------

def _filesystem_without_hard_links(monkeypatch) -> None:
    """Make ``os.link`` behave as on vfat/exFAT or some SMB/FUSE mounts: EPERM.

    Faithful to link(2)'s order of checks: a missing parent folder is ENOENT and an existing
    target is EEXIST (both found by path lookup, before the filesystem is asked to link).
    """

    def link(src, dst, *args, **kwargs):
        if not os.path.isdir(os.path.dirname(os.fspath(dst))):
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", os.fspath(dst))
        if os.path.lexists(dst):
            raise FileExistsError(errno.EEXIST, "File exists", os.fspath(dst))
        raise PermissionError(errno.EPERM, "Operation not permitted", os.fspath(src))

    monkeypatch.setattr(os, "link", link)


def _assert_objects_sound(root) -> None:
    """Invariant 3: whatever sits under an oid is complete, matches its name and is read-only."""
    for oid, path in objects_under(root).items():
        assert xxh(path.read_bytes()) == oid, f"{path} does not hold the bytes its name promises"
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o444, (path, oct(os.stat(path).st_mode))


def test_store_without_hard_links_falls_back_to_copies(repo, tmp_path, monkeypatch, savedmodel):
    _filesystem_without_hard_links(monkeypatch)
    result = repo.deploy("ssd", savedmodel)
    _assert_objects_sound(repo.root)
    assert set(objects_under(repo.root)) == tree_oids(repo, result.hash)
    for source in savedmodel.rglob("*"):
        if source.is_file():
            assert (Path(result.path) / source.relative_to(savedmodel)).read_bytes() == source.read_bytes()
    assert tmp_leftovers(repo.root) == []


def test_copy_fallback_on_a_full_disk_never_leaves_a_partial_object(fs, monkeypatch):
    repo = fake_root(fs)
    _filesystem_without_hard_links(monkeypatch)
    data = rand_bytes(DISK // 2 + CHUNK, 21)  # staging fits; staging plus a copy does not
    src = write(Path("/src/weights.bin"), data)

    for _ in range(2):  # a retry by the user or the CI must not make matters worse
        with pytest.raises(StoreError):
            repo.deploy("m", src)
        _assert_objects_sound(repo.root)
        assert tmp_leftovers(repo.root) == []
        assert repo.models() == []

    fs.set_disk_usage(DISK * 4, DATA_MOUNT)  # space freed: now the deploy must serve the true bytes
    result = repo.deploy("m", src)
    _assert_objects_sound(repo.root)
    assert Path(result.path).read_bytes() == data
    assert (repo.root / "models" / "m" / "current").read_bytes() == data


def test_start_writeback_leaves_content_and_is_a_no_op_without_libc(tmp_path, monkeypatch):
    from gaia_cas import atomic

    path = tmp_path / "f"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        os.write(fd, b"x" * 10000)
        atomic.start_writeback(fd, 0, 10000)
        monkeypatch.setitem(atomic.libc_calls, "sync_file_range", None)
        atomic.start_writeback(fd, 0, 10000)  # where the call does not exist: nothing, no error
    finally:
        os.close(fd)
    assert path.read_bytes() == b"x" * 10000


def test_a_large_file_is_staged_whole_across_writeback_steps(tmp_path, monkeypatch):
    from gaia_cas import objects

    calls = []
    monkeypatch.setattr(objects, "start_writeback", lambda fd, off, n: calls.append((off, n)))
    root = tmp_path / "r"
    layout = Layout(root)
    layout.tmp.mkdir(parents=True)
    data = os.urandom(objects.WRITEBACK_STEP * 2 + 12345)
    src = tmp_path / "big"
    src.write_bytes(data)
    with ObjectStore(layout).staging() as stage, open(src, "rb", buffering=0) as f:
        oid, size = stage.add_stream(f)
        assert size == len(data) and oid == xxhash.xxh3_128_hexdigest(data)
        staged = stage._staged[oid]
        assert open(staged, "rb").read() == data
    # Every byte was handed to the disk exactly once, in order, in steps of at most ~8 MiB.
    assert calls[0][0] == 0 and sum(n for _, n in calls) == len(data)
    assert all(a + n == b for (a, n), (b, _) in zip(calls, calls[1:]))
