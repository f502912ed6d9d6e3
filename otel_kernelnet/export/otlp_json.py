"""OTLP JSON encoding of ``KernelSpan`` batches (pure; no SDK, no I/O).

Follows the OTLP JSON mapping the collector's file exporter writes: hex trace/span
ids, lowerCamelCase keys, 64-bit integers as decimal strings, enums as integers, and
default/empty fields omitted. One call encodes one ``TracesData`` (one line of the
embedded store).

Two implementations: ``traces_data`` builds the document as Python dicts (the
readable reference, kept for tests and other callers), and ``Encoder``, which
``encode_line`` uses, writes the same JSON text directly: it is ~10x cheaper per span
because each attribute's ``{"key":..,"value":{..}}`` text is cached per key and value
for str, int and bool values (kernel attributes mostly repeat; a key whose values do
not, such as a duration, stops being cached: ``attr_cache.AttrCache``).
``tests/unit/test_otlp_proto.py`` checks that both give the same bytes. Where the C
encoder is built (``otlp_proto.native_module``), ``Encoder.encode_line`` writes the
spans' text with it instead (the same bytes: tests/unit/test_otlp_native.py; a batch
it refuses is written here).
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Mapping

from ..spans import KernelSpan
from .attr_cache import EVENTS_MAX, PER_KEY_MAX, AttrCache, EventCache
from .otlp_proto import encode_native, native_module


def any_value(v: Any) -> dict[str, Any]:
    if isinstance(v, bool):
        return {"boolValue": v}
    if isinstance(v, int):
        return {"intValue": str(v)}
    if isinstance(v, float):
        return {"doubleValue": v}
    if isinstance(v, bytes):
        import base64
        return {"bytesValue": base64.b64encode(v).decode()}
    if isinstance(v, (list, tuple)):
        return {"arrayValue": {"values": [any_value(x) for x in v]}}
    return {"stringValue": str(v)}


def key_values(attrs: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [{"key": k, "value": any_value(v)} for k, v in attrs.items()]


def span_json(s: KernelSpan) -> dict[str, Any]:
    out: dict[str, Any] = {
        "traceId": s.trace_id.hex(),
        "spanId": s.span_id.hex(),
    }
    if s.parent_span_id:
        out["parentSpanId"] = s.parent_span_id.hex()
    out["name"] = s.name
    if s.kind:
        out["kind"] = s.kind
    out["startTimeUnixNano"] = str(s.start_ns)
    out["endTimeUnixNano"] = str(s.end_ns)
    if s.attributes:
        out["attributes"] = key_values(s.attributes)
    if s.events:
        out["events"] = [{"timeUnixNano": str(e.time_ns), "name": e.name,
                          **({"attributes": key_values(e.attributes)} if e.attributes else {})}
                         for e in s.events]
    if s.links:
        out["links"] = [{"traceId": link.trace_id.hex(), "spanId": link.span_id.hex(),
                         **({"attributes": key_values(link.attributes)} if link.attributes else {})}
                        for link in s.links]
    status: dict[str, Any] = {}
    if s.status_message:
        status["message"] = s.status_message
    if s.status_code:
        status["code"] = s.status_code
    out["status"] = status
    return out


def traces_data(spans: Iterable[KernelSpan], resource: Mapping[str, Any],
                scope_name: str, scope_version: str) -> dict[str, Any]:
    return {"resourceSpans": [{
        "resource": {"attributes": key_values(resource)},
        "scopeSpans": [{
            "scope": {"name": scope_name, "version": scope_version},
            "spans": [span_json(s) for s in spans],
        }],
    }]}


def encode_line_reference(spans: Iterable[KernelSpan], resource: Mapping[str, Any],
                          scope_name: str, scope_version: str) -> bytes:
    """``encode_line`` through ``traces_data`` and ``json.dumps`` (the slow reference)."""
    return (json.dumps(traces_data(spans, resource, scope_name, scope_version),
                       separators=(",", ":")) + "\n").encode()


# --- the fast encoder -------------------------------------------------------------------
_dumps = json.JSONEncoder(separators=(",", ":")).encode  # same text as json.dumps(..., separators)


_str = json.encoder.encode_basestring_ascii  # json.dumps's text of a str (ensure_ascii)


def _kv_text(k: str, v: Any) -> str:
    """``{"key":..,"value":{..}}`` as ``_dumps`` writes it; str and int values directly."""
    t = v.__class__
    if t is int:
        return '{"key":' + _str(k) + ',"value":{"intValue":"' + str(v) + '"}}'
    if t is str:
        return '{"key":' + _str(k) + ',"value":{"stringValue":' + _str(v) + "}}"
    return _dumps({"key": k, "value": any_value(v)})


def _event_rest(e: Any) -> str:
    """An event's text after its ``"timeUnixNano":".."``: name, attributes, the brace."""
    text = _dumps({"timeUnixNano": "", "name": e.name,
                   **({"attributes": key_values(e.attributes)} if e.attributes else {})})
    return text[len('{"timeUnixNano":""'):]


