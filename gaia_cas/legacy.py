"""import-legacy: bring a copy-per-version layout into the store, history included.

The layout it reads (never writes)::

    PATH/dl_model/current -> versions/v1.5_20250716_202917/saved_model
    PATH/dl_model/versions/v1.0_20250711_143245/{saved_model/, metadata.json}
    PATH/ml_model/current -> versions/v1.3_20250716_202927/model_catboost_best.joblib
    PATH/ml_model/versions/v1.3_20250716_202927/{model_catboost_best.joblib, metadata.json}

Each ``*_model`` folder becomes a model (``dl_model`` -> ``ssd`` alias ``dl``, ``ml_model`` ->
``catboost`` alias ``ml``, others ``x_model`` -> ``x``; ``--map dl_model=NAME`` overrides), each
version folder a version keeping its number, timestamp and every field of its metadata.json.
Import is not a deploy: identical copies stay separate versions (they are history) while their
bytes are stored once. Problems are reported per version and the rest is imported. Running it
again imports nothing new: each imported folder is remembered in the model's history.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from . import clock, ingest, links
from .codec import check_value
from .errors import InvalidInputError, SourceError
from .deploy import tree_in_use
from .manifest import Version, moment, record
from .materialize import build as build_tree
from .names import check_model_name, check_text
from .progress import Tally
from .versions import format_version, version_key

KNOWN = {"dl_model": ("ssd", ["dl"]), "ml_model": ("catboost", ["ml"])}
_FOLDER_RE = re.compile(r"v(\d{1,9})\.(\d{1,9})(?:\.(\d{1,9}))?_(\d{8}_\d{6})")
# metadata.json is a small record: a larger file is not read (each text in it may hold up to the
# manifest's 1 MiB, see codec.MAX_STR).
MAX_METADATA_BYTES = 16 << 20
# Fields of a legacy metadata.json that describe one version, not the model: they are kept on
# each imported version but not carried into the model's default metadata for new deploys
# (seeded there, the legacy current's deployment_reason would label every later deploy).
PER_VERSION_FIELDS = ("version", "timestamp", "deployed_at", "deployment_id", "created_at", "size_mb",
                      "size_bytes", "file_count", "hash", "deployment_reason")
_DIR_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC


@dataclass
class LegacyVersion:
    folder: Path
    number: tuple[int, int, int]
    deployment_id: str
    artifact: Path | None = None
    metadata: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    assigned: str | None = None  # the version number it gets in gaia-cas
    created_at: str | None = None  # ISO time with offset, microseconds kept
    identity: tuple[int, int] | None = None  # (dev, ino) of the version folder the scan opened
    format: str | None = None  # detected from the staged files, before any lock is taken

    @property
    def label(self) -> str:
        return self.folder.name


@dataclass
class ModelImport:
    folder: str
    model: str
    aliases: list[str]
    versions: list[LegacyVersion] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (folder, why)
    problems: list[str] = field(default_factory=list)
    current_label: str | None = None
    current: str | None = None
    logical_bytes: int = 0
    new_bytes: int = 0
    legacy_link: Path | None = None  # PATH/<folder>/current, when it is a symlink
    take_over: str | None = None  # that link relative to the root, if the model is to own it
    link: str | None = None  # the link the model serves through after the import
    link_taken: bool = False
    default_metadata: list[str] = field(default_factory=list)  # keys seeded from the legacy current
    next_command: str | None = None

    def to_json(self) -> dict:
        return {
            "folder": self.folder, "model": self.model, "aliases": self.aliases, "current": self.current,
            "imported": [{"legacy": v.label, "version": v.assigned, "notes": v.notes} for v in self.versions],
            "skipped": [{"legacy": label, "why": why} for label, why in self.skipped],
            "problems": self.problems, "logical_bytes": self.logical_bytes, "new_bytes": self.new_bytes,
            "bytes_saved": self.logical_bytes - self.new_bytes,
            "link": self.link, "link_taken_over": self.link_taken, "default_metadata": self.default_metadata,
            "next_command": self.next_command,
        }


class TimeZone:
    """The zone legacy naive timestamps are read in: a name, an offset, or the machine's own."""

    def __init__(self, name: str | None = None):
        from datetime import timedelta, timezone

        self.tzinfo = None  # None: the machine's local zone (with its daylight saving rules)
        if name is None or name == "local":
            self.name = f"the machine's local time zone ({datetime.now().astimezone().tzname()})"
            return
        check_text(name, "--timezone")
        offset = re.fullmatch(r"([+-])(\d{2}):?(\d{2})", name)
        if offset:
            sign = 1 if offset.group(1) == "+" else -1
            hours, minutes = int(offset.group(2)), int(offset.group(3))
            if hours > 23 or minutes > 59:
                raise InvalidInputError(f"invalid --timezone {name!r}: an offset is +HH:MM, at most +23:59")
            self.tzinfo = timezone(sign * timedelta(hours=hours, minutes=minutes))
        elif name.upper() in ("UTC", "Z"):
            self.tzinfo = timezone.utc
        else:
            try:
                from zoneinfo import ZoneInfo

                self.tzinfo = ZoneInfo(name)
            except (ValueError, LookupError, OSError):
                raise InvalidInputError(f"unknown --timezone {name!r}: give a zone name such as Europe/Paris, "
                                        "UTC, or an offset such as +02:00") from None
        self.name = name

    def aware(self, naive: datetime) -> datetime:
        if naive.tzinfo is not None:
            return naive
        return naive.astimezone() if self.tzinfo is None else naive.replace(tzinfo=self.tzinfo)


