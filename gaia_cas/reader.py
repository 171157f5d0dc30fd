"""The reader API for inference servers: which model is active, where its files are.

Lock-free by design: a manifest only ever changes by atomic rename, so one ``open`` + ``read``
sees one complete manifest; the version it names as current was materialized before that
manifest was committed. The path returned is the version's own folder in the store (not the
``current`` link), so it stays valid while the server loads from it even if ``current`` moves.

A server polls cheaply with :meth:`Resolved.changed` -- one ``stat`` of the manifest, no read --
and calls :func:`resolve` again only when it returns True::

    active = gaia_cas.resolve("ssd")
    model = load(active.path)
    while serving:
        if active.changed():
            fresh = gaia_cas.resolve("ssd")
            if fresh.hash != active.hash:
                model = load(fresh.path)
            active = fresh
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import CorruptionError, GaiaCasError, NotFoundError, StoreError
from .ingest import artifact_path
from .layout import Layout, find_root
from .manifest_store import Manifests, file_token


@dataclass(frozen=True)
class Resolved:
    model: str
    version: str
    hash: str
    path: Path
    metadata: dict[str, Any]
    format: str
    generation: int
    created_at: str
    manifest_path: Path = field(repr=False)
    token: tuple[int, int, int] = field(repr=False)

    def changed(self) -> bool:
        """Whether the model's manifest was replaced since this was resolved (one stat)."""
        try:
            return file_token(os.stat(self.manifest_path)) != self.token
        except FileNotFoundError:
            return True


def resolve(model: str, root: str | os.PathLike | None = None, channel: str = "current") -> Resolved:
    """The active version of ``model`` (a name or an alias) under ``root``, on ``channel``.

    ``root`` defaults to ``$GAIA_CAS_ROOT``, else the nearest ancestor of the working directory
    holding ``store/`` and ``manifests/``. ``channel`` names a channel set by ``promote``
    (e.g. ``"staging"``); the default is the current version.
    """
    layout = Layout(find_root(root))
    try:
        return _resolve(layout, model, channel)
    except OSError as exc:
        if isinstance(exc, GaiaCasError):
            raise
        # EIO from a failing disk, a read-only mount where a tree must be rebuilt, a permission:
        # one clean error a server can catch as GaiaCasError, naming the model and the file.
        where = f" ({exc.filename})" if exc.filename else ""
        raise StoreError(f"cannot resolve model '{model}' in {layout.root}: "
                         f"{exc.strerror or exc}{where}") from exc


def _resolve(layout: Layout, model: str, channel: str) -> Resolved:
    manifests = Manifests(layout)
    name = manifests.lookup(model)
    snapshot = manifests.snapshot(name)
    if snapshot is None:
        raise NotFoundError(f"model '{model}' has no manifest")
    manifest = snapshot.manifest
    number = manifest.channel_versions().get(channel)
    if number is None:
        if channel == "current":
            raise NotFoundError(f"model '{name}' has no current version yet")
        raise NotFoundError(f"model '{name}' has no channel '{channel}' (channels: "
                            f"{', '.join(sorted(manifest.channel_versions())) or 'none'})")
    version = manifest.find(number)
    if version.broken:
        raise CorruptionError(f"the {channel} version of '{name}' ({version.version}) is marked broken by verify: "
                              "its files are corrupt or missing; roll back or redeploy")
    tree_dir = layout.tree_path(version.tree)
    if not tree_dir.is_dir():
        # Derived data that gc (or an operator) removed: rebuild it from the objects. Building
        # happens in store/tmp and publishes by rename, so concurrent readers are safe.
        # A version kept as chunks (cold) is rebuilt whole first, verified, under the barrier.
        from .context import Context

        try:
            tree_dir = Context(layout.root).materialize(version.tree)
        except OSError as exc:
            if isinstance(exc, GaiaCasError):
                raise
            raise StoreError(f"version {version.version} of '{name}' (tree {version.tree}) is not materialized "
                             f"and cannot be rebuilt in {layout.trees}: {exc.strerror or exc}"
                             + (" (a read-only store needs every served tree materialized beforehand, "
                                "e.g. by 'gaia-cas verify --repair' where it is writable)"
                                if exc.errno == errno.EROFS else "")) from exc
    path = artifact_path(tree_dir, version.name)
    return Resolved(
        model=name, version=version.version, hash=version.tree, path=path,
        metadata=dict(version.metadata), format=version.format, generation=manifest.generation,
        created_at=version.created_at, manifest_path=layout.manifest_path(name), token=snapshot.token,
    )
