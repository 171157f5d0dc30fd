"""verify under adverse conditions: an object that cannot be read is a finding like a corrupt one,
and --repair acts only on findings still true under the locks at the moment it acts."""

from __future__ import annotations

import errno
import io
import os

import pytest

import gaia_cas
import gaia_cas.codec
import gaia_cas.objects
import gaia_cas.verify
from conftest import make_savedmodel
from test_verify import three  # noqa: F401  (fixture: m 1.0.0 .. 1.2.0, each with its own big.bin)




def own_oid(repo, version, name="big.bin"):
    tree = repo.manifest("m").find(version).tree
    return {e.name: e for e in repo.trees.entries(tree)}[name].oid


class _FailingFile(io.RawIOBase):
    """An open file whose every read fails with EIO, as a bad sector does."""

    def readable(self):
        return True

    def readinto(self, buffer):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    def read(self, size=-1):
        raise OSError(errno.EIO, os.strerror(errno.EIO))


@pytest.fixture
def eio(monkeypatch):
    """eio(repo, oid): every read of that object's file by the object store fails with EIO."""
    failing = set()
    real_stream = gaia_cas.objects.object_stream

    def fake_stream(path, oid):  # objects are opened (without following a link) by this one function
        if os.path.abspath(os.fspath(path)) in failing:
            return _FailingFile()
        return real_stream(path, oid)

    monkeypatch.setattr(gaia_cas.objects, "object_stream", fake_stream)
    monkeypatch.setattr(gaia_cas.verify, "object_stream", fake_stream)

    def add(repo, oid):
        failing.add(os.path.abspath(repo.objects.path(oid)))

    return add


@pytest.mark.parametrize("which", ["file", "tree"])
def test_unreadable_object_is_a_finding_and_the_rest_is_checked(three, cli, eio, which):
    oid = own_oid(three, "1.0.0") if which == "file" else three.manifest("m").find("1.0.0").tree
    full = cli("verify", "--json").json()["checked_objects"]
    eio(three, oid)
    run = cli("verify", "--json")
    assert run.code == 1, run.err
    assert run.err == ""  # no abort, no bare 'Input/output error'
    doc = run.json()
    [problem] = [p for p in doc["problems"] if p["oid"] == oid and p["kind"] == "unreadable-object"]
    assert "Input/output error" in problem["detail"]
    assert problem["versions"] == ["m 1.0.0"]
    # everything else was still checked: every other object was hashed (an unreadable tree
    # hides the two objects only it reaches, its big.bin and saved_model.pb)
    expected = full if which == "file" else full - 2
    assert doc["checked_objects"] == expected
    text = cli("verify").out
    assert "unreadable-object" in text and "(affects m 1.0.0)" in text


@pytest.mark.parametrize("which", ["file", "tree"])
def test_repair_isolates_an_unreadable_object(three, cli, eio, root, which):
    oid = own_oid(three, "1.0.0") if which == "file" else three.manifest("m").find("1.0.0").tree
    eio(three, oid)
    run = cli("verify", "--repair", "--json")
    assert run.code == 0, (run.out, run.err)  # isolated: the current version is intact
    assert run.json()["broken_versions"] == ["m 1.0.0"]
    manifest = three.manifest("m")
    assert manifest.find("1.0.0").broken and not manifest.find("1.2.0").broken
    assert gaia_cas.resolve("m", root=root).version == "1.2.0"


def between_scan_and_repair(monkeypatch, action):
    """Run ``action`` exactly once, after verify's scan and before its repair acts on the findings."""
    real = gaia_cas.verify.repair_findings

    def hooked(*args, **kwargs):
        action()
        return real(*args, **kwargs)

    monkeypatch.setattr(gaia_cas.verify, "repair_findings", hooked)


