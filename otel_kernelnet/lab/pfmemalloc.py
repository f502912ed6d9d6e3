"""``lab pfmemalloc``: packets dropped because they came from the memory reserves (CASES.md #1).

A REPLAY. A real PFMEMALLOC drop needs a NIC driver that allocates receive buffers
while free memory is below the zone's min watermark; a VM with veth (and loopback)
never produces one. So the kernel side is replayed, the rest is live:

- live: the collector's export side (the embedded-store writer), its OTLP receiver
  and join (``Collector.open_export`` / the receiver and ``Join`` it starts), the
  instrumented lab app (a real HTTP server and client on loopback exporting real
  spans with real socket cookies), and ``diagnose``;
- replayed: the kernel records. For each stalled request (the server's handler
  sleeps, standing in for the wait on retransmissions) the scenario builds raw ring
  buffer records exactly as the BPF programs lay them out (``struct kn_drop_event``
  of bpf/drop.h, ``struct kn_reclaim_event`` of bpf/reclaim.h, through the ctypes
  types generated from those headers): ``skb:kfree_skb`` drops with reason
  PFMEMALLOC on the server socket's real cookie, the direct-reclaim stall of the same
  moment; plus /proc/zoneinfo samples with zones under their min watermark and
  /proc/net/netstat samples whose ``TcpExtPFMemallocDrop`` rises with the drops. The
  records go through the unchanged probe families (``DropFamily``,
  ``ReclaimFamily``, ``NetnsCountersFamily``: their ring-buffer callbacks, decoders,
  span mappers, the PFMEMALLOC memory-pressure links) via :class:`ReplayLoader`, a
  stand-in for the BPF loader, then the collector's join and exporter.

Kernel enums come from tracepoint format files recorded on Linux 6.18
(``data/*.format``): the PFMEMALLOC reason number and the gfp flags are looked up
there, never written here. Timestamps are CLOCK_MONOTONIC moments inside the real
requests, so the run looks live. Needs no root. Expected: ``pfmemalloc_drop`` with the
drops, reason PFMEMALLOC, the zones below min and the counter.
"""

from __future__ import annotations

import ctypes
import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

from .env import LabError, free_port
from .runner import Check, Context, Scenario, counted

DATA = Path(__file__).parent / "data"
HOST = "127.0.0.1"
BASELINE = 40                 # normal requests (the spike baseline)
STALLS = 3                    # requests that stall while their packets are dropped
STALL_MS = 250                # how long each stalled handler waits
GAP_MS = 1500                 # between stalled requests: each one's counter window is its own
DROP_OFFSETS_MS = (5, 45, 105, 205)   # the drops of one stall, after the handler starts waiting
DROP_LEN = 65160              # a GRO'd skb (45 x 1448): sk_drops counts its segments, the MIB 1
RECLAIM_MS = (-80, -20)       # direct reclaim of the memory hog, relative to the stall
ZONE_LOW_MS, ZONE_OK_MS = -40, STALL_MS + 50   # zoneinfo samples: under min, recovered
COUNTER_BEFORE_MS, COUNTER_AFTER_MS = -150, STALL_MS + 100
PFM_BASE = 17                 # TcpExtPFMemallocDrop before the run (any value: deltas count)
LOCATION = 0xffffffff81e3c6d4  # synthetic address of the freeing call site
SYMBOLS = {LOCATION: "tcp_v4_rcv+0x6d4"}  # tcp_v4_rcv -> tcp_filter -> PFMEMALLOC (offset synthetic)
MEMHOG_COMM = b"lab-memhog"   # the task that stalled in direct reclaim (synthetic)
CPU = 1
MS = 1_000_000

