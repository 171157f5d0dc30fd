"""A team's first day: the demo never lands in a real store, a rollback is not silently undone by
the next scheduled deploy, and the signals service managers send stop a deploy cleanly."""

from __future__ import annotations

import os
import signal
import textwrap

import pytest

from conftest import CHECKOUT, assert_one_line_error, make_joblib, make_savedmodel, signal_when_ready, snapshot
from gaia_cas.errors import RolledBackContentError
from gaia_cas.repo import Repository


# -- demo ------------------------------------------------------------------------------------

def test_demo_refuses_a_root_that_holds_real_models(cli, root, tmp_path):
    repo = Repository(root)
    src = make_savedmodel(tmp_path / "train" / "saved_model")
    repo.add_model("ssd", aliases=["dl"], source=str(src), link="api/models/dl_model/current")
    repo.deploy("ssd")
    link_before = os.readlink(root / "api/models/dl_model/current")
    before = snapshot(root)
    run = cli("demo")
    assert_one_line_error(run, "demo", "ssd", "--root")
    assert snapshot(root) == before
    assert os.readlink(root / "api/models/dl_model/current") == link_before
    assert repo.manifest("ssd").current == "1.0.0"


def test_demo_refuses_a_root_with_any_model_it_did_not_make(cli, root, tmp_path):
    make_joblib(tmp_path / "m.joblib")
    Repository(root).deploy("fraud", tmp_path / "m.joblib")
    before = snapshot(root)
    assert_one_line_error(cli("demo"), "fraud")
    assert snapshot(root) == before


def test_demo_runs_again_in_a_root_only_it_filled(cli, root):
    assert cli("demo").code == 0
    again = cli("demo", "--json")
    assert again.code == 0
    assert [d["unchanged"] for d in again.json()["deployed"]] == [True, True]


def test_demo_refuses_when_a_sample_model_was_deployed_from_elsewhere(cli, root, tmp_path):
    assert cli("demo").code == 0
    src = make_savedmodel(tmp_path / "real" / "saved_model", variant=3)
    assert cli("deploy", "ssd", src).code == 0
    before = snapshot(root)
    assert_one_line_error(cli("demo"), "ssd")
    assert snapshot(root) == before


# -- a rollback is a decision the scheduled deploy respects ----------------------------------

@pytest.fixture
def rolled_back(repo, tmp_path):
    """ssd deployed as 1.0.0 (good) then 1.1.0 (regressed), rolled back to 1.0.0."""
    src = make_savedmodel(tmp_path / "train" / "saved_model", variant=0)
    repo.add_model("ssd", aliases=["dl"], source=str(src))
    repo.deploy("ssd")
    make_savedmodel(src, variant=1)
    repo.deploy("ssd")
    repo.rollback("ssd", "1.0.0", reason="regression in recall")
    return repo, src


def test_deploy_of_rolled_back_content_is_refused_and_names_the_rollback(rolled_back, cli, root):
    repo, src = rolled_back
    before = snapshot(root)
    run = cli("deploy", "ssd")
    assert_one_line_error(run, "1.1.0", "rolled back", "regression in recall", "--force")
    assert snapshot(root) == before
    assert repo.manifest("ssd").current == "1.0.0"
    with pytest.raises(RolledBackContentError) as info:
        repo.deploy("ssd")
    assert info.value.version == "1.1.0" and info.value.event.reason == "regression in recall"


def test_dry_run_says_the_deploy_would_be_refused(rolled_back, cli, root):
    before = snapshot(root)
    assert_one_line_error(cli("deploy", "ssd", "--dry-run"), "rolled back")
    assert snapshot(root) == before


def test_force_deploys_rolled_back_content_and_lifts_the_refusal(rolled_back):
    repo, src = rolled_back
    result = repo.deploy("ssd", force=True)
    assert result.version == "1.2.0" and not result.unchanged
    make_savedmodel(src, variant=2)
    repo.deploy("ssd")  # other content
    make_savedmodel(src, variant=1)
    assert repo.deploy("ssd").version == "1.4.0"  # chosen again on purpose at 1.2.0: no refusal


def test_other_content_deploys_normally_after_a_rollback(rolled_back):
    repo, src = rolled_back
    make_savedmodel(src, variant=5)
    assert repo.deploy("ssd").version == "1.2.0"


def test_refusal_survives_cleanup_of_the_rolled_back_version(rolled_back):
    repo, src = rolled_back
    make_savedmodel(src, variant=5)
    repo.deploy("ssd")  # 1.2.0, other content
    repo.cleanup(["ssd"], keep=1)
    assert repo.manifest("ssd").find("1.1.0") is None
    make_savedmodel(src, variant=1)
    with pytest.raises(RolledBackContentError):
        repo.deploy("ssd")


def test_refusal_is_decided_again_under_the_lock(repo, tmp_path, monkeypatch):
    """A rollback committed between the deploy's first look and its commit is still honoured."""
    src = make_savedmodel(tmp_path / "train" / "saved_model", variant=0)
    repo.add_model("ssd", source=str(src))
    repo.deploy("ssd")
    make_savedmodel(src, variant=1)
    repo.deploy("ssd")
    make_savedmodel(src, variant=1)
    repo.rollback("ssd", "1.0.0")
    repo.deploy("ssd", force=True)  # 1.2.0 = variant 1 again, made current on purpose
    repo.rollback("ssd", "1.0.0", reason="still bad")
    from gaia_cas import history

    real = history.rolled_back_from
    calls = []

    def first_look_sees_an_older_manifest(manifest, tree):
        calls.append(tree)
        if len(calls) == 1:
            return None  # as if the rollback had not been committed yet
        return real(manifest, tree)

    monkeypatch.setattr(history, "rolled_back_from", first_look_sees_an_older_manifest)
    with pytest.raises(RolledBackContentError):
        repo.deploy("ssd")
    assert len(calls) == 2
    assert repo.manifest("ssd").current == "1.0.0"