def test_repair_does_not_break_a_version_whose_object_a_deploy_re_added(three, cli, root, tmp_path, monkeypatch):
    """Issue 13 #11: gc removed an object mid-verify, a deploy re-added it before repair acted."""
    oid = own_oid(three, "1.2.0")
    os.unlink(three.objects.path(oid))  # what the scan sees: the object gone (taken by gc)
    src = tmp_path / "m"  # still holds 1.2.0's bytes

    def redeploy():
        result = three.deploy("m", src, force=True, reason="nightly")  # stages and installs the object again
        assert result.version == "1.3.0" and result.new_objects >= 1
        assert three.objects.path(oid).is_file()

    between_scan_and_repair(monkeypatch, redeploy)
    run = cli("verify", "--repair", "--json")
    assert run.code == 0, (run.out, run.err)
    doc = run.json()
    assert doc["broken_versions"] == []
    [problem] = [p for p in doc["problems"] if p["oid"] == oid]
    assert problem["kind"] == "missing-object" and problem["resolved"]
    assert "no longer missing" in problem["action"]
    manifest = three.manifest("m")
    assert not any(v.broken for v in manifest.versions)
    active = gaia_cas.resolve("m", root=root)  # still served
    assert active.version == "1.3.0" and (active.path / "big.bin").read_bytes() == bytes([3]) * 300_000
    assert (root / "models" / "m" / "current" / "big.bin").is_file()
    monkeypatch.undo()
    assert cli("verify").code == 0


def test_repair_leaves_alone_an_object_restored_before_it_acted(three, cli, root, monkeypatch):
    oid = own_oid(three, "1.1.0")
    path = three.objects.path(oid)
    good = path.read_bytes()
    os.chmod(path, 0o644)
    path.write_bytes(b"garbage")

    def restore():
        path.write_bytes(good)
        os.chmod(path, 0o444)

    between_scan_and_repair(monkeypatch, restore)
    run = cli("verify", "--repair", "--json")
    assert run.code == 0, run.out
    doc = run.json()
    [problem] = [p for p in doc["problems"] if p["oid"] == oid]
    assert problem["kind"] == "corrupt-object" and "no longer corrupt" in problem["action"]
    assert doc["broken_versions"] == []
    assert path.read_bytes() == good  # not quarantined
    assert not (root / "store" / "quarantine").exists()
    assert not three.manifest("m").find("1.1.0").broken


def test_repair_still_marks_what_stays_missing(three, cli, monkeypatch):
    """The re-check drops only findings no longer true: a deploy of other bytes changes nothing."""
    oid = own_oid(three, "1.0.0")
    os.unlink(three.objects.path(oid))
    run = cli("verify", "--repair", "--json")
    assert run.code == 0
    assert run.json()["broken_versions"] == ["m 1.0.0"]
    assert three.manifest("m").find("1.0.0").broken


# -- implausible sizes in trees ------------------------------------------------------------------

@pytest.mark.parametrize("size", [2**64 - 1, 2**63, -1])
def test_a_tree_entry_with_an_impossible_size_is_corruption(size):
    from gaia_cas.errors import CorruptionError
    from gaia_cas.trees import FILE, decode_tree

    data = gaia_cas.codec.pack([["model.bin", FILE, "ab" * 16, size]])
    with pytest.raises(CorruptionError, match="invalid size"):
        decode_tree(data, "t")
    largest = gaia_cas.codec.pack([["model.bin", FILE, "ab" * 16, 2**63 - 1]])
    assert decode_tree(largest, "t")[0].size == 2**63 - 1


def _lying_tree(repo, version, mutate):
    """Replace ``version``'s tree by one whose entries ``mutate`` changed; return the new tree oid."""
    from gaia_cas.manifest import record
    from gaia_cas.objects import hash_bytes
    from gaia_cas.trees import encode_tree

    entries = repo.trees.entries(repo.manifest("m").find(version).tree)
    data = encode_tree([mutate(e) for e in entries])
    oid = hash_bytes(data)
    path = repo.objects.path(oid)
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, 0o444)
    with repo.manifests.edit("m") as manifest:
        manifest.versions  # decoded into objects: the change is made on the stored version
        manifest.find(version).tree = oid
        record(manifest, "test", version=None, before=manifest.current, at="2026-01-01T00:00:00+00:00",
               user="t", host="h", reason="a crafted tree")
    return oid


