"""The stat cache: an unchanged redeploy reads nothing, and a changed or suspicious stat re-hashes."""

from __future__ import annotations

import os
import time
from types import SimpleNamespace

import pytest

from pathlib import Path

import msgpack

from conftest import make_savedmodel
from gaia_cas import ingest, statcache
from gaia_cas.statcache import TREES_FORMAT, StatCache


@pytest.fixture
def opened(monkeypatch):
    """Records every source file a deploy opens for reading."""
    calls = []
    real = ingest.open_source_file

    def spy(path):
        calls.append(os.path.basename(path))
        return real(path)

    monkeypatch.setattr(ingest, "open_source_file", spy)
    return calls


_settled = []


@pytest.fixture(autouse=True)
def _clock(monkeypatch):
    """Once a test has settled its source, the stat cache's clock runs a minute ahead: utime
    ages the mtime, but it moves the ctime to now, and no one can set a ctime back."""
    _settled.clear()
    real = time.time_ns
    monkeypatch.setattr(statcache, "time", SimpleNamespace(time_ns=lambda: real() + (60 * 10**9 if _settled else 0)))


def settle(path):
    """Age every file past the racy window, as a source written a while ago would be."""
    past = time.time() - 60
    for dirpath, _, files in os.walk(path):
        for name in files:
            os.utime(os.path.join(dirpath, name), (past, past))
    _settled.append(path)


def test_unchanged_redeploy_reads_no_file(repo, savedmodel, opened):
    settle(savedmodel)
    repo.deploy("m", savedmodel)
    assert len(opened) == 4
    opened.clear()
    result = repo.deploy("m", savedmodel)
    assert result.unchanged and opened == []


def test_one_changed_file_is_the_only_one_read(repo, savedmodel, opened):
    settle(savedmodel)
    first = repo.deploy("m", savedmodel)
    opened.clear()
    (savedmodel / "saved_model.pb").write_bytes(b"changed")
    os.utime(savedmodel / "saved_model.pb", (time.time() - 30, time.time() - 30))  # only this file's stat moves
    second = repo.deploy("m", savedmodel)
    assert opened == ["saved_model.pb"]
    assert second.version == "1.1.0" and second.hash != first.hash
    assert second.hash == ingest.hash_only(savedmodel).tree  # never a wrong hash


def test_same_size_same_mtime_rewrite_is_caught_by_ctime(repo, savedmodel, opened):
    settle(savedmodel)
    repo.deploy("m", savedmodel)
    target = savedmodel / "fingerprint.pb"
    before = target.stat()
    target.write_bytes(b"FP")  # same size
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))  # mtime put back, ctime moves on
    opened.clear()
    result = repo.deploy("m", savedmodel)
    assert opened == ["fingerprint.pb"] and not result.unchanged


def test_fresh_files_are_not_trusted(repo, savedmodel, opened):
    repo.deploy("m", savedmodel)  # files written just now: within the racy window
    opened.clear()
    repo.deploy("m", savedmodel)
    assert len(opened) == 4


def test_touch_without_change_rehashes_and_stays_unchanged(repo, savedmodel, opened):
    settle(savedmodel)
    repo.deploy("m", savedmodel)
    os.utime(savedmodel / "saved_model.pb", (time.time() - 30, time.time() - 30))
    opened.clear()
    result = repo.deploy("m", savedmodel)
    assert opened == ["saved_model.pb"] and result.unchanged


def test_cache_hit_for_an_object_gc_removed_restages_it(repo, savedmodel, root):
    from datetime import timedelta

    settle(savedmodel)
    repo.deploy("m", savedmodel)
    repo.deploy("other", make_savedmodel(root.parent / "other", 7))
    # remove m entirely from the manifests' reach, then collect: its objects go
    repo.cleanup(["m"], keep=0)
    (root / "manifests" / "m.msgpack").unlink()
    repo.gc(grace=timedelta(0))
    pb = ingest.hash_only(savedmodel)
    assert not repo.objects.exists(pb.tree)
    result = repo.deploy("m2", savedmodel)  # the stat cache still knows these files
    repo.check_complete(result.hash)


def test_corrupt_cache_files_cost_only_a_rehash(repo, savedmodel, root, opened):
    settle(savedmodel)
    repo.deploy("m", savedmodel)
    (root / "store" / "statcache.msgpack").write_bytes(b"\x00\xff garbage")
    (root / "store" / "statcache-trees.msgpack").write_bytes(b"\x00\xff garbage")
    opened.clear()
    assert repo.deploy("m", savedmodel).unchanged
    assert len(opened) == 4


# -- whole folders: an unchanged scan recalls the tree ---------------------------------------

def forbid_building(monkeypatch, repo):
    """From now on, any per-file lookup, tree building or staging fails: only a recalled tree
    can answer."""
    def refuse(*_args, **_kwargs):
        raise AssertionError("the tree was built, not recalled")

    monkeypatch.setattr(ingest.Builder, "artifact", refuse)
    monkeypatch.setattr(StatCache, "lookup", refuse)
    monkeypatch.setattr(type(repo.objects), "staging", refuse)


