"""Hostile and bad input, end to end: every case is one `gaia-cas: error: ...` line, exit 1, no
traceback, the store exactly as before, and nothing written outside the root (invariants 4 and 5).

What other files already pin, and is not repeated here:

- msgpack decoding of manifests (truncated, garbage, newer schema, duplicate keys, huge declared
  lengths, bad oids and names) at the codec level, and `list`/`status`/`show`/`rollback`/`deploy`
  of a garbage / truncated / newer-schema / duplicate-key manifest through the CLI:
  tests/test_manifest.py (``test_*_is_corruption``, ``test_list_of_a_corrupted_manifest_...``,
  ``test_other_commands_refuse_a_corrupted_manifest``).
- A lock held past the timeout: tests/test_manifest.py ``test_lock_timeout_*``.
- Disk full during a deploy, through the CLI (pyfakefs ``set_disk_usage``): tests/test_objects.py
  ``test_disk_full_via_cli_is_one_line_error`` (and the library-level ``test_disk_full_*``).
- The tree codec's rejection table and the depth bound at the library level, and special files /
  a source mutating mid-ingest at the library level: tests/test_objects.py.

Here: the same cases through the command line (and `resolve()`), crafted tree objects planted in a
real store and reached by `rollback`, `verify`, `gc` and `resolve`, link paths that leave the root
through a symlinked folder, and permissions -- run as the unprivileged user ``nobody``, since the
suite runs as root and root reads through mode 000. The unprivileged runs fork this process and
drop privileges in the child (the interpreter lives under /root, which ``nobody`` cannot enter,
so a fresh ``bin/gaia-cas`` process could not even start); everything the child needs is imported
before the fork.
"""

from __future__ import annotations

import importlib
import io
import os
import pkgutil
import resource
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import traceback
from contextlib import contextmanager
from pathlib import Path

import msgpack
import pytest
import xxhash

from conftest import (
    LAUNCHER,
    Run,
    assert_one_line_error,
    make_joblib,
    make_savedmodel,
    run_launcher,
    snapshot,
)
from gaia_cas import ingest
from gaia_cas.cli import main
from gaia_cas.errors import GaiaCasError
from gaia_cas.layout import Layout
from gaia_cas.manifest import Version, record
from gaia_cas.manifest_store import Manifests
from gaia_cas.repo import Repository
from gaia_cas.trees import MAX_DEPTH

NOBODY = 65534


def flip_as_nobody(folder: Path, secret: Path, pause: float, spare: Path | None = None) -> int:
    """A real attacker: a forked process of nobody's flipping ``folder`` between itself and a
    symlink to ``secret`` every ``pause`` seconds until killed (at most 30 s). The spare names
    live in ``spare`` (default: ``folder``'s parent); keep them out of what the scan reads.
    Returns the pid."""
    import time

    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            signal.alarm(30)
            spare_dir = folder.parent if spare is None else spare
            real, link = spare_dir / f"{folder.name}.real", spare_dir / f"{folder.name}.link"
            os.symlink(secret, link)
            while True:
                os.rename(folder, real)
                os.rename(link, folder)
                time.sleep(pause)
                os.rename(folder, link)
                os.rename(real, folder)
                time.sleep(pause)
        finally:
            os._exit(0)
    return pid


# -- helpers ---------------------------------------------------------------------------------



@pytest.fixture
def outside(tmp_path) -> Path:
    """A folder next to the root (so outside it): nothing may ever appear in it."""
    path = tmp_path / "outside"
    path.mkdir()
    return path


def tmp_leftovers(root: Path) -> list[str]:
    return sorted(os.listdir(root / "store" / "tmp"))


def current_target(root: Path, link: str = "models/m/current") -> str:
    return os.readlink(root / link)


@contextmanager
def no_fsync():
    """For building fixtures only: durability is not under test there, and fsync is most of the cost."""
    real = os.fsync
    os.fsync = lambda fd: None
    try:
        yield
    finally:
        os.fsync = real


@pytest.fixture
def two_versions(cli, root, tmp_path):
    """Model m with 1.0.0 and 1.1.0 (current): a store with objects, trees, locks and a log."""
    a = make_savedmodel(tmp_path / "a" / "saved_model", variant=1)
    b = make_savedmodel(tmp_path / "b" / "saved_model", variant=2)
    with no_fsync():
        assert cli("deploy", "m", a).code == 0
        assert cli("deploy", "m", b).code == 0
    repo = Repository(root)
    manifest = repo.manifest("m")
    return {"a": a, "b": b, "trees": {v.version: v.tree for v in manifest.versions}}


def store_object(root: Path, data: bytes) -> str:
    """Write ``data`` as an object under its true oid (as a deploy would), return the oid."""
    oid = xxhash.xxh3_128_hexdigest(data)
    path = root / "store" / "objects" / oid[:2] / oid[2:]
    path.parent.mkdir(exist_ok=True)
    if not path.exists():
        path.write_bytes(data)
        os.chmod(path, 0o444)
    return oid


def plant_version(root: Path, tree: str, number: str = "5.0.0", *, current: bool = False) -> None:
    """Add a version naming ``tree`` to model m, through the manifest API (no tree check)."""
    with Manifests(Layout(root), lock_timeout=5).edit("m") as manifest:
        before = manifest.current
        manifest.versions.append(Version(
            version=number, deployment_id="20250101_000000", created_at="2025-01-01T00:00:00+00:00",
            tree=tree, artifact="directory", name=None, size_bytes=7, file_count=1, format="unknown"))
        if current:
            manifest.current = number
        record(manifest, "deploy", version=number, before=before, at="2025-01-01T00:00:00+00:00",
               user="test", host="test", reason="planted by a hostile test")


