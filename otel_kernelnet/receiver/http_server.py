"""OTLP/HTTP receiver: ``POST /v1/traces``, protobuf or JSON, optionally gzip.

Replies as the OTLP/HTTP spec asks: 200 with an ``ExportTraceServiceResponse`` in the
request's encoding (partial success when spans were rejected); 400 with a
``google.rpc.Status`` naming the problem for a body that does not decode; 413 for a
body (or its decompressed form) over the limit; 415 for another media type or
content encoding; 503 with ``Retry-After`` when the forward queue is full
(retryable); 404/405/411 for a wrong path, method or a missing length. Each
connection has a read timeout, so a stalled client frees its thread.

Idle, the accept thread sleeps in ``select`` on the listening socket and a wake-up
pipe, without a timeout: ``stop()`` writes to the pipe (socketserver's
``serve_forever`` instead polls a shutdown flag every ``poll_interval``, 5 wake-ups a
second at the 0.2 s it had here).
"""

from __future__ import annotations

import json
import os
import selectors
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from google.protobuf import json_format
from google.rpc import status_pb2

from .ingest import Backpressure, BadRequest, Ingest, TooLarge

TRACES_PATH = "/v1/traces"
GRPC_INVALID_ARGUMENT, GRPC_RESOURCE_EXHAUSTED, GRPC_UNAVAILABLE = 3, 8, 14
MEDIA = {"application/x-protobuf": "protobuf", "application/protobuf": "protobuf", "application/json": "json"}


def gunzip_bounded(data: bytes, limit: int) -> bytes:
    """Decompress gzip, refusing (TooLarge) past ``limit`` bytes; BadRequest if corrupt.

    >>> import gzip; gunzip_bounded(gzip.compress(b"abc"), 10)
    b'abc'
    """
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(data, limit + 1)
    except zlib.error as e:
        raise BadRequest(f"body is not valid gzip: {e}") from None
    if len(out) > limit:
        raise TooLarge(f"decompressed request exceeds the limit of {limit} bytes")
    if not d.eof:
        raise BadRequest("gzip body is truncated")
    return out


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 10
    server: "_Server"

    def log_message(self, format, *args):  # noqa: A002 - stdlib signature
        pass

    def _send(self, code: int, ctype: str, body: bytes, extra: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _error(self, code: int, grpc_code: int, message: str, as_json: bool, close: bool = False,
               extra: dict[str, str] | None = None) -> None:
        if close:
            self.close_connection = True
            extra = {**(extra or {}), "Connection": "close"}
        if as_json:
            self._send(code, "application/json", json.dumps({"code": grpc_code, "message": message}).encode(), extra)
        else:
            self._send(code, "application/x-protobuf",
                       status_pb2.Status(code=grpc_code, message=message).SerializeToString(), extra)

    def do_POST(self) -> None:  # noqa: N802
        ingest = self.server.ingest
        ctype = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        encoding = MEDIA.get(ctype)
        as_json = encoding == "json"
        if self.path.split("?")[0] != TRACES_PATH:
            return self._error(404, 5, f"no such path {self.path!r}: OTLP traces go to {TRACES_PATH}", as_json, close=True)
        if encoding is None:
            return self._error(415, GRPC_INVALID_ARGUMENT,
                               f"unsupported Content-Type {ctype!r}: use application/x-protobuf or application/json",
                               False, close=True)
        cenc = self.headers.get("Content-Encoding", "identity").strip().lower()
        if cenc not in ("identity", "gzip", ""):
            return self._error(415, GRPC_INVALID_ARGUMENT, f"unsupported Content-Encoding {cenc!r}: use gzip or none",
                               as_json, close=True)
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked" or length is None:
            return self._error(411, GRPC_INVALID_ARGUMENT, "Content-Length is required", as_json, close=True)
        try:
            n = int(length)
            if n < 0:
                raise ValueError
        except ValueError:
            return self._error(400, GRPC_INVALID_ARGUMENT, f"bad Content-Length {length!r}", as_json, close=True)
        if n > ingest.max_bytes:
            ingest.count("too_large")
            # the body is not read: close the connection instead of draining it
            return self._error(413, GRPC_RESOURCE_EXHAUSTED,
                               f"request of {n} bytes exceeds the limit of {ingest.max_bytes} bytes", as_json, close=True)
        body = self.rfile.read(n)
        if len(body) < n:
            return self._error(400, GRPC_INVALID_ARGUMENT, "body shorter than Content-Length", as_json, close=True)
        try:
            if cenc == "gzip":
                try:
                    body = gunzip_bounded(body, ingest.max_bytes)
                except BadRequest:
                    ingest.count("bad_requests")
                    raise
                except TooLarge:
                    ingest.count("too_large")
                    raise
            req = ingest.decode(body, encoding)
            resp = ingest.accept(req)
        except BadRequest as e:
            return self._error(400, GRPC_INVALID_ARGUMENT, str(e), as_json)
        except TooLarge as e:
            return self._error(413, GRPC_RESOURCE_EXHAUSTED, str(e), as_json)
        except Backpressure as e:
            return self._error(503, GRPC_UNAVAILABLE, str(e), as_json, extra={"Retry-After": "1"})
        if as_json:
            out = json_format.MessageToDict(resp)
            self._send(200, "application/json", json.dumps(out).encode())
        else:
            self._send(200, "application/x-protobuf", resp.SerializeToString())

    def _not_allowed(self) -> None:
        self._error(405, GRPC_INVALID_ARGUMENT, f"method {self.command} not allowed: POST {TRACES_PATH}", False,
                    close=True, extra={"Allow": "POST"})

    do_GET = do_PUT = do_DELETE = do_PATCH = _not_allowed  # noqa: N815


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    ingest: Ingest

    def serve_until(self, wake_fd: int) -> None:
        """Accept and dispatch connections (one thread each) until ``wake_fd`` is readable.

        ``serve_forever`` without its poll: the select has no timeout, the stop
        request is the pipe becoming readable."""
        with selectors.DefaultSelector() as sel:
            sel.register(self, selectors.EVENT_READ)
            sel.register(wake_fd, selectors.EVENT_READ)
            while True:
                ready = [key.fileobj for key, _ in sel.select()]
                if wake_fd in ready:
                    return
                self._handle_request_noblock()  # what serve_forever does per ready accept


class HttpReceiver:
    """OTLP/HTTP on ``host:port`` (port 0: any free one; see ``port`` after ``start``)."""

    def __init__(self, ingest: Ingest, host: str, port: int):
        self.ingest = ingest
        self.host, self.port = host, port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._wake: tuple[int, int] | None = None  # the stop pipe: (read end, write end)

    def start(self) -> None:
        """Bind and serve in a thread; OSError (e.g. address in use) propagates."""
        srv = _Server((self.host, self.port), _Handler)
        srv.ingest = self.ingest
        self._server = srv
        self.port = srv.server_address[1]
        self._wake = os.pipe()
        self._thread = threading.Thread(target=srv.serve_until, args=(self._wake[0],),
                                        name="kernelnet-otlp-http", daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}{TRACES_PATH}"

    def stop(self) -> None:
        """Stop accepting (at once: the pipe ends the select), close the listening socket.
        Connections being served finish on their own (daemon threads, read timeout)."""
        srv, self._server = self._server, None
        wake, self._wake = self._wake, None
        if wake is not None:
            os.write(wake[1], b"x")
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        if srv is not None:
            srv.server_close()
        if wake is not None:
            os.close(wake[0])
            os.close(wake[1])
