"""The gaia-cas command line, as one argparse parser.

This file imports nothing from the package on purpose: argparse-manpage loads it on its own
(``pyfile=``) to generate the man page, outside any package context.
"""

import argparse
import os
import sys

try:
    from . import defaults
except ImportError:  # loaded as a lone file by argparse-manpage (setup.cfg's pyfile=): no package
    import importlib.util

    _spec = importlib.util.spec_from_file_location("gaia_cas_defaults",
                                                   os.path.join(os.path.dirname(os.path.abspath(__file__)), "defaults.py"))
    defaults = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(defaults)

PROG = "gaia-cas"
DESCRIPTION = "Versioned ML model deployment on a content-addressed, deduplicated store."
EPILOG = """\
The data root is --root DIR, else $GAIA_CAS_ROOT, else the nearest folder at or above the
working directory holding store/ and manifests/. Exit status: 0 on success, 2 when the command
line is rejected, 1 on any other error."""


class _LazyVersion(argparse.Action):
    """--version, looked up only when asked.

    The number lives in gaia_cas/__init__.py (setup.cfg reads it from there); it is imported here
    at call time because argparse-manpage loads this file outside the package.
    """

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        from gaia_cas import __version__

        print(f"{PROG} {__version__}")
        parser.exit()


class _Width:
    """Help laid out to the terminal's width, found as shutil.get_terminal_size() finds it but
    without importing shutil: argparse makes a formatter for every option it adds, and shutil
    (with bz2, lzma and zlib) costs an unchanged redeploy about 1.5 ms."""

    def __init__(self, prog, indent_increment=2, max_help_position=24, width=None):
        if width is None:
            width = _terminal_columns() - 2
        super().__init__(prog, indent_increment, max_help_position, width)


def _terminal_columns() -> int:
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


class _Formatter(_Width, argparse.HelpFormatter):
    pass


class _TopFormatter(_Width, argparse.RawDescriptionHelpFormatter):
    pass


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose subcommands (of any depth) also use :class:`_Formatter`."""

    json_errors = False  # see json_errors()

    def __init__(self, *args, formatter_class=_Formatter, **kwargs):
        super().__init__(*args, formatter_class=formatter_class, **kwargs)

    def error(self, message):
        if _Parser.json_errors:
            import json

            print(json.dumps({"error": {"message": message, "kind": "usage"}}, indent=2), flush=True)
        super().error(message)


def json_errors(on: bool) -> None:
    """Whether a rejected command line is also reported as ``{"error": {"message", "kind":
    "usage"}}`` on stdout (the CLI turns it on when --json is on the command line)."""
    _Parser.json_errors = on


def wanted_json(argv) -> bool:
    """Whether --json is among the options of ``argv`` (before any ``--``)."""
    args = list(argv)
    return "--json" in (args[:args.index("--")] if "--" in args else args)


def _common(parser, top):
    """Options accepted both before and after the subcommand.

    On subcommands the defaults are SUPPRESS, so an option given before the subcommand is not
    overwritten by the subcommand's default.
    """
    default = (lambda value: value) if top else (lambda value: argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", default=default(False),
                        help="print one JSON document instead of text")
    parser.add_argument("-v", "--verbose", action="store_true", default=default(False),
                        help="show a traceback when something fails")
    parser.add_argument("-q", "--quiet", action="store_true", default=default(False),
                        help="no progress bar and no summary of what was done (errors and exit status unchanged)")
    parser.add_argument("--root", metavar="DIR", default=default(None),
                        help="the data root holding store/ and manifests/")
    parser.add_argument("--lock-timeout", metavar="SECONDS", type=float, default=default(None),
                        help="how long to wait for a model's lock "
                             f"(default $GAIA_CAS_LOCK_TIMEOUT, else {defaults.LOCK_TIMEOUT:g})")
    parser.add_argument("--no-pager", action="store_true", default=default(False),
                        help="never send long listings to $PAGER (they go there only on a terminal)")


class _DefaultAge(str):
    """An age option's default value, told apart from the same text given on the command line."""

    is_default = True


class _Unused:
    """Stands in for the parser of a command this run does not use: argparse's set-up of twenty
    subcommands costs more than everything an unchanged redeploy does with its files."""

    required = False

    def add_argument(self, *args, **kwargs):
        return None

    def add_subparsers(self, *args, **kwargs):
        return self

    def add_parser(self, *args, **kwargs):
        return self


