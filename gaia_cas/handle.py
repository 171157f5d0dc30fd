"""ModelHandle: the loop every inference server writes, written once.

    handle = gaia_cas.ModelHandle("ssd")          # loads the current version, leases it
    handle.start(1.0)                             # or call handle.refresh() yourself
    model, active = handle.get()                  # one consistent pair, whatever a refresh does
    ... predict with model; answer with active.version ...
    handle.close()

- **Cheap when nothing changed**: :meth:`refresh` costs one ``stat`` of the model's manifest.
- **Off to the side**: a new version is leased (a gc root, gaia_cas/leases.py), then loaded while
  the old one keeps serving; only a load that succeeded replaces it, in one reference
  assignment, and the old version's lease is released after the swap.
- **A broken version is never served**: a loader that raises leaves the old version in place and
  records the error in :attr:`last_error`; that version is not tried again until the manifest
  changes again (a fix deployed, a rollback).
"""

from __future__ import annotations

import os
import select
import threading
import time
from typing import Any, Callable

from .errors import GaiaCasError, StoreError
from .layout import find_root
from .manifest_store import file_token
from .reader import Resolved, resolve


class HandleClosedError(GaiaCasError):
    """get() on a handle that was closed."""


class ModelHandle:
    """The version of ``model`` being served on ``channel``, loaded by ``loader(path)``.

    ``loader`` defaults to :func:`gaia_cas.loaders.load` (chosen by the detected format). The
    constructor loads the version the manifest names now, and raises if it cannot.
    """

    def __init__(self, model: str, root: str | os.PathLike | None = None, channel: str = "current",
                 loader: Callable[[os.PathLike], Any] | None = None):
        from .context import Context

        self.root = find_root(root)
        self.channel = channel
        if loader is None:
            from .loaders import load as loader
        self.loader = loader
        self.last_error: BaseException | None = None
        self._ctx = Context(self.root)
        self._refreshing = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._watcher: ManifestWatcher | None = None
        self._watcher_made = threading.Lock()
        first = resolve(model, self.root, channel)
        self.model = first.model  # the name, if an alias was given
        self._manifest = first.manifest_path
        self._state = self._load(first)  # (loaded object, resolved, lease or None)
        self._token = self._state[1].token  # the manifest as last looked at

    # -- serving -------------------------------------------------------------------------

    def get(self) -> tuple[Any, Resolved]:
        """(loaded object, resolved) of the version being served: one pair, read at once."""
        state = self._state
        if state is None:
            raise HandleClosedError(f"the handle of '{self.model}' is closed")
        return state[0], state[1]

    @property
    def leased(self) -> bool:
        """Whether the served version holds a lease (not where the store is not writable)."""
        state = self._state
        return state is not None and state[2] is not None

    def refresh(self) -> bool:
        """Serve the version the manifest names now; True if the served version changed.

        One ``stat`` when the manifest is as last looked at. A version whose load fails is
        left aside (see :attr:`last_error`) until the manifest changes again.
        """
        with self._refreshing:
            if self._state is None:
                return False
            try:
                seen = file_token(os.stat(self._manifest))
            except FileNotFoundError:
                seen = None
            if seen == self._token:
                return False
            try:
                fresh = resolve(self.model, self.root, self.channel)
            except GaiaCasError as exc:  # no such channel any more, marked broken, disk error
                self.last_error = exc
                self._token = seen
                return False
            obj, served, lease = self._state
            self._token = fresh.token
            if fresh.hash == served.hash:  # the same bytes: nothing to load
                self._state = (obj, fresh, lease)
                return fresh.version != served.version
            try:
                state = self._load(fresh)
            except Exception as exc:  # the loader's failure, whatever it is: keep serving the old
                self.last_error = exc
                self._token = fresh.token
                return False
            self._state = state  # the swap: one reference assignment
            self._token = state[1].token
            self.last_error = None
            if lease is not None:
                lease.release()
            return True

    def _load(self, resolved: Resolved) -> tuple[Any, Resolved, Any]:
        from . import leases

        for _ in range(10):
            try:
                lease = leases.hold_version(self._ctx, resolved.model, resolved.version, resolved.hash)
            except leases.LeaseLostError:
                resolved = resolve(self.model, self.root, self.channel)  # collected meanwhile: look again
                continue
            except (PermissionError, StoreError) as exc:
                if not _unwritable(exc):
                    raise
                lease = None  # a store this process cannot write: served under gc's grace only
            try:
                return self.loader(resolved.path), resolved, lease
            except BaseException:
                if lease is not None:
                    lease.release()
                raise
        raise StoreError(f"cannot lease a version of '{self.model}': each one was collected before its lease")

    # -- background refresh and waiting ---------------------------------------------------

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the model's manifest changes (True) or ``timeout`` seconds pass (False).

        inotify on the manifests folder where available (Linux), a 50 ms stat loop otherwise;
        with inotify the manifest is still looked at every second, so a missed event costs at
        most that. It does not refresh: call :meth:`refresh` (or let :meth:`start` do it).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        watcher = self._watch()
        while True:
            try:
                now = file_token(os.stat(self._manifest))
            except FileNotFoundError:
                now = None
            if now != self._token:
                return True
            if self._stop.is_set():
                return False
            left = 1.0 if deadline is None else deadline - time.monotonic()
            if left <= 0:
                return False
            if watcher is not None:
                watcher.wait(min(left, 1.0))
            else:
                self._stop.wait(min(left, 0.05))

    def _watch(self) -> "ManifestWatcher | None":
        with self._watcher_made:  # one inotify descriptor, whichever thread waits first
            if self._watcher is None:
                self._watcher = ManifestWatcher.open(self._manifest.parent)
        return self._watcher if self._watcher.fd is not None else None

    def start(self, interval: float = 1.0) -> "ModelHandle":
        """Refresh in a background thread: on every change seen by :meth:`wait`, and at least
        every ``interval`` seconds."""
        if self._thread is not None:
            return self
        self._stop.clear()

        def loop() -> None:
            while not self._stop.is_set():
                self.wait(interval)
                if self._stop.is_set():
                    break
                try:
                    self.refresh()
                except Exception as exc:  # never let the thread die: the old version keeps serving
                    self.last_error = exc
                    self._stop.wait(interval)

        self._thread = threading.Thread(target=loop, name=f"gaia-cas refresh {self.model}", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop the background refresh and release the served version's lease."""
        self._stop.set()
        if self._watcher is not None:
            self._watcher.wake()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10)
        with self._refreshing:
            state, self._state = self._state, None
            if state is not None and state[2] is not None:
                state[2].release()
        if self._watcher is not None:
            self._watcher.close()

    def __enter__(self) -> "ModelHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = self._state
        served = f"{state[1].version} ({state[1].hash[:12]})" if state else "closed"
        return f"<ModelHandle {self.model} {self.channel}: {served}>"


