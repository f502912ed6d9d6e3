"""The test OTLP sink and the Rotel relay, exercised with the real OTel SDK exporters.

Spans with fixed ids and timestamps are exported over OTLP/gRPC, OTLP/HTTP
(protobuf, gzip) and hand-written OTLP/JSON, straight to ``OtlpSink`` and
through the real Rotel relay, and compared field by field with the complete
expected flattened output.
"""

from __future__ import annotations

import gzip
import json
import os
import socket
import threading
import urllib.error
import urllib.request

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpSpanExporter,
)
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    Link,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

from tests.support.otlp_sink import OtlpSink
from tests.support import rotel as rotel_module
from tests.support.rotel import RotelRelay, RotelStartError

TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
ROOT_ID = 0xB7AD6B7169203331
CHILD_ID = 0x00F067AA0BA902B7  # leading zeros must survive
LINKED_TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
LINKED_SPAN_ID = 0x53995C3F42CD8AD8
T0 = 1_700_000_000_123_456_789  # ns; odd digits catch any µs/ms rounding
RESOURCE = {"service.name": "kernelnet-test", "host.name": "sink-host"}
SCOPE = ("tests.otlp_sink", "1.2.3")
TIMEOUT = 10.0


def _ctx(trace_id: int, span_id: int, *, remote: bool = False, state=None) -> SpanContext:
    return SpanContext(
        trace_id=trace_id,
        span_id=span_id,
        is_remote=remote,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
        trace_state=state,
    )


def fixed_spans() -> list[ReadableSpan]:
    resource = Resource(RESOURCE)
    scope = InstrumentationScope(*SCOPE)
    root = ReadableSpan(
        name="net.rx",
        context=_ctx(TRACE_ID, ROOT_ID, state=TraceState([("kn", "r1")])),
        parent=None,
        resource=resource,
        attributes={
            "net.drop.reason": "TCP_CSUM",
            "net.bytes": 1448,
            "net.ratio": 0.25,
            "net.sampled": True,
            "net.ports": (443, 8443),
        },
        events=(Event("skb.free", {"skb.len": 60}, timestamp=T0 + 1_500),),
        kind=SpanKind.SERVER,
        status=Status(StatusCode.ERROR, "dropped"),
        start_time=T0,
        end_time=T0 + 2_500_003,
        instrumentation_scope=scope,
    )
    child = ReadableSpan(
        name="tcp.retransmit",
        context=_ctx(TRACE_ID, CHILD_ID),
        parent=_ctx(TRACE_ID, ROOT_ID),
        resource=resource,
        attributes={"tcp.state": "ESTABLISHED"},
        links=(
            Link(
                _ctx(LINKED_TRACE_ID, LINKED_SPAN_ID, remote=True, state=TraceState([("k", "v")])),
                {"link.reason": "socket-cookie"},
            ),
        ),
        kind=SpanKind.CLIENT,
        status=Status(StatusCode.OK),
        start_time=T0 + 1_000,
        end_time=T0 + 2_000_001,
        instrumentation_scope=scope,
    )
    return [root, child]


def expected_spans() -> dict[str, dict]:
    """Complete flattened form of fixed_spans(), keyed by name, without ``transport``/``flags``."""
    common = {
        "trace_id": "0af7651916cd43dd8448eb211c80319c",
        "resource": RESOURCE,
        "scope": SCOPE[0],
        "scope_version": SCOPE[1],
    }
    return {
        "net.rx": {
            **common,
            "span_id": "b7ad6b7169203331",
            "trace_state": "kn=r1",
            "parent_span_id": None,
            "name": "net.rx",
            "kind": 2,  # SPAN_KIND_SERVER
            "start_ns": T0,
            "end_ns": T0 + 2_500_003,
            "attributes": {
                "net.drop.reason": "TCP_CSUM",
                "net.bytes": 1448,
                "net.ratio": 0.25,
                "net.sampled": True,
                "net.ports": [443, 8443],
            },
            "status_code": 2,
            "status_message": "dropped",
            "events": [{"name": "skb.free", "time_ns": T0 + 1_500, "attributes": {"skb.len": 60}}],
            "links": [],
        },
        "tcp.retransmit": {
            **common,
            "span_id": "00f067aa0ba902b7",
            "trace_state": "",
            "parent_span_id": "b7ad6b7169203331",
            "name": "tcp.retransmit",
            "kind": 3,  # SPAN_KIND_CLIENT
            "start_ns": T0 + 1_000,
            "end_ns": T0 + 2_000_001,
            "attributes": {"tcp.state": "ESTABLISHED"},
            "status_code": 1,
            "status_message": "",
            "events": [],
            "links": [
                {
                    "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
                    "span_id": "53995c3f42cd8ad8",
                    "trace_state": "",  # the SDK 1.45 encoder does not encode a link's trace_state
                    # the SDK encoder sets only the OTLP is-remote bits (HAS_IS_REMOTE 0x100,
                    # IS_REMOTE 0x200), not the W3C sampled bit
                    "flags": 0x300,
                    "attributes": {"link.reason": "socket-cookie"},
                }
            ],
        },
    }


