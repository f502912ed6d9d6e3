"""skb lifecycle family without root: plan() from captured format files (and degraded
variants), decoding a hand-written record, the span mapping against complete expected
output, and the histogram bucket layout.

Fixtures: ``tests/fixtures/tracefs/<category>.<name>.6.18.format`` (and
``kfree_skb.6.18.format``), captured from the reference machine (Linux 6.18).
"""

from __future__ import annotations

import ctypes
import struct
from pathlib import Path

import pytest

from otel_kernelnet import semconv
from otel_kernelnet.kernel import tracefs
from otel_kernelnet.probes import ProbeUnavailable, lifecycle as L
from otel_kernelnet.spans import STATUS_ERROR, STATUS_UNSET, CountingIds, SpanEvent

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "tracefs"


def fmt(tp: L.Tracepoint, drop_lines: tuple[str, ...] = ()) -> tracefs.TracepointFormat:
    name = "kfree_skb.6.18.format" if tp.name == "kfree_skb" else f"{tp.category}.{tp.name}.6.18.format"
    text = (FIX / name).read_text()
    lines = [ln for ln in text.splitlines() if not any(f" {f};" in ln or f" {f}[" in ln for f in drop_lines)]
    return tracefs.parse_format("\n".join(lines), tp.category, tp.name)


def formats(**override) -> dict:
    out = {tp.key: fmt(tp) for tp in L.TRACEPOINTS}
    out.update(override)
    return out


# --- plan ----------------------------------------------------------------------------
def test_plan_takes_every_tracepoint_offset_from_the_format_files():
    p = L.plan(formats(), btf=None, slow_threshold_us=2500, sample_one_in=7)
    d = p.defines
    # offsets as the 6.18 files print them
    assert (d["KN_TP_RX_SKBADDR"], d["KN_TP_RCV_SKBADDR"], d["KN_TP_GRO_SKBADDR"]) == (8, 8, 24)
    assert (d["KN_TP_PROBE_SKBADDR"], d["KN_TP_PROBE_SKADDR"], d["KN_TP_PROBE_SOCK_COOKIE"]) == (120, 128, 112)
    assert (d["KN_TP_PROBE_SADDR"], d["KN_TP_PROBE_DADDR"], d["KN_TP_PROBE_DATA_LEN"]) == (8, 36, 76)
    assert (d["KN_TP_COPY_SKBADDR"], d["KN_TP_COPY_LEN"]) == (8, 16)
    assert d["KN_TP_DROP_REASON"] == fmt(L.TRACEPOINTS[7]).fields["reason"].offset
    assert all(d[f"KN_HAVE_{k}"] == 1 for k in ("GRO", "RCV_ENTRY", "RCV_LIST_ENTRY", "TCP_PROBE"))
    assert d["KN_AF_INET6"] == 10  # named by tcp_probe's own __print_symbolic table
    assert (d["KN_SLOW_NS"], d["KN_SAMPLE_N"]) == (2_500_000, 7)
    assert p.reason_name(3) == "NO_SOCKET" and p.reason_name(9999) == "unknown:9999"
    assert [tp.key for tp in p.attach] == [tp.key for tp in L.TRACEPOINTS]
    # without BTF: runs, and says exactly what is lost
    assert len(p.degraded) == 1 and "no kernel BTF" in p.degraded[0] and "network namespace" in p.degraded[0]
    assert all(d[m] == -1 for m, *_ in L.BTF_MEMBERS)


def test_hidden_or_missing_optional_pieces_degrade_and_say_what_is_lost():
    by_key = {tp.key: tp for tp in L.TRACEPOINTS}
    p = L.plan(formats(GRO=None, PROBE=fmt(by_key["PROBE"], ("sock_cookie",)),
                       DROP=fmt(by_key["DROP"], ("reason",))), btf=None)
    d = p.defines
    assert d["KN_HAVE_TCP_PROBE"] == 0 and d["KN_HAVE_GRO"] == 0 and d["KN_TP_DROP_REASON"] == -1
    assert "PROBE" not in p.formats and "GRO" not in p.formats
    text = "\n".join(p.degraded)
    assert "tcp:tcp_probe lacks field(s) sock_cookie" in text and "join by 4-tuple" in text
    assert "net:napi_gro_receive_entry does not exist" in text
    assert "kfree_skb has no reason field" in text
    assert p.reason_name(3) == "unknown:3"  # no table used once the field is hidden


