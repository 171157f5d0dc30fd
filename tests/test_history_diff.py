"""history: the append-only audit trail (who, when, why, before -> after); diff: what changed between
two versions, computed from tree objects alone."""

from __future__ import annotations

import getpass
import json
import os
import shutil
import socket
from datetime import datetime

import pytest

from conftest import assert_one_line_error, make_joblib, make_savedmodel, snapshot
from gaia_cas.materialize import remove_tree

USER = getpass.getuser()
HOST = socket.gethostname()


def events(cli, model="m"):
    run = cli("history", model, "--json")
    assert run.code == 0, run.err
    return run.json()["events"]


def deploy_variants(cli, tmp_path, model, variants, *extra):
    src = tmp_path / f"src-{model}"
    for variant in variants:
        make_savedmodel(src, variant)
        run = cli("deploy", model, src, "--reason", f"variant {variant}", *extra)
        assert run.code == 0, run.err


# -- history ---------------------------------------------------------------------------------

def test_deploy_rollback_promote_sequence_with_who_and_why(cli, tmp_path):
    deploy_variants(cli, tmp_path, "m", [0, 1])
    assert cli("rollback", "m", "1.0", "--reason", "recall dropped 4% on night images").code == 0
    assert cli("promote", "m", "1.1", "--to", "staging", "--reason", "re-test the July model").code == 0

    run = cli("history", "m", "--json")
    assert run.code == 0, run.err
    doc = run.json()
    assert doc["model"] == "m"
    got = [(e["generation"], e["action"], e["version"], e["before"], e["after"], e["user"], e["host"], e["reason"])
           for e in doc["events"]]
    assert got == [
        (1, "deploy", "1.0.0", None, "1.0.0", USER, HOST, "variant 0"),
        (2, "deploy", "1.1.0", "1.0.0", "1.1.0", USER, HOST, "variant 1"),
        (3, "rollback", "1.0.0", "1.1.0", "1.0.0", USER, HOST, "recall dropped 4% on night images"),
        (4, "promote", "1.1.0", None, "1.1.0", USER, HOST, "re-test the July model"),
    ]
    assert doc["events"][3]["details"] == {"channel": "staging"}
    for e in doc["events"]:
        assert datetime.fromisoformat(e["at"]).tzinfo is not None  # a time with its offset

    text = cli("history", "m").out.splitlines()
    assert text[0].split() == ["GEN", "TIME", "ACTION", "CHANGE", "WHO", "REASON"]
    rows = text[1:]
    assert len(rows) == 4
    assert "deploy" in rows[0] and "- -> 1.0.0" in rows[0] and f"{USER}@{HOST}" in rows[0]
    assert "1.0.0 -> 1.1.0" in rows[1]
    assert "rollback" in rows[2] and "1.1.0 -> 1.0.0" in rows[2] and rows[2].endswith("recall dropped 4% on night images")
    assert "promote staging" in rows[3] and "- -> 1.1.0" in rows[3] and rows[3].endswith("re-test the July model")
    assert all(f"{USER}@{HOST}" in row for row in rows)


def test_history_is_found_through_an_alias_and_unknown_models_are_one_line(cli, root, tmp_path):
    assert cli("model", "add", "ssd", "--alias", "dl", "--reason", "new detector").code == 0
    doc = cli("history", "dl", "--json").json()
    assert doc["model"] == "ssd"
    assert [(e["action"], e["reason"]) for e in doc["events"]] == [("model-add", "new detector")]
    before = snapshot(root)
    assert_one_line_error(cli("history", "nosuch"), "nosuch")
    assert snapshot(root) == before


def _legacy(base):
    make_joblib(base / "m_model" / "versions" / "v0.9_20250101_000000" / "model.joblib", 42)
    os.symlink("versions/v0.9_20250101_000000/model.joblib", base / "m_model" / "current")
    return base


# command -> (argv with {src}/{tar}/{legacy} placeholders, action recorded)
MUTATING = {
    "model add": (["model", "add", "n", "--alias", "nn"], "model-add"),
    "model set": (["model", "set", "m", "--meta", "threshold=0.6"], "model-set"),
    "deploy": (["deploy", "m", "{src}"], "deploy"),
    "rollback": (["rollback", "m", "1.0"], "rollback"),
    "pin": (["pin", "m", "1.0"], "pin"),
    "unpin": (["unpin", "m", "1.1"], "unpin"),
    "cleanup": (["cleanup", "m", "--keep", "1"], "cleanup"),
    "promote": (["promote", "m", "1.0", "--to", "staging"], "promote"),
    "import": (["import", "{tar}", "m"], "deploy"),
    "import-legacy": (["import-legacy", "{legacy}"], "import"),
}


