"""gaia_cas/manifest.py: the codec, strict decoding, commits, history, locks and concurrent writers."""

from __future__ import annotations

import getpass
import json
import os
import random
import select
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import msgpack
import pytest

import gaia_cas
from conftest import CHECKOUT, assert_one_line_error, make_savedmodel, run_launcher, snapshot
from gaia_cas import manifest as mf
from gaia_cas.manifest_store import Manifests
from gaia_cas.errors import CorruptionError, GaiaCasError, LockTimeoutError
from gaia_cas.layout import Layout
from gaia_cas.manifest import Event, Manifest, ModelConfig, Version
from gaia_cas.repo import Repository

OID_A = "0123456789abcdef0123456789abcdef"
OID_B = "fedcba9876543210fedcba9876543210"


# -- helpers ---------------------------------------------------------------------------------

def raw_version(number: str = "1.0.0", tree: str = OID_A, **changes) -> dict:
    doc = {
        "version": number, "deployment_id": "20250716_202612", "created_at": "2025-07-16T20:26:12+00:00",
        "tree": tree, "artifact": "directory", "name": None, "size_bytes": 23_000_000, "file_count": 4,
        "format": "tensorflow-savedmodel", "metadata": {"threshold": 0.5}, "reason": "first",
        "user": "ci", "host": "build-1", "source": "/src/saved_model", "pinned": False,
    }
    doc.update(changes)
    return doc


def raw_event(generation: int, action: str, version, before, after, **changes) -> dict:
    doc = {"generation": generation, "at": "2025-07-16T20:26:12+00:00", "action": action, "version": version,
           "before": before, "after": after, "user": "ci", "host": "build-1", "reason": None}
    doc.update(changes)
    return doc


def raw_doc(**changes) -> dict:
    """A valid manifest as the plain msgpack map it is stored as."""
    doc = {
        "schema": mf.SCHEMA,
        "model": "ssd",
        "generation": 2,
        "current": "1.1.0",
        "highest": "1.1.0",
        "config": {"aliases": ["dl"], "source": "/src/saved_model", "link": "api/models/dl_model/current",
                   "metadata": {"team": "vision"}, "retention": {"keep_last": 5}},
        "versions": [raw_version("1.0.0", OID_A), raw_version("1.1.0", OID_B, reason="second")],
        "history": [raw_event(1, "deploy", "1.0.0", None, "1.0.0"),
                    raw_event(2, "deploy", "1.1.0", "1.0.0", "1.1.0")],
    }
    doc.update(changes)
    return doc


def pack(doc) -> bytes:
    return msgpack.packb(doc, use_bin_type=True)


class Raw(bytes):
    """Bytes that are already msgpack: embedded as they are by :func:`map_bytes`."""


def _enc(value) -> bytes:
    return bytes(value) if isinstance(value, Raw) else pack(value)


def map_bytes(pairs: list[tuple]) -> Raw:
    """A msgpack map written by hand, so the same key can appear twice."""
    n = len(pairs)
    header = bytes([0x80 | n]) if n < 16 else b"\xde" + n.to_bytes(2, "big")
    return Raw(header + b"".join(_enc(k) + _enc(v) for k, v in pairs))


def array_bytes(items: list) -> Raw:
    n = len(items)
    header = bytes([0x90 | n]) if n < 16 else b"\xdc" + n.to_bytes(2, "big")
    return Raw(header + b"".join(_enc(i) for i in items))


def sample_manifest() -> Manifest:
    return Manifest(
        model="ssd",
        config=ModelConfig(aliases=["dl", "detector"], source="/data/ssd", link="api/models/dl_model/current",
                           metadata={"team": "vision", "classes": ["car", "person"], "threshold": 0.25},
                           retention={"keep_last": 3, "younger_than_days": 30}),
        versions=[
            Version(version="1.0.0", deployment_id="20250716_202612", created_at="2025-07-16T20:26:12+02:00",
                    tree=OID_A, artifact="directory", name=None, size_bytes=23 * 1024 * 1024, file_count=4,
                    format="tensorflow-savedmodel", metadata={"map": 0.71, "nested": {"a": [1, 2]}},
                    reason="first", user="alice", host="gpu-1", source="/data/ssd", pinned=True),
            Version(version="1.1.0", deployment_id="20250717_101010", created_at="2025-07-17T10:10:10+02:00",
                    tree=OID_B, artifact="file", name="model_catboost_best.joblib", size_bytes=600_000,
                    file_count=1, format="joblib", metadata={}, reason=None, user=None, host=None,
                    source=None, pinned=False),
        ],
        current="1.0.0",
        highest="1.1.0",
        generation=3,
        history=[
            Event(1, "2025-07-16T20:26:12+02:00", "deploy", "1.0.0", None, "1.0.0", "alice", "gpu-1", "first"),
            Event(2, "2025-07-17T10:10:10+02:00", "deploy", "1.1.0", "1.0.0", "1.1.0", None, None, None),
            Event(3, "2025-07-17T11:00:00+02:00", "rollback", "1.0.0", "1.1.0", "1.0.0", "bob", "ops", "bad map"),
        ],
    )


