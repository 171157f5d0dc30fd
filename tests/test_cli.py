"""The command line: the old script's daily flow, JSON shapes, errors, root discovery, logs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import CHECKOUT, assert_one_line_error, make_joblib, make_savedmodel, run_launcher, snapshot


@pytest.mark.parametrize("kind", ["directory", "file"])
def test_daily_flow_end_to_end(cli, root, tmp_path, kind):
    """deploy x3, list, status, rollback to each selector form, redeploy, unchanged, logs."""
    if kind == "directory":
        src = tmp_path / "ssd"
        make = lambda variant: make_savedmodel(src, variant)  # noqa: E731
        loader_name = "saved_model.pb"
    else:
        src = tmp_path / "cb" / "model_catboost_best.joblib"
        make = lambda variant: make_joblib(src, variant)  # noqa: E731
        loader_name = "model_catboost_best.joblib"
    assert cli("model", "add", "m", "--alias", "x").code == 0

    hashes = []
    for variant in range(3):
        make(variant)
        run = cli("deploy", "m", src, "--reason", f"variant {variant}", "--json")
        assert run.code == 0, run.err
        doc = run.json()
        assert set(doc) >= {"model", "version", "hash", "unchanged", "path", "size_bytes", "format"}
        assert doc["version"] == f"1.{variant}.0" and doc["unchanged"] is False
        hashes.append(doc["hash"])

    listing = cli("list", "m", "--json").json()
    assert listing["model"] == "m" and listing["current"] == "1.2.0"
    assert [v["version"] for v in listing["versions"]] == ["1.2.0", "1.1.0", "1.0.0"]  # newest first
    assert [v["current"] for v in listing["versions"]] == [True, False, False]
    assert set(listing["versions"][0]) >= {"version", "hash", "created_at", "size_bytes", "format", "current",
                                           "metadata"}
    text = cli("list", "m").out
    assert re.search(r"^\s+\*\s+1\.2\.0\s", text, re.M) and "variant 2" in text

    status = cli("status", "--json").json()
    assert status["models"] == [{"model": "m", "current": "1.2.0", "versions": 3,
                                 "size_bytes": listing["versions"][0]["size_bytes"],
                                 "logical_bytes": sum(v["size_bytes"] for v in listing["versions"])}]
    assert set(status["store"]) == {"objects", "bytes_on_disk", "logical_bytes", "reclaimable_bytes", "used_bytes",
                                    "saved_bytes", "garbage_bytes", "staging_bytes", "file_saved_bytes",
                                    "chunk_saved_bytes", "chunk_bytes"}

    v1 = listing["versions"][1]
    for form in ["1.1.0", "1.1", "v1.1", "v1.1.0", f"v1.1_{v1['deployment_id']}",
                 f"v1.1.0_{v1['deployment_id']}", v1["hash"][:8]]:
        assert cli("rollback", "x", "1.2.0").code == 0
        run = cli("rollback", "x", form, "--json")
        assert run.code == 0, (form, run.err)
        assert run.json() == {"model": "m", "version": "1.1.0", "previous": "1.2.0", "unchanged": False,
                              "path": run.json()["path"]}
        current = root / "models" / "m" / "current"
        target = current / loader_name if kind == "directory" else current
        assert os.path.basename(os.path.realpath(target)) == loader_name
        assert os.path.realpath(current).startswith(str(root / "store" / "trees" / v1["hash"]))

    make(0)  # the bytes of 1.0.0 again: a new number, not a reused one
    doc = cli("deploy", "m", src, "--json").json()
    assert (doc["version"], doc["unchanged"], doc["hash"]) == ("1.3.0", False, hashes[0])
    doc = cli("deploy", "m", src, "--json").json()
    assert (doc["version"], doc["unchanged"]) == ("1.3.0", True)
    assert len(cli("list", "m", "--json").json()["versions"]) == 4

    logs = cli("logs", "-n", "50").out.splitlines()
    assert any("deployed m 1.3.0" in line for line in logs)
    assert any("rolled back m" in line for line in logs)
    line_format = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} - [\w.]+ - INFO - .+")
    assert logs and all(line_format.match(line) for line in logs)
    assert all(re.fullmatch(r"versioning_\d{8}_\d{6}\.log", p.name) for p in (root / "logs").iterdir())


def test_seven_versions_differing_in_one_small_file_store_one_copy(cli, tmp_path, root):
    """The old layout's case: 7 x 23 MB would be ~160 MB; the store keeps ~23 MB."""
    src = tmp_path / "ssd"
    big = 23 * 1024 * 1024
    for variant in range(7):
        make_savedmodel(src, variant, variables_bytes=big)
        assert cli("deploy", "ssd", src).code == 0
    store = cli("status", "--json").json()["store"]
    assert store["logical_bytes"] > 7 * big
    assert big < store["bytes_on_disk"] < big * 1.01
    text = cli("status").out
    assert "deduplication saves" in text


