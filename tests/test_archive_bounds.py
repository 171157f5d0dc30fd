"""import of an archive is bounded: a decompression bomb or a sparse member is refused before a
byte is written, free space is checked against the declared sizes, a metadata.json that is not
metadata is a one-line error -- while real (incompressible) weights import as before. And export
keeps the user's metadata exactly as it is, gaia-cas's own fields under their own key."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest

import gaia_cas
from conftest import assert_one_line_error, make_savedmodel, snapshot


def _write_tar(path: Path, members: dict, mode: str = "w:gz") -> Path:
    """members: name -> bytes (a file) or None (a folder)."""
    with tarfile.open(path, mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
    return path


class _Zeros(io.RawIOBase):
    def __init__(self, size):
        self.left = size

    def readable(self):
        return True

    def readinto(self, b):
        n = min(len(b), self.left)
        b[:n] = bytes(n)
        self.left -= n
        return n


def _bomb(path: Path, size: int) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("model.bin")
        info.size, info.mode = size, 0o644
        tar.addfile(info, _Zeros(size))
    return path


def _store_unchanged(root: Path, before: dict) -> None:
    after = snapshot(root)
    assert {k: v for k, v in after.items() if not k.startswith("logs")} == \
        {k: v for k, v in before.items() if not k.startswith("logs")}


# -- item 13.13: bombs, sparse members, free space -------------------------------------------

def test_a_decompression_bomb_is_refused_before_anything_is_written(cli, root, tmp_path):
    bomb = _bomb(tmp_path / "bomb.tar.gz", 32 << 20)  # 32 MiB of zeros in ~32 KiB
    assert bomb.stat().st_size < 100 << 10
    before = snapshot(root)
    run = cli("import", bomb, "m")
    assert_one_line_error(run, "model.bin", "more than 100 times", "--max-expansion")
    _store_unchanged(root, before)


def test_max_expansion_raises_the_limit(cli, root, tmp_path):
    bomb = _bomb(tmp_path / "zeros.tar.gz", 16 << 20)
    run = cli("import", bomb, "m", "--max-expansion", "100000", "--json")
    assert run.code == 0, run.err
    assert run.json()["size_bytes"] == 16 << 20
    assert_one_line_error(cli("import", bomb, "n", "--max-expansion", "0.5"), "--max-expansion")


def _gnu_sparse(path: Path, realsize: int) -> Path:
    """A 2 KiB GNU sparse tar whose one member declares ``realsize`` bytes."""
    info = tarfile.TarInfo("model.bin")
    info.size, info.mode = 512, 0o644
    header = bytearray(info.tobuf(tarfile.GNU_FORMAT))
    header[156:157] = b"S"
    header[386:398] = tarfile.itn(0, 12, tarfile.GNU_FORMAT)  # sparse map: data at offset 0 ...
    header[398:410] = tarfile.itn(512, 12, tarfile.GNU_FORMAT)  # ... 512 bytes of it
    header[482:483] = b"\0"  # no extension headers
    header[483:495] = tarfile.itn(realsize, 12, tarfile.GNU_FORMAT)
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header[:512])
    path.write_bytes(bytes(header[:512]) + b"w" * 512 + bytes(1024))
    return path


def test_a_sparse_member_is_refused(cli, root, tmp_path):
    sparse = _gnu_sparse(tmp_path / "sparse.tar", int(12.5 * (1 << 30)))
    assert sparse.stat().st_size == 2048
    with tarfile.open(sparse) as tar:  # it really is what it claims to be
        (member,) = tar.getmembers()
        assert member.issparse() and member.size == int(12.5 * (1 << 30))
    before = snapshot(root)
    assert_one_line_error(cli("import", sparse, "m"), "sparse")
    _store_unchanged(root, before)


def test_free_space_is_checked_against_the_declared_sizes_before_writing(cli, root, tmp_path, monkeypatch):
    archive = _write_tar(tmp_path / "a.tar.gz", {"model.bin": os.urandom(1 << 20)})
    import gaia_cas.archive as archive_module

    real = os.statvfs

    class Tiny:
        def __init__(self, st):
            self.f_frsize, self.f_bavail = st.f_frsize, (1 << 20) // st.f_frsize  # 1 MiB free

    monkeypatch.setattr(archive_module.os, "statvfs", lambda p: Tiny(real(p)))
    before = snapshot(root)
    assert_one_line_error(cli("import", archive, "m"), "declares 1048576 bytes", "free")
    _store_unchanged(root, before)


@pytest.mark.parametrize("mode, suffix", [("w:gz", "tar.gz"), ("w", "tar"), ("w:xz", "tar.xz")])
def test_realistic_incompressible_weights_still_import(cli, root, tmp_path, mode, suffix):
    weights = os.urandom(6 << 20)
    archive = _write_tar(tmp_path / f"w.{suffix}", {
        "metadata.json": json.dumps({"framework": "tensorflow"}).encode(),
        "saved_model": None, "saved_model/variables": None,
        "saved_model/saved_model.pb": b"\x08\x01" * 100,
        "saved_model/variables/variables.data-00000-of-00001": weights,
        "saved_model/variables/variables.index": b"\0" * 4096,  # a small, very compressible file
    }, mode)
    run = cli("import", archive, "m", "--json")
    assert run.code == 0, run.err
    active = gaia_cas.resolve("m", root=root)
    assert (active.path / "variables" / "variables.data-00000-of-00001").read_bytes() == weights
    assert active.metadata == {"framework": "tensorflow"}


# -- issue 13 "also": metadata.json that is not metadata -------------------------------------

@pytest.mark.parametrize("case, members, fragment", [
    ("folder", {"metadata.json": None, "metadata.json/x": b"{}"}, "metadata.json is a folder"),
    ("nested", {"metadata.json": b"[" * 10_000 + b"]" * 10_000}, "metadata.json"),
    ("nested-object", {"metadata.json": b'{"a":' * 10_000 + b"1" + b"}" * 10_000}, "metadata.json"),
    ("big-int", {"metadata.json": b'{"n": 18446744073709551616}'}, "'n'"),
    ("deep-but-parsable", {"metadata.json": b'{"a":' * 300 + b"1" + b"}" * 300}, "nested deeper"),
])
def test_metadata_json_that_is_not_metadata_is_a_one_line_error(cli, root, tmp_path, case, members, fragment):
    archive = _write_tar(tmp_path / "m.tar", {**members, "model.bin": b"weights"}, "w")
    before = snapshot(root)
    run = cli("import", archive, "m")
    assert_one_line_error(run, fragment)
    assert "internal error" not in run.err
    _store_unchanged(root, before)


# -- item 12.9: export keeps the user's metadata ---------------------------------------------

def test_export_keeps_the_users_fields_and_import_round_trips(cli, root, tmp_path):
    src = make_savedmodel(tmp_path / "src" / "saved_model")
    user = {"version": "1.5", "timestamp": "20250716_202917", "model": "mine", "hash": "not ours",
            "gaia_cas": "a field of the user's called gaia_cas", "detection_threshold": 0.5}
    argv = [a for k, v in user.items() for a in ("--meta", f"{k}={json.dumps(v)}")]
    assert cli("deploy", "ssd", src, *argv).code == 0
    out = tmp_path / "ssd.tar"
    assert cli("export", "ssd", "-o", out).code == 0
    with tarfile.open(out) as tar:
        doc = json.loads(tar.extractfile("metadata.json").read())
    own = doc.pop("gaia_cas")
    assert doc == {k: v for k, v in user.items() if k != "gaia_cas"}
    assert own["version"] == "1.0.0" and own["model"] == "ssd" and own["user_field"] == user["gaia_cas"]
    assert cli("import", out, "copy").code == 0
    repo = gaia_cas.Repository(root)
    assert repo.manifest("copy").current_version().metadata == user == repo.manifest("ssd").current_version().metadata
    # and again: an export of the copy carries the same user metadata
    again = tmp_path / "copy.tar"
    assert cli("export", "copy", "-o", again).code == 0
    assert cli("import", again, "copy2").code == 0
    assert repo.manifest("copy2").current_version().metadata == user


def test_an_archive_exported_by_an_earlier_release_still_imports_without_its_store_fields(cli, root, tmp_path):
    old = {"framework": "tensorflow", "model": "ssd", "version": "v1.1.0", "timestamp": "20250716_202917",
           "created_at": "2025-07-16T20:29:17+00:00", "hash": "0" * 32, "format": "savedmodel",
           "size_bytes": 7, "size_mb": 0.0, "file_count": 1, "reason": None, "user": "u", "host": "h"}
    archive = _write_tar(tmp_path / "old.tar", {"metadata.json": json.dumps(old).encode(), "model.bin": b"weights"}, "w")
    assert cli("import", archive, "m").code == 0
    assert gaia_cas.resolve("m", root=root).metadata == {"framework": "tensorflow"}


def test_an_archive_rewritten_between_validation_and_extraction_is_refused(cli, root, tmp_path, monkeypatch):
    """Deterministic interleaving: once the archive is validated, its owner rewrites it in place
    with a member 100 times larger. The extraction reads only what was validated."""
    archive = _write_tar(tmp_path / "a.tar", {"model.bin": b"w" * 1000}, "w")
    swapped = _write_tar(tmp_path / "b.tar", {"model.bin": os.urandom(100_000)}, "w").read_bytes()
    import gaia_cas.archive as archive_module

    real = archive_module._archive_metadata

    def rewrite_after_validation(path, checked):
        with open(archive, "r+b") as f:  # same inode: the importer's open file sees it
            f.write(swapped)
        return real(path, checked)

    monkeypatch.setattr(archive_module, "_archive_metadata", rewrite_after_validation)
    before = snapshot(root)
    assert_one_line_error(cli("import", archive, "m"), "changed while it was being imported")
    _store_unchanged(root, before)
