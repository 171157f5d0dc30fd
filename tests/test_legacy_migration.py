"""import-legacy as a migration: production keeps serving the same bytes through its legacy
`current` links (taken over atomically), the model keeps its metadata for the next deploy, the
report says what is still needed, the legacy times are read in a stated zone -- and a hostile
legacy tree (symlinks, FIFOs, odd folder names) neither leaks, hangs nor aborts the import."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from datetime import datetime
from pathlib import Path

import pytest

import gaia_cas
import gaia_cas.atomic
from conftest import assert_one_line_error, make_joblib, make_savedmodel, snapshot
from test_hostile_input import NOBODY, as_nobody, chown_tree, shared  # noqa: F401  (fixture)
from test_legacy import artifact_bytes, build_legacy, tree_state

PER_VERSION = ("version", "timestamp", "created_at", "size_mb")


@pytest.fixture
def inside(root) -> Path:
    """The legacy layout inside the root, where the API reads it: <root>/api/models."""
    return build_legacy(root / "api" / "models")


def _served(link: Path) -> list[bytes]:
    return artifact_bytes(link)


# -- item 12.6: the legacy current links are taken over, atomically ---------------------------

def test_links_inside_the_root_are_taken_over_and_serve_the_same_bytes(cli, root, inside):
    dl_link, ml_link = inside / "dl_model" / "current", inside / "ml_model" / "current"
    before_dl, before_ml = _served(dl_link), ml_link.read_bytes()
    run = cli("import-legacy", inside, "--json")
    assert run.code == 0, run.err
    report = {m["model"]: m for m in run.json()["models"]}
    assert report["ssd"]["link"] == "api/models/dl_model/current" and report["ssd"]["link_taken_over"] is True
    assert report["catboost"]["link"] == "api/models/ml_model/current"
    for link in (dl_link, ml_link):
        target = os.path.realpath(link)
        assert target.startswith(str((root / "store" / "trees").resolve()) + os.sep), target
    assert _served(dl_link) == before_dl
    assert ml_link.read_bytes() == before_ml and os.path.basename(os.readlink(ml_link)) == "model_catboost_best.joblib"
    # the model owns the link: the manifest names it, and no second link was made
    repo = gaia_cas.Repository(root)
    assert repo.manifest("ssd").config.link == "api/models/dl_model/current"
    assert not (root / "models" / "ssd").exists()
    # a rollback moves the taken-over link
    assert cli("rollback", "dl", "1.2").code == 0
    assert os.path.realpath(dl_link) == str(gaia_cas.resolve("ssd", root=root).path)


def test_the_takeover_replaces_the_link_by_rename_never_unlink(cli, root, inside, monkeypatch):
    """Deterministic interleaving: at the very moment of the swap the old link still serves the
    legacy bytes, and the link's name is never unlinked."""
    dl_link = inside / "dl_model" / "current"
    legacy_bytes = _served(dl_link)
    swaps, unlinked = [], []
    real_replace, real_unlink = os.replace, os.unlink

    def full(path, fd):  # links are swapped relative to their folder, held by descriptor
        return os.path.join(os.readlink(f"/proc/self/fd/{fd}"), path) if fd is not None else os.path.abspath(path)

    def replace(src, dst, *a, **k):
        if full(dst, k.get("dst_dir_fd")) == str(dl_link):
            assert _served(dl_link) == legacy_bytes  # still there, still the legacy copy
            assert os.path.realpath(dl_link).startswith(str(inside))
            swaps.append(src)
        return real_replace(src, dst, *a, **k)

    def unlink(path, *a, **k):
        unlinked.append(full(path, k.get("dir_fd")))
        return real_unlink(path, *a, **k)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "unlink", unlink)
    assert cli("import-legacy", inside).code == 0
    assert len(swaps) == 1
    assert str(dl_link) not in unlinked
    assert _served(dl_link) == legacy_bytes


