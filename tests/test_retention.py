"""cleanup and pins: every retention rule, their union, plans, history, and the old script's case."""

from __future__ import annotations

from datetime import timedelta

import pytest

from conftest import assert_one_line_error, lock_held_elsewhere, make_joblib, make_savedmodel, snapshot
from gaia_cas.errors import InvalidInputError
from gaia_cas.retention import parse_age


def deploy_n(repo, tmp_path, model, n, start=0):
    src = tmp_path / f"src-{model}"
    for variant in range(start, start + n):
        make_savedmodel(src, variant)
        repo.deploy(model, src)


def versions(repo, model):
    return [v.version for v in repo.manifest(model).versions]


def object_files(root):
    return sorted(p for p in (root / "store" / "objects").rglob("*") if p.is_file())


def test_old_script_case_cleanup_then_gc(cli, repo, root, tmp_path):
    """7 SSD and 4 CatBoost versions, keep 3 each; gc frees exactly what no survivor uses."""
    big = 2 * 1024 * 1024
    ssd = tmp_path / "ssd"
    for variant in range(7):
        make_savedmodel(ssd, variant, variables_bytes=big)
        # every version also carries a large file of its own, so removed versions free real bytes
        (ssd / "variables" / "own.bin").write_bytes(bytes([variant]) * big)
        assert cli("deploy", "ssd", ssd).code == 0
    cb = tmp_path / "cb" / "model_catboost_best.joblib"
    for variant in range(4):
        make_joblib(cb, variant)
        assert cli("deploy", "catboost", cb).code == 0
    cli("rollback", "ssd", "1.0")  # the current version is the oldest one
    before = cli("status", "--json").json()["store"]

    run = cli("cleanup", "all", "--json")
    assert run.code == 0, run.err
    kept = {m["model"]: [k["version"] for k in m["keep"]] for m in run.json()["models"]}
    assert kept == {"ssd": ["1.6.0", "1.5.0", "1.4.0", "1.0.0"], "catboost": ["1.3.0", "1.2.0", "1.1.0"]}
    assert versions(repo, "ssd") == ["1.0.0", "1.4.0", "1.5.0", "1.6.0"]
    assert versions(repo, "catboost") == ["1.1.0", "1.2.0", "1.3.0"]

    middle = cli("status", "--json").json()["store"]
    assert middle["bytes_on_disk"] == before["bytes_on_disk"]  # cleanup never touches objects
    # Exactly the three removed SSD versions' own.bin files and the removed CatBoost pickle
    # (plus their tree objects) are used by no remaining version.
    assert middle["reclaimable_bytes"] >= 3 * big
    assert middle["logical_bytes"] < before["logical_bytes"]

    run = cli("gc", "--grace", "0", "--json")
    assert run.code == 0, run.err
    freed = run.json()["bytes_freed"]
    after = cli("status", "--json").json()["store"]
    assert freed == middle["reclaimable_bytes"]
    assert after["bytes_on_disk"] == middle["bytes_on_disk"] - freed
    assert after["reclaimable_bytes"] == 0
    for model in ("ssd", "catboost"):
        for v in repo.manifest(model).versions:
            repo.check_complete(v.tree)  # every survivor still has every object

    state = snapshot(root)
    assert_one_line_error(cli("rollback", "ssd", "1.2"), "removed by a cleanup")
    assert snapshot(root) == state
    assert repo.manifest("ssd").current == "1.0.0"


def test_keep_n_counts_deployment_order_and_never_removes_current_or_pinned(repo, tmp_path):
    deploy_n(repo, tmp_path, "m", 6)
    repo.pin("m", "1.0")
    repo.rollback("m", "1.1")
    plans = repo.cleanup(["m"], keep=2)
    assert plans[0].removed == ["1.2.0", "1.3.0"]
    assert versions(repo, "m") == ["1.0.0", "1.1.0", "1.4.0", "1.5.0"]
    reasons = {d.version: d.reasons for d in plans[0].decisions}
    assert reasons["1.0.0"] == ["pinned"] and reasons["1.1.0"] == ["current"]
    assert reasons["1.5.0"] == ["newest 2"]


def test_keep_zero_still_keeps_current_and_pins(repo, tmp_path):
    deploy_n(repo, tmp_path, "m", 4)
    repo.pin("m", "1.1")
    repo.cleanup(["m"], keep=0)
    assert versions(repo, "m") == ["1.1.0", "1.3.0"]


