"""TCP events family without root: plan() from this kernel's captured format files
(and degraded variants of them), decoding a hand-written record, the span mapping
against complete expected output, and the BTF bitfield lookup on a synthetic BTF.

Fixtures: ``tests/fixtures/tracefs/<category>.<name>.6.18.format``, captured from the
reference machine (Linux 6.18.44, ``/sys/kernel/tracing/events/<category>/<name>/format``).
Note that ``tcp_retransmit_skb`` and ``tcp_send_reset`` print TCP states with
unresolved names (``{ TCP_ESTABLISHED, "TCP_ESTABLISHED" }``), so only
``inet_sock_set_state``'s table gives their numbers.
"""

from __future__ import annotations

import ctypes
import dataclasses
import struct
from pathlib import Path

import pytest

from otel_kernelnet.kernel import tracefs
from otel_kernelnet.kernel.btf import BTF
from otel_kernelnet.probes import ProbeUnavailable, tcp
from otel_kernelnet.spans import STATUS_ERROR, STATUS_UNSET, CountingIds
from tests.unit.test_btf import Builder  # the synthetic BTF writer

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "tracefs"


def fmt(tp: tcp.Tracepoint, text: str | None = None) -> tracefs.TracepointFormat:
    if text is None:
        text = (FIX / f"{tp.category}.{tp.name}.6.18.format").read_text()
    return tracefs.parse_format(text, tp.category, tp.name)


def formats(**override) -> dict:
    out = {tp.key: fmt(tp) for tp in tcp.TRACEPOINTS}
    out.update(override)
    return out


def without_field(key: str, field: str) -> tracefs.TracepointFormat:
    tp = tcp.BY_KEY[key]
    text = (FIX / f"{tp.category}.{tp.name}.6.18.format").read_text()
    lines = [ln for ln in text.splitlines() if f" {field};" not in ln and f" {field}[" not in ln]
    assert len(lines) == len(text.splitlines()) - 1
    return fmt(tp, "\n".join(lines))


def synthetic_btf() -> BTF:
    """The members the family reads, at made-up offsets, icsk_ca_state a 5-bit bitfield."""
    b = Builder()
    u8 = b.int_("unsigned char", 1)
    u32 = b.int_("unsigned int", 4)
    u64 = b.int_("long long unsigned int", 8)
    vptr = b.ptr(0)
    common = b.struct("sock_common", 104, [("skc_net", vptr, 48 * 8), ("skc_cookie", u64, 88 * 8)])
    sock = b.struct("sock", 760, [("__sk_common", common, 0)])
    ns = b.struct("ns_common", 24, [("inum", u32, 16 * 8)])
    b.struct("net", 4096, [("ns", ns, 160 * 8)])
    b.struct("sk_buff", 232, [("dev", vptr, 16 * 8)])
    b.struct("net_device", 2048, [("nd_net", vptr, 264 * 8)])
    inet = b.struct("inet_sock", 976, [("sk", sock, 0)])
    b.struct("inet_connection_sock", 1400, [("icsk_inet", inet, 0), ("icsk_retransmits", u8, 1247 * 8),
                                            ("icsk_ca_state", u8, 1248 * 8 + 2, 5),
                                            ("icsk_ca_initialized", u8, 1248 * 8 + 7, 1)], kflag=1)
    b.enum("tcp_ca_state", 4, [("TCP_CA_Open", 0), ("TCP_CA_Disorder", 1), ("TCP_CA_CWR", 2),
                               ("TCP_CA_Recovery", 3), ("TCP_CA_Loss", 4)])
    return BTF.from_bytes(b.blob())


