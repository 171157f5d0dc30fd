"""Links reached only by descriptor: a folder on a link's way swapped for a symlink between the
check and the rename writes nothing outside the root (issue 13 item 2); a link path through a
symlink inside the root never lands in store/, manifests/, logs/ or another link (item 6); the
folders made for a link are fsynced in their parents (issue 13, "also")."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
import gaia_cas

from conftest import assert_one_line_error, make_savedmodel, snapshot
from gaia_cas import models as models_verb
from gaia_cas.errors import GaiaCasError
from gaia_cas.repo import Repository
from test_hostile_input import NOBODY, as_nobody, chown_tree, no_fsync, shared  # noqa: F401  (fixture)

LINK = "api/models/dl/current"


def _two_versions(root: Path, sources: Path, link: str = LINK) -> Repository:
    repo = Repository(root, lock_timeout=5)
    repo.add_model("m", link=link)
    with no_fsync():
        repo.deploy("m", make_savedmodel(sources / "a" / "saved_model", variant=1))
        repo.deploy("m", make_savedmodel(sources / "b" / "saved_model", variant=2))
    return repo


def _victim(outside: Path) -> Path:
    """What the attacker's symlink leads to: a file of root's at the same relative place."""
    victim = outside / "models" / "dl" / "current"
    victim.parent.mkdir(parents=True)
    victim.write_bytes(b"root's own file, outside the gaia-cas root")
    return victim


def _swap_before_the_temp_link(monkeypatch, swap) -> list:
    """Interleaving hook: run ``swap`` once, right before the temporary link is created (after
    every check of the link's location), then let the symlink call go on."""
    real = os.symlink
    fired = []

    def hooked(src, dst, *args, **kwargs):
        if not fired and ".current.tmp-" in os.fspath(dst):
            fired.append(os.fspath(dst))
            swap(real)
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "symlink", hooked)
    return fired


def _outside_tree(path: Path) -> dict:
    return {str(p.relative_to(path)): (p.is_symlink(), p.read_bytes() if p.is_file() and not p.is_symlink() else None)
            for p in sorted(path.rglob("*"))}


def test_parent_swapped_for_a_symlink_after_the_check_writes_nothing_outside(tmp_path, monkeypatch):
    root = tmp_path / "root"
    repo = Repository.init(root)
    _two_versions(repo.root, tmp_path / "src")
    outside = tmp_path / "outside"
    victim = _victim(outside)
    before = _outside_tree(outside)

    def swap(real_symlink):
        os.rename(root / "api" / "models", root / "api" / "models.moved")
        real_symlink(outside / "models", root / "api" / "models")

    fired = _swap_before_the_temp_link(monkeypatch, swap)
    repo.rollback("m", "1.0.0")
    assert fired, "the hook never ran: the swap did not happen"
    assert victim.read_bytes() == b"root's own file, outside the gaia-cas root"
    assert _outside_tree(outside) == before
    # The link went into the folder that was checked (now under its moved name), pointing at
    # the version's tree by a target computed for that real folder.
    moved = root / "api" / "models.moved" / "dl" / "current"
    tree = repo.manifest("m").current_version().tree
    assert os.path.samefile(moved, root / "store" / "trees" / tree)


def test_parent_swapped_by_nobody_who_owns_api_writes_nothing_outside(shared, monkeypatch):  # noqa: F811
    """The same interleaving, with the swap made for real by the unprivileged owner of api/."""
    root = shared / "root"
    repo = Repository.init(root)
    _two_versions(root, shared / "src")
    chown_tree(root / "api")
    outside = shared / "outside"
    victim = _victim(outside)
    before = _outside_tree(outside)

    def swap(real_symlink):
        def as_owner():
            os.rename(root / "api" / "models", root / "api" / "models.moved")
            real_symlink(outside / "models", root / "api" / "models")
            return 0

        run = as_nobody(as_owner, cwd=shared)
        assert run.code == 0, run

    fired = _swap_before_the_temp_link(monkeypatch, swap)
    repo.rollback("m", "1.0.0")
    assert fired
    assert os.lstat(root / "api" / "models").st_uid == NOBODY and (root / "api" / "models").is_symlink()
    assert victim.read_bytes() == b"root's own file, outside the gaia-cas root"
    assert _outside_tree(outside) == before


