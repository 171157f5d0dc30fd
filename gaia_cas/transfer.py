"""push and pull: moving versions between a root and a remote (gaia_cas.s3, gaia_cas.remotes).

push uploads what the remote lacks children first -- blobs, then trees bottom-up, then the
manifest -- so an object a remote manifest reaches is on the remote, and is never checked
again. The manifest is merged by compare-and-swap (``storage.update``): on a lost race the
merge is decided again against the manifest that won.

A version is the same version in two stores when its tree, deployment id, user and host are
the same; its number may differ. A local version whose number the remote already gave to other
content gets the next free number there, and the local store adopts it (both histories say so).

The remote's ``current`` moves only from a store that has seen the remote's latest change of
current (a pull, or a push that left both in step, records which change it saw): a trainer who
never pulled cannot move production back to what it deployed an hour ago.

pull verifies every object against its oid before it enters the local store, then publishes
like a deploy: staging, install, materialize, commit (the tree checked complete), link.
"""

from __future__ import annotations

from collections import namedtuple
from datetime import timedelta

from . import clock
from .errors import CorruptionError, InvalidInputError, NotFoundError
from .manifest import record
from .names import check_model_name
from .versions import bump, version_key

SMALL = 16 << 20  # objects read whole (hashed, then uploaded from memory); larger go up from the file
HEAD_LIMIT = 256  # up to this many candidates are HEADed one by one; more: one listing
REFRESH_AGE = timedelta(hours=1)  # an unreferenced upload older than this is sent again
JOBS = 32  # the best concurrency measured here against Ceph RGW (tools README)


class PushResult(namedtuple("PushResult", "model versions_sent objects_sent bytes_sent renumbered current "
                                          "current_moved note")):
    __slots__ = ()

    def to_json(self) -> dict:
        return {"model": self.model, "versions_sent": self.versions_sent, "objects_sent": self.objects_sent,
                "bytes_sent": self.bytes_sent, "renumbered": self.renumbered, "remote_current": self.current,
                "current_moved": self.current_moved, "note": self.note}


class PullResult(namedtuple("PullResult", "model version objects_received bytes_received current previous "
                                          "changed")):
    __slots__ = ()

    def to_json(self) -> dict:
        return {"model": self.model, "version": self.version, "objects_received": self.objects_received,
                "bytes_received": self.bytes_received, "current": self.current, "previous": self.previous,
                "changed": self.changed}


def identity(version) -> tuple:
    """What makes two versions in two stores the same version, whatever their numbers."""
    return (version.tree, version.deployment_id, version.user, version.host)


def current_marker(manifest) -> int:
    """The generation of the manifest's latest change of current (0: never)."""
    for event in manifest.events_newest_first():
        if "channel" in event.details:
            continue
        if event.before != event.after:
            return event.generation
    return 0


def seen_marker(manifest, remote: str) -> int | None:
    """Which change of the remote's current this local manifest last saw (None: never synced)."""
    if manifest is None:
        return None
    for event in manifest.events_newest_first():
        if event.action in ("push", "pull") and event.details.get("remote") == remote:
            value = event.details.get("remote_current")
            return value if isinstance(value, int) and not isinstance(value, bool) else None
    return None


def _open(repo, remote_name):
    from . import remotes

    remote = remotes.get(repo, remote_name)
    objects, manifests = remote.open()
    return remote, objects, manifests


def parallel_map(function, items, jobs: int = JOBS, *, on_error=None) -> list:
    """``[function(item) for item in items]`` on up to ``jobs`` threads, results in order.

    The first failure stops the rest: what has not started is cancelled, ``on_error()`` is
    called (a staging's ``halt``, so long streams stop within a chunk) and the running calls
    are waited for before the failure is raised -- a corrupt object found early does not
    wait for a thousand downloads, and nothing still writes once the caller cleans up."""
    items = list(items)
    if len(items) <= 1:
        return [function(item) for item in items]
    from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

    pool = ThreadPoolExecutor(max_workers=min(jobs, len(items)))
    futures = []
    try:
        futures = [pool.submit(function, item) for item in items]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = next((f for f in futures if f in done and f.exception() is not None), None)
        if failed is not None:
            failed.result()
        return [f.result() for f in futures]
    except BaseException:
        for future in futures:
            future.cancel()
        if on_error is not None:
            on_error()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# -- push ----------------------------------------------------------------------------------

