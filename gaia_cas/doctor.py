"""``gaia-cas doctor``: check that the machine under a root keeps the store's promises.

Each check says what it found and, when something is wrong or costly, what to do:

- **hard links** work from store/tmp into store/objects and from store/objects into
  store/trees (a deploy stages in tmp, installs by rename, checks versions out as links);
- **link folders** (each model's ``current`` and channel links) are on the store's filesystem;
- **free space** holds at least the largest version (a new one stages that much);
- **locks**: ``flock`` excludes a second holder, on a filesystem that honours it (not NFS,
  Lustre, CIFS: the type comes from /proc/self/mountinfo);
- **reflinks**: whether the filesystem can clone a file without copying (information only);
- **clock**: no recorded change is in the future, and the store's file times agree with ours;
- **staging**: no staging folder in store/tmp left by an interrupted deploy past gc's grace;
- **man page**: ``man gaia-cas`` finds the page.

Probes live in a locked folder of store/tmp (gc leaves it alone) and are removed at once;
nothing else is written.
"""

from __future__ import annotations

import errno
import os
import sys
import time
from collections import namedtuple
from datetime import datetime, timezone
from pathlib import Path

from . import defaults
from .atomic import TMP_MARK, tmp_name
from .errors import GaiaCasError
from .locking import make_locked_dir, try_flock_dir

# Filesystems on which flock is not honoured, or not across machines.
UNLOCKED_FILESYSTEMS = ("nfs", "nfs4", "lustre", "cifs", "smb3", "smbfs", "fuse.sshfs", "9p", "afs")
FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)
CLOCK_SLACK = 60  # seconds: more than NTP ever leaves between machines


class Check(namedtuple("Check", "name ok detail advice")):
    __slots__ = ()

    def to_json(self) -> dict:
        return {"name": self.name, "ok": self.ok, "detail": self.detail, "advice": self.advice or None}


def examine(ctx, *, now: float | None = None) -> list[Check]:
    """Every check, in a fixed order; a check that cannot run reports why instead of raising."""
    now = time.time() if now is None else now
    layout = ctx.layout
    layout.tmp.mkdir(parents=True, exist_ok=True)
    checks = []
    folder, fd = make_locked_dir(layout.tmp, "doctor")
    try:
        probe = Path(folder) / "probe"
        probe.write_bytes(b"gaia-cas doctor\n")
        for name, check in (("hard links", lambda: _hard_links(layout, probe)),
                            ("link folders", lambda: _link_folders(ctx)),
                            ("free space", lambda: _free_space(ctx)),
                            ("locks", lambda: _locks(layout, probe)),
                            ("reflinks", lambda: _reflinks(probe)),
                            ("clock", lambda: _clock(ctx, probe, now)),
                            ("staging", lambda: _staging(layout, Path(folder), now)),
                            ("man page", _man_page)):
            checks.append(_guarded(name, check))
    finally:
        from .atomic import remove_tree

        remove_tree(Path(folder))
        os.close(fd)
    return checks


def _guarded(name: str, check) -> Check:
    try:
        return check()
    except (GaiaCasError, OSError) as exc:  # e.g. an unreadable manifest: the other checks still run
        return Check(name, False, f"could not be checked: {exc}", "fix what the detail names, then run doctor again")


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


# -- the checks --------------------------------------------------------------------------------

def _hard_links(layout, probe: Path) -> Check:
    name = "hard links"
    devices = {folder: os.stat(folder).st_dev for folder in (layout.tmp, layout.objects, layout.trees)}
    if len(set(devices.values())) > 1:
        where = ", ".join(f"{f.relative_to(layout.root)} on {filesystem(f)[0]}" for f in devices)
        return Check(name, False, f"store/tmp, store/objects and store/trees are on different filesystems ({where})",
                     "put the whole store on one filesystem (move the root, do not mount parts of it elsewhere): "
                     "deploys install by rename and check versions out as hard links")
    made = []
    try:
        for source, folder in ((probe, layout.objects), (None, layout.trees)):
            target = folder / tmp_name("doctor")
            os.link(made[-1] if source is None else source, target)
            made.append(target)
    except OSError as exc:
        why = {errno.EXDEV: "cross the filesystem", errno.EPERM: "are not permitted",
               errno.EMLINK: "reached the filesystem's limit"}.get(exc.errno, exc.strerror or str(exc))
        return Check(name, False, f"hard links from store/tmp into store/objects and store/trees fail: they {why}",
                     "put the root on a local filesystem that allows hard links (ext4, xfs, btrfs); with "
                     "fs.protected_hardlinks=1 the store's files must belong to the user running gaia-cas")
    finally:
        for path in made:
            os.unlink(path)
    return Check(name, True, "store/tmp -> store/objects -> store/trees: hard links work", "")


