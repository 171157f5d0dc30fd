"""deploy --consume: the source is handed over to the store by hard link, then deleted.

The promises: no byte is copied where a link is possible; nothing of the source is lost if
the deploy fails before its commit; after the commit the source is gone except for files that
were added or changed meanwhile; and a source the store cannot safely own (inside the store,
files with other names, unwritable folders) is refused or copied, never linked.
"""

from __future__ import annotations

import errno
import os
import stat

import pytest
import xxhash

from conftest import assert_one_line_error, make_joblib, make_savedmodel, snapshot
from gaia_cas import deploy as deploy_verb
from gaia_cas import ingest, objects
from gaia_cas.errors import GaiaCasError, SourceError
from gaia_cas.reader import resolve
from gaia_cas.repo import Repository


def contents(folder):
    """relative path -> (bytes, inode) of every file under ``folder`` (bytes None if not regular)."""
    result = {}
    for dirpath, _, files in os.walk(folder):
        for name in files:
            full = os.path.join(dirpath, name)
            if not stat.S_ISREG(os.lstat(full).st_mode):
                result[os.path.relpath(full, folder)] = (None, os.lstat(full).st_ino)
                continue
            with open(full, "rb") as f:
                result[os.path.relpath(full, folder)] = (f.read(), os.lstat(full).st_ino)
    return result


def test_consume_links_every_file_into_the_store_and_removes_the_source(repo, root, tmp_path):
    source = make_savedmodel(tmp_path / "export" / "ssd", variables_bytes=300_000)
    before = contents(source)
    result = repo.deploy("ssd", source, consume=True)
    assert result.consumed == {"linked": len(before), "removed": len(before), "left": []}
    assert not source.exists() and (tmp_path / "export").is_dir()  # the source only, not its parent
    assert not [n for n in os.listdir(tmp_path / "export")]  # no hidden leftover either
    served = resolve("ssd", root).path
    for rel, (data, inode) in before.items():
        stored = served / rel
        assert stored.read_bytes() == data
        assert os.lstat(stored).st_ino == inode  # the very inode: no byte was copied
        assert stat.S_IMODE(os.lstat(stored).st_mode) == objects.READ_ONLY
        oid = xxhash.xxh3_128_hexdigest(data)
        assert os.path.samefile(repo.objects.path_str(oid), stored)
    assert repo.verify().problems == []


def test_consume_a_single_file(repo, root, tmp_path):
    source = make_joblib(tmp_path / "ml" / "model_catboost_best.joblib")
    data = source.read_bytes()
    result = repo.deploy("catboost", source, consume=True)
    assert result.consumed["linked"] == 1 and result.consumed["removed"] == 1
    assert not source.exists()
    assert resolve("catboost", root).path.name == "model_catboost_best.joblib"
    assert resolve("catboost", root).path.read_bytes() == data


def test_a_file_with_another_name_is_copied_not_linked(repo, root, tmp_path):
    """A second name could rewrite the object after the deploy: such a file is copied."""
    source = make_savedmodel(tmp_path / "ssd")
    other = tmp_path / "elsewhere.pb"
    os.link(source / "saved_model.pb", other)
    result = repo.deploy("ssd", source, consume=True)
    assert result.consumed["linked"] == result.file_count - 1 and not source.exists()
    stored = resolve("ssd", root).path / "saved_model.pb"
    kept = stored.read_bytes()
    other.write_bytes(b"rewritten through the other name")
    assert stored.read_bytes() == kept and not os.path.samefile(stored, other)


def test_another_filesystem_falls_back_to_a_copy(repo, root, tmp_path, monkeypatch):
    real_link = os.link

    def cross_device(src, dst, *args, **kwargs):
        if not str(src).startswith(str(root)):  # the source is "on another filesystem"
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_link(src, dst, *args, **kwargs)

    monkeypatch.setattr(objects.os, "link", cross_device)
    source = make_savedmodel(tmp_path / "ssd")
    expected = {rel: data for rel, (data, _) in contents(source).items()}
    result = repo.deploy("ssd", source, consume=True)
    assert result.consumed["linked"] == 0 and result.consumed["removed"] == result.file_count
    assert not source.exists()
    assert {rel: data for rel, (data, _) in contents(resolve("ssd", root).path).items()} == expected


def test_a_failed_deploy_consumes_nothing(repo, root, tmp_path, monkeypatch):
    source = make_savedmodel(tmp_path / "ssd")
    before = contents(source)
    store_before = snapshot(root)

    def refuse(*args, **kwargs):
        raise GaiaCasError("the commit failed")

    monkeypatch.setattr(deploy_verb, "commit", refuse)
    with pytest.raises(GaiaCasError, match="the commit failed"):
        repo.deploy("ssd", source, consume=True)
    assert {rel: data for rel, (data, _) in contents(source).items()} == {rel: d for rel, (d, _) in before.items()}
    # Only new objects were installed (gc's business); no manifest, no link, nothing in tmp.
    after = snapshot(root)
    assert not any(p.startswith("manifests/") and p.endswith(".msgpack") for p in after)
    assert not [p for p in after if p.startswith("store/tmp/") and p not in store_before]


def test_bad_source_is_refused_before_anything_is_linked(repo, root, tmp_path, no_hang):
    source = make_savedmodel(tmp_path / "ssd")
    os.mkfifo(source / "variables" / "pipe")
    before, store_before = contents(source), snapshot(root)
    with pytest.raises(SourceError, match="FIFO"):
        repo.deploy("ssd", source, consume=True)
    assert contents(source) == before and snapshot(root) == store_before


