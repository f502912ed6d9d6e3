"""``lab softirq-delay``: the receive softirq waits for a CPU held with interrupts off (CASES.md #2).

A server in its own namespace receives over a veth pair whose receive queue steers
every packet to CPU 1 by RPS; the client sends from CPU 0 (serial keep-alive
requests), so each packet reaches the server through an RPS IPI to CPU 1 and NET_RX
there. After a baseline, a "fragmenter" maps 1 GiB of 4 KiB pages and frees every
other one (over 100 k order-0 pages on the free lists), and a "reader" pinned to
CPU 1 reads /proc/pagetypeinfo in a loop: each read walks those free lists holding
zone->lock with interrupts off for several ms (the second culprit of incident 2).
While it holds them the RPS IPI, and so NET_RX, waits: the request packets sit in
CPU 1's backlog and the client's requests spike. Expected: ``softirq_delay`` on CPU 1
naming the reader (``pagetypeinfo-rd``, its pid) as the culprit.

Freed pages would park on the per-CPU page lists (auto-tuned up to 1/8 of the zone),
where /proc/pagetypeinfo does not walk them: the run sets
``vm.percpu_pagelist_high_fraction`` high (small per-CPU lists) and restores it.

Every load is bounded: the reader stops after ``HOG_SECONDS`` (or when the lab
closes its stdin), the fragmenter frees its memory as soon as the hog phase ends.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .env import Lab, LabError, Netns, Proc
from .runner import APP, Check, Context, Scenario

SERVER_IP, CLIENT_IP, PORT = "10.89.0.1", "10.89.0.2", 8080
NET_RX_CPU, APP_CPU = 1, 0
WARMUP, BASELINE, HOG_REQUESTS = 6, 150, 100
BASELINE_INTERVAL_MS, HOG_INTERVAL_MS = 5, 10
HOG_SECONDS = 6.0            # the reader's own deadline (the hog phase normally ends sooner)
FRAGMENT_MIB = 1024
#: free order-0 pages needed for walks of several ms (the kernel walks 100000 at most per list)
MIN_HOLES = 50_000
ATTEMPTS = 2
#: per-CPU page lists at most 1/PCP_FRACTION of a zone: freed pages go back to the buddy lists
PCP_FRACTION = 100_000
READER_COMM, FRAGMENTER_COMM = "pagetypeinfo-rd", "mem-fragmenter"   # comm: 15 characters at most
#: a softirq wait >= 2^20 ns fills exactly the log2 histogram buckets 21 and up (and is
#: over the probe's 1 ms span threshold): the exact point to compare spans with buckets
TAIL_NS = 1 << 20

_NAME = r"""
import ctypes
ctypes.CDLL(None).prctl(15, ctypes.c_char_p(%r), 0, 0, 0)   # PR_SET_NAME: the comm the spans show
"""

FRAGMENTER = _NAME % FRAGMENTER_COMM.encode() + r"""
import mmap, random, sys
size = %d << 20
m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
# 4 KiB pages only, before the first touch: inside a (m)THP folio MADV_DONTNEED frees
# nothing until a deferred split, and the free lists stay short
m.madvise(mmap.MADV_NOHUGEPAGE)
page = mmap.PAGESIZE
for off in range(0, size, page):        # fault every page in
    m[off] = 1
# free every other one: order-0 holes on the free lists. In random order, so that the
# free list's order is unrelated to memory order: walking it misses the cache at every
# entry (freed in address order, the walk streams through struct pages, ~10x faster)
holes = list(range(0, size, 2 * page))
random.shuffle(holes)
for off in holes:
    m.madvise(mmap.MADV_DONTNEED, off, page)
print('{"ready": true}', flush=True)
sys.stdin.read()                        # until the lab closes stdin; exiting frees it all
""" % FRAGMENT_MIB

READER = _NAME % READER_COMM.encode() + r"""
import json, os, sys, threading, time
os.sched_setaffinity(0, {%d})
os.nice(-10)   # most of CPU 1 even on a busy node (for a few seconds: the hog is bounded)
threading.Thread(target=lambda: (sys.stdin.read(), os._exit(0)), daemon=True).start()  # stdin closed: stop
deadline = time.monotonic() + %f
print(json.dumps({"pid": os.getpid()}), flush=True)
n, slow = 0, 0.0
while time.monotonic() < deadline:
    t = time.perf_counter()
    with open("/proc/pagetypeinfo") as f:
        f.read()
    slow = max(slow, time.perf_counter() - t)
    n += 1
