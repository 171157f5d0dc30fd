"""The library API: everything the CLI can do, as methods of :class:`Repository`.

A thin facade. Each method delegates to the verb module that does the work, with the root's
:class:`~gaia_cas.context.Context`; the modules are the reference for what each verb
guarantees (design.md names the rules they share: the write order, the locks, gc's roots).

=================  ==========================================================
verb               module
=================  ==========================================================
deploy             :mod:`gaia_cas.deploy`
rollback, promote  :mod:`gaia_cas.pointers` (and pin, and link regeneration)
model add / set    :mod:`gaia_cas.models`
cleanup            :mod:`gaia_cas.retention`
gc                 :mod:`gaia_cas.gc`
verify             :mod:`gaia_cas.verify`
status             :mod:`gaia_cas.status`
select, show       :mod:`gaia_cas.selectors`
diff               :mod:`gaia_cas.diff`
import-legacy      :mod:`gaia_cas.legacy`
export, import     :mod:`gaia_cas.archive`
resolve            :mod:`gaia_cas.reader`
remote verbs       :mod:`gaia_cas.remote_verbs` (``repo.remote(name)``: push, pull, deploy, …)
=================  ==========================================================
"""

from __future__ import annotations

import os

from .context import Context
from .errors import StoreError

# Each verb module is imported by the method that uses it: an unchanged redeploy then loads
# deploy's modules only, not those of rollback, status or the model settings.


