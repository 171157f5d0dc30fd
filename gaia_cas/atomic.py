"""The one place where gaia-cas makes a change durable and atomic.

Every writer goes through these helpers so the write protocol (docs/design.md, Write order) lives in one spot:
write to a temporary name in the destination's own directory, fsync, rename over the final
name, fsync the directory. A reader therefore sees the old bytes or the new bytes, never a mix,
and after a crash the rename has either happened or not.
"""

from __future__ import annotations

import errno
import os
import stat
from contextlib import contextmanager
from pathlib import Path

TMP_MARK = ".tmp-"  # every temporary name carries this, so gc can recognise leftovers


def tmp_name(final_name: str) -> str:
    return f".{final_name}{TMP_MARK}{os.urandom(6).hex()}"  # os.urandom: `secrets` costs 3 ms of start-up


def fsync_dir(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: str | os.PathLike) -> None:
    """Flush one file's bytes to disk, reached without following a symlink."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(path: str | os.PathLike, mode: int = 0o755) -> None:
    """``mkdir -p`` that makes each new folder durable: its parent is fsynced after the mkdir.

    A folder is an entry in its parent; without that fsync a crash can lose a folder whose
    files were fsynced (and so the files with it).
    """
    path = Path(os.path.abspath(path))
    missing = []
    while not os.path.isdir(path):
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    for folder in reversed(missing):
        try:
            os.mkdir(folder, mode)
        except FileExistsError:
            if not os.path.isdir(folder):
                raise
            continue
        fsync_dir(folder.parent)


class UnsafeFileError(OSError):
    """A file of the store's own is a symlink, a FIFO or anything but a regular file."""


def open_regular(path: str | os.PathLike, flags: int = os.O_RDONLY, mode: int = 0o644, *,
                 dir_fd: int | None = None) -> int:
    """Open one of the store's own files (lock, manifest, cache, log) without ever following a
    symlink or blocking on a FIFO; returns the descriptor of a regular file, else raises
    :class:`UnsafeFileError` (a planted symlink would create or read a file outside the root, a
    FIFO would hang the reader forever)."""
    try:
        flags |= os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        if flags & os.O_CREAT:
            fd = os.open(path, flags, mode, dir_fd=dir_fd)
        else:  # no mode for an existing file (pyfakefs would apply it)
            fd = os.open(path, flags, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeFileError(exc.errno, "it is a symlink, which gaia-cas never follows there", str(path)) from None
        if exc.errno == errno.ENXIO:  # a FIFO opened for writing with no reader
            raise UnsafeFileError(exc.errno, "it is not a regular file", str(path)) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeFileError(errno.EINVAL, "it is not a regular file", str(path))
        os.set_blocking(fd, True)  # a regular file: O_NONBLOCK only guarded the open
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(path: str | os.PathLike, limit: int) -> bytes:
    """The bytes of one of the store's own files (see :func:`open_regular`), at most ``limit``
    + 1 of them (so a caller can tell a file that is too large)."""
    fd = open_regular(path)
    try:
        chunks = []
        left = limit + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


libc_calls: dict[str, object] = {}


def _libc(name: str):
    """A libc function by name, or None where it does not exist (non-Linux, no ctypes)."""
    if name not in libc_calls:
        try:
            import ctypes

            libc_calls[name] = getattr(ctypes.CDLL(None, use_errno=True), name)
        except (OSError, AttributeError, ImportError):
            libc_calls[name] = None
    return libc_calls[name]


def sync_filesystem(path: str | os.PathLike) -> bool:
    """Flush the whole filesystem holding ``path`` (Linux syncfs); False if unavailable.

    For a deploy of thousands of files one syncfs replaces thousands of fsyncs -- what
    ``cp -r && sync`` pays, but limited to our own filesystem. Callers fall back to fsync.
    """
    syncfs = _libc("syncfs")
    if syncfs is None:
        return False
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return syncfs(fd) == 0
    finally:
        os.close(fd)


_SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing a just-written range to disk, without waiting for it.

    Linux sync_file_range(SYNC_FILE_RANGE_WRITE), as git's batch fsync mode uses it: the disk
    then works while the deploy goes on reading and hashing, and the one syncfs at the end
    waits for what is left instead of the whole artifact. It promises no durability by itself
    (that stays the syncfs/fsync's job), so where it does not exist this does nothing.
    """
    call = _libc("sync_file_range")
    if call is not None:
        if call.argtypes is None:
            import ctypes

            call.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
        call(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


def write_all(fd: int, data) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class NotDurableError(OSError):
    """The rename happened (readers see the new file) but the folder could not be fsynced."""


@contextmanager
def atomic_file(path: str | os.PathLike, mode: int = 0o644):
    """Yield a temporary path beside ``path``; on a clean exit, make it durable and rename it over
    ``path`` (then fsync the folder). On an exception the temporary file is removed.

    Raises :class:`NotDurableError` if only the final directory fsync failed: the new content is
    in place, which the caller must not report as "nothing happened".
    """
    path = Path(path)
    tmp = path.parent / tmp_name(path.name)
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode))
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    try:
        fsync_dir(path.parent)
    except OSError as exc:
        raise NotDurableError(exc.errno, exc.strerror, str(path.parent)) from exc


def write_atomic(path: str | os.PathLike, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` so that readers see old or new, never a mix."""
    with atomic_file(path, mode) as tmp:
        fd = os.open(tmp, os.O_WRONLY)
        try:
            write_all(fd, data)
        finally:
            os.close(fd)


def replace_symlink(link: str | os.PathLike, target: str, *, dir_fd: int | None = None) -> None:
    """Point ``link`` at ``target`` atomically: a reader never finds the link missing.

    Removing the old link and creating the new one leaves a window in which the name does not
    exist; with readers looping that showed up as hundreds of thousands of 'not found' errors
    in 20,000 swaps. Creating the new link under a temporary name and renaming it over the old
    one has no such window.

    With ``dir_fd``, ``link`` is a bare name inside that held folder and everything happens
    relative to it: a folder on the way swapped for a symlink after it was opened changes
    nothing (the temporary link, the rename and the fsync all stay in the folder checked).
    """
    if dir_fd is None:
        link = Path(link)
        tmp = link.parent / tmp_name(link.name)
        os.symlink(target, tmp)
        try:
            os.replace(tmp, link)
        except BaseException:
            _unlink_quietly(tmp)
            raise
        fsync_dir(link.parent)
        return
    name = os.fspath(link)
    tmp = tmp_name(name)
    os.symlink(target, tmp, dir_fd=dir_fd)
    try:
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
        raise
    os.fsync(dir_fd)


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def remove_tree(path) -> None:
    """Remove a (possibly read-only) materialized tree, never following symlinks."""
    if not os.path.lexists(path):
        return
    if not stat.S_ISDIR(os.lstat(path).st_mode):
        os.unlink(path)
        return
    for dirpath, dirnames, _ in os.walk(path, followlinks=False):
        os.chmod(dirpath, 0o755)
        for name in dirnames:
            full = os.path.join(dirpath, name)
            if not os.path.islink(full):
                os.chmod(full, 0o755)
    import shutil

    shutil.rmtree(path)
