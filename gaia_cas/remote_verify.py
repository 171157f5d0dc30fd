"""verify --remote: re-hash what the remote's manifests reach, on the remote.

Every tree of every version is read (and hashed) from the bucket; every file object, or today's
``--sample`` of them (the same rotating window as local verify), is downloaded and re-hashed,
its bytes discarded; a file the remote keeps as chunks is rebuilt from them the same way (every
chunk and the whole checked, nothing written). A missing or corrupt object is a problem naming the object and the versions
it affects; nothing on the remote is changed (repair is local only: a corrupt remote object is
mended by pushing again from a store that has it whole -- after removing the bad copy).
"""

from __future__ import annotations

from .errors import CorruptionError, InvalidInputError
from .verify import Problem, VerifyReport, in_sample


def verify_remote(repo, model: str | None = None, *, remote: str | None = None, sample: float | None = None,
                  today=None) -> VerifyReport:
    from collections import Counter
    from datetime import date

    from . import remotes
    from .chunking import MAX_CHUNK
    from .hashing import new_hasher
    from .remote_objects import parallel_map, remote_recipes
    from .trees import DIR, MAX_TREE_BYTES, check_depth, decode_tree
    from .transfer import local_name

    if sample is not None and not 0 < sample <= 100:
        raise InvalidInputError(f"--sample must be a percentage above 0 and at most 100, not {sample:g}")
    day = (today or date.today()).toordinal()
    objects, manifests = remotes.get(repo, remote).open()
    report = VerifyReport(sampled=sample)
    names = [local_name(repo, model)] if model else manifests.names()  # a local alias names the same model
    users: dict[str, list[str]] = {}  # oid -> "model version" reaching it
    files: set[str] = set()
    large: dict[str, int] = {}  # oid -> size of the files a recipe may describe
    recipes = remote_recipes(objects)
    trees: dict[str, object] = {}  # oid -> entries, or None when missing/corrupt

    def walk(oid: str, label: str, depth: int) -> None:
        users.setdefault(oid, [])
        if label not in users[oid]:
            users[oid].append(label)
        if oid in trees:
            entries = trees[oid]
        else:
            try:
                entries = decode_tree(objects.read(oid, MAX_TREE_BYTES), oid)
            except CorruptionError as exc:
                trees[oid] = None
                kind = "missing-object" if "is missing" in str(exc) else "bad-tree"
                report.problems.append(Problem(kind, str(exc), oid=oid, versions=users[oid]))
                return
            trees[oid] = entries
            report.checked_trees += 1
        if entries is None:
            return
        for entry in entries:
            if entry.kind == DIR:
                try:
                    check_depth(entry.oid, depth + 1)  # the bound every walker of trees shares
                except CorruptionError as exc:
                    report.problems.append(Problem("bad-tree", str(exc), oid=oid, versions=users[oid]))
                    continue
                walk(entry.oid, label, depth + 1)
            else:
                files.add(entry.oid)
                if entry.size >= MAX_CHUNK:
                    large[entry.oid] = entry.size
                users.setdefault(entry.oid, [])
                if label not in users[entry.oid]:
                    users[entry.oid].append(label)

    for name in names:
        snap = manifests.snapshot(name)
        if snap is None:
            report.problems.append(Problem("manifest", f"remote has no model '{name}'"))
            continue
        for version in snap.manifest.versions:
            walk(version.tree, f"{name} {version.version}", 0)

    chosen = sorted(oid for oid in files if in_sample(oid, sample, day))

    def check(oid: str):
        """None, or (the oid at fault -- the file, or one of its chunks --, a Problem)."""
        try:
            recipe = recipes.get(oid, large[oid]) if recipes is not None and oid in large else None
            if recipe is not None:
                return check_chunks(recipe)
            with objects.open(oid) as stream:
                while stream.read(1 << 20):
                    pass
            return None
        except CorruptionError as exc:
            return oid, Problem(_kind(exc), str(exc), oid=oid, versions=users[oid])

    def check_chunks(recipe):
        """Download every chunk (each verified against its oid) and hash the whole as it goes."""
        hasher = new_hasher()
        left = Counter(c.oid for c in recipe.chunks)
        kept: dict[str, bytes] = {}  # a chunk the file holds again later (a run of zeros): read once
        for offset, chunk in recipe.offsets():
            try:
                data = kept.get(chunk.oid)
                if data is None:
                    data = objects.read(chunk.oid, chunk.length)
                    if left[chunk.oid] > 1 and len(kept) < 8:
                        kept[chunk.oid] = data
                left[chunk.oid] -= 1
                if not left[chunk.oid]:
                    kept.pop(chunk.oid, None)
            except CorruptionError as exc:
                return chunk.oid, Problem(_kind(exc), f"chunk {chunk.oid} (at byte {offset} of file {recipe.oid}): "
                                                      f"{exc}", oid=chunk.oid, versions=users[recipe.oid])
            hasher.update(data)
        if hasher.hexdigest() != recipe.oid:
            return recipe.oid, Problem("corrupt-object", f"the chunks of file {recipe.oid} on the remote do not "
                                                         "rebuild it (its recipe is corrupt)", oid=recipe.oid,
                                       versions=users[recipe.oid])
        return None

    at_fault: dict[str, Problem] = {}  # a chunk shared by many files is one finding naming every version
    for found in parallel_map(check, chosen):
        report.checked_objects += 1
        if found is None:
            continue
        oid, problem = found
        if oid in at_fault:
            at_fault[oid].versions = sorted(set(at_fault[oid].versions) | set(problem.versions))
        else:
            at_fault[oid] = problem
            report.problems.append(problem)
    return report


def _kind(exc: CorruptionError) -> str:
    return "missing-object" if "is missing" in str(exc) else "corrupt-object"
