"""Softirq family: NET_RX/NET_TX softirqs that waited or ran too long, with the culprit.

Per CPU and vector (NET_RX, NET_TX), ``irq:softirq_raise`` -> ``softirq_entry`` is the
wait and ``softirq_entry`` -> ``softirq_exit`` the run. Every run lands in log2
histograms of wait and run kept in BPF maps (``histograms()``); a run whose wait or
run reaches ``probes.softirq.wait_threshold_ms`` / ``run_threshold_ms`` becomes one
``kernel.softirq`` span from the start of the wait to the exit.

The culprit (NET_RX): while the work waits, ``sched:sched_switch`` charges each task
switched out for the time it held the CPU, and the task interrupted at entry is
charged up to the entry; the span names the longest holder (``kernelnet.culprit.*``)
and carries one ``culprit`` event per task kept (4 slots; the rest is summed in
``kernelnet.softirq.culprit_other_ns``). ``sched:sched_waking`` tells whether this
CPU's ksoftirqd was woken and the switch when it got the CPU. When another CPU queued
the packets by RPS IPI (``csd:csd_queue_cpu`` of ``rps_trigger_softirq``), the wait
starts at that queueing: a CPU with interrupts off delays the raise itself, and the
task running when the IPI was finally taken (``kernelnet.softirq.ipi.*``) is the one
that had them off. For the run, ``napi:napi_poll`` gives polls, packets (work) and
how often the budget was used up.

How it reads the kernel: field offsets from the format files; vector numbers from
the ``__print_symbolic`` table of ``irq:softirq_entry`` (never from our code);
``rps_trigger_softirq``'s address from kallsyms; cgroup ids as in
``kernel/cgroups.py``. Optional parts (culprits, ksoftirqd, napi, IPI) are compiled
out, and said so, where this kernel lacks them.
"""

from __future__ import annotations

import ctypes
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from .. import records
from ..export.metrics_model import HistogramPoint
from .. import semconv as sc
from ..kernel import cgroups
from ..kernel.tracefs import TracepointFormat
from ..spans import IdSource, KernelSpan, SpanEvent
from .base import Emit, KernelContext, OnError, ProbeFamily, ProbeUnavailable, RingBufferProbe, read_optional_formats
from .rawtp import FALLBACK_COST, Raw, attach_name, choose

RECORD = records.record_type("softirq", "kn_softirq_event")
DEFS = records.defines("softirq")
STATS = ("emitted", "rate_capped", "ringbuf_full", "seen", "no_raise")
assert len(STATS) == DEFS["KN_SIRQ_STAT_MAX"]
CULPRITS = DEFS["KN_SIRQ_CULPRITS"]
SLOTS = DEFS["KN_SIRQ_SLOTS"]
VECTORS = ("NET_RX", "NET_TX")  # index KN_SIRQ_IDX_RX, KN_SIRQ_IDX_TX
MEASURES = ("wait", "run")


@dataclass(frozen=True)
class Tracepoint:
    key: str  # macro infix: KN_HAVE_<key>, KN_TP_<key>_<FIELD>
    category: str
    name: str
    fn: str
    fields: Mapping[str, int]  # field -> size it must have
    what: str = ""  # what is lost without it ("" = required)
    raw: Raw | None = None  # the program can run as a raw tracepoint (rawtp.py), with these arguments

    @property
    def full_name(self) -> str:
        return f"{self.category}:{self.name}"


