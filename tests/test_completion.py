"""Shell completion: the generated bash script, sourced in a real bash, completes commands,
options, and from the store model names, aliases, versions, channels and remotes; zsh and fish
scripts are generated from the same parser; an unknown shell is a usage error."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys

import pytest

from conftest import CHECKOUT, LAUNCHER, make_joblib, make_savedmodel

from gaia_cas import completion
from gaia_cas.parser import build_parser

TIMEOUT = 30


@pytest.fixture
def store(repo, tmp_path):
    """Two models (one with an alias and a channel), three versions of ssd, one remote."""
    source = make_savedmodel(tmp_path / "src" / "saved_model")
    repo.add_model("ssd", aliases=["dl"], source=str(source))
    for variant in range(3):
        make_savedmodel(source, variant)
        repo.deploy("ssd")
    repo.deploy("catboost", make_joblib(tmp_path / "src" / "m.joblib"))
    repo.promote("ssd", "1.1.0", "staging")
    import msgpack

    (repo.layout.manifests / ".remotes.msgpack").write_bytes(msgpack.packb(
        {"schema": 1, "default": "team", "remotes": {"team": {"url": "s3://b/p", "endpoint": None, "region": None}}}))
    return repo


@pytest.fixture
def bash_script(tmp_path):
    """The bash script as 'gaia-cas completion bash' prints it, and a PATH where gaia-cas is this checkout."""
    proc = subprocess.run([sys.executable, str(LAUNCHER), "completion", "bash"], capture_output=True, text=True,
                          timeout=TIMEOUT, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    path = tmp_path / "gaia-cas.bash"
    path.write_text(proc.stdout)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "gaia-cas").write_text(f"#!/bin/sh\nexec {sys.executable} {LAUNCHER} \"$@\"\n")
    (bindir / "gaia-cas").chmod(0o755)
    return path, bindir


def _complete(bash_script, *words, env=None) -> list[str]:
    """COMPREPLY after sourcing the script and completing ``words`` (the last one is being typed)."""
    script, bindir = bash_script
    if not shutil.which("bash"):
        pytest.fail("bash is part of the project's machines")
    program = (f'source "{script}"\n'
               'COMP_WORDS=("$@"); COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))\n'
               'COMP_LINE="${COMP_WORDS[*]}"; COMP_POINT=${#COMP_LINE}\n'
               'complete -p gaia-cas >/dev/null || exit 3\n'
               'fn=$(complete -p gaia-cas | sed -E "s/.*-F ([^ ]+).*/\\1/")\n'
               '"$fn" gaia-cas "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"\n'
               'printf "%s\\n" "${COMPREPLY[@]}"\n')
    full_env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", **(env or {})}
    proc = subprocess.run(["bash", "--norc", "--noprofile", "-c", program, "bash", "gaia-cas", *words],
                          capture_output=True, text=True, timeout=TIMEOUT, env=full_env, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    return [line for line in proc.stdout.splitlines() if line]


def test_bash_completes_the_commands(bash_script):
    words = _complete(bash_script, "")
    for command in ("deploy", "rollback", "list", "doctor", "completion", "push", "import-legacy"):
        assert command in words
    assert "__complete" not in words  # the hidden command stays hidden
    assert _complete(bash_script, "rol") == ["rollback"]


def test_bash_completes_options_of_the_command_on_the_line(bash_script):
    words = _complete(bash_script, "deploy", "--")
    assert {"--bump", "--dry-run", "--consume", "--quiet", "--json", "--root"} <= set(words)
    assert "--older-than" not in words  # cleanup's, not deploy's


def test_bash_completes_model_names_and_aliases_from_the_store(store, root, bash_script):
    assert _complete(bash_script, "--root", str(root), "rollback", "") == ["catboost", "ssd", "dl"]
    assert _complete(bash_script, "deploy", "d", env={"GAIA_CAS_ROOT": str(root)}) == ["dl"]


def test_bash_completes_the_versions_of_the_model_on_the_line(store, root, bash_script):
    env = {"GAIA_CAS_ROOT": str(root)}
    assert _complete(bash_script, "rollback", "ssd", "", env=env) == ["1.2.0", "1.1.0", "1.0.0", "previous"]
    assert _complete(bash_script, "show", "dl", "1.1", env=env) == ["1.1.0"]  # an alias names the model too
    assert _complete(bash_script, "diff", "catboost", "1.0.0", "", env=env) == ["1.0.0", "previous"]


def test_bash_completes_channels_and_remotes(store, root, bash_script):
    env = {"GAIA_CAS_ROOT": str(root)}
    assert _complete(bash_script, "promote", "ssd", "1.2.0", "--to", "", env=env) == ["current", "staging"]
    assert _complete(bash_script, "push", "--remote", "", env=env) == ["team"]
    assert _complete(bash_script, "remote", "default", "", env=env) == ["team"]


def test_bash_completes_the_shells(bash_script):
    assert _complete(bash_script, "completion", "") == ["bash", "zsh", "fish"]


def test_no_root_offers_nothing_and_no_error(bash_script, tmp_path):
    assert _complete(bash_script, "rollback", "", env={"GAIA_CAS_ROOT": str(tmp_path / "none")}) == []


def test_crafted_names_in_the_store_never_reach_the_shell(store, root, bash_script):
    # compgen -W expands $(...) in its word list: nothing but plain names may be printed
    import msgpack

    manifests = root / "manifests"
    (manifests / "$(touch ran).msgpack").write_bytes(b"\x80")
    doc = msgpack.unpackb((manifests / "catboost.msgpack").read_bytes(), raw=False)
    doc["config"]["aliases"] = ["$(touch ran)", "`touch ran`"]
    doc["version_numbers"] = ["$(touch ran)"]
    (manifests / "evil.msgpack").write_bytes(msgpack.packb(doc, use_bin_type=True))
    env = {"GAIA_CAS_ROOT": str(root)}
    assert _complete(bash_script, "rollback", "", env=env) == ["catboost", "evil", "ssd", "dl"]
    assert _complete(bash_script, "rollback", "evil", "", env=env) == ["previous"]
    assert not os.path.exists("ran")  # the working directory of the bash that completed


def test_the_hidden_command_imports_no_heavy_module(store, root):
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); from gaia_cas.cli import main; main(sys.argv[2:]);"
             "print(sorted(m for m in sys.modules if m.startswith('gaia_cas')))")
    proc = subprocess.run([sys.executable, "-c", probe, str(CHECKOUT), "__complete", "version", "rollback", "ssd"],
                          capture_output=True, text=True, timeout=TIMEOUT, env={**os.environ, "GAIA_CAS_ROOT": str(root)})
    lines = proc.stdout.splitlines()
    assert lines[:4] == ["1.2.0", "1.1.0", "1.0.0", "previous"]
    loaded = eval(lines[-1])  # a list literal printed just above
    # no parser is built, no repository opened, no manifest decoded by the codec
    assert not {"gaia_cas.repo", "gaia_cas.context", "gaia_cas.manifest", "gaia_cas.codec"} & set(loaded), loaded


def _script(shell: str, tmp_path):
    proc = subprocess.run([sys.executable, str(LAUNCHER), "completion", shell], capture_output=True, text=True,
                          timeout=TIMEOUT, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    assert "__complete version" in proc.stdout or "_gaia_cas_complete_zsh version" in proc.stdout
    path = tmp_path / f"gaia-cas.{shell}"
    path.write_text(proc.stdout)
    return path


def _logging_launcher(bindir, log):
    """gaia-cas on PATH that notes every call in ``log``: loading a script must make none."""
    (bindir / "gaia-cas").write_text(f"#!/bin/sh\necho \"$*\" >> {log}\nexec {sys.executable} {LAUNCHER} \"$@\"\n")
    (bindir / "gaia-cas").chmod(0o755)


def test_zsh_loads_without_running_anything_and_completes_versions(store, root, bash_script, tmp_path):
    if not shutil.which("zsh"):
        pytest.skip("zsh is not installed (apt-get install zsh): only its script's generation is tested")
    script, bindir = _script("zsh", tmp_path), bash_script[1]
    log = tmp_path / "calls"
    _logging_launcher(bindir, log)
    program = ('autoload -Uz compinit; compinit -u -D; eval "$(<$1)"; [[ -e $2 ]] && exit 4\n'
               'compadd() { print -r -l -- "${(P)${@[-1]}}"; }\n'  # what the completion would offer
               'words=(rollback ssd ""); CURRENT=3; _gaia_cas_complete_zsh version\n'
               'words=(gaia-cas promote dl 1.0.0 --to ""); CURRENT=6; _gaia_cas_complete_zsh channel\n')
    proc = subprocess.run(["zsh", "-f", "-c", program, "zsh", str(script), str(log)], capture_output=True, text=True,
                          timeout=TIMEOUT, env={**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}",
                                                "GAIA_CAS_ROOT": str(root)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["1.2.0", "1.1.0", "1.0.0", "previous", "current", "staging"]


def test_fish_completes_commands_models_and_versions(store, root, bash_script, tmp_path):
    if not shutil.which("fish"):
        pytest.skip("fish is not installed (apt-get install fish): only its script's generation is tested")
    script, bindir = _script("fish", tmp_path), bash_script[1]

    def offered(line: str) -> list[str]:
        proc = subprocess.run(["fish", "--no-config", "-c", f"source {script}; complete -C '{line}'"],
                              capture_output=True, text=True, timeout=TIMEOUT,
                              env={**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", "GAIA_CAS_ROOT": str(root)})
        assert proc.returncode == 0, proc.stderr
        return [row.split("\t")[0] for row in proc.stdout.splitlines()]

    assert "rollback" in offered("gaia-cas ro")
    assert offered("gaia-cas rollback ") == ["catboost", "ssd", "dl"]
    assert offered("gaia-cas rollback ssd ") == ["1.2.0", "1.1.0", "1.0.0", "previous"]


@pytest.mark.parametrize("shell", ["zsh", "fish"])
def test_zsh_and_fish_scripts_are_generated_from_the_parser(shell, cli):
    run = cli("completion", shell, root_dir=None)
    assert run.code == 0, run.err
    asks = {"zsh": "{_gaia_cas_complete_zsh version}", "fish": "__complete version"}[shell]
    assert "rollback" in run.out and "dry-run" in run.out and asks in run.out


def test_an_unknown_shell_is_a_usage_error(cli):
    run = cli("completion", "tcsh", root_dir=None)
    assert run.code == 2 and "invalid choice: 'tcsh'" in run.err


def test_the_valued_options_list_matches_the_parser():
    valued = set()

    def walk(parser):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    walk(sub)
            elif action.option_strings and action.nargs != 0:
                valued.update(o for o in action.option_strings)

    walk(build_parser())
    assert valued == set(completion.VALUED)
