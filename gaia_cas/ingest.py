"""Turn a file or directory into objects and one tree oid.

Two phases, so that bad input changes nothing:

1. :func:`scan` walks the source with ``lstat`` only and rejects anything gaia-cas cannot store
   faithfully -- symlinks, FIFOs, sockets, devices, unreadable folders, non-UTF-8 names, an
   empty source -- before a single byte is written.
2. :func:`stage` streams every file once into a staging area (read, hash, write) and packs the
   tree objects bottom-up; the caller installs the staged objects only once the whole source
   has been read.

A single file is stored as a tree with one entry, so every version is a tree oid and the
file keeps its real name (loaders look for ``model_catboost_best.joblib``, not an oid).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from stat import S_ISREG
from collections import namedtuple

from .codec import pack
from .errors import SourceError
from .names import MAX_NAME_BYTES, entry_name_problem
from .objects import CHUNK, hash_bytes, hash_stream
from .progress import Counted, Tally
from .statcache import stat_key
from .trees import DIR, FILE, MAX_DEPTH, Entry, encode_tree

DIRECTORY_ARTIFACT = "directory"
FILE_ARTIFACT = "file"
STAGING_THREADS = min(2, os.cpu_count() or 1)  # the machines this serves have 2 cores
PARALLEL_MIN_BYTES = 32 << 20  # below this, starting threads costs more than it saves


# Plain classes and NamedTuples rather than dataclasses: see manifest._Record for the cost.

class ScannedFile:
    """A regular file as the scan saw it: its path, its name in ``parent`` (None for a source
    that is a single file) and its lstat, which the file opened later must still match.

    Path-like (``os.fspath``, ``str``, ``endswith``) so that code handed a scanned file can use
    it as its path."""

    __slots__ = ("path", "size", "stat", "parent", "name", "base")

    def __init__(self, path: str, size: int, stat: os.stat_result | None = None,
                 parent: "ScannedDir | None" = None, name: str | None = None):
        self.path = path
        self.size = size
        self.stat = stat
        self.parent = parent
        self.name = name
        self.base: int | None = None  # a source scanned by scan_at: the held folder it is ``name`` in

    def __fspath__(self) -> str:
        return self.path

    __str__ = __fspath__

    def endswith(self, *args) -> bool:
        return self.path.endswith(*args)


class ScannedDir:
    """A folder as the scan saw it; ``fd`` holds the source root open while a deploy reads it."""

    __slots__ = ("path", "children", "digest", "stat", "parent", "name", "fd", "base")

    def __init__(self, path: str, stat: os.stat_result | None = None, parent: "ScannedDir | None" = None,
                 name: str | None = None):
        self.path = path
        self.children: dict[str, ScannedFile | ScannedDir] = {}
        self.digest: str | None = None  # fingerprint(), computed once per scan
        self.stat = stat
        self.parent = parent
        self.name = name
        self.fd: int | None = None
        self.base: int | None = None  # a source scanned by scan_at: the held folder it is ``name`` in


# artifact: "directory" or "file"; name: the file's name for a file artifact, else None
Built = namedtuple("Built", "tree artifact name size file_count")


def _describe(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symlink"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file or folder"


def _check_name(name: str, where: str) -> None:
    problem = entry_name_problem(name)
    if problem is None:
        return
    shown = name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    raise SourceError(f"cannot deploy {where}: the name {shown!r} {problem}")


def scan(source: str | os.PathLike) -> ScannedFile | ScannedDir:
    path = os.fspath(source)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise SourceError(f"source {path} does not exist") from None
    except OSError as exc:
        raise SourceError(f"cannot read source {path}: {exc.strerror}") from None
    if stat.S_ISREG(st.st_mode):
        _check_name(os.path.basename(os.path.abspath(path)), path)
        return ScannedFile(path, st.st_size, st)
    if not stat.S_ISDIR(st.st_mode):
        raise SourceError(f"source {path} is {_describe(st.st_mode)}; deploy a file or a folder")
    root = scan_dir(path, 0, st)
    if not _has_files(root):
        raise SourceError(f"source {path} holds no files (only empty folders, or nothing): nothing to deploy")
    return root


def scan_at(dir_fd: int, name: str, path: str) -> ScannedFile | ScannedDir:
    """Scan the source ``name`` in the folder held by ``dir_fd`` (``path``: how it is shown),
    every folder of it opened from its parent's descriptor, never through a symlink.

    Nothing above the source is looked up again: a folder above it swapped for a symlink after
    ``dir_fd`` was opened changes nothing (import-legacy holds each version folder this way).
    The caller keeps ``dir_fd`` open while the result is staged.
    """
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        raise SourceError(f"source {path} does not exist") from None
    except OSError as exc:
        raise SourceError(f"cannot read source {path}: {exc.strerror}") from None
    if stat.S_ISREG(st.st_mode):
        _check_name(name, path)
        node = ScannedFile(path, st.st_size, st, None, name)
    elif stat.S_ISDIR(st.st_mode):
        probe = ScannedDir(path, st, None, name)
        probe.base = dir_fd
        fd = _open_checked(probe, None)
        try:
            node = scan_dir(path, 0, st, None, name, fd)
        finally:
            os.close(fd)
        if not _has_files(node):
            raise SourceError(f"source {path} holds no files (only empty folders, or nothing): nothing to deploy")
    else:
        raise SourceError(f"source {path} is {_describe(st.st_mode)}; deploy a file or a folder")
    node.base = dir_fd
    return node


def _files(node: ScannedDir):
    for child in node.children.values():
        if isinstance(child, ScannedDir):
            yield from _files(child)
        else:
            yield child


def _has_files(node: "ScannedDir") -> bool:
    return any(isinstance(c, ScannedFile) or _has_files(c) for c in node.children.values())


def scan_dir(path: str, depth: int, st: os.stat_result, parent: ScannedDir | None = None, name: str | None = None,
             fd: int | None = None) -> ScannedDir:
    """Scan one folder: by its path, or (``fd``: the folder, opened and checked by the caller)
    from its descriptor, each subfolder then opened from it without following a symlink."""
    if depth > MAX_DEPTH:
        raise SourceError(f"cannot deploy {path}: folders nest deeper than {MAX_DEPTH} levels")
    node = ScannedDir(path, st, parent, name)
    try:
        with os.scandir(path if fd is None else fd) as it:
            items = list(it)
    except OSError as exc:
        raise SourceError(f"cannot read folder {path}: {exc.strerror}") from None
    children = node.children
    for item in items:
        name = item.name
        item_path = item.path if fd is None else f"{path}/{name}"
        # The kernel never lists '', '.', '..', '/' or NUL; a short ASCII name needs no more
        # checking (the common case, a few thousand times per deploy), anything else does.
        if not (name.isascii() and len(name) <= MAX_NAME_BYTES):
            _check_name(name, item_path)
        try:
            st = item.stat(follow_symlinks=False)
        except OSError as exc:
            raise SourceError(f"cannot read {item_path}: {exc.strerror}") from None
        if S_ISREG(st.st_mode):
            children[name] = ScannedFile(item_path, st.st_size, st, node, name)
        elif stat.S_ISDIR(st.st_mode):
            if fd is None:
                children[name] = scan_dir(item_path, depth + 1, st, node, name)
            else:
                inner = _open_checked(ScannedDir(item_path, st, node, name), fd)
                try:
                    children[name] = scan_dir(item_path, depth + 1, st, node, name, inner)
                finally:
                    os.close(inner)
        else:
            extra = ""
            if stat.S_ISLNK(st.st_mode):
                try:
                    extra = f" -> {os.readlink(name if fd is not None else item_path, dir_fd=fd)}"
                except OSError:  # replaced again since: it was a symlink all the same
                    pass
            raise SourceError(
                f"cannot deploy {item_path}{extra}: it is {_describe(st.st_mode)}; "
                "gaia-cas stores regular files and folders only"
            )
    return node


# Every source file is reached from the source root one component at a time, each relative to
# its parent's descriptor and never through a symlink, and each folder and file opened must be
# the very one the scan saw (device and inode; a file's size and type too). A folder swapped for
# a symlink after the scan -- into a directory the deploying user can read and the source's
# owner cannot -- is then refused instead of followed. O_NONBLOCK: a FIFO swapped in never
# blocks the deploy.
_DIR_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def _open_checked(node: "ScannedFile | ScannedDir", dir_fd: int | None) -> int:
    """Open ``node`` (by name in ``dir_fd``; the source root by name in the folder it was
    scanned in, see :func:`scan_at`, or else by its path) and check it is what the scan saw;
    returns the descriptor."""
    folder = isinstance(node, ScannedDir)
    if dir_fd is None and node.base is not None:
        dir_fd = node.base
    name = node.path if dir_fd is None else node.name
    try:
        fd = os.open(name, _DIR_FLAGS if folder else _FILE_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        raise SourceError(f"{node.path} vanished while it was being deployed") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SourceError(f"{node.path} changed while it was being deployed (now a symlink)") from None
        if exc.errno == errno.ENOTDIR:
            raise SourceError(f"{node.path} changed while it was being deployed (no longer a folder)") from None
        raise SourceError(f"cannot read {node.path}: {exc.strerror}") from None
    try:
        now, then = os.fstat(fd), node.stat
        if not (stat.S_ISDIR(now.st_mode) if folder else stat.S_ISREG(now.st_mode)):
            kind = "folder" if folder else "regular file"
            raise SourceError(f"{node.path} changed while it was being deployed (no longer a {kind})")
        if then is not None and (now.st_dev, now.st_ino) != (then.st_dev, then.st_ino):
            raise SourceError(f"{node.path} changed while it was being deployed (replaced by another "
                              f"{'folder' if folder else 'file'})")
        if not folder and now.st_size != node.size:
            raise SourceError(f"{node.path} changed while it was being deployed ({node.size} bytes, then {now.st_size})")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _folder_fd(folder: ScannedDir) -> tuple[int, bool]:
    """A checked descriptor of a scanned folder: (fd, whether the caller must close it)."""
    chain = []
    while folder.parent is not None:
        chain.append(folder)
        folder = folder.parent
    if folder.fd is not None:
        fd, owned = folder.fd, False
    else:
        fd, owned = _open_checked(folder, None), True
    try:
        for step in reversed(chain):
            inner = _open_checked(step, fd)
            if owned:
                os.close(fd)
            fd, owned = inner, True
    except BaseException:
        if owned:
            os.close(fd)
        raise
    return fd, owned


class _parent_of:
    """``with _parent_of(node) as dir_fd``: the checked descriptor of the file's folder (None
    for a source that is a single file, opened by the path the user gave)."""

    __slots__ = ("node", "fd", "owned")

    def __init__(self, node: ScannedFile):
        self.node = node

    def __enter__(self) -> int | None:
        self.fd, self.owned = _folder_fd(self.node.parent) if self.node.parent is not None else (None, False)
        return self.fd

    def __exit__(self, *exc) -> None:
        if self.owned:
            os.close(self.fd)


def open_source_file(node: ScannedFile):
    """Open a scanned file for reading, refusing it unless it is the very file the scan saw."""
    with _parent_of(node) as dir_fd:
        fd = _open_checked(node, dir_fd)
    return os.fdopen(fd, "rb", buffering=0)


def source_format(node: "ScannedFile | ScannedDir") -> str:
    """The model format of a scanned source, never by loading it: a folder's from the names of
    its files as scanned, a file's from its first bytes, read from the very file the scan saw
    (opened as :func:`open_source_file` does: no symlink followed, a FIFO swapped in refused,
    never waited on). Called with no lock or barrier held."""
    from . import formats  # zipfile and friends: only the commands that detect pay for them

    if isinstance(node, ScannedDir):
        return formats.detect_names({n for n, c in node.children.items() if isinstance(c, ScannedFile)})
    with open_source_file(node) as f:
        try:
            return formats.detect_open(f, node.name or os.path.basename(os.path.abspath(node.path)))
        except OSError as exc:
            raise SourceError(f"cannot read {node.path}: {exc.strerror or exc}") from None


class _held_root:
    """Hold the source root open (checked against the scan) while a deploy reads it: each file
    is then reached from it, whatever happens to the path above it meanwhile."""

    def __init__(self, node: "ScannedFile | ScannedDir"):
        self.node = node if isinstance(node, ScannedDir) and node.fd is None else None

    def __enter__(self):
        if self.node is not None:
            self.node.fd = _open_checked(self.node, None)
        return self

    def __exit__(self, *exc) -> None:
        if self.node is not None:
            fd, self.node.fd = self.node.fd, None
            os.close(fd)


class Builder:
    """Builds the tree bottom-up, either storing (staging given) or only hashing (dry run).

    With ``consume``, files are taken into staging by hard link where possible (no bytes copied),
    and :attr:`taken` records the identity of every source file, for :func:`consume_source`.
    """

    def __init__(self, stage=None, cache=None, consume=False, tally=None):
        self.stage = stage
        self.tally = tally  # a progress.Tally: every file's bytes are added as they are read, linked or reused
        self.cache = cache
        self.consume = consume
        self.buffer = bytearray(CHUNK)
        self.file_count = 0
        self.taken: dict[str, tuple] = {}
        self.linked = 0
        self.stored: dict[str, tuple[str, int]] = {}  # path -> (oid, size), staged ahead on threads
        self.known: dict[str, str] = {}  # path -> oid, found in the stat cache by store_ahead
        self.trusted = cache is not None  # every file's oid would be trusted again from its stat

    def file(self, node: ScannedFile) -> tuple[str, int]:
        if self.consume and self.stage is not None and node.stat is not None:
            with _parent_of(node) as dir_fd:
                linked = self.stage.add_link(node.path, node.stat, dir_fd, node.name)
            if linked is not None:
                oid, size, st = linked
                self.taken[node.path] = _identity(st)
                self.linked += 1
                self.file_count += 1
                if self.tally is not None:
                    self.tally.add(size)
                return oid, size
        stored = self.stored.pop(node.path, None)
        if stored is not None:
            self.file_count += 1
            return stored
        if self.cache is not None and node.stat is not None:
            oid = self.known.pop(node.path, None) or self.cache.lookup(node.path, node.stat)
            if oid is not None:
                if self.stage is not None:
                    self.stage.reuse(oid, node.path, lambda: open_source_file(node), node.stat)
                self.file_count += 1
                if self.tally is not None:
                    self.tally.add(node.size)
                return oid, node.size
        self.file_count += 1
        return self._read(node, self.buffer)

    def _read(self, node: ScannedFile, buffer: bytearray) -> tuple[str, int]:
        """Read the file once: hash it, and stage it when storing. Runs on worker threads too."""
        src = open_source_file(node)
        with src:
            if self.stage is not None:
                reader = src if self.tally is None else Counted(src, self.tally)
                oid, size = self.stage.add_stream(reader, node.path, buffer)
                self.stage.origin(oid, node.stat or os.fstat(src.fileno()))
            else:
                oid, size = hash_stream(src, buffer)
            if self.consume:
                self.taken[node.path] = _identity(os.fstat(src.fileno()))
        if size != node.size:
            raise SourceError(f"{node.path} changed while it was being deployed ({node.size} bytes, then {size})")
        if self.cache is not None and (node.stat is None or not self.cache.remember(node.path, node.stat, oid)):
            self.trusted = False
        return oid, size

    def store_ahead(self, root: ScannedFile | ScannedDir) -> None:
        """Stage, on both cores, the files the stat cache does not know, when they are enough
        bytes to pay for a second thread; :meth:`tree` then builds in order from the results.

        Reading, hashing (xxhash releases the GIL) and writing all run outside the GIL, so two
        threads stage about 1.6x as fast as one where the disk keeps up (measured: 1 GiB, 2003
        files, on tmpfs: 410 ms on one thread, 257 ms on two). The biggest files go first, so
        the threads finish together. The first error (or a Ctrl-C) halts the other thread within
        one chunk and is raised here once it has stopped; the staging area is then discarded as
        usual.
        """
        if self.stage is None or self.consume or STAGING_THREADS < 2 or isinstance(root, ScannedFile):
            return
        todo = [f for f in _files(root) if not self._cached(f)]
        if len(todo) < 2 or sum(f.size for f in todo) < PARALLEL_MIN_BYTES:
            return
        todo.sort(key=lambda f: f.size, reverse=True)
        import threading
        from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

        local = threading.local()

        def store(node: ScannedFile) -> tuple[str, int]:
            buffer = getattr(local, "buffer", None)
            if buffer is None:
                buffer = local.buffer = bytearray(CHUNK)
            return self._read(node, buffer)

        pool = ThreadPoolExecutor(STAGING_THREADS, thread_name_prefix="gaia-cas-stage")
        try:
            futures = [pool.submit(store, node) for node in todo]
            finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
            for future in finished:
                if future.exception() is not None:
                    raise future.exception()
            for node, future in zip(todo, futures):
                self.stored[node.path] = future.result()
        except BaseException:
            self.stage.halt()  # the files still being read stop at their next chunk
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _cached(self, node: ScannedFile) -> bool:
        """Whether the stat cache knows the file; the answer is kept, so it is asked only once."""
        if self.cache is None or node.stat is None:
            return False
        oid = self.cache.lookup(node.path, node.stat)
        if oid is None:
            return False
        self.known[node.path] = oid
        return True

    def tree(self, node: ScannedDir) -> tuple[str, int]:
        entries = []
        total = 0
        for name, child in node.children.items():
            if isinstance(child, ScannedDir):
                oid, size = self.tree(child)
                entries.append(Entry(name, DIR, oid, size))
            else:
                oid, size = self.file(child)
                entries.append(Entry(name, FILE, oid, size))
            total += size
        data = encode_tree(entries)
        oid = self.stage.add_bytes(data) if self.stage is not None else hash_bytes(data)
        return oid, total

    def artifact(self, node: ScannedFile | ScannedDir) -> Built:
        if isinstance(node, ScannedFile):
            oid, size = self.file(node)
            name = os.path.basename(os.path.abspath(node.path))
            data = encode_tree([Entry(name, FILE, oid, size)])
            tree = self.stage.add_bytes(data) if self.stage is not None else hash_bytes(data)
            return Built(tree, FILE_ARTIFACT, name, size, 1)
        tree, size = self.tree(node)
        return Built(tree, DIRECTORY_ARTIFACT, None, size, self.file_count)


def stage(staging, source: str | os.PathLike, cache=None, consume: "Consumption | None" = None,
          node: "ScannedFile | ScannedDir | None" = None, progress=None) -> Built:
    """Scan ``source`` and stream it into ``staging``; nothing reaches store/objects yet.

    With a stat cache, files whose stat is unchanged are not read again: their oid comes from
    the cache, and the staging area checks at install time that the object is still stored.
    With ``consume`` (from :func:`plan_consumption`), files are linked rather than copied where
    the filesystem allows, and ``consume`` learns which source files to delete after the commit.
    ``progress(done, total)`` hears the bytes of the source's files as they are staged.
    """
    if consume is not None:
        node = consume.node  # checked by plan_consumption
    elif node is None:
        node = scan(source)
    tally = None
    if progress is not None:
        files = [node] if isinstance(node, ScannedFile) else _files(node)
        tally = Tally(progress, sum(f.size for f in files))
    builder = Builder(staging, cache, consume is not None, tally)
    with _held_root(node):
        builder.store_ahead(node)
        built = builder.artifact(node)
    if tally is not None:
        tally.finish()
    if consume is not None:
        consume.taken, consume.linked = builder.taken, builder.linked
    elif builder.trusted and isinstance(node, ScannedDir):
        cache.remember_tree(node.path, fingerprint(node), built.tree, built.size, built.file_count)
    return built


# -- a folder whose every file is as it was: its tree without building it --------------------

def fingerprint(node: ScannedDir) -> str:
    """A digest of a scanned folder: every path below it in scan order, and each file's stat key.

    Equal digests mean every file has the stat key it had before, so each would be a stat cache
    hit and the folder would build the same tree. Folders are part of it (an empty one is a tree
    entry), and paths are absolute, so the structure is in it too. A directory that lists its
    entries in another order gives another digest: a miss, which costs only the slower path.
    It is kept on the node: a deploy asks for it before staging and again to remember the tree.
    """
    if node.digest is not None:
        return node.digest
    rows: list = [node.path]
    add = rows.append

    def walk(folder: ScannedDir) -> None:
        for child in folder.children.values():
            if child.__class__ is ScannedDir:
                add(child.path)
                walk(child)
            else:
                add((child.path, *stat_key(child.stat)))

    walk(node)
    node.digest = hash_bytes(pack(rows))
    return node.digest


def recall(source: str | os.PathLike, cache) -> "tuple[ScannedFile | ScannedDir, Built | None]":
    """Scan ``source``; if it is a folder the stat cache remembers with this very scan, also
    return its Built, known without looking at a single file's content or building a tree."""
    node = scan(source)
    if cache is None or not isinstance(node, ScannedDir):
        return node, None
    remembered = cache.recall_tree(node.path, fingerprint(node))
    if remembered is None or len(remembered) != 3:
        return node, None
    tree, size, file_count = remembered
    if not (isinstance(size, int) and isinstance(file_count, int)):
        return node, None
    return node, Built(tree, DIRECTORY_ARTIFACT, None, size, file_count)


