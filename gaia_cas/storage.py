"""The storage seam: what every backend of objects and manifests provides.

The verbs (deploy, rollback, gc, verify, …) need two things from storage, whatever it is made of:

- an **object store**: immutable blobs named by the xxh3-128 of their bytes — exists, read whole
  (with a limit), open as a stream, stage new ones invisibly and install them together, iterate,
  delete, quarantine (move a corrupt one aside), refresh (tell gc it was just wanted);
- a **manifest store**: one manifest per model — list the names, take a snapshot (the manifest
  plus an opaque *token* naming the exact stored state), and **compare-and-swap**: replace the
  manifest only if the stored token is still the one the caller read.

Compare-and-swap is the one primitive both a local disk and an S3 bucket can give without a lock
server: the disk takes the model's flock, re-reads and compares (dulwich's ``set_if_equals``);
S3 uses a conditional PUT (``If-Match`` / ``If-None-Match: *``). :meth:`BaseManifestStore.update`
builds a read-decide-write loop on top of it, so a verb that decides a version number against
the manifest it read re-decides on a lost race instead of overwriting someone else's commit.

``Memory…`` backends live here for tests; ``Disk…`` backends are :mod:`gaia_cas.objects` and
:mod:`gaia_cas.manifest`. ``tests/test_storage_contract.py`` runs one suite against all of them
(design.md, Storage seam).
"""

from __future__ import annotations

import io
from collections import namedtuple

from .errors import CorruptionError, GaiaCasError, ModelNotFoundError
from .hashing import hash_bytes
from .names import check_model_name, check_oid

MAX_UPDATE_ATTEMPTS = 50


class Snapshot(namedtuple("Snapshot", "manifest token")):
    """A manifest as read, plus a token naming the exact stored state it came from.

    ``token`` changes whenever the manifest is replaced (each commit is a new inode), so a
    server can tell with one ``stat`` whether anything changed since it last read.
    """

    __slots__ = ()


class StaleTokenError(GaiaCasError):
    """A compare-and-swap lost: the manifest changed since the token was read."""

    def __init__(self, model: str):
        self.model = model
        super().__init__(f"the manifest of '{model}' changed while it was being edited")


class BaseObjectStore:
    """Immutable objects named by oid. Subclasses implement every method."""

    def exists(self, oid: str) -> bool:
        raise NotImplementedError

    def read(self, oid: str, limit: int) -> bytes:
        """The whole object, refusing one larger than ``limit`` (CorruptionError: trees are small,
        so a large one is not what the caller thinks it is)."""
        raise NotImplementedError

    def open(self, oid: str):
        """A binary stream of the object's bytes (close it)."""
        raise NotImplementedError

    def staging(self):
        """A context manager collecting new objects invisibly until ``install()``."""
        raise NotImplementedError

    def oids(self):
        """Every oid stored, in no particular order."""
        raise NotImplementedError

    def delete(self, oid: str) -> bool:
        """Remove one object; False if it was not there."""
        raise NotImplementedError

    def quarantine(self, oid: str) -> str | None:
        """Move a corrupt object out of reach (kept for inspection, never served); returns where
        it went, None if it was not there."""
        raise NotImplementedError

    def refresh(self, oid: str) -> None:
        """Mark the object as wanted just now (gc's grace period counts from here)."""
        raise NotImplementedError


_UNREAD = object()  # update() reads the manifest itself


class BaseManifestStore:
    """One manifest per model, changed only by compare-and-swap on a snapshot's token."""

    def names(self) -> list[str]:
        raise NotImplementedError

    def snapshot(self, model: str):
        """``Snapshot(manifest, token)`` or None when the model has no manifest."""
        raise NotImplementedError

    def compare_and_swap(self, model: str, token, manifest):
        """Store ``manifest`` if the stored state is still ``token`` (None: no manifest yet).
        Returns the new token; raises :class:`StaleTokenError` otherwise."""
        raise NotImplementedError

    def update(self, model: str, change, *, create: bool = False, read=_UNREAD):
        """Read, let ``change(manifest)`` decide and record events, write by compare-and-swap;
        on a lost race read again and decide again. Returns the committed manifest, or the
        unchanged one when ``change`` recorded no event (nothing is written then).

        ``change`` must decide only from the manifest it is given: it may run more than once.
        ``read``: the snapshot the caller has just taken (None: no manifest), used for the first
        attempt instead of reading again -- a stale one only costs a lost swap and a re-read.
        Its manifest is handed to ``change``, which may modify it.
        """
        from .manifest import Manifest

        for attempt in range(MAX_UPDATE_ATTEMPTS):
            snap = read if attempt == 0 and read is not _UNREAD else self.snapshot(model)
            if snap is None:
                if not create:
                    raise ModelNotFoundError(model, self.names())
                manifest, token = Manifest(model=model), None
            else:
                manifest, token = snap.manifest, snap.token
            change(manifest)
            if not manifest.new_events:
                return manifest
            manifest.generation += 1
            for event in manifest.new_events:
                if event.generation < 0:
                    event.generation = manifest.generation
            try:
                self.compare_and_swap(model, token, manifest)
            except StaleTokenError:
                continue
            return manifest
        raise StaleTokenError(model)


