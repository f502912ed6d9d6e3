"""Per-netns counters: parsing captured /proc text, deltas, inet_diag bytes, span mapping,
and the family's sampling loop on a fake /proc tree (no root, no kernel)."""

from __future__ import annotations

import os
import socket
import struct
from pathlib import Path

import pytest

from otel_kernelnet import config
from otel_kernelnet.clock import KernelClock
from otel_kernelnet.kernel import netstat
from otel_kernelnet.kernel.netstat import CounterDeltas, Jump, Listener
from otel_kernelnet.probes import KernelContext, families
from otel_kernelnet.probes import netns_counters as nc
from otel_kernelnet.spans import CountingIds, KernelSpan

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "proc"


# --- parsing -------------------------------------------------------------------------------

def test_parse_captured_netstat():
    d = netstat.parse_pairs((FIX / "netstat").read_text())
    assert len(d) == 229
    # a name is the line prefix (without ':') + the column name
    assert d["TcpExtListenOverflows"] == 0 and d["TcpExtListenDrops"] == 0
    assert d["TcpExtTCPTimeouts"] == 2 and d["TcpExtTCPPureAcks"] == 14977
    assert d["IpExtInOctets"] == 160672583 and "MPTcpExtMPCapableSYNRX" in d
    for name in config.SCHEMA["probes.netns_counters.counters"].default:
        if not name.startswith("TcpExt"):
            continue
        assert name in d, f"default counter {name} not in this kernel's netstat"


def test_parse_captured_snmp_signed_values():
    s = netstat.parse_pairs((FIX / "snmp").read_text())
    assert len(s) == 83
    assert s["TcpRetransSegs"] == 0 and s["TcpInSegs"] == 53880
    assert s["TcpMaxConn"] == -1  # signed: the kernel prints -1 (no limit)
    assert s["IpForwarding"] == 2 and s["UdpInDatagrams"] == 71
    assert s["IcmpMsgInType3"] == 1  # IcmpMsg pairs have only the types seen so far


@pytest.mark.parametrize("text,msg", [
    ("TcpExt: A B\n", "odd number"),
    ("TcpExt: A B\nIpExt: 1 2\n", "do not pair"),
    ("TcpExt: A B\nTcpExt: 1\n", "2 names but 1 values"),
])
def test_parse_pairs_rejects_malformed(text, msg):
    with pytest.raises(netstat.ParseError, match=msg):
        netstat.parse_pairs(text)


def test_conntrack_stat_captured_and_handwritten():
    real = netstat.parse_conntrack_stat((FIX / "nf_conntrack").read_text())
    assert real["ConntrackInvalid"] == 0 and real["ConntrackEntries"] == 0 and len(real) == 17
    hand = netstat.parse_conntrack_stat((FIX / "nf_conntrack.handwritten").read_text())
    # see tests/fixtures/proc/README.md for each value
    assert hand == {
        "ConntrackEntries": 42, "ConntrackClashres": 1, "ConntrackFound": 3, "ConntrackNew": 0,
        "ConntrackInvalid": 271, "ConntrackIgnore": 0, "ConntrackDelete": 0, "ConntrackChainlength": 0,
        "ConntrackInsert": 0, "ConntrackInsertFailed": 0, "ConntrackDrop": 0, "ConntrackEarlyDrop": 0,
        "ConntrackIcmpError": 1, "ConntrackExpectNew": 0, "ConntrackExpectCreate": 0,
        "ConntrackExpectDelete": 0, "ConntrackSearchRestart": 2}
    assert netstat.parse_conntrack_stat("") == {}


def test_netns_inode_from_link():
    assert netstat.netns_inode("net:[4026531840]") == 4026531840
    assert netstat.netns_inode("mnt:[4026531840]") is None


# --- deltas ----------------------------------------------------------------------------------