def test_a_reader_looping_on_the_link_never_misses_during_the_import(root, inside, tmp_path):
    """A bounded real race: a reader process opens current/saved_model.pb in a loop while the import runs."""
    pb = inside / "dl_model" / "current" / "saved_model.pb"
    expected = pb.read_bytes()
    reader = subprocess.Popen(
        [sys.executable, "-c", "import sys, os\np, want = sys.argv[1], sys.argv[2]\nbad = n = 0\n"
         "while not os.path.exists(sys.argv[3]):\n"
         "    n += 1\n"
         "    try:\n        ok = open(p, 'rb').read() == bytes.fromhex(want)\n    except OSError:\n        ok = False\n"
         "    bad += not ok\n"
         "    if n == 1:\n        print('ready', flush=True)\n"
         "print(n, bad)", str(pb), expected.hex(), str(tmp_path / "stop")],
        stdout=subprocess.PIPE, text=True)
    try:
        import select

        # the import starts once the reader has read once: a loaded machine cannot shrink the race to nothing
        assert select.select([reader.stdout], [], [], 30)[0] and reader.stdout.readline() == "ready\n"
        gaia_cas.Repository(root, lock_timeout=5).import_legacy(inside)
    finally:
        (tmp_path / "stop").touch()
        out, _ = reader.communicate(timeout=30)
    reads, bad = map(int, out.split())
    assert reads > 0 and bad == 0
    assert os.path.realpath(pb).startswith(str((root / "store" / "trees").resolve()))


def test_keep_links_leaves_the_legacy_links_alone(cli, root, inside):
    before = tree_state(inside)
    run = cli("import-legacy", inside, "--keep-links", "--json")
    assert run.code == 0, run.err
    assert tree_state(inside) == before
    assert {m["link"] for m in run.json()["models"]} == {"models/ssd/current", "models/catboost/current"}
    assert os.path.realpath(root / "models" / "ssd" / "current") == str(gaia_cas.resolve("ssd", root=root).path)


def test_a_layout_outside_the_root_is_untouched_and_the_report_says_where_to_put_the_root(cli, root, tmp_path):
    legacy = build_legacy(tmp_path / "api" / "models")
    before = tree_state(legacy)
    run = cli("import-legacy", legacy)
    assert run.code == 0, run.err
    assert tree_state(legacy) == before
    assert "dl_model/current is outside the root" in run.out
    assert f"gaia-cas init {tmp_path}" in run.out


def test_dry_run_says_it_would_take_the_link_over_and_writes_nothing(cli, root, inside):
    before = snapshot(root)
    run = cli("import-legacy", inside, "--dry-run")
    assert run.code == 0, run.err
    assert "would take over dl_model/current" in run.out
    assert snapshot(root) == before


# -- item 12.6: metadata seeded, the command still needed printed ----------------------------

def test_default_metadata_comes_from_the_legacy_current_and_survives_a_deploy(cli, root, inside, tmp_path):
    legacy_current = json.loads((inside / "dl_model" / "versions" / "v1.5_20250716_202917" / "metadata.json").read_text())
    legacy_current.update({"deployed_at": "2025-07-16T20:29:17", "deployment_id": "20250716_202917",
                           "model_size_mb": 23.4, "model_size_bytes": 24540000})
    (inside / "dl_model" / "versions" / "v1.5_20250716_202917" / "metadata.json").write_text(json.dumps(legacy_current))
    run = cli("import-legacy", inside, "--json")
    assert run.code == 0, run.err
    ssd = {m["model"]: m for m in run.json()["models"]}["ssd"]
    expected = {k: v for k, v in legacy_current.items()
                if k not in PER_VERSION + ("deployed_at", "deployment_id") and not k.startswith("model_size_")}
    assert ssd["default_metadata"] == sorted(expected)
    repo = gaia_cas.Repository(root)
    assert repo.manifest("ssd").config.metadata == expected
    # the imported versions keep every field of their own metadata.json
    assert repo.manifest("ssd").find("1.5.0").metadata == legacy_current

    new = make_savedmodel(tmp_path / "train" / "saved_model", variant=42)
    assert cli("model", "set", "ssd", "--source", new).code == 0
    deployed = cli("deploy", "ssd", "--json")
    assert deployed.code == 0, deployed.err
    assert deployed.json()["version"] == "1.6.0"
    # the README's own example
    active = gaia_cas.resolve("ssd", root=root)
    print(active.version, active.hash, active.metadata["detection_threshold"], active.generation)
    assert active.metadata["detection_threshold"] == 0.5
    assert active.metadata["architecture"] == "SSD MobileNet V2"
    assert active.metadata["training"] == legacy_current["training"]
    for key in PER_VERSION + ("deployed_at", "deployment_id", "model_size_mb", "model_size_bytes"):
        assert key not in active.metadata, key


