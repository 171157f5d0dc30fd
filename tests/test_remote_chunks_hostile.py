"""Large files on an S3 remote as chunks, under attack: a co-tenant of the bucket writing lying
or bloated recipes and chunks, a local store whose bytes rotted, an interrupted pull, a remote
gc racing a push. Each failure is refused with bounded work, the local store as before, and
each push still leaves the remote able to rebuild every version it reaches."""

from __future__ import annotations

import threading
import tracemalloc
from datetime import timedelta
from pathlib import Path

import msgpack
import pytest

from conftest import assert_one_line_error, snapshot
from gaia_cas.chunking import FORMAT, MAX_CHUNK, VERSION, Chunk, Recipe, encode_recipe
from gaia_cas.errors import CorruptionError
from gaia_cas.recipes import RecipeStore, describe, set_chunk_threshold
from gaia_cas.repo import Repository
from gaia_cas.s3 import S3ObjectStore, S3RecipeStore
from s3_fixtures import ChunkBucket, s3_server  # noqa: F401
from store_helpers import rand_bytes, tmp_leftovers, write, xxh

MiB = 1 << 20
SIZE = 12 * MiB
HEAD = 2 * MiB


def retrained(base: bytes, seed: int) -> bytes:
    return base[:-HEAD] + rand_bytes(HEAD, seed)


def read_version(repo: Repository, version: str | None = None) -> bytes:
    return (Path(repo.resolve("ssd", version=version).path) / "variables.data").read_bytes()


@pytest.fixture
def bucket(tmp_path, s3_server):  # noqa: F811
    return ChunkBucket(tmp_path, s3_server)


def pushed_base(bucket) -> tuple[bytes, Recipe]:
    base = rand_bytes(SIZE, 1)
    bucket.deploy(bucket.trainer, base)
    bucket.trainer.remote("origin").push("ssd")
    return base, RecipeStore(bucket.trainer.layout).get(xxh(base))


# -- recipes a co-tenant wrote -------------------------------------------------------------

def test_a_remote_recipe_naming_a_chunk_larger_than_any_chunk_is_refused_before_it_is_downloaded(bucket, cli,
                                                                                                monkeypatch):
    """A recipe of one 12 MiB "chunk", and a 12 MiB object under that chunk's key: a pull must
    not read it into memory to find out (a recipe's chunk is at most MAX_CHUNK bytes)."""
    base, honest = pushed_base(bucket)
    fake = xxh(b"not a chunk")
    bucket.put("objects", fake, rand_bytes(SIZE, 9))
    bucket.put("recipes", honest.oid, encode_recipe(Recipe(honest.oid, SIZE, (Chunk(fake, SIZE),))))
    asked = []
    real = S3ObjectStore.read

    def read(self, oid, limit):
        asked.append(limit)
        return real(self, oid, limit)

    monkeypatch.setattr(S3ObjectStore, "read", read)
    server = bucket.store("server")
    before = snapshot(server.root)
    with pytest.raises(CorruptionError, match="largest chunk"):
        server.remote("origin").pull("ssd")
    assert snapshot(server.root) == before and tmp_leftovers(server.root) == []
    assert SIZE not in asked  # the lying chunk was never asked for
    report = bucket.trainer.remote("origin").verify()  # verify reads no such chunk either
    assert SIZE not in asked and any("largest chunk" in p.detail for p in report.problems)
    run = cli("pull", "ssd", "--remote", "origin", root_dir=server.root)
    assert_one_line_error(run, "largest chunk")


def test_a_remote_recipe_that_is_a_msgpack_bomb_is_refused_without_decoding_it(bucket, monkeypatch, cli):
    """2 MiB of empty msgpack arrays under a valid file oid decode into ~2 M Python lists; a
    recipe of a 12 MiB file is never more than a few KiB, so it is refused by its size."""
    base, honest = pushed_base(bucket)
    bomb = msgpack.packb([FORMAT, VERSION, honest.oid, SIZE, [[]] * (2 * MiB)])
    bucket.put("recipes", honest.oid, bomb)
    server = bucket.store("server")
    before = snapshot(server.root)
    tracemalloc.start()
    try:
        with pytest.raises(CorruptionError, match=f"recipe of file {honest.oid}"):
            server.remote("origin").pull("ssd")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 32 * MiB, f"refusing the recipe took {peak / MiB:.0f} MiB"
    assert snapshot(server.root) == before
    from gaia_cas.remote_gc import RemoteGcRefused

    with pytest.raises(RemoteGcRefused, match="deleted nothing"):
        bucket.trainer.remote("origin").gc(grace=timedelta(0))
    assert_one_line_error(cli("pull", "ssd", root_dir=server.root), f"recipe of file {honest.oid}", "refused")
    assert_one_line_error(cli("gc", "--remote", "origin", "--grace", "0s", root_dir=bucket.trainer.root),
                          "deleted nothing")
    assert snapshot(server.root) == before


