"""The context every verb works in: one data root's storage and the steps verbs share.

A :class:`Context` holds the root's object store, tree reader, manifest store and operation
log, and the few steps that more than one verb takes in the same way: holding gc off while
objects are installed and a manifest committed (:meth:`Context.writing`), materializing a
tree, checking a tree is complete before a manifest names it, regenerating a model's links
from its committed manifest, and deciding link claims under the store-wide claims lock. The
verbs (:mod:`gaia_cas.deploy`, :mod:`gaia_cas.pointers`, :mod:`gaia_cas.models`, …) are
functions of a Context; :class:`gaia_cas.repo.Repository` is a facade over them.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

from . import links
from .errors import CorruptionError, GaiaCasError, InvalidInputError, ModelNotFoundError, StoreError
from .ingest import artifact_path
from .layout import Layout
from .locking import store_barrier
from .manifest import Manifest, Version
from .manifest_store import Manifests
from .materialize import materialize
from .objects import ObjectStore
from .oplog import OpLog
from .trees import TreeReader


class StoreErrors:
    """Turn OS errors of the store side (disk full, read-only, permissions) into StoreError."""

    def __init__(self, layout: Layout):
        self.layout = layout

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if exc is None or isinstance(exc, GaiaCasError) or not isinstance(exc, OSError):
            return False
        where = f" ({exc.filename})" if exc.filename else ""
        raise StoreError(f"cannot write to the store in {self.layout.root}: {exc.strerror or exc}{where}") from exc


class Context:
    def __init__(self, root: str | os.PathLike, *, lock_timeout: float | None = None):
        self.layout = Layout(Path(root).absolute())
        self.objects = ObjectStore(self.layout)
        self.trees = TreeReader(self.objects)
        self.manifests = Manifests(self.layout, lock_timeout)
        self.oplog = OpLog(self.layout.logs)
        self._writing = 0  # > 0 while this context holds the store barrier (writing())

    @property
    def root(self) -> Path:
        return self.layout.root

    # -- reading -------------------------------------------------------------------------------

    def models(self) -> list[str]:
        return self.manifests.names()

    def model(self, name: str) -> str:
        """Resolve a model name or alias to the model's name."""
        return self.manifests.lookup(name)

    def snapshot(self, model: str):
        snap = self.manifests.snapshot(model)
        if snap is None:  # removed between lookup and read
            raise ModelNotFoundError(model, self.models())
        return snap

    def manifest(self, name: str) -> Manifest:
        model = self.model(name)
        manifest = self.manifests.read(model)
        if manifest is None:  # removed between lookup and read
            raise ModelNotFoundError(name, self.models())
        return manifest

    def select(self, manifest: Manifest, selector: str | None) -> Version:
        """The version a selector names (see :mod:`gaia_cas.selectors`); None means current."""
        from .selectors import select

        return select(manifest, selector)

    def own_folders(self) -> dict[str, Path]:
        """The root's folders no source may be, hold or be inside."""
        return {"store/": self.layout.store, "manifests/": self.layout.manifests, "logs/": self.layout.logs}

    # -- steps verbs share ---------------------------------------------------------------------

    def store_errors(self) -> StoreErrors:
        return StoreErrors(self.layout)

    @contextmanager
    def writing(self):
        """Translate store-side OS errors, and hold the store barrier shared (gc waits): from
        installing objects to the manifest commit naming them (design.md, Locks and barriers)."""
        with StoreErrors(self.layout):
            self.layout.store.mkdir(parents=True, exist_ok=True)
            refusal = self.layout.symlink_in_store()  # never write through a symlink under store/
            if refusal is not None:
                raise StoreError(refusal)
            if os.path.lexists(self.layout.store / "format"):
                from .recipes import check_format

                check_format(self.layout)
            with store_barrier(self.layout.store, self.manifests.lock_timeout, exclusive=False):
                self._writing += 1
                try:
                    yield
                finally:
                    self._writing -= 1

    @contextmanager
    def claims(self):
        """Hold the store-wide claims lock (``manifests/.config.lock``) for the body.

        A link or an alias is claimed by checking that no other model owns it, then committing
        one manifest: two such claims under two different model locks both passed the check
        and both committed (16 of 30 races), and model A's server read model B's weights. So
        every claim -- model add/set, promote -- decides and commits under this one lock. It
        is always taken before the barrier and the model's lock, never inside them.
        """
        from .atomic import make_dirs
        from .locking import hold_flock

        with StoreErrors(self.layout):
            make_dirs(self.layout.manifests)
        with hold_flock(self.layout.config_lock_path, self.manifests.lock_timeout, shared=False,
                        holder="another gaia-cas process is changing a model's links or aliases"):
            yield

    def materialize(self, tree_oid: str) -> Path:
        """The tree's checkout; a version gone cold (its large files kept as chunks only) is
        first rebuilt whole, verified, under the store barrier (design.md, Chunks)."""
        final = self.layout.tree_path(tree_oid)
        if not final.is_dir():
            from .recipes import cold_files

            if self._writing:
                self.warm(cold_files(self.objects, self.trees, tree_oid))
            elif cold_files(self.objects, self.trees, tree_oid):
                with self.writing():  # decided again under the barrier: gc may have run meanwhile
                    return self.materialize(tree_oid)
        return materialize(self.layout, self.objects, tree_oid)

    def warm(self, cold: list[str]) -> None:
        """Rebuild whole, from their chunks, the files ``cold`` (stored only as chunks). Caller
        holds the store barrier: the objects are installed, and gc must not split them again
        before the tree that serves them exists."""
        if not cold:
            return
        from .recipes import RecipeStore, rebuild

        recipes = RecipeStore(self.layout)
        with self.objects.staging() as staging:
            for oid in cold:
                rebuild(self.objects, recipes.get(oid), staging)
            staging.install()
            staging.keep()

    def check_complete(self, tree_oid: str) -> None:
        """Every object the tree reaches exists, whole or as chunks (a gc must not have taken any)."""
        if not self.objects.exists(tree_oid):
            raise CorruptionError(f"tree {tree_oid} is missing from the store")
        recipes = None
        for _, entry in self.trees.walk(tree_oid):
            if self.objects.exists(entry.oid):
                continue
            if recipes is None:
                from .recipes import RecipeStore

                recipes = RecipeStore(self.layout)
            recipe = recipes.get(entry.oid) if entry.kind != "dir" else None
            if recipe is None or not all(self.objects.exists(c.oid) for c in recipe.chunks):
                raise CorruptionError(f"object {entry.oid} of tree {tree_oid} is missing from the store")

    # -- links ---------------------------------------------------------------------------------

    def link_targets(self, manifest: Manifest) -> dict[str, tuple[str, Version | None]]:
        """Every link the model owns: channel name -> (link path relative to the root, its version)."""
        versions = manifest.channel_versions()
        return {channel: (link, manifest.find(versions[channel]) if channel in versions else None)
                for channel, link in links.model_links(self.layout, manifest).items()}

    def check_link_locations(self, manifest: Manifest) -> None:
        """Before a change that will regenerate links: every link of the model can be written."""
        for link, _ in self.link_targets(manifest).values():
            links.check_location(self.layout, link)

    def check_link_free(self, model: str, channel: str, link: str) -> None:
        """The link location is valid and no other model or channel owns it."""
        links.check_location(self.layout, link)
        for other in self.models():
            manifest = self.manifest(other) if other != model else self.manifests.read(model)
            for other_channel, other_link in links.model_links(self.layout, manifest).items():
                if other_link == link and (other, other_channel) != (model, channel):
                    owner = f"model '{other}'" if other_channel == "current" else f"channel '{other_channel}' of '{other}'"
                    raise InvalidInputError(f"link path {link!r} is already used by {owner}")

    def sync_link(self, manifest: Manifest) -> None:
        """Regenerate the model's links (current and every channel), and its serving dir if it has
        one, from the manifest just committed."""
        for channel, (link, version) in self.link_targets(manifest).items():
            try:
                if version is None or version.broken:  # a broken version is never served
                    links.drop_link(self.layout, link)
                    continue
                tree_dir = self.materialize(version.tree)
                links.point_link(self.layout, link, artifact_path(tree_dir, version.name))
            except (OSError, InvalidInputError) as exc:
                # The manifest is already committed: say so, rather than report the change as failed.
                fix = (f"'gaia-cas rollback {manifest.model} {manifest.current}'" if manifest.current
                       else "any later change")
                raise StoreError(
                    f"{manifest.model} is committed ({channel} {version.version if version else 'none'}), but its "
                    f"link {link} could not be updated: {getattr(exc, 'strerror', None) or exc}; {fix} regenerates it"
                ) from exc
        if manifest.config.serving_dir:  # the numbered folders TF Serving and Triton poll
            from . import serving_dir

            try:
                serving_dir.sync(self, manifest)
            except (OSError, InvalidInputError) as exc:
                fix = (f"'gaia-cas rollback {manifest.model} {manifest.current}'" if manifest.current
                       else "any later change")
                raise StoreError(
                    f"{manifest.model} is committed, but its serving dir {manifest.config.serving_dir} could not be "
                    f"updated: {getattr(exc, 'strerror', None) or exc}; {fix} regenerates it") from exc