def _unwritable(exc: OSError) -> bool:
    import errno

    cause = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc
    return isinstance(exc, PermissionError) or cause.errno in (errno.EACCES, errno.EPERM, errno.EROFS)


class ManifestWatcher:
    """inotify on one folder through ctypes (no dependency), with a pipe to wake a waiter."""

    _IN_NONBLOCK = 0o4000
    _IN_CLOEXEC = 0o2000000
    _MASK = 0x40 | 0x80 | 0x100 | 0x200 | 0x400 | 0x800  # moved from/to, create, delete, delete/move self

    def __init__(self, fd: int | None):
        self.fd = fd
        self._wake_r, self._wake_w = os.pipe() if fd is not None else (None, None)

    @classmethod
    def open(cls, folder) -> "ManifestWatcher":
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            fd = libc.inotify_init1(cls._IN_NONBLOCK | cls._IN_CLOEXEC)
            if fd < 0:
                return cls(None)
            if libc.inotify_add_watch(fd, os.fsencode(folder), cls._MASK) < 0:
                os.close(fd)
                return cls(None)
        except (OSError, AttributeError, ImportError):
            return cls(None)
        return cls(fd)

    def wait(self, timeout: float) -> None:
        fd = self.fd
        if fd is None:
            return
        try:
            ready, _, _ = select.select([fd, self._wake_r], [], [], timeout)
        except (OSError, ValueError):  # closed meanwhile
            return
        if fd in ready:
            try:
                while os.read(fd, 65536):
                    pass
            except (BlockingIOError, OSError):
                pass

    def wake(self) -> None:
        if self._wake_w is not None:
            try:
                os.write(self._wake_w, b"x")
            except OSError:
                pass

    def close(self) -> None:
        for name in ("fd", "_wake_r", "_wake_w"):
            fd = getattr(self, name)
            setattr(self, name, None)
            if fd is not None:
                os.close(fd)
