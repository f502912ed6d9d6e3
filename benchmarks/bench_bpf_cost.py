"""B1: per-event cost of each BPF program of the collector (kernel.bpf_stats_enabled).

A dedicated run (bpf_stats adds two clock reads per program run, so it is never on
in the overhead measurements): the collector starts with the default configuration
(every family ``otel_kernelnet.probes.families()`` enables by default, so new
families are measured without editing this script), then UDP traffic crosses a veth
pair between two network namespaces this script creates: datagrams into a listening
sink (64 B) and into a closed port (drops, NO_SOCKET). Per program:
``run_time_ns / run_cnt`` deltas over the load window, read from the collector's
/proc/PID/fdinfo; names from ``bpftool prog show``. Target: <= 80 ns/event average.

    .venv/bin/python benchmarks/bench_bpf_cost.py [--seconds 8]

bpf_stats times the program body only, not what the kernel does to call it. For that:

    .venv/bin/python benchmarks/bench_bpf_cost.py --dispatch net:netif_rx [--rounds 3]

a sandwich on one tracepoint under the same veth load: raw tracepoint program A stamps
the time, B (a classic or a raw tracepoint program that only marks that it ran) runs
next, raw program C records A->C (10 ns buckets; counted only when B ran in between).
Median A->C with no B, a classic B and a raw B: the differences are the per-event cost
of calling a classic and a raw program (for a classic one: building the trace record
and the bpf_prog_active round). Rounds where another process's classic program on the
tracepoint registered the perf probe first (B then runs before A) count nothing and are
reported as such. Setting OTEL_KERNELNET_CLASSIC_TRACEPOINTS=1 runs the collector with
classic tracepoints only (probes/rawtp.py), for comparison.

The previous kernel.bpf_stats_enabled value is restored, namespaces removed,
processes stopped by pid on every exit path.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import UDP_SENDER, UDP_SINK, CollectorRun, VethPair, log, result, stop  # noqa: E402

STATS = Path("/proc/sys/kernel/bpf_stats_enabled")


def prog_names() -> dict[int, str]:
    try:
        out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True, timeout=30).stdout
        return {p["id"]: p.get("name", "?") for p in json.loads(out or "[]")}
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return {}


SANDWICH = r"""
BPF_PERCPU_ARRAY(ts, u64, 2);        /* [0] A's time, [1] B ran since A */
BPF_PERCPU_ARRAY(hist, u64, 512);    /* A->C in 10 ns buckets */
int a(void *ctx) { int z = 0, o = 1; u64 *t = ts.lookup(&z), *m = ts.lookup(&o);
  if (t && m) { *m = 0; *t = bpf_ktime_get_ns(); } return 0; }
int b(void *ctx) { int o = 1; u64 *m = ts.lookup(&o); if (m) *m = 1; return 0; }
int c(void *ctx) { int z = 0, o = 1; u64 *t = ts.lookup(&z), *m = ts.lookup(&o);
  if (!t || !m || !*t) return 0;
  if (NEED_B && !*m) { *t = 0; return 0; }
  u64 d = bpf_ktime_get_ns() - *t; *t = 0; int k = d / 10; if (k > 511) k = 511;
  u64 *h = hist.lookup(&k); if (h) (*h)++; return 0; }
