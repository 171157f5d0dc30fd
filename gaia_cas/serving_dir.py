"""A model-repository view for servers gaia-cas does not write: TF Serving and Triton.

``gaia-cas model set ssd --serving-dir serving/ssd`` keeps, for the current version and every
channel's version, one numbered folder in the layout both servers poll::

    serving/ssd/                    TF Serving --model_base_path, or a Triton model folder
        config.pbtxt                (yours: anything not made only of digits is left alone)
        1003000/                    version 1.3.0: the version's files (saved_model.pb, model.onnx, …)
        2000000/                    version 2.0.0, e.g. the staging channel's

The number of version X.Y.Z is ``X*1000000 + Y*1000 + Z`` (1.3.0 → 1003000, 1.10.2 → 1010002),
so numbers sort as the versions do; a version whose minor or patch is above 999 has none and is
refused. TF Serving's default policy serves the highest number: with channels in the view, tell
it which one (``model_version_policy``/labels; Triton: ``version_policy``).

Both servers poll the folder and load a version folder as soon as they see its name, so a
version folder must never be seen half made (tensorflow/serving#1086, #631; Triton's POLL mode,
triton-inference-server/server#5711). Each one is built aside, under a dot-name in the same
folder (``.1003000.tmp-…``, a name neither server takes for a version), from hard links to the
store's objects (copies where links are impossible), fsynced, and renamed in: a folder with a
number is complete. A folder leaves the same way, renamed to a dot-name first and deleted there.
A crash leaves at most a dot-name, removed by the next update.

The view is derived data, regenerated from the manifest where links are (after every deploy,
rollback, promote, pull, ``sync-links``), under the model's lock. Like a link's folders, the
view's folder is reached from the root one component at a time with ``O_NOFOLLOW``, and every
step after that is relative to the folder so held: a folder on the way swapped for a symlink
makes gaia-cas refuse or keep writing into the folder it holds, never anywhere else. A symlink
or file planted under a number is moved aside and deleted itself, never followed.
"""

from __future__ import annotations

import errno
import os
import re
import stat

from .atomic import TMP_MARK, tmp_name
from .errors import InvalidInputError
from .layout import normalize_link
from .trees import DIR

_DIR_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC
_COPY_INSTEAD = (errno.EXDEV, errno.EMLINK, errno.EPERM, errno.ENOTSUP)
_NUMBER = re.compile(r"[1-9]\d*|0")
_LEFTOVER = re.compile(r"\.(?:[1-9]\d*|0)(?:\.old)?" + re.escape(TMP_MARK) + r"[0-9a-f]+")
LIMIT = 999  # the largest minor or patch a number can hold

# Called at every step of an update (``step_hook(step, name)``): tests interleave a reader, or
# a kill, there. Steps: "begin", "linked" (one file into a folder being built), "built", "published",
# "retired", "done".
step_hook = None


def version_number(version: str) -> int:
    """The folder number of version X.Y.Z: X*1000000 + Y*1000 + Z."""
    from .versions import parse_version

    major, minor, patch = parse_version(version)
    if minor > LIMIT or patch > LIMIT:
        raise InvalidInputError(f"version {version} has no serving-dir number: minor and patch must be at most "
                                f"{LIMIT} (the number is major*1000000 + minor*1000 + patch)")
    return major * 1_000_000 + minor * 1000 + patch


def wanted(manifest) -> dict[int, object]:
    """Number -> version of every folder the view holds: the current and each channel's version
    (a version marked broken is never served, so it has none)."""
    result = {}
    for number in sorted(set(manifest.channel_versions().values())):
        version = manifest.find(number)
        if version is not None and not version.broken:
            result[version_number(version.version)] = version
    return result


def normalize(ctx, model: str, value: str) -> str | None:
    """The setting as stored: relative to the root, outside store/, manifests/ and logs/, and
    no other model's view (nor inside one, nor holding one). ``''`` means none."""
    if value == "":
        return None
    try:
        relative = normalize_link(value, ctx.root)
    except InvalidInputError as exc:
        raise InvalidInputError(f"--serving-dir {value!r}: {str(exc).split(': ', 1)[-1]}") from None
    for other in ctx.models():
        if other == model:
            continue
        theirs = ctx.manifests.read(other).config.serving_dir
        if theirs and (theirs == relative or relative.startswith(theirs + "/") or theirs.startswith(relative + "/")):
            raise InvalidInputError(f"--serving-dir {relative!r} overlaps model '{other}''s serving dir {theirs!r}")
    return relative


def check_location(ctx, relative: str) -> None:
    """Before the setting is committed: no folder on the way to the view is a symlink."""
    fd = open_dir(ctx.layout, relative, create=False)
    if fd is not None:
        os.close(fd)


def open_dir(layout, relative: str, *, create: bool) -> int | None:
    """The view's folder, opened from the root without following any symlink (None if missing
    and not ``create``). The caller closes the descriptor."""
    fd = os.open(layout.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    parts = relative.split("/")
    try:
        for i, part in enumerate(parts):
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    os.close(fd)
                    return None
                try:
                    os.mkdir(part, 0o755, dir_fd=fd)
                    os.fsync(fd)
                except FileExistsError:
                    pass
                child = None
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise InvalidInputError(
                        f"serving dir {relative!r} goes through {'/'.join(parts[:i + 1])}, which is a symlink or not "
                        "a folder; gaia-cas follows no symlink on the way to it: give the real path") from None
                raise
            if child is None:
                try:
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT):
                        raise InvalidInputError(f"serving dir {relative!r}: {'/'.join(parts[:i + 1])} was replaced "
                                                "while gaia-cas made it; something else is changing it") from None
                    raise
            os.close(fd)
            fd = child
        return fd
    except BaseException:
        os.close(fd)
        raise


