"""Names from trees, sources and manifests are printed escaped: a newline in a file name cannot
forge an output line, an escape sequence cannot drive the terminal. JSON stays exact."""

from __future__ import annotations

import os

import pytest

from conftest import assert_one_line_error, make_savedmodel

EVIL = "evil\n\x1b[31mred\u202e.bin"  # a newline, an ANSI colour, a bidi override: all legal in a name
ESCAPED = "evil\\n\\x1b[31mred\\u202e.bin"


def clean(text: str) -> None:
    """No control character but the line breaks the output itself makes."""
    assert "\x1b" not in text and "\u202e" not in text and "\r" not in text, repr(text)
    assert "\nred" not in text and "\n\x1b" not in text, repr(text)


@pytest.fixture
def evil_versions(repo, tmp_path):
    src = make_savedmodel(tmp_path / "src")
    repo.deploy("m", src)
    (src / EVIL).write_bytes(b"x" * 10)
    repo.deploy("m", src, reason="red\x1b[31m\nforged line")
    return repo


def test_diff_escapes_file_names(evil_versions, cli):
    run = cli("diff", "m", "1.0", "1.1")
    assert run.code == 0
    clean(run.out)
    assert f"  + {ESCAPED}  (10 B)" in run.out.splitlines()
    assert cli("diff", "m", "1.0", "1.1", "--json").json()["added"] == [{"path": EVIL, "size": 10}]  # exact in JSON


def test_list_show_and_history_escape_manifest_text(evil_versions, cli):
    for argv in (("list",), ("list", "m"), ("show", "m"), ("history", "m")):
        run = cli(*argv)
        assert run.code == 0, argv
        clean(run.out)
        assert "forged line" not in [line.strip() for line in run.out.splitlines()], argv
    assert "red\\x1b[31m\\nforged line" in cli("show", "m").out


def test_show_escapes_a_source_path(repo, cli, tmp_path):
    src = make_savedmodel(tmp_path / "src\x1b]0;owned\x07")
    repo.deploy("m", src)
    run = cli("show", "m")
    clean(run.out)
    assert "\x07" not in run.out
    assert "src\\x1b]0;owned\\x07" in run.out


def test_verify_escapes_names_in_problems(evil_versions, cli, root):
    tree = evil_versions.manifest("m").find("1.1.0").tree
    victim = root / "store" / "trees" / tree / EVIL
    os.chmod(victim.parent, 0o755)
    os.unlink(victim)
    victim.write_bytes(b"edited")  # the object is intact; the checkout is not
    os.chmod(victim.parent, 0o555)
    run = cli("verify")
    assert run.code == 1
    clean(run.out)
    assert ESCAPED in run.out and "edited in place" in run.out


def test_deploy_error_escapes_the_name_it_refuses(repo, cli, tmp_path, root):
    src = make_savedmodel(tmp_path / "src")
    os.mkfifo(src / "pipe\x1b]0;owned\x07\nforged")
    run = cli("deploy", "m", src)
    assert_one_line_error(run)
    clean(run.err)
    assert "\x07" not in run.err
    assert "pipe\\x1b]0;owned\\x07\\nforged" in run.err
