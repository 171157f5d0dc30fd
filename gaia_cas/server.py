"""``gaia-cas serve``: a reference inference server speaking the Open Inference Protocol (v2) REST
API (KServe, Triton, Seldon MLServer clients), one :class:`ModelHandle` per model.

    GET  /v2/health/live            {"live": true}
    GET  /v2/health/ready           {"ready": true} once every model is loaded (then always:
                                    a version that fails to load never replaces the served one)
    GET  /v2/models/{name}          name, versions (the one served), platform, inputs, outputs
    GET  /v2/models/{name}/ready
    POST /v2/models/{name}[/versions/{v}]/infer

Each request takes the handle's (model, resolved) pair once, so it is answered wholly by one
version, and the response names it (``model_version``, with its tree in ``parameters``).
Threaded (``ThreadingHTTPServer``), HTTP/1.1 keep-alive; binds 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from .errors import InvalidInputError

DEFAULT_MAX_BODY = 64 << 20


class _Problem(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class InferenceServer:
    """The server, its handles and its thread: ``start()``, ``address``, ``close()``."""

    def __init__(self, models: list[str], *, root=None, host: str = "127.0.0.1", port: int = 8080,
                 channel: str = "current", interval: float = 1.0, max_body: int = DEFAULT_MAX_BODY,
                 loader: Callable | None = None):
        from .handle import ModelHandle

        try:
            import numpy  # noqa: F401  (the tensors of the protocol)
        except ImportError:
            from .loaders import UnsupportedFormatError

            raise UnsupportedFormatError("gaia-cas serve needs numpy: pip install 'gaia-cas[serve]' "
                                         "(or pip install numpy)") from None
        if not models:
            raise InvalidInputError("name at least one model to serve")
        if not interval > 0:
            raise InvalidInputError(f"--interval must be more than 0 seconds, not {interval!r}")
        self.handles: dict = {}
        self._owned = []
        try:
            for name in models:
                handle = ModelHandle(name, root=root, channel=channel, loader=loader)
                self._owned.append(handle)
                self.handles[name] = handle
                self.handles.setdefault(handle.model, handle)  # by its name too, if an alias was given
            for handle in self._owned:
                handle.start(interval)
            self.httpd = _HTTPServer((host, port), _Handler)
        except BaseException:
            self.close()
            raise
        self.httpd.app = self
        self.max_body = max_body
        self._thread = None

    @property
    def address(self) -> tuple[str, int]:
        return self.httpd.server_address[:2]

    def serve_forever(self) -> None:
        self.httpd.serve_forever(poll_interval=0.2)

    def start(self) -> "InferenceServer":
        import threading

        self._thread = threading.Thread(target=self.serve_forever, name="gaia-cas serve", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        httpd = getattr(self, "httpd", None)
        if httpd is not None:
            if self._thread is not None:
                httpd.shutdown()
                self._thread.join(timeout=10)
            httpd.server_close()
        for handle in self._owned:
            handle.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- the protocol -------------------------------------------------------------------

    def handle_for(self, name: str):
        handle = self.handles.get(name)
        if handle is None:
            raise _Problem(404, f"unknown model {name!r} (serving {', '.join(sorted(self.handles))})")
        return handle

    def model_metadata(self, name: str) -> dict:
        from . import oip

        handle = self.handle_for(name)
        model, active = handle.get()
        doc = {"name": name, "versions": [active.version], **oip.metadata(model),
               "parameters": {"tree": active.hash, "channel": handle.channel}}
        if handle.last_error is not None:
            error = handle.last_error  # why the manifest's version is not the one served
            doc["parameters"]["last_error"] = f"{type(error).__name__}: {error}".rstrip(": ")
        return doc

    def infer(self, name: str, version: str | None, body: bytes) -> dict:
        from . import oip

        handle = self.handle_for(name)
        try:
            document = json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise _Problem(400, f"the body is not JSON: {exc}") from None
        try:
            inputs, wanted, request_id = oip.decode_inputs(document)
            model, active = handle.get()  # once: the whole answer comes from this version
            if version is not None and version != active.version:
                raise _Problem(404, f"model {name!r} version {version!r} is not served (serving {active.version})")
            if wanted is not None:
                known = {o["name"] for o in oip.metadata(model)["outputs"]}
                missing = [w for w in wanted if known and w not in known]
                if missing:
                    raise oip.BadRequest(f"unknown output {missing[0]!r} (outputs: {', '.join(sorted(known))})")
            outputs = oip.infer(model, inputs, wanted)  # only what was asked for, where that saves work
            if wanted is not None:
                outputs = [(n, v) for n, v in outputs if n in wanted]
            result = {"model_name": name, "model_version": active.version,
                      "outputs": [oip.encode_output(n, v) for n, v in outputs],
                      "parameters": {"tree": active.hash}}
        except oip.BadRequest as exc:
            raise _Problem(400, str(exc)) from None
        if request_id is not None:
            result["id"] = request_id
        return result


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    server_version = "gaia-cas"
    # Headers and body leave in one write, with Nagle off: as two small writes, the second
    # waited for the client's delayed ACK, 40 ms a request on Linux (measured: 23 req/s).
    wbufsize = 1 << 16

    def setup(self):
        super().setup()
        import socket

        try:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass

    def log_message(self, format, *args):  # one line per request would cost more than the request
        pass

    def handle_expect_100(self):
        ok = super().handle_expect_100()
        self.wfile.flush()  # the client (curl, for any body over 1 KiB) waits for it before the body
        return ok

    def _send(self, status: int, document: dict) -> None:
        body = json.dumps(document, separators=(",", ":")).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _route(self, method: str) -> None:
        app: InferenceServer = self.server.app
        parts = [p for p in self.path.split("?", 1)[0].split("/") if p]
        try:
            if method == "POST":
                body = self._body(app.max_body)
            if parts[:1] != ["v2"]:
                raise _Problem(404, f"no such endpoint: {self.path}")
            rest = parts[1:]
            if method == "GET" and rest == []:
                from . import __version__

                return self._send(200, {"name": "gaia-cas", "version": __version__, "extensions": []})
            if method == "GET" and rest == ["health", "live"]:
                return self._send(200, {"live": True})
            if method == "GET" and rest == ["health", "ready"]:
                return self._send(200, {"ready": True})  # every handle serves a loaded version
            if len(rest) >= 2 and rest[0] == "models":
                name, tail = rest[1], rest[2:]
                version = None
                if len(tail) >= 2 and tail[0] == "versions":
                    version, tail = tail[1], tail[2:]
                if method == "GET" and tail == []:
                    doc = app.model_metadata(name)
                    if version is not None and version not in doc["versions"]:
                        raise _Problem(404, f"model {name!r} version {version!r} is not served")
                    return self._send(200, doc)
                if method == "GET" and tail == ["ready"]:
                    app.handle_for(name)
                    return self._send(200, {"name": name, "ready": True})
                if method == "POST" and tail == ["infer"]:
                    return self._send(200, app.infer(name, version, body))
            raise _Problem(404, f"no such endpoint: {method} {self.path}")
        except _Problem as exc:
            self._send(exc.status, {"error": str(exc)})
        except Exception as exc:  # the server keeps serving; the client learns it failed
            self._send(500, {"error": f"{type(exc).__name__}: {exc}"})

    def _body(self, limit: int) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            self.close_connection = True
            raise _Problem(411, "send a Content-Length (chunked bodies are not accepted)")
        length = self.headers.get("Content-Length")
        if length is None or not length.strip().isdigit():
            self.close_connection = True
            raise _Problem(411, "a POST needs a Content-Length")
        size = int(length)
        if size > limit:
            self.close_connection = True  # the unread body must not be taken for the next request
            raise _Problem(413, f"the body is {size} bytes; the limit is {limit}")
        return self.rfile.read(size)

    def do_GET(self):
        self._route("GET")

    def do_POST(self):
        self._route("POST")


def serve(models: list[str], *, root=None, host: str = "127.0.0.1", port: int = 8080, channel: str = "current",
          interval: float = 1.0, max_body: int = DEFAULT_MAX_BODY, report=print) -> None:
    """Serve until interrupted (Ctrl-C, SIGTERM)."""
    with InferenceServer(models, root=root, host=host, port=port, channel=channel, interval=interval,
                         max_body=max_body) as server:
        host, port = server.address
        served = ", ".join(f"{h.model} {h.get()[1].version}" for h in server._owned)
        report(f"serving {served} on http://{host}:{port}/v2 (channel {channel})")
        sys.stdout.flush()
        server.serve_forever()

