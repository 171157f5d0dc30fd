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
Threaded (a thread per connection), HTTP/1.1 keep-alive; binds 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import json
import socket
import socketserver
import sys
from typing import Any, Callable

from .errors import InvalidInputError

DEFAULT_MAX_BODY = 64 << 20


class _Problem(Exception):
    def __init__(self, status: int, message: str, *, close: bool = False):
        super().__init__(message)
        self.status = status
        self.close = close  # the connection cannot carry another request


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
        self._served: dict = {}  # handle -> oip.Served of the model it served last
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

    def served(self, handle) -> tuple[Any, Any]:
        """(oip.Served, resolved) of the handle's version: one pair, read at once; the Served
        wrapper is made once per loaded model, not per request."""
        from . import oip

        model, active = handle.get()  # once: the whole answer comes from this version
        cached = self._served.get(handle)
        if cached is None or cached.model is not model:
            cached = oip.Served(model)
            self._served[handle] = cached  # one assignment: a racing request makes its own, equal one
        return cached, active

    def model_metadata(self, name: str) -> dict:
        handle = self.handle_for(name)
        served, active = self.served(handle)
        doc = {"name": name, "versions": [active.version], **served.metadata,
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
            served, active = self.served(handle)
            if version is not None and version != active.version:
                raise _Problem(404, f"model {name!r} version {version!r} is not served (serving {active.version})")
            outputs = served.infer(inputs, wanted)  # only what was asked for, where that saves work
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


class _HTTPServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


_REASONS = {100: "Continue", 200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            411: "Length Required", 413: "Content Too Large", 414: "URI Too Long",
            431: "Request Header Fields Too Large", 500: "Internal Server Error"}
_MAX_LINE = 65536  # a request line or one header line
_MAX_HEADERS = 100
_date_cache = [0, ""]


def _http_date() -> str:
    """The Date header, formatted once a second rather than once a request."""
    import time

    now = int(time.time())
    if _date_cache[0] != now:
        from email.utils import formatdate

        _date_cache[1] = formatdate(now, usegmt=True)
        _date_cache[0] = now
    return _date_cache[1]


class _Handler(socketserver.StreamRequestHandler):
    """HTTP/1.1 with keep-alive, only as much of it as the protocol's JSON endpoints need.

    Not ``http.server.BaseHTTPRequestHandler``: its header parsing goes through the email
    package and its response through several small writes, which together cost more than the
    whole infer computation of a small scikit-learn model. Here a request is its request line,
    header lines split once on ':' and a ``Content-Length`` body; the response is one
    ``sendall`` of status line, headers and body, with Nagle off (as two small writes, the
    second waited for the client's delayed ACK: 40 ms a request on Linux).
    """

    def setup(self):
        super().setup()
        try:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass

    def handle(self):
        app: InferenceServer = self.server.app
        try:
            while self._one(app):
                pass
        except (ConnectionError, TimeoutError):
            pass  # the client went away

    def _one(self, app: "InferenceServer") -> bool:
        """Answer one request; whether the connection stays open for the next."""
        rfile = self.rfile
        line = rfile.readline(_MAX_LINE + 1)
        while line in (b"\r\n", b"\n"):  # empty lines before a request line are ignored (RFC 9112)
            line = rfile.readline(_MAX_LINE + 1)
        if not line:
            return False
        if len(line) > _MAX_LINE:
            return self._send(414, {"error": "the request line is too long"}, False)
        parts = line.split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            return self._send(400, {"error": "not an HTTP/1.x request line"}, False)
        method, target, version = parts
        headers: dict[bytes, bytes] = {}
        for _ in range(_MAX_HEADERS + 1):
            header = rfile.readline(_MAX_LINE + 1)
            if header in (b"\r\n", b"\n", b""):
                break
            if len(header) > _MAX_LINE:
                return self._send(431, {"error": "a header line is too long"}, False)
            name, colon, value = header.partition(b":")
            if not colon:
                return self._send(400, {"error": "a header line without ':'"}, False)
            name, value = name.strip().lower(), value.strip()
            if name in headers and (name == b"content-length" and headers[name] != value):
                return self._send(400, {"error": "two different Content-Length headers"}, False)
            headers[name] = value
        else:
            return self._send(431, {"error": f"more than {_MAX_HEADERS} headers"}, False)
        connection = headers.get(b"connection", b"").lower()
        keep = b"close" not in connection if version == b"HTTP/1.1" else b"keep-alive" in connection
        path = target.decode("latin-1")
        try:
            if method == b"POST":
                body = self._body(headers, app.max_body)
                if body is None:
                    return False  # the client closed before its whole body arrived
                return self._send(200, self._post(app, path, body), keep)
            if method != b"GET":
                raise _Problem(405, f"method {method.decode('latin-1')!r} is not served (GET and POST are)",
                               close=True)  # nor is its body read
            if headers.get(b"content-length", b"0") != b"0" or b"transfer-encoding" in headers:
                keep = False  # a body this server will not read must not be taken for the next request
            return self._send(200, self._get(app, path), keep)
        except _Problem as exc:
            return self._send(exc.status, {"error": str(exc)}, keep and not exc.close)
        except Exception as exc:  # the server keeps serving; the client learns it failed
            return self._send(500, {"error": f"{type(exc).__name__}: {exc}"}, keep)

    def _send(self, status: int, document: dict, keep: bool) -> bool:
        body = json.dumps(document, separators=(",", ":")).encode("utf-8")
        head = (f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\nServer: gaia-cas\r\nDate: {_http_date()}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                f"{'Connection: keep-alive' if keep else 'Connection: close'}\r\n\r\n")
        self.connection.sendall(head.encode("latin-1") + body)
        return keep

    def _body(self, headers: dict, limit: int) -> bytes | None:
        if b"transfer-encoding" in headers:
            raise _Problem(411, "send a Content-Length (chunked bodies are not accepted)", close=True)
        length = headers.get(b"content-length")
        if length is None or not length.isdigit():
            raise _Problem(411, "a POST needs a Content-Length", close=True)
        size = int(length)
        if size > limit:  # the unread body must not be taken for the next request: close
            raise _Problem(413, f"the body is {size} bytes; the limit is {limit}", close=True)
        if headers.get(b"expect", b"").lower() == b"100-continue":
            # the client (curl, for any body over 1 KiB) waits for it before sending the body
            self.connection.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = self.rfile.read(size)
        return body if len(body) == size else None

    @staticmethod
    def _parts(path: str) -> list[str]:
        parts = [p for p in path.split("?", 1)[0].split("/") if p]
        if parts[:1] != ["v2"]:
            raise _Problem(404, f"no such endpoint: {path}")
        return parts[1:]

    def _get(self, app: "InferenceServer", path: str) -> dict:
        rest = self._parts(path)
        if rest == []:
            from . import __version__

            return {"name": "gaia-cas", "version": __version__, "extensions": []}
        if rest == ["health", "live"]:
            return {"live": True}
        if rest == ["health", "ready"]:
            return {"ready": True}  # every handle serves a loaded version
        if len(rest) >= 2 and rest[0] == "models":
            name, version, tail = _model_path(rest)
            if tail == []:
                doc = app.model_metadata(name)
                if version is not None and version not in doc["versions"]:
                    raise _Problem(404, f"model {name!r} version {version!r} is not served")
                return doc
            if tail == ["ready"]:
                app.handle_for(name)
                return {"name": name, "ready": True}
        raise _Problem(404, f"no such endpoint: GET {path}")

    def _post(self, app: "InferenceServer", path: str, body: bytes) -> dict:
        rest = self._parts(path)
        if len(rest) >= 2 and rest[0] == "models":
            name, version, tail = _model_path(rest)
            if tail == ["infer"]:
                return app.infer(name, version, body)
        raise _Problem(404, f"no such endpoint: POST {path}")


def _model_path(rest: list[str]) -> tuple[str, str | None, list[str]]:
    """models/{name}[/versions/{v}]/... -> (name, version or None, what follows)."""
    name, tail = rest[1], rest[2:]
    version = None
    if len(tail) >= 2 and tail[0] == "versions":
        version, tail = tail[1], tail[2:]
    return name, version, tail


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

