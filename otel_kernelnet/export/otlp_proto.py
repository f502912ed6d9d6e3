"""OTLP protobuf encoding of ``KernelSpan`` batches, written by hand (pure; no I/O).

``encode_request(spans, resource, scope_name, scope_version)`` returns the bytes of
one ``opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest``: one
ResourceSpans, one ScopeSpans, the spans in order. Nothing builds protobuf message
objects: the wire format is written directly (varints, length-delimited fields,
fixed64 times, fixed32 flags), which is what makes the exporter ~10x cheaper per span
than the SDK path (``ReadableSpan`` + ``encode_spans`` + ``SerializeToString``, whose
cost is almost all in building upb message objects one field at a time).

The output is the SDK path's output, byte for byte, for every ``KernelSpan``
(``tests/unit/test_otlp_proto.py`` checks this, and decodes it with the official
opentelemetry-proto classes field by field): fields in field-number order, minimal
varints, an empty ``status`` message for UNSET, span ``flags`` =
``SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE`` (0x100), plus ``IS_REMOTE`` (0x200) when the
span has a parent (a kernel span's parent is an application span in another
process) and on every link. Attribute values: str, bool, int (int64; an int outside
the int64 range is written modulo 2**64, as a u64 socket cookie's bits), float
(double), bytes, and lists/tuples of those (``array_value``).

Speed: ``Encoder.encode`` writes the spans with the C encoder (``_otlp_native``, built at
install by setup.py: 4-5x fewer CPU µs per span) when it is there, and this module's
Python otherwise (no compiler at install, or ``OTEL_KERNELNET_NATIVE=0``). The bytes are
the same (tests/unit/test_otlp_native.py compares them on generated spans); a batch
the C encoder refuses (a value it does not know how to read) is written by Python,
which is the reference, and counted (``Encoder.fallbacks``). For the Python path: a
kernel span's attributes mostly repeat (drop reason, location, device,
command, CPU), so each encoded ``KeyValue`` of a str or int value is kept per key and
value (``attr_cache.AttrCache``: a key whose values do not repeat, such as a duration
in ns, stops being cached); a hit costs two dict lookups. Events with the same name and
attributes are cached too (at most ``EVENTS_MAX``; cleared when full).
"""

from __future__ import annotations

import os
import struct
from typing import Any, Iterable, Mapping, Sequence

from ..spans import KernelSpan
from .attr_cache import EVENTS_MAX, PER_KEY_MAX, AttrCache, EventCache
_U64 = (1 << 64) - 1

# minimal varints for small values, precomputed (lengths of spans and attributes)
_SMALL = 1 << 14


def _varint_slow(n: int) -> bytes:
    n &= _U64
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_VARINT = [_varint_slow(i) for i in range(_SMALL)]


def varint(n: int) -> bytes:
    """Minimal protobuf varint; negative numbers as 10-byte two's complement (int64).

    >>> varint(1), varint(300), varint(-1) == b"\\xff" * 9 + b"\\x01"
    (b'\\x01', b'\\xac\\x02', True)
    """
    if 0 <= n < _SMALL:
        return _VARINT[n]
    return _varint_slow(n)


def _ld(tag: bytes, body: bytes) -> bytes:
    """A length-delimited field: tag, length, body."""
    n = len(body)
    return tag + (_VARINT[n] if n < _SMALL else _varint_slow(n)) + body


_DOUBLE = struct.Struct("<d")
_FIXED64 = struct.Struct("<Q")
_TIMES = struct.Struct("<BQBQ")  # Span fields 7 and 8: fixed64 start and end

# AnyValue fields
_AV_STRING, _AV_BOOL, _AV_INT, _AV_DOUBLE, _AV_ARRAY, _AV_BYTES = b"\x0a", b"\x10", b"\x18", b"\x21", b"\x2a", b"\x3a"


