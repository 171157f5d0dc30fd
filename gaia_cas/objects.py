"""The content-addressed object store: immutable files named by their xxh3-128 oid.

Objects are written once, under ``store/objects/<oid[:2]>/<oid[2:]>``, and made read-only.
New content always arrives through a :class:`Staging` area in ``store/tmp``: files are streamed
there (read, hashed and written in one pass, through one reused buffer), and only once the
whole artifact has been read are the staged files linked to their final names. A failure while
reading the source therefore discards the staging folder and leaves the store as it was.
"""

from __future__ import annotations

import errno
import itertools
import os
import stat
from pathlib import Path

from .atomic import fsync_dir, fsync_file, start_writeback, sync_filesystem, write_all
from .errors import CorruptionError, SourceError, StoreError
from .hashing import hash_bytes, new_hasher  # noqa: F401  (hash_bytes: part of this module's API)
from .names import check_oid
from .storage import BaseObjectStore
from .layout import Layout
from .locking import make_locked_dir

CHUNK = 1 << 20  # 1 MiB: large enough for ~6 GiB/s hashing, small enough to bound memory
READ_ONLY = 0o444
WRITEBACK_STEP = 8 << 20  # start the disk on every 8 MiB a large file stages, not only at its end


class Halted(Exception):
    """A stream stopped because its staging area was halted; never seen by users (the error
    or interrupt that halted it is what propagates)."""


def read_source(src, buffer: bytearray, label) -> int:
    """Read from the artifact being deployed; its failures are the source's, not the store's."""
    try:
        return src.readinto(buffer)
    except OSError as exc:
        raise SourceError(f"cannot read {label}: {exc.strerror or exc}") from None


def hash_stream(src, buffer: bytearray | None = None) -> tuple[str, int]:
    """Hash an open binary file without storing it (dry runs, verification)."""
    buffer = buffer or bytearray(CHUNK)
    view = memoryview(buffer)
    hasher = new_hasher()
    size = 0
    while n := src.readinto(buffer):
        hasher.update(view[:n])
        size += n
    return hasher.hexdigest(), size


def hash_file(path: str | os.PathLike, buffer: bytearray | None = None) -> tuple[str, int]:
    with open(path, "rb", buffering=0) as src:
        return hash_stream(src, buffer)


def open_object(path: str, oid: str) -> int:
    """Open the object file at ``path`` (O_NOFOLLOW | O_NONBLOCK) and check it is a regular file;
    raises CorruptionError for a missing object, a symlink or a special file in its place."""
    try:
        # READ_ONLY: ignored without O_CREAT, but pyfakefs applies a mode given (or its default)
        # to the file it opens; every object is READ_ONLY already.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, READ_ONLY)
    except FileNotFoundError:
        raise CorruptionError(f"object {oid} is missing from the store") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise CorruptionError(f"object {oid} is a symlink (never followed): the store is damaged there") from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise CorruptionError(f"object {oid} is not a regular file: the store is damaged there")
        # (O_NONBLOCK stays: it changes nothing for a regular file)
    except BaseException:
        os.close(fd)
        raise
    return fd


def object_stream(path: str, oid: str):
    """The object file at ``path`` as an unbuffered binary stream, opened by :func:`open_object`."""
    return os.fdopen(open_object(path, oid), "rb", buffering=0)


