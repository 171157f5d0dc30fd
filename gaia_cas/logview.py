"""Reading the operation log: the lines about one model, and following it as it grows.

The log is one file per process that changed something (:mod:`gaia_cas.oplog`), so following
it means watching the folder for new files as well as the known ones for new lines -- what
``tail -F`` does for one file. Lines are read whole only (up to the last newline): a line being
appended is printed once it is complete. Files are read without following a symlink.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from .atomic import open_regular
from .oplog import is_marker, log_files, tail

_MESSAGE = re.compile(r" - [\w.]+ - [A-Z]+ - ")


def read(ctx, n: int = 20, model: str | None = None, follow: bool = False):
    """``Repository.logs``: the last ``n`` lines (a list), or with ``follow`` an endless
    iterator of them and of every line written after. ``model`` is a name or an alias; the
    name of a model removed since is taken as it is (its lines are still in the log)."""
    from .errors import InvalidInputError, NotFoundError
    from .names import check_model_name

    if n < 0:
        raise InvalidInputError("-n must be 0 or more")
    if model is not None:
        try:
            model = ctx.model(model)
        except NotFoundError:
            model = check_model_name(model)
    if follow:
        return follow_lines(ctx.layout.logs, n, model)
    return lines(ctx.layout.logs, n, model)


def lines(folder: Path, n: int, model: str | None = None) -> list[str]:
    """The last ``n`` lines, oldest first; with ``model``, of the lines that name it."""
    if model is None:
        return tail(folder, n)
    found, _ = _read_all(folder, {}, model)
    return found[-n:] if n > 0 else []


def follow_lines(folder: Path, n: int, model: str | None = None, *, interval: float = 0.5,
           sleep=time.sleep):
    """The last ``n`` lines, then every new line as it is written, forever (the caller stops)."""
    offsets: dict[Path, int] = {}
    found, offsets = _read_all(folder, offsets, model)
    yield from (found[-n:] if n > 0 else [])
    while True:
        sleep(interval)
        found, offsets = _read_all(folder, offsets, model)
        yield from found


def names_model(line: str, model: str) -> bool:
    """Whether the message of a log line names ``model`` as a word of its own (``deployed ssd
    1.4.0``, ``ssd: ...``, ``cleanup ssd (...)``), not inside a path or another name."""
    match = _MESSAGE.search(line)
    message = line[match.end():] if match else line
    return re.search(rf"(?<![\w./-]){re.escape(model)}(?![\w/-]|\.\w)", message) is not None


def _read_all(folder: Path, offsets: dict[Path, int], model: str | None) -> tuple[list[str], dict[Path, int]]:
    """Every complete line past ``offsets`` in every log file, ordered by time; the new offsets."""
    found: list[str] = []
    fresh = dict(offsets)
    for path in log_files(folder):
        start = offsets.get(path, 0)
        try:
            fd = open_regular(path)
        except OSError:
            continue  # a symlink, a FIFO, or gone: not a log to read
        try:
            size = os.fstat(fd).st_size
            if size < start:
                start = 0  # replaced by a new file of the same name
            data = os.pread(fd, size - start, start) if size > start else b""
        finally:
            os.close(fd)
        complete = data.rfind(b"\n") + 1
        fresh[path] = start + complete
        for line in data[:complete].decode("utf-8", "replace").splitlines():
            if not is_marker(line) and (model is None or names_model(line, model)):
                found.append(line)
    found.sort(key=lambda line: line[:23])  # the timestamp each line starts with
    return found, fresh
