"""The command line: parse, call the library, print. Nothing else lives here.

Every error the library raises on purpose (:class:`GaiaCasError`) and every OS error becomes one
``gaia-cas: error: ...`` line and exit status 1; ``-v`` adds the traceback. Heavy modules are
imported by the commands that need them, so ``gaia-cas --version`` starts fast.
"""

from __future__ import annotations

import os
import sys

from .errors import GaiaCasError, Terminated
from .parser import PROG, build_parser, command_in, json_errors, wanted_json


def run(argv: list[str] | None = None, default_root: str | None = None):
    """The process entry point (the installed script, ``bin/gaia-cas``, ``python -m gaia_cas``):
    :func:`main`, then exit.

    Before exiting, every object is frozen out of the garbage collector's reach: the
    interpreter's final collection at shutdown would otherwise walk every object the command
    left behind, about 4 ms of an unchanged redeploy's ~55 ms, to free memory the exit frees
    anyway. Output is still flushed and ``atexit`` still runs, as in any normal exit.
    """
    try:
        code = main(argv, default_root)
        sys.stdout.flush()  # here, not at exit: a reader gone by now is seen (below), not reported by Python
    except BrokenPipeError:  # by the flush, or before main's own handler (--version)
        code = reader_gone()
    import gc

    gc.freeze()
    sys.exit(code)


