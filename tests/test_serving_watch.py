"""gaia-cas watch: run a command (or send a signal) on every change of the served version."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import LAUNCHER, assert_one_line_error, run_launcher
from gaia_cas import leases
from gaia_cas.repo import Repository

RECORD = """
import json, os, sys, time
out, gate = sys.argv[1], sys.argv[2]
path = os.environ["GAIA_CAS_PATH"]
with open(out + ".running", "a") as f:
    f.write(os.environ["GAIA_CAS_VERSION"] + "\\n")
deadline = time.monotonic() + 10
while gate != "-" and not os.path.exists(gate) and time.monotonic() < deadline:
    time.sleep(0.02)
record = {k: os.environ[k] for k in ("GAIA_CAS_MODEL", "GAIA_CAS_VERSION", "GAIA_CAS_HASH", "GAIA_CAS_PATH")}
record["content"] = open(path, "rb").read().decode()
record["argv"] = sys.argv[3:]
with open(out, "a") as f:
    f.write(json.dumps(record) + "\\n")
"""


def deploy_text(repo: Repository, tmp_path: Path, text: str) -> None:
    src = tmp_path / "src" / os.urandom(4).hex() / "model.txt"
    src.parent.mkdir(parents=True)
    src.write_text(text)
    repo.deploy("m", src)


def start_watch(root: Path, *args) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, str(LAUNCHER), "--root", str(root), "watch", "m", "--interval", "0.2",
                             "--timeout", "30", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    first = proc.stdout.readline()
    assert first.startswith("watching m (current): serving"), (first, proc.stderr.read() if not first else "")
    return proc


def wait_for(predicate, what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []


@pytest.fixture
def script(tmp_path) -> Path:
    path = tmp_path / "record.py"
    path.write_text(RECORD)
    return path


def test_watch_exec_sees_a_deploy_and_a_rollback(repo, root, tmp_path, script):
    deploy_text(repo, tmp_path, "one")
    out = tmp_path / "out.jsonl"
    proc = start_watch(root, "--max-changes", "2", "--exec", f"{sys.executable} {script} {out} - '$HOME; x|y'")
    try:
        deploy_text(repo, tmp_path, "two")
        wait_for(lambda: len(records(out)) == 1, "the deploy")
        repo.rollback("m", "1.0.0")
        stdout, stderr = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    got = records(out)
    v1, v2 = repo.manifest("m").find("1.0.0"), repo.manifest("m").find("1.1.0")
    assert [(r["GAIA_CAS_MODEL"], r["GAIA_CAS_VERSION"], r["GAIA_CAS_HASH"], r["content"]) for r in got] == [
        ("m", "1.1.0", v2.tree, "two"), ("m", "1.0.0", v1.tree, "one")]
    assert Path(got[0]["GAIA_CAS_PATH"]).parent == repo.layout.tree_path(v2.tree)
    assert all(r["argv"] == ["$HOME; x|y"] for r in got)  # words, never a shell
    assert "1.1.0" in stdout and "exited with 0" in stdout


def test_the_version_stays_leased_while_the_command_runs(repo, root, tmp_path, script):
    deploy_text(repo, tmp_path, "one")
    out, gate = tmp_path / "out.jsonl", tmp_path / "gate"
    proc = start_watch(root, "--max-changes", "2", "--exec", f"{sys.executable} {script} {out} {gate}")
    try:
        deploy_text(repo, tmp_path, "two")
        running = Path(str(out) + ".running")
        wait_for(lambda: running.exists(), "the command to start")
        v2 = repo.resolve("m")
        # While the command runs for 1.1.0: roll back, clean 1.1.0 up, collect with no grace.
        repo.rollback("m", "1.0.0")
        repo.cleanup(["m"], keep=0)
        assert [v.version for v in repo.manifest("m").versions] == ["1.0.0"]
        assert run_launcher("--root", root, "gc", "--grace", "0s", timeout=30).code == 0
        assert v2.path.read_text() == "two"
        gate.write_text("go")
        proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert [(r["GAIA_CAS_VERSION"], r["content"]) for r in records(out)] == [("1.1.0", "two"), ("1.0.0", "one")]
    assert os.listdir(leases.leases_dir(repo.layout)) == []  # watch ended: its lease too
    assert run_launcher("--root", root, "gc", "--grace", "0s", timeout=30).code == 0
    assert not v2.path.exists() and not repo.layout.object_path(v2.hash).exists()


SIGNALLED = """
import signal, sys, time
out = sys.argv[1]
def hup(signum, frame):
    with open(out, "a") as f:
        f.write("HUP\\n")
signal.signal(signal.SIGHUP, hup)
print("ready", flush=True)
deadline = time.monotonic() + 20
while time.monotonic() < deadline:
    time.sleep(0.05)
"""


def test_watch_signal_sends_the_signal_on_every_change(repo, root, tmp_path):
    deploy_text(repo, tmp_path, "one")
    out = tmp_path / "signals"
    server = subprocess.Popen([sys.executable, "-c", SIGNALLED, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "ready"
        proc = start_watch(root, "--max-changes", "2", "--signal", "HUP", "--pid", server.pid)
        try:
            deploy_text(repo, tmp_path, "two")
            wait_for(lambda: out.exists() and out.read_text() == "HUP\n", "the first signal")
            repo.rollback("m", "previous")
            stdout, stderr = proc.communicate(timeout=20)
        finally:
            proc.kill()
        assert proc.returncode == 0, stderr
        wait_for(lambda: out.read_text() == "HUP\nHUP\n", "the second signal")
        assert f"sent SIGHUP to {server.pid}" in stdout
    finally:
        server.kill()
        server.wait(timeout=10)


def test_watch_ends_by_itself_after_its_timeout(repo, root, tmp_path):
    deploy_text(repo, tmp_path, "one")
    run = run_launcher("--root", root, "watch", "m", "--timeout", "0.3", "--interval", "0.1", "--json",
                       "--exec", "true", timeout=20)
    assert run.code == 0, run.err
    assert json.loads(run.out) == {"changes": 0}
    assert os.listdir(leases.leases_dir(repo.layout)) == []


@pytest.mark.parametrize("argv, fragment", [
    (["--exec", "no-such-program-here --flag"], "no program 'no-such-program-here'"),
    (["--exec", "true", "--signal", "HUP", "--pid", "1"], "either --exec CMD or --signal SIG --pid PID"),
    ([], "either --exec CMD or --signal SIG --pid PID"),
    (["--signal", "HUP"], "--signal needs --pid"),
    (["--signal", "NOPE", "--pid", "1"], "not a signal name"),
    (["--exec", "'unclosed"], "cannot be split"),
    (["--exec", "true", "--interval", "0"], "--interval must be more than 0"),
])
def test_watch_refuses_a_bad_command_line_in_one_line(repo, tmp_path, cli, argv, fragment):
    deploy_text(repo, tmp_path, "one")
    assert_one_line_error(cli("watch", "m", "--timeout", "0.1", *argv), fragment)
    assert not leases.leases_dir(repo.layout).exists() or os.listdir(leases.leases_dir(repo.layout)) == []


def test_watch_of_an_unknown_model_is_one_line(root, cli):
    assert_one_line_error(cli("watch", "nope", "--exec", "true", "--timeout", "0.1"), "nope")