def test_a_field_of_another_size_counts_as_missing():
    rx = fmt(L.TRACEPOINTS[0])
    rx.fields["skbaddr"] = rx.fields["skbaddr"].__class__(**{**rx.fields["skbaddr"].__dict__, "size": 4})
    with pytest.raises(ProbeUnavailable, match="net:netif_rx lacks field.*skbaddr.*needs it"):
        L.plan(formats(RX=rx), btf=None)


def test_plan_refuses_without_a_required_tracepoint():
    with pytest.raises(ProbeUnavailable, match="skb:skb_copy_datagram_iovec does not exist"):
        L.plan(formats(COPY=None), btf=None)


# --- decode --------------------------------------------------------------------------
REC = b"".join([
    struct.pack("<Q", 5_000_000_000),          # t_arrival
    struct.pack("<Q", 5_000_040_000),          # t_proto: 40 us in the backlog
    struct.pack("<Q", 5_000_050_000),          # t_enqueue
    struct.pack("<Q", 5_250_050_000),          # t_end: read 250 ms later
    struct.pack("<Q", 0xFFFF888012345600),     # skbaddr
    struct.pack("<Q", 0xFFFF888004A0C000),     # skaddr
    struct.pack("<Q", 8209),                   # sk_cookie
    struct.pack("<I", 4026532245),             # netns
    struct.pack("<I", 7),                      # ifindex
    struct.pack("<I", 1500),                   # len
    struct.pack("<I", 1448),                   # data_len
    struct.pack("<I", 0),                      # reason
    struct.pack("<I", 4242),                   # pid (reader)
    struct.pack("<I", 4243),                   # tid
    struct.pack("<I", 1000),                   # read_len
    struct.pack("<H", 1),                      # cpu_arrival
    struct.pack("<H", 1),                      # cpu_proto
    struct.pack("<H", 0),                      # cpu_end
    struct.pack("<H", 1),                      # segs
    struct.pack("<H", 0x0800),                 # protocol
    struct.pack("<H", 8080),                   # sport (local)
    struct.pack("<H", 47020),                  # dport (peer)
    struct.pack("<B", 6),                      # l4proto
    struct.pack("<B", 0x01 | 0x04 | 0x08),     # flags: ADDR, SOCK, READ
    struct.pack("<B", 0x02),                   # why: SLOW
    struct.pack("<B", 1),                      # arrival_tp: netif_rx
    bytes(6),                                  # reserved
    bytes([10, 0, 0, 2]) + bytes(12),          # saddr (local)
    bytes([10, 0, 0, 1]) + bytes(12),          # daddr (peer)
    b"server".ljust(16, b"\0"),                # comm
    b"veth-b".ljust(16, b"\0"),                # ifname
])


def test_decode_a_hand_written_record():
    assert len(REC) == ctypes.sizeof(L.RECORD) == 176
    ev = L.decode(REC + b"\xee" * 8)  # ring buffer records may be padded
    assert (ev.t_arrival, ev.t_proto, ev.t_enqueue, ev.t_end) == (5_000_000_000, 5_000_040_000, 5_000_050_000, 5_250_050_000)
    assert (ev.sk_cookie, ev.netns, ev.ifindex, ev.len, ev.data_len, ev.pid, ev.tid, ev.read_len) == (
        8209, 4026532245, 7, 1500, 1448, 4242, 4243, 1000)
    assert (ev.sport, ev.dport, ev.l4proto, ev.why, ev.arrival_tp, ev.comm, ev.ifname) == (
        8080, 47020, 6, 2, 1, "server", "veth-b")
    has = {f for f in ("ADDR", "SOCK", "READ", "IPV6") if ev.flags & L.DEFS[f"KN_LIFE_F_{f}"]}
    assert has == {"ADDR", "SOCK", "READ"}
    with pytest.raises(ValueError, match="too short"):
        L.decode(REC[:175])
    with pytest.raises(ValueError, match="without arrival"):
        L.decode(bytes(8) + REC[8:])


# --- mapping -------------------------------------------------------------------------
EPOCH0 = 1_700_000_000_000_000_000


