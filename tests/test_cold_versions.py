"""Hot versions whole, cold versions as chunks: gc splits what no staying tree serves, a
rollback rebuilds it verified, and nothing is ever lost or served half-built."""

import os
from datetime import timedelta
from pathlib import Path

import pytest

from gaia_cas.errors import CorruptionError
from gaia_cas.recipes import RecipeStore, set_chunk_threshold
from gaia_cas.repo import Repository

from store_helpers import objects_under, rand_bytes, tmp_leftovers, write, xxh

MiB = 1 << 20
ZERO = timedelta(0)


def store_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in objects_under(root).values())


@pytest.fixture
def three(tmp_path):
    """Three versions of a 24 MiB weights file (threshold 4 MiB): v1, v1 with its last 2 MiB
    rewritten, v1 with 5 KB inserted in the middle; v3 current."""
    repo = Repository.init(tmp_path / "root")
    set_chunk_threshold(repo.layout, 4 * MiB)
    base = rand_bytes(24 * MiB, 5)
    tail = base[:-2 * MiB] + rand_bytes(2 * MiB, 6)
    middle = base[:12 * MiB] + rand_bytes(5000, 7) + base[12 * MiB:]
    src = tmp_path / "src"
    versions = []
    for data in (base, tail, middle):
        write(src / "variables.data", data)
        write(src / "saved_model.pb", b"graph")
        versions.append((repo.deploy("ssd", src).version, data))
    return repo, versions


def test_gc_keeps_cold_versions_as_chunks_and_every_version_rolls_back_byte_identical(three):
    repo, versions = three
    before = store_bytes(repo.root)
    repo.gc(grace=ZERO)
    recipes = RecipeStore(repo.layout)
    cold = [xxh(data) for _, data in versions[:2]]
    assert all(not repo.objects.exists(oid) and recipes.exists(oid) for oid in cold)
    assert repo.objects.exists(xxh(versions[2][1]))  # current stays whole
    after = store_bytes(repo.root)
    # current whole, plus one set of chunks, plus what the other two changed (each change
    # costs at most its bytes and the chunks it touches): not three whole copies
    assert after <= 2 * 24 * MiB + 2 * MiB + 3 * 4 * MiB < before
    for number, data in versions[:2] + versions[2:]:
        repo.rollback("ssd", number)
        served = Path(repo.resolve("ssd").path) / "variables.data"
        assert served.read_bytes() == data
        assert os.stat(served).st_nlink > 1  # a hard-link checkout again, not a private copy
    assert tmp_leftovers(repo.root) == []


def test_a_version_rebuilt_whole_goes_cold_again_once_it_is_left(three):
    repo, versions = three
    repo.gc(grace=ZERO)
    repo.rollback("ssd", versions[0][0])
    assert repo.objects.exists(xxh(versions[0][1]))
    repo.rollback("ssd", versions[2][0])
    repo.gc(grace=ZERO)
    assert not repo.objects.exists(xxh(versions[0][1]))
    repo.check_complete(repo.manifest("ssd").find(versions[0][0]).tree)


def test_a_corrupt_chunk_refuses_the_rollback_and_current_stays(three):
    repo, versions = three
    repo.gc(grace=ZERO)
    recipe = RecipeStore(repo.layout).get(xxh(versions[0][1]))
    victim = objects_under(repo.root)[recipe.chunks[3].oid]
    os.chmod(victim, 0o644)
    with open(victim, "r+b") as f:
        f.write(b"\x00\x01")
    with pytest.raises(CorruptionError, match=recipe.chunks[3].oid):
        repo.rollback("ssd", versions[0][0])
    assert repo.manifest("ssd").current == versions[2][0]
    assert (Path(repo.resolve("ssd").path) / "variables.data").read_bytes() == versions[2][1]
    assert tmp_leftovers(repo.root) == []


def test_gc_within_the_grace_keeps_everything_whole(three):
    repo, versions = three
    repo.gc()
    assert all(repo.objects.exists(xxh(data)) for _, data in versions)
    assert not os.path.isdir(repo.layout.store / "recipes")


def test_files_below_the_threshold_are_never_chunked(tmp_path):
    repo = Repository.init(tmp_path / "root")
    src = tmp_path / "m.joblib"
    for seed in (1, 2):
        write(src, rand_bytes(2 * MiB, seed))
        repo.deploy("catboost", src)
    repo.gc(grace=ZERO)
    assert not os.path.isdir(repo.layout.store / "recipes")


def test_verify_rehashes_cold_files_through_their_chunks(three):
    repo, versions = three
    repo.gc(grace=ZERO)
    report = repo.verify()
    assert report.ok, [str(p) for p in report.problems]
    assert report.checked_objects > 10  # the chunks, not only the whole current file


