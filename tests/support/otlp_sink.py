"""In-process OTLP trace receiver for tests.

``OtlpSink`` listens on 127.0.0.1 only, on two free ports chosen by the kernel:

* OTLP/gRPC: ``opentelemetry.proto.collector.trace.v1.TraceService/Export``
  (grpcio; gzip request compression is handled by grpc itself);
* OTLP/HTTP: ``POST /v1/traces`` (stdlib ``ThreadingHTTPServer``) with
  ``Content-Type: application/x-protobuf`` or ``application/json`` (OTLP/JSON:
  hex ids, integer enums, 64-bit integers as strings or numbers), optionally
  ``Content-Encoding: gzip``. Replies as the OTLP spec asks: 200 with an
  ``ExportTraceServiceResponse`` in the request's encoding; 400 with a
  ``google.rpc.Status`` for a body that does not decode; 415 for other media
  types; 404 for other paths.

Every received span is flattened to a plain dict (see ``flatten_request``) so
tests can assert with ``==`` on python values::

    with OtlpSink() as sink:
        exporter = OTLPSpanExporter(endpoint=sink.grpc_endpoint)
        ...
        [span] = sink.wait_for(lambda spans: len(spans) >= 1, timeout=5)
        assert span["trace_id"] == "0af7651916cd43dd8448eb211c80319c"

``wait_for`` blocks on a condition variable that every export notifies; it
never polls with sleeps.
"""

from __future__ import annotations

import base64
import gzip
import json
import threading
import zlib
from collections import Counter
from concurrent import futures
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

import grpc
from google.protobuf import json_format
from google.rpc import status_pb2
from opentelemetry.proto.collector.trace.v1 import (
    trace_service_pb2,
    trace_service_pb2_grpc,
)
from opentelemetry.proto.common.v1 import common_pb2

__all__ = ["OtlpSink", "flatten_request", "otlp_json_to_request", "any_value"]

LOOPBACK = "127.0.0.1"
TRACES_PATH = "/v1/traces"
TRANSPORTS = ("grpc", "http-protobuf", "http-json")

# Largest request body the HTTP endpoint accepts (after decompression); well
# above anything a test sends, and it keeps a broken client from eating memory.
MAX_BODY_BYTES = 64 * 1024 * 1024

Span = dict[str, Any]
Predicate = Callable[[list[Span]], bool]


# --------------------------------------------------------------------------- decoding


def any_value(value: common_pb2.AnyValue) -> Any:
    """Convert an OTLP ``AnyValue`` to the python value it carries.

    string/bool/int/double/bytes map to str/bool/int/float/bytes, ``arrayValue``
    to a list and ``kvlistValue`` to a dict; an empty AnyValue maps to None.
    """
    which = value.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, which)


def _attributes(kvs) -> dict[str, Any]:
    return {kv.key: any_value(kv.value) for kv in kvs}


def _hex_or_none(raw: bytes) -> str | None:
    return raw.hex() if raw else None


