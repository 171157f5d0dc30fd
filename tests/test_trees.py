"""Tree objects (gaia_cas/trees.py): canonical msgpack of sorted entries, validated entry by
entry when read back, walked with one depth bound; trees pointing at files are corruption."""

from __future__ import annotations

import os
import random
from pathlib import Path

import msgpack
import pytest

from conftest import snapshot
from gaia_cas import trees
from gaia_cas.errors import CorruptionError, SourceError
from gaia_cas.materialize import materialize
from gaia_cas.repo import Repository
from gaia_cas.trees import DIR, FILE, MAX_DEPTH, Entry, TreeReader, decode_tree, encode_tree

from store_helpers import OID_A, OID_B, rand_bytes, write


# -- tree codec -------------------------------------------------------------------------------

ENTRIES = [
    Entry("variables", DIR, OID_A, 10),
    Entry("saved_model.pb", FILE, OID_B, 3),
    Entry("B", FILE, OID_A, 1),
    Entry("a", FILE, OID_A, 1),
    Entry("_x", FILE, OID_B, 0),
    Entry("10", FILE, OID_A, 2),
    Entry("9", FILE, OID_A, 2),
    Entry("é", FILE, OID_B, 2),
    Entry("z", DIR, OID_B, 0),
]


def test_encode_tree_is_deterministic_and_sorted_by_utf8_bytes():
    expected_order = sorted(e.name.encode("utf-8") for e in ENTRIES)
    reference = encode_tree(ENTRIES)
    rng = random.Random(42)
    for _ in range(20):
        shuffled = ENTRIES[:]
        rng.shuffle(shuffled)
        assert encode_tree(shuffled) == reference
    assert encode_tree(list(reversed(ENTRIES))) == reference

    decoded = decode_tree(reference)
    assert [e.name.encode("utf-8") for e in decoded] == expected_order
    assert [e.name for e in decoded] == ["10", "9", "B", "_x", "a", "saved_model.pb", "variables", "z", "é"]
    assert set(decoded) == set(ENTRIES)
    # The on-disk form is the documented one: a msgpack list of [name, kind, oid, size].
    raw = msgpack.unpackb(reference, raw=False)
    assert raw[0] == ["10", "file", OID_A, 2]
    assert all(isinstance(item, list) and len(item) == 4 for item in raw)


def test_empty_and_single_entry_trees_round_trip():
    assert decode_tree(encode_tree([])) == []
    one = [Entry("model_catboost_best.joblib", FILE, OID_A, 183)]
    assert decode_tree(encode_tree(one)) == one


def test_same_folder_built_in_any_order_gives_the_same_tree_oid(repo, tmp_path):
    files = {"saved_model.pb": b"pb", "variables/variables.index": b"idx",
             "variables/variables.data-00000-of-00001": b"data", "assets/vocab.txt": b"v",
             "fingerprint.pb": b"fp"}
    first, second = tmp_path / "one" / "m", tmp_path / "two" / "m"
    for rel in files:
        write(first / rel, files[rel])
    for rel in reversed(list(files)):
        write(second / rel, files[rel])
    # Different mtimes too: the oid depends on names and bytes only.
    os.utime(second / "saved_model.pb", (1_000_000, 1_000_000))
    assert repo.deploy("a", first).hash == repo.deploy("b", second).hash
    assert repo.deploy("c", first, dry_run=True).hash == repo.deploy("c", second, dry_run=True).hash


def _entry(name="a", kind="file", oid=OID_A, size=1):
    return [name, kind, oid, size]


VALID = msgpack.packb([_entry("a"), _entry("b", "dir", OID_B, 0)], use_bin_type=True)

BAD_TREES = {
    "name-dotdot": [_entry("..")],
    "name-dot": [_entry(".")],
    "name-slash": [_entry("a/b")],
    "name-empty": [_entry("")],
    "name-absolute": [_entry("/abs")],
    "name-trailing-slash": [_entry("a/")],
    "name-nul": [_entry("a\0b")],
    "name-too-long": [_entry("x" * 256)],
    "name-bytes": [_entry(b"a")],
    "name-int": [_entry(7)],
    "name-none": [_entry(None)],
    "duplicate": [_entry("a"), _entry("a")],
    "duplicate-file-and-dir": [_entry("a", "dir"), _entry("a", "file")],
    "unsorted": [_entry("b"), _entry("a")],
    "unsorted-utf8": [_entry("é"), _entry("z")],
    "kind-symlink": [_entry(kind="symlink")],
    "kind-uppercase": [_entry(kind="FILE")],
    "kind-none": [_entry(kind=None)],
    "kind-int": [_entry(kind=1)],
    "oid-uppercase": [_entry(oid=OID_A.upper())],
    "oid-short": [_entry(oid=OID_A[:31])],
    "oid-long": [_entry(oid=OID_A + "0")],
    "oid-not-hex": [_entry(oid="g" * 32)],
    "oid-path": [_entry(oid="../../../../etc/passwd" + "0" * 10)],
    "oid-int": [_entry(oid=123)],
    "oid-none": [_entry(oid=None)],
    "size-negative": [_entry(size=-1)],
    "size-bool": [_entry(size=True)],
    "size-float": [_entry(size=1.5)],
    "size-str": [_entry(size="1")],
    "size-none": [_entry(size=None)],
    "entry-short": [["a", "file", OID_A]],
    "entry-long": [["a", "file", OID_A, 1, "extra"]],
    "entry-str": ["a"],
    "entry-map": [{"name": "a", "kind": "file", "oid": OID_A, "size": 1}],
    "top-map": {"a": ["file", OID_A, 1]},
    "top-int": 5,
    "top-str": "tree",
    "top-none": None,
}