# --- plan ----------------------------------------------------------------------------
def test_plan_on_this_kernel_takes_every_offset_and_name_from_the_formats_and_btf():
    p = tcp.plan(formats(), synthetic_btf(), rate_limit=77, ringbuf_pages=32, close_events=True, rate_limit_node=701)
    d = p.defines
    assert p.degraded == []
    assert [tp.key for tp in p.attach] == ["RTX", "SRST", "RRST", "CONG", "STATE", "SYNACK", "RQF", "EXB"]
    assert all(d[f"KN_HAVE_{k}"] == 1 for k in tcp.BY_KEY)
    # tcp_retransmit_skb, field by field from its format file
    assert {k: v for k, v in d.items() if k.startswith("KN_TP_RTX_")} == {
        "KN_TP_RTX_SKADDR": 16, "KN_TP_RTX_STATE": 24, "KN_TP_RTX_ERR": 76, "KN_TP_RTX_SPORT": 28,
        "KN_TP_RTX_DPORT": 30, "KN_TP_RTX_FAMILY": 32, "KN_TP_RTX_SADDR": 34, "KN_TP_RTX_DADDR": 38,
        "KN_TP_RTX_SADDR_V6": 42, "KN_TP_RTX_DADDR_V6": 58}
    assert (d["KN_TP_SRST_SKBADDR"], d["KN_TP_SRST_SKADDR"], d["KN_TP_SRST_STATE"], d["KN_TP_SRST_REASON"],
            d["KN_TP_SRST_SADDR"], d["KN_TP_SRST_DADDR"]) == (8, 16, 24, 28, 32, 60)
    assert (d["KN_TP_RRST_SKADDR"], d["KN_TP_RRST_SOCK_COOKIE"], d["KN_TP_RRST_SPORT"]) == (8, 64, 16)
    assert (d["KN_TP_CONG_SKADDR"], d["KN_TP_CONG_CONG_STATE"]) == (8, 62)
    assert (d["KN_TP_STATE_OLDSTATE"], d["KN_TP_STATE_NEWSTATE"], d["KN_TP_STATE_PROTOCOL"]) == (16, 20, 30)
    assert (d["KN_TP_RQF_RMEM_ALLOC"], d["KN_TP_RQF_TRUESIZE"], d["KN_TP_RQF_SK_RCVBUF"]) == (8, 12, 16)
    assert (d["KN_TP_EXB_NAME"], d["KN_TP_EXB_SYSCTL_MEM"], d["KN_TP_EXB_KIND"]) == (8, 40, 92)
    # numbers from inet_sock_set_state's symbolic tables, not from our code
    assert (d["KN_TCP_STATE_SYN_SENT"], d["KN_TCP_STATE_ESTABLISHED"], d["KN_TCP_STATE_CLOSE"], d["KN_PROTO_TCP"]) == (2, 1, 7, 6)
    # BTF: plain members and the bitfield (byte 1248, bits 2..6)
    assert (d["KN_OFF_SK_COOKIE"], d["KN_OFF_SK_NET"], d["KN_OFF_NET_NS_INUM"], d["KN_OFF_SKB_DEV"],
            d["KN_OFF_DEV_ND_NET"]) == (88, 48, 176, 16, 264)
    assert (d["KN_OFF_CA_STATE"], d["KN_CA_STATE_SHIFT"], d["KN_CA_STATE_MASK"]) == (1248, 2, 0x1F)
    assert (d["KN_RATE_LIMIT"], d["KN_RATE_LIMIT_NODE"], d["KN_RINGBUF_PAGES"], d["KN_CLOSE_EVENTS"]) == (77, 701, 32, 1)
    n = p.names
    assert len(n.states) == 12 and n.state_kernel_name(2) == "TCP_SYN_SENT" and n.state(3) == "syn_received"
    assert n.state(12) == "syn_received" and n.state(4) == "fin_wait_1" and n.state(7) == "closed"
    assert n.state(99) == "unknown:99"
    assert len(n.rst_reasons) == 26 and n.rst_reason(1) == "NO_SOCKET" and n.rst_reason(14) == "TCP_STATE"
    assert n.ca_states == {0: "Open", 1: "Disorder", 2: "CWR", 3: "Recovery", 4: "Loss"}
    assert n.mem_kinds == {0: "SK_MEM_SEND", 1: "SK_MEM_RECV"}
    assert "8 tracepoints" in p.describe()


def test_plan_degrades_piece_by_piece_and_says_what_is_lost():
    p = tcp.plan(formats(CONG=None, RTX=without_field("RTX", "err"), SRST=without_field("SRST", "reason"),
                         RRST=without_field("RRST", "sock_cookie")), btf=None)
    d = p.defines
    assert d["KN_HAVE_CONG"] == 0 and "CONG" not in {tp.key for tp in p.attach}
    assert d["KN_HAVE_RTX"] == d["KN_HAVE_SRST"] == d["KN_HAVE_RRST"] == 1
    assert d["KN_TP_RTX_ERR"] == d["KN_TP_SRST_REASON"] == d["KN_TP_RRST_SOCK_COOKIE"] == -1
    assert d["KN_OFF_SK_COOKIE"] == d["KN_OFF_CA_STATE"] == -1
    text = "\n".join(p.degraded)
    assert "tcp:tcp_cong_state_set does not exist on this kernel: no congestion-state spans" in text
    assert "retransmits carry no error code" in text
    assert "resets sent carry no RST reason" in text
    assert "tcp_receive_reset has no sock_cookie" in text
    assert "no kernel BTF" in text
    assert p.names.ca_states == {} and p.names.rst_reasons != {}