def test_json_flag_before_or_after_the_subcommand(cli, savedmodel):
    cli("deploy", "ssd", savedmodel)
    after = cli("status", "--json")
    before = cli("--json", "status")
    assert after.code == before.code == 0
    assert json.loads(after.out) == json.loads(before.out)


def test_show_defaults_to_current_and_prints_metadata(cli, savedmodel):
    cli("model", "add", "ssd", "--meta", "framework=tensorflow", "--meta", "input_size=[320, 320]")
    cli("deploy", "ssd", savedmodel, "--meta", "detection_threshold=0.5")
    doc = cli("show", "ssd", "--json").json()
    assert doc["version"] == "1.0.0" and doc["current"] is True
    assert doc["metadata"] == {"framework": "tensorflow", "input_size": [320, 320], "detection_threshold": 0.5}
    text = cli("show", "ssd", "1.0").out
    assert "metadata.framework" in text and '"tensorflow"' in text


def test_argument_errors_exit_2_with_usage(cli):
    run = cli("rollback", "ssd")
    assert run.code == 2 and "usage:" in run.err
    run = cli("deploy", "ssd", "--bump", "huge")
    assert run.code == 2
    run = cli()
    assert run.code == 2


@pytest.mark.parametrize("argv, fragment", [
    (["deploy", "ssd", "/definitely/missing"], "does not exist"),
    (["deploy", "../x", "/tmp"], "invalid model name"),
    (["rollback", "nope", "1.0"], "unknown model 'nope'"),
    (["show", "nope"], "unknown model"),
    (["deploy", "ssd", "SRC", "--version", "one"], "malformed version"),
    (["deploy", "ssd", "SRC", "--meta", "novalue"], "KEY=VALUE"),
    (["model", "add", "ssd", "--link", "../outside/current"], "invalid link path"),
    (["model", "add", "ssd", "--link", "/etc/current"], "outside the root"),
    (["model", "add", "ssd", "--link", "store/x"], "belong to gaia-cas"),
])
def test_bad_input_is_one_line_and_changes_nothing(cli, root, savedmodel, argv, fragment):
    argv = [str(savedmodel) if a == "SRC" else a for a in argv]
    before = snapshot(root)
    assert_one_line_error(cli(*argv), fragment)
    assert snapshot(root) == before


def test_bad_version_and_unknown_version_on_an_existing_model(cli, root, savedmodel):
    cli("deploy", "ssd", savedmodel)
    before = snapshot(root)
    assert_one_line_error(cli("rollback", "ssd", "v9.9"), "has no version 'v9.9'")
    assert_one_line_error(cli("rollback", "ssd", "1.2.3.4"), "malformed version")
    assert_one_line_error(cli("show", "ssd", "latest-ish"), "malformed version")
    assert snapshot(root) == before


def test_verbose_shows_the_traceback(cli):
    run = cli("-v", "rollback", "nope", "1.0")
    assert run.code == 1 and "Traceback" in run.err and run.err.strip().endswith("(none registered yet)")


