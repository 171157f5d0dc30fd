"""Packaging promises: the man page comes from the parser, data folders stay out of git."""

from __future__ import annotations

import configparser
import subprocess
import sys

from conftest import CHECKOUT


def _man_page(function: str, prog: str, cwd) -> str:
    """The page argparse-manpage writes for one parser function of gaia_cas/parser.py."""
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from argparse_manpage.cli import main; sys.exit(main())",
         "--pyfile", str(CHECKOUT / "gaia_cas" / "parser.py"), "--function", function,
         "--prog", prog, "--project-name", "gaia-cas"],
        cwd=cwd, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.replace("\\-", "-")


def test_man_page_is_generated_from_the_parser_and_lists_every_command(tmp_path):
    # The same call the build makes from setup.cfg's [build_manpages]: the parser file is loaded
    # on its own, outside the package, from another working directory.
    page = _man_page("build_parser", "gaia-cas", tmp_path)
    assert page.startswith(".TH GAIA-CAS")
    for command in ("init", "model", "deploy", "list", "status", "show", "rollback", "logs", "demo"):
        assert f"gaia-cas\\fR \\fI\\,{command}\\/" in page, command
    assert "--lock-timeout" in page and "--dry-run" in page


def test_the_nightly_job_has_a_man_page_from_the_same_parser_file(tmp_path):
    page = _man_page("build_nightly_parser", "gaia-cas-nightly", tmp_path)
    assert page.startswith(".TH GAIA-CAS-NIGHTLY")
    for option in ("--grace", "--log-age", "--verify-sample", "--dry-run"):
        assert option in page, option
    assert "default 1h" in page and "default 90d" in page  # the defaults of gaia_cas/defaults.py
    cfg = configparser.ConfigParser()
    cfg.read(CHECKOUT / "setup.cfg")
    assert "function=build_nightly_parser" in cfg["build_manpages"]["manpages"]
    assert "man/gaia-cas-nightly.1" in cfg["options.data_files"]["share/man/man1"]


def test_setup_cfg_declares_the_package_the_script_and_the_manpage():
    cfg = configparser.ConfigParser()
    cfg.read(CHECKOUT / "setup.cfg")
    assert cfg["metadata"]["name"] == "gaia-cas"
    requires = cfg["options"]["install_requires"].split()
    assert {r.split(">")[0] for r in requires} == {"xxhash", "msgpack", "pyfastcdc", "tqdm"}
    assert "gaia-cas = gaia_cas.cli:run" in cfg["options.entry_points"]["console_scripts"]
    assert "pyfile=gaia_cas/parser.py" in cfg["build_manpages"]["manpages"]
    test_extra = cfg["options.extras_require"]["test"].split()
    assert any(r.startswith("pytest") for r in test_extra) and any(r.startswith("pyfakefs") for r in test_extra)


def test_embedded_data_folders_hold_only_a_gitignore():
    for folder in ("store", "manifests"):
        ignore = (CHECKOUT / folder / ".gitignore").read_text().split()
        assert ignore == ["*", "!.gitignore"], folder
    tracked = subprocess.run(["git", "ls-files", "store", "manifests"], cwd=CHECKOUT, capture_output=True,
                             text=True, timeout=30).stdout.split()
    assert sorted(tracked) == ["manifests/.gitignore", "store/.gitignore"]


def test_ci_runs_exactly_the_readme_test_command():
    readme = (CHECKOUT / "README.md").read_text()
    command = "python3 -m pip install -e '.[test]' && python3 -m pytest -q"
    assert f"```sh\n{command}\n```" in readme
    ci_lines = [line for line in (CHECKOUT / ".ci" / "run").read_text().splitlines()
                if line and not line.startswith(("#", "set ", "cd "))]
    assert ci_lines == [command]