def test_plan_without_state_tables_drops_connect_spans_and_names_states_unknown():
    tp = tcp.BY_KEY["STATE"]
    text = (FIX / "sock.inet_sock_set_state.6.18.format").read_text()
    bare = text.split("print fmt:")[0] + 'print fmt: "oldstate=%d newstate=%d", REC->oldstate, REC->newstate\n'
    p = tcp.plan(formats(STATE=fmt(tp, bare)), btf=None)
    assert p.defines["KN_HAVE_STATE"] == 0 and "STATE" not in p.formats
    assert p.names.states == {} and p.names.state(2) == "unknown:2"
    assert any("names no TCP states" in x for x in p.degraded)
    assert any("retransmit type syn cannot be told" in x for x in p.degraded)


def test_plan_refuses_when_no_tracepoint_is_usable():
    with pytest.raises(ProbeUnavailable, match="none of the TCP tracepoints"):
        tcp.plan({k: None for k in tcp.BY_KEY}, btf=None)


def test_a_field_of_another_size_counts_as_missing():
    text = (FIX / "tcp.tcp_cong_state_set.6.18.format").read_text().replace(
        "__u8 cong_state;\toffset:62;\tsize:1;", "int cong_state;\toffset:64;\tsize:4;")
    p = tcp.plan(formats(CONG=fmt(tcp.BY_KEY["CONG"], text)), btf=None)
    assert p.defines["KN_HAVE_CONG"] == 0
    assert any("lacks field(s) cong_state" in x for x in p.degraded)


# --- decode --------------------------------------------------------------------------
REC = b"".join([
    struct.pack("<Q", 9_000_000_500),          # ts_ns (ESTABLISHED)
    struct.pack("<Q", 9_000_000_000),          # start_ns (SYN_SENT)
    struct.pack("<Q", 0xFFFF888004A0C000),     # skaddr
    struct.pack("<Q", 8209),                   # sk_cookie
    struct.pack("<q", 0),                      # mem_allocated
    struct.pack("<qqq", 0, 0, 0),              # sysctl_mem[3]
    struct.pack("<I", 4026532245),             # netns
    struct.pack("<I", 4242),                   # pid
    struct.pack("<I", 4243),                   # tid
    struct.pack("<I", 1),                      # cpu
    struct.pack("<i", 1),                      # state: TCP_ESTABLISHED (6.18)
    struct.pack("<i", 2),                      # oldstate: TCP_SYN_SENT
    struct.pack("<I", 0),                      # reason
    struct.pack("<i", 0),                      # err
    struct.pack("<i", 0),                      # rmem_alloc
    struct.pack("<I", 0),                      # truesize
    struct.pack("<i", 0),                      # rcvbuf
    struct.pack("<i", 0),                      # sysctl_wmem
    struct.pack("<i", 0),                      # wmem_alloc
    struct.pack("<i", 0),                      # wmem_queued
    struct.pack("<i", 0),                      # mem_kind
    struct.pack("<H", 47020),                  # sport (local, host order)
    struct.pack("<H", 8080),                   # dport (peer)
    struct.pack("<H", 2),                      # family AF_INET
    struct.pack("<B", 5),                      # type KN_TCP_EV_CONNECT
    struct.pack("<B", 0),                      # ca_state
    struct.pack("<B", 0x01),                   # flags: ADDR
    bytes(3),                                  # reserved
    bytes([10, 0, 0, 1]) + bytes(12),          # saddr (local)
    bytes([10, 0, 0, 2]) + bytes(12),          # daddr (peer)
    b"curl".ljust(16, b"\0"),                  # comm
    bytes(16),                                 # proto
])


