"""Forwarding application spans: unchanged to a real OTLP receiver (gRPC and HTTP), as
JSON Lines into the store, and a backend that is down costs bounded retries and
counted drops, never a blocked submit.
"""

from __future__ import annotations

import json
import socket
import threading

import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2

from otel_kernelnet.export.forward import (
    Forwarder, GrpcTarget, HttpTarget, Permanent, Retryable, StoreTarget, request_json_line,
)
from otel_kernelnet.export.sinks import JsonLinesSink
from tests.unit.test_receiver import span_request


def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: nothing listens there


@pytest.mark.parametrize("kind", ["grpc", "http"])
def test_forwarded_spans_arrive_unchanged(otlp_sink, kind):  # noqa: F811
    target = (GrpcTarget(otlp_sink.grpc_endpoint, 5) if kind == "grpc" else HttpTarget(otlp_sink.http_endpoint, 5))
    fw = Forwarder(target)
    req = span_request(cookie=99, extra_attrs={"http.route": "/r"})
    assert fw.submit(req, 1)
    [span] = otlp_sink.wait_for(lambda s: len(s) >= 1, timeout=10)
    fw.close()
    assert span["trace_id"] == "01" * 16 and span["span_id"] == "02" * 8
    assert span["attributes"] == {"kernelnet.socket.cookie": 99, "http.route": "/r"}
    assert (span["start_ns"], span["end_ns"], span["kind"]) == (1000, 2000, 2)
    assert fw.stats.spans == 1 and fw.stats.failed_spans == 0


class Flaky:
    description = "flaky"

    def __init__(self, fail: int, exc=Retryable):
        self.fail, self.exc, self.calls = fail, exc, 0

    def deliver(self, req):
        self.calls += 1
        if self.calls <= self.fail:
            raise self.exc("backend down")

    def close(self):
        pass


def test_retryable_failures_are_retried_with_backoff_then_delivered():
    t = Flaky(fail=2)
    fw = Forwarder(t, backoff_s=0.001, max_backoff_s=0.002)
    fw.submit(span_request(), 1)
    fw.close(timeout_s=5)
    assert t.calls == 3 and fw.stats.retries == 2 and fw.stats.spans == 1 and fw.stats.failed_spans == 0


def test_permanent_failure_and_exhausted_retries_are_counted_drops():
    t = Flaky(fail=99)
    fw = Forwarder(t, max_attempts=3, backoff_s=0.001)
    fw.submit(span_request(), 1)
    fw.close(timeout_s=5)
    assert t.calls == 3 and fw.stats.failed_spans == 1
    p = Flaky(fail=1, exc=Permanent)
    fw = Forwarder(p, backoff_s=0.001)
    fw.submit(span_request(), 4)
    fw.close(timeout_s=5)
    assert p.calls == 1 and fw.stats.failed_spans == 4


def test_backend_down_bounded_queue_counted_never_blocking():
    gate = threading.Event()

    class Stuck:
        description = "stuck"

        def deliver(self, req):
            gate.wait(10)
            raise Retryable("down")

        def close(self):
            pass

    fw = Forwarder(Stuck(), max_spans=10, max_attempts=1)
    accepted = [fw.submit(span_request(), 3) for _ in range(6)]
    # the first is being delivered (still queued), then 3 more fit in 10 spans; the rest refused
    assert accepted == [True, True, True, False, False, False]
    assert fw.stats.queue_full_spans == 9
    gate.set()
    fw.close(timeout_s=5)
    assert fw.stats.failed_spans + fw.stats.unsent_spans == 9 and fw.stats.spans == 0


def test_real_dead_backends_fail_retryably():
    req = span_request()
    with pytest.raises(Retryable):
        HttpTarget(f"http://127.0.0.1:{dead_port()}", 2).deliver(req)
    g = GrpcTarget(f"http://127.0.0.1:{dead_port()}", 2)
    with pytest.raises(Retryable):
        g.deliver(req)
    g.close()


def test_store_target_writes_otlp_json_lines_with_hex_ids(tmp_path):
    sink = JsonLinesSink(tmp_path, {"service.name": "otel-kernelnet"}, ("otel-kernelnet", "0"))
    req = span_request(cookie=5)
    req.resource_spans[0].resource.attributes.add(key="service.name").value.string_value = "shop"
    StoreTarget(sink).deliver(req)
    sink.close()
    [f] = list(tmp_path.glob("traces-*.jsonl"))
    doc = json.loads(f.read_text())
    rs = doc["resourceSpans"][0]
    assert rs["resource"]["attributes"] == [{"key": "service.name", "value": {"stringValue": "shop"}}]
    span = rs["scopeSpans"][0]["spans"][0]
    assert span["traceId"] == "01" * 16 and span["spanId"] == "02" * 8 and span["kind"] == 2
    assert span["attributes"] == [{"key": "kernelnet.socket.cookie", "value": {"intValue": "5"}}]
    assert request_json_line(req).endswith(b"\n")


def test_sink_roundtrip_through_the_receiver_format(tmp_path):
    """A store line decodes back to the same request (what the analysis reads)."""
    from otel_kernelnet.receiver.ingest import decode_json
    req = span_request(cookie=12)
    line = request_json_line(req)
    assert decode_json(line) == req
    assert isinstance(decode_json(line), trace_service_pb2.ExportTraceServiceRequest)


# --- the store's JSON, against json_format's ---------------------------------------------
def _fields(msg) -> set[str]:
    return {f.name for f in msg.DESCRIPTOR.fields}


