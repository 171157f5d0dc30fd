"""Recipes on disk, and the two moves between a whole object and its chunks.

``store/recipes/<oid[:2]>/<oid[2:]>`` holds the recipe of the file ``oid`` (design.md, Chunks).
A recipe is written once, by the write protocol, and never changed; it is read without
following a symlink or blocking on a FIFO, with a size limit, and decoded with limits.

:func:`split` turns a whole object into chunks: it reads the object once, cutting and hashing
as it reads, stages the chunks the store lacks, installs them, then writes the recipe. Only
after both are durable may the whole object go (gc decides that, under its barrier).
:func:`rebuild` goes the other way: it reassembles a file aside from its chunks, every chunk and
the whole checked, into a staging area, where it is installed like any staged object.
"""

from __future__ import annotations

import os
import stat
from collections import namedtuple

from .atomic import UnsafeFileError, make_dirs, read_regular, write_atomic
from .chunking import MAX_CHUNK, MAX_RECIPE_BYTES, THRESHOLD, Chunker, Recipe, decode_recipe, encode_recipe
from .errors import CorruptionError, StoreError
from .hashing import hash_bytes, new_hasher
from .names import check_oid

READ = 1 << 20
SETTINGS = "chunking.msgpack"  # in store/: {"threshold": bytes}; absent means THRESHOLD


FORMAT_FILE = "format"  # in store/: absent means format 1 (no recipes); written before the first recipe
FORMAT = 2


def store_format(layout) -> int:
    """The store's format: 1 for a store written before chunks (no ``store/format``), else its number."""
    try:
        data = read_regular(layout.store / FORMAT_FILE, 256)
    except FileNotFoundError:
        return 1
    except OSError as exc:
        raise StoreError(f"cannot read store/{FORMAT_FILE}: {exc.strerror or exc}") from exc
    words = data.decode("ascii", "replace").split()
    if len(words) != 4 or words[:3] != ["gaia-cas", "store", "format"] or not words[3].isdigit():
        raise CorruptionError(f"store/{FORMAT_FILE} is not a gaia-cas store format line")
    return int(words[3])


def check_format(layout) -> None:
    """Refuse to write to a store of a newer format than this gaia-cas knows."""
    found = store_format(layout)
    if found > FORMAT:
        raise StoreError(f"this store has format {found}, written by a newer gaia-cas; this one writes format "
                         f"{FORMAT} stores only (upgrade gaia-cas)")


def upgrade(layout) -> bool:
    """Mark the store as format 2 (it may hold recipes); True if it was format 1. Written before
    the first recipe, so a store holding a recipe always says so."""
    if store_format(layout) >= FORMAT:
        return False
    write_atomic(layout.store / FORMAT_FILE, f"gaia-cas store format {FORMAT}\n".encode())
    return True


class Settings(namedtuple("Settings", "threshold hot_recent")):
    """The store's chunking settings: files of at least ``threshold`` bytes are kept as chunks
    once no hot version needs them whole; ``hot_recent`` more of each model's newest versions
    count as hot (besides current, channels, leases and the grace period)."""

    __slots__ = ()


DEFAULT_SETTINGS = Settings(THRESHOLD, 0)


def settings(layout) -> Settings:
    from .codec import unpack

    try:
        data = read_regular(layout.store / SETTINGS, 4096)
    except FileNotFoundError:
        return DEFAULT_SETTINGS
    except OSError as exc:
        raise StoreError(f"cannot read the chunking settings store/{SETTINGS}: {exc.strerror or exc}") from exc
    doc = unpack(data, f"store/{SETTINGS}", max_str=64, max_array=0, max_map=8)
    if not isinstance(doc, dict):
        raise CorruptionError(f"store/{SETTINGS} is not a map of settings")
    threshold, recent = doc.get("threshold", THRESHOLD), doc.get("hot_recent", 0)
    for value in (threshold, recent):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise CorruptionError(f"store/{SETTINGS} holds an invalid setting {value!r:.40}")
    if threshold < MAX_CHUNK:
        raise CorruptionError(f"store/{SETTINGS}: the threshold must be at least {MAX_CHUNK} bytes")
    return Settings(threshold, recent)


