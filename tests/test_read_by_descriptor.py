"""Sources, archives and store objects are read from descriptors that were checked, never by a
path that may have changed since: a legacy version folder swapped for a symlink, a model file
swapped for a FIFO after staging, a FIFO or pipe given as an archive, and a store object that is
a symlink (to a FIFO, or to a file) are each refused or reported, never followed, never a hang."""

from __future__ import annotations

import io
import json
import os
import signal
import tarfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import assert_one_line_error, make_joblib, make_savedmodel, snapshot
from test_hostile_input import NOBODY, as_nobody, chown_tree, flip_as_nobody, shared  # noqa: F401  (shared: a fixture)
from test_source_safety import stored_blobs

from gaia_cas import ingest, legacy
from gaia_cas.errors import CorruptionError
from gaia_cas.repo import Repository

SECRET = b"root's secret weights " * 300
VERSION = "v1.0_20250711_143245"
LATER = "v1.1_20250712_101010"


# -- import-legacy reads each version from the folder its scan held --------------------

@pytest.fixture
def legacy_planted(shared):
    """A legacy layout owned by nobody, a root-only folder shaped like one of its versions, and
    an empty root of root's."""
    secret = shared / "secret"
    secret.mkdir(mode=0o700)
    (secret / "model.joblib").write_bytes(SECRET)
    (secret / "metadata.json").write_text("{}")
    layout = shared / "layout"
    for folder, variant in ((VERSION, 1), (LATER, 2)):
        make_joblib(layout / "ml_model" / "versions" / folder / "model.joblib", variant)
        (layout / "ml_model" / "versions" / folder / "metadata.json").write_text(json.dumps({"version": folder}))
    # the decoy has the secret's size: only the inode tells them apart
    (layout / "ml_model" / "versions" / VERSION / "model.joblib").write_bytes(b"d" * len(SECRET))
    os.symlink(f"versions/{LATER}/model.joblib", layout / "ml_model" / "current")
    chown_tree(layout)
    root = shared / "root"
    Repository.init(root)
    return SimpleNamespace(root=root, layout=layout, secret=secret, shared=shared,
                           version=layout / "ml_model" / "versions" / VERSION)


def _swap_version_as_nobody(planted) -> None:
    def swap():
        os.rename(planted.version, planted.version.with_name(VERSION + ".real"))
        os.symlink(planted.secret, planted.version)
        return 0

    run = as_nobody(swap, cwd=planted.shared)
    assert run.code == 0, run.err


def test_a_legacy_version_folder_swapped_for_a_symlink_after_the_scan_is_not_read(cli, legacy_planted, monkeypatch):
    real_scan = legacy.scan
    swapped = []

    def scan(*args, **kwargs):
        plans = real_scan(*args, **kwargs)
        _swap_version_as_nobody(legacy_planted)
        swapped.append(True)
        return plans

    monkeypatch.setattr(legacy, "scan", scan)
    run = cli("import-legacy", legacy_planted.layout, root_dir=legacy_planted.root)
    assert swapped, "the swap never happened: the test proves nothing"
    assert run.code == 0, run.err
    assert SECRET not in stored_blobs(legacy_planted.root)
    assert f"skipped {VERSION}" in run.out and "changed" in run.out, run.out
    manifest = Repository(legacy_planted.root).manifest("catboost")
    assert [v.deployment_id for v in manifest.versions] == [LATER[5:]]


def test_a_real_attacker_flipping_a_legacy_version_folder_never_gets_a_secret_stored(legacy_planted):
    pid = flip_as_nobody(legacy_planted.version, legacy_planted.secret, 0.001,
                         spare=legacy_planted.version.parent.parent)  # outside versions/
    outcomes = []
    try:
        for attempt in range(12):
            root = legacy_planted.shared / f"root{attempt}"
            repo = Repository.init(root)
            try:
                plans = repo.import_legacy(legacy_planted.layout)
                outcomes.append(sum(len(p.versions) for p in plans))
            except Exception as exc:  # a layout caught mid-flip: refused, in one line
                assert "\n" not in str(exc)
                outcomes.append(-1)
            assert SECRET not in stored_blobs(root), f"attempt {attempt} stored the secret"
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert len(outcomes) == 12


