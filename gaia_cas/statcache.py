"""The stat cache: (device, inode, size, mtime_ns, ctime_ns) of a source file -> its oid.

An unchanged redeploy then costs a stat walk instead of reading every byte again. A cache hit
is only trusted when every one of those five values matches; anything else means re-hash.
Files modified within the last two seconds are not remembered at all (git's "racy" problem: a
file rewritten again within the timestamp granularity could keep the same stat and hide a
change). The cache is derived data in ``store/statcache.msgpack``: written atomically, and
losing or corrupting it only costs a re-hash.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from .atomic import write_atomic
from .codec import pack, unpack
from .errors import CorruptionError
from .names import is_oid

RACY_NS = 2_000_000_000
MAX_ENTRIES = 2_000_000


def _key(st: os.stat_result) -> list[int]:
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


class StatCache:
    def __init__(self, path: Path):
        self.path = path
        self._entries: dict[str, list] | None = None
        self._seen: dict[str, list] = {}

    def _load(self) -> dict[str, list]:
        if self._entries is None:
            try:
                entries = unpack(self.path.read_bytes(), "the stat cache", max_str=1 << 16,
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
        if entry[:5] != _key(st) or not is_oid(oid):
            return None
        self._seen[path] = entry
        return oid

    def remember(self, path: str, st: os.stat_result, oid: str) -> None:
        if time.time_ns() - st.st_mtime_ns < RACY_NS:
            return  # too fresh to trust next time
        self._seen[path] = [*_key(st), oid]

    def save(self, under: str) -> None:
        """Replace the entries below ``under`` (the deployed source) with this run's; keep the rest."""
        entries = self._load()
        prefix = under.rstrip("/") + "/"
        kept = {p: e for p, e in entries.items() if p != under and not p.startswith(prefix)}
        kept.update(self._seen)
        if len(kept) > MAX_ENTRIES:
            kept = dict(self._seen)
        if kept == entries:
            return  # an unchanged redeploy: nothing new to remember, no write
        try:
            write_atomic(self.path, pack(kept))
        except OSError:
            pass  # a cache that cannot be written only costs a re-hash next time
