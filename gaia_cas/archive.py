"""export / import: one version as a tar file, and back.

An exported archive holds the artifact under its own name (the SavedModel folder, or the
joblib file) and a top-level ``metadata.json`` like the old layout's. Importing validates every
member before anything is written -- no ``..``, absolute names, links, devices, FIFOs or names
that are not valid path components -- then extracts into the store's staging area and deploys
from there, so a bad archive gives one clear error and writes nothing.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

from .atomic import atomic_file
from .locking import make_locked_dir
from .errors import InvalidInputError, SourceError
from .names import entry_name_problem

MAX_MEMBERS = 1_000_000


def artifact_name(version) -> str:
    """The name the artifact had when deployed: the file's, or the source folder's."""
    if version.name:
        return version.name
    base = os.path.basename((version.source or "").rstrip("/"))
    return base if base and entry_name_problem(base) is None else "model"


def legacy_metadata(model: str, version) -> dict:
    """metadata.json in the old layout's spirit: the version's metadata plus where it came from."""
    return {
        **version.metadata,
        "model": model, "version": f"v{version.version}", "timestamp": version.deployment_id,
        "created_at": version.created_at, "hash": version.tree, "format": version.format,
        "size_bytes": version.size_bytes, "size_mb": version.size_mb, "file_count": version.file_count,
        "reason": version.reason, "user": version.user, "host": version.host,
    }


def export_version(repo, model: str, version, output: Path) -> Path:
    from .ingest import artifact_path

    source = artifact_path(repo._materialize(version.tree), version.name)
    output = Path(output).absolute()
    if not output.parent.is_dir():
        raise InvalidInputError(f"cannot write {output}: {output.parent} is not a folder")
    with atomic_file(output) as tmp:
        # dereference: materialized files are hard links to objects, and two files with the same
        # content would otherwise be archived as a link member, which import rightly refuses.
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT, dereference=True) as tar:
            data = json.dumps(legacy_metadata(model, version), indent=2, sort_keys=True).encode()
            info = tarfile.TarInfo("metadata.json")
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
            tar.add(source, arcname=artifact_name(version), recursive=True, filter=_normalize)
    return output


def _normalize(info: tarfile.TarInfo) -> tarfile.TarInfo:
    # The store's read-only modes and owner mean nothing to whoever extracts the archive.
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = 0o755 if info.isdir() else 0o644
    return info


def validate_archive(path: Path) -> tuple[list[tarfile.TarInfo], str]:
    """Check every member; returns the members and the artifact's top-level name."""
    try:
        tar = tarfile.open(path, "r:*")
    except FileNotFoundError:
        raise SourceError(f"archive {path} does not exist") from None
    except (tarfile.TarError, OSError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SourceError(f"{path} is not a readable tar archive ({first})") from None
    with tar:
        try:
            members = []
            for info in tar:
                members.append(info)
                if len(members) > MAX_MEMBERS:
                    raise SourceError(f"{path} has more than {MAX_MEMBERS} members")
        except tarfile.TarError as exc:
            raise SourceError(f"{path} is damaged: {exc}") from None
    tops = set()
    seen = set()
    for info in members:
        name = info.name
        if name.startswith("/") or not name:
            raise SourceError(f"archive member {name!r} has an absolute or empty name")
        parts = name.rstrip("/").split("/")
        for part in parts:
            problem = entry_name_problem(part)
            if problem:
                raise SourceError(f"archive member {name!r}: the name part {part!r} {problem}")
        if not (info.isfile() or info.isdir()):
            kind = "a link" if (info.issym() or info.islnk()) else "a device, FIFO or other special file"
            raise SourceError(f"archive member {name!r} is {kind}; only files and folders are accepted")
        key = "/".join(parts)
        if key in seen:
            raise SourceError(f"archive member {name!r} appears twice")
        seen.add(key)
        tops.add(parts[0])
    artifacts = tops - {"metadata.json"}
    if len(artifacts) != 1:
        raise SourceError(f"{path} must hold one model file or folder beside metadata.json, found "
                          f"{', '.join(sorted(artifacts)) or 'none'}")
    return members, artifacts.pop()


def import_archive(repo, path: str | os.PathLike, model: str, *, reason: str | None = None,
                   metadata: dict | None = None, force: bool = False):
    """Validate, extract into store/tmp, deploy from there; the extraction is always removed."""
    from .errors import NotFoundError
    from .materialize import remove_tree
    from .names import check_model_name

    try:
        repo.model(model)
    except NotFoundError:
        check_model_name(model)  # a new model is created by the deploy
    path = Path(path).absolute()
    members, top = validate_archive(path)
    meta = {}
    if "metadata.json" in {m.name for m in members}:
        with tarfile.open(path, "r:*") as tar:
            raw = tar.extractfile("metadata.json").read(1 << 20)
        try:
            meta = json.loads(raw)
            if not isinstance(meta, dict):
                raise ValueError("not a JSON object")
        except (ValueError, UnicodeDecodeError) as exc:
            raise SourceError(f"{path}: metadata.json is not a JSON object ({exc})") from None
    # Fields the store records itself are not carried over as metadata.
    for key in ("model", "version", "timestamp", "created_at", "hash", "format", "size_bytes", "size_mb",
                "file_count", "reason", "user", "host"):
        meta.pop(key, None)
    meta.update(metadata or {})
    repo.layout.tmp.mkdir(parents=True, exist_ok=True)
    folder, liveness = make_locked_dir(repo.layout.tmp, "import")  # gc leaves it alone while locked
    workdir = Path(folder)
    try:
        with tarfile.open(path, "r:*") as tar:
            tar.extractall(workdir, members=[m for m in members if m.name != "metadata.json"], filter="data")
        return repo.deploy(model, workdir / top, reason=reason or f"imported from {path.name}", metadata=meta,
                           force=force, source_label=f"{path}!/{top}")  # keeps the artifact's own name
    finally:
        remove_tree(workdir)
        os.close(liveness)