def push(repo, name: str | None = None, *, remote: str | None = None) -> list[PushResult]:
    remote_cfg, objects, manifests = _open(repo, remote)
    models = repo.models() if name in (None, "all") else [repo.model(name)]
    return [_push_model(repo, model, remote_cfg.name, objects, manifests) for model in models]


def _push_model(repo, model, remote_name, robjects, rmanifests) -> PushResult:
    local = repo.manifest(model)
    snap = rmanifests.snapshot(model)
    on_remote = {identity(v) for v in snap.manifest.versions} if snap else set()
    remote_trees = {v.tree for v in snap.manifest.versions} if snap else set()
    pending = [v for v in local.versions if identity(v) not in on_remote and not v.broken]

    objects_sent = bytes_sent = 0
    if pending:
        objects_sent, bytes_sent = _upload_versions(repo, pending, remote_trees, robjects)

    seen = seen_marker(local, remote_name)
    outcome = {}

    def merge(rm) -> None:
        outcome.clear()
        numbers = {identity(v): v.version for v in rm.versions}
        assigned = rm.assigned()
        taken = assigned | set(local.version_numbers()) | local.assigned()
        mapping, sent, renumbered = {}, 0, {}
        user, host = clock.who()
        at = clock.stamp(clock.now())
        for v in local.versions:
            key = identity(v)
            if key in numbers:
                mapping[key] = numbers[key]
                continue
            if v.broken:
                continue
            number = v.version
            if number in assigned or number in mapping.values():
                number = _next_free(rm.highest or number, taken)
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
            mapping[key] = number
            numbers[key] = number
            sent += 1
        wanted = None
        current = local.current_version()
        if current is not None:
            wanted = mapping.get(identity(current))
        note = None
        moved = False
        if wanted is not None and rm.current != wanted:
            if rm.current is None or (seen is not None and seen >= current_marker(rm)):
                before = rm.current
                rm.current = wanted
                record(rm, "push", version=wanted, before=before, at=at, user=user, host=host, reason=None,
                       details={"tree": current.tree})
                moved = True
            else:
                note = (f"the remote's current {rm.current} was set since this store last saw it; not moved to "
                        f"{wanted} (pull first to see it)")
        outcome.update(mapping=mapping, sent=sent, renumbered=renumbered, moved=moved, note=note)

    committed = rmanifests.update(model, merge, create=True)
    mapping = outcome["mapping"]
    in_step = current_marker(committed) if committed.current is not None and local.current_version() is not None \
        and committed.current == mapping.get(identity(local.current_version())) else seen
    adopt = {key: number for key, number in mapping.items()}
    _adopt(repo, model, remote_name, adopt, in_step, seen, outcome["sent"])
    return PushResult(model, outcome["sent"], objects_sent, bytes_sent, outcome["renumbered"], committed.current,
                      outcome["moved"], outcome["note"])


def _next_free(highest: str, taken: set) -> str:
    number = bump(highest, "minor")
    while number in taken:
        number = bump(number, "patch")
    return number


def _adopt(repo, model, remote_name, numbers: dict, in_step, seen, sent: int) -> None:
    """Record the push locally: the numbers the remote gave (renumbering local versions whose
    number was taken there) and which change of the remote's current this store has now seen.
    Nothing is written when neither changed."""
    user, host = clock.who()
    at = clock.stamp(clock.now())
    with repo.writing(), repo.manifests.edit(model, on_commit=repo.sync_link) as lm:
        renames = [(v, numbers[identity(v)]) for v in lm.versions
                   if identity(v) in numbers and numbers[identity(v)] != v.version]
        if not renames and in_step == seen_marker(lm, remote_name):
            return
        existing = set(lm.version_numbers())
        for v, number in renames:
            if number in existing:
                raise InvalidInputError(f"version {v.version} of '{model}' is {number} on the remote, but this store "
                                        f"has another version {number}; push that one first")
            old = v.version
            v.version = number
            existing.discard(old)
            existing.add(number)
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
               details={"remote": remote_name, "remote_current": in_step, "versions_sent": sent})


