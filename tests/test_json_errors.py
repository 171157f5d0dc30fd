"""Under --json a failure is a JSON document on stdout too: {"error": {"message", "kind"}}, with the
same exit status and the same one line on stderr, usage errors included."""

from __future__ import annotations

import json

import pytest

from conftest import assert_one_line_error, lock_held_elsewhere, make_savedmodel, run_launcher, snapshot
from gaia_cas import errors
from gaia_cas.cli import error_kind


@pytest.fixture
def deployed(repo, tmp_path):
    repo.deploy("m", make_savedmodel(tmp_path / "src"))
    return repo


def _error(run) -> dict:
    doc = json.loads(run.out)
    assert set(doc) == {"error"} and set(doc["error"]) == {"message", "kind"}
    line = run.err.strip().splitlines()[-1]
    assert line == f"gaia-cas: error: {doc['error']['message']}"  # the same words in both places
    return doc["error"]


@pytest.mark.parametrize("argv, kind, fragment", [
    (["show", "nosuch"], "not_found", "unknown model 'nosuch'"),
    (["rollback", "m", "9.9.9"], "not_found", "has no version '9.9.9'"),
    (["deploy", "m", "{src}", "--version", "not-a-version"], "invalid_input", "not-a-version"),
    (["deploy", "m", "{missing}"], "source", "does not exist"),
], ids=["model", "version", "invalid", "source"])
def test_library_errors_are_json_on_stdout_with_the_same_exit_code(deployed, cli, root, tmp_path, argv, kind,
                                                                  fragment):
    argv = [a.format(src=tmp_path / "src", missing=tmp_path / "missing") for a in argv]
    before = snapshot(root)
    plain = cli(*argv)
    assert_one_line_error(plain, fragment)
    assert plain.out == ""  # without --json: nothing on stdout, as before
    run = cli("--json", *argv)
    assert_one_line_error(run, fragment)
    error = _error(run)
    assert error["kind"] == kind and fragment in error["message"]
    after_cmd = cli(*argv, "--json")  # --json after the command is the same
    assert after_cmd.code == 1 and _error(after_cmd) == error
    assert snapshot(root) == before


def test_lock_timeout_is_its_own_kind(deployed, cli, root):
    with lock_held_elsewhere(root / "manifests" / "m.lock"):
        run = cli("--json", "--lock-timeout", "0.2", "pin", "m", "1.0.0")
    assert run.code == 1
    error = _error(run)
    assert error["kind"] == "lock_timeout" and "could not take the lock" in error["message"]


def test_corruption_is_its_own_kind(deployed, cli, root):
    (root / "manifests" / "m.msgpack").write_bytes(b"\xc1 not msgpack")
    run = cli("--json", "list", "m")
    assert run.code == 1
    assert _error(run)["kind"] == "corruption"


def test_missing_root_through_the_real_launcher(tmp_path):
    run = run_launcher("--json", "--root", tmp_path / "nowhere", "list", cwd=tmp_path)
    assert run.code == 1
    error = _error(run)
    assert error["kind"] == "root_not_found" and "gaia-cas init" in error["message"]


@pytest.mark.parametrize("argv", [
    ["--json", "list", "--bogus"],
    ["list", "--bogus", "--json"],
    ["--json", "frobnicate"],
    ["--json", "list", "-n", "-3"],
    ["--json", "rollback"],
], ids=["unknown-option", "json-after", "unknown-command", "bad-count", "missing-argument"])
def test_usage_errors_are_json_too_with_exit_status_2(cli, argv):
    run = cli(*argv)
    assert run.code == 2
    doc = json.loads(run.out)
    assert doc["error"]["kind"] == "usage" and doc["error"]["message"]
    assert doc["error"]["message"] in run.err  # argparse's own line, usage above it, as always
    assert "Traceback" not in run.err


def test_no_command_under_json(cli):
    run = cli("--json", root_dir=None)
    assert run.code == 2
    assert json.loads(run.out)["error"] == {"message": "a command is required (see 'gaia-cas --help')",
                                            "kind": "usage"}


def test_usage_errors_without_json_print_nothing_on_stdout(cli):
    run = cli("list", "--bogus")
    assert run.code == 2 and run.out == ""


def test_a_real_process_prints_one_document(deployed, root):
    run = run_launcher("--root", root, "--json", "show", "m", "7.7.7")
    assert run.code == 1
    assert json.loads(run.out)["error"]["kind"] == "not_found"
    assert len(run.err.strip().splitlines()) == 1


def test_every_error_family_has_a_kind():
    assert error_kind(errors.ModelNotFoundError("x")) == "not_found"
    assert error_kind(errors.VersionNotFoundError("x", "1")) == "not_found"
    assert error_kind(errors.InvalidInputError("x")) == "invalid_input"
    assert error_kind(errors.RolledBackContentError("m", "1", None, "x")) == "invalid_input"
    assert error_kind(errors.LockTimeoutError("/l", 1)) == "lock_timeout"
    assert error_kind(errors.CorruptionError("x")) == "corruption"
    assert error_kind(errors.GcRefusedError("x")) == "corruption"
    assert error_kind(errors.StoreError("x")) == "store"
    assert error_kind(errors.SourceError("x")) == "source"
    assert error_kind(errors.RootNotFoundError("x")) == "root_not_found"
    assert error_kind(PermissionError(13, "denied")) == "os"
    assert error_kind(ZeroDivisionError()) == "internal"


def test_a_signal_under_json_is_a_terminated_error(deployed, root, no_hang):
    """SIGTERM to a command that runs until stopped: exit 128 + 15, and the JSON says so."""
    import signal
    import subprocess
    import sys

    from conftest import LAUNCHER

    proc = subprocess.Popen([sys.executable, str(LAUNCHER), "--root", str(root), "--json", "logs", "-n", "1",
                             "--follow"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            text=True)
    try:
        first = proc.stdout.readline()  # the backlog's line: it is following now
        assert "deployed m 1.0.0" in json.loads(first)["line"]
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert proc.returncode == 128 + signal.SIGTERM
    assert json.loads(out) == {"error": {"message": "terminated by SIGTERM", "kind": "terminated"}}
    assert err.strip() == "gaia-cas: terminated by SIGTERM"
