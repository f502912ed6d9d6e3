"""The hand-written OTLP encoders and the OtlpSink transport that sends their bytes.

Encoding: ``otlp_proto`` output is compared byte for byte with the SDK path
(``ReadableSpan`` -> ``encode_spans`` -> ``SerializeToString``) and decoded with the
official opentelemetry-proto classes field by field, on complete spans (parent,
events, links, status, every attribute type); the fast JSON Lines encoder is
compared with the ``json.dumps`` reference. Transport: ``OtlpSink`` against the
in-process receiver (gRPC, HTTP, gzip), the real Rotel relay, and small scripted
servers for retries, partial success and failures.
"""

from __future__ import annotations

import gzip
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from otel_kernelnet.export import otlp_json, otlp_proto
from otel_kernelnet.export.sinks import ExportPipeline, OtlpSink, OtlpTarget, parse_headers
from otel_kernelnet.spans import KernelSpan, SpanEvent, SpanLink
from tests.support.otlp_sink import OtlpSink as Receiver
from tests.support.otlp_sink import flatten_request
from tests.support.rotel import RotelRelay

T0 = 1_700_000_000_123_456_789
RESOURCE = {"service.name": "otel-kernelnet", "host.name": "h1", "k8s.pod.uid": "0f-1"}
SCOPE = ("otel-kernelnet", "0.1.0")
TID = bytes.fromhex("0af7651916cd43dd8448eb211c80319c")


def spans(big: bool = False) -> list[KernelSpan]:
    """Complete spans; ``big`` adds an int beyond int64, which the SDK drops (logging an
    error) and otlp_proto keeps, modulo 2**64 (a u64 cookie's bits)."""
    full = KernelSpan(
        name="kernel.skb.lifecycle", trace_id=TID, span_id=bytes.fromhex("00f067aa0ba902b7"),
        start_ns=T0, end_ns=T0 + 2_500_003,
        attributes={"kernelnet.kind": "skb", "kernelnet.socket.cookie": 4099, "kernelnet.skb.len": 0,
                    "negative": -23, **({"big.cookie": (1 << 64) - 5} if big else {}), "kernelnet.skb.has_socket": True,
                    "flag.off": False, "ratio": 0.25, "whole.float": 2.0, "ports": (443, 8443),
                    "names": ["a", "é"], "raw": b"\x00\x01", "unicode": "naïve ☃", "empty": ""},
        parent_span_id=bytes.fromhex("b7ad6b7169203331"), kind=2, status_code=2,
        status_message="dropped: NO_SOCKET",
        events=[SpanEvent(T0 + 1, "arrival", {"cpu": 1}), SpanEvent(T0 + 2, "read", {}),
                SpanEvent(T0 + 3, "drop", {"kernelnet.drop.reason": "NO_SOCKET", "ok": False, "x": 1.5})],
        links=[SpanLink(bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736"), bytes.fromhex("53995c3f42cd8ad8"),
                        {"link.reason": "softirq"}),
               SpanLink(b"\x01" * 16, b"\x02" * 8)])
    plain = KernelSpan("kernel.skb.drop", b"\x00" * 15 + b"\x01", b"\x00" * 7 + b"\x01", T0, T0, {"n": 1})
    ok = KernelSpan("kernel.tcp", b"\x11" * 16, b"\x22" * 8, T0 + 5, T0 + 9,
                    {"kernelnet.socket.cookie": 4099, "kernelnet.kind": "tcp.connect"}, kind=3, status_code=1)
    # same keys as `full` with values of another type that compare equal: the caches must not mix them
    mixed = KernelSpan("kernel.skb.drop", b"\x33" * 16, b"\x44" * 8, T0, T0,
                       {"kernelnet.skb.has_socket": 1, "kernelnet.skb.len": False, "whole.float": 2,
                        "kernelnet.socket.cookie": 4099.0},
                       events=[SpanEvent(T0 + 4, "arrival", {"cpu": True}), SpanEvent(T0 + 5, "arrival", {"cpu": 1.0}),
                               SpanEvent(T0 + 6, "arrival", {"cpu": 1})])
    return [full, plain, ok, mixed]


