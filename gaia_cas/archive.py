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
from .errors import InvalidInputError, SourceError, StoreError
from .names import entry_name_problem
from .progress import Tally, shifted

MAX_MEMBERS = 1_000_000
# Model weights barely compress (~1.1x); a member that expands more than this many times its
# share of the compressed archive is a bomb, not a model (``import --max-expansion`` raises it).
MAX_EXPANSION = 100
# Slack for the decompressor's read-ahead: members up to MAX_EXPANSION x this always pass.
_EXPANSION_SLACK = 64 << 10
MAX_METADATA_BYTES = 16 << 20
_CHUNK = 1 << 20
# The key under which an export records gaia-cas's own fields, beside the user's metadata.
OWN_KEY = "gaia_cas"
# What an export before OWN_KEY existed put at the top of metadata.json, over the user's fields.
_OLD_EXPORT_FIELDS = ("model", "version", "timestamp", "created_at", "hash", "format", "size_bytes", "size_mb",
                      "file_count", "reason", "user", "host")


def artifact_name(version) -> str:
    """The name the artifact had when deployed: the file's, or the source folder's."""
    if version.name:
        return version.name
    base = os.path.basename((version.source or "").rstrip("/"))
    return base if base and entry_name_problem(base) is None else "model"


def export_metadata(model: str, version) -> dict:
    """metadata.json of an export: the user's metadata exactly as it is, and gaia-cas's own
    fields (the version, where it came from) under their own key."""
    own = {
        "model": model, "version": version.version, "deployment_id": version.deployment_id,
        "created_at": version.created_at, "hash": version.tree, "format": version.format,
        "size_bytes": version.size_bytes, "file_count": version.file_count,
        "reason": version.reason, "user": version.user, "host": version.host,
    }
    metadata = dict(version.metadata)
    if OWN_KEY in metadata:  # the user's own field of that name is kept, and given back on import
        own["user_field"] = metadata.pop(OWN_KEY)
    return {**metadata, OWN_KEY: own}


def user_metadata(doc: dict) -> dict:
    """The user's metadata from an archive's metadata.json (the inverse of export_metadata)."""
    meta = dict(doc)
    own = meta.get(OWN_KEY)
    if isinstance(own, dict) and "hash" in own and "version" in own:
        del meta[OWN_KEY]
        if "user_field" in own:
            meta[OWN_KEY] = own["user_field"]
    elif all(key in meta for key in ("model", "version", "timestamp", "hash", "format", "size_bytes")):
        for key in _OLD_EXPORT_FIELDS:  # an export of an earlier release: its fields over the user's
            meta.pop(key, None)
    return meta


def export_version(ctx, model: str, version, output: Path, progress=None) -> Path:
    from .ingest import artifact_path

    source = artifact_path(ctx.materialize(version.tree), version.name)
    output = Path(output).absolute()
    if not output.parent.is_dir():
        raise InvalidInputError(f"cannot write {output}: {output.parent} is not a folder")
    with atomic_file(output) as tmp:
        # dereference: materialized files are hard links to objects, and two files with the same
        # content would otherwise be archived as a link member, which import rightly refuses.
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT, dereference=True) as tar:
            data = json.dumps(export_metadata(model, version), indent=2, sort_keys=True).encode()
            info = tarfile.TarInfo("metadata.json")
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
            member, tally, written = _normalize, None, [0]
            if progress is not None:
                tally = Tally(progress, version.size_bytes)

                def member(info: tarfile.TarInfo) -> tarfile.TarInfo:
                    # called as each member is about to be written: the one before it is done
                    tally.add(written[0])
                    written[0] = info.size if info.isfile() else 0
                    return _normalize(info)

            tar.add(source, arcname=artifact_name(version), recursive=True, filter=member)
            if tally is not None:
                tally.finish()
    return output


def _normalize(info: tarfile.TarInfo) -> tarfile.TarInfo:
    # The store's read-only modes and owner mean nothing to whoever extracts the archive.
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = 0o755 if info.isdir() else 0o644
    return info


class Checked:
    """What validation found: the members, the artifact's top-level name, metadata.json's bytes."""

    def __init__(self, members, top, metadata, declared):
        self.members, self.top, self.metadata, self.declared = members, top, metadata, declared


def _shape(info: tarfile.TarInfo) -> tuple:
    return (info.name, info.type, info.size)


