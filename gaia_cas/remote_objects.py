"""Moving objects between a local store and a remote: whole, or -- a large file -- as chunks.

:func:`upload_versions` (push, deploy --remote) sends what the remote lacks children first:
blobs, then trees bottom-up; the caller's manifest swap comes last, so an object a remote
manifest reaches is on the remote. :func:`fetch_tree` (pull) stages every object of a tree the
local store lacks, each verified before it counts.

Large files travel as chunks (docs/design.md, "Chunks on the remote"):

- A file at or above the pushing store's chunking threshold goes up as its chunks -- ordinary
  objects under ``objects/`` -- and then its recipe under ``recipes/``: a recipe on the remote
  always finds its chunks, as a tree finds its blobs.
- A push does not ask about the chunks of files this model's remote versions reach already:
  the remote's recipes of those files list them (one small GET each, only for files at a path
  the push sends a large file to). Those versions are the push's ``relied`` set, re-checked
  inside its swap (a cleanup and gc meanwhile restart it), exactly as for whole objects. Any
  other chunk is found like any other object (a HEAD each, or one listing, and the refresh
  rule for an old unreferenced upload).
- A pull rebuilds a file the remote keeps as chunks into its staging, chunk by chunk in order:
  from this store when it has the chunk -- a chunk object, or the same bytes in a whole file
  of the model's local versions, cut to the same chunks -- else downloaded, several ahead.
  Every chunk is checked against its oid and the whole against the file's (the staging's own
  hash) before anything is installed; a lying recipe rebuilds nothing.
- A file this store keeps cold (recipe + chunks) is rebuilt from them, not downloaded.
"""

from __future__ import annotations

import os
import threading
from datetime import timedelta

from .errors import CorruptionError, GaiaCasError

SMALL = 16 << 20  # objects read whole (hashed, then uploaded from memory); larger go up from the file
HEAD_LIMIT = 256  # up to this many candidates are HEADed one by one; more: one listing
REFRESH_AGE = timedelta(hours=1)  # an unreferenced upload older than this is sent again
JOBS = 32  # the best concurrency measured here against Ceph RGW (tools README)
AHEAD = 8  # chunks of one file downloaded ahead of the one being staged
REBUILDS = JOBS // AHEAD  # files a pull rebuilds from chunks at once: 4 x 2*AHEAD chunks of 4 MiB in memory at most
KNOWN_RECIPES = 64  # at most this many remote recipes read to learn which chunks the remote has


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


def remote_recipes(robjects):
    """The remote's recipe store, or None for a backend that keeps every file whole."""
    return getattr(robjects, "recipes", None)


# -- push ----------------------------------------------------------------------------------

