"""The stat cache: an unchanged redeploy reads nothing, and a changed or suspicious stat re-hashes."""

from __future__ import annotations

import os
import time

import pytest

from conftest import make_savedmodel
from gaia_cas import ingest


@pytest.fixture
def opened(monkeypatch):
    """Records every source file a deploy opens for reading."""
    calls = []
    real = ingest._open_regular

    def spy(path):
        calls.append(os.path.basename(path))
        return real(path)

    monkeypatch.setattr(ingest, "_open_regular", spy)
    return calls


def settle(path):
    """Age every file's mtime past the racy window, as a source written a while ago would be."""
    past = time.time() - 60
    for dirpath, _, files in os.walk(path):
        for name in files:
            os.utime(os.path.join(dirpath, name), (past, past))


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
    repo._check_complete(result.hash)


def test_corrupt_cache_file_costs_only_a_rehash(repo, savedmodel, root, opened):
    settle(savedmodel)
    repo.deploy("m", savedmodel)
    (root / "store" / "statcache.msgpack").write_bytes(b"\x00\xff garbage")
    opened.clear()
    assert repo.deploy("m", savedmodel).unchanged
    assert len(opened) == 4
