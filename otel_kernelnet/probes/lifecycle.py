"""skb lifecycle family: the receive path of one packet, arrival -> read or drop.

Stages (tracepoints; each stage becomes a span event with its own timestamp):

- **arrival**: ``net:netif_rx`` (veth, loopback, packets queued to a CPU's backlog),
  ``net:napi_gro_receive_entry`` (NIC with GRO), ``net:netif_receive_skb_entry`` /
  ``_list_entry`` (NIC without GRO); device, netns and CPU;
- **protocol**: ``net:netif_receive_skb`` (the gap from arrival is the backlog/NET_RX
  wait); the 4-tuple is read from the IP header here, and the GSO segment count;
- **enqueue**: ``tcp:tcp_probe`` (TCP receive processing of a socket: its cookie,
  its own 4-tuple, the payload length; a segment without payload ends there);
- **read**: ``skb:skb_copy_datagram_iovec`` in the reader's task (pid/tid/comm);
- **drop**: ``skb:kfree_skb`` (reason named by the running kernel).

Stitching happens in the kernel (bpf/lifecycle.bpf.c): a 2-way set-associative table
of slots indexed by a hash of the skb address holds the stages (an arrival takes the
older slot of its set; twice ``max_in_flight`` slots, rounded up to a power of two), and one
record is written per finished lifecycle that the volume policy selects (dropped; arrival -> end above ``slow_threshold_us``; cookie on
the watch list; 1 in ``sample_one_in``), under a per-CPU per-second cap. Every
finished lifecycle feeds per-stage log2 histograms (``histograms()``), exported as
OTel metrics.

Caveats: a TCP segment coalesced into the previous one in the receive queue is read
as part of that one (its own lifecycle is overwritten quietly in the slot table); UDP and other
protocols have no enqueue stage, so their spans carry the packet's 4-tuple but no
cookie (the join falls back to the 4-tuple). Requirements: tracefs; the tracepoints
``net:netif_rx``, ``net:netif_receive_skb``, ``skb:skb_copy_datagram_iovec``,
``skb:kfree_skb`` (refused without them); ``tcp:tcp_probe`` with
``sock_cookie`` and ``skbaddr`` (else no socket stage: degraded) and BTF (else no
device, netns, addresses or segment count: degraded).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from .. import records
from .. import semconv as sc
from ..kernel.tracefs import TracepointFormat
from ..export.metrics_model import HistogramPoint
from ..spans import L4_NAMES, STATUS_ERROR, STATUS_UNSET, IdSource, KernelSpan, SpanEvent, ip_text
from .base import Emit, KernelContext, OnError, ProbeFamily, ProbeUnavailable, RingBufferProbe, read_optional_formats
from .rawtp import Raw, attach_name, choose

RECORD = records.record_type("lifecycle", "kn_life_event")
DEFS = records.defines("lifecycle")
STATS = ("emitted", "rate_capped", "ringbuf_full", "arrived", "read", "dropped", "quiet", "no_data", "evicted", "unseen",
         "stale")
assert len(STATS) == DEFS["KN_STAT_MAX"]
STAGES = ("backlog", "protocol", "socket", "total")  # histogram stage names, KN_LIFE_H_* order
assert len(STAGES) == DEFS["KN_LIFE_H_STAGES"]
BUCKETS = DEFS["KN_LIFE_H_BUCKETS"]
METRIC_STAGE_LATENCY = "kernelnet.skb.stage.duration"
METRIC_STAGE_DOC = ("Receive-path stage latency of every packet followed (backlog: arrival -> netif_receive_skb; "
                    "protocol: -> socket enqueue; socket: enqueue -> first read; total: arrival -> first read)")


@dataclass(frozen=True)
class Tracepoint:
    key: str  # macro infix: KN_TP_<key>_<FIELD>, KN_HAVE_<have>
    category: str
    name: str
    fn: str  # program in lifecycle.bpf.c
    fields: Mapping[str, int]  # field -> size it must have
    have: str = ""  # KN_HAVE_<have> macro when optional ("" = required)
    what: str = ""  # what is lost without it
    raw: Raw | None = None  # the program can run as a raw tracepoint (rawtp.py), with these arguments

    @property
    def full_name(self) -> str:
        return f"{self.category}:{self.name}"


_SKB = Raw((("skb", "struct sk_buff *"),))
TRACEPOINTS = (
    Tracepoint("RX", "net", "netif_rx", "kn_on_netif_rx", {"skbaddr": 8}, raw=_SKB),
    Tracepoint("GRO", "net", "napi_gro_receive_entry", "kn_on_gro_entry", {"skbaddr": 8}, "GRO",
               "packets of GRO-capable NICs start at netif_receive_skb (no backlog stage)", raw=_SKB),
    Tracepoint("RCV_ENTRY", "net", "netif_receive_skb_entry", "kn_on_rcv_entry", {"skbaddr": 8}, "RCV_ENTRY",
               "packets of NICs without GRO are not followed", raw=_SKB),
    Tracepoint("RCV_LIST_ENTRY", "net", "netif_receive_skb_list_entry", "kn_on_rcv_list_entry",
               {"skbaddr": 8}, "RCV_LIST_ENTRY", "packets of NICs delivering lists are not followed", raw=_SKB),
    Tracepoint("RCV", "net", "netif_receive_skb", "kn_on_netif_receive_skb", {"skbaddr": 8}, raw=_SKB),
    # tcp_probe stays classic: its record holds values the kernel derives (cookie, data_len)
    Tracepoint("PROBE", "tcp", "tcp_probe", "kn_on_tcp_probe",
               {"skbaddr": 8, "skaddr": 8, "sock_cookie": 8, "saddr": 28, "daddr": 28,
                "sport": 2, "dport": 2, "family": 2, "data_len": 2}, "TCP_PROBE",
               "no socket-enqueue stage and no socket cookie on lifecycle spans (join by 4-tuple)"),
    Tracepoint("COPY", "skb", "skb_copy_datagram_iovec", "kn_on_copy_datagram", {"skbaddr": 8, "len": 4},
               raw=Raw((("skb", "struct sk_buff *"), ("len", "int")))),
    Tracepoint("DROP", "skb", "kfree_skb", "kn_on_kfree_skb", {"skbaddr": 8},
               raw=Raw((("skb", "struct sk_buff *"), ("reason", "enum skb_drop_reason")))),
)

# (macro, struct, member path, group): read through pointers, offsets from BTF
BTF_MEMBERS = (
    ("KN_OFF_SKB_DEV", "sk_buff", "dev", "dev"),
    ("KN_OFF_DEV_ND_NET", "net_device", "nd_net", "dev"),
    ("KN_OFF_NET_NS_INUM", "net", "ns.inum", "dev"),
    ("KN_OFF_DEV_IFINDEX", "net_device", "ifindex", "ifname"),
    ("KN_OFF_DEV_NAME", "net_device", "name", "ifname"),
    ("KN_OFF_SKB_LEN", "sk_buff", "len", "len"),
    ("KN_OFF_SKB_DATA", "sk_buff", "data", "l3"),
    ("KN_OFF_SKB_PROTOCOL", "sk_buff", "protocol", "l3"),
    ("KN_OFF_SKB_HEAD", "sk_buff", "head", "segs"),
    ("KN_OFF_SKB_END", "sk_buff", "end", "segs"),
    ("KN_OFF_SHINFO_GSO_SEGS", "skb_shared_info", "gso_segs", "segs"),
)
# the members read in one go at the protocol stage (macro -> size): the sk_buff block
# KN_SKB_LO..+KN_SKB_SPAN and the net_device block KN_DEV_LO..+KN_DEV_SPAN
SKB_BLOCK = {"KN_OFF_SKB_DEV": 8, "KN_OFF_SKB_DATA": 8, "KN_OFF_SKB_PROTOCOL": 2, "KN_OFF_SKB_HEAD": 8,
             "KN_OFF_SKB_END": 4}
DEV_BLOCK = {"KN_OFF_DEV_ND_NET": 8, "KN_OFF_DEV_IFINDEX": 4, "KN_OFF_DEV_NAME": 16}
BLOCK_MAX = 256  # bytes: a block read lands on the BPF stack (512 bytes in all)


def block(offs: Mapping[str, int], members: Mapping[str, int]) -> tuple[int, int]:
    """(lowest offset, span) covering the known members; (0, 0) if none or too wide.

    >>> block({"A": 16, "B": 200, "C": -1}, {"A": 8, "B": 8, "C": 2})
    (16, 192)
    """
    known = [(offs[m], size) for m, size in members.items() if offs.get(m, -1) >= 0]
    if not known:
        return 0, 0
    lo = min(o for o, _ in known)
    span = max(o + size for o, size in known) - lo
    return (lo, span) if span <= BLOCK_MAX else (0, 0)
BTF_LOSS = {
    "dev": "no network namespace or device on lifecycle spans (and no namespace scoping)",
    "ifname": "no device name on lifecycle spans",
    "len": "no packet length on lifecycle spans",
    "l3": "no 4-tuple for packets without a TCP socket stage",
    "segs": "no GSO segment count on lifecycle spans",
}


@dataclass
class Plan:
    formats: dict[str, TracepointFormat]  # key -> format of each tracepoint attached
    defines: dict[str, int] = field(default_factory=dict)
    degraded: list[str] = field(default_factory=list)
    drop_reasons: Mapping[int, str] = field(default_factory=dict)
    fallbacks: list[str] = field(default_factory=list)  # programs kept on classic tracepoints, and why

    @property
    def attach(self) -> list[Tracepoint]:
        return [tp for tp in TRACEPOINTS if tp.key in self.formats]

    def attach_points(self) -> list[tuple[str, str]]:
        """(what Loader.attach takes: raw:<name> or <category>:<name>, program)."""
        return [(attach_name(self.defines, tp.key, tp.category, tp.name), tp.fn) for tp in self.attach]

    def reason_name(self, code: int) -> str:
        name = self.drop_reasons.get(code)
        return name if name is not None else f"unknown:{code}"

    def describe(self) -> str:
        return f"{len(self.formats)} tracepoints ({', '.join(n for n, _ in self.attach_points())})"


def read_formats(tracefs_root: str | None = None) -> dict[str, TracepointFormat | None]:
    """Format of every tracepoint the family can use (None where this kernel lacks it)."""
    return read_optional_formats(TRACEPOINTS, tracefs_root)


def btf_offsets(btf: Any | None) -> tuple[dict[str, int], list[str]]:
    offs = {m: -1 for m, *_ in BTF_MEMBERS}
    if btf is None:
        return offs, ["no kernel BTF: " + "; ".join(BTF_LOSS.values())]
    bad_groups: set[str] = set()
    for macro, struct, path, group in BTF_MEMBERS:
        try:
            offs[macro] = btf.offsetof(struct, path)
        except Exception:
            bad_groups.add(group)
    for macro, _s, _p, group in BTF_MEMBERS:
        if group in bad_groups:
            offs[macro] = -1
    return offs, [f"BTF lacks members for it: {BTF_LOSS[g]}" for g in sorted(bad_groups)]


def plan(formats: Mapping[str, TracepointFormat | None] | None = None, btf: Any | None = None, *,
         slow_threshold_us: int = 1000, sample_one_in: int = 0, rate_limit: int = 2000,
         ringbuf_pages: int = 64, max_in_flight: int = 16384, max_watched: int = 4096,
         rate_limit_node: int = 4000) -> Plan:
    """Decide how the family runs on this kernel (pure: give it formats and btf to test)."""
    if formats is None:
        formats = read_formats()
    d: dict[str, int] = {}
    degraded: list[str] = []
    usable: dict[str, TracepointFormat] = {}
    for tp in TRACEPOINTS:
        if tp.have:
            d[f"KN_HAVE_{tp.have}"] = 0
        fmt = formats.get(tp.key)
        bad: list[str] = []
        if fmt is None:
            problem = f"{tp.full_name} does not exist on this kernel"
        else:
            bad = [f for f, size in tp.fields.items() if f not in fmt.fields or fmt.fields[f].size != size]
            problem = f"{tp.full_name} lacks field(s) {', '.join(bad)} (or their size differs)"
        if fmt is None or bad:
            if not tp.have:
                raise ProbeUnavailable(f"{problem}: the skb lifecycle needs it")
            degraded.append(f"{problem}: {tp.what}")
            continue
        for f in tp.fields:
            d[f"KN_TP_{tp.key}_{f.upper()}"] = fmt.fields[f].offset
        if tp.have:
            d[f"KN_HAVE_{tp.have}"] = 1
        usable[tp.key] = fmt
    drop = usable["DROP"]
    reasons: dict[int, str] = {}
    if "reason" in drop.fields and drop.fields["reason"].size == 4:
        d["KN_TP_DROP_REASON"] = drop.fields["reason"].offset
        reasons = dict(drop.symbols.get("reason", {}))
        if not reasons:
            degraded.append("the kernel publishes no drop-reason names: lifecycle drops carry unknown:<n>")
    else:
        d["KN_TP_DROP_REASON"] = -1
        degraded.append("skb:kfree_skb has no reason field: lifecycle drops carry unknown:0")
    if "PROBE" in usable:
        fams = {v: k for k, v in usable["PROBE"].symbols.get("family", {}).items()}
        if "AF_INET6" not in fams:
            degraded.append("tcp:tcp_probe does not name its address families: IPv6 sockets are read as IPv4")
        d["KN_AF_INET6"] = fams.get("AF_INET6", -1)
    offs, lost = btf_offsets(btf)
    d.update(offs)
    degraded.extend(lost)
    d["KN_SKB_LO"], d["KN_SKB_SPAN"] = block(offs, SKB_BLOCK)
    d["KN_DEV_LO"], d["KN_DEV_SPAN"] = block(offs, DEV_BLOCK)
    fallbacks: list[str] = []
    for tp in TRACEPOINTS:
        if tp.key not in usable:
            continue
        roles = ("skb", "len") if tp.key != "DROP" else (("skb", "reason") if d["KN_TP_DROP_REASON"] >= 0 else ("skb",))
        raw_d, why = choose(btf, tp.key, tp.name, tp.full_name, tp.raw, roles)
        d.update(raw_d)
        if why:
            fallbacks.append(why)
    d.update(KN_SLOW_NS=int(slow_threshold_us) * 1000, KN_SAMPLE_N=int(sample_one_in),
             KN_RATE_LIMIT=int(rate_limit), KN_RATE_LIMIT_NODE=int(rate_limit_node), KN_RINGBUF_PAGES=int(ringbuf_pages),
             KN_LIFE_BITS=slot_bits(max_in_flight), KN_WATCH_MAX=int(max_watched))
    return Plan(usable, d, degraded, reasons, fallbacks)


def slot_bits(max_in_flight: int) -> int:
    """log2 of the slot table size: twice max_in_flight, rounded up to a power of two
    (headroom for the set-associative table; with exactly max_in_flight slots and one
    way, a TCP bulk transfer lost up to ~1 in 3,000 backlog stages; 2 ways and twice
    the slots, a few in 100,000: see docs/probes/lifecycle.md, a residual loss whose
    cause is not established).

    >>> slot_bits(16384), slot_bits(16385), slot_bits(64)
    (15, 16, 7)
    """
    return max(7, (2 * int(max_in_flight) - 1).bit_length())


# --- decode ------------------------------------------------------------------------
@dataclass(slots=True)
class LifeEvent:
    """A decoded ``struct kn_life_event`` (see bpf/lifecycle.h for each field)."""
    t_arrival: int
    t_proto: int
    t_enqueue: int
    t_end: int
    skbaddr: int
    skaddr: int
    sk_cookie: int
    netns: int
    ifindex: int
    len: int
    data_len: int
    reason: int
    pid: int
    tid: int
    read_len: int
    cpu_arrival: int
    cpu_proto: int
    cpu_end: int
    segs: int
    protocol: int
    sport: int
    dport: int
    l4proto: int
    flags: int
    why: int
    arrival_tp: int
    saddr: bytes
    daddr: bytes
    comm: str
    ifname: str


# one struct.unpack_from in LifeEvent's field order, at the header's offsets (records.py)
_READ_EVENT = records.event_reader(records.layout("lifecycle", "kn_life_event"), LifeEvent, text=("comm", "ifname"))


def decode(buf: bytes | bytearray | memoryview) -> LifeEvent:
    n = ctypes.sizeof(RECORD)
    if len(buf) < n:
        raise ValueError(f"lifecycle record too short: {len(buf)} < {n} bytes")
    ev = _READ_EVENT(buf)
    if not ev.t_arrival or not ev.t_end:
        raise ValueError("lifecycle record without arrival or end time")
    return ev


WHY = (("DROPPED", "dropped"), ("SLOW", "slow"), ("WATCHED", "watched"), ("SAMPLED", "sampled"))
ARRIVALS = {DEFS["KN_LIFE_A_NETIF_RX"]: "netif_rx", DEFS["KN_LIFE_A_GRO"]: "napi_gro_receive_entry",
            DEFS["KN_LIFE_A_RECEIVE_ENTRY"]: "netif_receive_skb_entry"}
# per span, these are read as plain ints and cached texts (life_span runs for every record)
_F_READ, _F_ADDR, _F_IPV6 = (DEFS[f"KN_LIFE_F_{f}"] for f in ("READ", "ADDR", "IPV6"))
_WHY_BITS = tuple((DEFS[f"KN_LIFE_W_{f}"], n) for f, n in WHY)
_why_texts: dict[int, str] = {}


def why_text(why: int) -> str:
    """``kernelnet.skb.emitted_because`` of a record's ``why`` bits ("dropped,slow")."""
    t = _why_texts.get(why)
    if t is None:
        t = ",".join(n for bit, n in _WHY_BITS if why & bit)
        if len(_why_texts) < 256:
            _why_texts[why] = t
    return t


