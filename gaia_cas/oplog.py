"""The operation log: ``logs/versioning_YYYYmmdd_HHMMSS.log``, in the old scripts' line format.

    2025-07-16 20:29:17,571 - gaia_cas.deploy - INFO - deployed ssd 1.4.0 ...

One file per process that changes something, opened on its first line; lines are appended with
O_APPEND so concurrent processes never interleave within a line.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

LOG_PREFIX = "versioning_"
LOG_SUFFIX = ".log"


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
            self.folder.mkdir(parents=True, exist_ok=True)
            self.path = self.folder / time.strftime(f"{LOG_PREFIX}%Y%m%d_%H%M%S{LOG_SUFFIX}")
        return self.path

    def write(self, logger: str, message: str, level: str = "INFO") -> None:
        now = time.time()
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)) + ",%03d" % (int(now * 1000) % 1000)
        line = f"{stamp} - {logger} - {level} - {' '.join(message.splitlines())}\n"
        try:
            fd = os.open(self._open_path(), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                os.write(fd, line.encode("utf-8", "backslashreplace"))
            finally:
                os.close(fd)
        except OSError as exc:
            self.error = f"could not write the operation log in {self.folder}: {exc.strerror or exc}"


def log_files(folder: Path) -> list[Path]:
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    return sorted(folder / n for n in names if n.startswith(LOG_PREFIX) and n.endswith(LOG_SUFFIX))


def tail(folder: Path, n: int) -> list[str]:
    """The last ``n`` lines across all log files, oldest first."""
    lines: list[str] = []
    for path in reversed(log_files(folder)):
        if len(lines) >= n:
            break
        with open(path, "r", encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines() + lines
    # Several processes can start in the same second and share a file name prefix order; the
    # timestamp at the start of each line orders them correctly.
    lines.sort(key=lambda line: line[:23])
    return lines[-n:] if n > 0 else []
