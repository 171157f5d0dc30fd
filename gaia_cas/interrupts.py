"""Stop requests (SIGTERM, SIGHUP) held back while a commit becomes visible.

The CLI turns SIGTERM and SIGHUP into :class:`~gaia_cas.errors.Terminated`, which unwinds a
command like Ctrl-C does. One stretch must not be cut: from the manifest's rename (the commit)
to the end of the link swap that follows it — cut there, the manifest says 1.1.0 while
``current`` still serves 1.0.0 until a later write repairs it. Inside :func:`held_back` a stop
request is recorded instead, and raised (marked ``committed``) the moment the stretch ends.
Only the main thread runs signal handlers, and only it enters this stretch.
"""

from __future__ import annotations

from contextlib import contextmanager

from .errors import Terminated

_depth = 0
_pending: tuple[int, str] | None = None


def stop(signum: int, name: str) -> None:
    """What a stop request does: raise now, or after the stretch being held."""
    global _pending
    if _depth:
        _pending = (signum, name)
        return
    raise Terminated(signum, name)


@contextmanager
def held_back():
    global _depth, _pending
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
    if _depth == 0 and _pending is not None:
        signum, name = _pending
        _pending = None
        raise Terminated(signum, name, committed=True)


def stop_on_signals():
    """SIGTERM (systemd, docker, Kubernetes) and SIGHUP (a closed terminal) stop a command the
    way Ctrl-C does: an exception unwinds it, so staging folders are removed, locks released and
    the store left as before, instead of the default kill leaving a deploy's staged bytes in
    ``store/tmp`` for gc's whole grace period. A signal someone set to be ignored (``nohup``)
    stays ignored. Returns what puts the previous handlers back (main() may run many times in
    one process)."""
    # The C module the signal module wraps: signal itself builds its enums at import, ~1.5 ms
    # on every command; the name of a signal is looked up only once one arrives.
    import _signal

    def on_signal(signum, frame):
        import signal

        stop(signum, signal.Signals(signum).name)

    previous = {}
    for signum in (_signal.SIGTERM, _signal.SIGHUP):
        try:
            if _signal.getsignal(signum) is not _signal.SIG_IGN:
                previous[signum] = _signal.signal(signum, on_signal)
        except ValueError:  # not the main thread: the embedding program owns its signals
            pass

    def restore() -> None:
        for signum, handler in previous.items():
            _signal.signal(signum, handler)

    return restore
