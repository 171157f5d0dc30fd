"""Content-defined chunks of large files, and the recipes that put them back together.

A file at or above the store's chunking threshold is cut by content-defined chunking
(FastCDC, through pyfastcdc) into chunks of about 1 MiB (256 KiB to 4 MiB). Each chunk is an
ordinary object (oid = xxh3-128 of its bytes). The file keeps the oid of its whole bytes: a
tree entry is the same whether or not the file was ever chunked, so a folder has one tree oid
in every store, whatever its threshold, and a store written before chunks existed reads the
same trees. What chunking adds is a *recipe* per chunked file: its oid, its size and the list
of ``(chunk oid, length)`` that concatenate to it.

Cut points depend only on the bytes (a rolling hash over a window), so a head-only retrain
that rewrites 12 % of a weights file leaves the other chunks' cut points and oids as they were,
and an insertion shifts no cut point beyond the chunk it lands in. Fixed-size blocks lose
everything after an insertion; whole-file dedup loses everything on any change.

A recipe is trusted no more than an object: it is decoded with limits, its lengths must add up
to its size, and reassembly checks every chunk's hash and the whole file's hash before any byte
is used (:func:`reassemble`). A recipe whose chunks do not give its oid is corruption.
"""

from __future__ import annotations

from collections import namedtuple

from .codec import pack, unpack
from .errors import CorruptionError
from .hashing import hash_bytes, new_hasher
from .names import is_oid

MiB = 1 << 20
THRESHOLD = 64 * MiB  # default: files from this size up are chunked
MIN_CHUNK = 256 << 10
AVG_CHUNK = 768 << 10  # FastCDC's average is avg + min: about 1 MiB here (1.16 MiB measured on random weights)
MAX_CHUNK = 4 * MiB
FORMAT = "gaia-cas/recipe"
VERSION = 1
MAX_CHUNKS = 1 << 24  # 16 Mi chunks: a 4 TiB file at the 256 KiB minimum
MAX_RECIPE_BYTES = 64 * MiB

Chunk = namedtuple("Chunk", "oid length")


class Recipe(namedtuple("Recipe", "oid size chunks")):
    """How a file of ``size`` bytes and oid ``oid`` is made of ``chunks`` (a tuple of Chunk)."""

    __slots__ = ()

    def offsets(self):
        """Yield ``(offset, chunk)`` for every chunk, in file order."""
        offset = 0
        for chunk in self.chunks:
            yield offset, chunk
            offset += chunk.length


def encode_recipe(recipe: Recipe) -> bytes:
    return pack([FORMAT, VERSION, recipe.oid, recipe.size, [[c.oid, c.length] for c in recipe.chunks]])


def decode_recipe(data: bytes, where: str = "recipe") -> Recipe:
    raw = unpack(data, where, max_str=64, max_array=MAX_CHUNKS, max_map=0)
    if not (isinstance(raw, list) and len(raw) == 5 and raw[0] == FORMAT):
        raise CorruptionError(f"{where} is not a gaia-cas recipe")
    _, version, oid, size, chunks = raw
    if version != VERSION:
        raise CorruptionError(f"{where} has recipe version {version!r:.20}; this gaia-cas reads version {VERSION}")
    if not is_oid(oid):
        raise CorruptionError(f"{where} names an invalid file oid {oid!r:.80}")
    if not isinstance(size, int) or isinstance(size, bool) or not 0 < size < 2**63 or not isinstance(chunks, list):
        raise CorruptionError(f"{where} has an invalid size {size!r:.40}")
    parsed = []
    total = 0
    for item in chunks:
        if not (isinstance(item, list) and len(item) == 2 and is_oid(item[0]) and isinstance(item[1], int)
                and not isinstance(item[1], bool) and 0 < item[1] <= size):
            raise CorruptionError(f"{where} has a malformed chunk {item!r:.80}")
        parsed.append(Chunk(item[0], item[1]))
        total += item[1]
    if total != size:
        raise CorruptionError(f"{where}: its chunks hold {total} bytes, the file {size}")
    return Recipe(oid, size, tuple(parsed))