#: /proc/zoneinfo watermarks (pages) recorded on the reference VM (24 GiB, Linux 6.18):
#: zone -> (min, low, high, present, managed, free normally, free under pressure)
ZONES = {
    "DMA": (10, 13, 16, 3998, 3840, 3840, 3840),
    "DMA32": (2116, 2888, 3660, 782336, 772915, 772536, 2051),
    "Normal": (14769, 20163, 25557, 5505024, 5394266, 5193770, 14102),
}
#: zones under min in the pressure sample (DMA32 and Normal)
ZONES_BELOW_MIN = sum(1 for (mn, *_r, free_low) in ZONES.values() if free_low < mn)
QUIET_S = 1.3                 # between baseline and stalls: longer than diagnose's counter slack (1 s)
NETSTAT_NAMES = ("PFMemallocDrop", "TCPBacklogDrop", "TCPRcvQDrop", "ListenOverflows", "ListenDrops")


def zoneinfo_text(pressure: bool) -> str:
    """A /proc/zoneinfo text (the lines the parser reads) at normal free memory or under pressure."""
    out = []
    for name, (mn, lo, hi, present, managed, free_ok, free_low) in ZONES.items():
        out += [f"Node 0, zone {name:>8}", f"  pages free     {free_low if pressure else free_ok}",
                f"        min      {mn}", f"        low      {lo}", f"        high     {hi}",
                f"        spanned  {present}", f"        present  {present}", f"        managed  {managed}"]
    return "\n".join(out) + "\n"


def netstat_text(pfmemalloc_drops: int) -> str:
    vals = {"PFMemallocDrop": pfmemalloc_drops}
    return ("TcpExt: " + " ".join(NETSTAT_NAMES) + "\n"
            "TcpExt: " + " ".join(str(vals.get(n, 0)) for n in NETSTAT_NAMES) + "\n")


# --- the server's per-request hook (runs in the app server process) -------------------------

def stall_hook(handler: Any, arg: str) -> None:
    """For ``/block`` requests: wait STALL_MS (the wait on dropped data) and record the
    socket's cookie and addresses and the wait's CLOCK_MONOTONIC window as one JSON line in ``arg``."""
    if not handler.path.startswith("/block"):
        return
    from otel_kernelnet.instrumentation import cookie_of
    sock = handler.connection
    a = time.monotonic_ns()
    time.sleep(STALL_MS / 1000)
    b = time.monotonic_ns()
    rec = {"cookie": cookie_of(sock), "a_ns": a, "b_ns": b, "local": list(sock.getsockname()[:2]),
           "peer": list(sock.getpeername()[:2]), "pid": os.getpid()}
    with open(arg, "a") as f:
        f.write(json.dumps(rec) + "\n")


# --- the kernel side, replayed -------------------------------------------------------------

class _Prog:
    def __init__(self, name: str):
        self.name = name
        self.attached: list[tuple[str, str]] = []
        self.records = 0


class ReplayLoader:
    """Stands in for :class:`otel_kernelnet.loader.Loader`: nothing is compiled or attached;
    :meth:`push` hands a raw record to the ring-buffer callback the family registered, as
    the loader's ring buffer reader does. Its stats say how many records each family got."""

    headers = None

    def __init__(self, tap: Callable[[str, bytes], None] | None = None) -> None:
        self.programs: dict[str, _Prog] = {}
        self._callbacks: dict[str, Callable[[bytes], None]] = {}
        self._tap = tap

    def compile(self, name: str, source_file: str, defines: dict) -> _Prog:
        prog = self.programs[name] = _Prog(name)
        return prog

    def attach(self, prog: _Prog, tracepoint: str, fn_name: str) -> None:
        prog.attached.append((tracepoint, fn_name))

    def open_ring_buffer(self, prog: _Prog, map_name: str, callback: Callable[[bytes], None]) -> None:
        self._callbacks[prog.name] = callback

    def push(self, family: str, record: ctypes.Structure) -> None:
        raw = bytes(record)
        if self._tap is not None:
            self._tap(family, raw)
        self.programs[family].records += 1
        self._callbacks[family](raw)

    def consume(self) -> None:  # records are pushed synchronously
        pass

    def percpu_sum(self, prog: _Prog, map_name: str, count: int) -> list[int]:
        # emitted, rate_capped, ringbuf_full, seen[, unmatched]: every record was emitted and seen
        return ([prog.records, 0, 0, prog.records] + [0] * count)[:count]

    def recursion_misses(self, prog: _Prog) -> int:
        return 0

    def close(self) -> None:
        pass


