"""``gaia-cas watch``: tell a server not written in Python that its model changed.

On every change of the version served on a channel, run a command (with the version in its
environment) or send a signal to a process. The version stays leased (a gc root) from the
moment it is seen until the next change is handled, so while the command runs -- and while the
server it notified reloads -- gc never takes its files.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import Callable

from .errors import InvalidInputError


@dataclass
class Action:
    """What to do on a change: run ``argv`` (never through a shell), or send ``signum`` to ``pid``."""

    argv: list[str] | None = None
    signum: int | None = None
    pid: int | None = None

    @classmethod
    def parse(cls, command: str | None, signal_name: str | None, pid: int | None) -> "Action":
        if (command is None) == (signal_name is None):
            raise InvalidInputError("give either --exec CMD or --signal SIG --pid PID")
        if command is not None:
            if pid is not None:
                raise InvalidInputError("--pid goes with --signal, not with --exec")
            import shlex
            import shutil

            try:
                argv = shlex.split(command)
            except ValueError as exc:
                raise InvalidInputError(f"--exec {command!r} cannot be split into words: {exc}") from None
            if not argv:
                raise InvalidInputError("--exec needs a command")
            if shutil.which(argv[0]) is None:
                raise InvalidInputError(f"--exec: no program {argv[0]!r} (not found, or not executable)")
            return cls(argv=argv)
        if pid is None:
            raise InvalidInputError("--signal needs --pid PID")
        signum = parse_signal(signal_name)
        if pid <= 0:
            raise InvalidInputError(f"--pid must be a process id, not {pid}")
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            raise InvalidInputError(f"--pid {pid}: no such process") from None
        except PermissionError:
            raise InvalidInputError(f"--pid {pid}: not allowed to signal that process") from None
        return cls(signum=signum, pid=pid)

    def run(self, resolved) -> str:
        """Do it for ``resolved``; returns a few words on what happened."""
        if self.argv is not None:
            import subprocess

            env = dict(os.environ, GAIA_CAS_MODEL=resolved.model, GAIA_CAS_VERSION=resolved.version,
                       GAIA_CAS_HASH=resolved.hash, GAIA_CAS_PATH=os.fspath(resolved.path))
            try:
                code = subprocess.call(self.argv, env=env, stdin=subprocess.DEVNULL)
            except OSError as exc:
                return f"{self.argv[0]} could not start: {exc.strerror or exc}"
            return f"{self.argv[0]} exited with {code}"
        try:
            os.kill(self.pid, self.signum)
        except ProcessLookupError:
            from .errors import NotFoundError

            raise NotFoundError(f"process {self.pid} is gone: nothing left to signal") from None
        import signal

        return f"sent {signal.Signals(self.signum).name} to {self.pid}"


def parse_signal(name: str) -> int:
    import signal

    text = name.strip().upper()
    if text.isdigit():
        number = int(text)
        if number in {s.value for s in signal.Signals}:
            return number
    else:
        try:
            return signal.Signals[text if text.startswith("SIG") else "SIG" + text].value
        except KeyError:
            pass
    raise InvalidInputError(f"--signal {name!r}: not a signal name or number (e.g. HUP, USR1, 10)")


def watch(model: str, action: Action, *, root=None, channel: str = "current", interval: float = 1.0,
          max_changes: int | None = None, timeout: float | None = None,
          report: Callable[[str], None] = print,
          warn: Callable[[str], None] = lambda line: print(f"warning: {line}", file=sys.stderr)) -> int:
    """Run ``action`` on every change of the served version until ``max_changes`` changes were
    handled or ``timeout`` seconds passed (forever by default); returns the number handled."""
    from .handle import ModelHandle

    if not interval > 0:
        raise InvalidInputError(f"--interval must be more than 0 seconds, not {interval!r}")
    if max_changes is not None and max_changes < 1:
        raise InvalidInputError(f"--max-changes must be 1 or more, not {max_changes}")
    if timeout is not None and not timeout >= 0:
        raise InvalidInputError(f"--timeout must be 0 or more seconds, not {timeout!r}")
    deadline = None if timeout is None else time.monotonic() + timeout
    handled = 0
    # No loading: the command (or the signalled server) loads. The handle only leases.
    with ModelHandle(model, root=root, channel=channel, loader=lambda path: path) as handle:
        active = handle.get()[1]
        report(f"watching {active.model} ({channel}): serving {active.version} ({active.hash[:12]})")
        while max_changes is None or handled < max_changes:
            left = interval if deadline is None else min(interval, deadline - time.monotonic())
            if left <= 0:
                break
            handle.wait(left)
            if not handle.refresh():
                if handle.last_error is not None:
                    error = handle.last_error
                    warn(f"{error or type(error).__name__} (still serving {handle.get()[1].version})")
                    handle.last_error = None
                continue
            active = handle.get()[1]
            # The handle holds this version's lease while the action runs: no refresh happens here.
            outcome = action.run(active)
            handled += 1
            report(f"{active.model} ({channel}) -> {active.version} ({active.hash[:12]}): {outcome}")
            sys.stdout.flush()
    return handled