def chunk_threshold(layout) -> int:
    return settings(layout).threshold


def change_settings(layout, *, threshold: int | None = None, hot_recent: int | None = None) -> Settings:
    from .codec import pack
    from .errors import InvalidInputError

    now = settings(layout)
    if threshold is not None and threshold < MAX_CHUNK:
        raise InvalidInputError(f"the chunking threshold must be at least {MAX_CHUNK} bytes (one largest chunk)")
    if hot_recent is not None and not 0 <= hot_recent <= 10_000:
        raise InvalidInputError("--hot-recent must be between 0 and 10000")
    new = Settings(now.threshold if threshold is None else threshold, now.hot_recent if hot_recent is None else hot_recent)
    write_atomic(layout.store / SETTINGS, pack(new._asdict()))
    return new


def store_info(ctx, *, threshold: int | None = None, hot_recent: int | None = None,
               upgrade_format: bool = False) -> dict:
    """The store's format and settings; with ``threshold`` or ``hot_recent``, changed first
    (under the store barrier: a gc never plans with half of a change). With ``upgrade_format``, the
    store is first marked as of this gaia-cas's format (``gaia-cas store --upgrade``): one
    atomic write of ``store/format`` under the barrier, refused for a newer format; then
    ``format_before`` and ``upgraded`` say what it was and whether it changed."""
    before = None
    if threshold is not None or hot_recent is not None or upgrade_format:
        with ctx.writing():  # refuses a store of a newer format before anything is written
            before = store_format(ctx.layout)
            if upgrade_format:
                upgrade(ctx.layout)
            if threshold is not None or hot_recent is not None:
                chosen = change_settings(ctx.layout, threshold=threshold, hot_recent=hot_recent)
            else:
                chosen = settings(ctx.layout)
    else:
        chosen = settings(ctx.layout)
    info = {"format": store_format(ctx.layout), "chunk_threshold": chosen.threshold, "hot_recent": chosen.hot_recent}
    if upgrade_format:
        info.update(format_before=before, upgraded=before != info["format"])
    return info


def set_chunk_threshold(layout, threshold: int) -> None:
    change_settings(layout, threshold=threshold)


class RecipeStore:
    """The recipes of one store: ``get``, ``put``, ``exists``, ``oids``, ``delete``."""

    def __init__(self, layout):
        self.layout = layout
        self.root = layout.store / "recipes"

    def path(self, oid: str) -> str:
        check_oid(oid)
        return f"{self.root}/{oid[:2]}/{oid[2:]}"

    def _refuse_symlinks(self, oid: str) -> None:
        """Never read or write a recipe through a planted symlink (store/recipes or its shard)."""
        for folder in (self.root, os.path.dirname(self.path(oid))):
            if os.path.islink(folder):
                raise StoreError(f"{folder} is a symlink; gaia-cas never follows a symlink under store/")

    def exists(self, oid: str) -> bool:
        try:
            return stat.S_ISREG(os.lstat(self.path(oid)).st_mode)
        except FileNotFoundError:
            return False

    def get(self, oid: str) -> Recipe | None:
        """The recipe of file ``oid``, or None when the file was never chunked."""
        where = f"recipe of {oid}"
        self._refuse_symlinks(oid)
        try:
            data = read_regular(self.path(oid), MAX_RECIPE_BYTES)
        except FileNotFoundError:
            return None
        except UnsafeFileError:
            raise CorruptionError(f"the {where} is not a regular file (never followed): the store is damaged there") \
                from None
        except OSError as exc:
            raise StoreError(f"the {where} cannot be read ({exc.strerror or exc})") from exc
        if len(data) > MAX_RECIPE_BYTES:
            raise CorruptionError(f"the {where} is larger than {MAX_RECIPE_BYTES} bytes")
        recipe = decode_recipe(data, where)
        if recipe.oid != oid:
            raise CorruptionError(f"the {where} describes file {recipe.oid} instead")
        return recipe

    def put(self, recipe: Recipe, *, replace: bool = False) -> bool:
        """Store ``recipe`` unless the file has one already (either describes it); True if written.
        With ``replace``, a stored recipe that differs (or does not read) is replaced, atomically:
        for split, whose chunks are the ones just made durable, not whatever another cut listed."""
        if self.exists(recipe.oid):
            if not replace:
                return False
            try:
                if self.get(recipe.oid) == recipe:
                    return False
            except CorruptionError:
                pass
        final = self.path(recipe.oid)
        self._refuse_symlinks(recipe.oid)
        upgrade(self.layout)
        make_dirs(os.path.dirname(final))
        write_atomic(final, encode_recipe(recipe), 0o444)
        return True

    def oids(self):
        """The oid of every file that has a recipe (names that are not oids are skipped)."""
        from .objects import fanout_oids

        return fanout_oids(str(self.root))

    def delete(self, oid: str) -> bool:
        try:
            os.unlink(self.path(oid))
            return True
        except FileNotFoundError:
            return False