def test_a_remote_recipe_of_many_tiny_chunks_is_refused_before_any_chunk_is_asked_for(bucket, monkeypatch):
    """The chunks of a recipe cost one request each: a recipe listing far more chunks than its
    file's size allows (at least MIN_CHUNK bytes each but the last) is refused up front."""
    base, honest = pushed_base(bucket)
    tiny = tuple(Chunk(xxh(base[i:i + 4096]), 4096) for i in range(0, 256 * 4096, 4096))
    rest = tuple(Chunk(xxh(base[i:i + MAX_CHUNK]), len(base[i:i + MAX_CHUNK])) for i in range(MiB, SIZE, MAX_CHUNK))
    bucket.put("recipes", honest.oid, encode_recipe(Recipe(honest.oid, SIZE, tiny + rest)))
    asked = []
    real = S3ObjectStore.read
    monkeypatch.setattr(S3ObjectStore, "read", lambda self, oid, limit: asked.append(oid) or real(self, oid, limit))
    server = bucket.store("server")
    with pytest.raises(CorruptionError, match=f"recipe of file {honest.oid}"):
        server.remote("origin").pull("ssd")
    assert not {c.oid for c in tiny} & set(asked)


def test_a_bad_remote_recipe_of_an_older_version_does_not_stop_a_push(bucket, cli):
    """The recipe a push reads to know which chunks the remote has is a hint: when it does not
    read as a recipe, the push asks about the chunks instead, and the retrain still goes up."""
    base, honest = pushed_base(bucket)
    bucket.put("recipes", honest.oid, b"\xc1 rot")
    new = retrained(base, 2)
    bucket.deploy(bucket.trainer, new)
    (pushed,) = bucket.trainer.remote("origin").push("ssd")
    assert pushed.versions_sent == 1 and pushed.bytes_sent <= HEAD + 8 * MiB  # HEADs found the shared chunks
    server = bucket.store("server")
    server.remote("origin").pull("ssd")
    assert read_version(server) == new
    problems = bucket.trainer.remote("origin").verify().problems
    assert [p.oid for p in problems] == [honest.oid]  # the bad recipe is still reported, once


# -- local bytes that rotted -----------------------------------------------------------------

def test_a_pull_reusing_a_rotten_local_whole_file_downloads_the_chunk_instead(bucket):
    """The server's copy of v1 rotted after its recipe was cut; a pull of the retrain must not
    rebuild from the rotten range (it would fail the whole pull): it downloads that chunk."""
    base, honest = pushed_base(bucket)
    server = bucket.store("server")
    server.remote("origin").pull("ssd")
    describe(server.objects, RecipeStore(server.layout), xxh(base))  # cut once, as a pull or push does
    path = server.objects.path(xxh(base))
    path.chmod(0o644)
    with open(path, "r+b") as f:  # rot inside the first chunk, which the retrain shares
        f.seek(10)
        f.write(b"rot")
    new = retrained(base, 2)
    bucket.deploy(bucket.trainer, new)
    bucket.trainer.remote("origin").push("ssd")
    (got,) = server.remote("origin").pull("ssd")
    assert read_version(server) == new
    assert got.bytes_received >= honest.chunks[0].length
    assert tmp_leftovers(server.root) == []


def test_a_pull_reusing_a_rotten_local_chunk_downloads_it_instead(bucket):
    base, honest = pushed_base(bucket)
    v2 = bucket.deploy(bucket.trainer, retrained(base, 2))
    bucket.trainer.remote("origin").push("ssd")
    server = bucket.store("server")
    server.remote("origin").pull("ssd", "1.0.0")
    server.remote("origin").pull("ssd")
    server.gc(grace=timedelta(0))  # v1 goes cold: chunks and recipe
    assert not server.objects.exists(xxh(base))
    shared = honest.chunks[0]
    path = server.objects.path(shared.oid)
    path.chmod(0o644)
    path.write_bytes(b"x" * shared.length)
    new = retrained(base, 3)
    bucket.deploy(bucket.trainer, new)
    bucket.trainer.remote("origin").push("ssd")
    (got,) = server.remote("origin").pull("ssd")
    assert read_version(server) == new and got.version != v2