class Encoder:
    """Writes ``encode_line``'s JSON text for one resource and scope, with caches.

    Not thread-safe: one per export thread (``encode_line`` keeps one per resource and
    scope, used by the single export thread).
    """

    def __init__(self, resource: Mapping[str, Any], scope_name: str, scope_version: str,
                 per_key_max: int = PER_KEY_MAX, events_max: int = EVENTS_MAX, native: bool = True):
        self._head = ('{"resourceSpans":[{"resource":{"attributes":' + _dumps(key_values(resource))
                      + '},"scopeSpans":[{"scope":' + _dumps({"name": scope_name, "version": scope_version})
                      + ',"spans":[')
        self._head_b = self._head.encode()  # ASCII: json.dumps escapes the rest
        self.native = native_module() if native else None
        self.fallbacks = 0  # batches the C encoder refused (written by Python)
        self.attrs = AttrCache(_kv_text, per_key_max)
        self._names: dict[str, str] = {}
        self._status: dict[tuple[int, str], str] = {}
        self.events = EventCache(_event_rest, events_max)  # (name, attribute items) -> text after the time

    def span(self, s: KernelSpan) -> str:
        name = self._names.get(s.name)
        if name is None:
            name = self._names[s.name] = ',"name":' + _dumps(s.name)
        parts = ['{"traceId":"', s.trace_id.hex(), '","spanId":"', s.span_id.hex(), '"']
        if s.parent_span_id:
            parts += (',"parentSpanId":"', s.parent_span_id.hex(), '"')
        parts.append(name)
        if s.kind:
            parts.append(f',"kind":{int(s.kind)}')
        parts.append(f',"startTimeUnixNano":"{s.start_ns}","endTimeUnixNano":"{s.end_ns}"')
        if s.attributes:
            parts += (',"attributes":[', ",".join(self.attrs.encode(s.attributes)), "]")
        if s.events:
            rest = self.events.get
            parts += (',"events":[', ",".join(['{"timeUnixNano":"' + str(e.time_ns) + '"' + rest(e)
                                               for e in s.events]), "]")
        if s.links:
            parts.append(',"links":' + _dumps(
                [{"traceId": link.trace_id.hex(), "spanId": link.span_id.hex(),
                  **({"attributes": key_values(link.attributes)} if link.attributes else {})} for link in s.links]))
        st = self._status.get((s.status_code, s.status_message))
        if st is None:
            status: dict[str, Any] = {}
            if s.status_message:
                status["message"] = s.status_message
            if s.status_code:
                status["code"] = s.status_code
            st = self._status[(s.status_code, s.status_message)] = ',"status":' + _dumps(status) + "}"
        parts.append(st)
        return "".join(parts)

    def encode_line(self, spans: Iterable[KernelSpan]) -> bytes:
        spans, body = encode_native(self, "encode_spans_json", spans, _str, _kv_text)
        if body is not None:
            return b"".join([self._head_b, body, b"]}]}]}\n"])
        span = self.span
        return (self._head + ",".join([span(s) for s in spans]) + "]}]}]}\n").encode()


_encoders: dict[tuple, Encoder] = {}


def encode_line(spans: Iterable[KernelSpan], resource: Mapping[str, Any],
                scope_name: str, scope_version: str) -> bytes:
    """One JSON Lines record (with the trailing newline): ``json.dumps(traces_data(...))``'s
    text, written by the cached ``Encoder`` of this resource and scope."""
    key = (tuple(resource.items()), scope_name, scope_version)
    enc = _encoders.get(key)
    if enc is None:
        if len(_encoders) >= 16:
            _encoders.clear()
        enc = _encoders[key] = Encoder(resource, scope_name, scope_version)
    return enc.encode_line(spans)