_VEC = Raw((("vec", "unsigned int"),))
TRACEPOINTS = (
    Tracepoint("RAISE", "irq", "softirq_raise", "kn_sirq_on_raise", {"vec": 4}, raw=_VEC),
    Tracepoint("ENTRY", "irq", "softirq_entry", "kn_sirq_on_entry", {"vec": 4}, raw=_VEC),
    Tracepoint("EXIT", "irq", "softirq_exit", "kn_sirq_on_exit", {"vec": 4}, raw=_VEC),
    Tracepoint("SWITCH", "sched", "sched_switch", "kn_sirq_on_switch",
               {"prev_comm": 16, "prev_pid": 4, "next_pid": 4},
               "no culprits beyond the interrupted task (tasks switched during the wait)",
               raw=Raw((("prev", "struct task_struct *"), ("next", "struct task_struct *")),
                       ("bool", "struct task_struct *", "struct task_struct *", "unsigned int"))),
    Tracepoint("WAKING", "sched", "sched_waking", "kn_sirq_on_waking", {"pid": 4},
               "no ksoftirqd wake-up times", raw=Raw((("p", "struct task_struct *"),))),
    Tracepoint("NAPI", "napi", "napi_poll", "kn_sirq_on_napi_poll", {"work": 4, "budget": 4},
               "no napi poll work/budget on long runs",
               raw=Raw((("work", "int"), ("budget", "int")), ("struct napi_struct *", "int", "int"))),
    Tracepoint("CSDQ", "csd", "csd_queue_cpu", "kn_sirq_on_csd_queue", {"cpu": 4, "func": 8},
               "no RPS IPI delay (a CPU with interrupts off delaying the raise is not seen)"),
    Tracepoint("CSDE", "csd", "csd_function_entry", "kn_sirq_on_csd_entry", {"func": 8},
               "no RPS IPI delay (a CPU with interrupts off delaying the raise is not seen)"),
)
BY_KEY = {tp.key: tp for tp in TRACEPOINTS}
RPS_FUNC = "rps_trigger_softirq"


# --- plan --------------------------------------------------------------------------
@dataclass
class Plan:
    formats: dict[str, TracepointFormat]  # key -> format, only what is attached
    vectors: dict[int, str]  # the kernel's vector numbers -> names
    cgroup: cgroups.Setup
    defines: dict[str, int] = field(default_factory=dict)
    degraded: list[str] = field(default_factory=list)
    fallbacks: list[str] = field(default_factory=list)  # programs kept on classic tracepoints, and why

    @property
    def attach(self) -> list[Tracepoint]:
        return [BY_KEY[k] for k in self.formats]

    def attach_points(self) -> list[tuple[str, str]]:
        """(what Loader.attach takes: raw:<name> or <category>:<name>, program)."""
        return [(attach_name(self.defines, tp.key, tp.category, tp.name), tp.fn) for tp in self.attach]

    def describe(self) -> str:
        return f"{len(self.formats)} tracepoints ({', '.join(n for n, _ in self.attach_points())})"

    def vector_name(self, vec: int) -> str:
        name = self.vectors.get(vec)
        return name if name is not None else f"unknown:{vec}"


def possible_cpus(text: str | None = None) -> int:
    """Number of possible CPU ids from ``/sys/devices/system/cpu/possible`` ("0-3,8")."""
    if text is None:
        try:
            with open("/sys/devices/system/cpu/possible") as f:
                text = f.read()
        except OSError:
            return os.cpu_count() or 1
    hi = 0
    for part in text.strip().split(","):
        if part:
            hi = max(hi, int(part.split("-")[-1]))
    return hi + 1


def read_formats(tracefs_root: str | None = None) -> dict[str, TracepointFormat | None]:
    """Format of every tracepoint the family can use (None where this kernel lacks it)."""
    return read_optional_formats(TRACEPOINTS, tracefs_root)


def _ok(fmt: TracepointFormat, tp: Tracepoint) -> list[str]:
    return [f for f, size in tp.fields.items() if f not in fmt.fields or fmt.fields[f].size != size]


