"""How the human output reads: sizes, counts, times, tables, colour and the pager.

Every command's text goes through these few functions, so ``list``, ``status``, ``gc`` and
``push`` write a size the same way. JSON output never does: it keeps bytes as integers and
times as the stored UTC text, for machines.

- sizes in powers of 1024, as ``du -h`` prints them (rounded up, one decimal below 10):
  ``512 B``, ``4.0 KiB``, ``23 MiB``, ``1.1 GiB``;
- ``plural(2, "file")`` is ``2 files``;
- times in the machine's local zone with their offset: ``2025-07-16 13:25:18 +0200``;
- colour only when the stream is a terminal, never under ``NO_COLOR`` (no-color.org) or
  ``TERM=dumb``;
- long listings through a pager on a terminal, as git does: ``$GAIA_CAS_PAGER``, else
  ``$PAGER``, else ``less`` with ``LESS=FRX`` (quit when one screen holds it, keep colours, leave
  the screen alone); an empty value or ``cat`` means none, and so does ``--no-pager``.

Nothing here is imported until a command prints text.
"""

from __future__ import annotations

import os
import sys

_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def size(n: int) -> str:
    """``n`` bytes as ``du -h`` would round them: up, to one decimal below 10 of a unit."""
    n = int(n)
    if n < 0:
        return "-" + size(-n)
    if n < 1024:
        return f"{n} B"
    power = 1
    for unit in _UNITS:  # integer arithmetic: exact at every boundary
        power *= 1024
        tenths = -(-n * 10 // power)
        if tenths < 100:
            return f"{tenths // 10}.{tenths % 10} {unit}"
        whole = -(-n // power)
        if whole < 1024 or unit == _UNITS[-1]:
            return f"{whole} {unit}"
    return f"{n} B"  # not reached


def plural(n: int, word: str, words: str | None = None) -> str:
    """``1 file``, ``2 files``; ``words`` for an irregular plural."""
    return f"{n} {word if n == 1 else (words or word + 's')}"


def when(stamp: str | None) -> str:
    """A stored ISO time (UTC) in the local zone with its offset; text that is not a time
    is returned as it is."""
    if not stamp:
        return "-"
    from datetime import datetime

    try:
        moment = datetime.fromisoformat(stamp)
    except (TypeError, ValueError):
        return str(stamp)
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S %z")


def table(rows: list[list[str]], indent: str = "", right: tuple[int, ...] = (),
          styles: dict[int, str] | None = None, colour: bool = False) -> str:
    """Rows in aligned columns, two spaces apart; columns in ``right`` (numbers) aligned
    right; ``styles`` maps a row's index to a colour name for that whole row."""
    if not rows:
        return ""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for index, row in enumerate(rows):
        cells = [cell.rjust(w) if i in right else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))]
        line = indent + "  ".join(cells).rstrip()
        style = (styles or {}).get(index)
        lines.append(paint(line, style, colour) if style else line)
    return "\n".join(lines)


_CODES = {"bold": "1", "dim": "2", "red": "31", "green": "32", "yellow": "33", "cyan": "36", "green-bold": "1;32"}


def paint(text: str, style: str | None, on: bool) -> str:
    if not on or not style:
        return text
    return f"\x1b[{_CODES[style]}m{text}\x1b[0m"


def colour_for(stream=None) -> bool:
    """Whether ``stream`` (default stdout) gets colour: a terminal, NO_COLOR unset (or empty),
    TERM not ``dumb``."""
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    stream = sys.stdout if stream is None else stream
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def pager_command() -> str | None:
    """The pager to run, or None for none (the environment said so)."""
    for name in ("GAIA_CAS_PAGER", "PAGER"):
        value = os.environ.get(name)
        if value is not None:
            value = value.strip()
            return None if value in ("", "cat") else value
    return "less"


def page(text: str, enabled: bool = True) -> None:
    """Print ``text``; through the pager when ``enabled`` and stdout is a terminal.

    The pager runs through the shell (``$PAGER`` may carry options, as for git), with
    ``LESS=FRX`` unless ``LESS`` is set. A pager that cannot start leaves the text printed as
    usual; one the user quits early ends the output quietly.
    """
    command = pager_command() if enabled else None
    try:
        on_terminal = sys.stdout.isatty()
    except (AttributeError, ValueError):
        on_terminal = False
    if command is None or not on_terminal:
        print(text)
        return
    import shutil
    import subprocess

    if command == "less" and shutil.which("less") is None:
        print(text)  # the default pager is not installed: as if there were none
        return

    env = dict(os.environ)
    env.setdefault("LESS", "FRX")
    sys.stdout.flush()
    try:
        pager = subprocess.Popen(command, shell=True, stdin=subprocess.PIPE, env=env)
    except OSError:
        print(text)
        return
    try:
        pager.stdin.write((text + "\n").encode("utf-8", "backslashreplace"))
        pager.stdin.close()
    except BrokenPipeError:
        pass  # quit before reading it all: nothing more to show
    while True:
        try:
            pager.wait()
            break
        except KeyboardInterrupt:  # Ctrl-C belongs to the pager (less uses it), as with git
            continue
