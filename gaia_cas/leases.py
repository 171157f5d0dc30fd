"""Leases: a version a live process serves is a gc root for as long as that process lives.

    <root>/store/leases/<random>     one file per holder, flocked by it for its whole life:
                                     "model=…", "version=…", "tree=<tree-oid>", "pid=…"

Like a deploy's staging folder (a pending root, Nix's temp roots), a lease needs no clock and no
heartbeat: the kernel drops the flock when its holder exits or is killed, so gc can tell a live
lease (flock held: its tree, every object the tree reaches and its materialized folder stay,
whatever their age) from a dead one (flock free: ignored, and removed).

Why the holder is never left unprotected (docs/design.md, leases):

- The file is flocked before it has its final name (the temporary file is locked, written,
  fsynced, then renamed), so gc never finds a lease of a live holder unlocked. A temporary gc
  removes first only makes the rename fail, and the holder tries again under a new name.
- gc reads the leases and sweeps under the store barrier held exclusively. After creating its
  lease, the holder passes the barrier (shared) and only then checks that the version's files
  are all there: a gc that began before the lease existed has finished by then, and every later
  gc sees the lease. If the check fails, the version was collected before it was leased and
  the holder looks again at what the manifest says now.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from .errors import StoreError
from .layout import Layout
from .names import is_oid

LEASES = "leases"
_MAGIC = "gaia-cas lease 1"
_MAX_LEASE_BYTES = 4096
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def leases_dir(layout: Layout) -> Path:
    return layout.store / LEASES


@dataclass(frozen=True)
class LeaseInfo:
    """What a lease file names."""

    model: str
    version: str
    tree: str
    pid: int | None


class Lease:
    """One held lease. :meth:`release` (or the holder's death) ends it."""

    def __init__(self, layout: Layout, name: str, fd: int, info: LeaseInfo):
        self.layout = layout
        self.name = name
        self.info = info
        self._fd: int | None = fd

    @property
    def path(self) -> Path:
        return leases_dir(self.layout) / self.name

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Remove the lease file, then drop the flock (in that order: gc never sees it free)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            folder = os.open(leases_dir(self.layout), _DIR_FLAGS)
        except OSError:
            folder = None
        try:
            if folder is not None:
                try:
                    here = os.stat(self.name, dir_fd=folder, follow_symlinks=False)
                    mine = os.fstat(fd)
                    if (here.st_dev, here.st_ino) == (mine.st_dev, mine.st_ino):
                        os.unlink(self.name, dir_fd=folder)
                except OSError:
                    pass  # already gone, or the folder is unwritable: a dead lease gc removes
        finally:
            if folder is not None:
                os.close(folder)
            os.close(fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()

    def __del__(self):  # a forgotten lease ends with its object, not only with its process
        try:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
        except Exception:
            pass

    def __repr__(self) -> str:
        state = "held" if self.held else "released"
        return f"<Lease {self.info.model} {self.info.version} tree={self.info.tree} {state}>"


def _encode(info: LeaseInfo) -> bytes:
    lines = [_MAGIC, f"model={info.model}", f"version={info.version}", f"tree={info.tree}", f"pid={info.pid}"]
    return ("\n".join(lines) + "\n").encode("utf-8")


def _decode(data: bytes) -> LeaseInfo | None:
    """What a lease names, or None if it is not a complete lease gaia-cas wrote."""
    try:
        lines = data.decode("utf-8").split("\n")
    except UnicodeDecodeError:
        return None
    if not lines or lines[0] != _MAGIC:
        return None
    fields = dict(line.partition("=")[::2] for line in lines[1:] if "=" in line)
    tree = fields.get("tree", "")
    if not is_oid(tree):
        return None
    pid = fields.get("pid", "")
    return LeaseInfo(fields.get("model", ""), fields.get("version", ""), tree,
                     int(pid) if pid.isdigit() else None)


def _check_folder(layout: Layout) -> Path:
    folder = leases_dir(layout)
    if os.path.islink(folder):
        raise StoreError(f"{folder} is a symlink (to {os.readlink(folder)}); gaia-cas never follows a symlink "
                         "under store/: make it a real folder again")
    return folder


def acquire(layout: Layout, model: str, version: str, tree: str) -> Lease:
    """A new lease on ``tree``, flocked from before it is visible under its final name.

    The caller must then check, after passing the store barrier, that the tree is complete (see
    the module docstring); :func:`gaia_cas.handle.lease_version` does both.
    """
    import fcntl

    from .atomic import atomic_file, make_dirs, open_regular, tmp_name, write_all

    info = LeaseInfo(model, version, tree, os.getpid())
    folder = _check_folder(layout)
    make_dirs(folder)
    for _ in range(100):
        name = tmp_name("lease").lstrip(".").replace(".tmp-", "-")
        fd = None
        try:
            with atomic_file(folder / name) as tmp:
                fd = open_regular(tmp, os.O_RDWR)
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # new and ours: never busy
                write_all(fd, _encode(info))
        except (FileNotFoundError, BlockingIOError):
            # A gc took the temporary before it was locked (it looked dead), or holds its lock
            # to remove it: try a new name.
            if fd is not None:
                os.close(fd)
            continue
        except BaseException:
            if fd is not None:
                os.close(fd)
            raise
        try:
            here = os.stat(folder / name, follow_symlinks=False)
            held = os.fstat(fd)
        except FileNotFoundError:
            os.close(fd)
            continue
        if (here.st_dev, here.st_ino) == (held.st_dev, held.st_ino):
            return Lease(layout, name, fd, info)
        os.close(fd)
    raise StoreError(f"cannot keep a lease in {folder}: something keeps removing them")


def scan(layout: Layout) -> tuple[list[LeaseInfo], list[Path], list[str]]:
    """For gc: (what live leases hold, dead lease files, names ignored).

    A lease whose flock is held is live whatever its age; one whose flock is free belongs to a
    holder that is gone. A locked file that does not read as a lease (a holder between creating
    its temporary and writing it, or anything else) names nothing and is left alone.
    """
    import fcntl

    from .atomic import UnsafeFileError, open_regular

    folder = leases_dir(layout)
    try:
        dir_fd = os.open(folder, _DIR_FLAGS)
    except FileNotFoundError:
        return [], [], []
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            from .errors import GcRefusedError

            raise GcRefusedError(f"gc deleted nothing: {folder} is not a plain folder (a symlink?); gaia-cas "
                                 "never follows a symlink under store/ and cannot tell which versions are "
                                 "leased: make it a real folder again") from None
        raise
    live: list[LeaseInfo] = []
    dead: list[Path] = []
    ignored: list[str] = []
    try:
        for name in sorted(os.listdir(dir_fd)):
            try:
                fd = open_regular(name, dir_fd=dir_fd)
            except FileNotFoundError:
                continue  # released meanwhile
            except (UnsafeFileError, OSError):
                ignored.append(f"{LEASES}/{name}")
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    info = _decode(os.read(fd, _MAX_LEASE_BYTES))
                    if info is None:
                        ignored.append(f"{LEASES}/{name}")
                    else:
                        live.append(info)
                    continue
                dead.append(folder / name)
            finally:
                os.close(fd)
    finally:
        os.close(dir_fd)
    return live, dead, ignored


def remove_dead(layout: Layout, path: Path) -> bool:
    """Delete a lease gc found dead, checking again under its flock that its holder is gone."""
    import fcntl

    from .atomic import open_regular

    try:
        dir_fd = os.open(leases_dir(layout), _DIR_FLAGS)
    except OSError:
        return False
    try:
        try:
            fd = open_regular(path.name, dir_fd=dir_fd)
        except OSError:
            return False
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # a live holder after all
            st = os.fstat(fd)
            try:
                here = os.stat(path.name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                return False
            if not stat.S_ISREG(here.st_mode) or (here.st_dev, here.st_ino) != (st.st_dev, st.st_ino):
                return False
            os.unlink(path.name, dir_fd=dir_fd)
            try:
                os.fsync(dir_fd)
            except OSError:
                pass
            return True
        finally:
            os.close(fd)
    finally:
        os.close(dir_fd)


class LeaseLostError(StoreError):
    """The version was collected before its lease was in place: look at the manifest again."""


def hold_version(repo, model: str, version: str, tree: str) -> Lease:
    """A lease on ``tree``, with the version's files checked complete once the lease protects them.

    ``repo`` is a :class:`gaia_cas.context.Context` (or a Repository, which has the same steps). Passing its store barrier (shared) waits
    for any gc that may have read the leases before this one existed; from then on no gc takes
    the tree, so what the check finds stays. A missing materialized folder (derived data) is
    rebuilt; missing objects raise :class:`LeaseLostError` (the lease is released).
    """
    lease = acquire(repo.layout, model, version, tree)
    try:
        with repo.writing():
            from .errors import CorruptionError

            try:
                repo.check_complete(tree)
            except CorruptionError as exc:
                raise LeaseLostError(f"version {version} of '{model}' was collected before it was leased "
                                     f"({exc})") from None
            if not repo.layout.tree_path(tree).is_dir():
                repo.materialize(tree)
    except BaseException:
        lease.release()
        raise
    return lease