def test_age_rule_keeps_young_versions_whatever_n_says(repo, tmp_path):
    deploy_n(repo, tmp_path, "m", 5)
    now = repo.manifest("m").versions[-1].created_at
    from datetime import datetime

    moment = datetime.fromisoformat(now)
    young = repo.plan_cleanup(["m"], keep=1, older_than="1h", now=moment + timedelta(minutes=30))[0]
    assert young.remove == []
    assert all("younger than 1h" in d.reasons for d in young.decisions)
    old = repo.plan_cleanup(["m"], keep=1, older_than="1h", now=moment + timedelta(hours=2))[0]
    assert old.remove == ["1.3.0", "1.2.0", "1.1.0", "1.0.0"]


def test_rules_combine_by_union(repo, tmp_path):
    """Pinned older than everything, current the oldest, newest N and an age limit together."""
    from datetime import datetime

    deploy_n(repo, tmp_path, "m", 6)
    repo.pin("m", "1.0")
    repo.rollback("m", "1.1")
    last = datetime.fromisoformat(repo.manifest("m").versions[-1].created_at)
    plan = repo.plan_cleanup(["m"], keep=1, older_than="1d", now=last + timedelta(days=2))[0]
    assert plan.remove == ["1.4.0", "1.3.0", "1.2.0"]
    plan = repo.plan_cleanup(["m"], keep=1, older_than="1d", now=last)[0]
    assert plan.remove == []


def test_model_policy_is_applied_by_bare_cleanup_all(cli, repo, tmp_path):
    deploy_n(repo, tmp_path, "a", 5)
    deploy_n(repo, tmp_path, "b", 5)
    assert cli("model", "set", "a", "--keep", "1").code == 0
    doc = cli("model", "show", "a", "--json").json()
    assert doc["retention"] == {"keep": 1, "keep_within": None}
    assert cli("cleanup").code == 0
    assert versions(repo, "a") == ["1.4.0"]
    assert versions(repo, "b") == ["1.2.0", "1.3.0", "1.4.0"]  # default keep 3
    assert cli("cleanup", "b", "--keep", "10").code == 0  # explicit option beats the policy
    assert versions(repo, "b") == ["1.2.0", "1.3.0", "1.4.0"]


def test_dry_run_changes_nothing_and_explains_each_survivor(cli, repo, root, tmp_path):
    deploy_n(repo, tmp_path, "m", 5)
    before = snapshot(root)
    run = cli("cleanup", "m", "--keep", "2", "--dry-run")
    assert run.code == 0 and snapshot(root) == before
    assert "would remove 1.2.0, 1.1.0, 1.0.0" in run.out
    doc = cli("cleanup", "m", "--keep", "2", "--dry-run", "--json").json()
    assert doc["dry_run"] is True
    assert doc["models"][0]["keep"] == [{"version": "1.4.0", "reasons": ["current", "newest 2"]},
                                        {"version": "1.3.0", "reasons": ["newest 2"]}]


def test_cleanup_is_recorded_in_history_and_touches_no_object(repo, root, tmp_path):
    deploy_n(repo, tmp_path, "m", 5)
    objects = object_files(root)
    repo.cleanup(["m"], keep=1, reason="disk quota")
    assert object_files(root) == objects
    event = repo.manifest("m").history[-1]
    assert event.action == "cleanup" and event.reason == "disk quota"
    assert event.details["removed"] == ["1.0.0", "1.1.0", "1.2.0", "1.3.0"]


def test_a_version_that_became_current_after_planning_is_not_removed(repo, tmp_path, monkeypatch):
    deploy_n(repo, tmp_path, "m", 4)
    stale = repo.plan_cleanup(["m"], keep=1)
    assert "1.0.0" in stale[0].remove
    repo.rollback("m", "1.0")  # happens between planning and execution
    monkeypatch.setattr(type(repo), "plan_cleanup", lambda self, *a, **k: stale)
    plans = repo.cleanup(["m"], keep=1)
    assert plans[0].removed == ["1.1.0", "1.2.0"]
    assert "1.0.0" in versions(repo, "m")