def test_root_discovery_env_ancestor_and_error(tmp_path, monkeypatch, savedmodel):
    from gaia_cas.cli import main

    root = tmp_path / "data"
    assert main(["init", str(root)]) == 0
    assert main(["init", str(root)]) == 0  # idempotent
    monkeypatch.setenv("GAIA_CAS_ROOT", str(root))
    assert main(["deploy", "ssd", str(savedmodel)]) == 0
    monkeypatch.delenv("GAIA_CAS_ROOT")
    deep = root / "models" / "deeper"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    assert main(["rollback", "ssd", "1.0"]) == 0  # found by walking up
    monkeypatch.chdir(tmp_path)
    assert main(["status"]) == 1


def test_no_root_error_names_init(cli, tmp_path):
    run = cli("status", root_dir=None)
    assert_one_line_error(run, "gaia-cas init")
    run = cli("--root", tmp_path / "nothing", "status", root_dir=None)
    assert_one_line_error(run, "gaia-cas init")


def test_checkout_launcher_defaults_to_the_checkout_and_installed_entry_point_does_not(tmp_path):
    """bin/gaia-cas falls back to the checkout's store/ and manifests/ (read-only check)."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    run = run_launcher("status", "--json", cwd=outside)
    assert run.code == 0, run.err
    assert "store" in run.json()
    assert str(CHECKOUT) in run_launcher("status", cwd=outside).out
    proc = subprocess.run([sys.executable, "-m", "gaia_cas", "status"], cwd=outside, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(CHECKOUT)})
    assert proc.returncode == 1 and "gaia-cas init" in proc.stderr


def test_python_dash_m_and_version(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(CHECKOUT)}
    proc = subprocess.run([sys.executable, "-m", "gaia_cas", "--version"], capture_output=True, text=True,
                          timeout=60, env=env)
    assert proc.returncode == 0 and proc.stdout.startswith("gaia-cas ")


def test_no_command_pays_for_a_lock_library_nor_the_hot_ones_for_dataclasses(root, savedmodel):
    """Locks are plain flocks: filelock (about 20 ms to import) is loaded by no command, not even
    one that takes the model lock. Deploy, rollback and list build no dataclass (about 9 ms)."""
    from gaia_cas.repo import Repository

    repo = Repository(root)
    repo.deploy("ssd", savedmodel)
    (savedmodel / "variables" / "variables.index").write_bytes(b"retrained")
    repo.deploy("ssd", savedmodel)
    code = (
        "import sys; from gaia_cas.cli import main; rc = main(['--root', sys.argv[1], *sys.argv[2:]]);"
        "print('filelock' in sys.modules, 'dataclasses' in sys.modules, rc)"
    )
    env = {**os.environ, "PYTHONPATH": str(CHECKOUT)}
    for command, expected in ((["list"], "False False 0"), (["status"], "False True 0"),
                              (["deploy", "ssd", str(savedmodel)], "False False 0"),
                              (["rollback", "ssd", "1.0.0"], "False False 0")):
        proc = subprocess.run([sys.executable, "-c", code, str(root), *command], capture_output=True,
                              text=True, timeout=60, env=env)
        assert proc.stdout.strip().splitlines()[-1] == expected, (command, proc.stdout, proc.stderr)
    assert repo.manifest("ssd").current == "1.0.0"  # the rollback took the lock and committed
    proc = subprocess.run([sys.executable, "-c", "import sys; from gaia_cas.cli import main;"
                           "import gaia_cas.parser; print(sorted(m for m in ('msgpack', 'xxhash', 'filelock')"
                           " if m in sys.modules))"], capture_output=True, text=True, timeout=60, env=env)
    assert proc.stdout.strip() == "[]"


def test_an_unchanged_redeploy_imports_no_typing_shutil_or_getpass(root, savedmodel, monkeypatch):
    """Each costs 0.3-1.5 ms at start-up. Run without site, whose .pth hooks may import them
    first, so this process's own imports are what is checked."""
    import types

    import msgpack
    import xxhash

    from gaia_cas import statcache
    from gaia_cas.repo import Repository

    past = 1_000_000_000  # the files are old: the stat cache trusts them, so the folder is recalled
    for path in savedmodel.rglob("*"):
        os.utime(path, (past, past))
    # utime moves the ctime to now, which no one can set back: the first deploy's clock runs
    # ahead instead, past the racy window, as for a source written a while ago.
    monkeypatch.setattr(statcache, "time", types.SimpleNamespace(time_ns=lambda: time.time_ns() + 10**10))
    repo = Repository(root)
    repo.deploy("ssd", savedmodel)
    deps = {str(Path(m.__file__).parent.parent) for m in (msgpack, xxhash)}
    env = {k: v for k, v in os.environ.items() if k not in ("LOGNAME", "USER", "LNAME", "USERNAME")}
    env["PYTHONPATH"] = os.pathsep.join([str(CHECKOUT), *deps])
    code = ("import sys; from gaia_cas.cli import main; rc = main(['--root', sys.argv[1], *sys.argv[2:]]);"
            "print(sorted(m for m in ('typing', 'shutil', 'getpass', 'dataclasses') if m in sys.modules), rc)")
    for command in (["deploy", "ssd", str(savedmodel)], ["list"], ["rollback", "ssd", "1.0.0"]):
        proc = subprocess.run([sys.executable, "-S", "-c", code, str(root), *command], capture_output=True,
                              text=True, timeout=60, env=env)
        assert proc.stdout.strip().splitlines()[-1] == "[] 0", (command, proc.stdout, proc.stderr)


