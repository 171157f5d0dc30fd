"""gc --remote: delete the objects on a remote that no remote manifest reaches.

S3 cannot refresh an mtime, so age is upload time, and the argument is this (docs/design.md,
The S3 remote):

1. One gc at a time: a lease object ``PREFIX/gc.lease`` created with ``If-None-Match: *``
   (taken over, by ``If-Match`` on its ETag, only once its holder's expiry has passed).
2. The objects are listed *before* the manifests are read, and only listed objects can be
   deleted: anything a push uploads after the listing is out of reach.
3. Every manifest is read and every tree of every version walked; any manifest or tree that
   cannot be read stops gc with nothing deleted (fail closed).
4. Only objects older than the grace (default 24 h; rustic uses 23 h) are deleted. A push
   uploads its objects before its manifest, and re-uploads any unreferenced object it finds
   older than an hour (remote_objects.REFRESH_AGE), so every object an in-flight push will commit is
   younger than the grace when gc lists it -- as long as a push takes less than grace - 1 h.
5. Chunks (docs/design.md, Chunks on the remote) are reached through recipes: every reachable
   large file's recipe is read *after* the manifests (a push puts a recipe before its swap, so
   a version gc sees has its recipe there), and its chunks are reachable. A recipe that cannot
   be read or decoded stops gc with nothing deleted. Unreachable recipes past the grace go
   before unreachable objects, so an interrupted gc never leaves a recipe without its chunks.
6. A listing is a moment: a push that began before it may find an old unreferenced object (or
   recipe) afterwards and send it again under the same key, to commit it after gc read the
   manifests. So each doomed key is HEADed just before its delete and kept when it was written
   since the cutoff. What remains is the round trip between that HEAD and the delete, against
   a push's re-upload landing exactly inside it (S3 has no conditional delete to close it).
"""

from __future__ import annotations

from collections import namedtuple
from datetime import datetime, timedelta, timezone

from .errors import CorruptionError, GaiaCasError

DEFAULT_GRACE = timedelta(hours=24)
LEASE_TTL = timedelta(hours=6)
LEASE = "gc.lease"


class RemoteGcRefused(GaiaCasError):
    """gc on the remote would not be safe now (another gc, an unreadable manifest or tree)."""


class RemoteGcPlan(namedtuple("RemoteGcPlan", "remote doomed reachable young_unreferenced dry_run deleted recipes",
                              defaults=((),))):
    """``doomed``: [(oid, size)] unreferenced and older than the grace; ``recipes``: the same
    for recipes of files no version reaches."""

    __slots__ = ()

    @property
    def bytes(self) -> int:
        return sum(size for _, size in self.doomed)

    def to_json(self) -> dict:
        return {"remote": self.remote, "dry_run": self.dry_run, "deleted": self.deleted, "bytes": self.bytes,
                "reachable_objects": self.reachable, "young_unreferenced": self.young_unreferenced,
                "objects": [oid for oid, _ in self.doomed], "recipes": [oid for oid, _ in self.recipes]}


def gc_remote(repo, remote: str | None = None, *, grace: timedelta = DEFAULT_GRACE, dry_run: bool = False,
              now: datetime | None = None) -> RemoteGcPlan:
    from . import remotes
    from .remote_objects import parallel_map, remote_recipes

    config = remotes.get(repo, remote)
    objects, manifests = config.open()
    lease = None if dry_run else _take_lease(objects, config.name)
    recipes = remote_recipes(objects)
    try:
        listed = list(objects.inventory())  # before the manifests: see the module's argument, 2.
        listed_recipes = list(recipes.inventory()) if recipes is not None else []
        reachable, large = _mark(repo, objects, manifests, config.name)
        if recipes is not None:
            reachable |= _mark_chunks(recipes, large, config.name)
        cutoff = (now or datetime.now(timezone.utc)) - grace
        doomed, young = [], 0
        for oid, size, uploaded in listed:
            if oid in reachable:
                continue
            if uploaded > cutoff:
                young += 1
            else:
                doomed.append((oid, size))
        unused = [(oid, size) for oid, size, uploaded in listed_recipes if oid not in reachable and uploaded <= cutoff]
        deleted = 0
        if not dry_run and unused:  # first: see the module's argument, 5.
            gone = parallel_map(lambda item: _delete_if_old(recipes, item[0], cutoff), unused)
            unused = [item for item, done in zip(unused, gone) if done]
        if not dry_run and doomed:
            gone = parallel_map(lambda item: _delete_if_old(objects, item[0], cutoff), doomed)
            doomed = [item for item, done in zip(doomed, gone) if done]
            deleted = len(doomed)
        return RemoteGcPlan(config.name, doomed, len(reachable), young, dry_run, deleted, unused)
    finally:
        if lease is not None:
            _release_lease(objects, lease)


