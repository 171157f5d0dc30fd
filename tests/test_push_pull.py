"""remote add/list/remove/default, push and pull, against moto on 127.0.0.1 (or
$GAIA_CAS_S3_ENDPOINT): clear errors for bad remotes, children-first uploads, renumbering, no
stale move of production, verified downloads, nothing written by a push or pull that changes
nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import boto3
import pytest

from conftest import CHECKOUT, assert_one_line_error, make_savedmodel, snapshot
from gaia_cas.repo import Repository
from s3_fixtures import s3_server, s3_url  # noqa: F401


@pytest.fixture
def url(s3_server):  # noqa: F811
    return s3_url(s3_server)


@pytest.fixture
def endpoint(s3_server):  # noqa: F811
    return s3_server.endpoint


def _add(cli, url, endpoint, name="origin"):
    run = cli("remote", "add", name, url, "--endpoint", endpoint)
    assert run.code == 0, run.err
    return run


def _second_root(tmp_path, name="other"):
    path = tmp_path / name
    Repository.init(path)
    return path


# -- remotes ---------------------------------------------------------------------------------

def test_remote_add_list_default_remove(cli, root, url, endpoint):
    assert "(default)" in _add(cli, url, endpoint).out
    _add(cli, url + "-b", endpoint, name="backup")
    doc = cli("remote", "list", "--json").json()
    assert doc["default"] == "origin" and [r["name"] for r in doc["remotes"]] == ["backup", "origin"]
    assert cli("remote", "default", "backup").code == 0
    assert cli("remote", "list", "--json").json()["default"] == "backup"
    assert cli("remote", "remove", "backup").code == 0
    assert cli("remote", "list", "--json").json() == {
        "default": "origin", "remotes": [{"name": "origin", "url": url, "endpoint": endpoint, "region": None,
                                          "default": True}]}
    stored = (root / "manifests" / ".remotes.msgpack").read_bytes()
    assert os.environ["AWS_SECRET_ACCESS_KEY"].encode() not in stored  # never a credential
    assert os.environ["AWS_ACCESS_KEY_ID"].encode() not in stored
    assert cli("list").code == 0 and "remotes" not in cli("list").out  # not taken for a model


def test_bad_remotes_get_one_line_errors_and_change_nothing(cli, root, url, endpoint, s3_server):  # noqa: F811
    before = snapshot(root)
    assert_one_line_error(cli("push", "--remote", "nope"), "unknown remote 'nope' (none configured)")
    assert_one_line_error(cli("remote", "add", "x", "http://bucket/p"), "invalid remote URL")
    started = time.monotonic()
    assert_one_line_error(cli("remote", "add", "x", "s3://bucket-x/p", "--endpoint", "http://127.0.0.1:9"),
                          "cannot connect")
    assert time.monotonic() - started < 30
    missing = f"s3://no-such-bucket-{os.urandom(3).hex()}/p"
    assert_one_line_error(cli("remote", "add", "x", missing, "--endpoint", endpoint), "bucket does not exist")
    assert snapshot(root) == before
    _add(cli, url, endpoint)
    assert_one_line_error(cli("push", "--remote", "nope"), "unknown remote 'nope'")
    assert_one_line_error(cli("remote", "remove", "nope"), "unknown remote 'nope'")


def test_wrong_credentials_are_one_line_without_the_secret(cli, root, url, endpoint, s3_server, monkeypatch):  # noqa: F811
    if not s3_server.real:
        # moto accepts any key unless its IAM checks are on: turn them on for this server only.
        import urllib.request

        request = urllib.request.Request(f"{endpoint}/moto-api/reset-auth", method="POST", headers={"Content-Type": "text/plain"},
                                         data=b"0")
        urllib.request.urlopen(request, timeout=10).read()
    secret = "not-the-right-secret-" + os.urandom(4).hex()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGKEY000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    try:
        run = cli("remote", "add", "x", url, "--endpoint", endpoint)
        assert_one_line_error(run, "access denied")
        assert secret not in run.err and "AKIAWRONGKEY000" not in run.err
    finally:
        if not s3_server.real:
            request = urllib.request.Request(f"{endpoint}/moto-api/reset-auth", method="POST", headers={"Content-Type": "text/plain"},
                                             data=b"inf")
            urllib.request.urlopen(request, timeout=10).read()


def test_an_engine_that_ignores_conditional_writes_is_refused(cli, root, url, endpoint, monkeypatch):
    import obstore

    real = obstore.put

    def ignoring(store, key, data, *, mode=None, **kw):
        return real(store, key, data, **kw)  # what some S3-compatible servers silently do

    monkeypatch.setattr(obstore, "put", ignoring)
    assert_one_line_error(cli("remote", "add", "x", url, "--endpoint", endpoint), "ignores conditional writes")
    assert not (root / "manifests" / ".remotes.msgpack").exists()


# -- push ------------------------------------------------------------------------------------

def test_push_sends_children_first_then_nothing_the_second_time(cli, root, url, endpoint, tmp_path, s3_server):  # noqa: F811
    _add(cli, url, endpoint)
    src = make_savedmodel(tmp_path / "a")
    assert cli("deploy", "ssd", src).code == 0
    first = cli("push", "ssd", "--json").json()["pushed"][0]
    assert first["versions_sent"] == 1 and first["objects_sent"] >= 6 and first["bytes_sent"] > 4096
    assert first["remote_current"] == "1.0.0" and first["current_moved"]
    repo = Repository(root)
    local_generation = repo.manifest("ssd").generation
    _, remote_manifests = repo.remotes()[1]["origin"].open()
    token = remote_manifests.snapshot("ssd").token
    again = repo.remote().push()[0]  # the library API, as the CLI calls it
    assert (again.versions_sent, again.objects_sent, again.bytes_sent) == (0, 0, 0)
    assert repo.manifest("ssd").generation == local_generation  # nothing written locally
    assert remote_manifests.snapshot("ssd").token == token  # nor on the remote
    # the remote's objects are the local ones, byte for byte, under the documented layout
    raw = boto3.client("s3", endpoint_url=endpoint)
    prefix = url.split("/", 3)[3]
    keys = {o["Key"] for page in raw.get_paginator("list_objects_v2").paginate(Bucket=s3_server.bucket,
                                                                              Prefix=prefix + "/")
            for o in page.get("Contents", [])}
    local = {f"{prefix}/objects/{d}/{f}" for d in os.listdir(root / "store" / "objects")
             for f in os.listdir(root / "store" / "objects" / d)}
    assert local <= keys and f"{prefix}/manifests/ssd.msgpack" in keys


def test_push_uploads_children_before_parents(cli, root, url, endpoint, tmp_path, monkeypatch):
    from gaia_cas import s3
    from gaia_cas.trees import decode_tree

    _add(cli, url, endpoint)
    cli("deploy", "ssd", make_savedmodel(tmp_path / "a"))
    order, real = [], s3.S3ObjectStore.upload

    def upload(self, oid, data):
        order.append(oid)
        return real(self, oid, data)

    monkeypatch.setattr(s3.S3ObjectStore, "upload", upload)
    assert cli("push").code == 0
    repo = Repository(root)
    tree = repo.manifest("ssd").current_version().tree
    for oid in order:  # every tree goes up after every object it names
        try:
            entries = decode_tree(repo.objects.read(oid, 1 << 20), oid)
        except Exception:
            continue
        for entry in entries:
            assert order.index(entry.oid) < order.index(oid)
    assert order[-1] == tree


def test_two_stores_pushing_at_once_both_land_with_distinct_numbers(cli, root, url, endpoint, tmp_path):
    other = _second_root(tmp_path)
    for where in (root, other):
        assert cli("remote", "add", "origin", url, "--endpoint", endpoint, root_dir=where).code == 0
    cli("deploy", "ssd", make_savedmodel(tmp_path / "a", variant=1))
    cli("deploy", "ssd", make_savedmodel(tmp_path / "b", variant=2), root_dir=other)
    env = dict(os.environ, PYTHONPATH=str(CHECKOUT))
    procs = [subprocess.Popen([sys.executable, "-m", "gaia_cas", "--root", str(where), "push", "--json"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for where in (root, other)]
    outs = [p.communicate(timeout=60) for p in procs]
    # both land; the one that committed second never saw the remote, so it leaves production
    # alone and says so: exit 1, its versions sent all the same
    assert sorted(p.returncode for p in procs) == [0, 1], outs
    refused = outs[[p.returncode for p in procs].index(1)]
    assert "not moved" in refused[1] and "the versions were sent" in refused[1]
    assert json.loads(refused[0])["pushed"][0]["versions_sent"] == 1
    from gaia_cas.remotes import get

    _, manifests = get(Repository(root), "origin").open()
    final = manifests.snapshot("ssd").manifest
    assert sorted(final.version_numbers()) == ["1.0.0", "1.1.0"]  # both landed, distinct numbers
    assert len({v.tree for v in final.versions}) == 2
    # the store whose 1.0.0 was taken adopted its new number, and both histories say so
    numbers = {tuple(Repository(where).manifest("ssd").version_numbers()) for where in (root, other)}
    assert numbers == {("1.0.0",), ("1.1.0",)}
    renumbered = [e for where in (root, other) for e in Repository(where).manifest("ssd").history
                  if e.action == "renumber"]
    assert len(renumbered) == 1 and renumbered[0].details["from"] == "1.0.0"
    assert any(e.details.get("renumbered_from") == "1.0.0" for e in final.history)
    assert final.current == "1.0.0"  # the second pusher never saw the remote: production not moved


def test_a_push_from_a_store_that_missed_a_change_of_current_does_not_move_it(cli, root, url, endpoint, tmp_path):
    other = _second_root(tmp_path)
    for where in (root, other):
        cli("remote", "add", "origin", url, "--endpoint", endpoint, root_dir=where)
    cli("deploy", "ssd", make_savedmodel(tmp_path / "a", variant=1))
    cli("deploy", "ssd", make_savedmodel(tmp_path / "b", variant=2))
    cli("push")
    assert cli("pull", "ssd", root_dir=other).code == 0  # other sees 1.1.0 current
    cli("rollback", "ssd", "1.0.0")
    assert cli("push", "--json").json()["pushed"][0]["current_moved"]  # root had seen it: rollback goes out
    cli("deploy", "ssd", make_savedmodel(tmp_path / "c", variant=3), root_dir=other)
    run = cli("push", "--json", root_dir=other)
    assert run.code == 1
    doc = run.json()["pushed"][0]
    assert doc["versions_sent"] == 1 and not doc["current_moved"] and doc["remote_current"] == "1.0.0"
    assert "not moved" in doc["error"]
    text = cli("push", root_dir=other)
    assert text.code == 1 and "remote current 1.0.0" in text.out
    assert_one_line_error(text, "push of ssd failed", "not moved")


# -- pull ------------------------------------------------------------------------------------

def test_pull_verifies_installs_and_links_then_writes_nothing_the_second_time(cli, root, url, endpoint, tmp_path):
    _add(cli, url, endpoint)
    cli("deploy", "ssd", make_savedmodel(tmp_path / "a", variant=1))
    cli("push")
    other = _second_root(tmp_path)
    cli("remote", "add", "origin", url, "--endpoint", endpoint, root_dir=other)
    doc = cli("pull", "ssd", "--json", root_dir=other).json()["pulled"][0]
    assert doc["objects_received"] >= 6 and doc["bytes_received"] > 4096 and doc["current"] == "1.0.0"
    link = other / "models" / "ssd" / "current"
    assert (link / "saved_model.pb").read_bytes() == (tmp_path / "a" / "saved_model.pb").read_bytes()
    before = snapshot(other)
    again = cli("pull", "ssd", "--json", root_dir=other).json()["pulled"][0]
    assert (again["objects_received"], again["changed"]) == (0, False)
    assert snapshot(other) == before


def test_pull_of_a_version_fetches_it_without_moving_current(cli, root, url, endpoint, tmp_path):
    _add(cli, url, endpoint)
    cli("deploy", "ssd", make_savedmodel(tmp_path / "a", variant=1))
    cli("deploy", "ssd", make_savedmodel(tmp_path / "b", variant=2))
    cli("push")
    other = _second_root(tmp_path)
    cli("remote", "add", "origin", url, "--endpoint", endpoint, root_dir=other)
    assert cli("pull", "ssd", root_dir=other).code == 0
    doc = cli("pull", "ssd", "1.0.0", "--json", root_dir=other).json()["pulled"][0]
    assert doc["version"] == "1.0.0" and doc["current"] == "1.1.0"
    assert Repository(other).manifest("ssd").version_numbers() == ["1.1.0", "1.0.0"]


def test_a_corrupt_remote_object_is_refused_and_nothing_is_swapped(cli, root, url, endpoint, tmp_path, s3_server):  # noqa: F811
    _add(cli, url, endpoint)
    cli("deploy", "ssd", make_savedmodel(tmp_path / "a", variant=1))
    cli("push")
    other = _second_root(tmp_path)
    cli("remote", "add", "origin", url, "--endpoint", endpoint, root_dir=other)
    assert cli("pull", "ssd", root_dir=other).code == 0
    cli("deploy", "ssd", make_savedmodel(tmp_path / "b", variant=2))
    cli("push")
    repo = Repository(root)
    new = repo.manifest("ssd").current_version().tree
    blob = next(e.oid for _, e in repo.trees.walk(new) if e.name == "saved_model.pb")
    prefix = url.split("/", 3)[3]
    boto3.client("s3", endpoint_url=endpoint).put_object(Bucket=s3_server.bucket,
                                                         Key=f"{prefix}/objects/{blob[:2]}/{blob[2:]}", Body=b"bad")
    before = snapshot(other)
    run = cli("pull", "ssd", root_dir=other)
    assert_one_line_error(run, f"object {blob}", "does not match its hash")
    after = snapshot(other)
    assert {k: v for k, v in after.items() if not k.startswith("store/tmp")} == \
        {k: v for k, v in before.items() if not k.startswith("store/tmp")}
    assert not (other / "store" / "objects" / blob[:2] / blob[2:]).exists()
    assert Repository(other).manifest("ssd").current == "1.0.0"


def test_pull_of_an_unknown_model_is_one_line(cli, root, url, endpoint):
    _add(cli, url, endpoint)
    before = snapshot(root)
    assert_one_line_error(cli("pull", "nothere"), "has no model 'nothere'")
    assert snapshot(root) == before


def test_import_of_the_cli_does_not_load_obstore():
    code = "import sys, gaia_cas.cli; from gaia_cas.parser import build_parser; build_parser(); " \
           "print('obstore' in sys.modules, 'gaia_cas.s3' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(CHECKOUT)),
                         capture_output=True, text=True, timeout=30).stdout
    assert out.split() == ["False", "False"]


def test_a_pull_killed_mid_download_leaves_nothing_half_visible_and_the_next_completes(cli, root, url, endpoint,
                                                                                      tmp_path):
    _add(cli, url, endpoint)
    cli("deploy", "ssd", make_savedmodel(tmp_path / "a", variant=1))
    cli("push")
    other = _second_root(tmp_path)
    cli("remote", "add", "origin", url, "--endpoint", endpoint, root_dir=other)
    # SIGKILL the pulling process as it starts its third download (the manifest and the root
    # tree are in, the tree already staged): mid-pull, after bytes were written to staging
    script = ("import os, signal, sys, obstore; from gaia_cas import cli\n"
              "real, calls = obstore.get, []\n"
              "def get(*a, **k):\n"
              "    calls.append(1)\n"
              "    if len(calls) == 3: os.kill(os.getpid(), signal.SIGKILL)\n"
              "    return real(*a, **k)\n"
              "obstore.get = get\n"
              "cli.run(sys.argv[1:])\n")
    proc = subprocess.run([sys.executable, "-c", script, "--root", str(other), "pull", "ssd"],
                          env=dict(os.environ, PYTHONPATH=str(CHECKOUT)), capture_output=True, timeout=60)
    assert proc.returncode == -9
    assert not os.path.lexists(other / "models" / "ssd" / "current")
    assert not (other / "manifests" / "ssd.msgpack").exists()
    assert [d for d in os.listdir(other / "store" / "objects")] == []  # nothing installed, verified or not
    assert cli("pull", "ssd", root_dir=other).code == 0
    assert (other / "models" / "ssd" / "current" / "saved_model.pb").read_bytes() == \
        (tmp_path / "a" / "saved_model.pb").read_bytes()
    assert cli("verify", root_dir=other).code == 0


def test_list_of_a_remote_model_shows_the_remote_manifest(cli, root, url, endpoint, tmp_path):
    _add(cli, url, endpoint)
    cli("deploy", "ssd", make_savedmodel(tmp_path / "a", variant=1))
    cli("push")
    cli("deploy", "ssd", make_savedmodel(tmp_path / "b", variant=2))  # not pushed
    doc = cli("list", "ssd", "--remote", "origin", "--json").json()
    assert doc["current"] == "1.0.0" and [v["version"] for v in doc["versions"]] == ["1.0.0"]
    assert "current 1.0.0, 1 version\n" in cli("list", "ssd", "--remote", "origin").out
    assert_one_line_error(cli("list", "nothere", "--remote", "origin"), "unknown model 'nothere'")
    assert_one_line_error(cli("list", "--remote", "origin"), "give MODEL")


def test_rollback_on_the_remote_from_any_machine_holds_against_stale_pushes(cli, root, url, endpoint, tmp_path):
    _add(cli, url, endpoint)
    cli("deploy", "ssd", make_savedmodel(tmp_path / "a", variant=1))
    cli("deploy", "ssd", make_savedmodel(tmp_path / "b", variant=2))
    cli("push")
    operator = _second_root(tmp_path, "operator")  # holds no model at all
    cli("remote", "add", "origin", url, "--endpoint", endpoint, root_dir=operator)
    before = snapshot(operator)
    run = cli("rollback", "ssd", "1.0.0", "--remote", "origin", "--reason", "bad recall", "--json",
              root_dir=operator)
    assert run.code == 0, run.err
    assert run.json() == {"model": "ssd", "version": "1.0.0", "previous": "1.1.0", "unchanged": False,
                          "remote": "origin"}
    assert snapshot(operator) == before  # nothing local changed
    again = cli("rollback", "ssd", "1.0.0", "--remote", "origin", "--json", root_dir=operator).json()
    assert again["unchanged"]
    # the trainer has not seen the rollback: its next push adds its version, leaves production alone
    cli("deploy", "ssd", make_savedmodel(tmp_path / "c", variant=3))
    run = cli("push", "--json")
    doc = run.json()["pushed"][0]
    assert run.code == 1 and "not moved" in doc["error"]
    assert doc["versions_sent"] == 1 and not doc["current_moved"] and doc["remote_current"] == "1.0.0"
    host = _second_root(tmp_path, "host")
    cli("remote", "add", "origin", url, "--endpoint", endpoint, root_dir=host)
    assert cli("pull", "ssd", "--json", root_dir=host).json()["pulled"][0]["current"] == "1.0.0"
    from gaia_cas.remotes import get

    _, manifests = get(Repository(root), "origin").open()
    event = next(e for e in manifests.snapshot("ssd").manifest.history if e.action == "rollback")
    assert (event.before, event.after, event.reason) == ("1.1.0", "1.0.0", "bad recall")
    assert_one_line_error(cli("rollback", "ssd", "9.9.9", "--remote", "origin", root_dir=operator), "9.9.9")
    assert_one_line_error(cli("rollback", "nothere", "1.0.0", "--remote", "origin", root_dir=operator),
                          "unknown model 'nothere'")


def test_verify_remote_reports_a_corrupt_or_missing_object_and_only_repair_mends_it(cli, root, url, endpoint, tmp_path,
                                                                                s3_server):  # noqa: F811
    _add(cli, url, endpoint)
    cli("deploy", "ssd", make_savedmodel(tmp_path / "a", variant=1))
    cli("push")
    ok = cli("verify", "--remote", "origin", "--json")
    assert ok.code == 0 and ok.json()["ok"] and ok.json()["checked_objects"] >= 4
    repo = Repository(root)
    entries = {e.name: e.oid for _, e in repo.trees.walk(repo.manifest("ssd").current_version().tree)}
    bad, gone = entries["saved_model.pb"], entries["fingerprint.pb"]
    prefix = url.split("/", 3)[3]
    raw = boto3.client("s3", endpoint_url=endpoint)
    raw.put_object(Bucket=s3_server.bucket, Key=f"{prefix}/objects/{bad[:2]}/{bad[2:]}", Body=b"bad")
    raw.delete_object(Bucket=s3_server.bucket, Key=f"{prefix}/objects/{gone[:2]}/{gone[2:]}")
    run = cli("verify", "--remote", "origin", "--json")
    assert run.code == 1
    problems = {p["oid"]: p for p in run.json()["problems"]}
    assert problems[bad]["kind"] == "corrupt-object" and problems[gone]["kind"] == "missing-object"
    assert problems[bad]["versions"] == ["ssd 1.0.0"]
    text = cli("verify", "ssd", "--remote", "origin")
    assert text.code == 1 and bad in text.out and ": 2 problems" in text.out
    assert raw.get_object(Bucket=s3_server.bucket, Key=f"{prefix}/objects/{bad[:2]}/{bad[2:]}")["Body"].read() == b"bad"
    mended = cli("verify", "--remote", "origin", "--repair", "--json")  # from this store's good bytes
    assert mended.code == 0 and mended.json()["ok"] and {p["oid"] for p in mended.json()["problems"]} == {bad, gone}
    assert raw.get_object(Bucket=s3_server.bucket, Key=f"{prefix}/objects/{bad[:2]}/{bad[2:]}")["Body"].read() == \
        (repo.objects.path(bad)).read_bytes()
    assert cli("verify", "--remote", "origin").code == 0


def test_sync_pulls_what_changed_and_a_second_sync_writes_nothing(cli, root, url, endpoint, tmp_path, monkeypatch):
    _add(cli, url, endpoint)
    cli("deploy", "ssd", make_savedmodel(tmp_path / "a", variant=1))
    cli("push")
    host = _second_root(tmp_path, "host")
    cli("remote", "add", "origin", url, "--endpoint", endpoint, root_dir=host)
    first = cli("sync", "--json", root_dir=host).json()["pulled"]
    assert [(r["model"], r["current"], r["changed"]) for r in first] == [("ssd", "1.0.0", True)]
    before = snapshot(host)
    again = cli("sync", root_dir=host)
    assert again.code == 0 and again.out.strip() == "up to date" and snapshot(host) == before


def _line(proc, timeout: float = 20.0) -> str:
    """The process's next output line, or a failure after ``timeout`` s (never a hung test)."""
    import selectors

    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        assert sel.select(timeout), "no output in time"
    return proc.stdout.readline()


