"""Retention: which versions a cleanup removes, and which rule keeps each survivor.

A version is kept if ANY rule keeps it -- it is current or a channel's version, it is pinned, it is among the newest
N deployed, or it is younger than the age limit -- so rules combine by union and can never
conspire to remove something one of them protects. Planning is pure: it reads a manifest and
returns a plan; :func:`cleanup` executes it under each model's lock.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from . import clock, defaults
from .errors import GaiaCasError, InvalidInputError
from .manifest import Manifest, moment, record
from .names import check_text
from .versions import version_key

DEFAULT_KEEP = defaults.KEEP
_AGE_RE = re.compile(r"(\d+)\s*([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_age(text: str) -> timedelta:
    """``30d``, ``12h``, ``2w``, ``90m``, ``45s``, ``0``; combinations like ``1d12h`` work too."""
    value = text.strip().lower() if isinstance(text, str) else ""
    if value == "0":
        return timedelta(0)
    if not value or _AGE_RE.sub("", value).strip():
        raise InvalidInputError(f"invalid age {text!r}: use a number and a unit s, m, h, d or w (e.g. 30d, 12h)")
    seconds = sum(int(n) * _UNITS[unit] for n, unit in _AGE_RE.findall(value))
    return timedelta(seconds=seconds)


@dataclass(frozen=True)
class Policy:
    keep: int = DEFAULT_KEEP
    keep_within: str | None = None

    def __post_init__(self):
        if not isinstance(self.keep, int) or isinstance(self.keep, bool) or self.keep < 0:
            raise InvalidInputError(f"--keep must be a whole number, 0 or more, not {self.keep!r}")
        if self.keep_within is not None:
            parse_age(self.keep_within)

    @classmethod
    def of(cls, manifest: Manifest, keep: int | None = None, keep_within: str | None = None) -> "Policy":
        """The model's stored policy, with the explicit options of this run taking precedence."""
        stored = manifest.config.retention
        return cls(
            keep=keep if keep is not None else stored.get("keep", DEFAULT_KEEP),
            keep_within=keep_within if keep_within is not None else stored.get("keep_within"),
        )

    def describe(self) -> str:
        text = f"keep newest {self.keep}"
        return text + (f", keep younger than {self.keep_within}" if self.keep_within else "")


@dataclass
class VersionDecision:
    version: str
    created_at: str
    size_bytes: int
    reasons: list[str] = field(default_factory=list)

    @property
    def kept(self) -> bool:
        return bool(self.reasons)


@dataclass
class ModelPlan:
    model: str
    policy: Policy
    decisions: list[VersionDecision]  # newest first
    removed: list[str] | None = None  # set once executed: what was actually removed
    error: str | None = None  # set if executing this model's plan failed (the others still ran)

    @property
    def remove(self) -> list[str]:
        return [d.version for d in self.decisions if not d.kept]

    def to_json(self) -> dict:
        doc = {
            "model": self.model, "policy": {"keep": self.policy.keep, "keep_within": self.policy.keep_within},
            "remove": self.remove,
            "keep": [{"version": d.version, "reasons": d.reasons} for d in self.decisions if d.kept],
        }
        if self.removed is not None:
            doc["removed"] = self.removed
        if self.error is not None:
            doc["error"] = self.error
        return doc


def plan_model(manifest: Manifest, policy: Policy, now: datetime) -> ModelPlan:
    cutoff = now - parse_age(policy.keep_within) if policy.keep_within else None
    decisions = []
    channels: dict[str, list[str]] = {}
    for channel, number in manifest.channel_versions().items():
        if channel != "current":
            channels.setdefault(number, []).append(channel)
    for rank, version in enumerate(reversed(manifest.versions)):  # newest deployed first
        reasons = []
        if version.version == manifest.current:
            reasons.append("current")
        reasons += [f"channel {c}" for c in sorted(channels.get(version.version, ()))]
        if version.pinned:
            reasons.append("pinned")
        if rank < policy.keep:
            reasons.append(f"newest {policy.keep}")
        if cutoff is not None and moment(version.created_at) > cutoff:
            reasons.append(f"younger than {policy.keep_within}")
        decisions.append(VersionDecision(version.version, version.created_at, version.size_bytes, reasons))
    return ModelPlan(manifest.model, policy, decisions)


# -- executing a plan ----------------------------------------------------------------------------

def plan_cleanup(ctx, names: list[str] | None = None, *, keep: int | None = None,
                 older_than: str | None = None, now: datetime | None = None) -> list:
    """What a cleanup would remove, model by model, and which rule keeps each survivor."""
    now = now or clock.now()
    models = [ctx.model(n) for n in names] if names else ctx.models()
    return [plan_model(m, Policy.of(m, keep, older_than), now) for m in (ctx.manifest(x) for x in models)]


def cleanup(ctx, names: list[str] | None = None, *, keep: int | None = None, older_than: str | None = None,
            dry_run: bool = False, reason: str | None = None) -> list:
    """Apply retention: plan, then (unless ``dry_run``) drop the planned versions from manifests.

    Under each model's lock the plan is made again on the fresh manifest, and only versions
    that both plans remove go: a version that became current or pinned meanwhile, or a new
    deploy, is never removed by a plan made before it. Objects are left to gc.
    """
    check_text(reason, "--reason")
    now = clock.now()
    plans = plan_cleanup(ctx, names, keep=keep, older_than=older_than, now=now)
    if dry_run:
        return plans
    user, host = clock.who()
    for plan in plans:
        plan.removed = []
        if not plan.remove:
            continue
        try:
            _execute_cleanup(ctx, plan, now, user, host, reason)
        except GaiaCasError as exc:
            plan.error = str(exc)  # reported; the other models are still cleaned
    return plans


def _execute_cleanup(ctx, plan, now, user, host, reason) -> None:
    """Drop the versions both the plan and a fresh plan under the model's lock remove."""
    with ctx.writing(), ctx.manifests.edit(plan.model) as manifest:
        fresh = plan_model(manifest, plan.policy, now)
        plan.removed = sorted(set(plan.remove) & set(fresh.remove), key=version_key)
        if plan.removed:
            gone = set(plan.removed)
            manifest.versions = [v for v in manifest.versions if v.version not in gone]
            record(manifest, "cleanup", version=None, before=manifest.current,
                   at=clock.stamp(now), user=user, host=host, reason=reason,
                   details={"removed": plan.removed, "policy": plan.policy.describe()})
    if plan.removed:
        ctx.oplog.write("gaia_cas.retention",
                         f"cleanup {plan.model} ({plan.policy.describe()}): removed "
                         f"{', '.join(plan.removed)} by {user}@{host}" + (f" reason={reason!r}" if reason else ""))