def sdk_bytes(batch: list[KernelSpan]) -> bytes:
    ref = OtlpSink.__new__(OtlpSink)  # only the SDK conversion (the reference), no transport
    ref._resource_attrs, ref._scope_pair = RESOURCE, SCOPE
    return encode_spans([ref._to_sdk(s) for s in batch]).SerializeToString()


@pytest.mark.parametrize("native", [True, False], ids=["c", "python"])
def test_bytes_equal_the_sdk_path(native):
    batch = spans()
    enc = otlp_proto.Encoder(RESOURCE, *SCOPE, native=native)
    first = enc.encode(batch)
    assert first == sdk_bytes(batch)
    assert enc.encode(batch) == first  # from the caches: the same bytes
    # each span alone, in another order: caches filled by other spans change nothing
    for s in reversed(batch):
        assert enc.encode([s]) == sdk_bytes([s])


def test_decoded_field_by_field():
    req = trace_service_pb2.ExportTraceServiceRequest.FromString(
        otlp_proto.encode_request(spans(big=True), RESOURCE, *SCOPE))
    [rs] = req.resource_spans
    [ss] = rs.scope_spans
    assert (ss.scope.name, ss.scope.version) == SCOPE
    full, plain, ok, mixed = flatten_request(req, "x")
    assert full == {
        "trace_id": TID.hex(), "span_id": "00f067aa0ba902b7", "parent_span_id": "b7ad6b7169203331",
        "trace_state": "", "flags": 0x300, "name": "kernel.skb.lifecycle", "kind": 2,
        "start_ns": T0, "end_ns": T0 + 2_500_003,
        "attributes": {"kernelnet.kind": "skb", "kernelnet.socket.cookie": 4099, "kernelnet.skb.len": 0,
                       "negative": -23, "big.cookie": -5, "kernelnet.skb.has_socket": True,
                       "flag.off": False, "ratio": 0.25, "whole.float": 2.0, "ports": [443, 8443],
                       "names": ["a", "é"], "raw": b"\x00\x01", "unicode": "naïve ☃", "empty": ""},
        "status_code": 2, "status_message": "dropped: NO_SOCKET",
        "events": [{"name": "arrival", "time_ns": T0 + 1, "attributes": {"cpu": 1}},
                   {"name": "read", "time_ns": T0 + 2, "attributes": {}},
                   {"name": "drop", "time_ns": T0 + 3,
                    "attributes": {"kernelnet.drop.reason": "NO_SOCKET", "ok": False, "x": 1.5}}],
        "links": [{"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "53995c3f42cd8ad8",
                   "trace_state": "", "flags": 0x300, "attributes": {"link.reason": "softirq"}},
                  {"trace_id": "01" * 16, "span_id": "02" * 8, "trace_state": "", "flags": 0x300,
                   "attributes": {}}],
        "resource": RESOURCE, "scope": SCOPE[0], "scope_version": SCOPE[1], "transport": "x",
    }
    assert (plain["flags"], plain["parent_span_id"], plain["kind"], plain["status_code"]) == (0x100, None, 1, 0)
    assert (ok["kind"], ok["status_code"], ok["status_message"]) == (3, 1, "")
    got = req.resource_spans[0].scope_spans[0].spans[3].attributes
    assert [kv.value.WhichOneof("value") for kv in got] == ["int_value", "bool_value", "int_value", "double_value"]
    assert mixed["attributes"] == {"kernelnet.skb.has_socket": 1, "kernelnet.skb.len": False, "whole.float": 2,
                                   "kernelnet.socket.cookie": 4099.0}
    ev = req.resource_spans[0].scope_spans[0].spans[3].events
    assert [e.attributes[0].value.WhichOneof("value") for e in ev] == ["bool_value", "double_value", "int_value"]