class Chunker:
    """Cuts a stream into chunks while the caller's single pass reads, hashes and writes it.

    ``feed`` takes the bytes just read (in any pieces); chunks are cut as soon as their end is
    known, so memory stays bounded by one maximum chunk plus one read buffer, whatever the
    file's size. ``finish`` returns the recipe of everything fed.
    """

    def __init__(self, *, min_size: int = MIN_CHUNK, avg_size: int = AVG_CHUNK, max_size: int = MAX_CHUNK):
        from pyfastcdc import FastCDC  # only stores that chunk a file pay for the import

        self._cdc = FastCDC(avg_size, min_size=min_size, max_size=max_size)
        self._max = max_size
        self._pending = bytearray()
        self._chunks: list[Chunk] = []
        self._hasher = new_hasher()
        self._size = 0

    def feed(self, data) -> list[tuple[Chunk, memoryview]]:
        """Take the next bytes of the file; returns the chunks completed by them, with their
        bytes (valid until the next call), so the caller can store the ones it lacks."""
        self._hasher.update(data)
        self._size += len(data)
        self._pending += data
        if len(self._pending) < 4 * self._max:  # cut in batches: each batch re-scans one chunk's bytes at most
            return []
        return self._cut(final=False)

    def _cut(self, final: bool) -> list[tuple[Chunk, memoryview]]:
        # FastCDC decides where a chunk ends from at most max_size bytes after its start (its
        # rolling hash starts afresh at every cut), so a cut is final once that many bytes
        # follow the chunk's start, or the file has ended.
        view = memoryview(self._pending)
        done = []
        consumed = 0
        for piece in self._cdc.cut_buf(view):
            end = piece.offset + piece.length
            if not final and piece.offset + self._max > len(view):
                break
            data = view[piece.offset:end]
            chunk = Chunk(hash_bytes(data), piece.length)
            self._chunks.append(chunk)
            done.append((chunk, data))
            consumed = end
        # A new buffer for the rest: the one the returned views point into is never resized.
        self._pending = bytearray(view[consumed:])
        return done

    def finish(self) -> tuple[Recipe, list[tuple[Chunk, memoryview]]]:
        last = self._cut(final=True) if self._pending else []
        return Recipe(self._hasher.hexdigest(), self._size, tuple(self._chunks)), last


def reassembled(recipe: Recipe, read_chunk):
    """Yield the bytes of the file ``recipe`` describes, chunk by chunk, each checked first.

    ``read_chunk(oid)`` returns a chunk's bytes (or raises). A chunk whose bytes do not match
    its oid or its length raises CorruptionError naming it before it is yielded; a whole that
    does not match the file's oid raises after the last chunk. Callers write aside and publish
    only once the generator has ended cleanly.
    """
    hasher = new_hasher()
    for offset, chunk in recipe.offsets():
        data = read_chunk(chunk.oid)
        if len(data) != chunk.length or hash_bytes(data) != chunk.oid:
            raise CorruptionError(f"chunk {chunk.oid} of file {recipe.oid} (at byte {offset}) does not match its "
                                  f"hash; the file cannot be rebuilt")
        hasher.update(data)
        yield data
    if hasher.hexdigest() != recipe.oid:
        raise CorruptionError(f"the chunks of file {recipe.oid} do not rebuild it (recipe corrupt)")


def reassemble(recipe: Recipe, read_chunk, write) -> None:
    """Write the file ``recipe`` describes through ``write(bytes)``; see :func:`reassembled`."""
    for data in reassembled(recipe, read_chunk):
        write(data)


def changed_ranges(old: Recipe | None, new: Recipe) -> list[tuple[int, int]]:
    """The byte ranges ``[start, end)`` of ``new`` held by no chunk of ``old``, adjacent ones
    merged: what a push of ``new`` sends when the remote has ``old``, and what ``diff`` shows."""
    have = {c.oid for c in old.chunks} if old is not None else set()
    ranges: list[tuple[int, int]] = []
    for offset, chunk in new.offsets():
        if chunk.oid in have:
            continue
        end = offset + chunk.length
        if ranges and ranges[-1][1] == offset:
            ranges[-1] = (ranges[-1][0], end)
        else:
            ranges.append((offset, end))
    return ranges