def _delete_if_old(store, oid: str, cutoff: datetime) -> bool:
    """Delete ``oid`` unless it was written again since it was listed (see the module's
    argument, 6.): True if deleted."""
    found = store.head(oid)
    if found is None or found[1] > cutoff:
        return False
    store.delete(oid)
    return True


class _LocalFirst:
    """Tree objects read from the local store when it has them (same oid, same bytes, verified
    when installed), else from the remote: the object store a TreeReader walks for remote gc."""

    def __init__(self, local, remote):
        self.local, self.remote = local, remote

    def read(self, oid: str, limit: int) -> bytes:
        return (self.local if self.local.exists(oid) else self.remote).read(oid, limit)


def _mark(repo, objects, manifests, name: str) -> tuple[set[str], dict[str, int]]:
    """Every object the remote's versions reach through trees, and the large files among them
    (those a recipe may describe)."""
    from .chunking import MAX_CHUNK
    from .trees import DIR, TreeReader

    reachable: set[str] = set()
    large: dict[str, int] = {}  # oid -> size
    reader = TreeReader(_LocalFirst(repo.objects, objects))

    def walk(oid: str) -> None:
        if oid in reachable:
            return
        try:
            found = [entry for _, entry in reader.walk(oid, into=lambda entry: entry.oid not in reachable)]
        except CorruptionError as exc:
            raise RemoteGcRefused(f"{exc}; gc on remote '{name}' deleted nothing (see 'gaia-cas verify --remote "
                                  f"{name}')") from None
        reachable.add(oid)
        reachable.update(entry.oid for entry in found)
        large.update((entry.oid, entry.size) for entry in found if entry.kind != DIR and entry.size >= MAX_CHUNK)

    for model in manifests.names():
        try:
            snap = manifests.snapshot(model)
        except CorruptionError as exc:
            raise RemoteGcRefused(f"{exc}; gc on remote '{name}' deleted nothing") from None
        if snap is None:
            continue
        for version in snap.manifest.versions:
            walk(version.tree)
    return reachable, large


def _mark_chunks(recipes, large: dict[str, int], name: str) -> set[str]:
    """The chunks of every reachable large file the remote keeps as a recipe (read now, after
    the manifests: see the module's argument, 5.)."""
    from .remote_objects import parallel_map

    try:
        found = parallel_map(lambda oid: recipes.get(oid, large[oid]), sorted(large))
    except CorruptionError as exc:
        raise RemoteGcRefused(f"{exc}; gc on remote '{name}' deleted nothing (see 'gaia-cas verify --remote "
                              f"{name}')") from None
    return {chunk.oid for recipe in found if recipe is not None for chunk in recipe.chunks}


def _take_lease(objects, name: str):
    import obstore

    from .clock import who
    from .codec import pack, unpack
    from .s3 import describe

    key = f"{objects.prefix}{LEASE}"
    now = datetime.now(timezone.utc)
    user, host = who()
    body = pack({"holder": f"{user}@{host}", "started": now.isoformat(timespec="seconds"),
                 "expires": (now + LEASE_TTL).isoformat(timespec="seconds")})
    try:
        result = obstore.put(objects.client, key, body, mode="create", use_multipart=False)
        return key, result.get("e_tag")
    except Exception as exc:
        if type(exc).__name__ not in ("AlreadyExistsError", "PreconditionError"):
            raise describe(exc, f"remote '{name}' (gc lease)") from None
    try:
        held = obstore.get(objects.client, key)
        info = unpack(bytes(held.bytes()), "gc lease", max_str=200, max_array=10, max_map=10)
        expires = datetime.fromisoformat(info["expires"])
    except Exception:
        raise RemoteGcRefused(f"remote '{name}' has an unreadable gc lease {key}; another gc may be running "
                              "(remove it only if none is)") from None
    if expires > now:
        raise RemoteGcRefused(f"another gc holds the lease on remote '{name}' ({info.get('holder')}, since "
                              f"{info.get('started')}, until {info['expires']}); nothing deleted")
    try:  # its holder died: take it over, unless someone else does first
        result = obstore.put(objects.client, key, body, mode={"e_tag": held.meta["e_tag"].strip('"')},
                             use_multipart=False)
    except Exception:
        raise RemoteGcRefused(f"another gc took over the expired lease on remote '{name}'; nothing deleted") from None
    return key, result.get("e_tag")


def _release_lease(objects, lease) -> None:
    import obstore

    key, _ = lease
    try:
        obstore.delete(objects.client, key)
    except Exception:
        pass  # it expires on its own
