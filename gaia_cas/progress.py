"""Progress of long work: what the verbs report, and the bar the command line draws from it.

A verb that moves many bytes (deploy, import-legacy, verify, export, import, push, pull) takes
an optional ``progress`` callback and calls it as ``progress(done, total)``: the bytes done so
far and the bytes the whole operation will move (``None`` when that is not known in advance).
The callback may be called from worker threads, and several times with the same numbers.
Without a callback a verb does no bookkeeping at all.

:class:`Bar` is the callback the command line passes when stderr is a terminal (never in a
pipe, under ``--json`` or ``-q``): a tqdm bar with bytes, rate and ETA, redrawn in place. tqdm
is imported only when a bar is actually drawn -- after :data:`DELAY` seconds of work -- so
``gaia-cas --version``, an unchanged redeploy and every short command never load it.
"""

from __future__ import annotations

import os
import sys
import time

DELAY = 0.5  # seconds of work before a bar appears ($GAIA_CAS_PROGRESS_DELAY): short work stays silent


class Tally:
    """Bytes done out of ``total``, reported to ``progress`` as they are added; safe to add to
    from several threads."""

    __slots__ = ("progress", "total", "done", "_lock")

    def __init__(self, progress, total: int | None, done: int = 0):
        import threading

        self.progress, self.total, self.done = progress, total, done
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:  # held while reporting too: the callback sees ``done`` only grow
            self.done += n
            self.progress(self.done, self.total)

    def finish(self) -> None:
        """Report the work complete (the total is what was done when it was not known)."""
        with self._lock:
            if self.total is None:
                self.total = self.done
            self.done = max(self.done, self.total)
            self.progress(self.done, self.total)


class Counted:
    """A binary stream whose reads are added to a :class:`Tally`; everything else passes through."""

    __slots__ = ("raw", "tally")

    def __init__(self, raw, tally: Tally):
        self.raw, self.tally = raw, tally

    def readinto(self, buffer) -> int:
        n = self.raw.readinto(buffer)
        if n:
            self.tally.add(n)
        return n

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        if data:
            self.tally.add(len(data))
        return data

    def __enter__(self):
        self.raw.__enter__()
        return self

    def __exit__(self, *exc):
        return self.raw.__exit__(*exc)

    def __getattr__(self, name):
        return getattr(self.raw, name)


class CountedObjects:
    """An object store (a remote's) whose uploads and downloads are added to a :class:`Tally`,
    for push and pull: the bytes moved are counted where they cross, whatever loop moves them."""

    def __init__(self, objects, tally: Tally):
        self.objects, self.tally = objects, tally

    def upload(self, oid: str, data) -> None:
        self.objects.upload(oid, data)
        self.tally.add(os.stat(data).st_size if isinstance(data, (str, os.PathLike)) else len(data))

    def open(self, oid: str):
        return Counted(self.objects.open(oid), self.tally)

    def read(self, oid: str, limit: int) -> bytes:
        data = self.objects.read(oid, limit)
        self.tally.add(len(data))
        return data

    def stage(self, oid: str, staging, size: int | None = None, buffer=None) -> int:
        """A download straight into a staging area: counted as the staging reads it."""
        return self.objects.stage(oid, _CountedStaging(staging, self.tally), size, buffer)

    def __getattr__(self, name):
        return getattr(self.objects, name)


class _CountedStaging:
    """A staging area whose ``add_stream`` counts what it reads from the stream."""

    def __init__(self, staging, tally: Tally):
        self.staging, self.tally = staging, tally

    def add_stream(self, src, label: str = "the source", buffer=None):
        return self.staging.add_stream(Counted(src, self.tally), label, buffer)

    def __getattr__(self, name):
        return getattr(self.staging, name)


def shifted(progress, offset: int, extra: int):
    """``progress`` for the second part of a two-part operation: ``offset`` bytes are done
    already, and the first part's total counted ``extra`` bytes into the whole."""
    if progress is None:
        return None

    def report(done: int, total: int | None) -> None:
        progress(offset + done, None if total is None else extra + total)

    return report


def wanted(*, quiet: bool = False, as_json: bool = False, stream=None) -> bool:
    """Whether a bar belongs on ``stream`` (default stderr): a terminal, and neither ``-q`` nor
    ``--json`` asked for silence or a machine-read output."""
    if quiet or as_json:
        return False
    stream = sys.stderr if stream is None else stream
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False


class Bar:
    """The terminal's progress callback: a tqdm bar drawn on stderr once the work has lasted
    :data:`DELAY` seconds. A second operation through the same bar (``deploy all``: one model
    after another) starts it again from zero."""

    def __init__(self, description: str, stream=None):
        self.description = description
        self.stream = sys.stderr if stream is None else stream
        self.started = time.monotonic()
        try:
            self.delay = float(os.environ.get("GAIA_CAS_PROGRESS_DELAY", DELAY))
        except ValueError:
            self.delay = DELAY
        self.bar = None
        self.last = -1

    def __call__(self, done: int, total: int | None) -> None:
        if self.bar is None:
            if time.monotonic() - self.started < self.delay:
                self.last = done
                return
            try:
                from tqdm import tqdm  # only now: a bar is about to be drawn
            except ImportError:  # run from a checkout without its dependencies: work on, without a bar
                self.delay = float("inf")
                return

            try:  # a terminal that reports no size (a bare pty) still gets a bar of the usual width
                sized = os.get_terminal_size(self.stream.fileno()).columns > 0
            except (AttributeError, ValueError, OSError):
                sized = False
            self.bar = tqdm(total=total, desc=self.description, unit="B", unit_scale=True, unit_divisor=1024,
                            file=self.stream, dynamic_ncols=sized, ncols=None if sized else 80, leave=True,
                            miniters=1)
        elif done < self.last or total != self.bar.total:
            self.bar.reset(total=total)
        self.last = done
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> "Bar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _NoBar:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc) -> None:
        return None


def bar(description: str, *, quiet: bool = False, as_json: bool = False):
    """``with bar(...) as progress``: a :class:`Bar` when one belongs on stderr (see
    :func:`wanted`), else None; the bar is closed (its last state left on screen) at the end."""
    return Bar(description) if wanted(quiet=quiet, as_json=as_json) else _NoBar()