def assert_fixed_spans(spans: list[dict], transport: str) -> None:
    assert sorted(s["name"] for s in spans) == ["net.rx", "tcp.retransmit"]
    expected = expected_spans()
    for span in spans:
        assert span["transport"] == transport
        # OTLP "parent is local": HAS_IS_REMOTE (0x100) set, IS_REMOTE (0x200) clear
        assert span["flags"] == 0x100, span["name"]
        got = {k: v for k, v in span.items() if k not in ("transport", "flags")}
        assert got == expected[span["name"]]


def _by_count(n: int):
    return lambda spans: len(spans) >= n


def _post(url: str, body: bytes, headers: dict[str, str]):
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return response.status, response.headers.get("Content-Type"), response.read()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.headers.get("Content-Type"), err.read()


# A hand-written OTLP/JSON request: hex ids (one upper-case), int64 both as
# strings and as numbers, integer enums, every AnyValue variant, an unknown field.
OTLP_JSON = {
    "resourceSpans": [
        {
            "resource": {
                "attributes": [{"key": "service.name", "value": {"stringValue": "json-client"}}]
            },
            "scopeSpans": [
                {
                    "scope": {"name": "handwritten", "version": "0.1"},
                    "spans": [
                        {
                            "traceId": "5B8EFFF798038103D269B633813FC60C",
                            "spanId": "eee19b7ec3c1b174",
                            "parentSpanId": "eee19b7ec3c1b173",
                            "name": "json.span",
                            "kind": 4,
                            "startTimeUnixNano": "1544712660000000001",
                            "endTimeUnixNano": 1544712661000000002,
                            "attributes": [
                                {"key": "s", "value": {"stringValue": "x"}},
                                {"key": "i", "value": {"intValue": "-9007199254740993"}},
                                {"key": "d", "value": {"doubleValue": 1.5}},
                                {"key": "b", "value": {"boolValue": False}},
                                {"key": "raw", "value": {"bytesValue": "AAEC"}},
                                {
                                    "key": "arr",
                                    "value": {
                                        "arrayValue": {
                                            "values": [{"stringValue": "a"}, {"intValue": 7}]
                                        }
                                    },
                                },
                                {
                                    "key": "kv",
                                    "value": {
                                        "kvlistValue": {
                                            "values": [{"key": "n", "value": {"intValue": "3"}}]
                                        }
                                    },
                                },
                            ],
                            "events": [
                                {
                                    "timeUnixNano": "1544712660500000000",
                                    "name": "ev",
                                    "attributes": [{"key": "e", "value": {"intValue": "1"}}],
                                }
                            ],
                            "links": [
                                {
                                    "traceId": "0123456789abcdef0123456789abcdef",
                                    "spanId": "0000000000000001",
                                    "traceState": "a=b",
                                    "flags": 768,
                                    "attributes": [{"key": "l", "value": {"stringValue": "y"}}],
                                }
                            ],
                            "status": {"code": 2, "message": "bad"},
                            "someFutureField": {"ignored": True},
                        }
                    ],
                }
            ],
        }
    ]
}

EXPECTED_JSON_SPAN = {
    "trace_id": "5b8efff798038103d269b633813fc60c",
    "span_id": "eee19b7ec3c1b174",
    "parent_span_id": "eee19b7ec3c1b173",
    "trace_state": "",
    "flags": 0,
    "name": "json.span",
    "kind": 4,
    "start_ns": 1544712660000000001,
    "end_ns": 1544712661000000002,
    "attributes": {
        "s": "x",
        "i": -9007199254740993,
        "d": 1.5,
        "b": False,
        "raw": b"\x00\x01\x02",
        "arr": ["a", 7],
        "kv": {"n": 3},
    },
    "status_code": 2,
    "status_message": "bad",
    "events": [{"name": "ev", "time_ns": 1544712660500000000, "attributes": {"e": 1}}],
    "links": [
        {
            "trace_id": "0123456789abcdef0123456789abcdef",
            "span_id": "0000000000000001",
            "trace_state": "a=b",
            "flags": 768,
            "attributes": {"l": "y"},
        }
    ],
    "resource": {"service.name": "json-client"},
    "scope": "handwritten",
    "scope_version": "0.1",
}


