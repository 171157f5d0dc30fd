"""Progress: a bar on stderr for long work when stderr is a terminal, never in a pipe, under
--json or -q; the verbs report exact byte counts to any callback; tqdm is loaded only to draw."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import tarfile
import time

import pytest

from conftest import CHECKOUT, LAUNCHER, make_joblib, make_savedmodel

from gaia_cas.progress import Bar, Tally
from s3_fixtures import s3_server, s3_url  # noqa: F401

TIMEOUT = 30

# Runs the CLI in this checkout, then says on stdout whether tqdm was ever imported.
PROBE = (
    "import os, sys; sys.path.insert(0, sys.argv[1]); from gaia_cas.cli import main\n"
    "if os.environ.get('PROBE_TRUST_RECENT'): import gaia_cas.statcache as s; s.RACY_NS = 0\n"
    "code = main(sys.argv[2:]); "
    "print('TQDM-LOADED' if 'tqdm' in sys.modules else 'TQDM-ABSENT', flush=True); sys.exit(code)"
)


def _terminal() -> tuple[int, int]:
    """A pty of 100 columns, as a terminal emulator sets one up."""
    import fcntl
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    return master, slave


def _run(argv, *, tty: bool, env=None) -> tuple[int, str, str]:
    """Run the CLI with stdout a pipe and stderr a real pty (``tty``) or a pipe: (code, out, err)."""
    full_env = {**os.environ, "GAIA_CAS_PROGRESS_DELAY": "0", "COLUMNS": "100", **(env or {})}
    full_env.pop("GAIA_CAS_ROOT", None)
    command = [sys.executable, "-c", PROBE, str(CHECKOUT), *map(str, argv)]
    if not tty:
        proc = subprocess.run(command, env=full_env, capture_output=True, text=True, timeout=TIMEOUT,
                              stdin=subprocess.DEVNULL)
        return proc.returncode, proc.stdout, proc.stderr
    master, slave = _terminal()
    proc = subprocess.Popen(command, env=full_env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=slave)
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + TIMEOUT
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child closed its end of the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        out = proc.stdout.read().decode()
        code = proc.wait(timeout=TIMEOUT)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=TIMEOUT)
        proc.stdout.close()
    return code, out, b"".join(chunks).decode(errors="replace")


@pytest.fixture
def big_source(tmp_path):
    return make_savedmodel(tmp_path / "big" / "saved_model", variables_bytes=3 << 20)


def _size(path) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, names in os.walk(path) for f in names)


def _formatted(size: int) -> str:
    from tqdm import tqdm

    return tqdm.format_sizeof(size, "", 1024)  # as the bar shows its counts


def test_deploy_draws_a_bar_on_a_terminal_with_the_right_total(root, big_source):
    code, out, err = _run(["--root", root, "deploy", "ssd", big_source], tty=True)
    assert code == 0, err
    assert "deployed ssd 1.0.0" in out
    total = _formatted(_size(big_source))
    assert "deploy ssd" in err and "100%" in err and f"{total}/{total}" in err, err
    assert "\r" in err  # redrawn in place
    assert "TQDM-LOADED" in out


def test_no_bar_in_a_pipe_and_tqdm_never_loaded(root, big_source):
    code, out, err = _run(["--root", root, "deploy", "ssd", big_source], tty=False)
    assert code == 0, err
    assert err == "" and "deployed ssd 1.0.0" in out
    assert "TQDM-ABSENT" in out


@pytest.mark.parametrize("flag", ["-q", "--quiet"])
@pytest.mark.parametrize("where", ["before", "after"])
def test_quiet_silences_the_bar_and_the_summary_on_a_terminal(root, big_source, flag, where):
    argv = ["--root", root, flag, "deploy", "ssd", big_source] if where == "before" else \
        ["--root", root, "deploy", "ssd", big_source, flag]
    code, out, err = _run(argv, tty=True)
    assert code == 0, err
    assert err == ""
    assert out.strip() == "TQDM-ABSENT"  # no summary line either
    code, out, _ = _run(["--root", root, "-q", "list"], tty=False)
    assert "1.0.0" in out  # an answer asked for is not a summary: -q keeps it


def test_quiet_keeps_errors_and_exit_codes(root, tmp_path):
    code, out, err = _run(["--root", root, "-q", "deploy", "ssd", tmp_path / "missing"], tty=False)
    assert code == 1 and err.startswith("gaia-cas: error: ") and len(err.strip().splitlines()) == 1


def test_no_bar_under_json_on_a_terminal(root, big_source):
    code, out, err = _run(["--root", root, "--json", "deploy", "ssd", big_source], tty=True)
    assert code == 0, err
    assert err == ""
    document = json.loads(out.replace("TQDM-ABSENT", ""))
    assert document["version"] == "1.0.0"


def test_an_unchanged_redeploy_on_a_terminal_never_loads_tqdm(root, big_source):
    trust = {"PROBE_TRUST_RECENT": "1"}  # files written a moment ago are remembered (not "racy")
    assert _run(["--root", root, "deploy", "ssd", big_source], tty=False, env=trust)[0] == 0
    code, out, err = _run(["--root", root, "deploy", "ssd", big_source], tty=True, env=trust)
    assert code == 0 and "unchanged" in out
    assert err == "" and "TQDM-ABSENT" in out


def test_short_work_shows_no_bar_before_the_delay(root, big_source):
    code, out, err = _run(["--root", root, "deploy", "ssd", big_source], tty=True,
                          env={"GAIA_CAS_PROGRESS_DELAY": "3600"})
    assert code == 0 and err == "" and "TQDM-ABSENT" in out


def test_verify_export_and_import_draw_bars(root, big_source, tmp_path):
    assert _run(["--root", root, "deploy", "ssd", big_source], tty=False)[0] == 0
    for argv, label in ((["verify"], "verify"), (["export", "ssd", "-o", tmp_path / "ssd.tar"], "export"),
                        (["import", tmp_path / "ssd.tar", "copy"], "import")):
        code, out, err = _run(["--root", root, *argv], tty=True)
        assert code == 0, err
        assert label in err and "100%" in err, (label, err)


# -- the callback the library calls -----------------------------------------------------------

class Recorder:
    def __init__(self):
        self.calls = []

    def __call__(self, done, total):
        self.calls.append((done, total))

    def check(self, expected_total):
        assert self.calls, "never called"
        dones = [d for d, _ in self.calls]
        assert dones == sorted(dones), "done went backwards"
        assert self.calls[-1] == (expected_total, expected_total)
        assert all(t == expected_total for _, t in self.calls)


def test_deploy_reports_every_byte_of_the_source_once(repo, big_source, monkeypatch):
    from gaia_cas import statcache

    monkeypatch.setattr(statcache, "RACY_NS", 0)  # files written a moment ago are remembered
    rec = Recorder()
    result = repo.deploy("ssd", big_source, progress=rec)
    rec.check(_size(big_source))
    assert result.size_bytes == _size(big_source)
    assert len(rec.calls) > 3  # chunk by chunk, not one jump
    again = Recorder()
    assert repo.deploy("ssd", big_source, progress=again).unchanged
    assert again.calls == []  # nothing staged: nothing reported


def test_a_redeploy_with_one_changed_file_still_counts_the_cached_files(repo, tmp_path):
    source = make_savedmodel(tmp_path / "s" / "saved_model", variables_bytes=1 << 20)
    repo.deploy("ssd", source)
    make_savedmodel(source, variant=1, variables_bytes=1 << 20)
    rec = Recorder()
    repo.deploy("ssd", source, progress=rec)
    rec.check(_size(source))


def test_single_file_deploy_and_verify_report_their_totals(repo, tmp_path):
    model = make_joblib(tmp_path / "m" / "model.joblib")
    rec = Recorder()
    repo.deploy("cat", model, progress=rec)
    rec.check(model.stat().st_size)
    rec = Recorder()
    assert repo.verify(progress=rec).ok
    rec.check(model.stat().st_size)


def test_export_and_import_report_their_bytes(repo, big_source, tmp_path):
    repo.deploy("ssd", big_source)
    rec = Recorder()
    repo.export("ssd", None, tmp_path / "a.tar", progress=rec)
    rec.check(_size(big_source))
    rec = Recorder()
    repo.import_archive(tmp_path / "a.tar", "copy", progress=rec)
    with tarfile.open(tmp_path / "a.tar") as tar:
        declared = sum(m.size for m in tar.getmembers() if m.isfile())
    dones = [d for d, _ in rec.calls]
    assert dones == sorted(dones) and rec.calls[-1][0] == rec.calls[-1][1] >= _size(big_source)
    assert rec.calls[-1][1] == declared + _size(big_source)


def test_bar_starts_again_for_a_second_operation_and_closes(monkeypatch):
    import io

    stream = io.StringIO()
    bar = Bar("deploy", stream)
    bar.delay = 0
    for done in (0, 50, 100):
        bar(done, 100)
    assert bar.bar.n == 100 and bar.bar.total == 100
    bar(10, 40)  # the next model of 'deploy all'
    assert bar.bar.n == 10 and bar.bar.total == 40
    bar.close()
    assert bar.bar is None and "deploy" in stream.getvalue()


def test_tally_is_exact_from_two_threads():
    import threading

    seen = []
    tally = Tally(lambda d, t: seen.append(d), None)
    threads = [threading.Thread(target=lambda: [tally.add(1) for _ in range(2000)]) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=TIMEOUT)
    tally.finish()
    assert seen[-1] == 4000 and seen == sorted(seen) and tally.total == 4000


def test_the_launcher_on_a_terminal_prints_the_bar_to_stderr_only(root, big_source):
    master, slave = _terminal()
    env = {**os.environ, "GAIA_CAS_PROGRESS_DELAY": "0"}
    proc = subprocess.run([sys.executable, str(LAUNCHER), "--root", str(root), "deploy", "ssd", str(big_source)],
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave, env=env, timeout=TIMEOUT)
    os.close(slave)
    os.set_blocking(master, False)
    try:
        err = os.read(master, 65536).decode(errors="replace")
    except BlockingIOError:
        err = ""
    os.close(master)
    assert proc.returncode == 0 and "100%" in err and "%" not in proc.stdout.decode()


def test_push_and_pull_report_the_bytes_they_move(repo, big_source, tmp_path, s3_server):  # noqa: F811
    from gaia_cas.repo import Repository

    repo.deploy("ssd", big_source)
    url = s3_url(s3_server)  # a fresh prefix: both stores use this one
    repo.add_remote("origin", url, endpoint=s3_server.endpoint)
    sent = Recorder()
    [pushed] = repo.remote("origin").push("ssd", progress=sent)
    assert pushed.bytes_sent >= _size(big_source)
    assert sent.calls[-1] == (pushed.bytes_sent, pushed.bytes_sent)
    assert [d for d, _ in sent.calls] == sorted(d for d, _ in sent.calls)
    other = Repository.init(tmp_path / "other")
    other.add_remote("origin", url, endpoint=s3_server.endpoint)
    received = Recorder()
    [pulled] = other.remote("origin").pull("ssd", progress=received)
    assert pulled.bytes_received == pushed.bytes_sent
    assert received.calls[-1][0] == pulled.bytes_received and received.calls[-1][1] is None


def test_import_legacy_reports_every_versions_bytes_model_by_model(repo, tmp_path):
    from test_legacy import build_legacy

    legacy = build_legacy(tmp_path / "api" / "models")
    rec = Recorder()
    plans = repo.import_legacy(legacy, progress=rec)
    totals = sorted({t for _, t in rec.calls})
    assert totals == sorted(p.logical_bytes for p in plans)  # one total per model, known before any byte
    for plan in plans:  # each model's run ends complete, and never goes back within it
        calls = [d for d, t in rec.calls if t == plan.logical_bytes]
        assert calls == sorted(calls) and calls[-1] == plan.logical_bytes


def test_quiet_demo_prints_nothing_and_still_deploys(cli):
    run = cli("-q", "demo")
    assert run.code == 0, run.err
    assert run.out == "" and run.err == ""
    assert "ssd" in cli("list").out