_KEY_VALUE_FIELDS = _fields(common_pb2.KeyValue)
_ANY_VALUE_FIELDS = _fields(common_pb2.AnyValue)


def _any_values():
    from hypothesis import strategies as st
    scalar = st.one_of(
        st.builds(lambda v: {"string_value": v}, st.text(max_size=8)),
        st.builds(lambda v: {"bool_value": v}, st.booleans()),
        st.builds(lambda v: {"int_value": v}, st.integers(-(1 << 63), (1 << 63) - 1)),
        st.builds(lambda v: {"double_value": v}, st.floats(allow_nan=True, allow_infinity=True)),
        st.builds(lambda v: {"bytes_value": v}, st.binary(max_size=8)),
        *([st.builds(lambda v: {"string_value_strindex": v}, st.integers(0, (1 << 31) - 1))]
          if "string_value_strindex" in _ANY_VALUE_FIELDS else []),
        st.just({}))  # a KeyValue whose AnyValue is set but empty
    return st.recursive(scalar, lambda inner: st.one_of(
        st.builds(lambda vs: {"array_value": {"values": vs}}, st.lists(inner, max_size=3)),
        st.builds(lambda kvs: {"kvlist_value": {"values": [{"key": k, "value": v} for k, v in kvs]}},
                  st.lists(st.tuples(st.text(max_size=4), inner), max_size=3))), max_leaves=6)


def _key_values(values):
    """KeyValue dicts: a key, a value, and (where the proto has it) a key_strindex."""
    from hypothesis import strategies as st
    extra = {"key_strindex": st.integers(0, (1 << 31) - 1)} if "key_strindex" in _KEY_VALUE_FIELDS else {}
    return st.lists(st.fixed_dictionaries({}, optional={"key": st.text(max_size=6), "value": values, **extra}),
                    max_size=4)


def _requests():
    from hypothesis import strategies as st
    attrs = _key_values(_any_values())
    u32, u64 = st.integers(0, (1 << 32) - 1), st.integers(0, (1 << 64) - 1)
    event = st.fixed_dictionaries({}, optional={"time_unix_nano": u64, "name": st.text(max_size=5),
                                                "attributes": attrs, "dropped_attributes_count": u32})
    link = st.fixed_dictionaries({}, optional={
        "trace_id": st.binary(min_size=16, max_size=16), "span_id": st.binary(min_size=8, max_size=8),
        "trace_state": st.text(max_size=5), "attributes": attrs, "dropped_attributes_count": u32, "flags": u32})
    span = st.fixed_dictionaries({}, optional={
        "trace_id": st.binary(min_size=16, max_size=16), "span_id": st.binary(min_size=8, max_size=8),
        "trace_state": st.text(max_size=5), "parent_span_id": st.binary(max_size=8), "flags": u32,
        "name": st.text(max_size=8), "kind": st.integers(0, 7), "start_time_unix_nano": u64,
        "end_time_unix_nano": u64, "attributes": attrs, "dropped_attributes_count": u32,
        "events": st.lists(event, max_size=2), "dropped_events_count": u32, "links": st.lists(link, max_size=2),
        "dropped_links_count": u32,
        "status": st.fixed_dictionaries({}, optional={"message": st.text(max_size=5), "code": st.integers(0, 3)})})
    scope = st.fixed_dictionaries({}, optional={"name": st.text(max_size=5), "version": st.text(max_size=3),
                                                "attributes": attrs, "dropped_attributes_count": u32})
    scope_spans = st.fixed_dictionaries({}, optional={"scope": scope, "spans": st.lists(span, max_size=3),
                                                      "schema_url": st.text(max_size=5)})
    resource = st.fixed_dictionaries({}, optional={"attributes": attrs, "dropped_attributes_count": u32})
    rs = st.fixed_dictionaries({}, optional={"resource": resource, "scope_spans": st.lists(scope_spans, max_size=2),
                                             "schema_url": st.text(max_size=5)})

    def build(doc: dict) -> trace_service_pb2.ExportTraceServiceRequest:
        req = trace_service_pb2.ExportTraceServiceRequest()
        for r in doc["resource_spans"]:
            _fill(req.resource_spans.add(), r)
        return req

    def _fill(msg, d):  # a dict of Python values into a message, field by field
        for k, v in d.items():
            fd = msg.DESCRIPTOR.fields_by_name[k]
            if fd.message_type is not None and fd.is_repeated:
                for item in v:
                    _fill(getattr(msg, k).add(), item)
            elif fd.message_type is not None:
                sub = getattr(msg, k)
                sub.SetInParent()
                _fill(sub, v)
            else:
                setattr(msg, k, v)
    return st.fixed_dictionaries({"resource_spans": st.lists(rs, max_size=2)}).map(build)


def test_the_store_line_is_json_formats_with_hex_ids():
    """Generated requests with every field of the trace messages and every AnyValue kind
    (NaN, infinities, 64-bit integers, bytes, nesting, set-but-empty values): the fast
    conversion writes the same line as json_format's MessageToDict with the ids made
    hex, which it replaced."""
    from hypothesis import given, settings

    from otel_kernelnet.export.forward import _reference_doc

    @settings(max_examples=300, deadline=None)
    @given(_requests())
    def check(req):
        want = (json.dumps(_reference_doc(req), separators=(",", ":")) + "\n").encode()
        assert request_json_line(req) == want

    check()