# -- codec -----------------------------------------------------------------------------------

def test_round_trip_keeps_versions_config_and_history():
    original = sample_manifest()
    data = mf.encode(original)
    decoded = mf.decode(data)
    assert decoded == original
    assert decoded.config.metadata["classes"] == ["car", "person"]
    assert decoded.versions[1].name == "model_catboost_best.joblib"
    assert decoded.versions[0].pinned is True
    assert [e.action for e in decoded.history] == ["deploy", "deploy", "rollback"]
    assert decoded.current_version().tree == OID_A
    # Encoding is deterministic: decode -> encode gives back the very same bytes.
    assert mf.encode(decoded) == data
    assert msgpack.unpackb(data)["schema"] == mf.SCHEMA


def test_raw_helper_doc_is_valid():
    """Control for the corruption tests below: the unmodified document decodes."""
    manifest = mf.decode(pack(raw_doc()))
    assert manifest.model == "ssd"
    assert [v.version for v in manifest.versions] == ["1.0.0", "1.1.0"]
    assert manifest.current == "1.1.0"
    # and so does the hand-made encoding of the same map
    assert mf.decode(bytes(map_bytes(list(raw_doc().items())))) == manifest


def test_every_truncation_is_corruption():
    data = mf.encode(sample_manifest())
    for cut in range(len(data)):
        with pytest.raises(CorruptionError):
            mf.decode(data[:cut], "ssd.msgpack")


def test_random_garbage_is_corruption():
    rng = random.Random(20250716)
    for _ in range(300):
        garbage = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
        with pytest.raises(CorruptionError):
            mf.decode(garbage)


def test_flipped_bytes_never_escape_as_other_errors():
    """Any single-byte change either still decodes to a valid manifest or is a CorruptionError --
    also when the rows decoded lazily (one version, every version, the history) are read."""
    data = mf.encode(sample_manifest())
    rng = random.Random(7)
    for i in range(len(data)):
        mutated = bytearray(data)
        mutated[i] = (mutated[i] + rng.randrange(1, 256)) % 256
        try:
            manifest = mf.decode(bytes(mutated))
            manifest.current_version()
            manifest.find("1.1.0")
            manifest.versions
            manifest.history
        except CorruptionError:
            pass


@pytest.mark.parametrize("value", [[1, 2, 3], "ssd", None, 42, b"bytes", True, 1.5])
def test_non_map_is_corruption(value):
    with pytest.raises(CorruptionError, match="not a map"):
        mf.decode(pack(value))


def test_newer_schema_asks_for_an_upgrade():
    with pytest.raises(CorruptionError) as info:
        mf.decode(pack(raw_doc(schema=mf.SCHEMA + 1)), "manifests/ssd.msgpack")
    message = str(info.value)
    assert "upgrade" in message
    assert str(mf.SCHEMA + 1) in message


@pytest.mark.parametrize("schema", [None, "1", True, 1.0])
def test_missing_or_mistyped_schema_is_corruption(schema):
    doc = raw_doc()
    if schema is None:
        del doc["schema"]
    else:
        doc["schema"] = schema
    with pytest.raises(CorruptionError):
        mf.decode(pack(doc))


def test_duplicate_top_level_key_is_rejected():
    pairs = list(raw_doc().items())
    for key in ("model", "current", "schema", "versions"):
        value = dict(pairs)[key]
        data = bytes(map_bytes(pairs + [(key, value)]))
        with pytest.raises(CorruptionError, match="duplicate"):
            mf.decode(data)


def test_duplicate_key_with_different_value_is_rejected():
    """The classic smuggling case: the first and the last 'current' disagree."""
    pairs = list(raw_doc().items())
    data = bytes(map_bytes(pairs + [("current", "1.0.0")]))
    with pytest.raises(CorruptionError, match="duplicate"):
        mf.decode(data)


def test_duplicate_key_in_a_nested_version_map_is_rejected():
    doc = raw_doc()
    bad_version = map_bytes(list(raw_version("1.1.0", OID_B).items()) + [("tree", OID_A)])
    pairs = [(k, v) for k, v in doc.items() if k != "versions"]
    pairs.append(("versions", array_bytes([raw_version("1.0.0", OID_A), bad_version])))
    with pytest.raises(CorruptionError, match="duplicate"):
        mf.decode(bytes(map_bytes(pairs)))
    # control: the same construction without the repeated key decodes
    good_version = map_bytes(list(raw_version("1.1.0", OID_B).items()))
    pairs[-1] = ("versions", array_bytes([raw_version("1.0.0", OID_A), good_version]))
    assert mf.decode(bytes(map_bytes(pairs))).versions[1].tree == OID_B


# -- the version index: one row unpacked per lookup ---------------------------------------------

