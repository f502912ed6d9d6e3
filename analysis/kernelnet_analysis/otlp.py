"""OTLP (JSON or protobuf) to the :mod:`~kernelnet_analysis.schema` frames.

One parser serves every OTLP-shaped source, tolerant of what each writes:

* ids as hex (OTLP/JSON, the collector, Jaeger v3) or base64 (protobuf's default
  JSON mapping: Tempo ``/api/v2/traces``), or hex with leading zeros trimmed
  (Tempo search); they come out as padded lowercase hex;
* 64-bit integers as decimal strings or numbers;
* enums as integers or names (``SPAN_KIND_SERVER``, ``STATUS_CODE_ERROR``);
* ``resourceSpans`` (OTLP), ``batches`` (Tempo v1), ``resource_spans``, and the
  old ``instrumentationLibrarySpans``.

>>> doc = {"resourceSpans": [{"resource": {"attributes": [
...     {"key": "service.name", "value": {"stringValue": "shop"}}]},
...   "scopeSpans": [{"scope": {"name": "s"}, "spans": [{
...     "traceId": "W47/95gDgQPSabYzgT/HAA==", "spanId": "7uGbfsPBsQA=",
...     "name": "GET /", "kind": "SPAN_KIND_SERVER",
...     "startTimeUnixNano": "1000", "endTimeUnixNano": 3000,
...     "attributes": [{"key": "kernelnet.socket.cookie", "value": {"intValue": "42"}}],
...     "status": {}}]}]}]}
>>> t = traces_from_otlp(doc)
>>> t.spans.select("trace_id", "span_id", "kind", "duration_ns", "kernelnet.socket.cookie").row(0)
('5b8efff798038103d269b633813fc700', 'eee19b7ec3c1b100', 2, 2000, 42)
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Iterable

import polars as pl

from .errors import SourceError
from .schema import (ATTRIBUTE_COLUMNS, EVENT_SCHEMA, LINK_SCHEMA, RESOURCE_SCHEMA,
                     SPAN_SCHEMA, Traces)

_HEX = frozenset("0123456789abcdefABCDEF")
_KIND_NAMES = {"SPAN_KIND_UNSPECIFIED": 0, "SPAN_KIND_INTERNAL": 1, "SPAN_KIND_SERVER": 2,
               "SPAN_KIND_CLIENT": 3, "SPAN_KIND_PRODUCER": 4, "SPAN_KIND_CONSUMER": 5,
               "unspecified": 0, "internal": 1, "server": 2, "client": 3, "producer": 4,
               "consumer": 5}
_STATUS_NAMES = {"STATUS_CODE_UNSET": 0, "STATUS_CODE_OK": 1, "STATUS_CODE_ERROR": 2,
                 "unset": 0, "ok": 1, "error": 2, "OK": 1, "ERROR": 2, "UNSET": 0}
_INT_COLS = frozenset(k for k, t in ATTRIBUTE_COLUMNS.items() if t == pl.Int64)
_FLOAT_COLS = frozenset(k for k, t in ATTRIBUTE_COLUMNS.items() if t == pl.Float64)
_BOOL_COLS = frozenset(k for k, t in ATTRIBUTE_COLUMNS.items() if t == pl.Boolean)


def norm_id(value: Any, nbytes: int) -> str | None:
    """Normalise a trace id (``nbytes=16``) or span id (``nbytes=8``) to lowercase hex.

    >>> norm_id("7uGbfsPBsQA=", 8)
    'eee19b7ec3c1b100'
    >>> norm_id("2f3e0cee77ae5dc9c17ade3689eb2e54", 16)
    '2f3e0cee77ae5dc9c17ade3689eb2e54'
    >>> norm_id("abc", 16)   # Tempo search trims leading zeros
    '00000000000000000000000000000abc'
    >>> norm_id("", 8) is None
    True
    """
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        return value.hex().rjust(nbytes * 2, "0") if any(value) else None
    s = str(value).strip()
    if not s:
        return None
    width = nbytes * 2
    if len(s) <= width and _HEX.issuperset(s):
        s = s.lower().rjust(width, "0")
        return None if s.strip("0") == "" else s
    try:
        raw = base64.b64decode(s + "=" * (-len(s) % 4), validate=False)
    except (binascii.Error, ValueError):
        raw = b""
    if raw and len(raw) <= nbytes:
        return raw.hex().rjust(width, "0")
    raise SourceError(f"invalid {'trace' if nbytes == 16 else 'span'} id {s!r}")


def to_int(v: Any) -> int | None:
    """int64 from a number or a decimal string (OTLP/JSON allows both).

    >>> to_int("1689969302000000000"), to_int(7), to_int(None)
    (1689969302000000000, 7, None)
    """
    if v is None or v == "":
        return None
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, int):
        return v
    try:
        return int(v)
    except (TypeError, ValueError):
        try:
            return int(float(v))
        except (TypeError, ValueError):
            return None


def any_value(v: dict | None) -> Any:
    """Python value of an OTLP ``AnyValue`` (arrays and maps become JSON strings).

    >>> any_value({"intValue": "5"}), any_value({"stringValue": "x"}), any_value({"boolValue": True})
    (5, 'x', True)
    """
    if not v:
        return None
    for key in ("stringValue", "string_value"):
        if key in v:
            return v[key]
    for key in ("intValue", "int_value"):
        if key in v:
            return to_int(v[key])
    for key in ("doubleValue", "double_value"):
        if key in v:
            try:
                return float(v[key])
            except (TypeError, ValueError):
                return None
    for key in ("boolValue", "bool_value"):
        if key in v:
            return bool(v[key])
    for key in ("bytesValue", "bytes_value"):
        if key in v:
            return v[key]
    for key in ("arrayValue", "array_value"):
        if key in v:
            return json.dumps([any_value(x) for x in (v[key] or {}).get("values", [])])
    for key in ("kvlistValue", "kvlist_value"):
        if key in v:
            return json.dumps({kv.get("key"): any_value(kv.get("value")) for kv in (v[key] or {}).get("values", [])})
    return None


def kv_list(attrs: Iterable[dict] | None) -> dict[str, Any]:
    """``[{"key", "value": AnyValue}]`` to a dict."""
    return {a.get("key"): any_value(a.get("value")) for a in attrs or () if isinstance(a, dict)}


def _str(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _coerce(key: str, v: Any) -> Any:
    if v is None:
        return None
    if key in _INT_COLS:
        return to_int(v)
    if key in _FLOAT_COLS:
        try:
            return float(v)
        except (TypeError, ValueError):
            return None
    if key in _BOOL_COLS:
        if isinstance(v, str):
            return v.lower() == "true"
        return bool(v)
    return _str(v)


class FrameBuilder:
    """Accumulates spans, events, links and resources column-wise, then builds frames.

    Loaders of every format feed it; :meth:`finish` returns a :class:`Traces`.

    >>> b = FrameBuilder()
    >>> rid = b.add_resource("svc", {"service.name": "svc", "process.pid": 7})
    >>> b.add_span("1", "2", None, "op", 2, 10, 25, 0, None, "svc", None, rid, {"server.port": "80"})
    >>> t = b.finish()
    >>> t.spans.select("trace_id", "duration_ns", "server.port", "process.pid").row(0)
    ('00000000000000000000000000000001', 15, 80, 7)
    """

    def __init__(self) -> None:
        self._span_cols: dict[str, list] = {k: [] for k in SPAN_SCHEMA}
        self._events: dict[str, list] = {k: [] for k in EVENT_SCHEMA}
        self._links: dict[str, list] = {k: [] for k in LINK_SCHEMA}
        self._res: dict[str, list] = {k: [] for k in RESOURCE_SCHEMA}
        self._res_pid: list[int | None] = []

    def add_resource(self, service: str | None, attrs: dict[str, Any]) -> int:
        rid = len(self._res["resource_id"])
        self._res["resource_id"].append(rid)
        self._res["service"].append(service)
        self._res["attributes"].append([{"key": k, "value": _str(v)} for k, v in attrs.items()])
        self._res_pid.append(to_int(attrs.get("process.pid")))
        return rid

    def add_span(self, trace_id, span_id, parent_span_id, name, kind, start_ns, end_ns,
                 status_code, status_message, service, scope, resource_id, attrs: dict[str, Any]) -> None:
        c = self._span_cols
        tid, sid = norm_id(trace_id, 16), norm_id(span_id, 8)
        if tid is None or sid is None:
            raise SourceError(f"span {name!r} without trace or span id")
        start, end = to_int(start_ns), to_int(end_ns)
        if start is None:
            raise SourceError(f"span {name!r} ({sid}) without a start time")
        if end is None or end < start:
            end = start
        c["trace_id"].append(tid)
        c["span_id"].append(sid)
        c["parent_span_id"].append(norm_id(parent_span_id, 8))
        c["name"].append(name)
        c["kind"].append(_enum(kind, _KIND_NAMES))
        c["start_ns"].append(start)
        c["end_ns"].append(end)
        c["duration_ns"].append(end - start)
        c["status_code"].append(_enum(status_code, _STATUS_NAMES))
        c["status_message"].append(status_message or None)
        c["service"].append(service)
        c["scope"].append(scope or None)
        c["resource_id"].append(resource_id)
        for key in ATTRIBUTE_COLUMNS:
            c[key].append(_coerce(key, attrs.get(key)))
        if c["process.pid"][-1] is None and resource_id is not None and resource_id < len(self._res_pid):
            c["process.pid"][-1] = self._res_pid[resource_id]
        c["attributes"].append([{"key": k, "value": _str(v)} for k, v in attrs.items()])

    def add_event(self, trace_id, span_id, time_ns, name, attrs: dict[str, Any]) -> None:
        e = self._events
        e["trace_id"].append(norm_id(trace_id, 16))
        e["span_id"].append(norm_id(span_id, 8))
        e["time_ns"].append(to_int(time_ns))
        e["name"].append(name)
        e["attributes"].append([{"key": k, "value": _str(v)} for k, v in attrs.items()])

    def add_link(self, trace_id, span_id, linked_trace_id, linked_span_id, attrs: dict[str, Any]) -> None:
        lk = self._links
        lid, lsid = norm_id(linked_trace_id, 16), norm_id(linked_span_id, 8)
        if lid is None or lsid is None:
            return
        lk["trace_id"].append(norm_id(trace_id, 16))
        lk["span_id"].append(norm_id(span_id, 8))
        lk["linked_trace_id"].append(lid)
        lk["linked_span_id"].append(lsid)
        lk["attributes"].append([{"key": k, "value": _str(v)} for k, v in attrs.items()])

    def finish(self) -> Traces:
        return Traces(
            pl.DataFrame(self._span_cols, schema=SPAN_SCHEMA),
            pl.DataFrame(self._events, schema=EVENT_SCHEMA),
            pl.DataFrame(self._links, schema=LINK_SCHEMA),
            pl.DataFrame(self._res, schema=RESOURCE_SCHEMA),
        )


def _enum(v: Any, names: dict[str, int]) -> int:
    if v is None or v == "":
        return 0
    if isinstance(v, str):
        if v in names:
            return names[v]
        if v.isdigit():
            return int(v)
        raise SourceError(f"unknown enum value {v!r}")
    return int(v)


def _get(d: dict, *keys: str, default=None):
    for k in keys:
        if k in d:
            return d[k]
    return default


def add_otlp(builder: FrameBuilder, doc: dict) -> None:
    """Add one OTLP ``TracesData``-like dict (or Tempo ``batches`` / v2 ``trace``) to ``builder``."""
    if not isinstance(doc, dict):
        raise SourceError("expected a JSON object with resourceSpans")
    if "trace" in doc and isinstance(doc["trace"], dict):  # Tempo /api/v2/traces
        doc = doc["trace"]
    if "result" in doc and isinstance(doc["result"], dict):  # Jaeger v3
        doc = doc["result"]
    rss = _get(doc, "resourceSpans", "resource_spans", "batches", default=None)
    if rss is None and any(k in doc for k in ("resourceMetrics", "resourceLogs", "resource_metrics", "resource_logs")):
        return  # another signal (the collector writes its own metrics beside the traces): not spans
    if rss is None:
        raise SourceError("expected an OTLP object with 'resourceSpans' (or Tempo 'batches')")
    for rs in rss or ():
        res_attrs = kv_list((rs.get("resource") or {}).get("attributes"))
        service = res_attrs.get("service.name")
        rid = builder.add_resource(service, res_attrs)
        for ss in _get(rs, "scopeSpans", "scope_spans", "instrumentationLibrarySpans",
                       "instrumentation_library_spans", default=None) or ():
            scope = (_get(ss, "scope", "instrumentationLibrary", "instrumentation_library", default=None) or {}).get("name")
            for sp in ss.get("spans") or ():
                tid = _get(sp, "traceId", "trace_id")
                sid = _get(sp, "spanId", "span_id")
                status = sp.get("status") or {}
                builder.add_span(
                    tid, sid, _get(sp, "parentSpanId", "parent_span_id"), sp.get("name"),
                    sp.get("kind"), _get(sp, "startTimeUnixNano", "start_time_unix_nano"),
                    _get(sp, "endTimeUnixNano", "end_time_unix_nano"), status.get("code"),
                    status.get("message"), service, scope, rid, kv_list(sp.get("attributes")))
                for ev in sp.get("events") or ():
                    builder.add_event(tid, sid, _get(ev, "timeUnixNano", "time_unix_nano"), ev.get("name"),
                                      kv_list(ev.get("attributes")))
                for lk in sp.get("links") or ():
                    builder.add_link(tid, sid, _get(lk, "traceId", "trace_id"), _get(lk, "spanId", "span_id"),
                                     kv_list(lk.get("attributes")))


def traces_from_otlp(*docs: dict) -> Traces:
    """Frames from one or more OTLP JSON documents (see the module example)."""
    b = FrameBuilder()
    for d in docs:
        add_otlp(b, d)
    return b.finish()


def add_otlp_protobuf(builder: FrameBuilder, data: bytes) -> None:
    """Add one binary ``ExportTraceServiceRequest`` / ``TracesData`` message."""
    from google.protobuf.json_format import MessageToDict
    from google.protobuf.message import DecodeError
    from opentelemetry.proto.trace.v1 import trace_pb2

    msg = trace_pb2.TracesData()
    try:
        msg.ParseFromString(data)
    except DecodeError as exc:
        raise SourceError(f"not an OTLP protobuf TracesData record ({exc})") from None
    add_otlp(builder, MessageToDict(msg))
