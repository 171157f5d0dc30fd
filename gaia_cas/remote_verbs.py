"""The verbs that work on one remote, as the library API offers them: ``repo.remote(name)``.

A namespace over :mod:`gaia_cas.transfer` (push, pull, sync), :mod:`gaia_cas.remote_deploy`,
:mod:`gaia_cas.remote_pointers` (rollback, promote), :mod:`gaia_cas.remote_retention`
(cleanup), :mod:`gaia_cas.remote_verify` and :mod:`gaia_cas.remote_gc`; each method delegates
with the root's Context. ``name`` None means the root's default remote. Nothing is connected
until a verb runs (obstore is imported then).
"""

from __future__ import annotations


class RemoteVerbs:
    def __init__(self, ctx, name: str | None = None):
        self.ctx = ctx
        self.name = name

    def __repr__(self) -> str:
        return f"RemoteVerbs({self.name or 'default'!r})"

    def push(self, model: str | None = None, *, progress=None) -> list:
        """Upload versions the remote lacks, then merge the manifest (current, channels, aliases
        and metadata only where this store saw their latest change); one PushResult per model,
        a failed one with its ``error``."""
        from . import transfer

        return transfer.push(self.ctx, model, remote=self.name, progress=progress)

    def pull(self, model: str, selector: str | None = None, *, channel: str | None = None, progress=None) -> list:
        """Fetch (every object verified) and move the local pointers to the remote's: current and
        every channel; only ``channel`` with one; nothing with a ``selector``. PullResults."""
        from . import transfer

        return transfer.pull(self.ctx, model, selector, remote=self.name, channel=channel, progress=progress)

    def sync(self, model: str | None = None, *, watch: bool = False, interval: float = 5.0, report=None,
             channel: str | None = None, rounds: int | None = None) -> list:
        """Pull every model (or one) whose remote manifest changed; ``watch`` keeps following."""
        from . import transfer

        return transfer.sync(self.ctx, model, remote=self.name, watch=watch, interval=interval, report=report,
                             channel=channel, rounds=rounds)

    def deploy(self, model: str, path=None, **options):
        """Deploy as the remote's next version (numbered there, by compare-and-swap) and the same
        version here: a RemoteDeployResult. Options as ``Repository.deploy``."""
        from .remote_deploy import deploy_remote

        return deploy_remote(self.ctx, model, path, remote=self.name, **options)

    def rollback(self, model: str, selector: str, *, reason: str | None = None):
        """Move the remote's current by compare-and-swap (nothing local changes): a RemoteRollback."""
        from .remote_pointers import rollback_remote

        return rollback_remote(self.ctx, model, selector, remote=self.name, reason=reason)

    def promote(self, model: str, selector: str, channel: str, *, reason: str | None = None):
        """Point the remote's channel at a version by compare-and-swap: a RemoteRollback."""
        from .remote_pointers import promote_remote

        return promote_remote(self.ctx, model, selector, channel, remote=self.name, reason=reason)

    def plan_cleanup(self, models: list[str] | None = None, **rules) -> list:
        """What ``cleanup`` would remove on the remote (``keep``, ``older_than``): ModelPlans."""
        from .remote_retention import plan_cleanup_remote

        return plan_cleanup_remote(self.ctx, models, remote=self.name, **rules)

    def cleanup(self, models: list[str] | None = None, **options) -> list:
        """The remote's own retention (``keep``, ``older_than``, ``dry_run``, ``reason``), by
        compare-and-swap, with local retention's rules; objects are left to ``gc``."""
        from .remote_retention import cleanup_remote

        return cleanup_remote(self.ctx, models, remote=self.name, **options)

    def verify(self, model: str | None = None, *, sample: float | None = None, repair: bool = False):
        """Re-hash, on the remote, what its manifests reach; a VerifyReport. Nothing is changed
        unless ``repair``: then what is bad there is re-uploaded from this store's good bytes."""
        from .remote_verify import verify_remote

        return verify_remote(self.ctx, model, remote=self.name, sample=sample, repair=repair)

    def gc(self, *, grace=None, dry_run: bool = False):
        """Delete what no remote manifest reaches, older than ``grace`` (default 24 h): a RemoteGcPlan."""
        from . import remote_gc

        return remote_gc.gc_remote(self.ctx, self.name, grace=remote_gc.DEFAULT_GRACE if grace is None else grace,
                                   dry_run=dry_run)

    def manifest(self, model: str):
        """The remote's manifest of ``model`` (ModelNotFoundError if it has none)."""
        from .errors import ModelNotFoundError
        from .transfer import local_name, open_remote

        _, _, manifests = open_remote(self.ctx, self.name)
        model = local_name(self.ctx, model)  # a local alias names the same model there
        snap = manifests.snapshot(model)
        if snap is None:
            raise ModelNotFoundError(model, manifests.names())
        return snap.manifest