def test_empty_batch_and_bounded_cache():
    assert otlp_proto.encode_request([], RESOURCE, *SCOPE) == b""
    enc = otlp_proto.Encoder(RESOURCE, *SCOPE, per_key_max=8, events_max=8, native=False)  # the caches
    batch = [KernelSpan("s", b"\x01" * 16, b"\x01" * 8, i, i, {"i": i, "s": str(i), "r": i % 3, "t": "x"},
                        events=[SpanEvent(i, "e", {"i": i})]) for i in range(1, 50)]
    assert enc.encode(batch) == sdk_bytes(batch)
    assert enc.encode(batch) == sdk_bytes(batch)  # from the cache, where cached
    # values that do not repeat stop being cached; the ones that repeat stay
    assert enc.attrs.uncached == {"i", "s"} and sorted(enc.attrs.by_key) == ["r", "t"]
    assert sum(len(d) for d in enc.attrs.by_key.values()) == 4
    assert enc.events.clears > 0 and len(enc.events.entries) <= 8


def test_attr_cache_bounds():
    from otel_kernelnet.export.attr_cache import AttrCache
    calls = []
    c = AttrCache(lambda k, v: calls.append((k, v)) or f"{k}={v}", per_key_max=3, keys_max=4)
    assert [c.encode({"a": v}) for v in (1, 2, 3, 1)] == [["a=1"], ["a=2"], ["a=3"], ["a=1"]]
    assert c.by_key["a"] == {1: "a=1", 2: "a=2", 3: "a=3"} and len(calls) == 3  # the second 1: a hit
    assert c.encode({"a": 4}) == ["a=4"] and "a" not in c.by_key and c.uncached == {"a"}  # freed
    assert c.encode({"a": 1}) == ["a=1"] and "a" not in c.by_key  # written directly from then on
    # a bool is kept apart from its int (True == 1), a float is never kept (1.0 == 1)
    assert c.encode({"b": 1, "c": True, "d": 1.0}) == ["b=1", "c=True", "d=1.0"]
    assert c.bools == {("c", True): "c=True"} and "d" not in c.by_key
    assert c.encode({"c": 1, "b": True}) == ["c=1", "b=True"]
    assert c.clears == 0 and sorted(c.by_key) == ["b", "c"]
    c.encode({"e": 0, "f": 0})  # a fifth key: everything forgotten, nothing unbounded
    assert c.clears == 1 and c.by_key == {"f": {0: "f=0"}} and c.uncached == set() and c.bools == {}
    assert len(calls) == 12


def test_varints_and_partial_success_reply():
    for n in (0, 1, 127, 128, 300, 16383, 16384, 1 << 35, (1 << 63) - 1, -1, -(1 << 63)):
        from google.protobuf.internal.encoder import _VarintBytes  # the reference varint writer
        assert otlp_proto.varint(n) == _VarintBytes(n & ((1 << 64) - 1)), n
    resp = trace_service_pb2.ExportTraceServiceResponse()
    resp.partial_success.rejected_spans = 7
    resp.partial_success.error_message = "too old"
    assert otlp_proto.partial_success(resp.SerializeToString()) == (7, "too old")


def test_fast_json_equals_the_reference():
    batch = spans(big=True)
    batch[0].attributes["nan"] = float("nan")
    batch[0].attributes['quote"\n'] = "tab\there"
    a = otlp_json.encode_line(batch, RESOURCE, *SCOPE)
    assert a == otlp_json.encode_line_reference(batch, RESOURCE, *SCOPE)
    assert otlp_json.encode_line(batch, RESOURCE, *SCOPE) == a  # cached
    batch[0].attributes["non-ascii é"] = "ünïcode \ud800 \x00"
    batch[0].attributes["big"] = -(1 << 63)
    assert otlp_json.encode_line(batch, RESOURCE, *SCOPE) == otlp_json.encode_line_reference(batch, RESOURCE, *SCOPE)
    enc = otlp_json.Encoder(RESOURCE, *SCOPE, per_key_max=4, events_max=4, native=False)  # the caches
    many = [KernelSpan("s", b"\x01" * 16, b"\x01" * 8, i, i, {"i": i, "b": i % 2 == 0, "r": i % 2},
                       events=[SpanEvent(i, "e", {"i": i}), SpanEvent(i + 1, "f", {"c": i % 2, "b": True}),
                               SpanEvent(i + 2, "g", {"c": (i % 2 == 1) if i % 3 else i % 2})])
            for i in range(1, 30)]
    for _ in range(2):
        assert enc.encode_line(many) == otlp_json.encode_line_reference(many, RESOURCE, *SCOPE)
    assert enc.events.clears > 0 and len(enc.events.entries) <= 4
    assert enc.attrs.uncached == {"i"} and enc.attrs.by_key == {"r": {1: '{"key":"r","value":{"intValue":"1"}}',
                                                                       0: '{"key":"r","value":{"intValue":"0"}}'}}


