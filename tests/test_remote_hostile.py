"""A hostile bucket and hostile concurrent processes, against moto on 127.0.0.1 (or
$GAIA_CAS_S3_ENDPOINT): a manifest crafted by another user of the bucket never reaches the local
store or the filesystem unchecked, and races between a push or pull and a local deploy lose
nothing and leave nothing broken."""

from __future__ import annotations

import os

import pytest

from conftest import assert_one_line_error, make_savedmodel, make_joblib, snapshot
from gaia_cas.manifest import encode, record
from gaia_cas.repo import Repository
from gaia_cas.s3 import parse_url
from s3_fixtures import origin, s3_server, s3_url, second_store  # noqa: F401



_store = second_store


def _craft(root, origin, model, edit):
    """Another user of the bucket rewrites the remote manifest of ``model`` as ``edit`` says."""
    import boto3

    manifest = Repository(root).remote("origin").manifest(model)
    edit(manifest)
    location = parse_url(origin[0])
    client = boto3.client("s3", endpoint_url=origin[1], region_name=os.environ["AWS_DEFAULT_REGION"])
    client.put_object(Bucket=location.bucket, Key=f"{location.prefix}manifests/{model}.msgpack",
                      Body=encode(manifest))


def _pushed(cli, tmp_path, name="ssd", variant=1):
    assert cli("deploy", name, make_savedmodel(tmp_path / f"{name}-{variant}", variant=variant)).code == 0
    assert cli("push", name).code == 0


@pytest.mark.parametrize("alias", ["../evil", "all", "x" * 300])
def test_a_remote_alias_that_is_no_valid_name_is_refused(cli, root, origin, tmp_path, alias):
    _pushed(cli, tmp_path)

    def edit(m):
        m.config.aliases = [alias]
    _craft(root, origin, "ssd", edit)
    host = _store(cli, tmp_path, origin, "host")
    before = snapshot(host)
    assert_one_line_error(cli("pull", "ssd", root_dir=host), "alias")
    assert snapshot(host) == before


def test_a_remote_alias_that_is_the_models_own_name_is_refused(cli, root, origin, tmp_path):
    _pushed(cli, tmp_path)

    def edit(m):
        m.config.aliases = ["ssd"]
    _craft(root, origin, "ssd", edit)
    host = _store(cli, tmp_path, origin, "host")
    before = snapshot(host)
    assert_one_line_error(cli("pull", "ssd", root_dir=host), "alias")
    assert snapshot(host) == before


def test_pull_all_refuses_a_remote_model_named_like_a_local_alias(cli, root, origin, tmp_path):
    _pushed(cli, tmp_path, "detector")
    host = _store(cli, tmp_path, origin, "host")
    cli("deploy", "ssd", make_savedmodel(tmp_path / "s", variant=7), root_dir=host)
    assert cli("model", "set", "ssd", "--alias", "detector", root_dir=host).code == 0
    before = snapshot(host)
    run = cli("pull", "all", root_dir=host)
    assert run.code == 1 and "detector" in run.err and "Traceback" not in run.err
    assert snapshot(host) == before
    assert Repository(host).model("detector") == "ssd"


def test_a_remote_file_version_naming_a_file_its_tree_lacks_is_refused(cli, root, origin, tmp_path):
    assert cli("deploy", "cat", make_joblib(tmp_path / "m.joblib")).code == 0
    assert cli("push", "cat").code == 0

    def edit(m):
        m.versions = [v.replace(name="other.joblib") for v in m.versions]
    _craft(root, origin, "cat", edit)
    host = _store(cli, tmp_path, origin, "host")
    before = snapshot(host)
    assert_one_line_error(cli("pull", "cat", root_dir=host))
    assert snapshot(host) == before


def test_a_remote_version_with_a_malformed_date_is_taken_and_breaks_no_local_command(cli, root, origin, tmp_path):
    _pushed(cli, tmp_path)

    def edit(m):
        m.versions = [v.replace(created_at="yesterday") for v in m.versions]
    _craft(root, origin, "ssd", edit)
    host = _store(cli, tmp_path, origin, "host")
    run = cli("pull", "ssd", root_dir=host)
    assert run.code == 0, run.err
    for argv in (("list", "ssd"), ("cleanup", "ssd", "--older-than", "1d", "--dry-run"), ("status",),
                 ("show", "ssd", "1.0.0"), ("history", "ssd"), ("diff", "ssd", "1.0.0", "1.0.0"),
                 ("export", "ssd", "1.0.0", "-o", tmp_path / "out.tar"), ("cleanup", "ssd", "--older-than", "1d"),
                 ("verify",)):
        got = cli(*argv, root_dir=host)
        assert "Traceback" not in got.err and got.code in (0, 1), (argv, got)


