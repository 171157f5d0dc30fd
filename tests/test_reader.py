"""gaia_cas.resolve (gaia_cas/reader.py): the lock-free reader API for inference servers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import gaia_cas
from conftest import CHECKOUT, make_joblib, make_savedmodel
from gaia_cas.errors import NotFoundError, RootNotFoundError
from gaia_cas.materialize import remove_tree
from gaia_cas.repo import Repository


def files_of(path: Path) -> dict[str, bytes]:
    """Every regular file under ``path`` (or ``path`` itself) with its bytes."""
    path = Path(path)
    if path.is_file():
        return {path.name: path.read_bytes()}
    result = {}
    for dirpath, _, names in os.walk(path):
        for name in names:
            full = Path(dirpath) / name
            result[str(full.relative_to(path))] = full.read_bytes()
    return result


def current_link(root: Path, model: str = "ssd") -> str:
    return os.path.realpath(root / "models" / model / "current")


def run_bounded(args: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


# -- what resolve returns ---------------------------------------------------------------------

def test_resolve_savedmodel_folder(repo, root, savedmodel):
    deployed = repo.deploy("ssd", savedmodel, metadata={"threshold": 0.5, "classes": ["car"]})
    active = gaia_cas.resolve("ssd", root=root)
    manifest = repo.manifest("ssd")

    assert active.model == "ssd"
    assert active.version == "1.0.0" == manifest.current
    assert active.hash == manifest.current_version().tree == deployed.hash
    assert active.metadata == {"threshold": 0.5, "classes": ["car"]}
    assert active.generation == manifest.generation == 1
    assert active.path.is_dir()
    assert (active.path / "saved_model.pb").is_file()
    assert active.path == root / "store" / "trees" / active.hash
    assert files_of(active.path) == files_of(savedmodel)
    assert isinstance(active, gaia_cas.Resolved)


def test_resolve_single_file_keeps_its_real_name(repo, root, joblib_file):
    repo.deploy("catboost", joblib_file)
    active = gaia_cas.resolve("catboost", root=root)
    assert active.path.name == "model_catboost_best.joblib"
    assert active.path.is_file()
    assert active.path.parent == root / "store" / "trees" / active.hash
    assert active.path.read_bytes() == joblib_file.read_bytes()
    assert active.hash == repo.manifest("catboost").current_version().tree
    assert os.path.realpath(active.path) == current_link(root, "catboost")


def test_resolve_metadata_is_a_copy(repo, root, savedmodel):
    repo.deploy("ssd", savedmodel, metadata={"threshold": 0.5})
    active = gaia_cas.resolve("ssd", root=root)
    active.metadata["threshold"] = 0.9
    assert gaia_cas.resolve("ssd", root=root).metadata == {"threshold": 0.5}
    assert repo.manifest("ssd").current_version().metadata == {"threshold": 0.5}


def test_resolve_by_alias(repo, root, savedmodel):
    repo.add_model("ssd", aliases=["dl"])
    repo.deploy("ssd", savedmodel)
    by_alias = gaia_cas.resolve("dl", root=root)
    by_name = gaia_cas.resolve("ssd", root=root)
    assert by_alias.model == "ssd"
    assert by_alias.hash == by_name.hash
    assert by_alias.path == by_name.path
    assert by_alias.version == by_name.version == "1.0.0"
    assert (by_alias.path / "saved_model.pb").is_file()


def test_repository_resolve_matches_module_resolve(repo, root, savedmodel):
    repo.deploy("ssd", savedmodel)
    assert repo.resolve("ssd").hash == gaia_cas.resolve("ssd", root=root).hash


# -- finding the root ---------------------------------------------------------------------------

def test_root_from_environment(repo, root, savedmodel, monkeypatch):
    repo.deploy("ssd", savedmodel)
    monkeypatch.setenv("GAIA_CAS_ROOT", str(root))
    active = gaia_cas.resolve("ssd")
    assert active.path == root / "store" / "trees" / active.hash
    assert (active.path / "saved_model.pb").is_file()


def test_root_from_working_directory_ancestors(repo, root, savedmodel, monkeypatch):
    repo.deploy("ssd", savedmodel)
    deep = root / "api" / "server" / "deep"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    active = gaia_cas.resolve("ssd")
    assert active.path == root / "store" / "trees" / active.hash
    monkeypatch.chdir(root)
    assert gaia_cas.resolve("ssd").hash == active.hash


def test_explicit_root_wins_over_environment(repo, root, savedmodel, tmp_path, monkeypatch):
    repo.deploy("ssd", savedmodel)
    other = tmp_path / "other-root"
    Repository.init(other)
    monkeypatch.setenv("GAIA_CAS_ROOT", str(other))
    with pytest.raises(gaia_cas.GaiaCasError):
        gaia_cas.resolve("ssd")  # the environment's root has no such model
    assert gaia_cas.resolve("ssd", root=root).version == "1.0.0"


def test_no_root_is_a_clear_error():
    # the autouse fixture put us in an empty folder under tmp_path, with no GAIA_CAS_ROOT
    with pytest.raises(RootNotFoundError) as info:
        gaia_cas.resolve("ssd")
    assert isinstance(info.value, gaia_cas.GaiaCasError)
    assert "gaia-cas init" in str(info.value)


def test_explicit_path_that_is_not_a_root_is_a_clear_error(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(RootNotFoundError) as info:
        gaia_cas.resolve("ssd", root=plain)
    assert "gaia-cas init" in str(info.value)
    assert not (plain / "store").exists() and not (plain / "manifests").exists()


# -- errors -------------------------------------------------------------------------------------

def test_unknown_model(repo, root, savedmodel):
    repo.deploy("ssd", savedmodel)
    with pytest.raises(gaia_cas.GaiaCasError) as info:
        gaia_cas.resolve("nope", root=root)
    assert isinstance(info.value, NotFoundError)
    assert "nope" in str(info.value)


def test_unknown_model_in_an_empty_root(root):
    with pytest.raises(NotFoundError):
        gaia_cas.resolve("ssd", root=root)


@pytest.mark.parametrize("name", ["../x", "", "ssd/../../etc", "/etc/passwd"])
def test_invalid_model_name_is_refused(root, name):
    with pytest.raises(gaia_cas.GaiaCasError):
        gaia_cas.resolve(name, root=root)


def test_model_without_current_version(repo, root):
    repo.add_model("ssd", aliases=["dl"])
    for name in ("ssd", "dl"):
        with pytest.raises(gaia_cas.GaiaCasError) as info:
            gaia_cas.resolve(name, root=root)
        assert "no current version" in str(info.value)


# -- change detection and agreement with the current link ------------------------------------

def test_changed_after_deploy_and_rollback(repo, root, tmp_path):
    a = make_savedmodel(tmp_path / "a" / "saved_model", variant=1)
    b = make_savedmodel(tmp_path / "b" / "saved_model", variant=2)
    repo.deploy("ssd", a)
    first = gaia_cas.resolve("ssd", root=root)
    assert first.changed() is False
    assert first.changed() is False

    # an identical redeploy commits nothing: still unchanged
    assert repo.deploy("ssd", a).unchanged
    assert first.changed() is False

    repo.deploy("ssd", b)
    assert first.changed() is True
    second = gaia_cas.resolve("ssd", root=root)
    assert second.changed() is False
    assert second.generation > first.generation
    assert second.version == "1.1.0" and second.hash != first.hash

    repo.rollback("ssd", "1.0.0")
    assert second.changed() is True
    assert first.changed() is True
    third = gaia_cas.resolve("ssd", root=root)
    assert third.changed() is False
    assert third.generation > second.generation
    assert third.version == "1.0.0"
    assert third.hash == first.hash and third.path == first.path

    repo.set_model("ssd", metadata={"team": "vision"})  # any commit counts as a change
    assert third.changed() is True
    fourth = gaia_cas.resolve("ssd", root=root)
    assert fourth.generation > third.generation and fourth.hash == third.hash


def test_resolve_agrees_with_current_link_after_every_change(repo, root, tmp_path):
    sources = [make_savedmodel(tmp_path / f"s{i}" / "saved_model", variant=i) for i in range(3)]
    steps = [("deploy", sources[0]), ("deploy", sources[1]), ("deploy", sources[2]),
             ("rollback", "1.0.0"), ("rollback", "previous"), ("deploy", sources[1]),
             ("rollback", "1.1.0"), ("rollback", "1.2.0")]
    seen = []
    for kind, arg in steps:
        if kind == "deploy":
            repo.deploy("ssd", arg)
        else:
            repo.rollback("ssd", arg)
        active = gaia_cas.resolve("ssd", root=root)
        assert current_link(root) == os.path.realpath(active.path), (kind, arg)
        assert active.version == repo.manifest("ssd").current
        assert files_of(Path(current_link(root))) == files_of(active.path)
        seen.append(active.version)
    assert seen == ["1.0.0", "1.1.0", "1.2.0", "1.0.0", "1.2.0", "1.3.0", "1.1.0", "1.2.0"]


def test_resolve_agrees_with_current_link_for_file_artifacts(repo, root, tmp_path):
    a = make_joblib(tmp_path / "a" / "model_catboost_best.joblib", variant=1)
    b = make_joblib(tmp_path / "b" / "model_catboost_best.joblib", variant=2)
    for action in (lambda: repo.deploy("catboost", a), lambda: repo.deploy("catboost", b),
                   lambda: repo.rollback("catboost", "previous"), lambda: repo.rollback("catboost", "1.1.0")):
        action()
        active = gaia_cas.resolve("catboost", root=root)
        assert current_link(root, "catboost") == os.path.realpath(active.path)
        assert active.path.name == "model_catboost_best.joblib"
    assert active.path.read_bytes() == b.read_bytes()


def test_resolve_follows_a_configured_link(repo, root, savedmodel):
    repo.add_model("ssd", link="api/models/dl_model/current")
    repo.deploy("ssd", savedmodel)
    active = gaia_cas.resolve("ssd", root=root)
    assert os.path.realpath(root / "api" / "models" / "dl_model" / "current") == os.path.realpath(active.path)


# -- rebuilding a removed materialized tree -----------------------------------------------------

def test_resolve_rebuilds_a_removed_tree(repo, root, savedmodel):
    repo.deploy("ssd", savedmodel)
    tree = root / "store" / "trees" / repo.manifest("ssd").current_version().tree
    assert tree.is_dir()
    remove_tree(tree)
    assert not os.path.lexists(tree)

    active = gaia_cas.resolve("ssd", root=root)
    assert active.path == tree
    assert tree.is_dir()
    assert files_of(active.path) == files_of(savedmodel)
    # the current link is usable again too
    assert files_of(Path(current_link(root))) == files_of(savedmodel)
    # nothing left half-built in store/tmp
    assert [n for n in os.listdir(root / "store" / "tmp") if "tree-" in n] == []


def test_resolve_rebuilds_a_removed_file_tree(repo, root, joblib_file):
    repo.deploy("catboost", joblib_file)
    tree = root / "store" / "trees" / repo.manifest("catboost").current_version().tree
    remove_tree(tree)
    active = gaia_cas.resolve("catboost", root=root)
    assert active.path == tree / "model_catboost_best.joblib"
    assert active.path.read_bytes() == joblib_file.read_bytes()


# -- real processes: readers never see a mix or a missing link ----------------------------------

WRITER = """
import sys
sys.path.insert(0, sys.argv[1])
from gaia_cas.repo import Repository
repo = Repository(sys.argv[2], lock_timeout=60)
a, b, rounds = sys.argv[3], sys.argv[4], int(sys.argv[5])
for i in range(rounds):
    result = repo.deploy("ssd", a if i % 2 == 0 else b)
    assert not result.unchanged, result