def upload_versions(repo, versions, remote_trees: set, robjects, cut: list | None = None) -> tuple[int, int]:
    """Upload every object the versions reach that the remote lacks, children first; returns
    (objects, bytes) sent. Objects reached from the remote's own versions (``remote_trees``,
    walked in the local copies of those trees) are on the remote already: never checked.
    ``cut`` collects the recipes cut from whole local files on the way, for the caller to keep
    (:func:`keep_recipes`) once its swap has committed: a push that fails changes nothing here."""
    from .chunking import MAX_CHUNK
    from .trees import DIR

    known: set[str] = set()
    known_large: dict[str, set[tuple[str, int]]] = {}  # path -> (oid, size) of the large files the remote's versions have there
    for tree in remote_trees:
        if repo.objects.exists(tree):
            known.add(tree)
            for path, entry in repo.trees.walk(tree):
                known.add(entry.oid)
                if entry.kind != DIR and entry.size >= MAX_CHUNK:
                    known_large.setdefault(path, set()).add((entry.oid, entry.size))
    blobs: dict[str, tuple[int, str]] = {}  # oid -> (size, a path it is at)
    depth: dict[str, int] = {}

    def collect(tree: str, level: int, prefix: str) -> None:
        if tree in known:
            return
        if depth.get(tree, -1) >= level:
            return
        depth[tree] = level
        for entry in repo.trees.entries(tree):
            if entry.oid in known:
                continue
            if entry.kind == DIR:
                collect(entry.oid, level + 1, f"{prefix}{entry.name}/")
            else:
                blobs.setdefault(entry.oid, (entry.size, f"{prefix}{entry.name}"))

    for v in versions:
        collect(v.tree, 0, "")
    missing = find_missing(robjects, set(blobs) | set(depth))
    send = sorted(oid for oid in blobs if oid in missing)
    large = []
    if remote_recipes(robjects) is not None:
        from .recipes import chunk_threshold

        threshold = chunk_threshold(repo.layout)
        large = [oid for oid in send if blobs[oid][0] >= threshold]
    chunked = set(large)
    whole = [oid for oid in send if oid not in chunked]
    count, sent = len(whole), sum(parallel_map(lambda oid: upload_object(repo, robjects, oid), whole))
    if large:
        chunks = ChunkedUpload(repo, robjects, known_large, {blobs[oid][1] for oid in large}, cut)
        n, size = chunks.send_all(large)
        count += n
        sent += size
    for level in sorted(set(depth.values()), reverse=True):  # deepest trees first, roots last
        # a tree reached at two depths goes up with its deepest: never before its children
        wave = sorted(t for t, d in depth.items() if d == level and t in missing)
        sent += sum(parallel_map(lambda oid: upload_object(repo, robjects, oid), wave))
        count += len(wave)
    return count, sent


def keep_recipes(repo, recipes: list) -> None:
    """Store the recipes a committed push cut, so the next pull of a retrain here reads them
    instead of cutting the file again (a read-only store: cut again then)."""
    from .recipes import RecipeStore

    store = RecipeStore(repo.layout)
    for recipe in recipes:
        try:
            store.put(recipe)
        except (GaiaCasError, OSError):
            pass


def find_missing(robjects, candidates: set) -> set:
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


def upload_object(repo, robjects, oid: str) -> int:
    """One local object, checked against its oid before a byte leaves (a corrupt local object
    is never spread), then uploaded whole. Returns its size."""
    from .objects import hash_bytes, hash_file

    path = repo.objects.path(oid)
    if not os.path.lexists(path):
        from .recipes import RecipeStore, rebuilt_file

        recipe = RecipeStore(repo.layout).get(oid)
        if recipe is not None:  # cold here, and the remote keeps whole files: rebuilt aside, verified, sent
            with rebuilt_file(repo.objects, recipe) as rebuilt:
                robjects.upload(oid, rebuilt)
            return recipe.size
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


