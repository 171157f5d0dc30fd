"""Removing by hand: one version from a model, or a whole model.

``remove MODEL VERSION`` is a manifest edit under the model's lock, as a cleanup is: the version
leaves the manifest, the history records who removed it and why, and its files stay in the
store until gc finds that nothing reaches them. What is served or was meant to be kept is never
removed: the current version, a channel's version, a pinned version -- each refusal says why and
what to do first. Its number is never given out again (the history keeps it assigned).

``model remove NAME`` forgets a model, as ``git branch -d`` forgets a branch: it refuses a model
that still serves something (a current version, a channel) or keeps something on purpose (a
pinned version), and ``--force`` removes it anyway, as ``git branch -D`` does. The model's
links go first, then its manifest (the one commit point, an unlink under the model's lock), so
no state ever has a link of gaia-cas's pointing at a model that no longer exists; a link that
was not gaia-cas's (a legacy ``current`` into the old layout) is left alone. The model's history
goes with its manifest; the operation log keeps one line naming every version and tree it had.
gc then frees the files no other model shares.
"""

from __future__ import annotations

import os
from collections import namedtuple

from . import clock, links
from .atomic import fsync_dir
from .errors import InvalidInputError, ModelNotFoundError
from .interrupts import held_back
from .locking import hold_lock
from .manifest import record
from .names import check_text
from .selectors import select


class Removed(namedtuple("Removed", "model versions links model_removed")):
    """What a removal took away: the version numbers, the links dropped, and whether the whole
    model went."""

    __slots__ = ()

    def to_json(self) -> dict:
        return {"model": self.model, "removed_versions": list(self.versions), "links_removed": list(self.links),
                "model_removed": self.model_removed}


def remove(ctx, name: str, selector: str | None = None, *, force: bool = False,
           reason: str | None = None) -> Removed:
    """Remove one version (``selector``) from model ``name``, or without one the whole model
    (``force`` to remove one that still has a current version, a channel or a pinned version)."""
    check_text(reason, "--reason")
    if selector is None:
        return remove_model(ctx, name, force=force, reason=reason)
    if force:
        raise InvalidInputError("--force removes a whole model; a version that is current, on a channel or "
                                "pinned is never removed (move or unpin it first)")
    return remove_version(ctx, name, selector, reason=reason)


def _holding(manifest, version) -> str | None:
    """Why ``version`` must stay, with what to do instead; None when nothing holds it."""
    model = manifest.model
    if version.version == manifest.current:
        return (f"{version.version} is the current version of '{model}'; make another one current first "
                f"('gaia-cas rollback {model} VERSION' or a deploy)")
    channels = sorted(c for c, ch in manifest.channels.items() if ch.get("version") == version.version)
    if channels:
        return (f"{version.version} of '{model}' is on channel {', '.join(channels)}; promote another version "
                f"there first ('gaia-cas promote {model} VERSION --to {channels[0]}')")
    if version.pinned:
        return f"{version.version} of '{model}' is pinned; unpin it first ('gaia-cas unpin {model} {version.version}')"
    return None


def remove_version(ctx, name: str, selector: str, *, reason: str | None = None) -> Removed:
    model = ctx.model(name)
    held = _holding(ctx.manifest(model), select(ctx.manifest(model), selector))  # refused before any lock
    if held:
        raise InvalidInputError(f"not removed: {held}")
    user, host = clock.who()
    with ctx.writing(), ctx.manifests.edit(model) as manifest:
        version = select(manifest, selector)  # again under the lock: it may have become current
        held = _holding(manifest, version)
        if held:
            raise InvalidInputError(f"not removed: {held}")
        manifest.versions = [v for v in manifest.versions if v.version != version.version]
        record(manifest, "remove", version=version.version, before=manifest.current,
               at=clock.stamp(clock.now()), user=user, host=host, reason=reason,
               details={"removed": [version.version], "tree": version.tree})
    ctx.oplog.write("gaia_cas.removal", f"removed {model} {version.version} (tree {version.tree}) by {user}@{host}"
                     + (f" reason={reason!r}" if reason else ""))
    return Removed(model, [version.version], [], False)


def _keeps(manifest) -> list[str]:
    """What a model still serves or keeps on purpose, in words."""
    found = []
    if manifest.current:
        found.append(f"current version {manifest.current}")
    found += [f"channel {c} ({ch.get('version')})" for c, ch in sorted(manifest.channels.items())]
    pinned = [v.version for v in manifest.versions if v.pinned]
    if pinned:
        found.append(f"pinned {', '.join(pinned)}")
    return found


def remove_model(ctx, name: str, *, force: bool = False, reason: str | None = None) -> Removed:
    model = ctx.model(name)
    user, host = clock.who()
    with ctx.claims(), ctx.writing(), hold_lock(ctx.layout.lock_path(model), ctx.manifests.lock_timeout):
        manifest = ctx.manifests.read(model)  # as it is now, under its lock
        if manifest is None:
            raise ModelNotFoundError(model, ctx.models())
        keeps = _keeps(manifest)
        if keeps and not force:
            raise InvalidInputError(f"model '{model}' still has {'; '.join(keeps)}: 'gaia-cas model remove {model} "
                                    "--force' removes it all the same, its links with it")
        versions = [(v.version, v.tree) for v in manifest.versions]
        dropped = []
        with held_back():  # links, then the manifest: a stop request waits for both
            for link, _ in ctx.link_targets(manifest).values():
                if links.drop_link(ctx.layout, link):
                    dropped.append(link)
            os.unlink(ctx.layout.manifest_path(model))
            fsync_dir(ctx.layout.manifests)
    ctx.oplog.write("gaia_cas.removal", f"removed model {model}"
                     + (f" (it had {'; '.join(keeps)}; --force)" if keeps else "")
                     + f": versions {', '.join(f'{n}={t}' for n, t in versions) or 'none'}; links removed "
                       f"{', '.join(dropped) or 'none'}; gc frees what no other model uses; by {user}@{host}"
                     + (f" reason={reason!r}" if reason else ""))
    return Removed(model, [n for n, _ in versions], dropped, True)
