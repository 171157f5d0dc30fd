"""Shell completion: ``gaia-cas completion bash|zsh|fish`` and the store's words behind it.

The script is generated from the parser by shtab (imported only by that command), so commands
and options never drift from what the parser accepts. What only the store knows -- model names
and aliases, the versions of the model on the line, channels, remotes -- the script asks for at
each Tab with the hidden command ``gaia-cas __complete KIND WORDS...`` (WORDS: the line so far).
That path reads manifests/ directly with msgpack: a listing for the names, plus the one
manifest of the model on the line for versions and channels. It imports neither the parser nor
the manifest codec, so a Tab costs about an interpreter's start.

Only words that look like names or version numbers are printed: bash's ``compgen -W`` expands
``$(...)`` in its word list, so a crafted manifest must never put one there.
"""

from __future__ import annotations

import os
import re
import sys

SHELLS = ("bash", "zsh", "fish")
KINDS = ("model", "version", "channel", "remote")

_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
_MANIFEST_SUFFIX = ".msgpack"
_REMOTES_FILE = ".remotes.msgpack"
_MAX_MANIFEST = 64 << 20

# Options that take a value (the value is never the command or the model); tests check this
# list against the parser.
VALUED = frozenset({
    "--root", "--lock-timeout", "--remote", "--reason", "--meta", "--to", "--link", "-o", "--output", "--bump",
    "--version", "--keep", "--keep-within", "--older-than", "--sample", "--grace", "--log-age", "--map",
    "--timezone", "--max-expansion", "--channel", "--interval", "--exec", "--signal", "--pid", "--max-changes",
    "--timeout", "--host", "--port", "--max-body", "--alias", "--source", "--endpoint", "--region", "-n",
    "--lines", "--number", "--serving-dir", "--chunk-threshold", "--hot-recent",
})
# Commands whose first argument is not a model (their later words are not versions of one).
_NOT_MODEL_FIRST = frozenset({"init", "import-legacy", "import", "remote", "completion", "doctor", "gc", "logs",
                              "demo", "serve", "store"})

# -- the hidden command: the store's words ------------------------------------------------------


def complete(argv: list[str]) -> int:
    """``__complete KIND WORDS...``: one candidate per line on stdout; never an error (a Tab
    that finds nothing offers nothing)."""
    if not argv or argv[0] not in KINDS:
        return 0
    kind, words = argv[0], argv[1:]
    if words[:1] == [PROG]:  # zsh passes the line from its first word
        words = words[1:]
    try:
        root = _root(words)
        found = _candidates(kind, root, words) if root is not None else []
    except (OSError, ValueError, TypeError, KeyError, RecursionError):
        found = []
    for word in found:
        if isinstance(word, str) and _WORD.fullmatch(word):
            sys.stdout.write(word + "\n")
    return 0


def _positionals(words: list[str]) -> list[str]:
    """The words of the line that are not options or option values: command, model, ..."""
    out, skip = [], False
    for word in words:
        if skip:
            skip = False
        elif word.startswith("-"):
            skip = word in VALUED
        else:
            out.append(word)
    return out


def _root(words: list[str]) -> str | None:
    """The root the line names (--root DIR), else $GAIA_CAS_ROOT, else the nearest folder at or
    above the working directory holding store/ and manifests/ -- as the command would find it."""
    explicit = None
    for i, word in enumerate(words):
        if word == "--root" and i + 1 < len(words):
            explicit = words[i + 1]
        elif word.startswith("--root="):
            explicit = word.split("=", 1)[1]
    candidates = [explicit] if explicit else [os.environ["GAIA_CAS_ROOT"]] if os.environ.get("GAIA_CAS_ROOT") \
        else _upwards(os.getcwd())
    for path in candidates:
        path = os.path.expanduser(path)
        if os.path.isdir(os.path.join(path, "store")) and os.path.isdir(os.path.join(path, "manifests")):
            return path
    return None


def _upwards(path: str):
    while True:
        yield path
        parent = os.path.dirname(path)
        if parent == path:
            return
        path = parent


def _read(path: str):
    """One of the root's msgpack files, opened without following a symlink, size-bounded."""
    import msgpack

    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not (st.st_mode & 0o170000 == 0o100000) or st.st_size > _MAX_MANIFEST:
            return {}
        data = b""
        while len(data) < st.st_size:
            chunk = os.read(fd, st.st_size - len(data))
            if not chunk:
                break
            data += chunk
    finally:
        os.close(fd)
    doc = msgpack.unpackb(data, raw=False, strict_map_key=False)
    return doc if isinstance(doc, dict) else {}


def _models(manifests: str) -> list[str]:
    return sorted(name[: -len(_MANIFEST_SUFFIX)] for name in os.listdir(manifests)
                  if name.endswith(_MANIFEST_SUFFIX) and not name.startswith("."))