@pytest.fixture
def busy(cli, repo, tmp_path):
    """m: 1.0.0, 1.1.0 (pinned), 1.2.0 current, and an archive of a fourth variant."""
    deploy_variants(cli, tmp_path, "m", [0, 1, 2])
    repo.pin("m", "1.1")
    other = tmp_path / "other"
    make_savedmodel(other, 9)
    repo.deploy("x", other)
    tar = tmp_path / "x.tar"
    repo.export("x", None, tar)
    src = tmp_path / "src-new"
    make_savedmodel(src, 5)
    return {"src": src, "tar": tar, "legacy": _legacy(tmp_path / "old")}


@pytest.mark.parametrize("command", sorted(MUTATING))
def test_every_mutating_command_takes_a_reason_and_records_it(cli, repo, busy, command):
    """In the history, and (parser.py: '--reason TEXT  why: recorded in the history and the log') in the log."""
    argv, action = MUTATING[command]
    argv = [a.format(**busy) for a in argv]
    model = "n" if command == "model add" else "m"
    reason = f"because of ticket {command.replace(' ', '-')}"
    run = cli(*argv, "--reason", reason)
    assert run.code == 0, run.err
    history = events(cli, model)
    mine = [e for e in history if e["reason"] == reason]
    assert mine, history[-3:]
    assert {e["action"] for e in mine} == {action}
    assert all(e["user"] == USER and e["host"] == HOST for e in mine)
    if command == "import-legacy":
        # the migration itself is recorded per imported version, with the reason given
        assert [e["details"]["legacy"] for e in mine] == ["v0.9_20250101_000000"]
    lines = cli("logs", "-n", "5", "--json").json()["lines"]
    assert any(reason in line for line in lines), f"--reason missing from the operation log: {lines[-1]}"


def test_verify_repair_takes_a_reason_too(cli, repo, tmp_path):
    """verify --repair changes manifests (marks versions broken) and records an event: it is mutating."""
    deploy_variants(cli, tmp_path, "m", [0, 1])
    entries = {e.name: e for e in repo.trees.entries(repo.manifest("m").find("1.0.0").tree)}
    path = repo.objects.path(entries["saved_model.pb"].oid)
    os.chmod(path, 0o644)
    path.write_bytes(b"garbage")
    run = cli("verify", "--repair", "--reason", "disk errors on sdb")
    assert run.code == 0, run.err
    last = events(cli)[-1]
    assert (last["action"], last["reason"]) == ("verify-repair", "disk errors on sdb")


def test_nothing_rewrites_history(cli, repo, tmp_path):
    seen: list[dict] = []

    def step(*argv):
        run = cli(*argv)
        assert run.code == 0, (argv, run.err)
        now = events(cli)
        assert now[: len(seen)] == seen, f"{argv} rewrote history"
        assert len(now) >= len(seen)
        seen[:] = now

    src = tmp_path / "src"
    for variant in range(4):
        make_savedmodel(src, variant)
        step("deploy", "m", src, "--reason", f"v{variant}")
    step("pin", "m", "1.1", "--reason", "golden")
    step("rollback", "m", "1.1")
    step("promote", "m", "1.2", "--to", "canary")
    step("model", "set", "m", "--keep", "1", "--reason", "tight disk")
    step("unpin", "m", "1.1")
    step("cleanup", "m", "--keep", "0", "--reason", "free space")  # removes 1.0.0 and 1.3.0
    step("gc", "--grace", "0")
    step("rollback", "m", "1.2")
    # failures append nothing
    for argv in (("rollback", "m", "1.0"), ("promote", "m", "9.9", "--to", "x"), ("pin", "m", "1.3")):
        assert cli(*argv).code == 1
        assert events(cli) == seen

    assert [v.version for v in repo.manifest("m").versions] == ["1.1.0", "1.2.0"]
    # the removed versions' deploys are still there, as they were
    deploys = [(e["version"], e["reason"]) for e in seen if e["action"] == "deploy"]
    assert deploys == [("1.0.0", "v0"), ("1.1.0", "v1"), ("1.2.0", "v2"), ("1.3.0", "v3")]
    cleanup = [e for e in seen if e["action"] == "cleanup"]
    assert len(cleanup) == 1 and cleanup[0]["details"]["removed"] == ["1.0.0", "1.3.0"]
    assert cleanup[0]["reason"] == "free space"
    generations = [e["generation"] for e in seen]
    assert generations == sorted(generations) and generations[-1] == repo.manifest("m").generation
    assert [e["action"] for e in seen] == ["deploy"] * 4 + ["pin", "rollback", "promote", "model-set", "unpin",
                                                          "cleanup", "rollback"]
    assert "removed 1.0.0, 1.3.0" in cli("history", "m").out


