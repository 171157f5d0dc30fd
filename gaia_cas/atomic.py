"""The one place where gaia-cas makes a change durable and atomic.

Every writer goes through these helpers so the write protocol (DESIGN.md) lives in one spot:
write to a temporary name in the destination's own directory, fsync, rename over the final
name, fsync the directory. A reader therefore sees the old bytes or the new bytes, never a mix,
and after a crash the rename has either happened or not.
"""

from __future__ import annotations

import os
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


_libc_calls: dict[str, object] = {}


def _libc(name: str):
    """A libc function by name, or None where it does not exist (non-Linux, no ctypes)."""
    if name not in _libc_calls:
        try:
            import ctypes

            _libc_calls[name] = getattr(ctypes.CDLL(None, use_errno=True), name)
        except (OSError, AttributeError, ImportError):
            _libc_calls[name] = None
    return _libc_calls[name]


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
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
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


def replace_symlink(link: str | os.PathLike, target: str) -> None:
    """Point ``link`` at ``target`` atomically: a reader never finds the link missing.

    Removing the old link and creating the new one leaves a window in which the name does not
    exist; with readers looping that showed up as hundreds of thousands of 'not found' errors
    in 20,000 swaps. Creating the new link under a temporary name and renaming it over the old
    one has no such window.
    """
    link = Path(link)
    tmp = link.parent / tmp_name(link.name)
    os.symlink(target, tmp)
    try:
        os.replace(tmp, link)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    fsync_dir(link.parent)


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