# -- interrupted ---------------------------------------------------------------------------

def test_a_pull_interrupted_in_the_middle_of_a_chunked_rebuild_leaves_the_store_as_before(bucket, monkeypatch):
    """Ctrl-C (a real SIGINT to the main thread) while a chunk of the retrain downloads: the
    pull stops, nothing is installed, no staging is left behind, and a later pull completes."""
    import signal

    base, honest = pushed_base(bucket)
    server = bucket.store("server")
    server.remote("origin").pull("ssd")
    new = retrained(base, 2)
    bucket.deploy(bucket.trainer, new)
    bucket.trainer.remote("origin").push("ssd")
    new_chunks = {c.oid for c in RecipeStore(bucket.trainer.layout).get(xxh(new)).chunks} - {
        c.oid for c in honest.chunks}
    main = threading.main_thread().ident
    real = S3ObjectStore.read
    sent = []

    def read(self, oid, limit):
        if oid in new_chunks and not sent:
            sent.append(oid)
            signal.pthread_kill(main, signal.SIGINT)
        return real(self, oid, limit)

    monkeypatch.setattr(S3ObjectStore, "read", read)
    before = snapshot(server.root)
    with pytest.raises(KeyboardInterrupt):
        server.remote("origin").pull("ssd")
    assert sent
    assert snapshot(server.root) == before and tmp_leftovers(server.root) == []
    monkeypatch.setattr(S3ObjectStore, "read", real)
    server.remote("origin").pull("ssd")
    assert read_version(server) == new


# -- remote gc racing a push -----------------------------------------------------------------

class Aged:
    """Remote gc and a push that agree on what is old, without waiting a day: everything up to
    ``mark`` counts as older than gc's grace and older than the push's refresh age; everything
    uploaded since (a second later at least: S3 times are whole seconds) is young to both."""

    def __init__(self, bucket, monkeypatch):
        import time
        from datetime import datetime, timezone

        from gaia_cas import remote_objects

        self.bucket = bucket
        self.mark = datetime.now(timezone.utc)
        time.sleep(1.1)
        monkeypatch.setattr(remote_objects, "REFRESH_AGE", timedelta(seconds=1))

    def gc(self, repo: Repository):
        from gaia_cas.remote_gc import gc_remote

        return gc_remote(repo.remote("origin").ctx, "origin", grace=timedelta(0), now=self.mark)


def janitor(bucket) -> Repository:
    """Another host working on the same remote."""
    path = bucket.tmp / "janitor"
    if not path.exists():
        Repository.init(path).add_remote("origin", bucket.url, endpoint=bucket.endpoint)
    return Repository(path)


def predecessor_then_other(bucket) -> tuple[bytes, Recipe]:
    """v1 (the weights a retrain starts from), then v2 of unrelated weights, the remote's
    current: a cleanup keeping one drops v1, and with it every chunk only v1 had."""
    base, honest = pushed_base(bucket)
    bucket.deploy(bucket.trainer, rand_bytes(SIZE, 50))
    bucket.trainer.remote("origin").push("ssd")
    return base, honest