def any_value(v: Any) -> bytes:
    """The body of an ``AnyValue`` for a python value (str/bool/int/float/bytes/list)."""
    t = v.__class__
    if t is str:
        return _ld(_AV_STRING, v.encode())
    if t is bool:
        return b"\x10\x01" if v else b"\x10\x00"
    if t is int:
        return _AV_INT + varint(v)
    if t is float:
        return _AV_DOUBLE + _DOUBLE.pack(v)
    if isinstance(v, bool):
        return b"\x10\x01" if v else b"\x10\x00"
    if isinstance(v, str):
        return _ld(_AV_STRING, str(v).encode())
    if isinstance(v, int):
        return _AV_INT + varint(int(v))
    if isinstance(v, float):
        return _AV_DOUBLE + _DOUBLE.pack(float(v))
    if isinstance(v, (bytes, bytearray, memoryview)):
        return _ld(_AV_BYTES, bytes(v))
    if isinstance(v, (list, tuple)):
        return _ld(_AV_ARRAY, b"".join(_ld(b"\x0a", any_value(x)) for x in v))
    return _ld(_AV_STRING, str(v).encode())


def key_value(key: str, v: Any) -> bytes:
    """The body of a ``KeyValue``."""
    return _ld(b"\x0a", key.encode()) + _ld(b"\x12", any_value(v))


def _span_attr(k: str, v: Any) -> bytes:
    """Span field 9 (``attributes``) for one attribute."""
    return _ld(b"\x4a", key_value(k, v))


def attributes(tag: bytes, attrs: Mapping[str, Any]) -> bytes:
    """Repeated ``KeyValue`` fields with ``tag`` (uncached: resource, events, links)."""
    return b"".join(_ld(tag, key_value(k, v)) for k, v in attrs.items())


def _event_rest(e: Any) -> bytes:
    """An ``Event``'s fields after its time: name (2) and attributes (3)."""
    return _ld(b"\x12", e.name.encode()) + attributes(b"\x1a", e.attributes)


NATIVE_ENV = "OTEL_KERNELNET_NATIVE"  # "0": encode in Python even where the C encoder is built


def native_off() -> bool:
    """The C encoder is turned off (``NATIVE_ENV=0``)."""
    return os.environ.get(NATIVE_ENV, "").strip() == "0"


def native_module() -> Any | None:
    """The C encoder's module, or None (not built, or turned off by ``NATIVE_ENV``)."""
    if native_off():
        return None
    try:
        from . import _otlp_native
    except ImportError:
        return None
    return _otlp_native


def encode_native(enc: Any, method: str, spans: Iterable[KernelSpan], *args: Any) -> tuple[Sequence[KernelSpan], bytes | None]:
    """The batch as a sequence, and the bytes of ``enc.native.<method>(spans, *args)``:
    None without the C encoder, or when it refused the batch (a value it does not read;
    counted in ``enc.fallbacks``): then the Python encoder, the reference, writes it."""
    spans = spans if isinstance(spans, (list, tuple)) else list(spans)
    if enc.native is None:
        return spans, None
    try:
        return spans, getattr(enc.native, method)(spans, *args)
    except Exception:
        enc.fallbacks += 1
        return spans, None