def test_sync_watch_follows_the_remote_until_stopped(cli, root, url, endpoint, tmp_path):
    import signal

    _add(cli, url, endpoint)
    cli("deploy", "ssd", make_savedmodel(tmp_path / "a", variant=1))
    cli("push")
    host = _second_root(tmp_path, "host")
    cli("remote", "add", "origin", url, "--endpoint", endpoint, root_dir=host)
    watcher = subprocess.Popen([sys.executable, "-m", "gaia_cas", "--root", str(host), "sync", "--watch",
                                "--interval", "0.2"], env=dict(os.environ, PYTHONPATH=str(CHECKOUT)),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "current - -> 1.0.0" in _line(watcher)
        cli("deploy", "ssd", make_savedmodel(tmp_path / "b", variant=2))
        cli("push")
        assert "current 1.0.0 -> 1.1.0" in _line(watcher)  # followed, within rounds
        link = host / "models" / "ssd" / "current" / "saved_model.pb"
        assert link.read_bytes() == (tmp_path / "b" / "saved_model.pb").read_bytes()
    finally:
        watcher.send_signal(signal.SIGTERM)
        out, err = watcher.communicate(timeout=20)
    assert watcher.returncode == 128 + signal.SIGTERM and "Traceback" not in err


def test_a_nothing_changed_push_reads_the_remote_manifest_once(cli, root, url, endpoint, tmp_path, monkeypatch):
    from gaia_cas.s3 import S3ManifestStore

    _add(cli, url, endpoint)
    assert cli("deploy", "ssd", make_savedmodel(tmp_path / "a")).code == 0
    assert cli("push", "ssd").code == 0
    reads = []
    real = S3ManifestStore.snapshot
    monkeypatch.setattr(S3ManifestStore, "snapshot", lambda self, model: reads.append(model) or real(self, model))
    again = Repository(root).remote().push("ssd")[0]
    assert (again.versions_sent, again.objects_sent) == (0, 0)
    assert reads == ["ssd"]  # one GET of the manifest: what it reaches is never checked again


@pytest.mark.parametrize("command", ["pull", "sync"])
def test_pull_all_and_sync_report_a_bad_model_and_still_take_the_others(cli, root, url, endpoint, tmp_path,
                                                                         s3_server, command):  # noqa: F811
    _add(cli, url, endpoint)
    cli("deploy", "ssd", make_savedmodel(tmp_path / "a", variant=1))
    cli("deploy", "catboost", make_savedmodel(tmp_path / "c", variant=3))
    assert cli("push").code == 0
    repo = Repository(root)
    blob = next(e.oid for _, e in repo.trees.walk(repo.manifest("catboost").current_version().tree)
                if e.name == "saved_model.pb")
    prefix = url.split("/", 3)[3]
    boto3.client("s3", endpoint_url=endpoint).put_object(Bucket=s3_server.bucket,
                                                         Key=f"{prefix}/objects/{blob[:2]}/{blob[2:]}", Body=b"bad")
    host = _second_root(tmp_path)
    cli("remote", "add", "origin", url, "--endpoint", endpoint, root_dir=host)
    args = ("pull", "all") if command == "pull" else ("sync",)
    run = cli(*args, root_dir=host)
    assert run.code == 1
    errors = [line for line in run.err.splitlines() if line.startswith("gaia-cas: error:")]
    assert len(errors) == 1 and "catboost" in errors[0] and blob in errors[0], run.err
    assert "Traceback" not in run.err
    assert Repository(host).manifest("ssd").current == "1.0.0"  # the good model was taken
    assert Repository(host).manifests.read("catboost") is None  # the bad one left no trace
    doc = cli("--json", *args, root_dir=host)
    assert doc.code == 1
    failed = [r for r in doc.json()["pulled"] if r.get("error")]
    assert [r["model"] for r in failed] == ["catboost"]