@pytest.mark.parametrize("step", ["chunk", "recipe", "swap"])
def test_a_cleanup_and_gc_at_any_step_of_a_push_of_a_retrain_leave_every_version_whole(bucket, monkeypatch, step):
    """The retrain's push relies on the chunks of its predecessor's recipe; after one of its
    chunks, after its recipe, or just before its swap, a cleanup drops the predecessor and gc
    deletes everything old that nothing reaches: the push starts again, sends what was lost,
    and the remote rebuilds the retrain."""
    from gaia_cas.s3 import S3ManifestStore

    base, honest = predecessor_then_other(bucket)
    new = retrained(base, 2)
    bucket.deploy(bucket.trainer, new)
    new_chunks = {c.oid for c in describe(bucket.trainer.objects, RecipeStore(bucket.trainer.layout),
                                          xxh(new)).chunks}
    aged = Aged(bucket, monkeypatch)
    other = janitor(bucket)
    done = []
    once = threading.RLock()  # chunks go up on several threads; the cleanup's own swap comes back here

    def cleanup_and_gc():
        with once:
            if not done:
                done.append(True)
                other.remote("origin").cleanup(["ssd"], keep=1)
                done.append(aged.gc(other))

    if step == "chunk":
        real_upload = S3ObjectStore.upload

        def upload(self, oid, data):
            real_upload(self, oid, data)
            if oid in new_chunks:
                cleanup_and_gc()

        monkeypatch.setattr(S3ObjectStore, "upload", upload)
    elif step == "recipe":
        real_put = S3RecipeStore.put

        def put(self, recipe):
            size = real_put(self, recipe)
            cleanup_and_gc()
            return size

        monkeypatch.setattr(S3RecipeStore, "put", put)
    else:
        real_update = S3ManifestStore.update

        def update(self, *args, **kwargs):
            cleanup_and_gc()
            return real_update(self, *args, **kwargs)

        monkeypatch.setattr(S3ManifestStore, "update", update)
    (pushed,) = bucket.trainer.remote("origin").push("ssd")
    monkeypatch.undo()
    assert done and done[1].deleted > 0  # gc did delete the predecessor's chunks meanwhile
    assert pushed.versions_sent == 1
    assert bucket.trainer.remote("origin").verify().problems == []
    server = bucket.store("server")
    server.remote("origin").pull("ssd")
    assert read_version(server) == new


def test_gc_never_deletes_a_recipe_or_chunk_a_push_sent_again_after_gc_listed_it(bucket, monkeypatch):
    """The remote still holds the recipe and chunks of v1's weights, unreferenced since a
    cleanup, and old. gc lists them; a push of a new version holding those same weights then
    sends the recipe again (same key) and refreshes the old chunks (same keys); gc, which read
    the manifests before that push's swap, must not delete them by its stale listing."""
    from gaia_cas.s3 import S3ManifestStore

    base, honest = predecessor_then_other(bucket)
    janitor(bucket).remote("origin").cleanup(["ssd"], keep=1)
    bucket.deploy(bucket.trainer, base, graph=b"graph, retrained head reverted")
    aged = Aged(bucket, monkeypatch)
    at_swap, go_on = threading.Event(), threading.Event()
    real_update, real_inventory = S3ManifestStore.update, S3RecipeStore.inventory
    results, errors = [], []

    def update(self, *args, **kwargs):
        at_swap.set()
        assert go_on.wait(30)
        return real_update(self, *args, **kwargs)

    def push():
        try:
            results.extend(bucket.trainer.remote("origin").push("ssd"))
        except BaseException as exc:  # noqa: BLE001 (reported by the main thread)
            errors.append(exc)

    pusher = threading.Thread(target=push)

    def inventory(self):
        listed = list(real_inventory(self))  # gc's listing: v1's recipe and chunks are old
        if not pusher.is_alive() and not results:
            pusher.start()
            assert at_swap.wait(30)  # the push sent everything and waits to swap
        return iter(listed)

    monkeypatch.setattr(S3ManifestStore, "update", update)
    monkeypatch.setattr(S3RecipeStore, "inventory", inventory)
    try:
        aged.gc(janitor(bucket))
    finally:
        go_on.set()
        pusher.join(30)
    monkeypatch.undo()
    assert not errors and results and results[0].versions_sent == 1
    assert bucket.trainer.remote("origin").verify().problems == []
    server = bucket.store("server")
    server.remote("origin").pull("ssd")
    assert read_version(server) == base


# -- boundaries ------------------------------------------------------------------------------

def test_a_file_of_exactly_the_threshold_and_the_largest_chunk_travels_and_survives_gc(bucket):
    """The smallest threshold a store may set is one largest chunk (4 MiB), and a file at the
    threshold is chunked: every reader of the remote must look for its recipe too."""
    assert MAX_CHUNK == 4 * MiB  # the stores here chunk from 4 MiB up
    edge = rand_bytes(MAX_CHUNK, 21)
    bucket.deploy(bucket.trainer, edge)
    rem = bucket.trainer.remote("origin")
    rem.push("ssd")
    assert xxh(edge) in bucket.keys("recipes") and xxh(edge) not in bucket.keys("objects")
    assert rem.verify().problems == []
    rem.gc(grace=timedelta(0))
    assert rem.verify().problems == []
    server = bucket.store("server")
    server.remote("origin").pull("ssd")
    assert read_version(server) == edge