def _link_folders(ctx) -> Check:
    name = "link folders"
    store_dev = os.stat(ctx.layout.store).st_dev
    away = []
    for model in ctx.models():
        manifest = ctx.manifests.read(model)
        if manifest is None:
            continue
        for channel, (link, _) in sorted(ctx.link_targets(manifest).items()):
            folder = _existing_parent(ctx.layout.root / link)
            if os.stat(folder).st_dev != store_dev:
                away.append(f"{model} {channel} ({link}, on {filesystem(folder)[0]})")
    if away:
        return Check(name, False, "links on another filesystem than the store: " + "; ".join(away),
                     "keep each link on the store's filesystem ('gaia-cas model set MODEL --link PATH'): a link "
                     "on another one can be mounted without the store and then names nothing, and each swap "
                     "has to be made durable on two filesystems")
    return Check(name, True, "every model's links are on the store's filesystem", "")


def _existing_parent(path: Path) -> Path:
    path = path.parent
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _free_space(ctx) -> Check:
    name = "free space"
    st = os.statvfs(ctx.layout.store)
    free = st.f_bavail * st.f_frsize
    largest, which = 0, None
    for model in ctx.models():
        manifest = ctx.manifests.read(model)
        for version in manifest.versions if manifest is not None else ():
            if version.size_bytes > largest:
                largest, which = version.size_bytes, f"{model} {version.version}"
    if which is None:
        return Check(name, True, f"{_size(free)} free; no version stored yet", "")
    detail = f"{_size(free)} free; the largest version ({which}) is {_size(largest)}"
    if free < largest:
        return Check(name, False, detail, "free space on the store's filesystem: a new version of that model "
                     "stages up to its full size in store/tmp ('gaia-cas cleanup all' then 'gaia-cas gc' "
                     "frees old versions)")
    return Check(name, True, detail, "")


