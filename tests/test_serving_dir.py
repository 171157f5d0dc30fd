"""The serving dir: DIR/<n>/ numbered version folders for TF Serving and Triton, each renamed in
complete, following every deploy, rollback, promote and pull; hostile folders never followed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conftest import CHECKOUT, assert_one_line_error, make_savedmodel, snapshot
from s3_fixtures import s3_server, s3_url  # noqa: F401
from gaia_cas import serving_dir
from gaia_cas.errors import InvalidInputError

FILES = 40  # files per version: a folder built in place would be seen half made


def make_version(path: Path, variant: int) -> Path:
    """A SavedModel-like folder of FILES files, each naming its variant."""
    make_savedmodel(path, variant)
    extra = path / "assets" / "vocab"
    extra.mkdir(parents=True, exist_ok=True)
    for i in range(FILES - 4):
        (extra / f"part-{i:03}.txt").write_text(f"variant {variant} part {i}\n")
    return path


def contents(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` (relative path -> bytes); raises if the folder vanishes."""
    result = {}

    def fail(exc):
        raise exc

    for dirpath, _, files in os.walk(folder, onerror=fail):
        for name in files:
            full = Path(dirpath) / name
            result[str(full.relative_to(folder))] = full.read_bytes()
    return result


class Reader:
    """What TF Serving's poll does: list DIR, read every numbered folder, check each is whole."""

    def __init__(self, view: Path, expected: dict[int, dict[str, bytes]]):
        self.view, self.expected = view, expected
        self.scans = self.folders_read = 0
        self.partial: list = []

    def scan(self) -> None:
        self.scans += 1
        try:
            names = os.listdir(self.view)
        except FileNotFoundError:
            return
        for name in names:
            if not name.isdigit():
                continue  # neither server takes a dot-name for a version
            try:
                seen = contents(self.view / name)
            except (FileNotFoundError, NotADirectoryError):
                continue  # retired while read: gone, not partial
            self.folders_read += 1
            if seen != self.expected.get(int(name)):
                self.partial.append((name, len(seen)))


@pytest.fixture
def versions(repo, tmp_path):
    """Three deployed versions (1.0.0, 1.1.0, 1.2.0; current 1.2.0) and their expected folders."""
    expected = {}
    for variant in range(3):
        source = make_version(tmp_path / f"v{variant}", variant)
        result = repo.deploy("ssd", source)
        expected[serving_dir.version_number(result.version)] = contents(source)
    return expected


def numbered(view: Path) -> list[str]:
    return sorted(n for n in os.listdir(view) if n.isdigit())


def test_the_number_of_a_version_sorts_as_the_versions_do():
    assert serving_dir.version_number("1.3.0") == 1003000
    assert serving_dir.version_number("v1.3") == 1003000
    assert serving_dir.version_number("1.10.2") == 1010002
    assert serving_dir.version_number("0.0.7") == 7
    ordered = ["0.0.1", "0.1.0", "0.999.999", "1.0.0", "1.2.999", "1.3.0", "2.0.0", "123456789.999.999"]
    numbers = [serving_dir.version_number(v) for v in ordered]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers) and numbers[-1] < 2 ** 63
    with pytest.raises(InvalidInputError, match="at most 999"):
        serving_dir.version_number("1.1000.0")


def test_the_view_follows_deploy_rollback_promote_and_hard_links_the_store(repo, root, versions, tmp_path, cli):
    run = cli("model", "set", "ssd", "--serving-dir", "serving/ssd")
    assert run.code == 0, run.err
    view = root / "serving" / "ssd"
    assert numbered(view) == ["1002000"]
    assert contents(view / "1002000") == versions[1002000]
    pb = view / "1002000" / "saved_model.pb"
    assert pb.stat().st_nlink > 1 and pb.stat().st_ino == (root / "models/ssd/current/saved_model.pb").stat().st_ino
    (view / "config.pbtxt").write_text('name: "ssd"\n')  # Triton's: the user's, left alone

    repo.rollback("ssd", "1.0.0")
    assert numbered(view) == ["1000000"] and contents(view / "1000000") == versions[1000000]
    repo.promote("ssd", "1.1.0", "staging")
    assert numbered(view) == ["1000000", "1001000"] and contents(view / "1001000") == versions[1001000]
    source = make_version(tmp_path / "v3", 3)
    repo.deploy("ssd", source)
    assert numbered(view) == ["1001000", "1003000"] and contents(view / "1003000") == contents(source)
    assert sorted(os.listdir(view)) == ["1001000", "1003000", "config.pbtxt"]  # no dot-name left behind
    assert repo.manifest("ssd").config.serving_dir == "serving/ssd"
    assert cli("model", "show", "ssd", "--json").json()["serving_dir"] == "serving/ssd"

    run = cli("model", "set", "ssd", "--serving-dir", "")  # dropped: its numbered folders go
    assert run.code == 0, run.err
    assert os.listdir(view) == ["config.pbtxt"] and repo.manifest("ssd").config.serving_dir is None
    repo.rollback("ssd", "1.1.0")
    assert os.listdir(view) == ["config.pbtxt"]