def test_a_corrupt_chunk_is_one_finding_naming_every_version_of_every_model_and_repair_isolates_it(three, tmp_path):
    repo, versions = three
    # a second model whose old version has the same weights as ssd's oldest version
    src = tmp_path / "other"
    write(src / "variables.data", versions[0][1])
    write(src / "saved_model.pb", b"graph")
    old = repo.deploy("mirror", src).version
    write(src / "variables.data", rand_bytes(5 * MiB, 9))
    repo.deploy("mirror", src)
    repo.gc(grace=ZERO)
    recipe = RecipeStore(repo.layout).get(xxh(versions[0][1]))
    shared = recipe.chunks[-1].oid  # the tail: v1's own, not in v2 (its tail was rewritten)
    victim = objects_under(repo.root)[shared]
    os.chmod(victim, 0o644)
    with open(victim, "r+b") as f:
        f.write(b"\x00\x01\x02")
    report = repo.verify()
    found = [p for p in report.problems if p.oid == shared]
    assert len(found) == 1 and found[0].kind == "corrupt-object"
    assert set(found[0].versions) >= {f"ssd {versions[0][0]}", f"mirror {old}"}
    repo.verify(repair=True)
    assert repo.manifest("ssd").find(versions[0][0]).broken
    assert repo.manifest("mirror").find(old).broken
    assert not repo.manifest("ssd").find(versions[2][0]).broken
    assert not repo.objects.exists(shared)  # quarantined: never served
    after = repo.verify()
    assert after.ok and after.broken_versions and all(p.resolved for p in after.problems)


def test_status_reports_the_chunk_saving_apart_from_the_file_saving(three):
    repo, versions = three
    before = repo.status().store
    assert before.chunk_saved_bytes == 0 and before.chunk_bytes == 0
    distinct = sum(len(data) for _, data in versions) + len(b"graph")
    assert before.file_saved_bytes == before.logical_bytes - distinct  # saved_model.pb stored once
    repo.gc(grace=ZERO)
    after = repo.status().store
    assert after.logical_bytes == before.logical_bytes and after.file_saved_bytes == before.file_saved_bytes
    assert after.chunk_bytes > 24 * MiB  # the cold versions' chunks
    assert after.chunk_saved_bytes >= 24 * MiB - 2 * MiB - 3 * 4 * MiB  # most of one whole copy
    assert after.used_bytes == after.bytes_on_disk - after.garbage_bytes - after.staging_bytes
    assert after.reclaimable_bytes == 0


def test_diff_names_the_byte_ranges_a_retrain_changed_hot_or_cold(three):
    repo, versions = three
    (v1, base), (v2, tail), (v3, middle) = versions
    for step in ("hot", "cold"):
        d = repo.diff("ssd", v1, v2).to_json()
        (change,) = d["changed"]
        assert change["path"] == "variables.data"
        start, end = change["ranges"][-1]
        assert end == len(tail) and start <= len(tail) - 2 * MiB  # the rewritten tail, nothing before it
        assert change["changed_bytes"] <= 2 * MiB + 4 * MiB
        (inserted,) = repo.diff("ssd", v1, v3).to_json()["changed"]
        assert len(inserted["ranges"]) == 1 and inserted["changed_bytes"] <= 5000 + 2 * 4 * MiB
        assert inserted["ranges"][0][0] <= 12 * MiB < inserted["ranges"][0][1]
        repo.gc(grace=ZERO)


def test_export_of_a_cold_version_holds_its_real_bytes(three, tmp_path):
    import tarfile

    repo, versions = three
    repo.gc(grace=ZERO)
    out = tmp_path / "v1.tar"
    repo.export("ssd", versions[0][0], out)
    with tarfile.open(out) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("variables.data"))
        assert tar.extractfile(member).read() == versions[0][1]
    assert repo.manifest("ssd").current == versions[2][0]


def test_the_format_mark_comes_with_the_first_recipe_and_a_newer_format_is_not_written_to(three):
    from gaia_cas.errors import StoreError
    from gaia_cas.recipes import store_format

    repo, versions = three
    assert store_format(repo.layout) == 1  # a store without chunks stays as it was written
    repo.gc(grace=ZERO)
    assert store_format(repo.layout) == 2
    assert (repo.layout.store / "format").read_text() == "gaia-cas store format 2\n"
    (repo.layout.store / "format").write_text("gaia-cas store format 3\n")
    assert repo.resolve("ssd").version == versions[2][0]  # still read
    with pytest.raises(StoreError, match="format 3, written by a newer gaia-cas"):
        repo.rollback("ssd", versions[1][0])
    assert repo.manifest("ssd").current == versions[2][0]


