"""Garbage collection: plan what no manifest reaches, then delete it.

Safe to run while deploys and servers run (docs/design.md, Garbage collection):

- gc holds the store barrier (``store/gc.lock``) exclusively while it marks and sweeps; every
  writer holds it shared from installing its objects until its manifest commit, so gc never
  sees an object that is installed but not yet referenced.
- Roots are every version of every manifest (objects shared between models stay), plus the
  staging folders of deploys still running (their flock is held by a live process).
- Nothing younger than the grace period is deleted (git's gc.pruneExpire): objects, staging
  leftovers and materialized trees alike.
- Leases are roots too: a version a live process holds (its lease's flock is held) keeps its
  tree, its objects and its materialized folder, whatever their age (gaia_cas/leases.py).
- Materialized trees are derived data: those of every current version and of versions that
  were current within the grace period (a server may still be reading them) stay.
- If any manifest or tree cannot be read, gc deletes nothing and says why (fail closed).
- The sweep never follows a symlink.
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from . import defaults
from .atomic import TMP_MARK, remove_tree
from .errors import GaiaCasError, GcRefusedError  # noqa: F401  (GcRefusedError: part of gc's API)
from .layout import Layout
from .locking import try_flock_dir
from .manifest import Manifest, moment
from .manifest_store import Manifests
from .materialize import links_objects, retire_tree
from .names import is_oid
from .retention import parse_age
from .trees import FILE, TreeReader

DEFAULT_GRACE = parse_age(defaults.GRACE)
DEFAULT_LOG_AGE = parse_age(defaults.LOG_AGE)


@dataclass
class Doomed:
    path: Path
    size: int
    kind: str  # object, whole (split into chunks, then removed), recipe, tree, tmp, log, manifest-tmp, link-tmp, lease


@dataclass
class GcPlan:
    doomed: list[Doomed] = field(default_factory=list)
    reachable_objects: int = 0
    objects: int = 0  # every object file seen, and their bytes (status reuses this scan)
    object_bytes: int = 0
    young_unreferenced: int = 0  # unreferenced, but within the grace period
    file_bytes: int = 0  # every distinct file the versions reach, counted once at its full size
    chunk_bytes: int = 0  # bytes of the chunk objects cold files are kept as
    ignored: list[str] = field(default_factory=list)  # names gc does not recognise: left alone
    # What splitting the cold files ("whole") writes first: the new chunks' bytes. Known to a
    # dry run (estimate_split); a real gc counts them as it writes them (GcResult.bytes_freed).
    chunk_bytes_written: int = 0

    @property
    def bytes(self) -> int:
        """The bytes this plan frees: a cold file's whole copy less the new chunks it costs."""
        return sum(d.size for d in self.doomed) - self.chunk_bytes_written

    def counts(self) -> dict[str, int]:
        result: dict[str, int] = {}
        for d in self.doomed:
            result[d.kind] = result.get(d.kind, 0) + 1
        return result

    def to_json(self) -> dict:
        return {
            "bytes": self.bytes, "counts": self.counts(), "reachable_objects": self.reachable_objects,
            "young_unreferenced": self.young_unreferenced, "ignored": self.ignored,
            "chunk_bytes_written": self.chunk_bytes_written,
            "items": [{"kind": d.kind, "path": str(d.path), "size": d.size} for d in self.doomed],
        }


def read_all_manifests(manifests: Manifests) -> list[Manifest]:
    """Every manifest, or GcRefusedError if any one of them cannot be read."""
    result = []
    for model in manifests.names():
        try:
            manifest = manifests.read(model)
        except GaiaCasError as exc:
            raise GcRefusedError(f"gc deleted nothing: manifest of '{model}' cannot be read ({exc})") from None
        if manifest is not None:
            result.append(manifest)
    return result


def mark(layout: Layout, manifests: list[Manifest], reader: TreeReader, big: "BigFiles | None" = None) -> set[str]:
    """Every oid (trees and files) reachable from any version of any manifest; ``big`` (if
    given) collects the files at or above its threshold."""
    reachable: set[str] = set()
    for manifest in manifests:
        for version in manifest.versions:
            _mark_tree(reader, version.tree, reachable, manifest.model, version.version, big)
    return reachable