def test_a_chunk_repeated_in_a_file_is_downloaded_once_per_pull_and_per_verify(bucket, monkeypatch):
    """16 MiB of zeros (padding, zero-initialised state) are four copies of one 4 MiB chunk: the
    push sends it once, and neither the pull nor verify downloads it four times."""
    padded = bytes(16 * MiB) + rand_bytes(2 * MiB, 5)
    bucket.deploy(bucket.trainer, padded)
    (pushed,) = bucket.trainer.remote("origin").push("ssd")
    assert pushed.bytes_sent < 7 * MiB
    server = bucket.store("server")
    (got,) = server.remote("origin").pull("ssd")
    assert read_version(server) == padded
    assert got.bytes_received < 7 * MiB
    zeros = xxh(bytes(MAX_CHUNK))
    reads = []
    real = S3ObjectStore.read
    monkeypatch.setattr(S3ObjectStore, "read", lambda self, oid, limit: reads.append(oid) or real(self, oid, limit))
    assert bucket.trainer.remote("origin").verify().problems == []
    assert reads.count(zeros) == 1


def test_a_pull_of_many_large_files_rebuilds_a_bounded_number_at_once(bucket, monkeypatch):
    """Each rebuild holds up to 2 * AHEAD chunks in memory; a model sharded into many large
    files must not rebuild them all at once (32 shards would hold 2 GiB)."""
    import time

    from gaia_cas import remote_objects

    src = bucket.tmp / "shards"
    for i in range(8):
        write(src / f"model-{i:05d}-of-00008.safetensors", rand_bytes(5 * MiB, 30 + i))
    bucket.trainer.deploy("ssd", src)
    bucket.trainer.remote("origin").push("ssd")
    real = remote_objects.stage_from_chunks
    active, most, lock = [0], [0], threading.Lock()

    def counted(*args, **kwargs):
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        try:
            time.sleep(0.2)  # long enough for every free thread to start its own
            return real(*args, **kwargs)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(remote_objects, "stage_from_chunks", counted)
    server = bucket.store("server")
    server.remote("origin").pull("ssd")
    assert 1 < most[0] <= remote_objects.REBUILDS == 4
    assert (Path(server.resolve("ssd").path) / "model-00003-of-00008.safetensors").read_bytes() == \
        rand_bytes(5 * MiB, 33)


def test_a_push_that_fails_leaves_the_local_store_exactly_as_before(bucket, cli, monkeypatch):
    """A push cuts a large file to know its chunks; the cut is kept here only once the push has
    committed: a push the remote refuses half-way writes no recipe and upgrades no store format
    (an older gaia-cas on this machine could no longer write to the store)."""
    from gaia_cas.recipes import store_format
    from gaia_cas.s3 import RemoteError

    base = rand_bytes(SIZE, 1)
    bucket.deploy(bucket.trainer, base)
    assert store_format(bucket.trainer.layout) == 1
    before = snapshot(bucket.trainer.root)

    def refuse(self, recipe):
        raise RemoteError(f"remote 'origin' refused the recipe of file {recipe.oid} (503 Slow Down)")

    monkeypatch.setattr(S3RecipeStore, "put", refuse)
    run = cli("push", "ssd", root_dir=bucket.trainer.root)
    assert_one_line_error(run, "Slow Down")
    assert snapshot(bucket.trainer.root) == before and store_format(bucket.trainer.layout) == 1
    monkeypatch.undo()
    bucket.trainer.remote("origin").push("ssd")  # committed: now the cut is kept, for the next pull
    assert RecipeStore(bucket.trainer.layout).exists(xxh(base))


