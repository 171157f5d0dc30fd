"""A deploy or import that fails after installing objects takes them back, and only them.

The promises: every failure between the install and the manifest commit (a lock that times out,
SIGTERM while waiting for the model's lock, a refusal under the lock, a source that moved)
leaves the store exactly as it was, except what another writer took up meanwhile; a tree
another writer's committed version uses is never taken back; a failed --consume gives the
source files back with their own modes; and deleting a consumed source never follows a
symlink someone swapped into it.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import LAUNCHER, assert_one_line_error, lock_held_elsewhere, make_savedmodel, snapshot
from test_hostile_input import as_nobody, chown_tree, shared  # noqa: F401  (shared: a fixture)
from test_legacy import build_legacy
from gaia_cas import deploy as deploy_verb
from gaia_cas import ingest, objects
from gaia_cas.errors import GaiaCasError, Terminated
from gaia_cas.reader import resolve
from gaia_cas.repo import Repository


EMPTY = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"  # sha256 of no bytes


def modes(folder: Path) -> dict[str, int]:
    return {os.path.relpath(os.path.join(d, n), folder): stat.S_IMODE(os.lstat(os.path.join(d, n)).st_mode)
            for d, dirs, files in os.walk(folder) for n in dirs + files}


# -- finding 1: deleting a consumed source never follows a symlink swapped in -----------------

def test_consume_never_deletes_through_a_folder_swapped_for_a_symlink(shared, monkeypatch):
    """root consumes a source nobody owns; right before a file of it is deleted, nobody turns
    its folder into a symlink to root's own folder: root's file stays where it is."""
    root = shared / "root"
    Repository.init(root)
    home = shared / "home"
    src = home / "src"
    (src / "sub").mkdir(parents=True)
    (src / "weights.bin").write_bytes(b"w" * 4096)
    (src / "sub" / "passwd").write_bytes(b"not a secret")
    chown_tree(home)
    victim = shared / "victim"
    victim.mkdir()
    (victim / "passwd").write_bytes(b"root:x:0:0")
    real_unlink = os.unlink
    swapped = []

    def swap(folder: str) -> None:
        os.rename(folder, folder + ".moved")
        os.symlink(str(victim), folder)

    def unlink(path, *args, **kwargs):
        if not swapped and os.path.basename(os.fsdecode(path)) == "passwd":
            subs = [p for p in glob.glob(str(home / ".src.gaia-cas-consumed-*" / "sub")) + [str(src / "sub")]
                    if os.path.isdir(p) and not os.path.islink(p)]
            if subs:
                run = as_nobody(lambda: swap(subs[0]), cwd=shared)  # what the source's owner can do
                assert run.code == 0, run.err
                swapped.append(subs[0])
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(ingest.os, "unlink", unlink)
    result = Repository(root, lock_timeout=5).deploy("m", src, consume=True)
    monkeypatch.undo()
    assert swapped, "the hook never ran"
    assert (victim / "passwd").read_bytes() == b"root:x:0:0", "deleted a file outside the source"
    assert result.consumed is not None


# -- finding 5: a tree another writer's committed version uses is never taken back ------------

def test_a_failed_consume_keeps_the_tree_another_deploy_committed_meanwhile(repo, root, tmp_path, monkeypatch):
    # m exists already: a new model's first deploy holds the claims lock up to its commit, which
    # would (rightly) keep the other deployer out of this window
    repo.deploy("m", make_savedmodel(tmp_path / "first" / "saved_model", variant=1))
    a = make_savedmodel(tmp_path / "a" / "saved_model", variant=7)
    b = tmp_path / "b" / "saved_model"
    shutil.copytree(a, b)  # the same bytes, in files of their own
    real = objects.Staging.materialized
    ran = []

    def materialized(self, *args, **kwargs):
        if ran:
            return real(self, *args, **kwargs)
        ran.append(True)
        # another deployer of the same bytes commits and links current in this window
        Repository(root, lock_timeout=5).deploy("m", b)
        real(self, *args, **kwargs)
        raise Terminated(signal.SIGTERM, "SIGTERM")  # then the consume is stopped

    monkeypatch.setattr(objects.Staging, "materialized", materialized)
    with pytest.raises(Terminated):
        repo.deploy("m", a, consume=True)
    monkeypatch.undo()
    assert ran
    link = root / "models" / "m" / "current"
    assert link.is_symlink()
    assert link.is_dir(), f"current of m dangles: {os.readlink(link)}"
    assert (link / "saved_model.pb").read_bytes() == (b / "saved_model.pb").read_bytes()
    assert (Path(resolve("m", root).path) / "saved_model.pb").is_file()
    assert sorted(os.listdir(a)) == sorted(os.listdir(b)), "the failed consume deleted its source"


def test_a_failed_deploy_keeps_the_tree_another_writer_took_up_before_it_committed(repo, root, deployed,
                                                                                   monkeypatch):
    """Another writer's materialize() touched the tree (it is about to commit a version of it)
    between this deploy's materialize and its failure: the tree, and the objects it links, stay."""
    real = objects.Staging.materialized
    trees = []
    copy = deployed.parent.parent / "copy"
    shutil.copytree(deployed, copy)

    def materialized(self, tree_dir, *args, **kwargs):
        # Another deploy of the same bytes, up to its commit: it installs (finding every object
        # there and refreshing it) and materializes (touching the tree).
        ctx = Repository(root, lock_timeout=5).ctx
        with ctx.objects.staging() as other:
            ingest.stage(other, copy)
            other.install()
            other.keep()
        ctx.materialize(Path(tree_dir).name)
        trees.append(Path(tree_dir).name)
        real(self, tree_dir, *args, **kwargs)
        raise Terminated(signal.SIGTERM, "SIGTERM")

    monkeypatch.setattr(objects.Staging, "materialized", materialized)
    with pytest.raises(Terminated):
        repo.deploy("m", deployed)
    monkeypatch.undo()
    assert trees and (root / "store" / "trees" / trees[0]).is_dir()
    repo.ctx.check_complete(trees[0])  # every object it links is still stored