class BigFiles:
    """The reachable files of at least ``threshold`` bytes, oid -> size (gc's chunking
    candidates), and the bytes of all distinct reachable files (status's file-level saving)."""

    def __init__(self, threshold: int):
        self.threshold = threshold
        self.sizes: dict[str, int] = {}
        self.distinct_bytes = 0

    def add(self, entries, reachable: set[str]) -> None:
        seen = set()
        for _, e in entries:
            if e.kind != FILE or e.oid in reachable or e.oid in seen:
                continue
            seen.add(e.oid)
            self.distinct_bytes += e.size
            if e.size >= self.threshold:
                self.sizes[e.oid] = e.size


def _mark_tree(reader: TreeReader, oid: str, reachable: set[str], model: str, version: str,
               big: BigFiles | None = None) -> None:
    if oid in reachable:
        return  # shared subtree already walked
    try:
        entries = list(reader.walk(oid, into=lambda entry: entry.oid not in reachable))
    except GaiaCasError as exc:
        raise GcRefusedError(f"gc deleted nothing: tree {oid} of {model} {version} cannot be read ({exc}); "
                             "run 'gaia-cas verify'") from None
    if big is not None:
        big.add(entries, reachable)
    reachable.add(oid)
    reachable.update(entry.oid for _, entry in entries)


def mark_chunks(recipes, described: list[str], reachable: set[str]) -> set[str]:
    """Add to ``reachable`` the chunks of every reachable file among ``described`` (the files
    that have a recipe); returns the chunks it added. An unreadable recipe makes gc delete
    nothing (fail closed): its chunks could not be told apart from garbage."""
    added: set[str] = set()
    for oid in described:
        if oid not in reachable:
            continue
        try:
            recipe = recipes.get(oid)
        except GaiaCasError as exc:
            raise GcRefusedError(f"gc deleted nothing: {exc}; run 'gaia-cas verify'") from None
        added.update(chunk.oid for chunk in recipe.chunks if chunk.oid not in reachable)
    reachable.update(added)
    return added


def hot_files(reader: TreeReader, trees: set[str]) -> set[str]:
    """The files of the trees that stay materialized: they are served whole (design.md, Chunks)."""
    hot: set[str] = set()
    for tree in trees:
        try:
            hot.update(entry.oid for _, entry in reader.walk(tree) if entry.kind == FILE)
        except GaiaCasError as exc:
            raise GcRefusedError(f"gc deleted nothing: materialized tree {tree} cannot be read ({exc})") from None
    return hot


def linked_trees(layout: Layout, manifests: list[Manifest]) -> set[str]:
    """Trees the links point at right now: after a crash between a commit and its link swap, a
    link can lag behind its manifest, and what it serves must not vanish under it."""
    from .links import model_links, read_link

    keep = set()
    trees = os.path.realpath(layout.trees)
    for manifest in manifests:
        for relative in model_links(layout, manifest).values():
            target = read_link(layout, relative)
            if target is None:
                continue
            real = os.path.realpath(target)
            if real.startswith(trees + os.sep):
                keep.add(real[len(trees) + 1:].split(os.sep, 1)[0])
    return keep


def protected_trees(manifests: list[Manifest], now: datetime, grace: timedelta) -> set[str]:
    """Materialized trees to keep: current's and every channel's, and those current within the grace."""
    keep: set[str] = set()
    cutoff = now - grace
    for manifest in manifests:
        names = set(manifest.channel_versions().values())  # current and every channel
        for event in (manifest.events_newest_first() if grace > timedelta(0) else ()):
            if moment(event.at) < cutoff:
                break
            names.update(v for v in (event.before, event.after) if v)
        for name in names:
            version = manifest.find(name)
            if version is not None:
                keep.add(version.tree)
    return keep