def _upload_versions(repo, versions, remote_trees: set, robjects) -> tuple[int, int]:
    """Upload every object the versions reach that the remote lacks, children first.
    Objects reached from the remote's own versions (walked in the local copies of those trees)
    are on the remote already: never checked."""
    from .trees import DIR

    known: set[str] = set()
    for tree in remote_trees:
        if repo.objects.exists(tree):
            known.add(tree)
            known.update(entry.oid for _, entry in repo.trees.walk(tree))
    blobs: set[str] = set()
    depth: dict[str, int] = {}

    def collect(tree: str, level: int) -> None:
        if tree in known:
            return
        if depth.get(tree, -1) >= level:
            return
        depth[tree] = level
        for entry in repo.trees.entries(tree):
            if entry.oid in known:
                continue
            if entry.kind == DIR:
                collect(entry.oid, level + 1)
            else:
                blobs.add(entry.oid)

    for v in versions:
        collect(v.tree, 0)
    candidates = blobs | set(depth)
    missing = _missing(robjects, candidates)

    def send(oid: str) -> int:
        return _upload(repo, robjects, oid)

    sent = sum(parallel_map(send, sorted(blobs & missing)))
    count = len(blobs & missing)
    for level in sorted(set(depth.values()), reverse=True):  # deepest trees first, roots last
        wave = sorted(t for t, d in depth.items() if d == level and t in missing)
        # a tree reached at two depths goes up with its deepest: never before its children
        wave = [t for t in wave if depth[t] == level]
        sent += sum(parallel_map(send, wave))
        count += len(wave)
    return count, sent


def _missing(robjects, candidates: set) -> set:
    """Which candidates the remote lacks, or holds only as an old unreferenced upload: a HEAD
    each when few, one listing when many (dvc-objects' oids_exist rule: 2000 HEADs took 9.2 s
    here, one listing 0.9 s).

    An object found there that no remote manifest reaches (an interrupted push left it) and that
    was uploaded more than REFRESH_AGE ago is sent again: S3 has no mtime to refresh, and remote
    gc spares only what is younger than its grace (at least 24 h), so re-uploading resets the
    age this push relies on until its manifest commits (docs/design.md, The S3 remote)."""
    if not candidates:
        return set()
    from datetime import datetime, timezone

    cutoff = datetime.now(timezone.utc) - REFRESH_AGE
    ordered = sorted(candidates)
    if len(candidates) <= HEAD_LIMIT:
        found = dict(zip(ordered, parallel_map(robjects.head, ordered)))
    else:
        found = {oid: (size, at) for oid, size, at in robjects.inventory() if oid in candidates}
    return {oid for oid in ordered if found.get(oid) is None or found[oid][1] < cutoff}


def _upload(repo, robjects, oid: str) -> int:
    """One local object, checked against its oid before a byte leaves (a corrupt local object
    is never spread), then uploaded. Returns its size."""
    import os

    from .objects import hash_bytes, hash_file

    path = repo.objects.path(oid)
    size = os.stat(path).st_size
    if size <= SMALL:
        with open(path, "rb") as f:
            data = f.read()
        if hash_bytes(data) != oid:
            raise CorruptionError(f"local object {oid} does not match its hash; run 'gaia-cas verify --repair'")
        robjects.upload(oid, data)
        return len(data)
    got, _ = hash_file(path)
    if got != oid:
        raise CorruptionError(f"local object {oid} does not match its hash; run 'gaia-cas verify --repair'")
    robjects.upload(oid, path)
    return size


# -- sync: follow the remote ------------------------------------------------------------------