def filesystem(path) -> tuple[str, str]:
    """(filesystem type, mount point) of ``path``, from /proc/self/mountinfo: the mount whose
    device is the path's, else the longest mount point above it."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return "unknown", "/"
    st = os.stat(path)
    device = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    real = os.path.realpath(path)
    by_device, by_prefix = None, None
    for line in lines:
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or not tail:
            continue
        point = fields[4].replace("\\040", " ")
        if fields[2] == device:
            by_device = (tail[0], point)
        if (real == point or real.startswith(point.rstrip("/") + "/")) and (
                by_prefix is None or len(point) >= len(by_prefix[1])):
            by_prefix = (tail[0], point)
    return by_device or by_prefix or ("unknown", "/")


def _locks(layout, probe: Path) -> Check:
    import fcntl

    name = "locks"
    fstype, point = filesystem(layout.store)
    if fstype in UNLOCKED_FILESYSTEMS or fstype.startswith("nfs"):
        return Check(name, False, f"the store is on {fstype} ({point}), where flock is not honoured across machines",
                     "put the root on a local filesystem: on a shared one two hosts could both commit a manifest, "
                     "and gc could delete what a deploy on another host is about to commit")
    first = os.open(probe, os.O_RDONLY)
    second = os.open(probe, os.O_RDONLY)
    try:
        fcntl.flock(first, fcntl.LOCK_EX | fcntl.LOCK_NB)
        try:
            fcntl.flock(second, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return Check(name, True, f"flock excludes a second holder ({fstype})", "")
        return Check(name, False, f"flock on {fstype} let two holders take the same lock",
                     "put the root on a local filesystem (ext4, xfs, btrfs): gaia-cas's locks rely on flock")
    finally:
        os.close(second)
        os.close(first)


def _reflinks(probe: Path) -> Check:
    import fcntl

    clone = probe.with_name("clone")
    src = os.open(probe, os.O_RDONLY)
    dst = os.open(clone, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        fcntl.ioctl(dst, FICLONE, src)
        detail = "the filesystem clones files without copying (reflinks)"
    except OSError:
        detail = "no reflinks here (expected on ext4): nothing depends on them, hard links deduplicate"
    finally:
        os.close(dst)
        os.close(src)
        os.unlink(clone)
    return Check("reflinks", True, detail, "")


def _clock(ctx, probe: Path, now: float) -> Check:
    name = "clock"
    skew = os.stat(probe).st_mtime - now
    if abs(skew) > CLOCK_SLACK:
        return Check(name, False, f"the store's file times are {abs(skew):.0f} s {'ahead of' if skew > 0 else 'behind'} "
                     "this machine's clock (a file server's clock?)",
                     "synchronise both clocks (NTP): gc's grace period and cleanup's ages are read from file times")
    newest, where = None, None
    for model in ctx.models():
        manifest = ctx.manifests.read(model)
        for event in manifest.history if manifest is not None else ():
            try:
                at = datetime.fromisoformat(event.at)
            except (TypeError, ValueError):
                continue
            if at.tzinfo is None:
                at = at.replace(tzinfo=timezone.utc)
            if newest is None or at > newest:
                newest, where = at, f"{model} {event.action} by {event.user}@{event.host}"
    if newest is not None and newest.timestamp() > now + CLOCK_SLACK:
        ahead = newest.timestamp() - now
        return Check(name, False, f"the newest recorded change ({where}, at {newest.isoformat()}) is "
                     f"{ahead:.0f} s in the future of this clock",
                     "set this machine's clock right (NTP), or the host that recorded it: history, cleanup "
                     "ages and 'previous' follow the recorded times")
    return Check(name, True, "no recorded change is in the future; the store's file times agree", "")


def _staging(layout, own: Path, now: float) -> Check:
    from .retention import parse_age

    name = "staging"
    cutoff = now - parse_age(defaults.GRACE).total_seconds()
    stale = []
    with os.scandir(layout.tmp) as entries:
        for entry in entries:
            if TMP_MARK not in entry.name or entry.path == str(own):
                continue  # not a name gaia-cas makes (gc leaves it too), or this check's own folder
            st = entry.stat(follow_symlinks=False)
            if st.st_mtime > cutoff:
                continue
            if entry.is_dir(follow_symlinks=False):
                fd = try_flock_dir(Path(entry.path))
                if fd is None:
                    continue  # a live deploy holds it
                os.close(fd)
            stale.append(entry.name)
    if stale:
        return Check(name, False, f"{len(stale)} staging entr{'y' if len(stale) == 1 else 'ies'} in store/tmp left by "
                     f"interrupted work, older than {defaults.GRACE}: {', '.join(sorted(stale)[:3])}"
                     + (" ..." if len(stale) > 3 else ""),
                     "run 'gaia-cas gc' (it removes them; no committed version needs them)")
    return Check(name, True, "no staging left behind in store/tmp", "")


def _man_page() -> Check:
    name = "man page"
    for folder in _man_path():
        for page in ("gaia-cas.1", "gaia-cas.1.gz"):
            if os.path.isfile(os.path.join(folder, "man1", page)):
                return Check(name, True, f"man gaia-cas: {os.path.join(folder, 'man1', page)}", "")
    return Check(name, False, "'man gaia-cas' finds no page",
                 "install with \"python3 -m pip install .\" (or, for an editable install, see README: "
                 "'Man pages'); $MANPATH must include the prefix's share/man")


def _man_path() -> list[str]:
    """The folders man searches: $MANPATH (an empty part means man's defaults), else `manpath`."""
    configured = os.environ.get("MANPATH")
    defaults_ = [os.path.join(sys.prefix, "share", "man"), "/usr/local/share/man", "/usr/share/man"]
    if configured:
        parts = configured.split(":")
        return [p for p in parts if p] + (defaults_ if "" in parts else [])
    import shutil
    import subprocess

    if shutil.which("manpath"):
        try:
            out = subprocess.run(["manpath", "-q"], capture_output=True, text=True, timeout=5,
                                 stdin=subprocess.DEVNULL).stdout.strip()
            return [p for p in out.split(":") if p] + defaults_
        except (OSError, subprocess.SubprocessError):
            pass
    return defaults_
