"""A full disk (pyfakefs): a deploy that runs out of space leaves the store exactly as it was and
says so in one line."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from conftest import snapshot
from gaia_cas.errors import StoreError
from gaia_cas.objects import CHUNK

from store_helpers import DATA_MOUNT, DISK, fake_root, objects_under, rand_bytes, tmp_leftovers, write, xxh


# -- disk full (pyfakefs) -----------------------------------------------------------------------

def _fake_source(path: str, sizes: dict[str, int]) -> Path:
    base = Path(path)
    for name, size in sizes.items():
        write(base / name, rand_bytes(size, size))
    return base


def test_disk_full_on_first_deploy_leaves_store_as_before(fs):
    repo = fake_root(fs)
    src = _fake_source("/src/model", {"small.bin": 4096, "saved_model.pb": 100, "big.bin": DISK + CHUNK})
    before = snapshot(repo.root)
    used = fs.get_disk_usage(DATA_MOUNT).used

    with pytest.raises(StoreError) as info:
        repo.deploy("m", src)

    assert info.value.errno == errno.ENOSPC or "No space left" in str(info.value)
    assert snapshot(repo.root) == before
    assert objects_under(repo.root) == {}
    assert tmp_leftovers(repo.root) == []
    assert fs.get_disk_usage(DATA_MOUNT).used == used
    assert repo.models() == []


def test_disk_full_keeps_previous_version_current_and_store_unchanged(fs):
    repo = fake_root(fs)
    v1 = _fake_source("/src/v1", {"saved_model.pb": 1000, "variables.bin": 2 * CHUNK})
    r1 = repo.deploy("m", v1)
    link = repo.root / "models" / "m" / "current"
    target = os.readlink(link)
    before = snapshot(repo.root)
    free = fs.get_disk_usage(DATA_MOUNT).free

    # v2 shares variables.bin with v1 (no new space needed) but adds more than the free space.
    v2 = _fake_source("/src/v2", {"saved_model.pb": 1001, "extra.bin": free + 1})
    write(v2 / "variables.bin", (v1 / "variables.bin").read_bytes())
    with pytest.raises(StoreError):
        repo.deploy("m", v2)

    assert snapshot(repo.root) == before
    assert os.readlink(link) == target
    assert repo.manifest("m").current == r1.version
    assert tmp_leftovers(repo.root) == []
    assert fs.get_disk_usage(DATA_MOUNT).free == free

    # Once space is available again the same deploy goes through.
    fs.set_disk_usage(DISK * 4, DATA_MOUNT)
    r2 = repo.deploy("m", v2)
    assert r2.version == "1.1.0"
    assert Path(r2.path, "extra.bin").read_bytes() == (v2 / "extra.bin").read_bytes()
    assert objects_under(repo.root)[xxh((v1 / "variables.bin").read_bytes())]


def test_disk_full_via_cli_is_one_line_error(fs, capsys):
    from conftest import assert_one_line_error, Run
    from gaia_cas.cli import main

    repo = fake_root(fs)
    src = _fake_source("/src/m", {"weights.bin": DISK + 1})
    before = snapshot(repo.root)
    capsys.readouterr()
    code = main(["--root", str(repo.root), "deploy", "m", str(src)])
    captured = capsys.readouterr()
    assert_one_line_error(Run(code, captured.out, captured.err), "No space left on device")
    assert snapshot(repo.root) == before
