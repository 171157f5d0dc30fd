"""A rollback to a cold version rebuilds the file from its chunks in one pass (gaia_cas.recipes):
each chunk read whole into one buffer and checked there, the whole file hashed as it is written,
fsynced before it is named. These pin what the fast path must still refuse and still do."""

import os
from datetime import timedelta
from pathlib import Path

import pytest

from gaia_cas.chunking import Chunk, Recipe
from gaia_cas.errors import CorruptionError
from gaia_cas.recipes import LARGEST_CHUNK, RecipeStore, rebuild, rebuilt_file, set_chunk_threshold
from gaia_cas.repo import Repository

from conftest import assert_one_line_error, run_launcher, snapshot
from store_helpers import objects_under, rand_bytes, tmp_leftovers, write, xxh

MiB = 1 << 20
ZERO = timedelta(0)


@pytest.fixture
def cold(tmp_path):
    """Two versions of a 12 MiB weights file (threshold 4 MiB), the first gone cold:
    (repo, its number, its bytes, its recipe, the current version's bytes)."""
    repo = Repository.init(tmp_path / "root")
    set_chunk_threshold(repo.layout, 4 * MiB)
    old, new = rand_bytes(12 * MiB, 11), rand_bytes(12 * MiB, 12)
    numbers = []
    for data in (old, new):
        write(tmp_path / "src" / "variables.data", data)
        numbers.append(repo.deploy("ssd", tmp_path / "src").version)
    repo.gc(grace=ZERO)
    recipe = RecipeStore(repo.layout).get(xxh(old))
    assert recipe is not None and not repo.objects.exists(recipe.oid) and len(recipe.chunks) > 4
    return repo, numbers[0], old, recipe, new


def served(repo) -> bytes:
    return (Path(repo.resolve("ssd").path) / "variables.data").read_bytes()


def refused_and_untouched(repo, number, new, before, *fragments):
    """The rollback is refused with one line naming the damage, the store exactly as it was."""
    run = run_launcher("--root", repo.root, "rollback", "ssd", number, timeout=60)
    assert_one_line_error(run, *fragments)
    assert snapshot(repo.root) == before
    assert served(repo) == new and tmp_leftovers(repo.root) == []


def chunk_file(repo, recipe, index) -> Path:
    victim = objects_under(repo.root)[recipe.chunks[index].oid]
    os.chmod(victim, 0o644)
    return victim


def test_the_rebuilt_file_is_byte_identical_and_fsynced_before_it_gets_its_name(cold, monkeypatch):
    repo, number, old, recipe, _ = cold
    final = str(repo.objects.path_str(recipe.oid))
    events = []
    real_fsync, real_link = os.fsync, os.link

    def fsync(fd):
        events.append(("fsync", os.fstat(fd).st_ino))
        return real_fsync(fd)

    def link(src, dst, *args, **kwargs):
        if str(dst) == final:
            events.append(("link", os.lstat(src).st_ino))
        return real_link(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "link", link)
    repo.rollback("ssd", number)
    assert served(repo) == old
    named = [i for i, (kind, _) in enumerate(events) if kind == "link"]
    assert len(named) == 1, events
    inode = events[named[0]][1]
    assert ("fsync", inode) in events[:named[0]]  # durable before its name exists


def test_a_chunk_with_a_flipped_byte_is_refused_by_name(cold):
    repo, number, _, recipe, new = cold
    with open(chunk_file(repo, recipe, 2), "r+b") as f:
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 1]))
    refused_and_untouched(repo, number, new, snapshot(repo.root), recipe.chunks[2].oid, "does not match its hash")


def test_a_truncated_chunk_is_refused(cold):
    repo, number, _, recipe, new = cold
    os.truncate(chunk_file(repo, recipe, 1), recipe.chunks[1].length - 1)
    refused_and_untouched(repo, number, new, snapshot(repo.root), recipe.chunks[1].oid)


def test_a_chunk_with_bytes_appended_is_refused_though_its_first_bytes_hash_right(cold):
    repo, number, _, recipe, new = cold
    with open(chunk_file(repo, recipe, 0), "ab") as f:
        f.write(b"trailing")
    refused_and_untouched(repo, number, new, snapshot(repo.root), recipe.chunks[0].oid)


def test_a_chunk_swapped_for_a_symlink_to_its_own_bytes_is_never_followed(cold, tmp_path):
    repo, number, _, recipe, new = cold
    victim = chunk_file(repo, recipe, 3)
    elsewhere = write(tmp_path / "elsewhere", victim.read_bytes())  # the right bytes, outside the store
    victim.unlink()
    victim.symlink_to(elsewhere)
    refused_and_untouched(repo, number, new, snapshot(repo.root), recipe.chunks[3].oid, "never followed")


def test_a_missing_chunk_is_refused(cold):
    repo, number, _, recipe, new = cold
    chunk_file(repo, recipe, 4).unlink()
    refused_and_untouched(repo, number, new, snapshot(repo.root), recipe.chunks[4].oid, "missing")


def test_chunks_that_hash_right_but_do_not_make_the_file_are_refused(cold):
    """A recipe listing the right chunks in the wrong order: every chunk passes, the whole does not."""
    repo, _, _, recipe, _ = cold
    swapped = Recipe(recipe.oid, recipe.size, (recipe.chunks[1], recipe.chunks[0]) + recipe.chunks[2:])
    with pytest.raises(CorruptionError, match="do not rebuild it"):
        with repo.objects.staging() as staging:
            rebuild(repo.objects, swapped, staging)
            staging.install()
    assert not repo.objects.exists(recipe.oid) and tmp_leftovers(repo.root) == []


def test_a_recipe_naming_a_chunk_longer_than_any_chunk_is_refused_before_reading(cold):
    repo, _, _, recipe, _ = cold
    huge = Recipe(recipe.oid, LARGEST_CHUNK + 1, (Chunk(recipe.chunks[0].oid, LARGEST_CHUNK + 1),))
    with pytest.raises(CorruptionError, match="longer than any chunk"):
        with repo.objects.staging() as staging:
            rebuild(repo.objects, huge, staging)
    assert tmp_leftovers(repo.root) == []


def test_rebuilt_file_gives_the_bytes_aside_and_refuses_a_corrupt_chunk(cold):
    repo, _, old, recipe, _ = cold
    with rebuilt_file(repo.objects, recipe) as path:
        assert Path(path).read_bytes() == old
    assert tmp_leftovers(repo.root) == []
    with open(chunk_file(repo, recipe, 2), "r+b") as f:
        f.write(b"\x00\x01\x02")
    with pytest.raises(CorruptionError, match=recipe.chunks[2].oid):
        with rebuilt_file(repo.objects, recipe):
            pass
    assert tmp_leftovers(repo.root) == [] and not repo.objects.exists(recipe.oid)