# -- finding 6: every failure between install and commit leaves the store as it was ----------

@pytest.fixture
def deployed(repo, root, tmp_path):
    repo.deploy("m", make_savedmodel(tmp_path / "v1" / "saved_model", variant=1))
    return make_savedmodel(tmp_path / "v2" / "saved_model", variant=2, variables_bytes=65536)


def test_a_lock_timeout_at_the_commit_leaves_the_store_as_it_was(cli, root, deployed):
    before = snapshot(root)
    with lock_held_elsewhere(root / "manifests" / "m.lock"):
        run = cli("--lock-timeout", "1", "deploy", "m", deployed)
    assert_one_line_error(run)
    assert snapshot(root) == before


def test_a_lock_timeout_of_a_consume_leaves_store_and_source_as_they_were(cli, root, deployed):
    before, source = snapshot(root), snapshot(deployed)
    with lock_held_elsewhere(root / "manifests" / "m.lock"):
        run = cli("--lock-timeout", "1", "deploy", "m", deployed, "--consume")
    assert_one_line_error(run)
    assert snapshot(root) == before
    assert snapshot(deployed) == source, "the source lost a file or its modes"


def test_sigterm_while_waiting_for_the_model_lock_leaves_the_store_as_it_was(root, deployed):
    before = snapshot(root)
    trees = set(os.listdir(root / "store" / "trees"))
    with lock_held_elsewhere(root / "manifests" / "m.lock"):
        proc = subprocess.Popen([sys.executable, str(LAUNCHER), "--root", str(root), "--lock-timeout", "30",
                                 "deploy", "m", str(deployed)], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": str(LAUNCHER.parent.parent)})
        try:
            deadline = time.monotonic() + 20
            while set(os.listdir(root / "store" / "trees")) == trees:  # materialized: now at the lock
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "the deploy never reached the commit"
                time.sleep(0.01)
            time.sleep(0.2)  # into the lock wait
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert snapshot(root) == before


def test_a_refusal_under_the_lock_leaves_the_store_as_the_other_writer_left_it(cli, root, deployed, tmp_path,
                                                                               monkeypatch):
    other = make_savedmodel(tmp_path / "other" / "saved_model", variant=3)
    real = objects.Staging.install
    seen = {}

    def install(self):
        if not seen:
            seen["busy"] = True
            seen["other"] = Repository(root, lock_timeout=5).deploy("m", other, version="3.0.0")
            seen["after"] = {p: v for p, v in snapshot(root).items()
                             if not p.startswith("store/tmp/")}  # but this deploy's own staging folder
        return real(self)

    monkeypatch.setattr(objects.Staging, "install", install)
    run = cli("deploy", "m", deployed, "--version", "3.0.0")
    assert_one_line_error(run, "3.0.0", "already assigned")
    assert snapshot(root) == seen["after"]


def test_an_object_another_writer_took_up_stays(repo, root, deployed, tmp_path, monkeypatch):
    """The guard of the take-back: an object whose mtime another writer refreshed is kept."""
    def refuse(*args, **kwargs):
        st = os.lstat(repo.objects.path(leaf))
        os.utime(repo.objects.path(leaf), ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # taken up
        raise GaiaCasError("the commit failed")

    data = (deployed / "variables" / "variables.data-00000-of-00001").read_bytes()
    leaf = objects.hash_bytes(data)
    monkeypatch.setattr(deploy_verb, "commit", refuse)
    with pytest.raises(GaiaCasError):
        repo.deploy("m", deployed)
    assert repo.objects.exists(leaf)
    assert repo.objects.path(leaf).read_bytes() == data


def test_import_legacy_whose_source_moves_after_staging_keeps_the_bytes_it_read(cli, root, tmp_path,
                                                                               monkeypatch):
    """The old script's cleanup moves a version folder away right after it was staged. The import
    read that version from the folder it held open, so what it stores is that version, whole:
    nothing is read by path afterwards (format detection included), nothing half-imported."""
    legacy = build_legacy(tmp_path / "api" / "models")
    real = ingest.stage
    moved = []

    def stage(staging, source, *args, **kwargs):
        built = real(staging, source, *args, **kwargs)
        if not moved:
            os.rename(str(source), str(source) + ".old")
            moved.append(str(source))
        return built

    monkeypatch.setattr(ingest, "stage", stage)
    run = cli("import-legacy", legacy)
    monkeypatch.undo()
    assert moved and run.code == 0, run.err
    repo = Repository(root)
    report = repo.verify()
    assert report.ok, [str(p) for p in report.problems]
    first = repo.manifest("ssd").versions[0]
    moved_folder = Path(moved[0] + ".old")
    stored = Path(repo.materialize(first.tree))
    for path in moved_folder.rglob("*"):
        if path.is_file():
            assert (stored / path.relative_to(moved_folder)).read_bytes() == path.read_bytes()


# -- finding 9: a failed --consume gives the source files their modes back ----------------------

def test_a_failed_consume_restores_the_source_files_modes(repo, root, tmp_path, monkeypatch):
    source = make_savedmodel(tmp_path / "ssd")
    os.chmod(source / "saved_model.pb", 0o640)
    os.chmod(source / "fingerprint.pb", 0o600)
    before = modes(source)

    def refuse(*args, **kwargs):
        raise GaiaCasError("the commit failed")

    monkeypatch.setattr(deploy_verb, "commit", refuse)
    with pytest.raises(GaiaCasError, match="the commit failed"):
        repo.deploy("ssd", source, consume=True)
    assert modes(source) == before


def test_a_consume_interrupted_by_sigterm_restores_modes_even_for_objects_already_stored(repo, root, tmp_path,
                                                                                         monkeypatch):
    """Files whose object the store already had are linked into staging and chmod 0444 by the
    install all the same: they get their modes back too."""
    make_savedmodel(tmp_path / "v1")
    repo.deploy("ssd", tmp_path / "v1")
    source = make_savedmodel(tmp_path / "ssd", variant=5)  # shares every file but one with v1
    before = modes(source)

    def refuse(*args, **kwargs):
        raise Terminated(signal.SIGTERM, "SIGTERM")

    monkeypatch.setattr(deploy_verb, "commit", refuse)
    with pytest.raises(Terminated):
        repo.deploy("ssd", source, consume=True)
    assert modes(source) == before


def test_a_source_file_whose_object_stays_gets_its_own_inode_with_its_mode(repo, root, tmp_path, monkeypatch):
    """Another writer took the object up meanwhile (refreshed it): the object keeps the inode,
    the source file gets a copy of its own, with the mode it had (not the object's 0444)."""
    source = make_savedmodel(tmp_path / "ssd")
    os.chmod(source / "saved_model.pb", 0o640)
    before = modes(source)
    oid = objects.hash_bytes((source / "saved_model.pb").read_bytes())

    def refuse(*args, **kwargs):
        path = repo.objects.path(oid)
        st = os.lstat(path)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # another writer refreshed it
        raise GaiaCasError("the commit failed")

    monkeypatch.setattr(deploy_verb, "commit", refuse)
    with pytest.raises(GaiaCasError):
        repo.deploy("ssd", source, consume=True)
    assert repo.objects.exists(oid)
    assert os.lstat(repo.objects.path(oid)).st_ino != os.lstat(source / "saved_model.pb").st_ino
    assert modes(source) == before
