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
