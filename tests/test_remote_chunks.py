"""Large files on an S3 remote as chunks (moto on 127.0.0.1, or $GAIA_CAS_S3_ENDPOINT): a
head-only retrain's push sends its changed chunks only, a pull downloads only the chunks the
store lacks, remote gc keeps every chunk a version needs and nothing else past the grace,
remote verify rebuilds chunked files, and a corrupt or lying chunk or recipe is refused with the
local store as before."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from conftest import snapshot
from gaia_cas.chunking import MAX_CHUNK, Chunk, Recipe, encode_recipe
from gaia_cas.errors import CorruptionError
from gaia_cas.recipes import RecipeStore, set_chunk_threshold
from gaia_cas.remote_objects import LocalChunks, fetch_tree
from gaia_cas.remotes import get
from gaia_cas.repo import Repository
from gaia_cas.s3 import S3RecipeStore
from s3_fixtures import ChunkBucket, s3_server  # noqa: F401
from store_helpers import rand_bytes, write, xxh

MiB = 1 << 20
SIZE = 24 * MiB
HEAD = 3 * MiB  # a head-only retrain rewrites the last 3 MiB (12 %)


def retrained(base: bytes, seed: int) -> bytes:
    return base[:-HEAD] + rand_bytes(HEAD, seed)


def read_version(repo: Repository, version: str, name: str = "variables.data") -> bytes:
    return (Path(repo.resolve("ssd", version=version).path) / name).read_bytes()


@pytest.fixture
def remote(tmp_path, s3_server):  # noqa: F811
    return ChunkBucket(tmp_path, s3_server)


def test_a_head_only_retrain_pushes_its_changed_chunks_and_the_recipe_only(remote):
    base = rand_bytes(SIZE, 1)
    remote.deploy(remote.trainer, base)
    (first,) = remote.trainer.remote("origin").push("ssd")
    assert SIZE <= first.bytes_sent < SIZE + MiB
    remote.deploy(remote.trainer, retrained(base, 2))
    (second,) = remote.trainer.remote("origin").push("ssd")
    assert second.versions_sent == 1
    assert second.bytes_sent <= HEAD + 8 * MiB  # the bound: changed bytes + 8 MiB
    # the large files are on the remote as recipes, never whole
    assert {xxh(base), xxh(retrained(base, 2))} <= remote.keys("recipes")
    assert not {xxh(base), xxh(retrained(base, 2))} & remote.keys("objects")
    assert remote.trainer.remote("origin").verify().problems == []


def test_chunks_the_remote_versions_reach_are_never_asked_about_even_when_old(remote, monkeypatch):
    """The refresh rule re-sends an old unreferenced upload; chunks listed by the recipes of the
    remote's versions are referenced, so a retrain pushed days later still sends only its changes."""
    from gaia_cas import remote_objects

    base = rand_bytes(SIZE, 1)
    remote.deploy(remote.trainer, base)
    remote.trainer.remote("origin").push("ssd")
    monkeypatch.setattr(remote_objects, "REFRESH_AGE", timedelta(0))  # every upload counts as old now
    remote.deploy(remote.trainer, retrained(base, 2))
    (second,) = remote.trainer.remote("origin").push("ssd")
    assert second.bytes_sent <= HEAD + 8 * MiB


def test_deploy_straight_to_the_remote_sends_a_retrain_as_its_changed_chunks(remote):
    base = rand_bytes(SIZE, 1)
    src = remote.tmp / "remote-deploy"
    write(src / "variables.data", base)
    first = remote.trainer.remote("origin").deploy("ssd", src)
    assert first.bytes_sent >= SIZE
    write(src / "variables.data", retrained(base, 5))
    second = remote.trainer.remote("origin").deploy("ssd", src)
    assert second.bytes_sent <= HEAD + 8 * MiB and second.version == "1.1.0"
    assert xxh(retrained(base, 5)) in remote.keys("recipes")