class Repository:
    """A gaia-cas data root: its object store, manifests, links and log."""

    def __init__(self, root: str | os.PathLike, *, lock_timeout: float | None = None):
        self.ctx = Context(root, lock_timeout=lock_timeout)
        self.layout, self.objects, self.trees = self.ctx.layout, self.ctx.objects, self.ctx.trees
        self.manifests, self.oplog = self.ctx.manifests, self.ctx.oplog

    @classmethod
    def open(cls, root: str | os.PathLike | None = None, *, default_root=None,
             lock_timeout: float | None = None) -> "Repository":
        from .reader import find_root  # a missing root is explained in terms of root=
        return cls(find_root(root, default_root), lock_timeout=lock_timeout)

    @classmethod
    def init(cls, root: str | os.PathLike, **kwargs) -> "Repository":
        repo = cls(root, **kwargs)
        try:
            repo.layout.ensure()
        except OSError as exc:
            raise StoreError(f"cannot create a gaia-cas root in {repo.layout.root}: {exc.strerror or exc}") from exc
        return repo

    @property
    def root(self):
        return self.ctx.root

    # -- models --------------------------------------------------------------------------------

    def models(self) -> list[str]:
        return self.ctx.models()

    def model(self, name: str) -> str:
        """Resolve a model name or alias to the model's name."""
        return self.ctx.model(name)

    def manifest(self, name: str):
        return self.ctx.manifest(name)

    def add_model(self, name: str, **settings):
        """Register a model: ``aliases``, ``source``, ``link``, ``metadata``, ``reason``."""
        from .models import add_model

        return add_model(self.ctx, name, **settings)

    def set_model(self, name: str, **settings):
        """Change a model's settings; ``keep``/``keep_within`` set its retention policy."""
        from .models import set_model

        return set_model(self.ctx, name, **settings)

    # -- deploy and pointers -------------------------------------------------------------------

    def deploy(self, name: str, path: str | os.PathLike | None = None, **options):
        """Deploy a file or folder as the model's next version and make it current: a DeployResult."""
        from .deploy import deploy

        return deploy(self.ctx, name, path, **options)

    def deploy_all(self, **options):
        """Deploy every model from its default source: (results, skipped, failed)."""
        from .deploy import deploy_all

        return deploy_all(self.ctx, **options)

    def rollback(self, name: str | None, selector: str, *, reason: str | None = None):
        """Make an existing version current again (a RollbackResult); ``name`` None means the
        root's only model."""
        from .pointers import rollback

        return rollback(self.ctx, name, selector, reason=reason)

    def promote(self, name: str, selector: str, channel: str, *, link: str | None = None,
                reason: str | None = None):
        """Point a channel (e.g. staging, canary) at a version; 'current' is the default channel."""
        from .pointers import promote

        return promote(self.ctx, name, selector, channel, link=link, reason=reason)

    def pin(self, name: str, selector: str, *, pinned: bool = True, reason: str | None = None):
        """Pin (or unpin) a version: a pinned version survives every cleanup."""
        from .pointers import pin

        return pin(self.ctx, name, selector, pinned=pinned, reason=reason)

    def sync_links(self) -> list[str]:
        """Regenerate every link that lags behind its manifest (after a crash); the models fixed."""
        from .pointers import sync_links

        return sync_links(self.ctx)

    # -- retention, gc, verify -----------------------------------------------------------------

    def plan_cleanup(self, names: list[str] | None = None, **rules) -> list:
        """What a cleanup would remove, model by model, and which rule keeps each survivor."""
        from .retention import plan_cleanup

        return plan_cleanup(self.ctx, names, **rules)

    def cleanup(self, names: list[str] | None = None, **options) -> list:
        """Apply retention (``keep``, ``older_than``, ``dry_run``, ``reason``); objects are left to gc."""
        from .retention import cleanup

        return cleanup(self.ctx, names, **options)

    def plan_gc(self, *, grace=None, log_age=None):
        """What gc would delete now. ``log_age=None`` leaves logs out of the plan."""
        from . import gc

        return gc.plan(self.ctx, grace=grace, log_age=log_age)

    def gc(self, *, grace=None, log_age=None, dry_run: bool = False):
        """Delete what no manifest reaches: (plan, result); result is None for a dry run."""
        from . import gc

        return gc.collect(self.ctx, grace=grace, log_age=log_age, dry_run=dry_run)

    def store_settings(self, *, threshold: int | None = None, hot_recent: int | None = None, upgrade=False) -> dict:
        """The store's format and chunking settings, changed first if asked; ``upgrade``: marked
        as of this gaia-cas's store format first (design.md, Chunks)."""
        from .recipes import store_info
        return store_info(self.ctx, threshold=threshold, hot_recent=hot_recent, upgrade_format=upgrade)

    def verify(self, name: str | None = None, **options):
        """Re-hash, check trees and links (``repair``, ``sample``, ``reason``)."""
        from .verify import verify

        return verify(self.ctx, name, **options)

    # -- queries -------------------------------------------------------------------------------

    def select(self, manifest, selector: str | None):
        """The version a selector names (see :mod:`gaia_cas.selectors`); None means current."""
        from .selectors import select

        return select(manifest, selector)

    def show(self, name: str, selector: str | None = None):
        from .selectors import select

        manifest = self.ctx.manifest(name)
        return manifest, select(manifest, selector)

    def status(self):
        from .status import status

        return status(self.ctx)

    def diff(self, name: str, a: str, b: str):
        """Files added, removed and changed between two versions, and metadata changed."""
        from .diff import diff

        return diff(self.ctx, name, a, b)

    def history(self, name: str, n: int | None = None) -> list:
        """The model's audit trail, oldest first (append-only: nothing ever rewrites it); ``n``: the newest n."""
        m = self.ctx.manifest(name)
        return list(m.history) if n is None else [e for _, e in zip(range(n), m.events_newest_first())][::-1]

    def logs(self, n: int = 20, model: str | None = None, follow: bool = False):
        """The last ``n`` log lines (of ``model``'s); ``follow``: an endless iterator of them and every new one."""
        from .logview import read

        return read(self.ctx, n, model, follow)

    def doctor(self) -> list:  # the machine under the root, checked: a list of gaia_cas.doctor.Check
        from .doctor import examine
        return examine(self.ctx)

    def resolve(self, name: str, **options):  # version=, channel=: see gaia_cas.reader.resolve
        from .reader import resolve

        return resolve(name, root=self.root, **options)

    def remove(self, name: str, selector: str | None = None, **options):
        """Drop one version, or (no ``selector``) the whole model (``force``, ``reason``); see :mod:`gaia_cas.removal`."""
        from .removal import remove
        return remove(self.ctx, name, selector, **options)

    # -- moving versions in and out ------------------------------------------------------------

    def import_legacy(self, path, **options) -> list:
        """Migrate a copy-per-version layout; see :mod:`gaia_cas.legacy`."""
        from .legacy import import_legacy

        return import_legacy(self.ctx, path, **options)

    def export(self, name: str, selector: str | None, output, *, progress=None):
        """Write one version (default: current) as a tar: (model, version, archive path)."""
        from .archive import export

        return export(self.ctx, name, selector, output, progress)

    def import_archive(self, path, name: str, **options):
        """Validate an exported tar, then deploy its artifact as the model's next version."""
        from .archive import import_archive

        return import_archive(self.ctx, path, name, **options)

    # -- steps verbs share (see gaia_cas.context) ----------------------------------------------

    def writing(self):
        return self.ctx.writing()

    def claims(self):
        return self.ctx.claims()

    def materialize(self, tree_oid: str):
        return self.ctx.materialize(tree_oid)

    def check_complete(self, tree_oid: str) -> None:
        return self.ctx.check_complete(tree_oid)

    def link_targets(self, manifest):
        return self.ctx.link_targets(manifest)

    def sync_link(self, manifest) -> None:
        return self.ctx.sync_link(manifest)

    def check_link_free(self, model: str, channel: str, link: str) -> None:
        return self.ctx.check_link_free(model, channel, link)

    # -- S3 remote: gaia_cas.remotes (the named remotes), gaia_cas.remote_verbs (the verbs) -------

    def add_remote(self, name: str, url: str, *, endpoint: str | None = None, region: str | None = None):
        """Register ``s3://BUCKET[/PREFIX]`` as remote ``name`` after probing it; (Remote, is_default)."""
        from . import remotes
        return remotes.add(self.ctx, name, url, endpoint=endpoint, region=region)

    def remotes(self):
        """(default remote name, {name: Remote})."""
        from . import remotes
        return remotes.load(self.ctx)

    def remote(self, name: str | None = None):
        """The verbs on remote ``name`` (default: the default remote) -- push, pull, sync, deploy,
        rollback, promote, cleanup, verify, gc: a :class:`~gaia_cas.remote_verbs.RemoteVerbs`."""
        from .remote_verbs import RemoteVerbs
        return RemoteVerbs(self.ctx, name)