def test_moving_the_view_empties_the_old_folder_and_the_library_sets_it_too(repo, root, versions):
    repo.set_model("ssd", serving_dir="serving/a")
    repo.set_model("ssd", serving_dir=str(root / "serving" / "b"))  # absolute inside the root is accepted
    assert os.listdir(root / "serving" / "a") == []
    assert numbered(root / "serving" / "b") == ["1002000"]
    assert repo.manifest("ssd").config.serving_dir == "serving/b"
    repo.set_model("ssd", keep=5)  # another setting keeps it
    assert repo.manifest("ssd").config.serving_dir == "serving/b"


@pytest.mark.parametrize("value, fragment", [
    ("store/serving", "belong to gaia-cas"),
    ("manifests/x", "belong to gaia-cas"),
    ("../outside", "relative path inside the root"),
    ("/elsewhere/ssd", "outside the root"),
])
def test_a_view_inside_the_store_or_outside_the_root_is_refused_in_one_line(repo, root, versions, cli, value,
                                                                            fragment):
    before = snapshot(root)
    assert_one_line_error(cli("model", "set", "ssd", "--serving-dir", value), "--serving-dir", fragment)
    assert snapshot(root) == before


def test_two_models_cannot_share_or_nest_a_view(repo, root, versions, tmp_path, cli):
    repo.deploy("other", make_savedmodel(tmp_path / "o"))
    repo.set_model("ssd", serving_dir="serving/ssd")
    before = snapshot(root)
    for value in ("serving/ssd", "serving/ssd/inner", "serving"):
        assert_one_line_error(cli("model", "set", "other", "--serving-dir", value), "overlaps model 'ssd'")
    assert snapshot(root) == before


def test_a_reader_interleaved_at_every_step_never_sees_a_partial_version(repo, root, versions, monkeypatch):
    view = root / "serving" / "ssd"
    reader = Reader(view, versions)
    steps = []

    def at_step(step, name):
        steps.append(step)
        reader.scan()

    monkeypatch.setattr(serving_dir, "step_hook", at_step)
    repo.set_model("ssd", serving_dir="serving/ssd")
    for selector in ("1.0.0", "1.1.0", "1.2.0", "1.0.0"):
        repo.rollback("ssd", selector)
    repo.promote("ssd", "1.2.0", "staging")
    assert steps.count("linked") == 6 * FILES and steps.count("published") == 6 and steps.count("retired") == 4
    assert reader.partial == [] and reader.folders_read >= 5 * FILES
    assert numbered(view) == ["1000000", "1002000"]


def test_a_reader_polling_during_real_deploys_and_rollbacks_never_sees_a_partial_version(repo, root, versions,
                                                                                          tmp_path):
    repo.set_model("ssd", serving_dir="serving/ssd")
    sources = [make_version(tmp_path / f"new{variant}", variant) for variant in (3, 4)]
    versions.update({1003000: contents(sources[0]), 1004000: contents(sources[1])})
    reader = Reader(root / "serving" / "ssd", versions)
    done = threading.Event()

    def poll():
        while not done.is_set():
            reader.scan()

    thread = threading.Thread(target=poll)
    thread.start()
    try:
        for source in sources:
            repo.deploy("ssd", source)
        for i in range(12):
            repo.rollback("ssd", ("1.0.0", "1.1.0", "1.2.0", "1.3.0", "1.4.0")[i % 5])
    finally:
        done.set()
        thread.join(timeout=10)
    assert reader.partial == [] and reader.scans > 0 and reader.folders_read > 0


KILLER = """
import os, signal, sys
sys.path.insert(0, {checkout!r})
from gaia_cas import serving_dir
from gaia_cas.repo import Repository
seen = []
def at_step(step, name):
    if step == "linked":
        seen.append(name)
        if len(seen) == {after}:
            os.kill(os.getpid(), signal.SIGKILL)
serving_dir.step_hook = at_step
Repository({root!r}, lock_timeout=5).rollback("ssd", "1.0.0")
"""