def mapped(ev):
    return L.life_span(ev, to_epoch_ns=lambda m: EPOCH0 + m, ids=CountingIds(),
                       reason_name={3: "NO_SOCKET", 6: "SOCKET_RCVBUFF"}.get)


def test_read_lifecycle_complete_output():
    s = mapped(L.decode(REC))
    assert (s.name, s.trace_id, s.span_id, s.parent_span_id) == (
        "kernel.skb.lifecycle", (1).to_bytes(16, "big"), (1).to_bytes(8, "big"), b"")
    assert (s.start_ns, s.end_ns, s.status_code, s.status_message) == (
        EPOCH0 + 5_000_000_000, EPOCH0 + 5_250_050_000, STATUS_UNSET, "")
    assert s.attributes == {
        "kernelnet.kind": "skb", "kernelnet.skb.end": "read", "kernelnet.skb.emitted_because": "slow",
        "kernelnet.skb.arrival": "netif_rx", "kernelnet.skb.len": 1500, "kernelnet.skb.segs": 1,
        "kernelnet.skb.protocol": 0x0800, "kernelnet.skb.total_ns": 250_050_000,
        "kernelnet.skb.arrival_cpu": 1, "kernelnet.cpu": 0,
        "process.pid": 4242, "thread.id": 4243, "process.command": "server",
        "kernelnet.netns": 4026532245, "network.interface.name": "veth-b", "kernelnet.socket.cookie": 8209,
        "network.type": "ipv4", "network.transport": "tcp",
        "network.local.address": "10.0.0.2", "network.local.port": 8080,
        "network.peer.address": "10.0.0.1", "network.peer.port": 47020,
        "kernelnet.skb.protocol_cpu": 1, "kernelnet.skb.backlog_wait_ns": 40_000,
        "kernelnet.skb.data_len": 1448, "kernelnet.skb.protocol_ns": 10_000,
        "kernelnet.skb.read_len": 1000, "kernelnet.skb.socket_wait_ns": 250_000_000,
    }
    assert s.events == [
        SpanEvent(EPOCH0 + 5_000_000_000, "arrival", {"kernelnet.cpu": 1, "network.interface.name": "veth-b"}),
        SpanEvent(EPOCH0 + 5_000_040_000, "protocol", {"kernelnet.cpu": 1}),
        SpanEvent(EPOCH0 + 5_000_050_000, "enqueue", {}),
        SpanEvent(EPOCH0 + 5_250_050_000, "read", {"thread.id": 4243, "process.pid": 4242, "process.command": "server"}),
    ]


def test_dropped_lifecycle_without_socket_stage():
    # dropped before the socket: no enqueue, no READ flag, reason 6; why = DROPPED|WATCHED
    rec = bytearray(REC)
    rec[16:24] = bytes(8)                                   # t_enqueue = 0
    rec[72:76] = struct.pack("<I", 6)                       # reason
    rec[103] = 0x01                                         # flags: ADDR only
    rec[104] = 0x01 | 0x04                                  # why
    s = mapped(L.decode(bytes(rec)))
    assert (s.status_code, s.status_message) == (STATUS_ERROR, "dropped: SOCKET_RCVBUFF")
    a = s.attributes
    assert a["kernelnet.skb.end"] == "dropped" and a["kernelnet.skb.emitted_because"] == "dropped,watched"
    assert a["kernelnet.drop.reason"] == "SOCKET_RCVBUFF" and a["kernelnet.drop.reason_code"] == 6
    for absent in ("kernelnet.skb.read_len", "kernelnet.skb.socket_wait_ns", "kernelnet.skb.data_len",
                   "kernelnet.skb.protocol_ns"):
        assert absent not in a
    assert [e.name for e in s.events] == ["arrival", "protocol", "drop"]
    assert s.events[-1].attributes == {"kernelnet.drop.reason": "SOCKET_RCVBUFF", "kernelnet.cpu": 0}


def test_every_attribute_and_event_the_mapping_writes_is_declared_in_semconv():
    s = mapped(L.decode(REC))
    assert set(s.attributes) - set(semconv.BY_KEY) == set()
    assert {e.name for e in s.events} <= {semconv.SKB_EV_ARRIVAL, semconv.SKB_EV_PROTOCOL,
                                          semconv.SKB_EV_ENQUEUE, semconv.SKB_EV_READ, semconv.SKB_EV_DROP}