def cold_files(objects, trees, tree_oid: str) -> list[str]:
    """The files of ``tree_oid`` not stored whole but described by a recipe (kept as chunks)."""
    from .trees import FILE

    if not os.path.isdir(objects.layout.store / "recipes"):
        return []  # no file of this store was ever chunked: no walk
    recipes = None
    cold = []
    for _, entry in trees.walk(tree_oid):
        if entry.kind != FILE or objects.exists(entry.oid):
            continue
        if recipes is None:
            recipes = RecipeStore(objects.layout)
        if recipes.exists(entry.oid) and entry.oid not in cold:
            cold.append(entry.oid)
    return cold


def cut_object(objects, oid: str, on_chunk=None) -> Recipe:
    """Read the whole object ``oid`` once and return its recipe; ``on_chunk(chunk, data)`` sees
    every chunk's bytes as it is cut. The object must hash to its oid (else CorruptionError)."""
    chunker = Chunker()
    buffer = bytearray(READ)
    view = memoryview(buffer)
    with objects.open(oid) as src:
        while n := src.readinto(buffer):
            for chunk, data in chunker.feed(view[:n]):
                if on_chunk is not None:
                    on_chunk(chunk, data)
    recipe, last = chunker.finish()
    for chunk, data in last:
        if on_chunk is not None:
            on_chunk(chunk, data)
    if recipe.oid != oid:
        raise CorruptionError(f"object {oid} does not match its hash; it is not split into chunks")
    return recipe


def describe(objects, recipes: RecipeStore, oid: str) -> Recipe:
    """The recipe of file ``oid``: the stored one, or cut from the whole object now and stored
    (a recipe alone costs nothing to keep: no chunk is written)."""
    recipe = recipes.get(oid)
    if recipe is None:
        recipe = cut_object(objects, oid)
        try:
            recipes.put(recipe)
        except OSError:
            pass  # a read-only store: the recipe is cut again next time
    return recipe


def split(objects, recipes: RecipeStore, oid: str) -> tuple[Recipe, int]:
    """Store the chunks of the whole object ``oid`` that the store lacks, then its recipe.

    Returns the recipe and how many chunk bytes were new. The chunks are staged as they are cut
    (the object is read once), installed together, and only then is the recipe written: a
    recipe on disk always finds its chunks. The caller holds the store barrier."""
    with objects.staging() as staging:
        added = [0]
        seen: set[str] = set()  # a chunk that recurs in the file (padding, tied weights) is stored and counted once

        def keep(chunk, data) -> None:
            if chunk.oid not in seen and not objects.exists(chunk.oid):
                seen.add(chunk.oid)
                if staging.add_bytes(bytes(data)) != chunk.oid:
                    raise CorruptionError(f"chunk {chunk.oid} of object {oid} changed while it was staged")
                added[0] += chunk.length

        recipe = cut_object(objects, oid, keep)
        staging.install()
        staging.keep()
    # The recipe of exactly these chunks: one kept from another cut (a diff's, a push's, other
    # parameters) may list chunks this store lacks, and the whole copy goes next.
    recipes.put(recipe, replace=True)
    return recipe, added[0]


LARGEST_CHUNK = MAX_CHUNK * 4  # no chunk is longer, whatever parameters cut it: a longer one is corruption