def test_headers_syntax():
    assert parse_headers("a=1,b = x%3Dy , ,c") == {"a": "1", "b": "x=y"}
    assert parse_headers(None) == {}


# ---------------------------------------------------------------------- transport
def _sink(endpoint: str, protocol: str, why: str = "--otlp-endpoint", **env) -> OtlpSink:
    return OtlpSink(OtlpTarget(endpoint, protocol, why), RESOURCE, SCOPE, timeout_s=env.pop("timeout_s", 5),
                    environ=env)


@pytest.mark.parametrize("protocol,gzip_on", [("grpc", False), ("grpc", True), ("http/protobuf", False),
                                              ("http/protobuf", True)])
def test_sink_delivers_to_the_receiver(otlp_sink: Receiver, protocol, gzip_on):
    endpoint = otlp_sink.grpc_endpoint if protocol == "grpc" else otlp_sink.http_endpoint.rsplit("/v1", 1)[0]
    env = {"OTEL_EXPORTER_OTLP_COMPRESSION": "gzip"} if gzip_on else {}
    sink = _sink(endpoint, protocol, OTEL_EXPORTER_OTLP_HEADERS="x-tenant=t1", **env)
    try:
        assert sink.write(spans()) and sink.write(spans()[:1])  # two requests, one connection
    finally:
        sink.close()
    got = otlp_sink.wait_for(lambda s: len(s) >= 5, timeout=10)
    assert [s["name"] for s in got] == [s.name for s in spans()] + ["kernel.skb.lifecycle"]
    [(_, req), _] = otlp_sink.export_requests()
    assert req.SerializeToString() == sdk_bytes(spans())
    transport = "grpc" if protocol == "grpc" else "http-protobuf"
    assert otlp_sink.requests_by_transport[transport] == 2
    headers = dict(otlp_sink.request_metadata()[0][1])
    assert headers["x-tenant"] == "t1"
    if protocol == "http/protobuf":
        assert headers.get("content-encoding") == ("gzip" if gzip_on else None)
    assert sink.retries == 0 and sink.rejected_spans == 0 and sink.last_error == ""


def test_env_endpoint_gets_the_traces_path(otlp_sink: Receiver):
    base = otlp_sink.http_endpoint.rsplit("/v1", 1)[0]
    sink = _sink(base, "http/protobuf", "OTEL_EXPORTER_OTLP_ENDPOINT")
    try:
        assert sink.write(spans()[:1])
    finally:
        sink.close()
    assert sink.description.startswith(f"OTLP http/protobuf to {base}/v1/traces")
    assert len(otlp_sink.wait_for(lambda s: len(s) >= 1, timeout=10)) == 1


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_sink_through_rotel(otlp_sink: Receiver, rotel_relay: RotelRelay, protocol):
    endpoint = rotel_relay.grpc_endpoint if protocol == "grpc" else rotel_relay.http_endpoint
    sink = _sink(endpoint, protocol)
    try:
        assert sink.write(spans())
    finally:
        sink.close()
    got = {s["name"]: s for s in otlp_sink.wait_for(lambda s: len(s) >= 4, timeout=15)}
    direct = {s["name"]: s for s in flatten_request(
        trace_service_pb2.ExportTraceServiceRequest.FromString(sdk_bytes(spans())), "grpc")}
    assert got.keys() == direct.keys()
    for name in got:  # rotel keeps every field (the "mixed" span shares a name: compare the last one)
        assert got[name] == direct[name]