def _flip_as_nobody(api: Path, outside: Path, stop: Path) -> int:
    """Fork a child that, as nobody, flips api/models to a symlink and back until ``stop``
    exists (8 s at most); the interpreter's files are out of nobody's reach, so no exec."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            deadline = time.monotonic() + 8
            while not os.path.exists(stop) and time.monotonic() < deadline:
                try:  # root's link walk may recreate a missing api/models in between: go on
                    os.rename(api / "models", api / "models.real")
                    os.symlink(outside, api / "models")
                    os.unlink(api / "models")
                    os.rename(api / "models.real", api / "models")
                except OSError:
                    pass
            code = 0
        finally:
            os._exit(code)
    return pid


def test_a_real_race_with_nobody_flipping_the_link_folder_writes_nothing_outside(shared):  # noqa: F811
    """Bounded: 40 rollbacks by root while nobody flips api/models to a symlink and back."""
    root = shared / "root"
    repo = Repository.init(root)
    _two_versions(root, shared / "src")
    chown_tree(root / "api")
    outside = shared / "outside"
    victim = _victim(outside)
    before = _outside_tree(outside)
    stop = shared / "stop"
    pid = _flip_as_nobody(root / "api", outside / "models", stop)
    try:
        for i in range(40):
            try:
                with no_fsync():
                    repo.rollback("m", "1.0.0" if i % 2 == 0 else "1.1.0")
            except GaiaCasError:
                pass  # refused, or committed with the link left for later: both are fine here
    finally:
        stop.touch()
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert victim.read_bytes() == b"root's own file, outside the gaia-cas root"
    assert _outside_tree(outside) == before


# -- link paths through a symlink inside the root (item 6) ------------------------------------

@pytest.fixture
def model_m(cli, root, tmp_path):
    with no_fsync():
        assert cli("deploy", "m", make_savedmodel(tmp_path / "a" / "saved_model", variant=1)).code == 0
        assert cli("deploy", "m", make_savedmodel(tmp_path / "b" / "saved_model", variant=2)).code == 0
    os.symlink("manifests", root / "x")  # an in-root symlink into gaia-cas's own data
    os.symlink("store", root / "y")


@pytest.mark.parametrize("argv", [
    ("model", "add", "n", "--link", "x/n.msgpack"),
    ("model", "add", "n", "--link", "y/objects/current"),
    ("model", "add", "n", "--link", "models/m/current/variables/current"),
    ("model", "set", "m", "--link", "x/current"),
    ("model", "set", "m", "--link", "models/m/current/current"),
    ("promote", "m", "1.0.0", "--to", "staging", "--link", "x/staging"),
    ("promote", "m", "1.0.0", "--to", "staging", "--link", "models/m/current/staging"),
], ids=["add-into-manifests", "add-into-store", "add-through-current", "set-into-manifests",
        "set-through-current", "promote-into-manifests", "promote-through-current"])
def test_a_link_path_through_an_in_root_symlink_is_refused(cli, root, model_m, argv):
    before = snapshot(root)
    assert_one_line_error(cli(*argv), "goes through the symlink")
    assert snapshot(root) == before


def test_a_link_folder_swapped_for_an_in_root_symlink_is_refused_at_swap_time(cli, root, model_m):
    assert cli("model", "set", "m", "--link", "api/current").code == 0
    shutil.rmtree(root / "api")
    os.symlink("manifests", root / "api")
    before = snapshot(root)
    assert_one_line_error(cli("rollback", "m", "1.0.0"), "goes through the symlink api")
    assert snapshot(root) == before
    assert not os.path.lexists(root / "manifests" / "current")


def test_a_link_folder_swapped_for_an_in_root_symlink_after_the_check_is_not_followed(root, model_m, monkeypatch):
    """The swap lands between the check before the commit and the link's own walk."""
    repo = Repository(root, lock_timeout=5)
    repo.set_model("m", link="api/current")
    from gaia_cas import links

    real_check = links.check_location

    def check_then_swap(layout, relative):
        result = real_check(layout, relative)
        if relative == "api/current" and not os.path.islink(root / "api"):
            shutil.rmtree(root / "api")
            os.symlink("manifests", root / "api")
        return result

    monkeypatch.setattr(links, "check_location", check_then_swap)
    with pytest.raises(GaiaCasError, match="goes through the symlink api"):
        repo.rollback("m", "1.0.0")
    assert sorted(os.listdir(root / "manifests")) == [".config.lock", "m.lock", "m.msgpack"]