def test_a_push_of_many_large_files_lists_the_bucket_once_for_all_their_chunks(bucket, monkeypatch):
    """Past HEAD_LIMIT candidates a push lists objects/ instead of HEADing each: once for the
    push's chunks, not once per large file (a bucket of millions of objects, 30 shards)."""
    from gaia_cas import remote_objects

    monkeypatch.setattr(remote_objects, "HEAD_LIMIT", 4)  # every large file here has more new chunks
    src = bucket.tmp / "shards"
    for i in range(4):
        write(src / f"model-{i:05d}-of-00004.safetensors", rand_bytes(6 * MiB, 40 + i))
    bucket.trainer.deploy("ssd", src)
    listings = []
    real = S3ObjectStore.inventory
    monkeypatch.setattr(S3ObjectStore, "inventory", lambda self: listings.append(1) or real(self))
    (pushed,) = bucket.trainer.remote("origin").push("ssd")
    assert pushed.versions_sent == 1 and len(listings) <= 2  # the files and trees, then the chunks
    monkeypatch.undo()
    assert bucket.trainer.remote("origin").verify().problems == []


# -- what held up: races -----------------------------------------------------------------------

def test_a_stale_remote_recipe_whose_chunks_are_gone_is_not_trusted_by_a_later_push(bucket):
    base, honest = predecessor_then_other(bucket)
    janitor(bucket).remote("origin").cleanup(["ssd"], keep=1)  # v1 goes: its recipe is no one's now
    for chunk in honest.chunks:  # its chunks gone (a lifecycle rule, a co-tenant), its recipe left
        bucket.raw.delete_object(Bucket=bucket.bucket, Key=f"{bucket.prefix}objects/{chunk.oid[:2]}/{chunk.oid[2:]}")
    assert honest.oid in bucket.keys("recipes")
    bucket.deploy(bucket.trainer, base, graph=b"graph, head reverted")
    (pushed,) = bucket.trainer.remote("origin").push("ssd")
    assert pushed.versions_sent == 1 and pushed.bytes_sent >= SIZE
    assert bucket.trainer.remote("origin").verify().problems == []
    server = bucket.store("server")
    server.remote("origin").pull("ssd")
    assert read_version(server) == base


def test_two_stores_pushing_the_same_retrain_at_once_both_land_and_rebuild(bucket, monkeypatch):
    """Store B pushes the same retrained weights completely while store A waits to swap: the
    same chunks and recipe went up twice (same keys, same bytes); A's swap loses, re-reads, and
    adds its version too."""
    from gaia_cas.s3 import S3ManifestStore

    base, honest = pushed_base(bucket)
    other = bucket.store("other")
    other.remote("origin").pull("ssd")
    new = retrained(base, 2)
    bucket.deploy(bucket.trainer, new, graph=b"graph A")
    bucket.deploy(other, new, graph=b"graph B")
    real = S3ManifestStore.update
    meanwhile = []

    def update(self, *args, **kwargs):
        if not meanwhile:
            meanwhile.append(True)
            meanwhile.append(other.remote("origin").push("ssd"))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(S3ManifestStore, "update", update)
    (pushed,) = bucket.trainer.remote("origin").push("ssd")
    monkeypatch.undo()
    assert meanwhile[1][0].versions_sent == 1 and pushed.versions_sent == 1
    rem = bucket.trainer.remote("origin")
    assert rem.verify().problems == []
    server = bucket.store("server")
    for version in ("1.1.0", "1.2.0"):
        server.remote("origin").pull("ssd", version)
        assert read_version(server, version) == new


# -- what held up: refusals, fallbacks, settings -----------------------------------------------

def test_a_cold_local_file_with_a_rotten_chunk_is_never_sent_and_the_cli_names_the_chunk(bucket, cli):
    base = rand_bytes(SIZE, 1)
    bucket.deploy(bucket.trainer, base)
    new = retrained(base, 2)
    bucket.deploy(bucket.trainer, new)
    bucket.trainer.gc(grace=timedelta(0))  # v1 goes cold here: only its chunks and recipe remain
    assert not bucket.trainer.objects.exists(xxh(base))
    old = RecipeStore(bucket.trainer.layout).get(xxh(base))
    only_old = sorted({c.oid for c in old.chunks} - {c.oid for c in describe(
        bucket.trainer.objects, RecipeStore(bucket.trainer.layout), xxh(new)).chunks})
    path = bucket.trainer.objects.path(only_old[0])
    path.chmod(0o644)
    path.write_bytes(b"r" * path.stat().st_size)
    before = snapshot(bucket.trainer.root)
    run = cli("push", "ssd", root_dir=bucket.trainer.root)
    assert_one_line_error(run, only_old[0], "verify --repair")
    assert snapshot(bucket.trainer.root) == before
    assert not bucket.keys("manifests") and only_old[0] not in bucket.keys("objects")
    assert xxh(base) not in bucket.keys("recipes")  # a recipe only ever follows all its chunks


