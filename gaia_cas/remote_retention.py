"""cleanup --remote: the remote's own retention, by compare-and-swap.

The rules are local retention's (:mod:`gaia_cas.retention`: a version is kept if it is current,
a channel's, pinned, among the newest N or younger than the age limit), applied by its own
:func:`~gaia_cas.retention.plan_model` to the remote manifest. The remote's policy is its own:
retention settings never travel with a push, so a trainer's ``keep 3`` stays on the trainer, and
a local ``cleanup`` never touches a remote.

As locally, the plan is made again on the manifest each swap reads, and only versions both
plans remove go; the history row records their identities (tree, deployment id, user, host), so
a push from a store that still holds one never sends it back. Objects are left to
``gc --remote``; a push whose upload relied on a version a cleanup dropped meanwhile checks its
objects again (docs/design.md, The S3 remote).
"""

from __future__ import annotations

from datetime import datetime

from . import clock
from .errors import GaiaCasError, ModelNotFoundError, NotFoundError
from .manifest import record
from .names import check_model_name, check_text
from .retention import Policy, plan_model
from .transfer import identity, open_remote
from .versions import version_key


def _models(ctx, rmanifests, names):
    if not names:
        return rmanifests.names()
    models = []
    for name in names:
        try:
            models.append(ctx.model(name))  # a local alias names the same model there
        except NotFoundError:
            models.append(check_model_name(name))
    return models


def plan_cleanup_remote(ctx, names: list[str] | None = None, *, remote: str | None = None, keep: int | None = None,
                        older_than: str | None = None, now: datetime | None = None) -> list:
    """What a cleanup of the remote would remove, model by model (ModelPlans, as local)."""
    _, _, rmanifests = open_remote(ctx, remote)
    return _plans(ctx, rmanifests, names, keep, older_than, now or clock.now())


def _plans(ctx, rmanifests, names, keep, older_than, now) -> list:
    plans = []
    for model in _models(ctx, rmanifests, names):
        snap = rmanifests.snapshot(model)
        if snap is None:
            raise ModelNotFoundError(model, rmanifests.names())
        plans.append(plan_model(snap.manifest, Policy.of(snap.manifest, keep, older_than), now))
    return plans


def cleanup_remote(ctx, names: list[str] | None = None, *, remote: str | None = None, keep: int | None = None,
                   older_than: str | None = None, dry_run: bool = False, reason: str | None = None) -> list:
    """Apply retention to the remote's manifests; one ModelPlan per model (``removed`` set once
    executed, ``error`` when that model's swap failed -- the others are still cleaned)."""
    check_text(reason, "--reason")
    remote_cfg, _, rmanifests = open_remote(ctx, remote)
    now = clock.now()
    plans = _plans(ctx, rmanifests, names, keep, older_than, now)
    if dry_run:
        return plans
    user, host = clock.who()
    for plan in plans:
        plan.removed = []
        if not plan.remove:
            continue

        def change(rm, plan=plan) -> None:
            fresh = plan_model(rm, plan.policy, now)  # decided again on the manifest this swap read
            plan.removed = sorted(set(plan.remove) & set(fresh.remove), key=version_key)
            if not plan.removed:
                return
            gone = set(plan.removed)
            dropped = [v for v in rm.versions if v.version in gone]
            rm.versions = [v for v in rm.versions if v.version not in gone]
            record(rm, "cleanup", version=None, before=rm.current, at=clock.stamp(now), user=user, host=host,
                   reason=reason, details={"removed": plan.removed, "policy": plan.policy.describe(),
                                           "identities": [list(identity(v)) for v in dropped]})

        try:
            rmanifests.update(plan.model, change)
        except GaiaCasError as exc:
            plan.error, plan.removed = str(exc), []  # reported; the other models are still cleaned
            continue
        if plan.removed:
            ctx.oplog.write("gaia_cas.retention", f"cleanup {plan.model} on remote {remote_cfg.name} "
                            f"({plan.policy.describe()}): removed {', '.join(plan.removed)} by {user}@{host}"
                            + (f" reason={reason!r}" if reason else ""))
    return plans
