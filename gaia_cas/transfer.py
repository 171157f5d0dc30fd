"""push and pull: moving versions between a root and a remote (gaia_cas.s3, gaia_cas.remotes).

push uploads what the remote lacks children first -- blobs, then trees bottom-up, then the
manifest -- so an object a remote manifest reaches is on the remote, and is never checked
again. The manifest is merged by compare-and-swap (``storage.update``): on a lost race the
merge is decided again against the manifest that won.

A version is the same version in two stores when its tree, deployment id, user and host are
the same; its number may differ. A local version whose number the remote already gave to other
content gets the next free number there, and the local store adopts it (both histories say so).

The remote's ``current`` -- and each channel, and the model's aliases and metadata -- moves only
from a store that has seen the remote's latest change of it (a pull, or a push that left both
in step, records which change it saw: :class:`Markers`): a trainer who never pulled cannot move
production back to what it deployed an hour ago. A pointer left alone is that model's error;
the versions are sent all the same. Source folders, link paths and retention never travel.

pull verifies every object against its oid before it enters the local store, then publishes
like a deploy: staging, install, materialize, commit (the tree checked complete), link. It
moves the local current and every channel the remote has to the remote's (only one with
``channel``; none when a VERSION is asked for), and takes the remote's aliases and metadata when
they changed there since this store last saw them.
"""

from __future__ import annotations

from collections import namedtuple

from . import clock
from .errors import CorruptionError, InvalidInputError, NotFoundError
from .manifest import record
from .names import check_model_name
from .progress import CountedObjects, Tally
from .versions import bump, version_key

from .remote_objects import LocalChunks, fetch_tree, keep_recipes, upload_versions


class PushResult(namedtuple("PushResult", "model versions_sent objects_sent bytes_sent renumbered current "
                                          "current_moved note channels_moved settings_moved error",
                            defaults=({}, False, None))):
    """One model's push. ``error`` is set when it failed (the other models of ``push all`` still
    ran) or when a pointer was left alone because this store had not seen its latest change: the
    versions were sent all the same, and the rest of the fields say what was done."""

    __slots__ = ()

    @classmethod
    def failed(cls, model: str, error: str) -> "PushResult":
        return cls(model, 0, 0, 0, {}, None, False, None, error=error)

    def to_json(self) -> dict:
        return {"model": self.model, "versions_sent": self.versions_sent, "objects_sent": self.objects_sent,
                "bytes_sent": self.bytes_sent, "renumbered": self.renumbered, "remote_current": self.current,
                "current_moved": self.current_moved, "channels_moved": self.channels_moved,
                "settings_moved": self.settings_moved, "note": self.note, "error": self.error}


class PullResult(namedtuple("PullResult", "model version objects_received bytes_received current previous "
                                          "changed channels_moved settings_changed error",
                            defaults=({}, False, None))):
    """One model's pull. ``error`` is set when it failed and the other models of ``pull all``
    or ``sync`` still ran (nothing of the failed one was published)."""

    __slots__ = ()

    @classmethod
    def failed(cls, model: str, error: str) -> "PullResult":
        return cls(model, None, 0, 0, None, None, False, error=error)

    def to_json(self) -> dict:
        return {"model": self.model, "version": self.version, "objects_received": self.objects_received,
                "bytes_received": self.bytes_received, "current": self.current, "previous": self.previous,
                "changed": self.changed, "channels_moved": self.channels_moved,
                "settings_changed": self.settings_changed, "error": self.error}


# What a store has seen of a remote: the generation of the remote's latest change of current, of
# each channel, and of the model's settings, as recorded by the store's last push or pull.
Markers = namedtuple("Markers", "current channels settings")
SETTINGS_ACTIONS = ("model-add", "model-set", "settings")


def identity(version) -> tuple:
    """What makes two versions in two stores the same version, whatever their numbers."""
    return (version.tree, version.deployment_id, version.user, version.host)


def pointer_marker(manifest, channel: str | None = None) -> int:
    """The generation of the manifest's latest change of current (``channel`` None) or of that
    channel (0: never)."""
    for event in manifest.events_newest_first():
        if event.details.get("channel") != channel:
            continue
        if event.before != event.after:
            return event.generation
    return 0