def test_a_push_whose_renumbering_met_a_local_deploy_is_completed_by_the_next_push(cli, root, origin, tmp_path,
                                                                                   monkeypatch):
    import gaia_cas.transfer as transfer

    other = _store(cli, tmp_path, origin, "other")
    assert cli("deploy", "ssd", make_savedmodel(tmp_path / "z", variant=9), root_dir=other).code == 0
    assert cli("push", "ssd", root_dir=other).code == 0  # the remote's 1.0.0 is other content
    assert cli("deploy", "ssd", make_savedmodel(tmp_path / "x", variant=1)).code == 0  # here 1.0.0 too
    real_adopt = transfer.adopt

    def deploy_meanwhile(*args, **kwargs):  # a local deploy lands between the remote's swap and adopt
        monkeypatch.setattr(transfer, "adopt", real_adopt)
        Repository(root).deploy("ssd", make_savedmodel(tmp_path / "w", variant=2))
        return real_adopt(*args, **kwargs)

    monkeypatch.setattr(transfer, "adopt", deploy_meanwhile)
    first = cli("push", "ssd")
    assert first.code == 1 and "Traceback" not in first.err  # 1.0.0 is 1.1.0 there, but 1.1.0 is taken here
    second = cli("push", "ssd")  # renumbers both (current stays: this store never saw the remote's)
    assert "push that one first" not in second.err and "not moved" in second.err, second
    local = Repository(root).manifest("ssd")
    remote = Repository(root).remote("origin").manifest("ssd")
    ids = {(v.tree, v.deployment_id): v.version for v in remote.versions}
    assert sorted(v.version for v in local.versions) == ["1.1.0", "1.2.0"]
    assert all(ids[(v.tree, v.deployment_id)] == v.version for v in local.versions)


def test_a_local_deploy_during_a_pull_does_not_give_two_versions_one_number(cli, root, origin, tmp_path,
                                                                           monkeypatch):
    import gaia_cas.s3 as s3

    _pushed(cli, tmp_path, variant=1)
    _pushed(cli, tmp_path, variant=2)  # the remote: 1.0.0, 1.1.0 (current)
    host = _store(cli, tmp_path, origin, "host")
    assert cli("pull", "ssd", "1.0.0", root_dir=host).code == 0  # host has 1.0.0, the remote's own
    real_read = s3.S3ObjectStore.read

    state = {}

    def deploy_meanwhile(self, oid, limit):  # host deploys while the pull fetches (no lock held then)
        monkeypatch.setattr(s3.S3ObjectStore, "read", real_read)
        Repository(host).deploy("ssd", make_savedmodel(tmp_path / "w", variant=3))  # takes 1.1.0 here
        state["after_deploy"] = _outside_tmp(snapshot(host))
        return real_read(self, oid, limit)

    monkeypatch.setattr(s3.S3ObjectStore, "read", deploy_meanwhile)
    run = cli("pull", "ssd", root_dir=host)
    assert "Traceback" not in run.err
    repo = Repository(host)
    numbers = [v.version for v in repo.manifest("ssd").versions]
    assert len(numbers) == len(set(numbers)), numbers
    assert cli("list", "ssd", root_dir=host).code == 0
    if run.code == 0:
        assert repo.manifest("ssd").current_version().tree == \
            repo.remote("origin").manifest("ssd").current_version().tree
    else:
        assert_one_line_error(run, "1.1.0")
        assert _outside_tmp(snapshot(host)) == state["after_deploy"]  # the failed pull added nothing


def _outside_tmp(state: dict) -> dict:
    return {path: value for path, value in state.items() if not path.startswith("store/tmp")}


def test_a_remote_directory_version_with_a_file_name_is_refused(cli, root, origin, tmp_path):
    _pushed(cli, tmp_path)

    def edit(m):
        m.versions = [v.replace(name="variables") for v in m.versions]
    _craft(root, origin, "ssd", edit)
    host = _store(cli, tmp_path, origin, "host")
    before = snapshot(host)
    assert_one_line_error(cli("pull", "ssd", root_dir=host), "'variables'")
    assert snapshot(host) == before


def _event(m, action, details, version=None):
    """Append one history row to a crafted manifest, as another user's client would."""
    record(m, action, version=version, before=m.current, at="2026-01-01T00:00:00Z", user="eve", host="h",
           reason=None, details=details)
    m.generation += 1
    m.new_events[-1].generation = m.generation