class ChunkedUpload:
    """A push's large files, sent as the chunks the remote lacks and then their recipes.

    ``known_large``: path -> the large files the remote's versions of this model keep there;
    the chunks of their remote recipes are on the remote (see the module's argument) and are
    not asked about. ``paths``: where the files to send are, so only the recipes of files at the
    same paths are read (a retrain rewrites the file at the same path)."""

    def __init__(self, repo, robjects, known_large: dict, paths: set, cut: list | None = None):
        self.repo, self.robjects = repo, robjects
        self.cut = cut if cut is not None else []
        self.rrecipes = remote_recipes(robjects)
        near = sorted({file for path in paths for file in known_large.get(path, ())})
        if not near:  # renamed: any large file of the remote's versions may share chunks
            near = sorted({file for files in known_large.values() for file in files})
        found = parallel_map(self._known_recipe, near[:KNOWN_RECIPES])
        self.there = {c.oid for recipe in found if recipe is not None for c in recipe.chunks}

    def _known_recipe(self, file: tuple[str, int]):
        """The remote's recipe of a file its versions reach, or None when it has none or it
        does not read as one: then its chunks are asked about like any other (a bad recipe of
        an old version, a co-tenant's or bit rot's, must not stop every later push)."""
        try:
            return self.rrecipes.get(*file)
        except CorruptionError:
            return None

    def recipe(self, oid: str):
        """File ``oid``'s recipe: the stored one when cold; else cut from the whole object (hash
        checked) and kept only once the push committed (upload_versions' ``cut``)."""
        from .recipes import RecipeStore, cut_object

        recipe = RecipeStore(self.repo.layout).get(oid)
        if recipe is None:
            recipe = cut_object(self.repo.objects, oid)
            self.cut.append(recipe)
        return recipe

    def send_all(self, oids: list[str]) -> tuple[int, int]:
        """Send each file's missing chunks, then its recipe; (objects, bytes) sent. The chunks
        of every file are asked about together: one HEAD each or one listing for the push,
        not a listing per file (a sharded model's retrain lists the bucket once)."""
        recipes = [self.recipe(oid) for oid in oids]
        missing = find_missing(self.robjects, {c.oid for r in recipes for c in r.chunks if c.oid not in self.there})
        count = sent = 0
        for recipe in recipes:
            n, size = self._send(recipe, missing)
            count += n
            sent += size
        return count, sent

    def _send(self, recipe, missing: set) -> tuple[int, int]:
        wanted = {c.oid: c for c in recipe.chunks if c.oid in missing}
        offsets = {c.oid: offset for offset, c in recipe.offsets()}
        todo = sorted(wanted)
        with LocalFileBytes(self.repo, recipe.oid) as source:
            def one(chunk_oid: str) -> int:
                chunk = wanted[chunk_oid]
                data = source.read(chunk, offsets[chunk_oid])
                self.robjects.upload(chunk_oid, data)
                return chunk.length

            sent = sum(parallel_map(one, todo))
        sent += self.rrecipes.put(recipe)  # after every chunk it lists
        missing.difference_update(todo)  # a chunk another file shares goes up once
        return len(todo) + 1, sent


class LocalFileBytes:
    """A local file's chunk bytes to upload (a push, a remote repair), each checked against its
    oid before it leaves: from the whole object when it is stored whole, else from the chunk
    objects (cold). A context manager; CorruptionError for bytes that are not the chunk."""

    def __init__(self, repo, oid: str):
        from .objects import open_object

        self.repo = repo
        self.fd = open_object(repo.objects.path_str(oid), oid) if repo.objects.exists(oid) else None

    def __enter__(self) -> "LocalFileBytes":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def read(self, chunk, offset: int) -> bytes:
        from .hashing import hash_bytes
        from .recipes import read_chunk

        if self.fd is not None:
            data = os.pread(self.fd, chunk.length, offset)
        else:
            data = read_chunk(self.repo.objects, chunk.oid)
        if hash_bytes(data) != chunk.oid:
            raise CorruptionError(f"local chunk {chunk.oid} does not match its hash; run 'gaia-cas verify --repair'")
        return data

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


# -- pull ----------------------------------------------------------------------------------