def test_first_sample_is_the_baseline_then_jumps_only():
    d = CounterDeltas(["A", "B", "C"])
    assert d.update(7, {"A": 10, "B": 5, "X": 1}, 100) == []
    assert d.update(7, {"A": 13, "B": 5, "X": 9}, 200) == [Jump(7, "A", 3, 13, 100, 200)]
    # C appears later (another kernel/module): its first value is a baseline too
    assert d.update(7, {"A": 13, "B": 6, "C": 4}, 300) == [Jump(7, "B", 1, 6, 200, 300)]
    assert d.update(7, {"A": 14, "B": 6, "C": 9}, 400) == [Jump(7, "A", 1, 14, 300, 400), Jump(7, "C", 5, 9, 300, 400)]
    assert d.latest() == {(7, "A"): 14, (7, "B"): 6, (7, "C"): 9}
    # namespaces are independent
    assert d.update(8, {"A": 1}, 400) == []
    assert d.update(8, {"A": 2}, 500) == [Jump(8, "A", 1, 2, 400, 500)]


def test_counter_going_down_rebaselines_the_namespace():
    d = CounterDeltas(["A", "B"])
    d.update(7, {"A": 100, "B": 50}, 1)
    # A went down (recreated namespace with a recycled inode): no negative and no B delta
    assert d.update(7, {"A": 2, "B": 60}, 2) == []
    assert d.resets == 1
    assert d.update(7, {"A": 5, "B": 60}, 3) == [Jump(7, "A", 3, 5, 2, 3)]
    d.forget(7)
    assert d.update(7, {"A": 9, "B": 70}, 4) == [] and d.namespaces() == {7}


# --- inet_diag -------------------------------------------------------------------------------

def _nlmsg(mtype: int, body: bytes, seq: int = 1) -> bytes:
    # struct nlmsghdr: __u32 nlmsg_len | __u16 nlmsg_type | __u16 nlmsg_flags | __u32 seq | __u32 pid
    msg = struct.pack("=IHHII", 16 + len(body), mtype, 0x2, seq, 0) + body
    return msg + b"\0" * (-len(msg) % 4)


def _diag_msg(family, state, sport, src: bytes, rq, wq, inode, cookie) -> bytes:
    return (bytes([family, state, 0, 0])                    # idiag_family, idiag_state, idiag_timer, idiag_retrans
            + struct.pack("!HH", sport, 0)                  # id.idiag_sport, id.idiag_dport (big endian)
            + src.ljust(16, b"\0") + b"\0" * 16             # id.idiag_src[4], id.idiag_dst[4]
            + struct.pack("=I", 0)                          # id.idiag_if
            + struct.pack("=II", cookie & 0xFFFFFFFF, cookie >> 32)  # id.idiag_cookie[2]
            + struct.pack("=IIIII", 0, rq, wq, 0, inode))   # expires, rqueue, wqueue, uid, inode


def test_diag_request_bytes():
    req = netstat.diag_request(socket.AF_INET6, seq=9)
    assert len(req) == 16 + 56
    # nlmsghdr: len 72, type SOCK_DIAG_BY_FAMILY (20), flags REQUEST|DUMP (0x301), seq 9, pid 0
    assert struct.unpack_from("=IHHII", req) == (72, 20, 0x301, 9, 0)
    # inet_diag_req_v2: family AF_INET6 (10), IPPROTO_TCP (6), ext 0, pad 0, states 1<<TCP_LISTEN
    assert struct.unpack_from("=BBBBI", req, 16) == (10, 6, 0, 0, 1 << 10)
    assert req[24:] == b"\0" * 48  # the socket id: any


def test_parse_diag_listeners_done_and_error():
    v4 = _diag_msg(2, 10, 8080, bytes([127, 0, 0, 1]), 3, 2, 5555, (1 << 32) | 7)
    v6 = _diag_msg(10, 10, 443, socket.inet_pton(socket.AF_INET6, "::"), 0, 4096, 6666, 8)
    buf = _nlmsg(20, v4) + _nlmsg(20, v6) + _nlmsg(3, struct.pack("=i", 0))
    got, done = netstat.parse_diag(buf)
    assert done
    assert got == [Listener(2, "127.0.0.1", 8080, 10, 3, 2, 5555, (1 << 32) | 7),
                   Listener(10, "::", 443, 10, 0, 4096, 6666, 8)]
    assert [li.endpoint for li in got] == ["127.0.0.1:8080", "[::]:443"]
    assert netstat.parse_diag(_nlmsg(20, v4)) == ([got[0]], False)  # more to come
    with pytest.raises(OSError) as e:  # nlmsgerr.error = -EPERM
        netstat.parse_diag(_nlmsg(2, struct.pack("=i", -1) + b"\0" * 16))
    assert e.value.errno == 1
    with pytest.raises(netstat.ParseError):
        netstat.parse_diag(struct.pack("=IHHII", 200, 20, 0, 0, 0))


