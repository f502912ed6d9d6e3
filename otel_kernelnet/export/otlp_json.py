"""OTLP JSON encoding of ``KernelSpan`` batches (pure; no SDK, no I/O).

Follows the OTLP JSON mapping the collector's file exporter writes: hex trace/span
ids, lowerCamelCase keys, 64-bit integers as decimal strings, enums as integers, and
default/empty fields omitted. One call encodes one ``TracesData`` (one line of the
embedded store).
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Mapping

from ..spans import KernelSpan


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


def encode_line(spans: Iterable[KernelSpan], resource: Mapping[str, Any],
                scope_name: str, scope_version: str) -> bytes:
    """One JSON Lines record (with the trailing newline)."""
    return (json.dumps(traces_data(spans, resource, scope_name, scope_version),
                       separators=(",", ":")) + "\n").encode()