class DiskObjectStore(BaseObjectStore):
    """Objects as read-only files under ``store/objects/<oid[:2]>/<oid[2:]>`` (design.md, Layout)."""

    def __init__(self, layout: Layout):
        self.layout = layout
        self._root = str(layout.objects)

    def path(self, oid: str) -> Path:
        return self.layout.object_path(oid)

    def path_str(self, oid: str) -> str:
        """The object's path as a string: the hot loops of a deploy build thousands of them."""
        check_oid(oid)
        return f"{self._root}/{oid[:2]}/{oid[2:]}"

    def exists(self, oid: str) -> bool:
        """Whether the object is stored as a regular file (a symlink in its place is not)."""
        try:
            return stat.S_ISREG(os.lstat(self.path_str(oid)).st_mode)
        except FileNotFoundError:
            return False

    def read(self, oid: str, limit: int) -> bytes:
        """Read a small object (a tree) whole, refusing one larger than ``limit``."""
        with self.open(oid) as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise CorruptionError(f"object {oid} is larger than {limit} bytes; it cannot be a tree")
        return data

    def staging(self) -> "Staging":
        return Staging(self)

    def open(self, oid: str):
        """The object's bytes as a stream, never through a symlink planted in its place, never
        blocking on a FIFO: anything but a regular file there is corruption (reported, not followed)."""
        return object_stream(self.path_str(oid), oid)

    def oids(self):
        """Every object's oid, from a scan of the fan-out folders (names that are not oids skipped)."""
        return fanout_oids(self._root)

    def delete(self, oid: str) -> bool:
        try:
            os.unlink(self.path_str(oid))
            return True
        except FileNotFoundError:
            return False

    def quarantine(self, oid: str) -> str | None:
        """Move the object to ``store/quarantine/<oid>-<time>``: out of reach, kept for
        inspection. Returns where it went (relative to the root), None if it was not there."""
        import time

        from .clock import DEPLOYMENT_ID_FORMAT

        folder = self.layout.store / "quarantine"
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{oid}-{time.strftime(DEPLOYMENT_ID_FORMAT)}"
        try:
            os.rename(self.path_str(oid), target)
        except FileNotFoundError:
            return None
        return str(target.relative_to(self.layout.root))

    def refresh(self, oid: str) -> None:
        _refresh(self.path_str(oid))


def fanout_oids(root: str):
    """The oids named by ``root/<oid[:2]>/<oid[2:]>`` files (objects, recipes); other names skipped."""
    from .names import is_oid

    try:
        shards = os.listdir(root)
    except FileNotFoundError:
        return
    for shard in shards:
        if len(shard) != 2:
            continue
        try:
            names = os.listdir(f"{root}/{shard}")
        except (FileNotFoundError, NotADirectoryError):
            continue
        for name in names:
            if is_oid(shard + name):
                yield shard + name


ObjectStore = DiskObjectStore  # the name the rest of the package and its callers know


