"""Store objects are read from descriptors that were checked, never through a symlink: a store
object that is a symlink (to a FIFO, or to a file) or a FIFO is reported, never followed, never a
hang."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import make_savedmodel

from gaia_cas.errors import CorruptionError

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
