"""The content-addressed object store: immutable files named by their xxh3-128 oid.

Objects are written once, under ``store/objects/<oid[:2]>/<oid[2:]>``, and made read-only.
New content always arrives through a :class:`Staging` area in ``store/tmp``: files are streamed
there (read, hashed and written in one pass, through one reused buffer), and only once the
whole artifact has been read are the staged files linked to their final names. A failure while
reading the source therefore discards the staging folder and leaves the store as it was.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import xxhash

from .atomic import fsync_dir, tmp_name, write_all
from .errors import CorruptionError, SourceError, StoreError
from .layout import Layout
from .locking import try_flock_dir

CHUNK = 1 << 20  # 1 MiB: large enough for ~6 GiB/s hashing, small enough to bound memory
READ_ONLY = 0o444


def new_hasher():
    return xxhash.xxh3_128()


def hash_bytes(data: bytes) -> str:
    return xxhash.xxh3_128_hexdigest(data)


def _read_source(src, buffer: bytearray, label) -> int:
    """Read from the artifact being deployed; its failures are the source's, not the store's."""
    try:
        return src.readinto(buffer)
    except OSError as exc:
        raise SourceError(f"cannot read {label}: {exc.strerror or exc}") from None


def hash_stream(src, buffer: bytearray | None = None) -> tuple[str, int]:
    """Hash an open binary file without storing it (dry runs, verification)."""
    buffer = buffer or bytearray(CHUNK)
    view = memoryview(buffer)
    hasher = new_hasher()
    size = 0
    while n := src.readinto(buffer):
        hasher.update(view[:n])
        size += n
    return hasher.hexdigest(), size


def hash_file(path: str | os.PathLike, buffer: bytearray | None = None) -> tuple[str, int]:
    with open(path, "rb", buffering=0) as src:
        return hash_stream(src, buffer)


class ObjectStore:
    def __init__(self, layout: Layout):
        self.layout = layout

    def path(self, oid: str) -> Path:
        return self.layout.object_path(oid)

    def exists(self, oid: str) -> bool:
        return self.path(oid).is_file()

    def read(self, oid: str, limit: int) -> bytes:
        """Read a small object (a tree) whole, refusing one larger than ``limit``."""
        path = self.path(oid)
        try:
            with open(path, "rb") as f:
                data = f.read(limit + 1)
        except FileNotFoundError:
            raise CorruptionError(f"object {oid} is missing from the store") from None
        if len(data) > limit:
            raise CorruptionError(f"object {oid} is larger than {limit} bytes; it cannot be a tree")
        return data

    def staging(self) -> "Staging":
        return Staging(self)


class Staging:
    """Collects new objects in a private folder of ``store/tmp``, then installs them together.

    Usage::

        with store.staging() as stage:
            oid, size = stage.add_stream(open(path, 'rb'))
            ...
            stage.install()      # the only step that touches store/objects

    Leaving the block without :meth:`install` removes everything staged.
    """

    def __init__(self, store: ObjectStore):
        self.store = store
        self.layout = store.layout
        self.dir: Path | None = None
        self._staged: dict[str, Path] = {}
        self._buffer = bytearray(CHUNK)
        self._counter = 0
        self._liveness: int | None = None
        self.new_bytes = 0  # bytes of objects the store did not have, counted by install()
        self._reused: dict[str, str | bytes] = {}  # oid -> source path, or a tree's bytes

    def __enter__(self) -> "Staging":
        self.layout.tmp.mkdir(parents=True, exist_ok=True)
        self.dir = self.layout.tmp / tmp_name("stage")
        os.mkdir(self.dir)
        # Held while this process lives: gc never removes a staging folder someone still holds,
        # however long a big deploy takes.
        self._liveness = try_flock_dir(self.dir)
        return self

    def __exit__(self, *exc) -> None:
        self.discard()

    def _new_tmp(self) -> tuple[Path, int]:
        self._counter += 1
        path = self.dir / str(self._counter)
        return path, os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)

    def add_stream(self, src, label: str = "the source") -> tuple[str, int]:
        """Copy an open binary file into staging while hashing it: one read, one write."""
        view = memoryview(self._buffer)
        hasher = new_hasher()
        size = 0
        path, fd = self._new_tmp()
        try:
            while n := _read_source(src, self._buffer, label):
                hasher.update(view[:n])
                write_all(fd, view[:n])
                size += n
            oid = hasher.hexdigest()
            if oid not in self._staged and not self.store.exists(oid):
                os.fsync(fd)  # content already stored needs no second flush
        finally:
            os.close(fd)
        self._keep(oid, path)
        return oid, size

    def add_bytes(self, data: bytes) -> str:
        oid = hash_bytes(data)
        if oid in self._staged or oid in self._reused:
            return oid
        if self.store.exists(oid):
            self._reused[oid] = data  # checked again at install; written only if gone by then
            return oid
        self._write_bytes(oid, data)
        return oid

    def _write_bytes(self, oid: str, data: bytes) -> None:
        path, fd = self._new_tmp()
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        self._keep(oid, path)

    def reuse(self, oid: str, source: str, size: int) -> None:
        """An object the stat cache says ``source`` already has in the store: nothing is read now."""
        if oid not in self._staged:
            self._reused.setdefault(oid, source)

    def _keep(self, oid: str, path: Path) -> None:
        if oid in self._staged:
            os.unlink(path)
        else:
            self._staged[oid] = path

    def install(self) -> int:
        """Give every staged object its final name. Returns how many were new to the store.

        Runs under the store barrier, so gc cannot remove anything between the existence check
        of a reused object here and the manifest commit that references it.
        """
        self._settle_reused()
        new = 0
        touched: set[Path] = set()
        for oid, staged in self._staged.items():
            final = self.store.path(oid)
            os.chmod(staged, READ_ONLY)
            size = os.lstat(staged).st_size
            try:
                added = _place(staged, final)
            except FileNotFoundError:  # first object in this fan-out folder
                final.parent.mkdir(parents=True, exist_ok=True)
                touched.add(final.parent.parent)
                added = _place(staged, final)
            new += added
            self.new_bytes += size if added else 0
            touched.add(final.parent)
        for folder in touched:
            fsync_dir(folder)
        return new

    def _settle_reused(self) -> None:
        """Refresh the objects reused without reading; stage any that vanished since (a gc ran)."""
        from .errors import SourceError

        for oid, origin in self._reused.items():
            if oid in self._staged:
                continue
            try:
                _refresh(self.store.path(oid))
                continue
            except StoreError:
                pass  # gone: fall through and stage it from its source
            if isinstance(origin, bytes):
                self._write_bytes(oid, origin)
                continue
            with open(origin, "rb", buffering=0) as src:
                got, _ = self.add_stream(src, origin)
            if got != oid:
                raise SourceError(f"{origin} changed while it was being deployed")

    def discard(self) -> None:
        if self.dir is not None and self.dir.exists():
            shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None
        if self._liveness is not None:
            os.close(self._liveness)
            self._liveness = None


_NO_HARD_LINKS = (errno.EXDEV, errno.EMLINK, errno.EPERM, errno.ENOTSUP)


def _place(staged: Path, final: Path) -> bool:
    """Publish a complete staged object under its oid; False if the store already had it."""
    try:
        os.link(staged, final)
        return True
    except FileExistsError:
        # Keep the object already there (immutability) but refresh its mtime: a gc running
        # later spares objects younger than its grace period.
        _refresh(final)
        return False
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
    # A filesystem without hard links: move the staged file itself. It is complete, fsynced
    # and read-only already, and rename is atomic, so the final name never holds part of it.
    if os.path.lexists(final):
        _refresh(final)
        return False
    os.rename(staged, final)
    return True


def _refresh(path: Path) -> None:
    try:
        os.utime(path)
    except PermissionError:
        # Another user's object in a shared store: it exists, which is what matters; gc's grace
        # period then rests on the deploy's own staging files.
        pass
    except FileNotFoundError:
        raise StoreError(f"object {path} vanished while being reused (was gc run with no grace period?)") from None