def main(argv: list[str] | None = None, default_root: str | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["__complete"]:  # the completion script's call at each Tab: no parser, no repository
        from .completion import complete

        return complete(argv[1:])
    json_errors(wanted_json(argv))  # a rejected command line under --json is a JSON error too
    parser = build_parser(only=command_in(argv))
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_usage(sys.stderr)
        _fail(args, "usage", f"a command is required (see '{PROG} --help')")
        return 2
    _REPOS.clear()  # main() can run many times in one process (tests, embedding)
    from .interrupts import stop_on_signals

    restore_signals = stop_on_signals()
    try:
        code = _COMMANDS[args.command](args, default_root) or 0
        _warn_about_log()
        return code
    except Terminated as exc:
        after = "; the change under way was committed first (see 'gaia-cas history')" if exc.committed else ""
        _fail(args, "terminated", f"terminated by {exc.name}{after}", prefix=f"{PROG}: ")
        return 128 + exc.signum
    except KeyboardInterrupt:
        _fail(args, "interrupted", "interrupted", prefix=f"{PROG}: ")
        return 130
    except BrokenPipeError:
        return reader_gone()
    except Exception as exc:  # the one place where every failure becomes one line
        if args.verbose:
            import traceback

            traceback.print_exc()
        # One line, whatever the message carries: names may be undecodable, library texts multi-line.
        message = " ".join(_describe(exc).encode("utf-8", "backslashreplace").decode("utf-8").split())
        _fail(args, error_kind(exc), message)
        return 1
    finally:
        restore_signals()


# 128 + SIGPIPE: what a shell reports for git or coreutils whose reader went away
# (`git log | head -1`), so `set -o pipefail` scripts see the same for gaia-cas.
READER_GONE = 141


def reader_gone() -> int:
    """The reader of our output went away (``gaia-cas list | head -1``): no message, and the
    status git and coreutils end with there. They die of SIGPIPE itself; this exits with its
    number instead, since SIGPIPE stays ignored (Python's default) so that a client leaving
    ``serve`` or an S3 connection dropping is an error to handle, never a silent kill."""
    try:  # stdout now writes nowhere: the interpreter's last flush at exit fails no more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return READER_GONE


def _fail(args, kind: str, message: str, prefix: str = f"{PROG}: error: ") -> None:
    """The one line on stderr; under --json also ``{"error": {"message", "kind"}}`` on stdout,
    so a script reading stdout sees the failure without parsing stderr."""
    if getattr(args, "json", False):
        print(_dumps({"error": {"message": message, "kind": kind}}, indent=2), flush=True)
    print(f"{prefix}{message}", file=sys.stderr)


def error_kind(exc: BaseException) -> str:
    """What kind of failure ``exc`` is, for scripts: the family of gaia-cas errors it belongs
    to -- the class just below :class:`GaiaCasError` in its ancestry, in snake case
    (``not_found``, ``invalid_input``, ``lock_timeout``, ``corruption``, ``store``, ``source``,
    ``root_not_found``) -- else ``os`` for an operating-system error, else ``internal``."""
    if isinstance(exc, GaiaCasError):
        family = next(c for c in reversed(type(exc).__mro__) if issubclass(c, GaiaCasError) and c is not GaiaCasError)
        name = family.__name__.removesuffix("Error")
        return "".join(f"_{c.lower()}" if c.isupper() and i else c.lower() for i, c in enumerate(name))
    return "os" if isinstance(exc, OSError) else "internal"


class _Humanize:
    """gaia_cas.humanize, imported when text is first formatted: an unchanged redeploy's one
    line and every --json document need none of it."""

    def __getattr__(self, name):
        from . import humanize as module

        value = getattr(module, name)
        setattr(self, name, value)  # asked once: 'list' of 10 000 versions formats 20 000 cells
        return value


humanize = _Humanize()

_REPOS: list = []  # repositories opened by this command, to report a log that could not be written


def _warn_about_log() -> None:
    for repo in _REPOS:
        if repo.oplog.error:
            print(f"{PROG}: warning: {repo.oplog.error} (the change itself was made)", file=sys.stderr)


def _describe(exc: Exception) -> str:
    """The error's message, every name in it escaped (library messages are one line; a newline
    in one can only come from a name)."""
    if isinstance(exc, GaiaCasError):
        return shown(exc)
    if isinstance(exc, OSError):
        where = f": {exc.filename}" if exc.filename else ""
        return shown(f"{exc.strerror or exc}{where}")
    return shown(f"internal error: {type(exc).__name__}: {exc} (run with -v for the traceback)")


# -- helpers ---------------------------------------------------------------------------------

def _repo(args, default_root):
    from .layout import find_root  # its error speaks of --root (Repository.open's, to Python, of root=)
    from .repo import Repository

    repo = Repository(find_root(args.root, default_root), lock_timeout=args.lock_timeout)
    _REPOS.append(repo)
    return repo


def _dumps(value, **options) -> str:
    import json  # only output that shows JSON pays for it

    return json.dumps(value, **options)


def _emit(args, document, text: str, paged: bool = False) -> None:
    """Print the JSON document (--json) or the text; a long listing (``paged``) through the
    pager when stdout is a terminal (see :mod:`gaia_cas.humanize`)."""
    if args.json:
        print(_dumps(document, indent=2, sort_keys=False))
    elif text and args.quiet and args.command not in _ANSWERS:
        pass  # -q: the summary of work done is not printed
    elif text and paged:
        humanize.page(text, enabled=not getattr(args, "no_pager", False))
    elif text:
        print(text)


# Commands whose output is the answer asked for, not a summary of work done: -q keeps it.
_ANSWERS = {"list", "status", "show", "history", "diff", "logs", "doctor", "completion"}


def _bar(args, description: str):
    """``with _bar(args, "deploy ssd") as progress``: the progress callback for long work, a bar
    on stderr when it is a terminal (never in a pipe, under --json or -q), else None."""
    from .progress import bar

    return bar(description, quiet=args.quiet, as_json=args.json)


_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def shown(text) -> str:
    """``text`` as it is safe to print to a terminal: every character that is not printable
    escaped, as repr() would (a newline as ``\\n``, ESC as ``\\x1b``, a bidi override as
    ``\\u202e``; a byte that was not UTF-8, kept as a surrogate, as ``\\xff``).

    File names come from trees, sources and manifests, and a name may hold anything but ``/``
    and NUL: printed raw, a newline forges an output line and an escape sequence drives the
    terminal. Every human-readable output that prints such a name goes through here (JSON
    output escapes on its own).
    """
    text = str(text)
    if text.isprintable():
        return text  # nearly always: one C-level scan
    out = []
    for char in text:
        if char.isprintable():
            out.append(char)
            continue
        code = ord(char)
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif 0xDC80 <= code <= 0xDCFF:  # os.fsdecode's surrogateescape of the byte code - 0xDC00
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code < 0x100:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return "".join(out)


def _size(n: int) -> str:
    return humanize.size(n)


def _files(n: int) -> str:
    return humanize.plural(n, "file")


def _table(rows: list[list[str]], indent: str = "", **options) -> str:
    return humanize.table(rows, indent, **options)


def _version_json(manifest, version) -> dict:
    return {
        "version": version.version, "hash": version.tree, "created_at": version.created_at,
        "deployment_id": version.deployment_id, "size_bytes": version.size_bytes,
        "size_mb": version.size_mb, "file_count": version.file_count, "format": version.format,
        "artifact": version.artifact, "name": version.name,
        "current": version.version == manifest.current, "pinned": version.pinned, "broken": version.broken,
        "reason": version.reason, "user": version.user, "host": version.host,
        "source": version.source, "metadata": version.metadata,
    }


# -- commands --------------------------------------------------------------------------------

def cmd_init(args, default_root):
    from .repo import Repository

    target = os.path.abspath(args.dir or args.root or ".")
    repo = Repository.init(target)
    _emit(args, {"root": str(repo.root)}, f"gaia-cas root ready in {repo.root}")


def cmd_model(args, default_root):
    repo = _repo(args, default_root)
    if args.model_command == "remove":
        return cmd_remove(args, default_root, repo)
    if args.model_command == "show":
        model = repo.model(args.name)
        config = repo.manifest(model).config
    else:
        from .deploy import parse_meta

        options = dict(aliases=args.alias, source=args.source, link=args.link,
                       metadata=parse_meta(args.meta), reason=args.reason)
        if args.model_command == "add":
            model = args.name
            config = repo.add_model(args.name, **options)
        else:
            model = repo.model(args.name)
            config = repo.set_model(args.name, keep=args.keep, keep_within=args.keep_within,
                                    serving_dir=args.serving_dir, **options)
    link = config.link or repo.layout.default_link(model)
    doc = {"model": model, "aliases": config.aliases, "source": config.source, "link": link,
           "metadata": config.metadata, "retention": config.retention, "serving_dir": config.serving_dir}
    lines = [f"model    {model}", f"aliases  {', '.join(config.aliases) or '-'}",
             f"source   {shown(config.source or '-')}", f"link     {shown(link)}"]
    lines += [f"meta     {shown(k)} = {_dumps(v)}" for k, v in config.metadata.items()]
    if config.retention:
        lines.append(f"keep     newest {config.retention.get('keep', 3)}"
                     + (f", younger than {config.retention['keep_within']}" if config.retention.get("keep_within") else ""))
    if config.serving_dir:
        lines.append(f"serving  {shown(config.serving_dir)}/<n>/ (n of X.Y.Z: X*1000000+Y*1000+Z)")
    _emit(args, doc, "\n".join(lines))


def _deploy_text(result) -> str:
    if result.dry_run:
        if result.unchanged:
            return f"{result.model}: unchanged (identical to current version {result.version}); nothing would be deployed"
        return (f"{result.model}: would deploy {result.version} ({_files(result.file_count)}, "
                f"{_size(result.size_bytes)}, {result.format}, hash {result.hash}); nothing written (dry run)")
    if result.unchanged:
        text = (f"{result.model}: unchanged (identical to current version {result.version}, hash {result.hash[:12]}); "
                "nothing deployed (--force deploys it anyway)")
    else:
        text = (f"deployed {result.model} {result.version}  hash {result.hash[:12]}  {_files(result.file_count)}  "
                f"{_size(result.size_bytes)}  {result.format}  {humanize.plural(result.new_objects, 'new object')}\n"
                f"  current: {result.previous or '-'} -> {result.version}")
    if result.consumed is not None:
        c = result.consumed
        text += (f"\n  source consumed: {c['linked']} of {result.file_count} files linked into the store "
                 f"(the rest copied), {c['removed']} removed")
        if c["left"]:
            text += f"; kept (added or changed during the deploy): {', '.join(map(shown, c['left'][:5]))}"
            text += f" and {len(c['left']) - 5} more" if len(c["left"]) > 5 else ""
    return text


def cmd_deploy(args, default_root):
    from .deploy import parse_meta

    if getattr(args, "remote", None) is not None:
        return cmd_deploy_remote(args, default_root)
    repo = _repo(args, default_root)
    options = dict(bump_kind=args.bump, version=args.set_version, reason=args.reason,
                   metadata=parse_meta(args.meta), force=args.force, dry_run=args.dry_run, consume=args.consume)
    if getattr(args, "new", False):
        options["new"] = True
    if args.model in ("all", "both"):
        if args.path is not None:
            from .errors import InvalidInputError

            raise InvalidInputError(f"'deploy {args.model}' deploys every model from its own source; it takes no PATH")
        with _bar(args, "deploy") as progress:
            results, skipped, failed = repo.deploy_all(progress=progress, **options)
        text = "\n".join(_deploy_text(r) for r in results)
        if skipped:
            text += f"\nskipped (no default source): {', '.join(skipped)}"
        _emit(args, {"deployed": [r.to_json() for r in results], "skipped": skipped,
                     "failed": [{"model": m, "error": e} for m, e in failed]}, text)
        return _report_failures([(f"deploy of {m}", e) for m, e in failed])
    with _bar(args, f"deploy {shown(args.model)}") as progress:
        result = repo.deploy(args.model, args.path, progress=progress, **options)
    _emit(args, result.to_json(), _deploy_text(result))


def _list_one(repo, model, as_json: bool, newest: int | None = None, colour: bool = False) -> tuple[dict | None, str]:
    """The JSON document or the text of one model's versions -- only the one that is printed;
    ``newest``: only that many, newest first."""
    manifest = repo.manifest(model)
    every = manifest.versions
    versions = every[::-1] if newest is None else every[::-1][:newest]
    if as_json:
        return {"model": manifest.model, "current": manifest.current,
                "versions": [_version_json(manifest, v) for v in versions]}, ""
    aliases = f" (alias {', '.join(manifest.config.aliases)})" if manifest.config.aliases else ""
    shown_count = f" (newest {len(versions)} shown)" if len(versions) < len(every) else ""
    head = (f"{manifest.model}{aliases}: current {manifest.current or '-'}, "
            f"{humanize.plural(len(every), 'version')}{shown_count}")
    if not versions:
        return None, humanize.paint(head, "bold", colour)
    legacy = _legacy_reasons(manifest, versions)
    rows = [["", "VERSION", "ID", "DEPLOYED", "HASH", "SIZE", "FORMAT", "REASON"]]
    styles = {0: "bold"}
    for v in versions:
        if v.broken:
            styles[len(rows)] = "red"
        elif v.version == manifest.current:
            styles[len(rows)] = "green"
        reason = legacy.get(v.version, v.reason) or ""
        reason = reason if len(reason) <= 40 else reason[:39] + "\u2026"
        rows.append([("*" if v.version == manifest.current else "") + ("!" if v.broken else "")
                     + ("p" if v.pinned else ""), v.version, _deployment_label(v), humanize.when(v.created_at),
                     v.tree[:12], _size(v.size_bytes), shown(v.format), shown(reason)])
    return None, humanize.paint(head, "bold", colour) + "\n" + _table(rows, "  ", right=(5,), styles=styles,
                                                                     colour=colour)


def _deployment_label(version) -> str:
    """``v1.3_20250716_132518``: the old layout's folder name, which names the version as a
    selector (the patch left out when it is 0, as the old layout wrote it)."""
    number = version.version[:-2] if version.version.endswith(".0") and version.version.count(".") == 2 \
        else version.version
    return shown(f"v{number}_{version.deployment_id}")


def _legacy_reasons(manifest, versions) -> dict[str, str]:
    """For versions imported from the old layout: the ``deployment_reason`` its metadata.json
    gave, which says more than "imported from the legacy layout". The history is read only when
    some version carries one."""
    if not any(isinstance(v.metadata.get("deployment_reason"), str) for v in versions):
        return {}
    imported = {e.version for e in manifest.history if e.action == "import" and e.version}
    return {v.version: v.metadata["deployment_reason"] for v in versions
            if v.version in imported and isinstance(v.metadata.get("deployment_reason"), str)}


def cmd_list(args, default_root):
    if getattr(args, "remote", None) is not None:
        return cmd_list_remote(args, default_root)
    repo = _repo(args, default_root)
    newest, colour = getattr(args, "number", None), humanize.colour_for()
    if args.model:
        doc, text = _list_one(repo, args.model, args.json, newest, colour)
        _emit(args, doc, text, paged=True)
        return
    parts = [_list_one(repo, m, args.json, newest, colour) for m in repo.models()]
    text = "\n\n".join(t for _, t in parts) or "no models yet: deploy one with 'gaia-cas deploy MODEL PATH'"
    _emit(args, {"models": [d for d, _ in parts]}, text, paged=True)


def cmd_status(args, default_root):
    repo = _repo(args, default_root)
    status = repo.status()
    models = status.models
    if args.model:
        name = repo.model(args.model)
        models = [m for m in models if m.model == name]
    doc = {"models": [{"model": m.model, "current": m.current, "versions": m.versions,
                       "size_bytes": m.size_bytes, "logical_bytes": m.logical_bytes} for m in models],
           "store": status.store._asdict()}
    lines = []
    if models:
        rows = [["MODEL", "CURRENT", "VERSIONS", "SIZE", "ALL VERSIONS"]]
        rows += [[m.model, m.current or "-", str(m.versions), _size(m.size_bytes), _size(m.logical_bytes)] for m in models]
        lines.append(_table(rows, right=(2, 3, 4), styles={0: "bold"}, colour=humanize.colour_for()))
    else:
        lines.append("no models yet")
    s = status.store
    if s.used_bytes is None:
        lines.append(f"\nstore: {humanize.plural(s.objects, 'object')}, {_size(s.bytes_on_disk)} on disk for {_size(s.logical_bytes)} "
                     "of versions; the deduplication saving and the bytes no version uses are unknown: "
                     "something cannot be read, run 'gaia-cas verify'")
    else:
        ratio = f", {s.logical_bytes / s.used_bytes:.1f}x" if s.used_bytes else ""
        lines.append(f"\nstore: {humanize.plural(s.objects, 'object')}; versions use {_size(s.used_bytes)} on disk for "
                     f"{_size(s.logical_bytes)} of files (deduplication saves {_size(max(s.saved_bytes, 0))}{ratio}); "
                     f"{_size(s.garbage_bytes)} used by no version (gc frees it)")
    if s.chunk_saved_bytes:
        lines.append(f"       of which {_size(s.chunk_saved_bytes)} by keeping cold versions' large files as shared "
                     f"chunks ({_size(s.chunk_bytes)} of chunks)")
    if s.staging_bytes:
        lines.append(f"       {_size(s.staging_bytes)} in store/tmp (deploys in flight or interrupted; gc frees what "
                     "is left past the grace period)")
    lines.append(f"root:  {repo.root}")
    _emit(args, doc, "\n".join(lines))


def cmd_show(args, default_root):
    repo = _repo(args, default_root)
    manifest, version = repo.show(args.model, args.version)
    doc = {"model": manifest.model, **_version_json(manifest, version)}
    human = {"created_at": humanize.when(version.created_at),
             "size_bytes": f"{version.size_bytes} ({_size(version.size_bytes)})"}
    rows = [[k, "" if v is None else shown(human.get(k, v))] for k, v in doc.items() if k not in ("metadata", "size_mb")]
    rows += [[f"metadata.{shown(k)}", _dumps(v)] for k, v in version.metadata.items()]
    _emit(args, doc, _table(rows))


def cmd_rollback(args, default_root):
    if getattr(args, "remote", None) is not None:
        return cmd_rollback_remote(args, default_root)
    repo = _repo(args, default_root)
    # args.model is None for 'rollback previous' (the parser took the lone argument as the version)
    result = repo.rollback(args.model, args.version, reason=args.reason)
    if result.unchanged:
        text = f"{result.model}: {result.version} is already current; nothing changed"
    else:
        text = f"rolled back {result.model}: {result.previous or '-'} -> {result.version}"
    _emit(args, result.to_json(), text)


def cmd_pin(args, default_root):
    repo = _repo(args, default_root)
    pinned = args.command == "pin"
    version = repo.pin(args.model, args.version, pinned=pinned, reason=args.reason)
    model = repo.model(args.model)
    _emit(args, {"model": model, "version": version.version, "pinned": pinned},
          f"{model} {version.version} is {'pinned' if pinned else 'not pinned'}")


def cmd_cleanup(args, default_root):
    repo = _repo(args, default_root)
    names = None if args.model in (None, "all", "both") else [args.model]
    remote = getattr(args, "remote", None)
    plans = (repo.remote(remote) if remote is not None else repo).cleanup(
        names, keep=args.keep, older_than=args.older_than, dry_run=args.dry_run, reason=args.reason)
    lines = []
    for plan in plans:
        gone = plan.remove if args.dry_run else (plan.removed or [])
        verb = "would remove" if args.dry_run else "removed"
        lines.append(f"{plan.model} ({plan.policy.describe()}): {verb} {', '.join(gone) if gone else 'nothing'}")
        rows = [[d.version, "keep" if d.kept else ("remove" if args.dry_run else
                                                   "removed" if d.version in gone else "keep (changed since planned)"),
                 ", ".join(d.reasons) or "-"] for d in plan.decisions]
        if rows:
            lines.append(_table(rows, "  "))
    if not args.dry_run:
        lines.append(f"versions are gone from the manifests of remote {remote}; 'gaia-cas gc --remote {remote}' "
                     "frees their storage" if remote is not None else
                     "versions are gone from the manifests; 'gaia-cas gc' frees their storage")
    _emit(args, {"dry_run": args.dry_run, "models": [p.to_json() for p in plans]}, "\n".join(lines))
    return _report_failures([(f"cleanup of {p.model}", p.error) for p in plans if p.error])


_GC_KINDS = {"object": ("object", "objects"), "tree": ("materialized tree", "materialized trees"),
             "tmp": ("temp entry", "temp entries"), "log": ("log file", "log files"),
             "manifest-tmp": ("manifest temp file", "manifest temp files"),
             "store-tmp": ("store temp file", "store temp files"), "link-tmp": ("link temp file", "link temp files"),
             "whole": ("whole copy of a cold file (kept as chunks)", "whole copies of cold files (kept as chunks)"),
             "recipe": ("recipe of an unused file", "recipes of unused files")}


def _counted(counts: dict[str, int]) -> str:
    return ", ".join(humanize.plural(n, *_GC_KINDS.get(kind, (kind, kind)))
                     for kind, n in sorted(counts.items())) or "nothing"


def _report_failures(failures: list[tuple[str, str]]) -> int:
    """One error line per model that failed in a command over several models; exit status 1.

    What succeeded was already printed (and committed): the user sees both.
    """
    for what, error in failures:
        print(f"{PROG}: error: {what} failed: {shown(' '.join(error.split()))}", file=sys.stderr)
    return 1 if failures else 0


def cmd_gc(args, default_root):
    from .retention import parse_age

    if getattr(args, "remote", None) is not None:
        return cmd_gc_remote(args, default_root)
    repo = _repo(args, default_root)
    plan, result = repo.gc(grace=parse_age(args.grace), log_age=parse_age(args.log_age), dry_run=args.dry_run)
    counts = _counted(plan.counts())
    if result is None:
        doc = {"dry_run": True, **plan.to_json()}
        split = (f" (after writing {_size(plan.chunk_bytes_written)} of new chunks for the cold files)"
                 if plan.chunk_bytes_written else "")
        text = "\n".join([f"would delete {counts}, freeing {_size(plan.bytes)}{split}"]
                         + [f"  {d.kind:12} {shown(d.path)}" for d in plan.doomed])
    else:
        doc = {"dry_run": False, **result.to_json(), "reachable_objects": plan.reachable_objects,
               "young_unreferenced": plan.young_unreferenced}
        deleted = _counted(result.deleted)
        text = f"deleted {deleted}, freed {_size(result.bytes_freed)}"
    text += (f"\n{humanize.plural(plan.reachable_objects, 'object')} in use; "
             f"{humanize.plural(plan.young_unreferenced, 'unreferenced object')} "
             f"are younger than the grace period ({args.grace}) and stay")
    _emit(args, doc, text)


def cmd_store(args, default_root):
    repo = _repo(args, default_root)
    threshold = None if args.chunk_threshold is None else _parse_size(args.chunk_threshold)
    info = repo.store_settings(threshold=threshold, hot_recent=args.hot_recent, upgrade=args.upgrade)
    text = (f"store format {info['format']}; large files (from {_size(info['chunk_threshold'])}) of cold versions are "
            f"kept as chunks; hot: current, channels, leased"
            + (f" and each model's {info['hot_recent']} newest" if info["hot_recent"] else "") + " versions")
    if args.upgrade:
        text = (f"upgraded the store from format {info['format_before']} to {info['format']}\n" if info["upgraded"]
                else f"already format {info['format']}: nothing to upgrade\n") + text
    _emit(args, info, text)


def _parse_size(text: str) -> int:
    """``67108864``, ``64MiB``, ``64M``, ``1GiB``: binary units, as du -h prints them."""
    units = {"": 1, "b": 1, "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20, "g": 1 << 30, "gib": 1 << 30}
    number = text.strip().lower()
    digits = number.rstrip("abcdefghijklmnopqrstuvwxyz ")
    unit = number[len(digits):].strip()
    if not digits.isdigit() or unit not in units:
        from .errors import InvalidInputError

        raise InvalidInputError(f"invalid size {text!r}: use bytes or a number with KiB, MiB or GiB")
    return int(digits) * units[unit]


def cmd_verify(args, default_root):
    repo = _repo(args, default_root)
    if getattr(args, "remote", None) is not None:
        report = cmd_verify_remote(args, repo)
    else:
        with _bar(args, "verify") as progress:
            report = repo.verify(args.model, repair=args.repair, sample=args.sample, reason=args.reason,
                                 progress=progress)
    scope = f" ({args.sample:g}% sample)" if args.sample else ""
    lines = [f"checked {humanize.plural(report.checked_objects, 'object')}{scope}, "
             f"{humanize.plural(report.checked_trees, 'tree')}, {humanize.plural(report.checked_links, 'link')}: "
             + ("no problems" if not report.problems else humanize.plural(len(report.problems), "problem"))]
    lines += [f"  {shown(p)}" for p in report.problems]
    if report.broken_versions:
        lines.append(f"broken versions (never served): {', '.join(report.broken_versions)}")
    if args.quiet and not report.ok and not args.json:
        print("\n".join(lines))  # -q hides a clean bill of health, never the problems found
    _emit(args, report.to_json(), "\n".join(lines))
    return 0 if report.ok else 1


def cmd_promote(args, default_root):
    if getattr(args, "remote", None) is not None:
        return cmd_promote_remote(args, default_root)
    repo = _repo(args, default_root)
    result = repo.promote(args.model, args.version, args.channel, link=args.link, reason=args.reason)
    if result.unchanged:
        text = f"{result.model}: {args.channel} is already {result.version}; nothing changed"
    else:
        text = f"promoted {result.model} {result.version} to {args.channel} (was {result.previous or '-'})"
    _emit(args, {**result.to_json(), "channel": args.channel}, text)


def cmd_history(args, default_root):
    repo = _repo(args, default_root)
    events = repo.history(args.model, getattr(args, "number", None))
    doc = {"model": repo.model(args.model), "events": [
        {"generation": e.generation, "at": e.at, "action": e.action, "version": e.version, "before": e.before,
         "after": e.after, "user": e.user, "host": e.host, "reason": e.reason, "details": e.details}
        for e in events]}
    rows = [["GEN", "TIME", "ACTION", "CHANGE", "WHO", "REASON"]]
    for e in events:
        action = e.action + (f" {e.details['channel']}" if "channel" in e.details else "")
        change = f"{e.before or '-'} -> {e.after or '-'}" if e.before != e.after else (e.version or "")
        if e.action in ("cleanup", "remove"):
            change = "removed " + ", ".join(e.details.get("removed", []))
        rows.append([str(e.generation), humanize.when(e.at), shown(action), shown(change),
                     shown(f"{e.user}@{e.host}"), shown(e.reason or "")])
    text = _table(rows, right=(0,), styles={0: "bold"}, colour=humanize.colour_for()) if events else "no history yet"
    _emit(args, doc, text, paged=True)


def cmd_diff(args, default_root):
    repo = _repo(args, default_root)
    d = repo.diff(args.model, args.a, args.b)
    lines = [f"{d.model} {d.a} -> {d.b}"]
    colour = humanize.colour_for()
    lines += [humanize.paint(f"  + {shown(p)}  ({_size(s)})", "green", colour) for p, s in d.added]
    lines += [humanize.paint(f"  - {shown(p)}  ({_size(s)})", "red", colour) for p, s in d.removed]
    lines += [humanize.paint(f"  ~ {shown(p)}  ({_size(sa)} -> {_size(sb)})", "yellow", colour)
              for p, sa, sb in d.changed]
    lines += [f"  metadata.{shown(k)}: {_dumps(va)} -> {_dumps(vb)}" for k, (va, vb) in d.metadata.items()]
    if len(lines) == 1:
        lines.append("  identical")
    _emit(args, d.to_json(), "\n".join(lines), paged=True)


def cmd_import_legacy(args, default_root):
    from .legacy import TimeZone, parse_map

    repo = _repo(args, default_root)
    zone = TimeZone(args.timezone)  # validated before anything is read
    with _bar(args, "import-legacy") as progress:
        plans = repo.import_legacy(args.path, mapping=parse_map(args.map), dry_run=args.dry_run, reason=args.reason,
                                   keep_links=args.keep_links, timezone=args.timezone, progress=progress)
    lines = []
    saved = sum(p.logical_bytes - p.new_bytes for p in plans) if not args.dry_run else None
    for p in plans:
        verb = "would import" if args.dry_run else "imported"
        lines.append(f"{p.folder} -> {p.model}: {verb} {humanize.plural(len(p.versions), 'version')}, current {p.current or '-'}")
        lines += [f"  {v.label} -> {v.assigned}" + (f"  ({'; '.join(v.notes)})" if v.notes else "")
                  for v in p.versions]
        lines += [f"  skipped {label}: {why}" for label, why in p.skipped]
        lines += [f"  note: {problem}" for problem in p.problems]
        if p.link_taken:
            lines.append(f"  link: {p.link} now serves {p.model} {p.current} from the store (same bytes)")
        if p.default_metadata:
            lines.append(f"  default metadata from the legacy current: {', '.join(p.default_metadata)}")
        if p.next_command:
            lines.append(f"  next: {p.next_command}   (where new versions of {p.model} come from)")
    lines.append(f"legacy timestamps read in {zone.name} (--timezone to choose)")
    if saved is not None:
        lines.append(f"identical copies stored once: {_size(max(saved, 0))} saved")
    _emit(args, {"dry_run": args.dry_run, "bytes_saved": saved, "timezone": zone.name,
                 "models": [p.to_json() for p in plans]}, "\n".join(lines))


def cmd_export(args, default_root):
    repo = _repo(args, default_root)
    with _bar(args, "export") as progress:
        model, version, out = repo.export(args.model, args.version, args.output, progress=progress)
    _emit(args, {"model": model, "version": version.version, "output": str(out)},
          f"exported {model} {version.version} to {out}")


def cmd_import(args, default_root):
    from .deploy import parse_meta

    repo = _repo(args, default_root)
    with _bar(args, "import") as progress:
        result = repo.import_archive(args.archive, args.model, reason=args.reason, metadata=parse_meta(args.meta),
                                     force=args.force, max_expansion=args.max_expansion, progress=progress)
    _emit(args, result.to_json(), _deploy_text(result))


def cmd_logs(args, default_root):
    repo = _repo(args, default_root)
    model = getattr(args, "model", None)
    if getattr(args, "follow", False):
        # One line at a time as processes write them, until stopped (Ctrl-C, SIGTERM);
        # under --json one JSON object per line.
        for line in repo.logs(args.lines, model=model, follow=True):
            print(_dumps({"line": line}) if args.json else shown(line), flush=True)
        return
    lines = repo.logs(args.lines, model=model)
    _emit(args, {"lines": lines}, "\n".join(map(shown, lines)) if lines else "no log lines yet", paged=True)


def cmd_remove(args, default_root, repo=None):
    """``remove MODEL VERSION`` and ``model remove NAME [--force]``."""
    repo = repo or _repo(args, default_root)
    whole = args.command == "model"
    r = repo.remove(args.name if whole else args.model, None if whole else args.version,
                    force=getattr(args, "force", False), reason=args.reason)
    if r.model_removed:
        text = (f"removed model {r.model} ({humanize.plural(len(r.versions), 'version')}"
                + (f"; links removed: {', '.join(map(shown, r.links))}" if r.links else "") + ")")
    else:
        text = f"removed {r.model} {', '.join(r.versions)} from its manifest"
    _emit(args, r.to_json(), text + "\n'gaia-cas gc' frees the files no other version uses")


def cmd_demo(args, default_root):
    from .samples import register_samples

    repo = _repo(args, default_root)
    results = register_samples(repo)
    if args.quiet and not args.json:
        return  # the whole demo is a summary of what it did
    for result in results:
        if not args.json:
            print(_deploy_text(result))
    if args.json:
        _emit(args, {"deployed": [r.to_json() for r in results]}, "")
        return
    args.model = None
    print()
    cmd_list(args, default_root)
    print()
    cmd_status(args, default_root)


# -- serving: watch, serve ---------------------------------------------------------------------

def cmd_watch(args, default_root):
    from .layout import find_root
    from .watch import Action, watch

    action = Action.parse(args.exec_command, args.signal_name, args.pid)
    root = find_root(args.root, default_root)

    def report(line: str) -> None:
        if not args.json:
            print(shown(line), flush=True)

    def warn(line: str) -> None:
        print(f"{PROG}: warning: {shown(line)}", file=sys.stderr, flush=True)

    count = watch(args.model, action, root=root, channel=args.channel, interval=args.interval,
                  max_changes=args.max_changes, timeout=args.timeout, report=report, warn=warn)
    if args.json:
        _emit(args, {"changes": count}, "")


def cmd_serve(args, default_root):
    from .layout import find_root
    from .server import serve

    from .errors import InvalidInputError

    if args.max_body < 0:
        raise InvalidInputError(f"--max-body must be 0 or more bytes, not {args.max_body}")
    if not 0 <= args.port <= 65535:
        raise InvalidInputError(f"--port must be 0 to 65535, not {args.port}")
    serve(args.models, root=find_root(args.root, default_root), host=args.host, port=args.port,
          channel=args.channel, interval=args.interval, max_body=args.max_body,
          report=lambda line: print(shown(line), flush=True))

# -- S3 remote: remote, push, pull (gaia_cas.remotes, gaia_cas.transfer) ------------------------

def cmd_remote(args, default_root):
    from . import remotes

    repo = _repo(args, default_root)
    action = args.remote_command
    if action == "add":
        remote, is_default = remotes.add(repo, args.name, args.url, endpoint=args.endpoint, region=args.region)
        _emit(args, {"name": remote.name, "url": remote.url, "endpoint": remote.endpoint, "region": remote.region,
                     "default": is_default},
              f"remote {remote.name} added: {shown(remote.url)}" + (" (default)" if is_default else ""))
    elif action == "default":
        remote = remotes.set_default(repo, args.name)
        _emit(args, {"default": remote.name}, f"default remote: {remote.name}")
    elif action == "remove":
        remotes.remove(repo, args.name)
        _emit(args, {"removed": args.name}, f"remote {args.name} removed (nothing on it was deleted)")
    else:
        default, known = remotes.load(repo)
        doc = {"default": default, "remotes": [{"name": r.name, "url": r.url, "endpoint": r.endpoint,
                                                "region": r.region, "default": r.name == default}
                                               for r in sorted(known.values())]}
        rows = [[("*" if r.name == default else "") + r.name, shown(r.url), shown(r.endpoint or "-"), r.region or "-"]
                for r in sorted(known.values())]
        _emit(args, doc, _table([["NAME", "URL", "ENDPOINT", "REGION"]] + rows) if rows
              else "no remotes: add one with 'gaia-cas remote add NAME s3://BUCKET[/PREFIX]'")


def cmd_list_remote(args, default_root):
    from .errors import InvalidInputError

    if not args.model:
        raise InvalidInputError("'list --remote NAME' lists one model: give MODEL")
    remote_manifest = _repo(args, default_root).remote(args.remote).manifest(args.model)

    class _View:  # the remote manifest, shown exactly as 'list' shows a local one
        def manifest(self, model):
            return remote_manifest

    doc, text = _list_one(_View(), args.model, args.json)
    _emit(args, doc, text)


def cmd_rollback_remote(args, default_root):
    from .errors import InvalidInputError

    if args.model is None:
        raise InvalidInputError("'rollback --remote' needs the model: 'gaia-cas rollback MODEL VERSION --remote NAME'")
    r = _repo(args, default_root).remote(args.remote).rollback(args.model, args.version, reason=args.reason)
    text = (f"{r.model} on {r.remote}: {r.version} is already current; nothing changed" if r.unchanged
            else f"rolled back {r.model} on {r.remote}: {r.previous or '-'} -> {r.version}")
    _emit(args, r.to_json(), text)


def cmd_verify_remote(args, repo):
    return repo.remote(args.remote).verify(args.model, sample=args.sample, repair=args.repair)


def cmd_gc_remote(args, default_root):
    from .retention import parse_age

    grace = None if getattr(args.grace, "is_default", False) else parse_age(args.grace)
    plan = _repo(args, default_root).remote(args.remote).gc(grace=grace, dry_run=args.dry_run)
    what = f"{humanize.plural(len(plan.doomed), 'object')}, {_size(plan.bytes)}"
    if plan.recipes:
        what += f" (and {humanize.plural(len(plan.recipes), 'recipe')} of files no version uses)"
    text = (f"would delete {what} on {plan.remote}" if plan.dry_run else f"deleted {plan.deleted} of {what} on "
            f"{plan.remote}") + (f"\n{humanize.plural(plan.reachable, 'object')} in use; "
                                 f"{humanize.plural(plan.young_unreferenced, 'unreferenced object')} "
                                 f"are younger than the grace period and stay")
    _emit(args, plan.to_json(), text)


def cmd_sync(args, default_root):
    def report(result, error):
        if error is not None:
            where = f"{result}: " if result else ""
            print(f"{PROG}: warning: {shown(where)}{' '.join(_describe(error).split())}; trying again in "
                  f"{args.interval:g} s", file=sys.stderr, flush=True)
        elif args.watch:
            line = _dumps(result.to_json()) if args.json else _synced(result)
            print(line, flush=True)

    results = _repo(args, default_root).remote(args.remote).sync(args.model, watch=args.watch, interval=args.interval,
                                                                 report=report, channel=args.channel)
    if not args.watch:
        changed = [r for r in results if r.changed and r.error is None]
        failed = [(f"sync of {r.model}", r.error) for r in results if r.error is not None]
        _emit(args, {"pulled": [r.to_json() for r in results]},
              "\n".join(_synced(r) for r in changed) or ("" if failed else "up to date"))
        return _report_failures(failed)


def _synced(r) -> str:
    moved = "".join(f", {channel} -> {version}" for channel, version in r.channels_moved.items())
    if r.current is None and r.previous is None and moved:
        return f"{r.model}: {r.version}{moved}"  # a channel followed alone
    return f"{r.model}: {r.version}, current {r.previous or '-'} -> {r.current}{moved}"


def cmd_push(args, default_root):
    with _bar(args, "push") as progress:
        results = _repo(args, default_root).remote(args.remote).push(args.model, progress=progress)
    lines = []
    for r in results:
        if r.error is not None and not (r.versions_sent or r.current):
            continue  # failed before anything was sent: its error line says it all
        line = (f"{r.model}: {humanize.plural(r.versions_sent, 'version')}, "
                f"{humanize.plural(r.objects_sent, 'object')}, {_size(r.bytes_sent)} sent; "
                f"remote current {r.current or '-'}" + (" (moved)" if r.current_moved else ""))
        for old, new in r.renumbered.items():
            line += f"\n  {old} was taken on the remote by other content: it is {new} there and here now"
        for channel, version in r.channels_moved.items():
            line += f"\n  remote channel {channel} -> {version}"
        if r.settings_moved:
            line += "\n  the remote's aliases and metadata are this store's now"
        if r.note:
            line += f"\n  {r.note}"
        lines.append(line)
    _emit(args, {"pushed": [r.to_json() for r in results]}, "\n".join(lines) or
          ("nothing to push: no models" if not results else ""))
    return _report_failures([(f"push of {r.model}", r.error) for r in results if r.error is not None])


def cmd_pull(args, default_root):
    with _bar(args, "pull") as progress:
        results = _repo(args, default_root).remote(args.remote).pull(args.model, args.version, channel=args.channel,
                                                                     progress=progress)
    lines = []
    for r in results:
        if r.error is not None:
            continue  # its error line says it all
        line = (f"{r.model}: {r.version} ({humanize.plural(r.objects_received, 'object')}, "
                f"{_size(r.bytes_received)} received); "
                + (f"current {r.previous or '-'} -> {r.current}" if r.previous != r.current
                   else f"current {r.current or '-'}"))
        line += "".join(f"; {channel} -> {version}" for channel, version in r.channels_moved.items())
        line += "; aliases and metadata from the remote" if r.settings_changed else ""
        lines.append(line + ("" if r.changed else " (nothing changed)"))
    _emit(args, {"pulled": [r.to_json() for r in results]}, "\n".join(lines) or
          ("the remote holds no models" if not results else ""))
    return _report_failures([(f"pull of {r.model}", r.error) for r in results if r.error is not None])


def cmd_deploy_remote(args, default_root):
    from .deploy import parse_meta
    from .errors import InvalidInputError

    if args.model in ("all", "both"):
        raise InvalidInputError("'deploy --remote' deploys one model: name it")
    r = _repo(args, default_root).remote(args.remote).deploy(
        args.model, args.path, bump_kind=args.bump, version=args.set_version, reason=args.reason,
        metadata=parse_meta(args.meta), force=args.force, dry_run=args.dry_run, consume=args.consume)
    if args.dry_run:
        text = f"{_deploy_text(r.local)} (as {r.version} on {r.remote})"
    elif r.unchanged:
        text = f"{r.local.model}: unchanged, {r.version} is current here and on {r.remote}; nothing deployed"
    else:
        text = (f"deployed {r.local.model} {r.version} on {r.remote} and here  hash {r.local.hash[:12]}  "
                f"{humanize.plural(r.objects_sent, 'object')}, {_size(r.bytes_sent)} sent\n"
                f"  remote current: {r.previous or '-'} -> {r.version}")
        if r.renumbered_from:
            text += f"\n  {r.renumbered_from} was taken on the remote meanwhile: it is {r.version} there and here"
    _emit(args, r.to_json(), text)


def cmd_promote_remote(args, default_root):
    from .remote_pointers import check_no_link

    check_no_link(args.link)
    r = _repo(args, default_root).remote(args.remote).promote(args.model, args.version, args.channel,
                                                              reason=args.reason)
    text = (f"{r.model} on {r.remote}: {args.channel} is already {r.version}; nothing changed" if r.unchanged
            else f"promoted {r.model} {r.version} to {args.channel} on {r.remote} (was {r.previous or '-'})")
    _emit(args, {**r.to_json(), "channel": args.channel}, text)


# -- the terminal: completion, doctor (gaia_cas.completion, gaia_cas.doctor) ---------------------

def cmd_completion(args, default_root):
    from .completion import script

    sys.stdout.write(script(args.shell))


def cmd_doctor(args, default_root):
    checks = _repo(args, default_root).doctor()
    rows = [[("ok" if c.ok else "FAIL"), c.name, shown(c.detail)] for c in checks]
    lines = [_table(rows)] + [f"  {c.name}: {shown(c.advice)}" for c in checks if c.advice]
    _emit(args, {"checks": [c.to_json() for c in checks]}, "\n".join(lines))
    return 0 if all(c.ok for c in checks) else 1


_COMMANDS = {
    "init": cmd_init, "model": cmd_model, "deploy": cmd_deploy, "list": cmd_list,
    "status": cmd_status, "show": cmd_show, "rollback": cmd_rollback, "logs": cmd_logs,
    "demo": cmd_demo, "pin": cmd_pin, "unpin": cmd_pin, "cleanup": cmd_cleanup, "gc": cmd_gc,
    "verify": cmd_verify, "store": cmd_store, "promote": cmd_promote, "history": cmd_history, "diff": cmd_diff,
    "import-legacy": cmd_import_legacy, "export": cmd_export, "import": cmd_import,
    "watch": cmd_watch, "serve": cmd_serve,
    "remote": cmd_remote, "push": cmd_push, "pull": cmd_pull, "sync": cmd_sync,
    "completion": cmd_completion, "doctor": cmd_doctor,
}
_COMMANDS["remove"] = cmd_remove