@pytest.mark.parametrize("identities", [[[["a"], "b", "c", "d"]], 7, [[{"a": 1}, 1, 2, 3]]])
def test_a_crafted_cleanup_row_on_the_remote_is_ignored_not_a_crash(cli, root, origin, tmp_path, identities):
    _pushed(cli, tmp_path)
    _craft(root, origin, "ssd", lambda m: _event(m, "cleanup", {"identities": identities}))
    cli("deploy", "ssd", make_savedmodel(tmp_path / "n", variant=5))
    pushed = cli("push", "ssd")
    assert pushed.code == 0 and pushed.err == "", pushed
    deployed = cli("deploy", "ssd", make_savedmodel(tmp_path / "m", variant=6), "--remote", "origin")
    assert deployed.code == 0 and deployed.err == "", deployed


@pytest.mark.parametrize("owner_alias", [False, True])
def test_push_never_gives_the_remote_an_alias_another_remote_model_holds(cli, root, origin, tmp_path, owner_alias):
    other = _store(cli, tmp_path, origin, "other")
    cli("deploy", "yolo" if owner_alias else "detector", make_savedmodel(tmp_path / "d", variant=4), root_dir=other)
    if owner_alias:
        assert cli("model", "set", "yolo", "--alias", "detector", root_dir=other).code == 0
    assert cli("push", root_dir=other).code == 0
    cli("deploy", "ssd", make_savedmodel(tmp_path / "s", variant=1))
    assert cli("model", "set", "ssd", "--alias", "detector", "--meta", "team=a").code == 0
    doc = cli("push", "ssd", "--json").json()["pushed"][0]
    assert not doc["settings_moved"] and "'detector'" in doc["note"]
    assert Repository(root).remote("origin").manifest("ssd").config.aliases == []
    host = _store(cli, tmp_path, origin, "host")
    assert cli("pull", "all", root_dir=host).code == 0  # every host can still pull every model


@pytest.mark.parametrize("argv", [("s3://AKIAEXAMPLE:s3cr3tvalue@bucket-a",),
                                  ("s3://bucket-a", "--endpoint", "http://AKIAEXAMPLE:s3cr3tvalue@127.0.0.1:9")])
def test_credentials_typed_into_a_remote_url_are_refused_and_never_echoed(cli, root, argv):
    before = snapshot(root)
    run = cli("remote", "add", "team", *argv)
    assert_one_line_error(run, "credentials")
    assert "s3cr3tvalue" not in run.err + run.out
    assert snapshot(root) == before


def test_rollback_promote_and_list_on_the_remote_take_a_local_alias_as_pull_and_cleanup_do(cli, root, origin,
                                                                                           tmp_path):
    _pushed(cli, tmp_path, variant=1)
    _pushed(cli, tmp_path, variant=2)
    assert cli("model", "set", "ssd", "--alias", "detector").code == 0
    assert cli("rollback", "detector", "1.0.0", "--remote", "origin").code == 0  # the operator's emergency
    assert cli("promote", "detector", "1.1.0", "--channel", "canary", "--remote", "origin").code == 0
    listed = cli("list", "detector", "--remote", "origin", "--json")
    assert listed.code == 0, listed
    verified = cli("verify", "detector", "--remote", "origin")
    assert verified.code == 0, verified
    remote = Repository(root).remote("origin").manifest("detector")
    assert remote.model == "ssd" and remote.current == "1.0.0" and remote.channels["canary"]["version"] == "1.1.0"


@pytest.mark.parametrize("then", ["deploy", "rollback"])
def test_a_deploy_remote_whose_answer_was_lost_never_takes_current_back_from_a_later_change(cli, root, origin,
                                                                                           tmp_path, monkeypatch,
                                                                                           then):
    import gaia_cas.s3 as s3

    assert cli("deploy", "ssd", make_savedmodel(tmp_path / "a", variant=1), "--remote", "origin").code == 0
    other = _store(cli, tmp_path, origin, "other")
    real_send = s3.S3ManifestStore.send

    def lost(self, key, data, mode):
        real_send(self, key, data, mode)  # our swap lands (1.1.0 current) ...
        monkeypatch.setattr(s3.S3ManifestStore, "send", real_send)
        if then == "deploy":  # ... another trainer deploys 1.2.0 ...
            Repository(other).remote("origin").deploy("ssd", make_savedmodel(tmp_path / "c", variant=3))
        else:  # ... or the operator rolls ours back ...
            Repository(other).remote("origin").rollback("ssd", "1.0.0")
        raise ConnectionResetError("connection reset")  # ... and our answer is lost: the retry meets 412

    monkeypatch.setattr(s3.S3ManifestStore, "send", lost)
    run = cli("deploy", "ssd", make_savedmodel(tmp_path / "b", variant=2), "--remote", "origin")
    assert run.code == 0 and run.err == "", run  # our version is on the remote: the deploy did land
    remote = Repository(root).remote("origin").manifest("ssd")
    assert remote.current == ("1.2.0" if then == "deploy" else "1.0.0"), "the later change stands"
    deploys = [e.version for e in remote.history if e.action == "deploy"]
    assert deploys == (["1.0.0", "1.1.0", "1.2.0"] if then == "deploy" else ["1.0.0", "1.1.0"]), deploys
    mine = Repository(root).manifest("ssd")
    assert [v.version for v in mine.versions] == ["1.0.0", "1.1.0"]