def flatten_request(
    request: trace_service_pb2.ExportTraceServiceRequest, transport: str
) -> list[Span]:
    """Flatten every span of an export request into a plain dict.

    Keys: ``trace_id``, ``span_id`` (lower-case hex), ``parent_span_id`` (hex,
    None for a root), ``trace_state``, ``flags``, ``name``, ``kind`` (the OTLP
    integer: 0 unspecified, 1 internal, 2 server, 3 client, 4 producer,
    5 consumer), ``start_ns``, ``end_ns``, ``attributes`` ({key: python value}),
    ``status_code`` (0 unset, 1 ok, 2 error), ``status_message``, ``events``
    ([{name, time_ns, attributes}]), ``links`` ([{trace_id, span_id,
    trace_state, flags, attributes}]), ``resource`` (the resource's attributes
    as a dict), ``scope`` (scope name), ``scope_version`` and ``transport``.
    """
    out: list[Span] = []
    for rs in request.resource_spans:
        resource = _attributes(rs.resource.attributes)
        for ss in rs.scope_spans:
            for s in ss.spans:
                out.append(
                    {
                        "trace_id": s.trace_id.hex(),
                        "span_id": s.span_id.hex(),
                        "parent_span_id": _hex_or_none(s.parent_span_id),
                        "trace_state": s.trace_state,
                        "flags": s.flags,
                        "name": s.name,
                        "kind": int(s.kind),
                        "start_ns": s.start_time_unix_nano,
                        "end_ns": s.end_time_unix_nano,
                        "attributes": _attributes(s.attributes),
                        "status_code": int(s.status.code),
                        "status_message": s.status.message,
                        "events": [
                            {
                                "name": e.name,
                                "time_ns": e.time_unix_nano,
                                "attributes": _attributes(e.attributes),
                            }
                            for e in s.events
                        ],
                        "links": [
                            {
                                "trace_id": link.trace_id.hex(),
                                "span_id": link.span_id.hex(),
                                "trace_state": link.trace_state,
                                "flags": link.flags,
                                "attributes": _attributes(link.attributes),
                            }
                            for link in s.links
                        ],
                        "resource": dict(resource),
                        "scope": ss.scope.name,
                        "scope_version": ss.scope.version,
                        "transport": transport,
                    }
                )
    return out


_ID_KEYS = ("traceId", "spanId", "parentSpanId")


