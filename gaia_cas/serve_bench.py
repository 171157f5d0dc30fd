"""Benchmark of ``gaia-cas serve``, side by side with Seldon MLServer when it is installed:
requests/s and p50/p99 latency with 1 and 3 keep-alive clients, and failed requests across
version switches under load.

    python -m gaia_cas.serve_bench [--seconds 5] [--switches 20] [--mlserver PATH]

It builds a root in a temporary folder, deploys two 16x4 LogisticRegression joblibs, and starts
``gaia-cas serve`` as a real process on 127.0.0.1; with MLServer (``--mlserver PATH`` to its
``mlserver`` program, e.g. a virtualenv's ``bin/mlserver``, or ``mlserver`` on PATH) it also
starts MLServer with mlserver-sklearn on the same two joblibs, once with ``parallel_workers=0``
and once with its default, all before the first measurement. Every server gets the same
request (one row, asking for ``predict`` and ``predict_proba``) over http.client, measurements
alternate between the servers, and every response is checked against the local predictions of
the version it names. A gaia-cas switch is a rollback; an MLServer switch rewrites the model's
``model-settings.json`` and asks its repository API to load it again. Needs scikit-learn and
joblib (the test extra). Absolute figures on a shared machine are noisy: compare the servers
within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROW = [0.1, 0.2, 0.3, 0.4]
VERSIONS = ("1.0.0", "1.1.0")
BODY = json.dumps({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP64", "data": ROW}],
                   "outputs": [{"name": "predict"}, {"name": "predict_proba"}]}).encode()


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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(group: int) -> float | None:
    """CPU time (user + system) used so far by the processes of one process group: what a
    request costs the machine, which the shared machine's load does not change as it changes
    the requests per second. None where /proc cannot tell."""
    total = 0
    try:
        names = os.listdir("/proc")
    except OSError:
        return None
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group:
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


class GaiaServer:
    name = "gaia-cas serve"

    def __init__(self, repo, interval: float):
        self.repo = repo
        launcher = Path(__file__).resolve().parent.parent / "bin" / "gaia-cas"
        command = [str(launcher)] if launcher.exists() else ["-m", "gaia_cas"]
        self.proc = subprocess.Popen([sys.executable, *command, "--root", str(repo.layout.root), "serve", "lr",
                                      "--port", "0", "--interval", str(interval)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                     text=True, start_new_session=True,
                                     env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent)))
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(timeout=10)
            raise SystemExit(f"gaia-cas serve did not start: {self.proc.stderr.read().strip()}")
        host, port = line.split("http://", 1)[1].split("/", 1)[0].rsplit(":", 1)
        self.address = (host, int(port))

    def switch(self, i: int) -> None:
        self.repo.rollback("lr", VERSIONS[(i + 1) % 2])

    def reset(self) -> None:
        self.repo.rollback("lr", VERSIONS[0])

    def close(self) -> None:
        _stop(self.proc)


class MLServer:
    """MLServer with mlserver-sklearn serving the same joblibs, the version in its settings."""

    def __init__(self, program: str, folder: Path, paths: list[Path], workers: int | None):
        self.name = f"MLServer parallel_workers={'default' if workers is None else workers}"
        self.folder = folder / f"mlserver-{workers}"
        self.model_dir = self.folder / "lr"
        self.model_dir.mkdir(parents=True)
        for version, path in zip(VERSIONS, paths):
            shutil.copyfile(path, self.model_dir / f"model-{version}.joblib")
        http_port = _free_port()
        settings = {"debug": False, "host": "127.0.0.1", "http_port": http_port, "grpc_port": _free_port(),
                    "metrics_port": _free_port()}
        if workers is not None:
            settings["parallel_workers"] = workers
        (self.folder / "settings.json").write_text(json.dumps(settings))
        self._settings(VERSIONS[0])
        self.log = open(self.folder / "mlserver.log", "wb")
        self.proc = subprocess.Popen([program, "start", str(self.folder)], stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=self.folder, start_new_session=True)
        self.address = ("127.0.0.1", http_port)
        self._wait_ready(120)

    def _settings(self, version: str) -> None:
        doc = {"name": "lr", "implementation": "mlserver_sklearn.SKLearnModel",
               "parameters": {"uri": f"./model-{version}.joblib", "version": version}}
        temp = self.model_dir / "model-settings.json.tmp"
        temp.write_text(json.dumps(doc))
        os.replace(temp, self.model_dir / "model-settings.json")

    def _post(self, path: str, timeout: float = 60) -> int:
        import http.client

        conn = http.client.HTTPConnection(*self.address, timeout=timeout)
        try:
            conn.request("POST", path, body=b"")
            response = conn.getresponse()
            response.read()
            return response.status
        finally:
            conn.close()

    def _wait_ready(self, timeout: float) -> None:
        import http.client

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                conn = http.client.HTTPConnection(*self.address, timeout=2)
                conn.request("GET", "/v2/models/lr/ready")
                response = conn.getresponse()
                response.read()
                conn.close()
                if response.status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        self.close()
        tail = (self.folder / "mlserver.log").read_text(errors="replace").strip().splitlines()[-5:]
        raise RuntimeError(f"{self.name} did not become ready: {' / '.join(tail)}")

    def switch(self, i: int) -> None:
        self._settings(VERSIONS[(i + 1) % 2])
        self._post("/v2/repository/models/lr/load")

    def reset(self) -> None:
        self.switch(1)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, 15)  # its workers too
            except OSError:
                pass
        _stop(self.proc)
        self.log.close()


def _drive(address: tuple[str, int], clients: int, seconds: float, expected: dict, switch=None,
           switches: int = 0, group: int | None = None) -> dict:
    import http.client

    stop = threading.Event()
    latencies: list[float] = []
    failed: list = []
    mixed: list = []
    switch_times: list[float] = []

    def client():
        conn = http.client.HTTPConnection(*address, timeout=30)
        mine = []
        while not stop.is_set():
            started = time.perf_counter()
            try:
                conn.request("POST", "/v2/models/lr/infer", body=BODY, headers={"Content-Type": "application/json"})
                response = conn.getresponse()
                doc = json.loads(response.read())
            except Exception as exc:
                failed.append(repr(exc))
                conn.close()
                conn = http.client.HTTPConnection(*address, timeout=30)
                continue
            mine.append(time.perf_counter() - started)
            if response.status != 200:
                failed.append(response.status)
            elif {o["name"]: o["data"] for o in doc["outputs"]} != expected.get(doc.get("model_version")):
                mixed.append(doc.get("model_version"))
        conn.close()
        latencies.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    started = time.perf_counter()
    cpu_before = cpu_seconds(group) if group else None
    if switches:
        for i in range(switches):
            time.sleep(seconds / switches)
            begun = time.perf_counter()
            switch(i)
            switch_times.append(time.perf_counter() - begun)
    else:
        time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join(timeout=60)
    elapsed = time.perf_counter() - started
    cpu_after = cpu_seconds(group) if cpu_before is not None else None
    latencies.sort()

    def pct(p):
        return round(latencies[min(len(latencies) - 1, int(len(latencies) * p))] * 1e3, 3) if latencies else None

    result = {"clients": clients, "requests": len(latencies), "requests_per_s": round(len(latencies) / elapsed, 1),
              "p50_ms": pct(0.50), "p99_ms": pct(0.99), "failed": len(failed), "mixed": len(mixed),
              "switches": switches,
              "server_cpu_ms_per_request": round((cpu_after - cpu_before) * 1e3 / len(latencies), 3)
              if cpu_after is not None and latencies else None}
    if switches:
        result["slowest_switch_ms"] = round(max(switch_times) * 1e3, 1)
        result["failures"] = sorted({str(f) for f in failed})[:5]
    return result


def find_mlserver(path: str | None) -> str | None:
    """The mlserver program: ``path`` if given (a file, or a virtualenv holding bin/mlserver), else PATH's."""
    if path:
        candidate = Path(path)
        if candidate.is_dir():
            candidate = candidate / "bin" / "mlserver"
        if not (candidate.is_file() and os.access(candidate, os.X_OK)):
            raise SystemExit(f"--mlserver {path}: no mlserver program there")
        return str(candidate)
    return shutil.which("mlserver")


