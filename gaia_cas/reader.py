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

``resolve("ssd", version="1.4.0")`` names one version instead (any selector ``gaia-cas`` takes:
``1.4``, ``v1.4_20250716_202612``, a hash prefix, ``previous``). A missing root is explained
in the caller's terms: ``root=``, not the command line's ``--root``.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import CorruptionError, GaiaCasError, InvalidInputError, NotFoundError, RootNotFoundError, StoreError
from .ingest import artifact_path
from .layout import Layout, find_root as find_layout_root
from .manifest_store import Manifests, file_token

TYPE_CHECKING = False
if TYPE_CHECKING:
    from datetime import datetime


@dataclass(frozen=True)
class Resolved:
    model: str
    version: str
    hash: str
    path: Path
    metadata: dict[str, Any]
    format: str
    generation: int
    created_at: datetime  # timezone-aware (stored as UTC)
    manifest_path: Path = field(repr=False)
    token: tuple[int, int, int] = field(repr=False)

    def changed(self) -> bool:
        """Whether the model's manifest was replaced since this was resolved (one stat)."""
        try:
            return file_token(os.stat(self.manifest_path)) != self.token
        except FileNotFoundError:
            return True


def find_root(root: str | os.PathLike | None = None, default: str | os.PathLike | None = None) -> Path:
    """The data root as :func:`gaia_cas.layout.find_root` finds it, with an error that speaks
    to a Python caller: of ``root=`` and ``$GAIA_CAS_ROOT``, not of the command line's --root."""
    try:
        return find_layout_root(root, default)
    except RootNotFoundError:
        pass
    env = os.environ.get("GAIA_CAS_ROOT")
    if root is not None and str(root) != "":
        where = Path(root).absolute()
        message = (f"root={os.fspath(root)!r} is not a gaia-cas root: {where} holds no store/ and manifests/ "
                   f"(create one with gaia_cas.Repository.init({str(where)!r}) or 'gaia-cas init {where}')")
    elif env:
        message = (f"$GAIA_CAS_ROOT={env!r} is not a gaia-cas root (no store/ and manifests/ there); "
                   "pass root='/path/to/root' or correct the variable")
    else:
        message = (f"no gaia-cas root found: none at or above the working directory ({Path.cwd()}) and "
                   "$GAIA_CAS_ROOT is not set; pass root='/path/to/root' (the folder holding store/ and manifests/; "
                   "gaia_cas.Repository.init(path) or 'gaia-cas init DIR' creates one)")
    raise RootNotFoundError(message) from None


def resolve(model: str, root: str | os.PathLike | None = None, channel: str = "current", *,
            version: str | None = None) -> Resolved:
    """The active version of ``model`` (a name or an alias) under ``root``, on ``channel``.

    ``root`` defaults to ``$GAIA_CAS_ROOT``, else the nearest ancestor of the working directory
    holding ``store/`` and ``manifests/``. ``channel`` names a channel set by ``promote``
    (e.g. ``"staging"``); the default is the current version. ``version`` names one version
    instead, by any selector the CLI takes (``"1.4.0"``, ``"1.4"``, a hash prefix, ``"previous"``).
    """
    if version is not None and channel != "current":
        raise InvalidInputError("resolve() takes version= or channel=, not both")
    layout = Layout(find_root(root))
    try:
        return _resolve(layout, model, channel, version)
    except OSError as exc:
        if isinstance(exc, GaiaCasError):
            raise
        # EIO from a failing disk, a read-only mount where a tree must be rebuilt, a permission:
        # one clean error a server can catch as GaiaCasError, naming the model and the file.
        where = f" ({exc.filename})" if exc.filename else ""
        raise StoreError(f"cannot resolve model '{model}' in {layout.root}: "
                         f"{exc.strerror or exc}{where}") from exc


def _resolve(layout: Layout, model: str, channel: str, selector: str | None = None) -> Resolved:
    manifests = Manifests(layout)
    name = manifests.lookup(model)
    snapshot = manifests.snapshot(name)
    if snapshot is None:
        raise NotFoundError(f"model '{model}' has no manifest")
    manifest = snapshot.manifest
    if selector is not None:
        from .selectors import select

        channel = f"version {selector!r}"  # for the broken-version message below
        number = select(manifest, selector).version
    else:
        number = manifest.channel_versions().get(channel)
    if number is None:
        if channel == "current":
            raise NotFoundError(f"model '{name}' has no current version yet")
        raise NotFoundError(f"model '{name}' has no channel '{channel}' (channels: "
                            f"{', '.join(sorted(manifest.channel_versions())) or 'none'})")
    version = manifest.find(number)
    if version.broken:
        what = channel if selector is not None else f"the {channel} version"
        raise CorruptionError(f"{what} of '{name}' ({version.version}) is marked broken by verify: "
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
        created_at=_moment(version.created_at), manifest_path=layout.manifest_path(name), token=snapshot.token,
    )


def _moment(stamp: str) -> "datetime":
    from datetime import datetime

    try:
        value = datetime.fromisoformat(stamp)
    except (TypeError, ValueError):
        raise CorruptionError(f"the version's created_at {stamp!r} is not a time") from None
    return value if value.tzinfo is not None else value.astimezone()  # a naive stamp is local time