def test_help_fits_the_terminal_width_given_by_columns(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(CHECKOUT)}
    shown = {}
    for columns in (50, 120):
        proc = subprocess.run([sys.executable, "-m", "gaia_cas", "deploy", "--help"], capture_output=True,
                              text=True, timeout=60, env={**env, "COLUMNS": str(columns)})
        assert proc.returncode == 0
        shown[columns] = proc.stdout.splitlines()
    # argparse never breaks a single token such as {major,minor,patch}: most lines, not all, fit
    assert sum(len(line) <= 50 for line in shown[50]) >= 0.9 * len(shown[50])
    assert len(shown[50]) > len(shown[120]) and max(map(len, shown[120])) > 80


def test_the_process_entry_point_exits_with_the_status_main_returns(root, savedmodel, capsys):
    """run() is what the installed script, bin/gaia-cas and ``python -m gaia_cas`` call."""
    import gc

    from gaia_cas.cli import run

    try:
        with pytest.raises(SystemExit) as ok:
            run(["--root", str(root), "deploy", "ssd", str(savedmodel)])
        assert ok.value.code == 0 and "deployed ssd 1.0.0" in capsys.readouterr().out
        with pytest.raises(SystemExit) as failed:
            run(["--root", str(root), "rollback", "ssd", "9.9.9"])
        assert failed.value.code == 1 and capsys.readouterr().err.startswith("gaia-cas: error: ")
    finally:
        gc.unfreeze()  # run() freezes the collector for the exit that never came here


def test_the_process_exits_with_every_object_frozen_out_of_the_collectors_reach(root):
    """run() freezes the collector before exiting, so the interpreter's final collection has
    nothing to walk; output and atexit handlers still run as in any exit."""
    code = ("import atexit, gc, sys; atexit.register(lambda: print('frozen', gc.get_freeze_count() > 1000));"
            "from gaia_cas.cli import run; run(['--root', sys.argv[1], 'status'])")
    proc = subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(CHECKOUT)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "frozen True" and "no models" in proc.stdout.lower()