def test_hot_recent_keeps_the_newest_versions_whole(three):
    from gaia_cas.recipes import change_settings

    repo, versions = three
    change_settings(repo.layout, hot_recent=2)
    repo.gc(grace=ZERO)
    assert [repo.objects.exists(xxh(data)) for _, data in versions] == [False, True, True]


@pytest.mark.parametrize("planted", ["recipes", "shard"])
def test_a_symlinked_recipes_folder_is_refused_and_nothing_is_written_outside(three, tmp_path, planted):
    from gaia_cas.errors import GcRefusedError

    repo, versions = three
    outside = tmp_path / "outside"
    outside.mkdir()
    recipes = repo.layout.store / "recipes"
    if planted == "recipes":
        os.symlink(outside, recipes)
    else:
        recipes.mkdir()
        for oid in {xxh(data) for _, data in versions}:
            if not (recipes / oid[:2]).exists():
                os.symlink(outside, recipes / oid[:2])
    with pytest.raises(GcRefusedError, match="symlink"):
        repo.gc(grace=ZERO)
    assert list(outside.iterdir()) == []
    assert all(repo.objects.exists(xxh(data)) for _, data in versions)


def test_diff_never_writes_a_recipe_through_a_planted_symlink(three, tmp_path):
    from gaia_cas.errors import StoreError

    repo, versions = three
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, repo.layout.store / "recipes")
    with pytest.raises(StoreError, match="symlink"):
        repo.diff("ssd", versions[0][0], versions[1][0])
    assert list(outside.iterdir()) == []


def test_the_store_command_shows_and_changes_the_chunking_settings(tmp_path):
    import json
    import subprocess
    import sys

    from conftest import LAUNCHER

    root = tmp_path / "root"
    Repository.init(root)

    def cli(*args):
        return subprocess.run([sys.executable, str(LAUNCHER), "--root", str(root), *args], capture_output=True,
                              text=True, timeout=60)

    shown = json.loads(cli("--json", "store").stdout)
    assert shown == {"format": 1, "chunk_threshold": 64 * MiB, "hot_recent": 0}
    changed = json.loads(cli("--json", "store", "--chunk-threshold", "128MiB", "--hot-recent", "2").stdout)
    assert changed == {"format": 1, "chunk_threshold": 128 * MiB, "hot_recent": 2}
    assert "128" in cli("store").stdout
    for bad in (["--chunk-threshold", "1MiB"], ["--chunk-threshold", "lots"], ["--hot-recent", "-1"]):
        run = cli("store", *bad)
        assert run.returncode != 0 and run.stderr.startswith("gaia-cas: error:") and "Traceback" not in run.stderr
    assert json.loads(cli("--json", "store").stdout)["chunk_threshold"] == 128 * MiB


def test_ten_retrains_cost_at_most_two_and_a_half_copies_and_all_roll_back_identical(tmp_path):
    """The README's figure, at half the benchmark's scale: a 48 MiB file, six retrains
    rewriting its last 1 MiB, three inserting a few KiB in the middle."""
    import random

    repo = Repository.init(tmp_path / "root")
    set_chunk_threshold(repo.layout, 16 * MiB)
    rng = random.Random(4)
    size = 48 * MiB
    weights = [rng.randbytes(size)]
    for _ in range(6):
        weights.append(weights[-1][:-MiB] + rng.randbytes(MiB))
    for step in range(3):
        middle = size // 2 + step * MiB
        weights.append(weights[-1][:middle] + rng.randbytes(4096) + weights[-1][middle:])
    src = tmp_path / "src"
    numbers = []
    for data in weights:
        write(src / "variables.data", data)
        numbers.append(repo.deploy("ssd", src).version)
    repo.gc(grace=ZERO)
    assert store_bytes(repo.root) <= 2.5 * size
    for number, data in zip(numbers, weights):
        repo.rollback("ssd", number)
        assert xxh((Path(repo.resolve("ssd").path) / "variables.data").read_bytes()) == xxh(data)


def test_resolve_of_a_cold_channel_version_whose_checkout_was_removed_rebuilds_it(three):
    import shutil

    repo, versions = three
    repo.gc(grace=ZERO)
    repo.promote("ssd", versions[0][0], "canary")  # makes it hot again (rebuilt whole)
    oid = xxh(versions[0][1])
    tree = repo.layout.tree_path(repo.manifest("ssd").find(versions[0][0]).tree)
    # an operator removes the checkout and the whole copy: only the chunks are left
    os.chmod(tree, 0o755)
    for folder, dirs, _ in os.walk(tree):
        for d in dirs:
            os.chmod(os.path.join(folder, d), 0o755)
    shutil.rmtree(tree)
    repo.objects.delete(oid)
    from gaia_cas import resolve

    served = resolve("ssd", root=repo.root, channel="canary")
    assert (Path(served.path) / "variables.data").read_bytes() == versions[0][1]
