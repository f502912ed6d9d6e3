"""What both OTLP transports share: decode, validate, index for the join, forward.

``Ingest.decode`` turns a request body into an ``ExportTraceServiceRequest`` or raises
``BadRequest`` (a one-line message the client sees); ``Ingest.accept`` removes spans
with invalid ids (reported as OTLP partial success), hands the spans carrying a
cookie or a 4-tuple, or coming from a resource with ``process.pid`` (the reclaim
join by task), to the join, and queues the request for forwarding, or raises
``Backpressure`` when the forward queue is full (the transports answer with a
retryable status, so the application's SDK retries later: never blocked, never told
"ok" for spans that are lost).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any, Callable

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from .. import semconv as sc
from ..join import AppSpan, TupleKey

Request = trace_service_pb2.ExportTraceServiceRequest
Response = trace_service_pb2.ExportTraceServiceResponse

SPAN_KIND_SERVER = 2
MAX_JSON_DEPTH = 64  # nesting deeper than this is refused before parsing (no recursion blow-up)


class BadRequest(Exception):
    """The body is not a valid OTLP request (HTTP 400 / gRPC INVALID_ARGUMENT)."""


class TooLarge(Exception):
    """The body exceeds the configured limit (HTTP 413 / gRPC RESOURCE_EXHAUSTED)."""


class Backpressure(Exception):
    """The forward queue is full; the client should retry (HTTP 503 / gRPC UNAVAILABLE)."""


@dataclass
class IngestStats:
    requests: int = 0  # accepted export requests
    spans: int = 0  # spans accepted
    rejected_spans: int = 0  # spans with invalid ids, reported back as partial success
    bad_requests: int = 0  # bodies that did not decode
    too_large: int = 0  # bodies over the limit
    backpressure: int = 0  # requests refused (retryable) because the forward queue was full
    backpressure_spans: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


# --- decoding -------------------------------------------------------------------------
_ID_KEYS = ("traceId", "spanId", "parentSpanId")


def _depth_ok(node: Any, limit: int) -> bool:
    stack = [(node, 1)]
    while stack:
        n, d = stack.pop()
        if d > limit:
            return False
        if isinstance(n, dict):
            stack.extend((v, d + 1) for v in n.values())
        elif isinstance(n, list):
            stack.extend((v, d + 1) for v in n)
    return True


def _ids_hex_to_base64(node: Any) -> Any:
    """OTLP/JSON writes trace/span ids as hex; protobuf's JSON parser wants base64.

    Only ``traceId``/``spanId``/``parentSpanId`` keys outside attribute values are
    rewritten (``bytesValue`` inside an AnyValue stays base64, as OTLP says).
    """
    import base64
    if isinstance(node, list):
        return [_ids_hex_to_base64(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for k, v in node.items():
        if k in _ID_KEYS and isinstance(v, str):
            try:
                raw = bytes.fromhex(v)
            except ValueError:
                raise BadRequest(f"{k} is not hex: {v[:40]!r}") from None
            out[k] = base64.b64encode(raw).decode()
        elif k in ("value", "attributes") and isinstance(v, (dict, list)):
            out[k] = v  # AnyValue / attribute lists carry no ids
        else:
            out[k] = _ids_hex_to_base64(v)
    return out


def decode_protobuf(body: bytes) -> Request:
    req = Request()
    try:
        req.ParseFromString(body)
    except (DecodeError, RuntimeError, ValueError) as e:  # RuntimeError: recursion limit in the parser
        raise BadRequest(f"body is not an OTLP ExportTraceServiceRequest protobuf: {e}") from None
    return req


def decode_json(body: bytes) -> Request:
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise BadRequest(f"body is not JSON: {str(e)[:200]}") from None
    if not isinstance(doc, dict):
        raise BadRequest("OTLP/JSON body must be a JSON object")
    if not _depth_ok(doc, MAX_JSON_DEPTH):
        raise BadRequest(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    req = Request()
    try:
        json_format.ParseDict(_ids_hex_to_base64(doc), req, ignore_unknown_fields=True)
    except BadRequest:
        raise
    except (json_format.ParseError, ValueError, TypeError, RecursionError) as e:
        raise BadRequest(f"body is not OTLP/JSON: {str(e)[:300]}") from None
    return req


# --- what the join needs of an app span -------------------------------------------------
def _scalar(v: Any) -> Any:
    which = v.WhichOneof("value")
    return getattr(v, which) if which in ("string_value", "int_value", "double_value", "bool_value") else None


def _as_port(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v if 0 < v < 65536 else None
    if isinstance(v, str) and v.isdigit():
        return _as_port(int(v))
    return None


def cookie_value(v: Any) -> int | None:
    """The cookie as an int: an intValue, or a decimal string (JavaScript has no u64).

    >>> cookie_value(4097), cookie_value("18446744073709551615"), cookie_value("x"), cookie_value(0)
    (4097, 18446744073709551615, None, None)
    """
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        c = v & 0xFFFF_FFFF_FFFF_FFFF  # a u64 stamped through a signed int64 attribute
        return c or None
    if isinstance(v, str) and v.isdigit() and len(v) <= 20:
        c = int(v)
        return c if 0 < c < 1 << 64 else None
    return None


def _as_id(v: Any) -> int | None:
    """A pid / thread id: a positive int (or decimal string)."""
    if isinstance(v, bool):
        return None
    if isinstance(v, str) and v.isdigit() and len(v) <= 10:
        v = int(v)
    return v if isinstance(v, int) and 0 < v < 1 << 32 else None


def resource_pid(resource: Any) -> int | None:
    """``process.pid`` of an OTLP resource (the OTel process resource detector sets it)."""
    for kv in resource.attributes:
        if kv.key == "process.pid":
            return _as_id(_scalar(kv.value))
    return None


def app_span_of(span: Any, pid: int | None = None) -> AppSpan:
    """The join's view of one OTLP span: cookie, else the 4-tuple (peer addr, peer port, local port);
    the process (``pid``: its resource's ``process.pid``, unless the span has its own) and
    ``thread.id`` for the reclaim join."""
    attrs = {}
    for kv in span.attributes:
        if kv.key in _WANTED:
            attrs[kv.key] = _scalar(kv.value)
    cookie = cookie_value(attrs.get(sc.COOKIE))
    tup: TupleKey | None = None
    if cookie is None:
        peer = attrs.get("network.peer.address") or attrs.get("client.address")
        peer_port = _as_port(attrs.get("network.peer.port", attrs.get("client.port")))
        local_port = _as_port(attrs.get("network.local.port"))
        if local_port is None and span.kind == SPAN_KIND_SERVER:
            local_port = _as_port(attrs.get("server.port"))
        if isinstance(peer, str) and peer and peer_port and local_port:
            tup = (peer, peer_port, local_port)
    own_pid = _as_id(attrs.get("process.pid"))
    return AppSpan(bytes(span.trace_id), bytes(span.span_id), int(span.start_time_unix_nano),
                   int(span.end_time_unix_nano), cookie, tup, span.name,
                   own_pid if own_pid is not None else pid, _as_id(attrs.get("thread.id")))


_WANTED = frozenset((sc.COOKIE, "network.peer.address", "network.peer.port", "network.local.port",
                     "client.address", "client.port", "server.port", "process.pid", "thread.id"))


def _valid_ids(span: Any) -> bool:
    return len(span.trace_id) == 16 and any(span.trace_id) and len(span.span_id) == 8 and any(span.span_id)


# --- the ingest ---------------------------------------------------------------------------
class Ingest:
    """Decode -> validate -> join index -> forward queue. Thread-safe."""

    def __init__(self, max_bytes: int, forward: Callable[[Request, int], bool] | None = None,
                 add_app_spans: Callable[[list[AppSpan]], None] | None = None):
        self.max_bytes = max_bytes
        self._forward = forward
        self._add_app_spans = add_app_spans
        self._lock = threading.Lock()
        self.stats = IngestStats()

    def count(self, field: str, n: int = 1) -> None:
        with self._lock:
            setattr(self.stats, field, getattr(self.stats, field) + n)

    def decode(self, body: bytes, encoding: str) -> Request:
        """``encoding``: "protobuf" or "json". Raises BadRequest / TooLarge (and counts)."""
        if len(body) > self.max_bytes:
            self.count("too_large")
            raise TooLarge(f"request of {len(body)} bytes exceeds the limit of {self.max_bytes} bytes")
        try:
            return decode_json(body) if encoding == "json" else decode_protobuf(body)
        except BadRequest:
            self.count("bad_requests")
            raise

    def accept(self, req: Request) -> Response:
        """Index and forward; the OTLP response (with partial success for rejected spans)."""
        rejected, app, total = 0, [], 0
        for rs in req.resource_spans:
            pid = resource_pid(rs.resource)
            for ss in rs.scope_spans:
                bad = [s for s in ss.spans if not _valid_ids(s)]
                if bad:
                    rejected += len(bad)
                    keep = [s for s in ss.spans if _valid_ids(s)]
                    del ss.spans[:]
                    ss.spans.extend(keep)
                for s in ss.spans:
                    total += 1
                    a = app_span_of(s, pid)
                    if a.cookie is not None or a.tuple_key is not None or a.pid is not None:
                        app.append(a)
        if total and self._forward is not None and not self._forward(req, total):
            with self._lock:
                self.stats.backpressure += 1
                self.stats.backpressure_spans += total
            raise Backpressure("forward queue full: retry later")
        if app and self._add_app_spans is not None:
            self._add_app_spans(app)
        with self._lock:
            self.stats.requests += 1
            self.stats.spans += total
            self.stats.rejected_spans += rejected
        resp = Response()
        if rejected:
            resp.partial_success.rejected_spans = rejected
            resp.partial_success.error_message = (
                f"{rejected} span(s) rejected: trace_id must be 16 and span_id 8 non-zero bytes")
        return resp