# ------------------------------------------------------------------------------ sink


def test_grpc_exporter_spans_arrive_intact(otlp_sink: OtlpSink):
    exporter = GrpcSpanExporter(endpoint=otlp_sink.grpc_endpoint, timeout=5)
    try:
        assert exporter.export(fixed_spans()) is SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()
    spans = otlp_sink.wait_for(_by_count(2), timeout=TIMEOUT)
    assert_fixed_spans(spans, "grpc")
    assert otlp_sink.requests == 1
    assert otlp_sink.requests_by_transport == {"grpc": 1, "http-protobuf": 0, "http-json": 0}


def test_http_exporter_gzip_spans_arrive_intact(otlp_sink: OtlpSink):
    exporter = HttpSpanExporter(
        endpoint=otlp_sink.http_endpoint, timeout=5, compression=Compression.Gzip
    )
    try:
        assert exporter.export(fixed_spans()) is SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()
    spans = otlp_sink.wait_for(_by_count(2), timeout=TIMEOUT)
    assert_fixed_spans(spans, "http-protobuf")
    [(transport, headers)] = otlp_sink.request_metadata()
    assert transport == "http-protobuf"
    assert headers["content-encoding"] == "gzip"
    assert headers["content-type"] == "application/x-protobuf"


def test_tracer_provider_over_http_keeps_parentage_times_and_links(otlp_sink: OtlpSink):
    provider = TracerProvider(resource=Resource({"service.name": "sdk-client"}))
    provider.add_span_processor(
        SimpleSpanProcessor(HttpSpanExporter(endpoint=otlp_sink.http_endpoint, timeout=5))
    )
    tracer = provider.get_tracer("tests.sdk", "9.9")
    try:
        linked = _ctx(LINKED_TRACE_ID, LINKED_SPAN_ID, remote=True)
        with tracer.start_as_current_span(
            "outer", start_time=T0, end_on_exit=False, kind=SpanKind.PRODUCER
        ) as outer:
            inner = tracer.start_span(
                "inner", start_time=T0 + 7, links=[Link(linked, {"why": "batch"})]
            )
            inner.set_attribute("count", 23)
            inner.end(end_time=T0 + 11)
        outer.end(end_time=T0 + 13)
    finally:
        provider.shutdown()

    spans = {s["name"]: s for s in otlp_sink.wait_for(_by_count(2), timeout=TIMEOUT)}
    assert set(spans) == {"outer", "inner"}
    outer_ctx, inner_ctx = outer.get_span_context(), inner.get_span_context()
    assert spans["outer"]["trace_id"] == spans["inner"]["trace_id"] == f"{outer_ctx.trace_id:032x}"
    assert spans["outer"]["span_id"] == f"{outer_ctx.span_id:016x}"
    assert spans["inner"]["span_id"] == f"{inner_ctx.span_id:016x}"
    assert spans["outer"]["parent_span_id"] is None
    assert spans["inner"]["parent_span_id"] == spans["outer"]["span_id"]
    assert (spans["outer"]["start_ns"], spans["outer"]["end_ns"]) == (T0, T0 + 13)
    assert (spans["inner"]["start_ns"], spans["inner"]["end_ns"]) == (T0 + 7, T0 + 11)
    assert spans["outer"]["kind"] == 4  # SPAN_KIND_PRODUCER
    assert spans["inner"]["attributes"] == {"count": 23}
    [link] = spans["inner"]["links"]
    assert (link["trace_id"], link["span_id"]) == (f"{LINKED_TRACE_ID:032x}", f"{LINKED_SPAN_ID:016x}")
    assert link["attributes"] == {"why": "batch"}
    assert spans["inner"]["resource"]["service.name"] == "sdk-client"
    assert spans["inner"]["scope"] == "tests.sdk"
    # SimpleSpanProcessor exports each span on end: two requests, inner first
    assert otlp_sink.requests_by_transport["http-protobuf"] == 2
    assert [s["name"] for s in otlp_sink.spans()] == ["inner", "outer"]