def life_span(ev: LifeEvent, *, to_epoch_ns: Callable[[int], int], ids: IdSource,
              reason_name: Callable[[int], str]) -> KernelSpan:
    """One finished lifecycle -> one ``kernel.skb.lifecycle`` span, stages as events.

    Pure: names come from ``reason_name``; times through ``to_epoch_ns``.
    """
    dropped = not ev.flags & _F_READ
    attrs: dict[str, Any] = {
        sc.KIND: sc.KIND_SKB,
        "kernelnet.skb.end": "dropped" if dropped else "read",
        "kernelnet.skb.emitted_because": why_text(ev.why),
        "kernelnet.skb.arrival": ARRIVALS.get(ev.arrival_tp) or f"unknown:{ev.arrival_tp}",
        "kernelnet.skb.len": ev.len,
        "kernelnet.skb.segs": ev.segs,
        "kernelnet.skb.protocol": ev.protocol,
        "kernelnet.skb.total_ns": ev.t_end - ev.t_arrival,
        "kernelnet.skb.arrival_cpu": ev.cpu_arrival,
        "kernelnet.cpu": ev.cpu_end,
        "process.pid": ev.pid,
        "thread.id": ev.tid,
        "process.command": ev.comm,
    }
    if ev.netns:
        attrs["kernelnet.netns"] = ev.netns
    if ev.ifname:
        attrs["network.interface.name"] = ev.ifname
    if ev.sk_cookie:
        attrs[sc.COOKIE] = ev.sk_cookie
    if ev.flags & _F_ADDR:
        v6 = bool(ev.flags & _F_IPV6)
        attrs["network.type"] = "ipv6" if v6 else "ipv4"
        transport = L4_NAMES.get(ev.l4proto)
        if transport:
            attrs["network.transport"] = transport
        attrs["network.local.address"] = ip_text(ev.saddr, v6)
        attrs["network.peer.address"] = ip_text(ev.daddr, v6)
        if ev.l4proto in (6, 17, 132):
            attrs["network.local.port"] = ev.sport
            attrs["network.peer.port"] = ev.dport
    arrival = {"kernelnet.cpu": ev.cpu_arrival}
    if ev.ifname:
        arrival["network.interface.name"] = ev.ifname
    events = [SpanEvent(to_epoch_ns(ev.t_arrival), sc.SKB_EV_ARRIVAL, arrival)]
    if ev.t_proto:
        attrs["kernelnet.skb.protocol_cpu"] = ev.cpu_proto
        attrs["kernelnet.skb.backlog_wait_ns"] = ev.t_proto - ev.t_arrival
        events.append(SpanEvent(to_epoch_ns(ev.t_proto), sc.SKB_EV_PROTOCOL, {"kernelnet.cpu": ev.cpu_proto}))
    if ev.t_enqueue:
        attrs["kernelnet.skb.data_len"] = ev.data_len
        if ev.t_proto:
            attrs["kernelnet.skb.protocol_ns"] = ev.t_enqueue - ev.t_proto
        events.append(SpanEvent(to_epoch_ns(ev.t_enqueue), sc.SKB_EV_ENQUEUE, {}))
    status, message = STATUS_UNSET, ""
    if dropped:
        reason = reason_name(ev.reason)
        attrs["kernelnet.drop.reason"] = reason
        attrs["kernelnet.drop.reason_code"] = ev.reason
        events.append(SpanEvent(to_epoch_ns(ev.t_end), sc.SKB_EV_DROP,
                                {"kernelnet.drop.reason": reason, "kernelnet.cpu": ev.cpu_end}))
        status, message = STATUS_ERROR, f"dropped: {reason}"
    else:
        attrs["kernelnet.skb.read_len"] = ev.read_len
        if ev.t_enqueue:
            attrs["kernelnet.skb.socket_wait_ns"] = ev.t_end - ev.t_enqueue
        events.append(SpanEvent(to_epoch_ns(ev.t_end), sc.SKB_EV_READ,
                                {"thread.id": ev.tid, "process.pid": ev.pid, "process.command": ev.comm}))
    return KernelSpan(
        name=sc.SPAN_SKB, trace_id=ids.trace_id(), span_id=ids.span_id(),
        start_ns=to_epoch_ns(ev.t_arrival), end_ns=to_epoch_ns(ev.t_end), attributes=attrs,
        status_code=status, status_message=message, events=events,
    )


