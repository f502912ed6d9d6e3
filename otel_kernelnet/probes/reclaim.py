"""Reclaim family: memory-reclaim stalls of tasks, kswapd runs, throttling, watermarks.

Tracepoints (each pair optional; the family runs with what this kernel has):
``vmscan:mm_vmscan_direct_reclaim_begin/_end`` and
``vmscan:mm_vmscan_memcg_reclaim_begin/_end`` (paired per thread in the kernel: one
span per stall, with order, gfp flags, pages reclaimed, the task and its cgroup),
``vmscan:mm_vmscan_kswapd_wake/_sleep`` (one span per kswapd run of a node) and
``vmscan:mm_vmscan_throttled`` (a task put to sleep by reclaim; kernels >= 5.16).
Always emitted (DESIGN: reclaim stalls are), rate-capped per CPU, losses counted.

Besides BPF, ``poll()`` samples ``/proc/zoneinfo`` every
``probes.reclaim.zoneinfo_interval_ms``: ``gauges()`` returns the last sample as plain
data for metrics, and a zone that falls below its min watermark (the condition
behind PFMEMALLOC drops) becomes one zero-length ``kernel.reclaim`` span of type
``zone_below_min`` at the sample where it happens (edge-triggered).

gfp flags are named from the running kernel's ``__print_flags`` table in the vmscan
format file (its entries are C constant expressions: ``( unsigned long)((( gfp_t)
((((1UL))) << (10))) | ...)``, evaluated here by a small, restricted evaluator);
throttle reasons likewise, with the ``VMSCAN_THROTTLE_*`` bit numbers from the BTF
enum ``vmscan_throttle_state``. Never from numbers written in our code.

Scope (sidecar mode, ``scope.cgroup``; otel_kernelnet/scope.py): a cgroup-scoped plan
compiles the cgroup v2 id and depth in (``KN_SCOPE_CGROUP*``): stalls and throttles of
tasks outside that cgroup are ignored in the kernel; kswapd is not attached, and
zone_below_min spans and zone gauges are not emitted (node-level: the DaemonSet's).
When scoping was asked for but is impossible here (no cgroup v2 hierarchy, no pod
cgroup found), the plan says so in ``degraded`` and the family reports the node.
"""

from __future__ import annotations

import ast
import ctypes
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from .. import records
from .. import scope as scope_mod
from .. import semconv as sc
from ..kernel import cgroups, tracefs, zoneinfo
from ..kernel.tracefs import TracepointFormat
from ..spans import IdSource, KernelSpan
from .base import Emit, KernelContext, OnError, ProbeFamily, ProbeUnavailable, RingBufferProbe, read_optional_formats

RECORD = records.record_type("reclaim", "kn_reclaim_event")
DEFS = records.defines("reclaim")
STATS = ("emitted", "rate_capped", "ringbuf_full", "seen", "unmatched")
assert len(STATS) == DEFS["KN_RCL_STAT_MAX"]
TYPES = {DEFS["KN_RCL_EV_DIRECT"]: "direct", DEFS["KN_RCL_EV_MEMCG"]: "memcg",
         DEFS["KN_RCL_EV_KSWAPD"]: "kswapd", DEFS["KN_RCL_EV_THROTTLE"]: "throttle"}
ZONE_BELOW_MIN = "zone_below_min"


@dataclass(frozen=True)
class Tracepoint:
    key: str  # KN_TP_<key>_<FIELD>
    name: str  # vmscan:<name>
    fields: Mapping[str, int]  # field -> size

    @property
    def full_name(self) -> str:
        return f"vmscan:{self.name}"


@dataclass(frozen=True)
class Group:
    key: str  # KN_HAVE_<key>
    tracepoints: tuple[Tracepoint, ...]
    fns: tuple[str, ...]
    what: str  # what is lost without it