def current_marker(manifest) -> int:
    """The generation of the manifest's latest change of current (0: never)."""
    return pointer_marker(manifest)


def settings_marker(manifest) -> int:
    """The generation of the latest change of the model's settings (0: never)."""
    return next((e.generation for e in manifest.events_newest_first() if e.action in SETTINGS_ACTIONS), 0)


def seen_markers(manifest, remote: str) -> Markers:
    """What this local manifest last saw of the remote (None where it never synced)."""
    if manifest is not None:
        for event in manifest.events_newest_first():
            if event.action in ("push", "pull") and event.details.get("remote") == remote:
                d = event.details
                channels = d.get("remote_channels")
                channels = {k: v for k, v in channels.items() if _is_generation(v)} \
                    if isinstance(channels, dict) else {}
                current, settings = d.get("remote_current"), d.get("remote_settings")
                return Markers(current if _is_generation(current) else None, channels,
                               settings if _is_generation(settings) else None)
    return Markers(None, {}, None)


def seen_marker(manifest, remote: str) -> int | None:
    """Which change of the remote's current this local manifest last saw (None: never synced)."""
    return seen_markers(manifest, remote).current


def _is_generation(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def settings_of(manifest) -> tuple:
    """The model settings that travel between stores: aliases and default metadata. The source
    folder and the link paths are this machine's, and retention is each store's own decision
    (a trainer's keep-3 never becomes the team remote's)."""
    return sorted(manifest.config.aliases), manifest.config.metadata


def cleaned_identities(manifest) -> set:
    """The versions a remote cleanup removed (its history rows carry their identities): a push
    never sends them back."""
    gone = set()
    for event in manifest.history:
        keys = event.details.get("identities") if event.action == "cleanup" else None
        for key in keys if isinstance(keys, list) else ():  # a row another user of the bucket wrote
            if isinstance(key, list) and len(key) == 4 and all(k is None or isinstance(k, str) for k in key):
                gone.add(tuple(key))
    return gone


def open_remote(repo, remote_name):
    """(Remote, object store, manifest store) of the named (or default) remote."""
    return _open(repo, remote_name)


def _open(repo, remote_name):
    from . import remotes

    remote = remotes.get(repo, remote_name)
    objects, manifests = remote.open()
    return remote, objects, manifests


class _RemoteCleaned(Exception):
    """A remote cleanup dropped a version this push relied on to know what the remote holds."""


MAX_RESTARTS = 5


# -- push ----------------------------------------------------------------------------------

def push(repo, name: str | None = None, *, remote: str | None = None, progress=None) -> list[PushResult]:
    """Push one model, or every model (``None``/``"all"``): one PushResult per model. With
    several models, one that fails is reported in its result's ``error`` and the others still
    go; a single model's failure raises. ``progress(done, None)`` hears the bytes uploaded (the
    total is not known in advance)."""
    from .errors import GaiaCasError

    remote_cfg, objects, manifests = _open(repo, remote)
    tally = None if progress is None else Tally(progress, None)
    objects = objects if tally is None else CountedObjects(objects, tally)
    try:
        if name not in (None, "all"):
            return [_push_model(repo, repo.model(name), remote_cfg.name, objects, manifests)]
        results = []
        for model in repo.models():
            try:
                results.append(_push_model(repo, model, remote_cfg.name, objects, manifests))
            except GaiaCasError as exc:
                results.append(PushResult.failed(model, str(exc)))
        return results
    finally:
        if tally is not None:
            tally.finish()


def _push_model(repo, model, remote_name, robjects, rmanifests) -> PushResult:
    local = repo.manifest(model)
    seen = seen_markers(local, remote_name)
    objects_sent = bytes_sent = 0
    cut: list = []  # recipes cut from local files: kept here once the push committed
    for _ in range(MAX_RESTARTS):
        snap = rmanifests.snapshot(model)
        rm = snap.manifest if snap else None
        on_remote = {identity(v) for v in rm.versions} if rm else set()
        gone = cleaned_identities(rm) if rm else set()
        relied = {v.tree for v in rm.versions} if rm else set()
        pending = [v for v in local.versions if identity(v) not in on_remote and identity(v) not in gone
                   and not v.broken]
        if pending:
            sent_objects, sent_bytes = upload_versions(repo, pending, relied, robjects, cut)
            objects_sent += sent_objects
            bytes_sent += sent_bytes
        outcome = {}
        clash = _alias_clash(rmanifests, model, settings_of(local)[0], rm)
        try:
            # The snapshot just read serves the first attempt: a nothing-changed push is one GET.
            committed = rmanifests.update(
                model, lambda rm: _merge_pushed(rm, local, pending, relied, seen, outcome, clash), create=True,
                read=snap)
        except _RemoteCleaned:
            continue  # what the remote holds is decided again, and re-checked
        break
    else:
        from .storage import StaleTokenError

        raise StaleTokenError(model)
    numbers = outcome["numbers"]
    in_step = in_step_after(local, committed, numbers, seen)
    adopt(repo, model, remote_name, numbers, in_step, seen, outcome["sent"])
    keep_recipes(repo, cut)
    problems = outcome["problems"]
    return PushResult(model, outcome["sent"], objects_sent, bytes_sent, outcome["renumbered"], committed.current,
                      outcome["moved"], "; ".join(outcome["notes"]) or None, outcome["channels"],
                      outcome["settings"], "; ".join(problems) + (" (the versions were sent)" if outcome["sent"] else "") if problems else None)


def _alias_clash(rmanifests, model: str, aliases: list, rm) -> str | None:
    """Why the remote cannot take this store's aliases of ``model`` -- one names another remote
    model, or is another remote model's alias (every pull of both would be refused) -- or None.
    Read only when the push would change the remote's aliases."""
    new = set(aliases) - set(rm.config.aliases if rm is not None else ())
    if not new:
        return None
    for other in rmanifests.names():
        if other == model:
            continue
        if other in new:
            return f"the alias '{other}' is a model of its own on the remote"
        snap = rmanifests.snapshot(other)
        taken = new & set(snap.manifest.config.aliases) if snap is not None else set()
        if taken:
            return f"the alias '{sorted(taken)[0]}' belongs to model '{other}' on the remote"
    return None


def _merge_pushed(rm, local, pending, relied, seen: Markers, outcome: dict, clash: str | None = None) -> None:
    """Decide a push against the remote manifest ``rm`` (again on every lost race): add the
    pending versions (renumbered where the remote gave their number to other content), then
    move current, each channel and the settings only where this store has seen the remote's
    latest change of them."""
    outcome.clear()
    if not relied <= {v.tree for v in rm.versions}:
        # A remote cleanup dropped a version since the snapshot: the objects only it reached
        # may be gc's by now, so the push must check them again instead of trusting the walk.
        raise _RemoteCleaned()
    numbers = {identity(v): v.version for v in rm.versions}
    assigned = rm.assigned()
    taken = assigned | set(local.version_numbers()) | local.assigned()
    sent, renumbered = 0, {}
    user, host = clock.who()
    at = clock.stamp(clock.now())
    for v in pending:
        key = identity(v)
        if key in numbers:
            continue
        number = v.version
        if number in assigned or number in numbers.values():
            number = next_free(rm.highest or number, taken)
            renumbered[v.version] = number
        taken.add(number)
        rm.versions.append(v.replace(version=number, broken=False))
        if rm.highest is None or version_key(number) > version_key(rm.highest):
            rm.highest = number
        rm.new_trees.add(v.tree)
        details = {"via": "push", "tree": v.tree}
        if number != v.version:
            details["renumbered_from"] = v.version
        record(rm, "deploy", version=number, before=rm.current, at=at, user=v.user or user, host=v.host or host,
               reason=v.reason, details=details)
        numbers[key] = number
        sent += 1
    problems, notes, channels = [], [], {}
    moved = False
    current = local.current_version()
    wanted = numbers.get(identity(current)) if current is not None else None
    if wanted is not None and rm.current != wanted:
        if rm.current is None or (seen.current is not None and seen.current >= pointer_marker(rm)):
            before = rm.current
            rm.current = wanted
            record(rm, "push", version=wanted, before=before, at=at, user=user, host=host, reason=None,
                   details={"tree": current.tree})
            moved = True
        else:
            problems.append(f"the remote's current {rm.current} was set since this store last saw it; not moved "
                            f"to {wanted} (pull first to see it)")
    for channel, entry in sorted(local.channels.items()):
        version = local.find(entry["version"])
        wanted = numbers.get(identity(version)) if version is not None else None
        old = rm.channels.get(channel)
        if wanted is None or (old is not None and old["version"] == wanted):
            continue
        mark = seen.channels.get(channel)
        if old is None or (mark is not None and mark >= pointer_marker(rm, channel)):
            # A link path is this machine's: the remote's channel keeps its own (None when new).
            rm.channels[channel] = {"version": wanted, "link": old["link"] if old else None}
            record(rm, "promote", version=wanted, before=old["version"] if old else None, after=wanted, at=at,
                   user=user, host=host, reason=None, details={"channel": channel, "via": "push"})
            channels[channel] = wanted
        else:
            problems.append(f"the remote's channel {channel} ({old['version']}) was moved since this store last "
                            f"saw it; not moved to {wanted} (pull first to see it)")
    settings = False
    aliases, metadata = settings_of(local)
    if (aliases, metadata) != settings_of(rm):
        latest = settings_marker(rm)  # 0: the remote's settings were never set (a new model)
        if clash is not None and set(aliases) - set(rm.config.aliases):
            notes.append(f"{clash}; the remote's aliases and metadata were left as they are")
        elif latest == 0 or (seen.settings is not None and seen.settings >= latest):
            rm.config = rm.config.replace(aliases=list(aliases), metadata=dict(metadata))
            record(rm, "settings", version=None, before=rm.current, at=at, user=user, host=host, reason=None,
                   details={"via": "push"})
            settings = True
        else:
            notes.append("the remote's aliases and metadata were changed since this store last saw them; left as "
                         "they are (pull first to see them)")
    outcome.update(numbers=numbers, sent=sent, renumbered=renumbered, moved=moved, channels=channels,
                   settings=settings, problems=problems, notes=notes)


def in_step_after(local, committed, numbers: dict, seen: Markers) -> Markers:
    """What the local store has seen of the remote after a push: each pointer the two stores now
    agree on is in step at the remote's latest change of it; the others stay as seen before."""
    current = local.current_version()
    in_current = seen.current
    if committed.current is not None and current is not None and committed.current == numbers.get(identity(current)):
        in_current = pointer_marker(committed)
    channels = dict(seen.channels)
    for channel, entry in committed.channels.items():
        mine = local.channels.get(channel)
        version = local.find(mine["version"]) if mine else None
        if version is not None and numbers.get(identity(version)) == entry["version"]:
            channels[channel] = pointer_marker(committed, channel)
    in_settings = settings_marker(committed) if settings_of(local) == settings_of(committed) else seen.settings
    return Markers(in_current, channels, in_settings)


def next_free(highest: str, taken: set, kind: str = "minor") -> str:
    number = bump(highest, kind)
    while number in taken:
        number = bump(number, "patch")
    return number


def adopt(repo, model, remote_name, numbers: dict, in_step: Markers, seen: Markers, sent: int) -> None:
    """Record the push locally: the numbers the remote gave (renumbering local versions whose
    number was taken there) and which changes of the remote's pointers and settings this store
    has now seen. Nothing is written when neither changed."""
    user, host = clock.who()
    at = clock.stamp(clock.now())
    with repo.writing(), repo.manifests.edit(model, on_commit=repo.sync_link) as lm:
        renames = [(v, numbers[identity(v)]) for v in lm.versions
                   if identity(v) in numbers and numbers[identity(v)] != v.version]
        if not renames and in_step == seen_markers(lm, remote_name):
            return
        # Checked against the numbers the renames leave: a chain (1.0.0 -> 1.1.0 while 1.1.0 -> 1.2.0)
        # is one renumbering, whatever order the versions are listed in.
        existing = set(lm.version_numbers()) - {v.version for v, _ in renames}
        for v, number in renames:
            if number in existing:
                raise InvalidInputError(f"version {v.version} of '{model}' is {number} on the remote, but this store "
                                        f"has another version {number}; push that one first")
            existing.add(number)
        for v, number in renames:
            old = v.version
            v.version = number
            if lm.current == old:
                lm.current = number
            for channel in lm.channels.values():
                if channel["version"] == old:
                    channel["version"] = number
            if lm.highest is None or version_key(number) > version_key(lm.highest):
                lm.highest = number
            record(lm, "renumber", version=number, before=lm.current, at=at, user=user, host=host, reason=None,
                   details={"remote": remote_name, "from": old, "to": number})
        record(lm, "push", version=None, before=lm.current, at=at, user=user, host=host, reason=None,
               details=_marker_details(remote_name, in_step, versions_sent=sent))


def _marker_details(remote_name: str, markers: Markers, **more) -> dict:
    return {"remote": remote_name, "remote_current": markers.current, "remote_channels": dict(markers.channels),
            "remote_settings": markers.settings, **more}


# -- sync: follow the remote ------------------------------------------------------------------

def sync(repo, name: str | None = None, *, remote: str | None = None, watch: bool = False,
         interval: float = 5.0, report=None, rounds: int | None = None, channel: str | None = None) -> list[PullResult]:
    """Pull every model (or one) whose remote manifest changed: each round is one conditional
    GET per manifest (a 304 costs nothing), a pull only on change. With ``watch``, repeat every
    ``interval`` seconds until interrupted (``rounds`` bounds it, for tests); a failure in a
    round is passed to ``report(model, error)`` and the next round tries again, so an inference
    host keeps serving what it has while the remote is down or holds a corrupt object.
    ``report(result)`` is also called with each PullResult that changed something. ``channel``
    is :func:`pull`'s: follow only that channel (models without it on the remote are skipped)."""
    import time

    from .errors import GaiaCasError

    if not interval > 0:
        raise InvalidInputError(f"--interval must be above 0 seconds, not {interval!r}")
    if channel not in (None, "current"):
        from .manifest import check_channel_name

        check_channel_name(channel)
    remote_cfg, objects, manifests = _open(repo, remote)
    if name not in (None, "all"):
        name = _named(repo, name)
    seen: dict[str, object] = {}
    results: list[PullResult] = []
    done = 0
    while True:
        try:
            models = manifests.names() if name in (None, "all") else [name]
        except GaiaCasError as exc:
            if not watch:
                raise
            models = []
            if report is not None:
                report(None, exc)
        for model in models:
            try:
                if model in seen and not manifests.changed(model, seen[model]):
                    continue
                token = manifests.token(model)
                if token is None:
                    continue
                if channel not in (None, "current") and (name in (None, "all")):
                    snap = manifests.snapshot(model)
                    if snap is None or channel not in snap.manifest.channels:
                        seen[model] = token
                        continue
                result = _pull_model(repo, model, None, remote_cfg.name, objects, manifests, channel)
                seen[model] = token
                results.append(result)
                if report is not None and result.changed:
                    report(result, None)
            except GaiaCasError as exc:
                if not watch:
                    if name not in (None, "all"):
                        raise
                    results.append(PullResult.failed(model, str(exc)))  # the other models still go
                    continue
                if report is not None:
                    report(model, exc)
        done += 1
        if not watch or (rounds is not None and done >= rounds):
            return results
        time.sleep(interval)


# -- pull ----------------------------------------------------------------------------------

def pull(repo, name: str, selector: str | None = None, *, remote: str | None = None,
         channel: str | None = None, progress=None) -> list[PullResult]:
    """Fetch from the remote and move the local pointers to match, one PullResult per model.

    Without ``selector`` or ``channel``: the remote's current and every channel's version, then
    the local current and those channels move to the remote's. ``channel``: only that channel's
    version, and only that local channel moves (``"current"``: only current). ``selector``:
    that version, nothing moves. ``"all"``: every remote model (with ``channel``, every model
    that has it). ``progress(done, None)`` hears the bytes downloaded (the total is not known
    in advance)."""
    if selector is not None and channel is not None:
        raise InvalidInputError("give a VERSION or --channel, not both: a VERSION is fetched without moving anything")
    if channel not in (None, "current"):
        from .manifest import check_channel_name

        check_channel_name(channel)
    remote_cfg, objects, manifests = _open(repo, remote)
    if progress is not None:
        objects = CountedObjects(objects, Tally(progress, None))
    if name == "all":
        if selector is not None:
            raise InvalidInputError("'pull all' takes no VERSION: it pulls every model's current version")
        from .errors import GaiaCasError

        results = []
        for model in manifests.names():
            try:
                if channel not in (None, "current"):
                    snap = manifests.snapshot(model)
                    if snap is None or channel not in snap.manifest.channels:
                        continue
                results.append(_pull_model(repo, model, None, remote_cfg.name, objects, manifests, channel))
            except GaiaCasError as exc:  # one bad remote model must not keep a host from the others
                results.append(PullResult.failed(model, str(exc)))
        return results
    return [_pull_model(repo, _named(repo, name), selector, remote_cfg.name, objects, manifests, channel)]


def local_name(repo, name: str) -> str:
    """A local alias names the same model on the remote; any other name is taken as it is."""
    return _named(repo, name)


def _named(repo, name: str) -> str:
    """A local alias names the same model on the remote; any other name is taken as it is."""
    try:
        return repo.model(name)
    except NotFoundError:
        return check_model_name(name)


def _pull_targets(rm, model, selector, channel, remote_name, select) -> tuple[dict, list]:
    """({pointer: version} the pull moves -- "current" or a channel --, [versions to fetch])."""
    if selector is not None:
        return {}, [select(rm, selector)]
    if channel not in (None, "current"):
        entry = rm.channels.get(channel)
        if entry is None:
            raise NotFoundError(f"remote '{remote_name}' has no channel '{channel}' of '{model}'")
        moves = {channel: rm.find(entry["version"])}
    else:
        moves = {"current": select(rm, None)} if rm.current is not None or channel == "current" or \
            not rm.channels else {}
        if channel is None:
            moves.update((name, rm.find(entry["version"])) for name, entry in sorted(rm.channels.items()))
    targets = list({identity(v): v for v in moves.values()}.values())
    return moves, targets


def _pull_model(repo, model, selector, remote_name, robjects, rmanifests, channel=None) -> PullResult:
    from contextlib import ExitStack

    snap = rmanifests.snapshot(model)
    if snap is None:
        raise NotFoundError(f"remote '{remote_name}' has no model '{model}'")
    rm = snap.manifest
    moves, targets = _pull_targets(rm, model, selector, channel, remote_name, repo.select)
    for target in targets:
        if target.broken:
            raise CorruptionError(f"version {target.version} of '{model}' on remote '{remote_name}' is marked broken")
    local = repo.manifests.read(model)
    if local is not None:
        for target in targets:
            clash = local.find(target.version)
            if clash is not None and identity(clash) != identity(target) \
                    and not any(identity(v) == identity(target) for v in local.versions):
                raise InvalidInputError(f"this store's version {target.version} of '{model}' is other content than "
                                        f"the remote's; push first (the remote renumbers it)")
    settings = _settings_to_adopt(repo, model, local, rm, seen_markers(local, remote_name))
    _check_recordable(model, targets, settings, remote_name)
    claims = _check_claims(repo, model, local, moves, settings)  # before a byte is fetched
    for target in targets:
        _check_artifact(repo, robjects, model, target, remote_name)
    received = [0, 0]
    with repo.objects.staging() as staging:
        near = LocalChunks(repo, _local_trees(local))
        for target in targets:
            fetch_tree(repo, robjects, staging, target.tree, received, near)  # no lock held: the long part
        outcome = {}
        with ExitStack() as held:
            if claims:
                # New links or aliases are claims across models, as in 'model add': checked again
                # under the claims lock, taken before the store barrier.
                held.enter_context(repo.claims())
                _check_claims(repo, model, repo.manifests.read(model), moves, settings)
            held.enter_context(repo.writing())
            with repo.manifests.edit(model, create=True, check_tree=repo.check_complete,
                                     on_commit=repo.sync_link) as lm:
                _check_numbers(lm, targets)  # under the model's lock, before a byte is installed
                staging.install()
                for target in targets:
                    repo.materialize(target.tree)
                outcome.update(_merge_pulled(lm, rm, targets, moves, settings, remote_name))
    return PullResult(model, outcome["version"], received[0], received[1], outcome["current"], outcome["previous"],
                      outcome["changed"], outcome["channels"], outcome["settings"])


def _local_trees(local) -> list[str]:
    """The trees whose large files a pull may find its chunks in: the model's current version
    and its newest (a retrain's predecessor)."""
    if local is None or not local.versions:
        return []
    chosen = [local.find(local.current)] if local.current else []
    chosen.append(local.versions[-1])
    return list(dict.fromkeys(v.tree for v in chosen if v is not None))


def _check_numbers(lm, targets) -> None:
    """No version this pull adds has a number a local version holds (a local deploy may have
    taken it while the pull fetched)."""
    for target in targets:
        if lm.find(target.version) is not None and not any(identity(v) == identity(target) for v in lm.versions):
            raise InvalidInputError(f"this store's version {target.version} of '{lm.model}' is other content than "
                                    f"the remote's; push first (the remote renumbers it)")


def _check_recordable(model, targets, settings, remote_name) -> None:
    """What the pull copies into the local manifest is within what a manifest may hold (the
    local commit would refuse it only after the fetch, with the tree already materialized)."""
    from .codec import check_value

    values = {"settings": settings[1] if settings is not None else None,
              "versions": [[v.metadata, v.reason, v.user, v.host, v.source, v.format, v.deployment_id, v.created_at]
                           for v in targets]}
    try:
        check_value(values, f"the manifest of '{model}'")
    except InvalidInputError as exc:
        raise CorruptionError(f"remote '{remote_name}': {exc}; refused") from None


def _check_artifact(repo, robjects, model, target, remote_name) -> None:
    """The remote's version names what its tree holds -- a file artifact a file at the tree's
    top (a link to anything else would dangle), a directory artifact no name -- checked before
    anything is fetched (a file artifact's top tree is read, verified, when not here)."""
    from .trees import DIR, MAX_TREE_BYTES, decode_tree

    if target.artifact == "directory":
        fits = target.name is None
    else:
        if repo.objects.exists(target.tree):
            entries = repo.trees.entries(target.tree)
        else:
            entries = decode_tree(robjects.read(target.tree, MAX_TREE_BYTES), target.tree)
        fits = any(e.name == target.name and e.kind != DIR for e in entries)
    if not fits:
        raise CorruptionError(f"version {target.version} of '{model}' on remote '{remote_name}' names a "
                              f"{target.artifact} {target.name!r:.80} its tree {target.tree} does not hold; refused")


def _check_claims(repo, model, local, moves: dict, settings) -> bool:
    """Check the links and aliases this pull would claim (a new model's link, a new channel's,
    the remote's aliases); whether there are any."""
    from .defaults import LINK

    claims = False
    if local is None:
        try:
            owner = repo.model(model)
        except NotFoundError:
            owner = model
        if owner != model:
            raise InvalidInputError(f"the remote's model '{model}' is an alias of '{owner}' in this store; "
                                    f"change the alias ('gaia-cas model set {owner} --alias ...') to pull it")
        repo.check_link_free(model, "current", repo.layout.default_link(model))
        claims = True
    for pointer in moves:
        if pointer != "current" and (local is None or pointer not in local.channels):
            repo.check_link_free(model, pointer, LINK.format(model=model, channel=pointer))
            claims = True
    if settings is not None and (local is None or sorted(local.config.aliases) != settings[0]):
        for alias in settings[0]:
            try:
                check_model_name(alias)
            except InvalidInputError:
                raise InvalidInputError(f"the remote's alias {alias!r:.80} of '{model}' is not a valid model "
                                        "name; refused") from None
            if alias == model:
                raise InvalidInputError(f"the remote's alias '{alias}' of '{model}' is the model's own name; refused")
            try:
                owner = repo.model(alias)
            except NotFoundError:
                continue
            if owner != model:
                raise InvalidInputError(f"the remote's alias '{alias}' of '{model}' is '{owner}' in this store; "
                                        f"change one of them ('gaia-cas model set')")
        claims = True
    return claims


def _settings_to_adopt(repo, model, local, rm, seen: Markers):
    """The remote's (aliases, metadata) when a pull takes them -- the remote changed them since
    this store last saw them, or the model is new here -- else None. The remote's latest
    settings win (an alias another local model owns is refused: :func:`_check_claims`)."""
    theirs = settings_of(rm)
    if local is not None and (settings_of(local) == theirs or
                              (seen.settings is not None and seen.settings >= settings_marker(rm))):
        return None
    if local is None and theirs == ([], {}):
        return None
    return theirs


def _merge_pulled(lm, rm, targets, moves, settings, remote_name) -> dict:
    seen = seen_markers(lm, remote_name)
    user, host = clock.who()
    at = clock.stamp(clock.now())
    numbers, added, repaired = {}, False, []
    for target in targets:
        existing = next((v for v in lm.versions if identity(v) == identity(target)), None)
        if existing is None:
            lm.versions.append(target.replace(pinned=False, broken=False))
            lm.new_trees.add(target.tree)
            if lm.highest is None or version_key(target.version) > version_key(lm.highest):
                lm.highest = target.version
            numbers[identity(target)] = target.version
            added = True
        else:
            numbers[identity(target)] = existing.version
            if existing.broken:
                # Marked broken here (verify --repair took a corrupt object out); the fetch just
                # brought back, verified, whatever it lacked, and the commit checks the tree
                # complete: it is whole again, and served.
                existing.broken = False
                lm.new_trees.add(existing.tree)
                repaired.append(existing.version)
    previous = lm.current
    channels = {}
    in_channels = dict(seen.channels)
    for pointer, target in moves.items():
        number = numbers[identity(target)]
        if pointer == "current":
            lm.current = number
            continue
        old = lm.channels.get(pointer)
        if old is None or old["version"] != number:
            lm.channels[pointer] = {"version": number, "link": old["link"] if old else None}  # links stay local
            record(lm, "promote", version=number, before=old["version"] if old else None, after=number, at=at,
                   user=user, host=host, reason=None, details={"channel": pointer, "via": "pull",
                                                                "remote": remote_name})
            channels[pointer] = number
        in_channels[pointer] = pointer_marker(rm, pointer)
    in_current = pointer_marker(rm) if "current" in moves and rm.current is not None else seen.current
    in_settings = seen.settings
    if settings is not None:
        lm.config = lm.config.replace(aliases=list(settings[0]), metadata=dict(settings[1]))
        record(lm, "model-set", version=None, before=lm.current, at=at, user=user, host=host, reason=None,
               details={"via": "pull", "remote": remote_name})
    if settings is not None or settings_of(lm) == settings_of(rm):
        in_settings = settings_marker(rm)
    in_step = Markers(in_current, in_channels, in_settings)
    primary = moves.get("current") or (next(iter(moves.values())) if moves else targets[0])
    number = numbers[identity(primary)]
    changed = added or lm.current != previous or bool(channels) or settings is not None or in_step != seen \
        or bool(repaired)
    if changed:
        more = {"repaired": repaired} if repaired else {}
        record(lm, "pull", version=number, before=previous, at=at, user=user, host=host, reason=None,
               details=_marker_details(remote_name, in_step, tree=primary.tree, **more))
    return {"version": number, "current": lm.current, "previous": previous, "changed": changed,
            "channels": channels, "settings": settings is not None}