def validate_archive(path: Path, max_expansion: float = MAX_EXPANSION, raw=None) -> Checked:
    """Check every member, reading every byte once (in stream mode, so a bomb is stopped as soon
    as it expands past ``max_expansion`` times what it consumed of the archive)."""
    own = raw is None
    if own:
        raw = open_archive(path)
    try:
        return _validate(path, raw, max_expansion)
    finally:
        if own:
            raw.close()


def open_archive(path: str | os.PathLike):
    """The archive the user named, opened for reading (a symlink to it is the user's to give).
    O_NONBLOCK, then a regular-file check: a FIFO or a pipe is refused in one line instead of
    blocking the import, or failing later on its first seek (the archive is read twice)."""
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise SourceError(f"archive {path} does not exist") from None
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            what = "a folder" if stat.S_ISDIR(mode) else \
                "a pipe or FIFO" if stat.S_ISFIFO(mode) else "a device or socket"
            raise SourceError(f"archive {path} must be a regular file, not {what} (save it to a file, "
                              "then import that)")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def _validate(path: Path, raw, max_expansion: float) -> Checked:
    members, metadata, declared = [], None, 0
    try:
        tar = tarfile.open(fileobj=raw, mode="r|*")
    except (tarfile.TarError, OSError, EOFError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SourceError(f"{path} is not a readable tar archive ({first})") from None
    with tar:
        try:
            for info in tar:
                members.append(info)
                if len(members) > MAX_MEMBERS:
                    raise SourceError(f"{path} has more than {MAX_MEMBERS} members")
                _check_member(info)
                if info.issparse():
                    raise SourceError(f"archive member {info.name!r} is a sparse file; sparse members are refused "
                                      "(their declared size need not be in the archive)")
                if not info.isfile():
                    continue
                declared += info.size
                start = raw.tell()
                data = tar.extractfile(info)
                keep = info.name == "metadata.json" and info.size <= MAX_METADATA_BYTES
                chunks, done = [], 0
                while True:
                    chunk = data.read(_CHUNK)
                    if not chunk:
                        break
                    done += len(chunk)
                    if keep:
                        chunks.append(chunk)
                    consumed = raw.tell() - start
                    if done > max_expansion * (consumed + _EXPANSION_SLACK):
                        raise SourceError(
                            f"archive member {info.name!r} declares {info.size} bytes and expanded to over "
                            f"{done} bytes from {consumed} bytes of the archive, more than {max_expansion:g} "
                            "times: implausible for model weights (refused as a decompression bomb; "
                            "--max-expansion raises the limit)")
                if keep:
                    metadata = b"".join(chunks)
        except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
            text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise SourceError(f"{path} is damaged: {text}") from None
    if not members:
        raise SourceError(f"{path} is not a readable tar archive (no members)")
    top = _check_members(path, members)
    return Checked(members, top, metadata, declared)


def _check_member(info: tarfile.TarInfo) -> None:
    name = info.name
    if name.startswith("/") or not name:
        raise SourceError(f"archive member {name!r} has an absolute or empty name")
    for part in name.rstrip("/").split("/"):
        problem = entry_name_problem(part)
        if problem:
            raise SourceError(f"archive member {name!r}: the name part {part!r} {problem}")
    if not (info.isfile() or info.isdir()):
        kind = "a link" if (info.issym() or info.islnk()) else "a device, FIFO or other special file"
        raise SourceError(f"archive member {name!r} is {kind}; only files and folders are accepted")


def _check_members(path: Path, members: list) -> str:
    tops = set()
    seen = set()
    for info in members:
        parts = info.name.rstrip("/").split("/")
        key = "/".join(parts)
        if key in seen:
            raise SourceError(f"archive member {info.name!r} appears twice")
        seen.add(key)
        tops.add(parts[0])
    artifacts = tops - {"metadata.json"}
    if len(artifacts) != 1:
        raise SourceError(f"{path} must hold one model file or folder beside metadata.json, found "
                          f"{', '.join(sorted(artifacts)) or 'none'}")
    return artifacts.pop()


def _archive_metadata(path: Path, checked: Checked) -> dict:
    meta_members = [m for m in checked.members if m.name.rstrip("/") == "metadata.json"]
    if not meta_members:
        return {}
    (info,) = meta_members
    if not info.isfile():
        raise SourceError(f"{path}: metadata.json is a folder, not a file")
    if checked.metadata is None:
        raise SourceError(f"{path}: metadata.json is {info.size} bytes, over the limit of {MAX_METADATA_BYTES}")
    try:
        doc = json.loads(checked.metadata.decode("utf-8"))
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
    except RecursionError:
        raise SourceError(f"{path}: metadata.json is nested too deeply to be metadata") from None
    except (ValueError, UnicodeDecodeError) as exc:
        shown = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SourceError(f"{path}: metadata.json is not a JSON object ({shown})") from None
    from .codec import check_value
    from .names import check_text

    meta = user_metadata(doc)
    try:
        check_text(meta, "metadata.json")
        check_value(meta, f"{path.name}: metadata.json")
    except InvalidInputError as exc:
        raise SourceError(str(exc)) from None
    return meta


def _check_free_space(folder: Path, declared: int) -> None:
    """The extraction and the stored copy each take the declared bytes: refuse before writing."""
    needed = 2 * declared
    try:
        st = os.statvfs(folder)
    except OSError:
        return
    free = st.f_bavail * st.f_frsize
    if needed > free:
        raise StoreError(f"the archive declares {declared} bytes: extracting and storing them needs about {needed} "
                         f"bytes, and {folder} has {free} free")


def import_archive(ctx, path: str | os.PathLike, model: str, *, reason: str | None = None,
                   metadata: dict | None = None, force: bool = False, max_expansion: float = MAX_EXPANSION,
                   progress=None):
    """Validate, extract into store/tmp, deploy from there; the extraction is always removed.
    ``progress(done, total)`` hears the bytes extracted, then those staged, as one whole."""
    from .errors import NotFoundError
    from .atomic import remove_tree
    from .names import check_model_name

    if not (isinstance(max_expansion, (int, float)) and max_expansion >= 1):
        raise InvalidInputError(f"--max-expansion must be a number of at least 1, not {max_expansion!r}")
    try:
        ctx.model(model)
    except NotFoundError:
        check_model_name(model)  # a new model is created by the deploy
    path = Path(path).absolute()
    raw = open_archive(path)
    with raw:
        checked = validate_archive(path, max_expansion, raw=raw)
        meta = _archive_metadata(path, checked)
        meta.update(metadata or {})
        ctx.layout.tmp.mkdir(parents=True, exist_ok=True)
        _check_free_space(ctx.layout.tmp, checked.declared)
        folder, liveness = make_locked_dir(ctx.layout.tmp, "import")  # gc leaves it alone while locked
        workdir = Path(folder)
        try:
            raw.seek(0)
            try:
                # Read again as a stream, extracting member by member (one more decompression,
                # no seeking back). Each member must be the one validated, so the bytes written
                # are bounded by the sizes checked above even if the file changed meanwhile.
                with tarfile.open(fileobj=raw, mode="r|*") as tar:
                    count = 0
                    tally = None if progress is None else Tally(progress, 2 * checked.declared)
                    for info in tar:
                        if count >= len(checked.members) or _shape(info) != _shape(checked.members[count]):
                            raise SourceError(f"{path} changed while it was being imported")
                        count += 1
                        if info.name.rstrip("/") != "metadata.json":
                            # a folder's own mode is not applied: a read-only one would refuse its files
                            tar.extract(info, workdir, set_attrs=not info.isdir(), filter="data")
                        if tally is not None and info.isfile():
                            tally.add(info.size)
                    if count != len(checked.members):
                        raise SourceError(f"{path} changed while it was being imported")
            except (tarfile.TarError, EOFError) as exc:
                raise SourceError(f"{path} is damaged: {exc}") from None
            except OSError as exc:
                raise StoreError(f"cannot extract {path} into {ctx.layout.tmp}: {exc.strerror or exc}") from None
            from .deploy import deploy

            return deploy(ctx, model, workdir / checked.top, reason=reason or f"imported from {path.name}",
                          metadata=meta, force=force, progress=shifted(progress, checked.declared, checked.declared),
                          source_label=f"{path}!/{checked.top}")  # keeps the artifact's own name
        finally:
            remove_tree(workdir)
            os.close(liveness)


def export(ctx, name: str, selector: str | None, output, progress=None):
    """Write one version (default: current) as a tar: the artifact plus metadata.json.
    Returns the model, the version exported and the archive's path."""
    from .errors import CorruptionError
    from .selectors import select

    manifest = ctx.manifest(name)
    version = select(manifest, selector)
    if version.broken:
        raise CorruptionError(f"version {version.version} of '{manifest.model}' is marked broken; not exported")
    with ctx.store_errors():
        return manifest.model, version, export_version(ctx, manifest.model, version, output, progress)