def test_demo_deploys_both_sample_models(cli, root):
    run = cli("demo")
    assert run.code == 0, run.err
    assert "deployed ssd 1.0.0" in run.out and "deployed catboost 1.0.0" in run.out
    assert (root / "models" / "ssd" / "current" / "saved_model.pb").is_file()
    assert (root / "models" / "catboost" / "current").resolve().name == "model_catboost_best.joblib"
    again = cli("demo", "--json").json()
    assert [d["unchanged"] for d in again["deployed"]] == [True, True]


def test_model_add_set_show(cli, tmp_path, root):
    assert cli("model", "add", "ssd", "--alias", "dl", "--link", "api/models/dl_model/current").code == 0
    assert_one_line_error(cli("model", "add", "ssd"), "already exists")
    assert_one_line_error(cli("model", "add", "other", "--alias", "dl"), "already belongs to model 'ssd'")
    assert_one_line_error(cli("model", "add", "dl"), "alias of model 'ssd'")
    doc = cli("model", "show", "dl", "--json").json()
    assert doc["aliases"] == ["dl"] and doc["link"] == "api/models/dl_model/current"
    cli("deploy", "dl", make_savedmodel(tmp_path / "s"))
    assert (root / "api" / "models" / "dl_model" / "current" / "saved_model.pb").is_file()
    assert cli("model", "set", "ssd", "--link", "srv/ssd").code == 0
    assert (root / "srv" / "ssd" / "saved_model.pb").is_file()
    assert not os.path.lexists(root / "api" / "models" / "dl_model" / "current")


LAZY_PARSE_CASES = [
    ["deploy", "ssd", "/x", "--reason", "r", "--meta", "a=1", "--json"],
    ["--json", "--root", "deploy", "list"],  # "deploy" is --root's value: the command is list
    ["--root=/r", "-v", "rollback", "ssd", "previous"],
    ["--lock-timeout", "3", "model", "set", "ssd", "--keep", "4"],
    ["gc", "--grace", "0s", "--dry-run"],
    ["status"],
    ["verify", "--sample", "5", "ssd"],
]


@pytest.mark.parametrize("argv", LAZY_PARSE_CASES, ids=lambda a: " ".join(a))
def test_one_command_parser_parses_exactly_like_the_full_one(argv):
    from gaia_cas.parser import build_parser, command_in

    only = command_in(argv)
    assert only is not None and only == build_parser().parse_args(argv).command
    assert vars(build_parser(only=only).parse_args(argv)) == vars(build_parser().parse_args(argv))


@pytest.mark.parametrize("argv", [["--ro", "/r", "list"], ["-x", "list"], ["--help"], [],
                                  ["--root"], ["--json"]])
def test_unsure_command_lines_get_the_full_parser(argv):
    from gaia_cas.parser import command_in

    assert command_in(argv) is None


@pytest.mark.parametrize("argv", [["--version"], ["--json", "--version"], ["--version", "deploy"]])
def test_version_needs_no_subcommand_parser_and_prints_the_same(argv, capsys):
    """--version before any command builds no subcommand (twenty-six of them cost ~10 ms)."""
    from gaia_cas import __version__
    from gaia_cas.parser import build_parser, command_in

    assert command_in(argv) == ""
    with pytest.raises(SystemExit) as exit_info:
        build_parser(only=command_in(argv)).parse_args(argv)
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"gaia-cas {__version__}"


@pytest.mark.parametrize("argv", [["deploy"], ["deploy", "ssd", "--bogus"], ["rollback", "ssd"], ["lst"]])
def test_one_command_parser_rejects_like_the_full_one(argv, capsys):
    from gaia_cas.parser import build_parser, command_in

    outcomes = []
    for parser in (build_parser(only=command_in(argv)), build_parser()):
        with pytest.raises(SystemExit) as exc:
            parser.parse_args(argv)
        outcomes.append((exc.value.code, capsys.readouterr().err))
    assert outcomes[0] == outcomes[1] and outcomes[0][0] == 2
    if argv == ["lst"]:
        assert "invalid choice" in outcomes[0][1] and "deploy" in outcomes[0][1]  # every choice listed
