"""verify --remote: re-hash what the remote's manifests reach, on the remote.

Every tree of every version is read (and hashed) from the bucket; every file object, or today's
``--sample`` of them (the same rotating window as local verify), is downloaded and re-hashed,
its bytes discarded; a file the remote keeps as chunks is rebuilt from them the same way (every
chunk and the whole checked, nothing written). A missing or corrupt object, chunk or recipe is
one problem naming it and every version it affects; nothing on the remote is changed.

With ``repair``, each one is mended from this store when it has the bytes: a tree or whole file
re-uploaded under its key (the key is the hash, so the good bytes replace the bad), a chunk taken
from the local chunk object or from the local whole file at its offset, a recipe that does not
rebuild its file replaced by this store's cut of it (and any chunk the remote lacks sent first).
Every byte is re-hashed here before it leaves; what this store does not have stays a problem.
A push cannot mend these: it sends only what no remote version reaches.
"""

from __future__ import annotations

from .errors import CorruptionError, InvalidInputError
from .verify import Problem, VerifyReport, in_sample


def verify_remote(repo, model: str | None = None, *, remote: str | None = None, sample: float | None = None,
                  today=None, repair: bool = False) -> VerifyReport:
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
    chunk_at: dict[str, tuple[str, int, int]] = {}  # a bad chunk -> (a file holding it, offset, length)
    chunked: set[str] = set()  # files the remote keeps as a recipe

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
            recipe = None
            if recipes is not None and oid in large:
                try:
                    recipe = recipes.get(oid, large[oid])
                except CorruptionError:
                    chunked.add(oid)  # kept as a recipe there, and that recipe is bad
                    raise
            if recipe is not None:
                chunked.add(oid)
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
                chunk_at.setdefault(chunk.oid, (recipe.oid, offset, chunk.length))
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
    if repair:
        _repair(repo, objects, report, chunk_at, chunked)
    return report


def _repair(repo, objects, report: VerifyReport, chunk_at: dict, chunked: set) -> None:
    """Mend each problem from this store's verified bytes (see the module's docstring)."""
    from .errors import GaiaCasError

    report.repaired = True
    for problem in report.problems:
        if problem.oid is None or problem.kind == "manifest":
            continue
        try:
            mended = _mend(repo, objects, problem.oid, chunk_at, chunked)
        except (GaiaCasError, OSError) as exc:
            problem.action = f"not mended: {' '.join(str(exc).split())}"
            continue
        if mended:
            problem.action, problem.resolved = mended, True
        else:
            problem.action = "not mended: this store does not have its bytes"


def _mend(repo, objects, oid: str, chunk_at: dict, chunked: set) -> str | None:
    from .chunking import Chunk
    from .recipes import RecipeStore
    from .remote_objects import ChunkedUpload, LocalFileBytes, upload_object

    if oid in chunk_at:
        file, offset, length = chunk_at[oid]
        if not (repo.objects.exists(oid) or repo.objects.exists(file)):
            return None
        with LocalFileBytes(repo, file) as source:
            data = source.read(Chunk(oid, length), offset)  # checked against its oid here
        objects.upload(oid, data)
        return "re-uploaded from this store"
    has = repo.objects.exists(oid) or RecipeStore(repo.layout).exists(oid)
    if not has:
        return None
    if oid in chunked:  # its recipe does not rebuild it: this store's own cut, chunks first
        ChunkedUpload(repo, objects, {}, set()).send_all([oid])
        return "recipe and missing chunks re-uploaded from this store"
    upload_object(repo, objects, oid)  # re-hashed before it leaves
    return "re-uploaded from this store"


def _kind(exc: CorruptionError) -> str:
    return "missing-object" if "is missing" in str(exc) else "corrupt-object"