# -- deploy --consume: the source is handed over to the store ------------------------------------

def _identity(st: os.stat_result) -> tuple:
    """What must still match for a source file to be the one whose bytes were stored."""
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


class Consumption:
    """A source to be deleted once its content is committed: its path, and what was taken."""

    __slots__ = ("source", "node", "taken", "linked", "removed", "left")

    def __init__(self, source: str, node: ScannedFile | ScannedDir):
        self.source = source
        self.node = node  # the scan whose folders were checked, deployed as it is
        self.taken: dict[str, tuple] = {}
        self.linked = 0
        self.removed = 0
        self.left: list[str] = []


def _ancestors(path: str):
    """(dev, ino) of ``path`` (resolved) and of every folder above it, nearest first."""
    current = os.path.realpath(path)
    while True:
        try:
            st = os.stat(current)
            yield st.st_dev, st.st_ino
        except OSError:
            pass
        parent = os.path.dirname(current)
        if parent == current:
            return
        current = parent


def refuse_own_folders(source: str | os.PathLike, own: "dict[str, str | os.PathLike]") -> None:
    """Refuse a source that is, holds, or is inside one of the root's own folders (``own``:
    label -> path, e.g. store/, manifests/, logs/): deploying it would version the store's
    own files, and consuming it would delete them.

    Folders are compared by device and inode along the resolved path, so neither another
    spelling, a symlink nor a bind mount of the same folder gets past it.
    """
    path = os.path.abspath(source)
    folders = {}
    for label, folder in own.items():
        try:
            st = os.stat(folder)
        except OSError:
            continue
        folders[(st.st_dev, st.st_ino)] = (label, folder)
    if not folders:
        return
    for depth, key in enumerate(_ancestors(path)):
        if key in folders:
            label = folders[key][0]
            where = "is" if depth == 0 else "is inside"
            raise SourceError(f"cannot deploy {path}: it {where} the store itself (the root's {label}); "
                              "deploy a copy kept outside store/, manifests/ and logs/")
    try:
        st = os.stat(path)
    except OSError:
        return  # the scan says what is wrong with it
    mine = (st.st_dev, st.st_ino)
    for label, folder in folders.values():
        if mine in _ancestors(os.fspath(folder)):
            raise SourceError(f"cannot deploy {path}: it holds the store itself (the root's {label}); "
                              "deploy a copy kept outside store/, manifests/ and logs/")