def test_decode_a_hand_written_connect_record():
    assert len(REC) == ctypes.sizeof(tcp.RECORD) == 200
    ev = tcp.decode(REC + b"\xee" * 8)  # ring buffer records may be padded
    assert (ev.type, ev.ts_ns, ev.start_ns, ev.skaddr, ev.sk_cookie) == (5, 9_000_000_500, 9_000_000_000, 0xFFFF888004A0C000, 8209)
    assert (ev.netns, ev.pid, ev.tid, ev.cpu, ev.state, ev.oldstate) == (4026532245, 4242, 4243, 1, 1, 2)
    assert (ev.family, ev.sport, ev.dport, ev.has_addr, ev.ipv6, ev.has_ca_state, ev.has_reason, ev.has_err) == (
        2, 47020, 8080, True, False, False, False, False)
    assert ev.saddr[:4] == bytes([10, 0, 0, 1]) and ev.daddr[:4] == bytes([10, 0, 0, 2]) and ev.comm == "curl"
    with pytest.raises(ValueError, match="too short"):
        tcp.decode(REC[:199])
    with pytest.raises(ValueError, match="unknown type 99"):
        tcp.decode(REC[:130] + bytes([99]) + REC[131:])  # type is at offset 130


# --- mapping -------------------------------------------------------------------------
EPOCH0 = 1_700_000_000_000_000_000
NAMES = tcp.Names(states={1: "TCP_ESTABLISHED", 2: "TCP_SYN_SENT", 3: "TCP_SYN_RECV", 7: "TCP_CLOSE"},
                  rst_reasons={1: "NO_SOCKET", 14: "TCP_STATE"},
                  ca_states={0: "Open", 1: "Disorder", 3: "Recovery", 4: "Loss"},
                  mem_kinds={1: "SK_MEM_RECV"})


def mapped(ev):
    return tcp.tcp_span(ev, to_epoch_ns=lambda m: EPOCH0 + m, ids=CountingIds(), names=NAMES)


COMMON = {"kernelnet.cpu": 1, "process.pid": 4242, "thread.id": 4243, "process.command": "curl"}
TUPLE4 = {"network.transport": "tcp", "network.type": "ipv4", "network.local.address": "10.0.0.1",
          "network.local.port": 47020, "network.peer.address": "10.0.0.2", "network.peer.port": 8080}


def test_connect_span_complete_output():
    s = mapped(tcp.decode(REC))
    assert (s.name, s.trace_id, s.span_id, s.parent_span_id) == (
        "kernel.tcp", (1).to_bytes(16, "big"), (1).to_bytes(8, "big"), b"")
    assert (s.start_ns, s.end_ns, s.kind, s.status_code, s.status_message) == (
        EPOCH0 + 9_000_000_000, EPOCH0 + 9_000_000_500, 1, STATUS_UNSET, "")
    assert s.attributes == {"kernelnet.kind": "tcp.connect", "kernelnet.netns": 4026532245,
                            "kernelnet.socket.cookie": 8209, **TUPLE4,
                            "network.connection.state": "established",
                            "kernelnet.tcp.state.previous": "syn_sent", **COMMON}
    assert s.events == [] and s.links == []


def ev_of(**kw):
    return dataclasses.replace(tcp.decode(REC), **kw)


@pytest.mark.parametrize("state,ca,has_ca,expected", [
    (2, 0, True, "syn"), (3, 0, True, "syn"),        # SYN_SENT / SYN_RECV, whatever the ca_state
    (1, 4, True, "timeout"),                         # Loss
    (1, 3, True, "fast"), (1, 1, True, "fast"),      # Recovery, Disorder
    (1, 0, True, "unknown"),                         # Open: TLP/RACK, not told apart
    (1, 4, False, "unknown"),                        # ca_state not readable: never guessed
])
def test_retransmit_type(state, ca, has_ca, expected):
    s = mapped(ev_of(type=1, state=state, ca_state=ca, has_ca_state=has_ca, has_err=True, err=0, start_ns=9_000_000_500))
    assert s.attributes["kernelnet.tcp.retransmit.type"] == expected
    assert ("kernelnet.tcp.cong_state" in s.attributes) == has_ca


def test_retransmit_span_complete_output():
    s = mapped(ev_of(type=1, state=1, oldstate=0, ca_state=4, has_ca_state=True, has_err=True, err=-16,
                     start_ns=9_000_000_500))
    assert s.start_ns == s.end_ns == EPOCH0 + 9_000_000_500
    assert s.attributes == {"kernelnet.kind": "tcp.retransmit", "kernelnet.netns": 4026532245,
                            "kernelnet.socket.cookie": 8209, **TUPLE4, "network.connection.state": "established",
                            "kernelnet.tcp.retransmit.type": "timeout", "kernelnet.tcp.cong_state": "Loss",
                            "kernelnet.tcp.retransmit.err": -16, **COMMON}


