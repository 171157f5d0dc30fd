"""deploy: version numbering, unchanged detection, metadata, dry runs, deploy all/both."""

from __future__ import annotations

import os

import pytest

from conftest import make_joblib, make_savedmodel, snapshot
from gaia_cas.errors import InvalidInputError, ModelNotFoundError, SourceError


def test_first_deploy_creates_the_model_as_1_0_0(repo, savedmodel):
    result = repo.deploy("ssd", savedmodel)
    assert (result.version, result.unchanged, result.previous) == ("1.0.0", False, None)
    manifest = repo.manifest("ssd")
    assert manifest.current == "1.0.0"
    assert [v.version for v in manifest.versions] == ["1.0.0"]
    assert manifest.versions[0].tree == result.hash
    assert (repo.root / "store" / "trees" / result.hash / "saved_model.pb").is_file()


def test_each_deploy_bumps_the_minor_of_the_highest_version(repo, tmp_path):
    src = tmp_path / "m"
    numbers = []
    for variant in range(4):
        make_savedmodel(src, variant)
        numbers.append(repo.deploy("ssd", src).version)
    assert numbers == ["1.0.0", "1.1.0", "1.2.0", "1.3.0"]


def test_bump_major_and_patch_and_explicit_version(repo, tmp_path):
    src = tmp_path / "m"
    make_savedmodel(src, 0)
    repo.deploy("ssd", src)
    make_savedmodel(src, 1)
    assert repo.deploy("ssd", src, bump_kind="patch").version == "1.0.1"
    make_savedmodel(src, 2)
    assert repo.deploy("ssd", src, bump_kind="major").version == "2.0.0"
    make_savedmodel(src, 3)
    assert repo.deploy("ssd", src, version="v2.5").version == "2.5.0"
    make_savedmodel(src, 4)
    assert repo.deploy("ssd", src).version == "2.6.0"


def test_explicit_version_must_be_new(repo, tmp_path, root):
    src = tmp_path / "m"
    make_savedmodel(src, 0)
    repo.deploy("ssd", src)
    make_savedmodel(src, 1)
    before = snapshot(root)
    with pytest.raises(InvalidInputError, match="already assigned"):
        repo.deploy("ssd", src, version="1.0.0")
    with pytest.raises(InvalidInputError, match="malformed version"):
        repo.deploy("ssd", src, version="1.x")
    after = snapshot(root)
    assert {k: v for k, v in after.items() if not k.startswith("logs")} == \
        {k: v for k, v in before.items() if not k.startswith("logs")}


def test_identical_redeploy_is_unchanged_and_force_makes_a_version(repo, savedmodel):
    first = repo.deploy("ssd", savedmodel)
    generation = repo.manifest("ssd").generation
    again = repo.deploy("ssd", savedmodel)
    assert again.unchanged and again.version == "1.0.0" and again.hash == first.hash
    assert again.new_objects == 0
    assert repo.manifest("ssd").generation == generation
    forced = repo.deploy("ssd", savedmodel, force=True)
    assert (forced.unchanged, forced.version, forced.hash) == (False, "1.1.0", first.hash)


def test_redeploy_of_an_older_content_gets_a_new_number(repo, tmp_path):
    """The old script reused v1.3; here a number is never given twice, even for old bytes."""
    src = tmp_path / "m"
    make_savedmodel(src, 0)
    repo.deploy("ssd", src)
    make_savedmodel(src, 1)
    repo.deploy("ssd", src)
    make_savedmodel(src, 0)
    result = repo.deploy("ssd", src)
    assert (result.version, result.unchanged) == ("1.2.0", False)
    versions = repo.manifest("ssd").versions
    assert versions[0].tree == versions[2].tree
    assert len({v.version for v in versions}) == 3


def test_dry_run_writes_nothing(repo, root, savedmodel):
    before = snapshot(root)
    result = repo.deploy("ssd", savedmodel, dry_run=True)
    assert result.dry_run and result.version == "1.0.0" and not result.unchanged
    assert snapshot(root) == before
    real = repo.deploy("ssd", savedmodel)
    assert real.hash == result.hash  # the dry run computed the same tree oid
    before = snapshot(root)
    assert repo.deploy("ssd", savedmodel, dry_run=True).unchanged
    assert snapshot(root) == before


