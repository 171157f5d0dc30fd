"""Helpers the object-store tests share: reading the store back, making bytes, a small fake disk."""

from __future__ import annotations

import os
import random
from pathlib import Path

import xxhash

from gaia_cas.repo import Repository

OID_A = "0123456789abcdef0123456789abcdef"
OID_B = "fedcba9876543210fedcba9876543210"


def objects_under(root: Path) -> dict[str, Path]:
    """Every file under store/objects, keyed by the oid its path spells."""
    base = Path(root) / "store" / "objects"
    found = {}
    for dirpath, _, files in os.walk(base):
        for name in files:
            path = Path(dirpath) / name
            found[path.parent.name + name] = path
    return found


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def xxh(data: bytes) -> str:
    return xxhash.xxh3_128_hexdigest(data)


def rand_bytes(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def tree_oids(repo: Repository, tree: str) -> set[str]:
    """The tree and every object it reaches."""
    return {tree} | {entry.oid for _, entry in repo.trees.walk(tree)}


def tmp_leftovers(root: Path) -> list[str]:
    return sorted(os.listdir(Path(root) / "store" / "tmp"))



# -- a small disk of its own (pyfakefs) ---------------------------------------------------------

DATA_MOUNT = "/data"
DISK = 8 << 20


def fake_root(fs) -> Repository:
    # The root gets a small disk of its own; sources live on the unbounded "/" so only the
    # store's writes count against it.
    fs.add_mount_point(DATA_MOUNT)
    fs.set_disk_usage(DISK, DATA_MOUNT)
    return Repository.init(f"{DATA_MOUNT}/root", lock_timeout=5)