print("done", flush=True)
"""

ROLLER = """
import sys
sys.path.insert(0, sys.argv[1])
from gaia_cas.repo import Repository
repo = Repository(sys.argv[2], lock_timeout=60)
for i in range(int(sys.argv[3])):
    result = repo.rollback("ssd", "1.0.0" if i % 2 == 0 else "1.1.0")
    assert not result.unchanged, result
print("done", flush=True)
"""


def _start(script: str, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", script, str(CHECKOUT), *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 60) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
        return proc.returncode, out, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_readers_see_one_complete_version_while_another_process_deploys(repo, root, tmp_path):
    a = make_savedmodel(tmp_path / "a" / "saved_model", variant=1, variables_bytes=64 * 1024)
    b = make_savedmodel(tmp_path / "b" / "saved_model", variant=2, variables_bytes=96 * 1024)
    (b / "assets" / "vocab.txt").write_bytes(b"only in b\n" * 100)
    tree_a = repo.deploy("ssd", a).hash
    tree_b = repo.deploy("ssd", b).hash
    expected = {tree_a: files_of(a), tree_b: files_of(b)}
    assert tree_a != tree_b and expected[tree_a] != expected[tree_b]

    rounds = 15
    errors: list[str] = []
    hashes: list[str] = []
    generations: list[int] = []
    proc = _start(WRITER, root, a, b, rounds)
    try:
        for i in range(20_000):
            if i % 10 == 0 and proc.poll() is not None:
                break
            try:
                active = gaia_cas.resolve("ssd", root=root)
                content = files_of(active.path)
            except Exception as exc:  # noqa: BLE001 -- any failure of a reader is the finding
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            hashes.append(active.hash)
            generations.append(active.generation)
            if active.hash not in expected:
                errors.append(f"unexpected hash {active.hash}")
            elif content != expected[active.hash]:
                errors.append(f"mixed content for {active.version} ({active.hash})")
        code, out, err = _finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)

    assert code == 0, err
    assert out.strip() == "done"
    assert errors == []
    assert hashes, "the reader never resolved anything"
    assert set(hashes) <= {tree_a, tree_b}
    # generations only move forward for a single reader
    assert generations == sorted(generations)
    final = gaia_cas.resolve("ssd", root=root)
    assert final.generation == 2 + rounds
    assert final.hash == tree_a  # the 15th deploy (odd count) was a
    assert files_of(final.path) == expected[tree_a]
    assert current_link(root) == os.path.realpath(final.path)
    manifest = repo.manifest("ssd")
    assert len(manifest.versions) == 2 + rounds
    assert {v.tree for v in manifest.versions} == {tree_a, tree_b}


def test_current_link_never_missing_while_another_process_swaps_it(repo, root, tmp_path):
    a = make_savedmodel(tmp_path / "a" / "saved_model", variant=1)
    b = make_savedmodel(tmp_path / "b" / "saved_model", variant=2)
    tree_a = repo.deploy("ssd", a).hash
    tree_b = repo.deploy("ssd", b).hash
    link = root / "models" / "ssd" / "current"
    valid = {os.stat(root / "store" / "trees" / t).st_ino for t in (tree_a, tree_b)}

    swaps = 30
    missing = 0
    other = 0
    stats = 0
    proc = _start(ROLLER, root, swaps)
    try:
        for i in range(3_000_000):
            if i % 200 == 0 and proc.poll() is not None:
                break
            try:
                st = os.stat(link)
            except FileNotFoundError:
                missing += 1
                continue
            stats += 1
            if st.st_ino not in valid:
                other += 1
        code, out, err = _finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)

    assert code == 0, err
    assert out.strip() == "done"
    assert missing == 0
    assert other == 0
    assert stats > 0
    manifest = repo.manifest("ssd")
    assert manifest.generation == 2 + swaps
    assert [e.action for e in manifest.history].count("rollback") == swaps
    assert manifest.current == "1.1.0"  # 30 swaps, the last one to 1.1.0
    assert os.path.realpath(link) == os.path.realpath(root / "store" / "trees" / tree_b)
    assert [n for n in os.listdir(link.parent) if ".tmp-" in n] == []