def test_version_records_metadata_who_and_sizes(repo, savedmodel):
    repo.add_model("ssd", aliases=["dl"], metadata={"architecture": "SSD MobileNet V2", "input_size": [320, 320],
                                                    "detection_threshold": 0.5})
    repo.deploy("dl", savedmodel, reason="retrained on July data",
                metadata={"detection_threshold": 0.6, "classes": ["fungal"]})
    v = repo.manifest("ssd").versions[-1]
    assert v.metadata == {"architecture": "SSD MobileNet V2", "input_size": [320, 320],
                          "detection_threshold": 0.6, "classes": ["fungal"]}
    size = sum(f.stat().st_size for f in savedmodel.rglob("*") if f.is_file())
    assert (v.size_bytes, v.file_count, v.format, v.artifact) == (size, 4, "savedmodel", "directory")
    assert v.size_mb == round(size / 1048576, 2)
    assert v.reason == "retrained on July data"
    assert v.user and v.host
    assert len(v.deployment_id) == 15 and v.deployment_id[8] == "_"
    assert v.created_at.startswith(f"{v.deployment_id[:4]}-{v.deployment_id[4:6]}-{v.deployment_id[6:8]}T")
    assert v.source == str(savedmodel)


def test_file_artifact_keeps_its_name(repo, joblib_file, root):
    result = repo.deploy("catboost", joblib_file)
    v = repo.manifest("catboost").versions[-1]
    assert (v.artifact, v.name, v.format, v.file_count) == ("file", "model_catboost_best.joblib", "joblib", 1)
    link = root / "models" / "catboost" / "current"
    assert link.is_symlink() and link.name == "current"
    assert os.path.basename(os.readlink(link)) == "model_catboost_best.joblib"
    assert link.read_bytes() == joblib_file.read_bytes()
    assert result.path.endswith("/model_catboost_best.joblib")


def test_deploy_from_the_registered_source_and_deploy_all(repo, tmp_path):
    ssd_src = make_savedmodel(tmp_path / "ssd")
    cb_src = make_joblib(tmp_path / "cb" / "model_catboost_best.joblib")
    repo.add_model("ssd", aliases=["dl"], source=str(ssd_src))
    repo.add_model("catboost", aliases=["ml"], source=str(cb_src))
    repo.add_model("nosource")
    assert repo.deploy("dl").version == "1.0.0"
    results, skipped, failed = repo.deploy_all()
    assert failed == []
    assert {r.model: (r.version, r.unchanged) for r in results} == {"ssd": ("1.0.0", True),
                                                                    "catboost": ("1.0.0", False)}
    assert skipped == ["nosource"]
    with pytest.raises(InvalidInputError, match="no default source"):
        repo.deploy("nosource")


def test_deploy_both_from_the_cli(cli, tmp_path):
    cli("model", "add", "ssd", "--alias", "dl", "--source", make_savedmodel(tmp_path / "ssd"))
    cli("model", "add", "catboost", "--alias", "ml", "--source",
        make_joblib(tmp_path / "cb" / "model_catboost_best.joblib"))
    run = cli("deploy", "both", "--json")
    assert run.code == 0, run.err
    doc = run.json()
    assert sorted(d["model"] for d in doc["deployed"]) == ["catboost", "ssd"]
    assert all(d["version"] == "1.0.0" for d in doc["deployed"])
    run = cli("deploy", "all", tmp_path)
    assert run.code == 1 and "takes no PATH" in run.err


@pytest.mark.parametrize("name", ["all", "both"])
def test_reserved_words_are_not_model_names(repo, savedmodel, name):
    with pytest.raises(InvalidInputError, match="reserved"):
        repo.add_model(name)


@pytest.mark.parametrize("name", ["../x", "Upper", "", "-lead", "a/b", "x" * 65, ".hidden"])
def test_bad_model_names_are_rejected_before_writing(repo, root, savedmodel, name):
    before = snapshot(root)
    with pytest.raises(InvalidInputError):
        repo.deploy(name, savedmodel)
    assert snapshot(root) == before


def test_missing_source_and_unknown_model(repo, root, tmp_path):
    before = snapshot(root)
    with pytest.raises(SourceError, match="does not exist"):
        repo.deploy("ssd", tmp_path / "nope")
    with pytest.raises(ModelNotFoundError):
        repo.deploy("ssd")
    assert snapshot(root) == before


def test_same_content_in_two_models_is_stored_once(repo, tmp_path, root):
    a = make_savedmodel(tmp_path / "a")
    b = make_savedmodel(tmp_path / "b")
    repo.deploy("one", a)
    objects = sorted(p for p in (root / "store" / "objects").rglob("*") if p.is_file())
    result = repo.deploy("two", b)
    assert result.new_objects == 0
    assert sorted(p for p in (root / "store" / "objects").rglob("*") if p.is_file()) == objects


# -- staging on two threads -------------------------------------------------------------------

def _many_files(path, count: int = 40):
    """A tree with large and small files, two of them identical."""
    for i in range(count):
        folder = path / f"part{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{i:03d}.bin").write_bytes(os.urandom(100_000 if i % 10 == 0 else 3_000 + i))
    (path / "copy-a.bin").write_bytes(b"same bytes" * 1000)
    (path / "copy-b.bin").write_bytes(b"same bytes" * 1000)
    return path


