"""The serving benchmark runs end to end (tiny durations; figures are never asserted)."""

from gaia_cas import serve_bench


def test_the_serving_benchmark_reports_throughput_latency_and_switch_failures():
    results = serve_bench.run(seconds=0.3, switches=2, interval=0.2)
    assert [(r["clients"], r["switches"]) for r in results] == [(1, 0), (3, 0), (3, 2)]
    for r in results:
        assert r["requests"] > 0 and r["failed"] == 0 and r["mixed"] == 0
        assert r["p50_ms"] is not None and r["p99_ms"] >= r["p50_ms"]


def test_without_mlserver_the_benchmark_says_so_in_one_line_and_measures_gaia_cas(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no mlserver program anywhere
    assert serve_bench.main(["--seconds", "0.3", "--switches", "0"]) == 0
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == [captured.err.strip()]
    assert "MLServer: not found" in captured.err and "--mlserver" in captured.err
    rows = [line for line in captured.out.splitlines() if "req/s" in line]
    assert len(rows) == 2 and all(line.startswith("gaia-cas serve") and "server CPU" in line for line in rows)


def test_a_mlserver_path_without_the_program_is_refused(tmp_path):
    import pytest

    with pytest.raises(SystemExit, match="no mlserver program there"):
        serve_bench.find_mlserver(str(tmp_path))
