"""Forwarding application spans unchanged: to the OTLP backend, or into the embedded store.

The receiver hands each accepted ``ExportTraceServiceRequest`` to ``Forwarder.submit``,
which never blocks: the request joins a bounded queue (by span count) or, when the
queue is full, ``submit`` returns False and the receiver answers with a retryable
status (counted in the receiver's ``backpressure``). One thread delivers the queue in
order through a target:

- ``GrpcTarget`` / ``HttpTarget``: the request as received (same bytes), to the
  backend kernel spans go to (same endpoint resolution, ``OTEL_EXPORTER_OTLP_HEADERS``
  honoured). A retryable failure (gRPC UNAVAILABLE, DEADLINE_EXCEEDED,
  RESOURCE_EXHAUSTED, ABORTED; HTTP 429/502/503/504; connection errors) is retried
  with exponential backoff up to ``max_attempts``; then, or on a permanent error, the
  request's spans are dropped and counted (``failed_spans``).
- ``StoreTarget``: one OTLP JSON Lines record per request in the embedded store,
  beside the kernel spans (``JsonLinesSink.write_line``).

While a delivery is being retried the queue keeps filling; it is bounded, so a
backend that is down costs memory only up to ``max_spans``.
"""

from __future__ import annotations

import base64
import json
import math
import os
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol
from urllib.parse import unquote, urlparse

from google.protobuf import descriptor
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

Request = trace_service_pb2.ExportTraceServiceRequest


class Retryable(Exception):
    """Delivery failed in a way worth retrying."""


class Permanent(Exception):
    """Delivery failed and retrying will not help."""


class Target(Protocol):
    description: str

    def deliver(self, req: Request) -> None:
        """Raise Retryable or Permanent on failure."""

    def close(self) -> None: ...