def sync(repo, name: str | None = None, *, remote: str | None = None, watch: bool = False,
         interval: float = 5.0, report=None, rounds: int | None = None) -> list[PullResult]:
    """Pull every model (or one) whose remote manifest changed: each round is one conditional
    GET per manifest (a 304 costs nothing), a pull only on change. With ``watch``, repeat every
    ``interval`` seconds until interrupted (``rounds`` bounds it, for tests); a failure in a
    round is passed to ``report(model, error)`` and the next round tries again, so an inference
    host keeps serving what it has while the remote is down or holds a corrupt object.
    ``report(result)`` is also called with each PullResult that changed something."""
    import time

    from .errors import GaiaCasError

    if not interval > 0:
        raise InvalidInputError(f"--interval must be above 0 seconds, not {interval!r}")
    remote_cfg, objects, manifests = _open(repo, remote)
    if name not in (None, "all"):
        check_model_name(name)
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
                result = _pull_model(repo, model, None, remote_cfg.name, objects, manifests)
                seen[model] = token
                results.append(result)
                if report is not None and result.changed:
                    report(result, None)
            except GaiaCasError as exc:
                if not watch:
                    raise
                if report is not None:
                    report(model, exc)
        done += 1
        if not watch or (rounds is not None and done >= rounds):
            return results
        time.sleep(interval)


# -- rollback on the remote -------------------------------------------------------------------

class RemoteRollback(namedtuple("RemoteRollback", "model version previous unchanged remote")):
    __slots__ = ()

    def to_json(self) -> dict:
        return {"model": self.model, "version": self.version, "previous": self.previous,
                "unchanged": self.unchanged, "remote": self.remote}


def rollback_remote(repo, name: str, selector: str, *, remote: str | None = None,
                    reason: str | None = None) -> RemoteRollback:
    """Move the remote's current to an existing version by compare-and-swap, from any machine
    (the operator's emergency rollback): no local model is needed, and nothing local changes.
    Stores that have not pulled since can no longer move the remote's current back."""
    from .names import check_text

    remote_cfg, _, rmanifests = _open(repo, remote)
    check_model_name(name)
    check_text(reason, "--reason")
    user, host = clock.who()
    outcome = {}

    def change(rm) -> None:
        target = repo.select(rm, selector)  # decided again on every attempt, against the manifest read
        if target.broken:
            raise CorruptionError(f"version {target.version} of '{name}' on remote '{remote_cfg.name}' is marked "
                                  "broken; it cannot be made current")
        outcome.update(version=target.version, previous=rm.current)
        if rm.current == target.version:
            return
        left = rm.find(rm.current) if rm.current else None
        record(rm, "rollback", version=target.version, before=rm.current, after=target.version,
               at=clock.stamp(clock.now()), user=user, host=host, reason=reason,
               details={"from_tree": left.tree} if left is not None else None)
        rm.current = target.version

    rmanifests.update(name, change)
    return RemoteRollback(name, outcome["version"], outcome["previous"], outcome["version"] == outcome["previous"],
                          remote_cfg.name)


# -- pull ----------------------------------------------------------------------------------

def pull(repo, name: str, selector: str | None = None, *, remote: str | None = None) -> list[PullResult]:
    remote_cfg, objects, manifests = _open(repo, remote)
    if name == "all":
        if selector is not None:
            raise InvalidInputError("'pull all' takes no VERSION: it pulls every model's current version")
        return [_pull_model(repo, m, None, remote_cfg.name, objects, manifests) for m in manifests.names()]
    check_model_name(name)
    return [_pull_model(repo, name, selector, remote_cfg.name, objects, manifests)]


def _pull_model(repo, model, selector, remote_name, robjects, rmanifests) -> PullResult:
    snap = rmanifests.snapshot(model)
    if snap is None:
        raise NotFoundError(f"remote '{remote_name}' has no model '{model}'")
    rm = snap.manifest
    target = repo.select(rm, selector)
    if target.broken:
        raise CorruptionError(f"version {target.version} of '{model}' on remote '{remote_name}' is marked broken")
    local = repo.manifests.read(model)
    if local is None:
        repo.check_link_free(model, "current", repo.layout.default_link(model))
    else:
        clash = local.find(target.version)
        if clash is not None and identity(clash) != identity(target) \
                and not any(identity(v) == identity(target) for v in local.versions):
            raise InvalidInputError(f"this store's version {target.version} of '{model}' is other content than the "
                                    f"remote's; push first (the remote renumbers it)")
    received = [0, 0]
    with repo.objects.staging() as staging:
        _fetch(repo, robjects, staging, target.tree, received)
        outcome = {}
        with repo.writing():
            staging.install()
            repo.materialize(target.tree)
            with repo.manifests.edit(model, create=True, check_tree=repo.check_complete,
                                     on_commit=repo.sync_link) as lm:
                outcome.update(_merge_pulled(lm, rm, target, selector, remote_name))
    return PullResult(model, outcome["version"], received[0], received[1], outcome["current"], outcome["previous"],
                      outcome["changed"])