def fetch_tree(repo, robjects, staging, tree: str, received: list, local=None) -> None:
    """Stage every object of ``tree`` the local store lacks, each verified against its oid;
    ``received`` ([objects, bytes]) grows by what was downloaded. ``local``: a
    :class:`LocalChunks` of the model's local versions, whose large files may share chunks.

    One pool of JOBS threads does it all: a tree's subtrees and blobs are queued as soon as the
    tree arrives (subtrees first, then its blobs largest first), so the downloads of the first
    folders run while deeper trees are still being fetched -- no round trip per tree, none per
    level. A blob goes straight into staging and is checked by the hash the staging computes as
    it writes (``robjects.stage``): one hash and one write per byte. The first failure cancels
    what has not started and halts the staging (a corrupt object found early does not wait for
    the rest); nothing still writes into the staging once this returns or raises."""
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    from .chunking import MAX_CHUNK
    from .objects import CHUNK
    from .trees import DIR, MAX_TREE_BYTES, check_depth, decode_tree

    buffers = threading.local()
    local = local or LocalChunks(repo, [])
    rrecipes = remote_recipes(robjects)
    # Each rebuild holds up to 2*AHEAD chunks (64 MiB): a model sharded into 32 large files
    # must not hold 2 GiB at once. REBUILDS of them already run JOBS downloads.
    rebuilds = threading.BoundedSemaphore(REBUILDS)

    def entries_of(oid: str):
        if repo.objects.exists(oid):
            return repo.trees.entries(oid), 0, 0
        data = robjects.read(oid, MAX_TREE_BYTES)  # verified against oid
        entries = decode_tree(data, oid)
        if staging.add_bytes(data) != oid:
            raise CorruptionError(f"tree {oid} changed while it was staged")
        return entries, 1, len(data)

    def fetch(oid: str, size: int):
        buffer = getattr(buffers, "buffer", None)  # the staging's own buffer is not for threads
        if buffer is None:
            buffer = buffers.buffer = bytearray(CHUNK)
        if size >= MAX_CHUNK:
            recipe = local.recipe(oid)  # cold here: rebuilt from this store's chunks
            if recipe is None and rrecipes is not None:
                recipe = rrecipes.get(oid, size)  # bounded by the size the verified tree gives
            if recipe is not None:
                with rebuilds:
                    return [], *stage_from_chunks(robjects, recipe, size, staging, local, buffer)
        return [], 1, robjects.stage(oid, staging, size, buffer)

    seen: set[str] = {tree}
    pending: dict = {}
    pool = ThreadPoolExecutor(max_workers=JOBS)
    try:
        pending[pool.submit(entries_of, tree)] = 0  # the tree's depth below the root; -1: a blob
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                depth = pending.pop(future)
                entries, objects, size = future.result()  # the first failure stops here
                received[0] += objects
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


def stage_from_chunks(robjects, recipe, size: int, staging, local, buffer: bytearray) -> tuple[int, int]:
    """Rebuild the file ``recipe`` describes into ``staging`` through ``buffer`` (this thread's):
    each chunk from ``local`` when this store has its bytes, else downloaded (AHEAD of the one
    being written). Returns
    (chunks, bytes) downloaded. Refused before a byte is read when the recipe's size is not the
    one the file's (verified) tree gives."""
    from collections import Counter, deque
    from concurrent.futures import ThreadPoolExecutor

    from .chunking import reassembled

    if recipe.size != size:
        raise CorruptionError(f"the recipe of file {recipe.oid} says {recipe.size} bytes, its tree {size}; refused")
    downloaded = [0, 0]
    counting = threading.Lock()

    def get(chunk) -> bytes:
        data = local.read(chunk)
        if data is None:
            data = robjects.read(chunk.oid, chunk.length)  # verified against its oid
            with counting:
                downloaded[0] += 1
                downloaded[1] += len(data)
        return data

    # A chunk the file holds several times (a run of zeros is one 4 MiB chunk over and over)
    # is fetched once: its future is kept until its last use, for at most AHEAD such chunks.
    left = Counter(c.oid for c in recipe.chunks)
    kept: dict = {}  # chunk oid -> the future of a repeated chunk, until its last use

    with ThreadPoolExecutor(max_workers=AHEAD) as pool:
        queue = deque()
        chunks = iter(recipe.chunks)

        def top_up() -> None:
            while len(queue) < 2 * AHEAD:
                chunk = next(chunks, None)
                if chunk is None:
                    return
                future = kept.get(chunk.oid)
                if future is None:
                    future = pool.submit(get, chunk)
                    if left[chunk.oid] > 1 and len(kept) < AHEAD:
                        kept[chunk.oid] = future
                queue.append((chunk.oid, future))

        def next_chunk(oid: str) -> bytes:
            top_up()
            oid, future = queue.popleft()
            data = future.result()
            left[oid] -= 1
            if not left[oid]:
                kept.pop(oid, None)
            top_up()
            return data

        try:
            got, staged = staging.add_stream(_Pieces(reassembled(recipe, next_chunk)), f"file {recipe.oid}",
                                             buffer)
        finally:
            for _, future in queue:
                future.cancel()
    if got != recipe.oid or staged != size:
        raise CorruptionError(f"the chunks of file {recipe.oid} on the remote do not rebuild it; refused")
    return downloaded[0], downloaded[1]


