"""deploy --remote: the remote numbers the version, and the local store records the same one.

The order, and why it is safe when two trainers deploy the same model at once:

1. Read the remote manifest (its ETag is the snapshot's token); when the remote could refuse
   the content (its history holds a rollback), hash the source first without writing anything
   (a dry run), so a refusal -- content the remote's operator rolled back from, a number the
   remote already gave out -- changes nothing anywhere.
2. Deploy locally under the first number free in both stores (the remote's ``assigned()`` and
   the local one's): the local store commits the version (number, deployment id, user, host)
   and its current, as a plain deploy would.
3. Upload the objects the remote lacks, children first (:func:`remote_objects.upload_versions`).
4. Compare-and-swap the remote manifest: add the version and make it current. On a lost race
   (412: another trainer committed first) ``storage.update`` reads again and decides again; if
   the winner took our number, the next free one is taken there.
5. The local store adopts the remote's number (:func:`transfer.adopt`; a lost race shows in
   both histories as ``renumbered_from`` there and ``renumber`` here) and records which change
   of the remote's current it has seen, so its next push is in step.

Nothing is lost in a race: each trainer's version is added by a swap against the manifest that
already holds the other's, and numbers are decided against that manifest. If the remote part
fails (network, a rollback that landed meanwhile), the version stays committed locally and a
later ``push`` sends it; the error says so.
"""

from __future__ import annotations

from collections import namedtuple

from . import clock
from .errors import GaiaCasError, InvalidInputError, ModelNotFoundError, RolledBackContentError
from .manifest import record
from .names import check_model_name
from .remote_objects import upload_versions
from .transfer import (MAX_RESTARTS, Markers, adopt, cleaned_identities, identity, in_step_after, next_free,
                       open_remote, seen_markers)
from .versions import format_version, parse_version, version_key


class RemoteDeployResult(namedtuple("RemoteDeployResult", "local remote version previous objects_sent bytes_sent "
                                                          "renumbered_from unchanged")):
    """``local``: the local DeployResult (its version is the number first given, before any
    renumbering); ``version``: the number the version has in both stores now."""

    __slots__ = ()

    def to_json(self) -> dict:
        return {**self.local.to_json(), "version": self.version, "remote": self.remote,
                "remote_previous": self.previous, "objects_sent": self.objects_sent, "bytes_sent": self.bytes_sent,
                "renumbered_from": self.renumbered_from, "unchanged": self.unchanged}


class RemotePartFailedError(GaiaCasError):
    """The version is committed locally, but the remote did not take it (a later push sends it)."""


def deploy_remote(ctx, name: str, path=None, *, remote: str | None = None, bump_kind: str = "minor",
                  version: str | None = None, force: bool = False, dry_run: bool = False,
                  **options) -> RemoteDeployResult:
    """Deploy ``path`` as the model's next version on the remote and here (see the module)."""
    from .deploy import deploy
    from .history import describe_rollback, rolled_back_from

    remote_cfg, robjects, rmanifests = open_remote(ctx, remote)
    try:
        model = ctx.model(name)
    except ModelNotFoundError:
        model = check_model_name(name)
    snap = rmanifests.snapshot(model)
    rm = snap.manifest if snap else None
    explicit = format_version(parse_version(version)) if version is not None else None
    if explicit is not None and rm is not None and explicit in rm.assigned():
        raise InvalidInputError(f"version {explicit} of '{model}' was already assigned on remote '{remote_cfg.name}'; "
                                "version numbers are never reused")
    # The content is hashed first (a dry run) only when the remote could refuse it: that costs
    # a second read of the source, at hashing speed, never an upload.
    refusable = rm is not None and not force and any(e.action == "rollback" for e in rm.history)
    if dry_run or refusable:
        probe = deploy(ctx, model, path, bump_kind=bump_kind, version=version, force=force, dry_run=True,
                       **options)
        found = rolled_back_from(rm, probe.hash) if refusable else None
        if found is not None:
            raise RolledBackContentError(model, found[0], found[1], describe_rollback(model, *found)
                                         + f" (on remote '{remote_cfg.name}')")
    local = ctx.manifests.read(model)
    number = explicit or next_free(_highest(rm, local), _taken(rm, local), bump_kind)
    if dry_run:
        unchanged = False
        if probe.unchanged:  # identical to the local current: that version, under the remote's number if it has it
            current = local.current_version()
            number = next((v.version for v in (rm.versions if rm else ()) if identity(v) == identity(current)),
                          current.version if rm is None or current.version not in rm.assigned() else number)
            unchanged = rm is not None and rm.current == number
        return RemoteDeployResult(probe._replace(version=number), remote_cfg.name, number,
                                  rm.current if rm else None, 0, 0, None, unchanged)
    result = deploy(ctx, model, path, bump_kind=bump_kind, version=number, force=force, **options)
    local = ctx.manifest(model)
    mine = local.find(result.version)
    seen = seen_markers(local, remote_cfg.name)
    sent = [0, 0]
    try:
        committed, outcome = _publish(rmanifests, robjects, ctx, local, mine, seen, bump_kind, force, sent)
    except GaiaCasError as exc:
        raise RemotePartFailedError(f"{exc} -- {model} {mine.version} is deployed here but not on remote "
                                    f"'{remote_cfg.name}'; 'gaia-cas push {model}' sends it") from exc
    numbers = {identity(mine): outcome["number"]}
    adopt(ctx, model, remote_cfg.name, numbers, in_step_after(local, committed, numbers, seen), seen,
          0 if outcome["unchanged"] else 1)
    renumbered = mine.version if outcome["number"] != mine.version else None
    if renumbered or not outcome["unchanged"]:
        ctx.oplog.write("gaia_cas.deploy", f"deployed {model} {outcome['number']} on remote {remote_cfg.name}: "
                        f"current {outcome['previous'] or '-'} -> {outcome['number']}"
                        + (f" (renumbered from {renumbered}: the remote gave that number out meanwhile)"
                           if renumbered else ""))
    return RemoteDeployResult(result, remote_cfg.name, outcome["number"], outcome["previous"], sent[0], sent[1],
                              renumbered, outcome["unchanged"] and result.unchanged)