def test_unchanged_folder_is_recalled_without_lookups_staging_or_writes(repo, savedmodel, root, monkeypatch):
    settle(savedmodel)
    first = repo.deploy("m", savedmodel)
    memo = root / "store" / "statcache-trees.msgpack"
    assert memo.is_file()
    before = {p: p.stat().st_mtime_ns for p in (memo, root / "store" / "statcache.msgpack")}
    forbid_building(monkeypatch, repo)
    again = repo.deploy("m", savedmodel)
    assert again.unchanged and again.hash == first.hash
    assert (again.size_bytes, again.file_count, again.version) == (first.size_bytes, first.file_count, "1.0.0")
    assert {p: p.stat().st_mtime_ns for p in before} == before  # nothing rewritten


def test_recalled_dry_run_gives_the_same_answer(repo, savedmodel, monkeypatch):
    settle(savedmodel)
    first = repo.deploy("m", savedmodel)
    forbid_building(monkeypatch, repo)
    dry = repo.deploy("m", savedmodel, dry_run=True)
    assert dry.unchanged and dry.hash == first.hash and dry.file_count == first.file_count


def test_fresh_files_leave_no_tree_memo(repo, savedmodel, root):
    repo.deploy("m", savedmodel)  # files written just now: within the racy window
    cache = StatCache(root / "store" / "statcache.msgpack")
    assert cache.recall_tree(str(savedmodel), ingest.fingerprint(ingest.scan(savedmodel))) is None


def _swap(a: Path, b: Path) -> None:
    tmp = a.with_name("swap.tmp")
    os.rename(a, tmp)
    os.rename(b, a)
    os.rename(tmp, b)


@pytest.mark.parametrize("change", ["swap two same-size files", "empty folder added", "file removed",
                                    "same-size rewrite, mtime put back"])
def test_any_change_misses_the_recalled_tree_and_gives_the_true_hash(repo, savedmodel, change):
    (savedmodel / "a.bin").write_bytes(b"A" * 64)
    (savedmodel / "b.bin").write_bytes(b"B" * 64)
    settle(savedmodel)
    first = repo.deploy("m", savedmodel)
    if change == "swap two same-size files":
        _swap(savedmodel / "a.bin", savedmodel / "b.bin")
    elif change == "empty folder added":
        (savedmodel / "empty").mkdir()
    elif change == "file removed":
        (savedmodel / "a.bin").unlink()
    else:
        before = (savedmodel / "a.bin").stat()
        (savedmodel / "a.bin").write_bytes(b"Z" * 64)
        os.utime(savedmodel / "a.bin", ns=(before.st_atime_ns, before.st_mtime_ns))
    second = repo.deploy("m", savedmodel)
    assert not second.unchanged and second.hash != first.hash
    assert second.hash == ingest.hash_only(savedmodel).tree  # computed without any cache


def test_recalled_tree_that_is_not_current_deploys_normally(repo, savedmodel, tmp_path):
    settle(savedmodel)
    first = repo.deploy("m", savedmodel)
    other = make_savedmodel(tmp_path / "other", 9)
    settle(other)
    repo.deploy("m", other)
    again = repo.deploy("m", savedmodel)  # recalled, but 1.1.0 is current: a new version
    assert not again.unchanged and again.hash == first.hash and again.version == "1.2.0"
    assert repo.deploy("m", savedmodel).unchanged


def test_corrupt_or_foreign_tree_memo_is_ignored(repo, savedmodel, root, opened):
    settle(savedmodel)
    repo.deploy("m", savedmodel)
    memo = root / "store" / "statcache-trees.msgpack"
    cache = StatCache(root / "store" / "statcache.msgpack")
    fp = ingest.fingerprint(ingest.scan(savedmodel))
    wrong_tree = "0" * 32
    for content in (b"\x00\xff garbage", msgpack.packb([TREES_FORMAT + 1, {str(savedmodel): [fp, wrong_tree, 1, 1]}]),
                    msgpack.packb([TREES_FORMAT, {str(savedmodel): [fp, "not an oid", 1, 1]}]),
                    msgpack.packb([TREES_FORMAT, {str(savedmodel): [fp, wrong_tree, "1", 1]}])):
        memo.write_bytes(content)
        opened.clear()
        result = repo.deploy("m", savedmodel)
        assert result.unchanged and result.hash != wrong_tree and opened == []  # the per-file cache answered
    assert StatCache(root / "store" / "statcache.msgpack").recall_tree(str(savedmodel), fp)[0] == result.hash


def test_tree_memo_keeps_the_most_recent_sources(repo, tmp_path, root, monkeypatch):
    monkeypatch.setattr(statcache, "MAX_TREES", 2)
    sources = [make_savedmodel(tmp_path / f"s{i}", i) for i in range(3)]
    for i, source in enumerate(sources):
        settle(source)
        repo.deploy(f"m{i}", source)
    cache = StatCache(root / "store" / "statcache.msgpack")
    kept = [cache.recall_tree(str(s), ingest.fingerprint(ingest.scan(s))) is not None for s in sources]
    assert kept == [False, True, True]
