"""Model settings on a remote, against moto on 127.0.0.1 (or $GAIA_CAS_S3_ENDPOINT): aliases and
default metadata travel with push and pull (under the same no-stale-overwrite rule as current);
the source folder, link paths and retention stay with each store."""

from __future__ import annotations


from conftest import assert_one_line_error, make_savedmodel, snapshot
from gaia_cas.repo import Repository
from s3_fixtures import origin, s3_server, s3_url, second_store  # noqa: F401



_store = second_store


def test_aliases_and_metadata_travel_links_source_and_retention_do_not(cli, root, origin, tmp_path):
    src = make_savedmodel(tmp_path / "a", variant=1)
    cli("deploy", "ssd", src)
    assert cli("model", "set", "ssd", "--alias", "detector", "--meta", "team=vision", "--source", str(src),
               "--link", "api/ssd/current", "--keep", "5").code == 0
    doc = cli("push", "--json").json()["pushed"][0]
    assert doc["settings_moved"]
    config = Repository(root).remote("origin").manifest("ssd").config
    assert (config.aliases, config.metadata, config.source, config.link, config.retention) == \
        (["detector"], {"team": "vision"}, None, None, {})
    host = _store(cli, tmp_path, origin, "host")
    pulled = cli("pull", "detector", "--json", root_dir=host)  # not known here yet: the remote's name is needed
    assert pulled.code == 1
    doc = cli("pull", "ssd", "--json", root_dir=host).json()["pulled"][0]
    assert doc["settings_changed"]
    repo = Repository(host)
    assert repo.model("detector") == "ssd" and repo.manifest("ssd").config.metadata == {"team": "vision"}
    mine = repo.manifest("ssd").config
    assert (mine.source, mine.link, mine.retention) == (None, None, {})
    assert (host / "models" / "ssd" / "current").is_symlink()  # its own default link, not api/ssd/current
    before = snapshot(host)
    assert not cli("pull", "ssd", "--json", root_dir=host).json()["pulled"][0]["changed"]
    assert snapshot(host) == before
    again = cli("push", "--json").json()["pushed"][0]
    assert not again["settings_moved"] and again["note"] is None


def test_settings_changed_on_the_remote_are_not_overwritten_by_a_store_that_missed_them(cli, root, origin,
                                                                                       tmp_path):
    cli("deploy", "ssd", make_savedmodel(tmp_path / "a", variant=1))
    cli("model", "set", "ssd", "--meta", "owner=a")
    cli("push")
    host = _store(cli, tmp_path, origin, "host")
    cli("pull", "ssd", root_dir=host)
    cli("model", "set", "ssd", "--meta", "owner=b", root_dir=host)
    assert cli("push", root_dir=host).code == 0  # host had seen the remote's settings: its change goes out
    cli("model", "set", "ssd", "--meta", "owner=c")  # root has not seen owner=b
    doc = cli("push", "--json").json()["pushed"][0]
    assert not doc["settings_moved"] and "aliases and metadata" in doc["note"]
    assert Repository(root).remote("origin").manifest("ssd").config.metadata == {"owner": "b"}
    # a pull takes the remote's latest settings; then this store's next change goes out
    assert cli("pull", "ssd", "--json").json()["pulled"][0]["settings_changed"]
    assert Repository(root).manifest("ssd").config.metadata == {"owner": "b"}
    cli("model", "set", "ssd", "--meta", "owner=d")
    assert cli("push", "--json").json()["pushed"][0]["settings_moved"]


def test_a_remote_alias_owned_by_another_local_model_is_refused_before_any_write(cli, root, origin, tmp_path):
    cli("deploy", "ssd", make_savedmodel(tmp_path / "a", variant=1))
    cli("model", "set", "ssd", "--alias", "detector")
    cli("push")
    host = _store(cli, tmp_path, origin, "host")
    cli("deploy", "yolo", make_savedmodel(tmp_path / "y", variant=9), root_dir=host)
    cli("model", "set", "yolo", "--alias", "detector", root_dir=host)
    before = snapshot(host)
    assert_one_line_error(cli("pull", "ssd", root_dir=host), "alias 'detector'", "'yolo'")
    assert snapshot(host) == before
