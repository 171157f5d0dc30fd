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
            "rollback_base", "rollback", "list", "status", "gc", "python_startup", "cli_startup", "deploy_consume")


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
    for label in ("cp -r && sync", "deploy, new content", "deploy --consume, new content", "redeploy, unchanged", "rollback at 300 versions",
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
    kind = "virtualenv" if sys.prefix != sys.base_prefix else "system site-packages"
    assert doc["config"]["interpreter"] == f"{sys.executable}, {kind}"  # python -c pass depends on it
    for key in MEASURED:
        assert doc["medians"][key] > 0, key
        assert doc["ratios"][key] > 0, key
    assert doc["ratios"]["cp"] == 1
    # one bracketed ratio per run for each copy comparison
    assert {k: len(v) for k, v in doc["run_ratios"].items()} == {"deploy_new/cp_sync": doc["config"]["repeat"],
                                                                  "redeploy_unchanged/cp": doc["config"]["repeat"]}
    assert set(doc["manifest_bytes_per_version"]) == {"100", "300"}
    assert [row["factor"] for row in doc["scaling"]] == [1, 2, 4]
    assert all(isinstance(t["pass"], bool) and {"target", "value", "limit"} <= set(t) for t in doc["targets"])
    assert list(work.iterdir()) == []  # the scratch folder it made inside --workdir is gone


def test_targets_use_run_by_run_ratios_and_compare_dvc_mode_for_mode(tmp_path):
    """The arithmetic behind the verdicts, on made-up samples (no timing involved)."""
    import argparse

    from gaia_cas.bench import Bench, FileSpec, targets

    b = Bench(argparse.Namespace(size=1, repeat=3), tmp_path, tmp_path, [FileSpec("f", 1 << 30)])
    b.extra.update(small_changed_bytes=1 << 16, deploy_peak_rss_mib=40)
    # Per run, deploy / (mean of the cp -r && sync before and after it) is 1.1, 1.2 and 1.3: the
    # median of run ratios is 1.2, where the ratio of the medians (1.1 / 1.0) would be 1.1.
    for value, before, after in ((1.1, 0.9, 1.1), (6.0, 5.0, 5.0), (0.65, 0.4, 0.6)):
        b.bracketed("deploy_new", "cp_sync", value, before, after)
    for value in (0.04, 0.05, 0.06):
        b.bracketed("redeploy_unchanged", "cp", value, 1, 1)
    for key, values in {"cp": [1, 1, 1], "cp_sync": [1.0, 5.0, 0.5], "deploy_new": [1.1, 6.0, 0.65],
                        "redeploy_unchanged": [0.04, 0.05, 0.06], "redeploy_small": [0.1] * 3,
                        "rollback": [0.1] * 3, "rollback_base": [0.1] * 3, "list": [0.1] * 3, "status": [0.1] * 3,
                        "python_startup": [0.03] * 3, "cli_startup": [0.05] * 3,
                        "deploy_consume": [0.4] * 3, "dvc_hardlink_first": [1.0] * 3,
                        "dvc_default_first": [3.0] * 3}.items():
        for value in values:
            b.add(key, key, value)
    verdicts = {c["target"]: c for c in targets(b)}
    deploy = verdicts["deploy (new content) <= 1.25 x cp -r && sync"]
    assert deploy["value"] == pytest.approx(1.2) and deploy["pass"]
    unchanged = verdicts["unchanged redeploy <= 0.05 x cp -r"]
    assert unchanged["value"] == pytest.approx(0.05) and unchanged["pass"]
    hardlink = verdicts["deploy --consume >= 2 x faster than dvc add (hardlink), first"]
    assert hardlink["value"] == pytest.approx(0.4) and hardlink["pass"]
    default = verdicts["deploy >= 3 x faster than dvc add (default), first"]
    assert default["value"] == pytest.approx(1.1 / 3.0) and not default["pass"]