def test_handwritten_otlp_json_post(otlp_sink: OtlpSink):
    status, content_type, body = _post(
        otlp_sink.http_endpoint,
        json.dumps(OTLP_JSON).encode(),
        {"Content-Type": "application/json; charset=utf-8"},
    )
    assert (status, content_type, json.loads(body)) == (200, "application/json", {})
    [span] = otlp_sink.wait_for(_by_count(1), timeout=TIMEOUT)
    assert span.pop("transport") == "http-json"
    assert span == EXPECTED_JSON_SPAN


def test_gzip_protobuf_post(otlp_sink: OtlpSink):
    payload = encode_spans(fixed_spans()).SerializeToString()
    status, content_type, body = _post(
        otlp_sink.http_endpoint,
        gzip.compress(payload),
        {"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"},
    )
    assert (status, content_type) == (200, "application/x-protobuf")
    assert trace_service_pb2.ExportTraceServiceResponse.FromString(body) is not None
    assert_fixed_spans(otlp_sink.wait_for(_by_count(2), timeout=TIMEOUT), "http-protobuf")
    [(_, raw)] = otlp_sink.export_requests()
    assert raw.SerializeToString() == payload


@pytest.mark.parametrize(
    ("path", "headers", "body", "status"),
    [
        ("/v1/traces", {"Content-Type": "application/json"}, b"{not json", 400),
        (
            "/v1/traces",
            {"Content-Type": "application/json"},
            json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz"}]}]}]}).encode(),
            400,
        ),
        ("/v1/traces", {"Content-Type": "application/x-protobuf"}, b"\xff\xff\xff", 400),
        (
            "/v1/traces",
            {"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"},
            b"not gzip",
            400,
        ),
        ("/v1/traces", {"Content-Type": "text/plain"}, b"hello", 415),
        ("/v1/logs", {"Content-Type": "application/x-protobuf"}, b"", 404),
    ],
    ids=["bad-json", "bad-hex-id", "bad-protobuf", "bad-gzip", "media-type", "path"],
)
def test_sink_rejects_bad_requests(otlp_sink: OtlpSink, path, headers, body, status):
    url = otlp_sink.http_endpoint.replace("/v1/traces", path)
    got_status, _, reply = _post(url, body, headers)
    assert got_status == status, reply
    assert otlp_sink.spans() == []
    assert otlp_sink.requests == 0
    assert [e.split()[0] for e in otlp_sink.errors] == [str(status)]


def test_empty_request_is_accepted(otlp_sink: OtlpSink):
    status, _, _ = _post(otlp_sink.http_endpoint, b"", {"Content-Type": "application/x-protobuf"})
    assert status == 200
    assert otlp_sink.requests_by_transport["http-protobuf"] == 1
    assert otlp_sink.spans() == []


def test_wait_for_times_out_with_summary(otlp_sink: OtlpSink):
    _post(otlp_sink.http_endpoint, json.dumps(OTLP_JSON).encode(), {"Content-Type": "application/json"})
    with pytest.raises(TimeoutError) as excinfo:
        otlp_sink.wait_for(_by_count(2), timeout=0.2)
    message = str(excinfo.value)
    assert "received 1 span(s) in 1 request(s)" in message
    assert "http-json=1" in message and "'json.span' x1" in message


def test_wait_for_wakes_on_arrival_from_another_thread(otlp_sink: OtlpSink):
    started = threading.Event()

    def send():
        started.wait(TIMEOUT)
        _post(otlp_sink.http_endpoint, json.dumps(OTLP_JSON).encode(), {"Content-Type": "application/json"})

    sender = threading.Thread(target=send)
    sender.start()
    try:

        def predicate(spans):
            started.set()  # first evaluation happens inside wait_for, before any span
            return any(s["name"] == "json.span" for s in spans)

        spans = otlp_sink.wait_for(predicate, timeout=TIMEOUT)
    finally:
        sender.join(TIMEOUT)
    assert [s["name"] for s in spans] == ["json.span"]


def test_sink_stop_releases_ports():
    sink = OtlpSink().start()
    grpc_port, http_port = sink.grpc_port, sink.http_port
    assert grpc_port and http_port and grpc_port != http_port
    sink.stop()
    for port in (grpc_port, http_port):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()