@pytest.mark.parametrize("name", sorted(BAD_TREES))
def test_decode_tree_rejects_bad_entries(name):
    data = msgpack.packb(BAD_TREES[name], use_bin_type=True)
    with pytest.raises(CorruptionError):
        decode_tree(data, "deadbeef")


@pytest.mark.parametrize("data", [
    pytest.param(b"", id="empty"),
    pytest.param(b"\xc1", id="never-used-byte"),
    pytest.param(VALID[:-1], id="truncated"),
    pytest.param(VALID + b"\x00", id="trailing-bytes"),
    pytest.param(b"\xdd\xff\xff\xff\xff", id="array-claims-4G-entries"),
    pytest.param(b"\x91\xc7\x01\x05x", id="ext-type"),
    pytest.param(rand_bytes(300, 99), id="random"),
    pytest.param(b"\x89HDF\r\n\x1a\n" + b"\0" * 32, id="a-file-not-a-tree"),
])
def test_decode_tree_rejects_garbage(data):
    with pytest.raises(CorruptionError):
        decode_tree(data)


def test_decode_tree_accepts_the_valid_base_case():
    # The table above differs from this one entry by entry, so each case fails for its own reason.
    assert decode_tree(VALID) == [Entry("a", FILE, OID_A, 1), Entry("b", DIR, OID_B, 0)]
    assert decode_tree(msgpack.packb([_entry("x" * 255)], use_bin_type=True))[0].name == "x" * 255
    assert decode_tree(msgpack.packb([_entry("é")], use_bin_type=True))[0].name == "é"


def _store_chain(repo: Repository, levels: int) -> str:
    """A tree nesting ``levels`` folders above a tree holding one file; returns the top oid."""
    with repo.objects.staging() as stage:
        blob = stage.add_bytes(b"leaf")
        oid = stage.add_bytes(encode_tree([Entry("leaf.bin", FILE, blob, 4)]))
        for _ in range(levels):
            oid = stage.add_bytes(encode_tree([Entry("d", DIR, oid, 4)]))
        stage.install()
    return oid


def test_walk_accepts_nesting_up_to_max_depth(repo):
    top = _store_chain(repo, MAX_DEPTH)
    walked = list(repo.trees.walk(top))
    assert len(walked) == MAX_DEPTH + 1
    assert walked[-1][0] == "d/" * MAX_DEPTH + "leaf.bin"
    assert walked[-1][1].kind == FILE


def test_walk_and_materialize_reject_nesting_beyond_max_depth(repo):
    top = _store_chain(repo, MAX_DEPTH + 1)
    with pytest.raises(CorruptionError):
        list(TreeReader(repo.objects).walk(top))
    before = snapshot(repo.root)
    with pytest.raises(CorruptionError):
        materialize(repo.layout, repo.objects, top)
    assert snapshot(repo.root) == before  # nothing half-built left in store/trees or store/tmp
    assert not (repo.root / "store" / "trees" / top).exists()


def test_deepest_source_the_scan_accepts_deploys_and_materializes(repo, tmp_path):
    src = tmp_path / "deep"
    leaf = src.joinpath(*(["d"] * MAX_DEPTH))
    write(leaf / "leaf.bin", b"leaf")
    result = repo.deploy("deep", src)
    assert (Path(result.path).joinpath(*(["d"] * MAX_DEPTH)) / "leaf.bin").read_bytes() == b"leaf"

    too_deep = tmp_path / "too_deep"
    write(too_deep.joinpath(*(["d"] * (MAX_DEPTH + 1))) / "leaf.bin", b"leaf")
    before = snapshot(repo.root)
    with pytest.raises(SourceError):
        repo.deploy("deep", too_deep)
    assert snapshot(repo.root) == before


def test_tree_reader_rejects_missing_and_oversized_objects(repo, monkeypatch):
    with pytest.raises(CorruptionError):
        repo.trees.entries(OID_A)
    entries = [Entry(f"file{i}", FILE, OID_A, i) for i in range(4)]
    with repo.objects.staging() as stage:
        big = stage.add_bytes(encode_tree(entries))
        stage.install()
    assert repo.trees.entries(big) == entries  # a valid tree ...
    monkeypatch.setattr(trees, "MAX_TREE_BYTES", 64)
    with pytest.raises(CorruptionError):  # ... refused once it is larger than the limit
        repo.trees.entries(big)


def test_tree_pointing_at_a_file_object_is_corruption(repo):
    with repo.objects.staging() as stage:
        blob = stage.add_bytes(b"\x89HDF\r\n\x1a\n not msgpack")
        top = stage.add_bytes(encode_tree([Entry("sub", DIR, blob, 10)]))
        stage.install()
    with pytest.raises(CorruptionError):
        list(repo.trees.walk(top))
