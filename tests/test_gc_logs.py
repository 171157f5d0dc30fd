"""gc deletes only logs gaia-cas provably wrote (issue 12 item 1): the old script's
``logs/versioning_YYYYmmdd_HHMMSS.log`` (same folder, same name pattern) and anything else in
logs/ are the user's -- never deleted, and never followed if they are symlinks."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path

import pytest

from conftest import make_savedmodel
from gaia_cas import gc, nightly
from gaia_cas.repo import Repository

# The marker line every gaia-cas log starts with (spelled out: a change to it is a format change).
MARKER_TEXT = "gaia-cas operation log: written by gaia-cas; gc deletes it once older than --log-age"
OLD_SCRIPT_LINE = "2025-07-16 20:29:17,571 - versioning - INFO - Deployed dl_model v1.5_20250716_202917\n"


def _aged(path: Path, days: int = 400) -> None:
    past = time.time() - days * 86400
    os.utime(path, (past, past), follow_symlinks=False)


@pytest.fixture
def logs(repo, root, savedmodel) -> Path:
    repo.deploy("m", savedmodel)
    return root / "logs"


def _own_old_log(repo: Repository, logs: Path) -> Path:
    """This process's log, renamed to a 2024 name and aged: a log gaia-cas wrote long ago."""
    own = logs / "versioning_20240101_000000.log"
    os.rename(repo.oplog.path, own)
    _aged(own)
    return own


def test_the_old_scripts_logs_survive_the_nightly_gc(repo, root, logs, capsys):
    old = logs / "versioning_20250716_202917.log"
    old.write_text(OLD_SCRIPT_LINE)
    _aged(old)
    own = _own_old_log(repo, logs)
    assert nightly.main(["--root", str(root), "--log-age", "1d"]) == 0, capsys.readouterr()
    assert old.read_text() == OLD_SCRIPT_LINE
    assert not own.exists()  # gaia-cas's own old log is what goes


def test_logs_of_an_older_gaia_cas_without_the_marker_are_kept(repo, root, logs):
    """Decided (README, gc): a log is deleted only if it starts with the marker line; logs that
    gaia-cas versions before it wrote cannot be told from the user's, so they stay."""
    legacy_ours = logs / "versioning_20230101_000000.log"
    legacy_ours.write_text("2023-01-01 00:00:00,000 - gaia_cas.deploy - INFO - deployed m 1.0.0\n")
    _aged(legacy_ours)
    plan, _ = repo.gc(grace=timedelta(0), log_age=timedelta(days=1))
    assert legacy_ours.exists()
    assert "logs/versioning_20230101_000000.log (not written by gaia-cas: kept)" in plan.ignored


def test_a_forged_marker_later_in_the_file_is_not_enough(repo, root, logs):
    fake = logs / "versioning_20220101_000000.log"
    fake.write_text(OLD_SCRIPT_LINE + f"2022-01-01 00:00:00,000 - gaia_cas.oplog - INFO - {MARKER_TEXT}\n")
    _aged(fake)
    repo.gc(grace=timedelta(0), log_age=timedelta(days=1))
    assert fake.exists()


def test_a_symlinked_log_is_neither_followed_nor_deleted(repo, root, logs, tmp_path):
    outside = tmp_path / "outside.log"
    outside.write_text(f"2022-01-01 00:00:00,000 - gaia_cas.oplog - INFO - {MARKER_TEXT}\n")  # even if it looks ours
    _aged(outside)
    link = logs / "versioning_20220101_000000.log"
    os.symlink(outside, link)
    _aged(link)
    repo.gc(grace=timedelta(0), log_age=timedelta(days=1))
    assert os.path.islink(link) and outside.exists()


def test_a_symlinked_logs_folder_is_never_swept(repo, root, logs, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    os.rename(logs, elsewhere)
    own = elsewhere / "versioning_20240101_000000.log"
    os.rename(elsewhere / repo.oplog.path.name, own)
    _aged(own)
    other = elsewhere / "versioning_20250716_202917.log"
    other.write_text(OLD_SCRIPT_LINE)
    _aged(other)
    os.symlink(elsewhere, logs)
    plan, _ = Repository(root).gc(grace=timedelta(0), log_age=timedelta(days=1))
    assert own.exists() and other.exists()
    assert "logs (a symlink: never followed)" in plan.ignored


def test_a_log_replaced_between_plan_and_deletion_is_kept(repo, root, logs, monkeypatch):
    """Interleaving: the plan names gaia-cas's old log; the user puts their own file under that
    name before the sweep; the sweep checks again and keeps it."""
    own = _own_old_log(repo, logs)
    real_execute = gc.execute

    def swap_then_execute(layout, plan, grace):
        assert any(d.kind == "log" and d.path == own for d in plan.doomed)
        os.unlink(own)
        own.write_text(OLD_SCRIPT_LINE)
        _aged(own)
        return real_execute(layout, plan, grace)

    monkeypatch.setattr(gc, "execute", swap_then_execute)
    repo.gc(grace=timedelta(0), log_age=timedelta(days=1))
    assert own.read_text() == OLD_SCRIPT_LINE


def test_every_log_gaia_cas_writes_starts_with_its_marker_and_logs_hides_it(repo, root, logs, cli):
    first = repo.oplog.path.read_text().splitlines()[0]
    assert first.endswith(f" - gaia_cas.oplog - INFO - {MARKER_TEXT}")
    run = cli("logs", "-n", "50")
    assert run.code == 0 and "deployed m 1.0.0" in run.out
    assert MARKER_TEXT not in run.out


def test_a_user_file_already_under_the_new_logs_name_is_appended_to_never_marked(root, monkeypatch):
    name = "versioning_20250716_202917.log"
    path = root / "logs" / name
    path.write_text(OLD_SCRIPT_LINE)
    real = time.strftime
    monkeypatch.setattr(time, "strftime", lambda fmt, *a: name if fmt.startswith("versioning_") else real(fmt, *a))
    oplog = Repository(root).oplog
    oplog.write("gaia_cas.test", "hello")
    assert oplog.path == path and oplog.error is None
    assert path.read_text().startswith(OLD_SCRIPT_LINE) and path.read_text().endswith(" - gaia_cas.test - INFO - hello\n")
    _aged(path)
    Repository(root).gc(grace=timedelta(0), log_age=timedelta(days=1))
    assert path.exists()
