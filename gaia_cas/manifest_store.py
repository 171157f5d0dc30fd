"""The manifest store on disk: one file per model under ``manifests/``, the source of truth.

Each manifest changes only under the model's flock and only by atomic replace (design.md, Write
order); readers never lock: one ``open`` + ``read`` sees one whole manifest. The store's own
files are opened without following a symlink and read only if they are regular files, with a
size limit. This is the disk backend of :class:`gaia_cas.storage.BaseManifestStore`.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

from .atomic import NotDurableError, UnsafeFileError, make_dirs, open_regular, write_atomic
from .errors import CorruptionError, InvalidInputError, StoreError
from .interrupts import held_back
from .layout import MANIFEST_SUFFIX, Layout
from .locking import hold_lock, lock_timeout_from_env
from .manifest import MAX_MANIFEST_BYTES, Manifest, decode, encode
from .names import check_model_name
from .storage import BaseManifestStore, Snapshot

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Iterator


def file_token(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class DiskManifestStore(BaseManifestStore):
    """One manifest file per model under ``manifests/``, each changed only under its flock and
    only by atomic replace (design.md, Write order). ``edit`` holds the lock across the caller's
    decision; ``compare_and_swap``/``update`` are the seam every backend shares."""

    def __init__(self, layout: Layout, lock_timeout: float | None = None):
        self.layout = layout
        self._lock_timeout = lock_timeout

    @property
    def lock_timeout(self) -> float:
        """Checked when a lock is first needed, so read-only commands never trip over it."""
        return lock_timeout_from_env(self._lock_timeout)

    def names(self) -> list[str]:
        try:
            files = os.listdir(self.layout.manifests)
        except FileNotFoundError:
            return []
        names = []
        for name in files:
            if name.endswith(MANIFEST_SUFFIX) and not name.startswith("."):
                model = name[: -len(MANIFEST_SUFFIX)]
                try:
                    names.append(check_model_name(model))
                except InvalidInputError:
                    continue  # not ours: never build a path from a name we did not validate
        return sorted(names)

    def snapshot(self, model: str) -> Snapshot | None:
        path = self.layout.manifest_path(model)
        try:
            # O_NOFOLLOW and a regular-file check: a manifest replaced by a symlink (to a FIFO,
            # which would hang every reader, or to another user's file) is never read.
            fd = open_regular(path)
        except FileNotFoundError:
            return None
        except UnsafeFileError as exc:
            raise CorruptionError(f"{path} cannot be read as a manifest: {exc.strerror}") from None
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if st.st_size > MAX_MANIFEST_BYTES:
                raise CorruptionError(f"{path} is larger than {MAX_MANIFEST_BYTES} bytes")
            data = f.read(MAX_MANIFEST_BYTES + 1)
        manifest = decode(data, str(path))
        if manifest.model != model:
            raise CorruptionError(f"{path} belongs to model {manifest.model!r}, not {model!r}")
        return Snapshot(manifest, file_token(st))

    def token(self, model: str) -> tuple[int, int, int] | None:
        """The manifest file's identity now (one stat): equal tokens mean nothing was committed."""
        try:
            return file_token(os.lstat(self.layout.manifest_path(model)))
        except FileNotFoundError:
            return None

    def read(self, model: str) -> Manifest | None:
        snap = self.snapshot(model)
        return snap.manifest if snap else None

    @contextmanager
    def edit(self, model: str, *, create: bool = False, check_tree=None, on_commit=None,
             reuse: Snapshot | None = None) -> Iterator[Manifest]:
        """Hold the model's lock, yield its freshly read manifest, commit it if the body returns.

        A body that changes the manifest records an event (:func:`record`); a body that records
        none commits nothing.

        ``check_tree(oid)`` is called for every tree the body added (``manifest.new_trees``)
        and must raise if the tree is not complete in the store: the manifest never names a
        version whose files are missing. ``reuse`` is a snapshot the caller already read (and did
        not modify): if the file is still the one it came from, it is used instead of reading the
        manifest again. ``on_commit(manifest)`` runs after the commit while the
        lock is still held (links are swapped there, so they change in commit order). An
        exception in the body commits nothing.
        """
        make_dirs(self.layout.manifests)  # a new folder is fsynced in its parent
        with hold_lock(self.layout.lock_path(model), self.lock_timeout):
            if reuse is not None and self.token(model) == reuse.token:
                manifest = reuse.manifest  # nothing committed since it was read: no second decode
            else:
                manifest = self.read(model)
            if manifest is None:
                if not create:
                    from .errors import ModelNotFoundError

                    raise ModelNotFoundError(model, self.names())
                manifest = Manifest(model=model)
            recorded = len(manifest.new_events)
            yield manifest
            if len(manifest.new_events) == recorded:
                return  # every change records an event, so no event means nothing to commit
            for oid in sorted(manifest.new_trees):
                if check_tree is not None:
                    check_tree(oid)
            manifest.generation += 1
            for event in manifest.new_events:
                if event.generation < 0:  # placeholder set by record(): fill in the commit's number
                    event.generation = manifest.generation
            with held_back():  # from the rename to the end of the link swap, a stop request waits
                self._write(model, manifest, on_commit)
                if on_commit is not None:
                    on_commit(manifest)

    def _write(self, model: str, manifest: Manifest, on_commit=None) -> None:
        """The commit point: temp file, fsync, rename over the manifest, fsync the folder."""
        path = self.layout.manifest_path(model)
        try:
            write_atomic(path, encode(manifest))
        except NotDurableError as exc:
            if on_commit is not None:
                on_commit(manifest)  # the commit is visible: links follow it
            raise StoreError(f"'{model}' is committed (generation {manifest.generation}) but {path.parent} "
                             f"could not be flushed to disk ({exc.strerror}); the change may not survive "
                             "a power loss") from exc
        except OSError as exc:
            raise StoreError(f"cannot write {path}: {exc.strerror or exc}") from exc

    def compare_and_swap(self, model: str, token, manifest: Manifest):
        """The storage seam's commit (:class:`gaia_cas.storage.BaseManifestStore`): under the
        model's lock, re-read and compare -- the file's identity and the generation just below
        ``manifest``'s, so even a reused inode in the same timestamp tick cannot pass for the
        state the caller read -- then write. ``token`` None means the model must not exist yet."""
        from .storage import StaleTokenError

        check_model_name(model)
        make_dirs(self.layout.manifests)
        with hold_lock(self.layout.lock_path(model), self.lock_timeout):
            snap = self.snapshot(model)
            stored = (snap.token, snap.manifest.generation) if snap is not None else None
            expected = (token, manifest.generation - 1) if token is not None else None
            if stored != expected:
                raise StaleTokenError(model)
            self._write(model, manifest)
            return self.token(model)

    def lookup(self, name: str) -> str:
        """The model called ``name``, or the one that has ``name`` as an alias."""
        from .errors import ModelNotFoundError

        if not isinstance(name, str) or not name:
            raise InvalidInputError("a model name is required")
        check_model_name(name)
        if self.layout.manifest_path(name).is_file():
            return name
        names = self.names()
        for model in names:
            manifest = self.read(model)
            if manifest is not None and name in manifest.config.aliases:
                return model
        raise ModelNotFoundError(name, names)


Manifests = DiskManifestStore  # the name the rest of the package and its callers know
