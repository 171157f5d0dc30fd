"""The benchmark runs end to end at a tiny size and reports in both forms.

Only that it works is tested here: timings on a shared machine are noise, so no test asserts a
figure or a target's PASS.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import CHECKOUT

MEASURED = ("cp", "cp_sync", "deploy_new", "redeploy_unchanged", "redeploy_small", "redeploy_large",
            "rollback_base", "rollback", "list", "status", "gc", "python_startup", "cli_startup")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One run for every test here: ~8 MiB tree, 1 repetition, 300 versions, 2000 gc objects."""
    scratch = tmp_path_factory.mktemp("bench")
    report = scratch / "bench.json"
    env = {k: v for k, v in os.environ.items() if k != "GAIA_CAS_ROOT"}
    env["PYTHONPATH"] = str(CHECKOUT)
    proc = subprocess.run(
        [sys.executable, "-m", "gaia_cas.bench", "--size", "0.002", "--repeat", "1", "--versions", "300",
         "--gc-objects", "2000", "--scaling", "--no-dvc", "--workdir", str(scratch / "work"),
         "--json", str(report)],
        cwd=scratch, env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )
    return proc, report, scratch / "work"


def test_bench_prints_the_table_with_ratios_to_cp_and_the_targets(tiny_run):
    proc, _, _ = tiny_run
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    header = next(line for line in out.splitlines() if line.startswith("operation"))
    assert "median" in header and "vs cp -r" in header
    for label in ("cp -r && sync", "deploy, new content", "redeploy, unchanged", "rollback at 300 versions",
                  "rollback at 100 versions", "list at 300 versions", "gaia-cas --version", "deploy peak RSS"):
        assert label in out, label
    assert "scaling" in out and "4x" in out
    verdicts = [line.split()[0] for line in out.splitlines() if line.startswith("  PASS") or line.startswith("  FAIL")]
    assert len(verdicts) >= 10  # one per target; which of them pass is not a test's business
    assert "Traceback" not in proc.stderr


def test_bench_writes_json_with_every_measurement_and_cleans_up(tiny_run):
    proc, report, work = tiny_run
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(report.read_text())
    assert {"config", "medians", "ratios", "samples", "targets", "deploy_peak_rss_mib",
            "manifest_bytes_per_version", "scaling"} <= set(doc)
    assert doc["config"]["files"] >= 20 + 3 and doc["config"]["versions"] == 300
    for key in MEASURED:
        assert doc["medians"][key] > 0, key
        assert doc["ratios"][key] > 0, key
    assert doc["ratios"]["cp"] == 1
    assert set(doc["manifest_bytes_per_version"]) == {"100", "300"}
    assert [row["factor"] for row in doc["scaling"]] == [1, 2, 4]
    assert all(isinstance(t["pass"], bool) and {"target", "value", "limit"} <= set(t) for t in doc["targets"])
    assert list(work.iterdir()) == []  # the scratch folder it made inside --workdir is gone
