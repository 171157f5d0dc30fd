"""The operation log: ``logs/versioning_YYYYmmdd_HHMMSS.log``, in the old scripts' line format.

    2025-07-16 20:29:17,571 - gaia_cas.oplog - INFO - gaia-cas operation log ...   (the marker)
    2025-07-16 20:29:17,571 - gaia_cas.deploy - INFO - deployed ssd 1.4.0 ...

One file per process that changes something, created on its first line; lines are appended with
O_APPEND so concurrent processes never interleave within a line.

The old copy-per-version script wrote logs of the same name pattern into the same folder, and
they are the user's: gc deletes only files that gaia-cas provably wrote. Each file is born
holding the marker line (written to a temporary name and hard-linked into place, so no other
line can come before it, and a file that already exists -- the user's -- is never marked), and
gc reads that first line back, never through a symlink, before deleting anything.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

LOG_PREFIX = "versioning_"
LOG_SUFFIX = ".log"
MARKER_LOGGER = "gaia_cas.oplog"
MARKER_TEXT = "gaia-cas operation log: written by gaia-cas; gc deletes it once older than --log-age"
_MARKER_END = f" - {MARKER_LOGGER} - INFO - {MARKER_TEXT}"
_MAX_FIRST_LINE = 256


def _stamp(now: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)) + ",%03d" % (int(now * 1000) % 1000)


class OpLog:
    """Appends operation lines. Best effort by design: it is written after a commit, and a
    full disk there must not turn a committed change into a reported failure -- the failure is
    kept in ``error`` for the caller to show as a warning instead."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.path: Path | None = None
        self.error: str | None = None

    def _open_path(self) -> Path:
        if self.path is None:
            from .atomic import make_dirs

            make_dirs(self.folder)
            path = self.folder / time.strftime(f"{LOG_PREFIX}%Y%m%d_%H%M%S{LOG_SUFFIX}")
            _create_marked(path)
            self.path = path
        return self.path

    def write(self, logger: str, message: str, level: str = "INFO") -> None:
        from .atomic import open_regular

        line = f"{_stamp(time.time())} - {logger} - {level} - {' '.join(message.splitlines())}\n"
        try:
            fd = open_regular(self._open_path(), os.O_WRONLY | os.O_APPEND)
            try:
                os.write(fd, line.encode("utf-8", "backslashreplace"))
            finally:
                os.close(fd)
        except OSError as exc:
            self.error = f"could not write the operation log in {self.folder}: {exc.strerror or exc}"


def _create_marked(path: Path) -> None:
    """Create ``path`` holding just the marker line, unless it exists (ours or not)."""
    from .atomic import tmp_name, write_all

    tmp = path.parent / tmp_name(path.name)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        try:
            write_all(fd, f"{_stamp(time.time())}{_MARKER_END}\n".encode())
        finally:
            os.close(fd)
        try:
            os.link(tmp, path, follow_symlinks=False)
        except FileExistsError:
            pass  # another process of this second made it, or it is not ours: appended to only
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass


def is_marker(line: str) -> bool:
    return line.endswith(_MARKER_END) and len(line) == 23 + len(_MARKER_END)


def written_by_gaia_cas(fd: int) -> bool:
    """Whether the regular file open at ``fd`` starts with gaia-cas's marker line."""
    head = os.pread(fd, _MAX_FIRST_LINE, 0)
    first = head.split(b"\n", 1)
    return len(first) == 2 and is_marker(first[0].decode("utf-8", "replace"))


def log_files(folder: Path) -> list[Path]:
    try:
        names = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(folder / n for n in names if n.startswith(LOG_PREFIX) and n.endswith(LOG_SUFFIX))


def tail(folder: Path, n: int) -> list[str]:
    """The last ``n`` lines across all log files, oldest first (the user's old logs included,
    read without following a symlink; gaia-cas's marker lines left out)."""
    from .atomic import open_regular

    lines: list[str] = []
    for path in reversed(log_files(folder)):
        if len(lines) >= n:
            break
        try:
            fd = open_regular(path)
        except OSError:
            continue  # a symlink, a FIFO, or gone: not a log to read
        with os.fdopen(fd, "r", encoding="utf-8", errors="replace") as f:
            lines = [line for line in f.read().splitlines() if not is_marker(line)] + lines
    # Several processes can start in the same second and share a file name prefix order; the
    # timestamp at the start of each line orders them correctly.
    lines.sort(key=lambda line: line[:23])
    return lines[-n:] if n > 0 else []