class ReplayClock:
    """Epoch ns for the /proc samplers: the replayed sample's moment, else now."""

    def __init__(self) -> None:
        self.t: int | None = None

    def __call__(self) -> int:
        return self.t if self.t is not None else time.time_ns()


def _fmt(name: str):
    from ..kernel import tracefs
    cat, tp = name.split(".")[:2]
    return tracefs.parse_format((DATA / f"{name}.6.18.format").read_text(), cat, tp)


class Replay:
    """The collector's export side and join, fed by the probe families through ReplayLoader."""

    def __init__(self, workdir: Path, output: Path, log: Path):
        from ..collector import Collector
        from ..config import validate
        from ..kernel import cgroups
        from ..links import LinkIndex
        from ..probes import KernelContext
        from ..probes import drop as drop_mod
        from ..probes import reclaim as reclaim_mod
        from ..probes.netns_counters import NetnsCountersFamily
        self.port = free_port()
        self.cfg = validate({
            "receiver": {"enabled": True, "grpc_endpoint": None, "http_endpoint": f"{HOST}:{self.port}"},
            "status": {"interval_s": 0},
            # the worker thread never samples on its own: the replay decides when (sample())
            "probes": {"netns_counters": {"interval_ms": 3_600_000, "rescan_s": 3600}},
        }, "lab pfmemalloc replay")
        self.log = open(log, "w")
        self.col = Collector(self.cfg, output=str(output), out=self.log)
        self.script = open(workdir / "replay-records.log", "w")
        self.loader = ReplayLoader(tap=lambda fam, raw: self.note(fam, record=raw.hex()))
        self.clock = ReplayClock()
        self.netns = os.stat("/proc/self/ns/net").st_ino
        # a /proc with one process in this namespace, whose netstat the replay writes
        self.proc = workdir / "replay-proc"
        (self.proc / "1" / "ns").mkdir(parents=True)
        (self.proc / "1" / "net").mkdir()
        (self.proc / "1" / "ns" / "net").symlink_to(f"net:[{self.netns}]")
        (self.proc / "self").symlink_to("1")
        (workdir / "replay-run-netns").mkdir()
        self.pfm_counter = PFM_BASE
        self._write_netstat()
        self.zone_pressure = False

        fmt_drop = _fmt("skb.kfree_skb")
        fmts = {tp.key: None for g in reclaim_mod.GROUPS for tp in g.tracepoints}
        fmts["DIRECT_BEGIN"] = _fmt("vmscan.mm_vmscan_direct_reclaim_begin")
        fmts["DIRECT_END"] = _fmt("vmscan.mm_vmscan_direct_reclaim_end")
        self.pfmemalloc = next(v for v, n in fmt_drop.symbols["reason"].items() if n == "PFMEMALLOC")
        self.kctx = KernelContext(btf=None, symbol=lambda a: SYMBOLS.get(a, f"0x{a:x}"), clock=self.col.clock,
                                  ids=self.col.ids, cfg=self.cfg, links=LinkIndex(), scope_netns=None)
        self.rplan = reclaim_mod.plan(fmts, None, cgroup=cgroups.Setup(0, None))
        self.gfp_kernel = next(m for m, n in self.rplan.gfp_table if n == "GFP_KERNEL")
        self.families = [
            (reclaim_mod.ReclaimFamily(), self.rplan),
            (drop_mod.DropFamily(), drop_mod.plan(fmt_drop, None)),
            (NetnsCountersFamily(proc=str(self.proc), run_netns=str(workdir / "replay-run-netns"),
                                 clock_ns=self.clock), None),
        ]
        self._closed = False
        self._lock = threading.Lock()

    def note(self, what: str, **kw: Any) -> None:
        """One line of logs/replay-records.log: what was replayed (raw records in hex)."""
        self.script.write(json.dumps({"what": what, **kw}) + "\n")

    def _write_netstat(self) -> None:
        (self.proc / "1" / "net" / "netstat").write_text(netstat_text(self.pfm_counter))

    # -- start / stop ---------------------------------------------------------------------------
    def start(self) -> str:
        """Export side, families, receiver; the OTLP/HTTP URL the app exports to."""
        from ..probes import reclaim as reclaim_mod
        from ..kernel import zoneinfo
        _res, sink, target = self.col.open_export()
        for fam, plan_ in self.families:
            if plan_ is None:
                plan_ = fam.plan(self.kctx)
            fam.start(self.loader, plan_, self.kctx, self.col._emit, self.col._on_error)
            self.col.probes.append(fam)
            if isinstance(fam, reclaim_mod.ReclaimFamily):
                # the zone sampler reads the replayed /proc/zoneinfo at the replayed moments
                fam.sampler = reclaim_mod.ZoneSampler(
                    0.0, self.kctx.ids, self.col._emit, self.kctx.links,
                    read=lambda: zoneinfo.parse(zoneinfo_text(self.zone_pressure)), now_ns=self.clock)
        self.col._start_receiver(sink, target)
        if self.col.join is None or not self.col.receiver.running:
            raise LabError(f"the replay collector's receiver did not start: see {self.log.name}")
        return f"http://{HOST}:{self.port}/v1/traces"

    def close(self) -> None:
        """Stop the receiver, close the families, flush the join and the store (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            self.col._shutdown(self.loader, None)
        finally:
            self.log.close()
            self.script.close()

    # -- the records ------------------------------------------------------------------------------
    def drop(self, t_mono: int, req: dict, skbaddr: int) -> None:
        from ..probes import drop as drop_mod
        r = drop_mod.RECORD()
        f = drop_mod.FLAGS
        (laddr, lport), (paddr, pport) = req["local"], req["peer"]
        r.ts_ns, r.location, r.skbaddr, r.sk_cookie = t_mono, LOCATION, skbaddr, req["cookie"]
        r.reason, r.netns, r.pid, r.tid, r.cpu = self.pfmemalloc, self.netns, 0, 0, CPU
        r.ifindex, r.len, r.protocol = 1, DROP_LEN, 0x0800
        r.sport, r.dport, r.l4proto = pport, lport, 6   # received: from the peer to the server socket
        r.flags = f["KN_DROP_F_HAS_SK"] | f["KN_DROP_F_ADDR"] | f["KN_DROP_F_DEV"]
        r.saddr[:4] = list(bytes(map(int, paddr.split("."))))
        r.daddr[:4] = list(bytes(map(int, laddr.split("."))))
        r.comm = b"swapper/1"   # softirq on an idle CPU
        r.ifname = b"lo"        # the app's real connection is on loopback
        self.loader.push("drop", r)

    def direct_reclaim(self, start_mono: int, end_mono: int, nr_reclaimed: int) -> None:
        from ..probes import reclaim as reclaim_mod
        r = reclaim_mod.RECORD()
        r.type = reclaim_mod.DEFS["KN_RCL_EV_DIRECT"]
        r.start_ns, r.end_ns, r.gfp_flags, r.nr_reclaimed = start_mono, end_mono, self.gfp_kernel, nr_reclaimed
        r.pid = r.tid = os.getpid()
        r.cpu, r.order, r.comm = 0, 0, MEMHOG_COMM
        self.loader.push("reclaim", r)

    def zone_sample(self, t_mono: int, pressure: bool) -> None:
        self.note("/proc/zoneinfo", t_mono=t_mono, below_min=pressure)
        self.zone_pressure = pressure
        self.clock.t = self.col.clock.to_epoch_ns(t_mono)
        for fam, _p in self.families:
            if fam.name == "reclaim":
                fam.poll()

    def counter_sample(self, t_mono: int, drops_since: int = 0) -> None:
        self.pfm_counter += drops_since
        self._write_netstat()
        self.note("/proc/net/netstat", t_mono=t_mono, TcpExtPFMemallocDrop=self.pfm_counter)
        self.clock.t = self.col.clock.to_epoch_ns(t_mono)
        for fam, _p in self.families:
            if fam.name == "netns_counters":
                fam.sample()
                fam.poll()


class Pfmemalloc(Scenario):
    name = "pfmemalloc"
    title = "packets dropped because they were allocated from the memory reserves (REPLAY)"
    case = "#1 (drops under memory pressure)"
    expect = "pfmemalloc_drop"
    families = ("drop", "reclaim", "netns_counters")
    replay = True

    def describe(self) -> list[str]:
        return [
            "REPLAY: the kernel events of this scenario are SYNTHETIC, replayed through the real decoder, join",
            "and exporter. A real PFMEMALLOC drop needs a NIC driver allocating below the zone's min watermark;",
            "veth and loopback never do, so it cannot be provoked on this machine. (No root needed.)",
            f"Live: an instrumented HTTP server and client on {HOST} ({BASELINE} normal requests, then {STALLS} "
            f"whose handler waits {STALL_MS} ms), the collector's OTLP receiver, join and embedded store.",
            f"Replayed per stalled request: {len(DROP_OFFSETS_MS)} skb:kfree_skb records (reason PFMEMALLOC, the "
            "socket's real cookie) as bpf/drop.h lays them out, a direct-reclaim stall (bpf/reclaim.h),",
            "/proc/zoneinfo samples below the min watermark and /proc/net/netstat TcpExtPFMemallocDrop rising;",
            "decoded by the drop/reclaim/netns_counters families as a live run would (formats recorded on 6.18).",
        ]

    def drive(self, ctx: Context) -> None:
        workdir = ctx.lab.workdir / "logs"
        rep = Replay(workdir, ctx.output, workdir / "collector.log")
        ctx.lab.defer("the replay collector", rep.close)
        ctx.otlp = rep.start()
        ctx.step(f"collector export side, join and receiver started in-process (receiver {HOST}:{rep.port}); "
                 "probe families fed by the replay loader, nothing attached to the kernel")
        hook_file = workdir / "stalls.log"
        port = free_port()
        server = ctx.server("server", "lab-server", None, "--addr", HOST, "--port", str(port), "--threads",
                            "--hook", f"{__name__}:stall_hook", "--hook-arg", str(hook_file))
        ctx.step(f"baseline: {BASELINE} requests")
        base = ctx.client("client-baseline", "lab-client", None, "--host", HOST, "--port", str(port),
                          "--requests", str(BASELINE), "--interval-ms", "5")
        ctx.step(f"  {base['ok']} ok, median {base['p50_ms']} ms; now {STALLS} requests that stall {STALL_MS} ms")
        time.sleep(QUIET_S)  # the baseline stays outside the stalls' counter windows
        stalled = ctx.client("client-stalled", "lab-client", None, "--host", HOST, "--port", str(port),
                             "--path", "/block", "--requests", str(STALLS), "--interval-ms", str(GAP_MS))
        ctx.step(f"  {stalled['ok']} ok, slowest {stalled['max_ms']} ms, errors {stalled['errors'] or 'none'}")
        want = 2 * (BASELINE + STALLS)  # a server and a client span per request
        deadline = time.monotonic() + 15
        while rep.col.join.stats.app_spans < want and time.monotonic() < deadline:
            time.sleep(0.05)
        ctx.step(f"  the join indexed {rep.col.join.stats.app_spans} app spans (expected {want})")
        try:
            reqs = [json.loads(line) for line in hook_file.read_text().splitlines() if line.strip()]
        except OSError:
            reqs = []
        if len(reqs) != STALLS or not all(r.get("cookie") for r in reqs):
            raise LabError(f"the server recorded {len(reqs)} stalled request(s) with cookies, expected {STALLS}: "
                           f"see {workdir / 'server.log'}")

        ctx.step("REPLAY: feeding synthetic kernel records at the stalled requests' moments (CLOCK_MONOTONIC)")
        facts = ctx.facts
        facts.update(drops=0, reclaims=0, below_min=0, counter_delta=0, cookies=[r["cookie"] for r in reqs])
        skb = 0xffff888104a3c000
        for r in reqs:
            a, b = r["a_ns"], r["b_ns"]
            rep.counter_sample(a + COUNTER_BEFORE_MS * MS)            # unchanged: no jump
            rep.zone_sample(a + ZONE_LOW_MS * MS, pressure=True)     # zones under min: a span each
            facts["below_min"] += ZONES_BELOW_MIN
            rep.direct_reclaim(a + RECLAIM_MS[0] * MS, a + RECLAIM_MS[1] * MS, nr_reclaimed=2816)
            facts["reclaims"] += 1
            for off in DROP_OFFSETS_MS:
                skb += 0x1000
                rep.drop(a + off * MS, r, skb)
                facts["drops"] += 1
            rep.zone_sample(b + (ZONE_OK_MS - STALL_MS) * MS, pressure=False)
            rep.counter_sample(a + COUNTER_AFTER_MS * MS, drops_since=len(DROP_OFFSETS_MS))
            facts["counter_delta"] += len(DROP_OFFSETS_MS)
        rep.clock.t = None
        st = rep.col.probe_stats()
        ctx.step(f"  replayed {facts['drops']} drops, {facts['reclaims']} reclaim stalls, {facts['below_min']} "
                 f"zones falling below min, TcpExtPFMemallocDrop +{facts['counter_delta']}; decode errors {st.get('decode_errors', 0)}, mapping errors "
                 f"{rep.col.counters.mapping_errors}")
        server.stop()
        ctx.step("stopping the replay collector (join flush, store flush)")
        rep.close()

    def checks(self, ctx: Context, spans: list[dict]) -> list[Check]:
        from .. import semconv as sc
        d = ctx.facts
        cookies = set(d["cookies"])
        attrs = [s["attributes"] for s in spans]
        drops = [a for a in attrs if a.get(sc.KIND) == sc.KIND_DROP and a.get("kernelnet.drop.reason") == "PFMEMALLOC"]
        joined = [a for a in drops if a.get(sc.JOIN) == "cookie" and a.get(sc.COOKIE) in cookies]
        pfm_counted = counted(spans, "TcpExtPFMemallocDrop")
        reclaims = sum(1 for a in attrs if a.get(sc.KIND) == sc.KIND_RECLAIM
                       and a.get("kernelnet.reclaim.type") == "direct")
        below = sum(1 for a in attrs if a.get(sc.KIND) == sc.KIND_RECLAIM
                    and a.get("kernelnet.reclaim.type") == "zone_below_min")
        with_zone = sum(1 for a in drops if a.get("kernelnet.memory.below_min"))
        n = "replayed"
        return [
            Check("replayed kfree_skb PFMEMALLOC records vs drop spans", d["drops"], len(drops), note=n),
            Check("  of them joined by cookie to the app's stalled request", d["drops"], len(joined), note=n),
            Check("  of them with the zones below min of that moment", d["drops"], with_zone, note=n),
            Check("TcpExtPFMemallocDrop delta vs counter spans", d["counter_delta"], pfm_counted, note=n),
            Check("TcpExtPFMemallocDrop delta vs PFMEMALLOC drop spans", d["counter_delta"], len(drops), note=n),
            Check("replayed direct-reclaim records vs reclaim spans", d["reclaims"], reclaims, note=n),
            Check("replayed zones falling below min vs zone_below_min spans", d["below_min"], below, note=n),
        ]

    def evidence_ok(self, cause: dict) -> list[str]:
        ev = cause.get("evidence", {})
        out = []
        if ev.get("reason") != "PFMEMALLOC":
            out.append(f"evidence reason is {ev.get('reason')!r}, not PFMEMALLOC")
        if (ev.get("drops") or 0) < len(DROP_OFFSETS_MS):
            out.append(f"evidence has {ev.get('drops')} drops, expected {len(DROP_OFFSETS_MS)} per stalled request")
        if not ev.get("zones_below_min"):
            out.append("evidence lacks zones_below_min")
        if not ev.get("pfmemalloc_counter"):
            out.append("evidence lacks the TcpExtPFMemallocDrop counter")
        return out