def plan_gc(layout: Layout, manifests: Manifests, reader: TreeReader, *, grace: timedelta = DEFAULT_GRACE,
            log_age: timedelta | None = DEFAULT_LOG_AGE, now: datetime | None = None,
            already_read: list[Manifest] | None = None) -> GcPlan:
    """``already_read``: every manifest, read by the caller (status) -- not read a second time."""
    now = now or datetime.now().astimezone()
    refusal = layout.symlink_in_store(trees=True)
    if refusal is not None:
        raise GcRefusedError(f"gc deleted nothing: {refusal}")
    all_manifests = already_read if already_read is not None else read_all_manifests(manifests)
    from .recipes import RecipeStore

    from .recipes import settings

    recipes = RecipeStore(layout)
    chosen = settings(layout)
    big = BigFiles(chosen.threshold)
    reachable = mark(layout, all_manifests, reader, big)
    trees_to_keep = protected_trees(all_manifests, now, grace) | linked_trees(layout, all_manifests)
    for manifest in all_manifests if chosen.hot_recent else ():  # the store asks for more hot versions
        from .versions import version_key

        newest = sorted(manifest.versions, key=lambda v: version_key(v.version))[-chosen.hot_recent:]
        trees_to_keep.update(v.tree for v in newest)
    cutoff = time.time() - grace.total_seconds()
    plan = GcPlan()
    from . import leases

    live, dead, unreadable = leases.scan(layout)
    plan.ignored.extend(unreadable)
    for lease in live:  # roots whatever their age: their holders are alive
        if reader.store.exists(lease.tree):
            _mark_tree(reader, lease.tree, reachable, lease.model, lease.version, big)
            trees_to_keep.add(lease.tree)
        else:
            plan.ignored.append(f"leases: {lease.model} {lease.version} (tree {lease.tree} is not in the store)")
    plan.doomed.extend(Doomed(path, 0, "lease") for path in dead)
    described = list(recipes.oids())  # one listing of store/recipes serves both uses
    chunks = mark_chunks(recipes, described, reachable)
    plan.file_bytes = big.distinct_bytes
    for oid in described:  # recipes of files nothing reaches any more
        if oid not in reachable:
            path = Path(recipes.path(oid))
            st = path.lstat()
            if stat.S_ISREG(st.st_mode) and st.st_mtime <= cutoff:
                plan.doomed.append(Doomed(path, st.st_size, "recipe"))

    for fanout in _scan(layout.objects):
        if not (fanout.is_dir(follow_symlinks=False) and len(fanout.name) == 2):
            plan.ignored.append(f"objects/{fanout.name}")
            continue
        for item in _scan(Path(fanout.path)):
            oid = fanout.name + item.name
            st = item.stat(follow_symlinks=False)
            if not (is_oid(oid) and stat.S_ISREG(st.st_mode)):
                plan.ignored.append(f"objects/{fanout.name}/{item.name}")
                continue
            plan.objects += 1
            plan.object_bytes += st.st_size
            if oid in reachable:
                plan.reachable_objects += 1
                if oid in chunks:
                    plan.chunk_bytes += st.st_size
            elif st.st_mtime > cutoff:
                plan.young_unreferenced += 1
            else:
                plan.doomed.append(Doomed(Path(item.path), st.st_size, "object"))

    staying = set(trees_to_keep)
    for item in _scan(layout.trees):
        st = item.stat(follow_symlinks=False)
        if not is_oid(item.name):
            plan.ignored.append(f"trees/{item.name}")
        elif item.name not in trees_to_keep and st.st_mtime <= cutoff:
            tree = Path(item.path)
            # A tree of hard links frees nothing by itself (its objects are counted as objects).
            plan.doomed.append(Doomed(tree, 0 if links_objects(tree) else _unshared_bytes(tree), "tree"))
        elif reader.store.exists(item.name):
            staying.add(item.name)

    # Large files no staying tree serves go cold: split into chunks, then the whole removed.
    candidates = {oid: size for oid, size in big.sizes.items() if size > 0}
    if candidates:
        hot = hot_files(reader, staying)
        objects = reader.store
        for oid, size in sorted(candidates.items()):
            if oid in hot:
                continue
            path = Path(objects.path(oid))
            try:
                st = path.lstat()
            except FileNotFoundError:
                continue  # cold already: its chunks hold it
            if stat.S_ISREG(st.st_mode) and st.st_mtime <= cutoff:
                plan.doomed.append(Doomed(path, st.st_size, "whole"))

    for item in _scan(layout.tmp):
        if TMP_MARK not in item.name:
            plan.ignored.append(f"tmp/{item.name}")  # not a name gaia-cas makes: not ours to delete
            continue
        st = item.stat(follow_symlinks=False)
        if st.st_mtime > cutoff:
            continue
        if stat.S_ISDIR(st.st_mode):
            fd = try_flock_dir(Path(item.path))
            if fd is None:
                continue  # a live deploy or materialization holds it
            os.close(fd)
        plan.doomed.append(Doomed(Path(item.path), _unshared_bytes(Path(item.path)), "tmp"))

    recipe_shards = [Path(shard.path) for shard in _scan(Path(recipes.root))
                     if len(shard.name) == 2 and shard.is_dir(follow_symlinks=False)]
    for folder, kind in ((layout.manifests, "manifest-tmp"), (layout.store, "store-tmp"),
                         *((shard, "store-tmp") for shard in recipe_shards)):
        for item in _scan(folder):  # interrupted atomic writes: manifests, the stat cache
            if TMP_MARK in item.name and item.is_file(follow_symlinks=False):
                st = item.stat(follow_symlinks=False)
                if st.st_mtime <= cutoff:
                    plan.doomed.append(Doomed(Path(item.path), st.st_size, kind))

    from .links import model_links, stale_link_temps

    for manifest in all_manifests:
        for relative in model_links(layout, manifest).values():  # current and every channel
            # Reached by descriptor, never through a symlink: a folder a symlink has redirected
            # elsewhere is never swept.
            for path, mtime in stale_link_temps(layout, relative):
                if mtime <= cutoff:
                    plan.doomed.append(Doomed(path, 0, "link-tmp"))

    if log_age is not None:
        log_cutoff = time.time() - log_age.total_seconds()
        for path, size in _own_old_logs(layout, log_cutoff, cutoff, plan):
            plan.doomed.append(Doomed(path, size, "log"))
    return plan


