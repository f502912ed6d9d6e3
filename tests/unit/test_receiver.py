"""The OTLP receiver on loopback (ports chosen by the kernel): real SDK exporters in,
clean errors for bad input, retryable refusal on backpressure, fuzzed bodies.
"""

from __future__ import annotations

import gzip
import json
import socket
import urllib.error
import urllib.request

import grpc
import pytest
from google.rpc import status_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind

from otel_kernelnet.receiver import Ingest, OtlpReceiver

Request = trace_service_pb2.ExportTraceServiceRequest


class Harness:
    def __init__(self, max_bytes: int = 1 << 20, accept: bool = True):
        self.forwarded: list[tuple[Request, int]] = []
        self.app: list = []
        self.accept = accept
        self.ingest = Ingest(max_bytes, forward=self._forward, add_app_spans=self.app.extend)
        self.rx = OtlpReceiver(self.ingest, "127.0.0.1:0", "127.0.0.1:0")
        assert self.rx.start() == []

    def _forward(self, req, n):
        if not self.accept:
            return False
        self.forwarded.append((req, n))
        return True

    @property
    def http_url(self) -> str:
        return self.rx.http.endpoint

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.rx.grpc.port}"

    def post(self, body: bytes, ctype: str = "application/x-protobuf", path: str = "/v1/traces", **headers):
        req = urllib.request.Request(f"http://127.0.0.1:{self.rx.http.port}{path}", data=body,
                                     headers={"Content-Type": ctype, **headers}, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, r.headers.get("Content-Type"), r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers.get("Content-Type"), e.read()

    def grpc_export(self, raw: bytes, compression=None):
        with grpc.insecure_channel(self.grpc_target) as ch:
            fn = ch.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                                request_serializer=None, response_deserializer=trace_service_pb2.ExportTraceServiceResponse.FromString)
            return fn(raw, timeout=10, compression=compression)


@pytest.fixture
def rx():
    h = Harness()
    try:
        yield h
    finally:
        h.rx.stop()


def span_request(cookie=4242, trace_id=b"\x01" * 16, span_id=b"\x02" * 8, extra_attrs=None) -> Request:
    req = Request()
    s = req.resource_spans.add().scope_spans.add().spans.add()
    s.trace_id, s.span_id, s.name, s.kind = trace_id, span_id, "GET /x", 2
    s.start_time_unix_nano, s.end_time_unix_nano = 1_000, 2_000
    if cookie is not None:
        kv = s.attributes.add()
        kv.key, kv.value.int_value = "kernelnet.socket.cookie", cookie
    for k, v in (extra_attrs or {}).items():
        kv = s.attributes.add()
        kv.key = k
        if isinstance(v, int):
            kv.value.int_value = v
        else:
            kv.value.string_value = v
    return req


def sdk_provider(exporter) -> TracerProvider:
    tp = TracerProvider(resource=Resource({"service.name": "app"}))
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    return tp


def emit_two(tp: TracerProvider) -> None:
    tr = tp.get_tracer("t")
    with tr.start_as_current_span("server", kind=SpanKind.SERVER, attributes={"kernelnet.socket.cookie": 77}):
        with tr.start_as_current_span("inner"):
            pass


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_sdk_exporters_deliver_and_cookie_spans_reach_the_join(rx, transport):
    if transport == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        exp = OTLPSpanExporter(endpoint=f"http://{rx.grpc_target}", insecure=True)
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        exp = OTLPSpanExporter(endpoint=rx.http_url)
    tp = sdk_provider(exp)
    emit_two(tp)
    tp.shutdown()
    names = [s.name for req, _ in rx.forwarded for rs in req.resource_spans for ss in rs.scope_spans for s in ss.spans]
    assert sorted(names) == ["inner", "server"]
    assert [a.name for a in rx.app] == ["server"] and rx.app[0].cookie == 77
    assert rx.ingest.stats.spans == 2 and rx.ingest.stats.bad_requests == 0