GROUPS = (
    Group("DIRECT", (Tracepoint("DIRECT_BEGIN", "mm_vmscan_direct_reclaim_begin", {"order": 4, "gfp_flags": 8}),
                     Tracepoint("DIRECT_END", "mm_vmscan_direct_reclaim_end", {"nr_reclaimed": 8})),
          ("kn_rcl_on_direct_begin", "kn_rcl_on_direct_end"), "no direct-reclaim spans"),
    Group("MEMCG", (Tracepoint("MEMCG_BEGIN", "mm_vmscan_memcg_reclaim_begin", {"order": 4, "gfp_flags": 8}),
                    Tracepoint("MEMCG_END", "mm_vmscan_memcg_reclaim_end", {"nr_reclaimed": 8})),
          ("kn_rcl_on_memcg_begin", "kn_rcl_on_memcg_end"), "no memcg-reclaim spans"),
    Group("KSWAPD", (Tracepoint("KSWAPD_WAKE", "mm_vmscan_kswapd_wake", {"nid": 4, "zid": 4, "order": 4}),
                     Tracepoint("KSWAPD_SLEEP", "mm_vmscan_kswapd_sleep", {"nid": 4})),
          ("kn_rcl_on_kswapd_wake", "kn_rcl_on_kswapd_sleep"), "no kswapd spans"),
    Group("THROTTLE", (Tracepoint("THROTTLE", "mm_vmscan_throttled",
                                  {"nid": 4, "usec_timeout": 4, "usec_delayed": 4, "reason": 4}),),
          ("kn_rcl_on_throttled",), "no reclaim-throttling spans (vmscan:mm_vmscan_throttled: kernels >= 5.16)"),
)


# --- __print_flags tables -------------------------------------------------------------
_CAST = re.compile(r"\(\s*(?:unsigned\s+long|gfp_t|unsigned\s+int|int|unsigned)\s*\)")
_SUFFIX = re.compile(r"\b(0x[0-9a-fA-F]+|\d+)(?:UL|ULL|U|L|LL)\b")
_MASK64 = (1 << 64) - 1


def const_eval(expr: str, names: Mapping[str, int] | None = None) -> int:
    """Value of a C integer constant expression as trace formats print them (casts,
    ``UL`` suffixes, ``<< | & ~ + -`` and parentheses; identifiers from ``names``).

    >>> const_eval("( unsigned long)((( gfp_t)((((1UL))) << (10)))|(( gfp_t)((((1UL))) << (11))))")
    3072
    >>> const_eval("(1 << VMSCAN_THROTTLE_WRITEBACK)", {"VMSCAN_THROTTLE_WRITEBACK": 0})
    1
    """
    text = _SUFFIX.sub(r"\1", _CAST.sub(" ", expr))
    tree = ast.parse(text.strip(), mode="eval")
    names = names or {}

    def ev(n: ast.AST) -> int:
        if isinstance(n, ast.Expression):
            return ev(n.body)
        if isinstance(n, ast.Constant) and isinstance(n.value, int):
            return n.value
        if isinstance(n, ast.Name):
            if n.id not in names:
                raise ValueError(f"unknown name {n.id}")
            return names[n.id]
        if isinstance(n, ast.UnaryOp) and isinstance(n.op, ast.Invert):
            return ~ev(n.operand) & _MASK64
        if isinstance(n, ast.BinOp):
            a, b = ev(n.left), ev(n.right)
            ops = {ast.LShift: lambda: a << b, ast.RShift: lambda: a >> b, ast.BitOr: lambda: a | b,
                   ast.BitAnd: lambda: a & b, ast.Add: lambda: a + b, ast.Sub: lambda: a - b}
            for op, fn in ops.items():
                if isinstance(n.op, op):
                    return fn() & _MASK64
        raise ValueError(f"unsupported expression {ast.dump(n)[:60]}")
    return ev(tree)


def print_flags_table(print_fmt: str, field_name: str, names: Mapping[str, int] | None = None) -> list[tuple[int, str]]:
    """``[(mask, name), ...]`` of ``__print_flags(REC-><field_name>, "|", {mask, "NAME"}, ...)``
    in table order; entries whose mask cannot be evaluated are left out."""
    m = re.search(r"__print_flags\(\s*REC->" + re.escape(field_name) + r"\s*,", print_fmt)
    if not m:
        return []
    body = tracefs.balanced(print_fmt, print_fmt.index("(", m.start()) + 1)
    out = []
    i = 0
    while True:
        j = body.find("{", i)
        if j < 0:
            break
        inner = tracefs.balanced(body, j + 1, "{", "}")
        i = j + 1 + len(inner) + 1
        k = inner.rfind(",")
        if k < 0:
            continue
        name_m = re.fullmatch(r'\s*"([^"]*)"\s*', inner[k + 1:])
        if not name_m:
            continue  # { 0, ((void *)0) }: the terminator
        try:
            mask = const_eval(inner[:k], names)
        except (ValueError, SyntaxError):
            continue
        out.append((mask, name_m.group(1)))
    return out