def parse_map(pairs: list[str] | None) -> dict[str, str]:
    mapping = {}
    for pair in pairs or ():
        folder, sep, name = pair.partition("=")
        if not sep or not folder or "/" in folder:
            raise InvalidInputError(f"invalid --map {pair!r}: expected FOLDER=MODEL, e.g. dl_model=ssd")
        mapping[folder] = check_model_name(name)
    return mapping


def scan(path: Path, mapping: dict[str, str], zone: TimeZone | None = None,
         store_trees: Path | None = None) -> list[ModelImport]:
    """Read the layout, each folder opened relative to its parent's descriptor, never through a symlink.

    ``store_trees``: the store's materialized trees; a ``current`` pointing there is a link an
    earlier import took over, not a problem."""
    zone = zone or TimeZone()
    try:
        top = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        raise SourceError(f"legacy layout {path} is not a folder") from None
    plans = []
    try:
        for entry in sorted(os.scandir(top), key=lambda e: e.name):
            if not entry.name.endswith("_model") or not entry.is_dir(follow_symlinks=False):
                continue
            default_name, aliases = KNOWN.get(entry.name, (entry.name[: -len("_model")], []))
            name = mapping.get(entry.name, default_name)
            try:
                check_model_name(name)
            except InvalidInputError as exc:
                raise InvalidInputError(f"{entry.name}: {exc}; choose a name with --map {entry.name}=NAME") from None
            try:
                folder_fd = os.open(entry.name, _DIR_FLAGS, dir_fd=top)
            except OSError:
                continue  # replaced by a symlink (or removed) since it was listed: not a model folder
            try:
                plans.append(_scan_model(path / entry.name, folder_fd, name,
                                         aliases if name == default_name else [], zone, store_trees))
            finally:
                os.close(folder_fd)
    finally:
        os.close(top)
    unused = set(mapping) - {p.folder for p in plans}
    if unused:
        raise InvalidInputError(f"--map names folders not found in {path}: {', '.join(sorted(unused))}")
    if not plans:
        raise SourceError(f"no *_model folders in {path}: nothing to import")
    return plans