def test_numbers_are_not_reused_after_cleanup(repo, tmp_path):
    deploy_n(repo, tmp_path, "m", 4)
    repo.cleanup(["m"], keep=0)  # only the current 1.3.0 stays
    deploy_n(repo, tmp_path, "m", 1, start=10)
    assert versions(repo, "m") == ["1.3.0", "1.4.0"]
    with pytest.raises(InvalidInputError, match="already assigned"):
        repo.deploy("m", make_savedmodel(tmp_path / "x", 99), version="1.1.0")


def test_pin_unpin_via_cli(cli, repo, tmp_path):
    deploy_n(repo, tmp_path, "m", 4)
    assert cli("pin", "m", "1.0", "--reason", "audit baseline").code == 0
    assert repo.manifest("m").find("1.0.0").pinned
    assert cli("list", "m", "--json").json()["versions"][-1]["pinned"] is True
    cli("cleanup", "m", "--keep", "1")
    assert versions(repo, "m") == ["1.0.0", "1.3.0"]
    assert cli("unpin", "m", "1.0").code == 0
    cli("cleanup", "m", "--keep", "1")
    assert versions(repo, "m") == ["1.3.0"]
    actions = [e.action for e in repo.manifest("m").history]
    assert actions.count("pin") == 1 and actions.count("unpin") == 1
    assert_one_line_error(cli("pin", "m", "1.0"), "removed by a cleanup")


@pytest.mark.parametrize("text, seconds", [("30d", 30 * 86400), ("12h", 43200), ("2w", 1209600),
                                           ("90m", 5400), ("45s", 45), ("1d12h", 129600), ("0", 0)])
def test_ages(text, seconds):
    assert parse_age(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["", "30", "d", "3y", "-1d", "1.5d", "soon"])
def test_bad_ages(text):
    with pytest.raises(InvalidInputError):
        parse_age(text)


def test_bad_retention_options_change_nothing(cli, repo, root, tmp_path):
    deploy_n(repo, tmp_path, "m", 2)
    before = snapshot(root)
    assert_one_line_error(cli("cleanup", "m", "--older-than", "soon"), "invalid age")
    assert_one_line_error(cli("cleanup", "m", "--keep", "-1"), "--keep")
    assert_one_line_error(cli("model", "set", "m", "--keep-within", "3y"), "invalid age")
    assert_one_line_error(cli("cleanup", "nope"), "unknown model")
    assert snapshot(root) == before


def test_keep_within_empty_clears_the_policy(repo, tmp_path, cli):
    repo.deploy("m", make_savedmodel(tmp_path / "s"))
    assert cli("model", "set", "m", "--keep", "2", "--keep-within", "30d").code == 0
    assert repo.manifest("m").config.retention == {"keep": 2, "keep_within": "30d"}
    assert cli("model", "set", "m", "--keep-within", "").code == 0
    assert repo.manifest("m").config.retention == {"keep": 2, "keep_within": None}



def test_cleanup_all_reports_a_locked_model_and_cleans_the_others(cli, repo, root, tmp_path):
    for model in ("a", "b"):
        src = tmp_path / f"src-{model}"
        for variant in range(3):
            make_savedmodel(src, variant)
            repo.deploy(model, src)
    with lock_held_elsewhere(root / "manifests" / "a.lock"):
        run = cli("--lock-timeout", "0.3", "cleanup", "all", "--keep", "1")
    assert run.code == 1 and "cleanup of a failed" in run.err and "a.lock" in run.err
    assert [v.version for v in repo.manifest("b").versions] == ["1.2.0"]
    assert len(repo.manifest("a").versions) == 3



def test_an_unreadable_timestamp_is_kept_by_every_age_rule(repo, tmp_path):
    from datetime import datetime, timedelta

    src = tmp_path / "s"
    for variant in range(3):
        make_savedmodel(src, variant)
        repo.deploy("m", src)
    with repo.manifests.edit("m") as manifest:
        from gaia_cas.manifest import record

        manifest.versions[0].created_at = "not a time"
        record(manifest, "model-set", version=None, before=manifest.current, at="x", user="t", host="t", reason=None)
    later = datetime.now().astimezone() + timedelta(days=10)
    plan = repo.plan_cleanup(["m"], keep=0, older_than="1d", now=later)[0]
    assert plan.remove == ["1.1.0"]  # 1.0.0's age is unknown: kept; 1.2.0 is current
