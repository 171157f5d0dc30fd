"""gaia-cas serve's HTTP/1.1 layer, byte by byte: keep-alive and its end, pipelining, bounds on
lines and headers, bodies it will not read, and the scikit-learn path's finiteness check."""

from __future__ import annotations

import json
import re
import socket

import pytest

from test_serving_server import ROWS, deploy_joblib, infer_body, local_sklearn, outputs_of, start  # noqa: F401


def exchange(server, raw: bytes, *, until_closed: bool = False, responses: int = 1) -> bytes:
    """Send raw bytes; read until ``responses`` complete JSON responses came (or the server closed)."""
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(raw)
        reply = b""
        while True:
            if not until_closed and _complete(reply) >= responses:
                return reply
            chunk = sock.recv(65536)
            if not chunk:
                return reply
            reply += chunk


def _complete(reply: bytes) -> int:
    count, rest = 0, reply
    while b"\r\n\r\n" in rest:
        head, rest = rest.split(b"\r\n\r\n", 1)
        length = int(head.lower().split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
        if len(rest) < length:
            break
        rest = rest[length:]
        count += 1
    return count


def statuses(reply: bytes) -> list[int]:
    return [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", reply)]


def post(body: bytes, extra: str = "", version: str = "HTTP/1.1") -> bytes:
    return (f"POST /v2/models/lr/infer {version}\r\nHost: x\r\nContent-Length: {len(body)}\r\n{extra}\r\n").encode() + body


@pytest.fixture
def server(repo, tmp_path, start):  # noqa: F811
    deploy_joblib(repo, tmp_path, 0)
    return start("lr")


BODY = json.dumps(infer_body()).encode()


def test_pipelined_requests_are_answered_in_order_on_one_connection(server):
    raw = post(BODY) + b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n" + post(BODY)
    reply = exchange(server, raw, responses=3)
    assert statuses(reply) == [200, 200, 200]
    assert reply.count(b'"model_version":"1.0.0"') == 2 and b'{"live":true}' in reply


def test_connection_close_and_http_1_0_end_the_connection_after_the_answer(server):
    for raw in (post(BODY, "Connection: close\r\n"), post(BODY, version="HTTP/1.0")):
        reply = exchange(server, raw, until_closed=True)
        assert statuses(reply) == [200] and b"Connection: close" in reply
    reply = exchange(server, post(BODY, "Connection: keep-alive\r\n", "HTTP/1.0") + post(BODY), responses=2)
    assert statuses(reply) == [200, 200]


UNFRAMED = [
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET /v2/health/live SPDY/3\r\n\r\n", 400),
    (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", 414),
    (b"GET /v2/health/live HTTP/1.1\r\nX: " + b"a" * 70000 + b"\r\n\r\n", 431),
    (b"GET /v2/health/live HTTP/1.1\r\n" + b"X: y\r\n" * 101 + b"\r\n", 431),
    (b"GET /v2/health/live HTTP/1.1\r\nno colon here\r\n\r\n", 400),
    (b"POST /v2/models/lr/infer HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nxxxxx", 400),
    (b"POST /v2/models/lr/infer HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 411),
    (b"POST /v2/models/lr/infer HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 411),
    (b"PUT /v2/models/lr/infer HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", 405),
    (b"GET /v2/health/live HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc", 200),
]


def test_a_request_the_server_cannot_frame_is_answered_then_the_connection_closed(server):
    for raw, status in UNFRAMED:
        reply = exchange(server, raw + post(BODY), until_closed=True)
        assert statuses(reply) == [status], reply[:300]  # the bytes after it are never taken for a request
        assert b"Connection: close" in reply and (b'"error"' in reply or status == 200)
        assert exchange(server, post(BODY)).startswith(b"HTTP/1.1 200")  # and the server keeps serving


def test_a_body_cut_short_gets_no_answer_and_the_server_keeps_serving(server):
    raw = post(BODY)[:-10]
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(raw)
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(65536) == b""
    assert exchange(server, post(BODY)).startswith(b"HTTP/1.1 200")


def test_every_answer_has_a_date_a_length_and_json(server):
    reply = exchange(server, b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n")
    head, body = reply.split(b"\r\n\r\n", 1)
    assert b"\r\nDate: " in head and b"\r\nContent-Type: application/json" in head
    assert json.loads(body) == {"ready": True}


def test_nan_or_infinity_for_a_scikit_learn_model_is_still_refused(server, tmp_path):
    for value in ("NaN", "Infinity", "-Infinity"):
        body = ('{"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP64", "data": [0.1, 0.2, 0.3, %s]}]}'
                % value).encode()
        status, doc = server.request("POST", "/v2/models/lr/infer", body)
        assert status == 400 and "rejected the input" in doc["error"], (value, doc)
    status, doc = server.request("POST", "/v2/models/lr/infer", infer_body())
    expected = local_sklearn(tmp_path / "src" / "v0" / "model.joblib")
    assert status == 200 and outputs_of(doc) == expected