def stored_doc(manifest: Manifest | None = None) -> dict:
    """A manifest as gaia-cas stores it (rows in one byte string, plus the index of numbers)."""
    return msgpack.unpackb(mf.encode(manifest or sample_manifest()))


def stored_rows(doc: dict) -> list:
    return msgpack.unpackb(doc["versions"])


def test_stored_manifest_indexes_version_numbers_and_row_offsets_in_row_order():
    doc = stored_doc()
    assert doc["version_numbers"] == ["1.0.0", "1.1.0"]
    assert [row[0] for row in stored_rows(doc)] == doc["version_numbers"]
    offsets = doc["version_offsets"]
    rows = doc["versions"]
    assert [msgpack.unpackb(rows[a:b])[0] for a, b in zip(offsets, offsets[1:])] == ["1.0.0", "1.1.0"]
    assert offsets[-1] == len(rows)


@pytest.mark.parametrize("count", [0, 1, 15, 16, 300])
def test_rows_packed_with_offsets_match_msgpack_and_the_offsets_a_skip_finds(count):
    from gaia_cas import codec

    rows = [[f"1.{i}.0", "x" * (i % 40), i, None, {"k": [i]}] for i in range(count)]
    data, offsets = codec.pack_rows(rows)
    assert data == msgpack.packb(rows, use_bin_type=True)
    assert offsets == codec.array_offsets(data, "rows", count, max_str=1 << 20, max_array=1000, max_map=1000)
    assert offsets[0] == codec.array_header_size(count)