def histogram_buckets(flat: list[int]) -> dict[str, list[int]]:
    """The flat per-stage bucket counts of kn_life_hist -> {stage: [64 counts]}.

    Bucket ``b`` counts deltas in ``[2^(b-1), 2^b)`` ns (``b = 0``: exactly 0 ns), so
    the explicit upper bounds of an OTel histogram are ``bucket_bounds()``.
    """
    return {stage: flat[i * BUCKETS:(i + 1) * BUCKETS] for i, stage in enumerate(STAGES)}


def bucket_bounds() -> list[float]:
    """Explicit bounds (ns) matching the log2 buckets: 63 bounds for 64 buckets.
    Bucket b (b >= 1) holds [2^(b-1), 2^b), so its upper bound is 2^b - 1 inclusive."""
    return [float((1 << b) - 1) for b in range(BUCKETS - 1)]


# --- family ------------------------------------------------------------------------
class LifecycleFamily(ProbeFamily):
    name = "lifecycle"
    summary = "lifecycle: skb receive path arrival -> read/drop"

    def __init__(self) -> None:
        self.probe: LifecycleProbe | None = None
        self.watch_overflow = 0

    def plan(self, ctx: KernelContext) -> Plan:
        c = ctx.cfg
        return plan(btf=ctx.btf, slow_threshold_us=c["probes.lifecycle.slow_threshold_us"],
                    sample_one_in=c["probes.lifecycle.sample_one_in"],
                    rate_limit=c["probes.lifecycle.rate_limit_per_cpu"], ringbuf_pages=c["ringbuf.pages"],
                    rate_limit_node=c["probes.lifecycle.rate_limit_per_node"],
                    max_in_flight=c["probes.lifecycle.max_in_flight"], max_watched=c["probes.lifecycle.max_watched"])

    def start(self, loader, plan_: Plan, ctx: KernelContext, emit: Emit, on_error: OnError) -> None:
        def on_event(ev: LifeEvent) -> None:
            span = life_span(ev, to_epoch_ns=ctx.clock.to_epoch_ns, ids=ctx.ids, reason_name=plan_.reason_name)
            if ctx.links is not None and ev.t_proto:
                # the softirq (or its wait) the packet sat through on its protocol CPU
                span.links.extend(ctx.links.softirq_overlapping(ev.cpu_proto, span.start_ns,
                                                                ctx.clock.to_epoch_ns(ev.t_proto)))
            emit(span)
        self.probe = LifecycleProbe(loader, plan_, on_event, on_error, ctx.scope_netns)

    def stats(self) -> dict[str, int]:
        if not self.probe:
            return {}
        st = self.probe.stats()
        st["watch_full"] = self.watch_overflow
        return st

    # -- the watch list (filled by the join with the cookies of indexed app spans) -----
    def watch(self, cookie: int) -> bool:
        """Emit every lifecycle of this socket cookie; False (counted) when the list is full."""
        if not self.probe:
            return False
        try:
            self.probe.prog.map("kn_watch").set(cookie, 1)
            return True
        except OSError:  # map full: counted, the socket is just not watched
            self.watch_overflow += 1
            return False

    def unwatch(self, cookie: int) -> None:
        if not self.probe:
            return
        self.probe.prog.map("kn_watch").delete(cookie)

    def histograms(self) -> dict[str, list[int]]:
        """Cumulative per-stage counts since start: {stage: [64 log2-ns buckets]}."""
        if not self.probe:
            return {}
        flat = self.probe.loader_percpu_sum("kn_life_hist", len(STAGES) * BUCKETS)
        return histogram_buckets(flat)

    def metric_histograms(self) -> list[HistogramPoint]:
        """The per-stage histograms as OTel metric points (export/metrics.py)."""
        if not self.probe:
            return []
        sums = self.probe.loader_percpu_sum("kn_life_hist_sum", len(STAGES))
        bounds = bucket_bounds()
        return [HistogramPoint(METRIC_STAGE_LATENCY, METRIC_STAGE_DOC, "ns", {"kernelnet.skb.stage": stage},
                               bounds, counts, float(sums[i]))
                for i, (stage, counts) in enumerate(self.histograms().items())]


class LifecycleProbe(RingBufferProbe):
    def __init__(self, loader, plan_: Plan, on_event: Callable[[LifeEvent], None], on_error: OnError,
                 scope_netns: frozenset[int] | None = None):
        self.plan = plan_
        super().__init__(loader, "lifecycle", "lifecycle.bpf.c", plan_.defines, "kn_life_events",
                         plan_.attach_points(), decode, on_event, on_error, STATS, scope_netns)

    def loader_percpu_sum(self, map_name: str, count: int) -> list[int]:
        return self._loader.percpu_sum(self.prog, map_name, count)