def run(seconds: float = 5.0, switches: int = 20, interval: float = 1.0, mlserver: str | None = None,
        report=None) -> list[dict]:
    """One result per (server, measurement); ``mlserver`` is the mlserver program or None."""
    from .repo import Repository

    with tempfile.TemporaryDirectory(prefix="gaia-cas-serve-bench-") as tmp:
        tmp = Path(tmp)
        repo = Repository.init(tmp / "root")
        paths = _models(tmp / "src")
        repo.deploy("lr", paths[0])
        repo.deploy("lr", paths[1])
        repo.rollback("lr", VERSIONS[0])
        expected = {version: _expected(path) for version, path in zip(VERSIONS, paths)}
        servers = []
        try:
            servers.append(GaiaServer(repo, interval))
            if mlserver:
                for workers in (0, None):
                    try:
                        servers.append(MLServer(mlserver, tmp, paths, workers))
                    except RuntimeError as exc:
                        if report:
                            report(f"skipped: {exc}")
            results = []
            for clients in (1, 3):  # alternating: the machine's load drifts less between neighbours
                for server in servers:
                    results.append({"server": server.name, **_drive(server.address, clients, seconds, expected,
                                                                   group=server.proc.pid)})
            if switches:
                for server in servers:
                    server.reset()
                    time.sleep(max(interval, 0.5) * 2)
                    results.append({"server": server.name, **_drive(server.address, 3, max(seconds, switches * 0.5),
                                                                   expected, server.switch, switches,
                                                                   group=server.proc.pid)})
            return results
        finally:
            for server in servers:
                server.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gaia_cas.serve_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each load run (default 5)")
    parser.add_argument("--switches", type=int, default=20, help="version switches under load (default 20)")
    parser.add_argument("--mlserver", metavar="PATH",
                        help="the mlserver program (or a virtualenv holding bin/mlserver) to compare with; "
                             "default: mlserver on PATH, skipped if none")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    program = find_mlserver(args.mlserver)
    if program is None:
        print("MLServer: not found (pip install mlserver==1.7.1 mlserver-sklearn==1.7.1 'uvloop<0.22' into a "
              "virtualenv and pass --mlserver VENV); measuring gaia-cas serve alone", file=sys.stderr)
    results = run(args.seconds, args.switches, mlserver=program, report=lambda line: print(line, file=sys.stderr))
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print("requests/s and latency follow the shared machine's load; server CPU per request much less so")
    for r in results:
        what = f"{r['switches']} switches, {r['clients']} clients" if r["switches"] else f"{r['clients']} client(s)"
        line = (f"{r['server']:34} {what:24} {r['requests_per_s']:8.1f} req/s  p50 {r['p50_ms']} ms  "
                f"p99 {r['p99_ms']} ms  failed {r['failed']}  mixed {r['mixed']}  "
                f"server CPU {r['server_cpu_ms_per_request']} ms/request")
        if r["switches"]:
            line += f"  slowest switch {r['slowest_switch_ms']} ms" + (f"  ({', '.join(r['failures'])})"
                                                                     if r["failures"] else "")
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