def test_forwarded_request_is_unchanged(rx):
    req = span_request(extra_attrs={"http.route": "/x"})
    req.resource_spans[0].resource.attributes.add(key="service.name").value.string_value = "shop"
    status, _ct, body = rx.post(req.SerializeToString())
    assert status == 200
    assert trace_service_pb2.ExportTraceServiceResponse.FromString(body) == trace_service_pb2.ExportTraceServiceResponse()
    [(fwd, n)] = rx.forwarded
    assert n == 1 and fwd.SerializeToString() == req.SerializeToString()


def test_json_and_gzip(rx):
    doc = {"resourceSpans": [{"scopeSpans": [{"spans": [{
        "traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "b7ad6b7169203331", "name": "GET",
        "kind": 2, "startTimeUnixNano": "1000", "endTimeUnixNano": 2000,
        "attributes": [{"key": "kernelnet.socket.cookie", "value": {"stringValue": "18446744073709551615"}}]}]}]}]}
    status, ctype, body = rx.post(gzip.compress(json.dumps(doc).encode()), "application/json", **{"Content-Encoding": "gzip"})
    assert (status, ctype) == (200, "application/json") and json.loads(body) == {}
    [a] = rx.app
    assert a.trace_id.hex() == "0af7651916cd43dd8448eb211c80319c" and a.cookie == 2 ** 64 - 1
    assert (a.start_ns, a.end_ns) == (1000, 2000)


def test_invalid_ids_are_rejected_as_partial_success(rx):
    req = span_request()
    bad = req.resource_spans[0].scope_spans[0].spans.add()
    bad.trace_id, bad.span_id, bad.name = b"\x00" * 16, b"\x01" * 8, "zero trace id"
    status, _ct, body = rx.post(req.SerializeToString())
    resp = trace_service_pb2.ExportTraceServiceResponse.FromString(body)
    assert status == 200 and resp.partial_success.rejected_spans == 1
    assert "trace_id" in resp.partial_success.error_message
    [(fwd, n)] = rx.forwarded
    assert n == 1 and [s.name for s in fwd.resource_spans[0].scope_spans[0].spans] == ["GET /x"]


def test_four_tuple_attributes_are_indexed_when_there_is_no_cookie(rx):
    req = span_request(cookie=None, extra_attrs={"network.peer.address": "10.1.0.2", "network.peer.port": 5555,
                                                 "server.port": 8080})
    assert rx.post(req.SerializeToString())[0] == 200
    [a] = rx.app
    assert a.cookie is None and a.tuple_key == ("10.1.0.2", 5555, 8080)