def plan_consumption(source: str | os.PathLike, own: "dict[str, str | os.PathLike]") -> Consumption:
    """Check, before anything is written, that ``source`` can be handed over and deleted.

    Refused: a source that is, holds or is inside the root's own folders (``own``, see
    :func:`refuse_own_folders`), and a source whose folders (or whose parent) this user cannot
    modify -- deleting it afterwards would fail half way.
    """
    path = os.path.abspath(source)
    refuse_own_folders(path, own)
    node = scan(path)
    folders = [os.path.dirname(path)]
    if isinstance(node, ScannedDir):
        stack = [node]
        while stack:
            folder = stack.pop()
            folders.append(folder.path)
            stack.extend(c for c in folder.children.values() if isinstance(c, ScannedDir))
    for folder in folders:
        if not os.access(folder, os.W_OK | os.X_OK):
            raise SourceError(f"cannot consume {path}: no permission to delete files in {folder}")
    return Consumption(path, node)


def consume_source(consumption: Consumption) -> Consumption:
    """Delete the source of a committed deploy: every file whose bytes were stored, then the
    folders left empty. A file added or changed since it was read is kept and listed in
    ``left``, and so is every folder that still holds something.

    The source folder is first renamed to a hidden sibling, so that an interrupted deletion
    leaves no half-deleted model under the original name to be deployed again by mistake.
    Every deletion is made relative to a folder held open by descriptor, each folder opened
    without following a symlink and checked against the scan: the owner of the source can swap
    a folder of it for a symlink at any moment, and root's deletions must never follow it.
    """
    path = consumption.source
    parent, name = os.path.split(path)
    try:
        parent_fd = os.open(parent or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:  # the deploy has committed: report the source as kept rather than fail it
        consumption.left.append(path)
        return consumption
    try:
        try:
            st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        except OSError:
            return consumption  # gone already: nothing to delete
        if not stat.S_ISDIR(st.st_mode):
            _remove_taken(consumption, parent_fd, name, path)
            return consumption
        scanned = consumption.node.stat if isinstance(consumption.node, ScannedDir) else None
        expected = (scanned.st_dev, scanned.st_ino) if scanned is not None else (st.st_dev, st.st_ino)
        doomed = f".{name}.gaia-cas-consumed-{os.urandom(4).hex()}"
        try:
            os.rename(name, doomed, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
        except OSError:
            consumption.left.append(path)
            return consumption
        if not _empty_folder(consumption, parent_fd, doomed, expected, path, 0):
            try:
                os.rename(doomed, name, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)  # give the rest back
            except OSError:  # the name was taken again meanwhile: leave the rest where it is
                consumption.left.append(os.path.join(parent, doomed))
    finally:
        os.close(parent_fd)
    return consumption


def _empty_folder(consumption: Consumption, parent_fd: int, name: str, expected: tuple, original: str,
                  depth: int) -> bool:
    """Delete what was taken from the folder ``name`` of ``parent_fd`` (the source's folder
    ``original``), then the folder itself if that left it empty; True if it is gone."""
    if depth > MAX_DEPTH:
        return False
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=parent_fd)
    except OSError:
        return False  # no longer a folder (a symlink swapped in?): left alone
    emptied = True
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != expected:
            return False  # another folder than the one scanned: not ours to empty
        with os.scandir(fd) as it:
            names = [entry.name for entry in it]
        for child in names:
            full = os.path.join(original, child)
            try:
                cst = os.stat(child, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(cst.st_mode):
                if not _empty_folder(consumption, fd, child, (cst.st_dev, cst.st_ino), full, depth + 1):
                    emptied = False
            elif not _remove_taken(consumption, fd, child, full):
                emptied = False
    except OSError:
        emptied = False
    finally:
        os.close(fd)
    if not emptied:
        return False
    try:
        os.rmdir(name, dir_fd=parent_fd)  # fails on anything but an empty folder
        return True
    except OSError:
        return False


def _remove_taken(consumption: Consumption, dir_fd: int, name: str, original: str) -> bool:
    """Delete the source file ``name`` of the folder held as ``dir_fd`` if it is still the one
    stored (checked on the very entry deleted); otherwise list it as kept. True if it is gone."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return True
    except OSError:
        st = None
    identity = consumption.taken.get(original)
    if st is not None and identity is not None and _identity(st) == identity:
        try:
            os.unlink(name, dir_fd=dir_fd)
            consumption.removed += 1
            return True
        except FileNotFoundError:
            return True
        except OSError:
            pass
    consumption.left.append(original)
    return False


def hash_only(source: "str | os.PathLike | ScannedFile | ScannedDir", cache=None) -> Built:
    """The tree oid ``source`` (a path, or what :func:`scan` made of one) would get, computed
    without writing anything (dry runs)."""
    node = source if isinstance(source, (ScannedFile, ScannedDir)) else scan(source)
    with _held_root(node):
        return Builder(None, cache).artifact(node)


def artifact_path(tree_dir: Path, name: str | None) -> Path:
    """Where loaders find the artifact inside a materialized tree."""
    return tree_dir / name if name else tree_dir