def decode_flags(value: int, table: list[tuple[int, str]], none: str = "none") -> str:
    """Name flags as the kernel's ``__print_flags`` does: table order, each entry whose
    bits are all set takes them; bits left over are shown in hex.

    >>> decode_flags(0xcc0, [(0xcc0, "GFP_KERNEL"), (0x400, "__GFP_DIRECT_RECLAIM")])
    'GFP_KERNEL'
    >>> decode_flags(0x400 | 0x1000000000, [(0xcc0, "GFP_KERNEL"), (0x400, "__GFP_DIRECT_RECLAIM")])
    '__GFP_DIRECT_RECLAIM|0x1000000000'
    """
    if not value:
        return none
    parts = []
    for mask, name in table:
        if mask and value & mask == mask:
            parts.append(name)
            value &= ~mask
    if value:
        parts.append(hex(value))
    return "|".join(parts)


# --- plan --------------------------------------------------------------------------
@dataclass
class Plan:
    groups: list[Group]
    gfp_table: list[tuple[int, str]]
    throttle_table: list[tuple[int, str]]
    cgroup: cgroups.Setup
    defines: dict[str, Any] = field(default_factory=dict)
    degraded: list[str] = field(default_factory=list)
    scope: scope_mod.CgroupScope | None = None  # None: every cgroup

    @property
    def scoped(self) -> bool:
        """Reports only the tasks of one cgroup (no node-level spans or gauges)."""
        return self.scope is not None and self.scope.active

    @property
    def fix(self) -> str:
        """The fix ``check`` prints when degraded (empty: the generic kernel one)."""
        if self.scope is None or self.scope.active:
            return ""
        fix = "set scope.cgroup, or disable probes.reclaim in sidecars (docs/deploy-sidecar.md)"
        if len(self.degraded) > 1:
            fix += "; a kernel >= 6.11 with BTF has every field the probes use"
        return fix

    def describe(self) -> str:
        what = "all fields present"
        if self.scope is not None:
            what += f"; {scope_mod.describe_cgroup(self.scope)}"
        return what

    @property
    def attach(self) -> list[tuple[str, str]]:
        return [(tp.full_name, fn) for g in self.groups for tp, fn in zip(g.tracepoints, g.fns)]

    def gfp_name(self, flags: int) -> str:
        return decode_flags(flags, self.gfp_table)

    def throttle_reason(self, reason: int) -> str:
        return decode_flags(reason, self.throttle_table, "VMSCAN_THROTTLE_NONE")


def read_formats(tracefs_root: str | None = None) -> dict[str, TracepointFormat | None]:
    return read_optional_formats([tp for g in GROUPS for tp in g.tracepoints], tracefs_root, category="vmscan")


