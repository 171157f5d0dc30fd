"""Readable output: sizes as du -h writes them, plurals, local times, aligned columns, colour only
on a terminal, -n, logs MODEL and --follow, the deployment id and legacy reasons, the pager."""

from __future__ import annotations

import json
import os
import pty
import random
import select
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from conftest import LAUNCHER, make_savedmodel, run_launcher
from gaia_cas import humanize

ESC = "\x1b["


# -- the formatting module ------------------------------------------------------------------

def test_sizes_round_up_as_du_h_does():
    """The same figures GNU numfmt --to=iec (du -h's rounding) prints, unit names spelled out."""
    values = [0, 1, 1023, 1024, 1025, 1536, 10239, 10240, 10241, 1048575, 1048576, 23 << 20, (23 << 20) + 1,
              int(1.1 * (1 << 30)), (1 << 40) - 1, 5 << 50]
    rng = random.Random(15)
    values += [rng.randrange(1, 1 << 62) for _ in range(500)]
    expected = subprocess.run(["numfmt", "--to=iec", *map(str, values)], capture_output=True, text=True,
                              timeout=10, check=True).stdout.split()
    for value, du in zip(values, expected):
        assert humanize.size(value).replace("iB", "").replace(" B", "").replace(" ", "") == du, value
    assert humanize.size(512) == "512 B"
    assert humanize.size(4096) == "4.0 KiB"
    assert humanize.size(23 << 20) == "23 MiB"
    assert humanize.size((11 << 30) // 10) == "1.1 GiB"
    assert humanize.size((11 << 30) // 10 + 1) == "1.2 GiB"  # a byte past 1.1 GiB: rounded up, as du does


def test_plurals():
    assert humanize.plural(1, "file") == "1 file"
    assert humanize.plural(0, "file") == "0 files"
    assert humanize.plural(2, "version") == "2 versions"
    assert humanize.plural(3, "child", "children") == "3 children"


def test_table_aligns_columns_and_numbers_right():
    text = humanize.table([["NAME", "SIZE"], ["a", "1 B"], ["longer", "23 MiB"]], right=(1,))
    assert text.splitlines() == ["NAME      SIZE", "a          1 B", "longer  23 MiB"]


# -- through the CLI ------------------------------------------------------------------------

@pytest.fixture
def three(repo, tmp_path):
    """Model m with versions 1.0.0, 1.1.0 and 1.2.0 (current)."""
    for i in range(3):
        repo.deploy("m", make_savedmodel(tmp_path / f"v{i}", variant=i), reason=f"reason {i}")
    return repo


def _rows(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_list_n_shows_the_newest_versions_with_their_deployment_id(three, cli):
    run = cli("list", "m", "-n", "2")
    assert run.code == 0, run.err
    lines = _rows(run.out)
    assert lines[0] == "m: current 1.2.0, 3 versions (newest 2 shown)"
    assert lines[1].split() == ["VERSION", "ID", "DEPLOYED", "HASH", "SIZE", "FORMAT", "REASON"]
    assert [line.split()[0] for line in lines[2:]] == ["*", "1.1.0"]
    assert lines[2].split()[1] == "1.2.0"
    # the ID column is the old layout's folder name: copied from the listing, it names the version
    label = lines[3].split()[1]
    version = three.manifest("m").find("1.1.0")
    assert label == f"v1.1_{version.deployment_id}"
    assert cli("show", "m", label, "--json").json()["version"] == "1.1.0"
    # columns line up: every row's HASH starts where the header's does
    at = lines[1].index("HASH")
    assert [line[at:at + 12] for line in lines[2:]] == [three.manifest("m").find(n).tree[:12] for n in ("1.2.0", "1.1.0")]
    assert {line[at - 2:at] for line in lines[1:]} == {"  "}
    # JSON: -n applies, and the fields stay exact
    doc = cli("list", "m", "-n", "1", "--json").json()
    assert [v["version"] for v in doc["versions"]] == ["1.2.0"]
    newest = three.manifest("m").find("1.2.0")
    assert type(doc["versions"][0]["size_bytes"]) is int and doc["versions"][0]["size_bytes"] == newest.size_bytes
    assert doc["versions"][0]["created_at"] == three.manifest("m").find("1.2.0").created_at
    assert cli("list", "m", "-n", "0").out.strip() == "m: current 1.2.0, 3 versions (newest 0 shown)"
    assert cli("list", "m", "-n", "-1").code == 2


def test_list_sizes_are_human_and_right_aligned(repo, tmp_path, cli):
    repo.deploy("m", make_savedmodel(tmp_path / "small", variables_bytes=100))
    repo.deploy("m", make_savedmodel(tmp_path / "big", variant=1, variables_bytes=3 << 20))
    lines = _rows(cli("list", "m").out)
    end = lines[1].index("SIZE") + len("SIZE")
    big, small = repo.manifest("m").find("1.1.0").size_bytes, repo.manifest("m").find("1.0.0").size_bytes
    assert humanize.size(big) in lines[2] and humanize.size(small) in lines[3]
    assert lines[2].index(humanize.size(big)) + len(humanize.size(big)) == end
    assert lines[3].index(humanize.size(small)) + len(humanize.size(small)) == end
    assert "MiB" in lines[2]


def test_history_n_shows_the_newest_events(three, cli):
    run = cli("history", "m", "-n", "2")
    lines = _rows(run.out)
    assert lines[0].split()[:3] == ["GEN", "TIME", "ACTION"]
    assert [line.split()[0] for line in lines[1:]] == ["2", "3"]  # the newest two, oldest first
    doc = cli("history", "m", "-n", "1", "--json").json()
    assert [e["generation"] for e in doc["events"]] == [3]
    assert len(cli("history", "m", "--json").json()["events"]) == 3


def test_times_are_local_with_their_offset_and_json_stays_utc(three, root):
    env = {"TZ": "IST-5:30", "NO_COLOR": "1"}  # POSIX: five and a half hours east of UTC
    doc = json.loads(run_launcher("--root", root, "list", "m", "--json", env=env).out)
    stamp = doc["versions"][0]["created_at"]
    assert stamp == three.manifest("m").find("1.2.0").created_at  # the stored UTC text, untouched
    utc = datetime.fromisoformat(stamp)
    assert utc.utcoffset() == timedelta(0)
    local = (utc.astimezone(timezone(timedelta(hours=5, minutes=30)))).strftime("%Y-%m-%d %H:%M:%S +0530")
    out = run_launcher("--root", root, "list", "m", env=env).out
    assert local in out
    history = run_launcher("--root", root, "history", "m", env=env).out
    assert "+0530" in history and "+0000" not in history


def test_status_and_deploy_say_files_and_sizes_in_words(repo, tmp_path, cli):
    src = make_savedmodel(tmp_path / "s", variables_bytes=2 << 20)
    run = cli("deploy", "m", src)
    assert "4 files" in run.out and "MiB" in run.out and "new objects" in run.out
    one = tmp_path / "one.bin"
    one.write_bytes(b"x" * 10)
    run = cli("deploy", "solo", one)
    assert " 1 file " in run.out and "10 B" in run.out
    status = cli("status").out
    assert "MiB" in status and " MB" not in status


def test_imported_versions_show_the_legacy_deployment_reason(repo, tmp_path, cli):
    legacy = tmp_path / "api" / "models"
    for folder, reason in (("v1.2_20250714_090000", "retrained on july data"),
                           ("v1.3_20250716_132518", "threshold fix for fungal class")):
        make_savedmodel(legacy / "dl_model" / "versions" / folder / "saved_model", variant=int(folder[3]))
        (legacy / "dl_model" / "versions" / folder / "metadata.json").write_text(json.dumps(
            {"version": folder.split("_")[0], "timestamp": folder.split("_", 1)[1], "deployment_reason": reason}))
    os.symlink("versions/v1.3_20250716_132518/saved_model", legacy / "dl_model" / "current")
    assert cli("import-legacy", legacy).code == 0
    repo.deploy("ssd", make_savedmodel(tmp_path / "new", variant=9), reason="a new deploy")
    lines = _rows(cli("list", "ssd").out)
    by_version = {line.replace("*", " ").split()[0]: line for line in lines[2:]}
    assert by_version["1.3.0"].rstrip().endswith("threshold fix for fungal class")
    assert by_version["1.2.0"].rstrip().endswith("retrained on july data")
    assert by_version["1.4.0"].rstrip().endswith("a new deploy")  # the model's default metadata: not legacy
    assert "v1.3_20250716_132518" in by_version["1.3.0"]  # the old folder name, copyable as a selector
    assert cli("show", "ssd", "v1.3_20250716_132518", "--json").json()["version"] == "1.3.0"
    # the manifest's own reason stays what it was: JSON shows it unchanged
    doc = {v["version"]: v for v in cli("list", "ssd", "--json").json()["versions"]}
    assert doc["1.3.0"]["metadata"]["deployment_reason"] == "threshold fix for fungal class"


# -- logs MODEL, logs --follow ---------------------------------------------------------------

def test_logs_model_shows_only_its_lines(repo, tmp_path, cli):
    repo.deploy("m", make_savedmodel(tmp_path / "a"))
    repo.deploy("mm", make_savedmodel(tmp_path / "b", variant=1), new=True)  # m's name is inside mm's
    repo.rollback("m", "1.0.0")
    lines = cli("logs", "m").out.splitlines()
    assert lines and all(" m " in line or " m:" in line or line.endswith(" m") for line in lines)
    assert any("deployed m 1.0.0" in line for line in lines)
    assert not any("mm" in line.split(" - ", 3)[-1].split() for line in lines)
    assert any("deployed mm 1.0.0" in line for line in cli("logs", "mm").out.splitlines())
    assert cli("logs", "m", "-n", "1", "--json").json()["lines"] == lines[-1:]
    assert cli("logs").out.count("deployed") == 2


def _read_until(proc, fragment: str, timeout: float = 10) -> list[str]:
    """Lines from ``proc``'s stdout until one holds ``fragment``; fails after ``timeout`` s."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    buffer = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if not ready:
            continue
        chunk = os.read(proc.stdout.fileno(), 65536)
        if not chunk:
            break
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        seen += [line.decode() for line in complete]
        if any(fragment in line for line in seen):
            return seen
    raise AssertionError(f"{fragment!r} not seen within {timeout} s; saw {seen}")


def test_logs_follow_prints_new_lines_of_the_model_as_they_are_written(repo, tmp_path, root):
    repo.deploy("m", make_savedmodel(tmp_path / "a"))
    proc = subprocess.Popen([sys.executable, str(LAUNCHER), "--root", str(root), "logs", "-n", "1", "--follow", "m"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        first = _read_until(proc, "deployed m 1.0.0")  # the backlog: the follower has read the log
        assert len(first) == 1
        repo.deploy("other", make_savedmodel(tmp_path / "o", variant=5))
        repo.deploy("m", make_savedmodel(tmp_path / "b", variant=1))
        later = _read_until(proc, "deployed m 1.1.0")
        assert not any("other" in line for line in later)
        assert proc.poll() is None  # still following
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_logs_follow_iterator_from_the_library(repo, tmp_path):
    repo.deploy("m", make_savedmodel(tmp_path / "a"))
    lines = repo.logs(5, model="m", follow=True)
    assert "deployed m 1.0.0" in next(lines)
    repo.deploy("m", make_savedmodel(tmp_path / "b", variant=1))
    assert "deployed m 1.1.0" in next(lines)  # the next poll finds it (0.5 s)


# -- colour and the pager: a real terminal (pty) against a pipe ----------------------------

def _in_pty(argv, env: dict, timeout: float = 20) -> tuple[int, str]:
    """Run bin/gaia-cas with a pseudo-terminal as stdin, stdout and stderr; (exit code, output)."""
    full = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "PAGER", "GAIA_CAS_PAGER", "TERM", "LESS")}
    full.update(env)
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, str(LAUNCHER), *map(str, argv)], stdin=slave, stdout=slave,
                            stderr=slave, env=full, close_fds=True)
    os.close(slave)
    out = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: every holder of the terminal is gone
                    break
                if not data:
                    break
                out += data
            elif proc.poll() is not None:
                break
        else:
            proc.kill()
            raise AssertionError(f"no end within {timeout} s: {out!r}")
        return proc.wait(timeout=10), out.decode("utf-8", "replace")
    finally:
        os.close(master)


def test_colour_on_a_terminal_only_and_never_under_no_color(three, root):
    code, out = _in_pty(["--root", root, "--no-pager", "list", "m"], {"TERM": "xterm"})
    assert code == 0 and ESC in out
    code, out = _in_pty(["--root", root, "--no-pager", "list", "m"], {"TERM": "xterm", "NO_COLOR": "1"})
    assert code == 0 and ESC not in out and "1.2.0" in out
    code, out = _in_pty(["--root", root, "--no-pager", "list", "m"], {"TERM": "dumb"})
    assert code == 0 and ESC not in out and "1.2.0" in out
    piped = run_launcher("--root", root, "list", "m", env={"TERM": "xterm"})
    assert piped.code == 0 and ESC not in piped.out and "1.2.0" in piped.out


def _recording_pager(tmp_path: Path) -> tuple[str, Path]:
    record = tmp_path / "paged.txt"
    script = tmp_path / "pager.py"
    script.write_text("import sys\nopen(sys.argv[1], 'wb').write(sys.stdin.buffer.read())\n")
    return f"{sys.executable} {script} {record}", record


def test_long_listings_go_through_the_pager_on_a_terminal(three, root, tmp_path):
    pager, record = _recording_pager(tmp_path)
    code, out = _in_pty(["--root", root, "list", "m"], {"PAGER": pager, "NO_COLOR": "1", "TERM": "xterm"})
    assert code == 0
    paged = record.read_text()
    assert "m: current 1.2.0, 3 versions" in paged and "1.0.0" in paged
    assert "1.0.0" not in out  # the pager had it, not the terminal directly
    record.unlink()
    code, _ = _in_pty(["--root", root, "history", "m"], {"PAGER": pager, "NO_COLOR": "1"})
    assert code == 0 and "deploy" in record.read_text()


def test_no_pager_in_a_pipe_with_no_pager_or_an_empty_pager(three, root, tmp_path):
    pager, record = _recording_pager(tmp_path)
    piped = run_launcher("--root", root, "list", "m", env={"PAGER": pager})
    assert piped.code == 0 and "1.0.0" in piped.out and not record.exists()
    code, out = _in_pty(["--root", root, "list", "m", "--no-pager"], {"PAGER": pager, "NO_COLOR": "1"})
    assert code == 0 and "1.0.0" in out and not record.exists()
    code, out = _in_pty(["--root", root, "list", "m"], {"PAGER": "", "NO_COLOR": "1"})
    assert code == 0 and "1.0.0" in out and not record.exists()
    code, out = _in_pty(["--root", root, "--json", "list", "m"], {"PAGER": pager})
    assert code == 0 and '"versions"' in out and not record.exists()  # JSON is never paged


def test_without_pager_set_less_runs_with_frx(three, root, tmp_path):
    """git's habit: PAGER unset means less, with LESS=FRX unless LESS says otherwise."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "less"
    fake.write_text(f"#!/bin/sh\necho \"LESS=$LESS args=$*\" > {tmp_path}/less.txt\ncat >> {tmp_path}/less.txt\n")
    fake.chmod(0o755)
    path = f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    code, _ = _in_pty(["--root", root, "list", "m"], {"PATH": path, "NO_COLOR": "1"})
    assert code == 0
    text = (tmp_path / "less.txt").read_text()
    assert text.startswith("LESS=FRX ") and "m: current 1.2.0" in text
    code, _ = _in_pty(["--root", root, "list", "m"], {"PATH": path, "NO_COLOR": "1", "LESS": "S"})
    assert (tmp_path / "less.txt").read_text().startswith("LESS=S ")


def test_counts_of_one_are_singular_in_verify_and_gc(repo, tmp_path, cli):
    one = tmp_path / "one.bin"
    one.write_bytes(b"only file")
    repo.deploy("solo", one)
    assert cli("verify").out.splitlines()[0] == "checked 1 object, 1 tree, 1 link: no problems"
    assert cli("gc", "--dry-run", "--grace", "0s").out.splitlines() == [
        "would delete nothing, freeing 0 B",
        "2 objects in use; 0 unreferenced objects are younger than the grace period (0s) and stay"]