# -- diff ------------------------------------------------------------------------------------

@pytest.fixture
def two(cli, tmp_path):
    """1.0.0 and 1.1.0 of a SavedModel-like folder that differ in every way a diff can show."""
    a = make_savedmodel(tmp_path / "a" / "saved_model", 0, variables_bytes=4096)
    (a / "assets" / "old.txt").write_bytes(b"0123456789")
    (a / "assets" / "same.txt").write_bytes(b"same")
    run = cli("deploy", "m", a, "--meta", "threshold=0.5", "--meta", "only_a=1", "--meta", "same=x")
    assert run.code == 0, run.err
    b = make_savedmodel(tmp_path / "b" / "saved_model", 1, variables_bytes=8192)
    (b / "fingerprint.pb").unlink()
    (b / "assets" / "same.txt").write_bytes(b"same")
    (b / "assets" / "new.txt").write_bytes(b"1234567")
    (b / "extra" / "deep").mkdir(parents=True)
    (b / "extra" / "deep" / "x.bin").write_bytes(b"x" * 300)
    run = cli("deploy", "m", b, "--meta", "threshold=0.6", "--meta", "only_b=[1, 2]", "--meta", "same=x")
    assert run.code == 0, run.err


EXPECTED = {
    "model": "m", "a": "1.0.0", "b": "1.1.0",
    "added": [{"path": "assets/new.txt", "size": 7}, {"path": "extra/deep/x.bin", "size": 300}],
    "removed": [{"path": "assets/old.txt", "size": 10}, {"path": "fingerprint.pb", "size": 2}],
    "changed": [{"path": "saved_model.pb", "size_a": 39, "size_b": 39},
                {"path": "variables/variables.data-00000-of-00001", "size_a": 4096, "size_b": 8192}],
    "metadata": {"only_a": {"a": 1, "b": None}, "only_b": {"a": None, "b": [1, 2]},
                 "threshold": {"a": 0.5, "b": 0.6}},
}


def test_diff_lists_files_added_removed_changed_with_sizes_and_metadata(cli, two):
    run = cli("diff", "m", "1.0", "1.1", "--json")
    assert run.code == 0, run.err
    assert run.json() == EXPECTED

    text = cli("diff", "m", "1.0", "1.1").out.splitlines()
    assert text == [
        "m 1.0.0 -> 1.1.0",
        "  + assets/new.txt  (7 B)",
        "  + extra/deep/x.bin  (300 B)",
        "  - assets/old.txt  (10 B)",
        "  - fingerprint.pb  (2 B)",
        "  ~ saved_model.pb  (39 B -> 39 B)",
        "  ~ variables/variables.data-00000-of-00001  (4.0 KiB -> 8.0 KiB)",
        "  metadata.only_a: 1 -> null",
        "  metadata.only_b: null -> [1, 2]",
        "  metadata.threshold: 0.5 -> 0.6",
    ]


def test_diff_the_other_way_round_swaps_added_and_removed(cli, two):
    doc = cli("diff", "m", "1.1.0", "1.0.0", "--json").json()
    assert doc["added"] == EXPECTED["removed"] and doc["removed"] == EXPECTED["added"]
    assert doc["changed"] == [{"path": c["path"], "size_a": c["size_b"], "size_b": c["size_a"]}
                              for c in EXPECTED["changed"]]
    assert doc["metadata"]["threshold"] == {"a": 0.6, "b": 0.5}


def test_diff_needs_only_the_tree_objects(cli, repo, root, two):
    """No materialized tree and no file object is read: delete them all and the answer is the same."""
    for entry in os.listdir(root / "store" / "trees"):
        remove_tree(root / "store" / "trees" / entry)
    assert os.listdir(root / "store" / "trees") == []
    tree_oids = set()
    for version in repo.manifest("m").versions:
        tree_oids.add(version.tree)
        tree_oids.update(e.oid for _, e in repo.trees.walk(version.tree) if e.kind == "dir")
    file_objects = [p for p in (root / "store" / "objects").rglob("*")
                    if p.is_file() and p.parent.name + p.name not in tree_oids]
    assert len(file_objects) >= 8
    for path in file_objects:
        os.unlink(path)
    remaining = {p.parent.name + p.name for p in (root / "store" / "objects").rglob("*") if p.is_file()}
    assert remaining == tree_oids  # only tree objects are left

    before = snapshot(root)
    run = cli("diff", "m", "1.0", "1.1", "--json")
    assert run.code == 0, run.err
    assert run.json() == EXPECTED
    assert snapshot(root) == before  # nothing rebuilt, nothing written