def rewrite_manifest(root: Path, change) -> None:
    """Edit the stored msgpack map of model m by hand (no validation on the way in).

    The versions are stored as one byte string holding their array of rows: ``change`` sees
    them unpacked, and they are packed back the same way."""
    path = root / "manifests" / "m.msgpack"
    doc = msgpack.unpackb(path.read_bytes(), raw=False)
    packed = isinstance(doc["versions"], bytes)
    if packed:
        doc["versions"] = msgpack.unpackb(doc["versions"], raw=False)
    change(doc)
    if packed:
        doc["versions"] = msgpack.packb(doc["versions"], use_bin_type=True)
    os.chmod(path, 0o644)
    path.write_bytes(msgpack.packb(doc, use_bin_type=True))


# -- running as the unprivileged user ---------------------------------------------------------

def _import_everything() -> None:
    """The forked child cannot read the interpreter's library: import all it may need first."""
    import gaia_cas

    for info in pkgutil.walk_packages(gaia_cas.__path__, "gaia_cas."):
        if not info.name.endswith("__main__"):  # importing it would run the CLI
            importlib.import_module(info.name)
    for name in ("json", "traceback", "getpass", "socket", "secrets", "fcntl", "shutil",
                 "pickle", "zipfile", "gzip", "bz2", "lzma", "zlib", "datetime", "argparse",
                 "importlib.metadata", "encodings.utf_8", "encodings.latin_1", "encodings.ascii"):
        try:
            importlib.import_module(name)
        except ImportError:
            pass


def as_nobody(fn, cwd: Path) -> Run:
    """Run ``fn()`` (returning an exit code) in a forked child as uid/gid 65534; capture its output."""
    _import_everything()
    out_file = tempfile.TemporaryFile()
    err_file = tempfile.TemporaryFile()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 99
        try:
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
            signal.alarm(60)  # a hang kills the child, the parent sees it
            sys.stdout = io.TextIOWrapper(io.FileIO(os.dup(out_file.fileno()), "w"), encoding="utf-8",
                                          errors="backslashreplace", write_through=True)
            sys.stderr = io.TextIOWrapper(io.FileIO(os.dup(err_file.fileno()), "w"), encoding="utf-8",
                                          errors="backslashreplace", write_through=True)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            os.chdir(cwd)
            code = fn()
            code = 0 if code is None else code
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 2
        except BaseException:
            traceback.print_exc(file=sys.stderr)
            code = 98
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    out_file.seek(0)
    err_file.seek(0)
    out = out_file.read().decode("utf-8", "replace")
    err = err_file.read().decode("utf-8", "replace")
    out_file.close()
    err_file.close()
    return Run(code, out, err)


def cli_as_nobody(root: Path, *argv) -> Run:
    return as_nobody(lambda: main(["--root", str(root), *map(str, argv)]), cwd=root.parent)