def _manifest_of(manifests: str, name: str) -> dict:
    """The manifest of the model called ``name`` or aliased so (aliases: every manifest read)."""
    if not _WORD.fullmatch(name):
        return {}
    models = _models(manifests)
    if name in models:
        return _read(os.path.join(manifests, name + _MANIFEST_SUFFIX))
    for model in models:
        doc = _read(os.path.join(manifests, model + _MANIFEST_SUFFIX))
        if name in ((doc.get("config") or {}).get("aliases") or ()):
            return doc
    return {}


def _candidates(kind: str, root: str, words: list[str]) -> list[str]:
    manifests = os.path.join(root, "manifests")
    if kind == "remote":
        doc = _read(os.path.join(manifests, _REMOTES_FILE)) if os.path.lexists(
            os.path.join(manifests, _REMOTES_FILE)) else {}
        return sorted(doc.get("remotes") or {})
    if kind == "model":
        names = _models(manifests)
        aliases = []
        for model in names:
            aliases += (_read(os.path.join(manifests, model + _MANIFEST_SUFFIX)).get("config") or {}).get(
                "aliases") or []
        return names + sorted(aliases)
    positionals = _positionals(words)
    if len(positionals) < 2 or positionals[0] in _NOT_MODEL_FIRST:
        return []
    doc = _manifest_of(manifests, positionals[1])
    if kind == "channel":
        return ["current", *sorted(doc.get("channels") or {})]
    numbers = doc.get("version_numbers")
    if numbers is None:  # a manifest written before the index: decode the rows
        import msgpack

        fields = doc.get("version_fields") or []
        rows = msgpack.unpackb(doc.get("versions") or b"\x90", raw=False)
        numbers = [row[fields.index("version")] for row in rows] if "version" in fields else []
    newest_first = list(reversed(numbers))
    return newest_first + (["previous"] if numbers else [])


# -- the script: generated from the parser -------------------------------------------------------

PROG = "gaia-cas"


def _asker(kind: str) -> dict:
    """The shtab ``complete`` of an argument whose words come from ``__complete KIND``: the
    line's words so far go along, so the command sees --root and the model on the line."""
    return {
        "bash": f"_gaia_cas_complete_{kind}",
        "zsh": f"{{_gaia_cas_complete_zsh {kind}}}",  # {...}: run at each Tab (an array's $(...) would run at load)
        "fish": f"({PROG} __complete {kind} (commandline -opc)[2..-1] 2>/dev/null)",
    }


_ASKERS = {kind: _asker(kind) for kind in KINDS}

_BASH_PREAMBLE = "\n".join(
    f'{"_gaia_cas_complete_" + kind}() {{\n'
    f'  compgen -W "$({PROG} __complete {kind} "${{COMP_WORDS[@]:1:$((COMP_CWORD-1))}}" 2>/dev/null)" -- "$1"\n'
    "}" for kind in KINDS)

_ZSH_PREAMBLE = f"""\
_gaia_cas_complete_zsh() {{
  local -a found
  found=(${{(f)"$({PROG} __complete $1 ${{words[1,CURRENT-1]}} 2>/dev/null)"}})
  compadd -a found
}}"""

# metavar (or option) -> what completes it
_BY_METAVAR = {"MODEL": "model", "VERSION": "version", "A": "version", "B": "version", "CHANNEL": "channel"}
_BY_OPTION = {"--remote": "remote", "--channel": "channel", "--to": "channel"}


def script(shell: str) -> str:
    """The completion script for ``shell`` (bash, zsh or fish)."""
    from .errors import InvalidInputError

    if shell not in SHELLS:
        raise InvalidInputError(f"no completion for shell {shell!r}: use one of {', '.join(SHELLS)}")
    try:
        import shtab
    except ImportError:
        raise InvalidInputError("shell completion needs shtab: pip install 'gaia-cas[completion]'") from None
    from .parser import build_parser

    parser = build_parser()
    _annotate(parser, shtab)
    return shtab.complete(parser, shell=shell, preamble={"bash": _BASH_PREAMBLE, "zsh": _ZSH_PREAMBLE})


def _annotate(parser, shtab, path: tuple = ()) -> None:
    """Mark every argument whose words come from the store, and the paths, in ``parser`` and
    its subcommands (``path``: the commands leading to it)."""
    import argparse

    for action in parser._actions:  # argparse lists a parser's arguments only there
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                _annotate(sub, shtab, path + (name,))
            continue
        kind = next((_BY_OPTION[o] for o in action.option_strings if o in _BY_OPTION), None)
        if kind is None and not action.option_strings:
            kind = _BY_METAVAR.get(action.metavar)
            if action.metavar == "NAME" and path[:1] == ("model",) and path[1:] != ("add",):
                kind = "model"
            elif action.metavar == "NAME" and path[1:] in (("remove",), ("default",)) and path[:1] == ("remote",):
                kind = "remote"
        if kind is not None:
            action.complete = _ASKERS[kind]
        elif action.metavar in ("PATH", "DIR", "FILE.tar") or action.dest == "output":
            action.complete = shtab.DIRECTORY if action.metavar == "DIR" else shtab.FILE
