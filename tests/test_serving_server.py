"""gaia-cas serve: the Open Inference Protocol (v2) over real HTTP, with versions switching under load."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import LAUNCHER
from gaia_cas import leases
from gaia_cas.repo import Repository
from serving_models import sample_rows, write_joblib, write_onnx

ROWS = sample_rows(16)


class Server:
    def __init__(self, root: Path, *models: str, extra=()):
        self.proc = subprocess.Popen(
            [sys.executable, str(LAUNCHER), "--root", str(root), "serve", *models, "--port", "0",
             "--interval", "0.2", *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(timeout=10)
            raise AssertionError(f"the server did not start: {self.proc.stderr.read()}")
        self.banner = line
        address = line.split("http://", 1)[1].split("/", 1)[0]
        self.host, port = address.rsplit(":", 1)
        self.port = int(port)

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=10)

    def request(self, method: str, path: str, body=None, conn=None, headers=None):
        own = conn is None
        conn = conn or self.connection()
        try:
            data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
            conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
            response = conn.getresponse()
            payload = response.read()
            return response.status, json.loads(payload)
        finally:
            if own:
                conn.close()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def start(root):
    servers = []

    def run(*models, extra=()):
        server = Server(root, *models, extra=extra)
        servers.append(server)
        return server

    yield run
    for server in servers:
        server.stop()


def infer_body(name="input", rows=ROWS, datatype="FP32"):
    return {"inputs": [{"name": name, "shape": list(rows.shape), "datatype": datatype,
                        "data": rows.reshape(-1).tolist()}]}


def local_sklearn(path: Path) -> dict:
    import joblib

    model = joblib.load(path)
    return {"predict": model.predict(ROWS).tolist(), "predict_proba": model.predict_proba(ROWS).reshape(-1).tolist()}


def outputs_of(document) -> dict:
    return {o["name"]: o["data"] for o in document["outputs"]}


def deploy_joblib(repo, tmp_path, variant) -> Path:
    path = write_joblib(tmp_path / "src" / f"v{variant}" / "model.joblib", variant)
    repo.deploy("lr", path)
    return path


def test_health_metadata_and_infer_for_a_joblib_and_an_onnx_model(repo, root, tmp_path, start):
    joblib_path = deploy_joblib(repo, tmp_path, 0)
    onnx_path = write_onnx(tmp_path / "src" / "onnx" / "model.onnx", 1)
    repo.deploy("ox", onnx_path)
    server = start("lr", "ox")
    assert server.request("GET", "/v2/health/live") == (200, {"live": True})
    assert server.request("GET", "/v2/health/ready") == (200, {"ready": True})
    assert server.request("GET", "/v2/models/lr/ready") == (200, {"name": "lr", "ready": True})

    status, meta = server.request("GET", "/v2/models/lr")
    assert status == 200 and meta["versions"] == ["1.0.0"] and meta["platform"] == "sklearn"
    assert meta["inputs"][0]["shape"] == [-1, 4]
    assert [o["name"] for o in meta["outputs"]] == ["predict", "predict_proba"]
    status, meta = server.request("GET", "/v2/models/ox")
    assert status == 200 and meta["platform"] == "onnxruntime"
    assert meta["inputs"] == [{"name": "X", "datatype": "FP32", "shape": [-1, 4]}]
    assert [o["name"] for o in meta["outputs"]] == ["label", "probabilities"]

    status, doc = server.request("POST", "/v2/models/lr/infer", infer_body())
    assert status == 200, doc
    assert doc["model_name"] == "lr" and doc["model_version"] == "1.0.0"
    assert doc["parameters"]["tree"] == repo.resolve("lr").hash
    assert outputs_of(doc) == local_sklearn(joblib_path)
    shapes = {o["name"]: (o["shape"], o["datatype"]) for o in doc["outputs"]}
    assert shapes == {"predict": ([16], "INT64"), "predict_proba": ([16, 2], "FP32")}  # follows the input

    import onnxruntime

    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    label, probabilities = session.run(None, {"X": ROWS})
    status, doc = server.request("POST", "/v2/models/ox/infer", {**infer_body("X"), "id": "r1"})
    assert status == 200, doc
    assert doc["id"] == "r1" and doc["model_version"] == "1.0.0"
    assert outputs_of(doc) == {"label": label.tolist(), "probabilities": probabilities.reshape(-1).tolist()}
    status, doc = server.request("POST", "/v2/models/ox/versions/1.0.0/infer",
                                 {**infer_body("X"), "outputs": [{"name": "probabilities"}]})
    assert status == 200 and [o["name"] for o in doc["outputs"]] == ["probabilities"]
    status, doc = server.request("POST", "/v2/models/lr/infer", {**infer_body(), "outputs": [{"name": "predict"}]})
    assert status == 200 and outputs_of(doc) == {"predict": local_sklearn(joblib_path)["predict"]}
    status, doc = server.request("POST", "/v2/models/lr/infer", {**infer_body(), "outputs": [{"name": "nope"}]})
    assert status == 400 and "unknown output 'nope'" in doc["error"]


def test_bad_requests_get_json_errors_and_the_server_keeps_serving(repo, root, tmp_path, start):
    deploy_joblib(repo, tmp_path, 0)
    repo.deploy("ox", write_onnx(tmp_path / "src" / "onnx" / "model.onnx", 1))
    server = start("lr", "ox", extra=("--max-body", "100000"))
    conn = server.connection()
    cases = [
        ("/v2/models/lr/infer", b"{not json", 400, "not JSON"),
        ("/v2/models/lr/infer", {"inputs": []}, 400, "non-empty list"),
        ("/v2/models/lr/infer", {"inputs": [{"name": "x", "shape": [3, 4], "datatype": "FP32",
                                             "data": [1.0] * 4}]}, 400, "holds 12 values"),
        ("/v2/models/lr/infer", infer_body(datatype="FP99"), 400, "unknown datatype"),
        ("/v2/models/lr/infer", {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32",
                                             "data": [1.0, 2.0, 3.0]}]}, 400, "rejected the input"),
        ("/v2/models/lr/infer", {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                                             "data": ["a", "b", "c", "d"]}]}, 400, "FP32"),
        ("/v2/models/ox/infer", infer_body("wrong"), 400, "inputs are 'X'"),
        ("/v2/models/ox/infer", infer_body("X", datatype="FP64"), 400, "rejected the input"),
        ("/v2/models/lr/versions/9.9.9/infer", infer_body(), 404, "not served"),
        ("/v2/models/nope/infer", infer_body(), 404, "unknown model 'nope'"),
    ]
    for path, body, status, fragment in cases:
        got, doc = server.request("POST", path, body, conn=conn)
        assert (got, fragment in doc.get("error", "")) == (status, True), (path, body, got, doc)
    assert server.request("GET", "/v2/models/nope", conn=conn)[0] == 404
    assert server.request("GET", "/v2/nothing/here", conn=conn)[0] == 404
    status, doc = server.request("POST", "/v2/models/lr/infer", infer_body(), conn=conn)
    assert status == 200  # the same keep-alive connection, still serving
    big = json.dumps(infer_body(rows=np.zeros((8000, 4), dtype=np.float32))).encode()
    status, doc = server.request("POST", "/v2/models/lr/infer", big)
    assert status == 413 and "limit is 100000" in doc["error"]
    assert server.request("POST", "/v2/models/lr/infer", infer_body())[0] == 200
    conn.close()


def test_keep_alive_answers_many_requests_on_one_connection(repo, root, tmp_path, start):
    deploy_joblib(repo, tmp_path, 0)
    server = start("lr")
    conn = server.connection()
    server.request("GET", "/v2/health/ready", conn=conn)
    sock = conn.sock
    for _ in range(20):
        assert server.request("POST", "/v2/models/lr/infer", infer_body(), conn=conn)[0] == 200
    assert conn.sock is sock  # never reconnected
    conn.close()
    server.stop()  # SIGTERM: the server ends cleanly and gives its lease back
    assert server.proc.returncode == 128 + 15 and "Traceback" not in server.proc.stderr.read()
    assert os.listdir(leases.leases_dir(repo.layout)) == []


def test_a_client_that_expects_100_continue_gets_it_before_sending_the_body(repo, root, tmp_path, start):
    import socket

    deploy_joblib(repo, tmp_path, 0)
    server = start("lr")
    body = json.dumps(infer_body()).encode()
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        sock.sendall(f"POST /v2/models/lr/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n".encode())
        assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue")  # within the timeout, before the body
        sock.sendall(body)
        reply = b""
        while b"model_version" not in reply:
            chunk = sock.recv(65536)
            assert chunk
            reply += chunk
        assert reply.startswith(b"HTTP/1.1 200")


def test_a_switch_under_load_fails_no_request_and_mixes_no_versions(repo, root, tmp_path, start):
    sources = {"1.0.0": deploy_joblib(repo, tmp_path, 0)}
    server = start("lr")
    sources["1.1.0"] = write_joblib(tmp_path / "src" / "v1" / "model.joblib", 1)
    expected = {version: local_sklearn(path) for version, path in sources.items()}
    assert expected["1.0.0"] != expected["1.1.0"]

    stop = threading.Event()
    seen: list[tuple[float, str]] = []
    failures: list = []
    mixed: list = []

    def client():
        conn = server.connection()
        body = json.dumps(infer_body()).encode()
        while not stop.is_set():
            try:
                conn.request("POST", "/v2/models/lr/infer", body=body)
                response = conn.getresponse()
                doc = json.loads(response.read())
            except Exception as exc:  # a failed request, whatever the failure
                failures.append(repr(exc))
                conn.close()
                conn = server.connection()
                continue
            if response.status != 200:
                failures.append((response.status, doc))
                continue
            version = doc["model_version"]
            seen.append((time.monotonic(), version))
            if outputs_of(doc) != expected.get(version):
                mixed.append(version)
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.3)
        repo.deploy("lr", sources["1.1.0"])
        deployed = time.monotonic()
        deadline = deployed + 10
        while not any(v == "1.1.0" and t > deployed for t, v in seen) and time.monotonic() < deadline:
            time.sleep(0.02)
        served_new = next((t for t, v in seen if v == "1.1.0"), None)
        time.sleep(0.3)
        repo.rollback("lr", "1.0.0")
        rolled = time.monotonic()
        deadline = rolled + 10
        while not any(v == "1.0.0" and t > rolled + 0.05 for t, v in seen[-50:]) and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=20)
    assert failures == [] and mixed == []
    assert served_new is not None and served_new - deployed < 10
    versions = [v for _, v in seen]
    first_new = versions.index("1.1.0")
    assert "1.0.0" in versions[first_new:]  # the rollback was served too
    assert len(seen) > 50
    assert len(os.listdir(leases.leases_dir(repo.layout))) == 1  # only the served version is leased


def test_a_version_that_fails_to_load_never_replaces_the_served_one(repo, root, tmp_path, start):
    good = deploy_joblib(repo, tmp_path, 0)
    server = start("lr")
    broken = tmp_path / "src" / "broken" / "model.joblib"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"\x80\x04\x95" + os.urandom(64))  # looks like a pickle, does not load
    repo.deploy("lr", broken)
    assert repo.resolve("lr").version == "1.1.0"
    deadline = time.monotonic() + 10
    meta = {}
    while "last_error" not in meta.get("parameters", {}) and time.monotonic() < deadline:
        meta = server.request("GET", "/v2/models/lr")[1]
        time.sleep(0.05)
    assert meta["versions"] == ["1.0.0"] and meta["parameters"]["last_error"]
    assert server.request("GET", "/v2/health/ready") == (200, {"ready": True})
    status, doc = server.request("POST", "/v2/models/lr/infer", infer_body())
    assert status == 200 and doc["model_version"] == "1.0.0" and outputs_of(doc) == local_sklearn(good)

    fixed = write_joblib(tmp_path / "src" / "v2" / "model.joblib", 2)
    repo.deploy("lr", fixed)
    deadline = time.monotonic() + 10
    while doc["model_version"] != "1.2.0" and time.monotonic() < deadline:
        doc = server.request("POST", "/v2/models/lr/infer", infer_body())[1]
        time.sleep(0.05)
    assert doc["model_version"] == "1.2.0" and outputs_of(doc) == local_sklearn(fixed)


def test_serve_refuses_an_unknown_model_or_a_model_it_cannot_load_in_one_line(repo, root, tmp_path):
    from conftest import assert_one_line_error, run_launcher

    assert_one_line_error(run_launcher("--root", root, "serve", "nope", "--port", "0", timeout=30), "nope")
    src = tmp_path / "src" / "plain.bin"
    src.parent.mkdir(parents=True)
    src.write_bytes(b"plain bytes")
    repo.deploy("plain", src)
    assert_one_line_error(run_launcher("--root", root, "serve", "plain", "--port", "0", timeout=30),
                          "no default loader")
    assert os.listdir(leases.leases_dir(repo.layout)) == []


@pytest.mark.parametrize("argv, fragment", [
    (["--port", "70000"], "--port must be 0 to 65535"),
    (["--interval", "0"], "--interval must be more than 0"),
    (["--max-body", "-1"], "--max-body must be 0 or more"),
])
def test_serve_refuses_bad_options_in_one_line(repo, tmp_path, cli, argv, fragment):
    from conftest import assert_one_line_error

    deploy_joblib(repo, tmp_path, 0)
    assert_one_line_error(cli("serve", "lr", *argv), fragment)


def test_a_port_in_use_is_one_line_and_gives_the_lease_back(repo, root, tmp_path, start):
    from conftest import assert_one_line_error, run_launcher

    deploy_joblib(repo, tmp_path, 0)
    server = start("lr")
    run = run_launcher("--root", root, "serve", "lr", "--port", server.port, timeout=30)
    assert_one_line_error(run, "in use")
    assert len(os.listdir(leases.leases_dir(repo.layout))) == 1  # the running server's only
