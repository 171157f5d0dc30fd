"""Locks: a per-model lock for manifest edits and the store-wide gc barrier, both kernel flocks
with a bounded wait. Readers never lock.

They are plain ``fcntl.flock`` calls rather than the filelock package: that package costs about
20 ms to import (measured: 20.2 ms of a 37 ms start-up), which every writing command would pay,
and the flock it takes on Unix is this same lock, so nothing else is gained by it.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

from . import defaults
from .errors import LockTimeoutError, StoreError

DEFAULT_LOCK_TIMEOUT = defaults.LOCK_TIMEOUT


def lock_timeout_from_env(value: float | None = None) -> float:
    """The explicit value, else ``$GAIA_CAS_LOCK_TIMEOUT``, else 30 s."""
    from .errors import InvalidInputError

    where = "--lock-timeout"
    if value is None:
        raw = os.environ.get("GAIA_CAS_LOCK_TIMEOUT")
        if raw is None or raw == "":
            return DEFAULT_LOCK_TIMEOUT
        where = "GAIA_CAS_LOCK_TIMEOUT"
        try:
            value = float(raw)
        except ValueError:
            raise InvalidInputError(f"GAIA_CAS_LOCK_TIMEOUT must be a number of seconds, not {raw!r}") from None
    if not value >= 0:  # also rejects NaN
        raise InvalidInputError(f"{where} must be 0 or more seconds, not {value!r}")
    return value


@contextmanager
def hold_lock(path: Path, timeout: float):
    """Hold the model's exclusive lock on ``path`` for the body; the kernel drops it if the
    process dies, so a crashed writer never leaves a stale lock behind."""
    with hold_flock(path, timeout, shared=False, holder="another gaia-cas process is changing this model"):
        yield


@contextmanager
def hold_flock(path: Path, timeout: float, *, shared: bool, holder: str):
    """A kernel flock on ``path`` (created if needed): shared or exclusive, bounded wait.

    The model lock is one, exclusive. The store-wide gc barrier is built of two (see
    :func:`store_barrier`): every writer holds it shared from the moment it installs objects
    until its manifest is committed; gc holds it exclusive while it marks and sweeps. So gc
    never sees an object that is installed but not yet referenced, and writers never lose an
    object to a sweep in progress. Released by the kernel if the holder dies.
    """
    import fcntl
    import time

    from .atomic import open_regular

    try:
        # Never through a symlink (a planted manifests/m.lock -> /etc/x would create files
        # outside the root), never blocking on a FIFO planted in its place.
        fd = open_regular(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StoreError(f"cannot open the lock file {path}: {exc.strerror or exc}") from exc
    try:
        mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        deadline = time.monotonic() + timeout
        delay = 0.005
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockTimeoutError(str(path), timeout, holder) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.1)
            except OSError as exc:  # e.g. ENOLCK: a filesystem without locks
                raise StoreError(f"cannot lock {path}: {exc.strerror or exc}") from exc
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def try_flock_dir(path: Path) -> int | None:
    """Lock a directory exclusively without waiting; returns the fd, or None if someone holds it."""
    import fcntl

    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def make_locked_dir(parent: str | os.PathLike, prefix: str) -> tuple[str, int]:
    """A new private folder in ``parent`` (store/tmp), already flocked: (path, fd).

    gc removes unlocked folders of store/tmp, so between ``mkdir`` and the lock a gc with no
    grace period can take the new folder: gone before the lock (the open fails), locked by gc
    (busy), or removed while our lock waited (we then hold a deleted folder). Each case is
    detected -- the path must still name the very folder we locked -- and a fresh folder made.
    """
    from .atomic import tmp_name

    if os.path.islink(parent):  # staging through a symlink: gc would sweep someone else's disk
        raise StoreError(f"{parent} is a symlink (to {os.readlink(parent)}); gaia-cas never follows a symlink "
                         "under store/: make it a real folder again (to use another disk, put the whole root on it)")
    for _ in range(100):
        path = os.path.join(parent, tmp_name(prefix))
        os.mkdir(path)
        try:
            fd = try_flock_dir(path)
        except FileNotFoundError:
            continue
        if fd is None:
            continue
        try:
            here, held = os.stat(path), os.fstat(fd)
            if (here.st_dev, here.st_ino) == (held.st_dev, held.st_ino):
                return path, fd
        except FileNotFoundError:
            pass
        os.close(fd)
    raise StoreError(f"cannot keep a working folder in {parent}: something keeps removing them")


@contextmanager
def store_barrier(store: Path, timeout: float, *, exclusive: bool):
    """The store-wide barrier between writers (shared) and gc (exclusive).

    flock gives a waiting exclusive lock no priority over new shared holders, so a steady
    stream of deploys could starve gc. A turnstile fixes that: everyone passes ``gc.intent``
    first; gc holds it for its whole run, so new writers queue behind gc while the writers
    already inside finish.
    """
    from contextlib import ExitStack

    with ExitStack() as stack:
        if exclusive:
            stack.enter_context(hold_flock(store / "gc.intent", timeout, shared=False,
                                           holder="another gc is running"))
            stack.enter_context(hold_flock(store / "gc.lock", timeout, shared=False,
                                           holder="a deploy or another writer is committing"))
        else:
            with hold_flock(store / "gc.intent", timeout, shared=True, holder="gc is sweeping the store"):
                stack.enter_context(hold_flock(store / "gc.lock", timeout, shared=True,
                                               holder="gc is sweeping the store"))
        yield