def test_the_store_itself_cannot_be_consumed(repo, root, tmp_path):
    repo.deploy("ssd", make_savedmodel(tmp_path / "ssd"))
    store_before = snapshot(root)
    for inside in (resolve("ssd", root).path, root / "store", root):
        with pytest.raises(SourceError, match="store itself"):
            repo.deploy("other", inside, consume=True)
    assert snapshot(root) == store_before


def test_a_source_that_could_not_be_deleted_is_refused_up_front(repo, root, tmp_path, monkeypatch):
    source = make_savedmodel(tmp_path / "ssd")
    locked = str(source / "variables")
    real_access = os.access
    monkeypatch.setattr(ingest.os, "access", lambda p, mode: False if str(p) == locked else real_access(p, mode))
    before, store_before = contents(source), snapshot(root)
    with pytest.raises(SourceError, match="no permission to delete files in .*variables"):
        repo.deploy("ssd", source, consume=True)
    assert contents(source) == before and snapshot(root) == store_before


def test_files_added_or_changed_during_the_deploy_are_kept(repo, root, tmp_path, monkeypatch):
    source = make_savedmodel(tmp_path / "ssd")
    real_consume = ingest.consume_source

    def meanwhile(consumption):
        (source / "assets" / "late.txt").write_text("arrived after the scan")
        (source / "saved_model.pb").unlink()
        (source / "saved_model.pb").write_bytes(b"a new file under an old name")
        return real_consume(consumption)

    monkeypatch.setattr(ingest, "consume_source", meanwhile)
    result = repo.deploy("ssd", source, consume=True)
    assert sorted(result.consumed["left"]) == sorted([str(source / "assets" / "late.txt"),
                                                      str(source / "saved_model.pb")])
    # The folder is given back under its own name, holding just what was kept.
    assert sorted(contents(source)) == ["assets/late.txt", "saved_model.pb"]
    assert (source / "saved_model.pb").read_bytes() == b"a new file under an old name"
    assert not [n for n in os.listdir(tmp_path) if "consumed" in n]


def test_a_file_written_while_it_is_hashed_is_refused(repo, root, tmp_path, monkeypatch):
    source = make_savedmodel(tmp_path / "ssd")
    target = source / "saved_model.pb"
    real_hash = objects.hash_stream

    def racing(src, buffer=None):
        if os.fstat(src.fileno()).st_ino == os.lstat(target).st_ino:
            with open(target, "ab") as f:
                f.write(b"appended by the trainer")
        return real_hash(src, buffer)

    monkeypatch.setattr(objects, "hash_stream", racing)
    store_before = snapshot(root)
    with pytest.raises(SourceError, match="written to while it was hashed"):
        repo.deploy("ssd", source, consume=True)
    assert target.exists() and target.read_bytes().endswith(b"appended by the trainer")
    assert snapshot(root) == store_before


def test_consuming_content_identical_to_current_still_hands_it_over(repo, root, tmp_path):
    repo.deploy("ssd", make_savedmodel(tmp_path / "a"))
    again = make_savedmodel(tmp_path / "b")
    result = repo.deploy("ssd", again, consume=True)
    assert result.unchanged and result.version == "1.0.0"
    assert not again.exists() and result.consumed["removed"] == result.file_count
    assert repo.verify().problems == []


def test_dry_run_consumes_nothing(repo, root, tmp_path):
    source = make_savedmodel(tmp_path / "ssd")
    before = contents(source)
    result = repo.deploy("ssd", source, consume=True, dry_run=True)
    assert result.dry_run and contents(source) == before and not (root / "manifests" / "ssd.msgpack").exists()


def test_cli_reports_what_was_consumed(cli, tmp_path):
    source = make_savedmodel(tmp_path / "ssd")
    run = cli("deploy", "ssd", str(source), "--consume")
    assert run.code == 0 and "source consumed: 4 of 4 files linked into the store" in run.out
    assert "4 removed" in run.out and not source.exists()
    run = cli("--json", "deploy", "ssd", str(make_savedmodel(tmp_path / "ssd2", variant=1)), "--consume")
    import json

    assert json.loads(run.out)["consumed"] == {"linked": 4, "removed": 4, "left": []}


def test_cli_refuses_to_consume_the_store(cli, root):
    assert_one_line_error(cli("deploy", "ssd", str(root / "store"), "--consume"), "store itself")


def test_a_file_of_another_owner_is_copied(repo, root, tmp_path, monkeypatch):
    """Not ours to make read-only: such a file is copied, and the object is the store's own."""
    source = make_savedmodel(tmp_path / "ssd")
    monkeypatch.setattr(objects.os, "geteuid", lambda: os.getuid() + 4242)
    result = repo.deploy("ssd", source, consume=True)
    assert result.consumed["linked"] == 0 and result.consumed["removed"] == result.file_count
    assert repo.verify().problems == []


def test_a_deletion_that_fails_after_the_commit_keeps_the_files_and_the_version(repo, root, tmp_path, monkeypatch):
    source = make_savedmodel(tmp_path / "ssd")
    real_unlink = os.unlink

    def stubborn(path, *args, **kwargs):
        if os.path.basename(str(path)) == "saved_model.pb":  # the source file, deleted after the commit
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(ingest.os, "unlink", stubborn)
    result = repo.deploy("ssd", source, consume=True)
    assert result.version == "1.0.0" and result.consumed["left"] == [str(source / "saved_model.pb")]
    assert sorted(contents(source)) == ["saved_model.pb"]  # given back under its own name
    assert resolve("ssd", root).version == "1.0.0"
