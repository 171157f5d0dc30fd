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

import json
import os
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from . import formats, ingest
from .errors import InvalidInputError, SourceError
from .manifest import Version, moment, record
from .names import check_model_name, check_text
from .versions import format_version, version_key

KNOWN = {"dl_model": ("ssd", ["dl"]), "ml_model": ("catboost", ["ml"])}
_FOLDER_RE = re.compile(r"v(\d{1,9})\.(\d{1,9})(?:\.(\d{1,9}))?_(\d{8}_\d{6})")


@dataclass
class LegacyVersion:
    folder: Path
    number: tuple[int, int, int]
    deployment_id: str
    artifact: Path | None = None
    metadata: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    assigned: str | None = None  # the version number it gets in gaia-cas

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

    def to_json(self) -> dict:
        return {
            "folder": self.folder, "model": self.model, "aliases": self.aliases, "current": self.current,
            "imported": [{"legacy": v.label, "version": v.assigned, "notes": v.notes} for v in self.versions],
            "skipped": [{"legacy": label, "why": why} for label, why in self.skipped],
            "problems": self.problems, "logical_bytes": self.logical_bytes, "new_bytes": self.new_bytes,
            "bytes_saved": self.logical_bytes - self.new_bytes,
        }


def parse_map(pairs: list[str] | None) -> dict[str, str]:
    mapping = {}
    for pair in pairs or ():
        folder, sep, name = pair.partition("=")
        if not sep or not folder or "/" in folder:
            raise InvalidInputError(f"invalid --map {pair!r}: expected FOLDER=MODEL, e.g. dl_model=ssd")
        mapping[folder] = check_model_name(name)
    return mapping


def scan(path: Path, mapping: dict[str, str]) -> list[ModelImport]:
    if not path.is_dir():
        raise SourceError(f"legacy layout {path} is not a folder")
    plans = []
    for entry in sorted(path.iterdir()):
        if not entry.name.endswith("_model") or entry.is_symlink() or not entry.is_dir():
            continue
        default_name, aliases = KNOWN.get(entry.name, (entry.name[: -len("_model")], []))
        name = mapping.get(entry.name, default_name)
        try:
            check_model_name(name)
        except InvalidInputError as exc:
            raise InvalidInputError(f"{entry.name}: {exc}; choose a name with --map {entry.name}=NAME") from None
        plans.append(_scan_model(entry, name, aliases if name == default_name else []))
    unused = set(mapping) - {p.folder for p in plans}
    if unused:
        raise InvalidInputError(f"--map names folders not found in {path}: {', '.join(sorted(unused))}")
    if not plans:
        raise SourceError(f"no *_model folders in {path}: nothing to import")
    return plans


def _scan_model(folder: Path, model: str, aliases: list[str]) -> ModelImport:
    plan = ModelImport(folder.name, model, aliases)
    versions_dir = folder / "versions"
    entries = sorted(versions_dir.iterdir()) if versions_dir.is_dir() else []
    if not entries:
        plan.problems.append(f"{folder.name}: no versions/ folder or no versions in it")
    for entry in entries:
        match = _FOLDER_RE.fullmatch(entry.name)
        if not match or not entry.is_dir() or entry.is_symlink():
            plan.skipped.append((entry.name, "not a version folder (expected vX.Y_YYYYmmdd_HHMMSS/)"))
            continue
        major, minor, patch, stamp = match.groups()
        version = LegacyVersion(entry, (int(major), int(minor), int(patch or 0)), stamp)
        contents = sorted(p for p in entry.iterdir() if p.name != "metadata.json")
        if len(contents) != 1:
            why = "no model file or folder in it" if not contents else \
                f"several entries ({', '.join(p.name for p in contents[:4])}); expected one model file or folder"
            plan.skipped.append((entry.name, why))
            continue
        version.artifact = contents[0]
        meta = entry / "metadata.json"
        if not meta.exists():
            version.notes.append("no metadata.json")
        else:
            try:
                loaded = json.loads(meta.read_text(encoding="utf-8"))
                if not isinstance(loaded, dict):
                    raise ValueError("not a JSON object")
                check_text(loaded, "metadata.json")
                version.metadata = loaded
            except (ValueError, UnicodeDecodeError) as exc:
                version.notes.append(f"malformed metadata.json ({exc}); imported without it")
        plan.versions.append(version)
    plan.versions.sort(key=lambda v: v.deployment_id)
    plan.current_label = _current_label(folder, plan)
    return plan