def test_diff_of_a_file_model_and_of_identical_versions(cli, tmp_path):
    path = tmp_path / "cb" / "model_catboost_best.joblib"
    make_joblib(path, 0)
    assert cli("deploy", "cb", path).code == 0
    size_a = path.stat().st_size
    path.write_bytes(path.read_bytes() + b"\x00" * 5)
    assert cli("deploy", "cb", path, "--meta", "note=longer").code == 0
    assert cli("deploy", "cb", path, "--force", "--meta", "note=longer").code == 0  # 1.2.0: same tree as 1.1.0
    doc = cli("diff", "cb", "1.0", "1.1", "--json").json()
    assert doc["changed"] == [{"path": "model_catboost_best.joblib", "size_a": size_a, "size_b": size_a + 5}]
    assert doc["added"] == [] and doc["removed"] == []
    assert doc["metadata"] == {"note": {"a": None, "b": "longer"}}

    same = cli("diff", "cb", "1.1", "1.2", "--json").json()
    assert (same["added"], same["removed"], same["changed"], same["metadata"]) == ([], [], [], {})
    assert cli("diff", "cb", "1.1", "1.2").out.splitlines() == ["cb 1.1.0 -> 1.2.0", "  identical"]


def test_diff_accepts_every_selector(cli, repo, two):
    v0 = repo.manifest("m").find("1.0.0")
    for a in ("1.0", "v1.0.0", f"v1.0_{v0.deployment_id}", v0.tree[:10]):
        doc = cli("diff", "m", a, "1.1", "--json").json()
        assert doc == EXPECTED, a
    assert cli("rollback", "m", "1.0").code == 0
    assert cli("diff", "m", "previous", "1.0", "--json").json()["a"] == "1.1.0"


@pytest.mark.parametrize("argv, fragment", [
    (["diff", "m", "1.0", "9.9"], "9.9"),
    (["diff", "m", "bogus!", "1.0"], "malformed version"),
    (["diff", "nosuch", "1.0", "1.1"], "nosuch"),
])
def test_diff_errors_are_one_line(cli, root, two, argv, fragment):
    before = snapshot(root)
    assert_one_line_error(cli(*argv), fragment)
    assert snapshot(root) == before


def test_diff_of_a_damaged_tree_object_is_one_line(cli, repo, root, two):
    tree = repo.manifest("m").find("1.1.0").tree
    path = repo.objects.path(tree)
    os.chmod(path, 0o644)
    path.write_bytes(b"\xc1 not msgpack")
    assert_one_line_error(cli("diff", "m", "1.0", "1.1"), tree)


def test_diff_between_a_folder_and_a_file_version(cli, tmp_path):
    folder = make_savedmodel(tmp_path / "sm", 0)
    shutil.rmtree(folder / "assets")
    assert cli("deploy", "m", folder).code == 0
    assert cli("deploy", "m", make_joblib(tmp_path / "f" / "model.joblib")).code == 0
    doc = cli("diff", "m", "1.0", "1.1", "--json").json()
    assert [a["path"] for a in doc["added"]] == ["model.joblib"]
    assert sorted(r["path"] for r in doc["removed"]) == [
        "fingerprint.pb", "saved_model.pb", "variables/variables.data-00000-of-00001", "variables/variables.index"]
    assert doc["changed"] == []
    assert json.dumps(doc)  # plain JSON


def test_history_is_stored_as_a_stream_and_decoded_only_when_read(repo, root, tmp_path, cli):
    import msgpack

    from gaia_cas import manifest as mf
    from gaia_cas.errors import CorruptionError

    src = tmp_path / "s"
    for variant in range(3):
        make_savedmodel(src, variant)
        repo.deploy("m", src)
    path = root / "manifests" / "m.msgpack"
    doc = msgpack.unpackb(path.read_bytes(), raw=False)
    assert isinstance(doc["history"], bytes) and doc["event_fields"][:3] == ["generation", "at", "action"]
    decoded = mf.decode(path.read_bytes())
    assert decoded._history is None  # nothing decoded yet
    assert [e.generation for e in decoded.history] == [1, 2, 3]
    doc["history"] = doc["history"] + b"\xc1"  # a byte that is never valid msgpack
    os.chmod(path, 0o644)
    path.write_bytes(msgpack.packb(doc, use_bin_type=True))
    try:
        mf.decode(path.read_bytes()).history
        raise AssertionError("expected CorruptionError")
    except CorruptionError as exc:
        assert "history does not decode" in str(exc)
    run = cli("history", "m")
    assert run.code == 1 and run.err.startswith("gaia-cas: error:") and "history" in run.err