def plan(formats: Mapping[str, TracepointFormat | None] | None = None, btf: Any | None = None, *,
         cgroup: cgroups.Setup | None = None, rate_limit: int = 1000, ringbuf_pages: int = 64,
         scope: scope_mod.CgroupScope | None = None, rate_limit_node: int = 2000) -> Plan:
    """Decide how the family runs here (pure: give it formats, btf, the cgroup setup
    and the cgroup scope, see otel_kernelnet/scope.py)."""
    if formats is None:
        formats = read_formats()
    if cgroup is None:
        cgroup = cgroups.Setup(0, None)
    d: dict[str, Any] = {}
    degraded: list[str] = []
    groups: list[Group] = []
    scoped = scope is not None and scope.active
    for g in GROUPS:
        d[f"KN_HAVE_{g.key}"] = 0
        if scoped and g.key == "KSWAPD":
            continue  # a kswapd run belongs to the node, not to the scoped cgroup
        problems = []
        for tp in g.tracepoints:
            fmt = formats.get(tp.key)
            if fmt is None:
                problems.append(f"{tp.full_name} does not exist on this kernel")
                continue
            bad = [f for f, size in tp.fields.items() if f not in fmt.fields or fmt.fields[f].size != size]
            if bad:
                problems.append(f"{tp.full_name} lacks field(s) {', '.join(bad)} (or their size differs)")
        if problems:
            degraded.append(f"{'; '.join(problems)}: {g.what}")
            continue
        for tp in g.tracepoints:
            fmt = formats[tp.key]
            assert fmt is not None
            for f in tp.fields:
                d[f"KN_TP_{tp.key}_{f.upper()}"] = fmt.fields[f].offset
        d[f"KN_HAVE_{g.key}"] = 1
        groups.append(g)
    if not groups:
        raise ProbeUnavailable("none of the vmscan reclaim tracepoints is usable on this kernel")
    gfp_table: list[tuple[int, str]] = []
    for key in ("DIRECT_BEGIN", "MEMCG_BEGIN"):
        fmt = formats.get(key)
        if fmt is not None and not gfp_table:
            gfp_table = print_flags_table(fmt.print_fmt, "gfp_flags")
    if any(g.key in ("DIRECT", "MEMCG") for g in groups) and not gfp_table:
        degraded.append("the vmscan format names no gfp flags: they are reported in hex")
    throttle_table: list[tuple[int, str]] = []
    tfmt = formats.get("THROTTLE")
    if tfmt is not None and any(g.key == "THROTTLE" for g in groups):
        names: dict[str, int] = {}
        if btf is not None:
            try:
                names = btf.enum_members("vmscan_throttle_state")
            except Exception:
                names = {}
        throttle_table = print_flags_table(tfmt.print_fmt, "reason", names)
        if not throttle_table:
            degraded.append("throttle reasons cannot be named (BTF enum vmscan_throttle_state missing): shown in hex")
    cg, lost = cgroups.btf_defines(btf, cgroup)
    d.update(cg)
    degraded.extend(lost)
    d["KN_SCOPE_CGROUP"] = 0
    if scoped:
        assert scope is not None
        d["KN_SCOPE_CGROUP"] = 1
        d["KN_SCOPE_CGROUP_ID"] = f"{int(scope.id)}ULL"
        d["KN_SCOPE_CGROUP_LEVEL"] = int(scope.level)
    elif scope is not None:
        degraded.append(f"reclaim {scope_mod.describe_cgroup(scope)}: it reports every task's stalls, kswapd "
                        "runs and zone watermarks of the node (set scope.cgroup, or disable probes.reclaim here)")
    d["KN_RATE_LIMIT"] = int(rate_limit)
    d["KN_RATE_LIMIT_NODE"] = int(rate_limit_node)
    d["KN_RINGBUF_PAGES"] = int(ringbuf_pages)
    return Plan(groups, gfp_table, throttle_table, cgroup, d, degraded, scope)


# --- decode ------------------------------------------------------------------------
@dataclass(slots=True)
class ReclaimEvent:
    """A decoded ``struct kn_reclaim_event`` (see bpf/reclaim.h)."""
    type: int
    start_ns: int
    end_ns: int
    gfp_flags: int
    nr_reclaimed: int
    cgroup: int
    pid: int
    tid: int
    cpu: int
    order: int
    nid: int
    zid: int
    usec_timeout: int
    usec_delayed: int
    reason: int
    comm: str


# one struct.unpack_from in ReclaimEvent's field order, at the header's offsets (records.py)
_READ_EVENT = records.event_reader(records.layout("reclaim", "kn_reclaim_event"), ReclaimEvent, text=("comm",))


def decode(buf: bytes | bytearray | memoryview) -> ReclaimEvent:
    n = ctypes.sizeof(RECORD)
    if len(buf) < n:
        raise ValueError(f"reclaim record too short: {len(buf)} < {n} bytes")
    ev = _READ_EVENT(buf)
    if ev.type not in TYPES:
        raise ValueError(f"reclaim record of unknown type {ev.type}")
    return ev


