"""export / import: one version as a tar (the artifact under its own name plus metadata.json), a
faithful round trip, and hostile archives refused before anything is written anywhere."""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
import tempfile
from pathlib import Path

import pytest

import gaia_cas
from conftest import assert_one_line_error, make_joblib, make_savedmodel, snapshot

META = ["--meta", "architecture=SSD MobileNet V2", "--meta", "input_size=[320, 320]",
        "--meta", "detection_threshold=0.55", "--meta", "framework=tensorflow"]


def files_of(path: Path) -> dict[str, bytes]:
    if path.is_file():
        return {path.name: path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture
def ssd(cli, tmp_path):
    """Model ssd: 1.0.0 and 1.1.0 (current) of a SavedModel folder called saved_model."""
    src = tmp_path / "train" / "saved_model"
    make_savedmodel(src, 0)
    (src / "assets" / "labels.txt").write_text("person\ncar\n")
    assert cli("deploy", "ssd", src, *META, "--reason", "first").code == 0
    make_savedmodel(src, 1)
    assert cli("deploy", "ssd", src, *META, "--meta", "detection_threshold=0.6").code == 0
    return src


@pytest.fixture
def catboost(cli, tmp_path):
    path = make_joblib(tmp_path / "train" / "ml" / "model_catboost_best.joblib", 3)
    assert cli("deploy", "catboost", path, "--meta", "loss=Logloss", "--meta", "depth=6").code == 0
    return path


# -- export ----------------------------------------------------------------------------------

def test_export_holds_the_folder_under_its_own_name_and_metadata_json(cli, repo, ssd, tmp_path):
    out = tmp_path / "out" / "ssd.tar"
    out.parent.mkdir()
    run = cli("export", "ssd", "-o", out, "--json")
    assert run.code == 0, run.err
    assert run.json() == {"model": "ssd", "version": "1.1.0", "output": str(out)}
    assert os.listdir(out.parent) == ["ssd.tar"]  # no temp file left beside it
    version = repo.manifest("ssd").find("1.1.0")
    with tarfile.open(out) as tar:
        names = tar.getnames()
        assert {n.split("/")[0] for n in names} == {"metadata.json", "saved_model"}
        assert all(m.isfile() or m.isdir() for m in tar.getmembers())
        meta = json.loads(tar.extractfile("metadata.json").read())
        tar.extractall(tmp_path / "x", filter="data")  # a plain tar any tool can read
    assert files_of(tmp_path / "x" / "saved_model") == files_of(ssd)
    assert meta["architecture"] == "SSD MobileNet V2" and meta["input_size"] == [320, 320]
    assert meta["detection_threshold"] == 0.6 and meta["framework"] == "tensorflow"
    own = meta.pop("gaia_cas")  # gaia-cas's own fields, under their own key
    assert meta == version.metadata  # the user's fields, exactly as they are
    assert own["version"] == "1.1.0" and own["deployment_id"] == version.deployment_id
    assert own["hash"] == version.tree and own["size_bytes"] == version.size_bytes
    assert own["model"] == "ssd" and own["format"] == "savedmodel"


def test_export_of_a_file_model_holds_the_file_under_its_name(cli, catboost, tmp_path):
    out = tmp_path / "cb.tar"
    assert cli("export", "catboost", "-o", out).code == 0
    with tarfile.open(out) as tar:
        assert sorted(tar.getnames()) == ["metadata.json", "model_catboost_best.joblib"]
        assert tar.extractfile("model_catboost_best.joblib").read() == catboost.read_bytes()
        assert json.loads(tar.extractfile("metadata.json").read())["depth"] == 6


def test_export_of_an_older_version(cli, repo, ssd, tmp_path):
    out = tmp_path / "old.tar"
    assert "exported ssd 1.0.0" in cli("export", "ssd", "1.0", "-o", out).out
    assert cli("import", out, "copy").code == 0
    assert repo.manifest("copy").current_version().tree == repo.manifest("ssd").find("1.0.0").tree
    assert repo.manifest("ssd").current == "1.1.0"


def test_export_errors_are_one_line_and_write_nothing(cli, repo, root, ssd, tmp_path):
    before = snapshot(root)
    assert_one_line_error(cli("export", "ssd", "-o", tmp_path / "no" / "such" / "dir.tar"), "is not a folder")
    assert_one_line_error(cli("export", "ssd", "9.9", "-o", tmp_path / "a.tar"), "9.9")
    assert_one_line_error(cli("export", "nosuch", "-o", tmp_path / "a.tar"), "nosuch")
    assert not (tmp_path / "a.tar").exists() and not (tmp_path / "no").exists()
    assert snapshot(root) == before
    # a broken version is not exported
    entries = {e.name: e for e in repo.trees.entries(repo.manifest("ssd").find("1.0.0").tree)}
    obj = repo.objects.path(entries["saved_model.pb"].oid)
    os.chmod(obj, 0o644)
    obj.write_bytes(b"garbage")
    assert cli("verify", "--repair").code == 0
    assert_one_line_error(cli("export", "ssd", "1.0", "-o", tmp_path / "a.tar"), "broken")
    assert not (tmp_path / "a.tar").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tar") or ".tmp" in p.name] == []


# -- round trip ------------------------------------------------------------------------------

def test_round_trip_of_a_savedmodel_folder(cli, repo, root, ssd, tmp_path):
    out = tmp_path / "ssd.tar"
    assert cli("export", "ssd", "-o", out).code == 0
    run = cli("import", out, "detector", "--reason", "copy from staging box", "--json")
    assert run.code == 0, run.err
    doc = run.json()
    original = repo.manifest("ssd").find("1.1.0")
    assert (doc["model"], doc["version"], doc["hash"], doc["unchanged"]) == ("detector", "1.0.0", original.tree, False)
    copy = repo.manifest("detector").current_version()
    assert copy.tree == original.tree  # identical tree hash
    assert copy.metadata == original.metadata  # carried over, and nothing of the store's own fields added
    assert (copy.size_bytes, copy.file_count, copy.format, copy.artifact) == \
        (original.size_bytes, original.file_count, original.format, original.artifact)
    # the source names the archive and the artifact inside it, so a re-export keeps its name
    assert copy.reason == "copy from staging box" and copy.source == f"{out}!/saved_model"
    active = gaia_cas.resolve("detector", root=root)
    assert files_of(active.path) == files_of(ssd)
    assert doc["new_objects"] == 0  # the same bytes: nothing new in the store
    assert list((root / "store" / "tmp").iterdir()) == []  # the extraction is gone


def test_round_trip_of_a_joblib_file(cli, repo, root, catboost, tmp_path):
    out = tmp_path / "cb.tar"
    assert cli("export", "catboost", "-o", out).code == 0
    assert cli("import", out, "cb2").code == 0
    original = repo.manifest("catboost").current_version()
    copy = repo.manifest("cb2").current_version()
    assert copy.tree == original.tree and copy.name == "model_catboost_best.joblib"
    assert copy.metadata == {"loss": "Logloss", "depth": 6}
    active = gaia_cas.resolve("cb2", root=root)
    assert active.path.name == "model_catboost_best.joblib"
    assert active.path.read_bytes() == catboost.read_bytes()
    assert (root / "models" / "cb2" / "current").read_bytes() == catboost.read_bytes()


def test_round_trip_twice_keeps_the_artifact_name(cli, repo, ssd, tmp_path):
    """Re-exporting an imported folder must still name it saved_model, not after the tar it came from."""
    first = tmp_path / "first.tar"
    assert cli("export", "ssd", "-o", first).code == 0
    assert cli("import", first, "copy").code == 0
    second = tmp_path / "second.tar"
    assert cli("export", "copy", "-o", second).code == 0
    with tarfile.open(first) as a, tarfile.open(second) as b:
        assert sorted(a.getnames()) == sorted(b.getnames())
    with tarfile.open(second) as tar:
        assert {n.split("/")[0] for n in tar.getnames()} == {"metadata.json", "saved_model"}


def test_import_into_an_existing_model(cli, repo, ssd, tmp_path):
    old = tmp_path / "old.tar"
    assert cli("export", "ssd", "1.0", "-o", old).code == 0
    run = cli("import", old, "ssd", "--meta", "detection_threshold=0.7", "--json")
    assert run.code == 0, run.err
    assert run.json()["version"] == "1.2.0" and run.json()["previous"] == "1.1.0"
    new = repo.manifest("ssd").find("1.2.0")
    assert new.tree == repo.manifest("ssd").find("1.0.0").tree
    assert new.metadata["detection_threshold"] == 0.7  # --meta wins over the archive's
    again = cli("import", old, "ssd", "--json").json()
    assert again["unchanged"] is True and len(repo.manifest("ssd").versions) == 3
    assert cli("import", old, "ssd", "--force", "--json").json()["version"] == "1.3.0"


def test_import_of_a_gzipped_export(cli, repo, catboost, tmp_path):
    out = tmp_path / "cb.tar"
    assert cli("export", "catboost", "-o", out).code == 0
    gz = tmp_path / "cb.tar.gz"
    gz.write_bytes(gzip.compress(out.read_bytes()))
    assert cli("import", gz, "cb3").code == 0
    assert repo.manifest("cb3").current_version().tree == repo.manifest("catboost").current_version().tree


# -- hostile archives ------------------------------------------------------------------------

def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    return info, data


def _dir(name: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    return info, None


def _special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.mode = 0o644
    if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = 1, 3
    return info, None


def _valid_model() -> list:
    return [_file("metadata.json", json.dumps({"architecture": "ssd"}).encode()), _dir("saved_model"),
            _file("saved_model/saved_model.pb", b"\x08\x01pb"), _dir("saved_model/variables"),
            _file("saved_model/variables/variables.index", b"index")]


def write_tar(path: Path, members: list) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _truncated(path: Path, cut) -> None:
    big = _valid_model() + [_file("saved_model/variables/variables.data", os.urandom(200_000))]
    data = write_tar(path, big).read_bytes()
    path.write_bytes(data[: cut(len(data))])


def hostile(kind: str, path: Path, escape: Path, secret: Path) -> Path:
    """Write the hostile archive ``kind`` to ``path``; anything that escapes lands in ``escape``."""
    base = _valid_model()
    up = "../" * 8  # from store/tmp/<extraction>/ far above the root
    cases = {
        "dotdot": [_file(f"{up}pwned")],
        "dotdot-top": [_file("../pwned")],
        "absolute": [_file(str(escape / "pwned"))],
        "nested-dotdot": [_file(f"saved_model/variables/{up}pwned")],
        "dot-part": [_file("saved_model/./pwned")],
        "empty-part": [_file("saved_model//pwned")],
        "overlong-part": [_file("saved_model/" + "p" * 300)],
        "symlink": [_special("saved_model/link", tarfile.SYMTYPE, str(secret))],
        "symlink-then-write": [_special("saved_model/out", tarfile.SYMTYPE, str(escape)),
                               _file("saved_model/out/pwned")],
        "relative-symlink": [_special("saved_model/up", tarfile.SYMTYPE, up)],
        "hardlink": [_special("saved_model/hl", tarfile.LNKTYPE, str(secret))],
        "hardlink-inside": [_special("saved_model/hl", tarfile.LNKTYPE, "saved_model/saved_model.pb")],
        "chardev": [_special("saved_model/dev", tarfile.CHRTYPE)],
        "blockdev": [_special("saved_model/blk", tarfile.BLKTYPE)],
        "fifo": [_special("saved_model/fifo", tarfile.FIFOTYPE)],
        "duplicate": [_file("saved_model/saved_model.pb", b"second, different bytes")],
        "duplicate-dir-as-file": [_file("saved_model/variables", b"now a file")],
        "duplicate-metadata": [_file("metadata.json", b"{}")],
        "two-artifacts": [_file("model_catboost_best.joblib", b"\x80\x04pickle")],
    }
    if kind in cases:
        return write_tar(path, base + cases[kind])
    if kind == "no-artifact":
        return write_tar(path, [base[0]])
    if kind == "empty-tar":
        return write_tar(path, [])
    if kind == "malformed-metadata":
        return write_tar(path, [_file("metadata.json", b"{not json")] + base[1:])
    if kind == "metadata-not-an-object":
        return write_tar(path, [_file("metadata.json", b"[1, 2, 3]")] + base[1:])
    if kind == "metadata-not-utf8":
        return write_tar(path, [_file("metadata.json", b"\xff\xfe{}")] + base[1:])
    if kind == "not-a-tar":
        path.write_bytes(b"PK\x03\x04 this is a zip, or anything else" * 40)
        return path
    if kind == "empty-file":
        path.write_bytes(b"")
        return path
    if kind == "truncated-header":
        _truncated(path, lambda n: 1536 + 100)
        return path
    if kind == "truncated-data":
        _truncated(path, lambda n: n // 2)
        return path
    if kind == "gzipped-dotdot":
        plain = write_tar(path.with_suffix(".plain"), base + [_file(f"{up}pwned")])
        path.write_bytes(gzip.compress(plain.read_bytes()))
        plain.unlink()
        return path
    raise AssertionError(kind)


HOSTILE = {
    "dotdot": "'..'", "dotdot-top": "'..'", "absolute": "absolute", "nested-dotdot": "'..'",
    "dot-part": "'.'", "empty-part": "empty", "overlong-part": "longer than",
    "symlink": "a link", "symlink-then-write": "a link", "relative-symlink": "a link",
    "hardlink": "a link", "hardlink-inside": "a link",
    "chardev": "device", "blockdev": "device", "fifo": "FIFO",
    "duplicate": "twice", "duplicate-dir-as-file": "twice", "duplicate-metadata": "twice",
    "two-artifacts": "one model file or folder", "no-artifact": "found none", "empty-tar": "",
    "malformed-metadata": "metadata.json", "metadata-not-an-object": "metadata.json",
    "metadata-not-utf8": "metadata.json",
    "not-a-tar": "not a readable tar", "empty-file": "", "truncated-header": "", "truncated-data": "damaged",
    "gzipped-dotdot": "'..'", "missing": "does not exist",
}


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """An escape target, a secret a link could reach, and a private system temp folder to watch."""
    escape = tmp_path / "escape"
    escape.mkdir()
    secret = tmp_path / "secret.txt"
    secret.write_text("do not link me")
    systmp = tmp_path / "systmp"
    systmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(systmp))
    monkeypatch.setattr(tempfile, "tempdir", str(systmp))
    return escape, secret, systmp


def _everything_under(path: Path) -> set[str]:
    return {os.path.relpath(os.path.join(d, n), path) for d, dirs, files in os.walk(path) for n in dirs + files}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_archive_is_refused_and_nothing_is_written(cli, root, ssd, tmp_path, sandbox, kind):
    escape, secret, systmp = sandbox
    if kind == "missing":
        archive = tmp_path / "nope.tar"
    else:
        (tmp_path / "in").mkdir()
        archive = hostile(kind, tmp_path / "in" / "hostile.tar", escape, secret)
    archive_bytes = archive.read_bytes() if archive.exists() else None
    store_before = snapshot(root)
    outside_before = _everything_under(tmp_path) - _everything_under(root)

    for target in ("ssd", "fresh"):  # into an existing model, and into a new one
        run = cli("import", archive, target)
        assert_one_line_error(run, HOSTILE[kind])

        assert snapshot(root) == store_before  # store, manifests, logs, links: exactly as before
        assert list((root / "store" / "tmp").iterdir()) == []
        assert _everything_under(tmp_path) - _everything_under(root) == outside_before  # nothing new elsewhere
        assert os.listdir(escape) == [] and os.listdir(systmp) == []
        assert not any("pwned" in p for p in _everything_under(tmp_path))
        assert os.stat(secret).st_nlink == 1 and secret.read_text() == "do not link me"
        if archive_bytes is not None:
            assert archive.read_bytes() == archive_bytes
    with pytest.raises(gaia_cas.GaiaCasError):
        gaia_cas.resolve("fresh", root=root)


def test_the_valid_base_of_the_hostile_archives_imports(cli, repo, root, tmp_path, sandbox):
    """The hostile cases are the valid base plus one bad thing: the base alone must import."""
    archive = write_tar(tmp_path / "ok.tar", _valid_model())
    run = cli("import", archive, "fresh", "--json")
    assert run.code == 0, run.err
    version = repo.manifest("fresh").current_version()
    assert version.metadata == {"architecture": "ssd"}
    active = gaia_cas.resolve("fresh", root=root)
    assert files_of(active.path) == {"saved_model.pb": b"\x08\x01pb", "variables/variables.index": b"index"}
    assert list((root / "store" / "tmp").iterdir()) == []
    assert os.listdir(sandbox[2]) == []


def test_archive_without_metadata_json_imports_with_no_metadata(cli, repo, tmp_path):
    archive = write_tar(tmp_path / "bare.tar", [_file("model.joblib", b"\x80\x04bare")])
    assert cli("import", archive, "bare").code == 0
    version = repo.manifest("bare").current_version()
    assert version.metadata == {} and version.name == "model.joblib"


def test_import_into_an_invalid_model_name_is_one_line(cli, root, ssd, tmp_path):
    out = tmp_path / "ssd.tar"
    assert cli("export", "ssd", "-o", out).code == 0
    before = snapshot(root)
    assert_one_line_error(cli("import", out, "Bad/Name"), "invalid model name")
    assert_one_line_error(cli("import", out, "all"), "reserved")
    assert snapshot(root) == before


def test_export_of_files_with_equal_content_imports_again(repo, tmp_path, cli):
    src = make_savedmodel(tmp_path / "m")
    (src / "a.txt").write_bytes(b"same")
    (src / "b.txt").write_bytes(b"same")  # one object, two hard links in the materialized tree
    repo.deploy("m", src)
    out = tmp_path / "m.tar"
    assert cli("export", "m", "-o", out).code == 0
    with tarfile.open(out) as tar:
        assert not any(m.islnk() or m.issym() for m in tar.getmembers())
    run = cli("import", out, "copy", "--json")
    assert run.code == 0, run.err
    assert run.json()["hash"] == repo.manifest("m").current_version().tree



def test_importing_an_archive_leaves_no_stat_cache_entries(repo, root, tmp_path, cli):
    repo.deploy("m", make_savedmodel(tmp_path / "s"))
    out = tmp_path / "m.tar"
    cli("export", "m", "-o", out)
    cache = root / "store" / "statcache.msgpack"
    before = cache.read_bytes() if cache.exists() else b""
    assert cli("import", out, "copy").code == 0
    after = cache.read_bytes() if cache.exists() else b""
    assert after == before
