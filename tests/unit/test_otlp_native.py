"""The C encoder (otel_kernelnet/export/_otlp_native.c) writes the Python encoders'
bytes (protobuf and JSON), span for span, for every kind of span and value; what it does not take, the
Python encoder decides (fallback), and it holds no references it should not.

The module must be built here: scripts/setup.sh installs gcc and the Python headers,
and ``pip install -e .`` compiles it (setup.py). Without it the collector works, slower
(``check`` says so); these tests fail, so CI never runs without it unnoticed.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from types import MappingProxyType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otel_kernelnet import check
from otel_kernelnet.export import otlp_json, otlp_proto
from otel_kernelnet.spans import KernelSpan, SpanEvent, SpanLink

from tests.unit.test_otlp_proto import RESOURCE, SCOPE, sdk_bytes, spans

native = otlp_proto.native_module()


def test_the_c_encoder_is_built_and_used_by_default(monkeypatch):
    assert native is not None, ("otel_kernelnet.export._otlp_native is not built: gcc and the Python headers are "
                                "needed when the package is installed (bash scripts/setup.sh installs them)")
    assert otlp_proto.Encoder(RESOURCE, *SCOPE).native is native
    assert otlp_proto.Encoder(RESOURCE, *SCOPE, native=False).native is None
    assert check._encoder().status == check.OK and "C" in check._encoder().detail
    monkeypatch.setenv(otlp_proto.NATIVE_ENV, "0")
    assert otlp_proto.Encoder(RESOURCE, *SCOPE).native is None and otlp_json.Encoder(RESOURCE, *SCOPE).native is None
    assert "Python" in check._encoder().detail


def both(batch: list[KernelSpan]) -> tuple[bytes, bytes]:
    """The spans' fields written by C (called directly: an error fails the test instead of
    falling back) and by the Python encoder."""
    py = otlp_proto.Encoder(RESOURCE, *SCOPE, native=False)
    return (native.encode_spans(batch, otlp_proto.any_value),
            b"".join(otlp_proto._ld(b"\x12", py.span(s)) for s in batch))


def test_the_reference_spans_equal_the_python_encoder_and_the_sdk():
    for big in (False, True):
        c, py = both(spans(big))
        assert c == py
    # attributes in a mapping that is not a dict (read through items(), not the dict walk)
    s = spans(big=True)[0]
    proxied = dataclasses.replace(s, attributes=MappingProxyType(s.attributes), events=[
        SpanEvent(e.time_ns, e.name, MappingProxyType(e.attributes)) for e in s.events])
    c, py = both([proxied])
    assert c == py == both([s])[0]
    c, py = both_json([proxied])
    assert c == py == both_json([s])[0]
    assert otlp_proto.Encoder(RESOURCE, *SCOPE).encode(spans()) == sdk_bytes(spans())


class Sub(str):
    pass


values = st.one_of(
    st.text(max_size=12), st.booleans(), st.integers(min_value=-(1 << 70), max_value=1 << 70),
    st.floats(), st.just(math.inf), st.binary(max_size=6),
    st.lists(st.one_of(st.integers(-5, 5), st.text(max_size=3)), max_size=3), st.builds(Sub, st.text(max_size=4)),
)
attrs = st.dictionaries(st.text(min_size=1, max_size=10), values, max_size=8)
ids16, ids8 = st.binary(min_size=16, max_size=16), st.binary(min_size=8, max_size=8)
u64ish = st.integers(min_value=-(1 << 64), max_value=1 << 65)
events = st.builds(SpanEvent, u64ish, st.text(max_size=8), attrs)
links = st.builds(SpanLink, ids16, ids8, attrs)
kernel_spans = st.builds(
    KernelSpan, name=st.text(max_size=20), trace_id=ids16, span_id=ids8, start_ns=u64ish, end_ns=u64ish,
    attributes=attrs, parent_span_id=st.one_of(st.just(b""), ids8), kind=st.integers(-3, 300),
    status_code=st.integers(-2, 2), status_message=st.text(max_size=10),
    events=st.lists(events, max_size=3), links=st.lists(links, max_size=2))


@settings(max_examples=300, deadline=None)
@given(st.lists(kernel_spans, max_size=4))
def test_any_span_is_encoded_to_the_python_encoders_bytes(batch):
    c, py = both(batch)
    assert c == py


def both_json(batch: list[KernelSpan]) -> tuple[bytes, bytes]:
    py = otlp_json.Encoder(RESOURCE, *SCOPE, native=False)
    return (native.encode_spans_json(batch, otlp_json._str, otlp_json._kv_text),
            ",".join(py.span(s) for s in batch).encode())


@settings(max_examples=300, deadline=None)
@given(st.lists(kernel_spans, max_size=4))
def test_any_span_is_written_as_the_python_json_encoders_text(batch):
    c, py = both_json(batch)
    assert c == py
    assert otlp_json.Encoder(RESOURCE, *SCOPE).encode_line(batch) == \
        otlp_json.encode_line_reference(batch, RESOURCE, *SCOPE)  # and json.dumps's


def test_the_reference_spans_equal_json_dumps():
    assert otlp_json.Encoder(RESOURCE, *SCOPE).native is native
    for big in (False, True):
        c, py = both_json(spans(big))
        assert c == py
        assert otlp_json.Encoder(RESOURCE, *SCOPE).encode_line(spans(big)) == \
            otlp_json.encode_line_reference(spans(big), RESOURCE, *SCOPE)


def test_what_c_does_not_take_is_left_to_the_python_encoder():
    odd = KernelSpan("s", bytearray(b"\x01" * 16), b"\x02" * 8, 1, 2, {"k": 1})  # not bytes: C refuses
    with pytest.raises(TypeError):
        native.encode_spans([odd], otlp_proto.any_value)
    enc = otlp_proto.Encoder(RESOURCE, *SCOPE)
    assert enc.encode([odd]) == otlp_proto.Encoder(RESOURCE, *SCOPE, native=False).encode([odd]) != b""
    assert enc.fallbacks == 1
    with pytest.raises(TypeError):
        native.encode_spans_json([odd], otlp_json._str, otlp_json._kv_text)
    jenc = otlp_json.Encoder(RESOURCE, *SCOPE)
    assert jenc.encode_line([odd]) == otlp_json.encode_line_reference([odd], RESOURCE, *SCOPE)
    assert jenc.fallbacks == 1 and jenc.encode_line(spans()) and jenc.fallbacks == 1
    for bad in ({"k": "\ud800"}, {1: "x"}):  # a lone surrogate; a key that is not a str
        s = KernelSpan("s", b"\x01" * 16, b"\x02" * 8, 1, 2, bad)
        errors = []
        for enc in (otlp_proto.Encoder(RESOURCE, *SCOPE), otlp_proto.Encoder(RESOURCE, *SCOPE, native=False)):
            with pytest.raises(Exception) as e:
                enc.encode([s])
            errors.append(type(e.value))
        assert errors[0] is errors[1]  # the same error either way: the Python encoder's


def test_no_reference_is_kept_or_lost():
    s = spans(big=True)[0]
    held = [s, s.attributes, s.events, s.links, s.name, s.trace_id, s.status_message, *s.attributes.values(),
            *s.attributes.keys(), *(e.attributes for e in s.events), *(e.name for e in s.events)]
    # not the interpreter's shared objects (small ints, bools, "", one-character strings:
    # anything may take or drop references to those)
    held = [o for o in held if sys.getrefcount(o) < 1000]
    assert len(held) >= 20
    before = [sys.getrefcount(o) for o in held]
    for _ in range(200):
        native.encode_spans([s], otlp_proto.any_value)
    for _ in range(200):
        native.encode_spans_json([s], otlp_json._str, otlp_json._kv_text)
    broken = KernelSpan("s", b"x" * 16, b"y" * 8, 1, 2, {"k": Sub("a")}, events=None)
    with pytest.raises(TypeError):
        native.encode_spans([broken], otlp_proto.any_value)
    with pytest.raises(TypeError):
        native.encode_spans_json([broken], otlp_json._str, otlp_json._kv_text)
    assert [sys.getrefcount(o) for o in held] == before
