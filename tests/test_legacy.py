"""import-legacy: the old copy-per-version layout comes in with every version, timestamp and
metadata field, the right current, identical copies stored once, PATH never touched, and a
second run changes nothing."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from datetime import datetime
from pathlib import Path

import pytest

import gaia_cas
from conftest import assert_one_line_error, make_joblib, make_savedmodel, snapshot

WEIGHTS = 1024 * 1024  # every SavedModel copy carries the same 1 MiB of weights

# (legacy folder, variant of saved_model.pb): the old script's 7 copies, two of them numbered v1.3.
# v1.3 twice and v1.4/v1.5 are byte-identical copies (the script re-ran on an unchanged model).
DL_FOLDERS = [
    ("v1.0_20250711_143245", 0),
    ("v1.1_20250712_101010", 1),
    ("v1.2_20250714_090000", 2),
    ("v1.3_20250716_132518", 3),
    ("v1.3_20250716_202612", 3),
    ("v1.4_20250716_202800", 4),
    ("v1.5_20250716_202917", 4),
]
DL_EXPECTED = ["1.0.0", "1.1.0", "1.2.0", "1.3.0", "1.3.1", "1.4.0", "1.5.0"]
ML_FOLDERS = [
    ("v1.0_20250711_143300", 0),
    ("v1.1_20250712_101020", 1),
    ("v1.2_20250714_090010", 2),
    ("v1.3_20250716_202927", 2),  # identical to v1.2
]
ML_EXPECTED = ["1.0.0", "1.1.0", "1.2.0", "1.3.0"]


def old_metadata(kind: str, folder: str, extra: dict | None = None) -> dict:
    """A metadata.json as the old script wrote it, plus a few values of every JSON type."""
    number, stamp = folder[1:].split("_", 1)
    doc = {
        "version": f"v{number}", "timestamp": stamp,
        "created_at": datetime.strptime(stamp, "%Y%m%d_%H%M%S").isoformat() + ".571234",
        "model_type": kind, "size_mb": 23.41 if kind == "dl" else 0.6,
        "framework": "tensorflow" if kind == "dl" else "catboost",
        "input_size": [320, 320], "detection_threshold": 0.5, "quantized": False,
        "calibration": None, "training": {"epochs": 40, "datasets": ["coco", "july"], "lr": 1e-4},
        "notes": f"détection ✓ {folder}",
    }
    doc.update(extra or {})
    return doc


def build_legacy(base: Path) -> Path:
    """The tree the old script left behind: dl_model/ and ml_model/ with versions and current links."""
    dl = base / "dl_model"
    for folder, variant in DL_FOLDERS:
        make_savedmodel(dl / "versions" / folder / "saved_model", variant, variables_bytes=WEIGHTS)
        (dl / "versions" / folder / "metadata.json").write_text(
            json.dumps(old_metadata("dl", folder, {"architecture": "SSD MobileNet V2"}), indent=2))
    os.symlink("versions/v1.5_20250716_202917/saved_model", dl / "current")
    ml = base / "ml_model"
    for folder, variant in ML_FOLDERS:
        make_joblib(ml / "versions" / folder / "model_catboost_best.joblib", variant)
        (ml / "versions" / folder / "metadata.json").write_text(json.dumps(old_metadata("ml", folder)))
    os.symlink("versions/v1.3_20250716_202927/model_catboost_best.joblib", ml / "current")
    return base


def tree_state(path: Path) -> dict:
    """Everything about a tree a migration could change: kinds, modes, mtimes, bytes, link targets."""
    result = {}
    for dirpath, dirnames, filenames in os.walk(path):
        for name in [".", *dirnames, *filenames]:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            rel = os.path.normpath(os.path.relpath(full, path))
            entry = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_mtime_ns, st.st_ino, st.st_nlink)
            if stat.S_ISLNK(st.st_mode):
                entry += (os.readlink(full),)
            elif stat.S_ISREG(st.st_mode):
                entry += (hashlib.sha256(Path(full).read_bytes()).hexdigest(),)
            result[rel] = entry
    return result


def artifact_bytes(path: Path) -> list[bytes]:
    if path.is_file():
        return [path.read_bytes()]
    return [p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()]


def manifest_bytes(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((root / "manifests").glob("*.msgpack"))}


@pytest.fixture
def legacy(tmp_path) -> Path:
    return build_legacy(tmp_path / "api" / "models")


def _versions_by_number(doc: dict) -> dict[str, dict]:
    return {v["version"]: v for v in doc["versions"]}


def test_full_import_keeps_every_version_timestamp_and_metadata_field(cli, root, legacy):
    before = tree_state(legacy)
    run = cli("import-legacy", legacy, "--json")
    assert run.code == 0, run.err
    report = {m["model"]: m for m in run.json()["models"]}
    assert set(report) == {"ssd", "catboost"}
    assert [(i["legacy"], i["version"]) for i in report["ssd"]["imported"]] == \
        [(f, v) for (f, _), v in zip(DL_FOLDERS, DL_EXPECTED)]
    assert [(i["legacy"], i["version"]) for i in report["catboost"]["imported"]] == \
        [(f, v) for (f, _), v in zip(ML_FOLDERS, ML_EXPECTED)]
    assert report["ssd"]["current"] == "1.5.0" and report["catboost"]["current"] == "1.3.0"
    assert report["ssd"]["skipped"] == [] and report["catboost"]["skipped"] == []
    # the later of the two v1.3 copies says why it is 1.3.1
    later = [i for i in report["ssd"]["imported"] if i["legacy"] == "v1.3_20250716_202612"][0]
    assert any("1.3.0" in note and "1.3.1" in note for note in later["notes"])

    for model, folders, expected, kind in (("ssd", DL_FOLDERS, DL_EXPECTED, "dl"),
                                           ("catboost", ML_FOLDERS, ML_EXPECTED, "ml")):
        doc = cli("list", model, "--json").json()
        by_number = _versions_by_number(doc)
        assert sorted(by_number) == sorted(expected)
        # oldest first in deployment order == timestamp order
        assert [v["version"] for v in reversed(doc["versions"])] == expected
        for (folder, _), number in zip(folders, expected):
            v = by_number[number]
            stamp = folder.split("_", 1)[1]
            assert v["deployment_id"] == stamp
            assert datetime.fromisoformat(v["created_at"]).strftime("%Y%m%d_%H%M%S") == stamp
            legacy_meta = json.loads((legacy / f"{kind}_model" / "versions" / folder / "metadata.json").read_text())
            assert v["metadata"] == legacy_meta  # every field, every type, unchanged
            assert v["current"] == (number == expected[-1])
        assert doc["current"] == expected[-1]

    # the files behind each version are the legacy copy's bytes
    repo = gaia_cas.Repository(root)
    for model, folders, expected, kind, name in (
            ("ssd", DL_FOLDERS, DL_EXPECTED, "dl", "saved_model"),
            ("catboost", ML_FOLDERS, ML_EXPECTED, "ml", "model_catboost_best.joblib")):
        manifest = repo.manifest(model)
        for (folder, _), number in zip(folders, expected):
            version = manifest.find(number)
            tree = repo.materialize(version.tree)
            built = tree / version.name if version.name else tree
            assert artifact_bytes(built) == artifact_bytes(legacy / f"{kind}_model" / "versions" / folder / name)
            if version.name:
                assert version.name == name
    active = gaia_cas.resolve("dl", root=root)
    assert active.version == "1.5.0" and active.metadata["architecture"] == "SSD MobileNet V2"
    assert artifact_bytes(active.path) == artifact_bytes(legacy / "dl_model" / "current")
    assert os.path.realpath(root / "models" / "ssd" / "current") == str(active.path)
    ml = gaia_cas.resolve("ml", root=root)
    assert ml.version == "1.3.0" and ml.path.name == "model_catboost_best.joblib"
    assert ml.path.read_bytes() == (legacy / "ml_model" / "current").read_bytes()
    assert (root / "models" / "catboost" / "current").read_bytes() == ml.path.read_bytes()
    assert tree_state(legacy) == before


def test_the_same_number_twice_keeps_both_in_timestamp_order(cli, root, tmp_path):
    """The folders' names sort one way, their timestamps the same way; the later gets the next free patch,
    even when the next patch is itself a legacy number (then it moves on)."""
    base = tmp_path / "old"
    for folder, variant in [("v2.0_20250102_000000", 1), ("v2.0_20250101_000000", 0), ("v2.0.1_20250103_000000", 2)]:
        make_joblib(base / "x_model" / "versions" / folder / "m.joblib", variant)
    os.symlink("versions/v2.0_20250101_000000/m.joblib", base / "x_model" / "current")
    run = cli("import-legacy", base, "--json")
    assert run.code == 0, run.err
    imported = {i["legacy"]: i["version"] for i in run.json()["models"][0]["imported"]}
    assert imported == {"v2.0_20250101_000000": "2.0.0", "v2.0_20250102_000000": "2.0.1",
                        "v2.0.1_20250103_000000": "2.0.2"}
    manifest = gaia_cas.Repository(root).manifest("x")
    assert manifest.current == "2.0.0"
    assert [(v.version, v.deployment_id) for v in manifest.versions] == [
        ("2.0.0", "20250101_000000"), ("2.0.1", "20250102_000000"), ("2.0.2", "20250103_000000")]
    assert manifest.find("2.0.0").source.endswith("v2.0_20250101_000000/m.joblib")
    assert gaia_cas.resolve("x", root=root).path.read_bytes() == \
        (base / "x_model" / "versions" / "v2.0_20250101_000000" / "m.joblib").read_bytes()


def test_identical_copies_stay_separate_versions_sharing_storage(repo, root, legacy):
    plans = repo.import_legacy(legacy)
    ssd = repo.manifest("ssd")
    assert ssd.find("1.3.0").tree == ssd.find("1.3.1").tree  # same bytes, one tree
    assert ssd.find("1.4.0").tree == ssd.find("1.5.0").tree
    assert len(ssd.versions) == 7 and len({v.tree for v in ssd.versions}) == 5
    cb = repo.manifest("catboost")
    assert len(cb.versions) == 4 and cb.find("1.2.0").tree == cb.find("1.3.0").tree

    # every distinct file is one object: 5 distinct saved_model.pb + shared index, weights,
    # fingerprint; 3 distinct pickles
    files = [p for p in legacy.rglob("*") if p.is_file() and not p.is_symlink() and p.name != "metadata.json"]
    distinct = {hashlib.sha256(p.read_bytes()).hexdigest(): p.stat().st_size for p in files}
    logical = sum(p.stat().st_size for p in files)
    tree_oids = {oid for m in (ssd, cb) for v in m.versions for oid in _tree_oids(repo, v.tree)}
    file_objects = [p for p in (root / "store" / "objects").rglob("*")
                    if p.is_file() and p.parent.name + p.name not in tree_oids]
    assert len(file_objects) == len(distinct) == 5 + 3 + 3
    assert sum(p.stat().st_size for p in file_objects) == sum(distinct.values())

    # the report's saving: logical bytes minus what the store had to add
    saved = sum(p.logical_bytes - p.new_bytes for p in plans)
    assert sum(p.logical_bytes for p in plans) == logical
    tree_bytes = sum(repo.objects.path(oid).stat().st_size for oid in tree_oids)
    assert saved == logical - sum(distinct.values()) - tree_bytes
    assert saved > 5 * WEIGHTS  # 6 of the 7 weight copies, at least


def _tree_oids(repo, tree):
    yield tree
    for _, entry in repo.trees.walk(tree):
        if entry.kind == "dir":
            yield entry.oid


def test_status_and_report_show_the_dedup_saving(cli, root, legacy):
    files = [p for p in legacy.rglob("*") if p.is_file() and not p.is_symlink() and p.name != "metadata.json"]
    logical = sum(p.stat().st_size for p in files)
    unique = sum({hashlib.sha256(p.read_bytes()).hexdigest(): p.stat().st_size for p in files}.values())
    run = cli("import-legacy", legacy, "--json")
    assert run.code == 0, run.err
    saved = run.json()["bytes_saved"]
    # every duplicate byte is saved; only the small tree objects are added on top of the distinct files
    assert logical - unique - 16 * 1024 <= saved < logical - unique
    assert cli("import-legacy", legacy, "--json").json()["bytes_saved"] == 0  # the second run adds nothing

    status = cli("status", "--json").json()
    store = status["store"]
    assert store["logical_bytes"] == logical
    # on disk: each distinct file once, plus a few small tree objects
    assert unique <= store["bytes_on_disk"] <= unique + 16 * 1024
    assert store["logical_bytes"] - store["bytes_on_disk"] > 5 * WEIGHTS
    models = {m["model"]: m for m in status["models"]}
    assert models["ssd"]["versions"] == 7 and models["ssd"]["current"] == "1.5.0"
    assert models["catboost"]["versions"] == 4 and models["catboost"]["current"] == "1.3.0"
    text = cli("status").out
    from gaia_cas.humanize import size

    assert f"deduplication saves {size(store['logical_bytes'] - store['bytes_on_disk'])}" in text


def test_report_text_names_every_version_and_the_saving(cli, legacy):
    run = cli("import-legacy", legacy)
    assert run.code == 0, run.err
    assert "dl_model -> ssd: imported 7 versions, current 1.5.0" in run.out
    assert "ml_model -> catboost: imported 4 versions, current 1.3.0" in run.out
    for folder, _ in DL_FOLDERS + ML_FOLDERS:
        assert folder in run.out
    assert "v1.3_20250716_202612 -> 1.3.1" in run.out
    last = run.out.strip().splitlines()[-1]
    assert last.startswith("identical copies stored once: ") and last.endswith(" saved")
    number, unit = last.split(": ")[1].split()[:2]  # as du -h writes it, e.g. "23 MiB"
    assert float(number) * {"B": 1, "KiB": 1024, "MiB": 1 << 20, "GiB": 1 << 30}[unit] > 5 * WEIGHTS


def test_second_import_changes_nothing(cli, root, legacy):
    assert cli("import-legacy", legacy).code == 0
    manifests = manifest_bytes(root)
    store = snapshot(root / "store")
    logs = snapshot(root / "logs")
    before = tree_state(legacy)
    run = cli("import-legacy", legacy, "--json")
    assert run.code == 0, run.err
    doc = run.json()
    for model in doc["models"]:
        assert model["imported"] == []
        assert all(s["why"].startswith("already imported as ") for s in model["skipped"])
        assert model["new_bytes"] == 0
    skipped = {m["model"]: {s["legacy"]: s["why"] for s in m["skipped"]} for m in doc["models"]}
    assert skipped["ssd"]["v1.3_20250716_202612"] == "already imported as 1.3.1"
    assert len(skipped["ssd"]) == 7 and len(skipped["catboost"]) == 4
    assert manifest_bytes(root) == manifests  # byte-identical
    assert snapshot(root / "store") == store
    assert snapshot(root / "logs") == logs
    assert tree_state(legacy) == before


def test_import_is_remembered_after_a_cleanup(cli, root, legacy, repo):
    assert cli("import-legacy", legacy).code == 0
    assert cli("cleanup", "ssd", "--keep", "2").code == 0
    assert [v.version for v in repo.manifest("ssd").versions] == ["1.4.0", "1.5.0"]
    manifests = manifest_bytes(root)
    run = cli("import-legacy", legacy, "--json")
    assert run.code == 0, run.err
    assert all(m["imported"] == [] for m in run.json()["models"])
    assert manifest_bytes(root) == manifests  # cleaned-up versions do not come back


def test_dry_run_writes_nothing(cli, root, legacy):
    before_root = snapshot(root)
    before = tree_state(legacy)
    run = cli("import-legacy", legacy, "--dry-run", "--json")
    assert run.code == 0, run.err
    doc = run.json()
    assert doc["dry_run"] is True
    planned = {m["model"]: [(i["legacy"], i["version"]) for i in m["imported"]] for m in doc["models"]}
    assert planned["ssd"] == [(f, v) for (f, _), v in zip(DL_FOLDERS, DL_EXPECTED)]
    assert planned["catboost"] == [(f, v) for (f, _), v in zip(ML_FOLDERS, ML_EXPECTED)]
    assert snapshot(root) == before_root
    assert tree_state(legacy) == before
    assert "would import 7 versions" in cli("import-legacy", legacy, "--dry-run").out
    assert snapshot(root) == before_root


def test_history_records_each_import_with_its_legacy_folder_and_reason(cli, root, legacy, repo):
    assert cli("import-legacy", legacy, "--reason", "migration off the copy script").code == 0
    history = repo.history("ssd")
    imports = [e for e in history if e.action == "import" and "legacy" in e.details]
    assert [e.details["legacy"] for e in imports] == [f for f, _ in DL_FOLDERS]
    assert [e.version for e in imports] == DL_EXPECTED
    assert all(e.reason == "migration off the copy script" and e.user and e.host for e in imports)
    assert history[-1].action == "import" and history[-1].after == "1.5.0"
    assert {v.reason for v in repo.manifest("ssd").versions} == {"migration off the copy script"}
    doc = cli("history", "ssd", "--json").json()
    assert [e["action"] for e in doc["events"]].count("import") == len(imports) + 1
    assert len({e["generation"] for e in doc["events"]}) == 1  # one commit for the whole model


def test_per_version_problems_are_reported_and_the_rest_imported(cli, root, tmp_path):
    base = tmp_path / "old"
    versions = base / "dl_model" / "versions"
    make_savedmodel(versions / "v1.0_20250711_143245" / "saved_model", 0)
    (versions / "v1.0_20250711_143245" / "metadata.json").write_text(json.dumps({"architecture": "ssd"}))
    make_savedmodel(versions / "v1.1_20250712_000000" / "saved_model", 1)  # no metadata.json
    make_savedmodel(versions / "v1.2_20250713_000000" / "saved_model", 2)
    (versions / "v1.2_20250713_000000" / "metadata.json").write_text("{not json")
    make_savedmodel(versions / "v1.3_20250714_000000" / "saved_model", 3)
    (versions / "v1.3_20250714_000000" / "metadata.json").write_text("[1, 2]")  # JSON, but not an object
    (versions / "v1.4_20250715_000000").mkdir()  # no model in it
    (versions / "v1.4_20250715_000000" / "metadata.json").write_text("{}")
    outside = make_savedmodel(tmp_path / "elsewhere" / "saved_model", 9)
    (versions / "v1.5_20250716_000000").mkdir()
    os.symlink(outside, versions / "v1.5_20250716_000000" / "saved_model")  # never followed
    (versions / "notes.txt").write_text("not a version")
    os.symlink("versions/v9.9_20990101_000000/saved_model", base / "dl_model" / "current")  # dangling
    before = tree_state(base)

    run = cli("import-legacy", base, "--json")
    assert run.code == 0, run.err
    model = run.json()["models"][0]
    imported = {i["legacy"]: i for i in model["imported"]}
    assert list(imported) == ["v1.0_20250711_143245", "v1.1_20250712_000000", "v1.2_20250713_000000",
                              "v1.3_20250714_000000"]
    assert imported["v1.0_20250711_143245"]["notes"] == []
    assert imported["v1.1_20250712_000000"]["notes"] == ["no metadata.json"]
    assert "malformed metadata.json" in imported["v1.2_20250713_000000"]["notes"][0]
    assert "malformed metadata.json" in imported["v1.3_20250714_000000"]["notes"][0]
    skipped = {s["legacy"]: s["why"] for s in model["skipped"]}
    assert set(skipped) == {"v1.4_20250715_000000", "v1.5_20250716_000000", "notes.txt"}
    assert "no model" in skipped["v1.4_20250715_000000"]
    assert "symlink" in skipped["v1.5_20250716_000000"]
    assert any("dangling" in p for p in model["problems"])

    manifest = gaia_cas.Repository(root).manifest("ssd")
    assert [v.version for v in manifest.versions] == ["1.0.0", "1.1.0", "1.2.0", "1.3.0"]
    assert manifest.find("1.0.0").metadata == {"architecture": "ssd"}
    assert manifest.find("1.1.0").metadata == {} and manifest.find("1.2.0").metadata == {}
    assert manifest.current == "1.3.0"  # the dangling current falls back to the newest, and says so
    assert any("1.3.0" in p and "current" in p for p in model["problems"])
    # nothing from outside PATH was read into the store
    outside_pb = (outside / "saved_model.pb").read_bytes()
    assert all(p.read_bytes() != outside_pb for p in (root / "store" / "objects").rglob("*") if p.is_file())
    assert tree_state(base) == before

    text = cli("import-legacy", base).out  # the text report says the same, per version
    assert "skipped v1.4_20250715_000000" in text and "already imported as 1.0.0" in text


def test_current_that_is_not_a_symlink_or_missing_is_reported(cli, root, tmp_path):
    base = tmp_path / "old"
    make_joblib(base / "a_model" / "versions" / "v1.0_20250101_000000" / "m.joblib", 0)
    make_joblib(base / "a_model" / "versions" / "v1.1_20250102_000000" / "m.joblib", 1)
    (base / "a_model" / "current").write_text("not a link")
    make_joblib(base / "b_model" / "versions" / "v1.0_20250101_000000" / "m.joblib", 2)
    run = cli("import-legacy", base, "--json")
    assert run.code == 0, run.err
    models = {m["model"]: m for m in run.json()["models"]}
    assert any("not a symlink" in p for p in models["a"]["problems"])
    assert any("missing" in p for p in models["b"]["problems"])
    assert models["a"]["current"] == "1.1.0" and models["b"]["current"] == "1.0.0"


def test_map_names_the_model(cli, root, legacy, repo):
    run = cli("import-legacy", legacy, "--map", "dl_model=detector", "--json")
    assert run.code == 0, run.err
    assert repo.models() == ["catboost", "detector"]
    assert repo.manifest("detector").current == "1.5.0"
    assert repo.model("ml") == "catboost"
    assert gaia_cas.resolve("detector", root=root).version == "1.5.0"


@pytest.mark.parametrize("argv, fragment", [
    (["--map", "dl_model=Bad Name"], "invalid model name"),
    (["--map", "nosuch_model=x"], "nosuch_model"),
    (["--map", "dl_model"], "FOLDER=MODEL"),
])
def test_bad_map_is_one_line_and_writes_nothing(cli, root, legacy, argv, fragment):
    before = snapshot(root)
    run = cli("import-legacy", legacy, *argv)
    assert_one_line_error(run, fragment)
    assert snapshot(root) == before


def test_missing_or_empty_path_is_one_line_and_writes_nothing(cli, root, tmp_path):
    before = snapshot(root)
    assert_one_line_error(cli("import-legacy", tmp_path / "nowhere"), "not a folder")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(cli("import-legacy", tmp_path / "empty"), "nothing to import")
    assert snapshot(root) == before