def plan(formats: Mapping[str, TracepointFormat | None] | None = None, btf: Any | None = None, *,
         rps_func: int | None = None, cgroup: cgroups.Setup | None = None,
         wait_threshold_ms: float = 1.0, run_threshold_ms: float = 1.0, rate_limit: int = 1000,
         ringbuf_pages: int = 64, max_cpus: int | None = None, rate_limit_node: int = 2000) -> Plan:
    """Decide how the family runs here (pure: give it formats, btf, the address of
    ``rps_trigger_softirq`` and the cgroup setup to test)."""
    if formats is None:
        formats = read_formats()
    if cgroup is None:
        cgroup = cgroups.Setup(0, None)
    d: dict[str, int] = {}
    degraded: list[str] = []
    usable: dict[str, TracepointFormat] = {}
    for tp in TRACEPOINTS:
        fmt = formats.get(tp.key)
        d[f"KN_HAVE_{tp.key}"] = 0
        bad = _ok(fmt, tp) if fmt is not None else list(tp.fields)
        if bad:
            why = "does not exist on this kernel" if fmt is None else f"lacks field(s) {', '.join(bad)} (or their size differs)"
            if not tp.what:
                raise ProbeUnavailable(f"{tp.full_name} {why}: the softirq family cannot run")
            if tp.what not in degraded:
                degraded.append(f"{tp.full_name} {why}: {tp.what}")
            continue
        for f in tp.fields:
            d[f"KN_TP_{tp.key}_{f.upper()}"] = fmt.fields[f].offset
        d[f"KN_HAVE_{tp.key}"] = 1
        usable[tp.key] = fmt
    vectors = dict(usable["ENTRY"].symbols.get("vec", {}))
    by_name = {v: k for k, v in vectors.items()}
    missing = [v for v in VECTORS if v not in by_name]
    if missing:
        raise ProbeUnavailable(f"irq:softirq_entry names no {', '.join(missing)} vector: "
                               "the softirq family cannot tell network softirqs apart")
    d["KN_VEC_NET_RX"], d["KN_VEC_NET_TX"] = by_name["NET_RX"], by_name["NET_TX"]
    ipi = "CSDQ" in usable and "CSDE" in usable
    if ipi and not rps_func:
        degraded.append(f"the address of {RPS_FUNC} is not visible in kallsyms: no RPS IPI delay")
        ipi = False
    if not ipi:
        usable.pop("CSDQ", None)
        usable.pop("CSDE", None)
        d["KN_HAVE_CSDQ"] = d["KN_HAVE_CSDE"] = 0
    d["KN_HAVE_IPI"] = 1 if ipi else 0
    if ipi:
        d["KN_RPS_FUNC"] = f"{int(rps_func):#x}ULL"  # type: ignore[assignment]  (an unsigned 64-bit literal)
    cg, lost = cgroups.btf_defines(btf, cgroup)
    d.update(cg)
    degraded.extend(lost)
    fallbacks = _choose_raw(btf, usable, d)
    d["KN_WAIT_THRESHOLD_NS"] = int(wait_threshold_ms * 1_000_000)
    d["KN_RUN_THRESHOLD_NS"] = int(run_threshold_ms * 1_000_000)
    d["KN_RATE_LIMIT"] = int(rate_limit)
    d["KN_RATE_LIMIT_NODE"] = int(rate_limit_node)
    d["KN_RINGBUF_PAGES"] = int(ringbuf_pages)
    d["KN_MAX_CPUS"] = int(max_cpus or possible_cpus())
    return Plan(usable, vectors, cgroup, d, degraded, fallbacks)


def _choose_raw(btf: Any | None, usable: Mapping[str, TracepointFormat], d: dict[str, Any]) -> list[str]:
    """Raw tracepoints where this kernel's BTF allows (rawtp.py): -D settings into ``d``,
    the fallback lines returned."""
    out: list[str] = []
    for key, _fmt in usable.items():
        tp = BY_KEY[key]
        raw_d, why = choose(btf, tp.key, tp.name, tp.full_name, tp.raw)
        if raw_d.get(f"KN_RAW_{key}") and key in ("SWITCH", "WAKING"):  # they read task_struct.pid
            try:
                d["KN_OFF_TASK_PID"] = btf.offsetof("task_struct", "pid")  # type: ignore[union-attr]
            except Exception:
                raw_d, why = {f"KN_RAW_{key}": 0}, f"{tp.full_name}: BTF lacks task_struct.pid: {FALLBACK_COST}"
        d.update(raw_d)
        if why:
            out.append(why)
    return out


# --- decode ------------------------------------------------------------------------
@dataclass(slots=True)
class Culprit:
    pid: int
    tid: int
    comm: str
    cgroup: int
    ns: int