def read_chunk(objects, oid: str) -> bytes:
    """A chunk's bytes, at most a few maximum chunks of them (a bigger object is no chunk)."""
    with objects.open(oid) as src:
        data = src.read(LARGEST_CHUNK + 1)
    if len(data) > LARGEST_CHUNK:
        raise CorruptionError(f"object {oid} is too large to be a chunk")
    return data


def rebuild(objects, recipe: Recipe, staging) -> int:
    """Reassemble the file ``recipe`` describes into ``staging`` (installed with the rest of it),
    every chunk checked against its oid and the whole against the file's; returns its size.

    Each chunk is read whole into one buffer, checked there, and written from there by
    :meth:`Staging.add_stream`, which hashes the whole file as it writes: every byte is read
    once and never copied in Python, and the bytes written are the bytes just checked (a
    chunk rewritten meanwhile cannot slip past its hash). Memory holds one chunk."""
    chunks = ChunkStream(objects, recipe)
    oid, size = staging.add_stream(chunks, f"file {recipe.oid} from its chunks", chunks.buffer())
    if oid != recipe.oid or size != recipe.size:
        raise CorruptionError(f"the chunks of file {recipe.oid} do not rebuild it (recipe corrupt)")
    return size


class ChunkStream:
    """The file a recipe describes, read like a file: each ``readinto`` fills the buffer with
    the next whole chunk, its length and hash checked before the call returns. The buffer must
    hold the recipe's longest chunk (:meth:`buffer` makes one)."""

    def __init__(self, objects, recipe: Recipe):
        self.objects, self.recipe = objects, recipe
        self._chunks = recipe.offsets()

    def buffer(self) -> bytearray:
        longest = max(c.length for c in self.recipe.chunks)
        if longest > LARGEST_CHUNK:
            raise CorruptionError(f"the recipe of file {self.recipe.oid} names a chunk of {longest} bytes, "
                                  f"longer than any chunk (recipe corrupt)")
        return bytearray(longest)

    def readinto(self, buffer) -> int:
        item = next(self._chunks, None)
        if item is None:
            return 0
        offset, chunk = item
        if chunk.length > len(buffer):  # the caller's mistake, not the store's: buffer() is long enough
            raise ValueError(f"a buffer of {len(buffer)} bytes cannot hold chunk {chunk.oid} ({chunk.length} bytes)")
        view = memoryview(buffer)[:chunk.length]
        with self.objects.open(chunk.oid) as src:  # a regular file, never through a symlink
            got = 0
            if os.fstat(src.fileno()).st_size == chunk.length:  # else truncated or grown: refused below
                while got < chunk.length and (n := src.readinto(view[got:])):
                    got += n
        if got != chunk.length or hash_bytes(view) != chunk.oid:
            raise CorruptionError(f"chunk {chunk.oid} of file {self.recipe.oid} (at byte {offset}) does not match "
                                  f"its hash; the file cannot be rebuilt")
        return got


class rebuilt_file:
    """A context manager: the file ``recipe`` describes, reassembled and verified into a
    private locked folder of store/tmp (gc leaves it alone), as a path; removed on exit. For
    whoever needs a cold file's bytes as one file without making it whole in the store (a push)."""

    def __init__(self, objects, recipe: Recipe):
        self.objects, self.recipe = objects, recipe
        self.dir = self.fd = None

    def __enter__(self) -> str:
        from .atomic import write_all
        from .locking import make_locked_dir

        layout = self.objects.layout
        layout.tmp.mkdir(parents=True, exist_ok=True)
        self.dir, self.fd = make_locked_dir(layout.tmp, "rebuild")
        path = os.path.join(self.dir, "file")
        try:
            out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                chunks = ChunkStream(self.objects, self.recipe)
                buffer = chunks.buffer()
                hasher = new_hasher()
                while n := chunks.readinto(buffer):
                    hasher.update(memoryview(buffer)[:n])
                    write_all(out, memoryview(buffer)[:n])
            finally:
                os.close(out)
            if hasher.hexdigest() != self.recipe.oid:
                raise CorruptionError(f"the chunks of file {self.recipe.oid} do not rebuild it (recipe corrupt)")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return path

    def __exit__(self, *exc) -> None:
        from .atomic import remove_tree

        if self.dir is not None:
            remove_tree(self.dir)
            os.close(self.fd)
            self.dir = None