def test_a_pull_elsewhere_rebuilds_every_version_byte_identical(remote):
    base = rand_bytes(SIZE, 1)
    v1 = remote.deploy(remote.trainer, base)
    v2 = remote.deploy(remote.trainer, retrained(base, 2))
    remote.trainer.remote("origin").push("ssd")
    server = remote.store("server")
    server.remote("origin").pull("ssd", v1)
    server.remote("origin").pull("ssd")
    assert read_version(server, v2) == retrained(base, 2)
    assert read_version(server, v1) == base
    assert server.verify().problems == []


def test_several_large_files_pulled_at_once_each_rebuild_byte_identical(remote):
    """Large files are rebuilt on parallel threads into one staging: each through its own buffer."""
    src = remote.tmp / "many"
    files = {f"shard-{i}.bin": rand_bytes(6 * MiB, 10 + i) for i in range(6)}
    for name, data in files.items():
        write(src / name, data)
    remote.trainer.deploy("ssd", src)
    remote.trainer.remote("origin").push("ssd")
    assert {xxh(d) for d in files.values()} <= remote.keys("recipes")
    server = remote.store("server")
    (got,) = server.remote("origin").pull("ssd")
    for name, data in files.items():
        assert (Path(server.resolve("ssd").path) / name).read_bytes() == data


def test_a_pull_of_a_retrain_downloads_only_the_chunks_the_store_lacks(remote):
    base = rand_bytes(SIZE, 1)
    remote.deploy(remote.trainer, base)
    remote.trainer.remote("origin").push("ssd")
    server = remote.store("server")
    (got,) = server.remote("origin").pull("ssd")
    assert got.bytes_received >= SIZE
    remote.deploy(remote.trainer, retrained(base, 3))
    remote.trainer.remote("origin").push("ssd")
    (again,) = server.remote("origin").pull("ssd")  # its v1 is whole here: cut, and its chunks reused
    assert again.bytes_received <= HEAD + 8 * MiB
    assert read_version(server, again.version) == retrained(base, 3)


def test_a_damaged_local_tree_lends_nothing_and_the_pull_downloads_instead(remote):
    base = rand_bytes(SIZE, 1)
    remote.deploy(remote.trainer, base)
    remote.trainer.remote("origin").push("ssd")
    server = remote.store("server")
    server.remote("origin").pull("ssd")
    tree = server.manifest("ssd").find("1.0.0").tree
    path = server.objects.path(tree)
    path.chmod(0o644)
    path.write_bytes(b"\x93 not a tree")  # bit rot in the local version's tree
    remote.deploy(remote.trainer, retrained(base, 6))
    remote.trainer.remote("origin").push("ssd")
    (got,) = server.remote("origin").pull("ssd")
    assert got.bytes_received >= SIZE  # nothing could be reused: all downloaded, verified
    assert read_version(server, got.version) == retrained(base, 6)


def test_a_file_kept_cold_here_is_rebuilt_from_local_chunks_not_downloaded(remote):
    base = rand_bytes(SIZE, 1)
    v1 = remote.deploy(remote.trainer, base)
    remote.deploy(remote.trainer, retrained(base, 2))
    remote.trainer.remote("origin").push("ssd")
    remote.trainer.gc(grace=timedelta(0))
    trainer = remote.trainer
    assert not trainer.objects.exists(xxh(base)) and RecipeStore(trainer.layout).exists(xxh(base))
    tree = trainer.manifest("ssd").find(v1).tree
    objects, _ = get(trainer, "origin").open()
    received = [0, 0]
    with trainer.objects.staging() as staging:
        fetch_tree(trainer, objects, staging, tree, received, LocalChunks(trainer, []))
        assert received == [0, 0]  # nothing came from the remote
        with trainer.writing():
            staging.install()
    assert trainer.objects.exists(xxh(base))  # whole again, rebuilt and verified


def test_a_renamed_large_file_still_reuses_the_chunks_the_remote_has(remote):
    base = rand_bytes(SIZE, 1)
    remote.deploy(remote.trainer, base, "variables.data")
    remote.trainer.remote("origin").push("ssd")
    remote.deploy(remote.trainer, retrained(base, 4), "weights.bin")
    (pushed,) = remote.trainer.remote("origin").push("ssd")
    assert pushed.bytes_sent <= HEAD + 8 * MiB