@pytest.mark.parametrize("size", [0, 1, 255, 256, 65535, 65536, 70000])
def test_pack_map_writes_the_bytes_packb_writes(size):
    from gaia_cas import codec

    doc = {"schema": 1, "blob": bytes(range(256)) * (size // 256) + b"x" * (size % 256), "list": [1, "a", None],
           "map": {"k": b"v"}, "empty": b""}
    assert codec.pack_map(doc) == msgpack.packb(doc, use_bin_type=True)


def test_a_wrong_offset_between_rows_is_corruption_when_its_row_is_read():
    doc = stored_doc()
    doc["version_offsets"][1] += 1  # the boundary between the two rows, one byte off
    manifest = mf.decode(pack(doc))  # the ends still fit: found out on use
    with pytest.raises(CorruptionError):
        manifest.find("1.1.0")
    with pytest.raises(CorruptionError, match="row offsets"):
        mf.decode(pack(doc)).versions


def test_a_lookup_reads_only_its_own_row_and_a_full_read_stays_strict():
    """Row 0 carries a repeated key: looking up 1.1.0 (a rollback, a server resolving current)
    does not unpack row 0, but reading every version still refuses it."""
    doc = stored_doc()
    rows = stored_rows(doc)
    bad_row = array_bytes(rows[0][:9] + [map_bytes([("map", 0.7), ("map", 0.9)])] + rows[0][10:])
    doc["versions"] = bytes(array_bytes([bad_row, rows[1]]))
    manifest = mf.decode(pack(doc))
    assert manifest.find("1.1.0").name == "model_catboost_best.joblib"
    assert manifest.find("9.9.9") is None
    assert manifest.version_numbers() == ["1.0.0", "1.1.0"]
    with pytest.raises(CorruptionError, match="duplicate"):
        manifest.find("1.0.0")
    with pytest.raises(CorruptionError, match="duplicate"):
        manifest.versions
    # control: the same rows without the repeated key read in full
    doc["versions"] = pack(rows)
    assert [v.version for v in mf.decode(pack(doc)).versions] == ["1.0.0", "1.1.0"]


def test_an_index_that_disagrees_with_the_rows_is_corruption():
    doc = stored_doc()
    doc["version_numbers"] = ["1.1.0", "1.0.0"]  # both numbers exist, in the wrong rows
    manifest = mf.decode(pack(doc))
    with pytest.raises(CorruptionError, match="disagree"):
        manifest.find("1.1.0")
    with pytest.raises(CorruptionError, match="disagree"):
        mf.decode(pack(doc)).versions


@pytest.mark.parametrize("change", [
    lambda doc: doc.update(version_numbers=["1.0.0"]),                        # one row not indexed
    lambda doc: doc.update(version_numbers=["1.0.0", "1.1.0", "1.2.0"]),      # an index without its row
    lambda doc: doc.update(versions=doc["versions"] + b"\xc0"),               # bytes after the rows
    lambda doc: doc.update(versions=doc["versions"][:-3]),                    # the last row cut short
    lambda doc: doc.update(version_numbers=["1.0.0", "1.0.0"]),               # a number indexed twice
    lambda doc: doc["version_offsets"].pop(),                                 # an offset missing
    lambda doc: doc["version_offsets"].__setitem__(0, 0),                     # rows start in the header
    lambda doc: doc["version_offsets"].__setitem__(-1, 10**6),                # rows end past the bytes
    lambda doc: doc["version_offsets"].__setitem__(1, True),                  # an offset that is no number
    lambda doc: doc.update(version_offsets="0,1,2"),                          # offsets that are no list
    # index and offsets agree with each other but skip a row: 1.1.0 would silently vanish
    lambda doc: doc.update(version_numbers=["1.0.0"], version_offsets=doc["version_offsets"][::2]),
], ids=["unindexed-row", "missing-row", "trailing-bytes", "truncated-row", "duplicate-number", "offset-missing",
        "offset-in-header", "offset-past-end", "offset-not-int", "offsets-not-list", "index-skips-a-row"])
def test_rows_and_index_out_of_step_are_corruption_at_once(change):
    doc = stored_doc()
    change(doc)
    with pytest.raises(CorruptionError):
        mf.decode(pack(doc))


def test_a_manifest_written_before_the_index_still_reads_and_gains_it_on_the_next_commit():
    doc = stored_doc()
    del doc["version_numbers"], doc["version_offsets"]
    manifest = mf.decode(pack(doc))
    assert manifest.find("1.1.0").tree == OID_B
    assert manifest == sample_manifest()
    assert msgpack.unpackb(mf.encode(manifest))["version_numbers"] == ["1.0.0", "1.1.0"]
    # one written with the numbers but not the offsets: they are found by skipping the rows
    doc = stored_doc()
    offsets = doc.pop("version_offsets")
    manifest = mf.decode(pack(doc))
    assert manifest.find("1.1.0").tree == OID_B
    assert msgpack.unpackb(mf.encode(manifest))["version_offsets"] == offsets


@pytest.mark.parametrize("data", [
    b"\xdb\xff\xff\xff\xff" + b"abc",                   # str32 claiming 4 GiB
    b"\xdd\xff\xff\xff\xff" + b"\x01\x02",              # array32 claiming 4 billion items
    b"\xdf\xff\xff\xff\xff" + b"\xa1a\x01",             # map32 claiming 4 billion pairs
    b"\xc6\xff\xff\xff\xff" + b"xyz",                   # bin32 claiming 4 GiB
    b"\x81\xa6schema\xdb\xff\xff\xff\xff" + b"ab",      # a huge string inside the map
    b"\x81\xa8versions\xdd\xff\xff\xff\xff" + b"\x80",  # a huge array inside the map
    b"\xdd\x00\x98\x96\x7f" + b"\x01",                  # an array just under the item limit
], ids=["str32", "array32", "map32", "bin32", "nested-str32", "nested-array32", "array-under-limit"])
def test_huge_declared_lengths_are_corruption(data):
    with pytest.raises(CorruptionError):
        mf.decode(data)


def test_string_longer_than_the_limit_is_corruption():
    with pytest.raises(CorruptionError):
        mf.decode(pack(raw_doc(model="a" * ((1 << 20) + 1))))


@pytest.mark.parametrize("tree", [
    "0123456789ABCDEF0123456789ABCDEF",  # upper case
    "0123456789abcdef",                  # too short
    "../../../../etc/passwd",
    "0123456789abcdef0123456789abcdeg",  # not hex
    "",
    None,
    12345,
])
def test_version_with_invalid_tree_oid_is_corruption(tree):
    doc = raw_doc()
    doc["versions"][1]["tree"] = tree
    with pytest.raises(CorruptionError):
        mf.decode(pack(doc))


def test_current_naming_a_missing_version_is_corruption():
    with pytest.raises(CorruptionError, match="9.9.9"):
        mf.decode(pack(raw_doc(current="9.9.9")))


@pytest.mark.parametrize("model", ["../x", "..", "/etc", "a/b", "SSD", "", "all", "x" * 65, "a\0b"])
def test_invalid_model_name_inside_the_manifest_is_corruption(model):
    with pytest.raises(CorruptionError):
        mf.decode(pack(raw_doc(model=model)))


@pytest.mark.parametrize("name", ["../evil.joblib", "..", ".", "", "a/b", "x\0y"])
def test_invalid_file_name_of_a_version_is_corruption(name):
    doc = raw_doc()
    doc["versions"][1].update(artifact="file", name=name)
    with pytest.raises(CorruptionError):
        mf.decode(pack(doc))


@pytest.mark.parametrize("link", ["../outside/current", "/abs/current", "store/x", "manifests/ssd", "a//b"])
def test_invalid_link_in_the_config_is_corruption(link):
    doc = raw_doc()
    doc["config"]["link"] = link
    with pytest.raises(CorruptionError):
        mf.decode(pack(doc))


@pytest.mark.parametrize("mutate", [
    lambda d: d["versions"][0].pop("tree"),
    lambda d: d["versions"][0].update(size_bytes="big"),
    lambda d: d["versions"][0].update(size_bytes=True),
    lambda d: d["versions"][0].update(version="1.x"),
    lambda d: d["versions"].append(raw_version("1.0.0", OID_B)),
    lambda d: d.update(generation="2"),
    lambda d: d.update(versions={"1.0.0": {}}),
    lambda d: d["config"].update(aliases=[1]),
    lambda d: d["history"][0].pop("action"),
    lambda d: d["history"].append("deploy"),
], ids=["no-tree", "size-str", "size-bool", "bad-number", "twice", "generation-str", "versions-map",
        "alias-int", "event-no-action", "event-not-map"])
def test_mistyped_or_missing_fields_are_corruption(mutate):
    doc = raw_doc()
    mutate(doc)
    with pytest.raises(CorruptionError):
        mf.decode(pack(doc))


def test_non_string_map_key_is_corruption():
    data = bytes(map_bytes(list(raw_doc().items()) + [(1, "x")]))
    with pytest.raises(CorruptionError):
        mf.decode(data)


def test_manifest_file_of_another_model_is_rejected(root):
    (root / "manifests" / "ssd.msgpack").write_bytes(pack(raw_doc(model="other")))
    with pytest.raises(CorruptionError):
        Manifests(Layout(root)).read("ssd")


# -- a corrupted manifest through the CLI ----------------------------------------------------

CORRUPTIONS = {
    "garbage": lambda good: b"\x00\xffnot msgpack at all\x13\x37",
    "truncated": lambda good: good[: len(good) // 2],
    "empty": lambda good: b"",
    "newer-schema": lambda good: pack({**msgpack.unpackb(good), "schema": mf.SCHEMA + 1}),
    "duplicate-key": lambda good: bytes(map_bytes(list(msgpack.unpackb(good).items()) + [("current", None)])),
    "huge-string": lambda good: b"\x81\xa6schema\xdb\xff\xff\xff\xff" + b"ab",
    "bad-model-name": lambda good: pack({**msgpack.unpackb(good), "model": "../x"}),
}


@pytest.fixture
def corrupted(repo, root, tmp_path, request):
    """A root with model ssd (two versions), whose manifest is then corrupted."""
    a = make_savedmodel(tmp_path / "a" / "saved_model", variant=1)
    b = make_savedmodel(tmp_path / "b" / "saved_model", variant=2)
    repo.deploy("ssd", a)
    repo.deploy("ssd", b)
    path = root / "manifests" / "ssd.msgpack"
    good = path.read_bytes()
    os.chmod(path, 0o644)
    path.write_bytes(CORRUPTIONS[request.param](good))
    return {"a": a, "b": b}


@pytest.mark.parametrize("corrupted", sorted(CORRUPTIONS), indirect=True)
def test_list_of_a_corrupted_manifest_is_one_line_error_and_changes_nothing(corrupted, cli, root):
    before = snapshot(root)
    run = cli("list", "ssd")
    assert_one_line_error(run, "ssd.msgpack")
    assert run.out == ""
    assert snapshot(root) == before


@pytest.mark.parametrize("corrupted", ["garbage", "newer-schema", "duplicate-key"], indirect=True)
@pytest.mark.parametrize("argv", [("list",), ("status",), ("show", "ssd"), ("rollback", "ssd", "1.0.0"),
                                  ("deploy", "ssd", "{a}")], ids=["list-all", "status", "show", "rollback", "deploy"])
def test_other_commands_refuse_a_corrupted_manifest(corrupted, cli, root, argv):
    before = snapshot(root)
    run = cli(*[arg.format(**corrupted) for arg in argv])
    assert_one_line_error(run)
    assert snapshot(root) == before


@pytest.mark.parametrize("corrupted", ["newer-schema"], indirect=True)
def test_cli_says_to_upgrade_for_a_newer_schema(corrupted, cli):
    assert_one_line_error(cli("list", "ssd"), "upgrade")


# -- commits: generation, history, atomic replace ---------------------------------------------

def _raw_history(root: Path) -> list[bytes]:
    """The stored events, one encoded row each (the history is stored as a stream of rows)."""
    doc = msgpack.unpackb((root / "manifests" / "ssd.msgpack").read_bytes())
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(doc["history"])
    return [pack(event) for event in unpacker]


def test_generation_increments_by_one_per_commit(repo, root, tmp_path):
    a = make_savedmodel(tmp_path / "a" / "saved_model", variant=1)
    b = make_savedmodel(tmp_path / "b" / "saved_model", variant=2)
    path = root / "manifests" / "ssd.msgpack"

    repo.deploy("ssd", a)
    assert repo.manifest("ssd").generation == 1
    repo.deploy("ssd", b)
    assert repo.manifest("ssd").generation == 2
    repo.rollback("ssd", "1.0.0")
    assert repo.manifest("ssd").generation == 3

    # Changes that commit nothing do not bump it, and leave the file as it is.
    data = path.read_bytes()
    assert repo.deploy("ssd", a).unchanged
    assert repo.rollback("ssd", "1.0.0").unchanged
    assert path.read_bytes() == data
    assert repo.manifest("ssd").generation == 3

    repo.deploy("ssd", b, force=True)  # b was rolled back from: deployed again only on purpose
    assert repo.manifest("ssd").generation == 4
    repo.set_model("ssd", metadata={"team": "vision"})
    assert repo.manifest("ssd").generation == 5
    assert [e.generation for e in repo.manifest("ssd").history] == [1, 2, 3, 4, 5]


def test_history_is_append_only_and_complete(repo, root, tmp_path):
    a = make_savedmodel(tmp_path / "a" / "saved_model", variant=1)
    b = make_savedmodel(tmp_path / "b" / "saved_model", variant=2)
    user, host = getpass.getuser(), socket.gethostname()

    repo.deploy("ssd", a, reason="initial model")
    first = _raw_history(root)
    repo.deploy("ssd", b, reason="retrained on july data")
    second = _raw_history(root)
    repo.rollback("ssd", "previous", reason="regression in recall")
    third = _raw_history(root)

    assert len(first) == 1 and len(second) == 2 and len(third) == 3
    # earlier events are unchanged byte for byte after later commits
    assert second[:1] == first
    assert third[:2] == second

    history = repo.manifest("ssd").history
    assert [(e.action, e.version, e.before, e.after, e.generation) for e in history] == [
        ("deploy", "1.0.0", None, "1.0.0", 1),
        ("deploy", "1.1.0", "1.0.0", "1.1.0", 2),
        ("rollback", "1.0.0", "1.1.0", "1.0.0", 3),
    ]
    assert [e.reason for e in history] == ["initial model", "retrained on july data", "regression in recall"]
    assert all(e.user == user and e.host == host for e in history)
    assert all(e.at for e in history)
    assert repo.manifest("ssd").current == "1.0.0"


def test_commit_is_an_atomic_replace(repo, root, tmp_path):
    a = make_savedmodel(tmp_path / "a" / "saved_model", variant=1)
    b = make_savedmodel(tmp_path / "b" / "saved_model", variant=2)
    path = root / "manifests" / "ssd.msgpack"
    repo.deploy("ssd", a)
    with open(path, "rb") as old:  # a reader that opened the manifest before the next commit
        old_inode = os.fstat(old.fileno()).st_ino
        for i in range(4):
            repo.deploy("ssd", b if i % 2 == 0 else a)
        repo.rollback("ssd", "1.0.0")
        # the commit replaced the file (a new inode); it did not rewrite it in place
        assert os.stat(path).st_ino != old_inode
        # the old reader still holds one complete manifest: the first generation
        assert mf.decode(old.read()).generation == 1
    assert repo.manifest("ssd").generation == 6
    leftovers = [name for name in os.listdir(root / "manifests") if ".tmp-" in name]
    assert leftovers == []
    assert sorted(os.listdir(root / "manifests")) == [".config.lock", "ssd.lock", "ssd.msgpack"]


# -- the model lock, held by a real second process --------------------------------------------

HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
for _ in range(600):
    time.sleep(0.1)
"""


@contextmanager
def lock_holder(lock_path: Path):
    """A separate process holding the model's flock until it is killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready, "the lock holder did not start"
        line = proc.stdout.readline()
        assert line.strip() == b"locked", (line, proc.stderr.read() if proc.poll() is not None else b"")
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        proc.stdout.close()
        proc.stderr.close()


@pytest.fixture
def two_versions(repo, root, tmp_path):
    a = make_savedmodel(tmp_path / "a" / "saved_model", variant=1)
    b = make_savedmodel(tmp_path / "b" / "saved_model", variant=2)
    repo.deploy("ssd", a)
    repo.deploy("ssd", b)
    return {"a": a, "b": b, "lock": root / "manifests" / "ssd.lock"}


@pytest.mark.parametrize("argv", [("deploy", "ssd", "{a}"), ("rollback", "ssd", "1.0.0"),
                                  ("rollback", "ssd", "previous"), ("model", "set", "ssd", "--alias", "dl")],
                         ids=["deploy", "rollback", "rollback-previous", "model-set"])
def test_lock_timeout_is_one_line_error_and_changes_nothing(two_versions, cli, root, argv):
    # Deploying a's bytes again (1.0.0's content, not current) needs no new object, so the
    # whole root, store included, must be exactly as before.
    args = [arg.format(**two_versions) for arg in argv]
    with lock_holder(two_versions["lock"]):
        before = snapshot(root)
        run = cli("--lock-timeout", "0.5", *args)
        after = snapshot(root)
    assert_one_line_error(run, "ssd.lock", "0.5")
    assert after == before
    assert Repository(root).manifest("ssd").current == "1.1.0"


def test_lock_timeout_on_new_content_commits_nothing(two_versions, cli, root, tmp_path):
    c = make_savedmodel(tmp_path / "c" / "saved_model", variant=3)
    with lock_holder(two_versions["lock"]):
        before = snapshot(root)
        run = cli("deploy", "ssd", c, "--lock-timeout", "0.5")
        after = snapshot(root)
    assert_one_line_error(run, "ssd.lock")
    outside_store = lambda snap: {k: v for k, v in snap.items() if not k.startswith("store")}  # noqa: E731
    assert outside_store(after) == outside_store(before)
    manifest = Repository(root).manifest("ssd")
    assert [v.version for v in manifest.versions] == ["1.0.0", "1.1.0"]
    assert manifest.generation == 2


def test_lock_timeout_from_the_environment(two_versions, cli, root, monkeypatch):
    monkeypatch.setenv("GAIA_CAS_LOCK_TIMEOUT", "0.5")
    with lock_holder(two_versions["lock"]):
        before = snapshot(root)
        deploy = cli("deploy", "ssd", two_versions["a"])
        rollback = cli("rollback", "ssd", "1.0.0")
        after = snapshot(root)
    for run in (deploy, rollback):
        assert_one_line_error(run, "ssd.lock", "0.5 s")
    assert after == before


def test_library_lock_timeout_raises_lock_timeout_error(two_versions, root):
    with lock_holder(two_versions["lock"]):
        with pytest.raises(LockTimeoutError) as info:
            Repository(root, lock_timeout=0.3).rollback("ssd", "1.0.0")
    assert isinstance(info.value, GaiaCasError)
    assert info.value.lock_path == str(two_versions["lock"])


def test_a_filesystem_without_locks_is_a_one_line_error_naming_the_lock(two_versions, cli, root, monkeypatch):
    import errno
    import fcntl

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    before = snapshot(root)
    run = cli("rollback", "ssd", "1.0.0")
    assert_one_line_error(run, "cannot lock", f"{root}/", "No locks available")  # whichever lock came first
    assert snapshot(root) == before


@pytest.mark.parametrize("value", ["soon", "-1", "nan", "1s"])
def test_invalid_lock_timeout_in_the_environment_is_a_clear_error(two_versions, cli, root, monkeypatch, value):
    monkeypatch.setenv("GAIA_CAS_LOCK_TIMEOUT", value)
    before = snapshot(root)
    for argv in (("deploy", "ssd", two_versions["a"]), ("rollback", "ssd", "1.0.0")):
        run = cli(*argv)
        assert_one_line_error(run)
        assert "GAIA_CAS_LOCK_TIMEOUT" in run.err, run.err
        assert value in run.err, run.err
    assert snapshot(root) == before


@pytest.mark.parametrize("value", ["-1", "nan"])
def test_invalid_lock_timeout_option_is_a_clear_error(two_versions, cli, root, value):
    before = snapshot(root)
    run = cli("--lock-timeout", value, "rollback", "ssd", "1.0.0")
    assert_one_line_error(run, "--lock-timeout must be 0 or more seconds")
    assert snapshot(root) == before


def test_lock_is_free_again_after_the_holder_is_killed(two_versions, cli, root):
    with lock_holder(two_versions["lock"]) as holder:
        assert_one_line_error(cli("--lock-timeout", "0.3", "rollback", "ssd", "1.0.0"), "ssd.lock")
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=10)
        assert holder.returncode == -signal.SIGKILL
        # the kernel dropped the dead process's flock: the next writer gets it at once
        run = cli("--lock-timeout", "5", "rollback", "ssd", "1.0.0")
        assert run.code == 0, run.err
        deploy = cli("--lock-timeout", "5", "--json", "deploy", "ssd", two_versions["b"], "--force")
        assert deploy.code == 0, deploy.err
    assert deploy.json()["version"] == "1.2.0"
    manifest = Repository(root).manifest("ssd")
    assert manifest.current == "1.2.0"
    assert manifest.generation == 4


# -- concurrent writers in real processes ------------------------------------------------------

def test_concurrent_deploys_from_three_processes_lose_nothing(root, tmp_path):
    writers, rounds = 3, 3
    sources = {(w, r): make_savedmodel(tmp_path / f"src-{w}-{r}" / "saved_model", variant=100 * w + r)
               for w in range(writers) for r in range(rounds)}

    def writer(w: int) -> list[dict]:
        results = []
        for r in range(rounds):
            run = run_launcher("--root", root, "--json", "--lock-timeout", "60", "deploy", "ssd",
                               sources[(w, r)], "--reason", f"w{w}r{r}", timeout=120)
            assert run.code == 0, run.err
            results.append(run.json())
        return results

    with ThreadPoolExecutor(max_workers=writers) as pool:
        per_writer = list(pool.map(writer, range(writers)))

    reported = [result for results in per_writer for result in results]
    assert all(not r["unchanged"] for r in reported)
    numbers = [r["version"] for r in reported]
    assert len(set(numbers)) == writers * rounds, numbers
    assert len({r["hash"] for r in reported}) == writers * rounds

    manifest = Repository(root).manifest("ssd")
    total = writers * rounds
    assert manifest.generation == total
    assert sorted(v.version for v in manifest.versions) == sorted(numbers)
    assert {v.version: v.tree for v in manifest.versions} == {r["version"]: r["hash"] for r in reported}
    # minor bumps from 1.0.0, no gaps, no duplicates
    assert sorted(numbers, key=lambda n: tuple(map(int, n.split(".")))) == [f"1.{i}.0" for i in range(total)]
    # each writer's own deploys got increasing numbers
    for results in per_writer:
        minors = [int(r["version"].split(".")[1]) for r in results]
        assert minors == sorted(minors)

    history = manifest.history
    assert [e.action for e in history] == ["deploy"] * total
    assert [e.generation for e in history] == list(range(1, total + 1))
    assert history[0].before is None
    for earlier, later in zip(history, history[1:]):
        assert later.before == earlier.after
    assert all(e.version == e.after for e in history)
    assert sorted(e.reason for e in history) == sorted(f"w{w}r{r}" for w in range(writers) for r in range(rounds))
    assert manifest.current == history[-1].after
    assert [e.version for e in history] == [v.version for v in manifest.versions]

    # the link follows the last commit, and nothing temporary is left behind
    current_tree = manifest.current_version().tree
    assert os.path.realpath(root / "models" / "ssd" / "current") == os.path.realpath(root / "store" / "trees" / current_tree)
    assert [n for n in os.listdir(root / "manifests") if ".tmp-" in n] == []
    assert [n for n in os.listdir(root / "models" / "ssd") if ".tmp-" in n] == []


DEPLOYER = """
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
from gaia_cas.repo import Repository
root, go, ready, sources = sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
repo = Repository(root, lock_timeout=60)
open(ready, "w").close()
for _ in range(3000):  # wait for the start signal, bounded
    if os.path.exists(go):
        break
    time.sleep(0.005)
else:
    sys.exit("no start signal")
results = [repo.deploy("ssd", src, reason=os.path.basename(os.path.dirname(src))) for src in sources]
print(json.dumps([[r.version, r.hash, r.unchanged] for r in results]), flush=True)
"""


def test_concurrent_deploys_started_together_get_unique_numbers(root, tmp_path):
    """Three library processes released at the same instant, each deploying three new trees."""
    writers, rounds = 3, 3
    go = tmp_path / "go"
    procs = []
    try:
        for w in range(writers):
            sources = [make_savedmodel(tmp_path / f"w{w}r{r}" / "saved_model", variant=1000 + 10 * w + r)
                       for r in range(rounds)]
            procs.append(subprocess.Popen(
                [sys.executable, "-c", DEPLOYER, str(CHECKOUT), str(root), str(go), str(tmp_path / f"ready{w}"),
                 *map(str, sources)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True))
        for w, proc in enumerate(procs):  # every process is imported and waiting
            for _ in range(3000):
                if (tmp_path / f"ready{w}").exists() or proc.poll() is not None:
                    break
                time.sleep(0.01)
        go.touch()
        outputs = []
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
            outputs.append(json.loads(out))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)

    total = writers * rounds
    reported = [item for out in outputs for item in out]
    assert not any(unchanged for _, _, unchanged in reported)
    numbers = [number for number, _, _ in reported]
    assert len(set(numbers)) == total, numbers
    manifest = Repository(root).manifest("ssd")
    assert manifest.generation == total
    assert {v.version: v.tree for v in manifest.versions} == {n: h for n, h, _ in reported}
    assert sorted(v.version for v in manifest.versions) == sorted(f"1.{i}.0" for i in range(total))
    history = manifest.history
    assert len(history) == total
    assert [e.generation for e in history] == list(range(1, total + 1))
    assert history[0].before is None
    assert all(later.before == earlier.after for earlier, later in zip(history, history[1:]))
    assert sorted(e.reason for e in history) == sorted(f"w{w}r{r}" for w in range(writers) for r in range(rounds))
    assert manifest.current == history[-1].after
    assert os.path.realpath(root / "models" / "ssd" / "current") == os.path.realpath(
        root / "store" / "trees" / manifest.current_version().tree)


def test_a_commit_that_cannot_be_flushed_says_it_is_committed(repo, root, tmp_path, monkeypatch):
    from gaia_cas import atomic
    from gaia_cas.errors import StoreError

    src = tmp_path / "s"
    make_savedmodel(src, 0)
    repo.deploy("m", src)
    make_savedmodel(src, 1)
    real = atomic.fsync_dir

    def failing(path):
        if str(path).endswith("manifests"):
            raise OSError(5, "Input/output error")
        return real(path)

    monkeypatch.setattr(atomic, "fsync_dir", failing)
    try:
        repo.deploy("m", src)
        raise AssertionError("expected a StoreError")
    except StoreError as exc:
        assert "is committed" in str(exc) and "may not survive a power loss" in str(exc)
    monkeypatch.setattr(atomic, "fsync_dir", real)
    assert repo.manifest("m").current == "1.1.0"  # visible, and the link follows it
    assert os.path.realpath(root / "models" / "m" / "current") == str(gaia_cas.resolve("m", root=root).path)