def sync(ctx, manifest) -> list[int]:
    """Make the model's view hold exactly the folders :func:`wanted` names; returns the numbers
    published by this call. Runs under the model's lock (from the link regeneration)."""
    relative = manifest.config.serving_dir
    if not relative:
        return []
    folders = wanted(manifest)
    fd = open_dir(ctx.layout, relative, create=True)
    try:
        _step("begin", relative)
        _remove_leftovers(fd)
        numbered = [name for name in sorted(os.listdir(fd)) if _NUMBER.fullmatch(name)]
        for name in numbered:
            if not _exists(fd, name):
                _retire(fd, name)  # a symlink or file planted there: moved aside, never followed
        published = []
        for number, version in sorted(folders.items()):
            if not _exists(fd, str(number)):
                _publish(ctx, fd, number, version)
                published.append(number)
        # Only then the versions no longer served leave: a server polling the folder always has
        # a version to serve, and switches from the old one to the new one.
        for name in numbered:
            if int(name) not in folders:
                _retire(fd, name)
        _step("done", relative)
        return published
    finally:
        os.close(fd)


def lagging(ctx, manifest) -> bool:
    """Whether the view differs from what :func:`sync` would make it (after a crash, a hand edit)."""
    relative = manifest.config.serving_dir
    if not relative:
        return False
    try:
        numbers = set(wanted(manifest))
        fd = open_dir(ctx.layout, relative, create=False)
    except (InvalidInputError, OSError):
        return True  # sync will say why
    if fd is None:
        return True
    try:
        names = os.listdir(fd)
        present = {int(n) for n in names if _NUMBER.fullmatch(n) and _exists(fd, n)}
        strays = [n for n in names if _LEFTOVER.fullmatch(n) or (_NUMBER.fullmatch(n) and not _exists(fd, n))]
        return present != numbers or bool(strays)
    finally:
        os.close(fd)


def clear(ctx, relative: str | None) -> None:
    """Remove every numbered folder (and leftover) from a view no longer configured; the folder
    itself and anything else in it stay."""
    if not relative:
        return
    try:
        fd = open_dir(ctx.layout, relative, create=False)
    except InvalidInputError:
        return  # reachable only through a symlink: nothing gaia-cas could have written
    if fd is None:
        return
    try:
        _remove_leftovers(fd)
        for name in sorted(os.listdir(fd)):
            if _NUMBER.fullmatch(name):
                _retire(fd, name)
    finally:
        os.close(fd)


def _step(step: str, name) -> None:
    if step_hook is not None:
        step_hook(step, name)


def _exists(fd: int, name: str) -> bool:
    try:
        return stat.S_ISDIR(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode)
    except FileNotFoundError:
        return False


def _publish(ctx, fd: int, number: int, version) -> None:
    building = tmp_name(str(number))
    os.mkdir(building, 0o755, dir_fd=fd)
    try:
        top = os.open(building, _DIR_FLAGS, dir_fd=fd)
        try:
            _fill(ctx, top, version.tree)
        finally:
            os.close(top)
        _step("built", building)
        os.rename(building, str(number), src_dir_fd=fd, dst_dir_fd=fd)
    except BaseException:
        _remove(fd, building)
        raise
    os.fsync(fd)
    _step("published", number)


def _fill(ctx, top: int, tree_oid: str) -> None:
    """The tree's files under the held folder ``top``: hard links to the store's objects."""
    opened = {"": top}
    try:
        for path, entry in ctx.trees.walk(tree_oid):  # parents first
            parent, _, name = path.rpartition("/")
            at = opened[parent]
            if entry.kind == DIR:
                os.mkdir(name, 0o755, dir_fd=at)
                opened[path] = os.open(name, _DIR_FLAGS, dir_fd=at)
                continue
            source = ctx.objects.path_str(entry.oid)
            try:
                os.link(source, name, dst_dir_fd=at, follow_symlinks=False)
            except OSError as exc:
                if exc.errno not in _COPY_INSTEAD:
                    raise
                _copy(source, name, at)
            _step("linked", path)
        for path in sorted(opened, key=len, reverse=True):  # durable before the rename shows it
            os.fsync(opened[path])
    finally:
        for path, folder in opened.items():
            if path:
                os.close(folder)


def _copy(source: str, name: str, at: int) -> None:
    import shutil

    with open(source, "rb") as src:
        out = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o444, dir_fd=at)
        with os.fdopen(out, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
            dst.flush()
            os.fsync(dst.fileno())


def _retire(fd: int, name: str) -> None:
    """Take a numbered entry out of the view in one rename, then delete it under its dot-name."""
    doomed = tmp_name(f"{name}.old")
    try:
        os.rename(name, doomed, src_dir_fd=fd, dst_dir_fd=fd)
    except FileNotFoundError:
        return
    os.fsync(fd)
    _step("retired", name)
    _remove(fd, doomed)


def _remove_leftovers(fd: int) -> None:
    for name in os.listdir(fd):
        if _LEFTOVER.fullmatch(name):
            _remove(fd, name)


def _remove(fd: int, name: str) -> None:
    """Delete an entry of the held folder, never following a symlink (``shutil.rmtree`` with a
    descriptor walks by descriptors and unlinks a symlink rather than entering it)."""
    import shutil

    try:
        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=fd)
    else:
        os.unlink(name, dir_fd=fd)
