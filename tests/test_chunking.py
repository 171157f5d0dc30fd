"""Content-defined chunks and recipes (gaia_cas.chunking): cut points follow the content, a
recipe is checked like an object, and reassembly refuses anything that does not hash right."""

import os
import random

import pytest

from gaia_cas.chunking import (MAX_CHUNK, MIN_CHUNK, Chunker, Recipe, changed_ranges, decode_recipe,
                               encode_recipe, reassemble)
from gaia_cas.codec import pack
from gaia_cas.errors import CorruptionError
from gaia_cas.hashing import hash_bytes

MiB = 1 << 20


def chunk_all(data: bytes, pieces=None):
    chunker = Chunker()
    stored = {}
    rng = random.Random(7)
    view = memoryview(data)
    pos = 0
    while pos < len(data):
        n = pieces or rng.choice([1, 4096, 65536, MiB, 3 * MiB + 17])
        for chunk, payload in chunker.feed(view[pos:pos + n]):
            stored[chunk.oid] = bytes(payload)
        pos += n
    recipe, last = chunker.finish()
    for chunk, payload in last:
        stored[chunk.oid] = bytes(payload)
    return recipe, stored


@pytest.fixture(scope="module")
def weights():
    return random.Random(1).randbytes(40 * MiB)


def test_streamed_cuts_equal_whole_buffer_cuts_and_rebuild_the_file(weights):
    from pyfastcdc import FastCDC

    recipe, stored = chunk_all(weights)
    whole = FastCDC(768 << 10, min_size=MIN_CHUNK, max_size=MAX_CHUNK)
    expected = [(c.offset, c.length) for c in whole.cut_buf(weights)]
    assert [(offset, c.length) for offset, c in recipe.offsets()] == expected
    assert recipe.oid == hash_bytes(weights) and recipe.size == len(weights)
    assert all(MIN_CHUNK <= c.length <= MAX_CHUNK for c in recipe.chunks[:-1])
    assert set(stored) == {c.oid for c in recipe.chunks}
    out = bytearray()
    reassemble(recipe, stored.__getitem__, out.extend)
    assert bytes(out) == weights


def test_a_tail_rewrite_and_an_insertion_keep_most_chunks(weights):
    old, _ = chunk_all(weights)
    tail = bytearray(weights)
    tail[-2 * MiB:] = random.Random(2).randbytes(2 * MiB)
    inserted = weights[:len(weights) // 2] + os.urandom(5000) + weights[len(weights) // 2:]
    for other, bound in ((bytes(tail), 2 * MiB + MAX_CHUNK), (inserted, 2 * MAX_CHUNK + 5000)):
        new, _ = chunk_all(other)
        changed = sum(end - start for start, end in changed_ranges(old, new))
        assert 0 < changed <= bound  # a shifted tail would be every byte after the change
    assert changed_ranges(old, old) == []
    assert changed_ranges(None, old) == [(0, len(weights))]


def test_a_recipe_round_trips_and_a_tampered_one_is_refused(weights):
    recipe, _ = chunk_all(weights[:9 * MiB])
    assert decode_recipe(encode_recipe(recipe)) == recipe
    c = recipe.chunks
    bad = [
        pack(["gaia-cas/recipe", 2, recipe.oid, recipe.size, [[x.oid, x.length] for x in c]]),
        pack(["other", 1, recipe.oid, recipe.size, []]),
        pack(["gaia-cas/recipe", 1, "zz", recipe.size, [[x.oid, x.length] for x in c]]),
        pack(["gaia-cas/recipe", 1, recipe.oid, recipe.size + 1, [[x.oid, x.length] for x in c]]),
        pack(["gaia-cas/recipe", 1, recipe.oid, recipe.size, [[x.oid, -x.length] for x in c]]),
        pack(["gaia-cas/recipe", 1, recipe.oid, recipe.size, [[x.oid, True] for x in c]]),
        b"\xc1",
    ]
    for data in bad:
        with pytest.raises(CorruptionError):
            decode_recipe(data)


def test_reassembly_refuses_a_corrupt_chunk_and_a_recipe_that_lies(weights):
    recipe, stored = chunk_all(weights[:9 * MiB])
    victim = recipe.chunks[1].oid
    broken = dict(stored)
    broken[victim] = b"\0" + stored[victim][1:]
    with pytest.raises(CorruptionError, match=victim):
        reassemble(recipe, broken.__getitem__, lambda data: None)
    liar = Recipe(hash_bytes(b"something else"), recipe.size, recipe.chunks)
    with pytest.raises(CorruptionError, match="recipe corrupt"):
        reassemble(liar, stored.__getitem__, lambda data: None)


def test_a_small_file_is_one_chunk():
    recipe, stored = chunk_all(b"tiny", pieces=3)
    assert [c.length for c in recipe.chunks] == [4] and stored == {hash_bytes(b"tiny"): b"tiny"}