def test_the_report_names_the_model_set_source_command_still_needed(cli, root, inside):
    run = cli("import-legacy", inside)
    assert run.code == 0, run.err
    assert f"next: gaia-cas --root {root} model set ssd --source PATH" in run.out
    assert f"next: gaia-cas --root {root} model set catboost --source PATH" in run.out
    doc = cli("import-legacy", inside, "--json").json()  # a second run: still needed
    assert {m["model"]: m["next_command"] for m in doc["models"]}["ssd"] == \
        f"gaia-cas --root {root} model set ssd --source PATH"


# -- item 12.6: legacy naive times, in a stated zone, microseconds kept ----------------------

def test_timezone_is_stated_and_microseconds_are_kept(cli, root, tmp_path):
    legacy = build_legacy(tmp_path / "a" / "models")
    run = cli("import-legacy", legacy, "--timezone", "+02:00", "--json")
    assert run.code == 0, run.err
    assert run.json()["timezone"] == "+02:00"
    v = cli("show", "ssd", "1.0", "--json").json()
    moment = datetime.fromisoformat(v["created_at"])
    assert moment.utcoffset().total_seconds() == 7200
    assert (moment.hour, moment.minute, moment.second, moment.microsecond) == (14, 32, 45, 571234)


def test_default_timezone_is_the_machines_and_the_output_says_so(cli, root, tmp_path):
    legacy = build_legacy(tmp_path / "a" / "models")
    run = cli("import-legacy", legacy)
    assert run.code == 0, run.err
    assert "legacy timestamps read in the machine's local time zone" in run.out
    created = datetime.fromisoformat(cli("show", "ssd", "1.0", "--json").json()["created_at"])
    assert created == datetime(2025, 7, 11, 14, 32, 45, 571234).astimezone()


def test_a_named_zone_applies_its_daylight_saving(cli, root, tmp_path):
    pytest.importorskip("zoneinfo").ZoneInfo("Europe/Paris")
    legacy = build_legacy(tmp_path / "a" / "models")
    assert cli("import-legacy", legacy, "--timezone", "Europe/Paris").code == 0
    created = datetime.fromisoformat(cli("show", "ssd", "1.0", "--json").json()["created_at"])
    assert created.utcoffset().total_seconds() == 7200  # July: CEST


def test_an_unknown_timezone_is_one_line_and_writes_nothing(cli, root, tmp_path):
    legacy = build_legacy(tmp_path / "a" / "models")
    before = snapshot(root)
    assert_one_line_error(cli("import-legacy", legacy, "--timezone", "Mars/Olympus"), "--timezone")
    assert_one_line_error(cli("import-legacy", legacy, "--timezone", "+25:00"), "--timezone")
    assert snapshot(root) == before


# -- item 12.11: a link outside versions/ is not "dangling" ----------------------------------

def test_a_valid_link_outside_versions_is_not_called_dangling(cli, root, tmp_path):
    legacy = build_legacy(tmp_path / "a" / "models")
    elsewhere = make_savedmodel(tmp_path / "hotfix" / "saved_model", variant=99)
    os.unlink(legacy / "dl_model" / "current")
    os.symlink(elsewhere, legacy / "dl_model" / "current")
    for argv in (("--dry-run",), ()):
        run = cli("import-legacy", legacy, *argv, "--json")
        assert run.code == 0, run.err
        problems = " ".join({m["model"]: m for m in run.json()["models"]}["ssd"]["problems"])
        assert "dangling" not in problems
        assert "points outside versions/" in problems


def test_an_absolute_link_into_versions_is_recognised(cli, root, tmp_path):
    legacy = build_legacy(tmp_path / "a" / "models")
    os.unlink(legacy / "dl_model" / "current")
    os.symlink(legacy / "dl_model" / "versions" / "v1.2_20250714_090000" / "saved_model", legacy / "dl_model" / "current")
    run = cli("import-legacy", legacy, "--dry-run", "--json")
    ssd = {m["model"]: m for m in run.json()["models"]}["ssd"]
    assert not any("dangling" in p or "outside versions" in p for p in ssd["problems"])
    assert cli("import-legacy", legacy).code == 0
    assert gaia_cas.resolve("ssd", root=root).version == "1.2.0"