# -- durability of the folders made for a link ("also") ----------------------------------------

def test_folders_made_for_a_link_are_fsynced_in_their_parents(root, tmp_path, monkeypatch):
    repo = Repository(root, lock_timeout=5)
    repo.add_model("m", link="srv/a/b/current")
    synced = set()
    real = os.fsync

    def recording(fd):
        st = os.fstat(fd)
        synced.add((st.st_dev, st.st_ino))
        return real(fd)

    monkeypatch.setattr(os, "fsync", recording)
    repo.deploy("m", make_savedmodel(tmp_path / "a" / "saved_model"))
    for parent in (root, root / "srv", root / "srv" / "a", root / "srv" / "a" / "b"):
        st = os.stat(parent)
        assert (st.st_dev, st.st_ino) in synced, f"{parent} was not fsynced after a folder was made in it"


# -- two claims of one link or alias at once (item 9) -----------------------------------------

@pytest.mark.parametrize("claim", ["link", "alias"])
def test_two_model_adds_claiming_the_same_link_cannot_both_win(root, monkeypatch, claim):
    """Interleaving: A has checked its claim and is about to commit when B makes the same one.
    B must wait for A's decision (it then sees A's claim and is refused)."""
    import threading

    options = {"link": "api/models/shared/current"} if claim == "link" else {"aliases": ["dl"]}
    a_checked, go_on, b_waits, b_done = (threading.Event() for _ in range(4))
    real_commit = models_verb.commit_config
    real_sleep = time.sleep

    def commit(self, model, *args, **kwargs):
        if model == "a":
            a_checked.set()
            assert go_on.wait(10)
        return real_commit(self, model, *args, **kwargs)

    def sleep(seconds):
        if threading.current_thread().name == "b":
            b_waits.set()  # B is polling a lock held by A
        return real_sleep(seconds)

    monkeypatch.setattr(models_verb, "commit_config", commit)
    monkeypatch.setattr(time, "sleep", sleep)
    results = {}

    def add(model):
        try:
            Repository(root, lock_timeout=10).add_model(model, **options)
            results[model] = "ok"
        except GaiaCasError as exc:
            results[model] = str(exc)
        finally:
            if model == "b":
                b_done.set()

    a = threading.Thread(target=add, args=("a",), name="a")
    a.start()
    assert a_checked.wait(10)
    b = threading.Thread(target=add, args=("b",), name="b")
    b.start()
    while not (b_waits.is_set() or b_done.is_set()):  # whichever comes first; no time involved
        b_waits.wait(0.01)
    go_on.set()
    a.join(10)
    b.join(10)
    assert results["a"] == "ok", results
    assert results["b"] != "ok", results
    assert ("already used by model 'a'" if claim == "link" else "already belongs to model 'a'") in results["b"]
    manifests = Repository(root).manifests
    assert manifests.read("b") is None