class Encoder:
    """Encodes batches for one resource and scope; keeps the attribute cache.

    Not thread-safe: one per export thread.
    """

    def __init__(self, resource: Mapping[str, Any], scope_name: str, scope_version: str,
                 per_key_max: int = PER_KEY_MAX, events_max: int = EVENTS_MAX, native: bool = True):
        self.native = native_module() if native else None
        self.fallbacks = 0  # batches the C encoder refused (written by Python)
        self._resource_field = _ld(b"\x0a", attributes(b"\x0a", resource))  # ResourceSpans.resource
        scope = _ld(b"\x0a", scope_name.encode()) + (_ld(b"\x12", scope_version.encode()) if scope_version else b"")
        self._scope_field = _ld(b"\x0a", scope)  # ScopeSpans.scope
        self.attrs = AttrCache(_span_attr, per_key_max)
        self._names: dict[str, bytes] = {}
        self.events = EventCache(_event_rest, events_max)  # (name, attribute items) -> fields 2 and 3
        self._status: dict[tuple[int, str], bytes] = {}

    def span(self, s: KernelSpan) -> bytes:
        """The body of one ``Span`` message."""
        name = self._names.get(s.name)
        if name is None:
            name = self._names[s.name] = _ld(b"\x2a", s.name.encode())
        parts = [b"\x0a\x10", s.trace_id, b"\x12\x08", s.span_id]
        if s.parent_span_id:
            parts += (b"\x22\x08", s.parent_span_id)
        parts.append(name)
        if s.kind:
            parts.append(b"\x30" + varint(s.kind))
        parts.append(_TIMES.pack(0x39, s.start_ns & _U64, 0x41, s.end_ns & _U64))
        parts += self.attrs.encode(s.attributes)
        event_rest = self.events.get
        for e in s.events:
            body = b"\x09" + _FIXED64.pack(e.time_ns & _U64) + event_rest(e)
            parts.append(_ld(b"\x5a", body))
        for link in s.links:
            body = b"\x0a\x10" + link.trace_id + b"\x12\x08" + link.span_id
            if link.attributes:
                body += attributes(b"\x22", link.attributes)
            parts.append(_ld(b"\x6a", body + b"\x35\x00\x03\x00\x00"))  # flags: HAS_IS_REMOTE | IS_REMOTE
        st = self._status.get((s.status_code, s.status_message))
        if st is None:
            body = (_ld(b"\x12", s.status_message.encode()) if s.status_message else b"") + \
                   (b"\x18" + varint(s.status_code) if s.status_code else b"")
            st = self._status[(s.status_code, s.status_message)] = _ld(b"\x7a", body)
        parts.append(st)
        # flags (field 16, fixed32): HAS_IS_REMOTE, plus IS_REMOTE with a (remote) parent
        parts.append(b"\x85\x01\x00\x03\x00\x00" if s.parent_span_id else b"\x85\x01\x00\x01\x00\x00")
        return b"".join(parts)

    def encode(self, spans: Iterable[KernelSpan]) -> bytes:
        """``ExportTraceServiceRequest`` bytes for a batch (empty batch: empty request)."""
        spans, body = encode_native(self, "encode_spans", spans, any_value)
        if body is None:
            span = self.span
            body = b"".join([_ld(b"\x12", span(s)) for s in spans])
        if not body:
            return b""
        # ResourceSpans {resource, ScopeSpans {scope, spans}}: lengths first, one copy
        n_scope = len(self._scope_field) + len(body)
        len_scope = varint(n_scope)
        n_resource = len(self._resource_field) + 1 + len(len_scope) + n_scope
        return b"".join([b"\x0a", varint(n_resource), self._resource_field, b"\x12", len_scope,
                         self._scope_field, body])


def encode_request(spans: Sequence[KernelSpan], resource: Mapping[str, Any],
                   scope_name: str, scope_version: str) -> bytes:
    """One-shot form of ``Encoder(resource, scope_name, scope_version).encode(spans)``."""
    return Encoder(resource, scope_name, scope_version).encode(spans)


# --- ExportTraceServiceResponse -----------------------------------------------------------
def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if i >= len(buf):
            raise ValueError("truncated varint")
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(buf: bytes):
    """(field number, wire type, value) of each field of a message; skips fixed fields."""
    i = 0
    while i < len(buf):
        key, i = _read_varint(buf, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            val, i = _read_varint(buf, i)
        elif wt == 2:
            n, i = _read_varint(buf, i)
            if i + n > len(buf):
                raise ValueError("truncated field")
            val, i = buf[i:i + n], i + n
        elif wt == 1:
            val, i = buf[i:i + 8], i + 8
        elif wt == 5:
            val, i = buf[i:i + 4], i + 4
        else:
            raise ValueError(f"unsupported wire type {wt}")
        yield num, wt, val


def partial_success(response: bytes) -> tuple[int, str]:
    """(rejected_spans, error_message) of an ``ExportTraceServiceResponse``.

    >>> partial_success(b"")
    (0, '')
    >>> partial_success(b"\\x0a\\x06\\x08\\x03\\x12\\x02no")
    (3, 'no')
    """
    rejected, message = 0, ""
    for num, wt, val in _fields(response):
        if num == 1 and wt == 2:
            for n2, w2, v2 in _fields(val):
                if n2 == 1 and w2 == 0:
                    rejected = v2 - (1 << 64) if v2 >= 1 << 63 else v2
                elif n2 == 2 and w2 == 2:
                    message = bytes(v2).decode("utf-8", "replace")
    return rejected, message