def _li(port, rq, wq):
    return Listener(2, "0.0.0.0", port, 10, rq, wq, port, 0)


def test_pick_listeners_full_first_else_fullest_else_the_only_one():
    a, b, c = _li(1, 3, 2), _li(2, 2, 2), _li(3, 1, 128)
    assert netstat.pick_listeners([c, b, a]) == [a, b]
    assert netstat.pick_listeners([c, _li(4, 5, 10), _li(5, 1, 2)]) == [_li(4, 5, 10), _li(5, 1, 2)]
    assert netstat.pick_listeners([_li(6, 0, 128), _li(7, 0, 128)]) == []
    # a burst drained before the sample: the namespace's only listener is the one
    assert netstat.pick_listeners([_li(6, 0, 128)]) == [_li(6, 0, 128)]


# --- span mapping -------------------------------------------------------------------------------

J = Jump(4026532001, "TcpExtListenOverflows", 20, 20, 1_700_000_000_000_000_000, 1_700_000_001_000_000_000)


def test_counter_span_complete_output():
    s = nc.counter_span(J, CountingIds())
    assert s == KernelSpan(
        name="kernel.counter", trace_id=(1).to_bytes(16, "big"), span_id=(1).to_bytes(8, "big"),
        start_ns=1_700_000_000_000_000_000, end_ns=1_700_000_001_000_000_000,
        attributes={"kernelnet.kind": "counter", "kernelnet.counter.name": "TcpExtListenOverflows",
                    "kernelnet.counter.delta": 20, "kernelnet.netns": 4026532001})


def test_listen_overflow_span_complete_output():
    s = nc.listen_overflow_span(J, _li(8080, 3, 2), 4096, CountingIds())
    assert s == KernelSpan(
        name="kernel.tcp", trace_id=(1).to_bytes(16, "big"), span_id=(1).to_bytes(8, "big"),
        start_ns=1_700_000_000_000_000_000, end_ns=1_700_000_001_000_000_000,
        attributes={"kernelnet.kind": "tcp.listen_overflow", "kernelnet.listen.address": "0.0.0.0:8080",
                    "kernelnet.listen.queue_len": 3, "kernelnet.listen.queue_limit": 2,
                    "kernelnet.counter.name": "TcpExtListenOverflows", "kernelnet.counter.delta": 20,
                    "kernelnet.netns": 4026532001, "kernelnet.netns.somaxconn": 4096},
        status_code=2, status_message="accept queue overflow on 0.0.0.0:8080: TcpExtListenOverflows +20, queue 3/2")
    assert "kernelnet.netns.somaxconn" not in nc.listen_overflow_span(J, _li(1, 3, 2), None, CountingIds()).attributes


def test_every_attribute_is_declared_in_semconv():
    from otel_kernelnet import semconv
    for s in (nc.counter_span(J, CountingIds()), nc.listen_overflow_span(J, _li(1, 3, 2), 1, CountingIds())):
        kind = s.attributes["kernelnet.kind"]
        for k in s.attributes:
            fams = semconv.BY_KEY[k].families
            assert "*" in fams or kind in fams, (k, kind)


def test_overflow_jump_prefers_listen_overflows():
    drops = Jump(1, "TcpExtListenDrops", 4, 4, 0, 1)
    assert nc.overflow_jump([drops, J]) is J
    assert nc.overflow_jump([drops]) is drops
    assert nc.overflow_jump([Jump(1, "TcpRetransSegs", 1, 1, 0, 1)]) is None