def _scan_model(folder: Path, folder_fd: int, model: str, aliases: list[str], zone: TimeZone,
                store_trees: Path | None = None) -> ModelImport:
    plan = ModelImport(folder.name, model, aliases)
    try:
        versions_fd = os.open("versions", _DIR_FLAGS, dir_fd=folder_fd)
    except OSError:
        versions_fd = None
    try:
        entries = sorted(os.scandir(versions_fd), key=lambda e: e.name) if versions_fd is not None else []
        if not entries:
            plan.problems.append(f"{folder.name}: no versions/ folder or no versions in it")
        for entry in entries:
            version = _scan_version(plan, folder / "versions" / entry.name, entry, versions_fd, zone)
            if version is not None:
                plan.versions.append(version)
    finally:
        if versions_fd is not None:
            os.close(versions_fd)
    plan.versions.sort(key=lambda v: v.deployment_id)
    plan.current_label = _current_label(folder, plan, store_trees)
    return plan


def _scan_version(plan: ModelImport, path: Path, entry, versions_fd: int, zone: TimeZone) -> LegacyVersion | None:
    name = entry.name
    match = _FOLDER_RE.fullmatch(name)
    if not match or not entry.is_dir(follow_symlinks=False):
        plan.skipped.append((name, "not a version folder (expected vX.Y_YYYYmmdd_HHMMSS/)"))
        return None
    major, minor, patch, stamp = match.groups()
    try:
        stamped = datetime.strptime(stamp, "%Y%m%d_%H%M%S")
    except ValueError:
        plan.skipped.append((name, f"its timestamp {stamp} is not a valid date and time (YYYYmmdd_HHMMSS)"))
        return None
    try:
        version_fd = os.open(name, _DIR_FLAGS, dir_fd=versions_fd)
    except OSError as exc:
        plan.skipped.append((name, f"cannot be opened as a folder ({exc.strerror})"))
        return None
    try:
        version = LegacyVersion(path, (int(major), int(minor), int(patch or 0)), stamp)
        held = os.fstat(version_fd)
        version.identity = (held.st_dev, held.st_ino)
        contents = sorted(n for n in os.listdir(version_fd) if n != "metadata.json")
        if len(contents) != 1:
            why = "no model file or folder in it" if not contents else \
                f"several entries ({', '.join(contents[:4])}); expected one model file or folder"
            plan.skipped.append((name, why))
            return None
        version.artifact = path / contents[0]
        try:
            metadata, note = _read_metadata(version_fd)
        except _TooLarge as exc:
            plan.skipped.append((name, str(exc)))
            return None
    finally:
        os.close(version_fd)
    if note:
        version.notes.append(note)
    if metadata is not None:
        try:
            check_value(metadata, "metadata.json")
        except InvalidInputError as exc:
            plan.skipped.append((name, f"{exc}; shorten it and import again"))
            return None
        version.metadata = metadata
    version.created_at = _created_at(metadata or {}, stamped, zone)
    return version


class _TooLarge(Exception):
    pass