def _merge_pulled(lm, rm, target, selector, remote_name) -> dict:
    existing = next((v for v in lm.versions if identity(v) == identity(target)), None)
    added = existing is None
    if added:
        lm.versions.append(target.replace(pinned=False, broken=False))
        lm.new_trees.add(target.tree)
        if lm.highest is None or version_key(target.version) > version_key(lm.highest):
            lm.highest = target.version
        number = target.version
    else:
        number = existing.version
    previous = lm.current
    if selector is None:
        lm.current = number
    seen = seen_marker(lm, remote_name)
    in_step = current_marker(rm) if selector is None and rm.current == target.version else seen
    changed = added or lm.current != previous or in_step != seen
    if changed:
        user, host = clock.who()
        record(lm, "pull", version=number, before=previous, at=clock.stamp(clock.now()), user=user, host=host,
               reason=None, details={"remote": remote_name, "remote_current": in_step, "tree": target.tree})
    return {"version": number, "current": lm.current, "previous": previous, "changed": changed}


def _fetch(repo, robjects, staging, tree: str, received: list) -> None:
    """Stage every object of ``tree`` the local store lacks, each verified against its oid.

    One pool of JOBS threads does it all: a tree's subtrees and blobs are queued as soon as the
    tree arrives (subtrees first, then its blobs largest first), so the downloads of the first
    folders run while deeper trees are still being fetched -- no round trip per tree, none per
    level. A blob goes straight into staging and is checked by the hash the staging computes as
    it writes (``robjects.stage``): one hash and one write per byte. The first failure cancels
    what has not started and halts the staging (a corrupt object found early does not wait for
    the rest); nothing still writes into the staging once this returns or raises."""
    import threading
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    from .objects import CHUNK
    from .trees import DIR, MAX_TREE_BYTES, check_depth, decode_tree

    local = threading.local()

    def entries_of(oid: str):
        if repo.objects.exists(oid):
            return repo.trees.entries(oid), 0
        data = robjects.read(oid, MAX_TREE_BYTES)  # verified against oid
        entries = decode_tree(data, oid)
        if staging.add_bytes(data) != oid:
            raise CorruptionError(f"tree {oid} changed while it was staged")
        return entries, len(data)

    def fetch(oid: str, size: int) -> tuple[list, int]:
        buffer = getattr(local, "buffer", None)
        if buffer is None:
            buffer = local.buffer = bytearray(CHUNK)
        return [], robjects.stage(oid, staging, size, buffer)

    seen: set[str] = {tree}
    pending: dict = {}
    pool = ThreadPoolExecutor(max_workers=JOBS)
    try:
        pending[pool.submit(entries_of, tree)] = 0  # the tree's depth below the root; -1: a blob
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                depth = pending.pop(future)
                is_blob = depth < 0
                entries, size = future.result()  # the first failure stops here
                if size or is_blob:
                    received[0] += 1
                    received[1] += size
                blobs = []
                for entry in entries:
                    if entry.oid in seen:
                        continue
                    if entry.kind == DIR:
                        check_depth(entry.oid, depth + 1)  # the bound every walker of trees shares
                        seen.add(entry.oid)
                        pending[pool.submit(entries_of, entry.oid)] = depth + 1
                    elif not repo.objects.exists(entry.oid):
                        seen.add(entry.oid)
                        blobs.append(entry)
                for entry in sorted(blobs, key=lambda e: (-e.size, e.oid)):
                    pending[pool.submit(fetch, entry.oid, entry.size)] = -1
    except BaseException:
        for future in pending:
            future.cancel()
        halt = getattr(staging, "halt", None)
        if halt is not None:
            halt()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