@dataclass(slots=True)
class SoftirqEvent:
    """A decoded ``struct kn_softirq_event`` (see bpf/softirq.h)."""
    cpu: int
    vec: int
    start_ns: int
    raise_ns: int
    entry_ns: int
    exit_ns: int
    flags: int
    irq_pid: int = 0
    irq_tid: int = 0
    irq_comm: str = ""
    irq_cgroup: int = 0
    ipi_ns: int = 0
    ipi_entry_ns: int = 0
    ipi_pid: int = 0
    ipi_comm: str = ""
    ipi_cgroup: int = 0
    ksoftirqd_wake_ns: int = 0
    ksoftirqd_run_ns: int = 0
    culprits: tuple[Culprit, ...] = ()  # longest first
    other_ns: int = 0
    switches: int = 0
    napi_polls: int = 0
    napi_work: int = 0
    napi_budget: int = 0
    napi_exhausted: int = 0

    @property
    def wait_ns(self) -> int | None:
        return None if self.flags & DEFS["KN_SIRQ_F_NO_RAISE"] else self.entry_ns - self.start_ns

    @property
    def run_ns(self) -> int:
        return self.exit_ns - self.entry_ns


# the SoftirqEvent fields the record holds under the same name, plus the culprit
# arrays: one struct.unpack_from at the header's offsets (records.py)
_SIRQ_LAYOUT = records.layout("softirq", "kn_softirq_event")
_SIRQ_NAMES = tuple(f for f in SoftirqEvent.__dataclass_fields__ if f in _SIRQ_LAYOUT.fields)
_SIRQ_CULPRIT = ("culprit_pid", "culprit_tid", "culprit_comm", "culprit_cgroup", "culprit_ns")
_SIRQ_READ = _SIRQ_LAYOUT.reader(*_SIRQ_NAMES, *_SIRQ_CULPRIT)
_SIRQ_N = len(_SIRQ_NAMES)


def decode(buf: bytes | bytearray | memoryview) -> SoftirqEvent:
    """Decode one ``struct kn_softirq_event`` (exactly as softirq.h lays it out)."""
    n = ctypes.sizeof(RECORD)
    if len(buf) < n:
        raise ValueError(f"softirq record too short: {len(buf)} < {n} bytes")
    v = _SIRQ_READ(buf)
    kw = dict(zip(_SIRQ_NAMES, v))
    pids, tids, comms, cgids, nss = v[_SIRQ_N:]
    culprits = [Culprit(pids[i], tids[i], records.cstr(comms[16 * i:16 * i + 16]), cgids[i], nss[i])
                for i in range(CULPRITS) if nss[i]]
    culprits.sort(key=lambda c: (-c.ns, c.tid))
    kw["irq_comm"], kw["ipi_comm"] = records.cstr(kw["irq_comm"]), records.cstr(kw["ipi_comm"])
    return SoftirqEvent(**kw, culprits=tuple(culprits))