# -- issue 13 "also": a folder name that is no date skips that folder only -------------------

def test_a_version_folder_with_an_impossible_date_is_skipped_and_the_rest_imported(cli, root, tmp_path):
    legacy = build_legacy(tmp_path / "a" / "models")
    bad = legacy / "dl_model" / "versions" / "v1.0_20251399_999999"
    make_savedmodel(bad / "saved_model", variant=77)
    run = cli("import-legacy", legacy, "--json")
    assert run.code == 0, run.err
    ssd = {m["model"]: m for m in run.json()["models"]}["ssd"]
    (skipped,) = [s for s in ssd["skipped"] if s["legacy"] == "v1.0_20251399_999999"]
    assert "20251399_999999" in skipped["why"] and "not a valid date" in skipped["why"]
    assert len(ssd["imported"]) == 7


# -- item 13.5: metadata.json through a symlink, a FIFO, or a swapped folder -----------------

def _nobody_legacy(shared: Path) -> Path:
    legacy = shared / "legacy"
    for folder, variant in (("v1.0_20250711_143245", 0), ("v1.1_20250712_101010", 1), ("v1.2_20250714_090000", 2)):
        make_savedmodel(legacy / "dl_model" / "versions" / folder / "saved_model", variant)
        (legacy / "dl_model" / "versions" / folder / "metadata.json").write_text(json.dumps({"ok": folder}))
    os.symlink("versions/v1.2_20250714_090000/saved_model", legacy / "dl_model" / "current")
    chown_tree(legacy)
    return legacy


def test_nobody_cannot_make_root_copy_a_secret_or_hang_the_import(root, shared, no_hang):
    """As root, import a legacy tree owned by nobody, in which nobody (for real, as uid 65534) has
    replaced one metadata.json by a symlink to a root-only JSON file and another by a FIFO."""
    secret_dir = shared / "secret"
    secret_dir.mkdir(mode=0o700)
    secret = secret_dir / "db.json"
    secret.write_text(json.dumps({"db_password": "hunter2"}))
    os.chmod(secret, 0o600)
    legacy = _nobody_legacy(shared)
    v0 = legacy / "dl_model" / "versions" / "v1.0_20250711_143245" / "metadata.json"
    v1 = legacy / "dl_model" / "versions" / "v1.1_20250712_101010" / "metadata.json"

    def plant():
        os.unlink(v0)
        os.symlink(secret, v0)
        os.unlink(v1)
        os.mkfifo(v1)
        return 0

    assert as_nobody(plant, cwd=shared).code == 0
    assert os.lstat(v0).st_uid == NOBODY
    plans = gaia_cas.Repository(root, lock_timeout=5).import_legacy(legacy)
    notes = {v.label: v.notes for v in plans[0].versions}
    assert any("symlink" in n for n in notes["v1.0_20250711_143245"])
    assert any("not a regular file" in n for n in notes["v1.1_20250712_101010"])
    for path in (root / "manifests").iterdir():
        assert b"hunter2" not in path.read_bytes()
    manifest = gaia_cas.Repository(root).manifest("ssd")
    assert manifest.find("1.0.0").metadata == {} and manifest.find("1.2.0").metadata == {"ok": "v1.2_20250714_090000"}