@pytest.mark.parametrize("body,ctype,code,words", [
    (b"\xff\xff\xff", "application/x-protobuf", 400, "protobuf"),
    (b"{not json", "application/json", 400, "not JSON"),
    (b"[1, 2]", "application/json", 400, "object"),
    (json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz"}]}]}]}).encode(), "application/json", 400, "hex"),
    (json.dumps({"resourceSpans": "nope"}).encode(), "application/json", 400, "OTLP/JSON"),
    (b"[" * 5000 + b"]" * 5000, "application/json", 400, ""),
    (b"x", "text/plain", 415, "Content-Type"),
])
def test_bad_http_bodies_get_a_clean_error_with_a_message(rx, body, ctype, code, words):
    status, rctype, rbody = rx.post(body, ctype)
    assert status == code
    if rctype == "application/json":
        msg = json.loads(rbody)["message"]
    else:
        msg = status_pb2.Status.FromString(rbody).message
    assert words in msg and msg
    assert rx.forwarded == []


def test_wrong_path_method_and_encoding(rx):
    assert rx.post(b"", path="/v1/metrics")[0] == 404
    assert rx.post(b"abc", **{"Content-Encoding": "br"})[0] == 415
    assert rx.post(b"not gzip", **{"Content-Encoding": "gzip"})[0] == 400
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(rx.http_url, timeout=5)
    assert e.value.code == 405


def test_oversized_is_413_and_resource_exhausted():
    h = Harness(max_bytes=1000)
    try:
        assert h.post(b"\x00" * 1001)[0] == 413
        bomb = gzip.compress(b"\x00" * 100_000)  # small on the wire, large decompressed
        assert len(bomb) < 1000
        assert h.post(bomb, **{"Content-Encoding": "gzip"})[0] == 413
        with pytest.raises(grpc.RpcError) as e:
            h.grpc_export(b"\x0a" * 5000)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert h.ingest.stats.too_large >= 2
        assert h.post(span_request().SerializeToString())[0] == 200  # still serving
    finally:
        h.rx.stop()


def test_grpc_malformed_is_invalid_argument_with_a_message(rx):
    with pytest.raises(grpc.RpcError) as e:
        rx.grpc_export(b"\xff\xff\xff")
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "protobuf" in e.value.details()
    resp = rx.grpc_export(span_request().SerializeToString(), compression=grpc.Compression.Gzip)
    assert resp == trace_service_pb2.ExportTraceServiceResponse()


def test_full_forward_queue_gives_retryable_codes_and_is_counted():
    h = Harness(accept=False)
    try:
        status, _ct, _b = h.post(span_request().SerializeToString())
        assert status == 503
        with pytest.raises(grpc.RpcError) as e:
            h.grpc_export(span_request().SerializeToString())
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        assert h.ingest.stats.backpressure == 2 and h.ingest.stats.backpressure_spans == 2
        assert h.app == []  # refused spans are not indexed (the client sends them again)
    finally:
        h.rx.stop()


def test_port_in_use_is_a_warning_not_a_crash():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        rx = OtlpReceiver(Ingest(1000), f"127.0.0.1:{port}", f"127.0.0.1:{port}")
        problems = rx.start()
        rx.stop()
    assert len(problems) == 2 and all(str(port) in p for p in problems)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(st.binary(max_size=300),
                      st.builds(lambda r, cut: r[:cut], st.just(span_request().SerializeToString()), st.integers(0, 60)),
                      st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                                   lambda c: st.lists(c, max_size=3) | st.dictionaries(
                                       st.sampled_from(["resourceSpans", "scopeSpans", "spans", "traceId", "spanId",
                                                        "attributes", "key", "value", "kind", "x"]), c, max_size=3),
                                   max_leaves=12).map(lambda d: json.dumps(d).encode())),
       ctype=st.sampled_from(["application/x-protobuf", "application/json", "application/octet-stream"]),
       gz=st.booleans())
def test_fuzzed_bodies_get_only_clean_answers(rx, body, ctype, gz):
    status, _ct, _b = rx.post(gzip.compress(body) if gz else body, ctype,
                              **({"Content-Encoding": "gzip"} if gz else {}))
    assert status in (200, 400, 415)
    assert rx.post(span_request().SerializeToString())[0] == 200


def _task_switches(tid: int) -> int:
    with open(f"/proc/self/task/{tid}/status") as f:
        return sum(int(ln.split()[1]) for ln in f if "ctxt_switches" in ln)


def test_idle_receivers_sleep_without_polling_and_stop_at_once():
    # no timer wake-ups while idle (before: socketserver's and grpc's 200 ms polls, 5 a
    # second each); stop() still ends both at once
    import threading
    import time
    h = Harness()
    try:
        assert h.post(span_request().SerializeToString())[0] == 200  # both serve
        assert h.grpc_export(span_request().SerializeToString()) is not None
        time.sleep(0.3)
        threads = [t for t in threading.enumerate() if t.name in ("kernelnet-otlp-http", "kernelnet-otlp-grpc")]
        assert len(threads) == 2
        before = {t.native_id: _task_switches(t.native_id) for t in threads}
        time.sleep(1.0)
        woke = {tid: _task_switches(tid) - n for tid, n in before.items()}
        assert all(n <= 1 for n in woke.values()), woke  # a poll would show 5
    finally:
        t0 = time.monotonic()
        h.rx.stop()
        took = time.monotonic() - t0
    assert took < 1.0 and not any(t.is_alive() for t in threads)
    for port in (h.rx.grpc.port, h.rx.http.port):  # the listening sockets are closed
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