"""


def dispatch(tracepoint: str, rounds: int, seconds: float) -> int:
    """The sandwich (module docstring): median A->C per variant and round."""
    from otel_kernelnet.loader import Loader
    loader = Loader()
    loader._prepare()  # the header tree and the bcc import, as the collector does
    bcc = loader._bcc
    category, name = tracepoint.split(":")
    out: dict[str, list] = {"none": [], "classic": [], "raw": []}
    try:
        with VethPair(f"d{os.getpid()}") as net:
            for _ in range(rounds):
                for variant in out:
                    o = bcc.BPF(text=SANDWICH, cflags=[f"-DNEED_B={0 if variant == 'none' else 1}"])
                    fds = []
                    try:
                        fa = o.load_func("a", bcc.BPF.RAW_TRACEPOINT)
                        fc = o.load_func("c", bcc.BPF.RAW_TRACEPOINT)
                        fds.append(bcc.lib.bpf_attach_raw_tracepoint(fa.fd, name.encode()))
                        if variant == "classic":
                            o.attach_tracepoint(tp=tracepoint, fn_name="b")
                        elif variant == "raw":
                            fb = o.load_func("b", bcc.BPF.RAW_TRACEPOINT)
                            fds.append(bcc.lib.bpf_attach_raw_tracepoint(fb.fd, name.encode()))
                        fds.append(bcc.lib.bpf_attach_raw_tracepoint(fc.fd, name.encode()))
                        if min(fds) < 0:
                            raise RuntimeError(f"raw tracepoint attach failed: {fds}")
                        sink = net.popen(net.b, sys.executable, "-c", UDP_SINK, "9999", "1",
                                         stdout=subprocess.PIPE, text=True)
                        snd = net.popen(net.a, sys.executable, "-c", UDP_SENDER, "64", str(seconds), "9999", "0",
                                        stdout=subprocess.PIPE, text=True)
                        sent = int(snd.communicate(timeout=seconds + 60)[0] or 0)
                        sink.communicate(timeout=30)
                        h = o["hist"]
                        counts = [sum(h[h.Key(i)]) for i in range(512)]
                    finally:
                        for fd in fds:
                            if fd >= 0:
                                os.close(fd)
                        o.cleanup()
                    n = sum(counts)
                    acc, med = 0, None
                    for i, c in enumerate(counts):
                        acc += c
                        if n and med is None and acc >= n / 2:
                            med = i * 10 + 5
                    out[variant].append({"sent": sent, "counted": n, "median_ns": med})
                    log(f"{variant}: sent {sent} counted {n} median A->C {med} ns"
                        + ("" if n else " (B ran before A: another process's classic program holds the tracepoint)"))
    finally:
        loader.close()
    import statistics
    valid = {v: [r["median_ns"] for r in rs if r["median_ns"] is not None] for v, rs in out.items()}
    med = {v: statistics.median(xs) if xs else None for v, xs in valid.items()}
    diff = lambda v: med[v] - med["none"] if med[v] is not None and med["none"] is not None else None  # noqa: E731
    result("bpf_dispatch", tracepoint=tracepoint, rounds=out, median_a_to_c_ns=med,
           classic_call_ns=diff("classic"), raw_call_ns=diff("raw"))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--dispatch", metavar="CATEGORY:NAME", help="the call-cost sandwich on one tracepoint instead")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_bpf_cost: needs root (BPF, network namespaces)", file=sys.stderr)
        return 2
    if a.dispatch:
        return dispatch(a.dispatch, a.rounds, min(a.seconds, 2.0))
    from otel_kernelnet.probes import families
    old = STATS.read_text().strip()
    procs: list[subprocess.Popen] = []
    coll = None
    try:
        STATS.write_text("1")
        with VethPair(f"{os.getpid()}") as net, tempfile.TemporaryDirectory(prefix="kn-bench-") as tmp:
            coll = CollectorRun(Path(tmp))
            log(f"collector ready in {coll.ready_s:.2f} s")
            before = coll.prog_stats()
            sink = net.popen(net.b, sys.executable, "-c", UDP_SINK, "9999", "2", stdout=subprocess.PIPE, text=True)
            procs.append(sink)
            senders = [net.popen(net.a, sys.executable, "-c", UDP_SENDER, "64", str(a.seconds), "9999", "0",
                                 stdout=subprocess.PIPE, text=True),
                       net.popen(net.a, sys.executable, "-c", UDP_SENDER, "64", str(a.seconds / 4), "9",
                                 "1", stdout=subprocess.PIPE, text=True)]
            procs += senders
            sent = [int(p.communicate(timeout=a.seconds + 60)[0] or 0) for p in senders]
            received = int(sink.communicate(timeout=30)[0] or 0)
            after = coll.prog_stats()
            names = prog_names()
            programs = {}
            tot_ns = tot_cnt = 0
            for pid, st in after.items():
                b = before.get(pid, {"run_time_ns": 0, "run_cnt": 0})
                cnt = st["run_cnt"] - b["run_cnt"]
                ns = st["run_time_ns"] - b["run_time_ns"]
                tot_ns += ns
                tot_cnt += cnt
                programs[f"{names.get(pid, '?')}#{pid}"] = {
                    "events": cnt, "events_per_s": round(cnt / a.seconds),
                    "ns_per_event": round(ns / cnt, 1) if cnt else None}
            log_tail = coll.log_path.read_text()[-600:]
            coll.stop()
            coll = None
    finally:
        STATS.write_text(old)
        for p in procs:
            stop(p)
        if coll is not None:
            coll.stop()
    result("bpf_cost", families=[f.name for f in families()], seconds=a.seconds,
           load={"udp64_sent_to_sink": sent[0], "udp64_received": received, "udp64_sent_to_closed_port": sent[1]},
           programs=programs,
           weighted_ns_per_event=round(tot_ns / tot_cnt, 1) if tot_cnt else None,
           target_ns_per_event=80, collector_log_tail=log_tail)
    return 0


if __name__ == "__main__":
    sys.exit(main())