def test_a_remote_of_whole_files_is_read_and_gains_chunks_from_then_on(remote):
    base = rand_bytes(SIZE, 1)
    set_chunk_threshold(remote.trainer.layout, 64 * MiB)  # whole, as before chunks reached the remote
    v1 = remote.deploy(remote.trainer, base)
    remote.trainer.remote("origin").push("ssd")
    assert xxh(base) in remote.keys("objects") and not remote.keys("recipes")
    set_chunk_threshold(remote.trainer.layout, 4 * MiB)
    remote.deploy(remote.trainer, retrained(base, 2))
    (pushed,) = remote.trainer.remote("origin").push("ssd")
    assert pushed.bytes_sent >= SIZE  # the remote's whole file lists no chunks: all sent once
    server = remote.store("server")
    server.remote("origin").pull("ssd", v1)
    server.remote("origin").pull("ssd")
    assert read_version(server, v1) == base and read_version(server, pushed.current) == retrained(base, 2)


def test_a_corrupt_remote_chunk_is_refused_and_reported_with_every_version_needing_it(remote, cli):
    base = rand_bytes(SIZE, 1)
    remote.deploy(remote.trainer, base)
    remote.deploy(remote.trainer, retrained(base, 2))
    remote.trainer.remote("origin").push("ssd")
    shared = RecipeStore(remote.trainer.layout).get(xxh(base)).chunks[0]  # both versions use it
    remote.put("objects", shared.oid, b"x" * shared.length)
    server = remote.store("server")
    before = snapshot(server.root)
    with pytest.raises(CorruptionError, match=shared.oid):
        server.remote("origin").pull("ssd")
    assert snapshot(server.root) == before
    report = remote.trainer.remote("origin").verify()
    bad = [p for p in report.problems if p.kind == "corrupt-object"]
    assert len(bad) == 1 and shared.oid in bad[0].detail and bad[0].oid == shared.oid
    assert sorted(bad[0].versions) == ["ssd 1.0.0", "ssd 1.1.0"]  # one finding: every version needing it


def test_a_lying_remote_recipe_rebuilds_nothing(remote):
    base = rand_bytes(SIZE, 1)
    remote.deploy(remote.trainer, base)
    remote.trainer.remote("origin").push("ssd")
    honest = RecipeStore(remote.trainer.layout).get(xxh(base))
    # real chunks of the remote, in the wrong order: every chunk verifies, the whole does not
    lie = Recipe(honest.oid, honest.size, tuple(reversed(honest.chunks)))
    remote.put("recipes", honest.oid, encode_recipe(lie))
    server = remote.store("server")
    before = snapshot(server.root)
    with pytest.raises(CorruptionError, match="do not rebuild it"):
        server.remote("origin").pull("ssd")
    assert snapshot(server.root) == before
    # a recipe whose size is not its file's (the tree gives the size) is refused before a download
    short = Recipe(honest.oid, honest.size - honest.chunks[-1].length, honest.chunks[:-1])
    remote.put("recipes", honest.oid, encode_recipe(short))
    with pytest.raises(CorruptionError, match="its tree"):
        server.remote("origin").pull("ssd")
    # a recipe naming another file under this file's key
    other = Recipe("0" * 32, honest.size, honest.chunks)
    remote.put("recipes", honest.oid, encode_recipe(other))
    with pytest.raises(CorruptionError, match="describes file"):
        server.remote("origin").pull("ssd")
    assert snapshot(server.root) == before