def _highest(rm, local) -> str | None:
    values = [m.highest for m in (rm, local) if m is not None and m.highest]
    return max(values, key=version_key) if values else None


def _taken(rm, local) -> set:
    return (rm.assigned() if rm is not None else set()) | (local.assigned() if local is not None else set())


def _publish(rmanifests, robjects, ctx, local, mine, seen: Markers, bump_kind: str, force: bool, sent: list):
    """Upload, then swap the remote manifest; restarted when a remote cleanup dropped a version
    the upload relied on (see transfer's push)."""
    from .history import describe_rollback, rolled_back_from

    model = local.model
    user, host = clock.who()
    there_before = None  # whether the remote held the version before this deploy's first swap
    for _ in range(MAX_RESTARTS):
        snap = rmanifests.snapshot(model)
        relied = {v.tree for v in snap.manifest.versions} if snap else set()
        there = snap is not None and identity(mine) in {identity(v) for v in snap.manifest.versions}
        there_before = there if there_before is None else there_before
        if not there:
            objects, size = upload_versions(ctx, [mine], relied, robjects)
            sent[0] += objects
            sent[1] += size
        outcome = {}

        def change(rm) -> None:
            outcome.clear()
            if not relied <= {v.tree for v in rm.versions}:
                raise _Restart()
            existing = next((v for v in rm.versions if identity(v) == identity(mine)), None)
            if existing is not None and not there_before:
                # Added by this deploy's own swap, whose answer was lost (the retry met 412) and
                # which another writer has built on since (even a rollback away from it): done --
                # making it current again would take current back from whoever moved it after us.
                previous = next((e.before for e in rm.events_newest_first()
                                 if e.action == "deploy" and e.version == existing.version), rm.current)
                outcome.update(number=existing.version, previous=previous, unchanged=False)
                return
            if not force:
                found = rolled_back_from(rm, mine.tree)
                if found is not None:
                    raise RolledBackContentError(model, found[0], found[1], describe_rollback(model, *found))
            at = clock.stamp(clock.now())
            if existing is not None:
                number = existing.version
            elif identity(mine) in cleaned_identities(rm):
                raise InvalidInputError(f"version {mine.version} of '{model}' was removed from the remote by a "
                                        "cleanup; deploy with --force to make a new version of it")
            else:
                number = mine.version
                if number in rm.assigned():  # a lost race: the winner took it
                    number = next_free(_highest(rm, local), _taken(rm, local) | rm.assigned(), bump_kind)
                rm.versions.append(mine.replace(version=number, broken=False, pinned=False))
                rm.new_trees.add(mine.tree)
                if rm.highest is None or version_key(number) > version_key(rm.highest):
                    rm.highest = number
            outcome.update(number=number, previous=rm.current, unchanged=existing is not None and rm.current == number)
            if outcome["unchanged"]:
                return
            before = rm.current
            rm.current = number
            details = {"via": "deploy", "tree": mine.tree}
            if number != mine.version:
                details["renumbered_from"] = mine.version
            record(rm, "deploy", version=number, before=before, at=at, user=mine.user or user,
                   host=mine.host or host, reason=mine.reason, details=details)

        try:
            return rmanifests.update(model, change, create=True), outcome
        except _Restart:
            continue
    from .storage import StaleTokenError

    raise StaleTokenError(model)


class _Restart(Exception):
    """A remote cleanup dropped a version this upload relied on."""