@dataclass
class GcResult:
    deleted: dict[str, int]
    bytes_freed: int
    skipped: int  # planned, but found changed (younger) at deletion time

    def to_json(self) -> dict:
        return {"deleted": self.deleted, "bytes_freed": self.bytes_freed, "skipped": self.skipped}


def execute(layout: Layout, plan: GcPlan, grace: timedelta) -> GcResult:
    """Delete what the plan names, re-checking each object's age right before unlinking it."""
    held = _HeldFolders(layout)
    try:
        return _execute(layout, plan, grace, held)
    finally:
        held.close()


def _execute(layout: Layout, plan: GcPlan, grace: timedelta, held: "_HeldFolders") -> GcResult:
    deleted: dict[str, int] = {}
    freed = 0
    skipped = 0
    cutoff = time.time() - grace.total_seconds()
    # Reverse reference order: derived trees and leftovers first, objects last, so no state
    # along the way has a tree pointing at a missing object.
    order = {"lease": 0, "link-tmp": 0, "tree": 1, "tmp": 2, "manifest-tmp": 3, "store-tmp": 3, "log": 4,
             "recipe": 4, "object": 5, "whole": 6}
    refusal = layout.symlink_in_store(trees=True)  # again: a folder may have been swapped since the plan
    if refusal is not None:
        raise GcRefusedError(f"gc deleted nothing: {refusal}")
    touched_dirs: set[Path] = set()
    touched_fds: set[int] = set()
    for item in sorted(plan.doomed, key=lambda d: order[d.kind]):
        if item.kind in ("link-tmp", "log", "lease"):
            from .leases import remove_dead
            from .links import remove_link_temp

            gone = (remove_link_temp(layout, item.path) if item.kind == "link-tmp" else
                    remove_dead(layout, item.path) if item.kind == "lease" else _remove_own_log(layout, item))
            if gone:
                deleted[item.kind] = deleted.get(item.kind, 0) + 1
                freed += item.size
            continue
        try:
            # Files are reached through their folder, held by descriptor and opened without
            # following a symlink from store/ (or manifests/) down.
            parent = held.fd(item.path.parent)
            st = os.stat(item.path.name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            continue
        except OSError:
            skipped += 1  # a folder on the way is no longer a plain folder: not entered
            continue
        if item.kind in ("object", "tmp", "tree", "whole", "recipe") and st.st_mtime > cutoff:
            skipped += 1  # refreshed since the plan was made: someone uses it again
            continue
        if item.kind == "whole":
            # Its chunks and recipe durable first (split fsyncs both); only then the whole goes.
            from .objects import ObjectStore
            from .recipes import RecipeStore, split

            oid = item.path.parent.name + item.path.name
            _, written = split(ObjectStore(layout), RecipeStore(layout), oid)
            freed -= written
        if item.kind == "tree":
            retire_tree(layout, item.path)
            touched_dirs.add(item.path.parent)
        elif stat.S_ISDIR(st.st_mode):
            # A working folder of store/tmp is only ever removed under its lock: one a deploy
            # locked since the plan was made is in use (its owner checks, after locking, that
            # the folder it holds is still there).
            try:
                fd = try_flock_dir(item.path)
            except FileNotFoundError:
                continue  # its owner finished and removed it meanwhile
            if fd is None:
                skipped += 1
                continue
            try:
                remove_tree(item.path)
            finally:
                os.close(fd)
            touched_dirs.add(item.path.parent)
        else:
            os.unlink(item.path.name, dir_fd=parent)
            touched_fds.add(parent)
        deleted[item.kind] = deleted.get(item.kind, 0) + 1
        freed += item.size
    from .atomic import fsync_dir

    for folder in touched_dirs:
        try:
            fsync_dir(folder)
        except OSError:
            pass
    for fd in touched_fds:
        try:
            os.fsync(fd)
        except OSError:
            pass
    return GcResult(deleted, freed, skipped)


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class _HeldFolders:
    """Folders under store/ and manifests/ opened by descriptor, each component without
    following a symlink (store/ and manifests/ themselves are where the root says)."""

    def __init__(self, layout: Layout):
        self.layout = layout
        self.fds: dict[Path, int] = {}

    def fd(self, folder: Path) -> int:
        if folder not in self.fds:
            parts = os.path.relpath(folder, self.layout.root).split(os.sep)
            if parts[0] not in ("store", "manifests") or ".." in parts:
                raise OSError(f"{folder} is not a folder gc sweeps")
            fd = os.open(self.layout.root / parts[0], os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                for part in parts[1:]:
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                    os.close(fd)
                    fd = child
            except BaseException:
                os.close(fd)
                raise
            self.fds[folder] = fd
        return self.fds[folder]

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


def _open_logs(layout: Layout) -> int | None:
    try:
        return os.open(layout.logs, _DIR_FLAGS)
    except OSError:
        return None  # missing, or a symlink: never followed


def _own_old_logs(layout: Layout, log_cutoff: float, cutoff: float, plan: GcPlan) -> list[tuple[Path, int]]:
    """Log files gaia-cas wrote (they start with its marker line) older than the log age, and
    temporaries an interrupted log creation left. Anything else in logs/ is the user's: the
    old script's ``versioning_*.log`` of the same name pattern, a symlink, a file gaia-cas
    wrote before it marked its logs -- never deleted, never followed."""
    from .atomic import UnsafeFileError, open_regular
    from .oplog import LOG_PREFIX, LOG_SUFFIX, written_by_gaia_cas

    folder = _open_logs(layout)
    if folder is None:
        if os.path.islink(layout.logs):
            plan.ignored.append("logs (a symlink: never followed)")
        return []
    found = []
    try:
        for name in sorted(os.listdir(folder)):
            if name.startswith("." + LOG_PREFIX) and TMP_MARK in name:
                st = os.stat(name, dir_fd=folder, follow_symlinks=False)
                if stat.S_ISREG(st.st_mode) and st.st_mtime <= cutoff:
                    found.append((layout.logs / name, st.st_size))
                continue
            if not (name.startswith(LOG_PREFIX) and name.endswith(LOG_SUFFIX)):
                continue
            try:
                fd = open_regular(name, dir_fd=folder)
            except (UnsafeFileError, OSError):
                plan.ignored.append(f"logs/{name}")
                continue
            try:
                st = os.fstat(fd)
                if st.st_mtime > log_cutoff:
                    continue
                if written_by_gaia_cas(fd):
                    found.append((layout.logs / name, st.st_size))
                else:
                    plan.ignored.append(f"logs/{name} (not written by gaia-cas: kept)")
            finally:
                os.close(fd)
    finally:
        os.close(folder)
    return found


def _remove_own_log(layout: Layout, item: Doomed) -> bool:
    """Delete a log the plan named, checking again -- by descriptor, without following a
    symlink -- that the file there now is still one gaia-cas wrote."""
    from .atomic import TMP_MARK as mark, open_regular
    from .oplog import written_by_gaia_cas

    folder = _open_logs(layout)
    if folder is None:
        return False
    name = item.path.name
    try:
        try:
            fd = open_regular(name, dir_fd=folder)
        except OSError:
            return False
        try:
            st = os.fstat(fd)
            ours = mark in name or written_by_gaia_cas(fd)
        finally:
            os.close(fd)
        now = os.stat(name, dir_fd=folder, follow_symlinks=False)
        if not ours or (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            return False
        os.unlink(name, dir_fd=folder)
        try:
            os.fsync(folder)
        except OSError:
            pass
        return True
    except FileNotFoundError:
        return False
    finally:
        os.close(folder)


def _scan(folder: Path):
    try:
        with os.scandir(folder) as it:
            return sorted(it, key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _unshared_bytes(path: Path) -> int:
    """Bytes that deleting ``path`` frees: files with no other hard link (not followed)."""
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode):
        return st.st_size if st.st_nlink <= 1 else 0
    total = 0
    for dirpath, _, files in os.walk(path, followlinks=False):
        for name in files:
            fst = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISREG(fst.st_mode) and fst.st_nlink <= 1:
                total += fst.st_size
    return total


def estimate_split(ctx, plan: GcPlan) -> int:
    """The bytes splitting the plan's cold files would write: their chunks the store lacks at
    that point (or that the plan deletes first, as unreferenced objects), each counted once, as
    the real gc counts them. A file with a recipe costs a lookup; another is read once and cut
    in memory, nothing written, so a dry run frees exactly what it says."""
    wholes = [d for d in plan.doomed if d.kind == "whole"]
    if not wholes:
        return 0
    from .errors import CorruptionError
    from .recipes import RecipeStore, cut_object

    recipes = RecipeStore(ctx.layout)
    deleted_first = {d.path.parent.name + d.path.name for d in plan.doomed if d.kind == "object"}
    counted: set[str] = set()
    total = 0
    for item in wholes:
        oid = item.path.parent.name + item.path.name
        try:
            recipe = recipes.get(oid) or cut_object(ctx.objects, oid)
        except CorruptionError:
            if ctx.objects.exists(oid):
                raise
            continue  # split by a gc that ran meanwhile (a dry run holds no barrier)
        for chunk in recipe.chunks:
            if chunk.oid not in counted:
                counted.add(chunk.oid)
                if chunk.oid in deleted_first or not ctx.objects.exists(chunk.oid):
                    total += chunk.length
    return total


# -- the verb --------------------------------------------------------------------------------

def plan(ctx, *, grace=None, log_age=None) -> GcPlan:
    """What gc would delete now. ``log_age=None`` leaves logs out of the plan."""
    return plan_gc(ctx.layout, ctx.manifests, ctx.trees, grace=DEFAULT_GRACE if grace is None else grace,
                   log_age=log_age)


def collect(ctx, *, grace=None, log_age=None, dry_run: bool = False):
    """Delete what no manifest reaches. Returns (plan, result); result is None for a dry run.

    Plans and sweeps under the store barrier held exclusively: no writer is between installing
    objects and committing the manifest naming them while gc decides (design.md, Garbage
    collection)."""
    from .locking import store_barrier

    grace = DEFAULT_GRACE if grace is None else grace
    log_age = DEFAULT_LOG_AGE if log_age is None else log_age
    if dry_run:
        the_plan = plan(ctx, grace=grace, log_age=log_age)
        the_plan.chunk_bytes_written = estimate_split(ctx, the_plan)
        return the_plan, None
    with ctx.store_errors():
        ctx.layout.store.mkdir(parents=True, exist_ok=True)
        with store_barrier(ctx.layout.store, ctx.manifests.lock_timeout, exclusive=True):
            the_plan = plan(ctx, grace=grace, log_age=log_age)
            result = execute(ctx.layout, the_plan, grace)
    ctx.oplog.write("gaia_cas.gc", f"gc: deleted {result.deleted or 'nothing'}, freed {result.bytes_freed} bytes"
                    f" ({result.bytes_freed / 1048576:.2f} MB), {the_plan.reachable_objects} objects in use, "
                    f"{the_plan.young_unreferenced} unreferenced but within the grace period")
    return the_plan, result