class _Pieces:
    """An iterator of byte strings read like a file (``readinto``), for a staging's add_stream."""

    def __init__(self, pieces):
        self._pieces = pieces
        self._pending = memoryview(b"")

    def readinto(self, buffer) -> int:
        while not self._pending:
            data = next(self._pieces, None)
            if data is None:
                return 0
            self._pending = memoryview(data)
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


def _is_chunk(data: bytes, chunk) -> bool:
    from .hashing import hash_bytes

    return len(data) == chunk.length and hash_bytes(data) == chunk.oid


class LocalChunks:
    """Where this store has a chunk's bytes already, for a pull: a chunk object, or a range of a
    whole large file of ``trees`` (the model's local versions), cut to chunks the first time a
    chunk is not found as an object (cut points depend only on the bytes, so a retrain's
    unchanged stretches give the same chunks). A chunk is handed out only when its bytes hash to
    its oid (the reassembly checks again); a damaged local copy makes it a download."""

    def __init__(self, repo, trees: list[str]):
        self.repo, self.trees = repo, trees
        self._lock = threading.Lock()
        self._index = None  # chunk oid -> (file oid, offset)

    def recipe(self, oid: str):
        """The local recipe of file ``oid`` when every chunk it lists is here (a cold file)."""
        from .recipes import RecipeStore

        if not os.path.isdir(self.repo.layout.store / "recipes"):
            return None
        try:
            recipe = RecipeStore(self.repo.layout).get(oid)
        except (GaiaCasError, OSError):
            return None  # a damaged local recipe lends nothing: the remote's is used
        if recipe is None or not all(self.repo.objects.exists(c.oid) for c in recipe.chunks):
            return None
        return recipe

    def read(self, chunk) -> bytes | None:
        from .objects import open_object
        from .recipes import read_chunk

        if self.repo.objects.exists(chunk.oid):
            try:
                data = read_chunk(self.repo.objects, chunk.oid)
                if _is_chunk(data, chunk):
                    return data
            except (CorruptionError, OSError):
                pass  # gone or damaged here: downloaded instead
        where = self._where().get(chunk.oid)
        if where is None:
            return None
        try:
            fd = open_object(self.repo.objects.path_str(where[0]), where[0])
        except (CorruptionError, OSError):
            return None
        try:
            data = os.pread(fd, chunk.length, where[1])
        except OSError:
            return None
        finally:
            os.close(fd)
        # The file's recipe may have been cut before its bytes rotted (describe keeps a stored
        # recipe): a range that is not the chunk is downloaded instead of failing the rebuild.
        return data if _is_chunk(data, chunk) else None

    def _where(self) -> dict:
        with self._lock:
            if self._index is None:
                self._index = self._cut()
            return self._index

    def _cut(self) -> dict:
        from .chunking import MAX_CHUNK
        from .recipes import RecipeStore, cut_object
        from .trees import DIR

        index: dict = {}
        recipes = RecipeStore(self.repo.layout)
        files = set()
        for tree in self.trees:
            if not self.repo.objects.exists(tree):
                continue
            try:
                found = [entry.oid for _, entry in self.repo.trees.walk(tree)
                         if entry.kind != DIR and entry.size >= MAX_CHUNK and self.repo.objects.exists(entry.oid)]
            except (GaiaCasError, OSError):
                continue  # a damaged local tree lends nothing (verify reports it); the pull downloads
            files.update(found)
        for oid in sorted(files):
            try:
                # Cut, not stored: a pull writes nothing to the store before it installs (an
                # interrupted or refused pull leaves the store as it was -- no recipe, no format).
                recipe = recipes.get(oid) or cut_object(self.repo.objects, oid)
            except (GaiaCasError, OSError):
                continue  # a damaged local file or recipe lends nothing
            for offset, chunk in recipe.offsets():
                index.setdefault(chunk.oid, (oid, offset))
        return index