# ----------------------------------------------------------------------------- rotel


def _assert_stopped(pid: int) -> None:
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_rotel_grpc_in_to_sink(otlp_sink: OtlpSink, rotel_relay: RotelRelay):
    assert rotel_relay.grpc_endpoint != otlp_sink.grpc_endpoint
    exporter = GrpcSpanExporter(endpoint=rotel_relay.grpc_endpoint, timeout=5)
    try:
        assert exporter.export(fixed_spans()) is SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()
    # rotel forwards over gRPC whatever it received
    assert_fixed_spans(otlp_sink.wait_for(_by_count(2), timeout=TIMEOUT), "grpc")


def test_rotel_http_protobuf_in_to_sink(otlp_sink: OtlpSink, rotel_relay: RotelRelay):
    exporter = HttpSpanExporter(endpoint=rotel_relay.http_endpoint, timeout=5)
    try:
        assert exporter.export(fixed_spans()) is SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()
    assert_fixed_spans(otlp_sink.wait_for(_by_count(2), timeout=TIMEOUT), "grpc")
    assert otlp_sink.requests_by_transport["http-protobuf"] == 0  # it really went via rotel


def _json_with_string_times() -> dict:
    doc = json.loads(json.dumps(OTLP_JSON))
    span = doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    span["endTimeUnixNano"] = str(span["endTimeUnixNano"])
    return doc


def test_rotel_http_json_in_to_sink(otlp_sink: OtlpSink, rotel_relay: RotelRelay):
    # Known rotel 0.0.1-alpha10 deviation from the OTLP/JSON spec: a fixed64 time
    # given as a JSON number is rejected (400, empty body); strings are accepted.
    # If this starts passing, rotel was fixed: drop this check and the workaround.
    status, _, _ = _post(
        rotel_relay.http_endpoint, json.dumps(OTLP_JSON).encode(), {"Content-Type": "application/json"}
    )
    assert status == 400
    status, _, _ = _post(
        rotel_relay.http_endpoint,
        json.dumps(_json_with_string_times()).encode(),
        {"Content-Type": "application/json"},
    )
    assert status == 200
    [span] = otlp_sink.wait_for(_by_count(1), timeout=TIMEOUT)
    assert span.pop("transport") == "grpc"
    assert span == EXPECTED_JSON_SPAN


def test_rotel_relay_stops_its_process():
    with OtlpSink() as sink:
        with RotelRelay(sink.grpc_endpoint) as relay:
            pid = relay.pid
            assert pid is not None
            os.kill(pid, 0)  # running
        _assert_stopped(pid)
        assert "Starting Rotel" in relay.last_log


def test_rotel_start_failure_raises_with_log_tail():
    relay = RotelRelay("http://127.0.0.1:1", extra_args=["--no-such-flag"])
    with pytest.raises(RotelStartError) as excinfo:
        relay.start()
    # rotel's own complaint, read from its log (the command line alone would not say this)
    assert "unexpected argument '--no-such-flag'" in str(excinfo.value)
    assert relay.pid is None and relay.log_path is None  # process reaped, temp dir removed


def test_listening_port_ownership_check():
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        assert rotel_module._owned_by(os.getpid(), port)
        assert not rotel_module._owned_by(os.getppid(), port)
    assert not rotel_module._owned_by(os.getpid(), port)  # closed: nobody listens


def test_rotel_retries_when_a_port_is_taken(monkeypatch, otlp_sink: OtlpSink):
    # A stranger listens on the first port handed out: rotel cannot bind it,
    # exits, and start() retries with fresh ports.
    with socket.create_server(("127.0.0.1", 0)) as stranger:
        taken = stranger.getsockname()[1]
        picks = iter([taken])
        real_free_port = rotel_module._free_port
        monkeypatch.setattr(rotel_module, "_free_port", lambda: next(picks, None) or real_free_port())
        with RotelRelay(otlp_sink.grpc_endpoint) as relay:
            assert taken not in (relay.grpc_port, relay.http_port)
            assert relay.log_path.name == "rotel-2.out"  # second attempt
            exporter = GrpcSpanExporter(endpoint=relay.grpc_endpoint, timeout=5)
            try:
                assert exporter.export(fixed_spans()) is SpanExportResult.SUCCESS
            finally:
                exporter.shutdown()
            assert_fixed_spans(otlp_sink.wait_for(_by_count(2), timeout=TIMEOUT), "grpc")
