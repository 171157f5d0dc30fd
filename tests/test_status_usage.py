"""status: the deduplication saving counts only what versions use; garbage and staging are
reported apart, in the text and in --json."""

from __future__ import annotations

import os

import pytest

from conftest import make_savedmodel

A, B, S = 300_000, 310_000, 100_000  # big.bin of 1.0.0, of 1.1.0 (and its forced copy), shared.bin
STAGING = 500_000


@pytest.fixture
def messy(repo, root, tmp_path):
    """1.0.0 cleaned (its big.bin now garbage), 1.1.0 and 1.2.0 share one tree, and an
    interrupted deploy left a staging folder in store/tmp."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "shared.bin").write_bytes(b"s" * S)
    (src / "big.bin").write_bytes(b"a" * A)
    repo.deploy("m", src)
    (src / "big.bin").write_bytes(b"b" * B)
    repo.deploy("m", src)
    repo.deploy("m", src, force=True)  # 1.2.0: the same tree again, stored once
    [plan] = repo.cleanup(["m"], keep=2)
    assert plan.removed == ["1.0.0"]
    leftover = root / "store" / "tmp" / "deploy-interrupted"
    leftover.mkdir(parents=True)
    (leftover / "partial").write_bytes(b"p" * STAGING)
    return repo


def used_by_versions(repo) -> int:
    """Bytes of every distinct object (files and trees) the remaining versions reach."""
    oids = set()
    for version in repo.manifest("m").versions:
        oids.add(version.tree)
        oids.update(entry.oid for _, entry in repo.trees.walk(version.tree))
    return sum(os.stat(repo.objects.path(oid)).st_size for oid in oids)


def test_saving_ignores_garbage_and_staging(messy, cli):
    store = cli("status", "--json").json()["store"]
    used = used_by_versions(messy)
    assert store["logical_bytes"] == 2 * (B + S)
    assert store["used_bytes"] == used
    assert store["saved_bytes"] == 2 * (B + S) - used
    assert A <= store["garbage_bytes"] < A + 4096  # 1.0.0's big.bin and its tree object
    assert store["staging_bytes"] == STAGING
    # everything on disk is one of the three
    assert store["bytes_on_disk"] == used + store["garbage_bytes"] + STAGING

    text = cli("status").out
    from gaia_cas.humanize import size

    assert f"deduplication saves {size(2 * (B + S) - used)}" in text
    assert f"{size(STAGING)} in store/tmp" in text
    assert f"{size(store['garbage_bytes'])} used by no version" in text


def test_clean_store_has_no_garbage_or_staging(repo, cli, tmp_path):
    src = make_savedmodel(tmp_path / "sm")
    repo.deploy("m", src)
    repo.deploy("m", src, force=True)
    store = cli("status", "--json").json()["store"]
    assert store["garbage_bytes"] == 0 and store["staging_bytes"] == 0
    assert store["used_bytes"] == store["bytes_on_disk"] == used_by_versions(repo)
    assert store["saved_bytes"] == store["logical_bytes"] - store["used_bytes"] > 0


def test_a_single_version_never_shows_a_negative_saving(repo, cli, tmp_path):
    """One version: its tree objects are overhead, so the saving is at most zero -- shown as 0."""
    from conftest import make_joblib

    repo.deploy("ml", make_joblib(tmp_path / "m.joblib"))
    run = cli("status")
    assert run.code == 0 and "saves 0 B," in run.out and "saves -" not in run.out