# --- the family on a fake /proc ------------------------------------------------------------------

NETSTAT = "TcpExt: ListenOverflows ListenDrops TCPTimeouts\nTcpExt: {lo} {ld} 0\n"
SNMP = "Tcp: RetransSegs MaxConn\nTcp: {rs} -1\n"


class FakeProc:
    def __init__(self, root: Path):
        self.proc = root / "proc"
        self.run = root / "run-netns"
        self.run.mkdir(parents=True)
        self.net(self.proc / "self", 1, lo=0, ld=0, rs=0)

    def net(self, d: Path, inode: int, **vals) -> None:
        (d / "ns").mkdir(parents=True, exist_ok=True)
        link = d / "ns" / "net"
        if link.is_symlink():
            link.unlink()
        os.symlink(f"net:[{inode}]", link)  # a dangling link reads like /proc's
        self.counters(d, **vals)

    def counters(self, d: Path, lo=0, ld=0, rs=0) -> None:
        (d / "net").mkdir(exist_ok=True)
        (d / "net" / "netstat").write_text(NETSTAT.format(lo=lo, ld=ld))
        (d / "net" / "snmp").write_text(SNMP.format(rs=rs))


def make_family(tmp_path, listeners=None, **cfg):
    fp = FakeProc(tmp_path)
    ticks = iter(range(1_000, 10**9, 1_000))
    calls = []

    def fake_listeners(path):
        calls.append(path)
        return listeners if listeners is not None else ([_li(8080, 3, 2), _li(22, 0, 128)], 4096)
    fam = nc.NetnsCountersFamily(proc=str(fp.proc), run_netns=str(fp.run), clock_ns=lambda: next(ticks),
                                 listeners=fake_listeners)
    c = config.validate({"probes": {"netns_counters": {"interval_ms": 3_600_000, **cfg}}})
    ctx = KernelContext(btf=None, symbol=hex, clock=KernelClock(), ids=CountingIds(), cfg=c)
    return fam, fp, ctx, calls


def test_family_is_registered():
    assert [f.name for f in families()].count("netns_counters") == 1


def test_family_samples_jumps_and_overflows(tmp_path):
    fam, fp, ctx, calls = make_family(tmp_path)
    fp.net(fp.proc / "100", 111, lo=5, ld=5, rs=1)
    fp.net(fp.proc / "101", 111)  # same namespace: one pid is enough
    fp.net(fp.proc / "200", 222, rs=7)
    out: list[KernelSpan] = []
    fam.start(None, fam.plan(ctx), ctx, out.append, lambda e: (_ for _ in ()).throw(e))
    try:
        assert sorted(fam.namespaces) == [111, 222]  # /proc/self is not a pid
        fam.poll()
        assert out == []  # the first sample is the baseline
        fp.counters(fp.proc / "100", lo=25, ld=26, rs=3)
        fp.counters(fp.proc / "200", rs=8)
        fam.sample()
        assert out == []  # nothing is emitted until the collector loop polls
        fam.poll()
    finally:
        fam.close()
    got = [(s.name, s.attributes["kernelnet.netns"], s.attributes.get("kernelnet.counter.name"),
            s.attributes.get("kernelnet.counter.delta"), s.attributes.get("kernelnet.listen.address"),
            (s.start_ns, s.end_ns)) for s in out]
    # the window is previous sample -> this sample; the fake clock ticks 1000 ns per namespace
    # read: baseline 111 at 1000, 222 at 2000; second sample 111 at 3000, 222 at 4000
    assert sorted(got) == sorted([
        ("kernel.counter", 111, "TcpExtListenOverflows", 20, None, (1000, 3000)),
        ("kernel.counter", 111, "TcpExtListenDrops", 21, None, (1000, 3000)),
        ("kernel.counter", 111, "TcpRetransSegs", 2, None, (1000, 3000)),
        ("kernel.tcp", 111, "TcpExtListenOverflows", 20, "0.0.0.0:8080", (1000, 3000)),
        ("kernel.counter", 222, "TcpRetransSegs", 1, None, (2000, 4000)),
    ])
    assert len(calls) == 1 and calls[0].endswith("/100/ns/net")
    assert fam.latest()[(111, "TcpExtListenDrops")] == 26 and (111, "TcpExtTCPTimeouts") in fam.latest()
    st = fam.stats()
    assert (st["counter_spans"], st["overflow_spans"], st["overflow_unattributed"], st["namespaces"]) == (4, 1, 0, 2)


