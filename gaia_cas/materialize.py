"""Materialized trees: a read-only checkout of a version under ``store/trees/<tree-oid>/``.

Built from hard links to the objects (a copy only where the filesystem refuses a link), first
under ``store/tmp`` and then renamed into place, so a tree that exists is complete. Directories
are made read-only once filled. Materialized trees are derived data: gc may remove them and
:func:`materialize` rebuilds them from the objects on demand.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from .atomic import fsync_dir, remove_tree, tmp_name  # noqa: F401  (remove_tree: used here and by gc)
from .errors import CorruptionError
from .layout import Layout
from .locking import make_locked_dir
from .objects import READ_ONLY, ObjectStore
from .trees import DIR, TreeReader

DIR_READ_ONLY = 0o555
_COPY_INSTEAD = (errno.EXDEV, errno.EMLINK, errno.EPERM, errno.ENOTSUP)


def materialize(layout: Layout, store: ObjectStore, tree_oid: str) -> Path:
    return build(layout, store, tree_oid)[0]


def build(layout: Layout, store: ObjectStore, tree_oid: str) -> tuple[Path, os.stat_result | None]:
    """Materialize the tree; also return, if this call created it, its stat as it was just
    before it was published (None if it was there already or another process made it first).

    The mtime in that stat is set just before the rename, one nanosecond before the tree's last
    change: publishing is a rename, which keeps it, and any other writer that takes the tree up
    afterwards (materialize() touches it) sets a later one, however coarse the clock. A failed
    deploy takes back only a tree whose mtime is still this one.
    """
    final = layout.tree_path(tree_oid)
    if final.is_dir():
        _touch(final)
        return final, None
    layout.trees.mkdir(parents=True, exist_ok=True)
    layout.tmp.mkdir(parents=True, exist_ok=True)
    path, liveness = make_locked_dir(layout.tmp, "tree-" + tree_oid)  # gc leaves it alone while locked
    build_dir = Path(path)
    try:
        _checkout(TreeReader(store), store, tree_oid, build_dir)
        # An mtime no later touch can give it, even within the same clock tick (the kernel's
        # file times are coarse): one nanosecond before its own.
        st = os.lstat(build_dir)
        os.utime(build_dir, ns=(st.st_atime_ns, st.st_mtime_ns - 1))
        made = os.lstat(build_dir)
        os.rename(build_dir, final)
        # Only now: moving a directory to another parent needs write access to it (for '..').
        os.chmod(final, DIR_READ_ONLY)
    except OSError as exc:
        remove_tree(build_dir)
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST) and final.is_dir():
            _touch(final)  # another process materialized the same tree first: use theirs
            return final, None
        raise
    except BaseException:
        remove_tree(build_dir)
        raise
    finally:
        os.close(liveness)
    fsync_dir(layout.trees)
    return final, made


def _checkout(reader: TreeReader, store: ObjectStore, oid: str, dest: Path) -> None:
    folders = [dest]
    for path, entry in reader.walk(oid):  # parents first: a folder exists before its entries
        target = dest / path
        if entry.kind == DIR:
            os.mkdir(target)
            folders.append(target)
            continue
        source = store.path(entry.oid)
        try:
            os.link(source, target)
        except FileNotFoundError:
            raise CorruptionError(f"object {entry.oid} ({entry.name}) is missing from the store") from None
        except OSError as exc:
            if exc.errno not in _COPY_INSTEAD:
                raise
            import shutil

            shutil.copyfile(source, target)
            os.chmod(target, READ_ONLY)
    # Durable before the rename publishes it: after a crash a published tree is complete.
    # Deepest first, so each folder is made read-only only once everything below it is written.
    for folder in reversed(folders):
        fsync_dir(folder)
        if folder is not dest:
            os.chmod(folder, DIR_READ_ONLY)


def _touch(path: Path) -> None:
    """Refresh the tree's mtime so a concurrent gc's grace period covers it."""
    try:
        os.utime(path)
    except OSError:
        pass


def retire_tree(layout: Layout, path: Path) -> None:
    """Remove a published tree without ever leaving a partial one under ``store/trees``.

    Anything under store/trees is trusted to be complete, so the tree is first renamed into
    store/tmp (one atomic step) and only deleted there; a crash in between leaves a whole tree
    or a temp entry that gc sweeps, never half a tree.
    """
    if not os.path.lexists(path):
        return
    layout.tmp.mkdir(parents=True, exist_ok=True)
    doomed = layout.tmp / tmp_name("retired-" + path.name)
    if stat.S_ISDIR(os.lstat(path).st_mode):
        os.chmod(path, 0o755)  # moving a folder to another parent needs write access to it
    os.rename(path, doomed)
    remove_tree(doomed)


def links_objects(tree_dir: Path) -> bool:
    """Whether a materialized tree is made of hard links (the normal case), judged by its first
    file: then it costs no space of its own and need not be walked file by file. A tree built
    where links are impossible is made of copies, and is walked."""
    for dirpath, _, files in os.walk(tree_dir, followlinks=False):
        for name in files:
            try:
                return os.lstat(os.path.join(dirpath, name)).st_nlink > 1
            except FileNotFoundError:
                continue
    return True  # no file at all: nothing of its own either
