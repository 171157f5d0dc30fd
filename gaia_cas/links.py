"""The ``current`` links: symlinks regenerated from the manifest, swapped atomically.

A directory artifact's link points at its materialized tree; a file artifact's link points at
the file inside it, so a loader opening ``current`` finds ``model_catboost_best.joblib`` by its
real name. Targets are relative, so a root can be moved or mounted elsewhere as a whole.

A link's folders may belong to someone else (``api/`` owned by the API's user), who can swap
one of them for a symlink at any moment. So a link is never reached by its path: its parent is
opened folder by folder from the root's descriptor with ``O_NOFOLLOW | O_DIRECTORY``, and the
check, the temporary link, the rename and the fsync all happen relative to that one held
folder. No folder on the way may be a symlink: one leading out of the root would let a swap
write outside it, and one inside would let a link land in ``store/``, ``manifests/``, ``logs/``
or through another link into a read-only tree.
"""

from __future__ import annotations

import errno
import os
import stat
from contextlib import contextmanager
from pathlib import Path

from . import defaults
from .atomic import replace_symlink
from .errors import InvalidInputError
from .layout import Layout

_DIR_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC


def model_links(layout: Layout, manifest) -> dict[str, str]:
    """Every link a model owns: 'current' and each channel -> its path relative to the root."""
    result = {"current": manifest.config.link or layout.default_link(manifest.model)}
    for name, channel in sorted(manifest.channels.items()):
        result[name] = channel["link"] or defaults.LINK.format(model=manifest.model, channel=name)
    return result


def inside_root(layout: Layout, path: Path) -> bool:
    """Whether ``path``, with every symlink on the way resolved, is the root or inside it."""
    real, real_root = os.path.realpath(path), os.path.realpath(layout.root)
    return real == real_root or real.startswith(real_root + os.sep)


def _refusal(layout: Layout, relative: str, folder: str) -> InvalidInputError:
    path = layout.root / folder
    if os.path.islink(path):
        if not inside_root(layout, path):
            return InvalidInputError(f"link path {relative!r} leads outside the root (through the symlink {folder})")
        return InvalidInputError(
            f"link path {relative!r} goes through the symlink {folder} (to {os.path.realpath(path)}); gaia-cas "
            "follows no symlink on a link's way, so a link cannot land in store/, manifests/, logs/ or "
            "another link: give the real path")
    return InvalidInputError(f"link path {relative!r} goes through {folder}, which is not a folder")


