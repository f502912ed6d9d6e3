"""Span mapping and encoding, against complete expected output with fixed ids and times."""

import json

from otel_kernelnet.export import otlp_json
from otel_kernelnet.export.sinks import OtlpSink, OtlpTarget
from otel_kernelnet.spans import CountingIds, DropEvent, drop_span

EV = DropEvent(
    ts_ns=5_000_000_123, location=0xFFFFFFFF81000010, skbaddr=0xFFFF888000001000, sk_cookie=0,
    reason=3, netns=4026532000, pid=0, tid=0, cpu=1, ifindex=1, len=40, protocol=0x0800,
    sport=43210, dport=4099, l4proto=6, has_sk=False, has_addr=True, ipv6=False, has_dev=True,
    owner_sk=False, saddr=bytes([127, 0, 0, 1]) + bytes(12), daddr=bytes([127, 0, 0, 1]) + bytes(12),
    comm="swapper/1", ifname="lo")

EPOCH0 = 1_700_000_000_000_000_000


def mapped(ev=EV):
    return drop_span(ev, to_epoch_ns=lambda m: EPOCH0 + m, ids=CountingIds(),
                     reason_name={3: "NO_SOCKET"}.get, symbol=lambda a: f"tcp_v4_rcv+0x{a & 0xff:x}")


def test_drop_span_complete_output():
    s = mapped()
    assert (s.name, s.trace_id, s.span_id, s.parent_span_id) == (
        "kernel.skb.drop", (1).to_bytes(16, "big"), (1).to_bytes(8, "big"), b"")
    assert (s.start_ns, s.end_ns, s.kind, s.status_code, s.status_message) == (
        EPOCH0 + 5_000_000_123, EPOCH0 + 5_000_000_123, 1, 2, "dropped: NO_SOCKET")
    assert s.attributes == {
        "kernelnet.kind": "drop",
        "kernelnet.drop.reason": "NO_SOCKET",
        "kernelnet.drop.reason_code": 3,
        "kernelnet.drop.location": "tcp_v4_rcv+0x10",
        "kernelnet.skb.protocol": 0x0800,
        "kernelnet.skb.len": 40,
        "kernelnet.skb.has_socket": False,
        "kernelnet.skb.socket_role": "none",
        "kernelnet.cpu": 1,
        "process.pid": 0,
        "thread.id": 0,
        "process.command": "swapper/1",
        "kernelnet.netns": 4026532000,
        "network.interface.name": "lo",
        "network.type": "ipv4",
        "source.address": "127.0.0.1",
        "destination.address": "127.0.0.1",
        "network.transport": "tcp",
        "source.port": 43210,
        "destination.port": 4099,
    }
    assert s.events == [] and s.links == []


def test_optional_parts_appear_only_when_the_kernel_gave_them():
    import dataclasses
    ev = dataclasses.replace(EV, has_addr=False, has_dev=False, netns=0, has_sk=True, sk_cookie=77, reason=999,
                             ipv6=True)
    s = drop_span(ev, to_epoch_ns=lambda m: m, ids=CountingIds(), reason_name=lambda c: f"unknown:{c}",
                  symbol=hex)
    assert s.attributes["kernelnet.socket.cookie"] == 77
    assert s.attributes["kernelnet.drop.reason"] == "unknown:999"
    assert s.attributes["kernelnet.skb.socket_role"] == "receiver"
    for absent in ("source.address", "source.port", "network.interface.name", "kernelnet.netns", "network.type"):
        assert absent not in s.attributes
    v6 = dataclasses.replace(EV, ipv6=True, saddr=bytes(15) + b"\x01", daddr=bytes(15) + b"\x01")
    assert mapped(v6).attributes["source.address"] == "::1"


def test_otlp_json_line_is_the_file_exporter_format():
    line = otlp_json.encode_line([mapped()], {"service.name": "otel-kernelnet", "host.name": "h"},
                                 "otel-kernelnet", "0.1.0")
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    d = json.loads(line)
    rs = d["resourceSpans"][0]
    assert rs["resource"]["attributes"] == [
        {"key": "service.name", "value": {"stringValue": "otel-kernelnet"}},
        {"key": "host.name", "value": {"stringValue": "h"}}]
    ss = rs["scopeSpans"][0]
    assert ss["scope"] == {"name": "otel-kernelnet", "version": "0.1.0"}
    span = ss["spans"][0]
    attrs = {a["key"]: a["value"] for a in span.pop("attributes")}
    assert span == {
        "traceId": "00000000000000000000000000000001",
        "spanId": "0000000000000001",
        "name": "kernel.skb.drop",
        "kind": 1,
        "startTimeUnixNano": str(EPOCH0 + 5_000_000_123),
        "endTimeUnixNano": str(EPOCH0 + 5_000_000_123),
        "status": {"message": "dropped: NO_SOCKET", "code": 2},
    }
    assert attrs["destination.port"] == {"intValue": "4099"}
    assert attrs["kernelnet.skb.has_socket"] == {"boolValue": False}
    assert attrs["source.address"] == {"stringValue": "127.0.0.1"}


def test_protobuf_through_the_sdk_encoder_keeps_every_field():
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    sink = OtlpSink.__new__(OtlpSink)  # only the conversion, no exporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    sink._resource = Resource({"service.name": "otel-kernelnet"})
    sink._scope = InstrumentationScope("otel-kernelnet", "0.1.0")
    req = encode_spans([sink._to_sdk(mapped())])
    p = req.resource_spans[0].scope_spans[0].spans[0]
    assert p.trace_id == (1).to_bytes(16, "big") and p.span_id == (1).to_bytes(8, "big")
    assert p.start_time_unix_nano == p.end_time_unix_nano == EPOCH0 + 5_000_000_123
    assert p.kind == 1 and p.status.code == 2 and p.status.message == "dropped: NO_SOCKET"
    attrs = {kv.key: kv.value for kv in p.attributes}
    assert attrs["destination.port"].int_value == 4099
    assert attrs["kernelnet.drop.reason"].string_value == "NO_SOCKET"
    assert req.resource_spans[0].scope_spans[0].scope.name == "otel-kernelnet"
    assert OtlpTarget  # the public names the collector uses exist