@pytest.mark.parametrize("after", [1, FILES // 2, FILES])
def test_a_publish_killed_midway_leaves_no_numbered_folder_half_made(repo, root, versions, after):
    repo.set_model("ssd", serving_dir="serving/ssd")
    view = root / "serving" / "ssd"
    script = KILLER.format(checkout=str(CHECKOUT), root=str(root), after=after)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    left = os.listdir(view)
    assert numbered(view) == ["1002000"] and contents(view / "1002000") == versions[1002000]
    assert any(name.startswith(".1000000.tmp-") for name in left)  # the half-made one, under a dot-name
    assert repo.sync_links() == ["ssd"]  # the committed rollback: the view catches up, the leftover goes
    assert sorted(os.listdir(view)) == ["1000000"] and contents(view / "1000000") == versions[1000000]


def test_a_view_whose_parent_is_a_symlink_writes_nothing_outside(repo, root, versions, tmp_path, cli):
    repo.set_model("ssd", serving_dir="serving/ssd")
    outside = tmp_path / "outside"
    (outside / "ssd").mkdir(parents=True)
    os.rename(root / "serving", tmp_path / "moved")
    os.symlink(outside, root / "serving")
    run = cli("rollback", "ssd", "1.0.0")
    assert_one_line_error(run, "committed", "serving dir serving/ssd", "symlink")
    assert list(outside.rglob("*")) == [outside / "ssd"]
    assert repo.manifest("ssd").current == "1.0.0"
    before = snapshot(root)
    assert_one_line_error(cli("model", "set", "ssd", "--serving-dir", "serving/other"), "symlink")
    assert list(outside.rglob("*")) == [outside / "ssd"] and snapshot(root) == before


def test_a_parent_swapped_for_a_symlink_mid_update_keeps_writes_in_the_held_folder(repo, root, versions, tmp_path,
                                                                                   monkeypatch):
    repo.set_model("ssd", serving_dir="serving/ssd")
    outside = tmp_path / "outside"
    (outside / "ssd").mkdir(parents=True)

    def swap(step, name):
        if step == "begin":  # the view's folder is held: now an attacker swaps its parent
            os.rename(root / "serving", tmp_path / "moved")
            os.symlink(outside, root / "serving")

    monkeypatch.setattr(serving_dir, "step_hook", swap)
    repo.rollback("ssd", "1.0.0")
    assert list(outside.rglob("*")) == [outside / "ssd"]
    assert numbered(tmp_path / "moved" / "ssd") == ["1000000"]


def test_a_symlink_planted_under_a_number_is_removed_never_followed(repo, root, versions, tmp_path):
    repo.set_model("ssd", serving_dir="serving/ssd")
    view = root / "serving" / "ssd"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep me")
    os.symlink(outside, view / "1000000")  # where 1.0.0's folder will go
    os.symlink(outside / "precious", view / "1001000")  # a number no longer served
    repo.rollback("ssd", "1.0.0")
    assert sorted(os.listdir(outside)) == ["precious"] and (outside / "precious").read_text() == "keep me"
    assert numbered(view) == ["1000000"] and not (view / "1000000").is_symlink()
    assert contents(view / "1000000") == versions[1000000]


def test_a_view_that_is_a_symlink_is_refused_in_one_line(repo, root, versions, tmp_path, cli):
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "serving").mkdir()
    os.symlink(outside, root / "serving" / "ssd")
    before = snapshot(root)
    assert_one_line_error(cli("model", "set", "ssd", "--serving-dir", "serving/ssd"), "symlink")
    assert os.listdir(outside) == [] and snapshot(root) == before


def test_a_version_without_a_number_is_refused_before_anything_is_written(repo, root, tmp_path, cli):
    repo.deploy("ssd", make_savedmodel(tmp_path / "a"), version="1.1000.0")
    before = snapshot(root)
    assert_one_line_error(cli("model", "set", "ssd", "--serving-dir", "serving/ssd"), "at most 999")
    assert snapshot(root) == before



def test_a_pull_updates_the_view_like_a_deploy(repo, root, tmp_path, cli, s3_server):  # noqa: F811
    url = s3_url(s3_server)
    assert cli("remote", "add", "origin", url, "--endpoint", s3_server.endpoint).code == 0
    first = make_version(tmp_path / "a", 0)
    repo.deploy("ssd", first)
    assert cli("push").code == 0
    other = tmp_path / "other"
    assert cli("init", other, root_dir=None).code == 0
    assert cli("remote", "add", "origin", url, "--endpoint", s3_server.endpoint, root_dir=other).code == 0
    assert cli("pull", "ssd", root_dir=other).code == 0
    assert cli("model", "set", "ssd", "--serving-dir", "serving/ssd", root_dir=other).code == 0
    view = other / "serving" / "ssd"
    assert numbered(view) == ["1000000"] and contents(view / "1000000") == contents(first)
    second = make_version(tmp_path / "b", 1)
    repo.deploy("ssd", second)
    assert cli("push").code == 0
    run = cli("pull", "ssd", root_dir=other)
    assert run.code == 0, run.err
    assert numbered(view) == ["1001000"] and contents(view / "1001000") == contents(second)