def _read_metadata(version_fd: int) -> tuple[dict | None, str | None]:
    """metadata.json of one version folder: never through a symlink, never a FIFO or device,
    at most MAX_METADATA_BYTES. Returns (metadata or None, a note saying why it was not used);
    raises _TooLarge (the version is skipped, so its metadata is not lost) for a larger file."""
    try:
        fd = os.open("metadata.json", os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=version_fd)
    except FileNotFoundError:
        return None, "no metadata.json"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return None, "metadata.json is a symlink (it could lead to another user's file); imported without it"
        return None, f"metadata.json cannot be read ({exc.strerror}); imported without it"
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None, "metadata.json is not a regular file; imported without it"
        if st.st_size > MAX_METADATA_BYTES:
            raise _TooLarge(f"metadata.json is {st.st_size} bytes, over the limit of {MAX_METADATA_BYTES}")
        chunks, size = [], 0
        while size <= MAX_METADATA_BYTES:
            chunk = os.read(fd, MAX_METADATA_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > MAX_METADATA_BYTES:
            raise _TooLarge(f"metadata.json grew over the limit of {MAX_METADATA_BYTES} bytes")
        raw = b"".join(chunks)
    except OSError as exc:
        return None, f"metadata.json cannot be read ({exc.strerror}); imported without it"
    finally:
        os.close(fd)
    try:
        loaded = json.loads(raw.decode("utf-8"))
        if not isinstance(loaded, dict):
            raise ValueError("not a JSON object")
        check_text(loaded, "metadata.json")
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        shown = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return None, f"malformed metadata.json ({shown}); imported without it"
    return loaded, None


def _created_at(metadata: dict, stamped: datetime, zone: TimeZone) -> str:
    """The version's time: metadata.json's own created_at/deployed_at when it is the folder's
    second (it keeps the microseconds), else the folder's timestamp; naive times read in ``zone``."""
    for key in ("created_at", "deployed_at"):
        text = metadata.get(key)
        if isinstance(text, str):
            try:
                value = datetime.fromisoformat(text)
            except ValueError:
                continue
            if value.replace(microsecond=0, tzinfo=None) == stamped:
                return zone.aware(value).isoformat()
    return zone.aware(stamped).isoformat()


def _current_label(folder: Path, plan: ModelImport, store_trees: Path | None = None) -> str | None:
    link = folder / "current"
    if not os.path.islink(link):
        if os.path.lexists(link):
            plan.problems.append(f"{folder.name}/current is not a symlink; current not taken from it")
        else:
            plan.problems.append(f"{folder.name}/current is missing")
        return None
    plan.legacy_link = link
    text = os.readlink(link)
    if not os.path.exists(link):
        plan.problems.append(f"{folder.name}/current is dangling ({text})")
        return None
    # Resolved, so a link written as an absolute path, or through a symlinked parent, is
    # recognised as pointing into versions/ all the same.
    target = os.path.realpath(link)
    versions_dir = os.path.realpath(folder / "versions") + os.sep
    if store_trees is not None and target.startswith(os.path.realpath(store_trees) + os.sep):
        return None  # taken over by an earlier import: it serves from the store already
    if not target.startswith(versions_dir):
        plan.problems.append(f"{folder.name}/current points outside versions/ ({text}), at no version folder; "
                             "current not taken from it")
        return None
    return target[len(versions_dir):].split(os.sep, 1)[0]


def plan_link(ctx, plan: ModelImport, existing, keep_links: bool) -> None:
    """Decide whether the model takes over the legacy ``current`` link (so servers reading it
    move to the store with no gap), or why not."""
    default = existing.config.link if existing is not None and existing.config.link else \
        ctx.layout.default_link(plan.model)
    plan.link = default
    if plan.legacy_link is None or plan.current_label is None or keep_links:
        return
    root = os.path.realpath(ctx.root)
    parent = os.path.realpath(plan.legacy_link.parent)
    if not (parent + os.sep).startswith(root + os.sep):
        above = os.path.commonpath([root, parent])
        plan.problems.append(
            f"{plan.folder}/current is outside the root {ctx.root}: left as it is, still serving the legacy "
            f"copy; to have gaia-cas take it over, use a root that holds it (e.g. 'gaia-cas init {above}' and "
            f"import into that root)")
        return
    relative = os.path.relpath(parent, root) + "/current" if parent != root else "current"
    current = next((v for v in plan.versions if v.label == plan.current_label), None)
    if current is not None and os.path.realpath(plan.legacy_link) != os.path.realpath(current.artifact):
        # current -> versions/v1.5_…/ (the version folder): servers read current/saved_model/…
        # and current/metadata.json, which the store's checkout of the artifact does not have.
        plan.problems.append(
            f"{plan.folder}/current points at the version folder, not at the model in it "
            f"({os.path.basename(current.artifact)}): servers reading paths below it would break, so it "
            f"is left as it is; 'gaia-cas model set {plan.model} --link PATH' gives the model a link of its own")
        return
    try:
        links.check_location(ctx.layout, relative)
        ctx.check_link_free(plan.model, "current", relative)
    except InvalidInputError as exc:
        plan.problems.append(f"{plan.folder}/current cannot become {plan.model}'s link ({exc}); left as it is")
        return
    theirs = existing.config.link if existing is not None else None
    if existing is not None and (theirs not in (None, relative) or (theirs is None and existing.current is not None)):
        # The model already serves through a link of its own: moving it is the user's call.
        plan.problems.append(
            f"{plan.folder}/current left as it is: {plan.model} already serves through {plan.link}; "
            f"'gaia-cas model set {plan.model} --link {relative}' moves it")
        return
    plan.take_over = relative
    plan.link = relative


def import_legacy(ctx, path: str | os.PathLike, *, mapping: dict[str, str] | None = None,
                  dry_run: bool = False, reason: str | None = None, keep_links: bool = False,
                  timezone: str | None = None, progress=None) -> list[ModelImport]:
    """Import every model of the layout at ``path``.

    Each legacy ``current`` link inside the root becomes the model's link (``keep_links``
    opts out): it is replaced by renaming a new link over it, pointing at the same bytes in the
    store, so a server following it never finds it missing or serving other content. The
    model's default metadata is seeded from the legacy current version's metadata.json, minus
    the fields that describe one version (:data:`PER_VERSION_FIELDS`, ``model_size_*``).
    ``progress(done, total)`` hears the bytes staged, model by model (see :mod:`gaia_cas.progress`).
    """
    check_text(str(path), "legacy path")
    check_text(reason, "--reason")
    zone = TimeZone(timezone)
    plans = scan(Path(path).absolute(), mapping or {}, zone, ctx.layout.trees)
    user, host = clock.who()
    for plan in plans:
        existing = ctx.manifests.read(plan.model) if plan.model in ctx.models() else None
        done = _already_imported(existing)
        fresh = [v for v in plan.versions if str(v.folder) not in done]
        for v in plan.versions:
            if str(v.folder) in done:
                plan.skipped.append((v.label, f"already imported as {done[str(v.folder)]}"))
        plan.versions = fresh
        _assign_numbers(plan, existing)
        plan_link(ctx, plan, existing, keep_links)
        if existing is None and plan.take_over is None:
            ctx.check_link_free(plan.model, "current", ctx.layout.default_link(plan.model))
        if dry_run or not fresh:
            plan.current = existing.current if existing else None
            if dry_run and plan.take_over and existing is None:
                plan.problems.append(f"would take over {plan.folder}/current as {plan.model}'s link "
                                     f"({plan.take_over}), serving the same bytes from the store")
            for v in fresh:
                plan.logical_bytes += _size(Path(path).absolute(), plan, v)
            _next_command(ctx, plan, existing)
            continue
        with ctx.store_errors(), ctx.objects.staging() as staging:
            built = {}
            tally = None
            if progress is not None:  # the model's total first: one more scan of each version, no bytes read
                tally = Tally(progress, sum(_size(Path(path).absolute(), plan, v) for v in fresh))
            for v in fresh:
                try:
                    built[v.label] = _stage_version(staging, Path(path).absolute(), plan, v, tally)
                except SourceError as exc:
                    plan.skipped.append((v.label, str(exc)))
            fresh = plan.versions = [v for v in fresh if v.label in built]
            # A failure from the install to the commit takes back what this import added
            # (Staging._take_back): the store is left as it was. The link is claimed under the
            # claims lock, decided again there against models added since the plan.
            with ctx.claims(), ctx.writing():
                ctx.check_link_free(plan.model, "current", plan.link)
                try:
                    staging.install()
                    plan.new_bytes = staging.new_bytes
                    manifest = _commit(ctx, plan, built, user, host, reason, clock.now, staging)
                except OSError as exc:
                    _refuse_moved(plan.model, fresh, exc)
                    raise
        plan.logical_bytes = sum(built[v.label].size for v in fresh)
        _next_command(ctx, plan, manifest)
        ctx.oplog.write("gaia_cas.import", f"imported {len(fresh)} legacy versions of {plan.model} from "
                         f"{Path(path).absolute() / plan.folder}: {plan.logical_bytes} bytes, {plan.new_bytes} new "
                         f"in the store; current {plan.current or '-'}, link {plan.link}"
                         + (" (taken over from the legacy layout)" if plan.link_taken else "")
                         + f"; legacy times read in {zone.name} by {user}@{host}"
                         + (f" reason={reason!r}" if reason else ""))
    return plans


def _next_command(ctx, plan: ModelImport, manifest) -> None:
    """The command still needed for 'gaia-cas deploy MODEL' to work: where new versions come from."""
    import shlex

    if manifest is not None and manifest.config.source:
        return
    plan.next_command = f"gaia-cas --root {shlex.quote(str(ctx.root))} model set {plan.model} --source PATH"


def _already_imported(manifest) -> dict[str, str]:
    """Legacy folder -> version, from history: an import is remembered even after a cleanup."""
    if manifest is None:
        return {}
    return {e.details["legacy_folder"]: e.version for e in manifest.history
            if e.action == "import" and "legacy_folder" in e.details}


def _assign_numbers(plan: ModelImport, existing) -> None:
    taken = existing.assigned() if existing else set()
    for v in plan.versions:  # timestamp order: the later of two equal numbers gets the next free patch
        number = v.number
        while format_version(number) in taken:
            number = (number[0], number[1], number[2] + 1)
        v.assigned = format_version(number)
        taken.add(v.assigned)
        if number != v.number:
            v.notes.append(f"number {format_version(v.number)} was taken; imported as {v.assigned}")


def _refuse_moved(model: str, versions, exc: OSError) -> None:
    """A version folder moved or deleted since it was staged (the old script's cleanup) is the
    source's failure, not the store's: say which, and that none of the model's versions was
    imported (the store was left as it was)."""
    for v in versions:
        if not os.path.lexists(v.artifact):
            raise SourceError(f"{v.artifact} moved or was deleted while it was being imported; "
                              f"no version of {model} was imported") from exc


def _commit(ctx, plan, built, user, host, reason, now, staging=None):
    def on_commit(manifest) -> None:
        if staging is not None:
            staging.keep()  # committed: the batch is never taken back now
        ctx.sync_link(manifest)

    with ctx.manifests.edit(plan.model, create=True, check_tree=ctx.check_complete,
                             on_commit=on_commit) as manifest:
        if not manifest.config.aliases and plan.aliases:
            taken = {a for m in ctx.models() if m != plan.model for a in ctx.manifest(m).config.aliases}
            manifest.config.aliases = [a for a in plan.aliases if a not in taken and a not in ctx.models()]
        # Decided again under the lock: a deploy or a second import may have run while the
        # versions were being staged, and a number must never be given twice.
        done = _already_imported(manifest)
        late = [v for v in plan.versions if str(v.folder) in done]
        for v in late:
            plan.skipped.append((v.label, f"already imported as {done[str(v.folder)]}"))
        plan.versions = [v for v in plan.versions if str(v.folder) not in done]
        for v in plan.versions:
            v.notes = [n for n in v.notes if not n.startswith("number ")]
        _assign_numbers(plan, manifest)
        labels = {v.label: v for v in plan.versions}
        current_label = plan.current_label if plan.current_label in labels else None
        had_current = manifest.current
        at = clock.stamp(now())
        for v in plan.versions:
            b = built[v.label]
            manifest.versions.append(Version(
                version=v.assigned, deployment_id=v.deployment_id, created_at=v.created_at,
                tree=b.tree, artifact=b.artifact, name=b.name, size_bytes=b.size, file_count=b.file_count,
                format=v.format, metadata=dict(v.metadata), reason=reason or "imported from the legacy layout",
                user=user, host=host, source=str(v.artifact),
            ))
            manifest.new_trees.add(b.tree)
            if manifest.highest is None or version_key(v.assigned) > version_key(manifest.highest):
                manifest.highest = v.assigned
            record(manifest, "import", version=v.assigned, before=manifest.current, at=at, user=user, host=host,
                   reason=reason, details={"legacy_folder": str(v.folder), "legacy": v.label, "notes": v.notes})
        manifest.versions.sort(key=lambda x: moment(x.created_at))
        if had_current is None:
            chosen = labels[current_label].assigned if current_label else (plan.versions[-1].assigned if plan.versions else None)
            if current_label is None and plan.versions:
                plan.problems.append(f"made the newest imported version {chosen} current")
            if chosen:
                tree = manifest.find(chosen).tree
                if staging is None:
                    ctx.materialize(tree)
                else:
                    tree_dir, made = build_tree(ctx.layout, ctx.objects, tree)
                    staging.materialized(tree_dir, made, lambda: tree_in_use(ctx, tree))
                before = manifest.current
                manifest.current = chosen
                details = {"legacy_current": True}
                source = labels[current_label] if current_label else plan.versions[-1]
                seeded = {k: v for k, v in source.metadata.items()
                          if k not in PER_VERSION_FIELDS and not k.startswith("model_size_")
                          and k not in manifest.config.metadata}
                if seeded:
                    manifest.config.metadata = {**seeded, **manifest.config.metadata}
                    plan.default_metadata = sorted(seeded)
                    details["default_metadata_from"] = source.label
                if current_label and plan.take_over and manifest.config.link in (None, plan.take_over):
                    # The legacy current is the version made current: the link keeps serving
                    # the same bytes, now from the store (replaced by rename in sync_link).
                    manifest.config.link = plan.take_over
                    plan.link_taken = True
                    details["link_taken_over"] = plan.take_over
                record(manifest, "import", version=chosen, before=before, at=at, user=user, host=host,
                       reason="current of the legacy layout", details=details)
        plan.link = manifest.config.link or ctx.layout.default_link(plan.model)
        plan.current = manifest.current
    return manifest


def _open_version(layout: Path, plan: ModelImport, v: LegacyVersion) -> int:
    """The version folder the scan saw, reached again from the layout's top folder one component
    at a time, never through a symlink, and checked by device and inode: a folder swapped since
    (for a symlink into a folder its owner cannot read, or another folder) is refused."""
    try:
        fd = os.open(layout, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise SourceError(f"legacy layout {layout} cannot be opened any more ({exc.strerror})") from None
    try:
        for part in (plan.folder, "versions", v.label):
            try:
                inner = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                why = {errno.ELOOP: "now a symlink", errno.ENOTDIR: "no longer a folder",
                       errno.ENOENT: "gone"}.get(exc.errno, exc.strerror)
                raise SourceError(f"{v.folder} changed since the layout was scanned ({why})") from None
            os.close(fd)
            fd = inner
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != v.identity:
            raise SourceError(f"{v.folder} changed since the layout was scanned (replaced by another folder)")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _stage_version(staging, layout: Path, plan: ModelImport, v: LegacyVersion, tally=None):
    """Stage one version from its folder held by descriptor, and detect its format there (the
    files as scanned, no lock held)."""
    fd = _open_version(layout, plan, v)
    try:
        node = ingest.scan_at(fd, v.artifact.name, str(v.artifact))
        done = tally.done if tally is not None else 0
        built = ingest.stage(staging, v.artifact, node=node,
                             progress=None if tally is None else lambda d, t: tally.progress(done + d, tally.total))
        if tally is not None:
            tally.add(built.size)
        v.format = ingest.source_format(node)
    finally:
        os.close(fd)
    return built


def _size(layout: Path, plan: ModelImport, v: LegacyVersion) -> int:
    """Bytes of the regular files of an artifact, for a dry run's report, from its folder held by
    descriptor; a version that cannot be scanned counts nothing (the import would skip it)."""
    try:
        fd = _open_version(layout, plan, v)
    except SourceError:
        return 0
    try:
        node = ingest.scan_at(fd, v.artifact.name, str(v.artifact))
    except SourceError:
        return 0
    finally:
        os.close(fd)
    if isinstance(node, ingest.ScannedFile):
        return node.size
    total, stack = 0, [node]
    while stack:
        for child in stack.pop().children.values():
            if isinstance(child, ingest.ScannedFile):
                total += child.size
            else:
                stack.append(child)
    return total