def test_deploy_all_reports_the_refusal_per_model_and_deploys_the_others(rolled_back, cli, tmp_path):
    repo, _ = rolled_back
    ml = make_joblib(tmp_path / "train" / "ml.joblib")
    repo.add_model("catboost", source=str(ml))
    run = cli("deploy", "both", "--json")
    assert run.code == 1
    doc = run.json()
    assert [d["model"] for d in doc["deployed"]] == ["catboost"]
    assert [f["model"] for f in doc["failed"]] == ["ssd"] and "rolled back" in doc["failed"][0]["error"]
    assert repo.manifest("ssd").current == "1.0.0"


# -- SIGTERM and SIGHUP stop a deploy like Ctrl-C --------------------------------------------

STALLED_DEPLOY = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, sys.argv[1])
    from gaia_cas import objects
    real = objects.Staging.add_stream
    def stalled(self, *args, **kwargs):
        print("staging", flush=True)
        time.sleep(30)
        return real(self, *args, **kwargs)
    objects.Staging.add_stream = stalled
    from gaia_cas.cli import run
    run(sys.argv[2:])
""")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_signal_mid_deploy_cleans_staging_and_exits_with_one_line(root, tmp_path, signum):
    src = make_savedmodel(tmp_path / "train" / "saved_model", variant=4)
    before = snapshot(root)
    code, _, err = signal_when_ready(STALLED_DEPLOY, [CHECKOUT, "--root", root, "deploy", "ssd", src], "staging", signum)
    assert code == 128 + signum, (code, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gaia-cas: "), err
    assert signal.Signals(signum).name in lines[0] or signum == signal.SIGINT
    assert "Traceback" not in err
    assert not list((root / "store" / "tmp").iterdir())
    after = snapshot(root)
    after = {k: v for k, v in after.items() if not k.startswith("logs")}
    assert after == {k: v for k, v in before.items() if not k.startswith("logs")}
    assert Repository(root).models() == []


def test_the_handlers_are_restored_after_main_returns(cli, root):
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGHUP)
    cli("list")
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGHUP)) == before


SIGNAL_DURING_LINK_SWAP = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, sys.argv[1])
    from gaia_cas import links
    real = links.point_link
    def slow(*args, **kwargs):
        print("swapping", flush=True)
        time.sleep(1.0)  # the signal arrives here, after the manifest commit
        return real(*args, **kwargs)
    links.point_link = slow
    from gaia_cas.cli import run
    run(sys.argv[2:])
""")


def test_a_signal_after_the_commit_lets_the_link_follow_and_says_so(root, tmp_path):
    """Between the manifest's rename and the link swap a SIGTERM is held back: the link follows
    the committed manifest, and the one line says the change was committed."""
    repo = Repository(root)
    repo.deploy("ssd", make_savedmodel(tmp_path / "v1" / "saved_model", variant=1))
    src = make_savedmodel(tmp_path / "v2" / "saved_model", variant=2)
    code, _, err = signal_when_ready(SIGNAL_DURING_LINK_SWAP, [CHECKOUT, "--root", root, "deploy", "ssd", src],
                                     "swapping", signal.SIGTERM)
    assert code == 128 + signal.SIGTERM, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "SIGTERM" in lines[0] and "committed" in lines[0], err
    manifest = repo.manifest("ssd")
    assert manifest.current == "1.1.0"
    link = root / "models" / "ssd" / "current"
    assert os.path.realpath(link) == str(root / "store" / "trees" / manifest.current_version().tree)
    assert not [p for p in repo.verify().problems if p.kind == "link"]


STALLED_NIGHTLY = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, sys.argv[1])
    from gaia_cas import nightly
    def stalled(*args, **kwargs):
        print("running", flush=True)
        time.sleep(30)
    nightly.run = stalled
    sys.exit(nightly.main(sys.argv[2:]))
""")


def test_sigterm_stops_the_nightly_job_in_one_line(root):
    code, _, err = signal_when_ready(STALLED_NIGHTLY, [CHECKOUT, "--root", root], "running", signal.SIGTERM)
    assert code == 128 + signal.SIGTERM, err
    assert err.strip() == "gaia-cas-nightly: terminated by SIGTERM"


def test_the_quick_start_works_in_a_fresh_clone_whose_store_holds_only_a_gitignore(tmp_path):
    """A fresh clone's store/ and manifests/ hold only a .gitignore: the README's first command,
    `bin/gaia-cas demo`, makes every folder it needs."""
    from conftest import run_launcher

    clone = tmp_path / "clone"
    for folder in ("store", "manifests"):
        (clone / folder).mkdir(parents=True)
        (clone / folder / ".gitignore").write_text("*\n!.gitignore\n")
    run = run_launcher("--root", clone, "demo")
    assert run.code == 0, run.err
    again = run_launcher("--root", clone, "demo", "--json")
    assert again.code == 0 and [d["unchanged"] for d in again.json()["deployed"]] == [True, True]
