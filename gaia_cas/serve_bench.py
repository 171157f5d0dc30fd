"""Benchmark of ``gaia-cas serve``: requests/s and p50/p99 latency with 1 and 3 keep-alive
clients, and failed requests across version switches under load.

    python -m gaia_cas.serve_bench [--seconds 5] [--switches 20]

It builds a root in a temporary folder, deploys two 16x4 LogisticRegression joblibs, starts the
server as a real process on 127.0.0.1 and drives it with http.client; every response is checked
against the local predictions of the version it names. Needs scikit-learn and joblib (the test
extra). Absolute figures on a shared machine are noisy: compare runs made side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROW = [0.1, 0.2, 0.3, 0.4]


def _models(folder: Path) -> list[Path]:
    import joblib
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    paths = []
    for variant in range(2):
        rng = np.random.default_rng(variant)
        x = rng.normal(size=(16, 4))
        y = (x[:, 0] + 0.5 * variant > 0).astype(int)
        path = folder / f"v{variant}" / "model.joblib"
        path.parent.mkdir(parents=True)
        joblib.dump(LogisticRegression(C=1.0 + variant).fit(x, y), path)
        paths.append(path)
    return paths


def _expected(path: Path) -> dict:
    import joblib
    import numpy as np

    model = joblib.load(path)
    row = np.array([ROW])
    return {"predict": model.predict(row).tolist(), "predict_proba": model.predict_proba(row).reshape(-1).tolist()}


def _drive(address: tuple[str, int], clients: int, seconds: float, expected: dict, switch=None,
           switches: int = 0) -> dict:
    import http.client

    body = json.dumps({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP64", "data": ROW}]}).encode()
    stop = threading.Event()
    latencies: list[float] = []
    failed: list = []
    mixed: list = []

    def client():
        conn = http.client.HTTPConnection(*address, timeout=10)
        mine = []
        while not stop.is_set():
            started = time.perf_counter()
            try:
                conn.request("POST", "/v2/models/lr/infer", body=body)
                response = conn.getresponse()
                doc = json.loads(response.read())
            except Exception as exc:
                failed.append(repr(exc))
                conn.close()
                conn = http.client.HTTPConnection(*address, timeout=10)
                continue
            mine.append(time.perf_counter() - started)
            if response.status != 200:
                failed.append(response.status)
            elif {o["name"]: o["data"] for o in doc["outputs"]} != expected.get(doc["model_version"]):
                mixed.append(doc["model_version"])
        conn.close()
        latencies.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    started = time.perf_counter()
    if switches:
        for i in range(switches):
            time.sleep(seconds / switches)
            switch(i)
    else:
        time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    elapsed = time.perf_counter() - started
    latencies.sort()

    def pct(p):
        return round(latencies[min(len(latencies) - 1, int(len(latencies) * p))] * 1e3, 3) if latencies else None

    return {"clients": clients, "requests": len(latencies), "requests_per_s": round(len(latencies) / elapsed, 1),
            "p50_ms": pct(0.50), "p99_ms": pct(0.99), "failed": len(failed), "mixed": len(mixed),
            "switches": switches}


def run(seconds: float = 5.0, switches: int = 20, interval: float = 1.0) -> list[dict]:
    from .repo import Repository

    with tempfile.TemporaryDirectory(prefix="gaia-cas-serve-bench-") as tmp:
        tmp = Path(tmp)
        repo = Repository.init(tmp / "root")
        paths = _models(tmp / "src")
        repo.deploy("lr", paths[0])
        repo.deploy("lr", paths[1])
        repo.rollback("lr", "1.0.0")
        expected = {"1.0.0": _expected(paths[0]), "1.1.0": _expected(paths[1])}
        launcher = Path(__file__).resolve().parent.parent / "bin" / "gaia-cas"
        command = [str(launcher)] if launcher.exists() else ["-m", "gaia_cas"]
        server = subprocess.Popen([sys.executable, *command, "--root", str(repo.layout.root), "serve", "lr",
                                   "--port", "0", "--interval", str(interval)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                                  env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent)))
        try:
            line = server.stdout.readline()
            if not line:
                server.wait(timeout=10)
                raise SystemExit(f"the server did not start: {server.stderr.read().strip()}")
            host, port = line.split("http://", 1)[1].split("/", 1)[0].rsplit(":", 1)
            address = (host, int(port))
            results = [_drive(address, clients, seconds, expected) for clients in (1, 3)]
            if switches:
                def switch(i):
                    repo.rollback("lr", "1.1.0" if i % 2 == 0 else "1.0.0")
                results.append(_drive(address, 3, max(seconds, switches * 0.5), expected, switch, switches))
            return results
        finally:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(timeout=10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gaia_cas.serve_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each load run (default 5)")
    parser.add_argument("--switches", type=int, default=20, help="version switches under load (default 20)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    results = run(args.seconds, args.switches)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for r in results:
        what = f"{r['switches']} switches, {r['clients']} clients" if r["switches"] else f"{r['clients']} client(s)"
        print(f"{what:24} {r['requests_per_s']:8.1f} req/s  p50 {r['p50_ms']} ms  p99 {r['p99_ms']} ms  "
              f"failed {r['failed']}  mixed {r['mixed']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
