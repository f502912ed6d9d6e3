"""Drop probe: ``skb:kfree_skb`` -> one span per dropped packet.

Lifecycle (STYLE habit 3): ``plan()`` reads what the probe needs from the running
kernel (the tracepoint's format file and a few BTF member offsets) and decides: run,
run degraded (and say what is lost), or refuse (and say the fix). ``DropProbe`` then
compiles with those ``-D`` settings, attaches, and decodes records; the loader
detaches it.

Requirements: tracefs, tracepoint ``skb:kfree_skb`` with ``skbaddr``, ``location``
and ``protocol``. Degrades without: ``reason`` (all drops ``unknown:0``), ``rx_sk``
(no socket cookie; kernels before 6.11), BTF (no addresses, ports, netns, device).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from .. import records
from ..kernel import tracefs
from ..kernel.tracefs import TracepointFormat
from ..spans import DropEvent, drop_span
from .base import Emit, KernelContext, OnError, ProbeFamily, ProbeUnavailable, RingBufferProbe
from .rawtp import FALLBACK_COST, Raw, attach_name, choose

TRACEPOINT = ("skb", "kfree_skb")
REQUIRED_FIELDS = ("skbaddr", "location", "protocol")
OPTIONAL_FIELDS = {
    "reason": "skb:kfree_skb has no reason field (kernel < 5.17): every drop is reported as unknown:0",
    "rx_sk": "skb:kfree_skb has no rx_sk field (kernel < 6.11): drops carry the owning socket's cookie at best; join by 4-tuple",
}
# (macro, struct, member path): where the probe reads through pointers, from BTF
BTF_MEMBERS = (
    ("KN_OFF_SKB_HEAD", "sk_buff", "head"),
    ("KN_OFF_SKB_NETWORK_HEADER", "sk_buff", "network_header"),
    ("KN_OFF_SKB_TRANSPORT_HEADER", "sk_buff", "transport_header"),
    ("KN_OFF_SKB_LEN", "sk_buff", "len"),
    ("KN_OFF_SKB_DEV", "sk_buff", "dev"),
    ("KN_OFF_SKB_SK", "sk_buff", "sk"),
    ("KN_OFF_DEV_IFINDEX", "net_device", "ifindex"),
    ("KN_OFF_DEV_NAME", "net_device", "name"),
    ("KN_OFF_DEV_ND_NET", "net_device", "nd_net"),
    ("KN_OFF_NET_NS_INUM", "net", "ns.inum"),
    ("KN_OFF_SK_COOKIE", "sock", "__sk_common.skc_cookie"),
    ("KN_OFF_SK_NET", "sock", "__sk_common.skc_net"),
    ("KN_OFF_SKB_PROTOCOL", "sk_buff", "protocol"),
)
# groups that only work together: if one member is missing, the whole group is off
BTF_GROUPS = {
    "packet addresses and ports": ("KN_OFF_SKB_HEAD", "KN_OFF_SKB_NETWORK_HEADER", "KN_OFF_SKB_TRANSPORT_HEADER"),
    "device and network namespace": ("KN_OFF_SKB_DEV", "KN_OFF_DEV_IFINDEX", "KN_OFF_DEV_NAME", "KN_OFF_DEV_ND_NET"),
    "network namespace": ("KN_OFF_NET_NS_INUM",),
    "socket cookie": ("KN_OFF_SK_COOKIE",),
    "owning socket of packets without a receiving socket": ("KN_OFF_SKB_SK",),
    "socket network namespace": ("KN_OFF_SK_NET",),
    "packet length": ("KN_OFF_SKB_LEN",),
}
# the raw tracepoint's arguments (rawtp.py); skb->protocol then comes through BTF
RAW = Raw((("skb", "struct sk_buff *"), ("location", "void *"), ("reason", "enum skb_drop_reason"),
           ("rx_sk", "struct sock *")))

RECORD = records.record_type("drop", "kn_drop_event")
FLAGS = records.defines("drop")
STATS = ("emitted", "rate_capped", "ringbuf_full", "seen")
assert len(STATS) == FLAGS["KN_STAT_MAX"]


@dataclass
class Plan:
    format: TracepointFormat
    defines: dict[str, int] = field(default_factory=dict)
    degraded: list[str] = field(default_factory=list)
    fallbacks: list[str] = field(default_factory=list)  # classic instead of raw tracepoint, and why

    def reason_name(self, code: int) -> str:
        return self.format.symbol("reason", code)

    def attach_points(self) -> list[tuple[str, str]]:
        """(what Loader.attach takes: raw:kfree_skb or skb:kfree_skb, program)."""
        return [(attach_name(self.defines, "DROP", *TRACEPOINT), "kn_on_kfree_skb")]

    def describe(self) -> str:
        n = len(self.format.symbols.get("reason", {}))
        fields = ", ".join(f for f in (*REQUIRED_FIELDS, *OPTIONAL_FIELDS) if f in self.format.fields)
        return f"{self.attach_points()[0][0]}: fields {fields}; {n} drop-reason names from the kernel"


def btf_offsets(btf: object | None) -> tuple[dict[str, int], list[str]]:
    """-D offsets from BTF (-1 where unknown) and what is lost without them."""
    offs = {macro: -1 for macro, _s, _p in BTF_MEMBERS}
    if btf is None:
        return offs, ["no kernel BTF (/sys/kernel/btf/vmlinux): no addresses, ports, device, netns or cookie on drops"]
    for macro, struct, path in BTF_MEMBERS:
        try:
            offs[macro] = btf.offsetof(struct, path)  # type: ignore[attr-defined]
        except Exception:
            offs[macro] = -1
    lost = []
    for what, group in BTF_GROUPS.items():
        if any(offs[m] < 0 for m in group):
            for m in group:
                offs[m] = -1
            lost.append(f"BTF lacks a member for {what}")
    return offs, lost


def plan(fmt: TracepointFormat | None = None, btf: object | None = None,
         rate_limit: int = 10000, ringbuf_pages: int = 64, rate_limit_node: int = 10000) -> Plan:
    """Decide how the probe runs on this kernel (pure: give it fmt and btf to test)."""
    if fmt is None:
        try:
            fmt = tracefs.read_format(*TRACEPOINT)
        except tracefs.TracefsError as e:
            raise ProbeUnavailable(str(e)) from None
    missing = [f for f in REQUIRED_FIELDS if f not in fmt.fields]
    if missing:
        raise ProbeUnavailable(f"skb:kfree_skb lacks field(s) {', '.join(missing)}: this kernel is too old for the drop probe")
    p = Plan(fmt)
    d = p.defines
    for name in REQUIRED_FIELDS:
        d[f"KN_TP_{name.upper()}"] = fmt.fields[name].offset
    for name, loss in OPTIONAL_FIELDS.items():
        if name in fmt.fields:
            d[f"KN_TP_{name.upper()}"] = fmt.fields[name].offset
        else:
            d[f"KN_TP_{name.upper()}"] = -1
            p.degraded.append(loss)
    if "reason" in fmt.fields and not fmt.symbols.get("reason"):
        p.degraded.append("the kernel publishes no drop-reason names: reasons are reported as unknown:<n>")
    offs, lost = btf_offsets(btf)
    d.update(offs)
    p.degraded.extend(lost)
    # raw tracepoint with the same information the format file offers (a hidden field stays hidden)
    roles = ("skb", "location", *(f for f in OPTIONAL_FIELDS if d[f"KN_TP_{f.upper()}"] >= 0))
    raw_d, why = choose(btf, "DROP", TRACEPOINT[1], "%s:%s" % TRACEPOINT, RAW, roles)
    if raw_d["KN_RAW_DROP"] and offs["KN_OFF_SKB_PROTOCOL"] < 0:
        raw_d, why = {"KN_RAW_DROP": 0}, f"skb:kfree_skb: BTF lacks sk_buff.protocol: {FALLBACK_COST}"
    d.update(raw_d)
    if why:
        p.fallbacks.append(why)
    d["KN_RATE_LIMIT"] = int(rate_limit)
    d["KN_RATE_LIMIT_NODE"] = int(rate_limit_node)
    d["KN_RINGBUF_PAGES"] = int(ringbuf_pages)
    return p


# decode: one struct.unpack_from of the fields DropEvent takes straight from the record
# (at the offsets the header gives), then the flag bits and strings. Asked for in the
# header's order (flags before the addresses), the reader is unpack_from itself: ~0.4 us
# less per record than reordering the tuple.
_LAYOUT = records.layout("drop", "kn_drop_event")
_DIRECT = tuple(f for f in DropEvent.__dataclass_fields__ if f in _LAYOUT.fields and f not in ("comm", "ifname"))
_READ = _LAYOUT.reader(*_DIRECT[:-2], "flags", *_DIRECT[-2:], "comm", "ifname")
_SIZE = _LAYOUT.size
# DropEvent's fields that come from flag bits, in DropEvent's order, and their bits
_FLAG_FIELDS = {"has_sk": "KN_DROP_F_HAS_SK", "has_addr": "KN_DROP_F_ADDR", "ipv6": "KN_DROP_F_IPV6",
                "has_dev": "KN_DROP_F_DEV", "owner_sk": "KN_DROP_F_OWNER_SK"}
_N = len(_DIRECT)
# the layout below is what decode() assumes of DropEvent's field order: checked at import
assert tuple(DropEvent.__dataclass_fields__) == (*_DIRECT[:_N - 2], *_FLAG_FIELDS, *_DIRECT[_N - 2:], "comm", "ifname"), \
    "DropEvent's fields: the record's scalars, the flag booleans, saddr, daddr, comm, ifname"
_FLAG_BOOLS = tuple(tuple(bool(f & FLAGS[bit]) for bit in _FLAG_FIELDS.values()) for f in range(256))


def decode(buf: bytes | bytearray | memoryview, _read=_READ, _flags=_FLAG_BOOLS, _cstr=records.cstr,
           _Ev=DropEvent, _n=_N - 2) -> DropEvent:
    """Decode one ``struct kn_drop_event`` (exactly as drop.h lays it out)."""
    if len(buf) < _SIZE:
        raise ValueError(f"drop record too short: {len(buf)} < {_SIZE} bytes")
    v = _read(buf)  # the scalars, flags, saddr, daddr, comm, ifname
    return _Ev(*v[:_n], *_flags[v[_n]], v[_n + 1], v[_n + 2], _cstr(v[-2]), _cstr(v[-1]))


def link_memory_pressure(span, links) -> None:
    """A PFMEMALLOC drop: the zone watermark state of that moment and links to the
    reclaim activity around it (the condition behind pfmemalloc skbs)."""
    state = links.memory_pressure_at(span.start_ns)
    if state is None:
        return
    span.attributes["kernelnet.memory.below_min"] = ",".join(state["below_min"])
    span.attributes["kernelnet.memory.sampled_ago_ns"] = span.start_ns - state["sampled_ns"]
    span.attributes["kernelnet.memory.reclaim_spans"] = state["reclaim_spans"]
    span.links.extend(state["links"])


class DropFamily(ProbeFamily):
    name = "drop"
    summary = "drop: skb:kfree_skb"

    def __init__(self) -> None:
        self.probe: DropProbe | None = None

    def plan(self, ctx: KernelContext) -> Plan:
        return plan(btf=ctx.btf, rate_limit=ctx.cfg["probes.drop.rate_limit_per_cpu"],
                    rate_limit_node=ctx.cfg["probes.drop.rate_limit_per_node"], ringbuf_pages=ctx.cfg["ringbuf.pages"])

    def start(self, loader, plan_: Plan, ctx: KernelContext, emit: Emit, on_error: OnError) -> None:
        def on_event(ev: DropEvent) -> None:
            span = drop_span(ev, to_epoch_ns=ctx.clock.to_epoch_ns, ids=ctx.ids,
                             reason_name=plan_.reason_name, symbol=ctx.symbol)
            if ctx.links is not None and span.attributes["kernelnet.drop.reason"] == "PFMEMALLOC":
                link_memory_pressure(span, ctx.links)
            emit(span)
        self.probe = DropProbe(loader, plan_, on_event, on_error, ctx.scope_netns)

    def stats(self) -> dict[str, int]:
        return self.probe.stats() if self.probe else {}


class DropProbe(RingBufferProbe):
    """Compiled and attached drop probe; ``on_event`` receives each DropEvent."""

    def __init__(self, loader, plan_: Plan, on_event: Callable[[DropEvent], None], on_error: OnError,
                 scope_netns: frozenset[int] | None = None):
        self.plan = plan_
        super().__init__(loader, "drop", "drop.bpf.c", plan_.defines, "kn_drop_events",
                         plan_.attach_points(), decode, on_event, on_error, STATS, scope_netns)