# --- histograms ----------------------------------------------------------------------
def test_histogram_layout_matches_the_log2_buckets():
    flat = list(range(len(L.STAGES) * L.BUCKETS))
    h = L.histogram_buckets(flat)
    assert list(h) == ["backlog", "protocol", "socket", "total"]
    assert h["socket"][0] == 2 * 64 and len(h["total"]) == 64
    bounds = L.bucket_bounds()
    assert len(bounds) == L.BUCKETS - 1
    # bucket b holds [2^(b-1), 2^b): 0 ns -> b0 (<= 0), 1 ns -> b1 (<= 1), 2..3 -> b2 (<= 3), 1 ms -> b20
    assert bounds[:4] == [0.0, 1.0, 3.0, 7.0]
    assert bounds[19] < 1_000_000 <= bounds[20]


# --- links to the node-level spans (links.py) ------------------------------------------
def test_a_pfmemalloc_drop_links_to_the_memory_state_and_reclaim_of_that_moment():
    from otel_kernelnet.links import LinkIndex
    from otel_kernelnet.probes.drop import link_memory_pressure
    from otel_kernelnet.spans import KernelSpan
    idx = LinkIndex()
    reclaim = KernelSpan("kernel.reclaim", b"\x01" * 16, b"\x02" * 8, 900, 1_500, {"kernelnet.kind": "reclaim"})
    idx.add_reclaim(reclaim, pid=42)
    idx.add_snapshot(1_000, [{"node": 0, "zone": "Normal"}], ["node0/Normal"])
    drop = KernelSpan("kernel.skb.drop", b"\x03" * 16, b"\x04" * 8, 1_200, 1_200,
                      {"kernelnet.kind": "drop", "kernelnet.drop.reason": "PFMEMALLOC"})
    link_memory_pressure(drop, idx)
    assert drop.attributes["kernelnet.memory.below_min"] == "node0/Normal"
    assert drop.attributes["kernelnet.memory.sampled_ago_ns"] == 200
    assert drop.attributes["kernelnet.memory.reclaim_spans"] == 1
    assert [(lk.trace_id, lk.span_id) for lk in drop.links] == [(b"\x01" * 16, b"\x02" * 8)]
    early = KernelSpan("kernel.skb.drop", b"\x05" * 16, b"\x06" * 8, 500, 500, {})
    link_memory_pressure(early, idx)  # before the first sample: nothing claimed
    assert early.links == [] and "kernelnet.memory.below_min" not in early.attributes


def test_a_pfmemalloc_drop_under_heavy_reclaim_links_the_latest_stalls_and_counts_them_all():
    from otel_kernelnet.links import MAX_STALL_LINKS, LinkIndex
    from otel_kernelnet.probes.drop import link_memory_pressure
    from otel_kernelnet.spans import KernelSpan
    idx = LinkIndex()
    idx.add_snapshot(0, [{"node": 0, "zone": "Normal"}], ["node0/Normal"])
    t = 5 * 10**9
    stalls = 3 * MAX_STALL_LINKS
    for n in range(stalls):  # one every ms in the second before the drop, 0.5 ms each
        start = t - 200_000_000 + n * 1_000_000
        idx.add_reclaim(KernelSpan("kernel.reclaim", n.to_bytes(16, "big"), n.to_bytes(8, "big"), start,
                                   start + 500_000, {"kernelnet.kind": "reclaim"}), pid=42)
    old = KernelSpan("kernel.reclaim", b"\x09" * 16, b"\x09" * 8, 1, 2, {"kernelnet.kind": "reclaim"})
    idx.add_reclaim(old, pid=42)  # a late record from long before the window: not counted
    drop = KernelSpan("kernel.skb.drop", b"\x03" * 16, b"\x04" * 8, t, t,
                      {"kernelnet.kind": "drop", "kernelnet.drop.reason": "PFMEMALLOC"})
    link_memory_pressure(drop, idx)
    assert drop.attributes["kernelnet.memory.reclaim_spans"] == stalls
    # the ones that ended last, in order of end
    assert [int.from_bytes(lk.span_id, "big") for lk in drop.links] == list(range(stalls - MAX_STALL_LINKS, stalls))
