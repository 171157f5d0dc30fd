"""Tree objects: a directory as a msgpack list of ``[name, kind, oid, size]`` entries.

Entries are sorted by the UTF-8 bytes of their names before packing (msgpack keeps the order
it is given, and the same directory must always give the same bytes, hence the same oid).
``kind`` is ``"file"`` or ``"dir"``; ``size`` is the file's size, or for a directory the total
size of the files below it (never negative nor above 2**63 - 1; verify also checks each size
against the object and the folder totals against their entries). A tree read back from the store is validated entry by entry before
any path is built from it: names (no ``..``, ``/``, empty, duplicates), kinds, oids, sizes and
nesting depth.
"""

from __future__ import annotations

from collections import namedtuple

from .codec import pack, unpack
from .errors import CorruptionError, StoreError
from .names import entry_name_problem, is_oid

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without the import typing costs at start-up
if TYPE_CHECKING:
    from typing import Iterator

FILE = "file"
DIR = "dir"
KINDS = (FILE, DIR)
MAX_DEPTH = 64
MAX_TREE_BYTES = 64 << 20
MAX_ENTRIES = 1_000_000
MAX_SIZE = 2**63 - 1  # the largest file (off_t) a filesystem can hold: msgpack alone would allow 2**64 - 1


Entry = namedtuple("Entry", "name kind oid size")


def _sort_key(entry: Entry) -> bytes:
    return entry.name.encode("utf-8")


def encode_tree(entries: list[Entry]) -> bytes:
    ordered = sorted(entries, key=_sort_key)
    return pack([[e.name, e.kind, e.oid, e.size] for e in ordered])


def decode_tree(data: bytes, oid: str = "?") -> list[Entry]:
    raw = unpack(data, f"tree {oid}", max_str=4096, max_array=MAX_ENTRIES, max_map=0)
    if not isinstance(raw, list):
        raise CorruptionError(f"tree {oid} is not a list of entries")
    entries: list[Entry] = []
    previous: bytes | None = None
    for item in raw:
        if not (isinstance(item, list) and len(item) == 4):
            raise CorruptionError(f"tree {oid} has a malformed entry {item!r:.80}")
        name, kind, child, size = item
        problem = entry_name_problem(name)
        if problem:
            raise CorruptionError(f"tree {oid} has an entry name {name!r:.80} that {problem}")
        if kind not in KINDS:
            raise CorruptionError(f"tree {oid} entry {name!r} has unknown kind {kind!r:.40}")
        if not is_oid(child):
            raise CorruptionError(f"tree {oid} entry {name!r} has an invalid oid {child!r:.80}")
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_SIZE:
            raise CorruptionError(f"tree {oid} entry {name!r} has an invalid size {size!r:.40}")
        key = name.encode("utf-8")
        if previous is not None and key <= previous:
            what = "a duplicate" if key == previous else "an unsorted"
            raise CorruptionError(f"tree {oid} has {what} entry {name!r}")
        previous = key
        entries.append(Entry(name, kind, child, size))
    return entries


class TreeReader:
    """Reads and walks trees from an object store, with a depth bound."""

    def __init__(self, store):
        self.store = store

    def entries(self, oid: str) -> list[Entry]:
        try:
            data = self.store.read(oid, MAX_TREE_BYTES)
        except OSError as exc:
            if isinstance(exc, StoreError):
                raise
            # EIO from a failing disk, a permission lost: one clean error naming the tree
            raise StoreError(f"tree {oid} cannot be read ({exc.strerror or exc})") from exc
        return decode_tree(data, oid)

    def walk(self, oid: str, prefix: str = "", depth: int = 0, *, into=None) -> Iterator[tuple[str, Entry]]:
        """Yield ``(relative path, entry)`` for every entry below the tree, parents first.

        The one traversal of tree objects (gc's mark, materialize, check_complete, diff all use
        it), so the depth bound is enforced in one place. ``into(entry)``, asked for each folder
        entry before it is yielded, says whether to descend (gc skips subtrees it has marked)."""
        check_depth(oid, depth)
        for entry in self.entries(oid):
            path = f"{prefix}{entry.name}"
            descend = entry.kind == DIR and (into is None or into(entry))
            yield path, entry
            if descend:
                yield from self.walk(entry.oid, path + "/", depth + 1, into=into)


def check_depth(oid: str, depth: int) -> None:
    """A tree at ``depth`` below a version's root (0) may nest at most MAX_DEPTH levels."""
    if depth > MAX_DEPTH:
        raise CorruptionError(f"tree {oid} nests deeper than {MAX_DEPTH} levels")