@pytest.fixture
def two_threads(monkeypatch):
    """Stage on two threads from the first byte, and prove both really ran: each thread's first
    file waits at a barrier until the other thread arrives (it fails after 30 s if none does)."""
    import threading

    from gaia_cas import ingest
    from gaia_cas.objects import Staging

    monkeypatch.setattr(ingest, "STAGING_THREADS", 2)
    monkeypatch.setattr(ingest, "PARALLEL_MIN_BYTES", 0)
    barrier = threading.Barrier(2, timeout=30)
    seen: set[str] = set()
    real = Staging.add_stream

    def add_stream(self, src, label="the source", buffer=None):
        name = threading.current_thread().name
        if name.startswith("gaia-cas-stage") and name not in seen:
            seen.add(name)
            barrier.wait()
        return real(self, src, label, buffer)

    monkeypatch.setattr(Staging, "add_stream", add_stream)
    return seen


def test_a_deploy_stages_on_two_threads_and_builds_the_tree_one_thread_builds(tmp_path, two_threads, root):
    from gaia_cas.repo import Repository

    src = _many_files(tmp_path / "model")
    expected = Repository(root).deploy("ssd", src, dry_run=True).hash  # hashed on this thread only
    assert two_threads == set()
    result = Repository(root).deploy("ssd", src)
    assert len(two_threads) == 2
    assert result.hash == expected
    assert result.new_objects == 41 + 5  # 42 files, two identical, in 5 folders: one object each
    report = Repository(root).verify()
    assert report.ok
    assert os.listdir(root / "store" / "tmp") == []  # no staged copy left behind, the duplicate neither


def test_an_error_on_a_staging_thread_fails_the_deploy_and_changes_nothing(tmp_path, two_threads, root, cli,
                                                                            monkeypatch):
    from gaia_cas import ingest
    from gaia_cas.repo import Repository

    Repository(root).deploy("ssd", make_savedmodel(tmp_path / "first"))
    src = _many_files(tmp_path / "model")
    real_open = ingest.open_source_file

    def open_regular(path):
        if path.endswith("f017.bin"):
            raise SourceError(f"cannot read {path}: Input/output error")
        return real_open(path)

    monkeypatch.setattr(ingest, "open_source_file", open_regular)
    before = snapshot(root)
    run = cli("deploy", "ssd", str(src))
    assert run.code == 1 and run.err.startswith("gaia-cas: error: cannot read ") and "f017.bin" in run.err
    assert len(run.err.strip().splitlines()) == 1
    assert len(two_threads) == 2
    assert snapshot(root) == before


def test_a_failing_file_halts_the_other_staging_thread_within_a_chunk(tmp_path, root, monkeypatch):
    """The large file being staged on the other thread stops at its next chunk instead of being
    copied to the end (a 20 GB shard would otherwise keep the error -- or a Ctrl-C -- waiting)."""
    import threading

    from gaia_cas import ingest, objects
    from gaia_cas.repo import Repository

    monkeypatch.setattr(ingest, "STAGING_THREADS", 2)
    monkeypatch.setattr(ingest, "PARALLEL_MIN_BYTES", 0)
    src = tmp_path / "model"
    src.mkdir()
    (src / "big.bin").write_bytes(b"\1" * (16 * objects.CHUNK))
    (src / "bad.bin").write_bytes(b"bad")
    failed = threading.Event()
    chunks = []
    real_read, real_open = objects.read_source, ingest.open_source_file

    def read_source(f, buffer, label):
        if label.endswith("big.bin") and chunks:
            assert failed.wait(30)  # the other thread's failure comes while this file is mid-way
        chunks.append(label)
        return real_read(f, buffer, label)

    def open_regular(path):
        if path.endswith("bad.bin"):
            failed.set()
            raise SourceError(f"cannot read {path}: Input/output error")
        return real_open(path)

    monkeypatch.setattr(objects, "read_source", read_source)
    monkeypatch.setattr(ingest, "open_source_file", open_regular)
    with pytest.raises(SourceError, match="bad.bin"):
        Repository(root).deploy("ssd", src)
    assert 1 <= len(chunks) <= 3  # of 16: it stopped at the first chunk after the failure
    assert os.listdir(root / "store" / "tmp") == []


def test_deploy_all_reports_each_failure_and_still_deploys_the_others(cli, tmp_path):
    good = make_savedmodel(tmp_path / "good")
    doomed = make_savedmodel(tmp_path / "doomed")
    assert cli("model", "add", "a", "--source", doomed).code == 0
    assert cli("model", "add", "b", "--source", good).code == 0
    import shutil

    shutil.rmtree(doomed)  # a's source is gone by the time the nightly deploy runs
    run = cli("deploy", "all", "--json")
    assert run.code == 1
    doc = run.json()
    assert [d["model"] for d in doc["deployed"]] == ["b"]
    assert doc["failed"][0]["model"] == "a" and "does not exist" in doc["failed"][0]["error"]
    assert run.err.strip() == f"gaia-cas: error: deploy of a failed: {doc['failed'][0]['error']}"