print(json.dumps({"reads": n, "slowest_read_ms": round(slow * 1000, 1)}), flush=True)
sys.stdin.read()
""" % (NET_RX_CPU, HOG_SECONDS)


def net_rx(cpu: int) -> int:
    """NET_RX softirqs run on ``cpu`` since boot (/proc/softirqs: the kernel's own count)."""
    for line in Path("/proc/softirqs").read_text().splitlines():
        parts = line.split()
        if parts and parts[0] == "NET_RX:":
            return int(parts[1 + cpu])
    raise LabError("/proc/softirqs has no NET_RX line")


def softirq_histograms(directory: Path) -> dict[tuple[str, str, int], tuple[list[float], list[int]]]:
    """The collector's last exported softirq histograms in the store's metrics-*.jsonl:
    (measure, vector, cpu) -> (explicit bounds, bucket counts), cumulative since it started."""
    out: dict[tuple[str, str, int], tuple[int, list[float], list[int]]] = {}
    for f in sorted(Path(directory).glob("metrics-*.jsonl")):
        for line in f.read_text().splitlines():
            if not line.strip():
                continue
            for rm in json.loads(line).get("resourceMetrics", []):
                for sm in rm.get("scopeMetrics", []):
                    for m in sm.get("metrics", []):
                        name = m.get("name", "")
                        if not (name.startswith("kernelnet.softirq.") and name.endswith(".duration")):
                            continue
                        measure = name.split(".")[2]
                        for dp in m.get("histogram", {}).get("dataPoints", []):
                            at = {kv["key"]: kv["value"] for kv in dp.get("attributes", [])}
                            vec = at.get("kernelnet.softirq.vector", {}).get("stringValue", "")
                            cpu = int(at.get("kernelnet.cpu", {}).get("intValue", -1))
                            t = int(dp.get("timeUnixNano", 0))
                            key = (measure, vec, cpu)
                            if key not in out or t >= out[key][0]:
                                out[key] = (t, [float(b) for b in dp.get("explicitBounds", [])],
                                            [int(c) for c in dp.get("bucketCounts", [])])
    return {k: (b, c) for k, (_, b, c) in out.items()}


def free_order0() -> str:
    """Free order-0 pages of the largest Normal/Movable free list (/proc/pagetypeinfo; the
    kernel caps its count at ">100000"): how long the reader's walks will be."""
    best, text = -1, "?"
    for line in Path("/proc/pagetypeinfo").read_text().splitlines():
        f = line.split()
        if len(f) > 6 and f[0] == "Node" and "Movable" in f:
            n = int(f[6].lstrip(">"))
            if n > best:
                best, text = n, f[6]
    return text


def nested_misses(directory: Path, probe: str) -> int:
    """Tracepoint hits the kernel skipped for ``probe``'s programs (another tracing BPF
    program was running on that CPU), as the collector exported them last."""
    best: tuple[int, int] = (-1, 0)
    for f in sorted(Path(directory).glob("metrics-*.jsonl")):
        for line in f.read_text().splitlines():
            if not line.strip():
                continue
            for rm in json.loads(line).get("resourceMetrics", []):
                for sm in rm.get("scopeMetrics", []):
                    for m in sm.get("metrics", []):
                        if m.get("name") != "kernelnet.collector.lost":
                            continue
                        for dp in m.get("sum", {}).get("dataPoints", []):
                            at = {kv["key"]: kv["value"].get("stringValue") for kv in dp.get("attributes", [])}
                            if at.get("stage") == "kernel_nested_bpf" and at.get("probe") == probe:
                                t = int(dp.get("timeUnixNano", 0))
                                if t >= best[0]:
                                    best = (t, int(dp.get("asInt", 0)))
    return best[1]


def count_at_least(bounds: list[float], counts: list[int], value: int) -> int:
    """Observations >= ``value`` in an explicit-bucket histogram of integer ns, exact when
    ``value`` - 1 is one of the bounds (bucket i holds (bounds[i-1], bounds[i]]).

    >>> count_at_least([0, 1, 3, 7], [5, 1, 2, 3, 4], 4)
    7
    """
    if value - 1 not in bounds:
        raise ValueError(f"{value} is not a bucket edge")
    return sum(c for i, c in enumerate(counts) if i >= 1 and bounds[i - 1] >= value - 1)


class SoftirqDelay(Scenario):
    name = "softirq-delay"
    title = "NET_RX delayed on the CPU RPS steers to, by a task holding interrupts off"
    case = "#2 (softirq delay)"
    expect = "softirq_delay"
    families = ("softirq", "lifecycle")
    config = {"probes": {"softirq": {"wait_threshold_ms": 1, "run_threshold_ms": 1}}}

    def describe(self) -> list[str]:
        return [f"server {SERVER_IP}:{PORT} in one namespace (RPS steers its veth's packets to CPU {NET_RX_CPU}), "
                f"client {CLIENT_IP} on CPU {APP_CPU} in another, serial keep-alive requests;",
                f"{BASELINE} requests as a baseline, then {HOG_REQUESTS} while '{READER_COMM}' (pinned to CPU "
                f"{NET_RX_CPU}) reads /proc/pagetypeinfo over a {FRAGMENT_MIB} MiB fragmented heap "
                f"('{FRAGMENTER_COMM}'): zone->lock with interrupts off delays the RPS IPI and NET_RX"]

    def namespaces(self, lab: Lab) -> list[Netns]:
        import os
        if (os.cpu_count() or 1) < 2 or NET_RX_CPU not in os.sched_getaffinity(0):
            raise LabError(f"softirq-delay needs CPU {NET_RX_CPU} (two CPUs at least)")
        if not os.access("/proc/pagetypeinfo", os.R_OK):
            raise LabError("/proc/pagetypeinfo is not readable (needs root)")
        self.srv, self.cli = lab.netns("server"), lab.netns("client")
        dev_srv, _ = lab.veth(self.srv, SERVER_IP, self.cli, CLIENT_IP)
        # /sys of the namespace (ip netns exec mounts it): every packet the server side receives -> CPU 1
        self.srv.run("sh", "-c", f"echo {1 << NET_RX_CPU:x} > /sys/class/net/{dev_srv}/queues/rx-0/rps_cpus")
        self.outer0 = net_rx(NET_RX_CPU)
        return [self.srv, self.cli]

    def _app(self, ctx: Context, name: str, service: str, role: str, *args: str) -> Proc:
        netns = self.srv if role == "server" else self.cli
        return ctx.lab.spawn(name, ["taskset", "-c", str(APP_CPU), *APP, "--service", service,
                                    "--otlp", ctx.otlp, "--netns", netns.path, role, *args])

    def _client(self, ctx: Context, name: str, requests: int, interval_ms: int, service: str = "lab-client") -> dict:
        p = self._app(ctx, name, service, "client", "--host", SERVER_IP, "--port", str(PORT),
                      "--requests", str(requests), "--interval-ms", str(interval_ms), "--keepalive",
                      "--max-seconds", "15")
        out = p.json(timeout=40)
        p.wait(15)
        if not out.get("ok"):
            raise LabError(f"{name}: no request succeeded: {out}")
        return out

    def drive(self, ctx: Context) -> None:
        d = ctx.facts
        d["inner0"] = net_rx(NET_RX_CPU)
        server = self._app(ctx, "server", "lab-server", "server", "--addr", SERVER_IP, "--port", str(PORT),
                           "--threads", "--size", "0")  # headers only: one write, no Nagle/delayed-ACK stall
        ready = server.json(timeout=30)
        if not ready.get("ready"):
            raise LabError(f"server did not start: {ready}")
        # the server's first requests and first span export stall it for tens of ms (imports,
        # connection set-up): done here, under another service name with too few spans for
        # diagnose to judge (it needs 10 per service), so they are not taken for spikes
        self._client(ctx, "client-warmup", WARMUP, BASELINE_INTERVAL_MS, service="lab-warmup")
        time.sleep(0.3)
        ctx.step(f"baseline: {BASELINE} serial keep-alive requests from CPU {APP_CPU}")
        base = self._client(ctx, "client-baseline", BASELINE, BASELINE_INTERVAL_MS)
        ctx.step(f"  {base['ok']} ok, median {base['p50_ms']} ms, slowest {base['max_ms']} ms")
        ctx.step(f"fragmenting {FRAGMENT_MIB} MiB of memory ('{FRAGMENTER_COMM}': every other 4 KiB page freed)")
        # Freed pages first go to the per-CPU page lists, which the kernel auto-tunes up to 1/8 of
        # the zone when a CPU frees many pages in a row (6.7+): the holes would sit there, unseen by
        # the pagetypeinfo walk (seen: 53 order-0 pages left on the free list after freeing 131 k).
        # A small per-CPU limit for the run sends them to the buddy free lists (restored on clean-up).
        ctx.lab.sysctl("vm.percpu_pagelist_high_fraction", PCP_FRACTION)
        # Any order-0 allocation on the node takes these holes first: the reader starts right after,
        # and one more pass is made if too few are left.
        frags: list[Proc] = []
        for attempt in range(1, ATTEMPTS + 1):
            frag = ctx.lab.spawn(f"fragmenter-{attempt}", [*APP[:1], "-c", FRAGMENTER])
            frags.append(frag)
            if not frag.json(timeout=90).get("ready"):
                raise LabError(f"the fragmenter failed: {frag.tail()}")
            holes = free_order0()
            ctx.step(f"  free order-0 movable pages now: {holes}")
            if int(holes.lstrip(">")) >= MIN_HOLES:
                break
        else:
            raise LabError(f"fewer than {MIN_HOLES} free order-0 pages after {ATTEMPTS} fragmenting passes: other allocations "
                           "on this node take the holes as fast as they are made (another memory-hungry job?); "
                           "the reader's interrupts-off walks would be too short to show. Run it on a quieter node")
        reader = ctx.lab.spawn("reader", [*APP[:1], "-c", READER])
        d["reader_pid"] = self._reader_pid = int(reader.json(timeout=30)["pid"])
        ctx.step(f"hog: '{READER_COMM}' (pid {d['reader_pid']}) reads /proc/pagetypeinfo on CPU {NET_RX_CPU} "
                 f"(at most {HOG_SECONDS:.0f} s); {HOG_REQUESTS} requests meanwhile")
        hog = self._client(ctx, "client-hog", HOG_REQUESTS, HOG_INTERVAL_MS)
        ctx.step(f"  {hog['ok']} ok, median {hog['p50_ms']} ms, slowest {hog['max_ms']} ms")
        reader.stop()
        for p in frags:
            p.stop()  # frees its memory now
        ctx.step(f"culprit to expect: {READER_COMM} pid {d['reader_pid']} on CPU {NET_RX_CPU}")
        time.sleep(0.3)  # the last spans reach the collector
        server.stop()
        d["inner1"] = net_rx(NET_RX_CPU)

    def checks(self, ctx: Context, spans: list[dict]) -> list[Check]:
        d = ctx.facts
        outer = net_rx(NET_RX_CPU) - self.outer0   # read after the collector stopped
        inner = d["inner1"] - d["inner0"]
        hists = softirq_histograms(ctx.output)
        run = hists.get(("run", "NET_RX", NET_RX_CPU))
        wait = hists.get(("wait", "NET_RX", NET_RX_CPU))
        runs = sum(run[1]) if run else 0
        missed = nested_misses(ctx.output, "softirq")
        tail = count_at_least(*wait, TAIL_NS) if wait else 0
        exported = sum(1 for s in spans if s["attributes"].get("kernelnet.kind") == "softirq"
                       and s["attributes"].get("kernelnet.cpu") == NET_RX_CPU
                       and s["attributes"].get("kernelnet.softirq.vector") == "NET_RX"
                       and (s["attributes"].get("kernelnet.softirq.wait_ns") or 0) >= TAIL_NS)
        return [
            Check(f"CPU {NET_RX_CPU} NET_RX runs, /proc/softirqs during the drive vs run histogram", inner,
                  runs + missed, "exported>=kernel",
                  f"the histogram spans the collector's life, which contains the drive; exported includes "
                  f"the {missed} probe hit(s) the kernel skipped (nested BPF, counted by the collector); "
                  f"1 run of slack: a run that interrupted a thread BPF is not run for (docs/lab.md)", slack=1),
            Check(f"CPU {NET_RX_CPU} NET_RX runs, /proc/softirqs build..report vs run histogram", outer, runs,
                  "exported<=kernel", "the collector's life lies inside build..report"),
            Check(f"CPU {NET_RX_CPU} NET_RX waits >= {TAIL_NS / 1e6:.2f} ms: BPF histogram vs softirq spans",
                  tail, exported, "equal", "every slow wait the kernel counted was exported"),
        ]

    def lead(self, report: dict, kind: str) -> dict | None:
        """The most confident winner among those naming the culprit that held NET_RX up
        longest over all spikes. The most confident winner overall can come from the
        baseline: on a VM, a vCPU the hypervisor does not run delays the IPI too, and the
        task it was running (the collector, the idle task) is named (docs/lab.md)."""
        wins = [s["causes"][0] for s in report["spikes"] if s["causes"] and s["causes"][0]["kind"] == kind]
        held: dict = {}
        for c in wins:
            pid = c["evidence"].get("culprit_pid")
            held[pid] = held.get(pid, 0.0) + (c["evidence"].get("culprit_ms") or 0.0)
        if not held:
            return None
        top = max(held, key=held.get)
        return max((c for c in wins if c["evidence"].get("culprit_pid") == top), key=lambda c: c["confidence"])

    def evidence_ok(self, cause: dict) -> list[str]:
        ev = cause.get("evidence", {})
        problems = [f"evidence lacks {k}" for k in ("culprit", "culprit_pid", "wait_ms") if not ev.get(k)]
        if ev.get("cpu") != NET_RX_CPU:
            problems.append(f"the delay is on CPU {ev.get('cpu')}, not on CPU {NET_RX_CPU} where RPS steers")
        pid = getattr(self, "_reader_pid", None)
        if ev.get("culprit_pid") and ev["culprit_pid"] != pid:
            problems.append(f"culprit is {ev.get('culprit')} pid {ev['culprit_pid']}, not the reader pid {pid}")
        return problems