# --- mapping -----------------------------------------------------------------------
def reclaim_span(ev: ReclaimEvent, *, to_epoch_ns: Callable[[int], int], ids: IdSource, plan_: Plan,
                 cgroup_path: Callable[[int], str | None] = lambda _i: None) -> KernelSpan:
    """One stall / kswapd run / throttle -> one ``kernel.reclaim`` span (begin -> end)."""
    typ = TYPES[ev.type]
    attrs: dict[str, Any] = {
        sc.KIND: sc.KIND_RECLAIM,
        "kernelnet.reclaim.type": typ,
        "kernelnet.reclaim.duration_ns": max(0, ev.end_ns - ev.start_ns),
        "kernelnet.cpu": ev.cpu,
        "process.pid": ev.pid,
        "thread.id": ev.tid,
        "process.command": ev.comm,
    }
    if typ in ("direct", "memcg"):
        attrs["kernelnet.reclaim.order"] = ev.order
        attrs["kernelnet.reclaim.gfp_flags"] = plan_.gfp_name(ev.gfp_flags)
        attrs["kernelnet.reclaim.gfp_flags_raw"] = ev.gfp_flags
        attrs["kernelnet.reclaim.nr_reclaimed"] = ev.nr_reclaimed
    elif typ == "kswapd":
        attrs["kernelnet.reclaim.order"] = ev.order
        attrs["kernelnet.memory.node"] = ev.nid
    elif typ == "throttle":
        attrs["kernelnet.memory.node"] = ev.nid
        attrs["kernelnet.reclaim.throttle.reason"] = plan_.throttle_reason(ev.reason)
        attrs["kernelnet.reclaim.throttle.timeout_us"] = ev.usec_timeout
    cgroups.add_attributes(attrs, ev.cgroup, cgroup_path(ev.cgroup))
    return KernelSpan(name=sc.SPAN_RECLAIM, trace_id=ids.trace_id(), span_id=ids.span_id(),
                      start_ns=to_epoch_ns(ev.start_ns), end_ns=to_epoch_ns(ev.end_ns), attributes=attrs)


def zone_span(z: zoneinfo.Zone, t_ns: int, *, ids: IdSource) -> KernelSpan:
    """A zone found below its min watermark at epoch time ``t_ns`` (zero-length span)."""
    return KernelSpan(
        name=sc.SPAN_RECLAIM, trace_id=ids.trace_id(), span_id=ids.span_id(), start_ns=t_ns, end_ns=t_ns,
        attributes={sc.KIND: sc.KIND_RECLAIM, "kernelnet.reclaim.type": ZONE_BELOW_MIN,
                    "kernelnet.memory.node": z.node, "kernelnet.memory.zone": z.zone,
                    "kernelnet.memory.zone.free_pages": z.free_pages, "kernelnet.memory.zone.min_pages": z.min_pages,
                    "kernelnet.memory.zone.low_pages": z.low_pages, "kernelnet.memory.zone.high_pages": z.high_pages})


class ZoneSampler:
    """Samples /proc/zoneinfo every ``interval_s``; edge-triggered below-min spans.

    ``read`` and ``now_ns`` (epoch ns) are injectable for tests.
    """

    def __init__(self, interval_s: float, ids: IdSource, emit: Emit, links: Any | None = None,
                 read: Callable[[], list[zoneinfo.Zone]] = zoneinfo.read,
                 now_ns: Callable[[], int] = time.time_ns, monotonic: Callable[[], float] = time.monotonic,
                 emit_spans: bool = True):
        self.interval_s = interval_s
        self.emit_spans = emit_spans  # False in a scoped collector: zone spans are node-level
        self.ids, self.emit, self.links = ids, emit, links
        self._read, self._now_ns, self._mono = read, now_ns, monotonic
        self._next = 0.0
        self._below: set[str] = set()
        self.zones: list[zoneinfo.Zone] = []
        self.sampled_ns = 0
        self.errors = 0
        self.below_min_events = 0

    def poll(self) -> None:
        if self._mono() < self._next:
            return
        self._next = self._mono() + self.interval_s
        try:
            zones = self._read()
        except (OSError, zoneinfo.ZoneinfoError):
            self.errors += 1
            return
        t = self._now_ns()
        self.zones, self.sampled_ns = zones, t
        below = zoneinfo.below_min(zones)
        span = None
        for z in zones:
            if z.key in below and z.key not in self._below:
                self.below_min_events += 1
                if self.emit_spans:
                    span = zone_span(z, t, ids=self.ids)
                    self.emit(span)
        self._below = set(below)
        if self.links is not None:
            self.links.add_snapshot(t, [z.as_dict() for z in zones if z.managed_pages > 0], below, span)


