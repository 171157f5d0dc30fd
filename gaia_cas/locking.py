"""The one lock helper: a per-model file lock with a bounded wait.

filelock costs ~20-40 ms to import, so it is imported here, on first use, and only commands
that change a manifest ever get here; readers never lock.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

from .errors import LockTimeoutError, StoreError

DEFAULT_LOCK_TIMEOUT = 30.0


def lock_timeout_from_env(value: float | None = None) -> float:
    """The explicit value, else ``$GAIA_CAS_LOCK_TIMEOUT``, else 30 s."""
    from .errors import InvalidInputError

    if value is None:
        raw = os.environ.get("GAIA_CAS_LOCK_TIMEOUT")
        if raw is None or raw == "":
            return DEFAULT_LOCK_TIMEOUT
        try:
            value = float(raw)
        except ValueError:
            raise InvalidInputError(f"GAIA_CAS_LOCK_TIMEOUT must be a number of seconds, not {raw!r}") from None
    if not value >= 0:  # also rejects NaN
        raise InvalidInputError(f"the lock timeout must be 0 or more seconds, not {value!r}")
    return value


@contextmanager
def hold_lock(path: Path, timeout: float):
    """Hold the flock on ``path`` for the body; the kernel drops it if the process dies."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(path), timeout=timeout)
    try:
        lock.acquire()
    except Timeout:
        raise LockTimeoutError(str(path), timeout) from None
    except OSError as exc:
        raise StoreError(f"cannot create the lock file {path}: {exc.strerror or exc}") from exc
    try:
        yield
    finally:
        lock.release()
