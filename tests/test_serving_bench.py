"""The serving benchmark runs end to end (tiny durations; figures are never asserted)."""

from gaia_cas import serve_bench


def test_the_serving_benchmark_reports_throughput_latency_and_switch_failures():
    results = serve_bench.run(seconds=0.3, switches=2, interval=0.2)
    assert [(r["clients"], r["switches"]) for r in results] == [(1, 0), (3, 0), (3, 2)]
    for r in results:
        assert r["requests"] > 0 and r["failed"] == 0 and r["mixed"] == 0
        assert r["p50_ms"] is not None and r["p99_ms"] >= r["p50_ms"]