def test_a_corrupt_local_file_is_never_cut_and_sent(remote, cli):
    base = rand_bytes(SIZE, 1)
    remote.deploy(remote.trainer, base)
    path = remote.trainer.objects.path(xxh(base))
    path.chmod(0o644)
    with open(path, "r+b") as f:
        f.seek(SIZE // 2)
        f.write(b"rot")
    with pytest.raises(CorruptionError, match="does not match its hash"):
        remote.trainer.remote("origin").push("ssd")
    assert not remote.keys("recipes") and not remote.keys("manifests")


def test_remote_gc_keeps_every_chunk_a_version_needs_and_drops_the_rest_past_the_grace(remote):
    base = rand_bytes(SIZE, 1)
    remote.deploy(remote.trainer, base)
    remote.deploy(remote.trainer, retrained(base, 2))
    remote.trainer.remote("origin").push("ssd")
    rem = remote.trainer.remote("origin")
    kept = rem.gc(grace=timedelta(0))
    assert kept.deleted == 0 and list(kept.recipes) == [] and rem.verify().problems == []
    old = RecipeStore(remote.trainer.layout).get(xxh(base))
    new = RecipeStore(remote.trainer.layout).get(xxh(retrained(base, 2)))
    only_old = {c.oid for c in old.chunks} - {c.oid for c in new.chunks}
    assert only_old
    rem.cleanup(["ssd"], keep=1)
    done = rem.gc(grace=timedelta(0))
    assert [oid for oid, _ in done.recipes] == [xxh(base)]
    assert only_old <= {oid for oid, _ in done.doomed}
    assert xxh(base) not in remote.keys("recipes") and not only_old & remote.keys("objects")
    assert {c.oid for c in new.chunks} <= remote.keys("objects")
    server = remote.store("server")
    server.remote("origin").pull("ssd")
    assert read_version(server, "1.1.0") == retrained(base, 2)


def test_remote_gc_reads_recipes_after_the_manifests_so_a_push_meanwhile_keeps_its_chunks(remote, monkeypatch):
    """gc lists first; a push of a retrain (reusing the remote's chunks) and a cleanup of the
    version that first had them land between the listing and gc's read of the manifests: the new
    recipe is not in gc's listing, but gc reads it and keeps every chunk it names."""
    base = rand_bytes(SIZE, 1)
    remote.deploy(remote.trainer, base)
    remote.trainer.remote("origin").push("ssd")
    remote.deploy(remote.trainer, retrained(base, 2))
    real = S3RecipeStore.inventory
    meanwhile = []

    def push_and_cleanup_after_listing(self):
        listed = list(real(self))
        if not meanwhile:
            meanwhile.append(remote.trainer.remote("origin").push("ssd"))
            remote.trainer.remote("origin").cleanup(["ssd"], keep=1)
        return iter(listed)

    monkeypatch.setattr(S3RecipeStore, "inventory", push_and_cleanup_after_listing)
    remote.trainer.remote("origin").gc(grace=timedelta(0))
    monkeypatch.setattr(S3RecipeStore, "inventory", real)
    assert meanwhile and meanwhile[0][0].versions_sent == 1
    assert remote.trainer.remote("origin").verify().problems == []
    server = remote.store("server")
    server.remote("origin").pull("ssd")
    assert read_version(server, "1.1.0") == retrained(base, 2)


def test_remote_gc_deletes_nothing_when_a_reachable_recipe_is_unreadable(remote, cli):
    base = rand_bytes(SIZE, 1)
    remote.deploy(remote.trainer, base)
    remote.trainer.remote("origin").push("ssd")
    remote.put("recipes", xxh(base), b"\xc1 not a recipe")
    from gaia_cas.remote_gc import RemoteGcRefused

    before = remote.keys("objects")
    with pytest.raises(RemoteGcRefused, match="deleted nothing"):
        remote.trainer.remote("origin").gc(grace=timedelta(0))
    assert remote.keys("objects") == before


def test_the_cli_reports_chunked_push_pull_verify_and_gc_in_one_line_each(remote, cli, tmp_path, root):
    repo = Repository(root)
    set_chunk_threshold(repo.layout, 4 * MiB)
    assert cli("remote", "add", "origin", remote.url, "--endpoint", remote.endpoint).code == 0
    src = tmp_path / "cli-src"
    write(src / "variables.data", rand_bytes(SIZE, 7))
    assert cli("deploy", "ssd", src).code == 0
    (pushed,) = cli("push", "ssd", "--json").json()["pushed"]
    assert pushed["bytes_sent"] >= SIZE
    write(src / "variables.data", retrained(rand_bytes(SIZE, 7), 8))
    assert cli("deploy", "ssd", src).code == 0
    (again,) = cli("push", "ssd", "--json").json()["pushed"]
    assert again["bytes_sent"] <= HEAD + 8 * MiB
    assert cli("verify", "--remote", "origin").code == 0
    remote.put("objects", RecipeStore(repo.layout).get(xxh(rand_bytes(SIZE, 7))).chunks[0].oid, b"bad")
    bad = cli("verify", "--remote", "origin")
    assert bad.code != 0 and "chunk" in bad.out + bad.err
    gc = cli("gc", "--remote", "origin", "--grace", "0s", "--dry-run", "--json").json()
    assert gc["recipes"] == [] and gc["deleted"] == 0


def test_chunk_sizes_on_the_remote_are_bounded(remote):
    base = rand_bytes(SIZE, 1)
    remote.deploy(remote.trainer, base)
    remote.trainer.remote("origin").push("ssd")
    recipe = remote.recipes(remote.trainer).get(xxh(base))
    assert recipe == RecipeStore(remote.trainer.layout).get(xxh(base))
    assert all(c.length <= MAX_CHUNK for c in recipe.chunks) and sum(c.length for c in recipe.chunks) == SIZE
    assert isinstance(recipe.chunks[0], Chunk)


# -- verify --remote --repair: mending the remote from this store's good bytes ----------------

def test_repair_re_uploads_a_corrupt_chunk_from_the_local_whole_file(remote, cli, root):
    base = rand_bytes(SIZE, 1)
    remote.deploy(remote.trainer, base)
    remote.trainer.remote("origin").push("ssd")
    chunk = RecipeStore(remote.trainer.layout).get(xxh(base)).chunks[1]
    remote.put("objects", chunk.oid, b"y" * chunk.length)
    assert not remote.trainer.remote("origin").verify().ok
    mended = remote.trainer.remote("origin").verify(repair=True)
    assert mended.ok and mended.repaired and [p.oid for p in mended.problems] == [chunk.oid]
    assert "re-uploaded" in mended.problems[0].action
    assert remote.trainer.remote("origin").verify().problems == []
    server = remote.store("server")
    server.remote("origin").pull("ssd")
    assert read_version(server, "1.0.0") == base


def test_repair_replaces_a_lying_recipe_and_a_corrupt_whole_object_and_a_tree(remote):
    base = rand_bytes(SIZE, 1)
    remote.deploy(remote.trainer, base)
    remote.trainer.remote("origin").push("ssd")
    honest = RecipeStore(remote.trainer.layout).get(xxh(base))
    remote.put("recipes", honest.oid, encode_recipe(Recipe(honest.oid, honest.size, tuple(reversed(honest.chunks)))))
    remote.put("objects", xxh(b"graph"), b"graft")  # saved_model.pb, a small file kept whole
    tree = remote.trainer.manifest("ssd").find("1.0.0").tree
    remote.put("objects", tree, b"\x93 not a tree")
    assert len(remote.trainer.remote("origin").verify().problems) == 1  # the tree hides what is under it
    first = remote.trainer.remote("origin").verify(repair=True)
    assert first.ok
    second = remote.trainer.remote("origin").verify(repair=True)  # now the files under it are checked
    assert second.ok and {p.oid for p in second.problems} == {honest.oid, xxh(b"graph")}
    assert remote.trainer.remote("origin").verify().problems == []
    assert remote.recipes(remote.trainer).get(honest.oid) == honest


def test_repair_without_the_bytes_here_leaves_the_problem_and_changes_nothing(remote, cli, root):
    base = rand_bytes(SIZE, 1)
    remote.deploy(remote.trainer, base)
    remote.trainer.remote("origin").push("ssd")
    chunk = RecipeStore(remote.trainer.layout).get(xxh(base)).chunks[0]
    remote.put("objects", chunk.oid, b"z" * chunk.length)
    assert cli("remote", "add", "origin", remote.url, "--endpoint", remote.endpoint).code == 0
    before = remote.keys("objects")
    run = cli("verify", "--remote", "origin", "--repair", "--json")  # this root never had the model
    doc = run.json()
    assert run.code == 1 and not doc["ok"] and doc["repaired"]
    assert doc["problems"][0]["oid"] == chunk.oid and "not mended" in doc["problems"][0]["action"]
    assert remote.keys("objects") == before
    fixed = remote.trainer.remote("origin").verify(repair=True)
    assert fixed.ok