def test_a_version_folder_swapped_to_a_symlink_after_listing_is_not_followed(cli, root, tmp_path, monkeypatch):
    """Deterministic interleaving: the folder is replaced by a symlink to a secret folder between
    the listing of versions/ and the opening of the version folder."""
    legacy = build_legacy(tmp_path / "a" / "models")
    secret = tmp_path / "secret"
    (secret / "saved_model").mkdir(parents=True)
    (secret / "metadata.json").write_text(json.dumps({"db_password": "hunter2"}))
    target = legacy / "dl_model" / "versions" / "v1.1_20250712_101010"
    import gaia_cas.legacy as legacy_module

    real = legacy_module._scan_version

    def swap_then_scan(plan, path, entry, versions_fd, zone):
        if entry.name == target.name:
            shutil.rmtree(target)
            os.symlink(secret, target)
        return real(plan, path, entry, versions_fd, zone)

    monkeypatch.setattr(legacy_module, "_scan_version", swap_then_scan)
    run = cli("import-legacy", legacy, "--json")
    assert run.code == 0, run.err
    ssd = {m["model"]: m for m in run.json()["models"]}["ssd"]
    assert target.name in {s["legacy"] for s in ssd["skipped"]}
    for path in (root / "manifests").iterdir():
        assert b"hunter2" not in path.read_bytes()


def test_an_oversized_metadata_json_skips_its_version(cli, root, tmp_path):
    from gaia_cas.legacy import MAX_METADATA_BYTES

    legacy = build_legacy(tmp_path / "a" / "models")
    big = legacy / "ml_model" / "versions" / "v1.1_20250712_101020" / "metadata.json"
    with open(big, "w") as f:
        f.write('{"pad": "')
        f.truncate(MAX_METADATA_BYTES + 10)
    run = cli("import-legacy", legacy, "--json")
    assert run.code == 0, run.err
    ml = {m["model"]: m for m in run.json()["models"]}["catboost"]
    (skipped,) = [s for s in ml["skipped"] if s["legacy"] == "v1.1_20250712_101020"]
    assert str(MAX_METADATA_BYTES) in skipped["why"]


def test_a_model_added_beforehand_without_versions_takes_the_link_over_too(cli, root, inside):
    assert cli("model", "add", "ssd", "--alias", "dl", "--meta", "detection_threshold=0.7").code == 0
    before = _served(inside / "dl_model" / "current")
    assert cli("import-legacy", inside).code == 0
    manifest = gaia_cas.Repository(root).manifest("ssd")
    assert manifest.config.link == "api/models/dl_model/current"
    assert _served(inside / "dl_model" / "current") == before
    assert os.path.realpath(inside / "dl_model" / "current").startswith(str((root / "store").resolve()))
    # the model's own default wins over the legacy one; the others are seeded
    assert manifest.config.metadata["detection_threshold"] == 0.7
    assert manifest.config.metadata["architecture"] == "SSD MobileNet V2"


def test_a_model_already_serving_elsewhere_keeps_its_link_and_is_told_how_to_move(cli, root, inside, tmp_path):
    src = make_savedmodel(tmp_path / "s" / "saved_model", variant=5)
    assert cli("deploy", "ssd", src).code == 0
    legacy_before = os.readlink(inside / "dl_model" / "current")
    run = cli("import-legacy", inside)
    assert run.code == 0, run.err
    assert os.readlink(inside / "dl_model" / "current") == legacy_before
    assert "gaia-cas model set ssd --link api/models/dl_model/current" in run.out


def test_a_second_run_after_the_takeover_reports_no_problem_with_the_link(cli, root, inside):
    assert cli("import-legacy", inside).code == 0
    again = cli("import-legacy", inside, "--json")
    assert again.code == 0, again.err
    for model in again.json()["models"]:
        assert model["problems"] == [], model["problems"]
        assert model["imported"] == []


def test_a_current_link_to_the_version_folder_is_left_serving_its_own_layout(cli, root, inside):
    """The old layout may point current at the version folder (current/saved_model/..., with
    current/metadata.json beside it). Taking it over would point it at the artifact and break
    every path the API uses below it: it is left as it is, and the report says why."""
    dl_link = inside / "dl_model" / "current"
    dl_link.unlink()
    dl_link.symlink_to("versions/v1.5_20250716_202917")
    pb = dl_link / "saved_model" / "saved_model.pb"
    before = pb.read_bytes()
    run = cli("import-legacy", inside, "--json")
    assert run.code == 0, run.err
    ssd = {m["model"]: m for m in run.json()["models"]}["ssd"]
    assert ssd["link_taken_over"] is False
    assert any("version folder" in p for p in ssd["problems"]), ssd["problems"]
    assert pb.read_bytes() == before and (dl_link / "metadata.json").is_file()
    assert os.readlink(dl_link) == "versions/v1.5_20250716_202917"