class WakingLoader:
    """The loader's interrupt(): ends the collector loop's sleep."""

    def __init__(self):
        self.wakes = 0

    def interrupt(self) -> None:
        self.wakes += 1


def test_the_worker_wakes_the_collector_loop_only_when_it_queued_spans(tmp_path):
    # the loop sleeps up to ringbuf.max_wait_ms (1 s) when idle: queued spans end that sleep
    fam, fp, ctx, _calls = make_family(tmp_path, listeners=([], None))
    fp.net(fp.proc / "100", 111)
    loader = WakingLoader()
    out: list[KernelSpan] = []
    fam.start(loader, fam.plan(ctx), ctx, out.append, lambda e: None)
    try:
        fam._step()  # nothing rose: no span, no wake-up
        assert loader.wakes == 0
        fp.counters(fp.proc / "100", rs=4)
        fam._step()
        assert loader.wakes == 1 and out == []  # queued; the loop's poll() emits
        fam.poll()
        assert [s.attributes["kernelnet.counter.delta"] for s in out] == [4]
    finally:
        fam.close()


def test_family_counts_unattributed_overflows_and_unreadable_namespaces(tmp_path):
    fam, fp, ctx, _calls = make_family(tmp_path, listeners=([], None))
    fp.net(fp.proc / "100", 111)
    out: list[KernelSpan] = []
    fam.start(None, fam.plan(ctx), ctx, out.append, lambda e: None)
    try:
        fp.counters(fp.proc / "100", lo=3)
        fam.sample()
        # the pid is recycled into another namespace: its reading is not 111's
        fp.net(fp.proc / "100", 999, lo=50)
        fam.sample()
        fam.poll()
    finally:
        fam.close()
    assert [s.attributes["kernelnet.counter.name"] for s in out] == ["TcpExtListenOverflows"]
    st = fam.stats()
    assert st["overflow_unattributed"] == 1 and st["read_errors"] >= 1


def test_discover_bounds_and_counts_skipped(tmp_path):
    fp = FakeProc(tmp_path)
    for pid, inode in ((10, 500), (11, 500), (12, 600), (13, 700), (14, 800)):
        fp.net(fp.proc / str(pid), inode)
    (fp.run / "blue").write_text("")  # stands in for a bind mount: its inode is the key
    blue = os.stat(fp.run / "blue").st_ino
    scan = nc.discover(str(fp.proc), str(fp.run), limit=3)
    # bind mounts first, then pids in numeric order (low pids: the host's namespace)
    assert list(scan.namespaces) == [blue, 500, 600] and scan.namespaces[blue].path == str(fp.run / "blue")
    assert scan.skipped == 2 and not scan.truncated  # 700 and 800
    full = nc.discover(str(fp.proc), str(fp.run), limit=100)
    assert list(full.namespaces) == [blue, 500, 600, 700, 800] and full.skipped == 0
    assert full.namespaces[500].pid == 10
    # a vanished namespace is forgotten by the next scan
    (fp.proc / "13" / "ns" / "net").unlink()
    assert 700 not in nc.discover(str(fp.proc), str(fp.run), limit=100).namespaces


def test_config_counters_must_be_non_empty_strings():
    with pytest.raises(config.ConfigError, match="a list of non-empty strings"):
        config.validate({"probes": {"netns_counters": {"counters": ["TcpRetransSegs", ""]}}})
    with pytest.raises(config.ConfigError, match="a list of non-empty strings"):
        config.validate({"probes": {"netns_counters": {"counters": "TcpRetransSegs"}}})
    assert config.validate({})["probes.netns_counters.interval_ms"] == 1000