class Staging:
    """Collects new objects in a private folder of ``store/tmp``, then installs them together.

    Usage::

        with store.staging() as stage:
            oid, size = stage.add_stream(open(path, 'rb'))
            ...
            stage.install()      # the only step that touches store/objects

    Leaving the block without :meth:`install` removes everything staged.
    """

    BATCH_SYNC = 16  # from this many new files on, one syncfs beats one fsync each

    def __init__(self, store: ObjectStore):
        self.store = store
        self.layout = store.layout
        self.dir: str | None = None
        self._staged: dict[str, str] = {}
        self._buffer = bytearray(CHUNK)
        self._names = itertools.count(1)  # next() on it is atomic: staging may run on two threads
        self.halted = False  # set by halt(): streams still running stop at their next chunk
        self._liveness: int | None = None
        self.new_bytes = 0  # bytes of objects the store did not have, counted by install()
        self._reused: dict[str, tuple | bytes] = {}  # oid -> (source path, opener, stat), or a tree's bytes
        # oid -> (dev, ino) of the source files it was read from: an object found in the store
        # that *is* one of those inodes (left by an interrupted --consume) is not trusted.
        self._origins: dict[str, set] = {}
        # oid -> (source path, staged path, the file's stat), for oids staged by hard link (--consume)
        self._linked: dict[str, tuple[str, str, os.stat_result]] = {}
        self._placed: list[tuple[str, os.stat_result]] = []  # objects install() added, as they were then
        self._made: list[str] = []  # fan-out folders install() created
        self._tree: tuple[str, os.stat_result] | None = None  # a tree materialized from this batch
        self._tree_in_use = None
        self._kept = False  # the manifest naming this batch committed: nothing is taken back then
        self.replaced: dict[tuple, str] = {}  # (dev, ino) of an untrusted object -> its path now

    def __enter__(self) -> "Staging":
        self.layout.tmp.mkdir(parents=True, exist_ok=True)
        # Locked while this process lives: gc never removes a staging folder someone still holds,
        # however long a big deploy takes.
        self.dir, self._liveness = make_locked_dir(self.layout.tmp, "stage")
        return self

    def __exit__(self, kind, exc, tb) -> None:
        try:
            if kind is not None and not self._kept:
                self._take_back()
        finally:
            self.discard()

    def keep(self) -> None:
        """The commit that names this batch's objects happened: never take them back."""
        self._kept = True

    def materialized(self, tree_dir: str | os.PathLike, made: os.stat_result | None, in_use=None) -> None:
        """Record the tree this batch materialized: ``made`` is its stat just before it was
        published (:func:`gaia_cas.materialize.build`), None if it was there already.
        ``in_use()`` says whether a committed manifest names the tree (then it is never taken back)."""
        if made is not None:
            self._tree = (os.fspath(tree_dir), made)
            self._tree_in_use = in_use

    def _take_back(self) -> None:
        """The deploy or import failed after its install and before the commit naming the batch
        (a lock that timed out, a signal, a refusal under the lock): take out what it added, so
        the store is as it was -- first the tree it materialized, then the objects and fan-out
        folders (:meth:`_withdraw`). Whatever another writer took up meanwhile stays: a tree
        whose mtime changed since it was made (materialize() touches it) or that a committed
        manifest names, an object whose mtime or link count changed.

        With --consume, the objects are the source's own inodes: the install made them
        read-only, so each source file gets its mode back; one whose object stays (taken up by
        another writer) gets an inode of its own instead, so that rewriting it never rewrites
        the object."""
        if self._tree is not None:
            self._take_back_tree(*self._tree)
            self._tree = None
        self._withdraw(self._placed, self._made)
        self._placed, self._made = [], []
        self._give_back_sources()

    def _take_back_tree(self, path: str, was: os.stat_result) -> None:
        def untouched(st: os.stat_result) -> bool:
            return (st.st_ino, st.st_mtime_ns) == (was.st_ino, was.st_mtime_ns)

        def in_use() -> bool:
            try:
                return bool(self._tree_in_use is not None and self._tree_in_use())
            except Exception:
                return True  # cannot tell: keep it

        try:
            if not untouched(os.lstat(path)) or in_use():
                return
            os.chmod(path, 0o755)  # moving a folder to another parent needs write access to it
            aside = self._new_name()
            os.rename(path, aside)
            if not untouched(os.lstat(aside)) or in_use():
                os.rename(aside, path)  # taken up in between: keep it published
                os.chmod(path, 0o555)
                return
            from .atomic import remove_tree

            remove_tree(aside)
            fsync_dir(os.path.dirname(path))
        except OSError:
            pass  # the tree stays, and with it the objects it links (kept by _withdraw's checks)

    def _give_back_sources(self) -> None:
        for oid, (source, staged, st) in self._linked.items():
            try:
                mode = stat.S_IMODE(st.st_mode)
                try:
                    kept = os.lstat(self.store.path_str(oid))
                except FileNotFoundError:
                    kept = None
                if kept is not None and (kept.st_dev, kept.st_ino) == (st.st_dev, st.st_ino):
                    mine = os.lstat(source)
                    if (mine.st_dev, mine.st_ino) == (st.st_dev, st.st_ino):
                        _copy_in_place(source, mode)
                    continue
                # The inode is the source's alone again: its mode back, through the staged name
                # (this batch's own link to it), never through the source's path.
                fd = os.open(staged, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
                try:
                    now = os.fstat(fd)
                    if (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino) and stat.S_IMODE(now.st_mode) != mode:
                        os.fchmod(fd, mode)
                finally:
                    os.close(fd)
            except OSError:
                continue

    def _new_name(self) -> str:
        return f"{self.dir}/{next(self._names)}"

    def _new_tmp(self) -> tuple[str, int]:
        path = self._new_name()
        return path, os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)

    def add_link(self, source: str, scanned: os.stat_result, src_dir_fd: int | None = None,
                 src_name: str | None = None) -> tuple[str, int, os.stat_result] | None:
        """Take ``source`` into staging by hard link instead of a copy (``deploy --consume``).

        The staged name and the source then share one inode, which is hashed through the staged
        name. Returns (oid, size, the file's stat after hashing), or None when the file cannot
        be taken without a copy: another filesystem, another owner, or a file with other names
        already (a second name could rewrite the object later). The caller copies those.
        With ``src_dir_fd``, the file is ``src_name`` in that (checked) folder, not a path.
        """
        # Root too: a file another user owns stays theirs to chmod and rewrite, object or not.
        if scanned.st_nlink != 1 or scanned.st_uid != os.geteuid():
            return None
        path = self._new_name()
        try:
            if src_dir_fd is None:  # link() does not follow a symlink swapped in since the scan
                os.link(source, path, follow_symlinks=False)
            else:
                os.link(src_name, path, src_dir_fd=src_dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            raise SourceError(f"{source} vanished while it was being deployed") from None
        except OSError as exc:
            if exc.errno in _NO_HARD_LINKS:
                return None
            raise SourceError(f"cannot take {source} into the store: {exc.strerror}") from None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            os.unlink(path)
            raise SourceError(f"{source} changed while it was being deployed (no longer a regular file)") from None
        try:
            before = os.fstat(fd)
            if (not stat.S_ISREG(before.st_mode) or (before.st_dev, before.st_ino) != (scanned.st_dev, scanned.st_ino)
                    or before.st_nlink != 2):
                os.unlink(path)
                raise SourceError(f"{source} changed while it was being deployed (replaced by another file)")
            with os.fdopen(os.dup(fd), "rb", buffering=0) as src:
                oid, size = hash_stream(src, self._buffer)
            after = os.fstat(fd)
        finally:
            os.close(fd)
        if (size, after.st_size, after.st_mtime_ns, after.st_ctime_ns) != (before.st_size, before.st_size,
                                                                          before.st_mtime_ns, before.st_ctime_ns):
            os.unlink(path)
            raise SourceError(f"{source} changed while it was being deployed (written to while it was hashed)")
        self._keep(oid, path)
        if self._staged.get(oid) == path:
            self._linked[oid] = (source, path, before)
        self.origin(oid, after)
        return oid, size, after

    def origin(self, oid: str, st) -> None:
        """``oid`` was read from the source file of stat ``st``."""
        self._origins.setdefault(oid, set()).add((st.st_dev, st.st_ino))

    def add_stream(self, src, label: str = "the source", buffer: bytearray | None = None) -> tuple[str, int]:
        """Copy an open binary file into staging while hashing it: one read, one write.

        Safe to call from several threads at once, each with its own ``buffer``.
        """
        buffer = self._buffer if buffer is None else buffer
        view = memoryview(buffer)
        hasher = new_hasher()
        size = 0
        path, fd = self._new_tmp()
        flushed = 0
        try:
            while n := read_source(src, buffer, label):
                if self.halted:
                    raise Halted(label)
                hasher.update(view[:n])
                write_all(fd, view[:n])
                size += n
                if size - flushed >= WRITEBACK_STEP:
                    start_writeback(fd, flushed, size - flushed)
                    flushed = size
            if size > flushed:
                start_writeback(fd, flushed, size - flushed)
            oid = hasher.hexdigest()
        finally:
            os.close(fd)
        self._keep(oid, path)
        return oid, size

    def halt(self) -> None:
        """Make streams running on other threads stop within one chunk (the deploy failed or
        was interrupted): a 20 GB file then does not keep a Ctrl-C waiting until it is copied."""
        self.halted = True

    def add_bytes(self, data: bytes) -> str:
        oid = hash_bytes(data)
        if oid in self._staged or oid in self._reused:
            return oid
        if self.store.exists(oid):
            self._reused[oid] = data  # checked again at install; written only if gone by then
            return oid
        self._write_bytes(oid, data)
        return oid

    def _write_bytes(self, oid: str, data: bytes) -> None:
        path, fd = self._new_tmp()
        try:
            write_all(fd, data)
        finally:
            os.close(fd)
        self._keep(oid, path)

    def reuse(self, oid: str, source: str, opener, st=None) -> None:
        """An object the stat cache says ``source`` (of stat ``st``) already has in the store:
        nothing is read now. ``opener()`` opens the source (checked as any source read) should
        the object be gone by install time, or be that very source file."""
        if st is not None:
            self.origin(oid, st)
        if oid not in self._staged:
            self._reused.setdefault(oid, (source, opener))

    def _make_durable(self) -> None:
        """Every staged byte on disk before any object gets its final name (the write protocol).

        Decided here, under the barrier, not while staging: an object present when its file
        was staged may have been collected since, and then this staged copy is what gets
        published.
        """
        pending = [path for oid, path in self._staged.items() if not self.store.exists(oid)]
        if len(pending) >= self.BATCH_SYNC and sync_filesystem(self.dir):
            return
        for path in pending:
            fsync_file(path)

    def _keep(self, oid: str, path: str) -> None:
        # setdefault is one atomic step: two threads staging the same content keep one copy.
        if self._staged.setdefault(oid, path) != path:
            os.unlink(path)

    def install(self) -> int:
        """Give every staged object its final name. Returns how many were new to the store.

        Runs under the store barrier, so gc cannot remove anything between the existence check
        of a reused object here and the manifest commit that references it. If it fails part
        way (disk full, out of inodes, Ctrl-C), the objects this batch added are taken out again
        (:meth:`_withdraw`): the store is left as it was.
        """
        self._settle_reused()
        self._make_durable()
        new = 0
        touched: set[str] = set()
        placed: list[tuple[str, os.stat_result]] = []  # objects this batch added, as they were then
        made: list[str] = []  # fan-out folders this batch created
        try:
            for oid, staged in self._staged.items():
                final = self.store.path_str(oid)
                os.chmod(staged, READ_ONLY)
                size = os.lstat(staged).st_size
                try:
                    added = _place(staged, final)
                except FileNotFoundError:  # first object in this fan-out folder
                    folder = os.path.dirname(final)
                    if not os.path.isdir(self.store._root):
                        # A fresh clone's store/ holds only a .gitignore: make store/objects once,
                        # fsynced in its parent (it is not this batch's to take back).
                        from .atomic import make_dirs

                        make_dirs(self.store._root)
                    try:
                        os.mkdir(folder)
                        made.append(folder)
                    except FileExistsError:
                        pass
                    touched.add(os.path.dirname(folder))
                    added = _place(staged, final)
                if added:
                    placed.append((final, os.lstat(final)))
                elif self._is_a_source(oid, final):
                    self._replace(staged, final)
                new += added
                self.new_bytes += size if added else 0
                touched.add(os.path.dirname(final))
            if len(touched) < self.BATCH_SYNC or not sync_filesystem(self.dir):
                for folder in touched:
                    fsync_dir(folder)
        except BaseException:
            self._withdraw(placed, made)
            raise
        self._placed, self._made = placed, made
        return new

    def _is_a_source(self, oid: str, final: str) -> bool:
        """Whether the stored object ``oid`` is the very inode of a source file it was read from
        (an interrupted --consume linked it in): rewriting that file would rewrite the object."""
        sources = self._origins.get(oid)
        if not sources:
            return False
        try:
            st = os.lstat(final)
        except FileNotFoundError:
            return False
        return st.st_nlink > 1 and (st.st_dev, st.st_ino) in sources and oid not in self._linked

    def _replace(self, staged: str, final: str) -> None:
        """Put this batch's own copy (same bytes, by their hash) in place of an object that is a
        source file's inode: one rename, so readers see the same bytes throughout."""
        was = os.lstat(final)
        fsync_file(staged)
        os.rename(staged, final)
        self.replaced[(was.st_dev, was.st_ino)] = final

    def repair_tree(self, tree_dir: str | os.PathLike) -> None:
        """Relink the files of a materialized tree that still are an untrusted object's old
        inode (see :meth:`_replace`) to the object now in its place, each by one rename."""
        if not self.replaced:
            return
        for dirpath, _, files in os.walk(tree_dir):
            for name in files:
                full = os.path.join(dirpath, name)
                st = os.lstat(full)
                final = self.replaced.get((st.st_dev, st.st_ino))
                if final is None:
                    continue
                mode = stat.S_IMODE(os.lstat(dirpath).st_mode)
                os.chmod(dirpath, mode | 0o700)
                try:
                    tmp = os.path.join(dirpath, f".{name}.gaia-cas-relink-{os.urandom(4).hex()}")
                    os.link(final, tmp)
                    os.rename(tmp, full)
                finally:
                    os.chmod(dirpath, mode)
                fsync_dir(dirpath)

    def _withdraw(self, placed: list[tuple[str, os.stat_result]], made: list[str]) -> None:
        """Take out the objects a failed install added, and the fan-out folders it made.

        Another writer may have found one of them in the meantime and be about to commit a
        version that needs it; it then refreshed its mtime (or linked it into a materialized
        tree). Such an object is left alone: it is checked before it is moved aside, and again
        after (a refresh that came in between puts it back). A writer whose refresh finds it
        gone fails cleanly instead of committing ("vanished while being reused").
        """
        folders = set()
        for final, was in reversed(placed):
            try:
                now = os.lstat(final)
                if (now.st_ino, now.st_mtime_ns, now.st_nlink) != (was.st_ino, was.st_mtime_ns, was.st_nlink):
                    continue
                aside = self._new_name()
                os.rename(final, aside)
                moved = os.lstat(aside)
                if (moved.st_mtime_ns, moved.st_nlink) != (was.st_mtime_ns, was.st_nlink):
                    os.rename(aside, final)  # someone took it up after all: keep it published
                folders.add(os.path.dirname(final))
            except OSError:
                continue  # best effort: what stays is unreferenced, gc's to collect
        for folder in reversed(made):
            try:
                os.rmdir(folder)
                folders.discard(folder)
                folders.add(os.path.dirname(folder))
            except OSError:
                pass  # another writer's object arrived in it
        for folder in folders:
            try:
                fsync_dir(folder)
            except OSError:
                pass

    def _settle_reused(self) -> None:
        """Refresh the objects reused without reading; stage any that vanished since (a gc ran)."""
        from .errors import SourceError

        for oid, origin in self._reused.items():
            if oid in self._staged:
                continue
            try:
                final = self.store.path_str(oid)
                _refresh(final)
                if not isinstance(origin, bytes) and self._is_a_source(oid, final):
                    raise StoreError(final)  # the source file itself: stage a copy to put in its place
                continue
            except StoreError:
                pass  # gone: fall through and stage it from its source
            if isinstance(origin, bytes):
                self._write_bytes(oid, origin)
                continue
            label, opener = origin
            with opener() as src:
                got, _ = self.add_stream(src, label)
            if got != oid:
                raise SourceError(f"{label} changed while it was being deployed")

    def discard(self) -> None:
        if self.dir is not None and os.path.exists(self.dir):
            import shutil  # not at import time (bz2, lzma...): an unchanged redeploy stages nothing

            shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None
        if self._liveness is not None:
            os.close(self._liveness)
            self._liveness = None


_NO_HARD_LINKS = (errno.EXDEV, errno.EMLINK, errno.EPERM, errno.ENOTSUP)


def _copy_in_place(path: str, mode: int) -> None:
    """Give ``path`` an inode of its own holding the same bytes (temp file, fsync, rename)."""
    import shutil

    folder, name = os.path.split(path)
    tmp = os.path.join(folder, f".{name}.gaia-cas-copy-{os.urandom(4).hex()}")
    try:
        shutil.copyfile(path, tmp, follow_symlinks=False)
        os.chmod(tmp, mode)
        fsync_file(tmp)
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(folder)


def _place(staged: str, final: str) -> bool:
    """Publish a complete staged object under its oid; False if the store already had it."""
    try:
        os.link(staged, final)
        return True
    except FileExistsError:
        # Keep the object already there (immutability) but refresh its mtime: a gc running
        # later spares objects younger than its grace period.
        _refresh(final)
        return False
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
    # A filesystem without hard links: move the staged file itself. It is complete, fsynced
    # and read-only already, and rename is atomic, so the final name never holds part of it.
    if os.path.lexists(final):
        _refresh(final)
        return False
    os.rename(staged, final)
    return True


def _refresh(path: str) -> None:
    try:
        os.utime(path)
    except PermissionError:
        # Another user's object in a shared store: it exists, which is what matters; gc's grace
        # period then rests on the deploy's own staging files.
        pass
    except FileNotFoundError:
        raise StoreError(f"object {path} vanished while being reused (was gc run with no grace period?)") from None
