"""B2: per-packet overhead, toggled, side by side with what a user would run instead.

Topology: two network namespaces joined by a veth pair (common.VethPair). A UDP sender
pinned to CPU 0 sends datagrams of SIZE bytes to a sink in the other namespace (pinned
to CPU 1). On a veth the whole receive path (netif_rx, the NET_RX softirq, UDP,
socket enqueue) runs on the sender's CPU, so the sender's packet rate carries every
per-packet BPF cost. The tools under test run pinned to CPU 1, so their user-space
side does not take the sender's CPU.

Protocol: rounds of windows ``off, T1, T2, ..., off`` (the order of the tools rotates
each round). Each tool is started before its window (ready when its probes are
attached) and stopped after it, so "off" really has no program attached. Per tool and
round: ``ratio = rate_off / rate_on`` (rate_off = mean of the round's two off windows)
and ``ns/packet = 1e9/rate_on - 1e9/rate_off``. Reported: the median and IQR over the
rounds, and the tool-to-tool ratio of overheads (the headline: ours against the peers,
measured in the same run).

Tools:
- ``ours``: ``otel-kernelnet run`` with the default configuration (every default
  family), embedded JSON Lines store.
- ``softirqs``: bcc's ``softirqs-bpfcc`` (from bpfcc-tools: softirq time per vector,
  tracepoints irq:softirq_entry/exit).
- ``bpftrace``: an equivalent bpftrace script for the same signals as our default
  families (backlog wait per packet from net:netif_rx -> net:netif_receive_skb, drops by
  reason, NET_RX raise -> entry wait and run time per CPU, TCP retransmits and resets),
  kept in kernel maps and printed at exit.
bcc's ``tcpdrop-bpfcc`` and ``drsnoop-bpfcc`` cannot run on this kernel (kprobes compiled
out: tcpdrop reads /sys/kernel/debug/kprobes/blacklist; drsnoop needs vm_zone_stat in
kallsyms, CONFIG_KALLSYMS_ALL): the script records them as unavailable rather than
skipping silently.

    .venv/bin/python benchmarks/bench_packet.py [--sizes 64,1400] [--rounds 8] [--window 3]
        [--tools ours,softirqs,bpftrace]

Needs root and the peers (``apt-get install -y $(grep -v '^#' benchmarks/apt-packages.txt)``).
Namespaces are removed and every process is stopped by pid on every exit path.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, UDP_SENDER, UDP_SINK, VethPair, log, paired, result, stop  # noqa: E402

BPFTRACE_SCRIPT = r"""
tracepoint:net:netif_rx { @arrival[args->skbaddr] = nsecs; }
tracepoint:net:netif_receive_skb /@arrival[args->skbaddr]/ {
  @backlog_wait_us = hist((nsecs - @arrival[args->skbaddr]) / 1000);
  delete(@arrival[args->skbaddr]);
}
tracepoint:skb:kfree_skb { @drops[args->reason] = count(); delete(@arrival[args->skbaddr]); }
tracepoint:skb:consume_skb { delete(@arrival[args->skbaddr]); }
tracepoint:irq:softirq_raise /args->vec == 3 || args->vec == 2/ { @raised[cpu, args->vec] = nsecs; }
tracepoint:irq:softirq_entry /args->vec == 3 || args->vec == 2/ {
  if (@raised[cpu, args->vec]) { @softirq_wait_us[args->vec] = hist((nsecs - @raised[cpu, args->vec]) / 1000); }
  @entered[cpu, args->vec] = nsecs;
}
tracepoint:irq:softirq_exit /@entered[cpu, args->vec]/ {
  @softirq_run_us[args->vec] = hist((nsecs - @entered[cpu, args->vec]) / 1000);
  delete(@entered[cpu, args->vec]);
}
tracepoint:tcp:tcp_retransmit_skb { @retransmits = count(); }
tracepoint:tcp:tcp_send_reset { @resets_sent = count(); }
tracepoint:tcp:tcp_receive_reset { @resets_received = count(); }
"""

UNAVAILABLE = {
    "tcpdrop-bpfcc": "kprobes compiled out: it opens /sys/kernel/debug/kprobes/blacklist before choosing the tracepoint",
    "drsnoop-bpfcc": "needs vm_zone_stat in /proc/kallsyms (CONFIG_KALLSYMS_ALL)",
}


class Tool:
    """A tool started before its window and stopped (by pid) after it."""

    def __init__(self, name: str, tmp: Path, headers: str | None, args: tuple[str, ...] = ()):
        self.name, self.tmp, self.headers = name, tmp, headers
        self.args = args  # more arguments of ``otel-kernelnet run`` (ours only)
        self.proc: subprocess.Popen | None = None
        self.log_path = tmp / f"{name}.log"
        self.start_s = self.stop_s = 0.0
        self.losses: list[dict[str, int]] = []

    def _cmd(self) -> tuple[list[str], Path | None]:
        ready = self.tmp / f"{self.name}.ready"
        ready.unlink(missing_ok=True)
        pin = ["taskset", "-c", "1"]
        if self.name == "ours":
            return pin + [sys.executable, "-m", "otel_kernelnet.cli", "run", "--ready-file", str(ready),
                          "--output", str(self.tmp / "data"), *self.args], ready
        if self.name == "softirqs":
            return pin + ["softirqs-bpfcc", "1", "3600"], None
        if self.name == "bpftrace":
            script = self.tmp / "equivalent.bt"
            script.write_text(BPFTRACE_SCRIPT)
            return pin + ["bpftrace", str(script)], None
        raise ValueError(self.name)

    def _attached(self, logf_pos: int) -> bool:
        text = self.log_path.read_text(errors="replace")[logf_pos:]
        if self.name == "softirqs":
            return "Tracing soft irq" in text
        if self.name == "bpftrace":
            return "Attaching" in text and "probes" in text
        return False

    def start(self) -> None:
        cmd, ready = self._cmd()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if self.headers:
            env["BCC_KERNEL_SOURCE"] = self.headers
        pos = self.log_path.stat().st_size if self.log_path.exists() else 0
        logf = open(self.log_path, "a")
        t = time.monotonic()
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=logf, stderr=subprocess.STDOUT, env=env,
                                     stdin=subprocess.DEVNULL)
        logf.close()
        deadline = t + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited {self.proc.returncode}: "
                                   f"{self.log_path.read_text(errors='replace')[-1500:]}")
            if (ready is not None and ready.exists()) or (ready is None and self._attached(pos)):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not attached after 60 s")
            time.sleep(0.01)
        if self.name == "bpftrace":
            time.sleep(0.3)  # "Attaching N probes..." is printed before the last attach
        self.start_s = time.monotonic() - t

    def stop(self) -> None:
        t = time.monotonic()
        pos = self.log_path.stat().st_size
        stop(self.proc, timeout=30)
        self.stop_s = time.monotonic() - t
        if self.name == "ours":
            tail = self.log_path.read_text(errors="replace")[pos - 4000 if pos > 4000 else 0:]
            m = re.findall(r"stopped: .*", tail)
            if m:
                self.losses.append(parse_losses(m[-1]))
        self.proc = None


def parse_losses(line: str) -> dict[str, int]:
    """The collector's final "stopped:" line -> loss counters by stage."""
    out = {}
    for key, pat in (("ring_buffer", r"(\d+) ring buffer"), ("nested_in_kernel", r"(\d+) nested in the kernel"),
                     ("rate_capped", r"(\d+) rate-capped"), ("export_queue_full", r"(\d+) export queue full"),
                     ("export_failed", r"(\d+) export failed"), ("undecodable", r"(\d+) undecodable"),
                     ("events", r"(\d+) events,"), ("exported", r"(\d+) spans exported")):
        m = re.search(pat, line)
        if m:
            out[key] = int(m.group(1))
    return out