def otlp_headers(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """OTEL_EXPORTER_OTLP_(TRACES_)HEADERS: ``k=v,k2=v2`` (values URL-encoded).

    >>> otlp_headers({"OTEL_EXPORTER_OTLP_HEADERS": "api-key=a%20b, x=1"})
    {'api-key': 'a b', 'x': '1'}
    """
    raw = environ.get("OTEL_EXPORTER_OTLP_TRACES_HEADERS") or environ.get("OTEL_EXPORTER_OTLP_HEADERS") or ""
    out = {}
    for part in raw.split(","):
        k, sep, v = part.partition("=")
        if sep and k.strip():
            out[k.strip().lower()] = unquote(v.strip())
    return out


# --- JSON for the store ---------------------------------------------------------------
# What protobuf's json_format.MessageToDict(req, use_integers_for_enums=True) gives,
# with the span and link ids as hex (OTLP JSON), made by walking each message's set
# fields (``ListFields``, as json_format does) with one converter per field cached:
# json_format checks every value's field kind on the way, ~5x the time, and an
# application's spans pass through here whenever the store is the destination.
# Anything json_format treats specially that OTLP traces do not use (maps, well-known
# types, float fields, extensions) takes json_format itself (``_reference_doc``);
# tests/unit/test_receiver_forward.py compares the two on generated requests.
_IDS = frozenset(("traceId", "spanId", "parentSpanId"))
_FD = descriptor.FieldDescriptor
_INT64 = frozenset((_FD.CPPTYPE_INT64, _FD.CPPTYPE_UINT64))
_FIELD_JSON: dict[Any, tuple[str, Callable[[Any], Any] | None, bool]] = {}


class _Unsupported(Exception):
    pass


def _b64(v: bytes) -> str:
    return base64.b64encode(v).decode()


def _double(v: float) -> float | str:
    if v != v:
        return "NaN"
    if v in (math.inf, -math.inf):
        return "Infinity" if v > 0 else "-Infinity"
    return v


def _field_json(fd: Any) -> tuple[str, Callable[[Any], Any] | None, bool]:
    """(json name, value converter or None for as-is, repeated) of a field."""
    got = _FIELD_JSON.get(fd)
    if got is not None:
        return got
    fn: Callable[[Any], Any] | None
    if fd.is_extension:
        raise _Unsupported(fd.full_name)
    if fd.type == _FD.TYPE_MESSAGE:
        md = fd.message_type
        if (md.has_options and md.GetOptions().map_entry) or md.file.name.startswith("google/protobuf/"):
            raise _Unsupported(fd.full_name)
        fn = _kv_json if _is_key_value(md) else _message_json
    elif fd.type == _FD.TYPE_BYTES:
        fn = bytes.hex if fd.json_name in _IDS else _b64
    elif fd.cpp_type in _INT64:
        fn = str
    elif fd.type == _FD.TYPE_DOUBLE:
        fn = _double
    elif fd.type == _FD.TYPE_FLOAT:
        raise _Unsupported(fd.full_name)  # json_format's shortest float32 text
    elif fd.type == _FD.TYPE_STRING:
        fn = str
    elif fd.type == _FD.TYPE_BOOL:
        fn = bool
    else:  # 32-bit integers, enums (as integers)
        fn = None
    got = _FIELD_JSON[fd] = (fd.json_name, fn, fd.is_repeated)
    return got


# Attributes are most of a span: a KeyValue and its AnyValue read by name (HasField,
# WhichOneof) rather than through ListFields, which costs ~1 us a message here. Used
# only where the descriptors have exactly the fields below, in this order (the
# ``*_strindex`` ones came with OTLP 1.7's profiles; a newer OTLP with other fields
# takes ListFields).
_ANY_FIELDS = {"string_value": ("stringValue", str), "bool_value": ("boolValue", bool),
               "int_value": ("intValue", str), "double_value": ("doubleValue", _double),
               "bytes_value": ("bytesValue", _b64), "string_value_strindex": ("stringValueStrindex", int)}
_KV_FIELDS = (["key", "value"], ["key", "value", "key_strindex"])


def _is_key_value(md: Any) -> bool:
    if md.full_name != "opentelemetry.proto.common.v1.KeyValue" or [f.name for f in md.fields] not in _KV_FIELDS:
        return False
    av = md.fields_by_name["value"].message_type
    return (all(f.containing_oneof is not None and f.containing_oneof.name == "value" for f in av.fields)
            and {f.name for f in av.fields} <= {*_ANY_FIELDS, "array_value", "kvlist_value"}
            and [f.name for f in av.fields_by_name["array_value"].message_type.fields] == ["values"]
            and [f.name for f in av.fields_by_name["kvlist_value"].message_type.fields] == ["values"])


def _kv_json(kv: Any) -> dict[str, Any]:
    js: dict[str, Any] = {}
    if kv.key:
        js["key"] = kv.key
    if kv.HasField("value"):
        js["value"] = _any_json(kv.value)
    n = getattr(kv, "key_strindex", 0)  # only where the field exists (_KV_FIELDS)
    if n:
        js["keyStrindex"] = n
    return js


def _any_json(v: Any) -> dict[str, Any]:
    which = v.WhichOneof("value")
    if which is None:
        return {}
    conv = _ANY_FIELDS.get(which)
    if conv is not None:
        return {conv[0]: conv[1](getattr(v, which))}
    if which == "array_value":
        values = v.array_value.values
        return {"arrayValue": {"values": [_any_json(x) for x in values]} if values else {}}
    values = v.kvlist_value.values
    return {"kvlistValue": {"values": [_kv_json(x) for x in values]} if values else {}}


def _message_json(msg: Any) -> dict[str, Any]:
    js: dict[str, Any] = {}
    for fd, v in msg.ListFields():
        name, fn, repeated = _FIELD_JSON.get(fd) or _field_json(fd)
        if repeated:
            js[name] = [fn(x) for x in v] if fn is not None else list(v)
        else:
            js[name] = fn(v) if fn is not None else v
    return js


def _hexify(node: Any) -> Any:
    if isinstance(node, list):
        return [_hexify(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for k, v in node.items():
        if k in _IDS and isinstance(v, str):
            out[k] = base64.b64decode(v).hex()
        elif k in ("attributes", "value"):
            out[k] = v
        else:
            out[k] = _hexify(v)
    return out


def _reference_doc(req: Request) -> dict[str, Any]:
    """json_format's own conversion, the ids made hex: the reference and the fallback."""
    from google.protobuf.json_format import MessageToDict
    return {"resourceSpans": _hexify(MessageToDict(req, use_integers_for_enums=True).get("resourceSpans", []))}


def request_json_line(req: Request) -> bytes:
    """One OTLP JSON Lines record (TracesData) of a request: hex ids, integer enums."""
    try:
        doc = {"resourceSpans": [_message_json(rs) for rs in req.resource_spans]}
    except _Unsupported:
        doc = _reference_doc(req)
    return (json.dumps(doc, separators=(",", ":")) + "\n").encode()


# --- targets ----------------------------------------------------------------------------
class StoreTarget:
    def __init__(self, sink: Any):
        self.sink = sink
        self.description = f"into the embedded store ({sink.description})"

    def deliver(self, req: Request) -> None:
        try:
            self.sink.write_line(request_json_line(req))
        except OSError as e:
            raise Retryable(f"writing the store: {e}") from None

    def close(self) -> None:
        pass  # the sink belongs to the kernel-span pipeline, which closes it


class GrpcTarget:
    RETRY = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED", "CANCELLED", "OUT_OF_RANGE", "DATA_LOSS")

    def __init__(self, endpoint: str, timeout_s: float, headers: Mapping[str, str] | None = None):
        import grpc
        u = urlparse(endpoint if "://" in endpoint else "http://" + endpoint)
        target = f"{u.hostname}:{u.port or 4317}"
        if u.scheme == "https":
            self._channel = grpc.secure_channel(target, grpc.ssl_channel_credentials())
        else:
            self._channel = grpc.insecure_channel(target)
        self._export = self._channel.unary_unary(
            "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            request_serializer=lambda r: r.SerializeToString(),
            response_deserializer=trace_service_pb2.ExportTraceServiceResponse.FromString)
        self._metadata = tuple((headers or {}).items())
        self.timeout_s = timeout_s
        self.description = f"OTLP gRPC to {endpoint}"

    def deliver(self, req: Request) -> None:
        import grpc
        try:
            self._export(req, timeout=self.timeout_s, metadata=self._metadata or None)
        except grpc.RpcError as e:
            code = e.code().name if hasattr(e, "code") and e.code() else "UNKNOWN"
            msg = f"gRPC {code}: {e.details() if hasattr(e, 'details') else e}"
            raise (Retryable if code in self.RETRY else Permanent)(msg) from None

    def close(self) -> None:
        self._channel.close()


class HttpTarget:
    RETRY = (429, 502, 503, 504)

    def __init__(self, endpoint: str, timeout_s: float, headers: Mapping[str, str] | None = None):
        u = urlparse(endpoint if "://" in endpoint else "http://" + endpoint)
        self.url = endpoint if u.path not in ("", "/") else endpoint.rstrip("/") + "/v1/traces"
        self.timeout_s = timeout_s
        self.headers = {**(headers or {}), "Content-Type": "application/x-protobuf"}
        self.description = f"OTLP HTTP to {self.url}"

    def deliver(self, req: Request) -> None:
        r = urllib.request.Request(self.url, data=req.SerializeToString(), headers=self.headers, method="POST")
        try:
            with urllib.request.urlopen(r, timeout=self.timeout_s) as resp:
                resp.read()
        except urllib.error.HTTPError as e:
            raise (Retryable if e.code in self.RETRY else Permanent)(f"HTTP {e.code} {e.reason}") from None
        except (urllib.error.URLError, OSError) as e:
            raise Retryable(f"{getattr(e, 'reason', e)}") from None

    def close(self) -> None:
        pass


# --- the forwarder ------------------------------------------------------------------------
@dataclass
class ForwardStats:
    requests: int = 0  # requests delivered
    spans: int = 0  # spans delivered
    retries: int = 0  # delivery attempts retried
    failed_spans: int = 0  # spans dropped after the last attempt or a permanent error
    queue_full_spans: int = 0  # spans refused by submit (the client was told to retry)
    unsent_spans: int = 0  # spans still queued when the collector stopped

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class Forwarder:
    """Bounded queue + one delivering thread. ``submit`` never blocks."""

    def __init__(self, target: Target, max_spans: int = 65536, max_attempts: int = 5,
                 backoff_s: float = 0.5, max_backoff_s: float = 5.0):
        self.target = target
        self.max_spans = max_spans
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.stats = ForwardStats()
        self.last_error = ""
        self._q: deque[tuple[Request, int]] = deque()
        self._queued_spans = 0
        self._cv = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kernelnet-forward", daemon=True)
        self._thread.start()

    def submit(self, req: Request, n_spans: int) -> bool:
        with self._cv:
            if self._queued_spans + n_spans > self.max_spans and self._q:
                self.stats.queue_full_spans += n_spans
                return False
            self._q.append((req, n_spans))
            self._queued_spans += n_spans
            self._cv.notify()
        return True

    @property
    def queued_spans(self) -> int:
        return self._queued_spans

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._q and not self._stop.is_set():
                    self._cv.wait()  # submit() and close() notify (close after setting _stop)
                if not self._q:
                    return
                req, n = self._q[0]
            self._deliver(req, n)
            with self._cv:
                self._q.popleft()
                self._queued_spans -= n
                self._cv.notify_all()

    def _deliver(self, req: Request, n: int) -> None:
        delay = self.backoff_s
        for attempt in range(1, self.max_attempts + 1):
            try:
                self.target.deliver(req)
            except Retryable as e:
                self.last_error = str(e)
                if attempt == self.max_attempts or self._stop.wait(delay):
                    break  # out of attempts, or stopping: do not hold the shutdown
                self.stats.retries += 1
                delay = min(delay * 2, self.max_backoff_s)
                continue
            except Permanent as e:
                self.last_error = str(e)
                break
            except Exception as e:  # a target bug must not kill the thread
                self.last_error = f"{type(e).__name__}: {e}"
                break
            self.stats.requests += 1
            self.stats.spans += n
            return
        self.stats.failed_spans += n

    def close(self, timeout_s: float = 5.0) -> None:
        """Deliver what is queued (bounded by timeout; no retry waits), count the rest, close."""
        deadline = time.monotonic() + timeout_s
        # let the queue drain first; then stop (which also cuts retry waits short)
        with self._cv:
            self._cv.notify_all()
            self._cv.wait_for(lambda: not self._q or not self._thread.is_alive(),
                              max(0.0, deadline - time.monotonic()))
        self._stop.set()
        with self._cv:
            self._cv.notify_all()
        self._thread.join(max(0.1, deadline - time.monotonic()))
        with self._cv:
            left = sum(n for _r, n in self._q)
            self.stats.unsent_spans += left
            self._q.clear()
            self._queued_spans = 0
        try:
            self.target.close()
        except Exception:
            pass


def make_target(otlp_target: Any, store_sink: Any, timeout_s: float) -> Target:
    """The same destination as the kernel spans: an ``OtlpTarget`` or the JSON Lines sink."""
    if otlp_target is None:
        return StoreTarget(store_sink)
    endpoint = otlp_target.endpoint
    if endpoint is None:  # the exporter would read the env itself; so do we
        from .sinks import ENV_ENDPOINT
        endpoint = next((os.environ[v] for v in ENV_ENDPOINT if os.environ.get(v)), "http://localhost:4317")
    headers = otlp_headers()
    if otlp_target.protocol == "grpc":
        return GrpcTarget(endpoint, timeout_s, headers)
    return HttpTarget(endpoint, timeout_s, headers)
