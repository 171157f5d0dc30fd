"""Fixtures shared by the suite: a fresh root per test, sample models, the CLI, store snapshots."""

from __future__ import annotations

import hashlib
import os
import pickle
import signal
import stat
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

CHECKOUT = Path(__file__).resolve().parent.parent
LAUNCHER = CHECKOUT / "bin" / "gaia-cas"

sys.path.insert(0, str(CHECKOUT))

from gaia_cas.cli import main  # noqa: E402
from gaia_cas.repo import Repository  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """No test ever finds the checkout's own store/ by walking up from the working directory."""
    monkeypatch.delenv("GAIA_CAS_ROOT", raising=False)
    monkeypatch.delenv("GAIA_CAS_LOCK_TIMEOUT", raising=False)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)


@pytest.fixture
def root(tmp_path) -> Path:
    path = tmp_path / "root"
    Repository.init(path)
    return path


@pytest.fixture
def repo(root) -> Repository:
    return Repository(root, lock_timeout=5)


# -- model sources ---------------------------------------------------------------------------

def make_savedmodel(path: Path, variant: int = 0, variables_bytes: int = 4096) -> Path:
    """A folder shaped like a TensorFlow SavedModel; ``variant`` changes one small file."""
    (path / "variables").mkdir(parents=True, exist_ok=True)
    (path / "assets").mkdir(exist_ok=True)
    (path / "saved_model.pb").write_bytes(b"\x08\x01\x12\x04ssd" + variant.to_bytes(4, "big") * 8)
    (path / "variables" / "variables.index").write_bytes(b"index" * 20)
    data = hashlib.sha256(b"weights").digest() * (variables_bytes // 32 + 1)
    (path / "variables" / "variables.data-00000-of-00001").write_bytes(data[:variables_bytes])
    (path / "fingerprint.pb").write_bytes(b"fp")
    return path


def make_joblib(path: Path, variant: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps({"estimator": "CatBoostClassifier", "variant": variant}, protocol=4))
    return path


@pytest.fixture
def savedmodel(tmp_path) -> Path:
    return make_savedmodel(tmp_path / "src" / "saved_model")


@pytest.fixture
def joblib_file(tmp_path) -> Path:
    return make_joblib(tmp_path / "src" / "ml" / "model_catboost_best.joblib")


# -- running the CLI -------------------------------------------------------------------------

@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self):
        import json

        return json.loads(self.out)


@pytest.fixture
def cli(capsys, root):
    """Run the CLI in-process against the test root: cli('deploy', 'ssd', path) -> Run."""

    def run(*argv, root_dir: Path | None = root) -> Run:
        args = [str(a) for a in argv]
        if root_dir is not None:
            args = ["--root", str(root_dir), *args]
        capsys.readouterr()
        try:
            code = main(args)
        except SystemExit as exc:  # argparse rejects the command line
            code = exc.code
        captured = capsys.readouterr()
        return Run(code, captured.out, captured.err)

    return run


def run_launcher(*argv, cwd=None, env=None, timeout=60) -> Run:
    """Run bin/gaia-cas as a real process."""
    full_env = dict(os.environ)
    full_env.pop("GAIA_CAS_ROOT", None)
    full_env.update(env or {})
    proc = subprocess.run([sys.executable, str(LAUNCHER), *map(str, argv)], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    return Run(proc.returncode, proc.stdout, proc.stderr)


def assert_one_line_error(run: Run, *fragments: str) -> None:
    assert run.code == 1, (run.code, run.out, run.err)
    lines = run.err.strip().splitlines()
    assert len(lines) == 1, run.err
    assert lines[0].startswith("gaia-cas: error: "), run.err
    assert "Traceback" not in run.err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


# -- store snapshots -------------------------------------------------------------------------

def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under the root with its kind, mode, and content hash or link target."""
    result = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            rel = os.path.relpath(full, root)
            if stat.S_ISLNK(st.st_mode):
                result[rel] = ("link", os.readlink(full))
            elif stat.S_ISDIR(st.st_mode):
                result[rel] = ("dir", stat.S_IMODE(st.st_mode))
            else:
                with open(full, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
                result[rel] = ("file", stat.S_IMODE(st.st_mode), digest)
    return result


# -- real processes and safety nets ----------------------------------------------------------

@contextmanager
def lock_held_elsewhere(lock_path: Path, shared: bool = False):
    """Another real process holds the flock on ``lock_path`` (a lock file, created if missing, or a
    working folder), exclusive or shared, for the duration of the block."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time; p = sys.argv[1];"
         "fd = os.open(p, os.O_RDONLY if os.path.isdir(p) else os.O_RDWR | os.O_CREAT);"
         "fcntl.flock(fd, getattr(fcntl, sys.argv[2])); print('held', flush=True); time.sleep(60)", str(lock_path),
         "LOCK_SH" if shared else "LOCK_EX"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        holder.kill()
        holder.wait(timeout=10)


@pytest.fixture
def no_hang():
    """Safety net for FIFO cases: a regression that blocks on a FIFO fails instead of hanging."""

    def hung(signum, frame):
        raise AssertionError("blocked (on a FIFO?) for 30 s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(30)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


# -- worker processes (tests/workers.py) --------------------------------------------------------

WORKERS = Path(__file__).with_name("workers.py")


def spawn_worker(*args) -> subprocess.Popen:
    """Start ``python tests/workers.py ROLE ROOT [ARGS...]``; it prints one JSON line per event."""
    return subprocess.Popen([sys.executable, str(WORKERS), *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)


def finish_worker(proc, timeout=180):
    """(exit code, the JSON events it printed, stderr), killing it if it outlives ``timeout``."""
    import json

    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        proc.kill()
        proc.wait()
    return proc.returncode, [json.loads(line) for line in out.splitlines() if line.startswith("{")], err


def signal_when_ready(script: str, argv: list, ready: str, signum: int, timeout: float = 20):
    """Run ``python -c script *argv``; once it prints the line ``ready``, send ``signum``.
    Returns (exit code, stdout, stderr)."""
    proc = subprocess.Popen([sys.executable, "-c", script, *map(str, argv)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout.readline().strip() == ready
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=timeout)
    finally:
        proc.kill()
        proc.wait()
    return proc.returncode, out, err