def _current_label(folder: Path, plan: ModelImport) -> str | None:
    link = folder / "current"
    if not os.path.islink(link):
        if os.path.lexists(link):
            plan.problems.append(f"{folder.name}/current is not a symlink; current not taken from it")
        else:
            plan.problems.append(f"{folder.name}/current is missing")
        return None
    target = os.path.normpath(os.path.join(folder, os.readlink(link)))
    versions_dir = os.path.normpath(folder / "versions") + os.sep
    if not target.startswith(versions_dir) or not os.path.exists(target):
        plan.problems.append(f"{folder.name}/current is dangling ({os.readlink(link)})")
        return None
    return target[len(versions_dir):].split(os.sep, 1)[0]


def import_legacy(repo, path: str | os.PathLike, *, mapping: dict[str, str] | None = None,
                  dry_run: bool = False, reason: str | None = None) -> list[ModelImport]:
    from .repo import _now, _translate_store_errors, _who

    plans = scan(Path(path).absolute(), mapping or {})
    user, host = _who()
    for plan in plans:
        existing = repo.manifests.read(plan.model) if plan.model in repo.models() else None
        done = _already_imported(existing)
        fresh = [v for v in plan.versions if str(v.folder) not in done]
        for v in plan.versions:
            if str(v.folder) in done:
                plan.skipped.append((v.label, f"already imported as {done[str(v.folder)]}"))
        plan.versions = fresh
        _assign_numbers(plan, existing)
        if existing is None:
            repo._check_link_free(plan.model, "current", repo.layout.default_link(plan.model))
        if dry_run or not fresh:
            plan.current = existing.current if existing else None
            for v in fresh:
                plan.logical_bytes += _size(v.artifact)
            continue
        with _translate_store_errors(repo.layout), repo.objects.staging() as staging:
            built = {}
            for v in fresh:
                try:
                    built[v.label] = ingest.stage(staging, v.artifact)
                except SourceError as exc:
                    plan.skipped.append((v.label, str(exc)))
            fresh = plan.versions = [v for v in fresh if v.label in built]
            with repo._writing():
                staging.install()
                plan.new_bytes = staging.new_bytes
                _commit(repo, plan, built, user, host, reason, _now)
        plan.logical_bytes = sum(built[v.label].size for v in fresh)
        repo.oplog.write("gaia_cas.import", f"imported {len(fresh)} legacy versions of {plan.model} from "
                         f"{Path(path).absolute() / plan.folder}: {plan.logical_bytes} bytes, {plan.new_bytes} new "
                         f"in the store; current {plan.current or '-'} by {user}@{host}"
                         + (f" reason={reason!r}" if reason else ""))
    return plans


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


def _commit(repo, plan, built, user, host, reason, now) -> None:
    with repo.manifests.edit(plan.model, create=True, check_tree=repo._check_complete,
                             on_commit=repo._sync_link) as manifest:
        if not manifest.config.aliases and plan.aliases:
            taken = {a for m in repo.models() if m != plan.model for a in repo.manifest(m).config.aliases}
            manifest.config.aliases = [a for a in plan.aliases if a not in taken and a not in repo.models()]
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
        at = now().isoformat(timespec="seconds")
        for v in plan.versions:
            b = built[v.label]
            created = datetime.strptime(v.deployment_id, "%Y%m%d_%H%M%S").astimezone()
            manifest.versions.append(Version(
                version=v.assigned, deployment_id=v.deployment_id, created_at=created.isoformat(timespec="seconds"),
                tree=b.tree, artifact=b.artifact, name=b.name, size_bytes=b.size, file_count=b.file_count,
                format=formats.detect(v.artifact), metadata=dict(v.metadata), reason=reason or "imported from the legacy layout",
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
                repo._materialize(manifest.find(chosen).tree)
                before = manifest.current
                manifest.current = chosen
                record(manifest, "import", version=chosen, before=before, at=at, user=user, host=host,
                       reason="current of the legacy layout", details={"legacy_current": True})
        plan.current = manifest.current


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())
