"""Where things live under a data root, and how the root is found.

    <root>/
      store/
        objects/ab/cdef...   file and tree objects, named by their xxh3-128 oid, read-only
        trees/<tree-oid>/    materialized versions: hard links to objects (derived data)
        tmp/                 staging for objects and trees being written (gc removes stale ones)
      manifests/
        <model>.msgpack      one manifest per model: the single source of truth
        <model>.lock         the model's writer lock
        .config.lock         store-wide: link and alias claims are decided under it
      logs/
        versioning_YYYYmmdd_HHMMSS.log
      models/<model>/current -> ../../store/trees/<tree-oid>[/<file>]   (default link location)

The root is ``--root DIR``, else ``$GAIA_CAS_ROOT``, else the nearest ancestor of the working
directory holding both ``store/`` and ``manifests/``, else (only for the checkout's own
``bin/gaia-cas``) the checkout itself.
"""

from __future__ import annotations

import os
from pathlib import Path
from collections import namedtuple

from . import defaults
from .errors import InvalidInputError, RootNotFoundError
from .names import check_model_name, check_oid

MANIFEST_SUFFIX = ".msgpack"


class Layout(namedtuple("Layout", "root")):
    __slots__ = ()

    @property
    def store(self) -> Path:
        return self.root / "store"

    @property
    def objects(self) -> Path:
        return self.root / "store" / "objects"

    @property
    def trees(self) -> Path:
        return self.root / "store" / "trees"

    @property
    def tmp(self) -> Path:
        return self.root / "store" / "tmp"

    @property
    def manifests(self) -> Path:
        return self.root / "manifests"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def object_path(self, oid: str) -> Path:
        check_oid(oid)
        return self.objects / oid[:2] / oid[2:]

    def tree_path(self, tree_oid: str) -> Path:
        check_oid(tree_oid, "tree id")
        return self.trees / tree_oid

    def manifest_path(self, model: str) -> Path:
        return self.manifests / (check_model_name(model) + MANIFEST_SUFFIX)

    def lock_path(self, model: str) -> Path:
        return self.manifests / (check_model_name(model) + ".lock")

    @property
    def config_lock_path(self) -> Path:
        """The store-wide lock under which link and alias claims are decided."""
        return self.manifests / ".config.lock"

    def default_link(self, model: str) -> str:
        return defaults.LINK.format(model=check_model_name(model), channel="current")

    def link_path(self, relative: str) -> Path:
        return self.root / check_link(relative)

    def ensure(self) -> None:
        from .atomic import make_dirs

        for folder in (self.objects, self.trees, self.tmp, self.manifests, self.logs):
            make_dirs(folder)  # each new folder fsynced in its parent
        from .atomic import open_regular

        os.close(open_regular(self.config_lock_path, os.O_RDWR | os.O_CREAT))  # exists from the start

    def symlink_in_store(self, *, trees: bool = False) -> str | None:
        """The first symlink among the store's own folders (``store/objects``, ``store/trees``,
        ``store/tmp``, ``store/quarantine``, ``store/recipes``, each object and recipe shard
        and, with ``trees``, each materialized tree), as a sentence saying why it is refused;
        None if there is none.

        gaia-cas never follows a symlink under store/: gc deletes old entries of store/tmp and
        unreferenced objects, and through a symlink (an operator moving staging to a scratch
        disk) it would delete other people's files there; writers would put objects where the
        store's invariants do not hold.
        """
        folders = [self.objects, self.trees, self.tmp, self.store / "quarantine", self.store / "recipes"]
        for folder in folders:
            if os.path.islink(folder):
                return _symlink_refusal(self, folder)
        for parent in (self.objects, self.store / "recipes", self.trees) if trees else (self.objects,
                                                                                        self.store / "recipes"):
            try:
                with os.scandir(parent) as it:
                    for entry in it:
                        if entry.is_symlink():
                            return _symlink_refusal(self, Path(entry.path))
            except (FileNotFoundError, NotADirectoryError):
                continue
        return None


def _symlink_refusal(layout: Layout, path: Path) -> str:
    try:
        where = os.readlink(path)
    except OSError:
        where = "?"
    relative = os.path.relpath(path, layout.root)
    return (f"{relative} is a symlink (to {where}); gaia-cas never follows a symlink under store/ "
            f"(gc would delete other people's files there): make {relative} a real folder again (to use "
            "another disk, put the whole root on it)")


def is_root(path: Path) -> bool:
    return (path / "store").is_dir() and (path / "manifests").is_dir()


def find_root(explicit: str | os.PathLike | None = None, default: str | os.PathLike | None = None) -> Path:
    if explicit is not None and str(explicit) != "":
        root = Path(explicit).absolute()
        if not is_root(root):
            raise RootNotFoundError(
                f"{root} is not a gaia-cas root (no store/ and manifests/); create it with 'gaia-cas init {root}'"
            )
        return root
    env = os.environ.get("GAIA_CAS_ROOT")
    if env:
        return find_root(env)
    here = Path.cwd()
    for candidate in (here, *here.parents):
        if is_root(candidate):
            return candidate
    if default is not None:
        return find_root(default)
    raise RootNotFoundError(
        "no gaia-cas root here: no store/ and manifests/ in this folder or above it; "
        "run 'gaia-cas init [DIR]', or pass --root DIR or set GAIA_CAS_ROOT"
    )


_RESERVED_TOP = ("store", "manifests", "logs")


def check_link(relative: str) -> str:
    """A link location must be a plain relative path inside the root, outside the data folders."""
    text = str(relative)
    parts = text.split("/")
    if (
        not text
        or text.startswith("/")
        or "\\" in text
        or "\0" in text
        or any(part in ("", ".", "..") for part in parts)
    ):
        raise InvalidInputError(
            f"invalid link path {text!r}: give a relative path inside the root without '.', '..' "
            "or empty parts (e.g. api/models/dl_model/current)"
        )
    if parts[0] in _RESERVED_TOP:
        raise InvalidInputError(f"invalid link path {text!r}: store/, manifests/ and logs/ belong to gaia-cas")
    return text


def normalize_link(value: str, root: Path) -> str:
    """Accept an absolute path inside the root too, and store it relative to the root."""
    if os.path.isabs(value):
        absolute = os.path.normpath(value)
        root_text = str(root)
        if not absolute.startswith(root_text.rstrip("/") + "/"):
            raise InvalidInputError(f"invalid link path {value!r}: it is outside the root {root}")
        value = absolute[len(root_text.rstrip("/")) + 1:]
    return check_link(value)
