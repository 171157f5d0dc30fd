"""verify: re-hash what the manifests reach, check trees and links, and optionally repair.

Nothing is trusted because it looks right: every object selected is read and re-hashed (a
read-only mode bit proves nothing -- an in-place edit through a hard link changes the object
itself), tree objects are decoded and their names validated, every materialized tree is
compared entry by entry with its tree object, and every ``current`` link with its manifest.

``repair`` fixes what can be fixed from the store itself and isolates the rest:

- links are regenerated from the manifests;
- materialized trees that do not match are removed and rebuilt from the objects;
- corrupt objects are moved to ``store/quarantine/`` (never served again), and every version
  that needs a corrupt or missing object is marked ``broken`` in its manifest: ``resolve()``
  refuses it and ``rollback`` will not select it. A broken version whose objects come back
  complete and intact (e.g. redeployed) is unmarked.
- ``current`` is never moved by repair (no silent rollback): a broken current version stays a
  reported problem until an operator rolls back or redeploys.

An object that cannot be read at all (EIO from a failing disk) is a finding like a corrupt one:
reported with the versions it affects, and the rest of the store is still checked.

The scan takes no lock (a nightly verify must not stall deploys), so by the time repair acts a
finding may be stale: gc and a deploy can remove and re-add an object in between. Repair holds
the store barrier (gc waits) for its whole run and re-examines each finding right before acting
on it -- an object is re-hashed before it is quarantined, and before a version is marked broken
the objects it lacks are looked at again under that model's lock, the lock its deploys commit
under. A finding that no longer holds is dropped (reported as resolved, "no longer ...").
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from . import clock
from .atomic import UnsafeFileError, open_regular
from .errors import CorruptionError, GaiaCasError
from .ingest import artifact_path
from .objects import hash_stream, object_stream
from .progress import Counted, Tally
from .trees import DIR, TreeReader, check_depth


@dataclass
class Problem:
    kind: str  # manifest, missing-object, unreadable-object, corrupt-object, bad-tree, tree-mismatch, link,
    # broken-current
    detail: str
    oid: str | None = None
    path: str | None = None
    versions: list[str] = field(default_factory=list)  # "model version"
    action: str | None = None  # what repair did
    resolved: bool = False  # fixed, or isolated (quarantined / marked broken)

    def __str__(self) -> str:
        affected = f" (affects {', '.join(self.versions)})" if self.versions else ""
        done = f" -> {self.action}" if self.action else ""
        return f"{self.kind}: {self.detail}{affected}{done}"

    def to_json(self) -> dict:
        return {"kind": self.kind, "detail": self.detail, "oid": self.oid, "path": self.path,
                "versions": self.versions, "action": self.action, "resolved": self.resolved}


@dataclass
class VerifyReport:
    problems: list[Problem] = field(default_factory=list)
    checked_objects: int = 0
    checked_trees: int = 0
    checked_links: int = 0
    sampled: float | None = None
    broken_versions: list[str] = field(default_factory=list)
    repaired: bool = False

    @property
    def ok(self) -> bool:
        """Every problem fixed, or isolated in versions marked broken (and never served)."""
        return all(p.resolved for p in self.problems)

    def to_json(self) -> dict:
        return {"ok": self.ok, "repaired": self.repaired, "checked_objects": self.checked_objects,
                "checked_trees": self.checked_trees, "checked_links": self.checked_links,
                "sample_percent": self.sampled, "broken_versions": self.broken_versions,
                "problems": [p.to_json() for p in self.problems]}


def in_sample(oid: str, percent: float | None, day: int) -> bool:
    """A deterministic window of the oid space that moves every day, as restic's read-data-subset.

    With ``percent`` p, the window covers p% of all oids and starts p% further each day, so
    100/p consecutive nights re-hash every object at least once.
    """
    if percent is None or percent >= 100:
        return True
    position = int(oid[:8], 16) % 10000 / 100.0  # 0.00 .. 99.99
    start = (day * percent) % 100.0
    return (position - start) % 100.0 < percent


def verify(ctx, model: str | None = None, *, repair: bool = False, sample: float | None = None,
           today: date | None = None, reason: str | None = None, progress=None) -> VerifyReport:
    """``progress(done, total)`` hears the bytes re-hashed (see :mod:`gaia_cas.progress`)."""
    from .names import check_text

    check_text(reason, "--reason")
    if sample is not None and not 0 < sample <= 100:
        from .errors import InvalidInputError

        raise InvalidInputError(f"--sample must be a percentage above 0 and at most 100, not {sample:g}")
    report = VerifyReport(sampled=sample, repaired=repair)
    day = (today or date.today()).toordinal()
    reader = TreeReader(ctx.objects)
    models = [ctx.model(model)] if model else ctx.models()

    manifests = {}
    for name in models:
        try:
            manifests[name] = ctx.manifests.read(name)
        except GaiaCasError as exc:
            report.problems.append(Problem("manifest", f"manifest of '{name}' cannot be read: {exc}"))
        except OSError as exc:  # EIO: reported like a corrupt manifest; the other models are checked
            report.problems.append(Problem("manifest", f"manifest of '{name}' cannot be read ({_why(exc)})"))
    manifests = {name: m for name, m in manifests.items() if m is not None}  # removed meanwhile

    # 1. Walk every version's trees; remember which versions need which object.
    users: dict[str, set[str]] = {}
    files: dict[str, int] = {}  # file oid -> the size a tree gives it
    claims: dict[str, dict[tuple[str, str], int]] = {}  # file oid -> {(tree oid, entry name): size}
    totals: dict[str, int] = {}  # tree oid -> the sizes of its entries, summed
    bad_trees: dict[str, tuple[str, str]] = {}  # tree oid -> (kind, why)
    for name, manifest in manifests.items():
        for version in manifest.versions:
            label = f"{name} {version.version}"
            problem = _walk(reader, version.tree, label, users, files, claims, totals, bad_trees)
            if problem:
                users.setdefault(version.tree, set()).add(label)
    report.checked_trees = len({oid for oid in users if oid not in files})

    # 2. Re-hash the file objects (all, or today's sample).
    corrupt: set[str] = set()
    missing: set[str] = {oid for oid, (kind, _) in bad_trees.items() if kind != "bad-tree"}
    chunked = _Chunked(ctx)
    tally = None
    if progress is not None:
        tally = Tally(progress, sum(size for oid, size in files.items() if in_sample(oid, sample, day)))
    for oid in sorted(files):
        path = ctx.objects.path(oid)
        if chunked.describes(oid, path):
            if in_sample(oid, sample, day):
                chunked.examine(oid, users[oid])
            continue
        if not in_sample(oid, sample, day):
            try:  # not re-hashed today, but a size the trees contradict costs one stat to see
                _check_claims(oid, os.lstat(path).st_size, claims, bad_trees)
            except OSError:
                pass  # found by the night that re-hashes it
            continue
        report.checked_objects += 1
        kind, detail, size = _examine(oid, path, tally)
        if kind == "intact":
            _check_claims(oid, size, claims, bad_trees)
            continue
        (corrupt if kind == "corrupt-object" else missing).add(oid)
        if kind == "corrupt-object":
            detail += f" (expected {files[oid]})"
        report.problems.append(Problem(kind, detail, oid=oid, path=str(path), versions=sorted(users[oid])))
    report.checked_objects += len(chunked.results)
    for chunk, (kind, detail) in sorted(chunked.bad.items()):
        (corrupt if kind == "corrupt-object" else missing).add(chunk)
        report.problems.append(Problem(kind, detail, oid=chunk, path=str(ctx.objects.path(chunk)),
                                       versions=sorted(chunked.users[chunk])))
    if tally is not None:
        tally.finish()
    for oid, (kind, why) in sorted(bad_trees.items()):
        report.problems.append(Problem(kind, why, oid=oid, path=str(ctx.objects.path(oid)),
                                       versions=sorted(users.get(oid, ()))))

    # 3. Materialized trees against their tree objects.
    tree_problems = _check_materialized(ctx, reader, users, corrupt | missing | set(bad_trees), report)

    # 4. Links against manifests.
    link_problems = []
    for name, manifest in manifests.items():
        report.checked_links += len(ctx.link_targets(manifest))
        found = _check_links(ctx, manifest)
        link_problems += found
        report.problems += found

    if repair:
        repair_findings(ctx, reader, report, corrupt, missing, bad_trees, tree_problems, link_problems, reason)

    # 5. Broken versions, and a broken current version (never fixed by moving current).
    for name in manifests:
        try:
            manifest = ctx.manifests.read(name)
        except (GaiaCasError, OSError):
            continue
        for version in manifest.versions:
            if version.broken:
                report.broken_versions.append(f"{name} {version.version}")
        current = manifest.current_version()
        if current is not None and current.broken:
            report.problems.append(Problem(
                "broken-current", f"the current version of '{name}' ({current.version}) is broken; roll back "
                f"('gaia-cas rollback {name} VERSION') or redeploy", versions=[f"{name} {current.version}"]))
    # Damage confined to versions already marked broken is isolated: listed, never served.
    broken = set(report.broken_versions)
    for problem in report.problems:
        if problem.kind in _ISOLATABLE and problem.versions and set(problem.versions) <= broken and not problem.resolved:
            problem.resolved = True
            problem.action = problem.action or "isolated (versions marked broken)"
    return report


_ISOLATABLE = ("missing-object", "unreadable-object", "corrupt-object", "bad-tree", "tree-mismatch")
_OBJECT_KINDS = ("missing-object", "unreadable-object", "corrupt-object", "bad-tree")


def _examine(oid: str, path, tally=None) -> tuple[str, str, int]:
    """Re-hash one object: ("intact", "", size), or the finding (kind, detail, size). The object
    is opened without following a symlink or blocking on a FIFO: a symlink or a special file in
    its place is a corrupt object (never followed, so never a hang)."""
    try:
        src = object_stream(str(path), oid)
    except CorruptionError as exc:
        if not os.path.lexists(path):
            return "missing-object", f"object {oid} is missing", 0
        return "corrupt-object", str(exc), 0
    except OSError as exc:  # EIO from a failing disk: the object is lost to us, like a missing one
        return "unreadable-object", f"object {oid} cannot be read ({_why(exc)})", 0
    try:
        with src:
            actual, size = hash_stream(src if tally is None else Counted(src, tally))
    except OSError as exc:
        return "unreadable-object", f"object {oid} cannot be read ({_why(exc)})", 0
    if actual != oid:
        return "corrupt-object", f"object {oid} holds bytes hashing to {actual} ({size} bytes)", size
    return "intact", "", size


class _Chunked:
    """The files kept as chunks only (cold versions, design.md, Chunks): each chunk re-hashed
    once however many files share it, and each file's whole hash checked through its chunks.
    A bad chunk is one finding naming every version, of every model, whose files need it."""

    def __init__(self, ctx):
        from .recipes import RecipeStore

        self.ctx = ctx
        self.recipes = RecipeStore(ctx.layout)
        self.any = os.path.isdir(self.recipes.root)
        self.results: dict[str, tuple[str, str]] = {}  # chunk -> (kind, detail) as examined
        self.bad: dict[str, tuple[str, str]] = {}
        self.users: dict[str, set[str]] = {}  # chunk -> versions needing it

    def describes(self, oid: str, path) -> bool:
        """Whether file ``oid`` is stored as chunks only (no whole object, a recipe)."""
        return self.any and not os.path.lexists(path) and self.recipes.exists(oid)

    def examine(self, oid: str, users: set[str]) -> None:
        from .hashing import new_hasher

        try:
            recipe = self.recipes.get(oid)
        except GaiaCasError as exc:
            self.bad[oid] = ("corrupt-object", f"the recipe of file {oid} is unusable: {exc}")
            self.users.setdefault(oid, set()).update(users)
            return
        whole = new_hasher()
        intact = True
        for chunk in recipe.chunks:
            self.users.setdefault(chunk.oid, set()).update(users)
            if chunk.oid not in self.results:
                self.results[chunk.oid] = self._hash(chunk.oid, chunk.length, oid, whole)
            elif intact:
                whole = None  # a chunk seen before: the whole hash needs its bytes again
            kind, detail = self.results[chunk.oid]
            if kind != "intact":
                self.bad[chunk.oid] = (kind, detail)
                intact = False
        if intact and whole is None:
            whole = new_hasher()
            for chunk in recipe.chunks:
                self._feed(chunk.oid, whole)
        if intact and whole.hexdigest() != oid:
            self.bad[oid] = ("corrupt-object", f"the chunks of file {oid} do not rebuild it (its recipe is corrupt)")
            self.users.setdefault(oid, set()).update(users)

    def _hash(self, chunk: str, length: int, file_oid: str, whole) -> tuple[str, str]:
        path = self.ctx.objects.path(chunk)
        try:
            with object_stream(str(path), chunk) as src:
                data = src.read(length + 1)
        except CorruptionError as exc:
            if not os.path.lexists(path):
                return "missing-object", f"chunk {chunk} of file {file_oid} is missing"
            return "corrupt-object", f"chunk {chunk} of file {file_oid}: {exc}"
        except OSError as exc:
            return "unreadable-object", f"chunk {chunk} of file {file_oid} cannot be read ({_why(exc)})"
        from .hashing import hash_bytes

        actual = hash_bytes(data)
        if actual != chunk or len(data) != length:
            return "corrupt-object", f"chunk {chunk} of file {file_oid} holds bytes hashing to {actual}"
        if whole is not None:
            whole.update(data)
        return "intact", ""

    def _feed(self, chunk: str, whole) -> None:
        with object_stream(str(self.ctx.objects.path(chunk)), chunk) as src:
            while data := src.read(1 << 20):
                whole.update(data)


def _why(exc: OSError) -> str:
    return exc.strerror or (os.strerror(exc.errno) if exc.errno else str(exc) or type(exc).__name__)


def _check_claims(oid: str, size: int, claims, bad_trees) -> None:
    """Every tree that lists the object gives it the size the object has."""
    for (tree, name), claimed in sorted(claims.get(oid, {}).items()):
        if claimed != size and tree not in bad_trees:
            bad_trees[tree] = ("bad-tree", f"tree {tree} gives {name!r} a size of {claimed} bytes, but its object "
                                           f"{oid} holds {size}")


def _walk(reader, oid, label, users, files, claims, totals, bad_trees, depth=0) -> bool:
    """Record every object the tree reaches; returns True if the tree itself is unusable."""
    users.setdefault(oid, set()).add(label)
    if oid in bad_trees:
        return True
    try:
        entries = reader.entries(oid)
    except GaiaCasError as exc:
        bad_trees[oid] = (_tree_kind(exc), str(exc))
        return True
    totals[oid] = sum(entry.size for entry in entries)
    broken = False
    for entry in entries:
        if entry.kind == DIR:
            try:
                check_depth(entry.oid, depth + 1)  # the bound every walker of trees shares
            except CorruptionError as exc:
                bad_trees[oid] = ("bad-tree", str(exc))
                return True
            broken |= _walk(reader, entry.oid, label, users, files, claims, totals, bad_trees, depth + 1)
            below = totals.get(entry.oid)
            if below is not None and below != entry.size and oid not in bad_trees:
                bad_trees[oid] = ("bad-tree", f"tree {oid} gives folder {entry.name!r} a size of {entry.size} "
                                              f"bytes, but the files below it total {below}")
                broken = True
        else:
            users.setdefault(entry.oid, set()).add(label)
            files[entry.oid] = entry.size
            claims.setdefault(entry.oid, {})[(oid, entry.name)] = entry.size
    return broken or oid in bad_trees


def _tree_kind(exc: GaiaCasError) -> str:
    if isinstance(exc, OSError) or isinstance(exc.__cause__, OSError):
        return "unreadable-object"
    return "missing-object" if "missing" in str(exc) else "bad-tree"


def _check_materialized(ctx, reader, users, bad_oids, report) -> list[Problem]:
    found = []
    try:
        names = sorted(os.listdir(ctx.layout.trees))
    except FileNotFoundError:
        return found
    for name in names:
        path = ctx.layout.trees / name
        if name not in users:
            continue  # a tree no version needs: gc's business, not a problem
        why = None
        if name in bad_oids:
            why = "its tree object is unusable"
        else:
            try:
                why = _compare(ctx, reader, name, path, bad_oids)
            except GaiaCasError as exc:
                why = str(exc)
            except OSError as exc:  # a file of the checkout that cannot be read (EIO)
                why = f"cannot be read ({_why(exc)}{': ' + os.path.basename(exc.filename) if exc.filename else ''})"
        if why:
            problem = Problem("tree-mismatch", f"materialized tree {name} {why}", oid=name, path=str(path),
                              versions=sorted(users[name]))
            report.problems.append(problem)
            found.append(problem)
    return found


def _compare(ctx, reader, oid, path: Path, bad_oids, depth=0) -> str | None:
    check_depth(oid, depth)
    entries = reader.entries(oid)
    try:
        present = set(os.listdir(path))
    except OSError as exc:
        return f"cannot be listed ({exc.strerror})"
    expected = {e.name for e in entries}
    if present != expected:
        extra, gone = sorted(present - expected), sorted(expected - present)
        return f"differs from its tree (extra {extra[:3]}, missing {gone[:3]})"
    for entry in entries:
        child = path / entry.name
        st = os.lstat(child)
        if entry.kind == DIR:
            if not stat.S_ISDIR(st.st_mode):
                return f"has {entry.name} as a non-folder"
            why = _compare(ctx, reader, entry.oid, child, bad_oids, depth + 1)
            if why:
                return why
            continue
        if not stat.S_ISREG(st.st_mode):
            return f"has {entry.name} that is not a regular file"
        if entry.oid in bad_oids:
            return f"links {entry.name} to a corrupt or missing object"
        try:
            obj = os.lstat(ctx.objects.path(entry.oid))
        except FileNotFoundError:
            return f"has {entry.name} whose object is missing"
        if (obj.st_dev, obj.st_ino) != (st.st_dev, st.st_ino):
            # A copy (no hard links here), or a file replaced in place: re-hash it, opened
            # without following a symlink or blocking on a FIFO swapped in since the lstat.
            try:
                with os.fdopen(open_regular(child), "rb", buffering=0) as src:
                    actual, _ = hash_stream(src)
            except UnsafeFileError:
                return f"has {entry.name} that is not a regular file"
            if actual != entry.oid:
                return f"has {entry.name} edited in place (hash {actual}, expected {entry.oid})"
    return None


def _check_links(ctx, manifest) -> list[Problem]:
    """Each link the model owns (current and every channel) against the manifest."""
    from . import links

    problems = []
    for channel, (relative, version) in ctx.link_targets(manifest).items():
        link = ctx.layout.link_path(relative)
        target = links.read_link(ctx.layout, relative)
        label = [f"{manifest.model} {version.version}"] if version else []
        if version is None or version.broken:
            if os.path.lexists(link):
                problems.append(Problem("link", f"{relative} exists but {channel} of '{manifest.model}' has "
                                        "nothing to serve", path=str(link), versions=label))
            continue
        tree = ctx.layout.tree_path(version.tree)
        expected = artifact_path(tree, version.name)
        if target is None:
            what = "is not a symlink" if os.path.lexists(link) else "is missing"
            problems.append(Problem("link", f"{relative} {what}; it should point at {version.version}",
                                    path=str(link), versions=label))
        elif os.path.normpath(target) != os.path.normpath(expected):
            problems.append(Problem("link", f"{relative} points at {target}, not at {channel} version "
                                    f"{version.version}", path=str(link), versions=label))
        elif not os.path.exists(link):
            problems.append(Problem("link", f"{relative} dangles (its tree is not materialized)", path=str(link),
                                    versions=label))
    return problems


class _Recheck:
    """Findings re-examined at the moment repair acts on them.

    Repair holds the store barrier throughout, so nothing it finds intact can disappear (only gc
    and repair itself delete objects): "intact" is remembered. "Still bad" is not: a deploy may
    re-add the object at any moment, so it is asked again under each model's lock.
    """

    def __init__(self, ctx, reader, corrupt, missing, bad_trees):
        self.ctx, self.reader = ctx, reader
        self.suspects = set(corrupt) | set(missing) | set(bad_trees)
        self.trees = {oid for oid in bad_trees}
        self.lying = {oid for oid, (kind, _) in bad_trees.items() if kind == "bad-tree"}  # immutable: stays bad
        self.intact: set[str] = set()
        self.bad: set[str] = set()  # found still bad since the last clear(): not re-hashed twice

    def unusable(self, oid: str) -> bool:
        """Whether the finding about ``oid`` still holds now."""
        if oid not in self.suspects or oid in self.intact:
            return False
        if oid in self.lying or oid in self.bad:
            return True
        if oid in self.trees:
            try:
                self.reader.entries(oid)
            except GaiaCasError:
                return True
            ok = True  # its own entries are rechecked one by one by the callers' walks
        else:
            ok = _examine(oid, self.ctx.objects.path(oid))[0] == "intact"
        (self.intact if ok else self.bad).add(oid)
        return not ok

    def _present(self, entry) -> bool:
        """The entry's object is stored whole, or (a file) as chunks that are all usable."""
        if self.ctx.objects.exists(entry.oid):
            return True
        if entry.kind == DIR:
            return False
        from .recipes import RecipeStore

        recipe = RecipeStore(self.ctx.layout).get(entry.oid)
        return recipe is not None and all(self.ctx.objects.exists(c.oid) and not self.unusable(c.oid)
                                          for c in recipe.chunks)

    def needs_any(self, tree_oid: str) -> bool:
        """Whether the tree reaches an object that is unusable now (or cannot be read at all)."""
        if self.unusable(tree_oid):
            return True
        try:
            for _, entry in self.ctx.trees.walk(tree_oid):
                if self.unusable(entry.oid) or not self._present(entry):
                    return True
        except (GaiaCasError, OSError):
            return True
        return False


