"""Pull's fast path keeps its guarantees: trees fetched a level at a time in parallel, blobs
streamed straight into staging on many threads -- a corrupt tree or blob is still refused with
one line naming it and nothing swapped, a failed download stops the rest, a SIGKILL in the
middle of the parallel downloads leaves nothing half-visible. And the benchmark's remote part
runs end to end. Against moto on 127.0.0.1 (or $GAIA_CAS_S3_ENDPOINT)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from types import SimpleNamespace

import boto3
import pytest

from conftest import CHECKOUT, assert_one_line_error, snapshot
from gaia_cas import remote_bench
from gaia_cas.repo import Repository
from gaia_cas.remote_objects import parallel_map
from s3_fixtures import s3_server, s3_url  # noqa: F401


@pytest.fixture
def url(s3_server):  # noqa: F811
    return s3_url(s3_server)


def _nested_model(path, files_per_folder: int = 6):
    """Three levels of folders below the root, files of different sizes in each."""
    for top in ("encoder", "decoder"):
        for sub in ("layer0", "layer1"):
            folder = path / top / sub / "weights"
            folder.mkdir(parents=True)
            for i in range(files_per_folder):
                (folder / f"part{i}.bin").write_bytes(f"{top}/{sub}/{i}".encode() * (50 + 300 * i))
    (path / "config.json").write_text('{"layers": 2}')
    return path


def _pushed(cli, url, s3_server, tmp_path, files_per_folder: int = 6):  # noqa: F811
    assert cli("remote", "add", "origin", url, "--endpoint", s3_server.endpoint).code == 0
    assert cli("deploy", "m", _nested_model(tmp_path / "src", files_per_folder)).code == 0
    assert cli("push").code == 0
    other = tmp_path / "other"
    Repository.init(other)
    assert cli("remote", "add", "origin", url, "--endpoint", s3_server.endpoint, root_dir=other).code == 0
    return other


def _put(s3_server, url, oid: str, body: bytes) -> None:  # noqa: F811
    prefix = url.split("/", 3)[3]
    boto3.client("s3", endpoint_url=s3_server.endpoint).put_object(
        Bucket=s3_server.bucket, Key=f"{prefix}/objects/{oid[:2]}/{oid[2:]}", Body=body)


def _without_tmp(snap: dict) -> dict:
    return {k: v for k, v in snap.items() if not k.startswith("store/tmp")}


def test_a_corrupt_tree_below_the_root_is_refused_and_nothing_is_swapped(cli, root, url, s3_server, tmp_path):  # noqa: F811
    other = _pushed(cli, url, s3_server, tmp_path)
    repo = Repository(root)
    tree = repo.manifest("m").current_version().tree
    deep = next(e.oid for path, e in repo.trees.walk(tree) if e.kind == "dir" and path.count("/") == 2)
    _put(s3_server, url, deep, b"\x90")  # a valid, empty msgpack array: decodes, but is not that tree
    before = snapshot(other)
    assert_one_line_error(cli("pull", "m", root_dir=other), f"object {deep}", "does not match its hash")
    assert _without_tmp(snapshot(other)) == _without_tmp(before)
    assert not (other / "manifests" / "m.msgpack").exists()
    assert os.listdir(other / "store" / "objects") == []


def test_a_remote_blob_of_another_size_is_refused_before_it_is_read(cli, root, url, s3_server, tmp_path):  # noqa: F811
    other = _pushed(cli, url, s3_server, tmp_path)
    repo = Repository(root)
    tree = repo.manifest("m").current_version().tree
    blob = next(e for _, e in repo.trees.walk(tree) if e.kind == "file" and e.name == "part3.bin")
    _put(s3_server, url, blob.oid, b"x" * (blob.size + 1))
    before = snapshot(other)
    assert_one_line_error(cli("pull", "m", root_dir=other), f"object {blob.oid}",
                          f"it is {blob.size + 1} bytes, its tree says {blob.size}")
    assert _without_tmp(snapshot(other)) == _without_tmp(before)
    assert os.listdir(other / "store" / "objects") == []


def test_a_corrupt_blob_of_the_right_size_is_refused_by_its_hash(cli, root, url, s3_server, tmp_path):  # noqa: F811
    other = _pushed(cli, url, s3_server, tmp_path)
    repo = Repository(root)
    tree = repo.manifest("m").current_version().tree
    blob = next(e for _, e in repo.trees.walk(tree) if e.kind == "file" and e.name == "part5.bin")
    _put(s3_server, url, blob.oid, b"y" * blob.size)
    assert_one_line_error(cli("pull", "m", root_dir=other), f"object {blob.oid}", "does not match its hash")
    assert os.listdir(other / "store" / "objects") == []
    assert not os.path.lexists(other / "models" / "m" / "current")


def test_a_remote_tree_nested_too_deep_is_refused_by_the_parallel_fetch(cli, root, url, s3_server, tmp_path):  # noqa: F811
    from gaia_cas.hashing import hash_bytes
    from gaia_cas.manifest import record
    from gaia_cas.s3 import Remote
    from gaia_cas.trees import DIR, FILE, MAX_DEPTH, Entry, encode_tree

    other = _pushed(cli, url, s3_server, tmp_path)
    objects, manifests = Remote("origin", url, s3_server.endpoint, None).open()
    blob = b"leaf"
    objects.upload(hash_bytes(blob), blob)
    child, kind, size = hash_bytes(blob), FILE, len(blob)
    for _ in range(MAX_DEPTH + 5):  # each tree one folder holding the one below: honest objects, too deep
        data = encode_tree([Entry("d" if kind == DIR else "f", kind, child, size)])
        child, kind, size = hash_bytes(data), DIR, 0
        objects.upload(child, data)

    def deep_version(rm) -> None:
        v = rm.versions[0].replace(version="9.0.0", tree=child, deployment_id="deep")
        rm.versions.append(v)
        rm.highest = rm.current = "9.0.0"
        record(rm, "deploy", version="9.0.0", before=None, at="2026-12-01T00:00:00+00:00", user="u", host="h",
               reason=None)

    manifests.update("m", deep_version)
    before = snapshot(other)
    assert_one_line_error(cli("pull", "m", root_dir=other), f"nests deeper than {MAX_DEPTH} levels")
    assert _without_tmp(snapshot(other)) == _without_tmp(before)
    assert os.listdir(other / "store" / "objects") == []


def test_the_first_failure_cancels_what_has_not_started_and_halts_the_rest():
    gate = threading.Event()
    started = []
    lock = threading.Lock()

    def work(item: int) -> int:
        with lock:
            started.append(item)
        if item == 0:
            raise ValueError("object 0 is corrupt")
        assert gate.wait(timeout=5)  # held until the failure has halted the batch
        return item * 2

    halted = []

    def halt() -> None:
        halted.append(True)
        gate.set()

    with pytest.raises(ValueError, match="object 0 is corrupt"):
        parallel_map(work, range(200), jobs=4, on_error=halt)
    assert halted == [True]
    assert len(started) <= 5  # the four running, and at most the one the failed thread took next
    assert parallel_map(lambda i: i * 2, range(50), jobs=4) == [i * 2 for i in range(50)]  # in order


def test_a_pull_killed_among_the_parallel_downloads_leaves_nothing_half_visible(cli, root, url, s3_server, tmp_path):  # noqa: F811
    other = _pushed(cli, url, s3_server, tmp_path, files_per_folder=12)
    blobs = sum(1 for _, e in Repository(root).trees.walk(Repository(root).manifest("m").current_version().tree)
                if e.kind == "file")
    # the manifest and 11 trees (4 levels) are the first 12 GETs, then 32 blob GETs at once; each
    # later one starts as an earlier download ends: SIGKILL at one of those, with blobs staged
    # and others still in flight on their threads
    script = ("import os, signal, sys, threading, obstore; from gaia_cas import cli\n"
              "real, lock, calls = obstore.get, threading.Lock(), []\n"
              "def get(*a, **k):\n"
              "    with lock:\n"
              "        calls.append(1)\n"
              "        if len(calls) == int(sys.argv[1]): os.kill(os.getpid(), signal.SIGKILL)\n"
              "    return real(*a, **k)\n"
              "obstore.get = get\n"
              "cli.run(sys.argv[2:])\n")
    proc = subprocess.run([sys.executable, "-c", script, str(12 + blobs - 8), "--root", str(other), "pull", "m"],
                          env=dict(os.environ, PYTHONPATH=str(CHECKOUT)), capture_output=True, timeout=60)
    assert proc.returncode == -9, proc.stderr
    staged = [name for d in os.listdir(other / "store" / "tmp") if "stage" in d
              for name in os.listdir(other / "store" / "tmp" / d)]
    assert staged  # killed mid-download: bytes were in staging, not in the store
    assert not os.path.lexists(other / "models" / "m" / "current")
    assert not (other / "manifests" / "m.msgpack").exists()
    assert os.listdir(other / "store" / "objects") == []
    assert not (other / "store" / "trees").exists() or os.listdir(other / "store" / "trees") == []
    assert cli("pull", "m", root_dir=other).code == 0
    assert (other / "models" / "m" / "current" / "encoder" / "layer1" / "weights" / "part11.bin").read_bytes() == \
        (tmp_path / "src" / "encoder" / "layer1" / "weights" / "part11.bin").read_bytes()
    assert cli("verify", root_dir=other).code == 0


# -- the benchmark's remote part ----------------------------------------------------------------

def test_the_benchmark_measures_push_and_pull_against_raw_obstore(s3_server, tmp_path):  # noqa: F811
    out = tmp_path / "remote.json"
    env = {k: v for k, v in os.environ.items() if k != "GAIA_CAS_ROOT"}
    env.update(s3_server.env, PYTHONPATH=str(CHECKOUT))
    proc = subprocess.run(
        [sys.executable, "-m", "gaia_cas.bench", "--remote-only", "--size", "0.001", "--remote-repeat", "1",
         "--no-dvc", "--remote-endpoint", s3_server.endpoint, "--remote-bucket", s3_server.bucket,
         "--workdir", str(tmp_path / "work"), "--json", str(out)],
        env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    for label in remote_bench.LABELS.values():
        if not label.startswith("dvc"):
            assert label in proc.stdout, label
    assert "push / raw put" in proc.stdout and "dvc push/pull skipped" in proc.stdout
    doc = json.loads(out.read_text())
    assert doc["remote"]["objects"] >= 20 and all(len(v) == 1 for v in doc["remote"]["run_ratios"].values())
    assert [t["target"].split()[0] for t in doc["targets"]] == ["push", "pull", "nothing-changed", "retrain"]
    retrain = doc["remote"]["retrain"]  # pushed and pulled again after its last 12 % was rewritten
    assert 0 < retrain["push_bytes"] < retrain["file_bytes"] and 0 < retrain["pull_bytes"] < retrain["file_bytes"]
    assert retrain["first_push_bytes"] >= retrain["file_bytes"] and "head-only retrain of a 12 MiB file" in proc.stdout
    assert all(isinstance(t["pass"], bool) for t in doc["targets"])  # which pass is not a test's business
    listed = boto3.client("s3", endpoint_url=s3_server.endpoint).list_objects_v2(
        Bucket=s3_server.bucket, Prefix="gaia-cas-bench-")
    assert listed.get("KeyCount", 0) == 0  # everything it wrote is deleted
    assert list((tmp_path / "work").iterdir()) == []


def test_without_an_endpoint_the_remote_part_says_it_was_skipped(tmp_path):
    assert remote_bench.report(SimpleNamespace(extra={}))[0].startswith("(no S3 endpoint: the remote comparison "
                                                                       "was skipped")
    assert remote_bench.targets(SimpleNamespace(extra={})) == []
    env = {k: v for k, v in os.environ.items() if k != "GAIA_CAS_S3_ENDPOINT"}
    proc = subprocess.run([sys.executable, "-m", "gaia_cas.bench", "--remote-only"], env=dict(env, PYTHONPATH=str(
        CHECKOUT)), capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert proc.returncode == 2 and "--remote-only needs an S3 endpoint" in proc.stderr