class Scripted:
    """An OTLP/HTTP endpoint that answers from a script of (status, headers, body)."""

    def __init__(self, script):
        self.script = list(script)
        self.bodies: list[bytes] = []
        outer = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                outer.bodies.append(body)
                status, headers, reply = outer.script.pop(0) if outer.script else (200, {}, b"")
                self.send_response(status)
                for k, v in {"Content-Type": "application/x-protobuf", **headers}.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _status_body(message: str) -> bytes:
    from google.rpc import status_pb2
    return status_pb2.Status(code=3, message=message).SerializeToString()


def test_http_retries_retryable_codes_then_succeeds():
    srv = Scripted([(503, {}, b""), (429, {"Retry-After": "0"}, b""), (200, {}, b"")])
    sink = _sink(srv.url, "http/protobuf")
    try:
        assert sink.write(spans())
        assert sink.retries == 2 and len(srv.bodies) == 3
        assert srv.bodies[0] == srv.bodies[2] == sdk_bytes(spans())
    finally:
        sink.close()
        srv.close()


def test_http_non_retryable_fails_once_and_says_why():
    srv = Scripted([(400, {}, _status_body("bad span"))])
    sink = _sink(srv.url, "http/protobuf")
    p = ExportPipeline(sink, max_batch=4, max_delay_s=0.01)
    try:
        for s in spans():
            p.submit(s)
    finally:
        p.close()
        srv.close()
    assert (p.exported, p.failed, len(srv.bodies)) == (0, 4, 1)
    assert p.last_error == "HTTP 400 Bad Request: bad span"


def test_partial_success_is_counted_as_failed_spans():
    resp = trace_service_pb2.ExportTraceServiceResponse()
    resp.partial_success.rejected_spans = 3
    resp.partial_success.error_message = "span too old"
    srv = Scripted([(200, {}, resp.SerializeToString())])
    sink = _sink(srv.url, "http/protobuf")
    p = ExportPipeline(sink, max_batch=4, max_delay_s=0.01)
    try:
        for s in spans():
            p.submit(s)
    finally:
        p.close()
        srv.close()
    assert (p.exported, p.failed, sink.rejected_spans) == (1, 3, 3)
    assert sink.last_error == "partial success: 3 span(s) rejected: span too old"


def test_unreachable_endpoint_gives_up_within_the_timeout():
    import socket
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]  # closed at once: connections are refused
    sink = _sink(f"http://127.0.0.1:{port}", "http/protobuf", timeout_s=0.5)
    try:
        assert not sink.write(spans())
    finally:
        sink.close()
    assert "ConnectionRefusedError" in sink.last_error and "gave up after 0.5 s" in sink.last_error
    assert sink.retries >= 1


def test_grpc_retries_unavailable_and_fails_on_invalid_argument():
    script = [grpc.StatusCode.UNAVAILABLE, None, grpc.StatusCode.INVALID_ARGUMENT]
    got: list[bytes] = []

    def export(request: bytes, context):
        got.append(request)
        code = script.pop(0)
        if code is not None:
            context.abort(code, f"scripted {code.name}")
        return b""

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        "opentelemetry.proto.collector.trace.v1.TraceService",
        {"Export": grpc.unary_unary_rpc_method_handler(export)})])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    sink = _sink(f"http://127.0.0.1:{port}", "grpc")
    try:
        assert sink.write(spans())
        assert sink.retries == 1 and got[0] == got[1] == sdk_bytes(spans())
        assert not sink.write(spans())
        assert sink.last_error == "gRPC INVALID_ARGUMENT: scripted INVALID_ARGUMENT"
        assert len(got) == 3
    finally:
        sink.close()
        server.stop(None).wait(5)


def test_module_examples():
    import doctest
    for mod in (otlp_proto,):
        failures, tried = doctest.testmod(mod)
        assert tried and not failures
