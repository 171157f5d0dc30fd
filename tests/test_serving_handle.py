"""ModelHandle: load off to the side, swap one reference, never serve a version that failed to load."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import gaia_cas
from conftest import CHECKOUT, run_launcher
from test_hostile_input import shared  # noqa: F401  (a fixture)
from gaia_cas import handle as handle_module
from gaia_cas import leases
from gaia_cas.repo import Repository
from serving_models import sample_rows, write_joblib, write_onnx


def deploy_bytes(repo: Repository, tmp_path: Path, content: bytes, name="model.bin", model="m") -> None:
    src = tmp_path / "src" / os.urandom(4).hex() / name
    src.parent.mkdir(parents=True)
    src.write_bytes(content)
    repo.deploy(model, src)


def tagged_loader(calls=None):
    def load(path):
        data = Path(path).read_bytes()
        if calls is not None:
            calls.append(data)
        if data.startswith(b"broken"):
            raise ValueError("cannot load this one")
        return {"bytes": data}
    return load


def lease_files(repo) -> list[str]:
    folder = leases.leases_dir(repo.layout)
    return sorted(os.listdir(folder)) if folder.exists() else []


def test_get_serves_the_current_version_and_holds_its_lease(repo, root, tmp_path):
    deploy_bytes(repo, tmp_path, b"one")
    with gaia_cas.ModelHandle("m", root=root, loader=tagged_loader()) as h:
        obj, active = h.get()
        assert obj == {"bytes": b"one"} and active.version == "1.0.0" and h.leased
        assert len(lease_files(repo)) == 1
        assert f"tree={active.hash}" in (leases.leases_dir(repo.layout) / lease_files(repo)[0]).read_text()
    assert lease_files(repo) == []
    with pytest.raises(handle_module.HandleClosedError):
        h.get()


def test_refresh_costs_one_stat_when_nothing_changed(repo, root, tmp_path, monkeypatch):
    deploy_bytes(repo, tmp_path, b"one")
    calls = []
    with gaia_cas.ModelHandle("m", root=root, loader=tagged_loader(calls)) as h:
        stats, opens = [], []
        real_stat, real_open = os.stat, os.open
        monkeypatch.setattr(os, "stat", lambda *a, **k: stats.append(a[0]) or real_stat(*a, **k))
        monkeypatch.setattr(os, "open", lambda *a, **k: opens.append(a[0]) or real_open(*a, **k))
        assert h.refresh() is False
        monkeypatch.undo()
        assert len(stats) == 1 and opens == []
        assert len(calls) == 1


def test_refresh_loads_a_new_version_swaps_it_in_and_releases_the_old_lease(repo, root, tmp_path):
    deploy_bytes(repo, tmp_path, b"one")
    with gaia_cas.ModelHandle("m", root=root, loader=tagged_loader()) as h:
        first_lease = lease_files(repo)
        deploy_bytes(repo, tmp_path, b"two")
        assert h.refresh() is True
        obj, active = h.get()
        assert obj == {"bytes": b"two"} and active.version == "1.1.0"
        assert len(lease_files(repo)) == 1 and lease_files(repo) != first_lease
        assert h.refresh() is False
        repo.rollback("m", "1.0.0")
        assert h.refresh() is True
        assert h.get()[0] == {"bytes": b"one"} and h.get()[1].version == "1.0.0"


def test_a_version_that_fails_to_load_is_never_served_and_retried_only_on_the_next_change(repo, root, tmp_path):
    deploy_bytes(repo, tmp_path, b"one")
    calls = []
    with gaia_cas.ModelHandle("m", root=root, loader=tagged_loader(calls)) as h:
        deploy_bytes(repo, tmp_path, b"broken two")
        assert h.refresh() is False
        assert h.get()[0] == {"bytes": b"one"} and h.get()[1].version == "1.0.0"
        assert isinstance(h.last_error, ValueError)
        assert len(lease_files(repo)) == 1  # the failed version's lease was released
        assert h.refresh() is False and len(calls) == 2  # not retried: nothing changed
        deploy_bytes(repo, tmp_path, b"three")
        assert h.refresh() is True
        assert h.get()[0] == {"bytes": b"three"} and h.last_error is None


def test_the_old_version_serves_while_the_new_one_loads(repo, root, tmp_path):
    deploy_bytes(repo, tmp_path, b"one")
    loading, release = threading.Event(), threading.Event()

    def slow(path):
        data = Path(path).read_bytes()
        if data == b"two":
            loading.set()
            assert release.wait(10)
        return data

    with gaia_cas.ModelHandle("m", root=root, loader=slow) as h:
        deploy_bytes(repo, tmp_path, b"two")
        worker = threading.Thread(target=h.refresh)
        worker.start()
        assert loading.wait(10)
        assert h.get()[0] == b"one" and h.get()[1].version == "1.0.0"
        release.set()
        worker.join(10)
        assert h.get()[0] == b"two" and h.get()[1].version == "1.1.0"


def test_get_never_pairs_one_version_object_with_another_version(repo, root, tmp_path):
    deploy_bytes(repo, tmp_path, b"1.0.0")
    with gaia_cas.ModelHandle("m", root=root, loader=lambda p: Path(p).read_bytes().decode()) as h:
        mixed, stop = [], threading.Event()

        def read():
            while not stop.is_set():
                obj, active = h.get()
                if obj != active.version:
                    mixed.append((obj, active.version))

        reader = threading.Thread(target=read)
        reader.start()
        for version in ("1.1.0", "1.2.0", "1.3.0"):
            deploy_bytes(repo, tmp_path, version.encode())
            assert h.refresh()
        repo.rollback("m", "1.1.0")
        assert h.refresh()
        stop.set()
        reader.join(10)
        assert mixed == []


@pytest.mark.parametrize("inotify", [True, False], ids=["inotify", "polling"])
def test_wait_returns_on_a_change_and_times_out_without_one(repo, root, tmp_path, monkeypatch, inotify):
    if not inotify:
        monkeypatch.setattr(handle_module.ManifestWatcher, "open", classmethod(lambda cls, folder: cls(None)))
    deploy_bytes(repo, tmp_path, b"one")
    with gaia_cas.ModelHandle("m", root=root, loader=tagged_loader()) as h:
        assert h.wait(0.2) is False
        timer = threading.Timer(0.2, deploy_bytes, (repo, tmp_path, b"two"))
        timer.start()
        assert h.wait(10) is True
        timer.join()
        assert (h._watcher.fd is not None) is inotify
        assert h.refresh() and h.get()[0] == {"bytes": b"two"}


def test_start_refreshes_in_the_background(repo, root, tmp_path):
    deploy_bytes(repo, tmp_path, b"one")
    with gaia_cas.ModelHandle("m", root=root, loader=tagged_loader()).start(0.1) as h:
        deploy_bytes(repo, tmp_path, b"two")
        deadline = time.monotonic() + 10
        while h.get()[1].version != "1.1.0" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert h.get()[0] == {"bytes": b"two"}
        thread = h._thread
    assert not thread.is_alive() and lease_files(repo) == []


def test_a_channel_is_served_and_an_unknown_model_fails_cleanly(repo, root, tmp_path):
    deploy_bytes(repo, tmp_path, b"one")
    deploy_bytes(repo, tmp_path, b"two")
    repo.promote("m", "1.0.0", "staging")
    with gaia_cas.ModelHandle("m", root=root, channel="staging", loader=tagged_loader()) as h:
        assert h.get()[0] == {"bytes": b"one"}
    with pytest.raises(gaia_cas.GaiaCasError):
        gaia_cas.ModelHandle("nope", root=root, loader=tagged_loader())
    assert lease_files(repo) == []


HANDLE_HOLDER = """
import sys
sys.path.insert(0, sys.argv[1])
import gaia_cas
h = gaia_cas.ModelHandle("m", root=sys.argv[2], loader=lambda p: open(p, "rb").read())
print(h.get()[1].path, flush=True)
sys.stdin.readline()
h.close()
print("closed", flush=True)
sys.stdin.readline()
"""


@pytest.mark.parametrize("end", ["close", "sigkill"])
def test_a_live_handle_keeps_its_version_through_cleanup_and_gc(repo, root, tmp_path, end):
    deploy_bytes(repo, tmp_path, b"version one" * 50)
    v1 = repo.resolve("m")
    files = [repo.layout.object_path(v1.hash)] + [repo.layout.object_path(e.oid) for _, e in repo.trees.walk(v1.hash)]
    proc = subprocess.Popen([sys.executable, "-c", HANDLE_HOLDER, str(CHECKOUT), str(root)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        path = Path(proc.stdout.readline().strip())
        deploy_bytes(repo, tmp_path, b"version two" * 50)
        repo.cleanup(["m"], keep=1)
        assert [v.version for v in repo.manifest("m").versions] == ["1.1.0"]
        assert run_launcher("--root", root, "gc", "--grace", "0s", timeout=30).code == 0
        assert path.read_bytes() == b"version one" * 50 and all(f.is_file() for f in files)
        if end == "close":
            proc.stdin.write("\n")
            proc.stdin.flush()
            assert proc.stdout.readline().strip() == "closed"
        else:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        assert run_launcher("--root", root, "gc", "--grace", "0s", timeout=30).code == 0
        assert not path.exists() and not any(f.exists() for f in files)
        assert lease_files(repo) == []
    finally:
        proc.kill()
        proc.wait(timeout=10)


# -- default loaders -------------------------------------------------------------------------

def test_default_loader_reads_a_scikit_learn_joblib(repo, root, tmp_path):
    source = write_joblib(tmp_path / "src" / "model.joblib", 0)
    repo.deploy("m", source)
    with gaia_cas.ModelHandle("m", root=root) as h:
        model, active = h.get()
        assert active.format == "joblib"
        import joblib

        expected = joblib.load(source).predict_proba(sample_rows())
        assert np.array_equal(model.predict_proba(sample_rows()), expected)


def test_default_loader_reads_a_pickle_without_joblib(repo, root, tmp_path, monkeypatch):
    import pickle

    source = tmp_path / "src" / "model.pkl"
    source.parent.mkdir(parents=True)
    source.write_bytes(pickle.dumps({"weights": [1, 2, 3]}, protocol=4))
    repo.deploy("m", source)
    monkeypatch.setitem(sys.modules, "joblib", None)  # import joblib now raises ImportError
    with gaia_cas.ModelHandle("m", root=root) as h:
        assert h.get()[0] == {"weights": [1, 2, 3]}


def test_default_loader_opens_onnx_with_onnxruntime(repo, root, tmp_path):
    repo.deploy("m", write_onnx(tmp_path / "src" / "model.onnx", 0))
    with gaia_cas.ModelHandle("m", root=root) as h:
        session = h.get()[0]
        assert type(session).__name__ == "InferenceSession"
        assert [o.name for o in session.get_outputs()] == ["label", "probabilities"]


def test_an_unknown_format_or_a_missing_framework_is_one_clear_error(repo, root, tmp_path, monkeypatch):
    from gaia_cas.loaders import UnsupportedFormatError

    deploy_bytes(repo, tmp_path, b"plain bytes")
    with pytest.raises(UnsupportedFormatError, match="no default loader.*pass loader="):
        gaia_cas.ModelHandle("m", root=root)
    repo.deploy("m", write_onnx(tmp_path / "src" / "model.onnx", 0))
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(UnsupportedFormatError, match="pip install onnxruntime"):
        gaia_cas.ModelHandle("m", root=root)
    assert lease_files(repo) == []


def test_importing_the_package_and_the_handle_imports_no_framework():
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import gaia_cas; gaia_cas.ModelHandle;"
            "import gaia_cas.loaders, gaia_cas.handle;"
            "print(sorted(m for m in ('joblib', 'sklearn', 'onnxruntime', 'numpy', 'catboost', 'tensorflow')"
            " if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(CHECKOUT)], capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "[]", out.stderr


def test_a_server_that_cannot_write_the_store_serves_without_a_lease(shared):
    """Another user's store (here root's, served by nobody): no lease can be taken, serving works."""
    from test_hostile_input import as_nobody

    root = shared / "root"
    repo = Repository.init(root)
    deploy_bytes(repo, shared, b"one")
    deploy_bytes(repo, shared, b"two")
    os.chmod(shared / "src", 0o755)

    def serve_as_nobody():
        with gaia_cas.ModelHandle("m", root=root, loader=lambda p: Path(p).read_bytes()) as h:
            obj, active = h.get()
            print(obj.decode(), active.version, h.leased)
            print(h.refresh())

    run = as_nobody(serve_as_nobody, cwd=shared)
    assert run.code == 0, run.err
    assert run.out.split() == ["two", "1.1.0", "False", "False"]
    assert lease_files(repo) == []
