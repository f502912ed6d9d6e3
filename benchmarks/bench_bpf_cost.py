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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=8.0)
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_bpf_cost: needs root (BPF, network namespaces)", file=sys.stderr)
        return 2
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
