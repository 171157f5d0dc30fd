"""A manifest is never written that its own decoder would refuse: encoding checks the decode
limits first (one definition, in gaia_cas.codec), and every user-given value is checked before
anything is written, with a one-line error naming the field."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import assert_one_line_error, make_savedmodel, snapshot
from gaia_cas import codec
from gaia_cas.errors import InvalidInputError
from gaia_cas.manifest import Manifest, Version, decode, encode, record

TREE = "0" * 32


def _manifest_with(metadata: dict) -> Manifest:
    m = Manifest("m")
    m.versions.append(Version("1.0.0", "20250101_000000", "2025-01-01T00:00:00+00:00", TREE, "directory", None,
                              1, 1, "unknown", metadata=metadata))
    m.current = m.highest = "1.0.0"
    record(m, "deploy", version="1.0.0", before=None, at="2025-01-01T00:00:00+00:00", user=None, host=None,
           reason=None)
    return m


@pytest.mark.parametrize("value, fragment", [
    ("x" * ((1 << 20) + 1), "a text of 1048577 bytes"),
    (2 ** 64, "out of range"),
    (-(2 ** 63) - 1, "out of range"),
], ids=["text-over-1-MiB", "int-2**64", "int-below-int64"])
def test_encode_refuses_what_decode_would_refuse_naming_the_field(value, fragment):
    m = _manifest_with({"big": {"inner": value}})
    with pytest.raises(InvalidInputError) as info:
        encode(m)
    message = str(info.value)
    assert "'metadata.big.inner'" in message and fragment in message and "\n" not in message


def test_encode_refuses_nesting_deeper_than_the_limit():
    deep = []
    for _ in range(codec.MAX_DEPTH + 5):
        deep = [deep]
    with pytest.raises(InvalidInputError, match="nested deeper"):
        encode(_manifest_with({"deep": deep}))


def test_values_at_the_limits_round_trip():
    m = _manifest_with({"text": "x" * (1 << 20), "top": 2 ** 64 - 1, "bottom": -(2 ** 63)})
    again = decode(encode(m))
    assert again.versions[0].metadata == m.versions[0].metadata


def test_the_decoder_uses_the_same_limits():
    """One definition: what the encoder allows, the decoder reads back -- and one byte more fails."""
    import msgpack

    ok = msgpack.packb(["x" * codec.MAX_STR], use_bin_type=True)
    codec.unpack(ok, "t", **codec.ROW_LIMITS)
    with pytest.raises(Exception):
        codec.unpack(msgpack.packb(["x" * (codec.MAX_STR + 1)], use_bin_type=True), "t", **codec.ROW_LIMITS)


def test_a_cleanup_of_many_versions_leaves_a_readable_history():
    """The history was decoded with a 64-element array limit: a cleanup removing 65 versions
    wrote a history no reader could decode. The history now shares the rows' limits."""
    m = _manifest_with({})
    record(m, "cleanup", version=None, before="1.0.0", at="2025-01-02T00:00:00+00:00", user=None, host=None,
           reason=None, details={"removed": [f"0.{i}.0" for i in range(200)]})
    assert len(decode(encode(m)).history) == 2


def test_import_legacy_of_a_2_mib_string_skips_that_version_and_the_store_stays_readable(cli, root, tmp_path, repo):
    legacy = tmp_path / "legacy"
    for folder, notes in (("v1.0_20250711_143245", "short"), ("v1.1_20250712_101010", "y" * (2 << 20))):
        make_savedmodel(legacy / "dl_model" / "versions" / folder / "saved_model", int(folder[3]))
        (legacy / "dl_model" / "versions" / folder / "metadata.json").write_text(json.dumps({"notes": notes}))
    run = cli("import-legacy", legacy, "--json")
    assert run.code == 0, run.err
    doc = run.json()["models"][0]
    assert [v["legacy"] for v in doc["imported"]] == ["v1.0_20250711_143245"]
    (skipped,) = [s for s in doc["skipped"] if s["legacy"] == "v1.1_20250712_101010"]
    assert "'notes'" in skipped["why"] and "2097152 bytes" in skipped["why"]
    # the manifest reads back, and gc and list work store-wide
    assert repo.manifest("ssd").current == "1.0.0"
    assert cli("gc", "--dry-run").code == 0
    assert cli("list").code == 0


def test_deploy_meta_integer_out_of_range_fails_before_any_write(cli, root, tmp_path):
    src = make_savedmodel(tmp_path / "src" / "saved_model")
    assert cli("deploy", "m", src).code == 0
    other = make_savedmodel(tmp_path / "src2" / "saved_model", variant=7)
    before = snapshot(root)
    run = cli("deploy", "m", other, "--meta", "n=123456789012345678901234567890")
    assert_one_line_error(run, "--meta", "'n'", "out of range")
    after = snapshot(root)
    assert {k: v for k, v in after.items() if not k.startswith("logs")} == \
        {k: v for k, v in before.items() if not k.startswith("logs")}


def test_model_set_meta_too_large_is_one_line_and_writes_nothing(cli, root, tmp_path):
    src = make_savedmodel(tmp_path / "src" / "saved_model")
    assert cli("deploy", "m", src).code == 0
    before = snapshot(root)
    run = cli("model", "set", "m", "--meta", "k=" + json.dumps([[[[1]]]]), "--meta", f"n={2 ** 70}")
    assert_one_line_error(run, "--meta", "'n'")
    assert snapshot(root) == before


def test_api_deploy_with_unencodable_metadata_installs_nothing(repo, root, tmp_path):
    src = make_savedmodel(tmp_path / "src" / "saved_model")
    repo.deploy("m", src)
    before = snapshot(root)
    other = make_savedmodel(tmp_path / "src2" / "saved_model", variant=9)
    with pytest.raises(InvalidInputError, match="'n'"):
        repo.deploy("m", other, metadata={"n": 10 ** 30})
    assert snapshot(root) == before


# -- numbers JSON cannot carry -------------------------------------------------------------------

@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_a_number_that_is_not_finite_is_refused(value):
    with pytest.raises(InvalidInputError) as info:
        codec.check_value({"threshold": value}, "--meta")
    assert "threshold" in str(info.value) and "finite" in str(info.value)


def test_meta_nan_is_kept_as_the_text_it_was_and_json_output_stays_json(cli, root, tmp_path):
    src = make_savedmodel(tmp_path / "m")
    assert cli("deploy", "ssd", src, "--meta", "thr=NaN", "--meta", "big=Infinity").code == 0
    shown = cli("--json", "show", "ssd")
    assert shown.code == 0
    doc = json.loads(shown.out)  # strict: NaN would not parse back into the same document
    assert doc["metadata"]["thr"] == "NaN" and doc["metadata"]["big"] == "Infinity"
    json.dumps(doc, allow_nan=False)


def test_model_set_meta_infinity_from_the_api_is_one_error_and_writes_nothing(repo, root, tmp_path):
    repo.deploy("ssd", make_savedmodel(tmp_path / "m"))
    before = snapshot(root)
    with pytest.raises(InvalidInputError):
        repo.set_model("ssd", metadata={"thr": float("inf")})
    assert snapshot(root) == before