def test_a_real_race_of_model_adds_claiming_one_link(root):
    """Bounded: 10 rounds of two processes adding a model with the same link; one wins each."""
    import subprocess
    import sys

    from conftest import LAUNCHER

    for round_ in range(10):
        link = f"api/round{round_}/current"
        procs = [subprocess.Popen([sys.executable, str(LAUNCHER), "--root", str(root), "model", "add",
                                   f"m{round_}{side}", "--link", link], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for side in "ab"]
        codes = []
        for proc in procs:
            out, err = proc.communicate(timeout=30)
            codes.append(proc.returncode)
            assert proc.returncode == 0 or "already used by model" in err, err
        assert sorted(codes) == [0, 1], (round_, codes)
        owners = [m for m in (f"m{round_}a", f"m{round_}b")
                  if Repository(root).manifests.read(m) is not None]
        assert len(owners) == 1, owners


# -- the first deploy of a new model and import-legacy claim links like model add ---------------

def test_a_new_models_first_deploy_and_a_model_add_cannot_share_a_link(root, tmp_path, monkeypatch):
    """Interleaving: 'deploy b PATH' (a new model, default link models/b/current) has checked its
    link and is staging when 'model add a --link models/b/current' commits. The deploy must decide
    its claim again under the claims lock, and refuse."""
    from gaia_cas import ingest

    repo = Repository(root, lock_timeout=10)
    src = make_savedmodel(tmp_path / "b")
    real_stage = ingest.stage

    def stage_then_rival(*args, **kwargs):
        built = real_stage(*args, **kwargs)
        Repository(root, lock_timeout=10).add_model("a", link="models/b/current")
        return built

    monkeypatch.setattr(ingest, "stage", stage_then_rival)
    with pytest.raises(GaiaCasError) as info:
        repo.deploy("b", src)
    assert "models/b/current" in str(info.value) and "'a'" in str(info.value)
    assert repo.models() == ["a"]
    owners = [m for m in repo.models() if repo.link_targets(repo.manifest(m))["current"][0] == "models/b/current"]
    assert owners == ["a"]
    assert not list((root / "store" / "objects").rglob("*"))  # what the refused deploy staged is gone


def test_import_legacy_decides_its_link_claim_under_the_claims_lock(root, tmp_path, monkeypatch):
    """Interleaving: between import-legacy's plan (the legacy current link is free) and its commit,
    'model add other --link api/models/dl_model/current' commits: the import must not take it."""
    from gaia_cas import legacy

    versions = root / "api" / "models" / "dl_model" / "versions"
    v = versions / "v1.0_20250711_143245"
    make_savedmodel(v / "saved_model")
    (v / "metadata.json").write_text('{"version": "1.0"}')
    (root / "api" / "models" / "dl_model" / "current").symlink_to("versions/v1.0_20250711_143245/saved_model")
    real_plan_link = legacy.plan_link

    def plan_then_rival(*args, **kwargs):
        result = real_plan_link(*args, **kwargs)
        Repository(root, lock_timeout=10).add_model("other", link="api/models/dl_model/current")
        return result

    monkeypatch.setattr(legacy, "plan_link", plan_then_rival)
    repo = Repository(root, lock_timeout=10)
    try:
        repo.import_legacy(root / "api" / "models")
    except GaiaCasError:
        pass  # refusing is right; so is importing without the link
    owners = [m for m in repo.models()
              if repo.link_targets(repo.manifest(m))["current"][0] == "api/models/dl_model/current"]
    assert owners == ["other"]


def test_model_add_leaves_a_link_it_does_not_own(repo, root, tmp_path):
    legacy = tmp_path / "legacy_current"
    legacy.mkdir()
    link = root / "api" / "current"
    link.parent.mkdir()
    link.symlink_to(legacy)
    repo.add_model("ssd", link="api/current")
    assert os.readlink(link) == str(legacy)  # servers following it keep working until a deploy
    repo.deploy("ssd", make_savedmodel(tmp_path / "s"))
    assert (link / "saved_model.pb").is_file()



def test_sync_links_regenerates_a_link_left_behind_by_a_crash(repo, root, tmp_path):
    src = tmp_path / "s"
    make_savedmodel(src, 0)
    first = repo.deploy("m", src)
    make_savedmodel(src, 1)
    repo.deploy("m", src)
    link = root / "models" / "m" / "current"
    os.unlink(link)
    link.symlink_to(os.path.relpath(root / "store" / "trees" / first.hash, link.parent))  # lagging behind
    assert repo.sync_links() == ["m"]
    assert os.path.realpath(link) == str(gaia_cas.resolve("m", root=root).path)
    assert repo.sync_links() == []