class _ModelOptional(argparse.Action):
    """``rollback previous``: one argument that reads as a version selector names the version,
    and the model is left to the command (the only model of the root); any other lone argument
    is a MODEL whose VERSION is missing."""

    _SELECTOR = None

    def __call__(self, parser, namespace, values, option_string=None):
        if values is None:
            if not _ModelOptional._SELECTOR:
                import re

                _ModelOptional._SELECTOR = re.compile(
                    r"previous|v?\d{1,9}\.\d{1,9}(\.\d{1,9})?(_\d{8}_\d{6})?|[0-9a-f]{8,32}")
            if not _ModelOptional._SELECTOR.fullmatch(namespace.model or ""):
                parser.error(f"the following arguments are required: {self.metavar}")
            namespace.model, values = None, namespace.model
        setattr(namespace, self.dest, values)


_TOP_FLAGS = {"--version", "--json", "-v", "--verbose", "-q", "--quiet", "-h", "--help"}
_TOP_VALUED = {"--root", "--lock-timeout"}
_TOP_FLAGS |= {"--no-pager"}


def _count(text: str) -> int:
    """-n N: a count of 0 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def command_in(argv) -> str | None:
    """The subcommand named by ``argv`` when that is certain, else None (then build them all);
    "" for ``--version`` before any command, which needs no subcommand's parser.

    Only the exact spellings of the top-level options are skipped; anything else before the
    command (an abbreviation, a typo) leaves the decision, and its error message, to the full parser.
    """
    args = iter(argv)
    for arg in args:
        if arg in _TOP_FLAGS or any(arg.startswith(flag + "=") for flag in _TOP_VALUED):
            if arg in ("-h", "--help"):
                return None
            if arg == "--version":
                return ""  # no subcommand at all: argparse prints the version on reaching it
            continue
        if arg in _TOP_VALUED:
            next(args, None)
            continue
        return None if arg.startswith("-") else arg
    return None


def _gc_ages(p) -> None:
    p.add_argument("--grace", metavar="AGE", default=defaults.GRACE,
                   help=f"never delete anything younger than AGE (default {defaults.GRACE})")
    p.add_argument("--log-age", metavar="AGE", default=defaults.LOG_AGE,
                   help=f"delete gaia-cas's own log files older than AGE (default {defaults.LOG_AGE})")


def build_nightly_parser() -> argparse.ArgumentParser:
    """``gaia-cas-nightly``: the job cron runs (its man page is generated from this too)."""
    parser = _Parser(prog="gaia-cas-nightly",
                     description="Apply every model's retention policy, collect garbage and verify the store; "
                                 "exit status 1 when any step failed.")
    parser.man_short_description = "apply retention, collect garbage and verify a gaia-cas store"  # man's NAME line
    parser.add_argument("--root", metavar="DIR", help="the data root (default: as for gaia-cas)")
    _gc_ages(parser)
    parser.add_argument("--verify-sample", metavar="PERCENT", type=float, default=None,
                        help="re-hash only this share of the objects each night (default: all)")
    parser.add_argument("--lock-timeout", metavar="SECONDS", type=float, default=None,
                        help=f"how long to wait for a lock (default $GAIA_CAS_LOCK_TIMEOUT, else {defaults.LOCK_TIMEOUT:g})")
    parser.add_argument("--dry-run", action="store_true", help="plan every step; change nothing")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON document instead of the summary: ok, root, dry_run, and one record "
                             "per step (step, ok, summary and its figures)")
    return parser


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line, or (``only``) the top level plus one subcommand, which parses that
    subcommand's arguments exactly as the whole one would."""
    parser = _Parser(prog=PROG, description=DESCRIPTION, epilog=EPILOG, formatter_class=_TopFormatter)
    parser.man_short_description = "versioned ML model deployment on a deduplicated store"  # whatis, apropos
    parser.add_argument("--version", action=_LazyVersion, help="print the version and exit")
    _common(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name, help, **kwargs):
        if only is not None and name != only:
            return _Unused()
        p = sub.add_parser(name, help=help, description=help, **kwargs)
        _common(p, top=False)
        return p

    def reason(p):
        p.add_argument("--reason", metavar="TEXT", help="why: recorded in the history and the log")

    p = command("init", "create a data root (store/, manifests/, logs/); safe to repeat")
    p.add_argument("dir", nargs="?", metavar="DIR", help="where (default: the working directory)")

    p = command("model", "register a model or change its settings")
    msub = p.add_subparsers(dest="model_command", metavar="ACTION")
    msub.required = True
    for action, text in (("add", "register a model: aliases, default source, link location, metadata"),
                         ("set", "change a model's settings (--alias replaces the aliases)")):
        mp = msub.add_parser(action, help=text, description=text)
        _common(mp, top=False)
        mp.add_argument("name", metavar="NAME", help="model name: lowercase [a-z0-9][a-z0-9._-]*")
        mp.add_argument("--alias", action="append", metavar="A", help="another name for the model (repeatable)")
        mp.add_argument("--source", metavar="PATH", help="what 'deploy NAME' deploys when no PATH is given")
        mp.add_argument("--link", metavar="PATH",
                        help="where the current link lives, relative to the root (default models/NAME/current)")
        mp.add_argument("--meta", action="append", metavar="K=V",
                        help="default metadata for every version; V is read as JSON when it parses (repeatable)")
        if action == "set":
            mp.add_argument("--keep", type=int, metavar="N",
                            help=f"retention: always keep the newest N versions (default {defaults.KEEP})")
            mp.add_argument("--keep-within", metavar="AGE",
                            help="retention: always keep versions younger than AGE (30d, 12h, 2w); '' clears it")
            mp.add_argument("--serving-dir", metavar="DIR",
                            help="keep DIR/<n>/ numbered version folders (current and channels) for TF Serving "
                                 "or Triton to poll, each renamed in complete; n of X.Y.Z is X*1000000+Y*1000+Z; "
                                 "DIR is relative to the root; '' drops it")
        reason(mp)
    mp = msub.add_parser("show", help="show a model's settings", description="show a model's settings")
    _common(mp, top=False)
    mp.add_argument("name", metavar="NAME")
    text = "forget a model: its manifest and links go, gc frees its files later"
    mp = msub.add_parser("remove", help=text, description=text + "; a model with a current version, a channel "
                         "or a pinned version needs --force")
    _common(mp, top=False)
    mp.add_argument("name", metavar="NAME")
    mp.add_argument("--force", action="store_true",
                    help="remove it even though it has a current version, channels or pinned versions")
    reason(mp)

    p = command("deploy", "deploy a file or folder as the model's next version and make it current")
    p.add_argument("model", metavar="MODEL", help="model name or alias; 'all' (or 'both') deploys every model from its source")
    p.add_argument("path", nargs="?", metavar="PATH", help="file or folder to deploy (default: the model's source)")
    p.add_argument("--bump", choices=("major", "minor", "patch"), default="minor",
                   help="which part of the highest version to raise (default minor)")
    p.add_argument("--version", dest="set_version", metavar="X.Y.Z", help="use this (new) version number")
    p.add_argument("--meta", action="append", metavar="K=V", help="metadata for this version (repeatable)")
    p.add_argument("--force", action="store_true", help="deploy even if identical to the current version")
    p.add_argument("--dry-run", action="store_true", help="report what would happen; write nothing")
    p.add_argument("--consume", action="store_true",
                   help="hand the source over: hard-link its files into the store instead of copying them "
                        "(same filesystem), then delete the source once the deploy has committed")
    p.add_argument("--new", action="store_true",
                   help="MODEL is a new model even though its name is close to an existing one's")
    reason(p)

    p = command("list", "list versions, newest first, the current one marked")
    p.add_argument("model", nargs="?", metavar="MODEL", help="one model (default: every model)")
    p.add_argument("-n", "--number", type=_count, metavar="N", help="only the newest N versions of each model")

    p = command("status", "current version per model, and the store's size and deduplication")
    p.add_argument("model", nargs="?", metavar="MODEL", help="one model (default: every model)")

    p = command("show", "show one version's fields and metadata")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("version", nargs="?", metavar="VERSION", help="a version selector (default: current)")

    p = command("rollback", "make an earlier (or any existing) version current again; no bytes are copied")
    p.add_argument("model", metavar="MODEL", help="the model (may be left out when the root holds only one)")
    p.add_argument("version", nargs="?", metavar="VERSION", action=_ModelOptional,
                   help="1.4.0, 1.4, v1.4, v1.4_YYYYmmdd_HHMMSS, 8+ hex digits of its hash, or 'previous'")
    reason(p)

    p = command("pin", "pin a version: it survives every cleanup")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("version", metavar="VERSION")
    reason(p)
    p = command("unpin", "unpin a version")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("version", metavar="VERSION")
    reason(p)

    p = command("cleanup", "drop old versions from manifests: kept if current, pinned, among the newest N "
                           "or younger than AGE (any rule keeps); objects are left to gc")
    p.add_argument("model", nargs="?", metavar="MODEL", help="one model, or 'all' (the default)")
    p.add_argument("--keep", type=int, metavar="N",
                   help=f"keep the newest N (default: the model's policy, else {defaults.KEEP})")
    p.add_argument("--older-than", metavar="AGE", help="only remove versions older than AGE (30d, 12h, 2w)")
    p.add_argument("--dry-run", action="store_true", help="show the plan; change nothing")
    reason(p)

    p = command("gc", "delete objects, trees, temp files and old logs that no manifest reaches; keep large files "
                      "of cold versions as chunks")
    p.add_argument("--dry-run", action="store_true", help="list what would be deleted; delete nothing")
    _gc_ages(p)

    p = command("store", "show or change the store's format and chunking settings")
    p.add_argument("--chunk-threshold", metavar="SIZE",
                   help="files of at least SIZE (bytes, or 64MiB, 1GiB) are kept as content-defined chunks once no "
                        "hot version needs them whole (default 64MiB; at least 4MiB)")
    p.add_argument("--hot-recent", type=int, metavar="N",
                   help="also keep each model's N newest versions whole (default 0: current, channels, leased and "
                        "what gc's grace protects)")
    p.add_argument("--upgrade", action="store_true",
                   help="mark a store written by an older gaia-cas as of this one's format (says so if it is "
                        "already); a store is otherwise upgraded by its next write that needs the new format")

    p = command("promote", "point a channel (e.g. staging, canary) at a version; it gets its own link")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("version", metavar="VERSION")
    p.add_argument("--to", "--channel", required=True, metavar="CHANNEL", dest="channel",
                   help="the channel; 'current' is the default channel (same as rollback)")
    p.add_argument("--link", metavar="PATH", help="where the channel's link lives (default models/MODEL/CHANNEL)")
    reason(p)

    p = command("history", "the audit trail: who changed what, when and why")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("-n", "--number", type=_count, metavar="N", help="only the newest N events")

    p = command("diff", "files added, removed and changed between two versions, and metadata changed")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("a", metavar="A", help="a version selector")
    p.add_argument("b", metavar="B", help="a version selector")

    p = command("import-legacy", "migrate a copy-per-version layout (dl_model/, ml_model/ ...) with its history")
    p.add_argument("path", metavar="PATH", help="the folder holding dl_model/, ml_model/ ...")
    p.add_argument("--map", action="append", metavar="FOLDER=MODEL",
                   help="model name for a legacy folder (default dl_model=ssd, ml_model=catboost, x_model=x)")
    p.add_argument("--dry-run", action="store_true", help="report what would be imported; write nothing")
    p.add_argument("--keep-links", action="store_true",
                   help="leave each legacy current link as it is (default: a link inside the root becomes the "
                        "model's link, swapped atomically to the same bytes in the store)")
    p.add_argument("--timezone", metavar="ZONE",
                   help="the zone the legacy naive timestamps were written in: a name (Europe/Paris), UTC or "
                        "an offset (+02:00); default: this machine's local zone")
    reason(p)

    p = command("export", "write one version as a tar: the artifact under its own name plus metadata.json")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("version", nargs="?", metavar="VERSION", help="a version selector (default: current)")
    p.add_argument("-o", "--output", required=True, metavar="FILE.tar")

    p = command("import", "deploy a version from an exported tar (validated before anything is written)")
    p.add_argument("archive", metavar="FILE.tar")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--meta", action="append", metavar="K=V", help="extra metadata (repeatable)")
    p.add_argument("--force", action="store_true", help="import even if identical to the current version")
    p.add_argument("--max-expansion", type=float, default=100, metavar="RATIO",
                   help="refuse a member that decompresses to more than RATIO times its share of the archive "
                        "(default 100: model weights barely compress; a bomb does)")
    reason(p)

    p = command("verify", "re-hash stored objects, check trees and links; --repair fixes or isolates problems")
    p.add_argument("model", nargs="?", metavar="MODEL", help="one model (default: every model)")
    p.add_argument("--repair", action="store_true",
                   help="regenerate links, rebuild trees, quarantine corrupt objects, mark affected versions broken; "
                        "with --remote, re-upload what is bad there from this store")
    p.add_argument("--sample", type=float, metavar="PERCENT",
                   help="re-hash only a rotating PERCENT of the objects (a different share each day)")
    reason(p)

    p = command("logs", "show the most recent lines of the operation log")
    p.add_argument("-n", "--lines", type=int, default=20, metavar="N", help="how many lines (default 20)")
    p.add_argument("model", nargs="?", metavar="MODEL", help="only the lines that name this model")
    p.add_argument("-f", "--follow", action="store_true",
                   help="then keep printing lines as they are written, until stopped (Ctrl-C)")

    p = command("remove", "drop one version from a model's manifest (never the current, a channel's or a "
                          "pinned one); gc frees its files later")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("version", metavar="VERSION", help="a version selector")
    reason(p)

    command("demo", "deploy the bundled sample models (a SavedModel folder and a joblib file) and show them")

    # -- serving: watch, serve --------------------------------------------------------------
    p = command("watch", "on every change of a model's served version, run a command or signal a process")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--channel", default="current", metavar="C", help="the channel to follow (default current)")
    p.add_argument("--interval", type=float, default=1.0, metavar="S",
                   help="look at the manifest at least every S seconds (default 1; changes are seen at once "
                        "where inotify exists)")
    p.add_argument("--exec", dest="exec_command", metavar="CMD",
                   help="run CMD on every change, with GAIA_CAS_MODEL, GAIA_CAS_VERSION, GAIA_CAS_HASH and "
                        "GAIA_CAS_PATH in its environment; CMD is a program and its arguments, split into "
                        "words like a shell would but not run through a shell (no pipes, redirections or "
                        "$VARIABLES: use sh -c '...' for those); the version stays leased while it runs")
    p.add_argument("--signal", dest="signal_name", metavar="SIG", help="send SIG (e.g. HUP, USR1) to --pid on every change")
    p.add_argument("--pid", type=int, metavar="PID", help="the process --signal goes to")
    p.add_argument("--max-changes", type=int, metavar="N", help="stop after N changes (default: never)")
    p.add_argument("--timeout", type=float, metavar="S", help="stop after S seconds (default: never)")

    p = command("serve", "serve models over the Open Inference Protocol (v2) REST API, reloading each new version")
    p.add_argument("models", nargs="+", metavar="MODEL")
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8080, help="the port (default 8080; 0 picks a free one)")
    p.add_argument("--channel", default="current", metavar="C", help="the channel to serve (default current)")
    p.add_argument("--interval", type=float, default=1.0, metavar="S",
                   help="look for a new version at least every S seconds (default 1; at once where inotify exists)")
    p.add_argument("--max-body", type=int, default=64 << 20, metavar="BYTES",
                   help="refuse request bodies larger than this with 413 (default 64 MiB)")

    # -- S3 remote: remote, push, pull -------------------------------------------------------
    p = command("remote", "name the S3 remotes push and pull talk to (credentials: the AWS environment only)")
    rsub = p.add_subparsers(dest="remote_command", metavar="ACTION")
    rsub.required = True
    rp = rsub.add_parser("add", help="add a remote after probing it (the first one added is the default)",
                         description="add a remote after probing it once: reachable, bucket present, credentials "
                                     "accepted, conditional writes honoured")
    _common(rp, top=False)
    rp.add_argument("name", metavar="NAME", help="the remote's name: lowercase [a-z0-9][a-z0-9._-]*")
    rp.add_argument("url", metavar="URL", help="s3://BUCKET[/PREFIX]")
    rp.add_argument("--endpoint", metavar="URL", help="an S3-compatible engine (Ceph RGW, MinIO, R2); http:// works")
    rp.add_argument("--region", metavar="R", help="the bucket's region (default $AWS_REGION, else us-east-1)")
    for action, text in (("list", "list the remotes, the default marked"),
                         ("remove", "forget a remote (nothing on it is deleted)"),
                         ("default", "make a remote the default")):
        rp = rsub.add_parser(action, help=text, description=text)
        _common(rp, top=False)
        if action != "list":
            rp.add_argument("name", metavar="NAME")

    p = command("push", "upload versions the remote lacks (objects first, then the manifest by compare-and-swap), "
                        "with current, channels, aliases and metadata where this store saw their latest change")
    p.add_argument("model", nargs="?", metavar="MODEL", help="one model, or 'all' (the default; one line per model, "
                                                             "exit 1 if any failed)")
    p.add_argument("--remote", metavar="NAME", help="the remote (default: the default remote)")

    p = command("pull", "fetch the remote's current and channels' versions (every object verified), then move the "
                        "local current and channels to match")
    p.add_argument("model", metavar="MODEL", help="a model, or 'all'")
    p.add_argument("version", nargs="?", metavar="VERSION",
                   help="fetch this version without moving current or any channel")
    p.add_argument("--remote", metavar="NAME", help="the remote (default: the default remote)")
    p.add_argument("--channel", metavar="C", help="fetch only the remote's channel C and move only the local C "
                                                 "('current': only current)")
    p = command("sync", "pull every model whose remote manifest changed (one conditional GET each); --watch keeps "
                        "following it, for inference hosts")
    p.add_argument("model", nargs="?", metavar="MODEL", help="one model, or 'all' (the default)")
    p.add_argument("--remote", metavar="NAME", help="the remote (default: the default remote)")
    p.add_argument("--watch", action="store_true", help="keep following the remote until stopped (SIGTERM, Ctrl-C)")
    p.add_argument("--interval", type=float, default=5.0, metavar="S", help="seconds between rounds (default 5)")
    p.add_argument("--channel", metavar="C", help="follow only channel C (as 'pull --channel'; default: current "
                                                 "and every channel)")
    if only in (None, "deploy"):
        sub.choices["deploy"].add_argument(
            "--remote", metavar="NAME", help="deploy as the remote's next version: numbered there by "
                                             "compare-and-swap (a lost race takes the next free number), made "
                                             "current there, and recorded here as the same version")
    if only in (None, "promote"):
        sub.choices["promote"].add_argument("--remote", metavar="NAME",
                                            help="move the remote's channel instead (by compare-and-swap); nothing "
                                                 "local changes")
    if only in (None, "cleanup"):
        sub.choices["cleanup"].add_argument("--remote", metavar="NAME",
                                            help="the remote's own retention instead, by compare-and-swap (same "
                                                 "rules; a local cleanup never touches a remote)")
    # -- the terminal: completion, doctor ----------------------------------------------------
    p = command("completion", "print the shell completion script for SHELL (commands, options, and the store's "
                              "models, versions, channels and remotes)")
    p.add_argument("shell", metavar="SHELL", choices=("bash", "zsh", "fish"), help="bash, zsh or fish")
    command("doctor", "check the root: hard links, filesystems, free space, locks, reflinks, clock, staging, "
                      "man page; say what to do (exit status 1 when a check fails)")
    if only in (None, "list"):
        sub.choices["list"].add_argument("--remote", metavar="NAME",
                                         help="list the versions of MODEL on this remote instead")
    if only in (None, "gc"):
        gp = sub.choices["gc"]
        gp.add_argument("--remote", metavar="NAME",
                        help="collect on the remote instead: objects no remote manifest reaches, older than --grace "
                             "(there 24h unless given), one gc at a time (a lease object); logs and local files "
                             "are left alone")
        gp.set_defaults(grace=_DefaultAge(gp.get_default("grace")))  # still 1h locally; --remote tells it apart
    if only in (None, "verify"):
        sub.choices["verify"].add_argument("--remote", metavar="NAME",
                                           help="re-hash what the remote's manifests reach, on the remote "
                                                "(downloads; with --sample, today's share); changes nothing")
    if only in (None, "rollback"):
        sub.choices["rollback"].add_argument("--remote", metavar="NAME",
                                             help="move the remote's current instead (by compare-and-swap); "
                                                  "nothing local changes")
    if only and only not in sub.choices:
        return build_parser()  # not a command: the full parser lists the choices in its error
    return parser