# --- mapping -----------------------------------------------------------------------
def softirq_span(ev: SoftirqEvent, *, to_epoch_ns: Callable[[int], int], ids: IdSource,
                 vector_name: Callable[[int], str],
                 cgroup_path: Callable[[int], str | None] = lambda _i: None) -> KernelSpan:
    """One long softirq -> one ``kernel.softirq`` span from the start of the wait to
    the exit. Pure: names and paths come from the callables."""
    F = DEFS
    wait = ev.wait_ns
    attrs: dict[str, Any] = {
        sc.KIND: sc.KIND_SOFTIRQ,
        "kernelnet.softirq.vector": vector_name(ev.vec),
        "kernelnet.softirq.run_ns": ev.run_ns,
        "kernelnet.cpu": ev.cpu,
        "process.pid": ev.irq_pid,
        "thread.id": ev.irq_tid,
        "process.command": ev.irq_comm,
        "kernelnet.softirq.in_ksoftirqd": bool(ev.flags & F["KN_SIRQ_F_IN_KSOFTIRQD"]),
    }
    if wait is not None:
        attrs["kernelnet.softirq.wait_ns"] = wait
    cgroups.add_attributes(attrs, ev.irq_cgroup, cgroup_path(ev.irq_cgroup))
    events: list[SpanEvent] = []
    if ev.flags & F["KN_SIRQ_F_IPI"]:
        attrs["kernelnet.softirq.ipi.wait_ns"] = ev.ipi_entry_ns - ev.ipi_ns
        attrs["kernelnet.softirq.ipi.pid"] = ev.ipi_pid
        attrs["kernelnet.softirq.ipi.comm"] = ev.ipi_comm
        events.append(SpanEvent(to_epoch_ns(ev.ipi_ns), "ipi.queued"))
        events.append(SpanEvent(to_epoch_ns(ev.ipi_entry_ns), "ipi.taken",
                                {"process.pid": ev.ipi_pid, "process.command": ev.ipi_comm}))
    if ev.raise_ns:
        events.append(SpanEvent(to_epoch_ns(ev.raise_ns), "raise"))
    if ev.flags & F["KN_SIRQ_F_KSOFTIRQD_WOKEN"]:
        attrs["kernelnet.softirq.ksoftirqd.woken"] = True
        events.append(SpanEvent(to_epoch_ns(ev.ksoftirqd_wake_ns), "ksoftirqd.wakeup"))
        if ev.flags & F["KN_SIRQ_F_KSOFTIRQD_RAN"]:
            attrs["kernelnet.softirq.ksoftirqd.wait_ns"] = ev.ksoftirqd_run_ns - ev.ksoftirqd_wake_ns
            events.append(SpanEvent(to_epoch_ns(ev.ksoftirqd_run_ns), "ksoftirqd.run"))
        elif ev.exit_ns > ev.ksoftirqd_wake_ns:  # starved: the work ran elsewhere (irq exit) first
            attrs["kernelnet.softirq.ksoftirqd.waiting_ns"] = ev.exit_ns - ev.ksoftirqd_wake_ns
    if ev.culprits:
        top = ev.culprits[0]
        attrs["kernelnet.culprit.pid"] = top.pid
        attrs["kernelnet.culprit.tid"] = top.tid
        attrs["kernelnet.culprit.comm"] = top.comm
        attrs["kernelnet.culprit.ns"] = top.ns
        cp = cgroup_path(top.cgroup)
        if cp is not None:
            attrs["kernelnet.culprit.cgroup.path"] = cp
        attrs["kernelnet.culprit.top"] = "; ".join(
            f"{c.comm}({c.pid}) {c.ns / 1e6:.3f} ms" for c in ev.culprits)
        for c in ev.culprits:
            ea: dict[str, Any] = {"process.pid": c.pid, "thread.id": c.tid, "process.command": c.comm,
                                  "kernelnet.culprit.ns": c.ns}
            cp = cgroup_path(c.cgroup)
            if cp is not None:
                ea["kernelnet.cgroup.path"] = cp
            events.append(SpanEvent(to_epoch_ns(ev.entry_ns), "culprit", ea))
    if ev.other_ns:
        attrs["kernelnet.softirq.culprit_other_ns"] = ev.other_ns
    if ev.switches:
        attrs["kernelnet.softirq.switches"] = ev.switches
    if ev.napi_polls:
        attrs["kernelnet.napi.polls"] = ev.napi_polls
        attrs["kernelnet.napi.work"] = ev.napi_work
        attrs["kernelnet.napi.budget"] = ev.napi_budget
        attrs["kernelnet.napi.budget_exhausted"] = ev.napi_exhausted
    events.append(SpanEvent(to_epoch_ns(ev.entry_ns), "entry"))
    events.sort(key=lambda e: e.time_ns)
    return KernelSpan(
        name=sc.SPAN_SOFTIRQ, trace_id=ids.trace_id(), span_id=ids.span_id(),
        start_ns=to_epoch_ns(ev.start_ns), end_ns=to_epoch_ns(ev.exit_ns), attributes=attrs,
        events=events,
    )


