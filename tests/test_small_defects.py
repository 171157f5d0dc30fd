"""Small defects, each pinned by the test that first failed on it: gc --dry-run's estimate for
cold files it would split, the reference's one manifest schema, the legacy fields kept per
version, and a command whose reader went away (`| head -1`)."""

import json
import os
import subprocess
import sys
from pathlib import Path

from gaia_cas.recipes import set_chunk_threshold
from gaia_cas.repo import Repository

from conftest import CHECKOUT, LAUNCHER, snapshot
from store_helpers import rand_bytes, write

MiB = 1 << 20


def gaia(root, *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE):
    return subprocess.run([sys.executable, str(LAUNCHER), "--root", str(root), *map(str, args)], stdout=stdout,
                          stderr=stderr, text=True, timeout=60, stdin=subprocess.DEVNULL)


def test_gc_dry_run_counts_a_split_file_as_its_size_less_the_chunks_it_would_write(tmp_path):
    """Three retrains of a 12 MiB file, two going cold: splitting them writes their chunks the
    store lacks, and the dry run's 'freeing' is what the real gc then reports freed."""
    repo = Repository.init(tmp_path / "root")
    set_chunk_threshold(repo.layout, 4 * MiB)
    base = rand_bytes(12 * MiB, 21)
    for data in (base, base[:-2 * MiB] + rand_bytes(2 * MiB, 22), rand_bytes(12 * MiB, 23)):
        write(tmp_path / "src" / "variables.data", data)
        repo.deploy("ssd", tmp_path / "src")
    before = snapshot(repo.root)
    dry = json.loads(gaia(repo.root, "--json", "gc", "--dry-run", "--grace", "0s").stdout)
    text = gaia(repo.root, "gc", "--dry-run", "--grace", "0s").stdout.splitlines()[0]
    assert snapshot(repo.root) == before  # a dry run writes nothing, not even a recipe
    assert dry["counts"]["whole"] == 2
    real = json.loads(gaia(repo.root, "--json", "gc", "--grace", "0s").stdout)
    assert real["bytes_freed"] < 24 * MiB - 8 * MiB  # the chunks of the first version cost about its size
    assert dry["bytes"] == real["bytes_freed"]
    assert dry["chunk_bytes_written"] == 24 * MiB - real["bytes_freed"]
    assert "new chunks" in text, text


def test_the_reference_has_one_manifest_schema_and_no_section_twice():
    """tests/test_readme.py checks the first schema table: a second copy would drift unchecked."""
    import re

    reference = (CHECKOUT / "docs" / "reference.md").read_text()
    headings = re.findall(r"^## .*$", reference, re.M)
    assert headings.count("## The manifest schema") == 1
    assert len(headings) == len(set(headings)), headings
    readme = (CHECKOUT / "README.md").read_text()
    assert "(docs/reference.md#guarantees-in-detail)" in readme and "## Guarantees in detail" in headings


def test_a_legacy_deployment_reason_stays_with_its_version_and_is_not_seeded_for_new_deploys(tmp_path):
    """The legacy current's metadata.json seeds the model's default metadata, minus what describes
    that one version: its deployment_reason is why *it* was deployed, not a default for the next."""
    legacy = tmp_path / "api" / "models" / "dl_model"
    folder = "v1.3_20250716_132518"
    write(legacy / "versions" / folder / "saved_model" / "saved_model.pb", b"graph")
    (legacy / "versions" / folder / "metadata.json").write_text(json.dumps(
        {"version": "v1.3", "timestamp": "20250716_132518", "deployment_reason": "threshold fix for fungal class",
         "architecture": "SSD MobileNet V2"}))
    os.symlink(f"versions/{folder}/saved_model", legacy / "current")
    repo = Repository.init(tmp_path / "root")
    repo.import_legacy(tmp_path / "api" / "models")
    model = repo.models()[0]
    manifest = repo.manifest(model)
    assert manifest.config.metadata == {"architecture": "SSD MobileNet V2"}
    assert manifest.find(manifest.current).metadata["deployment_reason"] == "threshold fix for fungal class"
    write(tmp_path / "new" / "saved_model.pb", b"graph 2")
    new = repo.deploy(model, tmp_path / "new", reason="a new deploy")
    metadata = repo.manifest(model).find(new.version).metadata
    assert metadata.get("architecture") == "SSD MobileNet V2" and "deployment_reason" not in metadata


def test_a_reader_that_went_away_ends_the_command_quietly_with_the_status_git_gets(tmp_path):
    """`gaia-cas list | head -1`: stdout's reader is gone. No message, no traceback, and 141 --
    what a shell reports for git or coreutils killed by SIGPIPE there (128 + 13)."""
    repo = Repository.init(tmp_path / "root")
    for n in range(3):
        repo.deploy("ssd", write(tmp_path / "src" / "model.bin", b"weights %d" % n))
    for argv in (["list"], ["list", "ssd"], ["--json", "list", "ssd"], ["history", "ssd"], ["--version"]):
        read_end, write_end = os.pipe()
        os.close(read_end)  # the reader is gone before the first byte: every write fails, deterministically
        try:
            run = gaia(repo.root, *argv, stdout=write_end, stderr=subprocess.PIPE)
        finally:
            os.close(write_end)
        assert (run.returncode, run.stderr) == (141, ""), argv
    # and through a real shell pipeline, as users type it
    shell = subprocess.run(["bash", "-c", 'set -o pipefail; "$0" "$1" --root "$2" list ssd | head -1; '
                            'echo "status=${PIPESTATUS[0]}" >&2', sys.executable, str(LAUNCHER), str(repo.root)],
                           capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(CHECKOUT)})
    assert shell.stdout.startswith("ssd") and "Traceback" not in shell.stderr and "Exception" not in shell.stderr
    assert shell.stderr.strip() in ("status=0", "status=141")  # 0 when every byte fit in the pipe before head left


def test_gc_counts_a_chunk_that_repeats_within_a_file_once(tmp_path):
    """A weights file with repeated regions (padding, tied weights) cuts into chunks that recur:
    each is stored once, so gc frees the whole copy less one copy of each -- and says so, dry or not."""
    repo = Repository.init(tmp_path / "root")
    set_chunk_threshold(repo.layout, 4 * MiB)
    block = rand_bytes(1 * MiB, 31)
    repeated = block * 10 + rand_bytes(2 * MiB, 32)
    for data in (repeated, rand_bytes(12 * MiB, 33)):
        write(tmp_path / "src" / "variables.data", data)
        repo.deploy("ssd", tmp_path / "src")
    objects_before = sum(p.stat().st_size for p in (repo.layout.store / "objects").rglob("*") if p.is_file())
    dry = json.loads(gaia(repo.root, "--json", "gc", "--dry-run", "--grace", "0s").stdout)
    real = json.loads(gaia(repo.root, "--json", "gc", "--grace", "0s").stdout)
    objects_after = sum(p.stat().st_size for p in (repo.layout.store / "objects").rglob("*") if p.is_file())
    assert real["bytes_freed"] == objects_before - objects_after  # what left the disk, exactly
    assert dry["bytes"] == real["bytes_freed"]
