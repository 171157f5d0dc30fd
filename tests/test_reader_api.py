"""The reader API as a server author meets it: names that completion offers, resolve(model,
version=...), created_at as a datetime, and a missing root explained in Python's terms."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timezone

import pytest

import gaia_cas
from conftest import CHECKOUT, make_savedmodel, run_launcher
from gaia_cas.errors import InvalidInputError, RootNotFoundError, VersionNotFoundError


@pytest.fixture
def two(repo, tmp_path):
    repo.deploy("ssd", make_savedmodel(tmp_path / "a"))
    repo.deploy("ssd", make_savedmodel(tmp_path / "b", variant=1))
    return repo


def test_the_api_is_listed_by_dir_before_it_is_loaded():
    """What an editor or the REPL completes: dir() and __all__, without importing the library."""
    code = ("import sys, gaia_cas; names = dir(gaia_cas); "
            "print(sorted(set(gaia_cas.__all__) - set(names)), 'gaia_cas.repo' in sys.modules, "
            "all(n in names for n in ('resolve', 'Repository', 'Resolved', 'ModelHandle', '__version__')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=CHECKOUT, capture_output=True, text=True, timeout=30,
                         env={"PYTHONPATH": str(CHECKOUT), "PATH": "/usr/bin:/bin"}).stdout.split()
    assert out == ["[]", "False", "True"]
    assert {"resolve", "Repository", "Resolved", "ModelHandle", "GaiaCasError"} <= set(gaia_cas.__all__)
    assert gaia_cas.resolve is gaia_cas.reader.resolve and gaia_cas.Repository is gaia_cas.repo.Repository


def test_resolve_a_named_version(two, root):
    old = gaia_cas.resolve("ssd", root=root, version="1.0.0")
    assert (old.version, old.hash) == ("1.0.0", two.manifest("ssd").find("1.0.0").tree)
    assert old.path.is_dir() and (old.path / "saved_model.pb").is_file()
    assert gaia_cas.resolve("ssd", root=root, version="1.0").version == "1.0.0"
    assert gaia_cas.resolve("ssd", root=root, version="previous").version == "1.0.0"
    assert gaia_cas.resolve("ssd", root=root).version == "1.1.0"  # current, as before
    assert two.resolve("ssd", version="1.0.0") == old
    with pytest.raises(VersionNotFoundError):
        gaia_cas.resolve("ssd", root=root, version="7.0.0")
    with pytest.raises(InvalidInputError, match="not both"):
        gaia_cas.resolve("ssd", root=root, version="1.0.0", channel="staging")


def test_created_at_is_an_aware_datetime(two, root):
    active = gaia_cas.resolve("ssd", root=root)
    assert isinstance(active.created_at, datetime) and active.created_at.tzinfo is not None
    stored = two.manifest("ssd").find("1.1.0").created_at
    assert active.created_at == datetime.fromisoformat(stored)
    assert active.created_at.utcoffset().total_seconds() == 0
    assert abs((datetime.now(timezone.utc) - active.created_at).total_seconds()) < 3600


def test_a_missing_root_speaks_of_root_to_a_python_caller(tmp_path, monkeypatch):
    with pytest.raises(RootNotFoundError) as info:
        gaia_cas.resolve("ssd")  # the autouse fixture: an empty working folder, no GAIA_CAS_ROOT
    message = str(info.value)
    assert "root=" in message and "--root" not in message and "GAIA_CAS_ROOT" in message
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(RootNotFoundError) as info:
        gaia_cas.resolve("ssd", root=plain)
    assert f"root={str(plain)!r} is not a gaia-cas root" in str(info.value) and "--root" not in str(info.value)
    with pytest.raises(RootNotFoundError) as info:
        gaia_cas.Repository.open()
    assert "root=" in str(info.value) and "--root" not in str(info.value)
    monkeypatch.setenv("GAIA_CAS_ROOT", str(plain))
    with pytest.raises(RootNotFoundError, match=r"\$GAIA_CAS_ROOT="):
        gaia_cas.resolve("ssd")


def test_the_cli_still_speaks_of_root_as_an_option(tmp_path):
    run = run_launcher("--root", tmp_path / "nothing", "list", cwd=tmp_path)
    assert run.code == 1 and "gaia-cas init" in run.err and "root=" not in run.err
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from gaia_cas.cli import main; "
            "sys.exit(main(['list']))")
    proc = subprocess.run([sys.executable, "-c", code, str(CHECKOUT)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=30, env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 1 and "--root DIR" in proc.stderr and "root=" not in proc.stderr.replace("--root", "")