# -- in memory, for tests ----------------------------------------------------------------------

class BaseStaging:
    """New objects kept aside, invisible, until ``install()``; leaving the block without it
    keeps nothing (subclasses implement ``add_stream``, ``install`` and ``discard``)."""

    def __init__(self, store):
        self.store = store
        self._staged: dict[str, object] = {}  # oid -> its bytes (or what a backend keeps instead)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.discard()

    def add_bytes(self, data: bytes) -> str:
        oid = hash_bytes(data)
        self._staged.setdefault(oid, bytes(data))
        return oid


class MemoryStaging(BaseStaging):

    def add_stream(self, src, label: str = "the source", buffer=None) -> tuple[str, int]:
        data = src.read()
        return self.add_bytes(data), len(data)

    def install(self) -> int:
        new = 0
        with self.store._lock:
            for oid, data in self._staged.items():
                if oid not in self.store._objects:
                    self.store._objects[oid] = data
                    new += 1
        self._staged.clear()
        return new

    def discard(self) -> None:
        self._staged.clear()


class MemoryObjectStore(BaseObjectStore):
    def __init__(self):
        self._objects: dict[str, bytes] = {}
        self.quarantined: dict[str, bytes] = {}
        self.refreshed: set[str] = set()
        import threading  # not at import: the disk backends on every command's path never need it

        self._lock = threading.Lock()

    def exists(self, oid: str) -> bool:
        return check_oid(oid) in self._objects

    def read(self, oid: str, limit: int) -> bytes:
        data = self._objects.get(check_oid(oid))
        if data is None:
            raise CorruptionError(f"object {oid} is missing from the store")
        if len(data) > limit:
            raise CorruptionError(f"object {oid} is larger than {limit} bytes; it cannot be a tree")
        return data

    def open(self, oid: str):
        data = self._objects.get(check_oid(oid))
        if data is None:
            raise CorruptionError(f"object {oid} is missing from the store")
        return io.BytesIO(data)

    def staging(self) -> MemoryStaging:
        return MemoryStaging(self)

    def oids(self):
        return list(self._objects)

    def delete(self, oid: str) -> bool:
        with self._lock:
            return self._objects.pop(check_oid(oid), None) is not None

    def quarantine(self, oid: str) -> str | None:
        with self._lock:
            data = self._objects.pop(check_oid(oid), None)
            if data is None:
                return None
            self.quarantined[oid] = data
            return f"quarantine/{oid}"

    def refresh(self, oid: str) -> None:
        if check_oid(oid) not in self._objects:
            raise CorruptionError(f"object {oid} is missing from the store")
        self.refreshed.add(oid)


class MemoryManifestStore(BaseManifestStore):
    """Manifests kept encoded, exactly as a disk or a bucket would hold them, so every snapshot
    is a fresh decode and no caller can change a stored manifest by mutating its copy."""

    def __init__(self):
        self._stored: dict[str, tuple[int, bytes]] = {}
        import threading  # not at import: the disk backends on every command's path never need it

        self._lock = threading.Lock()
        self._counter = 0

    def names(self) -> list[str]:
        return sorted(self._stored)

    def snapshot(self, model: str):
        from .manifest import decode

        check_model_name(model)
        with self._lock:
            found = self._stored.get(model)
        if found is None:
            return None
        token, data = found
        return Snapshot(decode(data, f"memory:{model}"), token)

    def compare_and_swap(self, model: str, token, manifest):
        from .manifest import encode

        check_model_name(model)
        data = encode(manifest)
        with self._lock:
            found = self._stored.get(model)
            if (found[0] if found else None) != token:
                raise StaleTokenError(model)
            self._counter += 1
            self._stored[model] = (self._counter, data)
            return self._counter