# -- format detection never opens a source by path, nor under a lock ------------------

def _detection_outside_the_barrier(monkeypatch, root: Path) -> list:
    """Spy on format detection: each call records whether the store barrier (store/gc.lock)
    was free at that moment (an exclusive flock from a fresh descriptor is then granted)."""
    import fcntl

    real = ingest.source_format
    seen = []

    def source_format(node):
        try:
            fd = os.open(root / "store" / "gc.lock", os.O_RDONLY)
        except FileNotFoundError:  # never taken yet: nobody holds it
            seen.append("free")
            return real(node)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            seen.append("free")
        except BlockingIOError:
            seen.append("held")
        finally:
            os.close(fd)  # releases the probe's own lock
        return real(node)

    monkeypatch.setattr(ingest, "source_format", source_format)
    return seen


def _fifo_after_staging(monkeypatch, target_of):
    real_stage = ingest.stage
    done = []

    def stage(staging, source, *args, **kwargs):
        built = real_stage(staging, source, *args, **kwargs)
        target = target_of(source)
        if target is None:
            return built
        os.unlink(target)
        os.mkfifo(target)
        done.append(target)
        return built

    monkeypatch.setattr(ingest, "stage", stage)
    return done


def test_a_model_file_swapped_for_a_fifo_after_staging_fails_the_deploy_in_one_line(cli, root, tmp_path,
                                                                                    monkeypatch, no_hang):
    model = make_joblib(tmp_path / "s" / "model.joblib")
    before = snapshot(root)
    done = _fifo_after_staging(monkeypatch, lambda source: os.fspath(source))
    barrier = _detection_outside_the_barrier(monkeypatch, root)
    run = cli("deploy", "m", model)
    assert done and barrier == ["free"], barrier
    assert_one_line_error(run, "model.joblib changed while it was being deployed")
    assert snapshot(root) == before


def test_a_dry_run_on_a_fifo_swapped_in_does_not_hang(cli, root, tmp_path, monkeypatch, no_hang):
    model = make_joblib(tmp_path / "s" / "model.joblib")
    real = ingest.hash_only

    def hash_only(node, *args):
        built = real(node, *args)
        os.unlink(model)
        os.mkfifo(model)
        return built

    monkeypatch.setattr(ingest, "hash_only", hash_only)
    run = cli("deploy", "m", model, "--dry-run")
    assert_one_line_error(run, "model.joblib changed while it was being deployed")


def test_a_legacy_file_swapped_for_a_fifo_after_staging_skips_it_without_holding_the_barrier(
        cli, root, tmp_path, monkeypatch, no_hang):
    layout = tmp_path / "layout"
    for folder, variant in ((VERSION, 1), (LATER, 2)):
        make_joblib(layout / "ml_model" / "versions" / folder / "model.joblib", variant)
    os.symlink(f"versions/{LATER}/model.joblib", layout / "ml_model" / "current")
    version_file = layout / "ml_model" / "versions" / VERSION / "model.joblib"
    done = _fifo_after_staging(monkeypatch, lambda source: str(version_file) if VERSION in str(source) else None)
    barrier = _detection_outside_the_barrier(monkeypatch, root)
    run = cli("import-legacy", layout)
    assert done
    assert barrier and set(barrier) == {"free"}, barrier
    assert run.code == 0, run.err
    assert f"skipped {VERSION}" in run.out and "changed" in run.out, run.out
    manifest = Repository(root).manifest("catboost")
    assert [v.deployment_id for v in manifest.versions] == [LATER[5:]]
    assert manifest.current_version().format == "joblib"