@pytest.fixture
def shared():
    """A scratch folder ``nobody`` can reach (tmp_path sits below a 0700 folder of root's)."""
    path = Path(tempfile.mkdtemp(prefix="gaia-cas-hostile-", dir="/tmp"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)  # root removes 0555/0444 trees without chmod


def chown_tree(path: Path, uid: int = NOBODY) -> None:
    os.chown(path, uid, uid, follow_symlinks=False)
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            os.chown(os.path.join(dirpath, name), uid, uid, follow_symlinks=False)


@pytest.fixture
def nobody_root(shared):
    """A root owned by ``nobody`` holding model m 1.0.0, and readable sources for it."""
    root = shared / "root"
    repo = Repository.init(root)
    v1 = make_savedmodel(shared / "src" / "v1" / "saved_model", variant=1)
    with no_fsync():
        repo.deploy("m", v1)
    chown_tree(root)
    return root


# -- sources ----------------------------------------------------------------------------------

def _symlink_inside_file(src: Path) -> Path:
    os.symlink("saved_model.pb", src / "alias.pb")
    return src / "alias.pb"


def _symlink_inside_dir(src: Path) -> Path:
    os.symlink("variables", src / "vars")
    return src / "vars"


def _symlink_outside(src: Path) -> Path:
    secret = src.parent.parent / "secret.bin"
    secret.write_bytes(b"not part of the model")
    os.symlink(secret, src / "secret.bin")
    return src / "secret.bin"


def _symlink_dangling(src: Path) -> Path:
    os.symlink("/nonexistent/gaia-cas/target", src / "dangling")
    return src / "dangling"


def _fifo(src: Path) -> Path:
    os.mkfifo(src / "pipe")
    return src / "pipe"


def _socket(src: Path) -> Path:
    # AF_UNIX paths are limited to ~107 bytes: bind relative to the folder.
    here = os.getcwd()
    os.chdir(src)
    try:
        sock = socket.socket(socket.AF_UNIX)
        sock.bind("sock")
        sock.close()
    finally:
        os.chdir(here)
    return src / "sock"


def _device(kind: int):
    def make(src: Path) -> Path:
        path = src / ("chardev" if kind == stat.S_IFCHR else "blockdev")
        os.mknod(path, kind | 0o600, os.makedev(1, 3) if kind == stat.S_IFCHR else os.makedev(7, 0))
        return path

    return make


SPECIAL = {
    "symlink-inside-file": (_symlink_inside_file, "a symlink"),
    "symlink-inside-dir": (_symlink_inside_dir, "a symlink"),
    "symlink-outside": (_symlink_outside, "a symlink"),
    "symlink-dangling": (_symlink_dangling, "a symlink"),
    "fifo": (_fifo, "a FIFO"),
    "socket": (_socket, "a socket"),
    "char-device": (_device(stat.S_IFCHR), "a device"),
    "block-device": (_device(stat.S_IFBLK), "a device"),
}


class _FakeDevEntry:
    """A directory entry that stats as a character device (for hosts where mknod is refused)."""

    def __init__(self, entry):
        self._entry = entry
        self.name = entry.name
        self.path = entry.path

    def __getattr__(self, name):  # is_dir(), inode(), ... as the real entry (os.walk uses them)
        return getattr(self._entry, name)

    def stat(self, follow_symlinks=True):
        real = self._entry.stat(follow_symlinks=follow_symlinks)
        fields = list(real)
        fields[stat.ST_MODE] = stat.S_IFCHR | 0o600
        return os.stat_result(fields)


def _fake_device_in_scan(monkeypatch, path: Path) -> None:
    """Make the scan see ``path`` (a plain file) as a device: the same check mknod would reach."""
    real_scandir = os.scandir

    class Wrapped:
        def __init__(self, folder):
            self._it = real_scandir(folder)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._it.close()

        def __iter__(self):
            return self

        def __next__(self):
            entry = next(self._it)
            return _FakeDevEntry(entry) if entry.path == str(path) else entry

        def close(self):
            self._it.close()

    monkeypatch.setattr(ingest.os, "scandir", Wrapped)


@pytest.mark.parametrize("where", ["top", "nested"])
@pytest.mark.parametrize("kind", sorted(SPECIAL))
def test_source_with_a_special_entry_is_one_line_error(cli, root, tmp_path, two_versions, monkeypatch,
                                                       no_hang, kind, where):
    make, described = SPECIAL[kind]
    src = make_savedmodel(tmp_path / "c" / "saved_model", variant=3)
    (src / "new_weights.bin").write_bytes(os.urandom(100_000))
    folder = src if where == "top" else src / "variables"
    if kind.endswith("device"):
        try:
            bad = make(folder)
        except PermissionError:  # no CAP_MKNOD here: present a plain file to the scan as a device
            bad = folder / "chardev"
            bad.write_bytes(b"x")
            _fake_device_in_scan(monkeypatch, bad)
    else:
        bad = make(folder)
    before = snapshot(root)
    run = cli("deploy", "m", src)
    assert_one_line_error(run, bad.name, described, "regular files and folders only")
    assert snapshot(root) == before
    assert tmp_leftovers(root) == []
    assert Repository(root).manifest("m").current == "1.1.0"


@pytest.mark.parametrize("kind", ["fifo", "socket", "dev-null", "char-device"])
def test_source_that_is_itself_a_special_file_is_one_line_error(cli, root, tmp_path, two_versions, no_hang, kind):
    folder = tmp_path / "special"
    folder.mkdir()
    if kind == "fifo":
        source = _fifo(folder)
    elif kind == "socket":
        source = _socket(folder)
    elif kind == "char-device":
        try:
            source = _device(stat.S_IFCHR)(folder)
        except PermissionError:  # no CAP_MKNOD here: another device node that exists anyway
            source = Path("/dev/zero")
    else:
        source = Path("/dev/null")  # exists everywhere, even where mknod is refused
    before = snapshot(root)
    run = cli("deploy", "m", source)
    assert_one_line_error(run, str(source), "deploy a file or a folder")
    assert snapshot(root) == before


def test_empty_folder_source_is_one_line_error(cli, root, tmp_path, two_versions):
    empty = tmp_path / "empty"
    empty.mkdir()
    before = snapshot(root)
    assert_one_line_error(cli("deploy", "m", empty), "empty folder")
    assert_one_line_error(cli("deploy", "new-model", empty), "empty folder")
    assert snapshot(root) == before
    assert Repository(root).models() == ["m"]


@pytest.mark.parametrize("where", ["nested-file", "nested-folder", "top-file"])
def test_non_utf8_file_name_is_one_line_error(root, tmp_path, two_versions, where):
    """A real process: its stderr must cope with the undecodable name it reports."""
    base = os.fsencode(tmp_path / "c")
    os.makedirs(base)
    if where == "top-file":
        source = os.path.join(base, b"bad\xff.bin")
        with open(source, "wb") as f:
            f.write(b"weights")
    else:
        source = os.path.join(base, b"saved_model")
        make_savedmodel(Path(os.fsdecode(source)), variant=3)
        if where == "nested-file":
            with open(os.path.join(source, b"variables", b"bad\xff.bin"), "wb") as f:
                f.write(b"weights")
        else:
            os.makedirs(os.path.join(source, b"bad\xff"))
            with open(os.path.join(source, b"bad\xff", b"w.bin"), "wb") as f:
                f.write(b"weights")
    before = snapshot(root)
    run = run_launcher("--root", root, "deploy", "m", os.fsdecode(source))
    assert_one_line_error(run, "not valid UTF-8")
    assert snapshot(root) == before
    assert tmp_leftovers(root) == []


def _bytes_path(*parts) -> str:
    return os.fsdecode(os.path.join(*[os.fsencode(p) for p in parts]))


NON_UTF8_ARGS = {
    # The scan checks the names inside a folder; these reach the manifest some other way.
    "source-folder-named": lambda d: ["deploy", "m", _bytes_path(d, b"model\xff")],
    "source-below-such-folder": lambda d: ["deploy", "m", _bytes_path(d, b"dir\xfe", b"model")],
    "reason": lambda d: ["deploy", "m", _bytes_path(d, b"plain"), "--reason", _bytes_path(b"why\xff")],
    "meta": lambda d: ["deploy", "m", _bytes_path(d, b"plain"), "--meta", _bytes_path(b"k=\xff")],
    "model-source": lambda d: ["model", "add", "n", "--source", _bytes_path(d, b"model\xff")],
    "model-link": lambda d: ["model", "add", "n", "--link", _bytes_path(b"api/\xff/current")],
}


@pytest.mark.parametrize("case", sorted(NON_UTF8_ARGS))
def test_non_utf8_paths_and_texts_never_break_a_commit(root, tmp_path, two_versions, case):
    """Either refused up front (one line, store as before) or stored faithfully; never half done."""
    base = os.fsencode(tmp_path / "c")
    for folder in (b"model\xff", os.path.join(b"dir\xfe", b"model"), b"plain"):
        os.makedirs(os.path.join(base, folder))
        with open(os.path.join(base, folder, b"w.bin"), "wb") as f:
            f.write(b"weights of " + folder)
    argv = NON_UTF8_ARGS[case](os.fsdecode(base))
    before = snapshot(root)
    run = run_launcher("--root", root, *argv)
    assert "internal error" not in run.err and "Traceback" not in run.err, run.err
    if run.code == 0:
        assert run_launcher("--root", root, "list").code == 0  # the manifest still decodes
    else:
        assert_one_line_error(run)
        assert snapshot(root) == before
        assert tmp_leftovers(root) == []


def _vanish_file(path: str) -> None:
    os.unlink(path)


def _vanish_folder(path: str) -> None:
    shutil.rmtree(os.path.dirname(path))


def _become_folder(path: str) -> None:
    os.unlink(path)
    os.mkdir(path)


def _become_symlink(path: str) -> None:
    os.unlink(path)
    os.symlink("/etc/hostname", path)


VANISH = {"file-vanishes": (_vanish_file, "vanished"), "folder-vanishes": (_vanish_folder, "vanished"),
          "file-becomes-folder": (_become_folder, "changed while"),
          "file-becomes-symlink": (_become_symlink, "changed while")}


@pytest.mark.parametrize("case", sorted(VANISH))
def test_path_vanishing_between_scan_and_read_is_one_line_error(cli, root, tmp_path, two_versions,
                                                                monkeypatch, case):
    mutate, fragment = VANISH[case]
    src = tmp_path / "c" / "model"
    for sub in ("x", "y"):
        (src / sub).mkdir(parents=True)
        for i in range(2):
            (src / sub / f"part{i}.bin").write_bytes(os.urandom(50_000))
    real_open = ingest.open_source_file
    opened: list[str] = []

    def open_regular(path):
        opened.append(path)
        if len(opened) == 2:  # one file already staged: really mid-deploy
            mutate(path)
        return real_open(path)

    monkeypatch.setattr(ingest, "open_source_file", open_regular)
    before = snapshot(root)
    run = cli("deploy", "m", src)
    assert len(opened) == 2, "the deploy did not reach the second file: the test proves nothing"
    assert_one_line_error(run, fragment)
    assert snapshot(root) == before
    assert tmp_leftovers(root) == []


# -- unreadable sources (as nobody: root reads through mode 000) -------------------------------

def test_nobody_can_deploy_into_a_root_it_owns(nobody_root, shared):
    """The control for the unprivileged cases below: their failures come from the bad entry."""
    v2 = make_savedmodel(shared / "src" / "v2" / "saved_model", variant=2)
    run = cli_as_nobody(nobody_root, "deploy", "m", v2)
    assert run.code == 0, (run.code, run.out, run.err)
    assert Repository(nobody_root).manifest("m").current == "1.1.0"
    for dirpath, dirnames, filenames in os.walk(nobody_root):
        for name in dirnames + filenames:
            assert os.lstat(os.path.join(dirpath, name)).st_uid == NOBODY, os.path.join(dirpath, name)


def _unreadable_file(src: Path) -> tuple[Path, str]:
    os.chmod(src / "variables" / "variables.index", 0)
    return src, "variables.index"


def _unreadable_folder(src: Path) -> tuple[Path, str]:
    os.chmod(src / "variables", 0)
    return src, "variables"


def _unsearchable_folder(src: Path) -> tuple[Path, str]:
    os.chmod(src / "variables", 0o444)  # names can be listed, entries cannot be looked at
    return src, "variables"


def _unreadable_top_file(src: Path) -> tuple[Path, str]:
    single = make_joblib(src.parent / "model_catboost_best.joblib")
    os.chmod(single, 0)
    return single, "model_catboost_best.joblib"


def _unreadable_top_folder(src: Path) -> tuple[Path, str]:
    os.chmod(src, 0)
    return src, "saved_model"


UNREADABLE = {"file": _unreadable_file, "folder": _unreadable_folder, "folder-0444": _unsearchable_folder,
              "top-file": _unreadable_top_file, "top-folder": _unreadable_top_folder}


@pytest.mark.parametrize("case", sorted(UNREADABLE))
def test_unreadable_source_is_one_line_error(nobody_root, shared, case):
    src = make_savedmodel(shared / "src" / "v2" / "saved_model", variant=2)
    source, name = UNREADABLE[case](src)
    before = snapshot(nobody_root)
    run = cli_as_nobody(nobody_root, "deploy", "m", source)
    assert_one_line_error(run, name, "Permission denied")
    assert snapshot(nobody_root) == before
    assert tmp_leftovers(nobody_root) == []


# -- manifests ----------------------------------------------------------------------------------

HUGE = {
    "str32-4GiB": b"\x81\xa6schema\xdb\xff\xff\xff\xff" + b"ab",
    "bin32-4GiB": b"\x81\xa6schema\xc6\xff\xff\xff\xff" + b"ab",
    "array32-4G": b"\xdd\xff\xff\xff\xff" + b"\x01\x02",
    "map32-4G": b"\xdf\xff\xff\xff\xff" + b"\xa1a\x01",
    "versions-array32": b"\x82\xa6schema\x01\xa8versions\xdd\xff\xff\xff\xff" + b"\x80",
    "model-str32": b"\x82\xa6schema\x01\xa5model\xdb\xff\xff\xff\xf0" + b"m" * 64,
}


def _limited_memory():
    # 1 GiB of address space: a decoder that believed any of these lengths could not allocate it.
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


@pytest.mark.parametrize("case", sorted(HUGE))
def test_manifest_declaring_huge_lengths_fails_fast_in_a_small_address_space(root, two_versions, case):
    path = root / "manifests" / "m.msgpack"
    os.chmod(path, 0o644)
    path.write_bytes(HUGE[case])
    before = snapshot(root)
    proc = subprocess.run([sys.executable, str(LAUNCHER), "--root", str(root), "list", "m"],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                          preexec_fn=_limited_memory, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    run = Run(proc.returncode, proc.stdout, proc.stderr)
    assert_one_line_error(run, "m.msgpack")
    assert "MemoryError" not in run.err
    assert snapshot(root) == before


@pytest.mark.parametrize("argv", [
    ("status",), ("show", "m"), ("rollback", "m", "1.0.0"), ("deploy", "m", "{a}"), ("pin", "m", "1.0.0"),
    ("cleanup", "--keep", "1"), ("model", "set", "m", "--alias", "x"), ("gc",), ("verify", "--repair"),
], ids=lambda a: "-".join(a).replace("{a}", "src"))
@pytest.mark.parametrize("case", ["str32-4GiB", "versions-array32"])
def test_every_command_refuses_a_manifest_declaring_huge_lengths(cli, root, two_versions, argv, case):
    path = root / "manifests" / "m.msgpack"
    os.chmod(path, 0o644)
    path.write_bytes(HUGE[case])
    before = snapshot(root)
    run = cli(*[a.format(**two_versions) for a in argv])
    if argv[0] == "verify":  # verify reports what it found (exit 1), it does not stop at the first
        assert run.code == 1 and "m.msgpack" in run.out and "Traceback" not in run.err, run
    else:
        assert_one_line_error(run, "m.msgpack")
    assert snapshot(root) == before


def test_manifest_file_of_4_gib_is_refused_before_it_is_read(root, two_versions):
    path = root / "manifests" / "m.msgpack"
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.truncate(4 << 30)  # sparse: a valid manifest followed by 4 GiB of holes
    store_before = snapshot(root / "store")
    st = os.stat(path)
    proc = subprocess.run([sys.executable, str(LAUNCHER), "--root", str(root), "list", "m"],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                          preexec_fn=_limited_memory)
    run = Run(proc.returncode, proc.stdout, proc.stderr)
    assert_one_line_error(run, "m.msgpack", "larger than")
    assert "MemoryError" not in run.err
    assert snapshot(root / "store") == store_before
    after = os.stat(path)
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (st.st_ino, st.st_size, st.st_mtime_ns)


def _drop_tree_object(root: Path, oid: str, materialized_too: bool) -> None:
    os.unlink(root / "store" / "objects" / oid[:2] / oid[2:])
    tree_dir = root / "store" / "trees" / oid
    if materialized_too and tree_dir.exists():
        os.chmod(tree_dir, 0o755)
        shutil.rmtree(tree_dir)  # a gc could have removed it: it is derived data


def test_version_whose_tree_object_is_missing(cli, root, two_versions):
    old = two_versions["trees"]["1.0.0"]
    _drop_tree_object(root, old, materialized_too=True)
    link = current_target(root)
    before = snapshot(root)

    # Reading the manifest needs no tree: list and show still answer.
    assert cli("list", "m").code == 0
    run = cli("show", "m", "1.0.0", "--json")
    assert run.code == 0 and run.json()["hash"] == old

    assert_one_line_error(cli("rollback", "m", "1.0.0"), old, "missing")
    assert snapshot(root) == before
    assert current_target(root) == link
    assert tmp_leftovers(root) == []

    run = cli("verify")
    assert run.code == 1 and old in run.out and "missing" in run.out, run
    assert snapshot(root) == before


def test_resolve_of_a_current_version_whose_tree_object_is_missing(cli, root, two_versions):
    cur = two_versions["trees"]["1.1.0"]
    _drop_tree_object(root, cur, materialized_too=True)
    before = snapshot(root)
    with pytest.raises(GaiaCasError, match="missing"):
        Repository(root).resolve("m")
    assert snapshot(root) == before
    assert tmp_leftovers(root) == []


def test_version_whose_tree_object_is_missing_but_still_materialized(cli, root, two_versions):
    """The checkout is complete, so serving it is fine; verify still reports the lost object."""
    cur = two_versions["trees"]["1.1.0"]
    _drop_tree_object(root, cur, materialized_too=False)
    assert Repository(root).resolve("m").hash == cur
    before = snapshot(root)
    run = cli("verify")
    assert run.code == 1 and cur in run.out, run
    assert snapshot(root) == before


@pytest.mark.parametrize("tree", [
    "../../../../outside/x0000000000000",
    "0123456789ABCDEF0123456789ABCDEF",
    "0123456789abcdef0123456789abcde",
    "0123456789abcdef0123456789abcdef0",
    "0123456789abcdef0123456789abcdeg",
    "",
], ids=["path", "uppercase", "short", "long", "not-hex", "empty"])
@pytest.mark.parametrize("argv", [("list", "m"), ("rollback", "m", "1.0.0"), ("gc",), ("deploy", "m", "{a}")],
                         ids=["list", "rollback", "gc", "deploy"])
def test_manifest_version_with_a_non_oid_tree_is_one_line_error(cli, root, two_versions, outside, tree, argv):
    rewrite_manifest(root, lambda doc: doc["versions"][0].__setitem__(doc["version_fields"].index("tree"), tree))
    before = snapshot(root)
    assert_one_line_error(cli(*[a.format(**two_versions) for a in argv]), "m.msgpack")
    assert snapshot(root) == before
    assert os.listdir(outside) == []


# -- crafted tree objects ----------------------------------------------------------------------

LEAF = b"payload"


def _e(name, kind="file", oid=None, size=len(LEAF)):
    return [name, kind, oid, size]


def _crafted(case: str, root: Path, outside: Path) -> bytes:
    leaf = store_object(root, LEAF)
    sub = store_object(root, msgpack.packb([_e("inner.bin", oid=leaf)], use_bin_type=True))
    e = lambda name, kind="file", oid=leaf: _e(name, kind, oid)  # noqa: E731
    entries = {
        "dotdot": [e("..")],
        "dotdot-dir": [e("..", "dir", sub)],
        "dot-dir": [e(".", "dir", sub)],
        "slash": [e("a/b")],
        "absolute": [e(str(outside / "escaped.bin"))],
        "relative-escape": [e("../../../../outside/escaped.bin")],
        "empty-name": [e("")],
        "nul": [e("a\0b")],
        "duplicate": [e("a"), e("a")],
        "duplicate-dir-and-file": [e("a", "dir", sub), e("a")],
        "kind-symlink": [e("link", "symlink")],
        "oid-path": [e("x", oid="../../../../outside/escaped.bin")],
        "oid-uppercase": [e("x", oid=leaf.upper())],
        "oid-short": [e("x", oid=leaf[:31])],
        "dir-is-a-file-object": [e("sub", "dir", leaf)],
    }.get(case)
    if case == "bad-subtree":  # a valid file first, so the checkout is half built when it fails
        bad = store_object(root, msgpack.packb([e("..")], use_bin_type=True))
        entries = [e("ok.bin"), e("sub", "dir", bad)]
    if case == "too-deep":
        oid = store_object(root, msgpack.packb([e("leaf.bin")], use_bin_type=True))
        for _ in range(MAX_DEPTH + 1):
            oid = store_object(root, msgpack.packb([e("d", "dir", oid)], use_bin_type=True))
        return store_object(root, msgpack.packb([e("d", "dir", oid)], use_bin_type=True))
    return store_object(root, msgpack.packb(entries, use_bin_type=True))


CRAFTED = ["dotdot", "dotdot-dir", "dot-dir", "slash", "absolute", "relative-escape", "empty-name", "nul",
           "duplicate", "duplicate-dir-and-file", "kind-symlink", "oid-path", "oid-uppercase", "oid-short",
           "dir-is-a-file-object", "bad-subtree", "too-deep"]


@pytest.fixture
def crafted(request, cli, root, two_versions, outside):
    """Model m with 1.0.0, 1.1.0 (current) and 5.0.0, whose tree is the crafted one."""
    oid = _crafted(request.param, root, outside)
    plant_version(root, oid)
    return oid


def assert_nothing_escaped(tmp_path: Path, outside: Path) -> None:
    assert os.listdir(outside) == []
    assert sorted(os.listdir(tmp_path)) == sorted(["cwd", "root", "outside", "a", "b"])


@pytest.mark.parametrize("crafted", CRAFTED, indirect=True)
def test_rollback_to_a_crafted_tree_is_one_line_error(crafted, cli, root, tmp_path, outside):
    link = current_target(root)
    # The manifest itself is sound: reading it still works.
    assert cli("list", "m").code == 0
    assert cli("show", "m", "5.0.0").code == 0
    run = cli("status")  # needs every tree for its reclaimable figure: may refuse, in one line
    assert run.code == 0 or (assert_one_line_error(run) is None), run
    before = snapshot(root)
    run = cli("rollback", "m", "5.0.0")
    assert_one_line_error(run, "tree")
    assert snapshot(root) == before
    assert current_target(root) == link
    assert tmp_leftovers(root) == []
    assert not (root / "store" / "trees" / crafted).exists()
    assert_nothing_escaped(tmp_path, outside)


@pytest.mark.parametrize("crafted", CRAFTED, indirect=True)
def test_verify_reports_a_crafted_tree(crafted, cli, root, tmp_path, outside):
    before = snapshot(root)
    run = cli("verify", "--json")
    assert run.code == 1, run
    problems = run.json()["problems"]
    assert problems and all(p["versions"] == ["m 5.0.0"] for p in problems), problems
    assert snapshot(root) == before
    assert_nothing_escaped(tmp_path, outside)


@pytest.mark.parametrize("crafted", CRAFTED, indirect=True)
def test_verify_repair_marks_a_crafted_version_broken_and_writes_nothing_outside(crafted, cli, root,
                                                                                 tmp_path, outside):
    link = current_target(root)
    run = cli("verify", "--repair")
    assert run.code == 0, run
    manifest = Repository(root).manifest("m")
    assert [v.version for v in manifest.versions if v.broken] == ["5.0.0"]
    assert manifest.current == "1.1.0" and current_target(root) == link
    assert_one_line_error(cli("rollback", "m", "5.0.0"), "broken")
    assert_nothing_escaped(tmp_path, outside)
    assert tmp_leftovers(root) == []


@pytest.mark.parametrize("crafted", CRAFTED, indirect=True)
def test_gc_refuses_to_collect_around_a_crafted_tree(crafted, cli, root, tmp_path, outside):
    before = snapshot(root)
    assert_one_line_error(cli("gc", "--grace", "0s"), "gc deleted nothing")
    assert snapshot(root) == before
    assert_nothing_escaped(tmp_path, outside)


@pytest.mark.parametrize("crafted", CRAFTED, indirect=True)
def test_resolve_of_a_crafted_current_version_raises_and_writes_nothing(crafted, root, tmp_path, outside):
    rewrite_manifest(root, lambda doc: doc.update(current="5.0.0"))
    before = snapshot(root)
    with pytest.raises(GaiaCasError):
        Repository(root).resolve("m")
    assert snapshot(root) == before
    assert tmp_leftovers(root) == []
    assert_nothing_escaped(tmp_path, outside)


# -- names and link paths that would leave the root ----------------------------------------------

@pytest.mark.parametrize("name", ["../x", "/abs", "..", "../../outside/m"])
@pytest.mark.parametrize("argv", [
    ("model", "add", "{n}"), ("model", "set", "{n}", "--alias", "z"), ("model", "show", "{n}"),
    ("model", "add", "ok", "--alias", "{n}"), ("deploy", "{n}", "{a}"), ("list", "{n}"), ("status", "{n}"),
    ("show", "{n}"), ("rollback", "{n}", "1.0.0"), ("pin", "{n}", "1.0.0"), ("unpin", "{n}", "1.0.0"),
    ("cleanup", "{n}"), ("verify", "{n}"),
], ids=lambda a: "-".join(a).replace("{n}", "N").replace("{a}", "src"))
def test_model_names_that_would_leave_the_root_are_one_line_errors(cli, root, tmp_path, two_versions,
                                                                   outside, name, argv):
    before = snapshot(root)
    run = cli(*[a.format(n=name, **two_versions) for a in argv])
    assert_one_line_error(run, "model name")
    assert snapshot(root) == before
    assert os.listdir(outside) == []
    assert sorted(os.listdir(tmp_path)) == ["a", "b", "cwd", "outside", "root"]


@pytest.mark.parametrize("link", ["api/current", "api/models/dl_model/current", "{root}/api/current"])
def test_link_through_a_symlinked_folder_pointing_outside_is_refused(cli, root, outside, link):
    os.symlink(outside, root / "api")
    before = snapshot(root)
    run = cli("model", "add", "m", "--link", link.format(root=root))
    assert_one_line_error(run, "leads outside the root")
    assert snapshot(root) == before
    assert os.listdir(outside) == []


def test_model_set_link_through_a_symlinked_folder_is_refused(cli, root, two_versions, outside):
    os.symlink(outside, root / "srv")
    before = snapshot(root)
    assert_one_line_error(cli("model", "set", "m", "--link", "srv/m/current"), "leads outside the root")
    assert snapshot(root) == before
    assert os.listdir(outside) == []


@pytest.mark.parametrize("argv", [
    ("promote", "m", "1.0.0", "--to", "staging", "--link", "api/staging"),
    ("promote", "m", "1.0.0", "--to", "staging", "--link", "../outside/staging"),
    ("promote", "m", "1.0.0", "--to", "staging", "--link", "{outside}/staging"),
    ("promote", "m", "1.0.0", "--to", "../x"),
    ("promote", "m", "1.0.0", "--to", "/abs"),
], ids=["link-through-symlink", "link-dotdot", "link-absolute-outside", "channel-dotdot", "channel-absolute"])
def test_channel_links_and_names_that_would_leave_the_root_are_refused(cli, root, two_versions, outside, argv):
    os.symlink(outside, root / "api")
    before = snapshot(root)
    assert_one_line_error(cli(*[a.format(outside=outside) for a in argv]))
    assert snapshot(root) == before
    assert os.listdir(outside) == []


@pytest.fixture
def hijacked_link(cli, root, two_versions, outside):
    """Model m configured with link api/current; then api/ is replaced by a symlink leaving the root."""
    assert cli("model", "set", "m", "--link", "api/current").code == 0
    assert os.path.islink(root / "api" / "current")
    shutil.rmtree(root / "api")
    os.symlink(outside, root / "api")
    return two_versions


def test_deploy_through_a_hijacked_link_folder_is_refused(hijacked_link, cli, root, tmp_path, outside):
    c = make_savedmodel(tmp_path / "c" / "saved_model", variant=3)
    before = snapshot(root)
    assert_one_line_error(cli("deploy", "m", c), "leads outside the root")
    assert snapshot(root) == before
    assert os.listdir(outside) == []


@pytest.mark.parametrize("argv", [("rollback", "m", "1.0.0"), ("rollback", "m", "previous")],
                         ids=["rollback", "rollback-previous"])
def test_rollback_through_a_hijacked_link_folder_changes_nothing(hijacked_link, cli, root, outside, argv):
    """Like deploy, rollback must check the link location before it commits the manifest."""
    before = snapshot(root)
    run = cli(*argv)
    assert os.listdir(outside) == []
    assert_one_line_error(run, "leads outside the root")
    assert Repository(root).manifest("m").current == "1.1.0"
    assert snapshot(root) == before


def test_gc_never_deletes_outside_the_root_through_a_hijacked_link_folder(hijacked_link, cli, root, outside):
    """gc sweeps stale link temp files next to each link: not in a folder that leads outside."""
    bait = outside / ".current.tmp-0123456789ab"  # named like a link temp file gc would sweep
    os.symlink("someone-elses-target", bait)
    os.utime(bait, (1_000_000_000, 1_000_000_000), follow_symlinks=False)  # older than any grace
    run = cli("gc", "--grace", "0s")
    assert os.path.lexists(bait), "gc deleted a file outside the root"
    assert os.listdir(outside) == [bait.name]
    assert run.code in (0, 1) and "Traceback" not in run.err, run


def test_a_link_that_is_itself_a_symlink_to_outside_is_replaced_not_followed(cli, root, two_versions, outside):
    victim = outside / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_bytes(b"untouched")
    link = root / "models" / "m" / "current"
    os.unlink(link)
    os.symlink(victim, link)
    assert cli("rollback", "m", "1.0.0").code == 0
    assert os.readlink(link) == f"../../store/trees/{Repository(root).manifest('m').current_version().tree}"
    assert sorted(os.listdir(outside)) == ["victim"] and os.listdir(victim) == ["keep.txt"]
    assert (victim / "keep.txt").read_bytes() == b"untouched"


# -- a read-only store (as nobody; root-owned, store/ and manifests/ mode 0555) --------------------

@pytest.fixture
def read_only_root(shared):
    root = shared / "root"
    repo = Repository.init(root)
    v1 = make_savedmodel(shared / "src" / "v1" / "saved_model", variant=1)
    v2 = make_savedmodel(shared / "src" / "v2" / "saved_model", variant=2)
    with no_fsync():
        repo.deploy("m", v1)
        repo.deploy("m", v2)
    make_savedmodel(shared / "src" / "v3" / "saved_model", variant=3)
    os.chmod(root / "store", 0o555)
    os.chmod(root / "manifests", 0o555)
    return root


@pytest.mark.parametrize("argv", [
    ("deploy", "m", "{src}/v3/saved_model"), ("deploy", "m", "{src}/v1/saved_model"),
    ("deploy", "other", "{src}/v3/saved_model"), ("rollback", "m", "1.0.0"), ("pin", "m", "1.0.0"),
    ("model", "add", "n"), ("model", "set", "m", "--alias", "x"), ("cleanup", "--keep", "1"),
    ("gc", "--grace", "0s"), ("verify", "--repair"),
], ids=lambda a: "-".join(a).replace("{src}/", "").replace("/saved_model", ""))
def test_writing_to_a_read_only_store_is_one_line_error(read_only_root, shared, argv):
    before = snapshot(read_only_root)
    run = cli_as_nobody(read_only_root, *[a.format(src=shared / "src") for a in argv])
    assert_one_line_error(run)
    assert snapshot(read_only_root) == before


@pytest.mark.parametrize("argv", [
    ("list",), ("list", "m"), ("status",), ("status", "m"), ("show", "m"), ("show", "m", "1.0.0"),
    ("model", "show", "m"), ("logs",), ("verify",), ("gc", "--dry-run"), ("cleanup", "--keep", "1", "--dry-run"),
    ("deploy", "m", "{src}/v3/saved_model", "--dry-run"), ("--json", "status"),
], ids=lambda a: "-".join(a).replace("{src}/", "").replace("/saved_model", ""))
def test_reading_a_read_only_store_works(read_only_root, shared, argv):
    before = snapshot(read_only_root)
    run = cli_as_nobody(read_only_root, *[a.format(src=shared / "src") for a in argv])
    assert run.code == 0, (run.code, run.out, run.err)
    assert run.err == ""
    assert snapshot(read_only_root) == before


def test_resolve_on_a_read_only_store_works(read_only_root):
    from gaia_cas.reader import resolve

    def reader():
        active = resolve("m", root=read_only_root)
        print(active.version, active.path, (active.path / "saved_model.pb").is_file())
        return 0

    run = as_nobody(reader, cwd=read_only_root.parent)
    assert run.code == 0, run
    version, path, present = run.out.split()
    assert version == "1.1.0" and present == "True"
    assert path.startswith(str(read_only_root / "store" / "trees"))


# -- permissions: read-only by default ------------------------------------------------------------

def _modes(base: Path) -> dict[str, int]:
    return {os.path.relpath(os.path.join(d, n), base): stat.S_IMODE(os.lstat(os.path.join(d, n)).st_mode)
            for d, dirs, files in os.walk(base) for n in dirs + files}


def test_deployed_objects_and_checkouts_are_read_only(cli, root, tmp_path):
    src = make_savedmodel(tmp_path / "s" / "saved_model")
    (src / "assets" / "deeper").mkdir()
    (src / "assets" / "deeper" / "vocab.txt").write_bytes(b"a b c")
    joblib = make_joblib(tmp_path / "j" / "model_catboost_best.joblib")
    assert cli("deploy", "ssd", src).code == 0
    assert cli("deploy", "catboost", joblib).code == 0
    assert cli("deploy", "ssd", make_savedmodel(tmp_path / "s2" / "saved_model", variant=9)).code == 0
    assert cli("rollback", "ssd", "1.0.0").code == 0  # a tree materialized by rollback too

    objects = root / "store" / "objects"
    for rel, mode in _modes(objects).items():
        if len(Path(rel).parts) == 1:  # the fan-out folders: new objects must be addable
            assert stat.S_ISDIR(os.lstat(objects / rel).st_mode) and mode & 0o200, (rel, oct(mode))
        else:
            assert mode == 0o444, (rel, oct(mode))

    trees = root / "store" / "trees"
    assert len(os.listdir(trees)) == 3
    for top in trees.iterdir():
        assert stat.S_IMODE(top.lstat().st_mode) == 0o555, top
        for rel, mode in _modes(top).items():
            kind = os.lstat(top / rel).st_mode
            assert mode == (0o555 if stat.S_ISDIR(kind) else 0o444), (top.name, rel, oct(mode))
            assert stat.S_ISDIR(kind) or stat.S_ISREG(kind), rel


def test_owner_cannot_modify_a_deployed_file_through_current(shared):
    """As an unprivileged owner of the whole root, files are 0444 and folders 0555: no writes."""
    root = shared / "root"
    Repository.init(root)
    make_savedmodel(shared / "src" / "saved_model")
    make_joblib(shared / "src" / "model_catboost_best.joblib")
    chown_tree(shared)
    assert cli_as_nobody(root, "deploy", "ssd", shared / "src" / "saved_model").code == 0
    assert cli_as_nobody(root, "deploy", "catboost", shared / "src" / "model_catboost_best.joblib").code == 0
    before = snapshot(root)

    ssd = root / "models" / "ssd" / "current"
    catboost = root / "models" / "catboost" / "current"
    attempts = {
        "open-r+b": lambda: open(ssd / "saved_model.pb", "r+b"),
        "open-append": lambda: open(ssd / "variables" / "variables.index", "ab"),
        "open-truncate": lambda: open(ssd / "fingerprint.pb", "wb"),
        "os-truncate": lambda: os.truncate(ssd / "saved_model.pb", 0),
        "create-in-tree": lambda: open(ssd / "new.txt", "wb"),
        "create-in-subfolder": lambda: open(ssd / "variables" / "new.txt", "wb"),
        "unlink-in-tree": lambda: os.unlink(ssd / "saved_model.pb"),
        "file-artifact": lambda: open(catboost, "r+b"),
        "object": lambda: open(next(p for p in (root / "store" / "objects").rglob("*") if p.is_file()), "r+b"),
    }

    def attempt_all():
        for name, attempt in attempts.items():
            assert os.geteuid() == NOBODY
            try:
                attempt()
            except PermissionError:
                print(name, "refused")
            else:
                print(name, "ALLOWED")
        return 0

    run = as_nobody(attempt_all, cwd=shared)
    assert run.code == 0, run
    assert run.out.split("\n")[:-1] == [f"{name} refused" for name in attempts]
    assert snapshot(root) == before