def histogram_bounds() -> list[int]:
    """Inclusive upper bound (ns) of each log2 bucket: slot 0 holds 0 ns, slot s >= 1
    holds [2^(s-1), 2^s) ns, so its upper bound is 2^s - 1."""
    return [0] + [(1 << s) - 1 for s in range(1, SLOTS)]


def histograms_from_counts(per_cpu_counts: list[list[int]], vector_numbers: Mapping[str, int]) -> list[dict]:
    """Shape the raw map (index (measure * 2 + vector) * SLOTS + slot -> per-CPU counts)
    into ``histograms()``'s plain data (see SoftirqFamily.histograms)."""
    bounds = histogram_bounds()
    out = []
    ncpu = max((len(c) for c in per_cpu_counts), default=0)
    for m, measure in enumerate(MEASURES):
        for v, vector in enumerate(VECTORS):
            base = (m * len(VECTORS) + v) * SLOTS
            for cpu in range(ncpu):
                counts = [int(per_cpu_counts[base + s][cpu]) for s in range(SLOTS)]
                total = sum(counts)
                if not total:
                    continue
                out.append({"measure": measure, "vector": vector, "vector_number": vector_numbers.get(vector, -1),
                            "cpu": cpu, "unit": "ns", "bounds": bounds, "counts": counts, "count": total})
    return out


# --- family ------------------------------------------------------------------------
def ksoftirqd_pids(proc: str = "/proc") -> dict[int, int]:
    """cpu -> pid of ``ksoftirqd/<cpu>`` (kernel threads are in /proc of the initial pid ns)."""
    out: dict[int, int] = {}
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        try:
            with open(f"{proc}/{entry}/comm") as f:
                comm = f.read().strip()
        except OSError:
            continue
        m = re.fullmatch(r"ksoftirqd/(\d+)", comm)
        if m:
            out[int(m.group(1))] = int(entry)
    return out


