"""Man pages: a NAME line whatis and apropos index, a page for gaia-cas-nightly, installed by an
editable install too; and gaia-cas-nightly --json."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest

from conftest import CHECKOUT, make_savedmodel

NIGHTLY = CHECKOUT / "bin" / "gaia-cas-nightly"


def _page(function: str, prog: str, cwd) -> str:
    """The page the build writes (setup.cfg's [build_manpages]): the parser file loaded alone."""
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from argparse_manpage.cli import main; sys.exit(main())",
         "--pyfile", str(CHECKOUT / "gaia_cas" / "parser.py"), "--function", function,
         "--prog", prog, "--project-name", "gaia-cas"],
        cwd=cwd, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.parametrize("function, prog", [("build_parser", "gaia-cas"),
                                            ("build_nightly_parser", "gaia-cas-nightly")])
def test_the_name_section_is_one_line_whatis_can_index(tmp_path, function, prog):
    page = _page(function, prog, tmp_path)
    name = page.split(".SH NAME\n", 1)[1].split("\n", 1)[0]
    # man-pages(7): "name \- one-line description", the form lexgrog, mandb and whatis read
    assert re.fullmatch(re.escape(prog.replace("-", "\\-")) + r" \\- [a-z].{10,80}", name), name
    path = tmp_path / f"{prog}.1"
    path.write_text(page)
    if shutil.which("lexgrog"):  # man-db's own parser, where it is installed (it is on the project's machines)
        out = subprocess.run(["lexgrog", str(path)], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0 and f'"{prog} - ' in out.stdout, out.stdout + out.stderr


def test_apropos_finds_the_pages_in_an_indexed_man_path(tmp_path):
    if not (shutil.which("mandb") and shutil.which("apropos")):
        pytest.fail("man-db (mandb, apropos) is part of the project's machines")
    (tmp_path / "man" / "man1").mkdir(parents=True)
    for function, prog in (("build_parser", "gaia-cas"), ("build_nightly_parser", "gaia-cas-nightly")):
        (tmp_path / "man" / "man1" / f"{prog}.1").write_text(_page(function, prog, tmp_path))
    subprocess.run(["mandb", "-q", "-u", str(tmp_path / "man")], capture_output=True, timeout=60)
    found = subprocess.run(["apropos", "-M", str(tmp_path / "man"), "gaia-cas"], capture_output=True, text=True,
                           timeout=30).stdout
    assert "gaia-cas (1)" in found and "gaia-cas-nightly (1)" in found, found
    assert "deduplicated store" in found


def test_an_editable_install_places_the_man_pages_too(monkeypatch):
    # setuptools' editable wheel installs data files only when the distribution answers
    # has_data(), which its own Distribution lacks; setup.py's Distribution answers it.
    import inspect
    import runpy

    import setuptools
    from setuptools.command import editable_wheel

    assert 'f"has_{category}"' in inspect.getsource(editable_wheel) or "has_data" in inspect.getsource(editable_wheel)
    captured = {}
    monkeypatch.setattr(setuptools, "setup", lambda **kwargs: captured.update(kwargs))
    monkeypatch.chdir(CHECKOUT)
    runpy.run_path(str(CHECKOUT / "setup.py"))
    dist = captured["distclass"]()
    dist.parse_config_files([str(CHECKOUT / "setup.cfg")])
    assert dist.has_data() is True
    pages = [page for folder, pages in dist.data_files for page in pages if folder == "share/man/man1"]
    assert pages == ["man/gaia-cas.1", "man/gaia-cas-nightly.1"]


def _nightly(*argv, timeout=60):
    return subprocess.run([sys.executable, str(NIGHTLY), *map(str, argv)], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def test_nightly_json_is_one_document_with_a_record_per_step(repo, root, tmp_path):
    source = make_savedmodel(tmp_path / "s" / "saved_model")
    for variant in range(5):
        make_savedmodel(source, variant)
        repo.deploy("ssd", source)
    proc = _nightly("--root", root, "--json")
    assert proc.returncode == 0, proc.stderr
    document = json.loads(proc.stdout)
    assert document["ok"] is True and document["root"] == str(root) and document["dry_run"] is False
    steps = {s["step"]: s for s in document["steps"]}
    assert set(steps) == {"retention", "gc", "verify"}
    assert steps["retention"]["removed"] == {"ssd": ["1.0.0", "1.1.0"]}
    assert steps["verify"]["problems"] == [] and steps["verify"]["checked_objects"] > 0
    assert all(s["ok"] and s["summary"] for s in document["steps"])


def test_nightly_json_reports_a_failed_step_with_exit_status_1(repo, root, savedmodel):
    repo.deploy("ssd", savedmodel)
    victim = next(p for p in (root / "store" / "objects").rglob("*") if p.is_file() and p.stat().st_size > 1000)
    victim.chmod(0o644)
    victim.write_bytes(b"not the bytes")
    proc = _nightly("--root", root, "--json")
    assert proc.returncode == 1
    document = json.loads(proc.stdout)
    verify = next(s for s in document["steps"] if s["step"] == "verify")
    assert document["ok"] is False and verify["ok"] is False and verify["problems"]


def test_nightly_json_for_a_root_that_does_not_exist(tmp_path):
    proc = _nightly("--root", tmp_path / "nowhere", "--json")
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["ok"] is False
    assert proc.stderr.startswith("gaia-cas-nightly: error: ")