# --- family ------------------------------------------------------------------------
class ReclaimFamily(ProbeFamily):
    name = "reclaim"
    summary = "reclaim: direct/memcg reclaim stalls, kswapd, throttling (vmscan:*), zone watermarks"

    def __init__(self) -> None:
        self.probe: ReclaimProbe | None = None
        self.sampler: ZoneSampler | None = None
        self.cgroup_paths: cgroups.CgroupPaths | None = None
        self.scoped = False

    def plan(self, ctx: KernelContext) -> Plan:
        try:
            scope = scope_mod.resolve_cgroup(ctx.cfg.get("scope.mode", "node"), ctx.cfg.get("scope.cgroup", ""))
        except scope_mod.ScopeError as e:
            raise ProbeUnavailable(str(e)) from None
        return plan(btf=ctx.btf, cgroup=cgroups.detect(), rate_limit=ctx.cfg["probes.reclaim.rate_limit_per_cpu"],
                    rate_limit_node=ctx.cfg["probes.reclaim.rate_limit_per_node"],
                    ringbuf_pages=ctx.cfg["ringbuf.pages"], scope=scope)

    def start(self, loader, plan_: Plan, ctx: KernelContext, emit: Emit, on_error: OnError) -> None:
        self.cgroup_paths = cgroups.CgroupPaths(plan_.cgroup.root)
        links = getattr(ctx, "links", None)

        def on_event(ev: ReclaimEvent) -> None:
            span = reclaim_span(ev, to_epoch_ns=ctx.clock.to_epoch_ns, ids=ctx.ids, plan_=plan_,
                                cgroup_path=self.cgroup_paths.path)
            if links is not None and ev.type != DEFS["KN_RCL_EV_KSWAPD"]:
                links.add_reclaim(span, ev.pid, ev.cgroup, str(span.attributes.get("kernelnet.cgroup.path", "")))
            emit(span)
        self.scoped = plan_.scoped
        self.sampler = ZoneSampler(ctx.cfg["probes.reclaim.zoneinfo_interval_ms"] / 1000, ctx.ids, emit, links,
                                   emit_spans=not plan_.scoped)
        self.sampler.poll()  # a first sample at start: gauges() is never empty once running
        self.probe = ReclaimProbe(loader, plan_, on_event, on_error)

    def poll(self) -> None:
        if self.sampler is not None:
            self.sampler.poll()

    def stats(self) -> dict[str, int]:
        out = self.probe.stats() if self.probe else {}
        if self.sampler is not None:
            out["zoneinfo_errors"] = self.sampler.errors
            out["zone_below_min"] = self.sampler.below_min_events
        return out

    def gauges(self) -> list[dict]:
        """The last /proc/zoneinfo sample, one plain dict per populated zone::

            {"node": 0, "zone": "Normal", "free_pages": 5236431, "min_pages": 14769,
             "low_pages": 20163, "high_pages": 25557, "managed_pages": 5394266,
             "present_pages": 5505024, "level": "ok", "sampled_ns": <epoch ns>}

        ``level``: below_min, below_low, below_high or ok. Pages are of PAGE_SIZE.
        Empty before the first sample, and always in a cgroup-scoped collector (the
        zones are the node's: N sidecars would export N copies).
        """
        if self.sampler is None or self.scoped:
            return []
        return [{**z.as_dict(), "sampled_ns": self.sampler.sampled_ns}
                for z in self.sampler.zones if z.managed_pages > 0]


class ReclaimProbe(RingBufferProbe):
    """Compiled and attached reclaim family; ``on_event`` receives each ReclaimEvent."""

    def __init__(self, loader, plan_: Plan, on_event: Callable[[ReclaimEvent], None], on_error: OnError):
        self.plan = plan_
        super().__init__(loader, "reclaim", "reclaim.bpf.c", plan_.defines, "kn_rcl_events",
                         plan_.attach, decode, on_event, on_error, STATS)
