"""gaia-cas doctor: a healthy root passes every check; a root with a problem fails the check
that names it, with advice, and exit status 1; --json is {"checks": [{name, ok, detail, advice}]}."""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
from pathlib import Path

import pytest

from gaia_cas import doctor
from gaia_cas.atomic import TMP_MARK

NAMES = ["hard links", "link folders", "free space", "locks", "reflinks", "clock", "staging", "man page"]


@pytest.fixture
def man_installed(tmp_path, monkeypatch):
    """A man path holding the page, as 'pip install .' leaves it."""
    folder = tmp_path / "share" / "man"
    (folder / "man1").mkdir(parents=True)
    (folder / "man1" / "gaia-cas.1").write_text(".TH GAIA-CAS 1\n")
    monkeypatch.setenv("MANPATH", str(folder))
    return folder


@pytest.fixture
def deployed(repo, savedmodel):
    repo.deploy("ssd", savedmodel)
    return repo


def _by_name(checks) -> dict:
    return {c.name: c for c in checks}


def _failing(checks) -> dict:
    return {c.name: c for c in checks if not c.ok}


def test_a_healthy_root_passes_every_check(deployed, man_installed, cli):
    checks = deployed.doctor()
    assert [c.name for c in checks] == NAMES
    assert _failing(checks) == {}, _failing(checks)
    run = cli("doctor")
    assert run.code == 0, run.out
    for name in NAMES:
        assert name in run.out
    document = cli("doctor", "--json").json()
    assert [c["name"] for c in document["checks"]] == NAMES
    for check in document["checks"]:
        assert set(check) == {"name", "ok", "detail", "advice"} and check["ok"] is True and check["detail"]


def test_the_probes_leave_the_store_as_it_was(deployed, man_installed, root):
    from conftest import snapshot

    before = snapshot(root)
    deployed.doctor()
    assert snapshot(root) == before


@pytest.mark.parametrize("code", [errno.EXDEV, errno.EPERM])
def test_hard_links_that_fail_are_flagged(deployed, man_installed, monkeypatch, cli, code):
    def refuse(src, dst, *args, **kwargs):
        raise OSError(code, os.strerror(code), str(src))

    monkeypatch.setattr(os, "link", refuse)
    failed = _failing(deployed.doctor())
    assert list(failed) == ["hard links"]
    assert "fail" in failed["hard links"].detail and "hard links" in failed["hard links"].advice
    run = cli("doctor", "--json")
    assert run.code == 1
    check = next(c for c in run.json()["checks"] if c["name"] == "hard links")
    assert check["ok"] is False and check["advice"]


def test_a_stale_staging_folder_is_flagged_and_gc_clears_it(deployed, man_installed, root, cli):
    stale = root / "store" / "tmp" / f".deploy{TMP_MARK}0123456789ab"
    stale.mkdir(parents=True)
    (stale / "half-written").write_bytes(b"x" * 100)
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    failed = _failing(deployed.doctor())
    assert list(failed) == ["staging"]
    assert stale.name in failed["staging"].detail and "gaia-cas gc" in failed["staging"].advice
    assert cli("doctor").code == 1
    assert cli("gc").code == 0
    assert _failing(deployed.doctor()) == {}


def test_a_young_or_locked_staging_folder_is_not_stale(deployed, man_installed, root):
    from conftest import lock_held_elsewhere

    young = root / "store" / "tmp" / f".deploy{TMP_MARK}aaaaaaaaaaaa"
    young.mkdir(parents=True)
    live = root / "store" / "tmp" / f".deploy{TMP_MARK}bbbbbbbbbbbb"
    live.mkdir()
    old = time.time() - 2 * 3600
    os.utime(live, (old, old))
    with lock_held_elsewhere(live):
        assert _failing(deployed.doctor()) == {}


def test_a_link_folder_on_another_filesystem_is_flagged(deployed, man_installed, root):
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(root).st_dev:
        pytest.fail("this test needs /dev/shm on a filesystem of its own (tmpfs), as on every Linux")
    away = Path(shm / f"gaia-cas-doctor-{os.getpid()}")
    away.mkdir()
    try:
        folder = root / "models" / "ssd"
        target = os.readlink(folder / "current")
        shutil.rmtree(folder)
        os.symlink(away, folder)  # the link's folder now lives on tmpfs
        os.symlink(os.path.join(str(root / "models"), target), away / "current")
        failed = _failing(deployed.doctor())
        assert list(failed) == ["link folders"]
        assert "ssd current" in failed["link folders"].detail and "tmpfs" in failed["link folders"].detail
        assert "--link" in failed["link folders"].advice
    finally:
        shutil.rmtree(away, ignore_errors=True)


def test_a_change_recorded_in_the_future_is_flagged(repo, savedmodel, man_installed, monkeypatch, cli):
    from datetime import timedelta

    from gaia_cas import clock

    real = clock.now
    monkeypatch.setattr(clock, "now", lambda: real() + timedelta(days=1))  # a host whose clock ran a day ahead
    repo.deploy("ssd", savedmodel)
    monkeypatch.setattr(clock, "now", real)
    failed = _failing(repo.doctor())
    assert list(failed) == ["clock"]
    assert "future" in failed["clock"].detail and "ssd deploy" in failed["clock"].detail
    assert "NTP" in failed["clock"].advice
    assert cli("doctor").code == 1


def test_store_file_times_far_from_this_clock_are_flagged(deployed, man_installed):
    failed = _failing(doctor.examine(deployed.ctx, now=time.time() - 3600))  # the file server is an hour ahead
    assert list(failed) == ["clock"] and "file times" in failed["clock"].detail


def test_too_little_free_space_for_the_largest_version_is_flagged(deployed, man_installed, monkeypatch):
    real = os.statvfs

    class Tiny:
        def __init__(self, st):
            self.f_frsize, self.f_bavail = st.f_frsize, 1

    monkeypatch.setattr(os, "statvfs", lambda path: Tiny(real(path)))
    failed = _failing(deployed.doctor())
    assert list(failed) == ["free space"]
    assert "ssd 1.0.0" in failed["free space"].detail and "gc" in failed["free space"].advice


def test_a_network_filesystem_is_flagged_for_locks(deployed, man_installed, monkeypatch):
    monkeypatch.setattr(doctor, "filesystem", lambda path: ("nfs4", "/srv"))
    failed = _failing(deployed.doctor())
    assert "locks" in failed and "nfs4" in failed["locks"].detail and "local filesystem" in failed["locks"].advice


def test_a_missing_man_page_is_flagged(deployed, tmp_path, monkeypatch):
    monkeypatch.setenv("MANPATH", str(tmp_path / "nothing-here"))
    failed = _failing(deployed.doctor())
    assert list(failed) == ["man page"] and "pip install" in failed["man page"].advice


def test_the_fs_type_comes_from_mountinfo(root):
    fstype, point = doctor.filesystem(root)
    with open("/proc/self/mountinfo") as f:
        types = {line.split(" - ")[1].split()[0] for line in f if " - " in line}
    assert fstype in types and os.path.isdir(point)