def test_reset_sent_for_no_socket_has_no_cookie_and_no_state():
    s = mapped(ev_of(type=2, state=0, oldstate=0, sk_cookie=0, skaddr=0, reason=1, has_reason=True,
                     start_ns=9_000_000_500))
    assert s.attributes == {"kernelnet.kind": "tcp.reset.sent", "kernelnet.netns": 4026532245, **TUPLE4,
                            "kernelnet.tcp.reset.reason": "NO_SOCKET", "kernelnet.tcp.reset.reason_code": 1,
                            **COMMON}
    unknown = mapped(ev_of(type=2, state=0, reason=77, has_reason=True, start_ns=9_000_000_500))
    assert unknown.attributes["kernelnet.tcp.reset.reason"] == "unknown:77"


def test_reset_received_cong_state_failed_connect_close_and_socket_events():
    rr = mapped(ev_of(type=3, state=0, oldstate=0, start_ns=9_000_000_500, has_addr=False, netns=0))
    assert rr.attributes == {"kernelnet.kind": "tcp.reset.received", "kernelnet.socket.cookie": 8209,
                             "network.transport": "tcp", **COMMON}
    cs = mapped(ev_of(type=4, ca_state=3, has_ca_state=True, start_ns=9_000_000_500))
    assert cs.attributes["kernelnet.tcp.cong_state"] == "Recovery"
    failed = mapped(ev_of(state=7))
    assert (failed.status_code, failed.status_message) == (STATUS_ERROR, "connect failed: syn_sent -> closed")
    assert failed.attributes["network.connection.state"] == "closed"
    close = mapped(ev_of(type=6, state=7, oldstate=1, start_ns=9_000_000_500))
    assert close.attributes["kernelnet.kind"] == "tcp.close" and close.status_code == STATUS_UNSET
    assert close.attributes["kernelnet.tcp.state.previous"] == "established"
    rq = mapped(ev_of(type=7, has_addr=False, sk_cookie=0, netns=0, rmem_alloc=213_000, truesize=2304,
                      rcvbuf=212_992, start_ns=9_000_000_500))
    assert rq.attributes == {"kernelnet.kind": "sock.rcvqueue_full", "kernelnet.sock.rmem_alloc": 213_000,
                             "kernelnet.sock.truesize": 2304, "kernelnet.sock.rcvbuf": 212_992, **COMMON}
    mem = mapped(ev_of(type=8, has_addr=False, sk_cookie=0, netns=0, proto="UDP", mem_kind=1, mem_allocated=91,
                       sysctl_mem=(90, 95, 100), rmem_alloc=4096, rcvbuf=4096, sysctl_wmem=4096, wmem_alloc=1,
                       wmem_queued=0, start_ns=9_000_000_500))
    assert mem.attributes == {"kernelnet.kind": "sock.exceed_buf_limit", "kernelnet.sock.protocol": "UDP",
                              "kernelnet.sock.mem.kind": "SK_MEM_RECV", "kernelnet.sock.mem.allocated": 91,
                              "kernelnet.sock.mem.min": 90, "kernelnet.sock.mem.pressure": 95,
                              "kernelnet.sock.mem.max": 100, "kernelnet.sock.rmem_alloc": 4096,
                              "kernelnet.sock.sysctl_rmem": 4096, "kernelnet.sock.wmem_alloc": 1,
                              "kernelnet.sock.wmem_queued": 0, "kernelnet.sock.sysctl_wmem": 4096, **COMMON}


def test_every_attribute_the_mapping_writes_is_declared_in_semconv():
    from otel_kernelnet import semconv
    seen = set()
    for t in range(1, 10):
        seen |= set(mapped(ev_of(type=t, has_ca_state=True, has_err=True, has_reason=True)).attributes)
    assert seen - set(semconv.BY_KEY) == set()


def test_bitfield_lookup_refuses_a_bitfield_across_bytes():
    b = Builder()
    u16 = b.int_("short unsigned int", 2)
    b.struct("odd", 4, [("f", u16, 6, 5)], kflag=1)
    with pytest.raises(ValueError, match="spans two bytes"):
        tcp.bitfield(BTF.from_bytes(b.blob()), "odd", "f")


def test_synack_retransmit_is_a_retransmit_of_type_synack_on_the_listener():
    s = mapped(ev_of(type=9, state=0, oldstate=0, start_ns=9_000_000_500))
    assert s.name == "kernel.tcp"
    assert s.attributes["kernelnet.kind"] == "tcp.retransmit"
    assert s.attributes["kernelnet.tcp.retransmit.type"] == "synack"
    assert s.attributes["network.connection.state"] == "syn_received"
    assert s.attributes["kernelnet.socket.cookie"] == 8209