class SoftirqFamily(ProbeFamily):
    name = "softirq"
    summary = "softirq: NET_RX/NET_TX wait and run, culprits (irq:softirq_*, sched:sched_switch)"

    def __init__(self) -> None:
        self.probe: SoftirqProbe | None = None
        self.plan_: Plan | None = None
        self.cgroup_paths: cgroups.CgroupPaths | None = None
        self.links: Any = None  # set when scoped: the LinkIndex that holds our spans
        self.node_metrics = True  # False in a sidecar: the DaemonSet exports the node's histograms

    def plan(self, ctx: KernelContext) -> Plan:
        from ..kernel.ksyms import KsymsError, text_address
        try:
            rps = text_address(RPS_FUNC)
        except (OSError, KsymsError):
            rps = None
        c = ctx.cfg
        return plan(btf=ctx.btf, rps_func=rps, cgroup=cgroups.detect(),
                    wait_threshold_ms=c["probes.softirq.wait_threshold_ms"],
                    run_threshold_ms=c["probes.softirq.run_threshold_ms"],
                    rate_limit=c["probes.softirq.rate_limit_per_cpu"], ringbuf_pages=c["ringbuf.pages"],
                    rate_limit_node=c["probes.softirq.rate_limit_per_node"])

    def start(self, loader, plan_: Plan, ctx: KernelContext, emit: Emit, on_error: OnError) -> None:
        self.plan_ = plan_
        self.cgroup_paths = cgroups.CgroupPaths(plan_.cgroup.root)
        self.node_metrics = ctx.cfg["scope.mode"] != "sidecar"
        links = getattr(ctx, "links", None)
        if links is not None and not self.node_metrics and getattr(ctx, "scope_netns", None) is not None:
            # sidecar: only the softirqs the pod's packets waited through (links.py); a
            # node-mode collector (also one scoped by scope.netns, like the lab's) owns
            # the node's softirqs and reports every long one
            links.hold_softirq(emit)
            self.links = links

        def on_event(ev: SoftirqEvent) -> None:
            span = softirq_span(ev, to_epoch_ns=ctx.clock.to_epoch_ns, ids=ctx.ids,
                                vector_name=plan_.vector_name, cgroup_path=self.cgroup_paths.path)
            if links is not None and links.add_softirq(span, ev.cpu):
                return  # held until a packet of the scope links to it
            emit(span)
        self.probe = SoftirqProbe(loader, plan_, on_event, on_error)

    def stats(self) -> dict[str, int]:
        out = self.probe.stats() if self.probe else {}
        if self.links is not None:
            out.update(self.links.softirq_hold_stats())
        return out

    def histograms(self) -> list[dict]:
        """Log2 histograms of every NET_RX/NET_TX softirq's wait and run since start.

        Plain data, one dict per (measure, vector, cpu) that has counts::

            {"measure": "wait" | "run", "vector": "NET_RX" | "NET_TX",
             "vector_number": 3, "cpu": 0, "unit": "ns",
             "bounds": [0, 1, 3, 7, ..., 2**63 - 1],   # inclusive upper bound of each bucket
             "counts": [c0, c1, ..., c63],             # cumulative since start (monotonic)
             "count": sum(counts)}

        Bucket 0 counts 0 ns; bucket s >= 1 counts values in [2^(s-1), 2^s) ns. For an
        OTel explicit-bucket histogram, ``bounds[:-1]`` are the boundaries and
        ``counts`` the bucket counts (the last bucket is open-ended). No sum is kept
        in the kernel. Empty before start or when nothing ran.
        """
        if self.probe is None or self.plan_ is None:
            return []
        d = self.plan_.defines
        return histograms_from_counts(self.probe.read_histograms(),
                                      {"NET_RX": d["KN_VEC_NET_RX"], "NET_TX": d["KN_VEC_NET_TX"]})


    def metric_histograms(self) -> list[HistogramPoint]:
        """``histograms()`` as OTel metric points: kernelnet.softirq.{wait,run}.duration
        {kernelnet.softirq.vector, kernelnet.cpu}, with the kernel-kept ns sums. None in
        sidecar mode: they are the node's (the DaemonSet exports them once); a node-mode
        collector scoped by ``scope.netns`` (e.g. the lab's) still exports them."""
        if self.probe is None or not self.node_metrics:
            return []
        sums = self.probe.read_sums()
        out = []
        for h in self.histograms():
            j = MEASURES.index(h["measure"]) * len(VECTORS) + VECTORS.index(h["vector"])
            total = sums[j][h["cpu"]] if h["cpu"] < len(sums[j]) else 0
            out.append(HistogramPoint(f"kernelnet.softirq.{h['measure']}.duration",
                                      f"Softirq {h['measure']} time of every NET_RX/NET_TX softirq, per CPU", "ns",
                                      {"kernelnet.softirq.vector": h["vector"], "kernelnet.cpu": h["cpu"]},
                                      [float(b) for b in h["bounds"][:-1]], h["counts"], float(total)))
        return out


class SoftirqProbe(RingBufferProbe):
    """Compiled and attached softirq family; ``on_event`` receives each SoftirqEvent."""

    def __init__(self, loader, plan_: Plan, on_event: Callable[[SoftirqEvent], None], on_error: OnError):
        self.plan = plan_
        super().__init__(loader, "softirq", "softirq.bpf.c", plan_.defines, "kn_sirq_events",
                         plan_.attach_points(), decode, on_event, on_error, STATS)
        # which pid is each CPU's ksoftirqd (the kernel threads never change pid)
        table = self.prog.map("kn_sirq_ksoftirqd")
        for cpu, pid in ksoftirqd_pids().items():
            if cpu < plan_.defines["KN_MAX_CPUS"]:
                table.set(cpu, pid)

    def read_sums(self) -> list[list[int]]:
        """Raw per-CPU ns sums of kn_sirq_hist_sum, index measure * 2 + vector."""
        return self.prog.map("kn_sirq_hist_sum").percpu_rows(2 * len(VECTORS))

    def read_histograms(self) -> list[list[int]]:
        """Raw per-CPU counts of kn_sirq_hist, one list per index."""
        return self.prog.map("kn_sirq_hist").percpu_rows(2 * len(VECTORS) * SLOTS)