def open_parent(layout: Layout, relative: str, *, create: bool) -> tuple[int | None, Path]:
    """Open the link's parent folder by descriptor: (fd, the link's path), fd None if a folder
    is missing and ``create`` is false. The caller closes the fd.

    Walks from the root component by component, never following a symlink; with ``create``,
    missing folders are made (each fsynced in its parent, so a crash cannot lose the folder
    holding a link the manifest relies on).
    """
    link = layout.link_path(relative)  # validates the text first
    parts = str(relative).split("/")[:-1]
    fd = os.open(layout.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for i, part in enumerate(parts):
            child = None
            for _ in range(5):  # a folder removed again between our mkdir and open: retry
                try:
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                    break
                except FileNotFoundError:
                    if not create:
                        os.close(fd)
                        return None, link
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise _refusal(layout, relative, "/".join(parts[:i + 1])) from None
                    raise
                try:
                    os.mkdir(part, 0o755, dir_fd=fd)
                except FileExistsError:
                    pass
                else:
                    os.fsync(fd)
            if child is None:
                raise InvalidInputError(f"link path {relative!r}: the folder {'/'.join(parts[:i + 1])} "
                                        "keeps disappearing; something else is changing it")
            os.close(fd)
            fd = child
        return fd, link
    except BaseException:
        os.close(fd)
        raise


def _check_name(fd: int, link: Path) -> None:
    try:
        st = os.stat(link.name, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISLNK(st.st_mode):
        raise InvalidInputError(
            f"{link} exists and is not a symlink; move it away so gaia-cas can manage the link there"
        )


def check_location(layout: Layout, relative: str) -> Path:
    """Validate a link location without creating anything; returns the link's path."""
    try:
        fd, link = open_parent(layout, relative, create=False)
    except OSError as exc:  # e.g. a folder on the way this user cannot enter
        raise InvalidInputError(f"link path {relative!r} cannot be checked: {exc.strerror or exc}") from None
    if fd is not None:
        try:
            _check_name(fd, link)
        finally:
            os.close(fd)
    return link


def point_link(layout: Layout, relative: str, target: Path) -> bool:
    """Make the link at ``relative`` point at ``target``. Returns whether it changed."""
    fd, link = open_parent(layout, relative, create=True)
    try:
        _check_name(fd, link)
        # No folder on the way is a symlink, so the link's real folder is the one its path names
        # and the relative target text is right for the folder actually held.
        wanted = os.path.relpath(target, link.parent)
        try:
            if os.readlink(link.name, dir_fd=fd) == wanted:
                return False
        except OSError:
            pass
        replace_symlink(link.name, wanted, dir_fd=fd)
        return True
    finally:
        os.close(fd)


@contextmanager
def _existing_parent(layout: Layout, relative: str, *, unreachable=(InvalidInputError, OSError)):
    """The link's folder held by descriptor, and the link's path; ``(None, None)`` when that folder
    does not exist or is reachable only through a symlink (which gaia-cas never follows)."""
    try:
        fd, link = open_parent(layout, relative, create=False)
    except unreachable:
        fd, link = None, None
    if fd is None:
        yield None, None
        return
    try:
        yield fd, link
    finally:
        os.close(fd)


def drop_link(layout: Layout, relative: str) -> bool:
    """Remove a link gaia-cas made: one inside the root that points into its store.

    A symlink already at the location before the model existed (a legacy ``current`` that
    servers still follow) is left alone until a version replaces it.
    """
    # reached only through a symlink: not a link gaia-cas could have made
    with _existing_parent(layout, relative, unreachable=InvalidInputError) as (fd, link):
        if fd is None:
            return False
        try:
            text = os.readlink(link.name, dir_fd=fd)
        except OSError:
            return False
        target = os.path.normpath(os.path.join(link.parent, text))
        store = os.path.normpath(layout.trees)
        if not (target == store or target.startswith(store + os.sep)):
            return False
        os.unlink(link.name, dir_fd=fd)
        os.fsync(fd)
        return True


def read_link(layout: Layout, relative: str) -> Path | None:
    """Where the link points now (absolute, not resolved further), or None if absent (or only
    reachable through a symlink, which gaia-cas never follows)."""
    with _existing_parent(layout, relative) as (fd, link):
        if fd is None:
            return None
        try:
            return Path(os.path.normpath(link.parent / os.readlink(link.name, dir_fd=fd)))
        except OSError:
            return None


def stale_link_temps(layout: Layout, relative: str) -> list[tuple[Path, float]]:
    """Temporary links an interrupted swap left beside the link: (path, mtime) of each."""
    from .atomic import TMP_MARK

    with _existing_parent(layout, relative) as (fd, link):
        if fd is None:
            return []
        found = []
        prefix = f".{link.name}{TMP_MARK}"
        for name in sorted(os.listdir(fd)):
            if name.startswith(prefix):
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    found.append((link.parent / name, st.st_mtime))
        return found


def remove_link_temp(layout: Layout, path: Path) -> bool:
    """Remove a stale temporary link found by :func:`stale_link_temps`, reached by descriptor
    again (its folder may have been swapped since); False if it is no longer there."""
    with _existing_parent(layout, os.path.relpath(path, layout.root)) as (fd, _):
        if fd is None:
            return False
        try:
            st = os.stat(path.name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if not stat.S_ISLNK(st.st_mode):
            return False
        os.unlink(path.name, dir_fd=fd)
        os.fsync(fd)
        return True
