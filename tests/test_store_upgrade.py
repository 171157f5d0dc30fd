"""`gaia-cas store --upgrade`: a store written before chunks (format 1, no `store/format`) is read
as it is by every read command, and marked format 2 only when asked (or by its next write that
needs it, the first recipe); a second run says so, and a newer format is refused untouched."""

import json
from datetime import timedelta

import pytest

from gaia_cas.errors import StoreError
from gaia_cas.recipes import FORMAT, store_format
from gaia_cas.repo import Repository

from conftest import assert_one_line_error, lock_held_elsewhere, run_launcher, snapshot
from store_helpers import rand_bytes, write

MiB = 1 << 20


@pytest.fixture
def old_store(tmp_path):
    """A store as a gaia-cas before chunks wrote it: two versions, whole objects only, no store/format."""
    root = tmp_path / "root"
    repo = Repository.init(root)
    for seed in (1, 2):
        write(tmp_path / "src" / "weights.bin", rand_bytes(1 * MiB, seed))
        write(tmp_path / "src" / "saved_model.pb", b"graph %d" % seed)
        repo.deploy("ssd", tmp_path / "src", reason=f"retrain {seed}")
    repo.gc(grace=timedelta(0))  # nothing large enough to chunk: the store stays format 1
    assert not (root / "store" / "format").exists() and not (root / "store" / "recipes").exists()
    return root


def gaia(root, *args):
    return run_launcher("--root", root, *args, timeout=60)


READ_COMMANDS = (
    ("list",), ("list", "ssd"), ("status",), ("show", "ssd"), ("history", "ssd"), ("diff", "ssd", "1.0.0", "1.1.0"),
    ("logs",), ("store",), ("--json", "store"), ("verify",), ("gc", "--dry-run"),
)


def test_an_old_store_is_read_unchanged_by_every_read_command(old_store):
    before = snapshot(old_store)
    for argv in READ_COMMANDS:
        run = gaia(old_store, *argv)
        assert run.code == 0, (argv, run.err)
        assert snapshot(old_store) == before, argv
    assert json.loads(gaia(old_store, "--json", "store").out)["format"] == 1
    assert Repository(old_store).resolve("ssd").version == "1.1.0"


def test_upgrade_marks_format_2_then_says_already(old_store):
    run = gaia(old_store, "store", "--upgrade")
    assert run.code == 0, run.err
    assert run.out.splitlines()[0] == f"upgraded the store from format 1 to {FORMAT}"
    assert (old_store / "store" / "format").read_text() == f"gaia-cas store format {FORMAT}\n"
    assert not [p for p in (old_store / "store").iterdir() if ".tmp-" in p.name]  # written by rename, nothing left
    after = snapshot(old_store)
    again = gaia(old_store, "store", "--upgrade")
    assert again.code == 0 and again.out.splitlines()[0] == f"already format {FORMAT}: nothing to upgrade"
    assert snapshot(old_store) == after  # idempotent: the second run writes nothing
    doc = json.loads(gaia(old_store, "--json", "store", "--upgrade").out)
    assert doc == {"format": FORMAT, "chunk_threshold": 64 * MiB, "hot_recent": 0, "format_before": FORMAT,
                   "upgraded": False}
    # every version still reads and rolls back as before
    assert gaia(old_store, "rollback", "ssd", "1.0.0").code == 0
    assert Repository(old_store).resolve("ssd").version == "1.0.0"


def test_upgrade_through_the_library_reports_before_and_after(old_store):
    repo = Repository(old_store)
    info = repo.store_settings(upgrade=True)
    assert (info["format_before"], info["format"], info["upgraded"]) == (1, FORMAT, True)
    assert store_format(repo.layout) == FORMAT
    assert repo.store_settings(upgrade=True)["upgraded"] is False
    assert "upgraded" not in repo.store_settings()  # a plain read says nothing of upgrading


def test_upgrade_in_json_from_format_1(old_store):
    doc = json.loads(gaia(old_store, "--json", "store", "--upgrade").out)
    assert (doc["format_before"], doc["format"], doc["upgraded"]) == (1, FORMAT, True)


def test_a_newer_format_is_refused_and_the_store_is_unchanged(old_store):
    (old_store / "store" / "format").write_text("gaia-cas store format 99\n")
    before = snapshot(old_store)
    for argv in (("store", "--upgrade"), ("store", "--upgrade", "--chunk-threshold", "128MiB")):
        assert_one_line_error(gaia(old_store, *argv), "format 99", "newer gaia-cas")
        assert snapshot(old_store) == before
    with pytest.raises(StoreError, match="format 99"):
        Repository(old_store).store_settings(upgrade=True)
    assert snapshot(old_store) == before
    assert json.loads(gaia(old_store, "--json", "store").out)["format"] == 99  # still read


def test_a_damaged_format_line_is_refused_not_overwritten(old_store):
    (old_store / "store" / "format").write_text("not a format\n")
    before = snapshot(old_store)
    assert_one_line_error(gaia(old_store, "store", "--upgrade"), "store/format")
    assert snapshot(old_store) == before


def test_upgrade_waits_for_the_store_barrier_and_writes_nothing_without_it(old_store):
    """gc holds the barrier exclusively: the upgrade times out with one line, still format 1."""
    with lock_held_elsewhere(old_store / "store" / "gc.lock"):
        run = gaia(old_store, "--lock-timeout", "0.3", "store", "--upgrade")
    assert run.code != 0 and run.err.startswith("gaia-cas: error:") and "Traceback" not in run.err
    assert not (old_store / "store" / "format").exists()
    assert gaia(old_store, "store", "--upgrade").code == 0
    assert (old_store / "store" / "format").exists()
