"""Recipes on disk and the moves between a whole object and its chunks (gaia_cas.recipes)."""

import os

import pytest

from gaia_cas.errors import CorruptionError
from gaia_cas.recipes import RecipeStore, describe, rebuild, split
from gaia_cas.repo import Repository

from store_helpers import objects_under, rand_bytes, tmp_leftovers, write, xxh

MiB = 1 << 20


@pytest.fixture
def stored(tmp_path):
    """A root with one 12 MiB file deployed: (repo, recipes, the file's oid, its bytes)."""
    repo = Repository.init(tmp_path / "root")
    data = rand_bytes(12 * MiB, 3)
    repo.deploy("weights", write(tmp_path / "src" / "w.bin", data))
    return repo, RecipeStore(repo.layout), xxh(data), data


def test_split_stores_the_chunks_then_the_recipe_and_rebuild_gives_the_bytes_back(stored):
    repo, recipes, oid, data = stored
    recipe, new = split(repo.objects, recipes, oid)
    assert new == len(data) and recipes.get(oid) == recipe and len(recipe.chunks) > 4
    assert all(repo.objects.exists(c.oid) for c in recipe.chunks)
    assert split(repo.objects, recipes, oid)[1] == 0  # a second split adds nothing
    repo.objects.delete(oid)  # the whole object gone: the chunks alone hold the file
    with repo.objects.staging() as staging:
        assert rebuild(repo.objects, recipe, staging) == len(data)
        staging.install()
        staging.keep()
    assert objects_under(repo.root)[oid].read_bytes() == data
    assert tmp_leftovers(repo.root) == []


def test_a_corrupt_chunk_is_refused_by_name_and_nothing_is_installed(stored):
    repo, recipes, oid, data = stored
    recipe, _ = split(repo.objects, recipes, oid)
    repo.objects.delete(oid)
    victim = objects_under(repo.root)[recipe.chunks[2].oid]
    os.chmod(victim, 0o644)
    with open(victim, "r+b") as f:
        f.seek(100)
        f.write(b"\xff")
    with pytest.raises(CorruptionError, match=recipe.chunks[2].oid):
        with repo.objects.staging() as staging:
            rebuild(repo.objects, recipe, staging)
            staging.install()
    assert not repo.objects.exists(oid)
    assert tmp_leftovers(repo.root) == []


def test_describe_cuts_once_and_stores_no_chunk(stored):
    repo, recipes, oid, data = stored
    before = set(objects_under(repo.root))
    recipe = describe(repo.objects, recipes, oid)
    assert set(objects_under(repo.root)) == before and recipes.get(oid) == recipe
    assert sum(c.length for c in recipe.chunks) == len(data)


def test_a_planted_recipe_symlink_or_a_foreign_recipe_is_corruption(stored, tmp_path):
    repo, recipes, oid, data = stored
    path = recipes.path(oid)
    os.makedirs(os.path.dirname(path))
    secret = write(tmp_path / "elsewhere", b"not yours")
    os.symlink(secret, path)
    with pytest.raises(CorruptionError, match="never followed"):
        recipes.get(oid)
    os.unlink(path)
    other = describe(repo.objects, recipes, oid)
    os.makedirs(os.path.dirname(recipes.path("0" * 32)))
    os.rename(path, recipes.path("0" * 32))
    with pytest.raises(CorruptionError, match="describes file"):
        recipes.get("0" * 32)
    assert other.oid == oid


def test_gc_never_drops_a_whole_file_whose_stored_recipe_lists_chunks_it_lacks(tmp_path):
    """A recipe of the file kept by an earlier cut with other parameters (or any recipe whose
    chunks are not all here) must not be what gc trusts when it unlinks the whole copy: split
    writes the recipe of the chunks it just stored."""
    from datetime import timedelta

    from gaia_cas.chunking import Chunker
    from gaia_cas.recipes import set_chunk_threshold

    repo = Repository.init(tmp_path / "root")
    set_chunk_threshold(repo.layout, 4 * (1 << 20))
    old = rand_bytes(9 << 20, 31)
    src = tmp_path / "src"
    write(src / "weights.bin", old)
    first = repo.deploy("m", src).version
    foreign = Chunker(min_size=64 << 10, avg_size=128 << 10, max_size=512 << 10)  # other cut points
    foreign.feed(old)
    recipe, _ = foreign.finish()
    assert RecipeStore(repo.layout).put(recipe)
    write(src / "weights.bin", rand_bytes(9 << 20, 32))
    repo.deploy("m", src)
    repo.gc(grace=timedelta(0))
    assert not repo.objects.exists(xxh(old))  # cold now, kept as chunks
    stored_recipe = RecipeStore(repo.layout).get(xxh(old))
    assert all(repo.objects.exists(c.oid) for c in stored_recipe.chunks)
    repo.rollback("m", first)
    assert (tmp_path / "root" / "models" / "m" / "current" / "weights.bin").read_bytes() == old
    assert repo.verify().problems == []