def _hex_ids_to_base64(node: Any) -> Any:
    """Rewrite OTLP/JSON hex ids to the base64 that protobuf's JSON parser expects.

    Only the id keys of spans and links are touched; they are the only
    ``bytes`` fields in OTLP/JSON that are hex rather than base64
    (``bytesValue`` in an AnyValue stays base64, as the spec says).
    """
    if isinstance(node, list):
        return [_hex_ids_to_base64(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key in _ID_KEYS and isinstance(value, str):
            try:
                raw = bytes.fromhex(value)
            except ValueError as exc:
                raise ValueError(f"{key} is not hex: {value!r}") from exc
            out[key] = base64.b64encode(raw).decode("ascii")
        elif key == "value":
            # AnyValue: never contains ids, keep bytesValue untouched
            out[key] = value
        else:
            out[key] = _hex_ids_to_base64(value)
    return out


def otlp_json_to_request(body: bytes) -> trace_service_pb2.ExportTraceServiceRequest:
    """Parse an OTLP/JSON body; raises ValueError when it is not valid OTLP/JSON."""
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"body is not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise ValueError("OTLP/JSON body must be an object")
    request = trace_service_pb2.ExportTraceServiceRequest()
    try:
        json_format.ParseDict(_hex_ids_to_base64(doc), request, ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        raise ValueError(str(exc)) from exc
    return request


# --------------------------------------------------------------------------- sink


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, sink: "OtlpSink"):
        self._sink = sink

    def Export(self, request, context):  # noqa: N802 (grpc method name)
        metadata = {k: v for k, v in context.invocation_metadata()}
        self._sink._record(request, "grpc", metadata)
        return trace_service_pb2.ExportTraceServiceResponse()


class _HttpHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the SDK's requests.Session
    timeout = 10  # an idle keep-alive connection frees its thread after this
    server: "_HttpServer"

    def log_message(self, format, *args):  # noqa: A002 (stdlib signature)
        pass  # keep pytest output clean; the sink records what matters

    def _reply(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _reply_error(self, status: int, message: str, as_json: bool) -> None:
        self.server.sink._record_error(f"{status} {message}")
        if as_json:
            body = json.dumps({"code": 3, "message": message}).encode()
            self._reply(status, "application/json", body)
        else:
            body = status_pb2.Status(code=3, message=message).SerializeToString()
            self._reply(status, "application/x-protobuf", body)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            total = 0
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                total += size
                if total > MAX_BODY_BYTES:
                    raise ValueError("body too large")
                chunks.append(self.rfile.read(size))
                self.rfile.readline()  # CRLF after each chunk
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            raise ValueError("body too large")
        return self.rfile.read(length)

    def do_POST(self):  # noqa: N802 (stdlib name)
        media_type = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        as_json = media_type == "application/json"
        try:
            body = self._read_body()
        except ValueError as exc:
            self.close_connection = True
            self._reply_error(HTTPStatus.BAD_REQUEST, str(exc), as_json)
            return
        path = self.path.split("?")[0]
        if path != TRACES_PATH:
            self._reply_error(HTTPStatus.NOT_FOUND, f"no handler for {path}", as_json)
            return
        if media_type not in ("application/x-protobuf", "application/json"):
            self._reply_error(
                HTTPStatus.UNSUPPORTED_MEDIA_TYPE, f"unsupported Content-Type {media_type!r}", False
            )
            return
        encoding = self.headers.get("Content-Encoding", "identity").strip().lower()
        try:
            if encoding == "gzip":
                body = _gunzip(body)
            elif encoding not in ("", "identity"):
                raise ValueError(f"unsupported Content-Encoding {encoding!r}")
            if as_json:
                request = otlp_json_to_request(body)
            else:
                request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
        except Exception as exc:  # any decode failure is the client's fault: 400
            self._reply_error(HTTPStatus.BAD_REQUEST, f"cannot decode body: {exc}", as_json)
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        self.server.sink._record(request, "http-json" if as_json else "http-protobuf", headers)
        if as_json:
            self._reply(HTTPStatus.OK, "application/json", b"{}")
        else:
            response = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            self._reply(HTTPStatus.OK, "application/x-protobuf", response)


def _gunzip(body: bytes) -> bytes:
    decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
    out = decompressor.decompress(body, MAX_BODY_BYTES)
    if decompressor.unconsumed_tail:
        raise ValueError("body too large after decompression")
    if not decompressor.eof:
        raise gzip.BadGzipFile("truncated gzip stream")
    return out


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = False

    def __init__(self, sink: "OtlpSink"):
        self.sink = sink
        super().__init__((LOOPBACK, 0), _HttpHandler)


class OtlpSink:
    """OTLP trace receiver (gRPC + HTTP) on 127.0.0.1, for tests.

    Use as a context manager, or call ``start()`` / ``stop()``. Thread-safe.

    Attributes after ``start()``: ``grpc_port``, ``http_port``, ``grpc_endpoint``
    (``http://127.0.0.1:PORT``, what ``OTLPSpanExporter`` (gRPC) takes) and
    ``http_endpoint`` (``http://127.0.0.1:PORT/v1/traces``, the full URL the
    HTTP exporter takes). ``requests`` counts accepted export requests and
    ``requests_by_transport`` splits that count by transport.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._spans: list[Span] = []
        self._raw: list[tuple[str, trace_service_pb2.ExportTraceServiceRequest]] = []
        self._metadata: list[tuple[str, dict[str, str]]] = []
        self._errors: list[str] = []
        self._counts: Counter[str] = Counter()
        self._grpc_server: grpc.Server | None = None
        self._http_server: _HttpServer | None = None
        self._http_thread: threading.Thread | None = None
        self.grpc_port = 0
        self.http_port = 0

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> "OtlpSink":
        if self._grpc_server is not None:
            raise RuntimeError("OtlpSink already started")
        try:
            server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
            trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceService(self), server)
            self.grpc_port = server.add_insecure_port(f"{LOOPBACK}:0")
            if not self.grpc_port:
                raise RuntimeError("grpc could not bind 127.0.0.1:0")
            server.start()
            self._grpc_server = server

            self._http_server = _HttpServer(self)
            self.http_port = self._http_server.server_address[1]
            self._http_thread = threading.Thread(
                target=self._http_server.serve_forever,
                kwargs={"poll_interval": 0.1},
                name=f"otlp-sink-http-{self.http_port}",
                daemon=True,
            )
            self._http_thread.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self._http_server is not None:
            if self._http_thread is not None and self._http_thread.is_alive():
                self._http_server.shutdown()
                self._http_thread.join(timeout=5)
            self._http_server.server_close()
            self._http_server = None
            self._http_thread = None
        if self._grpc_server is not None:
            self._grpc_server.stop(grace=None).wait(timeout=5)
            self._grpc_server = None

    def __enter__(self) -> "OtlpSink":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # ------------------------------------------------------------------ endpoints

    @property
    def grpc_endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.grpc_port}"

    @property
    def http_endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.http_port}{TRACES_PATH}"

    # ------------------------------------------------------------------ recording

    def _record(self, request, transport: str, metadata: dict[str, str]) -> None:
        spans = flatten_request(request, transport)
        copy = trace_service_pb2.ExportTraceServiceRequest()
        copy.CopyFrom(request)
        with self._cond:
            self._spans.extend(spans)
            self._raw.append((transport, copy))
            self._metadata.append((transport, metadata))
            self._counts[transport] += 1
            self._cond.notify_all()

    def _record_error(self, message: str) -> None:
        with self._cond:
            self._errors.append(message)
            self._cond.notify_all()

    # ------------------------------------------------------------------ queries

    def spans(self) -> list[Span]:
        """A snapshot (a new list) of every span received so far, in arrival order."""
        with self._cond:
            return list(self._spans)

    def export_requests(self) -> list[tuple[str, trace_service_pb2.ExportTraceServiceRequest]]:
        """(transport, request) for every accepted export, for assertions on raw OTLP."""
        with self._cond:
            return list(self._raw)

    def request_metadata(self) -> list[tuple[str, dict[str, str]]]:
        """(transport, headers or gRPC metadata, keys lower-case) per accepted export."""
        with self._cond:
            return list(self._metadata)

    @property
    def errors(self) -> list[str]:
        """HTTP requests the sink rejected ("<status> <reason>"), in order."""
        with self._cond:
            return list(self._errors)

    @property
    def requests(self) -> int:
        """Number of accepted export requests over all transports."""
        with self._cond:
            return sum(self._counts.values())

    @property
    def requests_by_transport(self) -> dict[str, int]:
        """Accepted export requests per transport: keys ``grpc``, ``http-protobuf``, ``http-json``."""
        with self._cond:
            return {t: self._counts[t] for t in TRANSPORTS}

    def clear(self) -> None:
        """Forget everything received so far (counters included)."""
        with self._cond:
            self._spans.clear()
            self._raw.clear()
            self._metadata.clear()
            self._errors.clear()
            self._counts.clear()

    def wait_for(self, predicate: Predicate, timeout: float) -> list[Span]:
        """Block until ``predicate(spans)`` is true; return that snapshot of spans.

        The predicate is evaluated now and again after every received export,
        under the sink's lock, on a snapshot list. Raises ``TimeoutError``
        carrying a summary of what did arrive when ``timeout`` seconds pass first.
        """
        snapshot: list[Span] = []

        def check() -> bool:
            nonlocal snapshot
            snapshot = list(self._spans)
            return bool(predicate(snapshot))

        with self._cond:
            if self._cond.wait_for(check, timeout=timeout):
                return snapshot
            summary = self._summary_locked()
        raise TimeoutError(f"OtlpSink: predicate still false after {timeout} s; {summary}")

    def _summary_locked(self) -> str:
        counts = ", ".join(f"{t}={self._counts[t]}" for t in TRANSPORTS)
        names = Counter(s["name"] for s in self._spans)
        shown = ", ".join(f"{name!r} x{n}" for name, n in names.most_common(20))
        more = f" (+{len(names) - 20} more names)" if len(names) > 20 else ""
        errors = f"; rejected: {self._errors[-5:]}" if self._errors else ""
        return (
            f"received {len(self._spans)} span(s) in {sum(self._counts.values())} request(s) "
            f"[{counts}]; names: {shown or '-'}{more}{errors}"
        )

    def summary(self) -> str:
        """One line describing what arrived (also used in TimeoutError messages)."""
        with self._cond:
            return self._summary_locked()