def test_a_store_with_another_threshold_pulls_chunked_files_whole_and_pushes_them_back_whole(bucket):
    base, honest = pushed_base(bucket)
    server = bucket.store("server")
    set_chunk_threshold(server.layout, 64 * MiB)  # nothing of 12 MiB is chunked here
    server.remote("origin").pull("ssd")
    assert read_version(server) == base
    assert server.verify().problems == []
    assert not (server.layout.store / "recipes").exists()  # the pull cut nothing, stored no recipe
    src = bucket.tmp / "server-src"
    write(src / "variables.data", retrained(base, 3))
    server.deploy("ssd", src)
    server.remote("origin").push("ssd")  # whole, at this store's threshold
    bucket.trainer.remote("origin").pull("ssd")
    assert read_version(bucket.trainer) == retrained(base, 3)
    assert bucket.trainer.remote("origin").verify().problems == []


def test_verify_remote_with_a_sample_checks_a_chunked_file_on_the_nights_its_file_is_in_it(bucket):
    from datetime import date

    from gaia_cas.remote_verify import verify_remote
    from gaia_cas.verify import in_sample

    base, honest = pushed_base(bucket)
    bad = honest.chunks[1]
    bucket.put("objects", bad.oid, b"b" * bad.length)
    ctx = bucket.trainer.remote("origin").ctx
    found = {}
    for day in range(4):
        today = date.fromordinal(date(2026, 1, 1).toordinal() + day)
        report = verify_remote(ctx, remote="origin", sample=25, today=today)
        found[in_sample(honest.oid, 25, today.toordinal())] = [p.oid for p in report.problems if p.oid == bad.oid]
    assert found == {True: [bad.oid], False: []}  # four nights of 25 % cover the file once


@pytest.mark.parametrize("planted", ["symlink", "fifo"])
def test_a_whole_local_file_swapped_for_a_symlink_or_a_fifo_lends_nothing_to_a_pull(bucket, no_hang, planted):
    """The server's v1 weights (the file a pull of the retrain would cut for chunks) replaced
    under store/objects by a symlink to the right bytes, or by a FIFO: never followed, never
    blocked on; the retrain's chunks are downloaded instead."""
    import os

    base, honest = pushed_base(bucket)
    server = bucket.store("server")
    server.remote("origin").pull("ssd")
    new = retrained(base, 2)
    bucket.deploy(bucket.trainer, new)
    bucket.trainer.remote("origin").push("ssd")
    path = server.objects.path(xxh(base))
    os.unlink(path)
    if planted == "symlink":
        os.symlink(write(bucket.tmp / "elsewhere", base), path)
    else:
        os.mkfifo(path)
    (got,) = server.remote("origin").pull("ssd")
    assert read_version(server) == new and got.bytes_received >= SIZE
    assert tmp_leftovers(server.root) == []


def test_the_cli_refuses_a_bloated_or_lying_remote_chunk_in_one_line_with_the_store_as_before(bucket, cli):
    base, honest = pushed_base(bucket)
    server = bucket.store("server")
    before = snapshot(server.root)
    big = honest.chunks[0]
    bucket.put("objects", big.oid, rand_bytes(64 * MiB, 3))  # a co-tenant's 64 MiB under a chunk's key
    run = cli("pull", "ssd", root_dir=server.root)
    assert_one_line_error(run, big.oid, "larger than")
    assert snapshot(server.root) == before and tmp_leftovers(server.root) == []
    bucket.put("objects", big.oid, b"\0" * big.length)  # the right length, the wrong bytes
    run = cli("pull", "ssd", root_dir=server.root)
    assert_one_line_error(run, big.oid, "does not match its hash")
    assert snapshot(server.root) == before and tmp_leftovers(server.root) == []
    bucket.raw.delete_object(Bucket=bucket.bucket, Key=f"{bucket.prefix}objects/{big.oid[:2]}/{big.oid[2:]}")
    run = cli("pull", "ssd", root_dir=server.root)
    assert_one_line_error(run, big.oid, "missing")
    assert snapshot(server.root) == before and tmp_leftovers(server.root) == []