def test_detection_reads_the_scanned_file_from_its_descriptor(tmp_path, monkeypatch):
    model = make_joblib(tmp_path / "s" / "model.joblib")
    node = ingest.scan(model)
    opened = []
    real_open = open

    def spy(path, *args, **kwargs):
        opened.append(os.fspath(path) if not isinstance(path, int) else path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", spy)
    assert ingest.source_format(node) == "joblib"
    assert str(model) not in opened
    folder = make_savedmodel(tmp_path / "f" / "saved_model")
    assert ingest.source_format(ingest.scan(folder)) == "savedmodel"


def _tar_bytes(tmp_path) -> bytes:
    model = make_joblib(tmp_path / "x" / "model.joblib")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(model, arcname="model.joblib")
    return buffer.getvalue()


def test_import_of_a_fifo_is_a_one_line_error_not_a_hang(cli, root, tmp_path, no_hang):
    fifo = tmp_path / "model.tar"
    os.mkfifo(fifo)
    before = snapshot(root)
    run = cli("import", fifo, "m")
    assert_one_line_error(run, "must be a regular file")
    assert snapshot(root) == before


def test_import_of_a_pipe_says_it_must_be_a_regular_file(cli, root, tmp_path, no_hang):
    data = _tar_bytes(tmp_path)
    read_end, write_end = os.pipe()
    os.write(write_end, data[:32768])  # within the pipe's buffer: no writer needs to wait
    os.close(write_end)
    try:
        before = snapshot(root)
        run = cli("import", f"/proc/self/fd/{read_end}", "m")
    finally:
        os.close(read_end)
    assert_one_line_error(run, "must be a regular file")
    assert snapshot(root) == before


# -- a store object that is a symlink or special file is corruption, never followed ---

@pytest.fixture
def deployed(repo, tmp_path):
    src = make_savedmodel(tmp_path / "src" / "saved_model")
    repo.deploy("m", src)
    version = repo.manifest("m").current_version()
    files = [entry.oid for _, entry in repo.trees.walk(version.tree) if entry.kind == "file"]
    return SimpleNamespace(repo=repo, tree=version.tree, file=files[0])


def _replace_object(repo, oid: str, target: Path) -> Path:
    path = Path(repo.objects.path_str(oid))
    os.chmod(path.parent, 0o755)
    os.unlink(path)
    os.symlink(target, path)
    return path


def test_an_object_symlinked_to_a_fifo_is_reported_by_verify_without_hanging(cli, deployed, tmp_path, no_hang):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    _replace_object(deployed.repo, deployed.file, fifo)
    run = cli("verify")
    assert run.code != 0
    assert deployed.file in run.out + run.err and "symlink" in run.out + run.err, run.out + run.err


def test_a_tree_object_symlinked_to_a_fifo_hangs_neither_status_diff_nor_gc(cli, deployed, tmp_path, no_hang):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    _replace_object(deployed.repo, deployed.tree, fifo)
    for argv in (("verify",), ("status",), ("gc", "--dry-run"), ("diff", "m", "1.0.0", "1.0.0")):
        run = cli(*argv)
        assert "Traceback" not in run.err, (argv, run.err)
    run = cli("verify")
    assert run.code != 0 and deployed.tree in run.out + run.err


def test_an_object_symlinked_to_a_regular_file_is_not_followed(deployed, tmp_path):
    store = deployed.repo.objects
    good = tmp_path / "copy"
    good.write_bytes(Path(store.path_str(deployed.tree)).read_bytes())
    _replace_object(deployed.repo, deployed.tree, good)
    assert not store.exists(deployed.tree)
    with pytest.raises(CorruptionError, match="symlink"):
        store.read(deployed.tree, 1 << 20)
    with pytest.raises(CorruptionError, match="symlink"):
        store.open(deployed.tree)
    report = deployed.repo.verify()
    assert any(p.oid == deployed.tree for p in report.problems)


def test_an_object_that_is_a_fifo_itself_is_corruption(deployed, no_hang):
    store = deployed.repo.objects
    path = Path(store.path_str(deployed.file))
    os.chmod(path.parent, 0o755)
    os.unlink(path)
    os.mkfifo(path)
    assert not store.exists(deployed.file)
    with pytest.raises(CorruptionError, match="not a regular file"):
        store.read(deployed.file, 1 << 20)
    report = deployed.repo.verify()
    assert any(p.oid == deployed.file and p.kind == "corrupt-object" for p in report.problems)