@pytest.mark.parametrize("entry, size", [("big.bin", 5), ("big.bin", 2**62), ("variables", 1)])
def test_a_tree_whose_sizes_do_not_match_its_objects_is_a_bad_tree(three, cli, entry, size):
    tree = _lying_tree(three, "1.0.0", lambda e: e._replace(size=size) if e.name == entry else e)
    run = cli("verify", "--json")
    assert run.code == 1, run.out
    [problem] = [p for p in run.json()["problems"] if p["oid"] == tree and p["kind"] == "bad-tree"]
    assert problem["versions"] == ["m 1.0.0"]
    assert f"a size of {size} bytes" in problem["detail"] and repr(entry) in problem["detail"]
    run = cli("verify", "--repair", "--json")
    assert run.code == 0, run.out
    assert run.json()["broken_versions"] == ["m 1.0.0"]
    assert three.manifest("m").find("1.0.0").broken


# -- resolve() on a failing or read-only disk ----------------------------------------------------

def test_resolve_on_an_unreadable_manifest_raises_a_store_error(three, root, monkeypatch):
    from gaia_cas.errors import GaiaCasError, StoreError
    from gaia_cas.manifest_store import Manifests

    def failing(self, model):
        raise OSError(errno.EIO, os.strerror(errno.EIO), str(self.layout.manifest_path(model)))

    monkeypatch.setattr(Manifests, "snapshot", failing)
    with pytest.raises(StoreError) as caught:
        gaia_cas.resolve("m", root=root)
    assert isinstance(caught.value, GaiaCasError)
    message = str(caught.value)
    assert "'m'" in message and "Input/output error" in message and "m.msgpack" in message


def test_resolve_on_a_read_only_store_that_must_rebuild_a_tree_raises_a_store_error(three, root, monkeypatch):
    from gaia_cas.errors import StoreError
    from gaia_cas.materialize import remove_tree

    tree = three.manifest("m").find("1.2.0").tree
    remove_tree(root / "store" / "trees" / tree)  # derived data gc removed: resolve rebuilds it
    real_mkdir = os.mkdir

    def read_only(path, *args, **kwargs):
        if str(root) in os.fspath(path):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", read_only)
    with pytest.raises(StoreError) as caught:
        gaia_cas.resolve("m", root=root)
    message = str(caught.value)
    assert "Read-only file system" in message and tree in message
    monkeypatch.undo()
    assert gaia_cas.resolve("m", root=root).version == "1.2.0"


def test_an_unreadable_manifest_is_a_finding_and_the_other_models_are_checked(three, cli, tmp_path, monkeypatch):
    from gaia_cas.manifest_store import Manifests

    three.deploy("other", make_savedmodel(tmp_path / "other"))
    real = Manifests.snapshot

    def failing(self, model):
        if model == "m":
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real(self, model)

    monkeypatch.setattr(Manifests, "snapshot", failing)
    run = cli("verify", "--json")
    assert run.code == 1 and run.err == ""
    doc = run.json()
    [problem] = doc["problems"]
    assert problem["kind"] == "manifest" and "'m'" in problem["detail"] and "Input/output error" in problem["detail"]
    assert doc["checked_objects"] > 0 and doc["checked_links"] == 1  # 'other' was checked


def test_repair_re_checks_under_the_model_lock_what_it_found_missing_while_holding_gc_off(
        three, cli, root, tmp_path, monkeypatch):
    """The deploy lands inside repair -- after the materialized trees were handled, right before
    the model's lock is taken to mark versions: the object is looked at again under that lock."""
    oid = own_oid(three, "1.2.0")
    os.unlink(three.objects.path(oid))
    src = tmp_path / "m"
    real_edit = type(three.manifests).edit
    calls = []

    def edit(self, model, **kwargs):
        if not calls and kwargs.get("on_commit") is not None and self is not three.manifests:
            calls.append(model)
            three.deploy("m", src, force=True)  # re-adds the object and commits 1.3.0
        return real_edit(self, model, **kwargs)

    monkeypatch.setattr(type(three.manifests), "edit", edit)
    run = cli("verify", "--repair", "--json")
    assert calls == ["m"]
    assert run.code == 0, run.out
    assert run.json()["broken_versions"] == []
    assert not any(v.broken for v in three.manifest("m").versions)
    assert gaia_cas.resolve("m", root=root).version == "1.3.0"