def window(net: VethPair, size: int, seconds: float, port: int = 9999) -> dict[str, float]:
    sink = net.popen(net.b, "taskset", "-c", "1", sys.executable, "-c", UDP_SINK, str(port), "1.5",
                     stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.2)
        sender = net.popen(net.a, sys.executable, "-c", UDP_SENDER, str(size), str(seconds), str(port), "0",
                           stdout=subprocess.PIPE, text=True)
        try:
            t = time.monotonic()
            sent = int(sender.communicate(timeout=seconds + 60)[0] or 0)
            dt = time.monotonic() - t
        finally:
            stop(sender)
        received = int(sink.communicate(timeout=30)[0] or 0)
    finally:
        stop(sink)
    return {"pps": sent / dt, "sent": sent, "received": received}


def headers_dir() -> tuple[str | None, object]:
    from otel_kernelnet.loader import find_headers
    h = find_headers()
    return (h.path if h else None), h


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="64,1400")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--window", type=float, default=3.0)
    ap.add_argument("--tools", default="ours,softirqs,bpftrace")
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_packet: needs root (BPF, network namespaces)", file=sys.stderr)
        return 2
    names = [t for t in a.tools.split(",") if t]
    missing = [b for t, b in (("softirqs", "softirqs-bpfcc"), ("bpftrace", "bpftrace")) if t in names and not shutil.which(b)]
    if missing:
        print(f"bench_packet: {', '.join(missing)} not installed: "
              "apt-get install -y $(grep -v '^#' benchmarks/apt-packages.txt)", file=sys.stderr)
        return 2
    sizes = [int(s) for s in a.sizes.split(",")]
    hdr_path, hdr = headers_dir()
    figures: dict[str, dict] = {}
    tools: list[Tool] = []
    try:
        with VethPair(f"{os.getpid()}") as net, tempfile.TemporaryDirectory(prefix="kn-bench-") as tmpd:
            tmp = Path(tmpd)
            tools = [Tool(n, tmp, hdr_path) for n in names]
            for size in sizes:
                window(net, size, 1.0)  # warm-up, not recorded
                per_tool = {t.name: {"ratio": [], "ns_per_pkt": [], "pps_on": []} for t in tools}
                offs = []
                for r in range(a.rounds):
                    order = tools[r % len(tools):] + tools[:r % len(tools)]
                    off1 = window(net, size, a.window)
                    on = {}
                    for t in order:
                        t.start()
                        try:
                            on[t.name] = window(net, size, a.window)
                        finally:
                            t.stop()
                    off2 = window(net, size, a.window)
                    off = (off1["pps"] + off2["pps"]) / 2
                    offs.append(off)
                    for name, w in on.items():
                        pt = per_tool[name]
                        pt["ratio"].append(off / w["pps"])
                        pt["ns_per_pkt"].append(1e9 / w["pps"] - 1e9 / off)
                        pt["pps_on"].append(w["pps"])
                    log(f"{size} B round {r + 1}/{a.rounds}: off {off:,.0f} pps; " + ", ".join(
                        f"{n} {w['pps']:,.0f} pps ({(off / w['pps'] - 1) * 100:+.1f}%)" for n, w in on.items()))
                fig = {"pps_off_median": round(statistics.median(offs))}
                for name, pt in per_tool.items():
                    fig[name] = {"overhead_ratio": paired(pt["ratio"]),
                                 "ns_per_packet": paired(pt["ns_per_pkt"]),
                                 "pps_on_median": round(statistics.median(pt["pps_on"]))}
                if "ours" in per_tool:
                    for name in per_tool:
                        if name != "ours":
                            med_peer = statistics.median(per_tool[name]["ns_per_pkt"])
                            fig[f"ours_over_{name}_median_ns"] = (
                                round(statistics.median(per_tool["ours"]["ns_per_pkt"]) / med_peer, 3)
                                if med_peer > 0 else None)
                            fig[f"ours_vs_{name}_ns_ratio"] = paired(
                                [o / p for o, p in
                                 zip(per_tool["ours"]["ns_per_pkt"], per_tool[name]["ns_per_pkt"]) if p > 0])
                figures[f"{size}B"] = fig
    finally:
        for t in tools:
            if t.proc is not None:
                stop(t.proc, timeout=30)
        if hdr is not None:
            hdr.cleanup()
    ours = next((t for t in tools if t.name == "ours"), None)
    result("packet_overhead", window_s=a.window, rounds=a.rounds, sizes=figures,
           ours_losses=ours.losses if ours else [], unavailable_peers=UNAVAILABLE,
           start_s={t.name: round(t.start_s, 2) for t in tools})
    return 0


if __name__ == "__main__":
    sys.exit(main())
