"""The stat cache: (device, inode, size, mtime_ns, ctime_ns) of a source file -> its oid.

An unchanged redeploy then costs a stat walk instead of reading every byte again. A cache hit
is only trusted when every one of those five values matches; anything else means re-hash.
Files modified or changed within the last two seconds -- by mtime *or* ctime -- are not
remembered at all (git's "racy" rule: a file rewritten again within the timestamp granularity
could keep the same stat and hide a change). ctime counts as much as mtime: ``touch -d`` or
``cp -p`` restores an old mtime after a same-size rewrite, and only the ctime, which no user can
set, still says the file was just written. The cache is derived data in ``store/statcache.msgpack``: written atomically, and
losing or corrupting it only costs a re-hash.

Beside it, ``store/statcache-trees.msgpack`` remembers, per deployed source folder, a digest of
every path and stat key the scan saw (see :func:`gaia_cas.ingest.fingerprint`) and the tree
those files made. When a new scan gives the same digest, every file would hit the per-file cache,
so the tree is known without looking files up one by one or building a tree object: that is what
makes an unchanged redeploy a stat walk and little else. A folder is only remembered when every
file in it was trusted by the rules above, so a digest never vouches for a racy file.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from .atomic import read_regular, write_atomic  # never through a symlink, never a FIFO
from .codec import pack, unpack
from .errors import CorruptionError
from .names import is_oid

RACY_NS = 2_000_000_000
MAX_ENTRIES = 2_000_000
MAX_TREES = 1000  # remembered source folders; the least recently deployed go first
TREES_FORMAT = 1  # bump when the digest or the tree encoding changes: old memos then never match


def stat_key(st: os.stat_result) -> list[int]:
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


class StatCache:
    def __init__(self, path: Path):
        self.path = path
        self.trees_path = path.with_name(path.stem + "-trees" + path.suffix)
        self._entries: dict[str, list] | None = None
        self._seen: dict[str, list] = {}
        self._trees: dict[str, list] | None = None
        self._trees_changed = False

    def _load(self) -> dict[str, list]:
        if self._entries is None:
            try:
                entries = unpack(read_regular(self.path, 1 << 30), "the stat cache", max_str=1 << 16,
                                 max_array=MAX_ENTRIES, max_map=MAX_ENTRIES)
                self._entries = entries if isinstance(entries, dict) else {}
            except (OSError, CorruptionError):
                self._entries = {}  # derived data: start over
        return self._entries

    def lookup(self, path: str, st: os.stat_result) -> str | None:
        entry = self._load().get(path)
        if not isinstance(entry, list) or len(entry) != 6:
            return None
        oid = entry[5]
        if entry[:5] != stat_key(st) or not is_oid(oid):
            return None
        self._seen[path] = entry
        return oid

    def remember(self, path: str, st: os.stat_result, oid: str) -> bool:
        """Remember ``path``'s oid under its stat; False if the file is too fresh to trust."""
        now = time.time_ns()
        if now - st.st_mtime_ns < RACY_NS or now - st.st_ctime_ns < RACY_NS:
            return False
        self._seen[path] = [*stat_key(st), oid]
        return True

    # -- whole folders -----------------------------------------------------------------------

    def _load_trees(self) -> dict[str, list]:
        if self._trees is None:
            try:
                memo = unpack(read_regular(self.trees_path, 1 << 30), "the stat cache's trees", max_str=1 << 16,
                              max_array=8, max_map=MAX_TREES)  # [format, {source: [digest, tree, size, files]}]
            except (OSError, CorruptionError):
                memo = None
            valid = isinstance(memo, list) and len(memo) == 2 and memo[0] == TREES_FORMAT and isinstance(memo[1], dict)
            self._trees = memo[1] if valid else {}
        return self._trees

    def recall_tree(self, source: str, fingerprint: str) -> list | None:
        """What ``remember_tree`` stored for ``source`` if its scan's digest is still ``fingerprint``."""
        entry = self._load_trees().get(source)
        if isinstance(entry, list) and len(entry) >= 2 and entry[0] == fingerprint and is_oid(entry[1]):
            return entry[1:]
        return None

    def remember_tree(self, source: str, fingerprint: str, *facts) -> None:
        """Remember that a scan of ``source`` with this digest built a tree (``facts[0]``, an
        oid) with the given facts; the caller vouches that every file in it was trusted."""
        trees = self._load_trees()
        entry = [fingerprint, *facts]
        if trees.get(source) == entry:
            return
        trees.pop(source, None)  # re-inserted last: the dict's order is the eviction order
        trees[source] = entry
        while len(trees) > MAX_TREES:
            del trees[next(iter(trees))]
        self._trees_changed = True

    def save(self, under: str) -> None:
        """Replace the entries below ``under`` (the deployed source) with this run's; keep the rest."""
        entries = self._load()
        prefix = under.rstrip("/") + "/"
        kept = {p: e for p, e in entries.items() if p != under and not p.startswith(prefix)}
        kept.update(self._seen)
        if len(kept) > MAX_ENTRIES:
            kept = dict(self._seen)
        if kept != entries:  # an unchanged redeploy has nothing new to remember: no write
            try:
                write_atomic(self.path, pack(kept))
            except OSError:
                pass  # a cache that cannot be written only costs a re-hash next time
        self.save_trees()

    def save_trees(self) -> None:
        if not self._trees_changed:
            return
        try:
            write_atomic(self.trees_path, pack([TREES_FORMAT, self._trees]))
        except OSError:
            pass  # as above: the next unchanged redeploy only takes the per-file path
        self._trees_changed = False