@pytest.mark.parametrize("channel", [None, "canary"])
def test_a_remote_rollback_or_promote_whose_answer_was_lost_is_not_applied_twice(cli, root, origin, tmp_path,
                                                                                 monkeypatch, channel):
    import gaia_cas.s3 as s3

    for variant in (1, 2):
        assert cli("deploy", "ssd", make_savedmodel(tmp_path / f"a{variant}", variant=variant), "--remote",
                   "origin").code == 0
    operator = Repository(root).remote("origin")
    if channel:
        operator.promote("ssd", "1.1.0", channel)
    real_send = s3.S3ManifestStore.send

    def lost(self, key, data, mode):
        real_send(self, key, data, mode)  # the operator's move lands ...
        monkeypatch.setattr(s3.S3ManifestStore, "send", real_send)
        if channel:
            operator.promote("ssd", "1.1.0", channel)  # ... a colleague moves the channel on ...
        else:
            operator.deploy("ssd", make_savedmodel(tmp_path / "c", variant=3))  # ... a trainer deploys 1.2.0 ...
        raise ConnectionResetError("connection reset")  # ... and the operator's answer is lost

    monkeypatch.setattr(s3.S3ManifestStore, "send", lost)
    argv = ("promote", "ssd", "1.0.0", "--channel", channel) if channel else ("rollback", "ssd", "1.0.0")
    run = cli(*argv, "--remote", "origin")
    assert "Traceback" not in run.err
    remote = Repository(root).remote("origin").manifest("ssd")
    if channel:
        assert remote.channels[channel]["version"] == "1.1.0"
        assert [e.after for e in remote.history if e.action == "promote"] == ["1.1.0", "1.0.0", "1.1.0"]
    else:
        assert remote.current == "1.2.0", "the later deploy stays current"
        assert len([e for e in remote.history if e.action == "rollback"]) == 1


def test_a_pull_that_brings_back_what_a_broken_version_lacked_serves_it_again(cli, root, origin, tmp_path):
    from gaia_cas.trees import DIR

    _pushed(cli, tmp_path, variant=1)
    host = _store(cli, tmp_path, origin, "host")
    assert cli("pull", "ssd", root_dir=host).code == 0
    repo = Repository(host)
    tree = repo.manifest("ssd").current_version().tree
    blob = next(entry.oid for _, entry in repo.ctx.trees.walk(tree) if entry.kind != DIR)
    path = repo.ctx.objects.path(blob)
    os.chmod(path, 0o644)
    with open(path, "ab") as f:
        f.write(b"rot")
    assert cli("verify", "--repair", root_dir=host).code == 1  # quarantined, the version marked broken
    assert repo.manifest("ssd").current_version().broken
    assert not os.path.lexists(host / "models" / "ssd" / "current")
    doc = cli("pull", "ssd", "--json", root_dir=host).json()["pulled"][0]
    assert doc["objects_received"] == 1 and doc["changed"]
    assert not repo.manifest("ssd").current_version().broken
    assert (host / "models" / "ssd" / "current").is_symlink()
    assert cli("verify", root_dir=host).code == 0


@pytest.mark.parametrize("where", ["config", "version"])
def test_remote_metadata_this_store_could_not_record_is_refused_before_anything_is_fetched(cli, root, origin,
                                                                                          tmp_path, where):
    import boto3
    import msgpack

    _pushed(cli, tmp_path)
    deep = "x"
    for _ in range(150):  # read back by the decoder, refused by the encoder's depth limit
        deep = {"k": deep}
    doc = msgpack.unpackb(encode(Repository(root).remote("origin").manifest("ssd")), raw=False)
    if where == "config":
        doc["config"]["metadata"] = {"deep": deep}
    else:
        rows = msgpack.unpackb(doc["versions"], raw=False)
        rows[0][doc["version_fields"].index("metadata")] = {"deep": deep}
        doc["versions"] = msgpack.packb(rows)
        doc.pop("version_offsets")
    location = parse_url(origin[0])
    client = boto3.client("s3", endpoint_url=origin[1], region_name=os.environ["AWS_DEFAULT_REGION"])
    client.put_object(Bucket=location.bucket, Key=f"{location.prefix}manifests/ssd.msgpack", Body=msgpack.packb(doc))
    host = _store(cli, tmp_path, origin, "host")
    cli("deploy", "other", make_savedmodel(tmp_path / "o", variant=5), root_dir=host)
    before = snapshot(host)
    assert_one_line_error(cli("pull", "ssd", root_dir=host), "nested")
    assert snapshot(host) == before