def repair_findings(ctx, reader, report, corrupt, missing, bad_trees, tree_problems, link_problems, reason):
    # The barrier is taken once, for the whole repair (a nested one could deadlock against a
    # waiting gc, which holds the turnstile): gc cannot delete anything until repair is done.
    with ctx.writing():
        _repair_held(ctx, reader, report, corrupt, missing, bad_trees, tree_problems, link_problems, reason)


def _repair_held(ctx, reader, report, corrupt, missing, bad_trees, tree_problems, link_problems, reason):
    from .manifest import record
    from .materialize import retire_tree

    recheck = _Recheck(ctx, reader, corrupt, missing, bad_trees)
    # Quarantine corrupt objects first, so nothing rebuilt below can link to them. Each one is
    # re-hashed first: what is intact now (restored meanwhile) stays where it is.
    for problem in report.problems:
        if problem.kind == "corrupt-object" and problem.oid in corrupt:
            path = ctx.objects.path(problem.oid)
            now = _examine(problem.oid, path)[0]
            if now == "intact":
                recheck.intact.add(problem.oid)
                problem.action, problem.resolved = "no longer corrupt when re-checked: left alone", True
                continue
            if now != "corrupt-object":
                continue  # gone or unreadable by now: nothing to move; marked broken below if still so
            target = ctx.objects.quarantine(problem.oid)
            if target is not None:
                problem.action, problem.resolved = f"moved to {target}", True

    # Materialized trees that do not match: rebuild if possible, else just remove.
    for problem in tree_problems:
        retire_tree(ctx.layout, Path(problem.path))
        why = "its objects are unusable"
        if not recheck.needs_any(problem.oid):
            try:
                ctx.materialize(problem.oid)
                why = None
            except (GaiaCasError, OSError) as exc:
                why = f"rebuilding failed: {getattr(exc, 'strerror', None) or exc}"
        problem.action = "rebuilt from objects" if why is None else f"removed ({why})"
        problem.resolved = True

    # Other models may share a corrupt object (verify MODEL only hashed this one's): no
    # materialized tree anywhere may keep linking to it.
    if recheck.suspects:
        handled = {p.oid for p in tree_problems}
        for name in sorted(os.listdir(ctx.layout.trees)) if ctx.layout.trees.is_dir() else []:
            if name not in handled and recheck.needs_any(name):
                retire_tree(ctx.layout, ctx.layout.trees / name)

    # Mark (and unmark) broken versions in every model, then regenerate links, each under the
    # model's lock: the lock a deploy commits under, so an object a deploy re-added before its
    # commit is seen here, and what is still missing now is missing for this manifest.
    user, host = clock.who()
    for name in ctx.models():
        try:
            ctx.manifests.read(name)
        except (GaiaCasError, OSError):
            continue  # unreadable: reported as a problem, and nothing is written to it
        with ctx.manifests.edit(name, on_commit=ctx.sync_link) as manifest:
            recheck.bad.clear()  # asked again under this lock
            changed = []
            for version in manifest.versions:
                broken = recheck.needs_any(version.tree)
                if broken != version.broken:
                    version.broken = broken
                    changed.append(f"{version.version} {'broken' if broken else 'repaired'}")
            if changed:
                record(manifest, "verify-repair", version=None, before=manifest.current,
                       at=clock.stamp(clock.now()), user=user, host=host,
                       reason=reason or "verify --repair", details={"changes": changed})
            else:
                ctx.sync_link(manifest)  # no commit to trigger it: regenerate the link anyway
    for problem in report.problems:
        if problem.kind in _OBJECT_KINDS and problem.versions and not problem.resolved:
            problem.resolved = True
            if problem.oid in recheck.intact:
                what = "missing" if problem.kind == "missing-object" else problem.kind.split("-")[0]
                problem.action = f"no longer {what} when re-checked under the lock: nothing marked"
            else:
                problem.action = problem.action or "versions marked broken"
    for problem in link_problems:
        problem.action, problem.resolved = "regenerated", True
    actions = [p for p in report.problems if p.action]
    if actions:
        ctx.oplog.write("gaia_cas.verify", f"verify --repair: {len(actions)} problem(s) acted on: "
                         + "; ".join(f"{p.kind} {p.oid or p.path or ''} -> {p.action}" for p in actions[:20])
                         + (f" reason={reason!r}" if reason else ""))
