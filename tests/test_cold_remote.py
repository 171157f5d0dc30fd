"""A cold version (its large files kept as chunks) pushed to a remote and pulled elsewhere: the
remote receives the chunks straight from the local chunk objects (nothing rebuilt) and the
recipe; nothing is lost."""

from datetime import timedelta
from pathlib import Path

from gaia_cas.recipes import RecipeStore, set_chunk_threshold
from gaia_cas.remotes import get
from gaia_cas.repo import Repository
from s3_fixtures import s3_server, s3_url  # noqa: F401
from store_helpers import rand_bytes, tmp_leftovers, write, xxh

MiB = 1 << 20


def test_a_cold_version_pushes_whole_and_pulls_byte_identical(tmp_path, s3_server):  # noqa: F811
    repo = Repository.init(tmp_path / "trainer")
    set_chunk_threshold(repo.layout, 4 * MiB)
    old, new = rand_bytes(9 * MiB, 1), rand_bytes(9 * MiB, 2)
    src = tmp_path / "src"
    first = None
    for data in (old, new):
        write(src / "variables.data", data)
        version = repo.deploy("ssd", src).version
        first = first or version
    repo.gc(grace=timedelta(0))
    assert not repo.objects.exists(xxh(old)) and RecipeStore(repo.layout).exists(xxh(old))
    url = s3_url(s3_server)
    repo.add_remote("origin", url, endpoint=s3_server.endpoint)
    (sent,) = repo.remote("origin").push("ssd")
    assert sent.versions_sent == 2
    assert not repo.objects.exists(xxh(old))  # still cold here
    assert tmp_leftovers(repo.root) == []
    robjects, _ = get(repo, "origin").open()
    assert robjects.recipes.get(xxh(old)) == RecipeStore(repo.layout).get(xxh(old))

    server = Repository.init(tmp_path / "server")
    server.add_remote("origin", url, endpoint=s3_server.endpoint)
    server.remote("origin").pull("ssd", first)
    server.rollback("ssd", first)
    assert (Path(server.resolve("ssd").path) / "variables.data").read_bytes() == old

